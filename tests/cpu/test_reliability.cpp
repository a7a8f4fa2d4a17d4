// The bad-input catalogue of docs/reliability.md, for the cases no other test covers: every
// factory and entry point rejects each with a kvcompress::Error naming the argument and the value,
// or has the documented outcome that is checked here.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <string>
#include <thread>
#include <limits>
#include <vector>

#include "kvcompress/kvcompress.hpp"
#include "test_util.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using namespace kvcompress;
using Catch::Contains;

namespace {

constexpr std::int64_t kMax = std::numeric_limits<std::int64_t>::max();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr std::array<Axis, 4> kHF{Axis::kBatch, Axis::kHead, Axis::kSeq, Axis::kDim};

RotaryEmbedding rope_of(int head_dim) {
  RopeConfig c;
  c.head_dim = head_dim;
  return RotaryEmbedding(c);
}

/// A [1, 2, 8, 4] cache with Expected Attention's inputs (8 query heads, 8 queries).
struct Setup {
  kvc_test::OwnedCache<float> c{1, 2, 8, 4};
  RotaryEmbedding rope = rope_of(4);
  std::vector<float> q = kvc_test::random_vector(8 * 8 * 4, 3);
  std::vector<float> mean = kvc_test::random_vector(8 * 4, 4, 0.3f), cov = std::vector<float>(8 * 4 * 4, 0.0f);
  Observation<float> obs;

  Setup() {
    c.fill_random(2);
    obs.queries = make_tensor4(q.data(), {1, 8, 8, 4});
    obs.rope = &rope;
    obs.stats = QueryStats{mean.data(), cov.data(), 8};
  }
};

ExpectedAttentionPress ea(double r = 0.5, std::int64_t n_sink = 2) {
  ExpectedAttentionPress p;
  p.compression_ratio = r;
  p.n_sink = n_sink;
  return p;
}

}  // namespace

// ---- Factories ------------------------------------------------------------------------------------

TEST_CASE("reliability: extents, orders and strides the factories reject", "[reliability][errors]") {
  CacheExtents const e{1, 2, 8, 4};
  SECTION("a negative extent") {
    REQUIRE_THROWS_WITH(make_strided_layout(CacheExtents{-3, 2, 8, 4}, kHF), Contains("extents.batch must be positive, got -3"));
  }
  SECTION("a capacity above int32 (lengths and slot indices are int32)") {
    REQUIRE_THROWS_WITH(make_strided_layout(CacheExtents{1, 1, std::int64_t{1} << 32, 1}, kHF),
                        Contains("capacity") && Contains("4294967296"));
  }
  SECTION("batch·kv_heads·capacity·head_dim overflowing 64 bits at the last axis") {
    REQUIRE_THROWS_WITH(make_strided_layout(CacheExtents{std::int64_t{1} << 31, 2, 1 << 30, 4}, kHF),
                        Contains("overflows 64 bits") && Contains("head_dim = 4"));
  }
  SECTION("a non-positive innermost stride") {
    REQUIRE_THROWS_WITH(make_strided_layout(e, kHF, 0), Contains("innermost_stride must be positive, got 0"));
  }
  SECTION("an axis value outside the enumeration") {
    REQUIRE_THROWS_WITH(make_strided_layout(e, {Axis::kBatch, Axis::kHead, Axis::kSeq, static_cast<Axis>(7)}),
                        Contains("axis 7 is repeated or invalid"));
  }
  SECTION("an innermost stride whose dense span overflows 64 bits") {
    REQUIRE_THROWS_WITH(make_strided_layout(e, kHF, kMax / 2), Contains("order: span overflows 64 bits at axis head_dim"));
  }
  SECTION("a zero stride on an axis of extent 1 (explicit strides must all be positive)") {
    REQUIRE_THROWS_WITH(make_strided_layout(e, {0, 32, 4, 1}), Contains("strides[batch] must be positive, got 0"));
  }
}

TEST_CASE("reliability: hand-built layouts given to make_cache_view get the factory's checks", "[reliability][errors]") {
  CacheExtents const e{1, 2, 8, 4};
  std::vector<float> k(64), v(64);
  std::vector<std::int32_t> len{8, 8};
  SECTION("a negative key stride (would address memory before the buffer)") {
    StridedLayout const bad{{64, 32, -4, 1}};
    REQUIRE_THROWS_WITH(make_cache_view(k.data(), v.data(), e, bad, len.data()),
                        Contains("key_layout.strides[seq] must be positive, got -4"));
  }
  SECTION("overlapping value strides (two entries in one element)") {
    StridedLayout const good = make_strided_layout(e, kHF);
    StridedLayout const overlapping{{64, 32, 2, 1}};
    REQUIRE_THROWS_WITH(make_cache_view(k.data(), v.data(), e, good, overlapping, len.data()),
                        Contains("value_layout.strides[seq] = 2") && Contains("overlaps"));
  }
  SECTION("a stride whose offsets overflow 64 bits") {
    len.assign(8, 8);
    StridedLayout const huge{{kMax / 2, 32, 4, 1}};
    REQUIRE_THROWS_WITH(make_cache_view(k.data(), v.data(), CacheExtents{4, 2, 8, 4}, huge, len.data()),
                        Contains("key_layout.strides") && Contains("overflow"));
  }
  SECTION("K and V interleaved in one buffer (innermost stride 2) is a valid view") {
    std::vector<float> kv(128);
    auto const l = make_strided_layout(e, kHF, 2);
    REQUIRE_NOTHROW(make_cache_view(kv.data(), kv.data() + 1, e, l, len.data()));
  }
}

TEST_CASE("reliability: make_tensor4 rejects negative strides and offsets that overflow", "[reliability][errors]") {
  std::vector<float> x(24);
  SECTION("a negative stride") {
    REQUIRE_THROWS_WITH(make_tensor4(x.data(), {1, 2, 3, 4}, {24, 12, -4, 1}),
                        Contains("tensor strides[2] must be non-negative, got -4"));
  }
  SECTION("an element count that overflows 64 bits") {
    REQUIRE_THROWS_WITH(make_tensor4(x.data(), {kMax, 2, 1, 1}), Contains("element count overflows 64 bits at shape[1] = 2"));
  }
  SECTION("strides whose largest offset overflows 64 bits") {
    REQUIRE_THROWS_WITH(make_tensor4(x.data(), {1, 1, 3, 2}, {1, 1, kMax / 2 + 1, 1}),
                        Contains("offsets overflow 64 bits at strides[2] = " + std::to_string(kMax / 2 + 1)));
  }
  SECTION("a zero stride broadcasts (documented: one query head shared by several)") {
    auto const t = make_tensor4(x.data(), {1, 4, 3, 2}, {0, 0, 2, 1});
    REQUIRE(&t(0, 3, 2, 1) == &x[5]);
  }
}

// ---- Workspace ----------------------------------------------------------------------------------

TEST_CASE("reliability: the workspace rejects missing memory and sizes that would wrap", "[reliability][errors]") {
  SECTION("no memory given") {
    Workspace ws;
    REQUIRE_THROWS_WITH(ws.take<float>(4), Contains("no memory given, 4 objects of 4 bytes needed"));
    REQUIRE(ws.take<float>(0) == nullptr);  // an empty request needs no memory
  }
  SECTION("a request so large that its byte count wraps around") {
    std::vector<std::byte> buf(256);
    Workspace ws(buf.data(), buf.size());
    std::size_t const wrapping = std::numeric_limits<std::size_t>::max() / 4 + 2;  // × 4 bytes wraps to 4
    REQUIRE_THROWS_WITH(ws.take<float>(wrapping), Contains("workspace too small: 256 bytes given") &&
                                                      Contains(std::to_string(wrapping) + " objects"));
  }
  SECTION("compress with too small a workspace moves nothing") {
    Setup s;
    std::vector<std::byte> buf(compress_workspace_bytes(cpu, ea(), s.obs, s.c.view()) / 2);
    auto const before = s.c.k;
    REQUIRE_THROWS_WITH(compress(cpu, ea(), s.obs, s.c.view(), Workspace(buf.data(), buf.size())),
                        Contains("workspace too small"));
    REQUIRE(s.c.lengths == std::vector<std::int32_t>{8, 8});
    REQUIRE(s.c.k == before);
  }
}

// ---- Lengths, scores, ratios -------------------------------------------------------------------

TEST_CASE("reliability: lengths the engine corrupted after building the view are caught at every entry point",
          "[reliability][errors]") {
  Setup s;
  auto const view = s.c.view();
  s.c.lengths[1] = 9;  // the engine's own bookkeeping went wrong after make_cache_view
  REQUIRE_THROWS_WITH(compress(cpu, KnormPress{0.5}, s.obs, view), Contains("lengths[1] = 9 is outside [0, capacity = 8]"));
  REQUIRE_THROWS_WITH(score(cpu, KnormPress{0.5}, s.obs, view), Contains("lengths[1] = 9"));
  std::vector<float> scores(16);
  std::vector<std::byte> buf(1024);
  Workspace ws(buf.data(), buf.size());
  REQUIRE_THROWS_WITH(keep_topk(cpu, view, scores.data(), [](std::int64_t n) { return n / 2; }, ws),
                      Contains("lengths[1] = 9"));
  s.c.lengths[1] = -2;
  REQUIRE_THROWS_WITH(compress(cpu, KnormPress{0.5}, s.obs, view), Contains("lengths[1] = -2"));
}

TEST_CASE("reliability: null score buffers are rejected", "[reliability][errors]") {
  Setup s;
  std::vector<std::byte> buf(1024);
  Workspace ws(buf.data(), buf.size());
  REQUIRE_THROWS_WITH(score(cpu, KnormPress{0.5}, s.obs, s.c.view(), nullptr, ws), Contains("scores must not be null"));
  REQUIRE_THROWS_WITH(keep_topk(cpu, s.c.view(), nullptr, [](std::int64_t n) { return n; }, ws),
                      Contains("scores must not be null"));
}

TEST_CASE("reliability: NaN and infinite ratios are rejected, kept_count is total", "[reliability][errors]") {
  Setup s;
  REQUIRE_THROWS_WITH(compress(cpu, KnormPress{std::nan("")}, s.obs, s.c.view()),
                      Contains("compression_ratio must be in [0, 1), got nan"));
  REQUIRE_THROWS_WITH(compress(cpu, KnormPress{INFINITY}, s.obs, s.c.view()), Contains("got inf"));
  REQUIRE(s.c.lengths == std::vector<std::int32_t>{8, 8});
  // Documented outcome of kept_count outside [0, 1): nothing evicted for a negative or NaN ratio,
  // everything for r ≥ 1; never more than n, even where n does not fit a double exactly.
  CHECK(kept_count(10, -0.5) == 10);
  CHECK(kept_count(10, std::nan("")) == 10);
  CHECK(kept_count(10, 1.5) == 0);
  CHECK(kept_count(kMax - 1, 0.0) == kMax - 1);
  CHECK(kept_count((std::int64_t{1} << 60) - 1, 0.0) == (std::int64_t{1} << 60) - 1);  // the double rounds up
}

TEST_CASE("reliability: keep_topk ranks NaN scores last and clamps the budget to 0 to n", "[reliability]") {
  CacheExtents const e{1, 1, 6, 1};
  std::vector<float> k{0, 1, 2, 3, 4, 5}, v = k;
  std::vector<std::int32_t> len{6};
  auto const view = make_cache_view(k.data(), v.data(), e, make_strided_layout(e, kHF), len.data());
  std::vector<std::byte> buf(1024);
  auto const run = [&](std::vector<float> scores, std::int64_t budget) {
    std::iota(k.begin(), k.end(), 0.0f);
    len[0] = 6;
    Workspace ws(buf.data(), buf.size());
    keep_topk(cpu, view, scores.data(), [&](std::int64_t) { return budget; }, ws);
    return std::vector<float>(k.begin(), k.begin() + len[0]);
  };
  std::vector<float> const s{3, kNaN, 1, 5, kNaN, 2};
  CHECK(run(s, 3) == std::vector<float>{0, 3, 5});
  CHECK(run(s, 5) == std::vector<float>{0, 1, 2, 3, 5});  // one NaN kept: the lower index
  CHECK(run(s, -4).empty());
  CHECK(run(s, kMax).size() == 6);
  CHECK(run({kInf, -kInf, 0, kInf, -kInf, 0}, 2) == std::vector<float>{0, 3});
}

// ---- Empty caches, n ≤ n_sink ---------------------------------------------------------------------

TEST_CASE("reliability: empty rows are left empty by position-free presses and rejected by those that need entries",
          "[reliability][errors]") {
  Setup s;
  s.c.lengths = {0, 0};
  auto const view = s.c.view();
  SECTION("no-op presses") {
    std::vector<float> const filters(2 * 4, 1.0f);
    compress(cpu, KnormPress{0.5}, s.obs, view);
    compress(cpu, KeyDiffPress{0.5}, s.obs, view);
    RandomPress random;
    random.compression_ratio = 0.5;
    compress(cpu, random, s.obs, view);
    compress(cpu, QFilterPress{0.5, filters.data(), 1, 2, 4}, s.obs, view);
    compress(cpu, LagKVPress{0.5, 4, 2}, s.obs, view);
    REQUIRE(s.c.lengths == std::vector<std::int32_t>{0, 0});
  }
  SECTION("presses that need more entries than n_sink or the window name n = 0") {
    REQUIRE_THROWS_WITH(compress(cpu, ea(), s.obs, view), Contains("n = 0") && Contains("n_sink = 2"));
    REQUIRE_THROWS_WITH(compress(cpu, StreamingLLMPress{0.5, 0}, s.obs, view), Contains("n = 0") && Contains("n_sink = 0"));
    REQUIRE_THROWS_WITH(compress(cpu, SnapKVPress{0.5, 2, 1}, s.obs, view), Contains("n = 0") && Contains("window_size = 2"));
  }
}

TEST_CASE("reliability: LagKV with n < n_sink takes the short-input path (documented): sinks only score 1",
          "[reliability]") {
  Setup s;
  s.c.lengths = {3, 8};
  auto const got = score(cpu, LagKVPress{0.5, 4, 2}, s.obs, s.c.view());
  CHECK(std::vector<float>(got.begin(), got.begin() + 3) == std::vector<float>{1, 1, 1});
}

// ---- Expected Attention's parameters and observation fields ------------------------------------

TEST_CASE("reliability: Expected Attention parameters and observation fields", "[reliability][errors]") {
  Setup s;
  auto const run = [&](auto const& press) { compress(cpu, press, s.obs, s.c.view()); };
  SECTION("negative n_sink") { REQUIRE_THROWS_WITH(run(ea(0.5, -1)), Contains("n_sink must be non-negative, got -1")); }
  SECTION("n_future_positions not positive") {
    auto p = ea();
    p.n_future_positions = 0;
    REQUIRE_THROWS_WITH(run(p), Contains("n_future_positions must be in [1, 2^31) (positions are int32), got 0"));
  }
  SECTION("non-finite epsilon") {
    auto p = ea();
    p.epsilon = kInf;
    REQUIRE_THROWS_WITH(run(p), Contains("epsilon must be finite, got inf"));
  }
  SECTION("negative position") {
    s.obs.position = -5;
    REQUIRE_THROWS_WITH(run(ea()), Contains("observation.position must be non-negative, got -5"));
  }
  SECTION("a position whose future window overflows 64 bits") {
    s.obs.position = kMax - 3;
    REQUIRE_THROWS_WITH(run(ea()), Contains("observation.position = " + std::to_string(kMax - 3)) &&
                                       Contains("overflows 64 bits"));
  }
  SECTION("rope of another head_dim") {
    auto const other = rope_of(8);
    s.obs.rope = &other;
    REQUIRE_THROWS_WITH(run(ea()), Contains("observation.rope head_dim = 8") && Contains("cache head_dim = 4"));
  }
  SECTION("queries of another batch") {
    std::vector<float> q2(2 * 8 * 8 * 4);
    s.obs.queries = make_tensor4(q2.data(), {2, 8, 8, 4});
    REQUIRE_THROWS_WITH(run(ea()), Contains("observation.queries batch = 2") && Contains("cache batch = 1"));
  }
  SECTION("no more queries than n_sink") {
    s.obs.queries = make_tensor4(s.q.data(), {1, 8, 2, 4});
    REQUIRE_THROWS_WITH(run(ea()), Contains("q_len = 2 must exceed n_sink = 2"));
  }
  SECTION("stats press: covariance missing") {
    ExpectedAttentionStatsPress p;
    p.compression_ratio = 0.5;
    p.n_sink = 2;
    s.obs.stats.covariance = nullptr;
    REQUIRE_THROWS_WITH(run(p), Contains("observation.stats.covariance must be given"));
  }
  SECTION("stats press: q_heads not a multiple of kv_heads") {
    ExpectedAttentionStatsPress p;
    p.compression_ratio = 0.5;
    p.n_sink = 2;
    s.obs.stats.q_heads = 3;
    REQUIRE_THROWS_WITH(run(p), Contains("query heads = 3") && Contains("kv_heads = 2"));
  }
  SECTION("stats press: non-finite covariance") {
    ExpectedAttentionStatsPress p;
    p.compression_ratio = 0.5;
    p.n_sink = 2;
    s.cov[17] = -kInf;
    REQUIRE_THROWS_WITH(run(p), Contains("observation.stats.covariance[17] = -inf"));
  }
  SECTION("stats press: no chunk length (neither chunk_length nor queries)") {
    ExpectedAttentionStatsPress p;
    p.compression_ratio = 0.5;
    p.n_sink = 2;
    s.obs.queries = {};
    REQUIRE_THROWS_WITH(run(p), Contains("chunk_length (or queries) must give the chunk length, got 0"));
  }
}

// ---- Window presses, PyramidKV, ObservedAttention ------------------------------------------------

TEST_CASE("reliability: window and attention presses' parameters", "[reliability][errors]") {
  Setup s;
  std::vector<float> wq = kvc_test::random_vector(8 * 2 * 4, 5);
  s.obs.window_queries = make_tensor4(wq.data(), {1, 8, 2, 4});
  auto const run = [&](auto const& press) { compress(cpu, press, s.obs, s.c.view()); };
  SECTION("window_size not positive") { REQUIRE_THROWS_WITH(run(SnapKVPress{0.5, 0, 1}), Contains("window_size must be positive, got 0")); }
  SECTION("negative kernel_size") { REQUIRE_THROWS_WITH(run(SnapKVPress{0.5, 2, -3}), Contains("kernel_size must be odd and positive, got -3")); }
  SECTION("window queries of another length than window_size") {
    REQUIRE_THROWS_WITH(run(SnapKVPress{0.5, 3, 1}), Contains("holds 2 tokens, window_size = 3"));
  }
  SECTION("PyramidKV with layer_idx outside [0, num_layers)") {
    s.obs.layer_idx = 5;
    s.obs.num_layers = 4;
    REQUIRE_THROWS_WITH(run(PyramidKVPress{0.5, 2, 1, 20.0}), Contains("layer_idx = 5") && Contains("num_layers = 4"));
  }
  SECTION("PyramidKV's budget saturates for extreme parameters instead of overflowing (documented)") {
    Observation<float> obs;
    obs.num_layers = 2;
    CHECK(PyramidKVPress{0.5, kMax, 1, 20.0}.kept_count(100, obs) == 50);  // falls back to n(1 − r)
    CHECK(PyramidKVPress{0.5, -kMax, 1, 20.0}.kept_count(100, obs) == 0);  // the window swamps n in double
  }
  SECTION("ObservedAttention with an attention that is not n × n") {
    std::vector<float> a(8 * 5 * 5, 0.1f);
    s.obs.attention = make_tensor4(a.data(), {1, 8, 5, 5});
    REQUIRE_THROWS_WITH(run(ObservedAttentionPress{0.5}), Contains("observation.attention is 5 × 5 but row 0 holds n = 8"));
  }
  SECTION("window attention from probabilities with q_len not above window_size") {
    std::vector<float> a(8 * 2 * 8, 0.1f);
    s.obs.window_queries = {};
    s.obs.attention = make_tensor4(a.data(), {1, 8, 2, 8});
    REQUIRE_THROWS_WITH(run(SnapKVPress{0.5, 2, 1}), Contains("observation.attention q_len = 2 must exceed window_size = 2"));
  }
}

// ---- Threads ---------------------------------------------------------------------------------------

TEST_CASE("reliability: an error raised on a worker thread reaches the caller, nothing moved", "[reliability][threads]") {
  kvc_test::OwnedCache<float> c(2, 4, 16, 4);
  c.fill_random(6);
  c.k[static_cast<std::size_t>(((1 * 4 + 3) * 16 + 9) * 4 + 2)] = kNaN;  // the last row: the last thread's block
  auto const before = c.k;  // compared bytewise: it holds a NaN
  REQUIRE_THROWS_WITH(compress(CpuDevice{4}, KnormPress{0.5}, Observation<float>{}, c.view()),
                      Contains("keys[1, 3, 9, 2] = nan is not finite"));
  REQUIRE(c.lengths == std::vector<std::int32_t>(8, 16));
  REQUIRE(std::memcmp(c.k.data(), before.data(), before.size() * sizeof(float)) == 0);
}

TEST_CASE("reliability: a negative thread count is an error, 0 means every hardware thread", "[reliability]") {
  REQUIRE_THROWS_WITH(detail::thread_count(CpuDevice{-3}, 1000), Contains("CpuDevice.num_threads must be >= 0"));
  REQUIRE_THROWS_WITH(detail::thread_count(CpuDevice{-3}, 1000), Contains("got -3"));
  kvc_test::OwnedCache<float> c(1, 2, 16, 4);
  c.fill_random(7);
  auto const before = c.k;
  REQUIRE_THROWS_WITH(compress(CpuDevice{-1}, KnormPress{0.5}, Observation<float>{}, c.view()), Contains("got -1"));
  REQUIRE(c.k == before);
  REQUIRE(c.lengths == std::vector<std::int32_t>(2, 16));
  CHECK(detail::thread_count(CpuDevice{0}, 1000) == std::max(1, static_cast<int>(std::thread::hardware_concurrency())));
  CHECK(detail::thread_count(CpuDevice{8}, 3) == 3);  // never more threads than rows
  CHECK(detail::thread_count(CpuDevice{8}, 0) == 1);
}

// ---- RoPE ------------------------------------------------------------------------------------------

TEST_CASE("reliability: non-finite RoPE parameters and averaged-rotation ranges", "[reliability][errors]") {
  auto config = [] {
    RopeConfig c;
    c.head_dim = 8;
    return c;
  };
  SECTION("NaN theta") {
    auto c = config();
    c.theta = std::nan("");
    REQUIRE_THROWS_WITH(RotaryEmbedding(c), Contains("theta must be positive and finite, got nan"));
  }
  SECTION("infinite theta") {
    auto c = config();
    c.theta = INFINITY;
    REQUIRE_THROWS_WITH(RotaryEmbedding(c), Contains("got inf"));
  }
  SECTION("NaN factor") {
    auto c = config();
    c.type = RopeType::kLinear;
    c.factor = std::nan("");
    REQUIRE_THROWS_WITH(RotaryEmbedding(c), Contains("factor must be finite, got nan"));
  }
  SECTION("yarn: non-positive beta_fast") {
    auto c = config();
    c.type = RopeType::kYarn;
    c.original_max_position_embeddings = 64;
    c.beta_fast = 0.0;
    REQUIRE_THROWS_WITH(RotaryEmbedding(c), Contains("beta_fast = 0"));
  }
  SECTION("yarn: NaN mscale") {
    auto c = config();
    c.type = RopeType::kYarn;
    c.original_max_position_embeddings = 64;
    c.mscale = std::nan("");
    REQUIRE_THROWS_WITH(RotaryEmbedding(c), Contains("mscale = nan"));
  }
  SECTION("averaged rotation from a negative start") {
    auto const rope = rope_of(8);
    std::vector<float> cs(8), sn(8);
    REQUIRE_THROWS_WITH(rope.averaged_rotation(-1, 4, cs.data(), sn.data()), Contains("start must be non-negative, got -1"));
  }
  SECTION("averaged rotation whose end passes the int32 positions") {
    auto const rope = rope_of(8);
    std::vector<float> cs(8), sn(8);
    REQUIRE_THROWS_WITH(rope.averaged_rotation(kMax - 1, 4, cs.data(), sn.data()),
                        Contains("must stay below 2^31") && Contains("count = 4"));
  }
}

}  // namespace KVC_TEST_TU
