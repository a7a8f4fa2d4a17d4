#pragma once
/// \file
/// \brief `KVCache`: one sequence's key/value cache, owned by the engine and handed to kvcompress as a
/// `KVCacheView` per layer. Each layer holds K and V in [kv_heads, capacity, head_dim] order (a kv head's
/// entries are one contiguous row-major [capacity, head_dim] block, which attention reads as a matrix),
/// a live length per kv head, and the original position of every entry.
///
/// After a press, kv heads hold different entries and may hold different numbers of them; every row stays
/// in position order, and the next token's position is `next_position()` (tokens processed so far), not
/// a cache length — kvpress's convention.

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kvcompress/cache/kv_cache_view.hpp"
#include "kvcompress/cache/strided_layout.hpp"

namespace kvc_engine {

class KVCache {
 public:
  KVCache(std::int64_t num_layers, std::int64_t kv_heads, std::int64_t head_dim, std::int64_t capacity)
      : kv_heads_(kv_heads), head_dim_(head_dim) {
    KVC_CHECK(num_layers > 0 && kv_heads > 0 && head_dim > 0,
              "KVCache needs positive num_layers, kv_heads and head_dim, got " << num_layers << ", " << kv_heads << ", "
                                                                                << head_dim);
    layers_.resize(static_cast<std::size_t>(num_layers));
    for (auto& l : layers_) l.lengths.assign(static_cast<std::size_t>(kv_heads), 0);
    reserve(std::max<std::int64_t>(capacity, 1));
  }

  [[nodiscard]] std::int64_t num_layers() const noexcept { return static_cast<std::int64_t>(layers_.size()); }
  [[nodiscard]] std::int64_t kv_heads() const noexcept { return kv_heads_; }
  [[nodiscard]] std::int64_t head_dim() const noexcept { return head_dim_; }
  [[nodiscard]] std::int64_t capacity() const noexcept { return capacity_; }
  /// Tokens processed so far: the RoPE position of the next token.
  [[nodiscard]] std::int64_t next_position() const noexcept { return next_position_; }
  [[nodiscard]] std::int32_t length(std::int64_t layer, std::int64_t head) const {
    return at(layer).lengths[static_cast<std::size_t>(head)];
  }

  /// \brief Grows every row to at least `capacity` slots, keeping the live entries.
  void reserve(std::int64_t capacity) {
    KVC_CHECK(capacity <= std::int64_t{1} << 30, "KVCache capacity " << capacity << " is too large");
    if (capacity <= capacity_) return;
    std::size_t const d = static_cast<std::size_t>(head_dim_);
    for (auto& l : layers_) {
      std::vector<float> k(static_cast<std::size_t>(kv_heads_ * capacity) * d), v(k.size());
      std::vector<std::int32_t> pos(static_cast<std::size_t>(kv_heads_ * capacity));
      for (std::int64_t h = 0; h < kv_heads_; ++h) {
        std::size_t const n = static_cast<std::size_t>(l.lengths[static_cast<std::size_t>(h)]);
        std::size_t const from = static_cast<std::size_t>(h * capacity_), to = static_cast<std::size_t>(h * capacity);
        std::copy_n(l.keys.begin() + static_cast<std::ptrdiff_t>(from * d), n * d, k.begin() + static_cast<std::ptrdiff_t>(to * d));
        std::copy_n(l.values.begin() + static_cast<std::ptrdiff_t>(from * d), n * d, v.begin() + static_cast<std::ptrdiff_t>(to * d));
        std::copy_n(l.positions.begin() + static_cast<std::ptrdiff_t>(from), n, pos.begin() + static_cast<std::ptrdiff_t>(to));
      }
      l.keys.swap(k);
      l.values.swap(v);
      l.positions.swap(pos);
    }
    capacity_ = capacity;
  }

  /// \brief The layer's cache as kvcompress sees it (validated): presses compact it in place, updating
  /// lengths and positions. Valid until the next `reserve`.
  [[nodiscard]] kvcompress::KVCacheView<float> view(std::int64_t layer) {
    Layer& l = at(layer);
    kvcompress::CacheExtents const e{1, kv_heads_, capacity_, head_dim_};
    auto const layout = kvcompress::make_strided_layout(
        e, {kvcompress::Axis::kBatch, kvcompress::Axis::kHead, kvcompress::Axis::kSeq, kvcompress::Axis::kDim});
    return kvcompress::make_cache_view(l.keys.data(), l.values.data(), e, layout, l.lengths.data(), l.positions.data());
  }

  /// Row pointers for the engine: keys/values [capacity, head_dim] and positions [capacity] of one kv head.
  [[nodiscard]] float* keys(std::int64_t layer, std::int64_t head) { return at(layer).keys.data() + head * capacity_ * head_dim_; }
  [[nodiscard]] float* values(std::int64_t layer, std::int64_t head) { return at(layer).values.data() + head * capacity_ * head_dim_; }
  [[nodiscard]] std::int32_t* positions(std::int64_t layer, std::int64_t head) { return at(layer).positions.data() + head * capacity_; }
  [[nodiscard]] std::int32_t& length_ref(std::int64_t layer, std::int64_t head) {
    return at(layer).lengths[static_cast<std::size_t>(head)];
  }
  /// Called by the engine once a chunk of `tokens` has been appended to every layer.
  void advance(std::int64_t tokens) noexcept { next_position_ += tokens; }

  /// K+V bytes of the live entries over all layers and heads.
  [[nodiscard]] std::int64_t bytes_in_use() const noexcept {
    std::int64_t entries = 0;
    for (auto const& l : layers_)
      for (auto n : l.lengths) entries += n;
    return entries * head_dim_ * 2 * static_cast<std::int64_t>(sizeof(float));
  }

 private:
  struct Layer {
    std::vector<float> keys, values;      // [kv_heads, capacity, head_dim] each
    std::vector<std::int32_t> lengths;    // [kv_heads]
    std::vector<std::int32_t> positions;  // [kv_heads, capacity]
  };

  Layer& at(std::int64_t layer) {
    KVC_CHECK(layer >= 0 && layer < num_layers(), "layer " << layer << " is outside [0, " << num_layers() << ")");
    return layers_[static_cast<std::size_t>(layer)];
  }
  Layer const& at(std::int64_t layer) const {
    KVC_CHECK(layer >= 0 && layer < num_layers(), "layer " << layer << " is outside [0, " << num_layers() << ")");
    return layers_[static_cast<std::size_t>(layer)];
  }

  std::int64_t kv_heads_, head_dim_;
  std::int64_t capacity_ = 0;
  std::int64_t next_position_ = 0;
  std::vector<Layer> layers_;
};

}  // namespace kvc_engine
