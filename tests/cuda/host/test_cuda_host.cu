// The host-side logic of the CUDA headers, which runs without a GPU (label `cpu`, so CI runs it): the
// selection's key order against the CPU's, the device status's messages, where the status sits in a
// workspace, the compaction's wave sizes, the head_dim dispatch, and the checks `compress` makes
// before it touches the device. Nothing here launches a kernel.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
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

TEST_CASE("cuda host: compaction waves are whole tiles, bounded by the staging budget and the capacity", "[cuda][host]") {
  std::vector<std::int32_t> lengths(8);
  for (std::int64_t cap : {1, 63, 64, 4096, 32768, 131072, 262144}) {
    CacheExtents const e{1, 8, cap, 128};
    KVCacheView<bfloat16> view{nullptr, nullptr, e, {}, {}, lengths.data(), nullptr};
    std::int64_t const w = cuda_impl::compact_wave_slots(view);
    INFO("capacity " << cap << ": wave " << w);
    CHECK(w % cuda_impl::kMoveEntries == 0);
    CHECK(w >= cuda_impl::kMoveEntries);
    CHECK(w <= (cap + cuda_impl::kMoveEntries - 1) / cuda_impl::kMoveEntries * cuda_impl::kMoveEntries);
    // K and V of one wave of every row fit the staging budget (one tile at least, whatever the shape).
    CHECK((w == cuda_impl::kMoveEntries ||
           static_cast<std::size_t>(w) * 8 * 2 * 128 * sizeof(bfloat16) <= cuda_impl::kStageBytes));
    CHECK(cuda_impl::compact_workspace_bytes(view) >= 2 * static_cast<std::size_t>(w) * 8 * 128 * sizeof(bfloat16));
  }
  CacheExtents const e{1, 8, 1000, 64};
  KVCacheView<float> view{nullptr, nullptr, e, {}, {}, lengths.data(), nullptr};
  CHECK(cuda_impl::compact_wave_slots(view, 1) == cuda_impl::kMoveEntries);
  CHECK(cuda_impl::compact_wave_slots(view, 65) == 2 * cuda_impl::kMoveEntries);
  CHECK(cuda_impl::compact_wave_slots(view, 100000) == 1024);  // the capacity rounded up to whole tiles
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
  // Host buffers under the CUDA tag: "host memory" with a GPU, "not CUDA memory" without a driver.
  CHECK_THROWS_WITH(compress(kvcompress::cuda{}, KnormPress{0.5}, obs, host, ws),
                    Catch::Contains("cache.keys = ") &&
                        (Catch::Contains("host memory") || Catch::Contains("is not CUDA memory")));
  CHECK(lengths == std::vector<std::int32_t>(8, 16));
  CHECK(std::all_of(k.begin(), k.end(), [](float x) { return x == 0.0f; }));
}
