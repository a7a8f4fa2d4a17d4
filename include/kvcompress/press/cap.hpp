#pragma once
/// \file
/// \brief CAP (CAPKV, arXiv 2604.25975): a value's leverage under a query-weighted capacity matrix.
/// For query head j the anchor μ_j is the mean of the chunk's pre-RoPE queries past the n_sink first,
/// rotated by the average RoPE matrix R̄ of the next n_future_positions positions (as Expected
/// Attention); for each non-sink key, stat_i = cos(μ_j, k_i) clamped to [−1, 1] and
/// w_i = exp(τ(stat_i − max stat)); with A_j = I + Σ_i (w_i + ε) v_i v_iᵀ, the score is
/// w_i · v_iᵀA_j⁻¹v_i, averaged over the query heads of the group. The n_sink first entries get the
/// global maximum + 1.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <utility>

#include "kvcompress/detail/cholesky.hpp"
#include "kvcompress/detail/gather.hpp"
#include "kvcompress/press/expected_attention.hpp"
#include "kvcompress/press/layer_max.hpp"
#include "kvcompress/press/scorer.hpp"
#include "kvcompress/rope/rotary_embedding.hpp"

namespace kvcompress {

struct CapPress {
  double compression_ratio = 0.0;
  double tau = 5.0;
  std::int64_t n_future_positions = 512;
  std::int64_t n_sink = 4;
  double epsilon = 1e-6;

  template <class T, class L>
  [[nodiscard]] std::size_t workspace_bytes(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache) const {
    auto const& e = cache.extents;
    std::int64_t const rows = e.batch * e.kv_heads, d = e.head_dim, cap = e.capacity;
    std::int64_t const q_heads = obs.queries.empty() ? e.kv_heads : obs.queries.shape[1];
    std::int64_t const threads = detail::thread_count(dev, rows);
    auto const f = [](auto... n) { return Workspace::bytes_for<float>(detail::size_product(n...)); };
    return detail::sum_bytes(f(2, d), f(e.batch, q_heads, d), f(threads, 2, cap, d + 1), f(rows),
                             Workspace::bytes_for<double>(detail::size_product(threads, d, d + 1)),
                             detail::handshake_bytes(obs.shard));
  }

  template <class T, class L>
  void score(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, float* scores,
             Workspace& ws) const {
    auto const& e = cache.extents;
    KVC_CHECK(std::isfinite(tau), "CapPress tau must be finite, got " << tau);
    KVC_CHECK(std::isfinite(epsilon) && epsilon >= 0.0, "CapPress epsilon must be finite and non-negative, got " << epsilon);
    detail::require_not_ragged(obs, "CapPress");
    detail::check_expected_attention_queries(obs, e, n_sink);
    Tensor4<T> const& q = obs.queries;
    std::int64_t const q_heads = q.shape[1], heads = e.kv_heads, d = e.head_dim, cap = e.capacity, rows = e.batch * heads;
    detail::check_expected_attention_common(detail::ExpectedAttentionParams{n_future_positions, n_sink, false, false, 0.0f}, obs,
                                            cache, q_heads);
    std::int64_t const group = q_heads / heads, count = q.shape[2] - n_sink;
    float* cs = ws.take<float>(static_cast<std::size_t>(2 * d));
    obs.rope->averaged_rotation(detail::future_start(obs), n_future_positions, cs, cs + d);
    // Anchors μ_j = R̄ · mean_t q_t [batch, q_heads, d] (R̄ is linear: the mean of the rotated queries).
    float* anchor = ws.take<float>(static_cast<std::size_t>(e.batch * q_heads * d));
    int const threads = detail::thread_count(dev, rows);
    float* buf = ws.take<float>(static_cast<std::size_t>(threads * (2 * cap * d + 2 * cap)));
    float* row_max = ws.take<float>(static_cast<std::size_t>(rows));
    double* chol_buf = ws.take<double>(static_cast<std::size_t>(threads * (d * d + d)));
    for (std::int64_t bj = 0; bj < e.batch * q_heads; ++bj) {
      std::int64_t const b = bj / q_heads, j = bj % q_heads;
      float* mean = buf;  // [d], the first thread's scratch, free until the parallel section
      for (std::int64_t c = 0; c < d; ++c) {
        double s = 0.0;
        for (std::int64_t t = 0; t < count; ++t) s += to_float(q(b, j, n_sink + t, c));
        mean[c] = static_cast<float>(s / static_cast<double>(count));
      }
      apply_averaged_rotation(cs, cs + d, static_cast<int>(d), mean, anchor + bj * d);
    }
    for (std::int64_t i = 0; i < e.batch * q_heads * d; ++i)
      if (!std::isfinite(anchor[i])) detail::require_finite(q, "observation.queries");  // names the element
    float const tau_f = static_cast<float>(tau);
    detail::parallel_for(dev, rows, [&](std::int64_t r, int t) {
      std::int64_t const b = r / heads, h = r % heads, m = cache.lengths[r] - n_sink;
      float* keys = buf + t * (2 * cap * d + 2 * cap);  // [m, d], unit rows
      float* values = keys + cap * d;                    // [m, d]
      float* w = values + cap * d;                       // [m]
      float* acc = w + cap;                              // [m]
      double* a = chol_buf + t * (d * d + d);            // [d, d], then its Cholesky factor
      double* z = a + d * d;                             // [d]
      detail::gather_keys(cache, b, h, n_sink, m, keys);
      detail::gather_values(cache, b, h, n_sink, m, values);
      for (std::int64_t i = 0; i < m; ++i) {  // F.normalize: x / max(‖x‖, 1e-12)
        float ss = 0.0f;
        for (std::int64_t c = 0; c < d; ++c) ss += keys[i * d + c] * keys[i * d + c];
        float const inv = 1.0f / std::max(std::sqrt(ss), 1e-12f);
        for (std::int64_t c = 0; c < d; ++c) keys[i * d + c] *= inv;
      }
      std::fill(acc, acc + m, 0.0f);
      for (std::int64_t j = 0; j < group; ++j) {
        float const* mu = anchor + (b * q_heads + h * group + j) * d;
        float mss = 0.0f;
        for (std::int64_t c = 0; c < d; ++c) mss += mu[c] * mu[c];
        float const mu_inv = 1.0f / std::max(std::sqrt(mss), 1e-12f);
        float top = -INFINITY;
        for (std::int64_t i = 0; i < m; ++i) {
          float dot = 0.0f;
          for (std::int64_t c = 0; c < d; ++c) dot += mu[c] * mu_inv * keys[i * d + c];
          w[i] = tau_f * std::clamp(dot, -1.0f, 1.0f);
          top = std::max(top, w[i]);
        }
        for (std::int64_t i = 0; i < m; ++i) w[i] = std::exp(w[i] - top);
        // A = I + Σ (w_i + ε) v_i v_iᵀ (lower triangle), then v_iᵀA⁻¹v_i by Cholesky.
        for (std::int64_t x = 0; x < d; ++x)
          for (std::int64_t y = 0; y <= x; ++y) a[x * d + y] = x == y ? 1.0 : 0.0;
        for (std::int64_t i = 0; i < m; ++i) {
          double const wi = static_cast<double>(w[i]) + epsilon;
          float const* v = values + i * d;
          for (std::int64_t x = 0; x < d; ++x) {
            double const wx = wi * v[x];
            for (std::int64_t y = 0; y <= x; ++y) a[x * d + y] += wx * v[y];
          }
        }
        if (!detail::cholesky_in_place(a, d)) {
          detail::require_finite_cache(CpuDevice{1}, cache);
          KVC_THROW("CapPress: the capacity matrix of (batch " << b << ", query head " << h * group + j
                                                               << ") is not positive definite (values too large for float)");
        }
        for (std::int64_t i = 0; i < m; ++i)
          acc[i] += static_cast<float>(w[i] * detail::inverse_quadratic_form(a, values + i * d, z, d));
      }
      float* out = scores + r * cap + n_sink;
      float mx = -INFINITY;
      for (std::int64_t i = 0; i < m; ++i) mx = std::max(mx, out[i] = acc[i] / static_cast<float>(group));
      row_max[r] = mx;
    });
    float const protect =
        detail::layer_score_max(dev, obs, cache, scores, *std::max_element(row_max, row_max + rows),
                                [&](std::int64_t r) { return std::pair<std::int64_t, std::int64_t>{n_sink, cache.lengths[r]}; }, ws) +
        1.0f;
    for (std::int64_t r = 0; r < rows; ++r) std::fill(scores + r * cap, scores + r * cap + n_sink, protect);
  }
};

}  // namespace kvcompress
