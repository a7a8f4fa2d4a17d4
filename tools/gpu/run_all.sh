#!/usr/bin/env bash
# On a machine with an NVIDIA GPU (run from the repository root): builds the `cuda` preset, runs the
# CUDA test suite, the same suite under compute-sanitizer (memcheck, racecheck, initcheck), the CUDA
# benchmarks, and kvpress's PyTorch presses on the same GPU and shapes; writes everything to $OUT
# (default build/gpu-results) and the report docs/benchmarks/cuda.md into $OUT as well.
# Every step runs even when an earlier one fails; the exit status is 1 if any failed.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-build/gpu-results}
mkdir -p "$out"
status=0
step() {  # step NAME COMMAND...: runs, logs to $out/NAME.log, records the status
  local name=$1; shift
  echo "== $name: $*"
  local t0=$SECONDS
  "$@" > "$out/$name.log" 2>&1
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - t0)) s"
  tail -n 25 "$out/$name.log"
  [ $rc -eq 0 ] || status=1
  return $rc
}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > "$out/gpu.csv" 2>&1
cat "$out/gpu.csv"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
step configure cmake --preset cuda -DKVC_BUILD_EXAMPLES=OFF
step build cmake --build --preset cuda
step ctest ctest --preset cuda --output-junit "$PWD/$out/ctest.xml"
for tool in memcheck racecheck initcheck; do
  for exe in build/cuda/tests/cuda/kvc_cuda_test_*; do
    [ -x "$exe" ] || continue
    step "sanitizer-$tool-$(basename "$exe")" compute-sanitizer --tool "$tool" --error-exitcode 1 "$exe"
  done
done
step bench ./build/cuda/benchmarks/cuda/kvc_bench_cuda --benchmark_repetitions=3 \
  --benchmark_report_aggregates_only=true --benchmark_format=json --benchmark_out="$out/kvcompress_cuda.json" \
  --benchmark_out_format=json
step kvpress python3 tools/bench/bench_kvpress.py --device cuda --sizes 4096 32768 131072 --repeats 5 \
  --out "$out/kvpress_cuda.json"
step report python3 tools/bench/report_cuda.py --kvcompress "$out/kvcompress_cuda.json" \
  --kvpress "$out/kvpress_cuda.json" --sanitizer-logs "$out" --out "$out/cuda.md" \
  --command "bash tools/gpu/prepare.sh (here), then bash tools/gpu/run_all.sh (on the GPU machine)"
exit $status
