#pragma once
/// \file
/// \brief Causal attention of a chunk of queries over a `KVCache` layer whose kv heads may hold different
/// entries and different numbers of them (after a press): each query head reads only its kv head's live
/// entries. Over a layer whose keys are packed (ThinK), a packed entry's score is q·k over the kv head's
/// kept channels — what kvpress's zeroed channels give — and a later entry's over every channel.

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kvc_engine/forward/kv_cache.hpp"
#include "kvc_engine/forward/ops.hpp"
#include "kvc_engine/forward/thread_pool.hpp"

namespace kvc_engine {

/// \brief out = softmax(q·kᵀ/√d)·v for every query head j over kv head g = j / (q_heads / kv_heads).
/// The chunk's own entries sit at slots first_new[g] … first_new[g] + n − 1 of its row, after every
/// older entry (rows stay in position order), so query t sees the row's first first_new[g] + t + 1 slots.
/// \param q         [n, q_heads, head_dim] post-RoPE queries
/// \param first_new [kv_heads] slot of the chunk's first token in each kv head's row
/// \param out       [n, q_heads, head_dim]
/// \param scratch   one buffer per pool thread
inline void causal_attention(ThreadPool& pool, KVCache& cache, std::int64_t layer, float const* q, std::int64_t n,
                             std::int64_t q_heads, std::vector<std::int32_t> const& first_new, float* out,
                             std::vector<std::vector<float>>& scratch) {
  std::int64_t const kv_heads = cache.kv_heads(), d = cache.head_dim(), group = q_heads / kv_heads;
  KVC_CHECK(q_heads > 0 && q_heads % kv_heads == 0, "q_heads = " << q_heads << " must be a multiple of kv_heads = " << kv_heads);
  KVC_CHECK(static_cast<std::int64_t>(first_new.size()) == kv_heads, "first_new holds " << first_new.size() << " heads, the cache "
                                                                                        << kv_heads);
  KVC_CHECK(static_cast<int>(scratch.size()) >= pool.size(), "scratch needs one buffer per pool thread");
  for (std::int64_t g = 0; g < kv_heads; ++g)
    KVC_CHECK(first_new[static_cast<std::size_t>(g)] >= 0 && first_new[static_cast<std::size_t>(g)] + n <= cache.length(layer, g),
              "kv head " << g << " of layer " << layer << " holds " << cache.length(layer, g) << " entries, not the chunk's "
                         << n << " after slot " << first_new[static_cast<std::size_t>(g)]);
  for (std::int64_t g = 0; g < kv_heads; ++g)  // the chunk's keys are full-width: appended after the packing
    KVC_CHECK(first_new[static_cast<std::size_t>(g)] >= cache.packed_length(layer, g),
              "kv head " << g << " of layer " << layer << " holds " << cache.packed_length(layer, g)
                         << " packed entries, past the chunk's first slot " << first_new[static_cast<std::size_t>(g)]);
  constexpr std::int64_t kRows = 32;  // query rows per task: bounds the score block at kRows × row length
  std::int64_t const blocks = (n + kRows - 1) / kRows;
  float const scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  std::int64_t const kept = cache.kept_channels(layer);
  pool.parallel_for(q_heads * blocks, [&](std::int64_t task, int thread) {
    std::int64_t const j = task / blocks, g = j / group, t0 = task % blocks * kRows, t1 = std::min(n, t0 + kRows);
    std::int64_t const rows = t1 - t0, old = first_new[static_cast<std::size_t>(g)], span = old + t1;
    std::vector<float>& s = scratch[static_cast<std::size_t>(thread)];
    Eigen::Map<ops::RowMat const, 0, Eigen::OuterStride<>> const Q(q + (t0 * q_heads + j) * d, rows, d,
                                                                   Eigen::OuterStride<>(q_heads * d));
    ops::ConstMap const V(cache.values(layer, g), span, d);
    if (kept == 0) {
      s.resize(static_cast<std::size_t>(rows * span));
      ops::ConstMap const K(cache.keys(layer, g), span, d);
      Eigen::Map<ops::RowMat> S(s.data(), rows, span);
      S.noalias() = Q * K.transpose();
    } else {  // the first `packed` entries over the kept channels, the rest over all of them
      std::int64_t const packed = cache.packed_length(layer, g);
      s.resize(static_cast<std::size_t>(rows * (span + kept)));
      Eigen::Map<ops::RowMat> S(s.data(), rows, span);
      Eigen::Map<ops::RowMat> Qk(s.data() + rows * span, rows, kept);  // Q's kept channels
      std::int32_t const* ch = cache.channels(layer, g);                  // [kept]
      for (std::int64_t c = 0; c < kept; ++c) Qk.col(c) = Q.col(ch[c]);
      S.leftCols(packed).noalias() = Qk * ops::ConstMap(cache.packed_keys(layer, g), packed, kept).transpose();
      S.rightCols(span - packed).noalias() = Q * ops::ConstMap(cache.keys(layer, g), span - packed, d).transpose();
    }
    Eigen::Map<ops::RowMat> S(s.data(), rows, span);
    S *= scale;
    for (std::int64_t r = 0; r < rows; ++r) ops::softmax_prefix(s.data() + r * span, old + t0 + r + 1, span);
    ops::StridedMap O(out + (t0 * q_heads + j) * d, rows, d, Eigen::OuterStride<>(q_heads * d));
    O.noalias() = S * V;
  });
}

}  // namespace kvc_engine
