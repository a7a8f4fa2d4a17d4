// CURPress: the bad inputs it rejects (docs/reliability.md) and properties that follow from its
// definition. Its scores against kvpress are in tests/golden_tests/test_presses_golden.cpp.
#include <catch2/catch.hpp>

#include <cstdint>
#include <limits>
#include <vector>

#include "kvcompress/kvcompress.hpp"
#include "test_util.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using namespace kvcompress;

TEST_CASE("CURPress rejects bad parameters and inputs", "[press][cur][errors]") {
  kvc_test::OwnedCache<float> cache(2, 2, 40, 8);
  cache.fill_random(41);
  Observation<float> const obs;
  CURPress press{0.5};
  SECTION("negative num_sinks") {
    press.num_sinks = -1;
    REQUIRE_THROWS_WITH(compress(cpu, press, obs, cache.view()), Catch::Contains("CURPress num_sinks must be non-negative, got -1"));
  }
  SECTION("local_window_size not positive") {
    press.local_window_size = 0;
    REQUIRE_THROWS_WITH(compress(cpu, press, obs, cache.view()),
                        Catch::Contains("CURPress local_window_size must be positive, got 0"));
    press.use_local_approximation = false;  // not read then
    REQUIRE_NOTHROW(compress(cpu, press, obs, cache.view()));
  }
  SECTION("projection missing or not finite") {
    press.use_random_leverage = true;
    REQUIRE_THROWS_WITH(compress(cpu, press, obs, cache.view()),
                        Catch::Contains("CURPress projection must be given when use_random_leverage is true: [head_dim, 20] = [8, 20]"));
    std::vector<float> g(8 * 20, 0.25f);
    g[17] = std::numeric_limits<float>::infinity();
    press.projection = g.data();
    REQUIRE_THROWS_WITH(compress(cpu, press, obs, cache.view()), Catch::Contains("CURPress projection[17] = inf is not finite"));
  }
  SECTION("a window whose squared norms sum to 0") {
    for (std::int64_t i = 16 * 8; i < 32 * 8; ++i) cache.k[static_cast<std::size_t>(i)] = 0.0f;  // batch 0, head 0, window 1
    REQUIRE_THROWS_WITH(compress(cpu, press, obs, cache.view()),
                        Catch::Contains("non-finite score") && Catch::Contains("(batch 0, kv head 0, slot 4)"));
    REQUIRE(cache.lengths[0] == 40);  // nothing moved
  }
}

TEST_CASE("CURPress: sinks score 1, each row sums to 1 outside them, rows of any length", "[press][cur]") {
  kvc_test::OwnedCache<float> cache(1, 2, 40, 8);
  cache.fill_random(42);
  cache.lengths = {40, 23};
  for (CurLeverage type : {CurLeverage::kKey, CurLeverage::kValue, CurLeverage::kKvAvg, CurLeverage::kKvProduct}) {
    CURPress const press{0.5, 3, type};
    auto const s = score(cpu, press, Observation<float>{}, cache.view());
    for (std::int64_t row = 0; row < 2; ++row) {
      double rest = 0.0;
      for (std::int64_t i = 0; i < cache.lengths[static_cast<std::size_t>(row)]; ++i) {
        float const x = s[static_cast<std::size_t>(row * 40 + i)];
        if (i < 3) CHECK(x == 1.0f);
        else rest += x;
      }
      // The row sums to 1 before the sinks are overwritten, so the rest is below 1.
      CHECK(rest > 0.0);
      CHECK(rest < 1.0);
    }
  }
}

}  // namespace KVC_TEST_TU
