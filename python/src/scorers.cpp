/// \file
/// \brief Scorer presses that read the cache, queries or statistics (no attention weights).

#include <nanobind/stl/optional.h>

#include "bindings.hpp"
#include "press_factory.hpp"

namespace kvcompress::python {

void bind_scorers(nb::module_& m) {
  m.def("expected_attention", [](double r, std::int64_t n_future_positions, std::int64_t n_sink, bool use_covariance,
                                 bool use_vnorm, float epsilon) {
    ExpectedAttentionPress p;
    p.compression_ratio = r;
    p.n_future_positions = n_future_positions;
    p.n_sink = n_sink;
    p.use_covariance = use_covariance;
    p.use_vnorm = use_vnorm;
    p.epsilon = epsilon;
    return native(p, "ExpectedAttentionPress");
  });
  m.def("expected_attention_stats", [](double r, std::int64_t n_future_positions, std::int64_t n_sink,
                                       bool use_covariance, bool use_vnorm, float epsilon) {
    ExpectedAttentionStatsPress p;
    p.compression_ratio = r;
    p.n_future_positions = n_future_positions;
    p.n_sink = n_sink;
    p.use_covariance = use_covariance;
    p.use_vnorm = use_vnorm;
    p.epsilon = epsilon;
    return native(p, "ExpectedAttentionStatsPress");
  });
  m.def("knorm", [](double r) { return native(KnormPress{r}, "KnormPress"); });
  m.def("key_diff", [](double r) { return native(KeyDiffPress{r}, "KeyDiffPress"); });
  m.def("streaming_llm", [](double r, std::int64_t n_sink) {
    StreamingLLMPress p;
    p.compression_ratio = r;
    p.n_sink = n_sink;
    return native(p, "StreamingLLMPress");
  });
  m.def("lag_kv", [](double r, std::int64_t n_sink, std::int64_t lag_size, bool cross_scoring) {
    LagKVPress p;
    p.compression_ratio = r;
    p.n_sink = n_sink;
    p.lag_size = lag_size;
    p.cross_scoring = cross_scoring;
    return native(p, "LagKVPress");
  });
  m.def("cap", [](double r, double tau, std::int64_t n_future_positions, std::int64_t n_sink, double epsilon) {
    CapPress p;
    p.compression_ratio = r;
    p.tau = tau;
    p.n_future_positions = n_future_positions;
    p.n_sink = n_sink;
    p.epsilon = epsilon;
    return native(p, "CapPress");
  });
  m.def("random", [](double r, std::optional<std::uint64_t> seed) {
    RandomPress p;
    p.compression_ratio = r;
    p.seed = seed;
    return native(p, "RandomPress");
  });
}

}  // namespace kvcompress::python
