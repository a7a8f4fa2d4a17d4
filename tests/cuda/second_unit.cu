// A second translation unit of the runtime test: it includes the CUDA headers and launches a kernel
// that test_runtime.cu launches too, so the link proves that every header-defined kernel and function
// may appear in several .cu files of one program (templates and inline functions only).
#include "kvcompress/cuda.cuh"

void launch_from_second_unit(kvcompress::cuda_impl::DeviceStatus* status, std::int32_t const* lengths) {
  kvcompress::cuda_impl::check_lengths(kvcompress::cuda{}, lengths, 1, 1, -1, status);
}
