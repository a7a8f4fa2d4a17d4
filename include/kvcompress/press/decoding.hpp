#pragma once
/// \file
/// \brief Compression during decoding (kvpress `DecodingPress`). The engine calls `step` once per
/// decode step and layer, after the step's keys and values were appended to the cache; every
/// `compression_interval` steps (or at once for a chunk of at least `target_size` tokens) the inner
/// scorer press scores the whole cache and every (batch, kv head) row keeps its `target_size`
/// best entries. Between compressions a row therefore holds between target_size and
/// target_size + compression_interval − 1 entries.
///
/// The scorer sees the pre-RoPE queries of the steps since the last compression (at most
/// `query_buffer_size` earlier steps plus the current one) as `Observation::queries`, with
/// `position + chunk_length` = the absolute position after the newest token, so Expected
/// Attention's future window starts where the future really starts. Window presses (SnapKV,
/// PyramidKV, TOVA) get their window queries rotated at the true absolute positions of the buffered
/// tokens. kvpress uses the buffer length as the position in both places (docs/deviations.md).
///
/// Memory: the query ring buffers are allocated once, at construction
/// ([num_layers, batch, q_heads, query_buffer_size + 1, head_dim] of T). `step` allocates nothing
/// when it is given a workspace of `workspace_bytes(…)` bytes.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "kvcompress/press/query_ring.hpp"
#include "kvcompress/press/scorer.hpp"

namespace kvcompress {

/// \brief The ratio r for which `int(n·(1 − r))` is exactly `target` (kvpress's
/// `_find_target_compression_ratio`): 0 when n ≤ target; otherwise a bisection on [0, 1] that starts
/// at 1 − target/n and stops after 20 halvings. n = 58, target = 54 → 1 − 54/58.
[[nodiscard]] inline double find_target_compression_ratio(std::int64_t n, std::int64_t target) noexcept {
  if (n <= target) return 0.0;
  double const dn = static_cast<double>(n);
  double ratio = 1.0 - static_cast<double>(target) / dn, lo = 0.0, hi = 1.0;
  for (int i = 0; i < 20; ++i) {
    auto const kept = static_cast<std::int64_t>(dn * (1.0 - ratio));
    if (kept == target) break;
    if (kept > target) {  // too many kept: compress harder
      lo = ratio;
      ratio = (ratio + hi) / 2.0;
    } else {
      hi = ratio;
      ratio = (lo + ratio) / 2.0;
    }
  }
  return ratio;
}

/// \brief DecodingPress parameters, with kvpress's defaults.
struct DecodingOptions {
  std::int64_t compression_interval = 512;  ///< decode steps between two compressions
  std::int64_t target_size = 2048;          ///< entries each row keeps at a compression
  std::int64_t query_buffer_size = 256;     ///< earlier steps whose queries the scorer also sees (kvpress: hidden_states_buffer_size)

  void validate() const {
    KVC_CHECK(compression_interval > 0, "compression_interval must be positive, got " << compression_interval);
    KVC_CHECK(target_size > 0, "target_size must be positive, got " << target_size);
    KVC_CHECK(query_buffer_size >= 0, "query_buffer_size must be non-negative, got " << query_buffer_size);
  }
  /// Entries kept per row when `tokens_seen` tokens have entered the cache so far.
  [[nodiscard]] std::int64_t target(std::int64_t /*tokens_seen*/) const noexcept { return target_size; }
};

/// \brief A decoding press over any scorer press `Inner`; `Options` decides the target size
/// (`DecodingOptions`: fixed; `CompressionRatioDecodingOptions`: a fraction of the tokens seen).
/// \tparam T storage type of the cache and of the buffered queries
template <class Inner, class T = float, class Options = DecodingOptions>
class BasicDecodingPress {
 public:
  /// \brief Validates the options and the shape and allocates the query ring buffers.
  BasicDecodingPress(Inner inner, Options options, QueryBufferShape shape)
      : inner_(std::move(inner)), options_(validated(options)), ring_(shape, options_.query_buffer_size) {
    steps_.resize(static_cast<std::size_t>(shape.num_layers));
  }

  [[nodiscard]] Inner const& inner() const noexcept { return inner_; }
  [[nodiscard]] Options const& options() const noexcept { return options_; }
  /// Decode steps of `layer` since its last compression.
  [[nodiscard]] std::int64_t steps(int layer) const { return steps_[ring_.layer_index(layer)]; }
  /// Queries of `layer` the scorer would see now.
  [[nodiscard]] std::int64_t buffered(int layer) const { return ring_.count(layer); }

  /// \brief Forgets every layer's steps and queries (a new sequence).
  void reset() noexcept {
    ring_.reset();
    std::fill(steps_.begin(), steps_.end(), std::int64_t{0});
  }

  /// \brief Scratch bytes of `step` for this cache: enough for any step (the largest buffer).
  template <class L>
  [[nodiscard]] std::size_t workspace_bytes(CpuDevice const& dev, Observation<T> const& obs,
                                            KVCacheView<T, L> const& cache) const {
    std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads, cap = cache.extents.capacity;
    std::int64_t const w = detail::decoding_window(inner_);
    // A view with the largest shapes the scorer can be handed; only its shapes are read here.
    Observation<T> const view = ring_.largest_view(obs, w);
    return detail::sum_bytes(Workspace::bytes_for<float>(detail::size_product(rows, cap)),
                              Workspace::bytes_for<std::int32_t>(detail::size_product(detail::thread_count(dev, rows), cap)),
                              ring_.view_bytes(w), inner_.workspace_bytes(dev, view, cache),
                              detail::handshake_bytes(obs.shard));
  }

  /// \brief One decode step of one layer. Call it after the step's keys and values were appended.
  /// A prefill (`obs.position == 0`) only starts a new sequence for this layer (kvpress's decoding
  /// press does nothing in prefill). Returns whether entries were removed.
  /// \param obs the step's pre-RoPE queries [batch, q_heads, q_len, head_dim], its absolute
  ///            `position`, `layer_idx`, and whatever else the inner press reads (`rope`, …)
  template <class L>
  bool step(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, Workspace workspace) {
    bool compressed = false;
    detail::shard_call(obs, cache, [&] { compressed = step_on_rank(dev, obs, cache, workspace); });
    return compressed;
  }

  /// \brief Allocating convenience overload of `step`.
  template <class L>
  bool step(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache) {
    bool compressed = false;
    detail::shard_call(obs, cache, [&] {
      std::vector<std::byte> scratch(obs.position == 0 ? 0 : workspace_bytes(dev, obs, cache));
      compressed = step(dev, obs, cache, Workspace(scratch.data(), scratch.size()));
    });
    return compressed;
  }

 private:
  static Options validated(Options o) {
    o.validate();
    return o;
  }

  template <class L>
  bool step_on_rank(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache,
                    Workspace& workspace) {
    std::int64_t& steps = steps_[ring_.layer_index(obs.layer_idx)];
    detail::validate_inputs(obs, cache);
    detail::require_not_ragged(obs, "DecodingPress (one query per sequence and step)");
    if (obs.position == 0) {
      ring_.restart(obs.layer_idx);
      steps = 0;
      return false;
    }
    ring_.check_step(obs, cache);
    ring_.push(obs);
    ++steps;
    std::int64_t const q = obs.queries.shape[2];
    std::int64_t const target = options_.target(obs.position + q);
    if (steps < options_.compression_interval && q < target) return false;
    bool const compressed = compress_rows(dev, obs, cache, target, workspace);
    // Only queries of later steps enter the next compression: those tokens then occupy the last
    // slots of every row, which is what window presses assume.
    steps = 0;
    ring_.clear(obs.layer_idx);
    return compressed;
  }

  template <class L>
  bool compress_rows(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache,
                     std::int64_t target, Workspace& ws) const {
    std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads;
    std::int64_t longest = *std::max_element(cache.lengths, cache.lengths + rows);
    if (obs.shard.split()) {
      // The whole layer's longest row decides (and sets the inner press's ratio) on every rank.
      detail::join_shard(obs, cache, target, 0, ws);
      obs.shard.communicator->all_reduce(&longest, 1, ReduceOp::max);
    }
    if (longest <= target) return false;
    // The inner press sees the ratio kvpress would hand it (it matters to presses whose scores
    // depend on the ratio, e.g. StreamingLLM); the budget itself is exactly `target` per row.
    Inner scorer = inner_;
    scorer.compression_ratio = find_target_compression_ratio(longest, target);
    float* scores = ws.take<float>(static_cast<std::size_t>(rows * cache.extents.capacity));  // [batch, kv_heads, capacity]
    Observation<T> const view = ring_.view(obs, detail::decoding_window(inner_), ws);
    score(dev, scorer, view, cache, scores, ws);
    keep_topk(dev, cache, scores, [target](std::int64_t n) { return std::min(n, target); }, ws);
    return true;
  }

  Inner inner_;
  Options options_;
  detail::QueryRing<T> ring_;       // the queries since the last compression
  std::vector<std::int64_t> steps_;  // [num_layers] decode steps since the last compression
};

/// \brief kvpress's `DecodingPress`: compress every `compression_interval` steps to `target_size`.
template <class Inner, class T = float>
using DecodingPress = BasicDecodingPress<Inner, T, DecodingOptions>;

}  // namespace kvcompress
