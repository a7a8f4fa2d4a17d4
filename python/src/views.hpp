#pragma once
/// \file
/// \brief The binding's cache and observation: Python tensors held alive, the library's views
/// built over them by its validating factories, and the native press with its reused workspace.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <variant>
#include <vector>

#include "any_press.hpp"
#include "tensors.hpp"

namespace kvcompress::python {

using AnyView = std::variant<KVCacheView<float, StridedLayout>, KVCacheView<half, StridedLayout>,
                             KVCacheView<bfloat16, StridedLayout>, KVCacheView<float, PagedLayout>,
                             KVCacheView<half, PagedLayout>, KVCacheView<bfloat16, PagedLayout>>;

/// \brief One layer's cache over tensors the caller owns. Keys and values are held (so the memory
/// outlives the view); lengths [batch, kv_heads] int32 are the caller's array, updated in place.
struct Cache {
  Array keys, values, lengths;
  std::optional<Array> positions;
  std::optional<Array> block_table;
  std::optional<Array> v_block_table;
  AnyView view;
  Storage storage = Storage::kF32;
  bool paged = false;

  [[nodiscard]] CacheExtents const& extents() const {
    return std::visit([](auto const& v) -> CacheExtents const& { return v.extents; }, view);
  }
};

/// `keys`, `values`: [batch, kv_heads, capacity, head_dim] with any (positive) strides.
Cache make_strided_cache(Array keys, Array values, Array lengths, std::optional<Array> positions);

/// `k_pool`, `v_pool`: [num_pages, heads_in_page, page_size, head_dim], channels contiguous, any
/// page, head and token strides (NHD and HND are two stride orders of this shape; heads_in_page is 1
/// for a per-head table). `block_table`: int32 [batch, pages_per_row] (per sequence) or
/// [batch, kv_heads, pages_per_row] (per head), innermost stride 1.
/// `v_block_table`: V's table when V lives in other pages of the same pool (`k_pool` is `v_pool`).
Cache make_paged_cache(Array k_pool, Array v_pool, Array block_table, Array lengths, std::int64_t kv_heads,
                       std::int64_t capacity, std::optional<Array> positions, std::optional<Array> v_block_table);

/// \brief What the caller hands a press; tensors must have the cache's storage type.
struct PyObservation {
  std::optional<Array> queries, window_queries, attention, output_projection;
  std::optional<Array> stats_mean, stats_covariance, query_offsets, sequence_positions, hidden_states;
  std::shared_ptr<RotaryEmbedding const> rope;
  int layer_idx = 0;
  int num_layers = 1;
  std::int64_t position = 0;
  std::int64_t chunk_length = 0;

  template <class T>
  [[nodiscard]] Observation<T> build(CacheExtents const& e) const;
};

/// \brief A press, its name, and the workspace reused by every call (grown, never shrunk).
struct NativePress {
  std::shared_ptr<AnyPress const> any;
  std::vector<std::byte> workspace;
  std::size_t allocations = 0;  // times the workspace grew
  std::unique_ptr<std::mutex> mutex = std::make_unique<std::mutex>();

  explicit NativePress(std::shared_ptr<AnyPress const> a) : any(std::move(a)) {}

  /// A workspace of at least `bytes`, kept for the next call.
  Workspace reserve(std::size_t bytes) {
    if (workspace.size() < bytes) {
      workspace = std::vector<std::byte>(bytes);
      ++allocations;
    }
    return Workspace(workspace.data(), workspace.size());
  }
};

template <class T>
Observation<T> PyObservation::build(CacheExtents const& e) const {
  Observation<T> o;
  o.layer_idx = layer_idx;
  o.num_layers = num_layers;
  o.position = position;
  o.chunk_length = chunk_length;
  o.rope = rope.get();
  if (queries) o.queries = tensor4<T>(*queries, "observation.queries");
  if (window_queries) o.window_queries = tensor4<T>(*window_queries, "observation.window_queries");
  if (attention) o.attention = tensor4<T>(*attention, "observation.attention");
  if (hidden_states) o.hidden_states = tensor4<T>(*hidden_states, "observation.hidden_states");
  if (output_projection) {
    Array const& w = *output_projection;
    T const* data = typed_data<T>(w, "observation.output_projection");
    require_rank(w, 2, "observation.output_projection", "[hidden, q_heads * head_dim]");
    try {
      o.output_projection = make_tensor2(data, {static_cast<std::int64_t>(w.shape(0)), static_cast<std::int64_t>(w.shape(1))},
                                         {w.stride(0), w.stride(1)});
    } catch (Error const& err) {
      throw Error("Observation", __FILE__, __LINE__, "observation.output_projection: " + err.message());
    }
  }
  if (stats_mean) {
    Array const& m = *stats_mean;
    require_rank(m, 2, "observation.stats_mean", "[q_heads, head_dim]");
    std::int64_t const q_heads = static_cast<std::int64_t>(m.shape(0));
    KVC_CHECK(static_cast<std::int64_t>(m.shape(1)) == e.head_dim,
              "observation.stats_mean has head_dim " << m.shape(1) << ", the cache " << e.head_dim);
    o.stats.mean = contiguous_data<float>(m, q_heads * e.head_dim, "observation.stats_mean");
    o.stats.q_heads = q_heads;
    if (stats_covariance)
      o.stats.covariance = contiguous_data<float>(*stats_covariance, q_heads * e.head_dim * e.head_dim,
                                                  "observation.stats_covariance");
  } else {
    KVC_CHECK(!stats_covariance, "observation.stats_covariance needs observation.stats_mean");
  }
  if (query_offsets) o.query_offsets = contiguous_data<std::int32_t>(*query_offsets, e.batch + 1, "observation.query_offsets");
  if (sequence_positions) {
    KVC_CHECK(query_offsets, "observation.sequence_positions needs observation.query_offsets");
    o.sequence_positions = contiguous_data<std::int64_t>(*sequence_positions, e.batch, "observation.sequence_positions");
  }
  return o;
}

}  // namespace kvcompress::python
