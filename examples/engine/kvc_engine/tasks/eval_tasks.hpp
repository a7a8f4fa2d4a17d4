#pragma once
/// \file
/// \brief The evaluation sets that `kvcompress-eval` reads, as JSON Lines of token ids (pre-tokenised with
/// the model's own tokenizer): task examples `{"length": L, "task": "...", "prompt": [ids], "answer": [ids]}`
/// (optionally `"question": [ids]`) and held-out text `{"tokens": [ids]}`. Every malformed line is a
/// `kvcompress::Error` naming the file, the line and the offending value.

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvc_engine/model_io/safetensors.hpp"
#include "kvcompress/core/error.hpp"

namespace kvc_engine {

/// \brief One task example, split as kvpress's pipeline runs it: the context is prefilled and compressed,
/// the question is then forwarded over the compressed cache, and the answer is what greedy decoding must
/// produce after it. An empty question means the whole prompt is the context (it is compressed too).
struct TaskExample {
  std::string task;
  std::int64_t length = 0;  ///< the file's "length": the context length the example was drawn for
  std::vector<std::int32_t> context;
  std::vector<std::int32_t> question;
  std::vector<std::int32_t> answer;
  /// Text references (generated tasks, kvc_engine/tasks/ruler_tasks.hpp): when present the answer is decoded
  /// greedily for at most `max_new_tokens` tokens, up to the end-of-turn token, and is right when every
  /// reference occurs in its text; `answer` is then unused.
  std::vector<std::string> references;
  std::int64_t max_new_tokens = 0;
  std::string source;  ///< "<file> line <n>", for messages
  /// With the question compressed (compress_questions): the question's tokens at the context's end, which
  /// FINCH's window is; 0 when the question is forwarded after compression.
  std::int64_t question_in_context = 0;

  /// Tokens the answer may take: the reference answer's, or the decoding budget.
  [[nodiscard]] std::int64_t answer_budget() const {
    return references.empty() ? static_cast<std::int64_t>(answer.size()) : max_new_tokens;
  }
};

namespace detail {

/// Calls `fn(json, line_number)` for every non-blank line of a JSON Lines file.
template <class Fn>
void for_each_json_line(std::string const& path, Fn&& fn) {
  std::ifstream in(path);
  KVC_CHECK(in.good(), "cannot open " << path);
  std::string line;
  for (std::int64_t number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    std::string const where = path + " line " + std::to_string(number);
    nlohmann::json const j = parse_json(line.data(), line.data() + line.size(), 3, where);
    KVC_CHECK(j.is_object(), where << " must hold a JSON object, got " << brief(j));
    fn(j, where);
  }
}

/// The array of token ids `j[field]`, each in [0, vocab_size).
inline std::vector<std::int32_t> token_ids(nlohmann::json const& j, char const* field, std::int64_t vocab_size,
                                           std::string const& where) {
  KVC_CHECK(j.contains(field), where << " has no \"" << field << "\"");
  nlohmann::json const& a = j.at(field);
  KVC_CHECK(a.is_array(), where << ": \"" << field << "\" must be an array of token ids, got " << brief(a));
  std::vector<std::int32_t> ids;
  ids.reserve(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    KVC_CHECK(a[i].is_number_integer(), where << ": " << field << "[" << i << "] = " << brief(a[i])
                                              << " is not an integer token id");
    std::int64_t const id = a[i].get<std::int64_t>();
    KVC_CHECK(id >= 0 && id < vocab_size, where << ": " << field << "[" << i << "] = " << id
                                                << " is outside the model's vocabulary [0, " << vocab_size << ")");
    ids.push_back(static_cast<std::int32_t>(id));
  }
  return ids;
}

}  // namespace detail

/// \brief Where a task's question starts. kvpress's pipeline compresses the context alone and forwards the
/// question afterwards; `compress_questions` compresses the whole prompt instead.
struct QuestionRule {
  bool compress_questions = false;
  /// For lines without "question": the question starts at the token's last occurrence in the prompt
  /// (the tasks of tools/train end in `<question> key ? <answer>`); with `compress_questions` it only marks
  /// the question inside the compressed prompt (`TaskExample::question_in_context`), where it may be absent.
  std::optional<std::int32_t> token;
  /// How the token was given and where it was looked up, for messages: e.g. "'<question>' (id 3 in
  /// m/vocab.json)", or "'<question>', which m/vocab.json does not hold" when `token` is empty.
  std::string described;
};

/// \brief Reads every example of a task file. A line's "question", if present, follows its "prompt";
/// otherwise `rule.token` splits the prompt. `rule.compress_questions` moves the question into the context,
/// except on a line whose "question_in_context" is true (its prompt ends with the question already).
/// \param vocab_size every id must lie in [0, vocab_size)
[[nodiscard]] inline std::vector<TaskExample> read_task_file(std::string const& path, std::int64_t vocab_size,
                                                             QuestionRule const& rule) {
  std::vector<TaskExample> out;
  detail::for_each_json_line(path, [&](nlohmann::json const& j, std::string const& where) {
    TaskExample ex;
    ex.source = where;
    KVC_CHECK(j.contains("task") && j.at("task").is_string() && !j.at("task").get<std::string>().empty(),
              where << ": \"task\" must be a non-empty string, got "
                    << (j.contains("task") ? detail::brief(j.at("task")) : "nothing"));
    ex.task = j.at("task").get<std::string>();
    KVC_CHECK(j.contains("length") && j.at("length").is_number_integer() && j.at("length").get<std::int64_t>() > 0,
              where << ": \"length\" must be a positive integer, got "
                    << (j.contains("length") ? detail::brief(j.at("length")) : "nothing"));
    ex.length = j.at("length").get<std::int64_t>();
    ex.context = detail::token_ids(j, "prompt", vocab_size, where);
    if (j.contains("references")) {  // a generated task's line (kvcompress-eval --write-tasks)
      nlohmann::json const& r = j.at("references");
      KVC_CHECK(r.is_array() && !r.empty() && std::all_of(r.begin(), r.end(), [](auto const& x) { return x.is_string(); }),
                where << ": \"references\" must be a non-empty array of strings, got " << detail::brief(r));
      for (auto const& x : r) ex.references.push_back(x.get<std::string>());
      KVC_CHECK(j.contains("max_new_tokens") && j.at("max_new_tokens").is_number_integer() &&
                    j.at("max_new_tokens").get<std::int64_t>() > 0,
                where << ": \"max_new_tokens\" must be a positive integer beside \"references\", got "
                      << (j.contains("max_new_tokens") ? detail::brief(j.at("max_new_tokens")) : "nothing"));
      ex.max_new_tokens = j.at("max_new_tokens").get<std::int64_t>();
    } else {
      ex.answer = detail::token_ids(j, "answer", vocab_size, where);
      KVC_CHECK(!ex.answer.empty(), where << ": \"answer\" holds no token ids");
    }
    // A line written by `kvcompress-eval --write-tasks --compress-questions` already holds its question in the
    // prompt; its "question" is the chat template's tail and the answer prefix, forwarded as kvpress forwards them.
    bool in_context = false;
    if (j.contains("question_in_context")) {
      KVC_CHECK(j.at("question_in_context").is_boolean(),
                where << ": \"question_in_context\" must be true or false, got "
                      << detail::brief(j.at("question_in_context")));
      in_context = j.at("question_in_context").get<bool>();
      KVC_CHECK(!in_context || j.contains("question"),
                where << ": \"question_in_context\" is true but the line has no \"question\" field (the part forwarded "
                         "after compression)");
    }
    if (j.contains("question")) {
      ex.question = detail::token_ids(j, "question", vocab_size, where);
    } else if (!rule.compress_questions) {
      KVC_CHECK(rule.token, where << " has no \"question\" field, and no question token splits its prompt: "
                                  << (rule.described.empty() ? "none was given" : rule.described));
      auto const it = std::find(ex.context.rbegin(), ex.context.rend(), *rule.token);
      KVC_CHECK(it != ex.context.rend(), where << ": the prompt holds no question token " << *rule.token
                                               << (rule.described.empty() ? "" : " (" + rule.described + ")"));
      auto const start = ex.context.size() - static_cast<std::size_t>(it - ex.context.rbegin()) - 1;
      ex.question.assign(ex.context.begin() + static_cast<std::ptrdiff_t>(start), ex.context.end());
      ex.context.resize(start);
    } else if (rule.token) {  // the whole prompt is compressed; the question token still marks the question (FINCH)
      auto const it = std::find(ex.context.rbegin(), ex.context.rend(), *rule.token);
      if (it != ex.context.rend()) ex.question_in_context = static_cast<std::int64_t>(it - ex.context.rbegin()) + 1;
    }
    if (j.contains("question_tokens")) {  // a generated line whose question is inside its prompt
      KVC_CHECK(j.at("question_tokens").is_number_integer() && j.at("question_tokens").get<std::int64_t>() >= 0 &&
                    j.at("question_tokens").get<std::int64_t>() < static_cast<std::int64_t>(ex.context.size()),
                where << ": \"question_tokens\" must be an integer in [0, " << ex.context.size() << "), got "
                      << detail::brief(j.at("question_tokens")));
      ex.question_in_context = j.at("question_tokens").get<std::int64_t>();
    }
    if (rule.compress_questions && !in_context) {
      ex.context.insert(ex.context.end(), ex.question.begin(), ex.question.end());
      ex.question_in_context += static_cast<std::int64_t>(ex.question.size());
      ex.question.clear();
    }
    KVC_CHECK(!ex.context.empty(), where << ": the context before the question holds no token ids");
    out.push_back(std::move(ex));
  });
  KVC_CHECK(!out.empty(), path << " holds no examples");
  return out;
}

/// \brief The first `per_task` examples of every task at each of `lengths`, in file order. A length with
/// no example is an error (it names the lengths the file has), so a typo cannot shrink the evaluation.
[[nodiscard]] inline std::vector<TaskExample> select_examples(std::vector<TaskExample> const& all,
                                                              std::vector<std::int64_t> const& lengths,
                                                              std::int64_t per_task) {
  KVC_CHECK(per_task > 0, "per_task must be positive, got " << per_task);
  KVC_CHECK(!lengths.empty(), "no task length selected");
  std::map<std::int64_t, std::int64_t> available;  // length → examples
  for (auto const& ex : all) ++available[ex.length];
  for (auto const len : lengths) {
    if (available.count(len)) continue;
    std::ostringstream have;
    for (auto const& [l, n] : available) have << (have.tellp() > 0 ? ", " : "") << l << " (" << n << " examples)";
    KVC_THROW("no task example has length " << len << "; the task file has lengths " << have.str());
  }
  std::map<std::pair<std::string, std::int64_t>, std::int64_t> taken;
  std::vector<TaskExample> out;
  for (auto const& ex : all) {
    if (std::find(lengths.begin(), lengths.end(), ex.length) == lengths.end()) continue;
    if (taken[{ex.task, ex.length}]++ < per_task) out.push_back(ex);
  }
  return out;
}

/// \brief A warning naming the examples whose prompt (context and question) is longer than their stated
/// length, or "" if none is. Not an error: the length only labels an example's group in every table, and a
/// set pre-tokenised with another tokenizer than the one that chose the lengths legitimately overshoots;
/// the tables' "contexts of L tokens" is then approximate, which the warning says.
[[nodiscard]] inline std::string length_warning(std::vector<TaskExample> const& examples) {
  std::int64_t over = 0;
  TaskExample const* worst = nullptr;
  std::int64_t worst_excess = 0;
  for (auto const& ex : examples) {
    std::int64_t const prompt = static_cast<std::int64_t>(ex.context.size() + ex.question.size());
    if (prompt <= ex.length) continue;
    ++over;
    if (prompt - ex.length > worst_excess) {
      worst_excess = prompt - ex.length;
      worst = &ex;
    }
  }
  if (over == 0) return "";
  std::ostringstream os;
  os << over << " of the " << examples.size() << " selected examples have a prompt longer than their stated "
     << "length, so the tables' lengths are approximate; the longest beyond it: " << worst->source << ", "
     << worst->context.size() + worst->question.size() << " tokens for length " << worst->length;
  return os.str();
}

/// \brief Throws if an example needs more positions than the model has: context, question and answer, less
/// the last answer token (never fed), above `max_positions` (config.json's max_position_embeddings; 0:
/// unknown, nothing is checked). RoPE beyond the trained range runs without complaint and answers badly.
inline void check_positions(std::vector<TaskExample> const& examples, std::int64_t max_positions) {
  if (max_positions <= 0) return;
  for (auto const& ex : examples) {
    std::int64_t const needed = static_cast<std::int64_t>(ex.context.size() + ex.question.size()) + ex.answer_budget() - 1;
    KVC_CHECK(needed <= max_positions, ex.source << ": the example needs " << needed << " positions (prompt "
                                                 << ex.context.size() + ex.question.size() << " + answer "
                                                 << ex.answer_budget() << " - 1), more than the model's "
                                                 << "max_position_embeddings = " << max_positions);
  }
}

/// \brief The id of `token` in a vocabulary file `{"tokens": [...]}` (tools/train's vocab.json); none if the
/// file does not exist or lacks the token.
[[nodiscard]] inline std::optional<std::int32_t> vocab_token_id(std::string const& path, std::string const& token) {
  std::ifstream in(path);
  if (!in.good()) return std::nullopt;
  std::ostringstream text;
  text << in.rdbuf();
  std::string const s = text.str();
  nlohmann::json const j = detail::parse_json(s.data(), s.data() + s.size(), 2, path);
  KVC_CHECK(j.is_object() && j.contains("tokens") && j.at("tokens").is_array(),
            path << " must hold {\"tokens\": [...]}, got " << detail::brief(j));
  nlohmann::json const& tokens = j.at("tokens");
  for (std::size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i].is_string() && tokens[i].get<std::string>() == token) return static_cast<std::int32_t>(i);
  return std::nullopt;
}

/// \brief Reads a held-out text file: one `{"tokens": [ids]}` per line, each at least `min_tokens` long.
[[nodiscard]] inline std::vector<std::vector<std::int32_t>> read_heldout_file(std::string const& path,
                                                                            std::int64_t vocab_size,
                                                                            std::int64_t min_tokens) {
  std::vector<std::vector<std::int32_t>> out;
  detail::for_each_json_line(path, [&](nlohmann::json const& j, std::string const& where) {
    out.push_back(detail::token_ids(j, "tokens", vocab_size, where));
    KVC_CHECK(static_cast<std::int64_t>(out.back().size()) >= min_tokens,
              where << " holds " << out.back().size() << " tokens, fewer than the " << min_tokens << " needed");
  });
  KVC_CHECK(!out.empty(), path << " holds no text");
  return out;
}

}  // namespace kvc_engine
