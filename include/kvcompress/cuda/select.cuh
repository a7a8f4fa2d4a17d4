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
/// Two ways, chosen by the capacity alone (`select_plan`, host arithmetic the CPU suite checks):
///  - Rows of at most kSelectChunk slots: one CTA of 1024 threads per row, the whole select in one
///    launch and in shared memory (no workspace, no atomics across CTAs). A pass stops early once the
///    remaining entries of the selected bin are all kept.
///  - Longer rows: every row is cut into chunks of kSelectChunk slots, one 256-thread CTA each, so a
///    layer of 8 rows of 32k runs 64 CTAs and 8 × 128k runs 256 (one CTA per row left 124 of an H100's
///    132 SMs idle, ≈40 µs for a 128k row). One memset and five launches whatever the capacity: three
///    digit passes, in which each CTA histograms its chunk in shared memory (16-byte loads; shared
///    atomics aggregated per warp with `__match_any_sync`, so a warp of tied scores costs one atomic),
///    adds it to the row's histogram in the workspace, and the last CTA of the row to arrive chooses the
///    digit (the same `find_digit` per thread after a block scan), advances the row's state
///    (`advance_select`) and clears the histogram for the next pass; a count pass (each chunk's entries
///    above and equal to the threshold); and the filter, where each chunk adds the counts of the chunks
///    before it and writes its kept slots at `kept_position`. Rows whose selected bin is entirely kept
///    skip the later digit passes.

#include <cub/block/block_load.cuh>
#include <cub/block/block_reduce.cuh>
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


// ---- multi-CTA radix select (rows longer than kSelectChunk) --------------------------------------

/// Slots of a row per CTA of the multi-CTA select, and its threads.
inline constexpr std::int64_t kSelectChunk = 4096;
inline constexpr int kChunkThreads = 256;
inline constexpr int kChunkBinsPerThread = kRadixBins / kChunkThreads;
inline constexpr int kChunkItems = 8;
inline constexpr int kChunkTile = kChunkThreads * kChunkItems;

/// The digit of pass p (0, 1, 2): 11, 11 and 10 bits from the top of the key.
__host__ __device__ __forceinline__ int radix_shift(int pass) { return pass == 0 ? 21 : (pass == 1 ? 10 : 0); }
__host__ __device__ __forceinline__ std::uint32_t radix_digit_mask(int pass) { return pass == 2 ? 0x3ffu : 0x7ffu; }

/// A row's select between passes: candidates are keys with `key & mask == prefix`; `need` of them,
/// in rank order, complete the k; `matching` is how many there are; `done` once the threshold is
/// final (all three digits chosen, or every candidate kept: then the low bits need not be resolved).
struct RowSelect {
  std::uint32_t prefix;
  std::uint32_t mask;
  std::uint32_t need;
  std::uint32_t matching;
  std::uint32_t done;
};

/// One thread's share of the digit choice: `bins[0..count)` are consecutive bins in descending order
/// starting at bin `first` (so bins[i] is bin first − i), `before` the candidates in all higher bins.
/// Returns true, with the digit, the candidates above it and in it, for the one thread whose bins hold
/// the need-th candidate (1 ≤ need ≤ Σ bins). Host and device: the CPU suite runs it for every thread.
__host__ __device__ __forceinline__ bool find_digit(std::uint32_t const* bins, int count, int first,
                                                    std::uint32_t before, std::uint32_t need, std::uint32_t& digit,
                                                    std::uint32_t& above, std::uint32_t& in_bin) {
  for (int i = 0; i < count; ++i) {
    if (before < need && before + bins[i] >= need) {
      digit = static_cast<std::uint32_t>(first - i);
      above = before;
      in_bin = bins[i];
      return true;
    }
    before += bins[i];
  }
  return false;
}

/// The row's state after pass `pass` chose `digit`, with `above` candidates in higher bins and `in_bin`
/// in it. Host and device.
__host__ __device__ __forceinline__ RowSelect advance_select(RowSelect s, int pass, std::uint32_t digit,
                                                             std::uint32_t above, std::uint32_t in_bin) {
  s.prefix |= digit << radix_shift(pass);
  s.mask |= radix_digit_mask(pass) << radix_shift(pass);
  s.need -= above;
  s.matching = in_bin;
  s.done = (pass == 2 || s.matching == s.need) ? 1u : 0u;
  return s;
}

/// The output index of an entry in its row's kept list, or -1 if it is not kept: entries above the
/// threshold are all kept, entries equal to it while fewer than `need` equal ones precede them (the
/// lower slots win ties); `above_before` and `equal_before` count the entries of each kind at lower
/// slots of the row. Host and device.
__host__ __device__ __forceinline__ std::int64_t kept_position(bool above, bool equal, std::int64_t above_before,
                                                               std::int64_t equal_before, std::int64_t need) {
  if (above) return above_before + (equal_before < need ? equal_before : need);
  if (equal && equal_before < need) return above_before + equal_before;
  return -1;
}

/// Slots [first, end) of chunk c of a row of n live entries (empty when the chunk starts at or past n).
struct ChunkRange {
  std::int64_t first;
  std::int64_t end;
};
__host__ __device__ __forceinline__ ChunkRange chunk_range(std::int64_t c, std::int64_t chunk, std::int64_t n) {
  std::int64_t const first = c * chunk, last = first + chunk;
  return {first, first >= n ? first : (last < n ? last : n)};
}

/// Chunks of a row of n live entries that take part (arrive at the row's histogram).
__host__ __device__ __forceinline__ std::int64_t active_chunks(std::int64_t n, std::int64_t chunk) {
  return (n + chunk - 1) / chunk;
}

/// How `select_topk` runs for rows of `capacity` slots (host arithmetic only).
struct SelectPlan {
  bool multi;                 // several CTAs per row
  std::int64_t chunk;         // slots per CTA (multi)
  std::int64_t chunks;        // CTAs per row (multi), else 1
  int launches;               // kernel launches
  int memsets;                // cudaMemsetAsync calls
  std::size_t hist_words;     // [rows, kRadixBins] row histograms
  std::size_t arrival_words;  // [rows] CTAs arrived in the current pass
  std::size_t state_count;    // [rows] RowSelect
  std::size_t chunk_words;    // [rows, chunks, 2] entries above and equal to the threshold per chunk
};

/// `chunk` > 0 replaces kSelectChunk (tests use small chunks to run many CTAs per row).
[[nodiscard]] inline SelectPlan select_plan(std::int64_t rows, std::int64_t capacity, std::int64_t chunk = 0) {
  SelectPlan p{};
  p.chunk = chunk > 0 ? chunk : kSelectChunk;
  p.multi = capacity > p.chunk;
  p.chunks = p.multi ? (capacity + p.chunk - 1) / p.chunk : 1;
  p.launches = p.multi ? 5 : 1;
  p.memsets = p.multi ? 1 : 0;
  if (p.multi) {
    p.hist_words = detail::size_product(rows, kRadixBins);
    p.arrival_words = detail::size_product(rows, 1);
    p.state_count = detail::size_product(rows, 1);
    p.chunk_words = detail::size_product(rows, p.chunks, 2);
  }
  return p;
}

/// The multi-CTA select's arrays in the workspace; `zeroed` .. `zeroed + zeroed_bytes` is what the
/// call's one memset clears (histograms, arrivals, states).
struct SelectScratch {
  std::uint32_t* hist;      // [rows, kRadixBins]
  std::uint32_t* arrivals;  // [rows]
  RowSelect* state;         // [rows]
  std::uint32_t* chunk_counts;  // [rows, chunks, 2]
  void* zeroed;
  std::size_t zeroed_bytes;
};

[[nodiscard]] inline SelectScratch carve_select_scratch(Workspace& ws, SelectPlan const& p) {
  SelectScratch s{};
  s.hist = ws.take<std::uint32_t>(p.hist_words);
  s.arrivals = ws.take<std::uint32_t>(p.arrival_words);
  s.state = ws.take<RowSelect>(p.state_count);
  s.chunk_counts = ws.take<std::uint32_t>(p.chunk_words);
  s.zeroed = s.hist;
  s.zeroed_bytes = static_cast<std::size_t>(reinterpret_cast<std::byte*>(s.state + p.state_count) -
                                            reinterpret_cast<std::byte*>(s.hist));
  return s;
}

/// Row r's live length n and budget k, clamped so that bad values (a failed status the caller
/// ignored) stay in bounds.
struct RowBudget {
  std::int64_t n;
  std::int64_t k;
};
__device__ __forceinline__ RowBudget row_budget(std::int32_t const* lengths, std::int32_t const* counts,
                                                std::int64_t r, std::int64_t capacity) {
  std::int64_t const n = lengths[r] < 0 ? 0 : (lengths[r] > capacity ? capacity : lengths[r]);
  std::int64_t const k = counts[r] < 0 ? 0 : (counts[r] > n ? n : counts[r]);
  return {n, k};
}

/// How a run of `len` floats at address `addr` is read: [0, head) and [tail_first, len) one float at
/// a time (fewer than 4 each), [head, tail_first) as `vecs` 16-byte-aligned float4 loads. Host and
/// device: the CPU suite checks every alignment and length.
struct VectorSplit {
  std::int64_t head;
  std::int64_t vecs;
  std::int64_t tail_first;
};
__host__ __device__ __forceinline__ VectorSplit vector_split(std::uintptr_t addr, std::int64_t len) {
  std::int64_t head = static_cast<std::int64_t>(((16 - (addr & 15u)) & 15u) / 4);
  if ((addr & 3u) != 0) head = len;  // not even float-aligned: single loads throughout
  if (head > len) head = len;
  std::int64_t const vecs = (len - head) / 4;
  return {head, vecs, head + vecs * 4};
}

/// The element that single load i (i < head + len − tail_first) reads: the head's, then the tail's.
__host__ __device__ __forceinline__ std::int64_t single_load_index(VectorSplit const& s, std::int64_t i) {
  return i < s.head ? i : s.tail_first + (i - s.head);
}

/// Calls f(key, valid) for every score of x[0, len) as the CTA's threads share them: 16-byte loads over
/// the 16-byte-aligned middle, every thread of a warp the same number of times (so `f` may use warp
/// collectives), single loads for the few entries before and after it.
template <class F>
__device__ __forceinline__ void for_each_chunk_key(float const* x, std::int64_t len, F&& f) {
  int const t = static_cast<int>(threadIdx.x);
  VectorSplit const split = vector_split(reinterpret_cast<std::uintptr_t>(x), len);
  std::int64_t const head = split.head, vecs = split.vecs, tail_first = split.tail_first;
  auto const* v = reinterpret_cast<float4 const*>(x + head);
  for (std::int64_t base = 0; base < vecs; base += kChunkThreads) {
    std::int64_t const i = base + t;
    bool const valid = i < vecs;
    float4 const q = valid ? v[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    f(rank_key(q.x), valid);
    f(rank_key(q.y), valid);
    f(rank_key(q.z), valid);
    f(rank_key(q.w), valid);
  }
  // Fewer than 4 entries before the aligned middle and fewer than 4 after it (or all, unaligned).
  for (std::int64_t base = 0; base < head + (len - tail_first); base += kChunkThreads) {
    std::int64_t const i = base + t;
    bool const valid = i < head + (len - tail_first);
    std::int64_t const at = single_load_index(split, i);
    f(valid ? rank_key(x[at]) : 0u, valid);
  }
}

/// Adds one to bin `bin` of a shared histogram for every lane with `count`: lanes of a warp that share
/// a bin are merged into one atomic (tied scores, the common case of heavy ties, cost one per warp).
__device__ __forceinline__ void warp_aggregated_add(std::uint32_t* hist, std::uint32_t bin, bool count) {
  constexpr std::uint32_t kNone = 0xffffffffu;
  std::uint32_t const peers = __match_any_sync(0xffffffffu, count ? bin : kNone);
  int const leader = __ffs(static_cast<int>(peers)) - 1;
  if (count && static_cast<int>(threadIdx.x & 31) == leader) atomicAdd(hist + bin, static_cast<std::uint32_t>(__popc(peers)));
}

/// Digit pass `pass` of the multi-CTA select: grid (chunks, rows strided).
/// \param scores [rows, capacity] \param hist [rows, kRadixBins] \param arrivals [rows] \param state [rows]
template <class = void>
__global__ void __launch_bounds__(kChunkThreads)
    select_digit_pass_kernel(float const* scores, std::int64_t rows, std::int64_t capacity, std::int64_t chunk,
                             std::int32_t const* lengths, std::int32_t const* counts, int pass, std::uint32_t* hist,
                             std::uint32_t* arrivals, RowSelect* state, DeviceStatus const* status) {
  using Scan = cub::BlockScan<std::uint32_t, kChunkThreads>;
  __shared__ std::uint32_t sh[kRadixBins];
  __shared__ typename Scan::TempStorage scan;
  __shared__ bool last;
  __shared__ std::uint32_t chosen[3];  // digit, above, in_bin
  if (failed(status)) return;
  int const t = static_cast<int>(threadIdx.x);
  for (std::int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    RowBudget const rb = row_budget(lengths, counts, r, capacity);
    ChunkRange const cr = chunk_range(blockIdx.x, chunk, rb.n);
    if (rb.k == 0 || rb.k == rb.n || cr.first >= cr.end) continue;  // nothing to select, or not this chunk
    RowSelect const st = pass == 0 ? RowSelect{0u, 0u, static_cast<std::uint32_t>(rb.k), 0u, 0u} : state[r];
    if (st.done) continue;
    for (int b = t; b < kRadixBins; b += kChunkThreads) sh[b] = 0;
    __syncthreads();
    int const shift = radix_shift(pass);
    std::uint32_t const dmask = radix_digit_mask(pass);
    for_each_chunk_key(scores + r * capacity + cr.first, cr.end - cr.first, [&](std::uint32_t key, bool valid) {
      warp_aggregated_add(sh, (key >> shift) & dmask, valid && (key & st.mask) == st.prefix);
    });
    __syncthreads();
    std::uint32_t* const row_hist = hist + r * kRadixBins;
    for (int b = t; b < kRadixBins; b += kChunkThreads)
      if (sh[b] != 0u) atomicAdd(row_hist + b, sh[b]);
    __syncthreads();
    if (t == 0) {
      __threadfence();  // this CTA's histogram before its arrival
      auto const arrived = atomicAdd(arrivals + r, 1u);
      last = arrived + 1 == static_cast<std::uint32_t>(active_chunks(rb.n, chunk));
    }
    __syncthreads();
    if (last) {  // every chunk of the row has added its histogram: choose the digit
      __threadfence();
      std::uint32_t bins[kChunkBinsPerThread];
      int const first = kRadixBins - 1 - t * kChunkBinsPerThread;  // descending: bins first, first − 1, ...
      std::uint32_t sum = 0;
      for (int i = 0; i < kChunkBinsPerThread; ++i) {
        bins[i] = __ldcg(row_hist + first - i);
        sum += bins[i];
      }
      std::uint32_t before = 0;
      Scan(scan).ExclusiveSum(sum, before);
      std::uint32_t digit = 0, above = 0, in_bin = 0;
      if (find_digit(bins, kChunkBinsPerThread, first, before, st.need, digit, above, in_bin)) {
        chosen[0] = digit;
        chosen[1] = above;
        chosen[2] = in_bin;
      }
      for (int i = 0; i < kChunkBinsPerThread; ++i) row_hist[first - i] = 0u;  // clean for the next pass
      __syncthreads();
      if (t == 0) {
        state[r] = advance_select(st, pass, chosen[0], chosen[1], chosen[2]);
        arrivals[r] = 0u;
      }
    }
    __syncthreads();  // the next row reuses the shared memory
  }
}

/// The count pass: chunk_counts[r, c] = (entries of chunk c above the threshold, entries equal to it).
/// \param chunk_counts [rows, chunks, 2]
template <class = void>
__global__ void __launch_bounds__(kChunkThreads)
    select_count_kernel(float const* scores, std::int64_t rows, std::int64_t capacity, std::int64_t chunk,
                        std::int64_t chunks, std::int32_t const* lengths, std::int32_t const* counts,
                        RowSelect const* state, std::uint32_t* chunk_counts, DeviceStatus const* status) {
  using Reduce = cub::BlockReduce<unsigned long long, kChunkThreads>;
  __shared__ typename Reduce::TempStorage reduce;
  if (failed(status)) return;
  for (std::int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    RowBudget const rb = row_budget(lengths, counts, r, capacity);
    ChunkRange const cr = chunk_range(blockIdx.x, chunk, rb.n);
    if (rb.k == 0 || rb.k == rb.n || cr.first >= cr.end) continue;
    RowSelect const st = state[r];
    std::uint32_t above = 0, equal = 0;
    for_each_chunk_key(scores + r * capacity + cr.first, cr.end - cr.first, [&](std::uint32_t key, bool valid) {
      std::uint32_t const m = key & st.mask;
      above += static_cast<std::uint32_t>(valid && m > st.prefix);
      equal += static_cast<std::uint32_t>(valid && m == st.prefix);
    });
    // Both counts in one reduction: above in the high 32 bits, equal in the low (each ≤ kSelectChunk).
    unsigned long long const both =
        Reduce(reduce).Sum((static_cast<unsigned long long>(above) << 32) | static_cast<unsigned long long>(equal));
    if (threadIdx.x == 0) {
      std::uint32_t* out = chunk_counts + (r * chunks + blockIdx.x) * 2;
      out[0] = static_cast<std::uint32_t>(both >> 32);
      out[1] = static_cast<std::uint32_t>(both & 0xffffffffu);
    }
    __syncthreads();
  }
}

/// The filter: each chunk writes its kept slots, in order, at `kept_position`. Rows that keep all
/// their entries write 0..n−1 here.
/// \param kept [rows, capacity] out
template <class = void>
__global__ void __launch_bounds__(kChunkThreads)
    select_filter_kernel(float const* scores, std::int64_t rows, std::int64_t capacity, std::int64_t chunk,
                         std::int64_t chunks, std::int32_t const* lengths, std::int32_t const* counts,
                         RowSelect const* state, std::uint32_t const* chunk_counts, std::int32_t* kept,
                         DeviceStatus const* status) {
  using Load = cub::BlockLoad<float, kChunkThreads, kChunkItems, cub::BLOCK_LOAD_WARP_TRANSPOSE>;
  using Scan = cub::BlockScan<std::uint32_t, kChunkThreads>;
  using Reduce = cub::BlockReduce<unsigned long long, kChunkThreads>;
  __shared__ union {
    typename Load::TempStorage load;
    typename Scan::TempStorage scan;
    typename Reduce::TempStorage reduce;
  } sm;
  __shared__ unsigned long long prior;
  if (failed(status)) return;
  int const t = static_cast<int>(threadIdx.x);
  for (std::int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    RowBudget const rb = row_budget(lengths, counts, r, capacity);
    ChunkRange const cr = chunk_range(blockIdx.x, chunk, rb.n);
    std::int32_t* out = kept + r * capacity;
    if (rb.k == 0 || cr.first >= cr.end) continue;
    if (rb.k == rb.n) {
      for (std::int64_t i = cr.first + t; i < cr.end; i += kChunkThreads) out[i] = static_cast<std::int32_t>(i);
      continue;
    }
    RowSelect const st = state[r];
    // The counts of the chunks before this one (above in the high 32 bits, equal in the low).
    unsigned long long mine = 0;
    for (std::int64_t c = t; c < static_cast<std::int64_t>(blockIdx.x); c += kChunkThreads)
      mine += (static_cast<unsigned long long>(chunk_counts[(r * chunks + c) * 2]) << 32) |
              chunk_counts[(r * chunks + c) * 2 + 1];
    unsigned long long const sum = Reduce(sm.reduce).Sum(mine);
    if (t == 0) prior = sum;
    __syncthreads();
    std::int64_t above_run = static_cast<std::int64_t>(prior >> 32);
    std::int64_t equal_run = static_cast<std::int64_t>(prior & 0xffffffffu);
    float const* row = scores + r * capacity;
    for (std::int64_t base = cr.first; base < cr.end; base += kChunkTile) {
      int const valid = static_cast<int>(cr.end - base < kChunkTile ? cr.end - base : kChunkTile);
      float x[kChunkItems];
      __syncthreads();  // sm is free
      Load(sm.load).Load(row + base, x, valid, 0.0f);
      std::uint32_t above_flags = 0, equal_flags = 0;
      for (int i = 0; i < kChunkItems; ++i) {
        if (t * kChunkItems + i >= valid) continue;
        std::uint32_t const key = rank_key(x[i]) & st.mask;
        above_flags |= static_cast<std::uint32_t>(key > st.prefix) << i;
        equal_flags |= static_cast<std::uint32_t>(key == st.prefix) << i;
      }
      // Above in the low 16 bits, equal in the high 16 (a tile has kChunkTile = 2048 entries).
      std::uint32_t const packed = static_cast<std::uint32_t>(__popc(above_flags)) |
                                   (static_cast<std::uint32_t>(__popc(equal_flags)) << 16);
      std::uint32_t before = 0, total = 0;
      __syncthreads();  // sm.load becomes sm.scan
      Scan(sm.scan).ExclusiveSum(packed, before, total);
      std::int64_t a = above_run + (before & 0xffffu), e = equal_run + (before >> 16);
      for (int i = 0; i < kChunkItems; ++i) {
        bool const is_above = (above_flags >> i) & 1u, is_equal = (equal_flags >> i) & 1u;
        std::int64_t const pos = kept_position(is_above, is_equal, a, e, st.need);
        if (pos >= 0 && pos < rb.k) out[pos] = static_cast<std::int32_t>(base + t * kChunkItems + i);
        a += is_above;
        e += is_equal;
      }
      above_run += total & 0xffffu;
      equal_run += total >> 16;
    }
    __syncthreads();  // the next row reuses the shared memory
  }
}

/// Scratch bytes of `select_topk` for `rows` rows of `capacity` (none when one CTA per row suffices).
[[nodiscard]] inline std::size_t select_workspace_bytes(std::int64_t rows, std::int64_t capacity, std::int64_t chunk = 0) {
  SelectPlan const p = select_plan(rows, capacity, chunk);
  if (!p.multi) return 0;
  return detail::sum_bytes(Workspace::bytes_for<std::uint32_t>(p.hist_words),
                           Workspace::bytes_for<std::uint32_t>(p.arrival_words),
                           Workspace::bytes_for<RowSelect>(p.state_count),
                           Workspace::bytes_for<std::uint32_t>(p.chunk_words));
}

/// Launches the per-row top-k on `dev.stream`. Row r keeps its counts[r] best of lengths[r] entries
/// (0 ≤ counts[r] ≤ lengths[r] ≤ capacity when status is OK; out-of-range values are clamped, never
/// followed out of bounds). Nothing happens on the device once `status` records a failure.
/// \param scores  [rows, capacity] device memory
/// \param lengths [rows] device memory
/// \param counts  [rows] device memory
/// \param kept    [rows, capacity] device memory, out: kept[r·capacity + 0..counts[r]) ascending slots
/// \param ws      device memory of `select_workspace_bytes(rows, capacity, chunk)`
/// \param status  device memory
/// \param chunk   slots per CTA (0: kSelectChunk); tests use small chunks to run many CTAs per row
inline void select_topk(cuda const& dev, float const* scores, std::int64_t rows, std::int64_t capacity,
                        std::int32_t const* lengths, std::int32_t const* counts, std::int32_t* kept, Workspace& ws,
                        DeviceStatus const* status, std::int64_t chunk = 0) {
  KVC_CHECK(rows >= 0, "select_topk: rows must not be negative, got " << rows);
  KVC_CHECK(capacity >= 0 && capacity <= std::numeric_limits<std::int32_t>::max(),
            "select_topk: capacity must be in [0, 2^31 - 1] (slots are int32), got " << capacity);
  if (rows == 0 || capacity == 0) return;
  SelectPlan const p = select_plan(rows, capacity, chunk);
  if (!p.multi) {
    launch("select_topk_kernel", select_topk_kernel<>, row_grid(rows), kSelectThreads, 0, dev.stream, scores, rows,
           capacity, lengths, counts, kept, status);
    return;
  }
  SelectScratch const s = carve_select_scratch(ws, p);
  KVC_CUDA_CHECK(cudaMemsetAsync(s.zeroed, 0, s.zeroed_bytes, dev.stream));
  dim3 const grid(static_cast<unsigned int>(p.chunks), row_grid(rows));
  for (int pass = 0; pass < 3; ++pass)
    launch("select_digit_pass_kernel", select_digit_pass_kernel<>, grid, kChunkThreads, 0, dev.stream, scores, rows,
           capacity, p.chunk, lengths, counts, pass, s.hist, s.arrivals, s.state, status);
  launch("select_count_kernel", select_count_kernel<>, grid, kChunkThreads, 0, dev.stream, scores, rows, capacity,
         p.chunk, p.chunks, lengths, counts, s.state, s.chunk_counts, status);
  launch("select_filter_kernel", select_filter_kernel<>, grid, kChunkThreads, 0, dev.stream, scores, rows, capacity,
         p.chunk, p.chunks, lengths, counts, s.state, s.chunk_counts, kept, status);
}

}  // namespace kvcompress::cuda_impl
