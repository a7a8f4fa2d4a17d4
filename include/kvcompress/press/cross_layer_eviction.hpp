#pragma once
/// \file
/// \brief The eviction shared by KVzip and FastKVzip, which score every layer before any is
/// compressed: the globally lowest int(numel · ratio) scores over all layers give each layer its count
/// of entries to evict (or int(kv_heads · n · ratio) per layer when `layerwise`); each layer then
/// evicts its lowest that many across its kv heads, so heads keep different numbers of entries.
///
/// kvpress masks the evicted entries (fake keys; the cache keeps its length); here each head's row
/// really shortens. Ties are broken by (layer, head, slot) index, deterministically (kvpress: `torch.topk`,
/// unspecified).
///
/// On a tensor-parallel shard (a `TensorParallelShard` with a communicator: this rank holds kv heads
/// [first_kv_head, first_kv_head + kv_heads given) of every layer) both steps are a distributed
/// selection (`dist/sharded_selection.hpp`): every rank gets the counts that one process gets on the
/// whole model, ties included, exchanging O(layers · heads + bins) values. Every call runs under the
/// shard protocol: bad input on one rank is an `Error` on every rank.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "kvcompress/cpu/select_topk.hpp"
#include "kvcompress/dist/layer_rows.hpp"
#include "kvcompress/dist/shard_protocol.hpp"
#include "kvcompress/dist/sharded_selection.hpp"
#include "kvcompress/press/scorer.hpp"

namespace kvcompress {

/// \brief Entries each layer evicts, from every layer's scores.
/// \param scores  [layers, per_layer]: each layer's scores, kv heads × entries (batch 1)
/// \param pruned  [layers] out
inline void cross_layer_pruned_counts(float const* scores, int layers, std::int64_t per_layer, double ratio, bool layerwise,
                                      std::int64_t* pruned) {
  check_compression_ratio(ratio);
  KVC_CHECK(scores != nullptr && pruned != nullptr, "cross_layer_pruned_counts: scores and pruned must not be null");
  KVC_CHECK(layers > 0 && per_layer > 0, "cross_layer_pruned_counts: layers = " << layers << " and per_layer = " << per_layer
                                                                               << " must be positive");
  std::int64_t const total = layers * per_layer;
  KVC_CHECK(total <= std::numeric_limits<std::int32_t>::max(), "cross-layer eviction ranks " << total << " entries with int32 ids");
  std::fill_n(pruned, layers, std::int64_t{0});
  if (layerwise) {
    std::fill_n(pruned, layers, static_cast<std::int64_t>(static_cast<double>(per_layer) * ratio));
    return;
  }
  auto const k = static_cast<std::int64_t>(static_cast<double>(total) * ratio);
  if (k == 0) return;
  std::vector<std::int32_t> ids(static_cast<std::size_t>(total));
  std::iota(ids.begin(), ids.end(), 0);
  // The lowest k: the ranking reversed, so that among ties the lower index is evicted first.
  std::vector<float> negated(scores, scores + total);
  for (float& x : negated) x = -x;
  std::nth_element(ids.begin(), ids.begin() + k, ids.end(), cpu_impl::RanksBefore{negated.data()});
  for (std::int64_t i = 0; i < k; ++i) ++pruned[ids[static_cast<std::size_t>(i)] / per_layer];
}

/// \brief `cross_layer_pruned_counts` on a tensor-parallel shard: every rank gets the whole model's
/// counts (each layer's evictions over all its kv heads, for `evict_lowest_across_heads` with the
/// same shard). The layerwise count is int(layer kv heads · n · ratio).
/// \param scores  [layers, kv_heads, n]: this rank's kv heads of every layer (batch 1), finite
/// \param pruned  [layers] out, the same on every rank
inline void cross_layer_pruned_counts(float const* scores, int layers, std::int64_t kv_heads, std::int64_t n, double ratio,
                                      bool layerwise, std::int64_t* pruned, TensorParallelShard const& shard) {
  std::int64_t const heads = shard.kv_heads > 0 ? shard.kv_heads : kv_heads;
  detail::ShardRecord const record{kv_heads, heads, 1, layers};
  detail::shard_call(shard, record, [&] {
    check_compression_ratio(ratio);
    KVC_CHECK(scores != nullptr && pruned != nullptr, "cross_layer_pruned_counts: scores and pruned must not be null");
    KVC_CHECK(layers > 0 && kv_heads > 0 && n > 0, "cross_layer_pruned_counts: layers = " << layers << ", kv_heads = " << kv_heads
                                                                                         << " and n = " << n << " must be positive");
    detail::validate_shard(shard, kv_heads, "cross_layer_pruned_counts shard");
    if (!shard.split()) {
      cross_layer_pruned_counts(scores, layers, kv_heads * n, ratio, layerwise, pruned);
      return;
    }
    std::int64_t const local = static_cast<std::int64_t>(layers) * kv_heads * n;
    for (std::int64_t i = 0; i < local; ++i)
      KVC_CHECK(std::isfinite(scores[i]), "cross_layer_pruned_counts: scores[" << i / (kv_heads * n) << ", " << i / n % kv_heads
                                                                              << ", " << i % n << "] = " << scores[i]
                                                                              << " is not finite");
    Communicator& comm = *shard.communicator;
    std::int64_t const groups = static_cast<std::int64_t>(layers) * heads;
    std::vector<std::int64_t> table(static_cast<std::size_t>(comm.size() + 1) * detail::kFields);
    // The ranks must rank the same context with the same ratio and mode.
    detail::join_shard(shard, record, 2 * n + static_cast<std::int64_t>(layerwise), detail::bits_of(ratio), table.data());
    std::fill_n(pruned, layers, std::int64_t{0});
    if (layerwise) {
      std::fill_n(pruned, layers, static_cast<std::int64_t>(static_cast<double>(heads * n) * ratio));
      return;
    }
    auto const k = static_cast<std::int64_t>(static_cast<double>(groups * n) * ratio);
    std::vector<std::int64_t> hist(static_cast<std::size_t>(detail::kRadixBins)), counts(static_cast<std::size_t>(2 * groups));
    detail::sharded_top_counts(
        comm, local, [&](std::int64_t i) { return scores[i]; },
        [&](std::int64_t i) { return i / (kv_heads * n) * heads + shard.first_kv_head + i / n % kv_heads; }, groups, k, true,
        hist.data(), counts.data());
    for (std::int64_t g = 0; g < groups; ++g) pruned[g / heads] += counts[static_cast<std::size_t>(g)];
  });
}

/// \brief Scratch bytes of `evict_lowest_across_heads`.
/// \param shard as `evict_lowest_across_heads`'s (its selection's scratch)
template <class T, class L>
[[nodiscard]] std::size_t evict_lowest_across_heads_workspace_bytes(CpuDevice const& dev, KVCacheView<T, L> const& cache,
                                                                   TensorParallelShard const& shard = {}) {
  auto const& e = cache.extents;
  std::int64_t const rows = e.batch * e.kv_heads;
  std::size_t const selection =
      shard.split() ? detail::sum_bytes(detail::handshake_bytes(shard),
                                        Workspace::bytes_for<std::int64_t>(detail::size_product(
                                            detail::kRadixBins + 2 * std::max(shard.kv_heads, e.kv_heads) + 1)))
                    : 0;
  return std::max(detail::sum_bytes(Workspace::bytes_for<std::int32_t>(detail::size_product(rows, e.capacity + 1)),
                                    Workspace::bytes_for<std::int32_t>(detail::size_product(detail::thread_count(dev, rows), e.capacity)),
                                    selection),
                  detail::view_check_bytes(cache));
}

/// \brief Evicts the `n_pruned` lowest-scoring entries over all kv heads of a batch-1 layer; each row
/// keeps its survivors, compacted in position order. On a tensor-parallel shard (`shard` with a
/// communicator), the cache holds this rank's kv heads, `n_pruned` is the whole layer's count (the
/// same on every rank) and the entries evicted are those one process evicts from the whole layer;
/// the scores must then be finite.
/// \param scores [kv_heads, capacity] the layer's scores (row g valid on [0, lengths[g]))
template <class T, class L>
void evict_lowest_across_heads(CpuDevice const& dev, KVCacheView<T, L> const& cache, float const* scores, std::int64_t n_pruned,
                               Workspace ws, TensorParallelShard const& shard = {}) {
  auto const& e = cache.extents;
  std::int64_t const heads = shard.kv_heads > 0 ? shard.kv_heads : e.kv_heads;
  detail::ShardRecord const record{e.kv_heads, heads, e.batch, 0};
  detail::shard_call(shard, record, [&] {
    detail::validate_view(cache);
    KVC_CHECK(e.batch == 1, "evict_lowest_across_heads ranks one sequence's heads together (kvpress: batch 1), got batch = " << e.batch);
    KVC_CHECK(scores != nullptr, "evict_lowest_across_heads: scores must not be null");
    detail::validate_shard(shard, e.kv_heads, "evict_lowest_across_heads shard");
    std::int64_t live = 0;
    for (std::int64_t h = 0; h < e.kv_heads; ++h) live += cache.lengths[h];
    KVC_CHECK(n_pruned >= 0 && (shard.split() || n_pruned <= live),
              "evict_lowest_across_heads: n_pruned = " << n_pruned << " must be in [0, " << live << "] (the layer's live entries)");
    KVC_CHECK(ws.capacity() - ws.used() >= evict_lowest_across_heads_workspace_bytes(dev, cache, shard),
              "workspace too small: " << ws.capacity() - ws.used() << " bytes given, evict_lowest_across_heads_workspace_bytes = "
                                      << evict_lowest_across_heads_workspace_bytes(dev, cache, shard));
    detail::check_unique_pages(cache, ws);
    if (shard.split())
      for (std::int64_t h = 0; h < e.kv_heads; ++h)
        for (std::int64_t i = 0; i < cache.lengths[h]; ++i)
          KVC_CHECK(std::isfinite(scores[h * e.capacity + i]), "evict_lowest_across_heads: scores[" << h << ", " << i << "] = "
                                                                                                    << scores[h * e.capacity + i]
                                                                                                    << " is not finite");
    if (n_pruned == 0 && !shard.split()) return;
    std::int32_t* ids = ws.take<std::int32_t>(static_cast<std::size_t>(e.kv_heads * e.capacity));  // [kv_heads · capacity]
    std::int32_t* counts = ws.take<std::int32_t>(static_cast<std::size_t>(e.kv_heads));           // [kv_heads]
    std::int64_t m = 0;
    for (std::int64_t h = 0; h < e.kv_heads; ++h)
      for (std::int32_t i = 0; i < cache.lengths[h]; ++i) ids[m++] = static_cast<std::int32_t>(h * e.capacity + i);
    if (shard.split()) {
      Communicator& comm = *shard.communicator;
      detail::join_shard(shard, record, n_pruned, 0, ws.take<std::int64_t>(detail::size_product(comm.size() + 1, detail::kFields)));
      std::int64_t* hist = ws.take<std::int64_t>(detail::size_product(detail::kRadixBins + 2 * heads + 1));  // [bins | 2·heads | 1]
      std::int64_t* layer_live = hist + detail::kRadixBins + 2 * heads;
      *layer_live = live;
      comm.all_reduce(layer_live, 1, ReduceOp::sum);
      // Every rank sees the same sum, so every rank throws the same error.
      KVC_CHECK(n_pruned <= *layer_live, "evict_lowest_across_heads: n_pruned = " << n_pruned << " must be in [0, " << *layer_live
                                                                                 << "] (the layer's live entries, over the shard's ranks)");
      std::int64_t* kept = hist + detail::kRadixBins;  // [2 · heads]
      detail::sharded_top_counts(
          comm, live, [&](std::int64_t i) { return scores[ids[i]]; },
          [&](std::int64_t i) { return shard.first_kv_head + ids[i] / e.capacity; }, heads, *layer_live - n_pruned, false, hist,
          kept);
      for (std::int64_t h = 0; h < e.kv_heads; ++h) counts[h] = static_cast<std::int32_t>(kept[shard.first_kv_head + h]);
    } else {
      // Kept: the best live − n_pruned (ties: the lower index stays, mirroring the eviction order above).
      std::int64_t const keep = live - n_pruned;
      std::nth_element(ids, ids + keep, ids + live, cpu_impl::RanksBefore{scores});
      std::fill_n(counts, e.kv_heads, 0);
      for (std::int64_t i = 0; i < keep; ++i) ++counts[ids[i] / e.capacity];
    }
    keep_topk(dev, cache, scores, [counts](std::int64_t r, std::int64_t) { return counts[r]; }, ws);
  });
}

}  // namespace kvcompress
