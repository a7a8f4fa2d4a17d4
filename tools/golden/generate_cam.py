#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Golden fixtures for CAM (kvpress's CAMPress, cache merging during decoding) in tests/golden/cam/.

Runs kvpress's own CAMPress hook on the small random-weight models of generate.py (sdpa attention, so kvpress
computes the current token's attention itself) through a prefill and decoding passes (single tokens, and in one
scenario a chunk of target_size tokens), with positions continuing from the original length as kvpress's pipeline
passes them. For every layer it records what entered the cache in each pass (keys, values and pre-RoPE queries of
the new tokens, captured by a forward hook that runs before kvpress's) and, after each compression, kvpress's cache
(keys and values, the values after merging) and its running attention sum.

The merge draws: kvpress calls torch.bernoulli(p). While the scenario runs, torch.bernoulli is replaced by
`u < p` with u from a seeded NumPy generator, rounded to float32 and written to the fixture in call order; the C++
test hands the same u to its press. Every other step is kvpress's own code. A u within 1e-3 of a p in (0, 1) is
drawn again (recorded is the one used), so that a float32 rounding difference in p cannot flip a merge.

The token ids of each sequence are distinct (a random permutation of the vocabulary), so no two keys of layer 0
have equal norms; the generator asserts that the kept set and the candidates are decided by a relative gap of
at least 1e-5 in the mean scores, so a float32 port cannot pick another set.

Usage: python tools/golden/generate_cam.py --out tests/golden/cam   (generate.sh runs it)
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import DynamicCache

from kvpress import CAMPress, KeyDiffPress, KnormPress, TOVAPress
from kvpress.utils import get_prerope_query_states

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate import TensorDir, build_model, model_rope_json, versions, write_json  # noqa: E402

FORMAT = 1
GENERATOR = "tools/golden/generate_cam.py"
U_MARGIN = 1e-3  # smallest |u − p| allowed for p in (0, 1)
MIN_GAP = 1e-5  # smallest relative gap of the mean scores at the kept and the candidate cuts

# name, model, head_dim, batch, prefill, decoding chunk lengths, base press, compression_interval, target_size,
# hidden_states_buffer_size, merge_budget, seed
SCENARIOS = [
    ("llama_knorm_i4_t24_m4", "llama", 64, 1, 40, [1] * 16, "knorm", 4, 24, 256, 4, 401),
    ("llama_keydiff_b2_m32", "llama", 64, 2, 30, [1] * 9, "keydiff", 3, 20, 8, 32, 402),
    ("qwen3_tova_b2_d128", "qwen3", 128, 2, 36, [1] * 15, "tova", 5, 30, 0, 6, 403),
    ("llama_knorm_per_step_d128", "llama", 128, 1, 20, [1] * 8, "knorm", 1, 16, 256, 1, 404),
    ("llama_knorm_grow_chunk", "llama", 64, 1, 10, [1] * 9 + [16] + [1] * 3, "knorm", 2, 16, 256, 3, 405),
]

BASES = {"knorm": KnormPress, "keydiff": KeyDiffPress, "tova": TOVAPress}


def draw_uniforms(rng: np.random.Generator, p: np.ndarray) -> np.ndarray:
    """float32 u of p's shape, none within U_MARGIN of a p in (0, 1) (those are drawn again)."""
    u = rng.random(p.shape).astype(np.float32)
    while True:
        close = (p > 0) & (p < 1) & (np.abs(u.astype(np.float64) - p) < U_MARGIN)
        if not close.any():
            return u
        u[close] = rng.random(int(close.sum())).astype(np.float32)


@contextlib.contextmanager
def recorded_bernoulli(seed: int, uniforms: list):
    """torch.bernoulli(p) becomes u < p, with u from draw_uniforms; every u used is appended to `uniforms`."""
    rng = np.random.default_rng(seed)
    original = torch.bernoulli

    def bernoulli(p: torch.Tensor) -> torch.Tensor:
        u = draw_uniforms(rng, p.detach().to(torch.float32).numpy())
        uniforms.extend(float(x) for x in u.reshape(-1))
        return (torch.from_numpy(u) < p.detach().to(torch.float32)).to(p.dtype)

    torch.bernoulli = bernoulli
    try:
        yield
    finally:
        torch.bernoulli = original


class Recorder:
    """What one scenario's run saw, per layer and pass, and the merge draws in call order."""

    def __init__(self, num_layers: int, seed: int):
        self.layers = [{"keys": [], "values": [], "queries": [], "lengths": [], "compressions": []} for _ in range(num_layers)]
        self.pass_index = 0
        self.rng = np.random.default_rng(seed)
        self.uniforms: list[np.ndarray] = []
        self.draws: list[dict] = []
        self.pending: dict[int, dict] = {}  # layer -> the compression of this pass, until the post hook stores the cache
        self.current_layer = -1
        self.scores = None
        self.decided = {"merged_p_below_1": 0, "kept_p_above_0": 0}

    def bernoulli(self, p: torch.Tensor) -> torch.Tensor:
        pn = p.detach().to(torch.float32).numpy()
        u = draw_uniforms(self.rng, pn)
        self.uniforms.append(u.reshape(-1))
        self.draws.append({"layer": self.current_layer, "pass": self.pass_index, "shape": list(pn.shape)})
        merged = u < pn
        self.decided["merged_p_below_1"] += int((merged & (pn < 1)).sum())
        self.decided["kept_p_above_0"] += int((~merged & (pn > 0)).sum())
        info = self.pending[self.current_layer]
        info["probabilities"] = torch.from_numpy(pn.copy())
        info["merges"] = int(merged.sum())
        return torch.from_numpy(merged.astype(np.float32)).to(p.dtype)


def gaps(mean: torch.Tensor, target: int, k: int) -> tuple[float, float]:
    """Smallest relative gap of the mean scores [b, n] at the kept cut and at the candidate cut."""
    kept_gap, cand_gap = float("inf"), float("inf")
    for row in mean:
        s = row.double()
        scale = float(s.abs().max())
        order = torch.sort(s, descending=True).values
        kept_gap = min(kept_gap, float(order[target - 1] - order[target]) / scale)
        evicted = order[target:]
        if k < evicted.numel():
            cand_gap = min(cand_gap, float(evicted[k - 1] - evicted[k]) / scale)
    return kept_gap, cand_gap


def run(model, input_ids, chunks, press: CAMPress, rec: Recorder):
    layers = model.model.layers

    def before(module, args, kwargs, output):  # runs before kvpress's hook: the pass's new entries
        li = module.layer_idx
        hs = kwargs["hidden_states"]
        q = hs.shape[1]
        cache_layer = kwargs["past_key_values"].layers[li]
        r = rec.layers[li]
        r["keys"].append(cache_layer.keys[:, :, -q:].detach().clone())
        r["values"].append(cache_layer.values[:, :, -q:].detach().clone())
        r["queries"].append(get_prerope_query_states(module, hs).detach().clone())
        rec.current_layer = li

    def after(module, args, kwargs, output):  # runs after kvpress's hook: the cache it left
        li = module.layer_idx
        cache_layer = kwargs["past_key_values"].layers[li]
        rec.layers[li]["lengths"].append(int(cache_layer.keys.shape[2]))
        info = rec.pending.pop(li, None)
        if info is not None:
            info["keys"] = cache_layer.keys.detach().clone()
            info["values"] = cache_layer.values.detach().clone()
            info["attention_sum"] = press._running_attn_sum[li].detach().clone()
            rec.layers[li]["compressions"].append(info)

    original_compress = press.compress
    original_score = press.base_press.score

    def score(*args, **kwargs):
        s = original_score(*args, **kwargs)
        rec.scores = s.detach().clone()
        return s

    def compress(module, hidden_states, keys, values, attentions, kwargs):
        li = module.layer_idx
        n = keys.shape[2]
        k = press.layer_step_counts[li]
        rec.pending[li] = {"pass": rec.pass_index, "k": int(k), "n_before": int(n)}
        out = original_compress(module, hidden_states, keys, values, attentions, kwargs)
        if n - press.target_size <= 0:
            rec.pending.pop(li)
            return out
        kept_gap, cand_gap = gaps(rec.scores.mean(dim=1), press.target_size, k)
        rec.pending[li].update({"min_kept_gap": kept_gap, "min_candidate_gap": cand_gap})
        return out

    press.compress = compress
    press.base_press.score = score
    handles = [layer.self_attn.register_forward_hook(before, with_kwargs=True) for layer in layers]
    original_bernoulli = torch.bernoulli
    torch.bernoulli = rec.bernoulli
    passes = []
    try:
        with torch.no_grad(), press(model):
            handles += [layer.self_attn.register_forward_hook(after, with_kwargs=True) for layer in layers]
            cache = DynamicCache()
            pos = 0
            for length in chunks:
                ids = input_ids[:, pos : pos + length]
                position_ids = torch.arange(pos, pos + length).unsqueeze(0).expand(ids.shape[0], -1)
                model(ids, past_key_values=cache, position_ids=position_ids, use_cache=True)
                passes.append({"position": pos, "length": length})
                pos += length
                rec.pass_index += 1
    finally:
        torch.bernoulli = original_bernoulli
        for h in handles:
            h.remove()
        del press.compress
        del press.base_press.score
    assert not rec.pending, "a compression was not followed by the layer's post hook"
    return passes


def generate_scenario(out_dir: Path, spec, log) -> str:
    name, family, head_dim, batch, prefill, chunks, base, interval, target, buffer, budget, seed = spec
    model = build_model(family, head_dim, seed, attn_implementation="sdpa")
    cfg = model.config
    total = prefill + sum(chunks)
    g = torch.Generator().manual_seed(seed + 1000)
    input_ids = torch.stack([torch.randperm(cfg.vocab_size, generator=g)[:total] for _ in range(batch)])
    press = CAMPress(
        base_press=BASES[base](),
        compression_interval=interval,
        target_size=target,
        hidden_states_buffer_size=buffer,
        merge_budget=budget,
    )
    rec = Recorder(cfg.num_hidden_layers, seed + 2000)
    passes = run(model, input_ids, [prefill] + list(chunks), press, rec)

    d = out_dir / name
    td = TensorDir(d)
    layers = []
    compressions_total = 0
    for li, r in enumerate(rec.layers):
        keys = torch.cat(r["keys"], dim=2)
        values = torch.cat(r["values"], dim=2)
        assert keys.shape[2] == total
        comps = []
        for ci, c in enumerate(r["compressions"]):
            assert c["min_kept_gap"] >= MIN_GAP, f"{name} layer {li}: kept cut gap {c['min_kept_gap']}"
            assert c["min_candidate_gap"] >= MIN_GAP, f"{name} layer {li}: candidate cut gap {c['min_candidate_gap']}"
            # The kept positions, recovered from the keys (which kvpress only moves): for the C++ test's messages.
            kept = torch.zeros(batch, target, dtype=torch.int64)
            for b in range(batch):
                for j in range(target):
                    match = (keys[b, 0] == c["keys"][b, 0, j]).all(dim=-1).nonzero().flatten()
                    assert match.numel() == 1
                    kept[b, j] = int(match[0])
            comps.append(
                {
                    "pass": c["pass"],
                    "k": c["k"],
                    "n_before": c["n_before"],
                    "merges": c["merges"],
                    "min_kept_gap": c["min_kept_gap"],
                    "min_candidate_gap": c["min_candidate_gap"] if np.isfinite(c["min_candidate_gap"]) else None,
                    "kept_positions": td.write(f"layer{li}_c{ci}_kept", kept, "int32"),
                    "keys": td.write(f"layer{li}_c{ci}_keys", c["keys"]),
                    "values": td.write(f"layer{li}_c{ci}_values", c["values"]),
                    "attention_sum": td.write(f"layer{li}_c{ci}_attention_sum", c["attention_sum"]),
                    "probabilities": td.write(f"layer{li}_c{ci}_probabilities", c["probabilities"]),
                }
            )
        compressions_total += len(comps)
        assert len(comps) >= 2, f"{name} layer {li}: {len(comps)} compressions"
        layers.append(
            {
                "layer_idx": li,
                "keys": td.write(f"layer{li}_keys", keys),
                "values": td.write(f"layer{li}_values", values),
                "queries": td.write(f"layer{li}_queries", torch.cat(r["queries"], dim=2)),
                "lengths": r["lengths"],
                "compressions": comps,
            }
        )
        log(f"  {name:28s} layer {li}: {len(comps)} compressions, lengths {r['lengths']}, "
            f"merges {[c['merges'] for c in comps]}")
    uniforms = np.concatenate(rec.uniforms) if rec.uniforms else np.zeros(0, dtype=np.float32)
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
        "press": {
            "name": "CAMPress",
            "base_press": type(press.base_press).__name__,
            "compression_interval": interval,
            "target_size": target,
            "hidden_states_buffer_size": buffer,
            "merge_budget": budget,
        },
        "uniforms": td.write("uniforms", torch.from_numpy(uniforms)),
        "draws": rec.draws,
        "decided_by_u": rec.decided,
        "rope": model_rope_json(model, td),
        "layers": layers,
    }
    write_json(d / "scenario.json", scenario)
    return name, rec.decided


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory (tests/golden/cam)")
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
    names = []
    merged_below_1 = kept_above_0 = 0
    for spec in SCENARIOS:
        name, decided = generate_scenario(out, spec, log)
        names.append(name)
        merged_below_1 += decided["merged_p_below_1"]
        kept_above_0 += decided["kept_p_above_0"]
    # Both outcomes of a draw that matters must occur, or the fixtures would not test u < p.
    assert merged_below_1 > 0 and kept_above_0 > 0, (merged_below_1, kept_above_0)
    write_json(out / "index.json", {"format": FORMAT, "generator": GENERATOR, **versions(), "scenarios": names})
    log(f"wrote {len(names)} CAM scenarios to {out} (draws with p in (0, 1): {merged_below_1} merged, "
        f"{kept_above_0} not)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
