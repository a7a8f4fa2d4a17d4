#pragma once
/// \file
/// \brief Q-Filter (arXiv 2503.02812): score = −⟨f_{ℓ,h}, k⟩ with a learned filter per (layer, kv
/// head), on the cached (post-RoPE) keys. kvpress downloads the filters from the Hugging Face hub
/// (`nthngdy/<model>_qfilt`, parameter `q_filters` [num_layers, num_kv_heads, head_dim]); here the
/// caller supplies them, in float. The layer comes from `Observation::layer_idx`; on a tensor-parallel
/// shard the filters are the whole layer's and each head reads its global head's (no communication).

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "kvcompress/press/scorer.hpp"

namespace kvcompress {

/// \brief score = −⟨filters[layer_idx, h, :], k⟩. The filters' shape must be stated: the press
/// checks it against the cache and the observation before reading them.
struct QFilterPress {
  double compression_ratio = 0.0;
  float const* filters = nullptr;  // [num_layers, num_kv_heads, head_dim], row-major
  int num_layers = 0;
  int num_kv_heads = 0;  ///< must equal the cache's kv_heads
  int head_dim = 0;      ///< must equal the cache's head_dim

  template <class T, class L>
  [[nodiscard]] std::size_t workspace_bytes(CpuDevice const&, Observation<T> const&,
                                            KVCacheView<T, L> const&) const noexcept {
    return 0;
  }

  /// \param scores [batch, kv_heads, capacity]
  template <class T, class L>
  void score(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, float* scores,
             Workspace&) const {
    KVC_CHECK(filters != nullptr, "QFilterPress.filters must be given ([num_layers, num_kv_heads, head_dim] "
                                  "float; kvpress loads them from nthngdy/<model>_qfilt)");
    KVC_CHECK(num_layers > 0, "QFilterPress.num_layers must be positive, got " << num_layers);
    KVC_CHECK(obs.layer_idx >= 0 && obs.layer_idx < num_layers,
              "observation.layer_idx = " << obs.layer_idx << " is outside [0, num_layers = " << num_layers << ")");
    std::int64_t const layer_heads = detail::layer_kv_heads(obs, cache);
    KVC_CHECK(num_kv_heads == layer_heads, "QFilterPress.num_kv_heads = "
                                               << num_kv_heads << " does not match the "
                                               << (obs.shard.split() ? "layer's kv_heads (observation.shard.kv_heads) = "
                                                                     : "cache kv_heads = ")
                                               << layer_heads);
    KVC_CHECK(head_dim == cache.extents.head_dim, "QFilterPress.head_dim = "
                                                      << head_dim << " does not match the cache head_dim = "
                                                      << cache.extents.head_dim);
    std::int64_t const heads = cache.extents.kv_heads, d = head_dim, cap = cache.extents.capacity;
    float const* layer = filters + static_cast<std::int64_t>(obs.layer_idx) * layer_heads * d;  // [layer heads, d]
    for (std::int64_t i = 0; i < layer_heads * d; ++i)
      KVC_CHECK(std::isfinite(layer[i]), "QFilterPress.filters[" << obs.layer_idx << ", " << i / d << ", " << i % d
                                                                 << "] = " << layer[i] << " is not finite");
    detail::parallel_for(dev, cache.extents.batch * heads, [&](std::int64_t r, int) {
      std::int64_t const b = r / heads, h = r % heads;
      float const* f = layer + (obs.shard.first_kv_head + h) * d;  // the filter of the head's place in the layer
      float* out = scores + r * cap;
      for (std::int32_t i = 0; i < cache.lengths[r]; ++i) {
        float dot = 0.0f;
        for (std::int64_t c = 0; c < d; ++c) dot += f[c] * to_float(cache.key(b, h, i, c));
        out[i] = -dot;
      }
    });
  }
};

}  // namespace kvcompress
