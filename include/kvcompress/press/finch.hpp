#pragma once
/// \file
/// \brief FINCH (TACL 2024, doi 10.1162/tacl_a_00716): prompt-guided selection. The prompt is
/// `context + question`; the question's `window_size` tokens are the observation window. Each
/// context key scores the window's attention to it (SnapKV's window attention, without pooling),
/// each window row first multiplied by its absolute position n − w + r when `normalize_scores`, then
/// averaged over the rows and the query heads of the group; the window gets the global maximum + 1.
/// The top `int(n(1 − r))` entries are kept per row, or, with `chunk_length`, the top
/// `int(len(1 − r))` (at least 1) of every chunk of the score row. With `rerotate_keys` the kept keys
/// are re-rotated to their new slots (KeyRerotation's arithmetic), and `positions` become the slots.
///
/// kvpress finds the window from a delimiter token that its embedding hook removes from the prompt;
/// the engine knows where its question starts, so the caller gives `window_size` (> 0).

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <utility>

#include "kvcompress/cpu/compact.hpp"
#include "kvcompress/cpu/select_topk.hpp"
#include "kvcompress/detail/blocked_product.hpp"
#include "kvcompress/detail/gather.hpp"
#include "kvcompress/press/layer_max.hpp"
#include "kvcompress/press/window_attention.hpp"
#include "kvcompress/rope/rotary_embedding.hpp"

namespace kvcompress {

struct FinchPress {
  double compression_ratio = 0.0;
  std::int64_t chunk_length = 0;  ///< 0: one top-k over the row (kvpress's None)
  bool normalize_scores = true;
  bool rerotate_keys = true;
  std::int64_t window_size = 0;  ///< the question's tokens, at the end of the prompt; must be given

  template <class T, class L>
  [[nodiscard]] std::size_t workspace_bytes(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache) const {
    auto const& e = cache.extents;
    std::int64_t const rows = e.batch * e.kv_heads, threads = detail::thread_count(dev, rows);
    std::int64_t const w = std::max<std::int64_t>(window_size, 1);
    std::int64_t const per_thread = detail::size_sum(detail::size_product(e.capacity, e.head_dim),
                                                     detail::size_product(w, e.head_dim), detail::size_product(w, e.capacity));
    return detail::sum_bytes(Workspace::bytes_for<float>(detail::size_product(threads, per_thread)),
                             Workspace::bytes_for<float>(static_cast<std::size_t>(rows)), detail::handshake_bytes(obs.shard));
  }

  template <class T, class L>
  void score(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, float* scores,
             Workspace& ws) const {
    using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    KVC_CHECK(window_size > 0, "FinchPress window_size (the question's tokens) must be positive, got " << window_size);
    bool const from_queries = detail::window_from_queries(obs, cache, window_size);
    auto const& e = cache.extents;
    std::int64_t const heads = e.kv_heads, d = e.head_dim, cap = e.capacity, rows = e.batch * heads, w = window_size;
    Tensor4<T> const& src = from_queries ? obs.window_queries : obs.attention;
    std::int64_t const group = src.shape[1] / heads;
    int const threads = detail::thread_count(dev, rows);
    float* buf = ws.take<float>(static_cast<std::size_t>(threads * (cap * d + w * d + w * cap)));
    float* row_max = ws.take<float>(static_cast<std::size_t>(rows));
    float const inv_sqrt_d = 1.0f / std::sqrt(static_cast<float>(d));
    detail::parallel_for(dev, rows, [&](std::int64_t r, int t) {
      std::int64_t const b = r / heads, h = r % heads, n = cache.lengths[r], m = n - w;
      float* keys = buf + t * (cap * d + w * d + w * cap);  // [n, d]
      float* qs = keys + cap * d;                            // [w, d]
      float* z = qs + w * d;                                 // [w, n]
      float* out = scores + r * cap;
      std::fill(out, out + m, 0.0f);
      auto const weight = [&](std::int64_t row) {  // kvpress: row r of the window is position n − w + r
        return (normalize_scores ? static_cast<float>(m + row) : 1.0f) / static_cast<float>(w * group);
      };
      if (from_queries) detail::gather_keys(cache, b, h, 0, n, keys);
      for (std::int64_t j = 0; j < group; ++j) {
        std::int64_t const head = h * group + j;
        if (!from_queries) {
          std::int64_t const q = src.shape[2];
          for (std::int64_t row = 0; row < w; ++row)
            for (std::int64_t i = 0; i < m; ++i) out[i] += to_float(src(b, head, q - w + row, i)) * weight(row);
          continue;
        }
        for (std::int64_t row = 0; row < w; ++row)
          for (std::int64_t c = 0; c < d; ++c) qs[row * d + c] = to_float(src(b, head, row, c));
        Eigen::Map<RowMat> logits(z, w, n);
        detail::blocked_product<false>(logits, Eigen::Map<RowMat const>(qs, w, d), Eigen::Map<RowMat const>(keys, n, d).transpose());
        for (std::int64_t row = 0; row < w; ++row) {
          float* zr = z + row * n;
          std::int64_t const visible = m + row + 1;  // causal: slots ≤ n − w + row
          float mx = -INFINITY;
          for (std::int64_t i = 0; i < visible; ++i) mx = std::max(mx, zr[i] *= inv_sqrt_d);
          float sum = 0.0f;
          for (std::int64_t i = 0; i < visible; ++i) sum += (zr[i] = std::exp(zr[i] - mx));
          float const scale = weight(row) / sum;
          for (std::int64_t i = 0; i < m; ++i) out[i] += zr[i] * scale;
        }
      }
      row_max[r] = m > 0 ? *std::max_element(out, out + m) : -INFINITY;
    });
    float const top = detail::layer_score_max(
        dev, obs, cache, scores, *std::max_element(row_max, row_max + rows),
        [&](std::int64_t r) { return std::pair<std::int64_t, std::int64_t>{0, cache.lengths[r] - w}; }, ws);
    float const protect = (std::isfinite(top) ? top : 0.0f) + 1.0f;
    for (std::int64_t r = 0; r < rows; ++r) std::fill(scores + r * cap + cache.lengths[r] - w, scores + r * cap + cache.lengths[r], protect);
  }

  template <class T, class L>
  [[nodiscard]] std::size_t compress_workspace_bytes(CpuDevice const& dev, Observation<T> const& obs,
                                                     KVCacheView<T, L> const& cache) const {
    auto const& e = cache.extents;
    std::int64_t const rows = e.batch * e.kv_heads, threads = detail::thread_count(dev, rows);
    return detail::sum_bytes(Workspace::bytes_for<float>(detail::size_product(rows, e.capacity)),
                             Workspace::bytes_for<float>(static_cast<std::size_t>(e.head_dim / 2)),
                             Workspace::bytes_for<std::int32_t>(detail::size_product(threads, e.capacity)),
                             workspace_bytes(dev, obs, cache));
  }

  template <class T, class L>
  void compress(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, Workspace ws) const {
    check_compression_ratio(compression_ratio);
    KVC_CHECK(chunk_length >= 0, "FinchPress chunk_length must be non-negative (0: no chunks), got " << chunk_length);
    if (compression_ratio == 0.0) return;
    if (chunk_length > 0)
      KVC_CHECK(static_cast<double>(chunk_length) > static_cast<double>(window_size) / (1.0 - compression_ratio),
                "FinchPress chunk_length = " << chunk_length << " must exceed window_size / (1 - compression_ratio) = "
                                             << static_cast<double>(window_size) / (1.0 - compression_ratio) << " (kvpress asserts it)");
    auto const& e = cache.extents;
    std::int64_t const heads = e.kv_heads, cap = e.capacity, rows = e.batch * heads, d = e.head_dim, hd = d / 2;
    float* inv_freq = ws.take<float>(static_cast<std::size_t>(hd));
    if (rerotate_keys) {
      KVC_CHECK(obs.rope != nullptr, "observation.rope must be set: FinchPress re-applies RoPE to the kept keys");
      KVC_CHECK(obs.rope->head_dim() == d, "observation.rope head_dim = " << obs.rope->head_dim() << " does not match the cache head_dim = " << d);
      std::int64_t last = 0;
      for (std::int64_t r = 0; r < rows; ++r) last = std::max<std::int64_t>(last, cache.lengths[r]);
      obs.rope->inv_freq_for(obs.chunk_tokens() > 0 ? obs.position + obs.chunk_tokens() : last, inv_freq);
    }
    float* scores = ws.take<float>(static_cast<std::size_t>(rows * cap));
    kvcompress::score(dev, *this, obs, cache, scores, ws);
    std::int32_t* idx_buf = ws.take<std::int32_t>(static_cast<std::size_t>(detail::thread_count(dev, rows) * cap));
    detail::parallel_for(dev, rows, [&](std::int64_t r, int t) {
      std::int64_t const b = r / heads, h = r % heads, n = cache.lengths[r];
      std::int32_t* idx = idx_buf + t * cap;  // ascending kept slots
      std::int64_t const chunk = chunk_length > 0 ? chunk_length : std::max<std::int64_t>(n, 1);
      std::int32_t kept = 0;
      for (std::int64_t c0 = 0; c0 < n; c0 += chunk) {
        std::int64_t const len = std::min(chunk, n - c0);
        auto const k = static_cast<std::int32_t>(kept_count(len, compression_ratio));
        cpu_impl::select_topk_row(scores + r * cap + c0, static_cast<std::int32_t>(len), k, idx + kept);
        for (std::int32_t j = 0; j < k; ++j) idx[kept + j] += static_cast<std::int32_t>(c0);
        kept += k;
      }
      cpu_impl::compact_row(dev, cache, b, h, idx, kept);
      if (!rerotate_keys) return;
      std::int32_t* pos = cache.positions ? cache.positions + r * cap : nullptr;
      for (std::int32_t j = 0; j < kept; ++j) {  // R_{j − p}: the kept key moves from position p to slot j
        auto const delta = static_cast<float>(j - (pos ? pos[j] : idx[j]));
        for (std::int64_t i = 0; i < hd; ++i) {
          float const angle = inv_freq[i] * delta, c = std::cos(angle), s = std::sin(angle);
          float const lo = to_float(cache.key(b, h, j, i)), hi = to_float(cache.key(b, h, j, i + hd));
          cache.key(b, h, j, i) = from_float<T>(lo * c - hi * s);
          cache.key(b, h, j, i + hd) = from_float<T>(hi * c + lo * s);
        }
        if (pos) pos[j] = j;
      }
    });
  }
};

}  // namespace kvcompress
