#pragma once
/// \file
/// \brief A strict reader of the safetensors format: an 8-byte little-endian header length N, N bytes of
/// JSON `{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`, then the data.
///
/// Every malformed input becomes a `kvcompress::Error` naming the file, the tensor and the value; nothing
/// is read outside the file. Checked: the header length (at most 100 MB, inside the file), JSON syntax and
/// nesting depth, each entry's fields and types, known dtypes, shape × dtype size = byte range (without
/// overflow), offsets inside the data section, and that the tensors tile the data section exactly (no
/// overlap, no hole, no trailing bytes — as the format's specification requires).

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvcompress/core/dtype.hpp"
#include "kvcompress/core/error.hpp"

namespace kvc_engine {

/// \brief One tensor of a safetensors file, as its header describes it.
struct TensorInfo {
  std::string name;
  std::string dtype;                 // as written: "F32", "F16", "BF16", "I64", ...
  std::size_t item_bytes = 0;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0;           // byte range [begin, end) in the data section
  std::uint64_t end = 0;

  [[nodiscard]] std::int64_t numel() const noexcept {
    std::int64_t n = 1;
    for (auto s : shape) n *= s;
    return n;
  }
};

namespace detail {

/// Short printable form of a JSON value for error messages (values can be arbitrarily long).
inline std::string brief(nlohmann::json const& v) {
  std::string s = v.dump(-1, ' ', true, nlohmann::json::error_handler_t::replace);
  return s.size() > 64 ? s.substr(0, 61) + "..." : s;
}

/// Parses JSON text, refusing nesting deeper than max_depth (a deeply nested document must not
/// exhaust the stack of code that later walks it) and turning every parse error into `Error`.
inline nlohmann::json parse_json(char const* first, char const* last, int max_depth, std::string const& what) {
  auto const limit = [&](int depth, nlohmann::json::parse_event_t, nlohmann::json&) {
    if (depth > max_depth) KVC_THROW(what << " nests deeper than " << max_depth << " levels");
    return true;
  };
  try {
    return nlohmann::json::parse(first, last, limit);
  } catch (nlohmann::json::exception const& e) {
    KVC_THROW(what << " is not valid JSON: " << e.what());
  }
}

/// Element size of every dtype the format defines; 0 for an unknown name.
inline std::size_t safetensors_item_bytes(std::string const& dtype) {
  static std::map<std::string, std::size_t> const sizes = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E4M3", 1}, {"F8_E5M2", 1}, {"I16", 2}, {"U16", 2}, {"F16", 2},
      {"BF16", 2}, {"I32", 4}, {"U32", 4}, {"F32", 4},     {"F64", 8},     {"I64", 8}, {"U64", 8}};
  auto const it = sizes.find(dtype);
  return it == sizes.end() ? 0 : it->second;
}

inline std::uint64_t read_le_u64(unsigned char const* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

}  // namespace detail

/// \brief A whole safetensors file held in memory, validated on construction.
class SafetensorsFile {
 public:
  /// The specification's bound on the header length.
  static constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;
  /// Root object → tensor entry → shape / offsets array → numbers.
  static constexpr int kMaxHeaderDepth = 3;

  /// \brief Reads and validates a file.
  [[nodiscard]] static SafetensorsFile open(std::string const& path) {
    std::ifstream in(path, std::ios::binary);
    KVC_CHECK(in.good(), "cannot open safetensors file " << path);
    in.seekg(0, std::ios::end);
    auto const size = static_cast<std::streamoff>(in.tellg());
    KVC_CHECK(size >= 0, "cannot determine the size of " << path);
    in.seekg(0);
    std::vector<unsigned char> bytes(static_cast<std::size_t>(size));
    in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(size));
    KVC_CHECK(in.good() || size == 0, "short read from " << path);
    return SafetensorsFile(std::move(bytes), path);
  }

  /// \brief Validates bytes already in memory; `source` names them in error messages.
  SafetensorsFile(std::vector<unsigned char> bytes, std::string source) : source_(std::move(source)), bytes_(std::move(bytes)) {
    parse();
  }

  [[nodiscard]] std::string const& source() const noexcept { return source_; }
  [[nodiscard]] std::map<std::string, std::string> const& metadata() const noexcept { return metadata_; }
  [[nodiscard]] bool contains(std::string const& name) const { return tensors_.count(name) != 0; }

  [[nodiscard]] std::vector<std::string> names() const {
    std::vector<std::string> out;
    out.reserve(tensors_.size());
    for (auto const& kv : tensors_) out.push_back(kv.first);
    return out;
  }

  [[nodiscard]] TensorInfo const& info(std::string const& name) const {
    auto const it = tensors_.find(name);
    KVC_CHECK(it != tensors_.end(), source_ << " has no tensor '" << name << "'");
    return it->second;
  }

  /// \brief The tensor's elements widened to float, in C order. F32, F16 and BF16 only.
  [[nodiscard]] std::vector<float> read_as_float(std::string const& name) const {
    TensorInfo const& t = info(name);
    std::size_t const n = static_cast<std::size_t>(t.numel());
    unsigned char const* src = bytes_.data() + data_start_ + t.begin;
    std::vector<float> out(n);
    if (t.dtype == "F32") {
      if (n != 0) std::memcpy(out.data(), src, n * 4);
    } else if (t.dtype == "F16" || t.dtype == "BF16") {
      bool const bf16 = t.dtype == "BF16";
      for (std::size_t i = 0; i < n; ++i) {
        std::uint16_t const bits = static_cast<std::uint16_t>(src[2 * i] | (src[2 * i + 1] << 8));
        out[i] = bf16 ? static_cast<float>(Eigen::numext::bit_cast<kvcompress::bfloat16>(bits))
                      : static_cast<float>(Eigen::numext::bit_cast<kvcompress::half>(bits));
      }
    } else {
      KVC_THROW(source_ << ": tensor '" << name << "' has dtype " << t.dtype << "; F32, F16 and BF16 can be read as float");
    }
    return out;
  }

 private:
  void parse() {
    std::uint64_t const size = bytes_.size();
    KVC_CHECK(size >= 8, source_ << " is " << size << " bytes, shorter than the 8-byte header length");
    std::uint64_t const header_len = detail::read_le_u64(bytes_.data());
    KVC_CHECK(header_len <= kMaxHeaderBytes,
              source_ << ": header length " << header_len << " exceeds the format's limit of " << kMaxHeaderBytes << " bytes");
    KVC_CHECK(header_len <= size - 8, source_ << ": header length " << header_len << " exceeds the " << size - 8
                                              << " bytes that follow the length field");
    data_start_ = static_cast<std::size_t>(8 + header_len);
    std::uint64_t const data_size = size - 8 - header_len;
    char const* text = reinterpret_cast<char const*>(bytes_.data() + 8);
    nlohmann::json const header =
        detail::parse_json(text, text + header_len, kMaxHeaderDepth, source_ + ": the header");
    KVC_CHECK(header.is_object(), source_ << ": the header must be a JSON object, got " << detail::brief(header));

    for (auto const& [name, entry] : header.items()) {
      if (name == "__metadata__") {
        KVC_CHECK(entry.is_object(), source_ << ": __metadata__ must be an object of strings, got " << detail::brief(entry));
        for (auto const& [key, value] : entry.items()) {
          KVC_CHECK(value.is_string(), source_ << ": __metadata__['" << key << "'] must be a string, got " << detail::brief(value));
          metadata_[key] = value.get<std::string>();
        }
        continue;
      }
      tensors_[name] = parse_entry(name, entry, data_size);
    }
    check_tiling(data_size);
  }

  TensorInfo parse_entry(std::string const& name, nlohmann::json const& entry, std::uint64_t data_size) const {
    std::string const where = source_ + ": tensor '" + name + "'";
    KVC_CHECK(entry.is_object(), where << " must be an object, got " << detail::brief(entry));
    for (auto const& [key, value] : entry.items()) {
      (void)value;
      KVC_CHECK(key == "dtype" || key == "shape" || key == "data_offsets", where << " has an unknown field '" << key << "'");
    }
    for (char const* field : {"dtype", "shape", "data_offsets"})
      KVC_CHECK(entry.contains(field), where << " has no '" << field << "'");

    TensorInfo t;
    t.name = name;
    auto const& dtype = entry.at("dtype");
    KVC_CHECK(dtype.is_string(), where << ": dtype must be a string, got " << detail::brief(dtype));
    t.dtype = dtype.get<std::string>();
    t.item_bytes = detail::safetensors_item_bytes(t.dtype);
    KVC_CHECK(t.item_bytes != 0, where << " has an unknown dtype '" << detail::brief(dtype) << "'");

    auto const& shape = entry.at("shape");
    KVC_CHECK(shape.is_array(), where << ": shape must be an array, got " << detail::brief(shape));
    // Every partial product (times the item size) must fit in int64, not only the final one: numel()
    // and the engine multiply left to right in int64, and a later 0 does not undo an earlier overflow.
    std::uint64_t numel = 1;
    constexpr auto kMaxBytes = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
    for (auto const& s : shape) {
      KVC_CHECK(s.is_number_unsigned(), where << ": shape entries must be non-negative integers, got " << detail::brief(s));
      std::uint64_t const v = s.get<std::uint64_t>();
      KVC_CHECK(v <= kMaxBytes, where << ": shape entry " << v << " is too large");
      KVC_CHECK(v == 0 || numel <= kMaxBytes / v / t.item_bytes,
                where << ": shape " << detail::brief(shape) << " overflows 64 bits: " << numel << " x " << v << " elements of "
                      << t.item_bytes << "-byte " << t.dtype << " exceed 2^63 - 1 bytes");
      numel *= v;
      t.shape.push_back(static_cast<std::int64_t>(v));
    }

    auto const& offsets = entry.at("data_offsets");
    KVC_CHECK(offsets.is_array() && offsets.size() == 2 && offsets[0].is_number_unsigned() && offsets[1].is_number_unsigned(),
              where << ": data_offsets must be two non-negative integers, got " << detail::brief(offsets));
    t.begin = offsets[0].get<std::uint64_t>();
    t.end = offsets[1].get<std::uint64_t>();
    KVC_CHECK(t.begin <= t.end, where << ": data_offsets [" << t.begin << ", " << t.end << "] begin after they end");
    KVC_CHECK(t.end <= data_size, where << ": data_offsets [" << t.begin << ", " << t.end << "] reach past the "
                                        << data_size << "-byte data section");
    std::uint64_t const bytes = numel * t.item_bytes;
    KVC_CHECK(t.end - t.begin == bytes, where << ": shape " << detail::brief(shape) << " of " << t.dtype << " needs "
                                              << bytes << " bytes, data_offsets [" << t.begin << ", " << t.end
                                              << "] hold " << t.end - t.begin);
    return t;
  }

  /// The tensors must cover the data section exactly once.
  void check_tiling(std::uint64_t data_size) const {
    std::vector<TensorInfo const*> order;
    for (auto const& kv : tensors_)
      if (kv.second.end > kv.second.begin) order.push_back(&kv.second);
    std::sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->begin < b->begin; });
    std::uint64_t covered = 0;
    TensorInfo const* previous = nullptr;
    for (TensorInfo const* t : order) {
      KVC_CHECK(t->begin >= covered, source_ << ": tensor '" << t->name << "' [" << t->begin << ", " << t->end
                                             << ") overlaps tensor '" << previous->name << "' [" << previous->begin
                                             << ", " << previous->end << ")");
      KVC_CHECK(t->begin == covered, source_ << ": bytes [" << covered << ", " << t->begin
                                             << ") of the data section belong to no tensor");
      covered = t->end;
      previous = t;
    }
    KVC_CHECK(covered == data_size, source_ << ": bytes [" << covered << ", " << data_size
                                            << ") of the data section belong to no tensor");
  }

  std::string source_;
  std::vector<unsigned char> bytes_;  // the whole file
  std::size_t data_start_ = 0;        // offset of the data section in bytes_
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace kvc_engine
