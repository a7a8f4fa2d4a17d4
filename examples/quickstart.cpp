// Quickstart: compress an engine-owned KV cache with Expected Attention at 50 %.
//
// The engine owns the K/V memory (here a token-major [batch, seq, kv_heads, head_dim] buffer, as
// most engines store it) and the per-head lengths; kvcompress only views it. After prefill the
// engine hands over the chunk's pre-RoPE queries and its RoPE configuration, and compress()
// rewrites each (batch, kv head) row in place: the kept entries move to the front, in position
// order, and the row's length shrinks.
#include <cstdio>
#include <random>
#include <vector>

#include "kvcompress/kvcompress.hpp"

int main() {
  namespace kvc = kvcompress;
  constexpr std::int64_t batch = 1, kv_heads = 2, q_heads = 8, seq = 1024, head_dim = 64;

  // The engine's buffers (random stand-ins for a prefill's keys, values and queries).
  std::mt19937 gen(0);
  std::normal_distribution<float> normal;
  std::vector<float> keys(batch * seq * kv_heads * head_dim), values(keys.size());
  std::vector<float> queries(batch * q_heads * seq * head_dim);
  for (auto* buf : {&keys, &values, &queries})
    for (float& x : *buf) x = normal(gen);
  std::vector<std::int32_t> lengths(batch * kv_heads, seq);

  // A view over that memory: token-major order, validated once.
  kvc::CacheExtents const extents{batch, kv_heads, seq, head_dim};
  auto const layout = kvc::make_strided_layout(
      extents, {kvc::Axis::kBatch, kvc::Axis::kSeq, kvc::Axis::kHead, kvc::Axis::kDim});
  auto const cache = kvc::make_cache_view(keys.data(), values.data(), extents, layout, lengths.data());

  // What the engine observed at the compression point.
  kvc::RopeConfig rope_config;
  rope_config.type = kvc::RopeType::kLlama3;
  rope_config.theta = 500000.0;
  rope_config.head_dim = static_cast<int>(head_dim);
  rope_config.factor = 8.0;
  rope_config.original_max_position_embeddings = 8192;
  rope_config.max_position_embeddings = 131072;
  kvc::RotaryEmbedding const rope(rope_config);
  kvc::Observation<float> obs;
  obs.queries = kvc::make_tensor4(queries.data(), {batch, q_heads, seq, head_dim});
  obs.rope = &rope;

  auto const bytes = [&] {
    std::int64_t entries = 0;
    for (auto n : lengths) entries += n;
    return entries * head_dim * 2 * static_cast<std::int64_t>(sizeof(float));
  };
  std::printf("before: lengths = [%d, %d], K+V bytes in use = %lld\n", lengths[0], lengths[1],
              static_cast<long long>(bytes()));

  kvc::ExpectedAttentionPress press;
  press.compression_ratio = 0.5;
  // Scratch is sized by a query and handed in: compress itself allocates nothing.
  std::vector<std::byte> workspace(kvc::compress_workspace_bytes(kvc::cpu, press, obs, cache));
  kvc::compress(kvc::cpu, press, obs, cache, kvc::Workspace(workspace.data(), workspace.size()));

  std::printf("after:  lengths = [%d, %d], K+V bytes in use = %lld\n", lengths[0], lengths[1],
              static_cast<long long>(bytes()));
  return lengths[0] == seq / 2 && lengths[1] == seq / 2 ? 0 : 1;
}
