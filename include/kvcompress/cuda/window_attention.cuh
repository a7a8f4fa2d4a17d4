#pragma once
/// \file
/// \brief The CUDA scorers of the observation-window presses: SnapKVPress (window attention, mean
/// over the window and the group, average pooling, the window protected) and TOVAPress (the last
/// query's attention averaged over every query head). Both take either post-RoPE window queries or
/// attention probabilities given by the engine, exactly as the CPU presses do, and write what
/// `kvcompress::score(cpu, press, ...)` writes on [0, lengths[r]) of every row.
///
/// Design of the window attention from queries (G query heads per kv head, w window queries each,
/// n keys in the row, m = n − w): an exact softmax over the causally masked keys needs each query's
/// normaliser before any probability can be summed, so the keys are read twice, split along the
/// sequence into chunks of kWindowSplit keys (flash-decoding's split-K idea):
///  1. `window_stats_kernel`: per (key chunk, block of 64 queries, row), logits q·k/√d of a 32-key
///     shared tile against the 64 queries resident in shared memory (lane = key, warp = 8 queries),
///     an online max / sum of exp per lane, reduced over the warp: the chunk's (max, sum) per query;
///  2. `window_stats_combine_kernel`: per query, the chunks' (max, sum) combined in chunk order into
///     (max, 1 / (sum · w)), the CPU's scale;
///  3. `window_probs_kernel`: per (key chunk, whole heads, row), the logits again, p = exp(z − max) ·
///     scale for the keys before the window, summed over each head's w queries in window order: the
///     window-mean attention probs [rows, G, capacity]. Each (head, key) belongs to one block and one
///     thread, so no atomics are needed and results are reproducible.
/// SnapKV then pools the probs along the sequence and averages the group (`snap_kv_pool_kernel`),
/// TOVA averages every head of a batch element (`tova_mean_kernel`); both keep the global max with
/// `atomic_max_key`, and `protect_window_kernel` gives the protected slots max + 1.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "kvcompress/cuda/key_tile.cuh"
#include "kvcompress/cuda/runtime.cuh"
#include "kvcompress/press/snap_kv.hpp"
#include "kvcompress/press/tova.hpp"

namespace kvcompress::cuda_impl {

inline constexpr int kWindowThreads = 256;  // 8 warps; a warp owns 8 of the resident queries
inline constexpr int kWindowQueries = 64;   // queries resident in shared memory per block
inline constexpr int kWindowSplit = 512;    // keys per block along the sequence

/// Shared-memory carve-up of the window kernels, in floats. Pass 1 needs everything before kProbs.
template <int D>
struct WindowSmem {
  static constexpr int kQueries = 0;                                      // [kWindowQueries, D]
  static constexpr int kKeys = kQueries + kWindowQueries * D;              // [kKeyTile, kKeyTileStride<D>]
  static constexpr int kQueryMax = kKeys + kKeyTile * kKeyTileStride<D>;   // [kWindowQueries]
  static constexpr int kQueryScale = kQueryMax + kWindowQueries;           // [kWindowQueries]
  static constexpr int kProbs = kQueryScale + kWindowQueries;              // [kWindowQueries, kKeyTile + 1]
  static constexpr int kEnd = kProbs + kWindowQueries * (kKeyTile + 1);
  static constexpr std::size_t kStatsBytes = kProbs * sizeof(float);
  static constexpr std::size_t kProbsBytes = kEnd * sizeof(float);
};

/// Loads queries [q0, q0 + count) of row (b, h) — flat index f = j·w + t for query head h·G + j,
/// window token t — into qs as float and zeroes the other resident slots. \param qs [kWindowQueries, D]
template <int D, class S>
__device__ void load_window_queries(DeviceTensor4<S> const& wq, std::int64_t b, std::int64_t h, std::int64_t group,
                                    std::int64_t window, std::int64_t q0, int count, float* qs) {
  for (int e = static_cast<int>(threadIdx.x); e < kWindowQueries * D; e += static_cast<int>(blockDim.x)) {
    int const k = e / D, c = e % D;
    float v = 0.0f;
    if (k < count) {
      std::int64_t const f = q0 + k;
      v = wq(b, h * group + f / window, f % window, c);
    }
    qs[e] = v;
  }
}

/// acc[u] = ⟨resident query warp + 8u, tile key lane⟩ (unscaled) for u < 8. Keys are read as float4
/// along the padded tile rows (conflict-free), queries as warp-wide broadcasts.
/// \param qs [kWindowQueries, D] \param ks [kKeyTile, kKeyTileStride<D>]
template <int D>
__device__ __forceinline__ void tile_logits(float const* qs, float const* ks, float (&acc)[8]) {
  int const warp = static_cast<int>(threadIdx.x) >> 5, lane = static_cast<int>(threadIdx.x) & 31;
  float4 const* key = reinterpret_cast<float4 const*>(ks + lane * kKeyTileStride<D>);
#pragma unroll
  for (int u = 0; u < 8; ++u) acc[u] = 0.0f;
#pragma unroll 4
  for (int c4 = 0; c4 < D / 4; ++c4) {
    float4 const k = key[c4];
#pragma unroll
    for (int u = 0; u < 8; ++u) {
      float4 const q = reinterpret_cast<float4 const*>(qs + (warp + 8 * u) * D)[c4];
      acc[u] = fmaf(q.x, k.x, fmaf(q.y, k.y, fmaf(q.z, k.z, fmaf(q.w, k.w, acc[u]))));
    }
  }
}

/// Pass 1: per (key chunk blockIdx.x, query block blockIdx.y, row), each query's max logit and
/// Σ exp(z − max) over the chunk's keys it sees (slot ≤ m + t for window token t).
/// \param partial [rows, G·w, gridDim.x] (max, sum); chunks past the row's length are not written
template <int D, bool kVec, class T, class L>
__global__ void __launch_bounds__(kWindowThreads)
    window_stats_kernel(DeviceCache<T, L> cache, DeviceTensor4<device_storage_t<T>> wq, std::int64_t group,
                        std::int64_t window, float inv_sqrt_d, float2* partial, DeviceStatus const* status) {
  if (failed(status)) return;
  extern __shared__ float4 window_smem[];
  float* qs = reinterpret_cast<float*>(window_smem) + WindowSmem<D>::kQueries;
  float* ks = reinterpret_cast<float*>(window_smem) + WindowSmem<D>::kKeys;
  std::int64_t const heads = cache.extents.kv_heads, cap = cache.extents.capacity, rows = cache.extents.batch * heads;
  std::int64_t const nq = group * window, q0 = static_cast<std::int64_t>(blockIdx.y) * kWindowQueries;
  int const q_count = static_cast<int>(nq - q0 < kWindowQueries ? nq - q0 : kWindowQueries);
  int const warp = static_cast<int>(threadIdx.x) >> 5, lane = static_cast<int>(threadIdx.x) & 31;
  std::int64_t const k_begin = static_cast<std::int64_t>(blockIdx.x) * kWindowSplit;
  for (std::int64_t r = blockIdx.z; r < rows; r += gridDim.z) {
    std::int64_t const n = row_length(cache.lengths, r, cap), m = n - window;
    if (k_begin >= n) continue;
    std::int64_t const k_end = k_begin + kWindowSplit < n ? k_begin + kWindowSplit : n;
    load_window_queries<D>(wq, r / heads, r % heads, group, window, q0, q_count, qs);
    float mx[8], sum[8];
    int visible[8];  // last slot each query sees (slots fit in int32: the capacity does)
#pragma unroll
    for (int u = 0; u < 8; ++u) {
      mx[u] = -INFINITY;
      sum[u] = 0.0f;
      visible[u] = static_cast<int>(m + (q0 + warp + 8 * u) % window);
    }
    for (std::int64_t s0 = k_begin; s0 < k_end; s0 += kKeyTile) {
      int const count = static_cast<int>(k_end - s0 < kKeyTile ? k_end - s0 : kKeyTile);
      load_key_tile<D, kVec>(cache, r / heads, r % heads, s0, count, ks);
      __syncthreads();
      float acc[8];
      tile_logits<D>(qs, ks, acc);
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        if (warp + 8 * u < q_count && lane < count && static_cast<int>(s0) + lane <= visible[u]) {
          float const z = acc[u] * inv_sqrt_d;
          if (z > mx[u]) {
            sum[u] = sum[u] * expf(mx[u] - z) + 1.0f;
            mx[u] = z;
          } else {
            sum[u] += expf(z - mx[u]);
          }
        }
      }
      __syncthreads();  // the next tile (or row's queries) overwrites the shared tiles
    }
#pragma unroll
    for (int u = 0; u < 8; ++u) {
      int const q = warp + 8 * u;
      if (q >= q_count) continue;  // uniform over the warp
      float const row_max = warp_max(mx[u]);
      float const part = mx[u] == -INFINITY ? 0.0f : sum[u] * expf(mx[u] - row_max);
      float const row_sum = warp_sum(part);
      if (lane == 0) partial[(r * nq + q0 + q) * gridDim.x + blockIdx.x] = make_float2(row_max, row_sum);
    }
  }
}

/// Pass 2: per query, the chunks' (max, sum) combined in chunk order into (max, 1 / (sum · w)).
/// \param partial [rows, nq, chunks] \param stats [rows, nq]
template <class Index>
__global__ void __launch_bounds__(kWindowThreads)
    window_stats_combine_kernel(Index const* lengths, std::int64_t rows, std::int64_t cap, std::int64_t nq,
                                std::int64_t window, float2 const* partial, unsigned int chunks, float2* stats,
                                DeviceStatus const* status) {
  if (failed(status)) return;
  for (std::int64_t x = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; x < rows * nq;
       x += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    std::int64_t const n = row_length(lengths, x / nq, cap);
    std::int64_t const live = (n + kWindowSplit - 1) / kWindowSplit;
    float2 const* p = partial + x * chunks;
    float mx = -INFINITY;
    for (std::int64_t s = 0; s < live; ++s) mx = fmaxf(mx, p[s].x);
    float sum = 0.0f;
    for (std::int64_t s = 0; s < live; ++s)
      if (p[s].x != -INFINITY) sum += p[s].y * expf(p[s].x - mx);
    stats[x] = make_float2(mx, 1.0f / (sum * static_cast<float>(window)));
  }
}

/// Pass 3: probs[r, j, i] = Σ_t exp(z − max) · scale over the w window queries t of query head
/// h·G + j, for keys i < m. Block (key chunk, heads [j0, j0 + heads_per_block), row).
/// \param stats [rows, G·w] \param probs [rows, G, capacity]
template <int D, bool kVec, class T, class L>
__global__ void __launch_bounds__(kWindowThreads)
    window_probs_kernel(DeviceCache<T, L> cache, DeviceTensor4<device_storage_t<T>> wq, std::int64_t group,
                        std::int64_t window, std::int64_t heads_per_block, float inv_sqrt_d, float2 const* stats,
                        float* probs, DeviceStatus const* status) {
  if (failed(status)) return;
  extern __shared__ float4 window_smem[];
  float* const smem = reinterpret_cast<float*>(window_smem);
  float* qs = smem + WindowSmem<D>::kQueries;
  float* ks = smem + WindowSmem<D>::kKeys;
  float* q_max = smem + WindowSmem<D>::kQueryMax;
  float* q_scale = smem + WindowSmem<D>::kQueryScale;
  float* ps = smem + WindowSmem<D>::kProbs;  // [kWindowQueries, kKeyTile + 1]
  std::int64_t const heads = cache.extents.kv_heads, cap = cache.extents.capacity, rows = cache.extents.batch * heads;
  std::int64_t const j0 = static_cast<std::int64_t>(blockIdx.y) * heads_per_block;
  std::int64_t const my_heads = group - j0 < heads_per_block ? group - j0 : heads_per_block;
  std::int64_t const nf = my_heads * window;  // this block's queries, flat f = (j − j0)·w + t
  bool const resident = nf <= kWindowQueries;
  int const t = static_cast<int>(threadIdx.x), warp = t >> 5, lane = t & 31;
  std::int64_t const k_begin = static_cast<std::int64_t>(blockIdx.x) * kWindowSplit;
  // Queries [f0, f0 + count) of the block, with their softmax statistics.
  auto const load_chunk = [&](std::int64_t r, std::int64_t f0, int count) {
    load_window_queries<D>(wq, r / heads, r % heads, group, window, j0 * window + f0, count, qs);
    for (int k = t; k < kWindowQueries; k += static_cast<int>(blockDim.x)) {
      float2 const s = k < count ? stats[r * group * window + j0 * window + f0 + k] : make_float2(0.0f, 0.0f);
      q_max[k] = s.x;
      q_scale[k] = s.y;
    }
  };
  for (std::int64_t r = blockIdx.z; r < rows; r += gridDim.z) {
    std::int64_t const m = row_length(cache.lengths, r, cap) - window;
    if (k_begin >= m) continue;
    std::int64_t const k_end = k_begin + kWindowSplit < m ? k_begin + kWindowSplit : m;
    if (resident) load_chunk(r, 0, static_cast<int>(nf));
    for (std::int64_t s0 = k_begin; s0 < k_end; s0 += kKeyTile) {
      int const count = static_cast<int>(k_end - s0 < kKeyTile ? k_end - s0 : kKeyTile);
      load_key_tile<D, kVec>(cache, r / heads, r % heads, s0, count, ks);
      for (std::int64_t f0 = 0; f0 < nf; f0 += kWindowQueries) {
        int const q_count = static_cast<int>(nf - f0 < kWindowQueries ? nf - f0 : kWindowQueries);
        if (!resident) load_chunk(r, f0, q_count);
        __syncthreads();
        float acc[8];
        tile_logits<D>(qs, ks, acc);
#pragma unroll
        for (int u = 0; u < 8; ++u) {
          int const q = warp + 8 * u;
          ps[q * (kKeyTile + 1) + lane] =
              q < q_count && lane < count ? expf(acc[u] * inv_sqrt_d - q_max[q]) * q_scale[q] : 0.0f;
        }
        __syncthreads();
        // Head hh of the block is summed by warp hh % 8 in every chunk, so its running sum in
        // probs is read and written by one thread only, in window order.
        for (std::int64_t hh = warp; hh < my_heads; hh += kWindowThreads / 32) {
          std::int64_t const fa = f0 > hh * window ? f0 : hh * window;
          std::int64_t const fb = f0 + q_count < (hh + 1) * window ? f0 + q_count : (hh + 1) * window;
          if (fa >= fb || lane >= count) continue;
          float sum = 0.0f;
          for (std::int64_t f = fa; f < fb; ++f) sum += ps[(f - f0) * (kKeyTile + 1) + lane];
          float* dst = probs + ((r * group + j0 + hh) * cap + s0 + lane);
          *dst = fa == hh * window ? sum : *dst + sum;
        }
        // The next chunk's loads and logits start after the __syncthreads at the top of its
        // iteration; the next tile's loads come before that one, but only the logits read the
        // key tile and they are done (the __syncthreads above).
      }
    }
    __syncthreads();  // the next row overwrites the resident queries
  }
}

/// Window-mean attention from given probabilities: probs[r, j, i] = Σ rows q−w … q−1 of
/// attention[b, h·G + j, ·, i], divided by w (the CPU's order), for i < m.
/// \param probs [rows, G, capacity]
template <class S>
__global__ void __launch_bounds__(kWindowThreads)
    window_mean_from_attention_kernel(std::int32_t const* lengths, std::int64_t heads, std::int64_t rows,
                                      std::int64_t cap, DeviceTensor4<S> att, std::int64_t q_len, std::int64_t keys,
                                      std::int64_t group, std::int64_t window, float* probs,
                                      DeviceStatus const* status) {
  if (failed(status)) return;
  std::int64_t const i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x, j = blockIdx.y;
  for (std::int64_t r = blockIdx.z; r < rows; r += gridDim.z) {
    std::int64_t const m = row_length(lengths, r, cap) - window;
    if (i >= m || i >= keys) continue;
    float acc = 0.0f;
    for (std::int64_t row = q_len - window; row < q_len; ++row) acc += att(r / heads, (r % heads) * group + j, row, i);
    probs[(r * group + j) * cap + i] = acc / static_cast<float>(window);
  }
}

/// SnapKV: out[i] = Σ_j avg_pool(probs[r, j])[i] · (1/G)/kernel, the CPU's `add_avg_pool` (zero
/// padding counted in the divisor) in the CPU's order, for i < m; the largest into global_max.
/// \param probs [rows, G, capacity] \param scores [rows, capacity]
template <class Index>
__global__ void __launch_bounds__(kWindowThreads)
    snap_kv_pool_kernel(Index const* lengths, std::int64_t rows, std::int64_t cap, float const* probs,
                        std::int64_t group, std::int64_t window, std::int64_t kernel, float weight, float* scores,
                        unsigned int* global_max, DeviceStatus const* status) {
  if (failed(status)) return;
  __shared__ float red[32];
  std::int64_t const i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x, half_k = kernel / 2;
  for (std::int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    std::int64_t const m = row_length(lengths, r, cap) - window;
    float v = -INFINITY;
    if (i < m) {
      std::int64_t const lo = i - half_k > 0 ? i - half_k : 0, hi = i + half_k < m - 1 ? i + half_k : m - 1;
      float out = 0.0f;
      for (std::int64_t j = 0; j < group; ++j) {
        float const* p = probs + (r * group + j) * cap;
        float acc = 0.0f;
        for (std::int64_t x = lo; x <= hi; ++x) acc += p[x];
        out += acc * weight;
      }
      scores[r * cap + i] = out;
      v = out;
    }
    v = block_reduce<true>(v, red);  // fmaxf: a NaN never wins, as with the CPU's std::max
    if (threadIdx.x == 0 && v > -INFINITY) atomic_max_key(global_max, v);
  }
}

/// TOVA: for i < n(b, 0) − 1, the mean over every query head of batch element b (per kv head the
/// sum over its group, then over the kv heads: the CPU's order), written to every kv head.
/// \param probs [batch, kv_heads, G, capacity] \param scores [batch, kv_heads, capacity]
template <class Index>
__global__ void __launch_bounds__(kWindowThreads)
    tova_mean_kernel(Index const* lengths, std::int64_t batch, std::int64_t heads, std::int64_t cap,
                     float const* probs, std::int64_t group, float inv_heads, float* scores,
                     unsigned int* global_max, DeviceStatus const* status) {
  if (failed(status)) return;
  __shared__ float red[32];
  std::int64_t const i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (std::int64_t b = blockIdx.y; b < batch; b += gridDim.y) {
    std::int64_t const m = row_length(lengths, b * heads, cap) - 1;
    float v = -INFINITY;
    if (i < m) {
      float acc = 0.0f;
      for (std::int64_t h = 0; h < heads; ++h) {
        float head_sum = 0.0f;
        for (std::int64_t j = 0; j < group; ++j) head_sum += probs[((b * heads + h) * group + j) * cap + i];
        acc += head_sum;
      }
      v = acc * inv_heads;
      for (std::int64_t h = 0; h < heads; ++h) scores[(b * heads + h) * cap + i] = v;
    }
    v = block_reduce<true>(v, red);
    if (threadIdx.x == 0 && v > -INFINITY) atomic_max_key(global_max, v);
  }
}

/// Slots [n − window, n) of every row get (global max, or 0 when none is finite) + 1, as the CPU's
/// `protect_window`. \param scores [rows, capacity]
template <class Index>
__global__ void __launch_bounds__(kWindowThreads)
    protect_window_kernel(Index const* lengths, std::int64_t rows, std::int64_t cap, std::int64_t window,
                          unsigned int const* global_max, float* scores, DeviceStatus const* status) {
  if (failed(status)) return;
  float const mx = from_rank_key(*global_max);  // a NaN while empty
  float const protect = (::isfinite(mx) ? mx : 0.0f) + 1.0f;
  std::int64_t const x = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (std::int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    std::int64_t const n = row_length(lengths, r, cap), i = n - window + x;
    if (x < window && i >= 0) scores[r * cap + i] = protect;
  }
}

/// Records a row whose length differs from `expected` (the key count of the given attention) as
/// kLengthMismatch: the CPU's "observation.attention covers ... keys" check, read on the device.
/// \param lengths [rows]
template <class Index>
__global__ void check_key_count_kernel(Index const* lengths, std::int64_t rows, std::int64_t expected,
                                       DeviceStatus* status) {
  for (std::int64_t r = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r < rows;
       r += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    if (lengths[r] != expected) report(status, StatusCode::kLengthMismatch, r, -1, 0.0f, lengths[r],
                                       static_cast<int>(expected));
}

/// Records a kv head whose length differs from head 0's of the same batch element as
/// kLengthMismatch: TOVA's "every kv head of a batch element needs the same length", on the device.
/// \param lengths [batch, heads]
template <class Index>
__global__ void check_equal_head_lengths_kernel(Index const* lengths, std::int64_t batch, std::int64_t heads,
                                                DeviceStatus* status) {
  for (std::int64_t r = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r < batch * heads;
       r += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    if (lengths[r] != lengths[r - r % heads])
      report(status, StatusCode::kLengthMismatch, r, -1, 0.0f, lengths[r], lengths[r - r % heads]);
}

[[nodiscard]] inline unsigned int check_grid(std::int64_t n) {
  unsigned int const blocks = ceil_div(n, kWindowThreads);
  return blocks < 1024u ? blocks : 1024u;
}

// ---- the window-mean attention (shared by SnapKV and TOVA) ----------------------------------------

/// Host half of the CPU's `detail::window_from_queries` (the same checks and wording) and the pointer
/// kind of the chosen input; whether the window queries (true) or the attention (false) are used.
/// Lengths are checked by `check_window_lengths` on the device.
template <class T, class L>
bool window_input_from_queries(cuda const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, std::int64_t window) {
  bool const queries = kvcompress::detail::window_input_is_queries(obs, cache.extents, window);
  if (queries) require_device_pointer(dev, obs.window_queries.data, "observation.window_queries");
  else require_device_pointer(dev, obs.attention.data, "observation.attention");
  return queries;
}

/// Device half of `window_from_queries`: every row longer than the window (recorded as
/// kLengthNotAboveWindow with aux = window) and, from attention, every row as long as its key count.
template <class T, class L>
void check_window_lengths(cuda const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache,
                          std::int64_t window, bool from_queries, DeviceStatus* status) {
  std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads;
  check_lengths(dev, cache.lengths, rows, cache.extents.capacity, window, status, StatusCode::kLengthNotAboveWindow);
  if (from_queries) return;
  launch("check_key_count_kernel", check_key_count_kernel<std::int32_t>, check_grid(rows), kWindowThreads, 0,
         dev.stream, cache.lengths, rows, obs.attention.shape[3], status);
}

/// Key chunks of the window passes: enough for the capacity (lengths are on the device).
[[nodiscard]] inline std::int64_t window_chunks(CacheExtents const& e) {
  return (e.capacity + kWindowSplit - 1) / kWindowSplit;
}

/// Workspace of `window_attention_mean` beyond its probs: the softmax statistics (from queries only).
template <class T, class L>
[[nodiscard]] std::size_t window_attention_bytes(Observation<T> const& obs, KVCacheView<T, L> const& cache,
                                                 std::int64_t window) {
  if (obs.window_queries.empty()) return 0;
  auto const& e = cache.extents;
  auto const queries = static_cast<std::size_t>(e.batch * e.kv_heads * kvcompress::detail::window_group(obs, cache) * window);
  return Workspace::bytes_for<float2>(queries * static_cast<std::size_t>(window_chunks(e))) +
         Workspace::bytes_for<float2>(queries);
}

/// Writes the window-mean attention probs [rows, G, capacity] (entries i < n − w of each row) from
/// the window queries or the given attention.
template <class T, class L>
void window_attention_mean(cuda const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache,
                           std::int64_t window, bool from_queries, float* probs, Workspace& ws,
                           DeviceStatus* status) {
  auto const& e = cache.extents;
  std::int64_t const rows = e.batch * e.kv_heads, group = kvcompress::detail::window_group(obs, cache);
  unsigned int const grid_z = row_grid(rows);
  if (!from_queries) {
    auto const& a = obs.attention;
    dim3 const grid(ceil_div(e.capacity, kWindowThreads), static_cast<unsigned int>(group), grid_z);
    launch("window_mean_from_attention_kernel", window_mean_from_attention_kernel<device_storage_t<T>>, grid,
           kWindowThreads, 0, dev.stream, cache.lengths, e.kv_heads, rows, e.capacity, device_tensor(a), a.shape[2],
           a.shape[3], group, window, probs, status);
    return;
  }
  std::int64_t const nq = group * window, chunks = window_chunks(e);
  auto* partial = ws.take<float2>(static_cast<std::size_t>(rows * nq * chunks));
  auto* stats = ws.take<float2>(static_cast<std::size_t>(rows * nq));
  float const inv_sqrt_d = 1.0f / std::sqrt(static_cast<float>(e.head_dim));  // the CPU's scale
  auto const wq = device_tensor(obs.window_queries);
  // Whole heads per pass-3 block, as many as fit in the resident queries.
  std::int64_t const per_block = window >= kWindowQueries ? 1 : std::min<std::int64_t>(group, kWindowQueries / window);
  dispatch_head_dim(e.head_dim, [&](auto dim) {
    constexpr int D = decltype(dim)::value;
    dispatch_key_vectorisation(cache, [&](auto vec) {
      constexpr bool kVec = decltype(vec)::value;
      auto* stats_kernel = window_stats_kernel<D, kVec, T, L>;
      allow_dynamic_smem(stats_kernel, WindowSmem<D>::kStatsBytes);
      dim3 const grid1(static_cast<unsigned int>(chunks), ceil_div(nq, kWindowQueries), grid_z);
      launch("window_stats_kernel", stats_kernel, grid1, kWindowThreads, WindowSmem<D>::kStatsBytes, dev.stream,
             device_cache(cache), wq, group, window, inv_sqrt_d, partial, status);

      launch("window_stats_combine_kernel", window_stats_combine_kernel<std::int32_t>,
             std::min(ceil_div(rows * nq, kWindowThreads), 4096u), kWindowThreads, 0, dev.stream, cache.lengths, rows,
             e.capacity, nq, window, partial, static_cast<unsigned int>(chunks), stats, status);

      auto* probs_kernel = window_probs_kernel<D, kVec, T, L>;
      allow_dynamic_smem(probs_kernel, WindowSmem<D>::kProbsBytes);
      dim3 const grid3(static_cast<unsigned int>(chunks), ceil_div(group, per_block), grid_z);
      launch("window_probs_kernel", probs_kernel, grid3, kWindowThreads, WindowSmem<D>::kProbsBytes, dev.stream,
             device_cache(cache), wq, group, window, per_block, inv_sqrt_d, stats, probs, status);
    });
  });
}

/// Empties the global-max cell (`kEmptyMaxCell`, below every float's key), which
/// `protect_window_kernel` reads as "no finite score", as the CPU's −∞ start.
inline void reset_global_max(cuda const& dev, unsigned int* global_max) {
  static_assert(kEmptyMaxCell == 0u, "the cell is emptied with a zero memset");
  KVC_CUDA_CHECK(cudaMemsetAsync(global_max, 0, sizeof(unsigned int), dev.stream));
}

// ---- SnapKV --------------------------------------------------------------------------------------

/// Workspace of `snap_kv_scores` (SnapKV's, and PyramidKV's, which shares its scores).
template <class T, class L>
[[nodiscard]] std::size_t snap_kv_workspace_bytes(Observation<T> const& obs, KVCacheView<T, L> const& cache,
                                                  std::int64_t window) {
  auto const& e = cache.extents;
  auto const probs = static_cast<std::size_t>(e.batch * e.kv_heads * kvcompress::detail::window_group(obs, cache) * e.capacity);
  return Workspace::bytes_for<float>(probs) + Workspace::bytes_for<unsigned int>(1) +
         window_attention_bytes(obs, cache, window);
}

/// SnapKV's scores on the device (the CPU's `detail::snap_kv_scores`).
/// \param scores [batch, kv_heads, capacity] device memory
template <class T, class L>
void snap_kv_scores(cuda const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, std::int64_t window,
                    std::int64_t kernel, float* scores, Workspace& ws, DeviceStatus* status) {
  KVC_CHECK(window > 0, "window_size must be positive, got " << window);
  KVC_CHECK(kernel > 0 && kernel % 2 == 1, "kernel_size must be odd and positive, got "
                                               << kernel << " (an even kernel changes the pooled length; kvpress fails too)");
  require_device_cache(dev, cache);
  require_device_pointer(dev, scores, "scores");
  require_device_pointer(dev, status, "status");
  bool const from_queries = window_input_from_queries(dev, obs, cache, window);
  auto const& e = cache.extents;
  std::int64_t const rows = e.batch * e.kv_heads, group = kvcompress::detail::window_group(obs, cache);
  float* probs = ws.take<float>(static_cast<std::size_t>(rows * group * e.capacity));
  auto* global_max = ws.take<unsigned int>(1);
  check_window_lengths(dev, obs, cache, window, from_queries, status);
  window_attention_mean(dev, obs, cache, window, from_queries, probs, ws, status);
  reset_global_max(dev, global_max);
  unsigned int const grid_y = row_grid(rows);
  float const weight = 1.0f / static_cast<float>(group) / static_cast<float>(kernel);  // the CPU's add_avg_pool weight
  launch("snap_kv_pool_kernel", snap_kv_pool_kernel<std::int32_t>, dim3(ceil_div(e.capacity, kWindowThreads), grid_y),
         kWindowThreads, 0, dev.stream, cache.lengths, rows, e.capacity, probs, group, window, kernel, weight, scores,
         global_max, status);
  launch("protect_window_kernel", protect_window_kernel<std::int32_t>,
         dim3(ceil_div(window, kWindowThreads), grid_y), kWindowThreads, 0, dev.stream, cache.lengths, rows,
         e.capacity, window, global_max, scores, status);
}

template <class T, class L>
[[nodiscard]] std::size_t score_workspace_bytes(SnapKVPress const& press, Observation<T> const& obs,
                                                KVCacheView<T, L> const& cache) {
  return snap_kv_workspace_bytes(obs, cache, press.window_size);
}

/// SnapKVPress on the device. \param scores [batch, kv_heads, capacity] device memory
template <class T, class L>
void score(cuda const& dev, SnapKVPress const& press, Observation<T> const& obs, KVCacheView<T, L> const& cache,
           float* scores, Workspace& ws, DeviceStatus* status) {
  snap_kv_scores(dev, obs, cache, press.window_size, press.kernel_size, scores, ws, status);
}

// ---- TOVA ----------------------------------------------------------------------------------------

template <class T, class L>
[[nodiscard]] std::size_t score_workspace_bytes(TOVAPress const&, Observation<T> const& obs,
                                                KVCacheView<T, L> const& cache) {
  return snap_kv_workspace_bytes(TOVAPress::last_query(obs), cache, 1);
}

/// TOVAPress on the device: the window attention with w = 1 (window queries narrowed to their last
/// token, as the CPU does), then the mean over every query head of each batch element.
/// \param scores [batch, kv_heads, capacity] device memory
template <class T, class L>
void score(cuda const& dev, TOVAPress const&, Observation<T> const& given, KVCacheView<T, L> const& cache,
           float* scores, Workspace& ws, DeviceStatus* status) {
  Observation<T> const obs = TOVAPress::last_query(given);
  require_device_cache(dev, cache);
  require_device_pointer(dev, scores, "scores");
  require_device_pointer(dev, status, "status");
  bool const from_queries = window_input_from_queries(dev, obs, cache, 1);
  auto const& e = cache.extents;
  std::int64_t const rows = e.batch * e.kv_heads, group = kvcompress::detail::window_group(obs, cache);
  float* probs = ws.take<float>(static_cast<std::size_t>(rows * group * e.capacity));
  auto* global_max = ws.take<unsigned int>(1);
  // The CPU checks equal head lengths first, then the window's lengths: the first report wins.
  launch("check_equal_head_lengths_kernel", check_equal_head_lengths_kernel<std::int32_t>, check_grid(rows),
         kWindowThreads, 0, dev.stream, cache.lengths, e.batch, e.kv_heads, status);
  check_window_lengths(dev, obs, cache, 1, from_queries, status);
  window_attention_mean(dev, obs, cache, 1, from_queries, probs, ws, status);
  reset_global_max(dev, global_max);
  float const inv_heads = 1.0f / static_cast<float>(group * e.kv_heads);
  launch("tova_mean_kernel", tova_mean_kernel<std::int32_t>, dim3(ceil_div(e.capacity, kWindowThreads), row_grid(e.batch)),
         kWindowThreads, 0, dev.stream, cache.lengths, e.batch, e.kv_heads, e.capacity, probs, group, inv_heads,
         scores, global_max, status);
  launch("protect_window_kernel", protect_window_kernel<std::int32_t>, dim3(1, row_grid(rows)), kWindowThreads, 0,
         dev.stream, cache.lengths, rows, e.capacity, std::int64_t{1}, global_max, scores, status);
}

}  // namespace kvcompress::cuda_impl
