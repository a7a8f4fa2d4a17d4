// Every press × ratio {0.1, 0.5, 0.9}: compress keeps exactly n_kept entries per row, they are the
// entries with the highest scores, in position order, with their keys, values and positions intact.
// And every press × non-finite input: an input the press reads is an Error naming the element;
// an input it does not read is not inspected (documented in docs/deviations.md).
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "kvcompress/kvcompress.hpp"
#include "test_util.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using namespace kvcompress;

namespace {

constexpr std::int64_t kB = 2, kH = 2, kQ = 8, kCap = 41, kD = 16, kW = 6, kLayers = 4, kHidden = 24;

RotaryEmbedding make_rope() {
  RopeConfig c;
  c.type = RopeType::kLlama3;
  c.theta = 500000.0;
  c.head_dim = static_cast<int>(kD);
  c.factor = 8.0;
  c.original_max_position_embeddings = 32;
  c.max_position_embeddings = 1024;
  return RotaryEmbedding(c);
}

/// Everything any press may read, for a cache whose rows all hold `n` entries (ObservedAttention
/// needs the full n × n prefill attention, TOVA equal lengths across heads).
struct Inputs {
  RotaryEmbedding rope = make_rope();
  std::vector<float> queries, window_queries, attention, mean, covariance, filters, hidden;

  explicit Inputs(std::int64_t n) {
    hidden = kvc_test::random_vector(static_cast<std::size_t>(kB * n * kHidden), 19);
    queries = kvc_test::random_vector(static_cast<std::size_t>(kB * kQ * kCap * kD), 11);
    window_queries = kvc_test::random_vector(static_cast<std::size_t>(kB * kQ * kW * kD), 12);
    mean = kvc_test::random_vector(static_cast<std::size_t>(kQ * kD), 13, 0.3f);
    // A covariance that is symmetric positive semi-definite: A Aᵀ / d per query head.
    auto const a = kvc_test::random_vector(static_cast<std::size_t>(kQ * kD * kD), 14);
    covariance.assign(a.size(), 0.0f);
    for (std::int64_t q = 0; q < kQ; ++q)
      for (std::int64_t i = 0; i < kD; ++i)
        for (std::int64_t j = 0; j < kD; ++j) {
          float acc = 0.0f;
          for (std::int64_t t = 0; t < kD; ++t) acc += a[(q * kD + i) * kD + t] * a[(q * kD + j) * kD + t];
          covariance[(q * kD + i) * kD + j] = acc / static_cast<float>(kD);
        }
    // Causal softmax rows over random logits.
    auto const z = kvc_test::random_vector(static_cast<std::size_t>(kB * kQ * n * n), 15, 2.0f);
    attention.assign(z.size(), 0.0f);
    for (std::int64_t row = 0; row < kB * kQ * n; ++row) {
      std::int64_t const q = row % n;
      float sum = 0.0f;
      for (std::int64_t i = 0; i <= q; ++i) sum += (attention[row * n + i] = std::exp(z[row * n + i]));
      for (std::int64_t i = 0; i <= q; ++i) attention[row * n + i] /= sum;
    }
    filters = kvc_test::random_vector(static_cast<std::size_t>(kLayers * kH * kD), 16);
  }

  /// What a prefill of n tokens hands over at layer 1 of kLayers.
  [[nodiscard]] Observation<float> observation(std::int64_t n) const {
    Observation<float> obs;
    obs.layer_idx = 1;
    obs.num_layers = static_cast<int>(kLayers);
    obs.queries = make_tensor4(queries.data(), {kB, kQ, n, kD});
    obs.window_queries = make_tensor4(window_queries.data(), {kB, kQ, kW, kD});
    obs.attention = make_tensor4(attention.data(), {kB, kQ, n, n});
    obs.stats = QueryStats{mean.data(), covariance.data(), kQ};
    obs.hidden_states = make_tensor4(hidden.data(), {kB, 1, n, kHidden});
    obs.rope = &rope;
    return obs;
  }
};

/// A cache whose positions record the original slot of each entry.
struct Cache {
  kvc_test::OwnedCache<float> c{kB, kH, kCap, kD};
  std::vector<std::int32_t> positions = std::vector<std::int32_t>(static_cast<std::size_t>(kB * kH * kCap));

  explicit Cache(std::vector<std::int32_t> lengths) {
    c.fill_random(21);
    c.lengths = std::move(lengths);
    for (std::size_t i = 0; i < positions.size(); ++i) positions[i] = static_cast<std::int32_t>(i % kCap);
  }
  KVCacheView<float> view() {
    return make_cache_view(c.k.data(), c.v.data(), c.extents, c.layout, c.lengths.data(), positions.data());
  }
};

/// One press, type-erased: what it needs (ragged rows or not), how to score and compress.
struct PressCase {
  std::string name;
  bool ragged;  // may rows hold different lengths?
  std::function<std::vector<float>(Observation<float> const&, KVCacheView<float> const&)> score;
  std::function<void(Observation<float> const&, KVCacheView<float> const&)> compress;
  std::function<std::int64_t(std::int64_t, Observation<float> const&)> kept;
};

template <class Press>
PressCase make_case(std::string name, Press press, bool ragged = true) {
  return {std::move(name), ragged,
          [press](Observation<float> const& o, KVCacheView<float> const& v) { return score(cpu, press, o, v); },
          [press](Observation<float> const& o, KVCacheView<float> const& v) { compress(cpu, press, o, v); },
          [press](std::int64_t n, Observation<float> const& o) { return detail::press_kept_count(press, n, o); }};
}

std::vector<PressCase> all_presses(double r, float const* filters) {
  ExpectedAttentionPress ea;
  ea.compression_ratio = r;
  ExpectedAttentionPress ea_plain = ea;
  ea_plain.use_covariance = false;
  ea_plain.use_vnorm = false;
  ExpectedAttentionStatsPress eas;
  eas.compression_ratio = r;
  StreamingLLMPress streaming;
  streaming.compression_ratio = r;
  RandomPress random;
  random.compression_ratio = r;
  random.seed = 7;
  LagKVPress lag;
  lag.compression_ratio = r;
  lag.lag_size = 8;
  QFilterPress qf{r, filters, static_cast<int>(kLayers), static_cast<int>(kH), static_cast<int>(kD)};
  PyramidKVPress pyramid;
  pyramid.compression_ratio = r;
  pyramid.window_size = kW;
  constexpr std::int64_t kSketch = 8;
  static std::vector<float> const sketch = kvc_test::random_vector(static_cast<std::size_t>(kB * kH * kD * kSketch), 17);
  LeverageScorePress leverage{r, kSketch, sketch.data()};
  CompactorPress compactor{r};
  compactor.sketch_dimension = kSketch;
  compactor.chunk_size = 16;
  compactor.sketch = sketch.data();
  static std::vector<float> const projection =
      kvc_test::random_vector(static_cast<std::size_t>(kD * CURPress::kProjectionDim), 18, 0.2f);
  CURPress cur_projected{r, 2, CurLeverage::kKey, true, false, 16, projection.data()};
  static std::vector<float> const zap_w1 = kvc_test::random_vector(static_cast<std::size_t>(10 * kHidden), 30),
                                  zap_b1 = kvc_test::random_vector(10, 31), zap_w2 = kvc_test::random_vector(kH * 10, 32),
                                  zap_b2 = kvc_test::random_vector(kH, 33);
  KVzapPress const kvzap{r, KVzapModelType::kMlp, {zap_w1.data(), zap_b1.data(), zap_w2.data(), zap_b2.data(), kHidden, 10, kH}};
  return {make_case("ExpectedAttention", ea),
          make_case("ExpectedAttention (no covariance, no vnorm)", ea_plain),
          make_case("ExpectedAttentionStats", eas),
          make_case("Knorm", KnormPress{r}),
          make_case("StreamingLLM", streaming),
          make_case("Random", random),
          make_case("KeyDiff", KeyDiffPress{r}),
          make_case("LagKV", lag),
          make_case("QFilter", qf),
          make_case("SnapKV", SnapKVPress{r, kW, 5}),
          make_case("PyramidKV", pyramid),
          make_case("TOVA", TOVAPress{r}, false),
          make_case("ObservedAttention", ObservedAttentionPress{r}, false),
          make_case("LeverageScore", leverage, false),
          make_case("NonCausalAttn", NonCausalAttnPress{r, 16}, false),
          make_case("Compactor", compactor, false),
          make_case("CUR", CURPress{r}),
          make_case("CUR (key, global, random projection)", cur_projected),
          make_case("Cap", CapPress{r}),
          make_case("Finch (no re-rotation)", FinchPress{r, 0, true, false, kW}),
          make_case("KVzap (mlp)", kvzap, false)};
}

}  // namespace

TEST_CASE("every press at every ratio keeps exactly its top n_kept scores, in position order", "[press][matrix]") {
  std::vector<std::int32_t> const ragged{41, 29, 37, 33}, uniform{37, 37, 37, 37};
  Inputs const ragged_inputs(kCap), uniform_inputs(37);
  for (double r : {0.1, 0.5, 0.9}) {
    Inputs const dummy(1);
    for (auto const& p : all_presses(r, dummy.filters.data())) {
      CAPTURE(p.name, r);
      Inputs const& in = p.ragged ? ragged_inputs : uniform_inputs;
      Cache cache(p.ragged ? ragged : uniform);
      Cache const original = cache;
      // Queries and attention sized for the longest row; window queries are the chunk's last kW.
      auto const obs = in.observation(p.ragged ? kCap : 37);
      auto const s = p.score(obs, cache.view());
      p.compress(obs, cache.view());
      for (std::int64_t row = 0; row < kB * kH; ++row) {
        CAPTURE(row);
        std::int32_t const n = original.c.lengths[row];
        REQUIRE(cache.c.lengths[row] == p.kept(n, obs));
        std::vector<bool> kept(static_cast<std::size_t>(n), false);
        for (std::int32_t j = 0; j < cache.c.lengths[row]; ++j) {
          std::int32_t const src = cache.positions[row * kCap + j];
          REQUIRE((src >= 0 && src < n));
          if (j > 0) REQUIRE(src > cache.positions[row * kCap + j - 1]);  // position order, no duplicates
          kept[src] = true;
          for (std::int64_t e = 0; e < kD; ++e) {
            REQUIRE(cache.c.k[(row * kCap + j) * kD + e] == original.c.k[(row * kCap + src) * kD + e]);
            REQUIRE(cache.c.v[(row * kCap + j) * kD + e] == original.c.v[(row * kCap + src) * kD + e]);
          }
        }
        float lowest_kept = INFINITY, highest_pruned = -INFINITY;
        for (std::int32_t i = 0; i < n; ++i) {
          float const x = s[row * kCap + i];
          if (kept[i]) lowest_kept = std::min(lowest_kept, x);
          else highest_pruned = std::max(highest_pruned, x);
        }
        REQUIRE(lowest_kept >= highest_pruned);
      }
    }
  }
}

TEST_CASE("every press rejects a non-finite input it reads and ignores one it does not", "[press][matrix][errors]") {
  Inputs in(37);
  std::vector<std::int32_t> const lengths{37, 37, 37, 37};
  // StreamingLLM and Random score by position alone, ObservedAttention from the given attention, KVzap
  // from the hidden states.
  auto const reads_keys = [](std::string const& name) {
    return name != "StreamingLLM" && name != "Random" && name != "ObservedAttention" && name != "KVzap (mlp)";
  };
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    for (auto const& p : all_presses(0.5, in.filters.data())) {
      CAPTURE(p.name, bad);
      auto const obs = in.observation(37);
      Cache cache(lengths);
      cache.c.k[(3 * kCap + 20) * kD + 5] = bad;  // batch 1, kv head 1, slot 20, dim 5
      Cache const before = cache;
      if (reads_keys(p.name)) {
        REQUIRE_THROWS_WITH(p.compress(obs, cache.view()), Catch::Contains("keys[1, 1, 20, 5]") &&
                                                               Catch::Contains("not finite"));
        REQUIRE(cache.c.lengths == before.c.lengths);  // nothing moved
        REQUIRE(cache.positions == before.positions);
      } else {
        REQUIRE_NOTHROW(p.compress(obs, cache.view()));
      }
    }
  }
}

TEST_CASE("non-finite activations are named: queries, window queries, attention, statistics", "[press][matrix][errors]") {
  Inputs in(37);
  std::vector<std::int32_t> const lengths{37, 37, 37, 37};
  float const nan = std::numeric_limits<float>::quiet_NaN();
  auto const press_named = [&](std::string const& name) {
    for (auto& p : all_presses(0.5, in.filters.data()))
      if (p.name == name) return p;
    FAIL("no press " << name);
    return all_presses(0.5, in.filters.data()).front();
  };
  SECTION("queries (ExpectedAttention)") {
    in.queries[((1 * kQ + 6) * 37 + 30) * kD + 2] = nan;  // past the sink queries, so read
    Cache cache(lengths);
    REQUIRE_THROWS_WITH(press_named("ExpectedAttention").compress(in.observation(37), cache.view()),
                        Catch::Contains("observation.queries[1, 6, 30, 2]"));
  }
  SECTION("queries (NonCausalAttn, Compactor, Cap)") {
    in.queries[((1 * kQ + 6) * 37 + 30) * kD + 2] = nan;
    for (char const* name : {"NonCausalAttn", "Compactor", "Cap"}) {
      CAPTURE(name);
      Cache cache(lengths);
      REQUIRE_THROWS_WITH(press_named(name).compress(in.observation(37), cache.view()),
                          Catch::Contains("observation.queries[1, 6, 30, 2]"));
    }
  }
  SECTION("window queries (SnapKV, TOVA reads only the last one)") {
    in.window_queries[((0 * kQ + 3) * kW + kW - 1) * kD + 9] = nan;
    for (char const* name : {"SnapKV", "PyramidKV", "TOVA"}) {
      CAPTURE(name);
      Cache cache(lengths);
      REQUIRE_THROWS_WITH(press_named(name).compress(in.observation(37), cache.view()),
                          Catch::Contains("observation.window_queries[0, 3, 5, 9]"));
    }
  }
  SECTION("hidden states (KVzap)") {
    in.hidden[(1 * 37 + 12) * kHidden + 7] = nan;
    Cache cache(lengths);
    REQUIRE_THROWS_WITH(press_named("KVzap (mlp)").compress(in.observation(37), cache.view()),
                        Catch::Contains("observation.hidden_states[1, 0, 12, 7]"));
  }
  SECTION("attention (ObservedAttention)") {
    in.attention[((1 * kQ + 2) * 37 + 36) * 37 + 10] = nan;
    Cache cache(lengths);
    REQUIRE_THROWS_WITH(press_named("ObservedAttention").compress(in.observation(37), cache.view()),
                        Catch::Contains("observation.attention[1, 2, 36, 10]"));
  }
  SECTION("statistics (ExpectedAttentionStats)") {
    in.mean[3 * kD + 4] = nan;
    Cache cache(lengths);
    REQUIRE_THROWS_WITH(press_named("ExpectedAttentionStats").compress(in.observation(37), cache.view()),
                        Catch::Contains("observation.stats"));
  }
  SECTION("values (ExpectedAttention with use_vnorm, LagKV)") {
    for (char const* name : {"ExpectedAttention", "LagKV"}) {
      CAPTURE(name);
      Cache cache(lengths);
      cache.c.v[(2 * kCap + 11) * kD + 1] = nan;
      REQUIRE_THROWS_WITH(press_named(name).compress(in.observation(37), cache.view()),
                          Catch::Contains("values[1, 0, 11, 1]"));
    }
  }  SECTION("values (NonCausalAttn, Compactor, CUR, Cap)") {
    for (char const* name : {"NonCausalAttn", "Compactor", "CUR", "Cap"}) {
      CAPTURE(name);
      Cache cache(lengths);
      cache.c.v[(2 * kCap + 11) * kD + 1] = nan;
      REQUIRE_THROWS_WITH(press_named(name).compress(in.observation(37), cache.view()),
                          Catch::Contains("values[1, 0, 11, 1]"));
    }
  }
}

// LUKV gives each head its own budget from the caller's curve, so it has its own matrix: every ratio,
// ragged and uniform rows, a curve that prunes the two heads differently. Each row keeps its top
// scores (the protected sinks and window among them), in position order, with its entries intact, and
// as many as the curve says: the floor of (1 − prune)·n, one more for the larger fractional parts until
// the rounded total, at least one.
TEST_CASE("LUKV at every ratio keeps each head's curve budget of top scores, in position order", "[press][matrix][lukv]") {
  std::vector<float> curve(99 * kLayers * kH);  // [99, kLayers, kH]
  for (std::size_t i = 0; i < curve.size(); ++i) {
    auto const t = static_cast<float>(i / (kLayers * kH) + 1) / 100.0f;
    curve[i] = std::clamp(t + (i % 2 == 0 ? 0.15f : -0.2f), 0.0f, 1.0f);
  }
  Inputs const in(kCap);
  for (double r : {0.1, 0.5, 0.9}) {
    for (bool ragged : {true, false}) {
      CAPTURE(r, ragged);
      LUKVPress<KnormPress> press{KnormPress{}, r, 2, 3};
      press.budget_curves = curve.data();
      press.num_layers = kLayers;
      press.kv_heads = kH;
      Cache cache(ragged ? std::vector<std::int32_t>{41, 29, 37, 33} : std::vector<std::int32_t>{37, 37, 37, 37});
      Cache const original = cache;
      auto const obs = in.observation(kCap);
      auto const s = score(cpu, press, obs, cache.view());
      compress(cpu, press, obs, cache.view());
      float const* prune = curve.data() + (press.curve_row() * kLayers + obs.layer_idx) * kH;
      for (std::int64_t b = 0; b < kB; ++b) {
        std::vector<double> ideal(kH);
        double total = 0.0;
        std::vector<std::int64_t> want(kH);
        for (std::int64_t h = 0; h < kH; ++h) {
          ideal[h] = std::clamp(1.0 - double(prune[h]), 0.0, 1.0) * original.c.lengths[b * kH + h];
          total += ideal[h];
          want[h] = static_cast<std::int64_t>(std::floor(ideal[h]));
        }
        std::int64_t extra = std::llround(total) - (want[0] + want[1]);
        if (extra > 0) ++want[ideal[0] - std::floor(ideal[0]) >= ideal[1] - std::floor(ideal[1]) ? 0 : 1];
        if (extra > 1) ++want[ideal[0] - std::floor(ideal[0]) >= ideal[1] - std::floor(ideal[1]) ? 1 : 0];
        for (std::int64_t h = 0; h < kH; ++h) {
          std::int64_t const row = b * kH + h, n = original.c.lengths[row];
          CAPTURE(row);
          REQUIRE(cache.c.lengths[row] == std::clamp<std::int64_t>(want[h], 1, n));
          std::vector<bool> kept(static_cast<std::size_t>(n), false);
          for (std::int32_t j = 0; j < cache.c.lengths[row]; ++j) {
            std::int32_t const src = cache.positions[row * kCap + j];
            if (j > 0) REQUIRE(src > cache.positions[row * kCap + j - 1]);
            kept[src] = true;
            for (std::int64_t e = 0; e < kD; ++e)
              REQUIRE(cache.c.v[(row * kCap + j) * kD + e] == original.c.v[(row * kCap + src) * kD + e]);
          }
          float lowest_kept = INFINITY, highest_pruned = -INFINITY;
          for (std::int32_t i = 0; i < n; ++i)
            (kept[i] ? lowest_kept : highest_pruned) =
                kept[i] ? std::min(lowest_kept, s[row * kCap + i]) : std::max(highest_pruned, s[row * kCap + i]);
          REQUIRE(lowest_kept >= highest_pruned);
          if (cache.c.lengths[row] >= 5) CHECK((kept[0] && kept[1] && kept[n - 1] && kept[n - 3]));  // sinks, window
        }
      }
    }
  }
  SECTION("a NaN key is named, nothing moves") {
    LUKVPress<KnormPress> press{KnormPress{}, 0.5};
    press.budget_curves = curve.data();
    press.num_layers = kLayers;
    press.kv_heads = kH;
    Cache cache({37, 37, 37, 37});
    cache.c.k[(3 * kCap + 20) * kD + 5] = std::numeric_limits<float>::quiet_NaN();
    REQUIRE_THROWS_WITH(compress(cpu, press, in.observation(37), cache.view()), Catch::Contains("keys[1, 1, 20, 5]"));
    CHECK(cache.c.lengths == std::vector<std::int32_t>{37, 37, 37, 37});
  }
}

}  // namespace KVC_TEST_TU
