#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Golden fixtures for the decoding presses (kvpress's DecodingPress, CompressionRatioDecodingPress and
PrefillDecodingPress) in tests/golden/decoding/.

Runs kvpress's own press, through its forward hooks, on the small random-weight models of generate.py through a
prefill and decoding passes (single tokens, and in one scenario a chunk of target_size tokens), with position_ids
continuing from the original length as kvpress's pipeline passes them (CompressionRatioDecodingPress reads them).
For every layer it records what entered the cache in each pass (keys, values and pre-RoPE queries of the new
tokens, captured by a forward hook that runs before kvpress's), the cache length after each pass, and after each
compression the positions kvpress kept in every (batch, kv head) row, recovered from the keys (which kvpress only
moves; it keeps them in score order, the sets are what a port must reproduce).

The base presses are Knorm and KeyDiff, which read no queries: kvpress's buffer holds hidden-state passes and uses
the buffer length as the position (docs/deviations.md), which a port that buffers query tokens at their true
positions reproduces only for presses that do not read them. The token ids of each sequence are distinct (a random
permutation of the vocabulary), so no two keys of layer 0 have equal norms; the generator asserts that every kept
set is decided by a relative gap of at least 1e-5 in kvpress's scores, so a float32 port cannot pick another set.

Usage: python tools/golden/generate_decoding.py --out tests/golden/decoding   (generate.sh runs it)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import transformers
from transformers import DynamicCache

from kvpress import CompressionRatioDecodingPress, DecodingPress, KeyDiffPress, KnormPress, PrefillDecodingPress
from kvpress.utils import get_prerope_query_states

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate import TensorDir, build_model, model_rope_json, versions, write_json  # noqa: E402

FORMAT = 1
GENERATOR = "tools/golden/generate_decoding.py"
MIN_GAP = 1e-5  # smallest relative gap of kvpress's scores at each kept cut

BASES = {"knorm": KnormPress, "keydiff": KeyDiffPress}


def decoding(kind: str, base: str, interval: int, target, buffer: int):
    """A kvpress decoding press; `target` is target_size, or target_compression_ratio for kind "ratio"."""
    if kind == "ratio":
        return CompressionRatioDecodingPress(base_press=BASES[base](), compression_interval=interval,
                                             hidden_states_buffer_size=buffer, target_compression_ratio=target)
    return DecodingPress(base_press=BASES[base](), compression_interval=interval, target_size=target,
                         hidden_states_buffer_size=buffer)


# name, model, head_dim, batch, prefill, decoding chunk lengths, prefilling press (base, ratio) or None,
# (kind, base, compression_interval, target_size or ratio, hidden_states_buffer_size), seed
SCENARIOS = [
    ("llama_knorm_i4_t24", "llama", 64, 1, 40, [1] * 14, None, ("fixed", "knorm", 4, 24, 256), 501),
    ("qwen3_keydiff_b2_d128", "qwen3", 128, 2, 30, [1] * 12, None, ("fixed", "keydiff", 3, 20, 8), 502),
    ("llama_ratio_knorm_b2", "llama", 64, 2, 40, [1] * 15, None, ("ratio", "knorm", 5, 0.4, 256), 503),
    ("llama_prefill_knorm_decoding_keydiff", "llama", 64, 1, 48, [1] * 10, ("knorm", 0.5), ("fixed", "keydiff", 3, 16, 4),
     504),
    ("qwen3_knorm_chunk", "qwen3", 64, 1, 12, [1] * 5 + [16] + [1] * 4, None, ("fixed", "knorm", 4, 16, 256), 505),
]


def kept_gap(scores: torch.Tensor, n_kept: int) -> float:
    """Smallest relative gap of the scores [b, h, n] between the n_kept-th and the next, over every row."""
    gap = float("inf")
    for row in scores.reshape(-1, scores.shape[-1]):
        s = torch.sort(row.double(), descending=True).values
        if n_kept < s.numel():
            gap = min(gap, float(s[n_kept - 1] - s[n_kept]) / float(s.abs().max()))
    return gap


def run(model, input_ids, chunks, press, scorers):
    """Prefill + decoding passes under kvpress's press; returns per-layer captures and the passes."""
    layers = model.model.layers
    rec = [{"keys": [], "values": [], "queries": [], "lengths": [], "compressions": []} for _ in layers]
    state = {"pass": 0, "pending": {}}

    def before(module, args, kwargs, output):  # runs before kvpress's hook: the pass's new entries
        li = module.layer_idx
        hs = kwargs["hidden_states"]
        q = hs.shape[1]
        cache_layer = kwargs["past_key_values"].layers[li]
        rec[li]["keys"].append(cache_layer.keys[:, :, -q:].detach().clone())
        rec[li]["values"].append(cache_layer.values[:, :, -q:].detach().clone())
        rec[li]["queries"].append(get_prerope_query_states(module, hs).detach().clone())

    def after(module, args, kwargs, output):  # runs after kvpress's hook: the cache it left
        li = module.layer_idx
        cache_layer = kwargs["past_key_values"].layers[li]
        rec[li]["lengths"].append(int(cache_layer.keys.shape[2]))
        info = state["pending"].pop(li, None)
        if info is not None:
            info["keys"] = cache_layer.keys.detach().clone()
            rec[li]["compressions"].append(info)

    originals = []
    for scorer in scorers:  # every score kvpress computes to compress: the kept cut's gap
        original = scorer.score

        def score(module, *args, _original=original, _scorer=scorer, **kwargs):
            s = _original(module, *args, **kwargs)
            n = s.shape[-1]
            n_kept = int(n * (1 - _scorer.compression_ratio))
            if n_kept < n:
                state["pending"][module.layer_idx] = {"pass": state["pass"], "n_before": n, "n_kept": n_kept,
                                                      "min_kept_gap": kept_gap(s.detach(), n_kept)}
            return s

        scorer.score = score
        originals.append(scorer)
    handles = [layer.self_attn.register_forward_hook(before, with_kwargs=True) for layer in layers]
    passes = []
    try:
        with torch.no_grad(), press(model):
            handles += [layer.self_attn.register_forward_hook(after, with_kwargs=True) for layer in layers]
            cache = DynamicCache()
            pos = 0
            for length in chunks:
                ids = input_ids[:, pos:pos + length]
                position_ids = torch.arange(pos, pos + length).unsqueeze(0).expand(ids.shape[0], -1)
                model(ids, past_key_values=cache, position_ids=position_ids, use_cache=True)
                passes.append({"position": pos, "length": length})
                pos += length
                state["pass"] += 1
    finally:
        for h in handles:
            h.remove()
        for scorer in originals:
            del scorer.score
    assert not state["pending"], "a compression was not followed by the layer's post hook"
    return rec, passes


def generate_scenario(out_dir: Path, spec, log) -> str:
    name, family, head_dim, batch, prefill, chunks, prefilling, dec, seed = spec
    model = build_model(family, head_dim, seed, attn_implementation="sdpa")
    cfg = model.config
    total = prefill + sum(chunks)
    g = torch.Generator().manual_seed(seed + 1000)
    input_ids = torch.stack([torch.randperm(cfg.vocab_size, generator=g)[:total] for _ in range(batch)])
    kind, base, interval, target, buffer = dec
    decoding_press = decoding(kind, base, interval, target, buffer)
    scorers = [decoding_press.base_press]
    if prefilling is not None:
        prefill_press = BASES[prefilling[0]](compression_ratio=prefilling[1])
        press = PrefillDecodingPress(prefilling_press=prefill_press, decoding_press=decoding_press)
        scorers.append(prefill_press)
    else:
        press = decoding_press
    rec, passes = run(model, input_ids, [prefill] + list(chunks), press, scorers)

    d = out_dir / name
    td = TensorDir(d)
    layers = []
    for li, r in enumerate(rec):
        keys = torch.cat(r["keys"], dim=2)
        assert keys.shape[2] == total
        comps = []
        for ci, c in enumerate(r["compressions"]):
            assert c["min_kept_gap"] >= MIN_GAP, f"{name} layer {li}: kept cut gap {c['min_kept_gap']}"
            kept_keys = c["keys"]
            n = kept_keys.shape[2]
            assert n == c["n_kept"]
            kept = torch.zeros(batch, cfg.num_key_value_heads, n, dtype=torch.int64)
            for b in range(batch):
                for h in range(cfg.num_key_value_heads):
                    for j in range(n):
                        match = (keys[b, h] == kept_keys[b, h, j]).all(dim=-1).nonzero().flatten()
                        assert match.numel() == 1
                        kept[b, h, j] = int(match[0])
            kept = torch.sort(kept, dim=-1).values
            comps.append({"pass": c["pass"], "n_before": c["n_before"], "min_kept_gap": c["min_kept_gap"],
                          "kept_positions": td.write(f"layer{li}_c{ci}_kept", kept, "int32")})
        assert len(comps) >= 2, f"{name} layer {li}: {len(comps)} compressions"
        layers.append({
            "layer_idx": li,
            "keys": td.write(f"layer{li}_keys", keys),
            "values": td.write(f"layer{li}_values", torch.cat(r["values"], dim=2)),
            "queries": td.write(f"layer{li}_queries", torch.cat(r["queries"], dim=2)),
            "lengths": r["lengths"],
            "compressions": comps,
        })
        log(f"  {name:38s} layer {li}: {len(comps)} compressions, lengths {r['lengths']}")
    dec_json = {"name": type(decoding_press).__name__, "base_press": type(decoding_press.base_press).__name__,
                "compression_interval": interval, "hidden_states_buffer_size": buffer}
    dec_json["target_compression_ratio" if kind == "ratio" else "target_size"] = target
    press_json = dec_json
    if prefilling is not None:
        press_json = {"name": "PrefillDecodingPress",
                      "prefilling_press": {"name": type(prefill_press).__name__, "compression_ratio": prefilling[1]},
                      "decoding_press": dec_json}
    scenario = {
        "format": FORMAT,
        "generator": GENERATOR,
        **versions(),
        "model": family,
        "num_layers": cfg.num_hidden_layers,
        "batch": batch,
        "q_heads": cfg.num_attention_heads,
        "kv_heads": cfg.num_key_value_heads,
        "head_dim": head_dim,
        "total_tokens": total,
        "passes": passes,
        "press": press_json,
        "rope": model_rope_json(model, td),
        "layers": layers,
    }
    write_json(d / "scenario.json", scenario)
    return name


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory (tests/golden/decoding)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    transformers.logging.set_verbosity_error()
    log = (lambda s: None) if args.quiet else (lambda s: print(s, flush=True))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for child in sorted(out.iterdir()):  # only what this script wrote before
        if child.is_dir() and (child / "scenario.json").exists():
            for f in child.iterdir():
                f.unlink()
            child.rmdir()
    names = [generate_scenario(out, spec, log) for spec in SCENARIOS]
    write_json(out / "index.json", {"format": FORMAT, "generator": GENERATOR, **versions(), "scenarios": names})
    log(f"wrote {len(names)} decoding scenarios to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
