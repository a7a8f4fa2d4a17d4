// Compaction with streaming (non-temporal) stores (cpu/compact.hpp, detail/stream_copy.hpp) at every
// instruction set this CPU runs, against a gather of the kept entries written here: strided and paged
// caches, float, half and bfloat16, head_dim 64, 128 and 80, caches 0, 4, 16 and 32 bytes past a cache
// line, kept sets with runs, gaps and overlapping moves; the forward copy against memmove; and the
// device's dispatch, native against portable, on both sides of the streaming threshold.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "kvcompress/kvcompress.hpp"
#include "kvcompress/cpu/compact.hpp"
#include "kvcompress/detail/stream_copy.hpp"
#include "test_util.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using namespace kvcompress;

namespace {


constexpr std::size_t kGuard = 128;  // bytes on each side of a pool that nothing may write

/// `count` elements of T starting `offset` bytes past a 64-byte boundary, inside guard bytes, filled
/// with random finite values (the guards with 0xA5).
template <class T>
struct Pool {
  std::vector<std::byte> raw;
  std::size_t start = 0;  // byte index of element 0 in raw
  T* data = nullptr;      // [count]

  Pool(std::size_t count, std::size_t offset, std::uint32_t seed) : raw(count * sizeof(T) + 2 * kGuard + 64, std::byte{0xA5}) {
    auto const base = reinterpret_cast<std::uintptr_t>(raw.data()) + kGuard;
    start = kGuard + (64 - base % 64) % 64 + offset;
    data = reinterpret_cast<T*>(raw.data() + start);
    std::mt19937 gen(seed);
    std::normal_distribution<float> normal;
    for (std::size_t i = 0; i < count; ++i) data[i] = from_float<T>(normal(gen));
  }
};

/// Where a and b first differ, or -1 where they are equal: Catch prints no std::byte (clang builds leave
/// its StringMaker undefined), so the tests compare byte buffers through this index.
std::ptrdiff_t first_difference(std::vector<std::byte> const& a, std::vector<std::byte> const& b) {
  if (a.size() != b.size()) return static_cast<std::ptrdiff_t>(std::min(a.size(), b.size()));
  auto const m = std::mismatch(a.begin(), a.end(), b.begin());
  return m.first == a.end() ? -1 : m.first - a.begin();
}

/// The pool's bytes after compacting row (b, h) to `idx`, written independently of compact_row: every
/// kept entry's elements copied, one by one, from the untouched pool to slot j; nothing else changes.
template <class T, class L>
void gather_reference(std::vector<std::byte>& expected, std::vector<std::byte> const& before, std::size_t start,
                      L const& layout, std::int64_t d, std::int64_t b, std::int64_t h, std::vector<std::int32_t> const& idx) {
  for (std::size_t j = 0; j < idx.size(); ++j)
    for (std::int64_t c = 0; c < d; ++c)
      std::memcpy(expected.data() + start + static_cast<std::size_t>(layout.offset(b, h, static_cast<std::int64_t>(j), c)) * sizeof(T),
                  before.data() + start + static_cast<std::size_t>(layout.offset(b, h, idx[j], c)) * sizeof(T), sizeof(T));
}

/// Kept sets for a row of n entries, by name: runs and gaps, every entry, only the first, only the
/// last, none, all but the first (one run overlapping its destination by all but one entry), all
/// but the first three.
std::vector<std::pair<char const*, std::vector<std::int32_t>>> kept_sets(std::int32_t n, std::uint32_t seed) {
  std::vector<std::int32_t> runs, all(static_cast<std::size_t>(n));
  std::iota(all.begin(), all.end(), 0);
  std::mt19937 gen(seed);
  std::bernoulli_distribution stay(0.8);  // runs of five on average
  bool keep = false;
  for (std::int32_t i = 0; i < n; ++i) {
    if (!stay(gen)) keep = !keep;
    if (keep) runs.push_back(i);
  }
  return {{"runs and gaps", runs},
          {"every entry", all},
          {"only the first", {0}},
          {"only the last", {n - 1}},
          {"none", {}},
          {"all but the first", std::vector<std::int32_t>(all.begin() + 1, all.end())},
          {"all but the first three", std::vector<std::int32_t>(all.begin() + 3, all.end())}};
}

/// Compacts every row of a cache over key and value pools with each store kind and each kept set,
/// and checks both pools and the positions, byte for byte, guards included, against the gather.
template <class T, class L>
void check_rows(CacheExtents const& e, L const& layout, std::size_t pool_elems, std::size_t offset, std::uint32_t seed) {
  std::int64_t const rows = e.batch * e.kv_heads;
  Pool<T> k(pool_elems, offset, seed), v(pool_elems, offset, seed + 1);
  std::vector<std::byte> const k_before = k.raw, v_before = v.raw;
  for (detail::RowIsa const stores : kvc_test::row_isas_here()) {
    for (std::size_t set = 0; set < 7; ++set) {
      k.raw = k_before;  // the same storage: k.data stays valid
      v.raw = v_before;
      std::vector<std::int32_t> lengths(static_cast<std::size_t>(rows), static_cast<std::int32_t>(e.capacity));
      std::vector<std::int32_t> positions(static_cast<std::size_t>(rows * e.capacity));
      for (std::size_t i = 0; i < positions.size(); ++i) positions[i] = static_cast<std::int32_t>(1000 + i);
      std::vector<std::byte> k_expected = k.raw, v_expected = v.raw;
      std::vector<std::int32_t> pos_expected = positions;
      auto const view = make_cache_view(k.data, v.data, e, layout, layout, lengths.data(), positions.data());
      for (std::int64_t r = 0; r < rows; ++r) {
        auto const sets = kept_sets(static_cast<std::int32_t>(e.capacity), seed + static_cast<std::uint32_t>(r));
        std::vector<std::int32_t> const& idx = sets[set].second;
        std::int64_t const b = r / e.kv_heads, h = r % e.kv_heads;
        cpu_impl::compact_row(stores, view, b, h, idx.data(), static_cast<std::int32_t>(idx.size()));
        gather_reference<T>(k_expected, k_before, k.start, layout, e.head_dim, b, h, idx);
        gather_reference<T>(v_expected, v_before, v.start, layout, e.head_dim, b, h, idx);
        for (std::size_t j = 0; j < idx.size(); ++j)
          pos_expected[static_cast<std::size_t>(r * e.capacity) + j] = 1000 + static_cast<std::int32_t>(r * e.capacity) + idx[j];
        CHECK(lengths[static_cast<std::size_t>(r)] == static_cast<std::int32_t>(idx.size()));
      }
      CAPTURE(static_cast<int>(stores), kept_sets(4, 0)[set].first, offset);
      REQUIRE(first_difference(k.raw, k_expected) == -1);
      REQUIRE(first_difference(v.raw, v_expected) == -1);
      REQUIRE(positions == pos_expected);
    }
  }
}

template <class T>
void check_strided(std::int64_t d) {
  CacheExtents const e{2, 2, 150, d};
  std::size_t const elems = static_cast<std::size_t>(2 * 2 * 150 * d);
  using A = Axis;
  // Entries packed in a row (runs move as blocks), entries a head apart (one entry per copy), channels
  // a sequence apart (V transposed, as llama.cpp stores it: one element per copy).
  for (auto const order : {std::array<A, 4>{A::kBatch, A::kHead, A::kSeq, A::kDim}, std::array<A, 4>{A::kBatch, A::kSeq, A::kHead, A::kDim},
                           std::array<A, 4>{A::kBatch, A::kHead, A::kDim, A::kSeq}})
    for (std::size_t offset : {std::size_t{0}, std::size_t{4}, std::size_t{16}, std::size_t{32}}) check_rows<T>(e, make_strided_layout(e, order), elems, offset, 11);
}

template <class T>
void check_paged(std::int64_t d) {
  CacheExtents const e{2, 2, 150, d};
  for (auto const& [table_kind, order] : {std::pair{PageTable::kPerSequence, PageOrder::kNHD}, std::pair{PageTable::kPerSequence, PageOrder::kHND},
                                         std::pair{PageTable::kPerHead, PageOrder::kNHD}})
    for (std::int64_t page : {4, 16, 64}) {
      std::int64_t const per_row = (e.capacity + page - 1) / page;
      std::int64_t const table_rows = e.batch * (table_kind == PageTable::kPerHead ? e.kv_heads : 1);
      std::vector<std::int32_t> table(static_cast<std::size_t>(table_rows * per_row));
      std::iota(table.begin(), table.end(), 0);
      std::shuffle(table.begin(), table.end(), std::mt19937(5));  // pages out of order, as after many requests
      auto const layout = make_paged_layout(e, PagedConfig{table_kind, order, page, static_cast<std::int64_t>(table.size()), table.data(), per_row});
      std::size_t const elems = table.size() * static_cast<std::size_t>(layout.page_stride);
      for (std::size_t offset : {std::size_t{0}, std::size_t{4}, std::size_t{32}}) {
        CAPTURE(static_cast<int>(table_kind), static_cast<int>(order), page);
        check_rows<T>(e, layout, elems, offset, 21);
      }
    }
}

}  // namespace

TEMPLATE_TEST_CASE("streaming compaction of strided rows equals a gather of the kept entries", "[compact][streaming]", float,
                   half, bfloat16) {
  for (std::int64_t d : {64, 128, 80}) {
    CAPTURE(d);
    check_strided<TestType>(d);
  }
}

TEMPLATE_TEST_CASE("streaming compaction of paged rows equals a gather of the kept entries", "[compact][streaming][paged]",
                   float, half, bfloat16) {
  for (std::int64_t d : {64, 128, 80}) {
    CAPTURE(d);
    check_paged<TestType>(d);
  }
}

TEST_CASE("the forward copy gives memmove's bytes when its destination overlaps below its source",
          "[compact][streaming]") {
  // Destinations 1 to 300 bytes below the source, at every alignment of a line, lengths from under a
  // line to many lines: the overlap that an in-place run of kept entries has.
  std::vector<std::byte> init(1024 + 64);
  std::mt19937 gen(3);
  for (auto& x : init) x = static_cast<std::byte>(gen() & 0xFF);
  for (detail::RowIsa const stores : kvc_test::row_isas_here())
    for (std::size_t shift : {1U, 4U, 63U, 64U, 65U, 128U, 300U})
      for (std::size_t dst : {0U, 1U, 17U, 32U, 64U})
        for (std::size_t bytes : {0U, 63U, 64U, 65U, 127U, 200U, 640U, 700U}) {
          CAPTURE(static_cast<int>(stores), shift, dst, bytes);
          std::vector<std::byte> got = init, want = init;
          detail::copy_forward(stores, got.data() + dst, got.data() + dst + shift, bytes);
          detail::stream_fence(stores);
          std::memmove(want.data() + dst, want.data() + dst + shift, bytes);
          REQUIRE(first_difference(got, want) == -1);
        }
}

TEST_CASE("native and portable devices compact to the same bytes on both sides of the streaming threshold",
          "[compact][streaming]") {
  // Row 0 moves less than the threshold (ordinary stores on both devices), row 1 more (streaming
  // stores on a native device whose CPU has them), its scores a slow wave so that the top half comes
  // in runs long enough to stream. The kept sets: the top half by score, no ties.
  std::int64_t const d = 128;
  auto const above = static_cast<std::int64_t>(cpu_impl::kCompactStreamingMinBytes / (d * sizeof(float)));
  std::int64_t const cap = above + 200;
  CacheExtents const e{1, 2, cap, d};
  auto const layout = make_strided_layout(e, {Axis::kBatch, Axis::kHead, Axis::kSeq, Axis::kDim});
  std::vector<float> scores(static_cast<std::size_t>(2 * cap));
  std::mt19937 gen(9);
  std::uniform_real_distribution<float> u;
  for (std::size_t i = 0; i < scores.size(); ++i)
    scores[i] = u(gen) + (i >= static_cast<std::size_t>(cap) ? 4.0f * std::sin(0.01f * static_cast<float>(i)) : 0.0f);
  std::vector<std::int32_t> const start_lengths{64, static_cast<std::int32_t>(cap)};
  auto const kept = [](std::int64_t n) { return n / 2; };
  std::vector<std::vector<std::byte>> results;
  for (CpuDevice const dev : {CpuDevice{1, CpuKernels::kPortable}, CpuDevice{1}}) {
    Pool<float> k(static_cast<std::size_t>(2 * cap * d), 0, 1), v(static_cast<std::size_t>(2 * cap * d), 0, 2);
    std::vector<std::byte> k_expected = k.raw, v_expected = v.raw;
    for (std::int64_t h = 0; h < 2; ++h) {
      std::int64_t const n = start_lengths[static_cast<std::size_t>(h)];
      std::vector<std::int32_t> order(static_cast<std::size_t>(n));
      std::iota(order.begin(), order.end(), 0);
      float const* row = scores.data() + h * cap;
      std::sort(order.begin(), order.end(), [&](std::int32_t a, std::int32_t b) { return row[a] > row[b]; });
      order.resize(static_cast<std::size_t>(kept(n)));
      std::sort(order.begin(), order.end());
      gather_reference<float>(k_expected, k.raw, k.start, layout, d, 0, h, order);
      gather_reference<float>(v_expected, v.raw, v.start, layout, d, 0, h, order);
    }
    std::vector<std::int32_t> lengths = start_lengths;
    std::vector<std::byte> scratch(Workspace::bytes_for<std::int32_t>(static_cast<std::size_t>(cap)));
    Workspace ws(scratch.data(), scratch.size());
    keep_topk(dev, make_cache_view(k.data, v.data, e, layout, lengths.data()), scores.data(), kept, ws);
    CHECK(lengths == std::vector<std::int32_t>{32, static_cast<std::int32_t>(cap / 2)});
    REQUIRE(first_difference(k.raw, k_expected) == -1);
    REQUIRE(first_difference(v.raw, v_expected) == -1);
    auto const* first = k.raw.data() + k.start;  // the pool alone: the guards' placement differs between pools
    results.emplace_back(first, first + 2 * cap * d * static_cast<std::int64_t>(sizeof(float)));
  }
  CHECK(first_difference(results[0], results[1]) == -1);
}

TEST_CASE("AlignedAllocator's blocks start on a cache line", "[compact][streaming]") {
  for (std::size_t n : {1U, 3U, 100U, 100000U}) {
    std::vector<float, AlignedAllocator<float>> x(n, 1.0f);
    CHECK(reinterpret_cast<std::uintptr_t>(x.data()) % 64 == 0);
    std::vector<half, AlignedAllocator<half>> y(n);
    CHECK(reinterpret_cast<std::uintptr_t>(y.data()) % 64 == 0);
  }
}

}  // namespace KVC_TEST_TU
