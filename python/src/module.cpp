/// \file
/// \brief `kvcompress._core`: the library's exception, observation, rotary embedding and press
/// handle; the presses and caches are bound in their own files.

#include <nanobind/stl/optional.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>

#include "bindings.hpp"
#include "views.hpp"

namespace nb = nanobind;
using namespace kvcompress;
using namespace kvcompress::python;

namespace {

RopeType rope_type(std::string const& name) {
  if (name == "default") return RopeType::kDefault;
  if (name == "linear") return RopeType::kLinear;
  if (name == "dynamic") return RopeType::kDynamic;
  if (name == "llama3") return RopeType::kLlama3;
  if (name == "yarn") return RopeType::kYarn;
  KVC_THROW("rope_type must be default, linear, dynamic, llama3 or yarn, got '" << name << "'");
}

}  // namespace

NB_MODULE(_core, m) {
  m.doc() = "kvcompress's native core (C++): caches over DLPack tensors, presses, compress and score.";
  nb::exception<Error>(m, "Error", PyExc_ValueError);
  m.attr("cuda_enabled") = kCudaCompiled;
  nb::list cuda_presses;
  for (char const* name : kCudaPressNames) cuda_presses.append(name);
  m.attr("cuda_presses") = nb::tuple(cuda_presses);

  nb::class_<RotaryEmbedding>(m, "RotaryEmbedding",
                              "The model's rotary embedding (HF's default, linear, dynamic, llama3 and yarn).")
      .def("__init__",
           [](RotaryEmbedding* self, int head_dim, std::string const& rope_type_name, double theta, double factor,
              std::int64_t max_position_embeddings, std::int64_t original_max_position_embeddings,
              double low_freq_factor, double high_freq_factor, double beta_fast, double beta_slow,
              double attention_factor, double mscale, double mscale_all_dim, bool truncate) {
             RopeConfig c;
             c.type = rope_type(rope_type_name);
             c.theta = theta;
             c.head_dim = head_dim;
             c.factor = factor;
             c.max_position_embeddings = max_position_embeddings;
             c.original_max_position_embeddings = original_max_position_embeddings;
             c.low_freq_factor = low_freq_factor;
             c.high_freq_factor = high_freq_factor;
             c.beta_fast = beta_fast;
             c.beta_slow = beta_slow;
             c.attention_factor = attention_factor;
             c.mscale = mscale;
             c.mscale_all_dim = mscale_all_dim;
             c.truncate = truncate;
             new (self) RotaryEmbedding(c);
           },
           nb::arg("head_dim"), nb::arg("rope_type") = "default", nb::arg("theta") = 10000.0, nb::arg("factor") = 1.0,
           nb::arg("max_position_embeddings") = 2048, nb::arg("original_max_position_embeddings") = 0,
           nb::arg("low_freq_factor") = 1.0, nb::arg("high_freq_factor") = 4.0, nb::arg("beta_fast") = 32.0,
           nb::arg("beta_slow") = 1.0, nb::arg("attention_factor") = 0.0, nb::arg("mscale") = 0.0,
           nb::arg("mscale_all_dim") = 0.0, nb::arg("truncate") = true,
           "Validates the configuration (as transformers reads config.rope_parameters) and precomputes the "
           "inverse frequencies.")
      .def_prop_ro("head_dim", &RotaryEmbedding::head_dim)
      .def_prop_ro("attention_scaling", &RotaryEmbedding::attention_scaling);

  bind_communicator(m);

  nb::class_<PyObservation>(m, "Observation",
                            "What the engine hands a press at a compression point. Tensors must have the cache's "
                            "dtype and live on its device; shapes are checked by the press that reads them.")
      .def("__init__",
           [](PyObservation* self, std::optional<Array> queries, std::optional<Array> window_queries,
              std::optional<Array> attention, std::optional<Array> output_projection, std::optional<Array> stats_mean,
              std::optional<Array> stats_covariance, std::optional<Array> query_offsets,
              std::optional<Array> sequence_positions, std::optional<Array> hidden_states,
              std::shared_ptr<RotaryEmbedding const> rope, int layer_idx, int num_layers, std::int64_t position,
              std::int64_t chunk_length, std::optional<PyShard> shard) {
             new (self) PyObservation{queries,       window_queries,     attention,        output_projection,
                                      stats_mean,    stats_covariance,   query_offsets,    sequence_positions,
                                      hidden_states, std::move(rope),    layer_idx,        num_layers,
                                      position,      chunk_length,       std::move(shard)};
           },
           nb::kw_only(), nb::arg("queries") = nb::none(), nb::arg("window_queries") = nb::none(),
           nb::arg("attention") = nb::none(), nb::arg("output_projection") = nb::none(),
           nb::arg("stats_mean") = nb::none(), nb::arg("stats_covariance") = nb::none(),
           nb::arg("query_offsets") = nb::none(), nb::arg("sequence_positions") = nb::none(),
           nb::arg("hidden_states") = nb::none(), nb::arg("rope") = nb::none(), nb::arg("layer_idx") = 0, nb::arg("num_layers") = 1, nb::arg("position") = 0,
           nb::arg("chunk_length") = 0, nb::arg("shard") = nb::none(),
           "Every field is optional; a press that needs one it did not get raises kvcompress.Error naming it.")
      .def_rw("queries", &PyObservation::queries, "Pre-RoPE queries [batch, q_heads, q_len, head_dim].")
      .def_rw("window_queries", &PyObservation::window_queries,
              "Post-RoPE queries of the last window tokens [batch, q_heads, w, head_dim] (SnapKV, TOVA, PyramidKV).")
      .def_rw("attention", &PyObservation::attention, "Attention probabilities [batch, q_heads, q_len, n].")
      .def_rw("output_projection", &PyObservation::output_projection,
              "W_o (HF o_proj.weight) [hidden, q_heads * head_dim] (CriticalKV).")
      .def_rw("stats_mean", &PyObservation::stats_mean, "float32 [q_heads, head_dim] pre-RoPE query mean.")
      .def_rw("stats_covariance", &PyObservation::stats_covariance,
              "float32 [q_heads, head_dim, head_dim] pre-RoPE query covariance.")
      .def_rw("query_offsets", &PyObservation::query_offsets, "int32 [batch + 1] cu_seqlens of a ragged batch.")
      .def_rw("sequence_positions", &PyObservation::sequence_positions, "int64 [batch] first positions (ragged).")
      .def_rw("hidden_states", &PyObservation::hidden_states,
              "The attention input (after input_layernorm) [batch, 1, q_len, hidden_size] (KVzap).")
      .def_rw("rope", &PyObservation::rope, "The model's RotaryEmbedding (Expected Attention, key re-rotation).")
      .def_rw("layer_idx", &PyObservation::layer_idx)
      .def_rw("num_layers", &PyObservation::num_layers)
      .def_rw("position", &PyObservation::position, "Absolute position of the chunk's first token (0 at prefill).")
      .def_rw("chunk_length", &PyObservation::chunk_length, "Tokens in the chunk; 0 takes it from the queries.")
      .def_rw("shard", &PyObservation::shard,
              "The TensorParallelShard when the layer's kv heads are split over a process group (None: the whole "
              "layer is here).");

  nb::class_<NativePress>(m, "NativePress", "A press of the C++ library and the workspace it reuses.")
      .def_prop_ro("name", [](NativePress const& p) { return p.any->name(); })
      .def_prop_ro("is_scorer", [](NativePress const& p) { return p.any->scorer(); })
      .def_prop_ro("compression_ratio", [](NativePress const& p) { return p.any->compression_ratio(); })
      .def_prop_ro("workspace_allocations", [](NativePress const& p) { return p.allocations; },
                   "How many times the workspace grew (once per larger cache; never per call).")
      .def_prop_ro("workspace_capacity", [](NativePress const& p) { return p.workspace.size(); },
                   "Bytes of workspace held for the next call.")
      .def_prop_ro("cuda", [](NativePress const& p) { return p.any->cuda() != nullptr; },
                   "Whether the press has CUDA kernels (it then compresses CUDA tensors on their device).")
      .def_prop_ro("cuda_workspace_allocations",
                   [](NativePress const& p) { return p.device_workspace ? p.device_workspace->allocations() : 0; },
                   "How many times a device workspace was allocated (once per device and larger cache).")
      .def("cuda_workspace_capacity",
           [](NativePress const& p, int device) { return p.device_workspace ? p.device_workspace->bytes(device) : 0; },
           nb::arg("device"), "Bytes of device workspace held on CUDA device `device` for the next call.");

  bind_cache(m);
  bind_scorers(m);
  bind_attention_scorers(m);
  bind_caller_data_scorers(m);
  bind_wrappers(m);
  bind_chunk_wrappers(m);
  bind_budget_wrappers(m);
  bind_think(m);
  bind_kv_compose(m);
  bind_cross_layer(m);
  bind_dms(m);
  bind_decoding(m);
}
