#pragma once
/// \file
/// \brief PyramidKV (arXiv 2406.02069): SnapKV's scores with a budget that decreases linearly with
/// depth, so that the mean budget over the layers is n(1 − r). kvpress's arithmetic, including
/// Python's round-half-to-even and the fall back to a uniform budget.

#include <cfenv>
#include <cmath>
#include <cstdint>
#include <limits>

#include "kvcompress/press/snap_kv.hpp"

namespace kvcompress {

struct PyramidKVPress {
  double compression_ratio = 0.0;
  std::int64_t window_size = 64;
  std::int64_t kernel_size = 5;
  double beta = 20.0;

  /// Entries kept in layer `observation.layer_idx` of `observation.num_layers` from a row of n.
  template <class T>
  [[nodiscard]] std::int64_t kept_count(std::int64_t n, Observation<T> const& obs) const {
    KVC_CHECK(beta >= 1.0, "beta must be >= 1, got " << beta);
    KVC_CHECK(obs.num_layers > 0 && obs.layer_idx >= 0 && obs.layer_idx < obs.num_layers,
              "observation.layer_idx = " << obs.layer_idx << " must be in [0, num_layers = " << obs.num_layers << ")");
    // Python's round (ties to even), saturating: extreme window_size or beta values must not make
    // the conversion undefined (a NaN saturates low; keep_topk clamps the budget to [0, n]).
    auto const py_round = [](double x) {
      double const r = std::nearbyint(x);
      if (!(r >= -0x1p63)) return std::numeric_limits<std::int64_t>::min();
      if (!(r < 0x1p63)) return std::numeric_limits<std::int64_t>::max();
      return static_cast<std::int64_t>(r);
    };
    double const nn = static_cast<double>(n), w = static_cast<double>(window_size);
    double const cap = w + nn * (1.0 - compression_ratio);
    double min_num = (cap - w) / beta;
    double max_num = (cap - w) * 2.0 - min_num;
    if (max_num >= nn - w) {
      max_num = nn - w;
      min_num = (cap - w) * 2.0 - max_num;
    }
    if (!(nn >= max_num && max_num >= min_num && min_num >= w))
      return std::max<std::int64_t>(1, py_round(nn * (1.0 - compression_ratio)));
    double const steps = obs.num_layers > 1 ? (max_num - min_num) / static_cast<double>(obs.num_layers - 1) : 0.0;
    return py_round(max_num - static_cast<double>(obs.layer_idx) * steps);
  }

  template <class T, class L>
  [[nodiscard]] std::size_t workspace_bytes(CpuDevice const& dev, Observation<T> const& obs,
                                            KVCacheView<T, L> const& cache) const {
    return detail::snap_kv_bytes(dev, obs, cache, window_size);
  }

  template <class T, class L>
  void score(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, float* scores,
             Workspace& ws) const {
    KVC_CHECK(beta >= 1.0, "beta must be >= 1, got " << beta);
    detail::snap_kv_scores(dev, obs, cache, window_size, kernel_size, scores, ws);
  }
};

}  // namespace kvcompress
