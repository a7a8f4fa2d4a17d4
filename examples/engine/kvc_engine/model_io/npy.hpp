#pragma once
/// \file
/// \brief A reader of NumPy's `.npy` files holding one little-endian float32 or float64 array in C
/// order, read as float: LU-KV ships its budget curves in this format. Hand-written because no
/// packaged C++ library reads it; the format is a magic string, a version, and a header that is a
/// Python dict literal with exactly the keys `descr`, `fortran_order` and `shape`.

#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "kvcompress/core/error.hpp"

namespace kvc_engine {

struct NpyArray {
  std::vector<std::int64_t> shape;
  std::vector<float> data;  // C order
};

namespace detail {

/// The text after `'key':` in a .npy header dict, up to the next top-level ',' or '}' (a tuple whole).
inline std::string npy_field(std::string const& header, std::string const& key, std::string const& path) {
  std::size_t const at = header.find("'" + key + "'");
  KVC_CHECK(at != std::string::npos, path << ": the .npy header has no '" << key << "': " << header);
  std::size_t i = header.find(':', at);
  KVC_CHECK(i != std::string::npos, path << ": the .npy header's '" << key << "' has no value: " << header);
  ++i;
  while (i < header.size() && header[i] == ' ') ++i;
  std::size_t end = i;
  if (i < header.size() && header[i] == '(') end = header.find(')', i) + 1;
  else end = header.find_first_of(",}", i);
  KVC_CHECK(end != std::string::npos && end > i, path << ": the .npy header's '" << key << "' is malformed: " << header);
  return header.substr(i, end - i);
}

}  // namespace detail

/// \brief Reads a .npy file of float32 ('<f4') or float64 ('<f8') values in C order (float64 values are
/// rounded to float, as `torch.as_tensor(curve, dtype=torch.float32)` does).
[[nodiscard]] inline NpyArray read_npy(std::string const& path) {
  std::ifstream in(path, std::ios::binary);
  KVC_CHECK(in.good(), "cannot open .npy file " << path);
  char magic[8] = {};
  in.read(magic, 8);
  KVC_CHECK(in.gcount() == 8 && std::memcmp(magic, "\x93NUMPY", 6) == 0,
            path << " is not a .npy file (no \\x93NUMPY magic)");
  auto const major = static_cast<unsigned char>(magic[6]);
  KVC_CHECK(major >= 1 && major <= 3, path << ": .npy format version " << int(major) << " is not 1, 2 or 3");
  unsigned char len_bytes[4] = {};
  int const len_size = major == 1 ? 2 : 4;
  in.read(reinterpret_cast<char*>(len_bytes), len_size);
  std::uint32_t header_len = 0;
  for (int i = len_size - 1; i >= 0; --i) header_len = header_len * 256u + len_bytes[i];
  KVC_CHECK(in.good() && header_len <= (1u << 20), path << ": .npy header length " << header_len << " is not readable");
  std::string header(header_len, '\0');
  in.read(header.data(), static_cast<std::streamsize>(header_len));
  KVC_CHECK(in.gcount() == static_cast<std::streamsize>(header_len), path << ": short .npy header");
  std::string const descr = detail::npy_field(header, "descr", path);
  KVC_CHECK(descr == "'<f4'" || descr == "'<f8'",
            path << ": .npy dtype " << descr << " is not supported; float32 ('<f4') and float64 ('<f8') are");
  KVC_CHECK(detail::npy_field(header, "fortran_order", path) == "False",
            path << ": a Fortran-order .npy array is not supported; save it in C order");
  std::string const shape = detail::npy_field(header, "shape", path);
  NpyArray a;
  std::int64_t count = 1;
  for (std::size_t i = 1; i + 1 < shape.size();) {  // "(99, 32, 8)" or "(5,)" or "()"
    std::size_t end = shape.find_first_of(",)", i);
    std::string const item = shape.substr(i, end - i);
    if (item.find_first_not_of(' ') != std::string::npos) {
      KVC_CHECK(item.find_first_not_of(" 0123456789") == std::string::npos && item.size() <= 14,
                path << ": .npy shape " << shape << " holds '" << item << "', not a dimension");
      long long const v = std::stoll(item);
      KVC_CHECK(v >= 0 && v <= (std::int64_t{1} << 40), path << ": .npy shape " << shape << " holds " << v);
      a.shape.push_back(v);
      count *= v;
      KVC_CHECK(count <= (std::int64_t{1} << 40), path << ": .npy shape " << shape << " is too large");
    }
    i = end + 1;
  }
  bool const f8 = descr == "'<f8'";
  std::size_t const bytes = static_cast<std::size_t>(count) * (f8 ? 8u : 4u);
  std::vector<char> raw(bytes);
  in.read(raw.data(), static_cast<std::streamsize>(bytes));
  KVC_CHECK(static_cast<std::size_t>(in.gcount()) == bytes,
            path << ": .npy data holds " << in.gcount() << " bytes, shape " << shape << " needs " << bytes);
  a.data.resize(static_cast<std::size_t>(count));
  for (std::size_t i = 0; i < a.data.size(); ++i) {
    if (f8) {
      double x = 0.0;
      std::memcpy(&x, raw.data() + 8 * i, 8);
      a.data[i] = static_cast<float>(x);
    } else {
      std::memcpy(&a.data[i], raw.data() + 4 * i, 4);
    }
  }
  return a;
}

}  // namespace kvc_engine
