#pragma once
/// \file
/// \brief Quadratic forms of bfloat16 keys, and Gram matrices of bf16-rounded queries, on the CPU's
/// AVX512_BF16 dot product (VDPBF16PS: 32
/// bf16 products summed pairwise into 16 fp32 lanes, twice the multiply-adds of an fp32 FMA), with
/// fp32 accumulation. Compiled for that instruction set function by function (target attributes),
/// so the portable build carries it too; a run-time check of the CPU chooses it, and the portable
/// path is the fallback. nvcc translation units compile it too (for their host code), so that every
/// translation unit sees the same inline definitions.

#include <Eigen/Core>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kvcompress/core/device.hpp"
#include "kvcompress/detail/simd_reduce.hpp"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define KVC_BF16_DOT_KERNEL 1
#include <immintrin.h>
// Full unrolling keeps the accumulator arrays in registers; nvcc's front end rejects the pragma (a
// warning), and its translation units run the CPU kernels only as a fallback of the GPU path.
#if defined(__CUDACC__)
#define KVC_BF16_UNROLL
#else
#define KVC_BF16_UNROLL _Pragma("GCC unroll 8")
#endif
#else
#define KVC_BF16_DOT_KERNEL 0
#endif

namespace kvcompress::detail {

/// Whether this CPU (and its OS, which must save the 512-bit registers) runs AVX512_BF16 with the
/// AVX-512 subsets the kernel uses. Asked once per process.
[[nodiscard]] inline bool cpu_has_avx512_bf16() noexcept {
#if KVC_BF16_DOT_KERNEL
  static bool const has = __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512f") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw");
  return has;
#else
  return false;
#endif
}

/// Whether a call on `dev` runs the bf16 kernel, given what the CPU check said (`cpu_has`, passed in
/// so that a test can answer for the CPU) and the head dimension, which must be a multiple of the
/// 16 fp32 lanes.
[[nodiscard]] inline bool use_bf16_dot(CpuDevice const& dev, bool cpu_has, std::int64_t head_dim) noexcept {
  return KVC_BF16_DOT_KERNEL && cpu_has && dev.kernels == CpuKernels::kNative && head_dim > 0 && head_dim % 16 == 0;
}

/// The bf16 bits of x, rounded to nearest even.
[[nodiscard]] inline std::uint16_t bf16_bits(float x) noexcept {
  return Eigen::numext::bit_cast<std::uint16_t>(Eigen::bfloat16(x));
}

/// A symmetric d × d matrix in the layout the kernel reads: bf16 pairs along the reduction index,
/// out[(p·d + c)·2 + e] = a[2p + e, c] (each fp32 lane then sums the products of two consecutive
/// reduction indices). \param a [d, d] row-major fp32 \param out [d/2, d, 2] bf16 bits; d even
inline void pack_bf16_pairs(float const* a, std::int64_t d, std::uint16_t* out) {
  for (std::int64_t p = 0; p < d / 2; ++p)
    for (std::int64_t c = 0; c < d; ++c) {
      out[(p * d + c) * 2] = bf16_bits(a[(2 * p) * d + c]);
      out[(p * d + c) * 2 + 1] = bf16_bits(a[(2 * p + 1) * d + c]);
    }
}

/// Rows of tokens in the layout the Gram kernel reads: bf16 pairs of consecutive tokens,
/// out[(p·d + a)·2 + e] = x[2p + e, a], an odd count padded with a zero token.
/// \param x [count, d] row-major fp32 \param out [(count + 1) / 2, d, 2] bf16 bits
inline void pack_token_pairs(float const* x, std::int64_t count, std::int64_t d, std::uint16_t* out) {
  for (std::int64_t t = 0; t < count; ++t)
    for (std::int64_t a = 0; a < d; ++a) out[((t / 2) * d + a) * 2 + t % 2] = bf16_bits(x[t * d + a]);
  if (count % 2 != 0)
    for (std::int64_t a = 0; a < d; ++a) out[((count / 2) * d + a) * 2 + 1] = 0;
}

#if KVC_BF16_DOT_KERNEL

#define KVC_TARGET_AVX512_BF16 __attribute__((target("avx512bf16,avx512f,avx512vl,avx512bw")))

/// 16 bf16 values (bits) widened to fp32: a 16-bit shift of the bits, exact.
KVC_TARGET_AVX512_BF16 inline __m512 bf16_widen(std::uint16_t const* p /*[16]*/) {
  __m256i const bits = _mm256_loadu_si256(reinterpret_cast<__m256i const*>(p));
  return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(kAllLanes16, _mm512_maskz_cvtepu16_epi32(kAllLanes16, bits), 16));
}

/// R keys × 16·C columns of y = μ + kΣ held in registers over the whole reduction, then
/// out[r] += Σ_c y[r, c]·k[r, c] over those columns. \param keys [R, d] bf16 bits
/// \param sigma [d/2, d, 2] (pack_bf16_pairs) \param mu [d] fp32 \param out [R]
template <int R, int C>
KVC_TARGET_AVX512_BF16 inline void bf16_quadratic_tile(std::uint16_t const* keys, std::int64_t d,
                                                       std::uint16_t const* sigma, float const* mu, std::int64_t col0,
                                                       float* out) {
  __m512 acc[R][C];
KVC_BF16_UNROLL
  for (std::int64_t r = 0; r < R; ++r)
KVC_BF16_UNROLL
    for (std::int64_t c = 0; c < C; ++c) acc[r][c] = _mm512_loadu_ps(mu + col0 + 16 * c);
  for (std::int64_t p = 0; p < d / 2; ++p) {
    __m512bh s[C];
KVC_BF16_UNROLL
    for (std::int64_t c = 0; c < C; ++c) s[c] = (__m512bh)_mm512_loadu_si512(sigma + (p * d + col0 + 16 * c) * 2);
KVC_BF16_UNROLL
    for (std::int64_t r = 0; r < R; ++r) {
      std::int32_t pair = 0;  // keys r, elements 2p and 2p + 1
      std::memcpy(&pair, keys + r * d + 2 * p, sizeof pair);
      __m512bh const k = (__m512bh)_mm512_set1_epi32(pair);
KVC_BF16_UNROLL
      for (std::int64_t c = 0; c < C; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], k, s[c]);
    }
  }
KVC_BF16_UNROLL
  for (std::int64_t r = 0; r < R; ++r) {
    __m512 sum = _mm512_setzero_ps();
KVC_BF16_UNROLL
    for (std::int64_t c = 0; c < C; ++c) {
      sum = _mm512_fmadd_ps(acc[r][c], bf16_widen(keys + r * d + col0 + 16 * c), sum);
    }
    out[r] += lane_sum16(sum);
  }
}

/// Columns [col0, col0 + 16·C) of every key's form: four keys at a time, then one at a time.
template <int C>
KVC_TARGET_AVX512_BF16 inline void bf16_quadratic_columns(std::uint16_t const* keys, std::int64_t n, std::int64_t d,
                                                          std::uint16_t const* sigma, float const* mu, std::int64_t col0,
                                                          float* out) {
  std::int64_t i = 0;
  for (; i + 4 <= n; i += 4) bf16_quadratic_tile<4, C>(keys + i * d, d, sigma, mu, col0, out + i);
  for (; i < n; ++i) bf16_quadratic_tile<1, C>(keys + i * d, d, sigma, mu, col0, out + i);
}

/// out[i] = kᵢᵀΣkᵢ + μᵀkᵢ for n bf16 keys: products of bf16 pairs, every sum in fp32 (μ enters
/// the sums unrounded). \param keys [n, d] bf16 bits \param sigma [d/2, d, 2] (pack_bf16_pairs)
/// \param mu [d] \param out [n]; d a multiple of 16.
KVC_TARGET_AVX512_BF16 inline void bf16_quadratic_forms(std::uint16_t const* keys, std::int64_t n, std::int64_t d,
                                                        std::uint16_t const* sigma, float const* mu, float* out) {
  std::fill(out, out + n, 0.0f);
  // 64 columns (4 × 16 accumulators per key, 16 in all) keep one block of Σ, d/2 × 64 pairs, in L1
  // while the keys stream past it.
  for (std::int64_t col0 = 0; col0 < d; col0 += 64) {
    switch (std::min<std::int64_t>(4, (d - col0) / 16)) {
      case 4: bf16_quadratic_columns<4>(keys, n, d, sigma, mu, col0, out); break;
      case 3: bf16_quadratic_columns<3>(keys, n, d, sigma, mu, col0, out); break;
      case 2: bf16_quadratic_columns<2>(keys, n, d, sigma, mu, col0, out); break;
      default: bf16_quadratic_columns<1>(keys, n, d, sigma, mu, col0, out); break;
    }
  }
}

/// Rows [row0, row0 + R) × columns [col0, col0 + 16·C) of sigma += XᵀX, held in registers over every
/// token pair. \param xp [pairs, d, 2] (pack_token_pairs) \param sigma [d, d] row-major fp32
template <int R, int C>
KVC_TARGET_AVX512_BF16 inline void bf16_gram_tile(std::uint16_t const* xp, std::int64_t pairs, std::int64_t d,
                                                  std::int64_t row0, std::int64_t col0, float* sigma) {
  __m512 acc[R][C];
KVC_BF16_UNROLL
  for (std::int64_t r = 0; r < R; ++r)
KVC_BF16_UNROLL
    for (std::int64_t c = 0; c < C; ++c) acc[r][c] = _mm512_loadu_ps(sigma + (row0 + r) * d + col0 + 16 * c);
  for (std::int64_t p = 0; p < pairs; ++p) {
    __m512bh s[C];
KVC_BF16_UNROLL
    for (std::int64_t c = 0; c < C; ++c) s[c] = (__m512bh)_mm512_loadu_si512(xp + (p * d + col0 + 16 * c) * 2);
KVC_BF16_UNROLL
    for (std::int64_t r = 0; r < R; ++r) {
      std::int32_t pair = 0;  // channel row0 + r of tokens 2p and 2p + 1
      std::memcpy(&pair, xp + (p * d + row0 + r) * 2, sizeof pair);
      __m512bh const x = (__m512bh)_mm512_set1_epi32(pair);
KVC_BF16_UNROLL
      for (std::int64_t c = 0; c < C; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], x, s[c]);
    }
  }
KVC_BF16_UNROLL
  for (std::int64_t r = 0; r < R; ++r)
KVC_BF16_UNROLL
    for (std::int64_t c = 0; c < C; ++c) _mm512_storeu_ps(sigma + (row0 + r) * d + col0 + 16 * c, acc[r][c]);
}

template <int C>
KVC_TARGET_AVX512_BF16 inline void bf16_gram_columns(std::uint16_t const* xp, std::int64_t pairs, std::int64_t d,
                                                     std::int64_t col0, float* sigma) {
  for (std::int64_t row0 = 0; row0 < d; row0 += 4) bf16_gram_tile<4, C>(xp, pairs, d, row0, col0, sigma);
}

/// sigma += XᵀX for the tokens of xp: products of bf16 pairs of tokens, sums in fp32.
/// \param xp [pairs, d, 2] (pack_token_pairs) \param sigma [d, d] row-major; d a multiple of 16.
KVC_TARGET_AVX512_BF16 inline void bf16_gram_accumulate(std::uint16_t const* xp, std::int64_t pairs, std::int64_t d,
                                                        float* sigma) {
  for (std::int64_t col0 = 0; col0 < d; col0 += 64) {
    switch (std::min<std::int64_t>(4, (d - col0) / 16)) {
      case 4: bf16_gram_columns<4>(xp, pairs, d, col0, sigma); break;
      case 3: bf16_gram_columns<3>(xp, pairs, d, col0, sigma); break;
      case 2: bf16_gram_columns<2>(xp, pairs, d, col0, sigma); break;
      default: bf16_gram_columns<1>(xp, pairs, d, col0, sigma); break;
    }
  }
}

#undef KVC_TARGET_AVX512_BF16
#undef KVC_BF16_UNROLL

#endif  // KVC_BF16_DOT_KERNEL

}  // namespace kvcompress::detail
