#pragma once
/// \file
/// \brief LagKV (arXiv 2504.04704): score each token by how much it deviates, channel by channel,
/// from the range of the *next* partition (its "lag" reference), for keys and values alike.
///
/// Per (batch, kv head) row of n live entries, s = n_sink, g = lag_size (kvpress `lagkv_press.py`):
/// - **Short input**, n < s + 2g: score 1 on [0, min(s, n)) and the ramp t/(n − s), t = 0 … n−s−1,
///   on [s, n): top-k keeps the sinks and the most recent entries (kvpress's comment says "no
///   compression", but the scorer still prunes).
/// - **Otherwise**: end = s + ⌊(n − s)/g⌋·g cuts [s, end) into m ≥ 2 partitions P_0 … P_{m−1} of g
///   entries. For X ∈ {K, V} and p < m − 1, with lo_c, hi_c the min and max of channel c over
///   P_{p+1}: x̂_{t,c} = (x_{t,c} − lo_c)/(hi_c − lo_c) for t ∈ P_p, σ_t = std_c(x̂_t) with divisor
///   d − 1, score_X = softmax over the g entries of P_p of σ. score = (score_K + score_V)/2; unless
///   `cross_scoring`, replaced by its rank within the partition / g (argsort∘argsort, ranks 0 … g−1).
///   The sinks and the tail [end − g, n) (last partition plus the remainder) score 1.
///
/// Decisions where kvpress is undefined (docs/deviations/lagkv.md):
/// - a zero channel range (hi_c = lo_c) gives x̂_{t,c} = 0: a channel that is constant over the
///   reference carries no lag information. kvpress divides by zero, every σ of the partition is NaN,
///   and it returns NaN scores (cross_scoring) or ranks of NaNs, an unspecified order (default);
/// - a deviation too large for float (only when |x − lo| exceeds the range by ~19 orders of
///   magnitude) saturates σ to the largest float instead of becoming Inf/NaN;
/// - ties in the rank scoring are ranked by position (the earlier entry gets the lower rank, so the
///   more recent one is kept); `torch.argsort` is not stable and ranks ties arbitrarily;
/// - scores stay float for every storage type (kvpress casts them to the keys' dtype, so in bf16
///   the ramp of a long short-input row has ties).
/// Each row takes its own branch from its own length; rows never mix.

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numeric>

#include "kvcompress/press/scorer.hpp"

namespace kvcompress {

/// \brief Lag-relative scoring of keys and values.
struct LagKVPress {
  double compression_ratio = 0.0;
  std::int64_t n_sink = 4;     ///< initial entries that always score 1
  std::int64_t lag_size = 128;  ///< partition size g; rows of n ≥ n_sink + 2g are partitioned
  bool cross_scoring = false;  ///< keep the softmax scores instead of within-partition ranks

  template <class T, class L>
  [[nodiscard]] std::size_t workspace_bytes(CpuDevice const& dev, Observation<T> const&,
                                            KVCacheView<T, L> const& cache) const {
    std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads;
    std::int64_t const threads = detail::thread_count(dev, rows);
    std::int64_t const g = scratch_lag(cache.extents.capacity);
    // 3·(head_dim + g) bounds 3·head_dim + 2·g without forming a sum that could wrap.
    return Workspace::bytes_for<float>(detail::size_product(threads, 3, cache.extents.head_dim + g)) +
           Workspace::bytes_for<std::int32_t>(detail::size_product(threads, g));
  }

  /// \param scores [batch, kv_heads, capacity]
  template <class T, class L>
  void score(CpuDevice const& dev, Observation<T> const&, KVCacheView<T, L> const& cache, float* scores,
             Workspace& ws) const {
    // Partition min/max and the overflow clamp below would turn a NaN input into finite scores,
    // so LagKV checks the keys and values it reads itself.
    detail::require_finite_cache(dev, cache);
    KVC_CHECK(n_sink >= 0, "n_sink must be non-negative, got " << n_sink);
    KVC_CHECK(lag_size > 0, "lag_size must be positive, got " << lag_size);
    std::int64_t const heads = cache.extents.kv_heads, cap = cache.extents.capacity, d = cache.extents.head_dim;
    std::int64_t const rows = cache.extents.batch * heads, g = lag_size;
    bool any_partitioned = false;
    for (std::int64_t r = 0; r < rows; ++r) any_partitioned = any_partitioned || partitioned(cache.lengths[r]);
    KVC_CHECK(!any_partitioned || d >= 2, "LagKV needs head_dim >= 2 (a standard deviation over the channels "
                                          "with divisor head_dim - 1), got head_dim = " << d);
    std::int64_t const threads = detail::thread_count(dev, rows), gs = scratch_lag(cap);
    float* fbuf = ws.take<float>(static_cast<std::size_t>(threads * (3 * d + 2 * gs)));
    std::int32_t* ibuf = ws.take<std::int32_t>(static_cast<std::size_t>(threads * gs));
    detail::parallel_for(dev, rows, [&](std::int64_t r, int t) {
      std::int64_t const b = r / heads, h = r % heads, n = cache.lengths[r];
      float* out = scores + r * cap;
      if (!partitioned(n)) {
        std::int64_t const s = std::min(n_sink, n);
        std::fill(out, out + s, 1.0f);
        for (std::int64_t i = s; i < n; ++i) out[i] = static_cast<float>(i - s) / static_cast<float>(n - s);
        return;
      }
      float* lo = fbuf + t * (3 * d + 2 * gs);  // [d] channel minima of the reference
      float* range = lo + d;                   // [d] channel max − min of the reference
      float* xhat = range + d;                 // [d] one normalised entry
      float* sigma_k = xhat + d;
      float* sigma_v = sigma_k + g;
      std::int32_t* order = ibuf + t * gs;
      std::int64_t const m = (n - n_sink) / g, end = n_sink + m * g;
      std::fill(out, out + n_sink, 1.0f);
      std::fill(out + end - g, out + n, 1.0f);
      auto key = [&](std::int64_t i, std::int64_t c) { return to_float(cache.key(b, h, i, c)); };
      auto value = [&](std::int64_t i, std::int64_t c) { return to_float(cache.value(b, h, i, c)); };
      for (std::int64_t p = 0; p + 1 < m; ++p) {
        std::int64_t const first = n_sink + p * g;
        partition_softmax(key, first, g, d, lo, range, xhat, sigma_k);
        partition_softmax(value, first, g, d, lo, range, xhat, sigma_v);
        float* o = out + first;
        for (std::int64_t i = 0; i < g; ++i) o[i] = (sigma_k[i] + sigma_v[i]) / 2.0f;
        if (!cross_scoring) {
          // rank = argsort(argsort(score)); ties rank by position. (std::sort with the position as
          // tie-break, not std::stable_sort, which allocates a buffer inside compress.)
          std::iota(order, order + g, 0);
          std::sort(order, order + g, [o](std::int32_t x, std::int32_t y) { return o[x] < o[y] || (o[x] == o[y] && x < y); });
          for (std::int64_t j = 0; j < g; ++j) o[order[j]] = static_cast<float>(j) / static_cast<float>(g);
        }
      }
    });
  }

 private:
  /// n ≥ n_sink + 2·lag_size, without overflow for any parameter values.
  [[nodiscard]] bool partitioned(std::int64_t n) const noexcept {
    return n >= n_sink && (n - n_sink) / 2 >= lag_size;
  }
  /// Partition length the scratch is sized for: no row longer than the capacity is ever partitioned
  /// with more than capacity / 2 entries per partition.
  [[nodiscard]] std::int64_t scratch_lag(std::int64_t capacity) const noexcept {
    return std::clamp<std::int64_t>(lag_size, 0, capacity / 2);
  }

  /// softmax over the g entries of [first, first + g) of their lag-relative std, the reference being
  /// [first + g, first + 2g). \param get get(i, c) = channel c of entry i as float
  /// \param out [g] the softmax; lo, range, xhat: [d] scratch
  template <class Get>
  static void partition_softmax(Get const& get, std::int64_t first, std::int64_t g, std::int64_t d, float* lo,
                                float* range, float* xhat, float* out) {
    for (std::int64_t c = 0; c < d; ++c) {
      float mn = get(first + g, c), mx = mn;
      for (std::int64_t i = first + g + 1; i < first + 2 * g; ++i) {
        float const x = get(i, c);
        mn = std::min(mn, x);
        mx = std::max(mx, x);
      }
      lo[c] = mn;
      range[c] = mx - mn;
    }
    float const inv_d = 1.0f / static_cast<float>(d), inv_dm1 = 1.0f / static_cast<float>(d - 1);
    float sigma_max = -FLT_MAX;
    for (std::int64_t i = 0; i < g; ++i) {
      // A zero range (constant reference channel) gives 0 where kvpress divides by zero.
      float sum = 0.0f;
      for (std::int64_t c = 0; c < d; ++c)
        sum += (xhat[c] = range[c] > 0.0f ? (get(first + i, c) - lo[c]) / range[c] : 0.0f);
      // Two passes: the mean, then the centred sum of squares.
      float const mean = sum * inv_d;
      float ss = 0.0f;
      for (std::int64_t c = 0; c < d; ++c) {
        float const e = xhat[c] - mean;
        ss += e * e;
      }
      float sigma = std::sqrt(ss * inv_dm1);
      if (!(sigma <= FLT_MAX)) sigma = FLT_MAX;  // Inf or NaN from float overflow
      out[i] = sigma;
      sigma_max = std::max(sigma_max, sigma);
    }
    float total = 0.0f;
    for (std::int64_t i = 0; i < g; ++i) total += (out[i] = std::exp(out[i] - sigma_max));
    for (std::int64_t i = 0; i < g; ++i) out[i] /= total;
  }
};

}  // namespace kvcompress
