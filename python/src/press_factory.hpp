#pragma once
/// \file
/// \brief Building a `NativePress` from a press of the library.

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "views.hpp"

namespace kvcompress::python {

template <class P>
NativePress native(P press, char const* name, Borrowed borrowed = {}) {
  return NativePress(std::make_shared<AnyPress const>(std::move(press), name, std::move(borrowed)));
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
