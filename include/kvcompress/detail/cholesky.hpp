#pragma once
/// \file
/// \brief Small dense Cholesky factorisation and the quadratic form xᵀA⁻¹x, in double, allocation-free
/// (the leverage presses factor one k × k or d × d matrix per head inside `compress`).

#include <cmath>
#include <cstdint>

namespace kvcompress::detail {

/// a ← L with A = LLᵀ in its lower triangle (the upper triangle is not read). False if A is not
/// positive definite (or holds NaN). \param a [k, k] row-major
[[nodiscard]] inline bool cholesky_in_place(double* a, std::int64_t k) noexcept {
  for (std::int64_t j = 0; j < k; ++j) {
    double diag = a[j * k + j];
    for (std::int64_t c = 0; c < j; ++c) diag -= a[j * k + c] * a[j * k + c];
    if (!(diag > 0.0) || !std::isfinite(diag)) return false;
    double const ljj = std::sqrt(diag);
    a[j * k + j] = ljj;
    for (std::int64_t i = j + 1; i < k; ++i) {
      double s = a[i * k + j];
      for (std::int64_t c = 0; c < j; ++c) s -= a[i * k + c] * a[j * k + c];
      a[i * k + j] = s / ljj;
    }
  }
  return true;
}

/// xᵀ(LLᵀ)⁻¹x = ‖L⁻¹x‖² by forward substitution. \param l [k, k] from `cholesky_in_place`
/// \param x [k] \param z [k] scratch
template <class X>
[[nodiscard]] double inverse_quadratic_form(double const* l, X const* x, double* z, std::int64_t k) noexcept {
  double q = 0.0;
  for (std::int64_t i = 0; i < k; ++i) {
    double s = static_cast<double>(x[i]);
    for (std::int64_t c = 0; c < i; ++c) s -= l[i * k + c] * z[c];
    z[i] = s / l[i * k + i];
    q += z[i] * z[i];
  }
  return q;
}

}  // namespace kvcompress::detail
