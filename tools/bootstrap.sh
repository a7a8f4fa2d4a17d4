#!/usr/bin/env bash
# The README's first command: install what is missing, fetch SmolLM2's GGUF (tools/models/fetch_smollm2.sh; the
# test suite's real-model test needs it), build, run the demo, then evaluate every press on the shipped model
# (kvcompress-eval; the output ends with its accuracy table). The Python environment it sets up lets the
# second command build the Python package (python/) and run its tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
bash tools/models/fetch_smollm2.sh
bash tools/python/setup_env.sh  # the Python package's build and tests (python/): numpy, torch, kvpress, nanobind, pytest
cmake --preset default
cmake --build --preset default --target quickstart kvcompress-eval
./build/default/examples/quickstart/quickstart
./build/default/examples/engine/kvcompress-eval
