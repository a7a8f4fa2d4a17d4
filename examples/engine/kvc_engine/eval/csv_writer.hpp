#pragma once
/// \file
/// \brief `CsvWriter`: rows of fields under a fixed header, written as RFC 4180 CSV (a field holding a
/// comma, a double quote or a line break is quoted, with its quotes doubled), so spreadsheet and pandas
/// readers get the columns back exactly.

#include <cmath>
#include <cstdio>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "kvcompress/core/error.hpp"

namespace kvc_engine {

/// \brief The field as CSV writes it.
[[nodiscard]] inline std::string csv_field(std::string const& s) {
  if (s.find_first_of(",\"\r\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char const ch : s) {
    if (ch == '"') out += '"';
    out += ch;
  }
  return out + '"';
}

/// \brief A number with `digits` significant digits; NaN (a metric that does not apply) as an empty field.
[[nodiscard]] inline std::string csv_number(double x, int digits = 6) {
  if (std::isnan(x)) return {};
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*g", digits, x);
  return buf;
}

class CsvWriter {
 public:
  CsvWriter(std::ostream& out, std::vector<std::string> header) : out_(out), columns_(header.size()) {
    KVC_CHECK(!header.empty(), "a CSV file needs at least one column");
    write(header);
  }

  /// \brief One row; it must have as many fields as the header.
  void row(std::vector<std::string> const& fields) {
    KVC_CHECK(fields.size() == columns_, "a CSV row has " << fields.size() << " fields, the header " << columns_);
    write(fields);
  }

 private:
  void write(std::vector<std::string> const& fields) {
    for (std::size_t i = 0; i < fields.size(); ++i) out_ << (i ? "," : "") << csv_field(fields[i]);
    out_ << "\r\n";  // RFC 4180's line break
  }

  std::ostream& out_;
  std::size_t columns_;
};

}  // namespace kvc_engine
