#pragma once
/// \file
/// \brief The definitions of `cuda_path.hpp`'s calls for one storage type: each `cuda_<type>.cu`
/// includes this file and instantiates them for its type and both layouts, so the three types compile
/// in parallel. Every call is the library's own (`kvcompress/cuda.cuh`) on the press `CudaPress`
/// names; this file only selects the device and routes.

#include <cstddef>
#include <utility>
#include <variant>

#include "cuda_path.hpp"
#include "device_scope.cuh"
#include "kvcompress/cuda.cuh"

namespace kvcompress::python {

namespace cuda_path {

/// Calls f with the library's press that `p` describes: the scorer, or AdaKV around it.
template <class F>
decltype(auto) with_press(CudaPress const& p, F&& f) {
  return std::visit(
      [&](auto const& scorer) -> decltype(auto) {
        using S = std::decay_t<decltype(scorer)>;
        if (p.adakv) return f(AdaKVPress<S>{scorer, p.alpha_safeguard});
        return f(scorer);
      },
      p.scorer);
}

}  // namespace cuda_path

template <class T, class L>
void cuda_check_cache(KVCacheView<T, L> const& cache, int device) {
  DeviceScope const scope(device);
  (void)make_device_cache_view(cuda{}, cache.keys, cache.values, cache.extents, cache.key_layout, cache.value_layout,
                               cache.lengths, cache.positions);
}

template <class T, class L>
std::size_t cuda_compress_bytes(CudaPress const& press, Observation<T> const& obs, KVCacheView<T, L> const& cache) {
  return cuda_path::with_press(press, [&](auto const& p) { return compress_workspace_bytes(cuda{}, p, obs, cache); });
}

template <class T, class L>
void cuda_compress(CudaPress const& press, Observation<T> const& obs, KVCacheView<T, L> const& cache, CudaCall call,
                   DeviceWorkspace& workspace) {
  DeviceScope const scope(call.device);
  cuda const dev{call.stream};
  cuda_path::with_press(press, [&](auto const& p) {
    std::size_t const bytes = compress_workspace_bytes(dev, p, obs, cache);
    void* const memory = workspace.reserve(call.device, bytes);  // [bytes] device memory
    compress(dev, p, obs, cache, Workspace(memory, bytes));
    check_status(dev, memory);
  });
}

template <class T, class L>
void cuda_score(CudaPress const& press, Observation<T> const& obs, KVCacheView<T, L> const& cache, float* scores,
                CudaCall call, DeviceWorkspace& workspace) {
  DeviceScope const scope(call.device);
  cuda const dev{call.stream};
  cuda_path::with_press(press, [&](auto const& p) {
    std::size_t const bytes = score_workspace_bytes(dev, p, obs, cache);
    void* const memory = workspace.reserve(call.device, bytes);  // [bytes] device memory
    score(dev, p, obs, cache, scores, Workspace(memory, bytes));
    check_status(dev, memory);
  });
}

}  // namespace kvcompress::python

/// Instantiates the calls of `cuda_path.hpp` for storage type T and both layouts.
#define KVC_PYTHON_CUDA_INSTANTIATE(T)                                                                               \
  namespace kvcompress::python {                                                                                     \
  template void cuda_check_cache<T, StridedLayout>(KVCacheView<T, StridedLayout> const&, int);                       \
  template void cuda_check_cache<T, PagedLayout>(KVCacheView<T, PagedLayout> const&, int);                           \
  template std::size_t cuda_compress_bytes<T, StridedLayout>(CudaPress const&, Observation<T> const&,                \
                                                             KVCacheView<T, StridedLayout> const&);                  \
  template std::size_t cuda_compress_bytes<T, PagedLayout>(CudaPress const&, Observation<T> const&,                  \
                                                           KVCacheView<T, PagedLayout> const&);                      \
  template void cuda_compress<T, StridedLayout>(CudaPress const&, Observation<T> const&,                             \
                                                KVCacheView<T, StridedLayout> const&, CudaCall, DeviceWorkspace&);   \
  template void cuda_compress<T, PagedLayout>(CudaPress const&, Observation<T> const&,                               \
                                              KVCacheView<T, PagedLayout> const&, CudaCall, DeviceWorkspace&);       \
  template void cuda_score<T, StridedLayout>(CudaPress const&, Observation<T> const&,                                \
                                             KVCacheView<T, StridedLayout> const&, float*, CudaCall,                 \
                                             DeviceWorkspace&);                                                      \
  template void cuda_score<T, PagedLayout>(CudaPress const&, Observation<T> const&, KVCacheView<T, PagedLayout> const&, \
                                           float*, CudaCall, DeviceWorkspace&);                                      \
  }
