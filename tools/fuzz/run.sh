#!/usr/bin/env bash
# Runs every libFuzzer target for the given number of seconds (default 60), one per core at a time,
# on its committed seed corpus (fuzz/corpus/<target>, read-only: new inputs go to a scratch corpus),
# with its dictionary fuzz/dict/<target>.dict where there is one.
# Builds the `fuzz` preset first. A crash, a sanitizer report or a timeout fails the script; the
# reproducer is left in $KVC_FUZZ_ARTIFACTS (default build/fuzz/artifacts).
#   tools/fuzz/run.sh [seconds] [extra libFuzzer flags...]
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-60}
shift || true
cmake --preset fuzz >/dev/null
cmake --build --preset fuzz
artifacts=${KVC_FUZZ_ARTIFACTS:-build/fuzz/artifacts}
mkdir -p "$artifacts"
# One target per core at a time (KVC_FUZZ_JOBS, default nproc): each still gets its full `seconds`.
jobs=${KVC_FUZZ_JOBS:-$(nproc)}
fuzz_one() {
  local target=$1 corpus=$2 scratch dict=()
  scratch=$(mktemp -d)
  [ -f fuzz/dict/"$target".dict ] && dict=(-dict=fuzz/dict/"$target".dict)
  local rc=0
  build/fuzz/fuzz/"$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$artifacts/$target-" "${dict[@]}" "${extra[@]}" "$scratch" "$corpus" \
    >"$artifacts/$target.log" 2>&1 || rc=$?
  rm -rf "$scratch"
  return $rc
}
extra=("$@")
targets=()
pids=()
for corpus in fuzz/corpus/*/; do
  target=$(basename "$corpus")
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
  echo "fuzz: $target for ${seconds}s"
  fuzz_one "$target" "$corpus" &
  targets+=("$target")
  pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
  target=${targets[$i]}
  if ! wait "${pids[$i]}"; then
    echo "fuzz: $target FAILED (reproducer and log in $artifacts)"
    tail -n 40 "$artifacts/$target.log"
    status=1
  else
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec)' "$artifacts/$target.log" | sed "s/^/fuzz: $target /"
  fi
done
exit $status
