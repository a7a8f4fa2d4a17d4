#pragma once
// The layer shape every benchmark measures: Llama-3.1-8B (32 query heads, 8 KV heads, head_dim 128,
// llama3 RoPE with its published parameters), and SnapKV's window of 64 queries.

#include <cstdint>

#include "kvcompress/rope/rope_config.hpp"

namespace kvc_bench {

inline constexpr std::int64_t kQHeads = 32, kKvHeads = 8, kDim = 128, kWindow = 64;

inline kvcompress::RopeConfig llama31_rope() {
  kvcompress::RopeConfig c;
  c.type = kvcompress::RopeType::kLlama3;
  c.theta = 500000.0;
  c.head_dim = static_cast<int>(kDim);
  c.factor = 8.0;
  c.original_max_position_embeddings = 8192;
  c.max_position_embeddings = 131072;
  return c;
}

}  // namespace kvc_bench
