#pragma once
/// \file
/// \brief `KVCacheView`: a non-owning view over one layer's K and V memory, owned by the engine.

#include <cstdint>
#include <type_traits>
#include <cstddef>
#include <vector>

#include "kvcompress/cache/extents.hpp"
#include "kvcompress/cache/paged_layout.hpp"
#include "kvcompress/cache/strided_layout.hpp"
#include "kvcompress/cache/view_checks.hpp"
#include "kvcompress/core/config.hpp"
#include "kvcompress/core/dtype.hpp"
#include "kvcompress/core/error.hpp"

namespace kvcompress {

/// \brief One layer's cache. Trivially copyable; pass by value. Each (batch, kv head) row holds
/// `lengths[b·kv_heads + h]` live entries in slots [0, length), in position order. Compression
/// rewrites the slots and the lengths in place; memory beyond a row's length is the engine's.
///
/// \tparam T      storage type: float, half or bfloat16
/// \tparam Layout maps (batch, head, seq, dim) to an element offset (`StridedLayout`, or paged)
template <class T, class Layout = StridedLayout>
struct KVCacheView {
  using value_type = T;
  using layout_type = Layout;

  T* keys = nullptr;                // addressed by key_layout over extents
  T* values = nullptr;              // addressed by value_layout over extents
  CacheExtents extents{};           // [batch, kv_heads, capacity, head_dim]
  Layout key_layout{};
  Layout value_layout{};
  std::int32_t* lengths = nullptr;    // [batch, kv_heads], each in [0, capacity]
  std::int32_t* positions = nullptr;  // [batch, kv_heads, capacity] original positions, or null (= slot index)

  [[nodiscard]] KVC_HOST_DEVICE std::int64_t row(std::int64_t b, std::int64_t h) const noexcept {
    return b * extents.kv_heads + h;
  }
  [[nodiscard]] KVC_HOST_DEVICE std::int32_t length(std::int64_t b, std::int64_t h) const noexcept {
    return lengths[row(b, h)];
  }
  [[nodiscard]] KVC_HOST_DEVICE T& key(std::int64_t b, std::int64_t h, std::int64_t s,
                                       std::int64_t d) const noexcept {
    return keys[key_layout.offset(b, h, s, d)];
  }
  [[nodiscard]] KVC_HOST_DEVICE T& value(std::int64_t b, std::int64_t h, std::int64_t s,
                                         std::int64_t d) const noexcept {
    return values[value_layout.offset(b, h, s, d)];
  }
  /// Original (absolute) position of slot s: from `positions` if given, else s itself.
  [[nodiscard]] KVC_HOST_DEVICE std::int64_t position(std::int64_t b, std::int64_t h,
                                                      std::int64_t s) const noexcept {
    return positions ? positions[row(b, h) * extents.capacity + s] : s;
  }
};

/// \brief Validates and builds a view. Throws `kvcompress::Error` on null pointers, buffers that
/// share memory (K and V, lengths, positions, block tables; `view_checks.hpp`), bad extents or
/// layouts, lengths outside [0, capacity], and live block-table entries outside the pool or live twice.
/// \param lengths   [batch, kv_heads] live lengths (read and later updated in place)
/// \param positions [batch, kv_heads, capacity] original positions, or null
template <class T, class Layout>
[[nodiscard]] KVCacheView<T, Layout> make_cache_view(T* keys, T* values, CacheExtents const& extents,
                                                     Layout const& key_layout,
                                                     Layout const& value_layout,
                                                     // compaction writes through both, via the view:
                                                     // NOLINTNEXTLINE(readability-non-const-parameter)
                                                     std::int32_t* lengths,
                                                     // NOLINTNEXTLINE(readability-non-const-parameter)
                                                     std::int32_t* positions = nullptr) {
  static_assert(is_storage_type_v<T>, "the cache stores float, kvcompress::half or kvcompress::bfloat16");
  KVCacheView<T, Layout> const view{keys, values, extents, key_layout, value_layout, lengths, positions};
  detail::validate_view(view);
  if constexpr (std::is_same_v<Layout, PagedLayout>) {
    // compress checks this again with its workspace; here the factory pays for the bitmap.
    std::vector<std::byte> bitmap(detail::view_check_bytes(view));
    detail::check_unique_pages(view, Workspace(bitmap.data(), bitmap.size()));
  }
  return view;
}

/// \brief Convenience: K and V share one strided layout.
template <class T>
[[nodiscard]] KVCacheView<T, StridedLayout> make_cache_view(T* keys, T* values,
                                                            CacheExtents const& extents,
                                                            StridedLayout const& layout,
                                                            std::int32_t* lengths,
                                                            std::int32_t* positions = nullptr) {
  return make_cache_view(keys, values, extents, layout, layout, lengths, positions);
}

}  // namespace kvcompress
