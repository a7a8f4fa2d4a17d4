#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Golden fixtures for DMS (kvpress's DMSPress) in tests/golden/dms/.

Runs kvpress's own DMSPress hook on the small random-weight models of generate.py through a prefill and a
sequence of decoding forward passes (single tokens and one multi-token chunk), and records for every layer and
every token what the inner scorer press was handed (keys, values, pre-RoPE queries), the score it gave, and
which (batch, kv head, position) entries kvpress masked (`module.masked_key_indices`) — after every forward pass
(counts) and at the end (the set). The C++ test replays the same passes and compares the removed sets.

kvpress's DMSPress needs no trained checkpoint: it wraps any ScorerPress (the DMS paper's trained evictor is not
part of kvpress). The threshold of each scenario is placed in a wide gap of the scores, so a float32 port cannot
flip an entry across it; the margin is recorded and asserted.

Usage: python tools/golden/generate_dms.py --out tests/golden/dms   (generate.sh runs it)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import DynamicCache

from kvpress import DMSPress, ExpectedAttentionPress, KnormPress
from kvpress.utils import get_prerope_query_states

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate import TensorDir, build_model, jsonable, model_rope_json, versions, write_json  # noqa: E402

FORMAT = 1
GENERATOR = "tools/golden/generate_dms.py"
MIN_MARGIN = 1e-3  # smallest |score − threshold| allowed, relative to max(1, |threshold|)

# name, model family, head_dim, batch, prefill length, decoding chunk lengths, inner press, its parameters,
# sliding window, decoding, quantile of the scores where the threshold goes, seed
SCENARIOS = [
    ("llama_knorm_decoding", "llama", 64, 1, 48, [1] * 20 + [4] + [1] * 8, "knorm", {}, 8, True, 0.5, 301),
    ("qwen3_knorm_prefill_only_b2", "qwen3", 64, 2, 40, [1] * 6, "knorm", {}, 16, False, 0.4, 302),
    ("llama_knorm_window0_d128", "llama", 128, 1, 24, [1] * 12, "knorm", {}, 0, True, 0.5, 303),
    (
        "llama_expected_attention_decoding",
        "llama",
        64,
        1,
        40,
        [1] * 10,
        "expected_attention",
        dict(n_sink=0, n_future_positions=32),
        4,
        True,
        0.5,
        304,
    ),
]


def make_inner(kind: str, params: dict):
    if kind == "knorm":
        return KnormPress(**params)
    if kind == "expected_attention":
        return ExpectedAttentionPress(**params)
    raise ValueError(kind)


def run_dms(model, input_ids, prefill, chunks, inner, threshold, window, decoding):
    """Prefill + decoding passes with kvpress's DMSPress; returns per-layer captures."""
    L = model.config.num_hidden_layers
    cap = {li: {"keys": [], "values": [], "queries": [], "scores": [], "masked_counts": []} for li in range(L)}
    press = DMSPress(press=inner, threshold=threshold, sliding_window_size=window, decoding=decoding)
    orig_score = inner.score

    def score(module, hidden_states, keys, values, attentions, kwargs):
        s = orig_score(module, hidden_states, keys, values, attentions, kwargs)
        c = cap[module.layer_idx]
        c["keys"].append(keys.detach().clone())
        c["values"].append(values.detach().clone())
        c["queries"].append(get_prerope_query_states(module, hidden_states).detach().clone())
        c["scores"].append(s.detach().to(torch.float32).clone())
        return s

    inner.score = score  # DMSPress calls self.press.score
    passes = []
    try:
        with torch.no_grad(), press(model):
            cache = DynamicCache()
            pos = 0
            for length in [prefill] + list(chunks):
                model(input_ids[:, pos : pos + length], past_key_values=cache, use_cache=True)
                passes.append({"position": pos, "length": length})
                pos += length
                for li, layer in enumerate(model.model.layers):
                    m = layer.self_attn.masked_key_indices
                    cap[li]["masked_counts"].append(0 if m is None else int(m[0].numel()))
            masked = [layer.self_attn.masked_key_indices for layer in model.model.layers]
            ratio = float(press.compression_ratio)
    finally:
        del inner.score
    return cap, passes, masked, ratio


def evictable_scores(cap, passes, window, decoding) -> np.ndarray:
    """Scores of every entry that kvpress decides on (left the sliding window in a processed pass)."""
    total = sum(p["length"] for p in (passes if decoding else passes[:1]))
    out = []
    for c in cap.values():
        s = torch.cat(c["scores"], dim=-1)  # [b, h, tokens scored]
        out.append(s[..., : max(0, total - window)].reshape(-1).numpy())
    return np.concatenate(out)


def place_threshold(scores: np.ndarray, quantile: float) -> float:
    """The midpoint of the widest gap between consecutive scores near the quantile, as a float32 value."""
    s = np.sort(scores.astype(np.float64))
    n = len(s)
    lo, hi = max(1, int(n * (quantile - 0.1))), min(n - 1, int(n * (quantile + 0.1)))
    gaps = s[lo:hi + 1] - s[lo - 1:hi]
    i = lo + int(np.argmax(gaps))
    return float(np.float32((s[i - 1] + s[i]) / 2))


def generate_scenario(out_dir: Path, spec, log) -> str:
    name, family, head_dim, batch, prefill, chunks, kind, params, window, decoding, quantile, seed = spec
    model = build_model(family, head_dim, seed, attn_implementation="sdpa")
    cfg = model.config
    total = prefill + sum(chunks)
    g = torch.Generator().manual_seed(seed + 1000)
    input_ids = torch.randint(0, cfg.vocab_size, (batch, total), generator=g)

    # The threshold depends on the scores and (through the masked attention of later passes) the scores on the
    # threshold: place it, rerun, and repeat until the scores of the run that is written clear it widely.
    threshold = float("-inf")
    for _ in range(4):
        cap, passes, masked, ratio = run_dms(model, input_ids, prefill, chunks, make_inner(kind, params), threshold, window, decoding)
        scores = evictable_scores(cap, passes, window, decoding)
        if np.isfinite(threshold):
            margin = float(np.min(np.abs(scores - threshold))) / max(1.0, abs(threshold))
            if margin >= MIN_MARGIN:
                break
        threshold = place_threshold(scores, quantile)
    else:
        raise RuntimeError(f"{name}: no threshold with margin {MIN_MARGIN}")

    d = out_dir / name
    td = TensorDir(d)
    layers = []
    processed = total if decoding else prefill
    for li in range(cfg.num_hidden_layers):
        c = cap[li]
        keys = torch.cat(c["keys"], dim=2)
        values = torch.cat(c["values"], dim=2)
        sc = torch.cat(c["scores"], dim=-1)
        assert keys.shape[2] == processed, (keys.shape, processed)
        mask = torch.zeros(batch, cfg.num_key_value_heads, total, dtype=torch.int64)
        if masked[li] is not None:
            bi, hi, pi = masked[li]
            assert int(pi.max()) < total
            mask[bi, hi, pi] += 1
            assert int(mask.max()) == 1, "an entry was masked twice"
        # Independent restatement of what must have happened: every decided entry below the threshold.
        decided = max(0, processed - window)
        expect = torch.zeros_like(mask)
        expect[..., :decided] = (sc[..., :decided] < threshold).to(torch.int64)
        assert torch.equal(mask, expect), f"{name} layer {li}: kvpress masked an unexpected set"
        entry = {
            "layer_idx": li,
            "keys": td.write(f"layer{li}_keys", keys),
            "values": td.write(f"layer{li}_values", values),
            "scores": td.write(f"layer{li}_scores", sc),
            "masked": td.write(f"layer{li}_masked", mask, "int32"),
            "masked_counts": c["masked_counts"],
        }
        if kind == "expected_attention":
            entry["queries"] = td.write(f"layer{li}_queries", torch.cat(c["queries"], dim=2))
        layers.append(entry)
        log(f"  {name:36s} layer {li}: {int(mask.sum())} of {batch * cfg.num_key_value_heads * total} masked")
    inner = make_inner(kind, params)
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
        "press": {"name": type(inner).__name__, "params": {k: jsonable(v) for k, v in params.items()}},
        "threshold": threshold,
        "threshold_margin": margin,
        "sliding_window_size": window,
        "decoding": decoding,
        "compression_ratio": ratio,
        "rope": model_rope_json(model, td),
        "layers": layers,
    }
    write_json(d / "scenario.json", scenario)
    return name


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory (tests/golden/dms)")
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
    log(f"wrote {len(names)} DMS scenarios to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
