#pragma once
/// \file
/// \brief UTF-8 checks the tokenizer needs: where a text stops being valid UTF-8 (RFC 3629: no overlong
/// forms, no surrogates, nothing above U+10FFFF), and the length of the character at a position.

#include <cstddef>
#include <string_view>

namespace kvc_engine::detail {

/// Length of a valid UTF-8 sequence starting at `s[i]`, or 0 when the bytes there are not one.
inline std::size_t utf8_sequence_length(std::string_view s, std::size_t i) noexcept {
  auto const byte = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  unsigned char const b0 = byte(i);
  if (b0 < 0x80) return 1;
  std::size_t n = 0;
  unsigned char lo = 0x80;  // bounds of the second byte, narrower for the lead bytes that could be overlong,
  unsigned char hi = 0xBF;  // surrogates or above U+10FFFF
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    n = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    n = 3;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    n = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (s.size() - i < n) return 0;
  if (byte(i + 1) < lo || byte(i + 1) > hi) return 0;
  for (std::size_t k = 2; k < n; ++k) {
    if (byte(i + k) < 0x80 || byte(i + k) > 0xBF) return 0;
  }
  return n;
}

/// Offset of the first byte that does not start a valid UTF-8 sequence; `s.size()` when all is valid.
inline std::size_t first_invalid_utf8(std::string_view s) noexcept {
  std::size_t i = 0;
  while (i < s.size()) {
    std::size_t const n = utf8_sequence_length(s, i);
    if (n == 0) return i;
    i += n;
  }
  return i;
}

}  // namespace kvc_engine::detail
