#pragma once
/// \file
/// \brief In-place compaction of one (batch, kv head) row: entry idx[j] moves to slot j.

#include <algorithm>
#include <cstdint>

#include "kvcompress/cache/kv_cache_view.hpp"

namespace kvcompress::cpu_impl {

/// Moves the kept entries (K, V and original positions) to the front of the row and sets its length.
/// Safe in place because idx is ascending, so idx[j] ≥ j and no source is overwritten before it is read.
/// \param idx [n_kept] ascending slot indices
template <class T, class Layout>
void compact_row(KVCacheView<T, Layout> const& cache, std::int64_t b, std::int64_t h,
                 std::int32_t const* idx, std::int32_t n_kept) {
  std::int64_t const d = cache.extents.head_dim;
  std::int32_t* pos = cache.positions ? cache.positions + cache.row(b, h) * cache.extents.capacity : nullptr;
  // Whole-entry copies where the channels are contiguous: one address computation (a block-table
  // lookup, when paged) per entry instead of one per element.
  bool const k_runs = cache.key_layout.unit_dim_stride(), v_runs = cache.value_layout.unit_dim_stride();
  for (std::int32_t j = 0; j < n_kept; ++j) {
    std::int32_t const src = idx[j];
    if (src == j) continue;
    if (k_runs) std::copy_n(&cache.key(b, h, src, 0), d, &cache.key(b, h, j, 0));
    else
      for (std::int64_t c = 0; c < d; ++c) cache.key(b, h, j, c) = cache.key(b, h, src, c);
    if (v_runs) std::copy_n(&cache.value(b, h, src, 0), d, &cache.value(b, h, j, 0));
    else
      for (std::int64_t c = 0; c < d; ++c) cache.value(b, h, j, c) = cache.value(b, h, src, c);
    if (pos) pos[j] = pos[src];
  }
  cache.lengths[cache.row(b, h)] = n_kept;
}

}  // namespace kvcompress::cpu_impl
