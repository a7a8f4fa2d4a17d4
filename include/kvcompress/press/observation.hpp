#pragma once
/// \file
/// \brief `Observation`: what the engine can hand a press at a compression point. A press that
/// needs a field it did not get throws `kvcompress::Error` naming the field.

#include <cstdint>
#include <limits>

#include "kvcompress/core/tensor.hpp"
#include "kvcompress/dist/tensor_parallel_shard.hpp"

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
  /// The attention module's input for the chunk (the hidden states after input_layernorm), read by
  /// the learned scorers (KVzap, FastKVzip): [batch, 1, q_len, hidden_size].
  Tensor4<T> hidden_states{};
  /// The attention's output projection W_o (HF `o_proj.weight`), read by CriticalKV:
  /// [hidden, q_heads * head_dim]; column j·head_dim + c is channel c of query head j.
  Tensor2<T> output_projection{};
  /// The model's rotary embedding (needed by Expected Attention and key re-rotation).
  RotaryEmbedding const* rope = nullptr;
  /// Absolute position of the chunk's first token (0 for a prefill).
  std::int64_t position = 0;
  /// Tokens in the chunk. 0 means "take it from queries"; set it when no queries are given.
  std::int64_t chunk_length = 0;

  /// Ragged batches (the varlen form of vLLM/SGLang prefills, `cu_seqlens`-style). When set,
  /// `queries` packs every sequence's chunk along q_len, [1, q_heads, total_q, head_dim], sequence
  /// b's queries being [query_offsets[b], query_offsets[b + 1]): [batch + 1], ascending, starting at
  /// 0 and ending at total_q. Presses that read queries then treat each sequence on its own.
  std::int32_t const* query_offsets = nullptr;
  /// Absolute position of each sequence's first chunk token, [batch]; null means `position` for
  /// every sequence. Read only with `query_offsets`.
  std::int64_t const* sequence_positions = nullptr;

  /// Tensor parallelism: which kv heads of the layer the cache holds and the group holding the
  /// others (docs/distributed.md). The default is the whole layer on this process.
  TensorParallelShard shard{};

  /// Whether the queries are packed per sequence (`query_offsets`).
  [[nodiscard]] bool ragged() const noexcept { return query_offsets != nullptr; }

  /// Number of tokens in the chunk, or 0 if unknown (of batch element b in a ragged batch).
  [[nodiscard]] std::int64_t chunk_tokens(std::int64_t b = 0) const noexcept {
    if (ragged()) return std::int64_t{query_offsets[b + 1]} - query_offsets[b];
    return chunk_length > 0 ? chunk_length : (queries.empty() ? 0 : queries.shape[2]);
  }
  /// Absolute position of batch element b's first chunk token.
  [[nodiscard]] std::int64_t sequence_position(std::int64_t b) const noexcept {
    return ragged() && sequence_positions != nullptr ? sequence_positions[b] : position;
  }
  /// First query row of batch element b in `queries` (b itself unless ragged), and its first token.
  [[nodiscard]] std::int64_t query_batch(std::int64_t b) const noexcept { return ragged() ? 0 : b; }
  [[nodiscard]] std::int64_t query_start(std::int64_t b) const noexcept { return ragged() ? query_offsets[b] : 0; }
};

namespace detail {

/// The checks every entry point runs on the observation, however it was built: each tensor it
/// carries, the position and, for a ragged batch, the offsets and positions of its `batch`
/// sequences. O(batch); activations are matched against the cache by the presses that read them.
template <class T>
void validate_observation(Observation<T> const& obs, std::int64_t batch) {
  if (!obs.queries.empty()) validate_tensor(obs.queries, "observation.queries");
  if (!obs.window_queries.empty()) validate_tensor(obs.window_queries, "observation.window_queries");
  if (!obs.attention.empty()) validate_tensor(obs.attention, "observation.attention");
  if (!obs.hidden_states.empty()) validate_tensor(obs.hidden_states, "observation.hidden_states");
  if (!obs.output_projection.empty()) validate_matrix(obs.output_projection, "observation.output_projection");
  KVC_CHECK(obs.position >= 0, "observation.position must be non-negative, got " << obs.position);
  KVC_CHECK(obs.chunk_length >= 0, "observation.chunk_length must be non-negative, got " << obs.chunk_length);
  if (!obs.ragged()) {
    KVC_CHECK(obs.position <= std::numeric_limits<std::int64_t>::max() - obs.chunk_tokens(),
              "observation.position = " << obs.position << " plus the chunk length " << obs.chunk_tokens()
                                        << " overflows 64 bits");
    return;
  }
  std::int32_t const* off = obs.query_offsets;
  KVC_CHECK(!obs.queries.empty(), "observation.query_offsets needs observation.queries (packed [1, q_heads, "
                                  "total_q, head_dim])");
  KVC_CHECK(obs.queries.shape[0] == 1, "observation.queries of a ragged batch pack every sequence into batch 1, got "
                                           "batch = " << obs.queries.shape[0]);
  KVC_CHECK(off[0] == 0, "observation.query_offsets[0] must be 0, got " << off[0]);
  for (std::int64_t b = 0; b < batch; ++b)
    KVC_CHECK(off[b + 1] >= off[b], "observation.query_offsets must not decrease: query_offsets["
                                        << b << "] = " << off[b] << ", query_offsets[" << b + 1 << "] = " << off[b + 1]);
  KVC_CHECK(off[batch] == obs.queries.shape[2], "observation.query_offsets[" << batch << "] = " << off[batch]
                                                << " must equal the packed queries' total q_len = "
                                                << obs.queries.shape[2]);
  for (std::int64_t b = 0; b < batch; ++b) {
    std::int64_t const p = obs.sequence_position(b);
    KVC_CHECK(p >= 0, "observation.sequence_positions[" << b << "] must be non-negative, got " << p);
    KVC_CHECK(p <= std::numeric_limits<std::int64_t>::max() - obs.chunk_tokens(b),
              "observation.sequence_positions[" << b << "] = " << p << " plus the sequence's chunk length "
                                                << obs.chunk_tokens(b) << " overflows 64 bits");
  }
}

/// Throws for a ragged observation given to a press that has no per-sequence form.
template <class T>
void require_not_ragged(Observation<T> const& obs, char const* press) {
  KVC_CHECK(!obs.ragged(), press << " does not take a ragged batch (observation.query_offsets is set); "
                                    "compress its sequences one at a time");
}

}  // namespace detail

}  // namespace kvcompress
