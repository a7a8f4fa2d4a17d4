#pragma once
// Helpers of the CUDA scorer tests: one logical key cache laid out in each layout the kernels must
// read (HF order, token-major with an innermost stride of 2, paged per sequence and per head with a
// shuffled block table), mirrored on the device; running a press's CUDA scorer; comparing it with
// the CPU's scores on the live entries. Include the CUDA press headers first: `device_scores` names
// cuda_impl::score and cuda_impl::score_workspace_bytes.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "cuda_test_util.cuh"

namespace kvc_cuda_test {

enum class LayoutKind { kHF, kTokenMajorStride2, kPagedPerSequence, kPagedPerHead };
inline constexpr LayoutKind kAllLayouts[] = {LayoutKind::kHF, LayoutKind::kTokenMajorStride2,
                                             LayoutKind::kPagedPerSequence, LayoutKind::kPagedPerHead};

inline char const* layout_name(LayoutKind k) {
  switch (k) {
    case LayoutKind::kHF: return "strided [b, h, s, d]";
    case LayoutKind::kTokenMajorStride2: return "strided [b, s, h, d], innermost stride 2";
    case LayoutKind::kPagedPerSequence: return "paged per sequence (NHD, page 16)";
    case LayoutKind::kPagedPerHead: return "paged per head (page 8)";
  }
  return "?";
}

/// Key (b, h, s, d) of every test cache: N(0, 1) + bias[d], the same in every layout.
inline std::vector<float> logical_keys(kvcompress::CacheExtents const& e, std::uint32_t seed, float bias_scale) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> bias(static_cast<std::size_t>(e.head_dim));
  for (auto& x : bias) x = bias_scale * dist(gen);
  std::vector<float> k(static_cast<std::size_t>(e.batch * e.kv_heads * e.capacity * e.head_dim));
  for (std::size_t i = 0; i < k.size(); ++i) k[i] = dist(gen) + bias[i % bias.size()];
  return k;
}

/// Host buffers of one cache in one layout, a validated host view and its device mirror.
template <class T, class L>
struct TestCache {
  std::vector<T> k, v{T(0.0f)};  // V is never read by a scorer: one element keeps it distinct from K
  std::vector<std::int32_t> lengths, table;
  kvcompress::KVCacheView<T, L> host;
  DeviceMirror<T, L> mirror;
  kvcompress::KVCacheView<T, L> device;

  TestCache(std::vector<T> k_in, std::vector<std::int32_t> lengths_in, std::vector<std::int32_t> table_in,
            kvcompress::CacheExtents const& e, L const& layout)
      : k(std::move(k_in)),
        lengths(std::move(lengths_in)),
        table(std::move(table_in)),
        host(make_host(e, layout)),
        mirror(k, v, lengths, {}, table),
        device(mirror.view(host)) {}

 private:
  kvcompress::KVCacheView<T, L> make_host(kvcompress::CacheExtents const& e, L layout) {
    if constexpr (std::is_same_v<L, kvcompress::PagedLayout>) {
      layout.block_table = table.data();
    }
    return kvcompress::make_cache_view(k.data(), v.data(), e, layout, layout, lengths.data());
  }
};

/// Calls f(TestCache<T, L>&) for the cache of extents e, lengths and keys `logical` ([b, h, s, d])
/// laid out as `kind`.
template <class T, class F>
void with_cache(LayoutKind kind, kvcompress::CacheExtents const& e, std::vector<std::int32_t> const& lengths,
                std::vector<float> const& logical, F&& f) {
  using namespace kvcompress;
  auto const store = [&](auto const& layout, std::size_t size) {
    std::vector<T> buf(size, T(0.0f));
    for (std::int64_t b = 0; b < e.batch; ++b)
      for (std::int64_t h = 0; h < e.kv_heads; ++h)
        for (std::int64_t s = 0; s < e.capacity; ++s)
          for (std::int64_t d = 0; d < e.head_dim; ++d)
            buf[static_cast<std::size_t>(layout.offset(b, h, s, d))] =
                T(logical[static_cast<std::size_t>(((b * e.kv_heads + h) * e.capacity + s) * e.head_dim + d)]);
    return buf;
  };
  if (kind == LayoutKind::kHF || kind == LayoutKind::kTokenMajorStride2) {
    StridedLayout const l = kind == LayoutKind::kHF
                                ? make_strided_layout(e, {Axis::kBatch, Axis::kHead, Axis::kSeq, Axis::kDim})
                                : make_strided_layout(e, {Axis::kBatch, Axis::kSeq, Axis::kHead, Axis::kDim}, 2);
    auto const size = static_cast<std::size_t>(detail::checked_span(e, l, "test layout"));
    TestCache<T, StridedLayout> c(store(l, size), lengths, {}, e, l);
    f(c);
    return;
  }
  bool const per_head = kind == LayoutKind::kPagedPerHead;
  std::int64_t const page = per_head ? 8 : 16, per_row = (e.capacity + page - 1) / page;
  std::int64_t const table_rows = per_head ? e.batch * e.kv_heads : e.batch;
  std::vector<std::int32_t> table(static_cast<std::size_t>(table_rows * per_row));
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), std::mt19937(7));  // pages out of order: the table matters
  PagedConfig cfg;
  cfg.table = per_head ? PageTable::kPerHead : PageTable::kPerSequence;
  cfg.order = PageOrder::kNHD;
  cfg.page_size = page;
  cfg.num_pages = table_rows * per_row;
  cfg.block_table = table.data();
  cfg.pages_per_row = per_row;
  PagedLayout const l = make_paged_layout(e, cfg);
  auto const size = static_cast<std::size_t>(cfg.num_pages * l.page_stride);
  TestCache<T, PagedLayout> c(store(l, size), lengths, table, e, l);
  f(c);
}

/// Runs the CUDA scorer of `press` on the default stream; returns the scores [rows, capacity]
/// (entries it does not write are NaN) and the device status.
template <class P, class T, class L>
std::vector<float> device_scores(P const& press, kvcompress::Observation<T> const& obs,
                                 kvcompress::KVCacheView<T, L> const& cache, kvcompress::cuda_impl::DeviceStatus& st) {
  namespace ci = kvcompress::cuda_impl;
  std::size_t const bytes = ci::score_workspace_bytes(press, obs, cache);
  DeviceBuffer<std::byte> scratch(bytes);
  DeviceBuffer<ci::DeviceStatus> status(1);
  auto const n = static_cast<std::size_t>(cache.extents.batch * cache.extents.kv_heads * cache.extents.capacity);
  DeviceBuffer<float> scores(n);
  KVC_CUDA_CHECK(cudaMemset(status.get(), 0, sizeof(ci::DeviceStatus)));
  KVC_CUDA_CHECK(cudaMemset(scores.get(), 0xff, n * sizeof(float)));
  kvcompress::Workspace ws(scratch.get(), bytes);
  ci::score(kvc_cuda_test::kChecked, press, obs, cache, scores.get(), ws, status.get());
  KVC_CUDA_CHECK(cudaDeviceSynchronize());
  st = status.download()[0];
  return scores.download();
}

/// The CUDA scorer's output, which must succeed on the device.
template <class P, class T, class L>
std::vector<float> device_scores(P const& press, kvcompress::Observation<T> const& obs,
                                 kvcompress::KVCacheView<T, L> const& cache) {
  kvcompress::cuda_impl::DeviceStatus st{};
  auto s = device_scores(press, obs, cache, st);
  kvcompress::cuda_impl::throw_if_failed(st);
  return s;
}

/// |got − want| ≤ atol + rtol·|want| on [0, lengths[r]) of every row.
inline void require_close_live(std::vector<float> const& got, std::vector<float> const& want,
                               std::vector<std::int32_t> const& lengths, std::int64_t cap, float rtol, float atol) {
  REQUIRE(got.size() == want.size());
  std::vector<float> g, w;
  for (std::size_t r = 0; r < lengths.size(); ++r)
    for (std::int64_t i = 0; i < lengths[r]; ++i) {
      g.push_back(got[r * static_cast<std::size_t>(cap) + static_cast<std::size_t>(i)]);
      w.push_back(want[r * static_cast<std::size_t>(cap) + static_cast<std::size_t>(i)]);
    }
  require_close(g, w, rtol, atol);
}

/// A host tensor and its device copy with the same shape and strides.
template <class T>
struct TestTensor {
  std::vector<T> host_data;
  DeviceBuffer<T> device_data;
  kvcompress::Tensor4<T> host, device;

  TestTensor(std::vector<T> data, std::array<std::int64_t, 4> shape, std::array<std::int64_t, 4> strides)
      : host_data(std::move(data)),
        device_data(host_data),
        host(kvcompress::make_tensor4(host_data.data(), shape, strides)),
        device(kvcompress::make_tensor4(device_data.get(), shape, strides)) {}
};

/// Window queries [batch, q_heads, w, d] stored token-major ([batch, w, q_heads, d], as an engine's
/// projection writes them), N(0, scale²).
template <class T>
TestTensor<T> window_queries(std::int64_t batch, std::int64_t q_heads, std::int64_t w, std::int64_t d,
                             std::uint32_t seed, float scale) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<T> data(static_cast<std::size_t>(batch * q_heads * w * d));
  for (auto& x : data) x = T(dist(gen));
  return TestTensor<T>(std::move(data), {batch, q_heads, w, d}, {w * q_heads * d, d, q_heads * d, 1});
}

/// Attention probabilities [batch, q_heads, q_len, n], contiguous, uniform in [0, 1).
template <class T>
TestTensor<T> attention_probs(std::int64_t batch, std::int64_t q_heads, std::int64_t q_len, std::int64_t n,
                              std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(0.0f, 1.0f);
  std::vector<T> data(static_cast<std::size_t>(batch * q_heads * q_len * n));
  for (auto& x : data) x = T(dist(gen));
  return TestTensor<T>(std::move(data), {batch, q_heads, q_len, n}, {q_heads * q_len * n, q_len * n, n, 1});
}

}  // namespace kvc_cuda_test
