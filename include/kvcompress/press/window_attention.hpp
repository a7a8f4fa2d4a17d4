#pragma once
/// \file
/// \brief The observation-window attention shared by SnapKV, PyramidKV and TOVA: the attention
/// that the last w tokens of the chunk pay to the keys before the window, per query head.
///
/// From post-RoPE window queries (kvpress's `compute_window_attention`): logits q·k/√d over all n
/// keys of the row, causal mask (window row r, at slot n − w + r, sees slots ≤ n − w + r), softmax in
/// float, then the mean over the w rows of the probabilities of the first n − w keys (the window's
/// own keys stay in the denominator). From given attention probabilities: rows −w: and columns :n−w.

#include <Eigen/Core>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "kvcompress/detail/blocked_product.hpp"
#include "kvcompress/detail/gather.hpp"
#include "kvcompress/detail/row_kernels.hpp"
#include "kvcompress/press/scorer.hpp"

namespace kvcompress::detail {

/// Which input a window press uses — the window queries (true) or the attention (false) — with the
/// checks of their shapes against the cache's extents; throws when neither is given. Reads no cache
/// memory (shared with the CUDA device).
template <class T>
bool window_input_is_queries(Observation<T> const& obs, CacheExtents const& e, std::int64_t window) {
  if (!obs.window_queries.empty()) {
    auto const& s = obs.window_queries.shape;
    KVC_CHECK(s[0] == e.batch, "observation.window_queries batch = " << s[0] << " does not match the cache batch = " << e.batch);
    KVC_CHECK(s[1] > 0 && s[1] % e.kv_heads == 0,
              "observation.window_queries heads = " << s[1] << " must be a multiple of kv_heads = " << e.kv_heads);
    KVC_CHECK(s[2] == window, "observation.window_queries holds " << s[2] << " tokens, window_size = " << window);
    KVC_CHECK(s[3] == e.head_dim, "observation.window_queries head_dim = " << s[3] << " does not match the cache head_dim = "
                                                                          << e.head_dim);
    return true;
  }
  KVC_CHECK(!obs.attention.empty(), "observation.window_queries (post-RoPE queries of the last "
                                        << window << " tokens) or observation.attention must be given");
  auto const& s = obs.attention.shape;
  KVC_CHECK(s[0] == e.batch, "observation.attention batch = " << s[0] << " does not match the cache batch = " << e.batch);
  KVC_CHECK(s[1] > 0 && s[1] % e.kv_heads == 0,
            "observation.attention heads = " << s[1] << " must be a multiple of kv_heads = " << e.kv_heads);
  KVC_CHECK(s[2] > window, "observation.attention q_len = " << s[2] << " must exceed window_size = " << window);
  return false;
}

/// Which input a window press uses; checks it and the row lengths against the cache.
template <class T, class L>
bool window_from_queries(Observation<T> const& obs, KVCacheView<T, L> const& cache, std::int64_t window) {
  auto const& e = cache.extents;
  std::int64_t const rows = e.batch * e.kv_heads;
  for (std::int64_t r = 0; r < rows; ++r)
    KVC_CHECK(cache.lengths[r] > window, "cache length n = " << cache.lengths[r] << " of row " << r
                                                             << " must exceed window_size = " << window);
  if (window_input_is_queries(obs, e, window)) return true;
  for (std::int64_t r = 0; r < rows; ++r)
    KVC_CHECK(obs.attention.shape[3] == cache.lengths[r], "observation.attention covers " << obs.attention.shape[3]
                                                                                           << " keys, row " << r << " holds "
                                                                                           << cache.lengths[r]);
  return false;
}

/// Query rows (group × window) up to which the logits are per-key dot products rather than a GEMM.
inline constexpr std::int64_t kRowDotQueries = 8;

/// Scratch bytes of `window_attention_mean` per call.
template <class T, class L>
std::size_t window_attention_bytes(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache,
                                   std::int64_t window) {
  if (obs.window_queries.empty()) return 0;
  std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads;
  std::int64_t const threads = thread_count(dev, rows), group = obs.window_queries.shape[1] / cache.extents.kv_heads;
  std::int64_t const cap = cache.extents.capacity, d = cache.extents.head_dim;
  std::size_t const keys = size_product(cap, d), logits = size_product(group, window, d + cap);
  KVC_CHECK(keys <= kMaxScratchBytes - logits, "scratch of " << keys << " + " << logits << " floats exceeds 2^56");
  return Workspace::bytes_for<float>(size_product(threads, static_cast<std::int64_t>(keys + logits)));
}

/// For every row (b, h) calls `sink(r, j, probs)` for each query head j of the group, with
/// probs[i] (i < n − w) the window-mean attention of query head h·G + j to key i.
template <class T, class L, class Sink>
void window_attention_mean(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache,
                           std::int64_t window, bool from_queries, float* probs_buf /*[threads, G, cap]*/,
                           Workspace& ws, Sink&& sink) {
  using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  auto const& e = cache.extents;
  std::int64_t const heads = e.kv_heads, d = e.head_dim, cap = e.capacity, rows = e.batch * heads;
  Tensor4<T> const& src = from_queries ? obs.window_queries : obs.attention;
  std::int64_t const group = src.shape[1] / heads;
  int const threads = thread_count(dev, rows);
  float* key_buf = from_queries ? ws.take<float>(static_cast<std::size_t>(threads * (cap * d + group * window * (d + cap))))
                                : nullptr;
  float const inv_sqrt_d = 1.0f / std::sqrt(static_cast<float>(d));
  RowIsa const isa = row_isa(dev, d);
  parallel_for(dev, rows, [&](std::int64_t r, int t) {
    std::int64_t const b = r / heads, h = r % heads, n = cache.lengths[r], m = n - window;
    float* probs = probs_buf + t * group * cap;
    if (!from_queries) {
      std::int64_t const q = src.shape[2];
      for (std::int64_t j = 0; j < group; ++j) {
        float* p = probs + j * cap;
        for (std::int64_t i = 0; i < m; ++i) {
          float acc = 0.0f;
          for (std::int64_t row = q - window; row < q; ++row) acc += to_float(src(b, h * group + j, row, i));
          p[i] = acc / static_cast<float>(window);
        }
        sink(r, j, static_cast<float const*>(p));
      }
      return;
    }
    float* kbuf = key_buf + t * (cap * d + group * window * (d + cap));
    float* qbuf = kbuf + cap * d;
    float* lbuf = qbuf + group * window * d;
    for (std::int64_t j = 0; j < group; ++j)
      for (std::int64_t w = 0; w < window; ++w)
        for (std::int64_t c = 0; c < d; ++c) qbuf[(j * window + w) * d + c] = to_float(src(b, h * group + j, w, c));
    Eigen::Map<RowMat const> qs(qbuf, group * window, d);
    Eigen::Map<RowMat> logits(lbuf, group * window, n);
    // Float keys of a strided layout with contiguous channels are read where they lie; any other
    // cache is first gathered into float rows. For TOVA's single query the copy would double the
    // bytes read.
    bool in_place = false;
    if (group * window <= kRowDotQueries && unit_dim_stride(cache.key_layout)) {
      // A few query rows (TOVA's last query): a matrix-vector product, bound by reading the keys;
      // each key is read once where it lies and meets every query row in registers.
      for_key_runs(cache, b, h, 0, n, [&](T const* keys, std::int64_t count, std::int64_t stride, std::int64_t i0) {
        key_dots(isa, keys, count, stride, d, qbuf, group * window, lbuf + i0, n);
      });
      in_place = true;
    } else if (group * window <= kRowDotQueries) {  // other layouts: gathered, then the same kernel
      gather_keys(cache, b, h, 0, n, kbuf);
      key_dots(isa, static_cast<float const*>(kbuf), n, d, d, qbuf, group * window, lbuf, n);
      in_place = true;
    }
    if constexpr (std::is_same_v<T, float> && std::is_same_v<L, StridedLayout>) {
      if (!in_place && cache.key_layout.unit_dim_stride()) {
        using Strided = Eigen::Map<RowMat const, 0, Eigen::OuterStride<>>;
        Strided const keys(&cache.key(b, h, 0, 0), n, d, Eigen::OuterStride<>(cache.key_layout.strides[2]));
        blocked_product<false>(logits, qs, keys.transpose());
        in_place = true;
      }
    }
    if (!in_place) {
      gather_keys(cache, b, h, 0, n, kbuf);
      blocked_product<false>(logits, qs, Eigen::Map<RowMat const>(kbuf, n, d).transpose());
    }
    for (std::int64_t j = 0; j < group; ++j) {
      float* p = probs + j * cap;
      std::fill(p, p + m, 0.0f);
      for (std::int64_t w = 0; w < window; ++w) {
        // The softmax runs on Eigen arrays so that exp is vectorised: with scalar std::exp it, not
        // the logits' GEMM, was the cost of a window row.
        Eigen::Map<Eigen::ArrayXf> z(lbuf + (j * window + w) * n, m + w + 1);  // slots 0 … n − w + row
        z *= inv_sqrt_d;
        z = (z - z.maxCoeff()).exp();
        float const scale = 1.0f / (z.sum() * static_cast<float>(window));
        for (std::int64_t i = 0; i < m; ++i) p[i] += z[i] * scale;
      }
      sink(r, j, static_cast<float const*>(p));
    }
  });
}

/// avg_pool1d(kernel, stride 1, zero padding kernel/2, padding counted in the divisor), added
/// with weight `weight` into out. \param in [m] \param out [m]
inline void add_avg_pool(float const* in, std::int64_t m, std::int64_t kernel, float weight, float* out) {
  std::int64_t const half_k = kernel / 2;
  float const w = weight / static_cast<float>(kernel);
  for (std::int64_t i = 0; i < m; ++i) {
    float acc = 0.0f;
    for (std::int64_t t = std::max<std::int64_t>(0, i - half_k); t <= std::min(m - 1, i + half_k); ++t) acc += in[t];
    out[i] += acc * w;
  }
}

/// Sets slots [n − window, n) of every row to the global maximum of the other slots + 1.
template <class T, class L>
void protect_window(KVCacheView<T, L> const& cache, float* scores, std::int64_t window) {
  std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads, cap = cache.extents.capacity;
  float m = -INFINITY;
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t i = 0; i < cache.lengths[r] - window; ++i) m = std::max(m, scores[r * cap + i]);
  float const protect = (std::isfinite(m) ? m : 0.0f) + 1.0f;
  for (std::int64_t r = 0; r < rows; ++r)
    std::fill(scores + r * cap + cache.lengths[r] - window, scores + r * cap + cache.lengths[r], protect);
}

}  // namespace kvcompress::detail
