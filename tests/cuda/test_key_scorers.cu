// KnormPress, StreamingLLMPress and KeyDiffPress on the GPU against the CPU presses, over dtype ×
// head_dim × layout × batch (per-head lengths) × length, and their errors.
// The kernels' headers come first: the helpers call cuda_impl::score by qualified name.
#include "kvcompress/cuda/key_scorers.cuh"
#include "scorer_test_caches.cuh"

using namespace kvcompress;
using namespace kvc_cuda_test;

namespace {

/// (batch, kv heads, capacity, lengths): one row of length 1, odd lengths, rows of different
/// lengths in one batch, an empty row where the press allows it, a row past several key blocks.
struct Shape {
  std::int64_t batch, heads, cap;
  std::vector<std::int32_t> lengths;
};

std::vector<Shape> shapes(bool allow_empty, std::int32_t min_length) {
  std::int32_t const lo = std::max(min_length, 1);
  return {{1, 2, 37, {lo, 37}},
          {3, 2, 601, {601, allow_empty ? 0 : lo, 257, 33, lo + 2, 599}}};
}

template <class Press, class T>
void check_press(Press const& press, LayoutKind kind, std::int64_t d, Shape const& s, float rtol, float atol,
                 float bias = 0.0f) {
  CacheExtents const e{s.batch, s.heads, s.cap, d};
  CAPTURE(layout_name(kind), d, s.batch, s.cap);
  auto const keys = logical_keys(e, static_cast<std::uint32_t>(d + s.cap), bias);
  with_cache<T>(kind, e, s.lengths, keys, [&](auto& c) {
    Observation<T> const obs;
    auto const want = kvcompress::score(CpuDevice{1}, press, obs, c.host);
    auto const got = device_scores(press, obs, c.device);
    require_close_live(got, want, s.lengths, s.cap, rtol, atol);
  });
}

}  // namespace

TEMPLATE_TEST_CASE("cuda KnormPress matches the CPU for every head_dim, layout and per-head length",
                   "[cuda][knorm]", float, kvcompress::half, kvcompress::bfloat16) {
  // Both sides sum the squares of the same floats (in another order): 1e-5 relative is ample.
  for (std::int64_t d : {64, 80, 96, 128, 256})
    for (LayoutKind kind : kAllLayouts)
      for (Shape const& s : shapes(true, 1)) check_press<KnormPress, TestType>(KnormPress{0.5}, kind, d, s, 1e-5f, 0.0f);
}

TEST_CASE("cuda KnormPress matches the CPU on a 131072-entry row", "[cuda][knorm][long]") {
  Shape const s{1, 2, 131072, {131072, 131071}};
  check_press<KnormPress, kvcompress::half>(KnormPress{0.5}, LayoutKind::kHF, 128, s, 1e-5f, 0.0f);
  check_press<KnormPress, kvcompress::bfloat16>(KnormPress{0.5}, LayoutKind::kPagedPerSequence, 64, s, 1e-5f, 0.0f);
}

TEMPLATE_TEST_CASE("cuda StreamingLLMPress matches the CPU exactly", "[cuda][streaming_llm]", float, kvcompress::half, kvcompress::bfloat16) {
  for (std::int64_t d : {64, 128})
    for (LayoutKind kind : kAllLayouts)
      for (double ratio : {0.3, 0.9})
        for (std::int64_t n_sink : {0, 4}) {
          CAPTURE(ratio, n_sink);
          for (Shape const& s : shapes(false, static_cast<std::int32_t>(n_sink) + 1))
            check_press<StreamingLLMPress, TestType>(StreamingLLMPress{ratio, n_sink}, kind, d, s, 0.0f, 0.0f);
        }
}

TEMPLATE_TEST_CASE("cuda KeyDiffPress matches the CPU for every head_dim, layout and per-head length",
                   "[cuda][key_diff]", float, kvcompress::half, kvcompress::bfloat16) {
  // Keys with a common direction (bias), as real keys have: the anchor is then far from 0. The CPU
  // sums the n normalised keys one after the other, a relative rounding of about 2^-24·sqrt(n/3)
  // (≈ 1e-6 at n = 601, 2e-6 at 4099) in the anchor, which moves a cosine by up to as much in absolute
  // terms: hence atol 2e-6 besides rtol 1e-5 on scores in [−1, 1].
  for (std::int64_t d : {64, 80, 96, 128, 256})
    for (LayoutKind kind : kAllLayouts)
      for (Shape const& s : shapes(true, 1))
        check_press<KeyDiffPress, TestType>(KeyDiffPress{0.5}, kind, d, s, 1e-5f, 2e-6f, 1.0f);
  Shape const long_row{1, 2, 4099, {4099, 4097}};
  check_press<KeyDiffPress, TestType>(KeyDiffPress{0.5}, LayoutKind::kTokenMajorStride2, 128, long_row, 1e-5f, 2e-6f,
                                      1.0f);
}

TEST_CASE("cuda key scorers reject bad input with the CPU's wording, and bad lengths on the device",
          "[cuda][errors]") {
  CacheExtents const e{2, 2, 16, 64};
  std::vector<std::int32_t> const lengths{16, 4, 9, 16};
  with_cache<float>(LayoutKind::kHF, e, lengths, logical_keys(e, 1, 0.0f), [&](auto& c) {
    Observation<float> const obs;
    cuda_impl::DeviceStatus st{};
    SECTION("StreamingLLM: a row not longer than n_sink is recorded on the device") {
      (void)device_scores(StreamingLLMPress{0.5, 4}, obs, c.device, st);
      CHECK(st.code == static_cast<int>(cuda_impl::StatusCode::kLengthNotAboveSink));
      CHECK(st.row == 1);
      CHECK(st.aux == 4);
      CHECK_THROWS_WITH(cuda_impl::throw_if_failed(st), Catch::Contains("n = 4") && Catch::Contains("n_sink = 4"));
    }
    SECTION("StreamingLLM: negative n_sink and a bad ratio are host errors") {
      CHECK_THROWS_WITH(device_scores(StreamingLLMPress{0.5, -1}, obs, c.device, st),
                        Catch::Contains("n_sink must be non-negative, got -1"));
      CHECK_THROWS_WITH(device_scores(StreamingLLMPress{1.5, 4}, obs, c.device, st),
                        Catch::Contains("compression_ratio must be in [0, 1), got 1.5"));
    }
    SECTION("a length outside [0, capacity] is recorded and nothing is read past the row") {
      std::vector<std::int32_t> const bad{16, 17, 9, 16};
      c.mirror.lengths.upload(bad);
      (void)device_scores(KnormPress{0.5}, obs, c.device, st);
      CHECK(st.code == static_cast<int>(cuda_impl::StatusCode::kLengthOutOfRange));
      CHECK(st.row == 1);
      (void)device_scores(KeyDiffPress{0.5}, obs, c.device, st);
      CHECK(st.code == static_cast<int>(cuda_impl::StatusCode::kLengthOutOfRange));
    }
    SECTION("host memory under the CUDA device") {
      CHECK_THROWS_WITH(device_scores(KnormPress{0.5}, obs, c.host, st), Catch::Contains("host memory"));
    }
    SECTION("an unsupported head_dim") {
      CacheExtents const e72{1, 1, 4, 72};
      with_cache<float>(LayoutKind::kHF, e72, {4}, logical_keys(e72, 2, 0.0f), [&](auto& c72) {
        CHECK_THROWS_WITH(device_scores(KnormPress{0.5}, obs, c72.device, st), Catch::Contains("head_dim = 72"));
      });
    }
  });
}
