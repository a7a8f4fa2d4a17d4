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
#include <limits>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>

#include "kvcompress/press/scorer.hpp"
#include "kvcompress/rope/rotary_embedding.hpp"

namespace kvcompress {

struct TOVAPress;

/// \brief What a decoding press buffers, fixed at construction.
struct QueryBufferShape {
  int num_layers = 1;
  std::int64_t batch = 1;
  std::int64_t q_heads = 1;   ///< query heads (a multiple of the cache's kv heads)
  std::int64_t head_dim = 1;
};

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

namespace detail {

template <class P, class = void>
struct has_window_size : std::false_type {};
template <class P>
struct has_window_size<P, std::void_t<decltype(std::declval<P const&>().window_size)>> : std::true_type {};
template <class P, class = void>
struct has_wrapped_press : std::false_type {};
template <class P>
struct has_wrapped_press<P, std::void_t<decltype(std::declval<P const&>().press)>> : std::true_type {};

/// Window length for which a decoding press must build post-RoPE window queries: 1 for TOVA, a
/// press's `window_size` (SnapKV, PyramidKV), the wrapped press's for a wrapper with a `press`
/// member, 0 (none) otherwise.
template <class P>
[[nodiscard]] std::int64_t decoding_window(P const& p) noexcept {
  if constexpr (std::is_same_v<P, TOVAPress>) return 1;
  else if constexpr (has_window_size<P>::value) return p.window_size;
  else if constexpr (has_wrapped_press<P>::value) return decoding_window(p.press);
  else return 0;
}

}  // namespace detail

/// \brief A decoding press over any scorer press `Inner`; `Options` decides the target size
/// (`DecodingOptions`: fixed; `CompressionRatioDecodingOptions`: a fraction of the tokens seen).
/// \tparam T storage type of the cache and of the buffered queries
template <class Inner, class T = float, class Options = DecodingOptions>
class BasicDecodingPress {
 public:
  /// \brief Validates the options and the shape and allocates the query ring buffers.
  BasicDecodingPress(Inner inner, Options options, QueryBufferShape shape)
      : inner_(std::move(inner)), options_(options), shape_(shape) {
    options_.validate();
    KVC_CHECK(shape_.num_layers > 0, "shape.num_layers must be positive, got " << shape_.num_layers);
    KVC_CHECK(shape_.batch > 0, "shape.batch must be positive, got " << shape_.batch);
    KVC_CHECK(shape_.q_heads > 0, "shape.q_heads must be positive, got " << shape_.q_heads);
    KVC_CHECK(shape_.head_dim > 0, "shape.head_dim must be positive, got " << shape_.head_dim);
    KVC_CHECK(options_.query_buffer_size < std::numeric_limits<std::int32_t>::max(),
              "query_buffer_size must be below 2^31 - 1 (buffered queries are positions of one sequence), got "
                  << options_.query_buffer_size);
    ring_ = options_.query_buffer_size + 1;
    std::size_t const elems = detail::size_product(shape_.num_layers, shape_.batch, shape_.q_heads, ring_, shape_.head_dim);
    layer_elems_ = static_cast<std::int64_t>(elems) / shape_.num_layers;
    try {
      queries_.resize(elems);
      positions_.resize(detail::size_product(shape_.num_layers, ring_));
      layers_.resize(static_cast<std::size_t>(shape_.num_layers));
    } catch (std::bad_alloc const&) {
      KVC_THROW("cannot allocate the query ring buffers: " << elems << " queries of " << sizeof(T)
                                                           << " bytes (query_buffer_size = " << options_.query_buffer_size
                                                           << ", num_layers = " << shape_.num_layers << ", batch = "
                                                           << shape_.batch << ", q_heads = " << shape_.q_heads
                                                           << ", head_dim = " << shape_.head_dim << ")");
    }
  }

  [[nodiscard]] Inner const& inner() const noexcept { return inner_; }
  [[nodiscard]] Options const& options() const noexcept { return options_; }
  /// Decode steps of `layer` since its last compression.
  [[nodiscard]] std::int64_t steps(int layer) const { return state(layer).steps; }
  /// Queries of `layer` the scorer would see now.
  [[nodiscard]] std::int64_t buffered(int layer) const { return state(layer).count; }

  /// \brief Forgets every layer's steps and queries (a new sequence).
  void reset() noexcept {
    for (auto& s : layers_) s = LayerState{};
  }

  /// \brief Scratch bytes of `step` for this cache: enough for any step (the largest buffer).
  template <class L>
  [[nodiscard]] std::size_t workspace_bytes(CpuDevice const& dev, Observation<T> const& obs,
                                            KVCacheView<T, L> const& cache) const {
    std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads, cap = cache.extents.capacity;
    std::int64_t const w = detail::decoding_window(inner_), d = shape_.head_dim;
    std::int64_t const bh = shape_.batch * shape_.q_heads;
    // A view with the largest shapes the scorer can be handed; only its shapes are read here.
    Observation<T> view = obs;
    view.queries = make_tensor4(queries_.data(), {shape_.batch, shape_.q_heads, ring_, d});
    view.window_queries = w > 0 ? make_tensor4(queries_.data(), {shape_.batch, shape_.q_heads, w, d}) : Tensor4<T>{};
    view.chunk_length = ring_;
    return detail::sum_bytes(Workspace::bytes_for<float>(detail::size_product(rows, cap)),
                              Workspace::bytes_for<std::int32_t>(detail::size_product(detail::thread_count(dev, rows), cap)),
                              Workspace::bytes_for<T>(detail::size_product(bh, ring_, d)),
                              Workspace::bytes_for<T>(detail::size_product(bh, std::max<std::int64_t>(w, 0), d)),
                              Workspace::bytes_for<float>(detail::size_product(3, d)),
                              inner_.workspace_bytes(dev, view, cache), detail::handshake_bytes(obs.shard));
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
  template <class L>
  bool step_on_rank(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache,
                    Workspace& workspace) {
    LayerState& st = state(obs.layer_idx);
    detail::validate_inputs(obs, cache);
    detail::require_not_ragged(obs, "DecodingPress (one query per sequence and step)");
    if (obs.position == 0) {
      st = LayerState{};
      return false;
    }
    check_step(obs, cache, st);
    push(obs, st);
    ++st.steps;
    std::int64_t const q = obs.queries.shape[2];
    std::int64_t const target = options_.target(obs.position + q);
    if (st.steps < options_.compression_interval && q < target) return false;
    bool const compressed = compress_rows(dev, obs, cache, st, target, workspace);
    // Only queries of later steps enter the next compression: those tokens then occupy the last
    // slots of every row, which is what window presses assume.
    st.steps = 0;
    st.count = 0;
    return compressed;
  }

  struct LayerState {
    std::int64_t steps = 0;           // decode steps since the last compression
    std::int64_t head = 0;            // ring slot the next query goes to
    std::int64_t count = 0;           // queries held, ≤ ring
    std::int64_t last_position = -1;  // absolute position of the newest query
  };

  [[nodiscard]] std::size_t layer_index(int layer) const {
    KVC_CHECK(layer >= 0 && layer < shape_.num_layers,
              "observation.layer_idx = " << layer << " is outside [0, num_layers = " << shape_.num_layers << ")");
    return static_cast<std::size_t>(layer);
  }
  [[nodiscard]] LayerState& state(int layer) { return layers_[layer_index(layer)]; }
  [[nodiscard]] LayerState const& state(int layer) const { return layers_[layer_index(layer)]; }

  template <class L>
  void check_step(Observation<T> const& obs, KVCacheView<T, L> const& cache, LayerState const& st) const {
    auto const& e = cache.extents;
    KVC_CHECK(e.batch == shape_.batch, "cache batch = " << e.batch << " does not match the buffer's batch = " << shape_.batch);
    KVC_CHECK(e.head_dim == shape_.head_dim,
              "cache head_dim = " << e.head_dim << " does not match the buffer's head_dim = " << shape_.head_dim);
    KVC_CHECK(shape_.q_heads % e.kv_heads == 0,
              "the buffer's q_heads = " << shape_.q_heads << " is not a multiple of the cache kv_heads = " << e.kv_heads);
    KVC_CHECK(!obs.queries.empty(), "observation.queries must be given (the step's pre-RoPE queries, [batch, q_heads, "
                                    "q_len, head_dim])");
    auto const& s = obs.queries.shape;
    KVC_CHECK(s[0] == shape_.batch && s[1] == shape_.q_heads && s[3] == shape_.head_dim,
              "observation.queries shape [" << s[0] << ", " << s[1] << ", " << s[2] << ", " << s[3]
                                            << "] does not match the buffer's [batch = " << shape_.batch
                                            << ", q_heads = " << shape_.q_heads << ", q_len, head_dim = " << shape_.head_dim
                                            << "]");
    KVC_CHECK(obs.position <= std::numeric_limits<std::int64_t>::max() - s[2],
              "observation.position = " << obs.position << " plus the step's " << s[2] << " tokens overflows 64 bits");
    KVC_CHECK(obs.position > st.last_position, "observation.position = " << obs.position << " of layer " << obs.layer_idx
                                                                         << " does not follow the previous step's last position "
                                                                         << st.last_position);
  }

  /// The step's queries enter the ring; when it is full the oldest are overwritten.
  void push(Observation<T> const& obs, LayerState& st) {
    std::int64_t const q = obs.queries.shape[2], d = shape_.head_dim;
    T* ring = queries_.data() + obs.layer_idx * layer_elems_;  // [batch, q_heads, ring, head_dim]
    std::int64_t* pos = positions_.data() + obs.layer_idx * ring_;  // [ring]
    for (std::int64_t t = std::max<std::int64_t>(0, q - ring_); t < q; ++t) {
      for (std::int64_t b = 0; b < shape_.batch; ++b)
        for (std::int64_t j = 0; j < shape_.q_heads; ++j) {
          T* dst = ring + ((b * shape_.q_heads + j) * ring_ + st.head) * d;
          for (std::int64_t c = 0; c < d; ++c) dst[c] = obs.queries(b, j, t, c);
        }
      pos[st.head] = obs.position + t;
      st.head = (st.head + 1) % ring_;
      st.count = std::min(st.count + 1, ring_);
    }
    st.last_position = obs.position + q - 1;
  }

  /// The observation the inner press scores with: the buffered queries in time order and, for a
  /// window press, its window rotated at the tokens' absolute positions.
  Observation<T> buffered_view(Observation<T> const& obs, LayerState const& st, Workspace& ws) const {
    std::int64_t const d = shape_.head_dim, bh = shape_.batch * shape_.q_heads, c = st.count;
    std::int64_t const w = detail::decoding_window(inner_);
    T const* ring = queries_.data() + obs.layer_idx * layer_elems_;
    std::int64_t const* pos = positions_.data() + obs.layer_idx * ring_;
    std::int64_t const oldest = (st.head - c + ring_) % ring_;
    T* q = ws.take<T>(static_cast<std::size_t>(bh * c * d));  // [batch, q_heads, count, head_dim]
    for (std::int64_t r = 0; r < bh; ++r)
      for (std::int64_t i = 0; i < c; ++i) {
        T const* src = ring + (r * ring_ + (oldest + i) % ring_) * d;
        std::copy(src, src + d, q + (r * c + i) * d);
      }
    Observation<T> view = obs;
    view.queries = make_tensor4<T>(q, {shape_.batch, shape_.q_heads, c, d});
    view.chunk_length = c;
    view.position = st.last_position + 1 - c;  // position + chunk_length = the position after the newest token
    view.window_queries = Tensor4<T>{};
    if (w > 0) {
      KVC_CHECK(c >= w, "the inner press's window of " << w << " queries exceeds the " << c
                                                       << " buffered since the last compression (raise query_buffer_size"
                                                          " or compression_interval)");
      KVC_CHECK(obs.rope != nullptr, "observation.rope must be set: the window queries are rotated at their positions");
      KVC_CHECK(obs.rope->head_dim() == d,
                "observation.rope head_dim = " << obs.rope->head_dim() << " does not match head_dim = " << d);
      T* wq = ws.take<T>(static_cast<std::size_t>(bh * w * d));  // [batch, q_heads, w, head_dim]
      float* scratch = ws.take<float>(static_cast<std::size_t>(d / 2 + 2 * d));  // [d / 2 + 2·d] RoPE tables
      for (std::int64_t r = 0; r < bh; ++r)
        for (std::int64_t i = 0; i < w; ++i) {
          std::int64_t const slot = (oldest + c - w + i) % ring_;
          T* dst = wq + (r * w + i) * d;
          std::copy(ring + (r * ring_ + slot) * d, ring + (r * ring_ + slot + 1) * d, dst);
          obs.rope->apply(dst, pos[slot], pos[slot] + 1, scratch);
        }
      view.window_queries = make_tensor4<T>(wq, {shape_.batch, shape_.q_heads, w, d});
    }
    return view;
  }

  template <class L>
  bool compress_rows(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache,
                     LayerState const& st, std::int64_t target, Workspace& ws) const {
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
    Observation<T> const view = buffered_view(obs, st, ws);
    score(dev, scorer, view, cache, scores, ws);
    keep_topk(dev, cache, scores, [target](std::int64_t n) { return std::min(n, target); }, ws);
    return true;
  }

  Inner inner_;
  Options options_;
  QueryBufferShape shape_;
  std::int64_t ring_ = 1;                // queries each layer's ring holds: query_buffer_size + 1
  std::int64_t layer_elems_ = 0;         // batch · q_heads · ring · head_dim
  std::vector<T> queries_;               // [num_layers, batch, q_heads, ring, head_dim] pre-RoPE
  std::vector<std::int64_t> positions_;  // [num_layers, ring] absolute position of each ring slot
  std::vector<LayerState> layers_;       // [num_layers]
};

/// \brief kvpress's `DecodingPress`: compress every `compression_interval` steps to `target_size`.
template <class Inner, class T = float>
using DecodingPress = BasicDecodingPress<Inner, T, DecodingOptions>;

}  // namespace kvcompress
