// The score → select → compact machinery, on Knorm (the simplest scorer).
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>

#include "test_util.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using namespace kvcompress;

TEST_CASE("kept_count follows kvpress's int(n * (1 - r)) arithmetic", "[core]") {
  CHECK(kept_count(256, 0.2) == 204);
  CHECK(kept_count(23, 0.4) == 13);
  CHECK(kept_count(28, 0.4) == 16);
  CHECK(kept_count(100, 0.0) == 100);
  CHECK(kept_count(3, 0.9) == 1);  // never empties a row by truncation
  CHECK(kept_count(256, 1.0) == 0);  // a whole layer evicted on purpose (per-layer ratios)
}

TEST_CASE("compress with Knorm keeps the lowest-norm keys in position order", "[core]") {
  kvc_test::OwnedCache<float> c(2, 3, 37, 8);
  c.fill_random(7);
  auto const before = c;
  auto view = c.view();
  KnormPress const press{0.4};
  compress(cpu, press, Observation<float>{}, view);
  for (std::int64_t r = 0; r < 6; ++r) {
    REQUIRE(c.lengths[r] == 22);
    // Expected: norms of the original row, the 22 smallest, ascending positions.
    std::vector<std::pair<float, int>> norms;
    for (int s = 0; s < 37; ++s) {
      float ss = 0;
      for (int d = 0; d < 8; ++d) ss += before.k[(r * 37 + s) * 8 + d] * before.k[(r * 37 + s) * 8 + d];
      norms.emplace_back(std::sqrt(ss), s);
    }
    std::sort(norms.begin(), norms.end());
    std::vector<int> kept;
    for (int j = 0; j < 22; ++j) kept.push_back(norms[j].second);
    std::sort(kept.begin(), kept.end());
    for (int j = 0; j < 22; ++j)
      for (int d = 0; d < 8; ++d) {
        CHECK(c.k[(r * 37 + j) * 8 + d] == before.k[(r * 37 + kept[j]) * 8 + d]);
        CHECK(c.v[(r * 37 + j) * 8 + d] == before.v[(r * 37 + kept[j]) * 8 + d]);
      }
  }
}

}  // namespace KVC_TEST_TU
