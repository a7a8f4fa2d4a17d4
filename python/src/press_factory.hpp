#pragma once
/// \file
/// \brief Building a `NativePress` from a press of the library.

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>

#include "views.hpp"

namespace kvcompress::python {

namespace detail_py {

template <class P, class Variant>
struct is_alternative : std::false_type {};
template <class P, class... Ts>
struct is_alternative<P, std::variant<Ts...>> : std::disjunction<std::is_same<P, Ts>...> {};

}  // namespace detail_py

/// The press the CUDA device runs for `press`: itself when it is a scorer with kernels, the same
/// AdaKV when it is AdaKV around one of those (at the ratio the wrapper gives it); null otherwise.
template <class P>
std::shared_ptr<CudaPress const> cuda_press_of(P const& press) {
  if constexpr (detail_py::is_alternative<P, CudaScorer>::value) {
    return std::make_shared<CudaPress const>(CudaPress{press});
  } else if constexpr (std::is_same_v<P, AdaKVPress<ErasedScorer>>) {
    std::shared_ptr<CudaPress const> const& inner = press.press.any->cuda();
    if (inner == nullptr || inner->adakv) return nullptr;
    CudaPress c = *inner;
    std::visit([&](auto& s) { s = with_compression_ratio(s, press.press.compression_ratio); }, c.scorer);
    c.adakv = true;
    c.alpha_safeguard = press.alpha_safeguard;
    return std::make_shared<CudaPress const>(std::move(c));
  } else {
    return nullptr;
  }
}

template <class P>
NativePress native(P press, char const* name, Borrowed borrowed = {}) {
  auto cuda = cuda_press_of(press);
  return NativePress(std::make_shared<AnyPress const>(std::move(press), name, std::move(borrowed), std::move(cuda)));
}

/// The inner press of a wrapper, which must be a scorer press.
inline ErasedScorer inner(NativePress const& p, char const* wrapper) { return erase_scorer(p.any, wrapper); }

/// \brief A float32 array a press reads through a raw pointer, of rank `shape.size()`:
/// host, C-contiguous, held alive by the press. `expected` gives each axis's extent from the
/// cache's, -1 where any extent goes (the press checks that one); `names` names the axes.
template <std::size_t R>
struct FloatArray {
  std::optional<Array> array;
  char const* what = "";
  std::array<char const*, R> names{};

  /// The data (null when no array was given: the press then says that it needs one).
  [[nodiscard]] float const* data() const {
    if (!array) return nullptr;
    require_rank(*array, R, what, "");
    std::int64_t count = 1;
    for (std::size_t i = 0; i < R; ++i) count *= static_cast<std::int64_t>(array->shape(i));
    return contiguous_data<float>(*array, count, what);
  }

  /// Throws unless axis i has extent expected[i] (where expected[i] >= 0).
  void check(std::array<std::int64_t, R> const& expected) const {
    if (!array) return;
    for (std::size_t i = 0; i < R; ++i)
      KVC_CHECK(expected[i] < 0 || static_cast<std::int64_t>(array->shape(i)) == expected[i],
                what << " has " << names[i] << " = " << array->shape(i) << ", the cache needs " << expected[i]);
  }

  /// The array, held alive with the press.
  [[nodiscard]] std::shared_ptr<void const> owner() const {
    return array ? std::make_shared<Array const>(*array) : nullptr;
  }
};

}  // namespace kvcompress::python
