#pragma once
/// \file
/// \brief Strided layout: any order of the four axes, element strides, a non-unit innermost stride
/// (llama.cpp's transposed V, interleaved K/V buffers). Validated by the factories below.

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>

#include "kvcompress/cache/extents.hpp"
#include "kvcompress/core/config.hpp"
#include "kvcompress/core/error.hpp"

namespace kvcompress {

/// \brief Element offset of (batch, head, seq, dim) = Σ index·stride. Trivially copyable.
struct StridedLayout {
  std::array<std::int64_t, 4> strides{};  // elements, indexed by Axis: [batch, head, seq, dim]

  [[nodiscard]] KVC_HOST_DEVICE std::int64_t offset(std::int64_t b, std::int64_t h, std::int64_t s,
                                                    std::int64_t d) const noexcept {
    return b * strides[0] + h * strides[1] + s * strides[2] + d * strides[3];
  }
  /// Whether each entry's head_dim channels are contiguous (lets gathers vectorise).
  [[nodiscard]] KVC_HOST_DEVICE bool unit_dim_stride() const noexcept { return strides[3] == 1; }
};

namespace detail {

/// Largest element offset + 1, or throws when it does not fit in 63 bits.
inline std::int64_t checked_span(CacheExtents const& e, StridedLayout const& l, char const* what) {
  auto const ext = extents_array(e);
  std::int64_t span = 1;
  for (int a = 0; a < 4; ++a) {
    if (ext[a] <= 1) continue;
    std::int64_t const steps = ext[a] - 1;
    KVC_CHECK(l.strides[a] <= (std::numeric_limits<std::int64_t>::max() - span) / steps,
              what << ": offsets overflow 64 bits (" << axis_name(a) << " extent " << ext[a]
                   << ", stride " << l.strides[a] << ")");
    span += steps * l.strides[a];
  }
  return span;
}

}  // namespace detail


/// \brief A layout from explicit element strides, indexed [batch, head, seq, dim].
/// Strides must be positive and must nest (sorted by stride, each axis starts past the span of the
/// smaller ones) so that no two elements share memory.
inline StridedLayout make_strided_layout(CacheExtents const& e, std::array<std::int64_t, 4> strides) {
  validate_extents(e);
  auto const ext = detail::extents_array(e);
  for (int a = 0; a < 4; ++a)
    KVC_CHECK(strides[a] > 0, "strides[" << detail::axis_name(a) << "] must be positive, got "
                                         << strides[a]);
  std::array<int, 4> order{0, 1, 2, 3};
  std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return strides[x] < strides[y]; });
  std::int64_t inner_span = 1;  // elements covered by the axes already placed
  for (int a : order) {
    if (ext[a] == 1) continue;
    KVC_CHECK(strides[a] >= inner_span,
              "strides[" << detail::axis_name(a) << "] = " << strides[a]
                         << " overlaps the inner axes, which span " << inner_span << " elements");
    KVC_CHECK(strides[a] <= std::numeric_limits<std::int64_t>::max() / ext[a],
              "strides[" << detail::axis_name(a) << "] = " << strides[a] << " times extent " << ext[a]
                         << " overflows 64 bits");
    inner_span = strides[a] * ext[a];
  }
  StridedLayout const layout{strides};
  detail::checked_span(e, layout, "strides");
  return layout;
}

/// \brief A dense layout in the given memory order (outermost first), with an optional innermost
/// element stride (e.g. 2 for K and V interleaved element by element).
/// `{kBatch, kHead, kSeq, kDim}` is HF's [b, h, s, d]; `{kBatch, kSeq, kHead, kDim}` is the
/// token-major layout of most engines; llama.cpp's transposed V is `{kBatch, kHead, kDim, kSeq}`.
inline StridedLayout make_strided_layout(CacheExtents const& e, std::array<Axis, 4> order,
                                         std::int64_t innermost_stride = 1) {
  validate_extents(e);
  KVC_CHECK(innermost_stride > 0, "innermost_stride must be positive, got " << innermost_stride);
  std::array<bool, 4> seen{};
  for (Axis a : order) {
    int const i = static_cast<int>(a);
    KVC_CHECK(i >= 0 && i < 4 && !seen[i], "order must name each axis once; axis "
                                               << i << " is repeated or invalid");
    seen[i] = true;
  }
  auto const ext = detail::extents_array(e);
  std::array<std::int64_t, 4> strides{};
  std::int64_t stride = innermost_stride;
  for (int k = 3; k >= 0; --k) {
    int const a = static_cast<int>(order[k]);
    strides[a] = stride;
    KVC_CHECK(stride <= std::numeric_limits<std::int64_t>::max() / ext[a],
              "order: span overflows 64 bits at axis " << detail::axis_name(a));
    stride *= ext[a];
  }
  return make_strided_layout(e, strides);
}

}  // namespace kvcompress
