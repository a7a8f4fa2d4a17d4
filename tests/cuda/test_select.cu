// Per-row top-k on the device against cpu_impl::select_topk_row: ties, NaNs, ±0, ±Inf, every k
// from 0 to n, rows of different lengths in one call, and a 131072-slot row keeping 65536; rows up to
// kSelectChunk go through one CTA each, longer ones (and every row under a small `chunk`) through the
// multi-CTA select.
#include <cmath>
#include <limits>
#include <random>

#include "cuda_test_util.cuh"
#include "kvcompress/cuda/select.cuh"

using namespace kvcompress;
using kvc_cuda_test::DeviceBuffer;

namespace {

enum class Scores { kNormal, kFewValues, kWithNaN, kAllEqual };

/// Scores of `rows` rows of `capacity` slots; slots past a row's length hold garbage that must be ignored.
std::vector<float> make_scores(std::int64_t rows, std::int64_t capacity, Scores kind, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> pick(0, 7);
  float const nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  // Few values: ties everywhere, -0 and +0 (equal to the CPU), infinities.
  float const few[] = {-0.0f, 0.0f, 1.0f, -1.0f, 0.5f, inf, -inf, 1.0f};
  std::vector<float> s(static_cast<std::size_t>(rows * capacity));
  for (auto& x : s) {
    switch (kind) {
      case Scores::kNormal: x = normal(gen); break;
      case Scores::kFewValues: x = few[pick(gen)]; break;
      case Scores::kWithNaN: x = pick(gen) == 0 ? nan : (pick(gen) == 1 ? -nan : few[pick(gen)]); break;
      case Scores::kAllEqual: x = 0.25f; break;
    }
  }
  return s;
}

/// Runs the device select and checks every row against the CPU, and that nothing past k is written.
/// \param chunk slots per CTA of the multi-CTA select (0: the library's)
void check_select(std::vector<float> const& scores, std::int64_t rows, std::int64_t capacity,
                  std::vector<std::int32_t> const& lengths, std::vector<std::int32_t> const& counts,
                  std::int64_t chunk = 0) {
  DeviceBuffer<float> d_scores(scores);
  DeviceBuffer<std::int32_t> d_lengths(lengths), d_counts(counts);
  std::vector<std::int32_t> const sentinel(static_cast<std::size_t>(rows * capacity), -7);
  DeviceBuffer<std::int32_t> d_kept(sentinel);
  DeviceBuffer<cuda_impl::DeviceStatus> status(1);
  KVC_CUDA_CHECK(cudaMemset(status.get(), 0, sizeof(cuda_impl::DeviceStatus)));
  std::size_t const bytes = cuda_impl::select_workspace_bytes(rows, capacity, chunk);
  DeviceBuffer<std::byte> ws_mem(bytes);
  Workspace ws(ws_mem.get(), bytes);
  cuda_impl::select_topk(kvc_cuda_test::kChecked, d_scores.get(), rows, capacity, d_lengths.get(), d_counts.get(),
                         d_kept.get(), ws, status.get(), chunk);
  KVC_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<std::int32_t> const kept = d_kept.download();
  std::vector<std::int32_t> idx(static_cast<std::size_t>(capacity));
  for (std::int64_t r = 0; r < rows; ++r) {
    std::int32_t const n = lengths[r], k = counts[r];
    cpu_impl::select_topk_row(scores.data() + r * capacity, n, k, idx.data());
    INFO("row " << r << ": n = " << n << ", k = " << k);
    for (std::int32_t j = 0; j < k; ++j) {
      INFO("kept[" << j << "]");
      REQUIRE(kept[r * capacity + j] == idx[j]);
    }
    for (std::int64_t j = k; j < capacity; ++j) REQUIRE(kept[r * capacity + j] == -7);
  }
}

}  // namespace

TEST_CASE("cuda select_topk equals the CPU select on many rows of different lengths", "[cuda][select]") {
  auto const kind = GENERATE(Scores::kNormal, Scores::kFewValues, Scores::kWithNaN, Scores::kAllEqual);
  std::int64_t const rows = 64, capacity = 20011;  // odd, more than two compaction tiles
  std::mt19937 gen(static_cast<std::uint32_t>(kind) + 11u);
  std::vector<std::int32_t> lengths(rows), counts(rows);
  for (std::int64_t r = 0; r < rows; ++r) {
    std::int32_t const n = r == 0 ? 1 : (r == 1 ? static_cast<std::int32_t>(capacity)
                                               : std::uniform_int_distribution<std::int32_t>(1, 20011)(gen));
    std::int32_t const k_choices[] = {0, 1, n - 1, n, n / 2, n / 3 + 1,
                                      std::uniform_int_distribution<std::int32_t>(0, n)(gen)};
    lengths[r] = n;
    counts[r] = k_choices[r % 7] < 0 ? 0 : k_choices[r % 7];
  }
  check_select(make_scores(rows, capacity, kind, 5u + static_cast<std::uint32_t>(kind)), rows, capacity, lengths, counts);
}

TEST_CASE("cuda select_topk on one row, small and odd", "[cuda][select]") {
  for (std::int32_t n : {1, 2, 3, 7, 33, 1025, 8193}) {
    for (Scores kind : {Scores::kNormal, Scores::kFewValues, Scores::kWithNaN}) {
      std::vector<float> const s = make_scores(1, n, kind, static_cast<std::uint32_t>(n));
      for (std::int32_t k : {0, 1, n / 2, n - 1, n}) {
        if (k < 0) continue;
        check_select(s, 1, n, {n}, {k});
      }
    }
  }
}

TEST_CASE("cuda select_topk keeps 65536 of 131072 slots", "[cuda][select]") {
  std::int64_t const rows = 2, capacity = 131072;
  auto const kind = GENERATE(Scores::kNormal, Scores::kFewValues);
  check_select(make_scores(rows, capacity, kind, 99u), rows, capacity, {131072, 100001}, {65536, 65536});
}

TEST_CASE("cuda select_topk through many CTAs per row (chunks of 64 and 1000 slots) equals the CPU select",
          "[cuda][select]") {
  auto const kind = GENERATE(Scores::kNormal, Scores::kFewValues, Scores::kWithNaN, Scores::kAllEqual);
  std::int64_t const rows = 9, capacity = 5003;
  std::mt19937 gen(static_cast<std::uint32_t>(kind) + 71u);
  std::vector<std::int32_t> lengths(rows), counts(rows);
  for (std::int64_t r = 0; r < rows; ++r) {
    std::int32_t const n = r < 3 ? static_cast<std::int32_t>(capacity) : std::uniform_int_distribution<std::int32_t>(1, 5003)(gen);
    std::int32_t const k_choices[] = {n / 2, 1, n - 1, n, 0, std::uniform_int_distribution<std::int32_t>(0, n)(gen)};
    lengths[r] = n;
    counts[r] = k_choices[r % 6] < 0 ? 0 : k_choices[r % 6];
  }
  std::vector<float> const s = make_scores(rows, capacity, kind, 17u + static_cast<std::uint32_t>(kind));
  for (std::int64_t chunk : {64, 1000}) {
    INFO("chunk " << chunk);
    check_select(s, rows, capacity, lengths, counts, chunk);
  }
}

TEST_CASE("cuda select_topk leaves kept untouched once the status records a failure", "[cuda][select]") {
  std::vector<float> const s = make_scores(1, 100, Scores::kNormal, 3u);
  DeviceBuffer<float> d_scores(s);
  DeviceBuffer<std::int32_t> d_lengths(std::vector<std::int32_t>{100}), d_counts(std::vector<std::int32_t>{50});
  DeviceBuffer<std::int32_t> d_kept(std::vector<std::int32_t>(100, -7));
  cuda_impl::DeviceStatus failed_status{};
  failed_status.code = static_cast<int>(cuda_impl::StatusCode::kLengthOutOfRange);
  DeviceBuffer<cuda_impl::DeviceStatus> status(std::vector<cuda_impl::DeviceStatus>{failed_status});
  for (std::int64_t chunk : {0, 16}) {  // one CTA per row, and the multi-CTA select
    std::size_t const bytes = cuda_impl::select_workspace_bytes(1, 100, chunk);
    DeviceBuffer<std::byte> ws_mem(bytes);
    Workspace ws(ws_mem.get(), bytes);
    cuda_impl::select_topk(kvc_cuda_test::kChecked, d_scores.get(), 1, 100, d_lengths.get(), d_counts.get(),
                           d_kept.get(), ws, status.get(), chunk);
    KVC_CUDA_CHECK(cudaDeviceSynchronize());
    for (std::int32_t x : d_kept.download()) REQUIRE(x == -7);
  }
}
