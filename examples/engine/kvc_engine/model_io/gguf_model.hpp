#pragma once
/// \file
/// \brief A GGUF file's architecture metadata → `ModelConfig`, and its tensors → `Model` (dequantised to
/// float), for the architectures llama, mistral, qwen2 and qwen3.
///
/// The result equals what transformers builds when it loads the same file with `gguf_file=` (its
/// integrations/ggml.py mapping and its Llama tensor processor): for `llama` (and `mistral`) the Q and K
/// projections (weights and biases) are un-permuted, because llama.cpp's converter interleaves the two
/// rotary halves of every head; `output.weight` absent means tied embeddings. Beyond transformers, the
/// engine reads `attention.key_length` as head_dim and applies the RoPE scaling the file carries
/// (transformers 5.2 ignores it): `rope.scaling.type` linear / yarn with their fields, the older
/// `rope.scale_linear`, and Llama 3's `rope_freqs.weight` when it equals llama3 scaling's factors.
/// Partial rotary, per-layer head counts, other RoPE fields and unknown architectures are errors naming
/// the key and the value.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "kvc_engine/model_io/config.hpp"
#include "kvc_engine/model_io/gguf.hpp"
#include "kvc_engine/model_io/gguf_dequant.hpp"
#include "kvc_engine/model_io/model_weights.hpp"
#include "kvcompress/core/error.hpp"
#include "kvcompress/rope/rope_config.hpp"

namespace kvc_engine {

namespace detail {

/// Reads `<arch>.<field>` keys of a GGUF file, naming the file and key in every error.
class GgufFields {
 public:
  GgufFields(GgufFile const& f, std::string arch) : f_(f), arch_(std::move(arch)) {}

  [[nodiscard]] std::string key(char const* field) const { return arch_ + "." + field; }
  [[nodiscard]] bool has(char const* field) const { return f_.has(key(field)); }

  [[nodiscard]] std::int64_t integer(char const* field, std::int64_t min_value) const {
    KVC_CHECK(has(field), f_.source() << ": metadata '" << key(field) << "' is missing");
    return integer_value(field, min_value);
  }
  [[nodiscard]] std::int64_t integer_or(char const* field, std::int64_t min_value, std::int64_t fallback) const {
    return has(field) ? integer_value(field, min_value) : fallback;
  }
  [[nodiscard]] double number_or(char const* field, double fallback) const {
    if (!has(field)) return fallback;
    double const x = f_.get(key(field)).as_float();
    KVC_CHECK(std::isfinite(x), f_.source() << ": metadata '" << key(field) << "' must be finite, got " << x);
    return x;
  }

 private:
  [[nodiscard]] std::int64_t integer_value(char const* field, std::int64_t min_value) const {
    GgufValue const& v = f_.get(key(field));
    KVC_CHECK(!v.is_array(), f_.source() << ": metadata '" << key(field) << "' is an " << v.type_name() << " of "
                                         << v.size() << " (per-layer values are not supported); expected one integer");
    std::int64_t const x = v.as_int();
    KVC_CHECK(x >= min_value && x <= (std::int64_t{1} << 40),
              f_.source() << ": metadata '" << key(field) << "' = " << x << " is outside [" << min_value << ", 2^40]");
    return x;
  }

  GgufFile const& f_;
  std::string arch_;
};

/// llama3 scaling's per-frequency divisor of inv_freq (HF's `_compute_llama3_parameters`, as a factor).
inline double llama3_rope_factor(double inv_freq, kvcompress::RopeConfig const& c) {
  double const pi = 3.14159265358979323846;
  double const old_len = static_cast<double>(c.original_max_position_embeddings);
  double const wavelen = 2.0 * pi / inv_freq;
  if (wavelen < old_len / c.high_freq_factor) return 1.0;
  if (wavelen > old_len / c.low_freq_factor) return c.factor;
  double const smooth = (old_len / wavelen - c.low_freq_factor) / (c.high_freq_factor - c.low_freq_factor);
  return 1.0 / ((1.0 - smooth) / c.factor + smooth);
}

}  // namespace detail

/// The GGUF architectures the engine runs.
inline ModelFamily gguf_family(GgufFile const& f, std::string const& arch) {
  if (arch == "llama") return ModelFamily::kLlama;
  if (arch == "mistral") return ModelFamily::kMistral;
  if (arch == "qwen2") return ModelFamily::kQwen2;
  if (arch == "qwen3") return ModelFamily::kQwen3;
  KVC_THROW(f.source() << ": general.architecture '" << detail::printable(arch)
                       << "' is not supported (llama, mistral, qwen2, qwen3)");
}

/// \brief The RoPE configuration of a GGUF file (see the file comment); `head_dim` and
/// `max_position_embeddings` already known.
inline kvcompress::RopeConfig gguf_rope(GgufFile const& f, std::string const& arch, int head_dim,
                                        std::int64_t max_position_embeddings) {
  detail::GgufFields const r(f, arch);
  std::string const prefix = arch + ".rope.";
  static char const* const known[] = {"dimension_count", "freq_base", "scale_linear", "scaling.type", "scaling.factor",
                                      "scaling.original_context_length", "scaling.finetuned", "scaling.attn_factor",
                                      "scaling.yarn_beta_fast", "scaling.yarn_beta_slow"};
  for (auto const& kv : f.metadata()) {
    if (kv.first.compare(0, prefix.size(), prefix) != 0) continue;
    std::string const field = kv.first.substr(prefix.size());
    bool ok = false;
    for (char const* k : known) ok = ok || field == k;
    KVC_CHECK(ok, f.source() << ": metadata '" << detail::printable(kv.first) << "' is a RoPE field the engine does not support");
  }
  kvcompress::RopeConfig c;
  c.head_dim = head_dim;
  c.max_position_embeddings = max_position_embeddings;
  c.theta = r.number_or("rope.freq_base", 10000.0);
  std::int64_t const rot = r.integer_or("rope.dimension_count", 1, head_dim);
  KVC_CHECK(rot == head_dim, f.source() << ": " << r.key("rope.dimension_count") << " = " << rot << " rotates part of head_dim = "
                                        << head_dim << "; partial rotary is not supported");
  std::string type = "none";
  if (r.has("rope.scaling.type")) type = f.get(r.key("rope.scaling.type")).as_string();
  double const scale_linear = r.number_or("rope.scale_linear", 1.0);
  if (type == "none" && scale_linear != 1.0) {
    c.type = kvcompress::RopeType::kLinear;
    c.factor = scale_linear;
  } else if (type == "linear") {
    c.type = kvcompress::RopeType::kLinear;
    c.factor = r.number_or("rope.scaling.factor", scale_linear);
  } else if (type == "yarn") {
    c.type = kvcompress::RopeType::kYarn;
    c.original_max_position_embeddings = r.integer("rope.scaling.original_context_length", 1);
    c.factor = r.number_or("rope.scaling.factor", static_cast<double>(max_position_embeddings) /
                                                      static_cast<double>(c.original_max_position_embeddings));
    c.beta_fast = r.number_or("rope.scaling.yarn_beta_fast", 32.0);
    c.beta_slow = r.number_or("rope.scaling.yarn_beta_slow", 1.0);
    // llama.cpp multiplies yarn's derived attention scaling by attn_factor; only its default, 1, is certain
    // to mean what transformers' derived scaling means.
    double const attn_factor = r.number_or("rope.scaling.attn_factor", 1.0);
    KVC_CHECK(attn_factor == 1.0, f.source() << ": " << r.key("rope.scaling.attn_factor") << " = " << attn_factor
                                             << " is not supported (only 1: yarn's attention scaling as derived from the factor)");
  } else {
    KVC_CHECK(type == "none", f.source() << ": " << r.key("rope.scaling.type") << " = '" << detail::printable(type)
                                         << "' is not supported (none, linear, yarn)");
  }
  if (f.contains("rope_freqs.weight")) {
    // Llama 3.1+: llama.cpp's converter stores llama3 scaling as a factor per frequency. Meta's published
    // low/high frequency factors (1, 4) and the factor (the largest entry) must reproduce it.
    GgufTensorInfo const& t = f.tensor("rope_freqs.weight");
    KVC_CHECK(c.type == kvcompress::RopeType::kDefault && t.dims.size() == 1 && t.numel == head_dim / 2,
              f.source() << ": rope_freqs.weight with " << t.numel << " entries cannot combine with rope scaling '" << type
                         << "' and head_dim " << head_dim << " (expected " << head_dim / 2 << " entries and no other scaling)");
    std::vector<float> const factors = dequantize_tensor(f, t);
    c.type = kvcompress::RopeType::kLlama3;
    c.factor = 1.0;
    for (float const x : factors) c.factor = std::max(c.factor, static_cast<double>(x));
    c.low_freq_factor = 1.0;
    c.high_freq_factor = 4.0;
    c.original_max_position_embeddings = r.integer_or("rope.scaling.original_context_length", 1, 8192);
    for (std::size_t i = 0; i < factors.size(); ++i) {
      double const inv_freq = std::pow(c.theta, -2.0 * static_cast<double>(i) / head_dim);
      double const want = detail::llama3_rope_factor(inv_freq, c);
      KVC_CHECK(std::abs(factors[i] - want) <= 1e-5 * want,
                f.source() << ": rope_freqs.weight[" << i << "] = " << factors[i] << " is not llama3 scaling's " << want
                           << " (factor " << c.factor << ", low/high frequency factors 1/4, original context "
                           << c.original_max_position_embeddings << "); other per-frequency factors are not supported");
    }
  }
  kvcompress::validate(c);
  return c;
}

/// \brief The engine configuration of a GGUF file (architecture metadata and tensor presence).
inline ModelConfig gguf_model_config(GgufFile const& f) {
  std::string const arch = f.get("general.architecture").as_string();
  detail::GgufFields const m(f, arch);
  ModelConfig c;
  c.family = gguf_family(f, arch);
  c.model_type = arch;
  c.hidden_size = m.integer("embedding_length", 1);
  c.num_layers = m.integer("block_count", 1);
  c.intermediate_size = m.integer("feed_forward_length", 1);
  c.num_heads = m.integer("attention.head_count", 1);
  c.num_kv_heads = m.integer_or("attention.head_count_kv", 1, c.num_heads);
  KVC_CHECK(c.num_heads % c.num_kv_heads == 0, f.source() << ": " << m.key("attention.head_count") << " = " << c.num_heads
                                                          << " is not a multiple of " << m.key("attention.head_count_kv")
                                                          << " = " << c.num_kv_heads);
  std::int64_t const fallback_head_dim =
      c.family == ModelFamily::kLlama || c.family == ModelFamily::kMistral
          ? m.integer_or("rope.dimension_count", 1, c.hidden_size / c.num_heads)
          : c.hidden_size / c.num_heads;
  c.head_dim = m.integer_or("attention.key_length", 1, fallback_head_dim);
  KVC_CHECK(c.head_dim > 0 && c.head_dim % 2 == 0 && c.head_dim <= 4096,
            f.source() << ": head_dim = " << c.head_dim << " must be even and in [2, 4096]");
  std::int64_t const value_dim = m.integer_or("attention.value_length", 1, c.head_dim);
  KVC_CHECK(value_dim == c.head_dim, f.source() << ": " << m.key("attention.value_length") << " = " << value_dim
                                                << " differs from the key length " << c.head_dim << " (not supported)");
  KVC_CHECK(m.has("attention.layer_norm_rms_epsilon"), f.source() << ": metadata '" << m.key("attention.layer_norm_rms_epsilon")
                                                                  << "' is missing");
  c.rms_norm_eps = m.number_or("attention.layer_norm_rms_epsilon", 0.0);
  KVC_CHECK(c.rms_norm_eps > 0.0, f.source() << ": " << m.key("attention.layer_norm_rms_epsilon") << " must be positive, got "
                                             << c.rms_norm_eps);
  c.max_position_embeddings = m.integer("context_length", 1);

  KVC_CHECK(f.contains("token_embd.weight"), f.source() << " has no tensor 'token_embd.weight'");
  GgufTensorInfo const& embd = f.tensor("token_embd.weight");
  KVC_CHECK(embd.dims.size() == 2 && embd.dims[0] == c.hidden_size,
            f.source() << ": tensor 'token_embd.weight' must be [vocab, " << c.hidden_size << "], got " << embd.dims.size()
                       << " dimensions with innermost " << embd.dims[0]);
  c.vocab_size = embd.dims[1];
  if (m.has("vocab_size")) {
    std::int64_t const v = m.integer("vocab_size", 1);
    KVC_CHECK(v == c.vocab_size, f.source() << ": " << m.key("vocab_size") << " = " << v << " but token_embd.weight has "
                                            << c.vocab_size << " rows");
  }
  c.tie_word_embeddings = !f.contains("output.weight");
  c.qkv_bias = c.family == ModelFamily::kQwen2 || f.contains("blk.0.attn_q.bias");
  c.o_bias = f.contains("blk.0.attn_output.bias");
  c.mlp_bias = f.contains("blk.0.ffn_up.bias");
  c.qk_norm = c.family == ModelFamily::kQwen3;
  c.rope = gguf_rope(f, arch, static_cast<int>(c.head_dim), c.max_position_embeddings);
  return c;
}

namespace detail {

/// Undoes llama.cpp's Q/K permutation: within each of `heads` groups of rows, GGUF stores the rows of
/// the two rotary halves interleaved (row 2j + i holds HF's row i·(rows/2) + j); `cols` = 1 for a bias.
inline std::vector<float> unpermute_rows(std::vector<float> const& w, std::int64_t heads, std::int64_t rows, std::int64_t cols) {
  std::vector<float> out(w.size());
  std::int64_t const half = rows / heads / 2;
  for (std::int64_t h = 0; h < heads; ++h)
    for (std::int64_t i = 0; i < 2; ++i)
      for (std::int64_t j = 0; j < half; ++j) {
        std::int64_t const to = h * 2 * half + i * half + j, from = h * 2 * half + 2 * j + i;
        std::copy_n(w.begin() + from * cols, cols, out.begin() + to * cols);
      }
  return out;
}

/// The tensors of a GGUF file, checked against the shapes the configuration implies.
class GgufTensors {
 public:
  explicit GgufTensors(GgufFile const& f) : f_(f) {}

  /// \param shape C order (outermost first); \param why says which metadata requires the tensor.
  [[nodiscard]] std::vector<float> take(std::string const& name, std::vector<std::int64_t> const& shape, char const* why = "") const {
    KVC_CHECK(f_.contains(name), f_.source() << " has no tensor '" << name << "'" << why);
    GgufTensorInfo const& t = f_.tensor(name);
    KVC_CHECK(t.shape() == shape, f_.source() << ": tensor '" << name << "' has shape " << shape_string(t.shape())
                                              << ", the metadata implies " << shape_string(shape));
    std::vector<float> w = dequantize_tensor(f_, t);
    detail::check_finite_weights(w, f_.source() + ": tensor '" + name + "'");
    return w;
  }

 private:
  static std::string shape_string(std::vector<std::int64_t> const& s) {
    std::string out = "[";
    for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + "]";
  }

  GgufFile const& f_;
};

}  // namespace detail

/// \brief A model from a validated GGUF file: its configuration and its weights, dequantised to float.
inline Model load_gguf_model(GgufFile const& f) {
  Model m;
  m.config = gguf_model_config(f);
  ModelConfig const& c = m.config;
  detail::GgufTensors const ts(f);
  std::int64_t const D = c.hidden_size, I = c.intermediate_size, d = c.head_dim;
  std::int64_t const q_dim = c.num_heads * d, kv_dim = c.num_kv_heads * d;
  bool const permuted = c.family == ModelFamily::kLlama || c.family == ModelFamily::kMistral;
  m.embed = ts.take("token_embd.weight", {c.vocab_size, D});
  m.final_norm = ts.take("output_norm.weight", {D});
  if (!c.tie_word_embeddings) m.lm_head = ts.take("output.weight", {c.vocab_size, D});
  char const* const bias_why = " (layer 0 has attention biases, or the architecture requires them)";
  for (std::int64_t l = 0; l < c.num_layers; ++l) {
    LayerWeights& w = m.layers.emplace_back();
    std::string const p = "blk." + std::to_string(l) + ".";
    w.input_norm = ts.take(p + "attn_norm.weight", {D});
    w.post_norm = ts.take(p + "ffn_norm.weight", {D});
    w.q_w = ts.take(p + "attn_q.weight", {q_dim, D});
    w.k_w = ts.take(p + "attn_k.weight", {kv_dim, D});
    w.v_w = ts.take(p + "attn_v.weight", {kv_dim, D});
    w.o_w = ts.take(p + "attn_output.weight", {D, q_dim});
    if (c.qkv_bias) {
      w.q_b = ts.take(p + "attn_q.bias", {q_dim}, bias_why);
      w.k_b = ts.take(p + "attn_k.bias", {kv_dim}, bias_why);
      w.v_b = ts.take(p + "attn_v.bias", {kv_dim}, bias_why);
    }
    if (permuted) {
      w.q_w = detail::unpermute_rows(w.q_w, c.num_heads, q_dim, D);
      w.k_w = detail::unpermute_rows(w.k_w, c.num_kv_heads, kv_dim, D);
      if (c.qkv_bias) {
        w.q_b = detail::unpermute_rows(w.q_b, c.num_heads, q_dim, 1);
        w.k_b = detail::unpermute_rows(w.k_b, c.num_kv_heads, kv_dim, 1);
      }
    }
    if (c.o_bias) w.o_b = ts.take(p + "attn_output.bias", {D}, bias_why);
    if (c.qk_norm) {
      w.q_norm = ts.take(p + "attn_q_norm.weight", {d}, " (qwen3 normalises queries and keys per head)");
      w.k_norm = ts.take(p + "attn_k_norm.weight", {d}, " (qwen3 normalises queries and keys per head)");
    }
    w.gate_w = ts.take(p + "ffn_gate.weight", {I, D});
    w.up_w = ts.take(p + "ffn_up.weight", {I, D});
    w.down_w = ts.take(p + "ffn_down.weight", {D, I});
    if (c.mlp_bias) {
      w.gate_b = ts.take(p + "ffn_gate.bias", {I}, " (layer 0 has MLP biases)");
      w.up_b = ts.take(p + "ffn_up.bias", {I}, " (layer 0 has MLP biases)");
      w.down_b = ts.take(p + "ffn_down.bias", {D}, " (layer 0 has MLP biases)");
    }
  }
  return m;
}

/// \brief Loads a GGUF model file (memory-mapped while its tensors are dequantised).
inline Model load_gguf_model(std::string const& path) { return load_gguf_model(GgufFile::open(path)); }

}  // namespace kvc_engine
