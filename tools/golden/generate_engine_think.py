"""Golden fixture for ThinK through the reference engine (tests/golden/engine_think/think.json).

On the engine's three golden checkpoints (tests/golden/engine/{llama,qwen3,qwen2}) and their 203-token prompts,
kvpress 0.5.5's own ThinKPress (key_channel_compression_ratio RATIO, window_size 32) compresses the prefill, as
kvpress's pipeline runs a prefill press: a context manager around the pass that fills the cache, whose hook
zeroes every layer's dropped key channels once, at the end of that pass. Keys that later passes append (the
question, every decoding step) are NOT compressed: the hook skips passes that are not the prefill, so their
channels all stay. Two runs per model:

* "generate": `with press(model): model.generate(prompt, max_new_tokens=NEW_TOKENS)` — the prompt prefilled
  and compressed, then one token per pass (the engine's `generate`);
* "question": the pipeline's question path — the prompt's first CONTEXT tokens prefilled and compressed, the
  rest (the question) forwarded in one pass over the compressed cache without the press, then greedy tokens
  one per pass (the engine's `greedy_answer`).

Recorded per run: the greedy tokens and every step's logits; per model: each layer's kept channels per kv
head (the channels kvpress did not zero). Run as generate.py is run:

    /root/.cache/kvcompress-golden-venv/bin/python tools/golden/generate_engine_think.py --out tests/golden
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
import logging
import sys
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM
from transformers.cache_utils import DynamicCache

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generate as g  # noqa: E402  (the shared writers)

from kvpress import ThinKPress  # noqa: E402

GENERATOR = "tools/golden/generate_engine_think.py"
MODELS = ("llama", "qwen3", "qwen2")
RATIO = 0.5
NEW_TOKENS = 32
CONTEXT = 179  # the "question" run's compressed context; the prompt's last 24 tokens are its question


def load(engine_dir: Path, meta: dict):
    model = AutoModelForCausalLM.from_pretrained(str(engine_dir / meta["checkpoint"]), dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = None
    return model


@torch.no_grad()
def run_generate(model, prompt: list[int]):
    ids = torch.tensor([prompt])
    with ThinKPress(key_channel_compression_ratio=RATIO)(model):
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False,
                             output_logits=True, return_dict_in_generate=True)
    tokens = out.sequences[0, ids.shape[1]:]
    logits = torch.stack([s[0] for s in out.logits])
    assert torch.equal(logits.argmax(-1), tokens)
    return tokens, logits, out.past_key_values


@torch.no_grad()
def run_question(model, prompt: list[int]):
    """kvpress's pipeline on token ids: the context under the press, the question and the answer without."""
    cache = DynamicCache(config=model.config)
    with ThinKPress(key_channel_compression_ratio=RATIO)(model):
        model(torch.tensor([prompt[:CONTEXT]]), past_key_values=cache, use_cache=True)
    kept = kept_channels(cache, CONTEXT)
    out = model(torch.tensor([prompt[CONTEXT:]]), past_key_values=cache,
                position_ids=torch.arange(CONTEXT, len(prompt)).unsqueeze(0), use_cache=True)
    logits = [out.logits[0, -1]]
    tokens = [logits[-1].argmax()]
    for i in range(NEW_TOKENS - 1):
        out = model(input_ids=tokens[-1].view(1, 1), past_key_values=cache,
                    position_ids=torch.tensor([[len(prompt) + i]]), use_cache=True)
        logits.append(out.logits[0, -1])
        tokens.append(logits[-1].argmax())
    # The question's and the answer's keys were appended with every channel: the press compressed the prefill only.
    for layer in cache.layers:
        assert bool((layer.keys[0, :, CONTEXT:] != 0).all()), "kvpress zeroed channels of keys appended after the prefill"
    return torch.stack(tokens), torch.stack(logits), kept


def kept_channels(cache, length: int) -> list[list[list[int]]]:
    """Per layer and kv head, the channels kvpress left non-zero in the prefill's keys (ascending)."""
    kept = []
    for layer in cache.layers:
        keys = layer.keys[0, :, :length]  # [kv_heads, length, head_dim]
        assert keys.shape[1] == length
        kept.append([torch.nonzero((keys[h] != 0).any(dim=0)).flatten().tolist() for h in range(keys.shape[0])])
    return kept


@torch.no_grad()
def plain_generate(model, prompt: list[int]) -> torch.Tensor:
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False)
    return out[0, ids.shape[1]:]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory (tests/golden)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    logging.getLogger("kvpress").setLevel(logging.ERROR)
    golden = Path(args.out)
    out_dir = golden / "engine_think"
    out_dir.mkdir(parents=True, exist_ok=True)
    tdir = g.TensorDir(out_dir)
    models = []
    press = ThinKPress(key_channel_compression_ratio=RATIO)
    for name in MODELS:
        engine_dir = golden / "engine" / name
        meta = json.loads((engine_dir / "engine.json").read_text())
        prompt = meta["prompt"]
        model = load(engine_dir, meta)
        head_dim = model.config.head_dim if getattr(model.config, "head_dim", None) else \
            model.config.hidden_size // model.config.num_attention_heads
        tokens, logits, cache = run_generate(model, prompt)
        kept = kept_channels(cache, len(prompt))
        want_kept = head_dim - int(head_dim * RATIO)
        assert all(len(h) == want_kept for layer in kept for h in layer), f"{name}: kept channel counts {kept}"
        q_tokens, q_logits, q_kept = run_question(model, prompt)
        # A press that did not change the continuation would prove nothing about the packed keys in the engine.
        assert not torch.equal(tokens, plain_generate(model, prompt)), f"{name}: ThinK did not change the continuation"
        models.append({
            "model": f"engine/{name}",
            "head_dim": head_dim,
            "kept_channels": kept,
            "generate": {"tokens": tokens.tolist(), "step_logits": tdir.write(f"{name}_generate_logits", logits)},
            "question": {"context": CONTEXT, "kept_channels": q_kept, "tokens": q_tokens.tolist(),
                         "step_logits": tdir.write(f"{name}_question_logits", q_logits)},
        })
        print(f"engine_think: {name} head_dim {head_dim}, keeps {want_kept} channels; generate {tokens.tolist()[:8]}..., "
              f"question {q_tokens.tolist()[:8]}...")
    g.write_json(out_dir / "think.json", {"format": g.FORMAT, "generator": GENERATOR, **g.versions(),
                                          "params": g.press_params(press), "new_tokens": NEW_TOKENS, "models": models})
    return 0


if __name__ == "__main__":
    sys.exit(main())
