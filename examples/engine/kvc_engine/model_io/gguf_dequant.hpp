#pragma once
/// \file
/// \brief Dequantisation of GGUF tensors to float: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and the
/// K-quants Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.
///
/// Each block is decoded with the arithmetic of the `gguf` Python package's `gguf.quants.dequantize`
/// (the reference the tests compare with element for element): the f16 scales widened to float, each
/// product and difference one float32 operation in the same order, so that without fused multiply-add
/// the results are bit-identical. Block layouts (bytes, in order):
///
/// | type | elements | layout |
/// |---|---|---|
/// | Q4_0 | 32 | d (f16), 16 bytes of 4-bit q: element j < 16 is the low nibble of byte j, j ≥ 16 the high nibble of byte j − 16; x = d·(q − 8) |
/// | Q4_1 | 32 | d, m (f16), nibbles as Q4_0; x = d·q + m |
/// | Q5_0 | 32 | d, qh (u32: bit j is the fifth bit of element j), nibbles as Q4_0; x = d·(q − 16) |
/// | Q5_1 | 32 | d, m, qh, nibbles; x = d·q + m |
/// | Q8_0 | 32 | d, 32 int8; x = q·d |
/// | Q2_K | 256 | 16 scale bytes (low nibble: scale, high: min), 64 bytes of 2-bit q, d, dmin; x = (d·sc)·q − dmin·mn per 16 elements |
/// | Q3_K | 256 | 32 bytes high-bit mask, 64 bytes of 2-bit q, 12 bytes of 6-bit scales, d; x = (d·(sc − 32))·q, q = low bits − 4 where the mask bit is 0 |
/// | Q4_K | 256 | d, dmin, 12 bytes of 6-bit scales and mins (8 sub-blocks of 32), 128 bytes of nibbles; x = (d·sc)·q − dmin·mn |
/// | Q5_K | 256 | d, dmin, scales, 32 bytes of fifth bits, 128 bytes of nibbles; as Q4_K with q < 32 |
/// | Q6_K | 256 | 128 bytes low nibbles, 64 bytes of 2-bit highs, 16 int8 scales, d; x = (d·sc)·(q − 32) per 16 elements |

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "kvc_engine/model_io/gguf.hpp"
#include "kvcompress/core/dtype.hpp"
#include "kvcompress/core/error.hpp"

namespace kvc_engine {

namespace detail {

inline float f16_at(unsigned char const* p) {
  auto const bits = static_cast<std::uint16_t>(p[0] | (p[1] << 8));
  return static_cast<float>(Eigen::numext::bit_cast<kvcompress::half>(bits));
}

inline float bf16_at(unsigned char const* p) {
  std::uint32_t const bits = static_cast<std::uint32_t>(p[0] | (p[1] << 8)) << 16;
  float f = 0.0F;
  std::memcpy(&f, &bits, 4);
  return f;
}

/// Nibble of element j (< 32) in the 16 bytes of a 32-element block.
inline int nibble32(unsigned char const* qs, int j) { return j < 16 ? (qs[j] & 0x0F) : (qs[j - 16] >> 4); }

// Each decoder turns one block at `b` into its elements at `y`.

inline void block_q4_0(unsigned char const* b, float* y) {  // b: [18], y: [32]
  float const d = f16_at(b);
  for (int j = 0; j < 32; ++j) y[j] = d * static_cast<float>(nibble32(b + 2, j) - 8);
}

inline void block_q4_1(unsigned char const* b, float* y) {  // b: [20], y: [32]
  float const d = f16_at(b), m = f16_at(b + 2);
  for (int j = 0; j < 32; ++j) {
    float const dq = d * static_cast<float>(nibble32(b + 4, j));
    y[j] = dq + m;
  }
}

inline std::uint32_t u32_at(unsigned char const* p) {
  return static_cast<std::uint32_t>(p[0]) | (static_cast<std::uint32_t>(p[1]) << 8) | (static_cast<std::uint32_t>(p[2]) << 16) |
         (static_cast<std::uint32_t>(p[3]) << 24);
}

inline void block_q5_0(unsigned char const* b, float* y) {  // b: [22], y: [32]
  float const d = f16_at(b);
  std::uint32_t const qh = u32_at(b + 2);
  for (int j = 0; j < 32; ++j) {
    int const q = nibble32(b + 6, j) | static_cast<int>(((qh >> j) & 1U) << 4);
    y[j] = d * static_cast<float>(q - 16);
  }
}

inline void block_q5_1(unsigned char const* b, float* y) {  // b: [24], y: [32]
  float const d = f16_at(b), m = f16_at(b + 2);
  std::uint32_t const qh = u32_at(b + 4);
  for (int j = 0; j < 32; ++j) {
    int const q = nibble32(b + 8, j) | static_cast<int>(((qh >> j) & 1U) << 4);
    float const dq = d * static_cast<float>(q);
    y[j] = dq + m;
  }
}

inline void block_q8_0(unsigned char const* b, float* y) {  // b: [34], y: [32]
  float const d = f16_at(b);
  for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(static_cast<std::int8_t>(b[2 + j])) * d;
}

inline void block_q2_k(unsigned char const* b, float* y) {  // b: [84], y: [256]
  unsigned char const* scales = b;   // [16]
  unsigned char const* qs = b + 16;  // [64]
  float const d = f16_at(b + 80), dmin = f16_at(b + 82);
  for (int e = 0; e < 256; ++e) {
    int const g = e / 16, j = e / 32, l = e % 32;
    float const dl = d * static_cast<float>(scales[g] & 0x0F);
    float const ml = dmin * static_cast<float>(scales[g] >> 4);
    int const q = (qs[(j / 4) * 32 + l] >> (2 * (j % 4))) & 3;
    float const dq = dl * static_cast<float>(q);
    y[e] = dq - ml;
  }
}

inline void block_q3_k(unsigned char const* b, float* y) {  // b: [110], y: [256]
  unsigned char const* hmask = b;    // [32]
  unsigned char const* qs = b + 32;  // [64]
  unsigned char const* sc = b + 96;  // [12]
  float const d = f16_at(b + 108);
  float dl[16];
  for (int k = 0; k < 16; ++k) {
    int const low = k < 8 ? (sc[k] & 0x0F) : (sc[k - 8] >> 4);
    int const high = (sc[8 + k % 4] >> (2 * (k / 4))) & 3;
    dl[k] = d * static_cast<float>((low | (high << 4)) - 32);
  }
  for (int e = 0; e < 256; ++e) {
    int const j = e / 32, l = e % 32;
    int const low = (qs[(j / 4) * 32 + l] >> (2 * (j % 4))) & 3;
    int const hbit = (hmask[l] >> j) & 1;
    y[e] = dl[e / 16] * static_cast<float>(low - (hbit != 0 ? 0 : 4));
  }
}

/// The 8 six-bit scales and mins of a Q4_K / Q5_K block.
inline void k_scale_min(unsigned char const* s, int* sc, int* mn) {  // s: [12], sc, mn: [8]
  for (int j = 0; j < 4; ++j) {
    sc[j] = s[j] & 0x3F;
    mn[j] = s[4 + j] & 0x3F;
    sc[4 + j] = (s[8 + j] & 0x0F) | ((s[j] >> 2) & 0x30);
    mn[4 + j] = (s[8 + j] >> 4) | ((s[4 + j] >> 2) & 0x30);
  }
}

inline void block_q4_5_k(unsigned char const* b, float* y, bool five) {  // b: [144] or [176], y: [256]
  float const d = f16_at(b), dmin = f16_at(b + 2);
  int sc[8], mn[8];
  k_scale_min(b + 4, sc, mn);
  unsigned char const* qh = b + 16;                   // [32] (Q5_K)
  unsigned char const* qs = five ? b + 48 : b + 16;   // [128]
  for (int j = 0; j < 8; ++j) {
    float const ds = d * static_cast<float>(sc[j]);
    float const dm = dmin * static_cast<float>(mn[j]);
    for (int l = 0; l < 32; ++l) {
      int q = (qs[(j / 2) * 32 + l] >> (4 * (j % 2))) & 0x0F;
      if (five) q |= ((qh[l] >> j) & 1) << 4;
      float const dq = ds * static_cast<float>(q);
      y[j * 32 + l] = dq - dm;
    }
  }
}

inline void block_q6_k(unsigned char const* b, float* y) {  // b: [210], y: [256]
  unsigned char const* ql = b;        // [128]
  unsigned char const* qh = b + 128;  // [64]
  auto const* scales = reinterpret_cast<std::int8_t const*>(b + 192);  // [16]
  float const d = f16_at(b + 208);
  for (int e = 0; e < 256; ++e) {
    int const h = e / 128, r = e % 128;
    int const low = (ql[h * 64 + r % 64] >> (4 * (r / 64))) & 0x0F;
    int const high = (qh[h * 32 + r % 32] >> (2 * (r / 32))) & 3;
    float const ds = d * static_cast<float>(scales[e / 16]);
    y[e] = ds * static_cast<float>((low | (high << 4)) - 32);
  }
}

}  // namespace detail

/// True for the types `dequantize` decodes.
inline bool ggml_type_dequantizable(std::uint32_t type) noexcept {
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::kF32: case GgmlType::kF16: case GgmlType::kBF16: case GgmlType::kQ8_0: case GgmlType::kQ4_0:
    case GgmlType::kQ4_1: case GgmlType::kQ5_0: case GgmlType::kQ5_1: case GgmlType::kQ2_K: case GgmlType::kQ3_K:
    case GgmlType::kQ4_K: case GgmlType::kQ5_K: case GgmlType::kQ6_K:
      return true;
    default:
      return false;
  }
}

/// \brief Decodes `n` elements of ggml type `type` from `src` into `dst`. `n` must be a multiple of the
/// type's block; `src` holds n / block_elements · block_bytes bytes (any alignment).
inline void dequantize(std::uint32_t type, unsigned char const* src, std::int64_t n, float* dst) {  // src: [bytes], dst: [n]
  GgmlTypeTraits const tr = ggml_type_traits(type);
  KVC_CHECK(ggml_type_dequantizable(type), "cannot dequantise ggml type " << tr.name << " (" << type
                                               << "); supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K..Q6_K");
  KVC_CHECK(n >= 0 && n % tr.block_elements == 0,
            "dequantise " << tr.name << ": " << n << " elements is not a multiple of the block of " << tr.block_elements);
  std::int64_t const blocks = n / tr.block_elements;
  auto const each = [&](auto&& decode) {
    for (std::int64_t i = 0; i < blocks; ++i) decode(src + i * tr.block_bytes, dst + i * tr.block_elements);
  };
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::kF32:
      if (n != 0) std::memcpy(dst, src, static_cast<std::size_t>(n) * 4);
      break;
    case GgmlType::kF16: each([](unsigned char const* b, float* y) { *y = detail::f16_at(b); }); break;
    case GgmlType::kBF16: each([](unsigned char const* b, float* y) { *y = detail::bf16_at(b); }); break;
    case GgmlType::kQ4_0: each(detail::block_q4_0); break;
    case GgmlType::kQ4_1: each(detail::block_q4_1); break;
    case GgmlType::kQ5_0: each(detail::block_q5_0); break;
    case GgmlType::kQ5_1: each(detail::block_q5_1); break;
    case GgmlType::kQ8_0: each(detail::block_q8_0); break;
    case GgmlType::kQ2_K: each(detail::block_q2_k); break;
    case GgmlType::kQ3_K: each(detail::block_q3_k); break;
    case GgmlType::kQ4_K: each([](unsigned char const* b, float* y) { detail::block_q4_5_k(b, y, false); }); break;
    case GgmlType::kQ5_K: each([](unsigned char const* b, float* y) { detail::block_q4_5_k(b, y, true); }); break;
    case GgmlType::kQ6_K: each(detail::block_q6_k); break;
    default: break;  // excluded by ggml_type_dequantizable above
  }
}

/// \brief A tensor of a GGUF file as float, in C order (outermost dimension first).
inline std::vector<float> dequantize_tensor(GgufFile const& file, GgufTensorInfo const& t) {
  KVC_CHECK(ggml_type_dequantizable(t.type), file.source() << ": tensor '" << detail::printable(t.name) << "' has ggml type "
                                                           << t.traits().name << " (" << t.type
                                                           << "), which the engine cannot dequantise (F32, F16, BF16, Q8_0, "
                                                              "Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)");
  std::vector<float> out(static_cast<std::size_t>(t.numel));
  dequantize(t.type, file.data(t), t.numel, out.data());
  return out;
}

}  // namespace kvc_engine
