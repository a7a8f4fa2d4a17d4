#!/usr/bin/env bash
# Regenerates the golden fixtures in tests/golden from NVIDIA's kvpress (see tools/golden/README.md).
# Usage: bash tools/golden/generate.sh            (from any directory)
# Env:   KVC_GOLDEN_VENV  virtual environment to create/use (default ~/.cache/kvcompress-golden-venv)
#        PYTHON           interpreter used to create the venv (default python3)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "${here}/../.." && pwd)"
venv="${KVC_GOLDEN_VENV:-${HOME}/.cache/kvcompress-golden-venv}"

if [[ ! -x "${venv}/bin/python" ]]; then
  echo "creating virtual environment ${venv}"
  "${PYTHON:-python3}" -m venv "${venv}"
fi
"${venv}/bin/python" -m pip install --quiet --disable-pip-version-check -r "${here}/requirements.txt"

cd "${root}"
"${venv}/bin/python" "${here}/generate.py" --out tests/golden "$@"
"${venv}/bin/python" "${here}/generate_more_wrappers.py" --out tests/golden "$@"  # after generate.py, which rewrites more_presses/
"${venv}/bin/python" "${here}/generate_bf16.py" --out tests/golden/bf16 "$@"
"${venv}/bin/python" "${here}/generate_dms.py" --out tests/golden/dms "$@"
"${venv}/bin/python" "${here}/generate_cam.py" --out tests/golden/cam "$@"
"${venv}/bin/python" "${here}/generate_decoding.py" --out tests/golden/decoding "$@"
"${venv}/bin/python" "${here}/generate_engine.py" --out tests/golden/engine "$@"
"${venv}/bin/python" "${here}/generate_tensor_parallel_model.py" --out tests/mpi/llama_3kv  # the engine's 3-rank test
"${venv}/bin/python" "${here}/generate_model_presses.py" --out tests/golden "$@"  # after generate.py and generate_engine.py: it reads the engine checkpoint
"${venv}/bin/python" "${here}/generate_engine_learned.py" --out tests/golden  # KVzap, FastKVzip through the engine
"${venv}/bin/python" "${here}/generate_engine_finch.py" --out tests/golden     # FINCH through the engine
"${venv}/bin/python" "${here}/generate_engine_think.py" --out tests/golden     # ThinK through the engine
"${venv}/bin/python" "${here}/generate_gguf.py" --out tests/golden/gguf
"${venv}/bin/python" "${here}/generate_smollm2.py" --out tests/golden/smollm2
# KVzip's reconstruction prompt for SmolLM2, by kvpress's own code on its corrected tokenizer.
"${venv}/bin/python" "${here}/generate_kvzip_prompt.py" --smollm2-gguf "$(bash tools/models/fetch_smollm2.sh)"
# The generated RULER-style tasks answered by kvpress's pipeline: kvcompress-eval writes the examples.
cmake --preset release > /dev/null
cmake --build --preset release --target kvcompress-eval
"${venv}/bin/python" "${here}/generate_ruler.py" --eval build/release/examples/engine/kvcompress-eval --out tests/golden/ruler
"${venv}/bin/python" "${here}/check.py" tests/golden > /dev/null
echo "fixtures checked: $(du -sh --apparent-size tests/golden | cut -f1) in tests/golden"
