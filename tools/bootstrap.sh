#!/usr/bin/env bash
# The README's first command: install what is missing, fetch SmolLM2's GGUF (tools/models/fetch_smollm2.sh; the
# test suite's real-model test needs it), build, run the demo, then evaluate every press on the shipped model
# (kvcompress-eval; the output ends with its accuracy table).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
bash tools/models/fetch_smollm2.sh
cmake --preset default
cmake --build --preset default --target quickstart kvcompress-eval
./build/default/examples/quickstart/quickstart
./build/default/examples/engine/kvcompress-eval
