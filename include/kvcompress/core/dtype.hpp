#pragma once
/// \file
/// \brief Storage types. Half and bfloat16 are Eigen's, which are bit-compatible with CUDA's
/// `__half` and `__nv_bfloat16`, so an engine's buffers can be viewed without conversion.

#include <Eigen/Core>

#include <cstdint>
#include <string_view>
#include <type_traits>

namespace kvcompress {

using half = Eigen::half;
using bfloat16 = Eigen::bfloat16;

/// \brief Runtime tag of a storage type, for dispatch and messages.
enum class DType : std::uint8_t { kF32, kF16, kBF16 };

[[nodiscard]] constexpr std::string_view to_string(DType t) noexcept {
  switch (t) {
    case DType::kF32: return "float32";
    case DType::kF16: return "float16";
    case DType::kBF16: return "bfloat16";
  }
  return "unknown";
}

/// \brief True for the storage types the library supports.
template <class T>
inline constexpr bool is_storage_type_v =
    std::is_same_v<T, float> || std::is_same_v<T, half> || std::is_same_v<T, bfloat16>;

template <class T>
[[nodiscard]] constexpr DType dtype_of() noexcept {
  static_assert(is_storage_type_v<std::remove_const_t<T>>,
                "kvcompress stores float, kvcompress::half or kvcompress::bfloat16");
  using U = std::remove_const_t<T>;
  if constexpr (std::is_same_v<U, float>) return DType::kF32;
  else if constexpr (std::is_same_v<U, half>) return DType::kF16;
  else return DType::kBF16;
}

static_assert(sizeof(half) == 2 && sizeof(bfloat16) == 2, "16-bit types must be 2 bytes");

/// \brief Storage → float; all arithmetic accumulates in float.
template <class T>
[[nodiscard]] inline float to_float(T x) noexcept {
  return static_cast<float>(x);
}

/// \brief float → storage (round to nearest even for the 16-bit types).
template <class T>
[[nodiscard]] inline T from_float(float x) noexcept {
  return static_cast<T>(x);
}

}  // namespace kvcompress
