#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Golden fixtures for the engine's GGUF reader (examples/engine/kvc_engine/gguf*.hpp), from the `gguf` Python
package and HF transformers. Writes tests/golden/gguf/:

* dequant.gguf + dequant.json + <type>.bin: one tensor per ggml type the engine decodes (F32, F16, BF16, Q8_0,
  Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K), 3 rows of 2 blocks of random bytes whose f16 scale
  fields are set to finite random values (dequantisation of any other bit pattern is defined), written with
  `gguf.GGUFWriter`; the expected floats are `gguf.quants.dequantize` of the bytes read back by `gguf.GGUFReader`.
* big_endian.gguf: a small file written by GGUFWriter with endianess=BIG (the reader must refuse it).
* <arch>.gguf + <arch>.json + <arch>_logits.bin for arch in llama, qwen2, qwen3: tiny random models written as
  llama.cpp's converter writes them (Q/K rows of llama permuted per head; Qwen2 biases; Qwen3 q_norm/k_norm and
  attention.key_length; tied embeddings where output.weight is left out), their tensors in a mix of types; the
  JSON holds the config transformers 5.2 derives when it loads the file with `gguf_file=` and the logits it
  computes (float32) on a fixed prompt.
* llama3_rope.gguf + llama3_rope.json: Llama 3.1's `rope_freqs.weight` (per-frequency factors, as llama.cpp's
  converter computes them from transformers' llama3 inv_freq) and the RoPE parameters it stands for.

Run by tools/golden/generate.sh (or directly: python tools/golden/generate_gguf.py --out tests/golden/gguf).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import importlib.metadata
import json
import math
import shutil
import sys
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from gguf.constants import GGML_QUANT_SIZES
from transformers import AutoModelForCausalLM

SEED = 20261206
VERSIONS = {p: importlib.metadata.version(p) for p in ("gguf", "transformers", "torch", "numpy")}

# Byte offsets of the f16 scale fields in each block (see examples/engine/kvc_engine/model_io/gguf_dequant.hpp).
SCALE_FIELDS = {
    Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q5_0: [0], Q.Q5_1: [0, 2], Q.Q8_0: [0],
    Q.Q2_K: [80, 82], Q.Q3_K: [108], Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208],
}
# Largest |element| per unit scale, so that model weights can be given a target magnitude.
UNIT_RANGE = {
    Q.Q4_0: 8, Q.Q4_1: 15, Q.Q5_0: 16, Q.Q5_1: 31, Q.Q8_0: 127,
    Q.Q2_K: 45, Q.Q3_K: 128, Q.Q4_K: 945, Q.Q5_K: 1953, Q.Q6_K: 4096,
}


def random_bytes(rng: np.random.Generator, qtype: Q, rows: int, cols: int, magnitude: float | None) -> np.ndarray:
    """[rows, bytes per row] uint8 of `qtype`: random bits, finite f16 scales. magnitude=None: scales of any size
    and sign (dequantisation fixtures); else scales that keep elements within about ±magnitude (model weights)."""
    block, size = GGML_QUANT_SIZES[qtype]
    assert cols % block == 0
    n_blocks = rows * cols // block
    if qtype in (Q.F32, Q.F16, Q.BF16):
        x = rng.standard_normal(rows * cols).astype(np.float32) * (1.0 if magnitude is None else magnitude / 3)
        if magnitude is None:
            x[:4] = [0.0, -0.0, 1e-30, -65504.0]
        if qtype == Q.F32:
            data = x.view(np.uint8)
        elif qtype == Q.F16:
            data = x.astype(np.float16).view(np.uint8)
        else:
            data = (x.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
        return data.reshape(rows, cols * size)
    blocks = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for off in SCALE_FIELDS[qtype]:
        if magnitude is None:
            s = rng.uniform(1e-3, 4.0, n_blocks) * rng.choice([-1.0, 1.0], n_blocks)
            s[0] = 0.0
            if n_blocks > 1:
                s[1] = 3e-7  # an f16 subnormal
        else:
            s = rng.uniform(0.3, 1.0, n_blocks) * magnitude / UNIT_RANGE[qtype]
        blocks[:, off : off + 2] = s.astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
    return blocks.reshape(rows, -1)


def write_f32(out: Path, name: str, arr: np.ndarray) -> dict:
    arr = np.ascontiguousarray(arr, dtype="<f4")
    assert np.all(np.isfinite(arr)), name
    arr.tofile(out / f"{name}.bin")
    return {"file": f"{name}.bin", "dtype": "float32", "shape": [int(s) for s in arr.shape]}


def write_json(path: Path, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")


DEQUANT_TYPES = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K]


def generate_dequant(out: Path, rng: np.random.Generator) -> None:
    w = gguf.GGUFWriter(out / "dequant.gguf", "dequant_fixture")
    rows = 3
    for qt in DEQUANT_TYPES:
        block, _ = GGML_QUANT_SIZES[qt]
        cols = 2 * max(block, 32)
        w.add_tensor(f"t.{qt.name}", random_bytes(rng, qt, rows, cols, None), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    reader = gguf.GGUFReader(out / "dequant.gguf")
    entries = []
    for t in reader.tensors:
        expected = gguf.quants.dequantize(t.data, t.tensor_type)
        shape = [int(s) for s in reversed(t.shape)]
        expected = expected.reshape(shape)
        entries.append({"name": t.name, "type": t.tensor_type.name, "shape": shape,
                        "expected": write_f32(out, t.tensor_type.name, expected)})
    write_json(out / "dequant.json", {"file": "dequant.gguf", "versions": VERSIONS, "tensors": entries})

    be = gguf.GGUFWriter(out / "big_endian.gguf", "llama", endianess=gguf.GGUFEndian.BIG)
    be.add_uint32("llama.block_count", 1)
    be.write_header_to_file()
    be.write_kv_data_to_file()
    be.write_tensors_to_file()
    be.close()


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter: the rows of each head's two rotary halves interleaved."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def model_specs():
    return [
        dict(arch="llama", name="tiny-llama", hidden=64, heads=4, kv_heads=2, head_dim=16, inter=256, layers=2, vocab=96,
             tied=False, theta=500000.0, eps=1e-5, ctx=256,
             types=dict(embd=Q.Q8_0, out=Q.F16, q=Q.Q4_1, k=Q.Q5_0, v=Q.F32, o=Q.Q4_0, gate=Q.Q5_1, up=Q.F16, down=Q.Q4_K)),
        dict(arch="qwen2", name="tiny-qwen2", hidden=64, heads=4, kv_heads=2, head_dim=16, inter=256, layers=2, vocab=96,
             tied=True, theta=1000000.0, eps=1e-6, ctx=512,
             types=dict(embd=Q.BF16, q=Q.Q8_0, k=Q.Q8_0, v=Q.Q4_0, o=Q.F16, gate=Q.Q4_1, up=Q.Q5_0, down=Q.Q6_K)),
        # transformers 5.2 maps no head_dim for qwen3 GGUFs: Qwen3Config's default, 128, is what the file must use.
        dict(arch="qwen3", name="tiny-qwen3", hidden=64, heads=2, kv_heads=1, head_dim=128, inter=256, layers=2, vocab=96,
             tied=False, theta=1000000.0, eps=1e-6, ctx=512,
             types=dict(embd=Q.F16, out=Q.Q8_0, q=Q.Q8_0, k=Q.Q4_0, v=Q.Q5_1, o=Q.Q3_K, gate=Q.F32, up=Q.Q4_1, down=Q.Q5_K)),
    ]


def generate_model(out: Path, spec: dict, rng: np.random.Generator) -> str:
    arch, D, H, KV, d, I, L, V = (spec[k] for k in ("arch", "hidden", "heads", "kv_heads", "head_dim", "inter", "layers", "vocab"))
    T = spec["types"]
    path = out / f"{arch}.gguf"
    w = gguf.GGUFWriter(path, arch)
    w.add_name(spec["name"])
    w.add_context_length(spec["ctx"])
    w.add_embedding_length(D)
    w.add_block_count(L)
    w.add_feed_forward_length(I)
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    w.add_layer_norm_rms_eps(spec["eps"])
    w.add_rope_freq_base(spec["theta"])
    w.add_vocab_size(V)
    if arch == "llama":
        w.add_rope_dimension_count(d)
    if arch == "qwen3":
        w.add_key_length(d)
        w.add_value_length(d)

    def tensor(name, qt, rows, cols, magnitude=0.12):
        w.add_tensor(name, random_bytes(rng, qt, rows, cols, magnitude), raw_dtype=qt)

    def norm(name, n):
        w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32))

    def linear(name, qt, rows, cols, n_head=None):
        raw = random_bytes(rng, qt, rows, cols, 0.12)
        if n_head is not None:  # llama: store as the converter does, rows permuted
            raw = permute(raw, n_head)
        w.add_tensor(name, raw, raw_dtype=qt)

    tensor("token_embd.weight", T["embd"], V, D, 1.0)
    norm("output_norm.weight", D)
    if not spec["tied"]:
        tensor("output.weight", T["out"], V, D)
    for l in range(L):
        p = f"blk.{l}."
        norm(p + "attn_norm.weight", D)
        norm(p + "ffn_norm.weight", D)
        llama = arch == "llama"
        # Permuting whole quantised rows is the converter's permutation of the float rows they decode to.
        linear(p + "attn_q.weight", T["q"], H * d, D, H if llama else None)
        linear(p + "attn_k.weight", T["k"], KV * d, D, KV if llama else None)
        linear(p + "attn_v.weight", T["v"], KV * d, D)
        linear(p + "attn_output.weight", T["o"], D, H * d)
        if arch == "qwen2":
            for n, rows in (("attn_q.bias", H * d), ("attn_k.bias", KV * d), ("attn_v.bias", KV * d)):
                w.add_tensor(p + n, (0.2 * rng.standard_normal(rows)).astype(np.float32))
        if arch == "qwen3":
            norm(p + "attn_q_norm.weight", d)
            norm(p + "attn_k_norm.weight", d)
        linear(p + "ffn_gate.weight", T["gate"], I, D)
        linear(p + "ffn_up.weight", T["up"], I, D)
        linear(p + "ffn_down.weight", T["down"], D, I)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    model = AutoModelForCausalLM.from_pretrained(str(out), gguf_file=path.name, dtype=torch.float32)
    model.eval()
    cfg = model.config
    prompt = [int(x) for x in np.random.default_rng(SEED + 1).integers(0, V, 24)]
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0]
    rope = getattr(cfg, "rope_parameters", None) or {}
    config = {
        "model_type": cfg.model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads,
        "rms_norm_eps": cfg.rms_norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": bool(cfg.tie_word_embeddings),
        "rope_theta": float(rope.get("rope_theta", getattr(cfg, "rope_theta", 0.0))),
        "rope_type": rope.get("rope_type", "default"),
    }
    write_json(out / f"{arch}.json", {"file": path.name, "versions": VERSIONS, "transformers_config": config, "prompt": prompt,
                                      "logits": write_f32(out, f"{arch}_logits", logits.numpy())})
    return arch


def generate_llama3_rope(out: Path) -> None:
    """Llama 3.1's per-frequency factors, from transformers' own llama3 inv_freq (the converter divides)."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    head_dim, theta = 16, 500000.0
    params = {"rope_type": "llama3", "rope_theta": theta, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 8192}
    cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, head_dim=head_dim, max_position_embeddings=131072,
                      rope_parameters=params)
    inv_llama3, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    inv_default = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float) / head_dim))
    factors = (inv_default / inv_llama3).numpy().astype(np.float32)
    w = gguf.GGUFWriter(out / "llama3_rope.gguf", "llama")
    w.add_context_length(131072)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(theta)
    w.add_rope_dimension_count(head_dim)
    w.add_tensor("rope_freqs.weight", factors)
    w.add_tensor("token_embd.weight", np.zeros((8, 64), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    write_json(out / "llama3_rope.json", {"file": "llama3_rope.gguf", "versions": VERSIONS, "rope_parameters": params, "head_dim": head_dim,
                                          "factors": [float(x) for x in factors]})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("tests/golden/gguf"))
    args = ap.parse_args(argv)
    torch.manual_seed(SEED)
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    rng = np.random.default_rng(SEED)
    generate_dequant(args.out, rng)
    archs = [generate_model(args.out, spec, rng) for spec in model_specs()]
    generate_llama3_rope(args.out)
    write_json(args.out / "index.json", {"models": archs})
    total = sum(f.stat().st_size for f in args.out.iterdir())
    print(f"wrote {args.out} ({total} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
