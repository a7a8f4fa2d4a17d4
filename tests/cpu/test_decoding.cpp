// Decoding presses on a simulated generation: the engine appends one token per step to every
// (batch, kv head) row and calls `step`; the press compresses every `compression_interval` steps to
// `target_size` per row. Checked: the kvpress invariant (every row within [target, target + interval
// − 1] between compressions) over 1,000 steps, the kept set at each compression (Knorm: the target
// smallest key norms, recomputed in double), what the inner press is handed (the buffered queries, the
// true absolute positions, window queries rotated at those positions, recomputed independently),
// kvpress's CompressionRatioDecoding arithmetic (position 107 → 54), PrefillDecoding, bad input.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <set>
#include <vector>

#include "kvcompress/kvcompress.hpp"
#include "test_util.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using namespace kvcompress;
using Catch::Matchers::Contains;

namespace {

constexpr std::int64_t kB = 2, kH = 2, kQ = 4, kD = 16;

RotaryEmbedding make_rope() {
  RopeConfig c;
  c.head_dim = static_cast<int>(kD);
  c.theta = 10000.0;
  c.max_position_embeddings = 1 << 20;
  return RotaryEmbedding(c);
}

/// An engine in miniature: a cache per layer that grows by one token per step.
struct Engine {
  std::int64_t cap;
  kvc_test::OwnedCache<float> cache;
  std::vector<std::int32_t> positions;
  std::vector<float> queries;  // the current step's pre-RoPE queries [kB, kQ, q_len, kD]
  std::int64_t next_position;
  std::mt19937 gen;
  RotaryEmbedding rope = make_rope();

  /// Rows start with `initial` entries at positions 0, 1, … (as after a prefill compressed per head).
  Engine(std::vector<std::int32_t> const& initial, std::int64_t capacity, std::uint32_t seed)
      : cap(capacity), cache(kB, kH, capacity, kD), positions(static_cast<std::size_t>(kB * kH * capacity)), gen(seed) {
    cache.fill_random(seed);
    cache.lengths = initial;
    for (std::size_t i = 0; i < positions.size(); ++i) positions[i] = static_cast<std::int32_t>(static_cast<std::int64_t>(i) % cap);
    next_position = *std::max_element(initial.begin(), initial.end());
  }
  KVCacheView<float> view() {
    return make_cache_view(cache.k.data(), cache.v.data(), cache.extents, cache.layout, cache.lengths.data(),
                           positions.data());
  }
  /// Appends q_len tokens to every row and returns the forward pass's observation for `layer`.
  Observation<float> forward(std::int64_t q_len = 1, int layer = 0, int num_layers = 1) {
    std::normal_distribution<float> dist(0.0f, 1.0f);
    for (std::int64_t r = 0; r < kB * kH; ++r)
      for (std::int64_t t = 0; t < q_len; ++t) {
        std::int32_t const slot = cache.lengths[static_cast<std::size_t>(r)]++;
        REQUIRE(slot < cap);
        for (std::int64_t c = 0; c < kD; ++c) {
          cache.k[static_cast<std::size_t>((r * cap + slot) * kD + c)] = dist(gen);
          cache.v[static_cast<std::size_t>((r * cap + slot) * kD + c)] = dist(gen);
        }
        positions[static_cast<std::size_t>(r * cap + slot)] = static_cast<std::int32_t>(next_position + t);
      }
    queries.resize(static_cast<std::size_t>(kB * kQ * q_len * kD));
    for (auto& x : queries) x = dist(gen);
    Observation<float> obs;
    obs.layer_idx = layer;
    obs.num_layers = num_layers;
    obs.queries = make_tensor4(queries.data(), {kB, kQ, q_len, kD});
    obs.position = next_position;
    obs.rope = &rope;
    next_position += q_len;
    return obs;
  }
  [[nodiscard]] std::set<std::int32_t> row_positions(std::int64_t r) const {
    auto const first = positions.begin() + r * cap;
    return {first, first + cache.lengths[static_cast<std::size_t>(r)]};
  }
  /// Positions of the `keep` entries of row r with the smallest key norm (double precision).
  [[nodiscard]] std::set<std::int32_t> smallest_norms(std::int64_t r, std::int64_t keep) const {
    std::int64_t const n = cache.lengths[static_cast<std::size_t>(r)];
    std::vector<std::pair<double, std::int32_t>> e;
    for (std::int64_t s = 0; s < n; ++s) {
      double ss = 0.0;
      for (std::int64_t c = 0; c < kD; ++c) {
        double const x = cache.k[static_cast<std::size_t>((r * cap + s) * kD + c)];
        ss += x * x;
      }
      e.emplace_back(std::sqrt(ss), positions[static_cast<std::size_t>(r * cap + s)]);
    }
    std::sort(e.begin(), e.end());
    std::set<std::int32_t> out;
    for (std::int64_t i = 0; i < std::min(keep, n); ++i) out.insert(e[static_cast<std::size_t>(i)].second);
    return out;
  }
};

QueryBufferShape shape(int layers = 1) { return {layers, kB, kQ, kD}; }

/// Runs `steps` decode steps and checks the kvpress invariant after each: before the first
/// compression a row grows by one per step; from then on it stays in [target, target + interval − 1].
template <class Press>
void check_bounds(Press& press, Engine& eng, std::int64_t steps, std::int64_t target, std::int64_t interval) {
  std::vector<std::int32_t> const initial = eng.cache.lengths;
  for (std::int64_t s = 1; s <= steps; ++s) {
    auto const obs = eng.forward();
    bool const compressed = press.step(cpu, obs, eng.view());
    CHECK(compressed == (s % interval == 0));
    for (std::int64_t r = 0; r < kB * kH; ++r) {
      std::int32_t const n = eng.cache.lengths[static_cast<std::size_t>(r)];
      if (s < interval) {
        CHECK(n == initial[static_cast<std::size_t>(r)] + s);
      } else {
        INFO("step " << s << ", row " << r);
        CHECK(n >= target);
        CHECK(n <= target + interval - 1);
      }
    }
  }
}

/// A scorer that records what it is handed; it keeps the most recent entries.
struct Handed {
  std::int64_t position, chunk, window_rows;
  double ratio;
  std::vector<float> queries, window;
};
struct RecordingPress {
  double compression_ratio = 0.0;
  std::int64_t window_size = 3;
  std::vector<Handed>* log = nullptr;

  template <class T, class L>
  std::size_t workspace_bytes(CpuDevice const&, Observation<T> const&, KVCacheView<T, L> const&) const {
    return 0;
  }
  template <class T, class L>
  void score(CpuDevice const&, Observation<T> const& obs, KVCacheView<T, L> const& cache, float* scores,
             Workspace&) const {
    Handed h{obs.position, obs.chunk_tokens(), obs.window_queries.shape[2], compression_ratio, {}, {}};
    auto const copy = [](Tensor4<T> const& t, std::vector<float>& out) {
      for (std::int64_t b = 0; b < t.shape[0]; ++b)
        for (std::int64_t j = 0; j < t.shape[1]; ++j)
          for (std::int64_t i = 0; i < t.shape[2]; ++i)
            for (std::int64_t c = 0; c < t.shape[3]; ++c) out.push_back(to_float(t(b, j, i, c)));
    };
    copy(obs.queries, h.queries);
    copy(obs.window_queries, h.window);
    log->push_back(h);
    for (std::int64_t r = 0; r < cache.extents.batch * cache.extents.kv_heads; ++r)
      for (std::int32_t s = 0; s < cache.lengths[r]; ++s) scores[r * cache.extents.capacity + s] = static_cast<float>(s);
  }
};

/// HF's rotate_half RoPE at position p in double, from float32 inverse frequencies and a float32
/// angle, as HF computes them. \param x [kD]
std::vector<double> rope_at(float const* x, std::int64_t p) {
  std::int64_t const half = kD / 2;
  std::vector<double> y(static_cast<std::size_t>(kD));
  for (std::int64_t i = 0; i < half; ++i) {
    auto const inv = static_cast<float>(1.0 / std::pow(10000.0, static_cast<double>(2 * i) / static_cast<double>(kD)));
    double const a = static_cast<double>(inv * static_cast<float>(p)), c = std::cos(a), s = std::sin(a);
    y[static_cast<std::size_t>(i)] = x[i] * c - x[i + half] * s;
    y[static_cast<std::size_t>(i + half)] = x[i + half] * c + x[i] * s;
  }
  return y;
}

}  // namespace

TEST_CASE("decoding keeps every head between target and target + interval - 1 over 1,000 steps", "[decoding]") {
  std::int64_t const target = 64, interval = 16, steps = 1000;
  std::vector<std::int32_t> const initial{100, 70, 67, 90};  // ragged, as after a per-head prefill budget
  std::int64_t const cap = 100 + interval;
  DecodingOptions const opt{interval, target, 8};

  SECTION("Knorm: each compression keeps the target smallest key norms of the row") {
    Engine eng(initial, cap, 1);
    DecodingPress<KnormPress> press(KnormPress{}, opt, shape());
    for (std::int64_t s = 1; s <= steps; ++s) {
      auto const obs = eng.forward();
      std::vector<std::set<std::int32_t>> expected;
      for (std::int64_t r = 0; r < kB * kH; ++r) expected.push_back(eng.smallest_norms(r, target));
      bool const compressed = press.step(cpu, obs, eng.view());
      REQUIRE(compressed == (s % interval == 0));
      for (std::int64_t r = 0; r < kB * kH; ++r) {
        std::int32_t const n = eng.cache.lengths[static_cast<std::size_t>(r)];
        if (s >= interval) REQUIRE((n >= target && n <= target + interval - 1));
        if (compressed) REQUIRE(eng.row_positions(r) == expected[static_cast<std::size_t>(r)]);
      }
      CHECK(press.steps(0) == s % interval);
    }
  }
  SECTION("Expected Attention, from the buffered queries") {
    Engine eng(initial, cap, 2);
    DecodingPress<ExpectedAttentionPress> press(ExpectedAttentionPress{}, opt, shape());
    check_bounds(press, eng, steps, target, interval);
  }
  SECTION("SnapKV, window queries rebuilt from the buffer") {
    Engine eng(initial, cap, 3);
    DecodingPress<SnapKVPress> press(SnapKVPress{0.0, 4, 3}, opt, shape());
    check_bounds(press, eng, steps, target, interval);
  }
  SECTION("TOVA, the last buffered query") {
    std::vector<std::int32_t> const equal(4, 80);  // TOVA needs equal lengths across the heads of a batch element
    Engine eng(equal, 80 + interval, 4);
    DecodingPress<TOVAPress> press(TOVAPress{}, opt, shape());
    check_bounds(press, eng, steps, target, interval);
  }
  SECTION("StreamingLLM: the ratio handed over keeps exactly the target") {
    Engine eng(std::vector<std::int32_t>(4, 90), cap, 5);
    DecodingPress<StreamingLLMPress> press(StreamingLLMPress{0.0, 4}, opt, shape());
    check_bounds(press, eng, steps, target, interval);
    for (std::int64_t r = 0; r < kB * kH; ++r) {
      auto const kept = eng.row_positions(r);
      for (std::int32_t p = 0; p < 4; ++p) CHECK(kept.count(p) == 1);  // the sinks survive every compression
    }
  }
}

TEST_CASE("decoding hands the inner press the buffered queries at their true absolute positions", "[decoding]") {
  // 20 entries per row after the prefill; interval 8, query buffer 5: at step 8 (absolute position 27)
  // the press sees the queries of positions 22..27 (5 earlier steps and the current one).
  Engine eng(std::vector<std::int32_t>(4, 20), 64, 6);
  std::vector<Handed> log;
  DecodingPress<RecordingPress> press(RecordingPress{0.0, 3, &log}, DecodingOptions{8, 16, 5}, shape());
  std::vector<std::vector<float>> step_queries;
  for (int s = 1; s <= 8; ++s) {
    auto const obs = eng.forward();
    step_queries.push_back(eng.queries);
    CHECK(press.step(cpu, obs, eng.view()) == (s == 8));
  }
  REQUIRE(log.size() == 1);
  Handed const& h = log[0];
  CHECK(h.chunk == 6);
  CHECK(h.position + h.chunk == 28);  // the future starts after the newest token (kvpress: at the buffer length, 6)
  CHECK(h.position == 22);
  CHECK(static_cast<std::int64_t>(28 * (1.0 - h.ratio)) == 16);  // kvpress's ratio: 28 entries → 16
  // Queries: [kB, kQ, 6, kD], steps 3..8 in time order.
  for (std::int64_t b = 0; b < kB; ++b)
    for (std::int64_t j = 0; j < kQ; ++j)
      for (std::int64_t i = 0; i < 6; ++i)
        for (std::int64_t c = 0; c < kD; ++c)
          REQUIRE(h.queries[static_cast<std::size_t>(((b * kQ + j) * 6 + i) * kD + c)] ==
                  step_queries[static_cast<std::size_t>(2 + i)][static_cast<std::size_t>((b * kQ + j) * kD + c)]);
  // Window queries: the last 3 (positions 25, 26, 27), rotated at those positions.
  REQUIRE(h.window_rows == 3);
  double worst = 0.0;
  for (std::int64_t b = 0; b < kB; ++b)
    for (std::int64_t j = 0; j < kQ; ++j)
      for (std::int64_t i = 0; i < 3; ++i) {
        auto const& q = step_queries[static_cast<std::size_t>(5 + i)];
        auto const want = rope_at(&q[static_cast<std::size_t>((b * kQ + j) * kD)], 25 + i);
        for (std::int64_t c = 0; c < kD; ++c)
          worst = std::max(worst, std::abs(h.window[static_cast<std::size_t>(((b * kQ + j) * 3 + i) * kD + c)] -
                                           want[static_cast<std::size_t>(c)]));
      }
  CHECK(worst < 1e-5);
  // The buffer restarts after a compression.
  CHECK(press.buffered(0) == 0);
  press.step(cpu, eng.forward(), eng.view());
  CHECK(press.buffered(0) == 1);
}

TEST_CASE("Expected Attention under decoding scores with the future window after the newest token", "[decoding]") {
  // Rows of 40 after the prefill; the 10th decode step (position 49) compresses to 32 with the queries
  // of positions 40..49, so the future window is [50, 562). The same press called by hand on that
  // observation must keep the same entries.
  Engine eng(std::vector<std::int32_t>(4, 40), 64, 7);
  DecodingPress<ExpectedAttentionPress> press(ExpectedAttentionPress{}, DecodingOptions{10, 32, 9}, shape());
  std::vector<float> q(static_cast<std::size_t>(kB * kQ * 10 * kD));  // [kB, kQ, 10, kD]
  Engine twin = eng;
  for (std::int64_t s = 0; s < 10; ++s) {
    auto const obs = eng.forward();
    for (std::int64_t bj = 0; bj < kB * kQ; ++bj)
      std::copy_n(&eng.queries[static_cast<std::size_t>(bj * kD)], kD, &q[static_cast<std::size_t>((bj * 10 + s) * kD)]);
    twin = eng;  // the cache as the press finds it
    CHECK(press.step(cpu, obs, eng.view()) == (s == 9));
  }
  Observation<float> obs;
  obs.queries = make_tensor4(q.data(), {kB, kQ, 10, kD});
  obs.position = 40;
  obs.rope = &twin.rope;
  auto const scores = score(cpu, ExpectedAttentionPress{}, obs, twin.view());
  std::vector<std::byte> ws(compress_workspace_bytes(cpu, ExpectedAttentionPress{}, obs, twin.view()));
  Workspace w(ws.data(), ws.size());
  keep_topk(cpu, twin.view(), scores.data(), [](std::int64_t n) { return std::min<std::int64_t>(n, 32); }, w);
  for (std::int64_t r = 0; r < kB * kH; ++r) CHECK(eng.row_positions(r) == twin.row_positions(r));
  // kvpress's position for the same call (the buffer length: future [10, 522)) scores differently.
  obs.position = 0;
  CHECK(score(cpu, ExpectedAttentionPress{}, obs, twin.view()) != scores);
}

TEST_CASE("CompressionRatioDecoding arithmetic as in kvpress's tests (position 107 -> 54)", "[decoding]") {
  CompressionRatioDecodingOptions const opt{512, 0.5, 256};
  CHECK(opt.target(107 + 1) == 54);  // position_ids max 107 → 108 tokens seen
  double const r = find_target_compression_ratio(58, 54);
  CHECK(r == Approx(1.0 - 54.0 / 58.0));
  CHECK(static_cast<std::int64_t>(58 * (1.0 - r)) == 54);
  CHECK(find_target_compression_ratio(50, 54) == 0.0);
  CHECK(find_target_compression_ratio(54, 54) == 0.0);
  CHECK(opt.target(1) == 1);  // never below one entry

  SECTION("through step: a row of 58 at position 107 is cut to 54; a row of 50 is left alone") {
    Engine eng({57, 57, 49, 49}, 64, 8);
    eng.next_position = 107;
    CompressionRatioDecodingPress<KnormPress> press(KnormPress{}, CompressionRatioDecodingOptions{1, 0.5, 0}, shape());
    CHECK(press.step(cpu, eng.forward(), eng.view()));
    CHECK(eng.cache.lengths == std::vector<std::int32_t>{54, 54, 50, 50});
  }
  SECTION("nothing to do when every row is already at or below the target") {
    Engine eng({49, 49, 49, 49}, 64, 9);
    eng.next_position = 107;
    CompressionRatioDecodingPress<KnormPress> press(KnormPress{}, CompressionRatioDecodingOptions{1, 0.5, 0}, shape());
    CHECK_FALSE(press.step(cpu, eng.forward(), eng.view()));
    CHECK(eng.cache.lengths == std::vector<std::int32_t>(4, 50));
    CHECK(press.steps(0) == 0);  // the interval restarts all the same, as in kvpress
  }
}

TEST_CASE("CompressionRatioDecoding with ratio 0 never removes anything", "[decoding]") {
  Engine eng(std::vector<std::int32_t>(4, 30), 140, 10);
  CompressionRatioDecodingPress<KnormPress> press(KnormPress{}, CompressionRatioDecodingOptions{4, 0.0, 2}, shape());
  for (int s = 1; s <= 100; ++s) CHECK_FALSE(press.step(cpu, eng.forward(), eng.view()));
  CHECK(eng.cache.lengths == std::vector<std::int32_t>(4, 130));
}

TEST_CASE("CompressionRatioDecoding tracks a fraction of the tokens seen", "[decoding]") {
  Engine eng(std::vector<std::int32_t>(4, 60), 200, 11);
  CompressionRatioDecodingPress<KnormPress> press(KnormPress{}, CompressionRatioDecodingOptions{10, 0.25, 4}, shape());
  for (int s = 1; s <= 100; ++s) {
    auto const obs = eng.forward();
    bool const compressed = press.step(cpu, obs, eng.view());
    CHECK(compressed == (s % 10 == 0));
    if (compressed)
      for (auto n : eng.cache.lengths) CHECK(n == static_cast<std::int32_t>(static_cast<double>(obs.position + 1) * 0.75));
  }
}

TEST_CASE("a chunk of at least target_size tokens is compressed at once", "[decoding]") {
  Engine eng(std::vector<std::int32_t>(4, 10), 64, 12);
  DecodingPress<KnormPress> press(KnormPress{}, DecodingOptions{100, 20, 4}, shape());
  CHECK_FALSE(press.step(cpu, eng.forward(5), eng.view()));
  CHECK(press.step(cpu, eng.forward(20), eng.view()));
  CHECK(eng.cache.lengths == std::vector<std::int32_t>(4, 20));
}

TEST_CASE("PrefillDecoding: one press for the prefill, another for decoding", "[decoding]") {
  using Decoding = DecodingPress<KnormPress>;
  std::int64_t const n0 = 120;
  auto prefill_obs = [](Engine& eng) {
    // The prefill: rows start empty, one forward pass of n0 tokens at position 0.
    eng.cache.lengths.assign(4, 0);
    eng.next_position = 0;
    return eng.forward(n0);
  };

  SECTION("both presses: 120 → 48 by Knorm(0.6), then [48, 50] while decoding") {
    Engine eng(std::vector<std::int32_t>(4, 0), 128, 13);
    PrefillDecodingPress<KnormPress, Decoding> press(KnormPress{0.6}, Decoding(KnormPress{}, DecodingOptions{3, 48, 2}, shape()));
    CHECK(press.step(cpu, prefill_obs(eng), eng.view()));
    CHECK(eng.cache.lengths == std::vector<std::int32_t>(4, static_cast<std::int32_t>(kept_count(n0, 0.6))));
    for (int s = 1; s <= 15; ++s) {
      press.step(cpu, eng.forward(), eng.view());
      for (auto n : eng.cache.lengths) CHECK((n >= 48 && n <= 50));
    }
  }
  SECTION("decoding only: identical to the decoding press alone") {
    Engine a(std::vector<std::int32_t>(4, 0), 128, 14), b = a;
    PrefillDecodingPress<KnormPress, Decoding> combined(std::nullopt, Decoding(KnormPress{}, DecodingOptions{3, 52, 2}, shape()));
    Decoding alone(KnormPress{}, DecodingOptions{3, 52, 2}, shape());
    CHECK_FALSE(combined.step(cpu, prefill_obs(a), a.view()));
    CHECK_FALSE(alone.step(cpu, prefill_obs(b), b.view()));
    CHECK(a.cache.lengths == std::vector<std::int32_t>(4, 120));
    for (int s = 1; s <= 10; ++s) {
      CHECK(combined.step(cpu, a.forward(), a.view()) == alone.step(cpu, b.forward(), b.view()));
    }
    CHECK(a.cache.lengths == b.cache.lengths);
    CHECK(a.cache.k == b.cache.k);
    CHECK(a.positions == b.positions);
  }
  SECTION("prefill only: decoding steps leave the cache alone") {
    Engine eng(std::vector<std::int32_t>(4, 0), 128, 15);
    PrefillDecodingPress<KnormPress, Decoding> press(KnormPress{0.5}, std::nullopt);
    CHECK(press.step(cpu, prefill_obs(eng), eng.view()));
    for (int s = 1; s <= 5; ++s) CHECK_FALSE(press.step(cpu, eng.forward(), eng.view()));
    CHECK(eng.cache.lengths == std::vector<std::int32_t>(4, 65));
  }
}

TEST_CASE("a prefill starts a new sequence: steps and queries of that layer are forgotten", "[decoding]") {
  Engine eng(std::vector<std::int32_t>(4, 30), 64, 16);
  DecodingPress<KnormPress> press(KnormPress{}, DecodingOptions{10, 20, 4}, shape(2));
  for (int s = 0; s < 3; ++s) {
    press.step(cpu, eng.forward(1, 0, 2), eng.view());
    eng.next_position -= 1;  // layer 1 sees the same token
    press.step(cpu, eng.forward(1, 1, 2), eng.view());
  }
  CHECK(press.steps(0) == 3);
  CHECK(press.buffered(1) == 3);
  Observation<float> prefill;
  prefill.layer_idx = 0;
  CHECK_FALSE(press.step(cpu, prefill, eng.view()));
  CHECK(press.steps(0) == 0);
  CHECK(press.buffered(0) == 0);
  CHECK(press.steps(1) == 3);  // layers are independent
  press.reset();
  CHECK(press.steps(1) == 0);
}

TEST_CASE("a half cache decodes with buffered half queries", "[decoding]") {
  kvc_test::OwnedCache<half> cache(kB, kH, 48, kD);
  cache.fill_random(17);
  cache.lengths.assign(4, 30);
  auto const qf = kvc_test::random_vector(static_cast<std::size_t>(kB * kQ * kD), 18);
  std::vector<half> q(qf.begin(), qf.end());
  DecodingPress<KnormPress, half> press(KnormPress{}, DecodingOptions{4, 24, 2}, shape());
  for (int s = 1; s <= 12; ++s) {
    for (auto& n : cache.lengths) ++n;
    Observation<half> obs;
    obs.queries = make_tensor4(q.data(), {kB, kQ, 1, kD});
    obs.position = 30 + s - 1;
    CHECK(press.step(cpu, obs, cache.view()) == (s % 4 == 0));
  }
  CHECK(cache.lengths == std::vector<std::int32_t>(4, 24));
}

TEST_CASE("decoding presses reject bad input, naming the argument and the value", "[decoding][errors]") {
  SECTION("compression_interval 0") {
    CHECK_THROWS_WITH(DecodingPress<KnormPress>(KnormPress{}, DecodingOptions{0, 64, 8}, shape()),
                      Contains("compression_interval must be positive, got 0"));
  }
  SECTION("target_size 0") {
    CHECK_THROWS_WITH(DecodingPress<KnormPress>(KnormPress{}, DecodingOptions{4, 0, 8}, shape()),
                      Contains("target_size must be positive, got 0"));
  }
  SECTION("target_size negative") {
    CHECK_THROWS_WITH(DecodingPress<KnormPress>(KnormPress{}, DecodingOptions{4, -5, 8}, shape()),
                      Contains("target_size must be positive, got -5"));
  }
  SECTION("query_buffer_size negative") {
    CHECK_THROWS_WITH(DecodingPress<KnormPress>(KnormPress{}, DecodingOptions{4, 64, -1}, shape()),
                      Contains("query_buffer_size must be non-negative, got -1"));
  }
  SECTION("target_compression_ratio 1") {
    CHECK_THROWS_WITH(CompressionRatioDecodingPress<KnormPress>(KnormPress{}, CompressionRatioDecodingOptions{4, 1.0, 8}, shape()),
                      Contains("target_compression_ratio must be in [0, 1), got 1"));
  }
  SECTION("target_compression_ratio negative") {
    CHECK_THROWS_WITH(
        CompressionRatioDecodingPress<KnormPress>(KnormPress{}, CompressionRatioDecodingOptions{4, -0.25, 8}, shape()),
        Contains("got -0.25"));
  }
  SECTION("no layers") {
    CHECK_THROWS_WITH(DecodingPress<KnormPress>(KnormPress{}, DecodingOptions{}, QueryBufferShape{0, kB, kQ, kD}),
                      Contains("shape.num_layers must be positive, got 0"));
  }

  Engine eng(std::vector<std::int32_t>(4, 20), 64, 19);
  DecodingPress<KnormPress> press(KnormPress{}, DecodingOptions{4, 16, 8}, shape());
  SECTION("layer_idx out of range") {
    auto obs = eng.forward();
    obs.layer_idx = 1;
    CHECK_THROWS_WITH(press.step(cpu, obs, eng.view()), Contains("observation.layer_idx = 1"));
  }
  SECTION("negative position") {
    auto obs = eng.forward();
    obs.position = -3;
    CHECK_THROWS_WITH(press.step(cpu, obs, eng.view()), Contains("observation.position must be non-negative, got -3"));
  }
  SECTION("no queries") {
    auto obs = eng.forward();
    obs.queries = Tensor4<float>{};
    CHECK_THROWS_WITH(press.step(cpu, obs, eng.view()), Contains("observation.queries must be given"));
  }
  SECTION("query heads differ from the buffer's") {
    auto obs = eng.forward();
    obs.queries = make_tensor4(eng.queries.data(), {kB, kQ / 2, 2, kD});
    CHECK_THROWS_WITH(press.step(cpu, obs, eng.view()), Contains("does not match the buffer's") && Contains("q_heads = 4"));
  }
  SECTION("cache batch differs from the buffer's") {
    kvc_test::OwnedCache<float> other(1, kH, 64, kD);
    CHECK_THROWS_WITH(press.step(cpu, eng.forward(), other.view()), Contains("cache batch = 1"));
  }
  SECTION("cache head_dim differs from the buffer's") {
    kvc_test::OwnedCache<float> other(kB, kH, 64, kD / 2);
    CHECK_THROWS_WITH(press.step(cpu, eng.forward(), other.view()), Contains("cache head_dim = 8"));
  }
  SECTION("a position that does not follow the previous step") {
    auto const first = eng.forward();
    press.step(cpu, first, eng.view());
    auto again = eng.forward();
    again.position = first.position;
    CHECK_THROWS_WITH(press.step(cpu, again, eng.view()), Contains("does not follow the previous step's last position"));
  }
  SECTION("a window larger than the buffered queries") {
    DecodingPress<SnapKVPress> snap(SnapKVPress{0.0, 8, 3}, DecodingOptions{4, 16, 8}, shape());
    for (int s = 1; s < 4; ++s) snap.step(cpu, eng.forward(), eng.view());
    CHECK_THROWS_WITH(snap.step(cpu, eng.forward(), eng.view()), Contains("window of 8 queries exceeds the 4 buffered"));
  }
  SECTION("a window press without rope") {
    DecodingPress<SnapKVPress> snap(SnapKVPress{0.0, 2, 3}, DecodingOptions{2, 16, 8}, shape());
    snap.step(cpu, eng.forward(), eng.view());
    auto obs = eng.forward();
    obs.rope = nullptr;
    CHECK_THROWS_WITH(snap.step(cpu, obs, eng.view()), Contains("observation.rope must be set"));
  }
  SECTION("workspace too small") {
    DecodingPress<KnormPress> every(KnormPress{}, DecodingOptions{1, 16, 8}, shape());
    auto const obs = eng.forward();
    std::vector<std::byte> ws(every.workspace_bytes(cpu, obs, eng.view()) / 4);
    CHECK_THROWS_WITH(every.step(cpu, obs, eng.view(), Workspace(ws.data(), ws.size())), Contains("workspace too small"));
  }
}

}  // namespace KVC_TEST_TU
