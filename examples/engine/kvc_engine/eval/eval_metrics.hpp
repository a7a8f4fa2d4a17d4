#pragma once
/// \file
/// \brief What `kvcompress-eval` measures: exact-match answers counted into a `Tally`, and the KL divergence
/// between the next-token distributions of the full and of a compressed cache.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kvcompress/core/error.hpp"

namespace kvc_engine {

/// \brief True when greedy decoding produced exactly the answer tokens (tools/train's `answer_accuracy`).
[[nodiscard]] inline bool exact_match(std::vector<std::int32_t> const& generated, std::vector<std::int32_t> const& answer) {
  return generated == answer;
}

/// \brief Correct answers out of those counted.
struct Tally {
  std::int64_t correct = 0;
  std::int64_t total = 0;

  void add(bool right) noexcept {
    correct += right ? 1 : 0;
    ++total;
  }
  [[nodiscard]] double rate() const {
    KVC_CHECK(total > 0, "an accuracy over no examples is undefined");
    return static_cast<double>(correct) / static_cast<double>(total);
  }
};

/// \brief KL(P ‖ Q) = Σ_i P_i (log P_i − log Q_i) of P = softmax(p_logits), Q = softmax(q_logits), in double
/// (a float sum over a vocabulary loses the small divergences a mild compression causes).
/// \param p_logits [n] the reference (full cache) \param q_logits [n] the compressed cache's
[[nodiscard]] inline double kl_divergence(float const* p_logits, float const* q_logits, std::int64_t n) {
  KVC_CHECK(n > 0, "kl_divergence needs at least one logit, got " << n);
  auto log_normaliser = [n](float const* x, char const* which) {
    double top = -INFINITY;
    for (std::int64_t i = 0; i < n; ++i) {
      KVC_CHECK(std::isfinite(x[i]), which << " logit " << i << " is " << x[i]);
      top = std::max(top, static_cast<double>(x[i]));
    }
    double sum = 0.0;
    for (std::int64_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(x[i]) - top);
    return top + std::log(sum);
  };
  double const zp = log_normaliser(p_logits, "the reference's"), zq = log_normaliser(q_logits, "the compared");
  double kl = 0.0;
  for (std::int64_t i = 0; i < n; ++i) {
    double const lp = static_cast<double>(p_logits[i]) - zp, lq = static_cast<double>(q_logits[i]) - zq;
    kl += std::exp(lp) * (lp - lq);
  }
  return kl;
}

}  // namespace kvc_engine
