#pragma once
/// \file
/// \brief Horizontal reductions of x86 vector registers: one register's lanes to a float (sum, max), and
/// several registers' sums at once, transposed, for kernels that end a dot product per register. The
/// one place these shuffles are written; the row kernels, the bf16 quadratic forms and the engine's
/// attention tile use them. Compiled function by function (target attributes), so any build carries
/// them; only code that already runs the instruction set calls them.

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define KVC_SIMD_REDUCE_X86 1
#include <immintrin.h>
#else
#define KVC_SIMD_REDUCE_X86 0
#endif

namespace kvcompress::detail {

#if KVC_SIMD_REDUCE_X86

#define KVC_TARGET_REDUCE512 __attribute__((target("avx512f")))
#define KVC_TARGET_REDUCE256 __attribute__((target("avx")))

// The zero-masking forms with every lane selected compile to the plain instructions; gcc 12's plain
// intrinsics pass an undefined register that its -Wuninitialized reports.
inline constexpr __mmask16 kAllLanes16 = 0xFFFF;

/// Lane-wise a + b and max(a, b): the operations a fold of 16 lanes is written once for.
struct AddLanes16 {
  KVC_TARGET_REDUCE512 __m512 operator()(__m512 a, __m512 b) const { return _mm512_add_ps(a, b); }
};
struct MaxLanes16 {
  KVC_TARGET_REDUCE512 __m512 operator()(__m512 a, __m512 b) const { return _mm512_maskz_max_ps(kAllLanes16, a, b); }
};

/// op over the 16 lanes: each step combines every lane with its partner 8, 4, 2 and then 1 lane away.
template <class Op>
KVC_TARGET_REDUCE512 inline float lane_fold16(__m512 x, Op op) {
  x = op(x, _mm512_maskz_shuffle_f32x4(kAllLanes16, x, x, _MM_SHUFFLE(1, 0, 3, 2)));
  x = op(x, _mm512_maskz_shuffle_f32x4(kAllLanes16, x, x, _MM_SHUFFLE(2, 3, 0, 1)));
  x = op(x, _mm512_maskz_permute_ps(kAllLanes16, x, _MM_SHUFFLE(1, 0, 3, 2)));
  x = op(x, _mm512_maskz_permute_ps(kAllLanes16, x, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm512_cvtss_f32(x);
}

/// Σ of the 16 lanes.
KVC_TARGET_REDUCE512 inline float lane_sum16(__m512 x) { return lane_fold16(x, AddLanes16{}); }

/// Max of the 16 lanes.
KVC_TARGET_REDUCE512 inline float lane_max16(__m512 x) { return lane_fold16(x, MaxLanes16{}); }

/// Σ of the 8 lanes.
KVC_TARGET_REDUCE256 inline float lane_sum8(__m256 x) {
  __m128 q = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  q = _mm_add_ps(q, _mm_movehl_ps(q, q));
  q = _mm_add_ss(q, _mm_movehdup_ps(q));
  return _mm_cvtss_f32(q);
}

/// pick(Lo) + pick(Hi), where a pick is two parts of e followed by two parts of f, chosen by the
/// selector: 128-bit lanes (Lanes: VSHUFF32X4) or elements within each 128-bit lane (VSHUFPS). Each
/// fold below adds the two halves of the partial sums of e and of f, so that one register holds both.
template <int Lo, int Hi, bool Lanes>
KVC_TARGET_REDUCE512 inline __m512 add_picked(__m512 e, __m512 f) {
  if constexpr (Lanes)
    return _mm512_add_ps(_mm512_maskz_shuffle_f32x4(kAllLanes16, e, f, Lo), _mm512_maskz_shuffle_f32x4(kAllLanes16, e, f, Hi));
  else
    return _mm512_add_ps(_mm512_maskz_shuffle_ps(kAllLanes16, e, f, Lo), _mm512_maskz_shuffle_ps(kAllLanes16, e, f, Hi));
}

/// 256-bit half h of the result: 8 partial sums of (a, b)[h].
KVC_TARGET_REDUCE512 inline __m512 fold_halves(__m512 a, __m512 b) {
  return add_picked<_MM_SHUFFLE(1, 0, 1, 0), _MM_SHUFFLE(3, 2, 3, 2), true>(a, b);
}

/// From fold_halves(a, b) and fold_halves(c, d): 128-bit lane L holds 4 partial sums of (a, b, c, d)[L].
KVC_TARGET_REDUCE512 inline __m512 fold_quarters(__m512 ab, __m512 cd) {
  return add_picked<_MM_SHUFFLE(2, 0, 2, 0), _MM_SHUFFLE(3, 1, 3, 1), true>(ab, cd);
}

/// Within each 128-bit lane of e and f: (e₀ + e₂, e₁ + e₃, f₀ + f₂, f₁ + f₃).
KVC_TARGET_REDUCE512 inline __m512 fold_pairs(__m512 e, __m512 f) {
  return add_picked<_MM_SHUFFLE(1, 0, 1, 0), _MM_SHUFFLE(3, 2, 3, 2), false>(e, f);
}

/// Within each 128-bit lane of e and f: (e₀ + e₁, e₂ + e₃, f₀ + f₁, f₂ + f₃).
KVC_TARGET_REDUCE512 inline __m512 fold_neighbours(__m512 e, __m512 f) {
  return add_picked<_MM_SHUFFLE(2, 0, 2, 0), _MM_SHUFFLE(3, 1, 3, 1), false>(e, f);
}

/// The sums of 16 registers at once (45 instructions where 16 lane_sum16 take 128): lane 4·L + e of
/// the result is Σ of the lanes of v[4·e + L]. With v[4·k + j] the dot product of row k with column
/// j, 128-bit lane j of the result holds column j's four rows in order. \param v [16]
KVC_TARGET_REDUCE512 inline __m512 lane_sums_4x4(__m512 const* v) {
  __m512 const u0 = fold_quarters(fold_halves(v[0], v[1]), fold_halves(v[2], v[3]));
  __m512 const u1 = fold_quarters(fold_halves(v[4], v[5]), fold_halves(v[6], v[7]));
  __m512 const u2 = fold_quarters(fold_halves(v[8], v[9]), fold_halves(v[10], v[11]));
  __m512 const u3 = fold_quarters(fold_halves(v[12], v[13]), fold_halves(v[14], v[15]));
  return fold_neighbours(fold_pairs(u0, u1), fold_pairs(u2, u3));
}

/// The sums of 4 registers at once: (Σ lanes of v0, … v3).
KVC_TARGET_REDUCE512 inline __m128 lane_sums_4(__m512 v0, __m512 v1, __m512 v2, __m512 v3) {
  __m512 const u = fold_quarters(fold_halves(v0, v1), fold_halves(v2, v3));  // lane L: partial sums of vL
  __m512 const w = fold_pairs(u, u);
  __m512 const s = fold_neighbours(w, w);  // lane L: Σ vL in every element
  __m512i const firsts = _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  return _mm512_maskz_extractf32x4_ps(0xF, _mm512_maskz_permutexvar_ps(kAllLanes16, firsts, s), 0);
}

#undef KVC_TARGET_REDUCE512
#undef KVC_TARGET_REDUCE256

#endif  // KVC_SIMD_REDUCE_X86

}  // namespace kvcompress::detail
