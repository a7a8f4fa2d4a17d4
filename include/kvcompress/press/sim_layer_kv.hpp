#pragma once
/// \file
/// \brief SimLayerKV (arXiv 2410.13846): a layer whose last queries attend mostly to the first and
/// the most recent tokens is "lazy" and keeps only those. The attention of the last `n_last` tokens to
/// the keys before them (window attention, as SnapKV's), averaged over batch, query heads and the
/// window rows, is summed over the first `n_initial` and the last `n_recent` of those keys; the layer
/// is lazy when the sum exceeds `lazy_threshold` (one decision for the whole batch). A lazy layer keeps
/// slots [0, n_initial) and the last n_recent − n_last slots; any other layer is left untouched, as are
/// rows of at most n_initial + n_recent + n_last entries and every layer when lazy_threshold is 1.
///
/// On a tensor-parallel shard the ranks exchange each row's share of the statistic (one double per
/// kv head), so every rank takes the whole layer's decision.
///
/// kvpress with n_recent == n_last keeps the first n_initial entries *and* every entry (its slice
/// `-0:`), so the cache grows (QUIRK); kvcompress leaves the layer untouched then.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "kvcompress/cpu/compact.hpp"
#include "kvcompress/dist/layer_rows.hpp"
#include "kvcompress/press/window_attention.hpp"

namespace kvcompress {

struct SimLayerKVPress {
  double lazy_threshold = 1.0;
  std::int64_t n_last = 1;
  std::int64_t n_recent = 1024;
  std::int64_t n_initial = 4;

  template <class T, class L>
  [[nodiscard]] std::size_t compress_workspace_bytes(CpuDevice const& dev, Observation<T> const& obs,
                                                     KVCacheView<T, L> const& cache) const {
    auto const& e = cache.extents;
    std::int64_t const rows = e.batch * e.kv_heads, threads = detail::thread_count(dev, rows);
    std::int64_t const group = detail::window_group(obs, cache);
    auto const f = [](auto... n) { return Workspace::bytes_for<float>(detail::size_product(n...)); };
    return detail::sum_bytes(f(threads, group, e.capacity), f(rows, e.capacity),
                             Workspace::bytes_for<std::int32_t>(static_cast<std::size_t>(e.capacity)),
                             detail::LayerRows::bytes(e.batch, detail::layer_kv_heads(obs, cache), 1),
                             detail::handshake_bytes(obs.shard),
                             detail::window_attention_bytes(dev, obs, cache, std::max<std::int64_t>(n_last, 1)));
  }

  /// \brief kvpress's laziness statistic of this layer: the mean window attention that falls on the
  /// first n_initial and the last n_recent keys before the window. Rows must share one length n >
  /// n_last + n_recent.
  template <class T, class L>
  [[nodiscard]] double lazy_score(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache,
                                  Workspace& ws) const {
    check();
    auto const& e = cache.extents;
    std::int64_t const rows = e.batch * e.kv_heads, cap = e.capacity, n = cache.lengths[0], m = n - n_last;
    for (std::int64_t r = 0; r < rows; ++r)
      KVC_CHECK(cache.lengths[r] == n, "SimLayerKVPress needs one length for every row (its decision covers the whole batch); row "
                                           << r << " holds " << cache.lengths[r] << ", row 0 holds " << n);
    KVC_CHECK(m > n_recent, "SimLayerKVPress needs more than n_last + n_recent = " << n_last + n_recent << " entries, got " << n);
    bool const from_queries = detail::window_from_queries(obs, cache, n_last);
    std::int64_t const group = detail::window_group(obs, cache);
    int const threads = detail::thread_count(dev, rows);
    float* probs = ws.take<float>(static_cast<std::size_t>(threads * group * cap));
    float* row_sum = ws.take<float>(static_cast<std::size_t>(rows * cap));  // [rows, m]: Σ over the group
    detail::window_attention_mean(dev, obs, cache, n_last, from_queries, probs, ws,
                                  [&](std::int64_t r, std::int64_t j, float const* p) {
                                    float* out = row_sum + r * cap;
                                    if (j == 0) std::fill(out, out + m, 0.0f);
                                    for (std::int64_t i = 0; i < m; ++i) out[i] += p[i];
                                  });
    // Each row's share in double, then the rows in the layer's order: on a tensor-parallel shard the
    // ranks exchange their rows' shares (dist/layer_rows.hpp), so every rank adds what one process adds.
    detail::LayerRows shares(ws.take<std::int64_t>(detail::size_product(e.batch, detail::layer_kv_heads(obs, cache))),
                             e.batch, detail::layer_kv_heads(obs, cache), 1);
    bool finite = true;
    for (std::int64_t r = 0; r < rows; ++r) {
      float const* s = row_sum + r * cap;
      double share = 0.0;
      for (std::int64_t i = 0; i < n_initial; ++i) share += s[i];
      for (std::int64_t i = m - n_recent; i < m; ++i) share += s[i];
      finite = finite && std::isfinite(share);
      shares.set(r / e.kv_heads, obs.shard.first_kv_head + r % e.kv_heads, 0, share);
    }
    if (!finite) require_finite_inputs(dev, obs, cache);
    detail::join_shard(obs, cache, n, group, ws);
    shares.share(obs);
    double sum = 0.0;
    for (std::int64_t b = 0; b < e.batch; ++b)
      for (std::int64_t h = 0; h < shares.heads(); ++h) sum += shares.at(b, h, 0);
    return sum / static_cast<double>(e.batch * shares.heads() * group);
  }

  template <class T, class L>
  void compress(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, Workspace ws) const {
    check();
    detail::validate_view(cache);
    std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads;
    if (rows == 0 || lazy_threshold == 1.0) return;
    std::int64_t const n = cache.lengths[0];
    if (n <= n_initial + n_recent + n_last || n_recent == n_last) return;
    double const score = lazy_score(dev, obs, cache, ws);
    if (!std::isfinite(score)) require_finite_inputs(dev, obs, cache);
    if (!(score > lazy_threshold)) return;
    std::int64_t const kept = n_initial + n_recent - n_last;
    std::int32_t* idx = ws.take<std::int32_t>(static_cast<std::size_t>(cache.extents.capacity));
    for (std::int64_t j = 0; j < kept; ++j)
      idx[j] = static_cast<std::int32_t>(j < n_initial ? j : n - kept + j);
    for (std::int64_t r = 0; r < rows; ++r)
      cpu_impl::compact_row(dev, cache, r / cache.extents.kv_heads, r % cache.extents.kv_heads, idx, static_cast<std::int32_t>(kept));
  }

 private:
  /// Names the non-finite input behind a non-finite statistic.
  template <class T, class L>
  [[noreturn]] static void require_finite_inputs(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache) {
    detail::require_finite_cache(dev, cache);
    detail::require_finite(obs.window_queries, "observation.window_queries");
    detail::require_finite(obs.attention, "observation.attention");
    KVC_THROW("SimLayerKVPress: a non-finite laziness statistic from finite inputs");
  }

  void check() const {
    KVC_CHECK(lazy_threshold >= 0.0 && lazy_threshold <= 1.0, "SimLayerKVPress lazy_threshold must be in [0, 1], got " << lazy_threshold);
    KVC_CHECK(n_last > 0, "SimLayerKVPress n_last must be positive, got " << n_last);
    KVC_CHECK(n_initial >= 0, "SimLayerKVPress n_initial must be non-negative, got " << n_initial);
    KVC_CHECK(n_recent >= n_last, "SimLayerKVPress n_recent must be at least n_last = " << n_last << ", got " << n_recent);
  }
};

}  // namespace kvcompress
