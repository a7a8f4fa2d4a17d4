// The engine's chat formats against transformers' apply_chat_template (tools/golden/generate_tokenizer.py): the
// SmolLM2 GGUF's template and ChatML, Llama 3, Mistral v0.1 and Mixtral templates, each conversation rendered to
// the same text, and the conversations a template refuses refused.
#include <catch2/catch.hpp>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kvc_engine/tokenizer/chat_format.hpp"
#include "kvcompress/core/error.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using kvc_engine::ChatFormat;
using kvc_engine::ChatMessage;

TEST_CASE("chat format: five templates render as transformers' apply_chat_template", "[chat][golden]") {
  std::ifstream in(std::string(KVC_GOLDEN_DIR) + "/tokenizer/chat_templates.json");
  REQUIRE(in.good());
  nlohmann::json const fixture = nlohmann::json::parse(in);
  std::size_t rendered = 0;
  std::size_t refused = 0;
  for (auto const& f : fixture.at("formats")) {
    std::string const name = f.at("name").get<std::string>();
    CAPTURE(name);
    ChatFormat const format = ChatFormat::from_template(f.at("template").get<std::string>(),
                                                        f.at("bos").get<std::string>(), f.at("eos").get<std::string>());
    if (name == "smollm2") {
      CHECK(format.default_system() == "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
    }
    for (auto const& c : f.at("cases")) {
      std::vector<ChatMessage> messages;
      for (auto const& m : c.at("messages"))
        messages.push_back({m.at("role").get<std::string>(), m.at("content").get<std::string>()});
      bool const gen = c.at("add_generation_prompt").get<bool>();
      CAPTURE(c.at("messages").dump(), gen);
      if (c.contains("error")) {
        CHECK_THROWS_AS(format.apply(messages, gen), kvcompress::Error);
        ++refused;
      } else {
        CHECK(format.apply(messages, gen) == c.at("text").get<std::string>());
        ++rendered;
      }
    }
  }
  CHECK(rendered == 58);
  CHECK(refused == 12);
}

}  // namespace KVC_TEST_TU
