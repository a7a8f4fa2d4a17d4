#pragma once
/// \file
/// \brief The logical shape of a KV cache: [batch, kv_heads, capacity, head_dim].

#include <cstdint>

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

}  // namespace kvcompress
