#pragma once
/// \file
/// \brief The binding's cache and observation: Python tensors held alive, the library's views
/// built over them by its validating factories, and the native press with its reused workspace.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "any_press.hpp"
#include "communicator.hpp"
#include "cuda_path.hpp"
#include "tensors.hpp"

namespace kvcompress::python {

/// \brief One layer's cache over tensors the caller owns. Keys and values are held (so the memory
/// outlives the view); lengths [batch, kv_heads] int32 are the caller's array, updated in place.
/// Every tensor lives in host memory or on one CUDA device (`place`).
struct Cache {
  Array keys, values, lengths;
  std::optional<Array> positions;
  std::optional<Array> block_table;
  std::optional<Array> v_block_table;
  AnyView any_view;  // over device memory when `place` is a CUDA device
  Storage storage = Storage::kF32;
  bool paged = false;
  Place place;

  [[nodiscard]] CacheExtents const& extents() const {
    return std::visit([](auto const& v) -> CacheExtents const& { return v.extents; }, any_view);
  }

  /// The view, for an entry point that reads the cache on the host (`what` names it): throws for a
  /// cache on a CUDA device.
  [[nodiscard]] AnyView const& host_view(char const* what) const {
    KVC_CHECK(place.host(), what << " runs on the CPU only; the cache is on " << place.name()
                                 << " (copy it to the host, or use a press with CUDA kernels)");
    return any_view;
  }
};

/// `keys`, `values`: [batch, kv_heads, capacity, head_dim] with any (positive) strides. `stream`
/// (a cudaStream_t) orders the one-time reads of a CUDA cache's lengths and tables after the caller's work.
Cache make_strided_cache(Array keys, Array values, Array lengths, std::optional<Array> positions, std::uintptr_t stream);

/// `k_pool`, `v_pool`: [num_pages, heads_in_page, page_size, head_dim], channels contiguous, any
/// page, head and token strides (NHD and HND are two stride orders of this shape; heads_in_page is 1
/// for a per-head table). `block_table`: int32 [batch, pages_per_row] (per sequence) or
/// [batch, kv_heads, pages_per_row] (per head), innermost stride 1.
/// `v_block_table`: V's table when V lives in other pages of the same pool (`k_pool` is `v_pool`).
Cache make_paged_cache(Array k_pool, Array v_pool, Array block_table, Array lengths, std::int64_t kv_heads,
                       std::int64_t capacity, std::optional<Array> positions, std::optional<Array> v_block_table,
                       std::uintptr_t stream);

/// \brief What the caller hands a press; tensors must have the cache's storage type.
struct PyObservation {
  std::optional<Array> queries, window_queries, attention, output_projection;
  std::optional<Array> stats_mean, stats_covariance, query_offsets, sequence_positions, hidden_states;
  std::shared_ptr<RotaryEmbedding const> rope;
  int layer_idx = 0;
  int num_layers = 1;
  std::int64_t position = 0;
  std::int64_t chunk_length = 0;
  std::optional<PyShard> shard;  // this rank's kv heads of a layer split over a group

  /// The library's observation over these tensors, which must live where the cache does (`place`).
  template <class T>
  [[nodiscard]] Observation<T> build(CacheExtents const& e, Place const& place = Place{}) const;
};

/// \brief A press, its name, and the workspace reused by every call (grown, never shrunk): host
/// memory for the CPU path, device memory for the CUDA path (made at the first CUDA call).
struct NativePress {
  std::shared_ptr<AnyPress const> any;
  std::vector<std::byte> workspace;
  std::size_t allocations = 0;  // times the workspace grew
  std::shared_ptr<DeviceWorkspace> device_workspace;
  std::unique_ptr<std::mutex> mutex = std::make_unique<std::mutex>();

  explicit NativePress(std::shared_ptr<AnyPress const> a) : any(std::move(a)) {}

  /// The press the CUDA device runs; throws, naming the press and the cache's `place`, for a press
  /// without CUDA kernels.
  [[nodiscard]] CudaPress const& cuda_press(Place const& place) const {
    if (any->cuda() == nullptr) {
      std::string names;
      for (char const* n : kCudaPressNames) names += names.empty() ? n : std::string(", ") + n;
      KVC_THROW(any->name() << " has no CUDA kernels and the cache is on " << place.name() << "; on CUDA tensors use "
                            << names << " (AdaKVPress around one of the others); every press runs on CPU tensors");
    }
    return *any->cuda();
  }

  /// The device workspace, made at the first CUDA call.
  DeviceWorkspace& device() {
    if (!device_workspace) device_workspace = std::make_shared<DeviceWorkspace>();
    return *device_workspace;
  }

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
Observation<T> PyObservation::build(CacheExtents const& e, Place const& place) const {
  Observation<T> o;
  o.layer_idx = layer_idx;
  o.num_layers = num_layers;
  o.position = position;
  o.chunk_length = chunk_length;
  o.rope = rope.get();
  if (shard) o.shard = shard->native();
  if (queries) o.queries = tensor4<T>(*queries, "observation.queries", place);
  if (window_queries) o.window_queries = tensor4<T>(*window_queries, "observation.window_queries", place);
  if (attention) o.attention = tensor4<T>(*attention, "observation.attention", place);
  if (hidden_states) o.hidden_states = tensor4<T>(*hidden_states, "observation.hidden_states", place);
  if (output_projection) {
    Array const& w = *output_projection;
    T const* data = typed_data<T>(w, "observation.output_projection", place);
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
    o.stats.mean = contiguous_data<float>(m, q_heads * e.head_dim, "observation.stats_mean", place);
    o.stats.q_heads = q_heads;
    if (stats_covariance)
      o.stats.covariance = contiguous_data<float>(*stats_covariance, q_heads * e.head_dim * e.head_dim,
                                                  "observation.stats_covariance", place);
  } else {
    KVC_CHECK(!stats_covariance, "observation.stats_covariance needs observation.stats_mean");
  }
  if (query_offsets) o.query_offsets = contiguous_data<std::int32_t>(*query_offsets, e.batch + 1, "observation.query_offsets", place);
  if (sequence_positions) {
    KVC_CHECK(query_offsets, "observation.sequence_positions needs observation.query_offsets");
    o.sequence_positions = contiguous_data<std::int64_t>(*sequence_positions, e.batch, "observation.sequence_positions",
                                                           place);
  }
  return o;
}

/// Runs `body` (which builds the library's observation from `obs` and calls the library) under the
/// tensor-parallel protocol of `obs.shard` (`dist/shard_protocol.hpp`): an error on this rank before
/// the library's own handshake (an observation tensor of the wrong dtype, a decoding press's state)
/// still reaches the group, which then raises on every rank instead of waiting for this one.
template <class T, class L, class Body>
void on_shard(PyObservation const& obs, KVCacheView<T, L> const& view, Body&& body) {
  Observation<T> o;
  o.layer_idx = obs.layer_idx;
  if (obs.shard) o.shard = obs.shard->native();
  kvcompress::detail::shard_call(o, view, std::forward<Body>(body));
}

}  // namespace kvcompress::python
