# CUDA for kvcompress: enables the language when nvcc is there (KVC_CUDA=AUTO) or required (ON),
# defines kvcompress::cuda, and the warning flags of the project's own .cu files (kvc_cuda_warnings).
set(KVC_CUDA_ENABLED OFF)
if(NOT KVC_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    # sm_80 (A100) and sm_90a (H100/H200, with its architecture-specific instructions); override with
    # -DCMAKE_CUDA_ARCHITECTURES=... for other GPUs.
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES 80 90a)
    endif()
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(KVC_CUDA_ENABLED ON)
  elseif(KVC_CUDA STREQUAL "ON")
    message(FATAL_ERROR "KVC_CUDA=ON but no CUDA compiler was found (set CMAKE_CUDA_COMPILER)")
  else()
    message(STATUS "kvcompress: no CUDA compiler, building the CPU device only")
  endif()
endif()

if(KVC_CUDA_ENABLED)
  add_library(kvcompress_cuda INTERFACE)
  add_library(kvcompress::cuda ALIAS kvcompress_cuda)
  set_target_properties(kvcompress_cuda PROPERTIES EXPORT_NAME cuda)
  # cuBLAS (part of the toolkit) for the tensor-core paths taken with a CublasSession (blas.cuh).
  target_link_libraries(kvcompress_cuda INTERFACE kvcompress CUDA::cudart CUDA::cublas)
  # std::array in __host__ __device__ layout functions needs relaxed constexpr; Eigen 3.4's
  # defaulted __host__ __device__ members draw diagnostic 20012 from nvcc 12+ (not ours to fix).
  target_compile_options(kvcompress_cuda INTERFACE
    $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr -diag-suppress=20012>)
  install(TARGETS kvcompress_cuda EXPORT kvcompressTargets)

  add_library(kvc_cuda_warnings INTERFACE)
  target_compile_options(kvc_cuda_warnings INTERFACE
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra $<$<BOOL:${KVC_WERROR}>:-Werror=all-warnings>>)
endif()
