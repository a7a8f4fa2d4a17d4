#pragma once
// Builds GGUF bytes in memory for the reader's tests: a header, key/values of any type, tensor infos and
// data laid out at the alignment. Tests then corrupt the bytes where they need to.

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace kvc_test {

class GgufBuilder {
 public:
  using Bytes = std::vector<unsigned char>;

  /// Little-endian bytes of an integer of `n` bytes.
  static void put(Bytes& b, std::uint64_t v, int n) {
    for (int i = 0; i < n; ++i) b.push_back(static_cast<unsigned char>(v >> (8 * i)));
  }
  static void put_string(Bytes& b, std::string const& s) {
    put(b, s.size(), 8);
    b.insert(b.end(), s.begin(), s.end());
  }
  static void put_f32(Bytes& b, float f) {
    std::uint32_t bits = 0;
    std::memcpy(&bits, &f, 4);
    put(b, bits, 4);
  }

  /// A key with its value type and the value's encoded bytes.
  GgufBuilder& kv(std::string const& key, std::uint32_t type, Bytes const& value) {
    put_string(kvs_, key);
    put(kvs_, type, 4);
    kvs_.insert(kvs_.end(), value.begin(), value.end());
    ++n_kv_;
    return *this;
  }
  GgufBuilder& u32(std::string const& key, std::uint32_t v) {
    Bytes b;
    put(b, v, 4);
    return kv(key, 4, b);
  }
  GgufBuilder& f32(std::string const& key, float v) {
    Bytes b;
    put_f32(b, v);
    return kv(key, 6, b);
  }
  GgufBuilder& str(std::string const& key, std::string const& v) {
    Bytes b;
    put_string(b, v);
    return kv(key, 8, b);
  }

  /// A tensor: `dims` innermost first; `data` its bytes (F32 when `type` is 0 and floats are given).
  GgufBuilder& tensor(std::string const& name, std::uint32_t type, std::vector<std::uint64_t> const& dims, Bytes const& data) {
    tensors_.push_back({name, type, dims, data});
    return *this;
  }
  GgufBuilder& f32_tensor(std::string const& name, std::vector<std::uint64_t> const& dims, std::vector<float> const& values) {
    Bytes b;
    for (float v : values) put_f32(b, v);
    return tensor(name, 0, dims, b);
  }

  GgufBuilder& version(std::uint32_t v) {
    version_ = v;
    return *this;
  }

  [[nodiscard]] Bytes bytes() const {
    Bytes out;
    put(out, 0x46554747, 4);
    put(out, version_, 4);
    put(out, tensors_.size(), 8);
    put(out, n_kv_, 8);
    out.insert(out.end(), kvs_.begin(), kvs_.end());
    std::uint64_t offset = 0;
    for (auto const& t : tensors_) {
      put_string(out, t.name);
      put(out, t.dims.size(), 4);
      for (auto d : t.dims) put(out, d, 8);
      put(out, t.type, 4);
      put(out, offset, 8);
      offset += (t.data.size() + kAlign - 1) / kAlign * kAlign;
    }
    while (out.size() % kAlign != 0) out.push_back(0);
    for (auto const& t : tensors_) {
      out.insert(out.end(), t.data.begin(), t.data.end());
      while (out.size() % kAlign != 0) out.push_back(0);
    }
    return out;
  }

 private:
  static constexpr std::size_t kAlign = 32;
  struct Tensor {
    std::string name;
    std::uint32_t type;
    std::vector<std::uint64_t> dims;
    Bytes data;
  };
  std::uint32_t version_ = 3;
  std::uint64_t n_kv_ = 0;
  Bytes kvs_;
  std::vector<Tensor> tensors_;
};

}  // namespace kvc_test
