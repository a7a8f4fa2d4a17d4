#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""KVzip's reconstruction passes for SmolLM2-135M-Instruct, written by kvpress 0.5.5's own code
(tests/golden/kvzip_prompt/smollm2.json), for kvcompress-eval's `kvzip` press (kvc_engine/compression/
kvzip_prompt.hpp).

The tokenizer is SmolLM2's corrected one (HF tokenizers built from the GGUF's vocabulary and merges, as
generate_tokenizer.py builds it) wrapped in transformers' PreTrainedTokenizerFast with the chat template the GGUF
carries. kvpress's KVzipPress is entered on a small random-weight Llama (its tokenizer look-up patched to return
that tokenizer): its context manager computes the prefix length and the suffix from the chat template; then its
`prepare` chunks a context — formatted as kvpress's pipeline formats one (KVPressTextGenerationPipeline.preprocess)
— and returns every pass's replayed ids. No model forward runs.

Run: python tools/golden/generate_kvzip_prompt.py --smollm2-gguf PATH/SmolLM2-135M-Instruct.Q4_1.gguf
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import importlib.metadata
import json
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate_tokenizer import byte_level_from_gguf, gguf_tokenizer_fields, smollm2_pre  # noqa: E402

import kvpress.presses.kvzip_press as kvzip_module  # noqa: E402
from kvpress.pipeline import KVPressTextGenerationPipeline  # noqa: E402
from kvpress.presses.kvzip_press import KVzipPress  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CHUNK_SIZE = 16  # several chunks, the last one partial, over a short context
CONTEXT = ("The grass is green. The sky is blue. One of the special magic numbers for quiet-river is: 4137251.\n"
           "Remember it.\tThe sun is yellow; here we go, there and back again 2026 times.")
QUESTION = "What is the special magic number for quiet-river?"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smollm2-gguf", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=REPO / "tests/golden/kvzip_prompt")
    args = ap.parse_args(argv)
    logging.getLogger("kvpress").setLevel(logging.ERROR)
    fields = gguf_tokenizer_fields(args.smollm2_gguf)
    tok = PreTrainedTokenizerFast(tokenizer_object=byte_level_from_gguf(fields, smollm2_pre()))
    tok.chat_template = fields["tokenizer.chat_template"]

    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(fields["tokenizer.ggml.tokens"]), hidden_size=16,
                                         intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         num_key_value_heads=1)).eval()
    inputs = KVPressTextGenerationPipeline.preprocess(SimpleNamespace(tokenizer=tok), CONTEXT, [QUESTION], "", 10**6)
    context_ids = inputs["context_ids"]
    press = KVzipPress(compression_ratio=0.5, chunk_size=CHUNK_SIZE)
    auto = kvzip_module.AutoTokenizer
    kvzip_module.AutoTokenizer = SimpleNamespace(from_pretrained=lambda *a, **k: tok)
    try:
        with press(model):
            prefix_length = press.prefix_length
            suffix = press._suffix_ids[0].tolist()
            press._context_ids = context_ids
            press.context_length = context_ids.shape[1]
            start, passes = prefix_length, []
            for prefill_ids, repeat_ids in press.prepare(model, tok):
                passes.append({"start": start, "end": start + prefill_ids.shape[1], "input": repeat_ids[0].tolist()})
                start += prefill_ids.shape[1]
            press._context_ids = None  # nothing to compress on leaving
    finally:
        kvzip_module.AutoTokenizer = auto
    first = tok.encode("\n\nRepeat the previous context exactly.", add_special_tokens=False)
    later = tok.encode("\n\nRepeat the part of the previous context exactly, starting with", add_special_tokens=False)
    args.out.mkdir(parents=True, exist_ok=True)
    out = {
        "generator": "tools/golden/generate_kvzip_prompt.py",
        "model": args.smollm2_gguf.name,
        "versions": {p: importlib.metadata.version(p) for p in ("kvpress", "transformers", "tokenizers", "gguf")},
        "chunk_size": CHUNK_SIZE,
        "prompt_first": first,
        "prompt_later": later,
        "suffix": suffix,
        "prefix_length": prefix_length,
        "context": context_ids[0].tolist(),
        "passes": passes,
    }
    path = args.out / "smollm2.json"
    path.write_text(json.dumps(out) + "\n")
    print(f"{path.relative_to(REPO)}: prefix {prefix_length} tokens, suffix {suffix}, {len(passes)} passes over "
          f"{context_ids.shape[1]} context tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
