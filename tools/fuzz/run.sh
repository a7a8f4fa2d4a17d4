#!/usr/bin/env bash
# Runs every libFuzzer target for the given number of seconds (default 60), one after the other,
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
status=0
for corpus in fuzz/corpus/*/; do
  target=$(basename "$corpus")
  scratch=$(mktemp -d)
  dict=()
  [ -f fuzz/dict/"$target".dict ] && dict=(-dict=fuzz/dict/"$target".dict)
  echo "fuzz: $target for ${seconds}s"
  if ! build/fuzz/fuzz/"$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
       -print_final_stats=1 -artifact_prefix="$artifacts/$target-" "${dict[@]}" "$@" "$scratch" "$corpus" \
       >"$artifacts/$target.log" 2>&1; then
    echo "fuzz: $target FAILED (reproducer and log in $artifacts)"
    tail -n 40 "$artifacts/$target.log"
    status=1
  else
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec)' "$artifacts/$target.log" | sed "s/^/fuzz: $target /"
  fi
  rm -rf "$scratch"
done
exit $status
