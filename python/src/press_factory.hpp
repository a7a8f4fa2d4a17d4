#pragma once
/// \file
/// \brief Building a `NativePress` from a press of the library.

#include <memory>
#include <utility>

#include "views.hpp"

namespace kvcompress::python {

template <class P>
NativePress native(P press, char const* name) {
  return NativePress(std::make_shared<AnyPress const>(std::move(press), name));
}

/// The inner press of a wrapper, which must be a scorer press.
inline ErasedScorer inner(NativePress const& p, char const* wrapper) { return erase_scorer(p.any, wrapper); }

}  // namespace kvcompress::python
