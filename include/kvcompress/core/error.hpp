#pragma once
/// \file
/// \brief `kvcompress::Error`, the one exception type of the library, and the checking macros.

#include <sstream>
#include <stdexcept>
#include <string>

namespace kvcompress {

/// \brief Thrown for every precondition failure on the host: bad shapes, strides, ratios, missing
/// observation fields, non-finite inputs. The message names the function, the argument and the value.
class Error : public std::runtime_error {
 public:
  Error(char const* function, char const* file, int line, std::string const& message)
      : std::runtime_error(compose(function, file, line, message)), message_(message) {}

  /// \brief The message without the location prefix.
  [[nodiscard]] std::string const& message() const noexcept { return message_; }

 private:
  static std::string compose(char const* function, char const* file, int line,
                             std::string const& message) {
    std::ostringstream os;
    os << "kvcompress: " << function << ": " << message << " [" << file << ":" << line << "]";
    return os.str();
  }

  std::string message_;
};

}  // namespace kvcompress

/// Throws `kvcompress::Error` with a streamed message: `KVC_THROW("ratio must be in [0, 1), got " << r)`.
#define KVC_THROW(stream_expr)                                                  \
  do {                                                                          \
    std::ostringstream kvc_os_;                                                 \
    kvc_os_ << stream_expr;                                                     \
    throw ::kvcompress::Error(__func__, __FILE__, __LINE__, kvc_os_.str());     \
  } while (0)

/// Checks a host precondition; on failure throws with the streamed message.
#define KVC_CHECK(cond, stream_expr) \
  do {                               \
    if (!(cond)) KVC_THROW(stream_expr); \
  } while (0)
