/// \file
/// \brief Scorer presses that read an array the caller supplies: LeverageScore's and Compactor's
/// sketch, CUR's projection (kvpress draws them from torch's generator at each call), QFilter's
/// learned filters (kvpress downloads them). The press reads the array through a pointer; the
/// binding holds it and checks its shape against each call's cache.

#include <limits>
#include <optional>
#include <string>

#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include "bindings.hpp"
#include "press_factory.hpp"

namespace kvcompress::python {

namespace {

using Sketch = FloatArray<4>;

Sketch sketch_array(std::optional<Array> a) {
  return Sketch{std::move(a), "sketch", {"batch", "kv_heads", "head_dim", "sketch_dimension"}};
}

/// The sketch is [batch, kv_heads, head_dim, sketch_dimension] for every call's cache.
Borrowed borrow_sketch(Sketch const& s, std::int64_t sketch_dimension) {
  return Borrowed{s.owner(), [s, sketch_dimension](CacheExtents const& e) {
                    s.check({e.batch, e.kv_heads, e.head_dim, sketch_dimension});
                  }};
}

CurLeverage cur_leverage(std::string const& name) {
  if (name == "key") return CurLeverage::kKey;
  if (name == "value") return CurLeverage::kValue;
  if (name == "kv_avg") return CurLeverage::kKvAvg;
  if (name == "kv_product") return CurLeverage::kKvProduct;
  KVC_THROW("CURPress leverage_type must be key, value, kv_avg or kv_product, got '" << name << "'");
}

}  // namespace

void bind_caller_data_scorers(nb::module_& m) {
  m.def("leverage_score", [](double r, std::int64_t sketch_dimension, std::optional<Array> sketch) {
    Sketch const s = sketch_array(std::move(sketch));
    LeverageScorePress p;
    p.compression_ratio = r;
    p.sketch_dimension = sketch_dimension;
    p.sketch = s.data();
    return native(p, "LeverageScorePress", borrow_sketch(s, sketch_dimension));
  });
  m.def("compactor", [](double r, std::int64_t sink_size_start, std::int64_t sink_size_end, std::int64_t chunk_size,
                        std::int64_t sketch_dimension, std::optional<double> blending, std::optional<Array> sketch) {
    Sketch const s = sketch_array(std::move(sketch));
    CompactorPress p;
    p.compression_ratio = r;
    p.sink_size_start = sink_size_start;
    p.sink_size_end = sink_size_end;
    p.chunk_size = chunk_size;
    p.sketch_dimension = sketch_dimension;
    p.blending = blending;
    p.sketch = s.data();
    return native(p, "CompactorPress", borrow_sketch(s, sketch_dimension));
  });
  m.def("cur", [](double r, std::int64_t num_sinks, std::string const& leverage_type, bool use_random_leverage,
                  bool use_local_approximation, std::int64_t local_window_size, std::optional<Array> projection) {
    FloatArray<2> const g{std::move(projection), "projection", {"head_dim", "columns"}};
    CURPress p;
    p.compression_ratio = r;
    p.num_sinks = num_sinks;
    p.leverage_type = cur_leverage(leverage_type);
    p.use_random_leverage = use_random_leverage;
    p.use_local_approximation = use_local_approximation;
    p.local_window_size = local_window_size;
    p.projection = g.data();
    return native(p, "CURPress", Borrowed{g.owner(), [g](CacheExtents const& e) {
                                            g.check({e.head_dim, CURPress::kProjectionDim});
                                          }});
  });
  m.def("q_filter", [](double r, std::optional<Array> q_filters) {
    // The filters' shape is the press's own: it checks it against the cache and the layer index.
    FloatArray<3> const f{std::move(q_filters), "q_filters", {"num_layers", "num_kv_heads", "head_dim"}};
    QFilterPress p;
    p.compression_ratio = r;
    p.filters = f.data();
    if (f.array) {
      for (std::size_t i = 0; i < 3; ++i)
        KVC_CHECK(f.array->shape(i) <= static_cast<std::size_t>(std::numeric_limits<int>::max()),
                  "q_filters has " << f.names[i] << " = " << f.array->shape(i) << ", beyond an int");
      p.num_layers = static_cast<int>(f.array->shape(0));
      p.num_kv_heads = static_cast<int>(f.array->shape(1));
      p.head_dim = static_cast<int>(f.array->shape(2));
    }
    return native(p, "QFilterPress", Borrowed{f.owner(), {}});
  });
}

}  // namespace kvcompress::python
