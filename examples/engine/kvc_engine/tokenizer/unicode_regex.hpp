#pragma once
/// \file
/// \brief `UnicodeRegex`: a PCRE2 pattern compiled for UTF-8 text with Unicode properties (`\p{L}`,
/// `\p{N}`, and `\s`, `\w` by Unicode rules), JIT-compiled when the library supports it, and the one
/// operation pre-tokenizers need: cut a text into the matches and the text between them.

#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "kvcompress/core/error.hpp"

namespace kvc_engine {

namespace detail {

inline std::string pcre2_message(int code) {
  PCRE2_UCHAR buffer[256];
  int const n = pcre2_get_error_message(code, buffer, sizeof buffer);
  return n < 0 ? "PCRE2 error " + std::to_string(code) : std::string(reinterpret_cast<char const*>(buffer));
}

}  // namespace detail

/// \brief A compiled Unicode pattern. Immutable after construction, so one object serves many threads
/// (each `split` call has its own match state).
class UnicodeRegex {
 public:
  /// \brief Compiles `pattern` (PCRE2 syntax) with PCRE2_UTF | PCRE2_UCP; throws naming the pattern,
  /// the offset and PCRE2's message when it does not compile.
  explicit UnicodeRegex(std::string pattern) : pattern_(std::move(pattern)) {
    int error = 0;
    PCRE2_SIZE offset = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern_.data()), pattern_.size(),
                                     PCRE2_UTF | PCRE2_UCP, &error, &offset, nullptr);
    KVC_CHECK(code != nullptr, "pre-tokenizer pattern '" << pattern_ << "' does not compile at offset " << offset
                                                         << ": " << detail::pcre2_message(error));
    code_.reset(code, pcre2_code_free);
    // JIT is an optimisation: where this build of PCRE2 has none, the interpreter gives the same matches.
    jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  }

  [[nodiscard]] std::string const& pattern() const noexcept { return pattern_; }
  [[nodiscard]] bool jit() const noexcept { return jit_; }

  /// \brief Appends to `out`, in order, every match in `text` and every non-empty stretch between
  /// matches (HF tokenizers' "isolated" split: nothing of the text is lost). `text` must be valid
  /// UTF-8 (the caller checks once for the whole input). Lookarounds see `text` only.
  void split(std::string_view text, std::vector<std::string_view>& out) const {
    std::unique_ptr<pcre2_match_data, void (*)(pcre2_match_data*)> match(
        pcre2_match_data_create_from_pattern(code_.get(), nullptr), pcre2_match_data_free);
    KVC_CHECK(match != nullptr, "out of memory for the match state of pattern '" << pattern_ << "'");
    auto const subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    std::size_t last = 0;  // end of the previous piece
    std::size_t start = 0;
    while (start < text.size()) {
      int const rc = pcre2_match(code_.get(), subject, text.size(), start, PCRE2_NO_UTF_CHECK, match.get(), nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      KVC_CHECK(rc >= 0, "pattern '" << pattern_ << "' failed on a text of " << text.size()
                                     << " bytes: " << detail::pcre2_message(rc));
      PCRE2_SIZE const* ovector = pcre2_get_ovector_pointer(match.get());
      std::size_t const begin = ovector[0];
      std::size_t const end = ovector[1];
      if (begin > last) out.push_back(text.substr(last, begin - last));
      if (end > begin) {
        out.push_back(text.substr(begin, end - begin));
        last = end;
        start = end;
      } else {
        // An empty match cuts nothing; step over one character so that the search moves on.
        last = begin;
        start = begin + 1;
        while (start < text.size() && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) ++start;
      }
    }
    if (last < text.size()) out.push_back(text.substr(last));
  }

 private:
  std::string pattern_;
  std::shared_ptr<pcre2_code> code_;
  bool jit_ = false;
};

}  // namespace kvc_engine
