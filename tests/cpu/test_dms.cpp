// DMS on simulated generations, against an independent double-precision restatement of the rule:
// after `seen` tokens, an entry has been decided iff it is older than the last sliding_window_size
// tokens, and a decided entry is gone iff its score (here Knorm's −‖k‖, recomputed in double when the
// token was appended) is below the threshold. Removal is real: lengths shrink per head, kept entries
// keep their keys, values and positions, in position order.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "kvcompress/kvcompress.hpp"
#include "test_util.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using namespace kvcompress;
using Catch::Matchers::Contains;

namespace {

constexpr std::int64_t kB = 2, kH = 3, kD = 16;
constexpr float kThreshold = -4.0f;  // −‖k‖ for k ~ N(0, I₁₆): about half of the entries fall below

/// A generation in miniature: every row starts empty; `forward(q)` appends q tokens to every row.
struct Generation {
  std::int64_t cap;
  CacheExtents extents;
  StridedLayout layout;
  std::vector<float> k, v;
  std::vector<std::int32_t> lengths, positions;
  std::vector<std::map<std::int64_t, std::vector<float>>> original;  // per row: position → key ++ value
  std::vector<std::map<std::int64_t, double>> norm;                   // per row: position → ‖k‖ in double
  std::int64_t next = 0;
  std::mt19937 gen;

  Generation(std::int64_t capacity, std::uint32_t seed,
             std::array<Axis, 4> order = {Axis::kBatch, Axis::kHead, Axis::kSeq, Axis::kDim})
      : cap(capacity),
        extents{kB, kH, capacity, kD},
        layout(make_strided_layout(extents, order)),
        k(static_cast<std::size_t>(kB * kH * capacity * kD)),
        v(k.size()),
        lengths(static_cast<std::size_t>(kB * kH), 0),
        positions(static_cast<std::size_t>(kB * kH * capacity), -1),
        original(static_cast<std::size_t>(kB * kH)),
        norm(static_cast<std::size_t>(kB * kH)),
        gen(seed) {}

  KVCacheView<float> view() { return make_cache_view(k.data(), v.data(), extents, layout, lengths.data(), positions.data()); }

  Observation<float> forward(std::int64_t q, int layer = 0) {
    std::normal_distribution<float> dist(0.0f, 1.0f);
    auto const cache = view();
    for (std::int64_t r = 0; r < kB * kH; ++r)
      for (std::int64_t t = 0; t < q; ++t) {
        std::int64_t const b = r / kH, h = r % kH, slot = lengths[static_cast<std::size_t>(r)]++;
        REQUIRE(slot < cap);
        std::vector<float> kv;
        double ss = 0.0;
        for (std::int64_t c = 0; c < kD; ++c) kv.push_back(cache.key(b, h, slot, c) = dist(gen));
        for (std::int64_t c = 0; c < kD; ++c) kv.push_back(cache.value(b, h, slot, c) = dist(gen));
        for (std::int64_t c = 0; c < kD; ++c) ss += static_cast<double>(kv[static_cast<std::size_t>(c)]) * kv[static_cast<std::size_t>(c)];
        positions[static_cast<std::size_t>(r * cap + slot)] = static_cast<std::int32_t>(next + t);
        original[static_cast<std::size_t>(r)][next + t] = kv;
        norm[static_cast<std::size_t>(r)][next + t] = std::sqrt(ss);
      }
    Observation<float> obs;
    obs.layer_idx = layer;
    obs.position = next;
    obs.chunk_length = q;
    next += q;
    return obs;
  }

  /// The rule restated: positions of row r still present after `decided` tokens were decided.
  [[nodiscard]] std::set<std::int64_t> expected_present(std::int64_t r, std::int64_t decided) const {
    std::set<std::int64_t> out;
    for (auto const& [p, n] : norm[static_cast<std::size_t>(r)])
      if (p >= decided || -n >= static_cast<double>(kThreshold)) out.insert(p);
    return out;
  }

  /// Checks the rows against the rule and that every kept entry is intact and in position order.
  void check(std::int64_t decided) {
    auto const cache = view();
    for (std::int64_t r = 0; r < kB * kH; ++r) {
      INFO("row " << r << ", " << decided << " tokens decided");
      std::set<std::int64_t> present;
      std::int64_t previous = -1;
      for (std::int32_t s = 0; s < lengths[static_cast<std::size_t>(r)]; ++s) {
        std::int64_t const p = positions[static_cast<std::size_t>(r * cap + s)];
        REQUIRE(p > previous);
        previous = p;
        present.insert(p);
        auto const& kv = original[static_cast<std::size_t>(r)].at(p);
        for (std::int64_t c = 0; c < kD; ++c) {
          REQUIRE(cache.key(r / kH, r % kH, s, c) == kv[static_cast<std::size_t>(c)]);
          REQUIRE(cache.value(r / kH, r % kH, s, c) == kv[static_cast<std::size_t>(kD + c)]);
        }
      }
      REQUIRE(present == expected_present(r, decided));
    }
  }
};

DMSStateShape shape(int layers = 1) { return {layers, kB, kH}; }

}  // namespace

TEST_CASE("DMS removes exactly the decided entries scoring below the threshold", "[dms]") {
  std::int64_t const window = 16, prefill = 40;
  auto const run = [&](Generation& g) {
    DMSPress<KnormPress> dms(KnormPress{}, DMSOptions{kThreshold, window, true}, shape());
    dms.step(cpu, g.forward(prefill), g.view());
    g.check(prefill - window);
    for (int s = 1; s <= 200; ++s) {
      std::int64_t const q = s % 50 == 0 ? 5 : 1;  // now and then a multi-token chunk
      dms.step(cpu, g.forward(q), g.view());
      g.check(g.next - window);
      REQUIRE(dms.pending(0) == window);
    }
    std::set<std::int32_t> lengths(g.lengths.begin(), g.lengths.end());
    CHECK(lengths.size() > 1);  // heads really end up with different lengths
  };
  SECTION("head-major cache") {
    Generation g(260, 1);
    run(g);
  }
  SECTION("token-major cache") {
    Generation g(260, 2, {Axis::kBatch, Axis::kSeq, Axis::kHead, Axis::kDim});
    run(g);
  }
}

TEST_CASE("DMS on a paged cache removes what it removes on a strided one", "[dms]") {
  // The same generation into a strided cache and into a paged one (one block-table row per sequence,
  // NHD pages of 8, shuffled pool): after every pass both hold the same entries in the same slots.
  Generation g(120, 13);
  std::int64_t const page = 8, per_row = (g.cap + page - 1) / page, pages = kB * per_row;
  std::vector<std::int32_t> table(static_cast<std::size_t>(pages));
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), std::mt19937(14));
  auto const layout = make_paged_layout(g.extents, PagedConfig{PageTable::kPerSequence, PageOrder::kNHD, page, pages,
                                                               table.data(), per_row});
  std::vector<float> k(static_cast<std::size_t>(pages * layout.page_stride)), v(k.size());
  std::vector<std::int32_t> lengths(g.lengths), positions(g.positions);
  DMSPress<KnormPress> strided(KnormPress{}, DMSOptions{kThreshold, 6, true}, shape());
  DMSPress<KnormPress> paged(KnormPress{}, DMSOptions{kThreshold, 6, true}, shape());
  for (int pass = 0; pass < 40; ++pass) {
    std::int64_t const q = pass == 0 ? 30 : (pass % 10 == 0 ? 3 : 1);
    auto const obs = g.forward(q);
    auto const src = g.view();
    for (std::int64_t r = 0; r < kB * kH; ++r)
      for (std::int32_t s = g.lengths[static_cast<std::size_t>(r)] - static_cast<std::int32_t>(q); s < g.lengths[static_cast<std::size_t>(r)]; ++s) {
        for (std::int64_t c = 0; c < kD; ++c) {
          k[static_cast<std::size_t>(layout.offset(r / kH, r % kH, s, c))] = src.key(r / kH, r % kH, s, c);
          v[static_cast<std::size_t>(layout.offset(r / kH, r % kH, s, c))] = src.value(r / kH, r % kH, s, c);
        }
        positions[static_cast<std::size_t>(r * g.cap + s)] = g.positions[static_cast<std::size_t>(r * g.cap + s)];
        ++lengths[static_cast<std::size_t>(r)];
      }
    auto const view = make_cache_view(k.data(), v.data(), g.extents, layout, layout, lengths.data(), positions.data());
    CHECK(strided.step(cpu, obs, g.view()) == paged.step(cpu, obs, view));
    REQUIRE(lengths == g.lengths);
    for (std::int64_t r = 0; r < kB * kH; ++r)
      for (std::int32_t s = 0; s < lengths[static_cast<std::size_t>(r)]; ++s) {
        REQUIRE(positions[static_cast<std::size_t>(r * g.cap + s)] == g.positions[static_cast<std::size_t>(r * g.cap + s)]);
        for (std::int64_t c = 0; c < kD; ++c) REQUIRE(view.key(r / kH, r % kH, s, c) == src.key(r / kH, r % kH, s, c));
      }
  }
  g.check(g.next - 6);
}

TEST_CASE("DMS without decoding decides only the prefill", "[dms]") {
  Generation g(80, 3);
  DMSPress<KnormPress> dms(KnormPress{}, DMSOptions{kThreshold, 8, false}, shape());
  CHECK(dms.step(cpu, g.forward(40), g.view()));
  g.check(32);
  auto expected = g.lengths;
  for (auto& n : expected) n += 10;
  for (int s = 0; s < 10; ++s) CHECK_FALSE(dms.step(cpu, g.forward(1), g.view()));
  CHECK(g.lengths == expected);
  std::int64_t removed = 0;
  for (std::int64_t r = 0; r < kB * kH; ++r) removed += 40 + 10 - g.lengths[static_cast<std::size_t>(r)];
  CHECK(dms.removed(0) == removed);
  CHECK(dms.compression_ratio() == Approx(static_cast<double>(removed) / (kB * kH * 40)).epsilon(1e-15));
}

TEST_CASE("DMS with a zero window decides every token at once", "[dms]") {
  Generation g(64, 4);
  DMSPress<KnormPress> dms(KnormPress{}, DMSOptions{kThreshold, 0, true}, shape());
  dms.step(cpu, g.forward(20), g.view());
  g.check(20);
  for (int s = 0; s < 30; ++s) {
    dms.step(cpu, g.forward(1), g.view());
    g.check(g.next);
    CHECK(dms.pending(0) == 0);
  }
}

TEST_CASE("DMS compression_ratio is the removed fraction averaged over layers (kvpress's test, Random, window 0)", "[dms]") {
  Generation g0(60, 5), g1(60, 6);
  DMSPress<RandomPress> dms(RandomPress{0.0, 7}, DMSOptions{0.5f, 0, true}, shape(2));
  dms.step(cpu, g0.forward(20, 0), g0.view());
  dms.step(cpu, g1.forward(20, 1), g1.view());
  for (int s = 0; s < 10; ++s) {
    dms.step(cpu, g0.forward(1, 0), g0.view());
    dms.step(cpu, g1.forward(1, 1), g1.view());
  }
  double fraction = 0.0;
  for (auto* g : {&g0, &g1}) {
    std::int64_t removed = 0;
    for (auto n : g->lengths) removed += 30 - n;
    fraction += static_cast<double>(removed) / (kB * kH * 30) / 2.0;
  }
  CHECK(fraction > 0.2);
  CHECK(fraction < 0.8);
  CHECK(dms.compression_ratio() == Approx(fraction).epsilon(1e-15));
}

namespace {

/// Records the keys the inner press can read; scores an entry by its key's first channel.
struct ChunkRecorder {
  double compression_ratio = 0.0;
  std::vector<std::vector<float>>* seen = nullptr;  // per row: the keys of its view, flattened

  template <class T, class L>
  std::size_t workspace_bytes(CpuDevice const&, Observation<T> const&, KVCacheView<T, L> const&) const {
    return 0;
  }
  template <class T, class L>
  void score(CpuDevice const&, Observation<T> const&, KVCacheView<T, L> const& cache, float* scores, Workspace&) const {
    std::int64_t const heads = cache.extents.kv_heads;
    seen->assign(static_cast<std::size_t>(cache.extents.batch * heads), {});
    for (std::int64_t r = 0; r < cache.extents.batch * heads; ++r)
      for (std::int32_t s = 0; s < cache.lengths[r]; ++s) {
        for (std::int64_t c = 0; c < cache.extents.head_dim; ++c)
          (*seen)[static_cast<std::size_t>(r)].push_back(cache.key(r / heads, r % heads, s, c));
        scores[r * cache.extents.capacity + s] = cache.key(r / heads, r % heads, s, 0);
      }
  }
};

}  // namespace

TEST_CASE("DMS scores only the chunk's new entries, through a per-row offset view", "[dms]") {
  Generation g(64, 8);
  std::vector<std::vector<float>> seen;
  DMSPress<ChunkRecorder> dms(ChunkRecorder{0.0, &seen}, DMSOptions{0.0f, 2, true}, shape());
  dms.step(cpu, g.forward(30), g.view());
  std::set<std::int32_t> const ragged(g.lengths.begin(), g.lengths.end());
  REQUIRE(ragged.size() > 1);  // the rows now differ in length
  auto const obs = g.forward(4);
  dms.step(cpu, obs, g.view());
  for (std::int64_t r = 0; r < kB * kH; ++r) {
    REQUIRE(seen[static_cast<std::size_t>(r)].size() == static_cast<std::size_t>(4 * kD));
    for (std::int64_t t = 0; t < 4; ++t)
      for (std::int64_t c = 0; c < kD; ++c)
        REQUIRE(seen[static_cast<std::size_t>(r)][static_cast<std::size_t>(t * kD + c)] ==
                g.original[static_cast<std::size_t>(r)].at(obs.position + t)[static_cast<std::size_t>(c)]);
  }
}

TEST_CASE("a prefill starts a new sequence and reset forgets everything", "[dms]") {
  Generation g(80, 9);
  DMSPress<KnormPress> dms(KnormPress{}, DMSOptions{kThreshold, 4, true}, shape());
  dms.step(cpu, g.forward(20), g.view());
  CHECK(dms.removed(0) > 0);
  Generation fresh(80, 10);
  dms.step(cpu, fresh.forward(12), fresh.view());
  fresh.check(8);
  CHECK(dms.pending(0) == 4);
  dms.reset();
  CHECK(dms.pending(0) == 0);
  CHECK_THROWS_WITH(dms.compression_ratio(), Contains("only after a prefill"));
}

TEST_CASE("DMS over a half cache", "[dms]") {
  kvc_test::OwnedCache<half> cache(kB, kH, 40, kD);
  cache.fill_random(11);
  cache.lengths.assign(static_cast<std::size_t>(kB * kH), 30);
  // Expected: of the 20 entries that leave the window of 10, those with −‖k‖ < threshold go.
  std::vector<std::int32_t> expected;
  for (std::int64_t r = 0; r < kB * kH; ++r) {
    std::int32_t n = 30;
    for (std::int64_t s = 0; s < 20; ++s) {
      double ss = 0.0;
      for (std::int64_t c = 0; c < kD; ++c) {
        double const x = to_float(cache.k[static_cast<std::size_t>((r * 40 + s) * kD + c)]);
        ss += x * x;
      }
      n -= -std::sqrt(ss) < static_cast<double>(kThreshold);
    }
    expected.push_back(n);
  }
  DMSPress<KnormPress> dms(KnormPress{}, DMSOptions{kThreshold, 10, true}, shape());
  Observation<half> obs;
  obs.chunk_length = 30;
  dms.step(cpu, obs, cache.view());
  CHECK(cache.lengths == expected);
}

TEST_CASE("DMS rejects bad input, naming the argument and the value", "[dms][errors]") {
  SECTION("threshold not set") {
    CHECK_THROWS_WITH(DMSPress<KnormPress>(KnormPress{}, DMSOptions{}, shape()), Contains("threshold must be set") && Contains("nan"));
  }
  SECTION("infinite threshold") {
    CHECK_THROWS_WITH(DMSPress<KnormPress>(KnormPress{}, DMSOptions{INFINITY, 8, false}, shape()),
                      Contains("threshold must be set to a finite value, got inf"));
  }
  SECTION("negative window") {
    CHECK_THROWS_WITH(DMSPress<KnormPress>(KnormPress{}, DMSOptions{0.0f, -1, false}, shape()),
                      Contains("sliding_window_size must be non-negative, got -1"));
  }
  SECTION("no layers") {
    CHECK_THROWS_WITH(DMSPress<KnormPress>(KnormPress{}, DMSOptions{0.0f, 8, false}, DMSStateShape{0, kB, kH}),
                      Contains("shape.num_layers must be positive, got 0"));
  }
  SECTION("no kv heads") {
    CHECK_THROWS_WITH(DMSPress<KnormPress>(KnormPress{}, DMSOptions{0.0f, 8, false}, DMSStateShape{1, kB, 0}),
                      Contains("shape.kv_heads must be positive, got 0"));
  }

  Generation g(64, 12);
  DMSPress<KnormPress> dms(KnormPress{}, DMSOptions{kThreshold, 8, true}, shape());
  SECTION("layer out of range") {
    auto obs = g.forward(10);
    obs.layer_idx = 2;
    CHECK_THROWS_WITH(dms.step(cpu, obs, g.view()), Contains("observation.layer_idx = 2"));
  }
  SECTION("negative position") {
    auto obs = g.forward(10);
    obs.position = -1;
    CHECK_THROWS_WITH(dms.step(cpu, obs, g.view()), Contains("observation.position must be non-negative, got -1"));
  }
  SECTION("no chunk length") {
    auto obs = g.forward(10);
    obs.chunk_length = 0;
    CHECK_THROWS_WITH(dms.step(cpu, obs, g.view()), Contains("must give the number of new tokens, got 0"));
  }
  SECTION("cache shape differs from the state's") {
    kvc_test::OwnedCache<float> other(kB, kH + 1, 64, kD);
    auto const obs = g.forward(10);
    CHECK_THROWS_WITH(dms.step(cpu, obs, other.view()), Contains("kv_heads = 4] does not match"));
  }
  SECTION("a decoding step before any prefill") {
    g.next = 5;
    CHECK_THROWS_WITH(dms.step(cpu, g.forward(1), g.view()), Contains("no prefill"));
  }
  SECTION("a chunk longer than a row") {
    auto obs = g.forward(10);
    obs.chunk_length = 11;
    CHECK_THROWS_WITH(dms.step(cpu, obs, g.view()), Contains("row 0 holds 10 entries"));
  }
  SECTION("workspace too small") {
    auto const obs = g.forward(10);
    std::vector<std::byte> ws(dms.workspace_bytes(cpu, obs, g.view()) / 4);
    CHECK_THROWS_WITH(dms.step(cpu, obs, g.view(), Workspace(ws.data(), ws.size())), Contains("workspace too small"));
  }
  SECTION("a non-finite score from the inner press's input") {
    auto obs = g.forward(10);
    g.k[3] = NAN;
    CHECK_THROWS_WITH(dms.step(cpu, obs, g.view()), Contains("is not finite"));
  }
}

}  // namespace KVC_TEST_TU
