#pragma once
/// \file
/// \brief In-place compaction of one (batch, kv head) row: entry idx[j] moves to slot j.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kvcompress/cache/kv_cache_view.hpp"
#include "kvcompress/cache/strided_layout.hpp"
#include "kvcompress/detail/layout_traits.hpp"

namespace kvcompress::cpu_impl {

/// Entries ahead whose source is prefetched when a layout scatters a row's entries (paged pools).
inline constexpr std::int32_t kCompactPrefetch = 8;

/// Asks for the cache lines of `bytes` at p ahead of their copy.
inline void prefetch_entry(void const* p, std::size_t bytes) noexcept {
#if defined(__GNUC__) || defined(__clang__)
  for (std::size_t o = 0; o < bytes; o += 64) __builtin_prefetch(static_cast<char const*>(p) + o);
#else
  (void)p;
  (void)bytes;
#endif
}

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
  bool const k_runs = detail::unit_dim_stride(cache.key_layout), v_runs = detail::unit_dim_stride(cache.value_layout);
  if constexpr (std::is_same_v<Layout, StridedLayout>) {
    // Entries adjacent in memory: a run of consecutive kept slots moves as one block (memmove: a
    // run may overlap its destination).
    if (k_runs && v_runs && cache.key_layout.strides[2] == d && cache.value_layout.strides[2] == d) {
      for (std::int32_t j = 0; j < n_kept;) {
        std::int32_t const src = idx[j];
        std::int32_t run = 1;
        while (j + run < n_kept && idx[j + run] == src + run) ++run;
        if (src != j) {
          auto const bytes = static_cast<std::size_t>(run * d) * sizeof(T);
          std::memmove(static_cast<void*>(&cache.key(b, h, j, 0)), &cache.key(b, h, src, 0), bytes);
          std::memmove(static_cast<void*>(&cache.value(b, h, j, 0)), &cache.value(b, h, src, 0), bytes);
          if (pos) std::memmove(pos + j, pos + src, static_cast<std::size_t>(run) * sizeof(std::int32_t));
        }
        j += run;
      }
      cache.lengths[cache.row(b, h)] = n_kept;
      return;
    }
  }
  // A paged pool puts consecutive entries of a row on different pages (4 KiB apart and more in a
  // per-sequence pool), where the hardware prefetcher stops: the sources are fetched ahead.
  constexpr bool scattered = !std::is_same_v<Layout, StridedLayout>;
  auto const entry_bytes = static_cast<std::size_t>(d) * sizeof(T);
  for (std::int32_t j = 0; j < n_kept; ++j) {
    std::int32_t const src = idx[j];
    if (src == j) continue;
    if (scattered && k_runs && v_runs && j + kCompactPrefetch < n_kept) {
      std::int32_t const ahead = idx[j + kCompactPrefetch];
      prefetch_entry(&cache.key(b, h, ahead, 0), entry_bytes);
      prefetch_entry(&cache.value(b, h, ahead, 0), entry_bytes);
    }
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
