#pragma once
/// \file
/// \brief Compiler configuration shared by every header: host/device annotations and the version.

#define KVC_VERSION_MAJOR 0
#define KVC_VERSION_MINOR 1
#define KVC_VERSION_PATCH 0

// Views and layouts are used inside CUDA kernels as well as on the host; without nvcc the
// annotation collapses to `inline` so that the same headers compile in a pure C++ translation unit.
#if defined(__CUDACC__)
#define KVC_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define KVC_HOST_DEVICE inline
#endif
