"""Golden fixtures for KVzap and FastKVzip through the reference engine (tests/golden/engine_learned/).

On the engine's golden Llama checkpoint (tests/golden/engine/llama) and a prompt of 203 distinct tokens (a repeated
token has the same attention input in layer 0, so its scores would tie and the kept set depend on how top-k breaks
ties), kvpress 0.5.5's own
KVzapPress and FastKVzipPress prefill with random surrogate weights — built by kvpress's own KVzapModel and
FastKVzipGate, saved as the safetensors files that kvcompress-eval's --kvzap-weights and --fast-kvzip-weights read —
and this records what every layer's kv heads keep: KVzap's compressed cache matched row by row against the full
cache, FastKVzip's masked entries (kvpress masks instead of removing them). Run as generate.py is run:

    /root/.cache/kvcompress-golden-venv/bin/python tools/golden/generate_engine_learned.py --out tests/golden
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every artefact is built locally

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file
from transformers import LlamaForCausalLM
from transformers.cache_utils import DynamicCache

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generate as g  # noqa: E402  (the shared writers)

from kvpress.presses.fastkvzip_press import FastKVzipGate, FastKVzipPress  # noqa: E402
from kvpress.presses.kvzap_press import KVzapConfig, KVzapModel, KVzapPress  # noqa: E402

GENERATOR = "tools/golden/generate_engine_learned.py"
# (name, model_type, hidden_dim, ratio, seed)
KVZAP_CASES = [("kvzap_mlp", "mlp", 32, 0.5, 701), ("kvzap_linear", "linear", None, 0.3, 702)]
FASTKVZIP = dict(compression_ratio=0.5)
FASTKVZIP_SEED = 703
PROMPT_SEED = 704


def load(engine_dir: Path, meta: dict, attn: str):
    model = LlamaForCausalLM.from_pretrained(str(engine_dir / meta["checkpoint"]), attn_implementation=attn)
    return model.to(torch.float32).eval()


def kept_rows(full_keys, full_values, cache) -> list:
    """Per layer and kv head, the positions whose keys and values the compressed cache holds."""
    out = []
    for i, layer in enumerate(cache.layers):
        kept = g.recover_kept(full_keys[i], full_values[i], layer.keys, layer.values)  # [1, H, k]
        out.append([[int(p) for p in kept[0, h]] for h in range(kept.shape[1])])
    return out


@torch.no_grad()
def run_kvzap(model, ids, out_dir: Path, name, model_type, hidden_dim, ratio, seed, full) -> dict:
    cfg = model.config
    torch.manual_seed(seed)
    surrogate = KVzapModel(KVzapConfig(input_dim=cfg.hidden_size, output_dim=cfg.num_key_value_heads,
                                       n_modules=cfg.num_hidden_layers, hidden_dim=hidden_dim)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        surrogate.save_pretrained(tmp)
        shutil.copy(Path(tmp) / "model.safetensors", out_dir / f"{name}.safetensors")
    press = KVzapPress(compression_ratio=ratio, model_type=model_type)
    press.kvzap_model = surrogate
    press.kvzap_model_name = f"nvidia/KVzap-{model_type}-{cfg.name_or_path.split('/')[-1]}"  # no download
    cache = DynamicCache(config=cfg)
    with press(model):
        model(ids, past_key_values=cache, use_cache=True)
    return {"name": name, "press": "KVzapPress", "params": g.press_params(press), "weights": f"{name}.safetensors",
            "kept": kept_rows(*full, cache)}


@torch.no_grad()
def run_fastkvzip(model, ids, out_dir: Path) -> dict:
    cfg = model.config
    L, h = cfg.num_hidden_layers, cfg.num_key_value_heads
    G = cfg.num_attention_heads // h
    torch.manual_seed(FASTKVZIP_SEED)
    gates = []
    for i in range(L):  # k_base, b and the norms randomised too (kvpress initialises them to 0 and 1)
        gate = FastKVzipGate(i, cfg.hidden_size, h, G, torch.float32, output_dim=16, sink=16)
        gate.k_base.normal_(0.0, 1.0)
        gate.b.normal_(0.0, 1.0)
        gate.q_norm.weight.normal_(1.0, 0.3)
        gate.k_norm.weight.normal_(1.0, 0.3)
        gates.append(gate.eval())
    save_file({f"{i}.{k}": v.contiguous() for i, gate in enumerate(gates) for k, v in gate.state_dict().items()},
              str(out_dir / "fast_kvzip.safetensors"))
    press = FastKVzipPress(**FASTKVZIP)
    press.gates = gates
    with press(model):
        model(ids, past_key_values=DynamicCache(config=cfg), use_cache=True)
    n = ids.shape[1]
    kept = []
    for layer in model.model.layers:
        bi, hi, si = layer.self_attn.masked_key_indices
        assert torch.all(bi == 0)
        masked = torch.zeros(h, n, dtype=torch.bool)
        masked[hi, si] = True
        kept.append([[int(p) for p in torch.nonzero(~masked[k]).flatten()] for k in range(h)])
    return {"name": "fast_kvzip", "press": "FastKVzipPress", "params": g.press_params(press),
            "weights": "fast_kvzip.safetensors", "kept": kept}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory (tests/golden)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    transformers.logging.set_verbosity_error()
    logging.getLogger("kvpress").setLevel(logging.ERROR)
    golden = Path(args.out)
    engine_dir = golden / "engine" / "llama"
    meta = json.loads((engine_dir / "engine.json").read_text())
    vocab = json.loads((engine_dir / meta["checkpoint"] / "config.json").read_text())["vocab_size"]
    prompt = torch.randperm(vocab, generator=torch.Generator().manual_seed(PROMPT_SEED))[:len(meta["prompt"])]
    ids = prompt[None].to(torch.int64)
    out_dir = golden / "engine_learned"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)

    eager = load(engine_dir, meta, "eager")
    cache = DynamicCache(config=eager.config)
    with torch.no_grad():
        eager(ids, past_key_values=cache, use_cache=True)
    full = ([layer.keys.clone() for layer in cache.layers], [layer.values.clone() for layer in cache.layers])
    cases = [run_kvzap(eager, ids, out_dir, *c, full) for c in KVZAP_CASES]
    cases.append(run_fastkvzip(load(engine_dir, meta, "sdpa"), ids, out_dir))
    for c in cases:
        print(f"  engine_learned/{c['name']:14s} kept per layer and head {[[len(k) for k in layer] for layer in c['kept']]}")
    g.write_json(out_dir / "engine_learned.json", {"format": g.FORMAT, "generator": GENERATOR, **g.versions(),
                                                   "model": "engine/llama", "prompt": ids[0].tolist(), "cases": cases})
    return 0


if __name__ == "__main__":
    sys.exit(main())
