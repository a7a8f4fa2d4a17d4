#pragma once
/// \file
/// \brief The cuBLAS session that the tensor-core paths use: one handle and one workspace, made once
/// by the engine and named by the device tag (`kvcompress::cuda{stream, false, &session}`).
///
/// Why the engine owns them. `cublasCreate` allocates and synchronises, so it cannot run inside a
/// compress call (no allocation, no synchronisation, graph capture). A handle left to pick its own
/// workspace allocates it lazily from a pool on first use of a stream, which breaks the same rules;
/// given a workspace (`cublasSetWorkspace`) it allocates nothing and its GEMMs can be captured in a
/// CUDA graph. So the session takes the engine's device buffer at construction, and every call
/// re-binds the call's stream and that workspace (cuBLAS resets the workspace whenever the stream
/// changes). Both are host-side settings: no driver round trip, no synchronisation.
///
/// One session per stream at a time: a cuBLAS handle (and its workspace) serves one stream; an
/// engine that compresses on two streams at once makes two sessions.
///
///   void* blas_ws;  cudaMalloc(&blas_ws, kvc::CublasSession::kWorkspaceBytes);   // at setup
///   kvc::CublasSession blas(blas_ws, kvc::CublasSession::kWorkspaceBytes);
///   kvc::cuda dev{stream, false, &blas};
///   kvc::compress(dev, press, obs, cache, workspace);  // bf16/half: covariance on tensor cores

#include <cublas_v2.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "kvcompress/core/device.hpp"
#include "kvcompress/core/dtype.hpp"
#include "kvcompress/core/error.hpp"
#include "kvcompress/cuda/runtime.cuh"

namespace kvcompress {

namespace cuda_impl {

/// Throws `kvcompress::Error` naming the failed cuBLAS call and its status.
inline void check_cublas(cublasStatus_t s, char const* what) {
  if (s != CUBLAS_STATUS_SUCCESS) KVC_THROW(what << " failed: " << cublasGetStatusName(s) << ": " << cublasGetStatusString(s));
}

}  // namespace cuda_impl

#define KVC_CUBLAS_CHECK(expr) ::kvcompress::cuda_impl::check_cublas((expr), #expr)

/// \brief A cuBLAS handle bound to a caller-owned device workspace (see the file comment).
class CublasSession {
 public:
  /// cuBLAS's recommended workspace on Hopper (32 MiB); smaller works, with fewer algorithms.
  static constexpr std::size_t kWorkspaceBytes = std::size_t{32} << 20;

  /// \param workspace device memory of `bytes` bytes, alive as long as the session
  CublasSession(void* workspace, std::size_t bytes) : workspace_(workspace), bytes_(bytes) {
    if (bytes > 0) cuda_impl::require_device_pointer(workspace, "CublasSession workspace");
    KVC_CUBLAS_CHECK(cublasCreate(&handle_));
    KVC_CUBLAS_CHECK(cublasSetPointerMode(handle_, CUBLAS_POINTER_MODE_HOST));
  }
  CublasSession(CublasSession const&) = delete;
  CublasSession& operator=(CublasSession const&) = delete;
  ~CublasSession() { (void)cublasDestroy(handle_); }

  /// The handle, bound to `stream` and the session's workspace: what every GEMM of a call uses.
  [[nodiscard]] cublasHandle_t bind(cudaStream_t stream) const {
    KVC_CUBLAS_CHECK(cublasSetStream(handle_, stream));
    KVC_CUBLAS_CHECK(cublasSetWorkspace(handle_, workspace_, bytes_));
    return handle_;
  }

 private:
  cublasHandle_t handle_ = nullptr;
  void* workspace_;
  std::size_t bytes_;
};

namespace cuda_impl {

/// cuBLAS's type for a storage type that tensor cores take (half, bfloat16).
template <class T>
inline constexpr cudaDataType_t blas_type_v = std::is_same_v<T, bfloat16> ? CUDA_R_16BF : CUDA_R_16F;

/// Whether the call may use tensor cores: a session is given and the storage is half or bfloat16
/// (fp32 caches keep the fp32 SIMT kernels, whose precision their tests hold to 1e-4).
template <class T>
[[nodiscard]] bool tensor_cores(cuda const& dev) noexcept {
  return dev.blas != nullptr && (std::is_same_v<T, bfloat16> || std::is_same_v<T, half>);
}

/// One strided-batched GEMM C_i = A_i · B_iᵀ (column-major, cuBLAS's convention) with fp32
/// accumulation and output: its shape, as host arithmetic the CPU suite checks.
struct GemmNT {
  int m, n, k;
  long long lda, ldb, ldc;
  long long stride_a, stride_b, stride_c;
  int batch;
};

/// Runs `g` on `dev.stream` through the session: A, B in `type` (half or bf16), C fp32, alpha and
/// beta on the host. \param a [batch, …] \param b [batch, …] \param c [batch, …]
inline void gemm_nt(cuda const& dev, GemmNT const& g, cudaDataType_t type, void const* a, void const* b, float* c,
                    float alpha, float beta) {
  cublasHandle_t const h = dev.blas->bind(dev.stream);
  KVC_CUBLAS_CHECK(cublasGemmStridedBatchedEx(h, CUBLAS_OP_N, CUBLAS_OP_T, g.m, g.n, g.k, &alpha, a, type,
                                              static_cast<int>(g.lda), g.stride_a, b, type, static_cast<int>(g.ldb),
                                              g.stride_b, &beta, c, CUDA_R_32F, static_cast<int>(g.ldc), g.stride_c,
                                              g.batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

}  // namespace cuda_impl

}  // namespace kvcompress
