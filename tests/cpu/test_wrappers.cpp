// The wrapper presses against double-precision re-derivations of their definitions: AdaKV's
// per-head budgets (heads really keep different numbers of entries and the rest of each row is
// given back), CriticalKV's two stages, Chunk, ChunkKV, Block, Composed and PerLayer as kvpress's
// own tests state them, KeyRerotation for every RoPE variant; ratio 0; other axis orders; a
// non-strided layout; the caller's workspace; and one test per bad input.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <set>
#include <vector>

#include "kvcompress/kvcompress.hpp"
#include "test_util.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using namespace kvcompress;

namespace {

constexpr std::array<Axis, 4> kBHSD{Axis::kBatch, Axis::kHead, Axis::kSeq, Axis::kDim};
constexpr std::array<Axis, 4> kBSHD{Axis::kBatch, Axis::kSeq, Axis::kHead, Axis::kDim};
constexpr std::array<Axis, 4> kBHDS{Axis::kBatch, Axis::kHead, Axis::kDim, Axis::kSeq};

std::size_t at(std::int64_t i) { return static_cast<std::size_t>(i); }

/// A cache in any axis order and innermost stride with positions[r, s] = s, so that after
/// compress the positions tell which original entries were kept.
struct Cache {
  CacheExtents extents;
  StridedLayout layout;
  std::vector<float> k, v;  // in the layout's memory
  std::vector<std::int32_t> lengths, positions;

  Cache(std::int64_t b, std::int64_t h, std::int64_t cap, std::int64_t d, std::vector<std::int32_t> lens,
        std::uint32_t seed, std::array<Axis, 4> order = kBHSD, std::int64_t innermost = 1)
      : extents{b, h, cap, d},
        layout(make_strided_layout(extents, order, innermost)),
        k(at(b * h * cap * d * innermost)),
        v(k.size()),
        lengths(std::move(lens)),
        positions(at(b * h * cap)) {
    auto const kk = kvc_test::random_vector(at(b * h * cap * d), seed),
               vv = kvc_test::random_vector(kk.size(), seed + 1);
    for (std::int64_t r = 0; r < b * h; ++r)
      for (std::int64_t s = 0; s < cap; ++s) {
        positions[at(r * cap + s)] = static_cast<std::int32_t>(s);
        for (std::int64_t e = 0; e < d; ++e) {
          k[at(layout.offset(r / h, r % h, s, e))] = kk[at((r * cap + s) * d + e)];
          v[at(layout.offset(r / h, r % h, s, e))] = vv[at((r * cap + s) * d + e)];
        }
      }
  }
  Cache(std::int64_t b, std::int64_t h, std::int64_t cap, std::int64_t d, std::uint32_t seed)
      : Cache(b, h, cap, d, std::vector<std::int32_t>(at(b * h), static_cast<std::int32_t>(cap)), seed) {}

  KVCacheView<float> view() {
    return make_cache_view(k.data(), v.data(), extents, layout, lengths.data(), positions.data());
  }
  [[nodiscard]] float key(std::int64_t r, std::int64_t s, std::int64_t e) const {
    return k[at(layout.offset(r / extents.kv_heads, r % extents.kv_heads, s, e))];
  }
  [[nodiscard]] float value(std::int64_t r, std::int64_t s, std::int64_t e) const {
    return v[at(layout.offset(r / extents.kv_heads, r % extents.kv_heads, s, e))];
  }
  [[nodiscard]] std::int64_t rows() const { return extents.batch * extents.kv_heads; }
  [[nodiscard]] std::vector<int> kept(std::int64_t r) const {
    return {positions.begin() + r * extents.capacity, positions.begin() + r * extents.capacity + lengths[at(r)]};
  }
  /// -‖k‖ of the original entries in double (Knorm's score) [rows, cap].
  [[nodiscard]] std::vector<double> neg_norms() const {
    std::vector<double> out(at(rows() * extents.capacity));
    for (std::int64_t r = 0; r < rows(); ++r)
      for (std::int64_t s = 0; s < extents.capacity; ++s) {
        double ss = 0.0;
        for (std::int64_t e = 0; e < extents.head_dim; ++e) ss += double(key(r, s, e)) * key(r, s, e);
        out[at(r * extents.capacity + s)] = -std::sqrt(ss);
      }
    return out;
  }
};

/// The n_kept best of s[lo, hi), ascending (ties to the lower index).
std::vector<int> top(std::vector<double> const& s, std::int64_t lo, std::int64_t hi, std::int64_t n_kept) {
  std::vector<int> idx(at(hi - lo));
  std::iota(idx.begin(), idx.end(), static_cast<int>(lo));
  std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return s[at(a)] > s[at(b)]; });
  idx.resize(at(std::min<std::int64_t>(n_kept, hi - lo)));
  std::sort(idx.begin(), idx.end());
  return idx;
}

/// Every kept entry holds its original key and value.
void check_contents(Cache const& before, Cache const& after) {
  for (std::int64_t r = 0; r < after.rows(); ++r) {
    auto const kept = after.kept(r);
    REQUIRE(std::is_sorted(kept.begin(), kept.end()));
    for (std::size_t j = 0; j < kept.size(); ++j)
      for (std::int64_t e = 0; e < after.extents.head_dim; ++e) {
        REQUIRE(after.key(r, std::int64_t(j), e) == before.key(r, kept[j], e));
        REQUIRE(after.value(r, std::int64_t(j), e) == before.value(r, kept[j], e));
      }
  }
}

/// AdaKV by kvpress's formulation, in double: each head's top n_safe scores become +∞, then the
/// Σ (n − n_kept) lowest entries of the sequence are masked. Returns each row's kept slots.
std::vector<std::vector<int>> adakv_reference(std::vector<double> const& s, std::vector<std::int32_t> const& lengths,
                                              std::int64_t batch, std::int64_t heads, std::int64_t cap, double ratio,
                                              double alpha) {
  std::vector<std::vector<int>> kept(at(batch * heads));
  for (std::int64_t b = 0; b < batch; ++b) {
    std::vector<std::pair<double, std::int64_t>> all;  // (score, −id): the larger id is masked first on ties
    std::int64_t masked = 0;
    for (std::int64_t h = 0; h < heads; ++h) {
      std::int64_t const r = b * heads + h, n = lengths[at(r)], n_kept = kept_count(n, ratio);
      std::int64_t safe = std::int64_t(double(n_kept) * alpha);
      if (alpha > 0) safe = n_kept > 0 ? std::max<std::int64_t>(1, safe) : 0;
      auto const safe_set = top(s, r * cap, r * cap + n, safe);
      masked += n - n_kept;
      for (std::int64_t i = 0; i < n; ++i) {
        bool const is_safe = std::binary_search(safe_set.begin(), safe_set.end(), int(r * cap + i));
        all.emplace_back(is_safe ? INFINITY : s[at(r * cap + i)], -(h * cap + i));
      }
    }
    std::sort(all.begin(), all.end());
    std::set<std::int64_t> gone;
    for (std::int64_t j = 0; j < masked; ++j) gone.insert(-all[at(j)].second);
    for (std::int64_t h = 0; h < heads; ++h)
      for (std::int64_t i = 0; i < lengths[at(b * heads + h)]; ++i)
        if (!gone.count(h * cap + i)) kept[at(b * heads + h)].push_back(int(i));
  }
  return kept;
}

/// A cache whose heads differ in spread: head 0's key norms vary a lot, head 1's hardly, so a
/// budget shared across heads splits unevenly.
Cache spread_cache(std::vector<std::int32_t> lens) {
  Cache c(2, 2, 48, 8, std::move(lens), 41);
  for (std::int64_t r = 0; r < c.rows(); ++r)
    for (std::int64_t s = 0; s < 48; ++s) {
      float const scale = r % 2 == 0 ? 0.2f + 3.0f * float(s % 7) / 7.0f : 1.0f + 0.01f * float(s % 5);
      for (std::int64_t e = 0; e < 8; ++e) c.k[at(c.layout.offset(r / 2, r % 2, s, e))] *= scale;
    }
  return c;
}

RotaryEmbedding rope_of(RopeType type, int d) {
  RopeConfig c;
  c.type = type;
  c.head_dim = d;
  c.max_position_embeddings = 32;
  if (type == RopeType::kLinear) c.factor = 4.0;
  if (type == RopeType::kDynamic) c.factor = 2.0;
  if (type == RopeType::kLlama3) {
    c.theta = 500000.0;
    c.factor = 8.0;
    c.original_max_position_embeddings = 16;
  }
  if (type == RopeType::kYarn) {
    c.factor = 4.0;
    c.original_max_position_embeddings = 16;
  }
  return RotaryEmbedding(c);
}

/// W_o [hidden, q_heads·d] and a double re-derivation of u[r, i] = mean_j ‖W_o[:, j·d:(j+1)·d] v_i‖₁.
struct OutputProjection {
  std::int64_t hidden, q_heads, d;
  std::vector<float> w;
  OutputProjection(std::int64_t hid, std::int64_t q, std::int64_t dim, std::uint32_t seed)
      : hidden(hid), q_heads(q), d(dim), w(kvc_test::random_vector(at(hid * q * dim), seed, 0.3f)) {}
  [[nodiscard]] Tensor2<float> tensor() const { return make_tensor2(w.data(), {hidden, q_heads * d}); }
  [[nodiscard]] std::vector<double> norms(Cache const& c) const {
    std::int64_t const heads = c.extents.kv_heads, g = q_heads / heads, cap = c.extents.capacity;
    std::vector<double> u(at(c.rows() * cap), 0.0);
    for (std::int64_t r = 0; r < c.rows(); ++r)
      for (std::int64_t i = 0; i < c.lengths[at(r)]; ++i) {
        for (std::int64_t j = (r % heads) * g; j < (r % heads + 1) * g; ++j)
          for (std::int64_t e = 0; e < hidden; ++e) {
            double y = 0.0;
            for (std::int64_t x = 0; x < d; ++x) y += double(w[at(e * q_heads * d + j * d + x)]) * c.value(r, i, x);
            u[at(r * cap + i)] += std::fabs(y) / double(g);
          }
      }
    return u;
  }
};

}  // namespace

// ---------------------------------------------------------------------------------------------------
// AdaKV
// ---------------------------------------------------------------------------------------------------

TEST_CASE("AdaKV: heads keep different lengths, the sequence's total budget, kvpress's global selection",
          "[wrappers][adakv]") {
  for (double ratio : {0.5, 0.9}) {
    for (double alpha : {0.0, 0.2, 0.5}) {
      CAPTURE(ratio, alpha);
      Cache c = spread_cache({48, 48, 48, 48});
      Cache const before = c;
      auto const s = before.neg_norms();
      AdaKVPress const press{KnormPress{ratio}, alpha};
      compress(cpu, press, Observation<float>{}, c.view());
      auto const want = adakv_reference(s, before.lengths, 2, 2, 48, ratio, alpha);
      std::int64_t const floor = detail::adakv_safe_count(kept_count(48, ratio), alpha);
      CHECK(floor ==
            (alpha == 0.0 ? 0 : std::max<std::int64_t>(1, std::int64_t(double(kept_count(48, ratio)) * alpha))));
      for (std::int64_t b = 0; b < 2; ++b) {
        CHECK(c.lengths[at(2 * b)] + c.lengths[at(2 * b + 1)] == 2 * kept_count(48, ratio));  // the sequence's budget
        CHECK(c.lengths[at(2 * b)] != c.lengths[at(2 * b + 1)]);                              // real per-head lengths
        for (std::int64_t h = 0; h < 2; ++h) CHECK(c.lengths[at(2 * b + h)] >= floor);
      }
      for (std::int64_t r = 0; r < 4; ++r) CHECK(c.kept(r) == want[at(r)]);
      check_contents(before, c);
    }
  }
}

TEST_CASE("AdaKV gives memory back: bytes in use follow the per-head lengths", "[wrappers][adakv]") {
  Cache c = spread_cache({48, 48, 48, 48});
  auto const bytes = [&] {
    std::int64_t live = 0;
    for (auto l : c.lengths) live += l;
    return live * 2 * 8 * std::int64_t(sizeof(float));
  };
  std::int64_t const full = bytes();
  compress(cpu, AdaKVPress{KnormPress{0.75}}, Observation<float>{}, c.view());
  CHECK(bytes() == full / 4);  // int(48·0.25) = 12 of 48 entries per head on average
  CHECK(c.lengths[0] != c.lengths[1]);
}

TEST_CASE("AdaKV with alpha_safeguard 1 is the inner press", "[wrappers][adakv]") {
  Cache a = spread_cache({48, 40, 33, 48}), b = a;
  compress(cpu, AdaKVPress{KnormPress{0.4}, 1.0}, Observation<float>{}, a.view());
  compress(cpu, KnormPress{0.4}, Observation<float>{}, b.view());
  CHECK(a.lengths == b.lengths);
  for (std::int64_t r = 0; r < 4; ++r) CHECK(a.kept(r) == b.kept(r));
}

TEST_CASE("AdaKV on ragged rows: each row's own budget enters the sequence's pool", "[wrappers][adakv]") {
  Cache c = spread_cache({48, 30, 17, 41});
  Cache const before = c;
  compress(cpu, AdaKVPress{KnormPress{0.3}, 0.25}, Observation<float>{}, c.view());
  auto const want = adakv_reference(before.neg_norms(), before.lengths, 2, 2, 48, 0.3, 0.25);
  for (std::int64_t r = 0; r < 4; ++r) CHECK(c.kept(r) == want[at(r)]);
  CHECK(c.lengths[0] + c.lengths[1] == kept_count(48, 0.3) + kept_count(30, 0.3));
  check_contents(before, c);
}

TEST_CASE("AdaKV takes PyramidKV's layer budget as each row's budget", "[wrappers][adakv]") {
  // From given attention: a causal softmax over random logits, so SnapKV's scores are well spread.
  std::int64_t const n = 48, q_heads = 4;
  auto const z = kvc_test::random_vector(at(2 * q_heads * n * n), 3, 2.0f);
  std::vector<float> att(z.size(), 0.0f);
  for (std::int64_t row = 0; row < 2 * q_heads * n; ++row) {
    float sum = 0.0f;
    for (std::int64_t i = 0; i <= row % n; ++i) sum += (att[at(row * n + i)] = std::exp(z[at(row * n + i)]));
    for (std::int64_t i = 0; i <= row % n; ++i) att[at(row * n + i)] /= sum;
  }
  Observation<float> obs;
  obs.attention = make_tensor4(att.data(), {2, q_heads, n, n});
  obs.num_layers = 4;
  obs.layer_idx = 3;
  PyramidKVPress const pyramid{0.5, 4, 5, 20.0};
  Cache c(2, 2, n, 8, 5);
  compress(cpu, AdaKVPress{pyramid, 0.2}, obs, c.view());
  std::int64_t const budget = pyramid.kept_count(n, obs);
  REQUIRE(budget != kept_count(n, 0.5));
  CHECK(c.lengths[0] + c.lengths[1] == 2 * budget);
  CHECK(c.lengths[2] + c.lengths[3] == 2 * budget);
}

// ---------------------------------------------------------------------------------------------------
// CriticalKV and CriticalAdaKV
// ---------------------------------------------------------------------------------------------------

TEST_CASE("CriticalKV scores: stage-1 winners at FLT_MAX, the rest (score + eps)·mean ‖W_o v‖₁",
          "[wrappers][critical]") {
  Cache c(2, 2, 37, 8, {37, 37, 30, 37}, 9);
  OutputProjection const wo(12, 4, 8, 10);
  Observation<float> obs;
  obs.output_projection = wo.tensor();
  double const ratio = 0.4, beta = 0.5, eps = 1e-4;
  CriticalKVPress const press{KnormPress{ratio}, eps, beta};
  auto const got = score(cpu, press, obs, c.view());
  auto const s = c.neg_norms();
  auto const u = wo.norms(c);
  for (std::int64_t r = 0; r < 4; ++r) {
    std::int64_t const n = c.lengths[at(r)];
    std::int64_t const m1 = std::max<std::int64_t>(1, std::int64_t((1.0 - ratio) * double(n) * beta));
    auto const stage1 = top(s, r * 37, r * 37 + n, m1);
    for (std::int64_t i = 0; i < n; ++i) {
      float const g = got[at(r * 37 + i)];
      if (std::binary_search(stage1.begin(), stage1.end(), int(r * 37 + i))) {
        CHECK(g == FLT_MAX);
      } else {
        CHECK(g == Approx((s[at(r * 37 + i)] + eps) * u[at(r * 37 + i)]).epsilon(1e-5));
      }
    }
  }
  compress(cpu, press, obs, c.view());
  for (std::int64_t r = 0; r < 4; ++r) CHECK(c.lengths[at(r)] == kept_count(r == 2 ? 30 : 37, ratio));
}

TEST_CASE("CriticalAdaKV: AdaKV's per-head budgets, stage 1 on the inner score, stage 2 on the weighted one",
          "[wrappers][critical]") {
  Cache c = spread_cache({48, 48, 48, 48});
  Cache const before = c;
  OutputProjection const wo(12, 4, 8, 11);
  Observation<float> obs;
  obs.output_projection = wo.tensor();
  double const ratio = 0.5, alpha = 0.2, beta = 0.5, eps = 1e-4;
  compress(cpu, CriticalAdaKVPress{KnormPress{ratio}, alpha, eps, beta}, obs, c.view());
  auto const s = before.neg_norms();
  auto const u = wo.norms(before);
  auto const budgets = adakv_reference(s, before.lengths, 2, 2, 48, ratio, alpha);
  for (std::int64_t r = 0; r < 4; ++r) {
    std::int64_t const budget = std::int64_t(budgets[at(r)].size());
    std::int64_t const safe = detail::adakv_safe_count(kept_count(48, ratio), alpha);
    auto const forced =
        top(s, r * 48, r * 48 + 48, std::max<std::int64_t>(std::int64_t(float(budget) * float(beta)), safe));
    std::vector<double> stage2(s.size(), 0.0);
    for (std::int64_t i = r * 48; i < r * 48 + 48; ++i)
      stage2[at(i)] = std::binary_search(forced.begin(), forced.end(), int(i)) ? INFINITY : (s[at(i)] + eps) * u[at(i)];
    auto want = top(stage2, r * 48, r * 48 + 48, budget);
    for (int& i : want) i -= int(r * 48);
    CHECK(c.kept(r) == want);
  }
  CHECK(c.lengths[0] != c.lengths[1]);
  check_contents(before, c);
}

// ---------------------------------------------------------------------------------------------------
// Chunk, ChunkKV, Block
// ---------------------------------------------------------------------------------------------------

TEST_CASE("Chunk: n = 256, r = 0.5 keeps 128 for every chunk length, each chunk keeps its own top",
          "[wrappers][chunk]") {
  for (std::int64_t chunk : {2, 4, 8, 128, 100}) {
    CAPTURE(chunk);
    Cache c(1, 2, 256, 8, 13);
    Cache const before = c;
    compress(cpu, ChunkPress{KnormPress{0.5}, chunk}, Observation<float>{}, c.view());
    auto const s = before.neg_norms();
    for (std::int64_t r = 0; r < 2; ++r) {
      std::vector<int> want;
      for (std::int64_t lo = 0; lo < 256; lo += chunk) {
        std::int64_t const hi = std::min<std::int64_t>(256, lo + chunk);
        for (int i : top(s, r * 256 + lo, r * 256 + hi, kept_count(hi - lo, 0.5))) want.push_back(i - int(r * 256));
      }
      CHECK(c.kept(r) == want);
      if (256 % chunk == 0) CHECK(c.lengths[at(r)] == 128);
    }
    check_contents(before, c);
  }
}

TEST_CASE("Chunk hands each chunk its own queries and absolute position", "[wrappers][chunk]") {
  // Expected Attention in chunks of 16 equals Expected Attention on each chunk as a cache of its own.
  std::int64_t const n = 48, chunk = 16, q_heads = 4, d = 8;
  Cache c(1, 2, n, d, 17);
  auto const q = kvc_test::random_vector(at(q_heads * n * d), 18);
  RotaryEmbedding const rope = rope_of(RopeType::kDefault, int(d));
  Observation<float> obs;
  obs.queries = make_tensor4(q.data(), {1, q_heads, n, d});
  obs.rope = &rope;
  obs.position = 100;
  ExpectedAttentionPress ea;
  ea.compression_ratio = 0.5;
  ea.n_sink = 2;
  Cache whole = c;
  compress(cpu, ChunkPress{ea, chunk}, obs, whole.view());
  for (std::int64_t lo = 0; lo < n; lo += chunk) {
    Cache part(1, 2, chunk, d, 0);
    for (std::int64_t r = 0; r < 2; ++r)
      for (std::int64_t s = 0; s < chunk; ++s)
        for (std::int64_t e = 0; e < d; ++e) {
          part.k[at(part.layout.offset(0, r, s, e))] = c.key(r, lo + s, e);
          part.v[at(part.layout.offset(0, r, s, e))] = c.value(r, lo + s, e);
        }
    Observation<float> sub = obs;
    sub.queries = make_tensor4(q.data() + lo * d, {1, q_heads, chunk, d}, obs.queries.strides);
    sub.position = 100 + lo;
    compress(cpu, ea, sub, part.view());
    for (std::int64_t r = 0; r < 2; ++r) {
      auto const got = whole.kept(r);
      std::vector<int> want;
      for (int i : part.kept(r)) want.push_back(i + int(lo));
      std::vector<int> got_chunk;
      for (int i : got)
        if (i >= lo && i < lo + chunk) got_chunk.push_back(i);
      CHECK(got_chunk == want);
    }
  }
}

TEST_CASE("ChunkKV: n = 256, r = 0.5 keeps 128 in whole chunks, the same in every head, chosen by the head-summed mean",
          "[wrappers][chunkkv]") {
  for (std::int64_t chunk : {2, 4, 8, 128, 20}) {
    CAPTURE(chunk);
    Cache c(2, 2, 256, 8, 19);
    Cache const before = c;
    compress(cpu, ChunkKVPress{KnormPress{0.5}, chunk}, Observation<float>{}, c.view());
    auto const s = before.neg_norms();
    for (std::int64_t b = 0; b < 2; ++b) {
      std::int64_t const chunks = (256 + chunk - 1) / chunk;
      std::vector<double> cs(at(chunks), 0.0);
      for (std::int64_t j = 0; j < chunks; ++j) {
        std::int64_t const lo = j * chunk, hi = std::min<std::int64_t>(256, lo + chunk);
        for (std::int64_t h = 0; h < 2; ++h)
          for (std::int64_t i = lo; i < hi; ++i) cs[at(j)] += s[at((b * 2 + h) * 256 + i)];
        cs[at(j)] /= double(hi - lo);
      }
      std::vector<int> want;
      for (int j : top(cs, 0, chunks, std::max<std::int64_t>(1, std::int64_t(double(chunks) * 0.5))))
        for (std::int64_t i = j * chunk; i < std::min<std::int64_t>(256, (j + 1) * chunk); ++i) want.push_back(int(i));
      for (std::int64_t h = 0; h < 2; ++h) CHECK(c.kept(b * 2 + h) == want);
      if (256 % chunk == 0) CHECK(c.lengths[at(b * 2)] == 128);
    }
    check_contents(before, c);
  }
}

TEST_CASE("ChunkKV with no complete chunk is the inner press", "[wrappers][chunkkv]") {
  Cache a(2, 2, 30, 8, 23), b = a;
  compress(cpu, ChunkKVPress{KnormPress{0.5}, 40}, Observation<float>{}, a.view());
  compress(cpu, KnormPress{0.5}, Observation<float>{}, b.view());
  for (std::int64_t r = 0; r < 4; ++r) CHECK(a.kept(r) == b.kept(r));
}

TEST_CASE("Block with a per-entry score equals one global top-k for every block size", "[wrappers][block]") {
  for (std::int64_t block : {2, 4, 8, 128, 256, 7}) {
    CAPTURE(block);
    Cache a(2, 2, 256, 8, {256, 256, 200, 131}, 29), b = a;
    Cache const before = a;
    compress(cpu, BlockPress{KnormPress{0.5}, block}, Observation<float>{}, a.view());
    compress(cpu, KnormPress{0.5}, Observation<float>{}, b.view());
    CHECK(a.lengths == b.lengths);
    for (std::int64_t r = 0; r < 4; ++r) CHECK(a.kept(r) == b.kept(r));
    check_contents(before, a);
  }
}

TEST_CASE("Block scores each block with the survivors so far (KeyDiff's anchor moves)", "[wrappers][block]") {
  Cache c(1, 1, 24, 4, 31);
  Cache const before = c;
  compress(cpu, BlockPress{KeyDiffPress{0.5}, 6}, Observation<float>{}, c.view());
  // Re-derivation: keep [0, 12), then for each block of 6: KeyDiff over survivors ∪ block, best 12.
  std::vector<int> kept(12);
  std::iota(kept.begin(), kept.end(), 0);
  for (int lo = 12; lo < 24; lo += 6) {
    std::vector<int> cur = kept;
    for (int i = lo; i < lo + 6; ++i) cur.push_back(i);
    std::vector<double> anchor(4, 0.0), score(cur.size());
    for (int i : cur) {
      double nn = 0.0;
      for (int e = 0; e < 4; ++e) nn += double(before.key(0, i, e)) * before.key(0, i, e);
      for (int e = 0; e < 4; ++e) anchor[at(e)] += before.key(0, i, e) / std::sqrt(nn) / double(cur.size());
    }
    double an = 0.0;
    for (double x : anchor) an += x * x;
    for (std::size_t j = 0; j < cur.size(); ++j) {
      double dot = 0.0, nn = 0.0;
      for (int e = 0; e < 4; ++e) {
        dot += before.key(0, cur[j], e) * anchor[at(e)];
        nn += double(before.key(0, cur[j], e)) * before.key(0, cur[j], e);
      }
      score[j] = -dot / std::sqrt(nn * an);
    }
    kept.clear();
    for (int j : top(score, 0, std::int64_t(cur.size()), 12)) kept.push_back(cur[at(j)]);
    std::sort(kept.begin(), kept.end());
  }
  CHECK(c.kept(0) == kept);
}

// ---------------------------------------------------------------------------------------------------
// Composed, PerLayer
// ---------------------------------------------------------------------------------------------------

TEST_CASE("Composed applies its presses in turn: Knorm 0.5 twice is Knorm 0.75", "[wrappers][composed]") {
  // int(int(n/2)/2) = int(n/4) for these lengths, and Knorm's score is per entry.
  Cache a(2, 2, 40, 8, {40, 33, 40, 21}, 37), b = a;
  Cache const before = a;
  compress(cpu, ComposedPress{KnormPress{0.5}, KnormPress{0.5}}, Observation<float>{}, a.view());
  compress(cpu, KnormPress{0.75}, Observation<float>{}, b.view());
  CHECK(a.lengths == std::vector<std::int32_t>{10, 8, 10, 5});
  auto const s = before.neg_norms();
  for (std::int64_t r = 0; r < 4; ++r) {
    CHECK(a.kept(r) == b.kept(r));
    std::vector<int> want;
    for (int i : top(s, r * 40, r * 40 + before.lengths[at(r)], a.lengths[at(r)])) want.push_back(i - int(r * 40));
    CHECK(a.kept(r) == want);
  }
}

TEST_CASE("PerLayer: ratios 0.1 and 1 on n = 256 keep 230 and 0", "[wrappers][per_layer]") {
  PerLayerCompressionPress const press{KnormPress{}, {0.1, 1.0}};
  for (int layer : {0, 1}) {
    Cache c(5, 2, 256, 8, 43);
    Observation<float> obs;
    obs.layer_idx = layer;
    obs.num_layers = 2;
    compress(cpu, press, obs, c.view());
    for (auto l : c.lengths) CHECK(l == (layer == 0 ? 230 : 0));
  }
}

// ---------------------------------------------------------------------------------------------------
// KeyRerotation
// ---------------------------------------------------------------------------------------------------

TEST_CASE("KeyRerotation: kept keys equal RoPE of their pre-RoPE keys at 0 … n_kept − 1, for every variant",
          "[wrappers][rerotation]") {
  std::int64_t const n = 40, d = 16;  // n > max_position_embeddings = 32: dynamic NTK rescales
  for (RopeType type :
       {RopeType::kDefault, RopeType::kLinear, RopeType::kDynamic, RopeType::kLlama3, RopeType::kYarn}) {
    for (bool with_positions : {true, false}) {
      CAPTURE(int(type), with_positions);
      RotaryEmbedding const rope = rope_of(type, int(d));
      Cache c(1, 2, n, d, 47);
      auto const pre = c.k;  // BHSD: the pre-RoPE keys
      for (std::int64_t r = 0; r < 2; ++r)
        for (std::int64_t s = 0; s < n; ++s) rope.apply(c.k.data() + (r * n + s) * d, s, n);
      Cache const before = c;
      Observation<float> obs;
      obs.rope = &rope;
      obs.chunk_length = n;  // the prefill that rotated the keys
      auto view = c.view();
      if (!with_positions) view.positions = nullptr;
      compress(cpu, KeyRerotationPress{KnormPress{0.5}}, obs, view);
      auto const s = before.neg_norms();
      for (std::int64_t r = 0; r < 2; ++r) {
        auto const kept = top(s, r * n, r * n + n, kept_count(n, 0.5));
        REQUIRE(c.lengths[at(r)] == std::int32_t(kept.size()));
        for (std::size_t j = 0; j < kept.size(); ++j) {
          std::vector<float> want(pre.begin() + kept[j] * d, pre.begin() + (kept[j] + 1) * d);
          rope.apply(want.data(), std::int64_t(j), n);
          for (std::int64_t e = 0; e < d; ++e) {
            CHECK(c.key(r, std::int64_t(j), e) == Approx(want[at(e)]).margin(2e-5));
            CHECK(c.value(r, std::int64_t(j), e) == before.value(r, kept[j] - r * n, e));
          }
          if (with_positions) CHECK(c.positions[at(r * n) + j] == std::int32_t(j));
        }
      }
    }
  }
}

TEST_CASE("KeyRerotation keeps the inner press's own budgets (AdaKV's per-head lengths)", "[wrappers][rerotation]") {
  Cache a = spread_cache({48, 48, 48, 48}), b = a;
  RotaryEmbedding const rope = rope_of(RopeType::kDefault, 8);
  Observation<float> obs;
  obs.rope = &rope;
  compress(cpu, KeyRerotationPress{AdaKVPress{KnormPress{0.5}}}, obs, a.view());
  compress(cpu, AdaKVPress{KnormPress{0.5}}, obs, b.view());
  CHECK(a.lengths == b.lengths);
  CHECK(a.lengths[0] != a.lengths[1]);
  for (std::int64_t r = 0; r < 4; ++r)
    for (std::int32_t j = 0; j < a.lengths[at(r)]; ++j) CHECK(a.value(r, j, 3) == b.value(r, j, 3));
}

// ---------------------------------------------------------------------------------------------------
// Every wrapper: ratio 0, axis orders, a non-strided layout, the caller's workspace
// ---------------------------------------------------------------------------------------------------

namespace {

struct Inputs {
  OutputProjection wo{12, 4, 8, 53};
  RotaryEmbedding rope = rope_of(RopeType::kLlama3, 8);
  Observation<float> obs;
  Inputs() {
    obs.output_projection = wo.tensor();
    obs.rope = &rope;
  }
};

/// Calls fn(name, press) for every wrapper at ratio r.
template <class Fn>
void for_each_wrapper(double r, Fn&& fn) {
  fn("AdaKV", AdaKVPress{KnormPress{r}});
  fn("CriticalKV", CriticalKVPress{KnormPress{r}});
  fn("CriticalAdaKV", CriticalAdaKVPress{KnormPress{r}});
  fn("ChunkKV", ChunkKVPress{KnormPress{r}, 6});
  fn("Chunk", ChunkPress{KeyDiffPress{r}, 16});
  fn("Block", BlockPress{KeyDiffPress{r}, 8});
  fn("Composed", ComposedPress{KnormPress{r}, KeyDiffPress{r}});
  fn("PerLayer", PerLayerCompressionPress{KnormPress{}, {r}});
  fn("KeyRerotation", KeyRerotationPress{KnormPress{r}});
  fn("EntropyGatedChunkKV", EntropyGatedChunkKVPress{KnormPress{r}, 6, 2});
  fn("Merging", MergingPress{KnormPress{r}, 0.1, 0.75});
  static std::vector<float> const curve = [] {  // [99, 1 layer, 2 heads]: prune t% ± 20 %
    std::vector<float> c(99 * 2);
    for (std::size_t t = 0; t < 99; ++t) {
      c[2 * t] = std::min(1.0f, static_cast<float>(t + 1) / 100.0f + 0.2f);
      c[2 * t + 1] = std::max(0.0f, static_cast<float>(t + 1) / 100.0f - 0.2f);
    }
    return c;
  }();
  LUKVPress<KnormPress> lukv{KnormPress{}, r};
  lukv.budget_curves = curve.data();
  lukv.num_layers = 1;
  lukv.kv_heads = 2;
  fn("LUKV", lukv);
  static std::vector<float> const head_scores{0.3f, 0.8f};  // [1 layer, 2 heads]: head 0 streams first
  fn("DuoAttention", DuoAttentionPress{r, 4, 8, head_scores.data(), 1, 2});
}

std::vector<std::int32_t> const kLens{44, 44, 31, 31};  // ChunkKV shares chunks across a sequence's heads

/// A layout that stores a row back to front: not a StridedLayout, so wrappers take the generic paths.
struct ReversedSeqLayout {
  StridedLayout base;
  std::int64_t capacity;
  [[nodiscard]] std::int64_t offset(std::int64_t b, std::int64_t h, std::int64_t s, std::int64_t d) const noexcept {
    return base.offset(b, h, capacity - 1 - s, d);
  }
  [[nodiscard]] bool unit_dim_stride() const noexcept { return base.unit_dim_stride(); }
};

}  // namespace

TEST_CASE("Every wrapper at ratio 0 leaves the cache untouched", "[wrappers]") {
  Inputs const in;
  for_each_wrapper(0.0, [&](char const* name, auto const& press) {
    CAPTURE(name);
    Cache c(2, 2, 44, 8, kLens, 59);
    Cache const before = c;
    compress(cpu, press, in.obs, c.view());
    CHECK(c.k == before.k);
    CHECK(c.v == before.v);
    CHECK(c.lengths == before.lengths);
    CHECK(c.positions == before.positions);
  });
}

TEST_CASE("Every wrapper: other axis orders and strides give the same cache as the contiguous one", "[wrappers]") {
  Inputs const in;
  for_each_wrapper(0.5, [&](char const* name, auto const& press) {
    CAPTURE(name);
    Cache base(2, 2, 44, 8, kLens, 61);
    compress(cpu, press, in.obs, base.view());
    struct Layout {
      std::array<Axis, 4> order;
      std::int64_t innermost;
    };
    for (Layout const& l : {Layout{kBSHD, 1}, Layout{kBSHD, 3}, Layout{kBHDS, 2}}) {
      Cache other(2, 2, 44, 8, kLens, 61, l.order, l.innermost);
      compress(cpu, press, in.obs, other.view());
      REQUIRE(other.lengths == base.lengths);
      CHECK(other.positions == base.positions);
      for (std::int64_t r = 0; r < 4; ++r)
        for (std::int32_t j = 0; j < base.lengths[at(r)]; ++j)
          for (std::int64_t e = 0; e < 8; ++e) {
            REQUIRE(other.key(r, j, e) == base.key(r, j, e));
            REQUIRE(other.value(r, j, e) == base.value(r, j, e));
          }
    }
  });
}

TEST_CASE("Every wrapper runs in exactly compress_workspace_bytes of caller memory, at any alignment", "[wrappers]") {
  Inputs const in;
  for_each_wrapper(0.5, [&](char const* name, auto const& press) {
    CAPTURE(name);
    Cache a(2, 2, 44, 8, kLens, 67), b = a;
    std::size_t const bytes = compress_workspace_bytes(cpu, press, in.obs, a.view());
    std::vector<std::byte> scratch(bytes + 1);
    compress(cpu, press, in.obs, a.view(), Workspace(scratch.data() + 1, bytes));
    compress(cpu, press, in.obs, b.view());
    CHECK(a.lengths == b.lengths);
    CHECK(a.positions == b.positions);
  });
}

TEST_CASE("Chunk and ChunkKV over a non-strided layout keep what they keep over the strided one", "[wrappers][chunk]") {
  Cache strided(2, 2, 44, 8, kLens, 71);
  Cache const before = strided;
  ReversedSeqLayout const rev{before.layout, 44};
  std::vector<float> k(before.k.size()), v(before.v.size());
  for (std::int64_t r = 0; r < 4; ++r)
    for (std::int64_t s = 0; s < 44; ++s)
      for (std::int64_t e = 0; e < 8; ++e) {
        k[at(rev.offset(r / 2, r % 2, s, e))] = before.key(r, s, e);
        v[at(rev.offset(r / 2, r % 2, s, e))] = before.value(r, s, e);
      }
  auto const run = [&](auto const& press) {
    Cache c = before;
    auto kk = k, vv = v;
    auto lengths = before.lengths, positions = before.positions;
    auto const view = make_cache_view(kk.data(), vv.data(), before.extents, rev, rev, lengths.data(), positions.data());
    compress(cpu, press, Observation<float>{}, view);
    compress(cpu, press, Observation<float>{}, c.view());
    CHECK(lengths == c.lengths);
    CHECK(positions == c.positions);
    for (std::int64_t r = 0; r < 4; ++r)
      for (std::int32_t j = 0; j < lengths[at(r)]; ++j)
        for (std::int64_t e = 0; e < 8; ++e) CHECK(kk[at(rev.offset(r / 2, r % 2, j, e))] == c.key(r, j, e));
  };
  run(ChunkPress{KnormPress{0.5}, 10});
  run(ChunkKVPress{KnormPress{0.5}, 10});
  run(BlockPress{KnormPress{0.5}, 10});
}

TEST_CASE("Every wrapper over paged views keeps what it keeps over the strided one", "[wrappers][paged]") {
  Inputs const in;
  for (PageTable table : {PageTable::kPerSequence, PageTable::kPerHead}) {
    for_each_wrapper(0.5, [&](char const* name, auto const& press) {
      CAPTURE(name, int(table));
      Cache strided(2, 2, 44, 8, kLens, 79);
      Cache const before = strided;
      // Every table entry gets its own page of a shuffled pool.
      std::int64_t const page = 4, per_row = 11, table_rows = table == PageTable::kPerHead ? 4 : 2;
      std::vector<std::int32_t> block_table(at(table_rows * per_row));
      std::iota(block_table.begin(), block_table.end(), 0);
      std::reverse(block_table.begin(), block_table.end());
      PagedLayout const layout = make_paged_layout(
          before.extents, PagedConfig{table, PageOrder::kNHD, page, table_rows * per_row, block_table.data(), per_row});
      std::vector<float> k(at(table_rows * per_row * layout.page_stride)), v(k.size());
      for (std::int64_t r = 0; r < 4; ++r)
        for (std::int64_t slot = 0; slot < 44; ++slot)
          for (std::int64_t e = 0; e < 8; ++e) {
            k[at(layout.offset(r / 2, r % 2, slot, e))] = before.key(r, slot, e);
            v[at(layout.offset(r / 2, r % 2, slot, e))] = before.value(r, slot, e);
          }
      auto lengths = before.lengths, positions = before.positions;
      compress(cpu, press, in.obs,
               make_cache_view(k.data(), v.data(), before.extents, layout, layout, lengths.data(), positions.data()));
      compress(cpu, press, in.obs, strided.view());
      REQUIRE(lengths == strided.lengths);
      CHECK(positions == strided.positions);
      for (std::int64_t r = 0; r < 4; ++r)
        for (std::int32_t j = 0; j < lengths[at(r)]; ++j)
          for (std::int64_t e = 0; e < 8; ++e) {
            REQUIRE(k[at(layout.offset(r / 2, r % 2, j, e))] == strided.key(r, j, e));
            REQUIRE(v[at(layout.offset(r / 2, r % 2, j, e))] == strided.value(r, j, e));
          }
    });
  }
}

// ---------------------------------------------------------------------------------------------------
// Bad input: one test per case, each an Error naming the argument and its value
// ---------------------------------------------------------------------------------------------------

namespace {

/// Runs compress and requires an Error containing `what`, with the cache left as it was.
template <class Press>
void require_rejected(Press const& press, Observation<float> const& obs, Cache& c, std::string const& what) {
  Cache const before = c;
  REQUIRE_THROWS_WITH(compress(cpu, press, obs, c.view()), Catch::Contains(what));
  // bitwise: the cache may hold the NaN under test
  CHECK(std::memcmp(c.k.data(), before.k.data(), c.k.size() * sizeof(float)) == 0);
  CHECK(std::memcmp(c.v.data(), before.v.data(), c.v.size() * sizeof(float)) == 0);
  CHECK(c.lengths == before.lengths);
}

}  // namespace

TEST_CASE("AdaKV rejects a negative alpha_safeguard", "[wrappers][errors]") {
  Cache c(1, 2, 20, 8, 73);
  require_rejected(AdaKVPress{KnormPress{0.5}, -0.1}, Observation<float>{}, c,
                   "alpha_safeguard must be in [0, 1], got -0.1");
}

TEST_CASE("AdaKV rejects an alpha_safeguard above 1", "[wrappers][errors]") {
  Cache c(1, 2, 20, 8, 73);
  require_rejected(AdaKVPress{KnormPress{0.5}, 1.5}, Observation<float>{}, c,
                   "alpha_safeguard must be in [0, 1], got 1.5");
}

TEST_CASE("A wrapper rejects an inner press ratio of 1", "[wrappers][errors]") {
  Cache c(1, 2, 20, 8, 73);
  require_rejected(AdaKVPress{KnormPress{1.0}}, Observation<float>{}, c, "compression_ratio must be in [0, 1), got 1");
}

TEST_CASE("CriticalKV rejects a missing output projection", "[wrappers][errors]") {
  Cache c(1, 2, 20, 8, 73);
  require_rejected(CriticalKVPress{KnormPress{0.5}}, Observation<float>{}, c, "observation.output_projection (W_o");
}

TEST_CASE("CriticalKV rejects an output projection whose columns are not whole heads", "[wrappers][errors]") {
  Cache c(1, 2, 20, 8, 73);
  std::vector<float> w(12 * 30, 0.1f);
  Observation<float> obs;
  obs.output_projection = make_tensor2(w.data(), {12, 30});
  require_rejected(CriticalKVPress{KnormPress{0.5}}, obs, c, "has 30 columns, not a multiple of head_dim = 8");
}

TEST_CASE("CriticalKV rejects an output projection whose query heads do not group over the kv heads",
          "[wrappers][errors]") {
  Cache c(1, 2, 20, 8, 73);
  std::vector<float> w(12 * 24, 0.1f);
  Observation<float> obs;
  obs.output_projection = make_tensor2(w.data(), {12, 24});
  require_rejected(CriticalKVPress{KnormPress{0.5}}, obs, c, "holds 3 query heads, not a multiple of kv_heads = 2");
}

TEST_CASE("CriticalKV rejects a first_stage_ratio above 1", "[wrappers][errors]") {
  Cache c(1, 2, 20, 8, 73);
  Inputs const in;
  require_rejected(CriticalKVPress{KnormPress{0.5}, 1e-4, 1.5}, in.obs, c,
                   "first_stage_ratio must be in [0, 1], got 1.5");
}

TEST_CASE("CriticalKV rejects a non-finite epsilon", "[wrappers][errors]") {
  Cache c(1, 2, 20, 8, 73);
  Inputs const in;
  require_rejected(CriticalKVPress{KnormPress{0.5}, double(NAN)}, in.obs, c, "epsilon must be finite, got nan");
}

TEST_CASE("CriticalAdaKV rejects a bad alpha_safeguard", "[wrappers][errors]") {
  Cache c(1, 2, 20, 8, 73);
  Inputs const in;
  require_rejected(CriticalAdaKVPress{KnormPress{0.5}, 2.0}, in.obs, c, "alpha_safeguard must be in [0, 1], got 2");
}

TEST_CASE("ChunkKV rejects a non-positive chunk_length", "[wrappers][errors]") {
  Cache c(1, 2, 20, 8, 73);
  require_rejected(ChunkKVPress{KnormPress{0.5}, 0}, Observation<float>{}, c, "chunk_length must be positive, got 0");
}

TEST_CASE("ChunkKV rejects kv heads of one sequence with different lengths", "[wrappers][errors]") {
  Cache c(1, 2, 20, 8, {20, 13}, 73);
  require_rejected(ChunkKVPress{KnormPress{0.5}}, Observation<float>{}, c,
                   "lengths[1] = 13 differs from lengths[0] = 20");
}

TEST_CASE("Chunk rejects a non-positive chunk_length", "[wrappers][errors]") {
  Cache c(1, 2, 20, 8, 73);
  require_rejected(ChunkPress{KnormPress{0.5}, -3}, Observation<float>{}, c, "chunk_length must be positive, got -3");
}

TEST_CASE("Chunk rejects queries that do not cover the cache", "[wrappers][errors]") {
  Cache c(1, 2, 20, 8, 73);
  auto const q = kvc_test::random_vector(4 * 12 * 8, 74);
  Observation<float> obs;
  obs.queries = make_tensor4(q.data(), {1, 4, 12, 8});
  require_rejected(ChunkPress{KnormPress{0.5}, 8}, obs, c, "observation.queries hold 12 tokens");
}

TEST_CASE("Block rejects a non-positive block_size", "[wrappers][errors]") {
  Cache c(1, 2, 20, 8, 73);
  require_rejected(BlockPress{KnormPress{0.5}, 0}, Observation<float>{}, c, "block_size must be positive, got 0");
}

TEST_CASE("Block rejects an inner press that needs queries", "[wrappers][errors]") {
  Cache c(1, 2, 20, 8, 73);
  auto const q = kvc_test::random_vector(4 * 20 * 8, 75);
  Inputs in;
  in.obs.queries = make_tensor4(q.data(), {1, 4, 20, 8});
  ExpectedAttentionPress ea;
  ea.compression_ratio = 0.5;
  require_rejected(BlockPress{ea, 4}, in.obs, c, "observation.queries must be given");
}

TEST_CASE("Block rejects a NaN in a later block before anything moves", "[wrappers][errors]") {
  Cache c(1, 2, 20, 8, 73);
  c.k[at(c.layout.offset(0, 1, 17, 2))] = NAN;
  require_rejected(BlockPress{KeyDiffPress{0.5}, 4}, Observation<float>{}, c, "keys[0, 1, 17, 2] = nan");
}

TEST_CASE("PerLayer rejects a layer without a ratio", "[wrappers][errors]") {
  Cache c(1, 2, 20, 8, 73);
  Observation<float> obs;
  obs.layer_idx = 2;
  obs.num_layers = 3;
  require_rejected(PerLayerCompressionPress{KnormPress{}, {0.1, 0.2}}, obs, c,
                   "observation.layer_idx = 2 has no entry in compression_ratios (size 2)");
}

TEST_CASE("PerLayer rejects a ratio above 1", "[wrappers][errors]") {
  Cache c(1, 2, 20, 8, 73);
  require_rejected(PerLayerCompressionPress{KnormPress{}, {1.5}}, Observation<float>{}, c,
                   "compression_ratios[0] must be in [0, 1], got 1.5");
}

TEST_CASE("KeyRerotation rejects a missing rotary embedding", "[wrappers][errors]") {
  Cache c(1, 2, 20, 8, 73);
  require_rejected(KeyRerotationPress{KnormPress{0.5}}, Observation<float>{}, c, "observation.rope must be set");
}

TEST_CASE("KeyRerotation rejects a rotary embedding of another head_dim", "[wrappers][errors]") {
  Cache c(1, 2, 20, 8, 73);
  RotaryEmbedding const rope = rope_of(RopeType::kDefault, 16);
  Observation<float> obs;
  obs.rope = &rope;
  require_rejected(KeyRerotationPress{KnormPress{0.5}}, obs, c,
                   "observation.rope head_dim = 16 does not match the cache head_dim = 8");
}

TEST_CASE("AdaKV rejects a NaN key before anything moves", "[wrappers][errors]") {
  Cache c(1, 2, 20, 8, 73);
  c.k[at(c.layout.offset(0, 0, 5, 1))] = INFINITY;
  require_rejected(AdaKVPress{KnormPress{0.5}}, Observation<float>{}, c, "keys[0, 0, 5, 1] = inf");
}

TEST_CASE("CriticalKV names a NaN in the output projection", "[wrappers][errors]") {
  Cache c(1, 2, 20, 8, 73);
  Inputs in;
  in.wo.w[at(3 * 32 + 17)] = NAN;
  require_rejected(CriticalKVPress{KnormPress{0.5}}, in.obs, c,
                   "observation.output_projection[0, 0, row, column][0, 0, 3, 17] = nan");
}

TEST_CASE("CriticalAdaKV names a NaN in the output projection", "[wrappers][errors]") {
  Cache c(1, 2, 20, 8, 73);
  Inputs in;
  in.wo.w[at(5 * 32 + 2)] = NAN;
  require_rejected(CriticalAdaKVPress{KnormPress{0.5}}, in.obs, c,
                   "observation.output_projection[0, 0, row, column][0, 0, 5, 2] = nan");
}

TEST_CASE("make_tensor2 rejects a null pointer", "[wrappers][errors]") {
  REQUIRE_THROWS_WITH(make_tensor2<float>(nullptr, {2, 3}), Catch::Contains("matrix data must not be null"));
}

TEST_CASE("make_tensor2 rejects a non-positive extent", "[wrappers][errors]") {
  float x = 0.0f;
  REQUIRE_THROWS_WITH(make_tensor2(&x, {2, 0}), Catch::Contains("matrix shape[1] must be positive, got 0"));
}

TEST_CASE("make_tensor2 rejects a negative stride", "[wrappers][errors]") {
  float x = 0.0f;
  REQUIRE_THROWS_WITH(make_tensor2(&x, {1, 1}, {-1, 1}),
                      Catch::Contains("matrix strides[0] must be non-negative, got -1"));
}

}  // namespace KVC_TEST_TU
