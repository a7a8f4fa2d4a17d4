// CUDA benchmarks at the Llama-3.1-8B layer shape (32 query heads, 8 KV heads, head_dim 128, llama3
// RoPE), batch 1, bfloat16 cache, 4k / 32k / 128k tokens. Each iteration is timed with CUDA events
// around the work alone (manual time); state the cache needs restored between iterations (lengths,
// moved entries) is reset outside the timed region.
// Counters: bytes/s over what each step must read and write, FLOP/s over its arithmetic, and
// `of_roofline` = max(bytes / HBM bandwidth, FLOPs / dense bf16 tensor peak) / time, against the peaks
// of the GPU found (H100 SXM, H200; others: KVC_PEAK_GBPS and KVC_PEAK_TFLOPS).
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kvcompress/cuda.cuh"
#include "llama31_layer.hpp"

namespace kvc = kvcompress;

namespace {

using kvc_bench::kDim;
using kvc_bench::kKvHeads;
using kvc_bench::kQHeads;
using kvc_bench::kWindow;
using Storage = kvc::bfloat16;

struct Peaks {
  double bytes_per_s = 3.35e12;  // H100 SXM HBM3 (datasheet)
  double flop_per_s = 989e12;    // H100 SXM dense bf16 tensor (datasheet)
};

Peaks& peaks() {
  static Peaks p;
  return p;
}

#define BENCH_CUDA(expr)                                                                       \
  do {                                                                                         \
    cudaError_t const e_ = (expr);                                                             \
    if (e_ != cudaSuccess) {                                                                   \
      std::fprintf(stderr, "%s failed: %s\n", #expr, cudaGetErrorString(e_));                  \
      std::exit(1);                                                                            \
    }                                                                                          \
  } while (0)

template <class U>
U* device_copy(std::vector<U> const& host) {
  U* p = nullptr;
  BENCH_CUDA(cudaMalloc(&p, host.size() * sizeof(U)));
  BENCH_CUDA(cudaMemcpy(p, host.data(), host.size() * sizeof(U), cudaMemcpyHostToDevice));
  return p;
}

/// One layer's prefill state of n tokens on the device, built once per size and shared.
struct Layer {
  std::int64_t n;
  kvc::CacheExtents extents;
  kvc::RotaryEmbedding rope;
  Storage *keys, *values, *queries, *window_queries;  // [1, 8, n, 128] ×2, [1, 32, n, 128], [1, 32, 64, 128]
  Storage *pristine_keys, *pristine_values;           // copies restored between compressions
  std::int32_t* lengths;                              // [8]
  std::vector<std::int32_t> full_lengths;

  explicit Layer(std::int64_t tokens) : n(tokens), extents{1, kKvHeads, tokens, kDim}, rope(kvc_bench::llama31_rope()) {
    std::mt19937 gen(42);
    std::normal_distribution<float> normal;
    auto random = [&](std::int64_t count) {
      std::vector<Storage> v(static_cast<std::size_t>(count));
      for (auto& x : v) x = Storage(normal(gen));
      return v;
    };
    std::int64_t const kv = kKvHeads * n * kDim;
    keys = device_copy(random(kv));
    values = device_copy(random(kv));
    queries = device_copy(random(kQHeads * n * kDim));
    window_queries = device_copy(random(kQHeads * kWindow * kDim));
    BENCH_CUDA(cudaMalloc(&pristine_keys, kv * sizeof(Storage)));
    BENCH_CUDA(cudaMalloc(&pristine_values, kv * sizeof(Storage)));
    BENCH_CUDA(cudaMemcpy(pristine_keys, keys, kv * sizeof(Storage), cudaMemcpyDeviceToDevice));
    BENCH_CUDA(cudaMemcpy(pristine_values, values, kv * sizeof(Storage), cudaMemcpyDeviceToDevice));
    full_lengths.assign(kKvHeads, static_cast<std::int32_t>(n));
    lengths = device_copy(full_lengths);
  }

  /// Puts the cache back as it was before any compression (outside the timed region).
  void restore(cudaStream_t s) const {
    std::int64_t const kv = kKvHeads * n * kDim;
    BENCH_CUDA(cudaMemcpyAsync(keys, pristine_keys, kv * sizeof(Storage), cudaMemcpyDeviceToDevice, s));
    BENCH_CUDA(cudaMemcpyAsync(values, pristine_values, kv * sizeof(Storage), cudaMemcpyDeviceToDevice, s));
    BENCH_CUDA(cudaMemcpyAsync(lengths, full_lengths.data(), kKvHeads * sizeof(std::int32_t),
                               cudaMemcpyHostToDevice, s));
  }

  [[nodiscard]] kvc::KVCacheView<Storage> view() const {
    auto const layout = kvc::make_strided_layout(extents, {kvc::Axis::kBatch, kvc::Axis::kHead, kvc::Axis::kSeq,
                                                           kvc::Axis::kDim});
    // Built by hand: make_cache_view reads the lengths on the host, and these live on the device.
    return kvc::KVCacheView<Storage>{keys, values, extents, layout, layout, lengths, nullptr};
  }

  [[nodiscard]] kvc::Observation<Storage> observation() const {
    kvc::Observation<Storage> obs;
    obs.queries = kvc::make_tensor4<Storage>(queries, {1, kQHeads, n, kDim});
    obs.window_queries = kvc::make_tensor4<Storage>(window_queries, {1, kQHeads, kWindow, kDim});
    obs.rope = &rope;
    return obs;
  }

  [[nodiscard]] double kv_bytes() const { return 2.0 * double(kKvHeads * n * kDim) * sizeof(Storage); }
  [[nodiscard]] double query_bytes() const { return double(kQHeads * n * kDim) * sizeof(Storage); }
};

Layer& layer(std::int64_t n) {
  static std::vector<std::unique_ptr<Layer>> layers;
  for (auto& l : layers)
    if (l->n == n) return *l;
  layers.push_back(std::make_unique<Layer>(n));
  return *layers.back();
}

/// Device scratch reused across benchmarks (grown on demand, never on the timed path).
void* scratch(std::size_t bytes) {
  static void* p = nullptr;
  static std::size_t have = 0;
  if (bytes > have) {
    if (p) BENCH_CUDA(cudaFree(p));
    BENCH_CUDA(cudaMalloc(&p, bytes));
    have = bytes;
  }
  return p;
}

/// Times `work` with events on `stream`, after `reset` (untimed) each iteration.
template <class Reset, class Work>
void timed(benchmark::State& state, cudaStream_t stream, Reset&& reset, Work&& work, double bytes, double flops) {
  cudaEvent_t start, stop;
  BENCH_CUDA(cudaEventCreate(&start));
  BENCH_CUDA(cudaEventCreate(&stop));
  reset();
  work();  // warm-up: first-touch, instruction cache, lazy module loading
  BENCH_CUDA(cudaStreamSynchronize(stream));
  for (auto _ : state) {
    reset();
    BENCH_CUDA(cudaEventRecord(start, stream));
    work();
    BENCH_CUDA(cudaEventRecord(stop, stream));
    BENCH_CUDA(cudaEventSynchronize(stop));
    float ms = 0.0f;
    BENCH_CUDA(cudaEventElapsedTime(&ms, start, stop));
    state.SetIterationTime(static_cast<double>(ms) / 1e3);
  }
  BENCH_CUDA(cudaEventDestroy(start));
  BENCH_CUDA(cudaEventDestroy(stop));
  state.counters["bytes_per_second"] =
      benchmark::Counter(bytes, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1024);
  state.counters["FLOP_per_second"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
  double const roofline_s = std::max(bytes / peaks().bytes_per_s, flops / peaks().flop_per_s);
  // Rates are per second of manual time; this counter is roofline time over measured time.
  state.counters["of_roofline"] = benchmark::Counter(roofline_s, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["tokens"] = static_cast<double>(state.range(0));
}

void no_reset() {}

template <class Press>
void run_score(benchmark::State& state, Press const& press, double bytes, double flops) {
  Layer& l = layer(state.range(0));
  kvc::cuda const dev{};
  auto const view = l.view();
  auto const obs = l.observation();
  std::size_t const ws = kvc::score_workspace_bytes(dev, press, obs, view);
  std::size_t const score_bytes = static_cast<std::size_t>(kKvHeads * l.n) * sizeof(float);
  auto* base = static_cast<std::byte*>(scratch(ws + score_bytes + 256));
  auto* scores = reinterpret_cast<float*>(base + ws + 128 - (ws % 128));
  timed(state, dev.stream, no_reset, [&] { kvc::score(dev, press, obs, view, scores, kvc::Workspace(base, ws)); },
        bytes, flops);
  kvc::check_status(dev, base);
}

// Expected Attention with covariance, statistics from the chunk's queries. FLOPs: statistics
// 2·H·n·d² + quadratic forms 2·H·n·d² + mean terms 2·H·n·d; bytes: queries + K + V.
void BM_CudaExpectedAttentionScore_Cov(benchmark::State& state) {
  Layer& l = layer(state.range(0));
  double const n = double(l.n), d = double(kDim), h = double(kQHeads);
  run_score(state, kvc::ExpectedAttentionPress{}, l.query_bytes() + l.kv_bytes(), 4 * h * n * d * d + 2 * h * n * d);
}

// Expected Attention, mean only. FLOPs: means H·n·d + mean terms 2·H·n·d; bytes: queries + K + V.
void BM_CudaExpectedAttentionScore_NoCov(benchmark::State& state) {
  Layer& l = layer(state.range(0));
  double const n = double(l.n), d = double(kDim), h = double(kQHeads);
  kvc::ExpectedAttentionPress p;
  p.use_covariance = false;
  run_score(state, p, l.query_bytes() + l.kv_bytes(), 3 * h * n * d);
}

// Expected Attention from precomputed statistics (the kernel the roofline table means: K and V read,
// 2·H·n·d² + 2·H·n·d FLOPs).
void BM_CudaExpectedAttentionStatsScore(benchmark::State& state) {
  Layer& l = layer(state.range(0));
  double const n = double(l.n), d = double(kDim), h = double(kQHeads);
  static float* mean = nullptr;
  static float* cov = nullptr;
  if (!mean) {
    std::vector<float> m(static_cast<std::size_t>(kQHeads * kDim), 0.1f), c(static_cast<std::size_t>(kQHeads * kDim * kDim));
    for (std::int64_t j = 0; j < kQHeads; ++j)
      for (std::int64_t i = 0; i < kDim; ++i) c[static_cast<std::size_t>((j * kDim + i) * kDim + i)] = 1.0f;
    mean = device_copy(m);
    cov = device_copy(c);
  }
  kvc::ExpectedAttentionStatsPress p;
  auto obs = l.observation();
  obs.stats = kvc::QueryStats{mean, cov, kQHeads};
  kvc::cuda const dev{};
  auto const view = l.view();
  std::size_t const ws = kvc::score_workspace_bytes(dev, p, obs, view);
  auto* base = static_cast<std::byte*>(scratch(ws + static_cast<std::size_t>(kKvHeads * l.n) * sizeof(float) + 256));
  auto* scores = reinterpret_cast<float*>(base + ws + 128 - (ws % 128));
  timed(state, dev.stream, no_reset, [&] { kvc::score(dev, p, obs, view, scores, kvc::Workspace(base, ws)); },
        l.kv_bytes(), 2 * h * n * d * d + 2 * h * n * d);
  kvc::check_status(dev, base);
}

// SnapKV, window 64. FLOPs: 2·H·w·n·d (logits); bytes: K + window queries.
void BM_CudaSnapKVScore(benchmark::State& state) {
  Layer& l = layer(state.range(0));
  double const n = double(l.n), d = double(kDim), h = double(kQHeads), w = double(kWindow);
  kvc::SnapKVPress p;
  p.window_size = kWindow;
  run_score(state, p, l.kv_bytes() / 2 + h * w * d * sizeof(Storage), 2 * h * w * n * d);
}

// Knorm. FLOPs: 2·n·d per head; bytes: K.
void BM_CudaKnormScore(benchmark::State& state) {
  Layer& l = layer(state.range(0));
  run_score(state, kvc::KnormPress{}, l.kv_bytes() / 2, 2.0 * kKvHeads * double(l.n) * kDim);
}

// Selection alone, 50 %: per row, the top n/2 of n scores as ascending indices. Bytes: scores read
// (a radix select reads them once per pass; counted once) + indices written.
void BM_CudaSelect(benchmark::State& state) {
  Layer& l = layer(state.range(0));
  kvc::cuda const dev{};
  std::int64_t const rows = kKvHeads, cap = l.n;
  std::vector<float> host(static_cast<std::size_t>(rows * cap));
  std::mt19937 gen(7);
  std::normal_distribution<float> normal;
  for (float& x : host) x = normal(gen);
  static std::vector<std::pair<std::int64_t, float*>> score_sets;
  float* scores = nullptr;
  for (auto& s : score_sets)
    if (s.first == l.n) scores = s.second;
  if (!scores) score_sets.emplace_back(l.n, scores = device_copy(host));
  std::vector<std::int32_t> half(static_cast<std::size_t>(rows), static_cast<std::int32_t>(cap / 2));
  static std::int32_t* counts = nullptr;
  if (!counts) counts = device_copy(half);
  BENCH_CUDA(cudaMemcpy(counts, half.data(), rows * sizeof(std::int32_t), cudaMemcpyHostToDevice));
  std::size_t const ws = kvc::cuda_impl::select_workspace_bytes(rows, cap);
  std::size_t const kept_bytes = static_cast<std::size_t>(rows * cap) * sizeof(std::int32_t);
  auto* base = static_cast<std::byte*>(scratch(ws + kept_bytes + sizeof(kvc::cuda_impl::DeviceStatus) + 512));
  auto* status = reinterpret_cast<kvc::cuda_impl::DeviceStatus*>(base);
  auto* kept = reinterpret_cast<std::int32_t*>(base + 256);
  std::byte* select_ws = base + 256 + kept_bytes + 256 - (kept_bytes % 256);
  BENCH_CUDA(cudaMemset(status, 0, sizeof(kvc::cuda_impl::DeviceStatus)));
  timed(
      state, dev.stream, no_reset,
      [&] {
        kvc::Workspace w(select_ws, ws);
        kvc::cuda_impl::select_topk(dev, scores, rows, cap, l.lengths, counts, kept, w, status);
      },
      double(rows * cap) * 4.0 + double(rows * cap / 2) * 4.0, 0.0);
}

// The whole compress step, 50 %: Expected Attention with covariance from the queries, selection,
// compaction. Bytes: queries + K + V read, half of K + V written.
void BM_CudaExpectedAttentionCompress(benchmark::State& state) {
  Layer& l = layer(state.range(0));
  double const n = double(l.n), d = double(kDim), h = double(kQHeads);
  kvc::cuda const dev{};
  kvc::ExpectedAttentionPress p;
  p.compression_ratio = 0.5;
  auto const view = l.view();
  auto const obs = l.observation();
  std::size_t const ws = kvc::compress_workspace_bytes(dev, p, obs, view);
  void* base = scratch(ws);
  timed(
      state, dev.stream, [&] { l.restore(dev.stream); },
      [&] { kvc::compress(dev, p, obs, view, kvc::Workspace(base, ws)); },
      l.query_bytes() + 1.5 * l.kv_bytes(), 4 * h * n * d * d + 2 * h * n * d);
  kvc::check_status(dev, base);
  l.restore(dev.stream);
}

// Knorm compress, 50 %, on a paged cache (per-sequence table, NHD pages of 16): the compaction
// through a block table. Bytes: K read for scoring, K + V half read and half written.
void BM_CudaKnormCompressPaged(benchmark::State& state) {
  Layer& l = layer(state.range(0));
  kvc::cuda const dev{};
  constexpr std::int64_t kPage = 16;
  std::int64_t const pages = (l.n + kPage - 1) / kPage;
  std::vector<std::int32_t> table(static_cast<std::size_t>(pages));
  for (std::int64_t i = 0; i < pages; ++i) table[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(pages - 1 - i);
  std::int32_t* d_table = device_copy(table);
  kvc::PagedConfig c;
  c.page_size = kPage;
  c.num_pages = pages;
  c.block_table = table.data();
  c.pages_per_row = pages;
  kvc::PagedLayout layout = kvc::make_paged_layout(l.extents, c);
  layout.block_table = d_table;
  // The pools are the same bytes as the strided cache: pages × 16 tokens × 8 heads × 128 channels.
  kvc::KVCacheView<Storage, kvc::PagedLayout> view{l.keys, l.values, l.extents, layout, layout, l.lengths, nullptr};
  kvc::KnormPress p;
  p.compression_ratio = 0.5;
  auto const obs = l.observation();
  std::size_t const ws = kvc::compress_workspace_bytes(dev, p, obs, view);
  void* base = scratch(ws);
  timed(
      state, dev.stream, [&] { l.restore(dev.stream); },
      [&] { kvc::compress(dev, p, obs, view, kvc::Workspace(base, ws)); }, l.kv_bytes() / 2 + l.kv_bytes(),
      2.0 * kKvHeads * double(l.n) * kDim);
  kvc::check_status(dev, base);
  l.restore(dev.stream);
  BENCH_CUDA(cudaFree(d_table));
}

/// One cuBLAS session for the tensor-core benchmarks, made once outside the timed path.
kvc::CublasSession const& blas_session() {
  static void* const ws = [] {
    void* p = nullptr;
    BENCH_CUDA(cudaMalloc(&p, kvc::CublasSession::kWorkspaceBytes));
    return p;
  }();
  static kvc::CublasSession const session(ws, kvc::CublasSession::kWorkspaceBytes);
  return session;
}

// Expected Attention with covariance, the covariance as one strided-batched bf16 GEMM on tensor cores
// (the engine's cuBLAS session on the device tag); otherwise as BM_CudaExpectedAttentionScore_Cov.
void BM_CudaExpectedAttentionScore_CovTensorCores(benchmark::State& state) {
  Layer& l = layer(state.range(0));
  kvc::cuda const dev{nullptr, false, &blas_session()};
  kvc::ExpectedAttentionPress p;
  p.use_covariance = true;
  auto const view = l.view();
  auto const obs = l.observation();
  std::size_t const ws = kvc::score_workspace_bytes(dev, p, obs, view);
  std::size_t const score_bytes = static_cast<std::size_t>(kKvHeads * l.n) * sizeof(float);
  auto* base = static_cast<std::byte*>(scratch(ws + score_bytes + 256));
  auto* scores = reinterpret_cast<float*>(base + ws + 128 - (ws % 128));
  double const n = double(l.n), d = double(kDim), h = double(kQHeads);
  timed(state, dev.stream, no_reset, [&] { kvc::score(dev, p, obs, view, scores, kvc::Workspace(base, ws)); },
        l.query_bytes() + 0.5 * l.kv_bytes(), 4 * h * n * d * d + 2 * h * n * d);
}

// The whole compress step with the covariance on tensor cores (as BM_CudaExpectedAttentionCompress).
void BM_CudaExpectedAttentionCompress_TensorCores(benchmark::State& state) {
  Layer& l = layer(state.range(0));
  double const n = double(l.n), d = double(kDim), h = double(kQHeads);
  kvc::cuda const dev{nullptr, false, &blas_session()};
  kvc::ExpectedAttentionPress p;
  p.compression_ratio = 0.5;
  auto const view = l.view();
  auto const obs = l.observation();
  std::size_t const ws = kvc::compress_workspace_bytes(dev, p, obs, view);
  void* base = scratch(ws);
  timed(
      state, dev.stream, [&] { l.restore(dev.stream); },
      [&] { kvc::compress(dev, p, obs, view, kvc::Workspace(base, ws)); },
      l.query_bytes() + 1.5 * l.kv_bytes(), 4 * h * n * d * d + 2 * h * n * d);
  kvc::check_status(dev, base);
  l.restore(dev.stream);
}

// The compaction alone (one ordered in-place gather), keeping every odd slot of the 8 rows: every
// kept entry moves. Bytes: half of K + V read, half written.
void BM_CudaCompact(benchmark::State& state) {
  Layer& l = layer(state.range(0));
  kvc::cuda const dev{};
  auto const view = l.view();
  std::int64_t const rows = kKvHeads, cap = l.n, keep = l.n / 2;
  std::vector<std::int32_t> kept(static_cast<std::size_t>(rows * cap), 0), counts(static_cast<std::size_t>(rows));
  for (std::int64_t r = 0; r < rows; ++r) {
    counts[static_cast<std::size_t>(r)] = static_cast<std::int32_t>(keep);
    for (std::int64_t j = 0; j < keep; ++j) kept[static_cast<std::size_t>(r * cap + j)] = static_cast<std::int32_t>(2 * j + 1);
  }
  std::int32_t* d_kept = device_copy(kept);
  std::int32_t* d_counts = device_copy(counts);
  std::size_t const ws = kvc::cuda_impl::compact_workspace_bytes(view);
  auto* base = static_cast<std::byte*>(scratch(ws + 256));
  auto* status = reinterpret_cast<kvc::cuda_impl::DeviceStatus*>(base);
  BENCH_CUDA(cudaMemset(status, 0, sizeof(kvc::cuda_impl::DeviceStatus)));
  timed(
      state, dev.stream, [&] { l.restore(dev.stream); },
      [&] {
        kvc::Workspace w(base + 128, ws);
        kvc::cuda_impl::compact(dev, view, d_kept, d_counts, w, status);
      },
      l.kv_bytes(), 0.0);
  l.restore(dev.stream);
  BENCH_CUDA(cudaFree(d_kept));
  BENCH_CUDA(cudaFree(d_counts));
}

void sizes(benchmark::internal::Benchmark* b) {
  b->Arg(4096)->Arg(32768)->Arg(131072)->UseManualTime()->Unit(benchmark::kMicrosecond);
}

}  // namespace

BENCHMARK(BM_CudaExpectedAttentionScore_Cov)->Apply(sizes);
BENCHMARK(BM_CudaExpectedAttentionScore_NoCov)->Apply(sizes);
BENCHMARK(BM_CudaExpectedAttentionStatsScore)->Apply(sizes);
BENCHMARK(BM_CudaSnapKVScore)->Apply(sizes);
BENCHMARK(BM_CudaKnormScore)->Apply(sizes);
BENCHMARK(BM_CudaSelect)->Apply(sizes);
BENCHMARK(BM_CudaExpectedAttentionCompress)->Apply(sizes);
BENCHMARK(BM_CudaKnormCompressPaged)->Apply(sizes);
BENCHMARK(BM_CudaExpectedAttentionScore_CovTensorCores)->Apply(sizes);
BENCHMARK(BM_CudaExpectedAttentionCompress_TensorCores)->Apply(sizes);
BENCHMARK(BM_CudaCompact)->Apply(sizes);

int main(int argc, char** argv) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::printf("kvc_bench_cuda: no CUDA GPU, nothing to measure\n");
    return 0;
  }
  cudaDeviceProp prop{};
  BENCH_CUDA(cudaGetDeviceProperties(&prop, 0));
  if (std::strstr(prop.name, "H200")) peaks() = {4.8e12, 989e12};
  if (char const* g = std::getenv("KVC_PEAK_GBPS")) peaks().bytes_per_s = std::atof(g) * 1e9;
  if (char const* t = std::getenv("KVC_PEAK_TFLOPS")) peaks().flop_per_s = std::atof(t) * 1e12;
  benchmark::AddCustomContext("gpu", prop.name);
  benchmark::AddCustomContext("peak_bytes_per_second", std::to_string(peaks().bytes_per_s));
  benchmark::AddCustomContext("peak_flop_per_second", std::to_string(peaks().flop_per_s));
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
