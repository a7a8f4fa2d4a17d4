// The engine's model loader checks every weight: a NaN or ±Inf is a kvcompress::Error at load naming the
// file, the tensor and the first bad element, not a wrong answer (or an argmax error) much later.
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

#include <unistd.h>

#include "kvc_engine/model_io/model.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {

// This file is tests/cpu/test_engine_model_weights.cpp; CMake compiles it by its absolute path.
fs::path const kCheckpoint = fs::path(__FILE__).parent_path().parent_path() / "golden" / "engine" / "llama" / "checkpoint";

/// A copy of the golden Llama checkpoint in a temporary folder, removed with the object.
class CheckpointCopy {
 public:
  CheckpointCopy() : dir_(fs::temp_directory_path() / ("kvc_weights_" + std::to_string(::getpid()))) {
    fs::create_directories(dir_);
    for (char const* f : {"config.json", "model.safetensors"})
      fs::copy_file(kCheckpoint / f, dir_ / f, fs::copy_options::overwrite_existing);
  }
  CheckpointCopy(CheckpointCopy const&) = delete;
  CheckpointCopy& operator=(CheckpointCopy const&) = delete;
  ~CheckpointCopy() { fs::remove_all(dir_); }
  [[nodiscard]] std::string dir() const { return dir_.string(); }

  /// Overwrites element `index` of the F32 tensor `name` with `value`.
  void poke(std::string const& name, std::uint64_t index, float value) const {
    std::string const path = (dir_ / "model.safetensors").string();
    kvc_engine::TensorInfo const info = kvc_engine::SafetensorsFile::open(path).info(name);
    REQUIRE(info.dtype == "F32");
    std::ifstream in(path, std::ios::binary);
    std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::uint64_t header = 0;
    for (int i = 0; i < 8; ++i) header |= std::uint64_t{static_cast<unsigned char>(bytes[static_cast<std::size_t>(i)])} << (8 * i);
    std::memcpy(bytes.data() + 8 + header + info.begin + 4 * index, &value, 4);
    std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }

 private:
  fs::path dir_;
};

}  // namespace

TEST_CASE("engine: a non-finite weight is named at load with its tensor and first element", "[engine][model]") {
  CheckpointCopy const copy;
  REQUIRE(kvc_engine::load_model(copy.dir()).layers.size() == 2);  // the untouched copy loads

  SECTION("NaN") {
    copy.poke("model.layers.1.mlp.up_proj.weight", 37, std::numeric_limits<float>::quiet_NaN());
    copy.poke("model.layers.1.mlp.up_proj.weight", 8000, std::numeric_limits<float>::infinity());
    CHECK_THROWS_WITH(kvc_engine::load_model(copy.dir()),
                      Contains("model.safetensors: tensor 'model.layers.1.mlp.up_proj.weight' holds 2 non-finite "
                               "weight(s) of 8192; the first, nan, at element 37 (row-major)"));
  }
  SECTION("-Inf") {
    copy.poke("lm_head.weight", 0, -std::numeric_limits<float>::infinity());
    CHECK_THROWS_WITH(kvc_engine::load_model(copy.dir()),
                      Contains("tensor 'lm_head.weight' holds 1 non-finite weight(s) of 16384; the first, -inf, at element 0"));
  }
}

}  // namespace KVC_TEST_TU
