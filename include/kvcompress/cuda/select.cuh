#pragma once
/// \file
/// \brief Per-row top-k on the device: the indices of each row's k highest scores, in ascending slot
/// order, exactly those of `cpu_impl::select_topk_row` (higher score first, any number beats NaN,
/// -0 ties +0, ties go to the lower slot).
///
/// Method: radix select, as in AIR Top-K (Zhang et al., SC'23) and PyTorch's `radixSelect`: scores
/// become order-preserving uint32 keys; three histogram passes over 11, 11 and 10 bits find the key
/// T of the k-th ranked entry and how many entries equal to T are kept (the lowest-slot ones); one
/// order-preserving compaction pass (block-wide prefix sums) then writes the kept slots in order,
/// so no sort of the output is needed.
///
/// Choice and cost: one CTA of 1024 threads per row, the whole select in one launch and in shared
/// memory (no workspace, no atomics across CTAs). Each pass streams the row from L2 (scores are
/// L2-resident after scoring): 8 rows of 32k are 4 reads of 128 KiB per CTA, ≈1.2 µs each at the
/// ≈110 GB/s one SM draws from L2, plus three 2048-bin block scans and four tile scans: ≈6–8 µs per
/// layer on an H100, inside the 20 µs target. The cost grows linearly with the row: a 256k row takes
/// ≈40 µs on its one SM, so long rows with few of them per layer would gain from several CTAs per row
/// (a grid-wide histogram with atomics) — not done yet. A pass stops early once the remaining
/// entries of the selected bin are all kept, which saves the later passes on spread-out scores.

#include <cub/block/block_load.cuh>
#include <cub/block/block_scan.cuh>

#include <cstddef>
#include <cstdint>
#include <limits>

#include "kvcompress/cuda/runtime.cuh"

namespace kvcompress::cuda_impl {

/// Threads of a radix-select CTA; the digit scan gives each thread two of the 2048 bins.
inline constexpr int kSelectThreads = 1024;
inline constexpr int kRadixBins = 2048;

// The selection order is `rank_key` (runtime.cuh): larger key = ranks before; NaN ranks last.

/// Shared memory of `block_radix_select`.
struct RadixSelectStorage {
  typename cub::BlockScan<std::uint32_t, kSelectThreads>::TempStorage scan;
  std::uint32_t hist[kRadixBins];
  std::uint32_t digit, above, in_bin;
};

/// Where the k-th ranked candidate lies: candidates whose `key & mask` exceeds `key` rank before it,
/// and of those whose `key & mask` equals `key` (`matching` of them) the first `need` in rank order
/// (lowest slot first) complete the k. With `stop_early` the mask may leave low bits unresolved
/// (then need == matching); without it the mask is all ones and `key` is the k-th key itself.
struct RadixThreshold {
  std::uint32_t key;
  std::uint32_t mask;
  std::uint32_t need;
  std::uint32_t matching;
};

/// Radix select over a CTA's candidates: `visit(f)` must call `f(key, weight)` for every candidate
/// that this thread owns (weight = how many candidates of that key the call stands for, so a caller
/// can add a known count once). Requires blockDim.x == kSelectThreads and 1 ≤ k ≤ Σ weights; every
/// thread of the CTA calls it and gets the same result.
template <class Visit>
__device__ RadixThreshold block_radix_select(Visit const& visit, std::uint32_t k, bool stop_early,
                                             RadixSelectStorage& sm) {
  std::uint32_t prefix = 0, mask = 0, need = k, matching = 0;
  for (int pass = 0; pass < 3; ++pass) {
    int const shift = pass == 0 ? 21 : (pass == 1 ? 10 : 0);
    std::uint32_t const digit_mask = pass == 2 ? 0x3ffu : 0x7ffu;
    for (int b = static_cast<int>(threadIdx.x); b < kRadixBins; b += kSelectThreads) sm.hist[b] = 0;
    if (threadIdx.x == 0) sm.digit = sm.above = sm.in_bin = 0;  // in bounds even if k was out of range
    __syncthreads();
    visit([&](std::uint32_t key, std::uint32_t weight) {
      if ((key & mask) == prefix) atomicAdd(&sm.hist[(key >> shift) & digit_mask], weight);
    });
    __syncthreads();
    // Bins in descending order: thread t holds bins 2047−2t and 2046−2t, so the exclusive prefix sum
    // is the number of candidates in higher bins.
    int const hi = kRadixBins - 1 - 2 * static_cast<int>(threadIdx.x);
    std::uint32_t const a = sm.hist[hi], b = sm.hist[hi - 1];
    std::uint32_t before = 0;
    cub::BlockScan<std::uint32_t, kSelectThreads>(sm.scan).ExclusiveSum(a + b, before);
    if (before < need && before + a >= need) {
      sm.digit = static_cast<std::uint32_t>(hi);
      sm.above = before;
      sm.in_bin = a;
    } else if (before + a < need && before + a + b >= need) {
      sm.digit = static_cast<std::uint32_t>(hi - 1);
      sm.above = before + a;
      sm.in_bin = b;
    }
    __syncthreads();
    prefix |= sm.digit << shift;
    mask |= digit_mask << shift;
    need -= sm.above;
    matching = sm.in_bin;
    __syncthreads();  // the next pass resets sm.digit, sm.above and sm.in_bin
    if (stop_early && matching == need) break;
  }
  return {prefix, mask, need, matching};
}

/// Entries per thread and per tile of the compaction pass.
inline constexpr int kCompactItems = 8;
inline constexpr int kCompactTile = kSelectThreads * kCompactItems;

/// \param scores  [rows, capacity]
/// \param lengths [rows]
/// \param counts  [rows]
/// \param kept    [rows, capacity] out: kept[r·capacity + 0..counts[r]) ascending
template <class = void>
__global__ void __launch_bounds__(kSelectThreads)
    select_topk_kernel(float const* scores, std::int64_t rows, std::int64_t capacity, std::int32_t const* lengths,
                       std::int32_t const* counts, std::int32_t* kept, DeviceStatus const* status) {
  using Load = cub::BlockLoad<float, kSelectThreads, kCompactItems, cub::BLOCK_LOAD_WARP_TRANSPOSE>;
  using Scan = cub::BlockScan<std::uint32_t, kSelectThreads>;
  __shared__ union {
    RadixSelectStorage radix;
    struct {
      typename Load::TempStorage load;
      typename Scan::TempStorage scan;
    } compact;
  } sm;
  if (failed(status)) return;
  for (std::int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    // Clamped so that bad lengths or counts (a failed status the caller ignored) stay in bounds.
    std::int64_t const n = lengths[r] < 0 ? 0 : (lengths[r] > capacity ? capacity : lengths[r]);
    std::int64_t const k = counts[r] < 0 ? 0 : (counts[r] > n ? n : counts[r]);
    float const* row = scores + r * capacity;
    std::int32_t* out = kept + r * capacity;
    if (k == 0) continue;
    if (k == n) {
      for (std::int64_t i = threadIdx.x; i < n; i += kSelectThreads) out[i] = static_cast<std::int32_t>(i);
      continue;
    }
    auto const visit = [&](auto&& f) {
      for (std::int64_t i = threadIdx.x; i < n; i += kSelectThreads) f(rank_key(row[i]), 1u);
    };
    RadixThreshold const t = block_radix_select(visit, static_cast<std::uint32_t>(k), true, sm.radix);
    __syncthreads();  // sm.radix becomes sm.compact

    // Order-preserving compaction, tile by tile: an entry above the threshold is kept, an entry equal
    // to it is kept while fewer than `need` equal ones precede it. One block scan per tile counts both
    // (above in the low 16 bits, equal in the high 16; a tile has 8192 entries).
    std::int64_t written = 0, equal_seen = 0;
    for (std::int64_t base = 0; base < n && written < k; base += kCompactTile) {
      int const valid = static_cast<int>(n - base < kCompactTile ? n - base : kCompactTile);
      float x[kCompactItems];
      Load(sm.compact.load).Load(row + base, x, valid, 0.0f);
      std::uint32_t above_flags = 0, equal_flags = 0;
      for (int i = 0; i < kCompactItems; ++i) {
        if (static_cast<int>(threadIdx.x) * kCompactItems + i >= valid) continue;
        std::uint32_t const key = rank_key(x[i]) & t.mask;
        above_flags |= static_cast<std::uint32_t>(key > t.key) << i;
        equal_flags |= static_cast<std::uint32_t>(key == t.key) << i;
      }
      std::uint32_t const packed = static_cast<std::uint32_t>(__popc(above_flags)) |
                                   (static_cast<std::uint32_t>(__popc(equal_flags)) << 16);
      std::uint32_t before = 0, total = 0;
      Scan(sm.compact.scan).ExclusiveSum(packed, before, total);
      std::int64_t const unmet = static_cast<std::int64_t>(t.need) - equal_seen;
      std::int64_t const left = unmet > 0 ? unmet : 0;  // equal entries still to keep
      std::int64_t above_before = before & 0xffffu, equal_before = before >> 16;
      for (int i = 0; i < kCompactItems; ++i) {
        std::int64_t const slot = base + static_cast<std::int64_t>(threadIdx.x) * kCompactItems + i;
        if ((above_flags >> i) & 1u) {
          std::int64_t const pos = written + above_before + (equal_before < left ? equal_before : left);
          if (pos < k) out[pos] = static_cast<std::int32_t>(slot);
          ++above_before;
        } else if ((equal_flags >> i) & 1u) {
          if (equal_before < left) {
            std::int64_t const pos = written + above_before + equal_before;
            if (pos < k) out[pos] = static_cast<std::int32_t>(slot);
          }
          ++equal_before;
        }
      }
      std::int64_t const equal_tile = total >> 16;
      written += (total & 0xffffu) + (equal_tile < left ? equal_tile : left);
      equal_seen += equal_tile;
      __syncthreads();  // the next tile reuses sm.compact
    }
    __syncthreads();  // the next row reuses sm.radix
  }
}

/// Scratch bytes of `select_topk`: none, the select lives in shared memory.
[[nodiscard]] inline std::size_t select_workspace_bytes(std::int64_t /*rows*/, std::int64_t /*capacity*/) {
  return 0;
}

/// Launches the per-row top-k on `dev.stream`. Row r keeps its counts[r] best of lengths[r] entries
/// (0 ≤ counts[r] ≤ lengths[r] ≤ capacity when status is OK; out-of-range values are clamped, never
/// followed out of bounds). Nothing happens on the device once `status` records a failure.
/// \param scores  [rows, capacity] device memory
/// \param lengths [rows] device memory
/// \param counts  [rows] device memory
/// \param kept    [rows, capacity] device memory, out: kept[r·capacity + 0..counts[r]) ascending slots
/// \param status  device memory
inline void select_topk(cuda const& dev, float const* scores, std::int64_t rows, std::int64_t capacity,
                        std::int32_t const* lengths, std::int32_t const* counts, std::int32_t* kept,
                        Workspace& /*ws*/, DeviceStatus const* status) {
  KVC_CHECK(rows >= 0, "select_topk: rows must not be negative, got " << rows);
  KVC_CHECK(capacity >= 0 && capacity <= std::numeric_limits<std::int32_t>::max(),
            "select_topk: capacity must be in [0, 2^31 - 1] (slots are int32), got " << capacity);
  if (rows == 0 || capacity == 0) return;
  launch("select_topk_kernel", select_topk_kernel<>, row_grid(rows), kSelectThreads, 0, dev.stream, scores, rows,
         capacity, lengths, counts, kept, status);
}

}  // namespace kvcompress::cuda_impl
