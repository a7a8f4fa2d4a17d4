// libFuzzer target: the golden-fixture reader (tests/golden_fixture.hpp) on arbitrary manifest
// text and tensor bytes. Input layout: a 2-byte little-endian length L, L bytes of JSON, then the
// bytes of the tensor file. Accepted outcomes: a tensor, or kvcompress::Error; an exception of
// another type (nlohmann's own, std::length_error…) or a crash is a bug.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "golden_fixture.hpp"

namespace {

template <class U>
void decode_all(nlohmann::json const& manifest, std::string_view bytes) {
  auto check = [&](nlohmann::json const& spec) {
    try {
      auto const t = kvc_test::decode_tensor<U>(spec, bytes, "fuzz.bin");
      if (static_cast<std::int64_t>(t.data.size()) != t.numel()) std::abort();
    } catch (kvcompress::Error const&) {
    }
  };
  // Every object anywhere in the manifest is tried as a spec: scenario manifests hold them under
  // "tensors", "presses"[i]["scores"], "presses"[i]["kept"], the RoPE manifest deeper still.
  auto walk = [&](nlohmann::json const& node, auto const& self) -> void {
    if (node.is_object()) check(node);
    if (node.is_structured())
      for (auto const& child : node) self(child, self);
  };
  walk(manifest, walk);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size) {
  if (size < 2) return 0;
  std::size_t const json_len = std::min<std::size_t>(size - 2, data[0] | (std::size_t{data[1]} << 8));
  std::string_view const text(reinterpret_cast<char const*>(data) + 2, json_len);
  std::string_view const bytes(reinterpret_cast<char const*>(data) + 2 + json_len, size - 2 - json_len);
  nlohmann::json manifest;
  try {
    manifest = kvc_test::parse_json(text, "fuzz.json");
  } catch (kvcompress::Error const&) {
    return 0;
  }
  decode_all<float>(manifest, bytes);
  decode_all<std::int32_t>(manifest, bytes);
  return 0;
}
