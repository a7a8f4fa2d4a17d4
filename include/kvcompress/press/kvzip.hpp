#pragma once
/// \file
/// \brief KVzip (arXiv 2505.23416): an entry matters as much as the model attends to it when asked to
/// repeat the context. After the prefill, the engine feeds, per chunk [start, end) of the context
/// (`chunk_size` tokens), a reconstruction input — a "repeat the context" prompt, the chat suffix and
/// the chunk's tokens — through the model over the full cache. In each layer, the input's post-RoPE
/// queries attend to [the first min(n_sink, start) keys, the chunk's keys, the input's own keys]
/// (causal over the latter only); the score of chunk entry i for kv head g is the maximum of that
/// attention over the input's tokens and g's query heads. KVzip+ (`kvzip_plus_normalization`) divides
/// each query row by ‖x_t‖₂ (its hidden state) and multiplies each column by ‖v_i W_o^{(j)}‖₂.
/// After every chunk of every layer: the first n_sink entries get the global maximum + 1, then the
/// eviction across layers of `cross_layer_eviction.hpp`.
///
/// The library part is `score_chunk` (one layer, one chunk, from what the engine's pass hands over)
/// and `protect_sinks`; the engine owns the reconstruction passes and the prompt. kvpress masks the
/// evicted entries; here each head's row really shortens. Batch 1, as kvpress.
///
/// On a tensor-parallel shard each rank scores its kv heads (`observation.shard`; the queries and
/// W_o's columns of their query heads: the scores are per head, so bit-identical), `protect_sinks`
/// takes the shard's maximum (one float all-reduce) and the eviction of `cross_layer_eviction.hpp`
/// is a distributed selection, so every rank evicts what one process evicts from the whole model.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include "kvcompress/detail/gather.hpp"
#include "kvcompress/dist/shard_protocol.hpp"
#include "kvcompress/press/cross_layer_eviction.hpp"
#include "kvcompress/rope/rotary_embedding.hpp"

namespace kvcompress {

struct KVzipPress {
  double compression_ratio = 0.0;
  bool layerwise = false;                 ///< every layer evicts the same share
  std::int64_t n_sink = 4;                ///< first entries always kept (and attended in every chunk)
  bool kvzip_plus_normalization = false;  ///< KVzip+: rows / ‖x_t‖, columns × ‖v W_o‖
  std::int64_t chunk_size = 2048;         ///< context tokens per reconstruction pass

  /// \brief Scores chunk [start, end) of one layer from its reconstruction pass.
  /// \param obs    `queries`: pre-RoPE queries of the reconstruction input [1, q_heads, q, head_dim];
  ///               `rope`; `position`: the input's first position (the context length). KVzip+ also
  ///               `hidden_states` [1, 1, q, hidden] and `output_projection` W_o [hidden, q_heads·head_dim]
  /// \param cache  the layer's batch-1 cache: the context's entries, then the input's q own entries
  ///               (each row holds context_length + q)
  /// \param scores [kv_heads, context_length]; entries [start, end) are written
  template <class T, class L>
  void score_chunk(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, std::int64_t context_length,
                   std::int64_t start, std::int64_t end, float* scores) const {
    // Per head: on a shard each rank's rows are the whole layer's; the call ends with the handshake.
    detail::shard_call(obs, cache, [&] { score_chunk_local(dev, obs, cache, context_length, start, end, scores); });
  }

  /// \brief kvpress's sink protection before the eviction: the first n_sink entries of every layer
  /// and head get the maximum over all scores + 1. \param scores [rows, context_length]
  void protect_sinks(float* scores, std::int64_t rows, std::int64_t context_length) const {
    check();
    KVC_CHECK(scores != nullptr && rows > 0 && context_length > 0, "KVzipPress protect_sinks: scores, rows = " << rows
                                                                        << " and context_length = " << context_length << " must be given");
    float top = -INFINITY;
    for (std::int64_t i = 0; i < rows * context_length; ++i) top = std::max(top, scores[i]);
    for (std::int64_t r = 0; r < rows; ++r) std::fill_n(scores + r * context_length, std::min(n_sink, context_length), top + 1.0f);
  }

  /// \brief `protect_sinks` on a tensor-parallel shard: the maximum is over every rank's scores (one
  /// float all-reduce), so each rank's sinks get what the whole model's get.
  /// \param scores [layers, kv_heads, context_length] this rank's kv heads of every layer
  void protect_sinks(float* scores, int layers, std::int64_t kv_heads, std::int64_t context_length,
                     TensorParallelShard const& shard) const {
    std::int64_t const heads = shard.kv_heads > 0 ? shard.kv_heads : kv_heads;
    detail::ShardRecord const record{kv_heads, heads, 1, layers};
    detail::shard_call(shard, record, [&] {
      check();
      KVC_CHECK(scores != nullptr && layers > 0 && kv_heads > 0 && context_length > 0,
                "KVzipPress protect_sinks: scores, layers = " << layers << ", kv_heads = " << kv_heads
                                                              << " and context_length = " << context_length << " must be given");
      detail::validate_shard(shard, kv_heads, "KVzipPress protect_sinks shard");
      std::int64_t const rows = layers * kv_heads;
      float top = -INFINITY;
      for (std::int64_t r = 0; r < rows * context_length; ++r) top = std::max(top, scores[r]);
      if (shard.split()) {
        std::vector<std::int64_t> table(static_cast<std::size_t>(shard.communicator->size() + 1) * detail::kFields);
        detail::join_shard(shard, record, context_length, n_sink, table.data());
        shard.communicator->all_reduce(&top, 1, ReduceOp::max);
      }
      for (std::int64_t r = 0; r < rows; ++r) std::fill_n(scores + r * context_length, std::min(n_sink, context_length), top + 1.0f);
    });
  }

 private:
  template <class T, class L>
  void score_chunk_local(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, std::int64_t context_length,
                         std::int64_t start, std::int64_t end, float* scores) const {
    check();
    detail::validate_inputs(obs, cache);
    auto const& e = cache.extents;
    KVC_CHECK(scores != nullptr, "KVzipPress score_chunk: scores must not be null");
    KVC_CHECK(e.batch == 1, "KVzipPress scores one sequence (kvpress: batch 1), got batch = " << e.batch);
    KVC_CHECK(!obs.queries.empty(), "observation.queries (pre-RoPE queries of the reconstruction input) must be given");
    KVC_CHECK(obs.rope != nullptr, "observation.rope must be set: KVzipPress rotates the reconstruction queries");
    auto const& s = obs.queries.shape;
    std::int64_t const q = s[2], d = e.head_dim, H = s[1];
    KVC_CHECK(s[0] == 1 && H % e.kv_heads == 0 && s[3] == d,
              "observation.queries must be [1, q_heads (a multiple of kv_heads = " << e.kv_heads << "), q, head_dim = " << d
                                                                                 << "], got [" << s[0] << ", " << H << ", " << q
                                                                                 << ", " << s[3] << "]");
    KVC_CHECK(0 <= start && start < end && end <= context_length,
              "KVzipPress chunk [" << start << ", " << end << ") must be a non-empty part of the context [0, " << context_length << ")");
    for (std::int64_t h = 0; h < e.kv_heads; ++h)
      KVC_CHECK(cache.lengths[h] == context_length + q, "KVzipPress: row " << h << " holds " << cache.lengths[h]
                                                                           << " entries, the context_length + reconstruction length = "
                                                                           << context_length + q);
    std::int64_t const G = H / e.kv_heads;
    if (kvzip_plus_normalization) check_plus_inputs(obs, q, H, d);
    std::int64_t const sink = std::min(n_sink, start), len = end - start, m = sink + len + q;
    std::int64_t const seq_len = obs.position + q;  // the pass's largest position + 1 (dynamic RoPE)
    float const scale = 1.0f / std::sqrt(static_cast<float>(d));
    // Column c of the subsampled keys: the sinks, the chunk, the input's own entries.
    auto const slot = [&](std::int64_t c) { return c < sink ? c : c < sink + len ? start + c - sink : context_length + c - sink - len; };
    std::int64_t const per = m * d + d + m + d / 2 + 2 * d;
    std::vector<float> buf(detail::size_product(detail::thread_count(dev, e.kv_heads * G), per));  // once per call
    std::vector<float> row_best(detail::size_product(e.kv_heads * G, len));
    detail::parallel_for(dev, e.kv_heads * G, [&](std::int64_t hj, int th) {
      std::int64_t const h = hj / G, j = hj % G;
      float* keys = buf.data() + th * per;  // [m, d]
      float* qv = keys + m * d;             // [d]
      float* logits = qv + d;               // [m]
      float* rope_scratch = logits + m;     // [d / 2 + 2d]
      for (std::int64_t c = 0; c < m; ++c) detail::gather_keys(cache, 0, h, slot(c), 1, keys + c * d);
      float* best = row_best.data() + hj * len;  // [len]
      std::fill(best, best + len, -INFINITY);
      for (std::int64_t t = 0; t < q; ++t) {
        for (std::int64_t c = 0; c < d; ++c) qv[c] = to_float(obs.queries(0, h * G + j, t, c));
        obs.rope->apply(qv, obs.position + t, seq_len, rope_scratch);
        float zmax = -INFINITY;
        for (std::int64_t c = 0; c < m; ++c) {
          float z = 0.0f;
          for (std::int64_t k = 0; k < d; ++k) z += qv[k] * keys[c * d + k];
          z *= scale;
          if (c >= sink + len && c - sink - len > t) z = -INFINITY;  // the input's later tokens
          logits[c] = z;
          zmax = std::max(zmax, z);
        }
        float sum = 0.0f;
        for (std::int64_t c = 0; c < m; ++c) sum += (logits[c] = std::exp(logits[c] - zmax));
        float row = 1.0f / sum;
        if (kvzip_plus_normalization) row /= hidden_norm(obs, t);
        for (std::int64_t i = 0; i < len; ++i) best[i] = std::max(best[i], logits[sink + i] * row);
      }
      if (kvzip_plus_normalization)
        for (std::int64_t i = 0; i < len; ++i) best[i] *= value_output_norm(obs, cache, h, h * G + j, start + i);
    });
    for (std::int64_t h = 0; h < e.kv_heads; ++h)
      for (std::int64_t i = 0; i < len; ++i) {
        float x = -INFINITY;
        for (std::int64_t j = 0; j < G; ++j) x = std::max(x, row_best[static_cast<std::size_t>((h * G + j) * len + i)]);
        if (!std::isfinite(x)) {
          detail::require_finite(obs.queries, "observation.queries");
          detail::require_finite(obs.hidden_states, "observation.hidden_states");
          detail::require_finite_cache(dev, cache);
          KVC_THROW("KVzipPress: a non-finite score " << x << " at (kv head " << h << ", entry " << start + i << ") from finite inputs");
        }
        scores[h * context_length + start + i] = x;
      }
  }

  void check() const {
    check_compression_ratio(compression_ratio);
    KVC_CHECK(n_sink >= 0, "KVzipPress n_sink must be non-negative, got " << n_sink);
    KVC_CHECK(chunk_size > 0, "KVzipPress chunk_size must be positive, got " << chunk_size);
  }

  template <class T>
  static void check_plus_inputs(Observation<T> const& obs, std::int64_t q, std::int64_t H, std::int64_t d) {
    KVC_CHECK(!obs.hidden_states.empty(), "KVzipPress kvzip_plus_normalization needs observation.hidden_states [1, 1, q, hidden]");
    KVC_CHECK(!obs.output_projection.empty(), "KVzipPress kvzip_plus_normalization needs observation.output_projection (W_o)");
    auto const& s = obs.hidden_states.shape;
    KVC_CHECK(s[0] == 1 && s[1] == 1 && s[2] == q, "observation.hidden_states must be [1, 1, q = " << q << ", hidden], got [" << s[0]
                                                                                              << ", " << s[1] << ", " << s[2] << ", " << s[3] << "]");
    KVC_CHECK(obs.output_projection.shape[0] == s[3] && obs.output_projection.shape[1] == H * d,
              "observation.output_projection must be [hidden = " << s[3] << ", q_heads · head_dim = " << H * d << "], got ["
                                                                 << obs.output_projection.shape[0] << ", " << obs.output_projection.shape[1] << "]");
  }

  template <class T>
  static float hidden_norm(Observation<T> const& obs, std::int64_t t) {
    double s = 0.0;
    for (std::int64_t c = 0; c < obs.hidden_states.shape[3]; ++c) {
      double const x = to_float(obs.hidden_states(0, 0, t, c));
      s += x * x;
    }
    return static_cast<float>(std::sqrt(s));
  }

  /// ‖v_i W_o^{(j)}‖₂ for value entry `slot` of kv head h and query head j.
  template <class T, class L>
  static float value_output_norm(Observation<T> const& obs, KVCacheView<T, L> const& cache, std::int64_t h, std::int64_t j,
                                 std::int64_t slot) {
    auto const& w = obs.output_projection;
    std::int64_t const d = cache.extents.head_dim, D = w.shape[0];
    double s = 0.0;
    for (std::int64_t r = 0; r < D; ++r) {
      float acc = 0.0f;
      for (std::int64_t c = 0; c < d; ++c) acc += to_float(cache.value(0, h, slot, c)) * to_float(w(r, j * d + c));
      s += double(acc) * acc;
    }
    return static_cast<float>(std::sqrt(s));
  }
};

}  // namespace kvcompress
