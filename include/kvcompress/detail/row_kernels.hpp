#pragma once
/// \file
/// \brief The memory-bound per-key loops of the scorers (squared norms, dot products with a few
/// fp32 vectors, a scaled sum) over float, half or bfloat16 keys, vectorised by hand: a float sum
/// is a serial chain that compilers do not reorder, and a 16-bit key converted element by element
/// costs more than reading it. AVX-512 and AVX2 (+FMA, F16C) are compiled function by function
/// (target attributes), so the portable build carries them; a run-time check of the CPU chooses
/// one, and the portable loops (eight partial sums) are the fallback. Every conversion to fp32 is
/// exact and every sum is in fp32, as in the portable path; only the order of the additions differs.

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kvcompress/cache/kv_cache_view.hpp"
#include "kvcompress/cache/paged_layout.hpp"
#include "kvcompress/cache/strided_layout.hpp"
#include "kvcompress/core/device.hpp"
#include "kvcompress/core/dtype.hpp"
#include "kvcompress/detail/layout_traits.hpp"
#include "kvcompress/detail/simd_reduce.hpp"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define KVC_ROW_KERNELS_X86 1
#include <cpuid.h>
#include <immintrin.h>
#define KVC_TARGET_ROW512 __attribute__((target("avx512f,avx512bw,avx512vl,fma")))
#define KVC_TARGET_ROW256 __attribute__((target("avx2,fma,f16c")))
// Full unrolling keeps the accumulator arrays in registers; nvcc's front end rejects the pragma (a
// warning), and its translation units run the CPU kernels only as a fallback of the GPU path.
#if defined(__CUDACC__)
#define KVC_ROW_UNROLL
#else
#define KVC_ROW_UNROLL _Pragma("GCC unroll 16")
#endif
#else
#define KVC_ROW_KERNELS_X86 0
#endif

namespace kvcompress::detail {

/// The instruction set of the row kernels.
enum class RowIsa : unsigned char { kPortable, kAvx2, kAvx512 };

/// The widest row kernels this CPU (and its OS) runs. Asked once per process.
[[nodiscard]] inline RowIsa cpu_row_isa() noexcept {
#if KVC_ROW_KERNELS_X86
  static RowIsa const isa = [] {
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("fma"))
      return RowIsa::kAvx512;
    // F16C through CPUID: clang's __builtin_cpu_supports has no name for it.
    unsigned a = 0, b = 0, c = 0, d = 0;
    bool const f16c = __get_cpuid(1, &a, &b, &c, &d) != 0 && (c & bit_F16C) != 0;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c) return RowIsa::kAvx2;
    return RowIsa::kPortable;
  }();
  return isa;
#else
  return RowIsa::kPortable;
#endif
}

/// The row kernels a call on `dev` runs for keys of head_dim d: the vector widths need d to be a
/// multiple of their fp32 lanes (16, 8).
[[nodiscard]] inline RowIsa row_isa(CpuDevice const& dev, std::int64_t d) noexcept {
  if (dev.kernels != CpuKernels::kNative) return RowIsa::kPortable;
  RowIsa const isa = cpu_row_isa();
  if (isa == RowIsa::kAvx512 && d % 16 == 0) return isa;
  if (isa != RowIsa::kPortable && d % 8 == 0) return RowIsa::kAvx2;
  return RowIsa::kPortable;
}

// ---- portable --------------------------------------------------------------------------------------

/// Σ of eight partial sums, pairwise.
[[nodiscard]] inline float sum8(float const* acc) noexcept {
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/// Σ_c x[c]·y[c], y widened from T. \param x [d] \param y [d]
template <class T>
[[nodiscard]] float dot_portable(T const* x, float const* y, std::int64_t d) noexcept {
  float acc[8] = {};
  std::int64_t c = 0;
  for (; c + 8 <= d; c += 8)
    for (int l = 0; l < 8; ++l) acc[l] += to_float(x[c + l]) * y[c + l];
  float tail = 0.0f;
  for (; c < d; ++c) tail += to_float(x[c]) * y[c];
  return sum8(acc) + tail;
}

/// Σ_c x[c]². \param x [d]
template <class T>
[[nodiscard]] float sum_squares_portable(T const* x, std::int64_t d) noexcept {
  float acc[8] = {};
  std::int64_t c = 0;
  for (; c + 8 <= d; c += 8)
    for (int l = 0; l < 8; ++l) {
      float const v = to_float(x[c + l]);
      acc[l] += v * v;
    }
  float tail = 0.0f;
  for (; c < d; ++c) tail += to_float(x[c]) * to_float(x[c]);
  return sum8(acc) + tail;
}

#if KVC_ROW_KERNELS_X86

// ---- AVX-512 ---------------------------------------------------------------------------------------

/// 16 elements of T as fp32 (exact). \param p [16]
template <class T>
KVC_TARGET_ROW512 inline __m512 row_load16(T const* p) {
  if constexpr (std::is_same_v<T, float>) {
    return _mm512_loadu_ps(p);
  } else {
    __m256i const bits = _mm256_loadu_si256(reinterpret_cast<__m256i const*>(p));
    if constexpr (std::is_same_v<T, half>) return _mm512_maskz_cvtph_ps(kAllLanes16, bits);
    else  // bfloat16: the upper half of an fp32
      return _mm512_castsi512_ps(
          _mm512_maskz_slli_epi32(kAllLanes16, _mm512_maskz_cvtepu16_epi32(kAllLanes16, bits), 16));
  }
}

/// out[i] = Σ_c keys[i·stride + c]². \param keys [count, stride] (d ≤ stride used) \param out [count]
template <class T>
KVC_TARGET_ROW512 void sq_norms_avx512(T const* keys, std::int64_t count, std::int64_t stride, std::int64_t d,
                                       float* out) {
  for (std::int64_t i = 0; i < count; ++i) {
    T const* k = keys + i * stride;  // [d]
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    std::int64_t c = 0;
    for (; c + 32 <= d; c += 32) {
      __m512 const x0 = row_load16(k + c), x1 = row_load16(k + c + 16);
      a0 = _mm512_fmadd_ps(x0, x0, a0);
      a1 = _mm512_fmadd_ps(x1, x1, a1);
    }
    if (c < d) {
      __m512 const x0 = row_load16(k + c);
      a0 = _mm512_fmadd_ps(x0, x0, a0);
    }
    out[i] = lane_sum16(_mm512_add_ps(a0, a1));
  }
}

/// Four keys against R ≤ 4 query rows, one key after the other, acc[4·r + j] = Σ_c k_r[c]·q_j[c], the
/// sums over lanes left for all 16 at once. Reading the four keys side by side (a line of each in
/// turn) was slower here; prefetching keys ahead in software did not help (the hardware prefetcher
/// follows the rows). \param k [4, stride] \param q [R, d] \param acc [16]
template <int R, class T>
KVC_TARGET_ROW512 inline void dots_4keys_avx512(T const* k, std::int64_t stride, std::int64_t d, float const* q,
                                                __m512* acc) {
  KVC_ROW_UNROLL
  for (int r = 0; r < 4; ++r) {
    T const* kr = k + r * stride;  // [d]
    KVC_ROW_UNROLL
    for (int j = 0; j < R; ++j) acc[4 * r + j] = _mm512_setzero_ps();
    for (std::int64_t c = 0; c < d; c += 16) {
      __m512 const x = row_load16(kr + c);
      KVC_ROW_UNROLL
      for (int j = 0; j < R; ++j) acc[4 * r + j] = _mm512_fmadd_ps(x, _mm512_loadu_ps(q + j * d + c), acc[4 * r + j]);
    }
  }
}

/// out[j·out_stride + i] = Σ_c keys[i·stride + c]·q[j·d + c] for g fp32 vectors q, each key read
/// once for all of them: four keys at a time against four query rows (16 accumulators), their sums
/// transposed into four stores; one query row at a time for the rows left; the keys left one by one.
/// \param keys [count, stride] \param q [g, d] \param out [g, out_stride]
template <class T>
KVC_TARGET_ROW512 void dots_avx512(T const* keys, std::int64_t count, std::int64_t stride, std::int64_t d,
                                   float const* q, std::int64_t g, float* out, std::int64_t out_stride) {
  std::int64_t i = 0;
  for (; i + 4 <= count; i += 4) {
    T const* k = keys + i * stride;  // [4, stride]
    __m512 acc[16];
    std::int64_t j = 0;
    for (; j + 4 <= g; j += 4) {
      dots_4keys_avx512<4>(k, stride, d, q + j * d, acc);
      __m512 const s = lane_sums_4x4(acc);  // 128-bit lane j: query row j's 4 keys
      float* o = out + j * out_stride + i;  // [4, out_stride]
      _mm_storeu_ps(o, _mm512_maskz_extractf32x4_ps(0xF, s, 0));
      _mm_storeu_ps(o + out_stride, _mm512_maskz_extractf32x4_ps(0xF, s, 1));
      _mm_storeu_ps(o + 2 * out_stride, _mm512_maskz_extractf32x4_ps(0xF, s, 2));
      _mm_storeu_ps(o + 3 * out_stride, _mm512_maskz_extractf32x4_ps(0xF, s, 3));
    }
    for (; j < g; ++j) {
      dots_4keys_avx512<1>(k, stride, d, q + j * d, acc);
      _mm_storeu_ps(out + j * out_stride + i, lane_sums_4(acc[0], acc[4], acc[8], acc[12]));
    }
  }
  for (; i < count; ++i) {
    T const* k = keys + i * stride;  // [d]
    for (std::int64_t j = 0; j < g; ++j) {
      __m512 a0 = _mm512_setzero_ps();
      for (std::int64_t c = 0; c < d; c += 16) a0 = _mm512_fmadd_ps(row_load16(k + c), _mm512_loadu_ps(q + j * d + c), a0);
      out[j * out_stride + i] = lane_sum16(a0);
    }
  }
}

/// norms[i] = ‖key i‖ and sum += key i / max(‖key i‖, eps). \param keys [count, stride] \param sum [d]
template <class T>
KVC_TARGET_ROW512 void normalized_sum_avx512(T const* keys, std::int64_t count, std::int64_t stride, std::int64_t d,
                                             float eps, float* norms, float* sum) {
  for (std::int64_t i = 0; i < count; ++i) {
    T const* k = keys + i * stride;  // [d]
    __m512 a0 = _mm512_setzero_ps();
    for (std::int64_t c = 0; c < d; c += 16) {
      __m512 const x = row_load16(k + c);
      a0 = _mm512_fmadd_ps(x, x, a0);
    }
    float const norm = std::sqrt(lane_sum16(a0));
    norms[i] = norm;
    __m512 const inv = _mm512_set1_ps(1.0f / std::max(norm, eps));
    for (std::int64_t c = 0; c < d; c += 16)
      _mm512_storeu_ps(sum + c, _mm512_fmadd_ps(row_load16(k + c), inv, _mm512_loadu_ps(sum + c)));
  }
}

/// sum[c] += Σ_i rows[i·stride + c] over columns [c0, c0 + 16·NB), the partial sums in registers.
template <int NB, class T>
KVC_TARGET_ROW512 void rows_sum_block_avx512(T const* rows, std::int64_t count, std::int64_t stride, std::int64_t c0,
                                             float* sum) {
  __m512 acc[NB];
  for (int u = 0; u < NB; ++u) acc[u] = _mm512_setzero_ps();
  for (std::int64_t i = 0; i < count; ++i)
    for (int u = 0; u < NB; ++u) acc[u] = _mm512_add_ps(acc[u], row_load16(rows + i * stride + c0 + 16 * u));
  for (int u = 0; u < NB; ++u) _mm512_storeu_ps(sum + c0 + std::int64_t{16} * u, _mm512_add_ps(_mm512_loadu_ps(sum + c0 + std::int64_t{16} * u), acc[u]));
}

/// sum[c] += Σ_i rows[i][c]: each row's sum in registers first. \param rows [count, stride] \param sum [d]
template <class T>
KVC_TARGET_ROW512 void rows_sum_avx512(T const* rows, std::int64_t count, std::int64_t stride, std::int64_t d,
                                       float* sum) {
  for (std::int64_t c0 = 0; c0 < d; c0 += 128) {
    switch ((d - c0) / 16) {
      case 1: rows_sum_block_avx512<1>(rows, count, stride, c0, sum); break;
      case 2: rows_sum_block_avx512<2>(rows, count, stride, c0, sum); break;
      case 3: rows_sum_block_avx512<3>(rows, count, stride, c0, sum); break;
      case 4: rows_sum_block_avx512<4>(rows, count, stride, c0, sum); break;
      case 5: rows_sum_block_avx512<5>(rows, count, stride, c0, sum); break;
      case 6: rows_sum_block_avx512<6>(rows, count, stride, c0, sum); break;
      case 7: rows_sum_block_avx512<7>(rows, count, stride, c0, sum); break;
      default: rows_sum_block_avx512<8>(rows, count, stride, c0, sum); break;
    }
  }
}

// ---- AVX2 ------------------------------------------------------------------------------------------

/// 8 elements of T as fp32 (exact). \param p [8]
template <class T>
KVC_TARGET_ROW256 inline __m256 row_load8(T const* p) {
  if constexpr (std::is_same_v<T, float>) {
    return _mm256_loadu_ps(p);
  } else {
    __m128i const bits = _mm_loadu_si128(reinterpret_cast<__m128i const*>(p));
    if constexpr (std::is_same_v<T, half>) return _mm256_cvtph_ps(bits);
    else return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
  }
}

template <class T>
KVC_TARGET_ROW256 void sq_norms_avx2(T const* keys, std::int64_t count, std::int64_t stride, std::int64_t d,
                                     float* out) {
  for (std::int64_t i = 0; i < count; ++i) {
    T const* k = keys + i * stride;  // [d]
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    std::int64_t c = 0;
    for (; c + 16 <= d; c += 16) {
      __m256 const x0 = row_load8(k + c), x1 = row_load8(k + c + 8);
      a0 = _mm256_fmadd_ps(x0, x0, a0);
      a1 = _mm256_fmadd_ps(x1, x1, a1);
    }
    if (c < d) {
      __m256 const x0 = row_load8(k + c);
      a0 = _mm256_fmadd_ps(x0, x0, a0);
    }
    out[i] = lane_sum8(_mm256_add_ps(a0, a1));
  }
}

template <class T>
KVC_TARGET_ROW256 void dots_avx2(T const* keys, std::int64_t count, std::int64_t stride, std::int64_t d,
                                 float const* q, std::int64_t g, float* out, std::int64_t out_stride) {
  for (std::int64_t i = 0; i < count; ++i) {
    T const* k = keys + i * stride;  // [d]
    std::int64_t j = 0;
    for (; j + 4 <= g; j += 4) {
      float const* qj = q + j * d;  // [4, d]
      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
      for (std::int64_t c = 0; c < d; c += 8) {
        __m256 const x = row_load8(k + c);
        a0 = _mm256_fmadd_ps(x, _mm256_loadu_ps(qj + c), a0);
        a1 = _mm256_fmadd_ps(x, _mm256_loadu_ps(qj + d + c), a1);
        a2 = _mm256_fmadd_ps(x, _mm256_loadu_ps(qj + 2 * d + c), a2);
        a3 = _mm256_fmadd_ps(x, _mm256_loadu_ps(qj + 3 * d + c), a3);
      }
      out[j * out_stride + i] = lane_sum8(a0);
      out[(j + 1) * out_stride + i] = lane_sum8(a1);
      out[(j + 2) * out_stride + i] = lane_sum8(a2);
      out[(j + 3) * out_stride + i] = lane_sum8(a3);
    }
    for (; j < g; ++j) {
      __m256 a0 = _mm256_setzero_ps();
      for (std::int64_t c = 0; c < d; c += 8) a0 = _mm256_fmadd_ps(row_load8(k + c), _mm256_loadu_ps(q + j * d + c), a0);
      out[j * out_stride + i] = lane_sum8(a0);
    }
  }
}

template <class T>
KVC_TARGET_ROW256 void normalized_sum_avx2(T const* keys, std::int64_t count, std::int64_t stride, std::int64_t d,
                                           float eps, float* norms, float* sum) {
  for (std::int64_t i = 0; i < count; ++i) {
    T const* k = keys + i * stride;  // [d]
    __m256 a0 = _mm256_setzero_ps();
    for (std::int64_t c = 0; c < d; c += 8) {
      __m256 const x = row_load8(k + c);
      a0 = _mm256_fmadd_ps(x, x, a0);
    }
    float const norm = std::sqrt(lane_sum8(a0));
    norms[i] = norm;
    __m256 const inv = _mm256_set1_ps(1.0f / std::max(norm, eps));
    for (std::int64_t c = 0; c < d; c += 8)
      _mm256_storeu_ps(sum + c, _mm256_fmadd_ps(row_load8(k + c), inv, _mm256_loadu_ps(sum + c)));
  }
}

template <int NB, class T>
KVC_TARGET_ROW256 void rows_sum_block_avx2(T const* rows, std::int64_t count, std::int64_t stride, std::int64_t c0,
                                           float* sum) {
  __m256 acc[NB];
  for (int u = 0; u < NB; ++u) acc[u] = _mm256_setzero_ps();
  for (std::int64_t i = 0; i < count; ++i)
    for (int u = 0; u < NB; ++u) acc[u] = _mm256_add_ps(acc[u], row_load8(rows + i * stride + c0 + 8 * u));
  for (int u = 0; u < NB; ++u) _mm256_storeu_ps(sum + c0 + std::int64_t{8} * u, _mm256_add_ps(_mm256_loadu_ps(sum + c0 + std::int64_t{8} * u), acc[u]));
}

template <class T>
KVC_TARGET_ROW256 void rows_sum_avx2(T const* rows, std::int64_t count, std::int64_t stride, std::int64_t d, float* sum) {
  for (std::int64_t c0 = 0; c0 < d; c0 += 64) {
    switch ((d - c0) / 8) {
      case 1: rows_sum_block_avx2<1>(rows, count, stride, c0, sum); break;
      case 2: rows_sum_block_avx2<2>(rows, count, stride, c0, sum); break;
      case 3: rows_sum_block_avx2<3>(rows, count, stride, c0, sum); break;
      case 4: rows_sum_block_avx2<4>(rows, count, stride, c0, sum); break;
      case 5: rows_sum_block_avx2<5>(rows, count, stride, c0, sum); break;
      case 6: rows_sum_block_avx2<6>(rows, count, stride, c0, sum); break;
      case 7: rows_sum_block_avx2<7>(rows, count, stride, c0, sum); break;
      default: rows_sum_block_avx2<8>(rows, count, stride, c0, sum); break;
    }
  }
}

#undef KVC_TARGET_ROW512
#undef KVC_TARGET_ROW256
#undef KVC_ROW_UNROLL

#endif  // KVC_ROW_KERNELS_X86

// ---- dispatch --------------------------------------------------------------------------------------

/// out[i] = Σ_c keys[i·stride + c]² for `count` keys of d elements, `stride` elements apart.
/// \param keys [count, stride] \param out [count]
template <class T>
void key_sq_norms(RowIsa isa, T const* keys, std::int64_t count, std::int64_t stride, std::int64_t d, float* out) {
#if KVC_ROW_KERNELS_X86
  if (isa == RowIsa::kAvx512) return sq_norms_avx512(keys, count, stride, d, out);
  if (isa == RowIsa::kAvx2) return sq_norms_avx2(keys, count, stride, d, out);
#endif
  (void)isa;
  for (std::int64_t i = 0; i < count; ++i) out[i] = sum_squares_portable(keys + i * stride, d);
}

/// out[j·out_stride + i] = ⟨key i, q_j⟩ for g fp32 vectors. \param keys [count, stride]
/// \param q [g, d] \param out [g, out_stride]
template <class T>
void key_dots(RowIsa isa, T const* keys, std::int64_t count, std::int64_t stride, std::int64_t d, float const* q,
              std::int64_t g, float* out, std::int64_t out_stride) {
#if KVC_ROW_KERNELS_X86
  if (isa == RowIsa::kAvx512) return dots_avx512(keys, count, stride, d, q, g, out, out_stride);
  if (isa == RowIsa::kAvx2) return dots_avx2(keys, count, stride, d, q, g, out, out_stride);
#endif
  (void)isa;
  for (std::int64_t i = 0; i < count; ++i)
    for (std::int64_t j = 0; j < g; ++j) out[j * out_stride + i] = dot_portable(keys + i * stride, q + j * d, d);
}

/// norms[i] = ‖key i‖ and sum[c] += key i[c] / max(‖key i‖, eps). \param keys [count, stride]
/// \param norms [count] \param sum [d]
template <class T>
void key_normalized_sum(RowIsa isa, T const* keys, std::int64_t count, std::int64_t stride, std::int64_t d, float eps,
                        float* norms, float* sum) {
#if KVC_ROW_KERNELS_X86
  if (isa == RowIsa::kAvx512) return normalized_sum_avx512(keys, count, stride, d, eps, norms, sum);
  if (isa == RowIsa::kAvx2) return normalized_sum_avx2(keys, count, stride, d, eps, norms, sum);
#endif
  (void)isa;
  for (std::int64_t i = 0; i < count; ++i) {
    T const* k = keys + i * stride;  // [d]
    float const norm = std::sqrt(sum_squares_portable(k, d));
    norms[i] = norm;
    float const inv = 1.0f / std::max(norm, eps);
    for (std::int64_t c = 0; c < d; ++c) sum[c] += to_float(k[c]) * inv;
  }
}

/// sum[c] += Σ_i rows[i·stride + c], the rows' sum formed first and then added, as Eigen's
/// column sums of a block do. \param rows [count, stride] \param sum [d]
template <class T>
void rows_sum(RowIsa isa, T const* rows, std::int64_t count, std::int64_t stride, std::int64_t d, float* sum) {
#if KVC_ROW_KERNELS_X86
  if (isa == RowIsa::kAvx512) return rows_sum_avx512(rows, count, stride, d, sum);
  if (isa == RowIsa::kAvx2) return rows_sum_avx2(rows, count, stride, d, sum);
#endif
  (void)isa;
  for (std::int64_t c = 0; c < d; ++c) {
    float acc = 0.0f;
    for (std::int64_t i = 0; i < count; ++i) acc += to_float(rows[i * stride + c]);
    sum[c] += acc;
  }
}

/// Calls f(entries, count, stride, i0) over the entries [first, first + count) of row (b, h) of one
/// layout, in runs of entries `stride` elements apart from `base`: one run for a strided layout,
/// one per page for a paged one, one entry per run otherwise. The layout must have a unit head_dim
/// stride.
template <class T, class L, class F>
void for_entry_runs(T const* base, L const& layout, std::int64_t d, std::int64_t b, std::int64_t h, std::int64_t first,
                    std::int64_t count, F&& f) {
  if constexpr (std::is_same_v<L, StridedLayout>) {
    f(base + layout.offset(b, h, first, 0), count, layout.strides[2], std::int64_t{0});
  } else if constexpr (std::is_same_v<L, PagedLayout>) {
    std::int64_t const page = layout.page_size();
    for (std::int64_t i = 0; i < count;) {
      std::int64_t const s = first + i, run = std::min(count - i, page - (s & (page - 1)));
      f(base + layout.offset(b, h, s, 0), run, layout.token_stride, i);
      i += run;
    }
  } else {
    for (std::int64_t i = 0; i < count; ++i) f(base + layout.offset(b, h, first + i, 0), std::int64_t{1}, d, i);
  }
}

/// for_entry_runs over the keys of row (b, h).
template <class T, class L, class F>
void for_key_runs(KVCacheView<T, L> const& cache, std::int64_t b, std::int64_t h, std::int64_t first,
                  std::int64_t count, F&& f) {
  for_entry_runs(static_cast<T const*>(cache.keys), cache.key_layout, cache.extents.head_dim, b, h, first, count, f);
}

/// for_entry_runs over the values of row (b, h).
template <class T, class L, class F>
void for_value_runs(KVCacheView<T, L> const& cache, std::int64_t b, std::int64_t h, std::int64_t first,
                    std::int64_t count, F&& f) {
  for_entry_runs(static_cast<T const*>(cache.values), cache.value_layout, cache.extents.head_dim, b, h, first, count, f);
}

}  // namespace kvcompress::detail
