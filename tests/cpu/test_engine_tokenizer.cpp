// The engine's tokenizer on small hand-made vocabularies: what happens to bad models and bad inputs (each a
// kvcompress::Error naming the field and the value), and the byte-exact decode of tokens that hold part of a
// UTF-8 character. Agreement with HF tokenizers on real vocabularies is checked in golden_tests/.
#include <catch2/catch.hpp>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "kvc_engine/tokenizer/chat_format.hpp"
#include "kvc_engine/tokenizer/byte_level.hpp"
#include "kvc_engine/tokenizer/tokenizer.hpp"
#include "kvcompress/core/error.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using Catch::Matchers::Contains;
using kvc_engine::Tokenizer;
using kvc_engine::TokenizerModel;

namespace {

/// A byte-level model: the 256 byte symbols (ids 0–255), "Ġa" (256) from the merge "Ġ a", and the control
/// token <|end|> (257).
TokenizerModel byte_level_model() {
  TokenizerModel m;
  m.model = "gpt2";
  m.pre = "smollm";
  for (unsigned b = 0; b < 256; ++b) m.tokens.push_back(kvc_engine::detail::byte_to_symbol()[b]);
  m.tokens.push_back(
      "\xC4\xA0"
      "a");  // Ġa
  m.tokens.push_back("<|end|>");
  m.token_types.assign(m.tokens.size(), 1);
  m.token_types.back() = 3;
  m.merges = {"\xC4\xA0 a"};
  m.eos_id = 257;
  return m;
}

/// A SentencePiece model: <unk>, <s>, </s>, the byte tokens <0x00>…<0xFF>, then "▁" and "a".
TokenizerModel sentencepiece_model() {
  TokenizerModel m;
  m.model = "llama";
  m.tokens = {"<unk>", "<s>", "</s>"};
  m.token_types = {2, 3, 3};
  char name[8];
  for (unsigned b = 0; b < 256; ++b) {
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    m.tokens.push_back(name);
    m.token_types.push_back(6);
  }
  m.tokens.push_back("\xE2\x96\x81");
  m.tokens.push_back("a");
  m.token_types.push_back(1);
  m.token_types.push_back(1);
  m.scores.assign(m.tokens.size(), 0.0f);
  m.bos_id = 1;
  m.eos_id = 2;
  m.unknown_id = 0;
  m.add_space_prefix = true;
  return m;
}

}  // namespace

TEST_CASE("tokenizer: an unknown tokenizer model or pre-tokenizer", "[engine][tokenizer]") {
  SECTION("model") {
    TokenizerModel m = byte_level_model();
    m.model = "bert";
    CHECK_THROWS_WITH(Tokenizer(m), Contains("tokenizer.ggml.model 'bert' is not supported (gpt2, llama)"));
  }
  SECTION("pre-tokenizer") {
    TokenizerModel m = byte_level_model();
    m.pre = "tekken";
    CHECK_THROWS_WITH(Tokenizer(m), Contains("tokenizer.ggml.pre 'tekken' is not a supported pre-tokenizer (gpt-2"));
    m.pre.clear();
    CHECK_THROWS_WITH(Tokenizer(m), Contains("tokenizer.ggml.pre is missing"));
  }
}

TEST_CASE("tokenizer: merges that are malformed or name unknown tokens", "[engine][tokenizer]") {
  TokenizerModel m = byte_level_model();
  SECTION("a left token outside the vocabulary") {
    m.merges.push_back("xyz a");
    CHECK_THROWS_WITH(Tokenizer(m),
                      Contains("tokenizer.ggml.merges[1] = 'xyz a': its left token 'xyz' is not in the vocabulary"));
  }
  SECTION("a joined token outside the vocabulary") {
    m.merges.push_back("a b");
    CHECK_THROWS_WITH(Tokenizer(m),
                      Contains("tokenizer.ggml.merges[1] = 'a b': its joined token 'ab' is not in the vocabulary"));
  }
  SECTION("not two tokens") {
    m.merges.push_back("ab");
    CHECK_THROWS_WITH(Tokenizer(m),
                      Contains("tokenizer.ggml.merges[1] = 'ab' is not two tokens separated by one space"));
  }
}

TEST_CASE("tokenizer: inconsistent vocabulary arrays and special ids", "[engine][tokenizer]") {
  SECTION("token types") {
    TokenizerModel m = byte_level_model();
    m.token_types.pop_back();
    CHECK_THROWS_WITH(Tokenizer(m), Contains("tokenizer.ggml.token_type holds 257 entries for 258 tokens"));
    m.token_types.push_back(9);
    CHECK_THROWS_WITH(Tokenizer(m), Contains("tokenizer.ggml.token_type[257] = 9 is not a token type"));
  }
  SECTION("special ids") {
    TokenizerModel m = byte_level_model();
    m.eos_id = 258;
    CHECK_THROWS_WITH(Tokenizer(m),
                      Contains("tokenizer.ggml.eos_token_id = 258 is outside the vocabulary of 258 tokens"));
    m.eos_id = -1;
    m.add_bos = true;
    CHECK_THROWS_WITH(Tokenizer(m), Contains("tokenizer.ggml.add_bos_token is set but there is no bos_token_id"));
  }
  SECTION("SentencePiece scores") {
    TokenizerModel m = sentencepiece_model();
    m.scores.pop_back();
    CHECK_THROWS_WITH(Tokenizer(m), Contains("tokenizer.ggml.scores holds 260 entries for 261 tokens"));
    m.scores.push_back(std::numeric_limits<float>::quiet_NaN());
    CHECK_THROWS_WITH(Tokenizer(m), Contains("tokenizer.ggml.scores[260] = nan is not finite"));
  }
  SECTION("a byte-level token outside the GPT-2 alphabet") {
    TokenizerModel m = byte_level_model();
    m.tokens[256] = "a b";
    CHECK_THROWS_WITH(Tokenizer(m),
                      Contains("tokenizer.ggml.tokens[256] = 'a b' is not written in the byte-level alphabet"));
  }
  SECTION("a byte token not written <0xNN>") {
    TokenizerModel m = sentencepiece_model();
    m.tokens[3] = "<0xZZ>";
    CHECK_THROWS_WITH(Tokenizer(m),
                      Contains("tokenizer.ggml.tokens[3] = '<0xZZ>' is a byte token but not written <0xNN>"));
  }
}

TEST_CASE("tokenizer: text that is not valid UTF-8 is refused with the offset", "[engine][tokenizer]") {
  Tokenizer const t(byte_level_model());
  CHECK_THROWS_WITH(t.encode("ab\xC3("), Contains("text is not valid UTF-8: byte 0xC3 at offset 2 of 4"));
  CHECK_THROWS_WITH(t.encode("\xED\xA0\x80"), Contains("byte 0xED at offset 0"));      // a UTF-16 surrogate
  CHECK_THROWS_WITH(t.encode("x\xC0\xAF"), Contains("byte 0xC0 at offset 1"));         // an overlong '/'
  CHECK_THROWS_WITH(t.encode("\xF4\x90\x80\x80"), Contains("byte 0xF4 at offset 0"));  // above U+10FFFF
}

TEST_CASE("tokenizer: decode refuses ids outside the vocabulary", "[engine][tokenizer]") {
  Tokenizer const t(byte_level_model());
  CHECK_THROWS_WITH(t.decode({1, 258}), Contains("decode: ids[1] = 258 is outside the vocabulary of 258 tokens"));
  CHECK_THROWS_WITH(t.decode({-1}), Contains("decode: ids[0] = -1 is outside the vocabulary of 258 tokens"));
}

TEST_CASE("tokenizer: a byte with no token and no unknown token", "[engine][tokenizer]") {
  TokenizerModel m = sentencepiece_model();
  m.token_types[3 + 0xC3] = 1;  // <0xC3> is no longer a byte token
  m.unknown_id = -1;
  Tokenizer const t(m);
  CHECK_THROWS_WITH(t.encode("\xC3\xA9"), Contains("the vocabulary has no token for byte 0xC3"));
  m.unknown_id = 0;
  CHECK(Tokenizer(m).encode("\xC3\xA9") == std::vector<std::int32_t>{259, 0, 3 + 0xA9});  // ▁, <unk>, <0xA9>
}

TEST_CASE("tokenizer: tokens holding part of a UTF-8 character decode to their exact bytes", "[engine][tokenizer]") {
  Tokenizer const t(byte_level_model());
  std::vector<std::int32_t> const ids = t.encode("\xC3\xA9 a<|end|>");  // é, " a", <|end|>
  CHECK(ids == std::vector<std::int32_t>{0xC3, 0xA9, 256, 257});        // byte b is token b here
  CHECK(t.decode({ids[0]}) == "\xC3");
  CHECK(t.decode({ids[1]}) == "\xA9");
  CHECK(t.decode(ids) == "\xC3\xA9 a<|end|>");
  CHECK(t.encode("<|end|>", true, /*parse_special=*/false).size() == 7);
}

TEST_CASE("chat format: a template of no known family, or none", "[engine][chat]") {
  CHECK_THROWS_WITH(kvc_engine::ChatFormat::from_template("{{ messages[0]['content'] }}", "<s>", "</s>"),
                    Contains("tokenizer.chat_template is not a chat format this engine knows (ChatML, Llama 3, Mistral "
                             "[INST]); it begins: '{{ messages[0]['content'] }}'"));
  CHECK_THROWS_WITH(kvc_engine::ChatFormat::from_template("", "<s>", "</s>"),
                    Contains("the model has no tokenizer.chat_template"));
}

TEST_CASE("tokenizer: one tokenizer encodes and decodes from several threads at once", "[engine][tokenizer]") {
  // encode and decode are const and keep their state on the stack (the compiled patterns are shared and
  // read-only), so an engine may share one tokenizer between threads; the thread sanitizer build checks it.
  Tokenizer const t(byte_level_model());
  std::vector<std::string> texts;
  for (int i = 0; i < 64; ++i)
    texts.push_back("item " + std::to_string(i * 7919) + " a\xC3\xA9 <|end|>\t" + std::string(i, ' '));
  std::vector<std::vector<std::int32_t>> expected;
  for (auto const& s : texts) expected.push_back(t.encode(s));
  std::vector<int> wrong(4, 0);
  std::vector<std::thread> threads;
  for (std::size_t k = 0; k < wrong.size(); ++k) {
    threads.emplace_back([&, k] {
      for (int round = 0; round < 20; ++round) {
        for (std::size_t i = 0; i < texts.size(); ++i) {
          std::vector<std::int32_t> const ids = t.encode(texts[i]);
          if (ids != expected[i] || t.decode(ids) != texts[i]) ++wrong[k];
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(wrong == std::vector<int>(4, 0));
}

}  // namespace KVC_TEST_TU
