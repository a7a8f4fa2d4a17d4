#pragma once
/// \file
/// \brief KVzap (arXiv 2601.07891): a small learned surrogate of KVzip+ applied to the hidden states.
/// Entry i of kv head g scores f(x_i)[g], with x_i the attention input of token i (after
/// input_layernorm) and f one layer's surrogate: Linear(hidden → kv_heads), or Linear(hidden →
/// hidden_dim) → GELU (erf) → Linear(hidden_dim → kv_heads). The weights are the caller's (kvpress
/// downloads `nvidia/KVzap-{linear,mlp}-<model>`; the engine reads that checkpoint's safetensors).
/// Then top-k as every scorer press; kvpress pairs it with DMS (a threshold), which works here too.
///
/// Scores the chunk's own tokens: every row's length must equal the hidden states' q_len (a prefill).

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "kvcompress/press/scorer.hpp"

namespace kvcompress {

enum class KVzapModelType { kLinear, kMlp };

/// \brief One layer's surrogate, in PyTorch's `nn.Linear` layout (weight [out, in], row-major).
struct KVzapWeights {
  float const* w1 = nullptr;  // [kv_heads, hidden_size] (linear) or [hidden_dim, hidden_size] (mlp)
  float const* b1 = nullptr;  // [kv_heads] or [hidden_dim]
  float const* w2 = nullptr;  // [kv_heads, hidden_dim] (mlp only)
  float const* b2 = nullptr;  // [kv_heads] (mlp only)
  std::int64_t hidden_size = 0;
  std::int64_t hidden_dim = 0;  // mlp width; 0 for the linear surrogate
  std::int64_t kv_heads = 0;
};

struct KVzapPress {
  double compression_ratio = 0.0;
  KVzapModelType model_type = KVzapModelType::kMlp;
  KVzapWeights weights{};  ///< the surrogate of the layer being compressed

  template <class T, class L>
  [[nodiscard]] std::size_t workspace_bytes(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache) const {
    std::int64_t const width = std::max(weights.hidden_dim, weights.kv_heads) + weights.hidden_size;
    return Workspace::bytes_for<float>(detail::size_product(detail::thread_count(dev, token_rows(obs, cache)), std::max<std::int64_t>(width, 1)));
  }

  template <class T, class L>
  void score(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, float* scores, Workspace& ws) const {
    check(detail::layer_kv_heads(obs, cache), obs.shard.split());
    auto const& e = cache.extents;
    KVC_CHECK(!obs.hidden_states.empty(), "observation.hidden_states ([batch, 1, q_len, hidden_size], the attention input) "
                                          "must be given: KVzapPress scores them");
    auto const& s = obs.hidden_states.shape;
    KVC_CHECK(s[0] == e.batch && s[1] == 1 && s[3] == weights.hidden_size,
              "observation.hidden_states must be [batch = " << e.batch << ", 1, q_len, hidden_size = " << weights.hidden_size
                                                            << "], got [" << s[0] << ", " << s[1] << ", " << s[2] << ", " << s[3] << "]");
    for (std::int64_t r = 0; r < e.batch * e.kv_heads; ++r)
      KVC_CHECK(cache.lengths[r] == s[2], "KVzapPress scores the chunk's own tokens: row " << r << " holds " << cache.lengths[r]
                                                                                        << " entries, the hidden states " << s[2]);
    using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    // On a tensor-parallel shard the surrogate is the whole layer's: head h of the cache is output
    // first + h (the hidden states are every rank's, so nothing is exchanged).
    std::int64_t const D = weights.hidden_size, hid = weights.hidden_dim, heads = e.kv_heads, q = s[2];
    std::int64_t const outputs = weights.kv_heads, first = obs.shard.first_kv_head;
    bool const mlp = model_type == KVzapModelType::kMlp;
    std::int64_t const width = std::max(hid, outputs) + D;
    float* buf = ws.take<float>(detail::size_product(detail::thread_count(dev, e.batch * q), width));
    float* const out_scores = scores;  // [batch, kv_heads, capacity], written per token below
    Eigen::Map<RowMat const> const w1(weights.w1, mlp ? hid : outputs, D);
    Eigen::Map<Eigen::VectorXf const> const b1(weights.b1, mlp ? hid : outputs);
    detail::parallel_for(dev, e.batch * q, [&](std::int64_t bi, int t) {
      std::int64_t const b = bi / q, i = bi % q;
      float* x = buf + t * width;  // [D]
      float* y = x + D;            // [max(hidden_dim, layer kv_heads)]
      for (std::int64_t c = 0; c < D; ++c) x[c] = to_float(obs.hidden_states(b, 0, i, c));
      Eigen::Map<Eigen::VectorXf const> const xv(x, D);
      if (!mlp) {
        Eigen::Map<Eigen::VectorXf>(y, outputs).noalias() = w1 * xv + b1;
        for (std::int64_t g = 0; g < heads; ++g) out_scores[(b * heads + g) * e.capacity + i] = y[first + g];
        return;
      }
      Eigen::Map<Eigen::VectorXf> hvec(y, hid);
      hvec.noalias() = w1 * xv + b1;
      for (std::int64_t k = 0; k < hid; ++k) y[k] = 0.5f * y[k] * (1.0f + std::erf(y[k] * 0.70710678118654752f));  // exact GELU
      for (std::int64_t g = 0; g < heads; ++g) {
        Eigen::Map<Eigen::VectorXf const> const w2(weights.w2 + (first + g) * hid, hid);
        out_scores[(b * heads + g) * e.capacity + i] = w2.dot(hvec) + weights.b2[first + g];
      }
    });
  }

 private:
  /// Tokens scored: every batch element's chunk (the hidden states' batch × q_len), for the thread count.
  template <class T, class L>
  static std::int64_t token_rows(Observation<T> const& obs, KVCacheView<T, L> const& cache) {
    return obs.hidden_states.empty() ? cache.extents.batch : cache.extents.batch * obs.hidden_states.shape[2];
  }

  void check(std::int64_t layer_heads, bool split) const {
    bool const mlp = model_type == KVzapModelType::kMlp;
    KVC_CHECK(weights.w1 != nullptr && weights.b1 != nullptr, "KVzapPress weights w1 and b1 must be given");
    KVC_CHECK(weights.hidden_size > 0, "KVzapPress weights.hidden_size must be positive, got " << weights.hidden_size);
    KVC_CHECK(weights.kv_heads == layer_heads, "KVzapPress weights score " << weights.kv_heads << " kv heads, the "
                                                                          << (split ? "layer (observation.shard.kv_heads)" : "cache")
                                                                          << " has " << layer_heads);
    if (mlp) {
      KVC_CHECK(weights.hidden_dim > 0 && weights.w2 != nullptr && weights.b2 != nullptr,
                "KVzapPress model_type mlp needs weights.hidden_dim > 0 (got " << weights.hidden_dim << "), w2 and b2");
    } else {
      KVC_CHECK(weights.hidden_dim == 0 && weights.w2 == nullptr && weights.b2 == nullptr,
                "KVzapPress model_type linear takes w1 and b1 only (weights.hidden_dim = " << weights.hidden_dim << ")");
    }
  }
};

}  // namespace kvcompress
