// Expected Attention on bfloat16 caches against kvpress run in bfloat16 (tools/golden/generate_bf16.py:
// the scenarios of the float32 suite with the model cast to bf16, so that kvpress computes the statistics,
// the rotation, the logits and the softmax in bf16). kvcompress reads the same bf16 keys, values and
// queries and computes in fp32, the covariance term of the native path from bf16 products
// (detail/bf16_dot.hpp). The reference's own rounding dominates the difference; the tolerance below
// is set from it (docs/architecture.md, "CPU kernels"). Kept sets must be identical except where
// kvpress's scores at the cut are closer than the tolerance (a tie: ours must then be a valid top-k
// of kvpress's scores within it).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "golden_scenario.hpp"
#include "kvcompress/kvcompress.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using namespace kvcompress;
using nlohmann::json;

namespace {

// kvpress's bf16 scores carry its bf16 statistics, rotation and logits (a bf16 step of a logit near 4
// is 2^-6, which moves exp(z) by 1.6 %), its bf16 softmax and its bf16 value norms. Measured maximum
// over the 24 cases (the test prints it): 2.05e-2 on the native path, 2.25e-2 on the portable fp32
// path, so the reference's rounding, not the kernel's, sets it; 3e-2 keeps a margin.
constexpr double kBf16RelTol = 3e-2;

struct Bf16Scenario {
  kvc_test::Scenario sc;
  std::vector<bfloat16> keys, values, queries;
  explicit Bf16Scenario(std::string const& name) : sc(name) {
    auto const widen = [](std::vector<float> const& x) {
      std::vector<bfloat16> out(x.size());
      for (std::size_t i = 0; i < x.size(); ++i) {
        out[i] = bfloat16(x[i]);
        REQUIRE(static_cast<float>(out[i]) == x[i]);  // the fixture holds bf16 values exactly
      }
      return out;
    };
    keys = widen(sc.keys.data);
    values = widen(sc.values.data);
    queries = widen(sc.tensor("queries").data);
  }
};

struct Worst {
  double rel = 0.0;
  int heads = 0, tied = 0, same = 0;  // same: kept sets equal to kvpress's, ties included
};

// Scores and compresses one case on `dev`; records the largest relative score error.
template <class Press>
void check_case(Bf16Scenario const& s, json const& pc, Press const& press, Observation<bfloat16> const& obs,
                CpuDevice const& dev, Worst& worst) {
  auto const& sc = s.sc;
  auto const want = kvc_test::load_tensor<float>(sc.dir, pc.at("scores"));
  auto const want_kept = kvc_test::load_tensor<std::int32_t>(sc.dir, pc.at("kept"));
  std::int64_t const n_kept = pc.at("n_kept");
  std::vector<bfloat16> k = s.keys, v = s.values;
  CacheExtents const e{sc.batch, sc.kv_heads, sc.n, sc.head_dim};
  auto const layout = make_strided_layout(e, {Axis::kBatch, Axis::kHead, Axis::kSeq, Axis::kDim});
  std::vector<std::int32_t> lengths(static_cast<std::size_t>(sc.batch * sc.kv_heads), static_cast<std::int32_t>(sc.n));
  std::vector<std::int32_t> positions(static_cast<std::size_t>(sc.batch * sc.kv_heads * sc.n));
  for (std::size_t i = 0; i < positions.size(); ++i) positions[i] = static_cast<std::int32_t>(i % sc.n);
  auto const cache = make_cache_view(k.data(), v.data(), e, layout, lengths.data(), positions.data());

  auto const got = score(dev, press, obs, cache);
  double scale = 0.0;
  for (float x : want.data) scale = std::max(scale, double(std::fabs(x)));
  for (std::size_t i = 0; i < got.size(); ++i) {
    double const ref = std::max(double(std::fabs(want.data[i])), 1e-2 * scale);
    double const err = std::fabs(double(got[i]) - want.data[i]);
    if (err > kBf16RelTol * ref) FAIL_CHECK("score " << i << ": kvcompress " << got[i] << ", kvpress " << want.data[i]);
    worst.rel = std::max(worst.rel, err / ref);
  }

  compress(dev, press, obs, cache);
  for (std::int64_t row = 0; row < sc.batch * sc.kv_heads; ++row) {
    CAPTURE(row);
    ++worst.heads;
    REQUIRE(lengths[static_cast<std::size_t>(row)] == n_kept);
    std::set<int> const ours(positions.begin() + row * sc.n, positions.begin() + row * sc.n + n_kept);
    std::set<int> const theirs(want_kept.data.begin() + row * n_kept, want_kept.data.begin() + (row + 1) * n_kept);
    float const* sr = want.data.data() + row * sc.n;
    float lowest_kept = INFINITY, best_dropped = -INFINITY;
    for (int i = 0; i < sc.n; ++i) {
      if (theirs.count(i)) lowest_kept = std::min(lowest_kept, sr[i]);
      else best_dropped = std::max(best_dropped, sr[i]);
    }
    double const tol = kBf16RelTol * std::max(std::fabs(double(lowest_kept)), 1e-2 * scale);
    worst.same += ours == theirs ? 1 : 0;
    if (double(lowest_kept) - double(best_dropped) > tol) {
      CHECK(ours == theirs);
      continue;
    }
    ++worst.tied;
    for (int i = 0; i < sc.n; ++i) {
      if (ours.count(i)) CHECK(double(sr[i]) >= double(lowest_kept) - tol);
      else CHECK(double(sr[i]) <= double(lowest_kept) + tol);
    }
  }
}

}  // namespace

TEST_CASE("Expected Attention on bf16 caches matches kvpress run in bf16", "[golden][press][ea][bf16]") {
  auto const index = kvc_test::load_json(kvc_test::kGoldenDir + "/bf16/index.json");
  CpuDevice native{2}, portable{2, CpuKernels::kPortable};
  Worst fast, fallback;
  int cases = 0;
  for (auto const& name : index.at("scenarios")) {
    Bf16Scenario const s("bf16/" + name.get<std::string>());
    auto const& sc = s.sc;
    RotaryEmbedding const rope(kvc_test::rope_config_from(sc.meta.at("rope"), static_cast<int>(sc.head_dim)));
    auto const mean = sc.tensor("query_mean"), cov = sc.tensor("query_cov");
    for (auto const& pc : sc.meta.at("presses")) {
      CAPTURE(sc.dir, pc.at("name").get<std::string>());
      ++cases;
      json const& p = pc.at("params");
      Observation<bfloat16> obs;
      obs.layer_idx = sc.meta.at("layer_idx");
      obs.num_layers = sc.meta.at("num_layers");
      obs.rope = &rope;
      auto const run = [&](auto const& press) {
        check_case(s, pc, press, obs, native, fast);
        check_case(s, pc, press, obs, portable, fallback);
      };
      if (pc.at("press") == "ExpectedAttentionStatsPress") {
        obs.stats = {mean.data.data(), cov.data.data(), mean.shape[0]};
        obs.chunk_length = sc.n;
        run(ExpectedAttentionStatsPress{p.at("compression_ratio"), p.at("n_future_positions"), p.at("n_sink"),
                                        p.at("use_covariance"), p.at("use_vnorm"), p.at("epsilon").get<float>()});
      } else {
        REQUIRE(pc.at("press") == "ExpectedAttentionPress");
        obs.queries = make_tensor4(s.queries.data(), {sc.batch, sc.q_heads, sc.n, sc.head_dim});
        run(kvc_test::press_from<ExpectedAttentionPress>(p));
      }
    }
  }
  std::printf("golden bf16 Expected Attention: %d cases, %d heads; max relative score error against kvpress in bf16: "
              "%.3g on the native path (AVX512_BF16 %s), %.3g on the portable path; heads within the tolerance at "
              "the cut: %d, %d; kept sets equal to kvpress's: %d, %d\n",
              cases, fast.heads, fast.rel, detail::cpu_has_avx512_bf16() ? "used" : "absent", fallback.rel, fast.tied,
              fallback.tied, fast.same, fallback.same);
  CHECK(cases == 6 * 4);
}

}  // namespace KVC_TEST_TU
