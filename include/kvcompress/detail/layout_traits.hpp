#pragma once
/// \file
/// \brief Optional layout capabilities. A layout needs only `offset(b, h, s, d)`; one that can say its
/// head_dim channels are contiguous (`unit_dim_stride()`) lets gathers and compaction copy whole entries.

#include <type_traits>
#include <utility>

namespace kvcompress::detail {

template <class L, class = void>
struct has_unit_dim_stride : std::false_type {};
template <class L>
struct has_unit_dim_stride<L, std::void_t<decltype(std::declval<L const&>().unit_dim_stride())>> : std::true_type {};

/// Whether each entry's head_dim channels are contiguous in `layout`; false when it cannot tell.
template <class L>
[[nodiscard]] bool unit_dim_stride(L const& layout) noexcept {
  if constexpr (has_unit_dim_stride<L>::value) return layout.unit_dim_stride();
  else return false;
}

}  // namespace kvcompress::detail
