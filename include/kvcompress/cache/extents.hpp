#pragma once
/// \file
/// \brief The logical shape of a KV cache: [batch, kv_heads, capacity, head_dim].

#include <array>
#include <cstdint>
#include <limits>

#include "kvcompress/core/error.hpp"

namespace kvcompress {

/// \brief Logical extents of one layer's cache. `capacity` is the number of entry slots per
/// (batch, kv head); the live length of each head is held separately (`KVCacheView::lengths`).
struct CacheExtents {
  std::int64_t batch = 0;
  std::int64_t kv_heads = 0;
  std::int64_t capacity = 0;
  std::int64_t head_dim = 0;
};

/// \brief The four logical axes, used to describe a memory order outermost → innermost.
enum class Axis : unsigned char { kBatch = 0, kHead = 1, kSeq = 2, kDim = 3 };

namespace detail {

inline char const* axis_name(int axis) noexcept {
  constexpr char const* names[] = {"batch", "kv_heads", "seq", "head_dim"};
  return names[axis];
}

inline std::array<std::int64_t, 4> extents_array(CacheExtents const& e) noexcept {
  return {e.batch, e.kv_heads, e.capacity, e.head_dim};
}

}  // namespace detail

/// \brief Validates extents: every axis positive, the element count representable in 64 bits.
inline void validate_extents(CacheExtents const& e) {
  auto const ext = detail::extents_array(e);
  std::int64_t count = 1;
  for (int a = 0; a < 4; ++a) {
    KVC_CHECK(ext[a] > 0, "extents." << detail::axis_name(a) << " must be positive, got " << ext[a]);
    KVC_CHECK(count <= std::numeric_limits<std::int64_t>::max() / ext[a],
              "extents: batch·kv_heads·capacity·head_dim overflows 64 bits at "
                  << detail::axis_name(a) << " = " << ext[a]);
    count *= ext[a];
  }
  KVC_CHECK(e.capacity <= std::numeric_limits<std::int32_t>::max(),
            "extents.seq (capacity) must fit in int32, got " << e.capacity);
}

}  // namespace kvcompress
