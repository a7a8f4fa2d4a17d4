// A checkpoint folder whose config.json disagrees with its weights: a kvcompress::Error naming the
// first missing tensor, whatever count config.json claims.
#include <catch2/catch.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include <unistd.h>

#include "golden_fixture.hpp"
#include "kvc_engine/model_io/model.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

namespace fs = std::filesystem;

TEST_CASE("engine: config.json claiming 2^40 layers over a 2-layer checkpoint", "[golden][engine]") {
  // Was std::bad_alloc: load_model sized its layer vector from num_hidden_layers before reading any
  // layer (2^40 is inside the config reader's [1, 2^40] range).
  std::string const source = std::string(KVC_GOLDEN_DIR) + "/engine/llama/checkpoint";
  fs::path const dir = fs::temp_directory_path() / ("kvc_layers_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  fs::copy_file(source + "/model.safetensors", dir / "model.safetensors", fs::copy_options::overwrite_existing);
  nlohmann::json config = kvc_test::load_json(source + "/config.json");
  REQUIRE(config.at("num_hidden_layers") == 2);
  config["num_hidden_layers"] = std::int64_t{1} << 40;
  std::ofstream(dir / "config.json") << config.dump();

  std::string message = "no error";
  try {
    (void)kvc_engine::load_model(dir.string());
  } catch (kvcompress::Error const& e) {
    message = e.message();
  }
  fs::remove_all(dir);
  CHECK(message == "checkpoint " + dir.string() + " has no tensor 'model.layers.2.input_layernorm.weight'");
}

}  // namespace KVC_TEST_TU
