#pragma once
/// \file
/// \brief `greedy_answer`: an answer decoded the way kvpress's pipeline decodes it after compression — the
/// question forwarded over the (compressed) cache in one pass at the positions after the context, its
/// last logits giving the first token, then one token per pass; a stop token ends the answer except as its
/// first token (the pipeline does not check the first). Records each token's top-2 logit margin (how
/// close a differing implementation is to choosing another token) and times the single-token passes.

#include <chrono>
#include <cstdint>
#include <limits>
#include <vector>

#include "kvc_engine/engine.hpp"
#include "kvc_engine/sampling.hpp"

namespace kvc_engine {

struct GreedyAnswer {
  std::vector<std::int32_t> tokens;
  std::vector<float> margins;     ///< [tokens]: largest minus second largest logit at each step
  std::int64_t decode_passes = 0;  ///< single-token passes (every token after the first)
  double decode_seconds = 0.0;     ///< their wall time
};

/// \brief Top-1 minus top-2 of `logits` [n] (n ≥ 2).
[[nodiscard]] inline float top2_margin(float const* logits, std::int64_t n) {
  float a = -std::numeric_limits<float>::infinity(), b = a;
  for (std::int64_t i = 0; i < n; ++i) {
    if (logits[i] > a) {
      b = a;
      a = logits[i];
    } else if (logits[i] > b) {
      b = logits[i];
    }
  }
  return a - b;
}

/// `greedy_answer`'s stop token when decoding runs to its budget (token ids are never negative).
inline constexpr std::int32_t kNoStopToken = -1;

/// \param question       forwarded first; empty: the answer starts from `context_logits`
/// \param context_logits [vocab] the context's last logits (used when there is no question)
/// \param max_tokens     at most this many tokens (≥ 1)
/// \param stop           the end-of-turn token decoding stops at, or kNoStopToken (a plain
///                       int, not std::optional: gcc 12 reports optional<int> arguments as maybe uninitialized)
[[nodiscard]] inline GreedyAnswer greedy_answer(Engine& engine, KVCache& cache, std::vector<std::int32_t> const& question,
                                                std::vector<float> const& context_logits, std::int64_t max_tokens,
                                                std::int32_t stop) {
  using clock = std::chrono::steady_clock;
  KVC_CHECK(max_tokens >= 1, "max_tokens must be at least 1, got " << max_tokens);
  std::int64_t const vocab = engine.model().config.vocab_size;
  std::vector<float> logits = question.empty() ? context_logits : engine.forward(cache, question, Logits::kLast);
  GreedyAnswer a;
  a.tokens.push_back(argmax(logits.data(), vocab));
  a.margins.push_back(top2_margin(logits.data(), vocab));
  while (static_cast<std::int64_t>(a.tokens.size()) < max_tokens && !(stop != kNoStopToken && a.tokens.size() > 1 && a.tokens.back() == stop)) {
    auto const start = clock::now();
    logits = engine.forward(cache, &a.tokens.back(), 1, Logits::kLast);
    a.decode_seconds += std::chrono::duration<double>(clock::now() - start).count();
    ++a.decode_passes;
    a.tokens.push_back(argmax(logits.data(), vocab));
    a.margins.push_back(top2_margin(logits.data(), vocab));
  }
  return a;
}

}  // namespace kvc_engine
