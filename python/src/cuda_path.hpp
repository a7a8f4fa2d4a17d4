#pragma once
/// \file
/// \brief The CUDA path of the Python module as the host translation units see it: the presses that
/// have CUDA kernels as one value type, the device workspace a native press reuses, and the calls that
/// the CUDA translation units (`cuda_*.cu`, compiled by nvcc when KVC_PYTHON_CUDA is on) define for
/// every (storage type, layout) pair. It includes no CUDA header, so every host TU can include it;
/// only code compiled with KVC_PYTHON_HAS_CUDA calls the functions declared here.

#include <cstddef>
#include <variant>
#include <vector>

#include "kvcompress/kvcompress.hpp"

namespace kvcompress::python {

/// The (storage type, layout) pairs a Python cache can have; on a CUDA cache every pointer is device memory.
using AnyView = std::variant<KVCacheView<float, StridedLayout>, KVCacheView<half, StridedLayout>,
                             KVCacheView<bfloat16, StridedLayout>, KVCacheView<float, PagedLayout>,
                             KVCacheView<half, PagedLayout>, KVCacheView<bfloat16, PagedLayout>>;

/// The scorer presses with CUDA kernels (`kvcompress/cuda/compress.cuh`), with their parameters.
using CudaScorer = std::variant<ExpectedAttentionPress, ExpectedAttentionStatsPress, KnormPress, StreamingLLMPress,
                                KeyDiffPress, SnapKVPress, TOVAPress>;

/// The Python names of the presses that run on the CUDA device, in `CudaScorer`'s order, then AdaKV
/// (around any of them).
inline constexpr char const* kCudaPressNames[] = {"ExpectedAttentionPress", "ExpectedAttentionStatsPress",
                                                  "KnormPress",             "StreamingLLMPress",
                                                  "KeyDiffPress",           "SnapKVPress",
                                                  "TOVAPress",              "AdaKVPress"};

/// \brief A press the CUDA device runs: a scorer with kernels, alone or inside AdaKV.
struct CudaPress {
  CudaScorer scorer;
  bool adakv = false;
  double alpha_safeguard = 0.0;  // AdaKV's, when `adakv`
};

/// \brief Where a CUDA call runs: the device of the cache's tensors and the caller's stream.
struct CudaCall {
  int device = 0;
  CUstream_st* stream = nullptr;
};

/// \brief Device memory a native press reuses across calls: one buffer per CUDA device, grown when a
/// call needs more, never shrunk, freed with the press. Every call waits for its stream before it
/// returns, so the next call (on any stream) finds the buffer free.
class DeviceWorkspace {
 public:
  DeviceWorkspace() = default;
  DeviceWorkspace(DeviceWorkspace const&) = delete;
  DeviceWorkspace& operator=(DeviceWorkspace const&) = delete;
  ~DeviceWorkspace();

  /// At least `bytes` of memory on CUDA device `device` (the current device), kept for the next call.
  [[nodiscard]] void* reserve(int device, std::size_t bytes);
  /// How many times a buffer was allocated (once per device and larger cache; never per call).
  [[nodiscard]] std::size_t allocations() const noexcept { return allocations_; }
  /// Bytes held on `device` (0 if none).
  [[nodiscard]] std::size_t bytes(int device) const noexcept {
    for (Buffer const& b : buffers_)
      if (b.device == device) return b.bytes;
    return 0;
  }

 private:
  struct Buffer {
    int device = 0;
    void* data = nullptr;  // [bytes] device memory
    std::size_t bytes = 0;
  };
  std::vector<Buffer> buffers_;
  std::size_t allocations_ = 0;
};

/// Throws `kvcompress::Error` unless the CUDA runtime finds device `device` (a machine without a GPU
/// or driver says so here, naming the runtime's answer).
void cuda_require_device(int device);

/// Copies `bytes` of device memory to the host on the call's stream and waits for it.
/// \param host [bytes] \param device_memory [bytes] on CUDA device `call.device`
void cuda_copy_to_host(void* host, void const* device_memory, std::size_t bytes, CudaCall call);

/// Checks, once per cache, that every pointer of a CUDA cache view is memory of CUDA device `device`
/// (the driver's answer, beside DLPack's), and throws `kvcompress::Error` naming the first that is not.
template <class T, class L>
void cuda_check_cache(KVCacheView<T, L> const& cache, int device);

/// The library's `compress_workspace_bytes` on the CUDA device (host arithmetic only).
template <class T, class L>
std::size_t cuda_compress_bytes(CudaPress const& press, Observation<T> const& obs, KVCacheView<T, L> const& cache);

/// The library's `compress` on the CUDA device, with the press's device workspace; waits for the
/// stream and throws `kvcompress::Error` for what the device found (a bad length, a NaN), which left
/// the cache unchanged.
template <class T, class L>
void cuda_compress(CudaPress const& press, Observation<T> const& obs, KVCacheView<T, L> const& cache, CudaCall call,
                   DeviceWorkspace& workspace);

/// The library's `score` on the CUDA device into `scores` [batch, kv_heads, capacity] (device memory;
/// slots past a row's length are not written), then as `cuda_compress`.
template <class T, class L>
void cuda_score(CudaPress const& press, Observation<T> const& obs, KVCacheView<T, L> const& cache, float* scores,
                CudaCall call, DeviceWorkspace& workspace);

}  // namespace kvcompress::python
