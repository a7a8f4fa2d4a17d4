// kvc_generate: loads an HF checkpoint folder, runs a prompt of token ids, optionally compresses the
// cache with a kvcompress press after the prefill, and prints the generated token ids.
//
//   kvc_generate --model tests/golden/engine/llama/checkpoint --prompt "1 2 3 4" --press knorm --ratio 0.5
//
// A press needs its ratio and a ratio needs a press: neither has a default that could apply unseen.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "kvc_engine/cli/cli_validators.hpp"
#include "kvc_engine/forward/engine.hpp"
#include "kvc_engine/compression/press_registry.hpp"
#include "kvc_engine/cli/tensor_parallel.hpp"

namespace {

std::vector<std::int32_t> parse_ids(std::string text, std::string const& what) {
  for (char& ch : text)
    if (ch == ',') ch = ' ';
  std::istringstream in(text);
  std::vector<std::int32_t> ids;
  long long v = 0;
  while (in >> v) {
    KVC_CHECK(v >= 0 && v <= 0x7fffffff, what << ": token id " << v << " is out of range");
    ids.push_back(static_cast<std::int32_t>(v));
  }
  KVC_CHECK(in.eof(), what << ": expected token ids separated by spaces or commas");
  KVC_CHECK(!ids.empty(), what << " holds no token ids");
  return ids;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Generates token ids with the kvcompress reference engine"};
  std::string model_dir, prompt, prompt_file, press = "none";
  double ratio = 0.0, temperature = 0.0;
  std::int64_t max_new_tokens = 32;
  std::uint64_t seed = 0;
  int threads = 0, repeat = 1, tensor_parallel = 1;
  app.add_option("--model", model_dir, "GGUF model file (.gguf) or HF checkpoint folder (config.json + *.safetensors)")->required();
  auto* p = app.add_option("--prompt", prompt, "prompt token ids, separated by spaces or commas");
  auto* pf = app.add_option("--prompt-file", prompt_file, "file holding the prompt token ids");
  p->excludes(pf);
  app.add_option("--max-new-tokens", max_new_tokens, "tokens to generate")
      ->check(kvc_engine::integer_at_least(1, "positive"))
      ->capture_default_str();
  std::string press_help = "press applied to every layer after the prefill (needs --ratio): none";
  for (auto const& n : kvc_engine::press_names()) press_help += ", " + n;
  press_help += ", adakv";
  app.add_option("--press", press, press_help)->capture_default_str();
  app.add_option("--ratio", ratio,
                 "compression ratio, the fraction of cache entries the press removes, in [0, 1): required with "
                 "--press, and only with it (no default)");
  app.add_option("--temperature", temperature, "0: greedy; otherwise sample from softmax(logits / temperature)")
      ->capture_default_str();
  app.add_option("--seed", seed, "sampling seed")->capture_default_str();
  app.add_option("--threads", threads, "CPU threads (0: all)")
      ->check(kvc_engine::integer_at_least(0, "non-negative"))
      ->capture_default_str();
  app.add_option("--repeat", repeat, "run the generation this many times and report the fastest timings")
      ->check(kvc_engine::integer_at_least(1, "positive"))
      ->capture_default_str();
  app.add_option("--tensor-parallel", tensor_parallel,
                 "split each layer's kv heads over this many MPI ranks for the press (run under mpiexec -n P; "
                 "docs/distributed.md)")
      ->check(kvc_engine::integer_at_least(1, "positive"))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  try {
    KVC_CHECK(!prompt.empty() || !prompt_file.empty(), "give --prompt or --prompt-file");
    bool const compressing = press != "none";
    KVC_CHECK(!compressing || app.count("--ratio") > 0,
              "--press " << press << " needs --ratio (the fraction of the cache to remove, in [0, 1))");
    KVC_CHECK(compressing || app.count("--ratio") == 0,
              "--ratio " << ratio << " needs --press (a press other than none): without one nothing is compressed");
    if (!prompt_file.empty()) {
      std::ifstream in(prompt_file);
      KVC_CHECK(in.good(), "cannot open " << prompt_file);
      std::ostringstream text;
      text << in.rdbuf();
      prompt = text.str();
    }
    std::vector<std::int32_t> const ids = parse_ids(prompt, prompt_file.empty() ? "--prompt" : prompt_file);
    kvc_engine::Model const model = kvc_engine::load_model(model_dir);
    kvc_engine::Engine engine(model, threads);
    kvc_engine::TensorParallel const tp(tensor_parallel);
    kvc_engine::Compressor const compressor =
        tp.wrap(kvc_engine::make_shard_compressor(press, ratio, engine.device()), model.config.num_kv_heads);
    kvc_engine::GenerateOptions options;
    options.max_new_tokens = max_new_tokens;
    options.sampler = kvc_engine::Sampler(temperature, seed);
    options.compressor = &compressor;
    kvc_engine::GenerateResult r = engine.generate(ids, options);
    for (int i = 1; i < repeat; ++i) {  // a fresh sampler each time: the same tokens, timings vary
      options.sampler = kvc_engine::Sampler(temperature, seed);
      kvc_engine::GenerateResult again = engine.generate(ids, options);
      r.prefill_seconds = std::min(r.prefill_seconds, again.prefill_seconds);
      r.compress_seconds = std::min(r.compress_seconds, again.compress_seconds);
      r.decode_seconds = std::min(r.decode_seconds, again.decode_seconds);
    }

    if (!tp.root()) return 0;
    for (std::size_t i = 0; i < r.tokens.size(); ++i) std::printf("%s%d", i ? " " : "", r.tokens[i]);
    std::printf("\n");
    double const prefill_tps = static_cast<double>(ids.size()) / r.prefill_seconds;
    double const decode_tps = r.tokens.size() > 1 ? static_cast<double>(r.tokens.size() - 1) / r.decode_seconds : 0.0;
    std::fprintf(stderr,
                 "prompt %zu tokens, press %s: prefill %.2f ms (%.0f tokens/s), press %.2f ms, decode %.2f ms (%.1f tokens/s), "
                 "cache after prefill %lld bytes, at the end %lld bytes\n",
                 ids.size(), compressor.name.c_str(), 1e3 * r.prefill_seconds, prefill_tps, 1e3 * r.compress_seconds,
                 1e3 * r.decode_seconds, decode_tps, static_cast<long long>(r.cache_bytes_after_prefill),
                 static_cast<long long>(r.cache.bytes_in_use()));
    return 0;
  } catch (std::exception const& e) {
    std::fprintf(stderr, "kvc_generate: %s\n", e.what());
    kvc_engine::TensorParallel::abort_after_error();
    return 1;
  }
}
