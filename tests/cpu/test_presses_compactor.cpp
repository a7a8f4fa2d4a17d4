// LeverageScore, NonCausalAttn and Compactor: the bad inputs they reject (docs/reliability.md) and the
// properties that follow from their definitions. Their scores against kvpress are in
// tests/golden_tests/test_presses_golden.cpp.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "kvcompress/kvcompress.hpp"
#include "test_util.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using namespace kvcompress;

namespace {

constexpr std::int64_t kB = 1, kH = 2, kQ = 4, kN = 24, kD = 8, kK = 4;

RotaryEmbedding make_rope() {
  RopeConfig c;
  c.head_dim = static_cast<int>(kD);
  return RotaryEmbedding(c);
}

struct Inputs {
  RotaryEmbedding rope = make_rope();
  std::vector<float> queries = kvc_test::random_vector(static_cast<std::size_t>(kB * kQ * kN * kD), 31);
  std::vector<float> sketch = kvc_test::random_vector(static_cast<std::size_t>(kB * kH * kD * kK), 32, 0.5f);
  kvc_test::OwnedCache<float> cache{kB, kH, kN, kD};

  Inputs() { cache.fill_random(33); }
  [[nodiscard]] Observation<float> observation() const {
    Observation<float> obs;
    obs.queries = make_tensor4(queries.data(), {kB, kQ, kN, kD});
    obs.rope = &rope;
    return obs;
  }
};

}  // namespace

TEST_CASE("Compactor presses reject bad parameters and inputs", "[press][compactor][errors]") {
  Inputs in;
  auto obs = in.observation();
  LeverageScorePress leverage{0.5, kK, in.sketch.data()};
  NonCausalAttnPress non_causal{0.5, 8};
  CompactorPress compactor{0.5};
  compactor.sketch_dimension = kK;
  compactor.chunk_size = 8;
  compactor.sketch = in.sketch.data();
  SECTION("sketch missing") {
    leverage.sketch = nullptr;
    REQUIRE_THROWS_WITH(compress(cpu, leverage, obs, in.cache.view()),
                        Catch::Contains("LeverageScorePress sketch must be given") && Catch::Contains("[1, 2, 8, 4]"));
    compactor.sketch = nullptr;
    REQUIRE_THROWS_WITH(compress(cpu, compactor, obs, in.cache.view()), Catch::Contains("CompactorPress sketch must be given"));
  }
  SECTION("sketch_dimension not positive") {
    leverage.sketch_dimension = 0;
    REQUIRE_THROWS_WITH(compress(cpu, leverage, obs, in.cache.view()),
                        Catch::Contains("LeverageScorePress sketch_dimension must be positive, got 0"));
  }
  SECTION("non-finite sketch") {
    in.sketch[13] = std::numeric_limits<float>::quiet_NaN();
    REQUIRE_THROWS_WITH(compress(cpu, leverage, obs, in.cache.view()), Catch::Contains("sketch[13] = nan is not finite"));
  }
  SECTION("not a prefill") {
    in.cache.lengths[1] = 20;
    for (auto const* name : {"LeverageScorePress", "NonCausalAttnPress", "CompactorPress"}) {
      CAPTURE(name);
      auto const run = [&] {
        if (std::string(name) == "LeverageScorePress") compress(cpu, leverage, obs, in.cache.view());
        else if (std::string(name) == "NonCausalAttnPress") compress(cpu, non_causal, obs, in.cache.view());
        else compress(cpu, compactor, obs, in.cache.view());
      };
      REQUIRE_THROWS_WITH(run(), Catch::Contains(std::string(name) + " only supports prefill: cache length n = 20 of row "
                                                                     "(batch 0, kv head 1) must equal the chunk length 24"));
    }
    REQUIRE(in.cache.lengths[0] == kN);  // nothing moved
  }
  SECTION("chunk_size not positive") {
    non_causal.chunk_size = 0;
    REQUIRE_THROWS_WITH(compress(cpu, non_causal, obs, in.cache.view()),
                        Catch::Contains("NonCausalAttnPress chunk_size must be positive, got 0"));
  }
  SECTION("queries missing or of another length") {
    obs.queries = {};
    REQUIRE_THROWS_WITH(compress(cpu, non_causal, obs, in.cache.view()), Catch::Contains("observation.queries must be given"));
    obs = in.observation();
    obs.chunk_length = kN;
    obs.queries = make_tensor4(in.queries.data(), {kB, kQ, kN - 1, kD});
    REQUIRE_THROWS_WITH(compress(cpu, non_causal, obs, in.cache.view()),
                        Catch::Contains("observation.queries q_len = 23 must equal the chunk length 24"));
  }
  SECTION("rope missing") {
    obs.rope = nullptr;
    REQUIRE_THROWS_WITH(compress(cpu, leverage, obs, in.cache.view()), Catch::Contains("LeverageScorePress needs observation.rope"));
    REQUIRE_THROWS_WITH(compress(cpu, non_causal, obs, in.cache.view()), Catch::Contains("NonCausalAttnPress needs observation.rope"));
  }
  SECTION("one entry in total: no z-score") {
    kvc_test::OwnedCache<float> one(1, 1, 1, kD);
    one.fill_random(5);
    obs.queries = make_tensor4(in.queries.data(), {1, 1, 1, kD});
    REQUIRE_THROWS_WITH(score(cpu, non_causal, obs, one.view()),
                        Catch::Contains("needs at least 2 scored entries in total, got 1"));
  }
  SECTION("Compactor: no entry between the sinks, negative sinks, non-finite blending") {
    compactor.sink_size_start = 20;
    compactor.sink_size_end = 4;
    REQUIRE_THROWS_WITH(compress(cpu, compactor, obs, in.cache.view()),
                        Catch::Contains("CompactorPress needs more than sink_size_start + sink_size_end = 24 entries per row "
                                        "to score, got 24"));
    compactor.sink_size_start = -1;
    REQUIRE_THROWS_WITH(compress(cpu, compactor, obs, in.cache.view()),
                        Catch::Contains("sink_size_start and sink_size_end must be non-negative, got -1 and 4"));
    compactor.sink_size_start = 8;
    compactor.blending = std::numeric_limits<double>::infinity();
    REQUIRE_THROWS_WITH(compress(cpu, compactor, obs, in.cache.view()), Catch::Contains("CompactorPress blending must be finite"));
  }
  SECTION("keys so large that the sketched Gram matrix overflows") {
    float top = 0.0f;
    for (float x : in.cache.k) top = std::max(top, std::fabs(x));
    for (auto& x : in.cache.k) x *= 3e38f / top;  // finite, but the rotated, sketched keys overflow float
    REQUIRE_THROWS_WITH(compress(cpu, leverage, obs, in.cache.view()),
                        Catch::Contains("the Cholesky factorisation of the sketched key Gram matrix of (batch 0, kv head 0) "
                                        "failed after 5 jitters"));
  }
}

TEST_CASE("Compactor presses: z-scored scores, the sinks kept, scores independent of the thread count",
          "[press][compactor]") {
  Inputs in;
  auto const obs = in.observation();
  LeverageScorePress const leverage{0.5, kK, in.sketch.data()};
  NonCausalAttnPress const non_causal{0.5, 8};
  for (auto const& s : {score(cpu, leverage, obs, in.cache.view()), score(cpu, non_causal, obs, in.cache.view())}) {
    double sum = 0.0, ss = 0.0;
    for (float x : s) sum += x;
    for (float x : s) ss += (x - sum / double(s.size())) * (x - sum / double(s.size()));
    CHECK(std::fabs(sum / double(s.size())) < 1e-5);
    CHECK(std::sqrt(ss / double(s.size() - 1)) == Approx(1.0).epsilon(1e-5));
  }
  CHECK(score(CpuDevice{1}, leverage, obs, in.cache.view()) == score(CpuDevice{3}, leverage, obs, in.cache.view()));
  CHECK(score(CpuDevice{1}, non_causal, obs, in.cache.view()) == score(CpuDevice{3}, non_causal, obs, in.cache.view()));

  CompactorPress compactor{0.25};
  compactor.sketch_dimension = kK;
  compactor.chunk_size = 8;
  compactor.sketch = in.sketch.data();
  std::vector<float> const original = in.cache.k;
  compress(cpu, compactor, obs, in.cache.view());
  // 18 kept: the 8 + 4 sinks (the global maximum, tied with at most the best scored entry) and 6 more.
  for (std::int64_t row = 0; row < kB * kH; ++row) {
    CAPTURE(row);
    REQUIRE(in.cache.lengths[row] == kept_count(kN, 0.25));
    for (std::int64_t pos : {0, 1, 2, 3, 4, 5, 6, 7, 20, 21, 22, 23}) {
      CAPTURE(pos);
      bool found = false;
      for (std::int64_t j = 0; j < in.cache.lengths[row] && !found; ++j)
        found = std::equal(original.begin() + (row * kN + pos) * kD, original.begin() + (row * kN + pos + 1) * kD,
                           in.cache.k.begin() + (row * kN + j) * kD);
      CHECK(found);
    }
  }
}

}  // namespace KVC_TEST_TU
