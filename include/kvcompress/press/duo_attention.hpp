#pragma once
/// \file
/// \brief DuoAttention (arXiv 2410.10819): retrieval heads keep their whole cache, streaming heads
/// only sink_size leading and recent_size trailing entries. A head's score says how much it needs the
/// full context; the head_compression_ratio share of all (layer, kv head) pairs with the lowest scores
/// become streaming heads: round(layers · kv_heads · ratio) of them (Python's rounding), lowest score
/// first (ties: the lower layer, then the lower head).
///
/// The scores are either the pattern DuoAttention's authors trained for a model (kvpress downloads
/// it with its sink and recent sizes; here the caller hands both over) or kvpress's on-the-fly
/// estimate, `duo_attention_sample_scores` averaged over samples (kvpress: 50 BookSum chapters,
/// sink 128, recent 256). kvpress masks the middle of a streaming head; here the head's row really
/// shortens to sink_size + recent_size entries. The pattern covers every head of the model, so on a
/// tensor-parallel shard each head looks up its global head and nothing is exchanged.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "kvcompress/press/scorer.hpp"
#include "kvcompress/rope/rotary_embedding.hpp"

namespace kvcompress {

struct DuoAttentionPress {
  /// Fraction of all (layer, kv head) pairs that become streaming heads.
  double head_compression_ratio = 0.0;
  /// Leading entries a streaming head keeps (kvpress's on-the-fly estimate uses 128).
  std::int64_t sink_size = 128;
  /// Trailing entries a streaming head keeps (kvpress's on-the-fly estimate uses 256).
  std::int64_t recent_size = 256;
  /// [num_layers, kv_heads] how much each head needs the full context (higher: retrieval head)
  float const* head_scores = nullptr;
  std::int64_t num_layers = 0;
  std::int64_t kv_heads = 0;

  void check_parameters() const {
    KVC_CHECK(head_compression_ratio >= 0.0 && head_compression_ratio <= 1.0,
              "DuoAttentionPress head_compression_ratio must be in [0, 1], got " << head_compression_ratio);
    KVC_CHECK(sink_size >= 0, "DuoAttentionPress sink_size must be non-negative, got " << sink_size);
    KVC_CHECK(recent_size >= 0, "DuoAttentionPress recent_size must be non-negative, got " << recent_size);
    KVC_CHECK(head_scores != nullptr,
              "DuoAttentionPress needs head_scores [num_layers, kv_heads] (a DuoAttention pattern or "
              "duo_attention_sample_scores)");
    KVC_CHECK(num_layers > 0 && kv_heads > 0,
              "DuoAttentionPress head_scores shape [" << num_layers << ", " << kv_heads << "] must be positive");
  }

  /// Number of streaming heads over all layers: round(layers · kv_heads · ratio), ties to even.
  [[nodiscard]] std::int64_t streaming_count() const {
    check_parameters();
    return static_cast<std::int64_t>(std::nearbyint(static_cast<double>(num_layers * kv_heads) * head_compression_ratio));
  }

  /// \param streaming [num_layers * kv_heads] out: 1 for a streaming head
  /// \param order     [num_layers * kv_heads] scratch
  void streaming_mask(std::uint8_t* streaming, std::int64_t* order) const {
    std::int64_t const total = num_layers * kv_heads, n = streaming_count();
    std::iota(order, order + total, 0);
    // Lowest score first, ties by (layer, head); std::sort, because std::stable_sort may allocate.
    std::sort(order, order + total, [&](std::int64_t a, std::int64_t b) {
      return head_scores[a] < head_scores[b] || (head_scores[a] == head_scores[b] && a < b);
    });
    std::fill(streaming, streaming + total, std::uint8_t{0});
    for (std::int64_t i = 0; i < n; ++i) streaming[order[i]] = 1;
  }

  /// The fraction of a layer of n entries that the press removes over all layers (kvpress's
  /// compression_ratio after a forward pass): streaming share · (1 − (sink + recent) / n).
  [[nodiscard]] double compression_ratio_for(std::int64_t n) const {
    double const share = static_cast<double>(streaming_count()) / static_cast<double>(num_layers * kv_heads);
    return n > 0 ? share * (1.0 - static_cast<double>(sink_size + recent_size) / static_cast<double>(n)) : 0.0;
  }

  template <class T, class L>
  [[nodiscard]] std::size_t compress_workspace_bytes(CpuDevice const& dev, Observation<T> const&,
                                                     KVCacheView<T, L> const& cache) const {
    std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads;
    return detail::sum_bytes(Workspace::bytes_for<std::uint8_t>(detail::size_product(num_layers, kv_heads)),
                             Workspace::bytes_for<std::int64_t>(detail::size_product(num_layers, kv_heads)),
                             Workspace::bytes_for<std::int32_t>(
                                 detail::size_product(detail::thread_count(dev, rows), cache.extents.capacity)));
  }

  template <class T, class L>
  void compress(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, Workspace ws) const {
    check_parameters();
    KVC_CHECK(obs.layer_idx >= 0 && obs.layer_idx < num_layers,
              "DuoAttentionPress head_scores hold " << num_layers << " layers, observation.layer_idx = " << obs.layer_idx);
    KVC_CHECK(kv_heads == detail::layer_kv_heads(obs, cache),
              "DuoAttentionPress head_scores hold " << kv_heads << " kv heads, the "
                                                    << (obs.shard.split() ? "layer (observation.shard.kv_heads) " : "cache ")
                                                    << detail::layer_kv_heads(obs, cache));
    std::int64_t const total = num_layers * kv_heads, n_streaming = streaming_count();
    if (n_streaming == 0) return;
    auto* streaming = ws.take<std::uint8_t>(static_cast<std::size_t>(total));
    streaming_mask(streaming, ws.take<std::int64_t>(static_cast<std::size_t>(total)));
    // [heads]: this process's heads of the layer's row (on a tensor-parallel shard, from its first head)
    std::uint8_t const* layer = streaming + obs.layer_idx * kv_heads + obs.shard.first_kv_head;
    std::int64_t const heads = cache.extents.kv_heads, rows = cache.extents.batch * heads, cap = cache.extents.capacity;
    std::int32_t* idx = ws.take<std::int32_t>(detail::size_product(detail::thread_count(dev, rows), cap));
    // Every streaming row keeps its first sink_size and last recent_size slots.
    detail::parallel_for(dev, rows, [&](std::int64_t r, int t) {
      std::int64_t const n = cache.lengths[r];
      if (layer[r % heads] == 0 || n <= sink_size + recent_size) return;
      std::int32_t* row_idx = idx + t * cap;  // [cap]
      std::int32_t k = 0;
      for (std::int64_t i = 0; i < sink_size; ++i) row_idx[k++] = static_cast<std::int32_t>(i);
      for (std::int64_t i = n - recent_size; i < n; ++i) row_idx[k++] = static_cast<std::int32_t>(i);
      cpu_impl::compact_row(dev, cache, r / heads, r % heads, row_idx, k);
    });
  }
};

/// \brief kvpress's on-the-fly DuoAttention score of one layer for one sample: the mean query and
/// the mean key of the sample are repeated at positions 0…q_len − 1 and rotated; the score of a
/// query head is the mean over those positions of the cumulative attention of the last query,
/// averaged over the query heads of each kv head. A head that attends far back scores low (kvpress
/// averages this over 50 samples per layer).
/// \param mean_query [q_heads, head_dim] the sample's pre-RoPE queries averaged over its tokens (after q_norm)
/// \param mean_key   [kv_heads, head_dim] the same for keys (after k_norm)
/// \param scores     [kv_heads] out
inline void duo_attention_sample_scores(float const* mean_query, float const* mean_key, std::int64_t q_heads,
                                        std::int64_t kv_heads, RotaryEmbedding const& rope, std::int64_t q_len,
                                        float* scores) {
  KVC_CHECK(mean_query != nullptr && mean_key != nullptr && scores != nullptr,
            "duo_attention_sample_scores: mean_query, mean_key and scores must not be null");
  KVC_CHECK(q_len > 0, "duo_attention_sample_scores q_len must be positive, got " << q_len);
  KVC_CHECK(kv_heads > 0 && q_heads > 0 && q_heads % kv_heads == 0,
            "duo_attention_sample_scores: q_heads = " << q_heads << " must be a positive multiple of kv_heads = "
                                                      << kv_heads);
  std::int64_t const d = rope.head_dim(), group = q_heads / kv_heads;
  std::vector<float> q(static_cast<std::size_t>(d)), keys(static_cast<std::size_t>(q_len * d));
  std::vector<double> logits(static_cast<std::size_t>(q_len));
  double const inv_sqrt_d = 1.0 / std::sqrt(static_cast<double>(d));
  for (std::int64_t h = 0; h < kv_heads; ++h) {
    for (std::int64_t p = 0; p < q_len; ++p) {
      std::copy(mean_key + h * d, mean_key + (h + 1) * d, keys.begin() + p * d);
      rope.apply(keys.data() + p * d, p, q_len);
    }
    double acc = 0.0;
    for (std::int64_t g = 0; g < group; ++g) {
      std::int64_t const qh = h * group + g;
      std::copy(mean_query + qh * d, mean_query + (qh + 1) * d, q.begin());
      rope.apply(q.data(), q_len - 1, q_len);
      double top = -std::numeric_limits<double>::infinity();
      for (std::int64_t p = 0; p < q_len; ++p) {
        double dot = 0.0;
        for (std::int64_t e = 0; e < d; ++e) dot += static_cast<double>(q[e]) * keys[p * d + e];
        logits[p] = dot * inv_sqrt_d;
        top = std::max(top, logits[p]);
      }
      double z = 0.0;
      for (double& x : logits) z += (x = std::exp(x - top));
      double cum = 0.0, area = 0.0;  // the mean of the cumulative attention
      for (double x : logits) area += (cum += x / z);
      acc += area / static_cast<double>(q_len);
    }
    scores[h] = static_cast<float>(acc / static_cast<double>(group));
  }
}

}  // namespace kvcompress
