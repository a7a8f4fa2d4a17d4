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

#include "kvc_engine/forward/attention_kernel.hpp"
#include "kvc_engine/forward/kv_cache.hpp"
#include "kvc_engine/forward/ops.hpp"
#include "kvc_engine/forward/thread_pool.hpp"

namespace kvc_engine {

namespace detail {

/// Query rows below which a key tile is multiplied row by row (matrix-vector) rather than as one GEMM.
constexpr std::int64_t kGemvRows = 8;

/// Folds keys c0 … c0 + C − 1 (rows of K and V) into `st` for R = rows·group query rows Q (pre-scaled by
/// 1/√d, row r = token r / group of the block, whose first token sees `visible0` keys). Keys a row may not
/// see (causal) contribute nothing. Queries and keys have dk channels: head_dim, or a packed layer's kept ones.
/// With many rows on an AVX-512 CPU, attention_kernel.hpp's register-blocked tile does it.
/// \param Q [R, dk] \param K [C, dk] \param V [C, d] \param S [R, C] scratch \param kt [dk, C rounded up to 16] scratch
inline void fold_key_tile(float const* Q, std::int64_t R, std::int64_t group, std::int64_t dk, std::int64_t d, float const* K,
                          float const* V, std::int64_t c0, std::int64_t C, std::int64_t visible0, float* S, float* kt,
                          SoftmaxState st) {
#if KVC_ENGINE_AVX512
  if (R >= kGemvRows && use_avx512_tile(d)) {
    fold_tile_avx512(Q, R, group, dk, d, K, V, c0, C, visible0, kt, S, st);
    return;
  }
#else
  (void)kt;
#endif
  ops::ConstMap const Qm(Q, R, dk), Km(K, C, dk), Vm(V, C, d);
  Eigen::Map<ops::RowMat> Sm(S, R, C), O(st.o, R, d);
  // A GEMM packs (copies) the key and value tiles first, as much memory traffic as the work itself when
  // only a few rows use them (decoding): matrix-vector products per row read the tiles where they lie.
  bool const few_rows = R < kGemvRows;
  if (few_rows)
    for (std::int64_t r = 0; r < R; ++r) Sm.row(r).noalias() = Qm.row(r) * Km.transpose();
  else
    Sm.noalias() = Qm * Km.transpose();
  for (std::int64_t r = 0; r < R; ++r) {
    float* row = S + r * C;
    std::int64_t const seen = std::min(C, visible0 + r / group - c0);  // keys of this tile the row sees
    if (seen <= 0) {
      std::fill(row, row + C, 0.0f);
      continue;
    }
    Eigen::Map<Eigen::ArrayXf> a(row, seen);
    float const m = std::max(st.m[r], a.maxCoeff());
    float const alpha = std::exp(st.m[r] - m);  // 0 on the first tile (m was −∞, o and l 0)
    a = (a - m).exp();
    st.l[r] = st.l[r] * alpha + a.sum();
    st.m[r] = m;
    if (alpha != 1.0f) O.row(r) *= alpha;
    std::fill(row + seen, row + C, 0.0f);
  }
  if (few_rows)
    for (std::int64_t r = 0; r < R; ++r) O.row(r).noalias() += Sm.row(r) * Vm;
  else
    O.noalias() += Sm * Vm;
}

}  // namespace detail

/// \brief out = softmax(q·kᵀ/√d)·v for every query head j over kv head g = j / (q_heads / kv_heads).
/// The chunk's own entries sit at slots first_new[g] … first_new[g] + n − 1 of its row, after every
/// older entry (rows stay in position order), so query t sees the row's first first_new[g] + t + 1 slots.
///
/// Blocked as flash attention: a task takes one kv head and a block of tokens, its query rows being every
/// query head of the group for each token (the kv head's keys are read once for all of them), and folds
/// the keys in tiles with an online softmax, so scores never leave the cache and tiles past the block's
/// last visible key are never computed. When there are fewer (kv head, block) pairs than threads ×
/// kTasksPerThread (decoding: one token), each pair's keys are split into ranges, folded by separate tasks
/// and merged afterwards.
/// \param q         [n, q_heads, head_dim] post-RoPE queries
/// \param first_new [kv_heads] slot of the chunk's first token in each kv head's row
/// \param out       [n, q_heads, head_dim]
/// \param scratch   one buffer per pool thread
inline void causal_attention(ThreadPool& pool, KVCache& cache, std::int64_t layer, float const* q, std::int64_t n,
                             std::int64_t q_heads, std::vector<std::int32_t> const& first_new, float* out,
                             std::vector<std::vector<float>>& scratch) {
  std::int64_t const kv_heads = cache.kv_heads(), d = cache.head_dim();
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
  std::int64_t const group = q_heads / kv_heads, kept = cache.kept_channels(layer);  // kept: 0 unless packed
  // About 256 query rows × 256 keys per tile: Q, scores, K, V and the output block stay within a core's L2.
  constexpr std::int64_t kTargetRows = 256, kKeys = 256, kTasksPerThread = 4;
  std::int64_t const tokens = std::max<std::int64_t>(1, kTargetRows / group), blocks = (n + tokens - 1) / tokens;
  std::int64_t const rows_max = std::min(n, tokens) * group;
  std::int64_t longest = 0;
  for (std::int64_t g = 0; g < kv_heads; ++g) longest = std::max<std::int64_t>(longest, first_new[static_cast<std::size_t>(g)] + n);
  std::int64_t const pairs = kv_heads * blocks, wanted = pool.size() == 1 ? 1 : pool.size() * kTasksPerThread;
  std::int64_t const splits = pairs >= wanted ? 1 : std::min((wanted + pairs - 1) / pairs, (longest + kKeys - 1) / kKeys);
  float const scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  // [pairs, splits, rows_max, d + 2]: each split's o, m and l, merged below; unused without splits.
  std::vector<float> partial(static_cast<std::size_t>(splits > 1 ? pairs * splits * rows_max * (d + 2) : 0));

  // Tasks run the longest blocks (the chunk's last) first so the shortest fill the threads' tails.
  pool.parallel_tasks(pairs * splits, [&](std::int64_t task, int thread) {
    std::int64_t const pair = task / splits, split = task % splits, block = blocks - 1 - pair / kv_heads, g = pair % kv_heads;
    std::int64_t const t0 = block * tokens, t1 = std::min(n, t0 + tokens), R = (t1 - t0) * group;
    std::int64_t const old = first_new[static_cast<std::size_t>(g)], span = old + t1;
    // Tiles never straddle the packed entries' end: the packed ones (over the kept channels) come first.
    std::int64_t const packed = kept > 0 ? cache.packed_length(layer, g) : 0;
    std::int64_t const packed_tiles = (packed + kKeys - 1) / kKeys;
    std::int64_t const tiles = packed_tiles + (span - packed + kKeys - 1) / kKeys;
    std::int64_t const tile0 = tiles * split / splits, tile1 = tiles * (split + 1) / splits;
    std::vector<float>& buf = scratch[static_cast<std::size_t>(thread)];
    buf.resize(static_cast<std::size_t>(rows_max * (d + kKeys + d + 2 + kept) + d * kKeys));
    float* const Q = buf.data();   // [R, d] scaled queries, row (t − t0)·group + jj = query head g·group + jj
    float* const S = Q + R * d;    // [R, kKeys]
    float* o = S + R * kKeys;      // [R, d]
    float* m = o + R * d;          // [R]
    float* l = m + R;              // [R]
    float* const Qk = l + R;       // [R, kept]: Q's kept channels, for the packed entries
    float* const kt = Qk + R * kept;  // [d, kKeys]: a key tile transposed
    if (splits > 1) {
      o = partial.data() + (pair * splits + split) * rows_max * (d + 2);
      m = o + R * d;
      l = m + R;
    }
    for (std::int64_t t = t0; t < t1; ++t)
      for (std::int64_t jj = 0; jj < group; ++jj) {
        float const* src = q + (t * q_heads + g * group + jj) * d;
        float* dst = Q + ((t - t0) * group + jj) * d;
        for (std::int64_t c = 0; c < d; ++c) dst[c] = src[c] * scale;
      }
    std::fill(o, o + R * d, 0.0f);
    std::fill(m, m + R, -INFINITY);
    std::fill(l, l + R, 0.0f);
    if (packed > 0) {
      std::int32_t const* ch = cache.channels(layer, g);  // [kept]
      for (std::int64_t r = 0; r < R; ++r)
        for (std::int64_t c = 0; c < kept; ++c) Qk[r * kept + c] = Q[r * d + ch[c]];
    }
    float const* const K = cache.keys(layer, g);    // [span − packed, d]: slots packed … span − 1
    float const* const V = cache.values(layer, g);  // [span, d]
    for (std::int64_t tile = tile0; tile < tile1; ++tile) {
      if (tile < packed_tiles) {
        std::int64_t const c0 = tile * kKeys, C = std::min(kKeys, packed - c0);
        detail::fold_key_tile(Qk, R, group, kept, d, cache.packed_keys(layer, g) + c0 * kept, V + c0 * d, c0, C,
                              old + t0 + 1, S, kt, {o, m, l});
      } else {
        std::int64_t const c0 = packed + (tile - packed_tiles) * kKeys, C = std::min(kKeys, span - c0);
        detail::fold_key_tile(Q, R, group, d, d, K + (c0 - packed) * d, V + c0 * d, c0, C, old + t0 + 1, S, kt, {o, m, l});
      }
    }
    if (splits > 1) return;
    for (std::int64_t r = 0; r < R; ++r) {
      float const inv = 1.0f / l[r];
      float* dst = out + ((t0 + r / group) * q_heads + g * group + r % group) * d;
      for (std::int64_t c = 0; c < d; ++c) dst[c] = o[r * d + c] * inv;
    }
  });
  if (splits == 1) return;
  for (std::int64_t pair = 0; pair < pairs; ++pair) {
    std::int64_t const block = blocks - 1 - pair / kv_heads, g = pair % kv_heads;
    std::int64_t const t0 = block * tokens, t1 = std::min(n, t0 + tokens), R = (t1 - t0) * group;
    for (std::int64_t r = 0; r < R; ++r) {
      float top = -INFINITY;  // every row sees the first key, in split 0: top is finite
      for (std::int64_t sp = 0; sp < splits; ++sp)
        top = std::max(top, partial[static_cast<std::size_t>((pair * splits + sp) * rows_max * (d + 2) + R * d + r)]);
      float* dst = out + ((t0 + r / group) * q_heads + g * group + r % group) * d;
      std::fill(dst, dst + d, 0.0f);
      float sum = 0.0f;
      for (std::int64_t sp = 0; sp < splits; ++sp) {
        float const* o = partial.data() + (pair * splits + sp) * rows_max * (d + 2);
        float const w = std::exp(o[R * d + r] - top);  // 0 for a split the row sees nothing of (m = −∞)
        sum += w * o[R * d + R + r];
        for (std::int64_t c = 0; c < d; ++c) dst[c] += w * o[r * d + c];
      }
      for (std::int64_t c = 0; c < d; ++c) dst[c] /= sum;
    }
  }
}

}  // namespace kvc_engine
