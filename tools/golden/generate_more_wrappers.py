#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Golden fixtures for the presses added after tests/golden/more_presses was written: EntropyGatedChunkKVPress,
LUKVPress, DuoAttentionPress and MergingPress (and their kvpress 0.5.5 results).

Rebuilds each scenario's model and prompt exactly as generate.py does (MORE_SCENARIOS), captures layer 1's inputs
through kvpress's own hook and asserts that they equal the committed keys.bin / values.bin bit for bit, so the
scenario's inputs are reused and never rewritten. Each case then runs the kvpress press's own `compress` on those
inputs, one sequence at a time (kvpress chooses from batch element 0 only; kvcompress per sequence, so each
sequence's answer is kvpress's answer for that sequence alone); MergingPress runs on the whole batch.

Writes tests/golden/more_presses/<scenario>/more_wrappers.json and its mw_*.bin tensors (tools/golden/README.md).
Run: python tools/golden/generate_more_wrappers.py --out tests/golden   (about 20 s; two runs write identical files)
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import transformers
from kvpress.presses import duo_attention_press as duo_module

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generate as G  # noqa: E402  (the models, scenarios and writers of the other fixtures)
from kvpress import (  # noqa: E402
    EntropyGatedChunkKVPress,
    ExpectedAttentionPress,
    KeyDiffPress,
    DuoAttentionPress,
    KnormPress,
    LUKVPress,
    MergingPress,
    SnapKVPress,
)

GENERATOR = "tools/golden/generate_more_wrappers.py"


def layer_inputs(model, input_ids, li: int) -> dict:
    """The layer's inputs as a press sees them in kvpress's forward hook."""
    cap = G.run_press(model, input_ids, KnormPress(0.5), (li,), no_attention=True)
    return cap[li]


def sequence(c: dict, b: int):
    """(hidden_states, keys, values, kwargs) of sequence b alone."""
    sl = slice(b, b + 1)
    pe = tuple(t[sl] if t.shape[0] > 1 else t for t in c["position_embeddings"])
    return c["hidden_states"][sl], c["keys"][sl], c["values"][sl], {"position_embeddings": pe}


def window_queries_spec(uses: list, scenario: dict) -> dict:
    """{"window_queries": spec} of the scenario's window_queries_<w>.bin when `uses` names it (generate.py wrote it)."""
    for u in uses:
        if u.startswith("window_queries_"):
            for e in scenario["layer_presses"] + scenario.get("finch_presses", []):
                if e["window_queries"]["file"] == f"{u}.bin":
                    return {"window_queries": e["window_queries"]}
            raise KeyError(u)
    return {}


def wrapper_params(press) -> dict:
    """The wrapper's own dataclass fields (the inner press is written separately)."""
    return {f.name: G.jsonable(getattr(press, f.name)) for f in G.dataclasses.fields(press)
            if f.init and f.name != "press" and not f.name.startswith("_")}


def recording_score(inner, into: list):
    """Wraps inner.score so every call's result is appended to `into`."""
    original = inner.score

    def score(*args):
        s = original(*args)
        into.append(s.detach().clone())
        return s

    inner.score = score
    return original


# --------------------------------------------------------------------------------------------------------------------
# EntropyGatedChunkKVPress: (name, inner press factory, wrapper parameters, uses)
# --------------------------------------------------------------------------------------------------------------------

EG_CASES = [
    ("egchunkkv_snapkv", lambda r: SnapKVPress(compression_ratio=r, window_size=8, kernel_size=5), {},
     ["window_queries_8", "keys"]),
    ("egchunkkv_keydiff_c16_l3", lambda r: KeyDiffPress(compression_ratio=r),
     dict(chunk_length=16, low_entropy_chunk_length=3), ["keys"]),
    ("egchunkkv_knorm_c7_l2", lambda r: KnormPress(compression_ratio=r), dict(chunk_length=7, low_entropy_chunk_length=2),
     ["keys"]),
]


@torch.no_grad()
def run_entropy_gated(c: dict, name: str, inner_factory, params: dict, uses: list, ratio: float, td, scenario) -> dict:
    module = c["module"]
    b, h, n, _ = c["keys"].shape
    kept_rows, scores = [], []
    press = None
    for bi in range(b):
        press = EntropyGatedChunkKVPress(press=inner_factory(ratio), **params)
        inner_scores: list = []
        recording_score(press.press, inner_scores)
        hs, k, v, kw = sequence(c, bi)
        k2, v2 = press.compress(module, hs, k, v, None, kw)
        kept = G.recover_kept(k, v, k2, v2)[0]  # [h, n_kept]
        assert all(torch.equal(kept[0], kept[i]) for i in range(h)), "heads of a sequence keep different tokens"
        kept_rows.append(kept[0])
        scores.append(inner_scores[0][0])
    n_kept = {int(r.numel()) for r in kept_rows}
    assert len(n_kept) == 1
    inner = press.press
    return {
        "name": name,
        "press": "EntropyGatedChunkKVPress",
        "params": wrapper_params(press),
        "presses": [{"press": type(inner).__name__, "params": G.press_params(inner), "uses": uses,
                     **window_queries_spec(uses, scenario)}],
        "n_kept": n_kept.pop(),
        "kept": td.write(f"mw_{name}_kept", torch.stack(kept_rows), "int32"),  # [b, n_kept], every head
        "inner_scores": td.write(f"mw_{name}_inner_scores", torch.stack(scores).to(torch.float32)),  # [b, h, n]
    }


# --------------------------------------------------------------------------------------------------------------------
# LUKVPress: (name, inner press, wrapper parameters, uses). The budget curve (kvpress downloads one for
# Llama-3.1-8B) is a random [99, layers, kv_heads] float64 array, prune ratios near the target and clipped to [0, 1].
# --------------------------------------------------------------------------------------------------------------------

LUKV_CASES = [
    ("lukv_expected_attention", lambda: ExpectedAttentionPress(epsilon=2e-2), {}, ["queries", "keys", "values", "inv_freq"]),
    ("lukv_knorm_s2_w8", lambda: KnormPress(), dict(sink=2, window=8), ["keys"]),
    ("lukv_snapkv_s0_w0", lambda: SnapKVPress(window_size=8, kernel_size=5), dict(sink=0, window=0),
     ["window_queries_8", "keys"]),
]


def budget_curve(layers: int, heads: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    target = (np.arange(1, 100) / 100.0)[:, None, None]
    return np.clip(target + 0.35 * rng.standard_normal((99, layers, heads)), 0.0, 1.0)


@torch.no_grad()
def run_lukv(c: dict, name: str, inner_factory, params: dict, uses: list, ratio: float, curve, td, scenario) -> dict:
    module = c["module"]
    press = LUKVPress(press=inner_factory(), compression_ratio=ratio, **params)
    press._budget_curves = curve
    scores: list = []
    recording_score(press.press, scores)
    if hasattr(module, "masked_key_indices"):
        del module.masked_key_indices
    saved = module.config._attn_implementation
    module.config._attn_implementation = "sdpa"  # kvpress's masks act in later sdpa passes; the inputs stay these
    try:
        k2, v2 = press.compress(module, c["hidden_states"], c["keys"], c["values"], None,
                                {"position_embeddings": c["position_embeddings"]})
    finally:
        module.config._attn_implementation = saved
    assert k2 is c["keys"] and v2 is c["values"], "LUKV masks, it does not prune"
    b, h, n, _ = c["keys"].shape
    kept = torch.ones(b, h, n, dtype=torch.int32)
    masked = getattr(module, "masked_key_indices", None)
    if masked is not None:
        kept[masked] = 0
        del module.masked_key_indices
    return {
        "name": name,
        "press": "LUKVPress",
        "params": wrapper_params(press),
        "presses": [{"press": type(press.press).__name__, "params": G.press_params(press.press), "uses": uses,
                     **window_queries_spec(uses, scenario)}],
        "kept_mask": td.write(f"mw_{name}_kept_mask", kept, "int32"),  # [b, h, n], 1 = kept (not masked)
        "inner_scores": td.write(f"mw_{name}_inner_scores", scores[0].to(torch.float32)),  # [b, h, n]
    }


# --------------------------------------------------------------------------------------------------------------------
# MergingPress: (name, inner press factory, wrapper parameters, uses). The whole batch in one call (kvpress merges
# every (batch, head) row on its own).
# --------------------------------------------------------------------------------------------------------------------

MERGING_CASES = [
    ("merging_knorm", lambda r: KnormPress(compression_ratio=r), {}, ["keys"]),
    ("merging_snapkv_t02_f075", lambda r: SnapKVPress(compression_ratio=r, window_size=8, kernel_size=5),
     dict(similarity_threshold=0.2, merge_fraction=0.75), ["window_queries_8", "keys"]),
    ("merging_keydiff_f05", lambda r: KeyDiffPress(compression_ratio=r), dict(merge_fraction=0.5), ["keys"]),
]


@torch.no_grad()
def run_merging(c: dict, name: str, inner_factory, params: dict, uses: list, ratio: float, td, scenario) -> dict:
    press = MergingPress(press=inner_factory(ratio), **params)
    scores: list = []
    recording_score(press.press, scores)
    keys, values = c["keys"].clone(), c["values"].clone()
    k2, v2 = press.compress(c["module"], c["hidden_states"], keys, values, None,
                            {"position_embeddings": c["position_embeddings"]})
    assert torch.equal(keys, c["keys"]) and torch.equal(values, c["values"]), "the inputs were changed in place"
    b, h, n, d = keys.shape
    n_kept = k2.shape[2]
    kept = torch.empty(b, h, n_kept, dtype=torch.int64)
    values_out = torch.empty(b, h, n_kept, d)
    merged = 0
    for bi in range(b):
        for hi in range(h):
            eq = (k2[bi, hi][:, None, :] == keys[bi, hi][None, :, :]).all(-1)  # keys are not merged
            assert torch.all(eq.sum(-1) == 1)
            idx = eq.to(torch.int64).argmax(-1)
            order = idx.argsort()
            kept[bi, hi] = idx[order]
            values_out[bi, hi] = v2[bi, hi][order]
            merged += int((values_out[bi, hi] != values[bi, hi, kept[bi, hi]]).any(-1).sum())
    return {
        "name": name,
        "press": "MergingPress",
        "params": wrapper_params(press),
        "presses": [{"press": type(press.press).__name__, "params": G.press_params(press.press), "uses": uses,
                     **window_queries_spec(uses, scenario)}],
        "n_kept": int(n_kept),
        "merged_entries": merged,  # kept entries whose value changed
        "kept": td.write(f"mw_{name}_kept", kept, "int32"),  # [b, h, n_kept], ascending
        "values_out": td.write(f"mw_{name}_values_out", values_out),  # [b, h, n_kept, d], in the order of kept
        "inner_scores": td.write(f"mw_{name}_inner_scores", scores[0].to(torch.float32)),
    }


# --------------------------------------------------------------------------------------------------------------------
# DuoAttentionPress. Pattern cases: kvpress's pattern loader (a download) returns the case's (sink, recent, scores),
# random float32 scores in [0, 1]. On-the-fly: kvpress's own duo_attention_on_the_fly with its tokenizer and BookSum
# replaced by 60 local random-id "chapters"; the per-sample mean queries and keys it computes are recorded.
# (name, head_compression_ratio, sink, recent) or (name, head_compression_ratio, None, None) for on-the-fly.
# --------------------------------------------------------------------------------------------------------------------

DUO_CASES = [
    ("duo_pattern_h05_s4_r16", 0.5, 4, 16),
    ("duo_pattern_h0625_s8_r8", 0.625, 8, 8),  # round(4 · 0.625) = round(2.5) = 2: Python rounds ties to even
    ("duo_pattern_h025_s0_r32", 0.25, 0, 32),
    ("duo_on_the_fly_h05", 0.5, None, None),
]
DUO_CHAPTERS = 60


class LocalChapters:
    """Stands in for datasets' BookSum split and the model's tokenizer: chapter i is a fixed random id sequence."""

    def __init__(self, vocab: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.ids = {}
        for i in range(DUO_CHAPTERS):
            n = int(torch.randint(40, 121, (1,), generator=g))
            self.ids[f"chapter {i}"] = torch.randint(0, vocab, (1, n), generator=g)

    def load_dataset(self, name, split):
        assert name == "kmfoda/booksum" and split == "train"
        frame = pd.DataFrame({"chapter": list(self.ids)})
        return types.SimpleNamespace(to_pandas=lambda: frame)

    def from_pretrained(self, name):
        return lambda text, return_tensors: transformers.BatchEncoding({"input_ids": self.ids[text]})


@torch.no_grad()
def duo_sample_means(model, chapters: LocalChapters, num_samples: int = 50):
    """Per sample (kvpress's order) and layer: the mean pre-RoPE query [H, d] and key [h, d] (after q_norm/k_norm),
    computed as duo_attention_on_the_fly computes them."""
    texts = pd.DataFrame({"chapter": list(chapters.ids)}).sample(num_samples, random_state=42)["chapter"].tolist()
    qs, ks = [], []
    for text in texts:
        hidden = list(model(input_ids=chapters.ids[text], output_hidden_states=True).hidden_states[:-1])
        ql, kl = [], []
        for li, h in enumerate(hidden):
            layer = model.model.layers[li]
            attn = layer.self_attn
            d = attn.head_dim
            h = layer.input_layernorm(h)
            q = attn.q_proj(h).view(1, h.shape[1], -1, d)
            k = attn.k_proj(h).view(1, h.shape[1], -1, d)
            if hasattr(attn, "q_norm"):
                q, k = attn.q_norm(q), attn.k_norm(k)
            ql.append(q.mean(dim=1)[0])
            kl.append(k.mean(dim=1)[0])
        qs.append(torch.stack(ql))
        ks.append(torch.stack(kl))
    return torch.stack(qs), torch.stack(ks)  # [samples, layers, H, d], [samples, layers, h, d]


@torch.no_grad()
def run_duo(model, c: dict, name: str, hcr: float, sink, recent, seed: int, td) -> dict:
    module = c["module"]
    cfg = model.config
    entry = {"name": name, "press": "DuoAttentionPress"}
    duo_module.cache.clear()  # kvpress caches patterns and estimates by model name, which every scenario shares
    if sink is None:
        chapters = LocalChapters(cfg.vocab_size, seed)
        saved = duo_module.AutoTokenizer, duo_module.load_dataset
        duo_module.AutoTokenizer, duo_module.load_dataset = chapters, chapters.load_dataset
        try:
            press = DuoAttentionPress(head_compression_ratio=hcr, on_the_fly_scoring=True)
            press.post_init_from_model(model)
            scores = duo_module.duo_attention_on_the_fly(model)  # the cached estimate the press used
        finally:
            duo_module.AutoTokenizer, duo_module.load_dataset = saved
        mq, mk = duo_sample_means(model, chapters)
        entry["mean_queries"] = td.write(f"mw_{name}_mean_queries", mq)
        entry["mean_keys"] = td.write(f"mw_{name}_mean_keys", mk)
        entry["q_len"] = 500
    else:
        g = torch.Generator().manual_seed(seed)
        scores = torch.rand(cfg.num_hidden_layers, cfg.num_key_value_heads, generator=g).numpy().astype(np.float64)
        saved = DuoAttentionPress.__dict__["load_attention_pattern"]
        DuoAttentionPress.load_attention_pattern = staticmethod(lambda model: (sink, recent, scores))
        try:
            press = DuoAttentionPress(head_compression_ratio=hcr)
            press.post_init_from_model(model)
        finally:
            DuoAttentionPress.load_attention_pattern = saved
    if hasattr(module, "masked_key_indices"):
        del module.masked_key_indices
    saved_impl = module.config._attn_implementation
    module.config._attn_implementation = "sdpa"
    try:
        press.compress(module, c["hidden_states"], c["keys"], c["values"], None, {})
    finally:
        module.config._attn_implementation = saved_impl
    b, h, n, _ = c["keys"].shape
    kept = torch.ones(b, h, n, dtype=torch.int32)
    masked = getattr(module, "masked_key_indices", None)
    if masked is not None:
        kept[masked] = 0
        del module.masked_key_indices
    entry.update(
        params={"head_compression_ratio": hcr, "on_the_fly_scoring": press.on_the_fly_scoring,
                "sink_size": press.sink_size, "recent_size": press.recent_size},
        head_scores=td.write(f"mw_{name}_head_scores", torch.from_numpy(np.asarray(scores, dtype=np.float32))),
        streaming_mask=td.write(f"mw_{name}_streaming_mask", press.streaming_mask.to(torch.int32), "int32"),
        compression_ratio=press.compression_ratio,
        kept_mask=td.write(f"mw_{name}_kept_mask", kept, "int32"),  # [b, h, n], 1 = kept (not masked)
    )
    return entry


# --------------------------------------------------------------------------------------------------------------------


def read_int(sdir: Path, spec: dict) -> np.ndarray:
    return np.fromfile(sdir / spec["file"], dtype="<i4").reshape(spec["shape"])


def generate_scenario(golden: Path, spec, scenario_index: int, log) -> None:
    name, family, head_dim, seq_len, batch, seed = spec
    model = G.build_model(family, head_dim, seed)
    g = torch.Generator().manual_seed(seed + 1000)
    input_ids = torch.randint(0, model.config.vocab_size, (batch, seq_len), generator=g)
    sdir = golden / "more_presses" / name
    scenario = G.json.load(open(sdir / "scenario.json"))
    c = layer_inputs(model, input_ids, scenario["layer_idx"])
    for key in ("keys", "values"):
        spec_ = scenario["tensors"][key]
        committed = np.fromfile(sdir / spec_["file"], dtype="<f4").reshape(spec_["shape"])
        assert np.array_equal(committed, c[key].numpy()), f"{name}: {key} differ from the committed scenario"
    for stale in list(sdir.glob("mw_*.bin")) + list(sdir.glob("mw_*.npy")) + [sdir / "more_wrappers.json"]:
        stale.unlink(missing_ok=True)
    td = G.TensorDir(sdir)
    entries = []
    for ci, (cname, factory, params, uses) in enumerate(EG_CASES):
        ratio = G.RATIOS[(ci + scenario_index) % len(G.RATIOS)]
        torch.manual_seed(seed + 7000 + ci)
        e = run_entropy_gated(c, cname, factory, params, uses, ratio, td, scenario)
        entries.append(e)
        log(f"  {name:20s} {cname:28s} r={ratio} n_kept={e['n_kept']}")
    num_layers = model.config.num_hidden_layers
    curve = budget_curve(num_layers, model.config.num_key_value_heads, seed + 8000)
    tensors = {"budget_curve": td.write("mw_lukv_budget_curve", torch.from_numpy(curve))}  # float32 of the float64 curve
    np.save(sdir / "mw_lukv_budget_curve.npy", curve)  # the same curve as a .npy file (float64), as LU-KV ships them
    for ci, (cname, factory, params, uses) in enumerate(LUKV_CASES):
        ratio = G.RATIOS[(ci + scenario_index) % len(G.RATIOS)]
        e = run_lukv(c, cname, factory, params, uses, ratio, curve, td, scenario)
        entries.append(e)
        log(f"  {name:20s} {cname:28s} r={ratio}")
    for ci, (cname, hcr, sink, recent) in enumerate(DUO_CASES):
        e = run_duo(model, c, cname, hcr, sink, recent, seed + 9000 + ci, td)
        entries.append(e)
        log(f"  {name:20s} {cname:28s} streaming={np.asarray(read_int(sdir, e['streaming_mask'])).tolist()}")
    for ci, (cname, factory, params, uses) in enumerate(MERGING_CASES):
        ratio = G.RATIOS[(ci + scenario_index) % len(G.RATIOS)]
        e = run_merging(c, cname, factory, params, uses, ratio, td, scenario)
        entries.append(e)
        log(f"  {name:20s} {cname:28s} r={ratio} n_kept={e['n_kept']} merged={e['merged_entries']}")
    G.write_json(
        sdir / "more_wrappers.json",
        {"format": G.FORMAT, "generator": GENERATOR, **G.versions(), "scenario": "scenario.json", "tensors": tensors,
         "wrappers": entries},
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="the golden directory (tests/golden)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    transformers.logging.set_verbosity_error()
    log = (lambda s: None) if args.quiet else (lambda s: print(s, flush=True))
    for si, spec in enumerate(G.MORE_SCENARIOS):
        generate_scenario(Path(args.out), spec, si, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
