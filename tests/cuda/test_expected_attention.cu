// Expected Attention on the GPU against the CPU device (kvcompress::score(cpu, …)) over storage
// type × head_dim × covariance × value norm × ε × n_sink × GQA group × batch and per-head lengths ×
// cache layout (strided in three orders, paged with both table kinds) × query strides × RoPE
// variant, the stats press, and the errors found on the host and on the device.
//
// Tolerance: relative 1e-4 (what the brief asks; the two sides differ only in float summation
// order: the GEMMs, the softmax normaliser and the averaged rotation), plus an absolute 1e-9 that
// only matters for a probability that float exp flushes towards zero on one side: every score here
// is ≥ ~1e-7 (the rows are ≤ 131072 entries long and the logits spread by a few units).
#include <algorithm>
#include <cstddef>
#include <limits>
#include <numeric>
#include <random>
#include <utility>

#include "cuda_test_util.cuh"
#include "kvcompress/cuda/expected_attention.cuh"

using namespace kvcompress;
using kvc_cuda_test::DeviceBuffer;

namespace {

enum class CacheKind { kContiguous, kTokenMajorInterleaved, kTransposed, kPagedSequence, kPagedHead };
enum class QueryKind { kContiguous, kTokenMajorStride2, kBroadcastBatch };

RotaryEmbedding make_rope(int head_dim, bool llama3) {
  RopeConfig c;
  c.head_dim = head_dim;
  if (llama3) {
    c.type = RopeType::kLlama3;
    c.theta = 500000.0;
    c.factor = 8.0;
    c.original_max_position_embeddings = 8192;
    c.max_position_embeddings = 131072;
  }
  return RotaryEmbedding(c);
}

struct Case {
  char const* name;
  int head_dim;
  bool cov, vnorm;
  float eps;
  std::int64_t n_sink, kv_heads, group, batch, cap;
  std::vector<std::int32_t> lengths;  // [batch, kv_heads]
  CacheKind cache;
  bool llama3;
  std::int64_t q_len;
  QueryKind queries;
  std::int64_t position = 0;
};

/// A host cache of any layout with N(0, 1) entries in every slot, and its device mirror.
template <class T, class L>
struct HostCache {
  CacheExtents e;
  L layout;
  std::vector<T> k, v;
  std::vector<std::int32_t> lengths, table;

  KVCacheView<T, L> view() { return make_cache_view(k.data(), v.data(), e, layout, layout, lengths.data()); }

  void fill(std::uint32_t seed) {
    std::mt19937 gen(seed);
    std::normal_distribution<float> dist;
    for (std::int64_t b = 0; b < e.batch; ++b)
      for (std::int64_t h = 0; h < e.kv_heads; ++h)
        for (std::int64_t s = 0; s < e.capacity; ++s)
          for (std::int64_t c = 0; c < e.head_dim; ++c) {
            auto const o = static_cast<std::size_t>(layout.offset(b, h, s, c));
            k[o] = from_float<T>(dist(gen));
            v[o] = from_float<T>(dist(gen));
          }
  }
};

template <class T>
HostCache<T, StridedLayout> strided_cache(Case const& c, std::array<Axis, 4> order, std::int64_t innermost) {
  CacheExtents const e{c.batch, c.kv_heads, c.cap, c.head_dim};
  auto const size = static_cast<std::size_t>(innermost * c.batch * c.kv_heads * c.cap * c.head_dim);
  HostCache<T, StridedLayout> h{e, make_strided_layout(e, order, innermost), std::vector<T>(size), std::vector<T>(size),
                                c.lengths, {}};
  h.fill(7);
  return h;
}

template <class T>
HostCache<T, PagedLayout> paged_cache(Case const& c, PageTable kind) {
  CacheExtents const e{c.batch, c.kv_heads, c.cap, c.head_dim};
  std::int64_t const page = kind == PageTable::kPerHead ? 8 : 16, per_row = (c.cap + page - 1) / page;
  std::int64_t const table_rows = c.batch * (kind == PageTable::kPerHead ? c.kv_heads : 1);
  HostCache<T, PagedLayout> h{e, {}, {}, {}, c.lengths, std::vector<std::int32_t>(static_cast<std::size_t>(table_rows * per_row))};
  std::iota(h.table.begin(), h.table.end(), 0);
  std::shuffle(h.table.begin(), h.table.end(), std::mt19937(3));  // pages out of order
  h.layout = make_paged_layout(e, PagedConfig{kind, PageOrder::kNHD, page, table_rows * per_row, h.table.data(), per_row});
  auto const pool = static_cast<std::size_t>(table_rows * per_row * h.layout.page_stride);
  h.k.resize(pool);
  h.v.resize(pool);
  h.fill(7);
  return h;
}

/// Queries [batch, H, q_len, d] = a per-head offset (so that μ is far from 0) + N(0, 1), laid out as
/// `kind` says; returns the storage and the strides.
template <class T>
std::pair<std::vector<T>, std::array<std::int64_t, 4>> make_queries(Case const& c) {
  std::int64_t const bsz = c.batch, hq = c.kv_heads * c.group, q = c.q_len, d = c.head_dim;
  std::array<std::int64_t, 4> strides{};
  std::int64_t stored_batches = bsz, size = 0;
  switch (c.queries) {
    case QueryKind::kContiguous: strides = {hq * q * d, q * d, d, 1}; size = bsz * hq * q * d; break;
    case QueryKind::kTokenMajorStride2:  // [q_len, batch, H, d], every other element
      strides = {2 * hq * d, 2 * d, 2 * bsz * hq * d, 2};
      size = 2 * bsz * hq * q * d;
      break;
    case QueryKind::kBroadcastBatch:  // one batch entry shared by all (stride 0)
      strides = {0, q * d, d, 1};
      size = hq * q * d;
      stored_batches = 1;
      break;
  }
  std::vector<T> data(static_cast<std::size_t>(size));
  std::mt19937 gen(11);
  std::normal_distribution<float> dist;
  std::vector<float> offset(static_cast<std::size_t>(hq * d));
  for (auto& x : offset) x = dist(gen);
  for (std::int64_t b = 0; b < stored_batches; ++b)
    for (std::int64_t j = 0; j < hq; ++j)
      for (std::int64_t t = 0; t < q; ++t)
        for (std::int64_t e = 0; e < d; ++e)
          data[static_cast<std::size_t>(b * strides[0] + j * strides[1] + t * strides[2] + e * strides[3])] =
              from_float<T>(offset[static_cast<std::size_t>(j * d + e)] + dist(gen));
  return {std::move(data), strides};
}

/// CUDA scores of `press` (device copies of everything), with the device status checked.
template <class Press, class T, class L>
std::vector<float> cuda_scores(Press const& press, Observation<T> const& obs_dev, KVCacheView<T, L> const& view_dev) {
  std::size_t const bytes = cuda_impl::score_workspace_bytes(press, obs_dev, view_dev);
  DeviceBuffer<std::byte> scratch(bytes);
  Workspace ws(scratch.get(), bytes);
  auto const e = view_dev.extents;
  DeviceBuffer<float> scores(static_cast<std::size_t>(e.batch * e.kv_heads * e.capacity));
  DeviceBuffer<cuda_impl::DeviceStatus> status(1);
  KVC_CUDA_CHECK(cudaMemset(status.get(), 0, sizeof(cuda_impl::DeviceStatus)));
  cuda_impl::score(kvc_cuda_test::kChecked, press, obs_dev, view_dev, scores.get(), ws, status.get());
  KVC_CUDA_CHECK(cudaDeviceSynchronize());
  cuda_impl::throw_if_failed(status.download()[0]);
  return scores.download();
}

/// The live entries [0, lengths[r]) of every row.
std::vector<float> live(std::vector<float> const& scores, std::vector<std::int32_t> const& lengths, std::int64_t cap) {
  std::vector<float> out;
  for (std::size_t r = 0; r < lengths.size(); ++r)
    out.insert(out.end(), scores.begin() + static_cast<std::ptrdiff_t>(r * cap),
               scores.begin() + static_cast<std::ptrdiff_t>(r * cap + lengths[r]));
  return out;
}

template <class T, class L>
void check_case(Case const& c, HostCache<T, L>& host) {
  INFO(c.name);
  auto const rope = make_rope(c.head_dim, c.llama3);
  auto [q_host, strides] = make_queries<T>(c);
  ExpectedAttentionPress press;
  press.n_sink = c.n_sink;
  press.use_covariance = c.cov;
  press.use_vnorm = c.vnorm;
  press.epsilon = c.eps;
  Observation<T> obs;
  obs.queries = make_tensor4(q_host.data(), {c.batch, c.kv_heads * c.group, c.q_len, c.head_dim}, strides);
  obs.rope = &rope;
  obs.position = c.position;
  auto const host_view = host.view();
  auto const want = kvcompress::score(kvcompress::cpu, press, obs, host_view);

  kvc_cuda_test::DeviceMirror<T, L> mirror(host.k, host.v, host.lengths, {}, host.table);
  DeviceBuffer<T> q_dev(q_host);
  Observation<T> obs_dev = obs;
  obs_dev.queries.data = q_dev.get();
  auto const got = cuda_scores(press, obs_dev, mirror.view(host_view));
  kvc_cuda_test::require_close(live(got, c.lengths, c.cap), live(want, c.lengths, c.cap), 1e-4f, 1e-9f);
}

template <class T>
void run_case(Case const& c) {
  switch (c.cache) {
    case CacheKind::kContiguous: {
      auto h = strided_cache<T>(c, {Axis::kBatch, Axis::kHead, Axis::kSeq, Axis::kDim}, 1);
      check_case(c, h);
      break;
    }
    case CacheKind::kTokenMajorInterleaved: {
      auto h = strided_cache<T>(c, {Axis::kBatch, Axis::kSeq, Axis::kHead, Axis::kDim}, 2);
      check_case(c, h);
      break;
    }
    case CacheKind::kTransposed: {  // llama.cpp's V: head_dim is not the innermost axis
      auto h = strided_cache<T>(c, {Axis::kBatch, Axis::kHead, Axis::kDim, Axis::kSeq}, 1);
      check_case(c, h);
      break;
    }
    case CacheKind::kPagedSequence: {
      auto h = paged_cache<T>(c, PageTable::kPerSequence);
      check_case(c, h);
      break;
    }
    case CacheKind::kPagedHead: {
      auto h = paged_cache<T>(c, PageTable::kPerHead);
      check_case(c, h);
      break;
    }
  }
}

}  // namespace

TEST_CASE("cuda ExpectedAttention equals the CPU device (float)", "[cuda][ea]") {
  run_case<float>({"d64 cov vnorm sink4 GQA4 batch3, short and odd lengths, llama3", 64, true, true, 0.0f, 4, 2, 4, 3,
                   77, {77, 5, 40, 63, 77, 13}, CacheKind::kContiguous, true, 37, QueryKind::kContiguous});
  run_case<float>({"d128 cov vnorm paged per sequence, chunk at position 17, 2 token splits", 128, true, true, 0.0f, 4, 2,
                   4, 2, 300, {300, 257, 129, 5}, CacheKind::kPagedSequence, true, 700, QueryKind::kContiguous, 17});
  run_case<float>({"d64 mean only, no vnorm, no sinks, length 1", 64, false, false, 0.0f, 0, 1, 1, 2, 33, {1, 33},
                   CacheKind::kContiguous, false, 5, QueryKind::kContiguous});
}

TEST_CASE("cuda ExpectedAttention equals the CPU device (half)", "[cuda][ea]") {
  run_case<kvcompress::half>({"d80 cov no vnorm eps no sinks GQA1, interleaved token-major, strided queries, default rope", 80, true,
                  false, 1e-2f, 0, 3, 1, 1, 129, {129, 1, 65}, CacheKind::kTokenMajorInterleaved, false, 300,
                  QueryKind::kTokenMajorStride2});
  run_case<kvcompress::half>({"d256 cov vnorm eps paged per head GQA2", 256, true, true, 1e-2f, 4, 2, 2, 1, 200, {200, 67},
                  CacheKind::kPagedHead, false, 600, QueryKind::kContiguous});
  run_case<kvcompress::half>({"d128 cov 32k keys, 4k queries (token splits), interleaved token-major", 128, true, true, 0.0f, 4, 1, 4,
                  1, 32768, {32768}, CacheKind::kTokenMajorInterleaved, true, 4096, QueryKind::kTokenMajorStride2});
}

TEST_CASE("cuda ExpectedAttention equals the CPU device (bfloat16)", "[cuda][ea]") {
  run_case<bfloat16>({"d96 mean only vnorm eps, transposed cache, broadcast queries", 96, false, true, 1e-2f, 4, 2, 4, 3,
                      101, {101, 99, 5, 51, 7, 100}, CacheKind::kTransposed, true, 64, QueryKind::kBroadcastBatch});
  run_case<bfloat16>({"d128 mean only 131072 keys", 128, false, true, 0.0f, 4, 2, 4, 1, 131072, {131072, 131001},
                      CacheKind::kContiguous, true, 1024, QueryKind::kContiguous});
  run_case<bfloat16>({"d256 cov no vnorm, paged per sequence", 256, true, false, 0.0f, 4, 2, 1, 2, 70, {70, 9, 33, 70},
                      CacheKind::kPagedSequence, true, 40, QueryKind::kContiguous});
}

TEST_CASE("cuda ExpectedAttentionStats equals the CPU device", "[cuda][ea]") {
  std::int64_t const batch = 2, heads = 2, group = 4, q_heads = heads * group, cap = 150, d = 128;
  auto const rope = make_rope(static_cast<int>(d), true);
  std::mt19937 gen(5);
  std::normal_distribution<float> dist;
  std::vector<float> mean(static_cast<std::size_t>(q_heads * d)), cov(static_cast<std::size_t>(q_heads * d * d));
  for (auto& x : mean) x = dist(gen);
  for (std::int64_t j = 0; j < q_heads; ++j) {  // A·Aᵀ/d: symmetric positive semi-definite
    std::vector<float> a(static_cast<std::size_t>(d * d));
    for (auto& x : a) x = dist(gen);
    for (std::int64_t r = 0; r < d; ++r)
      for (std::int64_t c = 0; c < d; ++c) {
        float s = 0.0f;
        for (std::int64_t k = 0; k < d; ++k) s += a[r * d + k] * a[c * d + k];
        cov[(j * d + r) * d + c] = s / static_cast<float>(d);
      }
  }
  DeviceBuffer<float> mean_dev(mean), cov_dev(cov);
  for (bool use_cov : {true, false}) {
    Case const c{"stats", static_cast<int>(d), use_cov, true, 0.0f, 4, heads, group, batch, cap, {150, 77, 5, 149},
                 CacheKind::kContiguous, true, 1, QueryKind::kContiguous};
    auto host = strided_cache<bfloat16>(c, {Axis::kBatch, Axis::kHead, Axis::kSeq, Axis::kDim}, 1);
    ExpectedAttentionStatsPress press;
    press.use_covariance = use_cov;
    press.n_future_positions = 300;
    Observation<bfloat16> obs;
    obs.stats = {mean.data(), cov.data(), q_heads};
    obs.rope = &rope;
    obs.chunk_length = cap;
    auto const host_view = host.view();
    auto const want = kvcompress::score(kvcompress::cpu, press, obs, host_view);
    kvc_cuda_test::DeviceMirror<bfloat16, StridedLayout> mirror(host.k, host.v, host.lengths);
    Observation<bfloat16> obs_dev = obs;
    obs_dev.stats = {mean_dev.get(), cov_dev.get(), q_heads};
    auto const got = cuda_scores(press, obs_dev, mirror.view(host_view));
    INFO("use_covariance " << use_cov);
    kvc_cuda_test::require_close(live(got, c.lengths, cap), live(want, c.lengths, cap), 1e-4f, 1e-9f);
  }
}

namespace {

/// A small float cache on the device (contiguous) with the given lengths, and device queries.
struct SmallSetup {
  std::int64_t d;
  std::vector<std::int32_t> lengths;
  RotaryEmbedding rope;
  CacheExtents e;
  DeviceBuffer<float> k, v, q;
  DeviceBuffer<std::int32_t> len_dev;
  KVCacheView<float> view;

  SmallSetup(std::int64_t dim, std::vector<std::int32_t> lens)
      : d(dim), lengths(std::move(lens)), rope(make_rope(static_cast<int>(dim), false)),
        e{1, static_cast<std::int64_t>(lengths.size()), 16, dim},
        k(std::vector<float>(static_cast<std::size_t>(e.kv_heads * 16 * dim), 0.5f)),
        v(std::vector<float>(k.size(), 0.25f)),
        q(std::vector<float>(static_cast<std::size_t>(e.kv_heads * 8 * dim), 1.0f)),
        len_dev(lengths) {
    view = KVCacheView<float>{k.get(), v.get(), e, make_strided_layout(e, {Axis::kBatch, Axis::kHead, Axis::kSeq, Axis::kDim}),
                              make_strided_layout(e, {Axis::kBatch, Axis::kHead, Axis::kSeq, Axis::kDim}),
                              len_dev.get(), nullptr};
  }
  Observation<float> obs(float const* queries) const {
    Observation<float> o;
    o.queries = make_tensor4(queries, {1, e.kv_heads, 8, d});
    o.rope = &rope;
    return o;
  }
};

}  // namespace

TEST_CASE("cuda ExpectedAttention rejects an unsupported head_dim and host queries", "[cuda][ea][errors]") {
  ExpectedAttentionPress press;
  DeviceBuffer<float> scores(64 * 72);
  DeviceBuffer<cuda_impl::DeviceStatus> status(1);
  KVC_CUDA_CHECK(cudaMemset(status.get(), 0, sizeof(cuda_impl::DeviceStatus)));
  {
    SmallSetup s(72, {16});
    auto const obs = s.obs(s.q.get());
    std::size_t const bytes = cuda_impl::score_workspace_bytes(press, obs, s.view);
    DeviceBuffer<std::byte> scratch(bytes);
    Workspace ws(scratch.get(), bytes);
    CHECK_THROWS_WITH(cuda_impl::score(kvc_cuda_test::kChecked, press, obs, s.view, scores.get(), ws, status.get()),
                      Catch::Contains("head_dim = 72"));
  }
  {
    SmallSetup s(64, {16});
    std::vector<float> host_q(static_cast<std::size_t>(8 * 64), 1.0f);
    auto const obs = s.obs(host_q.data());
    std::size_t const bytes = cuda_impl::score_workspace_bytes(press, obs, s.view);
    DeviceBuffer<std::byte> scratch(bytes);
    Workspace ws(scratch.get(), bytes);
    CHECK_THROWS_WITH(cuda_impl::score(kvc_cuda_test::kChecked, press, obs, s.view, scores.get(), ws, status.get()),
                      Catch::Contains("observation.queries") && Catch::Contains("host memory"));
  }
}

TEST_CASE("cuda ExpectedAttention records a row not longer than n_sink in the device status", "[cuda][ea][errors]") {
  SmallSetup s(64, {10, 4});  // n_sink = 4: row 1 has nothing to score
  ExpectedAttentionPress press;
  auto const obs = s.obs(s.q.get());
  std::size_t const bytes = cuda_impl::score_workspace_bytes(press, obs, s.view);
  DeviceBuffer<std::byte> scratch(bytes);
  Workspace ws(scratch.get(), bytes);
  DeviceBuffer<float> scores(2 * 16);
  DeviceBuffer<cuda_impl::DeviceStatus> status(1);
  KVC_CUDA_CHECK(cudaMemset(status.get(), 0, sizeof(cuda_impl::DeviceStatus)));
  cuda_impl::score(kvc_cuda_test::kChecked, press, obs, s.view, scores.get(), ws, status.get());
  auto const st = status.download()[0];
  CHECK(st.code == static_cast<int>(cuda_impl::StatusCode::kLengthNotAboveSink));
  CHECK(st.row == 1);
  CHECK(st.length == 4);
  CHECK_THROWS_WITH(cuda_impl::throw_if_failed(st), Catch::Contains("must exceed n_sink = 4"));
}

TEST_CASE("cuda ExpectedAttentionStats records a non-finite statistic in the device status", "[cuda][ea][errors]") {
  SmallSetup s(64, {16});
  std::vector<float> mean(64, 0.5f), cov(64 * 64, 0.0f);
  mean[3] = std::numeric_limits<float>::quiet_NaN();
  DeviceBuffer<float> mean_dev(mean), cov_dev(cov);
  ExpectedAttentionStatsPress press;
  Observation<float> obs;
  obs.stats = {mean_dev.get(), cov_dev.get(), 1};
  obs.rope = &s.rope;
  obs.chunk_length = 16;
  std::size_t const bytes = cuda_impl::score_workspace_bytes(press, obs, s.view);
  DeviceBuffer<std::byte> scratch(bytes);
  Workspace ws(scratch.get(), bytes);
  DeviceBuffer<float> scores(16);
  DeviceBuffer<cuda_impl::DeviceStatus> status(1);
  KVC_CUDA_CHECK(cudaMemset(status.get(), 0, sizeof(cuda_impl::DeviceStatus)));
  cuda_impl::score(kvc_cuda_test::kChecked, press, obs, s.view, scores.get(), ws, status.get());
  auto const st = status.download()[0];
  CHECK(st.code == static_cast<int>(cuda_impl::StatusCode::kNonFiniteInput));
  CHECK(st.slot == 3);
}
