// kvcompress-eval's outputs: CSV fields as RFC 4180 quotes them, markdown tables, the progress bar and its clock.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "kvc_engine/eval/csv_writer.hpp"
#include "kvc_engine/eval/markdown_table.hpp"
#include "kvc_engine/eval/progress_bar.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using Catch::Matchers::Contains;

TEST_CASE("eval output: CSV quotes fields with commas, quotes and line breaks", "[eval][csv]") {
  CHECK(kvc_engine::csv_field("snapkv") == "snapkv");
  CHECK(kvc_engine::csv_field("a,b") == "\"a,b\"");
  CHECK(kvc_engine::csv_field("say \"hi\"") == "\"say \"\"hi\"\"\"");
  CHECK(kvc_engine::csv_field("two\nlines") == "\"two\nlines\"");
  CHECK(kvc_engine::csv_field("") == "");
}

TEST_CASE("eval output: CSV numbers, NaN as an empty field", "[eval][csv]") {
  CHECK(kvc_engine::csv_number(0.25) == "0.25");
  CHECK(kvc_engine::csv_number(1.0 / 3.0) == "0.333333");
  CHECK(kvc_engine::csv_number(1044864.0, 12) == "1044864");
  CHECK(kvc_engine::csv_number(std::nan("")) == "");
}

TEST_CASE("eval output: a CSV file, header then rows, CRLF line breaks", "[eval][csv]") {
  std::ostringstream out;
  kvc_engine::CsvWriter csv(out, {"press", "ratio", "task"});
  csv.row({"snapkv", "0.5", "niah, single"});
  csv.row({"knorm", "0", ""});
  CHECK(out.str() == "press,ratio,task\r\nsnapkv,0.5,\"niah, single\"\r\nknorm,0,\r\n");
}

TEST_CASE("eval output: a CSV row with the wrong number of fields", "[eval][csv]") {
  std::ostringstream out;
  kvc_engine::CsvWriter csv(out, {"press", "ratio"});
  CHECK_THROWS_WITH(csv.row({"snapkv"}), Contains("a CSV row has 1 fields, the header 2"));
}

TEST_CASE("eval output: a markdown table pads its columns", "[eval][markdown]") {
  kvc_engine::MarkdownTable t({"press", "0.5"});
  t.add_row({"snapkv", "92.0"});
  t.add_row({"tova", "—"});
  CHECK(t.str() ==
        "| press  |  0.5 |\n"
        "|--------|-----:|\n"
        "| snapkv | 92.0 |\n"
        "| tova   |    — |\n");
}

TEST_CASE("eval output: a markdown row with the wrong number of cells", "[eval][markdown]") {
  kvc_engine::MarkdownTable t({"press", "0.5"});
  CHECK_THROWS_WITH(t.add_row({"snapkv", "1", "2"}), Contains("a table row has 3 cells, the header 2"));
}

TEST_CASE("eval output: the progress bar's clock", "[eval][progress]") {
  CHECK(kvc_engine::ProgressBar::clock_time(0.0) == "0:00");
  CHECK(kvc_engine::ProgressBar::clock_time(59.6) == "1:00");
  CHECK(kvc_engine::ProgressBar::clock_time(754.0) == "12:34");
  CHECK(kvc_engine::ProgressBar::clock_time(3723.0) == "1:02:03");
  CHECK(kvc_engine::ProgressBar::clock_time(-5.0) == "0:00");
}

namespace {

/// What a progress bar of `style` writes for `updates` (fraction, note), then finish().
std::string progress_output(kvc_engine::ProgressBar::Style style, std::vector<std::pair<double, std::string>> const& updates) {
  std::FILE* f = std::tmpfile();
  REQUIRE(f != nullptr);
  {
    kvc_engine::ProgressBar bar(f, style, 0.0);
    for (auto const& [fraction, note] : updates) bar.update(fraction, note);
    bar.finish();
  }
  std::rewind(f);
  std::string out;
  for (int c; (c = std::fgetc(f)) != EOF;) out.push_back(static_cast<char>(c));
  std::fclose(f);
  return out;
}

std::vector<std::string> lines_of(std::string const& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

}  // namespace

TEST_CASE("eval output: without a terminal the progress bar prints one line per percent, never a carriage return",
          "[eval][progress]") {
  std::string const out = progress_output(kvc_engine::ProgressBar::Style::kLines,
                                          {{0.0, "a: prefill"}, {0.004, "a: snapkv 0.5"}, {0.5, "b: prefill"},
                                           {0.501, "b: snapkv 0.5"}, {1.0, "done"}});
  CHECK(out.find('\r') == std::string::npos);
  std::vector<std::string> const lines = lines_of(out);
  REQUIRE(lines.size() == 3);  // 0 %, 50 %, 100 %: updates within the same percent print nothing
  CHECK_THAT(lines[0], Contains("[..............................]   0% 0:00, ETA --:--  a: prefill"));
  CHECK_THAT(lines[1], Contains("[###############...............]  50% 0:00, ETA 0:00  b: prefill"));
  CHECK_THAT(lines[2], Contains("[##############################] 100% 0:00, ETA 0:00  done"));
  CHECK(out.back() == '\n');
}

TEST_CASE("eval output: on a terminal the progress bar redraws one line", "[eval][progress]") {
  std::string const out = progress_output(kvc_engine::ProgressBar::Style::kRedraw, {{0.0, "a"}, {0.5, "b"}, {1.0, "done"}});
  CHECK(out.find('\n') == out.size() - 1);  // only finish() ends the line
  CHECK(std::count(out.begin(), out.end(), '\r') == 3);
  CHECK_THAT(out, Contains("\r[##############################] 100% 0:00, ETA 0:00  done"));
}

}  // namespace KVC_TEST_TU
