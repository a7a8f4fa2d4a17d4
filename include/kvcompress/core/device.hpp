#pragma once
/// \file
/// \brief Device tags: `kvcompress::cpu` (Eigen, host threads) and `kvcompress::cuda{stream}`.
/// An operation is chosen by overloading on the tag; the CUDA overloads exist only in the CUDA
/// headers, which require nvcc.

// cudaStream_t is `struct CUstream_st*`; declaring the struct keeps host-only code free of CUDA headers.
struct CUstream_st;

namespace kvcompress {

/// \brief Runs on the host. `num_threads == 0` uses every hardware thread; 1 runs on the calling
/// thread only (no thread is started, nothing is allocated for threading).
struct CpuDevice {
  int num_threads = 0;
};

/// \brief The default CPU device: all hardware threads.
inline constexpr CpuDevice cpu{};

/// \brief Runs on an NVIDIA GPU, on the caller's stream. Usable only from translation units
/// compiled by nvcc that include `kvcompress/cuda.cuh`.
struct cuda {
  CUstream_st* stream = nullptr;
};

template <class Device>
inline constexpr bool is_cpu_device_v = false;
template <>
inline constexpr bool is_cpu_device_v<CpuDevice> = true;

}  // namespace kvcompress
