// docs/reliability.md catalogues the bad inputs and names, for each, the test that checks it. This
// keeps the names honest: every reference `file › TEST_CASE › SECTION…` (or an abbreviation the
// document defines) names a test case that exists, by its exact name, in that file under tests/, and
// each section exists inside that test case (or, for a CMakeLists.txt, a CTest it registers); and the
// catalogue holds at least 40 checked rows.
#include <catch2/catch.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

namespace {

namespace fs = std::filesystem;

// This file is tests/cpu/test_catalogue.cpp; CMake compiles it by its absolute path.
fs::path const kTests = fs::path(__FILE__).parent_path().parent_path();
fs::path const kCatalogue = kTests.parent_path() / "docs" / "reliability.md";
std::string const kSep = " \u203a ";  // " › "

std::string read(fs::path const& p) {
  std::ifstream in(p);
  REQUIRE(in.good());
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<std::string> split(std::string const& s, std::string const& sep) {
  std::vector<std::string> out;
  std::size_t start = 0;
  for (std::size_t at; (at = s.find(sep, start)) != std::string::npos; start = at + sep.size()) out.push_back(s.substr(start, at - start));
  out.push_back(s.substr(start));
  return out;
}

std::string trim(std::string s) {
  auto const first = s.find_first_not_of(" \t");
  auto const last = s.find_last_not_of(" \t");
  return first == std::string::npos ? "" : s.substr(first, last - first + 1);
}

/// Why a reference does not resolve, or "" when it does.
std::string resolve(std::string ref, std::map<std::string, std::string> const& abbreviations) {
  if (ref.size() >= 2 && ref.front() == '`' && ref.back() == '`') ref = ref.substr(1, ref.size() - 2);
  std::vector<std::string> parts = split(ref, kSep);
  if (auto const it = abbreviations.find(parts[0]); it != abbreviations.end()) {
    std::vector<std::string> expanded = split(it->second, kSep);
    expanded.insert(expanded.end(), parts.begin() + 1, parts.end());
    parts = expanded;
  }
  if (parts.size() < 2) return "names no test case";
  fs::path const file = kTests / parts[0];
  if (!fs::exists(file)) return "no file tests/" + parts[0];
  std::string const source = read(file);
  // A command-line test, `eval/CMakeLists.txt › eval.empty_ratios`: CTest's name is the prefix and the
  // first argument of the registering call, `kvc_eval_test(empty_ratios …`.
  if (file.filename() == "CMakeLists.txt") {
    std::size_t const dot = parts[1].find('.');
    if (parts.size() != 2 || dot == std::string::npos) return "names no CTest (prefix.name) in " + parts[0];
    std::string const name = parts[1].substr(dot + 1);
    if (source.find("add_test(NAME " + parts[1].substr(0, dot) + ".${name}") == std::string::npos)
      return "no test prefix " + parts[1].substr(0, dot) + " in " + parts[0];
    for (char const* after : {" ", "\n"})
      if (source.find("(" + name + after) != std::string::npos) return "";
    return "no test " + parts[1] + " registered in " + parts[0];
  }
  // A pytest test, `python/test_api.py › test_bad_inputs_raise_the_library_message`: a function of that name.
  if (file.extension() == ".py") {
    if (parts.size() != 2) return "names no pytest function (file › function) in " + parts[0];
    return source.find("def " + parts[1] + "(") != std::string::npos ? "" : "no function " + parts[1] + " in " + parts[0];
  }
  std::size_t const begin = source.find("TEST_CASE(\"" + parts[1] + "\"");
  if (begin == std::string::npos) return "no TEST_CASE \"" + parts[1] + "\" in " + parts[0];
  std::size_t const end = source.find("TEST_CASE(", begin + 1);
  for (std::size_t i = 2; i < parts.size(); ++i) {
    std::size_t const at = source.find("SECTION(\"" + parts[i] + "\"", begin);
    if (at == std::string::npos || at > end) return "no SECTION \"" + parts[i] + "\" in TEST_CASE \"" + parts[1] + "\"";
  }
  return "";
}

}  // namespace

TEST_CASE("the reliability catalogue names only tests that exist, by their exact names", "[catalogue]") {
  std::string const doc = read(kCatalogue);

  // Abbreviations: "- `name` = `file › test case`" lines.
  std::map<std::string, std::string> abbreviations;
  // Parsed by hand: std::regex trips gcc 12's -Wmaybe-uninitialized inside libstdc++ at -O1 (sanitize preset).
  auto const abbreviation = [](std::string const& line, std::string& name, std::string& target) {
    std::string const head = "- `", mid = "` = `";
    if (line.rfind(head, 0) != 0 || line.size() < head.size() + mid.size() + 2 || line.back() != '`') return false;
    std::size_t const m = line.find(mid, head.size());
    if (m == std::string::npos || m == head.size()) return false;
    name = line.substr(head.size(), m - head.size());
    target = line.substr(m + mid.size(), line.size() - 1 - (m + mid.size()));
    bool const name_ok = std::all_of(name.begin(), name.end(), [](char c) {
      return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
    });
    return name_ok && !target.empty() && target.find('`') == std::string::npos;
  };
  std::istringstream lines(doc);
  std::vector<std::string> all;
  for (std::string line; std::getline(lines, line);) {
    all.push_back(line);
    std::string name, target;
    if (abbreviation(line, name, target)) abbreviations[name] = target;
  }
  REQUIRE(abbreviations.count("rel") == 1);

  // Rows of the tables whose header ends in "| test |".
  int rows = 0;
  bool in_test_table = false;
  for (std::string const& line : all) {
    if (line.rfind("| # |", 0) == 0) {
      in_test_table = line.size() >= 8 && line.compare(line.size() - 8, 8, "| test |") == 0;
      continue;
    }
    if (!in_test_table || line.rfind("| ", 0) != 0 || line.rfind("|---", 0) == 0) continue;
    std::vector<std::string> const cells = split(line.substr(2, line.size() - 4), " | ");
    REQUIRE(cells.size() == 4);
    ++rows;
    for (std::string const& ref : split(cells[3], "; ")) {
      INFO("row " << cells[0] << ": " << trim(ref));
      CHECK(resolve(trim(ref), abbreviations) == "");
    }
  }
  CHECK(rows >= 40);
}

}  // namespace KVC_TEST_TU
