// Every press against kvpress 0.5.5 itself: inputs, scores and kept index sets captured inside
// kvpress's own hooks by tools/golden/generate.py on small random-weight Llama (GQA 4:1, llama3 RoPE)
// and Qwen3 (q_norm/k_norm) models. Scores must agree to fp32 relative 1e-4; the kept set of every
// head must be identical, except where kvpress's two scores at the cut are closer than that
// tolerance (a tie: then ours must still be a valid top-n_kept of kvpress's scores). Ties are counted
// and reported.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <set>
#include <string>

#include "golden_fixture.hpp"
#include "kvcompress/kvcompress.hpp"

using namespace kvcompress;
using nlohmann::json;

namespace {

std::string const kGoldenDir = KVC_GOLDEN_DIR;
constexpr double kRelTol = 1e-4;

RopeConfig rope_config_from(json const& r, int head_dim) {
  RopeConfig c;
  std::string const type = r.at("rope_type").get<std::string>();
  if (type == "default") c.type = RopeType::kDefault;
  else if (type == "linear") c.type = RopeType::kLinear;
  else if (type == "dynamic") c.type = RopeType::kDynamic;
  else if (type == "llama3") c.type = RopeType::kLlama3;
  else if (type == "yarn") c.type = RopeType::kYarn;
  else KVC_THROW("unknown rope_type " << type);
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

  explicit Scenario(std::string const& name) : dir(kGoldenDir + "/" + name), meta(kvc_test::load_json(dir + "/scenario.json")) {
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

std::vector<std::string> scenario_names() {
  auto const index = kvc_test::load_json(kGoldenDir + "/index.json");
  return index.at("scenarios").get<std::vector<std::string>>();
}

// Runs one kvpress case: builds the press and the observation from the fixture, then hands both to
// `check`, which scores and compresses.
struct CaseInputs {
  Observation<float> obs;
  kvc_test::LoadedTensor<float> queries, window, attention, mean, cov, filters_slice;
  std::vector<float> filters;  // [num_layers, kv_heads, head_dim]
  std::unique_ptr<RotaryEmbedding> rope;
};

template <class Fn>
bool with_press(Scenario const& sc, json const& pc, CaseInputs& in, Fn&& fn) {
  std::string const kind = pc.at("press");
  json const& p = pc.at("params");
  double const r = p.at("compression_ratio");
  in.obs.layer_idx = sc.meta.at("layer_idx");
  in.obs.num_layers = sc.meta.at("num_layers");
  in.rope = std::make_unique<RotaryEmbedding>(rope_config_from(sc.meta.at("rope"), static_cast<int>(sc.head_dim)));
  in.obs.rope = in.rope.get();
  auto const four = [](kvc_test::LoadedTensor<float> const& t) {
    return make_tensor4(t.data.data(), {t.shape[0], t.shape[1], t.shape[2], t.shape[3]});
  };
  for (auto const& u : pc.at("uses")) {
    std::string const use = u;
    if (use == "queries") in.obs.queries = four(in.queries = sc.tensor("queries"));
    else if (use == "window_queries" || use == "window_queries_1") in.obs.window_queries = four(in.window = sc.tensor(use));
    else if (use == "attention") in.obs.attention = four(in.attention = sc.tensor("attention"));
  }
  if (kind == "ExpectedAttentionPress") {
    fn(ExpectedAttentionPress{r, p.at("n_future_positions"), p.at("n_sink"), p.at("use_covariance"),
                              p.at("use_vnorm"), p.at("epsilon").get<float>()});
  } else if (kind == "ExpectedAttentionStatsPress") {
    in.mean = sc.tensor("query_mean");
    in.cov = sc.tensor("query_cov");
    in.obs.stats = {in.mean.data.data(), in.cov.data.data(), in.mean.shape[0]};
    in.obs.chunk_length = sc.n;
    fn(ExpectedAttentionStatsPress{r, p.at("n_future_positions"), p.at("n_sink"), p.at("use_covariance"),
                                   p.at("use_vnorm"), p.at("epsilon").get<float>()});
  } else if (kind == "KnormPress") {
    fn(KnormPress{r});
  } else if (kind == "StreamingLLMPress") {
    fn(StreamingLLMPress{r, p.at("n_sink")});
  } else if (kind == "KeyDiffPress") {
    fn(KeyDiffPress{r});
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
    fn(SnapKVPress{r, p.at("window_size"), p.at("kernel_size")});
  } else if (kind == "PyramidKVPress") {
    fn(PyramidKVPress{r, p.at("window_size"), p.at("kernel_size"), p.at("beta")});
  } else if (kind == "TOVAPress") {
    fn(TOVAPress{r});
  } else if (kind == "ObservedAttentionPress") {
    fn(ObservedAttentionPress{r});
  } else {
    return false;  // a fixture for a press kvcompress does not implement yet
  }
  return true;
}

struct Tally {
  int cases = 0, heads = 0, tied_heads = 0;
  double max_rel = 0.0;
};

}  // namespace

TEST_CASE("every press matches kvpress 0.5.5: scores and kept sets", "[golden][press]") {
  Tally tally;
  std::set<std::string> skipped;
  for (auto const& name : scenario_names()) {
    Scenario const sc(name);
    for (auto const& pc : sc.meta.at("presses")) {
      std::string const case_name = pc.at("name");
      CAPTURE(name, case_name);
      auto const want_scores = kvc_test::load_tensor<float>(sc.dir, pc.at("scores"));
      auto const want_kept = kvc_test::load_tensor<std::int32_t>(sc.dir, pc.at("kept"));
      std::int64_t const n_kept = pc.at("n_kept");
      CaseInputs in;
      bool const known = with_press(sc, pc, in, [&](auto const& press) {
        ++tally.cases;
        std::vector<float> k = sc.keys.data, v = sc.values.data;
        CacheExtents const e{sc.batch, sc.kv_heads, sc.n, sc.head_dim};
        auto const layout = make_strided_layout(e, {Axis::kBatch, Axis::kHead, Axis::kSeq, Axis::kDim});
        std::vector<std::int32_t> lengths(static_cast<std::size_t>(sc.batch * sc.kv_heads), static_cast<std::int32_t>(sc.n));
        std::vector<std::int32_t> positions(static_cast<std::size_t>(sc.batch * sc.kv_heads * sc.n));
        for (std::size_t i = 0; i < positions.size(); ++i) positions[i] = static_cast<std::int32_t>(i % sc.n);
        auto const cache = make_cache_view(k.data(), v.data(), e, layout, lengths.data(), positions.data());

        auto const got = score(cpu, press, in.obs, cache);
        double scale = 0.0;
        for (float x : want_scores.data) scale = std::max(scale, double(std::fabs(x)));
        for (std::size_t i = 0; i < got.size(); ++i) {
          double const err = std::fabs(double(got[i]) - want_scores.data[i]);
          // relative 1e-4, with an absolute floor of 1e-6 of the largest score for values near 0
          double const tol = kRelTol * std::max(double(std::fabs(want_scores.data[i])), 1e-2 * scale);
          if (err > tol) FAIL_CHECK("score " << i << ": kvcompress " << got[i] << ", kvpress " << want_scores.data[i]);
          tally.max_rel = std::max(tally.max_rel, err / std::max(double(std::fabs(want_scores.data[i])), 1e-2 * scale));
        }

        compress(cpu, press, in.obs, cache);
        for (std::int64_t row = 0; row < sc.batch * sc.kv_heads; ++row) {
          ++tally.heads;
          CAPTURE(row);
          REQUIRE(lengths[row] == n_kept);
          std::set<int> ours(positions.begin() + row * sc.n, positions.begin() + row * sc.n + n_kept);
          std::set<int> theirs(want_kept.data.begin() + row * n_kept, want_kept.data.begin() + (row + 1) * n_kept);
          REQUIRE(ours.size() == static_cast<std::size_t>(n_kept));
          // kvpress's cut: its n_kept-th best and the best dropped score of this head.
          float const* s = want_scores.data.data() + row * sc.n;
          float lowest_kept = INFINITY, best_dropped = -INFINITY;
          for (int i = 0; i < sc.n; ++i)
            (theirs.count(i) ? lowest_kept : best_dropped) =
                theirs.count(i) ? std::min(lowest_kept, s[i]) : std::max(best_dropped, s[i]);
          double const tol = kRelTol * std::max(std::fabs(double(lowest_kept)), 1e-2 * scale);
          if (double(lowest_kept) - double(best_dropped) > tol) {
            CHECK(ours == theirs);
          } else {
            ++tally.tied_heads;
            for (int i = 0; i < sc.n; ++i) {
              if (ours.count(i)) CHECK(double(s[i]) >= double(lowest_kept) - tol);
              else CHECK(double(s[i]) <= double(lowest_kept) + tol);
            }
          }
          // Kept entries hold the original rows, in position order.
          int j = 0;
          for (int pos : ours) {
            for (std::int64_t c = 0; c < sc.head_dim; ++c)
              REQUIRE(k[(row * sc.n + j) * sc.head_dim + c] == sc.keys.data[(row * sc.n + pos) * sc.head_dim + c]);
            ++j;
          }
        }
      });
      if (!known) skipped.insert(pc.at("press").get<std::string>());
    }
  }
  for (auto const& s : skipped) std::printf("golden presses: no kvcompress press yet for fixture %s\n", s.c_str());
  std::printf("golden presses: %d cases, %d heads, %d heads tied at the cut, max relative score error %.3g\n",
              tally.cases, tally.heads, tally.tied_heads, tally.max_rel);
  CHECK(tally.cases == 7 * 18);  // every scenario runs every press
}
