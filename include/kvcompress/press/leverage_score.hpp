#pragma once
/// \file
/// \brief LeverageScore (Compactor, arXiv 2507.08143): keys that are geometric outliers matter.
/// Per (batch, kv head): the pre-RoPE keys K⁰ [n, d], centred over the sequence, are sketched on the
/// right, X = (K⁰ − mean) Φ [n, k], and each key is scored by its approximate leverage
/// ℓ_i = x_iᵀ (XᵀX + jI)⁻¹ x_i (Cholesky with jitter j = 1e-2, ×10 on failure, five tries), clamped at
/// 0. The scores are then z-scored over every batch element, head and entry together.
///
/// The sketch Φ [batch, kv_heads, head_dim, sketch_dimension] (on a tensor-parallel shard the whole
/// layer's, each head reading its global head's) is the caller's: kvpress draws it
/// from torch's global generator at every call (N(0, 1/k)); a caller reproduces a kvpress run by
/// handing over the matrix kvpress drew. The pre-RoPE keys are the cached keys rotated back,
/// R_{−p}K_p / attention_scaling (kvpress recomputes them from W_k; equal up to float rounding).
/// Prefill only, as in kvpress.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include <Eigen/Core>

#include "kvcompress/detail/blocked_product.hpp"
#include "kvcompress/detail/cholesky.hpp"
#include "kvcompress/detail/gather.hpp"
#include "kvcompress/press/prefill_z_score.hpp"
#include "kvcompress/press/scorer.hpp"
#include "kvcompress/rope/rotary_embedding.hpp"

namespace kvcompress {

namespace detail {

/// Checks of a leverage sketch against the cache; returns nothing, throws naming the field.
template <class T, class L>
void check_leverage_inputs(float const* sketch, std::int64_t k, Observation<T> const& obs, KVCacheView<T, L> const& cache,
                           char const* press) {
  KVC_CHECK(k > 0, press << " sketch_dimension must be positive, got " << k);
  std::int64_t const heads = layer_kv_heads(obs, cache);  // on a shard the sketch is the whole layer's
  KVC_CHECK(sketch != nullptr, press << " sketch must be given: [batch, kv_heads, head_dim, sketch_dimension] = ["
                                     << cache.extents.batch << ", " << heads << ", " << cache.extents.head_dim
                                     << ", " << k << "] floats (kvpress draws N(0, 1/sketch_dimension) entries)");
  KVC_CHECK(obs.rope != nullptr, press << " needs observation.rope (the cached keys are rotated back to pre-RoPE keys)");
  KVC_CHECK(obs.rope->head_dim() == cache.extents.head_dim, "observation.rope head_dim = " << obs.rope->head_dim()
                                                                                          << " does not match the cache head_dim = "
                                                                                          << cache.extents.head_dim);
  std::int64_t const total = cache.extents.batch * heads * cache.extents.head_dim * k;
  for (std::int64_t i = 0; i < total; ++i)
    KVC_CHECK(std::isfinite(sketch[i]), press << " sketch[" << i << "] = " << sketch[i] << " is not finite");
}

/// Scratch bytes of `leverage_scores`.
template <class T, class L>
std::size_t leverage_bytes(CpuDevice const& dev, KVCacheView<T, L> const& cache, std::int64_t k) {
  std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads, d = cache.extents.head_dim;
  std::int64_t const threads = thread_count(dev, rows), cap = cache.extents.capacity;
  auto const f = [](auto... n) { return Workspace::bytes_for<float>(size_product(n...)); };
  return sum_bytes(f(d / 2), f(threads, cap, d), f(threads, cap, k),
                   Workspace::bytes_for<double>(size_product(threads, k, k + 1)));
}

/// Raw leverage scores of slots [lo, hi) of every row into scores (same slots).
/// \param sketch [batch, layer kv_heads, head_dim, k] (a shard reads its heads') \param scores [batch, kv_heads, capacity]
template <class T, class L>
void leverage_scores(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, float const* sketch,
                     std::int64_t k, std::int64_t lo, std::int64_t hi, float* scores, Workspace& ws, char const* press) {
  using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  auto const& e = cache.extents;
  std::int64_t const heads = e.kv_heads, d = e.head_dim, cap = e.capacity, rows = e.batch * heads, m = hi - lo;
  std::int64_t const layer_heads = layer_kv_heads(obs, cache);
  int const threads = thread_count(dev, rows);
  float* inv = ws.take<float>(static_cast<std::size_t>(d / 2));
  float* key_buf = ws.take<float>(static_cast<std::size_t>(threads * cap * d));
  float* x_buf = ws.take<float>(static_cast<std::size_t>(threads * cap * k));
  double* gram_buf = ws.take<double>(static_cast<std::size_t>(threads * (k * k + k)));
  obs.rope->inv_freq_for(obs.position + obs.chunk_tokens(), inv);
  float const a = obs.rope->attention_scaling();
  parallel_for(dev, rows, [&](std::int64_t r, int t) {
    std::int64_t const b = r / heads, h = r % heads;
    float* keys = key_buf + t * cap * d;  // [m, d]: pre-RoPE, then centred
    float* x = x_buf + t * cap * k;       // [m, k]
    double* g = gram_buf + t * (k * k + k);  // [k, k]: XᵀX + jI, then its Cholesky factor
    double* z = g + k * k;                   // [k]
    gather_keys(cache, b, h, lo, m, keys);
    std::int64_t const half_d = d / 2;
    for (std::int64_t i = 0; i < m; ++i) {  // R_{−p} K_p / a
      float const p = static_cast<float>(cache.position(b, h, lo + i));
      float* row = keys + i * d;
      for (std::int64_t c = 0; c < half_d; ++c) {
        float const angle = inv[c] * p, cs = std::cos(angle), sn = std::sin(angle);
        float const x0 = row[c], x1 = row[c + half_d];
        row[c] = (x0 * cs + x1 * sn) / a;
        row[c + half_d] = (x1 * cs - x0 * sn) / a;
      }
    }
    for (std::int64_t c = 0; c < d; ++c) {
      double mean = 0.0;
      for (std::int64_t i = 0; i < m; ++i) mean += keys[i * d + c];
      auto const mf = static_cast<float>(mean / static_cast<double>(m));
      for (std::int64_t i = 0; i < m; ++i) keys[i * d + c] -= mf;
    }
    blocked_product<false>(Eigen::Map<RowMat>(x, m, k), Eigen::Map<RowMat const>(keys, m, d),
                           Eigen::Map<RowMat const>(sketch + (b * layer_heads + obs.shard.first_kv_head + h) * d * k, d, k));
    // Cholesky of XᵀX + jI with kvpress's jitter schedule: 1e-2, then ×10, five tries.
    bool factored = false;
    double jitter = 1e-2;
    for (int attempt = 0; attempt < 5 && !factored; ++attempt, jitter *= 10.0) {
      for (std::int64_t i = 0; i < k; ++i)
        for (std::int64_t j = 0; j <= i; ++j) {
          double s = 0.0;
          for (std::int64_t n = 0; n < m; ++n) s += static_cast<double>(x[n * k + i]) * x[n * k + j];
          g[i * k + j] = s + (i == j ? jitter : 0.0);
        }
      factored = cholesky_in_place(g, k);
    }
    if (!factored) {
      require_finite_cache(CpuDevice{1}, cache);
      KVC_THROW(press << ": the Cholesky factorisation of the sketched key Gram matrix of (batch " << b << ", kv head " << h
                      << ") failed after 5 jitters (1e-2 … 1e2), as kvpress's would");
    }
    // ℓ_i = x_iᵀ (LLᵀ)⁻¹ x_i = ‖L⁻¹ x_i‖².
    for (std::int64_t n = 0; n < m; ++n)
      scores[r * cap + lo + n] = static_cast<float>(std::max(inverse_quadratic_form(g, x + n * k, z, k), 0.0));
  });
}

}  // namespace detail

struct LeverageScorePress {
  double compression_ratio = 0.0;
  std::int64_t sketch_dimension = 48;
  /// Φ [batch, kv_heads, head_dim, sketch_dimension]; kvpress draws N(0, 1/sketch_dimension).
  float const* sketch = nullptr;

  template <class T, class L>
  [[nodiscard]] std::size_t workspace_bytes(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache) const {
    return detail::sum_bytes(detail::leverage_bytes(dev, cache, std::max<std::int64_t>(sketch_dimension, 1)),
                             detail::global_z_score_bytes(obs, cache, 1));
  }

  template <class T, class L>
  void score(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, float* scores,
             Workspace& ws) const {
    char const* const name = "LeverageScorePress";
    detail::check_leverage_inputs(sketch, sketch_dimension, obs, cache, name);
    std::int64_t const n = detail::require_prefill(obs, cache, name);
    detail::leverage_scores(dev, obs, cache, sketch, sketch_dimension, 0, n, scores, ws, name);
    detail::global_z_score(dev, obs, cache, &scores, 1, 0, n, name, ws);
  }
};

}  // namespace kvcompress
