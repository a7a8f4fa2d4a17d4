#pragma once
/// \file
/// \brief DLPack tensors (NumPy, PyTorch, anything nanobind's `nb::ndarray` accepts) as the
/// library's views: storage type, device and rank checks with `kvcompress::Error` messages that
/// name the argument. No data is copied.

#include <array>
#include <cstddef>
#include <utility>
#include <cstdint>
#include <string>
#include <type_traits>

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include "kvcompress/kvcompress.hpp"

namespace kvcompress::python {

namespace nb = nanobind;

/// Any tensor, any device, any dtype: the checks below give the library's messages, not nanobind's
/// "incompatible function arguments".
using Array = nb::ndarray<>;

inline std::string dtype_name(nb::dlpack::dtype t) {
  auto const code = static_cast<nb::dlpack::dtype_code>(t.code);
  std::string kind = code == nb::dlpack::dtype_code::Float    ? "float"
                     : code == nb::dlpack::dtype_code::Bfloat ? "bfloat"
                     : code == nb::dlpack::dtype_code::Int    ? "int"
                     : code == nb::dlpack::dtype_code::UInt   ? "uint"
                     : code == nb::dlpack::dtype_code::Bool   ? "bool"
                                                              : "code" + std::to_string(t.code) + "_";
  return kind + std::to_string(t.bits) + (t.lanes != 1 ? "x" + std::to_string(t.lanes) : "");
}

inline std::string device_name(Array const& a) {
  switch (a.device_type()) {
    case nb::device::cpu::value: return "cpu";
    case nb::device::cuda::value: return "cuda:" + std::to_string(a.device_id());
    default: return "device type " + std::to_string(a.device_type());
  }
}

/// The cache's storage types.
enum class Storage { kF32, kF16, kBF16 };

inline Storage storage_of(Array const& a, char const* what) {
  auto const t = a.dtype();
  if (t == nb::dtype<float>()) return Storage::kF32;
  if (t.lanes == 1 && t.bits == 16 && t.code == static_cast<std::uint8_t>(nb::dlpack::dtype_code::Float))
    return Storage::kF16;
  if (t.lanes == 1 && t.bits == 16 && t.code == static_cast<std::uint8_t>(nb::dlpack::dtype_code::Bfloat))
    return Storage::kBF16;
  KVC_THROW(what << " must be float32, float16 or bfloat16, got " << dtype_name(t));
}

inline char const* storage_name(Storage s) {
  return s == Storage::kF32 ? "float32" : s == Storage::kF16 ? "float16" : "bfloat16";
}

template <class T>
constexpr Storage storage_v = std::is_same_v<T, float> ? Storage::kF32
                              : std::is_same_v<T, half> ? Storage::kF16
                                                        : Storage::kBF16;

/// Whether the module was compiled with its CUDA path (KVC_PYTHON_CUDA).
#ifdef KVC_PYTHON_HAS_CUDA
inline constexpr bool kCudaCompiled = true;
#else
inline constexpr bool kCudaCompiled = false;
#endif

/// \brief Where a cache lives: the host, or CUDA device `cuda_device` (a cache's tensors all share it).
struct Place {
  int cuda_device = -1;  // -1: host memory

  [[nodiscard]] bool host() const noexcept { return cuda_device < 0; }
  [[nodiscard]] std::string name() const { return host() ? "cpu" : "cuda:" + std::to_string(cuda_device); }
};

/// The place of a cache whose keys (or K pool) are `a`: host or CUDA memory; anything else, and a CUDA
/// tensor given to a module compiled without CUDA, throws naming `what`.
inline Place place_of(Array const& a, char const* what) {
  if (a.device_type() == nb::device::cpu::value) return Place{};
  KVC_CHECK(a.device_type() == nb::device::cuda::value,
            what << " is on " << device_name(a) << "; kvcompress compresses host (CPU) and CUDA tensors");
  KVC_CHECK(kCudaCompiled, what << " is on " << device_name(a)
                                << "; this build of kvcompress was compiled without CUDA (KVC_PYTHON_CUDA) and "
                                   "compresses host (CPU) tensors");
  return Place{a.device_id()};
}

/// Throws unless `a` lives in host memory (the CPU path reads it directly).
inline void require_cpu(Array const& a, char const* what) {
  KVC_CHECK(a.device_type() == nb::device::cpu::value,
            what << " is on " << device_name(a) << "; kvcompress reads it on the host (CPU)");
}

/// Throws unless `a` lives where the cache does (`place`).
inline void require_on(Array const& a, Place const& place, char const* what) {
  bool const here = place.host() ? a.device_type() == nb::device::cpu::value
                                 : a.device_type() == nb::device::cuda::value &&
                                       static_cast<int>(a.device_id()) == place.cuda_device;
  KVC_CHECK(here, what << " is on " << device_name(a) << " but the cache is on " << place.name()
                       << " (a call's tensors must share one device)");
}

inline void require_rank(Array const& a, std::size_t rank, char const* what, char const* shape) {
  KVC_CHECK(a.ndim() == rank, what << " must have " << rank << " dimensions " << shape << ", got " << a.ndim());
}

/// Throws unless `a` is a tensor of storage type T where the cache lives; returns its typed data.
template <class T>
T* typed_data(Array const& a, char const* what, Place const& place) {
  require_on(a, place, what);
  Storage const s = storage_of(a, what);
  KVC_CHECK(s == storage_v<T>, what << " is " << storage_name(s) << " but the cache stores " << storage_name(storage_v<T>));
  return static_cast<T*>(a.data());
}

/// Throws unless `a` is a host tensor of storage type T; returns its typed data.
template <class T>
T* typed_data(Array const& a, char const* what) {
  require_cpu(a, what);
  return typed_data<T>(a, what, Place{});
}

/// Throws unless `a` is an int32 / int64 / float32 tensor where the cache lives; returns its data.
template <class I>
I* index_data(Array const& a, char const* what, Place const& place) {
  require_on(a, place, what);
  KVC_CHECK(a.dtype() == nb::dtype<I>(), what << " must be " << dtype_name(nb::dtype<I>()) << ", got " << dtype_name(a.dtype()));
  return static_cast<I*>(a.data());
}

/// Throws unless `a` is a host int32 / int64 / float32 tensor; returns its data.
template <class I>
I* index_data(Array const& a, char const* what) {
  require_cpu(a, what);
  return index_data<I>(a, what, Place{});
}

/// Throws unless `a` is C-contiguous with `count` elements.
inline void require_contiguous(Array const& a, std::int64_t count, char const* what) {
  std::int64_t n = 1, expect = 1;
  for (std::size_t i = a.ndim(); i-- > 0;) {
    KVC_CHECK(a.shape(i) == 1 || a.stride(i) == expect,
              what << " must be contiguous; dimension " << i << " has stride " << a.stride(i) << ", expected " << expect);
    expect *= static_cast<std::int64_t>(a.shape(i));
    n *= static_cast<std::int64_t>(a.shape(i));
  }
  KVC_CHECK(n == count, what << " must hold " << count << " elements, got " << n);
}

/// Throws unless `a` is a C-contiguous host tensor of I with `count` elements.
template <class I>
I* contiguous_data(Array const& a, std::int64_t count, char const* what) {
  I* p = index_data<I>(a, what);
  require_contiguous(a, count, what);
  return p;
}

/// Throws unless `a` is a C-contiguous tensor of I with `count` elements where the cache lives.
template <class I>
I* contiguous_data(Array const& a, std::int64_t count, char const* what, Place const& place) {
  I* p = index_data<I>(a, what, place);
  require_contiguous(a, count, what);
  return p;
}

/// Whether the memory `a` and `b` address overlaps (their first to their last byte).
inline bool overlaps(Array const& a, Array const& b) {
  auto const range = [](Array const& t) {
    auto const* lo = static_cast<std::byte const*>(t.data());
    std::int64_t last = 0;
    for (std::size_t i = 0; i < t.ndim(); ++i)
      if (t.shape(i) > 0) last += (static_cast<std::int64_t>(t.shape(i)) - 1) * t.stride(i);
    return std::pair<std::byte const*, std::byte const*>{lo, lo + (last + 1) * static_cast<std::int64_t>(t.itemsize())};
  };
  if (a.size() == 0 || b.size() == 0) return false;
  auto const [a0, a1] = range(a);
  auto const [b0, b1] = range(b);
  return a0 < b1 && b0 < a1;
}

/// A rank-4 tensor of T as the library's `Tensor4`, through its validating factory (negative
/// strides are rejected there: a view never addresses memory before its first element).
template <class T>
Tensor4<T> tensor4(Array const& a, char const* what, Place const& place) {
  T const* data = typed_data<T>(a, what, place);
  require_rank(a, 4, what, "");
  std::array<std::int64_t, 4> shape{}, strides{};
  for (std::size_t i = 0; i < 4; ++i) {
    shape[i] = static_cast<std::int64_t>(a.shape(i));
    strides[i] = a.stride(i);
  }
  try {
    return make_tensor4(data, shape, strides);
  } catch (Error const& e) {
    throw Error("Observation", __FILE__, __LINE__, std::string(what) + ": " + e.message());
  }
}

/// A rank-4 host tensor of T as the library's `Tensor4`.
template <class T>
Tensor4<T> tensor4(Array const& a, char const* what) {
  require_cpu(a, what);
  return tensor4<T>(a, what, Place{});
}

}  // namespace kvcompress::python
