// KVzip's reconstruction prompt as kvcompress-eval writes it for SmolLM2-135M-Instruct (kvc_engine/compression/
// kvzip_prompt.hpp, with the GGUF's tokenizer and chat format): its ids, the chat head's length and every
// reconstruction pass over a chat-formatted context equal what kvpress 0.5.5's KVzipPress computed with HF
// tokenizers on SmolLM2's corrected tokenizer (tests/golden/kvzip_prompt/smollm2.json,
// tools/golden/generate_kvzip_prompt.py). Also the prompt file that --kvzip-prompt reads, and its errors.
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "golden_fixture.hpp"
#include "kvc_engine/compression/kvzip_prompt.hpp"
#include "kvc_engine/model_io/gguf.hpp"
#include "kvc_engine/tokenizer/gguf_tokenizer.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using nlohmann::json;

namespace {

std::string smollm2_gguf() {
  char const* env = std::getenv("KVC_SMOLLM2_GGUF");
  std::string const path = env != nullptr && *env != '\0' ? std::string(env) : std::string(KVC_SMOLLM2_GGUF);
  if (!std::filesystem::is_regular_file(path))
    FAIL("SmolLM2's GGUF is missing at " << path << ": run tools/models/fetch_smollm2.sh or set KVC_SMOLLM2_GGUF");
  return path;
}

std::string write_file(std::string const& name, std::string const& text) {
  std::string const path = (std::filesystem::temp_directory_path() / name).string();
  std::ofstream(path) << text;
  return path;
}

}  // namespace

TEST_CASE("KVzip prompt: SmolLM2's ids and passes equal kvpress's", "[slow][kvzip]") {
  auto const want = kvc_test::load_json(std::string(KVC_GOLDEN_DIR) + "/kvzip_prompt/smollm2.json");
  kvc_engine::Tokenizer const tok(kvc_engine::tokenizer_model_from_gguf(kvc_engine::GgufFile::open(smollm2_gguf())));
  kvc_engine::ChatFormat const chat = kvc_engine::ChatFormat::from_template(tok.model().chat_template, "", "");
  kvc_engine::KVzipPrompt const p = kvc_engine::kvzip_prompt(tok, chat);
  CHECK(p.first == want.at("prompt_first").get<std::vector<std::int32_t>>());
  CHECK(p.later == want.at("prompt_later").get<std::vector<std::int32_t>>());
  CHECK(p.suffix == want.at("suffix").get<std::vector<std::int32_t>>());
  CHECK(p.prefix_length == want.at("prefix_length").get<std::int64_t>());
  auto const passes = kvc_engine::kvzip_passes(want.at("context").get<std::vector<std::int32_t>>(),
                                               want.at("chunk_size").get<std::int64_t>(), p);
  REQUIRE(passes.size() == want.at("passes").size());
  for (std::size_t i = 0; i < passes.size(); ++i) {
    CAPTURE(i);
    json const& w = want.at("passes").at(i);
    CHECK(passes[i].start == w.at("start").get<std::int64_t>());
    CHECK(passes[i].end == w.at("end").get<std::int64_t>());
    CHECK(passes[i].input == w.at("input").get<std::vector<std::int32_t>>());
  }
}

TEST_CASE("KVzip prompt: without a chat format the prefix is empty and the suffix a newline", "[slow][kvzip]") {
  kvc_engine::Tokenizer const tok(kvc_engine::tokenizer_model_from_gguf(kvc_engine::GgufFile::open(smollm2_gguf())));
  kvc_engine::KVzipPrompt const p = kvc_engine::kvzip_prompt(tok, std::nullopt);
  CHECK(p.prefix_length == 0);
  CHECK(p.suffix == std::vector<std::int32_t>{198});  // SmolLM2's "\n"
}

TEST_CASE("KVzip prompt: --kvzip-prompt's file and its errors", "[golden][kvzip]") {
  SECTION("the engine fixture's byte prompts") {
    auto const p = kvc_engine::read_kvzip_prompt(std::string(KVC_GOLDEN_DIR) + "/more_presses/model/engine_kvzip.json", 256);
    CHECK(p.first.size() == std::string(kvc_engine::kKVzipFirstPrompt).size());
    CHECK(p.later.size() == std::string(kvc_engine::kKVzipLaterPrompt).size());
    CHECK(p.suffix == std::vector<std::int32_t>{'\n'});
    CHECK(p.prefix_length == 0);
  }
  SECTION("an id outside the vocabulary") {
    std::string const path = write_file("kvc_kvzip_bad_id.json", R"({"prompt_first": [1, 300], "prompt_later": [1], "suffix": []})");
    CHECK_THROWS_WITH(kvc_engine::read_kvzip_prompt(path, 256),
                      Catch::Contains("'prompt_first' holds 300, not a token id in [0, 256)"));
  }
  SECTION("a missing prompt") {
    std::string const path = write_file("kvc_kvzip_no_later.json", R"({"prompt_first": [1], "suffix": [2]})");
    CHECK_THROWS_WITH(kvc_engine::read_kvzip_prompt(path, 256), Catch::Contains("'prompt_later' must be an array of token ids"));
  }
  SECTION("a negative prefix length") {
    std::string const path =
        write_file("kvc_kvzip_prefix.json", R"({"prompt_first": [1], "prompt_later": [1], "suffix": [], "prefix_length": -2})");
    CHECK_THROWS_WITH(kvc_engine::read_kvzip_prompt(path, 256), Catch::Contains("'prefix_length' must be a non-negative integer, got -2"));
  }
  SECTION("a context no longer than the chat head") {
    kvc_engine::KVzipPrompt const p{{1}, {1}, {}, 4};
    CHECK_THROWS_WITH(kvc_engine::kvzip_passes({5, 6, 7, 8}, 2, p), Catch::Contains("the context holds 4 tokens, none after the chat template's head of 4"));
  }
}

}  // namespace KVC_TEST_TU
