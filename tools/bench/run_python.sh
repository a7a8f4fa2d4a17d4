#!/usr/bin/env bash
# Builds the Python package with pip (Release, for this machine's instruction set like the C++ benchmarks'
# bench preset) into build/bench-python and times
# kvpress's presses against the same presses through kvcompress (tools/bench/bench_python.py);
# writes docs/benchmarks/python.md. Uses the Python environment of tools/python/setup_env.sh.
# Pass the measurement conditions to record, e.g. CONDITIONS="idle 2-core Xeon" bash tools/bench/run_python.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
venv="${KVC_PYTHON_VENV:-${HOME}/.cache/kvcompress-golden-venv}"
bash tools/python/setup_env.sh
"${venv}/bin/python" -m pip install --quiet --no-deps --no-build-isolation --upgrade --target build/bench-python \
  -C cmake.define.KVC_PYTHON_NATIVE=ON -C build-dir=build/bench-python-build ./python
conditions="${CONDITIONS:-$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load average at start $(cut -d' ' -f1-3 /proc/loadavg)}"
PYTHONPATH=build/bench-python "${venv}/bin/python" tools/bench/bench_python.py --conditions "${conditions}" "$@"
