#pragma once
/// \file
/// \brief kvpress's `CompressionRatioDecodingPress`: a decoding press whose target is a fraction of
/// every token seen so far, target = max(1, int(tokens_seen · (1 − target_compression_ratio))),
/// with tokens_seen = the absolute position of the step's last token + 1 (kvpress: max(position_ids)
/// + 1). At position 107 with ratio 0.5 the target is int(108 · 0.5) = 54.

#include <algorithm>
#include <cstdint>

#include "kvcompress/press/decoding.hpp"

namespace kvcompress {

/// \brief CompressionRatioDecodingPress parameters, with kvpress's defaults.
struct CompressionRatioDecodingOptions {
  std::int64_t compression_interval = 512;  ///< decode steps between two compressions
  double target_compression_ratio = 0.5;    ///< fraction of the tokens seen that is removed, in [0, 1)
  std::int64_t query_buffer_size = 256;     ///< earlier steps whose queries the scorer also sees

  void validate() const {
    KVC_CHECK(compression_interval > 0, "compression_interval must be positive, got " << compression_interval);
    KVC_CHECK(target_compression_ratio >= 0.0 && target_compression_ratio < 1.0,
              "target_compression_ratio must be in [0, 1), got " << target_compression_ratio);
    KVC_CHECK(query_buffer_size >= 0, "query_buffer_size must be non-negative, got " << query_buffer_size);
  }
  /// Entries kept per row when `tokens_seen` tokens have entered the cache so far.
  [[nodiscard]] std::int64_t target(std::int64_t tokens_seen) const noexcept {
    auto const t = static_cast<std::int64_t>(static_cast<double>(tokens_seen) * (1.0 - target_compression_ratio));
    return std::max<std::int64_t>(1, t);
  }
};

template <class Inner, class T = float>
using CompressionRatioDecodingPress = BasicDecodingPress<Inner, T, CompressionRatioDecodingOptions>;

}  // namespace kvcompress
