// kvcompress-eval's outputs: CSV fields as RFC 4180 quotes them, markdown tables, the progress clock.
#include <catch2/catch.hpp>

#include <cmath>
#include <sstream>
#include <string>

#include "kvc_engine/csv_writer.hpp"
#include "kvc_engine/markdown_table.hpp"
#include "kvc_engine/progress_bar.hpp"

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
