#pragma once
/// \file
/// \brief CUR (CurDKV, arXiv 2509.15038): approximate leverage of keys and values by their squared
/// norms. k2 = ‖k‖², v2 = ‖v‖² (optionally of k·G and v·G for a random projection G); with the local
/// approximation each is normalised to sum 1 within windows of `local_window_size` tokens (the last
/// window zero-padded); the score is k2, v2, (k2 + v2)/2 or k2·v2, normalised to sum 1 per row, and
/// the first `num_sinks` entries score 1.
///
/// The projection G [head_dim, 20] is the caller's when `use_random_leverage` is on: kvpress draws it
/// from torch's global generator at every call (N(0, 1)/√20, shared by every batch element and head).

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "kvcompress/press/scorer.hpp"

namespace kvcompress {

/// \brief Which leverage CURPress scores with (kvpress's `leverage_type`).
enum class CurLeverage { kKey, kValue, kKvAvg, kKvProduct };

struct CURPress {
  /// Columns of kvpress's random projection.
  static constexpr std::int64_t kProjectionDim = 20;

  double compression_ratio = 0.0;
  std::int64_t num_sinks = 4;
  CurLeverage leverage_type = CurLeverage::kKvProduct;
  bool use_random_leverage = false;
  bool use_local_approximation = true;
  std::int64_t local_window_size = 16;
  /// G [head_dim, kProjectionDim], read when use_random_leverage; kvpress draws N(0, 1)/√20.
  float const* projection = nullptr;

  template <class T, class L>
  [[nodiscard]] std::size_t workspace_bytes(CpuDevice const& dev, Observation<T> const&, KVCacheView<T, L> const& cache) const {
    std::int64_t const threads = detail::thread_count(dev, cache.extents.batch * cache.extents.kv_heads);
    return Workspace::bytes_for<float>(detail::size_product(threads, cache.extents.capacity));
  }

  template <class T, class L>
  void score(CpuDevice const& dev, Observation<T> const&, KVCacheView<T, L> const& cache, float* scores, Workspace& ws) const {
    auto const& e = cache.extents;
    KVC_CHECK(num_sinks >= 0, "CURPress num_sinks must be non-negative, got " << num_sinks);
    KVC_CHECK(!use_local_approximation || local_window_size > 0,
              "CURPress local_window_size must be positive, got " << local_window_size);
    if (use_random_leverage) {
      KVC_CHECK(projection != nullptr, "CURPress projection must be given when use_random_leverage is true: [head_dim, 20] = ["
                                           << e.head_dim << ", 20] floats (kvpress draws N(0, 1)/sqrt(20) entries)");
      for (std::int64_t i = 0; i < e.head_dim * kProjectionDim; ++i)
        KVC_CHECK(std::isfinite(projection[i]), "CURPress projection[" << i << "] = " << projection[i] << " is not finite");
    }
    std::int64_t const heads = e.kv_heads, d = e.head_dim, cap = e.capacity, rows = e.batch * heads;
    float* v2_buf = ws.take<float>(static_cast<std::size_t>(detail::thread_count(dev, rows) * cap));
    detail::parallel_for(dev, rows, [&](std::int64_t r, int t) {
      std::int64_t const b = r / heads, h = r % heads, n = cache.lengths[r];
      float* k2 = scores + r * cap;  // [n]
      float* v2 = v2_buf + t * cap;  // [n]
      auto const squared_norm = [&](auto const& at) {
        float s = 0.0f;
        if (!use_random_leverage) {
          for (std::int64_t c = 0; c < d; ++c) s += to_float(at(c)) * to_float(at(c));
          return s;
        }
        for (std::int64_t j = 0; j < kProjectionDim; ++j) {
          float y = 0.0f;
          for (std::int64_t c = 0; c < d; ++c) y += to_float(at(c)) * projection[c * kProjectionDim + j];
          s += y * y;
        }
        return s;
      };
      for (std::int64_t i = 0; i < n; ++i) {
        k2[i] = squared_norm([&](std::int64_t c) { return cache.key(b, h, i, c); });
        v2[i] = squared_norm([&](std::int64_t c) { return cache.value(b, h, i, c); });
      }
      if (use_local_approximation) {
        for (float* x : {k2, v2})
          for (std::int64_t w0 = 0; w0 < n; w0 += local_window_size) {
            std::int64_t const w1 = std::min(n, w0 + local_window_size);
            float sum = 0.0f;
            for (std::int64_t i = w0; i < w1; ++i) sum += x[i];
            for (std::int64_t i = w0; i < w1; ++i) x[i] /= sum;
          }
      }
      float total = 0.0f;
      for (std::int64_t i = 0; i < n; ++i) {
        switch (leverage_type) {
          case CurLeverage::kKey: break;
          case CurLeverage::kValue: k2[i] = v2[i]; break;
          case CurLeverage::kKvAvg: k2[i] = (k2[i] + v2[i]) / 2.0f; break;
          case CurLeverage::kKvProduct: k2[i] = k2[i] * v2[i]; break;
        }
        total += k2[i];
      }
      for (std::int64_t i = 0; i < n; ++i) k2[i] = i < num_sinks ? 1.0f : k2[i] / total;
    });
  }
};

}  // namespace kvcompress
