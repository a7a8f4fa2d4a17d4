#pragma once
/// \file
/// \brief Merge-on-evict (after Token Merging, arXiv 2210.09461, and D2O, arXiv 2406.13035): the
/// inner press chooses the kept entries of each row as usual (top n_kept), but an evicted entry's
/// value is folded into the kept entry whose key is most cosine-similar instead of being lost. Keys
/// are left as they are (RoPE stays valid).
///
/// Per row: for evicted entry e, s_e = max cosine similarity to a kept key (norms floored at 1e-6)
/// and t_e the kept entry that attains it. e merges if s_e ≥ similarity_threshold and, when
/// merge_fraction < 1, s_e is at least the (1 − merge_fraction) quantile (linear interpolation) of
/// the s of the merging candidates, the others counting as −∞ (kvpress's arithmetic: a quantile that
/// falls on a −∞ is NaN, and then nothing merges). Its weight is w_e = max(s_e, 0) · |v_e| /
/// (|v_e| + |v_t| + 1e-6), and a kept entry t that received any weight gets
/// v_t ← (v_t + Σ w_e v_e) / (1 + Σ w_e). The merged values are written into the kept slots before
/// the row is compacted, so the compaction carries them.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>

#include <Eigen/Core>

#include "kvcompress/detail/blocked_product.hpp"
#include "kvcompress/detail/gather.hpp"
#include "kvcompress/press/scorer.hpp"

namespace kvcompress {

namespace detail {

/// torch.quantile(x[0, m), q) with linear interpolation, in float: sorts x (in place) and lerps as
/// torch does (so a −∞ neighbour gives NaN).
inline float torch_quantile(float* x, std::int64_t m, double q) {
  std::sort(x, x + m);
  double const rank = q * static_cast<double>(m - 1);
  auto const lo = static_cast<std::int64_t>(std::floor(rank)), hi = static_cast<std::int64_t>(std::ceil(rank));
  auto const w = static_cast<float>(rank - static_cast<double>(lo));
  float const a = x[lo], b = x[hi];
  return w < 0.5f ? a + w * (b - a) : b - (b - a) * (1.0f - w);
}

}  // namespace detail

/// \tparam Press a scorer press
template <class Press>
struct MergingPress {
  Press press;
  /// Minimum cosine similarity for an evicted entry to merge.
  double similarity_threshold = 0.0;
  /// Fraction of the evicted entries (the most similar) that merge.
  double merge_fraction = 1.0;

  void check_parameters() const {
    KVC_CHECK(similarity_threshold >= 0.0 && similarity_threshold <= 1.0,
              "MergingPress similarity_threshold must be in [0, 1], got " << similarity_threshold);
    KVC_CHECK(merge_fraction > 0.0 && merge_fraction <= 1.0,
              "MergingPress merge_fraction must be in (0, 1], got " << merge_fraction);
  }

  /// Scratch floats per thread: kept keys, evicted keys and values [cap, d] each, kept values and the
  /// merge accumulator [cap, d] each, a block of similarities [kBlock, cap], s, Σw, a quantile copy and the
  /// two norms [cap] each.
  static constexpr std::int64_t kBlock = 64;

  template <class T, class L>
  [[nodiscard]] std::size_t compress_workspace_bytes(CpuDevice const& dev, Observation<T> const& obs,
                                                     KVCacheView<T, L> const& cache) const {
    std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads, cap = cache.extents.capacity;
    std::int64_t const d = cache.extents.head_dim, threads = detail::thread_count(dev, rows);
    std::size_t const per_thread = detail::size_sum(detail::size_product(5, cap, d), detail::size_product(kBlock, cap),
                                                    detail::size_product(5, cap));
    return detail::sum_bytes(Workspace::bytes_for<float>(detail::size_product(rows, cap)),
                             Workspace::bytes_for<float>(detail::size_product(threads, per_thread)),
                             Workspace::bytes_for<std::int32_t>(detail::size_product(threads, 3, cap)),
                             press.workspace_bytes(dev, obs, cache));
  }

  template <class T, class L>
  void compress(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, Workspace ws) const {
    double const ratio = compression_ratio_of(press);
    check_compression_ratio(ratio);
    check_parameters();
    if (ratio == 0.0) return;
    std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads, cap = cache.extents.capacity;
    std::int64_t const d = cache.extents.head_dim;
    float* scores = ws.take<float>(detail::size_product(rows, cap));
    kvcompress::score(dev, press, obs, cache, scores, ws);
    int const threads = detail::thread_count(dev, rows);
    std::size_t const per_thread = detail::size_sum(detail::size_product(5, cap, d), detail::size_product(kBlock, cap),
                                                    detail::size_product(5, cap));
    float* fbuf = ws.take<float>(detail::size_product(threads, per_thread));
    std::int32_t* ibuf = ws.take<std::int32_t>(detail::size_product(threads, 3, cap));
    using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

    detail::parallel_for(dev, rows, [&](std::int64_t r, int t) {
      std::int64_t const b = r / cache.extents.kv_heads, h = r % cache.extents.kv_heads, n = cache.lengths[r];
      std::int32_t* idx = ibuf + std::int64_t{3} * t * cap;  // [n] kept slots first (ascending), then the rest
      std::int32_t* evicted = idx + cap;                      // [n_evict] evicted slots, ascending
      std::int32_t* target = evicted + cap;                   // [n_evict] kept entry (index into idx) of each
      auto const k = static_cast<std::int32_t>(std::clamp<std::int64_t>(detail::press_kept_count(press, n, obs), 0, n));
      cpu_impl::select_topk_row(scores + r * cap, static_cast<std::int32_t>(n), k, idx);
      std::int64_t const e = n - k;
      if (e > 0 && k > 0) {
        float* kept_keys = fbuf + static_cast<std::size_t>(t) * per_thread;  // [k, d] unit rows
        float* evict_keys = kept_keys + cap * d;                             // [e, d] unit rows
        float* evict_values = evict_keys + cap * d;                          // [e, d]
        float* kept_values = evict_values + cap * d;                         // [k, d]
        float* accum = kept_values + cap * d;                                // [k, d] Σ w·v
        float* sim = accum + cap * d;                                        // [kBlock, k]
        float* best = sim + kBlock * cap;                                    // [e] s
        float* weight_sum = best + cap;                                      // [k] Σ w
        float* quantile = weight_sum + cap;                                  // [e] scratch
        float* evict_norm = quantile + cap;                                  // [e]
        float* kept_norm = evict_norm + cap;                                 // [k]
        std::int64_t j = 0, m = 0;
        for (std::int64_t i = 0; i < n; ++i) {  // the complement of the kept slots, ascending
          if (j < k && idx[j] == i) ++j;
          else evicted[m++] = static_cast<std::int32_t>(i);
        }
        auto const unit_rows = [d](float* x, std::int64_t count) {
          for (std::int64_t i = 0; i < count; ++i) {
            double sq = 0.0;
            for (std::int64_t c = 0; c < d; ++c) sq += double(x[i * d + c]) * x[i * d + c];
            float const norm = std::max(static_cast<float>(std::sqrt(sq)), 1e-6f);
            for (std::int64_t c = 0; c < d; ++c) x[i * d + c] /= norm;
          }
        };
        auto const norms = [d](float const* x, std::int64_t count, float* out) {
          for (std::int64_t i = 0; i < count; ++i) {
            double sq = 0.0;
            for (std::int64_t c = 0; c < d; ++c) sq += double(x[i * d + c]) * x[i * d + c];
            out[i] = static_cast<float>(std::sqrt(sq));
          }
        };
        for (std::int64_t i = 0; i < k; ++i) {
          detail::gather_keys(cache, b, h, idx[i], 1, kept_keys + i * d);
          detail::gather_values(cache, b, h, idx[i], 1, kept_values + i * d);
        }
        for (std::int64_t i = 0; i < e; ++i) {
          detail::gather_keys(cache, b, h, evicted[i], 1, evict_keys + i * d);
          detail::gather_values(cache, b, h, evicted[i], 1, evict_values + i * d);
        }
        unit_rows(kept_keys, k);
        unit_rows(evict_keys, e);
        norms(kept_values, k, kept_norm);
        norms(evict_values, e, evict_norm);
        Eigen::Map<Matrix const> const kk(kept_keys, k, d);
        for (std::int64_t lo = 0; lo < e; lo += kBlock) {  // s_e and t_e, a block of evicted entries at a time
          std::int64_t const rows_here = std::min(kBlock, e - lo);
          Eigen::Map<Matrix> s(sim, rows_here, k);
          detail::blocked_product<false>(s, Eigen::Map<Matrix const>(evict_keys + lo * d, rows_here, d), kk.transpose());
          for (std::int64_t i = 0; i < rows_here; ++i) {
            Eigen::Index arg = 0;
            best[lo + i] = s.row(i).maxCoeff(&arg);  // the first maximum, in position order
            target[lo + i] = static_cast<std::int32_t>(arg);
          }
        }
        auto const threshold = static_cast<float>(similarity_threshold);
        bool any = false;
        for (std::int64_t i = 0; i < e; ++i) any = any || best[i] >= threshold;
        float gate = -std::numeric_limits<float>::infinity();
        if (merge_fraction < 1.0 && any) {
          for (std::int64_t i = 0; i < e; ++i)
            quantile[i] = best[i] >= threshold ? best[i] : -std::numeric_limits<float>::infinity();
          gate = detail::torch_quantile(quantile, e, 1.0 - merge_fraction);
        }
        std::fill(accum, accum + k * d, 0.0f);
        std::fill(weight_sum, weight_sum + k, 0.0f);
        for (std::int64_t i = 0; i < e; ++i) {
          bool const merges = best[i] >= threshold && (merge_fraction >= 1.0 || best[i] >= gate);
          float w = merges ? std::max(best[i], 0.0f) : 0.0f;
          w = w * evict_norm[i] / (evict_norm[i] + kept_norm[target[i]] + 1e-6f);
          for (std::int64_t c = 0; c < d; ++c) accum[target[i] * d + c] += w * evict_values[i * d + c];
          weight_sum[target[i]] += w;
        }
        for (std::int64_t i = 0; i < k; ++i) {
          if (!(weight_sum[i] > 0.0f)) continue;
          for (std::int64_t c = 0; c < d; ++c)
            cache.value(b, h, idx[i], c) = from_float<T>((kept_values[i * d + c] + accum[i * d + c]) / (1.0f + weight_sum[i]));
        }
      }
      cpu_impl::compact_row(dev, cache, b, h, idx, k);
    });
  }
};

template <class Press>
MergingPress(Press) -> MergingPress<Press>;
template <class Press>
MergingPress(Press, double) -> MergingPress<Press>;
template <class Press>
MergingPress(Press, double, double) -> MergingPress<Press>;

}  // namespace kvcompress
