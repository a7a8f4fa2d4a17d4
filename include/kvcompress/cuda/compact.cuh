#pragma once
/// \file
/// \brief In-place compaction on the device: in every (batch, kv head) row, slot j takes the K, V
/// (and original position) of slot kept[j] for j < counts[r], then lengths[r] = counts[r] — what
/// `cpu_impl::compact_row` does row by row — in one launch that reads and writes each moved entry
/// once (the gather's roofline), with no staging copy in global memory.
///
/// The scheme. A row's destination slots are cut into tiles of E slots (`gather_tile_slots`). CTAs
/// take tiles by ticket (one atomic counter; tickets run row by row, tile by tile, so a row's tiles
/// are taken in ascending order). A CTA reads its tile's sources into shared memory, publishes
/// "read" in the tile's flag, waits until every earlier tile of its row has published "read", and
/// only then writes its slots.
///
/// Why no read ever sees an overwritten slot. Kept slots are ascending, so kept[j] ≥ j. Tile t writes
/// slots [tE, (t+1)E). A destination j' reads slot s = kept[j'] ≥ j', so a slot s of tile t is read
/// only by destinations j' ≤ s, i.e. by tile t itself or by tiles t' < t. Tile t's own reads finish
/// (its __syncthreads) before its writes start; every earlier tile's reads finish before its flag
/// says "read" (its reads are in shared memory, its threads have passed a barrier, and a device-wide
/// fence orders them before the flag's store), and tile t writes only after it has seen every such
/// flag (followed by a fence). Conversely the slots tile t reads, kept[j] ≥ j ≥ tE, lie in tiles
/// u ≥ t, which write only after tile t's "read". Hence every read returns the slot's value from
/// before the call, as in the CPU's sequential pass, whatever the schedule.
///
/// Why it cannot deadlock. A CTA waits only for tiles of smaller tickets, and publishing "read" never
/// waits. A smaller ticket was taken earlier by a CTA that is running (a CTA takes its next ticket
/// only after finishing its current tile), so each awaited flag is set in bounded time — no
/// assumption on the order in which the hardware schedules CTAs (blockIdx order is not guaranteed).
///
/// The wait is a decoupled look-back: a flag is 0 (not read), kRead, or kReadThrough (this tile and
/// every earlier one of the row read). Warp 0 inspects the 32 previous flags at once, waits until none
/// is 0, and stops at the first kReadThrough (or the row's start); then it marks its own tile
/// kReadThrough. Most waits end one window back.
///
/// The flags [rows, tiles per row] and the ticket counter sit in the workspace and are zeroed by one
/// cudaMemsetAsync: two stream operations whatever the capacity (`gather_plan`). Entries with
/// kept[j] = j do not move. Copies move 16-byte vectors where an entry's channels are contiguous
/// (`unit_dim_stride`: always when paged, at run time when strided) and the address allows it.
/// `lengths` are written by the CTA of each row's first tile; nothing in the launch reads them.

#include <cstddef>
#include <cstdint>
#include <limits>

#include "kvcompress/cuda/runtime.cuh"
#include "kvcompress/detail/layout_traits.hpp"

namespace kvcompress::cuda_impl {

inline constexpr int kMoveThreads = 256;
/// Most destination slots per tile, and the shared memory a tile's K and V may take.
inline constexpr int kMaxGatherTile = 64;
inline constexpr std::int64_t kGatherSmemBytes = 32 * 1024;
/// CTAs of one launch at most; each loops over tickets, so this bounds nothing but the grid.
inline constexpr std::int64_t kMaxGatherCtas = 4096;

/// The look-back flag values of a tile.
inline constexpr unsigned int kFlagRead = 1u;
inline constexpr unsigned int kFlagReadThrough = 2u;

/// Destination slots per tile for entries of `head_dim` elements of `elem_bytes`: the largest power
/// of two ≤ kMaxGatherTile whose K and V fit kGatherSmemBytes (64 for bf16 at head_dim 128; 16 for
/// float at 256).
[[nodiscard]] constexpr int gather_tile_slots(std::int64_t head_dim, std::int64_t elem_bytes) noexcept {
  int t = kMaxGatherTile;
  while (t > 1 && 2 * t * head_dim * elem_bytes > kGatherSmemBytes) t /= 2;
  return t;
}

/// Where one compaction launch stands, from the extents alone (host arithmetic; the CPU suite checks
/// that the launch count is constant).
struct GatherPlan {
  std::int64_t tile_slots;     // E
  std::int64_t tiles_per_row;  // ⌈capacity / E⌉
  std::int64_t tickets;        // rows · tiles_per_row
  unsigned int ctas;           // grid size: min(tickets, kMaxGatherCtas), at least 1
  std::size_t flag_words;      // unsigned ints zeroed per call: the ticket counter, then the flags
  int launches;                // kernel launches (1)
  int memsets;                 // cudaMemsetAsync calls (1)
};

/// The plan for `cache`'s extents and storage type. `max_ctas` > 0 caps the grid (tests use 1 to run
/// every tile through one CTA). Throws if the tickets (and the counter's overshoot by the grid) would
/// not fit the 32-bit counter.
[[nodiscard]] inline GatherPlan gather_plan(CacheExtents const& e, std::int64_t elem_bytes, std::int64_t max_ctas = 0) {
  GatherPlan p{};
  p.tile_slots = gather_tile_slots(e.head_dim, elem_bytes);
  p.tiles_per_row = (e.capacity + p.tile_slots - 1) / p.tile_slots;
  p.tickets = e.batch * e.kv_heads * p.tiles_per_row;
  std::int64_t const cap = max_ctas > 0 && max_ctas < kMaxGatherCtas ? max_ctas : kMaxGatherCtas;
  std::int64_t const ctas = p.tickets < cap ? p.tickets : cap;
  p.ctas = static_cast<unsigned int>(ctas < 1 ? 1 : ctas);
  KVC_CHECK(p.tickets + p.ctas <= std::numeric_limits<unsigned int>::max(),
            "compaction: " << p.tickets << " destination tiles exceed the 32-bit ticket counter");
  p.flag_words = detail::size_product(p.tickets + 1, 1);
  p.launches = 1;
  p.memsets = 1;
  return p;
}

/// Row and tile of ticket `ticket`: tickets run row by row, each row's tiles in ascending order.
struct GatherTile {
  std::int64_t row;
  std::int64_t tile;
};
__host__ __device__ __forceinline__ GatherTile gather_tile_of(std::int64_t ticket, std::int64_t tiles_per_row) {
  return {ticket / tiles_per_row, ticket % tiles_per_row};
}

/// The slot that destination slot j of row r takes its entry from, or -1 when nothing moves: the
/// entry is already there (kept[j] = j), or kept[j] names no slot (skipped, never followed).
/// \param kept [rows, capacity]
__host__ __device__ __forceinline__ std::int32_t move_source(std::int32_t const* kept, std::int64_t r,
                                                             std::int64_t capacity, std::int64_t j) {
  std::int32_t const s = kept[r * capacity + j];
  return (s == j || s < 0 || s >= capacity) ? -1 : s;
}

/// The destination slots of tile `tile` that move: [tile·E, tile·E + m), m ≤ 0 when the tile lies at
/// or past the row's count (then it reads, publishes and writes nothing: no tile with work waits on
/// it, since tiles with work are exactly those below ⌈count / E⌉).
__host__ __device__ __forceinline__ std::int64_t gather_tile_count(std::int64_t tile, std::int64_t tile_slots,
                                                                   std::int64_t count) {
  std::int64_t const m = count - tile * tile_slots;
  return m < tile_slots ? m : tile_slots;
}

/// Moves unit `u` of one entry between the cache (slot `slot` of row (b, h)) and its copy in shared
/// memory: a 16-byte vector of channels when `runs` (channels contiguous), else channel u.
/// \param stage [D] the entry's copy, 16-byte aligned
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

/// Moves one tile's K (or V) between the cache and shared memory, every thread a share of the units.
template <int D, bool kToStage, class S, class L>
__device__ __forceinline__ void move_tile(S* cache, L const& layout, bool runs, std::int64_t b, std::int64_t h,
                                          std::int64_t j0, std::int32_t const* src, int m, S* stage) {
  constexpr int kVecs = static_cast<int>(D * sizeof(S) / 16);
  int const units = runs ? kVecs : D;
  for (int w = static_cast<int>(threadIdx.x); w < m * units; w += kMoveThreads) {
    int const e = w / units;
    if (src[e] < 0) continue;
    move_unit<D, kToStage>(cache, layout, runs, b, h, kToStage ? src[e] : j0 + e, stage + e * D, w - e * units);
  }
}

/// Warp 0 of the CTA of tile `tile`: publishes kFlagRead, waits until every earlier tile of the row
/// has read (the look-back above), then publishes kFlagReadThrough. \param flags [tiles_per_row]
__device__ __forceinline__ void gather_lookback(unsigned int* flags, std::int64_t tile) {
  int const lane = static_cast<int>(threadIdx.x & 31);
  if (lane == 0) {
    __threadfence();  // the CTA's reads (behind the caller's barrier) before the flag
    atomicExch(flags + tile, kFlagRead);
  }
  for (std::int64_t last = tile - 1; last >= 0; last -= 32) {
    std::int64_t const i = last - lane;
    unsigned int f = kFlagReadThrough;  // before the row's start: nothing to wait for
    if (i >= 0) {
      do {
        f = *static_cast<unsigned int const volatile*>(flags + i);
      } while (f == 0u);
    }
    if (__ballot_sync(0xffffffffu, f == kFlagReadThrough) != 0u) break;
  }
  __threadfence();  // every flag seen before the CTA's writes
  if (lane == 0) atomicExch(flags + tile, kFlagReadThrough);
}

/// One launch compacts every row (see the file's comment). Grid: `GatherPlan::ctas` CTAs that loop
/// over tickets. Shared memory: the tile's K and V (2·E·D elements) and its positions.
/// \param kept    [rows, capacity] ascending kept slots
/// \param counts  [rows]
/// \param flags   [1 + tickets] zeroed: the ticket counter, then the tiles' flags [rows, tiles_per_row]
template <int D, class T, class L>
__global__ void __launch_bounds__(kMoveThreads)
    compact_gather_kernel(DeviceCache<T, L> c, std::int32_t const* kept, std::int32_t const* counts,
                          std::int64_t tiles_per_row, std::int64_t tickets, unsigned int* flags, bool k_runs,
                          bool v_runs, DeviceStatus const* status) {
  using S = device_storage_t<T>;
  static_assert((D * sizeof(S)) % 16 == 0, "an entry must be whole 16-byte vectors in shared memory");
  constexpr int E = gather_tile_slots(D, sizeof(S));
  __shared__ alignas(16) S k_tile[E * D];  // [E, D]
  __shared__ alignas(16) S v_tile[E * D];  // [E, D]
  __shared__ std::int32_t src[E];          // the source slot of each slot of the tile, -1: not moved
  __shared__ std::int32_t pos[E];          // the sources' positions
  __shared__ unsigned int ticket_cell;
  if (failed(status)) return;
  std::int64_t const heads = c.extents.kv_heads, cap = c.extents.capacity;
  int const t = static_cast<int>(threadIdx.x);
  for (;;) {
    if (t == 0) ticket_cell = atomicAdd(flags, 1u);
    __syncthreads();
    std::int64_t const ticket = ticket_cell;
    if (ticket >= tickets) return;
    GatherTile const g = gather_tile_of(ticket, tiles_per_row);
    std::int64_t const count = counts[g.row] < 0 ? 0 : (counts[g.row] > cap ? cap : counts[g.row]);
    if (g.tile == 0 && t == 0) c.lengths[g.row] = static_cast<std::int32_t>(count);
    std::int64_t const m = gather_tile_count(g.tile, E, count);
    if (m > 0) {
      std::int64_t const j0 = g.tile * E, b = g.row / heads, h = g.row % heads;
      int const mi = static_cast<int>(m);
      if (t < mi) src[t] = move_source(kept, g.row, cap, j0 + t);
      __syncthreads();
      move_tile<D, true>(c.keys, c.key_layout, k_runs, b, h, j0, src, mi, k_tile);
      move_tile<D, true>(c.values, c.value_layout, v_runs, b, h, j0, src, mi, v_tile);
      if (c.positions != nullptr && t < mi && src[t] >= 0) pos[t] = c.positions[g.row * cap + src[t]];
      __syncthreads();  // every read of the tile is done
      if (t < 32) gather_lookback(flags + 1 + g.row * tiles_per_row, g.tile);
      __syncthreads();  // every earlier tile of the row has read: the slots may be written
      move_tile<D, false>(c.keys, c.key_layout, k_runs, b, h, j0, src, mi, k_tile);
      move_tile<D, false>(c.values, c.value_layout, v_runs, b, h, j0, src, mi, v_tile);
      if (c.positions != nullptr && t < mi && src[t] >= 0) c.positions[g.row * cap + j0 + t] = pos[t];
    }
    __syncthreads();  // the next ticket reuses the shared memory
  }
}

/// Scratch bytes of `compact`: the ticket counter and one flag per destination tile.
template <class T, class L>
[[nodiscard]] std::size_t compact_workspace_bytes(KVCacheView<T, L> const& cache) {
  return Workspace::bytes_for<unsigned int>(gather_plan(cache.extents, sizeof(T)).flag_words);
}

/// Launches the compaction of every row on `dev.stream`: one memset and one kernel (nothing happens
/// once `status` records a failure). Row r keeps slots kept[r·capacity + 0..counts[r]) (ascending) at
/// its front and its length becomes counts[r].
/// \param cache  device pointers (keys, values, lengths, positions, block tables)
/// \param kept   [batch · kv_heads, capacity] device memory, ascending per row
/// \param counts [batch · kv_heads] device memory
/// \param status device memory
/// \param max_ctas caps the grid (0: `kMaxGatherCtas`); tests use small values
template <class T, class L>
void compact(cuda const& dev, KVCacheView<T, L> const& cache, std::int32_t const* kept, std::int32_t const* counts,
             Workspace& ws, DeviceStatus const* status, std::int64_t max_ctas = 0) {
  validate_extents(cache.extents);
  GatherPlan const plan = gather_plan(cache.extents, sizeof(T), max_ctas);
  unsigned int* flags = ws.take<unsigned int>(plan.flag_words);  // [1 + rows · tiles_per_row]
  KVC_CUDA_CHECK(cudaMemsetAsync(flags, 0, plan.flag_words * sizeof(unsigned int), dev.stream));
  bool const k_runs = detail::unit_dim_stride(cache.key_layout), v_runs = detail::unit_dim_stride(cache.value_layout);
  auto const dc = device_cache(cache);
  dispatch_head_dim(cache.extents.head_dim, [&](auto dim) {
    constexpr int D = decltype(dim)::value;
    launch("compact_gather_kernel", compact_gather_kernel<D, T, L>, dim3(plan.ctas), kMoveThreads, 0, dev.stream, dc,
           kept, counts, plan.tiles_per_row, plan.tickets, flags, k_runs, v_runs, status);
  });
}

}  // namespace kvcompress::cuda_impl
