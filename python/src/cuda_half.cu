/// \file
/// \brief The CUDA path of the Python module for half caches (strided and paged); see cuda_path.cuh.

#include "cuda_path.cuh"

KVC_PYTHON_CUDA_INSTANTIATE(kvcompress::half)
