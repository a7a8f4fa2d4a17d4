#pragma once
/// \file
/// \brief `PrefillSnapshot`: a context prefilled once and kept — the cache, the forward record (pre-RoPE
/// queries of every layer) that presses read, and the last position's logits — so that an evaluation
/// compresses copies of it with every press and ratio instead of prefilling the context again for each.
/// A compressed copy equals what a fresh prefill followed by the same press gives: presses read only the
/// cache and the record, and neither is shared with the copy.

#include <chrono>
#include <cstdint>
#include <utility>
#include <vector>

#include "kvc_engine/compression/compressor.hpp"
#include "kvc_engine/forward/engine.hpp"

namespace kvc_engine {

struct PrefillSnapshot {
  KVCache cache;
  ForwardRecord record;
  std::vector<float> last_logits;  // [vocab]: the next-token logits after the context
  double seconds = 0.0;            // the prefill's wall time
};

/// \brief Prefills `context` on a fresh cache with room for `extra_tokens` more (the question and the
/// answer later fed to each copy, so no copy has to grow). `keep_hidden_states`: the record keeps every
/// layer's attention input too, for compressors that read it (ObservationNeeds::hidden_states).
[[nodiscard]] inline PrefillSnapshot prefill_snapshot(Engine& engine, std::vector<std::int32_t> const& context,
                                                      std::int64_t extra_tokens = 0, bool keep_hidden_states = false) {
  KVC_CHECK(extra_tokens >= 0, "extra_tokens must be non-negative, got " << extra_tokens);
  PrefillSnapshot s{engine.new_cache(static_cast<std::int64_t>(context.size()) + extra_tokens), {}, {}, 0.0};
  s.record.keep_hidden_states = keep_hidden_states;
  auto const start = std::chrono::steady_clock::now();
  s.last_logits = engine.forward(s.cache, context, Logits::kLast, nullptr, &s.record);
  s.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return s;
}

struct CompressedCopy {
  KVCache cache;
  double compress_seconds = 0.0;  // the press alone, without the copy
};

/// \brief A copy of the snapshot's cache, compressed by the compressor's after-prefill hook (none: the
/// full cache). The snapshot is left as it was.
[[nodiscard]] inline CompressedCopy compressed_copy(Engine& engine, PrefillSnapshot const& snapshot,
                                                    Compressor const& compressor) {
  CompressedCopy c{snapshot.cache, 0.0};
  if (compressor.after_prefill || compressor.after_prefill_model) {
    auto const start = std::chrono::steady_clock::now();
    if (compressor.after_prefill_model) compressor.after_prefill_model(engine, c.cache, snapshot.record);
    else engine.compress(c.cache, snapshot.record, compressor.after_prefill, compressor.needs);
    c.compress_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  return c;
}

}  // namespace kvc_engine
