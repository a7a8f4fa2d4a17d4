// SnapKV, PyramidKV, TOVA and ObservedAttention against direct double-precision evaluations of their
// definitions, PyramidKV's budget arithmetic as kvpress tests it, and their input validation.
#include <catch2/catch.hpp>

#include <cmath>

#include "kvcompress/kvcompress.hpp"
#include "test_util.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using namespace kvcompress;

namespace {

constexpr std::int64_t kB = 2, kH = 2, kQ = 8, kN = 53, kD = 16, kW = 8;

// Window-mean attention probabilities, double: out[b][j][i] for i < n − w.
std::vector<double> window_probs(kvc_test::OwnedCache<float> const& c, std::vector<float> const& wq, std::int64_t w) {
  std::int64_t const g = kQ / kH;
  std::vector<double> out(static_cast<std::size_t>(kB * kQ * kN), 0.0);
  for (std::int64_t b = 0; b < kB; ++b)
    for (std::int64_t j = 0; j < kQ; ++j) {
      std::int64_t const h = j / g, r = b * kH + h;
      for (std::int64_t row = 0; row < w; ++row) {
        std::vector<double> z;
        for (std::int64_t i = 0; i <= kN - w + row; ++i) {
          double dot = 0;
          for (std::int64_t x = 0; x < kD; ++x)
            dot += double(wq[((b * kQ + j) * w + row) * kD + x]) * c.k[(r * kN + i) * kD + x];
          z.push_back(dot / std::sqrt(double(kD)));
        }
        double const zm = *std::max_element(z.begin(), z.end());
        double sum = 0;
        for (double& x : z) sum += (x = std::exp(x - zm));
        for (std::int64_t i = 0; i < kN - w; ++i) out[(b * kQ + j) * kN + i] += z[i] / sum / double(w);
      }
    }
  return out;
}

Observation<float> window_obs(std::vector<float> const& wq, std::int64_t w) {
  Observation<float> obs;
  obs.window_queries = make_tensor4(wq.data(), {kB, kQ, w, kD});
  return obs;
}

}  // namespace

TEST_CASE("SnapKV matches its definition, from window queries and from the equivalent attention", "[press][window]") {
  kvc_test::OwnedCache<float> c(kB, kH, kN, kD);
  c.fill_random(1);
  auto const wq = kvc_test::random_vector(static_cast<std::size_t>(kB * kQ * kW * kD), 2, 2.0f);
  auto const p = window_probs(c, wq, kW);
  std::int64_t const g = kQ / kH, m = kN - kW;
  std::vector<double> want(static_cast<std::size_t>(kB * kH * kN), 0.0);
  double gmax = -1e300;
  for (std::int64_t b = 0; b < kB; ++b)
    for (std::int64_t h = 0; h < kH; ++h) {
      for (std::int64_t jj = 0; jj < g; ++jj)
        for (std::int64_t i = 0; i < m; ++i) {
          double acc = 0;
          for (std::int64_t t = i - 2; t <= i + 2; ++t)
            if (t >= 0 && t < m) acc += p[(b * kQ + h * g + jj) * kN + t];
          want[(b * kH + h) * kN + i] += acc / 5.0 / double(g);
        }
      for (std::int64_t i = 0; i < m; ++i) gmax = std::max(gmax, want[(b * kH + h) * kN + i]);
    }
  for (std::int64_t r = 0; r < kB * kH; ++r)
    for (std::int64_t i = m; i < kN; ++i) want[r * kN + i] = gmax + 1.0;

  SnapKVPress const press{0.5, kW, 5};
  auto const got = score(CpuDevice{2}, press, window_obs(wq, kW), c.view());
  for (std::size_t i = 0; i < got.size(); ++i) REQUIRE(got[i] == Approx(want[i]).epsilon(1e-5).margin(1e-8));

  // The same probabilities handed over as an attention tensor [B, Q, q_len, n]: rows −w: are used.
  std::int64_t const q_len = 10;
  std::vector<float> att(static_cast<std::size_t>(kB * kQ * q_len * kN), 0.0f);
  for (std::int64_t bj = 0; bj < kB * kQ; ++bj)
    for (std::int64_t i = 0; i < m; ++i)
      for (std::int64_t row = q_len - kW; row < q_len; ++row)
        att[(bj * q_len + row) * kN + i] = static_cast<float>(p[bj * kN + i]);
  Observation<float> obs;
  obs.attention = make_tensor4(att.data(), {kB, kQ, q_len, kN});
  auto const from_att = score(cpu, press, obs, c.view());
  for (std::size_t i = 0; i < got.size(); ++i) REQUIRE(from_att[i] == Approx(got[i]).epsilon(1e-5).margin(1e-8));
}

TEST_CASE("SnapKV pooling counts the zero padding: a constant row pools to .6 .8 1 … 1 .8 .6", "[press][window]") {
  std::vector<float> ones(20, 1.0f), out(20, 0.0f);
  detail::add_avg_pool(ones.data(), 20, 5, 1.0f, out.data());
  CHECK(out[0] == Approx(0.6));
  CHECK(out[1] == Approx(0.8));
  CHECK(out[2] == Approx(1.0));
  CHECK(out[18] == Approx(0.8));
  CHECK(out[19] == Approx(0.6));
}

TEST_CASE("TOVA averages the last token's attention over all heads and keeps the same set in every head",
          "[press][window]") {
  kvc_test::OwnedCache<float> c(kB, kH, kN, kD);
  c.fill_random(3);
  auto const wq = kvc_test::random_vector(static_cast<std::size_t>(kB * kQ * kD), 4, 2.0f);
  auto const p = window_probs(c, wq, 1);
  TOVAPress const press{0.5};
  auto const got = score(cpu, press, window_obs(wq, 1), c.view());
  for (std::int64_t b = 0; b < kB; ++b)
    for (std::int64_t i = 0; i < kN - 1; ++i) {
      double want = 0;
      for (std::int64_t j = 0; j < kQ; ++j) want += p[(b * kQ + j) * kN + i] / double(kQ);
      for (std::int64_t h = 0; h < kH; ++h) REQUIRE(got[(b * kH + h) * kN + i] == Approx(want).epsilon(1e-5));
    }
  compress(cpu, press, window_obs(wq, 1), c.view());
  for (std::int64_t b = 0; b < kB; ++b)
    for (std::int64_t h = 0; h < kH; ++h) CHECK(c.lengths[b * kH + h] == kept_count(kN, 0.5));
}

TEST_CASE("ObservedAttention averages each key's attention over the queries that see it", "[press][window]") {
  std::int64_t const n = 9;
  kvc_test::OwnedCache<float> c(1, 1, n, 4);
  c.fill_random(5);
  std::vector<float> att(static_cast<std::size_t>(2 * n * n), 0.0f);
  auto const rnd = kvc_test::random_vector(att.size(), 6);
  for (std::int64_t j = 0; j < 2; ++j)
    for (std::int64_t q = 0; q < n; ++q)
      for (std::int64_t i = 0; i <= q; ++i) att[(j * n + q) * n + i] = std::fabs(rnd[(j * n + q) * n + i]);
  Observation<float> obs;
  obs.attention = make_tensor4(att.data(), {1, 2, n, n});
  auto const got = score(cpu, ObservedAttentionPress{0.3}, obs, c.view());
  for (std::int64_t i = 0; i < n; ++i) {
    double want = 0;
    for (std::int64_t j = 0; j < 2; ++j) {
      double s = 0;
      for (std::int64_t q = 0; q < n; ++q) s += att[(j * n + q) * n + i];
      want += s / double(n - i) / 2.0;
    }
    CHECK(got[i] == Approx(want).epsilon(1e-5));
  }
}

TEST_CASE("PyramidKV's mean budget over the layers is n(1 - r), as kvpress tests it", "[press][window]") {
  for (int layers : {32, 64, 128})
    for (double r : {0.1, 0.25, 0.3, 0.5, 0.6, 0.75, 0.8})
      for (std::int64_t n : {1024, 2787, 4096, 6591, 8192}) {
        PyramidKVPress const press{r, 64, 5, 20.0};
        Observation<float> obs;
        obs.num_layers = layers;
        double total = 0;
        for (int l = 0; l < layers; ++l) {
          obs.layer_idx = l;
          total += double(press.kept_count(n, obs));
        }
        CAPTURE(layers, r, n);
        CHECK(total / layers == Approx(double(n) * (1 - r)).epsilon(1e-3));
      }
}

TEST_CASE("window presses keep the window and the top scores", "[press][window]") {
  auto const wq = kvc_test::random_vector(static_cast<std::size_t>(kB * kQ * kW * kD), 7);
  for (double r : {0.1, 0.5, 0.9}) {
    kvc_test::OwnedCache<float> c(kB, kH, kN, kD);
    c.fill_random(8);
    c.lengths = {53, 47, 53, 40};
    auto const original = c;
    SnapKVPress const press{r, kW, 5};
    auto const s = score(cpu, press, window_obs(wq, kW), c.view());
    compress(cpu, press, window_obs(wq, kW), c.view());
    for (std::int64_t row = 0; row < kB * kH; ++row) {
      std::int32_t const n = original.lengths[row];
      REQUIRE(c.lengths[row] == kept_count(n, r));
      std::vector<int> slots;
      for (std::int64_t j = 0; j < c.lengths[row]; ++j)
        for (int src = 0; src < n; ++src)
          if (std::equal(&c.k[(row * kN + j) * kD], &c.k[(row * kN + j) * kD] + kD, &original.k[(row * kN + src) * kD]))
            slots.push_back(src);
      REQUIRE(slots.size() == static_cast<std::size_t>(c.lengths[row]));
      if (c.lengths[row] >= kW)
        for (int i = n - static_cast<int>(kW); i < n; ++i) CHECK(std::count(slots.begin(), slots.end(), i) == 1);
      float lo = INFINITY, hi = -INFINITY;
      for (int i = 0; i < n; ++i)
        (std::count(slots.begin(), slots.end(), i) ? lo : hi) =
            std::count(slots.begin(), slots.end(), i) ? std::min(lo, s[row * kN + i]) : std::max(hi, s[row * kN + i]);
      CHECK(lo >= hi);
    }
  }
}

TEST_CASE("window presses reject bad input with the argument and the value", "[press][window][errors]") {
  kvc_test::OwnedCache<float> c(kB, kH, kN, kD);
  c.fill_random(9);
  auto const wq = kvc_test::random_vector(static_cast<std::size_t>(kB * kQ * kW * kD), 10);
  SECTION("neither window queries nor attention") {
    REQUIRE_THROWS_WITH(compress(cpu, SnapKVPress{0.5, kW, 5}, Observation<float>{}, c.view()),
                        Catch::Contains("observation.window_queries") && Catch::Contains("observation.attention"));
  }
  SECTION("even kernel_size") {
    REQUIRE_THROWS_WITH(compress(cpu, SnapKVPress{0.5, kW, 4}, window_obs(wq, kW), c.view()),
                        Catch::Contains("kernel_size") && Catch::Contains("4"));
  }
  SECTION("n <= window_size") {
    c.lengths[2] = static_cast<std::int32_t>(kW);
    REQUIRE_THROWS_WITH(compress(cpu, SnapKVPress{0.5, kW, 5}, window_obs(wq, kW), c.view()),
                        Catch::Contains("window_size = 8") && Catch::Contains("n = 8"));
  }
  SECTION("window queries of another head_dim") {
    Observation<float> obs;
    obs.window_queries = make_tensor4(wq.data(), {kB, kQ, kW / 2, 2 * kD});
    REQUIRE_THROWS_WITH(compress(cpu, SnapKVPress{0.5, kW / 2, 5}, obs, c.view()), Catch::Contains("head_dim = 32"));
  }
  SECTION("query heads not a multiple of kv heads") {
    Observation<float> obs;
    obs.window_queries = make_tensor4(wq.data(), {kB, 3, kW, kD});
    REQUIRE_THROWS_WITH(compress(cpu, SnapKVPress{0.5, kW, 5}, obs, c.view()), Catch::Contains("heads = 3"));
  }
  SECTION("batch mismatch") {
    Observation<float> obs;
    obs.window_queries = make_tensor4(wq.data(), {1, kQ, kW, kD});
    REQUIRE_THROWS_WITH(compress(cpu, SnapKVPress{0.5, kW, 5}, obs, c.view()), Catch::Contains("batch = 1"));
  }
  SECTION("TOVA with unequal head lengths") {
    c.lengths[1] = 40;
    Observation<float> obs;
    obs.window_queries = make_tensor4(wq.data(), {kB, kQ, 1, kD});
    REQUIRE_THROWS_WITH(compress(cpu, TOVAPress{0.5}, obs, c.view()), Catch::Contains("same length"));
  }
  SECTION("ObservedAttention without the full attention") {
    REQUIRE_THROWS_WITH(compress(cpu, ObservedAttentionPress{0.5}, window_obs(wq, kW), c.view()),
                        Catch::Contains("observation.attention"));
  }
  SECTION("PyramidKV beta below 1") {
    REQUIRE_THROWS_WITH(compress(cpu, PyramidKVPress{0.5, kW, 5, 0.5}, window_obs(wq, kW), c.view()),
                        Catch::Contains("beta") && Catch::Contains("0.5"));
  }
}

}  // namespace KVC_TEST_TU
