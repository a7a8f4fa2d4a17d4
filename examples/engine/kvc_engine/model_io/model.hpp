#pragma once
/// \file
/// \brief `load_model`: the configuration and the weights of a checkpoint — a GGUF file (`gguf_model.hpp`)
/// or an HF folder (`config.json` and one or more `*.safetensors`, sharded through
/// `model.safetensors.index.json` or not). Weights are widened or dequantised to float on load: the engine
/// computes in float32 throughout.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "kvc_engine/model_io/config.hpp"
#include "kvc_engine/model_io/gguf_model.hpp"
#include "kvc_engine/model_io/model_weights.hpp"
#include "kvc_engine/model_io/safetensors.hpp"

namespace kvc_engine {

namespace detail {

/// Every tensor of a checkpoint folder, by name, across its shards.
class Checkpoint {
 public:
  explicit Checkpoint(std::string folder) : folder_(std::move(folder)) {
    namespace fs = std::filesystem;
    KVC_CHECK(fs::is_directory(folder_), "checkpoint folder " << folder_ << " does not exist");
    std::vector<std::string> files;
    fs::path const index = fs::path(folder_) / "model.safetensors.index.json";
    if (fs::exists(index)) {
      std::ifstream in(index);
      std::ostringstream text;
      text << in.rdbuf();
      std::string const s = text.str();
      nlohmann::json const j = parse_json(s.data(), s.data() + s.size(), 8, index.string());
      KVC_CHECK(j.is_object() && j.contains("weight_map") && j.at("weight_map").is_object(),
                index.string() << ": 'weight_map' must be an object");
      for (auto const& [name, file] : j.at("weight_map").items()) {
        KVC_CHECK(file.is_string(), index.string() << ": weight_map['" << name << "'] must be a file name, got " << brief(file));
        std::string const f = file.get<std::string>();
        KVC_CHECK(!f.empty() && f.find('/') == std::string::npos && f.find('\\') == std::string::npos && f != "." && f != "..",
                  index.string() << ": weight_map['" << name << "'] = '" << f << "' must name a file in the folder");
        if (std::find(files.begin(), files.end(), f) == files.end()) files.push_back(f);
      }
    } else {
      for (auto const& e : fs::directory_iterator(folder_))
        if (e.is_regular_file() && e.path().extension() == ".safetensors") files.push_back(e.path().filename().string());
      std::sort(files.begin(), files.end());
    }
    KVC_CHECK(!files.empty(), "checkpoint folder " << folder_ << " holds no *.safetensors file");
    for (auto const& f : files) {
      auto file = std::make_shared<SafetensorsFile>(SafetensorsFile::open((fs::path(folder_) / f).string()));
      for (auto const& name : file->names()) {
        auto const [it, inserted] = where_.emplace(name, file);
        KVC_CHECK(inserted, "tensor '" << name << "' is stored twice: in " << it->second->source() << " and " << file->source());
      }
    }
  }

  [[nodiscard]] bool contains(std::string const& name) const { return where_.count(name) != 0; }

  /// The tensor as float, after checking its shape. \param why says which config field requires it.
  [[nodiscard]] std::vector<float> take(std::string const& name, std::vector<std::int64_t> const& shape,
                                        char const* why = "") const {
    auto const it = where_.find(name);
    KVC_CHECK(it != where_.end(), "checkpoint " << folder_ << " has no tensor '" << name << "'" << why);
    TensorInfo const& t = it->second->info(name);
    KVC_CHECK(t.shape == shape, it->second->source() << ": tensor '" << name << "' has shape " << shape_string(t.shape)
                                                     << ", config.json implies " << shape_string(shape));
    std::vector<float> w = it->second->read_as_float(name);
    check_finite_weights(w, it->second->source() + ": tensor '" + name + "'");
    return w;
  }

 private:
  static std::string shape_string(std::vector<std::int64_t> const& s) {
    std::ostringstream os;
    os << "[";
    for (std::size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
    os << "]";
    return os.str();
  }

  std::string folder_;
  std::map<std::string, std::shared_ptr<SafetensorsFile>> where_;
};

}  // namespace detail

/// \brief Loads `config.json` and the weights of an HF checkpoint folder.
inline Model load_hf_model(std::string const& folder) {
  Model m;
  m.config = load_model_config(folder);
  ModelConfig const& c = m.config;
  detail::Checkpoint const ck(folder);
  std::int64_t const D = c.hidden_size, I = c.intermediate_size, d = c.head_dim;
  std::int64_t const q_dim = c.num_heads * d, kv_dim = c.num_kv_heads * d;
  m.embed = ck.take("model.embed_tokens.weight", {c.vocab_size, D});
  m.final_norm = ck.take("model.norm.weight", {D});
  if (!c.tie_word_embeddings) m.lm_head = ck.take("lm_head.weight", {c.vocab_size, D}, " (config.json: tie_word_embeddings is false)");
  char const* const bias_why = " (config.json implies attention biases)";
  // Each layer is appended once its first tensor is found: sizing the vector from config.json's
  // num_hidden_layers first turned a corrupt count (up to 2^40) into std::bad_alloc.
  for (std::int64_t l = 0; l < c.num_layers; ++l) {
    LayerWeights& w = m.layers.emplace_back();
    std::string const p = "model.layers." + std::to_string(l) + ".";
    w.input_norm = ck.take(p + "input_layernorm.weight", {D});
    w.post_norm = ck.take(p + "post_attention_layernorm.weight", {D});
    w.q_w = ck.take(p + "self_attn.q_proj.weight", {q_dim, D});
    w.k_w = ck.take(p + "self_attn.k_proj.weight", {kv_dim, D});
    w.v_w = ck.take(p + "self_attn.v_proj.weight", {kv_dim, D});
    w.o_w = ck.take(p + "self_attn.o_proj.weight", {D, q_dim});
    if (c.qkv_bias) {
      w.q_b = ck.take(p + "self_attn.q_proj.bias", {q_dim}, bias_why);
      w.k_b = ck.take(p + "self_attn.k_proj.bias", {kv_dim}, bias_why);
      w.v_b = ck.take(p + "self_attn.v_proj.bias", {kv_dim}, bias_why);
    }
    if (c.o_bias) w.o_b = ck.take(p + "self_attn.o_proj.bias", {D}, bias_why);
    if (c.qk_norm) {
      w.q_norm = ck.take(p + "self_attn.q_norm.weight", {d}, " (Qwen3 normalises queries and keys per head)");
      w.k_norm = ck.take(p + "self_attn.k_norm.weight", {d}, " (Qwen3 normalises queries and keys per head)");
    }
    w.gate_w = ck.take(p + "mlp.gate_proj.weight", {I, D});
    w.up_w = ck.take(p + "mlp.up_proj.weight", {I, D});
    w.down_w = ck.take(p + "mlp.down_proj.weight", {D, I});
    if (c.mlp_bias) {
      w.gate_b = ck.take(p + "mlp.gate_proj.bias", {I}, " (config.json: mlp_bias is true)");
      w.up_b = ck.take(p + "mlp.up_proj.bias", {I}, " (config.json: mlp_bias is true)");
      w.down_b = ck.take(p + "mlp.down_proj.bias", {D}, " (config.json: mlp_bias is true)");
    }
  }
  return m;
}

/// \brief Loads a model: `path` is a GGUF file or an HF checkpoint folder.
inline Model load_model(std::string const& path) {
  return std::filesystem::is_regular_file(path) ? load_gguf_model(path) : load_hf_model(path);
}

}  // namespace kvc_engine
