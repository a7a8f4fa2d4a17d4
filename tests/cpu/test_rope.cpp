// RoPE identities that hold whatever HF does: inverse pairs, composition, the averaged rotation's
// structure, and the validation of bad configurations.
#include <Eigen/Dense>
#include <catch2/catch.hpp>

#include "kvcompress/rope/rotary_embedding.hpp"
#include "test_util.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using namespace kvcompress;

namespace {

RopeConfig config(RopeType t, int d) {
  RopeConfig c;
  c.type = t;
  c.head_dim = d;
  c.factor = t == RopeType::kDefault ? 1.0 : 4.0;
  c.original_max_position_embeddings = 64;
  c.max_position_embeddings = 256;
  return c;
}

Eigen::MatrixXd dense_rbar(std::vector<float> const& c, std::vector<float> const& s) {
  int const d = static_cast<int>(c.size());
  Eigen::MatrixXd r = Eigen::MatrixXd::Zero(d, d);
  for (int i = 0; i < d; ++i) {
    r(i, i) = c[i];
    if (i < d / 2) r(i, i + d / 2) = -s[i];
    else r(i, i - d / 2) = s[i];
  }
  return r;
}

}  // namespace

TEST_CASE("apply then unapply is the identity for every variant", "[rope]") {
  for (auto t : {RopeType::kDefault, RopeType::kLinear, RopeType::kDynamic, RopeType::kLlama3, RopeType::kYarn}) {
    RotaryEmbedding const rope(config(t, 32));
    auto x = kvc_test::random_vector(32, 1);
    auto const orig = x;
    rope.apply(x.data(), 300, 301);
    CHECK(x != orig);
    rope.unapply(x.data(), 300, 301);
    for (int i = 0; i < 32; ++i) CHECK(x[i] == Approx(orig[i]).margin(1e-5));
  }
}

TEMPLATE_TEST_CASE("apply then unapply in 16-bit storage", "[rope][dtype]", half, bfloat16) {
  RotaryEmbedding const rope(config(RopeType::kDefault, 16));
  auto const f = kvc_test::random_vector(16, 2);
  std::vector<TestType> x(f.begin(), f.end());
  rope.apply(x.data(), 17, 18);
  rope.unapply(x.data(), 17, 18);
  for (int i = 0; i < 16; ++i) CHECK(float(x[i]) == Approx(f[i]).margin(0.05));
}

TEST_CASE("re-rotation composes: R_delta R_p = R_(p+delta)", "[rope]") {
  RotaryEmbedding const rope(config(RopeType::kLlama3, 64));
  auto a = kvc_test::random_vector(64, 3);
  auto b = a;
  rope.apply(a.data(), 100, 101);
  rope.rerotate(a.data(), -37);
  rope.apply(b.data(), 63, 64);
  for (int i = 0; i < 64; ++i) CHECK(a[i] == Approx(b[i]).margin(1e-5));
}

TEST_CASE("averaged rotation equals the mean of per-position rotations, and its fast products match dense ones",
          "[rope]") {
  int const d = 16;
  RotaryEmbedding const rope(config(RopeType::kYarn, d));
  std::vector<float> c(d), s(d), ci(d), si(d);
  rope.averaged_rotation(40, 25, c.data(), s.data());
  Eigen::MatrixXd mean = Eigen::MatrixXd::Zero(d, d);
  for (int p = 40; p < 65; ++p) {
    rope.cos_sin(p, 65, ci.data(), si.data());
    mean += dense_rbar(ci, si) / 25.0;
  }
  Eigen::MatrixXd const rbar = dense_rbar(c, s);
  CHECK((rbar - mean).cwiseAbs().maxCoeff() < 1e-6);

  auto const mu = kvc_test::random_vector(d, 4);
  std::vector<float> out(d);
  apply_averaged_rotation(c.data(), s.data(), d, mu.data(), out.data());
  Eigen::VectorXd const want = rbar * Eigen::Map<Eigen::VectorXf const>(mu.data(), d).cast<double>();
  for (int i = 0; i < d; ++i) CHECK(out[i] == Approx(want[i]).margin(1e-6));

  auto const a = kvc_test::random_vector(d * d, 5);
  Eigen::MatrixXf const am = Eigen::Map<Eigen::Matrix<float, -1, -1, Eigen::RowMajor> const>(a.data(), d, d);
  Eigen::Matrix<float, -1, -1, Eigen::RowMajor> const sigma = am * am.transpose();
  std::vector<float> rc(d * d);
  rotate_covariance(c.data(), s.data(), d, sigma.data(), rc.data());
  Eigen::MatrixXd const want_cov = rbar * sigma.cast<double>() * rbar.transpose();
  for (int i = 0; i < d; ++i)
    for (int j = 0; j < d; ++j) CHECK(rc[i * d + j] == Approx(want_cov(i, j)).margin(1e-4));
}

TEST_CASE("llama3 inverse frequencies follow the published formula", "[rope]") {
  auto c = config(RopeType::kLlama3, 128);
  c.theta = 500000.0;
  c.factor = 8.0;
  c.original_max_position_embeddings = 8192;
  RotaryEmbedding const rope(c);
  for (int i = 0; i < 64; ++i) {
    double const inv = 1.0 / std::pow(500000.0, 2.0 * i / 128.0);
    double const wl = 2 * M_PI / inv, low = 8192.0 / 1.0, high = 8192.0 / 4.0;
    double want = inv;
    if (wl > low) want = inv / 8.0;
    else if (wl >= high) {
      double const sm = (8192.0 / wl - 1.0) / 3.0;
      want = (1 - sm) * inv / 8.0 + sm * inv;
    }
    CHECK(rope.inv_freq()[i] == Approx(want).epsilon(1e-6));
  }
}

TEST_CASE("bad RoPE configurations are rejected with the field and the value", "[rope][errors]") {
  SECTION("odd head_dim") {
    REQUIRE_THROWS_WITH(RotaryEmbedding(config(RopeType::kDefault, 63)), Catch::Contains("head_dim") && Catch::Contains("63"));
  }
  SECTION("zero head_dim") {
    REQUIRE_THROWS_WITH(RotaryEmbedding(config(RopeType::kDefault, 0)), Catch::Contains("head_dim") && Catch::Contains("0"));
  }
  SECTION("non-positive theta") {
    auto c = config(RopeType::kDefault, 8);
    c.theta = -1.0;
    REQUIRE_THROWS_WITH(RotaryEmbedding(c), Catch::Contains("theta") && Catch::Contains("-1"));
  }
  SECTION("factor below 1") {
    auto c = config(RopeType::kLinear, 8);
    c.factor = 0.5;
    REQUIRE_THROWS_WITH(RotaryEmbedding(c), Catch::Contains("factor") && Catch::Contains("0.5"));
  }
  SECTION("llama3 without original_max_position_embeddings") {
    auto c = config(RopeType::kLlama3, 8);
    c.original_max_position_embeddings = 0;
    REQUIRE_THROWS_WITH(RotaryEmbedding(c), Catch::Contains("original_max_position_embeddings"));
  }
  SECTION("llama3 frequency factors out of order") {
    auto c = config(RopeType::kLlama3, 8);
    c.low_freq_factor = 4.0;
    c.high_freq_factor = 1.0;
    REQUIRE_THROWS_WITH(RotaryEmbedding(c), Catch::Contains("low_freq_factor = 4"));
  }
  SECTION("averaged rotation over no positions") {
    RotaryEmbedding const rope(config(RopeType::kDefault, 8));
    std::vector<float> c(8), s(8);
    REQUIRE_THROWS_WITH(rope.averaged_rotation(0, 0, c.data(), s.data()), Catch::Contains("count") && Catch::Contains("0"));
  }
}

}  // namespace KVC_TEST_TU
