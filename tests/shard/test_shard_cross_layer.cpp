// KVzip, FastKVzip and KVCompose on tensor-parallel shards: P threads (2 to 8), each a rank holding
// some kv heads of every layer of a small model, against the whole model compressed on one thread with the
// single-process functions. Their evictions rank every head of every layer together, so the shard
// forms select across ranks; the scores, counts and kept entries must be the whole model's exactly.

#include <catch2/catch.hpp>
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <string>
#include <vector>

#include "shard/cross_layer_harness.hpp"
#include "shard/rank_threads.hpp"
#include "shard/shard_harness.hpp"
#include "shard/thread_communicator.hpp"

using namespace kvcompress;
using kvc_shard::Composed;
using kvc_shard::compose;
using kvc_shard::Evicted;
using kvc_shard::Gates;
using kvc_shard::ScoreFn;
using kvc_shard::evict_model;
using kvc_shard::fast_kvzip_scores;
using kvc_shard::kContext;
using kvc_shard::kGateHidden;
using kvc_shard::kGroup;
using kvc_shard::kHeads;
using kvc_shard::kReplay;
using kvc_shard::kLayers;
using kvc_shard::kRepeat;
using kvc_shard::kTokens;
using kvc_shard::kvzip_scores;
using kvc_shard::make_model;
using kvc_shard::Layer;
using kvc_shard::message_of;
using kvc_shard::on_ranks;
using kvc_shard::Part;
using kvc_shard::replay_attention;
using kvc_shard::require_no_errors;
using kvc_shard::Split;
using kvc_shard::ThreadCommunicator;

namespace {

/// The eviction on `split` of the model's kv heads against the whole model: bit-identical scores, the
/// same counts per layer, the same kept entries.
void check_cross_layer(std::deque<Layer> const& model, std::int64_t ctx, ScoreFn const& score, KVzipPress const* sinks,
                       double ratio, bool layerwise, Split const& split) {
  std::int64_t const heads = model.front().heads;
  Evicted const whole = evict_model(model, 0, heads, ctx, {}, score, sinks, ratio, layerwise);
  std::int64_t evicted = 0;
  for (std::int64_t p : whole.pruned) evicted += p;
  CHECK(evicted > 0);
  int const p = static_cast<int>(split.size());
  std::vector<Evicted> got(split.size());
  require_no_errors(on_ranks(p, [&](int r, ThreadCommunicator& comm) {
    std::int64_t const first = kvc_shard::first_head(split, r), count = split[static_cast<std::size_t>(r)];
    got[static_cast<std::size_t>(r)] = evict_model(model, first, count, ctx, {&comm, first, heads}, score, sinks, ratio, layerwise);
  }));
  for (int r = 0; r < p; ++r) {
    std::int64_t const first = kvc_shard::first_head(split, r), count = split[static_cast<std::size_t>(r)];
    Evicted const& mine = got[static_cast<std::size_t>(r)];
    INFO("rank " << r << " of " << p << ", kv heads [" << first << ", +" << count << ")");
    CHECK(mine.pruned == whole.pruned);
    for (int l = 0; l < kLayers; ++l) {
      INFO("layer " << l);
      for (std::int64_t h = 0; h < count; ++h) {
        auto const a = mine.scores.begin() + (l * count + h) * ctx, b = whole.scores.begin() + (l * heads + first + h) * ctx;
        CHECK(std::vector<float>(a, a + ctx) == std::vector<float>(b, b + ctx));
      }
      CHECK(kvc_shard::kept(mine.parts[static_cast<std::size_t>(l)].cache, 0, count) ==
            kvc_shard::kept(whole.parts[static_cast<std::size_t>(l)].cache, first, count));
    }
  }
}

/// A model's kv heads and their split over the ranks.
struct ModelSplit {
  std::int64_t heads;
  Split split;
};

/// Six heads on 2 and 4 ranks (balanced and lopsided) and unevenly on 3; eight heads on 8 ranks, one
/// each; eleven heads unevenly on 8 ranks.
std::vector<ModelSplit> test_splits() {
  std::vector<ModelSplit> out;
  for (int p : {2, 4})
    for (Split const& s : kvc_shard::splits_for(p, kHeads)) out.push_back({kHeads, s});
  out.push_back({kHeads, {1, 3, 2}});
  out.push_back({8, kvc_shard::splits_for(8, 8).front()});
  out.push_back({11, {1, 2, 1, 1, 3, 1, 1, 1}});
  return out;
}

std::string name_of(ModelSplit const& m) {
  std::string s = std::to_string(m.heads) + " heads, split ";
  for (std::int64_t c : m.split) s += std::to_string(c);
  return s;
}

}  // namespace

TEST_CASE("KVzip on P thread ranks scores, protects and evicts what one process does on the whole model", "[shard][kvzip]") {
  std::vector<float> const hidden = kvc_test::random_vector(static_cast<std::size_t>(kLayers * kRepeat * 24), 62);
  KVzipPress plain{0.6};
  plain.chunk_size = 10;
  plain.n_sink = 2;
  KVzipPress plus = plain;
  plus.kvzip_plus_normalization = true;
  for (ModelSplit const& m : test_splits()) {
    std::deque<Layer> const model = make_model(kContext + kRepeat, 61, m.heads);
    DYNAMIC_SECTION("KVzip, " << name_of(m)) {
      check_cross_layer(model, kContext, kvzip_scores(model, plain, hidden), &plain, plain.compression_ratio, false, m.split);
    }
    DYNAMIC_SECTION("KVzip+, " << name_of(m)) {
      check_cross_layer(model, kContext, kvzip_scores(model, plus, hidden), &plus, 0.4, false, m.split);
    }
    DYNAMIC_SECTION("KVzip layerwise, " << name_of(m)) {
      check_cross_layer(model, kContext, kvzip_scores(model, plain, hidden), &plain, plain.compression_ratio, true, m.split);
    }
  }
}

TEST_CASE("FastKVzip on P thread ranks evicts what one process does on the whole model, ties included", "[shard][fastkvzip]") {
  std::vector<float> const hidden = kvc_test::random_vector(static_cast<std::size_t>(kLayers * kTokens * kGateHidden), 82);
  FastKVzipPress press{0.5};
  press.window_ratio = 0.1;  // the last 3 entries and the first 4 score 1: exact ties across heads and layers
  FastKVzipPress tight = press;
  tight.compression_ratio = 0.9;  // keeps fewer entries than score 1: the selection ends inside the ties
  for (ModelSplit const& m : test_splits()) {
    std::deque<Layer> const model = make_model(kTokens, 81, m.heads);
    Gates const gates(m.heads);
    DYNAMIC_SECTION("ratio 0.5, " << name_of(m)) {
      check_cross_layer(model, kTokens, fast_kvzip_scores(press, gates, hidden), nullptr, press.compression_ratio, false, m.split);
    }
    DYNAMIC_SECTION("ratio 0.9, " << name_of(m)) {
      check_cross_layer(model, kTokens, fast_kvzip_scores(tight, gates, hidden), nullptr, tight.compression_ratio, false, m.split);
    }
  }
}

TEST_CASE("The cross-layer eviction on P thread ranks breaks exact ties as one process does", "[shard]") {
  for (double ratio : {0.3, 0.5, 0.8})
    for (ModelSplit const& m : test_splits())
      DYNAMIC_SECTION("ratio " << ratio << ", " << name_of(m)) {
        std::deque<Layer> const model = make_model(kTokens, 91, m.heads);
        // Scores from three values, with -0 beside +0: almost every comparison is a tie.
        std::vector<float> table = kvc_test::random_vector(static_cast<std::size_t>(kLayers * m.heads * kTokens), 92);
        for (std::size_t i = 0; i < table.size(); ++i)
          table[i] = table[i] < -0.4f ? -1.0f : table[i] < 0.4f ? (i % 2 == 0 ? 0.0f : -0.0f) : 2.0f;
        ScoreFn const tied = [&table, &m](int l, kvc_test::OwnedCache<float>&, std::int64_t first, std::int64_t count,
                                          TensorParallelShard const&, float* out) {
          std::copy_n(table.begin() + (l * m.heads + first) * kTokens, count * kTokens, out);
        };
        check_cross_layer(model, kTokens, tied, nullptr, ratio, false, m.split);
      }
}

TEST_CASE("KVCompose on P thread ranks plans and keeps what one process does on the whole model, bit for bit", "[shard][kvcompose]") {
  KVComposePress const structured = kvc_shard::kvcompose_structured();
  KVComposePress const unstructured = kvc_shard::kvcompose_unstructured();
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
    for (ModelSplit const& m : test_splits())
      DYNAMIC_SECTION(c.name << ", " << name_of(m)) {
        std::deque<Layer> const model = make_model(kTokens, 111, m.heads);
        auto const attention = replay_attention(m.heads);
        Split const& split = m.split;
        Composed const whole = compose(model, attention, c.press, 0, m.heads, {});
        int const p = static_cast<int>(split.size());
        std::vector<Composed> got(split.size());
        require_no_errors(on_ranks(p, [&](int r, ThreadCommunicator& comm) {
          std::int64_t const first = kvc_shard::first_head(split, r), count = split[static_cast<std::size_t>(r)];
          got[static_cast<std::size_t>(r)] = compose(model, attention, c.press, first, count, {&comm, first, m.heads});
        }));
        for (int r = 0; r < p; ++r) {
          std::int64_t const first = kvc_shard::first_head(split, r), count = split[static_cast<std::size_t>(r)];
          Composed const& mine = got[static_cast<std::size_t>(r)];
          INFO("rank " << r << " of " << p << ", kv heads [" << first << ", +" << count << ")");
          CHECK(mine.plan.kv_heads == m.heads);
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
