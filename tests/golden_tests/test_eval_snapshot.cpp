// kvcompress-eval's reuse of one prefill: compressing a copy of a PrefillSnapshot leaves the snapshot as it
// was, and gives exactly the cache that a fresh prefill followed by the same press gives — on the tiny
// Llama checkpoint of tests/golden/engine (GQA 4:1, llama3 RoPE) and its 203-token prompt.
#include <catch2/catch.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "golden_fixture.hpp"
#include "kvc_engine/prefill_snapshot.hpp"
#include "kvc_engine/press_registry.hpp"

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
