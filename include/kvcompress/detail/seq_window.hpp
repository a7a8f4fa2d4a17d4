#pragma once
/// \file
/// \brief A view of a window of slots [start, start + capacity) of every row of a cache, so that a
/// press can score one chunk of a cache as if it were a whole cache (ChunkPress).

#include <cstdint>

#include "kvcompress/cache/kv_cache_view.hpp"
#include "kvcompress/cache/strided_layout.hpp"
#include "kvcompress/core/config.hpp"

namespace kvcompress::detail {

/// Any layout seen from slot `start` on: slot s of the window is slot start + s of the base.
template <class Layout>
struct SeqShiftedLayout {
  Layout base{};
  std::int64_t start = 0;

  [[nodiscard]] KVC_HOST_DEVICE std::int64_t offset(std::int64_t b, std::int64_t h, std::int64_t s,
                                                    std::int64_t d) const noexcept {
    return base.offset(b, h, start + s, d);
  }
};

/// The window has no original positions (presses score without them) and its own lengths.
/// \param lengths [batch, kv_heads] the window's live lengths, each ≤ capacity
template <class T, class L>
[[nodiscard]] KVCacheView<T, SeqShiftedLayout<L>> seq_window(KVCacheView<T, L> const& cache, std::int64_t start,
                                                             std::int64_t capacity, std::int32_t* lengths) {
  CacheExtents e = cache.extents;
  e.capacity = capacity;
  return {cache.keys, cache.values, e, {cache.key_layout, start}, {cache.value_layout, start}, lengths, nullptr};
}

/// A strided layout stays strided (and keeps the presses' contiguous fast paths): the window starts
/// `start` sequence strides further.
template <class T>
[[nodiscard]] KVCacheView<T, StridedLayout> seq_window(KVCacheView<T, StridedLayout> const& cache, std::int64_t start,
                                                       std::int64_t capacity, std::int32_t* lengths) {
  CacheExtents e = cache.extents;
  e.capacity = capacity;
  return {cache.keys + cache.key_layout.offset(0, 0, start, 0),
          cache.values + cache.value_layout.offset(0, 0, start, 0),
          e,
          cache.key_layout,
          cache.value_layout,
          lengths,
          nullptr};
}

}  // namespace kvcompress::detail
