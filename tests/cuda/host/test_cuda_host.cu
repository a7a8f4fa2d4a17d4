// The host-side logic of the CUDA headers, which runs without a GPU (label `cpu`, so CI runs it): the
// selection's key order against the CPU's, the device status's messages, where the status sits in a
// workspace and how compress carves the rest, the global max cell, the error attribution of a failed
// launch, the row grid, the head_dim dispatch, and the checks `compress` makes before it touches the
// device (the compaction, the selection, the page release and the cuBLAS path have files of their own
// here). No kernel runs here.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kvcompress/cuda.cuh"

using namespace kvcompress;

TEST_CASE("cuda host: rank_key orders scores exactly as the CPU's RanksBefore, ties and NaN included", "[cuda][host]") {
  float const inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> x = {nan, -nan, -inf, inf, 0.0f, -0.0f, 1.0f, -1.0f, std::numeric_limits<float>::denorm_min(),
                          -std::numeric_limits<float>::denorm_min(), std::numeric_limits<float>::max(),
                          std::numeric_limits<float>::lowest(), std::numeric_limits<float>::min(), 1.0f, 0.5f};
  std::mt19937 gen(3);
  std::normal_distribution<float> normal(0.0f, 100.0f);
  for (int i = 0; i < 200; ++i) x.push_back(normal(gen));
  // a ranks before b by score alone: before b whichever of the two has the lower index.
  auto const score_before = [](float a, float b) {
    float const ab[2] = {a, b}, ba[2] = {b, a};
    return cpu_impl::RanksBefore{ab}(0, 1) && cpu_impl::RanksBefore{ba}(1, 0);
  };
  for (float a : x)
    for (float b : x) {
      INFO(a << " vs " << b);
      if (score_before(a, b)) REQUIRE(cuda_impl::rank_key(a) > cuda_impl::rank_key(b));
      else if (!score_before(b, a)) REQUIRE(cuda_impl::rank_key(a) == cuda_impl::rank_key(b));
    }
}

TEST_CASE("cuda host: every device status code becomes the CPU's kind of message", "[cuda][host]") {
  using cuda_impl::StatusCode;
  auto const message = [](StatusCode code) {
    cuda_impl::DeviceStatus st{};
    st.code = static_cast<int>(code);
    st.row = 5;
    st.slot = 17;
    st.value = std::numeric_limits<float>::quiet_NaN();
    st.length = 9;
    st.aux = 4;
    try {
      cuda_impl::throw_if_failed(st);
    } catch (Error const& e) {
      return e.message();
    }
    return std::string("no error");
  };
  CHECK(message(StatusCode::kOk) == "no error");
  CHECK_THAT(message(StatusCode::kLengthOutOfRange), Catch::Contains("lengths[5] = 9 is outside [0, capacity]"));
  CHECK_THAT(message(StatusCode::kLengthNotAboveSink), Catch::Contains("cache length n = 9 of row 5 must exceed n_sink = 4"));
  CHECK_THAT(message(StatusCode::kLengthNotAboveWindow),
             Catch::Contains("cache length n = 9 of row 5 must exceed window_size = 4"));
  CHECK_THAT(message(StatusCode::kLengthMismatch), Catch::Contains("lengths[5] = 9 must equal 4"));
  CHECK_THAT(message(StatusCode::kNonFiniteScore), Catch::Contains("non-finite score nan at (row 5, slot 17)"));
  CHECK_THAT(message(StatusCode::kNonFiniteInput), Catch::Contains("non-finite value nan (row 5, element 17"));
  CHECK_THAT(message(static_cast<StatusCode>(99)), Catch::Contains("unknown device status code 99"));
  for (StatusCode c : {StatusCode::kLengthOutOfRange, StatusCode::kNonFiniteScore})
    CHECK_THAT(message(c), Catch::Contains("the cache was left unchanged"));
}

TEST_CASE("cuda host: check_status finds the status where compress's first take puts it", "[cuda][host]") {
  std::vector<std::byte> buffer(4096);
  for (std::size_t offset : {0u, 1u, 7u, 63u, 64u, 65u}) {
    Workspace ws(buffer.data() + offset, buffer.size() - offset);
    auto* first = ws.take<cuda_impl::DeviceStatus>(1);
    CHECK(static_cast<void*>(first) == static_cast<void*>(cuda_impl::status_in(buffer.data() + offset)));
  }
}

TEST_CASE("cuda host: dispatch_head_dim reaches each supported head_dim and names any other", "[cuda][host]") {
  for (int d : {64, 80, 96, 128, 256})
    CHECK(cuda_impl::dispatch_head_dim(d, [](auto dim) { return static_cast<int>(decltype(dim)::value); }) == d);
  for (int d : {0, 32, 72, 112, 512})
    CHECK_THROWS_WITH(cuda_impl::dispatch_head_dim(d, [](auto) { return 0; }),
                      Catch::Contains("head_dim = " + std::to_string(d) + " is not supported by the kvcompress::cuda device"));
}

TEST_CASE("cuda host: compress rejects a bad ratio or alpha and host memory before touching the device", "[cuda][host]") {
  std::vector<float> k(2 * 4 * 16 * 64), v(k.size());
  std::vector<std::int32_t> lengths(8, 16);
  CacheExtents const e{2, 4, 16, 64};
  auto const layout = make_strided_layout(e, {Axis::kBatch, Axis::kHead, Axis::kSeq, Axis::kDim});
  KVCacheView<float> const host{k.data(), v.data(), e, layout, layout, lengths.data(), nullptr};
  Observation<float> const obs;
  std::vector<std::byte> scratch(1 << 20);
  Workspace const ws(scratch.data(), scratch.size());
  CHECK_THROWS_WITH(compress(kvcompress::cuda{}, KnormPress{1.0}, obs, host, ws),
                    Catch::Contains("compression_ratio must be in [0, 1), got 1"));
  CHECK_THROWS_WITH(compress(kvcompress::cuda{}, KnormPress{-0.5}, obs, host, ws),
                    Catch::Contains("compression_ratio must be in [0, 1), got -0.5"));
  CHECK_THROWS_WITH(compress(kvcompress::cuda{}, AdaKVPress<KnormPress>{KnormPress{0.5}, 2.0}, obs, host, ws),
                    Catch::Contains("alpha_safeguard must be in [0, 1], got 2"));
  // Host buffers under the CUDA tag with per-call pointer checks, and given to the view factory:
  // "host memory" with a GPU, "not CUDA memory" without a driver.
  CHECK_THROWS_WITH(compress(kvcompress::cuda{nullptr, true}, KnormPress{0.5}, obs, host, ws),
                    Catch::Contains("cache.keys = ") &&
                        (Catch::Contains("host memory") || Catch::Contains("is not CUDA memory")));
  CHECK_THROWS_WITH(make_device_cache_view(kvcompress::cuda{}, k.data(), v.data(), e, layout, layout, lengths.data()),
                    Catch::Contains("cache.keys = ") &&
                        (Catch::Contains("host memory") || Catch::Contains("is not CUDA memory")));
  KVCacheView<float> no_keys = host;
  no_keys.keys = nullptr;
  CHECK_THROWS_WITH(compress(kvcompress::cuda{}, KnormPress{0.5}, obs, no_keys, ws),
                    Catch::Contains("cache.keys must not be null"));
  CHECK(lengths == std::vector<std::int32_t>(8, 16));
  CHECK(std::all_of(k.begin(), k.end(), [](float x) { return x == 0.0f; }));
}

TEST_CASE("cuda host: compress's scratch carve-up fits compress_workspace_bytes at any base address", "[cuda][host]") {
  // 8 rows of 301 slots: rows·capacity·4 bytes is not a multiple of 64, so the phase region starts
  // past an alignment gap that a plain "capacity − used" would count as usable.
  for (std::int64_t cap : {301, 64, 1, 4097}) {
    std::vector<std::int32_t> lengths(8);
    CacheExtents const e{2, 4, cap, 64};
    auto const layout = make_strided_layout(e, {Axis::kBatch, Axis::kHead, Axis::kSeq, Axis::kDim});
    KVCacheView<float> const view{nullptr, nullptr, e, layout, layout, lengths.data(), nullptr};
    Observation<float> const obs;
    std::size_t const bytes = compress_workspace_bytes(kvcompress::cuda{}, KnormPress{0.5}, obs, view);
    std::size_t const phase_needed = std::max(cuda_impl::compact_workspace_bytes(view),
                                              cuda_impl::select_workspace_bytes(8, cap));
    std::vector<std::byte> buffer(bytes + 64);
    for (std::size_t offset : {0u, 4u, 17u, 60u, 63u}) {
      INFO("capacity " << cap << ", base offset " << offset);
      Workspace ws(buffer.data() + offset, bytes);
      cuda_impl::CompressScratch s{};
      REQUIRE_NOTHROW(s = cuda_impl::carve_compress_scratch(ws, 8, cap));
      CHECK(static_cast<void*>(s.status) == static_cast<void*>(cuda_impl::status_in(buffer.data() + offset)));
      CHECK(reinterpret_cast<std::uintptr_t>(s.phase) % Workspace::kAlignment == 0);
      CHECK(reinterpret_cast<std::byte*>(s.kept + 8 * cap) <= s.phase);
      CHECK(s.phase + s.phase_bytes == buffer.data() + offset + bytes);
      CHECK(s.phase_bytes >= phase_needed);
      // Each phase carves its own workspace from the region: the compaction's flags fit.
      Workspace phase(s.phase, s.phase_bytes);
      CHECK_NOTHROW((void)phase.take<unsigned int>(cuda_impl::gather_plan(e, sizeof(float)).flag_words));
    }
  }
}

TEST_CASE("cuda host: the global max cell keeps the exact maximum, -0 and negative scores included", "[cuda][host]") {
  float const inf = std::numeric_limits<float>::infinity();
  float const denorm = std::numeric_limits<float>::denorm_min();
  std::vector<std::vector<float>> const sets = {
      {-0.0f}, {-1.0f, -0.0f}, {-0.0f, -1.0f}, {-2.0f, -1.0f}, {-1.0f, -2.0f}, {0.0f, -0.0f}, {-0.0f, 0.0f},
      {-inf}, {-inf, -3.0f}, {-denorm, -1.0f}, {3.0f, -4.0f, 2.5f}, {inf, -inf}, {-std::numeric_limits<float>::max()},
      {1e-30f, -0.0f}, {-1e-30f, -0.0f, -5.0f}};
  for (auto const& set : sets) {
    float cpu_max = -inf;  // the CPU's fold (std::max; -0 and +0 compare equal)
    std::uint32_t cell = cuda_impl::kEmptyMaxCell;  // what atomicMax on the cell computes, in any order
    for (float x : set) {
      cpu_max = std::max(cpu_max, x);
      cell = std::max(cell, cuda_impl::rank_key(x));
    }
    float const got = cuda_impl::from_rank_key(cell);
    INFO("first score " << set.front() << ", " << set.size() << " scores: cell " << got << ", CPU " << cpu_max);
    CHECK(got == cpu_max);
    CHECK(got + 1.0f == cpu_max + 1.0f);  // the sinks' value
  }
  CHECK(std::isnan(cuda_impl::from_rank_key(cuda_impl::kEmptyMaxCell)));
  for (float x : {-inf, -1.0f, -denorm, denorm, 0.5f, inf}) {
    CHECK(cuda_impl::rank_key(x) > cuda_impl::kEmptyMaxCell);
    CHECK(cuda_impl::from_rank_key(cuda_impl::rank_key(x)) == x);
  }
}

TEST_CASE("cuda host: a failed launch names our kernel and leaves an earlier pending error pending", "[cuda][host]") {
  // An error pending before our call: the engine's (with a driver, an invalid device ordinal; without
  // one, every runtime call's missing-driver error).
  (void)cudaSetDevice(-1);
  REQUIRE(cudaPeekAtLastError() != cudaSuccess);
  CHECK_THROWS_WITH(cuda_impl::launch("kvc_probe_kernel", cuda_impl::check_lengths_kernel<>, dim3(1), dim3(4096), 0,
                                      nullptr, static_cast<std::int32_t const*>(nullptr), std::int64_t{0},
                                      std::int64_t{0}, std::int64_t{-1}, cuda_impl::StatusCode::kLengthNotAboveSink,
                                      static_cast<cuda_impl::DeviceStatus*>(nullptr)),
                    Catch::Contains("kvc_probe_kernel failed") && Catch::Contains("was already pending"));
  CHECK(cudaPeekAtLastError() != cudaSuccess);  // not cleared: it was not ours alone
  (void)cudaGetLastError();
}

TEST_CASE("cuda host: more than 65535 rows are not refused, and the row grid strides over them", "[cuda][host]") {
  std::vector<std::int32_t> lengths(1);
  CacheExtents const e{70000, 1, 16, 64};
  auto const layout = make_strided_layout(e, {Axis::kBatch, Axis::kHead, Axis::kSeq, Axis::kDim});
  KVCacheView<float> const view{nullptr, nullptr, e, layout, layout, lengths.data(), nullptr};
  RopeConfig config;
  config.head_dim = 64;
  RotaryEmbedding const rope(config);
  std::vector<float> q(1);
  Observation<float> obs;
  obs.queries = make_tensor4(q.data(), {70000, 1, 16, 64}, {0, 0, 0, 0});
  obs.rope = &rope;
  ExpectedAttentionPress const press;
  CHECK_NOTHROW(cuda_impl::detail_ea::check_common(press.params(), obs, view, 1));
  for (std::int64_t rows : {1, 65535, 65536, 70000, 200000}) {
    unsigned int const grid = cuda_impl::row_grid(rows);
    CHECK(grid >= 1u);
    CHECK(grid <= 65535u);
    std::vector<int> seen(static_cast<std::size_t>(rows), 0);
    for (unsigned int block = 0; block < grid; ++block)
      for (std::int64_t r = block; r < rows; r += grid) ++seen[static_cast<std::size_t>(r)];
    CHECK(std::all_of(seen.begin(), seen.end(), [](int n) { return n == 1; }));
  }
}
