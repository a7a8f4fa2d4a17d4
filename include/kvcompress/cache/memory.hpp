#pragma once
/// \file
/// \brief What compression gave back: the pages a paged cache no longer uses (for the engine's page
/// allocator), and a byte count per (batch, kv head) row and in total for any view.

#include <cstdint>
#include <type_traits>
#include <vector>

#include "kvcompress/cache/kv_cache_view.hpp"
#include "kvcompress/cache/paged_layout.hpp"
#include "kvcompress/cache/view_checks.hpp"
#include "kvcompress/core/error.hpp"

namespace kvcompress {

namespace detail {

/// Calls f(table_row_first_entry, live_before, live_now) for every block-table row.
template <class F>
void for_each_table_row(PagedLayout const& l, CacheExtents const& e, std::int32_t const* previous_lengths,
                        std::int32_t const* lengths, F&& f) {
  auto const before = [&](std::int64_t b, std::int64_t h) { return previous_lengths[b * e.kv_heads + h]; };
  auto const now = [&](std::int64_t b, std::int64_t h) { return lengths[b * e.kv_heads + h]; };
  std::int64_t const rows = table_rows_per_sequence(l, e);
  for (std::int64_t b = 0; b < e.batch; ++b)
    for (std::int64_t r = 0; r < rows; ++r)
      f(b * l.table_batch_stride + r * l.table_head_stride, live_pages(l, e, b, r, before),
        live_pages(l, e, b, r, now));
}

}  // namespace detail

/// \brief Writes to `freed` the ids of the pages that held live entries under `previous_lengths`
/// and hold none under `lengths`, table row by table row, and returns how many there are. These are
/// the entries [live pages now, live pages before) of each block-table row: the engine hands them
/// to its allocator and must not read them through this table again. Rows that grew free nothing.
/// \param previous_lengths [batch, kv_heads] lengths before compression
/// \param lengths          [batch, kv_heads] lengths now
/// \param freed            [freed_capacity] output page ids
/// Throws, writing nothing, if `freed_capacity` is too small.
inline std::int64_t released_pages(PagedLayout const& layout, CacheExtents const& e,
                                   std::int32_t const* previous_lengths, std::int32_t const* lengths,
                                   std::int32_t* freed, std::int64_t freed_capacity) {
  validate_extents(e);
  detail::validate_paged_layout(e, layout, "layout", "layout's page strides");
  detail::validate_lengths(e, previous_lengths, "previous_lengths");
  detail::validate_lengths(e, lengths, "lengths");
  KVC_CHECK(freed_capacity >= 0, "freed_capacity must be non-negative, got " << freed_capacity);
  // Every entry this reads (the live ones before) must name a page; ids handed to an allocator are trusted.
  auto const previous = [&](std::int64_t b, std::int64_t h) { return previous_lengths[b * e.kv_heads + h]; };
  detail::check_live_pages_in_pool(e, layout, previous, "layout (under previous_lengths)");
  std::int64_t count = 0;
  detail::for_each_table_row(layout, e, previous_lengths, lengths, [&](std::int64_t, std::int64_t before, std::int64_t now) {
    if (before > now) count += before - now;
  });
  if (count == 0) return 0;
  KVC_CHECK(freed != nullptr, "freed must not be null (" << count << " pages were freed)");
  KVC_CHECK(freed_capacity >= count, "freed_capacity = " << freed_capacity << " cannot hold the " << count
                                                         << " freed pages");
  std::int64_t n = 0;
  detail::for_each_table_row(layout, e, previous_lengths, lengths, [&](std::int64_t first, std::int64_t before, std::int64_t now) {
    for (std::int64_t i = now; i < before; ++i) freed[n++] = layout.block_table[first + i];
  });
  return n;
}

/// \brief The pages a paged cache gave back since `previous_lengths` (saved by the engine before
/// `compress`). K and V must share one block table (vLLM and FlashInfer do); otherwise call the
/// layout overload once per table. \param freed [freed_capacity] output page ids
template <class T>
std::int64_t released_pages(KVCacheView<T, PagedLayout> const& cache, std::int32_t const* previous_lengths,
                            std::int32_t* freed, std::int64_t freed_capacity) {
  detail::validate_view(cache);
  KVC_CHECK(cache.value_layout.block_table == cache.key_layout.block_table,
            "keys and values use different block tables; call released_pages(layout, ...) for each");
  return released_pages(cache.key_layout, cache.extents, previous_lengths, cache.lengths, freed, freed_capacity);
}

/// \brief Bytes a cache holds and has given back. Entry bytes count K and V of live entries. Page
/// counts (paged layouts only) count page ids that hold at least one live entry: with one table
/// shared by K and V an id stands for a K page and a V page; with two tables each pool counts apart.
struct MemoryReport {
  std::vector<std::int64_t> row_bytes;        // [batch, kv_heads]: K + V bytes of live entries
  std::vector<std::int64_t> row_bytes_freed;  // [batch, kv_heads]: against previous_lengths, else 0
  std::int64_t bytes = 0;                     // Σ row_bytes
  std::int64_t bytes_freed = 0;               // Σ row_bytes_freed
  std::int64_t pages = 0;                     // live pages (paged layouts)
  std::int64_t pages_freed = 0;               // pages given back against previous_lengths
  std::int64_t page_bytes = 0;                // bytes of the live pages
  std::int64_t page_bytes_freed = 0;          // bytes of the pages given back
};

/// \brief Reports what `cache` holds now and, given the lengths before compression, what it gave
/// back. For a strided cache "freed" bytes are slots the engine can reuse for new tokens; for a paged
/// cache they are also whole pages its allocator can hand to other sequences.
/// \param previous_lengths [batch, kv_heads] lengths before compression, or null
template <class T, class L>
[[nodiscard]] MemoryReport memory_report(KVCacheView<T, L> const& cache, std::int32_t const* previous_lengths = nullptr) {
  detail::validate_view(cache);
  if (previous_lengths != nullptr) detail::validate_lengths(cache.extents, previous_lengths, "previous_lengths");
  auto const& e = cache.extents;
  std::int64_t const rows = e.batch * e.kv_heads;
  std::int64_t const entry = 2 * e.head_dim * static_cast<std::int64_t>(sizeof(T));
  MemoryReport m;
  m.row_bytes.resize(static_cast<std::size_t>(rows));
  m.row_bytes_freed.resize(static_cast<std::size_t>(rows));
  for (std::int64_t r = 0; r < rows; ++r) {
    std::int64_t const before = previous_lengths ? previous_lengths[r] : cache.lengths[r];
    m.row_bytes[static_cast<std::size_t>(r)] = cache.lengths[r] * entry;
    m.row_bytes_freed[static_cast<std::size_t>(r)] = before > cache.lengths[r] ? (before - cache.lengths[r]) * entry : 0;
    m.bytes += m.row_bytes[static_cast<std::size_t>(r)];
    m.bytes_freed += m.row_bytes_freed[static_cast<std::size_t>(r)];
  }
  if constexpr (std::is_same_v<L, PagedLayout>) {
    std::int32_t const* before = previous_lengths ? previous_lengths : cache.lengths;
    int const pools = cache.value_layout.block_table == cache.key_layout.block_table ? 1 : 2;
    for (PagedLayout const* l : {&cache.key_layout, &cache.value_layout}) {
      if (pools == 1 && l == &cache.value_layout) break;
      std::int64_t const page = l->page_stride * static_cast<std::int64_t>(sizeof(T)) * (pools == 1 ? 2 : 1);
      detail::for_each_table_row(*l, e, before, cache.lengths, [&](std::int64_t, std::int64_t was, std::int64_t now) {
        m.pages += now;
        m.page_bytes += now * page;
        if (was > now) {
          m.pages_freed += was - now;
          m.page_bytes_freed += (was - now) * page;
        }
      });
    }
  }
  return m;
}

}  // namespace kvcompress
