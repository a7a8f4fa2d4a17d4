// CAM against kvpress 0.5.5's CAMPress: tools/golden/generate_cam.py ran kvpress's own hook through a
// prefill and decoding passes on random-weight Llama (llama3 RoPE) and Qwen3 models (GQA 4:1, batch 1
// and 2, Knorm, KeyDiff and TOVA as the base press, windows shorter than merge_budget at the end of
// the row, one compression per step, a chunk of target_size tokens), recording what entered each
// layer's cache per pass and kvpress's cache after each compression; kvpress's Bernoulli draws were
// replaced by u < p with recorded u. We replay the passes (appending the recorded keys and values,
// one CAMPress for all layers, handed the same u in the same order) and require, per layer: the
// cache length after every pass; after every compression the kept positions, the keys (moved
// intact), the values after merging (1e-5 relative, floor 1) and the running attention sums
// (1e-4 relative); and that every draw was consumed where kvpress made it.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "golden_fixture.hpp"
#include "golden_scenario.hpp"
#include "test_util.hpp"
#include "kvcompress/kvcompress.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using namespace kvcompress;
using nlohmann::json;

namespace {

std::string const kCamDir = std::string(KVC_GOLDEN_DIR) + "/cam";

/// Hands out kvpress's recorded draws in order.
struct RecordedUniform {
  std::vector<float> const* values = nullptr;
  std::size_t used = 0;
  double operator()() {
    KVC_CHECK(used < values->size(), "the press asked for more draws than kvpress made (" << values->size() << ")");
    return static_cast<double>((*values)[used++]);
  }
};

struct Layer {
  kvc_test::LoadedTensor<float> keys, values, queries;  // [b, h, total, d], [b, H, total, d]
  std::unique_ptr<kvc_test::OwnedCache<float>> cache;
  std::vector<std::int32_t> positions;
  json meta;
  std::size_t next_compression = 0;
};

template <class Base>
void replay(std::string const& name, json const& meta, Base const& base) {
  std::string const dir = kCamDir + "/" + name;
  std::int64_t const b = meta.at("batch"), h = meta.at("kv_heads"), q_heads = meta.at("q_heads"), d = meta.at("head_dim");
  std::int64_t const total = meta.at("total_tokens");
  int const num_layers = meta.at("num_layers");
  RotaryEmbedding const rope(kvc_test::rope_config_from(meta.at("rope"), static_cast<int>(d)));
  json const& p = meta.at("press");
  CAMOptions opt;
  opt.compression_interval = p.at("compression_interval");
  opt.target_size = p.at("target_size");
  opt.query_buffer_size = p.at("hidden_states_buffer_size");
  opt.merge_budget = p.at("merge_budget");
  std::int64_t const target = opt.target_size;
  auto const uniforms = kvc_test::load_tensor<float>(dir, meta.at("uniforms"));
  CAMPress<Base, float, RecordedUniform> press(base, opt, CAMShape{num_layers, b, q_heads, h, d, total},
                                               RecordedUniform{&uniforms.data, 0});

  std::vector<Layer> layers(static_cast<std::size_t>(num_layers));
  for (auto const& lj : meta.at("layers")) {
    Layer& l = layers[lj.at("layer_idx").get<std::size_t>()];
    l.keys = kvc_test::load_tensor<float>(dir, lj.at("keys"));
    l.values = kvc_test::load_tensor<float>(dir, lj.at("values"));
    l.queries = kvc_test::load_tensor<float>(dir, lj.at("queries"));
    l.meta = lj;
    l.cache = std::make_unique<kvc_test::OwnedCache<float>>(b, h, total, d);
    l.cache->lengths.assign(static_cast<std::size_t>(b * h), 0);
    l.positions.assign(static_cast<std::size_t>(b * h * total), -1);
  }
  // Where kvpress drew: the number of draws up to and including each (pass, layer) compression.
  std::vector<std::size_t> drawn_until;
  std::size_t drawn = 0;
  for (auto const& dr : meta.at("draws")) {
    std::size_t n = 1;
    for (auto const& s : dr.at("shape")) n *= s.get<std::size_t>();
    drawn += n;
    drawn_until.push_back(drawn);
  }
  REQUIRE(drawn == uniforms.data.size());

  std::size_t pass = 0, draw_call = 0, compressions = 0;
  double scenario_value = 0.0, scenario_sum = 0.0;
  for (auto const& pj : meta.at("passes")) {
    std::int64_t const pos = pj.at("position"), len = pj.at("length");
    for (int li = 0; li < num_layers; ++li) {
      Layer& l = layers[static_cast<std::size_t>(li)];
      for (std::int64_t r = 0; r < b * h; ++r)
        for (std::int64_t t = 0; t < len; ++t) {
          std::int32_t const slot = l.cache->lengths[static_cast<std::size_t>(r)]++;
          for (std::int64_t c = 0; c < d; ++c) {
            auto const src = static_cast<std::size_t>((r * total + pos + t) * d + c);
            l.cache->k[static_cast<std::size_t>((r * total + slot) * d + c)] = l.keys.data[src];
            l.cache->v[static_cast<std::size_t>((r * total + slot) * d + c)] = l.values.data[src];
          }
          l.positions[static_cast<std::size_t>(r * total + slot)] = static_cast<std::int32_t>(pos + t);
        }
      Observation<float> obs;
      obs.layer_idx = li;
      obs.num_layers = num_layers;
      obs.position = pos;
      obs.rope = &rope;
      obs.queries = make_tensor4(l.queries.data.data() + pos * d, {b, q_heads, len, d}, {q_heads * total * d, total * d, d, 1});
      auto view = make_cache_view(l.cache->k.data(), l.cache->v.data(), l.cache->extents, l.cache->layout,
                                  l.cache->lengths.data(), l.positions.data());
      bool const compressed = press.step(cpu, obs, view);
      INFO(name << ", layer " << li << ", pass " << pass << " (position " << pos << ", " << len << " tokens)");
      for (std::int64_t r = 0; r < b * h; ++r)
        REQUIRE(l.cache->lengths[static_cast<std::size_t>(r)] == l.meta.at("lengths").at(pass).get<std::int32_t>());

      json const& comps = l.meta.at("compressions");
      bool const theirs = l.next_compression < comps.size() && comps.at(l.next_compression).at("pass").get<std::size_t>() == pass;
      REQUIRE(compressed == theirs);
      if (!theirs) continue;
      json const& cj = comps.at(l.next_compression++);
      REQUIRE(press.uniform().used == drawn_until.at(draw_call++));
      auto const kept = kvc_test::load_tensor<std::int32_t>(dir, cj.at("kept_positions"));      // [b, target]
      auto const keys = kvc_test::load_tensor<float>(dir, cj.at("keys"));                       // [b, h, target, d]
      auto const values = kvc_test::load_tensor<float>(dir, cj.at("values"));                   // [b, h, target, d]
      auto const sums = kvc_test::load_tensor<float>(dir, cj.at("attention_sum"));              // [b, h, target]
      double worst_value = 0.0, worst_sum = 0.0;
      for (std::int64_t r = 0; r < b * h; ++r) {
        INFO("batch " << r / h << ", kv head " << r % h << ", compression " << l.next_compression - 1);
        for (std::int64_t j = 0; j < target; ++j) {
          REQUIRE(l.positions[static_cast<std::size_t>(r * total + j)] == kept.data[static_cast<std::size_t>((r / h) * target + j)]);
          for (std::int64_t c = 0; c < d; ++c) {
            auto const i = static_cast<std::size_t>((r * target + j) * d + c);
            auto const ours = static_cast<std::size_t>((r * total + j) * d + c);
            REQUIRE(l.cache->k[ours] == keys.data[i]);
            double const want = values.data[i], err = std::fabs(double(l.cache->v[ours]) - want);
            worst_value = std::max(worst_value, err / std::max(1.0, std::fabs(want)));
          }
          double const want = sums.data[static_cast<std::size_t>(r * target + j)];
          double const got = press.attention_sum(li)[r * total + j];
          worst_sum = std::max(worst_sum, std::fabs(got - want) / std::max(std::fabs(want), 1e-6));
        }
      }
      CHECK(worst_value <= 1e-5);
      CHECK(worst_sum <= 1e-4);
      scenario_value = std::max(scenario_value, worst_value);
      scenario_sum = std::max(scenario_sum, worst_sum);
      ++compressions;
    }
    ++pass;
  }
  std::printf("cam golden: %-26s %zu compressions, %zu draws; values max relative error %.2e, sums %.2e\n", name.c_str(),
              compressions, uniforms.data.size(), scenario_value, scenario_sum);
  CHECK(press.uniform().used == uniforms.data.size());
  for (auto const& l : layers) CHECK(l.next_compression == l.meta.at("compressions").size());
}

}  // namespace

TEST_CASE("CAM keeps, merges and sums exactly as kvpress's CAMPress", "[golden][cam]") {
  auto const index = kvc_test::load_json(kCamDir + "/index.json");
  auto const names = index.at("scenarios").get<std::vector<std::string>>();
  REQUIRE(names.size() >= 5);
  for (auto const& name : names) {
    auto const meta = kvc_test::load_json(kCamDir + "/" + name + "/scenario.json");
    std::string const base = meta.at("press").at("base_press");
    INFO("scenario " << name << " (base press " << base << ")");
    if (base == "KnormPress") replay(name, meta, KnormPress{});
    else if (base == "KeyDiffPress") replay(name, meta, KeyDiffPress{});
    else if (base == "TOVAPress") replay(name, meta, TOVAPress{});
    else FAIL("unknown base press " << base);
  }
}

}  // namespace KVC_TEST_TU
