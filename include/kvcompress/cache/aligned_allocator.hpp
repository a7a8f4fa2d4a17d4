#pragma once
/// \file
/// \brief `AlignedAllocator`: a standard allocator whose blocks start on a cache line (64 bytes by
/// default), for an engine's K/V buffers. Compaction writes whole 64-byte lines with streaming stores
/// (no read for ownership) only where an entry's lines are whole, which a 64-byte-aligned buffer with
/// entries of a multiple of 64 bytes gives (head_dim 128 of any storage type); any alignment still works.

#include <cstddef>
#include <new>

namespace kvcompress {

/// \brief Allocates through the aligned operator new: `std::vector<float, AlignedAllocator<float>>`.
template <class T, std::size_t Align = 64>
struct AlignedAllocator {
  static_assert(Align >= alignof(T) && (Align & (Align - 1)) == 0, "Align must be a power of two, at least alignof(T)");
  using value_type = T;
  template <class U>
  struct rebind {
    using other = AlignedAllocator<U, Align>;
  };

  AlignedAllocator() noexcept = default;
  template <class U>
  explicit AlignedAllocator(AlignedAllocator<U, Align> const&) noexcept {}

  [[nodiscard]] T* allocate(std::size_t n) {
    if (n > static_cast<std::size_t>(-1) / sizeof(T)) throw std::bad_array_new_length();
    return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t{Align}));
  }
  void deallocate(T* p, std::size_t) noexcept { ::operator delete(p, std::align_val_t{Align}); }

  template <class U>
  bool operator==(AlignedAllocator<U, Align> const&) const noexcept {
    return true;
  }
  template <class U>
  bool operator!=(AlignedAllocator<U, Align> const&) const noexcept {
    return false;
  }
};

}  // namespace kvcompress
