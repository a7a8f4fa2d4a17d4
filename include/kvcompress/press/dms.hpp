#pragma once
/// \file
/// \brief DMS (arXiv 2506.05345) as kvpress's `DMSPress` runs it (dense prefill, no trained
/// evictor): each entry is scored once, by the inner scorer press, when its chunk arrives; it then
/// waits in a sliding window of the `sliding_window_size` most recent entries, and when it leaves
/// the window it is removed if its score is below `threshold` and kept for good otherwise. Removal
/// is real: the row is compacted and its length shrinks, so heads end up with different lengths.
/// kvpress only masks the entry (§1.7 of the semantics); attention over our cache equals kvpress's
/// masked attention.
///
/// The engine calls `step` once per forward pass and layer, after the pass's keys and values were
/// appended: for the prefill (`position == 0`, which starts a new sequence) and, with `decoding`, for
/// every later pass. Memory: the pending scores ([num_layers, batch, kv_heads, sliding_window_size]
/// floats) are allocated at construction; `step` allocates nothing when given a workspace of
/// `workspace_bytes(…)` bytes (which grows with the chunk length, so size it for the prefill).

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "kvcompress/detail/tail_view.hpp"
#include "kvcompress/press/scorer.hpp"

namespace kvcompress {

/// \brief DMSPress parameters, with kvpress's defaults (kvpress has no default threshold either).
struct DMSOptions {
  float threshold = std::numeric_limits<float>::quiet_NaN();  ///< entries scoring below it are removed
  std::int64_t sliding_window_size = 128;                      ///< most recent entries never removed
  bool decoding = false;                                       ///< also remove during decoding

  void validate() const {
    KVC_CHECK(std::isfinite(threshold), "threshold must be set to a finite value, got " << threshold);
    KVC_CHECK(sliding_window_size >= 0, "sliding_window_size must be non-negative, got " << sliding_window_size);
  }
};

/// \brief The cache rows a DMS press keeps state for, fixed at construction.
struct DMSStateShape {
  int num_layers = 1;
  std::int64_t batch = 1;
  std::int64_t kv_heads = 1;
};

/// \tparam Inner a scorer press; only its `score` is used, on the chunk's new entries
template <class Inner>
class DMSPress {
 public:
  DMSPress(Inner press, DMSOptions options, DMSStateShape shape)
      : press_(std::move(press)), options_(options), shape_(shape) {
    options_.validate();
    KVC_CHECK(shape_.num_layers > 0, "shape.num_layers must be positive, got " << shape_.num_layers);
    KVC_CHECK(shape_.batch > 0, "shape.batch must be positive, got " << shape_.batch);
    KVC_CHECK(shape_.kv_heads > 0, "shape.kv_heads must be positive, got " << shape_.kv_heads);
    rows_ = shape_.batch * shape_.kv_heads;
    pending_.resize(detail::size_product(shape_.num_layers, rows_, options_.sliding_window_size));
    layers_.resize(static_cast<std::size_t>(shape_.num_layers));
  }

  [[nodiscard]] Inner const& press() const noexcept { return press_; }
  [[nodiscard]] DMSOptions const& options() const noexcept { return options_; }
  /// Entries of `layer` removed since its prefill, over all rows.
  [[nodiscard]] std::int64_t removed(int layer) const { return layers_[layer_index(layer)].removed; }
  /// Entries of each row of `layer` still inside the sliding window (not yet decided).
  [[nodiscard]] std::int64_t pending(int layer) const { return layers_[layer_index(layer)].pending; }

  /// \brief kvpress's `compression_ratio`: per layer, removed / (batch · kv_heads · tokens seen),
  /// averaged over the layers that have had their prefill. Throws before any prefill.
  [[nodiscard]] double compression_ratio() const {
    double sum = 0.0;
    int active = 0;
    for (auto const& s : layers_) {
      if (s.seen == 0) continue;
      sum += static_cast<double>(s.removed) / static_cast<double>(rows_ * s.seen);
      ++active;
    }
    KVC_CHECK(active > 0, "compression_ratio is defined only after a prefill has been compressed");
    return sum / active;
  }

  /// \brief Forgets every layer's state (a new sequence also starts with each layer's prefill).
  void reset() noexcept {
    for (auto& s : layers_) s = LayerState{};
  }

  /// \brief Scratch bytes of `step` for a chunk of `obs.chunk_tokens()` tokens.
  template <class T, class L>
  [[nodiscard]] std::size_t workspace_bytes(CpuDevice const& dev, Observation<T> const& obs,
                                            KVCacheView<T, L> const& cache) const {
    check_cache(cache);
    std::int64_t const q = chunk_length(obs);
    // A press's size query reads only the tail view's shape; the row tables are placeholders.
    std::vector<std::int32_t> first(static_cast<std::size_t>(rows_)), lengths(first.size());
    auto const tail = detail::make_tail_view(cache, static_cast<std::int32_t>(q), first.data(), lengths.data());
    return detail::sum_bytes(Workspace::bytes_for<float>(detail::size_product(rows_, q)),
                              3 * Workspace::bytes_for<std::int32_t>(static_cast<std::size_t>(rows_)),
                              press_.workspace_bytes(dev, obs, tail));
  }

  /// \brief One forward pass of one layer (prefill, or a decoding step when `decoding`); call it
  /// after the pass's `chunk_tokens()` keys and values were appended to every row. Returns whether
  /// entries were removed.
  template <class T, class L>
  bool step(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, Workspace workspace) {
    std::size_t const li = layer_index(obs.layer_idx);
    LayerState& st = layers_[li];
    KVC_CHECK(obs.position >= 0, "observation.position must be non-negative, got " << obs.position);
    check_cache(cache);
    std::int64_t const q = chunk_length(obs);
    if (obs.position == 0) {
      st = LayerState{};
    } else {
      if (!options_.decoding) return false;
      KVC_CHECK(st.seen > 0, "layer " << obs.layer_idx << " has a decoding step at position " << obs.position
                                      << " but no prefill (position 0) since the last reset");
    }
    for (std::int64_t r = 0; r < rows_; ++r)
      KVC_CHECK(cache.lengths[r] >= st.pending + q,
                "row " << r << " holds " << cache.lengths[r] << " entries, fewer than the " << st.pending
                       << " in the sliding window plus the chunk's " << q);

    // Score the chunk's new entries (and only them) with the inner press.
    float* fresh = workspace.take<float>(static_cast<std::size_t>(rows_ * q));  // [rows, q]
    std::int32_t* first = workspace.take<std::int32_t>(static_cast<std::size_t>(rows_));         // [rows]
    std::int32_t* tail_lengths = workspace.take<std::int32_t>(static_cast<std::size_t>(rows_));  // [rows]
    std::int32_t* removed_rows = workspace.take<std::int32_t>(static_cast<std::size_t>(rows_));  // [rows]
    auto const tail = detail::make_tail_view(cache, static_cast<std::int32_t>(q), first, tail_lengths);
    score(dev, press_, obs, tail, fresh, workspace);

    // Window entries plus the chunk, oldest first; the oldest `leaving` of them leave the window.
    std::int64_t const window = options_.sliding_window_size, total = st.pending + q;
    std::int64_t const leaving = std::max<std::int64_t>(0, total - window), stay = total - leaving;
    float const threshold = options_.threshold;
    detail::parallel_for(dev, rows_, [&](std::int64_t r, int) {
      float* pend = pending_.data() + (static_cast<std::int64_t>(li) * rows_ + r) * window;  // [window]
      auto const score_of = [&](std::int64_t j) { return j < st.pending ? pend[j] : fresh[r * q + j - st.pending]; };
      std::int64_t const b = r / shape_.kv_heads, h = r % shape_.kv_heads, base = cache.lengths[r] - total;
      std::int64_t out = base;
      for (std::int64_t j = 0; j < total; ++j) {
        if (j < leaving && score_of(j) < threshold) continue;
        if (out != base + j) move_entry(cache, b, h, base + j, out);
        ++out;
      }
      // Shifting left in place is safe: slot i is written only after slot leaving + i ≥ i was read.
      for (std::int64_t i = 0; i < stay; ++i) pend[i] = score_of(leaving + i);
      removed_rows[r] = static_cast<std::int32_t>(base + total - out);
      cache.lengths[r] = static_cast<std::int32_t>(out);
    });
    std::int64_t removed_now = 0;
    for (std::int64_t r = 0; r < rows_; ++r) removed_now += removed_rows[r];
    st.pending = stay;
    st.seen += q;
    st.removed += removed_now;
    return removed_now > 0;
  }

  /// \brief Allocating convenience overload of `step`.
  template <class T, class L>
  bool step(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache) {
    std::vector<std::byte> scratch(workspace_bytes(dev, obs, cache));
    return step(dev, obs, cache, Workspace(scratch.data(), scratch.size()));
  }

 private:
  struct LayerState {
    std::int64_t pending = 0;  // entries per row inside the window, scored but not decided
    std::int64_t seen = 0;     // tokens since the prefill (0: no prefill yet)
    std::int64_t removed = 0;  // entries removed since the prefill, all rows
  };

  [[nodiscard]] std::size_t layer_index(int layer) const {
    KVC_CHECK(layer >= 0 && layer < shape_.num_layers,
              "observation.layer_idx = " << layer << " is outside [0, num_layers = " << shape_.num_layers << ")");
    return static_cast<std::size_t>(layer);
  }

  template <class T, class L>
  void check_cache(KVCacheView<T, L> const& cache) const {
    detail::validate_view(cache);
    KVC_CHECK(cache.extents.batch == shape_.batch && cache.extents.kv_heads == shape_.kv_heads,
              "cache [batch = " << cache.extents.batch << ", kv_heads = " << cache.extents.kv_heads
                                << "] does not match the state's [batch = " << shape_.batch
                                << ", kv_heads = " << shape_.kv_heads << "]");
  }

  template <class T>
  static std::int64_t chunk_length(Observation<T> const& obs) {
    std::int64_t const q = obs.chunk_tokens();
    KVC_CHECK(q > 0, "observation.chunk_length (or queries) must give the number of new tokens, got " << q);
    return q;
  }

  /// Slot `from` of row (b, h) moves to slot `to` < from: key, value and original position.
  template <class T, class L>
  static void move_entry(KVCacheView<T, L> const& cache, std::int64_t b, std::int64_t h, std::int64_t from,
                         std::int64_t to) {
    for (std::int64_t c = 0; c < cache.extents.head_dim; ++c) {
      cache.key(b, h, to, c) = cache.key(b, h, from, c);
      cache.value(b, h, to, c) = cache.value(b, h, from, c);
    }
    if (cache.positions) {
      std::int32_t* pos = cache.positions + cache.row(b, h) * cache.extents.capacity;  // [capacity]
      pos[to] = pos[from];
    }
  }

  Inner press_;
  DMSOptions options_;
  DMSStateShape shape_;
  std::int64_t rows_ = 1;             // batch · kv_heads
  std::vector<float> pending_;        // [num_layers, batch, kv_heads, sliding_window_size] scores in the window
  std::vector<LayerState> layers_;    // [num_layers]
};

}  // namespace kvcompress
