#pragma once
/// \file
/// \brief ThinK (arXiv 2407.21018): prunes key *channels*, not entries. Channel c of kv head g scores
/// qn[c]·kn[c], with qn the mean over the group's query heads of the mean squared post-RoPE window
/// query (the chunk's last `window_size` tokens) and kn the mean squared cached key over the row's
/// entries; each (batch, kv head) drops its int(head_dim · key_channel_compression_ratio) lowest.
///
/// kvpress zeroes the dropped channels in place, so no memory is saved. Here the kept channels of
/// every key are written **packed** into `PackedKeys` ([batch, kv_heads, capacity, kept]) with each
/// row's channel index ([batch, kv_heads, kept], ascending): the engine stores keys at `kept` floats
/// per entry and gives the full-width key memory back. `reference_attention_packed` attends over that
/// layout (q·k over the kept channels, which is what kvpress's zeroed keys give). Values are untouched.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <numeric>

#include "kvcompress/detail/gather.hpp"
#include "kvcompress/press/scorer.hpp"

namespace kvcompress {

/// \brief Keys that keep `kept` of their head_dim channels, packed.
/// \tparam T storage type (the cache's)
template <class T>
struct PackedKeys {
  T* data = nullptr;                      // [batch, kv_heads, capacity, kept]
  std::int32_t* channels = nullptr;       // [batch, kv_heads, kept]: original channel of each packed one, ascending
  std::int64_t kept = 0;                  // channels kept per key

  [[nodiscard]] std::size_t key_count(CacheExtents const& e) const {
    return detail::size_product(e.batch, e.kv_heads, e.capacity, kept);
  }
};

struct ThinKPress {
  double key_channel_compression_ratio = 0.0;
  std::int64_t window_size = 32;

  /// kvpress's read-only `compression_ratio`: half the channel ratio (keys only, values untouched).
  [[nodiscard]] double compression_ratio() const noexcept { return key_channel_compression_ratio / 2.0; }
  /// Channels each key keeps: head_dim − int(head_dim · key_channel_compression_ratio).
  [[nodiscard]] std::int64_t kept_channels(std::int64_t head_dim) const {
    check();
    return head_dim - static_cast<std::int64_t>(static_cast<double>(head_dim) * key_channel_compression_ratio);
  }

  template <class T, class L>
  [[nodiscard]] std::size_t workspace_bytes(CpuDevice const& dev, KVCacheView<T, L> const& cache) const {
    auto const& e = cache.extents;
    return Workspace::bytes_for<float>(detail::size_product(e.batch, e.kv_heads, e.head_dim)) +
           Workspace::bytes_for<std::int32_t>(detail::size_product(detail::thread_count(dev, e.batch * e.kv_heads), e.head_dim));
  }

  /// \brief Channel scores qn·kn. \param scores [batch, kv_heads, head_dim]
  template <class T, class L>
  void channel_scores(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, float* scores) const {
    check();
    detail::validate_inputs(obs, cache);
    KVC_CHECK(scores != nullptr, "ThinKPress channel_scores: scores must not be null");
    auto const& e = cache.extents;
    KVC_CHECK(!obs.window_queries.empty(), "observation.window_queries (post-RoPE queries of the chunk's last "
                                               << window_size << " tokens) must be given: ThinKPress scores channels from them");
    auto const& s = obs.window_queries.shape;
    KVC_CHECK(s[0] == e.batch, "observation.window_queries batch = " << s[0] << " does not match the cache batch = " << e.batch);
    KVC_CHECK(s[1] % e.kv_heads == 0, "observation.window_queries heads = " << s[1] << " must be a multiple of kv_heads = " << e.kv_heads);
    KVC_CHECK(s[2] <= window_size, "observation.window_queries holds " << s[2] << " tokens, more than window_size = " << window_size);
    KVC_CHECK(s[3] == e.head_dim, "observation.window_queries head_dim = " << s[3] << " does not match the cache head_dim = " << e.head_dim);
    std::int64_t const d = e.head_dim, group = s[1] / e.kv_heads, w = s[2];
    detail::parallel_for(dev, e.batch * e.kv_heads, [&](std::int64_t r, int) {
      std::int64_t const b = r / e.kv_heads, h = r % e.kv_heads, n = cache.lengths[r];
      KVC_CHECK(n > 0, "ThinKPress: row (batch " << b << ", kv head " << h << ") is empty");
      float* out = scores + r * d;
      for (std::int64_t c = 0; c < d; ++c) {
        float qn = 0.0f;
        for (std::int64_t j = 0; j < group; ++j) {
          float acc = 0.0f;
          for (std::int64_t t = 0; t < w; ++t) {
            float const q = to_float(obs.window_queries(b, h * group + j, t, c));
            acc += q * q;
          }
          qn += acc / static_cast<float>(w);
        }
        double kn = 0.0;
        for (std::int64_t i = 0; i < n; ++i) {
          double const k = to_float(cache.key(b, h, i, c));
          kn += k * k;
        }
        out[c] = qn / static_cast<float>(group) * static_cast<float>(kn / static_cast<double>(n));
      }
    });
    for (std::int64_t i = 0; i < e.batch * e.kv_heads * d; ++i)
      if (!std::isfinite(scores[i])) {
        detail::require_finite(obs.window_queries, "observation.window_queries");
        detail::require_finite_cache(dev, cache);
        KVC_THROW("ThinKPress: a non-finite channel score " << scores[i] << " from finite inputs");
      }
  }

  /// \brief Writes each row's kept channels (ascending) into keys.channels and the packed keys of its
  /// live entries into keys.data. The cache itself is not modified.
  template <class T, class L>
  void compress(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, PackedKeys<T> const& keys,
                Workspace ws) const {
    auto const& e = cache.extents;
    std::int64_t const d = e.head_dim, kept = kept_channels(d), rows = e.batch * e.kv_heads;
    KVC_CHECK(keys.data != nullptr && keys.channels != nullptr, "ThinKPress: packed keys data and channels must not be null");
    KVC_CHECK(keys.kept == kept, "ThinKPress: packed keys hold " << keys.kept << " channels, the press keeps " << kept
                                                                 << " of head_dim = " << d);
    KVC_CHECK(ws.capacity() - ws.used() >= workspace_bytes(dev, cache),
              "workspace too small: " << ws.capacity() - ws.used() << " bytes given, ThinKPress workspace_bytes = "
                                      << workspace_bytes(dev, cache));
    float* scores = ws.take<float>(static_cast<std::size_t>(rows * d));  // [rows, d]
    channel_scores(dev, obs, cache, scores);
    std::int32_t* idx = ws.take<std::int32_t>(detail::size_product(detail::thread_count(dev, rows), d));
    detail::parallel_for(dev, rows, [&](std::int64_t r, int t) {
      std::int32_t* row_idx = idx + t * d;  // [d]
      cpu_impl::select_topk_row(scores + r * d, static_cast<std::int32_t>(d), static_cast<std::int32_t>(kept), row_idx);
      std::int32_t* ch = keys.channels + r * kept;
      std::copy_n(row_idx, kept, ch);
      std::int64_t const b = r / e.kv_heads, h = r % e.kv_heads;
      T* out = keys.data + r * e.capacity * kept;  // [capacity, kept]
      for (std::int64_t i = 0; i < cache.lengths[r]; ++i)
        for (std::int64_t c = 0; c < kept; ++c) out[i * kept + c] = cache.key(b, h, i, ch[c]);
    });
  }

 private:
  void check() const {
    KVC_CHECK(key_channel_compression_ratio >= 0.0 && key_channel_compression_ratio < 1.0,
              "ThinKPress key_channel_compression_ratio must be in [0, 1), got " << key_channel_compression_ratio);
    KVC_CHECK(window_size > 0, "ThinKPress window_size must be positive, got " << window_size);
  }
};

}  // namespace kvcompress
