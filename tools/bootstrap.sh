#!/usr/bin/env bash
# The README's first command: install what is missing (tools/install-deps.sh: compilers, libraries and the prose
# of the generated tasks, Debian's dict-devil), fetch SmolLM2-135M-Instruct's GGUF (tools/models/fetch_smollm2.sh),
# build the optimised preset (release: -O3 -march=native), run the quickstart, then evaluate eight presses ×
# five compression ratios on SmolLM2 with RULER-style tasks generated for it (kvcompress-eval; the output ends
# with its accuracy table, written with the plots to eval-results/).
#   bash tools/bootstrap.sh           the quick grid: 9 tasks × 2 examples at 1,024 tokens, 2 held-out texts
#   bash tools/bootstrap.sh --full    the larger grid: 9 tasks × 10 examples at 1,024, 2,048 and 4,096 tokens, 8 texts
# It also sets up the Python environment with which the second command builds the Python package
# (python/) and runs its tests.
set -euo pipefail
cd "$(dirname "$0")/.."
grid=(--lengths 1024 --per-task 2 --kl-lines 2)
case "${1:-}" in
  "") ;;
  --full) grid=(--lengths 1024,2048,4096 --per-task 10 --kl-lines 8) ;;
  *) echo "bootstrap.sh: unknown argument '$1' (only --full)" >&2; exit 2 ;;
esac
bash tools/install-deps.sh
model="$(bash tools/models/fetch_smollm2.sh)"
bash tools/python/setup_env.sh  # the Python package's build and tests (python/): numpy, torch, kvpress, nanobind, pytest
cmake --preset release
cmake --build --preset release --target quickstart kvcompress-eval
./build/release/examples/quickstart/quickstart
./build/release/examples/engine/kvcompress-eval --model "${model}" \
  --presses expected_attention,snapkv,tova,knorm,streaming_llm,keydiff,pyramidkv,adakv_expected_attention \
  --ratios 0,0.25,0.5,0.75,0.9 "${grid[@]}" --out eval-results
