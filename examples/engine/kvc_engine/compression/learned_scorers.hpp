#pragma once
/// \file
/// \brief The weights of the learned scorers, read from the caller's safetensors file: KVzap's
/// per-layer surrogates in kvpress's `KVzapModel` layout (`layers.<l>.weight`/`.bias` for the linear
/// model; `layers.<l>.0.*` and `layers.<l>.2.*` for the MLP, as `nn.Sequential` names them), and
/// FastKVzip's per-layer gates (`<l>.q_proj.weight`, `<l>.q_proj.bias`, `<l>.k_proj.weight`,
/// `<l>.q_norm.weight`, `<l>.k_norm.weight`, `<l>.k_base`, `<l>.b`: kvpress's `FastKVzipGate` state
/// dicts, which it loads from a `.pt` list, saved as one safetensors file).

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "kvc_engine/model_io/safetensors.hpp"
#include "kvcompress/press/fast_kvzip.hpp"
#include "kvcompress/press/kvzap.hpp"

namespace kvc_engine {

/// \brief Every layer's KVzap surrogate, owned.
struct KVzapCheckpoint {
  kvcompress::KVzapModelType type = kvcompress::KVzapModelType::kMlp;
  std::int64_t hidden_size = 0, hidden_dim = 0, kv_heads = 0;
  std::vector<std::vector<float>> w1, b1, w2, b2;  // per layer

  [[nodiscard]] int num_layers() const noexcept { return static_cast<int>(w1.size()); }
  /// \brief Layer l's weights, pointing into this checkpoint.
  [[nodiscard]] kvcompress::KVzapWeights layer(int l) const {
    KVC_CHECK(l >= 0 && l < num_layers(), "KVzap checkpoint has " << num_layers() << " layers, layer " << l << " asked");
    auto const u = static_cast<std::size_t>(l);
    bool const mlp = type == kvcompress::KVzapModelType::kMlp;
    return {w1[u].data(), b1[u].data(), mlp ? w2[u].data() : nullptr, mlp ? b2[u].data() : nullptr,
            hidden_size, hidden_dim, kv_heads};
  }
};

namespace detail {

/// `name` of `file` as float, with the shape `shape`.
inline std::vector<float> read_shaped(SafetensorsFile const& file, std::string const& name, std::vector<std::int64_t> const& shape) {
  auto const& info = file.info(name);
  bool same = info.shape.size() == shape.size();
  for (std::size_t i = 0; same && i < shape.size(); ++i) same = info.shape[i] == shape[i];
  if (!same) {
    std::string want, got;
    for (auto s : shape) want += (want.empty() ? "" : ", ") + std::to_string(s);
    for (auto s : info.shape) got += (got.empty() ? "" : ", ") + std::to_string(s);
    KVC_THROW(file.source() << ": tensor '" << name << "' has shape [" << got << "], expected [" << want << "]");
  }
  return file.read_as_float(name);
}

}  // namespace detail

/// \brief Reads a KVzap checkpoint (kvpress's `KVzapModel.save_pretrained` safetensors); the model
/// type follows from the tensor names. Layers are counted until `layers.<L>` is missing.
[[nodiscard]] inline KVzapCheckpoint load_kvzap(SafetensorsFile const& file) {
  std::string const& path = file.source();
  KVzapCheckpoint ck;
  bool const mlp = file.contains("layers.0.0.weight");
  KVC_CHECK(mlp || file.contains("layers.0.weight"),
            path << " holds no KVzap surrogate: neither 'layers.0.weight' (linear) nor 'layers.0.0.weight' (mlp)");
  ck.type = mlp ? kvcompress::KVzapModelType::kMlp : kvcompress::KVzapModelType::kLinear;
  auto const& first = file.info(mlp ? "layers.0.0.weight" : "layers.0.weight").shape;
  KVC_CHECK(first.size() == 2, path << ": a KVzap weight must be a matrix, got " << first.size() << " dimensions");
  ck.hidden_size = first[1];
  if (mlp) {
    ck.hidden_dim = first[0];
    auto const& second = file.info("layers.0.2.weight").shape;
    KVC_CHECK(second.size() == 2, path << ": a KVzap weight must be a matrix, got " << second.size() << " dimensions");
    ck.kv_heads = second[0];
  } else {
    ck.kv_heads = first[0];
  }
  for (int l = 0;; ++l) {
    std::string const p = "layers." + std::to_string(l) + ".";
    if (!file.contains(p + (mlp ? "0.weight" : "weight"))) break;
    if (mlp) {
      ck.w1.push_back(detail::read_shaped(file, p + "0.weight", {ck.hidden_dim, ck.hidden_size}));
      ck.b1.push_back(detail::read_shaped(file, p + "0.bias", {ck.hidden_dim}));
      ck.w2.push_back(detail::read_shaped(file, p + "2.weight", {ck.kv_heads, ck.hidden_dim}));
      ck.b2.push_back(detail::read_shaped(file, p + "2.bias", {ck.kv_heads}));
    } else {
      ck.w1.push_back(detail::read_shaped(file, p + "weight", {ck.kv_heads, ck.hidden_size}));
      ck.b1.push_back(detail::read_shaped(file, p + "bias", {ck.kv_heads}));
    }
  }
  return ck;
}

[[nodiscard]] inline KVzapCheckpoint load_kvzap(std::string const& path) { return load_kvzap(SafetensorsFile::open(path)); }

/// \brief Every layer's FastKVzip gate, owned.
struct FastKVzipCheckpoint {
  std::int64_t hidden_size = 0, kv_heads = 0, group = 0, dim = 0, sink = 0;
  std::vector<std::vector<float>> q_proj_weight, q_proj_bias, k_proj_weight, q_norm, k_norm, k_base, bias;  // per layer

  [[nodiscard]] int num_layers() const noexcept { return static_cast<int>(q_proj_weight.size()); }
  /// \brief Layer l's gate, pointing into this checkpoint.
  [[nodiscard]] kvcompress::FastKVzipGate layer(int l) const {
    KVC_CHECK(l >= 0 && l < num_layers(), "FastKVzip checkpoint has " << num_layers() << " layers, layer " << l << " asked");
    auto const u = static_cast<std::size_t>(l);
    return {q_proj_weight[u].data(), q_proj_bias[u].data(), k_proj_weight[u].data(), q_norm[u].data(), k_norm[u].data(),
            k_base[u].data(), bias[u].data(), hidden_size, kv_heads, group, dim, sink};
  }
};

/// \brief Reads FastKVzip gates; sizes follow from layer 0's shapes, layers are counted until
/// `<L>.q_proj.weight` is missing.
[[nodiscard]] inline FastKVzipCheckpoint load_fast_kvzip(SafetensorsFile const& file) {
  std::string const& path = file.source();
  KVC_CHECK(file.contains("0.q_proj.weight"), path << " holds no FastKVzip gate: no tensor '0.q_proj.weight'");
  auto const& kb = file.info("0.k_base").shape;
  auto const& b = file.info("0.b").shape;
  auto const& qw = file.info("0.q_proj.weight").shape;
  KVC_CHECK(kb.size() == 4 && b.size() == 3 && qw.size() == 2,
            path << ": FastKVzip gate tensors must be k_base [kv_heads, 1, sink, dim], b [kv_heads, 1, group], q_proj.weight "
                    "[kv_heads · group · dim, hidden_size]");
  FastKVzipCheckpoint ck;
  ck.kv_heads = kb[0];
  ck.sink = kb[2];
  ck.dim = kb[3];
  ck.group = b[2];
  ck.hidden_size = qw[1];
  std::int64_t const H = ck.kv_heads, G = ck.group, d = ck.dim, D = ck.hidden_size;
  for (int l = 0;; ++l) {
    std::string const p = std::to_string(l) + ".";
    if (!file.contains(p + "q_proj.weight")) break;
    ck.q_proj_weight.push_back(detail::read_shaped(file, p + "q_proj.weight", {H * G * d, D}));
    ck.q_proj_bias.push_back(detail::read_shaped(file, p + "q_proj.bias", {H * G * d}));
    ck.k_proj_weight.push_back(detail::read_shaped(file, p + "k_proj.weight", {H * d, D}));
    ck.q_norm.push_back(detail::read_shaped(file, p + "q_norm.weight", {d}));
    ck.k_norm.push_back(detail::read_shaped(file, p + "k_norm.weight", {d}));
    ck.k_base.push_back(detail::read_shaped(file, p + "k_base", {H, 1, ck.sink, d}));
    ck.bias.push_back(detail::read_shaped(file, p + "b", {H, 1, G}));
  }
  return ck;
}

[[nodiscard]] inline FastKVzipCheckpoint load_fast_kvzip(std::string const& path) {
  return load_fast_kvzip(SafetensorsFile::open(path));
}

}  // namespace kvc_engine
