// The engine's next-token choice: greedy is torch.argmax; temperature sampling draws from
// softmax(logits / T), reproducibly for a seed.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "kvc_engine/forward/sampling.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using Catch::Matchers::Contains;
using kvc_engine::Sampler;

TEST_CASE("sampling: argmax takes the first of equal maxima", "[engine][sampling]") {
  std::vector<float> const logits{0.5f, 2.0f, -1.0f, 2.0f};
  CHECK(kvc_engine::argmax(logits.data(), 4) == 1);
  Sampler greedy;
  CHECK(greedy(logits.data(), 4) == 1);
  Sampler zero(0.0, 7);
  CHECK(zero(logits.data(), 4) == 1);
}

TEST_CASE("sampling: NaN logits, an empty vocabulary and a negative temperature are errors", "[engine][sampling]") {
  std::vector<float> const logits{0.5f, NAN};
  REQUIRE_THROWS_WITH(kvc_engine::argmax(logits.data(), 2), Contains("logit 1 is NaN"));
  REQUIRE_THROWS_WITH(kvc_engine::argmax(logits.data(), 0), Contains("at least one logit"));
  REQUIRE_THROWS_WITH(Sampler(-1.0, 0), Contains("temperature must be finite and non-negative, got -1"));
}

TEST_CASE("sampling: frequencies follow softmax(logits / temperature)", "[engine][sampling]") {
  std::vector<float> const logits{1.0f, 0.0f, -1.0f, 2.0f, -INFINITY};
  double const temperature = 0.7;
  std::vector<double> p(logits.size());
  double sum = 0.0;
  for (std::size_t i = 0; i < p.size(); ++i) sum += (p[i] = std::exp(static_cast<double>(logits[i]) / temperature));
  for (double& x : p) x /= sum;
  Sampler sampler(temperature, 1234);
  constexpr int kDraws = 40000;
  std::vector<int> counts(logits.size(), 0);
  for (int i = 0; i < kDraws; ++i) ++counts[static_cast<std::size_t>(sampler(logits.data(), 5))];
  for (std::size_t i = 0; i < p.size(); ++i) {
    double const sigma = std::sqrt(kDraws * p[i] * (1.0 - p[i]));
    INFO("token " << i << ": " << counts[i] << " draws, expected " << kDraws * p[i]);
    CHECK(std::abs(counts[i] - kDraws * p[i]) <= 5.0 * sigma + 1e-9);
  }
  CHECK(counts[4] == 0);
}

TEST_CASE("sampling: the same seed gives the same draws, another seed others", "[engine][sampling]") {
  std::vector<float> const logits{0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f, 0.7f, 0.8f};
  auto draws = [&](std::uint64_t seed) {
    Sampler s(1.0, seed);
    std::vector<int> out;
    for (int i = 0; i < 64; ++i) out.push_back(s(logits.data(), 8));
    return out;
  };
  CHECK(draws(42) == draws(42));
  CHECK(draws(42) != draws(43));
}

}  // namespace KVC_TEST_TU
