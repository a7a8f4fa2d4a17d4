#pragma once
/// \file
/// \brief A global top-k whose candidates are spread over the ranks of a tensor-parallel group,
/// counted per group of candidates (a kv head, or a (layer, kv head) pair): the cross-layer and
/// cross-head evictions of KVzip and FastKVzip on a shard.
///
/// In one process the candidates are ranked by score, ties to the lower index, and the first `take`
/// are taken; the groups are consecutive ranges of indices, so ties go to the lower group. Here the
/// radix select of AdaKV's shard form (`sharded_adakv.hpp`) finds the take-th score: four passes of 8
/// bits over `score_key`, each an all-reduce of one 256-bin histogram; then one all-reduce of the
/// per-group counts above that score and equal to it hands the ties to the lowest groups. Every
/// rank ends with every group's count, exactly the single process's: O(groups + bins) values
/// exchanged, never the scores.

#include <algorithm>
#include <cstdint>

#include "kvcompress/dist/communicator.hpp"
#include "kvcompress/dist/sharded_adakv.hpp"

namespace kvcompress::detail {

/// \brief The global best `take` of the group's candidates, counted per group.
///
/// This rank's candidates are i ∈ [0, m): `value(i)` (finite), in global group `group(i)` ∈ [0, groups).
/// `lowest`: rank by the negated score instead (the lowest first, ties still to the lower index).
/// Call on every rank after the handshake; nothing here fails.
/// \param hist   [kRadixBins] scratch
/// \param counts [2 · groups] out: counts[g] is group g's share of the take, on every rank
///               (the second half is scratch)
template <class Value, class Group>
void sharded_top_counts(Communicator& comm, std::int64_t m, Value&& value, Group&& group, std::int64_t groups,
                        std::int64_t take, bool lowest, std::int64_t* hist, std::int64_t* counts) {
  auto const key_of = [&](std::int64_t i) {
    std::uint32_t const k = score_key(value(i));
    return lowest ? ~k : k;
  };
  std::int64_t left = take;  // entries still to take at or below the current prefix
  std::uint32_t prefix = 0;
  std::int64_t total = 0;
  for (int pass = 0; pass < kRadixPasses; ++pass) {
    int const shift = 32 - kRadixBits * (pass + 1);
    std::fill(hist, hist + kRadixBins, std::int64_t{0});
    for (std::int64_t i = 0; i < m; ++i) {
      std::uint32_t const key = key_of(i);
      if (pass > 0 && (key >> (shift + kRadixBits)) != (prefix >> (shift + kRadixBits))) continue;
      ++hist[(key >> shift) & (kRadixBins - 1)];
    }
    comm.all_reduce(hist, static_cast<std::size_t>(kRadixBins), ReduceOp::sum);
    if (pass == 0) {
      for (std::int64_t b = 0; b < kRadixBins; ++b) total += hist[b];
      if (take <= 0 || take >= total) break;  // every rank sees the same total
    }
    for (std::int64_t bin = kRadixBins - 1; bin >= 0; --bin) {
      if (left <= hist[bin]) {
        prefix |= static_cast<std::uint32_t>(bin) << shift;
        break;
      }
      left -= hist[bin];
    }
  }
  std::int64_t* equal = counts + groups;  // [groups]
  std::fill(counts, counts + 2 * groups, std::int64_t{0});
  bool const all = take >= total;
  if (take > 0)
    for (std::int64_t i = 0; i < m; ++i) {
      std::uint32_t const key = all ? 0u : key_of(i);
      if (all || key > prefix) ++counts[group(i)];
      else if (key == prefix) ++equal[group(i)];
    }
  comm.all_reduce(counts, static_cast<std::size_t>(2 * groups), ReduceOp::sum);
  if (take <= 0 || all) return;
  // `prefix` is the take-th entry's key and `left` (≥ 1) the entries equal to it still to take.
  for (std::int64_t g = 0; g < groups; ++g) {
    std::int64_t const give = std::clamp<std::int64_t>(left, 0, equal[g]);
    counts[g] += give;
    left -= give;
  }
}

}  // namespace kvcompress::detail
