#!/usr/bin/env bash
# On the development machine, before a GPU run: downloads the pure-Python wheels that the GPU machine
# lacks (it has PyTorch but cannot reach the network) into .whl/, which the run carries.
# kvpress is pinned to the version the golden fixtures come from, transformers to the one it was
# checked with (tools/bench/requirements.txt).
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
for pkg in kvpress==0.5.5 transformers==5.2.0; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform any -d .whl "$pkg"
done
ls -l .whl
