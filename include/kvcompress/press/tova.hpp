#pragma once
/// \file
/// \brief TOVA (arXiv 2401.06104): the attention of the last token, averaged over all query heads
/// and shared by every kv head, so all heads keep the same positions. The last token is kept.

#include <cstddef>

#include "kvcompress/press/window_attention.hpp"

namespace kvcompress {

struct TOVAPress {
  double compression_ratio = 0.0;

  /// TOVA reads only the chunk's last query, so window queries of any length (the window an engine
  /// keeps for SnapKV, say) are narrowed to their last token.
  template <class T>
  [[nodiscard]] static Observation<T> last_query(Observation<T> obs) {
    Tensor4<T>& wq = obs.window_queries;
    if (!wq.empty() && wq.shape[2] > 1) {
      wq.data += (wq.shape[2] - 1) * wq.strides[2];
      wq.shape[2] = 1;
    }
    return obs;
  }

  template <class T, class L>
  [[nodiscard]] std::size_t workspace_bytes(CpuDevice const& dev, Observation<T> const& obs,
                                            KVCacheView<T, L> const& cache) const {
    return detail::snap_kv_bytes(dev, last_query(obs), cache, 1);
  }

  template <class T, class L>
  void score(CpuDevice const& dev, Observation<T> const& given, KVCacheView<T, L> const& cache, float* scores,
             Workspace& ws) const {
    Observation<T> const obs = last_query(given);
    auto const& e = cache.extents;
    for (std::int64_t b = 0; b < e.batch; ++b)
      for (std::int64_t h = 1; h < e.kv_heads; ++h)
        KVC_CHECK(cache.length(b, h) == cache.length(b, 0),
                  "TOVA averages over all heads, so every kv head of a batch element needs the same length; batch "
                      << b << " has " << cache.length(b, 0) << " in head 0 and " << cache.length(b, h) << " in head " << h);
    bool const from_queries = detail::window_from_queries(obs, cache, 1);
    std::int64_t const group = detail::window_group(obs, cache), cap = e.capacity;
    int const threads = detail::thread_count(dev, e.batch * e.kv_heads);
    float* probs = ws.take<float>(static_cast<std::size_t>(threads * group * cap));
    // Per row: the sum over its group's query heads; then per batch element the mean over all heads.
    detail::window_attention_mean(dev, obs, cache, 1, from_queries, probs, ws,
                                  [&](std::int64_t r, std::int64_t j, float const* p) {
                                    std::int64_t const m = cache.lengths[r] - 1;
                                    float* out = scores + r * cap;
                                    if (j == 0) std::fill(out, out + m, 0.0f);
                                    for (std::int64_t i = 0; i < m; ++i) out[i] += p[i];
                                  });
    float const inv_heads = 1.0f / static_cast<float>(group * e.kv_heads);
    for (std::int64_t b = 0; b < e.batch; ++b) {
      std::int64_t const m = cache.length(b, 0) - 1;
      float* first = scores + b * e.kv_heads * cap;
      for (std::int64_t i = 0; i < m; ++i) {
        float acc = 0.0f;
        for (std::int64_t h = 0; h < e.kv_heads; ++h) acc += first[h * cap + i];
        first[i] = acc * inv_heads;
      }
      for (std::int64_t h = 1; h < e.kv_heads; ++h) std::copy(first, first + m, first + h * cap);
    }
    detail::protect_window(cache, scores, 1);
  }
};

}  // namespace kvcompress
