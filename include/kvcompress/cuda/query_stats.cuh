#pragma once
/// \file
/// \brief Expected Attention's query statistics on the GPU: the averaged RoPE rotation R̄ of the
/// future window, the mean and population covariance of the pre-RoPE queries per (batch, query
/// head), and their rotation and scaling μ̃ = R̄μ/√d, Σ̃ = R̄ΣR̄ᵀ/(2d) (as
/// `detail::rotate_and_scale_stats` does on the CPU).
///
/// Kernel chain (all on the caller's stream, scratch from the caller's workspace):
///   averaged_rotation_kernel   cos_mean/sin_mean [2, d] from the inverse frequencies (no O(T·d) host work)
///   query_mean_partial_kernel  per (batch·head, token split): Σ_t x_t            → mean partials
///   query_cov_partial_kernel   per (batch·head, token split, output tile): Σ_t (x_t − μ)(x_t − μ)ᵀ
///                              a tiled XᵀX over shared-memory token tiles, fp32 register blocking
///   rotate_stats_kernel        sums the partials, divides by the token count, rotates and scales
/// With a cuBLAS session (`cuda::blas`) and half or bfloat16 queries whose channels are contiguous and
/// whose (batch, head) pairs lie at one stride, the covariance pass is instead one strided-batched
/// GEMM on tensor cores (`query_gram_gemm`): G = Σ_t x_t x_tᵀ read in place from the queries (no
/// staging copy, nothing rounded: bf16 × bf16 products are exact in fp32, accumulated in fp32), and
/// the rotation forms Σ = G/T − μμᵀ. That one-pass form loses log2(1 + ‖μ‖²/σ²) of fp32's 24 bits
/// in the subtraction where the SIMT pass centres first; centring into a bf16 copy instead would
/// round every element to 8 bits and need a staging copy of all the queries (1 GiB for 32 heads at
/// 128k tokens). fp32 queries keep the SIMT pass.
/// The covariance is centred in a second pass over the queries (two-pass), as the CPU does:
/// E[xxᵀ] − μμᵀ cancels catastrophically when ‖μ‖ is large against the spread. Partials per split
/// (no float atomics) keep the result deterministic.

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>

#include "kvcompress/core/tensor.hpp"
#include "kvcompress/cuda/blas.cuh"
#include "kvcompress/cuda/runtime.cuh"
#include "kvcompress/rope/rotary_embedding.hpp"

namespace kvcompress::cuda_impl {

// ---- averaged rotation ---------------------------------------------------------------------------

/// What `averaged_rotation_kernel` needs, passed by value (kernel parameter space), so that the
/// host computes only the d/2 inverse frequencies.
struct RopeAverageArgs {
  float inv[128];       // inverse frequencies [head_dim / 2] (head_dim ≤ 256)
  float scaling;        // the rope's attention scaling
  int half_dim;         // head_dim / 2
  long long start;      // first future position
  long long count;      // number of future positions (T)
};

/// Fills the RoPE argument block for the window [start, start + count) (`inv_freq_for(start +
/// count)`, as `RotaryEmbedding::averaged_rotation` does, so dynamic NTK sees the same length).
inline RopeAverageArgs rope_average_args(RotaryEmbedding const& rope, std::int64_t start, std::int64_t count) {
  KVC_CHECK(count > 0, "averaged_rotation count must be positive, got " << count);
  KVC_CHECK(start >= 0, "averaged_rotation start must be non-negative, got " << start);
  KVC_CHECK(count <= std::numeric_limits<std::int64_t>::max() - start,
            "averaged_rotation start + count overflows 64 bits: start = " << start << ", count = " << count);
  KVC_CHECK(rope.head_dim() <= 256, "rope head_dim = " << rope.head_dim() << " exceeds 256");
  RopeAverageArgs a{};
  rope.inv_freq_for(start + count, a.inv);
  a.scaling = rope.attention_scaling();
  a.half_dim = rope.head_dim() / 2;
  a.start = start;
  a.count = count;
  return a;
}

__device__ __forceinline__ double warp_sum_double(double x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

inline constexpr int kRopeAverageThreads = 128;

/// cos_mean[i] = cos_mean[i + d/2] = mean_p cos(inv[i]·p)·a (sin likewise), block i per
/// frequency. Each term is rounded as the CPU rounds it (float angle, float cos, float product) and
/// summed in double, so the result matches `RotaryEmbedding::averaged_rotation` to float rounding.
/// \param cs [2, head_dim]: cos_mean then sin_mean
template <class = void>
__global__ void __launch_bounds__(kRopeAverageThreads)
    averaged_rotation_kernel(RopeAverageArgs a, float* cs, DeviceStatus const* status) {
  if (failed(status)) return;
  __shared__ double part[2][kRopeAverageThreads / 32];
  int const i = static_cast<int>(blockIdx.x);
  float const f = a.inv[i];
  double c = 0.0, s = 0.0;
  for (long long p = a.start + threadIdx.x; p < a.start + a.count; p += blockDim.x) {
    float const angle = f * static_cast<float>(p);
    c += static_cast<double>(cosf(angle) * a.scaling);
    s += static_cast<double>(sinf(angle) * a.scaling);
  }
  c = warp_sum_double(c);
  s = warp_sum_double(s);
  if ((threadIdx.x & 31) == 0) {
    part[0][threadIdx.x >> 5] = c;
    part[1][threadIdx.x >> 5] = s;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double ct = 0.0, st = 0.0;
    for (int w = 0; w < kRopeAverageThreads / 32; ++w) {
      ct += part[0][w];
      st += part[1][w];
    }
    int const d = 2 * a.half_dim;
    auto const n = static_cast<double>(a.count);
    cs[i] = cs[i + a.half_dim] = static_cast<float>(ct / n);
    cs[d + i] = cs[d + i + a.half_dim] = static_cast<float>(st / n);
  }
}

/// Launches `averaged_rotation_kernel`. \param cs [2, head_dim] device
inline void averaged_rotation(cuda const& dev, RopeAverageArgs const& a, float* cs, DeviceStatus const* status) {
  launch("averaged_rotation_kernel", averaged_rotation_kernel<>, static_cast<unsigned>(a.half_dim),
         kRopeAverageThreads, 0, dev.stream, a, cs, status);
}

// ---- mean and covariance partials ----------------------------------------------------------------

/// Which queries feed the statistics: (batch, head) pairs, tokens [first, first + count).
struct QueryRange {
  long long q_heads;
  long long first;   // n_sink: the first n_sink queries are dropped
  long long count;   // q_len − n_sink
  int splits;        // token splits; split s covers [s·chunk, min((s+1)·chunk, count))
  long long chunk;   // ⌈count / splits⌉
};

/// Blocks the covariance pass aims for (two waves of a 132-SM H100); fewer splits when the heads
/// alone fill the GPU, so that the partials (splits · d² floats per head) stay small.
inline constexpr long long kStatsTargetBlocks = 264;
/// No split gets fewer tokens than this (a token tile is 32; the partials' reduction is per split).
inline constexpr long long kStatsMinSplitTokens = 256;
inline constexpr long long kStatsMaxSplits = 64;

/// Output tiles per side of the covariance pass: the d × d output in 128 × 128 tiles.
[[nodiscard]] constexpr int cov_tiles_per_side(std::int64_t d) noexcept { return d > 128 ? 2 : 1; }

/// Token splits for `bh` (batch, head) pairs of `count` tokens each (host; also sizes the workspace).
[[nodiscard]] inline int query_stats_splits(std::int64_t bh, std::int64_t count, std::int64_t d) {
  std::int64_t const tiles = cov_tiles_per_side(d) * cov_tiles_per_side(d);
  std::int64_t const want = (kStatsTargetBlocks + bh * tiles - 1) / (bh * tiles);
  std::int64_t const most = std::max<std::int64_t>(1, std::min(kStatsMaxSplits, count / kStatsMinSplitTokens));
  return static_cast<int>(std::max<std::int64_t>(1, std::min(want, most)));
}

/// Threads of the mean pass: rows·D threads, D channels × rows token lanes (≤ 256 threads).
template <int D>
inline constexpr int kMeanRows = 256 / D > 0 ? 256 / D : 1;

/// parts[bh, split, c] = Σ_{t in split} q(b, j, first + t, c). Channel-fastest threads, so a
/// contiguous head_dim reads coalesced. \param parts [bh, splits, D]
template <int D, class S>
__global__ void __launch_bounds__(D * kMeanRows<D>)
    query_mean_partial_kernel(DeviceTensor4<S> q, QueryRange range, float* parts, DeviceStatus const* status) {
  if (failed(status)) return;
  constexpr int kRows = kMeanRows<D>;
  __shared__ float acc_s[kRows][D];
  long long const bh = blockIdx.x, b = bh / range.q_heads, j = bh % range.q_heads;
  int const c = static_cast<int>(threadIdx.x % D), lane = static_cast<int>(threadIdx.x / D);
  long long const t0 = blockIdx.y * range.chunk;
  long long const t1 = t0 + range.chunk < range.count ? t0 + range.chunk : range.count;
  float sum = 0.0f;
  for (long long t = t0 + lane; t < t1; t += kRows) sum += q(b, j, range.first + t, c);
  acc_s[lane][c] = sum;
  __syncthreads();
  if (lane == 0) {
    for (int r = 1; r < kRows; ++r) sum += acc_s[r][c];
    parts[(bh * range.splits + blockIdx.y) * D + c] = sum;
  }
}

/// μ[c] of pair bh from its mean partials: the same summation order wherever it is needed.
/// \param parts [bh, splits, D]
template <int D>
__device__ __forceinline__ float mean_from_parts(float const* parts, long long bh, int splits, float count, int c) {
  float s = 0.0f;
  for (int p = 0; p < splits; ++p) s += parts[(bh * splits + p) * D + c];
  return s / count;
}

inline constexpr int kCovThreads = 256;  // 16 × 16 threads, each an RM × RM block of the output tile
inline constexpr int kCovTokens = 32;    // tokens per shared-memory tile (the GEMM's k step)

/// parts[bh, split, r, c] = Σ_{t in split} (x_t − μ)_r (x_t − μ)_c for the output tile
/// (blockIdx.z / tiles, blockIdx.z % tiles) of 128 × 128 (or d × d). XᵀX as a tiled GEMM: a tile
/// of centred tokens [kCovTokens, D] is staged in shared memory as float, each thread accumulates
/// an RM × RM block in registers; rows ty + 16·i and columns tx + 16·j (interleaved, so that the
/// half-warp of a row group reads 16 consecutive floats: no bank conflicts).
/// \param mean_parts [bh, splits, D] \param parts [bh, splits, D, D]
template <int D, class S>
__global__ void __launch_bounds__(kCovThreads)
    query_cov_partial_kernel(DeviceTensor4<S> q, QueryRange range, float const* mean_parts, float* parts,
                             DeviceStatus const* status) {
  if (failed(status)) return;
  constexpr int kEdge = D > 128 ? 128 : D;  // output tile edge
  constexpr int kTiles = D / kEdge;
  constexpr int RM = kEdge / 16;
  static_assert(kEdge % 16 == 0 && D % kEdge == 0, "head_dim must tile by 16");
  __shared__ float mean_s[D];
  __shared__ float x_s[kCovTokens][D];
  long long const bh = blockIdx.x, b = bh / range.q_heads, j = bh % range.q_heads;
  int const row0 = static_cast<int>(blockIdx.z / kTiles) * kEdge, col0 = static_cast<int>(blockIdx.z % kTiles) * kEdge;
  int const tx = static_cast<int>(threadIdx.x & 15), ty = static_cast<int>(threadIdx.x >> 4);
  for (int c = static_cast<int>(threadIdx.x); c < D; c += kCovThreads)
    mean_s[c] = mean_from_parts<D>(mean_parts, bh, range.splits, static_cast<float>(range.count), c);
  long long const t0 = blockIdx.y * range.chunk;
  long long const t1 = t0 + range.chunk < range.count ? t0 + range.chunk : range.count;

  float acc[RM][RM] = {};
  for (long long tt = t0; tt < t1; tt += kCovTokens) {
    __syncthreads();  // mean_s written / the previous tile consumed
    for (int e = static_cast<int>(threadIdx.x); e < kCovTokens * D; e += kCovThreads) {
      int const k = e / D, c = e % D;
      long long const t = tt + k;
      x_s[k][c] = t < t1 ? q(b, j, range.first + t, c) - mean_s[c] : 0.0f;  // zero rows add nothing
    }
    __syncthreads();
#pragma unroll 4
    for (int k = 0; k < kCovTokens; ++k) {
      float a[RM], bv[RM];
#pragma unroll
      for (int i = 0; i < RM; ++i) a[i] = x_s[k][row0 + ty + 16 * i];
#pragma unroll
      for (int i = 0; i < RM; ++i) bv[i] = x_s[k][col0 + tx + 16 * i];
#pragma unroll
      for (int i = 0; i < RM; ++i)
#pragma unroll
        for (int jj = 0; jj < RM; ++jj) acc[i][jj] = fmaf(a[i], bv[jj], acc[i][jj]);
    }
  }
  float* out = parts + (bh * range.splits + blockIdx.y) * D * D;
#pragma unroll
  for (int i = 0; i < RM; ++i)
#pragma unroll
    for (int jj = 0; jj < RM; ++jj) out[(row0 + ty + 16 * i) * D + col0 + tx + 16 * jj] = acc[i][jj];
}

// ---- rotation and scaling ------------------------------------------------------------------------

/// Raw statistics to rotate: sums over `splits` partials divided by `count` (the chunk's own
/// queries), or given statistics (splits = 1, count = 1, checked for NaN/±Inf).
struct RawStats {
  float const* mean_parts;  // [stat_heads, splits, D]
  float const* cov_parts;   // [stat_heads, splits, D, D], or null without covariance
  int splits;
  float count;
  bool check_finite;        // given statistics: report NaN/±Inf as kNonFiniteInput
  bool gram = false;        // cov_parts is one uncentred Σ_t x xᵀ per head [stat_heads, D, D]: Σ = G/count − μμᵀ
};

/// One block per (stat head, output row i): μ̃ = R̄μ/√d (row 0 blocks only) and row i of
/// Σ̃ = R̄ΣR̄ᵀ/(2d), with R̄'s two non-zeros per row (as `rotate_covariance`).
/// A non-finite given statistic is reported with row = the head and slot = c for mean[c],
/// D + i·D + c for covariance[i, c].
/// \param cs [2, D] \param mu [stat_heads, D] \param cov [stat_heads, D, D] or null
template <int D>
__global__ void __launch_bounds__(128)
    rotate_stats_kernel(RawStats raw, float const* cs, float* mu, float* cov, DeviceStatus* status) {
  if (failed(status)) return;
  constexpr int kHalf = D / 2;
  long long const h = blockIdx.x;
  int const i = static_cast<int>(blockIdx.y);
  float const* cbar = cs;
  float const* sbar = cs + D;
  auto const partner = [](int x) { return x < kHalf ? x + kHalf : x - kHalf; };
  auto const sign = [](int x) { return x < kHalf ? -1.0f : 1.0f; };
  __shared__ float mean_s[D];  // μ, for the one-pass form
  if (raw.gram) {
    for (int c = static_cast<int>(threadIdx.x); c < D; c += blockDim.x)
      mean_s[c] = mean_from_parts<D>(raw.mean_parts, h, raw.splits, raw.count, c);
    __syncthreads();
  }
  auto const raw_cov = [&](int r, int c) {
    if (raw.gram) return raw.cov_parts[(h * D + r) * D + c] / raw.count - mean_s[r] * mean_s[c];
    float s = 0.0f;
    for (int p = 0; p < raw.splits; ++p) s += raw.cov_parts[((h * raw.splits + p) * D + r) * D + c];
    return s / raw.count;
  };
  if (i == 0) {
    float const inv_sqrt_d = 1.0f / sqrtf(static_cast<float>(D));
    for (int c = static_cast<int>(threadIdx.x); c < D; c += blockDim.x) {
      float const m = mean_from_parts<D>(raw.mean_parts, h, raw.splits, raw.count, c);
      float const pm = mean_from_parts<D>(raw.mean_parts, h, raw.splits, raw.count, partner(c));
      if (raw.check_finite && !isfinite(m)) report(status, StatusCode::kNonFiniteInput, h, c, m, 0);
      mu[h * D + c] = (cbar[c] * m + sbar[c] * (sign(c) * pm)) * inv_sqrt_d;  // (P·μ)_c = sign(c)·μ_partner(c)
    }
  }
  if (!raw.cov_parts) return;
  float const inv_2d = 0.5f / static_cast<float>(D);
  float const ci = cbar[i], si = sign(i) * sbar[i];
  int const pi = partner(i);
  for (int c = static_cast<int>(threadIdx.x); c < D; c += blockDim.x) {
    float const cj = cbar[c], sj = sign(c) * sbar[c];
    int const pj = partner(c);
    float const a = raw_cov(i, c);
    if (raw.check_finite && !isfinite(a)) report(status, StatusCode::kNonFiniteInput, h, D + i * D + c, a, 0);
    float const r = ci * (cj * a + sj * raw_cov(i, pj)) + si * (cj * raw_cov(pi, c) + sj * raw_cov(pi, pj));
    cov[(h * D + i) * D + c] = r * inv_2d;
  }
}

/// Launches `rotate_stats_kernel` for `stat_heads` heads.
/// \param cs [2, D] \param mu [stat_heads, D] \param cov [stat_heads, D, D] or null
template <int D>
void rotate_stats(cuda const& dev, RawStats const& raw, std::int64_t stat_heads, float const* cs, float* mu,
                  float* cov, DeviceStatus* status) {
  dim3 const grid(static_cast<unsigned>(stat_heads), raw.cov_parts ? D : 1);
  launch("rotate_stats_kernel", rotate_stats_kernel<D>, grid, 128, 0, dev.stream, raw, cs, mu, cov, status);
}

/// Scratch of `query_stats` for `bh` (batch, head) pairs of `count` tokens each.
[[nodiscard]] inline std::size_t query_stats_workspace_bytes(std::int64_t bh, std::int64_t count, std::int64_t d,
                                                             bool covariance) {
  auto const splits = static_cast<std::size_t>(query_stats_splits(bh, count, d));
  auto const n = static_cast<std::size_t>(bh * d);
  return Workspace::bytes_for<float>(n * splits) +
         (covariance ? Workspace::bytes_for<float>(n * static_cast<std::size_t>(d) * splits) : 0);
}

/// The covariance GEMM for queries of `shape` and `strides` (elements) minus their first `n_sink`
/// tokens: per (batch, head) pair, the D × T column-major matrix that the queries are in place
/// (leading dimension = the token stride) times its transpose. `batch` = 0 when the strides do not
/// allow it in place: channels not contiguous, (batch, head) pairs not at one stride (a broadcast
/// batch), or a size past cuBLAS's int. Host arithmetic only.
[[nodiscard]] inline GemmNT query_gram_gemm(std::array<std::int64_t, 4> const& shape,
                                            std::array<std::int64_t, 4> const& strides, std::int64_t n_sink) {
  constexpr std::int64_t kInt = std::numeric_limits<int>::max();
  std::int64_t const b = shape[0], h = shape[1], d = shape[3], count = shape[2] - n_sink;
  std::int64_t pair_stride = strides[1];
  if (h == 1) pair_stride = strides[0];
  else if (b > 1 && strides[0] != h * strides[1]) return GemmNT{};
  bool const fits = strides[3] == 1 && strides[2] >= d && strides[2] <= kInt && count >= 1 && count <= kInt &&
                    pair_stride >= 0 && b * h <= kInt && d <= kInt;
  if (!fits) return GemmNT{};
  return GemmNT{static_cast<int>(d), static_cast<int>(d), static_cast<int>(count), strides[2], strides[2], d,
                pair_stride, pair_stride, d * d, static_cast<int>(b * h)};
}

/// μ̃ [B·H, D] and (covariance) Σ̃ [B·H, D, D] of the queries q [B, H, q_len, D] minus their first
/// `n_sink` tokens, rotated by R̄ (cs) and scaled. \param cs [2, D] from `averaged_rotation`
template <int D, class T>
void query_stats(cuda const& dev, Tensor4<T> const& q, std::int64_t n_sink, float const* cs, float* mu, float* cov,
                 Workspace& ws, DeviceStatus* status) {
  using S = device_storage_t<T>;
  std::int64_t const bh = q.shape[0] * q.shape[1], count = q.shape[2] - n_sink;
  int const splits = query_stats_splits(bh, count, D);
  QueryRange const range{q.shape[1], n_sink, count, splits, (count + splits - 1) / splits};
  auto const n = static_cast<std::size_t>(bh * D);
  GemmNT const gram = tensor_cores<T>(dev) && cov
                          ? query_gram_gemm(q.shape, q.strides, n_sink)
                          : GemmNT{};
  float* mean_parts = ws.take<float>(n * static_cast<std::size_t>(splits));
  float* cov_parts = cov ? ws.take<float>(n * D * static_cast<std::size_t>(gram.batch > 0 ? 1 : splits)) : nullptr;
  auto const dq = device_tensor(q);

  launch("query_mean_partial_kernel", query_mean_partial_kernel<D, S>,
         dim3(static_cast<unsigned>(bh), static_cast<unsigned>(splits)), D * kMeanRows<D>, 0, dev.stream, dq, range,
         mean_parts, status);
  if (cov && gram.batch > 0) {
    T const* first = q.data + n_sink * q.strides[2];
    gemm_nt(dev, gram, blas_type_v<T>, first, first, cov_parts, 1.0f, 0.0f);
  } else if (cov) {
    constexpr int kTiles = cov_tiles_per_side(D);
    dim3 const grid(static_cast<unsigned>(bh), static_cast<unsigned>(splits), kTiles * kTiles);
    launch("query_cov_partial_kernel", query_cov_partial_kernel<D, S>, grid, kCovThreads, 0, dev.stream, dq, range,
           mean_parts, cov_parts, status);
  }
  rotate_stats<D>(dev, RawStats{mean_parts, cov_parts, splits, static_cast<float>(count), false, gram.batch > 0}, bh,
                  cs, mu, cov, status);
}

}  // namespace kvcompress::cuda_impl
