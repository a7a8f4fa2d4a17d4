#pragma once
/// \file
/// \brief The engine's kernels on row-major float matrices: linear layers (Eigen GEMM, or avx512.hpp's
/// register-blocked product for a prefill on an AVX-512 CPU; split over output columns across the pool),
/// RMSNorm, SwiGLU, RoPE — each written as HF transformers computes it.

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kvc_engine/forward/avx512.hpp"
#include "kvc_engine/forward/thread_pool.hpp"

namespace kvc_engine::ops {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstMap = Eigen::Map<RowMat const>;
using StridedMap = Eigen::Map<RowMat, 0, Eigen::OuterStride<>>;

/// y = x·wᵀ (+ bias), as nn.Linear. Output columns are split across the pool when the product is big
/// enough to pay for it. With many rows on an AVX-512 CPU, avx512.hpp's register-blocked product does it
/// (each block's weights transposed once, then read by every row); with few (decoding), Eigen's
/// matrix-vector products read the weights where they lie.
/// \param x [n, in] \param w [out, in] \param bias [out] or null \param y [n, out]
inline void linear(ThreadPool& pool, float const* x, std::int64_t n, std::int64_t in, float const* w, float const* bias,
                   std::int64_t out, float* y) {
  constexpr std::int64_t kMinFlopsPerBlock = 1 << 15, kMinColumns = 16, kMinKernelRows = 64;
  std::int64_t const blocks =
      std::max<std::int64_t>(1, std::min<std::int64_t>({static_cast<std::int64_t>(pool.size()), out / kMinColumns,
                                                       n * in * out / kMinFlopsPerBlock}));
  pool.parallel_for(blocks, [&](std::int64_t b, int) {
    std::int64_t const o0 = out * b / blocks, o1 = out * (b + 1) / blocks;
    ConstMap const X(x, n, in);
    ConstMap const W(w + o0 * in, o1 - o0, in);
    StridedMap Y(y + o0, n, o1 - o0, Eigen::OuterStride<>(out));
#if KVC_ENGINE_AVX512
    if (n >= kMinKernelRows && (o1 - o0) % 16 == 0 && detail::cpu_has_avx512f())
      detail::linear_avx512(x, n, in, w + o0 * in, o1 - o0, y + o0, out);
    else
#endif
      Y.noalias() = X * W.transpose();
    if (bias != nullptr) Y.rowwise() += Eigen::Map<Eigen::RowVectorXf const>(bias + o0, o1 - o0);
  });
}

/// RMSNorm of each row of length `dim` (stride `dim`): y = w ⊙ (x · rsqrt(mean(x²) + eps)), in place
/// allowed. \param x [rows, dim] \param w [dim] \param y [rows, dim]
inline void rms_norm(float const* x, std::int64_t rows, std::int64_t dim, float const* w, double eps, float* y) {
  for (std::int64_t r = 0; r < rows; ++r) {
    float const* xr = x + r * dim;
    float* yr = y + r * dim;
    float sum = 0.0f;
    for (std::int64_t i = 0; i < dim; ++i) sum += xr[i] * xr[i];
    float const inv = 1.0f / std::sqrt(sum / static_cast<float>(dim) + static_cast<float>(eps));
    for (std::int64_t i = 0; i < dim; ++i) yr[i] = w[i] * (xr[i] * inv);
  }
}

/// gate ← silu(gate) ⊙ up (SwiGLU), with Eigen's vectorised exp (std::exp is scalar, and a prefill runs
/// tokens × intermediate_size of them per layer). \param gate [n] \param up [n]
inline void silu_mul(float* gate, float const* up, std::int64_t n) {
  Eigen::Map<Eigen::ArrayXf> g(gate, n);
  g = g / (1.0f + (-g).exp()) * Eigen::Map<Eigen::ArrayXf const>(up, n);
}

/// RoPE in HF's rotate_half convention, x ← x⊙cos + rotate_half(x)⊙sin, for every head of every token.
/// \param x [tokens, heads, d] \param cos [tokens, d] \param sin [tokens, d]
inline void apply_rope(float* x, std::int64_t tokens, std::int64_t heads, std::int64_t d, float const* cos,
                       float const* sin) {
  std::int64_t const hd = d / 2;
  for (std::int64_t t = 0; t < tokens; ++t) {
    float const* c = cos + t * d;
    float const* s = sin + t * d;
    for (std::int64_t h = 0; h < heads; ++h) {
      float* v = x + (t * heads + h) * d;
      for (std::int64_t i = 0; i < hd; ++i) {
        float const lo = v[i], hi = v[i + hd];
        v[i] = lo * c[i] - hi * s[i];
        v[i + hd] = hi * c[i + hd] + lo * s[i + hd];
      }
    }
  }
}

/// Softmax of z[0, visible) in place (max-subtracted, float, Eigen's vectorised exp); z[visible, n) is set to 0.
inline void softmax_prefix(float* z, std::int64_t visible, std::int64_t n) {
  Eigen::Map<Eigen::ArrayXf> v(z, visible);
  v = (v - v.maxCoeff()).exp();
  v *= 1.0f / v.sum();
  std::fill(z + visible, z + n, 0.0f);
}

}  // namespace kvc_engine::ops
