#pragma once
/// \file
/// \brief `Tensor4` and `Tensor2`: read-only strided views of the activations and weights that an
/// engine hands to a press (queries, attention probabilities, the output projection). Trivially
/// copyable; empty when `data` is null.

#include <array>
#include <cstdint>
#include <limits>

#include "kvcompress/core/config.hpp"
#include "kvcompress/core/dtype.hpp"
#include "kvcompress/core/error.hpp"

namespace kvcompress {

template <class T>
struct Tensor4 {
  T const* data = nullptr;               // addressed by strides over shape
  std::array<std::int64_t, 4> shape{};   // e.g. queries: [batch, q_heads, q_len, head_dim]
  std::array<std::int64_t, 4> strides{}; // elements

  [[nodiscard]] KVC_HOST_DEVICE bool empty() const noexcept { return data == nullptr; }
  [[nodiscard]] KVC_HOST_DEVICE T const& operator()(std::int64_t i, std::int64_t j, std::int64_t k,
                                                    std::int64_t l) const noexcept {
    return data[i * strides[0] + j * strides[1] + k * strides[2] + l * strides[3]];
  }
};

/// \brief A strided rank-4 view. Throws on a null pointer, a non-positive extent, a negative
/// stride, or an element count or offset that overflows 64 bits. (Zero strides are allowed:
/// broadcasting one query head to several is legitimate.)
template <class T>
[[nodiscard]] Tensor4<T> make_tensor4(T const* data, std::array<std::int64_t, 4> shape,
                                      std::array<std::int64_t, 4> strides) {
  static_assert(is_storage_type_v<T>, "tensors hold float, kvcompress::half or kvcompress::bfloat16");
  KVC_CHECK(data != nullptr, "tensor data must not be null");
  std::int64_t count = 1;
  for (int a = 0; a < 4; ++a) {
    KVC_CHECK(shape[a] > 0, "tensor shape[" << a << "] must be positive, got " << shape[a]);
    KVC_CHECK(strides[a] >= 0, "tensor strides[" << a << "] must be non-negative, got " << strides[a]);
    KVC_CHECK(count <= std::numeric_limits<std::int64_t>::max() / shape[a],
              "tensor element count overflows 64 bits at shape[" << a << "] = " << shape[a]);
    count *= shape[a];
  }
  std::int64_t span = 0;  // the largest offset, which operator() must be able to form
  for (int a = 0; a < 4; ++a) {
    KVC_CHECK(shape[a] == 1 || strides[a] <= (std::numeric_limits<std::int64_t>::max() - span) / (shape[a] - 1),
              "tensor offsets overflow 64 bits at strides[" << a << "] = " << strides[a] << " (shape[" << a
                                                            << "] = " << shape[a] << ")");
    span += (shape[a] - 1) * strides[a];
  }
  return Tensor4<T>{data, shape, strides};
}

/// \brief A contiguous (row-major) rank-4 view.
template <class T>
[[nodiscard]] Tensor4<T> make_tensor4(T const* data, std::array<std::int64_t, 4> shape) {
  std::array<std::int64_t, 4> strides{};
  std::int64_t s = 1;
  for (int a = 3; a >= 0; --a) {
    strides[a] = s;
    if (shape[a] > 0 && s <= std::numeric_limits<std::int64_t>::max() / shape[a]) s *= shape[a];
  }
  return make_tensor4(data, shape, strides);
}

/// \brief A read-only strided matrix (a weight such as W_o).
template <class T>
struct Tensor2 {
  T const* data = nullptr;              // addressed by strides over shape
  std::array<std::int64_t, 2> shape{};  // [rows, columns]
  std::array<std::int64_t, 2> strides{};

  [[nodiscard]] KVC_HOST_DEVICE bool empty() const noexcept { return data == nullptr; }
  [[nodiscard]] KVC_HOST_DEVICE T const& operator()(std::int64_t i, std::int64_t j) const noexcept {
    return data[i * strides[0] + j * strides[1]];
  }
};

/// \brief A strided matrix view; throws on a null pointer, a non-positive extent, a negative stride
/// or an element count that overflows 64 bits.
template <class T>
[[nodiscard]] Tensor2<T> make_tensor2(T const* data, std::array<std::int64_t, 2> shape,
                                      std::array<std::int64_t, 2> strides) {
  static_assert(is_storage_type_v<T>, "tensors hold float, kvcompress::half or kvcompress::bfloat16");
  KVC_CHECK(data != nullptr, "matrix data must not be null");
  for (int a = 0; a < 2; ++a) {
    KVC_CHECK(shape[a] > 0, "matrix shape[" << a << "] must be positive, got " << shape[a]);
    KVC_CHECK(strides[a] >= 0, "matrix strides[" << a << "] must be non-negative, got " << strides[a]);
  }
  KVC_CHECK(shape[0] <= std::numeric_limits<std::int64_t>::max() / shape[1],
            "matrix element count overflows 64 bits: " << shape[0] << " x " << shape[1]);
  return Tensor2<T>{data, shape, strides};
}

/// \brief A contiguous (row-major) matrix view.
template <class T>
[[nodiscard]] Tensor2<T> make_tensor2(T const* data, std::array<std::int64_t, 2> shape) {
  return make_tensor2(data, shape, {shape[1], 1});
}

}  // namespace kvcompress
