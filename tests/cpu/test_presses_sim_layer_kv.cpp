// SimLayerKVPress: the bad inputs it rejects (docs/reliability.md) and what a lazy layer keeps. Its
// statistic and decisions against kvpress are in tests/golden_tests/test_presses_golden.cpp.
#include <catch2/catch.hpp>

#include <cstdint>
#include <limits>
#include <vector>

#include "kvcompress/kvcompress.hpp"
#include "test_util.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using namespace kvcompress;

namespace {

constexpr std::int64_t kB = 2, kH = 2, kQ = 4, kN = 30, kD = 8, kW = 2;

struct Setup {
  kvc_test::OwnedCache<float> cache{kB, kH, kN, kD};
  std::vector<std::int32_t> positions = std::vector<std::int32_t>(static_cast<std::size_t>(kB * kH * kN));
  std::vector<float> window = kvc_test::random_vector(static_cast<std::size_t>(kB * kQ * kW * kD), 61);
  Setup() {
    cache.fill_random(62);
    for (std::size_t i = 0; i < positions.size(); ++i) positions[i] = static_cast<std::int32_t>(i % kN);
  }
  KVCacheView<float> view() {
    return make_cache_view(cache.k.data(), cache.v.data(), cache.extents, cache.layout, cache.lengths.data(), positions.data());
  }
  [[nodiscard]] Observation<float> observation() const {
    Observation<float> obs;
    obs.window_queries = make_tensor4(window.data(), {kB, kQ, kW, kD});
    return obs;
  }
};

}  // namespace

TEST_CASE("SimLayerKVPress rejects bad parameters and inputs", "[press][simlayerkv][errors]") {
  Setup s;
  SimLayerKVPress press{0.5, kW, 8, 4};
  SECTION("parameters out of range") {
    press.lazy_threshold = 1.5;
    REQUIRE_THROWS_WITH(compress(cpu, press, s.observation(), s.view()),
                        Catch::Contains("SimLayerKVPress lazy_threshold must be in [0, 1], got 1.5"));
    press.lazy_threshold = 0.5;
    press.n_last = 0;
    REQUIRE_THROWS_WITH(compress(cpu, press, s.observation(), s.view()), Catch::Contains("SimLayerKVPress n_last must be positive, got 0"));
    press.n_last = kW;
    press.n_recent = 1;
    REQUIRE_THROWS_WITH(compress(cpu, press, s.observation(), s.view()),
                        Catch::Contains("SimLayerKVPress n_recent must be at least n_last = 2, got 1"));
    press.n_recent = 8;
    press.n_initial = -1;
    REQUIRE_THROWS_WITH(compress(cpu, press, s.observation(), s.view()),
                        Catch::Contains("SimLayerKVPress n_initial must be non-negative, got -1"));
  }
  SECTION("rows of different lengths") {
    s.cache.lengths[3] = 29;
    REQUIRE_THROWS_WITH(compress(cpu, press, s.observation(), s.view()),
                        Catch::Contains("SimLayerKVPress needs one length for every row") && Catch::Contains("row 3 holds 29, row 0 holds 30"));
  }
  SECTION("window queries missing, or of another window") {
    REQUIRE_THROWS_WITH(compress(cpu, press, Observation<float>{}, s.view()),
                        Catch::Contains("observation.window_queries (post-RoPE queries of the last 2 tokens) or observation.attention must be given"));
    press.n_last = 3;
    REQUIRE_THROWS_WITH(compress(cpu, press, s.observation(), s.view()),
                        Catch::Contains("observation.window_queries holds 2 tokens, window_size = 3"));
  }
  SECTION("a non-finite window query") {
    s.window[(1 * kQ + 2) * kW * kD + 5] = std::numeric_limits<float>::quiet_NaN();
    REQUIRE_THROWS_WITH(compress(cpu, press, s.observation(), s.view()), Catch::Contains("observation.window_queries[1, 2, 0, 5]"));
    REQUIRE(s.cache.lengths[0] == kN);  // nothing moved
  }
}

TEST_CASE("SimLayerKVPress: a lazy layer keeps the initial and recent entries, otherwise nothing moves", "[press][simlayerkv]") {
  Setup s;
  auto const obs = s.observation();
  SECTION("threshold 0: every layer is lazy") {
    compress(cpu, SimLayerKVPress{0.0, kW, 8, 4}, obs, s.view());
    for (std::int64_t r = 0; r < kB * kH; ++r) {
      REQUIRE(s.cache.lengths[static_cast<std::size_t>(r)] == 4 + 8 - kW);
      std::vector<std::int32_t> const kept(s.positions.begin() + r * kN, s.positions.begin() + r * kN + 10);
      CHECK(kept == std::vector<std::int32_t>{0, 1, 2, 3, 24, 25, 26, 27, 28, 29});
    }
  }
  SECTION("threshold 1 (kvpress's default) never compresses and reads nothing") {
    compress(cpu, SimLayerKVPress{}, Observation<float>{}, s.view());
    for (auto l : s.cache.lengths) CHECK(l == kN);
  }
  SECTION("rows of at most n_initial + n_recent + n_last entries are left as they are") {
    compress(cpu, SimLayerKVPress{0.0, kW, 24, 4}, obs, s.view());
    for (auto l : s.cache.lengths) CHECK(l == kN);
  }
  SECTION("n_recent == n_last (kvpress would grow the cache) leaves the layer as it is") {
    compress(cpu, SimLayerKVPress{0.0, kW, kW, 4}, obs, s.view());
    for (auto l : s.cache.lengths) CHECK(l == kN);
  }
  SECTION("the statistic is a fraction of the window attention") {
    SimLayerKVPress const press{0.5, kW, 8, 4};
    std::vector<std::byte> scratch(compress_workspace_bytes(cpu, press, obs, s.view()));
    Workspace ws(scratch.data(), scratch.size());
    double const x = press.lazy_score(cpu, obs, s.view(), ws);
    CHECK(x > 0.0);
    CHECK(x < 1.0);
  }
}

}  // namespace KVC_TEST_TU
