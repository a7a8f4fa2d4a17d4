#pragma once
/// \file
/// \brief `Model` and `LayerWeights`: a checkpoint's configuration and weights as the engine holds them,
/// whichever reader produced them (`model.hpp`: HF folders; `gguf_model.hpp`: GGUF files).

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "kvc_engine/model_io/config.hpp"
#include "kvcompress/core/error.hpp"

namespace kvc_engine {

/// Row-major matrices [out, in] as HF stores nn.Linear weights; vectors for norms and biases (empty when
/// the architecture has none).
struct LayerWeights {
  std::vector<float> input_norm;               // [hidden]
  std::vector<float> q_w, k_w, v_w, o_w;       // [heads·head_dim, hidden] ×3 (k, v: kv_heads), o: [hidden, heads·head_dim]
  std::vector<float> q_b, k_b, v_b, o_b;       // [heads·head_dim] / [kv_heads·head_dim] / [hidden], or empty
  std::vector<float> q_norm, k_norm;           // [head_dim] (Qwen3), or empty
  std::vector<float> post_norm;                // [hidden]
  std::vector<float> gate_w, up_w, down_w;     // [intermediate, hidden] ×2, [hidden, intermediate]
  std::vector<float> gate_b, up_b, down_b;     // Llama's mlp_bias, or empty
};

struct Model {
  ModelConfig config;
  std::vector<float> embed;       // [vocab, hidden]
  std::vector<float> final_norm;  // [hidden]
  std::vector<float> lm_head;     // [vocab, hidden]; empty when tied to embed
  std::vector<LayerWeights> layers;

  /// The output projection [vocab, hidden]: the embedding itself when the checkpoint ties them.
  [[nodiscard]] float const* output_weights() const noexcept { return lm_head.empty() ? embed.data() : lm_head.data(); }
};

namespace detail {

/// \brief Throws unless every weight of a tensor is finite. A NaN or ±Inf weight otherwise surfaces only at
/// the first argmax, long after the load, with nothing to say which tensor holds it.
/// \param what names the tensor and its file, e.g. "model.safetensors: tensor 'lm_head.weight'"
inline void check_finite_weights(std::vector<float> const& w, std::string const& what) {
  auto const bad = [](float x) { return !std::isfinite(x); };
  auto const first = std::find_if(w.begin(), w.end(), bad);
  if (first == w.end()) return;
  KVC_THROW(what << " holds " << std::count_if(first, w.end(), bad) << " non-finite weight(s) of " << w.size()
                 << "; the first, " << *first << ", at element " << (first - w.begin()) << " (row-major)");
}

}  // namespace detail

}  // namespace kvc_engine
