// DMS against kvpress 0.5.5's DMSPress: tools/golden/generate_dms.py ran kvpress's own hook through a
// prefill and decoding passes (single tokens and a 4-token chunk) on random-weight Llama and Qwen3
// models, recording what the inner press was handed and which entries kvpress masked. We replay the
// same passes (appending the recorded keys and values, one DMSPress for all layers) and require, per
// (batch, kv head): the entries we removed are exactly the ones kvpress masked, after every pass (count)
// and at the end (set); every entry we kept still holds its original key and value; and DMS's
// compression_ratio equals kvpress's.
#include <catch2/catch.hpp>

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "golden_fixture.hpp"
#include "test_util.hpp"
#include "kvcompress/kvcompress.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using namespace kvcompress;
using nlohmann::json;

namespace {

std::string const kDmsDir = std::string(KVC_GOLDEN_DIR) + "/dms";

RopeConfig rope_from(json const& r, int head_dim) {
  RopeConfig c;
  std::string const type = r.at("rope_type");
  KVC_CHECK(type == "llama3" || type == "default", "DMS fixtures use default or llama3 RoPE, got " << type);
  c.type = type == "llama3" ? RopeType::kLlama3 : RopeType::kDefault;
  c.head_dim = head_dim;
  c.theta = r.at("rope_theta");
  c.max_position_embeddings = r.at("max_position_embeddings");
  if (type == "llama3") {
    c.factor = r.at("factor");
    c.low_freq_factor = r.at("low_freq_factor");
    c.high_freq_factor = r.at("high_freq_factor");
    c.original_max_position_embeddings = r.at("original_max_position_embeddings");
  }
  return c;
}

/// One layer's recorded inputs and kvpress's result, and the cache we replay them into.
struct Layer {
  kvc_test::LoadedTensor<float> keys, values, queries;  // [b, h, processed, d], [b, H, processed, d]
  kvc_test::LoadedTensor<std::int32_t> masked;          // [b, h, total]
  std::vector<std::int64_t> masked_counts;              // after each pass
  std::unique_ptr<kvc_test::OwnedCache<float>> cache;
  std::vector<std::int32_t> positions;
};

template <class Inner>
void replay(std::string const& name, json const& meta, Inner const& inner) {
  std::string const dir = kDmsDir + "/" + name;
  std::int64_t const b = meta.at("batch"), h = meta.at("kv_heads"), q_heads = meta.at("q_heads"), d = meta.at("head_dim");
  std::int64_t const total = meta.at("total_tokens");
  int const num_layers = meta.at("num_layers");
  RotaryEmbedding const rope(rope_from(meta.at("rope"), static_cast<int>(d)));
  DMSOptions const opt{meta.at("threshold").get<float>(), meta.at("sliding_window_size"), meta.at("decoding")};
  DMSPress<Inner> dms(inner, opt, DMSStateShape{num_layers, b, h});

  std::vector<Layer> layers(static_cast<std::size_t>(num_layers));
  for (auto const& lj : meta.at("layers")) {
    Layer& l = layers[lj.at("layer_idx").get<std::size_t>()];
    l.keys = kvc_test::load_tensor<float>(dir, lj.at("keys"));
    l.values = kvc_test::load_tensor<float>(dir, lj.at("values"));
    if (lj.contains("queries")) l.queries = kvc_test::load_tensor<float>(dir, lj.at("queries"));
    l.masked = kvc_test::load_tensor<std::int32_t>(dir, lj.at("masked"));
    l.masked_counts = lj.at("masked_counts").get<std::vector<std::int64_t>>();
    l.cache = std::make_unique<kvc_test::OwnedCache<float>>(b, h, total, d);
    l.cache->lengths.assign(static_cast<std::size_t>(b * h), 0);
    l.positions.assign(static_cast<std::size_t>(b * h * total), -1);
  }

  std::size_t pass = 0;
  for (auto const& p : meta.at("passes")) {
    std::int64_t const pos = p.at("position"), len = p.at("length");
    for (int li = 0; li < num_layers; ++li) {
      Layer& l = layers[static_cast<std::size_t>(li)];
      std::int64_t const processed = l.keys.shape[2];  // kvpress recorded only the passes DMS processed
      if (pos < processed) {
        for (std::int64_t r = 0; r < b * h; ++r)
          for (std::int64_t t = 0; t < len; ++t) {
            std::int32_t const slot = l.cache->lengths[static_cast<std::size_t>(r)]++;
            for (std::int64_t c = 0; c < d; ++c) {
              auto const src = static_cast<std::size_t>((r * processed + pos + t) * d + c);
              l.cache->k[static_cast<std::size_t>((r * total + slot) * d + c)] = l.keys.data[src];
              l.cache->v[static_cast<std::size_t>((r * total + slot) * d + c)] = l.values.data[src];
            }
            l.positions[static_cast<std::size_t>(r * total + slot)] = static_cast<std::int32_t>(pos + t);
          }
      }
      Observation<float> obs;
      obs.layer_idx = li;
      obs.num_layers = num_layers;
      obs.position = pos;
      obs.chunk_length = len;
      obs.rope = &rope;
      if (!l.queries.data.empty() && pos < processed)
        obs.queries = make_tensor4(l.queries.data.data() + pos * d, {b, q_heads, len, d},
                                   {q_heads * processed * d, processed * d, d, 1});
      auto view = make_cache_view(l.cache->k.data(), l.cache->v.data(), l.cache->extents, l.cache->layout,
                                  l.cache->lengths.data(), l.positions.data());
      dms.step(cpu, obs, view);
      INFO(name << ", layer " << li << ", pass " << pass << " (position " << pos << ", " << len << " tokens)");
      CHECK(dms.removed(li) == l.masked_counts[pass]);
    }
    ++pass;
  }

  for (int li = 0; li < num_layers; ++li) {
    Layer const& l = layers[static_cast<std::size_t>(li)];
    std::int64_t const processed = l.keys.shape[2];
    for (std::int64_t r = 0; r < b * h; ++r) {
      INFO(name << ", layer " << li << ", batch " << r / h << ", kv head " << r % h);
      std::int32_t const n = l.cache->lengths[static_cast<std::size_t>(r)];
      std::set<std::int64_t> present, ours, theirs;
      for (std::int32_t s = 0; s < n; ++s) {
        std::int64_t const p = l.positions[static_cast<std::size_t>(r * total + s)];
        present.insert(p);
        if (p >= processed) continue;
        for (std::int64_t c = 0; c < d; ++c) {  // the entry moved intact
          auto const src = static_cast<std::size_t>((r * processed + p) * d + c);
          REQUIRE(l.cache->k[static_cast<std::size_t>((r * total + s) * d + c)] == l.keys.data[src]);
          REQUIRE(l.cache->v[static_cast<std::size_t>((r * total + s) * d + c)] == l.values.data[src]);
        }
      }
      for (std::int64_t p = 0; p < processed; ++p) {
        if (present.count(p) == 0) ours.insert(p);
        if (l.masked.data[static_cast<std::size_t>(r * total + p)] != 0) theirs.insert(p);
      }
      CHECK(ours == theirs);
      CHECK(static_cast<std::int64_t>(present.size()) == n);
    }
  }
  CHECK(dms.compression_ratio() == Approx(meta.at("compression_ratio").get<double>()).epsilon(1e-12));
}

}  // namespace

TEST_CASE("DMS removes exactly the entries kvpress's DMSPress masks", "[golden][dms]") {
  auto const index = kvc_test::load_json(kDmsDir + "/index.json");
  auto const names = index.at("scenarios").get<std::vector<std::string>>();
  REQUIRE(names.size() >= 4);
  for (auto const& name : names) {
    auto const meta = kvc_test::load_json(kDmsDir + "/" + name + "/scenario.json");
    INFO("scenario " << name << " (threshold " << meta.at("threshold") << ", margin " << meta.at("threshold_margin") << ")");
    std::string const press = meta.at("press").at("name");
    json const& params = meta.at("press").at("params");
    if (press == "KnormPress") {
      replay(name, meta, KnormPress{});
    } else if (press == "ExpectedAttentionPress") {
      ExpectedAttentionPress ea;
      ea.n_sink = params.at("n_sink");
      ea.n_future_positions = params.at("n_future_positions");
      replay(name, meta, ea);
    } else {
      FAIL("unknown inner press " << press);
    }
  }
}

}  // namespace KVC_TEST_TU
