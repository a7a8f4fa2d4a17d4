#pragma once
/// \file
/// \brief In-place compaction of one (batch, kv head) row: entry idx[j] moves to slot j.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "kvcompress/cache/kv_cache_view.hpp"
#include "kvcompress/cache/paged_layout.hpp"
#include "kvcompress/cache/strided_layout.hpp"
#include "kvcompress/core/device.hpp"
#include "kvcompress/detail/layout_traits.hpp"
#include "kvcompress/detail/stream_copy.hpp"

namespace kvcompress::cpu_impl {

/// Entries ahead whose source is prefetched when a layout scatters a row's entries (paged pools).
inline constexpr std::int32_t kCompactPrefetch = 8;

/// Streaming stores (detail/stream_copy.hpp) only pay for long runs of kept entries in large rows:
/// a row must move at least kCompactStreamingMinBytes of K and V, and a run at least
/// kCompactStreamingMinRunBytes of each, else ordinary stores are used. Measured in
/// docs/benchmarks/memory-bound-profile.md, "Non-temporal compaction".
inline constexpr std::size_t kCompactStreamingMinBytes = std::size_t{1} << 20;
inline constexpr std::size_t kCompactStreamingMinRunBytes = 4096;

/// Asks for the cache lines of `bytes` at p ahead of their copy.
inline void prefetch_entry(void const* p, std::size_t bytes) noexcept {
#if defined(__GNUC__) || defined(__clang__)
  for (std::size_t o = 0; o < bytes; o += 64) __builtin_prefetch(static_cast<char const*>(p) + o);
#else
  (void)p;
  (void)bytes;
#endif
}

/// How many slots from slot s on follow each other in memory, whole entries d elements apart: every
/// slot left in a row of a strided layout whose entries are packed, the rest of s's page in a paged
/// layout whose page holds one head's entries back to back (per-head pools, per-sequence HND pages),
/// else 1.
template <class Layout>
[[nodiscard]] std::int64_t adjacent_slots(Layout const& l, std::int64_t d, std::int64_t s) noexcept {
  if constexpr (std::is_same_v<Layout, StridedLayout>) {
    return l.strides[3] == 1 && l.strides[2] == d ? std::numeric_limits<std::int64_t>::max() : 1;
  } else if constexpr (std::is_same_v<Layout, PagedLayout>) {
    return l.token_stride == d ? l.page_size() - (s & (l.page_size() - 1)) : 1;
  } else {
    (void)l;
    (void)d;
    (void)s;
    return 1;
  }
}

/// Moves the kept entries (K, V and original positions) to the front of the row and sets its length,
/// writing with `stores`: kPortable for ordinary stores, kAvx512 or kAvx2 (which the CPU must have)
/// for streaming stores of the whole 64-byte lines that runs of at least kCompactStreamingMinRunBytes
/// cover.
///
/// Safe in place: idx is ascending, so idx[j] ≥ j. A run of kept entries moves as one block from
/// slots [src, src + r) to [j, j + r) with j ≤ src, copied forward (ascending addresses), which is
/// safe even when the blocks overlap (detail::copy_forward); every later source slot idx[j′] ≥ j′ ≥
/// j + r lies past the block written, so no source is overwritten before it is read.
/// \param idx [n_kept] ascending slot indices
template <class T, class Layout>
void compact_row(detail::RowIsa stores, KVCacheView<T, Layout> const& cache, std::int64_t b, std::int64_t h,
                 std::int32_t const* idx, std::int32_t n_kept) {
  std::int64_t const d = cache.extents.head_dim;
  std::int32_t* pos = cache.positions ? cache.positions + cache.row(b, h) * cache.extents.capacity : nullptr;
  // Whole-entry copies where the channels are contiguous: one address computation (a block-table
  // lookup, when paged) per entry, or per run of adjacent entries, instead of one per element.
  bool const entries = detail::unit_dim_stride(cache.key_layout) && detail::unit_dim_stride(cache.value_layout);
  auto const entry_bytes = static_cast<std::size_t>(d) * sizeof(T);
  // A paged pool puts consecutive entries of a row on different pages (4 KiB apart and more in a
  // per-sequence pool), where the hardware prefetcher stops: the sources are fetched ahead.
  constexpr bool scattered = !std::is_same_v<Layout, StridedLayout>;
  std::int64_t prefetched = 0;  // entries [0, prefetched) of idx have been prefetched
  for (std::int32_t j = 0; j < n_kept;) {
    std::int32_t const src = idx[j];
    // A run: consecutive kept slots whose sources and destinations are both adjacent in K and V.
    std::int64_t const limit = std::min({adjacent_slots(cache.key_layout, d, src), adjacent_slots(cache.key_layout, d, j),
                                         adjacent_slots(cache.value_layout, d, src),
                                         adjacent_slots(cache.value_layout, d, j), std::int64_t{n_kept} - j});
    std::int32_t run = 1;
    while (run < limit && idx[j + run] == src + run) ++run;
    if (scattered && entries)
      for (; prefetched < std::min<std::int64_t>(std::int64_t{j} + run + kCompactPrefetch, n_kept); ++prefetched) {
        prefetch_entry(&cache.key(b, h, idx[prefetched], 0), entry_bytes);
        prefetch_entry(&cache.value(b, h, idx[prefetched], 0), entry_bytes);
      }
    if (src != j) {
      if (entries) {
        std::size_t const bytes = static_cast<std::size_t>(run) * entry_bytes;
        detail::RowIsa const run_stores = bytes >= kCompactStreamingMinRunBytes ? stores : detail::RowIsa::kPortable;
        detail::copy_forward(run_stores, reinterpret_cast<std::byte*>(&cache.key(b, h, j, 0)),
                             reinterpret_cast<std::byte const*>(&cache.key(b, h, src, 0)), bytes);
        detail::copy_forward(run_stores, reinterpret_cast<std::byte*>(&cache.value(b, h, j, 0)),
                             reinterpret_cast<std::byte const*>(&cache.value(b, h, src, 0)), bytes);
      } else {  // channels apart: no two slots are adjacent, so the run is this one entry
        for (std::int64_t c = 0; c < d; ++c) cache.key(b, h, j, c) = cache.key(b, h, src, c);
        for (std::int64_t c = 0; c < d; ++c) cache.value(b, h, j, c) = cache.value(b, h, src, c);
      }
      if (pos) std::memmove(pos + j, pos + src, static_cast<std::size_t>(run) * sizeof(std::int32_t));
    }
    j += run;
  }
  detail::stream_fence(stores);
  cache.lengths[cache.row(b, h)] = n_kept;
}

/// compact_row with streaming stores where they pay: rows that move at least
/// kCompactStreamingMinBytes, on a device that may run the CPU's own instructions.
template <class T, class Layout>
void compact_row(CpuDevice const& dev, KVCacheView<T, Layout> const& cache, std::int64_t b, std::int64_t h,
                 std::int32_t const* idx, std::int32_t n_kept) {
  std::size_t const moved = 2 * static_cast<std::size_t>(n_kept) * static_cast<std::size_t>(cache.extents.head_dim) * sizeof(T);
  compact_row(moved >= kCompactStreamingMinBytes ? detail::stream_isa(dev) : detail::RowIsa::kPortable, cache, b, h, idx,
              n_kept);
}

}  // namespace kvcompress::cpu_impl
