// The AVX512_BF16 quadratic-form kernel (detail/bf16_dot.hpp) against a double-precision evaluation of
// the same bf16 operands, Expected Attention's native path on bf16 caches against its portable fp32
// path, and the dispatch between them.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "kvcompress/press/expected_attention.hpp"
#include "test_util.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using namespace kvcompress;

namespace {

RotaryEmbedding llama3_rope(int head_dim) {
  RopeConfig c;
  c.type = RopeType::kLlama3;
  c.theta = 500000.0;
  c.head_dim = head_dim;
  c.factor = 8.0;
  c.original_max_position_embeddings = 32;
  c.max_position_embeddings = 4096;
  return RotaryEmbedding(c);
}

float bf16_value(std::uint16_t bits) { return static_cast<float>(Eigen::numext::bit_cast<bfloat16>(bits)); }

}  // namespace

TEST_CASE("bf16 dispatch: the kernel runs only where the CPU check, the device and head_dim allow it",
          "[bf16][dispatch]") {
  CpuDevice const native{}, portable{1, CpuKernels::kPortable};
  CHECK_FALSE(detail::use_bf16_dot(native, false, 128));  // the CPU says no: the portable path
  CHECK_FALSE(detail::use_bf16_dot(portable, true, 128));
  CHECK_FALSE(detail::use_bf16_dot(native, true, 120));  // not a multiple of 16 lanes
  CHECK_FALSE(detail::use_bf16_dot(native, true, 0));
  CHECK(detail::use_bf16_dot(native, true, 64) == bool(KVC_BF16_DOT_KERNEL));
  CHECK(detail::use_bf16_dot(native, true, 256) == bool(KVC_BF16_DOT_KERNEL));
  // Only bfloat16 caches with the covariance term take it.
  bool const has = detail::cpu_has_avx512_bf16();
  CHECK(detail::ea_bf16_kernel<bfloat16>(native, 128, true) == has);
  CHECK_FALSE(detail::ea_bf16_kernel<bfloat16>(native, 128, false));
  CHECK_FALSE(detail::ea_bf16_kernel<float>(native, 128, true));
  CHECK_FALSE(detail::ea_bf16_kernel<half>(native, 128, true));
  CHECK_FALSE(detail::ea_bf16_kernel<bfloat16>(portable, 128, true));
}

TEST_CASE("bf16 pairs: the packed layout holds Σ[2p + e, c] rounded to nearest even", "[bf16]") {
  std::int64_t const d = 6;
  std::vector<float> a(static_cast<std::size_t>(d * d));
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = 1.0f + static_cast<float>(i) / 1024.0f;  // 7-bit mantissas tie
  std::vector<std::uint16_t> packed(a.size());
  detail::pack_bf16_pairs(a.data(), d, packed.data());
  for (std::int64_t p = 0; p < d / 2; ++p)
    for (std::int64_t c = 0; c < d; ++c)
      for (std::int64_t e = 0; e < 2; ++e) {
        float const want = static_cast<float>(bfloat16(a[static_cast<std::size_t>((2 * p + e) * d + c)]));
        CHECK(bf16_value(packed[static_cast<std::size_t>((p * d + c) * 2 + e)]) == want);
      }
  CHECK(detail::bf16_bits(1.0f + 3.0f / 256.0f) == 0x3f82);  // halfway between 0x3f81 and 0x3f82: to even
}

#if KVC_BF16_DOT_KERNEL
TEST_CASE("bf16 kernel: kᵀΣk + μᵀk equals a double evaluation of the same bf16 operands", "[bf16]") {
  if (!detail::cpu_has_avx512_bf16()) {
    WARN("this CPU has no AVX512_BF16: the kernel is not run (the dispatch test covers the fallback)");
    return;
  }
  std::mt19937 gen(5);
  std::normal_distribution<float> normal;
  for (std::int64_t d : {16, 48, 64, 128, 256}) {
    for (std::int64_t n : {1, 3, 4, 37, 130}) {  // tiles of 4 keys and the one-key tail
      CAPTURE(d, n);
      std::vector<float> sigma(static_cast<std::size_t>(d * d)), mu(static_cast<std::size_t>(d));
      std::vector<std::uint16_t> keys(static_cast<std::size_t>(n * d)), packed(sigma.size());
      for (std::int64_t a = 0; a < d; ++a)
        for (std::int64_t b = 0; b <= a; ++b)
          sigma[static_cast<std::size_t>(a * d + b)] = sigma[static_cast<std::size_t>(b * d + a)] = normal(gen);
      for (float& x : mu) x = normal(gen);
      for (auto& k : keys) k = detail::bf16_bits(normal(gen));
      detail::pack_bf16_pairs(sigma.data(), d, packed.data());
      std::vector<float> out(static_cast<std::size_t>(n), -1.0f);
      detail::bf16_quadratic_forms(keys.data(), n, d, packed.data(), mu.data(), out.data());
      for (std::int64_t i = 0; i < n; ++i) {
        double want = 0.0, magnitude = 0.0;  // the form, and Σ|terms| (the scale of fp32 rounding)
        for (std::int64_t a = 0; a < d; ++a) {
          double const ka = bf16_value(keys[static_cast<std::size_t>(i * d + a)]);
          want += double(mu[static_cast<std::size_t>(a)]) * ka;
          magnitude += std::fabs(double(mu[static_cast<std::size_t>(a)]) * ka);
          for (std::int64_t b = 0; b < d; ++b) {
            double const s = static_cast<float>(bfloat16(sigma[static_cast<std::size_t>(a * d + b)]));
            double const t = ka * s * bf16_value(keys[static_cast<std::size_t>(i * d + b)]);
            want += t;
            magnitude += std::fabs(t);
          }
        }
        CHECK(std::fabs(double(out[static_cast<std::size_t>(i)]) - want) <= 1e-5 * magnitude);
      }
    }
  }
}

TEST_CASE("bf16 Gram kernel: Σ + XᵀX equals a double evaluation of the same bf16 tokens", "[bf16]") {
  if (!detail::cpu_has_avx512_bf16()) {
    WARN("this CPU has no AVX512_BF16: the kernel is not run (the dispatch test covers the fallback)");
    return;
  }
  std::mt19937 gen(6);
  std::normal_distribution<float> normal;
  for (std::int64_t d : {16, 48, 64, 128, 256}) {
    for (std::int64_t count : {1, 2, 7, 128}) {  // an odd count pads a zero token
      CAPTURE(d, count);
      std::vector<float> x(static_cast<std::size_t>(count * d)), sigma(static_cast<std::size_t>(d * d));
      for (float& v : x) v = normal(gen);
      for (float& v : sigma) v = normal(gen);  // accumulated onto, not overwritten
      std::vector<float> const before = sigma;
      std::vector<std::uint16_t> pairs(static_cast<std::size_t>((count + 1) / 2 * d * 2), 0xffff);
      detail::pack_token_pairs(x.data(), count, d, pairs.data());
      detail::bf16_gram_accumulate(pairs.data(), (count + 1) / 2, d, sigma.data());
      for (std::int64_t a = 0; a < d; ++a)
        for (std::int64_t b = 0; b < d; ++b) {
          double want = before[static_cast<std::size_t>(a * d + b)], magnitude = std::fabs(want);
          for (std::int64_t t = 0; t < count; ++t) {
            double const p = double(static_cast<float>(bfloat16(x[static_cast<std::size_t>(t * d + a)]))) *
                             static_cast<float>(bfloat16(x[static_cast<std::size_t>(t * d + b)]));
            want += p;
            magnitude += std::fabs(p);
          }
          CHECK(std::fabs(double(sigma[static_cast<std::size_t>(a * d + b)]) - want) <= 1e-5 * magnitude);
        }
    }
  }
}
#endif

TEST_CASE("bf16 caches: Expected Attention's native path agrees with the portable path within bf16 rounding",
          "[bf16][press][ea]") {
  struct Shape {
    std::int64_t batch, kv_heads, q_heads, d, n;
  };
  // head_dim 64/128/256; n not a multiple of the 16 lanes or of the 4-key tile; GQA 4:1 and 2:1, MHA.
  Shape const shape = GENERATE(Shape{1, 2, 8, 64, 67}, Shape{2, 2, 4, 128, 203}, Shape{1, 1, 1, 256, 45},
                               Shape{1, 4, 16, 128, 130});
  bool const covariance = GENERATE(true, false);
  CAPTURE(shape.d, shape.n, shape.q_heads, covariance);
  auto const rope = llama3_rope(static_cast<int>(shape.d));
  kvc_test::OwnedCache<bfloat16> cache(shape.batch, shape.kv_heads, shape.n, shape.d);
  cache.fill_random(11);
  auto const qv = kvc_test::random_vector(static_cast<std::size_t>(shape.batch * shape.q_heads * shape.n * shape.d), 12);
  std::vector<bfloat16> queries(qv.begin(), qv.end());
  // Float copies of the same bf16 values: the portable path must score them exactly as it scores the bf16 cache.
  kvc_test::OwnedCache<float> widened(shape.batch, shape.kv_heads, shape.n, shape.d);
  for (std::size_t i = 0; i < cache.k.size(); ++i) {
    widened.k[i] = static_cast<float>(cache.k[i]);
    widened.v[i] = static_cast<float>(cache.v[i]);
  }
  std::vector<float> queries_f(queries.begin(), queries.end());
  Observation<bfloat16> obs;
  obs.queries = make_tensor4(queries.data(), {shape.batch, shape.q_heads, shape.n, shape.d});
  obs.rope = &rope;
  Observation<float> obs_f;
  obs_f.queries = make_tensor4(queries_f.data(), {shape.batch, shape.q_heads, shape.n, shape.d});
  obs_f.rope = &rope;
  ExpectedAttentionPress press;
  press.use_covariance = covariance;

  auto const fast = score(CpuDevice{2}, press, obs, cache.view());
  auto const fallback = score(CpuDevice{2, CpuKernels::kPortable}, press, obs, cache.view());
  auto const fp32 = score(CpuDevice{2, CpuKernels::kPortable}, press, obs_f, widened.view());
  CHECK(fallback == fp32);  // the portable path is the fp32 path of the widened values, bit for bit
  double scale = 0.0;
  for (float x : fallback) scale = std::max(scale, double(std::fabs(x)));
  double worst = 0.0;
  bool differs = false;
  for (std::size_t i = 0; i < fast.size(); ++i) {
    // Σ̃ rounded to bf16 (2^-9 relative) moves each logit by ~2^-9 of its quadratic term, and the
    // softmax turns that into the same relative change of the score.
    double const rel = std::fabs(double(fast[i]) - fallback[i]) / std::max(double(std::fabs(fallback[i])), 1e-2 * scale);
    worst = std::max(worst, rel);
    differs = differs || fast[i] != fallback[i];
  }
  CAPTURE(worst);
  CHECK(worst <= 1e-2);
  // Where the kernel runs, its bf16 products must show: the two paths are not the same computation.
  // Where neither it nor the vectorised row kernels (query mean, logits, value norms: another order of
  // the same fp32 additions) run, the native path is the portable one.
  bool const kernel = detail::ea_bf16_kernel<bfloat16>(CpuDevice{2}, shape.d, covariance);
  bool const row_kernels = detail::row_isa(CpuDevice{2}, shape.d) != detail::RowIsa::kPortable;
  if (kernel) CHECK(differs);
  if (!kernel && !row_kernels) CHECK_FALSE(differs);
}

}  // namespace KVC_TEST_TU
