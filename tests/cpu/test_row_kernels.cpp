// The per-key row kernels (detail/row_kernels.hpp) at every instruction set this CPU runs, against a
// double-precision evaluation of the same stored values; their dispatch; the presses that use them,
// native against portable, on strided and paged caches; and the top-k selection against a sort by
// its documented order.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "kvcompress/kvcompress.hpp"
#include "test_util.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using namespace kvcompress;

namespace {


template <class T>
std::vector<T> random_rows(std::int64_t count, std::int64_t stride, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<T> x(static_cast<std::size_t>(count * stride));
  for (T& v : x) v = from_float<T>(normal(gen));
  return x;
}

template <class T>
double at(std::vector<T> const& x, std::int64_t i) {
  return static_cast<double>(to_float(x[static_cast<std::size_t>(i)]));
}

/// key_dots of `count` keys `stride` elements apart against g query rows, at instruction set isa, against
/// a double-precision evaluation; the entries of `out` beyond each row's count stay as they were.
template <class T>
void check_dots(detail::RowIsa isa, std::int64_t d, std::int64_t count, std::int64_t stride, std::int64_t g) {
  CAPTURE(static_cast<int>(isa), d, count, stride, g);
  auto const keys = random_rows<T>(count, stride, 1);
  auto const q = random_rows<float>(g, d, 2);
  std::int64_t const out_stride = count + 3;
  float const untouched = -12345.0f;
  std::vector<float> dots(static_cast<std::size_t>(g * out_stride), untouched);
  detail::key_dots(isa, keys.data(), count, stride, d, q.data(), g, dots.data(), out_stride);
  for (std::int64_t j = 0; j < g; ++j) {
    for (std::int64_t i = 0; i < count; ++i) {
      double dot = 0.0, mag = 0.0;
      for (std::int64_t c = 0; c < d; ++c) {
        dot += at(keys, i * stride + c) * at(q, j * d + c);
        mag += std::abs(at(keys, i * stride + c) * at(q, j * d + c));
      }
      CHECK(std::abs(dots[static_cast<std::size_t>(j * out_stride + i)] - dot) <= 1e-5 * mag);
    }
    for (std::int64_t i = count; i < out_stride; ++i) CHECK(dots[static_cast<std::size_t>(j * out_stride + i)] == untouched);
  }
}

template <class T>
void check_kernels(std::int64_t d) {
  std::int64_t const count = 37, stride = d + 16, g = 6;  // rows apart by more than d: the stride is honoured
  auto const keys = random_rows<T>(count, stride, 1);
  for (detail::RowIsa const isa : kvc_test::row_isas_here()) {
    if ((isa == detail::RowIsa::kAvx512 && d % 16 != 0) || (isa == detail::RowIsa::kAvx2 && d % 8 != 0)) continue;
    CAPTURE(static_cast<int>(isa), d);
    std::vector<float> ss(count), norms(count), sum(d, 0.5f), rows(d, 0.25f);
    detail::key_sq_norms(isa, keys.data(), count, stride, d, ss.data());
    detail::key_normalized_sum(isa, keys.data(), count, stride, d, 1e-12f, norms.data(), sum.data());
    detail::rows_sum(isa, keys.data(), count, stride, d, rows.data());
    std::vector<double> want_sum(d, 0.5), want_rows(d, 0.25);
    for (std::int64_t i = 0; i < count; ++i) {
      double s2 = 0.0;
      for (std::int64_t c = 0; c < d; ++c) s2 += at(keys, i * stride + c) * at(keys, i * stride + c);
      CHECK(ss[i] == Approx(s2).epsilon(1e-5));
      CHECK(norms[i] == Approx(std::sqrt(s2)).epsilon(1e-5));
      for (std::int64_t c = 0; c < d; ++c) {
        want_sum[c] += at(keys, i * stride + c) / std::sqrt(s2);
        want_rows[c] += at(keys, i * stride + c);
      }
    }
    for (std::int64_t c = 0; c < d; ++c) {
      CHECK(sum[c] == Approx(want_sum[c]).margin(1e-4));
      CHECK(rows[c] == Approx(want_rows[c]).margin(1e-3));
    }
    check_dots<T>(isa, d, count, stride, g);
  }
}

/// The order select_topk_row documents: higher score first, any number before NaN, ties to the lower index.
std::vector<std::int32_t> kept_by_sort(std::vector<float> const& s, std::int32_t k) {
  std::vector<std::int32_t> idx(s.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](std::int32_t a, std::int32_t b) {
    float const x = s[static_cast<std::size_t>(a)], y = s[static_cast<std::size_t>(b)];
    if (std::isnan(x) || std::isnan(y)) return !std::isnan(x) && std::isnan(y);
    return x > y;
  });
  idx.resize(static_cast<std::size_t>(k));
  std::sort(idx.begin(), idx.end());
  return idx;
}

/// A cache of `rows` rows of n entries in storage type T, strided [b, h, s, d] or paged (page 4, pages shuffled).
template <class T>
struct TwoLayouts {
  CacheExtents e;
  std::vector<T> keys, values, paged_keys, paged_values;
  std::vector<std::int32_t> lengths, paged_lengths, table;

  TwoLayouts(std::int64_t heads, std::int64_t n, std::int64_t d)
      : e{1, heads, n, d}, keys(random_rows<T>(heads * n, d, 5)), values(random_rows<T>(heads * n, d, 6)),
        lengths(static_cast<std::size_t>(heads), static_cast<std::int32_t>(n)), paged_lengths(lengths) {
    table.resize(static_cast<std::size_t>(heads * n / 4));
    std::iota(table.begin(), table.end(), 0);
    std::shuffle(table.begin(), table.end(), std::mt19937(7));
    paged_keys.resize(keys.size());
    paged_values.resize(values.size());
    auto const p = paged();
    for (std::int64_t h = 0; h < heads; ++h)
      for (std::int64_t s = 0; s < n; ++s)
        for (std::int64_t c = 0; c < d; ++c) {
          paged_keys[static_cast<std::size_t>(p.key_layout.offset(0, h, s, c))] = keys[static_cast<std::size_t>((h * n + s) * d + c)];
          paged_values[static_cast<std::size_t>(p.value_layout.offset(0, h, s, c))] =
              values[static_cast<std::size_t>((h * n + s) * d + c)];
        }
  }
  KVCacheView<T> strided() {
    auto const l = make_strided_layout(e, {Axis::kBatch, Axis::kHead, Axis::kSeq, Axis::kDim});
    return make_cache_view(keys.data(), values.data(), e, l, lengths.data());
  }
  KVCacheView<T, PagedLayout> paged() {
    auto const l = make_paged_layout(e, PagedConfig{PageTable::kPerHead, PageOrder::kNHD, 4,
                                                    static_cast<std::int64_t>(table.size()), table.data(), e.capacity / 4});
    return make_cache_view(paged_keys.data(), paged_values.data(), e, l, l, paged_lengths.data());
  }
};

template <class Press, class T, class L>
std::vector<float> scores_of(Press const& press, CpuDevice const& dev, Observation<T> const& obs,
                             KVCacheView<T, L> const& view) {
  std::vector<float> s(static_cast<std::size_t>(view.extents.kv_heads * view.extents.capacity));
  std::vector<std::byte> scratch(press.workspace_bytes(dev, obs, view));
  Workspace ws(scratch.data(), scratch.size());
  score(dev, press, obs, view, s.data(), ws);
  return s;
}

template <class T>
void check_presses(float rel) {
  std::int64_t const heads = 2, n = 64, d = 32, group = 2;
  TwoLayouts<T> cache(heads, n, d);
  auto const queries = random_rows<T>(heads * group * n, d, 9);
  RopeConfig rc;
  rc.head_dim = static_cast<int>(d);
  RotaryEmbedding const rope(rc);
  Observation<T> obs;
  obs.queries = make_tensor4(queries.data(), {1, heads * group, n, d});
  obs.window_queries = obs.queries;
  obs.rope = &rope;
  ExpectedAttentionPress ea;
  ea.use_covariance = false;
  CpuDevice const native{2}, portable{2, CpuKernels::kPortable};
  auto const compare = [&](auto const& press, char const* name) {
    INFO(name);
    auto const want = scores_of(press, portable, obs, cache.strided());
    for (auto const& got : {scores_of(press, native, obs, cache.strided()), scores_of(press, native, obs, cache.paged()),
                            scores_of(press, portable, obs, cache.paged())})
      for (std::size_t i = 0; i < want.size(); ++i) CHECK(got[i] == Approx(want[i]).epsilon(rel).margin(1e-6));
  };
  compare(KnormPress{}, "Knorm");
  compare(KeyDiffPress{}, "KeyDiff");
  compare(TOVAPress{}, "TOVA");
  compare(ea, "Expected Attention, mean only");
}

}  // namespace

TEST_CASE("row kernels: the instruction set follows the CPU, the device and head_dim", "[row_kernels][dispatch]") {
  CpuDevice const native{}, portable{1, CpuKernels::kPortable};
  detail::RowIsa const cpu = detail::cpu_row_isa();
  CHECK(detail::row_isa(portable, 128) == detail::RowIsa::kPortable);
  CHECK(detail::row_isa(native, 128) == cpu);
  CHECK(detail::row_isa(native, 7) == detail::RowIsa::kPortable);  // no vector width divides it
  // 8 lanes but not 16: AVX2 wherever the CPU has a vector set.
  CHECK(detail::row_isa(native, 24) == (cpu == detail::RowIsa::kPortable ? detail::RowIsa::kPortable : detail::RowIsa::kAvx2));
}

TEST_CASE("row kernels: squared norms, dot products and sums of float, half and bf16 keys match double precision",
          "[row_kernels]") {
  for (std::int64_t const d : {16, 24, 64, 128, 136, 13}) {
    check_kernels<float>(d);
    check_kernels<half>(d);
    check_kernels<bfloat16>(d);
  }
}

TEST_CASE("row kernels: key_dots at every count of keys and query rows around its blocks of four, strides up to three times d",
          "[row_kernels]") {
  // Blocks of four keys against four query rows, the rows left one at a time, the keys left one by
  // one: counts 0 to 9 and 13, query rows 1 to 8, keys packed, padded and far apart.
  for (detail::RowIsa const isa : kvc_test::row_isas_here())
    for (std::int64_t const d : {16, 128})
      for (std::int64_t const count : {0, 1, 3, 4, 5, 7, 8, 9, 13})
        for (std::int64_t const g : {1, 2, 3, 4, 5, 8})
          for (std::int64_t const stride : {d, d + 16, 3 * d}) {
            check_dots<float>(isa, d, count, stride, g);
            check_dots<half>(isa, d, count, stride, g);
            check_dots<bfloat16>(isa, d, count, stride, g);
          }
}

TEST_CASE("row kernels: Knorm, KeyDiff, TOVA and mean-only Expected Attention agree native and portable, strided and paged",
          "[row_kernels][press]") {
  SECTION("float") { check_presses<float>(1e-4f); }
  SECTION("half") { check_presses<half>(1e-4f); }
  SECTION("bfloat16") { check_presses<bfloat16>(1e-4f); }
}

TEST_CASE("top-k selection: the kept entries of a sort by score, ties to the lower index, NaN last, the rest ascending",
          "[select]") {
  float const nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  std::mt19937 gen(11);
  std::uniform_int_distribution<int> pick(0, 9);
  float const values[] = {0.0f, -0.0f, 1.0f, -1.0f, 2.5f, inf, -inf, nan, 1e-30f, -3.0f};
  for (int trial = 0; trial < 200; ++trial) {
    std::int32_t const n = 1 + trial % 50;
    std::vector<float> s(static_cast<std::size_t>(n));
    for (float& x : s) x = values[pick(gen)];
    for (std::int32_t k = 0; k <= n; ++k) {
      std::vector<std::int32_t> idx(static_cast<std::size_t>(n));
      cpu_impl::select_topk_row(s.data(), n, k, idx.data());
      std::vector<std::int32_t> const kept(idx.begin(), idx.begin() + k), rest(idx.begin() + k, idx.end());
      CHECK(kept == kept_by_sort(s, k));
      CHECK(std::is_sorted(rest.begin(), rest.end()));
      std::vector<std::int32_t> all = idx;
      std::sort(all.begin(), all.end());
      for (std::int32_t i = 0; i < n; ++i) CHECK(all[static_cast<std::size_t>(i)] == i);
    }
  }
}

}  // namespace KVC_TEST_TU
