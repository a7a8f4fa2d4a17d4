#pragma once
/// \file
/// \brief StreamingLLM (arXiv 2309.17453): keep the first `n_sink` entries (attention sinks) and the
/// most recent ones, prune the middle. As in kvpress, score = 1 everywhere except 0 on
/// [n_sink, n_sink + n_pruned) with n_pruned = n − kept_count(n, ratio), so top-k keeps exactly the
/// sinks plus the last n_kept − n_sink entries (only sinks when n_kept ≤ n_sink).
///
/// Keys keep their original RoPE phases (kvpress behaviour); to match the paper, re-rotate them.
/// The one difference from kvpress: with n_sink = 0 and n·(1 − ratio) < 1, kvpress scores every
/// entry 0 (and keeps an arbitrary one); n_pruned here uses the clamped `kept_count`, so the newest
/// entry keeps score 1 (docs/deviations/streaming_llm.md).

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "kvcompress/press/scorer.hpp"

namespace kvcompress {

/// \brief Sinks + recent window. Every (batch, kv head) row is scored on its own length.
struct StreamingLLMPress {
  double compression_ratio = 0.0;
  std::int64_t n_sink = 4;  ///< initial entries never pruned; every row needs length > n_sink

  template <class T, class L>
  [[nodiscard]] std::size_t workspace_bytes(CpuDevice const&, Observation<T> const&,
                                            KVCacheView<T, L> const&) const noexcept {
    return 0;
  }

  /// \param scores [batch, kv_heads, capacity]
  template <class T, class L>
  void score(CpuDevice const& dev, Observation<T> const&, KVCacheView<T, L> const& cache, float* scores,
             Workspace&) const {
    check_compression_ratio(compression_ratio);
    KVC_CHECK(n_sink >= 0, "n_sink must be non-negative, got " << n_sink);
    std::int64_t const heads = cache.extents.kv_heads, cap = cache.extents.capacity;
    std::int64_t const rows = cache.extents.batch * heads;
    for (std::int64_t r = 0; r < rows; ++r)
      KVC_CHECK(cache.lengths[r] > n_sink, "StreamingLLM needs more entries than n_sink = "
                                               << n_sink << ", but row (batch " << r / heads << ", kv head "
                                               << r % heads << ") has n = " << cache.lengths[r]);
    auto const bytes = static_cast<std::int64_t>(detail::size_product(rows, cap, sizeof(float)));  // scores written
    detail::parallel_for(dev, rows, bytes, [&](std::int64_t r, int) {
      std::int64_t const n = cache.lengths[r];
      std::int64_t const n_pruned = n - kept_count(n, compression_ratio);
      std::int64_t const lo = std::min(n_sink, n), hi = std::min(n_sink + n_pruned, n);
      float* out = scores + r * cap;
      // Each score written once: sinks 1, the pruned middle 0, the recent window 1.
      std::fill(out, out + lo, 1.0f);
      std::fill(out + lo, out + hi, 0.0f);
      std::fill(out + hi, out + n, 1.0f);
    });
  }
};

}  // namespace kvcompress
