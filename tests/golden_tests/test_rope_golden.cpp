// RoPE against HF transformers' own rotary embedding (tools/golden/generate.py → tests/golden/rope):
// inverse frequencies, attention scaling, cos/sin at positions up to 4097, dynamic NTK below and
// above max_position_embeddings, and Expected Attention's averaged rotation as kvpress builds it.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "golden_fixture.hpp"
#include "kvcompress/rope/rotary_embedding.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using namespace kvcompress;

namespace {

RopeConfig config_from(nlohmann::json const& j, int head_dim) {
  RopeConfig c;
  std::string const t = j.at("rope_type");
  c.type = t == "default" ? RopeType::kDefault
         : t == "linear"  ? RopeType::kLinear
         : t == "dynamic" ? RopeType::kDynamic
         : t == "llama3"  ? RopeType::kLlama3
         : t == "yarn"    ? RopeType::kYarn
                          : throw std::runtime_error("unknown rope_type " + t);
  c.head_dim = head_dim;
  c.theta = j.at("rope_theta");
  c.max_position_embeddings = j.at("max_position_embeddings");
  c.factor = j.value("factor", 1.0);
  c.original_max_position_embeddings = j.value("original_max_position_embeddings", std::int64_t{0});
  c.low_freq_factor = j.value("low_freq_factor", 1.0);
  c.high_freq_factor = j.value("high_freq_factor", 4.0);
  c.beta_fast = j.value("beta_fast", 32.0);
  c.beta_slow = j.value("beta_slow", 1.0);
  c.attention_factor = j.value("attention_factor", 0.0);
  c.mscale = j.value("mscale", 0.0);
  c.mscale_all_dim = j.value("mscale_all_dim", 0.0);
  c.truncate = j.value("truncate", true);
  return c;
}

}  // namespace

TEST_CASE("RoPE matches HF transformers for every variant", "[golden][rope]") {
  std::string const dir = std::string(KVC_GOLDEN_DIR) + "/rope";
  auto const meta = kvc_test::load_json(dir + "/rope.json");
  double max_inv = 0, max_cs = 0, max_avg = 0;
  int cases = 0;
  for (auto const& c : meta.at("cases")) {
    std::string const name = c.at("name");
    CAPTURE(name);
    int const d = c.at("head_dim");
    RotaryEmbedding const rope(config_from(c.at("config"), d));
    CHECK(rope.attention_scaling() == Approx(c.at("attention_scaling").get<double>()).epsilon(1e-6));
    auto const inv = kvc_test::load_tensor<float>(dir, c.at("inv_freq"));
    for (int i = 0; i < d / 2; ++i) {
      double const e = std::fabs(double(rope.inv_freq()[i]) - inv.data[i]) / std::fabs(double(inv.data[i]));
      max_inv = std::max(max_inv, e);
      CHECK(rope.inv_freq()[i] == inv.data[i]);  // bit for bit (see the test below)
    }
    for (auto const& ev : c.at("evaluations")) {
      std::int64_t const seq_len = ev.at("seq_len");
      auto const cos = kvc_test::load_tensor<float>(dir, ev.at("cos"));
      auto const sin = kvc_test::load_tensor<float>(dir, ev.at("sin"));
      auto const ev_inv = kvc_test::load_tensor<float>(dir, ev.at("inv_freq"));
      std::vector<float> ours_inv(static_cast<std::size_t>(d / 2));
      rope.inv_freq_for(seq_len, ours_inv.data());
      for (int i = 0; i < d / 2; ++i) CHECK(ours_inv[i] == ev_inv.data[i]);
      std::vector<float> co(static_cast<std::size_t>(d)), si(co.size());
      auto const positions = ev.at("positions").get<std::vector<std::int64_t>>();
      for (std::size_t k = 0; k < positions.size(); ++k) {
        rope.cos_sin(positions[k], seq_len, co.data(), si.data());
        for (int i = 0; i < d; ++i) {
          // inv_freq agrees with HF to about one float ulp (2^-23 relative; float pow implementations
          // differ in the last bit), and the angle p·inv_freq multiplies that ulp by p. So the bound is
          // two ulps of the angle plus rounding of the result, times the scaling.
          double const angle = double(positions[k]) * ev_inv.data[static_cast<std::size_t>(i % (d / 2))];
          double const tol = rope.attention_scaling() * (2e-6 + 2.4e-7 * angle);
          double const ec = std::fabs(double(co[i]) - cos.data[k * d + i]);
          double const es = std::fabs(double(si[i]) - sin.data[k * d + i]);
          max_cs = std::max({max_cs, ec / tol, es / tol});
          CHECK(ec <= tol);
          CHECK(es <= tol);
        }
      }
    }
    for (auto const& av : c.at("avg_rotation")) {
      auto const cm = kvc_test::load_tensor<float>(dir, av.at("cos_mean"));
      auto const sm = kvc_test::load_tensor<float>(dir, av.at("sin_mean"));
      std::vector<float> co(static_cast<std::size_t>(d)), si(co.size());
      rope.averaged_rotation(av.at("q"), av.at("n_future_positions"), co.data(), si.data());
      for (int i = 0; i < d; ++i) {
        double const e = std::max(std::fabs(double(co[i]) - cm.data[i]), std::fabs(double(si[i]) - sm.data[i]));
        max_avg = std::max(max_avg, e);
        CHECK(e < 1e-5);
      }
    }
    ++cases;
  }
  std::printf("golden rope: %d cases; max rel inv_freq error %.3g, max cos/sin error / bound %.3g, "
              "max abs averaged-rotation error %.3g\n", cases, max_inv, max_cs, max_avg);
  CHECK(cases == 14);
}

// HF's inverse frequencies bit for bit (tools/golden/generate.py → tests/golden/rope_inv_freq): every
// variant at head_dims 64/80/96/128/256 and thetas 1e4/5e5/1e6, llama3 with six original contexts
// (64 … 131072) and three factor sets. PyTorch evaluates `scalar / tensor` as reciprocal-then-multiply
// and `scalar ** tensor` through SLEEF's powf for all but the tail of the vector blocks
// (kvcompress/rope/torch_float.hpp); a correctly rounded division or powf misses some indices by an ulp.
TEST_CASE("RoPE inverse frequencies equal HF's bit for bit", "[golden][rope]") {
  std::string const dir = std::string(KVC_GOLDEN_DIR) + "/rope_inv_freq";
  auto const meta = kvc_test::load_json(dir + "/inv_freq.json");
  auto const all = kvc_test::load_tensor<float>(dir, meta.at("inv_freq"));
  int cases = 0, llama3 = 0;
  for (auto const& c : meta.at("cases")) {
    int const d = c.at("head_dim");
    std::size_t const offset = c.at("offset");
    std::string const type = c.at("config").at("rope_type");
    CAPTURE(c.at("config").dump(), d);
    RotaryEmbedding const rope(config_from(c.at("config"), d));
    std::vector<float> inv = rope.inv_freq();
    if (c.contains("seq_len")) rope.inv_freq_for(c.at("seq_len"), inv.data());  // dynamic NTK past max_position
    for (int i = 0; i < d / 2; ++i) {
      CAPTURE(i);
      CHECK(inv[static_cast<std::size_t>(i)] == all.data[offset + static_cast<std::size_t>(i)]);
    }
    ++cases;
    llama3 += type == "llama3";
  }
  std::printf("golden rope: %d inverse-frequency cases (%d llama3) bit for bit\n", cases, llama3);
  CHECK(llama3 == 3 * 6 * 3 * 5);
  CHECK(cases == 3 * (3 + 6 + 6 * 3) * 5 + 3 * 5 * 4);
}

}  // namespace KVC_TEST_TU
