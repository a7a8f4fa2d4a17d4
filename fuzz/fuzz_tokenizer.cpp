// libFuzzer target: the engine's tokenizer (examples/engine/kvc_engine/tokenizer/) and chat-template
// recognition on arbitrary bytes. The first byte picks a tokenizer — the tiny Llama 3, Qwen2 and
// SentencePiece GGUFs of tests/golden/tokenizer/, and the Llama 3 vocabulary under the smollm and gpt2
// pre-tokenizers — and whether special tokens are parsed; the rest is the text. Checked: valid UTF-8
// encodes without error to ids inside the vocabulary that decode back to the text (SentencePiece: with
// U+2581 as a space; Qwen2: in NFC); anything else is refused with kvcompress::Error. The same bytes, read as 16-bit
// ids, decode without error exactly when all are inside the vocabulary; as a chat template they are recognised or
// refused with kvcompress::Error.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "kvc_engine/tokenizer/chat_format.hpp"
#include "kvc_engine/model_io/gguf.hpp"
#include "kvc_engine/tokenizer/gguf_tokenizer.hpp"
#include "kvc_engine/tokenizer/tokenizer.hpp"
#include "kvc_engine/tokenizer/utf8.hpp"
#include "kvcompress/core/error.hpp"

namespace {

kvc_engine::TokenizerModel load(char const* name) {
  return kvc_engine::tokenizer_model_from_gguf(kvc_engine::GgufFile::open(std::string(KVC_TOKENIZER_DIR) + "/" + name));
}

std::vector<kvc_engine::Tokenizer> const& tokenizers() {
  static std::vector<kvc_engine::Tokenizer> const all = [] {
    std::vector<kvc_engine::Tokenizer> t;
    t.emplace_back(load("llama3.gguf"));
    t.emplace_back(load("qwen2.gguf"));
    t.emplace_back(load("spm.gguf"));
    for (char const* pre : {"smollm", "gpt2"}) {
      kvc_engine::TokenizerModel m = load("llama3.gguf");
      m.pre = pre;
      t.emplace_back(m);
    }
    return t;
  }();
  return all;
}

std::string without_spm_space(std::string s) {
  for (std::size_t at = s.find(kvc_engine::Tokenizer::kSpmSpace); at != std::string::npos;
       at = s.find(kvc_engine::Tokenizer::kSpmSpace, at)) {
    s.replace(at, kvc_engine::Tokenizer::kSpmSpace.size(), " ");
  }
  return s;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size) {
  if (size == 0) return 0;
  auto const& all = tokenizers();
  kvc_engine::Tokenizer const& tokenizer = all[data[0] % all.size()];
  bool const parse_special = (data[0] / all.size()) % 2 == 0;
  std::string const text(reinterpret_cast<char const*>(data + 1), size - 1);

  bool const valid = kvc_engine::detail::first_invalid_utf8(text) == text.size();
  try {
    std::vector<std::int32_t> const ids = tokenizer.encode(text, true, parse_special);
    if (!valid) std::abort();  // invalid UTF-8 must be refused
    for (std::int32_t id : ids) {
      if (id < 0 || static_cast<std::size_t>(id) >= tokenizer.vocab_size()) std::abort();
    }
    std::string expected = text;  // what the model itself changes: SentencePiece's U+2581, Qwen2's NFC
    if (tokenizer.model().model == "llama") expected = without_spm_space(text);
    if (tokenizer.model().pre == "qwen2") expected = kvc_engine::detail::nfc(text);
    if (tokenizer.decode(ids) != expected) std::abort();
  } catch (kvcompress::Error const&) {
    if (valid) std::abort();  // valid text must encode (every byte has a token in these vocabularies)
  }

  std::vector<std::int32_t> ids;
  bool in_range = true;
  for (std::size_t i = 1; i + 1 < size; i += 2) {
    auto const id = static_cast<std::int32_t>(static_cast<std::int16_t>(data[i] | (data[i + 1] << 8)));
    in_range = in_range && id >= 0 && static_cast<std::size_t>(id) < tokenizer.vocab_size();
    ids.push_back(id);
  }
  try {
    (void)tokenizer.decode(ids);
    if (!in_range) std::abort();
  } catch (kvcompress::Error const&) {
    if (in_range) std::abort();
  }

  try {
    auto const format = kvc_engine::ChatFormat::from_template(text, "<s>", "</s>");
    (void)format.apply({{"user", text}, {"assistant", "x"}}, true);
  } catch (kvcompress::Error const&) {
    // an unknown template, or a conversation the format refuses
  }
  return 0;
}
