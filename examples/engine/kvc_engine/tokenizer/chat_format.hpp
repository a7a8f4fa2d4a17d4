#pragma once
/// \file
/// \brief `ChatFormat`: a conversation rendered as the model's chat template renders it, for the three
/// template families the engine recognises in a GGUF's `tokenizer.chat_template` (Jinja source). The
/// engine does not run Jinja: it recognises the family by its markers and renders it in C++.
///
/// - ChatML (SmolLM2, Qwen2, OpenHermes): `<|im_start|>{role}\n{content}<|im_end|>\n` per message;
///   the generation prompt is `<|im_start|>assistant\n`. A template whose literal text holds a default
///   system message (SmolLM2's "You are a helpful AI assistant named SmolLM, ...") puts it first when the
///   conversation does not start with a system message.
/// - Llama 3: BOS, then `<|start_header_id|>{role}<|end_header_id|>\n\n{content, trimmed}<|eot_id|>`;
///   the generation prompt is `<|start_header_id|>assistant<|end_header_id|>\n\n`. Llama 3.1's template
///   (recognised by its "Cutting Knowledge Date" line) always opens with a system block holding that date
///   preamble (the template's default date, 26 Jul 2024) and the system message; tools are not rendered.
/// - Mistral (`[INST]`, v0.1 / Mixtral style): BOS, `[INST] {user} [/INST]{assistant}</s>` with the
///   template's optional space after `</s>`; roles must alternate user / assistant and a system message
///   is refused, as those templates refuse them.
///
/// Any other template is an error that says which families are known and shows the template's start.

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "kvcompress/core/error.hpp"

namespace kvc_engine {

/// \brief One message of a conversation.
struct ChatMessage {
  std::string role;  // "system", "user", "assistant", ...
  std::string content;
};

enum class ChatStyle { kChatMl, kLlama3, kMistral };

class ChatFormat {
 public:
  /// \brief Recognises `jinja` (a GGUF's tokenizer.chat_template); `bos` and `eos` are the texts of the
  /// model's BOS and EOS tokens, which Llama 3 and Mistral templates write. Throws when the template is
  /// empty or of no known family.
  [[nodiscard]] static ChatFormat from_template(std::string const& jinja, std::string bos, std::string eos) {
    ChatFormat f;
    f.bos_ = std::move(bos);
    f.eos_ = std::move(eos);
    KVC_CHECK(!jinja.empty(), "the model has no tokenizer.chat_template: no chat format to apply");
    if (contains(jinja, "<|im_start|>") && contains(jinja, "<|im_end|>")) {
      f.style_ = ChatStyle::kChatMl;
      f.default_system_ = chatml_default_system(jinja);
    } else if (contains(jinja, "<|start_header_id|>") && contains(jinja, "<|eot_id|>")) {
      f.style_ = ChatStyle::kLlama3;
      f.llama31_date_ = contains(jinja, "Cutting Knowledge Date");
    } else if (contains(jinja, "[INST]") && contains(jinja, "[/INST]") && !contains(jinja, "<<SYS>>")) {
      f.style_ = ChatStyle::kMistral;
      f.space_after_eos_ = contains(jinja, "eos_token + ' '");
    } else {
      KVC_THROW(
          "tokenizer.chat_template is not a chat format this engine knows (ChatML, Llama 3, Mistral [INST]); "
          "it begins: '"
          << jinja.substr(0, 120) << (jinja.size() > 120 ? "...'" : "'"));
    }
    return f;
  }

  [[nodiscard]] ChatStyle style() const noexcept { return style_; }
  [[nodiscard]] char const* name() const noexcept {
    switch (style_) {
      case ChatStyle::kChatMl:
        return "ChatML";
      case ChatStyle::kLlama3:
        return llama31_date_ ? "Llama 3.1" : "Llama 3";
      case ChatStyle::kMistral:
        return "Mistral";
    }
    return "?";
  }
  /// \brief The system message a ChatML template adds on its own (empty: none).
  [[nodiscard]] std::string const& default_system() const noexcept { return default_system_; }

  /// \brief The conversation as text, ending with the assistant's turn header when
  /// `add_generation_prompt`. Special tokens appear as their text: encode with parse_special on.
  [[nodiscard]] std::string apply(std::vector<ChatMessage> const& messages, bool add_generation_prompt) const {
    switch (style_) {
      case ChatStyle::kChatMl:
        return chatml(messages, add_generation_prompt);
      case ChatStyle::kLlama3:
        return llama3(messages, add_generation_prompt);
      case ChatStyle::kMistral:
        return mistral(messages);
    }
    return {};
  }

 private:
  static bool contains(std::string const& s, char const* what) { return s.find(what) != std::string::npos; }

  /// The literal text of `<|im_start|>system\n…<|im_end|>` in the template, when it is a plain string
  /// (no quote, brace or `+`, which would mean an expression such as messages[0]['content']).
  static std::string chatml_default_system(std::string const& jinja) {
    std::string const open = "<|im_start|>system";
    for (std::size_t at = jinja.find(open); at != std::string::npos; at = jinja.find(open, at + 1)) {
      std::size_t begin = at + open.size();
      if (jinja.compare(begin, 1, "\n") == 0) {
        begin += 1;
      } else if (jinja.compare(begin, 2, "\\n") == 0) {
        begin += 2;
      } else {
        continue;
      }
      std::size_t const end = jinja.find("<|im_end|>", begin);
      if (end == std::string::npos) continue;
      std::string_view const text(jinja.data() + begin, end - begin);
      if (text.empty() || text.find_first_of("'\"{}+") != std::string_view::npos) continue;
      std::string out;  // a Jinja string literal may spell the newline as \n
      for (std::size_t i = 0; i < text.size(); ++i) {
        if (text[i] == '\\' && i + 1 < text.size() && text[i + 1] == 'n') {
          out += '\n';
          ++i;
        } else {
          out += text[i];
        }
      }
      return out;
    }
    return {};
  }

  static std::string trim(std::string const& s) {
    char const* const space = " \t\n\r\f\v";
    std::size_t const first = s.find_first_not_of(space);
    if (first == std::string::npos) return {};
    return s.substr(first, s.find_last_not_of(space) - first + 1);
  }

  std::string chatml(std::vector<ChatMessage> const& messages, bool add_generation_prompt) const {
    std::string out;
    if (!messages.empty() && messages.front().role != "system" && !default_system_.empty()) {
      out += "<|im_start|>system\n" + default_system_ + "<|im_end|>\n";
    }
    for (ChatMessage const& m : messages) out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
    if (add_generation_prompt) out += "<|im_start|>assistant\n";
    return out;
  }

  std::string llama3(std::vector<ChatMessage> const& messages, bool add_generation_prompt) const {
    auto const block = [](std::string const& role, std::string const& content) {
      return "<|start_header_id|>" + role + "<|end_header_id|>\n\n" + content + "<|eot_id|>";
    };
    std::string out;
    std::size_t first = 0;
    if (llama31_date_) {
      out += bos_;
      std::string system;
      if (!messages.empty() && messages.front().role == "system") {
        system = trim(messages.front().content);
        first = 1;
      }
      out += block("system", "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n" + system);
    } else if (!messages.empty()) {
      out += bos_;
    }
    for (std::size_t i = first; i < messages.size(); ++i) out += block(messages[i].role, trim(messages[i].content));
    if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
    return out;
  }

  std::string mistral(std::vector<ChatMessage> const& messages) const {
    std::string out = bos_;
    for (std::size_t i = 0; i < messages.size(); ++i) {
      ChatMessage const& m = messages[i];
      bool const user_turn = i % 2 == 0;
      KVC_CHECK(m.role == (user_turn ? "user" : "assistant"),
                "the Mistral chat template needs roles alternating user/assistant from a user message (no system "
                "message); messages["
                    << i << "] is '" << m.role << "'");
      if (user_turn) {
        out += "[INST] " + m.content + " [/INST]";
      } else {
        out += m.content + eos_ + (space_after_eos_ ? " " : "");
      }
    }
    return out;
  }

  ChatStyle style_ = ChatStyle::kChatMl;
  std::string default_system_;
  bool llama31_date_ = false;
  bool space_after_eos_ = false;
  std::string bos_;
  std::string eos_;
};

}  // namespace kvc_engine
