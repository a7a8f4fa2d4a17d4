// kvcompress-eval: what each press costs in accuracy and buys in memory, on the model the project ships
// (models/kvc-recall), any HF checkpoint folder with pre-tokenised tasks, or a GGUF model on RULER-style
// tasks generated with its own tokenizer (kvc_engine/tasks/ruler_tasks.hpp).
//
// For every context it prefills once, keeps the cache and the forward record, and then, for every
// press × ratio, compresses a copy: retrieval tasks are answered greedily after the question (exact match),
// held-out text gives the KL divergence of the next-token distribution against the full cache. It prints
// markdown tables and writes <out>/results.csv, <out>/results.md and <out>/accuracy.png (docs/engine.md,
// "Evaluation").
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "kvc_engine/eval/accuracy_plot.hpp"
#include "kvc_engine/eval/csv_writer.hpp"
#include "kvc_engine/forward/engine.hpp"
#include "kvc_engine/eval/eval_metrics.hpp"
#include "kvc_engine/tasks/eval_tasks.hpp"
#include "kvc_engine/model_io/gguf.hpp"
#include "kvc_engine/eval/greedy_answer.hpp"
#include "kvc_engine/eval/markdown_table.hpp"
#include "kvc_engine/eval/prefill_snapshot.hpp"
#include "kvc_engine/compression/press_registry.hpp"
#include "kvc_engine/compression/kvzip_prompt.hpp"
#include "kvc_engine/eval/progress_bar.hpp"
#include "kvc_engine/tasks/prose_corpus.hpp"
#include "kvc_engine/tasks/ruler_tasks.hpp"
#include "kvc_engine/tokenizer/gguf_tokenizer.hpp"

namespace {

namespace fs = std::filesystem;
using kvc_engine::Compressor;
using kvc_engine::Engine;
using kvc_engine::TaskExample;

struct Options {
  std::string model = std::string(KVC_EVAL_REPO_ROOT) + "/models/kvc-recall";
  std::string tasks, heldout;  // default: inside the model folder; generated for a GGUF model
  std::vector<std::string> presses{"expected_attention", "snapkv",    "tova",     "knorm",
                                   "streaming_llm",      "keydiff",   "pyramidkv", "adakv_expected_attention"};
  std::vector<std::string> task_names = kvc_engine::ruler_task_names();
  std::uint64_t seed = 0;
  std::string prose = kvc_engine::kDefaultProsePath;
  std::string write_tasks;
  bool generate_tasks = false, generate_heldout = false;  // set by validate()
  std::vector<double> ratios{0.0, 0.25, 0.5, 0.75, 0.9};
  std::vector<std::int64_t> lengths{2048};
  std::int64_t per_task = 20;
  std::int64_t kl_prefix = 768, kl_tokens = 64, kl_lines = 0;
  std::string question_token = "<question>";
  bool compress_questions = false;
  int threads = 0;
  std::int64_t decode_batch = 12;
  std::string out = "eval-results";
  bool no_plot = false;
  kvc_engine::PressFiles press_files;  // --lukv-curve, --duo-pattern; KVzip's prompt (kvzip_prompt_for)
  std::string kvzip_prompt;            // --kvzip-prompt
  std::string kvzap_weights, fast_kvzip_weights;  // --kvzap-weights, --fast-kvzip-weights
};

/// One press at one ratio; runs[0] is the full cache (ratio 0), shared by every press.
struct Run {
  std::string press;
  double ratio = 0.0;
  Compressor compressor;
};

/// A task at one length.
struct Group {
  std::string task;
  std::int64_t length = 0;
  std::string label;
  std::int64_t contexts = 0, context_tokens = 0;
  double prefill_seconds = 0.0;
};

/// What one run measured on one group.
struct Cell {
  kvc_engine::Tally tally;
  double kept_bytes = 0.0, full_bytes = 0.0;  // summed over the group's contexts
  double compress_seconds = 0.0;
  std::int64_t decode_tokens = 0;  // single-token passes after the first answer token
  double decode_seconds = 0.0;
};

std::string format(char const* fmt, double x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, x);
  return buf;
}

std::string ratio_text(double r) { return format("%g", r); }

std::string shell_word(std::string const& s) {
  if (!s.empty() && s.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-+=./,:@") ==
                        std::string::npos)
    return s;
  return kvc_engine::detail::shell_quote(s);
}

std::string model_name(std::string const& folder) {
  fs::path const p = fs::path(folder).lexically_normal();
  return (p.has_filename() ? p.filename() : p.parent_path().filename()).string();
}

void validate(Options& o) {
  std::vector<std::string> const known = kvc_engine::press_names();
  KVC_CHECK(!o.presses.empty(), "--presses: give at least one press");
  for (auto const& p : o.presses) {
    if (std::find(known.begin(), known.end(), p) != known.end()) continue;
    std::string list;
    for (auto const& n : known) list += (list.empty() ? "" : ", ") + n;
    KVC_THROW("--presses: unknown press '" << p << "' (known: " << list << ")");
  }
  for (std::size_t i = 0; i < o.presses.size(); ++i)
    KVC_CHECK(std::find(o.presses.begin(), o.presses.begin() + static_cast<std::ptrdiff_t>(i), o.presses[i]) ==
                  o.presses.begin() + static_cast<std::ptrdiff_t>(i),
              "--presses: '" << o.presses[i] << "' is given twice");
  KVC_CHECK(o.compress_questions || std::find(o.presses.begin(), o.presses.end(), "finch") == o.presses.end(),
            "--presses finch: FINCH's window is the question (kvpress marks it with a delimiter token), so the question "
            "must be inside the compressed prefill: add --compress-questions");
  KVC_CHECK(!o.ratios.empty(), "--ratios: give at least one ratio");
  for (double r : o.ratios) KVC_CHECK(r >= 0.0 && r < 1.0, "--ratios: " << r << " is outside [0, 1)");
  std::sort(o.ratios.begin(), o.ratios.end());
  for (std::size_t i = 1; i < o.ratios.size(); ++i)
    KVC_CHECK(o.ratios[i] != o.ratios[i - 1], "--ratios: " << o.ratios[i] << " is given twice");
  KVC_CHECK(!o.lengths.empty(), "--lengths: give at least one length");
  KVC_CHECK(o.per_task > 0, "--per-task must be positive, got " << o.per_task);
  KVC_CHECK(o.kl_prefix > 0, "--kl-prefix must be positive, got " << o.kl_prefix);
  KVC_CHECK(o.kl_tokens > 0, "--kl-tokens must be positive, got " << o.kl_tokens);
  KVC_CHECK(o.kl_lines >= 0, "--kl-lines must be non-negative, got " << o.kl_lines);
  KVC_CHECK(o.threads >= 0, "--threads must be non-negative, got " << o.threads);
  KVC_CHECK(o.decode_batch > 0, "--decode-batch must be positive, got " << o.decode_batch);
  // A GGUF file brings its tokenizer: tasks and held-out text are generated unless files are given.
  bool const gguf = fs::is_regular_file(o.model);
  o.generate_tasks = gguf && o.tasks.empty();
  o.generate_heldout = gguf && o.heldout.empty();
  if (o.generate_tasks) {
    std::vector<std::string> const tasks = kvc_engine::ruler_task_names();
    KVC_CHECK(!o.task_names.empty(), "--task-names: give at least one task");
    for (auto const& t : o.task_names) {
      std::string list;
      for (auto const& n : tasks) list += (list.empty() ? "" : ", ") + n;
      KVC_CHECK(std::find(tasks.begin(), tasks.end(), t) != tasks.end(), "--task-names: unknown task '" << t << "' (known: " << list << ")");
    }
  }
  for (auto const l : o.lengths) KVC_CHECK(l > 0, "--lengths: " << l << " is not a positive length");
  if (o.tasks.empty()) o.tasks = o.model + "/tasks.jsonl";
  if (o.heldout.empty()) o.heldout = o.model + "/heldout_text.jsonl";
}

/// Where questions start: the question token's id is a number as given, or a name looked up in the model's
/// vocab.json. A name the vocabulary lacks is no error yet (task lines with a "question" field do not need
/// it); the first line that does names the token and the vocabulary file.
kvc_engine::QuestionRule question_rule(Options const& o, std::int64_t vocab_size) {
  kvc_engine::QuestionRule rule{o.compress_questions, std::nullopt, ""};
  if (o.question_token.empty()) {
    rule.described = "--question-token is empty";
    return rule;
  }
  if (o.question_token.find_first_not_of("0123456789") == std::string::npos) {
    KVC_CHECK(o.question_token.size() <= 10 && std::stoll(o.question_token) < vocab_size,
              "--question-token: " << o.question_token << " is outside the vocabulary [0, " << vocab_size << ")");
    rule.token = static_cast<std::int32_t>(std::stoll(o.question_token));
    rule.described = "--question-token " + o.question_token;
    return rule;
  }
  std::string const vocab = (fs::path(o.model) / "vocab.json").string();
  rule.token = kvc_engine::vocab_token_id(vocab, o.question_token);
  if (rule.token)
    rule.described = "'" + o.question_token + "', id " + std::to_string(*rule.token) + " in " + vocab;
  else
    rule.described = "--question-token '" + o.question_token + "' is not in " + vocab +
                     (fs::exists(vocab) ? "" : ", which does not exist") + " (give its id instead)";
  return rule;
}

/// The chat format a GGUF's template names; none when it carries no template (plain prompts).
std::optional<kvc_engine::ChatFormat> chat_format_of(kvc_engine::Tokenizer const& tok) {
  kvc_engine::TokenizerModel const& m = tok.model();
  if (m.chat_template.empty()) return std::nullopt;
  auto const text = [&](std::int64_t id) {
    return id >= 0 && id < static_cast<std::int64_t>(m.tokens.size()) ? m.tokens[static_cast<std::size_t>(id)] : std::string();
  };
  return kvc_engine::ChatFormat::from_template(m.chat_template, text(m.bos_id), text(m.eos_id));
}

/// KVzip's reconstruction prompt for the model, when press kvzip is asked for: read from --kvzip-prompt, or
/// written with a GGUF's tokenizer and chat format; an HF folder has no tokenizer the engine reads, which the
/// press's error then says.
void kvzip_prompt_for(Options& o, kvc_engine::Tokenizer const* tokenizer, std::int64_t vocab) {
  if (std::find(o.presses.begin(), o.presses.end(), "kvzip") == o.presses.end()) return;
  if (!o.kvzip_prompt.empty()) {
    o.press_files.kvzip_prompt = kvc_engine::read_kvzip_prompt(o.kvzip_prompt, vocab);
  } else if (tokenizer != nullptr) {
    o.press_files.kvzip_prompt = kvc_engine::kvzip_prompt(*tokenizer, chat_format_of(*tokenizer));
  } else {
    o.press_files.kvzip_prompt_missing =
        "it writes its reconstruction prompt (\"Repeat the previous context exactly.\") with the model's tokenizer, and " +
        o.model + " is an HF checkpoint folder, whose tokenizer the engine does not read: give a .gguf --model, or the "
                  "prompt's token ids with --kvzip-prompt FILE";
  }
}

/// `--per-task` examples of every task at every length; example i draws seed * 1000000 + i.
std::vector<kvc_engine::RulerPrompt> generate_prompts(Options const& o, kvc_engine::RulerTaskGenerator const& gen) {
  std::vector<kvc_engine::RulerPrompt> out;
  for (std::int64_t length : o.lengths)
    for (auto const& task : o.task_names)
      for (std::int64_t i = 0; i < o.per_task; ++i)
        out.push_back(gen.generate(task, length, o.seed * 1000000 + static_cast<std::uint64_t>(i), o.compress_questions));
  return out;
}

TaskExample to_example(kvc_engine::RulerPrompt const& p, std::size_t index, std::int64_t vocab) {
  TaskExample ex;
  ex.task = p.task;
  ex.length = p.length;
  ex.context = p.context;
  ex.question = p.question;
  ex.references = p.references;
  ex.max_new_tokens = p.max_new_tokens;
  ex.question_in_context = p.question_tokens_in_context;
  ex.source = "generated example " + std::to_string(index + 1) + " (" + p.task + ", " + std::to_string(p.length) + " tokens)";
  for (auto const* ids : {&ex.context, &ex.question})
    for (std::int32_t id : *ids)
      KVC_CHECK(id < vocab, ex.source << ": token id " << id << " of the GGUF's tokenizer is outside the model's "
                                      << "vocabulary [0, " << vocab << ")");
  return ex;
}

/// One JSON line per example: readable by --tasks, and by tools/golden/generate_ruler.py.
void write_prompts(std::string const& path, std::vector<kvc_engine::RulerPrompt> const& prompts, bool compress_questions) {
  std::ofstream f(path);
  KVC_CHECK(f.good(), "--write-tasks: cannot write " << path);
  for (auto const& p : prompts) {
    nlohmann::json j;
    j["task"] = p.task;
    j["length"] = p.length;
    j["question_in_context"] = compress_questions;
    j["prompt"] = p.context;
    j["question"] = p.question;
    j["references"] = p.references;
    j["max_new_tokens"] = p.max_new_tokens;
    if (compress_questions) j["question_tokens"] = p.question_tokens_in_context;
    j["context_text"] = p.context_text;
    j["question_text"] = p.question_text;
    f << j.dump() << "\n";
  }
  KVC_CHECK(f.good(), "--write-tasks: cannot write " << path);
}

class Evaluation {
 public:
  /// \param tokenizer decodes the answers of examples with text references (none: every example has ids)
  Evaluation(Options const& o, kvc_engine::Model const& model, kvc_engine::Tokenizer const* tokenizer,
             std::vector<TaskExample> examples, std::vector<std::vector<std::int32_t>> heldout)
      : o_(o), model_(model), tokenizer_(tokenizer), engine_(model, o.threads), examples_(std::move(examples)),
        heldout_(std::move(heldout)) {
    runs_.push_back({"full", 0.0, kvc_engine::make_compressor("none", 0.0)});
    for (auto const& p : o_.presses)
      for (double r : o_.ratios)
        if (r > 0.0) runs_.push_back({p, r, kvc_engine::make_compressor(p, r, engine_.device(), o_.press_files)});
    for (auto const& r : runs_) keep_hidden_states_ = keep_hidden_states_ || r.compressor.needs.hidden_states;
    for (auto const& ex : examples_) {
      if (group_of_.count({ex.task, ex.length})) continue;
      group_of_[{ex.task, ex.length}] = groups_.size();
      groups_.push_back({ex.task, ex.length, o_.lengths.size() > 1 ? ex.task + "@" + std::to_string(ex.length) : ex.task});
    }
    cells_.assign(runs_.size(), std::vector<Cell>(groups_.size()));
    kl_sum_.assign(runs_.size(), 0.0);
    kl_count_.assign(runs_.size(), 0);
  }

  void run() {
    kvc_engine::ProgressBar bar(stderr, kvc_engine::ProgressBar::style_for(stderr));
    double const units = static_cast<double>((examples_.size() + heldout_.size()) * runs_.size());
    double done = 0.0;
    std::map<std::size_t, std::int64_t> seen;
    for (auto const& ex : examples_) {
      std::size_t const g = group_of_.at({ex.task, ex.length});
      std::string const where = groups_[g].label + " " + std::to_string(++seen[g]) + "/" +
                                std::to_string(std::min<std::int64_t>(o_.per_task, count(g)));
      bar.update(done / units, where + ": prefill");
      kvc_engine::PrefillSnapshot snap = kvc_engine::prefill_snapshot(
          engine_, ex.context, static_cast<std::int64_t>(ex.question.size()) + ex.answer_budget(), keep_hidden_states_);
      snap.record.question_tokens = ex.question_in_context;
      groups_[g].prefill_seconds += snap.seconds;
      groups_[g].contexts += 1;
      groups_[g].context_tokens += static_cast<std::int64_t>(ex.context.size());
      double const full_bytes = static_cast<double>(snap.cache.bytes_in_use());
      // Answers of generated tasks stop at the end-of-turn token; reference token answers have their length.
      std::int32_t const stop = ex.references.empty() || !tokenizer_ ? kvc_engine::kNoStopToken : tokenizer_->eos_id();
      // The runs decode their answers together, --decode-batch at a time: one set of weight reads per pass.
      for (std::size_t r0 = 0; r0 < runs_.size(); r0 += static_cast<std::size_t>(o_.decode_batch)) {
        std::size_t const r1 = std::min(runs_.size(), r0 + static_cast<std::size_t>(o_.decode_batch));
        std::vector<kvc_engine::CompressedCopy> copies;
        std::vector<kvc_engine::KVCache*> caches;
        copies.reserve(r1 - r0);
        for (std::size_t r = r0; r < r1; ++r) {
          Cell& cell = cells_[r][g];
          copies.push_back(kvc_engine::compressed_copy(engine_, snap, runs_[r].compressor));
          cell.compress_seconds += copies.back().compress_seconds;
          cell.kept_bytes += static_cast<double>(copies.back().cache.bytes_in_use());
          cell.full_bytes += full_bytes;
        }
        // A press that acts while decoding (CAM's after_step) needs each pass's queries of its own sequence, which
        // the batched pass does not record: its answer decodes alone, with the hook, as Engine::generate runs it.
        // The others decode together.
        std::vector<kvc_engine::GreedyAnswer> answers(copies.size());
        std::vector<std::size_t> batched;
        for (std::size_t i = 0; i < copies.size(); ++i) {
          Compressor const& comp = runs_[r0 + i].compressor;
          if (comp.after_step) {
            answers[i] = kvc_engine::greedy_answer(engine_, copies[i].cache, ex.question, snap.last_logits, ex.answer_budget(),
                                                   stop, &comp);
          } else {
            batched.push_back(i);
            caches.push_back(&copies[i].cache);
          }
        }
        if (!caches.empty()) {
          std::vector<kvc_engine::GreedyAnswer> together =
              kvc_engine::greedy_answers(engine_, caches, ex.question, snap.last_logits, ex.answer_budget(), stop);
          for (std::size_t k = 0; k < batched.size(); ++k) answers[batched[k]] = std::move(together[k]);
        }
        for (std::size_t r = r0; r < r1; ++r) {
          Cell& cell = cells_[r][g];
          kvc_engine::GreedyAnswer const& answer = answers[r - r0];
          cell.decode_tokens += answer.decode_passes;
          cell.decode_seconds += answer.decode_seconds;
          std::vector<std::int32_t> const& out = answer.tokens;
          std::string const text = tokenizer_ ? tokenizer_->decode(out) : std::string();
          bool const right = ex.references.empty() ? kvc_engine::exact_match(out, ex.answer)
                                                   : kvc_engine::references_found(text, ex.references);
          cell.tally.add(right);
          answers_.push_back({{"press", runs_[r].press}, {"ratio", runs_[r].ratio}, {"task", ex.task}, {"length", ex.length},
                              {"example", ex.source}, {"tokens", out}, {"right", right}});
          if (tokenizer_) answers_.back()["text"] = text;
        }
        done += static_cast<double>(r1 - r0);
        bar.update(done / units, where + ": " + runs_[r1 - 1].press + " " + ratio_text(runs_[r1 - 1].ratio));
      }
    }
    std::int64_t const V = model_.config.vocab_size;
    for (std::size_t line = 0; line < heldout_.size(); ++line) {
      std::vector<std::int32_t> const& text = heldout_[line];
      std::string const where = "held-out text " + std::to_string(line + 1) + "/" + std::to_string(heldout_.size());
      bar.update(done / units, where + ": prefill");
      std::vector<std::int32_t> const prefix(text.begin(), text.begin() + o_.kl_prefix);
      std::vector<std::int32_t> const next(text.begin() + o_.kl_prefix, text.begin() + o_.kl_prefix + o_.kl_tokens);
      kvc_engine::PrefillSnapshot const snap = kvc_engine::prefill_snapshot(engine_, prefix, o_.kl_tokens, keep_hidden_states_);
      std::vector<float> full;  // [kl_tokens, V]
      for (std::size_t r = 0; r < runs_.size(); ++r) {
        if (runs_[r].press == "finch") {  // held-out text has no question: no window for FINCH, no KL
          done += 1.0;
          continue;
        }
        kvc_engine::CompressedCopy copy = kvc_engine::compressed_copy(engine_, snap, runs_[r].compressor);
        std::vector<float> const logits = engine_.forward(copy.cache, next, kvc_engine::Logits::kAll);
        if (r == 0) {
          full = logits;
        } else {
          double kl = 0.0;
          for (std::int64_t t = 0; t < o_.kl_tokens; ++t)
            kl += kvc_engine::kl_divergence(full.data() + t * V, logits.data() + t * V, V);
          kl_sum_[r] += kl / static_cast<double>(o_.kl_tokens);
          kl_count_[r] += 1;
        }
        done += 1.0;
        bar.update(done / units, where + ": " + runs_[r].press + " " + ratio_text(runs_[r].ratio));
      }
    }
    bar.update(1.0, "done");
    bar.finish();
  }

  /// The run that `press` at `ratio` means (ratio 0: the full cache).
  [[nodiscard]] std::size_t run_index(std::string const& press, double ratio) const {
    if (ratio == 0.0) return 0;
    for (std::size_t r = 1; r < runs_.size(); ++r)
      if (runs_[r].press == press && runs_[r].ratio == ratio) return r;
    KVC_THROW("no run for " << press << " at " << ratio);
  }
  [[nodiscard]] double accuracy(std::size_t r, std::size_t g) const { return cells_[r][g].tally.rate(); }
  [[nodiscard]] double mean_accuracy(std::size_t r) const {
    double sum = 0.0;
    for (std::size_t g = 0; g < groups_.size(); ++g) sum += accuracy(r, g);
    return sum / static_cast<double>(groups_.size());
  }
  [[nodiscard]] double kl(std::size_t r) const {
    if (r == 0) return heldout_.empty() ? std::nan("") : 0.0;
    return kl_count_[r] == 0 ? std::nan("") : kl_sum_[r] / static_cast<double>(kl_count_[r]);
  }
  [[nodiscard]] Cell total(std::size_t r) const {
    Cell t;
    for (auto const& c : cells_[r]) {
      t.tally.correct += c.tally.correct;
      t.tally.total += c.tally.total;
      t.kept_bytes += c.kept_bytes;
      t.full_bytes += c.full_bytes;
      t.compress_seconds += c.compress_seconds;
      t.decode_tokens += c.decode_tokens;
      t.decode_seconds += c.decode_seconds;
    }
    return t;
  }

  /// The tables: [0] accuracy by press and ratio (the headline), [1] KL divergence, [2] accuracy per task,
  /// [3] cache bytes and timings.
  [[nodiscard]] std::vector<std::string> tables() const {
    std::vector<std::string> out;
    std::vector<std::string> ratio_header{"press"};
    for (double r : o_.ratios) ratio_header.push_back(r == 0.0 ? "0 (full)" : ratio_text(r));

    kvc_engine::MarkdownTable acc(ratio_header), div(ratio_header);
    for (auto const& p : o_.presses) {
      std::vector<std::string> a{p}, k{p};
      for (double r : o_.ratios) {
        a.push_back(format("%.1f", 100.0 * mean_accuracy(run_index(p, r))));
        double const d = kl(run_index(p, r));
        k.push_back(std::isnan(d) ? "—" : format("%.3g", d));
      }
      acc.add_row(a);
      div.add_row(k);
    }
    std::ostringstream lengths;
    for (std::size_t i = 0; i < o_.lengths.size(); ++i) lengths << (i ? ", " : "") << o_.lengths[i];
    out.push_back("### Accuracy (%), mean over " + std::to_string(groups_.size()) + " tasks — contexts of " +
                  lengths.str() + " tokens, " + std::to_string(o_.per_task) +
                  " examples per task; columns: compression ratio (fraction of the KV cache removed)\n\n" + acc.str());
    out.push_back("### KL divergence KL(full ‖ compressed) of the next-token distribution, nats per token — " +
                  std::to_string(heldout_.size()) + " held-out texts, " + std::to_string(o_.kl_tokens) +
                  " tokens after a " + std::to_string(o_.kl_prefix) + "-token prefix\n\n" + div.str());

    std::vector<std::string> task_header{"press", "ratio"};
    for (auto const& g : groups_) task_header.push_back(g.label);
    task_header.push_back("mean");
    kvc_engine::MarkdownTable per_task(task_header);
    std::vector<std::string> cost_header{"press", "ratio", "KV bytes kept per context", "fraction of full",
                                         "compress ms per context", "decode tokens/s"};
    kvc_engine::MarkdownTable cost(cost_header);
    for (std::size_t r = 0; r < runs_.size(); ++r) {
      std::vector<std::string> row{r == 0 ? "full cache" : runs_[r].press, ratio_text(runs_[r].ratio)};
      for (std::size_t g = 0; g < groups_.size(); ++g) row.push_back(format("%.1f", 100.0 * accuracy(r, g)));
      row.push_back(format("%.1f", 100.0 * mean_accuracy(r)));
      per_task.add_row(row);
      Cell const t = total(r);
      double const n = static_cast<double>(t.tally.total);
      cost.add_row({row[0], row[1], format("%.0f", t.kept_bytes / n), format("%.3f", t.kept_bytes / t.full_bytes),
                    format("%.2f", 1e3 * t.compress_seconds / n),
                    t.decode_tokens > 0 ? format("%.0f", static_cast<double>(t.decode_tokens) / t.decode_seconds) : "—"});
    }
    out.push_back("### Accuracy per task (%)\n\n" + per_task.str());
    double prefill_s = 0.0, tokens = 0.0, contexts = 0.0;
    for (auto const& g : groups_) {
      prefill_s += g.prefill_seconds;
      tokens += static_cast<double>(g.context_tokens);
      contexts += static_cast<double>(g.contexts);
    }
    out.push_back("### Cache and time (float32 KV; " + std::to_string(engine_.device().num_threads) +
                  " threads)\n\nPrefill, once per context: " + format("%.0f", 1e3 * prefill_s / contexts) +
                  " ms for " + format("%.0f", tokens / contexts) + " tokens on average (" +
                  format("%.0f", tokens / prefill_s) +
                  " tokens/s). Decode: single-token passes over the compressed caches while answering, up to " +
                  std::to_string(o_.decode_batch) +
                  " runs' answers in one batched pass (--decode-batch); a pass's time is shared among its answers.\n\n" +
                  cost.str());
    return out;
  }

  void write_csv(std::string const& path) const {
    std::ofstream f(path, std::ios::binary);
    KVC_CHECK(f.good(), "cannot write " << path);
    kvc_engine::CsvWriter csv(f, {"press", "ratio", "task", "length", "examples", "correct", "accuracy",
                                  "mean_accuracy_over_tasks", "kl_divergence", "kv_bytes_kept", "kv_bytes_full",
                                  "kv_fraction_kept", "prefill_ms", "compress_ms", "decode_tokens",
                                  "decode_tokens_per_s"});
    auto const num = [](double x) { return kvc_engine::csv_number(x); };
    for (auto const& p : o_.presses)
      for (double ratio : o_.ratios) {
        std::size_t const r = run_index(p, ratio);
        for (std::size_t g = 0; g < groups_.size(); ++g) {
          Cell const& c = cells_[r][g];
          double const n = static_cast<double>(c.tally.total);
          csv.row({p, ratio_text(ratio), groups_[g].task, std::to_string(groups_[g].length), std::to_string(c.tally.total),
                   std::to_string(c.tally.correct), num(accuracy(r, g)), num(mean_accuracy(r)), num(kl(r)),
                   kvc_engine::csv_number(c.kept_bytes / n, 12), kvc_engine::csv_number(c.full_bytes / n, 12),
                   num(c.kept_bytes / c.full_bytes),
                   num(1e3 * groups_[g].prefill_seconds / static_cast<double>(groups_[g].contexts)),
                   num(1e3 * c.compress_seconds / n), std::to_string(c.decode_tokens),
                   c.decode_tokens > 0 ? num(static_cast<double>(c.decode_tokens) / c.decode_seconds) : ""});
        }
      }
  }

  [[nodiscard]] std::vector<kvc_engine::PlotSeries> plot_series() const {
    std::vector<kvc_engine::PlotSeries> s;
    for (auto const& p : o_.presses) {
      s.push_back({p, {}});
      for (double r : o_.ratios) s.back().y.push_back(mean_accuracy(run_index(p, r)));
    }
    return s;
  }
  [[nodiscard]] double full_accuracy() const { return mean_accuracy(0); }
  [[nodiscard]] std::size_t runs() const { return runs_.size(); }
  [[nodiscard]] std::size_t contexts() const { return examples_.size() + heldout_.size(); }

  /// answers.jsonl: every example's answer under every run, one JSON object a line.
  void write_answers(std::string const& path) const {
    std::ofstream f(path);
    KVC_CHECK(f.good(), "cannot write " << path);
    for (auto const& a : answers_) f << a.dump() << "\n";
    KVC_CHECK(f.good(), "cannot write " << path);
  }

 private:
  [[nodiscard]] std::int64_t count(std::size_t g) const {
    return std::count_if(examples_.begin(), examples_.end(),
                         [&](TaskExample const& e) { return e.task == groups_[g].task && e.length == groups_[g].length; });
  }

  Options const& o_;
  kvc_engine::Model const& model_;
  kvc_engine::Tokenizer const* tokenizer_;
  Engine engine_;
  std::vector<TaskExample> examples_;
  std::vector<std::vector<std::int32_t>> heldout_;
  std::vector<Run> runs_;
  bool keep_hidden_states_ = false;  // some run's press reads the hidden states: the prefills keep them
  std::vector<Group> groups_;
  std::map<std::pair<std::string, std::int64_t>, std::size_t> group_of_;
  std::vector<std::vector<Cell>> cells_;  // [runs][groups]
  std::vector<double> kl_sum_;            // [runs]: sum over held-out texts of the mean KL per token
  std::vector<std::int64_t> kl_count_;    // [runs]: held-out texts measured (none for FINCH: no question)
  std::vector<nlohmann::json> answers_;   // one per example and run
};

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"kvcompress-eval: accuracy, KL divergence, cache bytes and timings of kvcompress's presses against "
               "the compression ratio, on a model and pre-tokenised tasks (default: the model the project ships)"};
  // An option given twice takes its last value, as in most command lines (scripts append overrides).
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.add_option("--model", o.model, "GGUF model file (.gguf) or HF checkpoint folder (config.json + *.safetensors)")->capture_default_str();
  app.add_option("--tasks", o.tasks, "task examples, JSON Lines {length, task, prompt, answer[, question]} "
                                     "(default: <model>/tasks.jsonl; for a .gguf model, tasks generated with its "
                                     "tokenizer: --task-names)");
  app.add_option("--heldout", o.heldout, "held-out text, JSON Lines {tokens} (default: <model>/heldout_text.jsonl; for "
                                         "a .gguf model, passages of the --prose text)");
  std::string task_help = "generated tasks (a .gguf model without --tasks), comma-separated, among:";
  for (auto const& n : kvc_engine::ruler_task_names()) task_help += " " + n;
  app.add_option("--task-names", o.task_names, task_help)->delimiter(',')->capture_default_str();
  app.add_option("--seed", o.seed, "generated tasks and held-out text: example i of a task and length draws "
                                   "seed * 1000000 + i")->capture_default_str();
  app.add_option("--prose", o.prose, "natural English text of the generated tasks and held-out text (gzip or plain; "
                                     "Debian's dict-devil)")->capture_default_str();
  app.add_option("--write-tasks", o.write_tasks, "write the selected examples (ids, texts, references) as JSON Lines "
                                                 "to this file and stop (tools/golden/generate_ruler.py reads them)");
  std::string press_help = "presses to evaluate, comma-separated, among:";
  for (auto const& n : kvc_engine::press_names()) press_help += " " + n;
  // `--ratios ""` reaches CLI11 as one empty value, which it would convert to 0: a full-cache-only run.
  CLI::Validator const not_empty(
      [](std::string& v) { return v.empty() ? std::string("an empty list; give at least one value, comma-separated") : ""; }, "");
  app.add_option("--presses", o.presses, press_help)->delimiter(',')->capture_default_str()->check(not_empty);
  app.add_option("--ratios", o.ratios, "compression ratios (fractions of the cache removed; 0 is the full cache)")
      ->delimiter(',')
      ->capture_default_str()
      ->check(not_empty);
  app.add_option("--lengths", o.lengths, "task context lengths to run")
      ->delimiter(',')
      ->capture_default_str()
      ->check(not_empty);
  app.add_option("--per-task", o.per_task, "examples per task and length (the first ones of the file)")
      ->capture_default_str();
  app.add_option("--kl-prefix", o.kl_prefix, "held-out tokens prefilled and compressed")->capture_default_str();
  app.add_option("--kl-tokens", o.kl_tokens, "held-out tokens then fed, at which the KL divergence is averaged")
      ->capture_default_str();
  app.add_option("--kl-lines", o.kl_lines, "held-out texts used (0: all; generated: 4)")->capture_default_str();
  app.add_option("--question-token", o.question_token,
                 "token (name in <model>/vocab.json, or id) where the question of a prompt without a \"question\" "
                 "field starts; the question is forwarded after compression (with --compress-questions it marks the "
                 "question inside the prompt: press finch's window)")
      ->capture_default_str();
  app.add_flag("--compress-questions", o.compress_questions,
               "compress the whole prompt, question included (kvpress's compress_questions; press finch needs it: its "
               "window is the question)");
  app.add_option("--threads", o.threads, "CPU threads (0: all)")->capture_default_str();
  app.add_option("--decode-batch", o.decode_batch,
                 "press × ratio runs whose answers decode together (one weight read per pass; each holds a cache copy)")
      ->capture_default_str();
  app.add_option("--out", o.out, "output folder")->capture_default_str();
  app.add_flag("--no-plot", o.no_plot, "do not write the gnuplot files nor accuracy.png");
  app.add_option("--lukv-curve", o.press_files.lukv_curve,
                 "LU-KV's budget curve [99, layers, kv_heads] (.npy) for the model and ExpectedAttention (press lukv)");
  app.add_option("--duo-pattern", o.press_files.duo_pattern,
                 "DuoAttention pattern folder (config.json with sink_size and recent_size, full_attention_heads.tsv) "
                 "for the model (press duo_attention; its ratio is the share of streaming heads)");
  app.add_option("--kvzip-prompt", o.kvzip_prompt,
                 "KVzip's reconstruction prompt as the model's token ids, JSON {prompt_first, prompt_later, suffix[, "
                 "prefix_length]} (press kvzip on a model without a tokenizer the engine reads; a .gguf model's "
                 "tokenizer and chat format write it otherwise)");
  app.add_option("--kvzap-weights", o.kvzap_weights,
                 "KVzap's surrogates for the model: kvpress's KVzapModel safetensors (linear or mlp; press kvzap)");
  app.add_option("--fast-kvzip-weights", o.fast_kvzip_weights,
                 "FastKVzip's gates for the model: kvpress's FastKVzipGate state dicts as one safetensors file, tensors "
                 "<layer>.<name> (press fast_kvzip)");
  CLI11_PARSE(app, argc, argv);

  try {
    auto const start = std::chrono::steady_clock::now();
    validate(o);
    // A GGUF file's tokenizer generates the tasks and held-out text and decodes answers scored by text.
    std::optional<kvc_engine::Tokenizer> tokenizer;
    if (fs::is_regular_file(o.model))
      tokenizer.emplace(kvc_engine::tokenizer_model_from_gguf(kvc_engine::GgufFile::open(o.model)));
    std::optional<kvc_engine::ProseCorpus> prose;
    std::optional<kvc_engine::RulerTaskGenerator> generator;
    std::vector<kvc_engine::RulerPrompt> prompts;
    if (o.generate_tasks || o.generate_heldout) {
      prose.emplace(kvc_engine::load_prose_corpus(o.prose));
      generator.emplace(*tokenizer, chat_format_of(*tokenizer), *prose);
    }
    if (o.generate_tasks) prompts = generate_prompts(o, *generator);
    if (!o.write_tasks.empty()) {
      KVC_CHECK(o.generate_tasks, "--write-tasks writes generated tasks: give a .gguf --model and no --tasks");
      write_prompts(o.write_tasks, prompts, o.compress_questions);
      std::fprintf(stderr, "wrote %zu examples to %s\n", prompts.size(), o.write_tasks.c_str());
      return 0;
    }
    kvc_engine::Model const model = kvc_engine::load_model(o.model);
    std::int64_t const vocab = model.config.vocab_size;
    std::vector<TaskExample> examples;
    if (o.generate_tasks) {
      for (std::size_t i = 0; i < prompts.size(); ++i) examples.push_back(to_example(prompts[i], i, vocab));
    } else {
      examples = kvc_engine::select_examples(kvc_engine::read_task_file(o.tasks, vocab, question_rule(o, vocab)), o.lengths, o.per_task);
    }
    for (auto const& ex : examples)
      KVC_CHECK(ex.references.empty() || tokenizer, ex.source << " is scored by text (\"references\"): that needs the "
                                                                 "tokenizer of a .gguf --model");
    std::vector<std::vector<std::int32_t>> heldout =
        o.generate_heldout ? generator->heldout(o.kl_lines > 0 ? o.kl_lines : 4, o.kl_prefix + o.kl_tokens, o.seed)
                           : kvc_engine::read_heldout_file(o.heldout, vocab, o.kl_prefix + o.kl_tokens);
    std::int64_t const max_positions = model.config.max_position_embeddings;
    kvc_engine::check_positions(examples, max_positions);
    KVC_CHECK(max_positions <= 0 || o.kl_prefix + o.kl_tokens <= max_positions,
              "--kl-prefix " << o.kl_prefix << " + --kl-tokens " << o.kl_tokens
                             << " held-out positions exceed the model's max_position_embeddings = " << max_positions);
    if (std::string const warning = kvc_engine::length_warning(examples); !warning.empty())
      std::fprintf(stderr, "kvcompress-eval: warning: %s\n", warning.c_str());
    if (o.kl_lines > 0 && static_cast<std::int64_t>(heldout.size()) > o.kl_lines)
      heldout.resize(static_cast<std::size_t>(o.kl_lines));
    std::error_code ec;
    fs::create_directories(o.out, ec);
    KVC_CHECK(!ec && fs::is_directory(o.out), "--out: cannot create the folder " << o.out << ": " << ec.message());

    kvzip_prompt_for(o, tokenizer ? &*tokenizer : nullptr, vocab);
    if (!o.kvzap_weights.empty()) o.press_files.kvzap = kvc_engine::load_kvzap_for(o.kvzap_weights, model.config);
    if (!o.fast_kvzip_weights.empty())
      o.press_files.fast_kvzip = kvc_engine::load_fast_kvzip_for(o.fast_kvzip_weights, model.config);
    Evaluation eval(o, model, tokenizer ? &*tokenizer : nullptr, std::move(examples), std::move(heldout));
    std::fprintf(stderr, "kvcompress-eval: %zu contexts (tasks and held-out texts), each prefilled once and run %zu ways\n",
                 eval.contexts(), eval.runs());
    eval.run();
    std::vector<std::string> const tables = eval.tables();
    double const wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

    std::string command;
    for (int i = 0; i < argc; ++i) command += (i ? " " : "") + shell_word(argv[i]);
    std::time_t const now = std::time(nullptr);
    char date[64];
    std::strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
    kvc_engine::ModelConfig const& c = model.config;
    std::ostringstream md;
    md << "# kvcompress-eval results\n\n"
       << "- command: `" << command << "`\n"
       << "- model: `" << o.model << "` (" << c.model_type << ", " << c.num_layers << " layers, hidden " << c.hidden_size
       << ", " << c.num_heads << " heads, " << c.num_kv_heads << " KV heads, head_dim " << c.head_dim << ", vocab "
       << c.vocab_size << ")\n"
       << "- tasks: "
       << (o.generate_tasks ? "generated (kvc_engine/tasks/ruler_tasks.hpp), seed " + std::to_string(o.seed) + ", prose `" + o.prose + "`"
                            : "`" + o.tasks + "`")
       << "; held-out text: " << (o.generate_heldout ? "passages of the prose" : "`" + o.heldout + "`") << "\n"
       << "- questions: " << (o.compress_questions ? "compressed with the context" : "forwarded after compression")
       << "\n- date: " << date << "; wall time " << kvc_engine::ProgressBar::clock_time(wall) << "\n";
    for (auto const& t : tables) md << "\n" << t;
    std::string const md_path = (fs::path(o.out) / "results.md").string(), csv_path = (fs::path(o.out) / "results.csv").string();
    {
      std::ofstream f(md_path);
      KVC_CHECK(f.good(), "cannot write " << md_path);
      f << md.str();
    }
    eval.write_csv(csv_path);
    eval.write_answers((fs::path(o.out) / "answers.jsonl").string());
    std::fprintf(stderr, "wrote %s and %s\n", csv_path.c_str(), md_path.c_str());
    if (!o.no_plot &&
        kvc_engine::write_accuracy_plot(o.out, o.ratios, eval.plot_series(), eval.full_accuracy(),
                                        "kvcompress-eval: " + model_name(o.model)))
      std::fprintf(stderr, "wrote %s\n", (fs::path(o.out) / "accuracy.png").string().c_str());
    std::fprintf(stderr, "wall time %s\n\n", kvc_engine::ProgressBar::clock_time(wall).c_str());
    // The headline table last, so that a terminal ends on it.
    for (std::size_t i : {2, 3, 1, 0}) std::printf("%s%s", tables[i].c_str(), i ? "\n" : "");
    return 0;
  } catch (std::exception const& e) {
    std::fprintf(stderr, "kvcompress-eval: %s\n", e.what());
    return 1;
  }
}
