// Reference attention over a compressed cache equals dense attention over the uncompressed cache with
// every pruned entry masked to −inf (the meaning of kvpress's head-wise masking), fp32 against an
// independent double-precision computation: relative error per output vector ≤ 1e-5.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "kvcompress/kvcompress.hpp"
#include "test_util.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using namespace kvcompress;

namespace {

constexpr std::int64_t kB = 2, kH = 2, kQ = 8, kCap = 41, kD = 16, kQLen = 3;
constexpr double kRelTol = 1e-5;

/// A cache in HF order with original positions; `dense_k/v` keep the uncompressed contents.
template <class T = float>
struct Fixture {
  kvc_test::OwnedCache<T> cache{kB, kH, kCap, kD};
  std::vector<std::int32_t> positions = std::vector<std::int32_t>(static_cast<std::size_t>(kB * kH * kCap));
  std::vector<double> dense_k, dense_v;  // [b, h, cap, d] as the storage type rounds them

  explicit Fixture(std::uint32_t seed) {
    cache.fill_random(seed);
    for (std::size_t i = 0; i < positions.size(); ++i) positions[i] = static_cast<std::int32_t>(i % kCap);
    for (T x : cache.k) dense_k.push_back(static_cast<double>(to_float(x)));
    for (T x : cache.v) dense_v.push_back(static_cast<double>(to_float(x)));
  }
  KVCacheView<T> view() {
    return make_cache_view(cache.k.data(), cache.v.data(), cache.extents, cache.layout, cache.lengths.data(),
                           positions.data());
  }
  /// Original positions still present in row r.
  [[nodiscard]] std::set<std::int32_t> kept(std::int64_t r) const {
    return {positions.begin() + r * kCap, positions.begin() + r * kCap + cache.lengths[static_cast<std::size_t>(r)]};
  }
};

/// Dense attention in double over all n original entries of each row, keys outside `kept` (and,
/// when causal, after the query's position) masked. Output [b, q_heads, q_len, d].
std::vector<double> masked_dense_attention(std::vector<double> const& k, std::vector<double> const& v,
                                           std::vector<std::set<std::int32_t>> const& kept,
                                           std::vector<double> const& q, std::int64_t q_heads, std::int64_t q_len,
                                           std::int64_t n, double scale, bool causal, std::int64_t query_position) {
  std::int64_t const group = q_heads / kH;
  std::vector<double> out(static_cast<std::size_t>(kB * q_heads * q_len * kD), 0.0);
  for (std::int64_t b = 0; b < kB; ++b)
    for (std::int64_t j = 0; j < q_heads; ++j)
      for (std::int64_t t = 0; t < q_len; ++t) {
        std::int64_t const h = j / group, r = b * kH + h;
        double const* qv = &q[static_cast<std::size_t>(((b * q_heads + j) * q_len + t) * kD)];
        std::vector<double> w(static_cast<std::size_t>(n), 0.0);
        double zmax = -INFINITY;
        std::vector<bool> on(static_cast<std::size_t>(n), false);
        for (std::int64_t p = 0; p < n; ++p) {
          on[static_cast<std::size_t>(p)] = kept[static_cast<std::size_t>(r)].count(static_cast<std::int32_t>(p)) > 0 &&
                                            (!causal || p <= query_position + t);
          if (!on[static_cast<std::size_t>(p)]) continue;
          double z = 0.0;
          for (std::int64_t c = 0; c < kD; ++c) z += qv[c] * k[static_cast<std::size_t>((r * kCap + p) * kD + c)];
          w[static_cast<std::size_t>(p)] = z * scale;
          zmax = std::max(zmax, z * scale);
        }
        double sum = 0.0;
        for (std::int64_t p = 0; p < n; ++p)
          if (on[static_cast<std::size_t>(p)]) sum += (w[static_cast<std::size_t>(p)] = std::exp(w[static_cast<std::size_t>(p)] - zmax));
        double* o = &out[static_cast<std::size_t>(((b * q_heads + j) * q_len + t) * kD)];
        for (std::int64_t p = 0; p < n; ++p) {
          if (!on[static_cast<std::size_t>(p)]) continue;
          for (std::int64_t c = 0; c < kD; ++c)
            o[c] += w[static_cast<std::size_t>(p)] / sum * v[static_cast<std::size_t>((r * kCap + p) * kD + c)];
        }
      }
  return out;
}

/// Largest relative error ‖a − e‖ / ‖e‖ over the output vectors (absolute where e = 0).
double worst_relative_error(std::vector<float> const& got, std::vector<double> const& expected) {
  REQUIRE(got.size() == expected.size());
  double worst = 0.0;
  for (std::size_t i = 0; i < got.size(); i += kD) {
    double diff = 0.0, norm = 0.0;
    for (std::size_t c = i; c < i + kD; ++c) {
      diff += (got[c] - expected[c]) * (got[c] - expected[c]);
      norm += expected[c] * expected[c];
    }
    worst = std::max(worst, norm > 0.0 ? std::sqrt(diff / norm) : std::sqrt(diff));
  }
  return worst;
}

std::vector<double> as_double(std::vector<float> const& x) { return {x.begin(), x.end()}; }

RotaryEmbedding make_rope() {
  RopeConfig c;
  c.head_dim = static_cast<int>(kD);
  c.theta = 10000.0;
  c.max_position_embeddings = 4096;
  return RotaryEmbedding(c);
}

template <class T>
void check_against_masked_dense(Fixture<T>& f, std::uint32_t seed, std::int64_t q_heads = kQ) {
  auto const qf = kvc_test::random_vector(static_cast<std::size_t>(kB * q_heads * kQLen * kD), seed);
  std::vector<T> qs(qf.begin(), qf.end());
  std::vector<double> qd;
  for (T x : qs) qd.push_back(static_cast<double>(to_float(x)));
  std::vector<std::set<std::int32_t>> kept;
  for (std::int64_t r = 0; r < kB * kH; ++r) kept.push_back(f.kept(r));
  auto const got = reference_attention(cpu, make_tensor4(qs.data(), {kB, q_heads, kQLen, kD}), f.view());
  auto const want = masked_dense_attention(f.dense_k, f.dense_v, kept, qd, q_heads, kQLen, kCap,
                                           1.0 / std::sqrt(static_cast<double>(kD)), false, 0);
  double const err = worst_relative_error(got, want);
  INFO("worst relative error " << err);
  CHECK(err <= kRelTol);
}

}  // namespace

TEST_CASE("attention on a cache compressed by a press equals masked dense attention", "[attention]") {
  auto rope = make_rope();
  auto const queries = kvc_test::random_vector(static_cast<std::size_t>(kB * kQ * kCap * kD), 21);
  auto const window = kvc_test::random_vector(static_cast<std::size_t>(kB * kQ * 4 * kD), 22);
  Observation<float> obs;
  obs.queries = make_tensor4(queries.data(), {kB, kQ, kCap, kD});
  obs.window_queries = make_tensor4(window.data(), {kB, kQ, 4, kD});
  obs.rope = &rope;

  SECTION("Expected Attention") {
    Fixture<float> f(1);
    compress(cpu, ExpectedAttentionPress{0.5}, obs, f.view());
    CHECK(f.cache.lengths[0] == kept_count(kCap, 0.5));
    check_against_masked_dense(f, 31);
  }
  SECTION("SnapKV") {
    Fixture<float> f(2);
    compress(cpu, SnapKVPress{0.7, 4, 3}, obs, f.view());
    CHECK(f.cache.lengths[0] == kept_count(kCap, 0.7));
    check_against_masked_dense(f, 32);
  }
  SECTION("Knorm") {
    Fixture<float> f(3);
    compress(cpu, KnormPress{0.3}, obs, f.view());
    CHECK(f.cache.lengths[0] == kept_count(kCap, 0.3));
    check_against_masked_dense(f, 33);
  }
}

TEST_CASE("attention on ragged per-head lengths (AdaKV-like budgets) equals masked dense attention", "[attention]") {
  Fixture<float> f(4);
  // Each row keeps its own random subset, of sizes 1, 7, 29 and 41 (the whole row), compacted in
  // position order as every press does.
  std::int64_t const sizes[kB * kH] = {1, 7, 29, kCap};
  std::mt19937 gen(5);
  auto view = f.view();
  for (std::int64_t r = 0; r < kB * kH; ++r) {
    std::vector<std::int32_t> slots(kCap);
    std::iota(slots.begin(), slots.end(), 0);
    std::shuffle(slots.begin(), slots.end(), gen);
    slots.resize(static_cast<std::size_t>(sizes[r]));
    std::sort(slots.begin(), slots.end());
    cpu_impl::compact_row(kvcompress::cpu, view, r / kH, r % kH, slots.data(), static_cast<std::int32_t>(sizes[r]));
  }
  REQUIRE(f.kept(0).size() == 1);
  REQUIRE(f.kept(2).size() == 29);
  check_against_masked_dense(f, 34);
  SECTION("without grouped queries (one query head per kv head)") { check_against_masked_dense(f, 35, kH); }
}

TEST_CASE("a row with no entries attends to nothing: zero output", "[attention]") {
  Fixture<float> f(6);
  f.cache.lengths[1] = 0;
  auto const q = kvc_test::random_vector(static_cast<std::size_t>(kB * kQ * kQLen * kD), 7);
  auto const out = reference_attention(cpu, make_tensor4(q.data(), {kB, kQ, kQLen, kD}), f.view());
  std::int64_t const group = kQ / kH;
  for (std::int64_t j = group; j < 2 * group; ++j)  // batch 0, kv head 1
    for (std::int64_t i = 0; i < kQLen * kD; ++i) CHECK(out[static_cast<std::size_t>(j * kQLen * kD + i)] == 0.0f);
  CHECK(std::any_of(out.begin(), out.begin() + group * kQLen * kD, [](float x) { return x != 0.0f; }));
}

TEST_CASE("causal attention hides keys after each query's original position", "[attention]") {
  SECTION("prefill: q_len = n, positions = slots") {
    Fixture<float> f(8);
    std::int64_t const n = kCap;
    auto const q = kvc_test::random_vector(static_cast<std::size_t>(kB * kQ * n * kD), 9);
    auto view = make_cache_view(f.cache.k.data(), f.cache.v.data(), f.cache.extents, f.cache.layout,
                                f.cache.lengths.data());  // no positions: slot = position
    AttentionOptions opt;
    opt.causal = true;
    auto const got = reference_attention(cpu, make_tensor4(q.data(), {kB, kQ, n, kD}), view, opt);
    std::vector<std::set<std::int32_t>> all(kB * kH);
    for (auto& s : all)
      for (std::int32_t p = 0; p < kCap; ++p) s.insert(p);
    auto const want = masked_dense_attention(f.dense_k, f.dense_v, all, as_double(q), kQ, n, n,
                                             1.0 / std::sqrt(static_cast<double>(kD)), true, 0);
    CHECK(worst_relative_error(got, want) <= kRelTol);
  }
  SECTION("a compressed cache, queries at absolute positions 30..32, an explicit scale") {
    Fixture<float> f(10);
    compress(cpu, KnormPress{0.5}, Observation<float>{}, f.view());
    auto const q = kvc_test::random_vector(static_cast<std::size_t>(kB * kQ * kQLen * kD), 11);
    AttentionOptions opt;
    opt.causal = true;
    opt.query_position = 30;
    opt.scale = 0.3f;
    auto const got = reference_attention(cpu, make_tensor4(q.data(), {kB, kQ, kQLen, kD}), f.view(), opt);
    std::vector<std::set<std::int32_t>> kept;
    for (std::int64_t r = 0; r < kB * kH; ++r) kept.push_back(f.kept(r));
    auto const want = masked_dense_attention(f.dense_k, f.dense_v, kept, as_double(q), kQ, kQLen, kCap,
                                             static_cast<double>(0.3f), true, 30);
    CHECK(worst_relative_error(got, want) <= kRelTol);
  }
}

TEST_CASE("attention reads any strided layout: token-major keys, transposed values", "[attention]") {
  Fixture<float> f(12);
  CacheExtents const e{kB, kH, kCap, kD};
  auto const kl = make_strided_layout(e, {Axis::kBatch, Axis::kSeq, Axis::kHead, Axis::kDim});
  auto const vl = make_strided_layout(e, {Axis::kBatch, Axis::kHead, Axis::kDim, Axis::kSeq});
  std::vector<float> k(f.cache.k.size()), v(f.cache.v.size());
  for (std::int64_t b = 0; b < kB; ++b)
    for (std::int64_t h = 0; h < kH; ++h)
      for (std::int64_t s = 0; s < kCap; ++s)
        for (std::int64_t c = 0; c < kD; ++c) {
          auto const src = static_cast<std::size_t>(((b * kH + h) * kCap + s) * kD + c);
          k[static_cast<std::size_t>(kl.offset(b, h, s, c))] = f.cache.k[src];
          v[static_cast<std::size_t>(vl.offset(b, h, s, c))] = f.cache.v[src];
        }
  auto view = make_cache_view(k.data(), v.data(), e, kl, vl, f.cache.lengths.data(), f.positions.data());
  compress(cpu, KnormPress{0.4}, Observation<float>{}, view);
  auto const q = kvc_test::random_vector(static_cast<std::size_t>(kB * kQ * kQLen * kD), 13);
  auto const got = reference_attention(cpu, make_tensor4(q.data(), {kB, kQ, kQLen, kD}), view);
  std::vector<std::set<std::int32_t>> kept;
  for (std::int64_t r = 0; r < kB * kH; ++r) kept.push_back(f.kept(r));
  auto const want = masked_dense_attention(f.dense_k, f.dense_v, kept, as_double(q), kQ, kQLen, kCap,
                                           1.0 / std::sqrt(static_cast<double>(kD)), false, 0);
  CHECK(worst_relative_error(got, want) <= kRelTol);
}

TEST_CASE("attention reads a paged cache (per-head block tables, pages of 4, shuffled pool)", "[attention]") {
  Fixture<float> f(19);
  CacheExtents const e{kB, kH, kCap, kD};
  std::int64_t const page = 4, per_row = (kCap + page - 1) / page, pages = kB * kH * per_row;
  std::vector<std::int32_t> table(static_cast<std::size_t>(pages));
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), std::mt19937(20));
  auto const layout = make_paged_layout(e, PagedConfig{PageTable::kPerHead, PageOrder::kNHD, page, pages, table.data(), per_row});
  std::vector<float> k(static_cast<std::size_t>(pages * layout.page_stride)), v(k.size());
  for (std::int64_t b = 0; b < kB; ++b)
    for (std::int64_t h = 0; h < kH; ++h)
      for (std::int64_t s = 0; s < kCap; ++s)
        for (std::int64_t c = 0; c < kD; ++c) {
          auto const src = static_cast<std::size_t>(((b * kH + h) * kCap + s) * kD + c);
          k[static_cast<std::size_t>(layout.offset(b, h, s, c))] = f.cache.k[src];
          v[static_cast<std::size_t>(layout.offset(b, h, s, c))] = f.cache.v[src];
        }
  auto view = make_cache_view(k.data(), v.data(), e, layout, layout, f.cache.lengths.data(), f.positions.data());
  compress(cpu, KnormPress{0.6}, Observation<float>{}, view);
  auto const q = kvc_test::random_vector(static_cast<std::size_t>(kB * kQ * kQLen * kD), 21);
  auto const got = reference_attention(cpu, make_tensor4(q.data(), {kB, kQ, kQLen, kD}), view);
  std::vector<std::set<std::int32_t>> kept;
  for (std::int64_t r = 0; r < kB * kH; ++r) kept.push_back(f.kept(r));
  REQUIRE(kept[0].size() == static_cast<std::size_t>(kept_count(kCap, 0.6)));
  auto const want = masked_dense_attention(f.dense_k, f.dense_v, kept, as_double(q), kQ, kQLen, kCap,
                                           1.0 / std::sqrt(static_cast<double>(kD)), false, 0);
  CHECK(worst_relative_error(got, want) <= kRelTol);
}

TEST_CASE("attention over a half cache accumulates in float", "[attention]") {
  Fixture<half> f(14);
  compress(cpu, KnormPress{0.5}, Observation<half>{}, f.view());
  check_against_masked_dense(f, 36);
}

TEST_CASE("attention does not depend on the thread count", "[attention]") {
  Fixture<float> f(15);
  compress(cpu, KnormPress{0.5}, Observation<float>{}, f.view());
  auto const q = kvc_test::random_vector(static_cast<std::size_t>(kB * kQ * kQLen * kD), 16);
  auto const qt = make_tensor4(q.data(), {kB, kQ, kQLen, kD});
  CHECK(reference_attention(CpuDevice{1}, qt, f.view()) == reference_attention(CpuDevice{3}, qt, f.view()));
}

TEST_CASE("attention rejects bad input, naming the argument and the value", "[attention][errors]") {
  Fixture<float> f(17);
  auto const q = kvc_test::random_vector(static_cast<std::size_t>(kB * kQ * kQLen * kD), 18);
  auto const good = make_tensor4(q.data(), {kB, kQ, kQLen, kD});
  auto view = f.view();
  using Catch::Matchers::Contains;
  SECTION("no queries") {
    CHECK_THROWS_WITH(reference_attention(cpu, Tensor4<float>{}, view), Contains("queries must be given"));
  }
  SECTION("batch mismatch") {
    CHECK_THROWS_WITH(reference_attention(cpu, make_tensor4(q.data(), {1, kQ, kQLen, kD}), view),
                      Contains("queries batch = 1"));
  }
  SECTION("query heads not a multiple of kv heads") {
    CHECK_THROWS_WITH(reference_attention(cpu, make_tensor4(q.data(), {kB, 3, kQLen, kD}), view),
                      Contains("queries heads = 3"));
  }
  SECTION("head_dim mismatch") {
    CHECK_THROWS_WITH(reference_attention(cpu, make_tensor4(q.data(), {kB, kQ, kQLen * 2, kD / 2}), view),
                      Contains("queries head_dim = 8"));
  }
  SECTION("negative scale") {
    AttentionOptions opt;
    opt.scale = -1.0f;
    CHECK_THROWS_WITH(reference_attention(cpu, good, view, opt), Contains("options.scale") && Contains("-1"));
  }
  SECTION("NaN scale") {
    AttentionOptions opt;
    opt.scale = NAN;
    CHECK_THROWS_WITH(reference_attention(cpu, good, view, opt), Contains("options.scale") && Contains("nan"));
  }
  SECTION("negative query position") {
    AttentionOptions opt;
    opt.query_position = -2;
    CHECK_THROWS_WITH(reference_attention(cpu, good, view, opt), Contains("options.query_position") && Contains("-2"));
  }
  SECTION("null output") {
    std::vector<std::byte> ws(reference_attention_workspace_bytes(cpu, good, view));
    CHECK_THROWS_WITH(reference_attention(cpu, good, view, nullptr, AttentionOptions{}, Workspace(ws.data(), ws.size())),
                      Contains("out must not be null"));
  }
  SECTION("workspace too small") {
    std::vector<float> out(q.size());
    std::vector<std::byte> ws(reference_attention_workspace_bytes(cpu, good, view) / 2);
    CHECK_THROWS_WITH(reference_attention(cpu, good, view, out.data(), AttentionOptions{}, Workspace(ws.data(), ws.size())),
                      Contains("workspace too small"));
  }
}

}  // namespace KVC_TEST_TU
