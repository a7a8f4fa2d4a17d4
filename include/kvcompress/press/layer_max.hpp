#pragma once
/// \file
/// \brief The layer's maximum score, which several presses add 1 to for the entries they always keep
/// (SnapKV's window, Finch's, CAP's sinks, LU-KV's sinks and window). On one process it is this
/// process's maximum; on a tensor-parallel shard the group's, so that a protected entry scores the
/// whole layer's value, which a press that combines heads (AdaKV's selection across heads, ChunkKV's
/// chunk sums) needs bit for bit. A row's own top-k does not depend on it.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>

#include "kvcompress/dist/layer_rows.hpp"
#include "kvcompress/press/scorer.hpp"

namespace kvcompress::detail {

/// The maximum of the layer from this rank's `local` one. On a split layer the scored slots
/// [scored(r).first, scored(r).second) of every row are checked finite first (no rank may fail after
/// the handshake), then the handshake and a one-float all-reduce.
/// \param scores [batch, kv_heads, capacity]
template <class T, class L, class Scored>
float layer_score_max(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, float const* scores,
                      float local, Scored&& scored, Workspace& ws) {
  if (!obs.shard.split()) return local;
  std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads, cap = cache.extents.capacity;
  for (std::int64_t r = 0; r < rows; ++r) {
    std::pair<std::int64_t, std::int64_t> const range = scored(r);
    for (std::int64_t i = range.first; i < range.second; ++i)
      if (!std::isfinite(scores[r * cap + i])) report_non_finite(dev, obs, cache, r, i, scores[r * cap + i]);
  }
  join_shard(obs, cache, 0, 0, ws);
  return layer_max(obs, local);
}

}  // namespace kvcompress::detail
