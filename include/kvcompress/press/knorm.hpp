#pragma once
/// \file
/// \brief Knorm (arXiv 2406.11430): keep the keys with the smallest L2 norm. score = −‖k‖₂ on the
/// cached (post-RoPE) keys; RoPE is a rotation, so the ranking is the same before and after it.

#include <Eigen/Core>
#include <algorithm>
#include <cstddef>
#include <type_traits>

#include "kvcompress/detail/gather.hpp"
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
    detail::parallel_for(dev, rows, [&](std::int64_t r, int t) {
      using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
      float* tile = tiles + t * kTile * d;  // [kTile, head_dim]
      if constexpr (std::is_same_v<T, float>) {
        // Float keys with contiguous channels are read where they lie: the norm is one pass over
        // the row, and a copy through the tile would add a second.
        if (detail::unit_dim_stride(cache.key_layout)) {
          for (std::int64_t i = 0; i < cache.lengths[r]; ++i)
            scores[r * cap + i] = -Eigen::Map<Eigen::VectorXf const>(&cache.key(r / heads, r % heads, i, 0), d).norm();
          return;
        }
      }
      for (std::int64_t i0 = 0; i0 < cache.lengths[r]; i0 += kTile) {
        std::int64_t const count = std::min<std::int64_t>(kTile, cache.lengths[r] - i0);
        detail::gather_keys(cache, r / heads, r % heads, i0, count, tile);
        Eigen::Map<Eigen::VectorXf>(scores + r * cap + i0, count) =
            -Eigen::Map<RowMajor const>(tile, count, d).rowwise().norm();
      }
    });
  }
};

}  // namespace kvcompress
