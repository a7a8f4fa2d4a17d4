#pragma once
/// \file
/// \brief `ModelConfig`: the architecture of a Llama / Mistral / Qwen2 / Qwen3 checkpoint, read from its
/// HF `config.json`, with the RoPE header (transformers 5's `rope_parameters`, or the older `rope_theta` +
/// `rope_scaling`) mapped to `kvcompress::RopeConfig` exactly as transformers reads it.
///
/// A missing or mistyped field, or a feature the engine does not implement (another activation, partial
/// rotary, a RoPE variant other than default / linear / dynamic / llama3 / yarn, per-layer RoPE), is a
/// `kvcompress::Error` naming the field and the value.

#include <cmath>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "kvc_engine/model_io/safetensors.hpp"
#include "kvcompress/core/error.hpp"
#include "kvcompress/rope/rope_config.hpp"

namespace kvc_engine {

enum class ModelFamily { kLlama, kMistral, kQwen2, kQwen3 };

struct ModelConfig {
  ModelFamily family = ModelFamily::kLlama;
  std::string model_type;
  std::int64_t vocab_size = 0;
  std::int64_t hidden_size = 0;
  std::int64_t intermediate_size = 0;
  std::int64_t num_layers = 0;
  std::int64_t num_heads = 0;     ///< query heads
  std::int64_t num_kv_heads = 0;
  std::int64_t head_dim = 0;
  double rms_norm_eps = 1e-6;
  std::int64_t max_position_embeddings = 0;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;          ///< q/k/v projections have a bias (Qwen2 always; attention_bias elsewhere)
  bool o_bias = false;            ///< the output projection has a bias (attention_bias in Llama / Qwen3)
  bool mlp_bias = false;          ///< Llama's mlp_bias
  bool qk_norm = false;           ///< Qwen3's per-head RMSNorm on queries and keys
  std::int64_t sliding_window = 0;  ///< 0: full attention in every layer
  kvcompress::RopeConfig rope;
};

namespace detail {

/// Reads the fields of one JSON object, naming `where` and the field in every error.
class Fields {
 public:
  Fields(nlohmann::json const& obj, std::string where) : obj_(obj), where_(std::move(where)) {}

  /// True when the field is present and not null (HF writes null for "not set").
  [[nodiscard]] bool has(char const* field) const { return obj_.contains(field) && !obj_.at(field).is_null(); }

  [[nodiscard]] std::int64_t integer(char const* field, std::int64_t min_value) const {
    KVC_CHECK(has(field), where_ << ": '" << field << "' is missing");
    return integer_value(field, min_value);
  }
  [[nodiscard]] std::int64_t integer_or(char const* field, std::int64_t min_value, std::int64_t fallback) const {
    return has(field) ? integer_value(field, min_value) : fallback;
  }
  [[nodiscard]] double number(char const* field) const {
    KVC_CHECK(has(field), where_ << ": '" << field << "' is missing");
    return number_value(field);
  }
  [[nodiscard]] double number_or(char const* field, double fallback) const {
    return has(field) ? number_value(field) : fallback;
  }
  [[nodiscard]] bool boolean_or(char const* field, bool fallback) const {
    if (!has(field)) return fallback;
    auto const& v = obj_.at(field);
    KVC_CHECK(v.is_boolean(), where_ << ": '" << field << "' must be true or false, got " << brief(v));
    return v.get<bool>();
  }
  [[nodiscard]] std::string string_or(char const* field, std::string fallback) const {
    if (!has(field)) return fallback;
    auto const& v = obj_.at(field);
    KVC_CHECK(v.is_string(), where_ << ": '" << field << "' must be a string, got " << brief(v));
    return v.get<std::string>();
  }

 private:
  [[nodiscard]] std::int64_t integer_value(char const* field, std::int64_t min_value) const {
    auto const& v = obj_.at(field);
    KVC_CHECK(v.is_number_integer() && !(v.is_number_unsigned() && v.get<std::uint64_t>() > (std::uint64_t{1} << 62)),
              where_ << ": '" << field << "' must be an integer, got " << brief(v));
    auto const x = v.get<std::int64_t>();
    KVC_CHECK(x >= min_value && x <= (std::int64_t{1} << 40),
              where_ << ": '" << field << "' = " << x << " is outside [" << min_value << ", 2^40]");
    return x;
  }
  [[nodiscard]] double number_value(char const* field) const {
    auto const& v = obj_.at(field);
    KVC_CHECK(v.is_number(), where_ << ": '" << field << "' must be a number, got " << brief(v));
    double const x = v.get<double>();
    KVC_CHECK(std::isfinite(x), where_ << ": '" << field << "' must be finite, got " << x);
    return x;
  }

  nlohmann::json const& obj_;
  std::string where_;
};

inline ModelFamily family_of(std::string const& model_type, std::string const& where) {
  if (model_type == "llama") return ModelFamily::kLlama;
  if (model_type == "mistral") return ModelFamily::kMistral;
  if (model_type == "qwen2") return ModelFamily::kQwen2;
  if (model_type == "qwen3") return ModelFamily::kQwen3;
  KVC_THROW(where << ": model_type '" << model_type << "' is not supported (llama, mistral, qwen2, qwen3)");
}

}  // namespace detail

/// \brief The RoPE parameters of a config.json object, as transformers standardises them:
/// `rope_parameters` (transformers 5) or `rope_scaling` (older), with `rope_theta` inside or at the top
/// level; `type` is the old spelling of `rope_type`; llama3 and yarn take `original_max_position_embeddings`
/// from the top level first, then the RoPE object, then `max_position_embeddings`; yarn without `factor`
/// uses max_position_embeddings / original_max_position_embeddings.
inline kvcompress::RopeConfig parse_rope(nlohmann::json const& cfg, int head_dim, std::int64_t max_position_embeddings,
                                         std::string const& where) {
  char const* key = nullptr;
  for (char const* k : {"rope_parameters", "rope_scaling"})
    if (cfg.contains(k) && !cfg.at(k).is_null()) {
      key = k;
      break;
    }
  nlohmann::json const empty = nlohmann::json::object();
  nlohmann::json const& rp = key ? cfg.at(key) : empty;
  std::string const rwhere = key ? where + ": " + key : where;
  KVC_CHECK(rp.is_object(), rwhere << " must be an object, got " << detail::brief(rp));
  for (auto const& [name, value] : rp.items())
    KVC_CHECK(!value.is_object(), rwhere << " holds per-layer-type parameters ('" << name << "'), which the engine does not support");
  detail::Fields const top(cfg, where), r(rp, rwhere);

  kvcompress::RopeConfig c;
  c.head_dim = head_dim;
  c.max_position_embeddings = max_position_embeddings;
  KVC_CHECK(r.has("rope_theta") || top.has("rope_theta"), rwhere << ": 'rope_theta' is missing (also at the top level)");
  c.theta = r.has("rope_theta") ? r.number("rope_theta") : top.number("rope_theta");
  for (auto const* f : {&top, &r}) {
    double const partial = f->number_or("partial_rotary_factor", 1.0);
    KVC_CHECK(partial == 1.0, where << ": partial_rotary_factor = " << partial << " is not supported (only 1)");
  }
  std::string const type = r.string_or("rope_type", r.string_or("type", "default"));
  auto const original_max = [&] {
    return top.integer_or("original_max_position_embeddings", 1,
                          r.integer_or("original_max_position_embeddings", 1, max_position_embeddings));
  };
  if (type == "default") {
    c.type = kvcompress::RopeType::kDefault;
  } else if (type == "linear" || type == "dynamic") {
    c.type = type == "linear" ? kvcompress::RopeType::kLinear : kvcompress::RopeType::kDynamic;
    c.factor = r.number("factor");
  } else if (type == "llama3") {
    c.type = kvcompress::RopeType::kLlama3;
    c.factor = r.number("factor");
    c.low_freq_factor = r.number("low_freq_factor");
    c.high_freq_factor = r.number("high_freq_factor");
    c.original_max_position_embeddings = original_max();
  } else if (type == "yarn") {
    c.type = kvcompress::RopeType::kYarn;
    c.original_max_position_embeddings = original_max();
    c.factor = r.number_or("factor", static_cast<double>(max_position_embeddings) /
                                         static_cast<double>(c.original_max_position_embeddings));
    c.attention_factor = r.number_or("attention_factor", 0.0);
    c.beta_fast = r.number_or("beta_fast", 32.0);
    c.beta_slow = r.number_or("beta_slow", 1.0);
    c.mscale = r.number_or("mscale", 0.0);
    c.mscale_all_dim = r.number_or("mscale_all_dim", 0.0);
    c.truncate = r.boolean_or("truncate", true);
  } else {
    KVC_THROW(rwhere << ": rope_type '" << type << "' is not supported (default, linear, dynamic, llama3, yarn)");
  }
  kvcompress::validate(c);
  return c;
}

/// \brief Parses the text of a config.json. \param source names it in error messages.
inline ModelConfig parse_model_config(std::string const& text, std::string const& source = "config.json") {
  nlohmann::json const cfg = detail::parse_json(text.data(), text.data() + text.size(), 16, source);
  KVC_CHECK(cfg.is_object(), source << " must hold a JSON object, got " << detail::brief(cfg));
  detail::Fields const f(cfg, source);
  ModelConfig c;
  KVC_CHECK(f.has("model_type"), source << ": 'model_type' is missing");
  c.model_type = f.string_or("model_type", "");
  c.family = detail::family_of(c.model_type, source);
  c.vocab_size = f.integer("vocab_size", 1);
  c.hidden_size = f.integer("hidden_size", 1);
  c.intermediate_size = f.integer("intermediate_size", 1);
  c.num_layers = f.integer("num_hidden_layers", 1);
  c.num_heads = f.integer("num_attention_heads", 1);
  c.num_kv_heads = f.integer_or("num_key_value_heads", 1, c.num_heads);
  KVC_CHECK(c.num_heads % c.num_kv_heads == 0, source << ": num_attention_heads = " << c.num_heads
                                                      << " is not a multiple of num_key_value_heads = " << c.num_kv_heads);
  c.head_dim = f.integer_or("head_dim", 1, c.hidden_size / c.num_heads);
  KVC_CHECK(c.head_dim > 0 && c.head_dim % 2 == 0 && c.head_dim <= 4096,
            source << ": head_dim = " << c.head_dim << " must be even and in [2, 4096]");
  c.rms_norm_eps = f.number("rms_norm_eps");
  KVC_CHECK(c.rms_norm_eps > 0.0, source << ": 'rms_norm_eps' must be positive, got " << c.rms_norm_eps);
  c.max_position_embeddings = f.integer("max_position_embeddings", 1);
  std::string const act = f.string_or("hidden_act", "silu");
  KVC_CHECK(act == "silu", source << ": hidden_act '" << act << "' is not supported (silu)");
  c.tie_word_embeddings = f.boolean_or("tie_word_embeddings", false);
  bool const attention_bias = f.boolean_or("attention_bias", false);
  c.qkv_bias = c.family == ModelFamily::kQwen2 || (c.family != ModelFamily::kMistral && attention_bias);
  c.o_bias = (c.family == ModelFamily::kLlama || c.family == ModelFamily::kQwen3) && attention_bias;
  c.mlp_bias = c.family == ModelFamily::kLlama && f.boolean_or("mlp_bias", false);
  c.qk_norm = c.family == ModelFamily::kQwen3;
  // Mistral slides whenever sliding_window is set; Qwen2/Qwen3 only with use_sliding_window.
  bool const slides = c.family == ModelFamily::kMistral || f.boolean_or("use_sliding_window", false);
  if (slides) c.sliding_window = f.integer_or("sliding_window", 1, 0);
  c.rope = parse_rope(cfg, static_cast<int>(c.head_dim), c.max_position_embeddings, source);
  return c;
}

/// \brief Reads `<folder>/config.json`.
inline ModelConfig load_model_config(std::string const& folder) {
  std::string const path = folder + "/config.json";
  std::ifstream in(path);
  KVC_CHECK(in.good(), "cannot open " << path);
  std::ostringstream text;
  text << in.rdbuf();
  return parse_model_config(text.str(), path);
}

}  // namespace kvc_engine
