#pragma once
/// \file
/// \brief `RopeConfig`: the rotary-embedding parameters of HF transformers' `rope_parameters`.

#include <cmath>
#include <cstdint>

#include "kvcompress/core/error.hpp"

namespace kvcompress {

/// \brief The RoPE variants, named as HF's `rope_type`.
enum class RopeType { kDefault, kLinear, kDynamic, kLlama3, kYarn };

/// \brief Every parameter the supported variants read, with HF's defaults.
struct RopeConfig {
  RopeType type = RopeType::kDefault;
  double theta = 10000.0;  ///< rope_theta
  int head_dim = 0;
  double factor = 1.0;  ///< linear, dynamic, llama3, yarn
  std::int64_t max_position_embeddings = 2048;
  std::int64_t original_max_position_embeddings = 0;  ///< llama3, yarn; 0 = not given
  double low_freq_factor = 1.0;                       ///< llama3
  double high_freq_factor = 4.0;                      ///< llama3
  double beta_fast = 32.0;                            ///< yarn
  double beta_slow = 1.0;                             ///< yarn
  double attention_factor = 0.0;                      ///< yarn; 0 = derive from factor and mscale
  double mscale = 0.0;                                ///< yarn
  double mscale_all_dim = 0.0;                        ///< yarn
  bool truncate = true;                               ///< yarn
};

/// \brief Yarn's attention scaling as HF derives it: `attention_factor` if given, else from the mscales.
inline double yarn_attention_factor(RopeConfig const& c) {
  if (c.attention_factor != 0.0) return c.attention_factor;
  auto const mscale_of = [](double scale, double m) { return scale <= 1.0 ? 1.0 : 0.1 * m * std::log(scale) + 1.0; };
  return (c.mscale != 0.0 && c.mscale_all_dim != 0.0) ? mscale_of(c.factor, c.mscale) / mscale_of(c.factor, c.mscale_all_dim)
                                                       : mscale_of(c.factor, 1.0);
}

/// \brief Throws `kvcompress::Error` naming the field and the value for a configuration HF rejects
/// or that would produce NaN frequencies.
inline void validate(RopeConfig const& c) {
  KVC_CHECK(c.head_dim > 0 && c.head_dim % 2 == 0,
            "rope head_dim must be positive and even (RoPE rotates pairs of channels), got " << c.head_dim);
  KVC_CHECK(c.theta > 0.0 && std::isfinite(c.theta), "rope theta must be positive and finite, got " << c.theta);
  KVC_CHECK(std::isfinite(c.factor), "rope factor must be finite, got " << c.factor);
  KVC_CHECK(c.max_position_embeddings > 0, "rope max_position_embeddings must be positive, got "
                                               << c.max_position_embeddings);
  if (c.type != RopeType::kDefault)
    KVC_CHECK(c.factor >= 1.0, "rope factor must be >= 1 for this rope_type, got " << c.factor);
  if (c.type == RopeType::kLlama3) {
    KVC_CHECK(c.original_max_position_embeddings > 0,
              "rope original_max_position_embeddings must be given for llama3, got " << c.original_max_position_embeddings);
    KVC_CHECK(c.low_freq_factor > 0.0 && c.high_freq_factor > c.low_freq_factor && std::isfinite(c.high_freq_factor),
              "llama3 rope needs 0 < low_freq_factor < high_freq_factor, got low_freq_factor = "
                  << c.low_freq_factor << ", high_freq_factor = " << c.high_freq_factor);
  }
  if (c.type == RopeType::kYarn) {
    KVC_CHECK(c.original_max_position_embeddings > 0,
              "rope original_max_position_embeddings must be given for yarn, got " << c.original_max_position_embeddings);
    KVC_CHECK(c.beta_fast > 0.0 && c.beta_slow > 0.0, "yarn beta_fast and beta_slow must be positive, got beta_fast = "
                                                          << c.beta_fast << ", beta_slow = " << c.beta_slow);
    KVC_CHECK(c.attention_factor >= 0.0 && std::isfinite(c.attention_factor),
              "yarn attention_factor must be non-negative and finite, got " << c.attention_factor);
    KVC_CHECK(std::isfinite(c.beta_fast) && std::isfinite(c.beta_slow),
              "yarn beta_fast and beta_slow must be finite, got beta_fast = " << c.beta_fast << ", beta_slow = " << c.beta_slow);
    KVC_CHECK(std::isfinite(c.mscale) && std::isfinite(c.mscale_all_dim),
              "yarn mscale and mscale_all_dim must be finite, got mscale = " << c.mscale << ", mscale_all_dim = "
                                                                            << c.mscale_all_dim);
    // cos and sin are scaled by it in float: 0, a negative value, or one float cannot hold would
    // silently zero, flip or overflow every rotated query and key.
    double const a = yarn_attention_factor(c);
    float const a32 = static_cast<float>(a);
    KVC_CHECK(std::isfinite(a32) && a32 > 0.0f,
              "yarn attention scaling must be a positive, finite float, got " << a << " (attention_factor = " << c.attention_factor
                  << ", mscale = " << c.mscale << ", mscale_all_dim = " << c.mscale_all_dim << ", factor = " << c.factor << ")");
  }
}

}  // namespace kvcompress
