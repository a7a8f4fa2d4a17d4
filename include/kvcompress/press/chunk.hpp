#pragma once
/// \file
/// \brief ChunkPress (FINCH, TACL doi 10.1162/tacl_a_00716): the cache is cut into chunks of
/// chunk_length slots and each chunk is compressed on its own, by the inner press scoring only
/// that chunk: chunk i keeps max(1, int(len_i·(1 − r))) of its len_i entries, so the whole context
/// is compressed uniformly.
///
/// The inner press sees each chunk as a cache of its own, with an observation for that chunk: the
/// chunk's rows of `queries` (a prefill's queries cover the cache), `position` = the chunk's first
/// absolute position, `chunk_length` = its token count. `window_queries` and `attention` describe
/// the end of the whole sequence and are not handed on (kvpress rejects attention here too).
/// Every chunk is scored before anything moves.

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "kvcompress/detail/tail_view.hpp"
#include "kvcompress/press/scorer.hpp"

namespace kvcompress {

namespace detail {

/// What an inner press of a chunked wrapper may see: no window queries, no attention.
template <class T>
Observation<T> without_window_inputs(Observation<T> obs) {
  obs.window_queries = {};
  obs.attention = {};
  return obs;
}

}  // namespace detail

/// \tparam Press a scorer press
template <class Press>
struct ChunkPress {
  Press press;
  std::int64_t chunk_length = 1024;

  template <class T, class L>
  [[nodiscard]] std::size_t compress_workspace_bytes(CpuDevice const& dev, Observation<T> const& obs,
                                                     KVCacheView<T, L> const& cache) const {
    std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads, cap = cache.extents.capacity;
    std::int64_t const c = window_capacity(cache);
    auto const sizing = window(cache, nullptr, c, cache.lengths);
    return Workspace::bytes_for<float>(detail::size_product(rows, 2, cap)) +
           Workspace::bytes_for<std::int32_t>(detail::size_product(2 + detail::thread_count(dev, rows), rows, cap)) +
           Workspace::bytes_for<std::byte>(press.workspace_bytes(dev, detail::without_window_inputs(obs), sizing));
  }

  template <class T, class L>
  void compress(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, Workspace ws) const {
    double const ratio = compression_ratio_of(press);
    check_compression_ratio(ratio);
    if (ratio == 0.0) return;
    KVC_CHECK(chunk_length > 0, "chunk_length must be positive, got " << chunk_length);
    detail::require_not_ragged(obs, "ChunkPress");
    std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads, cap = cache.extents.capacity;
    std::int64_t const c = window_capacity(cache);
    float* scores = ws.take<float>(static_cast<std::size_t>(rows * cap));       // [rows, cap]
    float* window_scores = ws.take<float>(static_cast<std::size_t>(rows * c));  // [rows, c]
    std::int32_t* window_lengths = ws.take<std::int32_t>(static_cast<std::size_t>(rows));
    std::int32_t* first = ws.take<std::int32_t>(static_cast<std::size_t>(rows));  // every row's window starts here
    std::int32_t* idx = ws.take<std::int32_t>(static_cast<std::size_t>(detail::thread_count(dev, rows) * cap));
    Observation<T> const outer = detail::without_window_inputs(obs);
    std::size_t const inner_bytes = press.workspace_bytes(dev, outer, window(cache, first, c, window_lengths));
    std::byte* inner = ws.take<std::byte>(inner_bytes);

    std::int32_t const longest = *std::max_element(cache.lengths, cache.lengths + rows);
    for (std::int64_t start = 0; start < longest; start += chunk_length) {
      std::int64_t const wcap = std::min(c, cap - start);
      std::int64_t tokens = 0;
      for (std::int64_t r = 0; r < rows; ++r) {
        first[r] = static_cast<std::int32_t>(start);
        window_lengths[r] = static_cast<std::int32_t>(std::clamp<std::int64_t>(cache.lengths[r] - start, 0, wcap));
        tokens = std::max<std::int64_t>(tokens, window_lengths[r]);
      }
      Workspace inner_ws(inner, inner_bytes);
      kvcompress::score(dev, press, chunk_observation(outer, start, tokens), window(cache, first, wcap, window_lengths),
                        window_scores, inner_ws);
      for (std::int64_t r = 0; r < rows; ++r)
        std::copy(window_scores + r * wcap, window_scores + r * wcap + window_lengths[r], scores + r * cap + start);
    }

    detail::parallel_for(dev, rows, [&](std::int64_t r, int t) {
      std::int32_t* kept = idx + t * cap;  // [cap]: the kept slots, chunk after chunk, ascending
      std::int32_t total = 0;
      for (std::int64_t start = 0; start < cache.lengths[r]; start += chunk_length) {
        auto const len = static_cast<std::int32_t>(std::min<std::int64_t>(chunk_length, cache.lengths[r] - start));
        auto const k = static_cast<std::int32_t>(kept_count(len, ratio));
        cpu_impl::select_topk_row(scores + r * cap + start, len, k, kept + total);
        for (std::int32_t j = 0; j < k; ++j) kept[total + j] += static_cast<std::int32_t>(start);
        total += k;
      }
      cpu_impl::compact_row(dev, cache, r / cache.extents.kv_heads, r % cache.extents.kv_heads, kept, total);
    });
  }

 private:
  /// Slots [first[r], first[r] + capacity) of every row r as a cache of its own, without positions.
  /// \param first [batch, kv_heads] \param lengths [batch, kv_heads] the window's live lengths
  template <class T, class L>
  [[nodiscard]] static KVCacheView<T, detail::RowOffsetLayout<L>> window(KVCacheView<T, L> const& cache,
                                                                         std::int32_t const* first,
                                                                         std::int64_t capacity, std::int32_t* lengths) {
    CacheExtents e = cache.extents;
    e.capacity = capacity;
    return {cache.keys, cache.values, e, {cache.key_layout, first, e.kv_heads}, {cache.value_layout, first, e.kv_heads},
            lengths,    nullptr};
  }

  template <class T, class L>
  [[nodiscard]] std::int64_t window_capacity(KVCacheView<T, L> const& cache) const noexcept {
    return std::clamp<std::int64_t>(chunk_length, 1, cache.extents.capacity);
  }

  /// The observation of the chunk of `tokens` tokens that starts at slot `start`.
  template <class T>
  [[nodiscard]] static Observation<T> chunk_observation(Observation<T> obs, std::int64_t start, std::int64_t tokens) {
    if (!obs.queries.empty()) {
      KVC_CHECK(obs.queries.shape[2] >= start + tokens,
                "observation.queries hold " << obs.queries.shape[2] << " tokens; ChunkPress hands the chunk at slots ["
                                            << start << ", " << start + tokens
                                            << ") its own queries, so they must cover the cache (a prefill's queries)");
      obs.queries.data += start * obs.queries.strides[2];
      obs.queries.shape[2] = tokens;
    }
    obs.position += start;
    obs.chunk_length = tokens;
    return obs;
  }
};

template <class Press>
ChunkPress(Press) -> ChunkPress<Press>;
template <class Press>
ChunkPress(Press, std::int64_t) -> ChunkPress<Press>;

}  // namespace kvcompress
