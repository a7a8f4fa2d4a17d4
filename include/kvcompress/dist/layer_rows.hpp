#pragma once
/// \file
/// \brief Per-row values of the whole layer on every rank of a tensor-parallel group, exactly.
///
/// A press that combines its kv heads (sums them, z-scores over them) computes a few values per row
/// on its own rank, writes them at their global rows of a zeroed [batch, layer kv heads, width] table
/// and adds the tables of the group with one all-reduce. Each slot has exactly one writer, so every
/// value arrives unchanged: floats are added to zeros, doubles travel as their bit patterns in an
/// int64 sum (x + 0 = x for integers too). Every rank then combines the rows in the whole layer's
/// order, which is the arithmetic of one process, so the results are bit-identical to it.

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kvcompress/detail/workspace.hpp"
#include "kvcompress/dist/communicator.hpp"
#include "kvcompress/dist/shard_protocol.hpp"

namespace kvcompress::detail {

/// A [batch, heads, width] table of doubles held as int64 bit patterns (the communicator reduces
/// int64 and float only).
class LayerRows {
 public:
  LayerRows(std::int64_t* bits, std::int64_t batch, std::int64_t heads, std::int64_t width) noexcept
      : bits_(bits), batch_(batch), heads_(heads), width_(width) {
    std::fill(bits_, bits_ + batch * heads * width, std::int64_t{0});
  }

  [[nodiscard]] static std::size_t bytes(std::int64_t batch, std::int64_t heads, std::int64_t width) {
    return Workspace::bytes_for<std::int64_t>(size_product(batch, heads, width));
  }

  [[nodiscard]] double at(std::int64_t b, std::int64_t h, std::int64_t j) const noexcept {
    double v = 0.0;
    std::memcpy(&v, bits_ + (b * heads_ + h) * width_ + j, sizeof v);
    return v;
  }
  void set(std::int64_t b, std::int64_t h, std::int64_t j, double v) noexcept {
    std::memcpy(bits_ + (b * heads_ + h) * width_ + j, &v, sizeof v);
  }

  /// On a split layer, every rank's rows into every rank's table (one int64 all-reduce); a whole
  /// layer already holds them. Call after the handshake.
  template <class T>
  void share(Observation<T> const& obs) {
    if (obs.shard.split())
      obs.shard.communicator->all_reduce(bits_, static_cast<std::size_t>(batch_ * heads_ * width_), ReduceOp::sum);
  }

  [[nodiscard]] std::int64_t heads() const noexcept { return heads_; }

 private:
  std::int64_t* bits_;  // [batch, heads, width]
  std::int64_t batch_, heads_, width_;
};

/// The largest of `local` over the ranks of the group (itself on a whole layer); after the handshake.
template <class T>
float layer_max(Observation<T> const& obs, float local) {
  if (obs.shard.split()) obs.shard.communicator->all_reduce(&local, 1, ReduceOp::max);
  return local;
}

/// A double's bits as an int64, for the values a handshake must find equal on every rank.
inline std::int64_t bits_of(double v) noexcept {
  std::int64_t b = 0;
  std::memcpy(&b, &v, sizeof b);
  return b;
}

}  // namespace kvcompress::detail
