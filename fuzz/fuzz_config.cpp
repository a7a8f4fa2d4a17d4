// libFuzzer target: the engine's config.json reader (examples/engine/kvc_engine/model_io/config.hpp) on arbitrary
// text, then the RotaryEmbedding the engine builds from the result, for every RoPE variant
// (`rope_parameters` or the older `rope_scaling`: default, linear, dynamic, llama3, yarn).
// Accepted outcomes: a ModelConfig, or kvcompress::Error. A crash, a sanitizer report, another
// exception type, or an accepted config that breaks the reader's promises is a bug: every size in
// range, heads divisible, head_dim even and at most 4096, and a rotary embedding that builds without
// error and yields finite frequencies, a finite positive attention scaling, and finite cos/sin.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "kvc_engine/model_io/config.hpp"
#include "kvcompress/rope/rotary_embedding.hpp"

namespace {

[[noreturn]] void postcondition_failed() { std::abort(); }

void require_finite(std::vector<float> const& v) {
  for (float x : v)
    if (!std::isfinite(x)) postcondition_failed();
}

void check_sizes(kvc_engine::ModelConfig const& c) {
  constexpr std::int64_t kMax = std::int64_t{1} << 40;
  for (std::int64_t v : {c.vocab_size, c.hidden_size, c.intermediate_size, c.num_layers, c.num_heads, c.num_kv_heads,
                         c.max_position_embeddings})
    if (v < 1 || v > kMax) postcondition_failed();
  if (c.num_heads % c.num_kv_heads != 0) postcondition_failed();
  if (c.head_dim < 2 || c.head_dim > 4096 || c.head_dim % 2 != 0) postcondition_failed();
  if (c.sliding_window < 0 || c.sliding_window > kMax) postcondition_failed();
  if (!(c.rms_norm_eps > 0.0) || !std::isfinite(c.rms_norm_eps)) postcondition_failed();
  if (c.rope.head_dim != c.head_dim || c.rope.max_position_embeddings != c.max_position_embeddings) postcondition_failed();
}

/// What the engine computes from the RoPE configuration: it must not throw once the reader accepted it.
void check_rope(kvcompress::RopeConfig const& rc) {
  kvcompress::RotaryEmbedding const rope(rc);
  std::size_t const d = static_cast<std::size_t>(rope.head_dim());
  require_finite(rope.inv_freq());
  for (float f : rope.inv_freq())
    if (f < 0.0f) postcondition_failed();
  float const a = rope.attention_scaling();
  if (!std::isfinite(a) || !(a > 0.0f)) postcondition_failed();

  std::vector<float> cos(d), sin(d), inv(d / 2);
  std::int64_t const max_pos = rc.max_position_embeddings;
  // Inside the trained context, and (dynamic NTK) past it, where the base grows with the length.
  for (std::int64_t seq_len : {std::int64_t{1}, max_pos, 2 * max_pos + 1}) {
    rope.inv_freq_for(seq_len, inv.data());
    require_finite(inv);
    rope.cos_sin(seq_len - 1, seq_len, cos.data(), sin.data());
    require_finite(cos);
    require_finite(sin);
  }
  rope.averaged_rotation(max_pos, 3, cos.data(), sin.data());
  require_finite(cos);
  require_finite(sin);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size) {
  std::string const text(reinterpret_cast<char const*>(data), size);
  kvc_engine::ModelConfig config;
  try {
    config = kvc_engine::parse_model_config(text, "fuzz/config.json");
  } catch (kvcompress::Error const&) {
    return 0;  // the documented outcome for a malformed or unsupported config
  }
  check_sizes(config);
  try {
    check_rope(config.rope);
  } catch (kvcompress::Error const&) {
    postcondition_failed();  // the reader accepted a RoPE configuration the engine then rejects
  }
  return 0;
}
