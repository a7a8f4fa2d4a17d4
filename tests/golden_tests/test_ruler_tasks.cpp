// The generated RULER-style tasks (kvc_engine/tasks/ruler_tasks.hpp) with SmolLM2's tokenizer and chat format and the
// prose of Debian's dict-devil: the same seed gives the same example, the prompt's length is within one haystack
// unit of the target, the answers are in the context, scoring by references is right, and the examples equal
// tests/golden/ruler/tasks.jsonl, whose ids tools/golden/generate_ruler.py checked against HF tokenizers (SmolLM2's
// corrected tokenizer) on the same texts.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "golden_fixture.hpp"
#include "kvc_engine/tokenizer/chat_format.hpp"
#include "kvc_engine/model_io/gguf.hpp"
#include "kvc_engine/tasks/ruler_tasks.hpp"
#include "kvc_engine/tokenizer/gguf_tokenizer.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using nlohmann::json;

namespace {

std::string smollm2_path() {
  char const* env = std::getenv("KVC_SMOLLM2_GGUF");
  std::string const path = env != nullptr && *env != '\0' ? std::string(env) : std::string(KVC_SMOLLM2_GGUF);
  if (!std::filesystem::is_regular_file(path))
    FAIL("SmolLM2's GGUF is missing at " << path << ": run tools/models/fetch_smollm2.sh or set KVC_SMOLLM2_GGUF");
  if (!std::filesystem::is_regular_file(kvc_engine::kDefaultProsePath))
    FAIL("the prose is missing at " << kvc_engine::kDefaultProsePath << ": run tools/install-deps.sh (Debian's dict-devil)");
  return path;
}

/// SmolLM2's tokenizer, chat format and the default prose, loaded once.
struct Setup {
  kvc_engine::Tokenizer tok;
  kvc_engine::ChatFormat chat;
  kvc_engine::ProseCorpus prose;
  kvc_engine::RulerTaskGenerator gen;

  static Setup const& get() {
    static Setup const s = [] {
      kvc_engine::Tokenizer t(kvc_engine::tokenizer_model_from_gguf(kvc_engine::GgufFile::open(smollm2_path())));
      kvc_engine::ChatFormat c = kvc_engine::ChatFormat::from_template(t.model().chat_template, "", "");
      return Setup(std::move(t), std::move(c), kvc_engine::load_prose_corpus());
    }();
    return s;
  }

 private:
  Setup(kvc_engine::Tokenizer t, kvc_engine::ChatFormat c, kvc_engine::ProseCorpus p)
      : tok(std::move(t)), chat(std::move(c)), prose(std::move(p)), gen(tok, chat, prose) {}

 public:
  Setup(Setup const&) = delete;
};

std::int64_t prompt_tokens(kvc_engine::RulerPrompt const& p) {
  return static_cast<std::int64_t>(p.context.size() + p.question.size());
}

std::int64_t count_of(std::string const& text, std::string const& word) {
  std::int64_t n = 0;
  std::istringstream in(text);
  for (std::string w; in >> w;) n += w == word ? 1 : 0;
  return n;
}

}  // namespace

TEST_CASE("RULER tasks: the prose corpus holds Bierce's dictionary", "[golden][ruler]") {
  kvc_engine::ProseCorpus const& p = Setup::get().prose;
  CHECK(p.paragraphs.size() > 1000);
  CHECK(p.entries.size() > 900);
  CHECK(p.words.size() > 5000);
  auto const abdomen = std::find_if(p.entries.begin(), p.entries.end(), [](auto const& e) { return e.headword == "ABDOMEN"; });
  REQUIRE(abdomen != p.entries.end());
  CHECK(abdomen->definition.rfind("The temple of the god Stomach, in whose worship, with sacrificial rights,", 0) == 0);
  for (auto const& para : p.paragraphs) {
    CHECK(para.find('\n') == std::string::npos);
    CHECK(para.find("  ") == std::string::npos);
    CHECK(para.find('_') == std::string::npos);
  }
  CHECK_THROWS_WITH(kvc_engine::load_prose_corpus("/nonexistent/prose.txt"),
                    Catch::Contains("--prose: cannot open /nonexistent/prose.txt"));
}

TEST_CASE("RULER tasks: the same seed gives the same example, another seed another", "[golden][ruler]") {
  Setup const& s = Setup::get();
  for (auto const& task : kvc_engine::ruler_task_names()) {
    INFO(task);
    auto const a = s.gen.generate(task, 700, 3, false), b = s.gen.generate(task, 700, 3, false);
    auto const c = s.gen.generate(task, 700, 4, false);
    CHECK(a.context == b.context);
    CHECK(a.question == b.question);
    CHECK(a.references == b.references);
    CHECK(a.context != c.context);
  }
  CHECK(s.gen.heldout(2, 300, 5) == s.gen.heldout(2, 300, 5));
}

TEST_CASE("RULER tasks: the prompt is at most the target length and within one haystack unit of it", "[golden][ruler]") {
  Setup const& s = Setup::get();
  for (std::int64_t length : {400, 1024, 3000, 8000})
    for (auto const& task : kvc_engine::ruler_task_names()) {
      INFO(task << " at " << length);
      auto const p = s.gen.generate(task, length, 1, false);
      std::int64_t const n = prompt_tokens(p);
      CHECK(n <= length);
      // Noise blocks take 23 tokens, list items and words a few; a QA document up to ~200.
      CHECK(n >= length - (task == "qa" ? 200 : 32));
      CHECK(p.context == s.tok.encode(p.context_text, false));
      CHECK(p.question == s.tok.encode(p.question_text, false));
    }
  for (auto const& held : s.gen.heldout(3, 832, 0)) CHECK(held.size() == 832);
}

TEST_CASE("RULER tasks: the answers are in the context", "[golden][ruler]") {
  Setup const& s = Setup::get();
  for (std::uint64_t seed = 0; seed < 4; ++seed)
    for (auto const& task : kvc_engine::ruler_task_names()) {
      INFO(task << " seed " << seed);
      auto const p = s.gen.generate(task, 1500, seed, false);
      REQUIRE(!p.references.empty());
      CHECK(p.max_new_tokens > 0);
      std::string const& c = p.context_text;
      if (task.rfind("niah", 0) == 0) {
        // every reference is a needle's value, each needle once
        for (auto const& r : p.references) CHECK(std::regex_search(c, std::regex("special magic numbers for [a-z-]+ is: " + r + "\\.")));
        CHECK((task == "niah_multiquery" ? 4u : task == "niah_multivalue" ? 4u : 1u) == p.references.size());
        std::regex const needle("One of the special magic");
        std::ptrdiff_t const needles = std::distance(std::sregex_iterator(c.begin(), c.end(), needle), std::sregex_iterator());
        CHECK(needles == (task == "niah_single_1" || task == "niah_single_2" ? 1 : 4));
        CHECK((task == "niah_single_1") == (c.find("The grass is green.") != std::string::npos));
      } else if (task == "vt") {
        std::smatch m;
        REQUIRE(std::regex_search(p.question_text, m, std::regex("assigned the value ([0-9]+) in")));
        CHECK(c.find("VAR " + p.references[0] + " = " + m[1].str() + ".") != std::string::npos);
        for (std::size_t i = 1; i < p.references.size(); ++i)  // each link after the one it copies
          CHECK(c.find("VAR " + p.references[i] + " = VAR " + p.references[i - 1] + ".") >
                c.find("VAR " + p.references[i - 1] + " = "));
      } else if (task == "cwe") {
        std::map<std::string, std::int64_t> count;
        std::regex const item("\n[0-9]+\\. ([a-z]+)");
        for (auto it = std::sregex_iterator(c.begin(), c.end(), item); it != std::sregex_iterator(); ++it)
          ++count[(*it)[1].str()];
        std::int64_t least_top = 1 << 30, most_other = 0;
        for (auto const& [w, n] : count) {
          bool const top = std::find(p.references.begin(), p.references.end(), w) != p.references.end();
          if (top)
            least_top = std::min(least_top, n);
          else
            most_other = std::max(most_other, n);
        }
        CHECK(p.references.size() == 10);
        CHECK(least_top > most_other);
      } else if (task == "fwe") {
        std::string const body = c.substr(c.find("coded words.\n") + 13);
        std::int64_t const third = count_of(body, p.references[2]);
        CHECK(count_of(body, p.references[0]) >= count_of(body, p.references[1]));
        CHECK(count_of(body, p.references[1]) >= third);
        std::istringstream in(body);
        std::map<std::string, std::int64_t> count;
        for (std::string w; in >> w;) ++count[w];
        for (auto const& [w, n] : count)
          if (std::find(p.references.begin(), p.references.end(), w) == p.references.end()) CHECK(n <= third);
      } else if (task == "qa") {
        std::smatch m;
        REQUIRE(std::regex_search(p.question_text, m, std::regex("define as \"(.+)\"\\?")));
        std::string upper = p.references[0];
        for (char& ch : upper) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
        CHECK(c.find(upper + ": " + m[1].str()) != std::string::npos);
      }
    }
}

TEST_CASE("RULER tasks: the question after compression, or inside the compressed context", "[golden][ruler]") {
  Setup const& s = Setup::get();
  auto const after = s.gen.generate("niah_single_2", 900, 7, false);
  auto const inside = s.gen.generate("niah_single_2", 900, 7, true);
  std::string const q = "What are all the special magic numbers for";
  CHECK(after.question_text.rfind(q, 0) == 0);
  CHECK(after.context_text.find(q) == std::string::npos);
  CHECK(inside.context_text.find(q) != std::string::npos);
  // inside: only the chat template's tail and the answer prefix are forwarded
  CHECK(inside.question_text == "<|im_end|>\n<|im_start|>assistant\n The special magic numbers for " +
                                    after.question_text.substr(q.size() + 1, after.question_text.find(" mentioned") - q.size() - 1) +
                                    " mentioned in the provided text are");
  CHECK(after.context_text.rfind("<|im_start|>system\n", 0) == 0);
  CHECK(after.references == inside.references);
  CHECK(prompt_tokens(inside) <= 900);
}

TEST_CASE("RULER tasks: scoring finds every reference, ignoring case", "[golden][ruler]") {
  using kvc_engine::references_found;
  CHECK(references_found(":\n1. 8103672\n2", {"8103672"}));
  CHECK_FALSE(references_found(" 8103762.", {"8103672"}));
  CHECK(references_found(" HPGSZ, xhrnv and RJNPA", {"hpgsz", "XHRNV", "rjnpa"}));
  CHECK_FALSE(references_found(" HPGSZ, xhrnv", {"hpgsz", "XHRNV", "rjnpa"}));
  CHECK(references_found(" Youth.", {"youth"}));
}

TEST_CASE("RULER tasks: errors name the task and the length", "[golden][ruler]") {
  Setup const& s = Setup::get();
  CHECK_THROWS_WITH(s.gen.generate("niah_multiquery", 150, 0, false),
                    Catch::Contains("task niah_multiquery: 150 tokens cannot hold it") && Catch::Contains("prompt already takes"));
  CHECK_THROWS_WITH(s.gen.generate("nope", 1000, 0, false), Catch::Contains("unknown task 'nope' (known: niah_single_1"));
  CHECK_THROWS_WITH(s.gen.generate("vt", 0, 0, false), Catch::Contains("task length must be positive, got 0"));
}

TEST_CASE("RULER tasks: the examples equal the fixture, whose ids HF tokenizers gave", "[golden][ruler]") {
  Setup const& s = Setup::get();
  std::ifstream in(std::string(KVC_GOLDEN_DIR) + "/ruler/tasks.jsonl");
  REQUIRE(in.good());
  std::int64_t lines = 0;
  for (std::string line; std::getline(in, line); ++lines) {
    json const j = json::parse(line);
    INFO(j.at("task").get<std::string>());
    auto const p = s.gen.generate(j.at("task"), j.at("length"), 0, j.at("question_in_context"));
    CHECK(p.context_text == j.at("context_text").get<std::string>());
    CHECK(p.question_text == j.at("question_text").get<std::string>());
    CHECK(p.context == j.at("prompt").get<std::vector<std::int32_t>>());
    CHECK(p.question == j.at("question").get<std::vector<std::int32_t>>());
    CHECK(p.references == j.at("references").get<std::vector<std::string>>());
    CHECK(p.max_new_tokens == j.at("max_new_tokens").get<std::int64_t>());
  }
  CHECK(lines == 5);  // tools/golden/generate_ruler.py's five tasks
}

}  // namespace KVC_TEST_TU
