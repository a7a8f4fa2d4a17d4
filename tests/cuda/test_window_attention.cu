// SnapKVPress and TOVAPress on the GPU against the CPU presses: from post-RoPE window queries and
// from given attention probabilities, over dtype × head_dim × layout × GQA group × window size ×
// kernel size × batch (per-head lengths) × length, and their errors (host wording, device status).
//
// Tolerance: relative 1e-4, no atol. Every score is a sum of positive probabilities; a probability
// exp(z − max)/Σ differs from the CPU's only through the float rounding of the logits (dot products
// over head_dim in another order, ≈ 1e-6 relative) and of the sums, far below 1e-4.

// The kernels' headers come first: the helpers call cuda_impl::score by qualified name.
#include "kvcompress/cuda/window_attention.cuh"
#include "scorer_test_caches.cuh"

using namespace kvcompress;
using namespace kvc_cuda_test;

namespace {

constexpr float kRtol = 1e-4f;

struct WindowShape {
  std::int64_t batch, heads, cap;
  std::vector<std::int32_t> lengths;
};

/// One row as short as the window allows, odd lengths, rows of different lengths, one row across
/// several key chunks (kWindowSplit = 512).
std::vector<WindowShape> window_shapes(std::int64_t w) {
  auto const n = [&](std::int64_t x) { return static_cast<std::int32_t>(w + x); };
  return {{1, 2, w + 37, {n(1), n(37)}}, {3, 2, w + 1100, {n(1100), n(1), n(513), n(34), n(2), n(1099)}}};
}

template <class Press, class T>
void check_from_queries(Press const& press, LayoutKind kind, std::int64_t d, std::int64_t group, std::int64_t w,
                        WindowShape const& s) {
  CacheExtents const e{s.batch, s.heads, s.cap, d};
  CAPTURE(layout_name(kind), d, group, w, s.batch, s.cap);
  auto const keys = logical_keys(e, static_cast<std::uint32_t>(d + s.cap + w), 0.0f);
  auto const wq = window_queries<T>(s.batch, s.heads * group, w, d, static_cast<std::uint32_t>(w + group), 2.0f);
  with_cache<T>(kind, e, s.lengths, keys, [&](auto& c) {
    Observation<T> host_obs, dev_obs;
    host_obs.window_queries = wq.host;
    dev_obs.window_queries = wq.device;
    auto const want = kvcompress::score(CpuDevice{2}, press, host_obs, c.host);
    auto const got = device_scores(press, dev_obs, c.device);
    require_close_live(got, want, s.lengths, s.cap, kRtol, 0.0f);
  });
}

/// Attention [batch, q_heads, q_len, n] covers every row, so all rows have length n = capacity.
template <class Press, class T>
void check_from_attention(Press const& press, LayoutKind kind, std::int64_t group, std::int64_t w,
                          std::int64_t batch, std::int64_t n) {
  std::int64_t const heads = 2, d = 64, q_len = w + 3;
  CacheExtents const e{batch, heads, n, d};
  CAPTURE(layout_name(kind), group, w, batch, n);
  std::vector<std::int32_t> const lengths(static_cast<std::size_t>(batch * heads), static_cast<std::int32_t>(n));
  auto const att = attention_probs<T>(batch, heads * group, q_len, n, static_cast<std::uint32_t>(n + w));
  with_cache<T>(kind, e, lengths, logical_keys(e, 3, 0.0f), [&](auto& c) {
    Observation<T> host_obs, dev_obs;
    host_obs.attention = att.host;
    dev_obs.attention = att.device;
    auto const want = kvcompress::score(CpuDevice{2}, press, host_obs, c.host);
    auto const got = device_scores(press, dev_obs, c.device);
    require_close_live(got, want, lengths, n, kRtol, 0.0f);
  });
}

}  // namespace

TEMPLATE_TEST_CASE("cuda SnapKVPress from window queries matches the CPU", "[cuda][snap_kv]", float,
                   kvcompress::half, kvcompress::bfloat16) {
  struct WindowKernel {
    std::int64_t w, kernel;
  };
  for (std::int64_t d : {64, 128})
    for (LayoutKind kind : kAllLayouts)
      for (std::int64_t group : {1, 4})
        for (WindowKernel wk : {WindowKernel{1, 1}, WindowKernel{8, 5}, WindowKernel{64, 7}})
          for (WindowShape const& s : window_shapes(wk.w))
            check_from_queries<SnapKVPress, TestType>(SnapKVPress{0.5, wk.w, wk.kernel}, kind, d, group, wk.w, s);
}

TEST_CASE("cuda SnapKVPress covers every head_dim, a window wider than the resident queries, a long row",
          "[cuda][snap_kv]") {
  for (std::int64_t d : {80, 96, 256})
    check_from_queries<SnapKVPress, kvcompress::half>(SnapKVPress{0.5, 8, 5}, LayoutKind::kHF, d, 4, 8,
                                                      window_shapes(8)[1]);
  // 100 window queries per head: pass 3 goes through the queries in two chunks.
  check_from_queries<SnapKVPress, float>(SnapKVPress{0.5, 100, 3}, LayoutKind::kPagedPerSequence, 128, 2, 100,
                                         window_shapes(100)[0]);
  WindowShape const long_row{1, 2, 4099, {4099, 4001}};
  check_from_queries<SnapKVPress, kvcompress::bfloat16>(SnapKVPress{0.5, 64, 5}, LayoutKind::kTokenMajorStride2, 128,
                                                        4, 64, long_row);
}

TEMPLATE_TEST_CASE("cuda SnapKVPress from given attention matches the CPU", "[cuda][snap_kv]", float,
                   kvcompress::half, kvcompress::bfloat16) {
  for (LayoutKind kind : {LayoutKind::kHF, LayoutKind::kPagedPerHead})
    for (std::int64_t group : {1, 4})
      for (std::int64_t w : {1, 8})
        for (std::int64_t batch : {1, 3})
          for (std::int64_t kernel : {1, 5, 7})
            check_from_attention<SnapKVPress, TestType>(SnapKVPress{0.5, w, kernel}, kind, group, w, batch,
                                                        batch == 1 ? w + 1 : 301);
}

TEMPLATE_TEST_CASE("cuda TOVAPress matches the CPU, from window queries of any width and from attention",
                   "[cuda][tova]", float, kvcompress::half, kvcompress::bfloat16) {
  for (std::int64_t d : {64, 128})
    for (LayoutKind kind : kAllLayouts)
      for (std::int64_t group : {1, 4})
        for (std::int64_t w : {1, 8}) {
          // TOVA needs the kv heads of a batch element to share their length; elements differ.
          check_from_queries<TOVAPress, TestType>(TOVAPress{0.5}, kind, d, group, w, {1, 2, 9, {2, 2}});
          check_from_queries<TOVAPress, TestType>(TOVAPress{0.5}, kind, d, group, w,
                                                  {3, 2, 1201, {1201, 1201, 37, 37, 600, 600}});
        }
  for (std::int64_t group : {1, 4})
    for (std::int64_t batch : {1, 3})
      check_from_attention<TOVAPress, TestType>(TOVAPress{0.5}, LayoutKind::kHF, group, 1, batch, batch == 1 ? 2 : 257);
}

TEST_CASE("cuda window presses reject bad input with the CPU's wording, and bad lengths on the device",
          "[cuda][window][errors]") {
  std::int64_t const w = 8, d = 64, q_heads = 4;
  CacheExtents const e{2, 2, 40, d};
  std::vector<std::int32_t> const lengths{40, 30, 8, 40};
  auto const wq = window_queries<float>(2, q_heads, w, d, 1, 1.0f);
  with_cache<float>(LayoutKind::kHF, e, lengths, logical_keys(e, 1, 0.0f), [&](auto& c) {
    Observation<float> obs;
    obs.window_queries = wq.device;
    cuda_impl::DeviceStatus st{};
    SECTION("neither window queries nor attention") {
      CHECK_THROWS_WITH(device_scores(SnapKVPress{0.5, w, 5}, Observation<float>{}, c.device, st),
                        Catch::Contains("observation.window_queries") && Catch::Contains("observation.attention"));
    }
    SECTION("window_size and kernel_size") {
      CHECK_THROWS_WITH(device_scores(SnapKVPress{0.5, 0, 5}, obs, c.device, st),
                        Catch::Contains("window_size must be positive, got 0"));
      CHECK_THROWS_WITH(device_scores(SnapKVPress{0.5, w, 4}, obs, c.device, st),
                        Catch::Contains("kernel_size must be odd and positive, got 4"));
    }
    SECTION("window queries of another shape") {
      Observation<float> o;
      o.window_queries = make_tensor4(wq.device.data, {2, q_heads, w / 2, 2 * d});
      CHECK_THROWS_WITH(device_scores(SnapKVPress{0.5, w / 2, 5}, o, c.device, st), Catch::Contains("head_dim = 128"));
      o.window_queries = make_tensor4(wq.device.data, {2, 3, w, d});
      CHECK_THROWS_WITH(device_scores(SnapKVPress{0.5, w, 5}, o, c.device, st), Catch::Contains("heads = 3"));
      o.window_queries = make_tensor4(wq.device.data, {1, q_heads, w, d});
      CHECK_THROWS_WITH(device_scores(SnapKVPress{0.5, w, 5}, o, c.device, st), Catch::Contains("batch = 1"));
      CHECK_THROWS_WITH(device_scores(SnapKVPress{0.5, 4, 5}, obs, c.device, st),
                        Catch::Contains("holds 8 tokens, window_size = 4"));
    }
    SECTION("window queries in host memory") {
      Observation<float> o;
      o.window_queries = wq.host;
      CHECK_THROWS_WITH(device_scores(SnapKVPress{0.5, w, 5}, o, c.device, st),
                        Catch::Contains("observation.window_queries") && Catch::Contains("host memory"));
    }
    SECTION("a row not longer than the window is recorded on the device") {
      (void)device_scores(SnapKVPress{0.5, w, 5}, obs, c.device, st);
      CHECK(st.code == static_cast<int>(cuda_impl::StatusCode::kLengthNotAboveWindow));
      CHECK_THROWS_WITH(cuda_impl::throw_if_failed(st), Catch::Contains("must exceed window_size = 8"));
      CHECK(st.row == 2);
      CHECK(st.length == 8);
      CHECK(st.aux == w);
    }
    SECTION("given attention that does not cover a row's keys is recorded on the device") {
      auto const att = attention_probs<float>(2, q_heads, w + 2, 40, 5);
      Observation<float> o;
      o.attention = att.device;
      c.mirror.lengths.upload({40, 39, 40, 40});
      (void)device_scores(SnapKVPress{0.5, w, 5}, o, c.device, st);
      CHECK(st.code == static_cast<int>(cuda_impl::StatusCode::kLengthMismatch));
      CHECK(st.row == 1);
      CHECK(st.length == 39);
      auto const short_att = attention_probs<float>(2, q_heads, w, 40, 5);
      o.attention = short_att.device;
      CHECK_THROWS_WITH(device_scores(SnapKVPress{0.5, w, 5}, o, c.device, st),
                        Catch::Contains("observation.attention q_len = 8 must exceed window_size = 8"));
    }
    SECTION("TOVA: kv heads of one batch element with different lengths are recorded on the device") {
      c.mirror.lengths.upload({40, 40, 12, 40});
      (void)device_scores(TOVAPress{0.5}, obs, c.device, st);
      CHECK(st.code == static_cast<int>(cuda_impl::StatusCode::kLengthMismatch));
      CHECK(st.row == 3);
      CHECK(st.length == 40);
      CHECK(st.aux == 12);
    }
    SECTION("TOVA: attention of a single query is rejected as on the CPU") {
      auto const att = attention_probs<float>(2, q_heads, 1, 40, 6);
      Observation<float> o;
      o.attention = att.device;
      CHECK_THROWS_WITH(device_scores(TOVAPress{0.5}, o, c.device, st),
                        Catch::Contains("observation.attention q_len = 1 must exceed window_size = 1"));
    }
  });
}
