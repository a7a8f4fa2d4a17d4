#pragma once
/// \file
/// \brief A strict reader of the GGUF container (versions 2 and 3, little-endian): the header, every
/// metadata key/value (all thirteen value types, arrays of any of them, nested), the tensor infos, the
/// alignment and the tensor data, memory-mapped.
///
/// Layout: magic "GGUF", version (u32), tensor count (u64), key/value count (u64); the key/values
/// (key: u64 length + bytes; value type: u32; value); the tensor infos (name, dimension count (u32),
/// dimensions (u64, innermost first), ggml type (u32), offset (u64) from the start of the data section);
/// padding to `general.alignment` (u32, default 32); the data section.
///
/// Every malformed input becomes a `kvcompress::Error` naming the file, the key or tensor and the value;
/// nothing is read outside the file: each length and count is compared with the bytes that remain before
/// anything is allocated or read. Refused: another magic, version 1 (32-bit counts), big-endian files,
/// unknown versions and value types, duplicate keys or tensor names, keys longer than 65,535 bytes,
/// tensor names longer than 64 bytes, arrays nested deeper than `kMaxArrayDepth`, bools other than 0 / 1,
/// a `general.alignment` that is not a power-of-two u32, more than 4 dimensions, unknown ggml types, an
/// innermost dimension that is not a multiple of the type's block, element or byte counts that overflow
/// 64 bits, unaligned offsets, tensors reaching past the file, and tensors that share bytes.

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "kvcompress/core/error.hpp"

namespace kvc_engine {

/// The metadata value types of the GGUF specification, with their numbers.
enum class GgufValueType : std::uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

inline char const* gguf_value_type_name(GgufValueType t) noexcept {
  static char const* const names[] = {"uint8", "int8",   "uint16", "int16", "uint32", "int32",  "float32",
                                      "bool",  "string", "array",  "uint64", "int64", "float64"};
  auto const i = static_cast<std::uint32_t>(t);
  return i < 13 ? names[i] : "unknown";
}

/// The ggml tensor types, with their numbers (gaps are numbers ggml retired).
enum class GgmlType : std::uint32_t {
  kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ4_1 = 3, kQ5_0 = 6, kQ5_1 = 7, kQ8_0 = 8, kQ8_1 = 9,
  kQ2_K = 10, kQ3_K = 11, kQ4_K = 12, kQ5_K = 13, kQ6_K = 14, kQ8_K = 15,
  kIQ2_XXS = 16, kIQ2_XS = 17, kIQ3_XXS = 18, kIQ1_S = 19, kIQ4_NL = 20, kIQ3_S = 21, kIQ2_S = 22,
  kIQ4_XS = 23, kI8 = 24, kI16 = 25, kI32 = 26, kI64 = 27, kF64 = 28, kIQ1_M = 29, kBF16 = 30,
  kTQ1_0 = 34, kTQ2_0 = 35, kMXFP4 = 39,
};

/// Name and storage of a ggml type: `block_elements` consecutive values of the innermost dimension
/// take `block_bytes` bytes. `block_elements` is 0 for a number ggml does not define.
struct GgmlTypeTraits {
  char const* name;
  std::uint32_t block_elements;
  std::uint32_t block_bytes;
};

inline GgmlTypeTraits ggml_type_traits(std::uint32_t type) noexcept {
  switch (type) {
    case 0: return {"F32", 1, 4};
    case 1: return {"F16", 1, 2};
    case 2: return {"Q4_0", 32, 18};
    case 3: return {"Q4_1", 32, 20};
    case 6: return {"Q5_0", 32, 22};
    case 7: return {"Q5_1", 32, 24};
    case 8: return {"Q8_0", 32, 34};
    case 9: return {"Q8_1", 32, 36};
    case 10: return {"Q2_K", 256, 84};
    case 11: return {"Q3_K", 256, 110};
    case 12: return {"Q4_K", 256, 144};
    case 13: return {"Q5_K", 256, 176};
    case 14: return {"Q6_K", 256, 210};
    case 15: return {"Q8_K", 256, 292};
    case 16: return {"IQ2_XXS", 256, 66};
    case 17: return {"IQ2_XS", 256, 74};
    case 18: return {"IQ3_XXS", 256, 98};
    case 19: return {"IQ1_S", 256, 50};
    case 20: return {"IQ4_NL", 32, 18};
    case 21: return {"IQ3_S", 256, 110};
    case 22: return {"IQ2_S", 256, 82};
    case 23: return {"IQ4_XS", 256, 136};
    case 24: return {"I8", 1, 1};
    case 25: return {"I16", 1, 2};
    case 26: return {"I32", 1, 4};
    case 27: return {"I64", 1, 8};
    case 28: return {"F64", 1, 8};
    case 29: return {"IQ1_M", 256, 56};
    case 30: return {"BF16", 1, 2};
    case 34: return {"TQ1_0", 256, 54};
    case 35: return {"TQ2_0", 256, 66};
    case 39: return {"MXFP4", 32, 17};
    default: return {"unknown", 0, 0};
  }
}

namespace detail {

/// Bytes (of a key, a name, a string value) as they can be shown in a message: printable ASCII kept,
/// everything else escaped, cut to 80 characters.
inline std::string printable(std::string const& s) {
  static char const hex[] = "0123456789abcdef";
  std::string out;
  for (char const ch : s) {
    auto const c = static_cast<unsigned char>(ch);
    if (out.size() >= 80) return out + "...";
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

}  // namespace detail

/// \brief One metadata value: a scalar, a string, or an array of one value type (arrays may nest).
/// The accessors check the type and name the key in their error.
class GgufValue {
 public:
  [[nodiscard]] std::string const& key() const noexcept { return key_; }
  [[nodiscard]] GgufValueType type() const noexcept { return type_; }
  /// The type of an array's elements (arrays only; `type()` otherwise).
  [[nodiscard]] GgufValueType element_type() const noexcept { return element_type_; }
  [[nodiscard]] bool is_array() const noexcept { return type_ == GgufValueType::kArray; }
  /// Element count of an array; 1 for a scalar or a string.
  [[nodiscard]] std::size_t size() const noexcept { return is_array() ? count_ : 1; }

  /// A string value (bytes as stored; GGUF strings are UTF-8 by specification, not checked here).
  [[nodiscard]] std::string const& as_string() const {
    expect_scalar(GgufValueType::kString, "a string");
    return string_;
  }
  /// Any integer type, if its value fits in int64.
  [[nodiscard]] std::int64_t as_int() const {
    KVC_CHECK(!is_array() && is_integer(type_), where() << " must be an integer, got " << describe());
    return to_int(bits_, type_, 0);
  }
  /// Any integer type, if its value is not negative.
  [[nodiscard]] std::uint64_t as_uint() const {
    KVC_CHECK(!is_array() && is_integer(type_), where() << " must be an integer, got " << describe());
    KVC_CHECK(!is_signed(type_) || static_cast<std::int64_t>(bits_) >= 0,
              where() << " must not be negative, got " << static_cast<std::int64_t>(bits_));
    return bits_;
  }
  /// float32 or float64.
  [[nodiscard]] double as_float() const {
    KVC_CHECK(!is_array() && is_float(type_), where() << " must be a float32 or float64, got " << describe());
    return number_;
  }
  [[nodiscard]] bool as_bool() const {
    expect_scalar(GgufValueType::kBool, "a bool");
    return bits_ != 0;
  }

  /// An array of strings.
  [[nodiscard]] std::vector<std::string> const& as_strings() const {
    expect_array(GgufValueType::kString, "an array of strings");
    return strings_;
  }
  /// An array of any integer type, each element fitting in int64.
  [[nodiscard]] std::vector<std::int64_t> as_ints() const {
    KVC_CHECK(is_array() && is_integer(element_type_), where() << " must be an array of integers, got " << describe());
    std::vector<std::int64_t> out(bits_array_.size());
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = to_int(bits_array_[i], element_type_, i);
    return out;
  }
  /// An array of float32 or float64.
  [[nodiscard]] std::vector<double> const& as_floats() const {
    KVC_CHECK(is_array() && is_float(element_type_), where() << " must be an array of floats, got " << describe());
    return numbers_;
  }
  /// An array of bools.
  [[nodiscard]] std::vector<bool> as_bools() const {
    expect_array(GgufValueType::kBool, "an array of bools");
    return {bits_array_.begin(), bits_array_.end()};
  }
  /// An array of arrays.
  [[nodiscard]] std::vector<GgufValue> const& as_arrays() const {
    expect_array(GgufValueType::kArray, "an array of arrays");
    return arrays_;
  }

  /// "uint32", "string", "array of float32", ... (for messages).
  [[nodiscard]] std::string type_name() const {
    return is_array() ? std::string("array of ") + gguf_value_type_name(element_type_) : gguf_value_type_name(type_);
  }

 private:
  friend class GgufFile;

  static bool is_integer(GgufValueType t) noexcept {
    switch (t) {
      case GgufValueType::kUint8: case GgufValueType::kInt8: case GgufValueType::kUint16: case GgufValueType::kInt16:
      case GgufValueType::kUint32: case GgufValueType::kInt32: case GgufValueType::kUint64: case GgufValueType::kInt64:
        return true;
      default:
        return false;
    }
  }
  static bool is_signed(GgufValueType t) noexcept {
    return t == GgufValueType::kInt8 || t == GgufValueType::kInt16 || t == GgufValueType::kInt32 || t == GgufValueType::kInt64;
  }
  static bool is_float(GgufValueType t) noexcept { return t == GgufValueType::kFloat32 || t == GgufValueType::kFloat64; }

  /// Signed values are stored sign-extended, unsigned ones zero-extended.
  [[nodiscard]] std::int64_t to_int(std::uint64_t bits, GgufValueType t, std::size_t index) const {
    KVC_CHECK(t != GgufValueType::kUint64 || bits <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()),
              where() << (is_array() ? " element " + std::to_string(index) : std::string()) << " = " << bits
                      << " does not fit in int64");
    return static_cast<std::int64_t>(bits);
  }
  void expect_scalar(GgufValueType t, char const* what) const {
    KVC_CHECK(!is_array() && type_ == t, where() << " must be " << what << ", got " << describe());
  }
  void expect_array(GgufValueType t, char const* what) const {
    KVC_CHECK(is_array() && element_type_ == t, where() << " must be " << what << ", got " << describe());
  }
  [[nodiscard]] std::string where() const { return "GGUF metadata '" + detail::printable(key_) + "'"; }
  [[nodiscard]] std::string describe() const {
    if (is_array()) return type_name() + " (" + std::to_string(count_) + " elements)";
    if (type_ == GgufValueType::kString) return "string \"" + detail::printable(string_) + "\"";
    return type_name();
  }

  std::string key_;
  GgufValueType type_ = GgufValueType::kUint8;
  GgufValueType element_type_ = GgufValueType::kUint8;
  std::uint64_t count_ = 0;
  std::uint64_t bits_ = 0;                 // integers (sign-extended) and bools
  double number_ = 0.0;                    // float32 / float64
  std::string string_;
  std::vector<std::uint64_t> bits_array_;  // arrays of integers or bools
  std::vector<double> numbers_;            // arrays of floats
  std::vector<std::string> strings_;       // arrays of strings
  std::vector<GgufValue> arrays_;          // arrays of arrays
};

/// \brief One tensor of a GGUF file, as its info describes it.
struct GgufTensorInfo {
  std::string name;
  std::uint32_t type = 0;            ///< ggml type number (`GgmlType`)
  std::vector<std::int64_t> dims;    ///< innermost first, as ggml's ne[]: a [out, in] matrix has dims {in, out}
  std::uint64_t offset = 0;          ///< from the start of the data section
  std::uint64_t bytes = 0;           ///< size of the data
  std::int64_t numel = 0;

  [[nodiscard]] GgmlTypeTraits traits() const noexcept { return ggml_type_traits(type); }
  /// Row-major (C order) shape: the dimensions outermost first.
  [[nodiscard]] std::vector<std::int64_t> shape() const { return {dims.rbegin(), dims.rend()}; }
};

/// \brief Read-only bytes that outlive the reader: a memory-mapped file or bytes owned in memory.
class GgufBytes {
 public:
  /// Maps `path` read-only.
  [[nodiscard]] static std::shared_ptr<GgufBytes const> map(std::string const& path) {
    int const fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    KVC_CHECK(fd >= 0, "cannot open GGUF file " << path);
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      KVC_THROW(path << " is not a regular file");
    }
    auto bytes = std::shared_ptr<GgufBytes>(new GgufBytes());
    bytes->size_ = static_cast<std::size_t>(st.st_size);
    if (bytes->size_ != 0) {
      void* const p = ::mmap(nullptr, bytes->size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        ::close(fd);
        KVC_THROW("cannot memory-map " << path << " (" << bytes->size_ << " bytes)");
      }
      bytes->mapped_ = p;
      bytes->data_ = static_cast<unsigned char const*>(p);
    }
    ::close(fd);  // the mapping stays valid without the descriptor
    return bytes;
  }
  /// Takes ownership of bytes already in memory.
  [[nodiscard]] static std::shared_ptr<GgufBytes const> own(std::vector<unsigned char> v) {
    auto bytes = std::shared_ptr<GgufBytes>(new GgufBytes());
    bytes->owned_ = std::move(v);
    bytes->data_ = bytes->owned_.data();
    bytes->size_ = bytes->owned_.size();
    return bytes;
  }

  GgufBytes(GgufBytes const&) = delete;
  GgufBytes& operator=(GgufBytes const&) = delete;
  ~GgufBytes() {
    if (mapped_ != nullptr) ::munmap(mapped_, size_);
  }

  [[nodiscard]] unsigned char const* data() const noexcept { return data_; }
  [[nodiscard]] std::size_t size() const noexcept { return size_; }

 private:
  GgufBytes() = default;

  void* mapped_ = nullptr;
  std::vector<unsigned char> owned_;
  unsigned char const* data_ = nullptr;  // [size_]
  std::size_t size_ = 0;
};

/// \brief A GGUF file, validated on construction. The tensor data stays in the mapping; `data(tensor)`
/// points into it.
class GgufFile {
 public:
  static constexpr std::uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian u32
  static constexpr std::uint32_t kDefaultAlignment = 32;
  static constexpr int kMaxArrayDepth = 8;
  static constexpr std::size_t kMaxKeyBytes = 65535;
  static constexpr std::size_t kMaxTensorNameBytes = 64;
  static constexpr int kMaxDims = 4;

  /// \brief Maps and validates a file.
  [[nodiscard]] static GgufFile open(std::string const& path) { return GgufFile(GgufBytes::map(path), path); }

  /// \brief Validates bytes; `source` names them in error messages.
  GgufFile(std::shared_ptr<GgufBytes const> bytes, std::string source) : source_(std::move(source)), bytes_(std::move(bytes)) {
    parse();
  }
  GgufFile(std::vector<unsigned char> bytes, std::string source) : GgufFile(GgufBytes::own(std::move(bytes)), std::move(source)) {}

  [[nodiscard]] std::string const& source() const noexcept { return source_; }
  [[nodiscard]] std::uint32_t version() const noexcept { return version_; }
  [[nodiscard]] std::uint32_t alignment() const noexcept { return alignment_; }
  /// Offset of the data section in the file.
  [[nodiscard]] std::uint64_t data_offset() const noexcept { return data_offset_; }

  // --- metadata ---
  [[nodiscard]] std::map<std::string, GgufValue> const& metadata() const noexcept { return metadata_; }
  [[nodiscard]] bool has(std::string const& key) const { return metadata_.count(key) != 0; }
  /// The value of a key, or nullptr.
  [[nodiscard]] GgufValue const* find(std::string const& key) const {
    auto const it = metadata_.find(key);
    return it == metadata_.end() ? nullptr : &it->second;
  }
  /// The value of a key that must exist.
  [[nodiscard]] GgufValue const& get(std::string const& key) const {
    GgufValue const* v = find(key);
    KVC_CHECK(v != nullptr, source_ << " has no metadata key '" << detail::printable(key) << "'");
    return *v;
  }

  // --- tensors ---
  /// In file order.
  [[nodiscard]] std::vector<GgufTensorInfo> const& tensors() const noexcept { return tensors_; }
  [[nodiscard]] bool contains(std::string const& name) const { return by_name_.count(name) != 0; }
  [[nodiscard]] GgufTensorInfo const& tensor(std::string const& name) const {
    auto const it = by_name_.find(name);
    KVC_CHECK(it != by_name_.end(), source_ << " has no tensor '" << detail::printable(name) << "'");
    return tensors_[it->second];
  }
  /// The tensor's bytes in the mapping: `tensor.bytes` of them.
  [[nodiscard]] unsigned char const* data(GgufTensorInfo const& t) const noexcept {
    return bytes_->data() + data_offset_ + t.offset;
  }

 private:
  /// Reads forward through the bytes; every read checks the bytes that remain first.
  class Cursor {
   public:
    Cursor(unsigned char const* data, std::uint64_t size, std::string const& source) : data_(data), size_(size), source_(source) {}
    [[nodiscard]] std::uint64_t position() const noexcept { return pos_; }
    [[nodiscard]] std::uint64_t remaining() const noexcept { return size_ - pos_; }

    void need(std::uint64_t n, std::string const& what) const {
      KVC_CHECK(n <= remaining(), source_ << ": " << what << " at byte " << pos_ << " needs " << n
                                          << " bytes, the file ends " << remaining() << " bytes later");
    }
    std::uint64_t le(int n, std::string const& what) {
      need(static_cast<std::uint64_t>(n), what);
      std::uint64_t v = 0;
      for (int i = n - 1; i >= 0; --i) v = (v << 8) | data_[pos_ + static_cast<std::uint64_t>(i)];
      pos_ += static_cast<std::uint64_t>(n);
      return v;
    }
    std::uint32_t u32(std::string const& what) { return static_cast<std::uint32_t>(le(4, what)); }
    std::uint64_t u64(std::string const& what) { return le(8, what); }
    std::string string(std::string const& what, std::uint64_t max_bytes) {
      std::uint64_t const n = u64(what + " (its length)");
      KVC_CHECK(n <= max_bytes, source_ << ": " << what << " at byte " << pos_ - 8 << " is " << n
                                        << " bytes long, more than the " << max_bytes << " allowed");
      need(n, what + " (" + std::to_string(n) + " bytes of text)");
      std::string s(reinterpret_cast<char const*>(data_ + pos_), static_cast<std::size_t>(n));
      pos_ += n;
      return s;
    }
    void skip_to(std::uint64_t pos) { pos_ = pos; }

   private:
    unsigned char const* data_;  // [size_]
    std::uint64_t size_;
    std::uint64_t pos_ = 0;
    std::string const& source_;
  };

  void parse() {
    Cursor c(bytes_->data(), bytes_->size(), source_);
    KVC_CHECK(bytes_->size() >= 4, source_ << " is " << bytes_->size() << " bytes, too short for the GGUF magic");
    std::uint32_t const magic = c.u32("the magic");
    KVC_CHECK(magic == kMagic, source_ << " is not a GGUF file: it starts with 0x" << std::hex << magic << std::dec
                                       << ", not \"GGUF\"");
    version_ = c.u32("the version");
    std::uint32_t const swapped = ((version_ & 0xffU) << 24) | ((version_ & 0xff00U) << 8) | ((version_ >> 8) & 0xff00U) |
                                  (version_ >> 24);
    KVC_CHECK(!(version_ > 0xffffU && swapped >= 1 && swapped <= 0xffffU),
              source_ << " is a big-endian GGUF (version " << swapped << " byte-swapped); only little-endian files are supported");
    KVC_CHECK(version_ != 1, source_ << " is GGUF version 1 (32-bit counts), which is not supported (versions 2 and 3)");
    KVC_CHECK(version_ == 2 || version_ == 3, source_ << " has GGUF version " << version_ << "; versions 2 and 3 are supported");
    std::uint64_t const n_tensors = c.u64("the tensor count");
    std::uint64_t const n_kv = c.u64("the metadata count");
    // Each key/value takes at least 13 bytes (key length, type, a one-byte value); each tensor info 24.
    KVC_CHECK(n_kv <= c.remaining() / 13, source_ << ": metadata count " << n_kv << " cannot fit in the "
                                                  << c.remaining() << " bytes that follow the header");
    KVC_CHECK(n_tensors <= c.remaining() / 24, source_ << ": tensor count " << n_tensors << " cannot fit in the "
                                                       << c.remaining() << " bytes that follow the header");

    for (std::uint64_t i = 0; i < n_kv; ++i) {
      std::string key = c.string("metadata key " + std::to_string(i), kMaxKeyBytes);
      std::string const where = "metadata '" + detail::printable(key) + "'";
      KVC_CHECK(metadata_.count(key) == 0, source_ << ": " << where << " appears twice");
      std::uint32_t const type = c.u32(where + " (its type)");
      GgufValue v = read_value(c, type, key, where, 0);
      metadata_.emplace(std::move(key), std::move(v));
    }

    alignment_ = kDefaultAlignment;
    if (GgufValue const* a = find("general.alignment")) {
      KVC_CHECK(a->type() == GgufValueType::kUint32,
                source_ << ": general.alignment must be a uint32, got " << a->type_name());
      auto const x = static_cast<std::uint32_t>(a->bits_);
      KVC_CHECK(x != 0 && (x & (x - 1)) == 0, source_ << ": general.alignment = " << x << " is not a power of two");
      alignment_ = x;
    }

    tensors_.reserve(static_cast<std::size_t>(n_tensors));
    for (std::uint64_t i = 0; i < n_tensors; ++i) tensors_.push_back(read_tensor_info(c, i));

    std::uint64_t const end_of_infos = c.position();
    std::uint64_t const size = bytes_->size();
    std::uint64_t const pad = (alignment_ - end_of_infos % alignment_) % alignment_;
    data_offset_ = end_of_infos + pad;
    std::uint64_t const data_size = data_offset_ <= size ? size - data_offset_ : 0;
    KVC_CHECK(tensors_.empty() || data_offset_ <= size, source_ << ": the data section would start at byte " << data_offset_
                                                                << ", after the end of the " << size << "-byte file");
    check_data(data_size);
  }

  GgufValue read_value(Cursor& c, std::uint32_t type, std::string const& key, std::string const& where, int depth) {
    KVC_CHECK(type <= 12, source_ << ": " << where << " has unknown value type " << type);
    GgufValue v;
    v.key_ = key;
    v.type_ = static_cast<GgufValueType>(type);
    v.element_type_ = v.type_;
    switch (v.type_) {
      case GgufValueType::kString:
        v.string_ = c.string(where, std::numeric_limits<std::uint64_t>::max());
        break;
      case GgufValueType::kArray: {
        KVC_CHECK(depth < kMaxArrayDepth, source_ << ": " << where << " nests arrays deeper than " << kMaxArrayDepth << " levels");
        std::uint32_t const et = c.u32(where + " (its element type)");
        KVC_CHECK(et <= 12, source_ << ": " << where << " is an array of unknown value type " << et);
        v.element_type_ = static_cast<GgufValueType>(et);
        v.count_ = c.u64(where + " (its element count)");
        std::uint64_t const min_bytes = min_value_bytes(v.element_type_);
        KVC_CHECK(v.count_ <= c.remaining() / min_bytes,
                  source_ << ": " << where << " claims " << v.count_ << " elements of " << gguf_value_type_name(v.element_type_)
                          << ", more than the " << c.remaining() << " bytes left in the file can hold");
        auto const n = static_cast<std::size_t>(v.count_);
        switch (v.element_type_) {
          case GgufValueType::kString:
            v.strings_.reserve(n);
            for (std::size_t i = 0; i < n; ++i) v.strings_.push_back(c.string(where + " element " + std::to_string(i), std::numeric_limits<std::uint64_t>::max()));
            break;
          case GgufValueType::kArray:
            v.arrays_.reserve(n);
            for (std::size_t i = 0; i < n; ++i)
              v.arrays_.push_back(read_value(c, et, key, where + " element " + std::to_string(i), depth + 1));
            break;
          case GgufValueType::kFloat32:
          case GgufValueType::kFloat64:
            v.numbers_.resize(n);
            for (std::size_t i = 0; i < n; ++i) v.numbers_[i] = read_number(c, v.element_type_, where);
            break;
          default:
            v.bits_array_.resize(n);
            for (std::size_t i = 0; i < n; ++i) v.bits_array_[i] = read_bits(c, v.element_type_, where + " element " + std::to_string(i));
            break;
        }
        break;
      }
      case GgufValueType::kFloat32:
      case GgufValueType::kFloat64:
        v.number_ = read_number(c, v.type_, where);
        break;
      default:
        v.bits_ = read_bits(c, v.type_, where);
        break;
    }
    return v;
  }

  /// Bytes the smallest value of a type takes (an array: element type and count).
  static std::uint64_t min_value_bytes(GgufValueType t) noexcept {
    switch (t) {
      case GgufValueType::kUint8: case GgufValueType::kInt8: case GgufValueType::kBool: return 1;
      case GgufValueType::kUint16: case GgufValueType::kInt16: return 2;
      case GgufValueType::kUint32: case GgufValueType::kInt32: case GgufValueType::kFloat32: return 4;
      case GgufValueType::kString: case GgufValueType::kUint64: case GgufValueType::kInt64: case GgufValueType::kFloat64: return 8;
      case GgufValueType::kArray: return 12;
    }
    return 1;
  }

  /// An integer or bool, sign-extended when signed.
  std::uint64_t read_bits(Cursor& c, GgufValueType t, std::string const& where) {
    int const n = static_cast<int>(min_value_bytes(t));
    std::uint64_t bits = c.le(n, where);
    if (t == GgufValueType::kBool) {
      KVC_CHECK(bits <= 1, source_ << ": " << where << " is a bool of value " << bits << " (must be 0 or 1)");
    } else if (GgufValue::is_signed(t) && n < 8 && (bits >> (8 * n - 1)) != 0) {
      bits |= ~std::uint64_t{0} << (8 * n);
    }
    return bits;
  }

  static double read_number(Cursor& c, GgufValueType t, std::string const& where) {
    if (t == GgufValueType::kFloat32) {
      auto const bits = static_cast<std::uint32_t>(c.le(4, where));
      float f = 0.0F;
      std::memcpy(&f, &bits, 4);
      return static_cast<double>(f);
    }
    std::uint64_t const bits = c.le(8, where);
    double d = 0.0;
    std::memcpy(&d, &bits, 8);
    return d;
  }

  GgufTensorInfo read_tensor_info(Cursor& c, std::uint64_t index) {
    GgufTensorInfo t;
    t.name = c.string("tensor info " + std::to_string(index) + " (its name)", kMaxTensorNameBytes);
    std::string const where = "tensor '" + detail::printable(t.name) + "'";
    KVC_CHECK(by_name_.count(t.name) == 0, source_ << ": " << where << " appears twice");
    std::uint32_t const n_dims = c.u32(where + " (its dimension count)");
    KVC_CHECK(n_dims >= 1 && n_dims <= kMaxDims, source_ << ": " << where << " has " << n_dims << " dimensions (1 to " << kMaxDims << ")");
    constexpr auto kMax = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
    std::uint64_t numel = 1;
    for (std::uint32_t d = 0; d < n_dims; ++d) {
      std::uint64_t const ne = c.u64(where + " (dimension " + std::to_string(d) + ")");
      KVC_CHECK(ne <= kMax, source_ << ": " << where << " dimension " << d << " = " << ne << " exceeds 2^63 - 1");
      KVC_CHECK(ne == 0 || numel <= kMax / ne, source_ << ": " << where << " has more than 2^63 - 1 elements (" << numel
                                                       << " x " << ne << " at dimension " << d << ")");
      numel *= ne;
      t.dims.push_back(static_cast<std::int64_t>(ne));
    }
    t.numel = static_cast<std::int64_t>(numel);
    t.type = c.u32(where + " (its type)");
    GgmlTypeTraits const tr = t.traits();
    KVC_CHECK(tr.block_elements != 0, source_ << ": " << where << " has unknown ggml type " << t.type);
    KVC_CHECK(t.dims[0] % tr.block_elements == 0, source_ << ": " << where << " of type " << tr.name << " has innermost dimension "
                                                          << t.dims[0] << ", not a multiple of its block of " << tr.block_elements);
    // numel / block_elements blocks; their bytes must fit in int64 too.
    std::uint64_t const blocks = numel / tr.block_elements;
    KVC_CHECK(blocks <= kMax / tr.block_bytes, source_ << ": " << where << " of type " << tr.name << " needs more than 2^63 - 1 bytes ("
                                                       << blocks << " blocks of " << tr.block_bytes << ")");
    t.bytes = blocks * tr.block_bytes;
    t.offset = c.u64(where + " (its offset)");
    by_name_.emplace(t.name, static_cast<std::size_t>(index));
    return t;
  }

  /// Offsets aligned, every tensor inside the data section, no two sharing bytes.
  void check_data(std::uint64_t data_size) const {
    for (auto const& t : tensors_) {
      std::string const where = "tensor '" + detail::printable(t.name) + "'";
      KVC_CHECK(t.offset % alignment_ == 0, source_ << ": " << where << " has offset " << t.offset
                                                    << ", not a multiple of the alignment " << alignment_);
      KVC_CHECK(t.offset <= data_size && t.bytes <= data_size - t.offset,
                source_ << ": " << where << " (" << t.traits().name << ", " << t.bytes << " bytes at offset " << t.offset
                        << ") reaches past the " << data_size << "-byte data section");
    }
    std::vector<GgufTensorInfo const*> order;
    for (auto const& t : tensors_)
      if (t.bytes != 0) order.push_back(&t);
    std::sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
    for (std::size_t i = 1; i < order.size(); ++i) {
      GgufTensorInfo const& a = *order[i - 1];
      GgufTensorInfo const& b = *order[i];
      KVC_CHECK(b.offset >= a.offset + a.bytes, source_ << ": tensor '" << detail::printable(b.name) << "' at offset " << b.offset
                                                        << " overlaps tensor '" << detail::printable(a.name) << "' [" << a.offset
                                                        << ", " << a.offset + a.bytes << ")");
    }
  }

  std::string source_;
  std::shared_ptr<GgufBytes const> bytes_;
  std::uint32_t version_ = 0;
  std::uint32_t alignment_ = kDefaultAlignment;
  std::uint64_t data_offset_ = 0;
  std::map<std::string, GgufValue> metadata_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, std::size_t> by_name_;
};

}  // namespace kvc_engine
