#!/usr/bin/env bash
# Builds the bench preset, runs kvcompress's CPU benchmarks and kvpress's own presses on the same
# shapes and thread count in the same run, and writes docs/benchmarks/cpu.md. CONDITIONS="..." adds what else
# ran on the machine to the report's first line.
set -euo pipefail
cd "$(dirname "$0")/../.."
python="$(bash tools/bench/venv.sh)"
out=build/bench/results
mkdir -p "$out"
cmake --preset bench
cmake --build --preset bench
./build/bench/benchmarks/kvc_bench_cpu --benchmark_format=json --benchmark_out="$out/kvcompress_cpu.json" \
  --benchmark_out_format=json
"$python" tools/bench/bench_kvpress.py --threads 2 --out "$out/kvpress_cpu.json"
"$python" tools/bench/report_cpu.py --kvcompress "$out/kvcompress_cpu.json" --conditions "${CONDITIONS:-}" \
  --kvpress "$out/kvpress_cpu.json" --out docs/benchmarks/cpu.md --command "bash tools/bench/run_cpu.sh"
echo "wrote docs/benchmarks/cpu.md"
