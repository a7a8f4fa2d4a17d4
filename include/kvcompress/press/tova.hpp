#pragma once
/// \file
/// \brief TOVA (arXiv 2401.06104): the attention of the last token, averaged over all query heads
/// and shared by every kv head, so all heads keep the same positions. The last token is kept.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "kvcompress/dist/shard_protocol.hpp"
#include "kvcompress/press/window_attention.hpp"

namespace kvcompress {

struct TOVAPress {
  double compression_ratio = 0.0;

  /// TOVA reads only the chunk's last query, so window queries of any length (the window an engine
  /// keeps for SnapKV, say) are narrowed to their last token.
  template <class T>
  [[nodiscard]] static Observation<T> last_query(Observation<T> obs) {
    Tensor4<T>& wq = obs.window_queries;
    if (!wq.empty() && wq.shape[2] > 1) {
      wq.data += (wq.shape[2] - 1) * wq.strides[2];
      wq.shape[2] = 1;
    }
    return obs;
  }

  template <class T, class L>
  [[nodiscard]] std::size_t workspace_bytes(CpuDevice const& dev, Observation<T> const& obs,
                                            KVCacheView<T, L> const& cache) const {
    std::size_t const shared =
        obs.shard.split() ? detail::sum_bytes(detail::handshake_bytes(obs.shard),
                                              Workspace::bytes_for<float>(detail::size_product(
                                                  cache.extents.batch, detail::layer_kv_heads(obs, cache),
                                                  cache.extents.capacity)))
                          : 0;
    return detail::sum_bytes(detail::snap_kv_bytes(dev, last_query(obs), cache, 1), shared);
  }

  template <class T, class L>
  void score(CpuDevice const& dev, Observation<T> const& given, KVCacheView<T, L> const& cache, float* scores,
             Workspace& ws) const {
    Observation<T> const obs = last_query(given);
    auto const& e = cache.extents;
    for (std::int64_t b = 0; b < e.batch; ++b)
      for (std::int64_t h = 1; h < e.kv_heads; ++h)
        KVC_CHECK(cache.length(b, h) == cache.length(b, 0),
                  "TOVA averages over all heads, so every kv head of a batch element needs the same length; batch "
                      << b << " has " << cache.length(b, 0) << " in head 0 and " << cache.length(b, h) << " in head " << h);
    bool const from_queries = detail::window_from_queries(obs, cache, 1);
    std::int64_t const group = detail::window_group(obs, cache), cap = e.capacity;
    int const threads = detail::thread_count(dev, e.batch * e.kv_heads);
    float* probs = ws.take<float>(static_cast<std::size_t>(threads * group * cap));
    // Per row: the sum over its group's query heads; then per batch element the mean over all heads.
    detail::window_attention_mean(dev, obs, cache, 1, from_queries, probs, ws,
                                  [&](std::int64_t r, std::int64_t j, float const* p) {
                                    std::int64_t const m = cache.lengths[r] - 1;
                                    float* out = scores + r * cap;
                                    if (j == 0) std::fill(out, out + m, 0.0f);
                                    for (std::int64_t i = 0; i < m; ++i) out[i] += p[i];
                                  });
    if (obs.shard.split()) {
      mean_over_shards(dev, obs, cache, group, scores, ws);
    } else {
      float const inv_heads = 1.0f / static_cast<float>(group * e.kv_heads);
      for (std::int64_t b = 0; b < e.batch; ++b) {
        std::int64_t const m = cache.length(b, 0) - 1;
        float* first = scores + b * e.kv_heads * cap;
        for (std::int64_t i = 0; i < m; ++i) {
          float acc = 0.0f;
          for (std::int64_t h = 0; h < e.kv_heads; ++h) acc += first[h * cap + i];
          first[i] = acc * inv_heads;
        }
        for (std::int64_t h = 1; h < e.kv_heads; ++h) std::copy(first, first + m, first + h * cap);
      }
    }
    detail::protect_window(cache, scores, 1);
  }

 private:
  /// The mean over all heads of the layer when they are spread over a tensor-parallel group: each
  /// rank's per-head sums go into their global heads' rows of a zeroed [batch, layer kv heads, n]
  /// buffer, an all-reduce adds the group's buffers (each value to zeros: exact), and every rank
  /// adds the heads in the whole layer's order, so the scores are bit-identical to it.
  /// \param scores [batch, kv_heads, capacity] in: each row's sum over its query group
  template <class T, class L>
  static void mean_over_shards(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache,
                               std::int64_t group, float* scores, Workspace& ws) {
    auto const& e = cache.extents;
    std::int64_t const cap = e.capacity;
    // Everything that can fail on this rank alone comes before the group's handshake.
    std::uint64_t lengths_hash = 1469598103934665603ull;
    std::int64_t longest = 0;
    for (std::int64_t b = 0; b < e.batch; ++b) {
      std::int64_t const m = std::max<std::int64_t>(cache.length(b, 0) - 1, 0);
      lengths_hash = (lengths_hash ^ static_cast<std::uint64_t>(m + 1)) * 1099511628211ull;
      longest = std::max(longest, m);
      for (std::int64_t h = 0; h < e.kv_heads; ++h)
        for (std::int64_t i = 0; i < m; ++i) {
          float const v = scores[(b * e.kv_heads + h) * cap + i];
          if (!std::isfinite(v)) detail::report_non_finite(dev, obs, cache, b * e.kv_heads + h, i, v);
        }
    }
    detail::ShardLayout const layout =
        detail::join_shard(obs, cache, static_cast<std::int64_t>(lengths_hash), group, ws);
    std::int64_t const heads = layout.kv_heads;
    float* all = ws.take<float>(detail::size_product(e.batch, heads, longest));  // [batch, layer kv heads, longest]
    std::fill(all, all + e.batch * heads * longest, 0.0f);
    for (std::int64_t b = 0; b < e.batch; ++b)
      for (std::int64_t h = 0; h < e.kv_heads; ++h) {
        float const* src = scores + (b * e.kv_heads + h) * cap;
        std::copy(src, src + std::max<std::int64_t>(cache.length(b, 0) - 1, 0), all + (b * heads + layout.first_kv_head + h) * longest);
      }
    obs.shard.communicator->all_reduce(all, static_cast<std::size_t>(e.batch * heads * longest), ReduceOp::sum);
    float const inv_heads = 1.0f / static_cast<float>(group * heads);
    for (std::int64_t b = 0; b < e.batch; ++b) {
      std::int64_t const m = cache.length(b, 0) - 1;
      float* first = scores + b * e.kv_heads * cap;
      for (std::int64_t i = 0; i < m; ++i) {
        float acc = 0.0f;
        for (std::int64_t h = 0; h < heads; ++h) acc += all[(b * heads + h) * longest + i];
        first[i] = acc * inv_heads;
      }
      for (std::int64_t h = 1; h < e.kv_heads; ++h) std::copy(first, first + m, first + h * cap);
    }
  }
};

}  // namespace kvcompress
