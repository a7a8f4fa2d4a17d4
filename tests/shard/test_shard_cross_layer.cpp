// KVzip, FastKVzip and KVCompose on tensor-parallel shards: P threads, each a rank holding some kv
// heads of every layer of a small model, against the whole model compressed on one thread with the
// single-process functions. Their evictions rank every head of every layer together, so the shard
// forms select across ranks; the scores, counts and kept entries must be the whole model's exactly.

#include <catch2/catch.hpp>
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <vector>

#include "shard/cross_layer_harness.hpp"
#include "shard/rank_threads.hpp"
#include "shard/shard_harness.hpp"
#include "shard/thread_communicator.hpp"

using namespace kvcompress;
using kvc_shard::Evicted;
using kvc_shard::Gates;
using kvc_shard::ScoreFn;
using kvc_shard::evict_model;
using kvc_shard::fast_kvzip_scores;
using kvc_shard::kContext;
using kvc_shard::kGateHidden;
using kvc_shard::kGroup;
using kvc_shard::kHeads;
using kvc_shard::kLayers;
using kvc_shard::kRepeat;
using kvc_shard::kTokens;
using kvc_shard::kvzip_scores;
using kvc_shard::make_model;
using kvc_shard::Layer;
using kvc_shard::message_of;
using kvc_shard::on_ranks;
using kvc_shard::Part;
using kvc_shard::require_no_errors;
using kvc_shard::Split;
using kvc_shard::ThreadCommunicator;

namespace {

/// The eviction on every split of `splits` against the whole model: bit-identical scores, the same
/// counts per layer, the same kept entries.
void check_cross_layer(std::deque<Layer> const& model, std::int64_t ctx, ScoreFn const& score, KVzipPress const* sinks,
                       double ratio, bool layerwise, Split const& split) {
  Evicted const whole = evict_model(model, 0, kHeads, ctx, {}, score, sinks, ratio, layerwise);
  std::int64_t evicted = 0;
  for (std::int64_t p : whole.pruned) evicted += p;
  CHECK(evicted > 0);
  int const p = static_cast<int>(split.size());
  std::vector<Evicted> got(split.size());
  require_no_errors(on_ranks(p, [&](int r, ThreadCommunicator& comm) {
    std::int64_t const first = kvc_shard::first_head(split, r), count = split[static_cast<std::size_t>(r)];
    got[static_cast<std::size_t>(r)] = evict_model(model, first, count, ctx, {&comm, first, kHeads}, score, sinks, ratio, layerwise);
  }));
  for (int r = 0; r < p; ++r) {
    std::int64_t const first = kvc_shard::first_head(split, r), count = split[static_cast<std::size_t>(r)];
    Evicted const& mine = got[static_cast<std::size_t>(r)];
    INFO("rank " << r << " of " << p << ", kv heads [" << first << ", +" << count << ")");
    CHECK(mine.pruned == whole.pruned);
    for (int l = 0; l < kLayers; ++l) {
      INFO("layer " << l);
      for (std::int64_t h = 0; h < count; ++h) {
        auto const a = mine.scores.begin() + (l * count + h) * ctx, b = whole.scores.begin() + (l * kHeads + first + h) * ctx;
        CHECK(std::vector<float>(a, a + ctx) == std::vector<float>(b, b + ctx));
      }
      CHECK(kvc_shard::kept(mine.parts[static_cast<std::size_t>(l)].cache, 0, count) ==
            kvc_shard::kept(whole.parts[static_cast<std::size_t>(l)].cache, first, count));
    }
  }
}

std::vector<Split> test_splits() {
  std::vector<Split> out;
  for (int p : {2, 4})
    for (Split const& s : kvc_shard::splits_for(p, kHeads)) out.push_back(s);
  out.push_back({1, 3, 2});
  return out;
}

std::string name_of(Split const& split) {
  std::string s;
  for (std::int64_t c : split) s += std::to_string(c);
  return s;
}

}  // namespace

TEST_CASE("KVzip on P thread ranks scores, protects and evicts what one process does on the whole model", "[shard][kvzip]") {
  std::deque<Layer> const model = make_model(kContext + kRepeat, 61);
  std::vector<float> const hidden = kvc_test::random_vector(static_cast<std::size_t>(kLayers * kRepeat * 24), 62);
  KVzipPress plain{0.6};
  plain.chunk_size = 10;
  plain.n_sink = 2;
  KVzipPress plus = plain;
  plus.kvzip_plus_normalization = true;
  for (Split const& split : test_splits()) {
    DYNAMIC_SECTION("KVzip, split " << name_of(split)) {
      check_cross_layer(model, kContext, kvzip_scores(model, plain, hidden), &plain, plain.compression_ratio, false, split);
    }
    DYNAMIC_SECTION("KVzip+, split " << name_of(split)) {
      check_cross_layer(model, kContext, kvzip_scores(model, plus, hidden), &plus, 0.4, false, split);
    }
    DYNAMIC_SECTION("KVzip layerwise, split " << name_of(split)) {
      check_cross_layer(model, kContext, kvzip_scores(model, plain, hidden), &plain, plain.compression_ratio, true, split);
    }
  }
}

namespace {

}  // namespace

TEST_CASE("FastKVzip on P thread ranks evicts what one process does on the whole model, ties included", "[shard][fastkvzip]") {
  std::deque<Layer> const model = make_model(kTokens, 81);
  Gates const gates;
  std::vector<float> const hidden = kvc_test::random_vector(static_cast<std::size_t>(kLayers * kTokens * kGateHidden), 82);
  FastKVzipPress press{0.5};
  press.window_ratio = 0.1;  // the last 3 entries and the first 4 score 1: exact ties across heads and layers
  FastKVzipPress tight = press;
  tight.compression_ratio = 0.9;  // keeps fewer entries than score 1: the selection ends inside the ties
  for (Split const& split : test_splits()) {
    DYNAMIC_SECTION("ratio 0.5, split " << name_of(split)) {
      check_cross_layer(model, kTokens, fast_kvzip_scores(press, gates, hidden), nullptr, press.compression_ratio, false, split);
    }
    DYNAMIC_SECTION("ratio 0.9, split " << name_of(split)) {
      check_cross_layer(model, kTokens, fast_kvzip_scores(tight, gates, hidden), nullptr, tight.compression_ratio, false, split);
    }
  }
}

TEST_CASE("The cross-layer eviction on P thread ranks breaks exact ties as one process does", "[shard]") {
  std::deque<Layer> const model = make_model(kTokens, 91);
  // Scores from three values, with -0 beside +0: almost every comparison is a tie.
  std::vector<float> table = kvc_test::random_vector(static_cast<std::size_t>(kLayers * kHeads * kTokens), 92);
  for (std::size_t i = 0; i < table.size(); ++i) table[i] = table[i] < -0.4f ? -1.0f : table[i] < 0.4f ? (i % 2 == 0 ? 0.0f : -0.0f) : 2.0f;
  ScoreFn const tied = [&table](int l, kvc_test::OwnedCache<float>&, std::int64_t first, std::int64_t count, TensorParallelShard const&,
                                float* out) {
    std::copy_n(table.begin() + (l * kHeads + first) * kTokens, count * kTokens, out);
  };
  for (double ratio : {0.3, 0.5, 0.8})
    for (Split const& split : test_splits())
      DYNAMIC_SECTION("ratio " << ratio << ", split " << name_of(split)) {
        check_cross_layer(model, kTokens, tied, nullptr, ratio, false, split);
      }
}

namespace {

constexpr std::int64_t kReplay = 3;  // KVCompose: rows of each replay pass

/// Replay attention per layer and pass, [1, q_heads, kReplay, kTokens + kReplay].
std::vector<std::vector<float>> replay_attention() {
  std::vector<std::vector<float>> out;
  for (int i = 0; i < 2 * kLayers; ++i) {
    auto a = kvc_test::random_vector(static_cast<std::size_t>(kHeads * kGroup * kReplay * (kTokens + kReplay)), 100u + static_cast<std::uint32_t>(i));
    for (float& x : a) x = std::abs(x) / 8.0f;
    out.push_back(std::move(a));
  }
  return out;
}

/// KVCompose on heads [first, first + count) of every layer: the plan and the compressed parts.
struct Composed {
  KVComposePlan plan;
  std::deque<Part> parts;
};

Composed compose(std::deque<Layer> const& model, std::vector<std::vector<float>> const& attention, KVComposePress const& press,
                 std::int64_t first, std::int64_t count, TensorParallelShard const& shard) {
  Composed out;
  std::int64_t const qh = kHeads * kGroup, m = kTokens + kReplay;
  KVComposeStatistics stats(press, kLayers, count * kGroup, kTokens);
  for (int l = 0; l < kLayers; ++l)
    for (int pass = 0; pass < 2; ++pass) {
      float const* a = attention[static_cast<std::size_t>(2 * l + pass)].data();
      stats.add(cpu, l, make_tensor4(a + first * kGroup * kReplay * m, {1, count * kGroup, kReplay, m}, {qh * kReplay * m, kReplay * m, m, 1}));
    }
  for (Layer const& layer : model) out.parts.emplace_back(layer, first, count);
  std::vector<float> norms(static_cast<std::size_t>(kLayers * count * kTokens));  // [layers, count, ctx]
  for (int l = 0; l < kLayers; ++l)
    kvcompose_value_norms(out.parts[static_cast<std::size_t>(l)].cache.view(), kTokens, norms.data() + l * count * kTokens);
  out.plan = shard.split() ? kvcompose_plan(cpu, press, stats, count, norms.data(), shard) : kvcompose_plan(cpu, press, stats, count, norms.data());
  for (int l = 0; l < kLayers; ++l) {
    auto& cache = out.parts[static_cast<std::size_t>(l)].cache;
    std::vector<std::byte> scratch(kvcompose_compress_workspace_bytes(cpu, cache.view()));
    Workspace ws(scratch.data(), scratch.size());
    if (shard.split())
      kvcompose_compress(cpu, out.plan, l, cache.view(), ws, shard);
    else
      kvcompose_compress(cpu, out.plan, l, cache.view(), ws);
  }
  return out;
}

}  // namespace

TEST_CASE("KVCompose on P thread ranks plans and keeps what one process does on the whole model, bit for bit", "[shard][kvcompose]") {
  std::deque<Layer> const model = make_model(kTokens, 111);
  auto const attention = replay_attention();
  KVComposePress structured;
  structured.compression_ratio = 0.6;
  KVComposePress unstructured = structured;
  unstructured.structured = false;
  unstructured.add_v_norm = true;
  unstructured.keep_token_lower_bound = 2;
  KVComposePress other = unstructured;
  other.agg_task = KVComposeAggregation::kMean;
  other.agg_group = KVComposeAggregation::kMax;
  other.agg_head = KVComposeAggregation::kMax;
  other.add_mean_across_heads = false;
  struct Case {
    char const* name;
    KVComposePress press;
  };
  for (Case const& c : {Case{"structured", structured}, Case{"unstructured, value norms, lower bound", unstructured},
                        Case{"mean over the task, maxima over group and heads, no mean across heads", other}})
    for (Split const& split : test_splits())
      DYNAMIC_SECTION(c.name << ", split " << name_of(split)) {
        Composed const whole = compose(model, attention, c.press, 0, kHeads, {});
        int const p = static_cast<int>(split.size());
        std::vector<Composed> got(split.size());
        require_no_errors(on_ranks(p, [&](int r, ThreadCommunicator& comm) {
          std::int64_t const first = kvc_shard::first_head(split, r), count = split[static_cast<std::size_t>(r)];
          got[static_cast<std::size_t>(r)] = compose(model, attention, c.press, first, count, {&comm, first, kHeads});
        }));
        for (int r = 0; r < p; ++r) {
          std::int64_t const first = kvc_shard::first_head(split, r), count = split[static_cast<std::size_t>(r)];
          Composed const& mine = got[static_cast<std::size_t>(r)];
          INFO("rank " << r << " of " << p << ", kv heads [" << first << ", +" << count << ")");
          CHECK(mine.plan.kv_heads == kHeads);
          CHECK(mine.plan.scores == whole.plan.scores);
          CHECK(mine.plan.kept == whole.plan.kept);
          for (int l = 0; l < kLayers; ++l)
            CHECK(kvc_shard::kept(mine.parts[static_cast<std::size_t>(l)].cache, 0, count) ==
                  kvc_shard::kept(whole.parts[static_cast<std::size_t>(l)].cache, first, count));
        }
      }
}

TEST_CASE("Bad input on one rank of a cross-layer press is an error on every rank", "[shard][errors]") {
  std::deque<Layer> const model = make_model(kContext + kRepeat, 121);
  auto const two = [](auto&& body) {
    return on_ranks(2, [&](int r, ThreadCommunicator& comm) { body(r, TensorParallelShard{&comm, 3 * r, kHeads}); });
  };
  auto const failed_on_one = [](std::vector<std::exception_ptr> const& errors, char const* cause) {
    CHECK_THAT(message_of(errors[1]), Catch::Contains(cause));
    CHECK_THAT(message_of(errors[0]), Catch::Contains("rank 1 of 2 failed in this compression call"));
  };
  SECTION("KVzip score_chunk without RoPE on rank 1") {
    KVzipPress const press{0.5};
    failed_on_one(two([&](int r, TensorParallelShard const& shard) {
                    Part part(model[0], 3 * r, 3);
                    Observation<float> obs = kvc_shard::observe(model[0], 3 * r, 3);
                    obs.queries.shape[2] = kRepeat;
                    obs.position = kContext;
                    obs.shard = shard;
                    if (r == 1) obs.rope = nullptr;
                    std::vector<float> scores(static_cast<std::size_t>(3 * kContext));
                    press.score_chunk(cpu, obs, part.cache.view(), kContext, 0, kContext, scores.data());
                  }),
                  "observation.rope must be set: KVzipPress rotates the reconstruction queries");
  }
  SECTION("KVzip protect_sinks with another context length on rank 1") {
    KVzipPress const press{0.5};
    auto const errors = two([&](int r, TensorParallelShard const& shard) {
      std::vector<float> scores(static_cast<std::size_t>(kLayers * 3 * kContext), 0.5f);
      press.protect_sinks(scores.data(), kLayers, 3, r == 1 ? kContext - 4 : kContext, shard);
    });
    for (auto const& e : errors) CHECK_THAT(message_of(e), Catch::Contains("disagree on the press's shared quantity"));
  }
  SECTION("a NaN score on rank 1 given to cross_layer_pruned_counts") {
    failed_on_one(two([&](int r, TensorParallelShard const& shard) {
                    std::vector<float> scores(static_cast<std::size_t>(kLayers * 3 * kContext), 0.5f);
                    if (r == 1) scores[5] = std::nanf("");
                    std::vector<std::int64_t> pruned(kLayers);
                    cross_layer_pruned_counts(scores.data(), kLayers, 3, kContext, 0.5, false, pruned.data(), shard);
                  }),
                  "cross_layer_pruned_counts: scores[0, 0, 5] = nan is not finite");
  }
  SECTION("evict_lowest_across_heads asked for more evictions than the layer holds") {
    auto const errors = two([&](int r, TensorParallelShard const& shard) {
      Part part(model[0], 3 * r, 3);
      std::vector<float> scores(static_cast<std::size_t>(3 * part.cache.extents.capacity), 0.5f);
      std::vector<std::byte> scratch(evict_lowest_across_heads_workspace_bytes(cpu, part.cache.view(), shard));
      evict_lowest_across_heads(cpu, part.cache.view(), scores.data(), 6 * (kContext + kRepeat) + 1, Workspace(scratch.data(), scratch.size()),
                                shard);
    });
    for (auto const& e : errors)
      CHECK_THAT(message_of(e), Catch::Contains("n_pruned = 175 must be in [0, 174] (the layer's live entries, over the shard's ranks)"));
  }
  SECTION("evict_lowest_across_heads given another n_pruned on rank 1") {
    auto const errors = two([&](int r, TensorParallelShard const& shard) {
      Part part(model[0], 3 * r, 3);
      std::vector<float> scores(static_cast<std::size_t>(3 * part.cache.extents.capacity), 0.5f);
      std::vector<std::byte> scratch(evict_lowest_across_heads_workspace_bytes(cpu, part.cache.view(), shard));
      evict_lowest_across_heads(cpu, part.cache.view(), scores.data(), 10 + r, Workspace(scratch.data(), scratch.size()), shard);
    });
    for (auto const& e : errors) CHECK_THAT(message_of(e), Catch::Contains("disagree on the press's shared quantity"));
  }
  SECTION("FastKVzip hidden states with a NaN on rank 1") {
    Gates const gates;
    std::vector<float> hidden = kvc_test::random_vector(static_cast<std::size_t>(kTokens * kGateHidden), 5);
    std::vector<float> spoiled = hidden;
    spoiled[7] = std::nanf("");
    failed_on_one(two([&](int r, TensorParallelShard const& shard) {
                    std::vector<float> scores(static_cast<std::size_t>(3 * kTokens));
                    auto const x = make_tensor4((r == 1 ? spoiled : hidden).data(), {1, 1, kTokens, kGateHidden});
                    FastKVzipPress{0.5}.score_layer(cpu, gates.gates[0].heads(3 * r, 3), x, scores.data(), shard);
                  }),
                  "FastKVzipPress hidden states[0, 0, 0, 7]");
  }
  SECTION("KVCompose statistics missing a layer's replay on rank 1") {
    KVComposePress press;
    press.compression_ratio = 0.5;
    auto const attention = replay_attention();
    failed_on_one(two([&](int r, TensorParallelShard const& shard) {
                    std::int64_t const m = kTokens + kReplay;
                    KVComposeStatistics stats(press, kLayers, 3 * kGroup, kTokens);
                    for (int l = 0; l < (r == 1 ? kLayers - 1 : kLayers); ++l)
                      stats.add(cpu, l, make_tensor4(attention[static_cast<std::size_t>(2 * l)].data(), {1, 3 * kGroup, kReplay, m}));
                    (void)kvcompose_plan(cpu, press, stats, 3, nullptr, shard);
                  }),
                  "kvcompose_plan: layer 2 has no replay pass in the statistics");
  }
  SECTION("KVCompose compressing a row of another length on rank 1") {
    KVComposePress press;
    press.compression_ratio = 0.5;
    std::deque<Layer> const layers = make_model(kTokens, 131);
    auto const attention = replay_attention();
    KVComposeStatistics stats(press, kLayers, kHeads * kGroup, kTokens);
    for (int l = 0; l < kLayers; ++l)
      stats.add(cpu, l, make_tensor4(attention[static_cast<std::size_t>(2 * l)].data(), {1, kHeads * kGroup, kReplay, kTokens + kReplay}));
    KVComposePlan const plan = kvcompose_plan(cpu, press, stats, kHeads);
    failed_on_one(two([&](int r, TensorParallelShard const& shard) {
                    Part part(layers[0], 3 * r, 3);
                    if (r == 1) part.cache.lengths[1] -= 1;
                    std::vector<std::byte> scratch(kvcompose_compress_workspace_bytes(cpu, part.cache.view()));
                    kvcompose_compress(cpu, plan, 0, part.cache.view(), Workspace(scratch.data(), scratch.size()), shard);
                  }),
                  "kvcompose_compress: row 1 holds 31 entries, the plan scores the context_length = 32");
  }
  SECTION("KVCompose compressing with a plan of another model's heads") {
    KVComposePress press;
    press.compression_ratio = 0.5;
    auto const attention = replay_attention();
    KVComposeStatistics stats(press, kLayers, kHeads * kGroup, kTokens);
    for (int l = 0; l < kLayers; ++l)
      stats.add(cpu, l, make_tensor4(attention[static_cast<std::size_t>(2 * l)].data(), {1, kHeads * kGroup, kReplay, kTokens + kReplay}));
    KVComposePlan const plan = kvcompose_plan(cpu, press, stats, kHeads / 2);
    auto const errors = two([&](int r, TensorParallelShard const& shard) {
      Part part(model[0], 3 * r, 3);
      std::vector<std::byte> scratch(kvcompose_compress_workspace_bytes(cpu, part.cache.view()));
      kvcompose_compress(cpu, plan, 0, part.cache.view(), Workspace(scratch.data(), scratch.size()), shard);
    });
    CHECK_THAT(message_of(errors[1]), Catch::Contains("kvcompose_compress: the layer (shard.kv_heads) has 6 kv heads, the plan 3"));
    CHECK_THAT(message_of(errors[0]), Catch::Contains("kvcompose_compress: the layer (shard.kv_heads) has 6 kv heads, the plan 3"));
  }
}
