#pragma once
/// \file
/// \brief What the Compactor presses (LeverageScore, NonCausalAttn, Compactor) share: the prefill
/// check (kvpress asserts that the cache holds exactly the chunk's tokens) and the global z-score
/// (score − mean) / max(std, 1e-6) over every batch element, head and scored slot, with the
/// unbiased standard deviation, as `torch.std()`.

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kvcompress/press/scorer.hpp"

namespace kvcompress::detail {

/// Throws unless every row holds exactly the chunk's tokens (a prefill). Returns that length.
template <class T, class L>
std::int64_t require_prefill(Observation<T> const& obs, KVCacheView<T, L> const& cache, char const* press) {
  std::int64_t const q = obs.chunk_tokens();
  KVC_CHECK(q > 0, press << " needs the chunk length (observation.chunk_length or observation.queries), got " << q);
  std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads;
  for (std::int64_t r = 0; r < rows; ++r)
    KVC_CHECK(cache.lengths[r] == q, press << " only supports prefill: cache length n = " << cache.lengths[r] << " of row (batch "
                                           << r / cache.extents.kv_heads << ", kv head " << r % cache.extents.kv_heads
                                           << ") must equal the chunk length " << q);
  return q;
}

/// z-scores slots [lo, hi) of every row in place, over all of them together (sums in double).
/// \param scores [batch, kv_heads, capacity]
template <class T, class L>
void global_z_score(KVCacheView<T, L> const& cache, float* scores, std::int64_t lo, std::int64_t hi, char const* press) {
  std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads, cap = cache.extents.capacity;
  std::int64_t const count = rows * (hi - lo);
  KVC_CHECK(count >= 2, press << " z-scores its scores with the unbiased standard deviation, which needs at least 2 scored "
                              "entries in total, got "
                              << count);
  double sum = 0.0;
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t i = lo; i < hi; ++i) sum += scores[r * cap + i];
  double const mean = sum / static_cast<double>(count);
  double ss = 0.0;
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t i = lo; i < hi; ++i) ss += (scores[r * cap + i] - mean) * (scores[r * cap + i] - mean);
  double const scale = 1.0 / std::max(std::sqrt(ss / static_cast<double>(count - 1)), 1e-6);
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t i = lo; i < hi; ++i)
      scores[r * cap + i] = static_cast<float>((scores[r * cap + i] - mean) * scale);
}

}  // namespace kvcompress::detail
