#pragma once
/// \file
/// \brief KVzip's reconstruction prompt (`KVzipPrompt`, press_registry.hpp) for a model: written with the
/// model's own tokenizer and chat format, as kvpress's `KVzipPress` writes it, or read as token ids from a
/// JSON file for a model whose tokenizer the engine does not have (an HF checkpoint folder).
///
/// kvpress's rule: with a chat template, the template renders one user message "dummy context" + "\n" +
/// 13 '#' with the generation prompt; what follows the separator is the suffix, what precedes "dummy
/// context" is the prefix, whose token count marks where the reconstructed context starts (the chat head
/// of a prompt is not reconstructed). Without a template the prefix is empty and the suffix is "\n". Every
/// text is encoded without BOS/EOS and with the special tokens written in it recognised.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvc_engine/compression/press_registry.hpp"
#include "kvc_engine/tokenizer/chat_format.hpp"
#include "kvc_engine/tokenizer/tokenizer.hpp"

namespace kvc_engine {

inline constexpr char kKVzipFirstPrompt[] = "\n\nRepeat the previous context exactly.";
inline constexpr char kKVzipLaterPrompt[] = "\n\nRepeat the part of the previous context exactly, starting with";

/// \brief KVzip's prompt in `tokenizer`'s ids, for prompts rendered with `chat` (none: plain text).
[[nodiscard]] inline KVzipPrompt kvzip_prompt(Tokenizer const& tokenizer, std::optional<ChatFormat> const& chat) {
  auto const ids = [&](std::string const& text) { return tokenizer.encode(text, /*add_bos_eos=*/false, /*parse_special=*/true); };
  KVzipPrompt p;
  p.first = ids(kKVzipFirstPrompt);
  p.later = ids(kKVzipLaterPrompt);
  if (!chat) {
    p.suffix = ids("\n");
    return p;
  }
  std::string const dummy = "dummy context", separator = "\n" + std::string(dummy.size(), '#');
  std::string const rendered = chat->apply({{"user", dummy + separator}}, /*add_generation_prompt=*/true);
  std::size_t const at = rendered.find(separator), head = rendered.find(dummy);
  KVC_CHECK(at != std::string::npos && head != std::string::npos && head < at,
            "KVzip's prompt: the " << chat->name() << " chat format did not render the user message as written");
  p.suffix = ids(rendered.substr(at + separator.size()));
  p.prefix_length = static_cast<std::int64_t>(ids(rendered.substr(0, head)).size());
  return p;
}

/// \brief KVzip's prompt as token ids from a JSON file: {"prompt_first": [...], "prompt_later": [...],
/// "suffix": [...]} and optionally "prefix_length" (default 0), each id inside [0, vocab).
[[nodiscard]] inline KVzipPrompt read_kvzip_prompt(std::string const& path, std::int64_t vocab) {
  std::string const text = detail::read_whole_file(path);
  nlohmann::json const j = detail::parse_json(text.data(), text.data() + text.size(), 8, path);
  KVC_CHECK(j.is_object(), path << ": KVzip's prompt file must be a JSON object");
  auto const ids = [&](char const* key, bool may_be_empty) {
    KVC_CHECK(j.contains(key) && j.at(key).is_array(), path << ": '" << key << "' must be an array of token ids");
    std::vector<std::int32_t> out;
    for (auto const& v : j.at(key)) {
      KVC_CHECK(v.is_number_integer() && v.get<std::int64_t>() >= 0 && v.get<std::int64_t>() < vocab,
                path << ": '" << key << "' holds " << v.dump() << ", not a token id in [0, " << vocab << ")");
      out.push_back(v.get<std::int32_t>());
    }
    KVC_CHECK(may_be_empty || !out.empty(), path << ": '" << key << "' must not be empty");
    return out;
  };
  KVzipPrompt p;
  p.first = ids("prompt_first", false);
  p.later = ids("prompt_later", false);
  p.suffix = ids("suffix", true);
  if (j.contains("prefix_length")) {
    KVC_CHECK(j.at("prefix_length").is_number_integer() && j.at("prefix_length").get<std::int64_t>() >= 0,
              path << ": 'prefix_length' must be a non-negative integer, got " << j.at("prefix_length").dump());
    p.prefix_length = j.at("prefix_length").get<std::int64_t>();
  }
  return p;
}

}  // namespace kvc_engine
