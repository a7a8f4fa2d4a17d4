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

namespace detail {

/// The checks of `make_tensor4` on a tensor however it was built (an engine may fill in the
/// aggregate itself): positive extents, non-negative strides, element count and largest offset in
/// 64 bits. `what` names the tensor in the message.
template <class T>
void validate_tensor(Tensor4<T> const& t, char const* what) {
  KVC_CHECK(t.data != nullptr, what << " data must not be null");
  std::int64_t count = 1;
  for (int a = 0; a < 4; ++a) {
    KVC_CHECK(t.shape[a] > 0, what << " shape[" << a << "] must be positive, got " << t.shape[a]);
    KVC_CHECK(t.strides[a] >= 0, what << " strides[" << a << "] must be non-negative, got " << t.strides[a]);
    KVC_CHECK(count <= std::numeric_limits<std::int64_t>::max() / t.shape[a],
              what << " element count overflows 64 bits at shape[" << a << "] = " << t.shape[a]);
    count *= t.shape[a];
  }
  std::int64_t span = 0;  // the largest offset, which operator() must be able to form
  for (int a = 0; a < 4; ++a) {
    KVC_CHECK(t.shape[a] == 1 || t.strides[a] <= (std::numeric_limits<std::int64_t>::max() - span) / (t.shape[a] - 1),
              what << " offsets overflow 64 bits at strides[" << a << "] = " << t.strides[a] << " (shape[" << a
                   << "] = " << t.shape[a] << ")");
    span += (t.shape[a] - 1) * t.strides[a];
  }
}

}  // namespace detail

/// \brief A strided rank-4 view. Throws on a null pointer, a non-positive extent, a negative
/// stride, or an element count or offset that overflows 64 bits. (Zero strides are allowed:
/// broadcasting one query head to several is legitimate.)
template <class T>
[[nodiscard]] Tensor4<T> make_tensor4(T const* data, std::array<std::int64_t, 4> shape,
                                      std::array<std::int64_t, 4> strides) {
  static_assert(is_storage_type_v<T>, "tensors hold float, kvcompress::half or kvcompress::bfloat16");
  Tensor4<T> const t{data, shape, strides};
  detail::validate_tensor(t, "tensor");
  return t;
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

namespace detail {

/// The checks of `make_tensor2` on a matrix however it was built; `what` names it.
template <class T>
void validate_matrix(Tensor2<T> const& m, char const* what) {
  KVC_CHECK(m.data != nullptr, what << " data must not be null");
  for (int a = 0; a < 2; ++a) {
    KVC_CHECK(m.shape[a] > 0, what << " shape[" << a << "] must be positive, got " << m.shape[a]);
    KVC_CHECK(m.strides[a] >= 0, what << " strides[" << a << "] must be non-negative, got " << m.strides[a]);
  }
  KVC_CHECK(m.shape[0] <= std::numeric_limits<std::int64_t>::max() / m.shape[1],
            what << " element count overflows 64 bits: " << m.shape[0] << " x " << m.shape[1]);
  std::int64_t span = 0;  // the largest offset, which operator() must be able to form
  for (int a = 0; a < 2; ++a) {
    KVC_CHECK(m.shape[a] == 1 || m.strides[a] <= (std::numeric_limits<std::int64_t>::max() - span) / (m.shape[a] - 1),
              what << " offsets overflow 64 bits at strides[" << a << "] = " << m.strides[a]);
    span += (m.shape[a] - 1) * m.strides[a];
  }
}

}  // namespace detail

/// \brief A strided matrix view; throws on a null pointer, a non-positive extent, a negative stride
/// or an element count or offset that overflows 64 bits.
template <class T>
[[nodiscard]] Tensor2<T> make_tensor2(T const* data, std::array<std::int64_t, 2> shape,
                                      std::array<std::int64_t, 2> strides) {
  static_assert(is_storage_type_v<T>, "tensors hold float, kvcompress::half or kvcompress::bfloat16");
  Tensor2<T> const m{data, shape, strides};
  detail::validate_matrix(m, "matrix");
  return m;
}

/// \brief A contiguous (row-major) matrix view.
template <class T>
[[nodiscard]] Tensor2<T> make_tensor2(T const* data, std::array<std::int64_t, 2> shape) {
  return make_tensor2(data, shape, {shape[1], 1});
}

}  // namespace kvcompress
