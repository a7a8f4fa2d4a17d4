#pragma once
/// \file
/// \brief CriticalKV and CriticalAdaKV (arXiv 2502.03805): an entry matters as much as the output
/// it can produce, so the inner press's score is weighted by u_i = mean over the query heads j of
/// the group of ‖W_o^{(j)} v_i‖₁ (the value projected by that head's slice of the output
/// projection). Two stages: the best first_stage_ratio of the budget is kept on the inner score
/// alone, the rest on (score + ε)·u.
///
/// The inner press should not weight by the value norm itself (Expected Attention: use_vnorm = false):
/// u already accounts for the values.
///
/// CriticalKVPress is a scorer press (its scores carry the stage-1 winners at FLT_MAX).
/// CriticalAdaKVPress splits the sequence's budget across heads as AdaKV does, then runs both
/// stages per head with that head's budget; each head keeps its own number of entries.

#include <Eigen/Core>
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "kvcompress/detail/finite.hpp"
#include "kvcompress/detail/gather.hpp"
#include "kvcompress/press/adakv.hpp"
#include "kvcompress/press/scorer.hpp"

namespace kvcompress {

namespace detail {

/// Value rows per GEMM of `value_projection_norms`.
inline constexpr std::int64_t kValueTile = 64;

/// Checks W_o against the cache and returns its number of query heads.
template <class T, class L>
std::int64_t check_output_projection(Observation<T> const& obs, KVCacheView<T, L> const& cache) {
  Tensor2<T> const& w = obs.output_projection;
  KVC_CHECK(!w.empty(),
            "observation.output_projection (W_o, [hidden, q_heads * head_dim]) must be given: "
            "CriticalKV weighs each entry by the L1 norm of its projected value");
  std::int64_t const d = cache.extents.head_dim, cols = w.shape[1];
  KVC_CHECK(cols % d == 0,
            "observation.output_projection has " << cols << " columns, not a multiple of head_dim = " << d);
  KVC_CHECK((cols / d) % cache.extents.kv_heads == 0,
            "observation.output_projection holds "
                << cols / d << " query heads, not a multiple of kv_heads = " << cache.extents.kv_heads);
  return cols / d;
}

template <class T, class L>
std::size_t value_projection_bytes(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache) {
  std::int64_t const hidden = obs.output_projection.empty() ? 0 : obs.output_projection.shape[0];
  std::int64_t const d = cache.extents.head_dim;
  auto const threads = thread_count(dev, cache.extents.batch * cache.extents.kv_heads);
  return Workspace::bytes_for<float>(size_product(threads, hidden + kValueTile, d + kValueTile));
}

/// kvpress's `vwl1norm`: norms[r, i] = (1/G) Σ_{j in the group of row r} ‖W_o[:, j·d : (j+1)·d] · v_i‖₁.
/// \param norms [batch, kv_heads, capacity]
template <class T, class L>
void value_projection_norms(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache,
                            float* norms, Workspace& ws) {
  using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  std::int64_t const group = check_output_projection(obs, cache) / cache.extents.kv_heads;
  Tensor2<T> const& w = obs.output_projection;
  std::int64_t const heads = cache.extents.kv_heads, d = cache.extents.head_dim, cap = cache.extents.capacity;
  std::int64_t const hidden = w.shape[0], rows = cache.extents.batch * heads;
  // (hidden + tile)(d + tile) bounds hidden·d + tile·(d + hidden), the size `value_projection_bytes` checked.
  std::int64_t const per_thread = hidden * d + kValueTile * (d + hidden);
  float* buf = ws.take<float>(static_cast<std::size_t>(thread_count(dev, rows) * per_thread));
  parallel_for(dev, rows, [&](std::int64_t r, int t) {
    std::int64_t const b = r / heads, h = r % heads, n = cache.lengths[r];
    float* w_j = buf + t * per_thread;  // [hidden, d]: head j's columns of W_o
    float* v = w_j + hidden * d;        // [kValueTile, d]
    float* y = v + kValueTile * d;      // [kValueTile, hidden]
    float* out = norms + r * cap;
    std::fill(out, out + n, 0.0f);
    for (std::int64_t j = h * group; j < (h + 1) * group; ++j) {
      for (std::int64_t e = 0; e < hidden; ++e)
        for (std::int64_t c = 0; c < d; ++c) w_j[e * d + c] = to_float(w(e, j * d + c));
      for (std::int64_t i0 = 0; i0 < n; i0 += kValueTile) {
        std::int64_t const count = std::min(kValueTile, n - i0);
        gather_values(cache, b, h, i0, count, v);
        Eigen::Map<RowMat> proj(y, count, hidden);
        proj.noalias() = Eigen::Map<RowMat const>(v, count, d) * Eigen::Map<RowMat const>(w_j, hidden, d).transpose();
        for (std::int64_t i = 0; i < count; ++i) out[i0 + i] += proj.row(i).template lpNorm<1>();
      }
    }
    float const inv_group = 1.0f / static_cast<float>(group);
    for (std::int64_t i = 0; i < n; ++i) out[i] *= inv_group;
  });
  // A NaN or ±Inf in W_o or in a value would silently rank last; name it (only on this error path).
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t i = 0; i < cache.lengths[r]; ++i)
      if (!std::isfinite(norms[r * cap + i])) {
        require_finite(make_tensor4(w.data, {1, 1, hidden, w.shape[1]}, {0, 0, w.strides[0], w.strides[1]}),
                       "observation.output_projection[0, 0, row, column]");
        require_finite_cache(dev, cache);
        KVC_THROW("the value projection norm of (batch " << r / heads << ", kv head " << r % heads << ", slot " << i
                                                         << ") overflows float: " << norms[r * cap + i]);
      }
}

inline void check_critical_params(double epsilon, double first_stage_ratio) {
  KVC_CHECK(std::isfinite(epsilon), "epsilon must be finite, got " << epsilon);
  KVC_CHECK(first_stage_ratio >= 0.0 && first_stage_ratio <= 1.0,
            "first_stage_ratio must be in [0, 1], got " << first_stage_ratio);
}

/// Stage 2 of one row: s ← (s + ε)·u, then the entries idx[0, forced) get FLT_MAX (always kept).
/// \param s [n] \param u [n] \param idx [forced]
inline void critical_second_stage(float* s, float const* u, std::int64_t n, float epsilon, std::int32_t const* idx,
                                  std::int64_t forced) {
  for (std::int64_t i = 0; i < n; ++i) s[i] = (s[i] + epsilon) * u[i];
  for (std::int64_t j = 0; j < forced; ++j) s[idx[j]] = FLT_MAX;
}

}  // namespace detail

/// \brief CriticalKV around a scorer press. A scorer press itself: its ratio and row budget are the
/// inner press's.
template <class Press>
struct CriticalKVPress {
  Press press;
  double epsilon = 1e-4;
  /// Fraction of the budget chosen on the inner score alone (stage 1).
  double first_stage_ratio = 0.5;

  template <class T, class L>
  [[nodiscard]] std::size_t workspace_bytes(CpuDevice const& dev, Observation<T> const& obs,
                                            KVCacheView<T, L> const& cache) const {
    std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads, cap = cache.extents.capacity;
    return detail::sum_bytes(press.workspace_bytes(dev, obs, cache), Workspace::bytes_for<float>(detail::size_product(rows, cap)),
                              Workspace::bytes_for<std::int32_t>(detail::size_product(detail::thread_count(dev, rows), cap)),
                              detail::value_projection_bytes(dev, obs, cache));
  }

  template <class T, class L>
  void score(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, float* scores,
             Workspace& ws) const {
    detail::check_critical_params(epsilon, first_stage_ratio);
    detail::check_output_projection(obs, cache);
    press.score(dev, obs, cache, scores, ws);
    std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads, cap = cache.extents.capacity;
    float* norms = ws.take<float>(static_cast<std::size_t>(rows * cap));
    detail::value_projection_norms(dev, obs, cache, norms, ws);
    std::int32_t* idx = ws.take<std::int32_t>(static_cast<std::size_t>(detail::thread_count(dev, rows) * cap));
    double const ratio = compression_ratio_of(press);
    detail::parallel_for(dev, rows, [&](std::int64_t r, int t) {
      std::int64_t const n = cache.lengths[r];
      // kvpress: int((1 − r)·n·β₁), at least 1 while anything is kept; never more than the row budget.
      auto m1 = static_cast<std::int64_t>((1.0 - ratio) * static_cast<double>(n) * first_stage_ratio);
      if (first_stage_ratio > 0.0) m1 = ratio < 1.0 ? std::max<std::int64_t>(1, m1) : 0;
      m1 = std::clamp<std::int64_t>(m1, 0, std::min<std::int64_t>(n, detail::press_kept_count(press, n, obs)));
      std::int32_t* row_idx = idx + t * cap;
      cpu_impl::select_topk_row(scores + r * cap, static_cast<std::int32_t>(n), static_cast<std::int32_t>(m1), row_idx);
      detail::critical_second_stage(scores + r * cap, norms + r * cap, n, static_cast<float>(epsilon), row_idx, m1);
    });
  }
};

template <class Press>
CriticalKVPress(Press) -> CriticalKVPress<Press>;
template <class Press>
CriticalKVPress(Press, double) -> CriticalKVPress<Press>;
template <class Press>
CriticalKVPress(Press, double, double) -> CriticalKVPress<Press>;

/// \brief CriticalAdaKV around a scorer press: AdaKV's per-head budgets c_r (with its safeguard),
/// then per head stage 1 (the top max(⌊c_r·β₁⌋, safeguard) entries on the inner score) and stage 2
/// (the rest of c_r on (score + ε)·u). Heads keep different numbers of entries.
template <class Press>
struct CriticalAdaKVPress {
  Press press;
  double alpha_safeguard = 0.20;
  double epsilon = 1e-4;
  double first_stage_ratio = 0.5;

  template <class T, class L>
  [[nodiscard]] std::size_t compress_workspace_bytes(CpuDevice const& dev, Observation<T> const& obs,
                                                     KVCacheView<T, L> const& cache) const {
    std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads, cap = cache.extents.capacity;
    auto const f = [](auto... n) { return Workspace::bytes_for<float>(detail::size_product(n...)); };
    auto const i = [](auto... n) { return Workspace::bytes_for<std::int32_t>(detail::size_product(n...)); };
    return detail::sum_bytes(2 * f(rows, cap), 2 * i(rows), 2 * i(detail::thread_count(dev, rows), cap),
                              detail::adakv_layer_counts_bytes(dev, obs, cache), detail::value_projection_bytes(dev, obs, cache),
                              press.workspace_bytes(dev, obs, cache));
  }

  template <class T, class L>
  void compress(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, Workspace ws) const {
    double const ratio = compression_ratio_of(press);
    check_compression_ratio(ratio);
    if (ratio == 0.0) return;
    detail::check_alpha_safeguard(alpha_safeguard);
    detail::check_critical_params(epsilon, first_stage_ratio);
    detail::check_output_projection(obs, cache);
    std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads, cap = cache.extents.capacity;
    float* scores = ws.take<float>(static_cast<std::size_t>(rows * cap));
    kvcompress::score(dev, press, obs, cache, scores, ws);
    // The norms (which may fail on a non-finite input) before the selection, which communicates on
    // a tensor-parallel shard: nothing may fail on one rank after the group's handshake.
    float* norms = ws.take<float>(static_cast<std::size_t>(rows * cap));
    detail::value_projection_norms(dev, obs, cache, norms, ws);
    std::int32_t* safe = ws.take<std::int32_t>(static_cast<std::size_t>(rows));
    std::int32_t* counts = ws.take<std::int32_t>(static_cast<std::size_t>(rows));
    detail::adakv_layer_counts(
        dev, obs, cache, scores, alpha_safeguard,
        [&](std::int64_t n) { return detail::press_kept_count(press, n, obs); }, safe, counts, ws);
    std::int32_t* idx = ws.take<std::int32_t>(static_cast<std::size_t>(detail::thread_count(dev, rows) * cap));
    detail::parallel_for(dev, rows, [&](std::int64_t r, int t) {
      // kvpress computes the stage-1 budget as a float32 tensor product, then truncates.
      auto const b1 = static_cast<std::int64_t>(static_cast<float>(counts[r]) * static_cast<float>(first_stage_ratio));
      std::int64_t const forced = std::max<std::int64_t>(b1, safe[r]);
      std::int32_t* row_idx = idx + t * cap;
      cpu_impl::select_topk_row(scores + r * cap, cache.lengths[r], static_cast<std::int32_t>(forced), row_idx);
      detail::critical_second_stage(scores + r * cap, norms + r * cap, cache.lengths[r], static_cast<float>(epsilon),
                                    row_idx, forced);
    });
    keep_topk(
        dev, cache, scores, [counts](std::int64_t r, std::int64_t) { return counts[r]; }, ws);
  }
};

template <class Press>
CriticalAdaKVPress(Press) -> CriticalAdaKVPress<Press>;
template <class Press>
CriticalAdaKVPress(Press, double) -> CriticalAdaKVPress<Press>;
template <class Press>
CriticalAdaKVPress(Press, double, double) -> CriticalAdaKVPress<Press>;
template <class Press>
CriticalAdaKVPress(Press, double, double, double) -> CriticalAdaKVPress<Press>;

}  // namespace kvcompress
