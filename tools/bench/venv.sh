#!/usr/bin/env bash
# Prints the Python interpreter of the benchmarks' environment, creating it on first use from
# tools/bench/requirements.txt (kvpress, torch, transformers, gguf). KVC_BENCH_VENV: another folder.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=${KVC_BENCH_VENV:-$HOME/.cache/kvcompress-bench-venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q -r tools/bench/requirements.txt >&2
fi
echo "$venv/bin/python"
