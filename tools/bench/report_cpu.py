"""Writes docs/benchmarks/cpu.md from kvc_bench_cpu's Google Benchmark JSON and bench_kvpress.py's JSON:
the machine's ceilings measured in the same run, every step as a fraction of the ceiling it is bound by,
kvcompress against kvpress like for like (the same pre-RoPE queries handed to both) and as kvpress runs,
1 against 2 threads, and the issue's targets with whether each is met."""

import argparse
import datetime
import json
import platform
import subprocess

GIB = 2**30


def cpu_model():
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load(path):
    """{(name, tokens, threads): entry}; "BM_X<float>/4096/2/min_time:0.500/real_time" → ("BM_X<float>", 4096, 2)."""
    data = json.load(open(path))
    out = {}
    for b in data["benchmarks"]:
        if b.get("run_type") == "aggregate" and b.get("aggregate_name") != "mean":
            continue
        name = "/".join(p for p in b["name"].split("/")
                        if not p.isdigit() and ":" not in p and not p.startswith("real_time"))
        b["ms"] = b["real_time"] * {"ms": 1.0, "us": 1e-3, "ns": 1e-6, "s": 1e3}[b.get("time_unit", "ns")]
        out[(name, int(b.get("tokens", 0)), int(b.get("threads", 0)))] = b
    return out, data["context"]


def gflops(b):
    return b.get("FLOP_per_second", 0.0) / 1e9


def gbs(b):
    return b.get("bytes_per_second", 0.0) / GIB


# (label, kvcompress benchmark, kvpress like-for-like key, kvpress as-it-runs key, kvpress dtype, bound)
# bound: "gemm" for compute-bound steps (fraction of the fp32 GEMM ceiling), "read" for memory-bound
# steps (fraction of the streaming read ceiling).
ROWS = [
    ("Expected Attention score, covariance", "BM_ExpectedAttentionScore_Cov<float>", "ea_score_cov_given_s", "ea_score_cov_s", "float32", "gemm"),
    ("Expected Attention score, covariance, bf16 cache", "BM_ExpectedAttentionScore_Cov<bfloat16>", "ea_score_cov_given_s", "ea_score_cov_s", "bfloat16", "gemm"),
    ("Expected Attention score, covariance, bf16 cache, portable fp32 path", "BM_ExpectedAttentionScore_Cov_Portable", "ea_score_cov_given_s", "ea_score_cov_s", "bfloat16", "gemm"),
    ("Expected Attention score, covariance, half cache", "BM_ExpectedAttentionScore_Cov<half>", None, None, None, "gemm"),
    ("Expected Attention score, mean only", "BM_ExpectedAttentionScore_NoCov<float>", "ea_score_nocov_given_s", "ea_score_nocov_s", "float32", "read"),
    ("whole compress step (EA + cov, 50 %)", "BM_ExpectedAttentionCompress<float>", "ea_compress_given_s", "ea_compress_s", "float32", "gemm"),
    ("whole compress step, bf16 cache", "BM_ExpectedAttentionCompress<bfloat16>", "ea_compress_given_s", "ea_compress_s", "bfloat16", "gemm"),
    ("AdaKV(Expected Attention) compress, 50 %", "BM_AdaKVExpectedAttentionCompress<float>", "adakv_ea_compress_given_s", None, "float32", "gemm"),
    ("SnapKV score (w = 64)", "BM_SnapKVScore<float>", "snapkv_score_given_s", "snapkv_score_s", "float32", "gemm"),
    ("SnapKV score (w = 64), bf16 cache", "BM_SnapKVScore<bfloat16>", "snapkv_score_given_s", None, "bfloat16", "gemm"),
    ("TOVA score", "BM_TOVAScore<float>", "tova_score_given_s", None, "float32", "read"),
    ("Knorm score", "BM_KnormScore<float>", "knorm_score_s", None, "float32", "read"),
    ("Knorm score, bf16 cache", "BM_KnormScore<bfloat16>", "knorm_score_s", None, "bfloat16", "read"),
    ("Knorm score, half cache", "BM_KnormScore<half>", None, None, None, "read"),
    ("KeyDiff score", "BM_KeyDiffScore<float>", "keydiff_score_s", None, "float32", "read"),
    ("StreamingLLM score", "BM_StreamingLLMScore<float>", "streaming_llm_score_s", None, "float32", "read"),
]

# The whole compress step's speed-up targets over kvpress like for like:
# (kvcompress benchmark, kvpress key, dtype, goal, the ceiling that bounds it).
WHOLE_STEP_GOALS = [("BM_ExpectedAttentionCompress<float>", "ea_compress_given_s", "float32", 4, "gemm"),
                    ("BM_ExpectedAttentionCompress<bfloat16>", "ea_compress_given_s", "bfloat16", 15, "bf16")]

# The compute-bound steps that 2 threads must run at least TWO_THREAD_GOAL× faster than one.
TWO_THREAD_STEPS = ("BM_ExpectedAttentionScore_Cov<float>", "BM_SnapKVScore<float>", "BM_ExpectedAttentionCompress<float>")
TWO_THREAD_GOAL = 1.8


def two_thread_scaling(bench, name, tokens):
    """1-thread time over 2-thread time of a step, or None where either was not run."""
    one, two = bench.get((name, tokens, 1)), bench.get((name, tokens, 2))
    return one["ms"] / two["ms"] if one and two else None


def targets(bench, theirs, sizes, limits, like_for_like, engine):
    """The issue's targets, each with what this run measured and whether it is met; like_for_like holds
    (step, tokens, speed-up) of every row timed against kvpress like for like; engine: the rows of
    engine_vs_transformers.py --json, or None."""
    rows = []

    def add(target, tokens, measured, met):
        rows.append(f"| {target} | {tokens} | {measured} | {'yes' if met else 'no'} |")

    for tokens in sizes:
        b = bench.get(("BM_ExpectedAttentionScore_Cov<float>", tokens, 2))
        if b and limits["gemm"]:
            f = gflops(b) / limits["gemm"]
            add("EA covariance scoring ≥ 80 % of the fp32 GEMM ceiling", tokens, f"{100 * f:.0f} %", f >= 0.8)
        bf = bench.get(("BM_ExpectedAttentionScore_Cov<bfloat16>", tokens, 2))
        if b and bf:
            x = b["ms"] / bf["ms"]
            add("EA covariance scoring, bf16 cache ≥ 1.6× fp32", tokens, f"{x:.2f}×", x >= 1.6)
        port = bench.get(("BM_ExpectedAttentionScore_Cov_Portable", tokens, 2))
        if bf and port:
            x = port["ms"] / bf["ms"]
            add("EA covariance scoring, bf16 cache: AVX512_BF16 kernel ≥ 1.6× its portable fp32 path", tokens, f"{x:.2f}×", x >= 1.6)
        for name in ("BM_SnapKVScore<float>",):
            b = bench.get((name, tokens, 2))
            if b and limits["gemm"]:
                f = gflops(b) / limits["gemm"]
                add(f"{name[3:-7]} scoring ≥ 70 % of the GEMM ceiling", tokens, f"{100 * f:.0f} %", f >= 0.7)
        for name in ("BM_TOVAScore<float>", "BM_KnormScore<float>", "BM_KnormScore<bfloat16>", "BM_KnormScore<half>",
                     "BM_ExpectedAttentionScore_NoCov<float>", "BM_KeyDiffScore<float>",
                     "BM_StreamingLLMScore<float>", "BM_SelectCompact", "BM_SelectCompactPaged/per_sequence",
                     "BM_SelectCompactPaged/per_head"):
            b = bench.get((name, tokens, 2))
            if b and limits["read"]:
                f = gbs(b) / limits["read"]
                add(f"{name[3:]} ≥ 70 % of streaming read", tokens, f"{100 * f:.0f} %", f >= 0.7)
            # Compaction writes as many bytes as it reads: the streaming copy, which counts both, is its bar.
            if b and name.startswith("BM_SelectCompact") and limits["copy"]:
                f = gbs(b) / limits["copy"]
                add(f"{name[3:]} ≥ 70 % of streaming copy (read + written)", tokens, f"{100 * f:.0f} %", f >= 0.7)
        for name, key, dtype, goal, _ in WHOLE_STEP_GOALS:
            b, r = bench.get((name, tokens, 2)), theirs.get((dtype, tokens), {})
            if b and key in r:
                x = r[key] * 1e3 / b["ms"]
                add(f"whole compress step ≥ {goal}× kvpress like for like, {dtype}", tokens, f"{x:.1f}×", x >= goal)
        for name in TWO_THREAD_STEPS:
            x = two_thread_scaling(bench, name, tokens)
            if x is not None:
                add(f"{name[3:]}: 2 threads ≥ {TWO_THREAD_GOAL}× one", tokens, f"{x:.2f}×", x >= TWO_THREAD_GOAL)
    for r in (engine or {}).get("rows", []):
        where = f"{r['tokens']}, {r['threads']} thread{'s' if r['threads'] > 1 else ''}"
        for step in ("prefill", "decode"):
            x = r[f"{step}_engine"] / r[f"{step}_transformers"]
            add(f"engine {step} ≥ transformers, fp32", where, f"{x:.2f}×", x >= 1.0)
        if r["tokens"] >= 8000:
            x = r["decode_engine_pressed"] / r["decode_engine"]
            add("engine decoding, half the cache kept ≥ 1.2× the full cache", where, f"{x:.2f}×", x >= 1.2)
    slower = [f"{label} at {tokens} ({x:.1f}×)" for label, tokens, x in like_for_like if x < 1.0]
    rows.append(f"| no row slower than kvpress like for like | all | {len(slower)} slower |"
                f" {'no' if slower else 'yes'} |")
    if not rows:
        return []
    notes = ["", "TOVA scores from the last query alone (kvpress's window of one): a matrix-vector product of"
             " 0.5 FLOP per byte read, bound by the streaming read, not by the GEMM ceiling the issue names for it,"
             " so its target row above is against the streaming read."]
    if slower:
        notes += ["", "Slower than kvpress like for like: " + "; ".join(slower) + "."]
    return (["", "## Targets", "", "| target | tokens | measured | met |", "|---|---|---|---|"] + rows + notes
            + gaps(bench, theirs, sizes, limits))


def gaps(bench, theirs, sizes, limits):
    """What bounds the targets that a faster kernel cannot reach, computed from this run: the rate that the
    speed-up over kvpress would need against the fastest rate measured, and the ceiling's own scaling with
    threads."""
    lines = []
    for name, key, dtype, goal, ceiling_name in WHOLE_STEP_GOALS:
        for tokens in sizes:
            b, r = bench.get((name, tokens, 2)), theirs.get((dtype, tokens), {})
            if not b or key not in r:
                continue
            flop = gflops(b) * b["ms"] / 1e3  # GFLOP of the step, counted by the benchmark
            theirs_rate, needed = flop / r[key], goal * flop / r[key]
            # The fastest rate this run saw for the step: the ceiling, or the step itself at any size where
            # its own kernel beats the ceiling's (the bf16 kernel does).
            peak = max([limits.get(ceiling_name) or 0.0] +
                       [gflops(bench[(name, t, 2)]) for t in sizes if (name, t, 2) in bench])
            if needed > peak:
                lines.append(f"- whole compress step, {dtype}, {tokens} tokens: kvpress like for like does the same"
                             f" {flop:.1f} GFLOP at {theirs_rate:.1f} GFLOP/s, so {goal}× needs {needed:.0f} GFLOP/s,"
                             f" {needed / peak:.1f}× the fastest rate measured for it in this run ({peak:.1f} GFLOP/s:"
                             f" the larger of the {'fp32 GEMM' if ceiling_name == 'gemm' else 'bf16 dot-product'}"
                             " ceiling and kvcompress's step at any size). The target asks for more than the hardware"
                             " gives.")
    two_thread_missed = any((x := two_thread_scaling(bench, name, tokens)) is not None and x < TWO_THREAD_GOAL
                            for name in TWO_THREAD_STEPS for tokens in sizes)
    if two_thread_missed and limits.get("gemm1") and limits.get("gemm"):
        x = limits["gemm"] / limits["gemm1"]
        lines.append(f"- 2 threads against one: this run's own fp32 GEMM ceiling (Eigen, 1024³ per thread) scales"
                     f" {x:.2f}× from 1 to 2 threads, and a compute-bound step scales as the ceiling does (CPU time per"
                     " call is the same on 1 and 2 threads: docs/architecture.md, \"CPU threading\").")
    if not lines:
        return []
    return ["", "### Bounds computed from this run", ""] + lines + [
        "", "The memory-bound steps' profiles (what each loop waits on, before and after its kernel) are in"
        " docs/benchmarks/memory-bound-profile.md; the engine's in docs/benchmarks/engine-profile.md."]


def engine_section(engine):
    """The reference engine beside transformers, from engine_vs_transformers.py --json of the same run."""
    lines = ["", "## The reference engine on SmolLM2-135M-Instruct (same run)", "",
             f"`kvc_generate` (release preset, -O3 -march=native) beside transformers {engine['transformers']} on"
             f" torch {engine['torch']}, both in float32 on the GGUF's dequantised weights, the same random prompt,"
             f" greedy, {engine['new_tokens']} new tokens, the fastest of the alternated runs"
             " (`tools/bench/engine_vs_transformers.py`, which docs/results/smollm2/speed.md describes). Half cache:"
             f" the prefilled cache compressed by `{engine['press']}` at ratio {engine['ratio']:g} before decoding.",
             "", "| threads | prompt tokens | prefill engine tokens/s | prefill transformers | engine / transformers |"
             " decode engine tokens/s | decode transformers | engine / transformers | decode, half cache | half / full |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in engine["rows"]:
        pe, ph, de, dh, dp = (r[k] for k in ("prefill_engine", "prefill_transformers", "decode_engine",
                                              "decode_transformers", "decode_engine_pressed"))
        lines.append(f"| {r['threads']} | {r['tokens']} | {pe:.0f} | {ph:.0f} | {pe / ph:.2f}× | {de:.1f} | {dh:.1f} |"
                     f" {de / dh:.2f}× | {dp:.1f} | {dp / de:.2f}× |")
    return lines


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--kvcompress", required=True)
    p.add_argument("--kvpress", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--command", required=True)
    p.add_argument("--conditions", default="", help="what else ran on the machine, said beside the load average")
    p.add_argument("--engine", help="engine_vs_transformers.py --json of the same run: the engine's rows and targets")
    a = p.parse_args()
    engine = json.load(open(a.engine)) if a.engine else None
    bench, ctx = load(a.kvcompress)
    kvp = json.load(open(a.kvpress))
    theirs = {(r.get("dtype", "float32"), r["tokens"]): r for r in kvp["results"]}
    sizes = sorted({t for (_, t) in theirs})

    def ceiling(name, threads, key):
        b = bench.get((name, 0, threads))
        return (gflops(b) if key == "gemm" else gbs(b)) if b else None

    gemm2 = ceiling("BM_Ceiling_GemmF32/square", 2, "gemm")
    read2 = ceiling("BM_Ceiling_StreamRead", 2, "read")
    limits = {"gemm": gemm2, "read": read2, "copy": ceiling("BM_Ceiling_StreamCopy", 2, "read"),
              "gemm1": ceiling("BM_Ceiling_GemmF32/square", 1, "gemm"), "bf16": ceiling("BM_Ceiling_Bf16Dot", 2, "gemm")}

    def fraction(b, bound):
        lim = limits[bound]
        if not lim:
            return "–"
        value = gflops(b) if bound == "gemm" else gbs(b)
        return f"{100 * value / lim:.0f} % of {bound.replace('gemm', 'GEMM')}"

    lines = [
        "# CPU benchmarks",
        "",
        f"Measured {datetime.date.today().isoformat()} on {cpu_model()}, {ctx.get('num_cpus')} cores"
        f" (load average when the run started: {', '.join(f'{x:.2f}' for x in ctx.get('load_avg', []))}"
        f"{'; ' + a.conditions if a.conditions else ''}),"
        " kvcompress and kvpress with the same thread count, in the same run. kvcompress built with the `bench`"
        f" preset (Release, -O3 -march=native); kvpress 0.5.5 on PyTorch {kvp.get('torch', '')}, CPU.",
        "",
        "Shape: the Llama-3.1-8B layer (32 query heads, 8 KV heads, head_dim 128, llama3 RoPE), batch 1.",
        "",
        f"Command: `{a.command}`",
        "",
        "## This machine's ceilings (same run)",
        "",
        "| ceiling | threads | measured |",
        "|---|---|---|",
    ]
    for label, name, key in [("fp32 GEMM, Eigen, 1024³ per thread", "BM_Ceiling_GemmF32/square", "gemm"),
                             ("fp32 GEMM, Eigen, 4096×128·128×128 per thread (EA's shape)", "BM_Ceiling_GemmF32/inner128", "gemm"),
                             ("bf16 dot product (VDPBF16PS, L1-resident)", "BM_Ceiling_Bf16Dot", "gemm"),
                             ("streaming read", "BM_Ceiling_StreamRead", "read"),
                             ("streaming copy (read + write)", "BM_Ceiling_StreamCopy", "read")]:
        for threads in (1, 2):
            v = ceiling(name, threads, key)
            if v is not None:
                lines.append(f"| {label} | {threads} | {v:.1f} {'GFLOP/s' if key == 'gemm' else 'GiB/s'} |")
    lines += [
        "",
        "## kvcompress against kvpress, 2 threads",
        "",
        "Like for like: kvpress's `get_prerope_query_states` returns queries computed once beforehand, the"
        " same pre-RoPE queries kvcompress is handed, so neither side projects hidden states. As it runs:"
        " kvpress unchanged, its `q_proj` included (kvcompress never does that work). The fraction is of the"
        " ceiling the step is bound by, measured above at 2 threads (fp32 GEMM for compute-bound steps,"
        " streaming read for memory-bound ones).",
        "",
        "| step | tokens | kvcompress ms | GFLOP/s | GiB/s | of ceiling | kvpress like-for-like ms | speed-up |"
        " kvpress as it runs ms | speed-up as it runs |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    like_for_like = []
    for label, name, lfl, asis, dtype, bound in ROWS:
        for tokens in sizes:
            b = bench.get((name, tokens, 2))
            if b is None:
                continue
            ms = b["ms"]
            r = theirs.get((dtype, tokens), {})
            cells = [label, str(tokens), f"{ms:.2f}", f"{gflops(b):.1f}", f"{gbs(b):.1f}", fraction(b, bound)]
            for key in (lfl, asis):
                if key and key in r:
                    kp = r[key] * 1e3
                    cells += [f"{kp:.2f}", f"{kp / ms:.1f}×"]
                    if key == lfl:
                        like_for_like.append((label, tokens, kp / ms))
                else:
                    cells += ["–", "–"]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## 1 against 2 threads", "",
              "| step | tokens | 1 thread ms | 2 threads ms | scaling | CPU ms, 1 thread | CPU ms, 2 threads |"
              " caller alone, 2 threads |",
              "|---|---|---|---|---|---|---|---|"]

    def cpu_ms(b):
        return f"{b['process_cpu_ms']:.3f}" if "process_cpu_ms" in b else "–"

    def caller_alone(b):
        """The share of the CPU time that the calling thread spends beyond the other thread's: the serial part."""
        if "caller_cpu_ms" not in b or not b.get("process_cpu_ms"):
            return "–"
        caller, total = b["caller_cpu_ms"], b["process_cpu_ms"]
        return f"{100 * (caller - (total - caller)) / total:.1f} %"

    for label, name in [("Expected Attention score, covariance", "BM_ExpectedAttentionScore_Cov<float>"),
                        ("the same, on a ThreadPool", "BM_Pool/ExpectedAttentionScore_Cov<float>"),
                        ("SnapKV score", "BM_SnapKVScore<float>"),
                        ("the same, on a ThreadPool", "BM_Pool/SnapKVScore<float>"),
                        ("whole compress step", "BM_ExpectedAttentionCompress<float>"),
                        ("the same, on a ThreadPool", "BM_Pool/ExpectedAttentionCompress<float>")]:
        for tokens in sizes:
            one, two = bench.get((name, tokens, 1)), bench.get((name, tokens, 2))
            if one and two:
                lines.append(f"| {label} | {tokens} | {one['ms']:.2f} | {two['ms']:.2f} | {one['ms'] / two['ms']:.2f}× |"
                             f" {cpu_ms(one)} | {cpu_ms(two)} | {caller_alone(two)} |")
    lines += ["", "## Threads started per loop against a persistent ThreadPool, 2 threads", "",
              "| step | tokens | started ms | pool ms | started CPU ms | pool CPU ms |", "|---|---|---|---|---|---|"]
    for (name, tokens, threads), b in sorted(bench.items()):
        plain = bench.get(("BM_" + name[len("BM_Pool/"):], tokens, threads))
        if name.startswith("BM_Pool/") and threads == 2 and plain:
            lines.append(f"| {name[len('BM_Pool/'):]} | {tokens} | {plain['ms']:.4f} | {b['ms']:.4f} |"
                         f" {cpu_ms(plain)} | {cpu_ms(b)} |")
    lines += ["", "## Selection, compaction and decoding", "",
              "| benchmark | tokens | ms | GiB/s | of read ceiling | of copy ceiling |", "|---|---|---|---|---|---|"]
    for (name, tokens, threads), b in sorted(bench.items()):
        if name.startswith("BM_SelectCompact") and threads == 2:
            lines.append(f"| {name} | {tokens} | {b['ms']:.2f} | {gbs(b):.1f} | {fraction(b, 'read')} |"
                         f" {fraction(b, 'copy')} |")
    for (name, tokens, threads), b in sorted(bench.items()):
        if name.startswith("BM_Decoding"):
            lines.append(f"| {name}, per decode step (compression every 512 steps back to {tokens}) | {tokens} |"
                         f" {b['ms']:.3f} | – | – | – |")
    if engine:
        lines += engine_section(engine)
    lines += targets(bench, theirs, sizes, limits, like_for_like, engine)
    lines += [
        "",
        "Compaction: `BM_SelectCompact` (strided) and `BM_SelectCompactPaged` (pages of 16, per-sequence NHD and"
        " per-head tables) select the top half of each row and move it to the front; GiB/s counts the scores read"
        " and half of K and V moved, each moved byte twice (read and written). The streaming copy ceiling counts"
        " its bytes the same way (read + written), so it is the bar for these rows; the read ceiling, which counts"
        " only bytes read, is kept beside it for the issue's 70 % target as first stated. `…_Portable` rows compact"
        " with ordinary stores only (CpuKernels::kPortable); the others stream long runs of large rows"
        " (cpu/compact.hpp).",
        "",
    ]
    open(a.out, "w").write("\n".join(lines))


if __name__ == "__main__":
    main()
