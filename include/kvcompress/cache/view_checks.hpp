#pragma once
/// \file
/// \brief The checks every entry point runs on the view it is given, whether a factory built it or
/// the engine filled in the aggregate itself: extents, layouts, pointers, buffers that must not
/// share memory, lengths and the live block-table entries. All are O(1) or O(rows + pages), never
/// O(cache), and none allocates (the page-uniqueness check takes its bitmap from the workspace).

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "kvcompress/cache/extents.hpp"
#include "kvcompress/cache/paged_layout.hpp"
#include "kvcompress/cache/strided_layout.hpp"
#include "kvcompress/core/error.hpp"
#include "kvcompress/detail/workspace.hpp"

namespace kvcompress::detail {

/// Throws unless every row length is in [0, capacity]. Compression re-checks the lengths, because
/// the engine updates them in place between calls. `what` names the array in the message.
/// \param lengths [batch, kv_heads]
inline void validate_lengths(CacheExtents const& extents, std::int32_t const* lengths, char const* what = "lengths") {
  KVC_CHECK(lengths != nullptr, what << " must not be null");
  std::int64_t const rows = extents.batch * extents.kv_heads;
  for (std::int64_t r = 0; r < rows; ++r)
    KVC_CHECK(lengths[r] >= 0 && lengths[r] <= extents.capacity,
              what << "[" << r << "] = " << lengths[r] << " is outside [0, capacity = " << extents.capacity << "]");
}

/// Entries of one block table: from its first row to the end of its last.
inline std::int64_t table_span(CacheExtents const& e, PagedLayout const& l) noexcept {
  std::int64_t const per_sequence = (table_rows_per_sequence(l, e) - 1) * l.table_head_stride + l.pages_per_row;
  return (e.batch - 1) * l.table_batch_stride + per_sequence;
}

/// The fields of a paged layout, as `make_paged_layout` would have set them: a hand-built one with
/// a negative or zero stride, rows that overlap or pages too small for their entries is rejected.
/// `page_what` names the strides inside a page in messages.
inline void validate_paged_layout(CacheExtents const& e, PagedLayout const& l, char const* what, char const* page_what) {
  constexpr std::int64_t kMax = std::numeric_limits<std::int64_t>::max();
  KVC_CHECK(l.block_table != nullptr, what << ".block_table must not be null");
  KVC_CHECK(l.page_shift >= 0 && l.page_shift <= 30, what << ".page_shift must be in [0, 30], got " << l.page_shift);
  KVC_CHECK(l.num_pages > 0 && l.num_pages <= std::numeric_limits<std::int32_t>::max(),
            what << ".num_pages must be in [1, 2^31 - 1] (page ids are int32), got " << l.num_pages);
  KVC_CHECK(l.pages_per_row > 0 && l.pages_per_row <= (kMax >> l.page_shift) &&
                (l.pages_per_row << l.page_shift) >= e.capacity,
            what << ".pages_per_row = " << l.pages_per_row << " pages of " << l.page_size()
                 << " tokens do not cover capacity = " << e.capacity);
  KVC_CHECK(l.table_head_stride >= 0, what << ".table_head_stride must be non-negative, got " << l.table_head_stride);
  KVC_CHECK(l.table_batch_stride >= 0, what << ".table_batch_stride must be non-negative, got " << l.table_batch_stride);
  bool const per_head = l.table_head_stride != 0;
  if (per_head && e.kv_heads > 1)
    KVC_CHECK(l.table_head_stride >= l.pages_per_row && l.table_head_stride <= kMax / e.kv_heads,
              what << ".table_head_stride = " << l.table_head_stride << " makes the rows of two kv heads share entries ("
                   << "pages_per_row = " << l.pages_per_row << ")");
  std::int64_t const rows_span = (per_head ? (e.kv_heads - 1) * l.table_head_stride : 0) + l.pages_per_row;
  if (e.batch > 1)
    KVC_CHECK(l.table_batch_stride >= rows_span && l.table_batch_stride <= (kMax - rows_span) / (e.batch - 1),
              what << ".table_batch_stride = " << l.table_batch_stride << " makes the rows of two sequences share "
                   << "entries or overflows 64 bits (one sequence's rows span " << rows_span << " entries)");
  KVC_CHECK(l.head_stride >= 0, what << ".head_stride must be non-negative, got " << l.head_stride);
  KVC_CHECK(l.head_stride != 0 || per_head || e.kv_heads == 1,
            what << ".head_stride = 0 with one table row per sequence puts every kv head in the same slots");
  // Inside a page the entries form a strided [heads in the page, page_size, head_dim] block, with
  // contiguous channels: the strided layout's checks (positive, nested, no overflow) apply.
  std::int64_t const heads_in_page = l.head_stride == 0 ? 1 : e.kv_heads;
  CacheExtents const page{1, heads_in_page, l.page_size(), e.head_dim};
  KVC_CHECK(l.token_stride > 0, what << ".token_stride must be positive, got " << l.token_stride);
  StridedLayout const inside{{1, l.head_stride == 0 ? 1 : l.head_stride, l.token_stride, 1}};
  validate_strides(page, inside.strides, page_what);
  std::int64_t const span = checked_span(page, inside, page_what);
  KVC_CHECK(l.page_stride >= span, what << ".page_stride = " << l.page_stride << " is smaller than the " << span
                                        << " elements a page's entries span");
  KVC_CHECK(l.page_stride <= kMax / l.num_pages,
            what << ": num_pages = " << l.num_pages << " pages of " << l.page_stride << " elements overflow 64 bits");
}

/// Elements a layout addresses: its largest offset + 1 (strides validated first).
inline std::int64_t element_span(CacheExtents const& e, StridedLayout const& l) { return checked_span(e, l, "layout"); }
inline std::int64_t element_span(CacheExtents const&, PagedLayout const& l) noexcept {
  return l.num_pages * l.page_stride;
}

/// Calls f(b, r, index) for every live entry of a block table: `index` into `block_table`, in table
/// row (b, r) (r = 0 for a per-sequence table) that holds a slot below some row's length.
template <class LengthFn, class F>
void for_each_live_entry(CacheExtents const& e, PagedLayout const& l, LengthFn&& length, F&& f) {
  std::int64_t const rows = table_rows_per_sequence(l, e);
  for (std::int64_t b = 0; b < e.batch; ++b)
    for (std::int64_t r = 0; r < rows; ++r) {
      std::int64_t const first = b * l.table_batch_stride + r * l.table_head_stride;
      std::int64_t const live = live_pages(l, e, b, r, length);
      for (std::int64_t i = 0; i < live; ++i) f(b, r, first + i);
    }
}

/// Throws unless every live block-table entry names a page of the pool. Reads O(live pages)
/// entries; allocates nothing.
template <class LengthFn>
void check_live_pages_in_pool(CacheExtents const& e, PagedLayout const& l, LengthFn&& length, char const* what) {
  for_each_live_entry(e, l, length, [&](std::int64_t b, std::int64_t r, std::int64_t index) {
    std::int32_t const page = l.block_table[index];
    KVC_CHECK(page >= 0 && page < l.num_pages, what << ": block_table[" << index << "] = " << page
                                                    << " is outside the pool [0, num_pages = " << l.num_pages
                                                    << ") but holds live entries (row length " << length(b, r) << ")");
  });
}

/// Marks the live pages of one table in `seen` (one bit per page of the pool), throwing when a page
/// is live twice: compaction of one row would overwrite another's entries. `earlier` names, in the
/// message, the table whose pages `seen` already holds.
template <class LengthFn>
void mark_live_pages(CacheExtents const& e, PagedLayout const& l, LengthFn&& length, std::uint64_t* seen,
                     char const* what, char const* earlier) {
  for_each_live_entry(e, l, length, [&](std::int64_t, std::int64_t, std::int64_t index) {
    auto const page = static_cast<std::uint64_t>(l.block_table[index]);
    std::uint64_t const bit = std::uint64_t{1} << (page % 64);
    KVC_CHECK((seen[page / 64] & bit) == 0, what << ": page " << page << " (block_table[" << index
                                                 << "]) is live twice, in " << earlier << " and in " << what);
    seen[page / 64] |= bit;
  });
}

/// Words of the page bitmap for a paged view, else 0.
template <class View>
std::size_t page_bitmap_words(View const& c) noexcept {
  if constexpr (std::is_same_v<typename View::layout_type, PagedLayout>)
    return static_cast<std::size_t>((std::max(c.key_layout.num_pages, c.value_layout.num_pages) + 63) / 64);
  else return 0;
}

/// Scratch bytes of `check_unique_pages` (0 for strided views).
template <class View>
std::size_t view_check_bytes(View const& c) {
  std::size_t const words = page_bitmap_words(c);
  return words == 0 ? 0 : Workspace::bytes_for<std::uint64_t>(words);
}

/// No page is live twice within a table, nor (when K and V share one pool, `keys == values`) in
/// both tables. O(pages); the bitmap comes from `scratch`, a copy of the caller's workspace, so the
/// memory serves the press afterwards.
template <class View>
void check_unique_pages(View const& c, Workspace scratch) {
  if constexpr (std::is_same_v<typename View::layout_type, PagedLayout>) {
    auto const& e = c.extents;
    auto const length = [&](std::int64_t b, std::int64_t h) { return c.lengths[b * e.kv_heads + h]; };
    std::size_t const words = page_bitmap_words(c);
    std::uint64_t* seen = scratch.take<std::uint64_t>(words);
    std::fill(seen, seen + words, std::uint64_t{0});
    mark_live_pages(e, c.key_layout, length, seen, "key_layout", "key_layout");
    if (c.value_layout.block_table == c.key_layout.block_table) return;
    bool const shared_pool = static_cast<void const*>(c.keys) == static_cast<void const*>(c.values);
    if (!shared_pool) std::fill(seen, seen + words, std::uint64_t{0});
    mark_live_pages(e, c.value_layout, length, seen, "value_layout", shared_pool ? "key_layout (the pool K and V share)" : "value_layout");
  } else {
    (void)c;
    (void)scratch;
  }
}

/// Address range [first, last) of a buffer, for the overlap checks.
struct Span {
  std::uintptr_t first;
  std::uintptr_t last;
  char const* name;
};

template <class U>
Span byte_span(U const* p, std::int64_t elements, char const* name) noexcept {
  auto const first = reinterpret_cast<std::uintptr_t>(p);
  return {first, first + static_cast<std::uintptr_t>(elements) * sizeof(U), name};
}

inline void check_no_overlap(Span const& a, Span const& b) {
  KVC_CHECK(a.last <= b.first || b.last <= a.first,
            a.name << " [0x" << std::hex << a.first << ", 0x" << a.last << ") and " << b.name << " [0x" << b.first
                   << ", 0x" << b.last << ") overlap" << std::dec);
}

/// Whether delta = Σ_a strides[a]·t_a for some |t_a| < extent_a, i.e. whether two views with these
/// strides whose bases lie `delta` elements apart share an element. Nested strides leave at most two
/// candidates per axis (outermost first), so this is O(1).
inline bool strided_offsets_meet(std::int64_t delta, std::array<std::int64_t, 4> const& ext,
                                 std::array<std::int64_t, 4> const& strides, std::array<int, 4> const& order, int k) {
  if (k == 4) return delta == 0;
  int const a = order[static_cast<std::size_t>(k)];
  std::int64_t inner = 0;  // the largest |offset| the axes inside this one reach
  for (int j = k + 1; j < 4; ++j) {
    int const aj = order[static_cast<std::size_t>(j)];
    inner += (ext[static_cast<std::size_t>(aj)] - 1) * strides[static_cast<std::size_t>(aj)];
  }
  std::int64_t const s = strides[static_cast<std::size_t>(a)], top = ext[static_cast<std::size_t>(a)] - 1;
  auto const floor_div = [](std::int64_t x, std::int64_t y) { return x / y - ((x % y != 0) && ((x < 0) != (y < 0))); };
  std::int64_t const lo = std::max(-top, -floor_div(-(delta - inner), s)), hi = std::min(top, floor_div(delta + inner, s));
  for (std::int64_t t = lo; t <= hi; ++t)
    if (strided_offsets_meet(delta - t * s, ext, strides, order, k + 1)) return true;
  return false;
}

/// K and V may share a buffer only element-disjointly: interleaved (V = K + 1 with innermost stride
/// 2) is a real layout; V = K + head_dim over a dense K is two views of the same memory. A paged K
/// and V may share one pool (`keys == values`) through two tables whose live pages differ.
template <class View>
void check_keys_values_disjoint(View const& c) {
  using T = typename View::value_type;
  if constexpr (std::is_same_v<typename View::layout_type, PagedLayout>) {
    if (static_cast<void const*>(c.keys) == static_cast<void const*>(c.values)) {
      // One pool for K and V: legitimate with two tables whose live pages are disjoint (checked with
      // the pages); one table would make every key its own value.
      KVC_CHECK(c.key_layout.block_table != c.value_layout.block_table,
                "keys and values must not alias (both point to " << static_cast<void const*>(c.keys)
                                                                 << ") unless their block tables differ (a shared pool)");
      KVC_CHECK(c.key_layout.page_stride == c.value_layout.page_stride &&
                    c.key_layout.head_stride == c.value_layout.head_stride &&
                    c.key_layout.token_stride == c.value_layout.token_stride,
                "a pool shared by keys and values needs one page geometry; key_layout.page_stride = "
                    << c.key_layout.page_stride << ", value_layout.page_stride = " << c.value_layout.page_stride);
      return;
    }
    check_no_overlap(byte_span(c.keys, element_span(c.extents, c.key_layout), "keys"),
                     byte_span(c.values, element_span(c.extents, c.value_layout), "values"));
  } else {
    KVC_CHECK(static_cast<void const*>(c.keys) != static_cast<void const*>(c.values),
              "keys and values must not alias (both point to " << static_cast<void const*>(c.keys) << ")");
    Span const k = byte_span(c.keys, element_span(c.extents, c.key_layout), "keys");
    Span const v = byte_span(c.values, element_span(c.extents, c.value_layout), "values");
    if (k.last <= v.first || v.last <= k.first) return;
    constexpr std::int64_t kCheckable = std::int64_t{1} << 60;
    auto const delta_bytes = static_cast<std::int64_t>(v.first - k.first);  // wraps to the signed difference
    bool const same_layout = c.key_layout.strides == c.value_layout.strides;
    KVC_CHECK(same_layout && delta_bytes % static_cast<std::int64_t>(sizeof(T)) == 0 &&
                  static_cast<std::int64_t>(k.last - k.first) < kCheckable,
              "keys [0x" << std::hex << k.first << ", 0x" << k.last << ") and values [0x" << v.first << ", 0x" << v.last
                         << std::dec << ") overlap with "
                         << (same_layout ? "a base offset that is not a whole number of elements" : "different layouts"));
    std::int64_t const delta = delta_bytes / static_cast<std::int64_t>(sizeof(T));
    auto const ext = extents_array(c.extents);
    auto const& st = c.key_layout.strides;
    std::array<int, 4> order{0, 1, 2, 3};
    std::sort(order.begin(), order.end(), [&](int x, int y) {
      return st[static_cast<std::size_t>(x)] > st[static_cast<std::size_t>(y)] ||
             (st[static_cast<std::size_t>(x)] == st[static_cast<std::size_t>(y)] && x < y);
    });
    KVC_CHECK(!strided_offsets_meet(delta, ext, st, order, 0),
              "values = keys + " << delta << " elements: with these strides some key and value entries are the same "
                                 << "memory (K and V may share a buffer only element-disjointly, e.g. interleaved)");
  }
}

/// The buffers compression writes (K, V, lengths, positions) must not overlap each other (beyond
/// the K/V cases above) nor the block tables it reads.
template <class View>
void check_buffers_disjoint(View const& c) {
  using L = typename View::layout_type;
  check_keys_values_disjoint(c);
  auto const& e = c.extents;
  std::int64_t const rows = e.batch * e.kv_heads;
  Span spans[6];
  int n = 0;
  spans[n++] = byte_span(c.keys, element_span(e, c.key_layout), "keys");
  if (static_cast<void const*>(c.keys) != static_cast<void const*>(c.values))
    spans[n++] = byte_span(c.values, element_span(e, c.value_layout), "values");
  spans[n++] = byte_span(c.lengths, rows, "lengths");
  if (c.positions) spans[n++] = byte_span(c.positions, rows * e.capacity, "positions");
  int const written = n;
  if constexpr (std::is_same_v<L, PagedLayout>) {
    spans[n++] = byte_span(c.key_layout.block_table, table_span(e, c.key_layout), "key_layout.block_table");
    if (c.value_layout.block_table != c.key_layout.block_table)
      spans[n++] = byte_span(c.value_layout.block_table, table_span(e, c.value_layout), "value_layout.block_table");
  }
  // K against V was decided above; every other pair with a written buffer must be disjoint.
  bool const kv_pair_done = written > 1 && static_cast<void const*>(c.keys) != static_cast<void const*>(c.values);
  for (int i = 0; i < written; ++i)
    for (int j = i + 1; j < n; ++j)
      if (!(kv_pair_done && i == 0 && j == 1)) check_no_overlap(spans[i], spans[j]);
}

/// Everything about a view that needs no cache memory read: extents, layouts, null pointers and
/// overlapping buffers. The CUDA device runs this (its lengths and tables live on the device).
template <class View>
void validate_view_shape(View const& c) {
  using L = typename View::layout_type;
  validate_extents(c.extents);
  KVC_CHECK(c.keys != nullptr, "keys must not be null");
  KVC_CHECK(c.values != nullptr, "values must not be null");
  KVC_CHECK(c.lengths != nullptr, "lengths must not be null");
  if constexpr (std::is_same_v<L, StridedLayout>) {
    validate_strides(c.extents, c.key_layout.strides, "key_layout.strides");
    validate_strides(c.extents, c.value_layout.strides, "value_layout.strides");
    check_buffers_disjoint(c);
  } else if constexpr (std::is_same_v<L, PagedLayout>) {
    validate_paged_layout(c.extents, c.key_layout, "key_layout", "key_layout's page strides");
    validate_paged_layout(c.extents, c.value_layout, "value_layout", "value_layout's page strides");
    check_buffers_disjoint(c);
  }
  // Any other layout is a wrapper's window over a view that was checked when the wrapper was called.
}

/// The host view checks of every entry point: the shape checks, the lengths (the engine changes
/// them between calls), and that every live block-table entry names a page of the pool.
template <class View>
void validate_view(View const& c) {
  validate_view_shape(c);
  validate_lengths(c.extents, c.lengths);
  if constexpr (std::is_same_v<typename View::layout_type, PagedLayout>) {
    auto const length = [&](std::int64_t b, std::int64_t h) { return c.lengths[b * c.extents.kv_heads + h]; };
    check_live_pages_in_pool(c.extents, c.key_layout, length, "key_layout");
    if (c.value_layout.block_table != c.key_layout.block_table)
      check_live_pages_in_pool(c.extents, c.value_layout, length, "value_layout");
  }
}

}  // namespace kvcompress::detail
