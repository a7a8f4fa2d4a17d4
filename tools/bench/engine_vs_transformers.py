"""The reference engine's prefill and decode speed on SmolLM2-135M-Instruct beside HF transformers', on the
same prompt, the same threads, in the same run; writes docs/results/smollm2/speed.md.

transformers 5.2 loads the GGUF with `gguf_file=` and dequantises it to float32 (the `gguf` package), the
engine dequantises the same file to float32 (kvc_engine/model_io): both compute in float32 on the same
weights. Each configuration is timed `--repeat` times, alternating engine and transformers, and the fastest
run of each is kept (the least disturbed by the rest of the machine).

  prefill: one forward pass over the whole prompt into an empty cache, logits of the last token only
           (transformers: `model(ids, use_cache=True, logits_to_keep=1)` under `torch.inference_mode()`),
           tokens per second.
  decode:  `--new-tokens` greedy steps after that prefill, one token per forward pass (transformers: a
           DynamicCache fed back each step), tokens per second over the steps after the first token.
  half cache: the engine again, its prefilled cache compressed by `--press` at `--ratio` (kvc_generate
           --press/--ratio) before decoding: the decoding speed-up of attending over fewer entries. Its
           prefill is timed too and counts as one more engine prefill run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM


def time_transformers(model, ids: list[int], new_tokens: int) -> tuple[float, float]:
    """(prefill seconds, decode seconds over new_tokens - 1 steps) of one greedy generation."""
    x = torch.tensor([ids], dtype=torch.long)
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = model(x, use_cache=True, logits_to_keep=1)  # the engine's prefill also projects only the last token
        t1 = time.perf_counter()
        past = out.past_key_values
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        t2 = time.perf_counter()
        for _ in range(new_tokens - 1):
            out = model(token, past_key_values=past, use_cache=True)
            past = out.past_key_values
            token = out.logits[:, -1].argmax(-1, keepdim=True)
        t3 = time.perf_counter()
    return t1 - t0, t3 - t2


ENGINE_LINE = re.compile(r"prefill ([0-9.]+) ms .*decode ([0-9.]+) ms")


def time_engine(exe: Path, model: Path, ids: list[int], new_tokens: int, threads: int, prompt_file: Path,
                press: list[str]) -> tuple[float, float]:
    """(prefill seconds, decode seconds over new_tokens - 1 steps) from kvc_generate's own timers; `press`:
    extra options (--press NAME --ratio R) compressing the prefilled cache before decoding, or none."""
    prompt_file.write_text(" ".join(map(str, ids)))
    r = subprocess.run([str(exe), "--model", str(model), "--prompt-file", str(prompt_file), "--max-new-tokens",
                        str(new_tokens), "--threads", str(threads), *press], capture_output=True, text=True, check=True)
    m = ENGINE_LINE.search(r.stderr)
    if m is None:
        raise RuntimeError(f"kvc_generate printed no timing line:\n{r.stderr}")
    return float(m.group(1)) / 1e3, float(m.group(2)) / 1e3


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="the SmolLM2 GGUF (tools/models/fetch_smollm2.sh)")
    ap.add_argument("--engine", type=Path, required=True, help="kvc_generate, built optimised (release preset)")
    # 8128 + 64 new tokens fill SmolLM2's 8192-token context.
    ap.add_argument("--lengths", default="512,2048,4096,8128")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--long", type=int, default=4096, help="prompts longer than this are timed --long-repeat times")
    ap.add_argument("--long-repeat", type=int, default=1)
    ap.add_argument("--press", default="knorm", help="the press compressing the engine's cache for the half-cache decode")
    ap.add_argument("--ratio", type=float, default=0.5, help="the fraction of the cache that press removes")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--json", type=Path, help="also write the rows as JSON (tools/bench/report_cpu.py --engine reads it)")
    ap.add_argument("--command", default="bash tools/bench/run_engine.sh")
    a = ap.parse_args(argv)
    lengths = [int(v) for v in a.lengths.split(",")]
    thread_counts = [int(v) for v in a.threads.split(",")]
    if a.new_tokens < 2 or a.repeat < 1 or a.long_repeat < 1 or min(lengths) < 1 or min(thread_counts) < 1:
        ap.error("--new-tokens must be at least 2, --repeat, --long-repeat, --lengths and --threads positive")
    if not 0.0 < a.ratio < 1.0:
        ap.error(f"--ratio must be in (0, 1), got {a.ratio}")
    press = ["--press", a.press, "--ratio", str(a.ratio)]
    kept = f"{1.0 - a.ratio:g}"

    transformers.logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(str(a.model.parent), gguf_file=a.model.name, dtype=torch.float32)
    model.eval()
    vocab = model.config.vocab_size
    rng = np.random.default_rng(0)  # token ids do not change the work: any ids of the vocabulary
    a.out.parent.mkdir(parents=True, exist_ok=True)
    scratch = tempfile.TemporaryDirectory()  # the prompt ids handed to kvc_generate
    prompt_file = Path(scratch.name) / "prompt.txt"
    rows = []
    for threads in thread_counts:
        torch.set_num_threads(threads)
        for n in lengths:
            ids = rng.integers(0, vocab, size=n).tolist()
            time_transformers(model, ids[:64], 4)  # warm-up: torch's first call pays its one-off costs
            best = {"hf": [float("inf")] * 2, "engine": [float("inf")] * 2, "pressed": [float("inf")] * 2}
            for _ in range(a.repeat if n <= a.long else a.long_repeat):
                # Sequential on purpose: each run is timed alone, alternating the three.
                for who in ("engine", "hf", "pressed"):
                    if who == "hf":
                        t = time_transformers(model, ids, a.new_tokens)
                    else:
                        t = time_engine(a.engine, a.model, ids, a.new_tokens, threads, prompt_file, press if who == "pressed" else [])
                    best[who] = [min(best[who][0], t[0]), min(best[who][1], t[1])]
            steps = a.new_tokens - 1
            engine_prefill = min(best["engine"][0], best["pressed"][0])  # the same prefill in both engine runs
            row = (threads, n, n / engine_prefill, n / best["hf"][0], steps / best["engine"][1], steps / best["hf"][1],
                   steps / best["pressed"][1])
            rows.append(row)
            print(f"threads {threads} prompt {n}: prefill engine {row[2]:.0f} / transformers {row[3]:.0f} tokens/s, "
                  f"decode engine {row[4]:.1f} / transformers {row[5]:.1f} / engine {kept} cache {row[6]:.1f} tokens/s",
                  flush=True)
    scratch.cleanup()

    lines = [
        "# The reference engine's speed beside transformers on SmolLM2-135M-Instruct",
        "",
        f"Measured {datetime.date.today().isoformat()} on {cpu_name()} ({os.cpu_count()} logical CPUs) with "
        f"`{a.command}`: torch {torch.__version__}, transformers "
        f"{transformers.__version__}, both in float32 on the GGUF's dequantised weights, the same "
        f"random prompt, greedy, {a.new_tokens} new tokens, the fastest of {a.repeat} runs each "
        f"({a.long_repeat} for prompts over {a.long} tokens), alternated. "
        "The engine is kvc_generate from the release preset (-O3 -march=native); its timers are its own "
        "(`GenerateResult`), transformers' are `time.perf_counter` around its forward calls. "
        f"Half cache: the engine decoding after `kvc_generate --press {a.press} --ratio {a.ratio:g}` compressed the "
        f"prefilled cache to {kept} of its entries (the press's own time is not decoding time); "
        "its prefill counts as one more engine prefill run.",
        "",
        "| threads | prompt tokens | prefill engine (tokens/s) | prefill transformers | engine / transformers | "
        f"decode engine (tokens/s) | decode transformers | engine / transformers | decode engine, {kept} cache | "
        f"{kept} cache / full |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t, n, pe, ph, de, dh, dp in rows:
        lines.append(f"| {t} | {n} | {pe:.0f} | {ph:.0f} | {pe / ph:.2f} | {de:.1f} | {dh:.1f} | {de / dh:.2f} | "
                     f"{dp:.1f} | {dp / de:.2f} |")
    a.out.write_text("\n".join(lines) + "\n")
    if a.json:
        keys = ("threads", "tokens", "prefill_engine", "prefill_transformers", "decode_engine", "decode_transformers",
                "decode_engine_pressed")
        a.json.write_text(json.dumps({"torch": torch.__version__, "transformers": transformers.__version__,
                                      "new_tokens": a.new_tokens, "press": a.press, "ratio": a.ratio,
                                      "rows": [dict(zip(keys, r)) for r in rows]}, indent=1))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
