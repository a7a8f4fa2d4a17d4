#pragma once
/// \file
/// \brief ObservedAttention (related to H2O, arXiv 2306.14048): the mean attention each key received
/// from the prefill queries that could see it, s_i = Σ_r A[r, i] / (n − i), averaged over the group.
/// Needs the full prefill attention `Observation::attention` [batch, q_heads, n, n].

#include <cstddef>

#include "kvcompress/press/scorer.hpp"

namespace kvcompress {

struct ObservedAttentionPress {
  double compression_ratio = 0.0;

  template <class T, class L>
  [[nodiscard]] std::size_t workspace_bytes(CpuDevice const&, Observation<T> const&, KVCacheView<T, L> const&) const {
    return 0;
  }

  template <class T, class L>
  void score(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, float* scores,
             Workspace&) const {
    auto const& e = cache.extents;
    Tensor4<T> const& a = obs.attention;
    KVC_CHECK(!a.empty(), "observation.attention must be given (the prefill's attention probabilities "
                          "[batch, q_heads, n, n])");
    KVC_CHECK(a.shape[0] == e.batch, "observation.attention batch = " << a.shape[0] << " does not match the cache batch = " << e.batch);
    KVC_CHECK(a.shape[1] > 0 && a.shape[1] % e.kv_heads == 0,
              "observation.attention heads = " << a.shape[1] << " must be a multiple of kv_heads = " << e.kv_heads);
    std::int64_t const rows = e.batch * e.kv_heads, group = a.shape[1] / e.kv_heads, cap = e.capacity;
    for (std::int64_t r = 0; r < rows; ++r)
      KVC_CHECK(a.shape[2] == cache.lengths[r] && a.shape[3] == cache.lengths[r],
                "observation.attention is " << a.shape[2] << " × " << a.shape[3] << " but row " << r << " holds n = "
                                            << cache.lengths[r] << " (the full prefill attention, q_len == n, is needed)");
    detail::parallel_for(dev, rows, [&](std::int64_t r, int) {
      std::int64_t const b = r / e.kv_heads, h = r % e.kv_heads, n = cache.lengths[r];
      float* out = scores + r * cap;
      std::fill(out, out + n, 0.0f);
      for (std::int64_t j = 0; j < group; ++j)
        for (std::int64_t q = 0; q < n; ++q)
          for (std::int64_t i = 0; i < n; ++i) out[i] += to_float(a(b, h * group + j, q, i));
      for (std::int64_t i = 0; i < n; ++i) out[i] /= static_cast<float>((n - i) * group);
    });
  }
};

}  // namespace kvcompress
