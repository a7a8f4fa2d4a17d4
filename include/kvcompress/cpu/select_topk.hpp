#pragma once
/// \file
/// \brief Per-row top-k selection on the CPU: the indices of the n_kept highest scores, returned in
/// ascending position order. Ties go to the lower index; NaN scores rank below every number.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>

namespace kvcompress::cpu_impl {

/// The selection order: entry a ranks before entry b if its score is higher; a number beats NaN;
/// ties go to the lower index. A strict weak order, usable with any std algorithm.
/// \param scores indexed by the entries compared
struct RanksBefore {
  float const* scores;
  bool operator()(std::int32_t a, std::int32_t b) const noexcept {
    float const sa = scores[a], sb = scores[b];
    bool const na = std::isnan(sa), nb = std::isnan(sb);
    if (na != nb) return nb;  // a number beats NaN
    if (!na && sa != sb) return sa > sb;
    return a < b;
  }
};

/// \param scores [n] row of scores
/// \param idx    [n] scratch; on return idx[0, n_kept) holds the kept indices, ascending
inline void select_topk_row(float const* scores, std::int32_t n, std::int32_t n_kept, std::int32_t* idx) {
  std::iota(idx, idx + n, 0);
  if (n_kept <= 0 || n_kept >= n) return;
  std::nth_element(idx, idx + n_kept, idx + n, RanksBefore{scores});
  std::sort(idx, idx + n_kept);
}

}  // namespace kvcompress::cpu_impl
