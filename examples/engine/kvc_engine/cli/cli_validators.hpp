#pragma once
/// \file
/// \brief CLI11 checks for the engine's command lines whose messages name the value in words:
/// CLI11's own `PositiveNumber` says "Value 0 not in range 0.000000 to 1.797e308" (every digit of it).

#include <CLI/CLI.hpp>

#include <cerrno>
#include <cstdlib>
#include <string>

namespace kvc_engine {

/// \brief An integer option's check: at least `min`; `what` is the wording of the bound ("positive").
/// CLI11 prefixes the option's name: "--max-new-tokens: must be a positive integer, got '0'".
inline CLI::Validator integer_at_least(long long min, std::string const& what) {
  return CLI::Validator(
      [min, what](std::string& text) -> std::string {
        char* end = nullptr;
        errno = 0;
        long long const v = std::strtoll(text.c_str(), &end, 10);
        if (text.empty() || *end != '\0' || errno == ERANGE || v < min)
          return "must be a " + what + " integer, got '" + text + "'";
        return "";
      },
      "");
}

}  // namespace kvc_engine
