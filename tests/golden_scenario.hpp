#pragma once
// A golden scenario written by tools/golden/generate.py (kvpress's inputs for one layer) and the
// kvcompress press of each kvpress press entry ({"press", "params", "uses"}).

#include <memory>
#include <string>
#include <vector>

#include "golden_fixture.hpp"
#include "kvcompress/kvcompress.hpp"

namespace kvc_test {

using namespace kvcompress;
using nlohmann::json;

inline std::string const kGoldenDir = KVC_GOLDEN_DIR;
inline RopeConfig rope_config_from(json const& r, int head_dim) {
  RopeConfig c;
  std::string const type = r.at("rope_type").get<std::string>();
  if (type == "default")
    c.type = RopeType::kDefault;
  else if (type == "linear")
    c.type = RopeType::kLinear;
  else if (type == "dynamic")
    c.type = RopeType::kDynamic;
  else if (type == "llama3")
    c.type = RopeType::kLlama3;
  else if (type == "yarn")
    c.type = RopeType::kYarn;
  else
    KVC_THROW("unknown rope_type " << type);
  c.head_dim = head_dim;
  c.theta = r.at("rope_theta").get<double>();
  c.max_position_embeddings = r.at("max_position_embeddings").get<std::int64_t>();
  if (r.contains("factor")) c.factor = r.at("factor").get<double>();
  if (r.contains("low_freq_factor")) c.low_freq_factor = r.at("low_freq_factor").get<double>();
  if (r.contains("high_freq_factor")) c.high_freq_factor = r.at("high_freq_factor").get<double>();
  if (r.contains("original_max_position_embeddings"))
    c.original_max_position_embeddings = r.at("original_max_position_embeddings").get<std::int64_t>();
  return c;
}

struct Scenario {
  std::string dir;
  json meta;
  std::int64_t batch, q_heads, kv_heads, head_dim, n;
  kvc_test::LoadedTensor<float> keys, values;

  explicit Scenario(std::string const& name)
      : dir(kGoldenDir + "/" + name), meta(kvc_test::load_json(dir + "/scenario.json")) {
    batch = meta.at("batch");
    q_heads = meta.at("q_heads");
    kv_heads = meta.at("kv_heads");
    head_dim = meta.at("head_dim");
    n = meta.at("seq_len");
    keys = tensor("keys");
    values = tensor("values");
  }
  [[nodiscard]] kvc_test::LoadedTensor<float> tensor(std::string const& name) const {
    return kvc_test::load_tensor<float>(dir, meta.at("tensors").at(name));
  }
};

inline std::vector<std::string> scenario_names() {
  auto const index = kvc_test::load_json(kGoldenDir + "/index.json");
  return index.at("scenarios").get<std::vector<std::string>>();
}

/// The self-contained scenarios of the presses added later (tests/golden/more_presses), as paths
/// relative to the golden directory.
inline std::vector<std::string> more_scenario_names() {
  auto const index = kvc_test::load_json(kGoldenDir + "/more_presses/index.json");
  std::vector<std::string> names;
  for (auto const& n : index.at("scenarios")) names.push_back("more_presses/" + n.get<std::string>());
  return names;
}

// What a case hands over: the observation and the tensors it points into.
struct CaseInputs {
  Observation<float> obs;
  kvc_test::LoadedTensor<float> queries, window, attention, mean, cov, filters_slice, sketch, projection;
  std::vector<float> filters;  // [num_layers, kv_heads, head_dim]
  std::unique_ptr<RotaryEmbedding> rope;
};

/// Fills `in.obs` with the scenario's layer, RoPE and the tensors the press entry `pc` uses
/// (several entries may fill the same inputs in turn).
inline void prepare_inputs(Scenario const& sc, json const& pc, CaseInputs& in) {
  in.obs.layer_idx = sc.meta.at("layer_idx");
  in.obs.num_layers = sc.meta.at("num_layers");
  in.rope = std::make_unique<RotaryEmbedding>(rope_config_from(sc.meta.at("rope"), static_cast<int>(sc.head_dim)));
  in.obs.rope = in.rope.get();
  auto const four = [](kvc_test::LoadedTensor<float> const& t) {
    return make_tensor4(t.data.data(), {t.shape[0], t.shape[1], t.shape[2], t.shape[3]});
  };
  for (auto const& u : pc.at("uses")) {
    std::string const use = u;
    if (use == "queries")
      in.obs.queries = four(in.queries = sc.tensor("queries"));
    else if (use == "window_queries" || use == "window_queries_1")
      in.obs.window_queries = four(in.window = sc.tensor(use));
    else if (use == "attention")
      in.obs.attention = four(in.attention = sc.tensor("attention"));
    else if (use == "sketch")  // the Gaussian sketch kvpress drew for this case
      in.sketch = kvc_test::load_tensor<float>(sc.dir, pc.at("sketch"));
    else if (use == "projection")  // CURPress's random projection, as kvpress drew it
      in.projection = kvc_test::load_tensor<float>(sc.dir, pc.at("projection"));
  }
}

/// The kvcompress press of a kvpress entry's parameters, for the presses that need no extra data.
template <class Press>
Press press_from(json const& p);
template <>
inline ExpectedAttentionPress press_from(json const& p) {
  return {p.at("compression_ratio"), p.at("n_future_positions"), p.at("n_sink"),
          p.at("use_covariance"),    p.at("use_vnorm"),          p.at("epsilon").get<float>()};
}
template <>
inline KnormPress press_from(json const& p) {
  return {p.at("compression_ratio")};
}
template <>
inline StreamingLLMPress press_from(json const& p) {
  return {p.at("compression_ratio"), p.at("n_sink")};
}
template <>
inline KeyDiffPress press_from(json const& p) {
  return {p.at("compression_ratio")};
}
template <>
inline SnapKVPress press_from(json const& p) {
  return {p.at("compression_ratio"), p.at("window_size"), p.at("kernel_size")};
}

// Runs one kvpress case: builds the press and the observation from the fixture, then hands both to
// `fn`, which scores and compresses. False for a press kvcompress does not implement.
template <class Fn>
bool with_press(Scenario const& sc, json const& pc, CaseInputs& in, Fn&& fn) {
  std::string const kind = pc.at("press");
  json const& p = pc.at("params");
  double const r = p.at("compression_ratio");
  prepare_inputs(sc, pc, in);
  if (kind == "ExpectedAttentionPress") {
    fn(press_from<ExpectedAttentionPress>(p));
  } else if (kind == "ExpectedAttentionStatsPress") {
    in.mean = sc.tensor("query_mean");
    in.cov = sc.tensor("query_cov");
    in.obs.stats = {in.mean.data.data(), in.cov.data.data(), in.mean.shape[0]};
    in.obs.chunk_length = sc.n;
    fn(ExpectedAttentionStatsPress{r, p.at("n_future_positions"), p.at("n_sink"), p.at("use_covariance"),
                                   p.at("use_vnorm"), p.at("epsilon").get<float>()});
  } else if (kind == "KnormPress") {
    fn(press_from<KnormPress>(p));
  } else if (kind == "StreamingLLMPress") {
    fn(press_from<StreamingLLMPress>(p));
  } else if (kind == "KeyDiffPress") {
    fn(press_from<KeyDiffPress>(p));
  } else if (kind == "LagKVPress") {
    fn(LagKVPress{r, p.at("n_sink"), p.at("lag_size"), p.at("cross_scoring")});
  } else if (kind == "QFilterPress") {
    in.filters_slice = sc.tensor("q_filters");  // this layer's [kv_heads, head_dim]
    in.filters.assign(static_cast<std::size_t>(in.obs.num_layers * sc.kv_heads * sc.head_dim), 0.0f);
    std::copy(in.filters_slice.data.begin(), in.filters_slice.data.end(),
              in.filters.begin() + in.obs.layer_idx * sc.kv_heads * sc.head_dim);
    fn(QFilterPress{r, in.filters.data(), in.obs.num_layers, static_cast<int>(sc.kv_heads),
                    static_cast<int>(sc.head_dim)});
  } else if (kind == "SnapKVPress") {
    fn(press_from<SnapKVPress>(p));
  } else if (kind == "PyramidKVPress") {
    fn(PyramidKVPress{r, p.at("window_size"), p.at("kernel_size"), p.at("beta")});
  } else if (kind == "TOVAPress") {
    fn(TOVAPress{r});
  } else if (kind == "ObservedAttentionPress") {
    fn(ObservedAttentionPress{r});
  } else if (kind == "LeverageScorePress") {
    in.obs.chunk_length = sc.n;
    fn(LeverageScorePress{r, p.at("sketch_dimension"), in.sketch.data.data()});
  } else if (kind == "NonCausalAttnPress") {
    fn(NonCausalAttnPress{r, p.at("chunk_size")});
  } else if (kind == "CURPress") {
    std::string const type = p.at("leverage_type");
    CurLeverage const lev = type == "key"     ? CurLeverage::kKey
                            : type == "value" ? CurLeverage::kValue
                            : type == "kv_avg" ? CurLeverage::kKvAvg
                                               : CurLeverage::kKvProduct;
    fn(CURPress{r, p.at("num_sinks"), lev, p.at("use_random_leverage"), p.at("use_local_approximation"),
                p.at("local_window_size"), in.projection.data.empty() ? nullptr : in.projection.data.data()});
  } else if (kind == "CapPress") {
    fn(CapPress{r, p.at("tau"), p.at("n_future_positions"), p.at("n_sink"), p.at("epsilon")});
  } else if (kind == "CompactorPress") {
    CompactorPress press{r, p.at("sink_size_start"), p.at("sink_size_end"), p.at("chunk_size"), p.at("sketch_dimension")};
    if (!p.at("blending").is_null()) press.blending = p.at("blending").get<double>();
    press.sketch = in.sketch.data.data();
    fn(press);
  } else {
    return false;
  }
  return true;
}

}  // namespace kvc_test
