#pragma once
/// \file
/// \brief Expected Attention scoring on the GPU (`ExpectedAttentionPress`,
/// `ExpectedAttentionStatsPress`); the same scores as `kvcompress::score(cpu, …)` to float rounding.
///
/// Kernel chain on the caller's stream (scratch from the caller's workspace, nothing allocated):
///   check_lengths               row length in (n_sink, capacity], else a device status
///   averaged_rotation_kernel    R̄ of the future window                       (query_stats.cuh)
///   query statistics            μ̃ [B, H, d], Σ̃ [B, H, d, d]                 (query_stats.cuh), or
///   rotate_stats_kernel         the given per-layer statistics rotated       (stats press)
///   ea_logits_kernel            per (row, tile of 64 keys): the keys staged once in shared memory
///                               as float; z_j = μ̃_jᵀk + kᵀΣ̃_jk for the G heads of the group
///                               (K_tile·Σ̃_j as a register-blocked fp32 tile GEMM, the row-dot in
///                               its epilogue); ‖v‖ into `scores`; the tile's softmax partials
///                               (max, Σexp); the last tile of a row to finish merges its row's
///                               partials (threadfence reduction, CUDA's threadFenceReduction
///                               sample) into the row's softmax max and normaliser per head
///   ea_scores_kernel            mean over the group of the softmax, (p + ε)·‖v‖, global max
///   ea_sinks_kernel             sinks [0, n_sink) = global max + 1
/// Arithmetic is fp32 throughout (SIMT FMAs; no tensor cores), which is what keeps the scores
/// within 1e-4 relative of the CPU's.

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kvcompress/cuda/query_stats.cuh"
#include "kvcompress/press/expected_attention.hpp"

namespace kvcompress::cuda_impl {

// ---- staging cache rows --------------------------------------------------------------------------

/// Element step along head_dim (non-unit for llama.cpp-style transposed or interleaved layouts).
[[nodiscard]] __device__ __forceinline__ long long dim_step(StridedLayout const& l) { return l.strides[3]; }
[[nodiscard]] __device__ __forceinline__ long long dim_step(PagedLayout const&) { return 1; }

/// Elements of one 16-byte chunk of a cache row.
template <class S>
inline constexpr int kChunk = static_cast<int>(16 / sizeof(S));

/// out[v] = element (b, h, s, c0 + v) as float, v < kChunk<S>: one 16-byte load when the row is
/// contiguous and aligned (every common engine layout), element loads otherwise.
template <class S, class L>
__device__ __forceinline__ void load_chunk(S const* base, L const& layout, long long b, long long h, long long s,
                                           int c0, float* out) {
  S const* p = base + layout.offset(b, h, s, c0);
  long long const step = dim_step(layout);
  if (step == 1 && (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0) {
    uint4 const raw = *reinterpret_cast<uint4 const*>(p);
    S const* e = reinterpret_cast<S const*>(&raw);
#pragma unroll
    for (int v = 0; v < kChunk<S>; ++v) out[v] = load(e[v]);
  } else {
#pragma unroll
    for (int v = 0; v < kChunk<S>; ++v) out[v] = load(p[v * step]);
  }
}

// ---- parameters ----------------------------------------------------------------------------------

inline constexpr int kEaThreads = 256;     // 16 × 16 threads in the tile GEMM
inline constexpr int kEaSigmaRows = 16;    // rows of Σ̃_j staged in shared memory per GEMM step
inline constexpr int kEaScoreKeys = 1024;  // keys per block of ea_scores_kernel

/// Keys per tile of ea_logits_kernel: 64 (32 for head_dim 256, to keep the float tile at ~32 KB).
template <int D>
inline constexpr int kEaKeys = D > 128 ? 32 : 64;

/// What the scoring kernels share.
struct EaArgs {
  long long q_heads;      // H
  long long n_sink;
  long long tiles;        // key tiles of the longest possible row, ⌈(capacity − n_sink) / kEaKeys⌉
  int group;              // G = H / kv_heads
  int stats_per_batch;    // 1: μ̃, Σ̃ are [batch, H, …]; 0: shared by the batch ([1, H, …])
  int use_vnorm;
  float epsilon;
};

/// Dynamic shared memory of ea_logits_kernel: keys [kEaKeys, D + 1], μ̃ [G, D], logits
/// [G, kEaKeys], and (covariance) a slab of Σ̃_j [kEaSigmaRows, D].
template <int D, bool kCov>
[[nodiscard]] constexpr std::size_t ea_logits_smem(std::int64_t group) noexcept {
  return sizeof(float) * static_cast<std::size_t>(kEaKeys<D> * (D + 1) + group * D + group * kEaKeys<D> +
                                                  (kCov ? kEaSigmaRows * D : 0));
}

// ---- logits ----------------------------------------------------------------------------------------

/// Adds kᵀΣ̃_jk for the tile's keys to zj. K_tile·Σ̃_j: thread (ty, tx) owns keys ty + 16·i and
/// columns tx + 16·c (interleaved: a half-warp reads 16 consecutive Σ̃ floats and one broadcast key
/// float; the key pitch D + 1 puts the two half-warps' keys in different banks). The row-dot with
/// the key is the epilogue, reduced over the 16 threads of a key row by shuffles.
/// \param k_s [kEaKeys, D + 1] \param sig_s [kEaSigmaRows, D] \param cov_j [D, D] \param zj [kEaKeys]
template <int D>
__device__ __forceinline__ void add_quadratic_form(float const* k_s, float* sig_s, float const* cov_j, float* zj) {
  constexpr int kPitch = D + 1, RK = kEaKeys<D> / 16, CN = D / 16;
  int const tx = static_cast<int>(threadIdx.x & 15), ty = static_cast<int>(threadIdx.x >> 4);
  float acc[RK][CN] = {};
  for (int a0 = 0; a0 < D; a0 += kEaSigmaRows) {
    __syncthreads();  // the previous slab has been read
    for (int e = static_cast<int>(threadIdx.x); e < kEaSigmaRows * D; e += kEaThreads) sig_s[e] = cov_j[a0 * D + e];
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kEaSigmaRows; ++kk) {
      float kv[RK], sv[CN];
#pragma unroll
      for (int i = 0; i < RK; ++i) kv[i] = k_s[(ty + 16 * i) * kPitch + a0 + kk];
#pragma unroll
      for (int c = 0; c < CN; ++c) sv[c] = sig_s[kk * D + tx + 16 * c];
#pragma unroll
      for (int i = 0; i < RK; ++i)
#pragma unroll
        for (int c = 0; c < CN; ++c) acc[i][c] = fmaf(kv[i], sv[c], acc[i][c]);
    }
  }
#pragma unroll
  for (int i = 0; i < RK; ++i) {
    float part = 0.0f;
#pragma unroll
    for (int c = 0; c < CN; ++c) part = fmaf(acc[i][c], k_s[(ty + 16 * i) * kPitch + tx + 16 * c], part);
    for (int o = 8; o > 0; o >>= 1) part += __shfl_xor_sync(0xffffffffu, part, o);  // the 16 lanes of this row
    if (tx == 0) zj[ty + 16 * i] += part;  // one writer per key
  }
}

/// One block per (tile of kEaKeys keys, row), rows strided by gridDim.y (any number of rows). Writes logits[row, j, s] for the tile's keys s,
/// scores[row, s] = ‖v_s‖ (use_vnorm), the tile's softmax partials, and, in the last tile of the
/// row to finish, the row's softmax (max, Σexp) per head.
/// \param mu [stat_batch, H, D] \param cov [stat_batch, H, D, D] (kCov)
/// \param logits [rows, G, capacity] \param part [rows, G, tiles, 2] \param row_stats [rows, G, 2]
/// \param done [rows] tiles finished (zeroed by the launcher) \param scores [rows, capacity]
template <int D, bool kCov, class T, class L>
__global__ void __launch_bounds__(kEaThreads)
    ea_logits_kernel(DeviceCache<T, L> cache, EaArgs a, float const* mu, float const* cov, float* logits, float* part,
                     float* row_stats, unsigned int* done, float* scores, DeviceStatus const* status) {
  if (failed(status)) return;
  using S = typename DeviceCache<T, L>::S;
  constexpr int kKeys = kEaKeys<D>, kPitch = D + 1, kWarps = kEaThreads / 32;
  extern __shared__ float smem[];
  __shared__ bool is_last;
  int const g = a.group, tid = static_cast<int>(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  float* k_s = smem;                   // [kKeys, kPitch]
  float* mu_s = k_s + kKeys * kPitch;  // [G, D]
  float* z_s = mu_s + g * D;           // [G, kKeys]
  float* sig_s = z_s + g * kKeys;      // [kEaSigmaRows, D] (kCov)

  long long const cap = cache.extents.capacity, heads = cache.extents.kv_heads, rows = cache.extents.batch * heads;
  for (long long r = blockIdx.y; r < rows; r += gridDim.y) {
    // Every condition that skips a row is uniform over the block. The previous row's last reads of
    // the shared arrays came before its final __syncthreads, so this row may overwrite them.
    long long const b = r / heads, h = r % heads, n = cache.lengths[r];
    if (n <= a.n_sink || n > cap) continue;  // check_lengths has reported it
    long long const m = n - a.n_sink, tiles_row = (m + kKeys - 1) / kKeys, tile = blockIdx.x;
    if (tile >= tiles_row) continue;
    long long const first = a.n_sink + tile * kKeys;
    int const cnt = static_cast<int>(m - tile * kKeys < kKeys ? m - tile * kKeys : kKeys);

    // Keys of the tile as float (zero beyond the row: they add nothing and are never written out).
    constexpr int kChunks = D / kChunk<S>;
    for (int e = tid; e < kKeys * kChunks; e += kEaThreads) {
      int const k = e / kChunks, c0 = (e % kChunks) * kChunk<S>;
      float* o = k_s + k * kPitch + c0;
      if (k < cnt) load_chunk(cache.keys, cache.key_layout, b, h, first + k, c0, o);
      else
        for (int v = 0; v < kChunk<S>; ++v) o[v] = 0.0f;
    }
    long long const stat_row = (a.stats_per_batch ? b : 0) * a.q_heads + h * g;  // first head of the group
    for (int e = tid; e < g * D; e += kEaThreads) mu_s[e] = mu[stat_row * D + e];
    // ‖v‖ of the tile's entries, a warp per entry, parked in `scores` until ea_scores_kernel reads it.
    if (a.use_vnorm) {
      for (int k = warp; k < cnt; k += kWarps) {
        float ss = 0.0f;
        for (int c0 = lane * kChunk<S>; c0 < D; c0 += 32 * kChunk<S>) {
          float v[kChunk<S>];
          load_chunk(cache.values, cache.value_layout, b, h, first + k, c0, v);
  #pragma unroll
          for (int x = 0; x < kChunk<S>; ++x) ss = fmaf(v[x], v[x], ss);
        }
        ss = warp_sum(ss);
        if (lane == 0) scores[r * cap + first + k] = sqrtf(ss);
      }
    }
    __syncthreads();

    // Mean term μ̃_jᵀk for every (head, key): consecutive threads take consecutive keys (pitch D + 1:
    // distinct banks), μ̃_j is a broadcast.
    for (int p = tid; p < g * kKeys; p += kEaThreads) {
      int const j = p / kKeys, k = p % kKeys;
      float dot = 0.0f;
  #pragma unroll 8
      for (int c = 0; c < D; ++c) dot = fmaf(mu_s[j * D + c], k_s[k * kPitch + c], dot);
      z_s[p] = dot;
    }
    if constexpr (kCov) {
      for (int j = 0; j < g; ++j)
        add_quadratic_form<D>(k_s, sig_s, cov + (stat_row + j) * D * D, z_s + j * kKeys);
    }
    __syncthreads();

    // The tile's softmax partials per head, then its logits.
    for (int j = warp; j < g; j += kWarps) {
      float mx = -INFINITY;
      for (int k = lane; k < cnt; k += 32) mx = fmaxf(mx, z_s[j * kKeys + k]);
      mx = warp_max(mx);
      float sum = 0.0f;
      for (int k = lane; k < cnt; k += 32) sum += expf(z_s[j * kKeys + k] - mx);
      sum = warp_sum(sum);
      if (lane == 0) {
        float* pp = part + ((r * g + j) * a.tiles + tile) * 2;
        pp[0] = mx;
        pp[1] = sum;
      }
    }
    for (int e = tid; e < g * cnt; e += kEaThreads) {
      int const j = e / cnt, k = e % cnt;
      logits[(r * g + j) * cap + first + k] = z_s[j * kKeys + k];
    }

    // The last tile of the row to finish merges the row's partials.
    __threadfence();
    __syncthreads();
    if (tid == 0) is_last = atomicAdd(done + r, 1u) == static_cast<unsigned int>(tiles_row - 1);
    __syncthreads();
    if (!is_last) continue;
    for (int j = warp; j < g; j += kWarps) {
      float const* pp = part + (r * g + j) * a.tiles * 2;
      float mx = -INFINITY, sum = 0.0f;
      for (long long t = lane; t < tiles_row; t += 32) {
        float const tm = __ldcg(pp + 2 * t), ts = __ldcg(pp + 2 * t + 1);  // L2: written by other blocks
        float const nm = fmaxf(mx, tm);
        sum = sum * expf(mx - nm) + ts * expf(tm - nm);
        mx = nm;
      }
      float const row_mx = warp_max(mx);
      sum = warp_sum(mx == -INFINITY ? 0.0f : sum * expf(mx - row_mx));
      if (lane == 0) {
        row_stats[(r * g + j) * 2] = row_mx;
        row_stats[(r * g + j) * 2 + 1] = sum;
      }
    }
  }
}

// ---- scores ----------------------------------------------------------------------------------------

/// scores[row, s] = (mean_j softmax_j(s) + ε)·‖v_s‖ (use_vnorm; else the mean alone) for the
/// non-sink entries, and the global maximum of those scores into the max cell *gmax (a `rank_key`).
/// Rows strided by gridDim.y. \param lengths [rows] \param logits [rows, G, capacity]
/// \param row_stats [rows, G, 2] \param scores [rows, capacity] (holds ‖v‖ on entry when use_vnorm)
/// \param gmax [1]
template <class = void>
__global__ void __launch_bounds__(256)
    ea_scores_kernel(std::int32_t const* lengths, long long rows, long long cap, EaArgs a, float const* logits,
                     float const* row_stats, float* scores, unsigned int* gmax, DeviceStatus const* status) {
  if (failed(status)) return;
  __shared__ float red[32];
  for (long long r = blockIdx.y; r < rows; r += gridDim.y) {
    long long const n = lengths[r];
    if (n <= a.n_sink || n > cap) continue;
    long long const lo = a.n_sink + static_cast<long long>(blockIdx.x) * kEaScoreKeys;
    if (lo >= n) continue;  // block-uniform, so block_reduce below sees every thread
    long long const hi = lo + kEaScoreKeys < n ? lo + kEaScoreKeys : n;
    int const g = a.group;
    float best = -INFINITY;
    for (long long i = lo + threadIdx.x; i < hi; i += blockDim.x) {
      float out = 0.0f;
      for (int j = 0; j < g; ++j) {
        float const mx = row_stats[(r * g + j) * 2], sum = row_stats[(r * g + j) * 2 + 1];
        float const w = 1.0f / (sum * static_cast<float>(g));  // the CPU's order of operations
        out += expf(logits[(r * g + j) * cap + i] - mx) * w;
      }
      if (a.use_vnorm) out = (out + a.epsilon) * scores[r * cap + i];
      scores[r * cap + i] = out;
      best = fmaxf(best, out);
    }
    best = block_reduce<true>(best, red);
    if (threadIdx.x == 0) atomic_max_key(gmax, best);
  }
}

/// Sinks [0, n_sink) of every row = the global maximum of the non-sink scores + 1 (kvpress pads
/// them with the maximum over batch and heads). \param gmax [1] the max cell \param scores [rows, capacity]
template <class = void>
__global__ void __launch_bounds__(256)
    ea_sinks_kernel(long long rows, long long cap, long long n_sink, unsigned int const* gmax, float* scores,
                    DeviceStatus const* status) {
  if (failed(status)) return;
  float const protect = from_rank_key(*gmax) + 1.0f;
  for (long long e = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; e < rows * n_sink;
       e += static_cast<long long>(gridDim.x) * blockDim.x)
    scores[(e / n_sink) * cap + e % n_sink] = protect;
}

// ---- host side ---------------------------------------------------------------------------------------

namespace detail_ea {

/// `detail::check_expected_attention_common` without the length loop (lengths live on the device:
/// `check_lengths` checks them there). Any number of rows: the kernels stride over them.
template <class T, class L>
void check_common(kvcompress::detail::ExpectedAttentionParams const& p, Observation<T> const& obs,
                  KVCacheView<T, L> const& cache, std::int64_t q_heads) {
  kvcompress::detail::check_expected_attention_shapes(p, obs, cache, q_heads);
}

/// Key tiles of the longest possible row (≥ 1, so that the grid is never empty).
[[nodiscard]] inline std::int64_t key_tiles(std::int64_t capacity, std::int64_t n_sink, std::int64_t d) {
  std::int64_t const keys = d > 128 ? 32 : 64;  // kEaKeys<D>
  return std::max<std::int64_t>(1, (capacity - n_sink + keys - 1) / keys);
}

/// Scratch of `scoring` (mirrors its `take` calls).
template <class T, class L>
[[nodiscard]] std::size_t scoring_bytes(KVCacheView<T, L> const& cache, std::int64_t q_heads, std::int64_t n_sink) {
  auto const rows = static_cast<std::size_t>(cache.extents.batch * cache.extents.kv_heads);
  auto const g = static_cast<std::size_t>(q_heads / cache.extents.kv_heads);
  auto const cap = static_cast<std::size_t>(cache.extents.capacity);
  auto const tiles = static_cast<std::size_t>(key_tiles(cache.extents.capacity, n_sink, cache.extents.head_dim));
  return Workspace::bytes_for<float>(rows * g * cap) + Workspace::bytes_for<float>(rows * g * tiles * 2) +
         Workspace::bytes_for<float>(rows * g * 2) + Workspace::bytes_for<unsigned int>(rows) +
         Workspace::bytes_for<unsigned int>(1);
}

/// Scratch of the rotation and the rotated statistics (both presses).
[[nodiscard]] inline std::size_t stats_bytes(std::int64_t stat_heads, std::int64_t d, bool covariance) {
  auto const n = static_cast<std::size_t>(stat_heads * d);
  return Workspace::bytes_for<float>(static_cast<std::size_t>(2 * d)) + Workspace::bytes_for<float>(n) +
         (covariance ? Workspace::bytes_for<float>(n * static_cast<std::size_t>(d)) : 0);
}

/// Launches the logits, scores and sinks kernels, given rotated, scaled statistics.
/// \param mu [stat_batch, H, D] \param cov [stat_batch, H, D, D] or null \param scores [rows, capacity]
template <int D, class T, class L>
void scoring(cuda const& dev, kvcompress::detail::ExpectedAttentionParams const& p, KVCacheView<T, L> const& cache,
             std::int64_t q_heads, bool stats_per_batch, float const* mu, float const* cov, float* scores,
             Workspace& ws, DeviceStatus* status) {
  std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads, cap = cache.extents.capacity;
  std::int64_t const g = q_heads / cache.extents.kv_heads, tiles = key_tiles(cap, p.n_sink, D);
  auto const u = [](std::int64_t x) { return static_cast<std::size_t>(x); };
  float* logits = ws.take<float>(u(rows * g * cap));
  float* part = ws.take<float>(u(rows * g * tiles * 2));
  float* row_stats = ws.take<float>(u(rows * g * 2));
  auto* done = ws.take<unsigned int>(u(rows));
  auto* gmax = ws.take<unsigned int>(1);
  KVC_CUDA_CHECK(cudaMemsetAsync(done, 0, u(rows) * sizeof(unsigned int), dev.stream));
  // The empty max cell lies below every score's key, −0 and negatives included (ε may be negative).
  static_assert(kEmptyMaxCell == 0u, "the cell is emptied with a zero memset");
  KVC_CUDA_CHECK(cudaMemsetAsync(gmax, 0, sizeof(unsigned int), dev.stream));

  EaArgs const a{q_heads, p.n_sink, tiles, static_cast<int>(g), stats_per_batch ? 1 : 0, p.use_vnorm ? 1 : 0,
                 p.epsilon};
  auto const dc = device_cache(cache);
  dim3 const grid(static_cast<unsigned int>(tiles), row_grid(rows));
  auto const launch_logits = [&](auto kernel, std::size_t smem) {
    allow_dynamic_smem(kernel, smem);
    launch("ea_logits_kernel", kernel, grid, kEaThreads, smem, dev.stream, dc, a, mu, cov, logits, part, row_stats,
           done, scores, status);
  };
  if (cov) launch_logits(ea_logits_kernel<D, true, T, L>, ea_logits_smem<D, true>(g));
  else launch_logits(ea_logits_kernel<D, false, T, L>, ea_logits_smem<D, false>(g));

  launch("ea_scores_kernel", ea_scores_kernel<>,
         dim3(ceil_div(std::max<std::int64_t>(1, cap - p.n_sink), kEaScoreKeys), row_grid(rows)), 256, 0, dev.stream,
         cache.lengths, rows, cap, a, logits, row_stats, scores, gmax, status);
  if (p.n_sink > 0) {
    std::int64_t const sinks = rows * p.n_sink;
    launch("ea_sinks_kernel", ea_sinks_kernel<>, std::min(ceil_div(sinks, 256), 1024u), 256, 0, dev.stream, rows, cap,
           p.n_sink, gmax, scores, status);
  }
}

}  // namespace detail_ea

/// \brief Scratch bytes of `score` for `ExpectedAttentionPress`.
template <class T, class L>
[[nodiscard]] std::size_t score_workspace_bytes(ExpectedAttentionPress const& press, Observation<T> const& obs,
                                                KVCacheView<T, L> const& cache) {
  std::int64_t const q_heads = obs.queries.empty() ? cache.extents.kv_heads : obs.queries.shape[1];
  std::int64_t const bh = cache.extents.batch * q_heads, d = cache.extents.head_dim;
  std::int64_t const count = obs.queries.empty() ? 1 : std::max<std::int64_t>(1, obs.queries.shape[2] - press.n_sink);
  return detail_ea::stats_bytes(bh, d, press.use_covariance) +
         query_stats_workspace_bytes(bh, count, d, press.use_covariance) +
         detail_ea::scoring_bytes(cache, q_heads, press.n_sink);
}

/// \brief Expected Attention from the chunk's pre-RoPE queries (device memory, any strides):
/// scores [batch, kv_heads, capacity] on [0, lengths[row]) of each row, as the CPU device.
/// \param scores [batch, kv_heads, capacity] device memory
template <class T, class L>
void score(cuda const& dev, ExpectedAttentionPress const& press, Observation<T> const& obs,
           KVCacheView<T, L> const& cache, float* scores, Workspace& ws, DeviceStatus* status) {
  Tensor4<T> const& q = obs.queries;
  kvcompress::detail::check_expected_attention_queries(obs, cache.extents, press.n_sink);
  auto const p = press.params();
  std::int64_t const q_heads = q.shape[1], bh = cache.extents.batch * q_heads;
  detail_ea::check_common(p, obs, cache, q_heads);
  std::int64_t const start = kvcompress::detail::future_start(obs);
  require_device_pointer(dev, q.data, "observation.queries");
  dispatch_head_dim(cache.extents.head_dim, [&](auto dim) {
    constexpr int D = decltype(dim)::value;
    RopeAverageArgs const rope = rope_average_args(*obs.rope, start, press.n_future_positions);
    check_lengths(dev, cache.lengths, cache.extents.batch * cache.extents.kv_heads, cache.extents.capacity,
                  press.n_sink, status);
    float* cs = ws.take<float>(2 * D);
    float* mu = ws.take<float>(static_cast<std::size_t>(bh * D));
    float* cov = press.use_covariance ? ws.take<float>(static_cast<std::size_t>(bh * D * D)) : nullptr;
    averaged_rotation(dev, rope, cs, status);
    query_stats<D>(dev, q, press.n_sink, cs, mu, cov, ws, status);
    detail_ea::scoring<D>(dev, p, cache, q_heads, true, mu, cov, scores, ws, status);
  });
}

/// \brief Scratch bytes of `score` for `ExpectedAttentionStatsPress`.
template <class T, class L>
[[nodiscard]] std::size_t score_workspace_bytes(ExpectedAttentionStatsPress const& press, Observation<T> const& obs,
                                                KVCacheView<T, L> const& cache) {
  std::int64_t const q_heads = obs.stats.q_heads > 0 ? obs.stats.q_heads : cache.extents.kv_heads;
  return detail_ea::stats_bytes(q_heads, cache.extents.head_dim, press.use_covariance) +
         detail_ea::scoring_bytes(cache, q_heads, press.n_sink);
}

/// \brief Expected Attention from per-layer statistics (`obs.stats.mean` [q_heads, head_dim],
/// `obs.stats.covariance` [q_heads, head_dim, head_dim]: device memory). A NaN or ±Inf statistic
/// is recorded as kNonFiniteInput (row = query head; slot = c for mean[c], head_dim + i·head_dim +
/// c for covariance[i, c]), where the CPU throws before scoring.
/// \param scores [batch, kv_heads, capacity] device memory
template <class T, class L>
void score(cuda const& dev, ExpectedAttentionStatsPress const& press, Observation<T> const& obs,
           KVCacheView<T, L> const& cache, float* scores, Workspace& ws, DeviceStatus* status) {
  KVC_CHECK(obs.stats.mean != nullptr, "observation.stats.mean must be given ([q_heads, head_dim] for this layer)");
  KVC_CHECK(!press.use_covariance || obs.stats.covariance != nullptr,
            "observation.stats.covariance must be given when use_covariance is true");
  auto const p = press.params();
  std::int64_t const q_heads = obs.stats.q_heads;
  detail_ea::check_common(p, obs, cache, q_heads);
  std::int64_t const start = kvcompress::detail::future_start(obs);
  require_device_pointer(dev, obs.stats.mean, "observation.stats.mean");
  if (press.use_covariance) require_device_pointer(dev, obs.stats.covariance, "observation.stats.covariance");
  dispatch_head_dim(cache.extents.head_dim, [&](auto dim) {
    constexpr int D = decltype(dim)::value;
    RopeAverageArgs const rope = rope_average_args(*obs.rope, start, press.n_future_positions);
    check_lengths(dev, cache.lengths, cache.extents.batch * cache.extents.kv_heads, cache.extents.capacity,
                  press.n_sink, status);
    float* cs = ws.take<float>(2 * D);
    float* mu = ws.take<float>(static_cast<std::size_t>(q_heads * D));
    float* cov = press.use_covariance ? ws.take<float>(static_cast<std::size_t>(q_heads * D * D)) : nullptr;
    averaged_rotation(dev, rope, cs, status);
    RawStats const raw{obs.stats.mean, press.use_covariance ? obs.stats.covariance : nullptr, 1, 1.0f, true};
    rotate_stats<D>(dev, raw, q_heads, cs, mu, cov, status);
    detail_ea::scoring<D>(dev, p, cache, q_heads, false, mu, cov, scores, ws, status);
  });
}

}  // namespace kvcompress::cuda_impl
