// Tensor-parallel shards in real processes: run under `mpirun -np P`; every rank holds some kv heads
// of the layer, compresses them with an MpiCommunicator and compares its rows with the whole layer,
// which each rank also compresses alone; the collectives and bytes of every press's shard form are
// counted against docs/distributed.md's table. CTest runs it on 2 and 4 ranks (label mpi).

#define CATCH_CONFIG_RUNNER
#include <mpi.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <deque>
#include <string>
#include <vector>

#include "kvcompress/dist/mpi_communicator.hpp"
#include "mpi/counting_communicator.hpp"
#include "shard/cross_layer_harness.hpp"
#include "shard/shard_harness.hpp"

using namespace kvcompress;
using kvc_shard::Layer;
using kvc_shard::Part;
using kvc_shard::Split;

namespace {

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int world_size() {
  int p = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &p);
  return p;
}

/// A bound on every wait in these tests, far below CTest's timeout.
constexpr std::chrono::seconds kWait{20};

}  // namespace

TEST_CASE("MPI ranks compress their kv heads as the whole layer does", "[mpi]") {
  int const rank = world_rank(), p = world_size();
  MpiCommunicator comm(MPI_COMM_WORLD, kWait);
  for (auto const& scenario : kvc_shard::coupled_scenarios())
    for (Split const& split : kvc_shard::splits_for(p, scenario.make_layer().heads)) {
      INFO(scenario.name << " on " << p << " ranks, split " << split.front() << ".." << split.back() << ", rank " << rank);
      Layer layer = scenario.make_layer();
      Part part(layer, kvc_shard::first_head(split, rank), split[static_cast<std::size_t>(rank)]);
      Observation<float> obs = kvc_shard::observe(layer, part.first, part.count, scenario.layer_idx, scenario.num_layers);
      obs.shard = {&comm, part.first, layer.heads};
      scenario.run(obs, part.cache.view());
      scenario.run(kvc_shard::observe(layer, 0, layer.heads, scenario.layer_idx, scenario.num_layers), layer.cache.view());
      CHECK(kvc_shard::kept(part.cache, 0, part.count) == kvc_shard::kept(layer.cache, part.first, part.count));
    }
}

TEST_CASE("MPI ranks compress their kv heads as the whole layer does with the presses that sum or z-score heads",
          "[mpi]") {
  int const rank = world_rank(), p = world_size();
  MpiCommunicator comm(MPI_COMM_WORLD, kWait);
  auto scenarios = kvc_shard::combining_scenarios();
  for (auto& s : kvc_shard::later_coupled_scenarios()) scenarios.push_back(std::move(s));
  for (auto const& scenario : scenarios)
    for (Split const& split : kvc_shard::splits_for(p, scenario.make_layer().heads)) {
      INFO(scenario.name << " on " << p << " ranks, split " << split.front() << ".." << split.back() << ", rank " << rank);
      Layer layer = scenario.make_layer();
      Part part(layer, kvc_shard::first_head(split, rank), split[static_cast<std::size_t>(rank)]);
      Observation<float> obs = kvc_shard::observe(layer, part.first, part.count, scenario.layer_idx, scenario.num_layers);
      obs.shard = {&comm, part.first, layer.heads};
      scenario.run(obs, part.cache.view());
      scenario.run(kvc_shard::observe(layer, 0, layer.heads, scenario.layer_idx, scenario.num_layers), layer.cache.view());
      CHECK(kvc_shard::kept(part.cache, 0, part.count) == kvc_shard::kept(layer.cache, part.first, part.count));
    }
}

TEST_CASE("MPI ranks run DecodingPress(TOVA) as the whole layer does", "[mpi]") {
  using kvc_shard::Decoding;
  int const rank = world_rank(), p = world_size();
  MpiCommunicator comm(MPI_COMM_WORLD, kWait);
  for (Split const& split : kvc_shard::splits_for(p, 8)) {
    Layer layer = Decoding::make_layer();
    kvc_test::OwnedCache<float> whole = layer.cache;
    std::int64_t const first = kvc_shard::first_head(split, rank), count = split[static_cast<std::size_t>(rank)];
    Part part(layer, first, count);
    Decoding::run(layer, part.cache, first, {&comm, first, layer.heads});
    Decoding::run(layer, whole, 0, {});
    CHECK(kvc_shard::kept(part.cache, 0, count) == kvc_shard::kept(whole, first, count));
  }
}

TEST_CASE("MPI ranks evict across layers and heads as one process does on the whole model (KVzip, FastKVzip)", "[mpi]") {
  using kvc_shard::kHeads;
  using kvc_shard::kLayers;
  int const rank = world_rank(), p = world_size();
  MpiCommunicator comm(MPI_COMM_WORLD, kWait);
  std::deque<Layer> const kvzip_model = kvc_shard::make_model(kvc_shard::kContext + kvc_shard::kRepeat, 61);
  std::vector<float> const hidden = kvc_test::random_vector(static_cast<std::size_t>(kLayers * kvc_shard::kRepeat * 24), 62);
  KVzipPress kvzip{0.6};
  kvzip.chunk_size = 10;
  kvzip.n_sink = 2;
  std::deque<Layer> const gate_model = kvc_shard::make_model(kvc_shard::kTokens, 81);
  kvc_shard::Gates const gates;
  std::vector<float> const gate_hidden =
      kvc_test::random_vector(static_cast<std::size_t>(kLayers * kvc_shard::kTokens * kvc_shard::kGateHidden), 82);
  FastKVzipPress fast{0.9};
  fast.window_ratio = 0.1;  // ties at score 1 across heads and layers, inside the selection at 0.9
  for (Split const& split : kvc_shard::splits_for(p, kHeads)) {
    std::int64_t const first = kvc_shard::first_head(split, rank), count = split[static_cast<std::size_t>(rank)];
    auto const check = [&](char const* name, std::deque<Layer> const& model, std::int64_t ctx, kvc_shard::ScoreFn const& score,
                           KVzipPress const* sinks, double ratio) {
      INFO(name << " on " << p << " ranks, split " << split.front() << ".." << split.back() << ", rank " << rank);
      kvc_shard::Evicted const whole = kvc_shard::evict_model(model, 0, kHeads, ctx, {}, score, sinks, ratio, false);
      kvc_shard::Evicted const mine = kvc_shard::evict_model(model, first, count, ctx, {&comm, first, kHeads}, score, sinks, ratio, false);
      CHECK(mine.pruned == whole.pruned);
      for (int l = 0; l < kLayers; ++l)
        CHECK(kvc_shard::kept(mine.parts[static_cast<std::size_t>(l)].cache, 0, count) ==
              kvc_shard::kept(whole.parts[static_cast<std::size_t>(l)].cache, first, count));
    };
    check("KVzip", kvzip_model, kvc_shard::kContext, kvc_shard::kvzip_scores(kvzip_model, kvzip, hidden), &kvzip, 0.6);
    check("FastKVzip", gate_model, kvc_shard::kTokens, kvc_shard::fast_kvzip_scores(fast, gates, gate_hidden), nullptr, 0.9);
  }
}

TEST_CASE("MPI ranks plan and keep with KVCompose what one process does on the whole model, bit for bit", "[mpi]") {
  using kvc_shard::kHeads;
  using kvc_shard::kLayers;
  int const rank = world_rank(), p = world_size();
  MpiCommunicator comm(MPI_COMM_WORLD, kWait);
  std::deque<Layer> const model = kvc_shard::make_model(kvc_shard::kTokens, 111);
  auto const attention = kvc_shard::replay_attention();
  KVComposePress const structured = kvc_shard::kvcompose_structured();
  KVComposePress const unstructured = kvc_shard::kvcompose_unstructured();
  for (KVComposePress const& press : {structured, unstructured})
    for (Split const& split : kvc_shard::splits_for(p, kHeads)) {
      std::int64_t const first = kvc_shard::first_head(split, rank), count = split[static_cast<std::size_t>(rank)];
      INFO((press.structured ? "structured" : "unstructured") << " on " << p << " ranks, split " << split.front() << ".."
                                                              << split.back() << ", rank " << rank);
      kvc_shard::Composed const whole = kvc_shard::compose(model, attention, press, 0, kHeads, {});
      kvc_shard::Composed const mine = kvc_shard::compose(model, attention, press, first, count, {&comm, first, kHeads});
      CHECK(mine.plan.kv_heads == kHeads);
      CHECK(mine.plan.scores == whole.plan.scores);
      CHECK(mine.plan.kept == whole.plan.kept);
      for (int l = 0; l < kLayers; ++l)
        CHECK(kvc_shard::kept(mine.parts[static_cast<std::size_t>(l)].cache, 0, count) ==
              kvc_shard::kept(whole.parts[static_cast<std::size_t>(l)].cache, first, count));
    }
}

TEST_CASE("A NaN key on rank 1 only is an error on every MPI rank, without waiting out the timeout", "[mpi][errors]") {
  int const rank = world_rank(), p = world_size();
  MpiCommunicator comm(MPI_COMM_WORLD, kWait);
  Layer layer = kvc_shard::default_layer();
  Split const split = kvc_shard::splits_for(p, layer.heads).front();
  Part part(layer, kvc_shard::first_head(split, rank), split[static_cast<std::size_t>(rank)]);
  if (rank == 1) part.cache.k[static_cast<std::size_t>(20 * layer.d + 3)] = std::nanf("");
  Observation<float> obs = kvc_shard::observe(layer, part.first, part.count);
  obs.shard = {&comm, part.first, layer.heads};
  ExpectedAttentionPress ea{0.6};
  auto const t0 = std::chrono::steady_clock::now();
  std::string message = "(no error)";
  try {
    compress(cpu, AdaKVPress{ea}, obs, part.cache.view());
  } catch (Error const& e) {
    message = e.what();
  }
  double const waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  INFO("rank " << rank << ": " << message);
  if (rank == 1) CHECK_THAT(message, Catch::Contains("keys[0, 0, 20, 3] = nan is not finite"));
  else CHECK_THAT(message, Catch::Contains("rank 1 of " + std::to_string(p) + " failed in this compression call"));
  CHECK(waited < 5.0);
}

TEST_CASE("A collective the other ranks do not join times out on the rank that waits", "[mpi][errors]") {
  int const rank = world_rank();
  MPI_Comm dup = MPI_COMM_NULL;  // its own communicator, so that the abandoned collective disturbs nothing
  REQUIRE(MPI_Comm_dup(MPI_COMM_WORLD, &dup) == MPI_SUCCESS);
  if (rank == 0) {
    MpiCommunicator lonely(dup, std::chrono::milliseconds(300));
    std::int64_t x = 1;
    CHECK_THROWS_WITH(lonely.all_reduce(&x, 1, ReduceOp::sum),
                      Catch::Contains("MPI_Iallreduce on rank 0 of ") && Catch::Contains("did not complete within 300 ms"));
  }
  MPI_Barrier(MPI_COMM_WORLD);
  // The others join late (non-blocking too: a blocking collective does not match a non-blocking one),
  // so that the abandoned collective completes before the communicator is freed.
  std::int64_t x = 0;
  if (rank != 0) {
    MPI_Request req = MPI_REQUEST_NULL;
    MPI_Iallreduce(MPI_IN_PLACE, &x, 1, MPI_INT64_T, MPI_SUM, dup, &req);
    MPI_Wait(&req, MPI_STATUS_IGNORE);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  MPI_Barrier(dup);
  MPI_Comm_free(&dup);
}

TEST_CASE("MpiCommunicator's collectives", "[mpi]") {
  int const rank = world_rank(), p = world_size();
  MpiCommunicator comm(MPI_COMM_WORLD, kWait);
  CHECK(comm.rank() == rank);
  CHECK(comm.size() == p);
  std::int64_t ints[2] = {rank + 1, -rank};
  comm.all_reduce(ints, 2, ReduceOp::sum);
  CHECK(ints[0] == std::int64_t{p} * (p + 1) / 2);
  CHECK(ints[1] == -std::int64_t{p} * (p - 1) / 2);
  float floats[2] = {static_cast<float>(rank) * 0.5f, -1.0f};
  comm.all_reduce(floats, 2, ReduceOp::max);
  CHECK(floats[0] == static_cast<float>(p - 1) * 0.5f);
  CHECK(floats[1] == -1.0f);
  std::int64_t const mine[2] = {rank, 10 * rank};
  std::vector<std::int64_t> all(static_cast<std::size_t>(2 * p));
  comm.all_gather(mine, all.data(), 2);
  for (int r = 0; r < p; ++r) {
    CHECK(all[static_cast<std::size_t>(2 * r)] == r);
    CHECK(all[static_cast<std::size_t>(2 * r + 1)] == 10 * r);
  }
}

// The per-layer figures of docs/distributed.md: `mpirun -np P kvc_tests_mpi "[.measure]"`.
TEST_CASE("Communication per layer of the presses that couple heads", "[.measure]") {
  int const rank = world_rank(), p = world_size();
  MpiCommunicator mpi(MPI_COMM_WORLD, kWait);
  kvc_shard::CountingCommunicator comm(mpi);
  if (rank == 0)
    std::printf("\n| press | ranks | n | collectives | bytes per rank | communication ms | compress ms |\n");
  for (std::int64_t n : {1024, 16384}) {
    ExpectedAttentionPress ea{0.5};
    ea.n_future_positions = 16;
    ExpectedAttentionPress ea_plain = ea;
    ea_plain.use_vnorm = false;
    struct Row {
      char const* name;
      kvc_shard::Run run;
    };
    auto const one = [](auto press) -> kvc_shard::Run {
      return [press](Observation<float> const& obs, KVCacheView<float> view) { compress(cpu, press, obs, view); };
    };
    // SmolLM2-135M's layer: 3 kv heads of 64 dims, 9 query heads; 8 kv heads here so that 2 and 4 ranks divide it.
    Layer const base(1, 8, 3, n, n, 64, 3);
    std::vector<float> const sketch = kvc_test::random_vector(static_cast<std::size_t>(8 * 64 * 48), 9, 0.15f);
    std::vector<Row> const rows = {{"AdaKV(ExpectedAttention)", one(AdaKVPress{ea})},
                                   {"CriticalAdaKV(ExpectedAttention)", one(CriticalAdaKVPress{ea_plain})},
                                   {"TOVA", one(TOVAPress{0.5})},
                                   {"PyramidKV", one(PyramidKVPress{0.5, 4, 3, 2.0})},
                                   {"Knorm (per head)", one(KnormPress{0.5})},
                                   {"ChunkKV(Knorm)", one(ChunkKVPress{KnormPress{0.5}, 20})},
                                   {"SimLayerKV", one(SimLayerKVPress{0.5, 4, 64, 4})},
                                   {"LeverageScore", one(LeverageScorePress{0.5, 48, sketch.data()})}};
    for (Row const& row : rows) {
      Layer layer = base;
      Split const split = kvc_shard::splits_for(p, layer.heads).front();
      Part part(layer, kvc_shard::first_head(split, rank), split[static_cast<std::size_t>(rank)]);
      Observation<float> obs = kvc_shard::observe(layer, part.first, part.count);
      obs.shard = {&comm, part.first, layer.heads};
      comm.reset();
      MPI_Barrier(MPI_COMM_WORLD);
      auto const t0 = std::chrono::steady_clock::now();
      row.run(obs, part.cache.view());
      double const total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      MPI_Barrier(MPI_COMM_WORLD);
      double const latency = comm.replay(50);
      if (rank == 0)
        std::printf("| %s | %d | %lld | %d | %zu | %.3f | %.1f |\n", row.name, p, static_cast<long long>(n),
                    comm.collectives, comm.bytes, latency * 1e3, total * 1e3);
    }
  }
}

namespace {

/// What one cross-layer call handed to the communicator, and how long it took.
struct Counted {
  int collectives = 0;
  std::size_t bytes = 0;          // this rank's
  double communication_s = 0.0;   // the call's collectives replayed alone, per repetition
  double call_s = 0.0;            // the whole call on this rank
};

/// Runs `call` on every rank between barriers through `comm` and CHECKs its collectives and bytes
/// against docs/distributed.md's formula for it. `replays` > 0: also times its collectives replayed.
template <class Call>
Counted count_call(kvc_shard::CountingCommunicator& comm, char const* name, std::int64_t n, int collectives, std::int64_t bytes,
                   int replays, Call&& call) {
  comm.reset();
  MPI_Barrier(MPI_COMM_WORLD);
  auto const t0 = std::chrono::steady_clock::now();
  call();
  Counted out;
  out.call_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  MPI_Barrier(MPI_COMM_WORLD);
  INFO(name << ", n = " << n << ", on " << comm.size() << " ranks, rank " << comm.rank());
  CHECK(comm.collectives == collectives);
  CHECK(comm.bytes == static_cast<std::size_t>(bytes));
  out.collectives = comm.collectives;
  out.bytes = comm.bytes;
  if (replays > 0) out.communication_s = comm.replay(replays);
  return out;
}

/// The shard forms of KVzip's, FastKVzip's and KVCompose's calls across layers on a model of 4
/// layers of 8 kv heads (3 query heads each, head_dim 64) whose rows hold n entries, this rank holding
/// its 8/P heads: each call's collectives and bytes against docs/distributed.md's table. `replays` > 0:
/// rank 0 prints a row of that document's measurements per call (per layer's calls: their mean time).
void count_cross_layer_calls(kvc_shard::CountingCommunicator& comm, std::int64_t n, int replays) {
  constexpr int layers = 4;
  constexpr std::int64_t H = 8, kGroupSize = 3, kDim = 64, kReplayRows = 4;
  // The document's terms: a handshake is 8 int64 per rank; a radix select's 4 histograms are 256 int64 each.
  constexpr std::int64_t kHandshake = 64, kHistograms = 4 * 256 * 8;
  int const rank = comm.rank(), p = comm.size();
  Split const split = kvc_shard::splits_for(p, H).front();
  std::int64_t const first = kvc_shard::first_head(split, rank), count = split[static_cast<std::size_t>(rank)];
  TensorParallelShard const shard{&comm, first, H};
  constexpr auto L = static_cast<std::size_t>(layers);
  auto const print = [&](char const* name, Counted const& c) {
    if (replays > 0 && rank == 0)
      std::printf("| %s | %d | %lld | %d | %zu | %.3f | %.1f |\n", name, p, static_cast<long long>(n), c.collectives, c.bytes,
                  c.communication_s * 1e3, c.call_s * 1e3);
  };
  // This rank's scores of its heads of every layer, [layers, count, n].
  std::vector<float> const scores = kvc_test::random_vector(L * static_cast<std::size_t>(count * n), 300u + static_cast<std::uint32_t>(rank));

  KVzipPress const kvzip{0.5};
  std::vector<float> protected_scores = scores;
  print("KVzip `protect_sinks`, 4 layers",
        count_call(comm, "KVzip protect_sinks", n, 2, kHandshake + 4, replays,
                   [&] { kvzip.protect_sinks(protected_scores.data(), layers, count, n, shard); }));

  FastKVzipPress const fast{0.5};
  std::vector<std::int64_t> pruned(L);
  print("FastKVzip `cross_layer_pruned_counts`, 4 layers",
        count_call(comm, "cross_layer_pruned_counts", n, 6, kHandshake + kHistograms + 16 * layers * H, replays, [&] {
          cross_layer_pruned_counts(scores.data(), layers, count, n, fast.compression_ratio, false, pruned.data(), shard);
        }));
  std::int64_t evicted = 0;
  for (std::int64_t x : pruned) evicted += x;
  CHECK(evicted == layers * H * n / 2);  // int(L·H·n·0.5), the whole model's

  // Each layer evicts its count over its heads; the cache's capacity is n, so a layer's slice of the
  // scores is the [count, capacity] table the call reads.
  Counted per_layer;
  for (int l = 0; l < layers; ++l) {
    kvc_test::OwnedCache<float> cache(1, count, n, kDim);
    std::vector<std::byte> scratch(evict_lowest_across_heads_workspace_bytes(cpu, cache.view(), shard));
    Counted const c = count_call(comm, "evict_lowest_across_heads", n, 7, kHandshake + 8 + kHistograms + 16 * H,
                                 l == 0 ? replays : 0, [&] {
                                   evict_lowest_across_heads(cpu, cache.view(), scores.data() + l * count * n,
                                                             pruned[static_cast<std::size_t>(l)],
                                                             Workspace(scratch.data(), scratch.size()), shard);
                                 });
    if (l == 0) per_layer = c;
    else per_layer.call_s += c.call_s;
  }
  per_layer.call_s /= layers;
  print("FastKVzip `evict_lowest_across_heads`, per layer", per_layer);
  if (replays == 0) {
    // Taking nothing or everything, the selection stops after its first histogram; layerwise, the
    // counts need only the handshake.
    std::vector<std::int64_t> none(L);
    count_call(comm, "cross_layer_pruned_counts at ratio 0", n, 3, kHandshake + kHistograms / 4 + 16 * layers * H, 0, [&] {
      cross_layer_pruned_counts(scores.data(), layers, count, n, 0.0, false, none.data(), shard);
    });
    count_call(comm, "cross_layer_pruned_counts layerwise", n, 1, kHandshake, 0, [&] {
      cross_layer_pruned_counts(scores.data(), layers, count, n, 0.5, true, none.data(), shard);
    });
    kvc_test::OwnedCache<float> cache(1, count, n, kDim);
    std::vector<std::byte> scratch(evict_lowest_across_heads_workspace_bytes(cpu, cache.view(), shard));
    count_call(comm, "evict_lowest_across_heads evicting nothing", n, 4, kHandshake + 8 + kHistograms / 4 + 16 * H, 0, [&] {
      evict_lowest_across_heads(cpu, cache.view(), scores.data(), 0, Workspace(scratch.data(), scratch.size()), shard);
    });
  }

  KVComposePress press;
  press.compression_ratio = 0.5;
  KVComposeStatistics stats(press, layers, count * kGroupSize, n);
  std::vector<float> attention =
      kvc_test::random_vector(static_cast<std::size_t>(count * kGroupSize * kReplayRows * (n + kReplayRows)), 400u + static_cast<std::uint32_t>(rank));
  for (float& x : attention) x = std::abs(x) / static_cast<float>(n);
  for (int l = 0; l < layers; ++l)
    stats.add(cpu, l, make_tensor4(attention.data(), {1, count * kGroupSize, kReplayRows, n + kReplayRows}));
  KVComposePlan plan;
  print("KVCompose `kvcompose_plan`, 4 layers",
        count_call(comm, "kvcompose_plan", n, 2, kHandshake + 4 * layers * H * n, replays,
                   [&] { plan = kvcompose_plan(cpu, press, stats, count, nullptr, shard); }));
  CHECK(plan.kv_heads == H);

  per_layer = {};
  for (int l = 0; l < layers; ++l) {
    kvc_test::OwnedCache<float> cache(1, count, n, kDim);
    std::vector<std::byte> scratch(kvcompose_compress_workspace_bytes(cpu, cache.view()));
    Counted const c = count_call(comm, "kvcompose_compress", n, 1, kHandshake, l == 0 ? replays : 0, [&] {
      kvcompose_compress(cpu, plan, l, cache.view(), Workspace(scratch.data(), scratch.size()), shard);
    });
    if (l == 0) per_layer = c;
    else per_layer.call_s += c.call_s;
  }
  per_layer.call_s /= layers;
  print("KVCompose `kvcompose_compress`, per layer", per_layer);
}

}  // namespace

// docs/distributed.md's byte counts of the cross-layer presses, at a size CTest runs in moments.
TEST_CASE("The cross-layer presses' shard forms exchange the bytes that docs/distributed.md gives", "[mpi]") {
  MpiCommunicator mpi(MPI_COMM_WORLD, kWait);
  kvc_shard::CountingCommunicator comm(mpi);
  count_cross_layer_calls(comm, 64, 0);
}

namespace {

/// A press's collectives and bytes per rank on one layer, from docs/distributed.md's table.
struct Exchange {
  int collectives;
  std::int64_t bytes;
};

/// docs/distributed.md's "What each press communicates", evaluated for a layer of batch B, H kv heads
/// and n entries per row, for each scenario of the shard harness by its name. A handshake is 8 int64
/// per rank, the layer's maximum one float; AdaKV's radix select exchanges, per sequence, Σ budgets
/// and Σ pooled (32 bytes), 4 histograms of 256 int64 and the per-head tie counts (one int64 each). A wrapper's "inner" is its inner
/// press's own row, handshake included, when that press communicates, and nothing for a per-head press.
Exchange documented_exchange(std::string const& name, std::int64_t B, std::int64_t H, std::int64_t n) {
  constexpr std::int64_t kHandshake = 64, kMax = 4;
  Exchange const none{0, 0}, closing{1, kHandshake}, with_max{2, kHandshake + kMax};
  Exchange const tova{2, kHandshake + 4 * B * H * (n - 1)};
  auto const plus = [](Exchange outer, Exchange inner) {
    return Exchange{outer.collectives + inner.collectives, outer.bytes + inner.bytes};
  };
  // The inner press of a wrapper scenario, from the parentheses of its name.
  auto const inner = [&]() -> Exchange {
    if (name.find("(TOVA)") != std::string::npos) return tova;
    for (char const* p : {"(SnapKV)", "(CAP)", "(Finch)"})
      if (name.find(p) != std::string::npos) return with_max;
    return none;
  };
  Exchange const adakv{7, kHandshake + 32 * B + 8192 * B + 8 * B * H};
  auto const chunk_kv = [&](std::int64_t chunk) { return Exchange{2, kHandshake + 8 * B * H * ((n + chunk - 1) / chunk)}; };
  if (name.rfind("AdaKV(", 0) == 0 || name.rfind("CriticalAdaKV(", 0) == 0) return plus(adakv, inner());
  if (name == "TOVA" || name == "Merging(TOVA)" || name == "PerLayerCompression(TOVA)") return tova;
  if (name == "Composed(TOVA, SnapKV)") return plus(tova, with_max);
  if (name == "PyramidKV") return with_max;
  if (name == "ChunkKV(Knorm)") return chunk_kv(6);
  if (name == "ChunkKV(SnapKV)" || name == "ChunkKV(CAP)") return plus(chunk_kv(5), inner());
  if (name == "ChunkKV(ExpectedAttention), no complete chunk") return chunk_kv(64);
  if (name == "ChunkKV(TOVA)") return plus(chunk_kv(7), inner());
  if (name.rfind("SimLayerKV", 0) == 0) return {2, kHandshake + 8 * B * H};
  if (name == "LeverageScore" || name == "NonCausalAttn") return {3, kHandshake + 16 * B * H};
  if (name == "Compactor") return {4, kHandshake + kMax + 32 * B * H};
  if (name == "SnapKV" || name == "CAP" || name.rfind("Finch", 0) == 0) return with_max;
  if (name == "LUKV(Knorm)") return {4, 2 * kHandshake + kMax + 8 * B * H};
  if (name.rfind("EntropyGatedChunkKV(", 0) == 0) return plus({2, kHandshake + 4 * B * H * n}, inner());
  // Per head: the closing handshake.
  for (char const* per_head : {"QFilter", "Random, seeded", "DuoAttention", "KVzap, linear", "KVzap, MLP", "ObservedAttention",
                               "ExpectedAttention", "Knorm", "CriticalKV(ExpectedAttention)", "CUR", "Merging(Knorm)", "KeyDiff",
                               "StreamingLLM"})
    if (name == per_head) return closing;
  return {-1, -1};  // not in the table: the test fails on it
}

}  // namespace

// Every row of docs/distributed.md's table of what each press communicates, on each scenario of the
// shard harness: its collectives and bytes per rank against the row's formula.
TEST_CASE("Every press's shard form exchanges the bytes that docs/distributed.md gives", "[mpi]") {
  using namespace kvc_shard;
  int const rank = world_rank(), p = world_size();
  MpiCommunicator mpi(MPI_COMM_WORLD, kWait);
  CountingCommunicator comm(mpi);
  std::vector<Scenario> scenarios;
  for (auto make : {coupled_scenarios, combining_scenarios, later_coupled_scenarios, per_head_scenarios, later_per_head_scenarios})
    for (auto& s : make()) scenarios.push_back(std::move(s));
  auto const one = [](auto press) -> Run {
    return [press](Observation<float> const& obs, KVCacheView<float> view) { compress(cpu, press, obs, view); };
  };
  scenarios.push_back({"KeyDiff", default_layer, one(KeyDiffPress{0.5})});
  scenarios.push_back({"StreamingLLM", default_layer, one(StreamingLLMPress{0.5, 2})});
  scenarios.push_back({"PerLayerCompression(TOVA)", default_layer, one(PerLayerCompressionPress{TOVAPress{}, {0.5}})});
  scenarios.push_back({"Composed(TOVA, SnapKV)", default_layer, one(ComposedPress{TOVAPress{0.3}, SnapKVPress{0.3, 4, 3}})});
  for (Scenario const& scenario : scenarios) {
    Layer layer = scenario.make_layer();
    Split const split = splits_for(p, layer.heads).front();
    Part part(layer, first_head(split, rank), split[static_cast<std::size_t>(rank)]);
    Observation<float> obs = observe(layer, part.first, part.count, scenario.layer_idx, scenario.num_layers, scenario.attention);
    obs.shard = {&comm, part.first, layer.heads};
    Exchange const e = documented_exchange(scenario.name, layer.batch, layer.heads, layer.n);
    count_call(comm, scenario.name.c_str(), layer.n, e.collectives, e.bytes, 0, [&] { scenario.run(obs, part.cache.view()); });
  }
}

// KVzip's and FastKVzip's rows, their scores: per head, the closing handshake per chunk and layer
// (KVzip's `score_chunk`) or per layer (FastKVzip's `score_layer`).
TEST_CASE("KVzip's and FastKVzip's scoring on a shard exchanges the bytes that docs/distributed.md gives", "[mpi]") {
  using kvc_shard::kHeads;
  int const rank = world_rank(), p = world_size();
  MpiCommunicator mpi(MPI_COMM_WORLD, kWait);
  kvc_shard::CountingCommunicator comm(mpi);
  Split const split = kvc_shard::splits_for(p, kHeads).front();
  std::int64_t const first = kvc_shard::first_head(split, rank), count = split[static_cast<std::size_t>(rank)];
  TensorParallelShard const shard{&comm, first, kHeads};
  std::deque<Layer> const model = kvc_shard::make_model(kvc_shard::kContext + kvc_shard::kRepeat, 61);
  std::vector<float> const hidden = kvc_test::random_vector(static_cast<std::size_t>(kvc_shard::kLayers * kvc_shard::kRepeat * 24), 62);
  KVzipPress kvzip{0.6};
  kvzip.chunk_size = 10;  // 3 chunks of the 24 context entries
  Part part(model.front(), first, count);
  std::vector<float> scores(static_cast<std::size_t>(count * kvc_shard::kContext));
  count_call(comm, "KVzip score_chunk, one layer", kvc_shard::kContext, 3, 3 * 64, 0,
             [&] { kvc_shard::kvzip_scores(model, kvzip, hidden)(0, part.cache, first, count, shard, scores.data()); });
  kvc_shard::Gates const gates;
  std::vector<float> const gate_hidden =
      kvc_test::random_vector(static_cast<std::size_t>(kvc_shard::kLayers * kvc_shard::kTokens * kvc_shard::kGateHidden), 82);
  FastKVzipPress const fast{0.5};
  scores.resize(static_cast<std::size_t>(count * kvc_shard::kTokens));
  count_call(comm, "FastKVzip score_layer, one layer", kvc_shard::kTokens, 1, 64, 0,
             [&] { kvc_shard::fast_kvzip_scores(fast, gates, gate_hidden)(0, part.cache, first, count, shard, scores.data()); });
}

// DecodingPress's row: a step that does not compress is the closing handshake; one that compresses,
// the handshake, the longest row (one int64) and the inner press's row (TOVA's handshake and its mean
// over the heads of the rows it scores).
TEST_CASE("DecodingPress's shard form exchanges the bytes that docs/distributed.md gives", "[mpi]") {
  using kvc_shard::Decoding;
  int const rank = world_rank(), p = world_size();
  MpiCommunicator mpi(MPI_COMM_WORLD, kWait);
  kvc_shard::CountingCommunicator comm(mpi);
  Layer layer = Decoding::make_layer();
  Split const split = kvc_shard::splits_for(p, layer.heads).front();
  std::int64_t const first = kvc_shard::first_head(split, rank), count = split[static_cast<std::size_t>(rank)];
  Part part(layer, first, count);
  comm.reset();
  Decoding::run(layer, part.cache, first, {&comm, first, layer.heads});
  // The prefill and 10 steps, compressing at steps 4 and 8 (every 4 steps) rows of 28 and 24 entries.
  std::int64_t const B = layer.batch, H = layer.heads;
  auto const tova = [&](std::int64_t n) { return 64 + 4 * B * H * (n - 1); };
  INFO("DecodingPress(TOVA) on " << p << " ranks, rank " << rank);
  CHECK(comm.collectives == 1 + 8 + 2 * (2 + 2));
  CHECK(comm.bytes == static_cast<std::size_t>(9 * 64 + 2 * 72 + tova(28) + tova(24)));
}

// The same calls' figures of docs/distributed.md: `mpirun -np P kvc_tests_mpi "[across_layers]"`.
TEST_CASE("Communication of the calls of KVzip and FastKVzip and KVCompose across layers", "[.measure][across_layers]") {
  MpiCommunicator mpi(MPI_COMM_WORLD, kWait);
  kvc_shard::CountingCommunicator comm(mpi);
  if (comm.rank() == 0)
    std::printf("\n| call | ranks | n | collectives | bytes per rank | communication ms | call ms |\n");
  for (std::int64_t n : {1024, 16384}) count_cross_layer_calls(comm, n, 50);
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  Catch::Session session;
  // A rank with failures ends the job: the others may be waiting for it in a collective.
  int result = session.applyCommandLine(argc, argv);
  if (result == 0) result = session.run();
  if (result != 0) {
    std::fprintf(stderr, "rank %d: %d test failure(s)\n", world_rank(), result);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  MPI_Finalize();
  return 0;
}
