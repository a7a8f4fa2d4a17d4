#pragma once
/// \file
/// \brief ChunkKV (arXiv 2502.00299): keep whole chunks of chunk_length consecutive tokens, so that
/// what is kept stays semantically coherent. The inner press scores the whole cache; a chunk's
/// score is the mean over its tokens of the scores summed over the kv heads (a partial last chunk
/// is averaged over its own tokens). A sequence keeps its max(1, int(chunks·(1 − r))) best chunks,
/// the same ones in every kv head. With no complete chunk the inner press's own top-k is used.
///
/// Every kv head of a sequence must hold the same number of entries (the chunks are shared).
///
/// On a tensor-parallel shard each rank sums its heads over each chunk, the ranks exchange these
/// per-head chunk sums (dist/layer_rows.hpp) and every rank adds the heads in the layer's order, so
/// it ranks the chunks exactly as the whole layer does.

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "kvcompress/dist/layer_rows.hpp"
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
    // The scores; the layer's per-head chunk sums (at most cap chunks); per thread: chunk scores,
    // chunk ids, the kept slots, a row partition.
    return detail::sum_bytes(Workspace::bytes_for<float>(detail::size_product(rows + threads, cap)),
                             detail::LayerRows::bytes(cache.extents.batch, detail::layer_kv_heads(obs, cache), cap),
                             Workspace::bytes_for<std::int32_t>(detail::size_product(3, threads, cap)),
                             detail::handshake_bytes(obs.shard), press.workspace_bytes(dev, obs, cache));
  }

  template <class T, class L>
  void compress(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, Workspace ws) const {
    double const ratio = compression_ratio_of(press);
    check_compression_ratio(ratio);
    if (ratio == 0.0) return;
    KVC_CHECK(chunk_length > 0, "chunk_length must be positive, got " << chunk_length);
    std::int64_t const heads = cache.extents.kv_heads, cap = cache.extents.capacity, batch = cache.extents.batch;
    for (std::int64_t r = 0; r < batch * heads; ++r) {
      std::int64_t const first = r / heads * heads;
      KVC_CHECK(cache.lengths[r] == cache.lengths[first],
                "ChunkKV keeps the same chunks in every kv head of a sequence, but lengths["
                    << r << "] = " << cache.lengths[r] << " differs from lengths[" << first
                    << "] = " << cache.lengths[first]);
    }
    float* scores = ws.take<float>(static_cast<std::size_t>(batch * heads * cap));
    kvcompress::score(dev, press, obs, cache, scores, ws);
    // Each head's sum over each chunk (double), in the table of the layer's heads: a chunk's score
    // is then the sum of its heads' sums in the layer's head order, on one process or on a shard.
    std::uint64_t lengths_hash = 1469598103934665603ull;
    std::int64_t widest = 0;
    for (std::int64_t b = 0; b < batch; ++b) {
      std::int64_t const n = heads > 0 ? cache.lengths[b * heads] : 0;
      lengths_hash = (lengths_hash ^ static_cast<std::uint64_t>(n + 1)) * 1099511628211ull;
      widest = std::max(widest, (n + chunk_length - 1) / chunk_length);
    }
    lengths_hash = (lengths_hash ^ static_cast<std::uint64_t>(chunk_length)) * 1099511628211ull;
    detail::ShardLayout const layout =
        detail::join_shard(obs, cache, static_cast<std::int64_t>(lengths_hash), detail::bits_of(ratio), ws);
    detail::LayerRows sums(ws.take<std::int64_t>(detail::size_product(batch, layout.kv_heads, std::max<std::int64_t>(widest, 1))),
                           batch, layout.kv_heads, std::max<std::int64_t>(widest, 1));
    detail::parallel_for(dev, batch * heads, [&](std::int64_t r, int) {
      std::int64_t const b = r / heads, h = r % heads, n = cache.lengths[r];
      if (n < chunk_length) return;  // no complete chunk: the inner press's own top-k
      for (std::int64_t c = 0; c * chunk_length < n; ++c) {
        double sum = 0.0;
        for (std::int64_t i = c * chunk_length; i < std::min(n, (c + 1) * chunk_length); ++i) sum += scores[r * cap + i];
        sums.set(b, layout.first_kv_head + h, c, sum);
      }
    });
    sums.share(obs);
    int const threads = detail::thread_count(dev, batch);
    float* chunk_buf = ws.take<float>(static_cast<std::size_t>(threads * cap));
    std::int32_t* idx_buf = ws.take<std::int32_t>(static_cast<std::size_t>(std::int64_t{3} * threads * cap));

    detail::parallel_for(dev, batch, [&](std::int64_t b, int t) {
      std::int64_t const n = cache.lengths[b * heads], full = n / chunk_length, rest = n % chunk_length;
      std::int32_t* chunk_idx = idx_buf + std::int64_t{3} * t * cap;  // [cap]
      std::int32_t* kept = chunk_idx + cap;             // [cap]
      std::int32_t* part = kept + cap;                  // [cap]
      if (full == 0) {                                  // as kvpress: the inner press compresses on its own
        auto const k =
            static_cast<std::int32_t>(std::clamp<std::int64_t>(detail::press_kept_count(press, n, obs), 0, n));
        for (std::int64_t h = 0; h < heads; ++h) {
          cpu_impl::select_topk_row(scores + (b * heads + h) * cap, static_cast<std::int32_t>(n), k, part);
          cpu_impl::compact_row(dev, cache, b, h, part, k);
        }
        return;
      }
      std::int64_t const chunks = full + (rest > 0 ? 1 : 0);
      float* chunk_scores = chunk_buf + t * cap;  // [chunks]
      for (std::int64_t c = 0; c < chunks; ++c) {
        std::int64_t const lo = c * chunk_length, hi = std::min(n, lo + chunk_length);
        double sum = 0.0;
        for (std::int64_t h = 0; h < sums.heads(); ++h) sum += sums.at(b, h, c);
        chunk_scores[c] = static_cast<float>(sum / static_cast<double>(hi - lo));
      }
      auto const keep = static_cast<std::int32_t>(
          std::max<std::int64_t>(1, static_cast<std::int64_t>(static_cast<double>(chunks) * (1.0 - ratio))));
      cpu_impl::select_topk_row(chunk_scores, static_cast<std::int32_t>(chunks), keep, chunk_idx);
      std::int32_t total = 0;
      for (std::int32_t j = 0; j < std::min<std::int64_t>(keep, chunks); ++j)
        for (std::int64_t i = chunk_idx[j] * chunk_length; i < std::min(n, (chunk_idx[j] + 1) * chunk_length); ++i)
          kept[total++] = static_cast<std::int32_t>(i);
      for (std::int64_t h = 0; h < heads; ++h) cpu_impl::compact_row(dev, cache, b, h, kept, total);
    });
  }
};

template <class Press>
ChunkKVPress(Press) -> ChunkKVPress<Press>;
template <class Press>
ChunkKVPress(Press, std::int64_t) -> ChunkKVPress<Press>;

}  // namespace kvcompress
