// kvcompress-eval's reuse of one prefill: compressing a copy of a PrefillSnapshot leaves the snapshot as it
// was, and gives exactly the cache that a fresh prefill followed by the same press gives — on the tiny
// Llama checkpoint of tests/golden/engine (GQA 4:1, llama3 RoPE) and its 203-token prompt.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "golden_fixture.hpp"
#include "kvc_engine/eval/greedy_answer.hpp"
#include "kvc_engine/eval/prefill_snapshot.hpp"
#include "kvc_engine/compression/press_registry.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

namespace {

/// Everything a cache holds that attention or a later press reads: per layer and kv head, the length, and
/// the keys, values and positions of the live entries.
struct LiveCache {
  std::vector<std::int32_t> lengths, positions;
  std::vector<float> keys, values;
  std::int64_t next_position = 0;

  bool operator==(LiveCache const& o) const {
    return lengths == o.lengths && positions == o.positions && keys == o.keys && values == o.values &&
           next_position == o.next_position;
  }
};

LiveCache live(kvc_engine::KVCache& c) {
  LiveCache out;
  out.next_position = c.next_position();
  for (std::int64_t l = 0; l < c.num_layers(); ++l)
    for (std::int64_t g = 0; g < c.kv_heads(); ++g) {
      std::int32_t const n = c.length(l, g);
      out.lengths.push_back(n);
      out.positions.insert(out.positions.end(), c.positions(l, g), c.positions(l, g) + n);
      out.keys.insert(out.keys.end(), c.keys(l, g), c.keys(l, g) + n * c.head_dim());
      out.values.insert(out.values.end(), c.values(l, g), c.values(l, g) + n * c.head_dim());
    }
  return out;
}

}  // namespace

TEST_CASE("eval snapshot: compressed copies leave the snapshot intact and equal a fresh prefill + press",
          "[golden][engine][eval]") {
  std::string const dir = std::string(KVC_GOLDEN_DIR) + "/engine/llama";
  std::vector<std::int32_t> const prompt = kvc_test::load_json(dir + "/engine.json").at("prompt");
  kvc_engine::Model const model = kvc_engine::load_model(dir + "/checkpoint");
  kvc_engine::Engine engine(model, 1);

  kvc_engine::PrefillSnapshot const snap = kvc_engine::prefill_snapshot(engine, prompt, 8);
  CHECK(snap.cache.capacity() >= static_cast<std::int64_t>(prompt.size()) + 8);
  kvc_engine::KVCache snap_cache = snap.cache;
  LiveCache const before = live(snap_cache);
  REQUIRE(before.lengths.front() == static_cast<std::int32_t>(prompt.size()));

  int checked = 0;
  // Window presses (SnapKV, PyramidKV's per-layer budgets, TOVA), query statistics (ExpectedAttention),
  // attention probabilities (ObservedAttention), key-only scores (Knorm) and a press with a pass of its
  // own over the whole cache (KVCompose).
  for (std::string const press : {"expected_attention", "snapkv", "pyramidkv", "tova", "observed_attention", "knorm", "kvcompose"}) {
    for (double const ratio : {0.25, 0.75}) {
      INFO(press << " at " << ratio);
      kvc_engine::Compressor const compressor = kvc_engine::make_compressor(press, ratio, engine.device());
      kvc_engine::CompressedCopy copy = kvc_engine::compressed_copy(engine, snap, compressor);

      kvc_engine::KVCache fresh = engine.new_cache();
      std::vector<float> const fresh_logits = engine.forward(fresh, prompt, kvc_engine::Logits::kLast, &compressor);

      LiveCache const compressed = live(copy.cache);
      CHECK(compressed == live(fresh));
      CHECK(compressed.lengths.front() < before.lengths.front());  // it did compress
      CHECK(fresh_logits == snap.last_logits);
      CHECK(copy.compress_seconds > 0.0);
      kvc_engine::KVCache again = snap.cache;
      CHECK(live(again) == before);
      ++checked;
    }
  }
  CHECK(checked == 14);

  // The full cache (no press) is the snapshot itself.
  kvc_engine::CompressedCopy full = kvc_engine::compressed_copy(engine, snap, kvc_engine::make_compressor("none", 0.0));
  CHECK(live(full.cache) == before);
  CHECK(full.compress_seconds == 0.0);
}

TEST_CASE("batched answers: forward_batch and greedy_answers equal one sequence at a time", "[golden][engine][eval]") {
  std::string const dir = std::string(KVC_GOLDEN_DIR) + "/engine/llama";
  std::vector<std::int32_t> const prompt = kvc_test::load_json(dir + "/engine.json").at("prompt");
  kvc_engine::Model const model = kvc_engine::load_model(dir + "/checkpoint");
  kvc_engine::Engine engine(model, 2);
  std::int64_t const vocab = model.config.vocab_size, budget = 6;
  std::vector<std::int32_t> const question(prompt.end() - 5, prompt.end());
  kvc_engine::PrefillSnapshot const snap = kvc_engine::prefill_snapshot(engine, prompt, 5 + budget);
  // Caches of different lengths per head (the presses) continue the same context side by side.
  std::vector<kvc_engine::Compressor> const compressors{
      kvc_engine::make_compressor("none", 0.0), kvc_engine::make_compressor("snapkv", 0.5, engine.device()),
      kvc_engine::make_compressor("adakv_expected_attention", 0.75, engine.device()), kvc_engine::make_compressor("knorm", 0.25, engine.device())};
  std::vector<kvc_engine::CompressedCopy> singles, batched;
  std::vector<kvc_engine::KVCache*> caches;
  for (auto const& c : compressors) {
    singles.push_back(kvc_engine::compressed_copy(engine, snap, c));
    batched.push_back(kvc_engine::compressed_copy(engine, snap, c));
  }
  for (auto& c : batched) caches.push_back(&c.cache);

  SECTION("the question's logits") {
    std::vector<std::int32_t> tokens;
    for (std::size_t b = 0; b < caches.size(); ++b) tokens.insert(tokens.end(), question.begin(), question.end());
    std::vector<float> const together = engine.forward_batch(caches, tokens.data(), static_cast<std::int64_t>(question.size()));
    REQUIRE(together.size() == caches.size() * static_cast<std::size_t>(vocab));
    for (std::size_t b = 0; b < caches.size(); ++b) {
      std::vector<float> const alone = engine.forward(singles[b].cache, question, kvc_engine::Logits::kLast);
      float worst = 0.0f, scale = 0.0f;
      for (std::int64_t i = 0; i < vocab; ++i) {
        worst = std::max(worst, std::abs(alone[static_cast<std::size_t>(i)] - together[b * static_cast<std::size_t>(vocab) + static_cast<std::size_t>(i)]));
        scale = std::max(scale, std::abs(alone[static_cast<std::size_t>(i)]));
      }
      CHECK(worst <= 1e-5f * scale);
      CHECK(batched[b].cache.next_position() == singles[b].cache.next_position());
      for (std::int64_t l = 0; l < model.config.num_layers; ++l)
        for (std::int64_t g = 0; g < model.config.num_kv_heads; ++g)
          CHECK(batched[b].cache.length(l, g) == singles[b].cache.length(l, g));
    }
  }
  SECTION("the greedy answers") {
    std::vector<kvc_engine::GreedyAnswer> const together =
        kvc_engine::greedy_answers(engine, caches, question, snap.last_logits, budget, kvc_engine::kNoStopToken);
    REQUIRE(together.size() == caches.size());
    for (std::size_t b = 0; b < caches.size(); ++b) {
      kvc_engine::GreedyAnswer const alone =
          kvc_engine::greedy_answer(engine, singles[b].cache, question, snap.last_logits, budget, kvc_engine::kNoStopToken);
      // A token could only differ where two logits tie to rounding; none comes close here.
      for (float m : alone.margins) REQUIRE(m > 1e-3f);
      CHECK(together[b].tokens == alone.tokens);
      CHECK(together[b].decode_passes == alone.decode_passes);
      CHECK(static_cast<std::int64_t>(together[b].tokens.size()) == budget);
    }
  }
  SECTION("a stop token ends each answer on its own") {
    kvc_engine::GreedyAnswer const first =
        kvc_engine::greedy_answer(engine, singles[0].cache, question, snap.last_logits, budget, kvc_engine::kNoStopToken);
    std::int32_t const stop = first.tokens[2];  // the full cache's third token: its answer stops at it
    auto const end = std::find(first.tokens.begin() + 1, first.tokens.end(), stop) + 1;
    std::vector<kvc_engine::GreedyAnswer> const together =
        kvc_engine::greedy_answers(engine, caches, question, snap.last_logits, budget, stop);
    CHECK(together[0].tokens == std::vector<std::int32_t>(first.tokens.begin(), end));
    for (auto const& a : together) {
      auto const at = std::find(a.tokens.begin() + 1, a.tokens.end(), stop);
      CHECK((at == a.tokens.end() ? static_cast<std::int64_t>(a.tokens.size()) == budget : at + 1 == a.tokens.end()));
    }
  }
  SECTION("bad batches are errors naming the cache") {
    std::vector<kvc_engine::KVCache*> twice{caches[0], caches[0]};
    std::int32_t const tokens[2] = {1, 2};
    CHECK_THROWS_WITH(engine.forward_batch(twice, tokens, 1), Catch::Contains("caches[0] and caches[1] are the same cache"));
    std::vector<kvc_engine::KVCache*> with_null{caches[0], nullptr};
    CHECK_THROWS_WITH(engine.forward_batch(with_null, tokens, 1), Catch::Contains("caches[1] is null"));
    CHECK_THROWS_WITH(engine.forward_batch({}, tokens, 1), Catch::Contains("at least one cache"));
  }
}

}  // namespace KVC_TEST_TU
