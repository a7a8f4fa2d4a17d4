#pragma once
/// \file
/// \brief KeyDiff (arXiv 2504.15364): keep the keys whose direction differs most from the row's
/// average direction. Per (batch, kv head) row of n live keys (post-RoPE, as cached):
///   anchor = mean_i k_i / max(‖k_i‖, 1e-12)                       (F.normalize, eps 1e-12)
///   score_i = −⟨k_i, anchor⟩ / (max(‖k_i‖, 1e-8)·max(‖anchor‖, 1e-8))  (F.cosine_similarity, eps 1e-8)
/// PyTorch ≥ 2 clamps each norm on its own (not their product), so a zero key scores 0.
/// The paper's block-wise variant is this press inside a block-wise wrapper (kvpress BlockPress).

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "kvcompress/detail/gather.hpp"
#include "kvcompress/detail/row_kernels.hpp"
#include "kvcompress/press/scorer.hpp"

namespace kvcompress {

/// \brief score = −cos(k, mean of the normalised keys of the row). Rows have their own lengths.
struct KeyDiffPress {
  double compression_ratio = 0.0;

  static constexpr float kNormalizeEps = 1e-12f;  ///< F.normalize's default eps
  static constexpr float kCosineEps = 1e-8f;      ///< F.cosine_similarity's default eps
  static constexpr std::int64_t kChunk = 64;      ///< keys per block of pass 2's dot products

  template <class T, class L>
  [[nodiscard]] std::size_t workspace_bytes(CpuDevice const& dev, Observation<T> const&,
                                            KVCacheView<T, L> const& cache) const {
    std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads;
    return Workspace::bytes_for<float>(detail::size_product(detail::thread_count(dev, rows), 2, cache.extents.head_dim));
  }

  /// \param scores [batch, kv_heads, capacity]
  template <class T, class L>
  void score(CpuDevice const& dev, Observation<T> const&, KVCacheView<T, L> const& cache, float* scores,
             Workspace& ws) const {
    std::int64_t const heads = cache.extents.kv_heads, cap = cache.extents.capacity, d = cache.extents.head_dim;
    std::int64_t const rows = cache.extents.batch * heads;
    float* anchors = ws.take<float>(static_cast<std::size_t>(std::int64_t{detail::thread_count(dev, rows)} * 2 * d));  // [threads, anchor | key]
    detail::RowIsa const isa = detail::row_isa(dev, d);
    detail::parallel_for(dev, rows, [&](std::int64_t r, int t) {
      std::int64_t const b = r / heads, h = r % heads;
      std::int32_t const n = cache.lengths[r];
      if (n == 0) return;
      float* anchor = anchors + std::int64_t{t} * 2 * d;  // [d]
      float* out = scores + r * cap;
      std::fill(anchor, anchor + d, 0.0f);
      // Keys whose channels are not contiguous are copied one at a time into `key`, so that every
      // layout runs the same kernels in the same order: the scores do not depend on the layout.
      float* key = anchor + d;  // [d]
      auto const each_run = [&](auto&& f) {
        if (detail::unit_dim_stride(cache.key_layout)) {
          detail::for_key_runs(cache, b, h, 0, n, f);
          return;
        }
        for (std::int64_t i = 0; i < n; ++i) {
          detail::gather_keys(cache, b, h, i, 1, key);
          f(static_cast<float const*>(key), std::int64_t{1}, d, i);
        }
      };
      // Pass 1: key norms (kept in `out` for pass 2) and the sum of the normalised keys.
      each_run([&](auto const* keys, std::int64_t count, std::int64_t stride, std::int64_t i0) {
        detail::key_normalized_sum(isa, keys, count, stride, d, kNormalizeEps, out + i0, anchor);
      });
      float aa = 0.0f;
      for (std::int64_t c = 0; c < d; ++c) {
        anchor[c] /= static_cast<float>(n);
        aa += anchor[c] * anchor[c];
      }
      float const anchor_norm = std::max(std::sqrt(aa), kCosineEps);
      // Pass 2: −cos.
      each_run([&](auto const* keys, std::int64_t count, std::int64_t stride, std::int64_t i0) {
        float dots[kChunk];
        for (std::int64_t c0 = 0; c0 < count; c0 += kChunk) {
          std::int64_t const m = std::min(kChunk, count - c0);
          detail::key_dots(isa, keys + c0 * stride, m, stride, d, anchor, 1, dots, m);
          for (std::int64_t i = 0; i < m; ++i)
            out[i0 + c0 + i] = -dots[i] / (std::max(out[i0 + c0 + i], kCosineEps) * anchor_norm);
        }
      });
    });
  }
};

}  // namespace kvcompress
