// Inputs on which the engine's readers misbehaved under the fuzz targets fuzz/fuzz_safetensors.cpp and
// fuzz/fuzz_config.cpp (each also kept as fuzz/corpus/<target>/regression_*): now each is a
// kvcompress::Error with the exact message below, or, where valid, read correctly.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "kvc_engine/model_io/config.hpp"
#include "kvc_engine/model_io/safetensors.hpp"
#include "kvcompress/rope/rotary_embedding.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using kvc_engine::SafetensorsFile;
using nlohmann::json;

namespace {

/// The message of the kvcompress::Error that f throws (without the location prefix), or "no error".
template <class F>
std::string error_of(F const& f) {
  try {
    f();
  } catch (kvcompress::Error const& e) {
    return e.message();
  }
  return "no error";
}

/// A safetensors file of this header over `data_bytes` zero bytes.
SafetensorsFile safetensors(std::string const& header, std::size_t data_bytes) {
  std::vector<unsigned char> bytes(8);
  for (int i = 0; i < 8; ++i) bytes[static_cast<std::size_t>(i)] = static_cast<unsigned char>(header.size() >> (8 * i));
  bytes.insert(bytes.end(), header.begin(), header.end());
  bytes.resize(bytes.size() + data_bytes, 0);
  return SafetensorsFile(std::move(bytes), "test.safetensors");
}

json yarn_config(json rope) {
  json j = json::parse(R"({"model_type":"llama","vocab_size":256,"hidden_size":64,"intermediate_size":128,
    "num_hidden_layers":2,"num_attention_heads":8,"num_key_value_heads":2,"head_dim":16,"rms_norm_eps":1e-6,
    "max_position_embeddings":512})");
  rope["rope_type"] = "yarn";
  rope["rope_theta"] = 10000.0;
  if (!rope.contains("factor")) rope["factor"] = 4.0;
  rope["original_max_position_embeddings"] = 128;
  j["rope_parameters"] = rope;
  return j;
}

}  // namespace

TEST_CASE("safetensors: a shape whose element count overflows int64 before a zero entry", "[engine][safetensors]") {
  // 2^62 · 3 overflows int64 although the tensor, with its trailing 0, holds no bytes: the reader
  // accepted it and TensorInfo::numel() then overflowed (signed-integer UB).
  CHECK(error_of([] { (void)safetensors(R"({"a":{"dtype":"U8","shape":[4611686018427387904,3,0],"data_offsets":[0,0]}})", 0); }) ==
        "test.safetensors: tensor 'a': shape [4611686018427387904,3,0] overflows 64 bits: 4611686018427387904 x 3 elements "
        "of 1-byte U8 exceed 2^63 - 1 bytes");
  // Empty tensors whose partial products stay in range are valid, with 0 elements.
  SafetensorsFile const f = safetensors(R"({"z":{"dtype":"U8","shape":[0,4611686018427387904,3],"data_offsets":[0,0]},)"
                                        R"("y":{"dtype":"U8","shape":[4611686018427387904,1,0],"data_offsets":[0,0]}})",
                                        0);
  CHECK(f.info("z").numel() == 0);
  CHECK(f.info("y").numel() == 0);
}

TEST_CASE("config: a yarn attention scaling that float cannot hold, or that is not positive", "[engine][config]") {
  // Each of these was accepted; cos and sin were then scaled by inf, 0 or a negative number.
  CHECK(error_of([] { (void)kvc_engine::parse_model_config(yarn_config({{"attention_factor", 1e39}}).dump()); }) ==
        "yarn attention scaling must be a positive, finite float, got 1e+39 (attention_factor = 1e+39, mscale = 0, "
        "mscale_all_dim = 0, factor = 4)");
  CHECK(error_of([] { (void)kvc_engine::parse_model_config(yarn_config({{"attention_factor", 1e-50}}).dump()); }) ==
        "yarn attention scaling must be a positive, finite float, got 1e-50 (attention_factor = 1e-50, mscale = 0, "
        "mscale_all_dim = 0, factor = 4)");
  // Derived from the mscales (HF: mscale(4, -100) / mscale(4, 1), mscale(s, m) = 0.1·m·ln s + 1): negative.
  double const derived = (0.1 * -100.0 * std::log(4.0) + 1.0) / (0.1 * 1.0 * std::log(4.0) + 1.0);
  std::ostringstream expected;
  expected << "yarn attention scaling must be a positive, finite float, got " << derived
           << " (attention_factor = 0, mscale = -100, mscale_all_dim = 1, factor = 4)";
  CHECK(error_of([] { (void)kvc_engine::parse_model_config(yarn_config({{"mscale", -100.0}, {"mscale_all_dim", 1.0}}).dump()); }) ==
        expected.str());
  // A denominator of exactly 0: mscale(e, -10) = 1 - ln e.
  CHECK(error_of([] {
          (void)kvc_engine::parse_model_config(
              yarn_config({{"factor", std::exp(1.0)}, {"mscale", 1.0}, {"mscale_all_dim", -10.0}}).dump());
        }).rfind("yarn attention scaling must be a positive, finite float, got ", 0) == 0);
  // The same configurations given to RotaryEmbedding directly.
  kvcompress::RopeConfig c;
  c.type = kvcompress::RopeType::kYarn;
  c.head_dim = 16;
  c.factor = 4.0;
  c.original_max_position_embeddings = 128;
  c.attention_factor = 1e39;
  CHECK(error_of([&] { kvcompress::RotaryEmbedding const r(c); }).rfind("yarn attention scaling must be", 0) == 0);
  c.attention_factor = 1.25;  // still accepted
  CHECK(kvcompress::RotaryEmbedding(c).attention_scaling() == 1.25f);
}

}  // namespace KVC_TEST_TU
