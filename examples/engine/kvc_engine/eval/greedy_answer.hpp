#pragma once
/// \file
/// \brief `greedy_answer`: an answer decoded the way kvpress's pipeline decodes it after compression — the
/// question forwarded over the (compressed) cache in one pass at the positions after the context, its
/// last logits giving the first token, then one token per pass; a stop token ends the answer except as its
/// first token (the pipeline does not check the first). Records each token's top-2 logit margin (how
/// close a differing implementation is to choosing another token) and times the single-token passes.
/// `greedy_answers` decodes the answers over several caches at once (`Engine::forward_batch`): every cache
/// continues the same context with the same question, so the batch shares each pass's weight reads.

#include <chrono>
#include <cstdint>
#include <limits>
#include <vector>

#include "kvcompress/core/error.hpp"

#include "kvc_engine/forward/engine.hpp"
#include "kvc_engine/forward/sampling.hpp"

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
/// \param compressor     its `after_step` runs after every pass (the question's, then each token's), as in
///                       `Engine::generate`: a decoding press (CAM); null: none
[[nodiscard]] inline GreedyAnswer greedy_answer(Engine& engine, KVCache& cache, std::vector<std::int32_t> const& question,
                                                std::vector<float> const& context_logits, std::int64_t max_tokens,
                                                std::int32_t stop, Compressor const* compressor = nullptr) {
  using clock = std::chrono::steady_clock;
  KVC_CHECK(max_tokens >= 1, "max_tokens must be at least 1, got " << max_tokens);
  std::int64_t const vocab = engine.model().config.vocab_size;
  std::vector<float> logits = question.empty() ? context_logits : engine.forward(cache, question, Logits::kLast, compressor);
  GreedyAnswer a;
  a.tokens.push_back(argmax(logits.data(), vocab));
  a.margins.push_back(top2_margin(logits.data(), vocab));
  while (static_cast<std::int64_t>(a.tokens.size()) < max_tokens && !(stop != kNoStopToken && a.tokens.size() > 1 && a.tokens.back() == stop)) {
    auto const start = clock::now();
    logits = engine.forward(cache, &a.tokens.back(), 1, Logits::kLast, compressor);
    a.decode_seconds += std::chrono::duration<double>(clock::now() - start).count();
    ++a.decode_passes;
    a.tokens.push_back(argmax(logits.data(), vocab));
    a.margins.push_back(top2_margin(logits.data(), vocab));
  }
  return a;
}

/// \brief `greedy_answer` over every cache of `caches` at once: the question in one batched pass, then one
/// batched single-token pass per step over the answers not yet finished. The time of a batched pass is
/// shared equally among the answers it advanced. Equal to `greedy_answer` per cache up to the rounding
/// of the batched linear layers (`Engine::forward_batch`).
/// \param caches distinct caches of the same context at the same length (each press's compressed copy)
[[nodiscard]] inline std::vector<GreedyAnswer> greedy_answers(Engine& engine, std::vector<KVCache*> const& caches,
                                                              std::vector<std::int32_t> const& question,
                                                              std::vector<float> const& context_logits,
                                                              std::int64_t max_tokens, std::int32_t stop) {
  using clock = std::chrono::steady_clock;
  KVC_CHECK(max_tokens >= 1, "max_tokens must be at least 1, got " << max_tokens);
  std::int64_t const vocab = engine.model().config.vocab_size, B = static_cast<std::int64_t>(caches.size());
  std::vector<GreedyAnswer> answers(caches.size());
  std::vector<float> logits;  // [B, vocab] of the last pass
  if (question.empty()) {
    KVC_CHECK(static_cast<std::int64_t>(context_logits.size()) == vocab,
              "context_logits holds " << context_logits.size() << " values, the vocabulary " << vocab);
    for (std::int64_t b = 0; b < B; ++b) logits.insert(logits.end(), context_logits.begin(), context_logits.end());
  } else {
    std::vector<std::int32_t> tokens;  // [B, question]
    for (std::int64_t b = 0; b < B; ++b) tokens.insert(tokens.end(), question.begin(), question.end());
    logits = engine.forward_batch(caches, tokens.data(), static_cast<std::int64_t>(question.size()));
  }
  std::vector<std::size_t> active(caches.size());  // answers still decoding, in the order of `logits`' rows
  for (std::size_t b = 0; b < active.size(); ++b) active[b] = b;
  std::vector<KVCache*> pass_caches;
  std::vector<std::int32_t> pass_tokens;
  while (true) {
    pass_caches.clear();
    pass_tokens.clear();
    for (std::size_t i = 0; i < active.size(); ++i) {
      GreedyAnswer& a = answers[active[i]];
      float const* row = logits.data() + static_cast<std::int64_t>(i) * vocab;
      a.tokens.push_back(argmax(row, vocab));
      a.margins.push_back(top2_margin(row, vocab));
      bool const done = static_cast<std::int64_t>(a.tokens.size()) >= max_tokens ||
                        (stop != kNoStopToken && a.tokens.size() > 1 && a.tokens.back() == stop);
      if (done) continue;
      active[pass_caches.size()] = active[i];
      pass_caches.push_back(caches[active[i]]);
      pass_tokens.push_back(a.tokens.back());
    }
    active.resize(pass_caches.size());
    if (active.empty()) return answers;
    auto const start = clock::now();
    logits = engine.forward_batch(pass_caches, pass_tokens.data(), 1);
    double const share = std::chrono::duration<double>(clock::now() - start).count() / static_cast<double>(active.size());
    for (std::size_t const b : active) {
      answers[b].decode_seconds += share;
      ++answers[b].decode_passes;
    }
  }
}

}  // namespace kvc_engine
