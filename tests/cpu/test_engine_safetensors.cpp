// The engine's safetensors reader: values of every float dtype round-trip; every malformed file is a
// kvcompress::Error that says what is wrong.
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "kvc_engine/model_io/safetensors.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using kvc_engine::SafetensorsFile;
using Catch::Matchers::Contains;

namespace {

/// A file: 8-byte little-endian length (`declared`, default the header's size), the header, the data.
std::vector<unsigned char> file_bytes(std::string const& header, std::vector<unsigned char> const& data,
                                      std::uint64_t declared = UINT64_MAX) {
  std::uint64_t const len = declared == UINT64_MAX ? header.size() : declared;
  std::vector<unsigned char> out(8);
  for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<unsigned char>(len >> (8 * i));
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

SafetensorsFile parse(std::string const& header, std::size_t data_bytes) {
  return SafetensorsFile(file_bytes(header, std::vector<unsigned char>(data_bytes, 0)), "test.safetensors");
}

void append_le(std::vector<unsigned char>& out, std::uint32_t bits, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<unsigned char>(bits >> (8 * i)));
}

}  // namespace

TEST_CASE("safetensors: F32, F16 and BF16 tensors are read exactly, with metadata", "[engine][safetensors]") {
  std::vector<unsigned char> data;
  float const f32[3] = {1.5f, -2.25f, 3.0e-3f};
  for (float v : f32) {
    std::uint32_t bits;
    std::memcpy(&bits, &v, 4);
    append_le(data, bits, 4);
  }
  append_le(data, 0x3C00, 2);  // F16 1.0
  append_le(data, 0xC500, 2);  // F16 -5.0
  append_le(data, 0x3FC0, 2);  // BF16 1.5
  append_le(data, 0xC020, 2);  // BF16 -2.5
  std::string const header =
      R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},)"
      R"("h":{"dtype":"F16","shape":[1,2],"data_offsets":[12,16]},"b":{"dtype":"BF16","shape":[2],"data_offsets":[16,20]}})";
  SafetensorsFile const f(file_bytes(header, data), "ok.safetensors");
  CHECK(f.names() == std::vector<std::string>{"a", "b", "h"});
  CHECK(f.metadata().at("format") == "pt");
  CHECK(f.info("h").shape == std::vector<std::int64_t>{1, 2});
  CHECK(f.read_as_float("a") == std::vector<float>{1.5f, -2.25f, 3.0e-3f});
  CHECK(f.read_as_float("h") == std::vector<float>{1.0f, -5.0f});
  CHECK(f.read_as_float("b") == std::vector<float>{1.5f, -2.5f});
  REQUIRE_THROWS_WITH(f.info("missing"), Contains("has no tensor 'missing'"));
}

TEST_CASE("safetensors: a file shorter than the length field", "[engine][safetensors]") {
  REQUIRE_THROWS_WITH(SafetensorsFile(std::vector<unsigned char>(5, 0), "t"), Contains("shorter than the 8-byte header length"));
}

TEST_CASE("safetensors: a truncated file (header length past the end)", "[engine][safetensors]") {
  std::string const header = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  auto bytes = file_bytes(header, std::vector<unsigned char>(4, 0));
  bytes.resize(20);
  REQUIRE_THROWS_WITH(SafetensorsFile(bytes, "t"), Contains("exceeds the 12 bytes that follow the length field"));
}

TEST_CASE("safetensors: a header length above the format's 100 MB limit", "[engine][safetensors]") {
  REQUIRE_THROWS_WITH(SafetensorsFile(file_bytes("{}", {}, 100'000'001), "t"), Contains("exceeds the format's limit"));
  REQUIRE_THROWS_WITH(SafetensorsFile(file_bytes("{}", {}, UINT64_MAX - 1), "t"), Contains("exceeds the format's limit"));
}

TEST_CASE("safetensors: a truncated data section (offsets out of range)", "[engine][safetensors]") {
  REQUIRE_THROWS_WITH(parse(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 12),
                      Contains("reach past the 12-byte data section"));
}

TEST_CASE("safetensors: offsets out of range", "[engine][safetensors]") {
  REQUIRE_THROWS_WITH(parse(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[1000,1004]}})", 4),
                      Contains("tensor 'a': data_offsets [1000, 1004] reach past the 4-byte data section"));
}

TEST_CASE("safetensors: overlapping tensors", "[engine][safetensors]") {
  REQUIRE_THROWS_WITH(parse(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                            R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                            12),
                      Contains("tensor 'b' [4, 12) overlaps tensor 'a' [0, 8)"));
}

TEST_CASE("safetensors: bytes no tensor covers (a hole, trailing data)", "[engine][safetensors]") {
  REQUIRE_THROWS_WITH(parse(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8),
                      Contains("bytes [0, 4) of the data section belong to no tensor"));
  REQUIRE_THROWS_WITH(parse(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 6),
                      Contains("bytes [4, 6) of the data section belong to no tensor"));
}

TEST_CASE("safetensors: an unknown dtype", "[engine][safetensors]") {
  REQUIRE_THROWS_WITH(parse(R"({"a":{"dtype":"F12","shape":[1],"data_offsets":[0,4]}})", 4),
                      Contains("tensor 'a' has an unknown dtype '\"F12\"'"));
}

TEST_CASE("safetensors: a shape that does not match the byte range", "[engine][safetensors]") {
  REQUIRE_THROWS_WITH(parse(R"({"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})", 20),
                      Contains("shape [2,3] of F32 needs 24 bytes, data_offsets [0, 20] hold 20"));
}

TEST_CASE("safetensors: a shape whose byte count overflows 64 bits", "[engine][safetensors]") {
  REQUIRE_THROWS_WITH(parse(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}})", 4),
                      Contains("overflows 64 bits"));
}

TEST_CASE("safetensors: negative or fractional shape entries", "[engine][safetensors]") {
  REQUIRE_THROWS_WITH(parse(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4),
                      Contains("shape entries must be non-negative integers, got -1"));
  REQUIRE_THROWS_WITH(parse(R"({"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", 4),
                      Contains("shape entries must be non-negative integers, got 1.5"));
}

TEST_CASE("safetensors: data_offsets that are not two ordered integers", "[engine][safetensors]") {
  REQUIRE_THROWS_WITH(parse(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}})", 4),
                      Contains("data_offsets [4, 0] begin after they end"));
  REQUIRE_THROWS_WITH(parse(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", 4),
                      Contains("data_offsets must be two non-negative integers, got [0]"));
  REQUIRE_THROWS_WITH(parse(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":"0-4"}})", 4),
                      Contains("data_offsets must be two non-negative integers"));
}

TEST_CASE("safetensors: a header that is not JSON", "[engine][safetensors]") {
  REQUIRE_THROWS_WITH(parse(R"({"a":{"dtype":"F32",)", 0), Contains("the header is not valid JSON"));
}

TEST_CASE("safetensors: a header that is not an object", "[engine][safetensors]") {
  REQUIRE_THROWS_WITH(parse("[1,2]", 0), Contains("the header must be a JSON object, got [1,2]"));
  REQUIRE_THROWS_WITH(parse(R"({"a":[1]})", 0), Contains("tensor 'a' must be an object, got [1]"));
}

TEST_CASE("safetensors: a header nested deeper than any valid one", "[engine][safetensors]") {
  std::string deep = R"({"a":)" + std::string(10000, '[') + std::string(10000, ']') + "}";
  REQUIRE_THROWS_WITH(parse(deep, 0), Contains("nests deeper than 3 levels"));
}

TEST_CASE("safetensors: a tensor entry with a missing or an unknown field", "[engine][safetensors]") {
  REQUIRE_THROWS_WITH(parse(R"({"a":{"shape":[1],"data_offsets":[0,4]}})", 4), Contains("tensor 'a' has no 'dtype'"));
  REQUIRE_THROWS_WITH(parse(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"scale":2}})", 4),
                      Contains("tensor 'a' has an unknown field 'scale'"));
}

TEST_CASE("safetensors: metadata that is not an object of strings", "[engine][safetensors]") {
  REQUIRE_THROWS_WITH(parse(R"({"__metadata__":{"format":1}})", 0), Contains("__metadata__['format'] must be a string, got 1"));
}

TEST_CASE("safetensors: a valid dtype that cannot be read as float", "[engine][safetensors]") {
  SafetensorsFile const f = parse(R"({"i":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}})", 16);
  CHECK(f.info("i").item_bytes == 8);
  REQUIRE_THROWS_WITH(f.read_as_float("i"), Contains("tensor 'i' has dtype I64; F32, F16 and BF16 can be read as float"));
}

TEST_CASE("safetensors: a file that does not exist", "[engine][safetensors]") {
  REQUIRE_THROWS_WITH(SafetensorsFile::open("/nonexistent/model.safetensors"),
                      Contains("cannot open safetensors file /nonexistent/model.safetensors"));
}

}  // namespace KVC_TEST_TU
