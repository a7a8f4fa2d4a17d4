#pragma once
/// \file
/// \brief float32 arithmetic exactly as PyTorch's CPU kernels evaluate the expressions that HF
/// transformers uses to build RoPE inverse frequencies, so that kvcompress's frequencies are
/// bit-identical to HF's.
///
/// Two things differ from writing the formula in C++:
///  - `scalar / tensor` is `tensor.reciprocal() * scalar` in PyTorch (two roundings, not one);
///  - `scalar ** tensor` runs, on x86 CPUs with AVX2 or AVX-512, through the SLEEF vector library's
///    `powf` (1-ulp accuracy, not correctly rounded) for every full block of 2·(vector width)
///    elements, and through the C library's `powf` for the remaining tail. `torch_pow_scalar_base`
///    reproduces SLEEF's algorithm: log in double-float arithmetic, product with the exponent, exp in
///    double-float arithmetic, every fused multiply-add where SLEEF's FMA build has one.
/// Every product here is rounded to float on its own (`mul`), so no compiler contraction into a
/// fused multiply-add can change a bit, whatever -ffp-contract says.

#include <cmath>
#include <cstdint>
#include <cstring>

namespace kvcompress::detail {

/// Elements per vectorised block of PyTorch's CPU elementwise loop on AVX-512 (two vectors of 16
/// floats). The tail past the last full block takes the scalar path. On an AVX2-only CPU the block
/// is 16, so HF's own frequencies differ between machines where head_dim / 2 mod 32 ≥ 16.
inline constexpr int kTorchVectorBlock = 32;

/// a·b rounded to float, never fused with a following addition.
[[nodiscard]] inline float mul(float a, float b) noexcept {
  volatile float r = a * b;
  return r;
}

/// A float with an error term: value = hi + lo, |lo| ≤ ulp(hi) / 2 after normalisation.
struct Float2 {
  float hi, lo;
};

namespace df {

[[nodiscard]] inline Float2 add2(float x, float y) noexcept {  // exact sum of two floats
  float const s = x + y, v = s - x;
  return {s, (x - (s - v)) + (y - v)};
}
[[nodiscard]] inline Float2 add2(Float2 x, float y) noexcept {
  float const s = x.hi + y, v = s - x.hi;
  float const t = (x.hi - (s - v)) + (y - v);
  return {s, t + x.lo};
}
[[nodiscard]] inline Float2 add2(Float2 x, Float2 y) noexcept {
  float const s = x.hi + y.hi, v = s - x.hi;
  float const t = (x.hi - (s - v)) + (y.hi - v);
  return {s, t + (x.lo + y.lo)};
}
/// x + y assuming |x.hi| ≥ |y.hi|.
[[nodiscard]] inline Float2 add(Float2 x, Float2 y) noexcept {
  float const s = x.hi + y.hi;
  return {s, (((x.hi - s) + y.hi) + x.lo) + y.lo};
}
/// x + y assuming |x| ≥ |y.hi|.
[[nodiscard]] inline Float2 add(float x, Float2 y) noexcept {
  float const s = x + y.hi;
  return {s, ((x - s) + y.hi) + y.lo};
}
[[nodiscard]] inline Float2 normalize(Float2 t) noexcept {
  float const s = t.hi + t.lo;
  return {s, (t.hi - s) + t.lo};
}
[[nodiscard]] inline Float2 scale(Float2 d, float s) noexcept { return {mul(d.hi, s), mul(d.lo, s)}; }
[[nodiscard]] inline Float2 mul(Float2 x, float y) noexcept {
  float const s = detail::mul(x.hi, y);
  return {s, std::fma(x.lo, y, std::fma(x.hi, y, -s))};
}
[[nodiscard]] inline Float2 mul(Float2 x, Float2 y) noexcept {
  float const s = detail::mul(x.hi, y.hi);
  return {s, std::fma(x.hi, y.lo, std::fma(x.lo, y.hi, std::fma(x.hi, y.hi, -s)))};
}
[[nodiscard]] inline Float2 square(Float2 x) noexcept {
  float const s = detail::mul(x.hi, x.hi);
  return {s, std::fma(x.hi + x.hi, x.lo, std::fma(x.hi, x.hi, -s))};
}
[[nodiscard]] inline Float2 div(Float2 n, Float2 d) noexcept {
  float const t = 1.0f / d.hi;
  float const s = detail::mul(n.hi, t);
  float const u = std::fma(t, n.hi, -s);
  float const v = std::fma(-d.lo, t, std::fma(-d.hi, t, 1.0f));
  return {s, std::fma(s, v, std::fma(n.lo, t, u))};
}

}  // namespace df

/// 2^q · x as SLEEF scales (in up to five steps, so extreme q neither overflows nor flushes early).
[[nodiscard]] inline float sleef_ldexp(float x, std::int32_t q) noexcept {
  auto const pow2 = [](std::int32_t biased) {
    std::uint32_t const bits = static_cast<std::uint32_t>(biased) << 23;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
  };
  std::int32_t m = q >> 31;
  m = (((m + q) >> 6) - m) * 16;
  q -= m * 4;
  m += 0x7f;
  m = m > 0 ? m : 0;
  m = m > 0xff ? 0xff : m;
  float const u = pow2(m);
  x = mul(mul(mul(mul(x, u), u), u), u);
  return mul(x, pow2(q + 0x7f));
}

/// log(d) as a double-float, for positive normal d (AVX-512 build: exponent and mantissa by
/// getexp/getmant, the mantissa in [0.75, 1.5)).
[[nodiscard]] inline Float2 sleef_log(float d) noexcept {
  int exp2 = 0;
  (void)std::frexp(mul(d, 1.0f / 0.75f), &exp2);
  float const e = static_cast<float>(exp2 - 1);  // getexp: ⌊log2(d / 0.75)⌋, with d / 0.75 rounded first
  float m = 2.0f * std::frexp(d, &exp2);         // [1, 2)
  if (m >= 1.5f) m *= 0.5f;               // getmant's [0.75, 1.5) interval
  Float2 const x = df::div(df::add2(-1.0f, m), df::add2(1.0f, m));
  Float2 const x2 = df::square(x);
  float t = 0.240320354700088500976562f;
  t = std::fma(t, x2.hi, 0.285112679004669189453125f);
  t = std::fma(t, x2.hi, 0.400007992982864379882812f);
  Float2 const c{0.66666662693023681640625f, 3.69183861259614332084311e-09f};
  Float2 s = df::mul(Float2{0.69314718246459960938f, -1.904654323148236017e-09f}, e);
  s = df::add(s, df::scale(x, 2.0f));
  return df::add(s, df::mul(df::mul(x2, x), df::add2(df::mul(x2, t), c)));
}

/// exp(d.hi + d.lo) rounded to float (SLEEF's double-float exp kernel).
[[nodiscard]] inline float sleef_exp(Float2 d) noexcept {
  constexpr float kLog2e = 1.442695040888963407359924681001892137426645954152985934135449406931f;
  constexpr float kLn2Hi = 0.693145751953125f, kLn2Lo = 1.428606765330187045e-06f;
  float u = mul(d.hi + d.lo, kLog2e);
  auto const q = static_cast<std::int32_t>(std::nearbyint(u));  // round half to even
  float const qf = static_cast<float>(q);
  Float2 s = df::add2(d, mul(qf, -kLn2Hi));
  s = df::add2(s, mul(qf, -kLn2Lo));
  s = df::normalize(s);
  u = 0.00136324646882712841033936f;
  u = std::fma(u, s.hi, 0.00836596917361021041870117f);
  u = std::fma(u, s.hi, 0.0416710823774337768554688f);
  u = std::fma(u, s.hi, 0.166665524244308471679688f);
  u = std::fma(u, s.hi, 0.499999850988388061523438f);
  Float2 t = df::add(s, df::mul(df::square(s), u));
  t = df::add(1.0f, t);
  u = sleef_ldexp(t.hi + t.lo, q);
  return d.hi < -104.0f ? 0.0f : u;
}

/// base^exponent as PyTorch's vectorised CPU `pow` computes it (SLEEF `powf` u10), for the
/// arguments RoPE uses: a positive, finite, normal base and a finite exponent.
[[nodiscard]] inline float torch_vector_pow(float base, float exponent) noexcept {
  if (exponent == 0.0f || base == 1.0f) return 1.0f;
  float const r = sleef_exp(df::mul(sleef_log(base), exponent));
  return std::isnan(r) ? INFINITY : r;
}

/// Element i of HF's `base ** (arange(0, dim, 2).float() / dim)` as PyTorch evaluates it on an
/// AVX-512 CPU: elements before the last full block of kTorchVectorBlock through SLEEF, the tail
/// through the C library's powf.
[[nodiscard]] inline float torch_rope_power(double base, int dim, int i) noexcept {
  int const vectorised = dim / 2 / kTorchVectorBlock * kTorchVectorBlock;
  float const b = static_cast<float>(base);
  float const e = static_cast<float>(2 * i) / static_cast<float>(dim);
  return i < vectorised ? torch_vector_pow(b, e) : std::pow(b, e);
}

/// HF's default inverse frequencies `1.0 / (base ** (arange(0, dim, 2).float() / dim))`.
/// \param out [dim / 2]
inline void torch_default_inv_freq(double base, int dim, float* out) noexcept {
  for (int i = 0; i < dim / 2; ++i) out[i] = 1.0f / torch_rope_power(base, dim, i);
}

}  // namespace kvcompress::detail
