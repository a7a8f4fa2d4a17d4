#pragma once
/// \file
/// \brief `ProseCorpus`: natural English text for the generated tasks' haystacks, questions and held-out
/// text, read from a dictionary in the dictd text layout — by default Ambrose Bierce's *The Devil's
/// Dictionary* (1911, public domain) as Debian's package `dict-devil` installs it
/// (/usr/share/dictd/devil.dict.dz, gzip; tools/install-deps.sh installs it). Any text file of paragraphs
/// separated by blank lines serves as a haystack; the QA task also needs entries "HEADWORD, n. text".
///
/// Verse (indented lines) and the database header are left out; `_italics_` marks are dropped and runs of
/// spaces collapsed, so every paragraph is one line of prose.

#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "kvcompress/core/error.hpp"

namespace kvc_engine {

/// Where Debian's dict-devil puts the text.
inline constexpr char const* kDefaultProsePath = "/usr/share/dictd/devil.dict.dz";

/// \brief One dictionary entry's first paragraph: `headword` ("ABDOMEN") and the prose after its part of
/// speech ("The temple of the god Stomach, ...").
struct ProseEntry {
  std::string headword;
  std::string definition;
};

struct ProseCorpus {
  std::string source;                   ///< the file read, for messages
  std::vector<std::string> paragraphs;  ///< prose paragraphs in file order, each one line
  std::vector<ProseEntry> entries;      ///< entries whose first paragraph is prose, in file order
  std::vector<std::string> words;       ///< distinct lowercase alphabetic words of 4–9 letters, sorted
};

namespace detail {

/// The whole file, decompressed if it is gzip (zlib reads a plain file as it is).
inline std::string read_maybe_gzip(std::string const& path) {
  std::unique_ptr<gzFile_s, int (*)(gzFile)> f(gzopen(path.c_str(), "rb"), gzclose);
  KVC_CHECK(f != nullptr, "--prose: cannot open " << path);
  std::string out;
  char buf[1 << 16];
  for (;;) {
    int const n = gzread(f.get(), buf, sizeof buf);
    int err = Z_OK;
    char const* msg = gzerror(f.get(), &err);
    KVC_CHECK(n >= 0 && (err == Z_OK || err == Z_STREAM_END), "--prose: cannot read " << path << ": " << msg);
    if (n == 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}

/// One prose line from a block's lines: underscores dropped, whitespace runs collapsed to one space.
inline std::string join_prose(std::vector<std::string> const& lines) {
  std::string out;
  for (auto const& line : lines) {
    if (!out.empty() && out.back() != ' ') out += ' ';  // the line break
    for (char c : line) {
      if (c == '_') continue;
      bool const space = std::isspace(static_cast<unsigned char>(c)) != 0;
      if (space) {
        if (!out.empty() && out.back() != ' ') out += ' ';
      } else {
        out += c;
      }
    }
  }
  while (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

/// "HEADWORD, pos. definition": the headword (capital letters, spaces, hyphens, apostrophes) and the text
/// after the part of speech; false for any other paragraph.
inline bool split_entry(std::string const& p, ProseEntry& e) {
  std::size_t const comma = p.find(", ");
  if (comma == std::string::npos || comma < 2) return false;
  for (std::size_t i = 0; i < comma; ++i) {
    char const c = p[i];
    if (!(std::isupper(static_cast<unsigned char>(c)) || c == ' ' || c == '-' || c == '\'')) return false;
  }
  std::size_t const dot = p.find(". ", comma + 2);
  if (dot == std::string::npos || dot - comma > 12) return false;  // "n.", "adj.", "v.t.", "p.p."
  e.headword = p.substr(0, comma);
  e.definition = p.substr(dot + 2);
  return !e.definition.empty();
}

}  // namespace detail

/// \brief Reads `path` (gzip or plain text). Blocks are separated by blank lines; a block is verse when most
/// of its lines are indented, otherwise prose in which an indented line starts a paragraph; everything
/// before the first entry is skipped when the file has entries (the dictd header and preface). Throws naming the file when it holds no prose.
[[nodiscard]] inline ProseCorpus load_prose_corpus(std::string const& path = kDefaultProsePath) {
  std::string const text = detail::read_maybe_gzip(path);
  ProseCorpus c;
  c.source = path;
  std::istringstream in(text);
  std::string line;
  std::vector<std::string> block;
  std::vector<std::string> paragraphs;
  std::vector<bool> is_entry;
  std::vector<ProseEntry> entries;
  auto add = [&](std::vector<std::string> const& lines) {
    if (lines.empty() || lines.front().rfind("00-database", 0) == 0) return;
    std::string p = detail::join_prose(lines);
    ProseEntry e;
    bool const entry = detail::split_entry(p, e);
    if (entry) entries.push_back(std::move(e));
    paragraphs.push_back(std::move(p));
    is_entry.push_back(entry);
  };
  // A block is verse when most of its lines are indented; in prose an indented line starts a paragraph.
  auto flush = [&] {
    auto const indented = [](std::string const& l) { return std::isspace(static_cast<unsigned char>(l[0])) != 0; };
    if (2 * std::count_if(block.begin(), block.end(), indented) <= static_cast<std::ptrdiff_t>(block.size())) {
      std::vector<std::string> lines;
      for (auto const& l : block) {
        if (indented(l)) {
          add(lines);
          lines.clear();
        }
        lines.push_back(l);
      }
      add(lines);
    }
    block.clear();
  };
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) {
      flush();
    } else {
      block.push_back(line);
    }
  }
  flush();
  auto const first_entry = std::find(is_entry.begin(), is_entry.end(), true);
  std::size_t const skip = first_entry == is_entry.end() ? 0 : static_cast<std::size_t>(first_entry - is_entry.begin());
  c.paragraphs.assign(paragraphs.begin() + static_cast<std::ptrdiff_t>(skip), paragraphs.end());
  c.entries = std::move(entries);
  KVC_CHECK(!c.paragraphs.empty(), "--prose: " << path << " holds no prose paragraph");
  std::set<std::string> words;
  for (auto const& p : c.paragraphs) {
    std::string w;
    for (std::size_t i = 0; i <= p.size(); ++i) {
      char const ch = i < p.size() ? p[i] : ' ';
      if (std::islower(static_cast<unsigned char>(ch))) {
        w += ch;
        continue;
      }
      // A word is a run of lowercase letters between spaces or punctuation; a capital letter (names), an
      // apostrophe or a hyphen next to it spoils it ("remainin'", "half-").
      auto const part_of_word = [](char x) { return std::isalpha(static_cast<unsigned char>(x)) || x == '\'' || x == '-'; };
      bool const bounded = !part_of_word(ch) && (i == w.size() || !part_of_word(p[i - w.size() - 1]));
      if (bounded && w.size() >= 4 && w.size() <= 9) words.insert(w);
      w.clear();
    }
  }
  c.words.assign(words.begin(), words.end());
  return c;
}

}  // namespace kvc_engine
