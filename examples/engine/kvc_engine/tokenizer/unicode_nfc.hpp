#pragma once
/// \file
/// \brief Unicode normalisation form C (canonical composition), through utf8proc: the normaliser of
/// Qwen2's tokenizer.json, which HF tokenizers applies to text before pre-tokenisation.

#include <utf8proc.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>

#include "kvcompress/core/error.hpp"

namespace kvc_engine::detail {

/// \brief NFC of `text`, which must be valid UTF-8 (the tokenizer checks first).
inline std::string nfc(std::string_view text) {
  utf8proc_uint8_t* out = nullptr;
  utf8proc_ssize_t const n =
      utf8proc_map(reinterpret_cast<utf8proc_uint8_t const*>(text.data()), static_cast<utf8proc_ssize_t>(text.size()),
                   &out, static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  std::unique_ptr<utf8proc_uint8_t, void (*)(void*)> const owned(out, std::free);
  KVC_CHECK(n >= 0, "NFC normalisation of a text of " << text.size() << " bytes failed: " << utf8proc_errmsg(n));
  return std::string(reinterpret_cast<char const*>(out), static_cast<std::size_t>(n));
}

}  // namespace kvc_engine::detail
