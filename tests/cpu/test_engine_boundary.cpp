// The engine boundary: what an engine hands kvcompress after the view was built (grown lengths,
// hand-built aggregates, buffers that share memory, saved lengths, absurd sizes) is checked at
// every entry point, and ragged batches compress each sequence as if it were alone.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "kvcompress/kvcompress.hpp"
#include "test_util.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using namespace kvcompress;
using Catch::Contains;

namespace {

RotaryEmbedding rope_of(int head_dim, RopeType type = RopeType::kDefault) {
  RopeConfig c;
  c.head_dim = head_dim;
  c.type = type;
  if (type == RopeType::kLlama3) {
    c.factor = 8.0;
    c.low_freq_factor = 1.0;
    c.high_freq_factor = 4.0;
    c.original_max_position_embeddings = 64;
  } else if (type == RopeType::kYarn) {
    c.factor = 4.0;
    c.original_max_position_embeddings = 128;
  }
  return RotaryEmbedding(c);
}

ExpectedAttentionPress ea(double r = 0.5) {
  ExpectedAttentionPress p;
  p.compression_ratio = r;
  p.n_sink = 2;
  return p;
}

/// A per-head paged cache: `pages_per_row` pages of `page` tokens per (batch, head) row, live
/// entries mapped to distinct pages, every other table entry −1.
struct Paged {
  CacheExtents e;
  std::vector<std::int32_t> table, lengths;
  std::vector<float> pool_k, pool_v;
  PagedLayout layout;

  Paged(std::int64_t heads, std::int64_t page, std::int64_t pages_per_row, std::int32_t length)
      : e{1, heads, page * pages_per_row, 8}, table(static_cast<std::size_t>(heads * pages_per_row), -1),
        lengths(static_cast<std::size_t>(heads), length) {
    std::int64_t const num_pages = heads * pages_per_row;
    layout = make_paged_layout(e, {PageTable::kPerHead, PageOrder::kNHD, page, num_pages, table.data(), pages_per_row});
    std::int32_t next = 0;
    for (std::int64_t h = 0; h < heads; ++h)
      for (std::int64_t i = 0; i < (length + page - 1) / page; ++i) table[static_cast<std::size_t>(h * pages_per_row + i)] = next++;
    pool_k = kvc_test::random_vector(static_cast<std::size_t>(num_pages * layout.page_stride), 5);
    pool_v = kvc_test::random_vector(pool_k.size(), 6);
  }
  KVCacheView<float, PagedLayout> view() {
    return make_cache_view(pool_k.data(), pool_v.data(), e, layout, layout, lengths.data());
  }
};

}  // namespace

TEST_CASE("boundary: a paged view built once, then grown into unmapped table slots", "[reliability][boundary]") {
  Paged p(2, 4, 4, 8);  // rows of 8 entries in 2 pages; table slots 2 and 3 of each row hold -1
  auto const cache = p.view();
  std::vector<float> const k0 = p.pool_k;
  KnormPress press{0.5};
  p.lengths[1] = 12;  // the engine appended 4 tokens but has not mapped their page yet
  SECTION("compress") {
    REQUIRE_THROWS_WITH(compress(cpu, press, Observation<float>{}, cache),
                        Contains("key_layout: block_table[6] = -1 is outside the pool [0, num_pages = 8)"));
    CHECK(p.pool_k == k0);
    CHECK(p.lengths[1] == 12);
  }
  SECTION("score") {
    REQUIRE_THROWS_WITH(score(cpu, press, Observation<float>{}, cache), Contains("block_table[6] = -1"));
  }
  SECTION("the workspace query") {
    REQUIRE_THROWS_WITH(compress_workspace_bytes(cpu, press, Observation<float>{}, cache), Contains("block_table[6] = -1"));
  }
  SECTION("keep_topk") {
    std::vector<float> scores(16 * 2, 1.0f);
    std::vector<std::byte> ws(1 << 12);
    Workspace w(ws.data(), ws.size());
    REQUIRE_THROWS_WITH(keep_topk(cpu, cache, scores.data(), [](std::int64_t n) { return n / 2; }, w),
                        Contains("block_table[6] = -1"));
  }
  SECTION("once the engine maps the page, compress runs") {
    p.table[6] = 7;  // a free page of the pool (rows 0 and 1 hold pages 0-3)
    compress(cpu, press, Observation<float>{}, cache);
    CHECK(p.lengths[1] == 6);
  }
}

TEST_CASE("boundary: released_pages and memory_report check the saved lengths", "[reliability][boundary]") {
  Paged p(2, 4, 4, 16);
  auto const cache = p.view();
  std::vector<std::int32_t> freed(8);
  SECTION("saved lengths above capacity") {
    std::vector<std::int32_t> saved{16, 99};
    REQUIRE_THROWS_WITH(released_pages(cache, saved.data(), freed.data(), 8),
                        Contains("previous_lengths[1] = 99 is outside [0, capacity = 16]"));
    REQUIRE_THROWS_WITH(released_pages(p.layout, p.e, saved.data(), p.lengths.data(), freed.data(), 8),
                        Contains("previous_lengths[1] = 99"));
    REQUIRE_THROWS_WITH(memory_report(cache, saved.data()), Contains("previous_lengths[1] = 99"));
  }
  SECTION("negative saved lengths") {
    std::vector<std::int32_t> saved{-3, 16};
    REQUIRE_THROWS_WITH(memory_report(cache, saved.data()), Contains("previous_lengths[0] = -3 is outside"));
    REQUIRE_THROWS_WITH(released_pages(cache, saved.data(), freed.data(), 8), Contains("previous_lengths[0] = -3"));
  }
  SECTION("a negative freed capacity") {
    std::vector<std::int32_t> saved{16, 16};
    REQUIRE_THROWS_WITH(released_pages(cache, saved.data(), freed.data(), -1),
                        Contains("freed_capacity must be non-negative, got -1"));
  }
}

TEST_CASE("boundary: hand-built aggregates are checked at every entry point", "[reliability][boundary]") {
  kvc_test::OwnedCache<float> c(1, 2, 8, 4);
  c.fill_random(1);
  KnormPress const press{0.5};
  Observation<float> const none{};
  auto entry_points_reject = [&](auto const& cache, auto const& obs, char const* what) {
    REQUIRE_THROWS_WITH(compress(cpu, press, obs, cache), Contains(what));
    REQUIRE_THROWS_WITH(score(cpu, press, obs, cache), Contains(what));
    REQUIRE_THROWS_WITH(compress_workspace_bytes(cpu, press, obs, cache), Contains(what));
  };
  SECTION("a view with a negative key stride") {
    StridedLayout bad = c.layout;
    bad.strides[2] = -4;
    KVCacheView<float> const v{c.k.data(), c.v.data(), c.extents, bad, c.layout, c.lengths.data(), nullptr};
    entry_points_reject(v, none, "key_layout.strides[seq] must be positive, got -4");
  }
  SECTION("a view with a zero value stride") {
    StridedLayout bad = c.layout;
    bad.strides[1] = 0;
    KVCacheView<float> const v{c.k.data(), c.v.data(), c.extents, c.layout, bad, c.lengths.data(), nullptr};
    entry_points_reject(v, none, "value_layout.strides[kv_heads] must be positive, got 0");
  }
  SECTION("a paged layout with a negative token stride") {
    Paged p(2, 4, 4, 8);
    PagedLayout bad = p.layout;
    bad.token_stride = -8;
    KVCacheView<float, PagedLayout> const v{p.pool_k.data(), p.pool_v.data(), p.e, bad, bad, p.lengths.data(), nullptr};
    entry_points_reject(v, none, "key_layout.token_stride must be positive, got -8");
  }
  SECTION("a paged layout with a zero page stride") {
    Paged p(2, 4, 4, 8);
    PagedLayout bad = p.layout;
    bad.page_stride = 0;
    KVCacheView<float, PagedLayout> const v{p.pool_k.data(), p.pool_v.data(), p.e, bad, bad, p.lengths.data(), nullptr};
    entry_points_reject(v, none, "key_layout.page_stride = 0 is smaller than the 32 elements a page's entries span");
  }
  SECTION("a paged layout whose head rows overlap") {
    Paged p(2, 4, 4, 8);
    PagedLayout bad = p.layout;
    bad.table_head_stride = 1;
    KVCacheView<float, PagedLayout> const v{p.pool_k.data(), p.pool_v.data(), p.e, bad, bad, p.lengths.data(), nullptr};
    entry_points_reject(v, none, "key_layout.table_head_stride = 1 makes the rows of two kv heads share entries");
  }
  SECTION("an observation tensor with a negative stride") {
    std::vector<float> q(2 * 8 * 4);
    Observation<float> obs;
    obs.queries = Tensor4<float>{q.data(), {1, 2, 8, 4}, {64, 32, -4, 1}};
    entry_points_reject(c.view(), obs, "observation.queries strides[2] must be non-negative, got -4");
  }
  SECTION("an observation tensor whose offsets overflow") {
    std::vector<float> q(4);
    Observation<float> obs;
    obs.window_queries = Tensor4<float>{q.data(), {1, 3, 8, 4}, {0, std::numeric_limits<std::int64_t>::max() / 2, 4, 1}};
    entry_points_reject(c.view(), obs, "observation.window_queries offsets overflow 64 bits");
  }
  SECTION("an output projection with a negative stride") {
    std::vector<float> w(16);
    Observation<float> obs;
    obs.output_projection = Tensor2<float>{w.data(), {4, 4}, {-4, 1}};
    entry_points_reject(c.view(), obs, "observation.output_projection strides[0] must be non-negative, got -4");
  }
}

TEST_CASE("boundary: buffers that share memory", "[reliability][boundary]") {
  CacheExtents const e{1, 2, 8, 4};
  auto const dense = make_strided_layout(e, {Axis::kBatch, Axis::kHead, Axis::kSeq, Axis::kDim});
  std::vector<float> buf = kvc_test::random_vector(2 * 64 + 8, 3);
  std::vector<std::int32_t> lengths{8, 8};
  SECTION("values = keys + head_dim over a dense K") {
    REQUIRE_THROWS_WITH(make_cache_view(buf.data(), buf.data() + 4, e, dense, lengths.data()),
                        Contains("values = keys + 4 elements"));
    KVCacheView<float> const v{buf.data(), buf.data() + 4, e, dense, dense, lengths.data(), nullptr};
    REQUIRE_THROWS_WITH(compress(cpu, KnormPress{0.5}, Observation<float>{}, v), Contains("values = keys + 4 elements"));
  }
  SECTION("values one element past keys with a dense layout") {
    REQUIRE_THROWS_WITH(make_cache_view(buf.data(), buf.data() + 1, e, dense, lengths.data()),
                        Contains("values = keys + 1 elements"));
  }
  SECTION("K and V interleaved element by element are disjoint and valid") {
    auto const inter = make_strided_layout(e, {Axis::kBatch, Axis::kHead, Axis::kSeq, Axis::kDim}, 2);
    CHECK_NOTHROW(make_cache_view(buf.data(), buf.data() + 1, e, inter, lengths.data()));
  }
  SECTION("V past the end of K is valid") {
    CHECK_NOTHROW(make_cache_view(buf.data(), buf.data() + 64, e, dense, lengths.data()));
  }
  SECTION("the lengths array inside the K buffer") {
    auto* inside = reinterpret_cast<std::int32_t*>(buf.data() + 10);
    inside[0] = 8;
    inside[1] = 8;
    std::vector<float> v(64);
    REQUIRE_THROWS_WITH(make_cache_view(buf.data(), v.data(), e, dense, inside), Contains("keys [0x") && Contains("and lengths ["));
  }
  SECTION("positions overlapping the values") {
    std::vector<float> k(64), v(64);
    auto* pos = reinterpret_cast<std::int32_t*>(v.data() + 32);
    REQUIRE_THROWS_WITH(make_cache_view(k.data(), v.data(), e, dense, lengths.data(), pos),
                        Contains("values [0x") && Contains("and positions ["));
  }
  SECTION("K and V layouts that differ and overlap") {
    auto const token_major = make_strided_layout(e, {Axis::kBatch, Axis::kSeq, Axis::kHead, Axis::kDim});
    REQUIRE_THROWS_WITH(make_cache_view(buf.data(), buf.data() + 8, e, dense, token_major, lengths.data()),
                        Contains("overlap with different layouts"));
  }
}

TEST_CASE("boundary: one page pool shared by keys and values through two tables", "[reliability][boundary]") {
  // Two heads, 2 pages of 4 tokens each, K pages 0-3 and V pages 4-7 of one pool of 8.
  CacheExtents const e{1, 2, 8, 8};
  std::vector<std::int32_t> kt{0, 1, 2, 3}, vt{4, 5, 6, 7}, lengths{8, 8};
  auto const kl = make_paged_layout(e, {PageTable::kPerHead, PageOrder::kNHD, 4, 8, kt.data(), 2});
  auto const vl = make_paged_layout(e, {PageTable::kPerHead, PageOrder::kNHD, 4, 8, vt.data(), 2});
  std::vector<float> pool = kvc_test::random_vector(static_cast<std::size_t>(8 * kl.page_stride), 11);
  SECTION("disjoint pages compress exactly as two pools do") {
    auto const shared = make_cache_view(pool.data(), pool.data(), e, kl, vl, lengths.data());
    std::vector<float> kpool(pool.begin(), pool.begin() + 4 * kl.page_stride), vpool(pool.begin() + 4 * kl.page_stride, pool.end());
    std::vector<std::int32_t> kt2{0, 1, 2, 3}, vt2{0, 1, 2, 3}, lengths2{8, 8};
    auto const kl2 = make_paged_layout(e, {PageTable::kPerHead, PageOrder::kNHD, 4, 4, kt2.data(), 2});
    auto const vl2 = make_paged_layout(e, {PageTable::kPerHead, PageOrder::kNHD, 4, 4, vt2.data(), 2});
    auto const apart = make_cache_view(kpool.data(), vpool.data(), e, kl2, vl2, lengths2.data());
    ExpectedAttentionPress press = ea(0.5);
    press.n_sink = 1;
    std::vector<float> q = kvc_test::random_vector(4 * 8 * 8, 12);
    RotaryEmbedding const rope = rope_of(8);
    Observation<float> obs;
    obs.queries = make_tensor4(q.data(), {1, 4, 8, 8});
    obs.rope = &rope;
    compress(cpu, press, obs, shared);
    compress(cpu, press, obs, apart);
    CHECK(lengths == lengths2);
    CHECK(std::equal(kpool.begin(), kpool.end(), pool.begin()));
    CHECK(std::equal(vpool.begin(), vpool.end(), pool.begin() + 4 * kl.page_stride));
  }
  SECTION("a page live in both tables") {
    vt[2] = 1;
    REQUIRE_THROWS_WITH(make_cache_view(pool.data(), pool.data(), e, kl, vl, lengths.data()),
                        Contains("page 1 (block_table[2]) is live twice, in key_layout (the pool K and V share) and in value_layout"));
    vt[2] = 6;
    KVCacheView<float, PagedLayout> const v{pool.data(), pool.data(), e, kl, vl, lengths.data(), nullptr};
    vt[3] = 0;  // changed after the view was built
    std::vector<float> const before = pool;
    REQUIRE_THROWS_WITH(compress(cpu, KnormPress{0.5}, Observation<float>{}, v), Contains("page 0 (block_table[3]) is live twice"));
    CHECK(pool == before);
  }
  SECTION("one table for keys and values of one pool") {
    REQUIRE_THROWS_WITH(make_cache_view(pool.data(), pool.data(), e, kl, kl, lengths.data()),
                        Contains("keys and values must not alias") && Contains("unless their block tables differ"));
  }
  SECTION("the lengths inside a block table") {
    std::vector<std::int32_t> table{0, 1, 2, 3, 8, 8};
    auto const l = make_paged_layout(e, {PageTable::kPerHead, PageOrder::kNHD, 4, 8, table.data(), 2});
    std::vector<float> values(pool.size());
    REQUIRE_THROWS_WITH(make_cache_view(pool.data(), values.data(), e, l, l, table.data() + 3),
                        Contains("lengths [0x") && Contains("key_layout.block_table ["));
  }
}

TEST_CASE("boundary: sizes that would overflow or never finish are errors", "[reliability][boundary]") {
  SECTION("head_dim = 2^31 in Expected Attention's workspace query") {
    std::int64_t const d = std::int64_t{1} << 31;
    CacheExtents const e{1, 1, 1, d};
    // No memory is read by the query: the pointers only need distinct, non-overlapping ranges.
    auto* k = reinterpret_cast<float*>(std::uintptr_t{1} << 40);
    auto* v = reinterpret_cast<float*>(std::uintptr_t{1} << 42);
    auto* q = reinterpret_cast<float*>(std::uintptr_t{1} << 44);
    std::int32_t length = 1;
    auto const layout = make_strided_layout(e, {Axis::kBatch, Axis::kHead, Axis::kSeq, Axis::kDim});
    KVCacheView<float> const cache{k, v, e, layout, layout, &length, nullptr};
    Observation<float> obs;
    obs.queries = Tensor4<float>{q, {1, 4, 8, d}, {32 * d, 8 * d, d, 1}};
    REQUIRE_THROWS_WITH(compress_workspace_bytes(cpu, ea(), obs, cache),
                        Contains("scratch of 1 x 4 x 2147483648 x 2147483648 objects exceeds 2^56"));
  }
  SECTION("DecodingPress with query_buffer_size = INT64_MAX or 1e12") {
    for (std::int64_t size : {std::numeric_limits<std::int64_t>::max(), std::int64_t{1000000000000}}) {
      DecodingOptions o;
      o.query_buffer_size = size;
      REQUIRE_THROWS_WITH((DecodingPress<KnormPress>(KnormPress{}, o, {1, 1, 1, 4})),
                          Contains("query_buffer_size must be below 2^31 - 1") && Contains(std::to_string(size)));
    }
  }
  SECTION("DecodingPress buffers beyond any memory") {
    DecodingOptions o;
    o.query_buffer_size = 1 << 30;
    REQUIRE_THROWS_WITH((DecodingPress<KnormPress>(KnormPress{}, o, {1000, 1000, 64, 128})),
                        Contains("scratch of 1000 x 1000 x 64 x 1073741825 x 128 objects exceeds 2^56"));
  }
  SECTION("Expected Attention with n_future_positions = 1e12 is rejected at once") {
    kvc_test::OwnedCache<float> c(1, 2, 8, 4);
    c.fill_random(1);
    std::vector<float> q = kvc_test::random_vector(8 * 8 * 4, 2);
    RotaryEmbedding const rope = rope_of(4);
    Observation<float> obs;
    obs.queries = make_tensor4(q.data(), {1, 8, 8, 4});
    obs.rope = &rope;
    ExpectedAttentionPress press = ea();
    press.n_future_positions = 1000000000000;
    REQUIRE_THROWS_WITH(compress(cpu, press, obs, c.view()),
                        Contains("n_future_positions must be in [1, 2^31) (positions are int32), got 1000000000000"));
    press.n_future_positions = (std::int64_t{1} << 31) - 1;  // the largest window: O(head_dim), passes 2^31 with the chunk
    REQUIRE_THROWS_WITH(compress(cpu, press, obs, c.view()), Contains("passes 2^31"));
    press.n_future_positions = (std::int64_t{1} << 31) - 9;  // fits: the closed form takes no longer than T = 512
    compress(cpu, press, obs, c.view());
    CHECK(c.lengths == std::vector<std::int32_t>{4, 4});
  }
}

TEST_CASE("boundary: the averaged rotation's closed form equals the per-position loop", "[reliability][boundary]") {
  for (RopeType type : {RopeType::kDefault, RopeType::kLlama3, RopeType::kYarn}) {
    RotaryEmbedding const rope = rope_of(64, type);
    for (std::int64_t count : {1, 7, 512, 4096}) {
      for (std::int64_t start : {0, 203, 70000}) {
        std::vector<float> c(64), s(64), inv(32);
        rope.averaged_rotation(start, count, c.data(), s.data());
        // The loop HF's cos/sin give: float32 angles inv_freq·p, summed position by position.
        rope.inv_freq_for(start + count, inv.data());
        double worst = 0.0;
        for (int i = 0; i < 32; ++i) {
          double cs = 0.0, ss = 0.0;
          for (std::int64_t p = start; p < start + count; ++p) {
            float const angle = inv[static_cast<std::size_t>(i)] * static_cast<float>(p);
            cs += static_cast<float>(std::cos(angle)) * rope.attention_scaling();
            ss += static_cast<float>(std::sin(angle)) * rope.attention_scaling();
          }
          double const n = static_cast<double>(count);
          worst = std::max({worst, std::fabs(cs / n - c[static_cast<std::size_t>(i)]),
                            std::fabs(ss / n - s[static_cast<std::size_t>(i)]),
                            std::fabs(double(c[static_cast<std::size_t>(i)]) - c[static_cast<std::size_t>(i + 32)])});
        }
        INFO("rope type " << static_cast<int>(type) << ", start " << start << ", count " << count);
        // float angles round by up to half an ulp of inv_freq·p (6e-8·p), averaged over the window.
        CHECK(worst <= 1e-6 + 6e-8 * static_cast<double>(start + count) / std::sqrt(static_cast<double>(count)));
      }
    }
  }
}

TEST_CASE("boundary: KeyRerotation rejects negative positions before anything moves", "[reliability][boundary]") {
  kvc_test::OwnedCache<float> c(1, 2, 8, 4);
  c.fill_random(1);
  std::vector<std::int32_t> pos(16);
  std::iota(pos.begin(), pos.end(), 0);
  pos[9] = -7;
  auto const cache = make_cache_view(c.k.data(), c.v.data(), c.extents, c.layout, c.lengths.data(), pos.data());
  RotaryEmbedding const rope = rope_of(4);
  Observation<float> obs;
  obs.rope = &rope;
  obs.chunk_length = 8;
  auto const k0 = c.k;
  REQUIRE_THROWS_WITH(compress(cpu, KeyRerotationPress{KnormPress{0.5}}, obs, cache), Contains("positions[0, 1, 1] = -7 is negative"));
  CHECK(c.k == k0);
}

TEST_CASE("boundary: a position whose chunk end overflows reaches no press", "[reliability][boundary]") {
  // Found by fuzz_compress: KeyRerotation formed position + chunk length (signed overflow).
  kvc_test::OwnedCache<float> c(1, 2, 8, 4);
  c.fill_random(1);
  RotaryEmbedding const rope = rope_of(4);
  Observation<float> obs;
  obs.rope = &rope;
  obs.chunk_length = 8;
  obs.position = std::numeric_limits<std::int64_t>::max() - 3;
  REQUIRE_THROWS_WITH(compress(cpu, KeyRerotationPress{KnormPress{0.5}}, obs, c.view()),
                      Contains("observation.position = 9223372036854775804 plus the chunk length 8 overflows 64 bits"));
}

TEST_CASE("boundary: a workspace sized for one thread and used with two says so", "[reliability][boundary]") {
  kvc_test::OwnedCache<float> c(1, 8, 64, 16);
  c.fill_random(1);
  KnormPress const press{0.5};
  std::vector<std::byte> ws(compress_workspace_bytes(CpuDevice{1}, press, Observation<float>{}, c.view()));
  REQUIRE(compress_workspace_bytes(CpuDevice{2}, press, Observation<float>{}, c.view()) > ws.size());
  REQUIRE_THROWS_WITH(compress(CpuDevice{2}, press, Observation<float>{}, c.view(), Workspace(ws.data(), ws.size())),
                      Contains("workspace too small") && Contains("a device of 2 thread(s)") && Contains("CpuDevice{2}"));
  CHECK(c.lengths == std::vector<std::int32_t>(8, 64));
}

TEST_CASE("boundary: a ragged batch compresses each sequence as if it were alone", "[reliability][boundary][ragged]") {
  // Three sequences of 13, 29 and 21 tokens in one cache of capacity 32; their queries packed.
  std::int64_t const H = 2, G = 3, d = 8, cap = 32;
  std::vector<std::int32_t> const lens{13, 29, 21};
  std::vector<std::int32_t> const offsets{0, 13, 42, 63};
  std::vector<std::int64_t> const starts{0, 100, 7};  // positions of each sequence's first chunk token
  std::vector<float> const packed = kvc_test::random_vector(static_cast<std::size_t>(H * G * 63 * d), 21);
  kvc_test::OwnedCache<float> c(3, H, cap, d);
  c.fill_random(22);
  for (std::int64_t b = 0; b < 3; ++b)
    for (std::int64_t h = 0; h < H; ++h) c.lengths[static_cast<std::size_t>(b * H + h)] = lens[static_cast<std::size_t>(b)];
  RotaryEmbedding const rope = rope_of(static_cast<int>(d), RopeType::kLlama3);
  Observation<float> ragged;
  ragged.queries = make_tensor4(packed.data(), {1, H * G, 63, d});
  ragged.query_offsets = offsets.data();
  ragged.sequence_positions = starts.data();
  ragged.rope = &rope;

  // Sequence b alone: a batch-1 view of its rows and its own contiguous queries.
  auto alone = [&](auto const& press, std::int64_t b, std::vector<float>& k, std::vector<float>& v, std::vector<std::int32_t>& l) {
    CacheExtents const e{1, H, cap, d};
    k.assign(c.k.begin() + b * H * cap * d, c.k.begin() + (b + 1) * H * cap * d);
    v.assign(c.v.begin() + b * H * cap * d, c.v.begin() + (b + 1) * H * cap * d);
    l.assign(2, lens[static_cast<std::size_t>(b)]);
    std::int64_t const n = offsets[static_cast<std::size_t>(b + 1)] - offsets[static_cast<std::size_t>(b)];
    std::vector<float> q(static_cast<std::size_t>(H * G * n * d));
    for (std::int64_t j = 0; j < H * G; ++j)
      for (std::int64_t t = 0; t < n; ++t)
        for (std::int64_t x = 0; x < d; ++x)
          q[static_cast<std::size_t>((j * n + t) * d + x)] =
              packed[static_cast<std::size_t>((j * 63 + offsets[static_cast<std::size_t>(b)] + t) * d + x)];
    Observation<float> obs;
    obs.queries = make_tensor4(q.data(), {1, H * G, n, d});
    obs.position = starts[static_cast<std::size_t>(b)];
    obs.rope = &rope;
    auto const view = make_cache_view(k.data(), v.data(), e, make_strided_layout(e, {Axis::kBatch, Axis::kHead, Axis::kSeq, Axis::kDim}), l.data());
    compress(cpu, press, obs, view);
  };
  auto check_press = [&](auto const& press) {
    kvc_test::OwnedCache<float> r = c;
    compress(cpu, press, ragged, r.view());
    for (std::int64_t b = 0; b < 3; ++b) {
      std::vector<float> k, v;
      std::vector<std::int32_t> l;
      alone(press, b, k, v, l);
      INFO("sequence " << b);
      CHECK(std::vector<std::int32_t>(r.lengths.begin() + b * H, r.lengths.begin() + (b + 1) * H) == l);
      CHECK(std::equal(k.begin(), k.end(), r.k.begin() + b * H * cap * d));
      CHECK(std::equal(v.begin(), v.end(), r.v.begin() + b * H * cap * d));
    }
  };
  SECTION("ExpectedAttention") { check_press(ea(0.5)); }
  SECTION("ExpectedAttention without covariance, at 0.75") {
    ExpectedAttentionPress p = ea(0.75);
    p.use_covariance = false;
    check_press(p);
  }
  SECTION("KeyRerotation(ExpectedAttention)") { check_press(KeyRerotationPress{ea(0.5)}); }
  SECTION("window presses read no queries and ignore the packing") { check_press(KnormPress{0.5}); }

  SECTION("bad offsets and positions") {
    Observation<float> bad = ragged;
    std::vector<std::int32_t> off = offsets;
    bad.query_offsets = off.data();
    off[0] = 1;
    REQUIRE_THROWS_WITH(compress(cpu, ea(), bad, c.view()), Contains("observation.query_offsets[0] must be 0, got 1"));
    off[0] = 0;
    off[2] = 10;
    REQUIRE_THROWS_WITH(compress(cpu, ea(), bad, c.view()),
                        Contains("observation.query_offsets must not decrease: query_offsets[1] = 13, query_offsets[2] = 10"));
    off[2] = 42;
    off[3] = 60;
    REQUIRE_THROWS_WITH(compress(cpu, ea(), bad, c.view()),
                        Contains("observation.query_offsets[3] = 60 must equal the packed queries' total q_len = 63"));
    off[3] = 63;
    std::vector<std::int64_t> pos = starts;
    bad.sequence_positions = pos.data();
    pos[1] = -1;
    REQUIRE_THROWS_WITH(compress(cpu, ea(), bad, c.view()), Contains("observation.sequence_positions[1] must be non-negative, got -1"));
    pos[1] = (std::int64_t{1} << 31) - 10;
    REQUIRE_THROWS_WITH(compress(cpu, ea(), bad, c.view()), Contains("passes 2^31"));
  }
  SECTION("a sequence with no more queries than n_sink") {
    std::vector<std::int32_t> off{0, 13, 61, 63};
    Observation<float> bad = ragged;
    bad.query_offsets = off.data();
    REQUIRE_THROWS_WITH(compress(cpu, ea(), bad, c.view()),
                        Contains("observation.queries of sequence 2 hold 2 tokens, which must exceed n_sink = 2"));
  }
  SECTION("packed queries must be batch 1") {
    std::vector<float> q2(packed.size() * 2);
    Observation<float> bad = ragged;
    bad.queries = make_tensor4(q2.data(), {2, H * G, 63, d});
    REQUIRE_THROWS_WITH(compress(cpu, ea(), bad, c.view()), Contains("pack every sequence into batch 1, got batch = 2"));
  }
  SECTION("presses without a per-sequence form say so") {
    REQUIRE_THROWS_WITH(compress(cpu, ChunkPress{ea(0.5), 8}, ragged, c.view()), Contains("ChunkPress does not take a ragged batch"));
    DecodingPress<ExpectedAttentionPress> dec(ea(0.5), DecodingOptions{}, {1, 3, H * G, d});
    Observation<float> step = ragged;
    step.position = 5;
    REQUIRE_THROWS_WITH(dec.step(cpu, step, c.view()), Contains("DecodingPress (one query per sequence and step) does not take a ragged batch"));
  }
}

}  // namespace KVC_TEST_TU
