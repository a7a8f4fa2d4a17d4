#!/usr/bin/env bash
# Profiles the reference engine (kvc_generate, release preset) on SmolLM2-135M-Instruct with perf: a random
# prompt, greedy decoding, `cpu-clock` samples (no hardware counters needed: works in a VM). Prints the
# functions with the most self time, over the prefill and over the decoding steps separately (the decoding
# window is the last `decode ms` that kvc_generate reports before it exits). docs/benchmarks/engine-profile.md.
#   bash tools/bench/profile_engine.sh [prompt tokens (2048)] [threads (1)] [new tokens (32)] [kvc_generate options…]
# KVC_GENERATE=path picks another kvc_generate binary (default: build/release's, built if missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
tokens="${1:-2048}" threads="${2:-1}" new_tokens="${3:-32}"
shift $(($# < 3 ? $# : 3))
exe="${KVC_GENERATE:-build/release/examples/engine/kvc_generate}"
if [[ ! -x "$exe" ]]; then
  cmake --preset release >/dev/null
  cmake --build --preset release --target kvc_generate
fi
model="${KVC_SMOLLM2_GGUF:-$HOME/.cache/kvcompress/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
[[ -f "$model" ]] || { echo "profile_engine.sh: no model at $model (tools/models/fetch_smollm2.sh)" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -c "import random, sys; random.seed(0); print(' '.join(str(random.randrange(49152)) for _ in range(int(sys.argv[1]))))" \
  "$tokens" >"$work/prompt.txt"
perf record -q -g -e cpu-clock -F 499 -o "$work/perf.data" -- "$exe" --model "$model" --prompt-file "$work/prompt.txt" \
  --max-new-tokens "$new_tokens" --threads "$threads" "$@" >/dev/null 2>"$work/stderr" || { cat "$work/stderr" >&2; exit 1; }
cat "$work/stderr"
decode_ms="$(sed -n 's/.*decode \([0-9.]*\) ms.*/\1/p' "$work/stderr")"
prefill_ms="$(sed -n 's/.*prefill \([0-9.]*\) ms.*/\1/p' "$work/stderr")"
press_ms="$(sed -n 's/.*press \([0-9.]*\) ms.*/\1/p' "$work/stderr")"
last="$(perf script -F time -i "$work/perf.data" 2>/dev/null | tail -n 1 | tr -d ' :')"
# Windows in perf's seconds: decoding ends at the last sample; the press and the prefill come before it.
read -r decode_start prefill_end prefill_start < <(python3 -c "
import sys
last, dec, pre, press = float(sys.argv[1]), float(sys.argv[2]) / 1e3, float(sys.argv[3]) / 1e3, float(sys.argv[4] or 0) / 1e3
print(f'{last - dec:.6f} {last - dec - press:.6f} {last - dec - press - pre:.6f}')" "$last" "$decode_ms" "$prefill_ms" "${press_ms:-0}")
report() {  # the engine's own functions with their share including callees, then the hottest by self time
  echo "-- kvc_engine functions, share of samples including what they call --"
  perf report -q -i "$work/perf.data" --stdio --children --sort symbol -g none --percent-limit 0.5 --time "$1" 2>/dev/null |
    grep -E 'kvc_engine::[A-Za-z_:]*(linear|attention|silu_mul|rms_norm|apply_rope|output_logits|append|fold_key_tile)' |
    sed -e 's/^ *//' -e 's/\[\.\] //' -e 's/(.*//' | awk '!seen[$3]++' | cut -c1-160
  echo "-- hottest functions by self time --"
  perf report -q -i "$work/perf.data" --stdio --no-children --sort symbol -g none --percent-limit 1.5 --time "$1" 2>/dev/null |
    sed -e 's/^ *//' -e 's/\[\.\] //' | cut -c1-160
}
echo "== prefill ($tokens tokens, --threads $threads): share of cpu-clock samples by function =="
report "$prefill_start,$prefill_end"
echo "== decoding ($new_tokens tokens after the prefill) =="
report "$decode_start,$last"
