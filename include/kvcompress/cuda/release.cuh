#pragma once
/// \file
/// \brief The pages that compression gave back, for every layer of a step at once, on the device:
/// what the host `released_pages(layout, extents, previous_lengths, lengths, freed, capacity)` returns
/// per layer, table row by table row, without copying each layer's lengths back (a synchronisation
/// per layer). The engine compresses its layers, calls `released_pages_async` once with every layer's
/// device lengths before and after, and copies `counts` and `freed` back when it synchronises anyway
/// (one copy and one wait per step instead of one per layer).
///
///   std::vector<kvc::LayerPages> layers = ...;   // per layer: its block table and device lengths
///   kvc::released_pages_async(dev, extents, layers.data(), n_layers, d_freed, d_counts);
///   // later, after one synchronisation: layer i freed d_counts[i] ids, d_freed[i · stride, ...)
///
/// One CTA per layer scans its table rows (freed = live pages before − live pages now, when
/// positive) with a block-wide prefix sum and writes the freed ids in the host function's order.
/// Up to kReleaseLayersPerLaunch layers travel by value in one launch's parameters (no device copy of
/// the descriptors, nothing allocated): one launch for a 32-layer model.

#include <cub/block/block_scan.cuh>

#include <cstddef>
#include <cstdint>

#include "kvcompress/cache/paged_layout.hpp"
#include "kvcompress/cache/view_checks.hpp"
#include "kvcompress/cuda/runtime.cuh"

namespace kvcompress {

/// One layer of a batched page release: its block table (the layout's `block_table` is device
/// memory) and its lengths before and after compression.
struct LayerPages {
  PagedLayout layout;
  std::int32_t const* previous_lengths;  // [batch, kv_heads] device memory
  std::int32_t const* lengths;           // [batch, kv_heads] device memory
};

namespace cuda_impl {

inline constexpr int kReleaseLayersPerLaunch = 32;
inline constexpr int kReleaseThreads = 256;

/// Block-table rows of one layer: batch × (kv_heads for per-head tables, else 1).
__host__ __device__ __forceinline__ std::int64_t release_table_rows(PagedLayout const& l, CacheExtents const& e) {
  return e.batch * (l.table_head_stride != 0 ? e.kv_heads : 1);
}

/// Live pages of table row i under `lengths` [batch, kv_heads]: enough for the longest row sharing it
/// (`detail::live_pages`, usable on the device). Lengths are clamped to [0, capacity].
__host__ __device__ __forceinline__ std::int64_t release_live_pages(PagedLayout const& l, CacheExtents const& e,
                                                                    std::int32_t const* lengths, std::int64_t i) {
  std::int64_t longest = 0;
  if (l.table_head_stride != 0) {
    longest = lengths[i];
  } else {
    for (std::int64_t h = 0; h < e.kv_heads; ++h) {
      std::int64_t const n = lengths[i * e.kv_heads + h];
      longest = n > longest ? n : longest;
    }
  }
  longest = longest > e.capacity ? e.capacity : longest;
  return (longest + l.page_size() - 1) >> l.page_shift;
}

/// First block-table entry of table row i (rows run sequence by sequence, then head by head).
__host__ __device__ __forceinline__ std::int64_t release_row_entry(PagedLayout const& l, CacheExtents const& e,
                                                                   std::int64_t i) {
  std::int64_t const per_sequence = l.table_head_stride != 0 ? e.kv_heads : 1;
  return (i / per_sequence) * l.table_batch_stride + (i % per_sequence) * l.table_head_stride;
}

/// Ids one layer can free at most: every entry of every table row.
[[nodiscard]] inline std::int64_t release_stride(PagedLayout const& l, CacheExtents const& e) {
  return static_cast<std::int64_t>(detail::size_product(release_table_rows(l, e), l.pages_per_row));
}

/// Launches of `released_pages_async` for `layers` layers.
[[nodiscard]] constexpr int release_launches(int layers) noexcept {
  return (layers + kReleaseLayersPerLaunch - 1) / kReleaseLayersPerLaunch;
}

/// Up to kReleaseLayersPerLaunch layers by value.
struct LayerPagesBatch {
  LayerPages layer[kReleaseLayersPerLaunch];
};

/// One CTA per layer of the batch: freed[(first_layer + l) · stride + ...] and counts[first_layer + l].
/// \param freed  [layers, stride] \param counts [layers]
template <class = void>
__global__ void __launch_bounds__(kReleaseThreads)
    released_pages_kernel(LayerPagesBatch batch, CacheExtents e, int first_layer, std::int64_t stride,
                          std::int32_t* freed, std::int32_t* counts) {
  using Scan = cub::BlockScan<std::int64_t, kReleaseThreads>;
  __shared__ typename Scan::TempStorage scan;
  LayerPages const& lp = batch.layer[blockIdx.x];
  std::int64_t const layer = first_layer + static_cast<std::int64_t>(blockIdx.x);
  std::int32_t* out = freed + layer * stride;
  std::int64_t const rows = release_table_rows(lp.layout, e);
  std::int64_t written = 0;
  for (std::int64_t base = 0; base < rows; base += kReleaseThreads) {
    std::int64_t const i = base + threadIdx.x;
    std::int64_t before = 0, now = 0;
    if (i < rows) {
      before = release_live_pages(lp.layout, e, lp.previous_lengths, i);
      now = release_live_pages(lp.layout, e, lp.lengths, i);
    }
    std::int64_t const n = before > now ? before - now : 0;
    std::int64_t at = 0, total = 0;
    Scan(scan).ExclusiveSum(n, at, total);
    if (n > 0) {
      std::int32_t const* row = lp.layout.block_table + release_row_entry(lp.layout, e, i);
      for (std::int64_t p = 0; p < n; ++p) out[written + at + p] = row[now + p];
    }
    written += total;
    __syncthreads();  // the scan storage is reused
  }
  if (threadIdx.x == 0) counts[layer] = static_cast<std::int32_t>(written);
}

}  // namespace cuda_impl

/// \brief Enqueues, on `dev.stream`, the page release of `n_layers` layers that share `extents`:
/// layer i's freed page ids go to freed[i · stride, i · stride + counts[i]) with stride
/// `released_pages_stride(layers[0].layout, extents)` (every layer's table has the same shape), in
/// the order of the host `released_pages`. Host checks only (extents, each layout's fields, null
/// pointers); lengths are read on the device and clamped to [0, capacity]. Never synchronises.
/// \param layers [n_layers] host array of descriptors (device pointers inside)
/// \param freed  [n_layers, stride] device memory
/// \param counts [n_layers] device memory
inline void released_pages_async(cuda const& dev, CacheExtents const& extents, LayerPages const* layers, int n_layers,
                                 std::int32_t* freed, std::int32_t* counts) {
  validate_extents(extents);
  KVC_CHECK(n_layers >= 0, "n_layers must not be negative, got " << n_layers);
  if (n_layers == 0) return;
  KVC_CHECK(layers != nullptr, "layers must not be null (" << n_layers << " layers)");
  cuda_impl::require_device_pointer(dev, freed, "freed");
  cuda_impl::require_device_pointer(dev, counts, "counts");
  std::int64_t const stride = cuda_impl::release_stride(layers[0].layout, extents);
  for (int i = 0; i < n_layers; ++i) {
    detail::validate_paged_layout(extents, layers[i].layout, "layers[i].layout", "layers[i].layout's page strides");
    KVC_CHECK(cuda_impl::release_stride(layers[i].layout, extents) == stride,
              "layers[" << i << "] has a block table of " << cuda_impl::release_stride(layers[i].layout, extents)
                        << " entries, layers[0] of " << stride << ": every layer's table must have the same shape");
    cuda_impl::require_device_pointer(dev, layers[i].previous_lengths, "layers[i].previous_lengths");
    cuda_impl::require_device_pointer(dev, layers[i].lengths, "layers[i].lengths");
  }
  for (int first = 0; first < n_layers; first += cuda_impl::kReleaseLayersPerLaunch) {
    int const here = n_layers - first < cuda_impl::kReleaseLayersPerLaunch ? n_layers - first
                                                                          : cuda_impl::kReleaseLayersPerLaunch;
    cuda_impl::LayerPagesBatch batch{};
    for (int i = 0; i < here; ++i) batch.layer[i] = layers[first + i];
    cuda_impl::launch("released_pages_kernel", cuda_impl::released_pages_kernel<>, dim3(static_cast<unsigned int>(here)),
                      cuda_impl::kReleaseThreads, 0, dev.stream, batch, extents, first, stride, freed, counts);
  }
}

/// \brief The per-layer stride of `released_pages_async`'s output: every entry of a layer's table.
[[nodiscard]] inline std::int64_t released_pages_stride(PagedLayout const& layout, CacheExtents const& extents) {
  return cuda_impl::release_stride(layout, extents);
}

}  // namespace kvcompress
