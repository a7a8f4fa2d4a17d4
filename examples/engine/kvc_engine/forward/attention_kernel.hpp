#pragma once
/// \file
/// \brief The prefill's attention tile on AVX-512: one key tile folded into the online-softmax state of
/// many query rows, six rows at a time, with the scores and the output rows held in registers. Two Eigen
/// GEMMs per tile took 1.35× its time over SmolLM2's 8k prefill (docs/benchmarks/engine-profile.md):
/// they pack (copy) the queries, the keys, the whole score tile and the values on every call, and the
/// softmax between them made several passes over a score tile that does not fit L1. Here the keys are
/// transposed once per tile for all the rows, the values are read where they lie, the softmax (one pass
/// for the maximum, one for exp and sum) runs on six score rows while they are in L1, and a block of rows
/// stops at the last key its last row sees (the diagonal tiles compute about half of their keys).
///
/// Compiled for AVX-512F function by function (target attributes), so the portable build carries it too;
/// a run-time check of the CPU chooses it, and attention.hpp's Eigen path is the fallback.

#include <algorithm>
#include <cstdint>

#include "kvc_engine/forward/avx512.hpp"
#include "kvcompress/detail/simd_reduce.hpp"

namespace kvc_engine::detail {

/// Online-softmax state of R query rows over the keys seen so far: o = Σ exp(s − m)·v unnormalised, m the
/// running maximum score, l = Σ exp(s − m). \param o [R, d] \param m [R] \param l [R]
struct SoftmaxState {
  float* o;
  float* m;
  float* l;
};

#if KVC_ENGINE_AVX512

/// eˣ of 16 floats x ≤ 0 (−∞ included): x = n·ln 2 + r with |r| ≤ ln 2 / 2 (ln 2 in two parts, so r is
/// exact), eʳ by the degree-6 minimax polynomial of the Cephes library's expf (within 2 ulp, as Eigen's
/// exp), times 2ⁿ by VSCALEFPS. Below −120 the result is 0, as the float eˣ rounds to.
KVC_ENGINE_TARGET_AVX512 inline __m512 exp16(__m512 x) {
  x = _mm512_maskz_max_ps(kAllLanes, x, _mm512_set1_ps(-120.0f));
  __m512 const n = _mm512_maskz_roundscale_ps(kAllLanes, _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_maskz_scalef_ps(kAllLanes, p, n);
}

/// The lanes below `count` (≤ 16) of a vector.
KVC_ENGINE_TARGET_AVX512 inline __mmask16 first_lanes(std::int64_t count) {
  return static_cast<__mmask16>((1u << count) - 1u);
}

/// One row's online-softmax step over its first `visible` ≥ 1 scores: m ← max(m, max s), the scores
/// replaced by p = exp(s − m) (0 from `visible` up to the next multiple of 16), l ← l·α + Σ p. Returns
/// α = exp(m_old − m), the factor of the row's earlier sums. One pass for the maximum, one for the rest.
/// \param row [visible rounded up to 16]
KVC_ENGINE_TARGET_AVX512 inline float softmax_row(float* row, std::int64_t visible, float& m, float& l) {
  std::int64_t const whole = visible / 16 * 16;
  __mmask16 const tail = first_lanes(visible - whole);
  __m512 top = _mm512_set1_ps(m);
  for (std::int64_t j = 0; j < whole; j += 16) top = _mm512_maskz_max_ps(kAllLanes, top, _mm512_loadu_ps(row + j));
  if (whole < visible) top = _mm512_mask_max_ps(top, tail, top, _mm512_maskz_loadu_ps(tail, row + whole));
  float const mnew = kvcompress::detail::lane_max16(top);
  float const alpha = _mm512_cvtss_f32(exp16(_mm512_set1_ps(m - mnew)));  // 0 on the first tile (m was −∞)
  __m512 const shift = _mm512_set1_ps(mnew);
  __m512 sum = _mm512_setzero_ps();
  for (std::int64_t j = 0; j < whole; j += 16) {
    __m512 const e = exp16(_mm512_sub_ps(_mm512_loadu_ps(row + j), shift));
    _mm512_storeu_ps(row + j, e);
    sum = _mm512_add_ps(sum, e);
  }
  if (whole < visible) {
    __m512 const e = _mm512_maskz_mov_ps(tail, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, row + whole), shift)));
    _mm512_storeu_ps(row + whole, e);
    sum = _mm512_add_ps(sum, e);
  }
  l = l * alpha + kvcompress::detail::lane_sum16(sum);
  m = mnew;
  return alpha;
}

/// o[r, col0 + 16·v] ← alpha[r]·o[…] + Σ_j p[r, j]·V[j, col0 + 16·v] over the first `width` keys, for
/// R rows and 16·N columns held in registers over the keys. \param p [R, cp] \param V [width, d]
/// \param alpha [R] \param o [R, d]
template <int R, int N>
KVC_ENGINE_TARGET_AVX512 inline void value_block(float const* p, std::int64_t cp, std::int64_t width, float const* V,
                                                 std::int64_t d, std::int64_t col0, float const* alpha, float* o) {
  __m512 acc[R][N];
KVC_ENGINE_UNROLL
  for (int r = 0; r < R; ++r) {
    __m512 const a = _mm512_set1_ps(alpha[r]);
KVC_ENGINE_UNROLL
    for (int v = 0; v < N; ++v) acc[r][v] = _mm512_mul_ps(a, _mm512_loadu_ps(o + r * d + col0 + 16 * v));
  }
  for (std::int64_t j = 0; j < width; ++j) {
    __m512 x[N];
KVC_ENGINE_UNROLL
    for (int v = 0; v < N; ++v) x[v] = _mm512_loadu_ps(V + j * d + col0 + 16 * v);
KVC_ENGINE_UNROLL
    for (int r = 0; r < R; ++r) {
      __m512 const w = _mm512_set1_ps(p[r * cp + j]);
KVC_ENGINE_UNROLL
      for (int v = 0; v < N; ++v) acc[r][v] = _mm512_fmadd_ps(w, x[v], acc[r][v]);
    }
  }
KVC_ENGINE_UNROLL
  for (int r = 0; r < R; ++r)
KVC_ENGINE_UNROLL
    for (int v = 0; v < N; ++v) _mm512_storeu_ps(o + r * d + col0 + 16 * v, acc[r][v]);
}

/// Folds one key tile into R ≤ kBlockRows rows: scores up to the last key the block's last row sees, the
/// online softmax of each row over its visible keys (the rest weigh 0), then the weighted values.
/// `seen[r]` is how many of the tile's keys row r sees (≤ 0: none; non-decreasing in r).
/// \param q [R, dk] \param kt [dk, cp] \param V [C, d] \param seen [R] \param s [R, cp] scratch
template <int R>
KVC_ENGINE_TARGET_AVX512 inline void fold_row_block(float const* q, std::int64_t dk, float const* kt, std::int64_t cp,
                                                    float const* V, std::int64_t d, std::int64_t const* seen, float* s,
                                                    SoftmaxState st) {
  std::int64_t const width = seen[R - 1];
  if (width <= 0) return;  // no row of the block sees this tile
  product_rows<R>(q, dk, dk, kt, cp, width, s, cp);  // the scores
  float alpha[R];
  for (int r = 0; r < R; ++r) {
    float* row = s + r * cp;
    std::int64_t const visible = std::max<std::int64_t>(0, seen[r]);
    alpha[r] = visible > 0 ? softmax_row(row, visible, st.m[r], st.l[r]) : 1.0f;
    for (std::int64_t j = (visible + 15) / 16 * 16; j < width; ++j) row[j] = 0.0f;  // keys the row may not see
  }
  for (std::int64_t col0 = 0; col0 < d; col0 += 64) {
    switch (std::min<std::int64_t>(4, (d - col0) / 16)) {
      case 4: value_block<R, 4>(s, cp, width, V, d, col0, alpha, st.o); break;
      case 3: value_block<R, 3>(s, cp, width, V, d, col0, alpha, st.o); break;
      case 2: value_block<R, 2>(s, cp, width, V, d, col0, alpha, st.o); break;
      default: value_block<R, 1>(s, cp, width, V, d, col0, alpha, st.o); break;
    }
  }
}

/// Folds keys c0 … c0 + C − 1 into `st` for R = rows·group query rows Q, as attention.hpp's
/// fold_key_tile (same arguments), when use_avx512_tile(d). \param Q [R, dk] \param K [C, dk] \param V [C, d]
/// \param kt [dk, C rounded up to 16] scratch \param S [kBlockRows, C rounded up to 16] scratch
KVC_ENGINE_TARGET_AVX512 inline void fold_tile_avx512(float const* Q, std::int64_t R, std::int64_t group,
                                                      std::int64_t dk, std::int64_t d, float const* K, float const* V,
                                                      std::int64_t c0, std::int64_t C, std::int64_t visible0, float* kt,
                                                      float* S, SoftmaxState st) {
  std::int64_t const cp = (C + 15) / 16 * 16;
  transpose_tile(K, C, dk, cp, kt);
  for (std::int64_t r0 = 0; r0 < R; r0 += kBlockRows) {
    std::int64_t const rows = std::min(kBlockRows, R - r0);
    std::int64_t seen[kBlockRows] = {};
    for (std::int64_t r = 0; r < rows; ++r) seen[r] = std::min(C, visible0 + (r0 + r) / group - c0);
    SoftmaxState const block{st.o + r0 * d, st.m + r0, st.l + r0};
    float const* q = Q + r0 * dk;
    switch (rows) {
      case 6: fold_row_block<6>(q, dk, kt, cp, V, d, seen, S, block); break;
      case 5: fold_row_block<5>(q, dk, kt, cp, V, d, seen, S, block); break;
      case 4: fold_row_block<4>(q, dk, kt, cp, V, d, seen, S, block); break;
      case 3: fold_row_block<3>(q, dk, kt, cp, V, d, seen, S, block); break;
      case 2: fold_row_block<2>(q, dk, kt, cp, V, d, seen, S, block); break;
      default: fold_row_block<1>(q, dk, kt, cp, V, d, seen, S, block); break;
    }
  }
}

#endif  // KVC_ENGINE_AVX512

/// Whether `fold_tile_avx512` can run (where compiled): the CPU has AVX-512F, the values' width is whole
/// vectors.
[[nodiscard]] inline bool use_avx512_tile(std::int64_t d) noexcept { return cpu_has_avx512f() && d % 16 == 0; }

}  // namespace kvc_engine::detail
