// FinchPress: the bad inputs it rejects (docs/reliability.md) and the re-rotated positions. Its scores,
// kept sets and keys against kvpress are in tests/golden_tests/test_presses_golden.cpp.
#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

#include "kvcompress/kvcompress.hpp"
#include "test_util.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using namespace kvcompress;

namespace {

constexpr std::int64_t kB = 1, kH = 2, kQ = 4, kN = 40, kD = 8, kW = 5;

struct Setup {
  RotaryEmbedding rope{[] {
    RopeConfig c;
    c.head_dim = static_cast<int>(kD);
    return c;
  }()};
  kvc_test::OwnedCache<float> cache{kB, kH, kN, kD};
  std::vector<std::int32_t> positions = std::vector<std::int32_t>(static_cast<std::size_t>(kB * kH * kN));
  std::vector<float> window = kvc_test::random_vector(static_cast<std::size_t>(kB * kQ * kW * kD), 71);
  Setup() {
    cache.fill_random(72);
    for (std::size_t i = 0; i < positions.size(); ++i) positions[i] = static_cast<std::int32_t>(i % kN);
  }
  KVCacheView<float> view() {
    return make_cache_view(cache.k.data(), cache.v.data(), cache.extents, cache.layout, cache.lengths.data(), positions.data());
  }
  [[nodiscard]] Observation<float> observation() const {
    Observation<float> obs;
    obs.window_queries = make_tensor4(window.data(), {kB, kQ, kW, kD});
    obs.rope = &rope;
    obs.chunk_length = kN;
    return obs;
  }
};

}  // namespace

TEST_CASE("FinchPress rejects bad parameters and inputs", "[press][finch][errors]") {
  Setup s;
  FinchPress press{0.5, 0, true, true, kW};
  SECTION("window_size not given") {
    press.window_size = 0;
    REQUIRE_THROWS_WITH(compress(cpu, press, s.observation(), s.view()),
                        Catch::Contains("FinchPress window_size (the question's tokens) must be positive, got 0"));
  }
  SECTION("chunk_length negative or too short for the window") {
    press.chunk_length = -1;
    REQUIRE_THROWS_WITH(compress(cpu, press, s.observation(), s.view()),
                        Catch::Contains("FinchPress chunk_length must be non-negative (0: no chunks), got -1"));
    press.chunk_length = 10;
    REQUIRE_THROWS_WITH(compress(cpu, press, s.observation(), s.view()),
                        Catch::Contains("FinchPress chunk_length = 10 must exceed window_size / (1 - compression_ratio) = 10"));
  }
  SECTION("re-rotation without RoPE") {
    auto obs = s.observation();
    obs.rope = nullptr;
    REQUIRE_THROWS_WITH(compress(cpu, press, obs, s.view()),
                        Catch::Contains("observation.rope must be set: FinchPress re-applies RoPE to the kept keys"));
    REQUIRE(s.cache.lengths[0] == kN);  // nothing moved
  }
}

TEST_CASE("FinchPress keeps the question window, re-rotated rows hold positions 0 … n_kept − 1", "[press][finch]") {
  Setup s;
  compress(cpu, FinchPress{0.5, 0, true, true, kW}, s.observation(), s.view());
  for (std::int64_t r = 0; r < kB * kH; ++r) {
    REQUIRE(s.cache.lengths[static_cast<std::size_t>(r)] == kept_count(kN, 0.5));
    for (std::int64_t j = 0; j < 20; ++j) CHECK(s.positions[static_cast<std::size_t>(r * kN + j)] == j);
  }
  Setup chunked;
  compress(cpu, FinchPress{0.5, 16, true, false, kW}, chunked.observation(), chunked.view());
  // chunks of 16, 16 and 8: 8 + 8 + 4 kept; the window (slots 35 … 39) is the top of the last chunk
  for (std::int64_t r = 0; r < kB * kH; ++r) {
    REQUIRE(chunked.cache.lengths[static_cast<std::size_t>(r)] == 20);
    std::vector<std::int32_t> const last(chunked.positions.begin() + r * kN + 16, chunked.positions.begin() + r * kN + 20);
    for (auto p : last) CHECK(p >= 35);
  }
}

}  // namespace KVC_TEST_TU
