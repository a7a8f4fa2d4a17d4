// `compress` on the CUDA device end to end, against the CPU path: for every press with CUDA kernels,
// strided and paged caches, float, bfloat16 and half, batches with different per-head lengths. The kept set
// of each row must equal the CPU's (an entry may differ only where its CPU score is within the scoring
// tolerance of the row's cut), every kept slot must hold exactly the original entry at its position,
// and the lengths must equal the CPU's. Then the error paths: host-visible ones throw before anything
// runs, device-visible ones leave the cache untouched and surface through check_status.
#include <algorithm>
#include <cmath>
#include <functional>
#include <iterator>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "cuda_test_util.cuh"

using namespace kvcompress;
using kvc_cuda_test::DeviceBuffer;

namespace {

constexpr std::int64_t kBatch = 2, kKv = 4, kGroup = 2, kCap = 301, kWindow = 16;

RopeConfig llama3(int d) {
  RopeConfig c;
  c.type = RopeType::kLlama3;
  c.theta = 500000.0;
  c.head_dim = d;
  c.factor = 8.0;
  c.original_max_position_embeddings = 8192;
  c.max_position_embeddings = 131072;
  return c;
}

/// A layer's content in HF order [b, h, s, d] on the host, with its observation activations, and the
/// same on the device as a strided or a paged cache (per-sequence table, NHD pages, shuffled pages).
template <class T>
struct Case {
  std::int64_t d;
  CacheExtents e;
  std::vector<T> k, v, queries, window;
  std::vector<std::int32_t> lengths, positions;
  RotaryEmbedding rope;

  /// \param uniform every head of a sequence has the same length (TOVA's requirement)
  Case(std::int64_t head_dim, std::uint32_t seed, bool uniform = false)
      : d(head_dim), e{kBatch, kKv, kCap, head_dim}, rope(llama3(static_cast<int>(head_dim))) {
    std::mt19937 gen(seed);
    std::normal_distribution<float> normal;
    auto fill = [&](std::vector<T>& x, std::int64_t n) {
      x.resize(static_cast<std::size_t>(n));
      for (auto& y : x) y = from_float<T>(normal(gen));
    };
    fill(k, kBatch * kKv * kCap * d);
    fill(v, kBatch * kKv * kCap * d);
    fill(queries, kBatch * kKv * kGroup * kCap * d);
    fill(window, kBatch * kKv * kGroup * kWindow * d);
    // Odd, short (just above SnapKV's window), full: one per (batch, head).
    lengths = uniform ? std::vector<std::int32_t>{257, 257, 257, 257, 99, 99, 99, 99}
                      : std::vector<std::int32_t>{301, 17, 250, 299, 33, 300, 64, 129};
    positions.resize(static_cast<std::size_t>(kBatch * kKv * kCap));
    for (std::size_t i = 0; i < positions.size(); ++i) positions[i] = static_cast<std::int32_t>(i % kCap);
  }

  [[nodiscard]] StridedLayout hf() const {
    return make_strided_layout(e, {Axis::kBatch, Axis::kHead, Axis::kSeq, Axis::kDim});
  }

  /// The observation over activations at `q` and `w` (host or device copies of queries and window).
  Observation<T> observation(T const* q, T const* w) const {
    Observation<T> obs;
    obs.queries = make_tensor4(q, {kBatch, kKv * kGroup, kCap, d});
    obs.window_queries = make_tensor4(w, {kBatch, kKv * kGroup, kWindow, d});
    obs.rope = &rope;
    return obs;
  }
};

/// Runs `press` on the CPU over a copy of the case; returns the compressed (k, v, lengths, positions)
/// and the CPU scores of the uncompressed cache.
template <class Press, class T>
struct CpuResult {
  std::vector<T> k, v;
  std::vector<std::int32_t> lengths, positions;
  std::vector<float> scores;

  CpuResult(Press const& press, Case<T> const& c) : k(c.k), v(c.v), lengths(c.lengths), positions(c.positions) {
    auto const view = make_cache_view(k.data(), v.data(), c.e, c.hf(), lengths.data(), positions.data());
    auto const obs = c.observation(c.queries.data(), c.window.data());
    scores = score(kvcompress::cpu, press, obs, view);
    compress(kvcompress::cpu, press, obs, view);
  }
};

/// Checks the device result row by row against the CPU result (see the file comment).
template <class T>
void require_same_compression(Case<T> const& c, std::vector<float> const& cpu_scores,
                              std::vector<std::int32_t> const& cpu_lengths, std::vector<std::int32_t> const& cpu_pos,
                              std::vector<std::int32_t> const& gpu_lengths, std::vector<std::int32_t> const& gpu_pos,
                              std::function<float(std::int64_t, std::int64_t, std::int64_t, std::int64_t, bool)> const& gpu_entry) {
  REQUIRE(gpu_lengths == cpu_lengths);
  for (std::int64_t r = 0; r < kBatch * kKv; ++r) {
    std::int64_t const b = r / kKv, h = r % kKv, n = cpu_lengths[static_cast<std::size_t>(r)];
    float const* s = cpu_scores.data() + r * kCap;
    std::vector<std::int32_t> want(cpu_pos.begin() + r * kCap, cpu_pos.begin() + r * kCap + n);
    std::vector<std::int32_t> got(gpu_pos.begin() + r * kCap, gpu_pos.begin() + r * kCap + n);
    REQUIRE(std::is_sorted(got.begin(), got.end()));
    if (got != want) {
      // Only entries whose scores sit at the cut (within the scoring tolerance) may differ.
      float cut = std::numeric_limits<float>::infinity();
      for (std::int32_t p : want) cut = std::min(cut, s[p]);
      std::vector<std::int32_t> diff;
      std::set_symmetric_difference(got.begin(), got.end(), want.begin(), want.end(), std::back_inserter(diff));
      for (std::int32_t p : diff) {
        INFO("row " << r << ": entry " << p << " score " << s[p] << " vs cut " << cut);
        REQUIRE(std::abs(s[p] - cut) <= 1e-4f * std::abs(cut) + 1e-7f);
      }
    }
    // Every kept slot holds exactly the original entry it names.
    for (std::int64_t j = 0; j < n; ++j) {
      std::int64_t const p = got[static_cast<std::size_t>(j)];
      for (std::int64_t x = 0; x < c.d; ++x) {
        std::size_t const src = static_cast<std::size_t>(((b * kKv + h) * kCap + p) * c.d + x);
        REQUIRE(gpu_entry(b, h, j, x, true) == to_float(c.k[src]));
        REQUIRE(gpu_entry(b, h, j, x, false) == to_float(c.v[src]));
      }
    }
  }
}

/// Compresses the case on the device through a strided HF-order cache and checks it.
template <class Press, class T>
void check_strided(Press const& press, Case<T> const& c) {
  CpuResult<Press, T> const cpu(press, c);
  DeviceBuffer<T> k(c.k), v(c.v), q(c.queries), w(c.window);
  DeviceBuffer<std::int32_t> lengths(c.lengths), positions(c.positions);
  KVCacheView<T> const view{k.get(), v.get(), c.e, c.hf(), c.hf(), lengths.get(), positions.get()};
  compress(kvc_cuda_test::kChecked, press, c.observation(q.get(), w.get()), view);
  auto const gk = k.download(), gv = v.download();
  auto const layout = c.hf();
  require_same_compression(c, cpu.scores, cpu.lengths, cpu.positions, lengths.download(), positions.download(),
                           [&](std::int64_t b, std::int64_t h, std::int64_t s, std::int64_t x, bool key) {
                             auto const o = static_cast<std::size_t>(layout.offset(b, h, s, x));
                             return to_float(key ? gk[o] : gv[o]);
                           });
}

/// The same through a paged cache: per-sequence block table, NHD pages of 16, pages shuffled.
template <class Press, class T>
void check_paged(Press const& press, Case<T> const& c) {
  CpuResult<Press, T> const cpu(press, c);
  constexpr std::int64_t kPage = 16;
  std::int64_t const per_row = (kCap + kPage - 1) / kPage;
  std::vector<std::int32_t> table(static_cast<std::size_t>(kBatch * per_row));
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), std::mt19937(5));
  PagedConfig cfg{PageTable::kPerSequence, PageOrder::kNHD, kPage, kBatch * per_row, table.data(), per_row};
  PagedLayout const host_layout = make_paged_layout(c.e, cfg);
  std::size_t const pool = static_cast<std::size_t>(cfg.num_pages * host_layout.page_stride);
  std::vector<T> pk(pool), pv(pool);
  auto const hf = c.hf();
  for (std::int64_t b = 0; b < kBatch; ++b)
    for (std::int64_t h = 0; h < kKv; ++h)
      for (std::int64_t s = 0; s < kCap; ++s)
        for (std::int64_t x = 0; x < c.d; ++x) {
          pk[static_cast<std::size_t>(host_layout.offset(b, h, s, x))] = c.k[static_cast<std::size_t>(hf.offset(b, h, s, x))];
          pv[static_cast<std::size_t>(host_layout.offset(b, h, s, x))] = c.v[static_cast<std::size_t>(hf.offset(b, h, s, x))];
        }
  DeviceBuffer<T> k(pk), v(pv), q(c.queries), w(c.window);
  DeviceBuffer<std::int32_t> lengths(c.lengths), positions(c.positions), d_table(table);
  PagedLayout layout = host_layout;
  layout.block_table = d_table.get();
  KVCacheView<T, PagedLayout> const view{k.get(), v.get(), c.e, layout, layout, lengths.get(), positions.get()};
  compress(kvc_cuda_test::kChecked, press, c.observation(q.get(), w.get()), view);
  auto const gk = k.download(), gv = v.download();
  auto const gl = lengths.download();
  require_same_compression(c, cpu.scores, cpu.lengths, cpu.positions, gl, positions.download(),
                           [&](std::int64_t b, std::int64_t h, std::int64_t s, std::int64_t x, bool key) {
                             auto const o = static_cast<std::size_t>(host_layout.offset(b, h, s, x));
                             return to_float(key ? gk[o] : gv[o]);
                           });
  // The pages given back, computed on the host from the downloaded lengths, are the CPU's.
  std::vector<std::int32_t> freed_gpu(table.size()), freed_cpu(table.size());
  auto const n_gpu = released_pages(host_layout, c.e, c.lengths.data(), gl.data(), freed_gpu.data(),
                                    static_cast<std::int64_t>(table.size()));
  auto const n_cpu = released_pages(host_layout, c.e, c.lengths.data(), cpu.lengths.data(), freed_cpu.data(),
                                    static_cast<std::int64_t>(table.size()));
  REQUIRE(n_gpu == n_cpu);
  REQUIRE(std::equal(freed_gpu.begin(), freed_gpu.begin() + n_gpu, freed_cpu.begin()));
}

template <class Press>
void check_press(Press const& press, bool uniform = false) {
  for (std::int64_t d : {64, 128}) {
    SECTION("float, head_dim " + std::to_string(d)) {
      Case<float> const c(d, 11, uniform);
      check_strided(press, c);
      check_paged(press, c);
    }
    SECTION("bfloat16, head_dim " + std::to_string(d)) {
      Case<bfloat16> const c(d, 12, uniform);
      check_strided(press, c);
      check_paged(press, c);
    }
    SECTION("half, head_dim " + std::to_string(d)) {
      Case<kvcompress::half> const c(d, 13, uniform);
      check_strided(press, c);
      check_paged(press, c);
    }
  }
}

}  // namespace

TEST_CASE("cuda compress: ExpectedAttention equals the CPU path", "[cuda]") {
  for (double r : {0.25, 0.75}) {
    ExpectedAttentionPress p;
    p.compression_ratio = r;
    check_press(p);
  }
}

TEST_CASE("cuda compress: ExpectedAttention without covariance equals the CPU path", "[cuda]") {
  ExpectedAttentionPress p;
  p.compression_ratio = 0.5;
  p.use_covariance = false;
  check_press(p);
}

TEST_CASE("cuda compress: Knorm, StreamingLLM, KeyDiff equal the CPU path", "[cuda]") {
  check_press(KnormPress{0.5});
  StreamingLLMPress s;
  s.compression_ratio = 0.5;
  check_press(s);
  KeyDiffPress kd;
  kd.compression_ratio = 0.3;
  check_press(kd);
}

TEST_CASE("cuda compress: SnapKV and TOVA equal the CPU path", "[cuda]") {
  SnapKVPress s;
  s.compression_ratio = 0.5;
  s.window_size = kWindow;
  check_press(s);
  TOVAPress t;
  t.compression_ratio = 0.5;
  check_press(t, true);
}

TEST_CASE("cuda compress: AdaKV around ExpectedAttention equals the CPU path", "[cuda]") {
  ExpectedAttentionPress inner;
  inner.compression_ratio = 0.5;
  check_press(AdaKVPress<ExpectedAttentionPress>{inner, 0.2});
}

TEST_CASE("cuda compress: ratio 0 leaves the cache untouched", "[cuda]") {
  Case<float> const c(64, 3);
  DeviceBuffer<float> k(c.k), v(c.v), q(c.queries), w(c.window);
  DeviceBuffer<std::int32_t> lengths(c.lengths);
  KVCacheView<float> const view{k.get(), v.get(), c.e, c.hf(), c.hf(), lengths.get(), nullptr};
  compress(kvc_cuda_test::kChecked, KnormPress{0.0}, c.observation(q.get(), w.get()), view);
  REQUIRE(k.download() == c.k);
  REQUIRE(lengths.download() == c.lengths);
}

TEST_CASE("cuda compress: host-visible errors throw before anything runs", "[cuda]") {
  Case<float> const c(64, 4);
  DeviceBuffer<float> k(c.k), v(c.v), q(c.queries), w(c.window);
  DeviceBuffer<std::int32_t> lengths(c.lengths);
  KVCacheView<float> const view{k.get(), v.get(), c.e, c.hf(), c.hf(), lengths.get(), nullptr};
  auto const obs = c.observation(q.get(), w.get());
  CHECK_THROWS_WITH(compress(kvc_cuda_test::kChecked, KnormPress{1.0}, obs, view),
                    Catch::Contains("compression_ratio must be in [0, 1), got 1"));
  std::vector<float> host_k(c.k);
  KVCacheView<float> host_keys = view;
  host_keys.keys = host_k.data();
  CHECK_THROWS_WITH(compress(kvc_cuda_test::kChecked, KnormPress{0.5}, obs, host_keys),
                    Catch::Contains("cache.keys") && Catch::Contains("host memory"));
  Case<float> const odd(72, 4);
  DeviceBuffer<float> k72(odd.k), v72(odd.v);
  KVCacheView<float> const view72{k72.get(), v72.get(), odd.e, odd.hf(), odd.hf(), lengths.get(), nullptr};
  CHECK_THROWS_WITH(compress(kvc_cuda_test::kChecked, KnormPress{0.5}, obs, view72), Catch::Contains("head_dim = 72"));
  AdaKVPress<KnormPress> ada{KnormPress{0.5}, 1.5};
  CHECK_THROWS_WITH(compress(kvc_cuda_test::kChecked, ada, obs, view), Catch::Contains("alpha_safeguard must be in [0, 1]"));
}

TEST_CASE("cuda compress: a length above capacity or a NaN key leaves the cache untouched and throws", "[cuda]") {
  Case<float> c(64, 5);
  SECTION("length above capacity") { c.lengths[3] = static_cast<std::int32_t>(kCap + 1); }
  SECTION("NaN key") { c.k[static_cast<std::size_t>((2 * kCap + 7) * c.d + 3)] = std::numeric_limits<float>::quiet_NaN(); }
  DeviceBuffer<float> k(c.k), v(c.v), q(c.queries), w(c.window);
  DeviceBuffer<std::int32_t> lengths(c.lengths);
  KVCacheView<float> const view{k.get(), v.get(), c.e, c.hf(), c.hf(), lengths.get(), nullptr};
  KnormPress const p{0.5};
  auto const obs = c.observation(q.get(), w.get());
  std::size_t const bytes = compress_workspace_bytes(kvc_cuda_test::kChecked, p, obs, view);
  DeviceBuffer<std::byte> scratch(bytes);
  compress(kvc_cuda_test::kChecked, p, obs, view, Workspace(scratch.get(), bytes));
  CHECK_THROWS_AS(check_status(kvc_cuda_test::kChecked, scratch.get()), Error);
  auto const gk = k.download();
  REQUIRE(std::equal(gk.begin(), gk.end(), c.k.begin(), [](float a, float b) {
    return a == b || (std::isnan(a) && std::isnan(b));
  }));
  REQUIRE(lengths.download() == c.lengths);
}

TEST_CASE("cuda compress: a largest score of -0 gives the sinks the CPU's max + 1", "[cuda]") {
  // ε = −1 puts every (p + ε) below 0; a zero value vector then makes the score −0 (and the others
  // negative), so the largest non-sink score is −0: the sinks get 1, as on the CPU.
  Case<float> c(64, 21);
  for (std::size_t e = 0; e < c.v.size(); e += 2 * static_cast<std::size_t>(c.d))
    std::fill(c.v.begin() + static_cast<std::ptrdiff_t>(e), c.v.begin() + static_cast<std::ptrdiff_t>(e) + c.d, 0.0f);
  ExpectedAttentionPress p;
  p.compression_ratio = 0.5;
  p.epsilon = -1.0f;
  SECTION("every other value vector zero") { check_strided(p, c); }
  SECTION("every value vector zero: every non-sink score is -0") {
    std::fill(c.v.begin(), c.v.end(), 0.0f);
    check_strided(p, c);
  }
}

TEST_CASE("cuda compress: an error pending from the engine's own work is neither reported nor cleared", "[cuda]") {
  Case<float> const c(64, 22);
  DeviceBuffer<float> k(c.k), v(c.v), q(c.queries), w(c.window);
  DeviceBuffer<std::int32_t> lengths(c.lengths);
  DeviceBuffer<cuda_impl::DeviceStatus> engine_status(1);
  KVCacheView<float> const view{k.get(), v.get(), c.e, c.hf(), c.hf(), lengths.get(), nullptr};
  KnormPress const p{0.5};
  auto const obs = c.observation(q.get(), w.get());
  std::size_t const bytes = compress_workspace_bytes(kvcompress::cuda{}, p, obs, view);
  DeviceBuffer<std::byte> scratch(bytes);
  // The engine's launch with too many threads: a non-sticky error that the engine will read itself.
  cuda_impl::check_lengths_kernel<><<<1, 4096>>>(lengths.get(), 1, kCap, -1, cuda_impl::StatusCode::kLengthNotAboveSink,
                                                 engine_status.get());
  REQUIRE(cudaPeekAtLastError() == cudaErrorInvalidConfiguration);
  REQUIRE_NOTHROW(compress(kvcompress::cuda{}, p, obs, view, Workspace(scratch.get(), bytes)));
  REQUIRE_NOTHROW(check_status(kvcompress::cuda{}, scratch.get()));
  CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);  // still there for the engine
  CHECK(cudaGetLastError() == cudaSuccess);
  // And pointer checks made with a pending error leave it pending too.
  cuda_impl::check_lengths_kernel<><<<1, 4096>>>(lengths.get(), 1, kCap, -1, cuda_impl::StatusCode::kLengthNotAboveSink,
                                                 engine_status.get());
  CHECK_NOTHROW(make_device_cache_view(kvcompress::cuda{}, k.get(), v.get(), c.e, c.hf(), c.hf(), lengths.get()));
  CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
}
