#pragma once
/// \file
/// \brief LU-KV (arXiv 2602.08585): head-wise budgets from a budget curve computed offline for a
/// model and a scorer. The curve `[99, num_layers, kv_heads]` holds, for each target compression
/// t% (row t − 1) and each layer, the fraction of every kv head's entries to remove. The inner press
/// ranks the entries of each head; the first `sink` and the last `window` entries of every row are
/// protected (set to the global maximum score + 1). On a tensor-parallel shard the curve is the whole
/// layer's, the maximum the group's and the budgets come from every head's length (exchanged, one
/// integer per head), so each head gets the whole layer's budget.
///
/// Budgets, as kvpress: the row of the curve is round(100·r) − 1 (clamped to [0, 98], Python's
/// rounding); head h of a row of n entries ideally keeps (1 − prune_h)·n (float32); the total is the
/// rounded sum, clamped to [kv_heads, Σn]; each head keeps the floor of its ideal count, the heads
/// with the largest fractional parts one more until the total is reached, and at least 1.
///
/// kvpress masks the pruned entries and keeps the cache at full length; here every head really keeps
/// only its own budget (its row shortens, as with AdaKV). kvpress downloads the curve from a URL for
/// the one model it knows; here the caller hands it over (the reference engine reads a .npy file).

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <utility>

#include "kvcompress/press/expected_attention.hpp"
#include "kvcompress/press/layer_max.hpp"
#include "kvcompress/press/scorer.hpp"

namespace kvcompress {

namespace detail {

/// LUKV's default inner press: ExpectedAttentionPress(epsilon = 2e-2), as kvpress.
template <class Press>
Press lukv_default_inner() {
  Press p{};
  if constexpr (std::is_same_v<Press, ExpectedAttentionPress>) p.epsilon = 2e-2f;
  return p;
}

}  // namespace detail

/// \tparam Press a scorer press (its own compression ratio is not used)
template <class Press = ExpectedAttentionPress>
struct LUKVPress {
  Press press = detail::lukv_default_inner<Press>();
  /// Fraction of the layer's entries to remove; selects the curve's row.
  double compression_ratio = 0.0;
  /// Leading entries of every row that are always kept.
  std::int64_t sink = 4;
  /// Trailing entries of every row that are always kept.
  std::int64_t window = 1;
  /// [99, num_layers, kv_heads] fraction of each kv head's entries removed at target 1 %…99 %
  float const* budget_curves = nullptr;
  std::int64_t num_layers = 0;
  std::int64_t kv_heads = 0;

  /// \param cache_heads the layer's kv heads (on a tensor-parallel shard, observation.shard.kv_heads)
  void check_parameters(std::int64_t cache_heads, int layer, bool split = false) const {
    KVC_CHECK(sink >= 0, "LUKVPress sink must be non-negative, got " << sink);
    KVC_CHECK(window >= 0, "LUKVPress window must be non-negative, got " << window);
    KVC_CHECK(budget_curves != nullptr,
              "LUKVPress needs budget_curves [99, num_layers, kv_heads] (LU-KV's curve for this model and scorer)");
    KVC_CHECK(num_layers > 0 && kv_heads > 0, "LUKVPress budget_curves shape [99, " << num_layers << ", " << kv_heads
                                                                                    << "] must be positive");
    KVC_CHECK(layer >= 0 && layer < num_layers, "LUKVPress budget curve has " << num_layers
                                                                              << " layers, observation.layer_idx = "
                                                                              << layer);
    KVC_CHECK(kv_heads == cache_heads, "LUKVPress budget curve has " << kv_heads << " kv heads, the "
                                                                      << (split ? "layer (observation.shard.kv_heads) " : "cache ")
                                                                      << cache_heads);
  }

  template <class T, class L>
  [[nodiscard]] std::size_t workspace_bytes(CpuDevice const& dev, Observation<T> const& obs,
                                            KVCacheView<T, L> const& cache) const {
    if (!obs.shard.split()) return press.workspace_bytes(dev, obs, cache);
    std::int64_t const batch = cache.extents.batch, heads = detail::layer_kv_heads(obs, cache);
    // The handshakes of the maximum (score) and of the lengths (kept_counts).
    return detail::sum_bytes(press.workspace_bytes(dev, obs, cache), detail::handshake_bytes(obs.shard), detail::handshake_bytes(obs.shard),
                             detail::LayerRows::bytes(batch, heads, 1),
                             Workspace::bytes_for<std::int32_t>(detail::size_product(2, batch, heads)));
  }

  template <class T, class L>
  void score(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, float* scores,
             Workspace& ws) const {
    check_parameters(detail::layer_kv_heads(obs, cache), obs.layer_idx, obs.shard.split());
    press.score(dev, obs, cache, scores, ws);
    float const protect =
        detail::layer_score_max(dev, obs, cache, scores, detail::global_max(cache, scores),
                                [&](std::int64_t r) { return std::pair<std::int64_t, std::int64_t>{0, cache.lengths[r]}; }, ws) +
        1.0f;
    std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads, cap = cache.extents.capacity;
    for (std::int64_t r = 0; r < rows; ++r) {
      std::int64_t const n = cache.lengths[r];
      float* s = scores + r * cap;
      std::fill(s, s + std::min(sink, n), protect);
      std::fill(s + std::max<std::int64_t>(0, n - window), s + n, protect);
    }
  }

  /// The curve's row for `compression_ratio`: round(100·r) − 1 in [0, 98] (ties to even, as Python).
  [[nodiscard]] std::int64_t curve_row() const {
    auto const t = static_cast<std::int64_t>(std::nearbyint(compression_ratio * 100.0)) - 1;
    return std::clamp<std::int64_t>(t, 0, 98);
  }

  /// \param counts [batch * kv_heads] out: entries each row keeps. On a tensor-parallel shard the
  /// budgets of a sequence depend on the lengths of all its heads: the ranks exchange them (one
  /// integer per head) and every rank computes the whole layer's budgets.
  template <class T, class L>
  void kept_counts(CpuDevice const&, Observation<T> const& obs, KVCacheView<T, L> const& cache, float const*,
                   std::int32_t* counts, Workspace& ws) const {
    std::int64_t const batch = cache.extents.batch, heads = detail::layer_kv_heads(obs, cache);
    check_parameters(heads, obs.layer_idx, obs.shard.split());
    float const* prune = budget_curves + (curve_row() * num_layers + obs.layer_idx) * heads;  // [layer kv_heads]
    if (!obs.shard.split()) {
      for (std::int64_t b = 0; b < batch; ++b) sequence_counts(prune, cache.lengths + b * heads, heads, counts + b * heads);
      return;
    }
    std::int64_t const local = cache.extents.kv_heads, first = obs.shard.first_kv_head;
    detail::LayerRows lengths(ws.take<std::int64_t>(detail::size_product(batch, heads)), batch, heads, 1);
    for (std::int64_t r = 0; r < batch * local; ++r) lengths.set(r / local, first + r % local, 0, cache.lengths[r]);
    detail::join_shard(obs, cache, curve_row(), 0, ws);
    lengths.share(obs);
    std::int32_t* n = ws.take<std::int32_t>(detail::size_product(batch, heads));    // [batch, layer kv_heads]
    std::int32_t* out = ws.take<std::int32_t>(detail::size_product(batch, heads));  // [batch, layer kv_heads]
    for (std::int64_t b = 0; b < batch; ++b)
      for (std::int64_t h = 0; h < heads; ++h) n[b * heads + h] = static_cast<std::int32_t>(lengths.at(b, h, 0));
    for (std::int64_t b = 0; b < batch; ++b) {
      sequence_counts(prune, n + b * heads, heads, out + b * heads);
      std::copy_n(out + b * heads + first, local, counts + b * local);
    }
  }

 private:
  /// One sequence's budgets. \param prune [heads] \param n [heads] lengths \param out [heads]
  static void sequence_counts(float const* prune, std::int32_t const* n, std::int64_t heads, std::int32_t* out) {
    float ideal_sum = 0.0f;
    std::int64_t total_n = 0, floor_sum = 0;
    for (std::int64_t h = 0; h < heads; ++h) {
      float const ideal = std::clamp(1.0f - prune[h], 0.0f, 1.0f) * static_cast<float>(n[h]);
      ideal_sum += ideal;
      total_n += n[h];
      out[h] = static_cast<std::int32_t>(std::floor(ideal));
      floor_sum += out[h];
    }
    auto const target = std::clamp<std::int64_t>(static_cast<std::int64_t>(std::nearbyint(ideal_sum)), heads, total_n);
    std::int64_t extra = std::min(target - floor_sum, heads);
    while (extra-- > 0) {  // one more entry for the heads with the largest fractional parts (lower head on ties)
      std::int64_t best = -1;
      float best_frac = -1.0f;
      for (std::int64_t h = 0; h < heads; ++h) {
        float const ideal = std::clamp(1.0f - prune[h], 0.0f, 1.0f) * static_cast<float>(n[h]);
        float const frac = ideal - static_cast<float>(std::floor(ideal));
        bool const taken = out[h] > static_cast<std::int32_t>(std::floor(ideal));
        if (!taken && frac > best_frac) best = h, best_frac = frac;
      }
      ++out[best];
    }
    for (std::int64_t h = 0; h < heads; ++h) out[h] = std::clamp<std::int32_t>(out[h], 1, std::max(n[h], 1));
    for (std::int64_t h = 0; h < heads; ++h) out[h] = std::min(out[h], n[h]);
  }
};

template <class Press>
LUKVPress(Press) -> LUKVPress<Press>;
template <class Press>
LUKVPress(Press, double) -> LUKVPress<Press>;

}  // namespace kvcompress
