#pragma once
// A layer compressed whole on one process and split over the ranks of a tensor-parallel group: the
// scenarios shared by the in-process (thread) tests and the MPI tests. Each rank copies its kv heads
// out of the whole layer; its activations are strided views of the whole layer's query heads.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kvcompress/kvcompress.hpp"
#include "test_util.hpp"

namespace kvc_shard {

using kvcompress::Observation;

/// Kv heads of each rank, in rank order.
using Split = std::vector<std::int64_t>;

/// The splits tried on P ranks of H heads: balanced (engines' H·r/P boundaries) and lopsided.
inline std::vector<Split> splits_for(int p, std::int64_t heads) {
  Split balanced, lopsided;
  for (int r = 0; r < p; ++r) balanced.push_back(heads * (r + 1) / p - heads * r / p);
  for (int r = 0; r < p; ++r) lopsided.push_back(r == p - 1 ? heads - (p - 1) : 1);
  if (lopsided == balanced) return {balanced};
  return {balanced, lopsided};
}

inline std::int64_t first_head(Split const& split, int rank) {
  std::int64_t f = 0;
  for (int r = 0; r < rank; ++r) f += split[static_cast<std::size_t>(r)];
  return f;
}

/// The whole layer: a cache and the activations an engine hands a press.
struct Layer {
  std::int64_t batch, heads, group, n, d, window, hidden;
  kvc_test::OwnedCache<float> cache;
  std::vector<float> queries;  // [batch, q_heads, n, d] pre-RoPE
  std::vector<float> window_q; // [batch, q_heads, window, d] post-RoPE
  std::vector<float> wo;       // [hidden, q_heads * d]
  std::vector<float> attention;  // [batch, q_heads, n, n] causal rows of positive weights
  kvcompress::RotaryEmbedding rope;

  Layer(std::int64_t batch_, std::int64_t heads_, std::int64_t group_, std::int64_t n_, std::int64_t cap,
        std::int64_t d_, std::uint32_t seed)
      : batch(batch_), heads(heads_), group(group_), n(n_), d(d_), window(4), hidden(24),
        cache(batch_, heads_, cap, d_),
        queries(kvc_test::random_vector(static_cast<std::size_t>(batch_ * heads_ * group_ * n_ * d_), seed + 1)),
        window_q(kvc_test::random_vector(static_cast<std::size_t>(batch_ * heads_ * group_ * 4 * d_), seed + 2)),
        wo(kvc_test::random_vector(static_cast<std::size_t>(24 * heads_ * group_ * d_), seed + 3, 0.3f)),
        attention(kvc_test::random_vector(static_cast<std::size_t>(batch_ * heads_ * group_ * n_ * n_), seed + 4)),
        rope(rope_config(d_)) {
    cache.fill_random(seed);
    for (std::size_t i = 0; i < attention.size(); ++i) {  // row t of a [n, n] block sees slots ≤ t
      auto const t = static_cast<std::int64_t>(i) / n_ % n_, slot = static_cast<std::int64_t>(i) % n_;
      attention[i] = slot <= t ? std::abs(attention[i]) : 0.0f;
    }
    std::fill(cache.lengths.begin(), cache.lengths.end(), static_cast<std::int32_t>(n_));
  }

  static kvcompress::RopeConfig rope_config(std::int64_t d) {
    kvcompress::RopeConfig c;
    c.head_dim = static_cast<int>(d);
    return c;
  }

  [[nodiscard]] std::int64_t q_heads() const { return heads * group; }
};

/// One rank's kv heads [first, first + count) of the layer, with its own cache.
struct Part {
  std::int64_t first, count;
  kvc_test::OwnedCache<float> cache;

  Part(Layer const& layer, std::int64_t first_, std::int64_t count_)
      : first(first_), count(count_), cache(layer.batch, count_, layer.cache.extents.capacity, layer.d) {
    std::int64_t const cap = layer.cache.extents.capacity, row = cap * layer.d;
    for (std::int64_t b = 0; b < layer.batch; ++b)
      for (std::int64_t h = 0; h < count; ++h) {
        std::int64_t const src = (b * layer.heads + first + h) * row, dst = (b * count + h) * row;
        std::copy_n(layer.cache.k.begin() + src, row, cache.k.begin() + dst);
        std::copy_n(layer.cache.v.begin() + src, row, cache.v.begin() + dst);
        cache.lengths[static_cast<std::size_t>(b * count + h)] =
            layer.cache.lengths[static_cast<std::size_t>(b * layer.heads + first + h)];
      }
  }
};

/// The observation of kv heads [first, first + count): views of their query heads.
/// With `attention`, also the attention probabilities (presses that have both paths then read them).
inline Observation<float> observe(Layer const& layer, std::int64_t first, std::int64_t count, int layer_idx = 0,
                                  int num_layers = 1, bool attention = false) {
  std::int64_t const qh = layer.q_heads(), g = layer.group, d = layer.d;
  Observation<float> obs;
  obs.layer_idx = layer_idx;
  obs.num_layers = num_layers;
  obs.queries = kvcompress::make_tensor4(layer.queries.data() + first * g * layer.n * d, {layer.batch, count * g, layer.n, d},
                                         {qh * layer.n * d, layer.n * d, d, 1});
  obs.window_queries =
      kvcompress::make_tensor4(layer.window_q.data() + first * g * layer.window * d, {layer.batch, count * g, layer.window, d},
                               {qh * layer.window * d, layer.window * d, d, 1});
  obs.output_projection =
      kvcompress::make_tensor2(layer.wo.data() + first * g * d, {layer.hidden, count * g * d}, {qh * d, 1});
  if (attention)
    obs.attention = kvcompress::make_tensor4(layer.attention.data() + first * g * layer.n * layer.n,
                                             {layer.batch, count * g, layer.n, layer.n},
                                             {qh * layer.n * layer.n, layer.n * layer.n, layer.n, 1});
  obs.rope = &layer.rope;
  return obs;
}

/// Compresses a cache with a press; the scenario decides which.
using Run = std::function<void(Observation<float> const&, kvcompress::KVCacheView<float>)>;

/// Lengths, then each row's kept keys and values, of heads [first, first + count) of `cache`
/// (a cache of `heads` heads): what must match between the whole layer and a rank.
inline std::vector<float> kept(kvc_test::OwnedCache<float> const& cache, std::int64_t first, std::int64_t count) {
  auto const& e = cache.extents;
  std::vector<float> out;
  for (std::int64_t b = 0; b < e.batch; ++b)
    for (std::int64_t h = first; h < first + count; ++h) {
      std::int64_t const r = b * e.kv_heads + h, len = cache.lengths[static_cast<std::size_t>(r)];
      out.push_back(static_cast<float>(len));
      std::int64_t const base = r * e.capacity * e.head_dim;
      out.insert(out.end(), cache.k.begin() + base, cache.k.begin() + base + len * e.head_dim);
      out.insert(out.end(), cache.v.begin() + base, cache.v.begin() + base + len * e.head_dim);
    }
  return out;
}

/// A press scenario: a name, the layer it runs on and how to compress.
struct Scenario {
  std::string name;
  std::function<Layer()> make_layer;
  Run run;
  int layer_idx = 0;
  int num_layers = 1;
  bool attention = false;  // hand over the attention probabilities
};

inline Layer default_layer() { return Layer(2, 8, 2, 40, 40, 16, 7); }

/// A layer whose scores tie across heads: every head holds the same keys and values, so an inner
/// press that scores entries by themselves gives all heads the same scores.
inline Layer tied_layer() {
  Layer l(1, 8, 2, 32, 32, 8, 11);
  std::int64_t const row = l.cache.extents.capacity * l.d;
  for (std::int64_t h = 1; h < l.heads; ++h) {
    std::copy_n(l.cache.k.begin(), row, l.cache.k.begin() + h * row);
    std::copy_n(l.cache.v.begin(), row, l.cache.v.begin() + h * row);
  }
  return l;
}

/// The presses that couple the kv heads (and PyramidKV, whose budget is the layer's), each on the
/// whole layer and on every rank.
inline std::vector<Scenario> coupled_scenarios() {
  using namespace kvcompress;
  auto const one = [](auto press) -> Run {
    return [press](Observation<float> const& obs, KVCacheView<float> view) { compress(cpu, press, obs, view); };
  };
  ExpectedAttentionPress ea{0.6};
  ea.n_future_positions = 16;
  ea.n_sink = 2;
  ExpectedAttentionPress ea_plain = ea;
  ea_plain.use_vnorm = false;
  return {
      {"AdaKV(ExpectedAttention)", default_layer, one(AdaKVPress{ea, 0.2})},
      {"AdaKV(Knorm) with exact ties across heads", tied_layer, one(AdaKVPress{KnormPress{0.5}, 0.1})},
      {"AdaKV(StreamingLLM), every score a tie", default_layer, one(AdaKVPress{StreamingLLMPress{0.7, 2}, 0.0})},
      {"CriticalAdaKV(ExpectedAttention)", default_layer, one(CriticalAdaKVPress{ea_plain, 0.2})},
      {"TOVA", default_layer, one(TOVAPress{0.5})},
      {"AdaKV(TOVA)", default_layer, one(AdaKVPress{TOVAPress{0.5}, 0.2})},
      {"PyramidKV", default_layer, one(PyramidKVPress{0.5, 4, 3, 2.0}), 3, 8},
  };
}

/// Random inputs that a press reads beside the observation, for the largest layer of these tests
/// (batch 2, 8 kv heads, head_dim 16), kept alive by the scenarios that hold them.
inline std::shared_ptr<std::vector<float>> side_input(std::size_t per_head, std::uint32_t seed, float scale = 1.0f) {
  return std::make_shared<std::vector<float>>(kvc_test::random_vector(2 * 8 * per_head, seed, scale));
}

/// The presses made shard-invariant after the first ones: they combine the kv heads (ChunkKV's chunk
/// sums, SimLayerKV's statistic, the Compactor family's z-scores, SnapKV's window score under AdaKV)
/// or index per-head data by the layer's head (QFilter, Random).
inline std::vector<Scenario> combining_scenarios() {
  using namespace kvcompress;
  auto const one = [](auto press) -> Run {
    return [press](Observation<float> const& obs, KVCacheView<float> view) { compress(cpu, press, obs, view); };
  };
  ExpectedAttentionPress ea{0.6};
  ea.n_future_positions = 16;
  ea.n_sink = 2;
  auto const sketch = side_input(16 * 6, 41, 0.4f);  // [batch, heads, head_dim 16, sketch_dimension 6]
  auto const filters = side_input(16, 43);           // [1 layer, heads, head_dim 16] (batch 2 is spare)
  auto const with_sketch = [sketch](auto press) -> Run {
    return [press, sketch](Observation<float> const& obs, KVCacheView<float> view) {
      auto p = press;
      p.sketch = sketch->data();
      compress(cpu, p, obs, view);
    };
  };
  LeverageScorePress leverage{0.5, 6};
  CompactorPress compactor{0.5, 3, 2, 16, 6};
  QFilterPress qfilter{0.5, filters->data(), 1, 0, 16};
  return {
      {"ChunkKV(Knorm)", default_layer, one(ChunkKVPress{KnormPress{0.5}, 6})},
      {"ChunkKV(SnapKV)", default_layer, one(ChunkKVPress{SnapKVPress{0.6, 4, 3}, 5})},
      {"ChunkKV(ExpectedAttention), no complete chunk", default_layer, one(ChunkKVPress{ea, 64})},
      {"ChunkKV(TOVA)", default_layer, one(ChunkKVPress{TOVAPress{0.5}, 7})},
      {"AdaKV(SnapKV), the window competing across heads", default_layer, one(AdaKVPress{SnapKVPress{0.95, 4, 3}, 0.0})},
      {"SimLayerKV, a lazy layer", default_layer, one(SimLayerKVPress{0.2, 4, 8, 4})},
      {"SimLayerKV, a busy layer", default_layer, one(SimLayerKVPress{0.9, 4, 8, 4})},
      {"LeverageScore", default_layer, with_sketch(leverage)},
      {"NonCausalAttn", default_layer, one(NonCausalAttnPress{0.5, 16})},
      {"Compactor", default_layer, with_sketch(compactor)},
      {"QFilter", default_layer,
       [qfilter, filters](Observation<float> const& obs, KVCacheView<float> view) {
         auto p = qfilter;
         p.num_kv_heads = static_cast<int>(obs.shard.kv_heads > 0 ? obs.shard.kv_heads : view.extents.kv_heads);
         compress(cpu, p, obs, view);
       }},
      {"Random, seeded", default_layer, one(RandomPress{0.5, 1234})},
  };
}

/// The layer's kv heads as a rank sees them (the observation's, else the cache's).
inline std::int64_t layer_heads(Observation<float> const& obs, kvcompress::KVCacheView<float> const& view) {
  return obs.shard.kv_heads > 0 ? obs.shard.kv_heads : view.extents.kv_heads;
}

/// The presses that came after the first shard-invariant ones and couple heads, or protect entries
/// with the layer's maximum (which a press that combines heads reads): with a communicator.
inline std::vector<Scenario> later_coupled_scenarios() {
  using namespace kvcompress;
  auto const one = [](auto press) -> Run {
    return [press](Observation<float> const& obs, KVCacheView<float> view) { compress(cpu, press, obs, view); };
  };
  auto curves = std::make_shared<std::vector<float>>(kvc_test::random_vector(99 * 8, 51));  // [99, 1 layer, heads]
  for (float& x : *curves) x = std::abs(x) * 0.8f;
  auto const head_scores = side_input(1, 53);  // [2 layers, heads] (batch 2 of side_input: 16 values)
  auto const hidden = std::make_shared<std::vector<float>>(kvc_test::random_vector(2 * 40 * 24, 55));  // [batch, 1, n, 24]
  auto const surrogate = std::make_shared<std::vector<float>>(kvc_test::random_vector(8 * 24 + 8 + 5 * 24 + 5 + 8 * 5 + 8, 57, 0.3f));
  auto const kvzap = [hidden, surrogate](bool mlp) -> Run {
    return [hidden, surrogate, mlp](Observation<float> const& given, KVCacheView<float> view) {
      Observation<float> obs = given;
      std::int64_t const n = view.lengths[0];
      obs.hidden_states = make_tensor4(hidden->data(), {view.extents.batch, 1, n, 24});
      float const* w = surrogate->data();
      KVzapPress press{0.5, mlp ? KVzapModelType::kMlp : KVzapModelType::kLinear, {}};
      press.weights.hidden_size = 24;
      press.weights.kv_heads = layer_heads(given, view);
      if (mlp) press.weights = {w, w + 5 * 24, w + 5 * 24 + 5, w + 5 * 24 + 5 + 8 * 5, 24, 5, layer_heads(given, view)};
      else press.weights = {w, w + 8 * 24, nullptr, nullptr, 24, 0, layer_heads(given, view)};
      compress(cpu, press, obs, view);
    };
  };
  CapPress cap{0.5, 5.0, 16, 2};
  FinchPress finch{0.5, 0, true, true, 4};
  return {
      {"LUKV(Knorm)", default_layer,
       [curves](Observation<float> const& obs, KVCacheView<float> view) {
         LUKVPress<KnormPress> press{KnormPress{}, 0.5, 2, 2, curves->data(), 1, layer_heads(obs, view)};
         compress(cpu, press, obs, view);
       }},
      {"DuoAttention", default_layer,
       [head_scores](Observation<float> const& obs, KVCacheView<float> view) {
         DuoAttentionPress press{0.5, 4, 8, head_scores->data(), 2, layer_heads(obs, view)};
         compress(cpu, press, obs, view);
       },
       1, 2},
      {"KVzap, linear", default_layer, kvzap(false)},
      {"KVzap, MLP", default_layer, kvzap(true)},
      {"AdaKV(CAP), the sinks competing across heads", default_layer, one(AdaKVPress{CapPress{0.9, 5.0, 16, 3}, 0.0})},
      {"AdaKV(Finch), the window competing across heads", default_layer, one(AdaKVPress{FinchPress{0.95, 0, true, false, 4}, 0.0})},
      {"ChunkKV(CAP)", default_layer, one(ChunkKVPress{cap, 5})},
      {"CAP", default_layer, one(cap)},
      {"Finch", default_layer, one(finch)},
      {"Merging(TOVA)", default_layer, one(MergingPress<TOVAPress>{TOVAPress{0.5}, 0.0, 1.0})},
      {"EntropyGatedChunkKV(Knorm)", default_layer, one(EntropyGatedChunkKVPress{KnormPress{0.5}, 6, 2})},
      {"EntropyGatedChunkKV(SnapKV)", default_layer, one(EntropyGatedChunkKVPress{SnapKVPress{0.7, 4, 3}, 5, 2})},
  };
}

/// Later presses that are per head: each rank alone, with no communicator.
inline std::vector<Scenario> later_per_head_scenarios() {
  using namespace kvcompress;
  auto const one = [](auto press) -> Run {
    return [press](Observation<float> const& obs, KVCacheView<float> view) { compress(cpu, press, obs, view); };
  };
  return {
      {"CUR", default_layer, one(CURPress{0.5, 2})},
      {"CAP", default_layer, one(CapPress{0.5, 5.0, 16, 2})},
      {"Finch, chunked, keys re-rotated", default_layer, one(FinchPress{0.5, 12, true, true, 4})},
      {"Merging(Knorm)", default_layer, one(MergingPress<KnormPress>{KnormPress{0.5}, 0.0, 0.5})},
  };
}

/// Per-head presses: each rank compresses its heads alone, with no communicator.
inline std::vector<Scenario> per_head_scenarios() {
  using namespace kvcompress;
  auto const one = [](auto press) -> Run {
    return [press](Observation<float> const& obs, KVCacheView<float> view) { compress(cpu, press, obs, view); };
  };
  ExpectedAttentionPress ea{0.6};
  ea.n_future_positions = 16;
  ea.n_sink = 2;
  return {
      {"ExpectedAttention", default_layer, one(ea)},
      {"SnapKV", default_layer, one(SnapKVPress{0.5, 4, 3})},
      {"ObservedAttention", default_layer, one(ObservedAttentionPress{0.5}), 0, 1, true},
      {"Knorm", default_layer, one(KnormPress{0.5})},
      {"CriticalKV(ExpectedAttention)", default_layer, one(CriticalKVPress{ea, 1e-4, 0.5})},
  };
}

/// The decoding scenario: DecodingPress(TOVA) over `steps` decode steps after a prefill of 24,
/// compressing every 4 steps to 20 entries per row.
struct Decoding {
  static constexpr std::int64_t kPrefill = 24, kSteps = 10;

  static Layer make_layer() {
    Layer l(1, 8, 2, kPrefill + kSteps, kPrefill + kSteps, 16, 23);
    std::fill(l.cache.lengths.begin(), l.cache.lengths.end(), static_cast<std::int32_t>(kPrefill));
    return l;
  }

  /// Runs the prefill and the steps on kv heads [first, first + count) of `layer`, whose keys and
  /// values for slot kPrefill + j are those of the whole layer's slot kPrefill + j (appended at
  /// each row's current length). `cache` holds those heads; `shard` is set on each observation.
  static void run(Layer const& layer, kvc_test::OwnedCache<float>& cache, std::int64_t first,
                  kvcompress::TensorParallelShard shard) {
    using namespace kvcompress;
    std::int64_t const count = cache.extents.kv_heads, d = layer.d, cap = cache.extents.capacity;
    DecodingPress<TOVAPress> press(TOVAPress{}, DecodingOptions{4, 20, 8},
                                   QueryBufferShape{1, layer.batch, count * layer.group, d});
    std::vector<float> step_q(static_cast<std::size_t>(layer.batch * count * layer.group * d));
    // The appended entries: positions past the prefill, kept in the spare slots of the whole layer.
    kvc_test::OwnedCache<float> const& src = layer.cache;
    Observation<float> prefill = observe(layer, first, count);
    prefill.position = 0;
    prefill.shard = shard;
    press.step(cpu, prefill, cache.view());
    for (std::int64_t j = 0; j < kSteps; ++j) {
      for (std::int64_t h = 0; h < count; ++h) {
        std::int32_t& len = cache.lengths[static_cast<std::size_t>(h)];
        std::int64_t const s = ((first + h) * src.extents.capacity + kPrefill + j) * d, t = (h * cap + len) * d;
        std::copy_n(src.k.begin() + s, d, cache.k.begin() + t);
        std::copy_n(src.v.begin() + s, d, cache.v.begin() + t);
        ++len;
      }
      for (std::int64_t q = 0; q < count * layer.group; ++q)
        std::copy_n(layer.queries.begin() + (((first * layer.group + q) * layer.n) + kPrefill + j) * d, d,
                    step_q.begin() + q * d);
      Observation<float> obs;
      obs.queries = make_tensor4(step_q.data(), {layer.batch, count * layer.group, 1, d});
      obs.position = kPrefill + j;
      obs.rope = &layer.rope;
      obs.shard = shard;
      press.step(cpu, obs, cache.view());
    }
  }
};

}  // namespace kvc_shard
