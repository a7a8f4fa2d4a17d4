// The data files some presses of the engine's registry read: LU-KV's budget curves (.npy, checked against
// the float32 copy numpy wrote of the same curve) and DuoAttention's pattern folders; and their errors.
#include <catch2/catch.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "golden_fixture.hpp"
#include "kvc_engine/model_io/npy.hpp"
#include "kvc_engine/compression/press_registry.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

namespace fs = std::filesystem;

namespace {

std::string const kMore = std::string(KVC_GOLDEN_DIR) + "/more_presses/llama_d64_n131_b2";

/// A file in a fresh temporary folder holding `bytes`.
std::string temp_file(std::string const& name, std::string const& bytes) {
  fs::path const dir = fs::temp_directory_path() / "kvc_press_files_test";
  fs::create_directories(dir);
  std::ofstream(dir / name, std::ios::binary) << bytes;
  return (dir / name).string();
}

/// A version-1 .npy file with the given header dict and data bytes.
std::string npy_bytes(std::string const& dict, std::string const& data) {
  std::string header = dict;
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::string out = std::string("\x93NUMPY\x01\x00", 8);
  out += static_cast<char>(header.size() & 0xff);
  out += static_cast<char>(header.size() >> 8);
  return out + header + data;
}

}  // namespace

TEST_CASE("read_npy reads numpy's float64 budget curve as the float32 numpy rounds it to", "[engine][npy]") {
  auto const a = kvc_engine::read_npy(kMore + "/mw_lukv_budget_curve.npy");
  auto const want = kvc_test::load_tensor<float>(kMore, {{"file", "mw_lukv_budget_curve.bin"}, {"dtype", "float32"},
                                                         {"shape", {99, 2, 2}}});
  CHECK(a.shape == std::vector<std::int64_t>{99, 2, 2});
  CHECK(a.data == want.data);
}

TEST_CASE("read_npy rejects what it cannot read", "[engine][npy][errors]") {
  SECTION("a missing file or another format") {
    REQUIRE_THROWS_WITH(kvc_engine::read_npy("/nonexistent/curve.npy"), Catch::Contains("cannot open .npy file /nonexistent/curve.npy"));
    REQUIRE_THROWS_WITH(kvc_engine::read_npy(temp_file("not.npy", "PK\x03\x04 a zip file")),
                        Catch::Contains("is not a .npy file"));
  }
  SECTION("a dtype other than float32 or float64, Fortran order") {
    REQUIRE_THROWS_WITH(kvc_engine::read_npy(temp_file("i4.npy", npy_bytes("{'descr': '<i4', 'fortran_order': False, 'shape': (1,), }", "abcd"))),
                        Catch::Contains(".npy dtype '<i4' is not supported"));
    REQUIRE_THROWS_WITH(kvc_engine::read_npy(temp_file("f.npy", npy_bytes("{'descr': '<f4', 'fortran_order': True, 'shape': (1,), }", "abcd"))),
                        Catch::Contains("a Fortran-order .npy array is not supported"));
  }
  SECTION("data shorter than the shape") {
    REQUIRE_THROWS_WITH(kvc_engine::read_npy(temp_file("short.npy", npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", "abcd"))),
                        Catch::Contains("data holds 4 bytes, shape (2, 3) needs 24"));
  }
}

TEST_CASE("a DuoAttention pattern folder: sink, recent and clipped head scores", "[engine][duo]") {
  auto const p = kvc_engine::read_duo_pattern(std::string(KVC_GOLDEN_DIR) + "/../eval/duo_pattern");
  CHECK(p.sink_size == 4);
  CHECK(p.recent_size == 16);
  CHECK(p.layers == 2);
  CHECK(p.kv_heads == 2);
  CHECK(p.scores == std::vector<float>{0.9f, 0.2f, 0.6f, 0.4f});
}

TEST_CASE("the registry's lukv and duo_attention reject missing or malformed data", "[engine][duo][errors]") {
  SECTION("no data file given") {
    REQUIRE_THROWS_WITH(kvc_engine::make_compressor("lukv", 0.5),
                        Catch::Contains("press lukv needs LU-KV's budget curve for the model and ExpectedAttention: --lukv-curve FILE.npy"));
    REQUIRE_THROWS_WITH(kvc_engine::make_compressor("duo_attention", 0.5),
                        Catch::Contains("press duo_attention needs a DuoAttention pattern folder for the model: --duo-pattern DIR"));
  }
  SECTION("a pattern whose rows differ in length, or without sink_size") {
    fs::path const dir = fs::temp_directory_path() / "kvc_duo_pattern_test";
    fs::create_directories(dir);
    std::ofstream(dir / "config.json") << R"({"sink_size": 4, "recent_size": 8})";
    std::ofstream(dir / "full_attention_heads.tsv") << "0.5\t0.1\n0.3\n";
    REQUIRE_THROWS_WITH(kvc_engine::read_duo_pattern(dir.string()), Catch::Contains("full_attention_heads.tsv line 2 holds 1 values, line 1 2"));
    std::ofstream(dir / "config.json") << R"({"recent_size": 8})";
    REQUIRE_THROWS_WITH(kvc_engine::read_duo_pattern(dir.string()), Catch::Contains("config.json: 'sink_size' must be a non-negative integer"));
  }
}

}  // namespace KVC_TEST_TU
