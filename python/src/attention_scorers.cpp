/// \file
/// \brief Presses that read window queries or attention weights (FINCH: its question's window).

#include <nanobind/stl/optional.h>

#include "bindings.hpp"
#include "press_factory.hpp"

namespace kvcompress::python {

void bind_attention_scorers(nb::module_& m) {
  m.def("snap_kv", [](double r, std::int64_t window_size, std::int64_t kernel_size) {
    SnapKVPress p;
    p.compression_ratio = r;
    p.window_size = window_size;
    p.kernel_size = kernel_size;
    return native(p, "SnapKVPress");
  });
  m.def("pyramid_kv", [](double r, std::int64_t window_size, std::int64_t kernel_size, double beta) {
    PyramidKVPress p;
    p.compression_ratio = r;
    p.window_size = window_size;
    p.kernel_size = kernel_size;
    p.beta = beta;
    return native(p, "PyramidKVPress");
  });
  m.def("tova", [](double r) { return native(TOVAPress{r}, "TOVAPress"); });
  m.def("observed_attention", [](double r) { return native(ObservedAttentionPress{r}, "ObservedAttentionPress"); });
  m.def("non_causal_attn", [](double r, std::int64_t chunk_size) {
    NonCausalAttnPress p;
    p.compression_ratio = r;
    p.chunk_size = chunk_size;
    return native(p, "NonCausalAttnPress");
  });
  m.def("finch", [](double r, std::optional<std::int64_t> chunk_length, bool normalize_scores, bool rerotate_keys,
                    std::optional<std::int64_t> window_size) {
    FinchPress p;
    p.compression_ratio = r;
    p.chunk_length = chunk_length.value_or(0);
    p.normalize_scores = normalize_scores;
    p.rerotate_keys = rerotate_keys;
    p.window_size = window_size.value_or(0);
    return native(p, "FinchPress");
  });
  m.def("sim_layer_kv", [](double lazy_threshold, std::int64_t n_last, std::int64_t n_recent, std::int64_t n_initial) {
    SimLayerKVPress p;
    p.lazy_threshold = lazy_threshold;
    p.n_last = n_last;
    p.n_recent = n_recent;
    p.n_initial = n_initial;
    return native(p, "SimLayerKVPress");
  });
}

}  // namespace kvcompress::python
