"""Times kvpress's own presses with PyTorch at the shapes of benchmarks/cpu/bench_cpu.cpp (CPU, fp32) or
benchmarks/cuda/bench_cuda.cu (--device cuda: bfloat16 on the GPU, synchronised around every call).

kvpress's ExpectedAttentionPress.score recomputes the pre-RoPE queries from the hidden states with
q_proj; kvcompress receives the queries from the engine. Both figures are reported: kvpress's score
as it runs, and the same minus the time of q_proj alone (the like-for-like comparison).
"""

import argparse
import json
import time

import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding

from kvpress import ExpectedAttentionPress, KnormPress, SnapKVPress

Q_HEADS, KV_HEADS, HEAD_DIM, WINDOW = 32, 8, 128, 64


def make_module():
    config = LlamaConfig(
        hidden_size=Q_HEADS * HEAD_DIM,
        num_attention_heads=Q_HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        max_position_embeddings=131072,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    )
    module = LlamaAttention(config, layer_idx=0).eval()
    module.rotary_emb = LlamaRotaryEmbedding(config)
    return module


def best_of(fn, repeats, device):
    """Best wall time of `repeats` calls after one warm-up (a GPU's first call pays for kernel loading)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384, 32768])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    module = make_module().to(device=dev, dtype=dtype)
    randn = lambda *shape: torch.randn(*shape, device=dev, dtype=dtype)  # noqa: E731
    results = []
    with torch.no_grad():
        for n in args.sizes:
            hidden = randn(1, n, Q_HEADS * HEAD_DIM)
            keys = randn(1, KV_HEADS, n, HEAD_DIM)
            values = randn(1, KV_HEADS, n, HEAD_DIM)
            pos = torch.arange(n, device=dev).unsqueeze(0)
            kwargs = {"position_embeddings": module.rotary_emb(hidden, pos)}
            ea = ExpectedAttentionPress(compression_ratio=0.5)
            ea_nocov = ExpectedAttentionPress(compression_ratio=0.5, use_covariance=False)
            row = {"tokens": n, "threads": args.threads, "device": args.device}
            row["q_proj_s"] = best_of(lambda: module.q_proj(hidden[:, ea.n_sink:]), args.repeats, args.device)
            row["ea_score_cov_s"] = best_of(lambda: ea.score(module, hidden, keys, values, None, kwargs), args.repeats, args.device)
            row["ea_score_nocov_s"] = best_of(
                lambda: ea_nocov.score(module, hidden, keys, values, None, kwargs), args.repeats, args.device)
            row["ea_compress_s"] = best_of(lambda: ea.compress(module, hidden, keys, values, None, kwargs), args.repeats, args.device)
            snap = SnapKVPress(compression_ratio=0.5, window_size=WINDOW, kernel_size=5)
            row["snapkv_score_s"] = best_of(lambda: snap.score(module, hidden, keys, values, None, kwargs), args.repeats, args.device)
            row["knorm_score_s"] = best_of(
                lambda: KnormPress(compression_ratio=0.5).score(module, hidden, keys, values, None, kwargs), args.repeats, args.device)
            print(json.dumps(row), flush=True)
            results.append(row)
    with open(args.out, "w") as f:
        gpu = torch.cuda.get_device_name() if args.device == "cuda" else None
        json.dump({"torch": torch.__version__, "gpu": gpu, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
