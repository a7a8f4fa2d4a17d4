// CapPress: the bad inputs it rejects (docs/reliability.md). Its scores against kvpress are in
// tests/golden_tests/test_presses_golden.cpp.
#include <catch2/catch.hpp>

#include <cstdint>
#include <limits>
#include <vector>

#include "kvcompress/kvcompress.hpp"
#include "test_util.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using namespace kvcompress;

TEST_CASE("CapPress rejects bad parameters and inputs", "[press][cap][errors]") {
  constexpr std::int64_t kN = 20, kD = 8, kQ = 4;
  RopeConfig rc;
  rc.head_dim = static_cast<int>(kD);
  RotaryEmbedding const rope(rc);
  kvc_test::OwnedCache<float> cache(1, 2, kN, kD);
  cache.fill_random(51);
  std::vector<float> const queries = kvc_test::random_vector(static_cast<std::size_t>(kQ * kN * kD), 52);
  Observation<float> obs;
  obs.queries = make_tensor4(queries.data(), {1, kQ, kN, kD});
  obs.rope = &rope;
  CapPress press{0.5};
  SECTION("tau or epsilon out of range") {
    press.tau = std::numeric_limits<double>::infinity();
    REQUIRE_THROWS_WITH(compress(cpu, press, obs, cache.view()), Catch::Contains("CapPress tau must be finite, got inf"));
    press.tau = 5.0;
    press.epsilon = -1e-6;
    REQUIRE_THROWS_WITH(compress(cpu, press, obs, cache.view()),
                        Catch::Contains("CapPress epsilon must be finite and non-negative, got -1e-06"));
  }
  SECTION("queries or RoPE missing, n not above n_sink") {
    Observation<float> none;
    REQUIRE_THROWS_WITH(compress(cpu, press, none, cache.view()), Catch::Contains("observation.queries must be given"));
    obs.rope = nullptr;
    REQUIRE_THROWS_WITH(compress(cpu, press, obs, cache.view()), Catch::Contains("observation.rope must be set"));
    obs.rope = &rope;
    cache.lengths = {4, 20};
    REQUIRE_THROWS_WITH(compress(cpu, press, obs, cache.view()),
                        Catch::Contains("cache length n = 4 of row (batch 0, kv head 0) must exceed n_sink = 4"));
  }
}

}  // namespace KVC_TEST_TU
