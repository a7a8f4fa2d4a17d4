#pragma once
/// \file
/// \brief SnapKV (arXiv 2404.14469): the attention that the last `window_size` tokens pay to each
/// earlier key, averaged over the window, smoothed by an average pooling along the sequence and
/// averaged over the query heads of the group, predicts which keys matter. The window is always kept
/// (scored the layer's maximum + 1; on a tensor-parallel shard the group's maximum, one float).

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <utility>

#include "kvcompress/press/layer_max.hpp"
#include "kvcompress/press/window_attention.hpp"

namespace kvcompress {

namespace detail {

/// Query heads per kv head in whichever window input the observation carries (1 if none).
template <class T, class L>
std::int64_t window_group(Observation<T> const& obs, KVCacheView<T, L> const& cache) {
  Tensor4<T> const& t = obs.window_queries.empty() ? obs.attention : obs.window_queries;
  return t.empty() ? 1 : std::max<std::int64_t>(1, t.shape[1] / cache.extents.kv_heads);
}

/// `protect_window` with the maximum of the whole layer: on a tensor-parallel shard the group's (a
/// handshake, then a one-float all-reduce), so that the window scores the whole layer's value, which a
/// press that combines heads (AdaKV, ChunkKV) needs bit for bit. The scored slots are checked finite
/// first, so that no rank fails after the handshake (layer_max.hpp). \param scores [batch, kv_heads, capacity]
template <class T, class L>
void protect_layer_window(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, float* scores,
                          std::int64_t window, Workspace& ws) {
  if (!obs.shard.split()) {
    protect_window(cache, scores, window);
    return;
  }
  std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads, cap = cache.extents.capacity;
  float m = -INFINITY;
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t i = 0; i < cache.lengths[r] - window; ++i) m = std::max(m, scores[r * cap + i]);
  m = layer_score_max(dev, obs, cache, scores, m,
                      [&](std::int64_t r) { return std::pair<std::int64_t, std::int64_t>{0, cache.lengths[r] - window}; }, ws);
  float const protect = (std::isfinite(m) ? m : 0.0f) + 1.0f;
  for (std::int64_t r = 0; r < rows; ++r)
    std::fill(scores + r * cap + std::max<std::int64_t>(cache.lengths[r] - window, 0), scores + r * cap + cache.lengths[r], protect);
}

/// SnapKV's scores, shared with PyramidKV. \param scores [batch, kv_heads, capacity]
template <class T, class L>
void snap_kv_scores(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache,
                    std::int64_t window, std::int64_t kernel, float* scores, Workspace& ws) {
  KVC_CHECK(window > 0, "window_size must be positive, got " << window);
  KVC_CHECK(kernel > 0 && kernel % 2 == 1, "kernel_size must be odd and positive, got "
                                               << kernel << " (an even kernel changes the pooled length; kvpress fails too)");
  bool const from_queries = window_from_queries(obs, cache, window);
  std::int64_t const group = window_group(obs, cache), cap = cache.extents.capacity;
  int const threads = thread_count(dev, cache.extents.batch * cache.extents.kv_heads);
  float* probs = ws.take<float>(static_cast<std::size_t>(threads * group * cap));
  window_attention_mean(dev, obs, cache, window, from_queries, probs, ws, [&](std::int64_t r, std::int64_t j, float const* p) {
    std::int64_t const m = cache.lengths[r] - window;
    float* out = scores + r * cap;
    if (j == 0) std::fill(out, out + m, 0.0f);
    add_avg_pool(p, m, kernel, 1.0f / static_cast<float>(group), out);
  });
  protect_layer_window(dev, obs, cache, scores, window, ws);
}

template <class T, class L>
std::size_t snap_kv_bytes(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache,
                          std::int64_t window) {
  std::int64_t const threads = thread_count(dev, cache.extents.batch * cache.extents.kv_heads);
  return sum_bytes(Workspace::bytes_for<float>(size_product(threads, window_group(obs, cache), cache.extents.capacity)),
                   window_attention_bytes(dev, obs, cache, window), handshake_bytes(obs.shard));
}

}  // namespace detail

struct SnapKVPress {
  double compression_ratio = 0.0;
  std::int64_t window_size = 64;
  std::int64_t kernel_size = 5;

  template <class T, class L>
  [[nodiscard]] std::size_t workspace_bytes(CpuDevice const& dev, Observation<T> const& obs,
                                            KVCacheView<T, L> const& cache) const {
    return detail::snap_kv_bytes(dev, obs, cache, window_size);
  }

  template <class T, class L>
  void score(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, float* scores,
             Workspace& ws) const {
    detail::snap_kv_scores(dev, obs, cache, window_size, kernel_size, scores, ws);
  }
};

}  // namespace kvcompress
