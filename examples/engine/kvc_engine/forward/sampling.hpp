#pragma once
/// \file
/// \brief Next-token choice: greedy (argmax, the first of equal maxima, as torch.argmax) or sampling
/// from softmax(logits / temperature) with a seeded, platform-independent generator.

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "kvcompress/core/error.hpp"

namespace kvc_engine {

/// \brief Index of the largest logit; the first one among equals. NaN is an error. \param logits [n]
[[nodiscard]] inline std::int32_t argmax(float const* logits, std::int64_t n) {
  KVC_CHECK(n > 0, "argmax needs at least one logit, got " << n);
  std::int64_t best = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    KVC_CHECK(!std::isnan(logits[i]), "logit " << i << " is NaN");
    if (logits[i] > logits[best]) best = i;
  }
  return static_cast<std::int32_t>(best);
}

class Sampler {
 public:
  /// \brief Greedy decoding.
  Sampler() = default;
  /// \brief Samples from softmax(logits / temperature); temperature 0 is greedy.
  Sampler(double temperature, std::uint64_t seed) : temperature_(temperature), rng_(seed) {
    KVC_CHECK(std::isfinite(temperature) && temperature >= 0.0,
              "temperature must be finite and non-negative, got " << temperature);
  }

  [[nodiscard]] double temperature() const noexcept { return temperature_; }

  /// \param logits [n]
  [[nodiscard]] std::int32_t operator()(float const* logits, std::int64_t n) {
    std::int32_t const best = argmax(logits, n);
    if (temperature_ == 0.0) return best;
    double const top = logits[best];
    weights_.resize(static_cast<std::size_t>(n));
    double sum = 0.0;
    for (std::int64_t i = 0; i < n; ++i) {
      KVC_CHECK(std::isfinite(logits[i]) || logits[i] == -INFINITY, "logit " << i << " is " << logits[i]);
      sum += (weights_[static_cast<std::size_t>(i)] = std::exp((logits[i] - top) / temperature_));
    }
    // 53 random bits → [0, 1): the same draw on every platform (std::uniform_real_distribution is not).
    double const u = static_cast<double>(rng_() >> 11) * 0x1.0p-53 * sum;
    double acc = 0.0;
    for (std::int64_t i = 0; i < n; ++i) {
      acc += weights_[static_cast<std::size_t>(i)];
      if (u < acc) return static_cast<std::int32_t>(i);
    }
    return best;  // u within rounding of the total
  }

 private:
  double temperature_ = 0.0;
  std::mt19937_64 rng_{0};
  std::vector<double> weights_;
};

}  // namespace kvc_engine
