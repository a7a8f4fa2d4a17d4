#pragma once
/// \file
/// \brief The press protocol and `compress`: score → per-row top n_kept → compact in place.
///
/// A **scorer press** is a small aggregate with a `compression_ratio` and
/// \code
///   template <class T, class L> std::size_t workspace_bytes(CpuDevice const&, Observation<T> const&,
///                                                           KVCacheView<T, L> const&) const;
///   template <class T, class L> void score(CpuDevice const&, Observation<T> const&,
///                                          KVCacheView<T, L> const&, float* scores, Workspace&) const;
/// \endcode
/// `score` writes `scores` [batch, kv_heads, capacity] (row r valid on [0, lengths[r])); higher
/// means keep. Optional members, each found by `compress` when present:
///  - `kept_count(n, observation)`: the budget of a row of n entries (PyramidKV's layer budget);
///  - `kept_counts(dev, observation, cache, scores, std::int32_t* counts /*[batch * kv_heads]*/, ws)`:
///    per-row budgets computed from the scores (AdaKV's selection across heads); rows then keep their
///    own top counts[r]. Its scratch is part of `workspace_bytes`.
///
/// A **wrapper** holds its inner press in a member named `press`. Unless it defines its own, the
/// compression ratio and the row budget are the inner press's (`compression_ratio_of`,
/// `with_compression_ratio`, `detail::press_kept_count` look through `press`), as kvpress's proxy
/// properties do. A press whose result is not one top-k of one score array (Chunk, Block, Composed,
/// KeyRerotation, ...) instead defines
/// \code
///   template <class T, class L> std::size_t compress_workspace_bytes(CpuDevice const&, Observation<T> const&,
///                                                                    KVCacheView<T, L> const&) const;
///   template <class T, class L> void compress(CpuDevice const&, Observation<T> const&,
///                                             KVCacheView<T, L> const&, Workspace) const;
/// \endcode
/// and the free `compress` / `compress_workspace_bytes` hand over to them.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "kvcompress/cache/kv_cache_view.hpp"
#include "kvcompress/cache/view_checks.hpp"
#include "kvcompress/core/config.hpp"
#include "kvcompress/core/device.hpp"
#include "kvcompress/core/error.hpp"
#include "kvcompress/cpu/compact.hpp"
#include "kvcompress/cpu/select_topk.hpp"
#include "kvcompress/detail/finite.hpp"
#include "kvcompress/detail/parallel_for.hpp"
#include "kvcompress/detail/workspace.hpp"
#include "kvcompress/dist/shard_protocol.hpp"
#include "kvcompress/press/observation.hpp"

namespace kvcompress {

/// \brief Entries kept from n at ratio r, exactly as kvpress 0.5.5's `compute_n_kept`:
/// `int(n * (1 - r))` in double, at least 1 so that truncation never empties a row, and 0 for r ≥ 1
/// (evicting a whole layer on purpose). n=256, r=0.2 → 204; n=23, r=0.4 → 13; n=3, r=0.9 → 1.
/// Host and device (the CUDA path computes each row's budget from its device-side length).
[[nodiscard]] KVC_HOST_DEVICE std::int64_t kept_count(std::int64_t n, double ratio) noexcept {
  if (ratio >= 1.0) return 0;
  if (!(ratio >= 0.0)) return n;  // negative or NaN (compress rejects both first): nothing to evict
  // Above 2^53, n itself rounds in double (possibly up, to 2^63 at worst): the exact product
  // never exceeds n, so neither does the result.
  double const x = static_cast<double>(n) * (1.0 - ratio);
  if (x >= 0x1p63) return n;
  auto const k = static_cast<std::int64_t>(x);
  return k < 1 ? 1 : (k < n ? k : n);
}

/// \brief Throws unless ratio ∈ [0, 1).
inline void check_compression_ratio(double ratio) {
  KVC_CHECK(ratio >= 0.0 && ratio < 1.0, "compression_ratio must be in [0, 1), got " << ratio);
}

namespace detail {

template <class Press, class = void>
struct has_ratio_member : std::false_type {};
template <class Press>
struct has_ratio_member<Press, std::void_t<decltype(std::declval<Press&>().compression_ratio = 0.0)>>
    : std::true_type {};

template <class Press, class = void>
struct has_inner_press : std::false_type {};
template <class Press>
struct has_inner_press<Press, std::void_t<decltype(std::declval<Press const&>().press)>> : std::true_type {};

template <class>
inline constexpr bool dependent_false_v = false;

template <class Press, class T, class = void>
struct has_kept_count : std::false_type {};
template <class Press, class T>
struct has_kept_count<Press, T,
                      std::void_t<decltype(std::declval<Press const&>().kept_count(
                          std::int64_t{}, std::declval<Observation<T> const&>()))>> : std::true_type {};

template <class Press, class T, class L, class = void>
struct has_kept_counts : std::false_type {};
template <class Press, class T, class L>
struct has_kept_counts<Press, T, L,
                       std::void_t<decltype(std::declval<Press const&>().kept_counts(
                           std::declval<CpuDevice const&>(), std::declval<Observation<T> const&>(),
                           std::declval<KVCacheView<T, L> const&>(), std::declval<float const*>(),
                           std::declval<std::int32_t*>(), std::declval<Workspace&>()))>> : std::true_type {};

template <class Press, class T, class L, class = void>
struct has_compress_member : std::false_type {};
template <class Press, class T, class L>
struct has_compress_member<Press, T, L,
                           std::void_t<decltype(std::declval<Press const&>().compress(
                                           std::declval<CpuDevice const&>(), std::declval<Observation<T> const&>(),
                                           std::declval<KVCacheView<T, L> const&>(), std::declval<Workspace>())),
                                       decltype(std::declval<Press const&>().compress_workspace_bytes(
                                           std::declval<CpuDevice const&>(), std::declval<Observation<T> const&>(),
                                           std::declval<KVCacheView<T, L> const&>()))>> : std::true_type {};

}  // namespace detail

/// \brief The compression ratio of a press: its `compression_ratio`, or that of the press it wraps.
template <class Press>
[[nodiscard]] double compression_ratio_of(Press const& press) {
  if constexpr (detail::has_ratio_member<Press>::value) return press.compression_ratio;
  else if constexpr (detail::has_inner_press<Press>::value) return compression_ratio_of(press.press);
  else static_assert(detail::dependent_false_v<Press>, "a press needs a compression_ratio or an inner `press`");
}

/// \brief A copy of `press` with its compression ratio (or its inner press's) set to `ratio`.
template <class Press>
[[nodiscard]] Press with_compression_ratio(Press press, double ratio) {
  if constexpr (detail::has_ratio_member<Press>::value) press.compression_ratio = ratio;
  else if constexpr (detail::has_inner_press<Press>::value) press.press = with_compression_ratio(press.press, ratio);
  else static_assert(detail::dependent_false_v<Press>, "a press needs a compression_ratio or an inner `press`");
  return press;
}

namespace detail {

/// The budget of a row of n entries: the press's own `kept_count`, else its inner press's, else
/// `kept_count(n, ratio)`.
template <class Press, class T>
std::int64_t press_kept_count(Press const& press, std::int64_t n, Observation<T> const& obs) {
  if constexpr (has_kept_count<Press, T>::value) return press.kept_count(n, obs);
  else if constexpr (has_inner_press<Press>::value) return press_kept_count(press.press, n, obs);
  else return kept_count(n, press.compression_ratio);
}

/// Largest finite score over every live entry of every row (kvpress's `scores.max()`), or 0 for an
/// empty cache. Protected entries are then set to this + 1.
template <class T, class L>
float global_max(KVCacheView<T, L> const& cache, float const* scores) {
  float m = -INFINITY;
  std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads;
  for (std::int64_t r = 0; r < rows; ++r) {
    float const* s = scores + r * cache.extents.capacity;
    for (std::int32_t i = 0; i < cache.lengths[r]; ++i)
      if (s[i] > m) m = s[i];
  }
  return std::isfinite(m) ? m : 0.0f;
}

/// What every entry point checks before it reads anything: the view (the engine may have built the
/// aggregate itself, and updates lengths and block tables in place between calls) and the
/// observation. O(rows + pages + batch).
template <class T, class L>
void validate_inputs(Observation<T> const& obs, KVCacheView<T, L> const& cache) {
  validate_view(cache);
  validate_observation(obs, cache.extents.batch);
  validate_shard(obs, cache);
}

}  // namespace detail

/// \brief Scratch bytes that `compress(dev, press, obs, cache, workspace)` needs.
template <class Press, class T, class L>
[[nodiscard]] std::size_t compress_workspace_bytes(CpuDevice const& dev, Press const& press,
                                                   Observation<T> const& obs,
                                                   KVCacheView<T, L> const& cache) {
  detail::validate_inputs(obs, cache);
  std::size_t bytes = 0;
  if constexpr (detail::has_compress_member<Press, T, L>::value) {
    bytes = press.compress_workspace_bytes(dev, obs, cache);
  } else {
    std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads, cap = cache.extents.capacity;
    std::size_t const counts = detail::has_kept_counts<Press, T, L>::value ? Workspace::bytes_for<std::int32_t>(rows) : 0;
    bytes = detail::sum_bytes(Workspace::bytes_for<float>(detail::size_product(rows, cap)), counts,
                               Workspace::bytes_for<std::int32_t>(detail::size_product(detail::thread_count(dev, rows), cap)),
                               press.workspace_bytes(dev, obs, cache));
  }
  // The page check's bitmap is taken from the same memory before the press runs.
  return std::max(bytes, detail::view_check_bytes(cache));
}

namespace detail {

/// Throws, before anything moves, when `ws` is smaller than `compress_workspace_bytes` says. The size
/// depends on the device's thread count (one scratch row per thread), so the message names it.
template <class Press, class T, class L>
void require_workspace(CpuDevice const& dev, Press const& press, Observation<T> const& obs,
                       KVCacheView<T, L> const& cache, Workspace const& ws) {
  std::size_t const need = compress_workspace_bytes(dev, press, obs, cache);
  std::size_t const have = ws.capacity() - ws.used();
  KVC_CHECK(have >= need, "workspace too small: " << have << " bytes given, compress_workspace_bytes = " << need
                                                  << " for this press, cache and a device of "
                                                  << thread_count(dev, cache.extents.batch * cache.extents.kv_heads)
                                                  << " thread(s); size it with the device that compresses (CpuDevice{"
                                                  << dev.num_threads << "})");
}

/// `keep_topk`'s default: nothing to do once a row is compacted.
struct NothingAfterCompaction {
  void operator()(std::int64_t, std::int32_t const*, std::int32_t) const noexcept {}
};

}  // namespace detail

/// \brief Keeps, per (batch, kv head) row, the entries with the n_kept highest scores, moved to
/// the front of the row in position order; lengths (and positions, if present) are updated.
/// \param scores [batch, kv_heads, capacity]
/// \param n_kept callable: n_kept(n) for a row of n live entries, or n_kept(row, n)
/// \param after  called as after(row, idx, n_kept) once the row is compacted: slot j now holds the
///               entry that was at slot idx[j] (idx [n_kept], ascending)
template <class T, class L, class KeptFn, class AfterFn = detail::NothingAfterCompaction>
void keep_topk(CpuDevice const& dev, KVCacheView<T, L> const& cache, float const* scores, KeptFn&& n_kept,
               Workspace& ws, AfterFn&& after = AfterFn{}) {
  KVC_CHECK(scores != nullptr, "scores must not be null");
  detail::validate_view(cache);
  std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads;
  std::int64_t const cap = cache.extents.capacity;
  std::int32_t* idx = ws.take<std::int32_t>(detail::size_product(detail::thread_count(dev, rows), cap));
  detail::parallel_for(dev, rows, [&](std::int64_t r, int t) {
    std::int32_t const n = cache.lengths[r];
    std::int64_t k = 0;
    if constexpr (std::is_invocable_v<KeptFn&, std::int64_t, std::int64_t>) k = n_kept(r, static_cast<std::int64_t>(n));
    else k = n_kept(static_cast<std::int64_t>(n));
    std::int32_t const kk = static_cast<std::int32_t>(k < 0 ? 0 : (k > n ? n : k));
    std::int32_t* row_idx = idx + t * cap;
    cpu_impl::select_topk_row(scores + r * cap, n, kk, row_idx);
    cpu_impl::compact_row(dev, cache, r / cache.extents.kv_heads, r % cache.extents.kv_heads, row_idx, kk);
    after(r, static_cast<std::int32_t const*>(row_idx), kk);
  });
}

namespace detail {

/// Names the non-finite input behind a non-finite score: the cache and every activation the
/// observation carries are scanned (only on this error path), else the score itself is named.
template <class T, class L>
[[noreturn]] void report_non_finite(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache,
                                    std::int64_t row, std::int64_t slot, float value) {
  require_finite_cache(dev, cache);
  require_finite(obs.queries, "observation.queries");
  require_finite(obs.window_queries, "observation.window_queries");
  require_finite(obs.attention, "observation.attention");
  require_finite(obs.hidden_states, "observation.hidden_states");
  std::int64_t const d = cache.extents.head_dim, q_heads = obs.stats.q_heads;
  if (obs.stats.mean != nullptr && q_heads > 0)
    require_finite(make_tensor4(obs.stats.mean, {1, q_heads, 1, d}), "observation.stats.mean[0, head, 0, dim]");
  if (obs.stats.covariance != nullptr && q_heads > 0)
    require_finite(make_tensor4(obs.stats.covariance, {1, q_heads, d, d}),
                   "observation.stats.covariance[0, head, row, column]");
  KVC_THROW("the press produced a non-finite score " << value << " at (batch " << row / cache.extents.kv_heads
                                                     << ", kv head " << row % cache.extents.kv_heads << ", slot " << slot
                                                     << ") from finite inputs");
}

/// A NaN or ±Inf in an input a press reads poisons its scores (a whole row, through a softmax).
/// Checking the scores costs one pass over [batch, kv_heads, n] floats instead of one over the
/// cache; a press whose scores can stay finite despite a non-finite input checks its input itself.
template <class T, class L>
void require_finite_scores(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache,
                           float const* scores) {
  std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads, cap = cache.extents.capacity;
  for (std::int64_t r = 0; r < rows; ++r) {
    std::uint32_t top = 0;
    for (std::int32_t i = 0; i < cache.lengths[r]; ++i) top = std::max(top, exponent_bits(scores[r * cap + i]));
    if (top != kNonFiniteExponent) continue;
    for (std::int32_t i = 0; i < cache.lengths[r]; ++i)
      if (!std::isfinite(scores[r * cap + i])) report_non_finite(dev, obs, cache, r, i, scores[r * cap + i]);
  }
}

}  // namespace detail

/// \brief Scores every live entry with `press` into `scores` [batch, kv_heads, capacity].
/// A NaN or ±Inf in an input the press reads is a `kvcompress::Error` naming the element.
template <class Press, class T, class L>
void score(CpuDevice const& dev, Press const& press, Observation<T> const& obs,
           KVCacheView<T, L> const& cache, float* scores, Workspace& ws) {
  detail::shard_call(obs, cache, [&] {
    KVC_CHECK(scores != nullptr, "scores must not be null");
    detail::validate_inputs(obs, cache);
    press.score(dev, obs, cache, scores, ws);
    detail::require_finite_scores(dev, obs, cache, scores);
  });
}

/// \brief Allocating convenience: returns the scores [batch, kv_heads, capacity].
template <class Press, class T, class L>
[[nodiscard]] std::vector<float> score(CpuDevice const& dev, Press const& press, Observation<T> const& obs,
                                       KVCacheView<T, L> const& cache) {
  std::vector<float> scores;
  detail::shard_call(obs, cache, [&] {
    detail::validate_inputs(obs, cache);
    scores.resize(static_cast<std::size_t>(cache.extents.batch * cache.extents.kv_heads * cache.extents.capacity));
    std::vector<std::byte> scratch(press.workspace_bytes(dev, obs, cache));
    Workspace ws(scratch.data(), scratch.size());
    score(dev, press, obs, cache, scores.data(), ws);
  });
  return scores;
}

namespace detail {

/// Per-row budgets [batch * kv_heads] of a scorer press from its scores: `kept_counts` if the press
/// has it, else `press_kept_count` of each row's length.
template <class Press, class T, class L>
void row_kept_counts(CpuDevice const& dev, Press const& press, Observation<T> const& obs,
                     KVCacheView<T, L> const& cache, float const* scores, std::int32_t* counts, Workspace& ws) {
  if constexpr (has_kept_counts<Press, T, L>::value) {
    press.kept_counts(dev, obs, cache, scores, counts, ws);
  } else {
    std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads;
    for (std::int64_t r = 0; r < rows; ++r) {
      std::int64_t const k = press_kept_count(press, cache.lengths[r], obs);
      counts[r] = static_cast<std::int32_t>(std::clamp<std::int64_t>(k, 0, cache.lengths[r]));
    }
  }
}

/// `compress` on this rank (inside the tensor-parallel protocol when the layer is split).
template <class Press, class T, class L>
void compress_layer(CpuDevice const& dev, Press const& press, Observation<T> const& obs,
                    KVCacheView<T, L> const& cache, Workspace workspace) {
  detail::validate_inputs(obs, cache);
  if constexpr (detail::has_compress_member<Press, T, L>::value) {
    detail::require_workspace(dev, press, obs, cache, workspace);
    detail::check_unique_pages(cache, workspace);
    press.compress(dev, obs, cache, workspace);
  } else {
    double const ratio = compression_ratio_of(press);
    check_compression_ratio(ratio);
    if (ratio == 0.0) return;
    detail::require_workspace(dev, press, obs, cache, workspace);
    detail::check_unique_pages(cache, workspace);
    std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads;
    float* scores = workspace.take<float>(detail::size_product(rows, cache.extents.capacity));
    score(dev, press, obs, cache, scores, workspace);
    if constexpr (detail::has_kept_counts<Press, T, L>::value) {
      std::int32_t* counts = workspace.take<std::int32_t>(rows);
      press.kept_counts(dev, obs, cache, scores, counts, workspace);
      keep_topk(dev, cache, scores, [counts](std::int64_t r, std::int64_t) { return counts[r]; }, workspace);
    } else {
      keep_topk(dev, cache, scores, [&](std::int64_t n) { return detail::press_kept_count(press, n, obs); },
                workspace);
    }
  }
}

}  // namespace detail

/// \brief Compresses one layer's cache in place: score, keep `kept_count(n, ratio)` entries per
/// (batch, kv head) row (or the press's own budgets), compact in position order. Ratio 0 leaves the
/// cache untouched. A NaN or ±Inf in an input the press reads is rejected before anything moves.
/// A press with its own `compress` member (wrappers) is handed over to it.
/// Allocates nothing: all scratch comes from `workspace` (size: `compress_workspace_bytes`); on a
/// tensor-parallel shard (`observation.shard`) a press that does not communicate ends with the
/// group's handshake, whose table of size() × 8 integers is allocated.
template <class Press, class T, class L>
void compress(CpuDevice const& dev, Press const& press, Observation<T> const& obs,
              KVCacheView<T, L> const& cache, Workspace workspace) {
  detail::shard_call(obs, cache, [&] { detail::compress_layer(dev, press, obs, cache, workspace); });
}

#if !defined(__CUDACC__)
/// \brief The CUDA device's `compress` lives in `kvcompress/cuda.cuh`, which needs nvcc; this
/// overload turns a call from a host-compiled file into a message saying so.
template <class Press, class T, class L, class... Rest>
void compress(cuda const&, Press const&, Observation<T> const&, KVCacheView<T, L> const&, Rest&&...) {
  static_assert(detail::dependent_false_v<Press>,
                "kvcompress::cuda needs nvcc: compile this file as CUDA (.cu) and include kvcompress/cuda.cuh, "
                "or use kvcompress::cpu");
}
#endif

/// \brief Allocating convenience overload of `compress`.
template <class Press, class T, class L>
void compress(CpuDevice const& dev, Press const& press, Observation<T> const& obs,
              KVCacheView<T, L> const& cache) {
  // Sizing the scratch checks the inputs too: on a tensor-parallel shard it is part of the call.
  detail::shard_call(obs, cache, [&] {
    std::vector<std::byte> scratch(compress_workspace_bytes(dev, press, obs, cache));
    compress(dev, press, obs, cache, Workspace(scratch.data(), scratch.size()));
  });
}

}  // namespace kvcompress
