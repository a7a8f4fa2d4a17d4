#pragma once
/// \file
/// \brief GPT-2's byte-level alphabet: every byte is written as one visible Unicode character, so that a
/// vocabulary of strings covers any byte sequence. Bytes that are printable Latin-1 (`!`…`~`, `¡`…`¬`,
/// `®`…`ÿ`) stand for themselves; the other 68 take the code points U+0100, U+0101, … in byte order
/// (the space 0x20 becomes U+0120 `Ġ`, the newline 0x0A U+010A `Ċ`).

#include <array>
#include <cstdint>
#include <string>

namespace kvc_engine::detail {

/// Whether a byte is one of those that stand for themselves.
constexpr bool byte_is_visible(unsigned b) noexcept {
  return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

/// Code point that stands for each byte.
inline std::array<std::uint32_t, 256> const& byte_to_code_point() {
  static std::array<std::uint32_t, 256> const table = [] {
    std::array<std::uint32_t, 256> t{};
    std::uint32_t next = 0x100;
    for (unsigned b = 0; b < 256; ++b) t[b] = byte_is_visible(b) ? b : next++;
    return t;
  }();
  return table;
}

/// UTF-8 of a code point below U+0800 (all the alphabet needs).
inline std::string utf8_of_small_code_point(std::uint32_t cp) {
  if (cp < 0x80) return std::string(1, static_cast<char>(cp));
  return {static_cast<char>(0xC0 | (cp >> 6)), static_cast<char>(0x80 | (cp & 0x3F))};
}

/// The alphabet's character for each byte, as UTF-8.
inline std::array<std::string, 256> const& byte_to_symbol() {
  static std::array<std::string, 256> const table = [] {
    std::array<std::string, 256> t;
    for (unsigned b = 0; b < 256; ++b) t[b] = utf8_of_small_code_point(byte_to_code_point()[b]);
    return t;
  }();
  return table;
}

/// The byte each alphabet code point stands for; -1 for code points outside the alphabet (index < 0x200).
inline std::array<std::int16_t, 0x200> const& code_point_to_byte() {
  static std::array<std::int16_t, 0x200> const table = [] {
    std::array<std::int16_t, 0x200> t{};
    t.fill(-1);
    for (unsigned b = 0; b < 256; ++b) t[byte_to_code_point()[b]] = static_cast<std::int16_t>(b);
    return t;
  }();
  return table;
}

}  // namespace kvc_engine::detail
