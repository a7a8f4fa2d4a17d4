#pragma once
/// \file
/// \brief `DeviceScope`: a CUDA call of the Python module runs on its tensors' device, and the
/// caller's current device is restored after it.

#include <cuda_runtime.h>

#include "kvcompress/cuda/runtime.cuh"

namespace kvcompress::python {

/// Makes `device` current for its lifetime and restores the caller's device after (the caller may be
/// working on another one).
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    KVC_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) KVC_CUDA_CHECK(cudaSetDevice(device));
  }
  DeviceScope(DeviceScope const&) = delete;
  DeviceScope& operator=(DeviceScope const&) = delete;
  ~DeviceScope() { (void)cudaSetDevice(previous_); }

 private:
  int previous_ = 0;
};

}  // namespace kvcompress::python
