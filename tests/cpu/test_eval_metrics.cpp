// kvcompress-eval's metrics: exact-match answers counted by Tally, and the KL divergence between two
// next-token distributions against values derived by hand in double precision.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kvc_engine/eval/eval_metrics.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using Catch::Matchers::Contains;

TEST_CASE("eval metrics: an answer is right only when every token matches", "[eval][metrics]") {
  using Ids = std::vector<std::int32_t>;
  CHECK(kvc_engine::exact_match(Ids{7, 8, 9}, Ids{7, 8, 9}));
  CHECK_FALSE(kvc_engine::exact_match(Ids{7, 8, 1}, Ids{7, 8, 9}));
  CHECK_FALSE(kvc_engine::exact_match(Ids{7, 8}, Ids{7, 8, 9}));
  CHECK_FALSE(kvc_engine::exact_match(Ids{9, 8, 7}, Ids{7, 8, 9}));
}

TEST_CASE("eval metrics: Tally counts right answers out of all", "[eval][metrics]") {
  kvc_engine::Tally t;
  for (bool right : {true, false, true, true, false}) t.add(right);
  CHECK(t.correct == 3);
  CHECK(t.total == 5);
  CHECK(t.rate() == 0.6);
}

TEST_CASE("eval metrics: an accuracy over no examples", "[eval][metrics]") {
  CHECK_THROWS_WITH(kvc_engine::Tally{}.rate(), Contains("an accuracy over no examples is undefined"));
}

TEST_CASE("eval metrics: KL divergence of two-way distributions in closed form", "[eval][metrics]") {
  // P = (1/2, 1/2) from logits (0, 0); Q = (1/4, 3/4) from logits (0, ln 3):
  // KL(P ‖ Q) = ½ ln(½ / ¼) + ½ ln(½ / ¾) = ½ ln(4/3).
  float const p[2] = {0.0f, 0.0f};
  float const q[2] = {0.0f, static_cast<float>(std::log(3.0))};
  double const e = std::exp(static_cast<double>(q[1]));  // 3 up to the float rounding of ln 3
  double const q1 = e / (1.0 + e);
  double const expected = 0.5 * std::log(0.5 / (1.0 - q1)) + 0.5 * std::log(0.5 / q1);
  CHECK(std::abs(expected - 0.5 * std::log(4.0 / 3.0)) < 1e-7);
  CHECK(kvc_engine::kl_divergence(p, q, 2) == Approx(expected).epsilon(1e-12));
}

TEST_CASE("eval metrics: KL divergence over a vocabulary against a direct double sum", "[eval][metrics]") {
  std::vector<float> p(50), q(50);
  for (std::size_t i = 0; i < p.size(); ++i) {
    p[i] = static_cast<float>(std::sin(0.7 * static_cast<double>(i)) * 4.0);
    q[i] = static_cast<float>(std::cos(0.3 * static_cast<double>(i)) * 3.0 + 1000.0);  // an offset changes nothing
  }
  double zp = 0.0, zq = 0.0;
  for (std::size_t i = 0; i < p.size(); ++i) {
    zp += std::exp(static_cast<double>(p[i]));
    zq += std::exp(static_cast<double>(q[i]) - 1000.0);
  }
  double expected = 0.0;
  for (std::size_t i = 0; i < p.size(); ++i) {
    double const P = std::exp(static_cast<double>(p[i])) / zp, Q = std::exp(static_cast<double>(q[i]) - 1000.0) / zq;
    expected += P * std::log(P / Q);
  }
  CHECK(expected > 0.1);
  CHECK(kvc_engine::kl_divergence(p.data(), q.data(), 50) == Approx(expected).epsilon(1e-9));
  CHECK(kvc_engine::kl_divergence(p.data(), p.data(), 50) == 0.0);
}

TEST_CASE("eval metrics: KL divergence of a non-finite logit", "[eval][metrics]") {
  float const p[3] = {0.0f, 1.0f, 2.0f};
  float const q[3] = {0.0f, std::numeric_limits<float>::quiet_NaN(), 2.0f};
  CHECK_THROWS_WITH(kvc_engine::kl_divergence(p, q, 3), Contains("the compared logit 1 is nan"));
  CHECK_THROWS_WITH(kvc_engine::kl_divergence(q, p, 3), Contains("the reference's logit 1 is nan"));
}

TEST_CASE("eval metrics: KL divergence of no logits", "[eval][metrics]") {
  float const p[1] = {0.0f};
  CHECK_THROWS_WITH(kvc_engine::kl_divergence(p, p, 0), Contains("at least one logit, got 0"));
}

}  // namespace KVC_TEST_TU
