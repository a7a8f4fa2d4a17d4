#pragma once
/// \file
/// \brief Reading a tile of one cache row's keys into shared memory as float, through any layout:
/// the first step of every CUDA scorer that reads keys. 16-byte vector loads when each key's
/// channels are contiguous and aligned (HF order, token-major, paged); element loads through the
/// layout's `offset` otherwise (a non-unit innermost stride, strides that break the alignment).

#include <cstdint>
#include <type_traits>
#include <utility>

#include "kvcompress/cuda/runtime.cuh"

namespace kvcompress::cuda_impl {

/// Keys per shared-memory tile: one per lane, so a per-key reduction over a tile is a warp's.
inline constexpr int kKeyTile = 32;

/// Floats per tile row. The +4 puts lane k's row 4 banks after lane k − 1's, so the lane-per-key
/// float4 reads of a tile are conflict-free for every supported head_dim (64, 80, 96, 128, 256).
template <int D>
inline constexpr int kKeyTileStride = D + 4;

/// A row's length clamped to [0, capacity]: kernels stay in bounds even for a length that
/// `check_lengths` has already reported (they return on a failed status, but never rely on it alone).
/// \param lengths [rows]
__device__ __forceinline__ std::int64_t row_length(std::int32_t const* lengths, std::int64_t r, std::int64_t cap) {
  std::int64_t const n = lengths[r];
  return n < 0 ? 0 : (n > cap ? cap : n);
}

/// Whether `load_key_tile<..., true>` may read 16-byte vectors: every key's channels contiguous, the
/// base 16-byte aligned and every other stride a multiple of the vector (head_dim always is one).
template <class T, class L>
[[nodiscard]] bool keys_vectorisable(KVCacheView<T, L> const& cache) {
  constexpr std::int64_t kVec = 16 / static_cast<std::int64_t>(sizeof(T));
  if (reinterpret_cast<std::uintptr_t>(cache.keys) % 16 != 0 || cache.extents.head_dim % kVec != 0) return false;
  auto const& l = cache.key_layout;
  if constexpr (std::is_same_v<L, PagedLayout>) {
    return l.page_stride % kVec == 0 && l.head_stride % kVec == 0 && l.token_stride % kVec == 0;
  } else {
    return l.strides[3] == 1 && l.strides[0] % kVec == 0 && l.strides[1] % kVec == 0 && l.strides[2] % kVec == 0;
  }
}

/// The 16 / sizeof(S) storage values of one 16-byte vector as floats. \param out [16 / sizeof(S)]
template <class S>
__device__ __forceinline__ void unpack16(uint4 const& raw, float* out) {
  constexpr int kN = 16 / static_cast<int>(sizeof(S));
  S const* s = reinterpret_cast<S const*>(&raw);
#pragma unroll
  for (int i = 0; i < kN; ++i) out[i] = load(s[i]);
}

/// Loads keys [s0, s0 + count) of row (b, h) into `tile` as float, one key per tile row, and zeroes
/// the rows from count to kKeyTile (so no consumer ever reads uninitialised shared memory). Called
/// by every thread of the block; the caller synchronises before reading the tile.
/// \param tile [kKeyTile, kKeyTileStride<D>] shared memory, 16-byte aligned
template <int D, bool kVec, class T, class L>
__device__ void load_key_tile(DeviceCache<T, L> const& cache, std::int64_t b, std::int64_t h, std::int64_t s0,
                              int count, float* tile) {
  using S = device_storage_t<T>;
  constexpr int kStride = kKeyTileStride<D>;
  if constexpr (kVec) {
    constexpr int kN = 16 / static_cast<int>(sizeof(S)), kPerKey = D / kN;
    static_assert(D % kN == 0, "head_dim must be a multiple of the 16-byte vector");
    for (int e = static_cast<int>(threadIdx.x); e < kKeyTile * kPerKey; e += static_cast<int>(blockDim.x)) {
      int const k = e / kPerKey, v = e % kPerKey;
      float f[kN];
      if (k < count) {
        uint4 const raw = __ldg(reinterpret_cast<uint4 const*>(&cache.key(b, h, s0 + k, v * kN)));
        unpack16<S>(raw, f);
      } else {
#pragma unroll
        for (int i = 0; i < kN; ++i) f[i] = 0.0f;
      }
      auto* dst = reinterpret_cast<float4*>(tile + k * kStride + v * kN);
#pragma unroll
      for (int i = 0; i < kN / 4; ++i) dst[i] = make_float4(f[4 * i], f[4 * i + 1], f[4 * i + 2], f[4 * i + 3]);
    }
  } else {
    for (int e = static_cast<int>(threadIdx.x); e < kKeyTile * D; e += static_cast<int>(blockDim.x)) {
      int const k = e / D, c = e % D;
      tile[k * kStride + c] = k < count ? load(cache.key(b, h, s0 + k, c)) : 0.0f;
    }
  }
}

/// Calls f(std::bool_constant<V>{}) with V = `keys_vectorisable(cache)`: the one place where the
/// runtime layout check becomes the kVec template argument of the key-reading kernels.
template <class T, class L, class F>
decltype(auto) dispatch_key_vectorisation(KVCacheView<T, L> const& cache, F&& f) {
  if (keys_vectorisable(cache)) return std::forward<F>(f)(std::true_type{});
  return std::forward<F>(f)(std::false_type{});
}

}  // namespace kvcompress::cuda_impl
