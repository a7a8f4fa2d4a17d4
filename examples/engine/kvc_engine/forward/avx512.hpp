#pragma once
/// \file
/// \brief The engine's register-blocked float products on AVX-512F: a block of R rows × 16·N columns of
/// y = a·b held in 4·6 = 24 of the 32 vector registers over the whole reduction, b read as 16-float rows
/// of its transpose; 16 × 16 transposes in registers to lay b out so; and the linear layers' product
/// y = x·wᵀ built from them. At the prefill's shapes these run at the FMA units' rate (one 16-float FMA
/// per cycle here), where Eigen's GEMM, which packs both operands on every call, reaches about two thirds
/// of it (docs/benchmarks/engine-profile.md).
///
/// Compiled for AVX-512F function by function (target attributes), so the portable build carries them
/// too; a run-time check of the CPU chooses them, and Eigen is the fallback.

#include <algorithm>
#include <cstdint>
#include <vector>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define KVC_ENGINE_AVX512 1
#include <immintrin.h>
#define KVC_ENGINE_TARGET_AVX512 __attribute__((target("avx512f")))
// Full unrolling keeps the accumulator arrays in registers.
#define KVC_ENGINE_UNROLL _Pragma("GCC unroll 8")
#else
#define KVC_ENGINE_AVX512 0
#endif

namespace kvc_engine::detail {

/// Whether this CPU (and its OS, which must save the 512-bit registers) runs AVX-512F. Asked once.
[[nodiscard]] inline bool cpu_has_avx512f() noexcept {
#if KVC_ENGINE_AVX512
  static bool const has = __builtin_cpu_supports("avx512f");
  return has;
#else
  return false;
#endif
}

/// Rows of one register block: 6 rows × 4 vectors of 16 floats = 24 accumulators of the 32 registers.
constexpr std::int64_t kBlockRows = 6;

#if KVC_ENGINE_AVX512

// The zero-masking forms below, with every lane selected, compile to the plain instructions; the plain
// intrinsics of gcc 12 pass an undefined register that its -Wuninitialized reports.
constexpr __mmask16 kAllLanes = 0xFFFF;

/// Kᵀ of 16 keys × 16 channels in registers (unpack pairs, then quadruples, then 128-bit lanes):
/// kt[c·cp + j] = K[j·dk + c]. \param K [16, dk] \param kt [16, cp]
KVC_ENGINE_TARGET_AVX512 inline void transpose_16x16(float const* K, std::int64_t dk, float* kt, std::int64_t cp) {
  __m512 r[16], t[16];
KVC_ENGINE_UNROLL
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(K + i * dk);
KVC_ENGINE_UNROLL
  for (int i = 0; i < 16; i += 2) {  // per 128-bit lane: (a0 b0 a1 b1), (a2 b2 a3 b3)
    t[i] = _mm512_maskz_unpacklo_ps(kAllLanes, r[i], r[i + 1]);
    t[i + 1] = _mm512_maskz_unpackhi_ps(kAllLanes, r[i], r[i + 1]);
  }
KVC_ENGINE_UNROLL
  for (int i = 0; i < 16; i += 4) {  // r[i + e], lane L: channel 4L + e of keys i … i + 3
    r[i] = _mm512_maskz_shuffle_ps(kAllLanes, t[i], t[i + 2], 0x44);
    r[i + 1] = _mm512_maskz_shuffle_ps(kAllLanes, t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm512_maskz_shuffle_ps(kAllLanes, t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm512_maskz_shuffle_ps(kAllLanes, t[i + 1], t[i + 3], 0xEE);
  }
KVC_ENGINE_UNROLL
  for (int e = 0; e < 4; ++e) {  // gather lane L of r[e], r[4 + e], r[8 + e], r[12 + e]: channel 4L + e
    __m512 const even_lo = _mm512_maskz_shuffle_f32x4(kAllLanes, r[e], r[4 + e], 0x88);  // lanes 0, 2
    __m512 const even_hi = _mm512_maskz_shuffle_f32x4(kAllLanes, r[8 + e], r[12 + e], 0x88);
    __m512 const odd_lo = _mm512_maskz_shuffle_f32x4(kAllLanes, r[e], r[4 + e], 0xDD);  // lanes 1, 3
    __m512 const odd_hi = _mm512_maskz_shuffle_f32x4(kAllLanes, r[8 + e], r[12 + e], 0xDD);
    _mm512_storeu_ps(kt + e * cp, _mm512_maskz_shuffle_f32x4(kAllLanes, even_lo, even_hi, 0x88));
    _mm512_storeu_ps(kt + (8 + e) * cp, _mm512_maskz_shuffle_f32x4(kAllLanes, even_lo, even_hi, 0xDD));
    _mm512_storeu_ps(kt + (4 + e) * cp, _mm512_maskz_shuffle_f32x4(kAllLanes, odd_lo, odd_hi, 0x88));
    _mm512_storeu_ps(kt + (12 + e) * cp, _mm512_maskz_shuffle_f32x4(kAllLanes, odd_lo, odd_hi, 0xDD));
  }
}

/// Kᵀ of a tile, its columns zero-padded to `cp`: kt[c, j] = K[j, c] for j < C, 0 for C ≤ j < cp.
/// Whole 16 × 16 blocks in registers, the edges element by element. \param K [C, dk] \param kt [dk, cp]
KVC_ENGINE_TARGET_AVX512 inline void transpose_tile(float const* K, std::int64_t C, std::int64_t dk, std::int64_t cp,
                                                    float* kt) {
  std::int64_t const C16 = C / 16 * 16, dk16 = dk / 16 * 16;
  for (std::int64_t j0 = 0; j0 < C16; j0 += 16)
    for (std::int64_t c0 = 0; c0 < dk16; c0 += 16) transpose_16x16(K + j0 * dk + c0, dk, kt + c0 * cp + j0, cp);
  for (std::int64_t c = 0; c < dk; ++c) {
    float* dst = kt + c * cp;
    for (std::int64_t j = c < dk16 ? C16 : 0; j < C; ++j) dst[j] = K[j * dk + c];
    std::fill(dst + C, dst + cp, 0.0f);
  }
}

/// y[r, c0 + j] = a[r]·bt[:, c0 + j] for R rows and 16·N columns, the accumulators in registers over the
/// k terms. \param a [R, k] row stride lda \param bt [k, ·] row stride ldb
/// \param y [R, ·] row stride ldy
template <int R, int N>
KVC_ENGINE_TARGET_AVX512 inline void product_block(float const* a, std::int64_t lda, std::int64_t k, float const* bt,
                                                   std::int64_t ldb, std::int64_t c0, float* y, std::int64_t ldy) {
  __m512 acc[R][N];
KVC_ENGINE_UNROLL
  for (int r = 0; r < R; ++r)
KVC_ENGINE_UNROLL
    for (int v = 0; v < N; ++v) acc[r][v] = _mm512_setzero_ps();
  for (std::int64_t c = 0; c < k; ++c) {
    __m512 b[N];
KVC_ENGINE_UNROLL
    for (int v = 0; v < N; ++v) b[v] = _mm512_loadu_ps(bt + c * ldb + c0 + 16 * v);
KVC_ENGINE_UNROLL
    for (int r = 0; r < R; ++r) {
      __m512 const x = _mm512_set1_ps(a[r * lda + c]);
KVC_ENGINE_UNROLL
      for (int v = 0; v < N; ++v) acc[r][v] = _mm512_fmadd_ps(x, b[v], acc[r][v]);
    }
  }
KVC_ENGINE_UNROLL
  for (int r = 0; r < R; ++r)
KVC_ENGINE_UNROLL
    for (int v = 0; v < N; ++v) _mm512_storeu_ps(y + r * ldy + c0 + 16 * v, acc[r][v]);
}

/// Columns [0, width) of R rows of y = a·bt, 64 columns (4 vectors) at a time; width rounded up to 16
/// must not pass bt's or y's rows. \param a [R, k] \param bt [k, ·] \param y [R, ·]
template <int R>
KVC_ENGINE_TARGET_AVX512 inline void product_rows(float const* a, std::int64_t lda, std::int64_t k, float const* bt,
                                                  std::int64_t ldb, std::int64_t width, float* y, std::int64_t ldy) {
  for (std::int64_t c0 = 0; c0 < width; c0 += 64) {
    switch (std::min<std::int64_t>(4, (width - c0 + 15) / 16)) {
      case 4: product_block<R, 4>(a, lda, k, bt, ldb, c0, y, ldy); break;
      case 3: product_block<R, 3>(a, lda, k, bt, ldb, c0, y, ldy); break;
      case 2: product_block<R, 2>(a, lda, k, bt, ldb, c0, y, ldy); break;
      default: product_block<R, 1>(a, lda, k, bt, ldb, c0, y, ldy); break;
    }
  }
}

/// y[:, 0, cols) = x·wᵀ for w's `cols` rows, a multiple of 16: 64 output columns at a time, their weights
/// transposed once into a panel [in, 64] (in L2 for in up to a few thousand: slicing it by inputs to keep
/// it in L1 measured no faster), then every 6 rows of x against it.
/// \param x [n, in] \param w [cols, in] \param y [n, ·] row stride ldy
KVC_ENGINE_TARGET_AVX512 inline void linear_avx512(float const* x, std::int64_t n, std::int64_t in, float const* w,
                                                   std::int64_t cols, float* y, std::int64_t ldy) {
  constexpr std::int64_t kPanel = 64;
  std::vector<float> panel(static_cast<std::size_t>(in * kPanel));  // [in, kPanel]
  float const* const bt = panel.data();
  for (std::int64_t o0 = 0; o0 < cols; o0 += kPanel) {
    std::int64_t const width = std::min(kPanel, cols - o0);
    transpose_tile(w + o0 * in, width, in, kPanel, panel.data());
    std::int64_t r0 = 0;
    for (; r0 + kBlockRows <= n; r0 += kBlockRows)
      product_rows<6>(x + r0 * in, in, in, bt, kPanel, width, y + r0 * ldy + o0, ldy);
    float const* const xr = x + r0 * in;
    float* const yr = y + r0 * ldy + o0;
    switch (n - r0) {
      case 5: product_rows<5>(xr, in, in, bt, kPanel, width, yr, ldy); break;
      case 4: product_rows<4>(xr, in, in, bt, kPanel, width, yr, ldy); break;
      case 3: product_rows<3>(xr, in, in, bt, kPanel, width, yr, ldy); break;
      case 2: product_rows<2>(xr, in, in, bt, kPanel, width, yr, ldy); break;
      case 1: product_rows<1>(xr, in, in, bt, kPanel, width, yr, ldy); break;
      default: break;
    }
  }
}

#endif  // KVC_ENGINE_AVX512

}  // namespace kvc_engine::detail
