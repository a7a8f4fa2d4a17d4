#pragma once
/// \file
/// \brief AdaKV's selection across the kv heads of a sequence when the heads are spread over the
/// ranks of a tensor-parallel group: the same per-head counts as on the whole layer, exchanging
/// O(heads + bins) values instead of the scores.
///
/// On the whole layer the pooled entries (those beyond each head's safeguard) are ranked by score,
/// ties to the lower head then the lower slot, and the best `take` = min(Σ budgets, Σ pooled) are
/// kept. Here a radix select finds the score of the take-th entry: four passes of 8 bits over an
/// order-preserving 32-bit key of the score, each an all-reduce of a 256-bin histogram per batch
/// element. Every entry above that score is taken; of the entries equal to it, an all-reduce of the
/// per-head tie counts (by global head) hands the rest to the lowest heads, and within a head to the
/// lowest slots, which is where the row's own top-k puts them. The counts are therefore exactly the
/// whole layer's, ties included.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <utility>

#include "kvcompress/cache/kv_cache_view.hpp"
#include "kvcompress/cpu/select_topk.hpp"
#include "kvcompress/detail/workspace.hpp"
#include "kvcompress/dist/shard_protocol.hpp"

namespace kvcompress {

namespace detail {

inline constexpr int kRadixBits = 8;
inline constexpr std::int64_t kRadixBins = 256;
inline constexpr int kRadixPasses = 4;

/// A 32-bit key in the order of the scores (finite; −0 and +0 are one key, as they compare equal).
inline std::uint32_t score_key(float f) noexcept {
  if (f == 0.0f) f = 0.0f;
  std::uint32_t u = 0;
  std::memcpy(&u, &f, sizeof u);
  return (u & 0x80000000u) != 0 ? ~u : (u | 0x80000000u);
}

/// Scratch bytes of `sharded_adakv_counts` (0 without a split).
template <class T, class L>
std::size_t sharded_adakv_bytes(Observation<T> const& obs, KVCacheView<T, L> const& cache) {
  if (!obs.shard.split()) return 0;
  auto const& e = cache.extents;
  auto const i64 = [](auto... n) { return Workspace::bytes_for<std::int64_t>(size_product(n...)); };
  return sum_bytes(handshake_bytes(obs.shard), Workspace::bytes_for<std::int32_t>(size_product(e.batch, e.kv_heads, e.capacity)),
                   Workspace::bytes_for<std::int32_t>(size_product(e.capacity)), i64(e.batch, 4),
                   i64(e.batch, kRadixBins), i64(e.batch, layer_kv_heads(obs, cache)));
}

/// AdaKV's per-row counts on a shard. Local work (safeguards, pools) first, then the handshake,
/// then only collectives and arithmetic that cannot fail.
/// \param scores     [batch, kv_heads, capacity] this rank's rows
/// \param row_budget row_budget(n) → {k, s}: a row of n entries' budget and safeguard (s ≤ k ≤ n)
/// \param safe       [batch * kv_heads] out: each row's safeguard count
/// \param counts     [batch * kv_heads] out: each row's kept count
template <class T, class L, class BudgetFn>
void sharded_adakv_counts(Observation<T> const& obs, KVCacheView<T, L> const& cache, float const* scores,
                          BudgetFn&& row_budget, std::int32_t* safe, std::int32_t* counts, Workspace& ws) {
  std::int64_t const batch = cache.extents.batch, heads = cache.extents.kv_heads, cap = cache.extents.capacity;
  KVC_CHECK(heads * cap <= std::numeric_limits<std::int32_t>::max(),
            "AdaKV ranks the kv_heads · capacity = " << heads * cap << " entries of a sequence with int32 ids");
  std::int32_t* pools = ws.take<std::int32_t>(size_product(batch, heads, cap));  // [batch, ≤ heads·cap] pooled ids h·cap + i
  std::int32_t* part = ws.take<std::int32_t>(size_product(cap));                  // [cap] one row's partition
  // [batch, {budget, pooled, entries still to take, key prefix}]: the first two summed over the group
  std::int64_t* sums = ws.take<std::int64_t>(size_product(batch, 4));
  for (std::int64_t b = 0; b < batch; ++b) {
    float const* scores_b = scores + b * heads * cap;
    std::int32_t* pool = pools + b * heads * cap;
    std::int64_t budget = 0, pooled = 0;
    for (std::int64_t h = 0; h < heads; ++h) {
      std::int64_t const r = b * heads + h, n = cache.lengths[r];
      auto const [k, s] = row_budget(n);
      budget += k - s;
      safe[r] = counts[r] = static_cast<std::int32_t>(s);
      std::iota(part, part + n, static_cast<std::int32_t>(h * cap));
      std::nth_element(part, part + s, part + n, cpu_impl::RanksBefore{scores_b});
      pooled = std::copy(part + s, part + n, pool + pooled) - pool;
    }
    std::int64_t* row = sums + b * 4;
    row[0] = budget;
    row[1] = pooled;
    row[2] = row[3] = 0;
  }
  ShardLayout const layout = join_shard(obs, cache, 0, 0, ws);
  Communicator& comm = *obs.shard.communicator;
  comm.all_reduce(sums, static_cast<std::size_t>(batch * 4), ReduceOp::sum);
  for (std::int64_t b = 0; b < batch; ++b) sums[b * 4 + 2] = std::min(sums[b * 4], sums[b * 4 + 1]);
  // A sequence whose pool is taken whole or not at all needs no selection; every rank sees the same sums.
  auto const selecting = [&](std::int64_t b) { return sums[b * 4 + 2] > 0 && sums[b * 4 + 2] < sums[b * 4 + 1]; };
  std::int64_t* hist = ws.take<std::int64_t>(size_product(batch, kRadixBins));  // [batch, bins]
  auto const pooled_of = [&](std::int64_t b) {
    std::int64_t n = 0;
    for (std::int64_t h = 0; h < heads; ++h) n += cache.lengths[b * heads + h] - safe[b * heads + h];
    return n;
  };
  for (int pass = 0; pass < kRadixPasses; ++pass) {
    int const shift = 32 - kRadixBits * (pass + 1);
    std::fill(hist, hist + batch * kRadixBins, 0);
    for (std::int64_t b = 0; b < batch; ++b) {
      if (!selecting(b)) continue;
      float const* scores_b = scores + b * heads * cap;
      auto const prefix = static_cast<std::uint32_t>(sums[b * 4 + 3]);
      std::int32_t const* pool = pools + b * heads * cap;
      std::int64_t const n = pooled_of(b);
      for (std::int64_t i = 0; i < n; ++i) {
        std::uint32_t const key = score_key(scores_b[pool[i]]);
        if (pass > 0 && (key >> (shift + kRadixBits)) != (prefix >> (shift + kRadixBits))) continue;
        ++hist[b * kRadixBins + ((key >> shift) & (kRadixBins - 1))];
      }
    }
    comm.all_reduce(hist, static_cast<std::size_t>(batch * kRadixBins), ReduceOp::sum);
    for (std::int64_t b = 0; b < batch; ++b) {
      if (!selecting(b)) continue;
      std::int64_t* row = sums + b * 4;
      for (std::int64_t bin = kRadixBins - 1; bin >= 0; --bin) {
        std::int64_t const c = hist[b * kRadixBins + bin];
        if (row[2] <= c) {
          row[3] |= bin << shift;
          break;
        }
        row[2] -= c;
      }
    }
  }
  // Field 3 is now the take-th entry's key and field 2 (≥ 1) the entries equal to it still to take.
  std::int64_t const total = layout.kv_heads;
  std::int64_t* ties = ws.take<std::int64_t>(size_product(batch, total));  // [batch, layer kv heads]
  std::fill(ties, ties + batch * total, 0);
  for (std::int64_t b = 0; b < batch; ++b) {
    float const* scores_b = scores + b * heads * cap;
    std::int32_t const* pool = pools + b * heads * cap;
    std::int64_t const n = pooled_of(b);
    if (!selecting(b)) {
      if (sums[b * 4 + 2] == 0) continue;
      for (std::int64_t i = 0; i < n; ++i) ++counts[b * heads + pool[i] / cap];  // the whole pool
      continue;
    }
    auto const key_t = static_cast<std::uint32_t>(sums[b * 4 + 3]);
    for (std::int64_t i = 0; i < n; ++i) {
      std::uint32_t const key = score_key(scores_b[pool[i]]);
      std::int64_t const h = pool[i] / cap;
      if (key > key_t) ++counts[b * heads + h];
      else if (key == key_t) ++ties[b * total + layout.first_kv_head + h];
    }
  }
  comm.all_reduce(ties, static_cast<std::size_t>(batch * total), ReduceOp::sum);
  for (std::int64_t b = 0; b < batch; ++b) {
    if (!selecting(b)) continue;
    std::int64_t left = sums[b * 4 + 2];
    for (std::int64_t g = 0; g < layout.first_kv_head; ++g) left -= ties[b * total + g];
    for (std::int64_t h = 0; h < heads; ++h) {
      std::int64_t const t = ties[b * total + layout.first_kv_head + h];
      std::int64_t const give = std::clamp<std::int64_t>(left, 0, t);
      counts[b * heads + h] += static_cast<std::int32_t>(give);
      left -= t;
    }
  }
}

}  // namespace detail

}  // namespace kvcompress
