"""Golden fixture for FINCH through the reference engine (tests/golden/engine_finch/finch.json).

On the engine's golden Llama checkpoint (tests/golden/engine/llama) and its 203-token prompt, whose last WINDOW
tokens stand for the question, kvpress 0.5.5's own FinchPress prefills `context + delimiter + question` (the
delimiter is a token added to the vocabulary, which kvpress's embedding hook removes again) and compresses with
its defaults (keys re-rotated). Recorded: what every layer's kv heads keep (matched by their values, which
re-rotation leaves as they were), and the logits of FOLLOW tokens then fed as kvpress's pipeline feeds a
question after a re-rotated cache (positions from the cache's length on). Run as generate.py is run:

    /root/.cache/kvcompress-golden-venv/bin/python tools/golden/generate_engine_finch.py --out tests/golden
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
from transformers import LlamaForCausalLM
from transformers.cache_utils import DynamicCache

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generate as g  # noqa: E402  (the shared writers)

import kvpress.presses.finch_press as finch_module  # noqa: E402
from kvpress.presses.finch_press import FinchPress  # noqa: E402

GENERATOR = "tools/golden/generate_engine_finch.py"
WINDOW = 24
RATIO = 0.5
FOLLOW = [17, 99, 3, 250, 42]


@torch.no_grad()
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory (tests/golden)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    logging.getLogger("kvpress").setLevel(logging.ERROR)
    golden = Path(args.out)
    engine_dir = golden / "engine" / "llama"
    meta = json.loads((engine_dir / "engine.json").read_text())
    prompt = meta["prompt"]
    model = LlamaForCausalLM.from_pretrained(str(engine_dir / meta["checkpoint"]), attn_implementation="eager")
    model = model.to(torch.float32).eval()
    cfg = model.config

    full = DynamicCache(config=cfg)
    model(torch.tensor([prompt]), past_key_values=full, use_cache=True)

    vocab = cfg.vocab_size
    model.resize_token_embeddings(vocab + 1)  # the delimiter: its embedding is removed before any layer sees it
    press = FinchPress(compression_ratio=RATIO)
    press.delimiter_token_id = vocab
    ids = torch.tensor([prompt[:-WINDOW] + [vocab] + prompt[-WINDOW:]])
    cache = DynamicCache(config=cfg)
    kept = []  # per layer, the sorted indices kvpress re-rotates and keeps (equal values cannot tell repeated tokens apart)
    rerotate = finch_module.KeyRerotationPress.rerotate_keys

    def capture(module, indices, keys):
        kept.append(indices[0].tolist())
        return rerotate(module, indices, keys)

    finch_module.KeyRerotationPress.rerotate_keys = staticmethod(capture)
    try:
        with press(model):
            model(ids, past_key_values=cache, use_cache=True)
    finally:
        finch_module.KeyRerotationPress.rerotate_keys = staticmethod(rerotate)
    assert press.window_size == WINDOW and len(kept) == cfg.num_hidden_layers
    for i, layer in enumerate(cache.layers):  # the values kept are those of the recorded indices
        assert torch.equal(layer.values[0], torch.stack([full.layers[i].values[0, h, kept[i][h]] for h in range(len(kept[i]))]))
    start = cache.get_seq_length()  # kvpress's pipeline: a re-rotated cache continues at its length
    out = model(torch.tensor([FOLLOW]), past_key_values=cache,
                position_ids=torch.arange(start, start + len(FOLLOW)).unsqueeze(0), use_cache=True)
    out_dir = golden / "engine_finch"
    out_dir.mkdir(parents=True, exist_ok=True)
    logits = g.TensorDir(out_dir).write("finch_follow_logits", out.logits[0, :, :vocab])
    g.write_json(out_dir / "finch.json", {"format": g.FORMAT, "generator": GENERATOR, **g.versions(),
                                          "model": "engine/llama", "params": g.press_params(press), "window": WINDOW,
                                          "kept": kept, "next_position": start, "follow": FOLLOW,
                                          "follow_logits": logits})
    print(f"engine_finch: window {WINDOW}, kept per layer and head {[[len(h) for h in k] for k in kept]}, "
          f"follow-up at position {start}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
