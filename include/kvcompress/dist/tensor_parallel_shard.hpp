#pragma once
/// \file
/// \brief `TensorParallelShard`: where this process's kv heads sit in the layer, and the group that
/// holds the others. Part of `Observation`; the default is the whole layer on one process.

#include <cstdint>

namespace kvcompress {

class Communicator;

/// \brief This rank holds kv heads [first_kv_head, first_kv_head + cache.extents.kv_heads) of a
/// layer of `kv_heads` heads (and their whole query groups); the other ranks of `communicator` hold
/// the rest, each head exactly once. vLLM, SGLang and TensorRT-LLM give rank r of P the heads
/// [r·H/P, (r + 1)·H/P); any partition works. An engine that replicates kv heads (more ranks than
/// heads) passes a communicator over one replica of each head.
struct TensorParallelShard {
  /// The group of ranks that hold the layer's heads; null: this process holds the whole layer.
  Communicator* communicator = nullptr;
  /// Global index of this rank's first kv head.
  std::int64_t first_kv_head = 0;
  /// kv heads of the whole layer; 0 means the cache's own (the whole layer).
  std::int64_t kv_heads = 0;

  /// Whether the heads of the layer are spread over more than this process.
  [[nodiscard]] bool split() const noexcept { return communicator != nullptr; }
};

}  // namespace kvcompress
