#pragma once
/// \file
/// \brief Compactor (arXiv 2507.08143): blending · LeverageScore + NonCausalAttn, both z-scored, on
/// the prompt without its first `sink_size_start` and last `sink_size_end` tokens, which are always
/// kept (padded with the global maximum of the blended scores, as kvpress does: not max + 1, so a
/// protected entry can tie with the best scored one). `blending` unset means the compression ratio.
/// The sketch is the caller's, as for `LeverageScorePress`. Prefill only, as in kvpress. On a
/// tensor-parallel shard the z-scores and the maximum are the whole layer's (prefill_z_score.hpp).

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>

#include "kvcompress/press/leverage_score.hpp"
#include "kvcompress/press/non_causal_attn.hpp"

namespace kvcompress {

struct CompactorPress {
  double compression_ratio = 0.0;
  std::int64_t sink_size_start = 8;
  std::int64_t sink_size_end = 4;
  std::int64_t chunk_size = 256;
  std::int64_t sketch_dimension = 48;
  std::optional<double> blending{};  ///< unset: compression_ratio
  /// Φ [batch, kv_heads, head_dim, sketch_dimension]; kvpress draws N(0, 1/sketch_dimension).
  float const* sketch = nullptr;

  template <class T, class L>
  [[nodiscard]] std::size_t workspace_bytes(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache) const {
    return detail::sum_bytes(detail::leverage_bytes(dev, cache, std::max<std::int64_t>(sketch_dimension, 1)),
                             detail::global_z_score_bytes(obs, cache, 2),
                             detail::non_causal_bytes(dev, cache, chunk_size),
                             Workspace::bytes_for<float>(detail::size_product(cache.extents.batch, cache.extents.kv_heads,
                                                                              cache.extents.capacity)));
  }

  template <class T, class L>
  void score(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, float* scores,
             Workspace& ws) const {
    char const* const name = "CompactorPress";
    KVC_CHECK(sink_size_start >= 0 && sink_size_end >= 0, "CompactorPress sink_size_start and sink_size_end must be non-negative, got "
                                                              << sink_size_start << " and " << sink_size_end);
    double const blend = blending.value_or(compression_ratio);
    KVC_CHECK(std::isfinite(blend), "CompactorPress blending must be finite, got " << blend);
    detail::check_leverage_inputs(sketch, sketch_dimension, obs, cache, name);
    detail::check_non_causal_queries(obs, cache.extents, chunk_size, name);
    std::int64_t const n = detail::require_prefill(obs, cache, name);
    KVC_CHECK(obs.queries.shape[2] == n, "observation.queries q_len = " << obs.queries.shape[2] << " must equal the chunk length " << n);
    std::int64_t const left = std::min(sink_size_start, n), right = std::min(sink_size_end, std::max<std::int64_t>(0, n - left));
    std::int64_t const lo = left, hi = n - right;
    KVC_CHECK(hi > lo, "CompactorPress needs more than sink_size_start + sink_size_end = " << sink_size_start + sink_size_end
                                                                                            << " entries per row to score, got " << n);
    std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads, cap = cache.extents.capacity;
    float* attn = ws.take<float>(static_cast<std::size_t>(rows * cap));
    detail::leverage_scores(dev, obs, cache, sketch, sketch_dimension, lo, hi, scores, ws, name);
    detail::non_causal_scores(dev, obs, cache, chunk_size, lo, hi, attn, ws);
    float* const both[] = {scores, attn};
    detail::global_z_score(dev, obs, cache, both, 2, lo, hi, name, ws);
    auto const b = static_cast<float>(blend);
    float top = -INFINITY;
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t i = lo; i < hi; ++i) top = std::max(top, scores[r * cap + i] = b * scores[r * cap + i] + attn[r * cap + i]);
    top = detail::layer_max(obs, top);  // on a shard, the whole layer's
    for (std::int64_t r = 0; r < rows; ++r) {
      std::fill(scores + r * cap, scores + r * cap + lo, top);
      std::fill(scores + r * cap + hi, scores + r * cap + n, top);
    }
  }
};

}  // namespace kvcompress
