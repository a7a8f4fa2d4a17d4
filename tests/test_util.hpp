#pragma once
// Helpers shared by the CPU tests: a dense cache owned by the test, random fills.

#include <cstdint>
#include <random>
#include <vector>

#include "kvcompress/detail/row_kernels.hpp"
#include "kvcompress/kvcompress.hpp"

namespace kvc_test {

/// The row kernels' instruction sets this CPU runs, the portable loops first: what the kernel tests loop over.
inline std::vector<kvcompress::detail::RowIsa> row_isas_here() {
  using kvcompress::detail::RowIsa;
  std::vector<RowIsa> out{RowIsa::kPortable};
  if (kvcompress::detail::cpu_row_isa() != RowIsa::kPortable) out.push_back(RowIsa::kAvx2);
  if (kvcompress::detail::cpu_row_isa() == RowIsa::kAvx512) out.push_back(RowIsa::kAvx512);
  return out;
}

/// A cache that owns its storage, in HF's [batch, kv_heads, capacity, head_dim] order by default.
template <class T = float>
struct OwnedCache {
  kvcompress::CacheExtents extents;
  std::vector<T> k, v;
  std::vector<std::int32_t> lengths;
  kvcompress::StridedLayout layout;

  OwnedCache(std::int64_t batch, std::int64_t heads, std::int64_t cap, std::int64_t dim,
             std::array<kvcompress::Axis, 4> order = {kvcompress::Axis::kBatch, kvcompress::Axis::kHead,
                                                     kvcompress::Axis::kSeq, kvcompress::Axis::kDim})
      : extents{batch, heads, cap, dim},
        k(static_cast<std::size_t>(batch * heads * cap * dim)),
        v(k.size()),
        lengths(static_cast<std::size_t>(batch * heads), static_cast<std::int32_t>(cap)),
        layout(kvcompress::make_strided_layout(extents, order)) {}

  kvcompress::KVCacheView<T> view() {
    return kvcompress::make_cache_view(k.data(), v.data(), extents, layout, lengths.data());
  }

  void fill_random(std::uint32_t seed, float scale = 1.0f) {
    std::mt19937 gen(seed);
    std::normal_distribution<float> dist(0.0f, scale);
    for (auto& x : k) x = static_cast<T>(dist(gen));
    for (auto& x : v) x = static_cast<T>(dist(gen));
  }
};

inline std::vector<float> random_vector(std::size_t n, std::uint32_t seed, float scale = 1.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> out(n);
  for (auto& x : out) x = dist(gen);
  return out;
}

}  // namespace kvc_test
