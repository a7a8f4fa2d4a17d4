#!/usr/bin/env bash
# The Python environment of the Python package's tests (tests/python): the golden generator's venv
# (tools/golden/requirements.txt: numpy, torch, transformers, kvpress 0.5.5) plus nanobind,
# scikit-build-core and pytest (python/requirements-test.txt). Created when missing, checked
# otherwise (a few seconds when everything is there). The repository's CMake build finds it
# (cmake/kvcompress_python.cmake) and builds and tests the package against it.
# Env: KVC_PYTHON_VENV  the venv (default ~/.cache/kvcompress-golden-venv; also read by CMake)
#      PYTHON           interpreter that creates it (default python3)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${KVC_PYTHON_VENV:-${HOME}/.cache/kvcompress-golden-venv}"
if [[ ! -x "${venv}/bin/python" ]]; then
  echo "creating virtual environment ${venv}"
  "${PYTHON:-python3}" -m venv "${venv}"
fi
"${venv}/bin/python" -m pip install --quiet --disable-pip-version-check \
  -r "${root}/tools/golden/requirements.txt" -r "${root}/python/requirements-test.txt"
