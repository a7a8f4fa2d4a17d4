#pragma once
// Reader for the fixtures that tools/golden/generate.py writes from kvpress: a JSON manifest and raw
// little-endian C-order tensors. Every malformed input is reported as kvcompress::Error.

#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvcompress/core/error.hpp"

namespace kvc_test {

template <class U>
struct LoadedTensor {
  std::vector<std::int64_t> shape;
  std::vector<U> data;
  [[nodiscard]] std::int64_t numel() const {
    std::int64_t n = 1;
    for (auto s : shape) n *= s;
    return n;
  }
};

inline nlohmann::json load_json(std::string const& path) {
  std::ifstream in(path);
  KVC_CHECK(in.good(), "cannot open fixture manifest " << path);
  try {
    return nlohmann::json::parse(in);
  } catch (nlohmann::json::exception const& e) {
    KVC_THROW("fixture manifest " << path << " is not valid JSON: " << e.what());
  }
}

/// Reads the tensor described by `spec` ({"file", "dtype", "shape"}) from directory `dir`.
template <class U>
LoadedTensor<U> load_tensor(std::string const& dir, nlohmann::json const& spec) {
  KVC_CHECK(spec.is_object() && spec.contains("file") && spec.contains("shape") && spec.contains("dtype"),
            "tensor spec needs file, dtype and shape: " << spec.dump());
  std::string const dtype = spec.at("dtype").get<std::string>();
  std::string const want = std::is_same_v<U, float> ? "float32" : "int32";
  static_assert(std::is_same_v<U, float> || std::is_same_v<U, std::int32_t>, "float32 or int32 tensors");
  KVC_CHECK(dtype == want, "tensor " << spec.at("file") << " has dtype " << dtype << ", expected " << want);
  LoadedTensor<U> t;
  std::int64_t n = 1;
  for (auto const& s : spec.at("shape")) {
    auto const v = s.get<std::int64_t>();
    KVC_CHECK(v >= 0 && v < (std::int64_t{1} << 31), "tensor shape entry out of range: " << v);
    t.shape.push_back(v);
    n *= v;
    KVC_CHECK(n < (std::int64_t{1} << 31), "tensor too large: " << spec.dump());
  }
  std::string const path = dir + "/" + spec.at("file").get<std::string>();
  std::ifstream in(path, std::ios::binary);
  KVC_CHECK(in.good(), "cannot open tensor file " << path);
  in.seekg(0, std::ios::end);
  auto const bytes = static_cast<std::int64_t>(in.tellg());
  KVC_CHECK(bytes == n * static_cast<std::int64_t>(sizeof(U)),
            "tensor file " << path << " holds " << bytes << " bytes, shape needs " << n * sizeof(U));
  in.seekg(0);
  t.data.resize(static_cast<std::size_t>(n));
  in.read(reinterpret_cast<char*>(t.data.data()), static_cast<std::streamsize>(bytes));
  KVC_CHECK(in.good() || n == 0, "short read from " << path);
  return t;
}

}  // namespace kvc_test
