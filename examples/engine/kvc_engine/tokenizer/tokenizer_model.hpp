#pragma once
/// \file
/// \brief `TokenizerModel`: a tokenizer's vocabulary and settings as a GGUF file's `tokenizer.*` metadata
/// carries them, independent of the file format (tokenizer/gguf_tokenizer.hpp fills it from a GGUF).

#include <cstdint>
#include <string>
#include <vector>

namespace kvc_engine {

/// \brief The kind of each vocabulary entry (`tokenizer.ggml.token_type`, numbered as GGUF numbers them).
enum class TokenType : std::int32_t {
  kUndefined = 0,
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,      // <s>, <|im_start|>: matched in the text before pre-tokenisation, decoded as written
  kUserDefined = 4,  // added tokens: treated like control tokens
  kUnused = 5,
  kByte = 6,  // SentencePiece byte fallback <0xNN>
};

/// \brief Everything the tokenizer needs, field for field from GGUF metadata.
struct TokenizerModel {
  std::string model;                      // tokenizer.ggml.model: "gpt2" (byte-level BPE) or "llama" (SentencePiece)
  std::string pre;                        // tokenizer.ggml.pre: the pre-tokenizer of a "gpt2" model ("smollm", ...)
  std::vector<std::string> tokens;        // tokenizer.ggml.tokens: id → text
  std::vector<std::int32_t> token_types;  // tokenizer.ggml.token_type (TokenType values); empty: all normal
  std::vector<float> scores;              // tokenizer.ggml.scores: SentencePiece merge priorities
  std::vector<std::string> merges;        // tokenizer.ggml.merges: "left right", rank = index
  std::int64_t bos_id = -1;               // tokenizer.ggml.bos_token_id (-1: none)
  std::int64_t eos_id = -1;               // tokenizer.ggml.eos_token_id
  std::int64_t unknown_id = -1;           // tokenizer.ggml.unknown_token_id
  std::int64_t padding_id = -1;           // tokenizer.ggml.padding_token_id
  bool add_bos = false;                   // tokenizer.ggml.add_bos_token
  bool add_eos = false;                   // tokenizer.ggml.add_eos_token
  bool add_space_prefix = false;          // tokenizer.ggml.add_space_prefix (SentencePiece's dummy prefix)
  std::string chat_template;              // tokenizer.chat_template (Jinja source)
};

}  // namespace kvc_engine
