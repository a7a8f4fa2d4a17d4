// `compress` on the CUDA device where an engine uses it, against the CPU path: the Llama-3.1-8B layer
// shape (8 KV heads, 32 query heads, head_dim 128) at 32k and 128k tokens, the caller's own streams
// (one non-default stream, two at once), a whole call captured in a CUDA graph and replayed, more
// than 65535 (batch, kv head) rows, a cache whose base pointer breaks the 16-byte alignment that
// its strides would allow, and heavy ties in 128k rows. These tests use the library's default device
// (`kvcompress::cuda{stream}`: no per-call pointer query) over views from `make_device_cache_view`.
//
// Each check is `require_same_compression`: the lengths equal the CPU's, each row's kept positions
// equal the CPU's except entries whose CPU score lies within the scoring tolerance of the row's cut,
// and every kept slot holds exactly the original K and V of the position it names.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "cuda_test_util.cuh"

using namespace kvcompress;
using kvc_cuda_test::DeviceBuffer;

namespace {

RopeConfig llama3(int d) {
  RopeConfig c;
  c.type = RopeType::kLlama3;
  c.theta = 500000.0;
  c.head_dim = d;
  c.factor = 8.0;
  c.original_max_position_embeddings = 8192;
  c.max_position_embeddings = 131072;
  return c;
}

/// One layer on the host in HF order [b, h, s, d], its observation activations (the chunk's
/// pre-RoPE queries [b, H, q_len, d], the window queries [b, H, window, d]) and original positions.
template <class T>
struct Layer {
  CacheExtents e;
  std::int64_t q_heads, q_len, window;
  std::vector<T> k, v, queries, window_queries;
  std::vector<std::int32_t> lengths, positions;
  RotaryEmbedding rope;

  Layer(std::int64_t batch, std::int64_t kv_heads, std::int64_t group, std::int64_t cap, std::int64_t d,
        std::int64_t q_len_, std::int64_t window_, std::uint32_t seed)
      : e{batch, kv_heads, cap, d}, q_heads(kv_heads * group), q_len(q_len_), window(window_),
        rope(llama3(static_cast<int>(d))) {
    // Uniform on [−√3, √3] (unit variance): a normal draw per element would take seconds per 128k layer.
    std::mt19937 gen(seed);
    std::uniform_real_distribution<float> unit(-1.7320508f, 1.7320508f);
    auto fill = [&](std::vector<T>& x, std::int64_t n) {
      x.resize(static_cast<std::size_t>(n));
      for (auto& y : x) y = from_float<T>(unit(gen));
    };
    fill(k, batch * kv_heads * cap * d);
    fill(v, batch * kv_heads * cap * d);
    fill(queries, batch * q_heads * q_len * d);
    fill(window_queries, batch * q_heads * window * d);
    lengths.assign(static_cast<std::size_t>(batch * kv_heads), static_cast<std::int32_t>(cap));
    positions.resize(static_cast<std::size_t>(batch * kv_heads * cap));
    for (std::size_t i = 0; i < positions.size(); ++i) positions[i] = static_cast<std::int32_t>(i % static_cast<std::size_t>(cap));
  }

  [[nodiscard]] StridedLayout hf() const {
    return make_strided_layout(e, {Axis::kBatch, Axis::kHead, Axis::kSeq, Axis::kDim});
  }

  [[nodiscard]] Observation<T> observation(T const* q, T const* w) const {
    Observation<T> obs;
    obs.queries = make_tensor4(q, {e.batch, q_heads, q_len, e.head_dim});
    obs.window_queries = make_tensor4(w, {e.batch, q_heads, window, e.head_dim});
    obs.rope = &rope;
    return obs;
  }
};

/// The CPU's compression of a copy of the layer, and its scores before compression.
template <class T>
struct CpuResult {
  std::vector<std::int32_t> lengths, positions;
  std::vector<float> scores;

  template <class Press>
  CpuResult(Press const& press, Layer<T> const& l) : lengths(l.lengths), positions(l.positions) {
    std::vector<T> k(l.k), v(l.v);
    auto const view = make_cache_view(k.data(), v.data(), l.e, l.hf(), lengths.data(), positions.data());
    auto const obs = l.observation(l.queries.data(), l.window_queries.data());
    scores = score(kvcompress::cpu, press, obs, view);
    compress(kvcompress::cpu, press, obs, view);
  }
};

/// The layer's buffers on the device, the cache `offset` elements past a 256-byte aligned base.
template <class T>
struct DeviceLayer {
  DeviceBuffer<T> k, v, queries, window_queries;
  DeviceBuffer<std::int32_t> lengths, positions;
  std::int64_t offset;
  KVCacheView<T> view;

  DeviceLayer(Layer<T> const& l, std::int64_t offset_ = 0)
      : k(l.k.size() + static_cast<std::size_t>(offset_)), v(l.v.size() + static_cast<std::size_t>(offset_)),
        queries(l.queries), window_queries(l.window_queries), lengths(l.lengths), positions(l.positions),
        offset(offset_),
        view(make_device_cache_view(kvcompress::cuda{}, k.get() + offset_, v.get() + offset_, l.e, l.hf(), l.hf(),
                                    lengths.get(), positions.get())) {
    restore(l);
  }

  /// Puts the uncompressed layer back (for a second run of the same call).
  void restore(Layer<T> const& l) {
    KVC_CUDA_CHECK(cudaMemcpy(view.keys, l.k.data(), l.k.size() * sizeof(T), cudaMemcpyHostToDevice));
    KVC_CUDA_CHECK(cudaMemcpy(view.values, l.v.data(), l.v.size() * sizeof(T), cudaMemcpyHostToDevice));
    lengths.upload(l.lengths);
    positions.upload(l.positions);
  }

  [[nodiscard]] Observation<T> observation(Layer<T> const& l) const {
    return l.observation(queries.get(), window_queries.get());
  }

  [[nodiscard]] std::vector<T> download(T const* p, std::size_t n) const {
    std::vector<T> host(n);
    KVC_CUDA_CHECK(cudaMemcpy(host.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }
};

/// See the file comment. `exact`: the kept positions must equal the CPU's (scores computed the
/// same way on both sides, ties resolved by slot), no tolerance at the cut.
template <class T>
void require_same_compression(Layer<T> const& l, CpuResult<T> const& cpu, DeviceLayer<T> const& dev,
                              bool exact = false) {
  std::vector<std::int32_t> const gl = dev.lengths.download(), gp = dev.positions.download();
  std::vector<T> const gk = dev.download(dev.view.keys, l.k.size()), gv = dev.download(dev.view.values, l.v.size());
  REQUIRE(gl == cpu.lengths);
  std::int64_t const cap = l.e.capacity, d = l.e.head_dim;
  for (std::int64_t r = 0; r < l.e.batch * l.e.kv_heads; ++r) {
    std::int64_t const n = cpu.lengths[static_cast<std::size_t>(r)];
    auto const row = static_cast<std::ptrdiff_t>(r * cap);
    std::vector<std::int32_t> const want(cpu.positions.begin() + row, cpu.positions.begin() + row + n);
    std::vector<std::int32_t> const got(gp.begin() + row, gp.begin() + row + n);
    REQUIRE(std::is_sorted(got.begin(), got.end()));
    if (exact) REQUIRE(got == want);
    if (got != want) {
      float const* s = cpu.scores.data() + row;
      float cut = std::numeric_limits<float>::infinity();
      for (std::int32_t p : want) cut = std::min(cut, s[p]);
      std::vector<std::int32_t> diff;
      std::set_symmetric_difference(got.begin(), got.end(), want.begin(), want.end(), std::back_inserter(diff));
      for (std::int32_t p : diff) {
        INFO("row " << r << ": entry " << p << " score " << s[p] << " vs cut " << cut);
        REQUIRE(std::abs(s[p] - cut) <= 1e-4f * std::abs(cut) + 1e-7f);
      }
    }
    for (std::int64_t j = 0; j < n; ++j) {
      auto const src = static_cast<std::size_t>((r * cap + got[static_cast<std::size_t>(j)]) * d);
      auto const dst = static_cast<std::size_t>((r * cap + j) * d);
      if (!std::equal(gk.begin() + dst, gk.begin() + dst + d, l.k.begin() + src, [](T a, T b) { return to_float(a) == to_float(b); }) ||
          !std::equal(gv.begin() + dst, gv.begin() + dst + d, l.v.begin() + src, [](T a, T b) { return to_float(a) == to_float(b); })) {
        INFO("row " << r << ", slot " << j << " does not hold the entry of position " << got[static_cast<std::size_t>(j)]);
        REQUIRE(false);
      }
    }
  }
}

/// Compresses on `dev` with a workspace of the library's size, synchronises, checks the status.
template <class Press, class T>
void device_compress(kvcompress::cuda const& dev, Press const& press, Observation<T> const& obs,
                     KVCacheView<T> const& view, DeviceBuffer<std::byte>& scratch) {
  std::size_t const bytes = compress_workspace_bytes(dev, press, obs, view);
  if (scratch.size() < bytes) scratch = DeviceBuffer<std::byte>(bytes);
  compress(dev, press, obs, view, Workspace(scratch.get(), bytes));
  check_status(dev, scratch.get());
}

template <class Press, class T>
void check_layer(Press const& press, Layer<T> const& l, std::int64_t offset = 0, bool exact = false) {
  CpuResult<T> const cpu(press, l);
  DeviceLayer<T> dev(l, offset);
  DeviceBuffer<std::byte> scratch;
  device_compress(kvcompress::cuda{}, press, dev.observation(l), dev.view, scratch);
  require_same_compression(l, cpu, dev, exact);
}

ExpectedAttentionPress expected_attention(double ratio) {
  ExpectedAttentionPress p;
  p.compression_ratio = ratio;
  return p;
}

/// A CUDA stream owned by the test.
struct Stream {
  cudaStream_t s = nullptr;
  Stream() { KVC_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)); }
  Stream(Stream const&) = delete;
  Stream& operator=(Stream const&) = delete;
  ~Stream() { (void)cudaStreamDestroy(s); }
};

}  // namespace

TEST_CASE("cuda compress at the Llama-3.1-8B layer shape equals the CPU path", "[cuda][scale]") {
  // batch 1, 8 KV heads, 32 query heads, head_dim 128, bfloat16, a prefill chunk of 512 queries.
  for (std::int64_t cap : {32768, 131072}) {
    SECTION("ExpectedAttention with covariance, " + std::to_string(cap) + " tokens") {
      Layer<bfloat16> const l(1, 8, 4, cap, 128, 512, 64, 31);
      check_layer(expected_attention(0.5), l);
    }
    SECTION("SnapKV, " + std::to_string(cap) + " tokens") {
      Layer<bfloat16> const l(1, 8, 4, cap, 128, 8, 64, 32);
      SnapKVPress p;
      p.compression_ratio = 0.5;
      check_layer(p, l);
    }
  }
}

TEST_CASE("cuda compress on a non-default stream, and on two streams at once", "[cuda][scale]") {
  Layer<bfloat16> const a(2, 8, 4, 4096, 128, 256, 64, 41);
  Layer<float> const b(1, 4, 2, 3001, 64, 64, 16, 42);
  CpuResult<bfloat16> const cpu_a(expected_attention(0.5), a);
  CpuResult<float> const cpu_b(KnormPress{0.3}, b);
  Stream s1, s2;
  SECTION("one non-default stream") {
    DeviceLayer<bfloat16> dev(a);
    DeviceBuffer<std::byte> scratch;
    device_compress(kvcompress::cuda{s1.s}, expected_attention(0.5), dev.observation(a), dev.view, scratch);
    require_same_compression(a, cpu_a, dev);
  }
  SECTION("two streams, enqueued before either is waited for") {
    DeviceLayer<bfloat16> dev_a(a);
    DeviceLayer<float> dev_b(b);
    kvcompress::cuda const d1{s1.s}, d2{s2.s};
    auto const obs_a = dev_a.observation(a);
    auto const obs_b = dev_b.observation(b);
    std::size_t const bytes_a = compress_workspace_bytes(d1, expected_attention(0.5), obs_a, dev_a.view);
    std::size_t const bytes_b = compress_workspace_bytes(d2, KnormPress{0.3}, obs_b, dev_b.view);
    DeviceBuffer<std::byte> ws_a(bytes_a), ws_b(bytes_b);
    compress(d1, expected_attention(0.5), obs_a, dev_a.view, Workspace(ws_a.get(), bytes_a));
    compress(d2, KnormPress{0.3}, obs_b, dev_b.view, Workspace(ws_b.get(), bytes_b));
    check_status(d2, ws_b.get());
    check_status(d1, ws_a.get());
    require_same_compression(a, cpu_a, dev_a);
    require_same_compression(b, cpu_b, dev_b);
  }
}

TEST_CASE("cuda compress captured whole in a CUDA graph, replayed twice, equals the CPU path", "[cuda][scale]") {
  // Global capture mode: a host synchronisation, an allocation or a blocking copy inside the call
  // would invalidate the capture (cudaErrorStreamCaptureUnsupported), so a successful capture shows
  // that compress enqueues only. A first eager call does the once-per-kernel host setup.
  Layer<bfloat16> const l(1, 8, 4, 4096, 128, 256, 64, 51);
  auto const press = expected_attention(0.5);
  CpuResult<bfloat16> const cpu(press, l);
  DeviceLayer<bfloat16> dev(l);
  Stream s;
  kvcompress::cuda const d{s.s};
  auto const obs = dev.observation(l);
  std::size_t const bytes = compress_workspace_bytes(d, press, obs, dev.view);
  DeviceBuffer<std::byte> scratch(bytes);
  compress(d, press, obs, dev.view, Workspace(scratch.get(), bytes));
  check_status(d, scratch.get());
  dev.restore(l);

  cudaGraph_t graph = nullptr;
  KVC_CUDA_CHECK(cudaStreamBeginCapture(s.s, cudaStreamCaptureModeGlobal));
  compress(d, press, obs, dev.view, Workspace(scratch.get(), bytes));
  KVC_CUDA_CHECK(cudaStreamEndCapture(s.s, &graph));
  cudaGraphExec_t exec = nullptr;
  KVC_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  for (int replay = 0; replay < 2; ++replay) {
    INFO("replay " << replay);
    dev.restore(l);
    KVC_CUDA_CHECK(cudaGraphLaunch(exec, s.s));
    check_status(d, scratch.get());
    require_same_compression(l, cpu, dev);
  }
  KVC_CUDA_CHECK(cudaGraphExecDestroy(exec));
  KVC_CUDA_CHECK(cudaGraphDestroy(graph));
}

TEST_CASE("cuda compress over more than 65535 (batch, kv head) rows equals the CPU path", "[cuda][scale]") {
  // 33000 × 2 = 66000 rows: every kernel strides over rows past the grid's 65535.
  Layer<bfloat16> l(33000, 2, 2, 16, 64, 8, 4, 61);
  for (std::size_t r = 0; r < l.lengths.size(); ++r) l.lengths[r] = static_cast<std::int32_t>(6 + r % 11);
  SECTION("ExpectedAttention") { check_layer(expected_attention(0.5), l); }
  SECTION("Knorm") { check_layer(KnormPress{0.5}, l); }
  SECTION("KeyDiff") {
    KeyDiffPress p;
    p.compression_ratio = 0.4;
    check_layer(p, l);
  }
  SECTION("SnapKV") {
    SnapKVPress p;
    p.compression_ratio = 0.5;
    p.window_size = 4;
    p.kernel_size = 3;
    check_layer(p, l);
  }
  SECTION("AdaKV around Knorm") { check_layer(AdaKVPress<KnormPress>{KnormPress{0.5}, 0.2}, l); }
}

TEST_CASE("cuda compress over a cache base that breaks 16-byte alignment equals the CPU path", "[cuda][scale]") {
  // head_dim 128 and HF strides are whole 16-byte vectors, but the base one element off is not
  // aligned: every vector path must fall back to element loads (or check each address).
  SECTION("bfloat16, one element off") {
    Layer<bfloat16> const l(2, 4, 2, 1000, 128, 64, 16, 71);
    check_layer(expected_attention(0.5), l, 1);
    check_layer(KnormPress{0.5}, l, 1);
    KeyDiffPress kd;
    kd.compression_ratio = 0.5;
    check_layer(kd, l, 1);
    SnapKVPress s;
    s.compression_ratio = 0.5;
    s.window_size = 16;
    check_layer(s, l, 1);
  }
  SECTION("float, three elements off") {
    Layer<float> const l(2, 4, 2, 999, 64, 64, 16, 72);
    check_layer(expected_attention(0.5), l, 3);
    check_layer(KnormPress{0.5}, l, 3);
  }
}

TEST_CASE("cuda compress keeps the lowest slots among heavy ties in 128k rows, as the CPU does", "[cuda][scale]") {
  SECTION("StreamingLLM: one tied score for everything kept") {
    Layer<bfloat16> const l(1, 8, 1, 131072, 128, 8, 8, 81);
    StreamingLLMPress p;
    p.compression_ratio = 0.5;
    check_layer(p, l, 0, true);
  }
  SECTION("Knorm over identical keys: every score tied") {
    Layer<bfloat16> l(1, 8, 1, 131072, 128, 8, 8, 82);
    for (std::size_t i = 0; i < l.k.size(); ++i) l.k[i] = from_float<bfloat16>(static_cast<float>(i % 128) / 64.0f);
    for (std::size_t r = 0; r < l.lengths.size(); ++r) l.lengths[r] = static_cast<std::int32_t>(131072 - 977 * r);
    check_layer(KnormPress{0.37}, l, 0, true);  // exact: ties go to the lower slot on both sides
  }
}

TEST_CASE("cuda compress with a cuBLAS session, captured in a CUDA graph, equals the same call run eagerly",
          "[cuda][scale][blas]") {
  // The covariance GEMM goes through cuBLAS with the session's own workspace: the capture (global
  // mode) fails if cuBLAS allocates or synchronises inside the call, and the replays must give the
  // eager call's bytes (cuBLAS is deterministic for one handle, shape and GPU).
  Layer<bfloat16> const l(1, 8, 4, 4096, 128, 1024, 64, 53);
  ExpectedAttentionPress press = expected_attention(0.5);
  press.use_covariance = true;
  DeviceLayer<bfloat16> dev(l);
  Stream s;
  DeviceBuffer<std::byte> blas_ws(CublasSession::kWorkspaceBytes);
  CublasSession const session(blas_ws.get(), CublasSession::kWorkspaceBytes);
  kvcompress::cuda const d{s.s, false, &session};
  auto const obs = dev.observation(l);
  std::size_t const bytes = compress_workspace_bytes(d, press, obs, dev.view);
  DeviceBuffer<std::byte> scratch(bytes);
  compress(d, press, obs, dev.view, Workspace(scratch.get(), bytes));
  check_status(d, scratch.get());
  std::vector<std::int32_t> const lengths = dev.lengths.download(), positions = dev.positions.download();
  std::vector<bfloat16> const k = dev.download(dev.view.keys, l.k.size()), v = dev.download(dev.view.values, l.v.size());
  CpuResult<bfloat16> const cpu(press, l);
  REQUIRE(lengths == cpu.lengths);  // the budgets do not depend on the scores

  cudaGraph_t graph = nullptr;
  dev.restore(l);
  KVC_CUDA_CHECK(cudaStreamBeginCapture(s.s, cudaStreamCaptureModeGlobal));
  compress(d, press, obs, dev.view, Workspace(scratch.get(), bytes));
  KVC_CUDA_CHECK(cudaStreamEndCapture(s.s, &graph));
  cudaGraphExec_t exec = nullptr;
  KVC_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  for (int replay = 0; replay < 2; ++replay) {
    INFO("replay " << replay);
    dev.restore(l);
    KVC_CUDA_CHECK(cudaGraphLaunch(exec, s.s));
    check_status(d, scratch.get());
    REQUIRE(dev.lengths.download() == lengths);
    REQUIRE(dev.positions.download() == positions);
    std::vector<bfloat16> const gk = dev.download(dev.view.keys, l.k.size()), gv = dev.download(dev.view.values, l.v.size());
    REQUIRE(std::memcmp(gk.data(), k.data(), k.size() * sizeof(bfloat16)) == 0);
    REQUIRE(std::memcmp(gv.data(), v.data(), v.size() * sizeof(bfloat16)) == 0);
  }
  KVC_CUDA_CHECK(cudaGraphExecDestroy(exec));
  KVC_CUDA_CHECK(cudaGraphDestroy(graph));
}
