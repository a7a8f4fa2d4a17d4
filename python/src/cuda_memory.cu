/// \file
/// \brief `DeviceWorkspace` (the device memory a native press reuses across calls), and the device
/// check and the copy to the host with which a cache is checked once when it is made.

#include <cuda_runtime.h>

#include "cuda_path.hpp"
#include "device_scope.cuh"

namespace kvcompress::python {

DeviceWorkspace::~DeviceWorkspace() {
  int previous = 0;
  if (cudaGetDevice(&previous) != cudaSuccess) return;  // no driver left (the process is ending)
  for (Buffer const& b : buffers_) {
    // cudaFree waits for the device's work; errors are not ours to raise from a destructor.
    if (cudaSetDevice(b.device) == cudaSuccess) (void)cudaFree(b.data);
  }
  (void)cudaSetDevice(previous);
}

void* DeviceWorkspace::reserve(int device, std::size_t bytes) {
  Buffer* buffer = nullptr;
  for (Buffer& b : buffers_)
    if (b.device == device) buffer = &b;
  if (buffer == nullptr) buffer = &buffers_.emplace_back(Buffer{device, nullptr, 0});
  if (buffer->bytes < bytes) {
    // The previous call on this buffer has finished: every call waits for its stream before returning.
    if (buffer->data != nullptr) KVC_CUDA_CHECK(cudaFree(buffer->data));
    buffer->data = nullptr;
    buffer->bytes = 0;
    KVC_CUDA_CHECK(cudaMalloc(&buffer->data, bytes));
    buffer->bytes = bytes;
    ++allocations_;
  }
  return buffer->data;
}

void cuda_require_device(int device) {
  int count = 0;
  cudaError_t const pending = cudaPeekAtLastError();
  cudaError_t const e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess && pending == cudaSuccess) (void)cudaGetLastError();  // ours, reported here
  KVC_CHECK(e == cudaSuccess, "the cache is on cuda:" << device << " but the CUDA runtime finds no device ("
                                                      << cudaGetErrorString(e) << ")");
  KVC_CHECK(device < count, "the cache is on cuda:" << device << " but the CUDA runtime finds " << count
                                                    << " device(s)");
}

void cuda_copy_to_host(void* host, void const* device_memory, std::size_t bytes, CudaCall call) {
  DeviceScope const scope(call.device);
  KVC_CUDA_CHECK(cudaMemcpyAsync(host, device_memory, bytes, cudaMemcpyDeviceToHost, call.stream));
  KVC_CUDA_CHECK(cudaStreamSynchronize(call.stream));
}

}  // namespace kvcompress::python
