// libFuzzer target: the engine's safetensors reader (examples/engine/kvc_engine/model_io/safetensors.hpp) on
// arbitrary bytes. Each input is tried twice:
//   1. as the whole file (length field, header, data), exactly as `SafetensorsFile::open` reads it;
//   2. if it holds a NUL byte, as "header text NUL data": the harness writes the length field. JSON text
//      never holds a raw NUL, so mutations that grow or shrink the header keep a consistent length and
//      reach the header's semantic checks instead of stopping at the length field.
// Accepted outcomes: a validated file, or kvcompress::Error. A crash, a sanitizer report, another
// exception type, or a validated file whose tensors break the reader's promises is a bug.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kvc_engine/model_io/safetensors.hpp"

namespace {

[[noreturn]] void postcondition_failed() { std::abort(); }

/// Element count of a shape in 128 bits (the reader's own arithmetic is what is under test).
unsigned __int128 wide_numel(std::vector<std::int64_t> const& shape) {
  unsigned __int128 n = 1;
  for (auto s : shape) {
    if (s < 0) postcondition_failed();
    n *= static_cast<std::uint64_t>(s);
    if (n > (static_cast<unsigned __int128>(1) << 64)) n = static_cast<unsigned __int128>(1) << 64;  // saturate
  }
  return n;
}

/// What a validated file promises: every tensor's byte range lies in the data section, matches
/// shape × dtype size, the ranges tile the data section, and the float dtypes read back to numel values.
void check(kvc_engine::SafetensorsFile const& f, std::uint64_t data_size) {
  std::uint64_t covered = 0;
  for (auto const& name : f.names()) {
    if (!f.contains(name)) postcondition_failed();
    kvc_engine::TensorInfo const& t = f.info(name);
    if (t.begin > t.end || t.end > data_size) postcondition_failed();
    unsigned __int128 const n = wide_numel(t.shape);
    if (n * t.item_bytes != t.end - t.begin) postcondition_failed();
    if (static_cast<unsigned __int128>(t.numel()) != n) postcondition_failed();
    covered += t.end - t.begin;
    bool const readable = t.dtype == "F32" || t.dtype == "F16" || t.dtype == "BF16";
    try {
      std::vector<float> const v = f.read_as_float(name);
      if (!readable || v.size() != static_cast<std::size_t>(n)) postcondition_failed();
    } catch (kvcompress::Error const&) {
      if (readable) postcondition_failed();
    }
  }
  if (covered != data_size) postcondition_failed();
  // A name the file does not hold is an Error, never a default entry.
  try {
    (void)f.info("\x01 no such tensor");
    postcondition_failed();
  } catch (kvcompress::Error const&) {
  }
}

void parse(std::vector<unsigned char> bytes, std::uint64_t header_len) {
  std::uint64_t const size = bytes.size();
  try {
    kvc_engine::SafetensorsFile const f(std::move(bytes), "fuzz.safetensors");
    check(f, size - 8 - header_len);
  } catch (kvcompress::Error const&) {
    // The documented outcome for a malformed file.
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size) {
  std::uint64_t raw_len = 0;
  for (std::size_t i = std::min<std::size_t>(size, 8); i-- > 0;) raw_len = (raw_len << 8) | data[i];
  parse(std::vector<unsigned char>(data, data + size), raw_len);

  auto const* nul = static_cast<std::uint8_t const*>(std::memchr(data, 0, size));
  if (nul == nullptr) return 0;
  std::uint64_t const header_len = static_cast<std::uint64_t>(nul - data);
  std::vector<unsigned char> framed(8 + size - 1);
  for (int i = 0; i < 8; ++i) framed[static_cast<std::size_t>(i)] = static_cast<unsigned char>(header_len >> (8 * i));
  std::memcpy(framed.data() + 8, data, header_len);
  std::memcpy(framed.data() + 8 + header_len, nul + 1, size - header_len - 1);
  parse(std::move(framed), header_len);
  return 0;
}
