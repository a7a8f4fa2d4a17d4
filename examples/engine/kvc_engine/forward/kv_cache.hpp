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
///
/// Packed keys (ThinK, `pack_keys`): a layer may store the keys of its first `packed_length(layer, head)`
/// entries at `kept` of their head_dim channels ([kv_heads, packed rows, kept] plus each kv head's channel
/// index), and gives the full-width memory of those keys back. Entries appended later keep every channel,
/// as in kvpress, whose ThinK zeroes channels of the prefill's keys only; their full-width keys sit in
/// `keys(layer, head)` from the row's first slot after the packed ones. Values are never packed. A layer
/// that was never packed has no packed entries, so its keys are laid out as before.

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kvcompress/cache/aligned_allocator.hpp"
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
    for (auto& l : layers_) {
      l.lengths.assign(static_cast<std::size_t>(kv_heads), 0);
      l.packed.assign(static_cast<std::size_t>(kv_heads), 0);
    }
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
      std::int64_t const key_rows = capacity - (capacity_ - l.key_rows);  // the packed slots stay out of `keys`
      Pool k(static_cast<std::size_t>(kv_heads_ * key_rows) * d);
      Pool v(static_cast<std::size_t>(kv_heads_ * capacity) * d);
      std::vector<std::int32_t> pos(static_cast<std::size_t>(kv_heads_ * capacity));
      for (std::int64_t h = 0; h < kv_heads_; ++h) {
        std::size_t const n = static_cast<std::size_t>(l.lengths[static_cast<std::size_t>(h)]);
        std::size_t const full = n - static_cast<std::size_t>(l.packed[static_cast<std::size_t>(h)]);  // full-width keys
        std::size_t const from = static_cast<std::size_t>(h * capacity_), to = static_cast<std::size_t>(h * capacity);
        std::size_t const key_from = static_cast<std::size_t>(h * l.key_rows), key_to = static_cast<std::size_t>(h * key_rows);
        std::copy_n(l.keys.begin() + static_cast<std::ptrdiff_t>(key_from * d), full * d, k.begin() + static_cast<std::ptrdiff_t>(key_to * d));
        std::copy_n(l.values.begin() + static_cast<std::ptrdiff_t>(from * d), n * d, v.begin() + static_cast<std::ptrdiff_t>(to * d));
        std::copy_n(l.positions.begin() + static_cast<std::ptrdiff_t>(from), n, pos.begin() + static_cast<std::ptrdiff_t>(to));
      }
      l.keys.swap(k);
      l.values.swap(v);
      l.positions.swap(pos);
      l.key_rows = key_rows;
    }
    capacity_ = capacity;
  }

  /// \brief Stores every live key of `layer` packed: `kept` channels each, kv head h keeping channels
  /// `channels[h·kept …]` (strictly ascending, in [0, head_dim)) and its i-th entry's key being
  /// `keys[(h·capacity + i)·kept …]` (`kvcompress::PackedKeys`' layout, as ThinKPress writes it). The
  /// full-width key memory of those entries is given back; keys appended later are stored full-width.
  /// \param channels [kv_heads, kept]  \param keys [kv_heads, capacity, kept]
  void pack_keys(std::int64_t layer, std::int64_t kept, std::vector<std::int32_t> const& channels, std::vector<float> const& keys) {
    Layer& l = at(layer);
    KVC_CHECK(l.kept == 0, "pack_keys: layer " << layer << "'s keys are already packed (" << l.kept << " channels)");
    KVC_CHECK(kept >= 1 && kept <= head_dim_, "pack_keys: kept = " << kept << " is outside [1, head_dim = " << head_dim_ << "]");
    KVC_CHECK(static_cast<std::int64_t>(channels.size()) == kv_heads_ * kept,
              "pack_keys: channels holds " << channels.size() << " indices, kv_heads × kept = " << kv_heads_ * kept);
    KVC_CHECK(static_cast<std::int64_t>(keys.size()) == kv_heads_ * capacity_ * kept,
              "pack_keys: keys holds " << keys.size() << " floats, kv_heads × capacity × kept = " << kv_heads_ * capacity_ * kept);
    for (std::int64_t h = 0; h < kv_heads_; ++h)
      for (std::int64_t c = 0; c < kept; ++c) {
        std::int32_t const ch = channels[static_cast<std::size_t>(h * kept + c)];
        KVC_CHECK(ch >= 0 && ch < head_dim_, "pack_keys: channels[" << h << ", " << c << "] = " << ch << " is outside [0, head_dim = "
                                                                    << head_dim_ << ")");
        KVC_CHECK(c == 0 || ch > channels[static_cast<std::size_t>(h * kept + c - 1)],
                  "pack_keys: kv head " << h << "'s channels must be strictly ascending, channels[" << h << ", " << c << "] = " << ch
                                        << " follows " << channels[static_cast<std::size_t>(h * kept + c - 1)]);
      }
    std::int64_t const rows = *std::max_element(l.lengths.begin(), l.lengths.end());
    std::int64_t const fewest = *std::min_element(l.lengths.begin(), l.lengths.end());
    l.packed_keys.assign(static_cast<std::size_t>(kv_heads_ * rows * kept), 0.0f);
    for (std::int64_t h = 0; h < kv_heads_; ++h)
      std::copy_n(keys.begin() + h * capacity_ * kept, l.lengths[static_cast<std::size_t>(h)] * kept,
                  l.packed_keys.begin() + h * rows * kept);
    l.channels = channels;
    l.packed = l.lengths;
    l.packed_rows = rows;
    l.kept = kept;
    l.key_rows = capacity_ - fewest;
    Pool(static_cast<std::size_t>(kv_heads_ * l.key_rows * head_dim_)).swap(l.keys);  // the old keys' memory goes
  }

  /// \brief The layer's cache as kvcompress sees it (validated): presses compact it in place, updating
  /// lengths and positions. Valid until the next `reserve`.
  [[nodiscard]] kvcompress::KVCacheView<float> view(std::int64_t layer) {
    Layer& l = at(layer);
    KVC_CHECK(l.kept == 0, "layer " << layer << "'s keys are packed (" << l.kept << " of " << head_dim_
                                    << " channels, ThinK): a press that reads the full keys cannot run on it");
    kvcompress::CacheExtents const e{1, kv_heads_, capacity_, head_dim_};
    auto const layout = kvcompress::make_strided_layout(
        e, {kvcompress::Axis::kBatch, kvcompress::Axis::kHead, kvcompress::Axis::kSeq, kvcompress::Axis::kDim});
    return kvcompress::make_cache_view(l.keys.data(), l.values.data(), e, layout, l.lengths.data(), l.positions.data());
  }

  /// Row pointers for the engine: values [capacity, head_dim] and positions [capacity] of one kv head, and
  /// its full-width keys [capacity − packed_length, head_dim] of slots packed_length … on (from slot 0 in a
  /// layer never packed).
  [[nodiscard]] float* keys(std::int64_t layer, std::int64_t head) {
    Layer& l = at(layer);
    return l.keys.data() + head * l.key_rows * head_dim_;
  }
  [[nodiscard]] float* values(std::int64_t layer, std::int64_t head) { return at(layer).values.data() + head * capacity_ * head_dim_; }
  [[nodiscard]] std::int32_t* positions(std::int64_t layer, std::int64_t head) { return at(layer).positions.data() + head * capacity_; }
  [[nodiscard]] std::int32_t& length_ref(std::int64_t layer, std::int64_t head) {
    return at(layer).lengths[static_cast<std::size_t>(head)];
  }
  /// Channels each packed key keeps; 0: the layer's keys are not packed.
  [[nodiscard]] std::int64_t kept_channels(std::int64_t layer) const { return at(layer).kept; }
  /// Entries of the kv head whose keys are packed: its first ones.
  [[nodiscard]] std::int32_t packed_length(std::int64_t layer, std::int64_t head) const {
    return at(layer).packed[static_cast<std::size_t>(head)];
  }
  /// Packed keys [packed_length, kept] and their channels [kept] of one kv head of a packed layer.
  [[nodiscard]] float const* packed_keys(std::int64_t layer, std::int64_t head) const {
    Layer const& l = at(layer);
    return l.packed_keys.data() + head * l.packed_rows * l.kept;
  }
  [[nodiscard]] std::int32_t const* channels(std::int64_t layer, std::int64_t head) const {
    Layer const& l = at(layer);
    return l.channels.data() + head * l.kept;
  }
  /// Called by the engine once a chunk of `tokens` has been appended to every layer.
  void advance(std::int64_t tokens) noexcept { next_position_ += tokens; }

  /// K+V bytes of the live entries over all layers and heads (a packed key counts its kept channels).
  [[nodiscard]] std::int64_t bytes_in_use() const noexcept {
    std::int64_t floats = 0;
    for (auto const& l : layers_)
      for (std::size_t h = 0; h < l.lengths.size(); ++h)
        floats += l.packed[h] * l.kept + (2 * std::int64_t{l.lengths[h]} - l.packed[h]) * head_dim_;
    return floats * static_cast<std::int64_t>(sizeof(float));
  }

  /// Bytes of the key and value buffers the cache holds (live or not), positions aside.
  [[nodiscard]] std::int64_t bytes_allocated() const noexcept {
    std::size_t floats = 0;
    for (auto const& l : layers_) floats += l.keys.size() + l.values.size() + l.packed_keys.size();
    return static_cast<std::int64_t>(floats * sizeof(float));
  }

 private:
  /// K or V storage on whole cache lines: compaction streams whole 64-byte lines (kvcompress's
  /// cpu/compact.hpp), which std::vector's 16-byte-aligned blocks would leave to ordinary stores.
  using Pool = std::vector<float, kvcompress::AlignedAllocator<float>>;

  struct Layer {
    Pool keys;                            // [kv_heads, key_rows, head_dim]: head h's slots packed[h] … on
    Pool values;                          // [kv_heads, capacity, head_dim]
    std::vector<std::int32_t> lengths;    // [kv_heads]
    std::vector<std::int32_t> positions;  // [kv_heads, capacity]
    std::int64_t key_rows = 0;            // capacity − the fewest packed entries of a head (capacity unless packed)
    // Packed keys: kept 0 and packed all 0 unless pack_keys ran on the layer.
    std::int64_t kept = 0, packed_rows = 0;
    std::vector<std::int32_t> packed;     // [kv_heads] entries whose keys are packed
    std::vector<float> packed_keys;       // [kv_heads, packed_rows, kept]
    std::vector<std::int32_t> channels;   // [kv_heads, kept] ascending
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
