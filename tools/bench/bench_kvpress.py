"""Times kvpress's own presses with PyTorch at the shapes of benchmarks/cpu/bench_cpu.cpp (CPU, fp32 and
bf16) or benchmarks/cuda/bench_cuda.cu (--device cuda: bfloat16 on the GPU, synchronised around every call).

kvpress's Expected Attention, SnapKV and TOVA recompute the pre-RoPE queries from the hidden states with
q_proj; kvcompress receives the queries from the engine. Both are timed in the same run:
- "as it runs": kvpress unchanged, q_proj included;
- "like for like": kvpress's `get_prerope_query_states` patched to return slices of queries computed
  once beforehand (the same pre-RoPE queries kvcompress is handed), so both sides do the same work.
"""

import argparse
import contextlib
import json
import time

import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding

import kvpress.presses.expected_attention_press as ea_module
import kvpress.presses.snapkv_press as snapkv_module
from kvpress import (AdaKVPress, ExpectedAttentionPress, KeyDiffPress, KnormPress, SnapKVPress,
                     StreamingLLMPress, TOVAPress)
from kvpress.utils import get_prerope_query_states

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
    config._attn_implementation = "sdpa"  # AdaKV refuses eager attention
    module = LlamaAttention(config, layer_idx=0).eval()
    module.rotary_emb = LlamaRotaryEmbedding(config)
    return module


@contextlib.contextmanager
def given_queries(hidden, queries):
    """Makes kvpress read `queries` ([1, H, n, d], pre-RoPE, computed from `hidden`) instead of
    projecting the hidden states again: every slice of `hidden` a press asks about maps to the same
    slice of `queries`, at no cost."""

    def lookup(module, h):
        same = h.untyped_storage().data_ptr() == hidden.untyped_storage().data_ptr()
        if not same or h.shape[0] != 1:
            raise RuntimeError("like-for-like timing expects slices of the benchmark's hidden states")
        start = (h.storage_offset() - hidden.storage_offset()) // hidden.stride(1)
        return queries[:, :, start:start + h.shape[1]]

    saved = ea_module.get_prerope_query_states, snapkv_module.get_prerope_query_states
    ea_module.get_prerope_query_states = snapkv_module.get_prerope_query_states = lookup
    try:
        yield
    finally:
        ea_module.get_prerope_query_states, snapkv_module.get_prerope_query_states = saved


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


def time_presses(module, n, dtype, dev, repeats, device):
    """Times every press at n tokens in `dtype`; returns {key: seconds}."""
    randn = lambda *shape: torch.randn(*shape, device=dev, dtype=dtype)  # noqa: E731
    hidden = randn(1, n, Q_HEADS * HEAD_DIM)
    keys = randn(1, KV_HEADS, n, HEAD_DIM)
    values = randn(1, KV_HEADS, n, HEAD_DIM)
    pos = torch.arange(n, device=dev).unsqueeze(0)
    kwargs = {"position_embeddings": module.rotary_emb(hidden, pos)}
    queries = get_prerope_query_states(module, hidden)
    args = (module, hidden, keys, values, None, kwargs)
    t = lambda fn: best_of(fn, repeats, device)  # noqa: E731
    ea = ExpectedAttentionPress(compression_ratio=0.5)
    ea_nocov = ExpectedAttentionPress(compression_ratio=0.5, use_covariance=False)
    snap = SnapKVPress(compression_ratio=0.5, window_size=WINDOW, kernel_size=5)
    tova = TOVAPress(compression_ratio=0.5)
    ada = AdaKVPress(press=ExpectedAttentionPress(compression_ratio=0.5))
    # On the CPU, bf16 is timed for the rows the report compares in bf16 only (kvpress is slow there).
    full = dtype == torch.float32 or device == "cuda"
    row = {"q_proj_s": t(lambda: module.q_proj(hidden[:, ea.n_sink:]))}
    # As it runs: kvpress projects the queries itself.
    row["ea_score_cov_s"] = t(lambda: ea.score(*args))
    row["ea_compress_s"] = t(lambda: ea.compress(*args))
    if full:
        row["ea_score_nocov_s"] = t(lambda: ea_nocov.score(*args))
        row["snapkv_score_s"] = t(lambda: snap.score(*args))
    # Like for like: the same pre-RoPE queries handed in.
    with given_queries(hidden, queries):
        row["ea_score_cov_given_s"] = t(lambda: ea.score(*args))
        row["ea_compress_given_s"] = t(lambda: ea.compress(*args))
        row["snapkv_score_given_s"] = t(lambda: snap.score(*args))
        if full:
            row["ea_score_nocov_given_s"] = t(lambda: ea_nocov.score(*args))
            row["tova_score_given_s"] = t(lambda: tova.score(*args))
            row["adakv_ea_compress_given_s"] = t(lambda: ada.compress(*args))
    # Presses that read no queries.
    row["knorm_score_s"] = t(lambda: KnormPress(compression_ratio=0.5).score(*args))
    if full:
        row["keydiff_score_s"] = t(lambda: KeyDiffPress(compression_ratio=0.5).score(*args))
        row["streaming_llm_score_s"] = t(lambda: StreamingLLMPress(compression_ratio=0.5).score(*args))
    return row


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
    dtypes = [torch.bfloat16] if args.device == "cuda" else [torch.float32, torch.bfloat16]
    results = []
    with torch.no_grad():
        for dtype in dtypes:
            module = make_module().to(device=dev, dtype=dtype)
            for n in args.sizes:
                row = {"tokens": n, "threads": args.threads, "device": args.device, "dtype": str(dtype).split(".")[-1]}
                row.update(time_presses(module, n, dtype, dev, args.repeats, args.device))
                print(json.dumps(row), flush=True)
                results.append(row)
    with open(args.out, "w") as f:
        gpu = torch.cuda.get_device_name() if args.device == "cuda" else None
        json.dump({"torch": torch.__version__, "gpu": gpu, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
