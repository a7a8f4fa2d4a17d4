"""Writes docs/benchmarks/cuda.md from kvc_bench_cuda's JSON, bench_kvpress.py --device cuda's JSON and the
compute-sanitizer logs of tools/gpu/run_all.sh."""

import argparse
import datetime
import glob
import json
import os

from bench_json import load_benchmarks

TARGETS = [
    ("whole compress step (EA + cov, 50 %)", "BM_CudaExpectedAttentionCompress", {4096: 40.0, 131072: 500.0}),
    ("whole compress step, covariance on tensor cores", "BM_CudaExpectedAttentionCompress_TensorCores",
     {4096: 60.0, 131072: 600.0}),
    ("selection, 8 rows, 50 %", "BM_CudaSelect", {32768: 20.0}),
]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--kvcompress", required=True)
    p.add_argument("--kvpress", required=True)
    p.add_argument("--sanitizer-logs", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--command", required=True)
    a = p.parse_args()
    bench, ctx = load_benchmarks(a.kvcompress)
    theirs = {}
    torch_version = "not run"
    if os.path.exists(a.kvpress):
        kp = json.load(open(a.kvpress))
        theirs = {r["tokens"]: r for r in kp["results"]}
        torch_version = kp.get("torch", "")
    lines = [
        "# CUDA benchmarks",
        "",
        f"Measured {datetime.date.today().isoformat()} on {ctx.get('gpu', 'unknown GPU')} (peaks used for"
        f" `of roofline`: {float(ctx.get('peak_bytes_per_second', 0)) / 1e12:.2f} TB/s,"
        f" {float(ctx.get('peak_flop_per_second', 0)) / 1e12:.0f} TFLOP/s dense bf16), bfloat16 cache, batch 1,"
        " the Llama-3.1-8B layer (32 query heads, 8 KV heads, head_dim 128, llama3 RoPE). kvcompress: the `cuda`"
        f" preset, CUDA events, mean of 3 repetitions. kvpress 0.5.5 on PyTorch {torch_version}, same GPU, same run.",
        "",
        f"Command: `{a.command}`",
        "",
        "## kvcompress alone",
        "",
        "| benchmark | tokens | µs | GB/s | TFLOP/s | of roofline |",
        "|---|---|---|---|---|---|",
    ]
    for (name, tokens), b in sorted(bench.items()):
        us = b["real_time"] if b.get("time_unit") == "us" else b["real_time"] * 1e3
        lines.append(f"| {name} | {tokens} | {us:.1f} | {b.get('bytes_per_second', 0) / 1e9:.0f} |"
                     f" {b.get('FLOP_per_second', 0) / 1e12:.2f} | {100 * b.get('of_roofline', 0):.0f} % |")
    lines += ["", "## Targets", "", "| target | tokens | goal µs | measured µs | met |", "|---|---|---|---|---|"]
    for label, name, goals in TARGETS:
        for tokens, goal in goals.items():
            b = bench.get((name, tokens))
            if b is None:
                lines.append(f"| {label} | {tokens} | {goal:.0f} | not measured | – |")
                continue
            us = b["real_time"]
            lines.append(f"| {label} | {tokens} | {goal:.0f} | {us:.1f} | {'yes' if us <= goal else 'no'} |")
    if theirs:
        lines += ["", "## Against kvpress (PyTorch) on the same GPU", "",
                  "| step | tokens | kvcompress µs | kvpress µs | speed-up (goal ≥ 20×) |", "|---|---|---|---|---|"]
        for label, name, key in [("EA score, covariance", "BM_CudaExpectedAttentionScore_Cov", "ea_score_cov_s"),
                                 ("EA score, mean only", "BM_CudaExpectedAttentionScore_NoCov", "ea_score_nocov_s"),
                                 ("whole compress step", "BM_CudaExpectedAttentionCompress", "ea_compress_s"),
                                 ("whole compress step, tensor cores", "BM_CudaExpectedAttentionCompress_TensorCores",
                                  "ea_compress_s"),
                                 ("SnapKV score", "BM_CudaSnapKVScore", "snapkv_score_s"),
                                 ("Knorm score", "BM_CudaKnormScore", "knorm_score_s")]:
            for tokens in sorted(theirs):
                b = bench.get((name, tokens))
                if b is None:
                    continue
                kp_us = theirs[tokens][key] * 1e6
                lines.append(f"| {label} | {tokens} | {b['real_time']:.1f} | {kp_us:.1f} |"
                             f" {kp_us / b['real_time']:.1f}× |")
    lines += ["", "## compute-sanitizer", "", "| tool | test executable | result |", "|---|---|---|"]
    for log in sorted(glob.glob(os.path.join(a.sanitizer_logs, "sanitizer-*.log"))):
        tool, exe = os.path.basename(log)[len("sanitizer-"):-len(".log")].split("-", 1)
        text = open(log).read()
        summary = [line for line in text.splitlines() if "ERROR SUMMARY" in line]
        lines.append(f"| {tool} | {exe} | {summary[-1].strip() if summary else 'no summary (see log)'} |")
    lines.append("")
    open(a.out, "w").write("\n".join(lines))


if __name__ == "__main__":
    main()
