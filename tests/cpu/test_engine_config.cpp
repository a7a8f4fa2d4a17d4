// The engine's config.json reader: every RoPE header form maps to kvcompress::RopeConfig as transformers
// reads it; a missing, mistyped or unsupported field is a kvcompress::Error naming it.
#include <catch2/catch.hpp>

#include <string>

#include "kvc_engine/model_io/config.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using kvc_engine::ModelFamily;
using kvc_engine::parse_model_config;
using kvcompress::RopeType;
using Catch::Matchers::Contains;
using nlohmann::json;

namespace {

json base_config() {
  return json::parse(R"({"model_type":"llama","vocab_size":256,"hidden_size":64,"intermediate_size":128,
    "num_hidden_layers":2,"num_attention_heads":8,"num_key_value_heads":2,"head_dim":16,"rms_norm_eps":1e-6,
    "max_position_embeddings":512,"hidden_act":"silu","tie_word_embeddings":false,
    "rope_parameters":{"rope_type":"default","rope_theta":10000.0}})");
}

kvc_engine::ModelConfig parse(json const& j) { return parse_model_config(j.dump()); }

json without(json j, char const* field) {
  j.erase(field);
  return j;
}

}  // namespace

TEST_CASE("config: the architecture fields of a Llama config", "[engine][config]") {
  auto const c = parse(base_config());
  CHECK(c.family == ModelFamily::kLlama);
  CHECK(c.vocab_size == 256);
  CHECK(c.hidden_size == 64);
  CHECK(c.intermediate_size == 128);
  CHECK(c.num_layers == 2);
  CHECK(c.num_heads == 8);
  CHECK(c.num_kv_heads == 2);
  CHECK(c.head_dim == 16);
  CHECK(c.rms_norm_eps == 1e-6);
  CHECK_FALSE(c.tie_word_embeddings);
  CHECK_FALSE(c.qkv_bias);
  CHECK_FALSE(c.qk_norm);
  CHECK(c.sliding_window == 0);
  CHECK(c.rope.type == RopeType::kDefault);
  CHECK(c.rope.theta == 10000.0);
  CHECK(c.rope.head_dim == 16);
  CHECK(c.rope.max_position_embeddings == 512);
}

TEST_CASE("config: defaults transformers applies (kv heads, head_dim, activation)", "[engine][config]") {
  json j = without(without(base_config(), "num_key_value_heads"), "hidden_act");
  j["head_dim"] = nullptr;
  auto const c = parse(j);
  CHECK(c.num_kv_heads == 8);
  CHECK(c.head_dim == 64 / 8);
}

TEST_CASE("config: family-specific biases, q/k norms and sliding windows", "[engine][config]") {
  json j = base_config();
  j["model_type"] = "qwen2";
  j["use_sliding_window"] = false;
  j["sliding_window"] = 4096;
  auto c = parse(j);
  CHECK(c.family == ModelFamily::kQwen2);
  CHECK(c.qkv_bias);
  CHECK_FALSE(c.o_bias);
  CHECK(c.sliding_window == 0);
  j["model_type"] = "qwen3";
  j["attention_bias"] = true;
  c = parse(j);
  CHECK(c.qk_norm);
  CHECK(c.qkv_bias);
  CHECK(c.o_bias);
  j["model_type"] = "mistral";
  c = parse(j);
  CHECK(c.family == ModelFamily::kMistral);
  CHECK_FALSE(c.qkv_bias);
  CHECK(c.sliding_window == 4096);
  j = base_config();
  j["attention_bias"] = true;
  j["mlp_bias"] = true;
  c = parse(j);
  CHECK(c.qkv_bias);
  CHECK(c.o_bias);
  CHECK(c.mlp_bias);
}

TEST_CASE("config: every rope_type of rope_parameters maps to RopeConfig", "[engine][config]") {
  json j = base_config();
  j["rope_parameters"] = {{"rope_type", "linear"}, {"rope_theta", 5e5}, {"factor", 4.0}};
  auto c = parse(j).rope;
  CHECK(c.type == RopeType::kLinear);
  CHECK(c.theta == 5e5);
  CHECK(c.factor == 4.0);

  j["rope_parameters"] = {{"rope_type", "dynamic"}, {"rope_theta", 1e4}, {"factor", 2.0}};
  c = parse(j).rope;
  CHECK(c.type == RopeType::kDynamic);
  CHECK(c.factor == 2.0);

  j["rope_parameters"] = {{"rope_type", "llama3"},        {"rope_theta", 5e5},         {"factor", 8.0},
                          {"low_freq_factor", 1.0},      {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 64}};
  c = parse(j).rope;
  CHECK(c.type == RopeType::kLlama3);
  CHECK(c.factor == 8.0);
  CHECK(c.low_freq_factor == 1.0);
  CHECK(c.high_freq_factor == 4.0);
  CHECK(c.original_max_position_embeddings == 64);

  j["rope_parameters"] = {{"rope_type", "yarn"}, {"rope_theta", 1e4},     {"factor", 4.0},          {"beta_fast", 16.0},
                          {"beta_slow", 2.0},    {"mscale", 1.0},         {"mscale_all_dim", 0.5}, {"attention_factor", 1.25},
                          {"truncate", false},   {"original_max_position_embeddings", 128}};
  c = parse(j).rope;
  CHECK(c.type == RopeType::kYarn);
  CHECK(c.factor == 4.0);
  CHECK(c.beta_fast == 16.0);
  CHECK(c.beta_slow == 2.0);
  CHECK(c.mscale == 1.0);
  CHECK(c.mscale_all_dim == 0.5);
  CHECK(c.attention_factor == 1.25);
  CHECK_FALSE(c.truncate);
  CHECK(c.original_max_position_embeddings == 128);
}

TEST_CASE("config: yarn and llama3 fall back as transformers does", "[engine][config]") {
  json j = base_config();
  // yarn without factor: max_position_embeddings / original_max_position_embeddings; defaults for the rest.
  j["rope_parameters"] = {{"rope_type", "yarn"}, {"rope_theta", 1e4}, {"original_max_position_embeddings", 128}};
  auto c = parse(j).rope;
  CHECK(c.factor == 4.0);
  CHECK(c.beta_fast == 32.0);
  CHECK(c.beta_slow == 1.0);
  CHECK(c.attention_factor == 0.0);
  CHECK(c.truncate);
  // original_max_position_embeddings: the top level wins over the RoPE object, max_position_embeddings last.
  j["rope_parameters"] = {{"rope_type", "llama3"}, {"rope_theta", 5e5}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                          {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 64}};
  j["original_max_position_embeddings"] = 32;
  CHECK(parse(j).rope.original_max_position_embeddings == 32);
  j.erase("original_max_position_embeddings");
  j["rope_parameters"].erase("original_max_position_embeddings");
  CHECK(parse(j).rope.original_max_position_embeddings == 512);
}

TEST_CASE("config: the older rope_theta + rope_scaling header", "[engine][config]") {
  json j = without(base_config(), "rope_parameters");
  j["rope_theta"] = 1e6;
  j["rope_scaling"] = nullptr;
  auto c = parse(j).rope;
  CHECK(c.type == RopeType::kDefault);
  CHECK(c.theta == 1e6);
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};  // "type": the spelling before rope_type
  c = parse(j).rope;
  CHECK(c.type == RopeType::kLinear);
  CHECK(c.theta == 1e6);
  CHECK(c.factor == 2.0);
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 32.0}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}};
  c = parse(j).rope;
  CHECK(c.type == RopeType::kLlama3);
  CHECK(c.factor == 32.0);
  CHECK(c.original_max_position_embeddings == 8192);
}

TEST_CASE("config: each missing required field is named", "[engine][config]") {
  for (char const* field : {"model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                            "num_attention_heads", "rms_norm_eps", "max_position_embeddings"}) {
    INFO(field);
    REQUIRE_THROWS_WITH(parse(without(base_config(), field)), Contains(std::string("'") + field + "' is missing"));
  }
}

TEST_CASE("config: a missing rope_theta", "[engine][config]") {
  json j = base_config();
  j["rope_parameters"].erase("rope_theta");
  REQUIRE_THROWS_WITH(parse(j), Contains("rope_parameters: 'rope_theta' is missing"));
}

TEST_CASE("config: a missing parameter of a RoPE variant", "[engine][config]") {
  json j = base_config();
  j["rope_parameters"] = {{"rope_type", "linear"}, {"rope_theta", 1e4}};
  REQUIRE_THROWS_WITH(parse(j), Contains("rope_parameters: 'factor' is missing"));
  j["rope_parameters"] = {{"rope_type", "llama3"}, {"rope_theta", 1e4}, {"factor", 8.0}, {"high_freq_factor", 4.0}};
  REQUIRE_THROWS_WITH(parse(j), Contains("rope_parameters: 'low_freq_factor' is missing"));
}

TEST_CASE("config: an unsupported rope_type", "[engine][config]") {
  json j = base_config();
  j["rope_parameters"] = {{"rope_type", "longrope"}, {"rope_theta", 1e4}};
  REQUIRE_THROWS_WITH(parse(j), Contains("rope_type 'longrope' is not supported"));
}

TEST_CASE("config: partial rotary and per-layer RoPE are refused", "[engine][config]") {
  json j = base_config();
  j["partial_rotary_factor"] = 0.5;
  REQUIRE_THROWS_WITH(parse(j), Contains("partial_rotary_factor = 0.5 is not supported"));
  j = base_config();
  j["rope_parameters"] = {{"full_attention", {{"rope_type", "default"}, {"rope_theta", 1e4}}}};
  REQUIRE_THROWS_WITH(parse(j), Contains("per-layer-type parameters ('full_attention')"));
}

TEST_CASE("config: an unsupported model_type or activation", "[engine][config]") {
  json j = base_config();
  j["model_type"] = "gemma3";
  REQUIRE_THROWS_WITH(parse(j), Contains("model_type 'gemma3' is not supported"));
  j = base_config();
  j["hidden_act"] = "gelu";
  REQUIRE_THROWS_WITH(parse(j), Contains("hidden_act 'gelu' is not supported"));
}

TEST_CASE("config: mistyped and out-of-range values", "[engine][config]") {
  json j = base_config();
  j["hidden_size"] = "64";
  REQUIRE_THROWS_WITH(parse(j), Contains("'hidden_size' must be an integer, got \"64\""));
  j = base_config();
  j["vocab_size"] = 0;
  REQUIRE_THROWS_WITH(parse(j), Contains("'vocab_size' = 0 is outside [1, 2^40]"));
  j = base_config();
  j["tie_word_embeddings"] = 1;
  REQUIRE_THROWS_WITH(parse(j), Contains("'tie_word_embeddings' must be true or false, got 1"));
  j = base_config();
  j["num_key_value_heads"] = 3;
  REQUIRE_THROWS_WITH(parse(j), Contains("num_attention_heads = 8 is not a multiple of num_key_value_heads = 3"));
  j = base_config();
  j["head_dim"] = 15;
  REQUIRE_THROWS_WITH(parse(j), Contains("head_dim = 15 must be even"));
  j = base_config();
  j["rope_parameters"] = {{"rope_type", "linear"}, {"rope_theta", 1e4}, {"factor", 0.5}};
  REQUIRE_THROWS_WITH(parse(j), Contains("rope factor must be >= 1"));
}

TEST_CASE("config: text that is not a JSON object", "[engine][config]") {
  REQUIRE_THROWS_WITH(parse_model_config("{\"model_type\": "), Contains("config.json is not valid JSON"));
  REQUIRE_THROWS_WITH(parse_model_config("[]"), Contains("config.json must hold a JSON object"));
  REQUIRE_THROWS_WITH(parse_model_config(std::string(100, '[') + std::string(100, ']')), Contains("nests deeper than 16 levels"));
}

}  // namespace KVC_TEST_TU
