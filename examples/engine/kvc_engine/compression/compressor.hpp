#pragma once
/// \file
/// \brief `Compressor`: what the engine calls to compress its cache, as plain functions of
/// (`kvcompress::Observation`, `kvcompress::KVCacheView`) per layer — after the prefill, and after every
/// later forward pass (decoding steps). Any kvcompress scorer press becomes one with `prefill_press(press)`,
/// a kvcompress decoding press with `decoding_press(press)`, any other policy is a lambda. An evaluation
/// loops over a vector of them.

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "kvcompress/kvcompress.hpp"

namespace kvc_engine {

/// \brief What the engine must put into the observation beyond the pre-RoPE queries and the RoPE.
struct ObservationNeeds {
  std::int64_t window = 0;  ///< post-RoPE queries of the chunk's last `window` tokens (fewer if the chunk is shorter)
  bool attention = false;   ///< attention probabilities [1, q_heads, chunk, cache length] (costly: only when asked)
  bool hidden_states = false;  ///< every layer's attention input [1, 1, chunk, hidden] (after input_layernorm; kept only when asked)
};

using CompressFn = std::function<void(kvcompress::Observation<float> const&, kvcompress::KVCacheView<float> const&)>;

class Engine;
class KVCache;
struct ForwardRecord;
/// After the prefill, with the engine and every layer's cache: for presses that run passes of their own
/// before deciding across layers (KVCompose). Given the prefill's record.
using ModelFn = std::function<void(Engine&, KVCache&, ForwardRecord const&)>;

struct Compressor {
  std::string name;
  ObservationNeeds needs;
  CompressFn after_prefill;  ///< per layer after the first forward pass on an empty cache; empty: none
  CompressFn after_step;     ///< per layer after every later forward pass; empty: none
  ModelFn after_prefill_model{};  ///< instead of after_prefill: the whole model and cache at once; empty: none
};

namespace detail {

template <class P, class = void>
struct has_window_size : std::false_type {};
template <class P>
struct has_window_size<P, std::void_t<decltype(std::declval<P const&>().window_size)>> : std::true_type {};

}  // namespace detail

/// \brief What a press reads: SnapKV and PyramidKV their `window_size` window queries, TOVA the last
/// query, ObservedAttention the attention probabilities; every other press the queries (and RoPE) only.
template <class Press>
[[nodiscard]] ObservationNeeds needs_of(Press const& press) {
  ObservationNeeds n;
  if constexpr (detail::has_window_size<Press>::value) n.window = press.window_size;
  if constexpr (std::is_same_v<Press, kvcompress::TOVAPress>) n.window = 1;
  if constexpr (std::is_same_v<Press, kvcompress::ObservedAttentionPress>) n.attention = true;
  return n;
}

/// \brief A compressor that runs `kvcompress::compress(dev, press, observation, view)` on every layer
/// after the prefill, with its scratch in a buffer the compressor keeps between calls.
template <class Press>
[[nodiscard]] Compressor prefill_press(Press press, std::string name, kvcompress::CpuDevice dev = kvcompress::cpu) {
  auto scratch = std::make_shared<std::vector<std::byte>>();
  Compressor c;
  c.name = std::move(name);
  c.needs = needs_of(press);
  c.after_prefill = [press, dev, scratch](kvcompress::Observation<float> const& obs,
                                          kvcompress::KVCacheView<float> const& cache) {
    scratch->resize(kvcompress::compress_workspace_bytes(dev, press, obs, cache));
    kvcompress::compress(dev, press, obs, cache, kvcompress::Workspace(scratch->data(), scratch->size()));
  };
  return c;
}

/// \brief A compressor that hands every decoding step to a kvcompress decoding press
/// (`DecodingPress`, `CompressionRatioDecodingPress`, …: anything with `workspace_bytes` and
/// `step(dev, observation, view, workspace)`), which keeps its own state and decides when to compress.
/// The press is shared by the copies of the compressor and reset at each prefill.
template <class DecodingPressT>
[[nodiscard]] Compressor decoding_press(DecodingPressT press, std::string name, kvcompress::CpuDevice dev = kvcompress::cpu) {
  auto state = std::make_shared<DecodingPressT>(std::move(press));
  auto scratch = std::make_shared<std::vector<std::byte>>();
  Compressor c;
  c.name = std::move(name);
  c.after_prefill = [state](kvcompress::Observation<float> const&, kvcompress::KVCacheView<float> const&) {
    state->reset();
  };
  c.after_step = [state, dev, scratch](kvcompress::Observation<float> const& obs,
                                       kvcompress::KVCacheView<float> const& cache) {
    scratch->resize(state->workspace_bytes(dev, obs, cache));
    (void)state->step(dev, obs, cache, kvcompress::Workspace(scratch->data(), scratch->size()));
  };
  return c;
}

}  // namespace kvc_engine
