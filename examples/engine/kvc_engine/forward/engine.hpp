#pragma once
/// \file
/// \brief `Engine`: prefill and decoding for the Llama / Mistral / Qwen2 / Qwen3 family on the CPU
/// (Eigen, float32, all cores), over a `KVCache` that kvcompress presses compress in place.
///
/// Per layer: x += o_proj(attention(rope(q_norm(q)), rope(k_norm(k)), v)); x += down(silu(gate(h)) ⊙ up(h)),
/// with RMSNorm before each block, GQA (query head j reads kv head j / (q_heads / kv_heads)) and biases
/// where the architecture has them. RoPE positions count the tokens processed so far, so after a press
/// new tokens continue from the original length (kvpress's convention) while each kv head attends over its
/// own live entries. Compression points: after the first forward pass on an empty cache (the prefill) and
/// after every later pass (decoding), per layer, with the chunk's pre-RoPE queries handed over.

#include <Eigen/Core>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

#include "kvc_engine/forward/attention.hpp"
#include "kvc_engine/compression/compressor.hpp"
#include "kvc_engine/forward/kv_cache.hpp"
#include "kvc_engine/model_io/model.hpp"
#include "kvc_engine/forward/ops.hpp"
#include "kvc_engine/forward/sampling.hpp"
#include "kvc_engine/forward/thread_pool.hpp"
#include "kvcompress/kvcompress.hpp"

namespace kvc_engine {

/// \brief What one forward pass observed, enough to build every observation a press can ask for
/// (window queries are these queries rotated; attention probabilities are recomputed from them and the
/// still uncompressed cache). An evaluation can keep it to compress copies of one prefilled cache.
struct ForwardRecord {
  std::int64_t position = 0;                // absolute position of the chunk's first token
  std::int64_t tokens = 0;                  // tokens in the chunk
  std::vector<std::vector<float>> queries;  // per layer: [q_heads, tokens, head_dim], pre-RoPE, after q_norm
  std::vector<std::int32_t> token_ids;      // [tokens] the chunk's tokens
  std::int64_t question_tokens = 0;         // set by the caller: the chunk's last tokens that are the question (FINCH's window)
  /// Set before the pass to keep `hidden_states` too (ObservationNeeds::hidden_states: layers × tokens × hidden floats).
  bool keep_hidden_states = false;
  std::vector<std::vector<float>> hidden_states;  // per layer: [tokens, hidden_size], the attention input; empty unless kept
};

enum class Logits { kNone, kLast, kAll };

struct GenerateOptions {
  std::int64_t max_new_tokens = 32;
  Sampler sampler{};                      ///< greedy by default
  Compressor const* compressor = nullptr; ///< null: full cache
  bool keep_logits = false;               ///< keep the logits of every generated token
};

struct GenerateResult {
  std::vector<std::int32_t> tokens;
  std::vector<float> logits;  // [tokens, vocab] when keep_logits
  KVCache cache;              // after the last forward pass
  std::int64_t cache_bytes_after_prefill = 0;  // after the prefill press, if any
  double prefill_seconds = 0.0, compress_seconds = 0.0, decode_seconds = 0.0;
};

class Engine {
 public:
  /// \param num_threads 0: every hardware thread. The model must outlive the engine.
  explicit Engine(Model const& model, int num_threads = 0)
      : model_(model),
        pool_(num_threads),
        rope_(model.config.rope),
        device_{pool_.size(), kvcompress::CpuKernels::kNative, &pool_},
        scratch_(static_cast<std::size_t>(pool_.size())) {}

  [[nodiscard]] Model const& model() const noexcept { return model_; }
  [[nodiscard]] kvcompress::RotaryEmbedding const& rope() const noexcept { return rope_; }
  /// The CPU device with the engine's thread count and pool, for presses the caller runs itself (their
  /// loops run on the engine's threads; calls from several threads take turns on them).
  [[nodiscard]] kvcompress::CpuDevice device() const noexcept { return device_; }

  [[nodiscard]] KVCache new_cache(std::int64_t capacity = 0) const {
    ModelConfig const& c = model_.config;
    return KVCache(c.num_layers, c.num_kv_heads, c.head_dim, capacity);
  }

  /// \brief Runs `tokens` [n] at positions cache.next_position() … + n − 1, appends their keys and values
  /// to every layer and returns the logits ([n, vocab] for kAll, [vocab] for kLast). With a compressor,
  /// its hook for this pass (after_prefill_model or after_prefill on an empty cache, else after_step) runs
  /// afterwards. With `record`, the pass's observations are kept there.
  std::vector<float> forward(KVCache& cache, std::int32_t const* tokens, std::int64_t n, Logits logits,
                             Compressor const* compressor = nullptr, ForwardRecord* record = nullptr) {
    ModelConfig const& c = model_.config;
    std::int64_t const p0 = check_pass(cache, tokens, n);
    bool const prefill = p0 == 0;
    CompressFn const* hook = nullptr;
    if (compressor != nullptr) hook = prefill ? &compressor->after_prefill : &compressor->after_step;
    if (hook != nullptr && !*hook) hook = nullptr;
    bool const model_hook = prefill && compressor != nullptr && compressor->after_prefill_model;
    ForwardRecord local;
    ForwardRecord* rec = record != nullptr ? record : (hook != nullptr || model_hook ? &local : nullptr);
    if (rec != nullptr) {
      rec->position = p0;
      rec->tokens = n;
      rec->queries.assign(static_cast<std::size_t>(c.num_layers), {});
      rec->token_ids.assign(tokens, tokens + n);
      if (rec == &local) rec->keep_hidden_states = compressor->needs.hidden_states;
      rec->hidden_states.assign(rec->keep_hidden_states ? static_cast<std::size_t>(c.num_layers) : 0, {});
    }
    KVCache* const one[] = {&cache};
    layers(one, 1, tokens, n, rec);

    std::vector<float> out;
    if (logits != Logits::kNone) {
      std::int64_t const first = logits == Logits::kAll ? 0 : n - 1;
      out = output_logits(first, n - first, 1);
    }
    if (model_hook) compressor->after_prefill_model(*this, cache, *rec);  // its own passes reuse the buffers: `out` is kept
    else if (hook != nullptr) compress(cache, *rec, *hook, compressor->needs);
    return out;
  }

  /// \brief One pass of n tokens for each of B sequences, each over its own cache, in one set of weight
  /// reads: the linear layers run on the B·n rows together, attention per sequence. Sequence b runs
  /// `tokens[b·n … b·n + n − 1]` at its own cache's next positions. No press runs (decoding several
  /// answers at once). Returns [B, vocab]: each sequence's last logits. The linear layers' sums may round
  /// differently from B single-sequence passes (a different GEMM blocking), by a few float ulps.
  /// \param caches B distinct caches made for this model
  /// \param tokens [B, n]
  std::vector<float> forward_batch(std::vector<KVCache*> const& caches, std::int32_t const* tokens, std::int64_t n) {
    std::int64_t const B = static_cast<std::int64_t>(caches.size());
    KVC_CHECK(B > 0, "forward_batch needs at least one cache");
    KVC_CHECK(n > 0, "forward needs at least one token, got " << n);
    for (std::int64_t b = 0; b < B; ++b) {
      KVC_CHECK(caches[static_cast<std::size_t>(b)] != nullptr, "caches[" << b << "] is null");
      for (std::int64_t e = 0; e < b; ++e)
        KVC_CHECK(caches[static_cast<std::size_t>(e)] != caches[static_cast<std::size_t>(b)],
                  "caches[" << e << "] and caches[" << b << "] are the same cache; each sequence needs its own");
      (void)check_pass(*caches[static_cast<std::size_t>(b)], tokens + b * n, n);
    }
    layers(caches.data(), B, tokens, n, nullptr);
    return output_logits(n - 1, 1, B);
  }

  std::vector<float> forward(KVCache& cache, std::vector<std::int32_t> const& tokens, Logits logits,
                             Compressor const* compressor = nullptr, ForwardRecord* record = nullptr) {
    return forward(cache, tokens.data(), static_cast<std::int64_t>(tokens.size()), logits, compressor, record);
  }

  /// \brief Calls `fn(observation, view)` on every layer for the pass that `record` observed. Applying it
  /// after the whole pass equals kvpress's hook after each layer's attention: compressing layer l's
  /// cache does not change what later layers compute in the same pass.
  void compress(KVCache& cache, ForwardRecord const& record, CompressFn const& fn, ObservationNeeds const& needs) {
    ModelConfig const& c = model_.config;
    std::int64_t const H = c.num_heads, d = c.head_dim, n = record.tokens;
    KVC_CHECK(static_cast<std::int64_t>(record.queries.size()) == c.num_layers && n > 0,
              "the forward record holds " << record.queries.size() << " layers and " << n << " tokens");
    KVC_CHECK(needs.window >= 0, "needs.window must be non-negative, got " << needs.window);
    std::int64_t const w = std::min(needs.window, n);
    std::vector<float> window_cos, window_sin, window, probs;
    if (w > 0) rope_table(record.position + n - w, w, record.position + n, window_cos, window_sin);
    for (std::int64_t l = 0; l < c.num_layers; ++l) {
      std::vector<float> const& q = record.queries[static_cast<std::size_t>(l)];
      KVC_CHECK(static_cast<std::int64_t>(q.size()) == H * n * d, "the forward record's layer " << l << " holds "
                                                                    << q.size() << " query values, expected " << H * n * d);
      kvcompress::KVCacheView<float> const view = cache.view(l);
      kvcompress::Observation<float> obs;
      obs.layer_idx = static_cast<int>(l);
      obs.num_layers = static_cast<int>(c.num_layers);
      obs.queries = kvcompress::make_tensor4(q.data(), {1, H, n, d});
      obs.rope = &rope_;
      obs.position = record.position;
      obs.chunk_length = n;
      if (w > 0) {
        window.resize(static_cast<std::size_t>(H * w * d));  // [H, w, d]: the last w queries, rotated
        for (std::int64_t j = 0; j < H; ++j)
          std::copy_n(q.data() + (j * n + n - w) * d, w * d, window.data() + j * w * d);
        for (std::int64_t j = 0; j < H; ++j) rotate_rows(window.data() + j * w * d, w, window_cos, window_sin);
        obs.window_queries = kvcompress::make_tensor4(window.data(), {1, H, w, d});
      }
      if (needs.attention) {
        attention_probabilities(cache, l, q, n, record.position, probs);
        obs.attention = kvcompress::make_tensor4(probs.data(), {1, H, n, cache.length(l, 0)});
      }
      if (needs.hidden_states) {
        KVC_CHECK(static_cast<std::int64_t>(record.hidden_states.size()) == c.num_layers,
                  "the press reads the hidden states, and the forward record holds none: the pass was not asked to keep "
                  "them (ForwardRecord::keep_hidden_states)");
        std::vector<float> const& x = record.hidden_states[static_cast<std::size_t>(l)];
        obs.hidden_states = kvcompress::make_tensor4(x.data(), {1, 1, n, c.hidden_size});
      }
      fn(obs, view);
    }
  }

  /// \brief Feeds `tokens` after the cache's entries (at the next positions), calls fn(record) while the
  /// cache holds the pass's entries too (every layer: its entries, then the pass's), then removes them: the
  /// cache is as it was. The extra passes of KVCompose and KVzip.
  void replay(KVCache& cache, std::vector<std::int32_t> const& tokens, std::function<void(ForwardRecord const&)> const& fn) {
    ModelConfig const& c = model_.config;
    std::vector<std::vector<std::int32_t>> lengths(static_cast<std::size_t>(c.num_layers));
    for (std::int64_t l = 0; l < c.num_layers; ++l)
      for (std::int64_t h = 0; h < c.num_kv_heads; ++h) lengths[static_cast<std::size_t>(l)].push_back(cache.length(l, h));
    ForwardRecord rec;
    (void)forward(cache, tokens, Logits::kNone, nullptr, &rec);
    fn(rec);
    for (std::int64_t l = 0; l < c.num_layers; ++l)
      for (std::int64_t h = 0; h < c.num_kv_heads; ++h) cache.length_ref(l, h) = lengths[static_cast<std::size_t>(l)][static_cast<std::size_t>(h)];
    cache.advance(-static_cast<std::int64_t>(tokens.size()));
  }

  /// \brief probs [q_heads, n, length]: the causal attention of a pass's n queries (pre-RoPE, [q_heads, n,
  /// head_dim], first at `position`) over layer `layer`'s cache, whose last n entries are the pass's own.
  /// Every kv head of the layer must hold the same length.
  void attention_probabilities(KVCache& cache, std::int64_t layer, std::vector<float> const& q, std::int64_t n,
                               std::int64_t position, std::vector<float>& probs) {
    ModelConfig const& c = model_.config;
    std::int64_t const H = c.num_heads, d = c.head_dim, group = c.num_heads / c.num_kv_heads;
    std::int64_t const len = cache.length(layer, 0);
    KVC_CHECK(cache.kept_channels(layer) == 0, "attention probabilities read full keys; layer " << layer << "'s are packed (ThinK)");
    for (std::int64_t g = 1; g < c.num_kv_heads; ++g)
      KVC_CHECK(cache.length(layer, g) == len, "attention probabilities need every kv head at the same length; layer "
                                                   << layer << " head 0 holds " << len << ", head " << g << " holds "
                                                   << cache.length(layer, g));
    KVC_CHECK(len >= n, "layer " << layer << " holds " << len << " entries, fewer than the pass's " << n << " tokens");
    std::vector<float> cos, sin;
    rope_table(position, n, position + n, cos, sin);
    probs.resize(static_cast<std::size_t>(H * n * len));
    float const scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
    pool_.parallel_for(H, [&](std::int64_t j, int thread) {
      std::vector<float>& rotated = scratch_[static_cast<std::size_t>(thread)];
      rotated.assign(q.begin() + j * n * d, q.begin() + (j + 1) * n * d);
      rotate_rows(rotated.data(), n, cos, sin);
      ops::ConstMap const Q(rotated.data(), n, d), K(cache.keys(layer, j / group), len, d);
      Eigen::Map<ops::RowMat> P(probs.data() + j * n * len, n, len);
      P.noalias() = Q * K.transpose();
      P *= scale;
      for (std::int64_t t = 0; t < n; ++t) ops::softmax_prefix(probs.data() + (j * n + t) * len, len - n + t + 1, len);
    });
  }

  /// \brief Prefill, optional press, then `max_new_tokens` tokens: the first from the prefill's logits,
  /// each later one from a decoding pass over the (compressed) cache at the next original position.
  GenerateResult generate(std::vector<std::int32_t> const& prompt, GenerateOptions options) {
    using clock = std::chrono::steady_clock;
    auto const seconds = [](clock::time_point a) { return std::chrono::duration<double>(clock::now() - a).count(); };
    KVC_CHECK(options.max_new_tokens > 0, "max_new_tokens must be positive, got " << options.max_new_tokens);
    std::int64_t const vocab = model_.config.vocab_size;
    Compressor const* c = options.compressor;
    bool const model_hook = c != nullptr && c->after_prefill_model;
    bool const prefill_hook = c != nullptr && (c->after_prefill || model_hook), step_hook = c != nullptr && c->after_step;
    GenerateResult r{{}, {}, new_cache(static_cast<std::int64_t>(prompt.size()) + options.max_new_tokens)};
    ForwardRecord record;
    record.keep_hidden_states = c != nullptr && c->needs.hidden_states;
    auto t = clock::now();
    std::vector<float> logits = forward(r.cache, prompt, Logits::kLast, nullptr, prefill_hook ? &record : nullptr);
    r.prefill_seconds = seconds(t);
    if (prefill_hook) {
      t = clock::now();
      if (model_hook) c->after_prefill_model(*this, r.cache, record);
      else compress(r.cache, record, c->after_prefill, c->needs);
      r.compress_seconds += seconds(t);
    }
    r.cache_bytes_after_prefill = r.cache.bytes_in_use();
    for (std::int64_t i = 0;; ++i) {
      std::int32_t const token = options.sampler(logits.data(), vocab);
      r.tokens.push_back(token);
      if (options.keep_logits) r.logits.insert(r.logits.end(), logits.begin(), logits.end());
      if (i + 1 == options.max_new_tokens) break;
      t = clock::now();
      logits = forward(r.cache, &token, 1, Logits::kLast, nullptr, step_hook ? &record : nullptr);
      r.decode_seconds += seconds(t);
      if (step_hook) {
        t = clock::now();
        compress(r.cache, record, c->after_step, c->needs);
        r.compress_seconds += seconds(t);
      }
    }
    return r;
  }

 private:
  static float const* bias(std::vector<float> const& b) noexcept { return b.empty() ? nullptr : b.data(); }

  /// Checks a pass of `tokens` [n] over `cache` and returns its first position.
  std::int64_t check_pass(KVCache const& cache, std::int32_t const* tokens, std::int64_t n) const {
    ModelConfig const& c = model_.config;
    KVC_CHECK(n > 0, "forward needs at least one token, got " << n);
    KVC_CHECK(cache.num_layers() == c.num_layers && cache.kv_heads() == c.num_kv_heads && cache.head_dim() == c.head_dim,
              "the cache was not made for this model");
    for (std::int64_t t = 0; t < n; ++t)
      KVC_CHECK(tokens[t] >= 0 && tokens[t] < c.vocab_size,
                "tokens[" << t << "] = " << tokens[t] << " is outside the vocabulary [0, " << c.vocab_size << ")");
    std::int64_t const p0 = cache.next_position();
    KVC_CHECK(c.sliding_window == 0 || p0 + n <= c.sliding_window,
              "the sequence reaches " << p0 + n << " tokens, past config.json's sliding_window = " << c.sliding_window
                                      << "; the engine implements full attention only");
    return p0;
  }

  /// Every layer for B sequences of n tokens each (`tokens` [B, n], sequence b over `*caches[b]`), their
  /// keys and values appended; x_ holds the final hidden states [B·n, hidden]. `rec` (B = 1 only) keeps
  /// each layer's pre-RoPE queries and, when it asks, each layer's attention input.
  void layers(KVCache* const* caches, std::int64_t B, std::int32_t const* tokens, std::int64_t n, ForwardRecord* rec) {
    ModelConfig const& c = model_.config;
    std::int64_t const D = c.hidden_size, H = c.num_heads, kvH = c.num_kv_heads, d = c.head_dim, I = c.intermediate_size;
    std::int64_t const rows = B * n;
    x_.resize(static_cast<std::size_t>(rows * D));
    h_.resize(x_.size());
    q_.resize(static_cast<std::size_t>(rows * H * d));
    attn_.resize(q_.size());
    k_.resize(static_cast<std::size_t>(rows * kvH * d));
    v_.resize(k_.size());
    gate_.resize(static_cast<std::size_t>(rows * I));
    up_.resize(gate_.size());
    cos_.resize(static_cast<std::size_t>(rows * d));
    sin_.resize(cos_.size());
    first_position_.resize(static_cast<std::size_t>(B));
    for (std::int64_t b = 0; b < B; ++b) {
      KVCache& cache = *caches[b];
      std::int64_t const p0 = cache.next_position();
      first_position_[static_cast<std::size_t>(b)] = p0;
      reserve_for(cache, n);
      rope_table(p0, n, p0 + n, cos_.data() + b * n * d, sin_.data() + b * n * d);
    }
    for (std::int64_t t = 0; t < rows; ++t) std::copy_n(model_.embed.data() + tokens[t] * D, D, x_.data() + t * D);

    for (std::int64_t l = 0; l < c.num_layers; ++l) {
      LayerWeights const& w = model_.layers[static_cast<std::size_t>(l)];
      ops::rms_norm(x_.data(), rows, D, w.input_norm.data(), c.rms_norm_eps, h_.data());
      if (rec != nullptr && rec->keep_hidden_states) rec->hidden_states[static_cast<std::size_t>(l)].assign(h_.begin(), h_.begin() + n * D);
      ops::linear(pool_, h_.data(), rows, D, w.q_w.data(), bias(w.q_b), H * d, q_.data());
      ops::linear(pool_, h_.data(), rows, D, w.k_w.data(), bias(w.k_b), kvH * d, k_.data());
      ops::linear(pool_, h_.data(), rows, D, w.v_w.data(), bias(w.v_b), kvH * d, v_.data());
      if (c.qk_norm) {
        ops::rms_norm(q_.data(), rows * H, d, w.q_norm.data(), c.rms_norm_eps, q_.data());
        ops::rms_norm(k_.data(), rows * kvH, d, w.k_norm.data(), c.rms_norm_eps, k_.data());
      }
      if (rec != nullptr) {
        auto& out = rec->queries[static_cast<std::size_t>(l)];  // [H, n, d] from [n, H, d]
        out.resize(static_cast<std::size_t>(H * n * d));
        for (std::int64_t t = 0; t < n; ++t)
          for (std::int64_t j = 0; j < H; ++j) std::copy_n(q_.data() + (t * H + j) * d, d, out.data() + (j * n + t) * d);
      }
      ops::apply_rope(q_.data(), rows, H, d, cos_.data(), sin_.data());
      ops::apply_rope(k_.data(), rows, kvH, d, cos_.data(), sin_.data());
      for (std::int64_t b = 0; b < B; ++b) {
        append(*caches[b], l, n, first_position_[static_cast<std::size_t>(b)], b * n);
        causal_attention(pool_, *caches[b], l, q_.data() + b * n * H * d, n, H, first_new_, attn_.data() + b * n * H * d,
                         scratch_);
      }
      ops::linear(pool_, attn_.data(), rows, H * d, w.o_w.data(), bias(w.o_b), D, h_.data());
      for (std::size_t i = 0; i < x_.size(); ++i) x_[i] += h_[i];

      ops::rms_norm(x_.data(), rows, D, w.post_norm.data(), c.rms_norm_eps, h_.data());
      ops::linear(pool_, h_.data(), rows, D, w.gate_w.data(), bias(w.gate_b), I, gate_.data());
      ops::linear(pool_, h_.data(), rows, D, w.up_w.data(), bias(w.up_b), I, up_.data());
      ops::silu_mul(gate_.data(), up_.data(), rows * I);
      ops::linear(pool_, gate_.data(), rows, I, w.down_w.data(), bias(w.down_b), D, h_.data());
      for (std::size_t i = 0; i < x_.size(); ++i) x_[i] += h_[i];
    }
    for (std::int64_t b = 0; b < B; ++b) caches[b]->advance(n);
  }

  /// Logits [B·count, vocab] of rows first … first + count − 1 of each of the B sequences of n tokens in x_.
  std::vector<float> output_logits(std::int64_t first, std::int64_t count, std::int64_t B) {
    ModelConfig const& c = model_.config;
    std::int64_t const D = c.hidden_size, n = static_cast<std::int64_t>(x_.size()) / (B * D);
    h_.resize(static_cast<std::size_t>(B * count * D));
    for (std::int64_t b = 0; b < B; ++b)
      ops::rms_norm(x_.data() + (b * n + first) * D, count, D, model_.final_norm.data(), c.rms_norm_eps,
                    h_.data() + b * count * D);
    std::vector<float> out(static_cast<std::size_t>(B * count * c.vocab_size));
    ops::linear(pool_, h_.data(), B * count, D, model_.output_weights(), nullptr, c.vocab_size, out.data());
    return out;
  }

  /// cos/sin [count, d] of positions first … first + count − 1, for a pass whose largest position is
  /// seq_len − 1 (dynamic NTK depends on it).
  void rope_table(std::int64_t first, std::int64_t count, std::int64_t seq_len, std::vector<float>& cos,
                  std::vector<float>& sin) const {
    cos.resize(static_cast<std::size_t>(count * model_.config.head_dim));
    sin.resize(cos.size());
    rope_table(first, count, seq_len, cos.data(), sin.data());
  }

  /// \param cos [count, d] \param sin [count, d]
  void rope_table(std::int64_t first, std::int64_t count, std::int64_t seq_len, float* cos, float* sin) const {
    std::int64_t const d = model_.config.head_dim;
    for (std::int64_t t = 0; t < count; ++t) rope_.cos_sin(first + t, seq_len, cos + t * d, sin + t * d);
  }

  /// Rotates rows [rows, d] with the tables' rows 0 … rows − 1.
  void rotate_rows(float* x, std::int64_t rows, std::vector<float> const& cos, std::vector<float> const& sin) const {
    ops::apply_rope(x, rows, 1, model_.config.head_dim, cos.data(), sin.data());
  }

  void reserve_for(KVCache& cache, std::int64_t n) {
    std::int64_t longest = 0;
    for (std::int64_t l = 0; l < cache.num_layers(); ++l)
      for (std::int64_t g = 0; g < cache.kv_heads(); ++g) longest = std::max<std::int64_t>(longest, cache.length(l, g));
    if (longest + n > cache.capacity()) cache.reserve(std::max(longest + n, 2 * cache.capacity()));
  }

  /// Appends a sequence's chunk of keys and values (rows row0 … row0 + n − 1 of k_, v_ [rows, kv_heads, d])
  /// to every kv head of the layer. Keys go full-width even into a packed layer: kvpress's ThinK compresses
  /// the prefill's keys only.
  void append(KVCache& cache, std::int64_t layer, std::int64_t n, std::int64_t p0, std::int64_t row0) {
    std::int64_t const kvH = cache.kv_heads(), d = cache.head_dim();
    first_new_.resize(static_cast<std::size_t>(kvH));
    for (std::int64_t g = 0; g < kvH; ++g) {
      std::int32_t& len = cache.length_ref(layer, g);
      first_new_[static_cast<std::size_t>(g)] = len;
      float* keys = cache.keys(layer, g) + static_cast<std::int64_t>(len - cache.packed_length(layer, g)) * d;  // full-width
      float* values = cache.values(layer, g) + static_cast<std::int64_t>(len) * d;
      std::int32_t* positions = cache.positions(layer, g) + len;
      for (std::int64_t t = 0; t < n; ++t) {
        std::copy_n(k_.data() + ((row0 + t) * kvH + g) * d, d, keys + t * d);
        std::copy_n(v_.data() + ((row0 + t) * kvH + g) * d, d, values + t * d);
        positions[t] = static_cast<std::int32_t>(p0 + t);
      }
      len = static_cast<std::int32_t>(len + n);
    }
  }

  Model const& model_;
  ThreadPool pool_;
  kvcompress::RotaryEmbedding rope_;
  kvcompress::CpuDevice device_;
  std::vector<std::vector<float>> scratch_;  // per thread
  std::vector<float> x_, h_, q_, k_, v_, attn_, gate_, up_, cos_, sin_;  // activations of the current pass
  std::vector<std::int32_t> first_new_;  // [kv_heads] slot of the chunk's first token in the current layer
  std::vector<std::int64_t> first_position_;  // [B] each sequence's first position in the current pass
};

}  // namespace kvc_engine
