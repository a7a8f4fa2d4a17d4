#pragma once
/// \file
/// \brief NonCausalAttn (Compactor, arXiv 2507.08143): the attention every prompt token receives
/// from the queries of its own chunk, without a causal mask. The sequence is cut into tiles of
/// `chunk_size`; inside a tile, softmax(Q Kᵀ) with the post-RoPE queries and keys and no 1/√d scale;
/// each key's score is its column sum, averaged over the query heads of the group, times ‖v‖,
/// smoothed by avg_pool1d(3, padding 1, the padding counted), and z-scored over every batch element,
/// head and entry together.
///
/// As kvpress does (QUIRK, kept): when the length is not a multiple of `chunk_size`, the last tile
/// is padded with zero queries and keys whose logits are −1e-9, not −inf, so the padding keys absorb
/// probability mass and each padding query adds 1/chunk_size to every real key of that tile.
/// Prefill only, as in kvpress.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include <Eigen/Core>

#include "kvcompress/detail/blocked_product.hpp"
#include "kvcompress/detail/gather.hpp"
#include "kvcompress/press/prefill_z_score.hpp"
#include "kvcompress/press/scorer.hpp"
#include "kvcompress/press/window_attention.hpp"
#include "kvcompress/rope/rotary_embedding.hpp"

namespace kvcompress {

namespace detail {

/// Query rows whose logits against one tile are computed at a time.
inline constexpr std::int64_t kNonCausalRowBlock = 64;

/// Checks of the pre-RoPE queries against the cache (shape only).
template <class T>
void check_non_causal_queries(Observation<T> const& obs, CacheExtents const& e, std::int64_t chunk_size, char const* press) {
  KVC_CHECK(chunk_size > 0, press << " chunk_size must be positive, got " << chunk_size);
  require_not_ragged(obs, press);
  Tensor4<T> const& q = obs.queries;
  KVC_CHECK(!q.empty(), "observation.queries must be given (pre-RoPE queries of the prompt, [batch, q_heads, q_len, head_dim])");
  KVC_CHECK(q.shape[0] == e.batch, "observation.queries batch = " << q.shape[0] << " does not match the cache batch = " << e.batch);
  KVC_CHECK(q.shape[1] > 0 && q.shape[1] % e.kv_heads == 0,
            "observation.queries heads = " << q.shape[1] << " must be a positive multiple of kv_heads = " << e.kv_heads);
  KVC_CHECK(q.shape[3] == e.head_dim, "observation.queries head_dim = " << q.shape[3] << " does not match the cache head_dim = "
                                                                        << e.head_dim);
  KVC_CHECK(obs.rope != nullptr, press << " needs observation.rope (the queries are rotated to their positions)");
  KVC_CHECK(obs.rope->head_dim() == e.head_dim, "observation.rope head_dim = " << obs.rope->head_dim()
                                                                              << " does not match the cache head_dim = " << e.head_dim);
}

/// Scratch bytes of `non_causal_scores`.
template <class T, class L>
std::size_t non_causal_bytes(CpuDevice const& dev, KVCacheView<T, L> const& cache, std::int64_t chunk_size) {
  std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads, d = cache.extents.head_dim;
  std::int64_t const threads = thread_count(dev, rows), cap = cache.extents.capacity;
  std::int64_t const tile = std::min(std::max<std::int64_t>(chunk_size, 1), cap);
  std::int64_t const per_thread = size_sum(size_product(cap, d), size_product(kNonCausalRowBlock, d + tile), size_product(2, cap));
  return sum_bytes(Workspace::bytes_for<float>(static_cast<std::size_t>(d / 2)),
                   Workspace::bytes_for<float>(size_product(threads, per_thread)));
}

/// NonCausalAttn's pooled scores (before the z-score) of slots [lo, hi) of every row, with the
/// queries [lo, hi) of the chunk. \param scores [batch, kv_heads, capacity]
template <class T, class L>
void non_causal_scores(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, std::int64_t chunk,
                       std::int64_t lo, std::int64_t hi, float* scores, Workspace& ws) {
  using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  auto const& e = cache.extents;
  Tensor4<T> const& q = obs.queries;
  std::int64_t const heads = e.kv_heads, d = e.head_dim, cap = e.capacity, rows = e.batch * heads, m = hi - lo;
  std::int64_t const group = q.shape[1] / heads, half_d = d / 2, tile_max = std::min(chunk, cap);
  int const threads = thread_count(dev, rows);
  float* inv = ws.take<float>(static_cast<std::size_t>(half_d));
  float* buf = ws.take<float>(static_cast<std::size_t>(threads * (cap * d + kNonCausalRowBlock * (d + tile_max) + 2 * cap)));
  obs.rope->inv_freq_for(obs.position + obs.chunk_tokens(), inv);
  float const a = obs.rope->attention_scaling();
  float const pad_logit = -1e-9f;
  parallel_for(dev, rows, [&](std::int64_t r, int t) {
    std::int64_t const b = r / heads, h = r % heads;
    float* keys = buf + t * (cap * d + kNonCausalRowBlock * (d + tile_max) + 2 * cap);  // [m, d]
    float* qs = keys + cap * d;                                                          // [row block, d]
    float* logits = qs + kNonCausalRowBlock * d;                                         // [row block, tile]
    float* colsum = logits + kNonCausalRowBlock * tile_max;                               // [m]
    float* vnorm = colsum + cap;                                                          // [m]
    gather_keys(cache, b, h, lo, m, keys);
    std::fill(colsum, colsum + m, 0.0f);
    for (std::int64_t j = 0; j < group; ++j) {
      std::int64_t const head = h * group + j;
      for (std::int64_t t0 = 0; t0 < m; t0 += chunk) {
        std::int64_t const cnt = std::min(chunk, m - t0), padding = chunk - cnt;  // padding > 0: last tile only
        Eigen::Map<RowMat const> kt(keys + t0 * d, cnt, d);
        for (std::int64_t r0 = 0; r0 < cnt; r0 += kNonCausalRowBlock) {
          std::int64_t const nr = std::min(kNonCausalRowBlock, cnt - r0);
          for (std::int64_t i = 0; i < nr; ++i) {  // post-RoPE query: a·R_p q at its absolute position
            std::int64_t const tok = lo + t0 + r0 + i;
            float const p = static_cast<float>(obs.position + tok);
            float* row = qs + i * d;
            for (std::int64_t c = 0; c < half_d; ++c) {
              float const angle = inv[c] * p, cs = std::cos(angle) * a, sn = std::sin(angle) * a;
              float const x0 = to_float(q(b, head, tok, c)), x1 = to_float(q(b, head, tok, c + half_d));
              row[c] = x0 * cs - x1 * sn;
              row[c + half_d] = x1 * cs + x0 * sn;
            }
          }
          Eigen::Map<RowMat> z(logits, nr, cnt);
          blocked_product<false>(z, Eigen::Map<RowMat const>(qs, nr, d), kt.transpose());
          for (std::int64_t i = 0; i < nr; ++i) {
            float* zi = logits + i * cnt;
            float mx = *std::max_element(zi, zi + cnt);
            if (padding > 0) mx = std::max(mx, pad_logit);
            float sum = 0.0f;
            for (std::int64_t c = 0; c < cnt; ++c) sum += (zi[c] = std::exp(zi[c] - mx));
            sum += static_cast<float>(padding) * std::exp(pad_logit - mx);
            float const w = 1.0f / sum;
            for (std::int64_t c = 0; c < cnt; ++c) colsum[t0 + c] += zi[c] * w;
          }
        }
        // Each zero padding query sees logits 0 (real keys) and −1e-9 (padding keys): 1/chunk each.
        if (padding > 0)
          for (std::int64_t c = 0; c < cnt; ++c) colsum[t0 + c] += static_cast<float>(padding) / static_cast<float>(chunk);
      }
    }
    for (std::int64_t i = 0; i < m; ++i) {
      float ss = 0.0f;
      for (std::int64_t c = 0; c < d; ++c) {
        float const v = to_float(cache.value(b, h, lo + i, c));
        ss += v * v;
      }
      vnorm[i] = colsum[i] / static_cast<float>(group) * std::sqrt(ss);
    }
    float* out = scores + r * cap + lo;
    std::fill(out, out + m, 0.0f);
    add_avg_pool(vnorm, m, 3, 1.0f, out);
  });
}

}  // namespace detail

struct NonCausalAttnPress {
  double compression_ratio = 0.0;
  std::int64_t chunk_size = 256;

  template <class T, class L>
  [[nodiscard]] std::size_t workspace_bytes(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache) const {
    return detail::sum_bytes(detail::non_causal_bytes(dev, cache, chunk_size), detail::global_z_score_bytes(obs, cache, 1));
  }

  template <class T, class L>
  void score(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, float* scores,
             Workspace& ws) const {
    char const* const name = "NonCausalAttnPress";
    detail::check_non_causal_queries(obs, cache.extents, chunk_size, name);
    std::int64_t const n = detail::require_prefill(obs, cache, name);
    KVC_CHECK(obs.queries.shape[2] == n, "observation.queries q_len = " << obs.queries.shape[2] << " must equal the chunk length " << n);
    detail::non_causal_scores(dev, obs, cache, chunk_size, 0, n, scores, ws);
    detail::global_z_score(dev, obs, cache, &scores, 1, 0, n, name, ws);
  }
};

}  // namespace kvcompress
