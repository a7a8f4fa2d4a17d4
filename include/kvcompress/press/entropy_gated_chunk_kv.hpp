#pragma once
/// \file
/// \brief EntropyGatedChunkKV: ChunkKV (arXiv 2502.00299) whose chunks are gated by the entropy of
/// their token scores. A chunk whose importance comes from one spiky token would spend chunk_length
/// slots on one useful token; such a chunk (score at or above the median chunk score, entropy below
/// the median entropy) keeps only its low_entropy_chunk_length best tokens, and the freed budget goes
/// to further chunks. Exactly max(1, int(n·(1 − r))) tokens are kept, as ChunkKV's budget.
///
/// Per sequence: token scores are the inner scores summed over the kv heads; a chunk's score is the
/// mean of its tokens' (a partial last chunk over its own tokens); its entropy is that of its token
/// scores, shifted to be non-negative, normalised by log(chunk size) and clamped to [0, 1] (a
/// one-token chunk has entropy 0). Chunks are visited by decreasing score and kept whole, cut to
/// their best tokens when spiky, or cut to what is left of the budget; leftover budget then goes to
/// the best tokens not yet kept. The same tokens are kept in every kv head of the sequence, so every
/// kv head of a sequence must hold the same number of entries. On a tensor-parallel shard the ranks
/// exchange their heads' scores (O(heads · n), as TOVA) and every rank sums the layer's heads.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numeric>

#include "kvcompress/dist/layer_rows.hpp"
#include "kvcompress/press/scorer.hpp"

namespace kvcompress {

namespace detail {

/// Normalised entropy of x[0, m) as kvpress computes it: x shifted by min(min x, 0), p = x / (Σx + 1e-8),
/// −Σ p·log(p + 1e-8) / log(m), clamped to [0, 1]; 0 for a single token.
inline double chunk_score_entropy(float const* x, std::int64_t m) {
  if (m <= 1) return 0.0;
  constexpr double kEps = 1e-8;
  double lo = 0.0, sum = 0.0;
  for (std::int64_t i = 0; i < m; ++i) lo = std::min(lo, static_cast<double>(x[i]));
  for (std::int64_t i = 0; i < m; ++i) sum += static_cast<double>(x[i]) - lo;
  double h = 0.0;
  for (std::int64_t i = 0; i < m; ++i) {
    double const p = (static_cast<double>(x[i]) - lo) / (sum + kEps);
    h -= p * std::log(p + kEps);
  }
  return std::clamp(h / std::log(static_cast<double>(m)), 0.0, 1.0);
}

/// torch.median of v[0, m): the lower of the two middle values.
inline double lower_median(double const* v, std::int64_t m, double* scratch) {
  std::copy(v, v + m, scratch);
  std::nth_element(scratch, scratch + (m - 1) / 2, scratch + m);
  return scratch[(m - 1) / 2];
}

}  // namespace detail

/// \tparam Press a scorer press
template <class Press>
struct EntropyGatedChunkKVPress {
  Press press;
  std::int64_t chunk_length = 10;
  /// Tokens kept from an important but spiky chunk.
  std::int64_t low_entropy_chunk_length = 4;

  void check_parameters() const {
    KVC_CHECK(chunk_length > low_entropy_chunk_length && low_entropy_chunk_length >= 1,
              "EntropyGatedChunkKVPress needs chunk_length > low_entropy_chunk_length >= 1, got chunk_length = "
                  << chunk_length << ", low_entropy_chunk_length = " << low_entropy_chunk_length);
  }

  template <class T, class L>
  [[nodiscard]] std::size_t compress_workspace_bytes(CpuDevice const& dev, Observation<T> const& obs,
                                                     KVCacheView<T, L> const& cache) const {
    std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads, cap = cache.extents.capacity;
    std::int64_t const threads = detail::thread_count(dev, cache.extents.batch);
    // Inner scores; per thread: token scores, gathered leftover scores (float), chunk scores, entropies,
    // a median copy (double), chunk order, kept flags, kept slots, leftover slots, a partition (int32).
    return detail::sum_bytes(Workspace::bytes_for<float>(detail::size_product(rows, cap)),
                             Workspace::bytes_for<float>(detail::size_product(threads, 2, cap)),
                             Workspace::bytes_for<double>(detail::size_product(threads, 3, cap)),
                             Workspace::bytes_for<std::int32_t>(detail::size_product(threads, 5, cap)),
                             press.workspace_bytes(dev, obs, cache), layer_scores_bytes(obs, cache));
  }

  template <class T, class L>
  void compress(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, Workspace ws) const {
    double const ratio = compression_ratio_of(press);
    check_compression_ratio(ratio);
    check_parameters();
    if (ratio == 0.0) return;
    std::int64_t const heads = cache.extents.kv_heads, cap = cache.extents.capacity;
    for (std::int64_t r = 0; r < cache.extents.batch * heads; ++r) {
      std::int64_t const first = r / heads * heads;
      KVC_CHECK(cache.lengths[r] == cache.lengths[first],
                "EntropyGatedChunkKV keeps the same tokens in every kv head of a sequence, but lengths["
                    << r << "] = " << cache.lengths[r] << " differs from lengths[" << first
                    << "] = " << cache.lengths[first]);
    }
    float* scores = ws.take<float>(detail::size_product(cache.extents.batch, heads, cap));
    kvcompress::score(dev, press, obs, cache, scores, ws);
    // The token scores sum every head of the layer: on a shard, from the group's scores.
    LayerScores const all = layer_scores(obs, cache, scores, ratio, ws);
    int const threads = detail::thread_count(dev, cache.extents.batch);
    float* fbuf = ws.take<float>(detail::size_product(threads, 2, cap));
    double* dbuf = ws.take<double>(detail::size_product(threads, 3, cap));
    std::int32_t* ibuf = ws.take<std::int32_t>(detail::size_product(threads, 5, cap));

    detail::parallel_for(dev, cache.extents.batch, [&](std::int64_t b, int t) {
      std::int64_t const n = cache.lengths[b * heads];
      if (n == 0) return;
      float* token = fbuf + std::int64_t{2} * t * cap;  // [n] scores summed over heads
      float* gathered = token + cap;                    // [n] scores of the leftover tokens
      double* chunk_score = dbuf + std::int64_t{3} * t * cap;  // [chunks]
      double* entropy = chunk_score + cap;                     // [chunks]
      double* scratch = entropy + cap;                         // [chunks]
      std::int32_t* order = ibuf + std::int64_t{5} * t * cap;  // [chunks]
      std::int32_t* keep = order + cap;                        // [n] 1 = kept
      std::int32_t* kept = keep + cap;                         // [n] kept slots, ascending
      std::int32_t* leftover = kept + cap;                     // [n]
      std::int32_t* part = leftover + cap;                     // [n] a top-k partition
      for (std::int64_t i = 0; i < n; ++i) {
        double sum = 0.0;
        for (std::int64_t h = 0; h < all.heads; ++h) sum += all.data[(b * all.heads + h) * all.stride + i];
        token[i] = static_cast<float>(sum);
      }
      std::int64_t const chunks = (n + chunk_length - 1) / chunk_length;
      for (std::int64_t c = 0; c < chunks; ++c) {
        std::int64_t const lo = c * chunk_length, m = std::min(n, lo + chunk_length) - lo;
        double sum = 0.0;
        for (std::int64_t i = lo; i < lo + m; ++i) sum += token[i];
        chunk_score[c] = sum / static_cast<double>(m);
        entropy[c] = detail::chunk_score_entropy(token + lo, m);
      }
      double const score_threshold = detail::lower_median(chunk_score, chunks, scratch);
      double const entropy_threshold = detail::lower_median(entropy, chunks, scratch);
      std::iota(order, order + chunks, 0);
      // Best chunk first, ties by position; std::sort, because std::stable_sort may allocate.
      std::sort(order, order + chunks, [&](std::int32_t a, std::int32_t c) {
        return chunk_score[a] > chunk_score[c] || (chunk_score[a] == chunk_score[c] && a < c);
      });
      std::fill(keep, keep + n, 0);
      std::int64_t budget = kept_count(n, ratio);
      for (std::int64_t j = 0; j < chunks && budget > 0; ++j) {
        std::int64_t const c = order[j], lo = c * chunk_length, m = std::min(n, lo + chunk_length) - lo;
        std::int64_t take = std::min(m, budget);
        if (chunk_score[c] >= score_threshold && entropy[c] < entropy_threshold)
          take = std::min(take, low_entropy_chunk_length);  // important but spiky: its best tokens only
        cpu_impl::select_topk_row(token + lo, static_cast<std::int32_t>(m), static_cast<std::int32_t>(take), part);
        for (std::int64_t i = 0; i < take; ++i) keep[lo + part[i]] = 1;
        budget -= take;
      }
      if (budget > 0) {  // spiky chunks left budget unspent: the best tokens not kept yet
        std::int32_t rest = 0;
        for (std::int64_t i = 0; i < n; ++i)
          if (keep[i] == 0) {
            gathered[rest] = token[i];
            leftover[rest++] = static_cast<std::int32_t>(i);
          }
        auto const take = static_cast<std::int32_t>(std::min<std::int64_t>(budget, rest));
        cpu_impl::select_topk_row(gathered, rest, take, part);
        for (std::int32_t i = 0; i < take; ++i) keep[leftover[part[i]]] = 1;
      }
      std::int32_t total = 0;
      for (std::int64_t i = 0; i < n; ++i)
        if (keep[i] != 0) kept[total++] = static_cast<std::int32_t>(i);
      for (std::int64_t h = 0; h < heads; ++h) cpu_impl::compact_row(dev, cache, b, h, kept, total);
    });
  }

 private:
  /// Every head's scores of the layer: [batch, heads, stride].
  struct LayerScores {
    float const* data;
    std::int64_t heads, stride;
  };

  template <class T, class L>
  static std::size_t layer_scores_bytes(Observation<T> const& obs, KVCacheView<T, L> const& cache) {
    if (!obs.shard.split()) return 0;
    return detail::sum_bytes(detail::handshake_bytes(obs.shard),
                             Workspace::bytes_for<float>(detail::size_product(
                                 cache.extents.batch, detail::layer_kv_heads(obs, cache), cache.extents.capacity)));
  }

  /// The whole layer's scores: this rank's own on one process; on a tensor-parallel shard each rank's
  /// rows go to their global heads of a zeroed [batch, layer kv heads, longest] table, which one float
  /// all-reduce adds (each value to zeros: exact), as TOVA does. Every rank then sums the heads in the
  /// layer's order, so the token scores are bit-identical to one process's.
  template <class T, class L>
  LayerScores layer_scores(Observation<T> const& obs, KVCacheView<T, L> const& cache, float const* scores, double ratio,
                           Workspace& ws) const {
    auto const& e = cache.extents;
    if (!obs.shard.split()) return {scores, e.kv_heads, e.capacity};
    std::uint64_t lengths_hash = 1469598103934665603ull;
    std::int64_t longest = 0;
    for (std::int64_t b = 0; b < e.batch; ++b) {
      std::int64_t const n = cache.lengths[b * e.kv_heads];
      lengths_hash = (lengths_hash ^ static_cast<std::uint64_t>(n + 1)) * 1099511628211ull;
      longest = std::max(longest, n);
    }
    for (std::int64_t x : {chunk_length, low_entropy_chunk_length})
      lengths_hash = (lengths_hash ^ static_cast<std::uint64_t>(x)) * 1099511628211ull;
    detail::ShardLayout const layout =
        detail::join_shard(obs, cache, static_cast<std::int64_t>(lengths_hash), detail::bits_of(ratio), ws);
    std::int64_t const heads = layout.kv_heads, stride = std::max<std::int64_t>(longest, 1);
    float* all = ws.take<float>(detail::size_product(e.batch, heads, stride));  // [batch, layer kv heads, stride]
    std::fill(all, all + e.batch * heads * stride, 0.0f);
    for (std::int64_t r = 0; r < e.batch * e.kv_heads; ++r) {
      std::int64_t const b = r / e.kv_heads, h = r % e.kv_heads;
      std::copy_n(scores + r * e.capacity, cache.lengths[r], all + (b * heads + layout.first_kv_head + h) * stride);
    }
    obs.shard.communicator->all_reduce(all, static_cast<std::size_t>(e.batch * heads * stride), ReduceOp::sum);
    return {all, heads, stride};
  }
};

template <class Press>
EntropyGatedChunkKVPress(Press) -> EntropyGatedChunkKVPress<Press>;
template <class Press>
EntropyGatedChunkKVPress(Press, std::int64_t) -> EntropyGatedChunkKVPress<Press>;
template <class Press>
EntropyGatedChunkKVPress(Press, std::int64_t, std::int64_t) -> EntropyGatedChunkKVPress<Press>;

}  // namespace kvcompress
