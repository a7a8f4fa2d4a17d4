#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Golden fixtures for the reference engine (examples/engine/).

Saves tiny random-weight HF checkpoints (config.json + model.safetensors) and, for a fixed prompt, what HF
transformers and kvpress 0.5.5 compute with them:

* the logits of every prompt position (one forward pass, float32);
* the greedy 32-token continuation, with no press and with kvpress's ExpectedAttention (50 %), SnapKV (50 %) and
  StreamingLLM (50 %) applied after prefill, plus DecodingPress(KeyDiff) compressing during decoding; for each, the
  logits of every decoding step and the cache length per layer at the end.

How the continuation is produced. kvpress's pipeline ("kv-press-text-generation") needs a tokenizer, so it is replayed
here on token ids, exactly as it runs a press:

* a prefill press is a context manager around the forward pass that fills the cache: its hook runs after each layer's
  attention and compresses that layer's cache only when `cache_position[-1] + 1 == q_len` (the first pass on an empty
  cache). The prefill itself therefore attends to the full cache, and every later pass sees the compressed one;
* a decoding press (DecodingPress) is a no-op in that pass and compresses every `compression_interval` decoding steps;
* decoding continues at the ORIGINAL positions: the pipeline passes `position_ids = context_length + i` explicitly.

We run `with press(model): model.generate(ids, attention_mask=ones, max_new_tokens=32, do_sample=False)`.
`generate` feeds the whole prompt first (the prefill, compressed by the hook), takes the first token from its logits,
and then decodes one token per pass with `position_ids` from the attention mask (`cumsum - 1`, i.e. n, n+1, ...) —
the pipeline's positions. The attention mask must be given: without it `generate` infers padding from
`pad_token_id`, and a prompt that contains that id would get shifted positions. The script asserts that `generate`
equals an explicit replay of the pipeline's loop (prefill under the press, then one forward per token with
`position_ids = n + i`). The one difference from the pipeline is that the pipeline prefills the context with
`model.model` (no LM head) and takes the first answer token after a forward of the question; here the whole prompt
is the context and the first token comes from the prefill's own logits.

Run by tools/golden/generate.sh; writes tests/golden/engine/. See tools/golden/README.md.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from kvpress import CAMPress, DecodingPress, ExpectedAttentionPress, KeyDiffPress, SnapKVPress, StreamingLLMPress

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate import TensorDir, kvpress_version, versions, write_json  # noqa: E402
from generate_cam import recorded_bernoulli  # noqa: E402

GENERATOR = "tools/golden/generate_engine.py"
FORMAT = 1
PROMPT_LEN = 203  # odd, and long enough that SnapKV's 64-token window is not the whole 50 % budget
NEW_TOKENS = 32
DECODING_INTERVAL = 8
DECODING_TARGET = 96
CAM_MERGE_BUDGET = 8
CAM_SEED = 7  # the merge draws (torch.bernoulli replaced by u < p, u recorded)

COMMON = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    max_position_embeddings=512,
    initializer_range=0.3,  # 0.1 makes some continuations repeat one token; 0.3 keeps all 15 varied
    rms_norm_eps=1e-6,
    attn_implementation="sdpa",
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
)

# (name, config class, model class, extra config, seed, half-precision copies)
MODELS = [
    (
        "llama",
        LlamaConfig,
        LlamaForCausalLM,
        dict(
            num_attention_heads=8,
            num_key_value_heads=2,
            head_dim=16,
            tie_word_embeddings=False,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        ),
        301,
        ("float16",),
    ),
    (
        "qwen3",
        Qwen3Config,
        Qwen3ForCausalLM,
        dict(
            num_attention_heads=8,
            num_key_value_heads=2,
            head_dim=32,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        ),
        302,
        ("bfloat16",),
    ),
    (
        "qwen2",
        Qwen2Config,
        Qwen2ForCausalLM,
        dict(
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
            rope_parameters={
                "rope_type": "yarn",
                "rope_theta": 10000.0,
                "factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        ),
        303,
        (),
    ),
]


def cases():
    """(name, press factory or None, what the press does). A fresh press per run: DecodingPress keeps state."""
    return [
        ("none", lambda: None, {}),
        ("expected_attention", lambda: ExpectedAttentionPress(compression_ratio=0.5), {"compression_ratio": 0.5}),
        ("snapkv", lambda: SnapKVPress(compression_ratio=0.5), {"compression_ratio": 0.5}),
        ("streaming_llm", lambda: StreamingLLMPress(compression_ratio=0.5), {"compression_ratio": 0.5}),
        (
            "decoding_keydiff",
            lambda: DecodingPress(
                base_press=KeyDiffPress(),
                compression_interval=DECODING_INTERVAL,
                target_size=DECODING_TARGET,
                hidden_states_buffer_size=0,
            ),
            {"compression_interval": DECODING_INTERVAL, "target_size": DECODING_TARGET},
        ),
        (
            "cam_keydiff",
            lambda: CAMPress(
                base_press=KeyDiffPress(),
                compression_interval=DECODING_INTERVAL,
                target_size=DECODING_TARGET,
                hidden_states_buffer_size=0,
                merge_budget=CAM_MERGE_BUDGET,
            ),
            {"compression_interval": DECODING_INTERVAL, "target_size": DECODING_TARGET, "merge_budget": CAM_MERGE_BUDGET},
        ),
    ]


def build_model(config_cls, model_cls, extra: dict, seed: int):
    torch.manual_seed(seed)
    config = config_cls(**COMMON, **extra)
    if config_cls is Qwen2Config:
        config.use_sliding_window = False
    model = model_cls(config)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        # HF initialises norm weights to 1 and biases to 0, which would hide a missing weight or bias in the engine.
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                scale = 0.5 if ("q_norm" in name or "k_norm" in name) else 0.2
                centre = 1.6 if ("q_norm" in name or "k_norm" in name) else 1.0
                p.copy_(centre + scale * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    model = model.to(torch.float32).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = None
    return model


@torch.no_grad()
def greedy(model, ids: torch.Tensor, press):
    """kvpress-style greedy continuation: (tokens, per-step logits [NEW_TOKENS, vocab], cache length per layer)."""
    ctx = press(model) if press is not None else _null()
    with ctx:
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    tokens = out.sequences[0, ids.shape[1] :]
    logits = torch.stack([s[0] for s in out.logits])  # [NEW_TOKENS, vocab]
    lengths = [layer.keys.shape[2] for layer in out.past_key_values.layers]
    assert tokens.numel() == NEW_TOKENS
    assert torch.equal(logits.argmax(-1), tokens)
    return tokens, logits, lengths


@torch.no_grad()
def replay_pipeline(model, ids: torch.Tensor, press):
    """The pipeline's own loop on token ids: prefill under the press, then explicit position_ids n, n+1, ..."""
    n = ids.shape[1]
    prefill_press = press is not None and not isinstance(press, DecodingPress)
    decode_press = press is not None and isinstance(press, DecodingPress)
    with press(model) if prefill_press else _null():
        out = model(ids, use_cache=True)
    cache = out.past_key_values
    tokens = [out.logits[0, -1].argmax()]
    with press(model) if decode_press else _null():
        for i in range(NEW_TOKENS - 1):
            out = model(input_ids=tokens[-1].view(1, 1), past_key_values=cache, position_ids=torch.tensor([[n + i]]))
            tokens.append(out.logits[0, -1].argmax())
    return torch.stack(tokens)


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def top2_margin(logits: torch.Tensor) -> float:
    """Smallest gap between the largest and second-largest logit over the rows: how far greedy is from a tie."""
    top = logits.topk(2, dim=-1).values
    return float((top[..., 0] - top[..., 1]).min())


def save_half_copy(model, out_dir: Path, dtype_name: str, ids: torch.Tensor, tdir: TensorDir) -> dict:
    dtype = getattr(torch, dtype_name)
    copy_dir = out_dir / f"checkpoint_{dtype_name}"
    half = AutoModelForCausalLM.from_pretrained(out_dir / "checkpoint", dtype=torch.float32).to(dtype)
    half.save_pretrained(copy_dir, safe_serialization=True)
    for extra in copy_dir.glob("generation_config.json"):
        extra.unlink()
    stored = load_file(str(copy_dir / "model.safetensors"))
    assert all(t.dtype == dtype for t in stored.values()), f"{copy_dir} is not all {dtype_name}"
    # The reference for the engine, which widens half-precision weights to float32 on load: the same weights in
    # float32 arithmetic.
    widened = AutoModelForCausalLM.from_pretrained(copy_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = widened(ids).logits[0]
    return {
        "dtype": dtype_name,
        "checkpoint": copy_dir.name,
        "logits": tdir.write(f"logits_{dtype_name}_weights", logits),
    }


def generate_model(root: Path, spec, log) -> str:
    name, config_cls, model_cls, extra, seed, half_copies = spec
    out_dir = root / name
    if out_dir.exists():
        shutil.rmtree(out_dir)
    model = build_model(config_cls, model_cls, extra, seed)
    model.save_pretrained(out_dir / "checkpoint", safe_serialization=True)
    (out_dir / "checkpoint" / "generation_config.json").unlink()  # not read by the engine
    # Reload, so everything below runs on exactly the weights the engine reads.
    model = AutoModelForCausalLM.from_pretrained(out_dir / "checkpoint", dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = None

    g = torch.Generator().manual_seed(seed + 2)
    ids = torch.randint(0, model.config.vocab_size, (1, PROMPT_LEN), generator=g)
    tdir = TensorDir(out_dir)
    with torch.no_grad():
        logits = model(ids).logits[0]  # [PROMPT_LEN, vocab]

    runs = []
    tokens_by_case = {}
    for case, make_press, params in cases():
        press = make_press()
        uniforms, replay_uniforms = [], []
        with recorded_bernoulli(CAM_SEED, uniforms):  # only CAMPress draws
            tokens, step_logits, lengths = greedy(model, ids, press)
        with recorded_bernoulli(CAM_SEED, replay_uniforms):
            replay = replay_pipeline(model, ids, make_press())
        assert torch.equal(tokens, replay), f"{name}/{case}: generate() differs from the pipeline's loop"
        assert uniforms == replay_uniforms, f"{name}/{case}: generate() drew otherwise than the pipeline's loop"
        assert bool(uniforms) == isinstance(press, CAMPress)
        tokens_by_case[case] = tokens
        runs.append(
            {
                "name": case,
                "press": None if press is None else type(press).__name__,
                "params": params,
                "tokens": tokens.tolist(),
                "step_logits": tdir.write(f"step_logits_{case}", step_logits),
                "cache_lengths": lengths,
                "min_top2_margin": top2_margin(step_logits),
            }
        )
        if uniforms:  # CAM's merge draws, in kvpress's order
            runs[-1]["uniforms"] = tdir.write(f"uniforms_{case}", torch.tensor(uniforms, dtype=torch.float32))
        log(f"  {name}/{case}: cache {lengths}, min top-2 margin {runs[-1]['min_top2_margin']:.3g}")
    for case, tokens in tokens_by_case.items():
        if case != "none":
            # A press that did not change the continuation would prove nothing about compression in the engine.
            assert not torch.equal(tokens, tokens_by_case["none"]), f"{name}/{case}: same tokens as without a press"

    halves = [save_half_copy(model, out_dir, d, ids, tdir) for d in half_copies]
    meta = {
        "format": FORMAT,
        "generator": GENERATOR,
        **versions(),
        "model": name,
        "architecture": type(model).__name__,
        "checkpoint": "checkpoint",
        "prompt": ids[0].tolist(),
        "logits": tdir.write("logits", logits),
        "logits_min_top2_margin": top2_margin(logits),
        "new_tokens": NEW_TOKENS,
        "runs": runs,
        "half_precision_copies": halves,
    }
    write_json(out_dir / "engine.json", meta)
    return name


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory (tests/golden/engine)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    transformers.logging.set_verbosity_error()
    if kvpress_version() != "0.5.5":
        print(f"warning: kvpress {kvpress_version()} installed, fixtures are pinned to 0.5.5", file=sys.stderr)
    log = (lambda s: None) if args.quiet else (lambda s: print(s, flush=True))
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    names = []
    for spec in MODELS:
        log(f"model {spec[0]}")
        names.append(generate_model(root, spec, log))
    write_json(root / "index.json", {"format": FORMAT, "generator": GENERATOR, **versions(), "models": names})
    log(f"wrote {', '.join(names)} to {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
