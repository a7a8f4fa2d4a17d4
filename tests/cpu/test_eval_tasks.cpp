// kvcompress-eval's readers: task examples (the question split, the selection per task and length) and
// held-out text from JSON Lines; every malformed line is a kvcompress::Error naming the file, the line and
// the value.
#include <catch2/catch.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "kvc_engine/tasks/eval_tasks.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using Catch::Matchers::Contains;
using kvc_engine::QuestionRule;
using kvc_engine::TaskExample;
using Ids = std::vector<std::int32_t>;

namespace {

constexpr std::int64_t kVocab = 100;
constexpr std::int32_t kQuestion = 4;

/// A file in the temporary directory holding `text`, removed with the object.
class TempFile {
 public:
  explicit TempFile(std::string const& text) {
    static int counter = 0;
    path_ = (std::filesystem::temp_directory_path() /
             ("kvc_eval_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + ".jsonl"))
                .string();
    std::ofstream(path_) << text;
  }
  TempFile(TempFile const&) = delete;
  TempFile& operator=(TempFile const&) = delete;
  ~TempFile() { std::filesystem::remove(path_); }
  [[nodiscard]] std::string const& path() const { return path_; }

 private:
  std::string path_;
};

std::vector<TaskExample> read(std::string const& text, QuestionRule rule = {false, kQuestion, "'?' (id 4)"}) {
  TempFile const f(text);
  return kvc_engine::read_task_file(f.path(), kVocab, rule);
}

std::string line(std::string const& body) { return "{" + body + "}\n"; }

}  // namespace

TEST_CASE("eval tasks: the prompt is split before the last question token", "[eval][tasks]") {
  auto const ex = read(line(R"("length": 8, "task": "niah_single", "prompt": [1, 4, 9, 4, 7, 12, 5], "answer": [42])"));
  REQUIRE(ex.size() == 1);
  CHECK(ex[0].task == "niah_single");
  CHECK(ex[0].length == 8);
  CHECK(ex[0].context == Ids{1, 4, 9});
  CHECK(ex[0].question == Ids{4, 7, 12, 5});
  CHECK(ex[0].answer == Ids{42});
}

TEST_CASE("eval tasks: a line's own question field, blank lines and file order", "[eval][tasks]") {
  auto const ex = read(line(R"("length": 8, "task": "a", "prompt": [1, 2, 3], "question": [4, 5], "answer": [6, 7])") +
                       "\n  \r\n" + line(R"("length": 16, "task": "b", "prompt": [1, 4, 2], "answer": [9])"));
  REQUIRE(ex.size() == 2);
  CHECK(ex[0].context == Ids{1, 2, 3});
  CHECK(ex[0].question == Ids{4, 5});
  CHECK(ex[0].answer == Ids{6, 7});
  CHECK(ex[1].task == "b");
  CHECK(ex[1].context == Ids{1});
  CHECK(ex[1].question == Ids{4, 2});
}

TEST_CASE("eval tasks: compress_questions keeps the whole prompt, question field included, as the context", "[eval][tasks]") {
  QuestionRule const rule{true, kQuestion, ""};
  auto const ex = read(line(R"("length": 8, "task": "a", "prompt": [1, 4, 3], "answer": [6])") +
                           line(R"("length": 8, "task": "a", "prompt": [1, 2], "question": [4, 5], "answer": [6])"),
                       rule);
  REQUIRE(ex.size() == 2);
  CHECK(ex[0].context == Ids{1, 4, 3});
  CHECK(ex[0].question.empty());
  CHECK(ex[1].context == Ids{1, 2, 4, 5});
  CHECK(ex[1].question.empty());
  // The question inside the context (FINCH's window): from the last question token, or the question field.
  CHECK(ex[0].question_in_context == 2);
  CHECK(ex[1].question_in_context == 2);
}

TEST_CASE("eval tasks: a generated line's question_tokens mark its question inside the prompt", "[eval][tasks]") {
  QuestionRule const rule{true, std::nullopt, ""};
  auto const ex = read(line(R"("length": 8, "task": "a", "prompt": [1, 2, 7, 8], "question": [9], "question_tokens": 2, )"
                            R"("references": ["x"], "max_new_tokens": 3)"),
                       rule);
  REQUIRE(ex.size() == 1);
  CHECK(ex[0].context == Ids{1, 2, 7, 8, 9});
  CHECK(ex[0].question_in_context == 3);  // the question, then the template's tail that followed it
  CHECK_THROWS_WITH(read(line(R"("length": 8, "task": "a", "prompt": [1, 2], "question": [9], "question_tokens": 2, )"
                              R"("references": ["x"], "max_new_tokens": 3)"),
                         rule),
                    Contains("line 1: \"question_tokens\" must be an integer in [0, 2), got 2"));
}

TEST_CASE("eval tasks: a line with its question in the prompt forwards its question field, compress_questions or not", "[eval][tasks]") {
  // kvcompress-eval --write-tasks --compress-questions: the prompt ends with the question, the question field is
  // the chat template's tail and the answer prefix, which kvpress's compress_questions forwards after compression
  std::string const text =
      line(R"("length": 8, "task": "a", "question_in_context": true, "prompt": [1, 2, 4], "question": [5, 7], "answer": [6])") +
      line(R"("length": 8, "task": "a", "question_in_context": false, "prompt": [1, 2], "question": [4, 5], "answer": [6])");
  for (bool const compress : {true, false}) {
    auto const ex = read(text, {compress, kQuestion, ""});
    REQUIRE(ex.size() == 2);
    CHECK(ex[0].context == Ids{1, 2, 4});
    CHECK(ex[0].question == Ids{5, 7});
    CHECK(ex[1].context == (compress ? Ids{1, 2, 4, 5} : Ids{1, 2}));
    CHECK(ex[1].question == (compress ? Ids{} : Ids{4, 5}));
  }
}

TEST_CASE("eval tasks: question_in_context that is not a boolean", "[eval][tasks]") {
  CHECK_THROWS_WITH(read(line(R"("length": 8, "task": "a", "question_in_context": 1, "prompt": [1, 2], "question": [4], "answer": [6])")),
                    Contains("line 1: \"question_in_context\" must be true or false, got 1"));
}

TEST_CASE("eval tasks: question_in_context without a question field", "[eval][tasks]") {
  CHECK_THROWS_WITH(read(line(R"("length": 8, "task": "a", "question_in_context": true, "prompt": [1, 4, 2], "answer": [6])")),
                    Contains("line 1: \"question_in_context\" is true but the line has no \"question\" field"));
}

TEST_CASE("eval tasks: without a question token a line needs its question field", "[eval][tasks]") {
  CHECK_THROWS_WITH(read(line(R"("length": 8, "task": "a", "prompt": [1, 4, 3], "answer": [6])"), {false, std::nullopt, ""}),
                    Contains("line 1 has no \"question\" field, and no question token splits its prompt: none was given"));
}

TEST_CASE("eval tasks: a question token the vocabulary lacks is named, with the vocabulary and the task file", "[eval][tasks]") {
  TempFile const f(line(R"("length": 8, "task": "a", "prompt": [1, 4, 3], "answer": [6])"));
  QuestionRule const rule{false, std::nullopt, "--question-token '<q>' is not in m/vocab.json"};
  CHECK_THROWS_WITH(kvc_engine::read_task_file(f.path(), kVocab, rule),
                    Contains(f.path() + " line 1 has no \"question\" field, and no question token splits its prompt: "
                                        "--question-token '<q>' is not in m/vocab.json"));
}

TEST_CASE("eval tasks: a prompt without the question token", "[eval][tasks]") {
  TempFile const f(line(R"("length": 8, "task": "a", "prompt": [1, 2, 3], "answer": [6])"));
  CHECK_THROWS_WITH(kvc_engine::read_task_file(f.path(), kVocab, {false, kQuestion, "'?', id 4 in m/vocab.json"}),
                    Contains(f.path() + " line 1: the prompt holds no question token 4 ('?', id 4 in m/vocab.json)"));
}

TEST_CASE("eval tasks: nothing before the question", "[eval][tasks]") {
  CHECK_THROWS_WITH(read(line(R"("length": 8, "task": "a", "prompt": [4, 2, 3], "answer": [6])")),
                    Contains("line 1: the context before the question holds no token ids"));
}

TEST_CASE("eval tasks: a token id outside the model's vocabulary", "[eval][tasks]") {
  CHECK_THROWS_WITH(read(line(R"("length": 8, "task": "a", "prompt": [1, 100, 4], "answer": [6])")),
                    Contains("line 1: prompt[1] = 100 is outside the model's vocabulary [0, 100)"));
}

TEST_CASE("eval tasks: a negative token id", "[eval][tasks]") {
  CHECK_THROWS_WITH(read(line(R"("length": 8, "task": "a", "prompt": [1, 4], "answer": [-3])")),
                    Contains("answer[0] = -3 is outside the model's vocabulary"));
}

TEST_CASE("eval tasks: a token id that is not an integer", "[eval][tasks]") {
  CHECK_THROWS_WITH(read(line(R"("length": 8, "task": "a", "prompt": [1, 2.5, 4], "answer": [6])")),
                    Contains("prompt[1] = 2.5 is not an integer token id"));
}

TEST_CASE("eval tasks: a prompt that is not an array", "[eval][tasks]") {
  CHECK_THROWS_WITH(read(line(R"("length": 8, "task": "a", "prompt": "1 2 4", "answer": [6])")),
                    Contains("\"prompt\" must be an array of token ids, got \"1 2 4\""));
}

TEST_CASE("eval tasks: a missing answer", "[eval][tasks]") {
  CHECK_THROWS_WITH(read(line(R"("length": 8, "task": "a", "prompt": [1, 4])")), Contains("line 1 has no \"answer\""));
}

TEST_CASE("eval tasks: an empty answer", "[eval][tasks]") {
  CHECK_THROWS_WITH(read(line(R"("length": 8, "task": "a", "prompt": [1, 4], "answer": [])")),
                    Contains("line 1: \"answer\" holds no token ids"));
}

TEST_CASE("eval tasks: a missing or empty task name", "[eval][tasks]") {
  CHECK_THROWS_WITH(read(line(R"("length": 8, "prompt": [1, 4], "answer": [6])")),
                    Contains("\"task\" must be a non-empty string, got nothing"));
  CHECK_THROWS_WITH(read(line(R"("length": 8, "task": "", "prompt": [1, 4], "answer": [6])")),
                    Contains("\"task\" must be a non-empty string, got \"\""));
}

TEST_CASE("eval tasks: a length that is not a positive integer", "[eval][tasks]") {
  CHECK_THROWS_WITH(read(line(R"("length": 0, "task": "a", "prompt": [1, 4], "answer": [6])")),
                    Contains("\"length\" must be a positive integer, got 0"));
  CHECK_THROWS_WITH(read(line(R"("length": "8", "task": "a", "prompt": [1, 4], "answer": [6])")),
                    Contains("\"length\" must be a positive integer, got \"8\""));
}

TEST_CASE("eval tasks: invalid JSON names the line", "[eval][tasks]") {
  CHECK_THROWS_WITH(read(line(R"("length": 8, "task": "a", "prompt": [1, 4], "answer": [6])") + "{\"length\": 8,\n"),
                    Contains("line 2 is not valid JSON"));
}

TEST_CASE("eval tasks: a line that is not an object", "[eval][tasks]") {
  CHECK_THROWS_WITH(read("[1, 2, 3]\n"), Contains("line 1 must hold a JSON object, got [1,2,3]"));
}

TEST_CASE("eval tasks: a file without examples", "[eval][tasks]") {
  CHECK_THROWS_WITH(read("\n\n"), Contains("holds no examples"));
}

TEST_CASE("eval tasks: a missing file", "[eval][tasks]") {
  CHECK_THROWS_WITH(kvc_engine::read_task_file("/nonexistent/tasks.jsonl", kVocab, {}),
                    Contains("cannot open /nonexistent/tasks.jsonl"));
}

TEST_CASE("eval tasks: the first per_task examples of each task at the chosen lengths", "[eval][tasks]") {
  std::vector<TaskExample> all;
  int id = 0;
  for (std::int64_t length : {512, 2048})
    for (int i = 0; i < 3; ++i)
      for (char const* task : {"single", "multikey"}) all.push_back({task, length, {id++}, {}, {1}, {}, 0, "", 0});
  auto const picked = kvc_engine::select_examples(all, {2048}, 2);
  REQUIRE(picked.size() == 4);
  // file order is kept: single, multikey, single, multikey (ids 6..9 at 2048)
  CHECK(picked[0].context == Ids{6});
  CHECK(picked[1].context == Ids{7});
  CHECK(picked[2].context == Ids{8});
  CHECK(picked[3].context == Ids{9});
  CHECK(kvc_engine::select_examples(all, {512, 2048}, 5).size() == 12);
}

TEST_CASE("eval tasks: a length no example has", "[eval][tasks]") {
  std::vector<TaskExample> const all{{"a", 512, {1}, {}, {1}, {}, 0, "", 0}, {"a", 2048, {1}, {}, {1}, {}, 0, "", 0}};
  CHECK_THROWS_WITH(kvc_engine::select_examples(all, {2048, 4096}, 1),
                    Contains("no task example has length 4096; the task file has lengths 512 (1 examples), 2048 (1 examples)"));
}

TEST_CASE("eval tasks: per_task must be positive", "[eval][tasks]") {
  std::vector<TaskExample> const all{{"a", 512, {1}, {}, {1}, {}, 0, "", 0}};
  CHECK_THROWS_WITH(kvc_engine::select_examples(all, {512}, 0), Contains("per_task must be positive, got 0"));
}

TEST_CASE("eval tasks: held-out text", "[eval][tasks]") {
  TempFile const f(line(R"("tokens": [1, 2, 3, 4])") + line(R"("tokens": [5, 6, 7, 8, 9])"));
  auto const text = kvc_engine::read_heldout_file(f.path(), kVocab, 4);
  REQUIRE(text.size() == 2);
  CHECK(text[0] == Ids{1, 2, 3, 4});
  CHECK(text[1] == Ids{5, 6, 7, 8, 9});
}

TEST_CASE("eval tasks: a held-out text shorter than the protocol needs", "[eval][tasks]") {
  TempFile const f(line(R"("tokens": [1, 2, 3, 4])") + line(R"("tokens": [5, 6, 7])"));
  CHECK_THROWS_WITH(kvc_engine::read_heldout_file(f.path(), kVocab, 4),
                    Contains("line 2 holds 3 tokens, fewer than the 4 needed"));
}

TEST_CASE("eval tasks: a held-out file without text", "[eval][tasks]") {
  TempFile const f("");
  CHECK_THROWS_WITH(kvc_engine::read_heldout_file(f.path(), kVocab, 4), Contains("holds no text"));
}

TEST_CASE("eval tasks: the question token's id from a vocabulary file", "[eval][tasks]") {
  TempFile const f(R"({"tokens": ["<pad>", "<bos>", "<question>", "the"]})");
  CHECK(kvc_engine::vocab_token_id(f.path(), "<question>") == std::optional<std::int32_t>{2});
  CHECK_FALSE(kvc_engine::vocab_token_id(f.path(), "<answer>").has_value());
  CHECK_FALSE(kvc_engine::vocab_token_id("/nonexistent/vocab.json", "<question>").has_value());
}

TEST_CASE("eval tasks: a vocabulary file without a token list", "[eval][tasks]") {
  TempFile const f(R"({"words": []})");
  CHECK_THROWS_WITH(kvc_engine::vocab_token_id(f.path(), "<question>"), Contains("must hold {\"tokens\": [...]}"));
}

TEST_CASE("eval tasks: prompts longer than their stated length are warned about, naming the longest", "[eval][tasks]") {
  auto const ex = read(line(R"("length": 4, "task": "a", "prompt": [1, 2, 4, 5], "answer": [6])") +
                       line(R"("length": 4, "task": "a", "prompt": [1, 2, 3, 4, 5], "answer": [6])") +
                       line(R"("length": 4, "task": "a", "prompt": [1, 2, 3, 3, 4, 5], "answer": [6])"));
  REQUIRE(ex.size() == 3);
  std::string const warning = kvc_engine::length_warning(ex);
  CHECK_THAT(warning, Contains("2 of the 3 selected examples have a prompt longer than their stated length"));
  CHECK_THAT(warning, Contains(" line 3, 6 tokens for length 4"));
  CHECK(kvc_engine::length_warning({ex[0]}).empty());
}

TEST_CASE("eval tasks: an example needing more positions than the model has", "[eval][tasks]") {
  // context 3 + question 2 + answer 2 - 1 (the last answer token is never fed) = 6 positions
  auto const ex = read(line(R"("length": 8, "task": "a", "prompt": [1, 2, 3, 4, 5], "answer": [6, 7])"));
  CHECK_NOTHROW(kvc_engine::check_positions(ex, 6));
  CHECK_NOTHROW(kvc_engine::check_positions(ex, 0));  // unknown: nothing to check against
  CHECK_THROWS_WITH(kvc_engine::check_positions(ex, 5),
                    Contains(" line 1: the example needs 6 positions (prompt 5 + answer 2 - 1), more than the model's "
                             "max_position_embeddings = 5"));
}

}  // namespace KVC_TEST_TU
