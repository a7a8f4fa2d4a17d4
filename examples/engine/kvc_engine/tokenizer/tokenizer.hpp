#pragma once
/// \file
/// \brief `Tokenizer`: text ↔ token ids for the two tokenizer models GGUF files carry.
///
/// - `gpt2`: byte-level BPE. Special tokens are cut out first; the pre-tokenizer named by
///   `tokenizer.ggml.pre` cuts the rest into pieces; each piece's bytes become GPT-2 alphabet symbols,
///   merged by rank (bpe_merges.hpp).
/// - `llama`: SentencePiece BPE. Special tokens are cut out first; each text stretch gets a leading space
///   when `add_space_prefix` is set (at the start and after every special token, as SentencePiece-based
///   HF tokenizers and llama.cpp do), spaces become `▁`, characters are joined by score
///   (sentencepiece_merges.hpp), and a character that is no piece is written as its `<0xNN>` byte tokens.
///
/// Input text must be valid UTF-8 (an error names the offset otherwise). `decode` is the exact inverse of
/// `encode` on the bytes: tokens that hold part of a UTF-8 character are concatenated as bytes, never
/// replaced, so decode(encode(s)) == s for every text s (special tokens come back as their text) — but for
/// what the model itself changes: Qwen2 normalises to NFC, SentencePiece reads U+2581 as a space.

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <iomanip>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "kvc_engine/tokenizer/bpe_merges.hpp"
#include "kvc_engine/tokenizer/byte_level.hpp"
#include "kvc_engine/tokenizer/pre_tokenizer.hpp"
#include "kvc_engine/tokenizer/sentencepiece_merges.hpp"
#include "kvc_engine/tokenizer/special_tokens.hpp"
#include "kvc_engine/tokenizer/tokenizer_model.hpp"
#include "kvc_engine/tokenizer/unicode_nfc.hpp"
#include "kvc_engine/tokenizer/utf8.hpp"
#include "kvcompress/core/error.hpp"

namespace kvc_engine {

namespace detail {

/// A text for an error message: at most 40 bytes, control bytes escaped.
inline std::string excerpt(std::string_view s) {
  std::ostringstream os;
  for (std::size_t i = 0; i < s.size() && i < 40; ++i) {
    auto const b = static_cast<unsigned char>(s[i]);
    if (b < 0x20 || b == 0x7F) {
      os << "\\x" << std::hex << std::setw(2) << std::setfill('0') << static_cast<unsigned>(b) << std::dec;
    } else {
      os << s[i];
    }
  }
  if (s.size() > 40) os << "...";
  return os.str();
}

inline std::string hex_byte(unsigned char b) {
  std::ostringstream os;
  os << "0x" << std::uppercase << std::hex << std::setw(2) << std::setfill('0') << static_cast<unsigned>(b);
  return os.str();
}

}  // namespace detail

class Tokenizer {
 public:
  /// UTF-8 of U+2581 `▁`, SentencePiece's visible space.
  static constexpr std::string_view kSpmSpace = "\xE2\x96\x81";

  /// \brief Builds the tokenizer; throws naming the field and the value for an unknown model or
  /// pre-tokenizer, inconsistent array sizes, an out-of-range special id, a merge naming an unknown
  /// token, or a byte-level token outside the GPT-2 alphabet.
  explicit Tokenizer(TokenizerModel model) : model_(std::move(model)) {
    std::size_t const n = model_.tokens.size();
    KVC_CHECK(model_.model == "gpt2" || model_.model == "llama",
              "tokenizer.ggml.model '" << model_.model << "' is not supported (gpt2, llama)");
    KVC_CHECK(n > 0 && n <= static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max()),
              "tokenizer.ggml.tokens holds " << n << " tokens (need 1 to 2^31 - 1)");
    KVC_CHECK(model_.token_types.empty() || model_.token_types.size() == n,
              "tokenizer.ggml.token_type holds " << model_.token_types.size() << " entries for " << n << " tokens");
    for (std::size_t i = 0; i < model_.token_types.size(); ++i) {
      KVC_CHECK(model_.token_types[i] >= 0 && model_.token_types[i] <= 6, "tokenizer.ggml.token_type["
                                                                              << i << "] = " << model_.token_types[i]
                                                                              << " is not a token type (0 to 6)");
    }
    check_id(model_.bos_id, "tokenizer.ggml.bos_token_id");
    check_id(model_.eos_id, "tokenizer.ggml.eos_token_id");
    check_id(model_.unknown_id, "tokenizer.ggml.unknown_token_id");
    check_id(model_.padding_id, "tokenizer.ggml.padding_token_id");
    KVC_CHECK(!model_.add_bos || model_.bos_id >= 0,
              "tokenizer.ggml.add_bos_token is set but there is no bos_token_id");
    KVC_CHECK(!model_.add_eos || model_.eos_id >= 0,
              "tokenizer.ggml.add_eos_token is set but there is no eos_token_id");

    for (std::size_t i = 0; i < n; ++i) {
      std::int32_t const id = static_cast<std::int32_t>(i);
      std::string const& text = model_.tokens[i];
      if (is_special(type(id))) {
        KVC_CHECK(detail::first_invalid_utf8(text) == text.size(),
                  "tokenizer.ggml.tokens[" << i << "] (a special token) is not valid UTF-8");
        specials_.add(text, id);
      }
    }
    if (model_.model == "gpt2") {
      init_byte_level();
    } else {
      init_sentencepiece();
    }
  }

  [[nodiscard]] TokenizerModel const& model() const noexcept { return model_; }
  [[nodiscard]] std::size_t vocab_size() const noexcept { return model_.tokens.size(); }
  [[nodiscard]] std::int32_t bos_id() const noexcept { return static_cast<std::int32_t>(model_.bos_id); }
  [[nodiscard]] std::int32_t eos_id() const noexcept { return static_cast<std::int32_t>(model_.eos_id); }
  [[nodiscard]] TokenType type(std::int32_t id) const noexcept {
    return model_.token_types.empty() ? TokenType::kNormal
                                      : static_cast<TokenType>(model_.token_types[static_cast<std::size_t>(id)]);
  }

  /// \brief The ids of `text` (valid UTF-8). `add_bos_eos`: put BOS / EOS around them where the model
  /// asks for it (`add_bos_token`, `add_eos_token`). `parse_special`: recognise special tokens written in
  /// the text (otherwise they are tokenized as plain text).
  [[nodiscard]] std::vector<std::int32_t> encode(std::string_view text, bool add_bos_eos = true,
                                                 bool parse_special = true) const {
    std::size_t const bad = detail::first_invalid_utf8(text);
    KVC_CHECK(bad == text.size(), "text is not valid UTF-8: byte "
                                      << detail::hex_byte(static_cast<unsigned char>(text[bad])) << " at offset " << bad
                                      << " of " << text.size());
    std::vector<std::int32_t> ids;
    if (add_bos_eos && model_.add_bos) ids.push_back(bos_id());
    std::vector<TextSegment> segments;
    if (parse_special) {
      specials_.split(text, segments);
    } else if (!text.empty()) {
      segments.push_back(TextSegment{text, -1});
    }
    Scratch scratch;
    bool after_special = true;  // at the start of the text, SentencePiece's dummy prefix applies too
    for (TextSegment const& s : segments) {
      if (s.id >= 0) {
        ids.push_back(s.id);
        after_special = true;
        continue;
      }
      if (pre_) {
        encode_byte_level(s.text, ids, scratch);
      } else {
        encode_sentencepiece(s.text, after_special, ids, scratch);
      }
      after_special = false;
    }
    if (add_bos_eos && model_.add_eos) ids.push_back(eos_id());
    return ids;
  }

  /// \brief The bytes `ids` stand for; throws naming the position and the id when one is outside the
  /// vocabulary. SentencePiece's dummy prefix is removed where `encode` would have added it.
  [[nodiscard]] std::string decode(std::vector<std::int32_t> const& ids) const {
    std::string out;
    bool strip_space = model_.model == "llama" && model_.add_space_prefix;
    for (std::size_t i = 0; i < ids.size(); ++i) {
      std::int32_t const id = ids[i];
      KVC_CHECK(id >= 0 && static_cast<std::size_t>(id) < vocab_size(),
                "decode: ids[" << i << "] = " << id << " is outside the vocabulary of " << vocab_size() << " tokens");
      std::string const& bytes = token_bytes_[static_cast<std::size_t>(id)];
      if (is_special(type(id))) {
        out += bytes;
        strip_space = model_.model == "llama" && model_.add_space_prefix;
        continue;
      }
      if (strip_space && !bytes.empty() && bytes[0] == ' ') {
        out.append(bytes, 1, std::string::npos);
      } else {
        out += bytes;
      }
      if (!bytes.empty()) strip_space = false;
    }
    return out;
  }

  /// \brief The bytes one token stands for (its text for special tokens).
  [[nodiscard]] std::string const& token_bytes(std::int32_t id) const {
    KVC_CHECK(id >= 0 && static_cast<std::size_t>(id) < vocab_size(),
              "token id " << id << " is outside the vocabulary of " << vocab_size() << " tokens");
    return token_bytes_[static_cast<std::size_t>(id)];
  }

 private:
  /// Buffers reused across the pieces of one encode call.
  struct Scratch {
    std::vector<std::string_view> pieces;
    std::vector<std::string_view> pieces_scratch;
    std::vector<std::int32_t> symbols;
    std::vector<SpmPiece> spm_pieces;
    std::string text;
    std::string normalized;  // the NFC form of a text stretch, for pre-tokenizers that ask for it
  };

  static bool is_special(TokenType t) noexcept {
    return t == TokenType::kControl || t == TokenType::kUserDefined || t == TokenType::kUnknown;
  }

  void check_id(std::int64_t id, char const* field) const {
    KVC_CHECK(id >= -1 && id < static_cast<std::int64_t>(vocab_size()),
              field << " = " << id << " is outside the vocabulary of " << vocab_size() << " tokens");
  }

  /// Text → id for the tokens of the given kinds (a text listed twice maps to its last id).
  template <class Keep>
  [[nodiscard]] std::unordered_map<std::string, std::int32_t> text_to_id(Keep keep) const {
    std::unordered_map<std::string, std::int32_t> map;
    map.reserve(vocab_size());
    for (std::size_t i = 0; i < vocab_size(); ++i) {
      if (keep(type(static_cast<std::int32_t>(i)))) map[model_.tokens[i]] = static_cast<std::int32_t>(i);
    }
    return map;
  }

  void init_byte_level() {
    KVC_CHECK(!model_.pre.empty(), "tokenizer.ggml.pre is missing; a gpt2 (byte-level BPE) tokenizer needs one of: "
                                       << kSupportedPreTokenizers);
    pre_.emplace(model_.pre);
    token_bytes_.resize(vocab_size());
    for (std::size_t i = 0; i < vocab_size(); ++i) {
      std::string const& text = model_.tokens[i];
      TokenType const t = type(static_cast<std::int32_t>(i));
      if (t != TokenType::kNormal && t != TokenType::kUndefined) {
        token_bytes_[i] = text;  // special and unused tokens are written as they are
        continue;
      }
      token_bytes_[i] = byte_level_bytes(text, i);
    }
    vocab_ = text_to_id([](TokenType) { return true; });
    merges_ = BpeMerges(model_.merges, vocab_);
    for (unsigned b = 0; b < 256; ++b) {
      auto const it = vocab_.find(detail::byte_to_symbol()[b]);
      byte_ids_[b] = it == vocab_.end() ? -1 : it->second;
    }
  }

  /// The bytes a token of the GPT-2 alphabet stands for; throws naming the token otherwise.
  [[nodiscard]] static std::string byte_level_bytes(std::string const& text, std::size_t id) {
    std::string bytes;
    for (std::size_t k = 0; k < text.size();) {
      std::size_t const len = detail::utf8_sequence_length(text, k);
      std::uint32_t cp = 0;
      if (len == 1) {
        cp = static_cast<unsigned char>(text[k]);
      } else if (len == 2) {
        cp = ((static_cast<unsigned char>(text[k]) & 0x1Fu) << 6) | (static_cast<unsigned char>(text[k + 1]) & 0x3Fu);
      }
      std::int16_t const byte = len == 0 || len > 2 || cp >= 0x200 ? -1 : detail::code_point_to_byte()[cp];
      KVC_CHECK(byte >= 0, "tokenizer.ggml.tokens[" << id << "] = '" << detail::excerpt(text)
                                                    << "' is not written in the byte-level alphabet (at byte " << k
                                                    << ")");
      bytes.push_back(static_cast<char>(byte));
      k += len;
    }
    return bytes;
  }

  void init_sentencepiece() {
    KVC_CHECK(model_.scores.size() == vocab_size(),
              "tokenizer.ggml.scores holds " << model_.scores.size() << " entries for " << vocab_size() << " tokens");
    for (std::size_t i = 0; i < vocab_size(); ++i) {
      KVC_CHECK(std::isfinite(model_.scores[i]),
                "tokenizer.ggml.scores[" << i << "] = " << model_.scores[i] << " is not finite");
    }
    vocab_ = text_to_id([](TokenType t) { return t == TokenType::kNormal || t == TokenType::kUndefined; });
    for (unsigned b = 0; b < 256; ++b) byte_ids_[b] = -1;
    token_bytes_.resize(vocab_size());
    for (std::size_t i = 0; i < vocab_size(); ++i) {
      std::string const& text = model_.tokens[i];
      TokenType const t = type(static_cast<std::int32_t>(i));
      if (t == TokenType::kByte) {
        unsigned value = 0;
        bool const ok = text.size() == 6 && text.compare(0, 3, "<0x") == 0 && text[5] == '>' &&
                        std::sscanf(text.c_str() + 3, "%2x", &value) == 1;
        KVC_CHECK(ok, "tokenizer.ggml.tokens[" << i << "] = '" << detail::excerpt(text)
                                               << "' is a byte token but not written <0xNN>");
        byte_ids_[value] = static_cast<std::int32_t>(i);
        token_bytes_[i] = std::string(1, static_cast<char>(value));
      } else if (t == TokenType::kNormal || t == TokenType::kUndefined) {
        std::string bytes;
        for (std::size_t k = 0; k < text.size();) {
          if (text.compare(k, kSpmSpace.size(), kSpmSpace) == 0) {
            bytes.push_back(' ');
            k += kSpmSpace.size();
          } else {
            bytes.push_back(text[k++]);
          }
        }
        token_bytes_[i] = std::move(bytes);
      } else {
        token_bytes_[i] = text;
      }
    }
  }

  /// The id standing for one byte the vocabulary has no piece for: its byte token, else the unknown token.
  [[nodiscard]] std::int32_t byte_id(unsigned char b, std::string_view context, std::size_t offset) const {
    std::int32_t const id = byte_ids_[b];
    if (id >= 0) return id;
    KVC_CHECK(model_.unknown_id >= 0, "the vocabulary has no token for byte "
                                          << detail::hex_byte(b) << " (in '" << detail::excerpt(context)
                                          << "' at offset " << offset << ") and no unknown token");
    return static_cast<std::int32_t>(model_.unknown_id);
  }

  void encode_byte_level(std::string_view text, std::vector<std::int32_t>& ids, Scratch& s) const {
    if (pre_->nfc()) {
      s.normalized = detail::nfc(text);
      text = s.normalized;
    }
    pre_->split(text, s.pieces, s.pieces_scratch);
    for (std::string_view piece : s.pieces) {
      if (pre_->ignore_merges()) {
        s.text.clear();
        for (char c : piece) s.text += detail::byte_to_symbol()[static_cast<unsigned char>(c)];
        auto const it = vocab_.find(s.text);
        // Only a normal token stands for a piece (HF's BPE vocabulary holds no added tokens).
        if (it != vocab_.end() &&
            (type(it->second) == TokenType::kNormal || type(it->second) == TokenType::kUndefined)) {
          ids.push_back(it->second);
          continue;
        }
      }
      s.symbols.clear();
      for (std::size_t k = 0; k < piece.size(); ++k)
        s.symbols.push_back(byte_id(static_cast<unsigned char>(piece[k]), piece, k));
      merges_.apply(s.symbols);
      ids.insert(ids.end(), s.symbols.begin(), s.symbols.end());
    }
  }

  void encode_sentencepiece(std::string_view text, bool prefix, std::vector<std::int32_t>& ids, Scratch& s) const {
    s.text.clear();
    if (prefix && model_.add_space_prefix) s.text += kSpmSpace;
    for (char c : text) {
      if (c == ' ') {
        s.text += kSpmSpace;
      } else {
        s.text.push_back(c);
      }
    }
    spm_merge(s.text, vocab_, model_.scores, s.spm_pieces);
    for (SpmPiece const& p : s.spm_pieces) {
      std::string_view const piece = std::string_view(s.text).substr(p.begin, p.size);
      auto const it = vocab_.find(std::string(piece));
      if (it != vocab_.end()) {
        ids.push_back(it->second);
        continue;
      }
      for (std::size_t k = 0; k < piece.size(); ++k)
        ids.push_back(byte_id(static_cast<unsigned char>(piece[k]), piece, k));
    }
  }

  TokenizerModel model_;
  std::optional<PreTokenizer> pre_;                      // byte-level models only
  std::unordered_map<std::string, std::int32_t> vocab_;  // byte-level: every token; SentencePiece: mergeable ones
  BpeMerges merges_;
  std::array<std::int32_t, 256> byte_ids_{};  // the token of each byte (-1: none)
  std::vector<std::string> token_bytes_;      // id → the bytes it decodes to
  SpecialTokenSplitter specials_;
};

}  // namespace kvc_engine
