#pragma once
/// \file
/// \brief A forward byte copy whose whole 64-byte destination lines are written with non-temporal
/// (streaming) stores. An ordinary store first reads its destination line for ownership, so a copy
/// of cold memory moves three bytes per byte copied; a streaming store writes a whole line without
/// reading it (two bytes per byte), and leaves it out of the caches. Compaction uses it for rows
/// large enough that their destination is cold and will not be read again soon (compact.hpp).
/// AVX-512 and AVX2 are compiled function by function (target attributes) and chosen at run time,
/// as the row kernels are (row_kernels.hpp); the portable path is memmove.

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kvcompress/core/device.hpp"
#include "kvcompress/detail/row_kernels.hpp"

#if KVC_ROW_KERNELS_X86
#define KVC_TARGET_STREAM512 __attribute__((target("avx512f")))
#define KVC_TARGET_STREAM256 __attribute__((target("avx2")))
#endif

namespace kvcompress::detail {

/// The stores a copy on `dev` may stream with: the widest this CPU has, or none (kPortable) when the
/// device asks for the portable path.
[[nodiscard]] inline RowIsa stream_isa(CpuDevice const& dev) noexcept {
  return dev.kernels == CpuKernels::kNative ? cpu_row_isa() : RowIsa::kPortable;
}

#if KVC_ROW_KERNELS_X86

/// Copies `lines` 64-byte lines, each loaded before it is stored. \param dst [lines·64], 64-byte
/// aligned \param src [lines·64]
KVC_TARGET_STREAM512 inline void stream_lines_avx512(std::byte* dst, std::byte const* src, std::size_t lines) noexcept {
  for (std::size_t i = 0; i < lines; ++i) {
    __m512i const x = _mm512_loadu_si512(src + i * 64);
    _mm512_stream_si512(reinterpret_cast<__m512i*>(dst + i * 64), x);
  }
}

/// As stream_lines_avx512, two 32-byte halves per line. \param dst [lines·64], 64-byte aligned
/// \param src [lines·64]
KVC_TARGET_STREAM256 inline void stream_lines_avx2(std::byte* dst, std::byte const* src, std::size_t lines) noexcept {
  for (std::size_t i = 0; i < lines; ++i) {
    __m256i const lo = _mm256_loadu_si256(reinterpret_cast<__m256i const*>(src + i * 64));
    __m256i const hi = _mm256_loadu_si256(reinterpret_cast<__m256i const*>(src + i * 64 + 32));
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + i * 64), lo);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + i * 64 + 32), hi);
  }
}

#undef KVC_TARGET_STREAM512
#undef KVC_TARGET_STREAM256

#endif  // KVC_ROW_KERNELS_X86

/// Copies `bytes` from src to dst in ascending address order: the unaligned head and tail of dst
/// with memmove, the whole 64-byte lines between them with streaming stores (isa kAvx512 or kAvx2),
/// or everything with memmove (kPortable). The caller issues `stream_fence()` before anything else
/// reads dst. Requires dst ≤ src or the two ranges disjoint.
///
/// Why an overlapping forward copy is safe when dst < src: every step (head, each line, tail) loads
/// its source bytes before storing them, and a step that has read src[0, e) stores into dst[o, e)
/// with o < e; since dst < src, dst + e ≤ src + e − 1, so the store ends before src + e, where the
/// bytes not yet read begin. No byte is overwritten before it is read.
/// \param dst [bytes] \param src [bytes]
inline void copy_forward(RowIsa isa, std::byte* dst, std::byte const* src, std::size_t bytes) noexcept {
#if KVC_ROW_KERNELS_X86
  if (isa != RowIsa::kPortable && bytes >= 64) {
    std::size_t const head = (64 - reinterpret_cast<std::uintptr_t>(dst) % 64) % 64;
    std::size_t const lines = (bytes - head) / 64;
    std::memmove(dst, src, head);
    if (isa == RowIsa::kAvx512) stream_lines_avx512(dst + head, src + head, lines);
    else stream_lines_avx2(dst + head, src + head, lines);
    std::size_t const done = head + lines * 64;
    std::memmove(dst + done, src + done, bytes - done);
    return;
  }
#endif
  (void)isa;
  std::memmove(dst, src, bytes);
}

/// Orders the streaming stores of copy_forward before every later store and load, as seen by other
/// threads (streaming stores are weakly ordered). A no-op after the portable path.
inline void stream_fence(RowIsa isa) noexcept {
#if KVC_ROW_KERNELS_X86
  if (isa != RowIsa::kPortable) _mm_sfence();
#endif
  (void)isa;
}

}  // namespace kvcompress::detail
