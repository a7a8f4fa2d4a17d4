// CAM (cache merging during decoding) on hand-built caches: the merge of a small case worked out by
// hand (Knorm scores, candidates, windows that run off the end, ties to the later position), the
// running attention sum against a softmax recomputed in double, the draws (how many, in which order,
// merge iff u < p), the statistics of the default generator, the decoding invariants over many
// steps, and bad input. The comparison with kvpress itself is tests/golden_tests/test_cam_golden.cpp.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "kvcompress/kvcompress.hpp"
#include "test_util.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using namespace kvcompress;
using Catch::Matchers::Contains;

namespace {

constexpr std::int64_t kD = 4;

RotaryEmbedding make_rope(std::int64_t d = kD) {
  RopeConfig c;
  c.head_dim = static_cast<int>(d);
  c.theta = 10000.0;
  c.max_position_embeddings = 1 << 20;
  return RotaryEmbedding(c);
}

/// Draws handed out from a list, counting how many were asked for.
struct ListUniform {
  std::vector<double> values;
  std::size_t used = 0;
  double operator()() {
    double const u = values[used % values.size()];
    ++used;
    return u;
  }
};

/// A cache of batch b, kv heads h and capacity cap, with one query per step for q_heads query heads.
struct Decoder {
  std::int64_t b, h, q_heads, cap;
  kvc_test::OwnedCache<float> cache;
  std::vector<std::int32_t> positions;
  std::vector<float> queries;
  RotaryEmbedding rope = make_rope();
  std::int64_t next = 0;

  Decoder(std::int64_t batch, std::int64_t heads, std::int64_t qh, std::int64_t capacity)
      : b(batch), h(heads), q_heads(qh), cap(capacity), cache(batch, heads, capacity, kD),
        positions(static_cast<std::size_t>(batch * heads * capacity), -1) {
    cache.lengths.assign(static_cast<std::size_t>(batch * heads), 0);
  }
  KVCacheView<float> view() {
    return make_cache_view(cache.k.data(), cache.v.data(), cache.extents, cache.layout, cache.lengths.data(),
                           positions.data());
  }
  float& key(std::int64_t r, std::int64_t s, std::int64_t c) { return cache.k[static_cast<std::size_t>((r * cap + s) * kD + c)]; }
  float& value(std::int64_t r, std::int64_t s, std::int64_t c) { return cache.v[static_cast<std::size_t>((r * cap + s) * kD + c)]; }
  /// Appends `len` entries to every row, filled by fill(row, slot), and returns the pass's observation.
  template <class Fill>
  Observation<float> pass(std::int64_t len, Fill&& fill, std::uint32_t seed = 1) {
    for (std::int64_t r = 0; r < b * h; ++r)
      for (std::int64_t t = 0; t < len; ++t) {
        std::int32_t const slot = cache.lengths[static_cast<std::size_t>(r)]++;
        fill(r, slot);
        positions[static_cast<std::size_t>(r * cap + slot)] = static_cast<std::int32_t>(next + t);
      }
    queries = kvc_test::random_vector(static_cast<std::size_t>(b * q_heads * len * kD), seed);
    Observation<float> obs;
    obs.queries = make_tensor4(queries.data(), {b, q_heads, len, kD});
    obs.position = next;
    obs.rope = &rope;
    next += len;
    return obs;
  }
};

/// Keys of norm norms[slot] (along channel slot % kD) and values v[c] = 10·slot + c + 100·row.
auto norm_fill(Decoder& dec, std::vector<float> const& norms) {
  return [&dec, norms](std::int64_t r, std::int32_t s) {
    for (std::int64_t c = 0; c < kD; ++c) {
      dec.key(r, s, c) = c == s % kD ? norms[static_cast<std::size_t>(s)] : 0.0f;
      dec.value(r, s, c) = static_cast<float>(10 * s + c + 100 * r);
    }
  };
}

float original_value(std::int64_t r, std::int64_t s, std::int64_t c) { return static_cast<float>(10 * s + c + 100 * r); }

/// A scorer press that gives slot s the score table[s] in every row.
struct TableScores {
  double compression_ratio = 0.0;
  std::vector<float> table;

  template <class T, class L>
  std::size_t workspace_bytes(CpuDevice const&, Observation<T> const&, KVCacheView<T, L> const&) const {
    return 0;
  }
  template <class T, class L>
  void score(CpuDevice const&, Observation<T> const&, KVCacheView<T, L> const& cache, float* scores, Workspace&) const {
    for (std::int64_t r = 0; r < cache.extents.batch * cache.extents.kv_heads; ++r)
      for (std::int32_t s = 0; s < cache.lengths[r]; ++s)
        scores[r * cache.extents.capacity + s] = table[static_cast<std::size_t>(s)];
  }
};

}  // namespace

TEST_CASE("CAM merges the best evicted entry into the kept entries after it, worked by hand", "[cam]") {
  // One sequence, 2 kv heads (4 query heads), 5 prefill entries and one decoding step: n = 6 → target 3,
  // merge_budget 2, interval 1 (so k = 1 candidate). Knorm: keep the 3 smallest key norms.
  Decoder dec(1, 2, 4, 16);
  CAMOptions opt;
  opt.compression_interval = 1;
  opt.target_size = 3;
  opt.merge_budget = 2;
  CAMPress<KnormPress, float, ListUniform> press(KnormPress{}, opt, CAMShape{1, 1, 4, 2, kD, 16}, ListUniform{{0.0}});

  SECTION("the window runs off the end of the kept entries: one target") {
    // norms 1 5 2 6 3 0.5: kept {0, 2, 5}; evicted {1, 3, 4} (means −5, −6, −3): candidate 4, whose
    // window is the kept entries after it, [5] only.
    std::vector<float> const norms{1, 5, 2, 6, 3, 0.5f};
    CHECK_FALSE(press.step(cpu, dec.pass(5, norm_fill(dec, norms)), dec.view()));
    CHECK(press.step(cpu, dec.pass(1, norm_fill(dec, norms)), dec.view()));
    CHECK(press.uniform().used == 2);  // one per kv head and candidate
    for (std::int64_t r = 0; r < 2; ++r) {
      REQUIRE(dec.cache.lengths[static_cast<std::size_t>(r)] == 3);
      std::vector<std::int32_t> const want{0, 2, 5};
      for (std::int64_t j = 0; j < 3; ++j) {
        CHECK(dec.positions[static_cast<std::size_t>(r * 16 + j)] == want[static_cast<std::size_t>(j)]);
        for (std::int64_t c = 0; c < kD; ++c) {
          float const merged = j == 2 ? original_value(r, 4, c) : 0.0f;  // v5 += v4 / 1
          CHECK(dec.value(r, j, c) == original_value(r, want[static_cast<std::size_t>(j)], c) + merged);
        }
      }
      CHECK(press.summed(0, r) == 3);
    }
  }

  SECTION("equal mean scores: the later evicted entry is the candidate, and its window has two targets") {
    // norms 1 4 2 4 0.5 6 (4 and 4 along different channels, so both exact): kept {0, 2, 4}; evicted
    // {1, 3, 5} (−4, −4, −6); the tie goes to 3, whose window is [4] (1 would have had [2, 4]).
    std::vector<float> const norms{1, 4, 2, 4, 0.5f, 6};
    (void)press.step(cpu, dec.pass(5, norm_fill(dec, norms)), dec.view());
    CHECK(press.step(cpu, dec.pass(1, norm_fill(dec, norms)), dec.view()));
    for (std::int64_t r = 0; r < 2; ++r)
      for (std::int64_t c = 0; c < kD; ++c) {
        CHECK(dec.value(r, 1, c) == original_value(r, 2, c));
        CHECK(dec.value(r, 2, c) == original_value(r, 4, c) + original_value(r, 3, c));
      }
  }

  SECTION("two candidates share a target: each adds its value over its own window width") {
    // interval 2 → k = 2 after two steps; n = 7 → 3. norms 1 7 2 3 8 0.5 9: kept {0, 2, 5}, evicted
    // {1, 3, 4, 6} (−7, −3, −8, −9): candidates 1 and 3. Windows: 1 → [2, 5] (width 2), 3 → [5] (width 1).
    CAMOptions o2 = opt;
    o2.compression_interval = 2;
    CAMPress<KnormPress, float, ListUniform> p2(KnormPress{}, o2, CAMShape{1, 1, 4, 2, kD, 16}, ListUniform{{0.0}});
    std::vector<float> const norms{1, 7, 2, 3, 8, 0.5f, 9};
    (void)p2.step(cpu, dec.pass(5, norm_fill(dec, norms)), dec.view());
    CHECK_FALSE(p2.step(cpu, dec.pass(1, norm_fill(dec, norms)), dec.view()));
    CHECK(p2.step(cpu, dec.pass(1, norm_fill(dec, norms), 2), dec.view()));
    CHECK(p2.uniform().used == 4);
    for (std::int64_t r = 0; r < 2; ++r)
      for (std::int64_t c = 0; c < kD; ++c) {
        CHECK(dec.value(r, 0, c) == original_value(r, 0, c));
        CHECK(dec.value(r, 1, c) == original_value(r, 2, c) + original_value(r, 1, c) * 0.5f);
        CHECK(dec.value(r, 2, c) == original_value(r, 5, c) + original_value(r, 1, c) * 0.5f + original_value(r, 3, c));
      }
  }

  SECTION("a candidate after every kept entry has an empty window: a draw, no merge") {
    // norms 1 2 3 9 8 7: kept {0, 1, 2}; the candidate (5, the last) has no kept entry after it.
    std::vector<float> const norms{1, 2, 3, 9, 8, 7};
    (void)press.step(cpu, dec.pass(5, norm_fill(dec, norms)), dec.view());
    CHECK(press.step(cpu, dec.pass(1, norm_fill(dec, norms)), dec.view()));
    CHECK(press.uniform().used == 2);
    for (std::int64_t r = 0; r < 2; ++r)
      for (std::int64_t j = 0; j < 3; ++j)
        for (std::int64_t c = 0; c < kD; ++c) CHECK(dec.value(r, j, c) == original_value(r, j, c));
  }
}

TEST_CASE("CAM merges iff u < p, p = A of the candidate over the mean A of its window, clamped to 0 to 1", "[cam]") {
  // Zero keys: the step's attention is uniform, so after one step from a 5-entry prefill every entry
  // holds A = 1/6 and p = 1 exactly. Scores 5 1 4 3 2 6: kept {0, 2, 5}, candidate 3, window [5].
  CAMOptions opt;
  opt.compression_interval = 1;
  opt.target_size = 3;
  opt.merge_budget = 2;
  TableScores const scores{0.0, {5, 1, 4, 3, 2, 6}};
  Decoder dec(1, 1, 1, 16);
  auto const zero_keys = [&dec](std::int64_t r, std::int32_t s) {
    for (std::int64_t c = 0; c < kD; ++c) {
      dec.key(r, s, c) = 0.0f;
      dec.value(r, s, c) = original_value(r, s, c);
    }
  };
  auto const run = [&](double u) {
    CAMPress<TableScores, float, ListUniform> press(scores, opt, CAMShape{1, 1, 1, 1, kD, 16}, ListUniform{{u}});
    (void)press.step(cpu, dec.pass(5, zero_keys), dec.view());
    CHECK(press.step(cpu, dec.pass(1, zero_keys), dec.view()));
    CHECK(press.uniform().used == 1);
    REQUIRE(dec.positions[2] == 5);
    return dec.value(0, 2, 0) - original_value(0, 5, 0);
  };
  SECTION("p = 1: even u = 1 - 2^-53 merges") { CHECK(run(1.0 - 0x1.0p-53) == original_value(0, 3, 0)); }
  SECTION("u = 1 never merges") { CHECK(run(1.0) == 0.0f); }
}

TEST_CASE("CAM's running sum is the step's softmax attention averaged over each kv head's query heads", "[cam]") {
  // GQA 3:1, 2 sequences; checked against softmax(R(p)q · k / √d) recomputed in double.
  Decoder dec(2, 2, 6, 32);
  std::mt19937 gen(5);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  auto const fill = [&](std::int64_t r, std::int32_t s) {
    for (std::int64_t c = 0; c < kD; ++c) {
      dec.key(r, s, c) = dist(gen);
      dec.value(r, s, c) = dist(gen);
    }
  };
  CAMOptions opt;
  opt.compression_interval = 100;
  opt.target_size = 50;
  CAMPress<KnormPress> press(KnormPress{}, opt, CAMShape{1, 2, 6, 2, kD, 32});
  (void)press.step(cpu, dec.pass(7, fill), dec.view());
  std::vector<double> want(static_cast<std::size_t>(4 * 32), 0.0);
  for (std::uint32_t step = 0; step < 4; ++step) {
    auto const obs = dec.pass(step == 2 ? 3 : 1, fill, 10 + step);  // a 3-token chunk: its last query counts
    std::int64_t const q_len = obs.queries.shape[2], p = obs.position + q_len - 1;
    for (std::int64_t r = 0; r < 4; ++r) {
      std::int64_t const b = r / 2, kv = r % 2, n = dec.cache.lengths[static_cast<std::size_t>(r)];
      for (std::int64_t j = kv * 3; j < kv * 3 + 3; ++j) {
        std::vector<float> q(kD);
        for (std::int64_t c = 0; c < kD; ++c) q[static_cast<std::size_t>(c)] = obs.queries(b, j, q_len - 1, c);
        dec.rope.apply(q.data(), p, p + 1);
        std::vector<double> logit(static_cast<std::size_t>(n));
        double top = -1e300, z = 0.0;
        for (std::int64_t i = 0; i < n; ++i) {
          double dot = 0.0;
          for (std::int64_t c = 0; c < kD; ++c) dot += double(q[static_cast<std::size_t>(c)]) * dec.key(r, i, c);
          logit[static_cast<std::size_t>(i)] = dot / std::sqrt(double(kD));
          top = std::max(top, logit[static_cast<std::size_t>(i)]);
        }
        for (double x : logit) z += std::exp(x - top);
        for (std::int64_t i = 0; i < n; ++i) want[static_cast<std::size_t>(r * 32 + i)] += std::exp(logit[static_cast<std::size_t>(i)] - top) / z / 3.0;
      }
    }
    CHECK_FALSE(press.step(cpu, obs, dec.view()));
    for (std::int64_t r = 0; r < 4; ++r) {
      REQUIRE(press.summed(0, r) == dec.cache.lengths[static_cast<std::size_t>(r)]);
      for (std::int64_t i = 0; i < press.summed(0, r); ++i)
        CHECK(press.attention_sum(0)[r * 32 + i] == Approx(want[static_cast<std::size_t>(r * 32 + i)]).epsilon(1e-5));
    }
  }
}

TEST_CASE("CAM over 300 steps: rows between target and target + interval - 1, heads in step, kept keys intact", "[cam]") {
  Decoder dec(2, 2, 4, 64);
  std::mt19937 gen(9);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> keys_at(static_cast<std::size_t>(4 * 400 * kD));  // [row, position, kD] every key written
  auto const fill = [&](std::int64_t r, std::int32_t s) {
    for (std::int64_t c = 0; c < kD; ++c) {
      dec.key(r, s, c) = dist(gen);
      dec.value(r, s, c) = dist(gen);
    }
  };
  CAMOptions opt;
  opt.compression_interval = 7;
  opt.target_size = 20;
  opt.merge_budget = 3;
  opt.query_buffer_size = 4;
  CAMPress<ExpectedAttentionPress> press(ExpectedAttentionPress{}, opt, CAMShape{1, 2, 4, 2, kD, 64}, MersenneUniform{3});
  (void)press.step(cpu, dec.pass(30, fill), dec.view());
  for (std::int64_t r = 0; r < 4; ++r)
    for (std::int64_t s = 0; s < 30; ++s)
      for (std::int64_t c = 0; c < kD; ++c) keys_at[static_cast<std::size_t>((r * 400 + s) * kD + c)] = dec.key(r, s, c);
  for (std::int64_t step = 1; step <= 300; ++step) {
    auto const obs = dec.pass(1, fill, static_cast<std::uint32_t>(step));
    for (std::int64_t r = 0; r < 4; ++r) {
      std::int32_t const s = dec.cache.lengths[static_cast<std::size_t>(r)] - 1;
      for (std::int64_t c = 0; c < kD; ++c)
        keys_at[static_cast<std::size_t>((r * 400 + obs.position) * kD + c)] = dec.key(r, s, c);
    }
    bool const compressed = press.step(cpu, obs, dec.view());
    CHECK(compressed == (step % 7 == 0));
    INFO("step " << step);
    for (std::int64_t r = 0; r < 4; ++r) {
      std::int32_t const n = dec.cache.lengths[static_cast<std::size_t>(r)];
      if (step >= 7) {
        CHECK(n >= 20);
        CHECK(n <= 26);
      }
      CHECK(n == dec.cache.lengths[static_cast<std::size_t>(r - r % 2)]);
      for (std::int32_t s = 0; s < n; ++s) {
        std::int32_t const p = dec.positions[static_cast<std::size_t>(r * 64 + s)];
        CHECK(p == dec.positions[static_cast<std::size_t>((r - r % 2) * 64 + s)]);  // same entries in both heads
        if (s > 0) CHECK(p > dec.positions[static_cast<std::size_t>(r * 64 + s - 1)]);
        for (std::int64_t c = 0; c < kD; ++c) REQUIRE(dec.key(r, s, c) == keys_at[static_cast<std::size_t>((r * 400 + p) * kD + c)]);
      }
    }
  }
}

TEST_CASE("CAM with the same seed gives the same cache, and fewer steps than the interval keep growing k", "[cam]") {
  auto const run = [](std::uint64_t seed, std::vector<float>& values, std::int64_t& steps_before) {
    Decoder dec(1, 2, 2, 64);
    std::mt19937 gen(4);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    auto const fill = [&](std::int64_t r, std::int32_t s) {
      for (std::int64_t c = 0; c < kD; ++c) {
        dec.key(r, s, c) = dist(gen);
        dec.value(r, s, c) = dist(gen);
      }
    };
    CAMOptions opt;
    opt.compression_interval = 2;
    opt.target_size = 16;
    opt.merge_budget = 4;
    CAMPress<KnormPress> press(KnormPress{}, opt, CAMShape{1, 1, 2, 2, kD, 64}, MersenneUniform{seed});
    (void)press.step(cpu, dec.pass(10, fill), dec.view());
    // 10 → 16 entries in 6 steps: the interval has passed, but nothing exceeds the target, so the
    // steps keep counting (kvpress resets them only when it compresses).
    for (int s = 0; s < 6; ++s) CHECK_FALSE(press.step(cpu, dec.pass(1, fill), dec.view()));
    steps_before = press.steps(0);
    CHECK(press.step(cpu, dec.pass(1, fill), dec.view()));
    CHECK(press.steps(0) == 0);
    values.assign(dec.cache.v.begin(), dec.cache.v.end());
  };
  std::vector<float> a, b;
  std::int64_t steps = 0;
  run(7, a, steps);
  CHECK(steps == 6);
  run(7, b, steps);
  CHECK(a == b);
}

TEST_CASE("CAM's default draws are uniform on 0 to 1: u < p holds with frequency p", "[cam]") {
  // 200,000 draws; each frequency is checked to 5 standard deviations (sqrt(p(1 − p) / N) ≤ 0.0012).
  MersenneUniform u(12345);
  constexpr int kN = 200000;
  std::vector<double> const ps{0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99};
  std::vector<int> hits(ps.size(), 0);
  double lo = 1.0, hi = 0.0;
  for (int i = 0; i < kN; ++i) {
    double const x = u();
    lo = std::min(lo, x);
    hi = std::max(hi, x);
    for (std::size_t k = 0; k < ps.size(); ++k) hits[k] += x < ps[k] ? 1 : 0;
  }
  CHECK(lo >= 0.0);
  CHECK(hi < 1.0);
  for (std::size_t k = 0; k < ps.size(); ++k) {
    double const p = ps[k], freq = static_cast<double>(hits[k]) / kN;
    INFO("p = " << p);
    CHECK(std::fabs(freq - p) <= 5.0 * std::sqrt(p * (1.0 - p) / kN));
  }
  // Different seeds give different streams.
  MersenneUniform a(1), b(2);
  CHECK(a() != b());
}

TEST_CASE("CAM rejects bad input, naming the argument and the value", "[cam][errors]") {
  CAMShape const shape{1, 1, 4, 2, kD, 16};
  auto const make = [&](CAMOptions o, CAMShape s = CAMShape{1, 1, 4, 2, kD, 16}) {
    return CAMPress<KnormPress>(KnormPress{}, o, s);
  };
  SECTION("merge_budget 0") {
    CAMOptions o;
    o.merge_budget = 0;
    CHECK_THROWS_WITH(make(o), Contains("merge_budget must be positive, got 0"));
  }
  SECTION("merge_budget negative") {
    CAMOptions o;
    o.merge_budget = -3;
    CHECK_THROWS_WITH(make(o), Contains("merge_budget must be positive, got -3"));
  }
  SECTION("target_size negative") {
    CAMOptions o;
    o.target_size = -1;
    CHECK_THROWS_WITH(make(o), Contains("target_size must be positive, got -1"));
  }
  SECTION("compression_interval 0") {
    CAMOptions o;
    o.compression_interval = 0;
    CHECK_THROWS_WITH(make(o), Contains("compression_interval must be positive, got 0"));
  }
  SECTION("query_buffer_size negative") {
    CAMOptions o;
    o.query_buffer_size = -2;
    CHECK_THROWS_WITH(make(o), Contains("query_buffer_size must be non-negative, got -2"));
  }
  SECTION("q_heads not a multiple of kv_heads") {
    CHECK_THROWS_WITH(make(CAMOptions{}, CAMShape{1, 1, 3, 2, kD, 16}),
                      Contains("shape.q_heads = 3 must be a positive multiple of shape.kv_heads = 2"));
  }
  SECTION("capacity 0") {
    CHECK_THROWS_WITH(make(CAMOptions{}, CAMShape{1, 1, 4, 2, kD, 0}), Contains("shape.capacity must be in [1, 2^31 - 1), got 0"));
  }

  Decoder dec(1, 2, 4, 16);
  auto const fill = norm_fill(dec, std::vector<float>(16, 1.0f));
  CAMOptions opt;
  opt.target_size = 4;
  opt.compression_interval = 2;
  auto press = make(opt, shape);
  SECTION("a cache larger than the press's capacity") {
    Decoder big(1, 2, 4, 32);
    CHECK_THROWS_WITH(press.step(cpu, big.pass(3, norm_fill(big, std::vector<float>(32, 1.0f))), big.view()),
                      Contains("cache capacity = 32 exceeds the press's shape.capacity = 16"));
  }
  SECTION("kv heads of a sequence with different lengths") {
    (void)press.step(cpu, dec.pass(5, fill), dec.view());
    auto const obs = dec.pass(1, fill);
    dec.cache.lengths[1] -= 1;
    CHECK_THROWS_WITH(press.step(cpu, obs, dec.view()), Contains("batch 0 holds 6 entries in kv head 0 and 5 in kv head 1"));
  }
  SECTION("a row shortened outside the press") {
    (void)press.step(cpu, dec.pass(5, fill), dec.view());
    (void)press.step(cpu, dec.pass(1, fill), dec.view());
    auto const obs = dec.pass(1, fill);
    dec.cache.lengths[0] = 3;
    dec.cache.lengths[1] = 3;
    CHECK_THROWS_WITH(press.step(cpu, obs, dec.view()),
                      Contains("cache row (batch 0, kv head 0) holds 3 entries, fewer than the 6 its running attention sum covers"));
  }
  SECTION("no rope") {
    (void)press.step(cpu, dec.pass(5, fill), dec.view());
    auto obs = dec.pass(1, fill);
    obs.rope = nullptr;
    CHECK_THROWS_WITH(press.step(cpu, obs, dec.view()), Contains("observation.rope must be set"));
  }
  SECTION("a non-finite query") {
    (void)press.step(cpu, dec.pass(5, fill), dec.view());
    auto const obs = dec.pass(1, fill);
    dec.queries[3] = std::nanf("");
    CHECK_THROWS_WITH(press.step(cpu, obs, dec.view()), Contains("observation.queries"));
  }
  SECTION("a non-finite key") {
    (void)press.step(cpu, dec.pass(5, fill), dec.view());
    auto const obs = dec.pass(1, fill);
    dec.key(1, 2, 0) = std::nanf("");
    CHECK_THROWS_WITH(press.step(cpu, obs, dec.view()), Contains("is nan at (batch 0, kv head 1, slot 0): a key of that row is not finite"));
    CHECK(press.summed(0, 1) == 0);  // nothing was added (the prefill adds nothing either)
  }
  SECTION("a non-finite value of a merge candidate") {
    (void)press.step(cpu, dec.pass(5, norm_fill(dec, {1, 2, 3, 4, 9, 8, 7, 6})), dec.view());
    (void)press.step(cpu, dec.pass(1, norm_fill(dec, {1, 2, 3, 4, 9, 8, 7, 6})), dec.view());
    auto const obs = dec.pass(1, norm_fill(dec, {1, 2, 3, 4, 9, 8, 7, 6}));
    dec.value(0, 5, 1) = std::nanf("");  // candidates: 5 (−8) and 6 (−7)
    CHECK_THROWS_WITH(press.step(cpu, obs, dec.view()), Contains("value (batch 0, kv head 0, slot 5, channel 1) = nan"));
    CHECK(dec.cache.lengths[0] == 7);  // nothing moved
  }
  SECTION("a layer split over tensor-parallel ranks") {
    SingleRankCommunicator comm;
    auto obs = dec.pass(5, fill);
    obs.shard = TensorParallelShard{&comm, 0, 2};
    CHECK_THROWS_WITH(press.step(cpu, obs, dec.view()), Contains("CAM has no tensor-parallel form (one kept set is shared by all kv heads of a sequence)"));
  }
  SECTION("layer_idx out of range") {
    auto obs = dec.pass(5, fill);
    obs.layer_idx = 1;
    CHECK_THROWS_WITH(press.step(cpu, obs, dec.view()), Contains("observation.layer_idx = 1 is outside [0, num_layers = 1)"));
  }
}

}  // namespace KVC_TEST_TU
