#pragma once
/// \file
/// \brief `Workspace`: a bump allocator over caller-supplied scratch memory (CUB-style two-phase
/// temporary storage). Operations query their size first, then carve from the same arena.

#include <cstddef>
#include <cstdint>

#include "kvcompress/core/error.hpp"

namespace kvcompress {

/// \brief Non-owning scratch arena. `take<U>(n)` returns 64-byte-aligned storage for n objects
/// (uninitialised) or throws `kvcompress::Error` when the arena is too small.
class Workspace {
 public:
  static constexpr std::size_t kAlignment = 64;

  Workspace() = default;
  Workspace(void* data, std::size_t bytes) noexcept : data_(static_cast<std::byte*>(data)), bytes_(bytes) {}

  /// Bytes that `take<U>(n)` consumes at most, alignment included; sums of these size an arena.
  template <class U>
  [[nodiscard]] static constexpr std::size_t bytes_for(std::size_t n) noexcept {
    return (n * sizeof(U) + kAlignment - 1) / kAlignment * kAlignment + kAlignment;
  }

  template <class U>
  [[nodiscard]] U* take(std::size_t n) {
    KVC_CHECK(data_ != nullptr || n == 0, "workspace: no memory given, " << n << " objects of " << sizeof(U)
                                                                          << " bytes needed");
    auto const base = reinterpret_cast<std::uintptr_t>(data_);
    std::size_t const start = ((base + used_ + kAlignment - 1) & ~(kAlignment - 1)) - base;
    // Compared by division so that a huge n cannot wrap the byte count around.
    KVC_CHECK(start <= bytes_ && n <= (bytes_ - start) / sizeof(U),
              "workspace too small: " << bytes_ << " bytes given, " << n << " objects of " << sizeof(U)
                                      << " bytes needed at offset " << start);
    used_ = start + n * sizeof(U);
    return reinterpret_cast<U*>(data_ + start);
  }

  [[nodiscard]] std::size_t used() const noexcept { return used_; }
  [[nodiscard]] std::size_t capacity() const noexcept { return bytes_; }

 private:
  std::byte* data_ = nullptr;
  std::size_t bytes_ = 0;
  std::size_t used_ = 0;
};

}  // namespace kvcompress
