#pragma once
/// \file
/// \brief RULER-style long-context tasks generated for a model with its own tokenizer and chat format, at
/// any length in tokens, from a seed: needle-in-a-haystack (single, multi-key, multi-value, multi-query;
/// on RULER's noise haystack "The grass is green. ..." or on natural prose), variable tracking, common-
/// and frequent-word extraction, and a question answered from dictionary entries (`ruler_task_names`).
///
/// A prompt is split as kvpress's pipeline splits it: the chat template is applied to the task's text
/// (instruction and haystack) with the generation prompt, the part before the end of the user message is
/// the context (prefilled and compressed), and the question, the template's tail and the answer prefix
/// are forwarded after compression. With `question_in_context` the question sits inside the user message
/// (kvpress's `compress_questions`): only the template's tail and the answer prefix come after. The
/// prompt's length — context and question tokens — is at most the target and short of it by less than
/// one haystack unit (a noise block, a word, a list item, a document). An answer is right when every
/// reference string occurs in the decoded output, case-insensitively (`references_found`).

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kvc_engine/tokenizer/chat_format.hpp"
#include "kvc_engine/tasks/prose_corpus.hpp"
#include "kvc_engine/tokenizer/tokenizer.hpp"
#include "kvcompress/core/error.hpp"

namespace kvc_engine {

/// \brief One generated example: texts (for a reader and for other tokenizers) and ids (this model's).
struct RulerPrompt {
  std::string task;
  std::int64_t length = 0;         ///< the target length in tokens
  std::string context_text;        ///< prefilled and compressed (chat template's head included)
  std::string question_text;       ///< forwarded after compression (template's tail and answer prefix included)
  std::vector<std::int32_t> context, question;
  /// With the question inside the context: its tokens at the context's end (the context's ids less those of
  /// the context text without the question). 0 otherwise.
  std::int64_t question_tokens_in_context = 0;
  std::vector<std::string> references;  ///< all must occur in the output
  std::int64_t max_new_tokens = 0;      ///< greedy decoding stops there or at the end-of-turn token
};

[[nodiscard]] inline std::vector<std::string> ruler_task_names() {
  return {"niah_single_1", "niah_single_2", "niah_multikey_1", "niah_multivalue", "niah_multiquery",
          "vt",            "cwe",           "fwe",             "qa"};
}

/// \brief True when every reference occurs in `output`, ignoring ASCII case (RULER's string match; RULER
/// gives partial credit for a part of the references, here an example is right or wrong).
[[nodiscard]] inline bool references_found(std::string const& output, std::vector<std::string> const& references) {
  auto lower = [](std::string s) {
    for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
  };
  std::string const out = lower(output);
  return std::all_of(references.begin(), references.end(),
                     [&](std::string const& r) { return out.find(lower(r)) != std::string::npos; });
}

namespace detail {

/// Seeded draws, identical on every platform (the standard distributions are implementation-defined).
class TaskRng {
 public:
  explicit TaskRng(std::uint64_t seed) : engine_(seed) {}
  /// Uniform in [0, n), by rejection.
  std::uint64_t below(std::uint64_t n) {
    KVC_CHECK(n > 0, "TaskRng::below(0)");
    std::uint64_t const limit = ~std::uint64_t{0} - (~std::uint64_t{0} % n);
    for (;;) {
      std::uint64_t const x = engine_();
      if (x < limit) return x % n;
    }
  }
  double uniform() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }
  template <class T>
  void shuffle(std::vector<T>& v) {
    for (std::size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[below(i)]);
  }
  std::uint64_t next() { return engine_(); }

 private:
  std::mt19937_64 engine_;
};

/// A task before its haystack is sized: `build(n)` is the instruction and haystack with n units.
struct TaskDraft {
  std::function<std::string(std::int64_t)> build;
  std::string question;       ///< the question sentence
  std::string answer_prefix;  ///< what the assistant's answer starts with
  std::vector<std::string> references;
  /// when set, the references depend on the haystack's size: those of `build(n)`
  std::function<std::vector<std::string>(std::int64_t)> references_at;
  std::int64_t max_new_tokens = 0;
};

/// FNV-1a: the task's name mixed into the seed, the same on every platform (std::hash is not).
inline std::uint64_t fnv1a(std::string const& s) {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (char c : s) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ULL;
  return h;
}

inline std::string join_keys(std::vector<std::string> const& keys) {
  std::string s;
  for (std::size_t i = 0; i < keys.size(); ++i)
    s += (i == 0 ? "" : keys.size() == 2 ? " and " : i + 1 == keys.size() ? ", and " : ", ") + keys[i];
  return s;
}

inline constexpr char const* kNoise = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";

}  // namespace detail

class RulerTaskGenerator {
 public:
  /// \param chat the model's chat format; none: the prompt is the plain text (after BOS if the tokenizer
  ///             adds one) and the question follows after a newline, as kvpress does without a template
  RulerTaskGenerator(Tokenizer const& tokenizer, std::optional<ChatFormat> chat, ProseCorpus const& prose)
      : tok_(tokenizer), chat_(std::move(chat)), prose_(prose) {
    KVC_CHECK(prose_.words.size() >= 200, "--prose: " << prose_.source << " has " << prose_.words.size()
                                                       << " distinct words of 4-9 letters, fewer than the 200 "
                                                          "the tasks draw keys and lists from");
    for (std::size_t p = 0; p < prose_.paragraphs.size(); ++p) {
      std::string const& text = prose_.paragraphs[p];
      std::size_t start = 0;
      while (start < text.size()) {
        std::size_t end = text.find(' ', start);
        if (end == std::string::npos) end = text.size();
        if (end > start) words_.push_back({text.substr(start, end - start), false});
        start = end + 1;
      }
      if (!words_.empty()) words_.back().second = true;  // paragraph ends after it
    }
    for (auto const& e : prose_.entries) {
      std::string const first = first_sentence(e.definition);
      std::int64_t const n_words = std::count(first.begin(), first.end(), ' ') + 1;
      std::int64_t const all_words = std::count(e.definition.begin(), e.definition.end(), ' ') + 1;
      std::string const head = lower(e.headword);
      bool const one_word = std::all_of(head.begin(), head.end(), [](char c) { return std::islower(static_cast<unsigned char>(c)); });
      if (one_word && n_words >= 5 && n_words <= 40 && all_words <= 120 && lower(first).find(head) == std::string::npos)
        qa_entries_.push_back(&e);
    }
  }

  /// \brief The example `task` at `length` tokens for `seed` (same inputs, same example).
  [[nodiscard]] RulerPrompt generate(std::string const& task, std::int64_t length, std::uint64_t seed,
                                     bool question_in_context) const {
    KVC_CHECK(length > 0, "task length must be positive, got " << length);
    detail::TaskRng rng(seed ^ detail::fnv1a(task));
    detail::TaskDraft d = draft(task, length, rng);
    auto assemble = [&](std::int64_t n) { return render(task, length, d, d.build(n), question_in_context); };
    RulerPrompt const empty = assemble(0);
    KVC_CHECK(tokens(empty) <= length, "task " << task << ": " << length << " tokens cannot hold it: without any "
                                                << "haystack its prompt already takes " << tokens(empty) << " tokens");
    // The largest haystack whose prompt fits: prompt tokens grow with the units (a unit adds at least one
    // token), so a bisection over [0, length] finds it.
    std::int64_t lo = 0, hi = length;
    while (lo < hi) {
      std::int64_t const mid = lo + (hi - lo + 1) / 2;
      if (tokens(assemble(mid)) <= length)
        lo = mid;
      else
        hi = mid - 1;
    }
    RulerPrompt out = assemble(lo);
    out.references = d.references_at ? d.references_at(lo) : d.references;
    out.max_new_tokens = d.max_new_tokens;
    return out;
  }

  /// \brief `count` natural-text passages of exactly `tokens` tokens (plain text, no template), each from
  /// a paragraph drawn with `seed`: the held-out text of the KL divergence.
  [[nodiscard]] std::vector<std::vector<std::int32_t>> heldout(std::int64_t count, std::int64_t tokens,
                                                               std::uint64_t seed) const {
    KVC_CHECK(count > 0 && tokens > 0, "held-out text: count and tokens must be positive, got " << count << " and " << tokens);
    detail::TaskRng rng(seed);
    std::vector<std::vector<std::int32_t>> out;
    for (std::int64_t i = 0; i < count; ++i) {
      std::size_t p = static_cast<std::size_t>(rng.below(prose_.paragraphs.size()));
      std::string text;
      std::vector<std::int32_t> ids;
      for (std::size_t seen = 0; static_cast<std::int64_t>(ids.size()) < tokens; ++seen) {
        KVC_CHECK(seen < prose_.paragraphs.size(), "--prose: " << prose_.source << " holds fewer than " << tokens << " tokens");
        text += (text.empty() ? "" : "\n") + prose_.paragraphs[p];
        p = (p + 1) % prose_.paragraphs.size();
        ids = tok_.encode(text);
      }
      ids.resize(static_cast<std::size_t>(tokens));
      out.push_back(std::move(ids));
    }
    return out;
  }

 private:
  using Word = std::pair<std::string, bool>;  // the word, and whether its paragraph ends after it

  static std::string lower(std::string s) {
    for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
  }
  static std::string first_sentence(std::string const& s) {
    std::size_t best = std::string::npos;
    for (char const* end : {". ", "? ", "! "}) best = std::min(best, s.find(end));
    return best == std::string::npos ? s : s.substr(0, best + 1);
  }
  static std::int64_t tokens(RulerPrompt const& p) { return static_cast<std::int64_t>(p.context.size() + p.question.size()); }

  [[nodiscard]] RulerPrompt render(std::string const& task, std::int64_t length, detail::TaskDraft const& d,
                                   std::string const& body, bool question_in_context) const {
    RulerPrompt p;
    p.task = task;
    p.length = length;
    std::string const user = question_in_context ? body + d.question : body;
    std::string const asked = question_in_context ? "" : d.question;
    if (chat_) {
      // The user message ends where this marker starts (longer than the message, so it cannot occur in it):
      // what the template writes after it is the tail.
      std::string const marker(user.size() + 10, '#');
      std::string const rendered = chat_->apply({{"user", user + marker}}, /*add_generation_prompt=*/true);
      std::size_t const at = rendered.find(marker);
      p.context_text = rendered.substr(0, at);
      p.question_text = asked + rendered.substr(at + marker.size()) + d.answer_prefix;
      p.context = tok_.encode(p.context_text, /*add_bos_eos=*/false);
      if (question_in_context)
        p.question_tokens_in_context = static_cast<std::int64_t>(p.context.size()) -
            static_cast<std::int64_t>(tok_.encode(p.context_text.substr(0, p.context_text.size() - d.question.size()), false).size());
    } else {
      p.context_text = user;
      p.question_text = asked + "\n" + d.answer_prefix;
      p.context = tok_.encode(p.context_text, /*add_bos_eos=*/true);
      if (question_in_context)
        p.question_tokens_in_context = static_cast<std::int64_t>(p.context.size()) - static_cast<std::int64_t>(tok_.encode(body, true).size());
    }
    p.question = tok_.encode(p.question_text, /*add_bos_eos=*/false);
    return p;
  }

  /// `n` distinct words of the corpus vocabulary, drawn.
  std::vector<std::string> draw_words(std::size_t n, detail::TaskRng& rng) const {
    std::vector<std::string> pool = prose_.words;
    rng.shuffle(pool);
    pool.resize(std::min(n, pool.size()));
    return pool;
  }
  static std::string number7(detail::TaskRng& rng) { return std::to_string(1000000 + rng.below(9000000)); }

  /// The haystack of n units with `needles` inserted at their depths (fractions in [0, 1)): n noise blocks,
  /// or n prose words from `start` (a needle goes after the sentence end before its depth).
  std::string haystack(bool noise, std::int64_t n, std::size_t start,
                       std::vector<std::pair<double, std::string>> const& needles) const {
    std::vector<std::pair<std::int64_t, std::string const*>> at;  // unit index before which a needle goes
    std::vector<std::string> units;
    units.reserve(static_cast<std::size_t>(n));
    std::vector<bool> breaks;
    for (std::int64_t i = 0; i < n; ++i) {
      if (noise) {
        units.emplace_back(detail::kNoise);
        breaks.push_back(false);
      } else {
        Word const& w = words_[(start + static_cast<std::size_t>(i)) % words_.size()];
        units.push_back(w.first);
        breaks.push_back(w.second);
      }
    }
    for (auto const& [depth, text] : needles) {
      std::int64_t pos = static_cast<std::int64_t>(depth * static_cast<double>(n));
      if (!noise)
        while (pos > 0 && !(units[static_cast<std::size_t>(pos - 1)].back() == '.' || breaks[static_cast<std::size_t>(pos - 1)]))
          --pos;
      at.emplace_back(pos, &text);
    }
    std::stable_sort(at.begin(), at.end(), [](auto const& a, auto const& b) { return a.first < b.first; });
    std::string out;
    std::size_t next = 0;
    for (std::int64_t i = 0; i <= n; ++i) {
      while (next < at.size() && at[next].first == i) {
        out += (out.empty() ? "" : " ") + *at[next].second;
        ++next;
      }
      if (i == n) break;
      bool const after_break = i > 0 && breaks[static_cast<std::size_t>(i - 1)];
      out += (out.empty() ? "" : after_break ? "\n" : " ") + units[static_cast<std::size_t>(i)];
    }
    return out;
  }

  [[nodiscard]] detail::TaskDraft draft(std::string const& task, std::int64_t length, detail::TaskRng& rng) const {
    struct Niah {
      bool noise;
      int keys, values, queries;
    };
    std::map<std::string, Niah> const niah{{"niah_single_1", {true, 1, 1, 1}},   {"niah_single_2", {false, 1, 1, 1}},
                                           {"niah_multikey_1", {false, 4, 1, 1}}, {"niah_multivalue", {false, 1, 4, 1}},
                                           {"niah_multiquery", {false, 4, 1, 4}}};
    detail::TaskDraft d;
    if (auto const it = niah.find(task); it != niah.end()) {
      Niah const& s = it->second;
      std::vector<std::string> const words = draw_words(static_cast<std::size_t>(2 * s.keys), rng);
      std::vector<std::string> keys;
      for (int k = 0; k < s.keys; ++k) keys.push_back(words[static_cast<std::size_t>(2 * k)] + "-" + words[static_cast<std::size_t>(2 * k + 1)]);
      std::vector<std::pair<double, std::string>> needles;
      for (int k = 0; k < s.keys; ++k)
        for (int v = 0; v < s.values; ++v) {
          std::string const value = number7(rng);
          needles.emplace_back(rng.uniform(), "One of the special magic numbers for " + keys[static_cast<std::size_t>(k)] + " is: " + value + ".");
          if (k < s.queries) d.references.push_back(value);
        }
      std::size_t const start = static_cast<std::size_t>(rng.below(words_.size()));
      std::vector<std::string> const asked(keys.begin(), keys.begin() + s.queries);
      d.build = [this, noise = s.noise, start, needles](std::int64_t n) {
        return "Some special magic numbers are hidden within the following text. Make sure to memorize it. I will "
               "quiz you about the numbers afterwards.\n" +
               haystack(noise, n, start, needles) + "\n";
      };
      d.question = "What are all the special magic numbers for " + detail::join_keys(asked) + " mentioned in the provided text?";
      d.answer_prefix = " The special magic numbers for " + detail::join_keys(asked) + " mentioned in the provided text are";
      d.max_new_tokens = 4 + 10 * static_cast<std::int64_t>(d.references.size());
      return d;
    }
    if (task == "vt") {  // one chain of four hops: VAR A = value, VAR B = VAR A, ...
      std::vector<std::string> names;
      while (names.size() < 5) {
        std::string n;
        for (int i = 0; i < 5; ++i) n += static_cast<char>('A' + rng.below(26));
        if (std::find(names.begin(), names.end(), n) == names.end()) names.push_back(n);
      }
      std::string const value = std::to_string(10000 + rng.below(90000));
      std::vector<double> depths;
      for (int i = 0; i < 5; ++i) depths.push_back(rng.uniform());
      std::sort(depths.begin(), depths.end());  // the chain in order
      std::vector<std::pair<double, std::string>> needles;
      for (std::size_t i = 0; i < 5; ++i)
        needles.emplace_back(depths[i], "VAR " + names[i] + " = " + (i == 0 ? value : "VAR " + names[i - 1]) + ".");
      d.build = [this, needles](std::int64_t n) {
        return "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n" +
               haystack(true, n, 0, needles) + "\n";
      };
      d.question = "Question: Find all variables that are assigned the value " + value + " in the text above.";
      d.answer_prefix = " Answer: According to the chain(s) of variable assignment in the text above, 5 variables are "
                        "assigned the value " + value + ", they are:";
      d.references = names;
      d.max_new_tokens = 30;
      return d;
    }
    if (task == "cwe") {  // 10 words `common` times each, the others 3 times, in a shuffled numbered list
      std::int64_t const common = std::clamp<std::int64_t>(length / 100, 4, 30);
      std::vector<std::string> const words = draw_words(prose_.words.size(), rng);
      std::uint64_t const order_seed = rng.next();
      std::vector<std::string> const top(words.begin(), words.begin() + 10);
      d.build = [words, common, order_seed](std::int64_t n) {
        std::vector<std::string const*> items;
        for (std::size_t w = 0; w < 10; ++w)
          for (std::int64_t c = 0; c < common; ++c) items.push_back(&words[w]);
        std::int64_t const rare = std::min<std::int64_t>(n, static_cast<std::int64_t>(words.size()) - 10);
        for (std::int64_t w = 0; w < rare; ++w)
          for (int c = 0; c < 3; ++c) items.push_back(&words[static_cast<std::size_t>(10 + w)]);
        detail::TaskRng order(order_seed ^ static_cast<std::uint64_t>(n));
        order.shuffle(items);
        std::string out = "Below is a numbered list of words. In these words, some appear more often than others. "
                          "Memorize the ones that appear most often.\n";
        for (std::size_t i = 0; i < items.size(); ++i) out += std::to_string(i + 1) + ". " + *items[i] + "\n";
        return out;
      };
      d.question = "Question: What are the 10 most common words in the above list?";
      d.answer_prefix = " Answer: The top 10 words that appear most often in the list are:";
      d.references = top;
      d.max_new_tokens = 50;
      return d;
    }
    if (task == "fwe") {  // coded words drawn with Zipf's law (exponent 2): name the three most frequent
      std::vector<std::string> vocab;
      while (vocab.size() < 500) {
        std::string w;
        std::uint64_t const len = 3 + rng.below(4);
        for (std::uint64_t i = 0; i < len; ++i) w += static_cast<char>('a' + rng.below(26));
        if (std::find(vocab.begin(), vocab.end(), w) == vocab.end()) vocab.push_back(w);
      }
      std::vector<double> cdf;
      double total = 0.0;
      for (std::size_t r = 1; r <= vocab.size(); ++r) cdf.push_back(total += 1.0 / static_cast<double>(r * r));
      auto sequence = std::make_shared<std::vector<std::size_t>>();
      for (std::int64_t i = 0; i < length; ++i)
        sequence->push_back(static_cast<std::size_t>(std::upper_bound(cdf.begin(), cdf.end(), rng.uniform() * total) - cdf.begin()));
      d.build = [vocab, sequence](std::int64_t n) {
        std::string out = "Read the following coded text and track the frequency of each coded word. Find the three "
                          "most frequently appeared coded words.\n";
        for (std::int64_t i = 0; i < n; ++i) out += (i ? " " : "") + vocab[(*sequence)[static_cast<std::size_t>(i)]];
        return out + "\n";
      };
      d.question = "Question: What are the three most frequently appeared words in the above coded text?";
      d.answer_prefix = " Answer: According to the coded text above, the three most frequently appeared words are:";
      // Ranks 1–3 of Zipf's law with exponent 2 occur about 61, 15 and 7 % of the time, rank 4 4 %; the
      // references are the three most frequent of the list as drawn (a tie goes to the lower rank).
      d.references_at = [vocab, sequence](std::int64_t n) {
        std::vector<std::int64_t> count(vocab.size(), 0);
        for (std::int64_t i = 0; i < n; ++i) ++count[(*sequence)[static_cast<std::size_t>(i)]];
        std::vector<std::size_t> rank(vocab.size());
        for (std::size_t r = 0; r < rank.size(); ++r) rank[r] = r;
        std::stable_sort(rank.begin(), rank.end(), [&](std::size_t a, std::size_t b) { return count[a] > count[b]; });
        return std::vector<std::string>{vocab[rank[0]], vocab[rank[1]], vocab[rank[2]]};
      };
      d.max_new_tokens = 16;
      return d;
    }
    if (task == "qa") {  // documents are dictionary entries; which word is defined by this sentence?
      KVC_CHECK(qa_entries_.size() >= 50, "task qa: --prose " << prose_.source << " has " << qa_entries_.size()
                                                               << " usable dictionary entries, fewer than 50");
      std::vector<ProseEntry const*> docs = qa_entries_;
      rng.shuffle(docs);
      double const depth = rng.uniform();
      ProseEntry const* target = docs.front();
      d.build = [docs, depth](std::int64_t n) {
        std::int64_t const count = std::min<std::int64_t>(std::max<std::int64_t>(n, 1), static_cast<std::int64_t>(docs.size()));
        std::vector<ProseEntry const*> shown(docs.begin() + 1, docs.begin() + count);
        shown.insert(shown.begin() + static_cast<std::ptrdiff_t>(depth * static_cast<double>(count)), docs.front());
        std::string out = "Answer the question based on the given documents. Only give me the answer and do not output "
                          "any other words.\n\nThe following are given documents.\n\n";
        for (std::size_t i = 0; i < shown.size(); ++i)
          out += "Document " + std::to_string(i + 1) + ":\n" + shown[i]->headword + ": " + shown[i]->definition + "\n\n";
        return out;
      };
      d.question = "Answer the question based on the given documents. Only give me the answer and do not output any "
                   "other words.\n\nQuestion: Which word do the documents define as \"" +
                   first_sentence(target->definition) + "\"?";
      d.answer_prefix = " Answer:";
      d.references = {lower(target->headword)};
      d.max_new_tokens = 8;
      return d;
    }
    std::string known;
    for (auto const& n : ruler_task_names()) known += (known.empty() ? "" : ", ") + n;
    KVC_THROW("unknown task '" << task << "' (known: " << known << ")");
  }

  Tokenizer const& tok_;
  std::optional<ChatFormat> chat_;
  ProseCorpus const& prose_;
  std::vector<Word> words_;                     // the prose as words, in order
  std::vector<ProseEntry const*> qa_entries_;  // entries the QA task can ask about
};

}  // namespace kvc_engine
