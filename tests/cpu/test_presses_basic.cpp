// StreamingLLM, Random, KeyDiff, LagKV and Q-Filter: scores against independent double-precision
// re-derivations, the top-n_kept invariant of compress, layouts, 16-bit storage and bad input.
#include <algorithm>
#include <array>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <set>
#include <type_traits>
#include <utility>
#include <vector>

#include "kvcompress/press/key_diff.hpp"
#include "kvcompress/press/lag_kv.hpp"
#include "kvcompress/press/q_filter.hpp"
#include "kvcompress/press/random.hpp"
#include "kvcompress/press/streaming_llm.hpp"
#include "test_util.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using namespace kvcompress;

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr std::array<Axis, 4> kBHSD{Axis::kBatch, Axis::kHead, Axis::kSeq, Axis::kDim};
constexpr std::array<Axis, 4> kBSHD{Axis::kBatch, Axis::kSeq, Axis::kHead, Axis::kDim};
constexpr std::array<Axis, 4> kBHDS{Axis::kBatch, Axis::kHead, Axis::kDim, Axis::kSeq};

/// A cache's logical content, [batch, heads, capacity, dim] row-major, with per-row lengths. Slots at
/// or beyond a row's length hold NaN, so a press that reads past a length shows up at once.
struct Logical {
  std::int64_t batch, heads, cap, dim;
  std::vector<float> k, v;
  std::vector<std::int32_t> lengths;

  Logical(std::int64_t b, std::int64_t h, std::int64_t c, std::int64_t d, std::vector<std::int32_t> lens,
          std::uint32_t seed)
      : batch(b), heads(h), cap(c), dim(d), lengths(std::move(lens)) {
    REQUIRE(static_cast<std::int64_t>(lengths.size()) == b * h);
    k = kvc_test::random_vector(static_cast<std::size_t>(b * h * c * d), seed);
    v = kvc_test::random_vector(k.size(), seed + 1000u);
    for (std::int64_t r = 0; r < b * h; ++r)
      for (std::int64_t s = lengths[r]; s < c; ++s)
        for (std::int64_t e = 0; e < d; ++e) k[idx(r, s, e)] = v[idx(r, s, e)] = kNaN;
  }
  [[nodiscard]] std::size_t idx(std::int64_t r, std::int64_t s, std::int64_t e) const {
    return static_cast<std::size_t>((r * cap + s) * dim + e);
  }
  [[nodiscard]] float key(std::int64_t r, std::int64_t s, std::int64_t e) const { return k[idx(r, s, e)]; }
  [[nodiscard]] float value(std::int64_t r, std::int64_t s, std::int64_t e) const { return v[idx(r, s, e)]; }
  /// Rounds every element through storage type T (what a T cache of this content holds).
  template <class T>
  void round_to() {
    for (auto& x : k) x = to_float(from_float<T>(x));
    for (auto& x : v) x = to_float(from_float<T>(x));
  }
};

/// A cache of storage type T in any axis order and innermost stride, filled from a Logical; the
/// gaps of a non-unit innermost stride hold NaN. positions[r, s] = s, so after compress they tell
/// which original entries were kept.
template <class T>
struct StridedCache {
  CacheExtents extents;
  StridedLayout layout;
  std::vector<T> k, v;
  std::vector<std::int32_t> lengths, positions;

  explicit StridedCache(Logical const& src, std::array<Axis, 4> order = kBHSD, std::int64_t innermost = 1)
      : extents{src.batch, src.heads, src.cap, src.dim},
        layout(make_strided_layout(extents, order, innermost)),
        lengths(src.lengths),
        positions(static_cast<std::size_t>(src.batch * src.heads * src.cap)) {
    auto const span = static_cast<std::size_t>(detail::checked_span(extents, layout, "test"));
    k.assign(span, from_float<T>(kNaN));
    v.assign(span, from_float<T>(kNaN));
    for (std::int64_t b = 0; b < src.batch; ++b)
      for (std::int64_t h = 0; h < src.heads; ++h)
        for (std::int64_t s = 0; s < src.cap; ++s) {
          std::int64_t const r = b * src.heads + h;
          positions[static_cast<std::size_t>(r * src.cap + s)] = static_cast<std::int32_t>(s);
          for (std::int64_t e = 0; e < src.dim; ++e) {
            auto const o = static_cast<std::size_t>(layout.offset(b, h, s, e));
            k[o] = from_float<T>(src.key(r, s, e));
            v[o] = from_float<T>(src.value(r, s, e));
          }
        }
  }
  KVCacheView<T> view() {
    return make_cache_view(k.data(), v.data(), extents, layout, lengths.data(), positions.data());
  }
  [[nodiscard]] float key(std::int64_t r, std::int64_t s, std::int64_t e) const {
    return to_float(k[static_cast<std::size_t>(layout.offset(r / extents.kv_heads, r % extents.kv_heads, s, e))]);
  }
  [[nodiscard]] float value(std::int64_t r, std::int64_t s, std::int64_t e) const {
    return to_float(v[static_cast<std::size_t>(layout.offset(r / extents.kv_heads, r % extents.kv_heads, s, e))]);
  }
  [[nodiscard]] std::int32_t position(std::int64_t r, std::int64_t s) const {
    return positions[static_cast<std::size_t>(r * extents.capacity + s)];
  }
};

// ---- Independent double-precision re-derivations (one row at a time) -------------------------------

std::int64_t py_kept(std::int64_t n, double r) {  // kvpress compute_n_kept
  return std::max<std::int64_t>(1, static_cast<std::int64_t>(static_cast<double>(n) * (1.0 - r)));
}

std::vector<double> ref_streaming(std::int64_t n, double ratio, std::int64_t sink) {
  std::vector<double> s(static_cast<std::size_t>(n), 1.0);
  std::int64_t const pruned = n - py_kept(n, ratio);
  for (std::int64_t i = sink; i < std::min(n, sink + pruned); ++i) s[static_cast<std::size_t>(i)] = 0.0;
  return s;
}

std::vector<double> ref_keydiff(Logical const& c, std::int64_t r) {
  std::int64_t const n = c.lengths[static_cast<std::size_t>(r)], d = c.dim;
  auto norm = [&](std::int64_t i) {
    double ss = 0;
    for (std::int64_t e = 0; e < d; ++e) ss += double(c.key(r, i, e)) * c.key(r, i, e);
    return std::sqrt(ss);
  };
  std::vector<double> anchor(static_cast<std::size_t>(d), 0.0);
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t e = 0; e < d; ++e) anchor[static_cast<std::size_t>(e)] += c.key(r, i, e) / std::max(norm(i), 1e-12) / double(n);
  double an = 0;
  for (double a : anchor) an += a * a;
  an = std::max(std::sqrt(an), 1e-8);
  std::vector<double> s(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    double cos = 0;
    for (std::int64_t e = 0; e < d; ++e)
      cos += (c.key(r, i, e) / std::max(norm(i), 1e-8)) * (anchor[static_cast<std::size_t>(e)] / an);
    s[static_cast<std::size_t>(i)] = -cos;
  }
  return s;
}

std::vector<double> ref_qfilter(Logical const& c, std::int64_t r, std::vector<float> const& filters, int layer) {
  std::int64_t const n = c.lengths[static_cast<std::size_t>(r)], d = c.dim, h = r % c.heads;
  std::vector<double> s(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    double dot = 0;
    for (std::int64_t e = 0; e < d; ++e)
      dot += double(filters[static_cast<std::size_t>((layer * c.heads + h) * d + e)]) * c.key(r, i, e);
    s[static_cast<std::size_t>(i)] = -dot;
  }
  return s;
}

/// LagKV with the documented decisions: zero reference range → x̂ = 0; rank ties by position.
std::vector<double> ref_lagkv(Logical const& c, std::int64_t r, std::int64_t sink, std::int64_t lag, bool cross) {
  std::int64_t const n = c.lengths[static_cast<std::size_t>(r)], d = c.dim;
  std::vector<double> s(static_cast<std::size_t>(n), 1.0);
  if (n < sink + 2 * lag) {
    for (std::int64_t i = sink; i < n; ++i) s[static_cast<std::size_t>(i)] = double(i - sink) / double(n - sink);
    return s;
  }
  std::int64_t const m = (n - sink) / lag;
  auto partition = [&](bool use_keys, std::int64_t p) {
    auto x = [&](std::int64_t i, std::int64_t e) { return double(use_keys ? c.key(r, i, e) : c.value(r, i, e)); };
    std::int64_t const first = sink + p * lag, ref = first + lag;
    std::vector<double> sigma(static_cast<std::size_t>(lag));
    for (std::int64_t t = 0; t < lag; ++t) {
      std::vector<double> xh(static_cast<std::size_t>(d));
      for (std::int64_t e = 0; e < d; ++e) {
        double lo = x(ref, e), hi = x(ref, e);
        for (std::int64_t j = ref; j < ref + lag; ++j) lo = std::min(lo, x(j, e)), hi = std::max(hi, x(j, e));
        xh[static_cast<std::size_t>(e)] = hi > lo ? (x(first + t, e) - lo) / (hi - lo) : 0.0;
      }
      double const mean = std::accumulate(xh.begin(), xh.end(), 0.0) / double(d);
      double ss = 0;
      for (double y : xh) ss += (y - mean) * (y - mean);
      sigma[static_cast<std::size_t>(t)] = std::sqrt(ss / double(d - 1));
    }
    double const mx = *std::max_element(sigma.begin(), sigma.end());
    double tot = 0;
    for (double& y : sigma) tot += (y = std::exp(y - mx));
    for (double& y : sigma) y /= tot;
    return sigma;
  };
  for (std::int64_t p = 0; p + 1 < m; ++p) {
    auto const sk = partition(true, p), sv = partition(false, p);
    std::vector<double> sc(static_cast<std::size_t>(lag));
    for (std::size_t t = 0; t < sc.size(); ++t) sc[t] = (sk[t] + sv[t]) / 2;
    if (!cross) {  // rank = number of entries below, ties broken by position
      std::vector<double> rank(sc.size());
      for (std::size_t t = 0; t < sc.size(); ++t) {
        std::size_t below = 0;
        for (std::size_t u = 0; u < sc.size(); ++u) below += (sc[u] < sc[t] || (sc[u] == sc[t] && u < t));
        rank[t] = double(below) / double(lag);
      }
      sc = rank;
    }
    for (std::int64_t t = 0; t < lag; ++t) s[static_cast<std::size_t>(sink + p * lag + t)] = sc[static_cast<std::size_t>(t)];
  }
  return s;
}

template <class RefFn>
void check_scores(Logical const& c, std::vector<float> const& got, RefFn&& ref) {
  for (std::int64_t r = 0; r < c.batch * c.heads; ++r) {
    std::vector<double> const want = ref(r);
    REQUIRE(static_cast<std::int64_t>(want.size()) == c.lengths[static_cast<std::size_t>(r)]);
    for (std::int64_t i = 0; i < static_cast<std::int64_t>(want.size()); ++i) {
      CAPTURE(r, i);
      CHECK(got[static_cast<std::size_t>(r * c.cap + i)] ==
            Approx(want[static_cast<std::size_t>(i)]).epsilon(1e-5).margin(1e-6));
    }
  }
}

/// compress keeps kept_count(n, r) entries per row, in position order, whose scores (taken before
/// compression) are all ≥ every dropped score; K and V moved with them. Returns the kept positions.
template <class Press>
std::vector<std::vector<std::int32_t>> check_topk_invariant(Press const& press, Logical const& c,
                                                            Observation<float> const& obs = {}) {
  StridedCache<float> cache(c);
  auto const scores = kvcompress::score(cpu, press, obs, cache.view());
  compress(cpu, press, obs, cache.view());
  std::vector<std::vector<std::int32_t>> kept_all;
  for (std::int64_t r = 0; r < c.batch * c.heads; ++r) {
    CAPTURE(press.compression_ratio, r);
    std::int32_t const n = c.lengths[static_cast<std::size_t>(r)];
    std::int32_t const want = n == 0 ? 0 : static_cast<std::int32_t>(py_kept(n, press.compression_ratio));
    REQUIRE(cache.lengths[static_cast<std::size_t>(r)] == want);
    std::vector<std::int32_t> kept;
    for (std::int32_t j = 0; j < want; ++j) kept.push_back(cache.position(r, j));
    REQUIRE(std::is_sorted(kept.begin(), kept.end()));
    REQUIRE(std::adjacent_find(kept.begin(), kept.end()) == kept.end());
    std::set<std::int32_t> const kept_set(kept.begin(), kept.end());
    float min_kept = std::numeric_limits<float>::infinity(), max_dropped = -min_kept;
    for (std::int32_t s = 0; s < n; ++s) {
      float const sc = scores[static_cast<std::size_t>(r * c.cap + s)];
      if (kept_set.count(s)) min_kept = std::min(min_kept, sc);
      else max_dropped = std::max(max_dropped, sc);
    }
    CHECK(min_kept >= max_dropped);
    for (std::int32_t j = 0; j < want; ++j)
      for (std::int64_t e = 0; e < c.dim; ++e) {
        CHECK(cache.key(r, j, e) == c.key(r, kept[static_cast<std::size_t>(j)], e));
        CHECK(cache.value(r, j, e) == c.value(r, kept[static_cast<std::size_t>(j)], e));
      }
    kept_all.push_back(kept);
  }
  return kept_all;
}

std::vector<float> random_filters(int layers, std::int64_t heads, std::int64_t d, std::uint32_t seed) {
  return kvc_test::random_vector(static_cast<std::size_t>(layers * heads * d), seed);
}

Observation<float> layer_obs(int layer, int layers) {
  Observation<float> obs;
  obs.layer_idx = layer;
  obs.num_layers = layers;
  return obs;
}

// Per-row lengths used throughout: batch 2 × 3 heads, capacity 61.
std::vector<std::int32_t> const kLens{61, 40, 23, 52, 37, 58};

}  // namespace

// ---- StreamingLLM ------------------------------------------------------------------------------------

TEST_CASE("StreamingLLM scores: 1 everywhere, 0 from n_sink to n_sink + n_pruned", "[press]") {
  Logical const c(2, 3, 61, 8, kLens, 1);
  for (double ratio : {0.1, 0.37, 0.5, 0.9, 0.99})
    for (std::int64_t sink : {0, 4, 7}) {
      CAPTURE(ratio, sink);
      StridedCache<float> cache(c);
      auto const got = kvcompress::score(cpu, StreamingLLMPress{ratio, sink}, Observation<float>{}, cache.view());
      check_scores(c, got, [&](std::int64_t r) { return ref_streaming(c.lengths[static_cast<std::size_t>(r)], ratio, sink); });
    }
}

TEST_CASE("StreamingLLM keeps exactly the sinks and the last n_kept - n_sink entries", "[press]") {
  Logical const c(2, 3, 61, 8, kLens, 2);
  for (double ratio : {0.1, 0.5, 0.9}) {
    StreamingLLMPress const press{ratio, 4};
    auto const kept = check_topk_invariant(press, c);
    for (std::size_t r = 0; r < kept.size(); ++r) {
      std::int32_t const n = c.lengths[r];
      auto const n_kept = static_cast<std::int32_t>(kept_count(n, ratio));
      std::vector<std::int32_t> want;
      for (std::int32_t s = 0; s < std::min(4, n_kept); ++s) want.push_back(s);
      for (std::int32_t s = n - (n_kept - 4); s < n && n_kept > 4; ++s) want.push_back(s);
      CAPTURE(ratio, r);
      CHECK(kept[r] == want);
    }
  }
}

TEST_CASE("StreamingLLM with n_kept below n_sink keeps sinks only, n_sink = 0 keeps the newest", "[press]") {
  Logical const c(1, 1, 20, 4, {20}, 3);
  auto const kept = check_topk_invariant(StreamingLLMPress{0.85, 4}, c);  // n_kept = int(3.0000000000000004) = 3
  CHECK(kept[0] == std::vector<std::int32_t>{0, 1, 2});
  auto const one = check_topk_invariant(StreamingLLMPress{0.9, 4}, c);  // int(1.9999999999999996) = 1
  CHECK(one[0] == std::vector<std::int32_t>{0});
  auto const newest = check_topk_invariant(StreamingLLMPress{0.99, 0}, c);  // int(0.2) = 0, clamped to 1
  CHECK(newest[0] == std::vector<std::int32_t>{19});
}

TEST_CASE("StreamingLLM rejects rows not longer than n_sink and a negative n_sink", "[press]") {
  Logical const c(1, 2, 16, 4, {16, 4}, 4);
  StridedCache<float> cache(c);
  auto const run = [&](StreamingLLMPress const& p) {
    return kvcompress::score(cpu, p, Observation<float>{}, cache.view());
  };
  CHECK_THROWS_AS(run(StreamingLLMPress{0.5, 4}), Error);
  CHECK_THROWS_WITH(run(StreamingLLMPress{0.5, 4}),
                    Catch::Contains("n_sink = 4") && Catch::Contains("n = 4") && Catch::Contains("kv head 1"));
  CHECK_THROWS_WITH(run(StreamingLLMPress{0.5, -1}), Catch::Contains("n_sink") && Catch::Contains("-1"));
  CHECK_THROWS_WITH(run(StreamingLLMPress{1.5, 2}), Catch::Contains("compression_ratio") && Catch::Contains("1.5"));
}

// ---- Random ------------------------------------------------------------------------------------------

TEST_CASE("RandomPress streams are SplitMix64 (reference vector)", "[press]") {
  // Vigna's splitmix64.c from state 1234567.
  CHECK(detail::splitmix64_at(1234567u, 0) == 6457827717110365317ull);
  CHECK(detail::splitmix64_at(1234567u, 1) == 3203168211198807973ull);
  CHECK(detail::splitmix64_at(1234567u, 2) == 9817491932198370423ull);
}

TEST_CASE("RandomPress: uniform on 0 to 1, reproducible with a seed, thread- and capacity-independent", "[press]") {
  Logical const c(2, 3, 61, 4, kLens, 5);
  StridedCache<float> cache(c);
  RandomPress const seeded{0.5, 42u};
  auto const a = kvcompress::score(cpu, seeded, Observation<float>{}, cache.view());
  auto const b = kvcompress::score(cpu, seeded, Observation<float>{}, cache.view());
  auto const one = kvcompress::score(CpuDevice{1}, seeded, Observation<float>{}, cache.view());
  auto const two = kvcompress::score(CpuDevice{2}, seeded, Observation<float>{}, cache.view());
  auto const other_seed = kvcompress::score(cpu, RandomPress{0.5, 43u}, Observation<float>{}, cache.view());
  auto const other_layer = kvcompress::score(cpu, seeded, layer_obs(1, 2), cache.view());
  auto const unseeded1 = kvcompress::score(cpu, RandomPress{0.5}, Observation<float>{}, cache.view());
  auto const unseeded2 = kvcompress::score(cpu, RandomPress{0.5}, Observation<float>{}, cache.view());
  // A bigger capacity (same live entries) gives the same row streams.
  Logical wide(2, 3, 90, 4, kLens, 5);
  StridedCache<float> wide_cache(wide);
  auto const w = kvcompress::score(cpu, seeded, Observation<float>{}, wide_cache.view());

  std::size_t differ_seed = 0, differ_layer = 0, differ_unseeded = 0, count = 0;
  double sum = 0;
  for (std::int64_t r = 0; r < 6; ++r)
    for (std::int64_t i = 0; i < kLens[static_cast<std::size_t>(r)]; ++i) {
      auto const k = static_cast<std::size_t>(r * 61 + i);
      CHECK(a[k] >= 0.0f);
      CHECK(a[k] < 1.0f);
      CHECK(a[k] == b[k]);
      CHECK(a[k] == one[k]);
      CHECK(a[k] == two[k]);
      CHECK(a[k] == w[static_cast<std::size_t>(r * 90 + i)]);
      differ_seed += a[k] != other_seed[k];
      differ_layer += a[k] != other_layer[k];
      differ_unseeded += unseeded1[k] != unseeded2[k];
      sum += a[k];
      ++count;
    }
  CHECK(differ_seed > count * 9 / 10);
  CHECK(differ_layer > count * 9 / 10);
  CHECK(differ_unseeded > count * 9 / 10);
  // 271 uniforms: mean 0.5, standard error 0.0175.
  CHECK(sum / double(count) == Approx(0.5).margin(0.08));
  // Rows differ from each other (row 0 vs row 3, both long).
  std::size_t same_rows = 0;
  for (std::int64_t i = 0; i < 40; ++i) same_rows += a[static_cast<std::size_t>(i)] == a[static_cast<std::size_t>(3 * 61 + i)];
  CHECK(same_rows < 3);
}

TEST_CASE("RandomPress compress keeps the top n_kept random scores", "[press]") {
  Logical const c(2, 3, 61, 4, kLens, 6);
  for (double ratio : {0.1, 0.5, 0.9}) (void)check_topk_invariant(RandomPress{ratio, 7u}, c);
}

// ---- KeyDiff -----------------------------------------------------------------------------------------

TEST_CASE("KeyDiff scores: -cos(k, mean normalised key) per row", "[press]") {
  Logical c(2, 3, 61, 16, kLens, 8);
  // A zero key (cos clamps to 0) and a tiny key (norm below both epsilons).
  for (std::int64_t e = 0; e < 16; ++e) {
    c.k[c.idx(1, 5, e)] = 0.0f;
    c.k[c.idx(4, 2, e)] = 1e-14f * static_cast<float>(e + 1);
  }
  StridedCache<float> cache(c);
  auto const got = kvcompress::score(cpu, KeyDiffPress{0.5}, Observation<float>{}, cache.view());
  check_scores(c, got, [&](std::int64_t r) { return ref_keydiff(c, r); });
  CHECK(got[static_cast<std::size_t>(1 * 61 + 5)] == 0.0f);
  for (double ratio : {0.1, 0.5, 0.9}) (void)check_topk_invariant(KeyDiffPress{ratio}, c);
}

TEST_CASE("KeyDiff of identical directions scores -1 everywhere", "[press]") {
  Logical c(1, 1, 9, 4, {9}, 9);
  for (std::int64_t i = 0; i < 9; ++i)
    for (std::int64_t e = 0; e < 4; ++e) c.k[c.idx(0, i, e)] = static_cast<float>((e + 1) * (i + 1));
  StridedCache<float> cache(c);
  auto const got = kvcompress::score(cpu, KeyDiffPress{0.5}, Observation<float>{}, cache.view());
  for (std::size_t i = 0; i < 9; ++i) CHECK(got[i] == Approx(-1.0).epsilon(1e-6));
}

TEST_CASE("KeyDiff and every entry point reject non-finite keys", "[press]") {
  Logical c(1, 2, 12, 4, {12, 12}, 10);
  c.k[c.idx(1, 3, 2)] = std::numeric_limits<float>::infinity();
  StridedCache<float> cache(c);
  CHECK_THROWS_WITH(kvcompress::score(cpu, KeyDiffPress{0.5}, Observation<float>{}, cache.view()),
                    Catch::Contains("keys[0, 1, 3, 2]") && Catch::Contains("not finite"));
  CHECK_THROWS_WITH(compress(cpu, LagKVPress{0.5}, Observation<float>{}, cache.view()), Catch::Contains("keys[0, 1, 3, 2]"));
  CHECK(cache.lengths == c.lengths);  // nothing moved
}

// ---- Q-Filter ----------------------------------------------------------------------------------------

TEST_CASE("QFilter scores: minus the dot product of the layer and head filter with k", "[press]") {
  Logical const c(2, 3, 61, 8, kLens, 11);
  auto const filters = random_filters(4, 3, 8, 12);
  for (int layer : {0, 2, 3}) {
    CAPTURE(layer);
    QFilterPress const press{0.5, filters.data(), 4, 3, 8};
    StridedCache<float> cache(c);
    auto const got = kvcompress::score(cpu, press, layer_obs(layer, 4), cache.view());
    check_scores(c, got, [&](std::int64_t r) { return ref_qfilter(c, r, filters, layer); });
  }
  for (double ratio : {0.1, 0.5, 0.9})
    (void)check_topk_invariant(QFilterPress{ratio, filters.data(), 4, 3, 8}, c, layer_obs(1, 4));
}

TEST_CASE("QFilter rejects missing filters, a bad layer and shape mismatches", "[press]") {
  Logical const c(1, 3, 10, 8, {10, 10, 10}, 13);
  StridedCache<float> cache(c);
  auto filters = random_filters(2, 3, 8, 14);
  auto const run = [&](QFilterPress const& p, int layer) {
    return kvcompress::score(cpu, p, layer_obs(layer, 2), cache.view());
  };
  CHECK_THROWS_WITH(run(QFilterPress{0.5}, 0), Catch::Contains("filters"));
  CHECK_THROWS_WITH(run(QFilterPress{0.5, filters.data(), 0, 3, 8}, 0),
                    Catch::Contains("num_layers") && Catch::Contains("0"));
  CHECK_THROWS_WITH(run(QFilterPress{0.5, filters.data(), 2, 3, 8}, 2),
                    Catch::Contains("layer_idx = 2") && Catch::Contains("num_layers = 2"));
  CHECK_THROWS_WITH(run(QFilterPress{0.5, filters.data(), 2, 3, 8}, -1), Catch::Contains("layer_idx = -1"));
  CHECK_THROWS_WITH(run(QFilterPress{0.5, filters.data(), 2, 4, 8}, 0),
                    Catch::Contains("num_kv_heads = 4") && Catch::Contains("kv_heads = 3"));
  CHECK_THROWS_WITH(run(QFilterPress{0.5, filters.data(), 2, 3, 0}, 0),
                    Catch::Contains("head_dim = 0") && Catch::Contains("head_dim = 8"));
  filters[static_cast<std::size_t>(1 * 24 + 2 * 8 + 5)] = kNaN;
  CHECK_NOTHROW(run(QFilterPress{0.5, filters.data(), 2, 3, 8}, 0));  // only the current layer is read
  CHECK_THROWS_WITH(run(QFilterPress{0.5, filters.data(), 2, 3, 8}, 1),
                    Catch::Contains("filters[1, 2, 5]") && Catch::Contains("not finite"));
}

// ---- LagKV -------------------------------------------------------------------------------------------

TEST_CASE("LagKV short input: sinks 1 and the ramp t / (n - n_sink)", "[press]") {
  // lag 8, sink 4: rows shorter than 20 are short; n ≤ n_sink is all ones.
  Logical const c(1, 4, 19, 6, {19, 10, 4, 2}, 15);
  StridedCache<float> cache(c);
  auto const got = kvcompress::score(cpu, LagKVPress{0.5, 4, 8}, Observation<float>{}, cache.view());
  for (std::int64_t i = 0; i < 4; ++i) CHECK(got[static_cast<std::size_t>(19 + i)] == 1.0f);
  for (std::int64_t t = 0; t < 6; ++t) CHECK(got[static_cast<std::size_t>(19 + 4 + t)] == static_cast<float>(t) / 6.0f);
  for (std::int64_t i = 0; i < 4; ++i) CHECK(got[static_cast<std::size_t>(2 * 19 + i)] == 1.0f);
  for (std::int64_t i = 0; i < 2; ++i) CHECK(got[static_cast<std::size_t>(3 * 19 + i)] == 1.0f);
  check_scores(c, got, [&](std::int64_t r) { return ref_lagkv(c, r, 4, 8, false); });
  // Top-k then keeps the sinks and the most recent entries.
  auto const kept = check_topk_invariant(LagKVPress{0.5, 4, 8}, c);
  CHECK(kept[1] == std::vector<std::int32_t>{0, 1, 2, 3, 9});  // n = 10 keeps 5
}

TEST_CASE("LagKV partitions: rank and cross scoring against a double re-derivation", "[press]") {
  // n = 4 + 3·8 + 5 = 33: partitions P0, P1 scored, tail [20, 33) kept. Other rows: 61 (7 partitions),
  // 40, 23 (2 partitions + 3), 52, 37.
  Logical const c(2, 3, 61, 16, {33, 61, 40, 23, 52, 37}, 16);
  for (bool cross : {false, true}) {
    CAPTURE(cross);
    StridedCache<float> cache(c);
    auto const got = kvcompress::score(cpu, LagKVPress{0.5, 4, 8, cross}, Observation<float>{}, cache.view());
    check_scores(c, got, [&](std::int64_t r) { return ref_lagkv(c, r, 4, 8, cross); });
    // Row 0: sinks and tail score 1; each scored partition holds the ranks {0, 1/8, …, 7/8} (or sums to 1).
    for (std::int64_t i : {0, 1, 2, 3}) CHECK(got[static_cast<std::size_t>(i)] == 1.0f);
    for (std::int64_t i = 20; i < 33; ++i) CHECK(got[static_cast<std::size_t>(i)] == 1.0f);
    for (std::int64_t p = 0; p < 2; ++p) {
      std::vector<float> part(got.begin() + 4 + 8 * p, got.begin() + 12 + 8 * p);
      if (cross) {
        CHECK(std::accumulate(part.begin(), part.end(), 0.0) == Approx(1.0).epsilon(1e-6));
      } else {
        std::sort(part.begin(), part.end());
        for (std::size_t j = 0; j < 8; ++j) CHECK(part[j] == static_cast<float>(j) / 8.0f);
      }
    }
    for (double ratio : {0.1, 0.5, 0.9}) (void)check_topk_invariant(LagKVPress{ratio, 4, 8, cross}, c);
  }
  // Default parameters (n_sink 4, lag 128) on a long row.
  Logical const big(1, 1, 300, 8, {300}, 17);
  StridedCache<float> big_cache(big);
  auto const got = kvcompress::score(cpu, LagKVPress{0.5}, Observation<float>{}, big_cache.view());
  check_scores(big, got, [&](std::int64_t r) { return ref_lagkv(big, r, 4, 128, false); });
}

TEST_CASE("LagKV: a constant reference channel gives x-hat = 0, never NaN, and ties rank by position", "[press]") {
  Logical c(1, 2, 28, 6, {28, 28}, 18);
  for (std::int64_t i = 0; i < 28; ++i) {
    c.k[c.idx(0, i, 2)] = 0.5f;  // one dead key channel in row 0
    c.v[c.idx(0, i, 4)] = -1.0f;  // and one dead value channel
    for (std::int64_t e = 0; e < 6; ++e) c.k[c.idx(1, i, e)] = c.v[c.idx(1, i, e)] = 3.0f;  // row 1 constant
  }
  for (bool cross : {false, true}) {
    StridedCache<float> cache(c);
    auto const got = kvcompress::score(cpu, LagKVPress{0.5, 4, 8, cross}, Observation<float>{}, cache.view());
    for (float x : got) CHECK(std::isfinite(x));
    check_scores(c, got, [&](std::int64_t r) { return ref_lagkv(c, r, 4, 8, cross); });
    for (std::int64_t t = 0; t < 16; ++t)  // constant row: all σ equal → ranks by position / uniform softmax
      CHECK(got[static_cast<std::size_t>(28 + 4 + t)] == (cross ? 0.125f : static_cast<float>(t % 8) / 8.0f));
  }
  // Rank ties inside a partition: the later entry ranks higher, so the last entry of each scored
  // partition (11, 19) gets 7/8; 14 kept = 4 sinks + 8 tail + 11 + 19.
  auto const kept = check_topk_invariant(LagKVPress{0.5, 4, 8}, c);
  CHECK(kept[1] == std::vector<std::int32_t>{0, 1, 2, 3, 11, 19, 20, 21, 22, 23, 24, 25, 26, 27});
}

TEST_CASE("LagKV saturates float overflow instead of producing NaN", "[press]") {
  Logical c(1, 1, 28, 4, {28}, 19);
  for (std::int64_t e = 0; e < 4; ++e) {
    c.k[c.idx(0, 12, e)] = 1e-30f;  // reference P1 = [12, 20): a range of 1e-30 …
    c.k[c.idx(0, 4, e)] = 3e38f;    // … against deviations of 3e38 in P0
    c.k[c.idx(0, 5, e)] = -3e38f;
  }
  for (std::int64_t i = 13; i < 20; ++i)
    for (std::int64_t e = 0; e < 4; ++e) c.k[c.idx(0, i, e)] = 0.0f;
  StridedCache<float> cache(c);
  auto const got = kvcompress::score(cpu, LagKVPress{0.5, 4, 8, true}, Observation<float>{}, cache.view());
  for (std::int64_t i = 0; i < 28; ++i) CHECK(std::isfinite(got[static_cast<std::size_t>(i)]));
}

TEST_CASE("LagKV rejects a bad lag_size, a negative n_sink and head_dim 1 when partitioning", "[press]") {
  Logical const c(1, 1, 30, 1, {30}, 20);
  StridedCache<float> cache(c);
  auto const run = [&](LagKVPress const& p) { return kvcompress::score(cpu, p, Observation<float>{}, cache.view()); };
  CHECK_THROWS_WITH(run(LagKVPress{0.5, 4, 0}), Catch::Contains("lag_size") && Catch::Contains("0"));
  CHECK_THROWS_WITH(run(LagKVPress{0.5, 4, -3}), Catch::Contains("lag_size") && Catch::Contains("-3"));
  CHECK_THROWS_WITH(run(LagKVPress{0.5, -1, 8}), Catch::Contains("n_sink") && Catch::Contains("-1"));
  CHECK_THROWS_WITH(run(LagKVPress{0.5, 4, 8}), Catch::Contains("head_dim = 1"));
  CHECK_NOTHROW(run(LagKVPress{0.5, 4, 16}));  // short row: no standard deviation needed
  // Extreme parameters neither overflow nor size the scratch by lag_size.
  auto const huge = std::numeric_limits<std::int64_t>::max();
  CHECK_NOTHROW(compress(cpu, LagKVPress{0.5, 4, huge}, Observation<float>{}, cache.view()));
  CHECK(cache.lengths[0] == 15);
  CHECK_NOTHROW(run(LagKVPress{0.5, huge, 8}));
}

// ---- Layouts and storage types -----------------------------------------------------------------------

TEMPLATE_TEST_CASE("Strided views in other axis orders score and compact like the contiguous one", "[press]",
                   KeyDiffPress, LagKVPress, StreamingLLMPress, RandomPress, QFilterPress) {
  Logical const c(2, 3, 61, 16, kLens, 21);
  auto const filters = random_filters(1, 3, 16, 22);
  TestType press{};
  press.compression_ratio = 0.5;
  if constexpr (std::is_same_v<TestType, LagKVPress>) press.lag_size = 8;
  if constexpr (std::is_same_v<TestType, RandomPress>) press.seed = 5u;
  if constexpr (std::is_same_v<TestType, QFilterPress>) press = QFilterPress{0.5, filters.data(), 1, 3, 16};

  StridedCache<float> base(c);
  auto const want = kvcompress::score(cpu, press, Observation<float>{}, base.view());
  compress(cpu, press, Observation<float>{}, base.view());

  struct Case {
    std::array<Axis, 4> order;
    std::int64_t innermost;
  };
  for (Case const& lc : {Case{kBSHD, 1}, Case{kBSHD, 3}, Case{kBHDS, 2}}) {
    CAPTURE(lc.innermost);
    StridedCache<float> other(c, lc.order, lc.innermost);
    auto const got = kvcompress::score(cpu, press, Observation<float>{}, other.view());
    for (std::int64_t r = 0; r < 6; ++r)
      for (std::int64_t i = 0; i < c.lengths[static_cast<std::size_t>(r)]; ++i)
        CHECK(got[static_cast<std::size_t>(r * 61 + i)] == want[static_cast<std::size_t>(r * 61 + i)]);
    compress(cpu, press, Observation<float>{}, other.view());
    CHECK(other.lengths == base.lengths);
    for (std::int64_t r = 0; r < 6; ++r)
      for (std::int64_t j = 0; j < base.lengths[static_cast<std::size_t>(r)]; ++j) {
        CHECK(other.position(r, j) == base.position(r, j));
        for (std::int64_t e = 0; e < 16; ++e) {
          CHECK(other.key(r, j, e) == base.key(r, j, e));
          CHECK(other.value(r, j, e) == base.value(r, j, e));
        }
      }
  }
}

TEMPLATE_TEST_CASE("fp16 and bf16 storage: same scores as float storage of the rounded values", "[press]",
                   half, bfloat16) {
  Logical const c(2, 3, 61, 16, kLens, 23);
  Logical rounded = c;
  rounded.round_to<TestType>();
  auto const filters = random_filters(1, 3, 16, 24);
  auto const both = [&](auto const& press, float loose) {
    StridedCache<TestType> low(c, kBSHD);
    StridedCache<float> exact(rounded), full(c);
    auto const got = kvcompress::score(cpu, press, Observation<float>{}, full.view());  // fp32 inputs
    auto const s16 = kvcompress::score(cpu, press, Observation<TestType>{}, low.view());
    auto const s32 = kvcompress::score(cpu, press, Observation<float>{}, exact.view());
    for (std::int64_t r = 0; r < 6; ++r)
      for (std::int64_t i = 0; i < c.lengths[static_cast<std::size_t>(r)]; ++i) {
        auto const k = static_cast<std::size_t>(r * 61 + i);
        CHECK(s16[k] == s32[k]);
        if (loose > 0) CHECK(s16[k] == Approx(got[k]).margin(loose).epsilon(loose));
      }
    compress(cpu, press, Observation<TestType>{}, low.view());
    compress(cpu, press, Observation<float>{}, exact.view());
    CHECK(low.lengths == exact.lengths);
    for (std::int64_t r = 0; r < 6; ++r)
      for (std::int64_t j = 0; j < exact.lengths[static_cast<std::size_t>(r)]; ++j) {
        CHECK(low.position(r, j) == exact.position(r, j));
        CHECK(low.key(r, j, 7) == exact.key(r, j, 7));
        CHECK(low.value(r, j, 3) == exact.value(r, j, 3));
      }
  };
  float const tol = std::is_same_v<TestType, half> ? 2e-3f : 2e-2f;
  SECTION("KeyDiff") { both(KeyDiffPress{0.5}, tol); }
  SECTION("QFilter") { both(QFilterPress{0.5, filters.data(), 1, 3, 16}, 8 * tol); }
  SECTION("LagKV") { both(LagKVPress{0.5, 4, 8}, 0.0f); both(LagKVPress{0.5, 4, 8, true}, 0.0f); }
  SECTION("StreamingLLM") { both(StreamingLLMPress{0.5}, 1e-9f); }
  SECTION("Random") { both(RandomPress{0.5, 3u}, 1e-9f); }
}

}  // namespace KVC_TEST_TU
