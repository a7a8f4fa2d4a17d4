// CPU benchmarks at the Llama-3.1-8B layer shape (32 query heads, 8 KV heads, head_dim 128,
// llama3 RoPE), batch 1, fp32 storage, 2 threads. Counters: bytes/s over what each step must read,
// FLOP/s over the arithmetic of its definition (formulas beside each benchmark).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "kvcompress/kvcompress.hpp"
#include "llama31_layer.hpp"

namespace kvc = kvcompress;

namespace {

using kvc_bench::kDim;
using kvc_bench::kKvHeads;
using kvc_bench::kQHeads;
using kvc_bench::kWindow;
kvc::CpuDevice const kDevice{2};

/// One layer's prefill state of n tokens, built once per size and shared by the benchmarks.
struct Layer {
  std::int64_t n;
  std::vector<float> keys, values, queries, window_queries, pristine_keys, pristine_values;
  std::vector<std::int32_t> lengths;
  kvc::CacheExtents extents;
  kvc::RotaryEmbedding rope;

  explicit Layer(std::int64_t tokens)
      : n(tokens),
        keys(static_cast<std::size_t>(kKvHeads * n * kDim)),
        values(keys.size()),
        queries(static_cast<std::size_t>(kQHeads * n * kDim)),
        window_queries(static_cast<std::size_t>(kQHeads * kWindow * kDim)),
        lengths(kKvHeads, static_cast<std::int32_t>(n)),
        extents{1, kKvHeads, n, kDim},
        rope(kvc_bench::llama31_rope()) {
    std::mt19937 gen(42);
    std::normal_distribution<float> normal;
    for (auto* v : {&keys, &values, &queries, &window_queries})
      for (float& x : *v) x = normal(gen);
    pristine_keys = keys;
    pristine_values = values;
  }

  void restore() {
    keys = pristine_keys;
    values = pristine_values;
    std::fill(lengths.begin(), lengths.end(), static_cast<std::int32_t>(n));
  }

  kvc::KVCacheView<float> view() {
    auto const layout = kvc::make_strided_layout(extents, {kvc::Axis::kBatch, kvc::Axis::kHead, kvc::Axis::kSeq,
                                                           kvc::Axis::kDim});
    return kvc::make_cache_view(keys.data(), values.data(), extents, layout, lengths.data());
  }

  kvc::Observation<float> observation() const {
    kvc::Observation<float> obs;
    obs.queries = kvc::make_tensor4(queries.data(), {1, kQHeads, n, kDim});
    obs.window_queries = kvc::make_tensor4(window_queries.data(), {1, kQHeads, kWindow, kDim});
    obs.rope = &rope;
    return obs;
  }

  [[nodiscard]] double kv_bytes() const { return 2.0 * double(keys.size()) * sizeof(float); }
  [[nodiscard]] double query_bytes() const { return double(queries.size()) * sizeof(float); }
};

Layer& layer(std::int64_t n) {
  static std::vector<std::unique_ptr<Layer>> cache;
  for (auto& l : cache)
    if (l->n == n) return *l;
  cache.push_back(std::make_unique<Layer>(n));
  return *cache.back();
}

void set_rates(benchmark::State& state, double bytes, double flops) {
  state.counters["bytes_per_second"] = benchmark::Counter(bytes, benchmark::Counter::kIsIterationInvariantRate,
                                                          benchmark::Counter::kIs1024);
  state.counters["FLOP_per_second"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["tokens"] = static_cast<double>(state.range(0));
}

template <class Press>
void run_score(benchmark::State& state, Press const& press, double bytes, double flops) {
  Layer& l = layer(state.range(0));
  auto const view = l.view();
  auto const obs = l.observation();
  std::vector<float> scores(static_cast<std::size_t>(kKvHeads * l.n));
  std::vector<std::byte> scratch(press.workspace_bytes(kDevice, obs, view));
  for (auto _ : state) {
    kvc::Workspace ws(scratch.data(), scratch.size());
    kvc::score(kDevice, press, obs, view, scores.data(), ws);
    benchmark::DoNotOptimize(scores.data());
  }
  set_rates(state, bytes, flops);
}

// Expected Attention with covariance. FLOPs: query statistics 2·H·q·d² (centred second moment)
// + quadratic forms 2·H·n·d² + mean terms 2·H·n·d; bytes: queries + K + V.
void BM_ExpectedAttentionScore_Cov(benchmark::State& state) {
  Layer& l = layer(state.range(0));
  double const n = double(l.n), d = double(kDim), h = double(kQHeads);
  run_score(state, kvc::ExpectedAttentionPress{}, l.query_bytes() + l.kv_bytes(),
            2 * h * n * d * d + 2 * h * n * d * d + 2 * h * n * d);
}

// Expected Attention, mean only. FLOPs: query means H·q·d + mean terms 2·H·n·d; bytes: queries + K + V.
void BM_ExpectedAttentionScore_NoCov(benchmark::State& state) {
  Layer& l = layer(state.range(0));
  kvc::ExpectedAttentionPress press;
  press.use_covariance = false;
  double const n = double(l.n), d = double(kDim), h = double(kQHeads);
  run_score(state, press, l.query_bytes() + l.kv_bytes(), h * n * d + 2 * h * n * d);
}

// SnapKV from 64 window queries. FLOPs: logits 2·H·w·n·d; bytes: K + window queries.
void BM_SnapKVScore(benchmark::State& state) {
  Layer& l = layer(state.range(0));
  double const n = double(l.n), d = double(kDim), h = double(kQHeads), w = double(kWindow);
  run_score(state, kvc::SnapKVPress{0.0, kWindow, 5}, l.kv_bytes() / 2 + double(l.window_queries.size()) * 4,
            2 * h * w * n * d);
}

// Knorm. FLOPs: 2·h·n·d; bytes: K.
void BM_KnormScore(benchmark::State& state) {
  Layer& l = layer(state.range(0));
  run_score(state, kvc::KnormPress{}, l.kv_bytes() / 2, 2.0 * kKvHeads * double(l.n) * kDim);
}

// Selection (top n/2 per head) and in-place compaction. Bytes: scores read + half of K and V moved (r+w).
void BM_SelectCompact(benchmark::State& state) {
  Layer& l = layer(state.range(0));
  std::vector<float> scores(static_cast<std::size_t>(kKvHeads * l.n));
  std::mt19937 gen(1);
  std::uniform_real_distribution<float> u;
  for (float& s : scores) s = u(gen);
  std::vector<std::byte> scratch(kvc::Workspace::bytes_for<std::int32_t>(static_cast<std::size_t>(2 * l.n)));
  for (auto _ : state) {
    state.PauseTiming();
    l.restore();
    auto const view = l.view();
    state.ResumeTiming();
    kvc::Workspace ws(scratch.data(), scratch.size());
    kvc::keep_topk(kDevice, view, scores.data(), [](std::int64_t n) { return kvc::kept_count(n, 0.5); }, ws);
  }
  set_rates(state, double(scores.size()) * 4 + l.kv_bytes(), 0.0);
}

// The same selection and compaction through a paged view: page size 16, the pages of the pool
// (the same K and V buffers) shuffled by the block table, as in an engine after many requests.
void BM_SelectCompactPaged(benchmark::State& state, kvc::PageTable kind) {
  Layer& l = layer(state.range(0));
  std::int64_t const page = 16, per_row = l.n / page;
  std::vector<std::int32_t> table(static_cast<std::size_t>((kind == kvc::PageTable::kPerHead ? kKvHeads : 1) * per_row));
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), std::mt19937(3));
  auto const layout = kvc::make_paged_layout(
      l.extents, kvc::PagedConfig{kind, kvc::PageOrder::kNHD, page, static_cast<std::int64_t>(table.size()), table.data(), per_row});
  std::vector<float> scores(static_cast<std::size_t>(kKvHeads * l.n));
  std::mt19937 gen(1);
  std::uniform_real_distribution<float> u;
  for (float& s : scores) s = u(gen);
  std::vector<std::byte> scratch(kvc::Workspace::bytes_for<std::int32_t>(static_cast<std::size_t>(2 * l.n)));
  std::vector<std::int32_t> freed(table.size());
  std::int64_t n_freed = 0;
  for (auto _ : state) {
    state.PauseTiming();
    l.restore();
    std::vector<std::int32_t> const before = l.lengths;
    auto const view = kvc::make_cache_view(l.keys.data(), l.values.data(), l.extents, layout, layout, l.lengths.data());
    state.ResumeTiming();
    kvc::Workspace ws(scratch.data(), scratch.size());
    kvc::keep_topk(kDevice, view, scores.data(), [](std::int64_t n) { return kvc::kept_count(n, 0.5); }, ws);
    n_freed = kvc::released_pages(view, before.data(), freed.data(), static_cast<std::int64_t>(freed.size()));
  }
  set_rates(state, double(scores.size()) * 4 + l.kv_bytes(), 0.0);
  state.counters["pages_freed"] = static_cast<double>(n_freed);
}

// The whole compress step: Expected Attention with covariance at 50 %, selection and compaction.
void BM_ExpectedAttentionCompress(benchmark::State& state) {
  Layer& l = layer(state.range(0));
  kvc::ExpectedAttentionPress press;
  press.compression_ratio = 0.5;
  auto const obs = l.observation();
  std::vector<std::byte> scratch(kvc::compress_workspace_bytes(kDevice, press, obs, l.view()));
  for (auto _ : state) {
    state.PauseTiming();
    l.restore();
    auto const view = l.view();
    state.ResumeTiming();
    kvc::compress(kDevice, press, obs, view, kvc::Workspace(scratch.data(), scratch.size()));
  }
  double const n = double(l.n), d = double(kDim), h = double(kQHeads);
  set_rates(state, l.query_bytes() + 1.5 * l.kv_bytes(), 4 * h * n * d * d + 2 * h * n * d);
}

void sizes(benchmark::internal::Benchmark* b) {
  b->Arg(4096)->Arg(16384)->Arg(32768)->Unit(benchmark::kMillisecond)->MinTime(0.5)->UseRealTime();
}

}  // namespace

BENCHMARK(BM_ExpectedAttentionScore_Cov)->Apply(sizes);
BENCHMARK(BM_ExpectedAttentionScore_NoCov)->Apply(sizes);
BENCHMARK(BM_SnapKVScore)->Apply(sizes);
BENCHMARK(BM_KnormScore)->Apply(sizes);
BENCHMARK(BM_SelectCompact)->Apply(sizes);
BENCHMARK_CAPTURE(BM_SelectCompactPaged, per_sequence, kvc::PageTable::kPerSequence)->Apply(sizes);
BENCHMARK_CAPTURE(BM_SelectCompactPaged, per_head, kvc::PageTable::kPerHead)->Apply(sizes);
BENCHMARK(BM_ExpectedAttentionCompress)->Apply(sizes);
BENCHMARK_MAIN();
