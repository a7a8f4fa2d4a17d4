#pragma once
// Reader for the fixtures that tools/golden/generate.py writes from kvpress: a JSON manifest and raw
// little-endian C-order tensors. Every malformed input is reported as kvcompress::Error.

#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <type_traits>
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

/// Parses a fixture manifest held in memory; `what` names it in messages.
inline nlohmann::json parse_json(std::string_view text, std::string const& what) {
  try {
    return nlohmann::json::parse(text.begin(), text.end());
  } catch (nlohmann::json::exception const& e) {
    KVC_THROW("fixture manifest " << what << " is not valid JSON: " << e.what());
  }
}

inline nlohmann::json load_json(std::string const& path) {
  std::ifstream in(path, std::ios::binary);
  KVC_CHECK(in.good(), "cannot open fixture manifest " << path);
  std::string const text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return parse_json(text, path);
}

/// The validated fields of a tensor spec ({"file", "dtype", "shape"}).
struct TensorSpec {
  std::string file;
  std::vector<std::int64_t> shape;
  std::int64_t numel = 1;
};

/// Checks `spec` for a tensor of U: every field present with its JSON type, the dtype U's, each
/// extent an integer in [0, 2^31), the element count below 2^31.
template <class U>
TensorSpec parse_tensor_spec(nlohmann::json const& spec) {
  static_assert(std::is_same_v<U, float> || std::is_same_v<U, std::int32_t>, "float32 or int32 tensors");
  KVC_CHECK(spec.is_object() && spec.contains("file") && spec.contains("shape") && spec.contains("dtype"),
            "tensor spec needs file, dtype and shape: " << spec.dump());
  auto const& file = spec.at("file");
  auto const& dtype = spec.at("dtype");
  auto const& shape = spec.at("shape");
  KVC_CHECK(file.is_string(), "tensor spec file must be a string, got " << file.dump());
  KVC_CHECK(dtype.is_string(), "tensor spec dtype must be a string, got " << dtype.dump());
  KVC_CHECK(shape.is_array(), "tensor spec shape must be an array, got " << shape.dump());
  TensorSpec t;
  t.file = file.get<std::string>();
  std::string const want = std::is_same_v<U, float> ? "float32" : "int32";
  KVC_CHECK(dtype.get<std::string>() == want,
            "tensor " << t.file << " has dtype " << dtype.get<std::string>() << ", expected " << want);
  for (auto const& s : shape) {
    KVC_CHECK(s.is_number_integer(), "tensor " << t.file << " shape entry must be an integer, got " << s.dump());
    auto const v = s.get<std::int64_t>();
    KVC_CHECK(v >= 0 && v < (std::int64_t{1} << 31), "tensor shape entry out of range: " << v);
    t.shape.push_back(v);
    t.numel *= v;
    KVC_CHECK(t.numel < (std::int64_t{1} << 31), "tensor too large: " << spec.dump());
  }
  return t;
}

/// Decodes the tensor described by `spec` from its file's bytes, held in memory; `what` names the
/// file in messages.
template <class U>
LoadedTensor<U> decode_tensor(nlohmann::json const& spec, std::string_view bytes, std::string const& what) {
  TensorSpec const t = parse_tensor_spec<U>(spec);
  auto const size = static_cast<std::int64_t>(bytes.size());
  KVC_CHECK(size == t.numel * static_cast<std::int64_t>(sizeof(U)),
            "tensor file " << what << " holds " << size << " bytes, shape needs " << t.numel * sizeof(U));
  LoadedTensor<U> out;
  out.shape = t.shape;
  out.data.resize(static_cast<std::size_t>(t.numel));
  if (!bytes.empty()) std::memcpy(out.data.data(), bytes.data(), bytes.size());
  return out;
}

/// Reads the tensor described by `spec` ({"file", "dtype", "shape"}) from directory `dir`.
template <class U>
LoadedTensor<U> load_tensor(std::string const& dir, nlohmann::json const& spec) {
  std::string const path = dir + "/" + parse_tensor_spec<U>(spec).file;
  std::ifstream in(path, std::ios::binary);
  KVC_CHECK(in.good(), "cannot open tensor file " << path);
  std::string const bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  KVC_CHECK(!in.bad(), "short read from " << path);
  return decode_tensor<U>(spec, bytes, path);
}

}  // namespace kvc_test
