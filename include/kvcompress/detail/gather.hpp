#pragma once
/// \file
/// \brief Copies slices of a cache row into contiguous float buffers, so that scorers run Eigen on
/// dense row-major matrices whatever the engine's layout and storage type.

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kvcompress/cache/kv_cache_view.hpp"
#include "kvcompress/core/dtype.hpp"
#include "kvcompress/detail/layout_traits.hpp"

namespace kvcompress::detail {

/// out[i, c] = key(b, h, first + i, c) as float. \param out [count, head_dim] row-major
template <class T, class L>
void gather_keys(KVCacheView<T, L> const& cache, std::int64_t b, std::int64_t h, std::int64_t first,
                 std::int64_t count, float* out) {
  std::int64_t const d = cache.extents.head_dim;
  // A unit head_dim stride (every common engine layout, strided or paged) makes each key a
  // contiguous run: the copy-and-convert below then vectorises, where the general index arithmetic
  // does not.
  if (unit_dim_stride(cache.key_layout)) {
    for (std::int64_t i = 0; i < count; ++i) {
      T const* k = &cache.key(b, h, first + i, 0);  // [head_dim], contiguous
      float* o = out + i * d;
      for (std::int64_t c = 0; c < d; ++c) o[c] = to_float(k[c]);
    }
    return;
  }
  for (std::int64_t i = 0; i < count; ++i)
    for (std::int64_t c = 0; c < d; ++c) out[i * d + c] = to_float(cache.key(b, h, first + i, c));
}

/// out[i, c] = the bits of bfloat16 key(b, h, first + i, c), for the kernels that read bf16 pairs.
/// \param out [count, head_dim] row-major
template <class L>
void gather_key_bits(KVCacheView<bfloat16, L> const& cache, std::int64_t b, std::int64_t h, std::int64_t first,
                     std::int64_t count, std::uint16_t* out) {
  std::int64_t const d = cache.extents.head_dim;
  if (unit_dim_stride(cache.key_layout)) {  // each key a contiguous run of d × 2 bytes
    for (std::int64_t i = 0; i < count; ++i)
      std::memcpy(out + i * d, &cache.key(b, h, first + i, 0), static_cast<std::size_t>(d) * sizeof(std::uint16_t));
    return;
  }
  for (std::int64_t i = 0; i < count; ++i)
    for (std::int64_t c = 0; c < d; ++c)
      out[i * d + c] = Eigen::numext::bit_cast<std::uint16_t>(cache.key(b, h, first + i, c));
}

/// out[i, c] = value(b, h, first + i, c) as float. \param out [count, head_dim] row-major
template <class T, class L>
void gather_values(KVCacheView<T, L> const& cache, std::int64_t b, std::int64_t h, std::int64_t first,
                   std::int64_t count, float* out) {
  std::int64_t const d = cache.extents.head_dim;
  if (unit_dim_stride(cache.value_layout)) {  // contiguous values: a vectorisable copy, as for keys
    for (std::int64_t i = 0; i < count; ++i) {
      T const* v = &cache.value(b, h, first + i, 0);  // [head_dim], contiguous
      float* o = out + i * d;
      for (std::int64_t c = 0; c < d; ++c) o[c] = to_float(v[c]);
    }
    return;
  }
  for (std::int64_t i = 0; i < count; ++i)
    for (std::int64_t c = 0; c < d; ++c) out[i * d + c] = to_float(cache.value(b, h, first + i, c));
}

}  // namespace kvcompress::detail
