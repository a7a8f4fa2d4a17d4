// AdaKV's per-row counts on the device against detail::adakv_counts (row budget kept_count(n, ratio)):
// alpha 0, 0.2, 1; ratios 0.1, 0.5, 0.9; batch 1 and 3; rows of different lengths (0 and 1 included);
// scores with ties across heads, NaNs, ±0; and the alpha_safeguard check.
#include <limits>
#include <random>

#include "cuda_test_util.cuh"
#include "kvcompress/cuda/adakv.cuh"
#include "test_util.hpp"

using namespace kvcompress;
using kvc_cuda_test::DeviceBuffer;

namespace {

std::vector<float> adakv_scores(std::size_t n, bool ties, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> pick(0, 9);
  float const few[] = {-0.0f, 0.0f, 1.0f, -1.0f, 0.5f, 2.0f, 1.0f, 0.5f, 3.0f,
                       std::numeric_limits<float>::quiet_NaN()};
  std::vector<float> s(n);
  for (auto& x : s) x = ties ? few[pick(gen)] : normal(gen);
  return s;
}

void check_counts(std::int64_t batch, std::int64_t heads, std::int64_t capacity, double ratio, double alpha, bool ties,
                  std::uint32_t seed) {
  std::mt19937 gen(seed);
  kvc_test::OwnedCache<float> host(batch, heads, capacity, 2);
  for (std::size_t r = 0; r < host.lengths.size(); ++r) {
    std::int32_t const cap = static_cast<std::int32_t>(capacity);
    std::int32_t const choices[] = {cap, 0, 1, 2, cap - 1, std::uniform_int_distribution<std::int32_t>(0, cap)(gen)};
    host.lengths[r] = choices[(r + static_cast<std::size_t>(seed)) % 6];
  }
  std::vector<float> const scores = adakv_scores(static_cast<std::size_t>(batch * heads * capacity), ties, seed + 1);
  auto const view = host.view();

  std::vector<std::int32_t> safe(host.lengths.size()), expected(host.lengths.size());
  std::vector<std::byte> cpu_ws(detail::adakv_counts_bytes(kvcompress::cpu, view));
  Workspace cws(cpu_ws.data(), cpu_ws.size());
  detail::adakv_counts(
      kvcompress::cpu, view, scores.data(), alpha, [&](std::int64_t n) { return kept_count(n, ratio); }, safe.data(),
      expected.data(), cws);

  DeviceBuffer<float> d_scores(scores);
  DeviceBuffer<std::int32_t> d_lengths(host.lengths), d_counts(host.lengths.size());
  DeviceBuffer<cuda_impl::DeviceStatus> status(1);
  KVC_CUDA_CHECK(cudaMemset(status.get(), 0, sizeof(cuda_impl::DeviceStatus)));
  std::size_t const bytes = cuda_impl::adakv_counts_workspace_bytes(batch, heads, capacity);
  DeviceBuffer<std::byte> ws_mem(bytes);
  Workspace ws(ws_mem.get(), bytes);
  cuda_impl::adakv_counts(kvc_cuda_test::kChecked, d_scores.get(), batch, heads, capacity, d_lengths.get(), ratio, alpha,
                          d_counts.get(), ws, status.get());
  KVC_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<std::int32_t> const counts = d_counts.download();
  for (std::size_t r = 0; r < counts.size(); ++r) {
    INFO("row " << r << ", length " << host.lengths[r] << ", ratio " << ratio << ", alpha " << alpha << ", ties "
                << ties);
    REQUIRE(counts[r] == expected[r]);
  }
}

}  // namespace

TEST_CASE("cuda adakv_counts equals the CPU selection across heads", "[cuda][adakv]") {
  double const alpha = GENERATE(0.0, 0.2, 1.0);
  double const ratio = GENERATE(0.1, 0.5, 0.9);
  std::int64_t const batch = GENERATE(1, 3);
  for (bool ties : {false, true}) {
    check_counts(batch, 8, 1001, ratio, alpha, ties, 17u);
    check_counts(batch, 8, 9000, ratio, alpha, ties, 23u);
  }
}

TEST_CASE("cuda adakv_counts over long rows", "[cuda][adakv]") {
  check_counts(1, 8, 131072, 0.5, 0.2, false, 5u);
  check_counts(1, 8, 131072, 0.5, 0.2, true, 6u);
}

TEST_CASE("cuda adakv_counts rejects alpha_safeguard outside [0, 1]", "[cuda][adakv]") {
  Workspace ws;
  for (double alpha : {-0.1, 1.5})
    CHECK_THROWS_WITH(cuda_impl::adakv_counts(kvc_cuda_test::kChecked, nullptr, 1, 8, 16, nullptr, 0.5, alpha, nullptr, ws,
                                              nullptr),
                      Catch::Contains("alpha_safeguard must be in [0, 1], got"));
}
