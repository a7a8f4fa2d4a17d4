#pragma once
/// \file
/// \brief Knorm (arXiv 2406.11430): keep the keys with the smallest L2 norm. score = −‖k‖₂ on the
/// cached (post-RoPE) keys; RoPE is a rotation, so the ranking is the same before and after it.

#include <cmath>
#include <cstddef>

#include "kvcompress/press/scorer.hpp"

namespace kvcompress {

struct KnormPress {
  double compression_ratio = 0.0;

  template <class T, class L>
  [[nodiscard]] std::size_t workspace_bytes(CpuDevice const&, Observation<T> const&,
                                            KVCacheView<T, L> const&) const noexcept {
    return 0;
  }

  template <class T, class L>
  void score(CpuDevice const& dev, Observation<T> const&, KVCacheView<T, L> const& cache, float* scores,
             Workspace&) const {
    std::int64_t const heads = cache.extents.kv_heads, cap = cache.extents.capacity;
    std::int64_t const d = cache.extents.head_dim;
    detail::parallel_for(dev, cache.extents.batch * heads, [&](std::int64_t r, int) {
      std::int64_t const b = r / heads, h = r % heads;
      for (std::int32_t i = 0; i < cache.lengths[r]; ++i) {
        float ss = 0.0f;
        for (std::int64_t c = 0; c < d; ++c) {
          float const x = to_float(cache.key(b, h, i, c));
          ss += x * x;
        }
        scores[r * cap + i] = -std::sqrt(ss);
      }
    });
  }
};

}  // namespace kvcompress
