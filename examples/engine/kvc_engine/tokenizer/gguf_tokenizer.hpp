#pragma once
/// \file
/// \brief `tokenizer_model_from_gguf`: a GGUF file's `tokenizer.*` metadata as a `TokenizerModel`, with
/// the defaults llama.cpp applies to keys a file leaves out (BOS and the SentencePiece dummy prefix on
/// for `llama` models, BOS on for Llama 3's pre-tokenizer, off otherwise).

#include <cstdint>
#include <limits>
#include <string>

#include "kvc_engine/model_io/gguf.hpp"
#include "kvc_engine/tokenizer/tokenizer_model.hpp"

namespace kvc_engine {

/// \brief Reads the tokenizer metadata; a missing `tokenizer.ggml.model` or `tokenizer.ggml.tokens`, or
/// a key of the wrong type, is an error naming the file and the key (checks of the values themselves
/// happen when a `Tokenizer` is built from the result).
[[nodiscard]] inline TokenizerModel tokenizer_model_from_gguf(GgufFile const& file) {
  TokenizerModel m;
  m.model = file.get("tokenizer.ggml.model").as_string();
  m.tokens = file.get("tokenizer.ggml.tokens").as_strings();
  if (auto const* v = file.find("tokenizer.ggml.pre")) m.pre = v->as_string();
  if (auto const* v = file.find("tokenizer.ggml.token_type")) {
    for (std::int64_t t : v->as_ints()) {
      // Values outside int32 become -1, which the Tokenizer refuses with the index.
      bool const fits = t >= std::numeric_limits<std::int32_t>::min() && t <= std::numeric_limits<std::int32_t>::max();
      m.token_types.push_back(fits ? static_cast<std::int32_t>(t) : -1);
    }
  }
  if (auto const* v = file.find("tokenizer.ggml.scores")) {
    for (double s : v->as_floats()) m.scores.push_back(static_cast<float>(s));
  }
  if (auto const* v = file.find("tokenizer.ggml.merges")) m.merges = v->as_strings();
  auto const id = [&](char const* key, std::int64_t& out) {
    if (auto const* v = file.find(key)) out = v->as_int();
  };
  id("tokenizer.ggml.bos_token_id", m.bos_id);
  id("tokenizer.ggml.eos_token_id", m.eos_id);
  id("tokenizer.ggml.unknown_token_id", m.unknown_id);
  id("tokenizer.ggml.padding_token_id", m.padding_id);
  bool const llama3 = m.pre == "llama-bpe" || m.pre == "llama3" || m.pre == "llama-v3";
  auto const flag = [&](char const* key, bool fallback) {
    auto const* v = file.find(key);
    return v != nullptr ? v->as_bool() : fallback;
  };
  m.add_bos = flag("tokenizer.ggml.add_bos_token", m.model == "llama" || llama3);
  m.add_eos = flag("tokenizer.ggml.add_eos_token", false);
  m.add_space_prefix = flag("tokenizer.ggml.add_space_prefix", m.model == "llama");
  if (auto const* v = file.find("tokenizer.chat_template")) m.chat_template = v->as_string();
  return m;
}

}  // namespace kvc_engine
