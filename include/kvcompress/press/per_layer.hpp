#pragma once
/// \file
/// \brief PerLayerCompressionPress: the inner press with the compression ratio of the layer being
/// compressed, `compression_ratios[observation.layer_idx]`. A ratio of 1 evicts the whole layer
/// (every row's length becomes 0), as kvpress allows here.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "kvcompress/press/scorer.hpp"

namespace kvcompress {

/// \tparam Press any press with a settable ratio (its own `compression_ratio` or its inner press's)
template <class Press>
struct PerLayerCompressionPress {
  Press press;
  /// One ratio per layer, each in [0, 1].
  std::vector<double> compression_ratios;

  /// The inner press's ratio at `obs.layer_idx`; throws if there is none or it is outside [0, 1].
  template <class T>
  [[nodiscard]] double ratio_for(Observation<T> const& obs) const {
    auto const layers = static_cast<std::int64_t>(compression_ratios.size());
    KVC_CHECK(
        obs.layer_idx >= 0 && obs.layer_idx < layers,
        "observation.layer_idx = " << obs.layer_idx << " has no entry in compression_ratios (size " << layers << ")");
    double const r = compression_ratios[static_cast<std::size_t>(obs.layer_idx)];
    KVC_CHECK(r >= 0.0 && r <= 1.0, "compression_ratios[" << obs.layer_idx << "] must be in [0, 1], got " << r);
    return r;
  }

  template <class T, class L>
  [[nodiscard]] std::size_t compress_workspace_bytes(CpuDevice const& dev, Observation<T> const& obs,
                                                     KVCacheView<T, L> const& cache) const {
    double const r = ratio_for(obs);
    return r == 1.0 ? 0 : kvcompress::compress_workspace_bytes(dev, with_compression_ratio(press, r), obs, cache);
  }

  template <class T, class L>
  void compress(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, Workspace ws) const {
    double const r = ratio_for(obs);
    if (r == 1.0) {
      std::fill(cache.lengths, cache.lengths + cache.extents.batch * cache.extents.kv_heads, 0);
      return;
    }
    kvcompress::compress(dev, with_compression_ratio(press, r), obs, cache, ws);
  }
};

template <class Press>
PerLayerCompressionPress(Press, std::vector<double>) -> PerLayerCompressionPress<Press>;

}  // namespace kvcompress
