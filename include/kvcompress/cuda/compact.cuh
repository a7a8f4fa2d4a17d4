#pragma once
/// \file
/// \brief In-place compaction on the device: in every (batch, kv head) row, slot j takes the K, V
/// (and original position) of slot kept[j] for j < counts[r], then lengths[r] = counts[r] — what
/// `cpu_impl::compact_row` does row by row.
///
/// Why two launches through a staging copy: the CPU moves entries one after the other, which is safe
/// because kept is ascending (kept[j] ≥ j, so a source is read before anything overwrites it). Done in
/// parallel, slot j may be overwritten while an earlier j' (kept[j'] = j) still has to read it. So the
/// first kernel copies every moved entry into the workspace (slot j's new content, at [row, j]), and
/// the second, ordered after it on the stream, copies them back to slot j: no slot is written before
/// every read of it has finished, whatever the grid's schedule. Entries with kept[j] = j stay where
/// they are and cost nothing; the rest cost two reads and two writes (twice the gather roofline) in
/// exchange for full parallelism over rows and slots. The workspace is sized by capacity (K and V of
/// every slot, and the positions when the cache has them): the size of one layer's cache.
///
/// Copies move 16-byte vectors where an entry's channels are contiguous (`unit_dim_stride`: always
/// when paged, at run time when strided) and the address allows it, one element at a time otherwise.
/// `lengths` are written by the second kernel, after the first has read every source.

#include <cstddef>
#include <cstdint>

#include "kvcompress/cuda/runtime.cuh"
#include "kvcompress/detail/layout_traits.hpp"

namespace kvcompress::cuda_impl {

inline constexpr int kMoveThreads = 256;
/// Slots of one row per CTA.
inline constexpr int kMoveEntries = 64;

/// Moves unit `u` of one entry between the cache (slot `slot` of row (b, h)) and its staging copy:
/// a 16-byte vector of channels when `runs` (channels contiguous), else channel u.
/// \param stage [D] the entry's staging copy, 16-byte aligned
template <int D, bool kToStage, class S, class L>
__device__ __forceinline__ void move_unit(S* cache, L const& layout, bool runs, std::int64_t b, std::int64_t h,
                                          std::int64_t slot, S* stage, int u) {
  if (!runs) {
    S& x = cache[layout.offset(b, h, slot, u)];
    if (kToStage) stage[u] = x;
    else x = stage[u];
    return;
  }
  constexpr int kPerVec = 16 / static_cast<int>(sizeof(S));
  S* const c = cache + layout.offset(b, h, slot, static_cast<std::int64_t>(u) * kPerVec);
  S* const s = stage + u * kPerVec;
  if ((reinterpret_cast<std::uintptr_t>(c) & 15u) == 0) {
    if (kToStage) *reinterpret_cast<uint4*>(s) = *reinterpret_cast<uint4 const*>(c);
    else *reinterpret_cast<uint4*>(c) = *reinterpret_cast<uint4 const*>(s);
  } else {
    for (int i = 0; i < kPerVec; ++i) {
      if (kToStage) s[i] = c[i];
      else c[i] = s[i];
    }
  }
}

/// kToStage: stage[row, j] ← slot kept[j]; else slot j ← stage[row, j] and lengths ← counts.
/// Grid: x over slot tiles of kMoveEntries, y over rows (strided).
/// \param kept    [rows, capacity] ascending kept slots
/// \param counts  [rows]
/// \param k_stage [rows, capacity, D]
/// \param v_stage [rows, capacity, D]
/// \param p_stage [rows, capacity], or null when the cache has no positions
template <int D, bool kToStage, class T, class L>
__global__ void __launch_bounds__(kMoveThreads)
    compact_move_kernel(DeviceCache<T, L> c, std::int32_t const* kept, std::int32_t const* counts,
                        device_storage_t<T>* k_stage, device_storage_t<T>* v_stage, std::int32_t* p_stage,
                        bool k_runs, bool v_runs, DeviceStatus const* status) {
  using S = device_storage_t<T>;
  static_assert((D * sizeof(S)) % 16 == 0, "an entry must be whole 16-byte vectors in the staging copy");
  constexpr int kVecs = static_cast<int>(D * sizeof(S) / 16);
  __shared__ std::int32_t src[kMoveEntries];  // the source slot of each slot of the tile, -1: not moved
  if (failed(status)) return;
  std::int64_t const heads = c.extents.kv_heads, cap = c.extents.capacity, rows = c.extents.batch * heads;
  int const t = static_cast<int>(threadIdx.x);
  for (std::int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    std::int64_t const count = counts[r] < 0 ? 0 : (counts[r] > cap ? cap : counts[r]);
    if (!kToStage && blockIdx.x == 0 && t == 0) c.lengths[r] = static_cast<std::int32_t>(count);
    std::int64_t const j0 = static_cast<std::int64_t>(blockIdx.x) * kMoveEntries;
    if (j0 >= count) continue;
    int const m = static_cast<int>(count - j0 < kMoveEntries ? count - j0 : kMoveEntries);
    __syncthreads();  // the previous row's tile is no longer read
    if (t < m) {
      std::int32_t const s = kept[r * cap + j0 + t];
      src[t] = (s == j0 + t || s < 0 || s >= cap) ? -1 : s;  // out-of-range sources are skipped, not followed
    }
    __syncthreads();
    std::int64_t const b = r / heads, h = r % heads;
    std::int64_t const first = r * cap + j0;  // staging index of the tile's first slot
    int const k_units = k_runs ? kVecs : D, v_units = v_runs ? kVecs : D;
    for (int w = t; w < m * k_units; w += kMoveThreads) {
      int const e = w / k_units;
      if (src[e] < 0) continue;
      move_unit<D, kToStage>(c.keys, c.key_layout, k_runs, b, h, kToStage ? src[e] : j0 + e,
                             k_stage + (first + e) * D, w - e * k_units);
    }
    for (int w = t; w < m * v_units; w += kMoveThreads) {
      int const e = w / v_units;
      if (src[e] < 0) continue;
      move_unit<D, kToStage>(c.values, c.value_layout, v_runs, b, h, kToStage ? src[e] : j0 + e,
                             v_stage + (first + e) * D, w - e * v_units);
    }
    if (p_stage != nullptr && t < m && src[t] >= 0) {
      if (kToStage) p_stage[first + t] = c.positions[r * cap + src[t]];
      else c.positions[first + t] = p_stage[first + t];
    }
  }
}

/// Scratch bytes of `compact`: a staging copy of K and V (and positions when present) per slot.
template <class T, class L>
[[nodiscard]] std::size_t compact_workspace_bytes(KVCacheView<T, L> const& cache) {
  auto const slots = static_cast<std::size_t>(cache.extents.batch) * static_cast<std::size_t>(cache.extents.kv_heads) *
                     static_cast<std::size_t>(cache.extents.capacity);
  auto const elems = slots * static_cast<std::size_t>(cache.extents.head_dim);
  return 2 * Workspace::bytes_for<T>(elems) + (cache.positions ? Workspace::bytes_for<std::int32_t>(slots) : 0);
}

/// Launches the compaction of every row on `dev.stream` (nothing happens once `status` records a
/// failure). Row r keeps slots kept[r·capacity + 0..counts[r]) (ascending) at its front and its
/// length becomes counts[r].
/// \param cache  device pointers (keys, values, lengths, positions, block tables)
/// \param kept   [batch · kv_heads, capacity] device memory, ascending per row
/// \param counts [batch · kv_heads] device memory
/// \param status device memory
template <class T, class L>
void compact(cuda const& dev, KVCacheView<T, L> const& cache, std::int32_t const* kept, std::int32_t const* counts,
             Workspace& ws, DeviceStatus const* status) {
  validate_extents(cache.extents);
  using S = device_storage_t<T>;
  std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads, cap = cache.extents.capacity;
  auto const slots = static_cast<std::size_t>(rows) * static_cast<std::size_t>(cap);
  auto const elems = slots * static_cast<std::size_t>(cache.extents.head_dim);
  S* k_stage = ws.take<S>(elems);                                                // [rows, capacity, head_dim]
  S* v_stage = ws.take<S>(elems);                                                // [rows, capacity, head_dim]
  std::int32_t* p_stage = cache.positions ? ws.take<std::int32_t>(slots) : nullptr;  // [rows, capacity]
  bool const k_runs = detail::unit_dim_stride(cache.key_layout), v_runs = detail::unit_dim_stride(cache.value_layout);
  dim3 const grid(ceil_div(cap, kMoveEntries), rows < 65535 ? static_cast<unsigned int>(rows) : 65535u);
  auto const dc = device_cache(cache);
  dispatch_head_dim(cache.extents.head_dim, [&](auto dim) {
    constexpr int D = decltype(dim)::value;
    compact_move_kernel<D, true><<<grid, kMoveThreads, 0, dev.stream>>>(dc, kept, counts, k_stage, v_stage, p_stage,
                                                                        k_runs, v_runs, status);
    check_launch("compact_move_kernel (to the staging copy)");
    compact_move_kernel<D, false><<<grid, kMoveThreads, 0, dev.stream>>>(dc, kept, counts, k_stage, v_stage, p_stage,
                                                                         k_runs, v_runs, status);
    check_launch("compact_move_kernel (back to the cache)");
  });
}

}  // namespace kvcompress::cuda_impl
