// EntropyGatedChunkKV, LUKV, DuoAttention and Merging: the bad inputs they reject (docs/reliability.md)
// and their rules on hand-made caches whose answer follows from the definition. Their results against
// kvpress are in tests/golden_tests/test_more_wrappers_golden.cpp.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kvcompress/kvcompress.hpp"
#include "test_util.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using namespace kvcompress;

namespace {

constexpr std::int64_t kH = 2, kN = 40, kD = 8;

/// One sequence of kH heads and kN entries of random keys and values; positions record the slots.
struct Setup {
  kvc_test::OwnedCache<float> cache{1, kH, kN, kD};
  std::vector<std::int32_t> positions = std::vector<std::int32_t>(static_cast<std::size_t>(kH * kN));
  Setup() {
    cache.fill_random(81);
    for (std::size_t i = 0; i < positions.size(); ++i) positions[i] = static_cast<std::int32_t>(i % kN);
  }
  KVCacheView<float> view() {
    return make_cache_view(cache.k.data(), cache.v.data(), cache.extents, cache.layout, cache.lengths.data(),
                           positions.data());
  }
  /// Slots kept by row r, in order.
  [[nodiscard]] std::vector<std::int32_t> kept(std::int64_t r) const {
    return {positions.begin() + r * kN, positions.begin() + r * kN + cache.lengths[static_cast<std::size_t>(r)]};
  }
};

/// A curve [99, 1 layer, kH heads] whose row for every target prunes `a` of head 0 and `b` of head 1.
std::vector<float> flat_curve(float a, float b) {
  std::vector<float> c(99 * kH);
  for (std::size_t t = 0; t < 99; ++t) {
    c[t * kH] = a;
    c[t * kH + 1] = b;
  }
  return c;
}

std::vector<std::int32_t> range(std::int32_t lo, std::int32_t hi) {
  std::vector<std::int32_t> r;
  for (std::int32_t i = lo; i < hi; ++i) r.push_back(i);
  return r;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// EntropyGatedChunkKV
// ---------------------------------------------------------------------------------------------------

TEST_CASE("EntropyGatedChunkKVPress rejects bad parameters and inputs", "[press][egchunkkv][errors]") {
  Setup s;
  SECTION("chunk lengths out of order") {
    REQUIRE_THROWS_WITH(compress(cpu, EntropyGatedChunkKVPress{KnormPress{0.5}, 4, 4}, Observation<float>{}, s.view()),
                        Catch::Contains("EntropyGatedChunkKVPress needs chunk_length > low_entropy_chunk_length >= 1, "
                                        "got chunk_length = 4, low_entropy_chunk_length = 4"));
    REQUIRE_THROWS_WITH(compress(cpu, EntropyGatedChunkKVPress{KnormPress{0.5}, 4, 0}, Observation<float>{}, s.view()),
                        Catch::Contains("low_entropy_chunk_length = 0"));
  }
  SECTION("kv heads of one sequence with different lengths") {
    s.cache.lengths[1] = 30;
    REQUIRE_THROWS_WITH(compress(cpu, EntropyGatedChunkKVPress{KnormPress{0.5}}, Observation<float>{}, s.view()),
                        Catch::Contains("lengths[1] = 30 differs from lengths[0] = 40"));
  }
  SECTION("a non-finite key") {
    s.cache.k[(1 * kN + 5) * kD + 3] = std::numeric_limits<float>::quiet_NaN();
    REQUIRE_THROWS_WITH(compress(cpu, EntropyGatedChunkKVPress{KnormPress{0.5}}, Observation<float>{}, s.view()),
                        Catch::Contains("keys[0, 1, 5, 3]") && Catch::Contains("not finite"));
    CHECK(s.cache.lengths == std::vector<std::int32_t>{kN, kN});
  }
}

// Knorm scores −|k|. Chunks of 4: chunk 0 = norms {0.1, 3, 3, 3} (one spike, mean −2.275, entropy 0),
// chunk 1 = {2, 2.1, 2.2, 2.3} (−2.15), chunk 2 = {3, …, 3.3} (−3.15), chunk 3 = {5, …, 5.3} (−5.15).
// The median chunk score is −3.15 and the median entropy that of the flat chunks, so chunk 0 is
// important but spiky: it keeps its best token only, and the budget of 8 goes on to chunk 2's best 3.
TEST_CASE("EntropyGatedChunkKV cuts a spiky important chunk to its best tokens and spends the rest", "[press][egchunkkv]") {
  kvc_test::OwnedCache<float> c(1, kH, 16, kD);
  std::vector<float> const norms{0.1f, 3, 3, 3, 2, 2.1f, 2.2f, 2.3f, 3, 3.1f, 3.2f, 3.3f, 5, 5.1f, 5.2f, 5.3f};
  for (std::int64_t h = 0; h < kH; ++h)
    for (std::int64_t i = 0; i < 16; ++i) c.k[static_cast<std::size_t>((h * 16 + i) * kD)] = norms[static_cast<std::size_t>(i)];
  std::vector<std::int32_t> positions(static_cast<std::size_t>(kH * 16));
  for (std::size_t i = 0; i < positions.size(); ++i) positions[i] = static_cast<std::int32_t>(i % 16);
  auto const view = make_cache_view(c.k.data(), c.v.data(), c.extents, c.layout, c.lengths.data(), positions.data());
  compress(cpu, EntropyGatedChunkKVPress{KnormPress{0.5}, 4, 1}, Observation<float>{}, view);
  std::vector<std::int32_t> const want{0, 4, 5, 6, 7, 8, 9, 10};
  for (std::int64_t h = 0; h < kH; ++h) {
    REQUIRE(c.lengths[static_cast<std::size_t>(h)] == 8);
    CHECK(std::vector<std::int32_t>(positions.begin() + h * 16, positions.begin() + h * 16 + 8) == want);
  }
}

// ---------------------------------------------------------------------------------------------------
// LUKV
// ---------------------------------------------------------------------------------------------------

TEST_CASE("LUKVPress rejects bad parameters and inputs", "[press][lukv][errors]") {
  Setup s;
  std::vector<float> const curve = flat_curve(0.25f, 0.75f);
  LUKVPress<KnormPress> press{KnormPress{}, 0.5};
  press.budget_curves = curve.data();
  press.num_layers = 1;
  press.kv_heads = kH;
  SECTION("no budget curve") {
    press.budget_curves = nullptr;
    REQUIRE_THROWS_WITH(compress(cpu, press, Observation<float>{}, s.view()),
                        Catch::Contains("LUKVPress needs budget_curves [99, num_layers, kv_heads]"));
  }
  SECTION("a layer or head count the curve does not have") {
    Observation<float> obs;
    obs.layer_idx = 1;
    REQUIRE_THROWS_WITH(compress(cpu, press, obs, s.view()),
                        Catch::Contains("LUKVPress budget curve has 1 layers, observation.layer_idx = 1"));
    press.kv_heads = 4;
    REQUIRE_THROWS_WITH(compress(cpu, press, Observation<float>{}, s.view()),
                        Catch::Contains("LUKVPress budget curve has 4 kv heads, the cache 2"));
    press.num_layers = 0;
    REQUIRE_THROWS_WITH(compress(cpu, press, Observation<float>{}, s.view()),
                        Catch::Contains("LUKVPress budget_curves shape [99, 0, 4] must be positive"));
  }
  SECTION("negative sink or window") {
    press.sink = -1;
    REQUIRE_THROWS_WITH(compress(cpu, press, Observation<float>{}, s.view()),
                        Catch::Contains("LUKVPress sink must be non-negative, got -1"));
    press.sink = 4;
    press.window = -2;
    REQUIRE_THROWS_WITH(compress(cpu, press, Observation<float>{}, s.view()),
                        Catch::Contains("LUKVPress window must be non-negative, got -2"));
  }
  SECTION("a compression ratio outside [0, 1)") {
    press.compression_ratio = 1.0;
    REQUIRE_THROWS_WITH(compress(cpu, press, Observation<float>{}, s.view()),
                        Catch::Contains("compression_ratio must be in [0, 1), got 1"));
  }
  CHECK(s.cache.lengths == std::vector<std::int32_t>{kN, kN});
}

TEST_CASE("LUKV gives each head its curve budget and keeps sinks and window", "[press][lukv]") {
  Setup s;
  std::vector<float> const curve = flat_curve(0.25f, 0.75f);  // 30 and 10 of 40
  LUKVPress<KnormPress> press{KnormPress{}, 0.5};
  press.budget_curves = curve.data();
  press.num_layers = 1;
  press.kv_heads = kH;
  CHECK(press.curve_row() == 49);
  compress(cpu, press, Observation<float>{}, s.view());
  CHECK(s.cache.lengths == std::vector<std::int32_t>{30, 10});
  for (std::int64_t r = 0; r < kH; ++r) {
    auto const kept = s.kept(r);
    for (std::int32_t i = 0; i < 4; ++i) CHECK(kept[static_cast<std::size_t>(i)] == i);  // the 4 sinks
    CHECK(kept.back() == kN - 1);                                                          // the window of 1
  }
  SECTION("rounding: round(100 r) - 1 with ties to even, clamped to the curve") {
    press.compression_ratio = 0.125;  // 12.5 rounds to 12
    CHECK(press.curve_row() == 11);
    press.compression_ratio = 0.001;
    CHECK(press.curve_row() == 0);
  }
}

TEST_CASE("LUKV: an odd total goes to the head with the larger fractional part, and every head keeps one", "[press][lukv]") {
  Setup s;
  std::vector<float> const curve = flat_curve(0.99f, 0.5125f);  // ideal 0.4 and 19.5: total round(19.9) = 20
  LUKVPress<KnormPress> press{KnormPress{}, 0.5, 0, 0};
  press.budget_curves = curve.data();
  press.num_layers = 1;
  press.kv_heads = kH;
  compress(cpu, press, Observation<float>{}, s.view());
  CHECK(s.cache.lengths == std::vector<std::int32_t>{1, 20});
}

// ---------------------------------------------------------------------------------------------------
// DuoAttention
// ---------------------------------------------------------------------------------------------------

TEST_CASE("DuoAttentionPress rejects bad parameters and inputs", "[press][duo][errors]") {
  Setup s;
  std::vector<float> const scores{0.9f, 0.1f, 0.5f, 0.7f};  // [2 layers, 2 heads]
  DuoAttentionPress press{0.5, 4, 8, scores.data(), 2, kH};
  SECTION("no head scores") {
    press.head_scores = nullptr;
    REQUIRE_THROWS_WITH(compress(cpu, press, Observation<float>{}, s.view()),
                        Catch::Contains("DuoAttentionPress needs head_scores [num_layers, kv_heads]"));
  }
  SECTION("parameters out of range") {
    press.head_compression_ratio = 1.5;
    REQUIRE_THROWS_WITH(compress(cpu, press, Observation<float>{}, s.view()),
                        Catch::Contains("DuoAttentionPress head_compression_ratio must be in [0, 1], got 1.5"));
    press.head_compression_ratio = 0.5;
    press.sink_size = -1;
    REQUIRE_THROWS_WITH(compress(cpu, press, Observation<float>{}, s.view()),
                        Catch::Contains("DuoAttentionPress sink_size must be non-negative, got -1"));
    press.sink_size = 4;
    press.recent_size = -1;
    REQUIRE_THROWS_WITH(compress(cpu, press, Observation<float>{}, s.view()),
                        Catch::Contains("DuoAttentionPress recent_size must be non-negative, got -1"));
  }
  SECTION("a layer or head count the scores do not have") {
    Observation<float> obs;
    obs.layer_idx = 2;
    REQUIRE_THROWS_WITH(compress(cpu, press, obs, s.view()),
                        Catch::Contains("DuoAttentionPress head_scores hold 2 layers, observation.layer_idx = 2"));
    press.kv_heads = 1;
    press.num_layers = 4;
    REQUIRE_THROWS_WITH(compress(cpu, press, Observation<float>{}, s.view()),
                        Catch::Contains("DuoAttentionPress head_scores hold 1 kv heads, the cache 2"));
  }
  SECTION("on-the-fly estimate: q_heads not a multiple of kv_heads") {
    RopeConfig rc;
    rc.head_dim = static_cast<int>(kD);
    RotaryEmbedding const rope(rc);
    std::vector<float> q(3 * kD), k(2 * kD), out(2);
    REQUIRE_THROWS_WITH(duo_attention_sample_scores(q.data(), k.data(), 3, 2, rope, 500, out.data()),
                        Catch::Contains("q_heads = 3 must be a positive multiple of kv_heads = 2"));
    REQUIRE_THROWS_WITH(duo_attention_sample_scores(q.data(), k.data(), 2, 2, rope, 0, out.data()),
                        Catch::Contains("q_len must be positive, got 0"));
  }
  CHECK(s.cache.lengths == std::vector<std::int32_t>{kN, kN});
}

TEST_CASE("DuoAttention: the lowest-scoring heads of all layers stream, keeping sink and recent entries", "[press][duo]") {
  std::vector<float> const scores{0.9f, 0.1f, 0.5f, 0.7f};  // layer 0: heads 0.9, 0.1; layer 1: 0.5, 0.7
  DuoAttentionPress const press{0.5, 4, 8, scores.data(), 2, kH};
  std::vector<std::uint8_t> mask(4);
  std::vector<std::int64_t> order(4);
  press.streaming_mask(mask.data(), order.data());
  CHECK(mask == std::vector<std::uint8_t>{0, 1, 1, 0});
  CHECK(press.compression_ratio_for(kN) == Approx(0.5 * (1.0 - 12.0 / kN)));
  for (int layer : {0, 1}) {
    Setup s;
    Observation<float> obs;
    obs.layer_idx = layer;
    compress(cpu, press, obs, s.view());
    std::int64_t const streaming = layer == 0 ? 1 : 0;
    std::vector<std::int32_t> want = range(0, 4), tail = range(kN - 8, kN);
    want.insert(want.end(), tail.begin(), tail.end());
    CHECK(s.kept(streaming) == want);
    CHECK(s.kept(1 - streaming) == range(0, kN));
  }
  SECTION("a layer no longer than sink + recent is left as it is") {
    Setup s;
    s.cache.lengths = {12, 12};
    compress(cpu, press, Observation<float>{}, s.view());
    CHECK(s.cache.lengths == std::vector<std::int32_t>{12, 12});
  }
}

// ---------------------------------------------------------------------------------------------------
// Merging
// ---------------------------------------------------------------------------------------------------

TEST_CASE("MergingPress rejects bad parameters and inputs", "[press][merging][errors]") {
  Setup s;
  SECTION("similarity_threshold or merge_fraction out of range") {
    REQUIRE_THROWS_WITH(compress(cpu, MergingPress{KnormPress{0.5}, 1.5}, Observation<float>{}, s.view()),
                        Catch::Contains("MergingPress similarity_threshold must be in [0, 1], got 1.5"));
    REQUIRE_THROWS_WITH(compress(cpu, MergingPress{KnormPress{0.5}, 0.0, 0.0}, Observation<float>{}, s.view()),
                        Catch::Contains("MergingPress merge_fraction must be in (0, 1], got 0"));
  }
  SECTION("a non-finite key") {
    s.cache.k[(0 * kN + 7) * kD + 2] = std::numeric_limits<float>::infinity();
    REQUIRE_THROWS_WITH(compress(cpu, MergingPress{KnormPress{0.5}}, Observation<float>{}, s.view()),
                        Catch::Contains("keys[0, 0, 7, 2]") && Catch::Contains("not finite"));
  }
  CHECK(s.cache.lengths == std::vector<std::int32_t>{kN, kN});
}

// Three entries, Knorm at r = 0.3 keeps two (norms 1 and 2); the evicted k2 = (3, 0) is parallel to
// k0 = (1, 0): w = 1 · |v2| / (|v2| + |v0| + 1e-6) and v0 ← (v0 + w v2) / (1 + w). Keys stay.
TEST_CASE("Merging folds an evicted value into the most similar kept entry", "[press][merging]") {
  kvc_test::OwnedCache<float> c(1, 1, 3, 2);
  c.k = {1, 0, 0, 2, 3, 0};
  c.v = {1, 1, 5, -5, 2, 0};
  compress(cpu, MergingPress{KnormPress{0.3}}, Observation<float>{}, c.view());
  REQUIRE(c.lengths[0] == 2);
  float const w = 2.0f / (2.0f + std::sqrt(2.0f) + 1e-6f);
  CHECK(c.v[0] == Approx((1.0f + w * 2.0f) / (1.0f + w)));
  CHECK(c.v[1] == Approx(1.0f / (1.0f + w)));
  CHECK(c.v[2] == 5.0f);  // k1 ⟂ k2: similarity 0 < the best, untouched
  CHECK(c.v[3] == -5.0f);
  CHECK(c.k == std::vector<float>{1, 0, 0, 2, 3, 0});  // slots 0, 1 kept in place; slot 2 is past the length
  SECTION("a threshold above the similarity merges nothing") {
    kvc_test::OwnedCache<float> d(1, 1, 3, 2);
    d.k = {1, 0, 0, 2, 3, 1};  // cos(k2, k0) = 3 / √10 ≈ 0.95
    d.v = {1, 1, 5, -5, 2, 0};
    compress(cpu, MergingPress{KnormPress{0.3}, 0.96}, Observation<float>{}, d.view());
    CHECK(std::vector<float>(d.v.begin(), d.v.begin() + 4) == std::vector<float>{1, 1, 5, -5});
  }
}

}  // namespace KVC_TEST_TU
