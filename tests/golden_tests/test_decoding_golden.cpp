// The decoding presses against kvpress 0.5.5's: tools/golden/generate_decoding.py ran kvpress's own
// DecodingPress, CompressionRatioDecodingPress and PrefillDecodingPress hooks through a prefill and
// decoding passes on random-weight Llama (llama3 RoPE) and Qwen3 models (GQA 4:1, batch 1 and 2, Knorm and
// KeyDiff as the base press, a chunk of target_size tokens), recording what entered each layer's cache
// per pass and the positions kvpress kept in every row at each compression. We replay the passes
// (appending the recorded keys and values, one press for all layers) and require, per layer: the cache
// length after every pass, the step count kvpress's hook keeps, and after every compression the kept
// positions of every (batch, kv head) row, whose keys and values are moved intact.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "golden_fixture.hpp"
#include "golden_scenario.hpp"
#include "kvcompress/kvcompress.hpp"
#include "test_util.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using namespace kvcompress;
using nlohmann::json;

namespace {

std::string const kDecodingDir = std::string(KVC_GOLDEN_DIR) + "/decoding";

struct Layer {
  kvc_test::LoadedTensor<float> keys, values, queries;  // [b, h, total, d], [b, H, total, d]
  std::unique_ptr<kvc_test::OwnedCache<float>> cache;
  std::vector<std::int32_t> positions;  // [b, h, total]
  json meta;
  std::size_t next_compression = 0;
  std::int64_t steps = 0;  // kvpress's layer_step_counts
};

/// The entries kvpress's hook keeps at pass `pos` of `length` tokens: target_size, or the fraction of the tokens seen.
std::int64_t target_of(json const& dec, std::int64_t pos, std::int64_t length) {
  if (dec.contains("target_size")) return dec.at("target_size").get<std::int64_t>();
  double const ratio = dec.at("target_compression_ratio");
  return std::max<std::int64_t>(1, static_cast<std::int64_t>(static_cast<double>(pos + length) * (1.0 - ratio)));
}

/// Replays one scenario with `press` (a PrefillDecodingPress over the scenario's presses); `dec` is the
/// decoding press's parameters.
template <class Press>
void replay(std::string const& name, json const& meta, json const& dec, Press& press) {
  std::string const dir = kDecodingDir + "/" + name;
  std::int64_t const b = meta.at("batch"), h = meta.at("kv_heads"), q_heads = meta.at("q_heads"), d = meta.at("head_dim");
  std::int64_t const total = meta.at("total_tokens"), interval = dec.at("compression_interval");
  int const num_layers = meta.at("num_layers");
  RotaryEmbedding const rope(kvc_test::rope_config_from(meta.at("rope"), static_cast<int>(d)));
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
  std::size_t pass = 0, compressions = 0;
  for (auto const& pj : meta.at("passes")) {
    std::int64_t const pos = pj.at("position"), len = pj.at("length");
    std::int64_t const target = target_of(dec, pos, len);
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
      l.steps = pos == 0 || l.steps + 1 >= interval || len >= target ? 0 : l.steps + 1;
      REQUIRE(press.decoding_press()->steps(li) == l.steps);

      json const& comps = l.meta.at("compressions");
      bool const theirs = l.next_compression < comps.size() && comps.at(l.next_compression).at("pass").get<std::size_t>() == pass;
      REQUIRE(compressed == theirs);
      if (!theirs) continue;
      auto const kept = kvc_test::load_tensor<std::int32_t>(dir, comps.at(l.next_compression++).at("kept_positions"));
      std::int64_t const n = kept.shape.at(2);  // [b, h, n] ascending
      for (std::int64_t r = 0; r < b * h; ++r) {
        INFO("batch " << r / h << ", kv head " << r % h << ", compression " << l.next_compression - 1);
        std::vector<std::int32_t> ours(l.positions.begin() + r * total, l.positions.begin() + r * total + n);
        std::sort(ours.begin(), ours.end());
        std::vector<std::int32_t> const want(kept.data.begin() + r * n, kept.data.begin() + (r + 1) * n);
        REQUIRE(ours == want);
        for (std::int64_t j = 0; j < n; ++j) {  // the kept entries hold their own keys and values
          std::int64_t const p = l.positions[static_cast<std::size_t>(r * total + j)];
          auto const ours_at = static_cast<std::size_t>((r * total + j) * d), theirs_at = static_cast<std::size_t>((r * total + p) * d);
          REQUIRE(std::equal(l.cache->k.begin() + ours_at, l.cache->k.begin() + ours_at + d, l.keys.data.begin() + theirs_at));
          REQUIRE(std::equal(l.cache->v.begin() + ours_at, l.cache->v.begin() + ours_at + d, l.values.data.begin() + theirs_at));
        }
      }
      ++compressions;
    }
    ++pass;
  }
  std::printf("decoding golden: %-38s %zu compressions over %zu passes\n", name.c_str(), compressions, pass);
  for (auto const& l : layers) CHECK(l.next_compression == l.meta.at("compressions").size());
}

template <class Base, class Options>
void replay_with(std::string const& name, json const& meta, json const& p, json const& dec, Options options) {
  using Decoding = BasicDecodingPress<Base, float, Options>;
  QueryBufferShape const shape{meta.at("num_layers").get<int>(), meta.at("batch").get<std::int64_t>(),
                               meta.at("q_heads").get<std::int64_t>(), meta.at("head_dim").get<std::int64_t>()};
  std::optional<KnormPress> prefill;
  if (p.contains("prefilling_press")) {
    REQUIRE(p.at("prefilling_press").at("name") == "KnormPress");
    prefill = KnormPress{p.at("prefilling_press").at("compression_ratio").get<double>()};
  }
  PrefillDecodingPress<KnormPress, Decoding> press(prefill, Decoding(Base{}, options, shape));
  replay(name, meta, dec, press);
}

template <class Base>
void replay_base(std::string const& name, json const& meta, json const& p, json const& dec) {
  std::int64_t const interval = dec.at("compression_interval"), buffer = dec.at("hidden_states_buffer_size");
  if (dec.at("name") == "CompressionRatioDecodingPress")
    replay_with<Base>(name, meta, p, dec,
                      CompressionRatioDecodingOptions{interval, dec.at("target_compression_ratio").get<double>(), buffer});
  else
    replay_with<Base>(name, meta, p, dec, DecodingOptions{interval, dec.at("target_size").get<std::int64_t>(), buffer});
}

}  // namespace

TEST_CASE("the decoding presses keep exactly what kvpress's decoding presses keep", "[golden][decoding]") {
  auto const index = kvc_test::load_json(kDecodingDir + "/index.json");
  auto const names = index.at("scenarios").get<std::vector<std::string>>();
  REQUIRE(names.size() >= 5);
  for (auto const& name : names) {
    auto const meta = kvc_test::load_json(kDecodingDir + "/" + name + "/scenario.json");
    json const& p = meta.at("press");
    json const& dec = p.at("name") == "PrefillDecodingPress" ? p.at("decoding_press") : p;
    std::string const base = dec.at("base_press");
    INFO("scenario " << name << " (" << p.at("name").get<std::string>() << ", base press " << base << ")");
    if (base == "KnormPress") replay_base<KnormPress>(name, meta, p, dec);
    else if (base == "KeyDiffPress") replay_base<KeyDiffPress>(name, meta, p, dec);
    else FAIL("unknown base press " << base);
  }
}

}  // namespace KVC_TEST_TU
