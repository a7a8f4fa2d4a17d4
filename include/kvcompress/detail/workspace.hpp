#pragma once
/// \file
/// \brief `Workspace`: a bump allocator over caller-supplied scratch memory (CUB-style two-phase
/// temporary storage). Operations query their size first, then carve from the same arena.

#include <cstddef>
#include <cstdint>

#include "kvcompress/core/error.hpp"

namespace kvcompress {

namespace detail {

/// No scratch buffer, and no sum of a few of them, can reach 2^56 bytes (64 PiB): a size above it
/// comes from parameters no machine can serve, and the limit keeps every later sum from wrapping.
inline constexpr std::size_t kMaxScratchBytes = std::size_t{1} << 56;

/// The number of objects of a scratch buffer, Π factors, each a non-negative size (extents, head
/// counts, threads, ...). Throws, naming the factors, when the product would pass 2^56: every
/// workspace size is computed through this or `Workspace::bytes_for`, so none can overflow.
template <class... Factors>
std::size_t size_product(Factors... factors) {
  std::int64_t const fs[] = {static_cast<std::int64_t>(factors)...};
  std::size_t n = 1;
  bool fits = true;
  for (std::int64_t f : fs) {
    KVC_CHECK(f >= 0, "a scratch size factor is negative: " << f);
    if (f != 0 && n > kMaxScratchBytes / static_cast<std::size_t>(f)) fits = false;
    else n *= static_cast<std::size_t>(f);
  }
  if (fits) return n;
  std::ostringstream os;
  char const* sep = "";
  for (std::int64_t f : fs) {
    os << sep << f;
    sep = " x ";
  }
  KVC_THROW("scratch of " << os.str() << " objects exceeds 2^56 (no machine holds it): check the extents, "
                          << "head counts and press parameters that size it");
}

/// Σ of object counts from `size_product` (each at most 2^56, so the sum fits), as a factor of
/// another `size_product`: one buffer that holds several parts per thread.
template <class... Parts>
std::int64_t size_sum(Parts... parts) noexcept {
  return static_cast<std::int64_t>((std::size_t{0} + ... + static_cast<std::size_t>(parts)));
}

/// Σ of scratch byte counts, each at most 2^56 (from `bytes_for`), so the sum cannot wrap.
template <class... Parts>
std::size_t sum_bytes(Parts... parts) noexcept {
  return (std::size_t{0} + ... + static_cast<std::size_t>(parts));
}

}  // namespace detail

/// \brief Non-owning scratch arena. `take<U>(n)` returns 64-byte-aligned storage for n objects
/// (uninitialised) or throws `kvcompress::Error` when the arena is too small.
class Workspace {
 public:
  static constexpr std::size_t kAlignment = 64;

  Workspace() = default;
  Workspace(void* data, std::size_t bytes) noexcept : data_(static_cast<std::byte*>(data)), bytes_(bytes) {}

  /// Bytes that `take<U>(n)` consumes at most, alignment included; sums of these size an arena.
  /// Throws when n objects pass 2^56 bytes (`detail::kMaxScratchBytes`).
  template <class U>
  [[nodiscard]] static std::size_t bytes_for(std::size_t n) {
    KVC_CHECK(n <= detail::kMaxScratchBytes / sizeof(U),
              "scratch of " << n << " objects of " << sizeof(U) << " bytes exceeds 2^56 bytes (no machine holds it)");
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
