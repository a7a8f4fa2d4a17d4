#pragma once
/// \file
/// \brief The CUDA scorers of the presses that read only the cache: KnormPress (−‖k‖₂),
/// StreamingLLMPress (sinks and the recent window, from the lengths alone) and KeyDiffPress
/// (−cos to the row's mean normalised key). Each writes what `kvcompress::score(cpu, press, ...)`
/// writes on [0, lengths[r]) of every row r = b · kv_heads + h.
///
/// Design. Rows are (batch, kv head) pairs with their own lengths, which live on the device: grids
/// are sized by the capacity and blocks past a row's length return at once. A block stages tiles of
/// 32 keys in shared memory as float (`load_key_tile`: 16-byte loads when the channels are contiguous)
/// and one warp reduces each key over its channels, so every layout is read in coalesced order and
/// the per-key arithmetic is the CPU's, in float.

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "kvcompress/cuda/key_tile.cuh"
#include "kvcompress/cuda/runtime.cuh"
#include "kvcompress/press/key_diff.hpp"
#include "kvcompress/press/knorm.hpp"
#include "kvcompress/press/streaming_llm.hpp"

namespace kvcompress::cuda_impl {

inline constexpr int kScorerThreads = 256;                // 8 warps
inline constexpr int kScorerKeysPerBlock = 8 * kKeyTile;  // keys of one row per block

/// Grid of a per-key scorer: x over the capacity in kScorerKeysPerBlock chunks, y over the rows.
[[nodiscard]] inline dim3 key_scorer_grid(CacheExtents const& e) {
  std::int64_t const rows = e.batch * e.kv_heads;
  return dim3(ceil_div(e.capacity, kScorerKeysPerBlock), row_grid(rows));
}

// ---- Knorm ---------------------------------------------------------------------------------------

/// score = −‖k‖₂ (Eigen's rowwise().norm(): sqrt of the float sum of squares).
/// \param scores [batch, kv_heads, capacity]
template <int D, bool kVec, class T, class L>
__global__ void __launch_bounds__(kScorerThreads)
    knorm_kernel(DeviceCache<T, L> cache, float* scores, DeviceStatus const* status) {
  if (failed(status)) return;
  __shared__ __align__(16) float tile[kKeyTile * kKeyTileStride<D>];
  std::int64_t const heads = cache.extents.kv_heads, cap = cache.extents.capacity, rows = cache.extents.batch * heads;
  int const warp = static_cast<int>(threadIdx.x) >> 5, lane = static_cast<int>(threadIdx.x) & 31;
  int const warps = static_cast<int>(blockDim.x) >> 5;
  std::int64_t const first = static_cast<std::int64_t>(blockIdx.x) * kScorerKeysPerBlock;
  for (std::int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    std::int64_t const n = row_length(cache.lengths, r, cap);
    std::int64_t const last = first + kScorerKeysPerBlock < n ? first + kScorerKeysPerBlock : n;
    for (std::int64_t s0 = first; s0 < last; s0 += kKeyTile) {
      int const count = static_cast<int>(last - s0 < kKeyTile ? last - s0 : kKeyTile);
      load_key_tile<D, kVec>(cache, r / heads, r % heads, s0, count, tile);
      __syncthreads();
      for (int k = warp; k < count; k += warps) {
        float ss = 0.0f;
        for (int c = lane; c < D; c += 32) ss = fmaf(tile[k * kKeyTileStride<D> + c], tile[k * kKeyTileStride<D> + c], ss);
        ss = warp_sum(ss);
        if (lane == 0) scores[r * cap + s0 + k] = -sqrtf(ss);
      }
      __syncthreads();  // the next tile overwrites this one
    }
  }
}

template <class T, class L>
[[nodiscard]] std::size_t score_workspace_bytes(KnormPress const&, Observation<T> const&, KVCacheView<T, L> const&) {
  return 0;
}

/// KnormPress on the device. \param scores [batch, kv_heads, capacity] device memory
template <class T, class L>
void score(cuda const& dev, KnormPress const&, Observation<T> const&, KVCacheView<T, L> const& cache, float* scores,
           Workspace&, DeviceStatus* status) {
  require_device_cache(dev, cache);
  require_device_pointer(dev, scores, "scores");
  require_device_pointer(dev, status, "status");
  auto const& e = cache.extents;
  check_lengths(dev, cache.lengths, e.batch * e.kv_heads, e.capacity, -1, status);
  dispatch_head_dim(e.head_dim, [&](auto dim) {
    dispatch_key_vectorisation(cache, [&](auto vec) {
      launch("knorm_kernel", knorm_kernel<decltype(dim)::value, decltype(vec)::value, T, L>, key_scorer_grid(e),
             kScorerThreads, 0, dev.stream, device_cache(cache), scores, status);
    });
  });
}

// ---- StreamingLLM --------------------------------------------------------------------------------

/// 1 on [0, n) except 0 on [min(n_sink, n), min(n_sink + n − kept_count(n, ratio), n)), as the CPU.
/// \param lengths [rows] \param scores [rows, capacity]
template <class Index>
__global__ void __launch_bounds__(kScorerThreads)
    streaming_llm_kernel(Index const* lengths, std::int64_t rows, std::int64_t cap, double ratio, std::int64_t n_sink,
                         float* scores, DeviceStatus const* status) {
  if (failed(status)) return;
  std::int64_t const i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (std::int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    std::int64_t const n = row_length(lengths, r, cap);
    if (i >= n) continue;
    std::int64_t const n_pruned = n - kept_count(n, ratio);
    std::int64_t const lo = n_sink < n ? n_sink : n;
    std::int64_t const hi = n_sink + n_pruned < n ? n_sink + n_pruned : n;
    scores[r * cap + i] = i >= lo && i < hi ? 0.0f : 1.0f;
  }
}

template <class T, class L>
[[nodiscard]] std::size_t score_workspace_bytes(StreamingLLMPress const&, Observation<T> const&,
                                                KVCacheView<T, L> const&) {
  return 0;
}

/// StreamingLLMPress on the device; a row not longer than n_sink is recorded in `status`.
/// \param scores [batch, kv_heads, capacity] device memory
template <class T, class L>
void score(cuda const& dev, StreamingLLMPress const& press, Observation<T> const&, KVCacheView<T, L> const& cache,
           float* scores, Workspace&, DeviceStatus* status) {
  check_compression_ratio(press.compression_ratio);
  KVC_CHECK(press.n_sink >= 0, "n_sink must be non-negative, got " << press.n_sink);
  require_device_cache(dev, cache);
  require_device_pointer(dev, scores, "scores");
  require_device_pointer(dev, status, "status");
  auto const& e = cache.extents;
  std::int64_t const rows = e.batch * e.kv_heads;
  // The CPU's "StreamingLLM needs more entries than n_sink" reads the lengths: here on the device.
  check_lengths(dev, cache.lengths, rows, e.capacity, press.n_sink, status);
  dim3 const grid(ceil_div(e.capacity, kScorerThreads), row_grid(rows));
  launch("streaming_llm_kernel", streaming_llm_kernel<std::int32_t>, grid, kScorerThreads, 0, dev.stream,
         cache.lengths, rows, e.capacity, press.compression_ratio, press.n_sink, scores, status);
}

// ---- KeyDiff -------------------------------------------------------------------------------------

/// Pass 1: per row and block, Σ k_i / max(‖k_i‖, 1e-12) over the block's keys.
/// \param partial [rows, gridDim.x, D]: every block writes its sum (zeros past the row's length)
template <int D, bool kVec, class T, class L>
__global__ void __launch_bounds__(kScorerThreads)
    key_diff_sum_kernel(DeviceCache<T, L> cache, float* partial, DeviceStatus const* status) {
  if (failed(status)) return;
  __shared__ __align__(16) float tile[kKeyTile * kKeyTileStride<D>];
  __shared__ float inv_norm[kKeyTile];
  std::int64_t const heads = cache.extents.kv_heads, cap = cache.extents.capacity, rows = cache.extents.batch * heads;
  int const t = static_cast<int>(threadIdx.x), warp = t >> 5, lane = t & 31, warps = static_cast<int>(blockDim.x) >> 5;
  // Channel sums: thread t owns channel t % D of every parts-th key (all threads busy for D ≤ 128).
  int const parts = static_cast<int>(blockDim.x) / D, c = t % D, part = t / D;
  std::int64_t const first = static_cast<std::int64_t>(blockIdx.x) * kScorerKeysPerBlock;
  for (std::int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    std::int64_t const n = row_length(cache.lengths, r, cap);
    std::int64_t const last = first + kScorerKeysPerBlock < n ? first + kScorerKeysPerBlock : n;
    float acc = 0.0f;
    for (std::int64_t s0 = first; s0 < last; s0 += kKeyTile) {
      int const count = static_cast<int>(last - s0 < kKeyTile ? last - s0 : kKeyTile);
      load_key_tile<D, kVec>(cache, r / heads, r % heads, s0, count, tile);
      __syncthreads();
      for (int k = warp; k < kKeyTile; k += warps) {
        float ss = 0.0f;
        for (int ch = lane; ch < D; ch += 32) ss = fmaf(tile[k * kKeyTileStride<D> + ch], tile[k * kKeyTileStride<D> + ch], ss);
        ss = warp_sum(ss);
        if (lane == 0) inv_norm[k] = k < count ? 1.0f / fmaxf(sqrtf(ss), KeyDiffPress::kNormalizeEps) : 0.0f;
      }
      __syncthreads();
      if (part < parts)
        for (int k = part; k < count; k += parts) acc = fmaf(tile[k * kKeyTileStride<D> + c], inv_norm[k], acc);
      __syncthreads();  // the next tile overwrites tile and inv_norm
    }
    // Sum the parts (the tile is free now) in a fixed order: the result does not depend on timing.
    if (part < parts) tile[part * D + c] = acc;
    __syncthreads();
    if (t < D) {
      float sum = 0.0f;
      for (int p = 0; p < parts; ++p) sum += tile[p * D + t];
      partial[(r * gridDim.x + blockIdx.x) * D + t] = sum;
    }
    __syncthreads();
  }
}

/// Pass 2: anchor = (Σ of the blocks' sums) / n and max(‖anchor‖, 1e-8), one block per row.
/// \param partial [rows, blocks, D] \param anchor [rows, D] \param anchor_norm [rows]
template <int D>
__global__ void __launch_bounds__(kScorerThreads)
    key_diff_anchor_kernel(std::int32_t const* lengths, std::int64_t rows, std::int64_t cap, float const* partial,
                           unsigned int blocks, float* anchor, float* anchor_norm, DeviceStatus const* status) {
  if (failed(status)) return;
  __shared__ float red[32];
  int const t = static_cast<int>(threadIdx.x);
  for (std::int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    std::int64_t const n = row_length(lengths, r, cap);
    if (n == 0) continue;  // the CPU leaves an empty row alone
    float a = 0.0f;
    if (t < D) {
      for (unsigned int s = 0; s < blocks; ++s) a += partial[(r * blocks + s) * D + t];
      a /= static_cast<float>(n);
      anchor[r * D + t] = a;
    }
    float const aa = block_reduce<false>(t < D ? a * a : 0.0f, red);
    if (t == 0) anchor_norm[r] = fmaxf(sqrtf(aa), KeyDiffPress::kCosineEps);
  }
}

/// Pass 3: score = −⟨k, anchor⟩ / (max(‖k‖, 1e-8) · anchor_norm).
/// \param anchor [rows, D] \param anchor_norm [rows] \param scores [rows, capacity]
template <int D, bool kVec, class T, class L>
__global__ void __launch_bounds__(kScorerThreads)
    key_diff_score_kernel(DeviceCache<T, L> cache, float const* anchor, float const* anchor_norm, float* scores,
                          DeviceStatus const* status) {
  if (failed(status)) return;
  __shared__ __align__(16) float tile[kKeyTile * kKeyTileStride<D>];
  __shared__ float a_s[D];
  std::int64_t const heads = cache.extents.kv_heads, cap = cache.extents.capacity, rows = cache.extents.batch * heads;
  int const t = static_cast<int>(threadIdx.x), warp = t >> 5, lane = t & 31, warps = static_cast<int>(blockDim.x) >> 5;
  std::int64_t const first = static_cast<std::int64_t>(blockIdx.x) * kScorerKeysPerBlock;
  for (std::int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    std::int64_t const n = row_length(cache.lengths, r, cap);
    std::int64_t const last = first + kScorerKeysPerBlock < n ? first + kScorerKeysPerBlock : n;
    if (first >= last) continue;
    for (int ch = t; ch < D; ch += static_cast<int>(blockDim.x)) a_s[ch] = anchor[r * D + ch];
    float const a_norm = anchor_norm[r];
    for (std::int64_t s0 = first; s0 < last; s0 += kKeyTile) {
      int const count = static_cast<int>(last - s0 < kKeyTile ? last - s0 : kKeyTile);
      load_key_tile<D, kVec>(cache, r / heads, r % heads, s0, count, tile);
      __syncthreads();
      for (int k = warp; k < count; k += warps) {
        float dot = 0.0f, ss = 0.0f;
        for (int ch = lane; ch < D; ch += 32) {
          float const x = tile[k * kKeyTileStride<D> + ch];
          dot = fmaf(x, a_s[ch], dot);
          ss = fmaf(x, x, ss);
        }
        dot = warp_sum(dot);
        ss = warp_sum(ss);
        if (lane == 0) scores[r * cap + s0 + k] = -dot / (fmaxf(sqrtf(ss), KeyDiffPress::kCosineEps) * a_norm);
      }
      __syncthreads();  // the next tile (or row's anchor) overwrites the shared arrays
    }
  }
}

template <class T, class L>
[[nodiscard]] std::size_t score_workspace_bytes(KeyDiffPress const&, Observation<T> const&,
                                                KVCacheView<T, L> const& cache) {
  auto const& e = cache.extents;
  auto const rows = static_cast<std::size_t>(e.batch * e.kv_heads), d = static_cast<std::size_t>(e.head_dim);
  std::size_t const blocks = ceil_div(e.capacity, kScorerKeysPerBlock);
  return Workspace::bytes_for<float>(rows * blocks * d) + Workspace::bytes_for<float>(rows * d) +
         Workspace::bytes_for<float>(rows);
}

/// KeyDiffPress on the device: three launches (block sums of the normalised keys, the anchor of
/// each row, the scores); the sums are combined in a fixed order, so results are reproducible.
/// \param scores [batch, kv_heads, capacity] device memory
template <class T, class L>
void score(cuda const& dev, KeyDiffPress const&, Observation<T> const&, KVCacheView<T, L> const& cache, float* scores,
           Workspace& ws, DeviceStatus* status) {
  require_device_cache(dev, cache);
  require_device_pointer(dev, scores, "scores");
  require_device_pointer(dev, status, "status");
  auto const& e = cache.extents;
  std::int64_t const rows = e.batch * e.kv_heads;
  dim3 const grid = key_scorer_grid(e);
  // Sized by score_workspace_bytes(press, obs, cache), in the same order.
  float* partial = ws.take<float>(static_cast<std::size_t>(rows) * grid.x * static_cast<std::size_t>(e.head_dim));
  float* anchor = ws.take<float>(static_cast<std::size_t>(rows * e.head_dim));
  float* anchor_norm = ws.take<float>(static_cast<std::size_t>(rows));
  check_lengths(dev, cache.lengths, rows, e.capacity, -1, status);
  dispatch_head_dim(e.head_dim, [&](auto dim) {
    constexpr int D = decltype(dim)::value;
    dispatch_key_vectorisation(cache, [&](auto vec) {
      launch("key_diff_sum_kernel", key_diff_sum_kernel<D, decltype(vec)::value, T, L>, grid, kScorerThreads, 0,
             dev.stream, device_cache(cache), partial, status);
    });
    launch("key_diff_anchor_kernel", key_diff_anchor_kernel<D>, row_grid(rows), kScorerThreads, 0, dev.stream,
           cache.lengths, rows, e.capacity, partial, grid.x, anchor, anchor_norm, status);
    dispatch_key_vectorisation(cache, [&](auto vec) {
      launch("key_diff_score_kernel", key_diff_score_kernel<D, decltype(vec)::value, T, L>, grid, kScorerThreads, 0,
             dev.stream, device_cache(cache), anchor, anchor_norm, scores, status);
    });
  });
}

}  // namespace kvcompress::cuda_impl
