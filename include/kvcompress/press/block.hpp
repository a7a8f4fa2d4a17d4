#pragma once
/// \file
/// \brief BlockPress (from the KeyDiff paper, arXiv 2504.15364): a simulated block-wise prefill.
/// Each row starts with its first n_kept entries; block after block of block_size entries is
/// appended, the inner press scores the n_kept + block entries, and the best n_kept stay. With a
/// score that depends only on the entry itself this equals one global top-k.
///
/// In place: a row's survivors sit at its front in position order and the next block is moved
/// right behind them, so the inner press always sees an ordinary cache. The inner press is given
/// the keys and values only (kvpress gathers hidden states in a way that mixes tokens of different
/// heads); a press that needs queries, window queries or attention is an Error. One scoring pass
/// over the whole cache checks every parameter and input before anything moves.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <numeric>

#include "kvcompress/press/scorer.hpp"

namespace kvcompress {

/// \tparam Press a scorer press
template <class Press>
struct BlockPress {
  Press press;
  std::int64_t block_size = 128;

  template <class T, class L>
  [[nodiscard]] std::size_t compress_workspace_bytes(CpuDevice const& dev, Observation<T> const& obs,
                                                     KVCacheView<T, L> const& cache) const {
    std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads, cap = cache.extents.capacity;
    return Workspace::bytes_for<float>(detail::size_product(rows, cap)) +
           Workspace::bytes_for<std::int32_t>(detail::size_product(3, rows)) +
           Workspace::bytes_for<std::int32_t>(static_cast<std::size_t>(cap)) +
           Workspace::bytes_for<std::byte>(keep_bytes(dev, cache)) +
           Workspace::bytes_for<std::byte>(press.workspace_bytes(dev, inner_observation(obs), cache));
  }

  template <class T, class L>
  void compress(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, Workspace ws) const {
    double const ratio = compression_ratio_of(press);
    check_compression_ratio(ratio);
    if (ratio == 0.0) return;
    KVC_CHECK(block_size > 0, "block_size must be positive, got " << block_size);
    std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads, cap = cache.extents.capacity;
    Observation<T> const inner = inner_observation(obs);
    float* scores = ws.take<float>(static_cast<std::size_t>(rows * cap));
    std::int32_t* budget = ws.take<std::int32_t>(static_cast<std::size_t>(rows));  // n_kept per row
    std::int32_t* next = ws.take<std::int32_t>(static_cast<std::size_t>(rows));    // first slot not yet seen
    std::int32_t* end = ws.take<std::int32_t>(static_cast<std::size_t>(rows));     // the row's length on entry
    std::size_t const keep_size = keep_bytes(dev, cache), inner_size = press.workspace_bytes(dev, inner, cache);
    std::byte* keep_buf = ws.take<std::byte>(keep_size);
    std::byte* inner_buf = ws.take<std::byte>(inner_size);
    std::int32_t* slots = ws.take<std::int32_t>(static_cast<std::size_t>(cap));  // [cap] one row's kept slots

    {
      Workspace check_ws(inner_buf, inner_size);
      kvcompress::score(dev, press, inner, cache, scores, check_ws);
    }
    for (std::int64_t r = 0; r < rows; ++r) {
      end[r] = cache.lengths[r];
      budget[r] = next[r] =
          static_cast<std::int32_t>(std::clamp<std::int64_t>(detail::press_kept_count(press, end[r], obs), 0, end[r]));
    }
    for (;;) {
      bool more = false;
      for (std::int64_t r = 0; r < rows; ++r) {
        // kvpress caps the block at the row length.
        std::int64_t const len = std::min<std::int64_t>({block_size, end[r], end[r] - next[r]});
        // The survivors stay, the block moves right behind them: a compaction of those slots.
        std::iota(slots, slots + budget[r], 0);
        std::iota(slots + budget[r], slots + budget[r] + len, next[r]);
        cpu_impl::compact_row(dev, cache, r / cache.extents.kv_heads, r % cache.extents.kv_heads, slots,
                              static_cast<std::int32_t>(budget[r] + len));
        next[r] = static_cast<std::int32_t>(next[r] + len);
        more = more || len > 0;
      }
      if (!more) return;
      Workspace inner_ws(inner_buf, inner_size), keep_ws(keep_buf, keep_size);
      kvcompress::score(dev, press, inner, cache, scores, inner_ws);
      keep_topk(
          dev, cache, scores, [budget](std::int64_t r, std::int64_t) { return budget[r]; }, keep_ws);
    }
  }

 private:
  template <class T, class L>
  [[nodiscard]] static std::size_t keep_bytes(CpuDevice const& dev, KVCacheView<T, L> const& cache) {
    std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads;
    return Workspace::bytes_for<std::int32_t>(detail::size_product(detail::thread_count(dev, rows), cache.extents.capacity));
  }

  template <class T>
  [[nodiscard]] static Observation<T> inner_observation(Observation<T> obs) {
    obs.chunk_length = obs.chunk_tokens();
    obs.queries = {};
    obs.window_queries = {};
    obs.attention = {};
    return obs;
  }
};

template <class Press>
BlockPress(Press) -> BlockPress<Press>;
template <class Press>
BlockPress(Press, std::int64_t) -> BlockPress<Press>;

}  // namespace kvcompress
