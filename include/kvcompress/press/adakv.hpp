#pragma once
/// \file
/// \brief AdaKV (arXiv 2407.11550): the entries of all kv heads of a sequence compete for one
/// budget, so heads that need more keep more. Every head first keeps its alpha_safeguard share
/// (its top ⌊n_kept·α⌋ entries, at least one when α > 0); the rest of the sequence's budget
/// Σ n_kept goes to the best remaining scores across its heads.
///
/// kvpress masks the losers with fake keys and keeps the cache at full length; here each head keeps
/// its own number of entries and the rest of its row is given back (`lengths` shrink per head).
/// The selection "global threshold + per-head floor" is a per-row count c_r (`kept_counts`); each
/// row then keeps its own top c_r, which is exactly the global selection.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numeric>
#include <utility>

#include "kvcompress/dist/sharded_adakv.hpp"
#include "kvcompress/press/scorer.hpp"

namespace kvcompress {

namespace detail {

/// kvpress's safeguard: int(n_kept·α), at least 1 when α > 0 and the row keeps anything.
inline std::int64_t adakv_safe_count(std::int64_t n_kept, double alpha) noexcept {
  auto const s = static_cast<std::int64_t>(static_cast<double>(n_kept) * alpha);
  if (alpha > 0.0) return n_kept > 0 ? std::max<std::int64_t>(1, s) : 0;
  return s;
}

inline void check_alpha_safeguard(double alpha) {
  KVC_CHECK(alpha >= 0.0 && alpha <= 1.0, "alpha_safeguard must be in [0, 1], got " << alpha);
}

/// Scratch bytes of `adakv_counts`.
template <class T, class L>
std::size_t adakv_counts_bytes(CpuDevice const& dev, KVCacheView<T, L> const& cache) {
  return Workspace::bytes_for<std::int32_t>(
      size_product(thread_count(dev, cache.extents.batch), cache.extents.kv_heads + 1, cache.extents.capacity));
}

/// AdaKV's selection across the heads of each sequence, as per-row counts.
/// \param scores    [batch, kv_heads, capacity]
/// \param safe      [batch * kv_heads] out: each row's safeguard count
/// \param counts    [batch * kv_heads] out: each row's kept count (≥ safe)
/// \param row_kept  row_kept(n): the budget of a row of n entries before pooling
template <class T, class L, class KeptFn>
void adakv_counts(CpuDevice const& dev, KVCacheView<T, L> const& cache, float const* scores, double alpha,
                  KeptFn&& row_kept, std::int32_t* safe, std::int32_t* counts, Workspace& ws) {
  std::int64_t const heads = cache.extents.kv_heads, cap = cache.extents.capacity;
  KVC_CHECK(heads * cap <= std::numeric_limits<std::int32_t>::max(),
            "AdaKV ranks the kv_heads · capacity = " << heads * cap << " entries of a sequence with int32 ids");
  int const threads = thread_count(dev, cache.extents.batch);
  std::int32_t* buf = ws.take<std::int32_t>(size_product(threads, heads + 1, cap));
  parallel_for(dev, cache.extents.batch, [&](std::int64_t b, int t) {
    // Ids h·cap + i address scores_b directly, so one order (RanksBefore) ranks entries within a row
    // and across the rows of the sequence; ties go to the lower head, then the lower slot.
    float const* scores_b = scores + b * heads * cap;
    std::int32_t* pool = buf + t * (heads * cap + cap);  // [heads * cap] candidates beyond the floors
    std::int32_t* part = pool + heads * cap;             // [cap] one row's partition
    std::int64_t budget = 0, pooled = 0;
    for (std::int64_t h = 0; h < heads; ++h) {
      std::int64_t const r = b * heads + h, n = cache.lengths[r];
      std::int64_t const k = std::clamp<std::int64_t>(row_kept(n), 0, n);
      std::int64_t const s = std::min(adakv_safe_count(k, alpha), k);
      budget += k - s;
      safe[r] = counts[r] = static_cast<std::int32_t>(s);
      std::iota(part, part + n, static_cast<std::int32_t>(h * cap));
      std::nth_element(part, part + s, part + n, cpu_impl::RanksBefore{scores_b});
      pooled = std::copy(part + s, part + n, pool + pooled) - pool;
    }
    std::int64_t const take = std::min(budget, pooled);
    if (take < pooled) std::nth_element(pool, pool + take, pool + pooled, cpu_impl::RanksBefore{scores_b});
    for (std::int64_t i = 0; i < take; ++i) ++counts[b * heads + pool[i] / cap];
  });
}

/// Scratch bytes of `adakv_layer_counts`.
template <class T, class L>
std::size_t adakv_layer_counts_bytes(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache) {
  return obs.shard.split() ? sharded_adakv_bytes(obs, cache) : adakv_counts_bytes(dev, cache);
}

/// `adakv_counts` over the whole layer, on this process or spread over a tensor-parallel group
/// (`observation.shard`; dist/sharded_adakv.hpp): the same counts either way.
template <class T, class L, class KeptFn>
void adakv_layer_counts(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache,
                        float const* scores, double alpha, KeptFn&& row_kept, std::int32_t* safe, std::int32_t* counts,
                        Workspace& ws) {
  if (!obs.shard.split()) {
    adakv_counts(dev, cache, scores, alpha, row_kept, safe, counts, ws);
    return;
  }
  auto const budget = [&](std::int64_t n) {
    std::int64_t const k = std::clamp<std::int64_t>(row_kept(n), 0, n);
    return std::pair<std::int64_t, std::int64_t>{k, std::min(adakv_safe_count(k, alpha), k)};
  };
  sharded_adakv_counts(obs, cache, scores, budget, safe, counts, ws);
}

}  // namespace detail

/// \brief AdaKV around a scorer press: its scores, the sequence-wide budget, per-head lengths.
/// \tparam Press a scorer press (it provides `score`); its ratio and row budget are AdaKV's.
template <class Press>
struct AdaKVPress {
  Press press;
  /// Fraction of each head's own budget it keeps whatever the other heads score.
  double alpha_safeguard = 0.20;

  template <class T, class L>
  [[nodiscard]] std::size_t workspace_bytes(CpuDevice const& dev, Observation<T> const& obs,
                                            KVCacheView<T, L> const& cache) const {
    std::size_t const rows = static_cast<std::size_t>(cache.extents.batch * cache.extents.kv_heads);
    return detail::sum_bytes(press.workspace_bytes(dev, obs, cache), Workspace::bytes_for<std::int32_t>(rows),
                              detail::adakv_layer_counts_bytes(dev, obs, cache));
  }

  template <class T, class L>
  void score(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, float* scores,
             Workspace& ws) const {
    detail::check_alpha_safeguard(alpha_safeguard);
    press.score(dev, obs, cache, scores, ws);
  }

  /// \param counts [batch * kv_heads] out: entries each row keeps
  template <class T, class L>
  void kept_counts(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, float const* scores,
                   std::int32_t* counts, Workspace& ws) const {
    detail::check_alpha_safeguard(alpha_safeguard);
    std::int32_t* safe = ws.take<std::int32_t>(static_cast<std::size_t>(cache.extents.batch * cache.extents.kv_heads));
    detail::adakv_layer_counts(
        dev, obs, cache, scores, alpha_safeguard, [&](std::int64_t n) { return detail::press_kept_count(press, n, obs); },
        safe, counts, ws);
  }
};

template <class Press>
AdaKVPress(Press) -> AdaKVPress<Press>;
template <class Press>
AdaKVPress(Press, double) -> AdaKVPress<Press>;

}  // namespace kvcompress
