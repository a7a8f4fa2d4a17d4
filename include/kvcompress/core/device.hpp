#pragma once
/// \file
/// \brief Device tags: `kvcompress::cpu` (Eigen, host threads) and `kvcompress::cuda{stream}`.
/// An operation is chosen by overloading on the tag; the CUDA overloads exist only in the CUDA
/// headers, which require nvcc.

// cudaStream_t is `struct CUstream_st*`; declaring the struct keeps host-only code free of CUDA headers.
struct CUstream_st;

namespace kvcompress {

class CublasSession;  // kvcompress/cuda/blas.cuh
class ThreadPool;     // kvcompress/cpu/thread_pool.hpp

/// \brief Which CPU kernels a call may run.
enum class CpuKernels : unsigned char {
  kNative,    ///< the instruction-set kernels this CPU has (checked at run time), else the portable path
  kPortable,  ///< the portable path only (Eigen, as compiled): to compare the two paths, or to rule one out
};

/// \brief Runs on the host. `num_threads == 0` uses every hardware thread; 1 runs on the calling
/// thread only (no thread is started, nothing is allocated for threading); negative is an Error.
/// `kernels`: see `CpuKernels` (the native kernels: bfloat16 caches score Expected Attention's
/// covariance term with AVX512_BF16 dot products, and the memory-bound per-key loops run on AVX-512 or
/// AVX2; docs/architecture.md, "CPU kernels").
///
/// `pool`: a caller's `ThreadPool` (not owned; it must outlive the call). With one, every parallel loop
/// of the call runs on the pool's threads and `num_threads` is ignored (the pool's size counts,
/// for the workspace too); without one (the default), each loop starts and joins `num_threads`
/// threads of its own.
struct CpuDevice {
  int num_threads = 0;
  CpuKernels kernels = CpuKernels::kNative;
  ThreadPool* pool = nullptr;
};

/// \brief The default CPU device: all hardware threads.
inline constexpr CpuDevice cpu{};

/// \brief Runs on an NVIDIA GPU, on the caller's stream. Usable only from translation units
/// compiled by nvcc that include `kvcompress/cuda.cuh`.
///
/// `check_pointers`: whether every call asks the driver that each pointer it is given (cache,
/// lengths, activations, workspace) is device memory. Off by default, so that a call makes no
/// driver query: a cache view made by `make_device_cache_view` has had its pointers checked once,
/// and the engine's activations and workspace are its own device buffers. Turn it on while
/// integrating or debugging (`kvcompress::cuda{stream, true}`): a host pointer then throws
/// `kvcompress::Error` naming the argument instead of faulting in a kernel.
///
/// `blas`: a cuBLAS session (handle and workspace, made once by the engine; see
/// `kvcompress/cuda/blas.cuh`). With one, half and bfloat16 caches run their GEMM-shaped work on
/// tensor cores through cuBLAS; without one (the default) every kernel is the library's own fp32 SIMT.
struct cuda {
  CUstream_st* stream = nullptr;
  bool check_pointers = false;
  CublasSession const* blas = nullptr;
};

template <class Device>
inline constexpr bool is_cpu_device_v = false;
template <>
inline constexpr bool is_cpu_device_v<CpuDevice> = true;

}  // namespace kvcompress
