#pragma once
/// \file
/// \brief kvcompress's prefill presses by name, with kvpress's defaults, as engine compressors — the list
/// a command line or an evaluation loops over.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "kvc_engine/compression/compressor.hpp"
#include "kvc_engine/compression/learned_scorers.hpp"
#include "kvc_engine/model_io/npy.hpp"
#include "kvc_engine/model_io/safetensors.hpp"
#include "kvc_engine/forward/engine.hpp"

namespace kvc_engine {

/// \brief A compressor for a press that takes a Gaussian sketch (`sketch`, [batch, kv_heads, head_dim,
/// sketch_dimension]): like kvpress, every layer and call gets a fresh N(0, 1/sketch_dimension) draw —
/// kvpress from torch's global generator, here from a seeded 64-bit Mersenne Twister through
/// Box–Muller, the same on every platform.
template <class Press>
[[nodiscard]] Compressor sketch_press(Press press, std::string name, kvcompress::CpuDevice dev, std::uint64_t seed = 0) {
  struct State {
    std::mt19937_64 rng;
    std::vector<float> sketch;  // [batch, kv_heads, head_dim, sketch_dimension]
    std::vector<std::byte> scratch;
  };
  auto state = std::make_shared<State>(State{std::mt19937_64(seed), {}, {}});
  Compressor c;
  c.name = std::move(name);
  c.needs = needs_of(press);
  c.after_prefill = [press, dev, state](kvcompress::Observation<float> const& obs, kvcompress::KVCacheView<float> const& cache) {
    auto const& e = cache.extents;
    KVC_CHECK(press.sketch_dimension > 0, "sketch_dimension must be positive, got " << press.sketch_dimension);
    state->sketch.resize(static_cast<std::size_t>(e.batch * e.kv_heads * e.head_dim * press.sketch_dimension));
    double const scale = 1.0 / std::sqrt(static_cast<double>(press.sketch_dimension));
    auto const uniform = [&] { return static_cast<double>(state->rng() >> 11) * 0x1.0p-53; };  // [0, 1)
    for (std::size_t i = 0; i < state->sketch.size(); i += 2) {
      double const radius = std::sqrt(-2.0 * std::log(1.0 - uniform())), angle = 2.0 * M_PI * uniform();
      state->sketch[i] = static_cast<float>(radius * std::cos(angle) * scale);
      if (i + 1 < state->sketch.size()) state->sketch[i + 1] = static_cast<float>(radius * std::sin(angle) * scale);
    }
    Press p = press;
    p.sketch = state->sketch.data();
    state->scratch.resize(kvcompress::compress_workspace_bytes(dev, p, obs, cache));
    kvcompress::compress(dev, p, obs, cache, kvcompress::Workspace(state->scratch.data(), state->scratch.size()));
  };
  return c;
}

/// \brief KVCompose after the prefill: the engine replays the prefill's tokens (kvpress's default, the
/// context itself), the replay's attention of every layer goes into the statistics, then the plan across
/// layers compacts every layer.
[[nodiscard]] inline Compressor kvcompose_compressor(kvcompress::KVComposePress press, std::string name, kvcompress::CpuDevice dev) {
  auto scratch = std::make_shared<std::vector<std::byte>>();
  Compressor c;
  c.name = std::move(name);
  c.after_prefill_model = [press, dev, scratch](Engine& engine, KVCache& cache, ForwardRecord const& record) {
    ModelConfig const& m = engine.model().config;
    kvcompress::KVComposeStatistics stats(press, static_cast<int>(m.num_layers), m.num_heads, record.tokens);
    std::vector<float> probs;
    engine.replay(cache, record.token_ids, [&](ForwardRecord const& pass) {
      for (std::int64_t l = 0; l < m.num_layers; ++l) {
        engine.attention_probabilities(cache, l, pass.queries[static_cast<std::size_t>(l)], pass.tokens, pass.position, probs);
        stats.add(dev, static_cast<int>(l), kvcompress::make_tensor4(probs.data(), {1, m.num_heads, pass.tokens, cache.length(l, 0)}));
      }
    });
    kvcompress::KVComposePlan const plan = kvcompress::kvcompose_plan(dev, press, stats, m.num_kv_heads);
    for (std::int64_t l = 0; l < m.num_layers; ++l) {
      kvcompress::KVCacheView<float> const view = cache.view(l);
      scratch->resize(kvcompress::kvcompose_compress_workspace_bytes(dev, view));
      kvcompress::kvcompose_compress(dev, plan, static_cast<int>(l), view, kvcompress::Workspace(scratch->data(), scratch->size()));
    }
  };
  return c;
}

/// \brief The token ids of KVzip's reconstruction prompt, from the model's tokenizer (kvzip_prompt.hpp):
/// kvpress's "\n\nRepeat the previous context exactly." (first chunk), "\n\nRepeat the part of the previous
/// context exactly, starting with" (later chunks, followed by the previous chunk's last 8 tokens) and the chat
/// template's suffix after a user turn ("\n" without a template). The context's first `prefix_length`
/// tokens (the chat template's head) are not reconstructed.
struct KVzipPrompt {
  std::vector<std::int32_t> first, later, suffix;
  std::int64_t prefix_length = 0;
};

/// \brief The reconstruction passes of KVzip over a context of `context` [n] tokens: per chunk of
/// `chunk_size` tokens after the prompt's prefix, its range [start, end) and the tokens replayed (prompt,
/// for later chunks the previous chunk's last 8 tokens, suffix, chunk), as kvpress's `KVzipPress.prepare`.
struct KVzipPass {
  std::int64_t start = 0, end = 0;
  std::vector<std::int32_t> input;
};

[[nodiscard]] inline std::vector<KVzipPass> kvzip_passes(std::vector<std::int32_t> const& context, std::int64_t chunk_size,
                                                         KVzipPrompt const& prompt) {
  std::int64_t const ctx = static_cast<std::int64_t>(context.size());
  KVC_CHECK(chunk_size > 0, "KVzipPress chunk_size must be positive, got " << chunk_size);
  KVC_CHECK(prompt.prefix_length >= 0 && prompt.prefix_length < ctx,
            "KVzip: the context holds " << ctx << " tokens, none after the chat template's head of "
                                        << prompt.prefix_length << " tokens: nothing to reconstruct");
  std::vector<KVzipPass> passes;
  for (std::int64_t start = prompt.prefix_length; start < ctx; start += chunk_size) {
    KVzipPass p{start, std::min(ctx, start + chunk_size), start == prompt.prefix_length ? prompt.first : prompt.later};
    if (start > prompt.prefix_length)  // the previous chunk's last 8 tokens
      p.input.insert(p.input.end(), context.begin() + std::max<std::int64_t>(start - chunk_size, start - 8), context.begin() + start);
    p.input.insert(p.input.end(), prompt.suffix.begin(), prompt.suffix.end());
    p.input.insert(p.input.end(), context.begin() + start, context.begin() + p.end);
    passes.push_back(std::move(p));
  }
  return passes;
}

/// \brief KVzip's scores [layers, kv_heads, context] of a prefilled cache (the whole prefill is the
/// context): per pass of `kvzip_passes` the engine replays its tokens over the cache and every layer scores
/// the pass's chunk (`KVzipPress::score_chunk`); the prompt's prefix keeps score 0. Before the sink protection.
[[nodiscard]] inline std::vector<float> kvzip_scores(Engine& engine, KVCache& cache, ForwardRecord const& record,
                                                     kvcompress::KVzipPress const& press, KVzipPrompt const& prompt,
                                                     kvcompress::CpuDevice dev) {
  ModelConfig const& m = engine.model().config;
  std::int64_t const ctx = record.tokens, per_layer = m.num_kv_heads * ctx;
  std::vector<float> scores(static_cast<std::size_t>(m.num_layers * per_layer), 0.0f);
  for (KVzipPass const& p : kvzip_passes(record.token_ids, press.chunk_size, prompt)) {
    engine.replay(cache, p.input, [&](ForwardRecord const& pass) {
      for (std::int64_t l = 0; l < m.num_layers; ++l) {
        kvcompress::Observation<float> obs;
        obs.queries = kvcompress::make_tensor4(pass.queries[static_cast<std::size_t>(l)].data(), {1, m.num_heads, pass.tokens, m.head_dim});
        obs.rope = &engine.rope();
        obs.position = pass.position;
        press.score_chunk(dev, obs, cache.view(l), ctx, p.start, p.end, scores.data() + l * per_layer);
      }
    });
  }
  return scores;
}

/// \brief KVzip's and FastKVzip's eviction: `scores` [layers, kv_heads, n] of the prefill's n entries decide
/// how many entries each layer loses (across layers, or the same share with `layerwise`), then each layer
/// evicts its lowest across its heads, which really shortens them.
inline void evict_across_layers(KVCache& cache, std::vector<float> const& scores, std::int64_t n, double ratio, bool layerwise,
                                kvcompress::CpuDevice dev, std::vector<std::byte>& scratch) {
  std::int64_t const layers = cache.num_layers(), heads = cache.kv_heads(), per_layer = heads * n;
  std::vector<std::int64_t> pruned(static_cast<std::size_t>(layers));
  kvcompress::cross_layer_pruned_counts(scores.data(), static_cast<int>(layers), per_layer, ratio, layerwise, pruned.data());
  std::vector<float> row_scores;  // [kv_heads, capacity]: the layout evict_lowest_across_heads reads
  for (std::int64_t l = 0; l < layers; ++l) {
    kvcompress::KVCacheView<float> const view = cache.view(l);
    std::int64_t const cap = view.extents.capacity;
    row_scores.assign(static_cast<std::size_t>(heads * cap), 0.0f);
    for (std::int64_t h = 0; h < heads; ++h) std::copy_n(scores.data() + l * per_layer + h * n, n, row_scores.data() + h * cap);
    scratch.resize(kvcompress::evict_lowest_across_heads_workspace_bytes(dev, view));
    kvcompress::evict_lowest_across_heads(dev, view, row_scores.data(), pruned[static_cast<std::size_t>(l)],
                                          kvcompress::Workspace(scratch.data(), scratch.size()));
  }
}

/// \brief KVzip after the prefill: `kvzip_scores`, the sink protection, then the eviction across layers
/// shortens every head. KVzip+ needs each replay's hidden states, which the engine does not record: Error.
[[nodiscard]] inline Compressor kvzip_compressor(kvcompress::KVzipPress press, KVzipPrompt prompt, std::string name,
                                                 kvcompress::CpuDevice dev) {
  KVC_CHECK(!press.kvzip_plus_normalization, "kvzip_compressor: KVzip+ needs the reconstruction pass's hidden states, which "
                                             "the engine does not record");
  KVC_CHECK(!prompt.first.empty() && !prompt.later.empty(), "kvzip_compressor: the reconstruction prompts must not be empty");
  auto scratch = std::make_shared<std::vector<std::byte>>();
  Compressor c;
  c.name = std::move(name);
  c.after_prefill_model = [press, prompt, dev, scratch](Engine& engine, KVCache& cache, ForwardRecord const& record) {
    if (press.compression_ratio == 0.0) return;
    ModelConfig const& m = engine.model().config;
    std::vector<float> scores = kvzip_scores(engine, cache, record, press, prompt, dev);
    press.protect_sinks(scores.data(), m.num_layers * m.num_kv_heads, record.tokens);
    evict_across_layers(cache, scores, record.tokens, press.compression_ratio, press.layerwise, dev, *scratch);
  };
  return c;
}

/// \brief FINCH after the prefill: its window is the question, the prefill's last `record.question_tokens`
/// tokens (kvpress marks them with a delimiter token); with `rerotate_keys` the kept keys move to slots
/// 0 … kept − 1 and the next token's position is the kept count, as kvpress's pipeline continues a
/// re-rotated cache at its length.
[[nodiscard]] inline Compressor finch_compressor(kvcompress::FinchPress press, std::string name, kvcompress::CpuDevice dev) {
  auto scratch = std::make_shared<std::vector<std::byte>>();
  Compressor c;
  c.name = std::move(name);
  c.after_prefill_model = [press, dev, scratch](Engine& engine, KVCache& cache, ForwardRecord const& record) {
    KVC_CHECK(record.question_tokens > 0 && record.question_tokens < record.tokens,
              "press finch scores the context by the question's attention, and the prefill marks "
                  << record.question_tokens << " of its " << record.tokens
                  << " tokens as the question: its question must be inside the compressed prefill, before nothing else");
    kvcompress::FinchPress p = press;
    p.window_size = record.question_tokens;
    ObservationNeeds needs;
    needs.window = p.window_size;
    engine.compress(cache, record, [&](kvcompress::Observation<float> const& obs, kvcompress::KVCacheView<float> const& view) {
      scratch->resize(kvcompress::compress_workspace_bytes(dev, p, obs, view));
      kvcompress::compress(dev, p, obs, view, kvcompress::Workspace(scratch->data(), scratch->size()));
    }, needs);
    if (p.rerotate_keys) cache.advance(cache.length(0, 0) - cache.next_position());
  };
  return c;
}

/// \brief CAM around `Inner` during decoding (`after_step`), with `options` (kvpress's defaults by name).
/// Each prefill builds a fresh press for that cache's model shape and capacity (its running sums hold one
/// float per entry a row can hold) and seed-0 merge draws, so every sequence decodes the same way whoever
/// drives it — the engine's `generate` or the eval's answers.
template <class Inner>
[[nodiscard]] Compressor cam_compressor(Inner inner, kvcompress::CAMOptions options, std::string name, kvcompress::CpuDevice dev) {
  using Press = kvcompress::CAMPress<Inner, float>;
  auto state = std::make_shared<std::unique_ptr<Press>>();
  auto scratch = std::make_shared<std::vector<std::byte>>();
  Compressor c;
  c.name = std::move(name);
  c.after_prefill = [inner, options, state](kvcompress::Observation<float> const& obs, kvcompress::KVCacheView<float> const& cache) {
    if (obs.layer_idx != 0) return;
    auto const& e = cache.extents;
    *state = std::make_unique<Press>(inner, options,
                                     kvcompress::CAMShape{obs.num_layers, e.batch, obs.queries.shape[1], e.kv_heads, e.head_dim, e.capacity});
  };
  c.after_step = [state, dev, scratch](kvcompress::Observation<float> const& obs, kvcompress::KVCacheView<float> const& cache) {
    KVC_CHECK(*state != nullptr, "press cam decodes after a prefill: none was compressed by this compressor");
    scratch->resize((*state)->workspace_bytes(dev, obs, cache));
    (void)(*state)->step(dev, obs, cache, kvcompress::Workspace(scratch->data(), scratch->size()));
  };
  return c;
}

/// \brief ThinK after the prefill: every layer's kept key channels from the window queries (kvpress's
/// ThinKPress), then the layer's keys stored packed at the kept channels (`KVCache::pack_keys`), their
/// full-width memory given back. Keys appended later keep every channel, as in kvpress. At ratio 0
/// nothing is pruned, as kvpress returns the keys unchanged.
[[nodiscard]] inline Compressor think_compressor(kvcompress::ThinKPress press, std::string name, kvcompress::CpuDevice dev) {
  auto scratch = std::make_shared<std::vector<std::byte>>();
  Compressor c;
  c.name = std::move(name);
  c.needs = needs_of(press);
  c.after_prefill_model = [press, dev, scratch](Engine& engine, KVCache& cache, ForwardRecord const& record) {
    if (press.key_channel_compression_ratio == 0.0) return;
    std::int64_t const kept = press.kept_channels(cache.head_dim());
    std::vector<std::int32_t> channels(static_cast<std::size_t>(cache.kv_heads() * kept));  // [kv_heads, kept]
    std::vector<float> packed;                                                                 // [kv_heads, capacity, kept]
    engine.compress(cache, record, [&](kvcompress::Observation<float> const& obs, kvcompress::KVCacheView<float> const& view) {
      packed.assign(kvcompress::PackedKeys<float>{nullptr, nullptr, kept}.key_count(view.extents), 0.0f);
      scratch->resize(press.workspace_bytes(dev, view));
      press.compress(dev, obs, view, kvcompress::PackedKeys<float>{packed.data(), channels.data(), kept},
                     kvcompress::Workspace(scratch->data(), scratch->size()));
      cache.pack_keys(obs.layer_idx, kept, channels, packed);
    }, needs_of(press));
  };
  return c;
}

/// \brief Every layer's KVzap surrogate for the model; the file's layer count, hidden size and kv heads
/// must be the model's.
[[nodiscard]] inline std::shared_ptr<KVzapCheckpoint const> load_kvzap_for(std::string const& path, ModelConfig const& m) {
  auto ck = std::make_shared<KVzapCheckpoint const>(load_kvzap(path));
  KVC_CHECK(ck->num_layers() == m.num_layers && ck->hidden_size == m.hidden_size && ck->kv_heads == m.num_kv_heads,
            path << ": the KVzap surrogate has " << ck->num_layers() << " layers, hidden size " << ck->hidden_size << " and "
                 << ck->kv_heads << " kv heads; the model " << m.num_layers << ", " << m.hidden_size << " and " << m.num_kv_heads);
  return ck;
}

/// \brief Every layer's FastKVzip gate for the model; the file's layer count, hidden size, kv heads and
/// query group must be the model's.
[[nodiscard]] inline std::shared_ptr<FastKVzipCheckpoint const> load_fast_kvzip_for(std::string const& path, ModelConfig const& m) {
  auto ck = std::make_shared<FastKVzipCheckpoint const>(load_fast_kvzip(path));
  std::int64_t const group = m.num_heads / m.num_kv_heads;
  KVC_CHECK(ck->num_layers() == m.num_layers && ck->hidden_size == m.hidden_size && ck->kv_heads == m.num_kv_heads &&
                ck->group == group,
            path << ": the FastKVzip gates have " << ck->num_layers() << " layers, hidden size " << ck->hidden_size << ", "
                 << ck->kv_heads << " kv heads and query groups of " << ck->group << "; the model " << m.num_layers << ", "
                 << m.hidden_size << ", " << m.num_kv_heads << " and " << group);
  return ck;
}

/// \brief KVzap after the prefill: every layer's surrogate scores the layer's attention input, then top-k
/// per head as every scorer press (kvpress's KVzapPress).
[[nodiscard]] inline Compressor kvzap_compressor(std::shared_ptr<KVzapCheckpoint const> ck, double ratio, std::string name,
                                                 kvcompress::CpuDevice dev) {
  auto scratch = std::make_shared<std::vector<std::byte>>();
  Compressor c;
  c.name = std::move(name);
  c.needs.hidden_states = true;
  c.after_prefill = [ck, ratio, dev, scratch](kvcompress::Observation<float> const& obs, kvcompress::KVCacheView<float> const& cache) {
    kvcompress::KVzapPress const press{ratio, ck->type, ck->layer(obs.layer_idx)};
    scratch->resize(kvcompress::compress_workspace_bytes(dev, press, obs, cache));
    kvcompress::compress(dev, press, obs, cache, kvcompress::Workspace(scratch->data(), scratch->size()));
  };
  return c;
}

/// \brief FastKVzip after the prefill: every layer's gate scores its attention input, then KVzip's eviction
/// across layers (kvpress's FastKVzipPress: sinks and the last window score 1).
[[nodiscard]] inline Compressor fast_kvzip_compressor(std::shared_ptr<FastKVzipCheckpoint const> ck, kvcompress::FastKVzipPress press,
                                                      std::string name, kvcompress::CpuDevice dev) {
  auto scratch = std::make_shared<std::vector<std::byte>>();
  Compressor c;
  c.name = std::move(name);
  c.needs.hidden_states = true;
  c.after_prefill_model = [ck, press, dev, scratch](Engine& engine, KVCache& cache, ForwardRecord const& record) {
    if (press.compression_ratio == 0.0) return;
    ModelConfig const& m = engine.model().config;
    KVC_CHECK(static_cast<std::int64_t>(record.hidden_states.size()) == m.num_layers,
              "press FastKVzip reads the hidden states, and the forward record holds none: the pass was not asked to keep them "
              "(ForwardRecord::keep_hidden_states)");
    std::int64_t const n = record.tokens, per_layer = m.num_kv_heads * n;
    std::vector<float> scores(static_cast<std::size_t>(m.num_layers * per_layer));
    for (std::int64_t l = 0; l < m.num_layers; ++l)
      press.score_layer(dev, ck->layer(static_cast<int>(l)),
                        kvcompress::make_tensor4(record.hidden_states[static_cast<std::size_t>(l)].data(), {1, 1, n, m.hidden_size}),
                        scores.data() + l * per_layer);
    evict_across_layers(cache, scores, n, press.compression_ratio, press.layerwise, dev, *scratch);
  };
  return c;
}

[[nodiscard]] inline std::vector<std::string> press_names() {
  return {"expected_attention", "knorm",   "streaming_llm", "snapkv",    "pyramidkv", "tova",
          "observed_attention", "keydiff", "lagkv",         "random",    "leverage",
          "non_causal_attn",    "compactor", "cur",           "cap",       "simlayerkv",
          "egchunkkv",          "merging",   "lukv",          "duo_attention", "kvcompose",
          "adakv_expected_attention", "kvzip", "kvzap",   "fast_kvzip", "finch", "cam", "think"};
}

/// \brief Data computed offline for a model that some presses need (none by default).
struct PressFiles {
  /// LU-KV's budget curve [99, layers, kv_heads] for the model and ExpectedAttention, as a .npy file.
  std::string lukv_curve;
  /// A DuoAttention pattern folder, as DuoAttention's repository lays them out: `config.json` with
  /// `sink_size` and `recent_size`, `full_attention_heads.tsv` with one row of head scores per layer.
  std::string duo_pattern;
  /// KVzip's reconstruction prompt in the model's token ids (kvzip_prompt.hpp); empty: press kvzip is refused,
  /// saying `kvzip_prompt_missing`.
  KVzipPrompt kvzip_prompt;
  std::string kvzip_prompt_missing = "its reconstruction prompt was not written in the model's token ids";
  /// KVzap's surrogates and FastKVzip's gates for the model (load_kvzap_for, load_fast_kvzip_for).
  std::shared_ptr<KVzapCheckpoint const> kvzap;
  std::shared_ptr<FastKVzipCheckpoint const> fast_kvzip;
};

/// \brief A DuoAttention pattern folder read into a press (scores clipped to [0, 1], as kvpress does).
struct DuoPattern {
  std::int64_t sink_size = 0, recent_size = 0, layers = 0, kv_heads = 0;
  std::vector<float> scores;  // [layers, kv_heads]
};

namespace detail {

inline std::string read_whole_file(std::string const& path) {
  std::ifstream in(path);
  KVC_CHECK(in.good(), "cannot open " << path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace detail

[[nodiscard]] inline DuoPattern read_duo_pattern(std::string const& folder) {
  DuoPattern p;
  std::string const text = detail::read_whole_file(folder + "/config.json");
  nlohmann::json const config = detail::parse_json(text.data(), text.data() + text.size(), 8, folder + "/config.json");
  KVC_CHECK(config.is_object(), folder << "/config.json must be a JSON object");
  for (char const* key : {"sink_size", "recent_size"}) {
    KVC_CHECK(config.contains(key) && config.at(key).is_number_integer() && config.at(key).get<std::int64_t>() >= 0,
              folder << "/config.json: '" << key << "' must be a non-negative integer");
  }
  p.sink_size = config.at("sink_size").get<std::int64_t>();
  p.recent_size = config.at("recent_size").get<std::int64_t>();
  std::istringstream tsv(detail::read_whole_file(folder + "/full_attention_heads.tsv"));
  std::string line;
  while (std::getline(tsv, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    std::istringstream row(line);
    std::int64_t cols = 0;
    for (double x = 0.0; row >> x; ++cols) p.scores.push_back(static_cast<float>(std::clamp(x, 0.0, 1.0)));
    KVC_CHECK(row.eof(), folder << "/full_attention_heads.tsv line " << p.layers + 1 << " holds a value that is not a number");
    KVC_CHECK(p.layers == 0 || cols == p.kv_heads, folder << "/full_attention_heads.tsv line " << p.layers + 1 << " holds "
                                                          << cols << " values, line 1 " << p.kv_heads);
    p.kv_heads = cols;
    ++p.layers;
  }
  KVC_CHECK(p.layers > 0 && p.kv_heads > 0, folder << "/full_attention_heads.tsv holds no head scores");
  return p;
}

/// \brief The named press at `ratio` (fraction of entries removed); "none" is the full cache. `lukv` and
/// `duo_attention` (whose ratio is the share of streaming heads) read their data from `files`.
[[nodiscard]] inline Compressor make_compressor(std::string const& name, double ratio,
                                                kvcompress::CpuDevice dev = kvcompress::cpu, PressFiles const& files = {}) {
  namespace kvc = kvcompress;
  kvc::check_compression_ratio(ratio);
  if (name == "none") return Compressor{"none", {}, {}, {}, {}};
  if (name == "expected_attention") return prefill_press(kvc::ExpectedAttentionPress{ratio}, name, dev);
  if (name == "knorm") return prefill_press(kvc::KnormPress{ratio}, name, dev);
  if (name == "streaming_llm") return prefill_press(kvc::StreamingLLMPress{ratio}, name, dev);
  if (name == "snapkv") return prefill_press(kvc::SnapKVPress{ratio}, name, dev);
  if (name == "pyramidkv") return prefill_press(kvc::PyramidKVPress{ratio}, name, dev);
  if (name == "tova") return prefill_press(kvc::TOVAPress{ratio}, name, dev);
  if (name == "observed_attention") return prefill_press(kvc::ObservedAttentionPress{ratio}, name, dev);
  if (name == "keydiff") return prefill_press(kvc::KeyDiffPress{ratio}, name, dev);
  if (name == "lagkv") return prefill_press(kvc::LagKVPress{ratio}, name, dev);
  if (name == "random") return prefill_press(kvc::RandomPress{ratio}, name, dev);
  if (name == "leverage") return sketch_press(kvc::LeverageScorePress{ratio}, name, dev);
  if (name == "non_causal_attn") return prefill_press(kvc::NonCausalAttnPress{ratio}, name, dev);
  if (name == "compactor") return sketch_press(kvc::CompactorPress{ratio}, name, dev);
  if (name == "cur") return prefill_press(kvc::CURPress{ratio}, name, dev);
  if (name == "cap") return prefill_press(kvc::CapPress{ratio}, name, dev);
  // AdaKV's budget across the kv heads of a layer over Expected Attention's scores (kvpress's
  // AdaKVPress(ExpectedAttentionPress(ratio)), alpha_safeguard 0.20)
  if (name == "adakv_expected_attention") return prefill_press(kvc::AdaKVPress{kvc::ExpectedAttentionPress{ratio}}, name, dev);
  if (name == "simlayerkv") {  // decides per layer: the ratio is not used; kvpress's Llama 3 threshold
    kvc::SimLayerKVPress const press{0.9};
    Compressor c = prefill_press(press, name, dev);
    c.needs.window = press.n_last;
    return c;
  }
  // The wrappers around kvpress's flagship scorer (non-negative scores, which EntropyGatedChunkKV's
  // entropy gate expects).
  if (name == "egchunkkv") return prefill_press(kvc::EntropyGatedChunkKVPress{kvc::ExpectedAttentionPress{ratio}}, name, dev);
  if (name == "merging") return prefill_press(kvc::MergingPress{kvc::ExpectedAttentionPress{ratio}}, name, dev);
  if (name == "lukv") {  // kvpress's default: LUKVPress(ExpectedAttentionPress(epsilon=2e-2)), sink 4, window 1
    KVC_CHECK(!files.lukv_curve.empty(),
              "press lukv needs LU-KV's budget curve for the model and ExpectedAttention: --lukv-curve FILE.npy");
    auto const curve = std::make_shared<NpyArray>(read_npy(files.lukv_curve));
    KVC_CHECK(curve->shape.size() == 3 && curve->shape[0] == 99,
              files.lukv_curve << ": a budget curve has shape [99, layers, kv_heads]");
    kvc::LUKVPress<> press;
    press.compression_ratio = ratio;
    press.budget_curves = curve->data.data();
    press.num_layers = curve->shape[1];
    press.kv_heads = curve->shape[2];
    Compressor c = prefill_press(press, name, dev);
    c.after_prefill = [inner = c.after_prefill, curve](kvc::Observation<float> const& o, kvc::KVCacheView<float> const& v) {
      inner(o, v);  // `curve` is captured to keep the press's data alive
    };
    return c;
  }
  if (name == "duo_attention") {
    KVC_CHECK(!files.duo_pattern.empty(),
              "press duo_attention needs a DuoAttention pattern folder for the model: --duo-pattern DIR");
    auto const pattern = std::make_shared<DuoPattern>(read_duo_pattern(files.duo_pattern));
    kvc::DuoAttentionPress const press{ratio, pattern->sink_size, pattern->recent_size, pattern->scores.data(),
                                       pattern->layers, pattern->kv_heads};
    Compressor c = prefill_press(press, name, dev);
    c.after_prefill = [inner = c.after_prefill, pattern](kvc::Observation<float> const& o, kvc::KVCacheView<float> const& v) {
      inner(o, v);  // `pattern` is captured to keep the press's data alive
    };
    return c;
  }
  if (name == "kvcompose") return kvcompose_compressor(kvc::KVComposePress{true, ratio}, name, dev);
  if (name == "kvzip") {  // kvpress's defaults: n_sink 4, chunks of 2048 tokens, eviction across layers
    KVC_CHECK(!files.kvzip_prompt.first.empty(), "press kvzip cannot run: " << files.kvzip_prompt_missing);
    kvc::KVzipPress press;
    press.compression_ratio = ratio;
    return kvzip_compressor(press, files.kvzip_prompt, name, dev);
  }
  // kvpress's defaults: one top-k over the row, scores weighted by position, keys re-rotated
  if (name == "finch") return finch_compressor(kvc::FinchPress{ratio}, name, dev);
  // kvpress's CAMPress defaults (every 512 decoding steps to 2048 entries, 256 buffered queries, merges into
  // 32 kept entries); kvpress gives it no default scorer: Knorm, which reads the keys alone. Decides by its
  // target size: the ratio is not used.
  if (name == "cam") return cam_compressor(kvc::KnormPress{}, kvc::CAMOptions{}, name, dev);
  // kvpress's ThinKPress defaults (window_size 32); the ratio is its key_channel_compression_ratio, the share of
  // key channels pruned (so a share ratio / 2 of the cache's bytes). kvpress's ThinKPress has no inner press.
  if (name == "think") return think_compressor(kvc::ThinKPress{ratio}, name, dev);
  if (name == "kvzap") {  // kvpress's KVzapPress: the surrogate's scores, top-k per head
    KVC_CHECK(files.kvzap != nullptr, "press kvzap needs KVzap's surrogate weights for the model (kvpress's KVzapModel "
                                      "safetensors): --kvzap-weights FILE");
    return kvzap_compressor(files.kvzap, ratio, name, dev);
  }
  if (name == "fast_kvzip") {  // kvpress's defaults: n_sink 4, window 2 % of the context, eviction across layers
    KVC_CHECK(files.fast_kvzip != nullptr, "press fast_kvzip needs FastKVzip's gate weights for the model (kvpress's "
                                           "FastKVzipGate state dicts as one safetensors file): --fast-kvzip-weights FILE");
    kvc::FastKVzipPress press;
    press.compression_ratio = ratio;
    return fast_kvzip_compressor(files.fast_kvzip, press, name, dev);
  }
  std::string known = "none";
  for (auto const& n : press_names()) known += ", " + n;
  KVC_THROW("unknown press '" << name << "' (" << known << ")");
}

}  // namespace kvc_engine
