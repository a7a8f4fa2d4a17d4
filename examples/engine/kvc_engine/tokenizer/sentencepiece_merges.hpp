#pragma once
/// \file
/// \brief SentencePiece's BPE encoding (the `llama` tokenizer model of GGUF): start from the text's
/// characters and repeatedly join the adjacent pair whose concatenation is a vocabulary piece with the
/// highest score (the leftmost among equals), until no adjacent pair forms a piece. Pieces are spans of
/// the text, so a joined pair is again one span. Only normal pieces take part in merging, as in
/// SentencePiece, where control, unknown and byte pieces are reserved.

#include <cstddef>
#include <cstdint>
#include <queue>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "kvc_engine/tokenizer/utf8.hpp"

namespace kvc_engine {

/// \brief A span of the text that ends as one piece: [begin, begin + size).
struct SpmPiece {
  std::size_t begin;
  std::size_t size;
};

/// \brief Splits `text` (valid UTF-8) into the pieces SentencePiece's BPE leaves; `pieces` gives text →
/// id for the mergeable pieces, `scores` each id's score. A piece of one character may not be in
/// `pieces`: the caller falls back to bytes for it.
inline void spm_merge(std::string_view text, std::unordered_map<std::string, std::int32_t> const& pieces,
                      std::vector<float> const& scores, std::vector<SpmPiece>& out) {
  struct Node {
    std::size_t begin;
    std::size_t size;  // 0 once joined into its left neighbour
    std::int64_t prev;
    std::int64_t next;
  };
  struct Candidate {
    float score;
    std::int64_t left;
    std::size_t size;  // of the joined span, to tell a stale candidate from a live one
  };
  struct Later {  // heap order: the highest score first, then the leftmost
    bool operator()(Candidate const& a, Candidate const& b) const noexcept {
      return a.score != b.score ? a.score < b.score : a.left > b.left;
    }
  };
  std::vector<Node> nodes;
  for (std::size_t i = 0; i < text.size();) {
    std::size_t const n = detail::utf8_sequence_length(text, i);
    auto const index = static_cast<std::int64_t>(nodes.size());
    nodes.push_back(Node{i, n, index - 1, -1});
    if (index > 0) nodes[static_cast<std::size_t>(index - 1)].next = index;
    i += n;
  }
  std::priority_queue<Candidate, std::vector<Candidate>, Later> heap;
  std::string joined;
  auto const push = [&](std::int64_t left) {
    if (left < 0) return;
    Node const& l = nodes[static_cast<std::size_t>(left)];
    if (l.next < 0) return;
    std::size_t const size = l.size + nodes[static_cast<std::size_t>(l.next)].size;
    joined.assign(text.substr(l.begin, size));
    auto const it = pieces.find(joined);
    if (it != pieces.end()) heap.push(Candidate{scores[static_cast<std::size_t>(it->second)], left, size});
  };
  for (std::size_t i = 0; i + 1 < nodes.size(); ++i) push(static_cast<std::int64_t>(i));
  while (!heap.empty()) {
    Candidate const c = heap.top();
    heap.pop();
    Node& l = nodes[static_cast<std::size_t>(c.left)];
    // Stale when the left span died or changed, or it no longer has a right neighbour of the right size.
    if (l.size == 0 || l.next < 0 || l.size + nodes[static_cast<std::size_t>(l.next)].size != c.size) continue;
    Node& r = nodes[static_cast<std::size_t>(l.next)];
    l.size = c.size;
    r.size = 0;
    l.next = r.next;
    if (r.next >= 0) nodes[static_cast<std::size_t>(r.next)].prev = c.left;
    push(l.prev);
    push(c.left);
  }
  out.clear();
  for (std::int64_t i = nodes.empty() ? -1 : 0; i >= 0; i = nodes[static_cast<std::size_t>(i)].next) {
    out.push_back(SpmPiece{nodes[static_cast<std::size_t>(i)].begin, nodes[static_cast<std::size_t>(i)].size});
  }
}

}  // namespace kvc_engine
