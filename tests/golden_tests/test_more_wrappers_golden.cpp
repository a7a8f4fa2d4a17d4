// The wrappers added after the more_presses scenarios (EntropyGatedChunkKV, LUKV, DuoAttention)
// against kvpress 0.5.5 itself: tools/golden/generate_more_wrappers.py ran each kvpress press's own
// `compress` on the scenarios' layer inputs (Llama GQA 4:1 with llama3 RoPE and batch 2, Qwen3 with
// q_norm/k_norm, Llama at n = 128), one sequence at a time, and recorded what it kept (or masked).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <set>
#include <string>
#include <vector>

#include "golden_scenario.hpp"
#include "kvcompress/kvcompress.hpp"
#include "kvcompress/press/lukv.hpp"
#include "kvcompress/press/duo_attention.hpp"
#include "kvcompress/press/merging.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using namespace kvcompress;
using nlohmann::json;
using kvc_test::Scenario;

namespace {

/// The scenario's cache as a fresh strided view (positions record the original slots).
struct GoldenCache {
  std::vector<float> k, v;
  std::vector<std::int32_t> lengths, positions;
  CacheExtents e;
  explicit GoldenCache(Scenario const& sc)
      : k(sc.keys.data),
        v(sc.values.data),
        lengths(static_cast<std::size_t>(sc.batch * sc.kv_heads), static_cast<std::int32_t>(sc.n)),
        positions(static_cast<std::size_t>(sc.batch * sc.kv_heads * sc.n)),
        e{sc.batch, sc.kv_heads, sc.n, sc.head_dim} {
    for (std::size_t i = 0; i < positions.size(); ++i) positions[i] = static_cast<std::int32_t>(i % static_cast<std::size_t>(sc.n));
  }
  /// Sequence b of the scenario alone, as a batch of one.
  GoldenCache(Scenario const& sc, std::int64_t b)
      : k(sc.keys.data.begin() + b * sc.kv_heads * sc.n * sc.head_dim,
          sc.keys.data.begin() + (b + 1) * sc.kv_heads * sc.n * sc.head_dim),
        v(sc.values.data.begin() + b * sc.kv_heads * sc.n * sc.head_dim,
          sc.values.data.begin() + (b + 1) * sc.kv_heads * sc.n * sc.head_dim),
        lengths(static_cast<std::size_t>(sc.kv_heads), static_cast<std::int32_t>(sc.n)),
        positions(static_cast<std::size_t>(sc.kv_heads * sc.n)),
        e{1, sc.kv_heads, sc.n, sc.head_dim} {
    for (std::size_t i = 0; i < positions.size(); ++i) positions[i] = static_cast<std::int32_t>(i % static_cast<std::size_t>(sc.n));
  }
  KVCacheView<float> view() {
    auto const layout = make_strided_layout(e, {Axis::kBatch, Axis::kHead, Axis::kSeq, Axis::kDim});
    return make_cache_view(k.data(), v.data(), e, layout, lengths.data(), positions.data());
  }
};

/// What an inner press entry ({"press", "params", "uses", ["window_queries"]}) reads.
struct InnerInputs {
  kvc_test::CaseInputs in;
  kvc_test::LoadedTensor<float> window;
  InnerInputs(Scenario const& sc, json const& pc) {
    kvc_test::prepare_inputs(sc, pc, in);
    if (pc.contains("window_queries")) {
      window = kvc_test::load_tensor<float>(sc.dir, pc.at("window_queries"));
      in.obs.window_queries =
          make_tensor4(window.data.data(), {window.shape[0], window.shape[1], window.shape[2], window.shape[3]});
    }
  }
};

/// Hands the kvcompress press of an inner entry to fn.
template <class Fn>
void with_inner(json const& pc, Fn&& fn) {
  std::string const kind = pc.at("press");
  json const& p = pc.at("params");
  using kvc_test::press_from;
  if (kind == "SnapKVPress") fn(press_from<SnapKVPress>(p));
  else if (kind == "KeyDiffPress") fn(press_from<KeyDiffPress>(p));
  else if (kind == "KnormPress") fn(press_from<KnormPress>(p));
  else if (kind == "ExpectedAttentionPress") fn(press_from<ExpectedAttentionPress>(p));
  else FAIL("no kvcompress press for inner fixture " << kind);
}

/// Inner scores against kvpress's [b, h, n]: relative 1e-4, with a floor of 1e-2 of the largest.
double check_scores(std::vector<float> const& got, kvc_test::LoadedTensor<float> const& want) {
  double scale = 0.0, max_rel = 0.0;
  for (float x : want.data) scale = std::max(scale, double(std::fabs(x)));
  REQUIRE(got.size() == want.data.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    double const denom = std::max(double(std::fabs(want.data[i])), 1e-2 * scale);
    double const rel = std::fabs(double(got[i]) - want.data[i]) / denom;
    if (rel > 1e-4) FAIL_CHECK("inner score " << i << ": kvcompress " << got[i] << ", kvpress " << want.data[i]);
    max_rel = std::max(max_rel, rel);
  }
  return max_rel;
}

/// Checks that each row of the compressed cache holds exactly the entries kvpress left unmasked
/// (kept_mask [b, h, n], 1 = kept), in position order, with their keys. Returns the distinct row lengths.
std::set<std::int32_t> check_kept_mask(Scenario const& sc, GoldenCache const& c,
                                       kvc_test::LoadedTensor<std::int32_t> const& want_kept) {
  std::set<std::int32_t> lengths;
  for (std::int64_t row = 0; row < sc.batch * sc.kv_heads; ++row) {
    CAPTURE(row);
    std::vector<std::int32_t> want;
    for (std::int32_t i = 0; i < sc.n; ++i)
      if (want_kept.data[static_cast<std::size_t>(row * sc.n + i)] != 0) want.push_back(i);
    std::int32_t const len = c.lengths[static_cast<std::size_t>(row)];
    lengths.insert(len);
    REQUIRE(static_cast<std::size_t>(len) == want.size());
    for (std::int32_t j = 0; j < len; ++j) {
      std::int32_t const src = want[static_cast<std::size_t>(j)];
      CHECK(c.positions[static_cast<std::size_t>(row * sc.n + j)] == src);
      REQUIRE(c.k[static_cast<std::size_t>((row * sc.n + j) * sc.head_dim)] ==
              sc.keys.data[static_cast<std::size_t>((row * sc.n + src) * sc.head_dim)]);
    }
  }
  return lengths;
}

std::vector<json> wrapper_entries(Scenario const& sc, std::string const& press) {
  std::vector<json> out;
  json const meta = kvc_test::load_json(sc.dir + "/more_wrappers.json");  // named: a temporary's member would dangle
  for (auto const& w : meta.at("wrappers"))
    if (w.at("press") == press) out.push_back(w);
  return out;
}

}  // namespace

// kvpress chooses from batch element 0 and applies it to every sequence; each sequence here was run
// through kvpress alone, which is what kvcompress does per sequence.
TEST_CASE("EntropyGatedChunkKV matches kvpress 0.5.5: the kept tokens of every sequence", "[golden][press]") {
  int cases = 0, tied = 0;
  double max_rel = 0.0;
  for (auto const& name : kvc_test::more_scenario_names()) {
    Scenario const sc(name);
    for (auto const& w : wrapper_entries(sc, "EntropyGatedChunkKVPress")) {
      std::string const case_name = w.at("name");
      CAPTURE(name, case_name);
      json const& inner = w.at("presses").at(0);
      InnerInputs ii(sc, inner);
      auto const want_scores = kvc_test::load_tensor<float>(sc.dir, w.at("inner_scores"));
      auto const want_kept = kvc_test::load_tensor<std::int32_t>(sc.dir, w.at("kept"));  // [b, n_kept]
      std::int64_t const n_kept = w.at("n_kept");
      with_inner(inner, [&](auto const& press) {
        EntropyGatedChunkKVPress const wrapper{press, w.at("params").at("chunk_length").get<std::int64_t>(),
                                               w.at("params").at("low_entropy_chunk_length").get<std::int64_t>()};
        for (std::int64_t b = 0; b < sc.batch; ++b) {  // each sequence alone, as kvpress was run
          CAPTURE(b);
          GoldenCache c(sc, b);
          Observation<float> obs = ii.in.obs;
          Tensor4<float> const& wq = ii.in.obs.window_queries;
          if (!wq.empty()) obs.window_queries = make_tensor4(&wq(b, 0, 0, 0), {1, wq.shape[1], wq.shape[2], wq.shape[3]});
          auto const got = score(cpu, press, obs, c.view());
          kvc_test::LoadedTensor<float> want_b;
          want_b.data.assign(want_scores.data.begin() + b * sc.kv_heads * sc.n,
                             want_scores.data.begin() + (b + 1) * sc.kv_heads * sc.n);
          max_rel = std::max(max_rel, check_scores(got, want_b));
          compress(cpu, wrapper, obs, c.view());
          // kvpress's token scores (its inner scores summed over heads). Tokens of equal score (SnapKV's
          // window) are cut by torch.topk's tie-breaking: a kept set may then differ from kvpress's only by
          // tokens of the same score.
          std::vector<float> token(static_cast<std::size_t>(sc.n));
          for (std::int64_t i = 0; i < sc.n; ++i) {
            double sum = 0.0;
            for (std::int64_t h = 0; h < sc.kv_heads; ++h) sum += want_b.data[static_cast<std::size_t>(h * sc.n + i)];
            token[static_cast<std::size_t>(i)] = static_cast<float>(sum);
          }
          std::vector<float> ours, theirs;
          for (std::int64_t j = 0; j < n_kept; ++j) {
            theirs.push_back(token[static_cast<std::size_t>(want_kept.data[static_cast<std::size_t>(b * n_kept + j)])]);
            ours.push_back(token[static_cast<std::size_t>(c.positions[static_cast<std::size_t>(j)])]);
          }
          bool same = true;
          for (std::int64_t j = 0; j < n_kept; ++j)
            same = same && c.positions[static_cast<std::size_t>(j)] == want_kept.data[static_cast<std::size_t>(b * n_kept + j)];
          if (!same) {
            ++tied;
            std::sort(ours.begin(), ours.end());
            std::sort(theirs.begin(), theirs.end());
            for (std::size_t j = 0; j < ours.size(); ++j) CHECK(ours[j] == Approx(theirs[j]).epsilon(1e-5));
          }
          for (std::int64_t h = 0; h < sc.kv_heads; ++h) {
            CAPTURE(h);
            REQUIRE(c.lengths[static_cast<std::size_t>(h)] == n_kept);
            for (std::int64_t j = 0; j < n_kept; ++j) {
              std::int32_t const src = c.positions[static_cast<std::size_t>(h * sc.n + j)];
              REQUIRE(src == c.positions[static_cast<std::size_t>(j)]);  // the same tokens in every head
              for (std::int64_t d = 0; d < sc.head_dim; d += 7)
                REQUIRE(c.v[static_cast<std::size_t>((h * sc.n + j) * sc.head_dim + d)] ==
                        sc.values.data[static_cast<std::size_t>(((b * sc.kv_heads + h) * sc.n + src) * sc.head_dim + d)]);
            }
          }
        }
      });
      ++cases;
    }
  }
  std::printf("golden EntropyGatedChunkKV: %d cases, %d sequences cut among tokens of equal score, max relative inner "
              "score error %.3g\n", cases, tied, max_rel);
  CHECK(cases == 3 * 3);
  CHECK(tied <= 2);
}

// LUKV with a random budget curve [99, layers, kv_heads] (kvpress downloads one for a model it knows):
// kvpress masks what a head loses; here each head keeps exactly the entries kvpress left unmasked.
TEST_CASE("LUKV matches kvpress 0.5.5: per-head budgets and kept sets", "[golden][press]") {
  int cases = 0, uneven = 0;
  double max_rel = 0.0;
  for (auto const& name : kvc_test::more_scenario_names()) {
    Scenario const sc(name);
    json const meta = kvc_test::load_json(sc.dir + "/more_wrappers.json");
    auto const curve = kvc_test::load_tensor<float>(sc.dir, meta.at("tensors").at("budget_curve"));
    REQUIRE(curve.shape == std::vector<std::int64_t>{99, sc.meta.at("num_layers").get<std::int64_t>(), sc.kv_heads});
    for (auto const& w : wrapper_entries(sc, "LUKVPress")) {
      std::string const case_name = w.at("name");
      CAPTURE(name, case_name);
      json const& inner = w.at("presses").at(0);
      json const& p = w.at("params");
      InnerInputs ii(sc, inner);
      auto const want_scores = kvc_test::load_tensor<float>(sc.dir, w.at("inner_scores"));
      auto const want_kept = kvc_test::load_tensor<std::int32_t>(sc.dir, w.at("kept_mask"));  // [b, h, n]
      with_inner(inner, [&](auto const& inner_press) {
        GoldenCache c(sc);
        max_rel = std::max(max_rel, check_scores(score(cpu, inner_press, ii.in.obs, c.view()), want_scores));
        LUKVPress<std::decay_t<decltype(inner_press)>> press{inner_press, p.at("compression_ratio").get<double>(),
                                                              p.at("sink").get<std::int64_t>(),
                                                              p.at("window").get<std::int64_t>()};
        press.budget_curves = curve.data.data();
        press.num_layers = curve.shape[1];
        press.kv_heads = curve.shape[2];
        compress(cpu, press, ii.in.obs, c.view());
        auto const lengths = check_kept_mask(sc, c, want_kept);
        uneven += lengths.size() > 1;
      });
      ++cases;
    }
  }
  std::printf("golden LUKV: %d cases (%d with heads of different lengths), max relative inner score error %.3g\n",
              cases, uneven, max_rel);
  CHECK(cases == 3 * 3);
  CHECK(uneven >= 7);
}

// DuoAttention: the streaming heads from the head scores (a pattern, or kvpress's on-the-fly estimate
// re-derived here from the per-sample mean queries and keys kvpress computed), and the kept sets.
TEST_CASE("DuoAttention matches kvpress 0.5.5: on-the-fly head scores, streaming heads and kept sets", "[golden][press]") {
  int cases = 0, on_the_fly = 0, shortened = 0;
  double max_rel = 0.0;
  for (auto const& name : kvc_test::more_scenario_names()) {
    Scenario const sc(name);
    std::int64_t const layers = sc.meta.at("num_layers");
    for (auto const& w : wrapper_entries(sc, "DuoAttentionPress")) {
      std::string const case_name = w.at("name");
      CAPTURE(name, case_name);
      json const& p = w.at("params");
      auto const head_scores = kvc_test::load_tensor<float>(sc.dir, w.at("head_scores"));  // [layers, kv_heads]
      auto const want_mask = kvc_test::load_tensor<std::int32_t>(sc.dir, w.at("streaming_mask"));
      auto const want_kept = kvc_test::load_tensor<std::int32_t>(sc.dir, w.at("kept_mask"));
      if (p.at("on_the_fly_scoring").get<bool>()) {
        auto const mq = kvc_test::load_tensor<float>(sc.dir, w.at("mean_queries"));  // [samples, layers, H, d]
        auto const mk = kvc_test::load_tensor<float>(sc.dir, w.at("mean_keys"));      // [samples, layers, h, d]
        RotaryEmbedding const rope(kvc_test::rope_config_from(sc.meta.at("rope"), static_cast<int>(sc.head_dim)));
        std::int64_t const samples = mq.shape[0];
        std::vector<float> acc(static_cast<std::size_t>(layers * sc.kv_heads), 0.0f), one(static_cast<std::size_t>(sc.kv_heads));
        for (std::int64_t s = 0; s < samples; ++s)
          for (std::int64_t l = 0; l < layers; ++l) {
            duo_attention_sample_scores(mq.data.data() + (s * layers + l) * sc.q_heads * sc.head_dim,
                                        mk.data.data() + (s * layers + l) * sc.kv_heads * sc.head_dim, sc.q_heads,
                                        sc.kv_heads, rope, w.at("q_len"), one.data());
            for (std::int64_t h = 0; h < sc.kv_heads; ++h)
              acc[static_cast<std::size_t>(l * sc.kv_heads + h)] += one[static_cast<std::size_t>(h)] / static_cast<float>(samples);
          }
        for (std::size_t i = 0; i < acc.size(); ++i) {
          double const rel = std::fabs(double(acc[i]) - head_scores.data[i]) / std::fabs(double(head_scores.data[i]));
          max_rel = std::max(max_rel, rel);
          CHECK(rel < 1e-4);
        }
        ++on_the_fly;
      }
      DuoAttentionPress press;
      press.head_compression_ratio = p.at("head_compression_ratio");
      press.sink_size = p.at("sink_size");
      press.recent_size = p.at("recent_size");
      press.head_scores = head_scores.data.data();
      press.num_layers = layers;
      press.kv_heads = sc.kv_heads;
      std::vector<std::uint8_t> mask(static_cast<std::size_t>(layers * sc.kv_heads));
      std::vector<std::int64_t> order(mask.size());
      press.streaming_mask(mask.data(), order.data());
      for (std::size_t i = 0; i < mask.size(); ++i) CHECK(int(mask[i]) == want_mask.data[i]);
      CHECK(press.compression_ratio_for(sc.n) == Approx(w.at("compression_ratio").get<double>()).epsilon(1e-12));
      GoldenCache c(sc);
      Observation<float> obs;
      obs.layer_idx = sc.meta.at("layer_idx");
      obs.num_layers = static_cast<int>(layers);
      compress(cpu, press, obs, c.view());
      shortened += check_kept_mask(sc, c, want_kept).size() > 1;
      ++cases;
    }
  }
  std::printf("golden DuoAttention: %d cases (%d on the fly, %d with streaming heads shortened), "
              "max relative on-the-fly head score error %.3g\n", cases, on_the_fly, shortened, max_rel);
  CHECK(cases == 3 * 4);
  CHECK(on_the_fly == 3);
  CHECK(shortened >= 6);
}

// MergingPress: kept sets and the merged values, on the whole batch (kvpress merges each row alone).
TEST_CASE("Merging matches kvpress 0.5.5: kept sets and merged values", "[golden][press]") {
  int cases = 0, merged = 0;
  double max_rel = 0.0, max_value = 0.0;
  for (auto const& name : kvc_test::more_scenario_names()) {
    Scenario const sc(name);
    for (auto const& w : wrapper_entries(sc, "MergingPress")) {
      std::string const case_name = w.at("name");
      CAPTURE(name, case_name);
      json const& inner = w.at("presses").at(0);
      json const& p = w.at("params");
      InnerInputs ii(sc, inner);
      auto const want_scores = kvc_test::load_tensor<float>(sc.dir, w.at("inner_scores"));
      auto const want_kept = kvc_test::load_tensor<std::int32_t>(sc.dir, w.at("kept"));         // [b, h, n_kept]
      auto const want_values = kvc_test::load_tensor<float>(sc.dir, w.at("values_out"));  // [b, h, n_kept, d]
      std::int64_t const n_kept = w.at("n_kept");
      merged += w.at("merged_entries").get<int>();
      with_inner(inner, [&](auto const& inner_press) {
        GoldenCache c(sc);
        max_rel = std::max(max_rel, check_scores(score(cpu, inner_press, ii.in.obs, c.view()), want_scores));
        MergingPress const press{inner_press, p.at("similarity_threshold").get<double>(),
                                 p.at("merge_fraction").get<double>()};
        compress(cpu, press, ii.in.obs, c.view());
        for (std::int64_t row = 0; row < sc.batch * sc.kv_heads; ++row) {
          CAPTURE(row);
          REQUIRE(c.lengths[static_cast<std::size_t>(row)] == n_kept);
          for (std::int64_t j = 0; j < n_kept; ++j) {
            std::int32_t const src = want_kept.data[static_cast<std::size_t>(row * n_kept + j)];
            REQUIRE(c.positions[static_cast<std::size_t>(row * sc.n + j)] == src);
            for (std::int64_t e = 0; e < sc.head_dim; ++e) {
              REQUIRE(c.k[static_cast<std::size_t>((row * sc.n + j) * sc.head_dim + e)] ==
                      sc.keys.data[static_cast<std::size_t>((row * sc.n + src) * sc.head_dim + e)]);
              double const want = want_values.data[static_cast<std::size_t>((row * n_kept + j) * sc.head_dim + e)];
              double const err = std::fabs(c.v[static_cast<std::size_t>((row * sc.n + j) * sc.head_dim + e)] - want);
              max_value = std::max(max_value, err);
              CHECK(err <= 1e-5 * std::max(1.0, std::fabs(want)));
            }
          }
        }
      });
      ++cases;
    }
  }
  std::printf("golden Merging: %d cases (%d merged entries), max relative inner score error %.3g, "
              "max merged value error %.3g\n", cases, merged, max_rel, max_value);
  CHECK(cases == 3 * 3);
  CHECK(merged > 400);
}

}  // namespace KVC_TEST_TU
