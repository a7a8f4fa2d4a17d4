#pragma once
/// \file
/// \brief KVCompose (arXiv 2509.05165): budgets across layers and heads from the attention of a second
/// pass over the context. After the prefill, the engine feeds the context (or the prompts it expects)
/// again; each layer's attention of that replay pass to the first `context_length` keys is folded into
/// per-(layer, query head) statistics (`agg_task` over the batch and the replay rows), then
///  1. scores[ℓ, g, i] = `agg_group` over the query heads of kv head g (× ‖v‖ if `add_v_norm`), plus
///     the mean over the layer's kv heads if `add_mean_across_heads`;
///  2. each head's composite is its scores sorted in descending order, each layer's the `agg_head`
///     of its heads' composites; the first `keep_token_lower_bound` composite entries get +1e9 and
///     layer 0's composite is raised to the elementwise maximum over layers;
///  3. the global top int(numel·(1 − ratio)) composite entries give each (layer, head) — unstructured —
///     or each layer — structured, at least max(1, keep_token_lower_bound) — its count;
///  4. each row keeps its top-count entries of its head's scores, in position order.
///
/// kvpress (structured) keeps the same count in every head of a layer, as here; unstructured, it masks
/// the losers with fake keys and frees nothing, while here each head's row really shortens.
/// Scores are shared by the batch (the statistics pool it), so every batch element keeps the same sets.
///
/// On a tensor-parallel shard (`kvcompose_plan(..., shard)`), each rank's statistics and value norms
/// hold its kv heads' query heads; step 1's per-head scores (before the mean) go to their global
/// rows of a zeroed [layers, layer kv heads, context_length] table, one float all-reduce (each value
/// added to zeros: exact), and every rank computes the rest of the plan as one process does on the
/// whole model, bit for bit: the mean over heads and the composites read every head in the layer's
/// order. `kvcompose_compress(..., shard)` then keeps each rank's rows of that plan.
///
/// Use: `KVComposeStatistics stats(press, layers, q_heads, context_length)`; `stats.add(dev, ℓ,
/// attention)` for each layer of each replay pass; `auto plan = kvcompose_plan(dev, press, stats,
/// kv_heads)`; `kvcompose_compress(dev, plan, ℓ, cache_ℓ)` for each layer. The statistics and the plan
/// own their memory (sized by the model once per prefill, [layers, heads, context_length] floats).

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <numeric>
#include <vector>

#include "kvcompress/cpu/select_topk.hpp"
#include "kvcompress/detail/gather.hpp"
#include "kvcompress/dist/layer_rows.hpp"
#include "kvcompress/dist/shard_protocol.hpp"
#include "kvcompress/press/scorer.hpp"

namespace kvcompress {

/// \brief How KVCompose folds a set of vectors into one: elementwise maximum or mean.
enum class KVComposeAggregation { kMax, kMean };

struct KVComposePress {
  /// Every head of a layer keeps the same number of entries (true) or its own (false).
  bool structured = true;
  double compression_ratio = 0.0;
  KVComposeAggregation agg_task = KVComposeAggregation::kMax;   ///< over the batch and replay rows
  KVComposeAggregation agg_group = KVComposeAggregation::kMean;  ///< over a kv head's query heads
  KVComposeAggregation agg_head = KVComposeAggregation::kMean;   ///< over a layer's sorted head scores
  bool add_v_norm = false;             ///< multiply each score by its value's L2 norm
  bool add_mean_across_heads = true;   ///< add the layer's mean over kv heads to every head
  std::int64_t keep_token_lower_bound = 0;  ///< entries every layer keeps at least

  void check() const {
    check_compression_ratio(compression_ratio);
    KVC_CHECK(keep_token_lower_bound >= 0,
              "KVComposePress keep_token_lower_bound must be non-negative, got " << keep_token_lower_bound);
  }
};

/// \brief KVCompose's task statistics: per (layer, query head, context entry), `agg_task` of the
/// attention that the replay passes' rows paid to the entry.
class KVComposeStatistics {
 public:
  KVComposeStatistics(KVComposePress const& press, int num_layers, std::int64_t q_heads, std::int64_t context_length)
      : agg_(press.agg_task), layers_(num_layers), q_heads_(q_heads), context_(context_length) {
    press.check();
    KVC_CHECK(num_layers > 0, "KVComposeStatistics num_layers must be positive, got " << num_layers);
    KVC_CHECK(q_heads > 0, "KVComposeStatistics q_heads must be positive, got " << q_heads);
    KVC_CHECK(context_length > 0, "KVComposeStatistics context_length must be positive, got " << context_length);
    double neutral = 0.0;  // of the running sum; the running maximum starts below every probability
    if (agg_ == KVComposeAggregation::kMax) neutral = -std::numeric_limits<double>::infinity();
    data_.assign(detail::size_product(num_layers, q_heads, context_length), neutral);
    rows_.assign(static_cast<std::size_t>(num_layers), 0);
  }

  /// \brief Folds one replay pass of layer `layer` in.
  /// \param attention [batch, q_heads, replay_len, n] probabilities, n > context_length (the replay's
  ///                  own keys follow the context's); only the first context_length columns are read
  template <class T>
  void add(CpuDevice const& dev, int layer, Tensor4<T> const& attention) {
    detail::validate_tensor(attention, "KVComposeStatistics attention");
    KVC_CHECK(layer >= 0 && layer < layers_, "KVComposeStatistics layer must be in [0, " << layers_ << "), got " << layer);
    KVC_CHECK(attention.shape[1] == q_heads_, "KVComposeStatistics attention has " << attention.shape[1]
                                                  << " query heads, the statistics " << q_heads_);
    KVC_CHECK(attention.shape[3] > context_, "KVComposeStatistics attention must cover the context_length = "
                                                 << context_ << " keys and the replay's own, got n = " << attention.shape[3]);
    std::int64_t const batch = attention.shape[0], q = attention.shape[2];
    detail::parallel_for(dev, q_heads_, [&](std::int64_t j, int) {
      double* out = data_.data() + (layer * q_heads_ + j) * context_;
      for (std::int64_t b = 0; b < batch; ++b)
        for (std::int64_t t = 0; t < q; ++t)
          for (std::int64_t i = 0; i < context_; ++i) {
            double const a = to_float(attention(b, j, t, i));
            KVC_CHECK(std::isfinite(a), "KVComposeStatistics attention[" << b << ", " << j << ", " << t << ", " << i
                                                                         << "] is not finite: " << a);
            out[i] = agg_ == KVComposeAggregation::kMax ? std::max(out[i], a) : out[i] + a;
          }
    });
    rows_[static_cast<std::size_t>(layer)] += batch * q;
  }

  /// \brief The statistic of (layer, query head j, entry i); every layer must have had a pass.
  [[nodiscard]] float value(int layer, std::int64_t j, std::int64_t i) const {
    double const x = data_[static_cast<std::size_t>((layer * q_heads_ + j) * context_ + i)];
    if (agg_ == KVComposeAggregation::kMax) return static_cast<float>(x);
    return static_cast<float>(x / static_cast<double>(rows_[static_cast<std::size_t>(layer)]));
  }
  [[nodiscard]] int num_layers() const noexcept { return layers_; }
  [[nodiscard]] std::int64_t q_heads() const noexcept { return q_heads_; }
  [[nodiscard]] std::int64_t context_length() const noexcept { return context_; }
  [[nodiscard]] std::int64_t rows(int layer) const { return rows_[static_cast<std::size_t>(layer)]; }

 private:
  KVComposeAggregation agg_;
  int layers_;
  std::int64_t q_heads_, context_;
  std::vector<double> data_;        // [layers, q_heads, context]: running maximum or sum
  std::vector<std::int64_t> rows_;  // [layers]: rows folded in (the mean's divisor)
};

/// \brief What KVCompose keeps: each (layer, kv head)'s scores and count.
struct KVComposePlan {
  int num_layers = 0;
  std::int64_t kv_heads = 0, context_length = 0;
  std::vector<float> scores;       ///< [layers, kv_heads, context_length]
  std::vector<std::int32_t> kept;  ///< [layers, kv_heads] entries each row of the layer keeps
};

namespace detail {

inline float kvcompose_fold(KVComposeAggregation agg, float const* x, std::int64_t count, std::int64_t stride) {
  float acc = agg == KVComposeAggregation::kMax ? -INFINITY : 0.0f;
  for (std::int64_t k = 0; k < count; ++k)
    acc = agg == KVComposeAggregation::kMax ? std::max(acc, x[k * stride]) : acc + x[k * stride];
  return agg == KVComposeAggregation::kMax ? acc : acc / static_cast<float>(count);
}

/// Entries of `values` [bins, len] among the global top `keep` (ties: the lower index), counted per bin.
inline void kvcompose_top_counts(std::vector<float> const& values, std::int64_t len, std::int64_t keep,
                                 std::vector<std::int32_t>& counts) {
  std::vector<std::int32_t> ids(values.size());
  std::iota(ids.begin(), ids.end(), 0);
  auto const k = static_cast<std::ptrdiff_t>(std::min<std::int64_t>(keep, static_cast<std::int64_t>(ids.size())));
  std::nth_element(ids.begin(), ids.begin() + k, ids.end(), cpu_impl::RanksBefore{values.data()});
  counts.assign(values.size() / static_cast<std::size_t>(len), 0);
  for (std::ptrdiff_t i = 0; i < k; ++i) ++counts[static_cast<std::size_t>(ids[static_cast<std::size_t>(i)] / len)];
}

}  // namespace detail

/// \brief ‖v‖₂ of batch element 0's first context_length entries of one layer, for `add_v_norm`.
/// \param out [kv_heads, context_length]
template <class T, class L>
void kvcompose_value_norms(KVCacheView<T, L> const& cache, std::int64_t context_length, float* out) {
  detail::validate_view(cache);
  KVC_CHECK(out != nullptr, "kvcompose_value_norms out must not be null");
  std::int64_t const d = cache.extents.head_dim;
  std::vector<float> v(static_cast<std::size_t>(d));
  for (std::int64_t h = 0; h < cache.extents.kv_heads; ++h) {
    KVC_CHECK(cache.lengths[h] >= context_length, "kvcompose_value_norms: row (0, " << h << ") holds " << cache.lengths[h]
                                                     << " entries, fewer than context_length = " << context_length);
    for (std::int64_t i = 0; i < context_length; ++i) {
      detail::gather_values(cache, 0, h, i, 1, v.data());
      double s = 0.0;
      for (float x : v) s += double(x) * x;
      out[h * context_length + i] = static_cast<float>(std::sqrt(s));
    }
  }
}

namespace detail {

/// Step 1 of the plan before the mean over heads, for the statistics' kv heads.
/// \param out [layers, kv_heads, ctx]
inline void kvcompose_head_scores(CpuDevice const& dev, KVComposePress const& press, KVComposeStatistics const& stats,
                                  std::int64_t kv_heads, float const* value_norms, float* out) {
  std::int64_t const ctx = stats.context_length(), G = stats.q_heads() / kv_heads;
  parallel_for(dev, stats.num_layers(), [&](std::int64_t l, int) {
    std::vector<float> group(static_cast<std::size_t>(G));
    float* s = out + l * kv_heads * ctx;  // [kv_heads, ctx]
    for (std::int64_t g = 0; g < kv_heads; ++g)
      for (std::int64_t i = 0; i < ctx; ++i) {
        for (std::int64_t k = 0; k < G; ++k) group[static_cast<std::size_t>(k)] = stats.value(static_cast<int>(l), g * G + k, i);
        float x = kvcompose_fold(press.agg_group, group.data(), G, 1);
        if (press.add_v_norm) x *= value_norms[(l * kv_heads + g) * ctx + i];
        s[g * ctx + i] = x;
      }
  });
}

/// Steps 1 (the mean) to 3 on the whole model's head scores, `plan.scores` [layers, kv_heads, ctx].
inline void kvcompose_budgets(CpuDevice const& dev, KVComposePress const& press, KVComposePlan& plan) {
  std::int64_t const kv_heads = plan.kv_heads, ctx = plan.context_length, lb = press.keep_token_lower_bound;
  int const L = plan.num_layers;
  std::vector<float> per_head(plan.scores.size()), per_layer(size_product(L, ctx));
  parallel_for(dev, L, [&](std::int64_t l, int) {
    float* s = plan.scores.data() + l * kv_heads * ctx;  // [kv_heads, ctx]
    if (press.add_mean_across_heads)
      for (std::int64_t i = 0; i < ctx; ++i) {
        float const mean = kvcompose_fold(KVComposeAggregation::kMean, s + i, kv_heads, ctx);
        for (std::int64_t g = 0; g < kv_heads; ++g) s[g * ctx + i] += mean;
      }
    float* c = per_head.data() + l * kv_heads * ctx;
    for (std::int64_t g = 0; g < kv_heads; ++g) {
      std::copy(s + g * ctx, s + (g + 1) * ctx, c + g * ctx);
      std::sort(c + g * ctx, c + (g + 1) * ctx, std::greater<>());
    }
    for (std::int64_t i = 0; i < ctx; ++i)
      per_layer[static_cast<std::size_t>(l * ctx + i)] = kvcompose_fold(press.agg_head, c + i, kv_heads, ctx);
    for (std::int64_t g = 0; g < kv_heads; ++g)
      for (std::int64_t i = 0; i < std::min(lb, ctx); ++i) c[g * ctx + i] += 1e9f;
    for (std::int64_t i = 0; i < std::min(lb, ctx); ++i) per_layer[static_cast<std::size_t>(l * ctx + i)] += 1e9f;
  });
  for (std::int64_t i = 0; i < ctx; ++i)
    for (int l = 1; l < L; ++l)
      per_layer[static_cast<std::size_t>(i)] = std::max(per_layer[static_cast<std::size_t>(i)],
                                                        per_layer[static_cast<std::size_t>(l * ctx + i)]);
  std::vector<std::int32_t> counts;
  if (press.structured) {
    kvcompose_top_counts(per_layer, ctx, kept_count(L * ctx, press.compression_ratio), counts);
    std::int64_t const floor = std::max<std::int64_t>(1, lb);
    plan.kept.resize(static_cast<std::size_t>(L * kv_heads));
    for (int l = 0; l < L; ++l)
      std::fill_n(plan.kept.begin() + l * kv_heads, kv_heads,
                  static_cast<std::int32_t>(std::min(ctx, std::max<std::int64_t>(floor, counts[static_cast<std::size_t>(l)]))));
  } else {
    kvcompose_top_counts(per_head, ctx, kept_count(L * kv_heads * ctx, press.compression_ratio), plan.kept);
  }
}

}  // namespace detail

/// \brief KVCompose's scores and budgets from the replay statistics.
/// \param kv_heads    the kv heads the statistics' query heads belong to (this rank's on a shard)
/// \param value_norms [layers, kv_heads, context_length] (`kvcompose_value_norms` of each layer), read
///                    only with `add_v_norm`
/// \param shard       on a tensor-parallel shard: this rank holds kv heads [shard.first_kv_head,
///                    + kv_heads) of `shard.kv_heads`; the plan returned is the whole model's
///                    (`kv_heads` = the layer's), the same on every rank
[[nodiscard]] inline KVComposePlan kvcompose_plan(CpuDevice const& dev, KVComposePress const& press,
                                                  KVComposeStatistics const& stats, std::int64_t kv_heads,
                                                  float const* value_norms = nullptr, TensorParallelShard const& shard = {}) {
  std::int64_t const heads = shard.kv_heads > 0 ? shard.kv_heads : kv_heads;
  int const L = stats.num_layers();
  std::int64_t const ctx = stats.context_length();
  detail::ShardRecord const record{kv_heads, heads, 1, L};
  KVComposePlan plan{L, heads, ctx, {}, {}};
  detail::shard_call(shard, record, [&] {
    press.check();
    std::int64_t const H = stats.q_heads();
    KVC_CHECK(kv_heads > 0 && H % kv_heads == 0, "kvcompose_plan kv_heads must divide the statistics' q_heads = "
                                                     << H << ", got " << kv_heads);
    detail::validate_shard(shard, kv_heads, "kvcompose_plan shard");
    KVC_CHECK(!press.add_v_norm || value_norms != nullptr, "KVComposePress add_v_norm needs value_norms");
    for (int l = 0; l < L; ++l)
      KVC_CHECK(stats.rows(l) > 0, "kvcompose_plan: layer " << l << " has no replay pass in the statistics");
    KVC_CHECK(static_cast<std::int64_t>(L) * heads * ctx <= std::numeric_limits<std::int32_t>::max(),
              "KVCompose ranks layers · kv_heads · context_length = " << L * heads * ctx << " entries with int32 ids");
    plan.scores.assign(detail::size_product(L, heads, ctx), 0.0f);
    if (!shard.split()) {
      detail::kvcompose_head_scores(dev, press, stats, kv_heads, value_norms, plan.scores.data());
    } else {
      std::vector<float> mine(detail::size_product(L, kv_heads, ctx));  // [layers, kv_heads, ctx]
      detail::kvcompose_head_scores(dev, press, stats, kv_heads, value_norms, mine.data());
      for (std::size_t i = 0; i < mine.size(); ++i)
        KVC_CHECK(std::isfinite(mine[i]), "kvcompose_plan: the score of (layer " << i / static_cast<std::size_t>(kv_heads * ctx)
                                                                                  << ", kv head " << i / static_cast<std::size_t>(ctx) % static_cast<std::size_t>(kv_heads)
                                                                                  << ", entry " << i % static_cast<std::size_t>(ctx)
                                                                                  << ") is not finite: " << mine[i]);
      std::vector<std::int64_t> table(static_cast<std::size_t>(shard.communicator->size() + 1) * detail::kFields);
      // The ranks must plan the same context with the same ratio.
      detail::join_shard(shard, record, ctx, detail::bits_of(press.compression_ratio), table.data());
      for (int l = 0; l < L; ++l)
        std::copy_n(mine.begin() + static_cast<std::ptrdiff_t>(l * kv_heads * ctx), kv_heads * ctx,
                    plan.scores.begin() + static_cast<std::ptrdiff_t>((l * heads + shard.first_kv_head) * ctx));
      shard.communicator->all_reduce(plan.scores.data(), plan.scores.size(), ReduceOp::sum);
    }
    detail::kvcompose_budgets(dev, press, plan);
  });
  return plan;
}

/// \brief Scratch bytes of `kvcompose_compress` on one layer's cache.
template <class T, class L>
[[nodiscard]] std::size_t kvcompose_compress_workspace_bytes(CpuDevice const& dev, KVCacheView<T, L> const& cache) {
  detail::validate_view(cache);
  std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads, cap = cache.extents.capacity;
  return std::max(detail::sum_bytes(Workspace::bytes_for<float>(detail::size_product(rows, cap)),
                                    Workspace::bytes_for<std::int32_t>(detail::size_product(detail::thread_count(dev, rows), cap))),
                  detail::view_check_bytes(cache));
}

/// \brief Compacts layer `layer`'s cache to the plan: every row (b, g) keeps its `plan.kept[layer, g]`
/// best entries of `plan.scores[layer, g]`, in position order. Each row must hold the context's
/// `plan.context_length` entries. On a tensor-parallel shard the cache holds kv heads
/// [shard.first_kv_head, + its kv_heads) of the plan's (the whole model's) and keeps their rows.
template <class T, class L>
void kvcompose_compress(CpuDevice const& dev, KVComposePlan const& plan, int layer, KVCacheView<T, L> const& cache,
                        Workspace ws, TensorParallelShard const& shard = {}) {
  auto const& e = cache.extents;
  detail::ShardRecord const record{e.kv_heads, shard.kv_heads > 0 ? shard.kv_heads : e.kv_heads, e.batch, layer};
  detail::shard_call(shard, record, [&] {
    detail::validate_view(cache);
    KVC_CHECK(layer >= 0 && layer < plan.num_layers, "kvcompose_compress layer must be in [0, " << plan.num_layers << "), got " << layer);
    detail::validate_shard(shard, e.kv_heads, "kvcompose_compress shard");
    std::int64_t const first = shard.first_kv_head;
    KVC_CHECK(record.layer_heads == plan.kv_heads, "kvcompose_compress: the "
                                                       << (shard.split() ? "layer (shard.kv_heads)" : "cache") << " has "
                                                       << record.layer_heads << " kv heads, the plan " << plan.kv_heads);
    std::int64_t const rows = e.batch * e.kv_heads, ctx = plan.context_length;
    for (std::int64_t r = 0; r < rows; ++r)
      KVC_CHECK(cache.lengths[r] == ctx, "kvcompose_compress: row " << r << " holds " << cache.lengths[r]
                                             << " entries, the plan scores the context_length = " << ctx);
    KVC_CHECK(ws.capacity() - ws.used() >= kvcompose_compress_workspace_bytes(dev, cache),
              "workspace too small: " << ws.capacity() - ws.used() << " bytes given, kvcompose_compress_workspace_bytes = "
                                      << kvcompose_compress_workspace_bytes(dev, cache));
    detail::check_unique_pages(cache, ws);
    float* scores = ws.take<float>(detail::size_product(rows, e.capacity));  // [rows, capacity]
    for (std::int64_t r = 0; r < rows; ++r)
      std::copy_n(plan.scores.data() + (layer * plan.kv_heads + first + r % e.kv_heads) * ctx, ctx, scores + r * e.capacity);
    std::int32_t const* kept = plan.kept.data() + layer * plan.kv_heads + first;
    keep_topk(dev, cache, scores, [&](std::int64_t r, std::int64_t) { return kept[r % e.kv_heads]; }, ws);
  });
}

}  // namespace kvcompress
