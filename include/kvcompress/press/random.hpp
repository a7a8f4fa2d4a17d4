#pragma once
/// \file
/// \brief Random press (kvpress `RandomPress`): uniform random scores in [0, 1), a baseline.
///
/// Each (batch, kv head) row draws from its own SplitMix64 stream, keyed by (seed, layer_idx,
/// batch, head); entry i takes the stream's i-th output. Scores therefore depend neither on the
/// thread count nor on the scheduling nor on the cache capacity: a seeded press gives the same
/// scores in every run and on every device configuration. Without a seed, the key comes from
/// `std::random_device` (one draw per `score` call). On a tensor-parallel shard a row's stream is
/// keyed by its global kv head, so a seeded press gives each head the scores that the whole layer
/// gives it (no communication); unseeded, each rank draws its own key.
///
/// Bit-equality with torch's generator (`torch.rand` with `manual_seed`) is not a goal: only the
/// distribution matches. Two other differences from kvpress: its seeded press restarts the same
/// stream in every layer (ours differs per layer), and its scores are drawn in the keys' dtype
/// (bf16 scores tie often; ours are float with 24 random bits).

#include <cstddef>
#include <cstdint>
#include <optional>
#include <random>

#include "kvcompress/press/scorer.hpp"

namespace kvcompress {

namespace detail {

/// SplitMix64's output function (Steele, Lea, Flood 2014): a bijective 64-bit mixer.
[[nodiscard]] constexpr std::uint64_t splitmix64_mix(std::uint64_t z) noexcept {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

inline constexpr std::uint64_t kSplitMix64Gamma = 0x9E3779B97F4A7C15ull;

/// The i-th output (i ≥ 0) of the SplitMix64 sequence whose initial state is `state`.
[[nodiscard]] constexpr std::uint64_t splitmix64_at(std::uint64_t state, std::uint64_t i) noexcept {
  return splitmix64_mix(state + (i + 1) * kSplitMix64Gamma);
}

/// A float uniform on [0, 1) from the top 24 bits of x (every value exactly representable).
[[nodiscard]] constexpr float unit_float(std::uint64_t x) noexcept {
  return static_cast<float>(x >> 40) * (1.0f / 16777216.0f);
}

}  // namespace detail

/// \brief Uniform random scores; reproducible when `seed` is set.
struct RandomPress {
  double compression_ratio = 0.0;
  std::optional<std::uint64_t> seed{};  ///< unset: a fresh std::random_device key per call

  template <class T, class L>
  [[nodiscard]] std::size_t workspace_bytes(CpuDevice const&, Observation<T> const&,
                                            KVCacheView<T, L> const&) const noexcept {
    return 0;
  }

  /// \param scores [batch, kv_heads, capacity]
  template <class T, class L>
  void score(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, float* scores,
             Workspace&) const {
    std::uint64_t base = 0;
    if (seed) {
      base = *seed;
    } else {
      std::random_device rd;
      base = (static_cast<std::uint64_t>(rd()) << 32) ^ static_cast<std::uint64_t>(rd());
    }
    // Key of the layer's streams: the seed and the layer index, each through the mixer.
    std::uint64_t const layer_key = detail::splitmix64_at(
        detail::splitmix64_mix(base), static_cast<std::uint64_t>(static_cast<std::int64_t>(obs.layer_idx)));
    std::int64_t const heads = cache.extents.kv_heads, cap = cache.extents.capacity;
    detail::parallel_for(dev, cache.extents.batch * heads, [&](std::int64_t r, int) {
      std::uint64_t const b = static_cast<std::uint64_t>(r / heads);
      auto const h = static_cast<std::uint64_t>(obs.shard.first_kv_head + r % heads);  // the head's place in the layer
      std::uint64_t const row_key = detail::splitmix64_at(detail::splitmix64_at(layer_key, b), h);
      float* out = scores + r * cap;
      for (std::int32_t i = 0; i < cache.lengths[r]; ++i)
        out[i] = detail::unit_float(detail::splitmix64_at(row_key, static_cast<std::uint64_t>(i)));
    });
  }
};

}  // namespace kvcompress
