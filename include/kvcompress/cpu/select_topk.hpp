#pragma once
/// \file
/// \brief Per-row top-k selection on the CPU: the indices of the n_kept highest scores, returned in
/// ascending position order. Ties go to the lower index; NaN scores rank below every number.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
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

/// A key whose unsigned order is RanksBefore's order of the scores (without the index): −0 and +0
/// equal, −inf the lowest number, every NaN 0, below all numbers.
[[nodiscard]] inline std::uint32_t score_order_key(float x) noexcept {
  if (std::isnan(x)) return 0;
  std::uint32_t bits = 0;
  float const y = x == 0.0f ? 0.0f : x;
  std::memcpy(&bits, &y, sizeof bits);
  return (bits & 0x80000000u) != 0 ? ~bits : bits | 0x80000000u;
}

/// \param scores [n] row of scores
/// \param idx    [n] scratch; on return idx[0, n_kept) holds the kept indices, ascending, and
///               idx[n_kept, n) the others, ascending
inline void select_topk_row(float const* scores, std::int32_t n, std::int32_t n_kept, std::int32_t* idx) {
  if (n_kept <= 0 || n_kept >= n) {
    std::iota(idx, idx + n, 0);
    return;
  }
  // The n_kept-th largest key by a selection over plain integers (no index indirection, no sort),
  // then one pass in position order: keys above it are kept, and of the keys equal to it the
  // lowest indices, as many as fill n_kept — RanksBefore's selection, already in ascending order.
  auto* keys = reinterpret_cast<std::uint32_t*>(idx);  // [n], the index array's storage
  for (std::int32_t i = 0; i < n; ++i) keys[i] = score_order_key(scores[i]);
  std::nth_element(keys, keys + (n_kept - 1), keys + n, std::greater<>());
  std::uint32_t const threshold = keys[n_kept - 1];
  std::int32_t ties = n_kept;  // how many entries equal to the threshold are kept
  for (std::int32_t i = 0; i < n_kept; ++i) ties -= keys[i] > threshold ? 1 : 0;
  std::int32_t kept = 0, dropped = n_kept;
  for (std::int32_t i = 0; i < n; ++i) {
    std::uint32_t const k = score_order_key(scores[i]);
    bool const keep = k > threshold || (k == threshold && ties > 0);
    ties -= k == threshold && keep ? 1 : 0;
    idx[keep ? kept++ : dropped++] = i;
  }
}

}  // namespace kvcompress::cpu_impl
