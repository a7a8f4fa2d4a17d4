/// \file
/// \brief Scorer presses that read an array the caller supplies: LeverageScore's and Compactor's
/// sketch, CUR's projection (kvpress draws them from torch's generator at each call), QFilter's
/// learned filters and KVzap's surrogate weights (kvpress downloads them). The press reads the array through a pointer; the
/// binding holds it and checks its shape against each call's cache.

#include <limits>
#include <optional>
#include <string>
#include <vector>

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

KVzapModelType kvzap_type(std::string const& name) {
  if (name == "linear") return KVzapModelType::kLinear;
  if (name == "mlp") return KVzapModelType::kMlp;
  KVC_THROW("KVzapPress model_type must be linear or mlp, got '" << name << "'");
}

std::int64_t extent(FloatArray<2> const& a, std::size_t i) { return static_cast<std::int64_t>(a.array->shape(i)); }
std::int64_t extent(FloatArray<1> const& a) { return static_cast<std::int64_t>(a.array->shape(0)); }

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
  // One layer's surrogate in nn.Linear's layout: linear w1 [kv_heads, hidden], b1 [kv_heads]; mlp
  // w1 [hidden_dim, hidden], b1 [hidden_dim], w2 [kv_heads, hidden_dim], b2 [kv_heads]. The press
  // checks the pointers it needs and the kv heads against the cache; the shapes' agreement with each
  // other is checked here.
  m.def("kvzap", [](double r, std::string const& model_type, std::optional<Array> w1, std::optional<Array> b1,
                    std::optional<Array> w2, std::optional<Array> b2) {
    FloatArray<2> const a1{std::move(w1), "w1", {"rows", "hidden_size"}}, a2{std::move(w2), "w2", {"kv_heads", "hidden_dim"}};
    FloatArray<1> const c1{std::move(b1), "b1", {"rows"}}, c2{std::move(b2), "b2", {"kv_heads"}};
    KVzapPress p;
    p.compression_ratio = r;
    p.model_type = kvzap_type(model_type);
    p.weights.w1 = a1.data();
    p.weights.b1 = c1.data();
    p.weights.w2 = a2.data();
    p.weights.b2 = c2.data();
    if (a1.array) {
      p.weights.hidden_size = extent(a1, 1);
      bool const mlp = p.model_type == KVzapModelType::kMlp;
      p.weights.hidden_dim = mlp ? extent(a1, 0) : 0;
      p.weights.kv_heads = mlp ? (a2.array ? extent(a2, 0) : 0) : extent(a1, 0);
      KVC_CHECK(!c1.array || extent(c1) == extent(a1, 0), "b1 has " << extent(c1) << " entries, w1 " << extent(a1, 0) << " rows");
      KVC_CHECK(!mlp || !a2.array || extent(a2, 1) == extent(a1, 0),
                "w2 has " << extent(a2, 1) << " columns, w1 " << extent(a1, 0) << " rows (the mlp's hidden_dim)");
      KVC_CHECK(!c2.array || !a2.array || extent(c2) == extent(a2, 0),
                "b2 has " << extent(c2) << " entries, w2 " << extent(a2, 0) << " rows");
    }
    auto owners = std::make_shared<std::vector<std::shared_ptr<void const>> const>(
        std::vector<std::shared_ptr<void const>>{a1.owner(), c1.owner(), a2.owner(), c2.owner()});
    return native(p, "KVzapPress", Borrowed{owners, {}});
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
