// Tensor-parallel shards in one process: P threads, each a rank holding some kv heads of the
// layer, against the whole layer compressed on one thread. The MPI tests (tests/mpi/) run the same
// scenarios in real processes.

#include <catch2/catch.hpp>
#include <exception>
#include <string>
#include <vector>

#include "shard/rank_threads.hpp"
#include "shard/shard_harness.hpp"
#include "shard/thread_communicator.hpp"

using namespace kvcompress;
using kvc_shard::Layer;
using kvc_shard::message_of;
using kvc_shard::on_ranks;
using kvc_shard::require_no_errors;
using kvc_shard::Part;
using kvc_shard::Split;
using kvc_shard::ThreadCommunicator;

namespace {

/// Each rank's kept entries after `scenario` on `split`, and the whole layer's for the same heads.
void check_scenario(kvc_shard::Scenario const& scenario, Split const& split, bool with_communicator) {
  Layer layer = scenario.make_layer();
  int const p = static_cast<int>(split.size());
  std::vector<Part> parts;
  for (int r = 0; r < p; ++r) parts.emplace_back(layer, kvc_shard::first_head(split, r), split[static_cast<std::size_t>(r)]);
  std::vector<std::vector<float>> got(static_cast<std::size_t>(p));
  auto const errors = on_ranks(p, [&](int r, ThreadCommunicator& comm) {
    Part& part = parts[static_cast<std::size_t>(r)];
    Observation<float> obs = kvc_shard::observe(layer, part.first, part.count, scenario.layer_idx, scenario.num_layers,
                                                  scenario.attention);
    if (with_communicator) obs.shard = {&comm, part.first, layer.heads};
    scenario.run(obs, part.cache.view());
    got[static_cast<std::size_t>(r)] = kvc_shard::kept(part.cache, 0, part.count);
  });
  require_no_errors(errors);
  scenario.run(kvc_shard::observe(layer, 0, layer.heads, scenario.layer_idx, scenario.num_layers, scenario.attention),
               layer.cache.view());
  for (int r = 0; r < p; ++r) {
    INFO(scenario.name << ", rank " << r << " of " << p << ", kv heads [" << parts[static_cast<std::size_t>(r)].first
                       << ", +" << parts[static_cast<std::size_t>(r)].count << ")");
    CHECK(got[static_cast<std::size_t>(r)] ==
          kvc_shard::kept(layer.cache, parts[static_cast<std::size_t>(r)].first, parts[static_cast<std::size_t>(r)].count));
  }
}

}  // namespace

TEST_CASE("Presses that couple kv heads give on P thread ranks the whole layer's lengths and kept entries",
          "[shard]") {
  for (auto const& scenario : kvc_shard::coupled_scenarios())
    for (int p : {2, 4, 8})
      for (Split const& split : kvc_shard::splits_for(p, scenario.make_layer().heads)) {
        DYNAMIC_SECTION(scenario.name << " on " << p << " ranks, split " << split.front() << ".." << split.back()) {
          check_scenario(scenario, split, true);
        }
      }
}

TEST_CASE("Presses that sum, average or z-score the kv heads give on P thread ranks the whole layer's kept entries",
          "[shard]") {
  for (auto const& scenario : kvc_shard::combining_scenarios())  // each on the default layer of 8 kv heads
    for (int p : {2, 4, 8})
      for (Split const& split : kvc_shard::splits_for(p, 8)) {
        DYNAMIC_SECTION(scenario.name << " on " << p << " ranks, split " << split.front() << ".." << split.back()) {
          check_scenario(scenario, split, true);
        }
      }
  for (auto scenario : kvc_shard::combining_scenarios()) {
    scenario.make_layer = [] { return Layer(1, 6, 3, 36, 40, 16, 5); };
    for (Split const& split : {Split{1, 2, 1, 2}, Split{3, 1, 1, 1}})
      DYNAMIC_SECTION(scenario.name << ", six heads split " << split[0] << split[1] << split[2] << split[3]) {
        check_scenario(scenario, split, true);
      }
  }
}

namespace {

/// Each rank's scores of its rows by `scorer`, against the whole layer's rows of the same heads.
template <class Scorer>
void check_scores(Scorer const& scorer, Split const& split) {
  Layer layer = kvc_shard::default_layer();
  int const p = static_cast<int>(split.size());
  std::vector<std::vector<float>> got(split.size());
  auto const errors = on_ranks(p, [&](int r, ThreadCommunicator& comm) {
    std::int64_t const first = kvc_shard::first_head(split, r), count = split[static_cast<std::size_t>(r)];
    Part part(layer, first, count);
    Observation<float> obs = kvc_shard::observe(layer, first, count);
    obs.shard = {&comm, first, layer.heads};
    got[static_cast<std::size_t>(r)] = score(cpu, scorer, obs, part.cache.view());
  });
  require_no_errors(errors);
  std::vector<float> const whole = score(cpu, scorer, kvc_shard::observe(layer, 0, layer.heads), layer.cache.view());
  std::int64_t const cap = layer.cache.extents.capacity, n = layer.n;
  for (int r = 0; r < p; ++r) {
    std::int64_t const first = kvc_shard::first_head(split, r), count = split[static_cast<std::size_t>(r)];
    for (std::int64_t b = 0; b < layer.batch; ++b)
      for (std::int64_t h = 0; h < count; ++h) {
        INFO("rank " << r << " of " << p << ", batch " << b << ", kv head " << first + h);
        auto const mine = got[static_cast<std::size_t>(r)].begin() + (b * count + h) * cap;
        auto const theirs = whole.begin() + (b * layer.heads + first + h) * cap;
        CHECK(std::vector<float>(mine, mine + n) == std::vector<float>(theirs, theirs + n));
      }
  }
}

}  // namespace

TEST_CASE("The z-scored and window-protected scores on thread ranks are the whole layer's, bit for bit", "[shard]") {
  auto const sketch = kvc_shard::side_input(16 * 6, 41, 0.4f);
  LeverageScorePress leverage{0.5, 6, sketch->data()};
  CompactorPress compactor{0.5, 3, 2, 16, 6};
  compactor.sketch = sketch->data();
  for (int p : {2, 4, 8})
    for (Split const& split : kvc_shard::splits_for(p, 8)) {
      DYNAMIC_SECTION("LeverageScore on " << p << " ranks, split " << split.front() << ".." << split.back()) {
        check_scores(leverage, split);
      }
      DYNAMIC_SECTION("NonCausalAttn on " << p << " ranks, split " << split.front() << ".." << split.back()) {
        check_scores(NonCausalAttnPress{0.5, 16}, split);
      }
      DYNAMIC_SECTION("Compactor on " << p << " ranks, split " << split.front() << ".." << split.back()) {
        check_scores(compactor, split);
      }
      DYNAMIC_SECTION("SnapKV on " << p << " ranks, split " << split.front() << ".." << split.back()) {
        check_scores(SnapKVPress{0.5, 4, 3}, split);
      }
    }
}

TEST_CASE("SimLayerKV's laziness statistic on thread ranks is the whole layer's, bit for bit", "[shard]") {
  SimLayerKVPress const press{0.5, 4, 8, 4};
  auto const statistic = [&](Layer& layer, Observation<float> const& obs, std::int64_t first, std::int64_t count) {
    Part part(layer, first, count);
    std::vector<std::byte> scratch(press.compress_workspace_bytes(cpu, obs, part.cache.view()));
    Workspace ws(scratch.data(), scratch.size());
    return press.lazy_score(cpu, obs, part.cache.view(), ws);
  };
  Layer layer = kvc_shard::default_layer();
  double const whole = statistic(layer, kvc_shard::observe(layer, 0, layer.heads), 0, layer.heads);
  for (int p : {2, 4, 8})
    for (Split const& split : kvc_shard::splits_for(p, 8))
      DYNAMIC_SECTION(p << " ranks, split " << split.front() << ".." << split.back()) {
        std::vector<double> got(split.size());
        auto const errors = on_ranks(p, [&](int r, ThreadCommunicator& comm) {
          std::int64_t const first = kvc_shard::first_head(split, r), count = split[static_cast<std::size_t>(r)];
          Observation<float> obs = kvc_shard::observe(layer, first, count);
          obs.shard = {&comm, first, layer.heads};
          got[static_cast<std::size_t>(r)] = statistic(layer, obs, first, count);
        });
        require_no_errors(errors);
        for (double g : got) CHECK(g == whole);
      }
}

TEST_CASE("Later presses that couple heads or protect with the layer's maximum match the whole layer on thread ranks",
          "[shard]") {
  for (auto const& scenario : kvc_shard::later_coupled_scenarios())  // each on the default layer of 8 kv heads
    for (int p : {2, 4, 8})
      for (Split const& split : kvc_shard::splits_for(p, 8)) {
        DYNAMIC_SECTION(scenario.name << " on " << p << " ranks, split " << split.front() << ".." << split.back()) {
          check_scenario(scenario, split, true);
        }
      }
  for (auto scenario : kvc_shard::later_coupled_scenarios()) {
    scenario.make_layer = [] { return Layer(1, 6, 3, 36, 40, 16, 5); };
    for (Split const& split : {Split{1, 2, 1, 2}, Split{3, 1, 1, 1}})
      DYNAMIC_SECTION(scenario.name << ", six heads split " << split[0] << split[1] << split[2] << split[3]) {
        check_scenario(scenario, split, true);
      }
  }
}

TEST_CASE("Later per-head presses need no communication on a shard", "[shard]") {
  for (auto const& scenario : kvc_shard::later_per_head_scenarios())
    for (int p : {2, 4, 8})
      for (Split const& split : kvc_shard::splits_for(p, 8)) DYNAMIC_SECTION(scenario.name << " on " << p << " ranks") {
          check_scenario(scenario, split, false);
        }
}

TEST_CASE("ThinK packs each rank's keys as the whole layer does, with no communication", "[shard]") {
  ThinKPress const press{0.5, 4};
  auto const pack = [&](Layer const& layer, kvc_test::OwnedCache<float>& cache, Observation<float> const& obs) {
    auto const view = cache.view();
    std::int64_t const kept = press.kept_channels(layer.d);
    std::vector<float> data(static_cast<std::size_t>(view.extents.batch * view.extents.kv_heads * view.extents.capacity * kept));
    std::vector<std::int32_t> channels(static_cast<std::size_t>(view.extents.batch * view.extents.kv_heads * kept));
    std::vector<std::byte> scratch(press.workspace_bytes(cpu, view));
    press.compress(cpu, obs, view, PackedKeys<float>{data.data(), channels.data(), kept}, Workspace(scratch.data(), scratch.size()));
    std::vector<float> out(channels.begin(), channels.end());
    out.insert(out.end(), data.begin(), data.end());
    return out;
  };
  auto const rows_of = [](std::vector<float> const& packed, std::int64_t batch, std::int64_t heads, std::int64_t first,
                          std::int64_t count, std::int64_t kept, std::int64_t cap) {
    std::vector<float> out;  // the channels, then the packed keys, of heads [first, first + count)
    for (std::int64_t b = 0; b < batch; ++b)
      for (std::int64_t h = first; h < first + count; ++h) {
        auto const c = packed.begin() + (b * heads + h) * kept;
        out.insert(out.end(), c, c + kept);
      }
    std::int64_t const base = batch * heads * kept;
    for (std::int64_t b = 0; b < batch; ++b)
      for (std::int64_t h = first; h < first + count; ++h) {
        auto const k = packed.begin() + base + (b * heads + h) * cap * kept;
        out.insert(out.end(), k, k + cap * kept);
      }
    return out;
  };
  Layer layer = kvc_shard::default_layer();
  std::int64_t const kept = press.kept_channels(layer.d), cap = layer.cache.extents.capacity;
  auto const whole = pack(layer, layer.cache, kvc_shard::observe(layer, 0, layer.heads));
  for (int p : {2, 4, 8})
    for (Split const& split : kvc_shard::splits_for(p, 8))
      for (int r = 0; r < p; ++r) {
        std::int64_t const first = kvc_shard::first_head(split, r), count = split[static_cast<std::size_t>(r)];
        Part part(layer, first, count);
        INFO(p << " ranks, rank " << r << ", kv heads [" << first << ", +" << count << ")");
        CHECK(pack(layer, part.cache, kvc_shard::observe(layer, first, count)) ==
              rows_of(whole, layer.batch, layer.heads, first, count, kept, cap));
      }
}

TEST_CASE("Uneven splits of six kv heads over four thread ranks match the whole layer", "[shard]") {
  for (auto scenario : kvc_shard::coupled_scenarios()) {
    scenario.make_layer = [] { return Layer(1, 6, 3, 36, 40, 16, 5); };
    for (Split const& split : {Split{1, 2, 1, 2}, Split{3, 1, 1, 1}, Split{1, 1, 3, 1}})
      DYNAMIC_SECTION(scenario.name << ", split " << split[0] << split[1] << split[2] << split[3]) {
        check_scenario(scenario, split, true);
      }
  }
}

TEST_CASE("Per-head presses need no communication: each rank alone gives the whole layer's rows", "[shard]") {
  for (auto const& scenario : kvc_shard::per_head_scenarios())
    for (int p : {2, 4})
      for (Split const& split : kvc_shard::splits_for(p, 8)) DYNAMIC_SECTION(scenario.name << " on " << p << " ranks") {
          check_scenario(scenario, split, false);
        }
}

TEST_CASE("A per-head press on a shard only agrees that every rank succeeded", "[shard]") {
  Layer layer = kvc_shard::default_layer();
  std::vector<int> collectives;
  auto const errors = on_ranks(
      2,
      [&](int r, ThreadCommunicator& comm) {
        Part part(layer, 4 * r, 4);
        Observation<float> obs = kvc_shard::observe(layer, part.first, part.count);
        obs.shard = {&comm, part.first, layer.heads};
        compress(cpu, KnormPress{0.5}, obs, part.cache.view());
      },
      &collectives);
  require_no_errors(errors);
  CHECK(collectives == std::vector<int>{1, 1});
}

TEST_CASE("DecodingPress(TOVA) on P thread ranks keeps the whole layer's entries at every compression", "[shard]") {
  using kvc_shard::Decoding;
  for (int p : {2, 4, 8})
    for (Split const& split : kvc_shard::splits_for(p, 8))
      DYNAMIC_SECTION(p << " ranks, split " << split.front() << ".." << split.back()) {
        Layer layer = Decoding::make_layer();
        kvc_test::OwnedCache<float> whole = layer.cache;
        std::vector<std::vector<float>> got(split.size());
        auto const errors = on_ranks(p, [&](int r, ThreadCommunicator& comm) {
          std::int64_t const first = kvc_shard::first_head(split, r), count = split[static_cast<std::size_t>(r)];
          Part part(layer, first, count);
          Decoding::run(layer, part.cache, first, {&comm, first, layer.heads});
          got[static_cast<std::size_t>(r)] = kvc_shard::kept(part.cache, 0, count);
        });
        require_no_errors(errors);
        Decoding::run(layer, whole, 0, {});
        CHECK(whole.lengths.front() < Decoding::kPrefill + Decoding::kSteps);  // it did compress
        for (int r = 0; r < p; ++r)
          CHECK(got[static_cast<std::size_t>(r)] ==
                kvc_shard::kept(whole, kvc_shard::first_head(split, r), split[static_cast<std::size_t>(r)]));
      }
}

TEST_CASE("The single-rank communicator gives what no communicator gives", "[shard]") {
  Layer layer = kvc_shard::default_layer();
  Layer again = kvc_shard::default_layer();
  SingleRankCommunicator single;
  ExpectedAttentionPress ea{0.6};
  Observation<float> obs = kvc_shard::observe(again, 0, again.heads);
  obs.shard = {&single, 0, again.heads};
  compress(cpu, AdaKVPress{ea}, obs, again.cache.view());
  compress(cpu, AdaKVPress{ea}, kvc_shard::observe(layer, 0, layer.heads), layer.cache.view());
  CHECK(kvc_shard::kept(again.cache, 0, 8) == kvc_shard::kept(layer.cache, 0, 8));
}

TEST_CASE("Bad input on one rank of a shard is an error on every rank", "[shard][errors]") {
  Layer layer = kvc_shard::default_layer();
  ExpectedAttentionPress ea{0.6};
  auto const run = [&](auto&& spoil, auto press) {
    return on_ranks(2, [&](int r, ThreadCommunicator& comm) {
      Part part(layer, 4 * r, 4);
      Observation<float> obs = kvc_shard::observe(layer, part.first, part.count);
      obs.shard = {&comm, part.first, layer.heads};
      if (r == 1) spoil(part, obs);
      compress(cpu, press, obs, part.cache.view());
    });
  };
  SECTION("a NaN key on rank 1") {
    auto const errors = run([](Part& part, Observation<float>&) { part.cache.k[20 * 16 + 3] = std::nanf(""); }, AdaKVPress{ea});
    CHECK_THAT(message_of(errors[1]), Catch::Contains("keys[0, 0, 20, 3] = nan is not finite"));
    CHECK_THAT(message_of(errors[0]), Catch::Contains("rank 1 of 2 failed in this compression call"));
  }
  SECTION("a NaN key on rank 1 under SimLayerKV, before its statistic is exchanged") {
    auto const errors =
        run([](Part& part, Observation<float>&) { part.cache.k[20 * 16 + 3] = std::nanf(""); }, SimLayerKVPress{0.2, 4, 8, 4});
    CHECK_THAT(message_of(errors[1]), Catch::Contains("keys[0, 0, 20, 3] = nan is not finite"));
    CHECK_THAT(message_of(errors[0]), Catch::Contains("rank 1 of 2 failed in this compression call"));
  }
  SECTION("a NaN key on rank 1 under NonCausalAttn, before its z-score is exchanged") {
    auto const errors =
        run([](Part& part, Observation<float>&) { part.cache.k[20 * 16 + 3] = std::nanf(""); }, NonCausalAttnPress{0.5, 16});
    CHECK_THAT(message_of(errors[1]), Catch::Contains("keys[0, 0, 20, 3] = nan is not finite"));
    CHECK_THAT(message_of(errors[0]), Catch::Contains("rank 1 of 2 failed in this compression call"));
  }
  SECTION("ChunkKV rows of another length on rank 1") {
    auto const errors = run(
        [](Part& part, Observation<float>&) {
          for (auto& n : part.cache.lengths) n -= 1;
        },
        ChunkKVPress{KnormPress{0.5}, 6});
    for (auto const& e : errors) CHECK_THAT(message_of(e), Catch::Contains("disagree on the press's shared quantity"));
  }
  SECTION("QFilter filters of the rank's kv heads, not the layer's") {
    std::vector<float> const filters(8 * 16, 0.5f);
    auto const errors = run([](Part&, Observation<float>&) {}, QFilterPress{0.5, filters.data(), 1, 4, 16});
    for (auto const& e : errors)
      CHECK_THAT(message_of(e), Catch::Contains("QFilterPress.num_kv_heads = 4 does not match the layer's kv_heads "
                                                "(observation.shard.kv_heads) = 8"));
  }
  SECTION("a bad first_kv_head on rank 1") {
    auto const errors = run([](Part&, Observation<float>& obs) { obs.shard.first_kv_head = 6; }, TOVAPress{0.5});
    CHECK_THAT(message_of(errors[1]), Catch::Contains("observation.shard.first_kv_head = 6"));
    CHECK_THAT(message_of(errors[0]), Catch::Contains("rank 1 of 2 failed"));
  }
  SECTION("rank 1 holds heads that rank 0 holds") {
    auto const errors = run([](Part&, Observation<float>& obs) { obs.shard.first_kv_head = 2; }, AdaKVPress{ea});
    for (auto const& e : errors) CHECK_THAT(message_of(e), Catch::Contains("do not tile the layer: rank 1 starts at head 2"));
  }
  SECTION("TOVA rows of another length on rank 1") {
    auto const errors = run(
        [](Part& part, Observation<float>&) {
          for (auto& n : part.cache.lengths) n -= 1;
        },
        TOVAPress{0.5});
    for (auto const& e : errors)
      CHECK_THAT(message_of(e), Catch::Contains("disagree on the press's shared quantity"));
  }
    SECTION("a batch of another size on rank 1") {
    auto const errors = run(
        [](Part& part, Observation<float>& obs) {
          part.cache.extents.batch = 1;
          obs.queries.shape[0] = obs.window_queries.shape[0] = 1;
        },
        AdaKVPress{ea});
    for (auto const& e : errors) CHECK_THAT(message_of(e), Catch::Contains("disagree on the batch: rank 0 has 2, rank 1 has 1"));
  }
}
