#pragma once
/// \file
/// \brief Knorm (arXiv 2406.11430): keep the keys with the smallest L2 norm. score = −‖k‖₂ on the
/// cached (post-RoPE) keys; RoPE is a rotation, so the ranking is the same before and after it.

#include <algorithm>
#include <cmath>
#include <cstddef>

#include "kvcompress/detail/gather.hpp"
#include "kvcompress/detail/row_kernels.hpp"
#include "kvcompress/press/scorer.hpp"

namespace kvcompress {

struct KnormPress {
  double compression_ratio = 0.0;

  /// Keys per gathered tile: 64 × head_dim floats stay in L1 for head_dim ≤ 128.
  static constexpr std::int64_t kTile = 64;

  template <class T, class L>
  [[nodiscard]] std::size_t workspace_bytes(CpuDevice const& dev, Observation<T> const&,
                                            KVCacheView<T, L> const& cache) const {
    auto const threads = detail::thread_count(dev, cache.extents.batch * cache.extents.kv_heads);
    return Workspace::bytes_for<float>(detail::size_product(threads, kTile, cache.extents.head_dim));
  }

  template <class T, class L>
  void score(CpuDevice const& dev, Observation<T> const&, KVCacheView<T, L> const& cache, float* scores,
             Workspace& ws) const {
    std::int64_t const heads = cache.extents.kv_heads, cap = cache.extents.capacity;
    std::int64_t const d = cache.extents.head_dim, rows = cache.extents.batch * heads;
    float* tiles = ws.take<float>(static_cast<std::size_t>(detail::thread_count(dev, rows) * kTile * d));
    detail::RowIsa const isa = detail::row_isa(dev, d);
    detail::parallel_for(dev, rows, [&](std::int64_t r, int t) {
      std::int64_t const b = r / heads, h = r % heads, n = cache.lengths[r];
      float* out = scores + r * cap;  // [n]
      if (detail::unit_dim_stride(cache.key_layout)) {
        // Keys with contiguous channels are read where they lie, once, converted in registers.
        detail::for_key_runs(cache, b, h, 0, n, [&](T const* keys, std::int64_t count, std::int64_t stride, std::int64_t i0) {
          detail::key_sq_norms(isa, keys, count, stride, d, out + i0);
        });
        for (std::int64_t i = 0; i < n; ++i) out[i] = -std::sqrt(out[i]);
        return;
      }
      // Other layouts: tiles of keys gathered as float, then the same kernel, so that the scores do
      // not depend on the layout.
      float* tile = tiles + t * kTile * d;  // [kTile, head_dim]
      for (std::int64_t i0 = 0; i0 < n; i0 += kTile) {
        std::int64_t const count = std::min<std::int64_t>(kTile, n - i0);
        detail::gather_keys(cache, b, h, i0, count, tile);
        detail::key_sq_norms(isa, static_cast<float const*>(tile), count, d, d, out + i0);
      }
      for (std::int64_t i = 0; i < n; ++i) out[i] = -std::sqrt(out[i]);
    });
  }
};

}  // namespace kvcompress
