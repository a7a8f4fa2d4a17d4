// libFuzzer target: the engine's GGUF reader (examples/engine/kvc_engine/model_io/gguf.hpp, gguf_dequant.hpp,
// gguf_model.hpp) on arbitrary bytes, as `GgufFile::open` reads a file. A validated file is then used the way
// the engine uses one: every metadata value through every accessor, every tensor dequantised, and the model
// built from the architecture metadata.
// Accepted outcomes: kvcompress::Error, or results that keep the reader's promises. A crash, a sanitizer
// report, another exception type, or a broken promise (a tensor outside the data section, a wrong element
// count) is a bug.
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "kvc_engine/model_io/gguf_model.hpp"

namespace {

[[noreturn]] void postcondition_failed() { std::abort(); }

void use_value(kvc_engine::GgufValue const& v) {
  auto const attempt = [](auto&& f) {
    try {
      f();
    } catch (kvcompress::Error const&) {
    }
  };
  attempt([&] { (void)v.as_string(); });
  attempt([&] { (void)v.as_int(); });
  attempt([&] { (void)v.as_uint(); });
  attempt([&] { (void)v.as_float(); });
  attempt([&] { (void)v.as_bool(); });
  attempt([&] {
    if (v.as_strings().size() != v.size()) postcondition_failed();
  });
  attempt([&] {
    if (v.as_ints().size() != v.size()) postcondition_failed();
  });
  attempt([&] {
    if (v.as_floats().size() != v.size()) postcondition_failed();
  });
  attempt([&] {
    if (v.as_bools().size() != v.size()) postcondition_failed();
  });
  attempt([&] {
    auto const& children = v.as_arrays();
    if (children.size() != v.size()) postcondition_failed();
    for (auto const& c : children) use_value(c);
  });
}

void check(kvc_engine::GgufFile const& f, std::size_t size) {
  for (auto const& kv : f.metadata()) use_value(kv.second);
  std::uint64_t const data_size = f.data_offset() <= size ? size - f.data_offset() : 0;
  for (auto const& t : f.tensors()) {
    if (t.offset > data_size || t.bytes > data_size - t.offset) postcondition_failed();
    if (&f.tensor(t.name) != &t) postcondition_failed();
    if (!kvc_engine::ggml_type_dequantizable(t.type)) continue;
    std::vector<float> const x = kvc_engine::dequantize_tensor(f, t);
    if (static_cast<std::int64_t>(x.size()) != t.numel) postcondition_failed();
  }
  try {
    kvc_engine::Model const m = kvc_engine::load_gguf_model(f);
    if (static_cast<std::int64_t>(m.layers.size()) != m.config.num_layers) postcondition_failed();
    if (static_cast<std::int64_t>(m.embed.size()) != m.config.vocab_size * m.config.hidden_size) postcondition_failed();
  } catch (kvcompress::Error const&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size) {
  try {
    kvc_engine::GgufFile const f(std::vector<unsigned char>(data, data + size), "fuzz.gguf");
    check(f, size);
  } catch (kvcompress::Error const&) {
    // The documented outcome for a malformed file.
  }
  return 0;
}
