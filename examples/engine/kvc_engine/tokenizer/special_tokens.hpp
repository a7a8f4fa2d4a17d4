#pragma once
/// \file
/// \brief `SpecialTokenSplitter`: finds the control, user-defined and unknown tokens (`<|im_start|>`,
/// `<s>`) written in a text, as HF tokenizers finds its added tokens before any other step: scanning
/// from the left, at the first position where some special token's text starts, the longest one wins;
/// the text between matches goes on to pre-tokenisation.

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kvc_engine {

/// \brief A stretch of the input: either a special token (`id` ≥ 0) or text (`id` = -1).
struct TextSegment {
  std::string_view text;
  std::int32_t id = -1;
};

class SpecialTokenSplitter {
 public:
  SpecialTokenSplitter() = default;

  /// \brief Adds a special token; an empty text can never match and is ignored.
  void add(std::string const& text, std::int32_t id) {
    if (text.empty()) return;
    auto& bucket = by_first_byte_[static_cast<unsigned char>(text[0])];
    bucket.push_back(Entry{text, id});
    // Longest first, so that the first match found at a position is the longest there.
    for (std::size_t i = bucket.size() - 1; i > 0 && bucket[i - 1].text.size() < bucket[i].text.size(); --i) {
      std::swap(bucket[i - 1], bucket[i]);
    }
  }

  /// \brief Replaces `out` by the segments of `text`, in order; empty text segments are left out.
  void split(std::string_view text, std::vector<TextSegment>& out) const {
    out.clear();
    std::size_t last = 0;
    for (std::size_t i = 0; i < text.size(); ++i) {
      for (Entry const& e : by_first_byte_[static_cast<unsigned char>(text[i])]) {
        if (text.compare(i, e.text.size(), e.text) != 0) continue;
        if (i > last) out.push_back(TextSegment{text.substr(last, i - last), -1});
        out.push_back(TextSegment{text.substr(i, e.text.size()), e.id});
        i += e.text.size() - 1;
        last = i + 1;
        break;
      }
    }
    if (last < text.size()) out.push_back(TextSegment{text.substr(last), -1});
  }

 private:
  struct Entry {
    std::string text;
    std::int32_t id;
  };
  std::array<std::vector<Entry>, 256> by_first_byte_;
};

}  // namespace kvc_engine
