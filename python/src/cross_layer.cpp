/// \file
/// \brief FastKVzip, KVzip and the eviction across layers they share: every layer is scored before
/// any is compressed, so they are bound as the library's calls: each layer's scores (FastKVzip's
/// gate; KVzip's reconstruction pass, chunk by chunk, and its sink protection), the count each layer
/// evicts, and each layer's eviction across its kv heads. FastKVzip's gate weights are the caller's
/// (kvpress downloads them); the binding holds them and checks their shapes. Each call takes an
/// optional `shard` (a `TensorParallelShard`): then the arrays and caches are this rank's kv heads of
/// every layer and the calls give what one process gives on the whole model (docs/distributed.md).

#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <type_traits>
#include <variant>
#include <vector>

#include <nanobind/stl/optional.h>
#include <nanobind/stl/vector.h>

#include "bindings.hpp"
#include "communicator.hpp"
#include "storage_dispatch.hpp"
#include "views.hpp"

namespace kvcompress::python {

namespace {

/// \brief One layer's gate over the caller's float32 arrays, held alive with it.
struct PyFastKVzipGate {
  FastKVzipGate gate;
  std::vector<Array> arrays;
};

std::int64_t dim(Array const& a, std::size_t i) { return static_cast<std::int64_t>(a.shape(i)); }

/// `a` as float32, C-contiguous, of exactly `shape` (named `what`).
float const* shaped(Array const& a, char const* what, std::vector<std::int64_t> const& shape) {
  KVC_CHECK(a.ndim() == shape.size(), what << " must have " << shape.size() << " dimensions, got " << a.ndim());
  std::int64_t count = 1;
  for (std::size_t i = 0; i < shape.size(); ++i) {
    KVC_CHECK(dim(a, i) == shape[i], what << " has shape[" << i << "] = " << dim(a, i) << ", expected " << shape[i]);
    count *= shape[i];
  }
  return contiguous_data<float>(a, count, what);
}

PyFastKVzipGate make_gate(Array q_proj_weight, Array q_proj_bias, Array k_proj_weight, Array q_norm_weight,
                          Array k_norm_weight, Array k_base, Array b, double norm_eps) {
  // kvpress's gate: k_base [kv_heads, 1, sink, dim], b [kv_heads, 1, group]; the sizes come from them.
  require_rank(k_base, 4, "k_base", "[kv_heads, 1, sink, dim]");
  require_rank(b, 3, "b", "[kv_heads, 1, group]");
  require_rank(q_proj_weight, 2, "q_proj_weight", "[kv_heads * group * dim, hidden_size]");
  FastKVzipGate g;
  g.kv_heads = dim(k_base, 0);
  g.sink = dim(k_base, 2);
  g.dim = dim(k_base, 3);
  g.group = dim(b, 2);
  g.hidden_size = dim(q_proj_weight, 1);
  g.norm_eps = norm_eps;
  std::int64_t const H = g.kv_heads, G = g.group, d = g.dim, D = g.hidden_size;
  g.k_base = shaped(k_base, "k_base", {H, 1, g.sink, d});
  g.bias = shaped(b, "b", {H, 1, G});
  g.q_proj_weight = shaped(q_proj_weight, "q_proj_weight", {H * G * d, D});
  g.q_proj_bias = shaped(q_proj_bias, "q_proj_bias", {H * G * d});
  g.k_proj_weight = shaped(k_proj_weight, "k_proj_weight", {H * d, D});
  g.q_norm_weight = shaped(q_norm_weight, "q_norm_weight", {d});
  g.k_norm_weight = shaped(k_norm_weight, "k_norm_weight", {d});
  return PyFastKVzipGate{g, {q_proj_weight, q_proj_bias, k_proj_weight, q_norm_weight, k_norm_weight, k_base, b}};
}

/// kv heads of the whole layer: the shard's, or this process's own.
std::int64_t layer_heads(std::optional<PyShard> const& shard, std::int64_t local) {
  return shard && shard->kv_heads > 0 ? shard->kv_heads : local;
}

/// `a`'s dimension i, or 0 (for a handshake record) when it has fewer.
std::int64_t dim_or_0(Array const& a, std::size_t i) { return a.ndim() > i ? static_cast<std::int64_t>(a.shape(i)) : 0; }

}  // namespace

void bind_cross_layer(nb::module_& m) {
  nb::class_<PyFastKVzipGate>(m, "FastKVzipGate", "One layer's FastKVzip gate over the caller's float32 arrays.")
      .def("__init__",
           [](PyFastKVzipGate* self, Array q_proj_weight, Array q_proj_bias, Array k_proj_weight, Array q_norm_weight,
              Array k_norm_weight, Array k_base, Array b, double norm_eps) {
             new (self) PyFastKVzipGate(make_gate(q_proj_weight, q_proj_bias, k_proj_weight, q_norm_weight,
                                                  k_norm_weight, k_base, b, norm_eps));
           },
           nb::arg("q_proj_weight"), nb::arg("q_proj_bias"), nb::arg("k_proj_weight"), nb::arg("q_norm_weight"),
           nb::arg("k_norm_weight"), nb::arg("k_base"), nb::arg("b"), nb::arg("norm_eps") = 1e-6,
           "kvpress's gate tensors (<layer>.q_proj.weight, .q_proj.bias, .k_proj.weight, .q_norm.weight, "
           ".k_norm.weight, .k_base [kv_heads, 1, sink, dim], .b [kv_heads, 1, group]).")
      .def("heads",
           [](PyFastKVzipGate const& g, std::int64_t first, std::int64_t count) {
             return PyFastKVzipGate{g.gate.heads(first, count), g.arrays};
           },
           nb::arg("first"), nb::arg("count"),
           "The gate of kv heads [first, first + count) alone (a tensor-parallel rank's), over the same arrays.")
      .def_prop_ro("kv_heads", [](PyFastKVzipGate const& g) { return g.gate.kv_heads; })
      .def_prop_ro("hidden_size", [](PyFastKVzipGate const& g) { return g.gate.hidden_size; });

  m.def(
      "fast_kvzip_score_layer",
      [](double r, bool layerwise, std::int64_t n_sink, std::int64_t window_size, double window_ratio,
         PyFastKVzipGate const& gate, Array const& hidden, Array out, int num_threads, std::optional<PyShard> shard) {
        FastKVzipPress const press{r, layerwise, n_sink, window_size, window_ratio};
        std::int64_t const local = gate.gate.kv_heads;
        on_shard(shard, {local, layer_heads(shard, local), 1, 0}, [&](TensorParallelShard const& s) {
          require_rank(hidden, 4, "hidden", "[1, 1, n, hidden_size]");
          float* scores = contiguous_data<float>(out, local * dim(hidden, 2), "out");
          by_storage(storage_of(hidden, "hidden"), [&](auto t) {
            using T = decltype(t);
            Tensor4<T> const x = tensor4<T>(hidden, "hidden");
            nb::gil_scoped_release release;
            press.score_layer(CpuDevice{num_threads}, gate.gate, x, scores, s);
          });
        });
      },
      nb::arg("compression_ratio"), nb::arg("layerwise"), nb::arg("n_sink"), nb::arg("window_size"),
      nb::arg("window_ratio"), nb::arg("gate"), nb::arg("hidden"), nb::arg("out"), nb::arg("num_threads") = 0,
      nb::arg("shard") = nb::none(),
      "One layer's gate scores into out, float32 [kv_heads, n], from hidden [1, 1, n, hidden_size]; with shard, "
      "gate holds this rank's kv heads (FastKVzipGate.heads).");
  m.def(
      "kvzip_score_chunk",
      [](double r, bool layerwise, std::int64_t n_sink, bool kvzip_plus_normalization, std::int64_t chunk_size,
         PyObservation const& obs, Cache const& cache, std::int64_t context_length, std::int64_t start, std::int64_t end,
         Array out, int num_threads) {
        KVzipPress const press{r, layerwise, n_sink, kvzip_plus_normalization, chunk_size};
        CacheExtents const& e = cache.extents();
        on_shard(obs.shard, {e.kv_heads, layer_heads(obs.shard, e.kv_heads), e.batch, obs.layer_idx}, [&](TensorParallelShard const&) {
          KVC_CHECK(context_length > 0, "context_length must be positive, got " << context_length);
          float* scores = contiguous_data<float>(out, e.kv_heads * context_length, "out");
          std::visit(
              [&](auto const& view) {
                using T = typename std::decay_t<decltype(view)>::value_type;
                Observation<T> const o = obs.build<T>(view.extents);
                nb::gil_scoped_release release;
                press.score_chunk(CpuDevice{num_threads}, o, view, context_length, start, end, scores);
              },
              cache.host_view("KVzipPress"));
        });
      },
      nb::arg("compression_ratio"), nb::arg("layerwise"), nb::arg("n_sink"), nb::arg("kvzip_plus_normalization"),
      nb::arg("chunk_size"), nb::arg("observation"), nb::arg("cache"), nb::arg("context_length"), nb::arg("start"),
      nb::arg("end"), nb::arg("out"), nb::arg("num_threads") = 0,
      "Scores chunk [start, end) of one layer into out [kv_heads, context_length] from its reconstruction pass: "
      "observation.queries (pre-RoPE, [1, q_heads, q, head_dim]), rope, position (the context length); the "
      "batch-1 cache holds the context's entries, then the pass's q own.");
  m.def(
      "kvzip_protect_sinks",
      [](std::int64_t n_sink, Array scores, std::optional<PyShard> shard) {
        KVzipPress press;
        press.n_sink = n_sink;
        std::int64_t const local = dim_or_0(scores, 1);
        on_shard(shard, {local, layer_heads(shard, local), 1, dim_or_0(scores, 0)}, [&](TensorParallelShard const& s) {
          require_rank(scores, 3, "scores", "[layers, kv_heads, context_length]");
          std::int64_t const layers = dim(scores, 0), ctx = dim(scores, 2);
          KVC_CHECK(layers <= std::numeric_limits<int>::max(), "scores has " << layers << " layers, beyond an int");
          float* data = contiguous_data<float>(scores, layers * local * ctx, "scores");
          if (s.split())
            press.protect_sinks(data, static_cast<int>(layers), local, ctx, s);
          else
            press.protect_sinks(data, layers * local, ctx);
        });
      },
      nb::arg("n_sink"), nb::arg("scores"), nb::arg("shard") = nb::none(),
      "kvpress's sink protection, in place: the first n_sink entries of every layer and head get the maximum + 1 "
      "(with shard: the maximum over every rank's scores).");
  m.def(
      "cross_layer_pruned_counts",
      [](Array const& scores, double ratio, bool layerwise, std::optional<PyShard> shard) {
        std::int64_t const local = dim_or_0(scores, 1);
        std::vector<std::int64_t> pruned;
        on_shard(shard, {local, layer_heads(shard, local), 1, dim_or_0(scores, 0)}, [&](TensorParallelShard const& sh) {
          require_rank(scores, 3, "scores", "[layers, kv_heads, n]");
          auto const layers = dim(scores, 0), n = dim(scores, 2);
          KVC_CHECK(layers <= std::numeric_limits<int>::max(), "scores has " << layers << " layers, beyond an int");
          float const* s = contiguous_data<float>(scores, layers * local * n, "scores");
          pruned.resize(static_cast<std::size_t>(layers));
          nb::gil_scoped_release release;
          if (sh.split())
            cross_layer_pruned_counts(s, static_cast<int>(layers), local, n, ratio, layerwise, pruned.data(), sh);
          else
            cross_layer_pruned_counts(s, static_cast<int>(layers), local * n, ratio, layerwise, pruned.data());
        });
        return pruned;
      },
      nb::arg("scores"), nb::arg("compression_ratio"), nb::arg("layerwise"), nb::arg("shard") = nb::none(),
      "Entries each layer evicts, from every layer's scores [layers, kv_heads, n] (batch 1); with shard, this "
      "rank's kv heads of every layer, and the counts are the whole model's.");
  m.def(
      "evict_lowest_across_heads",
      [](Cache const& cache, Array const& scores, std::int64_t n_pruned, int num_threads, std::optional<PyShard> shard) {
        CacheExtents const& e = cache.extents();
        on_shard(shard, {e.kv_heads, layer_heads(shard, e.kv_heads), e.batch, 0}, [&](TensorParallelShard const& sh) {
          float const* s = contiguous_data<float>(scores, e.kv_heads * e.capacity, "scores");
          std::visit(
              [&](auto const& view) {
                CpuDevice const dev{num_threads};
                std::vector<std::byte> scratch(evict_lowest_across_heads_workspace_bytes(dev, view, sh));
                nb::gil_scoped_release release;
                evict_lowest_across_heads(dev, view, s, n_pruned, Workspace(scratch.data(), scratch.size()), sh);
              },
              cache.host_view("FastKVzipPress / KVzipPress eviction"));
        });
      },
      nb::arg("cache"), nb::arg("scores"), nb::arg("n_pruned"), nb::arg("num_threads") = 0, nb::arg("shard") = nb::none(),
      "Evicts the layer's n_pruned lowest-scoring entries over all its kv heads (batch 1), in place; "
      "scores [kv_heads, capacity]. With shard: the cache holds this rank's kv heads, n_pruned is the whole "
      "layer's and the entries evicted are those one process evicts from the whole layer.");
}

}  // namespace kvcompress::python
