#pragma once
/// \file
/// \brief kvcompress's prefill presses by name, with kvpress's defaults, as engine compressors — the list
/// a command line or an evaluation loops over.

#include <string>
#include <vector>

#include "kvc_engine/compressor.hpp"

namespace kvc_engine {

[[nodiscard]] inline std::vector<std::string> press_names() {
  return {"expected_attention", "knorm",   "streaming_llm", "snapkv",    "pyramidkv", "tova",
          "observed_attention", "keydiff", "lagkv",         "random"};
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
  std::string known = "none";
  for (auto const& n : press_names()) known += ", " + n;
  KVC_THROW("unknown press '" << name << "' (" << known << ")");
}

}  // namespace kvc_engine
