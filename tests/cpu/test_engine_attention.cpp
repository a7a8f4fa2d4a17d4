// The engine's attention over a cache whose kv heads hold different entries and different numbers of
// them (as after a per-head press), against a double-precision re-derivation; its linear layers, the same
// way; and the thread pool.
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <random>
#include <stdexcept>
#include <vector>

#include "kvc_engine/forward/attention.hpp"
#include "kvc_engine/forward/ops.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using Catch::Matchers::Contains;

namespace {

/// Worst absolute difference between causal_attention on `threads` threads and a double-precision
/// softmax(q·kᵀ/√d)·v, for a chunk of n tokens after old_lengths[g] entries of each kv head.
double attention_error(std::int64_t q_heads, std::int64_t d, std::int64_t n, std::vector<std::int32_t> const& old_lengths,
                       int threads) {
  std::int64_t const kv_heads = static_cast<std::int64_t>(old_lengths.size()), layer = 1;
  std::int32_t const longest = *std::max_element(old_lengths.begin(), old_lengths.end()) + static_cast<std::int32_t>(n);
  kvc_engine::KVCache cache(2, kv_heads, d, longest + 7);
  std::mt19937 gen(5);
  std::normal_distribution<float> normal;
  std::vector<std::int32_t> first_new(static_cast<std::size_t>(kv_heads));
  for (std::int64_t g = 0; g < kv_heads; ++g) {
    std::int32_t const len = old_lengths[static_cast<std::size_t>(g)] + static_cast<std::int32_t>(n);
    cache.length_ref(layer, g) = len;
    first_new[static_cast<std::size_t>(g)] = old_lengths[static_cast<std::size_t>(g)];
    for (std::int64_t i = 0; i < len * d; ++i) {
      cache.keys(layer, g)[i] = 2.0f * normal(gen);  // scores spread enough for the softmax to be far from uniform
      cache.values(layer, g)[i] = normal(gen);
    }
    // Garbage past the live length must never be read.
    for (std::int64_t i = len * d; i < cache.capacity() * d; ++i) cache.keys(layer, g)[i] = cache.values(layer, g)[i] = NAN;
  }
  std::vector<float> q(static_cast<std::size_t>(n * q_heads * d));
  for (float& x : q) x = normal(gen);

  kvc_engine::ThreadPool pool(threads);
  std::vector<std::vector<float>> scratch(static_cast<std::size_t>(pool.size()));
  std::vector<float> out(q.size(), 0.0f);
  kvc_engine::causal_attention(pool, cache, layer, q.data(), n, q_heads, first_new, out.data(), scratch);
  double worst = 0.0;
  for (std::int64_t t = 0; t < n; ++t)
    for (std::int64_t j = 0; j < q_heads; ++j) {
      std::int64_t const g = j / (q_heads / kv_heads), visible = old_lengths[static_cast<std::size_t>(g)] + t + 1;
      std::vector<double> w(static_cast<std::size_t>(visible));
      double m = -INFINITY, sum = 0.0;
      for (std::int64_t s = 0; s < visible; ++s) {
        double dot = 0.0;
        for (std::int64_t c = 0; c < d; ++c) dot += static_cast<double>(q[static_cast<std::size_t>((t * q_heads + j) * d + c)]) * cache.keys(layer, g)[s * d + c];
        w[static_cast<std::size_t>(s)] = dot / std::sqrt(static_cast<double>(d));
        m = std::max(m, w[static_cast<std::size_t>(s)]);
      }
      for (double& x : w) sum += (x = std::exp(x - m));
      for (std::int64_t c = 0; c < d; ++c) {
        double o = 0.0;
        for (std::int64_t s = 0; s < visible; ++s) o += w[static_cast<std::size_t>(s)] / sum * cache.values(layer, g)[s * d + c];
        worst = std::max(worst, std::abs(o - out[static_cast<std::size_t>((t * q_heads + j) * d + c)]));
      }
    }
  return worst;
}

#if KVC_ENGINE_AVX512
/// The attention tile's exp of 16 floats, through memory (a vector argument would change the ABI here).
KVC_ENGINE_TARGET_AVX512 void exp16_of(float const* x /*[16]*/, float* y /*[16]*/) {
  _mm512_storeu_ps(y, kvc_engine::detail::exp16(_mm512_loadu_ps(x)));
}
#endif

/// Distance in units in the last place between two finite non-negative floats.
std::int64_t ulps(float a, float b) {
  std::int32_t ia = 0, ib = 0;
  std::memcpy(&ia, &a, sizeof a);
  std::memcpy(&ib, &b, sizeof b);
  return std::abs(static_cast<std::int64_t>(ia) - ib);
}

}  // namespace

TEST_CASE("engine attention tile: its exp is within 2 ulp of std::exp for x <= 0, 0 at -inf", "[engine][attention]") {
#if KVC_ENGINE_AVX512
  if (!kvc_engine::detail::cpu_has_avx512f()) {
    WARN("this CPU has no AVX-512F: the engine's attention runs its Eigen path, whose exp is Eigen's");
    return;
  }
  std::vector<float> x;
  for (float v = -110.0f; v <= 0.0f; v += 0.0123f) x.push_back(v);  // the normal and subnormal results
  for (float v : {-INFINITY, -120.0f, -103.97f, -87.34f, -1e-7f, -0.0f, 0.0f}) x.push_back(v);
  while (x.size() % 16 != 0) x.push_back(-1.0f);
  std::int64_t worst = 0;
  for (std::size_t i = 0; i < x.size(); i += 16) {
    float y[16];
    exp16_of(x.data() + i, y);
    for (std::size_t j = 0; j < 16; ++j) {
      float const want = std::exp(x[i + j]);
      INFO("x = " << x[i + j] << ": " << y[j] << " against " << want);
      REQUIRE(std::isfinite(y[j]));
      worst = std::max(worst, ulps(y[j], want));
    }
  }
  CHECK(worst <= 2);
  float y[16];
  std::vector<float> const minus_inf(16, -INFINITY);
  exp16_of(minus_inf.data(), y);
  CHECK(y[0] == 0.0f);
#else
  WARN("not an x86 gcc/clang build: the engine's attention runs its Eigen path, whose exp is Eigen's");
#endif
}

TEST_CASE("engine attention: each query head reads its kv head's own live entries, causally", "[engine][attention]") {
  for (int threads : {1, 2, 3}) {
    INFO("threads " << threads);
    SECTION("a short chunk after rows of different lengths") { CHECK(attention_error(6, 8, 3, {37, 20}, threads) < 1e-5); }
    SECTION("a long chunk: several blocks of tokens, causal key tiles") {
      CHECK(attention_error(6, 16, 300, {0, 0}, threads) < 1e-5);
      CHECK(attention_error(6, 16, 200, {700, 300}, threads) < 1e-5);
    }
    SECTION("SmolLM2's head_dim and others: the register-blocked tile, tiles not whole vectors") {
      CHECK(attention_error(9, 64, 300, {0, 0, 0}, threads) < 1e-5);
      CHECK(attention_error(6, 80, 100, {517, 261}, threads) < 1e-5);
      CHECK(attention_error(4, 128, 70, {300, 33}, threads) < 1e-5);
      CHECK(attention_error(6, 32, 130, {45, 0}, threads) < 1e-5);
    }
    SECTION("one token over long rows: the keys split among tasks and merged") {
      CHECK(attention_error(6, 16, 1, {1500, 37}, threads) < 1e-5);
      CHECK(attention_error(4, 16, 2, {900, 2000}, threads) < 1e-5);
    }
  }
}

TEST_CASE("engine linear layers: x times w transposed plus bias, by Eigen or the register-blocked product", "[engine][attention]") {
  // Rows from 1 (decoding: Eigen's matrix-vector products) to past the register-blocked product's
  // threshold, with inputs not whole vectors and output blocks that are (or are not) whole vectors.
  for (int threads : {1, 2}) {
    for (std::int64_t n : {1, 63, 64, 77}) {
      for (std::int64_t out : {96, 160, 40}) {
        std::int64_t const in = 75;
        INFO("threads " << threads << ", rows " << n << ", out " << out);
        std::mt19937 gen(static_cast<unsigned>(n * 1000 + out));
        std::normal_distribution<float> normal;
        std::vector<float> x(static_cast<std::size_t>(n * in)), w(static_cast<std::size_t>(out * in)),
            bias(static_cast<std::size_t>(out)), y(static_cast<std::size_t>(n * out), NAN);
        for (float& v : x) v = normal(gen);
        for (float& v : w) v = normal(gen);
        for (float& v : bias) v = normal(gen);
        kvc_engine::ThreadPool pool(threads);
        kvc_engine::ops::linear(pool, x.data(), n, in, w.data(), bias.data(), out, y.data());
        double worst = 0.0;
        for (std::int64_t r = 0; r < n; ++r)
          for (std::int64_t o = 0; o < out; ++o) {
            double want = bias[static_cast<std::size_t>(o)];
            for (std::int64_t i = 0; i < in; ++i)
              want += static_cast<double>(x[static_cast<std::size_t>(r * in + i)]) * w[static_cast<std::size_t>(o * in + i)];
            worst = std::max(worst, std::abs(want - y[static_cast<std::size_t>(r * out + o)]));
          }
        CHECK(worst < 1e-4);  // sums of 75 products of unit normals: float rounding is ~1e-6 of each
      }
    }
  }
}

TEST_CASE("engine attention: a chunk the cache does not hold is an error", "[engine][attention]") {
  kvc_engine::KVCache cache(1, 2, 4, 16);
  kvc_engine::ThreadPool pool(1);
  std::vector<std::vector<float>> scratch(1);
  std::vector<float> q(2 * 4 * 4), out(q.size());
  cache.length_ref(0, 0) = 5;
  cache.length_ref(0, 1) = 1;
  REQUIRE_THROWS_WITH(kvc_engine::causal_attention(pool, cache, 0, q.data(), 2, 4, {3, 0}, out.data(), scratch),
                      Contains("kv head 1 of layer 0 holds 1 entries, not the chunk's 2 after slot 0"));
}

TEST_CASE("engine thread pool: every index once, exceptions reach the caller", "[engine][attention]") {
  kvc_engine::ThreadPool pool(4);
  for (std::int64_t n : {0, 1, 3, 4, 1001}) {
    std::vector<int> hits(static_cast<std::size_t>(n), 0), thread(static_cast<std::size_t>(n), -1);
    pool.parallel_for(n, [&](std::int64_t i, int t) {  // no Catch assertion off the main thread
      ++hits[static_cast<std::size_t>(i)];
      thread[static_cast<std::size_t>(i)] = t;
    });
    for (int h : hits) CHECK(h == 1);
    for (int t : thread) CHECK((t >= 0 && t < 4));
  }
  REQUIRE_THROWS_WITH(pool.parallel_for(100, [](std::int64_t i, int) {
    if (i == 77) throw std::runtime_error("index 77 failed");
  }), Contains("index 77 failed"));
  int after = 0;
  pool.parallel_for(1, [&](std::int64_t, int) { ++after; });
  CHECK(after == 1);
}

TEST_CASE("engine thread pool: tasks claimed one at a time run once each, exceptions reach the caller", "[engine][attention]") {
  kvc_engine::ThreadPool pool(3);
  for (std::int64_t n : {0, 1, 2, 3, 1001}) {
    std::vector<int> hits(static_cast<std::size_t>(n), 0), thread(static_cast<std::size_t>(n), -1);
    pool.parallel_tasks(n, [&](std::int64_t i, int t) {  // each index is claimed by one thread: no race on hits[i]
      ++hits[static_cast<std::size_t>(i)];
      thread[static_cast<std::size_t>(i)] = t;
    });
    for (int h : hits) CHECK(h == 1);
    for (int t : thread) CHECK((t >= 0 && t < 3));
  }
  REQUIRE_THROWS_WITH(pool.parallel_tasks(50, [](std::int64_t i, int) {
    if (i == 31) throw std::runtime_error("task 31 failed");
  }), Contains("task 31 failed"));
  std::atomic<int> after{0};  // the pool is still usable after an exception
  pool.parallel_tasks(2, [&](std::int64_t, int) { ++after; });
  CHECK(after == 2);
}

}  // namespace KVC_TEST_TU
