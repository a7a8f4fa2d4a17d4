#pragma once
/// \file
/// \brief Umbrella header of the CUDA device (`kvcompress::cuda{stream}`): include it from a
/// translation unit compiled by nvcc. Everything that runs on the host comes with it.

#include "kvcompress/kvcompress.hpp"
#include "kvcompress/cuda/runtime.cuh"
#include "kvcompress/cuda/compress.cuh"
#include "kvcompress/cuda/release.cuh"
