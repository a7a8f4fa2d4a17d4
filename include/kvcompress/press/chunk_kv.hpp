#pragma once
/// \file
/// \brief ChunkKV (arXiv 2502.00299): keep whole chunks of chunk_length consecutive tokens, so that
/// what is kept stays semantically coherent. The inner press scores the whole cache; a chunk's
/// score is the mean over its tokens of the scores summed over the kv heads (a partial last chunk
/// is averaged over its own tokens). A sequence keeps its max(1, int(chunks·(1 − r))) best chunks,
/// the same ones in every kv head. With no complete chunk the inner press's own top-k is used.
///
/// Every kv head of a sequence must hold the same number of entries (the chunks are shared).

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "kvcompress/press/scorer.hpp"

namespace kvcompress {

/// \tparam Press a scorer press
template <class Press>
struct ChunkKVPress {
  Press press;
  std::int64_t chunk_length = 20;

  template <class T, class L>
  [[nodiscard]] std::size_t compress_workspace_bytes(CpuDevice const& dev, Observation<T> const& obs,
                                                     KVCacheView<T, L> const& cache) const {
    std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads, cap = cache.extents.capacity;
    std::int64_t const threads = detail::thread_count(dev, cache.extents.batch);
    // Per thread: chunk scores and chunk ids (at most cap chunks), the kept slots, a row partition.
    return Workspace::bytes_for<float>(detail::size_product(rows + threads, cap)) +
           Workspace::bytes_for<std::int32_t>(detail::size_product(3, threads, cap)) +
           press.workspace_bytes(dev, obs, cache);
  }

  template <class T, class L>
  void compress(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, Workspace ws) const {
    detail::require_whole_layer(obs, "ChunkKV", "a chunk's score sums all kv heads");
    double const ratio = compression_ratio_of(press);
    check_compression_ratio(ratio);
    if (ratio == 0.0) return;
    KVC_CHECK(chunk_length > 0, "chunk_length must be positive, got " << chunk_length);
    std::int64_t const heads = cache.extents.kv_heads, cap = cache.extents.capacity;
    for (std::int64_t r = 0; r < cache.extents.batch * heads; ++r) {
      std::int64_t const first = r / heads * heads;
      KVC_CHECK(cache.lengths[r] == cache.lengths[first],
                "ChunkKV keeps the same chunks in every kv head of a sequence, but lengths["
                    << r << "] = " << cache.lengths[r] << " differs from lengths[" << first
                    << "] = " << cache.lengths[first]);
    }
    float* scores = ws.take<float>(static_cast<std::size_t>(cache.extents.batch * heads * cap));
    kvcompress::score(dev, press, obs, cache, scores, ws);
    int const threads = detail::thread_count(dev, cache.extents.batch);
    float* chunk_buf = ws.take<float>(static_cast<std::size_t>(threads * cap));
    std::int32_t* idx_buf = ws.take<std::int32_t>(static_cast<std::size_t>(std::int64_t{3} * threads * cap));

    detail::parallel_for(dev, cache.extents.batch, [&](std::int64_t b, int t) {
      std::int64_t const n = cache.lengths[b * heads], full = n / chunk_length, rest = n % chunk_length;
      std::int32_t* chunk_idx = idx_buf + std::int64_t{3} * t * cap;  // [cap]
      std::int32_t* kept = chunk_idx + cap;             // [cap]
      std::int32_t* part = kept + cap;                  // [cap]
      if (full == 0) {                                  // as kvpress: the inner press compresses on its own
        auto const k =
            static_cast<std::int32_t>(std::clamp<std::int64_t>(detail::press_kept_count(press, n, obs), 0, n));
        for (std::int64_t h = 0; h < heads; ++h) {
          cpu_impl::select_topk_row(scores + (b * heads + h) * cap, static_cast<std::int32_t>(n), k, part);
          cpu_impl::compact_row(cache, b, h, part, k);
        }
        return;
      }
      std::int64_t const chunks = full + (rest > 0 ? 1 : 0);
      float* chunk_scores = chunk_buf + t * cap;  // [chunks]
      for (std::int64_t c = 0; c < chunks; ++c) {
        std::int64_t const lo = c * chunk_length, hi = std::min(n, lo + chunk_length);
        double sum = 0.0;
        for (std::int64_t h = 0; h < heads; ++h)
          for (std::int64_t i = lo; i < hi; ++i) sum += scores[(b * heads + h) * cap + i];
        chunk_scores[c] = static_cast<float>(sum / static_cast<double>(hi - lo));
      }
      auto const keep = static_cast<std::int32_t>(
          std::max<std::int64_t>(1, static_cast<std::int64_t>(static_cast<double>(chunks) * (1.0 - ratio))));
      cpu_impl::select_topk_row(chunk_scores, static_cast<std::int32_t>(chunks), keep, chunk_idx);
      std::int32_t total = 0;
      for (std::int32_t j = 0; j < std::min<std::int64_t>(keep, chunks); ++j)
        for (std::int64_t i = chunk_idx[j] * chunk_length; i < std::min(n, (chunk_idx[j] + 1) * chunk_length); ++i)
          kept[total++] = static_cast<std::int32_t>(i);
      for (std::int64_t h = 0; h < heads; ++h) cpu_impl::compact_row(cache, b, h, kept, total);
    });
  }
};

template <class Press>
ChunkKVPress(Press) -> ChunkKVPress<Press>;
template <class Press>
ChunkKVPress(Press, std::int64_t) -> ChunkKVPress<Press>;

}  // namespace kvcompress
