#pragma once
/// \file
/// \brief CaM, cache merging during decoding (kvpress `CAMPress`, OpenReview LCTmppB165): a decoding
/// press that, before it evicts, folds the values of some evicted entries into the kept entries that
/// follow them.
///
/// The engine calls `step` once per forward pass and layer, after the pass's keys and values were
/// appended. At every decoding step the press adds to a running sum A [batch, kv_heads, n] the
/// attention of the step's last token over the whole cache: its pre-RoPE query rotated at its
/// absolute position, softmax(q·kᵀ/√d) in float, averaged over the query heads of each kv head. When
/// `compression_interval` steps have passed and the longest row holds more than `target_size`
/// entries, or at once for a chunk of at least `target_size` tokens, each sequence b of n > target
/// entries is compressed:
///  1. the inner scorer press scores the cache (its ratio set to `find_target_compression_ratio`, the
///     queries buffered as in DecodingPress), the scores are averaged over the kv heads, and the
///     `target_size` best entries are kept — the same entries in every kv head;
///  2. of the evicted entries, the k with the highest mean score (ties: the later position) become
///     merge candidates, k = the steps since the last compression;
///  3. candidate x's window is the `merge_budget` kept entries after it (fewer at the end of the row:
///     m_x of them); per kv head, p = A[x] / mean(A over the window), NaN → 0, +∞ → 1, clamped to
///     [0, 1];
///  4. one uniform u ∈ [0, 1) is drawn per (batch, kv head, candidate), in that nesting order, the
///     candidates ascending by position; x merges iff u < p (kvpress's Bernoulli(p)): v_y += v_x · (1 / m_x)
///     for every y of the window, candidates added in ascending order;
///  5. keys, values, positions and A keep the kept entries, in position order.
/// The draws come from the press's `Uniform` (by default a seeded 64-bit Mersenne Twister); a caller
/// that needs other draws (a replay, a test) supplies its own. A prefill (`position == 0`) starts a
/// new sequence for its layer: A, the steps and the queries are forgotten.
///
/// Memory: the query ring buffers ([num_layers, batch, q_heads, query_buffer_size + 1, head_dim] of T)
/// and the running sums ([num_layers, batch, kv_heads, capacity] floats, 4 bytes per cache entry a
/// layer can hold) are allocated at construction; `step` allocates nothing when it is given a
/// workspace of `workspace_bytes(…)` bytes.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <new>
#include <random>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "kvcompress/detail/gather.hpp"
#include "kvcompress/press/decoding.hpp"

namespace kvcompress {

/// \brief CAMPress parameters, with kvpress's defaults.
struct CAMOptions {
  std::int64_t compression_interval = 512;  ///< decode steps between two compressions
  std::int64_t target_size = 2048;          ///< entries each sequence keeps at a compression
  std::int64_t query_buffer_size = 256;     ///< earlier steps whose queries the scorer also sees (kvpress: hidden_states_buffer_size)
  std::int64_t merge_budget = 32;           ///< kept entries after an evicted candidate that share its value

  void validate() const {
    KVC_CHECK(compression_interval > 0, "compression_interval must be positive, got " << compression_interval);
    KVC_CHECK(target_size > 0, "target_size must be positive, got " << target_size);
    KVC_CHECK(query_buffer_size >= 0, "query_buffer_size must be non-negative, got " << query_buffer_size);
    KVC_CHECK(merge_budget > 0, "merge_budget must be positive, got " << merge_budget);
  }
};

/// \brief The caches a CAM press keeps state for, fixed at construction.
struct CAMShape {
  int num_layers = 1;
  std::int64_t batch = 1;
  std::int64_t q_heads = 1;   ///< query heads (a multiple of kv_heads)
  std::int64_t kv_heads = 1;
  std::int64_t head_dim = 1;
  std::int64_t capacity = 1;  ///< entries a row of the cache can hold: the running sum keeps one float each
};

/// \brief CAM's default draws: u ∈ [0, 1) from the top 53 bits of a seeded 64-bit Mersenne Twister.
class MersenneUniform {
 public:
  explicit MersenneUniform(std::uint64_t seed = 0) : gen_(seed) {}
  double operator()() { return static_cast<double>(gen_() >> 11) * 0x1.0p-53; }

 private:
  std::mt19937_64 gen_;
};

/// \tparam Inner   a scorer press (its `score`, with its ratio set as kvpress sets it)
/// \tparam T       storage type of the cache and of the buffered queries
/// \tparam Uniform callable `double()` giving u ∈ [0, 1); called once per (batch, kv head, candidate)
template <class Inner, class T = float, class Uniform = MersenneUniform>
class CAMPress {
 public:
  /// \brief Validates the options and the shape and allocates the query rings and running sums.
  CAMPress(Inner inner, CAMOptions options, CAMShape shape, Uniform uniform = Uniform{})
      : inner_(std::move(inner)),
        options_(validated(options)),
        shape_(validated(shape)),
        ring_(QueryBufferShape{shape.num_layers, shape.batch, shape.q_heads, shape.head_dim}, options_.query_buffer_size),
        uniform_(std::move(uniform)) {
    rows_ = shape_.batch * shape_.kv_heads;
    std::size_t const elems = detail::size_product(shape_.num_layers, rows_, shape_.capacity);
    try {
      sums_.resize(elems);
      summed_.resize(detail::size_product(shape_.num_layers, rows_));
      steps_.resize(static_cast<std::size_t>(shape_.num_layers));
    } catch (std::bad_alloc const&) {
      KVC_THROW("cannot allocate CAM's running attention sums: " << elems << " floats (num_layers = " << shape_.num_layers
                                                                 << ", batch = " << shape_.batch << ", kv_heads = "
                                                                 << shape_.kv_heads << ", capacity = " << shape_.capacity
                                                                 << ")");
    }
  }

  [[nodiscard]] Inner const& inner() const noexcept { return inner_; }
  [[nodiscard]] CAMOptions const& options() const noexcept { return options_; }
  [[nodiscard]] CAMShape const& shape() const noexcept { return shape_; }
  /// The source of the merge draws (to inspect or reseed it).
  [[nodiscard]] Uniform& uniform() noexcept { return uniform_; }
  /// Decode steps of `layer` since its last compression.
  [[nodiscard]] std::int64_t steps(int layer) const { return steps_[ring_.layer_index(layer)]; }
  /// Queries of `layer` the scorer would see now.
  [[nodiscard]] std::int64_t buffered(int layer) const { return ring_.count(layer); }
  /// \brief The running attention sum of `layer`, [batch, kv_heads, capacity]: row r holds the sum
  /// over the steps since its prefill for its first `summed(layer, r)` entries (in slot order).
  [[nodiscard]] float const* attention_sum(int layer) const {
    return sums_.data() + static_cast<std::int64_t>(ring_.layer_index(layer)) * rows_ * shape_.capacity;
  }
  /// Entries of row r (= b · kv_heads + h) of `layer` that the running sum covers.
  [[nodiscard]] std::int64_t summed(int layer, std::int64_t r) const {
    KVC_CHECK(r >= 0 && r < rows_, "row = " << r << " is outside [0, batch · kv_heads = " << rows_ << ")");
    return summed_[ring_.layer_index(layer) * static_cast<std::size_t>(rows_) + static_cast<std::size_t>(r)];
  }

  /// \brief Forgets every layer's steps, queries and sums (a new sequence).
  void reset() noexcept {
    ring_.reset();
    std::fill(steps_.begin(), steps_.end(), std::int64_t{0});
    std::fill(summed_.begin(), summed_.end(), std::int64_t{0});
  }

  /// \brief Scratch bytes of `step` for this cache: enough for any step.
  template <class L>
  [[nodiscard]] std::size_t workspace_bytes(CpuDevice const& dev, Observation<T> const& obs,
                                            KVCacheView<T, L> const& cache) const {
    std::int64_t const cap = cache.extents.capacity, d = cache.extents.head_dim, b = cache.extents.batch;
    std::int64_t const rows = b * cache.extents.kv_heads, w = detail::decoding_window(inner_);
    Observation<T> const view = ring_.largest_view(obs, w);  // only its shapes are read
    return detail::sum_bytes(attention_bytes(dev, cache), Workspace::bytes_for<float>(detail::size_product(rows, cap)),
                             Workspace::bytes_for<float>(cap),
                             Workspace::bytes_for<std::int32_t>(detail::size_product(3, b, cap)),
                             Workspace::bytes_for<std::int64_t>(b), Workspace::bytes_for<double>(detail::size_product(rows, cap)),
                             Workspace::bytes_for<float>(d), ring_.view_bytes(w), inner_.workspace_bytes(dev, view, cache));
  }

  /// \brief One forward pass of one layer. Call it after the pass's keys and values were appended.
  /// A prefill (`obs.position == 0`) starts a new sequence for this layer. Returns whether entries
  /// were removed.
  /// \param obs the pass's pre-RoPE queries [batch, q_heads, q_len, head_dim], its absolute
  ///            `position`, `layer_idx`, `rope`, and whatever else the inner press reads
  template <class L>
  bool step(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, Workspace workspace) {
    std::int64_t& steps = steps_[ring_.layer_index(obs.layer_idx)];
    detail::validate_inputs(obs, cache);
    detail::require_not_ragged(obs, "CAMPress (one query per sequence and step)");
    detail::require_whole_layer(obs, "CAM", "one kept set is shared by all kv heads of a sequence");
    check_cache(cache);
    std::int64_t* summed = summed_.data() + static_cast<std::int64_t>(obs.layer_idx) * rows_;  // [batch · kv_heads]
    if (obs.position == 0) {
      ring_.restart(obs.layer_idx);
      steps = 0;
      std::fill(summed, summed + rows_, std::int64_t{0});
      return false;
    }
    ring_.check_step(obs, cache);
    check_step(obs, cache, summed);
    accumulate_attention(dev, obs, cache, workspace);
    ring_.push(obs);
    ++steps;
    std::int64_t const q = obs.queries.shape[2], target = options_.target_size;
    std::int64_t const longest = *std::max_element(cache.lengths, cache.lengths + rows_);
    if (!((steps >= options_.compression_interval && longest > target) || q >= target)) return false;
    bool const compressed = longest > target && compress(dev, obs, cache, steps, workspace);
    steps = 0;
    ring_.clear(obs.layer_idx);
    return compressed;
  }

  /// \brief Allocating convenience overload of `step`.
  template <class L>
  bool step(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache) {
    std::vector<std::byte> scratch(obs.position == 0 ? 0 : workspace_bytes(dev, obs, cache));
    return step(dev, obs, cache, Workspace(scratch.data(), scratch.size()));
  }

 private:
  static CAMOptions validated(CAMOptions o) {
    o.validate();
    return o;
  }
  static CAMShape validated(CAMShape s) {
    KVC_CHECK(s.num_layers > 0, "shape.num_layers must be positive, got " << s.num_layers);
    KVC_CHECK(s.batch > 0, "shape.batch must be positive, got " << s.batch);
    KVC_CHECK(s.kv_heads > 0, "shape.kv_heads must be positive, got " << s.kv_heads);
    KVC_CHECK(s.q_heads > 0 && s.q_heads % s.kv_heads == 0,
              "shape.q_heads = " << s.q_heads << " must be a positive multiple of shape.kv_heads = " << s.kv_heads);
    KVC_CHECK(s.head_dim > 0, "shape.head_dim must be positive, got " << s.head_dim);
    KVC_CHECK(s.capacity > 0 && s.capacity < std::numeric_limits<std::int32_t>::max(),
              "shape.capacity must be in [1, 2^31 - 1), got " << s.capacity);
    return s;
  }

  template <class L>
  void check_cache(KVCacheView<T, L> const& cache) const {
    auto const& e = cache.extents;
    KVC_CHECK(e.kv_heads == shape_.kv_heads,
              "cache kv_heads = " << e.kv_heads << " does not match the press's shape.kv_heads = " << shape_.kv_heads);
    KVC_CHECK(e.batch == shape_.batch, "cache batch = " << e.batch << " does not match the press's shape.batch = " << shape_.batch);
    KVC_CHECK(e.capacity <= shape_.capacity,
              "cache capacity = " << e.capacity << " exceeds the press's shape.capacity = " << shape_.capacity
                                  << " (the running attention sums hold that many entries per row)");
  }

  /// The kv heads of a sequence share one kept set, so they must hold the same entries; the running
  /// sum must still describe the row (nothing else may shorten it between two steps).
  template <class L>
  void check_step(Observation<T> const& obs, KVCacheView<T, L> const& cache, std::int64_t const* summed) const {
    KVC_CHECK(obs.rope != nullptr, "observation.rope must be set: CAM rotates the step's last query to attend over the cache");
    KVC_CHECK(obs.rope->head_dim() == shape_.head_dim,
              "observation.rope head_dim = " << obs.rope->head_dim() << " does not match head_dim = " << shape_.head_dim);
    std::int64_t const h = shape_.kv_heads;
    for (std::int64_t b = 0; b < shape_.batch; ++b)
      for (std::int64_t j = 0; j < h; ++j) {
        std::int64_t const n = cache.lengths[b * h + j], n0 = cache.lengths[b * h];
        KVC_CHECK(n == n0, "CAM keeps the same entries in every kv head of a sequence: batch " << b << " holds " << n0
                                                                                             << " entries in kv head 0 and " << n
                                                                                             << " in kv head " << j);
        KVC_CHECK(n >= summed[b * h + j], "cache row (batch " << b << ", kv head " << j << ") holds " << n
                                                              << " entries, fewer than the " << summed[b * h + j]
                                                              << " its running attention sum covers: only CAM may "
                                                                 "shorten the rows between its steps of a layer");
      }
    detail::require_finite(obs.queries, "observation.queries");
  }

  /// Scratch of `accumulate_attention`: the step's attention [rows, capacity] and per thread the
  /// row's keys [capacity, head_dim], its logits [capacity, group], the rotated queries [group,
  /// head_dim] and the RoPE tables [d / 2 + 2·d].
  template <class L>
  [[nodiscard]] std::size_t attention_bytes(CpuDevice const& dev, KVCacheView<T, L> const& cache) const {
    std::int64_t const cap = cache.extents.capacity, d = cache.extents.head_dim;
    std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads, g = shape_.q_heads / shape_.kv_heads;
    std::size_t const per_thread = detail::size_sum(detail::size_product(cap, d), detail::size_product(cap, g),
                                                    detail::size_product(g, d), detail::size_product(3, d));
    return detail::sum_bytes(Workspace::bytes_for<float>(detail::size_product(rows, cap)),
                             Workspace::bytes_for<float>(detail::size_product(detail::thread_count(dev, rows), per_thread)));
  }

  /// A[r, i] += the step's last-token attention to entry i, averaged over the query heads of row r's
  /// kv head; entries new since the last step start from 0. Nothing is added unless every
  /// probability is finite.
  template <class L>
  void accumulate_attention(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache,
                            Workspace& ws) {
    std::int64_t const cap = cache.extents.capacity, d = shape_.head_dim, h = shape_.kv_heads;
    std::int64_t const g = shape_.q_heads / h, last = obs.queries.shape[2] - 1, pos = obs.position + last;
    float* probs = ws.take<float>(detail::size_product(rows_, cap));  // [rows, capacity]
    int const threads = detail::thread_count(dev, rows_);
    std::size_t const per_thread = detail::size_sum(detail::size_product(cap, d), detail::size_product(cap, g),
                                                    detail::size_product(g, d), detail::size_product(3, d));
    float* scratch = ws.take<float>(detail::size_product(threads, per_thread));
    auto const scale = static_cast<float>(std::sqrt(static_cast<double>(d)));
    using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    detail::parallel_for(dev, rows_, [&](std::int64_t r, int t) {
      std::int64_t const b = r / h, kv = r % h, n = cache.lengths[r];
      float* keys = scratch + static_cast<std::size_t>(t) * per_thread;  // [n, d]
      float* logits = keys + cap * d;                                     // [n, g]
      float* q = logits + cap * g;                                        // [g, d] rotated queries
      float* tables = q + g * d;                                          // [d / 2 + 2·d]
      for (std::int64_t j = 0; j < g; ++j) {
        for (std::int64_t c = 0; c < d; ++c) q[j * d + c] = to_float(obs.queries(b, kv * g + j, last, c));
        obs.rope->apply(q + j * d, pos, pos + 1, tables);
      }
      detail::gather_keys(cache, b, kv, 0, n, keys);
      Eigen::Map<Matrix> lg(logits, n, g);
      lg.noalias() = Eigen::Map<Matrix const>(keys, n, d) * Eigen::Map<Matrix const>(q, g, d).transpose();
      float* p = probs + r * cap;  // [n]
      std::fill(p, p + n, 0.0f);
      for (std::int64_t j = 0; j < g; ++j) {
        float top = -std::numeric_limits<float>::infinity();
        for (std::int64_t i = 0; i < n; ++i) top = std::max(top, lg(i, j) / scale);
        float sum = 0.0f;
        for (std::int64_t i = 0; i < n; ++i) sum += std::exp(lg(i, j) / scale - top);
        for (std::int64_t i = 0; i < n; ++i) p[i] += std::exp(lg(i, j) / scale - top) / sum;
      }
      for (std::int64_t i = 0; i < n; ++i) p[i] /= static_cast<float>(g);
    });
    for (std::int64_t r = 0; r < rows_; ++r)
      for (std::int64_t i = 0; i < cache.lengths[r]; ++i)
        KVC_CHECK(std::isfinite(probs[r * cap + i]),
                  "CAM's attention of the step's last token is " << probs[r * cap + i] << " at (batch " << r / h
                                                                 << ", kv head " << r % h << ", slot " << i
                                                                 << "): a key of that row is not finite");
    float* sum = sums_.data() + static_cast<std::int64_t>(obs.layer_idx) * rows_ * shape_.capacity;  // [rows, capacity]
    std::int64_t* summed = summed_.data() + static_cast<std::int64_t>(obs.layer_idx) * rows_;        // [rows]
    for (std::int64_t r = 0; r < rows_; ++r) {
      float* a = sum + r * shape_.capacity;
      std::int64_t const n = cache.lengths[r];
      std::fill(a + summed[r], a + n, 0.0f);
      for (std::int64_t i = 0; i < n; ++i) a[i] += probs[r * cap + i];
      summed[r] = n;
    }
  }

  /// Steps 1–5 of the file comment for every sequence longer than the target; `k` candidates at most.
  template <class L>
  bool compress(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, std::int64_t k,
                Workspace& ws) {
    std::int64_t const cap = cache.extents.capacity, d = shape_.head_dim, h = shape_.kv_heads, bn = shape_.batch;
    std::int64_t const target = options_.target_size, budget = options_.merge_budget;
    std::int64_t const longest = *std::max_element(cache.lengths, cache.lengths + rows_);
    Inner const scorer = with_compression_ratio(inner_, find_target_compression_ratio(longest, target));
    float* scores = ws.take<float>(detail::size_product(rows_, cap));  // [batch, kv_heads, capacity]
    Observation<T> const view = ring_.view(obs, detail::decoding_window(inner_), ws);
    score(dev, scorer, view, cache, scores, ws);

    float* mean = ws.take<float>(static_cast<std::size_t>(cap));                  // [capacity] one sequence's mean score
    std::int32_t* kept = ws.take<std::int32_t>(detail::size_product(bn, cap));    // [batch, capacity] kept slots first
    std::int32_t* cand = ws.take<std::int32_t>(detail::size_product(bn, cap));    // [batch, capacity] evicted, then candidates
    std::int32_t* start = ws.take<std::int32_t>(detail::size_product(bn, cap));   // [batch, capacity] window start of each
    std::int64_t* merging = ws.take<std::int64_t>(static_cast<std::size_t>(bn));  // [batch] candidates of each sequence
    double* draws = ws.take<double>(detail::size_product(rows_, cap));            // [batch, kv_heads, capacity] u
    float* value = ws.take<float>(static_cast<std::size_t>(d));                   // [head_dim] one candidate's value
    bool any = false;
    for (std::int64_t b = 0; b < bn; ++b) {
      auto const n = static_cast<std::int32_t>(cache.lengths[b * h]);
      merging[b] = 0;
      if (n <= target) continue;
      any = true;
      for (std::int32_t i = 0; i < n; ++i) {
        float s = 0.0f;
        for (std::int64_t j = 0; j < h; ++j) s += scores[(b * h + j) * cap + i];
        mean[i] = s / static_cast<float>(h);
      }
      std::int32_t* kb = kept + b * cap;
      std::int32_t* cb = cand + b * cap;
      cpu_impl::select_topk_row(mean, n, static_cast<std::int32_t>(target), kb);
      std::int64_t e = 0;
      for (std::int32_t i = 0, j = 0; i < n; ++i) {  // the evicted slots, ascending
        if (j < target && kb[j] == i) ++j;
        else cb[e++] = i;
      }
      std::int64_t const m = std::min(k, e);
      auto const before = [mean](std::int32_t x, std::int32_t y) { return mean[x] > mean[y] || (mean[x] == mean[y] && x > y); };
      std::nth_element(cb, cb + (m - 1), cb + e, before);  // m ≥ 1: k counts this step, e ≥ 1 as n > target
      std::sort(cb, cb + m);
      std::int32_t* sb = start + b * cap;
      for (std::int64_t i = 0, j = 0; i < m; ++i) {  // kept slots before each candidate
        while (j < target && kb[j] < cb[i]) ++j;
        sb[i] = static_cast<std::int32_t>(j);
      }
      merging[b] = m;
      for (std::int64_t r = b * h; r < (b + 1) * h; ++r) {
        for (std::int64_t i = 0; i < m; ++i) {
          detail::gather_values(cache, b, r % h, cb[i], 1, value);
          for (std::int64_t c = 0; c < d; ++c)
            KVC_CHECK(std::isfinite(value[c]), "value (batch " << b << ", kv head " << r % h << ", slot " << cb[i]
                                                               << ", channel " << c << ") = " << value[c]
                                                               << " would be merged into the kept entries: it must be finite");
        }
      }
    }
    if (!any) return false;
    for (std::int64_t b = 0; b < bn; ++b)  // the documented order: batch, kv head, candidate
      for (std::int64_t r = b * h; r < (b + 1) * h; ++r)
        for (std::int64_t i = 0; i < merging[b]; ++i) draws[r * cap + i] = uniform_();

    float* sums = sums_.data() + static_cast<std::int64_t>(obs.layer_idx) * rows_ * shape_.capacity;  // [rows, capacity]
    std::int64_t* summed = summed_.data() + static_cast<std::int64_t>(obs.layer_idx) * rows_;          // [rows]
    detail::parallel_for(dev, rows_, [&](std::int64_t r, int) {
      std::int64_t const b = r / h, kv = r % h;
      if (cache.lengths[r] <= target) return;
      std::int32_t const* kb = kept + b * cap;
      std::int32_t const* cb = cand + b * cap;
      std::int32_t const* sb = start + b * cap;
      float* a = sums + r * shape_.capacity;
      for (std::int64_t i = 0; i < merging[b]; ++i) {
        std::int64_t const width = std::clamp<std::int64_t>(target - sb[i], 0, budget);
        float window = 0.0f;
        for (std::int64_t j = 0; j < width; ++j) window += a[kb[sb[i] + j]];
        float p = a[cb[i]] / (window / static_cast<float>(std::max<std::int64_t>(width, 1)));
        if (std::isnan(p)) p = 0.0f;
        else if (std::isinf(p)) p = p > 0.0f ? 1.0f : 0.0f;
        p = std::clamp(p, 0.0f, 1.0f);
        if (width == 0 || !(draws[r * cap + i] < static_cast<double>(p))) continue;
        float const share = 1.0f / static_cast<float>(width);
        for (std::int64_t j = 0; j < width; ++j)
          for (std::int64_t c = 0; c < d; ++c) {
            T& y = cache.value(b, kv, kb[sb[i] + j], c);
            y = from_float<T>(to_float(y) + to_float(cache.value(b, kv, cb[i], c)) * share);
          }
      }
      cpu_impl::compact_row(dev, cache, b, kv, kb, static_cast<std::int32_t>(target));
      for (std::int64_t j = 0; j < target; ++j) a[j] = a[kb[j]];
      summed[r] = target;
    });
    return true;
  }

  Inner inner_;
  CAMOptions options_;
  CAMShape shape_;
  detail::QueryRing<T> ring_;         // the queries since the last compression
  Uniform uniform_;                   // the merge draws
  std::int64_t rows_ = 0;             // batch · kv_heads
  std::vector<float> sums_;           // [num_layers, batch, kv_heads, capacity] running attention sums
  std::vector<std::int64_t> summed_;  // [num_layers, batch · kv_heads] entries each sum covers
  std::vector<std::int64_t> steps_;   // [num_layers] decode steps since the last compression
};

}  // namespace kvcompress
