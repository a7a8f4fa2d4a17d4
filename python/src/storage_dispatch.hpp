#pragma once
/// \file
/// \brief `by_storage`: one call of a generic lambda with the element type an array's storage names, so a
/// binding instantiates the library's templates for float, half and bfloat16 in one place.

#include "tensors.hpp"

namespace kvcompress::python {

/// Calls f(T{}) for the T that `s` names (float, half or bfloat16) and returns what it returns.
template <class F>
auto by_storage(Storage s, F&& f) {
  switch (s) {
    case Storage::kF16: return f(half{});
    case Storage::kBF16: return f(bfloat16{});
    default: return f(float{});
  }
}

}  // namespace kvcompress::python
