// View factories: every layout they accept addresses the right elements, and every bad input is a
// kvcompress::Error naming the argument and the value.
#include <catch2/catch.hpp>

#include <limits>

#include "kvcompress/kvcompress.hpp"
#include "test_util.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using namespace kvcompress;

TEST_CASE("strided layouts in every axis order address each element once", "[view]") {
  CacheExtents const e{2, 3, 5, 4};
  std::array<Axis, 4> order{Axis::kBatch, Axis::kHead, Axis::kSeq, Axis::kDim};
  std::sort(order.begin(), order.end());
  do {
    for (std::int64_t inner : {1, 2}) {
      auto const l = make_strided_layout(e, order, inner);
      std::vector<int> hits(static_cast<std::size_t>(2 * 3 * 5 * 4 * inner), 0);
      for (int b = 0; b < 2; ++b)
        for (int h = 0; h < 3; ++h)
          for (int s = 0; s < 5; ++s)
            for (int d = 0; d < 4; ++d) ++hits.at(static_cast<std::size_t>(l.offset(b, h, s, d)));
      for (std::size_t i = 0; i < hits.size(); ++i) CHECK(hits[i] == (i % static_cast<std::size_t>(inner) == 0 ? 1 : 0));
    }
  } while (std::next_permutation(order.begin(), order.end()));
}

TEST_CASE("compress on every axis order gives the same cache as the contiguous layout", "[view][layout]") {
  std::array<Axis, 4> order{Axis::kBatch, Axis::kHead, Axis::kSeq, Axis::kDim};
  kvc_test::OwnedCache<float> ref(2, 2, 19, 4);
  ref.fill_random(3);
  ref.lengths = {19, 12, 17, 19};
  auto const original = ref;
  compress(cpu, KnormPress{0.4}, Observation<float>{}, ref.view());
  std::sort(order.begin(), order.end());
  do {
    kvc_test::OwnedCache<float> c(2, 2, 19, 4, order);
    c.lengths = original.lengths;
    for (int b = 0; b < 2; ++b)
      for (int h = 0; h < 2; ++h)
        for (int s = 0; s < 19; ++s)
          for (int d = 0; d < 4; ++d) {
            c.k[c.layout.offset(b, h, s, d)] = original.k[((b * 2 + h) * 19 + s) * 4 + d];
            c.v[c.layout.offset(b, h, s, d)] = original.v[((b * 2 + h) * 19 + s) * 4 + d];
          }
    compress(cpu, KnormPress{0.4}, Observation<float>{}, c.view());
    REQUIRE(c.lengths == ref.lengths);
    for (int b = 0; b < 2; ++b)
      for (int h = 0; h < 2; ++h)
        for (int s = 0; s < c.lengths[b * 2 + h]; ++s)
          for (int d = 0; d < 4; ++d) {
            REQUIRE(c.k[c.layout.offset(b, h, s, d)] == ref.k[((b * 2 + h) * 19 + s) * 4 + d]);
            REQUIRE(c.v[c.layout.offset(b, h, s, d)] == ref.v[((b * 2 + h) * 19 + s) * 4 + d]);
          }
  } while (std::next_permutation(order.begin(), order.end()));
}

TEST_CASE("original positions follow their entries through compaction", "[view]") {
  kvc_test::OwnedCache<float> c(1, 2, 10, 4);
  c.fill_random(4);
  std::vector<std::int32_t> pos(20);
  for (int i = 0; i < 20; ++i) pos[i] = 100 + i % 10;
  auto const before = c;
  auto const view = make_cache_view(c.k.data(), c.v.data(), c.extents, c.layout, c.lengths.data(), pos.data());
  compress(cpu, KnormPress{0.5}, Observation<float>{}, view);
  for (int h = 0; h < 2; ++h)
    for (int j = 0; j < 5; ++j) {
      int const src = pos[h * 10 + j] - 100;
      CHECK(c.k[(h * 10 + j) * 4] == before.k[(h * 10 + src) * 4]);
      if (j > 0) CHECK(pos[h * 10 + j] > pos[h * 10 + j - 1]);
    }
}

TEST_CASE("a ratio of 0 changes nothing", "[view]") {
  kvc_test::OwnedCache<float> c(1, 2, 10, 4);
  c.fill_random(5);
  auto const before = c;
  compress(cpu, KnormPress{0.0}, Observation<float>{}, c.view());
  CHECK(c.k == before.k);
  CHECK(c.v == before.v);
  CHECK(c.lengths == before.lengths);
}

TEST_CASE("bad views are rejected with the argument and the value", "[view][errors]") {
  CacheExtents const e{1, 2, 8, 4};
  std::vector<float> k(64), v(64);
  std::vector<std::int32_t> len(2, 8);
  auto const l = make_strided_layout(e, {Axis::kBatch, Axis::kHead, Axis::kSeq, Axis::kDim});
  SECTION("null keys") {
    REQUIRE_THROWS_WITH(make_cache_view<float>(nullptr, v.data(), e, l, len.data()), Catch::Contains("keys must not be null"));
  }
  SECTION("null values") {
    REQUIRE_THROWS_WITH(make_cache_view<float>(k.data(), nullptr, e, l, len.data()), Catch::Contains("values must not be null"));
  }
  SECTION("null lengths") {
    REQUIRE_THROWS_WITH(make_cache_view(k.data(), v.data(), e, l, nullptr), Catch::Contains("lengths must not be null"));
  }
  SECTION("K aliasing V") {
    REQUIRE_THROWS_WITH(make_cache_view(k.data(), k.data(), e, l, len.data()), Catch::Contains("alias"));
  }
  SECTION("a length above capacity") {
    len[1] = 9;
    REQUIRE_THROWS_WITH(make_cache_view(k.data(), v.data(), e, l, len.data()),
                        Catch::Contains("lengths[1] = 9") && Catch::Contains("capacity = 8"));
  }
  SECTION("a negative length") {
    len[0] = -1;
    REQUIRE_THROWS_WITH(make_cache_view(k.data(), v.data(), e, l, len.data()), Catch::Contains("lengths[0] = -1"));
  }
  SECTION("a zero extent") {
    REQUIRE_THROWS_WITH(make_strided_layout(CacheExtents{1, 0, 8, 4}, l.strides),
                        Catch::Contains("kv_heads") && Catch::Contains("0"));
  }
  SECTION("overlapping strides") {
    REQUIRE_THROWS_WITH(make_strided_layout(e, {64, 32, 2, 1}), Catch::Contains("strides[seq] = 2") && Catch::Contains("overlaps"));
  }
  SECTION("a non-positive stride") {
    REQUIRE_THROWS_WITH(make_strided_layout(e, {64, 32, 0, 1}), Catch::Contains("strides[seq]") && Catch::Contains("0"));
  }
  SECTION("an element count that overflows 64 bits") {
    std::int64_t const big = std::int64_t{1} << 20;
    REQUIRE_THROWS_WITH(make_strided_layout(CacheExtents{big, big, big, big}, {Axis::kBatch, Axis::kHead, Axis::kSeq, Axis::kDim}),
                        Catch::Contains("overflows 64 bits"));
  }
  SECTION("strides whose offsets overflow 64 bits") {
    std::int64_t const huge = std::numeric_limits<std::int64_t>::max() / 4;
    REQUIRE_THROWS_WITH(make_strided_layout(CacheExtents{8, 2, 8, 4}, {huge, 32, 4, 1}), Catch::Contains("overflow"));
  }
  SECTION("an axis named twice") {
    REQUIRE_THROWS_WITH(make_strided_layout(e, {Axis::kBatch, Axis::kBatch, Axis::kSeq, Axis::kDim}),
                        Catch::Contains("each axis once"));
  }
  SECTION("a null tensor") {
    REQUIRE_THROWS_WITH(make_tensor4<float>(nullptr, {1, 2, 3, 4}), Catch::Contains("tensor data must not be null"));
  }
  SECTION("a tensor with a zero extent") {
    REQUIRE_THROWS_WITH(make_tensor4(k.data(), {1, 0, 3, 4}), Catch::Contains("shape[1] must be positive, got 0"));
  }
}

}  // namespace KVC_TEST_TU
