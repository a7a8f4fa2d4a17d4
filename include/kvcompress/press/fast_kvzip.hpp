#pragma once
/// \file
/// \brief FastKVzip (arXiv 2601.17668): KVzip's scores predicted by a small learned gate per layer
/// from the hidden states, then KVzip's eviction across layers (`cross_layer_eviction.hpp`).
/// For token t and kv head g the gate forms group queries q_{t,j} = RMSNorm(W_q x_t + b_q) (j < group,
/// `dim` channels each) and a key k_t = RMSNorm(W_k x_t); with `sink` learned keys k̂_s and biases
/// β_{g,j}:  s_{t,g} = mean_j 1 / (1 + Σ_s exp(k̂_s·q_{t,j}/√dim − k_t·q_{t,j}/√dim − β_{g,j})).
/// The first `n_sink` entries and the last window (int(n · window_ratio), at least 1, if n < 32000,
/// else `window_size`) score 1. The gate weights are the caller's (kvpress downloads
/// `Jang-Hyun/Fast-KVzip/<model>/q<G>_dim16_sink16.pt`; the engine reads them as safetensors).
///
/// Use: `press.score_layer(dev, gate_ℓ, hidden_ℓ, scores_ℓ)` for every layer after the prefill, then
/// `cross_layer_pruned_counts(scores, …, press.compression_ratio, press.layerwise, pruned)` and
/// `evict_lowest_across_heads(dev, cache_ℓ, scores_ℓ, pruned[ℓ], ws)` for every layer. Batch 1.
///
/// On a tensor-parallel shard: each rank's gate is its kv heads' part of the layer's
/// (`gate.heads(first, count)`), `score_layer(..., shard)` scores them (per head: bit-identical), and
/// the shard forms of `cross_layer_pruned_counts` and `evict_lowest_across_heads` evict what one
/// process evicts from the whole model.

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "kvcompress/dist/shard_protocol.hpp"
#include "kvcompress/press/cross_layer_eviction.hpp"

namespace kvcompress {

/// \brief One layer's gate, in PyTorch's layout (`nn.Linear` weight [out, in], row-major).
struct FastKVzipGate {
  float const* q_proj_weight = nullptr;  // [kv_heads · group · dim, hidden_size]
  float const* q_proj_bias = nullptr;    // [kv_heads · group · dim]
  float const* k_proj_weight = nullptr;  // [kv_heads · dim, hidden_size]
  float const* q_norm_weight = nullptr;  // [dim]
  float const* k_norm_weight = nullptr;  // [dim]
  float const* k_base = nullptr;         // [kv_heads, sink, dim]
  float const* bias = nullptr;           // [kv_heads, group] (the gate's `b`)
  std::int64_t hidden_size = 0, kv_heads = 0, group = 0, dim = 16, sink = 16;
  double norm_eps = 1e-6;  ///< the RMSNorms' epsilon

  /// The gate of kv heads [first, first + count) alone (a tensor-parallel rank's): every weight but
  /// the norms' is per kv head.
  [[nodiscard]] FastKVzipGate heads(std::int64_t first, std::int64_t count) const {
    KVC_CHECK(first >= 0 && count > 0 && first + count <= kv_heads,
              "FastKVzipGate heads [" << first << ", " << first + count << ") must be a non-empty part of its kv_heads = " << kv_heads);
    KVC_CHECK(hidden_size > 0 && group > 0 && dim > 0 && sink >= 0, "FastKVzipGate sizes must be positive: hidden_size = "
                                                                        << hidden_size << ", group = " << group << ", dim = " << dim
                                                                        << ", sink = " << sink);
    FastKVzipGate g = *this;
    std::int64_t const q_rows = first * group * dim;
    if (q_proj_weight != nullptr) g.q_proj_weight = q_proj_weight + q_rows * hidden_size;
    if (q_proj_bias != nullptr) g.q_proj_bias = q_proj_bias + q_rows;
    if (k_proj_weight != nullptr) g.k_proj_weight = k_proj_weight + first * dim * hidden_size;
    if (k_base != nullptr) g.k_base = k_base + first * sink * dim;
    if (bias != nullptr) g.bias = bias + first * group;
    g.kv_heads = count;
    return g;
  }
};

struct FastKVzipPress {
  double compression_ratio = 0.0;
  bool layerwise = false;          ///< every layer evicts the same share
  std::int64_t n_sink = 4;         ///< first entries always kept
  std::int64_t window_size = 4096; ///< last entries always kept, from 32000 entries on
  double window_ratio = 0.02;      ///< below 32000 entries: the last int(n · window_ratio), at least 1

  /// \brief One layer's gate scores.
  /// \param hidden [1, 1, n, hidden_size] the layer's attention input (after input_layernorm)
  /// \param scores [kv_heads, n] out
  /// \param shard  on a tensor-parallel shard: `gate` holds this rank's kv heads
  ///               [shard.first_kv_head, + gate.kv_heads) of the layer's `shard.kv_heads`; the scores
  ///               are per head, and the call ends with the shard's handshake
  template <class T>
  void score_layer(CpuDevice const& dev, FastKVzipGate const& gate, Tensor4<T> const& hidden, float* scores,
                   TensorParallelShard const& shard = {}) const {
    std::int64_t const layer_heads = shard.kv_heads > 0 ? shard.kv_heads : gate.kv_heads;
    detail::shard_call(shard, detail::ShardRecord{gate.kv_heads, layer_heads, 1, 0}, [&] {
      detail::validate_shard(shard, gate.kv_heads, "FastKVzipPress score_layer shard");
      score_layer_local(dev, gate, hidden, scores);
    });
  }

 private:
  template <class T>
  void score_layer_local(CpuDevice const& dev, FastKVzipGate const& gate, Tensor4<T> const& hidden, float* scores) const {
    check();
    check_gate(gate);
    detail::validate_tensor(hidden, "FastKVzipPress hidden states");
    KVC_CHECK(scores != nullptr, "FastKVzipPress score_layer: scores must not be null");
    auto const& s = hidden.shape;
    KVC_CHECK(s[0] == 1 && s[1] == 1 && s[3] == gate.hidden_size,
              "FastKVzipPress hidden states must be [1, 1, n, hidden_size = " << gate.hidden_size << "] (batch 1), got [" << s[0]
                                                                              << ", " << s[1] << ", " << s[2] << ", " << s[3] << "]");
    // Cheap beside the gate's products, and a sink's or the window's score would hide a NaN.
    detail::require_finite(hidden, "FastKVzipPress hidden states");
    using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    std::int64_t const n = s[2], D = gate.hidden_size, H = gate.kv_heads, G = gate.group, d = gate.dim;
    Eigen::Map<RowMat const> const wq(gate.q_proj_weight, H * G * d, D), wk(gate.k_proj_weight, H * d, D);
    Eigen::Map<Eigen::VectorXf const> const bq(gate.q_proj_bias, H * G * d);
    float const inv_sqrt = 1.0f / std::sqrt(static_cast<float>(d));
    auto const rms_norm = [&](float* v, float const* w) {
      float var = 0.0f;
      for (std::int64_t c = 0; c < d; ++c) var += v[c] * v[c];
      float const r = 1.0f / std::sqrt(var / static_cast<float>(d) + static_cast<float>(gate.norm_eps));
      for (std::int64_t c = 0; c < d; ++c) v[c] = w[c] * (v[c] * r);
    };
    std::int64_t const per = D + H * G * d + H * d;
    std::vector<float> buf(detail::size_product(detail::thread_count(dev, n), per));  // once per layer, not per token
    detail::parallel_for(dev, n, [&](std::int64_t t, int th) {
      float* x = buf.data() + th * per;  // [hidden_size]
      float* q = x + D;                  // [kv_heads · group, dim]
      float* k = q + H * G * d;          // [kv_heads, dim]
      for (std::int64_t c = 0; c < D; ++c) x[c] = to_float(hidden(0, 0, t, c));
      Eigen::Map<Eigen::VectorXf const> const xv(x, D);
      Eigen::Map<Eigen::VectorXf>(q, H * G * d).noalias() = wq * xv + bq;
      Eigen::Map<Eigen::VectorXf>(k, H * d).noalias() = wk * xv;
      for (std::int64_t i = 0; i < H * G; ++i) rms_norm(q + i * d, gate.q_norm_weight);
      for (std::int64_t h = 0; h < H; ++h) rms_norm(k + h * d, gate.k_norm_weight);
      for (std::int64_t h = 0; h < H; ++h) {
        float mean = 0.0f;
        for (std::int64_t j = 0; j < G; ++j) {
          float const* qj = q + (h * G + j) * d;
          float logit = 0.0f;
          for (std::int64_t c = 0; c < d; ++c) logit += k[h * d + c] * qj[c];
          logit = logit * inv_sqrt + gate.bias[h * G + j];
          float sum = 0.0f;
          for (std::int64_t si = 0; si < gate.sink; ++si) {
            float const* kb = gate.k_base + (h * gate.sink + si) * d;
            float base = 0.0f;
            for (std::int64_t c = 0; c < d; ++c) base += kb[c] * qj[c];
            sum += std::exp(base * inv_sqrt - logit);
          }
          mean += 1.0f / (1.0f + sum);
        }
        scores[h * n + t] = mean / static_cast<float>(G);
      }
    });
    std::int64_t const window = n < 32000 ? std::max<std::int64_t>(1, static_cast<std::int64_t>(static_cast<double>(n) * window_ratio))
                                          : window_size;
    for (std::int64_t h = 0; h < H; ++h) {
      std::fill_n(scores + h * n, std::min(n_sink, n), 1.0f);
      std::fill_n(scores + h * n + std::max<std::int64_t>(0, n - window), std::min(window, n), 1.0f);
      for (std::int64_t t = 0; t < n; ++t)
        if (!std::isfinite(scores[h * n + t])) {
          KVC_THROW("FastKVzipPress: a non-finite gate score " << scores[h * n + t] << " at (kv head " << h << ", token " << t
                                                              << ") from finite hidden states (check the gate weights)");
        }
    }
  }

  void check() const {
    check_compression_ratio(compression_ratio);
    KVC_CHECK(n_sink >= 0, "FastKVzipPress n_sink must be non-negative, got " << n_sink);
    KVC_CHECK(window_size > 0, "FastKVzipPress window_size must be positive, got " << window_size);
    KVC_CHECK(window_ratio >= 0.0 && window_ratio <= 1.0, "FastKVzipPress window_ratio must be in [0, 1], got " << window_ratio);
  }
  static void check_gate(FastKVzipGate const& g) {
    KVC_CHECK(g.q_proj_weight != nullptr && g.q_proj_bias != nullptr && g.k_proj_weight != nullptr && g.q_norm_weight != nullptr &&
                  g.k_norm_weight != nullptr && g.bias != nullptr && (g.sink == 0 || g.k_base != nullptr),
              "FastKVzipGate: every weight must be given (q_proj weight and bias, k_proj weight, q_norm, k_norm, k_base, b)");
    KVC_CHECK(g.hidden_size > 0 && g.kv_heads > 0 && g.group > 0 && g.dim > 0 && g.sink >= 0,
              "FastKVzipGate sizes must be positive: hidden_size = " << g.hidden_size << ", kv_heads = " << g.kv_heads
                                                                     << ", group = " << g.group << ", dim = " << g.dim
                                                                     << ", sink = " << g.sink);
    KVC_CHECK(g.norm_eps > 0.0, "FastKVzipGate norm_eps must be positive, got " << g.norm_eps);
  }
};

}  // namespace kvcompress
