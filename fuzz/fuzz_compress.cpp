// libFuzzer target: the view factories, the workspace and compress on fuzzed shapes, strides,
// lengths, ratios, press parameters and activations (NaN and ±Inf included), with views and
// tensors the engine built by hand (aggregates, wrong strides, overlapping K/V) and ragged batches.
// Accepted outcomes: success, or kvcompress::Error. A crash, a sanitizer report, any other
// exception, or a cache that breaks compress's postconditions is a bug.
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <memory>
#include <optional>
#include <vector>

#include "kvcompress/kvcompress.hpp"

using namespace kvcompress;

namespace {

using I64 = std::int64_t;
constexpr I64 kMaxI64 = std::numeric_limits<I64>::max();
constexpr I64 kMaxElements = I64{1} << 12;  // buffers the harness really allocates
// The activations of one input, in floats: 128 KiB, so each buffer stays in ASan's size-class
// allocator instead of its mmap path (a page-faulting mmap/munmap per input). Every shape range
// below is still reachable; only the largest combinations (3 × 12 heads × 49 × 49 attention) are not.
constexpr I64 kMaxActivationFloats = I64{1} << 15;

[[noreturn]] void postcondition_failed() { std::abort(); }

/// Exactly n floats, not zeroed: fill() writes each one, and zeroing first cost as much as the
/// compress they feed. Exactly sized, so ASan still reports a read one past the end.
class Floats {
 public:
  void resize(std::size_t n) {
    data_.reset(n == 0 ? nullptr : new float[n]);
    size_ = n;
  }
  [[nodiscard]] float* data() const noexcept { return data_.get(); }
  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  [[nodiscard]] bool empty() const noexcept { return size_ == 0; }
  float& operator[](std::size_t i) const noexcept { return data_[i]; }

 private:
  std::unique_ptr<float[]> data_;
  std::size_t size_ = 0;
};

/// An int64 that is small most of the time, sometimes a power of two, sometimes anything.
I64 any_i64(FuzzedDataProvider& in) {
  switch (in.ConsumeIntegralInRange(0, 3)) {
    case 0: return in.ConsumeIntegralInRange<I64>(-2, 70);
    case 1: return I64{1} << in.ConsumeIntegralInRange(0, 62);
    case 2: return kMaxI64 - in.ConsumeIntegralInRange<I64>(0, 2);
    default: return in.ConsumeIntegral<I64>();
  }
}

double any_ratio(FuzzedDataProvider& in) {
  constexpr std::array<double, 10> special{-0.1, 0.0, 1e-9, 0.1, 0.5, 0.9, 0.999, 1.0,
                                           std::numeric_limits<double>::quiet_NaN(),
                                           std::numeric_limits<double>::infinity()};
  if (in.ConsumeBool()) return special[in.ConsumeIntegralInRange<std::size_t>(0, special.size() - 1)];
  return in.ConsumeFloatingPointInRange(0.0, 1.0);
}

float special_float(FuzzedDataProvider& in) {
  constexpr std::array<float, 8> special{std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                                         -std::numeric_limits<float>::infinity(), 0.0f, 1e30f, -1e30f, 1e-40f,
                                         std::numeric_limits<float>::max()};
  return special[in.ConsumeIntegralInRange<std::size_t>(0, special.size() - 1)];
}

/// Deterministic content from one seed byte, then a few fuzzed special values at fuzzed places.
/// (Not coverage-instrumented: its loop would only cost time and add no feature.)
__attribute__((no_sanitize("coverage"))) void fill(FuzzedDataProvider& in, Floats& v, float scale) {
  std::uint32_t state = in.ConsumeIntegral<std::uint8_t>() * 2654435761u + 1u;
  for (std::size_t i = 0; i < v.size(); ++i) {
    state = state * 1664525u + 1013904223u;
    v[i] = scale * (static_cast<float>(state >> 8) / 8388608.0f - 1.0f);
  }
  int const specials = in.ConsumeIntegralInRange(0, 2);
  for (int i = 0; i < specials && !v.empty(); ++i)
    v[in.ConsumeIntegralInRange<std::size_t>(0, v.size() - 1)] = special_float(in);
}

// ---- Factories on arbitrary 64-bit values (no memory behind them is read) ---------------------

void fuzz_factories(FuzzedDataProvider& in) {
  CacheExtents const e{any_i64(in), any_i64(in), any_i64(in), any_i64(in)};
  static float dummy[4];
  switch (in.ConsumeIntegralInRange(0, 5)) {
    case 0: {
      std::array<Axis, 4> order{};
      for (auto& a : order) a = static_cast<Axis>(in.ConsumeIntegralInRange(0, 5));
      (void)make_strided_layout(e, order, any_i64(in));
      break;
    }
    case 1: (void)make_strided_layout(e, {any_i64(in), any_i64(in), any_i64(in), any_i64(in)}); break;
    case 2:
      (void)make_tensor4<float>(in.ConsumeBool() ? dummy : nullptr, {any_i64(in), any_i64(in), any_i64(in), any_i64(in)},
                                {any_i64(in), any_i64(in), any_i64(in), any_i64(in)});
      break;
    case 3: (void)make_tensor4<float>(dummy, {any_i64(in), any_i64(in), any_i64(in), any_i64(in)}); break;
    case 4: {
      // A hand-built layout given to make_cache_view: it may read batch·kv_heads lengths, so those
      // stay within the array; everything else is arbitrary.
      std::array<std::int32_t, 64> lengths{};
      for (auto& l : lengths) l = in.ConsumeIntegralInRange<std::int32_t>(-1, 70);
      CacheExtents const small{in.ConsumeIntegralInRange<I64>(1, 8), in.ConsumeIntegralInRange<I64>(1, 8), any_i64(in),
                               any_i64(in)};
      StridedLayout const k{{any_i64(in), any_i64(in), any_i64(in), any_i64(in)}};
      StridedLayout const v = in.ConsumeBool() ? k : StridedLayout{{any_i64(in), any_i64(in), any_i64(in), any_i64(in)}};
      float* const keys = in.ConsumeBool() ? dummy : nullptr;
      float* const values = in.ConsumeBool() ? dummy + in.ConsumeIntegralInRange(0, 1) : nullptr;
      (void)make_cache_view(keys, values, small, k, v, in.ConsumeBool() ? lengths.data() : nullptr);
      break;
    }
    default: {
      std::vector<std::byte> buf(in.ConsumeIntegralInRange<std::size_t>(0, 4096));
      Workspace ws(buf.empty() && in.ConsumeBool() ? nullptr : buf.data(), buf.size());
      for (int i = 0; i < 4; ++i) {
        auto const n = in.ConsumeBool() ? in.ConsumeIntegralInRange<std::size_t>(0, 1024) : in.ConsumeIntegral<std::size_t>();
        auto* p = ws.take<float>(n);
        if (n > 0 && (reinterpret_cast<std::byte*>(p) < buf.data() ||
                      reinterpret_cast<std::byte*>(p + n) > buf.data() + buf.size()))
          postcondition_failed();
      }
      break;
    }
  }
  // kept_count and PyramidKV's budget are total functions of their arguments.
  I64 const n = any_i64(in);
  I64 const k = kept_count(n, any_ratio(in));
  if (n >= 1 && (k < 0 || k > n)) postcondition_failed();
  PyramidKVPress pyramid{any_ratio(in), any_i64(in), 5, in.ConsumeBool() ? 20.0 : in.ConsumeFloatingPoint<double>()};
  Observation<float> obs;
  obs.layer_idx = in.ConsumeIntegralInRange(-1, 40);
  obs.num_layers = in.ConsumeIntegralInRange(-1, 40);
  (void)pyramid.kept_count(n, obs);
}

// ---- compress on a real cache -------------------------------------------------------------------

/// Largest element offset + 1 of a layout over extents, or 0 if above kMaxElements.
I64 span_of(CacheExtents const& e, std::array<I64, 4> const& s) {
  std::array<I64, 4> const ext{e.batch, e.kv_heads, e.capacity, e.head_dim};
  I64 span = 1;
  for (int a = 0; a < 4; ++a) {
    if (s[a] < 0 || s[a] > kMaxElements) return 0;
    span += (ext[a] - 1) * s[a];
    if (span > kMaxElements) return 0;
  }
  return span;
}

struct Activations {
  Floats queries, window_queries, attention, mean, covariance, filters;
};

void fuzz_compress(FuzzedDataProvider& in) {
  I64 const batch = in.ConsumeIntegralInRange<I64>(1, 3), heads = in.ConsumeIntegralInRange<I64>(1, 4);
  I64 const cap = in.ConsumeIntegralInRange<I64>(1, 48), d = in.ConsumeIntegralInRange<I64>(1, 24);
  CacheExtents const e{batch, heads, cap, d};

  // Layout: a dense order (optionally K/V interleaved in one buffer) or explicit strides.
  std::array<Axis, 4> order{Axis::kBatch, Axis::kHead, Axis::kSeq, Axis::kDim};
  for (int i = 0; i < 3; ++i) std::swap(order[static_cast<std::size_t>(i)], order[in.ConsumeIntegralInRange<std::size_t>(i, 3)]);
  int const kind = in.ConsumeIntegralInRange(0, 2);
  StridedLayout layout;
  if (kind == 1) {
    std::array<I64, 4> s{};
    for (auto& x : s) x = in.ConsumeIntegralInRange<I64>(-1, 600);
    layout.strides = s;
  } else {
    layout = make_strided_layout(e, order, kind == 2 ? 2 : in.ConsumeIntegralInRange<I64>(1, 2));
  }
  I64 const span = span_of(e, layout.strides);
  if (span == 0) return;
  // An engine may fill in the view itself: an aggregate no factory checked, sometimes with a stride
  // it got wrong (negative or zero) or a value buffer inside the key buffer (where the two may be
  // element-disjoint, or not). compress must reject what is wrong before it reads through it. The
  // key buffer then holds the values too.
  bool const aggregate = in.ConsumeIntegralInRange(0, 3) == 0;
  I64 const values_offset = aggregate && in.ConsumeIntegralInRange(0, 3) == 0 ? in.ConsumeIntegralInRange<I64>(0, span - 1) : -1;
  Floats kbuf, vbuf;
  kbuf.resize(static_cast<std::size_t>(span + 1 + std::max<I64>(values_offset, 0)));
  vbuf.resize(static_cast<std::size_t>(span));
  fill(in, kbuf, 2.0f);
  fill(in, vbuf, 2.0f);
  float* const keys = kbuf.data();
  float* const values = kind == 2 ? kbuf.data() + 1 : vbuf.data();  // interleaved: V right after each K

  I64 const rows = batch * heads;
  std::vector<std::int32_t> lengths(static_cast<std::size_t>(rows));
  bool const equal = in.ConsumeBool();  // TOVA and ObservedAttention need equal lengths
  std::int32_t const common = in.ConsumeIntegralInRange<std::int32_t>(0, static_cast<std::int32_t>(cap));
  for (auto& l : lengths)
    l = equal ? common : in.ConsumeIntegralInRange<std::int32_t>(in.ConsumeIntegralInRange(0, 15) == 0 ? -1 : 0,
                                                                  static_cast<std::int32_t>(cap) + (in.ConsumeIntegralInRange(0, 15) == 0));
  std::vector<std::int32_t> positions(static_cast<std::size_t>(rows * cap));
  for (std::size_t i = 0; i < positions.size(); ++i) positions[i] = static_cast<std::int32_t>(static_cast<I64>(i) % cap);
  bool const with_positions = in.ConsumeBool();
  std::int32_t* const pos = with_positions ? positions.data() : nullptr;
  StridedLayout key_layout = layout, value_layout = layout;
  float* const aggregate_values = values_offset >= 0 ? keys + values_offset : values;
  if (aggregate && in.ConsumeBool()) {
    I64& stride = (in.ConsumeBool() ? key_layout : value_layout).strides[in.ConsumeIntegralInRange<std::size_t>(0, 3)];
    stride = in.ConsumeBool() ? -stride : 0;
  }
  auto const cache = aggregate ? KVCacheView<float>{keys, aggregate_values, e, key_layout, value_layout, lengths.data(), pos}
                               : make_cache_view(keys, values, e, layout, lengths.data(), pos);

  // Activations: shapes mostly consistent with the cache, sometimes not.
  auto pick = [&](I64 good, I64 lo, I64 hi) { return in.ConsumeIntegralInRange(0, 7) == 0 ? in.ConsumeIntegralInRange(lo, hi) : good; };
  I64 const group = in.ConsumeIntegralInRange<I64>(1, 3);
  bool const ragged = in.ConsumeIntegralInRange(0, 3) == 0;  // queries packed per sequence, cu_seqlens-style
  I64 const qb = ragged && in.ConsumeIntegralInRange(0, 7) != 0 ? 1 : pick(batch, 1, 4);
  I64 const qh = pick(heads * group, 1, 12), qd = pick(d, 1, 25);
  I64 const q_len = in.ConsumeIntegralInRange<I64>(1, cap + 2), w = in.ConsumeIntegralInRange<I64>(1, 6);
  I64 const n0 = lengths[0];
  I64 const a_q = pick(std::max<I64>(n0, 1), 1, cap + 1), a_n = pick(std::max<I64>(n0, 1), 1, cap + 1);
  // Only the activations the observation carries are built (filling them dominates the cost).
  bool const with_queries = in.ConsumeIntegralInRange(0, 7) != 0, with_window = in.ConsumeBool();
  bool const with_attention = in.ConsumeBool(), with_stats = in.ConsumeBool(), with_cov = in.ConsumeBool();
  I64 const activation_floats = (with_queries ? qb * qh * q_len * qd : 0) + (with_window ? qb * qh * w * qd : 0) +
                                (with_attention ? qb * qh * a_q * a_n : 0) + (with_stats ? qh * d * (with_cov ? d + 1 : 1) : 0);
  if (activation_floats > kMaxActivationFloats) return;
  Activations act;
  auto sized = [](Floats& v, bool on, I64 n) { v.resize(on ? static_cast<std::size_t>(n) : 0); };
  sized(act.queries, with_queries, qb * qh * q_len * qd);
  sized(act.window_queries, with_window, qb * qh * w * qd);
  sized(act.attention, with_attention, qb * qh * a_q * a_n);
  sized(act.mean, with_stats, qh * d);
  sized(act.covariance, with_stats && with_cov, qh * d * d);
  fill(in, act.queries, 1.0f);
  fill(in, act.window_queries, 1.0f);
  fill(in, act.attention, 0.1f);
  fill(in, act.mean, 0.3f);
  fill(in, act.covariance, 0.1f);

  std::optional<RotaryEmbedding> rope;
  if (in.ConsumeIntegralInRange(0, 7) != 0) {
    RopeConfig rc;
    rc.type = static_cast<RopeType>(in.ConsumeIntegralInRange(0, 4));
    rc.head_dim = static_cast<int>(pick(d + (d % 2), 0, 26));
    rc.factor = in.ConsumeBool() ? 8.0 : in.ConsumeFloatingPointInRange(0.5, 64.0);
    rc.original_max_position_embeddings = pick(32, -1, 4096);
    rc.max_position_embeddings = pick(256, -1, 8192);
    rope.emplace(rc);
  }

  Observation<float> obs;
  obs.layer_idx = static_cast<int>(pick(1, -1, 4));
  obs.num_layers = static_cast<int>(pick(3, -1, 4));
  if (with_queries) obs.queries = make_tensor4(act.queries.data(), {qb, qh, q_len, qd});
  if (with_window) obs.window_queries = make_tensor4(act.window_queries.data(), {qb, qh, w, qd});
  if (with_attention) obs.attention = make_tensor4(act.attention.data(), {qb, qh, a_q, a_n});
  if (with_stats) obs.stats = QueryStats{act.mean.data(), with_cov ? act.covariance.data() : nullptr, qh};
  obs.rope = rope ? &*rope : nullptr;
  obs.position = in.ConsumeIntegralInRange(0, 15) == 0 ? any_i64(in) : in.ConsumeIntegralInRange<I64>(0, 100000);
  obs.chunk_length = in.ConsumeIntegralInRange(0, 3) == 0 ? in.ConsumeIntegralInRange<I64>(-1, cap + 2) : 0;
  // A hand-built tensor with a negative stride must be rejected, never read backwards.
  if (with_queries && in.ConsumeIntegralInRange(0, 15) == 0)
    obs.queries.strides[in.ConsumeIntegralInRange<std::size_t>(0, 3)] *= -1;
  if (with_window && in.ConsumeIntegralInRange(0, 15) == 0)
    obs.window_queries.strides[in.ConsumeIntegralInRange<std::size_t>(0, 3)] *= -1;
  // Ragged: batch + 1 offsets partitioning the packed q_len (sometimes broken), and per-sequence
  // start positions (sometimes negative or huge).
  std::vector<std::int32_t> offsets;
  std::vector<I64> sequence_positions;
  if (ragged) {
    offsets.resize(static_cast<std::size_t>(batch + 1));
    for (I64 b = 1; b < batch; ++b) offsets[static_cast<std::size_t>(b)] = in.ConsumeIntegralInRange<std::int32_t>(0, static_cast<std::int32_t>(q_len));
    offsets[static_cast<std::size_t>(batch)] = static_cast<std::int32_t>(q_len);
    std::sort(offsets.begin(), offsets.end());
    if (in.ConsumeIntegralInRange(0, 7) == 0)
      offsets[in.ConsumeIntegralInRange<std::size_t>(0, static_cast<std::size_t>(batch))] += in.ConsumeIntegralInRange(-3, 3);
    obs.query_offsets = offsets.data();
    if (in.ConsumeBool()) {
      sequence_positions.resize(static_cast<std::size_t>(batch));
      for (auto& p : sequence_positions)
        p = in.ConsumeIntegralInRange(0, 15) == 0 ? any_i64(in) : in.ConsumeIntegralInRange<I64>(0, 100000);
      obs.sequence_positions = sequence_positions.data();
    }
  }

  // One press with fuzzed parameters.
  double const ratio = any_ratio(in);
  CpuDevice const dev{in.ConsumeIntegralInRange(0, 7) == 0 ? 2 : 1};
  std::vector<std::int32_t> const before = lengths;
  bool negative_position = false;
  auto run = [&](auto const& press) {
    std::size_t bytes = compress_workspace_bytes(dev, press, obs, cache);
    if (bytes > (std::size_t{64} << 20)) return;
    if (in.ConsumeIntegralInRange(0, 15) == 0) bytes -= std::min<std::size_t>(bytes, in.ConsumeIntegralInRange<std::size_t>(1, 4096));
    std::unique_ptr<std::byte[]> const scratch(bytes == 0 ? nullptr : new std::byte[bytes]);  // not zeroed, as in an engine
    compress(dev, press, obs, cache, Workspace(scratch.get(), bytes));
    // Postconditions: every row shrank to a length in [0, n], positions kept in order.
    for (I64 r = 0; r < rows; ++r) {
      std::int32_t const n = before[static_cast<std::size_t>(r)], k = lengths[static_cast<std::size_t>(r)];
      if (k < 0 || k > n) postcondition_failed();
      if (!std::is_same_v<decltype(press), PyramidKVPress const&> &&
          k != (ratio == 0.0 ? n : std::clamp<I64>(kept_count(n, ratio), 0, n)))
        postcondition_failed();
      if (with_positions && !negative_position)  // a no-op compress (ratio 0) leaves the injected one
        for (std::int32_t j = 1; j < k; ++j)
          if (positions[static_cast<std::size_t>(r * cap + j)] <= positions[static_cast<std::size_t>(r * cap + j - 1)])
            postcondition_failed();
    }
  };
  I64 const n_sink = in.ConsumeIntegralInRange<I64>(-1, 10);
  I64 const window = in.ConsumeIntegralInRange<I64>(-1, 8), kernel = in.ConsumeIntegralInRange<I64>(-1, 9);
  switch (in.ConsumeIntegralInRange(0, 13)) {
    case 0:
    case 1: {
      ExpectedAttentionPress p;
      p.compression_ratio = ratio;
      p.n_future_positions = in.ConsumeIntegralInRange<I64>(-1, 64);
      p.n_sink = n_sink;
      p.use_covariance = in.ConsumeBool();
      p.use_vnorm = in.ConsumeBool();
      p.epsilon = in.ConsumeBool() ? 0.0f : special_float(in);
      run(p);
      break;
    }
    case 2: {
      ExpectedAttentionStatsPress p;
      p.compression_ratio = ratio;
      p.n_future_positions = in.ConsumeIntegralInRange<I64>(-1, 64);
      p.n_sink = n_sink;
      p.use_covariance = in.ConsumeBool();
      p.use_vnorm = in.ConsumeBool();
      run(p);
      break;
    }
    case 3: run(KnormPress{ratio}); break;
    case 4: run(StreamingLLMPress{ratio, n_sink}); break;
    case 5: {
      RandomPress p;
      p.compression_ratio = ratio;
      if (in.ConsumeBool()) p.seed = in.ConsumeIntegral<std::uint64_t>();
      run(p);
      break;
    }
    case 6: run(KeyDiffPress{ratio}); break;
    case 7: run(LagKVPress{ratio, n_sink, in.ConsumeIntegralInRange<I64>(-1, 24), in.ConsumeBool()}); break;
    case 8: {
      int const layers = in.ConsumeIntegralInRange(1, 3);
      int const fh = static_cast<int>(pick(heads, 0, 5)), fd = static_cast<int>(pick(d, 0, 25));
      act.filters.resize(static_cast<std::size_t>(layers * std::max(fh, 0) * std::max(fd, 0)));
      fill(in, act.filters, 1.0f);
      run(QFilterPress{ratio, in.ConsumeIntegralInRange(0, 7) == 0 ? nullptr : act.filters.data(), layers, fh, fd});
      break;
    }
    case 9: run(SnapKVPress{ratio, window, kernel}); break;
    case 10: run(PyramidKVPress{ratio, window, kernel, in.ConsumeBool() ? 20.0 : in.ConsumeFloatingPointInRange(0.0, 40.0)}); break;
    case 11: run(TOVAPress{ratio}); break;
    case 12: {
      // Re-rotation reads the positions: sometimes one is negative.
      if (with_positions && in.ConsumeIntegralInRange(0, 3) == 0) {
        positions[in.ConsumeIntegralInRange<std::size_t>(0, positions.size() - 1)] = -in.ConsumeIntegralInRange(1, 9);
        negative_position = true;
      }
      ExpectedAttentionPress p;
      p.compression_ratio = ratio;
      p.n_sink = n_sink;
      run(KeyRerotationPress{p});
      break;
    }
    default: run(ObservedAttentionPress{ratio}); break;
  }
}

/// keep_topk on fuzzed scores (NaN and ±Inf included) and a fuzzed budget: the documented outcome
/// is min(max(k, 0), n) entries per row, the highest scores with NaN last, in position order.
void fuzz_keep_topk(FuzzedDataProvider& in) {
  I64 const heads = in.ConsumeIntegralInRange<I64>(1, 3), cap = in.ConsumeIntegralInRange<I64>(1, 40), d = 2;
  CacheExtents const e{1, heads, cap, d};
  std::vector<float> k(static_cast<std::size_t>(heads * cap * d)), v(k.size());
  for (std::size_t i = 0; i < k.size(); ++i) k[i] = static_cast<float>(i);
  std::vector<std::int32_t> lengths(static_cast<std::size_t>(heads));
  for (auto& l : lengths) l = in.ConsumeIntegralInRange<std::int32_t>(0, static_cast<std::int32_t>(cap));
  auto const cache = make_cache_view(k.data(), v.data(), e, make_strided_layout(e, {Axis::kBatch, Axis::kHead, Axis::kSeq, Axis::kDim}),
                                     lengths.data());
  std::vector<float> scores(static_cast<std::size_t>(heads * cap));
  for (auto& s : scores) s = in.ConsumeBool() ? special_float(in) : static_cast<float>(in.ConsumeIntegralInRange(-8, 8));
  I64 budget = any_i64(in);
  if (budget > 0 && in.ConsumeBool()) budget = -budget;
  std::vector<std::byte> scratch(Workspace::bytes_for<std::int32_t>(static_cast<std::size_t>(2 * cap)));
  std::vector<std::int32_t> const before = lengths;
  std::vector<float> const original = scores;
  Workspace ws(scratch.data(), scratch.size());
  keep_topk(CpuDevice{1}, cache, scores.data(), [&](I64) { return budget; }, ws);
  for (I64 r = 0; r < heads; ++r) {
    I64 const n = before[static_cast<std::size_t>(r)], kept = lengths[static_cast<std::size_t>(r)];
    if (kept != std::clamp<I64>(budget, 0, n)) postcondition_failed();
    // Kept keys carry their slot in element 0 (k = slot·d + …): strictly increasing slots, and no
    // dropped entry scores strictly above a kept one (NaN counts as the lowest).
    auto const rank = [](float s) { return std::isnan(s) ? -std::numeric_limits<double>::infinity() : static_cast<double>(s); };
    std::vector<bool> kept_slot(static_cast<std::size_t>(n), false);
    I64 prev = -1;
    for (I64 j = 0; j < kept; ++j) {
      I64 const slot = static_cast<I64>(cache.key(0, r, j, 0)) / d - r * cap;
      if (slot <= prev || slot >= n) postcondition_failed();
      kept_slot[static_cast<std::size_t>(slot)] = true;
      prev = slot;
    }
    double lowest_kept = std::numeric_limits<double>::infinity(), highest_dropped = -std::numeric_limits<double>::infinity();
    for (I64 i = 0; i < n; ++i) {
      double const s = rank(original[static_cast<std::size_t>(r * cap + i)]);
      if (kept_slot[static_cast<std::size_t>(i)]) lowest_kept = std::min(lowest_kept, s);
      else highest_dropped = std::max(highest_dropped, s);
    }
    if (kept > 0 && kept < n && highest_dropped > lowest_kept) postcondition_failed();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  try {
    switch (in.ConsumeIntegralInRange(0, 3)) {
      case 0: fuzz_factories(in); break;
      case 1: fuzz_keep_topk(in); break;
      default: fuzz_compress(in); break;
    }
  } catch (Error const&) {
    // The documented outcome for bad input.
  }
  return 0;
}
