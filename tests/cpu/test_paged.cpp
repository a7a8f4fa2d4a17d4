// The paged layout: addressing, the same compression as the strided layout for every table kind,
// page order and page size, the pages given back, memory accounting and bad input.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "kvcompress/kvcompress.hpp"
#include "test_util.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using namespace kvcompress;

namespace {

constexpr std::int64_t kH = 4, kQ = 16, kD = 16;

/// A paged cache over a pool with a random block table: each live table entry gets a distinct
/// random page, every other entry is −1 (a read through it would be out of bounds, caught by the
/// sanitizers). Pool slots that hold no live entry are NaN.
template <class T>
struct PagedCache {
  CacheExtents extents;
  PagedConfig config;
  PagedLayout layout;
  std::vector<std::int32_t> table, lengths, positions;
  std::vector<T> k, v;

  PagedCache(std::vector<std::int32_t> lens, std::int64_t batch, std::int64_t cap, PageTable kind, PageOrder order,
             std::int64_t page_size, std::uint32_t seed)
      : extents{batch, kH, cap, kD}, lengths(std::move(lens)) {
    std::int64_t const per_row = (cap + page_size - 1) / page_size;
    std::int64_t const table_rows = batch * (kind == PageTable::kPerHead ? kH : 1);
    table.assign(static_cast<std::size_t>(table_rows * per_row), -1);
    config = PagedConfig{kind, order, page_size, table_rows * per_row + 3, table.data(), per_row};
    layout = make_paged_layout(extents, config);
    std::vector<std::int32_t> pages(static_cast<std::size_t>(config.num_pages));
    std::iota(pages.begin(), pages.end(), 0);
    std::shuffle(pages.begin(), pages.end(), std::mt19937(seed));
    std::size_t next = 0;
    for (std::int64_t b = 0; b < batch; ++b)
      for (std::int64_t r = 0; r < table_rows / batch; ++r) {
        std::int64_t const first = b * layout.table_batch_stride + r * layout.table_head_stride;
        std::int64_t const live = detail::live_pages(layout, extents, b, r, [&](std::int64_t bb, std::int64_t hh) {
          return lengths[static_cast<std::size_t>(bb * kH + hh)];
        });
        for (std::int64_t i = 0; i < live; ++i) table[static_cast<std::size_t>(first + i)] = pages[next++];
      }
    std::size_t const pool = static_cast<std::size_t>(config.num_pages * layout.page_stride);
    k.assign(pool, from_float<T>(std::numeric_limits<float>::quiet_NaN()));
    v.assign(pool, from_float<T>(std::numeric_limits<float>::quiet_NaN()));
    positions.resize(static_cast<std::size_t>(batch * kH * cap));
    for (std::size_t i = 0; i < positions.size(); ++i) positions[i] = static_cast<std::int32_t>(i % static_cast<std::size_t>(cap));
  }
  KVCacheView<T, PagedLayout> view() {
    return make_cache_view(k.data(), v.data(), extents, layout, layout, lengths.data(), positions.data());
  }
};

/// The strided twin: the same logical content in HF's [b, h, s, d] order.
template <class T>
struct StridedTwin {
  CacheExtents extents;
  StridedLayout layout;
  std::vector<T> k, v;
  std::vector<std::int32_t> lengths, positions;

  explicit StridedTwin(PagedCache<T> const& p)
      : extents(p.extents),
        layout(make_strided_layout(extents, {Axis::kBatch, Axis::kHead, Axis::kSeq, Axis::kDim})),
        k(static_cast<std::size_t>(extents.batch * kH * extents.capacity * kD)),
        v(k.size()),
        lengths(p.lengths),
        positions(p.positions) {}
  KVCacheView<T> view() { return make_cache_view(k.data(), v.data(), extents, layout, lengths.data(), positions.data()); }
};

/// Fills the live entries of both caches with the same random values.
template <class T>
void fill_both(PagedCache<T>& p, StridedTwin<T>& s, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist;
  auto pv = p.view();
  auto sv = s.view();
  for (std::int64_t b = 0; b < p.extents.batch; ++b)
    for (std::int64_t h = 0; h < kH; ++h)
      for (std::int32_t i = 0; i < pv.length(b, h); ++i)
        for (std::int64_t c = 0; c < kD; ++c) {
          pv.key(b, h, i, c) = sv.key(b, h, i, c) = from_float<T>(dist(gen));
          pv.value(b, h, i, c) = sv.value(b, h, i, c) = from_float<T>(dist(gen));
        }
}

RotaryEmbedding rope() {
  RopeConfig c;
  c.head_dim = static_cast<int>(kD);
  return RotaryEmbedding(c);
}

std::vector<std::int32_t> random_lengths(std::int64_t batch, std::int64_t cap, bool ragged_heads, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<std::int32_t> len(static_cast<std::int32_t>(cap / 2), static_cast<std::int32_t>(cap));
  std::vector<std::int32_t> out(static_cast<std::size_t>(batch * kH));
  for (std::int64_t b = 0; b < batch; ++b) {
    std::int32_t const seq = len(gen);
    for (std::int64_t h = 0; h < kH; ++h)
      out[static_cast<std::size_t>(b * kH + h)] = ragged_heads ? std::max(seq - static_cast<std::int32_t>(7 * h), 9) : seq;
  }
  return out;
}

/// The compressions every paged configuration is checked with: one per family of press.
template <class T, class View>
void compress_all_ways(View const& cache, int which, std::vector<T> const& queries, RotaryEmbedding const& re) {
  Observation<T> obs;
  obs.rope = &re;
  obs.queries = make_tensor4(queries.data(), {cache.extents.batch, kQ, 24, kD});
  switch (which) {
    case 0: compress(cpu, ExpectedAttentionPress{0.5}, obs, cache); break;
    case 1: compress(cpu, KnormPress{0.3}, obs, cache); break;
    case 2: compress(cpu, KeyDiffPress{0.7}, obs, cache); break;
    default: {
      StreamingLLMPress p;
      p.compression_ratio = 0.6;
      compress(cpu, p, obs, cache);
    }
  }
}

template <class T>
void check_paged_equals_strided(PageTable kind, PageOrder order, std::int64_t page_size, std::int64_t batch,
                                std::uint32_t seed) {
  std::int64_t const cap = 83;
  auto const re = rope();
  for (int which = 0; which < 4; ++which) {
    CAPTURE(which);
    PagedCache<T> p(random_lengths(batch, cap, which % 2 == 1, seed + static_cast<std::uint32_t>(which)), batch, cap,
                    kind, order, page_size, seed);
    StridedTwin<T> s(p);
    fill_both(p, s, seed + 100u);
    std::vector<T> queries(static_cast<std::size_t>(batch * kQ * 24 * kD));
    auto const qf = kvc_test::random_vector(queries.size(), seed + 200u);
    std::transform(qf.begin(), qf.end(), queries.begin(), [](float x) { return from_float<T>(x); });
    std::vector<std::int32_t> const before = p.lengths;
    compress_all_ways(p.view(), which, queries, re);
    compress_all_ways(s.view(), which, queries, re);
    REQUIRE(p.lengths == s.lengths);
    REQUIRE(p.positions == s.positions);
    auto pv = p.view();
    auto sv = s.view();
    for (std::int64_t b = 0; b < batch; ++b)
      for (std::int64_t h = 0; h < kH; ++h)
        for (std::int32_t i = 0; i < pv.length(b, h); ++i)
          for (std::int64_t c = 0; c < kD; ++c) {
            REQUIRE(to_float(pv.key(b, h, i, c)) == to_float(sv.key(b, h, i, c)));
            REQUIRE(to_float(pv.value(b, h, i, c)) == to_float(sv.value(b, h, i, c)));
          }
    // The pages given back held live entries before and hold none now.
    std::vector<std::int32_t> freed(p.table.size());
    std::int64_t const n = released_pages(pv, before.data(), freed.data(), static_cast<std::int64_t>(freed.size()));
    std::set<std::int32_t> const gone(freed.begin(), freed.begin() + n);
    REQUIRE(gone.size() == static_cast<std::size_t>(n));
    std::set<std::int32_t> live_now;
    for (std::int64_t b = 0; b < batch; ++b)
      for (std::int64_t h = 0; h < kH; ++h)
        for (std::int32_t i = 0; i < pv.length(b, h); ++i) live_now.insert(p.layout.page_of(b, h, i));
    for (std::int32_t page : gone) {
      REQUIRE(page >= 0);
      REQUIRE(live_now.count(page) == 0);
    }
    // Nothing is kept that could have been given back: every page still counted live holds an entry.
    auto const report = memory_report(pv, before.data());
    REQUIRE(report.pages == static_cast<std::int64_t>(live_now.size()));
    REQUIRE(report.pages_freed == n);
    REQUIRE(report.page_bytes_freed == n * p.layout.page_stride * 2 * static_cast<std::int64_t>(sizeof(T)));
  }
}

}  // namespace

TEST_CASE("a paged layout addresses each element of each live page once", "[paged]") {
  for (auto kind : {PageTable::kPerSequence, PageTable::kPerHead})
    for (auto order : {PageOrder::kNHD, PageOrder::kHND})
      for (std::int64_t ps : {1, 16, 64}) {
        CAPTURE(static_cast<int>(kind), static_cast<int>(order), ps);
        std::int64_t const batch = 3, cap = 70;
        PagedCache<float> p(std::vector<std::int32_t>(static_cast<std::size_t>(batch * kH), 70), batch, cap, kind, order,
                            ps, 5);
        std::set<std::int64_t> seen;
        for (std::int64_t b = 0; b < batch; ++b)
          for (std::int64_t h = 0; h < kH; ++h)
            for (std::int64_t s = 0; s < cap; ++s)
              for (std::int64_t c = 0; c < kD; ++c) {
                std::int64_t const off = p.layout.offset(b, h, s, c);
                REQUIRE(off >= 0);
                REQUIRE(off < p.config.num_pages * p.layout.page_stride);
                REQUIRE(seen.insert(off).second);
              }
        // In NHD order a token's heads are adjacent; in HND a head's tokens are.
        if (kind == PageTable::kPerSequence && ps > 1) {
          std::int64_t const step = order == PageOrder::kNHD ? kD : ps * kD;
          REQUIRE(p.layout.offset(0, 1, 0, 0) - p.layout.offset(0, 0, 0, 0) == step);
        }
      }
}

TEST_CASE("paged compression equals strided compression and gives back the emptied pages", "[paged]") {
  std::uint32_t seed = 1;
  for (auto kind : {PageTable::kPerSequence, PageTable::kPerHead})
    for (auto order : {PageOrder::kNHD, PageOrder::kHND})
      for (std::int64_t ps : {1, 16, 64})
        for (std::int64_t batch : {1, 7}) {
          if (kind == PageTable::kPerHead && order == PageOrder::kHND) continue;  // one head per page: no order
          CAPTURE(static_cast<int>(kind), static_cast<int>(order), ps, batch);
          check_paged_equals_strided<float>(kind, order, ps, batch, seed++);
        }
}

TEMPLATE_TEST_CASE("paged compression in 16-bit storage equals strided", "[paged][dtype]", half, bfloat16) {
  check_paged_equals_strided<TestType>(PageTable::kPerHead, PageOrder::kNHD, 16, 7, 77);
  check_paged_equals_strided<TestType>(PageTable::kPerSequence, PageOrder::kHND, 16, 7, 78);
}

TEST_CASE("per-head tables give back pages head by head, per-sequence tables only when every head is done",
          "[paged]") {
  // Two heads of one sequence: head 0 keeps 40 entries, head 1 keeps 8 (page size 16).
  std::vector<std::int32_t> before{64, 64, 64, 64}, after{40, 8, 64, 64};
  for (auto kind : {PageTable::kPerSequence, PageTable::kPerHead}) {
    PagedCache<float> p(before, 1, 64, kind, PageOrder::kNHD, 16, 3);
    p.lengths = after;
    std::vector<std::int32_t> freed(p.table.size());
    std::int64_t const n = released_pages(p.view(), before.data(), freed.data(), static_cast<std::int64_t>(freed.size()));
    // Per head: head 0 frees 4 − 3 pages, head 1 frees 4 − 1. Per sequence: heads 2, 3 still hold 64.
    REQUIRE(n == (kind == PageTable::kPerHead ? 1 + 3 : 0));
    auto const m = memory_report(p.view(), before.data());
    REQUIRE(m.bytes == (40 + 8 + 64 + 64) * 2 * kD * 4);
    REQUIRE(m.bytes_freed == (24 + 56) * 2 * kD * 4);
    REQUIRE(m.row_bytes_freed == std::vector<std::int64_t>{24 * 2 * kD * 4, 56 * 2 * kD * 4, 0, 0});
    REQUIRE(m.pages == (kind == PageTable::kPerHead ? 3 + 1 + 4 + 4 : 4));
  }
}

TEST_CASE("memory_report on a strided cache counts live entries and freed slots", "[paged][memory]") {
  kvc_test::OwnedCache<half> c(2, 2, 10, 8);
  c.lengths = {10, 7, 3, 0};
  std::vector<std::int32_t> const before{10, 10, 10, 10};
  auto const m = memory_report(c.view(), before.data());
  std::int64_t const entry = 2 * 8 * 2;  // K and V, 8 channels, 2 bytes
  REQUIRE(m.row_bytes == std::vector<std::int64_t>{10 * entry, 7 * entry, 3 * entry, 0});
  REQUIRE(m.bytes == 20 * entry);
  REQUIRE(m.bytes_freed == 20 * entry);
  REQUIRE(m.pages == 0);
  REQUIRE(memory_report(c.view()).bytes_freed == 0);
}

TEST_CASE("bad paged layouts and page tables are rejected with the argument and the value", "[paged][errors]") {
  CacheExtents const e{2, kH, 64, kD};
  std::vector<std::int32_t> table(8, 0);
  std::iota(table.begin(), table.end(), 0);
  PagedConfig good{PageTable::kPerSequence, PageOrder::kNHD, 16, 8, table.data(), 4};
  SECTION("page size not a power of two") {
    PagedConfig c = good;
    c.page_size = 12;
    REQUIRE_THROWS_WITH(make_paged_layout(e, c), Catch::Contains("page_size") && Catch::Contains("12"));
  }
  SECTION("null block table") {
    PagedConfig c = good;
    c.block_table = nullptr;
    REQUIRE_THROWS_WITH(make_paged_layout(e, c), Catch::Contains("block_table must not be null"));
  }
  SECTION("empty pool") {
    PagedConfig c = good;
    c.num_pages = 0;
    REQUIRE_THROWS_WITH(make_paged_layout(e, c), Catch::Contains("num_pages") && Catch::Contains("got 0"));
  }
  SECTION("table rows that do not cover the capacity") {
    PagedConfig c = good;
    c.pages_per_row = 3;
    REQUIRE_THROWS_WITH(make_paged_layout(e, c), Catch::Contains("pages_per_row = 3") && Catch::Contains("capacity = 64"));
  }
  SECTION("pool size overflowing 64 bits") {
    PagedConfig c = good;
    c.num_pages = std::numeric_limits<std::int32_t>::max();
    CacheExtents const wide{2, 1 << 20, 64, 1 << 12};
    REQUIRE_THROWS_WITH(make_paged_layout(wide, c), Catch::Contains("overflow"));
  }
  std::vector<float> k(static_cast<std::size_t>(8 * 16 * kH * kD)), v(k.size());
  std::vector<std::int32_t> lengths(2 * kH, 64);
  SECTION("a live page outside the pool") {
    table[5] = 8;
    auto const l = make_paged_layout(e, good);
    REQUIRE_THROWS_WITH(make_cache_view(k.data(), v.data(), e, l, l, lengths.data()),
                        Catch::Contains("block_table[5] = 8") && Catch::Contains("num_pages = 8"));
  }
  SECTION("a page live twice") {
    table[6] = 1;
    auto const l = make_paged_layout(e, good);
    REQUIRE_THROWS_WITH(make_cache_view(k.data(), v.data(), e, l, l, lengths.data()),
                        Catch::Contains("key_layout: page 1 (block_table[6]) is live twice"));
  }
  SECTION("entries past the live pages are not read") {
    std::fill(lengths.begin(), lengths.end(), 20);  // 2 live pages per sequence
    table[2] = table[3] = table[6] = table[7] = -1;
    auto const l = make_paged_layout(e, good);
    REQUIRE_NOTHROW(make_cache_view(k.data(), v.data(), e, l, l, lengths.data()));
  }
  SECTION("freed output too small, and tables that differ for K and V") {
    auto const l = make_paged_layout(e, good);
    auto view = make_cache_view(k.data(), v.data(), e, l, l, lengths.data());
    std::vector<std::int32_t> const before = lengths;
    std::fill(lengths.begin(), lengths.end(), 1);
    std::vector<std::int32_t> freed(8);
    REQUIRE_THROWS_WITH(released_pages(view, before.data(), freed.data(), 5),
                        Catch::Contains("freed_capacity = 5") && Catch::Contains("6 freed pages"));
    REQUIRE(released_pages(view, before.data(), freed.data(), 8) == 6);
    std::vector<std::int32_t> other = table;
    auto const lv = make_paged_layout(e, PagedConfig{PageTable::kPerSequence, PageOrder::kNHD, 16, 8, other.data(), 4});
    auto const split = make_cache_view(k.data(), v.data(), e, l, lv, lengths.data());
    REQUIRE_THROWS_WITH(released_pages(split, before.data(), freed.data(), 8), Catch::Contains("different block tables"));
  }
}

}  // namespace KVC_TEST_TU
