#pragma once
// A small model (three layers of six kv heads, or of eight, batch 1) compressed by the presses that
// evict across layers and heads (KVzip, FastKVzip) and by KVCompose, whole on one process or split over
// the ranks of a group: the pipelines shared by the thread tests (test_shard_cross_layer.cpp) and the
// MPI tests.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <utility>
#include <vector>

#include "kvcompress/kvcompress.hpp"
#include "shard/shard_harness.hpp"
#include "test_util.hpp"

namespace kvc_shard {

using kvcompress::cpu;
using kvcompress::FastKVzipGate;
using kvcompress::FastKVzipPress;
using kvcompress::KVComposePress;
using kvcompress::KVComposeStatistics;
using kvcompress::KVzipPress;
using kvcompress::TensorParallelShard;
using kvcompress::Workspace;

/// KVCompose's structured form at ratio 0.6.
inline KVComposePress kvcompose_structured() {
  KVComposePress press;
  press.compression_ratio = 0.6;
  return press;
}

/// Its unstructured form with value norms and a per-token lower bound of 2.
inline KVComposePress kvcompose_unstructured() {
  KVComposePress press = kvcompose_structured();
  press.structured = false;
  press.add_v_norm = true;
  press.keep_token_lower_bound = 2;
  return press;
}

constexpr int kLayers = 3;
constexpr std::int64_t kHeads = 6, kGroup = 2, kDim = 8;

/// Layers of `heads` kv heads (batch 1) whose rows hold n entries.
inline std::deque<Layer> make_model(std::int64_t n, std::uint32_t seed, std::int64_t heads = kHeads) {
  std::deque<Layer> model;  // a Layer neither copies nor moves cheaply; a deque never relocates
  for (int l = 0; l < kLayers; ++l) model.emplace_back(1, heads, kGroup, n, n, kDim, seed + 10u * static_cast<std::uint32_t>(l));
  return model;
}

/// Scores layer l's heads [first, first + count) of `cache` into out [count, ctx].
using ScoreFn = std::function<void(int l, kvc_test::OwnedCache<float>& cache, std::int64_t first, std::int64_t count,
                                   TensorParallelShard const& shard, float* out)>;

/// One process's heads of the model after the cross-layer eviction.
struct Evicted {
  std::deque<Part> parts;            // [layers]
  std::vector<float> scores;         // [layers, count, ctx] after the sink protection
  std::vector<std::int64_t> pruned;  // [layers]
};

/// KVzip's and FastKVzip's pipeline on heads [first, first + count) of every layer: score, protect the
/// sinks (KVzip), count each layer's evictions, evict. Without a communicator, the single-process
/// functions on the whole model.
inline Evicted evict_model(std::deque<Layer> const& model, std::int64_t first, std::int64_t count, std::int64_t ctx,
                    TensorParallelShard const& shard, ScoreFn const& score, KVzipPress const* sinks, double ratio, bool layerwise) {
  Evicted out;
  for (Layer const& layer : model) out.parts.emplace_back(layer, first, count);
  out.scores.assign(static_cast<std::size_t>(kLayers * count * ctx), 0.0f);
  for (int l = 0; l < kLayers; ++l) score(l, out.parts[static_cast<std::size_t>(l)].cache, first, count, shard, out.scores.data() + l * count * ctx);
  out.pruned.assign(kLayers, -1);
  if (shard.split()) {
    if (sinks != nullptr) sinks->protect_sinks(out.scores.data(), kLayers, count, ctx, shard);
    kvcompress::cross_layer_pruned_counts(out.scores.data(), kLayers, count, ctx, ratio, layerwise, out.pruned.data(), shard);
  } else {
    if (sinks != nullptr) sinks->protect_sinks(out.scores.data(), kLayers * count, ctx);
    kvcompress::cross_layer_pruned_counts(out.scores.data(), kLayers, count * ctx, ratio, layerwise, out.pruned.data());
  }
  for (int l = 0; l < kLayers; ++l) {
    auto& cache = out.parts[static_cast<std::size_t>(l)].cache;
    std::fill(cache.lengths.begin(), cache.lengths.end(), static_cast<std::int32_t>(ctx));  // the context's entries only
    std::int64_t const cap = cache.extents.capacity;
    std::vector<float> padded(static_cast<std::size_t>(count * cap), 0.0f);  // [count, capacity]
    for (std::int64_t h = 0; h < count; ++h)
      std::copy_n(out.scores.begin() + (l * count + h) * ctx, ctx, padded.begin() + h * cap);
    std::vector<std::byte> scratch(kvcompress::evict_lowest_across_heads_workspace_bytes(cpu, cache.view(), shard));
    Workspace ws(scratch.data(), scratch.size());
    if (shard.split())
      kvcompress::evict_lowest_across_heads(cpu, cache.view(), padded.data(), out.pruned[static_cast<std::size_t>(l)], ws, shard);
    else
      kvcompress::evict_lowest_across_heads(cpu, cache.view(), padded.data(), out.pruned[static_cast<std::size_t>(l)], ws);
  }
  return out;
}

constexpr std::int64_t kContext = 24, kRepeat = 5;  // KVzip: context entries, reconstruction tokens

/// KVzip's scores of a model whose rows hold the context and the reconstruction input.
inline ScoreFn kvzip_scores(std::deque<Layer> const& model, KVzipPress const& press, std::vector<float> const& hidden) {
  return [&model, press, &hidden](int l, kvc_test::OwnedCache<float>& cache, std::int64_t first, std::int64_t count,
                                  TensorParallelShard const& shard, float* out) {
    Observation<float> obs = kvc_shard::observe(model[static_cast<std::size_t>(l)], first, count, l, kLayers);
    obs.queries.shape[2] = kRepeat;  // the reconstruction input's queries
    obs.position = kContext;
    obs.hidden_states = kvcompress::make_tensor4(hidden.data() + l * kRepeat * 24, {1, 1, kRepeat, 24});
    obs.shard = shard;
    for (std::int64_t start = 0; start < kContext; start += press.chunk_size)
      press.score_chunk(cpu, obs, cache.view(), kContext, start, std::min(start + press.chunk_size, kContext), out);
  };
}

constexpr std::int64_t kGateHidden = 12, kGateDim = 4, kGateSink = 3, kTokens = 32;

/// A FastKVzip gate per layer of `heads` kv heads with its weights.
struct Gates {
  std::vector<std::vector<float>> weights;  // per layer: q_proj weight, bias, k_proj weight, norms, k_base, b
  std::vector<FastKVzipGate> gates;

  explicit Gates(std::int64_t heads = kHeads) {
    std::int64_t const q = heads * kGroup * kGateDim;
    for (int l = 0; l < kLayers; ++l) {
      auto const seed = 70u + 10u * static_cast<std::uint32_t>(l);
      weights.push_back(kvc_test::random_vector(static_cast<std::size_t>(q * kGateHidden), seed, 0.5f));
      weights.push_back(kvc_test::random_vector(static_cast<std::size_t>(q), seed + 1, 0.2f));
      weights.push_back(kvc_test::random_vector(static_cast<std::size_t>(heads * kGateDim * kGateHidden), seed + 2, 0.5f));
      weights.push_back(kvc_test::random_vector(static_cast<std::size_t>(kGateDim), seed + 3, 1.0f));
      weights.push_back(kvc_test::random_vector(static_cast<std::size_t>(heads * kGateSink * kGateDim), seed + 4, 1.0f));
      weights.push_back(kvc_test::random_vector(static_cast<std::size_t>(heads * kGroup), seed + 5, 1.0f));
    }
    for (int l = 0; l < kLayers; ++l) {
      auto const w = [&](int i) -> std::vector<float> const& { return weights[static_cast<std::size_t>(6 * l + i)]; };
      gates.push_back({w(0).data(), w(1).data(), w(2).data(), w(3).data(), w(3).data(), w(4).data(), w(5).data(), kGateHidden, heads,
                       kGroup, kGateDim, kGateSink});
    }
  }
};

inline ScoreFn fast_kvzip_scores(FastKVzipPress const& press, Gates const& gates, std::vector<float> const& hidden) {
  return [press, &gates, &hidden](int l, kvc_test::OwnedCache<float>&, std::int64_t first, std::int64_t count,
                                  TensorParallelShard const& shard, float* out) {
    auto const x = kvcompress::make_tensor4(hidden.data() + l * kTokens * kGateHidden, {1, 1, kTokens, kGateHidden});
    FastKVzipGate const& gate = gates.gates[static_cast<std::size_t>(l)];
    if (shard.split())
      press.score_layer(cpu, gate.heads(first, count), x, out, shard);
    else
      press.score_layer(cpu, gate, x, out);
  };
}

constexpr std::int64_t kReplay = 3;  // KVCompose: rows of each replay pass

/// KVCompose's replay attention of a model of `heads` kv heads per layer and pass, [1, q_heads,
/// kReplay, kTokens + kReplay].
inline std::vector<std::vector<float>> replay_attention(std::int64_t heads = kHeads) {
  std::vector<std::vector<float>> out;
  for (int i = 0; i < 2 * kLayers; ++i) {
    auto a = kvc_test::random_vector(static_cast<std::size_t>(heads * kGroup * kReplay * (kTokens + kReplay)), 100u + static_cast<std::uint32_t>(i));
    for (float& x : a) x = std::abs(x) / 8.0f;
    out.push_back(std::move(a));
  }
  return out;
}

/// KVCompose on heads [first, first + count) of every layer: the plan and the compressed parts.
struct Composed {
  kvcompress::KVComposePlan plan;
  std::deque<Part> parts;
};

inline Composed compose(std::deque<Layer> const& model, std::vector<std::vector<float>> const& attention, KVComposePress const& press,
                 std::int64_t first, std::int64_t count, TensorParallelShard const& shard) {
  Composed out;
  std::int64_t const qh = model.front().heads * kGroup, m = kTokens + kReplay;
  KVComposeStatistics stats(press, kLayers, count * kGroup, kTokens);
  for (int l = 0; l < kLayers; ++l)
    for (int pass = 0; pass < 2; ++pass) {
      float const* a = attention[static_cast<std::size_t>(2 * l + pass)].data();
      stats.add(cpu, l, kvcompress::make_tensor4(a + first * kGroup * kReplay * m, {1, count * kGroup, kReplay, m}, {qh * kReplay * m, kReplay * m, m, 1}));
    }
  for (Layer const& layer : model) out.parts.emplace_back(layer, first, count);
  std::vector<float> norms(static_cast<std::size_t>(kLayers * count * kTokens));  // [layers, count, ctx]
  for (int l = 0; l < kLayers; ++l)
    kvcompose_value_norms(out.parts[static_cast<std::size_t>(l)].cache.view(), kTokens, norms.data() + l * count * kTokens);
  out.plan = shard.split() ? kvcompose_plan(cpu, press, stats, count, norms.data(), shard) : kvcompose_plan(cpu, press, stats, count, norms.data());
  for (int l = 0; l < kLayers; ++l) {
    auto& cache = out.parts[static_cast<std::size_t>(l)].cache;
    std::vector<std::byte> scratch(kvcompose_compress_workspace_bytes(cpu, cache.view()));
    Workspace ws(scratch.data(), scratch.size());
    if (shard.split())
      kvcompose_compress(cpu, out.plan, l, cache.view(), ws, shard);
    else
      kvcompose_compress(cpu, out.plan, l, cache.view(), ws);
  }
  return out;
}

}  // namespace kvc_shard
