// kvc_needles: what each press keeps of the needles. For a generated needle task it prefills each example once,
// compresses a copy with every press at one ratio, and counts, per layer, the needle values' tokens still in the
// cache (mean over kv heads and examples) — the measurement behind docs/results/smollm2/README.md's explanation of
// the presses' ranking. Prints a markdown table: press, the mean over layers, then blocks of layers.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cstdio>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "kvc_engine/forward/engine.hpp"
#include "kvc_engine/model_io/gguf.hpp"
#include "kvc_engine/eval/prefill_snapshot.hpp"
#include "kvc_engine/compression/press_registry.hpp"
#include "kvc_engine/tasks/prose_corpus.hpp"
#include "kvc_engine/tasks/ruler_tasks.hpp"
#include "kvc_engine/tokenizer/gguf_tokenizer.hpp"

namespace {

/// Positions in `context` of the tokens of `value` (its encoding alone, or after a space), every occurrence.
std::vector<std::int32_t> value_positions(kvc_engine::Tokenizer const& tok, std::vector<std::int32_t> const& context,
                                          std::string const& value) {
  std::vector<std::int32_t> out;
  for (std::string const& text : {value, " " + value}) {
    std::vector<std::int32_t> const ids = tok.encode(text, false);
    for (auto it = context.begin(); (it = std::search(it, context.end(), ids.begin(), ids.end())) != context.end(); ++it)
      for (std::size_t k = 0; k < ids.size(); ++k) out.push_back(static_cast<std::int32_t>(it - context.begin()) + static_cast<std::int32_t>(k));
    if (!out.empty()) break;
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_path, task = "niah_single_2", prose_path = kvc_engine::kDefaultProsePath;
  std::int64_t length = 1024, examples = 4, block = 5;
  std::uint64_t seed = 0;
  double ratio = 0.5;
  int threads = 0;
  std::vector<std::string> presses{"expected_attention", "snapkv",    "tova",      "knorm",
                                   "streaming_llm",      "keydiff",   "pyramidkv", "adakv_expected_attention"};
  CLI::App app{"kvc_needles: the fraction of the needle values' tokens each press keeps, per layer, on generated tasks"};
  app.add_option("--model", model_path, "GGUF model file")->required()->check(CLI::ExistingFile);
  app.add_option("--task", task, "a generated needle task (niah_*)")->capture_default_str();
  app.add_option("--length", length, "context length in tokens")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--examples", examples, "examples (seed * 1000000 + i)")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--seed", seed, "seed")->capture_default_str();
  app.add_option("--ratio", ratio, "compression ratio")->capture_default_str()->check(CLI::Range(0.0, 0.999));
  app.add_option("--presses", presses, "presses")->delimiter(',')->capture_default_str();
  app.add_option("--block", block, "layers per column")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--prose", prose_path, "prose file")->capture_default_str();
  app.add_option("--threads", threads, "CPU threads (0: all)")->capture_default_str()->check(CLI::NonNegativeNumber);
  CLI11_PARSE(app, argc, argv);
  try {
    KVC_CHECK(task.rfind("niah", 0) == 0, "--task must be a needle task (niah_*), got " << task);
    kvc_engine::Model const model = kvc_engine::load_model(model_path);
    kvc_engine::Tokenizer const tok(kvc_engine::tokenizer_model_from_gguf(kvc_engine::GgufFile::open(model_path)));
    std::optional<kvc_engine::ChatFormat> chat;
    if (!tok.model().chat_template.empty()) chat = kvc_engine::ChatFormat::from_template(tok.model().chat_template, "", "");
    kvc_engine::ProseCorpus const prose = kvc_engine::load_prose_corpus(prose_path);
    kvc_engine::RulerTaskGenerator const gen(tok, chat, prose);
    kvc_engine::Engine engine(model, threads);
    std::int64_t const layers = model.config.num_layers, heads = model.config.num_kv_heads;
    std::map<std::string, std::vector<double>> kept;  // press → [layers] kept needle tokens, summed over heads and examples
    double needle_total = 0.0;                        // needle tokens × kv heads, summed over examples
    for (std::int64_t i = 0; i < examples; ++i) {
      kvc_engine::RulerPrompt const p = gen.generate(task, length, seed * 1000000 + static_cast<std::uint64_t>(i), false);
      std::vector<std::int32_t> needles;
      for (auto const& r : p.references) {
        std::vector<std::int32_t> const at = value_positions(tok, p.context, r);
        KVC_CHECK(!at.empty(), "example " << i << ": the value " << r << " is not found in the context's tokens");
        needles.insert(needles.end(), at.begin(), at.end());
      }
      needle_total += static_cast<double>(needles.size() * static_cast<std::size_t>(heads));
      kvc_engine::PrefillSnapshot const snap = kvc_engine::prefill_snapshot(engine, p.context);
      for (auto const& press : presses) {
        kvc_engine::CompressedCopy copy = kvc_engine::compressed_copy(engine, snap, kvc_engine::make_compressor(press, ratio));
        std::vector<double>& k = kept[press];
        k.resize(static_cast<std::size_t>(layers), 0.0);
        for (std::int64_t l = 0; l < layers; ++l)
          for (std::int64_t h = 0; h < heads; ++h) {
            std::int32_t const* pos = copy.cache.positions(l, h);  // [length(l, h)], increasing
            std::int32_t const n = copy.cache.length(l, h);
            for (std::int32_t t : needles) k[static_cast<std::size_t>(l)] += std::binary_search(pos, pos + n, t) ? 1.0 : 0.0;
          }
      }
      std::fprintf(stderr, "example %lld/%lld done\n", static_cast<long long>(i + 1), static_cast<long long>(examples));
    }
    std::printf("Needle tokens kept (%%) at ratio %g, %s at %lld tokens, %lld examples; per layer block (mean over kv heads)\n\n",
                ratio, task.c_str(), static_cast<long long>(length), static_cast<long long>(examples));
    std::printf("| press | all layers |");
    for (std::int64_t l = 0; l < layers; l += block)
      std::printf(" %lld–%lld |", static_cast<long long>(l), static_cast<long long>(std::min(l + block, layers) - 1));
    std::printf("\n|---|---:|");
    for (std::int64_t l = 0; l < layers; l += block) std::printf("---:|");
    std::printf("\n");
    for (auto const& press : presses) {
      std::vector<double> const& k = kept[press];
      double all = 0.0;
      for (double x : k) all += x;
      std::printf("| %s | %.1f |", press.c_str(), 100.0 * all / (needle_total * static_cast<double>(layers)));
      for (std::int64_t l = 0; l < layers; l += block) {
        double s = 0.0;
        std::int64_t const e = std::min(l + block, layers);
        for (std::int64_t j = l; j < e; ++j) s += k[static_cast<std::size_t>(j)];
        std::printf(" %.1f |", 100.0 * s / (needle_total * static_cast<double>(e - l)));
      }
      std::printf("\n");
    }
    return 0;
  } catch (std::exception const& e) {
    std::fprintf(stderr, "kvc_needles: %s\n", e.what());
    return 1;
  }
}
