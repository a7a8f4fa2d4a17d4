#pragma once
/// \file
/// \brief kvcompress's prefill presses by name, with kvpress's defaults, as engine compressors — the list
/// a command line or an evaluation loops over.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kvc_engine/compressor.hpp"

namespace kvc_engine {

/// \brief A compressor for a press that takes a Gaussian sketch (`sketch`, [batch, kv_heads, head_dim,
/// sketch_dimension]): like kvpress, every layer and call gets a fresh N(0, 1/sketch_dimension) draw —
/// kvpress from torch's global generator, here from a seeded 64-bit Mersenne Twister through
/// Box–Muller, the same on every platform.
template <class Press>
[[nodiscard]] Compressor sketch_press(Press press, std::string name, kvcompress::CpuDevice dev, std::uint64_t seed = 0) {
  struct State {
    std::mt19937_64 rng;
    std::vector<float> sketch;  // [batch, kv_heads, head_dim, sketch_dimension]
    std::vector<std::byte> scratch;
  };
  auto state = std::make_shared<State>(State{std::mt19937_64(seed), {}, {}});
  Compressor c;
  c.name = std::move(name);
  c.needs = needs_of(press);
  c.after_prefill = [press, dev, state](kvcompress::Observation<float> const& obs, kvcompress::KVCacheView<float> const& cache) {
    auto const& e = cache.extents;
    KVC_CHECK(press.sketch_dimension > 0, "sketch_dimension must be positive, got " << press.sketch_dimension);
    state->sketch.resize(static_cast<std::size_t>(e.batch * e.kv_heads * e.head_dim * press.sketch_dimension));
    double const scale = 1.0 / std::sqrt(static_cast<double>(press.sketch_dimension));
    auto const uniform = [&] { return static_cast<double>(state->rng() >> 11) * 0x1.0p-53; };  // [0, 1)
    for (std::size_t i = 0; i < state->sketch.size(); i += 2) {
      double const radius = std::sqrt(-2.0 * std::log(1.0 - uniform())), angle = 2.0 * M_PI * uniform();
      state->sketch[i] = static_cast<float>(radius * std::cos(angle) * scale);
      if (i + 1 < state->sketch.size()) state->sketch[i + 1] = static_cast<float>(radius * std::sin(angle) * scale);
    }
    Press p = press;
    p.sketch = state->sketch.data();
    state->scratch.resize(kvcompress::compress_workspace_bytes(dev, p, obs, cache));
    kvcompress::compress(dev, p, obs, cache, kvcompress::Workspace(state->scratch.data(), state->scratch.size()));
  };
  return c;
}

[[nodiscard]] inline std::vector<std::string> press_names() {
  return {"expected_attention", "knorm",   "streaming_llm", "snapkv",    "pyramidkv", "tova",
          "observed_attention", "keydiff", "lagkv",         "random",    "leverage",
          "non_causal_attn",    "compactor", "cur",           "cap",       "simlayerkv", "adakv_expected_attention"};
}

/// \brief The named press at `ratio` (fraction of entries removed); "none" is the full cache.
[[nodiscard]] inline Compressor make_compressor(std::string const& name, double ratio,
                                                kvcompress::CpuDevice dev = kvcompress::cpu) {
  namespace kvc = kvcompress;
  kvc::check_compression_ratio(ratio);
  if (name == "none") return Compressor{"none", {}, {}, {}};
  if (name == "expected_attention") return prefill_press(kvc::ExpectedAttentionPress{ratio}, name, dev);
  if (name == "knorm") return prefill_press(kvc::KnormPress{ratio}, name, dev);
  if (name == "streaming_llm") return prefill_press(kvc::StreamingLLMPress{ratio}, name, dev);
  if (name == "snapkv") return prefill_press(kvc::SnapKVPress{ratio}, name, dev);
  if (name == "pyramidkv") return prefill_press(kvc::PyramidKVPress{ratio}, name, dev);
  if (name == "tova") return prefill_press(kvc::TOVAPress{ratio}, name, dev);
  if (name == "observed_attention") return prefill_press(kvc::ObservedAttentionPress{ratio}, name, dev);
  if (name == "keydiff") return prefill_press(kvc::KeyDiffPress{ratio}, name, dev);
  if (name == "lagkv") return prefill_press(kvc::LagKVPress{ratio}, name, dev);
  if (name == "random") return prefill_press(kvc::RandomPress{ratio}, name, dev);
  if (name == "leverage") return sketch_press(kvc::LeverageScorePress{ratio}, name, dev);
  if (name == "non_causal_attn") return prefill_press(kvc::NonCausalAttnPress{ratio}, name, dev);
  if (name == "compactor") return sketch_press(kvc::CompactorPress{ratio}, name, dev);
  if (name == "cur") return prefill_press(kvc::CURPress{ratio}, name, dev);
  if (name == "cap") return prefill_press(kvc::CapPress{ratio}, name, dev);
  // AdaKV's budget across the kv heads of a layer over Expected Attention's scores (kvpress's
  // AdaKVPress(ExpectedAttentionPress(ratio)), alpha_safeguard 0.20)
  if (name == "adakv_expected_attention") return prefill_press(kvc::AdaKVPress{kvc::ExpectedAttentionPress{ratio}}, name, dev);
  if (name == "simlayerkv") {  // decides per layer: the ratio is not used; kvpress's Llama 3 threshold
    kvc::SimLayerKVPress const press{0.9};
    Compressor c = prefill_press(press, name, dev);
    c.needs.window = press.n_last;
    return c;
  }
  std::string known = "none";
  for (auto const& n : press_names()) known += ", " + n;
  KVC_THROW("unknown press '" << name << "' (" << known << ")");
}

}  // namespace kvc_engine
