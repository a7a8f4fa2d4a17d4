#pragma once
/// \file
/// \brief Paged layout: entries live in fixed-size pages of a pool, found through a block table.
/// Two table kinds: one row per sequence, a page holding every kv head of its tokens (vLLM,
/// FlashInfer), or one row per (sequence, kv head), a page holding one head (KV-Compress), which lets
/// heads of different lengths give back different numbers of pages.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "kvcompress/cache/extents.hpp"
#include "kvcompress/core/config.hpp"
#include "kvcompress/core/error.hpp"

namespace kvcompress {

/// \brief Which entity owns a block-table row.
enum class PageTable : unsigned char {
  kPerSequence,  ///< table [batch, pages_per_row]; a page holds all kv heads of page_size tokens
  kPerHead,      ///< table [batch, kv_heads, pages_per_row]; a page holds one head's page_size tokens
};

/// \brief Element order inside a per-sequence page (a per-head page is always [page_size, head_dim]).
enum class PageOrder : unsigned char {
  kNHD,  ///< [page_size, kv_heads, head_dim]: vLLM, FlashInfer's default
  kHND,  ///< [kv_heads, page_size, head_dim]: FlashInfer's HND
};

/// \brief Element offset of (batch, head, seq, dim) through a block table. Trivially copyable;
/// made by `make_paged_layout`, which validates it. The table's row for (b, h) starts at
/// `b·table_batch_stride + h·table_head_stride`, so one formula serves both table kinds.
struct PagedLayout {
  std::int32_t const* block_table = nullptr;  // page ids, [batch, pages_per_row] or [batch, kv_heads, pages_per_row]
  std::int64_t table_batch_stride = 0;        // entries between the rows of consecutive sequences
  std::int64_t table_head_stride = 0;         // entries between the rows of consecutive heads (0: shared row)
  std::int64_t pages_per_row = 0;             // block-table entries per row
  std::int64_t num_pages = 0;                 // pages in the pool
  std::int32_t page_shift = 0;                // log2(page_size)
  std::int64_t page_stride = 0;               // elements per page
  std::int64_t head_stride = 0;               // elements between heads inside a page (0 for per-head pages)
  std::int64_t token_stride = 0;              // elements between tokens inside a page; channels are contiguous

  [[nodiscard]] KVC_HOST_DEVICE std::int64_t page_size() const noexcept { return std::int64_t{1} << page_shift; }
  /// The block-table entry that holds slot s of row (b, h).
  [[nodiscard]] KVC_HOST_DEVICE std::int32_t page_of(std::int64_t b, std::int64_t h, std::int64_t s) const noexcept {
    return block_table[b * table_batch_stride + h * table_head_stride + (s >> page_shift)];
  }
  [[nodiscard]] KVC_HOST_DEVICE std::int64_t offset(std::int64_t b, std::int64_t h, std::int64_t s,
                                                    std::int64_t d) const noexcept {
    return page_of(b, h, s) * page_stride + h * head_stride + (s & (page_size() - 1)) * token_stride + d;
  }
  /// Each entry's head_dim channels are contiguous in both page orders (lets gathers vectorise).
  [[nodiscard]] KVC_HOST_DEVICE static constexpr bool unit_dim_stride() noexcept { return true; }
};

/// \brief How an engine's page pool is organised; see `make_paged_layout`.
struct PagedConfig {
  PageTable table = PageTable::kPerSequence;
  PageOrder order = PageOrder::kNHD;
  std::int64_t page_size = 16;                // tokens per page, a power of two
  std::int64_t num_pages = 0;                 // pages in the pool
  std::int32_t const* block_table = nullptr;  // see PageTable
  std::int64_t pages_per_row = 0;             // block-table entries per row
};

/// \brief A validated paged layout for a cache of extents `e`. The capacity of each row is
/// `pages_per_row · page_size`, which must cover `e.capacity`. Table entries are checked against
/// the pool by `make_cache_view` and by every entry point, which know which of them are live.
inline PagedLayout make_paged_layout(CacheExtents const& e, PagedConfig const& c) {
  validate_extents(e);
  KVC_CHECK(c.block_table != nullptr, "block_table must not be null");
  KVC_CHECK(c.page_size > 0 && (c.page_size & (c.page_size - 1)) == 0 && c.page_size <= (std::int64_t{1} << 30),
            "page_size must be a power of two in [1, 2^30], got " << c.page_size);
  KVC_CHECK(c.num_pages > 0 && c.num_pages <= std::numeric_limits<std::int32_t>::max(),
            "num_pages must be in [1, 2^31 - 1] (page ids are int32), got " << c.num_pages);
  KVC_CHECK(c.pages_per_row > 0, "pages_per_row must be positive, got " << c.pages_per_row);
  KVC_CHECK(c.pages_per_row <= std::numeric_limits<std::int64_t>::max() / c.page_size &&
                c.pages_per_row * c.page_size >= e.capacity,
            "pages_per_row = " << c.pages_per_row << " pages of page_size = " << c.page_size
                               << " do not cover capacity = " << e.capacity);
  KVC_CHECK(c.table == PageTable::kPerSequence || c.table == PageTable::kPerHead,
            "table must be PageTable::kPerSequence or kPerHead, got " << static_cast<int>(c.table));
  KVC_CHECK(c.order == PageOrder::kNHD || c.order == PageOrder::kHND,
            "order must be PageOrder::kNHD or kHND, got " << static_cast<int>(c.order));
  PagedLayout l;
  l.block_table = c.block_table;
  l.pages_per_row = c.pages_per_row;
  l.num_pages = c.num_pages;
  while ((std::int64_t{1} << l.page_shift) < c.page_size) ++l.page_shift;
  bool const per_head = c.table == PageTable::kPerHead;
  std::int64_t const heads_in_page = per_head ? 1 : e.kv_heads;
  KVC_CHECK(heads_in_page * e.head_dim <= std::numeric_limits<std::int64_t>::max() / c.page_size,
            "page_size = " << c.page_size << " × kv_heads × head_dim overflows 64 bits");
  l.page_stride = c.page_size * heads_in_page * e.head_dim;
  KVC_CHECK(l.page_stride <= std::numeric_limits<std::int64_t>::max() / c.num_pages,
            "num_pages = " << c.num_pages << " pages of " << l.page_stride << " elements overflow 64 bits");
  if (per_head) {
    l.head_stride = 0;
    l.token_stride = e.head_dim;
    l.table_head_stride = c.pages_per_row;
    l.table_batch_stride = e.kv_heads * c.pages_per_row;
  } else {
    l.head_stride = c.order == PageOrder::kNHD ? e.head_dim : c.page_size * e.head_dim;
    l.token_stride = c.order == PageOrder::kNHD ? e.kv_heads * e.head_dim : e.head_dim;
    l.table_head_stride = 0;
    l.table_batch_stride = c.pages_per_row;
  }
  return l;
}

namespace detail {

/// Pages of table row (b, h) that hold live entries: enough for the longest row sharing it.
template <class LengthFn>
std::int64_t live_pages(PagedLayout const& l, CacheExtents const& e, std::int64_t b, std::int64_t h,
                        LengthFn&& length) {
  std::int64_t longest = 0;
  if (l.table_head_stride != 0) longest = length(b, h);
  else
    for (std::int64_t hh = 0; hh < e.kv_heads; ++hh) longest = std::max<std::int64_t>(longest, length(b, hh));
  return (longest + l.page_size() - 1) >> l.page_shift;
}

/// Block-table rows: one per sequence, or one per (sequence, head).
inline std::int64_t table_rows_per_sequence(PagedLayout const& l, CacheExtents const& e) noexcept {
  return l.table_head_stride != 0 ? e.kv_heads : 1;
}

}  // namespace detail

}  // namespace kvcompress
