#!/usr/bin/env bash
# Builds kvc_generate optimised (release preset), fetches SmolLM2-135M-Instruct, and times the reference
# engine's prefill and decoding beside HF transformers' on the same prompts and threads in the same run;
# writes docs/results/smollm2/speed.md: prompts of 512, 2048, 4096 and 8128 tokens (8128 + 64 new tokens fill
# SmolLM2's context) on 1 and 2 threads, and the engine's decoding over a cache compressed to half by knorm
# beside the full cache. Run it on an otherwise idle machine (2 cores: about 12 minutes, estimated from the
# runs' timings; --lengths and --long-repeat shorten it).
#   bash tools/bench/run_engine.sh [extra options of tools/bench/engine_vs_transformers.py]
set -euo pipefail
cd "$(dirname "$0")/../.."
python="$(bash tools/bench/venv.sh)"
model="$(PYTHON="$python" bash tools/models/fetch_smollm2.sh)"
cmake --preset release
cmake --build --preset release --target kvc_generate
TQDM_DISABLE=1 "$python" tools/bench/engine_vs_transformers.py --model "$model" --engine build/release/examples/engine/kvc_generate \
  --out docs/results/smollm2/speed.md "$@"
