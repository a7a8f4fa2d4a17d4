#pragma once
/// \file
/// \brief Copies slices of a (strided or paged) cache row into contiguous float buffers, so that
/// scorers run Eigen on dense row-major matrices whatever the engine's layout and storage type.

#include <cstdint>

#include "kvcompress/cache/kv_cache_view.hpp"
#include "kvcompress/core/dtype.hpp"

namespace kvcompress::detail {

/// out[i, c] = key(b, h, first + i, c) as float. \param out [count, head_dim] row-major
template <class T, class L>
void gather_keys(KVCacheView<T, L> const& cache, std::int64_t b, std::int64_t h, std::int64_t first,
                 std::int64_t count, float* out) {
  std::int64_t const d = cache.extents.head_dim;
  for (std::int64_t i = 0; i < count; ++i)
    for (std::int64_t c = 0; c < d; ++c) out[i * d + c] = to_float(cache.key(b, h, first + i, c));
}

/// out[i, c] = value(b, h, first + i, c) as float. \param out [count, head_dim] row-major
template <class T, class L>
void gather_values(KVCacheView<T, L> const& cache, std::int64_t b, std::int64_t h, std::int64_t first,
                   std::int64_t count, float* out) {
  std::int64_t const d = cache.extents.head_dim;
  for (std::int64_t i = 0; i < count; ++i)
    for (std::int64_t c = 0; c < d; ++c) out[i * d + c] = to_float(cache.value(b, h, first + i, c));
}

}  // namespace kvcompress::detail
