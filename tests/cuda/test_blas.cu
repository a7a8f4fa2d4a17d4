// Expected Attention's covariance on tensor cores (a cuBLAS session on the device tag, half and
// bfloat16 queries read in place) against the CPU device's scores, and the fallbacks that keep the
// SIMT kernels (fp32, non-contiguous channels).
//
// Tolerance: relative 2e-3, absolute 1e-9. Both sides read the same bf16/half queries, whose products
// are exact in fp32; the GEMM accumulates T products in fp32 (tensor cores: relative error about
// √T·2⁻²⁴ per entry for random signs, T·2⁻²³ at worst), and Σ = G/T − μμᵀ then loses log2(1 +
// ‖μ‖²/σ²) ≈ 1 bit here (per-head offsets N(0, 1) over N(0, 1) noise). An entry error ε·(μ² + σ²)
// moves a logit ½·kᵀΔΣ̃k, Σ̃ = R̄ΣR̄ᵀ/(2d), by at most d·ε/2 for unit keys: ≈ 2.4e-4 at T = 4096,
// d = 128 with the random-sign estimate, and a probability by the same relative amount. 2e-3 leaves a
// factor 8 for the softmax's normaliser and the rotation; the worst case (3e-2) would need every
// rounding in one direction.
#include <random>

#include "cuda_test_util.cuh"

using namespace kvcompress;
using kvc_cuda_test::DeviceBuffer;

namespace {

template <class T>
std::vector<T> normal_with_offsets(std::int64_t heads, std::int64_t rows, std::int64_t d, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist;
  std::vector<float> offset(static_cast<std::size_t>(heads * d));
  for (auto& x : offset) x = dist(gen);
  std::vector<T> out(static_cast<std::size_t>(heads * rows * d));
  for (std::int64_t h = 0; h < heads; ++h)
    for (std::int64_t t = 0; t < rows; ++t)
      for (std::int64_t c = 0; c < d; ++c)
        out[static_cast<std::size_t>((h * rows + t) * d + c)] = from_float<T>(offset[static_cast<std::size_t>(h * d + c)] + dist(gen));
  return out;
}

/// CPU scores and CUDA scores (through `blas` when given) of Expected Attention with covariance on a
/// [batch, kv_heads, cap, d] cache, queries [batch, kv_heads·group, q_len, d] with `q_stride` between
/// channels.
template <class T>
std::pair<std::vector<float>, std::vector<float>> ea_scores(std::int64_t batch, std::int64_t kv_heads, std::int64_t group,
                                                            std::int64_t cap, std::int64_t d, std::int64_t q_len,
                                                            std::int64_t q_stride, CublasSession const* blas) {
  CacheExtents const e{batch, kv_heads, cap, d};
  auto const layout = make_strided_layout(e, {Axis::kBatch, Axis::kHead, Axis::kSeq, Axis::kDim});
  std::vector<T> k = normal_with_offsets<T>(batch * kv_heads, cap, d, 1), v = normal_with_offsets<T>(batch * kv_heads, cap, d, 2);
  std::int64_t const hq = kv_heads * group;
  std::vector<T> const dense = normal_with_offsets<T>(batch * hq, q_len, d, 3);
  std::vector<T> q(dense.size() * static_cast<std::size_t>(q_stride));
  for (std::size_t i = 0; i < dense.size(); ++i) q[i * static_cast<std::size_t>(q_stride)] = dense[i];
  std::vector<std::int32_t> lengths(static_cast<std::size_t>(batch * kv_heads), static_cast<std::int32_t>(cap));
  RopeConfig rc;
  rc.head_dim = static_cast<int>(d);
  RotaryEmbedding const rope(rc);
  ExpectedAttentionPress press;
  press.use_covariance = true;
  Observation<T> obs;
  obs.queries = make_tensor4(q.data(), {batch, hq, q_len, d}, {hq * q_len * d * q_stride, q_len * d * q_stride, d * q_stride, q_stride});
  obs.rope = &rope;
  auto const host = make_cache_view(k.data(), v.data(), e, layout, layout, lengths.data());
  std::vector<float> const want = kvcompress::score(kvcompress::cpu, press, obs, host);

  kvc_cuda_test::DeviceMirror<T, StridedLayout> mirror(k, v, lengths, {}, {});
  DeviceBuffer<T> q_dev(q);
  Observation<T> obs_dev = obs;
  obs_dev.queries.data = q_dev.get();
  kvcompress::cuda const dev{nullptr, true, blas};
  auto const view = mirror.view(host);
  std::size_t const bytes = score_workspace_bytes(dev, press, obs_dev, view);
  DeviceBuffer<std::byte> scratch(bytes);
  DeviceBuffer<float> scores(static_cast<std::size_t>(batch * kv_heads * cap));
  kvcompress::score(dev, press, obs_dev, view, scores.get(), Workspace(scratch.get(), bytes));
  check_status(dev, scratch.get());
  return {scores.download(), want};
}

struct Session {
  DeviceBuffer<std::byte> ws{CublasSession::kWorkspaceBytes};
  CublasSession blas{ws.get(), CublasSession::kWorkspaceBytes};
};

}  // namespace

TEST_CASE("cuda ExpectedAttention's covariance on tensor cores equals the CPU device (bfloat16)", "[cuda][blas]") {
  Session s;
  for (std::int64_t d : {64, 128}) {
    INFO("head_dim " << d);
    auto const [got, want] = ea_scores<bfloat16>(2, 2, 4, 300, d, 4096, 1, &s.blas);
    kvc_cuda_test::require_close(got, want, 2e-3f, 1e-9f);
  }
}

TEST_CASE("cuda ExpectedAttention's covariance on tensor cores equals the CPU device (half)", "[cuda][blas]") {
  Session s;
  auto const [got, want] = ea_scores<kvcompress::half>(1, 8, 4, 1000, 128, 2048, 1, &s.blas);
  kvc_cuda_test::require_close(got, want, 2e-3f, 1e-9f);
}

TEST_CASE("cuda ExpectedAttention with a session keeps the SIMT pass where tensor cores do not apply", "[cuda][blas]") {
  // fp32 storage, and bf16 queries with a channel stride of 2: the SIMT kernels, held to 1e-4.
  Session s;
  {
    auto const [got, want] = ea_scores<float>(1, 2, 4, 300, 64, 512, 1, &s.blas);
    kvc_cuda_test::require_close(got, want, 1e-4f, 1e-9f);
  }
  {
    auto const [got, want] = ea_scores<bfloat16>(1, 2, 4, 300, 64, 512, 2, &s.blas);
    kvc_cuda_test::require_close(got, want, 1e-4f, 1e-9f);
  }
}
