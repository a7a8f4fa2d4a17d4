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

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "kvcompress/cpu/select_topk.hpp"
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

/// \brief Scratch bytes of `evict_lowest_across_heads`.
template <class T, class L>
[[nodiscard]] std::size_t evict_lowest_across_heads_workspace_bytes(CpuDevice const& dev, KVCacheView<T, L> const& cache) {
  auto const& e = cache.extents;
  std::int64_t const rows = e.batch * e.kv_heads;
  return std::max(detail::sum_bytes(Workspace::bytes_for<std::int32_t>(detail::size_product(rows, e.capacity + 1)),
                                    Workspace::bytes_for<std::int32_t>(detail::size_product(detail::thread_count(dev, rows), e.capacity))),
                  detail::view_check_bytes(cache));
}

/// \brief Evicts the `n_pruned` lowest-scoring entries over all kv heads of a batch-1 layer; each row
/// keeps its survivors, compacted in position order.
/// \param scores [kv_heads, capacity] the layer's scores (row g valid on [0, lengths[g]))
template <class T, class L>
void evict_lowest_across_heads(CpuDevice const& dev, KVCacheView<T, L> const& cache, float const* scores, std::int64_t n_pruned,
                               Workspace ws) {
  detail::validate_view(cache);
  auto const& e = cache.extents;
  KVC_CHECK(e.batch == 1, "evict_lowest_across_heads ranks one sequence's heads together (kvpress: batch 1), got batch = " << e.batch);
  KVC_CHECK(scores != nullptr, "evict_lowest_across_heads: scores must not be null");
  std::int64_t live = 0;
  for (std::int64_t h = 0; h < e.kv_heads; ++h) live += cache.lengths[h];
  KVC_CHECK(n_pruned >= 0 && n_pruned <= live, "evict_lowest_across_heads: n_pruned = " << n_pruned << " must be in [0, "
                                                                                        << live << "] (the layer's live entries)");
  KVC_CHECK(ws.capacity() - ws.used() >= evict_lowest_across_heads_workspace_bytes(dev, cache),
            "workspace too small: " << ws.capacity() - ws.used() << " bytes given, evict_lowest_across_heads_workspace_bytes = "
                                    << evict_lowest_across_heads_workspace_bytes(dev, cache));
  detail::check_unique_pages(cache, ws);
  if (n_pruned == 0) return;
  std::int32_t* ids = ws.take<std::int32_t>(static_cast<std::size_t>(e.kv_heads * e.capacity));  // [kv_heads · capacity]
  std::int32_t* counts = ws.take<std::int32_t>(static_cast<std::size_t>(e.kv_heads));
  std::int64_t m = 0;
  for (std::int64_t h = 0; h < e.kv_heads; ++h)
    for (std::int32_t i = 0; i < cache.lengths[h]; ++i) ids[m++] = static_cast<std::int32_t>(h * e.capacity + i);
  // Kept: the best live − n_pruned (ties: the lower index stays, mirroring the eviction order above).
  std::int64_t const keep = live - n_pruned;
  std::nth_element(ids, ids + keep, ids + live, cpu_impl::RanksBefore{scores});
  std::fill_n(counts, e.kv_heads, 0);
  for (std::int64_t i = 0; i < keep; ++i) ++counts[ids[i] / e.capacity];
  keep_topk(dev, cache, scores, [counts](std::int64_t r, std::int64_t) { return counts[r]; }, ws);
}

}  // namespace kvcompress
