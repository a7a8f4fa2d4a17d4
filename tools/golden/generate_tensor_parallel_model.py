#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""A tiny random-weight Llama checkpoint with 3 kv heads for the engine's tensor-parallel test.

The reference engine's checkpoints (tests/golden/engine/) have 2 kv heads, which 3 ranks cannot split. This one
(6 query heads, 3 kv heads, head_dim 16, otherwise generate_engine.py's configuration and initialisation) splits
1 + 1 + 1 over 3 ranks and 1 + 2 over 2. The test compares the engine with itself (one process against
`--tensor-parallel P`), so no reference output is stored: only config.json and model.safetensors.

Run by tools/golden/generate.sh; writes tests/mpi/llama_3kv/checkpoint/.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate_engine import build_model  # noqa: E402

SEED = 311


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("tests/mpi/llama_3kv"))
    args = parser.parse_args(argv)
    extra = dict(
        num_attention_heads=6,
        num_key_value_heads=3,
        head_dim=16,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    model = build_model(LlamaConfig, LlamaForCausalLM, extra, SEED)
    out = args.out / "checkpoint"
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(out, safe_serialization=True)
    (out / "generation_config.json").unlink()  # not read by the engine
    return 0


if __name__ == "__main__":
    sys.exit(main())
