#!/usr/bin/env bash
# Builds the bench preset, runs kvcompress's CPU benchmarks and kvpress's own presses on the same
# shapes and thread count in the same run, then the reference engine beside transformers on SmolLM2-135M
# (prompts of 2,048 and 8,128 tokens on 1 and 2 threads; ENGINE=0 leaves it out), and writes
# docs/benchmarks/cpu.md. CONDITIONS="..." adds what else ran on the machine to the report's first line.
# Run it on an otherwise idle machine (2 cores: about 25 minutes, 10 of them the engine's).
set -euo pipefail
cd "$(dirname "$0")/../.."
python="$(bash tools/bench/venv.sh)"
out=build/bench/results
mkdir -p "$out"
cmake --preset bench
cmake --build --preset bench
engine=()
if [ "${ENGINE:-1}" != 0 ]; then
  model="$(PYTHON="$python" bash tools/models/fetch_smollm2.sh)"
  cmake --preset release
  cmake --build --preset release --target kvc_generate
fi
./build/bench/benchmarks/kvc_bench_cpu --benchmark_format=json --benchmark_out="$out/kvcompress_cpu.json" \
  --benchmark_out_format=json
"$python" tools/bench/bench_kvpress.py --threads 2 --out "$out/kvpress_cpu.json"
if [ "${ENGINE:-1}" != 0 ]; then
  TQDM_DISABLE=1 "$python" tools/bench/engine_vs_transformers.py --model "$model" \
    --engine build/release/examples/engine/kvc_generate --lengths 2048,8128 --threads 1,2 \
    --out "$out/engine_speed.md" --json "$out/engine_speed.json" --command "bash tools/bench/run_cpu.sh"
  engine=(--engine "$out/engine_speed.json")
fi
"$python" tools/bench/report_cpu.py --kvcompress "$out/kvcompress_cpu.json" --conditions "${CONDITIONS:-}" \
  --kvpress "$out/kvpress_cpu.json" --out docs/benchmarks/cpu.md --command "bash tools/bench/run_cpu.sh" "${engine[@]}"
echo "wrote docs/benchmarks/cpu.md"
