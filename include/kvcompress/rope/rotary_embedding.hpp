#pragma once
/// \file
/// \brief `RotaryEmbedding`: RoPE exactly as HF transformers computes it (rotate_half convention,
/// float32 inverse frequencies, cos/sin scaled by the attention scaling), plus the averaged
/// rotation R̄ = mean_p R_p that Expected Attention applies to its query statistics.

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kvcompress/core/dtype.hpp"
#include "kvcompress/rope/rope_config.hpp"
#include "kvcompress/rope/torch_float.hpp"

namespace kvcompress {

class RotaryEmbedding {
 public:
  /// \brief Validates the configuration and precomputes the inverse frequencies.
  explicit RotaryEmbedding(RopeConfig const& config) : config_(config) {
    validate(config_);
    inv_freq_.resize(static_cast<std::size_t>(config_.head_dim / 2));
    attention_scaling_ = static_cast<float>(compute_inv_freq(config_.theta, inv_freq_.data()));
  }

  [[nodiscard]] int head_dim() const noexcept { return config_.head_dim; }
  [[nodiscard]] float attention_scaling() const noexcept { return attention_scaling_; }
  [[nodiscard]] std::vector<float> const& inv_freq() const noexcept { return inv_freq_; }
  [[nodiscard]] RopeConfig const& config() const noexcept { return config_; }

  /// \brief The inverse frequencies HF uses for a forward whose largest position is seq_len − 1.
  /// Only dynamic NTK depends on it: past max_position_embeddings the base grows with seq_len.
  /// (HF's module keeps the largest length seen as state; this is the stateless function of the
  /// current call, which is what transformers 5.2 effectively computes.)
  /// \param out [head_dim / 2]
  void inv_freq_for(std::int64_t seq_len, float* out) const {
    if (config_.type == RopeType::kDynamic && seq_len > config_.max_position_embeddings) {
      // HF: base · ((factor · seq_len / max_pos) − (factor − 1)) ** (dim / (dim − 2)), where seq_len is
      // an int64 tensor: the bracket is float32 arithmetic, the power float32 ** double (evaluated in
      // double, rounded to float), and the new base a float32 tensor.
      int const dim = config_.head_dim;
      float s = detail::mul(static_cast<float>(config_.factor), static_cast<float>(seq_len));
      s = s / static_cast<float>(config_.max_position_embeddings);
      s = s - static_cast<float>(config_.factor - 1.0);
      auto const p = static_cast<float>(std::pow(static_cast<double>(s), static_cast<double>(dim) / (dim - 2)));
      default_inv_freq(static_cast<double>(detail::mul(static_cast<float>(config_.theta), p)), out);
      return;
    }
    for (std::size_t i = 0; i < inv_freq_.size(); ++i) out[i] = inv_freq_[i];
  }

  /// \brief cos and sin of position p, HF layout concat(freqs, freqs) · attention_scaling.
  /// \param cos [head_dim] \param sin [head_dim]
  void cos_sin(std::int64_t position, std::int64_t seq_len, float* cos, float* sin) const {
    int const hd = config_.head_dim / 2;
    std::vector<float> inv(static_cast<std::size_t>(hd));
    inv_freq_for(seq_len, inv.data());
    cos_sin_from(inv.data(), position, attention_scaling_, cos, sin);
  }

  /// \brief x ← a·R_p x (rotate_half convention), arithmetic in float. \param x [head_dim]
  template <class T>
  void apply(T* x, std::int64_t position, std::int64_t seq_len) const {
    std::vector<float> c(static_cast<std::size_t>(config_.head_dim)), s(c.size());
    cos_sin(position, seq_len, c.data(), s.data());
    rotate(x, c.data(), s.data());
  }

  /// \brief `apply` without allocating, for hot paths that own scratch memory.
  /// \param x [head_dim] \param scratch [head_dim / 2 + 2 · head_dim] floats
  template <class T>
  void apply(T* x, std::int64_t position, std::int64_t seq_len, float* scratch) const {
    int const d = config_.head_dim;
    float* inv = scratch;     // [d / 2]
    float* c = inv + d / 2;   // [d]
    float* s = c + d;         // [d]
    inv_freq_for(seq_len, inv);
    cos_sin_from(inv, position, attention_scaling_, c, s);
    rotate(x, c, s);
  }

  /// \brief Inverse of `apply`: x ← R_{−p} x / a. \param x [head_dim]
  template <class T>
  void unapply(T* x, std::int64_t position, std::int64_t seq_len) const {
    std::vector<float> c(static_cast<std::size_t>(config_.head_dim)), s(c.size());
    cos_sin(position, seq_len, c.data(), s.data());
    float const a2 = attention_scaling_ * attention_scaling_;
    for (std::size_t i = 0; i < c.size(); ++i) {
      c[i] /= a2;
      s[i] = -s[i] / a2;
    }
    rotate(x, c.data(), s.data());
  }

  /// \brief x ← R_delta x with the raw inverse frequencies and no attention scaling (the scaling
  /// was applied once already), as kvpress's key re-rotation does. \param x [head_dim]
  template <class T>
  void rerotate(T* x, std::int64_t delta) const {
    std::vector<float> c(static_cast<std::size_t>(config_.head_dim)), s(c.size());
    cos_sin_from(inv_freq_.data(), delta, 1.0f, c.data(), s.data());
    rotate(x, c.data(), s.data());
  }

  /// \brief R̄ = (1/count) Σ_{p=start}^{start+count−1} R_p = diag(cos_mean) + diag(sin_mean)·P, with
  /// the cos/sin HF returns for position_ids = arange(start, start + count) (so seq_len =
  /// start + count for dynamic NTK). O(head_dim) for any count: per frequency f the sum is the
  /// geometric series Σ_p e^{ifp} = e^{if(start + (count−1)/2)} · sin(f·count/2) / sin(f/2), in
  /// double. It equals summing HF's float32 cos/sin position by position to float rounding (those
  /// round each angle f·p to float; the closed form does not).
  /// \param cos_mean [head_dim] \param sin_mean [head_dim]
  void averaged_rotation(std::int64_t start, std::int64_t count, float* cos_mean, float* sin_mean) const {
    KVC_CHECK(count > 0, "averaged_rotation count must be positive, got " << count);
    KVC_CHECK(start >= 0, "averaged_rotation start must be non-negative, got " << start);
    KVC_CHECK(count <= kMaxPosition - start,
              "averaged_rotation positions [start, start + count) must stay below 2^31 (the cache's positions are "
              "int32): start = " << start << ", count = " << count);
    int const hd = config_.head_dim / 2;
    // Allocation-free (it runs inside compress): the inverse frequencies wait in the upper half of
    // cos_mean, and frequency i's entries are read before they are overwritten.
    float* inv = cos_mean + hd;
    inv_freq_for(start + count, inv);
    double const n = static_cast<double>(count), centre = static_cast<double>(start) + (n - 1.0) / 2.0;
    for (int i = 0; i < hd; ++i) {
      double const f = inv[i], half_sin = std::sin(f / 2.0);
      // sin(f·count/2) / sin(f/2) → count as f/2 → 0 (mod π); inverse frequencies are at most 1.
      double const dirichlet = std::fabs(half_sin) < 1e-300 ? n : std::sin(f * n / 2.0) / half_sin;
      double const scale = dirichlet * attention_scaling_ / n;
      cos_mean[i] = cos_mean[i + hd] = static_cast<float>(std::cos(f * centre) * scale);
      sin_mean[i] = sin_mean[i + hd] = static_cast<float>(std::sin(f * centre) * scale);
    }
  }

  /// Positions are int32 in the cache view, so no averaged window may reach 2^31.
  static constexpr std::int64_t kMaxPosition = std::int64_t{1} << 31;

 private:
  /// HF's default inverse frequencies in float32, 1 / base^(2i/d), bit for bit as PyTorch computes them.
  void default_inv_freq(double base, float* out) const { detail::torch_default_inv_freq(base, config_.head_dim, out); }

  /// Fills out [head_dim/2] for the configured variant; returns the attention scaling.
  double compute_inv_freq(double base, float* out) const {
    RopeConfig const& c = config_;
    int const hd = c.head_dim / 2;
    default_inv_freq(base, out);
    switch (c.type) {
      case RopeType::kDefault:
      case RopeType::kDynamic:
        return 1.0;
      case RopeType::kLinear:
        for (int i = 0; i < hd; ++i) out[i] /= static_cast<float>(c.factor);
        return 1.0;
      case RopeType::kLlama3: {
        // HF's float32 tensor expressions, operation by operation as PyTorch runs them: `2π / inv`
        // and `old_ctx / wavelen` are reciprocal-then-multiply, Python-float operands are rounded
        // to float, the wavelength bounds are divided in double first.
        double const old_ctx = static_cast<double>(c.original_max_position_embeddings);
        float const low_wl = static_cast<float>(old_ctx / c.low_freq_factor);
        float const high_wl = static_cast<float>(old_ctx / c.high_freq_factor);
        float const f = static_cast<float>(c.factor), two_pi = static_cast<float>(2.0 * M_PI);
        float const low = static_cast<float>(c.low_freq_factor);
        float const span = static_cast<float>(c.high_freq_factor - c.low_freq_factor);
        for (int i = 0; i < hd; ++i) {
          float const inv = out[i];
          float const wavelen = detail::mul(1.0f / inv, two_pi);
          float const llama = wavelen > low_wl ? inv / f : inv;
          float const smooth = (detail::mul(1.0f / wavelen, static_cast<float>(old_ctx)) - low) / span;
          float const smoothed = detail::mul(1.0f - smooth, llama) / f + detail::mul(smooth, llama);
          bool const medium = !(wavelen < high_wl) && !(wavelen > low_wl);
          out[i] = medium ? smoothed : llama;
        }
        return 1.0;
      }
      case RopeType::kYarn: {
        double const dim = c.head_dim;
        double const attention = yarn_attention_factor(c);
        auto const correction_dim = [&](double rotations) {
          return dim * std::log(static_cast<double>(c.original_max_position_embeddings) / (rotations * 2.0 * M_PI)) /
                 (2.0 * std::log(base));
        };
        double low = correction_dim(c.beta_fast), high = correction_dim(c.beta_slow);
        if (c.truncate) {
          low = std::floor(low);
          high = std::ceil(high);
        }
        low = std::max(low, 0.0);
        high = std::min(high, dim - 1.0);
        if (low == high) high += 0.001;  // HF: prevent a zero-width ramp
        // HF: extrapolation = 1 / pos, interpolation = 1 / (factor · pos), ramp = (arange − low) /
        // (high − low) in float, each tensor operation rounded as PyTorch rounds it.
        float const f = static_cast<float>(c.factor), ramp_low = static_cast<float>(low);
        float const ramp_span = static_cast<float>(high - low);
        for (int i = 0; i < hd; ++i) {
          float const pos = detail::torch_rope_power(base, c.head_dim, i);
          float const extrapolation = 1.0f / pos;
          float const interpolation = 1.0f / detail::mul(f, pos);
          float ramp = (static_cast<float>(i) - ramp_low) / ramp_span;
          ramp = std::min(1.0f, std::max(0.0f, ramp));
          float const extrap_factor = 1.0f - ramp;
          out[i] = detail::mul(interpolation, 1.0f - extrap_factor) + detail::mul(extrapolation, extrap_factor);
        }
        return attention;
      }
    }
    return 1.0;
  }

  void cos_sin_from(float const* inv, std::int64_t position, float scaling, float* cos, float* sin) const {
    int const hd = config_.head_dim / 2;
    float const p = static_cast<float>(position);
    for (int i = 0; i < hd; ++i) {
      float const f = inv[i] * p;
      cos[i] = cos[i + hd] = static_cast<float>(std::cos(f)) * scaling;
      sin[i] = sin[i + hd] = static_cast<float>(std::sin(f)) * scaling;
    }
  }

  template <class T>
  void rotate(T* x, float const* c, float const* s) const {
    int const hd = config_.head_dim / 2;
    for (int i = 0; i < hd; ++i) {
      float const lo = to_float(x[i]), hi = to_float(x[i + hd]);
      x[i] = from_float<T>(lo * c[i] - hi * s[i]);
      x[i + hd] = from_float<T>(hi * c[i + hd] + lo * s[i + hd]);
    }
  }

  RopeConfig config_;
  std::vector<float> inv_freq_;
  float attention_scaling_ = 1.0f;
};

/// \brief out = R̄·mu with R̄ = diag(cos_mean) + diag(sin_mean)·P, in O(d).
/// \param cos_mean [d] \param sin_mean [d] \param mu [d] \param out [d]
inline void apply_averaged_rotation(float const* cos_mean, float const* sin_mean, int d, float const* mu, float* out) {
  int const hd = d / 2;
  for (int i = 0; i < d; ++i) {
    float const pmu = i < hd ? -mu[i + hd] : mu[i - hd];  // (P·mu)_i
    out[i] = cos_mean[i] * mu[i] + sin_mean[i] * pmu;
  }
}

/// \brief out = R̄·Σ·R̄ᵀ in O(d²), using the two non-zeros per row of R̄.
/// \param cov [d, d] row-major \param out [d, d] row-major
inline void rotate_covariance(float const* cos_mean, float const* sin_mean, int d, float const* cov, float* out) {
  int const hd = d / 2;
  // Row i of R̄ has cos_mean[i] at column i and ±sin_mean[i] at column partner(i).
  auto const partner = [hd](int i) { return i < hd ? i + hd : i - hd; };
  auto const sign = [hd](int i) { return i < hd ? -1.0f : 1.0f; };
  for (int i = 0; i < d; ++i) {
    float const ci = cos_mean[i], si = sign(i) * sin_mean[i];
    int const pi = partner(i);
    for (int j = 0; j < d; ++j) {
      float const cj = cos_mean[j], sj = sign(j) * sin_mean[j];
      int const pj = partner(j);
      out[i * d + j] = ci * (cj * cov[i * d + j] + sj * cov[i * d + pj]) +
                       si * (cj * cov[pi * d + j] + sj * cov[pi * d + pj]);
    }
  }
}

}  // namespace kvcompress
