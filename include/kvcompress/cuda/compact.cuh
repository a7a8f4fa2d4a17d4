#pragma once
/// \file
/// \brief In-place compaction on the device: in every (batch, kv head) row, slot j takes the K, V
/// (and original position) of slot kept[j] for j < counts[r], then lengths[r] = counts[r] — what
/// `cpu_impl::compact_row` does row by row.
///
/// Why launches through a staging copy: the CPU moves entries one after the other, which is safe
/// because kept is ascending (kept[j] ≥ j, so a source is read before anything overwrites it). Done in
/// parallel, slot j may be overwritten while an earlier j' (kept[j'] = j) still has to read it. So the
/// slots are moved in waves of W destination slots per row, in order: a first kernel copies the wave's
/// sources into the workspace, a second, ordered after it on the stream, writes them to their slots.
/// Wave w writes slots [wW, (w+1)W): the sources of earlier waves there were read by earlier launches,
/// its own were read by its first kernel, and every later wave's sources lie at or beyond (w+1)W
/// (kept[j] ≥ j) — so no slot is written before every read of it has finished, whatever the grid's
/// schedule, with full parallelism over rows and slots inside a wave. Entries with kept[j] = j stay
/// where they are and cost nothing; the rest cost two reads and two writes (twice the gather roofline).
/// W is chosen so that the staging copy stays near kStageBytes (at least kMoveEntries slots): a fixed
/// scratch instead of one the size of the layer, for a few more launches on long rows.
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
/// Target size of the staging copy (K and V of one wave of every row).
inline constexpr std::size_t kStageBytes = std::size_t{64} << 20;

/// Destination slots per row and wave: `requested` rounded up to a multiple of kMoveEntries if it is
/// positive (tests use it to force many waves), else as many as fit kStageBytes; at least
/// kMoveEntries, at most the capacity rounded up.
template <class T, class L>
[[nodiscard]] std::int64_t compact_wave_slots(KVCacheView<T, L> const& cache, std::int64_t requested = 0) {
  std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads;
  std::int64_t const per_slot = rows * (2 * cache.extents.head_dim * static_cast<std::int64_t>(sizeof(T)) +
                                        (cache.positions ? 4 : 0));
  std::int64_t w = requested > 0 ? (requested + kMoveEntries - 1) / kMoveEntries * kMoveEntries
                                 : static_cast<std::int64_t>(kStageBytes) / per_slot / kMoveEntries * kMoveEntries;
  std::int64_t const whole = (cache.extents.capacity + kMoveEntries - 1) / kMoveEntries * kMoveEntries;
  if (w < kMoveEntries) w = kMoveEntries;
  return w < whole ? w : whole;
}

/// Staging index of destination slot j of row r in the wave [wave_first, wave_first + wave_slots):
/// the staging copy is [rows, wave_slots]. Host and device, so that the CPU suite checks the
/// arithmetic (`tests/cuda/host`).
__host__ __device__ __forceinline__ std::int64_t stage_index(std::int64_t r, std::int64_t wave_first,
                                                             std::int64_t wave_slots, std::int64_t j) {
  return r * wave_slots + (j - wave_first);
}

/// The slot that destination slot j of row r takes its entry from, or -1 when nothing moves: the
/// entry is already there (kept[j] = j), or kept[j] names no slot (skipped, never followed).
/// \param kept [rows, capacity]
__host__ __device__ __forceinline__ std::int32_t move_source(std::int32_t const* kept, std::int64_t r,
                                                             std::int64_t capacity, std::int64_t j) {
  std::int32_t const s = kept[r * capacity + j];
  return (s == j || s < 0 || s >= capacity) ? -1 : s;
}

/// The positions' half of a wave for destination slot j of row r, whose source is `src` (≥ 0):
/// kToStage: p_stage[stage_index] ← positions[r, src]; else positions[r, j] ← p_stage[stage_index].
/// \param positions [rows, capacity] \param p_stage [rows, wave_slots]
template <bool kToStage>
__host__ __device__ __forceinline__ void move_position(std::int32_t* positions, std::int32_t* p_stage, std::int64_t r,
                                                       std::int64_t capacity, std::int64_t wave_first,
                                                       std::int64_t wave_slots, std::int64_t j, std::int32_t src) {
  std::int64_t const staged = stage_index(r, wave_first, wave_slots, j);
  if (kToStage) p_stage[staged] = positions[r * capacity + src];
  else positions[r * capacity + j] = p_stage[staged];
}

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

/// One wave, destination slots [wave_first, wave_first + wave_slots) of every row. kToStage:
/// stage[row, j − wave_first] ← slot kept[j]; else slot j ← stage[row, j − wave_first] (and, in the
/// first wave, lengths ← counts). Grid: x over slot tiles of kMoveEntries, y over rows (strided).
/// \param kept    [rows, capacity] ascending kept slots
/// \param counts  [rows]
/// \param k_stage [rows, wave_slots, D]
/// \param v_stage [rows, wave_slots, D]
/// \param p_stage [rows, wave_slots], or null when the cache has no positions
template <int D, bool kToStage, class T, class L>
__global__ void __launch_bounds__(kMoveThreads)
    compact_move_kernel(DeviceCache<T, L> c, std::int32_t const* kept, std::int32_t const* counts,
                        std::int64_t wave_first, std::int64_t wave_slots, device_storage_t<T>* k_stage,
                        device_storage_t<T>* v_stage, std::int32_t* p_stage, bool k_runs, bool v_runs,
                        DeviceStatus const* status) {
  using S = device_storage_t<T>;
  static_assert((D * sizeof(S)) % 16 == 0, "an entry must be whole 16-byte vectors in the staging copy");
  constexpr int kVecs = static_cast<int>(D * sizeof(S) / 16);
  __shared__ std::int32_t src[kMoveEntries];  // the source slot of each slot of the tile, -1: not moved
  if (failed(status)) return;
  std::int64_t const heads = c.extents.kv_heads, cap = c.extents.capacity, rows = c.extents.batch * heads;
  int const t = static_cast<int>(threadIdx.x);
  for (std::int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    std::int64_t const count = counts[r] < 0 ? 0 : (counts[r] > cap ? cap : counts[r]);
    if (!kToStage && wave_first == 0 && blockIdx.x == 0 && t == 0) c.lengths[r] = static_cast<std::int32_t>(count);
    std::int64_t const j0 = wave_first + static_cast<std::int64_t>(blockIdx.x) * kMoveEntries;
    std::int64_t const end = count < wave_first + wave_slots ? count : wave_first + wave_slots;
    if (j0 >= end) continue;
    int const m = static_cast<int>(end - j0 < kMoveEntries ? end - j0 : kMoveEntries);
    __syncthreads();  // the previous row's tile is no longer read
    if (t < m) src[t] = move_source(kept, r, cap, j0 + t);
    __syncthreads();
    std::int64_t const b = r / heads, h = r % heads;
    std::int64_t const first = stage_index(r, wave_first, wave_slots, j0);  // staging index of the tile's first slot
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
    if (p_stage != nullptr && t < m && src[t] >= 0)
      move_position<kToStage>(c.positions, p_stage, r, cap, wave_first, wave_slots, j0 + t, src[t]);
  }
}

/// Scratch bytes of `compact`: a staging copy of K and V (and positions when present) for one wave.
template <class T, class L>
[[nodiscard]] std::size_t compact_workspace_bytes(KVCacheView<T, L> const& cache, std::int64_t wave_slots = 0) {
  auto const slots = static_cast<std::size_t>(cache.extents.batch) * static_cast<std::size_t>(cache.extents.kv_heads) *
                     static_cast<std::size_t>(compact_wave_slots(cache, wave_slots));
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
/// \param wave_slots destination slots per wave (0: sized by kStageBytes; see compact_wave_slots)
template <class T, class L>
void compact(cuda const& dev, KVCacheView<T, L> const& cache, std::int32_t const* kept, std::int32_t const* counts,
             Workspace& ws, DeviceStatus const* status, std::int64_t wave_slots = 0) {
  validate_extents(cache.extents);
  using S = device_storage_t<T>;
  std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads, cap = cache.extents.capacity;
  std::int64_t const wave = compact_wave_slots(cache, wave_slots);
  auto const slots = static_cast<std::size_t>(rows) * static_cast<std::size_t>(wave);
  auto const elems = slots * static_cast<std::size_t>(cache.extents.head_dim);
  S* k_stage = ws.take<S>(elems);                                                // [rows, wave, head_dim]
  S* v_stage = ws.take<S>(elems);                                                // [rows, wave, head_dim]
  std::int32_t* p_stage = cache.positions ? ws.take<std::int32_t>(slots) : nullptr;  // [rows, wave]
  bool const k_runs = detail::unit_dim_stride(cache.key_layout), v_runs = detail::unit_dim_stride(cache.value_layout);
  dim3 const grid(ceil_div(wave, kMoveEntries), row_grid(rows));
  auto const dc = device_cache(cache);
  dispatch_head_dim(cache.extents.head_dim, [&](auto dim) {
    constexpr int D = decltype(dim)::value;
    for (std::int64_t first = 0; first < cap; first += wave) {
      launch("compact_move_kernel (to the staging copy)", compact_move_kernel<D, true, T, L>, grid, kMoveThreads, 0,
             dev.stream, dc, kept, counts, first, wave, k_stage, v_stage, p_stage, k_runs, v_runs, status);
      launch("compact_move_kernel (back to the cache)", compact_move_kernel<D, false, T, L>, grid, kMoveThreads, 0,
             dev.stream, dc, kept, counts, first, wave, k_stage, v_stage, p_stage, k_runs, v_runs, status);
    }
  });
}

}  // namespace kvcompress::cuda_impl
