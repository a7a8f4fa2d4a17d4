#!/usr/bin/env bash
# On a machine with an NVIDIA GPU, from the repository root, after `bash tools/gpu/prepare.sh` on the
# development machine (the GPU machine has no network: the build dependencies come in .gpu-deps and
# the Python modules in .whl, both carried). In order, each step bounded by its own timeout and by
# the whole run's budget (KVC_GPU_BUDGET_S, default 450 s, so that the run ends inside 8 minutes
# whatever hangs): configure and build the CUDA tests and benchmarks (`cuda` preset, sm_90a), the
# CUDA suite (ctest), compute-sanitizer memcheck on a reduced suite, the CUDA benchmarks, kvpress's
# PyTorch presses on the same GPU and shapes, the report, then memcheck on the compaction's CTA loop
# and the batched page release, and racecheck, initcheck and synccheck on the reduced suite while time
# is left. Every step runs even when an earlier one failed (a step whose
# input is missing says so); the exit status is 1 if any step failed or was skipped for time.
#
# What comes back from $OUT (at most 8 files): steps.log (every step's output, in order), ctest.xml,
# kvcompress_cuda.json, kvpress_cuda.json and cuda.md (the report for docs/benchmarks/). The Python
# package with its CUDA path is built beside the suite and its GPU tests run after memcheck.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
out=$(realpath -m "${OUT:-build/gpu-results}")
logs=$PWD/build/gpu-logs  # one log per step, gathered into $out/steps.log at the end
mkdir -p "$out" "$logs"
rm -f "$logs"/*.log
budget=${KVC_GPU_BUDGET_S:-450}
start=$SECONDS
status=0
order=()  # step names as they ran, for steps.log

# step NAME TIMEOUT COMMAND...: runs COMMAND into $logs/NAME.log for at most TIMEOUT seconds (less if
# the budget runs out first; skipped when under 5 s are left) and records a failure.
step() {
  local name=$1 limit=$2
  shift 2
  order+=("$name")
  local left=$((budget - (SECONDS - start)))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 5 ]; then
    echo "== $name: skipped, the ${budget} s budget is spent" | tee "$logs/$name.log"
    status=1
    return 1
  fi
  echo "== $name (at most $limit s): $*"
  local t0=$SECONDS
  timeout --signal=TERM --kill-after=5 "$limit" "$@" > "$logs/$name.log" 2>&1
  local rc=$?
  [ $rc -eq 124 ] && echo "(timed out after $limit s)" >> "$logs/$name.log"
  echo "== $name: exit $rc after $((SECONDS - t0)) s"
  tail -n 15 "$logs/$name.log"
  [ $rc -eq 0 ] || status=1
  return $rc
}

# shellcheck disable=SC2317  # called by the EXIT trap
gather() {
  {
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
    for name in "${order[@]}"; do
      echo
      echo "######## $name"
      tail -c 1000000 "$logs/$name.log"  # the end of a runaway log: steps.log must stay under 16 MiB
    done
  } > "$out/steps.log"
}
trap gather EXIT

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
[ -d /usr/local/cuda/bin ] && export PATH="/usr/local/cuda/bin:$PATH"  # nvcc, compute-sanitizer
if [ -d .gpu-deps/usr ]; then
  export CMAKE_PREFIX_PATH="$PWD/.gpu-deps/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
else
  echo "no .gpu-deps: the build needs Eigen, Catch2, nlohmann_json and Google Benchmark installed here"
fi
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/kvc-site .whl/*.whl \
    && export PYTHONPATH="/tmp/kvc-site${PYTHONPATH:+:$PYTHONPATH}"
fi

# The Python package with its CUDA path (KVC_PYTHON_CUDA=ON, sm_90a) in a build of its own, so that a
# missing Python header or nanobind cannot stop the CUDA suite's configure. It builds at nice 19 in
# the background while the GPU runs the CUDA suite and memcheck (those leave the CPU mostly idle),
# and is waited for before the benchmarks, which want a quiet CPU. Its log is the python-build step's.
python_build() {
  cmake -S . -B build/gpu-python -DCMAKE_BUILD_TYPE=Release -DKVC_WERROR=OFF -DKVC_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90a -DKVC_BUILD_TESTS=OFF -DKVC_BUILD_EXAMPLES=OFF -DKVC_BUILD_PYTHON=ON \
    -DKVC_PYTHON="$(command -v python3)" -DKVC_PYTHON_CUDA=ON &&
    cmake --build build/gpu-python --target kvc_python_package -j "$(nproc)"
}
export -f python_build

# The CUDA executables only: the CPU suite and benchmarks need nothing from this machine.
targets=(kvc_bench_cuda)
for src in tests/cuda/test_*.cu; do targets+=("kvc_cuda_$(basename "$src" .cu)"); done
bin=build/cuda/tests/cuda

# Warnings are not errors here: CI holds the sources to gcc 12 and nvcc with -Werror, and a newer host
# gcc's new warnings (gcc 13's -Wdangling-reference in -Wall) must not cost a lent GPU its run.
step configure 60 cmake --preset cuda -DKVC_BUILD_EXAMPLES=OFF -DKVC_WERROR=OFF
step build 300 cmake --build --preset cuda --target "${targets[@]}"
order+=(python-build)
nice -n 19 timeout --signal=TERM --kill-after=5 300 bash -c python_build > "$logs/python-build.log" 2>&1 &
python_build_pid=$!
# ctest stops starting tests 20 s before its step's limit, so that it still writes its results.
ctest_limit=$((budget - (SECONDS - start)))
[ "$ctest_limit" -gt 200 ] && ctest_limit=200
step ctest 200 ctest --preset cuda --timeout 120 -j 4 --output-junit "$out/ctest.xml" \
  --stop-time "$(date -d "+$((ctest_limit - 20)) seconds" +%H:%M:%S)"

# The reduced suite under a sanitizer: every kernel of a compress call (float, head_dim 64, the small
# cases), the selection and the runtime. Catch's test spec separates names with commas: `\,` is a
# comma inside a name. Logs named sanitizer-TOOL-WHAT.log (tools/bench/report_cuda.py).
sanitize() {
  local tool=$1 limit=$2
  step "sanitizer-$tool-compress" "$limit" compute-sanitizer --tool "$tool" --error-exitcode 1 "$bin/kvc_cuda_test_compress" \
    "cuda compress: Knorm\\, StreamingLLM\\, KeyDiff equal the CPU path,cuda compress: SnapKV and TOVA equal the CPU path,cuda compress: ExpectedAttention without covariance equals the CPU path,cuda compress: AdaKV around ExpectedAttention equals the CPU path" \
    -c "float, head_dim 64"
  step "sanitizer-$tool-select" "$limit" compute-sanitizer --tool "$tool" --error-exitcode 1 "$bin/kvc_cuda_test_select"
  step "sanitizer-$tool-runtime" 30 compute-sanitizer --tool "$tool" --error-exitcode 1 "$bin/kvc_cuda_test_runtime"
}
sanitize memcheck 60

# The Python GPU tests (tests/python/test_cuda.py: every press with CUDA kernels against the CPU path
# on the same torch tensors, streams, the device workspace, the device-side errors).
wait "$python_build_pid"
python_rc=$?
echo "== python-build: exit $python_rc"
tail -n 15 "$logs/python-build.log"
[ $python_rc -eq 0 ] || status=1
step python-cuda 90 env PYTHONPATH="$PWD/build/gpu-python/python/package${PYTHONPATH:+:$PYTHONPATH}" \
  KVC_EXPECT_PYTHON_CUDA=ON python3 -m pytest -q -p no:cacheprovider -rs tests/python/test_cuda.py

step bench 120 ./build/cuda/benchmarks/cuda/kvc_bench_cuda --benchmark_repetitions=3 --benchmark_min_time=0.2 \
  --benchmark_report_aggregates_only=true --benchmark_format=json --benchmark_out="$out/kvcompress_cuda.json" \
  --benchmark_out_format=json
step kvpress 90 python3 tools/bench/bench_kvpress.py --device cuda --sizes 4096 32768 131072 --repeats 5 \
  --out "$out/kvpress_cuda.json"
# shellcheck disable=SC2317
report() {  # run by `step` through `bash -c`, hence exported with the paths it reads
  [ -f "$out/kvcompress_cuda.json" ] || { echo "no kvcompress_cuda.json: the bench step failed"; return 1; }
  python3 tools/bench/report_cuda.py --kvcompress "$out/kvcompress_cuda.json" --kvpress "$out/kvpress_cuda.json" \
    --sanitizer-logs "$logs" --out "$out/cuda.md" \
    --command "bash tools/gpu/prepare.sh (here), then bash tools/gpu/run_all.sh (on the GPU machine)"
}
export -f report
export out logs
step report 30 bash -c report

# After the report, while time is left (like the other tools below): memcheck on the compaction's
# look-back through few CTAs (every flag wait taken) and on the page release over 40 layers.
step sanitizer-memcheck-compact 40 compute-sanitizer --tool memcheck --error-exitcode 1 "$bin/kvc_cuda_test_compact" \
  "cuda compact with one\, three and 64 CTAs looping over the tiles equals cpu compact_row"
step sanitizer-memcheck-release 30 compute-sanitizer --tool memcheck --error-exitcode 1 "$bin/kvc_cuda_test_release"

for tool in racecheck initcheck synccheck; do sanitize "$tool" 45; done
[ -f "$out/kvcompress_cuda.json" ] && step report-final 30 bash -c report  # with every sanitizer's summary
echo "== done after $((SECONDS - start)) s, status $status"
exit $status
