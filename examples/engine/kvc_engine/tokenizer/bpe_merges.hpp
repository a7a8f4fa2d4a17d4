#pragma once
/// \file
/// \brief `BpeMerges`: the ranked merge list of a byte-level BPE vocabulary, and the merging of one
/// pre-tokenized piece: repeatedly join the adjacent pair with the lowest rank (the leftmost among
/// equals) until no adjacent pair has a merge. A heap over the candidate pairs makes a piece of n
/// symbols cost O(n log n), so a long run of one character cannot stall the tokenizer.

#include <cstddef>
#include <cstdint>
#include <queue>
#include <string>
#include <unordered_map>
#include <vector>

#include "kvcompress/core/error.hpp"

namespace kvc_engine {

class BpeMerges {
 public:
  BpeMerges() = default;

  /// \brief Parses `merges` ("left right", rank = index) against `vocab` (text → id). Throws naming the
  /// merge's index and text when it is not two tokens separated by one space, or when the left, the
  /// right or the joined token is not in the vocabulary. A pair listed twice keeps its first rank.
  BpeMerges(std::vector<std::string> const& merges, std::unordered_map<std::string, std::int32_t> const& vocab) {
    table_.reserve(merges.size());
    for (std::size_t rank = 0; rank < merges.size(); ++rank) {
      std::string const& merge = merges[rank];
      std::size_t const space = merge.find(' ');
      KVC_CHECK(space != std::string::npos && space != 0 && space + 1 < merge.size() &&
                    merge.find(' ', space + 1) == std::string::npos,
                "tokenizer.ggml.merges[" << rank << "] = '" << merge << "' is not two tokens separated by one space");
      std::string const left = merge.substr(0, space);
      std::string const right = merge.substr(space + 1);
      std::int32_t const left_id = token_id(vocab, left, rank, merge, "left token");
      std::int32_t const right_id = token_id(vocab, right, rank, merge, "right token");
      std::int32_t const joined_id = token_id(vocab, left + right, rank, merge, "joined token");
      table_.emplace(key(left_id, right_id), Merge{static_cast<std::int32_t>(rank), joined_id});
    }
  }

  [[nodiscard]] std::size_t size() const noexcept { return table_.size(); }

  /// \brief Merges `ids` (one token id per symbol of a piece, in order) in place.
  void apply(std::vector<std::int32_t>& ids) const {
    if (ids.size() < 2) return;
    auto const n = static_cast<std::int32_t>(ids.size());
    std::vector<Node> nodes(ids.size());
    for (std::int32_t i = 0; i < n; ++i)
      nodes[static_cast<std::size_t>(i)] = Node{ids[static_cast<std::size_t>(i)], i - 1, i + 1 < n ? i + 1 : -1};
    std::priority_queue<Candidate, std::vector<Candidate>, Later> heap;
    auto const push = [&](std::int32_t left) {
      if (left < 0) return;
      Node const& l = nodes[static_cast<std::size_t>(left)];
      if (l.next < 0) return;
      std::int32_t const right_id = nodes[static_cast<std::size_t>(l.next)].id;
      auto const it = table_.find(key(l.id, right_id));
      if (it != table_.end()) heap.push(Candidate{it->second.rank, left, l.id, right_id, it->second.result});
    };
    for (std::int32_t i = 0; i + 1 < n; ++i) push(i);
    while (!heap.empty()) {
      Candidate const c = heap.top();
      heap.pop();
      Node& l = nodes[static_cast<std::size_t>(c.left)];
      // Skip candidates that an earlier merge made stale: the left symbol changed or died, or its right
      // neighbour is no longer the one the pair was made with.
      if (l.id != c.left_id || l.next < 0 || nodes[static_cast<std::size_t>(l.next)].id != c.right_id) continue;
      Node& r = nodes[static_cast<std::size_t>(l.next)];
      l.id = c.result;
      r.id = -1;
      l.next = r.next;
      if (r.next >= 0) nodes[static_cast<std::size_t>(r.next)].prev = c.left;
      push(l.prev);
      push(c.left);
    }
    ids.clear();
    for (std::int32_t i = 0; i >= 0; i = nodes[static_cast<std::size_t>(i)].next)
      ids.push_back(nodes[static_cast<std::size_t>(i)].id);
  }

 private:
  struct Merge {
    std::int32_t rank;
    std::int32_t result;
  };
  struct Node {
    std::int32_t id;    // -1 once merged into its left neighbour
    std::int32_t prev;  // -1: none
    std::int32_t next;  // -1: none
  };
  struct Candidate {
    std::int32_t rank;
    std::int32_t left;  // node index of the pair's left symbol (its position in the piece)
    std::int32_t left_id;
    std::int32_t right_id;
    std::int32_t result;
  };
  /// Heap order: the lowest rank first, then the leftmost.
  struct Later {
    bool operator()(Candidate const& a, Candidate const& b) const noexcept {
      return a.rank != b.rank ? a.rank > b.rank : a.left > b.left;
    }
  };

  static std::int32_t token_id(std::unordered_map<std::string, std::int32_t> const& vocab, std::string const& text,
                               std::size_t rank, std::string const& merge, char const* role) {
    auto const it = vocab.find(text);
    KVC_CHECK(it != vocab.end(), "tokenizer.ggml.merges[" << rank << "] = '" << merge << "': its " << role << " '"
                                                          << text << "' is not in the vocabulary");
    return it->second;
  }

  static std::uint64_t key(std::int32_t left, std::int32_t right) noexcept {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(left)) << 32) | static_cast<std::uint32_t>(right);
  }

  std::unordered_map<std::uint64_t, Merge> table_;
};

}  // namespace kvc_engine
