#pragma once
/// \file
/// \brief KeyRerotation: compress with the inner press, then move every kept key's RoPE phase from
/// its original position p to its new slot j (positions 0 … n_kept − 1 of the row), as if the kept
/// tokens had been the whole prompt. The cached keys are post-RoPE, a·R_p·k; rotating them by
/// R_{j−p} (raw inverse frequencies, no attention scaling, which was applied once already) gives
/// a·R_j·k, for every RoPE variant. Generation then continues from the compressed length.
///
/// The original positions come from `cache.position(b, h, s)`; afterwards `positions` (when the
/// engine keeps them) hold the new positions j, which is what the keys now encode. Dynamic NTK
/// rotates with the inverse frequencies of the forward that produced the keys: its length is
/// `observation.position + chunk length`, or the largest cached position + 1 when the chunk
/// length is unknown.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "kvcompress/press/scorer.hpp"
#include "kvcompress/rope/rotary_embedding.hpp"

namespace kvcompress {

/// \tparam Press a scorer press (its own budgets, e.g. AdaKV's, are kept)
template <class Press>
struct KeyRerotationPress {
  Press press;

  template <class T, class L>
  [[nodiscard]] std::size_t compress_workspace_bytes(CpuDevice const& dev, Observation<T> const& obs,
                                                     KVCacheView<T, L> const& cache) const {
    std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads, cap = cache.extents.capacity;
    return detail::sum_bytes(Workspace::bytes_for<float>(static_cast<std::size_t>(cache.extents.head_dim / 2)),
                              Workspace::bytes_for<float>(detail::size_product(rows, cap)),
                              Workspace::bytes_for<std::int32_t>(static_cast<std::size_t>(rows)),
                              Workspace::bytes_for<std::int32_t>(detail::size_product(detail::thread_count(dev, rows), cap)),
                              press.workspace_bytes(dev, obs, cache));
  }

  template <class T, class L>
  void compress(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, Workspace ws) const {
    double const ratio = compression_ratio_of(press);
    check_compression_ratio(ratio);
    if (ratio == 0.0) return;
    std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads, cap = cache.extents.capacity;
    std::int64_t const d = cache.extents.head_dim, hd = d / 2;
    KVC_CHECK(obs.rope != nullptr, "observation.rope must be set: KeyRerotation re-applies RoPE to the kept keys");
    KVC_CHECK(obs.rope->head_dim() == d,
              "observation.rope head_dim = " << obs.rope->head_dim() << " does not match the cache head_dim = " << d);
    check_positions(cache);
    float* inv_freq = ws.take<float>(static_cast<std::size_t>(hd));  // [head_dim / 2]
    obs.rope->inv_freq_for(rotated_length(obs, cache), inv_freq);
    float* scores = ws.take<float>(static_cast<std::size_t>(rows * cap));
    kvcompress::score(dev, press, obs, cache, scores, ws);
    std::int32_t* counts = ws.take<std::int32_t>(static_cast<std::size_t>(rows));
    detail::row_kept_counts(dev, press, obs, cache, scores, counts, ws);
    keep_topk(
        dev, cache, scores, [counts](std::int64_t r, std::int64_t) { return counts[r]; }, ws,
        [&](std::int64_t r, std::int32_t const* idx, std::int32_t kept) {
          std::int64_t const b = r / cache.extents.kv_heads, h = r % cache.extents.kv_heads;
          std::int32_t* pos = cache.positions ? cache.positions + r * cap : nullptr;
          for (std::int32_t j = 0; j < kept; ++j) {
            // compaction carried the original position along with the entry
            auto const delta = static_cast<float>(j - (pos ? pos[j] : idx[j]));
            for (std::int64_t i = 0; i < hd; ++i) {
              float const angle = inv_freq[i] * delta, c = std::cos(angle), s = std::sin(angle);
              float const lo = to_float(cache.key(b, h, j, i)), hi = to_float(cache.key(b, h, j, i + hd));
              cache.key(b, h, j, i) = from_float<T>(lo * c - hi * s);
              cache.key(b, h, j, i + hd) = from_float<T>(hi * c + lo * s);
            }
            if (pos) pos[j] = j;
          }
        });
  }

 private:
  /// The original positions of live entries are rotated back by: a negative one is no position.
  /// O(live entries), read only when the engine keeps positions.
  template <class T, class L>
  static void check_positions(KVCacheView<T, L> const& cache) {
    if (cache.positions == nullptr) return;
    for (std::int64_t b = 0; b < cache.extents.batch; ++b)
      for (std::int64_t h = 0; h < cache.extents.kv_heads; ++h)
        for (std::int64_t s = 0; s < cache.length(b, h); ++s)
          KVC_CHECK(cache.position(b, h, s) >= 0, "positions[" << b << ", " << h << ", " << s << "] = "
                                                               << cache.position(b, h, s) << " is negative");
  }

  /// Length of the forward that rotated the cached keys (only dynamic NTK depends on it). In a
  /// ragged batch that is the longest sequence's, as HF's dynamic NTK takes the batch's largest
  /// position.
  template <class T, class L>
  [[nodiscard]] static std::int64_t rotated_length(Observation<T> const& obs, KVCacheView<T, L> const& cache) {
    if (obs.ragged()) {
      std::int64_t longest = 0;
      for (std::int64_t b = 0; b < cache.extents.batch; ++b)
        longest = std::max(longest, obs.sequence_position(b) + obs.chunk_tokens(b));
      return longest;
    }
    if (obs.chunk_tokens() > 0) return obs.position + obs.chunk_tokens();
    std::int64_t last = -1;
    for (std::int64_t b = 0; b < cache.extents.batch; ++b)
      for (std::int64_t h = 0; h < cache.extents.kv_heads; ++h)
        for (std::int64_t s = 0; s < cache.length(b, h); ++s) last = std::max(last, cache.position(b, h, s));
    return last + 1;
  }
};

template <class Press>
KeyRerotationPress(Press) -> KeyRerotationPress<Press>;

}  // namespace kvcompress
