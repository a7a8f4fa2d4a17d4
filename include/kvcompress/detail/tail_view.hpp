#pragma once
/// \file
/// \brief A view of the last `count` slots of every (batch, kv head) row of a cache, for scoring
/// only the entries a chunk just appended (DMS). Rows may have different lengths, so each row's
/// first slot comes from a per-row table; the underlying layout (strided or paged) is kept.

#include <cstdint>

#include "kvcompress/cache/kv_cache_view.hpp"
#include "kvcompress/core/config.hpp"

namespace kvcompress::detail {

/// Layout L shifted along the sequence by a per-row offset.
template <class L>
struct RowOffsetLayout {
  L base{};
  std::int32_t const* first = nullptr;  // [batch, kv_heads] slot of the row's first visible entry
  std::int64_t kv_heads = 1;

  [[nodiscard]] KVC_HOST_DEVICE std::int64_t offset(std::int64_t b, std::int64_t h, std::int64_t s,
                                                    std::int64_t d) const noexcept {
    return base.offset(b, h, first[b * kv_heads + h] + s, d);
  }
  [[nodiscard]] KVC_HOST_DEVICE bool unit_dim_stride() const noexcept { return base.unit_dim_stride(); }
};

/// Slots [lengths[r] − count, lengths[r]) of every row r as a cache of capacity `count`, without
/// original positions. The caller checks that every row holds at least `count` entries.
/// \param first       [batch, kv_heads] scratch, filled here
/// \param tail_lengths [batch, kv_heads] scratch, filled here (all `count`)
template <class T, class L>
[[nodiscard]] KVCacheView<T, RowOffsetLayout<L>> make_tail_view(KVCacheView<T, L> const& cache, std::int32_t count,
                                                               std::int32_t* first, std::int32_t* tail_lengths) {
  std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads;
  for (std::int64_t r = 0; r < rows; ++r) {
    first[r] = cache.lengths[r] - count;
    tail_lengths[r] = count;
  }
  CacheExtents e = cache.extents;
  e.capacity = count;
  return KVCacheView<T, RowOffsetLayout<L>>{cache.keys,
                                            cache.values,
                                            e,
                                            RowOffsetLayout<L>{cache.key_layout, first, e.kv_heads},
                                            RowOffsetLayout<L>{cache.value_layout, first, e.kv_heads},
                                            tail_lengths,
                                            nullptr};
}

}  // namespace kvcompress::detail
