#pragma once
/// \file
/// \brief What the Compactor presses (LeverageScore, NonCausalAttn, Compactor) share: the prefill
/// check (kvpress asserts that the cache holds exactly the chunk's tokens) and the global z-score
/// (score − mean) / max(std, 1e-6) over every batch element, head and scored slot, with the
/// unbiased standard deviation, as `torch.std()`; on a tensor-parallel shard, over the whole layer.

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kvcompress/dist/layer_rows.hpp"
#include "kvcompress/press/scorer.hpp"

namespace kvcompress::detail {

/// Throws unless every row holds exactly the chunk's tokens (a prefill). Returns that length.
template <class T, class L>
std::int64_t require_prefill(Observation<T> const& obs, KVCacheView<T, L> const& cache, char const* press) {
  std::int64_t const q = obs.chunk_tokens();
  KVC_CHECK(q > 0, press << " needs the chunk length (observation.chunk_length or observation.queries), got " << q);
  std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads;
  for (std::int64_t r = 0; r < rows; ++r)
    KVC_CHECK(cache.lengths[r] == q, press << " only supports prefill: cache length n = " << cache.lengths[r] << " of row (batch "
                                           << r / cache.extents.kv_heads << ", kv head " << r % cache.extents.kv_heads
                                           << ") must equal the chunk length " << q);
  return q;
}

/// Scratch bytes of `global_z_score` over `count` score arrays.
template <class T, class L>
std::size_t global_z_score_bytes(Observation<T> const& obs, KVCacheView<T, L> const& cache, std::int64_t count) {
  return sum_bytes(LayerRows::bytes(cache.extents.batch, layer_kv_heads(obs, cache), count),
                   LayerRows::bytes(cache.extents.batch, layer_kv_heads(obs, cache), count), handshake_bytes(obs.shard));
}

/// z-scores slots [lo, hi) of every row of each of `count` score arrays in place, each over all of
/// its rows together: each row's sum (then its sum of squared deviations) in double, then the rows
/// in the layer's order. On a tensor-parallel shard the ranks exchange those per-row sums
/// (dist/layer_rows.hpp), so every rank z-scores with the whole layer's mean and deviation, bit for
/// bit; the scores are checked finite before, so that no rank fails after the handshake.
/// \param arrays [count] of [batch, kv_heads, capacity]
template <class T, class L>
void global_z_score(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, float* const* arrays,
                    std::int64_t count, std::int64_t lo, std::int64_t hi, char const* press, Workspace& ws) {
  auto const& e = cache.extents;
  std::int64_t const rows = e.batch * e.kv_heads, cap = e.capacity, heads = layer_kv_heads(obs, cache);
  std::int64_t const entries = e.batch * heads * (hi - lo);
  KVC_CHECK(entries >= 2, press << " z-scores its scores with the unbiased standard deviation, which needs at least 2 scored "
                                   "entries in total, got "
                                << entries);
  for (std::int64_t a = 0; a < count; ++a)
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t i = lo; i < hi; ++i)
        if (!std::isfinite(arrays[a][r * cap + i])) report_non_finite(dev, obs, cache, r, i, arrays[a][r * cap + i]);
  ShardLayout const layout = join_shard(obs, cache, lo, hi, ws);
  auto const global_head = [&](std::int64_t r) { return layout.first_kv_head + r % e.kv_heads; };
  LayerRows sums(ws.take<std::int64_t>(size_product(e.batch, heads, count)), e.batch, heads, count);
  LayerRows squares(ws.take<std::int64_t>(size_product(e.batch, heads, count)), e.batch, heads, count);
  // Σ over the layer's rows in their order of one column of a table.
  auto const layer_sum = [&](LayerRows const& t, std::int64_t a) {
    double s = 0.0;
    for (std::int64_t b = 0; b < e.batch; ++b)
      for (std::int64_t h = 0; h < heads; ++h) s += t.at(b, h, a);
    return s;
  };
  for (std::int64_t a = 0; a < count; ++a)
    for (std::int64_t r = 0; r < rows; ++r) {
      double s = 0.0;
      for (std::int64_t i = lo; i < hi; ++i) s += arrays[a][r * cap + i];
      sums.set(r / e.kv_heads, global_head(r), a, s);
    }
  sums.share(obs);
  for (std::int64_t a = 0; a < count; ++a) {
    double const mean = layer_sum(sums, a) / static_cast<double>(entries);
    for (std::int64_t r = 0; r < rows; ++r) {
      double ss = 0.0;
      for (std::int64_t i = lo; i < hi; ++i) ss += (arrays[a][r * cap + i] - mean) * (arrays[a][r * cap + i] - mean);
      squares.set(r / e.kv_heads, global_head(r), a, ss);
    }
  }
  squares.share(obs);
  for (std::int64_t a = 0; a < count; ++a) {
    double const mean = layer_sum(sums, a) / static_cast<double>(entries);
    double const scale = 1.0 / std::max(std::sqrt(layer_sum(squares, a) / static_cast<double>(entries - 1)), 1e-6);
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t i = lo; i < hi; ++i)
        arrays[a][r * cap + i] = static_cast<float>((arrays[a][r * cap + i] - mean) * scale);
  }
}

}  // namespace kvcompress::detail
