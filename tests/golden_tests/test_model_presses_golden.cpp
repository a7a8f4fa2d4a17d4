// The presses that look at the whole model, against kvpress 0.5.5 itself (tests/golden/more_presses/model,
// written by tools/golden/generate_model_presses.py): every layer's inputs and kvpress's decisions on a
// random-weight Llama (GQA 4:1, llama3 RoPE) and Qwen3 (q_norm/k_norm, default RoPE) model.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "golden_scenario.hpp"
#include "kvc_engine/compression/learned_scorers.hpp"
#include "kvc_engine/compression/press_registry.hpp"
#include "kvcompress/kvcompress.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using namespace kvcompress;
using nlohmann::json;

namespace {

struct ModelScenario {
  std::string dir;
  json meta;
  int layers;
  std::int64_t q_heads, kv_heads, head_dim, n;

  explicit ModelScenario(std::string const& name)
      : dir(kvc_test::kGoldenDir + "/more_presses/model/" + name), meta(kvc_test::load_json(dir + "/scenario.json")) {
    layers = meta.at("num_layers");
    q_heads = meta.at("q_heads");
    kv_heads = meta.at("kv_heads");
    head_dim = meta.at("head_dim");
    n = meta.at("seq_len");
  }
  [[nodiscard]] kvc_test::LoadedTensor<float> tensor(std::string const& name) const {
    return kvc_test::load_tensor<float>(dir, meta.at("tensors").at(name));
  }
};

std::vector<std::string> model_scenarios() {
  auto const index = kvc_test::load_json(kvc_test::kGoldenDir + "/more_presses/model/index.json");
  return index.at("scenarios").get<std::vector<std::string>>();
}

/// One layer's batch-1 cache over copies of the scenario's keys and values, with positions.
struct LayerCache {
  std::vector<float> k, v;
  std::vector<std::int32_t> lengths, positions;
  KVCacheView<float> view;

  LayerCache(ModelScenario const& sc, int layer) : k(sc.tensor("keys_l" + std::to_string(layer)).data),
                                                   v(sc.tensor("values_l" + std::to_string(layer)).data) {
    CacheExtents const e{1, sc.kv_heads, sc.n, sc.head_dim};
    auto const layout = make_strided_layout(e, {Axis::kBatch, Axis::kHead, Axis::kSeq, Axis::kDim});
    lengths.assign(static_cast<std::size_t>(sc.kv_heads), static_cast<std::int32_t>(sc.n));
    positions.resize(static_cast<std::size_t>(sc.kv_heads * sc.n));
    for (std::size_t i = 0; i < positions.size(); ++i) positions[i] = static_cast<std::int32_t>(i % static_cast<std::size_t>(sc.n));
    view = make_cache_view(k.data(), v.data(), e, layout, lengths.data(), positions.data());
  }
};

KVComposeAggregation aggregation(json const& j) {
  std::string const s = j;
  if (s == "max") return KVComposeAggregation::kMax;
  REQUIRE(s == "mean");
  return KVComposeAggregation::kMean;
}

}  // namespace

// KVCompose from the attention of kvpress's replay pass: scores of every (layer, kv head), the budgets
// per layer (structured) or per head (unstructured), and each head's kept set.
TEST_CASE("KVCompose matches kvpress 0.5.5: scores, budgets and kept sets", "[golden][press]") {
  int cases = 0;
  double max_rel = 0.0;
  for (auto const& name : model_scenarios()) {
    ModelScenario const sc(name);
    std::vector<kvc_test::LoadedTensor<float>> attention;
    for (int l = 0; l < sc.layers; ++l) attention.push_back(sc.tensor("replay_attention_l" + std::to_string(l)));
    for (auto const& pc : sc.meta.at("kvcompose")) {
      std::string const case_name = pc.at("name");
      CAPTURE(name, case_name);
      json const& p = pc.at("params");
      KVComposePress const press{p.at("structured"),       p.at("compression_ratio"),    aggregation(p.at("agg_task")),
                                 aggregation(p.at("agg_group")), aggregation(p.at("agg_head")), p.at("add_v_norm"),
                                 p.at("add_mean_across_heads"), p.at("keep_token_lower_bound")};
      KVComposeStatistics stats(press, sc.layers, sc.q_heads, sc.n);
      for (int l = 0; l < sc.layers; ++l) {
        auto const& a = attention[static_cast<std::size_t>(l)];
        stats.add(cpu, l, make_tensor4(a.data.data(), {a.shape[0], a.shape[1], a.shape[2], a.shape[3]}));
      }
      KVComposePlan const plan = kvcompose_plan(cpu, press, stats, sc.kv_heads);
      auto const want = kvc_test::load_tensor<float>(sc.dir, pc.at("scores"));  // [layers, kv_heads, n]
      REQUIRE(want.data.size() == plan.scores.size());
      for (std::size_t i = 0; i < want.data.size(); ++i) {
        double const rel = std::fabs(double(plan.scores[i]) - want.data[i]) / std::max(1e-6, double(std::fabs(want.data[i])));
        max_rel = std::max(max_rel, rel);
        if (rel > 1e-5) FAIL_CHECK("score " << i << ": kvcompress " << plan.scores[i] << ", kvpress " << want.data[i]);
      }
      auto const mask = kvc_test::load_tensor<std::int32_t>(sc.dir, pc.at("kept_mask"));  // [layers, kv_heads, n]
      for (int l = 0; l < sc.layers; ++l) {
        CAPTURE(l);
        LayerCache cache(sc, l);
        std::vector<std::byte> scratch(kvcompose_compress_workspace_bytes(cpu, cache.view));
        kvcompose_compress(cpu, plan, l, cache.view, Workspace(scratch.data(), scratch.size()));
        for (std::int64_t h = 0; h < sc.kv_heads; ++h) {
          CAPTURE(h);
          std::int32_t const want_count = pc.at("kept_counts").at(static_cast<std::size_t>(l)).at(static_cast<std::size_t>(h));
          CHECK(plan.kept[static_cast<std::size_t>(l * sc.kv_heads + h)] == want_count);
          REQUIRE(cache.lengths[static_cast<std::size_t>(h)] == want_count);
          std::vector<std::int32_t> want_kept;
          for (std::int64_t i = 0; i < sc.n; ++i)
            if (mask.data[static_cast<std::size_t>((l * sc.kv_heads + h) * sc.n + i)] != 0) want_kept.push_back(static_cast<std::int32_t>(i));
          std::vector<std::int32_t> const got(cache.positions.begin() + h * sc.n, cache.positions.begin() + h * sc.n + want_count);
          CHECK(got == want_kept);
        }
      }
      ++cases;
    }
  }
  std::printf("golden KVCompose: %d cases, max relative score error %.3g\n", cases, max_rel);
  CHECK(cases == 2 * 3);
}

// ThinK on every layer: kvpress's channel scores (from its own window queries) and the channels it
// zeroed; the packed keys hold exactly the kept channels, and attention over them equals attention
// over kvpress's zeroed keys.
TEST_CASE("ThinK matches kvpress 0.5.5: channel scores, pruned channels and attention over packed keys", "[golden][press]") {
  int cases = 0;
  double max_rel = 0.0, max_out = 0.0;
  for (auto const& name : model_scenarios()) {
    ModelScenario const sc(name);
    for (auto const& pc : sc.meta.at("think")) {
      std::string const case_name = pc.at("name");
      json const& p = pc.at("params");
      ThinKPress const press{p.at("key_channel_compression_ratio"), p.at("window_size")};
      for (int l = 0; l < sc.layers; ++l) {
        CAPTURE(name, case_name, l);
        json const& pl = pc.at("layers").at(static_cast<std::size_t>(l));
        auto const wq = kvc_test::load_tensor<float>(sc.dir, pl.at("window_queries"));
        auto const want = kvc_test::load_tensor<float>(sc.dir, pl.at("scores"));            // [1, kv_heads, d]
        auto const pruned = kvc_test::load_tensor<std::int32_t>(sc.dir, pl.at("pruned"));   // [1, kv_heads, d]
        Observation<float> obs;
        obs.window_queries = make_tensor4(wq.data.data(), {wq.shape[0], wq.shape[1], wq.shape[2], wq.shape[3]});
        LayerCache cache(sc, l);
        std::vector<float> scores(want.data.size());
        press.channel_scores(cpu, obs, cache.view, scores.data());
        for (std::size_t i = 0; i < scores.size(); ++i) {
          double const rel = std::fabs(double(scores[i]) - want.data[i]) / std::max(1e-12, double(std::fabs(want.data[i])));
          max_rel = std::max(max_rel, rel);
          if (rel > 1e-5) FAIL_CHECK("channel score " << i << ": kvcompress " << scores[i] << ", kvpress " << want.data[i]);
        }
        std::int64_t const kept = press.kept_channels(sc.head_dim);
        std::vector<float> packed(static_cast<std::size_t>(sc.kv_heads * sc.n * kept));
        std::vector<std::int32_t> channels(static_cast<std::size_t>(sc.kv_heads * kept));
        PackedKeys<float> const keys{packed.data(), channels.data(), kept};
        std::vector<std::byte> scratch(press.workspace_bytes(cpu, cache.view));
        press.compress(cpu, obs, cache.view, keys, Workspace(scratch.data(), scratch.size()));
        for (std::int64_t h = 0; h < sc.kv_heads; ++h) {
          std::vector<std::int32_t> want_kept;
          for (std::int64_t c = 0; c < sc.head_dim; ++c)
            if (pruned.data[static_cast<std::size_t>(h * sc.head_dim + c)] == 0) want_kept.push_back(static_cast<std::int32_t>(c));
          std::vector<std::int32_t> const got(channels.begin() + h * kept, channels.begin() + (h + 1) * kept);
          CHECK(got == want_kept);
          for (std::int64_t i = 0; i < sc.n; ++i)
            for (std::int64_t c = 0; c < kept; ++c)
              REQUIRE(packed[static_cast<std::size_t>((h * sc.n + i) * kept + c)] ==
                      cache.k[static_cast<std::size_t>((h * sc.n + i) * sc.head_dim + got[static_cast<std::size_t>(c)])]);
        }
        // Attention of the window queries over the packed keys vs over kvpress's zeroed keys.
        auto const zeroed = kvc_test::load_tensor<float>(sc.dir, pl.at("keys_out"));
        LayerCache reference(sc, l);
        reference.k = zeroed.data;
        reference.view.keys = reference.k.data();
        auto const want_out = reference_attention(cpu, obs.window_queries, reference.view);
        std::vector<float> out(want_out.size());
        std::vector<std::byte> ascratch(reference_attention_workspace_bytes(cpu, obs.window_queries, cache.view));
        reference_attention_packed(cpu, obs.window_queries, cache.view, keys, out.data(), AttentionOptions{},
                                   Workspace(ascratch.data(), ascratch.size()));
        for (std::size_t i = 0; i < out.size(); ++i) {
          max_out = std::max(max_out, double(std::fabs(out[i] - want_out[i])));
          REQUIRE(out[i] == Approx(want_out[i]).margin(1e-5));
        }
      }
      ++cases;
    }
  }
  std::printf("golden ThinK: %d cases, max relative channel score error %.3g, max attention difference %.3g\n", cases,
              max_rel, max_out);
  CHECK(cases == 2 * 2);
}

// KVzap with random surrogates (kvpress's own KVzapModel, saved as the safetensors a caller gives, read
// by the engine's loader): scores of every layer and the kept sets.
TEST_CASE("KVzap matches kvpress 0.5.5: scores and kept sets from the surrogate's safetensors", "[golden][press]") {
  int cases = 0, tied = 0;
  double max_rel = 0.0;
  for (auto const& name : model_scenarios()) {
    ModelScenario const sc(name);
    for (auto const& pc : sc.meta.at("kvzap")) {
      std::string const case_name = pc.at("name");
      json const& p = pc.at("params");
      auto const ck = kvc_engine::load_kvzap(sc.dir + "/" + pc.at("weights").get<std::string>());
      REQUIRE(ck.num_layers() == sc.layers);
      KVzapModelType const type = p.at("model_type") == "mlp" ? KVzapModelType::kMlp : KVzapModelType::kLinear;
      REQUIRE(ck.type == type);
      for (int l = 0; l < sc.layers; ++l) {
        CAPTURE(name, case_name, l);
        json const& pl = pc.at("layers").at(static_cast<std::size_t>(l));
        KVzapPress const press{p.at("compression_ratio"), type, ck.layer(l)};
        auto const x = sc.tensor("hidden_l" + std::to_string(l));  // [1, n, hidden]
        Observation<float> obs;
        obs.hidden_states = make_tensor4(x.data.data(), {x.shape[0], 1, x.shape[1], x.shape[2]});
        LayerCache cache(sc, l);
        auto const got = score(cpu, press, obs, cache.view);
        auto const want = kvc_test::load_tensor<float>(sc.dir, pl.at("scores"));
        double scale = 0.0;
        for (float v : want.data) scale = std::max(scale, double(std::fabs(v)));
        for (std::size_t i = 0; i < got.size(); ++i) {
          double const rel = std::fabs(double(got[i]) - want.data[i]) / std::max(double(std::fabs(want.data[i])), 1e-2 * scale);
          max_rel = std::max(max_rel, rel);
          // a dot product over hidden_size terms that cancel: float32 rounding, as for the other presses
          if (rel > 1e-4) FAIL_CHECK("score " << i << ": kvcompress " << got[i] << ", kvpress " << want.data[i]);
        }
        compress(cpu, press, obs, cache.view);
        auto const kept = kvc_test::load_tensor<std::int32_t>(sc.dir, pl.at("kept"));
        std::int64_t const n_kept = pl.at("n_kept");
        bool const tie = pl.at("boundary_tie");
        tied += tie;
        for (std::int64_t h = 0; h < sc.kv_heads; ++h) {
          REQUIRE(cache.lengths[static_cast<std::size_t>(h)] == n_kept);
          std::vector<std::int32_t> const g(cache.positions.begin() + h * sc.n, cache.positions.begin() + h * sc.n + n_kept);
          std::vector<std::int32_t> const w(kept.data.begin() + h * n_kept, kept.data.begin() + (h + 1) * n_kept);
          if (!tie) CHECK(g == w);
        }
      }
      ++cases;
    }
  }
  std::printf("golden KVzap: %d cases, %d layers tied at the cut, max relative score error %.3g\n", cases, tied, max_rel);
  CHECK(cases == 2 * 2);
}

// FastKVzip with random gates (kvpress's own FastKVzipGate, saved as safetensors, read by the engine's
// loader): every layer's gate scores, then the cross-layer eviction against the entries kvpress masked.
TEST_CASE("FastKVzip matches kvpress 0.5.5: gate scores and the entries evicted across layers", "[golden][press]") {
  int cases = 0;
  double max_rel = 0.0;
  for (auto const& name : model_scenarios()) {
    ModelScenario const sc(name);
    for (auto const& pc : sc.meta.at("fastkvzip")) {
      std::string const case_name = pc.at("name");
      CAPTURE(name, case_name);
      json const& p = pc.at("params");
      FastKVzipPress const press{p.at("compression_ratio"), p.at("layerwise"), p.at("n_sink"), p.at("window_size"),
                                 p.at("window_ratio")};
      auto const ck = kvc_engine::load_fast_kvzip(sc.dir + "/" + pc.at("weights").get<std::string>());
      REQUIRE(ck.num_layers() == sc.layers);
      REQUIRE(ck.group == pc.at("group").get<std::int64_t>());
      std::vector<float> scores(static_cast<std::size_t>(sc.layers * sc.kv_heads * sc.n));  // [layers, kv_heads, n]
      for (int l = 0; l < sc.layers; ++l) {
        auto const x = kvc_test::load_tensor<float>(sc.dir, pc.at("layers").at(static_cast<std::size_t>(l)).at("hidden"));
        press.score_layer(cpu, ck.layer(l), make_tensor4(x.data.data(), {1, 1, x.shape[1], x.shape[2]}),
                          scores.data() + l * sc.kv_heads * sc.n);
      }
      auto const want = kvc_test::load_tensor<float>(sc.dir, pc.at("scores"));
      REQUIRE(want.data.size() == scores.size());
      for (std::size_t i = 0; i < scores.size(); ++i) {
        double const rel = std::fabs(double(scores[i]) - want.data[i]) / std::max(1e-6, double(std::fabs(want.data[i])));
        max_rel = std::max(max_rel, rel);
        if (rel > 1e-4) FAIL_CHECK("score " << i << ": kvcompress " << scores[i] << ", kvpress " << want.data[i]);
      }
      std::vector<std::int64_t> pruned(static_cast<std::size_t>(sc.layers));
      cross_layer_pruned_counts(scores.data(), sc.layers, sc.kv_heads * sc.n, press.compression_ratio, press.layerwise, pruned.data());
      auto const masked = kvc_test::load_tensor<std::int32_t>(sc.dir, pc.at("masked"));  // [layers, kv_heads, n]
      for (int l = 0; l < sc.layers; ++l) {
        CAPTURE(l);
        CHECK(pruned[static_cast<std::size_t>(l)] == pc.at("masked_per_layer").at(static_cast<std::size_t>(l)).get<std::int64_t>());
        LayerCache cache(sc, l);
        std::vector<std::byte> scratch(evict_lowest_across_heads_workspace_bytes(cpu, cache.view));
        evict_lowest_across_heads(cpu, cache.view, scores.data() + l * sc.kv_heads * sc.n, pruned[static_cast<std::size_t>(l)],
                                  Workspace(scratch.data(), scratch.size()));
        for (std::int64_t h = 0; h < sc.kv_heads; ++h) {
          std::vector<std::int32_t> want_kept;
          for (std::int64_t i = 0; i < sc.n; ++i)
            if (masked.data[static_cast<std::size_t>((l * sc.kv_heads + h) * sc.n + i)] == 0) want_kept.push_back(static_cast<std::int32_t>(i));
          std::int32_t const len = cache.lengths[static_cast<std::size_t>(h)];
          std::vector<std::int32_t> const got(cache.positions.begin() + h * sc.n, cache.positions.begin() + h * sc.n + len);
          CHECK(got == want_kept);
        }
      }
      ++cases;
    }
  }
  std::printf("golden FastKVzip: %d cases, max relative score error %.3g\n", cases, max_rel);
  CHECK(cases == 2 * 2);
}

// KVzip from kvpress's reconstruction passes (a byte tokenizer, no chat template): per chunk and layer
// the input's pre-RoPE queries and the cache holding the context and the input; the scores of every
// layer before the sink protection, then the entries evicted across layers against those kvpress masked.
TEST_CASE("KVzip matches kvpress 0.5.5: reconstruction scores and the entries evicted across layers", "[golden][press]") {
  int cases = 0, chunks = 0;
  double max_rel = 0.0;
  for (auto const& name : model_scenarios()) {
    ModelScenario const sc(name);
    RotaryEmbedding const rope(kvc_test::rope_config_from(sc.meta.at("rope"), static_cast<int>(sc.head_dim)));
    for (auto const& pc : sc.meta.at("kvzip")) {
      std::string const case_name = pc.at("name");
      CAPTURE(name, case_name);
      json const& p = pc.at("params");
      KVzipPress const press{p.at("compression_ratio"), p.at("layerwise"), p.at("n_sink"), p.at("kvzip_plus_normalization"),
                             p.at("chunk_size")};
      std::vector<float> scores(static_cast<std::size_t>(sc.layers * sc.kv_heads * sc.n), 0.0f);  // [layers, kv_heads, n]
      for (auto const& chunk : pc.at("chunks")) {
        std::int64_t const start = chunk.at("start"), end = chunk.at("end");
        for (int l = 0; l < sc.layers; ++l) {
          CAPTURE(start, l);
          json const& cl = chunk.at("layers").at(static_cast<std::size_t>(l));
          auto const queries = kvc_test::load_tensor<float>(sc.dir, cl.at("queries"));  // [1, q_heads, q, d]
          auto keys = kvc_test::load_tensor<float>(sc.dir, cl.at("keys"));              // [1, kv_heads, n + q, d]
          std::vector<float> values = press.kvzip_plus_normalization ? kvc_test::load_tensor<float>(sc.dir, cl.at("values")).data
                                                                     : std::vector<float>(keys.data.size(), 0.0f);
          std::int64_t const m = keys.shape[2];
          CacheExtents const e{1, sc.kv_heads, m, sc.head_dim};
          auto const layout = make_strided_layout(e, {Axis::kBatch, Axis::kHead, Axis::kSeq, Axis::kDim});
          std::vector<std::int32_t> lengths(static_cast<std::size_t>(sc.kv_heads), static_cast<std::int32_t>(m));
          auto const cache = make_cache_view(keys.data.data(), values.data(), e, layout, lengths.data());
          Observation<float> obs;
          obs.queries = make_tensor4(queries.data.data(), {queries.shape[0], queries.shape[1], queries.shape[2], queries.shape[3]});
          obs.rope = &rope;
          obs.position = cl.at("position");
          kvc_test::LoadedTensor<float> hidden, wo;
          if (press.kvzip_plus_normalization) {
            hidden = kvc_test::load_tensor<float>(sc.dir, cl.at("hidden"));  // [1, q, hidden]
            wo = kvc_test::load_tensor<float>(sc.dir, cl.at("o_proj"));      // [hidden, q_heads · d]
            obs.hidden_states = make_tensor4(hidden.data.data(), {1, 1, hidden.shape[1], hidden.shape[2]});
            obs.output_projection = make_tensor2(wo.data.data(), {wo.shape[0], wo.shape[1]});
          }
          press.score_chunk(cpu, obs, cache, sc.n, start, end, scores.data() + l * sc.kv_heads * sc.n);
        }
        ++chunks;
      }
      auto const want = kvc_test::load_tensor<float>(sc.dir, pc.at("scores"));  // [layers, kv_heads, n]
      REQUIRE(want.data.size() == scores.size());
      double scale = 0.0;
      for (float v : want.data) scale = std::max(scale, double(std::fabs(v)));
      for (std::size_t i = 0; i < scores.size(); ++i) {
        double const rel = std::fabs(double(scores[i]) - want.data[i]) / std::max(double(std::fabs(want.data[i])), 1e-3 * scale);
        max_rel = std::max(max_rel, rel);
        if (rel > 1e-4) FAIL_CHECK("score " << i << ": kvcompress " << scores[i] << ", kvpress " << want.data[i]);
      }
      press.protect_sinks(scores.data(), sc.layers * sc.kv_heads, sc.n);
      std::vector<std::int64_t> pruned(static_cast<std::size_t>(sc.layers));
      cross_layer_pruned_counts(scores.data(), sc.layers, sc.kv_heads * sc.n, press.compression_ratio, press.layerwise, pruned.data());
      auto const masked = kvc_test::load_tensor<std::int32_t>(sc.dir, pc.at("masked"));
      for (int l = 0; l < sc.layers; ++l) {
        CAPTURE(l);
        CHECK(pruned[static_cast<std::size_t>(l)] == pc.at("masked_per_layer").at(static_cast<std::size_t>(l)).get<std::int64_t>());
        LayerCache cache(sc, l);
        std::vector<std::byte> scratch(evict_lowest_across_heads_workspace_bytes(cpu, cache.view));
        evict_lowest_across_heads(cpu, cache.view, scores.data() + l * sc.kv_heads * sc.n, pruned[static_cast<std::size_t>(l)],
                                  Workspace(scratch.data(), scratch.size()));
        for (std::int64_t h = 0; h < sc.kv_heads; ++h) {
          std::vector<std::int32_t> want_kept;
          for (std::int64_t i = 0; i < sc.n; ++i)
            if (masked.data[static_cast<std::size_t>((l * sc.kv_heads + h) * sc.n + i)] == 0) want_kept.push_back(static_cast<std::int32_t>(i));
          std::int32_t const len = cache.lengths[static_cast<std::size_t>(h)];
          std::vector<std::int32_t> const got(cache.positions.begin() + h * sc.n, cache.positions.begin() + h * sc.n + len);
          CHECK(got == want_kept);
        }
      }
      ++cases;
    }
  }
  std::printf("golden KVzip: %d cases, %d reconstruction chunks, max relative score error %.3g\n", cases, chunks, max_rel);
  CHECK(cases == 3);
}

// KVCompose through the reference engine ("kvcompose" in kvcompress-eval's registry): the engine replays
// the prompt, folds the replay's attention of every layer into the statistics and compacts every layer;
// what each head keeps must equal what kvpress kept on the same checkpoint and prompt.
TEST_CASE("KVCompose in the reference engine keeps what kvpress 0.5.5 keeps on the engine's Llama", "[golden][press][engine]") {
  auto const want = kvc_test::load_json(kvc_test::kGoldenDir + "/more_presses/model/engine_kvcompose.json");
  std::string const dir = kvc_test::kGoldenDir + "/engine/llama";
  auto const meta = kvc_test::load_json(dir + "/engine.json");
  kvc_engine::Model const model = kvc_engine::load_model(dir + "/" + meta.at("checkpoint").get<std::string>());
  kvc_engine::Engine engine(model);
  auto const prompt = meta.at("prompt").get<std::vector<std::int32_t>>();
  kvc_engine::Compressor const c = kvc_engine::make_compressor("kvcompose", want.at("compression_ratio").get<double>(), engine.device());
  REQUIRE(c.after_prefill_model);
  kvc_engine::KVCache cache = engine.new_cache(static_cast<std::int64_t>(prompt.size()));
  kvc_engine::ForwardRecord record;
  (void)engine.forward(cache, prompt, kvc_engine::Logits::kNone, nullptr, &record);
  c.after_prefill_model(engine, cache, record);
  REQUIRE(cache.next_position() == static_cast<std::int64_t>(prompt.size()));  // the replay left no trace
  int layers = 0;
  for (std::int64_t l = 0; l < model.config.num_layers; ++l) {
    for (std::int64_t h = 0; h < model.config.num_kv_heads; ++h) {
      CAPTURE(l, h);
      auto const kept = want.at("kept").at(static_cast<std::size_t>(l)).at(static_cast<std::size_t>(h)).get<std::vector<std::int32_t>>();
      REQUIRE(cache.length(l, h) == static_cast<std::int32_t>(kept.size()));
      std::vector<std::int32_t> const got(cache.positions(l, h), cache.positions(l, h) + cache.length(l, h));
      CHECK(got == kept);
    }
    ++layers;
  }
  std::printf("golden KVCompose (engine): %d layers of the engine's Llama keep kvpress's sets\n", layers);
}

// KVzip through the reference engine (`kvzip_compressor`, given kvpress's prompts as token ids: the
// checkpoint's vocabulary is 256 bytes): the engine replays prompt + suffix + chunk for each of the two
// chunks, every layer scores its chunk, and the eviction across layers must keep what kvpress kept.
TEST_CASE("KVzip in the reference engine keeps what kvpress 0.5.5 keeps on the engine's Llama", "[golden][press][engine]") {
  auto const want = kvc_test::load_json(kvc_test::kGoldenDir + "/more_presses/model/engine_kvzip.json");
  std::string const dir = kvc_test::kGoldenDir + "/engine/llama";
  auto const meta = kvc_test::load_json(dir + "/engine.json");
  kvc_engine::Model const model = kvc_engine::load_model(dir + "/" + meta.at("checkpoint").get<std::string>());
  kvc_engine::Engine engine(model);
  auto const prompt = meta.at("prompt").get<std::vector<std::int32_t>>();
  json const& p = want.at("params");
  KVzipPress const press{p.at("compression_ratio"), p.at("layerwise"), p.at("n_sink"), p.at("kvzip_plus_normalization"),
                         p.at("chunk_size")};
  kvc_engine::KVzipPrompt const ids{want.at("prompt_first").get<std::vector<std::int32_t>>(),
                                    want.at("prompt_later").get<std::vector<std::int32_t>>(),
                                    want.at("suffix").get<std::vector<std::int32_t>>(), 0};
  kvc_engine::Compressor const c = kvc_engine::kvzip_compressor(press, ids, "kvzip", engine.device());
  kvc_engine::KVCache cache = engine.new_cache(static_cast<std::int64_t>(prompt.size()));
  kvc_engine::ForwardRecord record;
  (void)engine.forward(cache, prompt, kvc_engine::Logits::kNone, nullptr, &record);
  // The scores of the engine's reconstruction passes against kvpress's.
  auto const scores = kvc_engine::kvzip_scores(engine, cache, record, press, ids, engine.device());
  auto const want_scores = kvc_test::load_tensor<float>(kvc_test::kGoldenDir + "/more_presses/model", want.at("scores"));
  REQUIRE(scores.size() == want_scores.data.size());
  double max_rel = 0.0;
  for (std::size_t i = 0; i < scores.size(); ++i) {
    double const rel = std::fabs(double(scores[i]) - want_scores.data[i]) / std::max(1e-6, double(std::fabs(want_scores.data[i])));
    max_rel = std::max(max_rel, rel);
    if (rel > 1e-3) FAIL_CHECK("score " << i << ": engine " << scores[i] << ", kvpress " << want_scores.data[i]);
  }
  std::printf("golden KVzip (engine): max relative score error %.3g\n", max_rel);
  c.after_prefill_model(engine, cache, record);
  REQUIRE(cache.next_position() == static_cast<std::int64_t>(prompt.size()));
  std::int64_t kept_total = 0;
  for (std::int64_t l = 0; l < model.config.num_layers; ++l)
    for (std::int64_t h = 0; h < model.config.num_kv_heads; ++h) {
      CAPTURE(l, h);
      auto const kept = want.at("kept").at(static_cast<std::size_t>(l)).at(static_cast<std::size_t>(h)).get<std::vector<std::int32_t>>();
      REQUIRE(cache.length(l, h) == static_cast<std::int32_t>(kept.size()));
      std::vector<std::int32_t> const got(cache.positions(l, h), cache.positions(l, h) + cache.length(l, h));
      CHECK(got == kept);
      kept_total += cache.length(l, h);
    }
  std::printf("golden KVzip (engine): %lld entries kept over every layer and head, kvpress's sets\n",
              static_cast<long long>(kept_total));
}

}  // namespace KVC_TEST_TU
