"""Times kvpress's own presses and the same presses through kvcompress's Python package, on the same
tensors in the same process (CPU, float32, Llama-3.1-8B layer shape: 32 query heads, 8 KV heads,
head_dim 128), and the binding's own cost per call against the library's call timed inside C++.
Writes docs/benchmarks/python.md. Run with: bash tools/bench/run_python.sh
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_kvpress import HEAD_DIM, KV_HEADS, Q_HEADS, WINDOW, given_queries, make_module  # noqa: E402

import kvcompress as kvc  # noqa: E402
import kvpress  # noqa: E402
from kvcompress import _core  # noqa: E402
from kvcompress.kvpress import KVCompressPress  # noqa: E402
from kvpress.utils import get_prerope_query_states  # noqa: E402


def best_of(fn, setup, repeats):
    """Best wall time of `repeats` calls after WARMUP untimed ones; `setup()` (untimed) gives each call's
    arguments."""
    times = []
    for _ in range(repeats + WARMUP):
        args = setup()
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return min(times[WARMUP:])


def overhead(press, obs, cache, repeats):
    """Fastest per-call seconds of kvc.compress from Python and of the library's call timed in C++, on the
    same cache, lengths restored before every call; the two alternate call by call, so that both see the
    same machine state (caches, clock, load)."""
    obs = obs if obs is not None else kvc.Observation()
    saved = np.array(cache.lengths, copy=True)
    py, cpp = [], []
    for _ in range(repeats + 1):
        cache.lengths[...] = saved
        t0 = time.perf_counter()
        kvc.compress(press, obs, cache, num_threads=THREADS)
        py.append(time.perf_counter() - t0)
        cache.lengths[...] = saved
        cpp += _core._time_compress(press.native, obs, cache._core, 1, THREADS)
    cache.lengths[...] = saved
    return min(py[1:]), min(cpp[1:])


def fmt(s):
    return f"{s * 1e3:.1f} ms" if s >= 1e-3 else f"{s * 1e6:.0f} µs"


def main():
    global THREADS, WARMUP
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384, 32768])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before the timed ones")
    parser.add_argument("--out", default="docs/benchmarks/python.md")
    parser.add_argument("--conditions", default="", help="measurement conditions to record (load, machine)")
    args = parser.parse_args()
    THREADS = args.threads
    WARMUP = args.warmup
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    module = make_module()
    rope = kvc.rotary_embedding_from_config(module.config)
    rows, over = [], []
    with torch.no_grad():
        for n in args.sizes:
            hidden = torch.randn(1, n, Q_HEADS * HEAD_DIM)
            keys = torch.randn(1, KV_HEADS, n, HEAD_DIM)
            values = torch.randn(1, KV_HEADS, n, HEAD_DIM)
            pos = torch.arange(n).unsqueeze(0)
            kwargs = {"position_embeddings": module.rotary_emb(hidden, pos), "cache_position": pos[0]}
            fresh = lambda: (keys.clone(), values.clone())  # noqa: E731 (compression works in place)
            cases = [
                ("Expected Attention (covariance), whole step from hidden states",
                 kvpress.ExpectedAttentionPress(0.5), kvc.ExpectedAttentionPress(0.5)),
                ("SnapKV (window 64), whole step from hidden states",
                 kvpress.SnapKVPress(0.5, window_size=WINDOW), kvc.SnapKVPress(0.5, window_size=WINDOW)),
                ("Knorm, whole step", kvpress.KnormPress(0.5), kvc.KnormPress(0.5)),
            ]
            for name, theirs, ours in cases:
                wrapped = KVCompressPress(ours, num_threads=args.threads)
                t_kvpress = best_of(lambda k, v: theirs.compress(module, hidden, k, v, None, kwargs), fresh,
                                    args.repeats)
                t_wrapped = best_of(lambda k, v: wrapped.compress(module, hidden, k, v, None, kwargs), fresh,
                                    args.repeats)
                rows.append((name, n, t_kvpress, t_wrapped))
                print(name, n, t_kvpress, t_wrapped, flush=True)
            # The engine's case: queries handed over. Like for like, kvpress's get_prerope_query_states
            # returns the same queries, computed once beforehand, so neither side projects hidden states.
            queries = get_prerope_query_states(module, hidden)
            theirs = kvpress.ExpectedAttentionPress(0.5)
            with given_queries(hidden, queries):
                t_kvpress_ea = best_of(lambda k, v: theirs.compress(module, hidden, k, v, None, kwargs), fresh,
                                       args.repeats)
            obs = kvc.Observation(queries=queries, rope=rope)
            press = kvc.ExpectedAttentionPress(0.5)
            t_direct = best_of(lambda k, v: kvc.compress(press, obs, kvc.KVCache(k, v), num_threads=args.threads),
                               fresh, args.repeats)
            rows.append(("Expected Attention (covariance), queries given to both", n, t_kvpress_ea, t_direct))
            print("given", n, t_kvpress_ea, t_direct, flush=True)
            k, v = fresh()
            over.append((f"Expected Attention, {n} tokens", *overhead(press, obs, kvc.KVCache(k, v), args.repeats)))
            k, v = fresh()
            over.append((f"Knorm, {n} tokens", *overhead(kvc.KnormPress(0.5), None, kvc.KVCache(k, v),
                                                         max(args.repeats, 10))))
        small_k, small_v = torch.randn(1, KV_HEADS, 256, HEAD_DIM), torch.randn(1, KV_HEADS, 256, HEAD_DIM)
        over.append(("Knorm, 256 tokens", *overhead(kvc.KnormPress(0.5), None, kvc.KVCache(small_k, small_v), 200)))

    lines = [
        "# Python: kvpress's presses and the same presses through kvcompress",
        "",
        f"Written by `{args.out and 'bash tools/bench/run_python.sh'}` (`tools/bench/bench_python.py`): kvpress "
        f"{kvpress.__version__ if hasattr(kvpress, '__version__') else '0.5.5'}, torch {torch.__version__}, "
        f"kvcompress {kvc.__version__} built by pip (Release, `-C cmake.define.KVC_PYTHON_NATIVE=ON`: this machine's "
        f"instruction set, as the C++ benchmarks' bench preset). CPU, float32, the Llama-3.1-8B "
        f"layer shape ({Q_HEADS} query heads, {KV_HEADS} KV heads, head_dim {HEAD_DIM}), batch 1, "
        f"{args.threads} threads for both (torch.set_num_threads and kvcompress's num_threads), ratio 0.5, "
        f"best of {args.repeats} call(s) after {args.warmup} untimed; both sides work on the same tensors in the same process.",
        "",
        f"Conditions: {args.conditions or 'not recorded'}",
        "",
        "\"whole step\" is kvpress's `press.compress(module, hidden_states, keys, values, None, kwargs)` against "
        "the drop-in `kvcompress.kvpress.KVCompressPress` doing the same call: both compute what the press reads "
        "from the hidden states (Expected Attention's q_proj over every token, SnapKV's window queries), score, "
        "select and shorten the cache. \"queries given to both\" is an engine's call: `kvcompress.compress` with "
        "the pre-RoPE queries handed over, and kvpress's `compress` with its `get_prerope_query_states` returning "
        "the same queries, computed once beforehand (like for like: neither side projects hidden states).",
        "",
        "| step | tokens | kvpress | kvcompress | speed-up |",
        "|---|---|---|---|---|",
    ]
    for name, n, a, b in rows:
        lines.append(f"| {name} | {n // 1024}k | {fmt(a)} | {fmt(b)} | {a / b:.1f}× |")
    lines += [
        "",
        "## The binding's cost per call",
        "",
        "`kvcompress.compress` called from Python against the library's `compress` on the same press, "
        "observation, cache and workspace timed inside C++ (`_core._time_compress`), lengths restored before "
        "every call, the two alternating call by call, fastest of each. The difference is what the binding adds: building the observation and cache views "
        "from DLPack, the lengths copy kept for `released_pages`, releasing the GIL.",
        "",
        "| case | from Python | C++ call | binding adds |",
        "|---|---|---|---|",
    ]
    for name, py, cpp in over:
        lines.append(f"| {name} | {fmt(py)} | {fmt(cpp)} | {fmt(max(py - cpp, 0.0))} |")
    lines += [
        "",
        "The binding's own work is O(batch × kv_heads) (it builds the views and checks shapes and lengths); "
        "the small-cache row, the fastest of 200 calls, measures it.",
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("wrote", args.out)


THREADS = 2
WARMUP = 1

if __name__ == "__main__":
    main()
