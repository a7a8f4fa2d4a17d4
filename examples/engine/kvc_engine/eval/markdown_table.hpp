#pragma once
/// \file
/// \brief `MarkdownTable`: a GitHub-flavoured markdown table, its columns padded to equal width so that it
/// also reads well in a terminal; the first column left-aligned (names), the others right-aligned (numbers).

#include <algorithm>
#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "kvcompress/core/error.hpp"

namespace kvc_engine {

class MarkdownTable {
 public:
  explicit MarkdownTable(std::vector<std::string> header) : header_(std::move(header)) {
    KVC_CHECK(!header_.empty(), "a table needs at least one column");
  }

  void add_row(std::vector<std::string> cells) {
    KVC_CHECK(cells.size() == header_.size(), "a table row has " << cells.size() << " cells, the header " << header_.size());
    rows_.push_back(std::move(cells));
  }

  [[nodiscard]] std::string str() const {
    std::vector<std::size_t> width(header_.size(), 3);
    auto widen = [&](std::vector<std::string> const& r) {
      for (std::size_t i = 0; i < r.size(); ++i) width[i] = std::max(width[i], columns(r[i]));
    };
    widen(header_);
    for (auto const& r : rows_) widen(r);
    std::string out;
    auto line = [&](std::vector<std::string> const& r) {
      for (std::size_t i = 0; i < r.size(); ++i) {
        std::string const pad(width[i] - columns(r[i]), ' ');
        out += "| " + (i == 0 ? r[i] + pad : pad + r[i]) + " ";
      }
      out += "|\n";
    };
    line(header_);
    for (std::size_t i = 0; i < width.size(); ++i)
      out += "|" + (i == 0 ? std::string(width[i] + 2, '-') : std::string(width[i] + 1, '-') + ":");
    out += "|\n";
    for (auto const& r : rows_) line(r);
    return out;
  }

 private:
  /// Display columns of UTF-8 text: bytes that do not continue a character.
  static std::size_t columns(std::string const& s) {
    return static_cast<std::size_t>(std::count_if(s.begin(), s.end(), [](char c) {
      return (static_cast<unsigned char>(c) & 0xC0) != 0x80;
    }));
  }

  std::vector<std::string> header_;
  std::vector<std::vector<std::string>> rows_;
};

}  // namespace kvc_engine
