// The engine's answers on the generated RULER-style tasks equal kvpress's own pipeline's (tools/golden/
// generate_ruler.py → tests/golden/ruler/): SmolLM2-135M-Instruct's GGUF, five tasks once each at 512 tokens, the
// full cache and ExpectedAttention, SnapKV, TOVA, Knorm and StreamingLLM at 0.5 and 0.75. The engine runs as
// kvcompress-eval does (one prefill per example, a compressed copy per press and ratio, the question forwarded
// after compression, greedy decoding stopping at <|im_end|>). Every answer that differs is reported with the
// logit margins (top-1 minus top-2) of both at the first differing token; differences must stay under 5 % of
// the answers. It also prints both accuracies per press and ratio.
// The second case does the same with the question compressed with the context, as kvpress's evaluation runs
// `compress_questions=True` (tasks_compress_questions.jsonl, kvpress_answers_compress_questions.json): the
// prefilled and compressed prompt ends with the question, and only the chat template's tail and the answer prefix
// are forwarded; the full cache and SnapKV, ExpectedAttention and Knorm at 0.25 and 0.5.
#include <catch2/catch.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "golden_fixture.hpp"
#include "kvc_engine/forward/engine.hpp"
#include "kvc_engine/model_io/gguf.hpp"
#include "kvc_engine/eval/greedy_answer.hpp"
#include "kvc_engine/eval/prefill_snapshot.hpp"
#include "kvc_engine/compression/press_registry.hpp"
#include "kvc_engine/tasks/ruler_tasks.hpp"
#include "kvc_engine/tokenizer/gguf_tokenizer.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using nlohmann::json;

namespace {

/// Answers every example of `tasks_file` with every config of `answers_file` (both under tests/golden/ruler) and checks
/// that under 5 % of the answers differ from kvpress's.
void check_answers_against_kvpress(std::string const& tasks_file, std::string const& answers_file) {
  char const* env = std::getenv("KVC_SMOLLM2_GGUF");
  std::string const path = env != nullptr && *env != '\0' ? std::string(env) : std::string(KVC_SMOLLM2_GGUF);
  if (!std::filesystem::is_regular_file(path))
    FAIL("SmolLM2's GGUF is missing at " << path << ": run tools/models/fetch_smollm2.sh or set KVC_SMOLLM2_GGUF");
  std::string const dir = std::string(KVC_GOLDEN_DIR) + "/ruler";
  json const golden = kvc_test::load_json(dir + "/" + answers_file);
  std::vector<json> examples;
  {
    std::ifstream in(dir + "/" + tasks_file);
    for (std::string line; std::getline(in, line);) examples.push_back(json::parse(line));
  }
  REQUIRE(!examples.empty());

  auto const t0 = std::chrono::steady_clock::now();
  kvc_engine::Model const model = kvc_engine::load_model(path);
  kvc_engine::Tokenizer const tok(kvc_engine::tokenizer_model_from_gguf(kvc_engine::GgufFile::open(path)));
  kvc_engine::Engine engine(model, 0);
  std::map<std::pair<std::string, double>, kvc_engine::Compressor> compressors;
  for (auto const& c : golden.at("configs")) {
    std::string const press = c.at("press");
    double const ratio = c.at("ratio");
    compressors.emplace(std::make_pair(press, ratio), kvc_engine::make_compressor(press, ratio));
  }

  std::int64_t answers = 0, differ = 0;
  std::map<std::pair<std::string, double>, std::pair<int, int>> right;  // config → (engine, kvpress)
  std::map<std::size_t, std::vector<json const*>> by_example;
  for (auto const& a : golden.at("answers")) by_example[a.at("example").get<std::size_t>()].push_back(&a);
  for (std::size_t i = 0; i < examples.size(); ++i) {
    json const& ex = examples[i];
    auto const context = ex.at("prompt").get<std::vector<std::int32_t>>();
    auto const question = ex.at("question").get<std::vector<std::int32_t>>();
    auto const references = ex.at("references").get<std::vector<std::string>>();
    std::int64_t const budget = ex.at("max_new_tokens");
    kvc_engine::PrefillSnapshot const snap =
        kvc_engine::prefill_snapshot(engine, context, static_cast<std::int64_t>(question.size()) + budget);
    for (json const* a : by_example.at(i)) {
      std::string const press = a->at("press");
      double const ratio = a->at("ratio");
      kvc_engine::CompressedCopy copy = kvc_engine::compressed_copy(engine, snap, compressors.at({press, ratio}));
      kvc_engine::GreedyAnswer const mine =
          kvc_engine::greedy_answer(engine, copy.cache, question, snap.last_logits, budget, tok.eos_id());
      auto const theirs = a->at("tokens").get<std::vector<std::int32_t>>();
      auto const margins = a->at("margins").get<std::vector<float>>();
      ++answers;
      right[{press, ratio}].first += kvc_engine::references_found(tok.decode(mine.tokens), references) ? 1 : 0;
      right[{press, ratio}].second += kvc_engine::references_found(tok.decode(theirs), references) ? 1 : 0;
      if (mine.tokens == theirs) continue;
      ++differ;
      std::size_t k = 0;
      while (k < mine.tokens.size() && k < theirs.size() && mine.tokens[k] == theirs[k]) ++k;
      // margins at the first differing step: both decoded the same tokens before it
      std::printf("differs: example %zu (%s) %s %g: token %zu engine %d (margin %.4g) kvpress %d (margin %.4g)\n", i,
                  ex.at("task").get<std::string>().c_str(), press.c_str(), ratio, k,
                  k < mine.tokens.size() ? mine.tokens[k] : -1, k < mine.margins.size() ? mine.margins[k] : 0.0f,
                  k < theirs.size() ? theirs[k] : -1, k < margins.size() ? static_cast<double>(margins[k]) : 0.0);
    }
  }
  double const seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("ruler golden (%s): %lld of %lld answers differ from kvpress's (%.1f %%), %zu examples, %.0f s\n",
              tasks_file.c_str(), static_cast<long long>(differ), static_cast<long long>(answers),
              100.0 * static_cast<double>(differ) / static_cast<double>(answers), examples.size(), seconds);
  std::printf("| press | ratio | engine right | kvpress right |\n|---|---:|---:|---:|\n");
  for (auto const& [config, r] : right)
    std::printf("| %s | %g | %d / %zu | %d / %zu |\n", config.first.c_str(), config.second, r.first, examples.size(),
                r.second, examples.size());
  CHECK(answers == static_cast<std::int64_t>(examples.size() * golden.at("configs").size()));
  CHECK(static_cast<double>(differ) < 0.05 * static_cast<double>(answers));
}

}  // namespace

TEST_CASE("RULER tasks on SmolLM2: the engine's answers equal kvpress's (under 5 % differ)", "[golden][ruler][slow]") {
  check_answers_against_kvpress("tasks.jsonl", "kvpress_answers.json");
}

TEST_CASE("RULER tasks on SmolLM2 with the question compressed: the engine's answers equal kvpress's", "[golden][ruler][slow]") {
  check_answers_against_kvpress("tasks_compress_questions.jsonl", "kvpress_answers_compress_questions.json");
}

}  // namespace KVC_TEST_TU
