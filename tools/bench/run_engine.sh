#!/usr/bin/env bash
# Builds kvc_generate optimised (release preset), fetches SmolLM2-135M-Instruct, and times the reference
# engine's prefill and decoding beside HF transformers' on the same prompts and threads in the same run;
# writes docs/results/smollm2/speed.md. Run it on an otherwise idle machine (about 10 minutes on 2 cores).
#   bash tools/bench/run_engine.sh [extra options of tools/bench/engine_vs_transformers.py]
set -euo pipefail
cd "$(dirname "$0")/../.."
python="$(bash tools/bench/venv.sh)"
model="$(PYTHON="$python" bash tools/models/fetch_smollm2.sh)"
cmake --preset release
cmake --build --preset release --target kvc_generate
TQDM_DISABLE=1 "$python" tools/bench/engine_vs_transformers.py --model "$model" --engine build/release/examples/engine/kvc_generate \
  --out docs/results/smollm2/speed.md "$@"
