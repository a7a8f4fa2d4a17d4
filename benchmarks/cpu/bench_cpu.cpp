// CPU benchmarks at the Llama-3.1-8B layer shape (32 query heads, 8 KV heads, head_dim 128,
// llama3 RoPE), batch 1. Counters: bytes/s over what each step must read, FLOP/s over the arithmetic
// of its definition (formulas beside each benchmark). The machine's own ceilings (an fp32 GEMM, the
// AVX512_BF16 dot-product peak, streaming read and copy bandwidth) are measured first, in the same
// run, so that the report can give every row as a fraction of the ceiling it is bound by.
// Arguments of every press benchmark: {tokens, threads}. `BM_Pool/<benchmark>` runs that benchmark with
// its loops on a persistent kvcompress::ThreadPool (CpuDevice::pool) instead of threads started per loop.
#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <cstring>
#include <ctime>
#include <memory>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

#include "kvcompress/kvcompress.hpp"
#include "llama31_layer.hpp"

namespace kvc = kvcompress;

namespace {

using kvc_bench::kDim;
using kvc_bench::kKvHeads;
using kvc_bench::kQHeads;
using kvc_bench::kWindow;

/// Runs f(i) on `threads` threads at once and joins them: the ceilings use the same two threads as
/// the presses, each on its own data, as the presses split work by (batch, head) rows.
template <class F>
void on_threads(int threads, F const& f) {
  std::vector<std::thread> pool;
  for (int i = 1; i < threads; ++i) pool.emplace_back(f, i);
  f(0);
  for (auto& t : pool) t.join();
}

double cpu_seconds(clockid_t clock) {
  timespec t{};
  clock_gettime(clock, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

void set_rates(benchmark::State& state, double bytes, double flops) {
  state.counters["bytes_per_second"] = benchmark::Counter(bytes, benchmark::Counter::kIsIterationInvariantRate,
                                                          benchmark::Counter::kIs1024);
  state.counters["FLOP_per_second"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["tokens"] = static_cast<double>(state.range(0));
  state.counters["threads"] = static_cast<double>(state.range(1));
}

// ---- ceilings --------------------------------------------------------------------------------------

// fp32 GEMM, Eigen's kernel, one independent m×k·k×n product per thread. {m, threads}; k = n = m for
// the square case; FLOPs 2·m·k·n per thread.
void BM_Ceiling_GemmF32(benchmark::State& state, std::int64_t inner) {
  std::int64_t const m = state.range(0), k = inner > 0 ? inner : m, n = inner > 0 ? inner : m;
  int const threads = static_cast<int>(state.range(1));
  std::vector<Eigen::MatrixXf> a, b, c;
  for (int t = 0; t < threads; ++t) {
    a.push_back(Eigen::MatrixXf::Random(m, k));
    b.push_back(Eigen::MatrixXf::Random(k, n));
    c.emplace_back(m, n);
  }
  for (auto _ : state) {
    on_threads(threads, [&](int t) { c[t].noalias() = a[t] * b[t]; });
    benchmark::DoNotOptimize(c[0].data());
  }
  state.counters["FLOP_per_second"] =
      benchmark::Counter(2.0 * double(m) * double(k) * double(n) * threads, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = threads;
}

#if defined(__AVX512BF16__)
// The bf16 dot-product peak: VDPBF16PS on L1-resident operands, 8 independent accumulators per thread
// (enough to cover the instruction's latency). One instruction: 32 bf16 products summed pairwise into
// 16 fp32 lanes, 64 FLOPs.
void BM_Ceiling_Bf16Dot(benchmark::State& state) {
  int const threads = static_cast<int>(state.range(1));
  std::int64_t constexpr kVecs = 64, kRepeats = 4096;  // 64 × 64 B = 4 KiB per operand: in L1
  for (auto _ : state) {
    on_threads(threads, [&](int t) {
      alignas(64) std::uint16_t a[kVecs * 32], b[kVecs * 32];
      for (std::int64_t i = 0; i < kVecs * 32; ++i) {
        a[i] = static_cast<std::uint16_t>(0x3f80 + ((i + t) & 7));  // bf16 1.0 … 1.05
        b[i] = 0x3f80;
      }
      __m512 acc[8];
      for (auto& x : acc) x = _mm512_setzero_ps();
      for (std::int64_t r = 0; r < kRepeats; ++r)
        for (std::int64_t v = 0; v < kVecs; v += 8)
          for (int u = 0; u < 8; ++u) {
            __m512bh const x = (__m512bh)_mm512_load_si512(a + (v + u) * 32);
            __m512bh const y = (__m512bh)_mm512_load_si512(b + (v + u) * 32);
            acc[u] = _mm512_dpbf16_ps(acc[u], x, y);
          }
      __m512 sum = acc[0];
      for (int u = 1; u < 8; ++u) sum = _mm512_add_ps(sum, acc[u]);
      benchmark::DoNotOptimize(sum);
    });
  }
  state.counters["FLOP_per_second"] =
      benchmark::Counter(64.0 * kVecs * kRepeats * threads, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = threads;
}
#endif

/// K/V storage on whole cache lines, as an engine's page-aligned pool gives (std::vector's own
/// blocks are only 16-byte aligned): compaction streams whole 64-byte lines (cpu/compact.hpp).
template <class T>
using Buffer = std::vector<T, kvc::AlignedAllocator<T>>;

/// A buffer far larger than the last-level cache, split between the threads.
Buffer<float>& stream_buffer() {
  static Buffer<float> buf(std::size_t{1} << 28, 1.0f);  // 1 GiB
  return buf;
}

// Streaming read: every thread sums its half with 64 partial sums (vectorised, never latency-bound).
void BM_Ceiling_StreamRead(benchmark::State& state) {
  int const threads = static_cast<int>(state.range(1));
  auto& buf = stream_buffer();
  std::size_t const per = buf.size() / static_cast<std::size_t>(threads);
  std::vector<float> sums(static_cast<std::size_t>(threads));
  for (auto _ : state) {
    on_threads(threads, [&](int t) {
      float part[64] = {};
      float const* p = buf.data() + per * static_cast<std::size_t>(t);  // [per]
      for (std::size_t i = 0; i + 64 <= per; i += 64)
        for (int j = 0; j < 64; ++j) part[j] += p[i + static_cast<std::size_t>(j)];
      sums[static_cast<std::size_t>(t)] = std::accumulate(part, part + 64, 0.0f);
    });
    benchmark::DoNotOptimize(sums.data());
  }
  state.counters["bytes_per_second"] =
      benchmark::Counter(double(buf.size()) * 4, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1024);
  state.counters["threads"] = threads;
}

// Streaming copy: each thread copies its quarter of the buffer onto another quarter; bytes read + written.
void BM_Ceiling_StreamCopy(benchmark::State& state) {
  int const threads = static_cast<int>(state.range(1));
  auto& buf = stream_buffer();
  std::size_t const half = buf.size() / 2, per = half / static_cast<std::size_t>(threads);
  for (auto _ : state) {
    on_threads(threads, [&](int t) {
      std::size_t const off = per * static_cast<std::size_t>(t);
      std::memcpy(buf.data() + half + off, buf.data() + off, per * sizeof(float));
    });
    benchmark::ClobberMemory();
  }
  state.counters["bytes_per_second"] =
      benchmark::Counter(double(half) * 4 * 2, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1024);
  state.counters["threads"] = threads;
}

// ---- the presses -----------------------------------------------------------------------------------

/// One layer's prefill state of n tokens in storage type T, built once per (size, type) and shared by
/// the benchmarks.
template <class T>
struct Layer {
  std::int64_t n;
  Buffer<T> keys, values, queries, window_queries, pristine_keys, pristine_values;
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
      for (T& x : *v) x = T(normal(gen));
    pristine_keys = keys;
    pristine_values = values;
  }

  void restore() {
    keys = pristine_keys;
    values = pristine_values;
    std::fill(lengths.begin(), lengths.end(), static_cast<std::int32_t>(n));
  }

  kvc::KVCacheView<T> view() {
    auto const layout = kvc::make_strided_layout(extents, {kvc::Axis::kBatch, kvc::Axis::kHead, kvc::Axis::kSeq,
                                                           kvc::Axis::kDim});
    return kvc::make_cache_view(keys.data(), values.data(), extents, layout, lengths.data());
  }

  kvc::Observation<T> observation() const {
    kvc::Observation<T> obs;
    obs.queries = kvc::make_tensor4(queries.data(), {1, kQHeads, n, kDim});
    obs.window_queries = kvc::make_tensor4(window_queries.data(), {1, kQHeads, kWindow, kDim});
    obs.rope = &rope;
    return obs;
  }

  [[nodiscard]] double kv_bytes() const { return 2.0 * double(keys.size()) * sizeof(T); }
  [[nodiscard]] double query_bytes() const { return double(queries.size()) * sizeof(T); }
};

template <class T>
Layer<T>& layer(std::int64_t n) {
  static std::vector<std::unique_ptr<Layer<T>>> cache;
  for (auto& l : cache)
    if (l->n == n) return *l;
  cache.push_back(std::make_unique<Layer<T>>(n));
  return *cache.back();
}

/// The pool of the `BM_Pool/…` run in progress, else nullptr (threads started per loop).
kvc::ThreadPool* g_pool = nullptr;

kvc::CpuDevice device(benchmark::State const& state, kvc::CpuKernels kernels = kvc::CpuKernels::kNative) {
  return kvc::CpuDevice{static_cast<int>(state.range(1)), kernels, g_pool};
}

template <class T, class Press>
void run_score(benchmark::State& state, Press const& press, double bytes, double flops,
               kvc::CpuKernels kernels = kvc::CpuKernels::kNative) {
  Layer<T>& l = layer<T>(state.range(0));
  auto const dev = device(state, kernels);
  auto const view = l.view();
  auto const obs = l.observation();
  std::vector<float> scores(static_cast<std::size_t>(kKvHeads * l.n));
  std::vector<std::byte> scratch(press.workspace_bytes(dev, obs, view));
  double const process0 = cpu_seconds(CLOCK_PROCESS_CPUTIME_ID), caller0 = cpu_seconds(CLOCK_THREAD_CPUTIME_ID);
  for (auto _ : state) {
    kvc::Workspace ws(scratch.data(), scratch.size());
    kvc::score(dev, press, obs, view, scores.data(), ws);
    benchmark::DoNotOptimize(scores.data());
  }
  // CPU time per call of every thread of the process, and of the calling thread alone. On a loaded
  // machine the wall time is not the step's, but these still tell how much work a second thread adds
  // (1 against 2 threads), and how much runs on the caller alone (caller − others, on 2 threads).
  double const calls = static_cast<double>(std::max<benchmark::IterationCount>(state.iterations(), 1));
  state.counters["process_cpu_ms"] = 1e3 * (cpu_seconds(CLOCK_PROCESS_CPUTIME_ID) - process0) / calls;
  state.counters["caller_cpu_ms"] = 1e3 * (cpu_seconds(CLOCK_THREAD_CPUTIME_ID) - caller0) / calls;
  set_rates(state, bytes, flops);
}

/// The whole compress step (score, select, compact) of `press`, the cache restored between calls.
template <class T, class Press>
void run_compress(benchmark::State& state, Press const& press, double bytes, double flops) {
  Layer<T>& l = layer<T>(state.range(0));
  auto const dev = device(state);
  auto const obs = l.observation();
  std::vector<std::byte> scratch(kvc::compress_workspace_bytes(dev, press, obs, l.view()));
  for (auto _ : state) {
    state.PauseTiming();
    l.restore();
    auto const view = l.view();
    state.ResumeTiming();
    kvc::compress(dev, press, obs, view, kvc::Workspace(scratch.data(), scratch.size()));
  }
  set_rates(state, bytes, flops);
}

kvc::ExpectedAttentionPress ea(double ratio, bool covariance) {
  kvc::ExpectedAttentionPress p;
  p.compression_ratio = ratio;
  p.use_covariance = covariance;
  return p;
}

// Expected Attention with covariance. FLOPs: query statistics 2·H·q·d² (centred second moment)
// + quadratic forms 2·H·n·d² + mean terms 2·H·n·d; bytes: queries + K + V.
template <class T>
void BM_ExpectedAttentionScore_Cov(benchmark::State& state) {
  Layer<T>& l = layer<T>(state.range(0));
  double const n = double(l.n), d = double(kDim), h = double(kQHeads);
  run_score<T>(state, ea(0.0, true), l.query_bytes() + l.kv_bytes(), 2 * h * n * d * d + 2 * h * n * d * d + 2 * h * n * d);
}

// The same scoring of a bf16 cache through the portable path (CpuKernels::kPortable: keys widened to
// fp32, Eigen's GEMM), the baseline of the AVX512_BF16 kernel that the row above runs where the CPU
// has it (detail/bf16_dot.hpp).
void BM_ExpectedAttentionScore_Cov_Portable(benchmark::State& state) {
  Layer<kvc::bfloat16>& l = layer<kvc::bfloat16>(state.range(0));
  double const n = double(l.n), d = double(kDim), h = double(kQHeads);
  run_score<kvc::bfloat16>(state, ea(0.0, true), l.query_bytes() + l.kv_bytes(),
                           2 * h * n * d * d + 2 * h * n * d * d + 2 * h * n * d, kvc::CpuKernels::kPortable);
}

// Expected Attention, mean only. FLOPs: query means H·q·d + mean terms 2·H·n·d; bytes: queries + K + V.
template <class T>
void BM_ExpectedAttentionScore_NoCov(benchmark::State& state) {
  Layer<T>& l = layer<T>(state.range(0));
  double const n = double(l.n), d = double(kDim), h = double(kQHeads);
  run_score<T>(state, ea(0.0, false), l.query_bytes() + l.kv_bytes(), h * n * d + 2 * h * n * d);
}

// SnapKV from 64 window queries. FLOPs: logits 2·H·w·n·d; bytes: K + window queries.
template <class T>
void BM_SnapKVScore(benchmark::State& state) {
  Layer<T>& l = layer<T>(state.range(0));
  double const n = double(l.n), d = double(kDim), h = double(kQHeads), w = double(kWindow);
  run_score<T>(state, kvc::SnapKVPress{0.0, kWindow, 5}, l.kv_bytes() / 2 + double(l.window_queries.size()) * sizeof(T),
               2 * h * w * n * d);
}

// TOVA from the last query. FLOPs: logits 2·H·n·d; bytes: K (the softmax and means are O(H·n)).
template <class T>
void BM_TOVAScore(benchmark::State& state) {
  Layer<T>& l = layer<T>(state.range(0));
  double const n = double(l.n), d = double(kDim), h = double(kQHeads);
  run_score<T>(state, kvc::TOVAPress{}, l.kv_bytes() / 2, 2 * h * n * d);
}

// Knorm. FLOPs: 2·h·n·d; bytes: K.
template <class T>
void BM_KnormScore(benchmark::State& state) {
  Layer<T>& l = layer<T>(state.range(0));
  run_score<T>(state, kvc::KnormPress{}, l.kv_bytes() / 2, 2.0 * kKvHeads * double(l.n) * kDim);
}

// KeyDiff: cosine of each normalised key with the mean normalised key. FLOPs ≈ 6·h·n·d (norm, mean,
// dot); bytes: K, read twice (the mean first).
template <class T>
void BM_KeyDiffScore(benchmark::State& state) {
  Layer<T>& l = layer<T>(state.range(0));
  run_score<T>(state, kvc::KeyDiffPress{}, l.kv_bytes(), 6.0 * kKvHeads * double(l.n) * kDim);
}

// StreamingLLM: scores from positions only. Bytes: the scores written, h·n floats.
template <class T>
void BM_StreamingLLMScore(benchmark::State& state) {
  Layer<T>& l = layer<T>(state.range(0));
  run_score<T>(state, kvc::StreamingLLMPress{}, double(kKvHeads) * double(l.n) * 4, 0.0);
}

// The whole compress step: Expected Attention with covariance at 50 %, selection and compaction.
template <class T>
void BM_ExpectedAttentionCompress(benchmark::State& state) {
  Layer<T>& l = layer<T>(state.range(0));
  double const n = double(l.n), d = double(kDim), h = double(kQHeads);
  run_compress<T>(state, ea(0.5, true), l.query_bytes() + 1.5 * l.kv_bytes(), 4 * h * n * d * d + 2 * h * n * d);
}

// AdaKV(Expected Attention) at 50 %: the same scoring, then one selection across the layer's heads.
template <class T>
void BM_AdaKVExpectedAttentionCompress(benchmark::State& state) {
  Layer<T>& l = layer<T>(state.range(0));
  double const n = double(l.n), d = double(kDim), h = double(kQHeads);
  run_compress<T>(state, kvc::AdaKVPress{ea(0.5, true)}, l.query_bytes() + 1.5 * l.kv_bytes(),
                  4 * h * n * d * d + 2 * h * n * d);
}

// Selection (top n/2 per head) and in-place compaction. Bytes: scores read + half of K and V moved (r+w).
// `kernels`: kNative streams the stores of large rows (cpu/compact.hpp); kPortable (`…_Portable`) uses
// ordinary stores throughout, the comparison in the same run.
void run_select_compact(benchmark::State& state, kvc::CpuKernels kernels) {
  Layer<float>& l = layer<float>(state.range(0));
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
    kvc::keep_topk(device(state, kernels), view, scores.data(), [](std::int64_t n) { return kvc::kept_count(n, 0.5); }, ws);
  }
  set_rates(state, double(scores.size()) * 4 + l.kv_bytes(), 0.0);
}
void BM_SelectCompact(benchmark::State& state) { run_select_compact(state, kvc::CpuKernels::kNative); }
void BM_SelectCompact_Portable(benchmark::State& state) { run_select_compact(state, kvc::CpuKernels::kPortable); }

// The same selection and compaction through a paged view: page size 16, the pages of the pool
// (the same K and V buffers) shuffled by the block table, as in an engine after many requests.
void BM_SelectCompactPaged(benchmark::State& state, kvc::PageTable kind, kvc::CpuKernels kernels) {
  Layer<float>& l = layer<float>(state.range(0));
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
    kvc::keep_topk(device(state, kernels), view, scores.data(), [](std::int64_t n) { return kvc::kept_count(n, 0.5); }, ws);
    n_freed = kvc::released_pages(view, before.data(), freed.data(), static_cast<std::int64_t>(freed.size()));
  }
  set_rates(state, double(scores.size()) * 4 + l.kv_bytes(), 0.0);
  state.counters["pages_freed"] = static_cast<double>(n_freed);
}

// Compaction alone, one thread, of the 8 rows of a float layer to a random kept set of `keep` % of
// the entries (each kept with that probability, so runs and gaps vary): ordinary stores (kPortable)
// against streaming ones (kNative, whatever the row size), the cache freshly written before each
// call (its last lines still in the caches, dirty, as right after a prefill) or cold (a 64 MiB pass,
// twice the L3, evicts it). Arguments {tokens, keep %}. Bytes: the kept entries of K and V read and
// written.
void BM_CompactRow(benchmark::State& state, kvc::CpuKernels kernels, bool cold) {
  Layer<float>& l = layer<float>(state.range(0));
  std::int32_t const n = static_cast<std::int32_t>(l.n);
  std::vector<std::vector<std::int32_t>> idx(kKvHeads);
  std::mt19937 gen(4);
  std::bernoulli_distribution keep(static_cast<double>(state.range(1)) / 100.0);
  double kept = 0;
  for (auto& row : idx) {
    for (std::int32_t i = 0; i < n; ++i)
      if (keep(gen)) row.push_back(i);
    kept += static_cast<double>(row.size());
  }
  static Buffer<float> evict(std::size_t{1} << 24, 1.0f);  // 64 MiB
  auto const stores = kvc::detail::stream_isa(kvc::CpuDevice{1, kernels});
  for (auto _ : state) {
    state.PauseTiming();
    l.restore();
    if (cold) benchmark::DoNotOptimize(std::accumulate(evict.begin(), evict.end(), 0.0f));
    auto const view = l.view();
    state.ResumeTiming();
    for (std::int64_t h = 0; h < kKvHeads; ++h)
      kvc::cpu_impl::compact_row(stores, view, 0, h, idx[static_cast<std::size_t>(h)].data(),
                                 static_cast<std::int32_t>(idx[static_cast<std::size_t>(h)].size()));
  }
  state.counters["bytes_per_second"] = benchmark::Counter(2.0 * 2.0 * kept * kDim * sizeof(float),
                                                          benchmark::Counter::kIsIterationInvariantRate,
                                                          benchmark::Counter::kIs1024);
  state.counters["tokens"] = static_cast<double>(l.n);
  state.counters["threads"] = 1;
}

// DecodingPress(Expected Attention) in a decode loop: a row of `tokens` entries grows by one token per
// step and is compressed back to `tokens` every 512 steps (kvpress's defaults: interval 512, 256
// buffered queries). The time per step averages the buffering steps and the compressions.
void BM_DecodingExpectedAttentionStep(benchmark::State& state) {
  std::int64_t const target = state.range(0), interval = 512, cap = target + interval;
  auto const dev = device(state);
  kvc::CacheExtents const extents{1, kKvHeads, cap, kDim};
  std::vector<float> keys(static_cast<std::size_t>(kKvHeads * cap * kDim)), values(keys.size()),
      query(static_cast<std::size_t>(kQHeads * kDim));
  std::mt19937 gen(7);
  std::normal_distribution<float> normal;
  for (auto* v : {&keys, &values, &query})
    for (float& x : *v) x = normal(gen);
  std::vector<std::int32_t> lengths(kKvHeads, static_cast<std::int32_t>(target));
  auto const layout =
      kvc::make_strided_layout(extents, {kvc::Axis::kBatch, kvc::Axis::kHead, kvc::Axis::kSeq, kvc::Axis::kDim});
  auto const view = kvc::make_cache_view(keys.data(), values.data(), extents, layout, lengths.data());
  kvc::RotaryEmbedding const rope(kvc_bench::llama31_rope());
  kvc::DecodingOptions options;
  options.compression_interval = interval;
  options.target_size = target;
  kvc::DecodingPress<kvc::ExpectedAttentionPress> press(kvc::ExpectedAttentionPress{}, options,
                                                        kvc::QueryBufferShape{1, 1, kQHeads, kDim});
  kvc::Observation<float> obs;
  obs.queries = kvc::make_tensor4(query.data(), {1, kQHeads, 1, kDim});
  obs.rope = &rope;
  press.step(dev, obs, view);  // position 0: the prefill starts the sequence
  obs.position = target;
  std::vector<std::byte> scratch(press.workspace_bytes(dev, obs, view));
  for (auto _ : state) {
    for (auto& len : lengths) ++len;  // the engine appended this step's token
    press.step(dev, obs, view, kvc::Workspace(scratch.data(), scratch.size()));
    ++obs.position;
  }
  state.counters["tokens"] = static_cast<double>(target);
  state.counters["threads"] = static_cast<double>(state.range(1));
}

// One parallel loop of 2 trivial iterations on 2 threads: what a loop costs beyond its work, threads
// started and joined per loop (`BM_LoopOverhead`) against a persistent pool (`BM_Pool/LoopOverhead`).
void BM_LoopOverhead(benchmark::State& state) {
  auto const dev = device(state);
  std::array<std::int64_t, 2> out{};
  double const process0 = cpu_seconds(CLOCK_PROCESS_CPUTIME_ID);
  for (auto _ : state) {
    kvc::detail::parallel_for(dev, 2, [&](std::int64_t i, int) { out[static_cast<std::size_t>(i)] += i; });
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["process_cpu_ms"] =
      1e3 * (cpu_seconds(CLOCK_PROCESS_CPUTIME_ID) - process0) /
      static_cast<double>(std::max<benchmark::IterationCount>(state.iterations(), 1));
  state.counters["tokens"] = 0;
  state.counters["threads"] = static_cast<double>(state.range(1));
}

/// `bm` with a pool of `threads` threads made before its timed loop (as an engine keeps one).
void BM_Pool(benchmark::State& state, void (*bm)(benchmark::State&)) {
  kvc::ThreadPool pool(static_cast<int>(state.range(1)));
  g_pool = &pool;
  bm(state);
  g_pool = nullptr;
}

void sizes(benchmark::internal::Benchmark* b) {
  for (std::int64_t n : {4096, 16384, 32768}) b->Args({n, 2});
  b->Unit(benchmark::kMillisecond)->MinTime(0.5)->UseRealTime();
}
void compact_sizes(benchmark::internal::Benchmark* b) {
  for (std::int64_t n : {1024, 4096, 32768})
    for (std::int64_t keep : {10, 50, 90}) b->Args({n, keep});
  b->Unit(benchmark::kMillisecond)->MinTime(0.2)->UseRealTime();
}
void sizes_and_threads(benchmark::internal::Benchmark* b) {
  for (std::int64_t n : {4096, 16384, 32768})
    for (std::int64_t t : {1, 2}) b->Args({n, t});
  b->Unit(benchmark::kMillisecond)->MinTime(0.5)->UseRealTime();
}
void threads_only(benchmark::internal::Benchmark* b, std::int64_t size) {
  for (std::int64_t t : {1, 2}) b->Args({size, t});
  b->Unit(benchmark::kMillisecond)->MinTime(0.5)->UseRealTime();
}

}  // namespace

using kvc::bfloat16;
using kvc::half;

BENCHMARK_CAPTURE(BM_Ceiling_GemmF32, square, 0)->Apply([](auto* b) { threads_only(b, 1024); });
BENCHMARK_CAPTURE(BM_Ceiling_GemmF32, inner128, 128)->Apply([](auto* b) { threads_only(b, 4096); });
#if defined(__AVX512BF16__)
BENCHMARK(BM_Ceiling_Bf16Dot)->Apply([](auto* b) { threads_only(b, 0); });
#endif
BENCHMARK(BM_Ceiling_StreamRead)->Apply([](auto* b) { threads_only(b, 0); });
BENCHMARK(BM_Ceiling_StreamCopy)->Apply([](auto* b) { threads_only(b, 0); });

BENCHMARK(BM_ExpectedAttentionScore_Cov<float>)->Apply(sizes_and_threads);
BENCHMARK(BM_ExpectedAttentionScore_Cov<bfloat16>)->Apply(sizes);
BENCHMARK(BM_ExpectedAttentionScore_Cov_Portable)->Apply(sizes);
BENCHMARK(BM_ExpectedAttentionScore_Cov<half>)->Apply(sizes);
BENCHMARK(BM_ExpectedAttentionScore_NoCov<float>)->Apply(sizes);
BENCHMARK(BM_SnapKVScore<float>)->Apply(sizes_and_threads);
BENCHMARK(BM_SnapKVScore<bfloat16>)->Apply(sizes);
BENCHMARK(BM_TOVAScore<float>)->Apply(sizes);
BENCHMARK(BM_KnormScore<float>)->Apply(sizes);
BENCHMARK(BM_KnormScore<bfloat16>)->Apply(sizes);
BENCHMARK(BM_KnormScore<half>)->Apply(sizes);
BENCHMARK(BM_KeyDiffScore<float>)->Apply(sizes);
BENCHMARK(BM_StreamingLLMScore<float>)->Apply(sizes);
BENCHMARK(BM_SelectCompact)->Apply(sizes);
BENCHMARK(BM_SelectCompact_Portable)->Apply(sizes);
BENCHMARK_CAPTURE(BM_CompactRow, hot_streaming, kvc::CpuKernels::kNative, false)->Apply(compact_sizes);
BENCHMARK_CAPTURE(BM_CompactRow, hot_ordinary, kvc::CpuKernels::kPortable, false)->Apply(compact_sizes);
BENCHMARK_CAPTURE(BM_CompactRow, cold_streaming, kvc::CpuKernels::kNative, true)->Apply(compact_sizes);
BENCHMARK_CAPTURE(BM_CompactRow, cold_ordinary, kvc::CpuKernels::kPortable, true)->Apply(compact_sizes);
BENCHMARK_CAPTURE(BM_SelectCompactPaged, per_sequence, kvc::PageTable::kPerSequence, kvc::CpuKernels::kNative)->Apply(sizes);
BENCHMARK_CAPTURE(BM_SelectCompactPaged, per_head, kvc::PageTable::kPerHead, kvc::CpuKernels::kNative)->Apply(sizes);
BENCHMARK_CAPTURE(BM_SelectCompactPaged, per_sequence_portable, kvc::PageTable::kPerSequence, kvc::CpuKernels::kPortable)
    ->Apply(sizes);
BENCHMARK_CAPTURE(BM_SelectCompactPaged, per_head_portable, kvc::PageTable::kPerHead, kvc::CpuKernels::kPortable)
    ->Apply(sizes);
BENCHMARK(BM_ExpectedAttentionCompress<float>)->Apply(sizes_and_threads);
BENCHMARK(BM_ExpectedAttentionCompress<bfloat16>)->Apply(sizes);
BENCHMARK(BM_AdaKVExpectedAttentionCompress<float>)->Apply(sizes);
BENCHMARK(BM_LoopOverhead)->Args({0, 2})->Unit(benchmark::kMicrosecond)->MinTime(0.5)->UseRealTime();
BENCHMARK_CAPTURE(BM_Pool, LoopOverhead, BM_LoopOverhead)->Args({0, 2})->Unit(benchmark::kMicrosecond)->MinTime(0.5)->UseRealTime();
BENCHMARK_CAPTURE(BM_Pool, ExpectedAttentionScore_Cov<float>, BM_ExpectedAttentionScore_Cov<float>)->Apply(sizes_and_threads);
BENCHMARK_CAPTURE(BM_Pool, SnapKVScore<float>, BM_SnapKVScore<float>)->Apply(sizes_and_threads);
BENCHMARK_CAPTURE(BM_Pool, KnormScore<float>, BM_KnormScore<float>)->Apply(sizes);
BENCHMARK_CAPTURE(BM_Pool, StreamingLLMScore<float>, BM_StreamingLLMScore<float>)->Apply(sizes);
BENCHMARK_CAPTURE(BM_Pool, ExpectedAttentionCompress<float>, BM_ExpectedAttentionCompress<float>)->Apply(sizes_and_threads);
BENCHMARK(BM_DecodingExpectedAttentionStep)->Apply([](auto* b) {
  for (std::int64_t n : {4096, 16384}) b->Args({n, 2});
  b->Unit(benchmark::kMicrosecond)->Iterations(1024)->UseRealTime();
});
BENCHMARK_MAIN();
