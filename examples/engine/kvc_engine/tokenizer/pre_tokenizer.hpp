#pragma once
/// \file
/// \brief `PreTokenizer`: cuts text into the pieces that byte-level BPE merges within, one variant per
/// `tokenizer.ggml.pre` name. Each variant is a sequence of Unicode patterns; every pattern cuts each
/// piece the previous one left into its matches and the text between them (nothing is dropped).
///
/// The patterns are data: those of the models' own tokenizer.json files, written for Oniguruma (HF
/// tokenizers' engine). PCRE2 reads them alike but for one class: its `\s` also matches U+180E MONGOLIAN
/// VOWEL SEPARATOR (in `\h`), which Oniguruma's `\s`, the Unicode White_Space property, does not; so
/// `\s` / `\S` are rewritten as `\p{White_Space}` / `\P{White_Space}` before compiling. Where a variant
/// also changes how BPE runs, it says so.

#include <string>
#include <string_view>
#include <vector>

#include "kvc_engine/tokenizer/unicode_regex.hpp"
#include "kvcompress/core/error.hpp"

namespace kvc_engine {

namespace pre_tokenizer_patterns {

/// GPT-2's split, as HF tokenizers' ByteLevel pre-tokenizer (use_regex = true) applies it.
inline constexpr char kGpt2[] = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
/// HF tokenizers' Digits(individual_digits = true): every numeric character (Nd, Nl, No) alone.
inline constexpr char kEachDigit[] = R"(\p{N})";
/// Llama 3's Split pattern: numbers in groups of up to three digits.
inline constexpr char kLlama3[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
/// Qwen2's Split pattern: Llama 3's with single digits.
inline constexpr char kQwen2[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

}  // namespace pre_tokenizer_patterns

namespace detail {

/// An Oniguruma pattern with `\s` and `\S` spelled as the White_Space property they mean there.
inline std::string with_unicode_white_space(std::string_view pattern) {
  std::string out;
  for (std::size_t i = 0; i < pattern.size(); ++i) {
    if (pattern[i] == '\\' && i + 1 < pattern.size()) {
      char const next = pattern[++i];
      if (next == 's') {
        out += "\\p{White_Space}";
      } else if (next == 'S') {
        out += "\\P{White_Space}";
      } else {
        out += '\\';
        out += next;
      }
    } else {
      out += pattern[i];
    }
  }
  return out;
}

}  // namespace detail

/// \brief The `tokenizer.ggml.pre` names this engine knows, for error messages.
inline constexpr char kSupportedPreTokenizers[] =
    "gpt-2 (or gpt2), smollm, llama-bpe (or llama3, llama-v3), qwen2 (or deepseek-r1-qwen)";

/// \brief A pre-tokenizer variant: its patterns, applied in order.
class PreTokenizer {
 public:
  /// \brief The variant GGUF calls `name`; throws, listing the supported names, for any other.
  explicit PreTokenizer(std::string const& name) : name_(name) {
    namespace p = pre_tokenizer_patterns;
    if (name == "gpt-2" || name == "gpt2") {
      regexes_.emplace_back(detail::with_unicode_white_space(p::kGpt2));
    } else if (name == "smollm") {
      regexes_.emplace_back(detail::with_unicode_white_space(p::kEachDigit));
      regexes_.emplace_back(detail::with_unicode_white_space(p::kGpt2));
    } else if (name == "llama-bpe" || name == "llama3" || name == "llama-v3") {
      regexes_.emplace_back(detail::with_unicode_white_space(p::kLlama3));
      // Llama 3's tokenizer.json sets the BPE model's ignore_merges: a piece that is a token is kept whole.
      ignore_merges_ = true;
    } else if (name == "qwen2" || name == "deepseek-r1-qwen") {
      regexes_.emplace_back(detail::with_unicode_white_space(p::kQwen2));
      // Qwen2's tokenizer.json normalises text to NFC before splitting it.
      nfc_ = true;
    } else {
      KVC_THROW("tokenizer.ggml.pre '" << name << "' is not a supported pre-tokenizer (" << kSupportedPreTokenizers
                                       << ")");
    }
  }

  [[nodiscard]] std::string const& name() const noexcept { return name_; }
  /// \brief Whether BPE keeps a piece that is itself a vocabulary entry as one token, without merging.
  [[nodiscard]] bool ignore_merges() const noexcept { return ignore_merges_; }
  /// \brief Whether text is normalised to NFC before it is split.
  [[nodiscard]] bool nfc() const noexcept { return nfc_; }

  /// \brief Replaces `pieces` by the pieces of `text` (valid UTF-8); `scratch` is reused between calls.
  void split(std::string_view text, std::vector<std::string_view>& pieces,
             std::vector<std::string_view>& scratch) const {
    pieces.clear();
    pieces.push_back(text);
    for (UnicodeRegex const& regex : regexes_) {
      scratch.clear();
      for (std::string_view piece : pieces) regex.split(piece, scratch);
      pieces.swap(scratch);
    }
  }

 private:
  std::string name_;
  std::vector<UnicodeRegex> regexes_;
  bool ignore_merges_ = false;
  bool nfc_ = false;
};

}  // namespace kvc_engine
