// The engine's GGUF reader (examples/engine/kvc_engine/gguf*.hpp) against fixtures written by
// tools/golden/generate_gguf.py with the `gguf` Python package (0.19.0) and transformers 5.2.0:
// dequantisation of every supported type element for element, the architecture metadata → config mapping
// and the logits of tiny llama / qwen2 / qwen3 GGUF models against transformers' loading the same files.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>

#include "golden_fixture.hpp"
#include "kvc_engine/forward/engine.hpp"
#include "kvc_engine/model_io/gguf_model.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using nlohmann::json;

namespace {

std::string const kDir = std::string(KVC_GOLDEN_DIR) + "/gguf";

std::vector<unsigned char> read_bytes(std::string const& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

/// Bit-identical floats, except where the compiler may fuse a multiply and an add (the reference does not).
bool same_float(float a, float b) {
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA)
  return a == b || std::abs(a - b) <= 1e-6F * std::max(std::abs(a), std::abs(b));
#else
  return a == b || (std::isnan(a) && std::isnan(b));
#endif
}

}  // namespace

TEST_CASE("GGUF dequantisation equals the gguf package's, element for element", "[golden][gguf]") {
  json const meta = kvc_test::load_json(kDir + "/dequant.json");
  kvc_engine::GgufFile const f = kvc_engine::GgufFile::open(kDir + "/" + meta.at("file").get<std::string>());
  REQUIRE(f.version() == 3);
  int types = 0;
  for (auto const& entry : meta.at("tensors")) {
    std::string const name = entry.at("name");
    auto const ref = kvc_test::load_tensor<float>(kDir, entry.at("expected"));
    kvc_engine::GgufTensorInfo const& t = f.tensor(name);
    CHECK(std::string(t.traits().name) == entry.at("type").get<std::string>());
    REQUIRE(t.shape() == ref.shape);
    std::vector<float> const got = kvc_engine::dequantize_tensor(f, t);
    REQUIRE(got.size() == ref.data.size());
    std::size_t mismatches = 0, first = got.size();
    for (std::size_t i = 0; i < got.size(); ++i)
      if (!same_float(got[i], ref.data[i])) {
        ++mismatches;
        first = std::min(first, i);
      }
    INFO(name << ": " << mismatches << " of " << got.size() << " elements differ, first at " << first
              << (first < got.size() ? ": " + std::to_string(got[first]) + " vs " + std::to_string(ref.data[first]) : ""));
    CHECK(mismatches == 0);
    ++types;
  }
  CHECK(types == 13);
}

TEST_CASE("GGUF v2 reads as v3, big-endian files are refused", "[golden][gguf]") {
  SECTION("version 2") {
    std::vector<unsigned char> bytes = read_bytes(kDir + "/dequant.gguf");
    bytes[4] = 2;  // v2 and v3 have the same little-endian layout
    kvc_engine::GgufFile const f(std::move(bytes), "v2.gguf");
    CHECK(f.version() == 2);
    CHECK(f.tensors().size() == 13);
  }
  SECTION("big-endian") {
    REQUIRE_THROWS_WITH(kvc_engine::GgufFile::open(kDir + "/big_endian.gguf"),
                        Catch::Matchers::Contains("big-endian GGUF (version 3 byte-swapped)"));
  }
}

TEST_CASE("GGUF architecture metadata gives the config transformers derives", "[golden][gguf]") {
  json const index = kvc_test::load_json(kDir + "/index.json");  // not a temporary: the loop reads into it
  REQUIRE(index.at("models").size() == 3);
  for (auto const& arch : index.at("models")) {
    json const meta = kvc_test::load_json(kDir + "/" + arch.get<std::string>() + ".json");
    json const& hf = meta.at("transformers_config");
    kvc_engine::GgufFile const f = kvc_engine::GgufFile::open(kDir + "/" + meta.at("file").get<std::string>());
    kvc_engine::ModelConfig const c = kvc_engine::gguf_model_config(f);
    INFO(arch);
    CHECK(c.model_type == hf.at("model_type").get<std::string>());
    CHECK(c.vocab_size == hf.at("vocab_size").get<std::int64_t>());
    CHECK(c.hidden_size == hf.at("hidden_size").get<std::int64_t>());
    CHECK(c.intermediate_size == hf.at("intermediate_size").get<std::int64_t>());
    CHECK(c.num_layers == hf.at("num_hidden_layers").get<std::int64_t>());
    CHECK(c.num_heads == hf.at("num_attention_heads").get<std::int64_t>());
    CHECK(c.num_kv_heads == hf.at("num_key_value_heads").get<std::int64_t>());
    CHECK(c.head_dim == hf.at("head_dim").get<std::int64_t>());
    CHECK(c.rms_norm_eps == hf.at("rms_norm_eps").get<double>());
    CHECK(c.max_position_embeddings == hf.at("max_position_embeddings").get<std::int64_t>());
    CHECK(c.tie_word_embeddings == hf.at("tie_word_embeddings").get<bool>());
    CHECK(c.rope.theta == hf.at("rope_theta").get<double>());
    CHECK(hf.at("rope_type").get<std::string>() == "default");
    CHECK(c.rope.type == kvcompress::RopeType::kDefault);
    CHECK(c.qkv_bias == (c.family == kvc_engine::ModelFamily::kQwen2));
    CHECK(c.qk_norm == (c.family == kvc_engine::ModelFamily::kQwen3));
  }
}

TEST_CASE("GGUF models' logits equal transformers' loading the same file (fp32)", "[golden][gguf]") {
  json const index = kvc_test::load_json(kDir + "/index.json");  // not a temporary: the loop reads into it
  REQUIRE(index.at("models").size() == 3);
  for (auto const& arch : index.at("models")) {
    json const meta = kvc_test::load_json(kDir + "/" + arch.get<std::string>() + ".json");
    std::vector<std::int32_t> const prompt = meta.at("prompt");
    kvc_engine::Model const model = kvc_engine::load_model(kDir + "/" + meta.at("file").get<std::string>());
    kvc_engine::Engine engine(model);
    kvc_engine::KVCache cache = engine.new_cache();
    std::vector<float> const logits = engine.forward(cache, prompt, kvc_engine::Logits::kAll);
    auto const ref = kvc_test::load_tensor<float>(kDir, meta.at("logits"));
    std::int64_t const V = model.config.vocab_size;
    REQUIRE(ref.shape == std::vector<std::int64_t>{static_cast<std::int64_t>(prompt.size()), V});
    double worst = 0.0;
    for (std::size_t r = 0; r < prompt.size(); ++r) {
      double err = 0.0, scale = 0.0;
      for (std::int64_t i = 0; i < V; ++i) {
        std::size_t const k = r * static_cast<std::size_t>(V) + static_cast<std::size_t>(i);
        err = std::max(err, std::abs(static_cast<double>(logits[k]) - ref.data[k]));
        scale = std::max(scale, std::abs(static_cast<double>(ref.data[k])));
      }
      worst = std::max(worst, err / scale);
    }
    std::printf("gguf golden: %s logits over %zu positions, max row-relative error %.2e\n",
                arch.get<std::string>().c_str(), prompt.size(), worst);
    CHECK(worst <= 1e-4);
  }
}

TEST_CASE("GGUF rope_freqs.weight is read as llama3 RoPE scaling", "[golden][gguf]") {
  json const meta = kvc_test::load_json(kDir + "/llama3_rope.json");
  json const& p = meta.at("rope_parameters");
  kvc_engine::GgufFile const f = kvc_engine::GgufFile::open(kDir + "/" + meta.at("file").get<std::string>());
  kvc_engine::ModelConfig const c = kvc_engine::gguf_model_config(f);
  CHECK(c.rope.type == kvcompress::RopeType::kLlama3);
  CHECK(c.rope.factor == p.at("factor").get<double>());
  CHECK(c.rope.low_freq_factor == p.at("low_freq_factor").get<double>());
  CHECK(c.rope.high_freq_factor == p.at("high_freq_factor").get<double>());
  CHECK(c.rope.original_max_position_embeddings == p.at("original_max_position_embeddings").get<std::int64_t>());
  CHECK(c.rope.theta == p.at("rope_theta").get<double>());

  // One factor off by 1 % is not llama3 scaling.
  std::vector<unsigned char> bytes = read_bytes(kDir + "/" + meta.at("file").get<std::string>());
  kvc_engine::GgufTensorInfo const& t = f.tensor("rope_freqs.weight");
  std::size_t const at = static_cast<std::size_t>(f.data_offset() + t.offset) + 4 * 4;
  float x = 0.0F;
  std::memcpy(&x, bytes.data() + at, 4);
  x *= 1.01F;
  std::memcpy(bytes.data() + at, &x, 4);
  kvc_engine::GgufFile const g(std::move(bytes), "llama3_rope_off.gguf");
  REQUIRE_THROWS_WITH(kvc_engine::gguf_model_config(g), Catch::Matchers::Contains("rope_freqs.weight[4]") &&
                                                            Catch::Matchers::Contains("is not llama3 scaling"));
}

}  // namespace KVC_TEST_TU
