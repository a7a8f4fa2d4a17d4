// KVCompose, ThinK, KVzap, FastKVzip, KVzip and the cross-layer eviction: the bad inputs they reject
// (docs/reliability.md) and what every ratio keeps. Their scores and decisions against kvpress are in
// tests/golden_tests/test_model_presses_golden.cpp.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "kvc_engine/compression/learned_scorers.hpp"
#include "kvcompress/kvcompress.hpp"
#include "test_util.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using namespace kvcompress;
using Catch::Matchers::Contains;

namespace {

constexpr std::int64_t kH = 2, kQ = 4, kN = 24, kD = 8, kHidden = 12;
constexpr int kLayers = 3;

/// A batch-1 cache of kN entries per kv head whose positions record the original slots.
struct Cache {
  kvc_test::OwnedCache<float> c{1, kH, kN, kD};
  std::vector<std::int32_t> positions = std::vector<std::int32_t>(static_cast<std::size_t>(kH * kN));
  explicit Cache(std::uint32_t seed, std::int64_t batch = 1) : c(batch, kH, kN, kD) {
    c.fill_random(seed);
    positions.resize(static_cast<std::size_t>(batch * kH * kN));
    for (std::size_t i = 0; i < positions.size(); ++i) positions[i] = static_cast<std::int32_t>(i % kN);
  }
  KVCacheView<float> view() { return make_cache_view(c.k.data(), c.v.data(), c.extents, c.layout, c.lengths.data(), positions.data()); }
};

/// Causal-free softmax rows [1, kQ, q, n] of random logits (a replay pass's attention).
std::vector<float> softmax_rows(std::int64_t q, std::int64_t n, std::uint32_t seed) {
  auto z = kvc_test::random_vector(static_cast<std::size_t>(kQ * q * n), seed, 2.0f);
  for (std::int64_t r = 0; r < kQ * q; ++r) {
    float sum = 0.0f;
    for (std::int64_t i = 0; i < n; ++i) sum += (z[static_cast<std::size_t>(r * n + i)] = std::exp(z[static_cast<std::size_t>(r * n + i)]));
    for (std::int64_t i = 0; i < n; ++i) z[static_cast<std::size_t>(r * n + i)] /= sum;
  }
  return z;
}

/// Each row holds, in position order, entries no lower-scoring than any it dropped.
void require_top_in_order(Cache const& cache, float const* scores /*[kH, kN]*/) {
  for (std::int64_t h = 0; h < kH; ++h) {
    std::int32_t const len = cache.c.lengths[static_cast<std::size_t>(h)];
    std::vector<bool> kept(kN, false);
    for (std::int32_t j = 0; j < len; ++j) {
      std::int32_t const src = cache.positions[static_cast<std::size_t>(h * kN + j)];
      if (j > 0) REQUIRE(src > cache.positions[static_cast<std::size_t>(h * kN + j - 1)]);
      kept[static_cast<std::size_t>(src)] = true;
    }
    float lo = INFINITY, hi = -INFINITY;
    for (std::int64_t i = 0; i < kN; ++i) {
      float const s = scores[h * kN + i];
      if (kept[static_cast<std::size_t>(i)]) lo = std::min(lo, s);
      else hi = std::max(hi, s);
    }
    REQUIRE(lo >= hi);
  }
}

}  // namespace

TEST_CASE("KVComposePress rejects bad parameters and inputs", "[press][kvcompose][errors]") {
  KVComposePress press;
  press.compression_ratio = 0.5;
  auto const a = softmax_rows(kN, 2 * kN, 1);
  auto const attention = make_tensor4(a.data(), {1, kQ, kN, 2 * kN});
  SECTION("ratio or keep_token_lower_bound out of range") {
    press.compression_ratio = 1.0;
    REQUIRE_THROWS_WITH(KVComposeStatistics(press, kLayers, kQ, kN), Contains("compression_ratio must be in [0, 1), got 1"));
    press.compression_ratio = 0.5;
    press.keep_token_lower_bound = -1;
    REQUIRE_THROWS_WITH(KVComposeStatistics(press, kLayers, kQ, kN),
                        Contains("KVComposePress keep_token_lower_bound must be non-negative, got -1"));
  }
  SECTION("attention of another head count, or not beyond the context") {
    KVComposeStatistics stats(press, kLayers, kQ + 1, kN);
    REQUIRE_THROWS_WITH(stats.add(cpu, 0, attention), Contains("attention has 4 query heads, the statistics 5"));
    KVComposeStatistics exact(press, kLayers, kQ, 2 * kN);
    REQUIRE_THROWS_WITH(exact.add(cpu, 0, attention), Contains("must cover the context_length = 48 keys and the replay's own, got n = 48"));
    REQUIRE_THROWS_WITH(exact.add(cpu, kLayers, attention), Contains("layer must be in [0, 3), got 3"));
  }
  SECTION("a non-finite attention probability") {
    auto bad = a;
    bad[static_cast<std::size_t>(2 * kN + 5)] = NAN;
    KVComposeStatistics stats(press, kLayers, kQ, kN);
    REQUIRE_THROWS_WITH(stats.add(cpu, 0, make_tensor4(bad.data(), {1, kQ, kN, 2 * kN})),
                        Contains("KVComposeStatistics attention[0, 0, 1, 5] is not finite: nan"));
  }
  SECTION("a layer without a replay pass, kv heads not dividing the query heads") {
    KVComposeStatistics stats(press, kLayers, kQ, kN);
    stats.add(cpu, 0, attention);
    REQUIRE_THROWS_WITH(kvcompose_plan(cpu, press, stats, kH), Contains("kvcompose_plan: layer 1 has no replay pass"));
    REQUIRE_THROWS_WITH(kvcompose_plan(cpu, press, stats, 3), Contains("kv_heads must divide the statistics' q_heads = 4, got 3"));
  }
  SECTION("rows that do not hold the context") {
    KVComposeStatistics stats(press, kLayers, kQ, kN);
    for (int l = 0; l < kLayers; ++l) stats.add(cpu, l, attention);
    auto const plan = kvcompose_plan(cpu, press, stats, kH);
    Cache cache(3);
    cache.c.lengths[1] = kN - 1;
    std::vector<std::byte> scratch(kvcompose_compress_workspace_bytes(cpu, cache.view()));
    REQUIRE_THROWS_WITH(kvcompose_compress(cpu, plan, 0, cache.view(), Workspace(scratch.data(), scratch.size())),
                        Contains("kvcompose_compress: row 1 holds 23 entries, the plan scores the context_length = 24"));
  }
}

TEST_CASE("KVCompose at every ratio: the global budget, equal counts per layer when structured, each row its top scores",
          "[press][kvcompose]") {
  for (bool structured : {true, false})
    for (double r : {0.1, 0.5, 0.9}) {
      CAPTURE(structured, r);
      KVComposePress press;
      press.structured = structured;
      press.compression_ratio = r;
      KVComposeStatistics stats(press, kLayers, kQ, kN);
      std::vector<std::vector<float>> passes;
      for (int l = 0; l < kLayers; ++l) {
        passes.push_back(softmax_rows(5, kN + 5, static_cast<std::uint32_t>(10 + l)));
        stats.add(cpu, l, make_tensor4(passes.back().data(), {1, kQ, 5, kN + 5}));
      }
      auto const plan = kvcompose_plan(cpu, press, stats, kH);
      std::int64_t total = 0;
      for (int l = 0; l < kLayers; ++l) {
        Cache cache(static_cast<std::uint32_t>(20 + l));
        std::vector<std::byte> scratch(kvcompose_compress_workspace_bytes(cpu, cache.view()));
        kvcompose_compress(cpu, plan, l, cache.view(), Workspace(scratch.data(), scratch.size()));
        if (structured) REQUIRE(cache.c.lengths[0] == cache.c.lengths[1]);
        for (std::int64_t h = 0; h < kH; ++h) total += cache.c.lengths[static_cast<std::size_t>(h)];
        require_top_in_order(cache, plan.scores.data() + l * kH * kN);
      }
      if (structured) REQUIRE(total >= kH * kept_count(kLayers * kN, r));  // per-layer floors may add
      else REQUIRE(total == kept_count(kLayers * kH * kN, r));
    }
}

TEST_CASE("ThinKPress rejects bad parameters and inputs", "[press][think][errors]") {
  Cache cache(4);
  auto window = kvc_test::random_vector(static_cast<std::size_t>(kQ * 3 * kD), 5);
  Observation<float> obs;
  obs.window_queries = make_tensor4(window.data(), {1, kQ, 3, kD});
  ThinKPress press{0.5, 3};
  std::vector<float> packed(static_cast<std::size_t>(kH * kN * kD));
  std::vector<std::int32_t> channels(static_cast<std::size_t>(kH * kD));
  std::vector<std::byte> scratch(press.workspace_bytes(cpu, cache.view()));
  auto const run = [&](ThinKPress const& p, Observation<float> const& o, std::int64_t kept) {
    p.compress(cpu, o, cache.view(), PackedKeys<float>{packed.data(), channels.data(), kept}, Workspace(scratch.data(), scratch.size()));
  };
  SECTION("ratio or window out of range") {
    REQUIRE_THROWS_WITH(run(ThinKPress{1.0, 3}, obs, 4), Contains("ThinKPress key_channel_compression_ratio must be in [0, 1), got 1"));
    REQUIRE_THROWS_WITH(run(ThinKPress{0.5, 0}, obs, 4), Contains("ThinKPress window_size must be positive, got 0"));
  }
  SECTION("window queries missing or longer than the window") {
    REQUIRE_THROWS_WITH(run(press, Observation<float>{}, 4), Contains("observation.window_queries (post-RoPE queries of the chunk's last 3"));
    REQUIRE_THROWS_WITH(run(ThinKPress{0.5, 2}, obs, 4), Contains("observation.window_queries holds 3 tokens, more than window_size = 2"));
  }
  SECTION("packed keys of another width") {
    REQUIRE_THROWS_WITH(run(press, obs, 5), Contains("ThinKPress: packed keys hold 5 channels, the press keeps 4 of head_dim = 8"));
  }
  SECTION("a non-finite window query") {
    window[7] = INFINITY;
    REQUIRE_THROWS_WITH(run(press, obs, 4), Contains("observation.window_queries[0, 0, 0, 7]"));
  }
  SECTION("a packed channel index outside head_dim") {
    run(press, obs, 4);
    channels[3] = static_cast<std::int32_t>(kD);
    std::vector<float> out(static_cast<std::size_t>(kQ * 3 * kD));
    std::vector<std::byte> as(reference_attention_workspace_bytes(cpu, obs.window_queries, cache.view()));
    REQUIRE_THROWS_WITH(reference_attention_packed(cpu, obs.window_queries, cache.view(), PackedKeys<float>{packed.data(), channels.data(), 4},
                                                   out.data(), AttentionOptions{}, Workspace(as.data(), as.size())),
                        Contains("packed keys channels[3] = 8 is outside [0, head_dim = 8)"));
  }
}

TEST_CASE("KVzapPress rejects bad weights and inputs", "[press][kvzap][errors]") {
  Cache cache(6);
  auto hidden = kvc_test::random_vector(static_cast<std::size_t>(kN * kHidden), 7);
  auto const w1 = kvc_test::random_vector(static_cast<std::size_t>(5 * kHidden), 8);
  auto const b1 = kvc_test::random_vector(5, 9), w2 = kvc_test::random_vector(static_cast<std::size_t>(kH * 5), 10),
             b2 = kvc_test::random_vector(kH, 11);
  Observation<float> obs;
  obs.hidden_states = make_tensor4(hidden.data(), {1, 1, kN, kHidden});
  KVzapPress press{0.5, KVzapModelType::kMlp, {w1.data(), b1.data(), w2.data(), b2.data(), kHidden, 5, kH}};
  SECTION("weights missing or of another shape") {
    KVzapPress p = press;
    p.weights.w1 = nullptr;
    REQUIRE_THROWS_WITH(compress(cpu, p, obs, cache.view()), Contains("KVzapPress weights w1 and b1 must be given"));
    p = press;
    p.weights.kv_heads = 3;
    REQUIRE_THROWS_WITH(compress(cpu, p, obs, cache.view()), Contains("KVzapPress weights score 3 kv heads, the cache has 2"));
    p = press;
    p.weights.w2 = nullptr;
    REQUIRE_THROWS_WITH(compress(cpu, p, obs, cache.view()), Contains("KVzapPress model_type mlp needs weights.hidden_dim > 0 (got 5), w2 and b2"));
    p = press;
    p.model_type = KVzapModelType::kLinear;
    REQUIRE_THROWS_WITH(compress(cpu, p, obs, cache.view()), Contains("KVzapPress model_type linear takes w1 and b1 only"));
  }
  SECTION("hidden states missing, or not one per cached entry") {
    REQUIRE_THROWS_WITH(compress(cpu, press, Observation<float>{}, cache.view()), Contains("observation.hidden_states ([batch, 1, q_len, hidden_size]"));
    Observation<float> shorter;
    shorter.hidden_states = make_tensor4(hidden.data(), {1, 1, kN - 1, kHidden});
    REQUIRE_THROWS_WITH(compress(cpu, press, shorter, cache.view()), Contains("row 0 holds 24 entries, the hidden states 23"));
  }
  SECTION("a non-finite hidden state") {
    hidden[static_cast<std::size_t>(3 * kHidden + 2)] = NAN;
    REQUIRE_THROWS_WITH(compress(cpu, press, obs, cache.view()), Contains("observation.hidden_states[0, 0, 3, 2]"));
  }
}

TEST_CASE("FastKVzipPress rejects bad parameters and inputs", "[press][fastkvzip][errors]") {
  constexpr std::int64_t G = kQ / kH, d = 4, sink = 3;
  auto const qw = kvc_test::random_vector(static_cast<std::size_t>(kH * G * d * kHidden), 12), qb = kvc_test::random_vector(kH * G * d, 13),
             kw = kvc_test::random_vector(static_cast<std::size_t>(kH * d * kHidden), 14), norm = std::vector<float>(d, 1.0f),
             kb = kvc_test::random_vector(kH * sink * d, 15), bias = kvc_test::random_vector(kH * G, 16);
  auto hidden = kvc_test::random_vector(static_cast<std::size_t>(kN * kHidden), 17);
  FastKVzipGate const gate{qw.data(), qb.data(), kw.data(), norm.data(), norm.data(), kb.data(), bias.data(), kHidden, kH, G, d, sink};
  std::vector<float> scores(static_cast<std::size_t>(kH * kN));
  auto const x = make_tensor4(hidden.data(), {1, 1, kN, kHidden});
  SECTION("parameters out of range") {
    REQUIRE_THROWS_WITH(FastKVzipPress({0.5, false, -1}).score_layer(cpu, gate, x, scores.data()),
                        Contains("FastKVzipPress n_sink must be non-negative, got -1"));
    REQUIRE_THROWS_WITH(FastKVzipPress({0.5, false, 4, 4096, 2.0}).score_layer(cpu, gate, x, scores.data()),
                        Contains("FastKVzipPress window_ratio must be in [0, 1], got 2"));
  }
  SECTION("gate weights missing, hidden states not batch 1") {
    FastKVzipGate g = gate;
    g.k_base = nullptr;
    REQUIRE_THROWS_WITH(FastKVzipPress{0.5}.score_layer(cpu, g, x, scores.data()), Contains("FastKVzipGate: every weight must be given"));
    REQUIRE_THROWS_WITH(FastKVzipPress{0.5}.score_layer(cpu, gate, make_tensor4(hidden.data(), {2, 1, kN / 2, kHidden}), scores.data()),
                        Contains("FastKVzipPress hidden states must be [1, 1, n, hidden_size = 12] (batch 1), got [2, 1, 12, 12]"));
  }
  SECTION("a non-finite hidden state") {
    hidden[5] = -INFINITY;
    REQUIRE_THROWS_WITH(FastKVzipPress{0.5}.score_layer(cpu, gate, x, scores.data()), Contains("FastKVzipPress hidden states[0, 0, 0, 5]"));
  }
}

TEST_CASE("KVzipPress rejects bad parameters and inputs", "[press][kvzip][errors]") {
  constexpr std::int64_t q = 6;
  RopeConfig rc;
  rc.head_dim = static_cast<int>(kD);
  RotaryEmbedding const rope(rc);
  kvc_test::OwnedCache<float> c{1, kH, kN + q, kD};
  c.fill_random(18);
  auto const queries = kvc_test::random_vector(static_cast<std::size_t>(kQ * q * kD), 19);
  Observation<float> obs;
  obs.queries = make_tensor4(queries.data(), {1, kQ, q, kD});
  obs.rope = &rope;
  obs.position = kN;
  std::vector<float> scores(static_cast<std::size_t>(kH * kN));
  SECTION("parameters out of range") {
    REQUIRE_THROWS_WITH(KVzipPress({0.5, false, 4, false, 0}).score_chunk(cpu, obs, c.view(), kN, 0, kN, scores.data()),
                        Contains("KVzipPress chunk_size must be positive, got 0"));
    REQUIRE_THROWS_WITH(KVzipPress({0.5, false, -2}).score_chunk(cpu, obs, c.view(), kN, 0, kN, scores.data()),
                        Contains("KVzipPress n_sink must be non-negative, got -2"));
  }
  SECTION("queries or RoPE missing, a chunk outside the context, rows not holding context and input") {
    Observation<float> no_rope = obs;
    no_rope.rope = nullptr;
    REQUIRE_THROWS_WITH(KVzipPress{0.5}.score_chunk(cpu, no_rope, c.view(), kN, 0, kN, scores.data()),
                        Contains("observation.rope must be set: KVzipPress rotates the reconstruction queries"));
    REQUIRE_THROWS_WITH(KVzipPress{0.5}.score_chunk(cpu, obs, c.view(), kN, 10, kN + 1, scores.data()),
                        Contains("KVzipPress chunk [10, 25) must be a non-empty part of the context [0, 24)"));
    c.lengths[1] = kN + q - 1;
    REQUIRE_THROWS_WITH(KVzipPress{0.5}.score_chunk(cpu, obs, c.view(), kN, 0, kN, scores.data()),
                        Contains("KVzipPress: row 1 holds 29 entries, the context_length + reconstruction length = 30"));
  }
  SECTION("KVzip+ without hidden states or W_o") {
    REQUIRE_THROWS_WITH(KVzipPress({0.5, false, 4, true}).score_chunk(cpu, obs, c.view(), kN, 0, kN, scores.data()),
                        Contains("KVzipPress kvzip_plus_normalization needs observation.hidden_states"));
  }
}

TEST_CASE("cross-layer eviction rejects a batch above 1 and more evictions than entries", "[press][kvzip][errors]") {
  Cache two(21, 2);
  std::vector<float> scores = kvc_test::random_vector(static_cast<std::size_t>(2 * kH * kN), 22);
  std::vector<std::byte> scratch(evict_lowest_across_heads_workspace_bytes(cpu, two.view()));
  REQUIRE_THROWS_WITH(evict_lowest_across_heads(cpu, two.view(), scores.data(), 3, Workspace(scratch.data(), scratch.size())),
                      Contains("ranks one sequence's heads together (kvpress: batch 1), got batch = 2"));
  Cache one(23);
  REQUIRE_THROWS_WITH(evict_lowest_across_heads(cpu, one.view(), scores.data(), kH * kN + 1, Workspace(scratch.data(), scratch.size())),
                      Contains("n_pruned = 49 must be in [0, 48]"));
  std::vector<std::int64_t> pruned(kLayers);
  REQUIRE_THROWS_WITH(cross_layer_pruned_counts(scores.data(), kLayers, kH * kN / kLayers, 1.0, false, pruned.data()),
                      Contains("compression_ratio must be in [0, 1), got 1"));
}

TEST_CASE("cross-layer eviction at every ratio: the global count, each row its top scores in position order", "[press][kvzip]") {
  std::vector<float> const scores = kvc_test::random_vector(static_cast<std::size_t>(kLayers * kH * kN), 24);
  for (bool layerwise : {false, true})
    for (double r : {0.1, 0.5, 0.9}) {
      CAPTURE(layerwise, r);
      std::vector<std::int64_t> pruned(kLayers);
      cross_layer_pruned_counts(scores.data(), kLayers, kH * kN, r, layerwise, pruned.data());
      std::int64_t total = 0;
      for (int l = 0; l < kLayers; ++l) {
        Cache cache(static_cast<std::uint32_t>(30 + l));
        std::vector<std::byte> scratch(evict_lowest_across_heads_workspace_bytes(cpu, cache.view()));
        float const* s = scores.data() + l * kH * kN;
        evict_lowest_across_heads(cpu, cache.view(), s, pruned[static_cast<std::size_t>(l)], Workspace(scratch.data(), scratch.size()));
        REQUIRE(cache.c.lengths[0] + cache.c.lengths[1] == kH * kN - pruned[static_cast<std::size_t>(l)]);
        total += pruned[static_cast<std::size_t>(l)];
        require_top_in_order(cache, s);
      }
      auto const per_layer = static_cast<std::int64_t>(static_cast<double>(kH * kN) * r);
      REQUIRE(total == (layerwise ? kLayers * per_layer : static_cast<std::int64_t>(static_cast<double>(kLayers * kH * kN) * r)));
    }
}

TEST_CASE("engine: learned-scorer checkpoints name a missing or misshapen tensor", "[engine][kvzap][errors]") {
  auto const file = [](std::string const& header, std::size_t data) {
    std::vector<unsigned char> bytes(8);
    for (int i = 0; i < 8; ++i) bytes[static_cast<std::size_t>(i)] = static_cast<unsigned char>(header.size() >> (8 * i));
    bytes.insert(bytes.end(), header.begin(), header.end());
    bytes.resize(bytes.size() + data, 0);
    return kvc_engine::SafetensorsFile(std::move(bytes), "scorer.safetensors");
  };
  SECTION("no surrogate or gate in the file") {
    auto const f = file(R"({"other":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4);
    REQUIRE_THROWS_WITH(kvc_engine::load_kvzap(f), Contains("holds no KVzap surrogate"));
    REQUIRE_THROWS_WITH(kvc_engine::load_fast_kvzip(f), Contains("holds no FastKVzip gate: no tensor '0.q_proj.weight'"));
  }
  SECTION("a tensor of another shape") {
    auto const f = file(R"({"layers.0.weight":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
                        R"("layers.0.bias":{"dtype":"F32","shape":[3],"data_offsets":[24,36]}})",
                        36);
    REQUIRE_THROWS_WITH(kvc_engine::load_kvzap(f), Contains("tensor 'layers.0.bias' has shape [3], expected [2]"));
  }
}

}  // namespace KVC_TEST_TU
