// Expected Attention against a direct double-precision evaluation of its definition, with the
// averaged rotation built densely from the per-position cos/sin (not from averaged_rotation).
#include <Eigen/Dense>
#include <catch2/catch.hpp>
#include <cmath>

#include "kvcompress/press/expected_attention.hpp"
#include "test_util.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using namespace kvcompress;

namespace {

RotaryEmbedding make_rope(int head_dim) {
  RopeConfig c;
  c.type = RopeType::kLlama3;
  c.theta = 500000.0;
  c.head_dim = head_dim;
  c.factor = 8.0;
  c.original_max_position_embeddings = 32;
  c.max_position_embeddings = 1024;
  return RotaryEmbedding(c);
}

// R̄ = mean_p diag(cos_p) + diag(sin_p)·P, dense.
Eigen::MatrixXd dense_average_rotation(RotaryEmbedding const& rope, std::int64_t start, std::int64_t count) {
  int const d = rope.head_dim();
  Eigen::MatrixXd r = Eigen::MatrixXd::Zero(d, d);
  std::vector<float> c(d), s(d);
  for (std::int64_t p = start; p < start + count; ++p) {
    rope.cos_sin(p, start + count, c.data(), s.data());
    for (int i = 0; i < d; ++i) {
      r(i, i) += c[i];
      // (P x)_i = -x_{i+d/2} for i < d/2, +x_{i-d/2} otherwise.
      if (i < d / 2) r(i, i + d / 2) -= s[i];
      else r(i, i - d / 2) += s[i];
    }
  }
  return r / static_cast<double>(count);
}

struct Reference {
  std::int64_t n_sink = 4, future = 512;
  bool cov = true, vnorm = true;
  double eps = 0.0;
};

// mu[b][j], sigma[b][j] given (pre-RoPE); returns scores [B, h, cap] (entries beyond length unused).
std::vector<double> reference_scores(kvc_test::OwnedCache<float> const& c, std::vector<Eigen::VectorXd> const& mu,
                                     std::vector<Eigen::MatrixXd> const& sigma, std::int64_t q_heads,
                                     Eigen::MatrixXd const& rbar, Reference const& p, bool shared_stats) {
  auto const& e = c.extents;
  std::int64_t const d = e.head_dim, g = q_heads / e.kv_heads;
  std::vector<double> out(static_cast<std::size_t>(e.batch * e.kv_heads * e.capacity), 0.0);
  double gmax = -1e300;
  for (std::int64_t b = 0; b < e.batch; ++b)
    for (std::int64_t h = 0; h < e.kv_heads; ++h) {
      std::int64_t const r = b * e.kv_heads + h, n = c.lengths[r];
      for (std::int64_t jj = 0; jj < g; ++jj) {
        std::int64_t const j = h * g + jj, si = (shared_stats ? 0 : b) * q_heads + j;
        Eigen::VectorXd const m = rbar * mu[si];
        Eigen::MatrixXd const s = rbar * sigma[si] * rbar.transpose();
        std::vector<double> z;
        for (std::int64_t i = p.n_sink; i < n; ++i) {
          Eigen::VectorXd k(d);
          for (std::int64_t x = 0; x < d; ++x) k[x] = c.k[((r * e.capacity) + i) * d + x];
          double zi = m.dot(k) / std::sqrt(double(d));
          if (p.cov) zi += k.dot(s * k) / (2.0 * double(d));
          z.push_back(zi);
        }
        double const zmax = *std::max_element(z.begin(), z.end());
        double sum = 0;
        for (double& x : z) sum += (x = std::exp(x - zmax));
        for (std::size_t i = 0; i < z.size(); ++i) out[r * e.capacity + p.n_sink + i] += z[i] / sum / double(g);
      }
      for (std::int64_t i = p.n_sink; i < n; ++i) {
        if (p.vnorm) {
          double vv = 0;
          for (std::int64_t x = 0; x < d; ++x) vv += std::pow(double(c.v[((r * e.capacity) + i) * d + x]), 2);
          out[r * e.capacity + i] = (out[r * e.capacity + i] + p.eps) * std::sqrt(vv);
        }
        gmax = std::max(gmax, out[r * e.capacity + i]);
      }
    }
  for (std::int64_t r = 0; r < e.batch * e.kv_heads; ++r)
    for (std::int64_t i = 0; i < p.n_sink; ++i) out[r * e.capacity + i] = gmax + 1.0;
  return out;
}

void compare_scores(std::vector<float> const& got, std::vector<double> const& want,
                    std::vector<std::int32_t> const& lengths, std::int64_t cap) {
  for (std::size_t r = 0; r < lengths.size(); ++r)
    for (std::int32_t i = 0; i < lengths[r]; ++i) {
      CAPTURE(r, i);
      REQUIRE(got[r * cap + i] == Approx(want[r * cap + i]).epsilon(1e-4).margin(1e-7));
    }
}

}  // namespace

TEST_CASE("ExpectedAttention matches its definition (per-head lengths, GQA 4:1)", "[press][ea]") {
  std::int64_t const batch = 2, heads = 2, q_heads = 8, cap = 41, d = 16, q_len = 41;
  auto const rope = make_rope(static_cast<int>(d));
  kvc_test::OwnedCache<float> c(batch, heads, cap, d);
  c.fill_random(3);
  c.lengths = {41, 37, 41, 30};
  auto const qv = kvc_test::random_vector(static_cast<std::size_t>(batch * q_heads * q_len * d), 11, 2.0f);

  auto [use_cov, use_vnorm, eps, future] = GENERATE(std::make_tuple(true, true, 0.0f, std::int64_t{512}),
                                                    std::make_tuple(false, false, 0.01f, std::int64_t{64}),
                                                    std::make_tuple(true, true, 0.01f, std::int64_t{7}));
  ExpectedAttentionPress press;
  press.use_covariance = use_cov;
  press.use_vnorm = use_vnorm;
  press.epsilon = eps;
  press.n_future_positions = future;

  Observation<float> obs;
  obs.queries = make_tensor4(qv.data(), {batch, q_heads, q_len, d});
  obs.rope = &rope;
  obs.position = 5;  // a chunk that starts at 5: the future window starts at 5 + 41

  std::vector<Eigen::VectorXd> mu;
  std::vector<Eigen::MatrixXd> sigma;
  for (std::int64_t b = 0; b < batch; ++b)
    for (std::int64_t j = 0; j < q_heads; ++j) {
      Eigen::MatrixXd x(q_len - 4, d);
      for (std::int64_t t = 4; t < q_len; ++t)
        for (std::int64_t e = 0; e < d; ++e) x(t - 4, e) = qv[((b * q_heads + j) * q_len + t) * d + e];
      Eigen::VectorXd m = x.colwise().mean().transpose();
      Eigen::MatrixXd xc = x.rowwise() - m.transpose();
      mu.push_back(m);
      sigma.push_back(xc.transpose() * xc / double(q_len - 4));
    }
  Reference ref;
  ref.cov = use_cov;
  ref.vnorm = use_vnorm;
  ref.eps = eps;
  auto const want = reference_scores(c, mu, sigma, q_heads, dense_average_rotation(rope, 5 + q_len, future), ref, false);
  for (int threads : {1, 2}) {
    auto const got = score(CpuDevice{threads}, press, obs, c.view());
    compare_scores(got, want, c.lengths, cap);
  }
}

TEST_CASE("ExpectedAttentionStats uses the given statistics and only the chunk length", "[press][ea]") {
  std::int64_t const batch = 2, heads = 2, q_heads = 4, cap = 29, d = 8;
  auto const rope = make_rope(static_cast<int>(d));
  kvc_test::OwnedCache<float> c(batch, heads, cap, d);
  c.fill_random(5);
  auto const mean = kvc_test::random_vector(static_cast<std::size_t>(q_heads * d), 1);
  std::vector<float> cov(static_cast<std::size_t>(q_heads * d * d));
  std::vector<Eigen::VectorXd> mu;
  std::vector<Eigen::MatrixXd> sigma;
  for (std::int64_t j = 0; j < q_heads; ++j) {
    Eigen::MatrixXd a = Eigen::MatrixXd::Random(d, d);
    Eigen::MatrixXd s = a * a.transpose();
    for (std::int64_t x = 0; x < d * d; ++x) cov[j * d * d + x] = static_cast<float>(s(x / d, x % d));
    Eigen::VectorXd m(d);
    for (std::int64_t x = 0; x < d; ++x) m[x] = mean[j * d + x];
    mu.push_back(m);
    // The reference uses exactly the float values handed to the press.
    Eigen::MatrixXd sf(d, d);
    for (std::int64_t x = 0; x < d * d; ++x) sf(x / d, x % d) = cov[j * d * d + x];
    sigma.push_back(sf);
  }
  ExpectedAttentionStatsPress press;
  press.n_future_positions = 100;
  Observation<float> obs;
  obs.stats = {mean.data(), cov.data(), q_heads};
  obs.rope = &rope;
  obs.chunk_length = cap;
  Reference ref;
  ref.future = 100;
  auto const want = reference_scores(c, mu, sigma, q_heads, dense_average_rotation(rope, cap, 100), ref, true);
  compare_scores(score(cpu, press, obs, c.view()), want, c.lengths, cap);
}

TEST_CASE("ExpectedAttention compress keeps the top scores and the sinks, in position order", "[press][ea]") {
  std::int64_t const heads = 2, q_heads = 8, cap = 57, d = 16;
  auto const rope = make_rope(static_cast<int>(d));
  auto const qv = kvc_test::random_vector(static_cast<std::size_t>(q_heads * cap * d), 2);
  for (double ratio : {0.1, 0.5, 0.9}) {
    kvc_test::OwnedCache<float> c(1, heads, cap, d);
    c.fill_random(9);
    auto const original = c;
    Observation<float> obs;
    obs.queries = make_tensor4(qv.data(), {1, q_heads, cap, d});
    obs.rope = &rope;
    ExpectedAttentionPress press;
    press.compression_ratio = ratio;
    auto const scores = score(cpu, press, obs, c.view());
    compress(cpu, press, obs, c.view());
    std::int64_t const kept = kept_count(cap, ratio);
    for (std::int64_t h = 0; h < heads; ++h) {
      REQUIRE(c.lengths[h] == kept);
      // Which original slots survived: match rows of K.
      std::vector<int> slots;
      for (std::int64_t j = 0; j < kept; ++j)
        for (std::int64_t s = 0; s < cap; ++s)
          if (std::equal(&c.k[(h * cap + j) * d], &c.k[(h * cap + j) * d] + d, &original.k[(h * cap + s) * d])) {
            slots.push_back(static_cast<int>(s));
            break;
          }
      REQUIRE(static_cast<std::int64_t>(slots.size()) == kept);
      REQUIRE(std::is_sorted(slots.begin(), slots.end()));
      for (int s = 0; s < 4; ++s) CHECK(std::find(slots.begin(), slots.end(), s) != slots.end());
      float min_kept = INFINITY, max_dropped = -INFINITY;
      for (std::int64_t s = 0; s < cap; ++s) {
        bool const k = std::find(slots.begin(), slots.end(), s) != slots.end();
        float const v = scores[h * cap + s];
        (k ? min_kept : max_dropped) = k ? std::min(min_kept, v) : std::max(max_dropped, v);
      }
      CHECK(min_kept >= max_dropped);
    }
  }
}

TEST_CASE("ExpectedAttention on a token-major view with interleaved K/V equals the contiguous view",
          "[press][ea][layout]") {
  std::int64_t const heads = 2, q_heads = 4, cap = 33, d = 8;
  auto const rope = make_rope(static_cast<int>(d));
  kvc_test::OwnedCache<float> dense(1, heads, cap, d);
  dense.fill_random(4);
  // One buffer, K and V interleaved element by element, token-major: [seq, head, dim, {k, v}].
  CacheExtents const e{1, heads, cap, d};
  auto const layout = make_strided_layout(e, {Axis::kBatch, Axis::kSeq, Axis::kHead, Axis::kDim}, 2);
  std::vector<float> buf(static_cast<std::size_t>(2 * heads * cap * d));
  for (std::int64_t h = 0; h < heads; ++h)
    for (std::int64_t s = 0; s < cap; ++s)
      for (std::int64_t x = 0; x < d; ++x) {
        buf[layout.offset(0, h, s, x)] = dense.k[(h * cap + s) * d + x];
        buf[layout.offset(0, h, s, x) + 1] = dense.v[(h * cap + s) * d + x];
      }
  std::vector<std::int32_t> lengths(heads, static_cast<std::int32_t>(cap));
  auto const strided = make_cache_view(buf.data(), buf.data() + 1, e, layout, lengths.data());
  auto const qv = kvc_test::random_vector(static_cast<std::size_t>(q_heads * cap * d), 8);
  Observation<float> obs;
  obs.queries = make_tensor4(qv.data(), {1, q_heads, cap, d});
  obs.rope = &rope;
  ExpectedAttentionPress press;
  press.compression_ratio = 0.5;
  compress(cpu, press, obs, dense.view());
  compress(cpu, press, obs, strided);
  for (std::int64_t h = 0; h < heads; ++h) {
    REQUIRE(lengths[h] == dense.lengths[h]);
    for (std::int64_t s = 0; s < lengths[h]; ++s)
      for (std::int64_t x = 0; x < d; ++x) {
        REQUIRE(strided.key(0, h, s, x) == dense.k[(h * cap + s) * d + x]);
        REQUIRE(strided.value(0, h, s, x) == dense.v[(h * cap + s) * d + x]);
      }
  }
}

TEMPLATE_TEST_CASE("ExpectedAttention in 16-bit storage agrees with float", "[press][ea][dtype]", half, bfloat16) {
  std::int64_t const heads = 2, q_heads = 4, cap = 40, d = 16;
  auto const rope = make_rope(static_cast<int>(d));
  kvc_test::OwnedCache<float> f(1, heads, cap, d);
  f.fill_random(6);
  kvc_test::OwnedCache<TestType> lo(1, heads, cap, d);
  for (std::size_t i = 0; i < f.k.size(); ++i) {
    lo.k[i] = static_cast<TestType>(f.k[i]);
    lo.v[i] = static_cast<TestType>(f.v[i]);
    f.k[i] = static_cast<float>(lo.k[i]);  // same rounded inputs on both sides
    f.v[i] = static_cast<float>(lo.v[i]);
  }
  auto const qv = kvc_test::random_vector(static_cast<std::size_t>(q_heads * cap * d), 8);
  std::vector<TestType> ql(qv.size());
  std::vector<float> qf(qv.size());
  for (std::size_t i = 0; i < qv.size(); ++i) qf[i] = static_cast<float>(ql[i] = static_cast<TestType>(qv[i]));
  Observation<float> of;
  of.queries = make_tensor4(qf.data(), {1, q_heads, cap, d});
  of.rope = &rope;
  Observation<TestType> ol;
  ol.queries = make_tensor4(ql.data(), {1, q_heads, cap, d});
  ol.rope = &rope;
  ExpectedAttentionPress const press;
  // The portable path: fp32 arithmetic on both sides (the AVX512_BF16 path of bf16 caches rounds Σ̃ to
  // bf16; test_bf16_dot.cpp holds it to the portable path).
  CpuDevice const portable{0, CpuKernels::kPortable};
  auto const sf = score(portable, press, of, f.view());
  auto const sl = score(portable, press, ol, lo.view());
  for (std::size_t i = 0; i < sf.size(); ++i) REQUIRE(sl[i] == Approx(sf[i]).epsilon(1e-5));
}

TEST_CASE("ExpectedAttention rejects bad input with the argument and the value", "[press][ea][errors]") {
  std::int64_t const heads = 2, q_heads = 8, cap = 12, d = 8;
  auto const rope = make_rope(static_cast<int>(d));
  kvc_test::OwnedCache<float> c(1, heads, cap, d);
  c.fill_random(1);
  auto const qv = kvc_test::random_vector(static_cast<std::size_t>(q_heads * cap * d), 2);
  Observation<float> obs;
  obs.queries = make_tensor4(qv.data(), {1, q_heads, cap, d});
  obs.rope = &rope;
  ExpectedAttentionPress press;
  press.compression_ratio = 0.5;

  SECTION("ratio outside [0, 1)") {
    press.compression_ratio = 1.0;
    REQUIRE_THROWS_WITH(compress(cpu, press, obs, c.view()), Catch::Contains("compression_ratio") && Catch::Contains("1"));
    press.compression_ratio = -0.1;
    REQUIRE_THROWS_WITH(compress(cpu, press, obs, c.view()), Catch::Contains("compression_ratio") && Catch::Contains("-0.1"));
  }
  SECTION("n <= n_sink") {
    c.lengths[1] = 4;
    REQUIRE_THROWS_WITH(compress(cpu, press, obs, c.view()), Catch::Contains("n = 4") && Catch::Contains("n_sink = 4"));
  }
  SECTION("queries missing") {
    obs.queries = {};
    REQUIRE_THROWS_WITH(compress(cpu, press, obs, c.view()), Catch::Contains("observation.queries"));
  }
  SECTION("rope missing") {
    obs.rope = nullptr;
    REQUIRE_THROWS_WITH(compress(cpu, press, obs, c.view()), Catch::Contains("observation.rope"));
  }
  SECTION("mismatched head_dim") {
    obs.queries = make_tensor4(qv.data(), {1, q_heads, cap / 2, 2 * d});
    REQUIRE_THROWS_WITH(compress(cpu, press, obs, c.view()), Catch::Contains("head_dim = 16"));
  }
  SECTION("query heads not a multiple of kv heads") {
    obs.queries = make_tensor4(qv.data(), {1, 3, cap, d});
    REQUIRE_THROWS_WITH(compress(cpu, press, obs, c.view()), Catch::Contains("query heads = 3"));
  }
  SECTION("NaN in keys") {
    c.k[37] = NAN;
    REQUIRE_THROWS_WITH(compress(cpu, press, obs, c.view()), Catch::Contains("keys[0, 0, 4, 5]") && Catch::Contains("nan"));
  }
  SECTION("Inf in queries") {
    std::vector<float> bad = qv;
    bad[5 * d + 3] = INFINITY;
    obs.queries = make_tensor4(bad.data(), {1, q_heads, cap, d});
    REQUIRE_THROWS_WITH(compress(cpu, press, obs, c.view()), Catch::Contains("observation.queries[0, 0, 5, 3]") && Catch::Contains("inf"));
  }
  SECTION("Inf in a sink query, which the statistics drop, is not read") {
    std::vector<float> bad = qv;
    bad[3] = INFINITY;
    auto const expected = score(cpu, press, obs, c.view());
    obs.queries = make_tensor4(bad.data(), {1, q_heads, cap, d});
    REQUIRE(score(cpu, press, obs, c.view()) == expected);
  }
  SECTION("stats missing for the stats press") {
    ExpectedAttentionStatsPress sp;
    sp.compression_ratio = 0.5;
    REQUIRE_THROWS_WITH(compress(cpu, sp, obs, c.view()), Catch::Contains("observation.stats.mean"));
  }
  SECTION("workspace too small") {
    std::vector<std::byte> small(64);
    REQUIRE_THROWS_WITH(compress(cpu, press, obs, c.view(), Workspace(small.data(), small.size())),
                        Catch::Contains("workspace too small"));
  }
}

}  // namespace KVC_TEST_TU
