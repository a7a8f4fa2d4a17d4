#pragma once
/// \file
/// \brief The queries a decoding press has seen since its last compression (kvpress's hidden-states
/// buffer of DecodingPress and CAMPress): per layer, a ring of the last `query_buffer_size + 1`
/// pre-RoPE query tokens with their absolute positions, and the observation the inner scorer press
/// gets of them. Allocated once, at construction ([num_layers, batch, q_heads, query_buffer_size + 1,
/// head_dim] of T); `view` takes its copies from a workspace.

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

/// \brief Per-layer rings of buffered pre-RoPE queries. \tparam T storage type of the queries
template <class T>
class QueryRing {
 public:
  /// \brief Validates the shape and allocates the rings; `buffer_size` earlier tokens are kept
  /// besides the newest one.
  QueryRing(QueryBufferShape shape, std::int64_t buffer_size) : shape_(shape) {
    KVC_CHECK(shape_.num_layers > 0, "shape.num_layers must be positive, got " << shape_.num_layers);
    KVC_CHECK(shape_.batch > 0, "shape.batch must be positive, got " << shape_.batch);
    KVC_CHECK(shape_.q_heads > 0, "shape.q_heads must be positive, got " << shape_.q_heads);
    KVC_CHECK(shape_.head_dim > 0, "shape.head_dim must be positive, got " << shape_.head_dim);
    KVC_CHECK(buffer_size >= 0 && buffer_size < std::numeric_limits<std::int32_t>::max(),
              "query_buffer_size must be below 2^31 - 1 (buffered queries are positions of one sequence), got "
                  << buffer_size);
    ring_ = buffer_size + 1;
    std::size_t const elems = detail::size_product(shape_.num_layers, shape_.batch, shape_.q_heads, ring_, shape_.head_dim);
    layer_elems_ = static_cast<std::int64_t>(elems) / shape_.num_layers;
    try {
      queries_.resize(elems);
      positions_.resize(detail::size_product(shape_.num_layers, ring_));
      layers_.resize(static_cast<std::size_t>(shape_.num_layers));
    } catch (std::bad_alloc const&) {
      KVC_THROW("cannot allocate the query ring buffers: " << elems << " queries of " << sizeof(T)
                                                           << " bytes (query_buffer_size = " << buffer_size
                                                           << ", num_layers = " << shape_.num_layers << ", batch = "
                                                           << shape_.batch << ", q_heads = " << shape_.q_heads
                                                           << ", head_dim = " << shape_.head_dim << ")");
    }
  }

  [[nodiscard]] QueryBufferShape const& shape() const noexcept { return shape_; }
  /// `layer` as an index, or an Error naming it when it is outside [0, num_layers).
  [[nodiscard]] std::size_t layer_index(int layer) const {
    KVC_CHECK(layer >= 0 && layer < shape_.num_layers,
              "observation.layer_idx = " << layer << " is outside [0, num_layers = " << shape_.num_layers << ")");
    return static_cast<std::size_t>(layer);
  }
  /// Queries of `layer` held now (at most query_buffer_size + 1).
  [[nodiscard]] std::int64_t count(int layer) const { return state(layer).count; }

  /// \brief Forgets every layer's queries and positions.
  void reset() noexcept {
    for (auto& s : layers_) s = State{};
  }
  /// \brief A new sequence for `layer`: its queries and its last position are forgotten.
  void restart(int layer) { state(layer) = State{}; }
  /// \brief After a compression: only queries of later steps enter the next one.
  void clear(int layer) { state(layer).count = 0; }

  /// \brief Checks a decoding step's observation against the buffer's shape and the layer's last
  /// position (steps must move forward).
  template <class L>
  void check_step(Observation<T> const& obs, KVCacheView<T, L> const& cache) const {
    auto const& e = cache.extents;
    State const& st = state(obs.layer_idx);
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

  /// \brief The step's queries enter the ring; when it is full the oldest are overwritten.
  void push(Observation<T> const& obs) {
    State& st = state(obs.layer_idx);
    std::int64_t const q = obs.queries.shape[2], d = shape_.head_dim;
    T* ring = queries_.data() + obs.layer_idx * layer_elems_;       // [batch, q_heads, ring, head_dim]
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

  /// \brief Scratch bytes of `view` with a window of `window` queries, for any count.
  [[nodiscard]] std::size_t view_bytes(std::int64_t window) const {
    std::int64_t const bh = shape_.batch * shape_.q_heads, d = shape_.head_dim;
    return detail::sum_bytes(Workspace::bytes_for<T>(detail::size_product(bh, ring_, d)),
                             Workspace::bytes_for<T>(detail::size_product(bh, std::max<std::int64_t>(window, 0), d)),
                             Workspace::bytes_for<float>(detail::size_product(3, d)));
  }

  /// \brief An observation with the largest shapes `view` can produce (for sizing the inner press's
  /// scratch); only its shapes may be read.
  [[nodiscard]] Observation<T> largest_view(Observation<T> const& obs, std::int64_t window) const {
    std::int64_t const d = shape_.head_dim;
    Observation<T> v = obs;
    v.queries = make_tensor4(queries_.data(), {shape_.batch, shape_.q_heads, ring_, d});
    v.window_queries = window > 0 ? make_tensor4(queries_.data(), {shape_.batch, shape_.q_heads, window, d}) : Tensor4<T>{};
    v.chunk_length = ring_;
    return v;
  }

  /// \brief The observation the inner press scores with: the buffered queries in time order and, for
  /// a window press (`window` > 0), its window rotated at the tokens' absolute positions.
  Observation<T> view(Observation<T> const& obs, std::int64_t window, Workspace& ws) const {
    State const& st = state(obs.layer_idx);
    std::int64_t const d = shape_.head_dim, bh = shape_.batch * shape_.q_heads, c = st.count, w = window;
    T const* ring = queries_.data() + obs.layer_idx * layer_elems_;       // [batch, q_heads, ring, head_dim]
    std::int64_t const* pos = positions_.data() + obs.layer_idx * ring_;  // [ring]
    std::int64_t const oldest = (st.head - c + ring_) % ring_;
    T* q = ws.take<T>(static_cast<std::size_t>(bh * c * d));  // [batch, q_heads, count, head_dim]
    for (std::int64_t r = 0; r < bh; ++r)
      for (std::int64_t i = 0; i < c; ++i) {
        T const* src = ring + (r * ring_ + (oldest + i) % ring_) * d;
        std::copy(src, src + d, q + (r * c + i) * d);
      }
    Observation<T> v = obs;
    v.queries = make_tensor4<T>(q, {shape_.batch, shape_.q_heads, c, d});
    v.chunk_length = c;
    v.position = st.last_position + 1 - c;  // position + chunk_length = the position after the newest token
    v.window_queries = Tensor4<T>{};
    if (w > 0) {
      KVC_CHECK(c >= w, "the inner press's window of " << w << " queries exceeds the " << c
                                                       << " buffered since the last compression (raise query_buffer_size"
                                                          " or compression_interval)");
      KVC_CHECK(obs.rope != nullptr, "observation.rope must be set: the window queries are rotated at their positions");
      KVC_CHECK(obs.rope->head_dim() == d,
                "observation.rope head_dim = " << obs.rope->head_dim() << " does not match head_dim = " << d);
      T* wq = ws.take<T>(static_cast<std::size_t>(bh * w * d));                   // [batch, q_heads, w, head_dim]
      float* scratch = ws.take<float>(static_cast<std::size_t>(d / 2 + 2 * d));  // [d / 2 + 2·d] RoPE tables
      for (std::int64_t r = 0; r < bh; ++r)
        for (std::int64_t i = 0; i < w; ++i) {
          std::int64_t const slot = (oldest + c - w + i) % ring_;
          T* dst = wq + (r * w + i) * d;
          std::copy(ring + (r * ring_ + slot) * d, ring + (r * ring_ + slot + 1) * d, dst);
          obs.rope->apply(dst, pos[slot], pos[slot] + 1, scratch);
        }
      v.window_queries = make_tensor4<T>(wq, {shape_.batch, shape_.q_heads, w, d});
    }
    return v;
  }

 private:
  struct State {
    std::int64_t head = 0;            // ring slot the next query goes to
    std::int64_t count = 0;           // queries held, ≤ ring
    std::int64_t last_position = -1;  // absolute position of the newest query
  };

  [[nodiscard]] State& state(int layer) { return layers_[layer_index(layer)]; }
  [[nodiscard]] State const& state(int layer) const { return layers_[layer_index(layer)]; }

  QueryBufferShape shape_;
  std::int64_t ring_ = 1;                // queries each layer's ring holds: query_buffer_size + 1
  std::int64_t layer_elems_ = 0;         // batch · q_heads · ring · head_dim
  std::vector<T> queries_;               // [num_layers, batch, q_heads, ring, head_dim] pre-RoPE
  std::vector<std::int64_t> positions_;  // [num_layers, ring] absolute position of each ring slot
  std::vector<State> layers_;            // [num_layers]
};

}  // namespace detail

}  // namespace kvcompress
