#pragma once
/// \file
/// \brief `Observation`: what the engine can hand a press at a compression point. A press that
/// needs a field it did not get throws `kvcompress::Error` naming the field.

#include <cstdint>

#include "kvcompress/core/tensor.hpp"

namespace kvcompress {

class RotaryEmbedding;

/// \brief Precomputed per-layer query statistics (Expected Attention "with stats").
struct QueryStats {
  float const* mean = nullptr;        // [q_heads, head_dim], pre-RoPE
  float const* covariance = nullptr;  // [q_heads, head_dim, head_dim], or null
  std::int64_t q_heads = 0;           // query heads in mean and covariance
};

/// \tparam T storage type of the activations (usually the cache's)
template <class T>
struct Observation {
  int layer_idx = 0;
  int num_layers = 1;
  /// Pre-RoPE queries of the current chunk (after q_norm where the model has one):
  /// [batch, q_heads, q_len, head_dim].
  Tensor4<T> queries{};
  /// Post-RoPE queries of the last `w` tokens of the chunk (SnapKV, TOVA): [batch, q_heads, w, head_dim].
  Tensor4<T> window_queries{};
  /// Attention probabilities of the chunk's queries over the cache: [batch, q_heads, q_len, n].
  Tensor4<T> attention{};
  QueryStats stats{};
  /// The attention's output projection W_o (HF `o_proj.weight`), read by CriticalKV:
  /// [hidden, q_heads * head_dim]; column j·head_dim + c is channel c of query head j.
  Tensor2<T> output_projection{};
  /// The model's rotary embedding (needed by Expected Attention and key re-rotation).
  RotaryEmbedding const* rope = nullptr;
  /// Absolute position of the chunk's first token (0 for a prefill).
  std::int64_t position = 0;
  /// Tokens in the chunk. 0 means "take it from queries"; set it when no queries are given.
  std::int64_t chunk_length = 0;

  /// Number of tokens in the chunk, or 0 if unknown.
  [[nodiscard]] std::int64_t chunk_tokens() const noexcept {
    return chunk_length > 0 ? chunk_length : (queries.empty() ? 0 : queries.shape[2]);
  }
};

}  // namespace kvcompress
