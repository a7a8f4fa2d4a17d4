// The tensor-core path's host side (include/kvcompress/cuda/blas.cuh, query_stats.cuh): when it is
// chosen, and the covariance GEMM's shape for every query layout — checked by running the GEMM that
// shape describes (column-major, C = A·Bᵀ, as cuBLAS reads it) on the host against Σ_t x xᵀ. No
// kernel and no cuBLAS call runs here.
#include <catch2/catch.hpp>

#include <array>
#include <cstdint>
#include <random>
#include <vector>

#include "kvcompress/cuda/query_stats.cuh"

using namespace kvcompress;

TEST_CASE("cuda host: tensor cores only with a cuBLAS session and half or bfloat16 storage", "[cuda][host][blas]") {
  int token = 0;
  auto const* fake = reinterpret_cast<CublasSession const*>(&token);  // only its presence is read
  kvcompress::cuda const with{nullptr, false, fake}, without{};
  CHECK(cuda_impl::tensor_cores<bfloat16>(with));
  CHECK(cuda_impl::tensor_cores<kvcompress::half>(with));
  CHECK_FALSE(cuda_impl::tensor_cores<float>(with));
  CHECK_FALSE(cuda_impl::tensor_cores<bfloat16>(without));
  CHECK(cuda_impl::blas_type_v<bfloat16> == CUDA_R_16BF);
  CHECK(cuda_impl::blas_type_v<kvcompress::half> == CUDA_R_16F);
}

namespace {

/// Runs `g` as cuBLAS would (column-major, C_i = A_i · B_iᵀ) on host arrays of doubles.
std::vector<double> run_gemm_nt(cuda_impl::GemmNT const& g, std::vector<double> const& a, std::int64_t offset) {
  std::vector<double> c(static_cast<std::size_t>(g.batch * g.stride_c), 0.0);
  for (int i = 0; i < g.batch; ++i)
    for (int row = 0; row < g.m; ++row)
      for (int col = 0; col < g.n; ++col) {
        double s = 0.0;
        for (int k = 0; k < g.k; ++k)
          s += a[static_cast<std::size_t>(offset + i * g.stride_a + row + k * g.lda)] *
               a[static_cast<std::size_t>(offset + i * g.stride_b + col + k * g.ldb)];
        c[static_cast<std::size_t>(i * g.stride_c + row + col * g.ldc)] = s;
      }
  return c;
}

}  // namespace

TEST_CASE("cuda host: the covariance GEMM reads the queries in place as sum over tokens of x x^T",
          "[cuda][host][blas]") {
  std::int64_t const b = 2, h = 3, t = 9, d = 4, n_sink = 2;
  struct Layout {
    char const* name;
    std::array<std::int64_t, 4> shape, strides;
    bool in_place;
  };
  Layout const layouts[] = {
      {"[b, h, t, d]", {b, h, t, d}, {h * t * d, t * d, d, 1}, true},
      {"[t, b, h, d] (token-major)", {b, h, t, d}, {h * d, d, b * h * d, 1}, true},
      {"[b, h, t, d] with padded tokens", {b, h, t, d}, {h * t * 6, t * 6, 6, 1}, true},
      {"one head, [b, t, d]", {b, 1, t, d}, {t * d, t * d, d, 1}, true},
      {"channel stride 2", {b, h, t, d}, {2 * h * t * d, 2 * t * d, 2 * d, 2}, false},
      {"broadcast batch", {b, h, t, d}, {0, t * d, d, 1}, false},
      {"heads not at the batch's stride", {b, h, t, d}, {(h + 1) * t * d, t * d, d, 1}, false},
  };
  std::mt19937 gen(3);
  std::normal_distribution<double> normal;
  for (Layout const& l : layouts) {
    INFO(l.name);
    cuda_impl::GemmNT const g = cuda_impl::query_gram_gemm(l.shape, l.strides, n_sink);
    REQUIRE((g.batch > 0) == l.in_place);
    if (!l.in_place) continue;
    std::int64_t span = 1;
    for (int a = 0; a < 4; ++a) span += (l.shape[static_cast<std::size_t>(a)] - 1) * l.strides[static_cast<std::size_t>(a)];
    std::vector<double> q(static_cast<std::size_t>(span));
    for (auto& x : q) x = normal(gen);
    std::vector<double> const c = run_gemm_nt(g, q, n_sink * l.strides[2]);
    CHECK(g.m == d);
    CHECK(g.n == d);
    CHECK(g.k == t - n_sink);
    CHECK(g.batch == l.shape[0] * l.shape[1]);
    for (std::int64_t bb = 0; bb < l.shape[0]; ++bb)
      for (std::int64_t j = 0; j < l.shape[1]; ++j)
        for (std::int64_t r = 0; r < d; ++r)
          for (std::int64_t cc = 0; cc < d; ++cc) {
            double want = 0.0;
            for (std::int64_t tt = n_sink; tt < t; ++tt) {
              std::int64_t const base = bb * l.strides[0] + j * l.strides[1] + tt * l.strides[2];
              want += q[static_cast<std::size_t>(base + r)] * q[static_cast<std::size_t>(base + cc)];
            }
            // The pair's D × D block, [bh, D, D] (symmetric, so row- and column-major agree).
            double const got = c[static_cast<std::size_t>((bb * l.shape[1] + j) * d * d + r * d + cc)];
            REQUIRE(got == Approx(want).epsilon(1e-12));
          }
  }
}

TEST_CASE("cuda host: a cuBLAS session refuses a host workspace before creating its handle", "[cuda][host][blas]") {
  std::vector<std::byte> host(1024);
  CHECK_THROWS_WITH(CublasSession(host.data(), host.size()),
                    Catch::Contains("CublasSession workspace = ") &&
                        (Catch::Contains("host memory") || Catch::Contains("is not CUDA memory")));
  CHECK_THROWS_WITH(CublasSession(nullptr, 1024), Catch::Contains("CublasSession workspace must not be null"));
}
