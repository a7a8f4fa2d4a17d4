// The presses kvcompress-eval runs by name beyond the scorer presses, through the reference engine.
//
// KVzap and FastKVzip by name in the reference engine ("kvzap", "fast_kvzip" in kvcompress-eval's registry): the
// engine records every layer's attention input (after input_layernorm) during the prefill, the surrogates or
// gates score it, and each kv head must keep what kvpress 0.5.5's KVzapPress / FastKVzipPress kept on the same
// checkpoint and prompt with the same random weights (tests/golden/engine_learned/,
// tools/golden/generate_engine_learned.py). Also the weights' checks against the model.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "golden_fixture.hpp"
#include "kvc_engine/compression/press_registry.hpp"
#include "kvc_engine/eval/greedy_answer.hpp"
#include "kvc_engine/eval/prefill_snapshot.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

namespace {

std::string const kDir = std::string(KVC_GOLDEN_DIR) + "/engine_learned";

}  // namespace

TEST_CASE("KVzap and FastKVzip in the reference engine keep what kvpress 0.5.5 keeps on the engine's Llama",
          "[golden][press][engine]") {
  auto const want = kvc_test::load_json(kDir + "/engine_learned.json");
  std::string const dir = std::string(KVC_GOLDEN_DIR) + "/engine/llama";
  auto const meta = kvc_test::load_json(dir + "/engine.json");
  kvc_engine::Model const model = kvc_engine::load_model(dir + "/" + meta.at("checkpoint").get<std::string>());
  kvc_engine::Engine engine(model, 1);
  auto const prompt = want.at("prompt").get<std::vector<std::int32_t>>();  // distinct tokens: no tied scores
  int cases = 0;
  for (auto const& c : want.at("cases")) {
    std::string const name = c.at("name");
    CAPTURE(name);
    std::string const weights = kDir + "/" + c.at("weights").get<std::string>();
    kvc_engine::PressFiles files;
    std::string press = "fast_kvzip";
    if (c.at("press") == "KVzapPress") {
      files.kvzap = kvc_engine::load_kvzap_for(weights, model.config);
      press = "kvzap";
    } else {
      files.fast_kvzip = kvc_engine::load_fast_kvzip_for(weights, model.config);
    }
    kvc_engine::Compressor const comp =
        kvc_engine::make_compressor(press, c.at("params").at("compression_ratio").get<double>(), engine.device(), files);
    REQUIRE(comp.needs.hidden_states);
    kvc_engine::KVCache cache = engine.new_cache(static_cast<std::int64_t>(prompt.size()));
    (void)engine.forward(cache, prompt, kvc_engine::Logits::kNone, &comp);
    for (std::int64_t l = 0; l < model.config.num_layers; ++l)
      for (std::int64_t h = 0; h < model.config.num_kv_heads; ++h) {
        CAPTURE(l, h);
        auto const kept = c.at("kept").at(static_cast<std::size_t>(l)).at(static_cast<std::size_t>(h)).get<std::vector<std::int32_t>>();
        REQUIRE(cache.length(l, h) == static_cast<std::int32_t>(kept.size()));
        std::vector<std::int32_t> const got(cache.positions(l, h), cache.positions(l, h) + cache.length(l, h));
        CHECK(got == kept);
      }
    ++cases;
  }
  std::printf("golden KVzap/FastKVzip (engine): %d cases keep kvpress's sets on every layer and head\n", cases);
  CHECK(cases == 3);
}

TEST_CASE("KVzap and FastKVzip weights: a file for another model is refused, naming both", "[golden][press][engine]") {
  kvc_engine::Model const model = kvc_engine::load_model(std::string(KVC_GOLDEN_DIR) + "/engine/llama/checkpoint");
  kvc_engine::ModelConfig other = model.config;
  SECTION("KVzap surrogates of another layer count") {
    other.num_layers = 3;
    CHECK_THROWS_WITH(kvc_engine::load_kvzap_for(kDir + "/kvzap_mlp.safetensors", other),
                      Catch::Contains("the KVzap surrogate has 2 layers, hidden size 64 and 2 kv heads; the model 3, 64 and 2"));
  }
  SECTION("FastKVzip gates of another query group") {
    other.num_heads = 4;
    CHECK_THROWS_WITH(kvc_engine::load_fast_kvzip_for(kDir + "/fast_kvzip.safetensors", other),
                      Catch::Contains("the FastKVzip gates have 2 layers, hidden size 64, 2 kv heads and query groups of 4; "
                                      "the model 2, 64, 2 and 2"));
  }
  SECTION("a press named without its weights") {
    CHECK_THROWS_WITH(kvc_engine::make_compressor("kvzap", 0.5), Catch::Contains("press kvzap needs KVzap's surrogate weights"));
    CHECK_THROWS_WITH(kvc_engine::make_compressor("fast_kvzip", 0.5),
                      Catch::Contains("press fast_kvzip needs FastKVzip's gate weights"));
  }
  SECTION("a record without hidden states") {
    kvc_engine::Engine engine(model, 1);
    kvc_engine::PressFiles files;
    files.kvzap = kvc_engine::load_kvzap_for(kDir + "/kvzap_mlp.safetensors", model.config);
    kvc_engine::Compressor const comp = kvc_engine::make_compressor("kvzap", 0.5, engine.device(), files);
    kvc_engine::KVCache cache = engine.new_cache(8);
    kvc_engine::ForwardRecord record;
    (void)engine.forward(cache, std::vector<std::int32_t>{1, 2, 3, 4, 5, 6, 7, 8}, kvc_engine::Logits::kNone, nullptr, &record);
    CHECK_THROWS_WITH(engine.compress(cache, record, comp.after_prefill, comp.needs),
                      Catch::Contains("the forward record holds none: the pass was not asked to keep them"));
  }
}

// FINCH by name ("finch"): its window is the prefill's last `question_tokens` tokens (the eval's question
// inside the compressed prompt). Each head must keep the entries kvpress 0.5.5's FinchPress kept when the same
// tokens were marked with its delimiter, and tokens fed next must continue at the kept count (kvpress's pipeline
// after re-rotated keys) with kvpress's logits (tests/golden/engine_finch/, tools/golden/generate_engine_finch.py).
TEST_CASE("FINCH in the reference engine keeps what kvpress 0.5.5 keeps and continues as its pipeline does",
          "[golden][press][engine]") {
  std::string const fdir = std::string(KVC_GOLDEN_DIR) + "/engine_finch";
  auto const want = kvc_test::load_json(fdir + "/finch.json");
  std::string const dir = std::string(KVC_GOLDEN_DIR) + "/engine/llama";
  auto const meta = kvc_test::load_json(dir + "/engine.json");
  kvc_engine::Model const model = kvc_engine::load_model(dir + "/" + meta.at("checkpoint").get<std::string>());
  kvc_engine::Engine engine(model, 1);
  auto const prompt = meta.at("prompt").get<std::vector<std::int32_t>>();
  auto const follow = want.at("follow").get<std::vector<std::int32_t>>();
  kvc_engine::Compressor const c = kvc_engine::make_compressor("finch", want.at("params").at("compression_ratio").get<double>(), engine.device());
  kvc_engine::KVCache cache = engine.new_cache(static_cast<std::int64_t>(prompt.size() + follow.size()));
  kvc_engine::ForwardRecord record;
  (void)engine.forward(cache, prompt, kvc_engine::Logits::kNone, nullptr, &record);
  kvc_engine::KVCache full = cache;  // the uncompressed entries (its accessors are not const)
  SECTION("a prefill that marks no question") {
    CHECK_THROWS_WITH(c.after_prefill_model(engine, cache, record),
                      Catch::Contains("press finch scores the context by the question's attention, and the prefill marks 0 of its 203 tokens"));
  }
  SECTION("the question's last tokens as the window") {
    record.question_tokens = want.at("window").get<std::int64_t>();
    c.after_prefill_model(engine, cache, record);
    std::int64_t const d = model.config.head_dim;
    for (std::int64_t l = 0; l < model.config.num_layers; ++l)
      for (std::int64_t h = 0; h < model.config.num_kv_heads; ++h) {
        CAPTURE(l, h);
        auto const kept = want.at("kept").at(static_cast<std::size_t>(l)).at(static_cast<std::size_t>(h)).get<std::vector<std::int32_t>>();
        REQUIRE(cache.length(l, h) == static_cast<std::int32_t>(kept.size()));
        bool same = true;  // values are not re-rotated: each slot holds its kept entry's value
        for (std::size_t i = 0; i < kept.size(); ++i)
          same = same && std::equal(cache.values(l, h) + static_cast<std::int64_t>(i) * d, cache.values(l, h) + static_cast<std::int64_t>(i + 1) * d,
                                    full.values(l, h) + kept[i] * d);
        CHECK(same);
      }
    CHECK(cache.next_position() == want.at("next_position").get<std::int64_t>());
    std::vector<float> const logits = engine.forward(cache, follow, kvc_engine::Logits::kAll);
    auto const ref = kvc_test::load_tensor<float>(fdir, want.at("follow_logits"));
    REQUIRE(logits.size() == ref.data.size());
    double worst = 0.0;
    for (std::size_t i = 0; i < logits.size(); ++i) worst = std::max(worst, std::fabs(double(logits[i]) - ref.data[i]));
    std::printf("golden FINCH (engine): kvpress's kept sets, follow-up logits within %.3g\n", worst);
    CHECK(worst < 1e-4);
  }
}

// CAM by name ("cam") merges while decoding: the eval decodes its answer alone with the compressor's after_step
// (greedy_answer with a compressor), from a compressed copy of a prefill snapshot. On one example whose
// question is inside the prompt, that answer and the cache it leaves must equal Engine::generate's with the same
// compressor; small options make CAM compress a few times within the answer (kvpress's CAMPress itself is
// checked against kvpress in test_engine_golden.cpp).
TEST_CASE("CAM in the eval answers as Engine::generate does with the same compressor", "[golden][press][engine]") {
  std::string const dir = std::string(KVC_GOLDEN_DIR) + "/engine/llama";
  auto const meta = kvc_test::load_json(dir + "/engine.json");
  kvc_engine::Model const model = kvc_engine::load_model(dir + "/" + meta.at("checkpoint").get<std::string>());
  kvc_engine::Engine engine(model, 1);
  auto const prompt = meta.at("prompt").get<std::vector<std::int32_t>>();
  std::int64_t const answer_tokens = 24;
  kvc_engine::Compressor const cam =
      kvc_engine::cam_compressor(kvcompress::KnormPress{}, kvcompress::CAMOptions{8, 150, 4, 4}, "cam", engine.device());
  REQUIRE(kvc_engine::make_compressor("cam", 0.5).after_step);

  kvc_engine::PrefillSnapshot const snap = kvc_engine::prefill_snapshot(engine, prompt, answer_tokens);
  kvc_engine::CompressedCopy copy = kvc_engine::compressed_copy(engine, snap, cam);
  kvc_engine::GreedyAnswer const answer =
      kvc_engine::greedy_answer(engine, copy.cache, {}, snap.last_logits, answer_tokens, kvc_engine::kNoStopToken, &cam);

  kvc_engine::GenerateOptions options;
  options.max_new_tokens = answer_tokens;
  options.compressor = &cam;
  kvc_engine::GenerateResult r = engine.generate(prompt, options);
  CHECK(answer.tokens == r.tokens);
  // The answer's last token is not fed: generate's cache and the eval's hold the same entries.
  for (std::int64_t l = 0; l < model.config.num_layers; ++l)
    for (std::int64_t h = 0; h < model.config.num_kv_heads; ++h) {
      CAPTURE(l, h);
      REQUIRE(copy.cache.length(l, h) == r.cache.length(l, h));
      CHECK(copy.cache.length(l, h) <= 150 + 8);  // CAM compressed during the answer
      std::int64_t const n = copy.cache.length(l, h) * model.config.head_dim;
      CHECK(std::equal(copy.cache.values(l, h), copy.cache.values(l, h) + n, r.cache.values(l, h)));  // merged values too
    }
  std::printf("CAM (eval decode = generate): %zu tokens, %d cache entries per head after the answer\n", answer.tokens.size(),
              copy.cache.length(0, 0));
}

TEST_CASE("CAM by name refuses a decoding step before any prefill", "[golden][press][engine]") {
  kvc_engine::Model const model = kvc_engine::load_model(std::string(KVC_GOLDEN_DIR) + "/engine/llama/checkpoint");
  kvc_engine::Engine engine(model, 1);
  kvc_engine::Compressor const cam = kvc_engine::make_compressor("cam", 0.5, engine.device());
  kvc_engine::KVCache cache = engine.new_cache(8);
  kvc_engine::ForwardRecord record;
  (void)engine.forward(cache, std::vector<std::int32_t>{1, 2, 3}, kvc_engine::Logits::kNone, nullptr, &record);
  (void)engine.forward(cache, std::vector<std::int32_t>{4}, kvc_engine::Logits::kNone, nullptr, &record);
  CHECK_THROWS_WITH(engine.compress(cache, record, cam.after_step, cam.needs),
                    Catch::Contains("press cam decodes after a prefill: none was compressed by this compressor"));
}

}  // namespace KVC_TEST_TU
