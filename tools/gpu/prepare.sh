#!/usr/bin/env bash
# On the development machine (network, the Debian build dependencies of tools/install-deps.sh), before
# a GPU run: stages what the GPU machine lacks and cannot fetch (it has no network), in two folders
# that .git/info/exclude ignores and that the run carries (`carry: [".gpu-deps", ".whl"]`, about
# 12 MiB together beside the ~44 MiB working tree; the limit is 64 MiB):
#   .gpu-deps/usr  the headers, libraries and CMake package files of Eigen 3.4, Catch2 2, nlohmann_json
#                  and Google Benchmark, copied from this machine's Debian packages with their layout
#                  (their CMake files locate themselves relative to their folder, so the copy is found
#                  through CMAKE_PREFIX_PATH; Debian 12's libbenchmark needs only an older glibc and
#                  libstdc++ than the GPU machine's Ubuntu 24.04 has);
#   .whl           kvpress 0.5.5 (the version of the golden fixtures) and the modules that importing it
#                  needs and the GPU image lacks, and nanobind and pytest for the Python package's GPU
#                  tests (which need the image's Python headers too). The image's own PyTorch and transformers (5.17) are
#                  used: kvpress 0.5.5's presses ran with transformers 5.17.0, huggingface_hub 1.33 and
#                  tokenizers 0.23.2 (tools/bench/bench_kvpress.py on the CPU, 2026-12-06), whereas
#                  transformers 5.2.0 refuses the image's tokenizers 0.23.2 at import.
set -euo pipefail
cd "$(dirname "$0")/../.."
exclude=$(git rev-parse --git-path info/exclude)  # also right in a git worktree
mkdir -p "$(dirname "$exclude")"
for d in /.whl/ /.gpu-deps/; do
  grep -qx "$d" "$exclude" 2>/dev/null || echo "$d" >> "$exclude"
done

rm -rf .gpu-deps
mkdir -p .gpu-deps
# Every file of the package under /usr, but not its documentation nor Eigen's unsupported modules.
stage() {
  dpkg -L "$1" | while read -r f; do
    [ -f "$f" ] || continue
    case "$f" in /usr/share/doc/* | /usr/share/man/* | /usr/include/eigen3/unsupported/*) continue ;; esac
    mkdir -p ".gpu-deps$(dirname "$f")"
    cp -a "$f" ".gpu-deps$f"
  done
  # Shared-library symlinks (libbenchmark.so → libbenchmark.so.1.7.1) are not plain files.
  dpkg -L "$1" | while read -r f; do
    [ -L "$f" ] || continue
    mkdir -p ".gpu-deps$(dirname "$f")"
    cp -a "$f" ".gpu-deps$f"
  done
}
for pkg in libeigen3-dev catch2 nlohmann-json3-dev libbenchmark-dev libbenchmark1debian; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
    { echo "prepare: $pkg is not installed here (bash tools/install-deps.sh)" >&2; exit 1; }
  stage "$pkg"
done
du -sh .gpu-deps

rm -rf .whl
mkdir -p .whl
# nanobind and pytest (with pytest's own dependencies) build and test the Python package with its CUDA
# path there (python/requirements-test.txt's versions).
for pkg in kvpress==0.5.5 cachetools==5.5.2 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 fire==0.7.1 \
  termcolor==3.3.0 nanobind==3.1.0 pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 Pygments==2.21.0; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform any -d .whl "$pkg"
done
ls -l .whl
du -sh --exclude=.git --exclude=build . .gpu-deps .whl
