#pragma once
/// \file
/// \brief The finiteness precondition: a NaN or ±Inf in the cache or in the activations would
/// silently poison a whole row's softmax, so every entry point rejects it with the exact location.

#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdint>

#include "kvcompress/cache/kv_cache_view.hpp"
#include "kvcompress/core/error.hpp"
#include "kvcompress/core/tensor.hpp"
#include "kvcompress/detail/parallel_for.hpp"

namespace kvcompress::detail {

/// The float exponent field; all ones (kNonFiniteExponent) exactly for NaN and ±Inf.
inline constexpr std::uint32_t kNonFiniteExponent = 0x7f800000u;
template <class T>
[[nodiscard]] inline std::uint32_t exponent_bits(T x) noexcept {
  float const f = to_float(x);
  std::uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits & kNonFiniteExponent;
}

/// Throws if any live key or value is NaN or ±Inf, naming the tensor, the index and the value.
template <class T, class L>
void require_finite_cache(CpuDevice const& dev, KVCacheView<T, L> const& cache) {
  std::int64_t const heads = cache.extents.kv_heads, d = cache.extents.head_dim;
  parallel_for(dev, cache.extents.batch * heads, [&](std::int64_t r, int) {
    std::int64_t const b = r / heads, h = r % heads;
    // Fast pass: the largest exponent field (an associative integer max, so it vectorises) tells
    // whether the slow pass, which names the offending element, is needed.
    std::uint32_t top = 0;
    for (std::int32_t s = 0; s < cache.lengths[r]; ++s)
      for (std::int64_t c = 0; c < d; ++c)
        top = std::max({top, exponent_bits(cache.key(b, h, s, c)), exponent_bits(cache.value(b, h, s, c))});
    if (top != kNonFiniteExponent) return;
    for (std::int32_t s = 0; s < cache.lengths[r]; ++s)
      for (std::int64_t c = 0; c < d; ++c) {
        float const k = to_float(cache.key(b, h, s, c)), v = to_float(cache.value(b, h, s, c));
        KVC_CHECK(std::isfinite(k), "keys[" << b << ", " << h << ", " << s << ", " << c << "] = " << k
                                            << " is not finite");
        KVC_CHECK(std::isfinite(v), "values[" << b << ", " << h << ", " << s << ", " << c << "] = " << v
                                              << " is not finite");
      }
  });
}

/// Throws if any element of a non-empty activation tensor is NaN or ±Inf.
template <class T>
void require_finite(Tensor4<T> const& t, char const* name) {
  if (t.empty()) return;
  std::uint32_t top = 0;  // fast pass, as in require_finite_cache
  for (std::int64_t i = 0; i < t.shape[0]; ++i)
    for (std::int64_t j = 0; j < t.shape[1]; ++j)
      for (std::int64_t k = 0; k < t.shape[2]; ++k)
        for (std::int64_t l = 0; l < t.shape[3]; ++l) top = std::max(top, exponent_bits(t(i, j, k, l)));
  if (top != kNonFiniteExponent) return;
  for (std::int64_t i = 0; i < t.shape[0]; ++i)
    for (std::int64_t j = 0; j < t.shape[1]; ++j)
      for (std::int64_t k = 0; k < t.shape[2]; ++k)
        for (std::int64_t l = 0; l < t.shape[3]; ++l) {
          float const x = to_float(t(i, j, k, l));
          KVC_CHECK(std::isfinite(x), name << "[" << i << ", " << j << ", " << k << ", " << l << "] = " << x
                                           << " is not finite");
        }
}

}  // namespace kvcompress::detail
