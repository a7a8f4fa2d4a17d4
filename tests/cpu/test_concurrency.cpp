// Concurrency: engines compress many caches at once, from many threads, with one press object.
// Eight threads each compress their own caches with one shared const press (and one shared
// observation and RotaryEmbedding), on CpuDevice{1} and CpuDevice{2}; every result must be
// bit-identical to a single-threaded run. Small shapes and a fixed number of rounds bound the
// time; the test also runs under ThreadSanitizer (`tsan` preset), which checks the sharing itself.
#include <catch2/catch.hpp>

#include <atomic>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "kvcompress/kvcompress.hpp"
#include "test_util.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using namespace kvcompress;

namespace {

constexpr std::int64_t kB = 1, kH = 2, kQ = 8, kCap = 40, kD = 16, kW = 4;
constexpr int kThreads = 8, kRounds = 10, kSeeds = 4;

RotaryEmbedding make_rope() {
  RopeConfig c;
  c.head_dim = static_cast<int>(kD);
  return RotaryEmbedding(c);
}

struct Shared {
  RotaryEmbedding rope = make_rope();
  std::vector<float> queries = kvc_test::random_vector(kB * kQ * kCap * kD, 1);
  std::vector<float> window = kvc_test::random_vector(kB * kQ * kW * kD, 2);
  std::vector<float> attention = kvc_test::random_vector(kB * kQ * kCap * kCap, 3, 0.05f);
  std::vector<float> mean = kvc_test::random_vector(kQ * kD, 4, 0.3f);
  std::vector<float> filters = kvc_test::random_vector(2 * kH * kD, 5);
  Observation<float> obs;

  Shared() {
    obs.layer_idx = 1;
    obs.num_layers = 2;
    obs.queries = make_tensor4(queries.data(), {kB, kQ, kCap, kD});
    obs.window_queries = make_tensor4(window.data(), {kB, kQ, kW, kD});
    obs.attention = make_tensor4(attention.data(), {kB, kQ, kCap, kCap});
    obs.stats = QueryStats{mean.data(), nullptr, kQ};
    obs.rope = &rope;
  }
};

/// A cache with original positions; every row full (TOVA and ObservedAttention need equal lengths).
struct Cache {
  kvc_test::OwnedCache<float> c{kB, kH, kCap, kD};
  std::vector<std::int32_t> positions = std::vector<std::int32_t>(kB * kH * kCap);

  explicit Cache(std::uint32_t seed) {
    c.fill_random(seed);
    for (std::size_t i = 0; i < positions.size(); ++i) positions[i] = static_cast<std::int32_t>(i % kCap);
  }
  KVCacheView<float> view() {
    return make_cache_view(c.k.data(), c.v.data(), c.extents, c.layout, c.lengths.data(), positions.data());
  }
  [[nodiscard]] bool same_bits(Cache const& o) const {
    auto const eq = [](auto const& a, auto const& b) {
      return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(a[0])) == 0;
    };
    return eq(c.k, o.c.k) && eq(c.v, o.c.v) && eq(c.lengths, o.c.lengths) && eq(positions, o.positions);
  }
};

using Run = std::function<void(CpuDevice, Observation<float> const&, KVCacheView<float> const&)>;

template <class Press>
std::pair<std::string, Run> entry(std::string name, Press const& press) {
  // The lambda holds a reference: every thread uses this one const object.
  return {std::move(name),
          [&press](CpuDevice dev, Observation<float> const& o, KVCacheView<float> const& v) { compress(dev, press, o, v); }};
}

}  // namespace

TEST_CASE("many threads compressing their own caches with one shared const press match one thread, bit for bit",
          "[concurrency][threads]") {
  Shared const shared;
  ExpectedAttentionPress ea;
  ea.compression_ratio = 0.5;
  ExpectedAttentionStatsPress eas;
  eas.compression_ratio = 0.4;
  eas.use_covariance = false;
  RandomPress random;
  random.compression_ratio = 0.5;
  random.seed = 42;
  PyramidKVPress pyramid{0.5, kW, 3, 20.0};
  ExpectedAttentionPress const& ea_c = ea;  // the presses below are only ever read
  KnormPress const knorm{0.3};
  SnapKVPress const snap{0.5, kW, 3};
  KeyDiffPress const keydiff{0.6};
  LagKVPress const lag{0.5, 2, 8, false};
  StreamingLLMPress const streaming{0.5, 4};
  QFilterPress const qfilter{0.5, shared.filters.data(), 2, static_cast<int>(kH), static_cast<int>(kD)};
  TOVAPress const tova{0.5};
  ObservedAttentionPress const observed{0.5};
  std::vector<std::pair<std::string, Run>> const presses{
      entry("ExpectedAttention", ea_c), entry("ExpectedAttentionStats", eas), entry("Knorm", knorm),
      entry("Random (seeded)", random), entry("SnapKV", snap),         entry("PyramidKV", pyramid),
      entry("KeyDiff", keydiff),        entry("LagKV", lag),          entry("StreamingLLM", streaming),
      entry("QFilter", qfilter),        entry("TOVA", tova),          entry("ObservedAttention", observed)};

  for (int device_threads : {1, 2}) {
    CpuDevice const dev{device_threads};
    // The reference: one thread, one cache at a time.
    std::vector<std::vector<Cache>> reference(presses.size());
    for (std::size_t p = 0; p < presses.size(); ++p)
      for (int seed = 0; seed < kSeeds; ++seed) {
        Cache c(static_cast<std::uint32_t>(100 + seed));
        presses[p].second(CpuDevice{1}, shared.obs, c.view());
        CHECK(c.c.lengths[0] < kCap);  // it compressed: the comparison below is not vacuous
        reference[p].push_back(std::move(c));
      }

    std::atomic<int> mismatches{0}, errors{0};
    std::vector<std::string> first_mismatch(kThreads);
    std::vector<std::thread> pool;
    for (int t = 0; t < kThreads; ++t)
      pool.emplace_back([&, t] {
        for (int round = 0; round < kRounds; ++round)
          for (std::size_t p = 0; p < presses.size(); ++p) {
            int const seed = (t + round) % kSeeds;
            Cache c(static_cast<std::uint32_t>(100 + seed));
            try {
              presses[p].second(dev, shared.obs, c.view());
            } catch (...) {
              ++errors;
              continue;
            }
            if (!c.same_bits(reference[p][static_cast<std::size_t>(seed)])) {
              if (mismatches++ == 0) first_mismatch[static_cast<std::size_t>(t)] = presses[p].first;
            }
          }
      });
    for (auto& th : pool) th.join();
    CAPTURE(device_threads);
    for (auto const& m : first_mismatch) CHECK(m.empty());
    CHECK(mismatches == 0);
    CHECK(errors == 0);
  }
}

}  // namespace KVC_TEST_TU
