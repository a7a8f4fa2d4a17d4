#pragma once
/// \file
/// \brief AdaKV's selection across the kv heads of a sequence on the device, as per-row counts:
/// exactly `detail::adakv_counts` (include/kvcompress/press/adakv.hpp) with row_kept(n) =
/// `kept_count(n, ratio)`. Row r keeps s_r = its safeguard share of k_r = kept_count(n_r) (its own top
/// s_r entries, the "floor"); the budget Σ(k_r − s_r) of a sequence goes to its best entries outside
/// the floors, ranked by (score, then lower head, then lower slot) as `cpu_impl::RanksBefore` over the
/// ids h·capacity + i ranks them.
///
/// Two launches, both radix selects (`block_radix_select`, select.cuh):
///  1. one CTA per row finds the key T_r of its s_r-th entry and how many entries equal to T_r lie
///     outside the floor (the floor takes the lowest-slot ones);
///  2. one CTA per sequence selects the `take` = min(budget, pooled) best pooled entries (those below
///     T_r, plus the known number equal to T_r, added as one weighted histogram count), then counts per
///     row the pooled entries above the pooled threshold G and hands the entries equal to G to the
///     heads in order (lower head first), as the CPU's tie order does.
/// Cost: pass 2 runs one CTA per sequence over kv_heads rows (4 reads of them), so batch 1 at 8 × 32k
/// takes ≈20–40 µs; AdaKV is not on the 20 µs path of the plain top-k.

#include <cub/block/block_reduce.cuh>

#include <cstddef>
#include <cstdint>
#include <limits>

#include "kvcompress/cuda/runtime.cuh"
#include "kvcompress/cuda/select.cuh"
#include "kvcompress/press/adakv.hpp"
#include "kvcompress/press/scorer.hpp"

namespace kvcompress::cuda_impl {

/// `detail::adakv_safe_count` on the device (that one is host-only): int(n_kept·α), at least 1 when
/// α > 0 and the row keeps anything.
__device__ __forceinline__ std::int64_t adakv_safe_count(std::int64_t n_kept, double alpha) {
  auto const s = static_cast<std::int64_t>(static_cast<double>(n_kept) * alpha);
  if (alpha > 0.0) return n_kept > 0 ? (s > 1 ? s : 1) : 0;
  return s;
}

/// One row's floor, as pass 2 needs it. A key below `floor_key` is pooled, a key above is in the
/// floor, and `pool_equal` of the entries whose key equals `floor_key` are pooled. An empty floor is
/// floor_key = 0xffffffff (above every rank_key), a full one floor_key = 0 with pool_equal = 0.
struct AdaKVFloor {
  std::uint32_t floor_key;
  std::uint32_t pool_equal;
  std::int32_t length;  // n_r, clamped to [0, capacity]
  std::int32_t safe;    // s_r
  std::int32_t spare;   // k_r − s_r, this row's share of the pooled budget
};

/// \param scores  [batch · kv_heads, capacity]
/// \param lengths [batch · kv_heads]
/// \param floors  [batch · kv_heads] out
template <class = void>
__global__ void __launch_bounds__(kSelectThreads)
    adakv_floor_kernel(float const* scores, std::int64_t rows, std::int64_t capacity, std::int32_t const* lengths,
                       double ratio, double alpha, AdaKVFloor* floors, DeviceStatus const* status) {
  __shared__ RadixSelectStorage sm;
  if (failed(status)) return;
  for (std::int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    std::int64_t const n = lengths[r] < 0 ? 0 : (lengths[r] > capacity ? capacity : lengths[r]);
    std::int64_t const kc = kept_count(n, ratio);
    std::int64_t const k = kc < 0 ? 0 : (kc > n ? n : kc);
    std::int64_t const sc = adakv_safe_count(k, alpha);
    std::int64_t const s = sc < k ? sc : k;
    AdaKVFloor f{0xffffffffu, 0u, static_cast<std::int32_t>(n), static_cast<std::int32_t>(s),
                 static_cast<std::int32_t>(k - s)};
    if (s == n) f.floor_key = 0;  // the whole row is its floor (n = 0 included)
    else if (s > 0) {
      float const* row = scores + r * capacity;
      auto const visit = [&](auto&& g) {
        for (std::int64_t i = threadIdx.x; i < n; i += kSelectThreads) g(rank_key(row[i]), 1u);
      };
      RadixThreshold const t = block_radix_select(visit, static_cast<std::uint32_t>(s), false, sm);
      f.floor_key = t.key;
      f.pool_equal = t.matching - t.need;
    }
    if (threadIdx.x == 0) floors[r] = f;
  }
}

/// \param scores  [batch, kv_heads, capacity]
/// \param floors  [batch · kv_heads]
/// \param counts  [batch · kv_heads] out
template <class = void>
__global__ void __launch_bounds__(kSelectThreads)
    adakv_pool_kernel(float const* scores, std::int64_t batch, std::int64_t kv_heads, std::int64_t capacity,
                      AdaKVFloor const* floors, std::int32_t* counts, DeviceStatus const* status) {
  using Reduce = cub::BlockReduce<unsigned long long, kSelectThreads>;
  __shared__ union {
    RadixSelectStorage radix;
    typename Reduce::TempStorage reduce;
  } sm;
  if (failed(status)) return;
  for (std::int64_t b = blockIdx.x; b < batch; b += gridDim.x) {
    AdaKVFloor const* fl = floors + b * kv_heads;
    std::int64_t budget = 0, pooled = 0;
    for (std::int64_t h = 0; h < kv_heads; ++h) {
      budget += fl[h].spare;
      pooled += fl[h].length - fl[h].safe;
    }
    std::int64_t const take = budget < pooled ? budget : pooled;
    if (take <= 0) {
      for (std::int64_t h = threadIdx.x; h < kv_heads; h += kSelectThreads) counts[b * kv_heads + h] = fl[h].safe;
      continue;
    }
    // The pooled entries: per row, those below the floor key, and the floor's leftover equal ones
    // (one weighted count, added by thread 0).
    auto const visit = [&](auto&& g) {
      for (std::int64_t h = 0; h < kv_heads; ++h) {
        float const* row = scores + (b * kv_heads + h) * capacity;
        AdaKVFloor const f = fl[h];
        for (std::int64_t i = threadIdx.x; i < f.length; i += kSelectThreads) {
          std::uint32_t const key = rank_key(row[i]);
          if (key < f.floor_key) g(key, 1u);
        }
        if (threadIdx.x == 0 && f.pool_equal > 0) g(f.floor_key, f.pool_equal);
      }
    };
    RadixThreshold const t = block_radix_select(visit, static_cast<std::uint32_t>(take), false, sm.radix);
    __syncthreads();  // sm.radix becomes sm.reduce

    // Per row: pooled entries above G are taken; the `need` pooled entries equal to G go to the lower
    // heads first (and within a head to the lower slots, which only matters for which, not how many).
    std::int64_t equal_left = t.need;
    for (std::int64_t h = 0; h < kv_heads; ++h) {
      float const* row = scores + (b * kv_heads + h) * capacity;
      AdaKVFloor const f = fl[h];
      unsigned long long above = 0, equal = 0;
      for (std::int64_t i = threadIdx.x; i < f.length; i += kSelectThreads) {
        std::uint32_t const key = rank_key(row[i]);
        if (key >= f.floor_key) continue;
        above += key > t.key;
        equal += key == t.key;
      }
      unsigned long long const sum = Reduce(sm.reduce).Sum(above | (equal << 32));
      __syncthreads();  // sm.reduce is reused by the next head
      if (threadIdx.x == 0) {
        std::int64_t row_above = static_cast<std::int64_t>(sum & 0xffffffffull);
        std::int64_t row_equal = static_cast<std::int64_t>(sum >> 32);
        if (f.floor_key > t.key) row_above += f.pool_equal;
        else if (f.floor_key == t.key) row_equal += f.pool_equal;
        std::int64_t const granted = row_equal < equal_left ? row_equal : equal_left;
        equal_left -= granted;
        counts[b * kv_heads + h] = static_cast<std::int32_t>(f.safe + row_above + granted);
      }
    }
  }
}

/// Scratch bytes of `adakv_counts`.
[[nodiscard]] inline std::size_t adakv_counts_workspace_bytes(std::int64_t batch, std::int64_t kv_heads,
                                                              std::int64_t /*capacity*/) {
  return Workspace::bytes_for<AdaKVFloor>(static_cast<std::size_t>(batch * kv_heads));
}

/// Launches AdaKV's per-row counts on `dev.stream` (nothing happens once `status` records a failure).
/// \param scores  [batch, kv_heads, capacity] device memory, row r valid on [0, lengths[r])
/// \param lengths [batch · kv_heads] device memory
/// \param counts  [batch · kv_heads] device memory, out: entries each row keeps
/// \param status  device memory
inline void adakv_counts(cuda const& dev, float const* scores, std::int64_t batch, std::int64_t kv_heads,
                         std::int64_t capacity, std::int32_t const* lengths, double ratio, double alpha_safeguard,
                         std::int32_t* counts, Workspace& ws, DeviceStatus const* status) {
  detail::check_alpha_safeguard(alpha_safeguard);
  KVC_CHECK(batch >= 0 && kv_heads >= 0, "adakv_counts: batch and kv_heads must not be negative, got batch = "
                                             << batch << ", kv_heads = " << kv_heads);
  KVC_CHECK(capacity >= 0 && capacity <= std::numeric_limits<std::int32_t>::max(),
            "adakv_counts: capacity must be in [0, 2^31 - 1], got " << capacity);
  std::int64_t const rows = batch * kv_heads;
  if (rows == 0) return;
  AdaKVFloor* floors = ws.take<AdaKVFloor>(static_cast<std::size_t>(rows));
  launch("adakv_floor_kernel", adakv_floor_kernel<>, row_grid(rows), kSelectThreads, 0, dev.stream, scores, rows,
         capacity, lengths, ratio, alpha_safeguard, floors, status);
  launch("adakv_pool_kernel", adakv_pool_kernel<>, row_grid(batch), kSelectThreads, 0, dev.stream, scores, batch,
         kv_heads, capacity, floors, counts, status);
}

}  // namespace kvcompress::cuda_impl
