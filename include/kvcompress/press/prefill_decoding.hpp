#pragma once
/// \file
/// \brief kvpress's `PrefillDecodingPress`: one press for the prefill, another during decoding,
/// behind a single `step`. Either may be absent (`std::nullopt`): no compression in that phase.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <optional>
#include <utility>
#include <vector>

#include "kvcompress/press/decoding.hpp"

namespace kvcompress {

/// \tparam Prefill  a press that `compress` accepts
/// \tparam Decoding a decoding press (`DecodingPress`, `CompressionRatioDecodingPress`)
template <class Prefill, class Decoding>
class PrefillDecodingPress {
 public:
  PrefillDecodingPress(std::optional<Prefill> prefilling_press, std::optional<Decoding> decoding_press)
      : prefill_(std::move(prefilling_press)), decoding_(std::move(decoding_press)) {}

  [[nodiscard]] std::optional<Prefill> const& prefilling_press() const noexcept { return prefill_; }
  [[nodiscard]] std::optional<Decoding> const& decoding_press() const noexcept { return decoding_; }

  /// \brief Starts a new sequence: the decoding press forgets its steps and queries.
  void reset() noexcept {
    if (decoding_) decoding_->reset();
  }

  /// \brief Scratch bytes of `step` for this observation and cache.
  template <class T, class L>
  [[nodiscard]] std::size_t workspace_bytes(CpuDevice const& dev, Observation<T> const& obs,
                                            KVCacheView<T, L> const& cache) const {
    std::size_t bytes = 0;
    if (prefill_ && obs.position == 0) bytes = compress_workspace_bytes(dev, *prefill_, obs, cache);
    if (decoding_ && obs.position != 0) bytes = std::max(bytes, decoding_->workspace_bytes(dev, obs, cache));
    return bytes;
  }

  /// \brief A prefill (`obs.position == 0`) is compressed by the prefilling press; every later
  /// forward pass goes to the decoding press (which also learns from the prefill that a new
  /// sequence starts). Returns whether entries were removed.
  template <class T, class L>
  bool step(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, Workspace workspace) {
    detail::validate_inputs(obs, cache);
    bool removed = false;
    if (prefill_ && obs.position == 0) {
      std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads;
      std::int64_t const before = std::accumulate(cache.lengths, cache.lengths + rows, std::int64_t{0});
      compress(dev, *prefill_, obs, cache, workspace);
      removed = std::accumulate(cache.lengths, cache.lengths + rows, std::int64_t{0}) < before;
    }
    if (decoding_) removed = decoding_->step(dev, obs, cache, workspace) || removed;
    return removed;
  }

  /// \brief Allocating convenience overload of `step`.
  template <class T, class L>
  bool step(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache) {
    std::vector<std::byte> scratch(workspace_bytes(dev, obs, cache));
    return step(dev, obs, cache, Workspace(scratch.data(), scratch.size()));
  }

 private:
  std::optional<Prefill> prefill_;
  std::optional<Decoding> decoding_;
};

}  // namespace kvcompress
