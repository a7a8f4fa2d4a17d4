// The reference engine (examples/engine) against HF transformers and kvpress 0.5.5 on tiny random-weight
// checkpoints written by tools/golden/generate_engine.py: Llama (GQA 4:1, llama3 RoPE, untied head),
// Qwen3 (q_norm/k_norm, tied embeddings) and Qwen2 (q/k/v biases, yarn RoPE), a 203-token prompt.
// Logits must equal transformers' to fp32 relative 1e-4 (relative to each row's largest logit); the greedy
// 32-token continuation must equal kvpress's token for token with no press, ExpectedAttention 50 %,
// SnapKV 50 %, StreamingLLM 50 % and DecodingPress(KeyDiff) — and so must every step's logits.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "golden_fixture.hpp"
#include "kvc_engine/compression/press_registry.hpp"
#include "kvc_engine/eval/greedy_answer.hpp"
#include "kvc_engine/eval/prefill_snapshot.hpp"
#include "kvc_engine/forward/engine.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using nlohmann::json;

namespace {

std::string const kDir = std::string(KVC_GOLDEN_DIR) + "/engine";
constexpr double kRelTol = 1e-4;

/// Largest over rows of max|a − b| / max|b| (row width `width`).
double max_row_relative_error(std::vector<float> const& a, std::vector<float> const& b, std::int64_t width) {
  REQUIRE(a.size() == b.size());
  double worst = 0.0;
  for (std::size_t r = 0; r * static_cast<std::size_t>(width) < a.size(); ++r) {
    double err = 0.0, scale = 0.0;
    for (std::int64_t i = 0; i < width; ++i) {
      std::size_t const k = r * static_cast<std::size_t>(width) + static_cast<std::size_t>(i);
      err = std::max(err, std::abs(static_cast<double>(a[k]) - b[k]));
      scale = std::max(scale, std::abs(static_cast<double>(b[k])));
    }
    worst = std::max(worst, err / scale);
  }
  return worst;
}

std::vector<std::string> model_names() { return kvc_test::load_json(kDir + "/index.json").at("models").get<std::vector<std::string>>(); }

/// Hands out kvpress's recorded merge draws in order (CAMPress's torch.bernoulli, replaced by u < p).
struct RecordedUniform {
  std::shared_ptr<std::vector<float> const> values;
  std::size_t used = 0;
  double operator()() {
    KVC_CHECK(used < values->size(), "CAM asked for more draws than kvpress made (" << values->size() << ")");
    return static_cast<double>((*values)[used++]);
  }
};

kvc_engine::Compressor compressor_for(json const& run, kvc_engine::Model const& model, kvcompress::CpuDevice dev,
                                      std::string const& dir) {
  std::string const name = run.at("name");
  json const& p = run.at("params");
  if (name == "none") return kvc_engine::Compressor{name, {}, {}, {}, {}};
  if (name == "expected_attention")
    return kvc_engine::prefill_press(kvcompress::ExpectedAttentionPress{p.at("compression_ratio").get<double>()}, name, dev);
  if (name == "snapkv") return kvc_engine::prefill_press(kvcompress::SnapKVPress{p.at("compression_ratio").get<double>()}, name, dev);
  if (name == "streaming_llm")
    return kvc_engine::prefill_press(kvcompress::StreamingLLMPress{p.at("compression_ratio").get<double>()}, name, dev);
  if (name == "decoding_keydiff") {
    // kvcompress's DecodingPress with kvpress's hidden_states_buffer_size = 0: only the current step's query.
    // (KeyDiff, not Knorm: in layer 0 a repeated token's key has the same norm at every position, so Knorm's
    // kept set would depend on how ties are broken.)
    kvcompress::DecodingOptions const options{p.at("compression_interval"), p.at("target_size"), 0};
    kvcompress::QueryBufferShape const shape{static_cast<int>(model.config.num_layers), 1, model.config.num_heads,
                                             model.config.head_dim};
    return kvc_engine::decoding_press(kvcompress::DecodingPress<kvcompress::KeyDiffPress>({}, options, shape), name, dev);
  }
  if (name == "cam_keydiff") {  // as above, merging with kvpress's own draws; room for any cache of the test
    kvcompress::CAMOptions const options{p.at("compression_interval"), p.at("target_size"), 0, p.at("merge_budget")};
    kvcompress::CAMShape const shape{static_cast<int>(model.config.num_layers), 1, model.config.num_heads,
                                     model.config.num_kv_heads, model.config.head_dim, 4096};
    auto const draws = std::make_shared<std::vector<float> const>(kvc_test::load_tensor<float>(dir, run.at("uniforms")).data);
    return kvc_engine::decoding_press(
        kvcompress::CAMPress<kvcompress::KeyDiffPress, float, RecordedUniform>({}, options, shape, RecordedUniform{draws}),
        name, dev);
  }
  KVC_THROW("no compressor for golden run " << name);
}

}  // namespace

TEST_CASE("engine logits equal HF transformers' (fp32, and half-precision weights widened to fp32)", "[golden][engine]") {
  for (auto const& name : model_names()) {
    std::string const dir = kDir + "/" + name;
    json const meta = kvc_test::load_json(dir + "/engine.json");
    std::vector<std::int32_t> const prompt = meta.at("prompt");
    auto check = [&](std::string const& checkpoint, json const& spec, char const* what) {
      kvc_engine::Model const model = kvc_engine::load_model(dir + "/" + checkpoint);
      kvc_engine::Engine engine(model);
      kvc_engine::KVCache cache = engine.new_cache();
      std::vector<float> const logits = engine.forward(cache, prompt, kvc_engine::Logits::kAll);
      auto const ref = kvc_test::load_tensor<float>(dir, spec);
      REQUIRE(ref.shape == std::vector<std::int64_t>{static_cast<std::int64_t>(prompt.size()), model.config.vocab_size});
      double const err = max_row_relative_error(logits, ref.data, model.config.vocab_size);
      std::printf("engine golden: %s %s logits over %zu positions, max relative error %.2e\n", name.c_str(), what,
                  prompt.size(), err);
      CHECK(err <= kRelTol);
    };
    check(meta.at("checkpoint"), meta.at("logits"), "fp32");
    for (auto const& half : meta.at("half_precision_copies"))
      check(half.at("checkpoint"), half.at("logits"), half.at("dtype").get<std::string>().c_str());
  }
}

TEST_CASE("engine greedy continuation equals kvpress's, token for token, with and without presses", "[golden][engine]") {
  int runs = 0;
  for (auto const& name : model_names()) {
    std::string const dir = kDir + "/" + name;
    json const meta = kvc_test::load_json(dir + "/engine.json");
    std::vector<std::int32_t> const prompt = meta.at("prompt");
    kvc_engine::Model const model = kvc_engine::load_model(dir + "/" + meta.at("checkpoint").get<std::string>());
    kvc_engine::Engine engine(model);
    for (auto const& run : meta.at("runs")) {
      std::string const case_name = run.at("name");
      kvc_engine::Compressor const compressor = compressor_for(run, model, engine.device(), dir);
      kvc_engine::GenerateOptions options;
      options.max_new_tokens = meta.at("new_tokens");
      options.compressor = &compressor;
      options.keep_logits = true;
      kvc_engine::GenerateResult const r = engine.generate(prompt, options);

      std::vector<std::int32_t> const want = run.at("tokens");
      std::size_t agree = 0;
      while (agree < want.size() && agree < r.tokens.size() && want[agree] == r.tokens[agree]) ++agree;
      auto const ref = kvc_test::load_tensor<float>(dir, run.at("step_logits"));
      double const err = max_row_relative_error(r.logits, ref.data, model.config.vocab_size);
      std::vector<std::int32_t> lengths;
      for (std::int64_t l = 0; l < model.config.num_layers; ++l)
        for (std::int64_t h = 0; h < model.config.num_kv_heads; ++h) lengths.push_back(r.cache.length(l, h));
      std::printf("engine golden: %s %-18s %zu/%zu tokens agree, step logits max relative error %.2e, cache %d/layer\n",
                  name.c_str(), case_name.c_str(), agree, want.size(), err, lengths.front());
      INFO(name << " " << case_name);
      CHECK(r.tokens == want);
      CHECK(err <= kRelTol);
      for (std::int64_t l = 0; l < model.config.num_layers; ++l)
        for (std::int64_t h = 0; h < model.config.num_kv_heads; ++h)
          CHECK(r.cache.length(l, h) == run.at("cache_lengths").at(static_cast<std::size_t>(l)).get<std::int32_t>());
      ++runs;
    }
  }
  CHECK(runs == 18);
}

TEST_CASE("engine: a prompt run in chunks, then token by token, gives the logits of one pass", "[golden][engine]") {
  // The path of a question after a compressed context: later passes attend causally over the cache at
  // positions that continue from the tokens processed so far.
  std::string const dir = kDir + "/qwen3";
  json const meta = kvc_test::load_json(dir + "/engine.json");
  std::vector<std::int32_t> const prompt = meta.at("prompt");
  kvc_engine::Model const model = kvc_engine::load_model(dir + "/checkpoint");
  kvc_engine::Engine engine(model);
  kvc_engine::KVCache whole = engine.new_cache();
  std::vector<float> const one_pass = engine.forward(whole, prompt, kvc_engine::Logits::kAll);

  kvc_engine::KVCache cache = engine.new_cache(8);  // small on purpose: the cache grows as passes need
  std::vector<float> pieces;
  std::size_t const cuts[] = {0, 70, 71, 150, 190, prompt.size()};
  for (std::size_t c = 0; c + 1 < std::size(cuts); ++c) {
    std::vector<std::int32_t> const chunk(prompt.begin() + static_cast<std::ptrdiff_t>(cuts[c]),
                                          prompt.begin() + static_cast<std::ptrdiff_t>(cuts[c + 1]));
    if (c + 2 == std::size(cuts)) {
      for (std::int32_t t : chunk) {
        std::vector<float> const l = engine.forward(cache, {t}, kvc_engine::Logits::kLast);
        pieces.insert(pieces.end(), l.begin(), l.end());
      }
    } else {
      std::vector<float> const l = engine.forward(cache, chunk, kvc_engine::Logits::kAll);
      pieces.insert(pieces.end(), l.begin(), l.end());
    }
  }
  CHECK(cache.next_position() == static_cast<std::int64_t>(prompt.size()));
  CHECK(cache.length(1, 1) == static_cast<std::int32_t>(prompt.size()));
  double const err = max_row_relative_error(pieces, one_pass, model.config.vocab_size);
  std::printf("engine: chunked prefill and token-by-token decoding vs one pass, max relative error %.2e\n", err);
  CHECK(err <= 1e-5);
}

TEST_CASE("engine: bad tokens and bad checkpoints are errors", "[golden][engine]") {
  kvc_engine::Model const model = kvc_engine::load_model(kDir + "/llama/checkpoint");
  kvc_engine::Engine engine(model, 1);
  kvc_engine::KVCache cache = engine.new_cache();
  REQUIRE_THROWS_WITH(engine.forward(cache, {3, 256}, kvc_engine::Logits::kLast),
                      Catch::Matchers::Contains("tokens[1] = 256 is outside the vocabulary [0, 256)"));
  REQUIRE_THROWS_WITH(engine.forward(cache, std::vector<std::int32_t>{}, kvc_engine::Logits::kLast),
                      Catch::Matchers::Contains("forward needs at least one token"));
  REQUIRE_THROWS_WITH(kvc_engine::load_model(kDir + "/no_such_model"), Catch::Matchers::Contains("cannot open"));
  kvc_engine::Model const qwen3 = kvc_engine::load_model(kDir + "/qwen3/checkpoint");
  kvc_engine::KVCache other = kvc_engine::Engine(qwen3, 1).new_cache();
  REQUIRE_THROWS_WITH(engine.forward(other, {3}, kvc_engine::Logits::kLast),
                      Catch::Matchers::Contains("the cache was not made for this model"));
}

TEST_CASE("engine: one prefill, copied and compressed per press, gives kvpress's continuations", "[golden][engine]") {
  // The evaluation's path: prefill a context once, keep its ForwardRecord, compress a copy of the cache
  // with each press.
  std::string const dir = kDir + "/llama";
  json const meta = kvc_test::load_json(dir + "/engine.json");
  std::vector<std::int32_t> const prompt = meta.at("prompt");
  kvc_engine::Model const model = kvc_engine::load_model(dir + "/checkpoint");
  kvc_engine::Engine engine(model);
  kvc_engine::KVCache prefilled = engine.new_cache();
  kvc_engine::ForwardRecord record;
  std::vector<float> const first_logits = engine.forward(prefilled, prompt, kvc_engine::Logits::kLast, nullptr, &record);
  int checked = 0;
  for (auto const& run : meta.at("runs")) {
    if (run.at("press").is_null() || run.at("params").contains("compression_interval")) continue;  // decoding presses
    kvc_engine::Compressor const compressor = compressor_for(run, model, engine.device(), dir);
    kvc_engine::KVCache cache = prefilled;
    engine.compress(cache, record, compressor.after_prefill, compressor.needs);
    std::vector<std::int32_t> tokens{kvc_engine::argmax(first_logits.data(), model.config.vocab_size)};
    while (tokens.size() < run.at("tokens").size()) {
      std::vector<float> const logits = engine.forward(cache, {tokens.back()}, kvc_engine::Logits::kLast);
      tokens.push_back(kvc_engine::argmax(logits.data(), model.config.vocab_size));
    }
    INFO(run.at("name").get<std::string>());
    CHECK(tokens == run.at("tokens").get<std::vector<std::int32_t>>());
    ++checked;
  }
  CHECK(checked == 3);
  CHECK(prefilled.length(0, 0) == static_cast<std::int32_t>(prompt.size()));  // the copies were compressed, not it
}

TEST_CASE("engine: ThinK by name stores packed keys and gives kvpress's continuations", "[golden][engine]") {
  // kvpress 0.5.5's ThinKPress (tests/golden/engine_think/, tools/golden/generate_engine_think.py) zeroes the
  // prefill's dropped key channels; the engine stores those keys packed at the kept channels, and keys appended
  // later (the question, every decoding step) full-width, as kvpress leaves them. On each checkpoint: the prompt
  // compressed then 32 greedy tokens (`generate`), and the eval's path — a context compressed on a copy of its
  // prefill, a question forwarded over it, the answer decoded, two copies batched — must give kvpress's tokens
  // and step logits, keep kvpress's channels, and hold the smaller cache.
  json const want = kvc_test::load_json(std::string(KVC_GOLDEN_DIR) + "/engine_think/think.json");
  std::string const tdir = std::string(KVC_GOLDEN_DIR) + "/engine_think";
  double const ratio = want.at("params").at("key_channel_compression_ratio");
  int checked = 0;
  for (auto const& m : want.at("models")) {
    std::string const dir = std::string(KVC_GOLDEN_DIR) + "/" + m.at("model").get<std::string>();
    json const meta = kvc_test::load_json(dir + "/engine.json");
    std::vector<std::int32_t> const prompt = meta.at("prompt");
    kvc_engine::Model const model = kvc_engine::load_model(dir + "/" + meta.at("checkpoint").get<std::string>());
    kvc_engine::Engine engine(model);
    kvc_engine::Compressor const think = kvc_engine::make_compressor("think", ratio, engine.device());
    std::int64_t const d = model.config.head_dim, kv_heads = model.config.num_kv_heads, layers = model.config.num_layers;
    std::int64_t const kept = d - static_cast<std::int64_t>(static_cast<double>(d) * ratio);
    REQUIRE(d == m.at("head_dim").get<std::int64_t>());
    auto const channels_of = [&](kvc_engine::KVCache const& cache) {
      std::vector<std::vector<std::vector<std::int32_t>>> out(static_cast<std::size_t>(layers));
      for (std::int64_t l = 0; l < layers; ++l)
        for (std::int64_t h = 0; h < kv_heads; ++h) {
          REQUIRE(cache.kept_channels(l) == kept);
          out[static_cast<std::size_t>(l)].emplace_back(cache.channels(l, h), cache.channels(l, h) + kept);
        }
      return out;
    };
    INFO(m.at("model").get<std::string>());

    kvc_engine::GenerateOptions options;
    options.max_new_tokens = want.at("new_tokens");
    options.compressor = &think;
    options.keep_logits = true;
    kvc_engine::GenerateResult const r = engine.generate(prompt, options);
    json const& gen = m.at("generate");
    CHECK(r.tokens == gen.at("tokens").get<std::vector<std::int32_t>>());
    double const gen_err = max_row_relative_error(r.logits, kvc_test::load_tensor<float>(tdir, gen.at("step_logits")).data,
                                                  model.config.vocab_size);
    CHECK(gen_err <= kRelTol);
    CHECK(channels_of(r.cache) == m.at("kept_channels").get<std::vector<std::vector<std::vector<std::int32_t>>>>());
    std::int64_t const n = static_cast<std::int64_t>(prompt.size());
    CHECK(r.cache_bytes_after_prefill == layers * kv_heads * n * (kept + d) * 4);  // full: layers·kv_heads·n·2d floats
    for (std::int64_t l = 0; l < layers; ++l)
      for (std::int64_t h = 0; h < kv_heads; ++h) {
        CHECK(r.cache.packed_length(l, h) == n);
        CHECK(r.cache.length(l, h) == n + options.max_new_tokens - 1);  // every decoding step's key appended, full-width
      }

    json const& qa = m.at("question");
    std::int64_t const context = qa.at("context");
    std::vector<std::int32_t> const ctx(prompt.begin(), prompt.begin() + context), question(prompt.begin() + context, prompt.end());
    std::vector<std::int32_t> const want_answer = qa.at("tokens");
    kvc_engine::PrefillSnapshot const snap = kvc_engine::prefill_snapshot(engine, ctx, n - context + options.max_new_tokens);
    kvc_engine::CompressedCopy one = kvc_engine::compressed_copy(engine, snap, think);
    kvc_engine::CompressedCopy two = kvc_engine::compressed_copy(engine, snap, think);
    CHECK(channels_of(one.cache) == qa.at("kept_channels").get<std::vector<std::vector<std::vector<std::int32_t>>>>());
    std::int64_t const packed_bytes = one.cache.bytes_in_use(), full_bytes = snap.cache.bytes_in_use();
    CHECK(packed_bytes * 4 == full_bytes * 3);  // half the key channels: a quarter of K+V
    CHECK(one.cache.bytes_allocated() < snap.cache.bytes_allocated());      // the full-width keys were given back
    std::vector<float> probs;  // a packed layer has no full keys to read
    CHECK_THROWS_WITH(engine.attention_probabilities(one.cache, 1, snap.record.queries[1], context, 0, probs),
                      Catch::Matchers::Contains("attention probabilities read full keys; layer 1's are packed (ThinK)"));
    std::vector<float> logits = engine.forward(one.cache, question, kvc_engine::Logits::kLast);
    std::vector<float> step_logits = logits;
    std::vector<std::int32_t> tokens{kvc_engine::argmax(logits.data(), model.config.vocab_size)};
    while (tokens.size() < want_answer.size()) {
      logits = engine.forward(one.cache, {tokens.back()}, kvc_engine::Logits::kLast);
      step_logits.insert(step_logits.end(), logits.begin(), logits.end());
      tokens.push_back(kvc_engine::argmax(logits.data(), model.config.vocab_size));
    }
    CHECK(tokens == want_answer);
    double const qa_err =
        max_row_relative_error(step_logits, kvc_test::load_tensor<float>(tdir, qa.at("step_logits")).data, model.config.vocab_size);
    CHECK(qa_err <= kRelTol);
    kvc_engine::CompressedCopy three = kvc_engine::compressed_copy(engine, snap, think);
    std::vector<kvc_engine::GreedyAnswer> const batched = kvc_engine::greedy_answers(
        engine, {&two.cache, &three.cache}, question, snap.last_logits, static_cast<std::int64_t>(want_answer.size()),
        kvc_engine::kNoStopToken);
    for (auto const& a : batched) CHECK(a.tokens == want_answer);
    std::printf("engine golden: %s think %.2f keeps %lld of %lld key channels, step logits max relative error %.2e "
                "(generate) and %.2e (question), context KV bytes %lld of %lld\n",
                m.at("model").get<std::string>().c_str(), ratio, static_cast<long long>(kept), static_cast<long long>(d), gen_err,
                qa_err, static_cast<long long>(packed_bytes), static_cast<long long>(full_bytes));
    ++checked;
  }
  CHECK(checked == 3);
}

}  // namespace KVC_TEST_TU
