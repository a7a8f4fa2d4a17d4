#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Golden-fixture generator for kvcompress.

Runs NVIDIA's kvpress (the reference implementation) on small random-weight Llama and Qwen3 models and records,
for one attention layer, exactly what every press saw (keys, values, queries, attention, ...) and what it produced
(scores and the kept index sets). Also records Hugging Face transformers' own rotary-embedding outputs for the RoPE
variants the C++ side implements. See tools/golden/README.md for the format.

Everything runs on CPU in float32 with fixed seeds and a single thread, so re-running it with the pinned versions
reproduces the committed files bit for bit (up to CPU math-library differences).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the hub: every artefact is built locally

import argparse
import contextlib
import dataclasses
import io
import logging
import math
import json
import shutil
import sys
import tempfile
import types
import typing
from pathlib import Path

import numpy as np
import torch
import transformers
from torch.nn import functional as F

import kvpress
from kvpress import (
    AdaKVPress,
    BlockPress,
    CapPress,
    CompactorPress,
    CURPress,
    ChunkKVPress,
    ChunkPress,
    ComposedPress,
    CriticalAdaKVPress,
    CriticalKVPress,
    ExpectedAttentionPress,
    ExpectedAttentionStatsPress,
    FinchPress,
    KeyDiffPress,
    KeyRerotationPress,
    KnormPress,
    LagKVPress,
    LeverageScorePress,
    NonCausalAttnPress,
    ObservedAttentionPress,
    PerLayerCompressionPress,
    PyramidKVPress,
    QFilterPress,
    SimLayerKVPress,
    SnapKVPress,
    StreamingLLMPress,
    TOVAPress,
)
from kvpress.presses.expected_attention_with_stats import ExpectedAttentionStats
from kvpress.utils import get_prerope_query_states
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, rotate_half

KVPRESS_VERSION = "0.5.5"
FORMAT = 1
GENERATOR = "tools/golden/generate.py"
RATIOS = (0.1, 0.5, 0.9)
WINDOW = 8  # SnapKV / PyramidKV observation window used by the fixtures

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
QWEN3_ROPE = {"rope_type": "default", "rope_theta": 1000000.0}

# (name, model family, head_dim, seq_len, batch, layers to write as scenarios, seed)
SCENARIOS = [
    ("llama_d64_n67", "llama", 64, 67, 1, (1, 0), 101),
    ("llama_d128_n203", "llama", 128, 203, 1, (1,), 102),
    ("llama_d64_n131_b2", "llama", 64, 131, 2, (1,), 103),
    ("qwen3_d128_n67", "qwen3", 128, 67, 1, (1,), 201),
    ("qwen3_d64_n203", "qwen3", 64, 203, 1, (1,), 202),
    ("qwen3_d128_n131", "qwen3", 128, 131, 1, (1,), 203),
]


# ----------------------------------------------------------------------------------------------------------------------
# Output helpers
# ----------------------------------------------------------------------------------------------------------------------


class TensorDir:
    """Writes raw little-endian C-order tensors into one directory and returns their JSON specs."""

    def __init__(self, path: Path):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.written: dict[str, dict] = {}

    def write(self, name: str, t: torch.Tensor, dtype: str = "float32") -> dict:
        fname = f"{name}.bin"
        assert fname not in self.written, fname
        if dtype == "float32":
            arr = t.detach().cpu().to(torch.float32).contiguous().numpy().astype("<f4", copy=False)
        elif dtype == "int32":
            arr = t.detach().cpu().to(torch.int64).contiguous().numpy()
            assert arr.min(initial=0) >= -(2**31) and arr.max(initial=0) < 2**31
            arr = arr.astype("<i4")
        else:
            raise ValueError(dtype)
        if dtype == "float32":
            assert np.all(np.isfinite(arr)), f"non-finite values in {name}"
        arr.tofile(self.path / fname)
        spec = {"file": fname, "dtype": dtype, "shape": [int(s) for s in arr.shape]}
        self.written[fname] = spec
        return spec


def write_json(path: Path, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")


def versions() -> dict:
    return {"kvpress": kvpress_version(), "torch": torch.__version__, "transformers": transformers.__version__}


def kvpress_version() -> str:
    try:
        from importlib.metadata import version

        return version("kvpress")
    except Exception:  # pragma: no cover
        return KVPRESS_VERSION


def jsonable(v):
    if isinstance(v, (bool, int, str)) or v is None:
        return v
    if isinstance(v, float):
        return v
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return v.item()
    raise TypeError(f"cannot serialise {type(v)}")


# ----------------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------------


def build_model(family: str, head_dim: int, seed: int, attn_implementation: str = "eager"):
    common = dict(
        vocab_size=256,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=head_dim,
        max_position_embeddings=512,
        # std 0.1 on a 256-wide hidden state gives pre-softmax logits with a standard deviation of about 2.5:
        # attention is far from uniform but does not underflow, so scores are well separated.
        initializer_range=0.1,
        attn_implementation=attn_implementation,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    if family == "llama":
        config = LlamaConfig(rope_parameters=dict(LLAMA3_ROPE), **common)
        model = LlamaForCausalLM(config)
    elif family == "qwen3":
        config = Qwen3Config(rope_parameters=dict(QWEN3_ROPE), **common)
        model = Qwen3ForCausalLM(config)
        # q_norm/k_norm weights are initialised to ones; make them non-trivial (and larger than 1 so that
        # Qwen3's unit-RMS queries/keys still give peaked attention).
        g = torch.Generator().manual_seed(seed + 7)
        with torch.no_grad():
            for layer in model.model.layers:
                for norm in (layer.self_attn.q_norm, layer.self_attn.k_norm):
                    norm.weight.copy_(1.6 + 0.5 * torch.randn(norm.weight.shape, generator=g))
    else:
        raise ValueError(family)
    model = model.to(torch.float32).eval()
    assert model.config._attn_implementation == attn_implementation
    return model


def model_rope_json(model, tdir: TensorDir) -> dict:
    rot = model.model.rotary_emb
    rope = {k: jsonable(v) for k, v in model.config.rope_parameters.items()}
    rope["max_position_embeddings"] = int(model.config.max_position_embeddings)
    rope["attention_scaling"] = float(rot.attention_scaling)
    rope["inv_freq_file"] = "inv_freq.bin"
    tdir.write("inv_freq", rot.inv_freq.to(torch.float32))
    return rope


# ----------------------------------------------------------------------------------------------------------------------
# Hub artefacts replaced by local tensors
# ----------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def compute_query_stats(model, seed: int, n_sink: int = 4, n_samples: int = 2, sample_len: int = 150):
    """Query statistics computed the way expected_attention_with_stats.collect_queries does it (pre-RoPE queries
    after q_norm, the first n_sink tokens of each sample dropped, samples concatenated, unbiased covariance), on
    random prompts instead of BookSum."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    per_layer: dict[int, list[torch.Tensor]] = {i: [] for i in range(cfg.num_hidden_layers)}
    hooks = []

    def hook(module, args, kwargs, output):
        q = get_prerope_query_states(module, kwargs["hidden_states"])  # [1,H,n,d]
        per_layer[module.layer_idx].append(q[0, :, n_sink:])

    for layer in model.model.layers:
        hooks.append(layer.self_attn.register_forward_hook(hook, with_kwargs=True))
    try:
        for _ in range(n_samples):
            ids = torch.randint(0, cfg.vocab_size, (1, sample_len), generator=g)
            model(ids)
    finally:
        for h in hooks:
            h.remove()
    means, covs = [], []
    for i in range(cfg.num_hidden_layers):
        q = torch.cat(per_layer[i], dim=1)  # [H, N, d]
        mu = q.mean(dim=1)
        c = q - mu.unsqueeze(1)
        cov = c.transpose(-2, -1) @ c / (q.shape[1] - 1)
        means.append(mu)
        covs.append(cov)
    return torch.stack(means), torch.stack(covs)  # [L,H,d], [L,H,d,d]


@contextlib.contextmanager
def local_q_filters(q_filters: torch.Tensor):
    """QFilterPress.post_init_from_model downloads nthngdy/<model>_qfilt; hand it a local tensor instead."""
    original = QFilterPress.__dict__["load_q_filters"]
    QFilterPress.load_q_filters = staticmethod(lambda model_name: q_filters)
    try:
        yield
    finally:
        QFilterPress.load_q_filters = original


# ----------------------------------------------------------------------------------------------------------------------
# Press cases
# ----------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Case:
    name: str
    cls: type
    params: dict  # constructor parameters except compression_ratio
    uses: list
    no_attention: bool = False  # hand attentions=None to the press (window-query path)
    ratio: float | None = None  # fixed compression ratio; None = cycle through RATIOS


CASES = [
    Case("expected_attention_default", ExpectedAttentionPress, {}, ["queries", "keys", "values", "inv_freq"]),
    Case(
        "expected_attention_nocov_novnorm",
        ExpectedAttentionPress,
        dict(use_covariance=False, use_vnorm=False, epsilon=0.01, n_future_positions=64),
        ["queries", "keys", "values", "inv_freq"],
    ),
    Case(
        "expected_attention_eps",
        ExpectedAttentionPress,
        dict(epsilon=0.01, n_sink=2, n_future_positions=100),
        ["queries", "keys", "values", "inv_freq"],
    ),
    Case(
        "expected_attention_stats",
        ExpectedAttentionStatsPress,
        {},
        ["query_mean", "query_cov", "keys", "values", "inv_freq"],
    ),
    Case("knorm", KnormPress, {}, ["keys"]),
    Case("streaming_llm", StreamingLLMPress, dict(n_sink=4), ["keys"]),
    Case(
        "snapkv_window",
        SnapKVPress,
        dict(window_size=WINDOW, kernel_size=5),
        ["window_queries", "keys"],
        no_attention=True,
    ),
    Case("snapkv_attention", SnapKVPress, dict(window_size=WINDOW, kernel_size=5), ["attention", "keys"]),
    Case("tova_window", TOVAPress, {}, ["window_queries_1", "keys"], no_attention=True),
    Case("tova_attention", TOVAPress, {}, ["attention", "keys"]),
    Case("observed_attention", ObservedAttentionPress, {}, ["attention", "keys"]),
    Case("keydiff", KeyDiffPress, {}, ["keys"]),
    Case("lagkv", LagKVPress, dict(n_sink=4, lag_size=16), ["keys", "values"]),
    Case("lagkv_short", LagKVPress, dict(n_sink=4, lag_size=128), ["keys", "values"]),
    Case("qfilter", QFilterPress, {}, ["q_filters", "keys"]),
    Case(
        "pyramidkv_window",
        PyramidKVPress,
        dict(window_size=WINDOW, kernel_size=5, beta=20),
        ["window_queries", "keys"],
        no_attention=True,
    ),
    Case(
        "pyramidkv_attention",
        PyramidKVPress,
        dict(window_size=WINDOW, kernel_size=5, beta=20),
        ["attention", "keys"],
    ),
    # r = 0.9 always takes PyramidKV's fallback budget max(1, round(n(1-r))) (Python's round, not int());
    # at n = 67 that is 7 where ScorerPress would keep int(6.7) = 6.
    Case(
        "pyramidkv_fallback",
        PyramidKVPress,
        dict(window_size=WINDOW, kernel_size=5, beta=20),
        ["attention", "keys"],
        ratio=0.9,
    ),
]


def press_params(press) -> dict:
    out = {}
    for f in dataclasses.fields(press):
        if not f.init or f.name.startswith("_"):  # CompactorPress's child presses are built from its own fields
            continue
        v = getattr(press, f.name)
        if f.name == "stats_folder":
            v = None  # a temporary folder holding query_mean/query_cov; see "uses"
        out[f.name] = jsonable(v)
    return out


def run_press(model, input_ids, press, capture_layers, no_attention: bool):
    """Prefill input_ids with `press` active through kvpress's own hooks; capture score/compress I/O per layer."""
    cap: dict[int, dict] = {i: {} for i in capture_layers}
    orig_score = press.score
    orig_compress = press.compress

    def score(module, hidden_states, keys, values, attentions, kwargs):
        s = orig_score(module, hidden_states, keys, values, attentions, kwargs)
        if module.layer_idx in cap:
            assert "scores" not in cap[module.layer_idx], "score called twice"
            cap[module.layer_idx]["scores"] = s.detach().clone()
            cap[module.layer_idx]["score_saw_attention"] = attentions is not None
        return s

    def compress(module, hidden_states, keys, values, attentions, kwargs):
        if no_attention:
            attentions = None
        c = cap.get(module.layer_idx)
        if c is not None:
            c["hidden_states"] = hidden_states.detach().clone()
            c["keys"] = keys.detach().clone()
            c["values"] = values.detach().clone()
            c["attentions"] = None if attentions is None else attentions.detach().clone()
            c["position_embeddings"] = tuple(t.detach().clone() for t in kwargs["position_embeddings"])
            c["module"] = module
        k2, v2 = orig_compress(module, hidden_states, keys, values, attentions, kwargs)
        if c is not None:
            c["keys_out"] = k2.detach().clone()
            c["values_out"] = v2.detach().clone()
        return k2, v2

    # Instance attributes shadow the class methods; BasePress.forward_hook calls self.compress, and
    # ScorerPress/PyramidKVPress.compress call self.score.
    press.score = score
    press.compress = compress
    try:
        with torch.no_grad(), press(model):
            out = model(input_ids, use_cache=True)
    finally:
        del press.score
        del press.compress
    cache = out.past_key_values
    for i, c in cap.items():
        assert "scores" in c and "keys_out" in c, f"layer {i} was not compressed"
        assert torch.equal(cache.layers[i].keys, c["keys_out"])
    return cap


def recover_kept(keys, values, keys_out, values_out) -> torch.Tensor:
    """Indices (ascending) of the rows of keys that kvpress kept, by exact row matching."""
    b, h, n, d = keys.shape
    k = keys_out.shape[2]
    kept = torch.empty(b, h, k, dtype=torch.int64)
    for bi in range(b):
        for hi in range(h):
            eq = (keys_out[bi, hi][:, None, :] == keys[bi, hi][None, :, :]).all(-1)  # [k, n]
            assert torch.all(eq.sum(-1) == 1), "compressed key does not match exactly one original key"
            idx = eq.to(torch.int64).argmax(-1)
            assert torch.equal(values_out[bi, hi], values[bi, hi, idx]), "values do not follow keys"
            assert idx.unique().numel() == k
            kept[bi, hi] = idx.sort().values
    return kept


def boundary_gap(scores: torch.Tensor, k: int):
    """min over (batch, head) of score[k-th largest] - score[(k+1)-th largest]; 0 on a tie, None if nothing dropped."""
    n = scores.shape[-1]
    if k >= n:
        return None
    srt = scores.sort(dim=-1, descending=True).values
    return float((srt[..., k - 1] - srt[..., k]).min())


def check_topk(scores: torch.Tensor, kept: torch.Tensor) -> bool:
    """Tie-aware check that `kept` is a top-k set of `scores`. Returns True if the boundary is tied."""
    b, h, n = scores.shape
    k = kept.shape[-1]
    tied_any = False
    for bi in range(b):
        for hi in range(h):
            s = scores[bi, hi]
            srt = s.sort(descending=True).values
            thr = srt[k - 1]
            tied = k < n and bool(srt[k] == thr)
            tied_any |= tied
            sel = torch.zeros(n, dtype=torch.bool)
            sel[kept[bi, hi]] = True
            assert torch.all(s[sel] >= thr), "kept entry below the k-th score"
            assert torch.all(s[~sel] <= thr), "dropped entry above the k-th score"
            if not tied:
                assert torch.equal(sel, s >= thr) if k < n else True
    return tied_any


# ----------------------------------------------------------------------------------------------------------------------
# Scenarios
# ----------------------------------------------------------------------------------------------------------------------


def window_queries(module, hidden_states, position_embeddings, w):
    """Post-RoPE queries of the last w tokens, exactly as SnapKVPress.compute_window_attention builds them."""
    q = get_prerope_query_states(module, hidden_states[:, -w:])
    cos, sin = position_embeddings
    cos, sin = cos[:, -w:], sin[:, -w:]
    return (q * cos.unsqueeze(1)) + (rotate_half(q) * sin.unsqueeze(1))


def generate_scenario(out_dir: Path, spec, scenario_index: int, log) -> list[str]:
    name, family, head_dim, seq_len, batch, layers, seed = spec
    model = build_model(family, head_dim, seed)
    cfg = model.config
    L = cfg.num_hidden_layers
    g = torch.Generator().manual_seed(seed + 1000)
    input_ids = torch.randint(0, cfg.vocab_size, (batch, seq_len), generator=g)

    # Local replacements for hub artefacts
    query_mean, query_cov = compute_query_stats(model, seed + 2000)
    g_qf = torch.Generator().manual_seed(seed + 3000)
    q_filters = torch.randn(L, cfg.num_key_value_heads, head_dim, generator=g_qf)
    stats_dir = Path(tempfile.mkdtemp(prefix="kvc_golden_stats_"))
    stats = ExpectedAttentionStats(
        num_layers=L,
        num_heads=cfg.num_attention_heads,
        head_dim=head_dim,
        dataset_name="random-token-prompts",
        model_name=f"kvcompress-golden/{name}",
        num_samples=2,
        sample_seq_len=150,
        n_sink=4,
    )
    stats.query_mean.data = query_mean.clone()
    stats.query_cov.data = query_cov.clone()
    stats.save_pretrained(str(stats_dir))

    dirs = {}
    for li in layers:
        sname = name if li == 1 else f"{name}_layer{li}"
        d = out_dir / sname
        if d.exists():
            shutil.rmtree(d)
        dirs[li] = TensorDir(d)

    reference: dict[int, dict] = {}
    entries: dict[int, list] = {li: [] for li in layers}
    try:
        for ci, case in enumerate(CASES):
            ratio = case.ratio if case.ratio is not None else RATIOS[(ci + scenario_index) % len(RATIOS)]
            kwargs = dict(case.params)
            if case.cls is ExpectedAttentionStatsPress:
                kwargs["stats_folder"] = str(stats_dir)
            press = case.cls(compression_ratio=ratio, **kwargs)
            with contextlib.ExitStack() as stack:
                if case.cls is QFilterPress:
                    stack.enter_context(local_q_filters(q_filters))
                if case.cls is ExpectedAttentionStatsPress:  # hub_mixin prints "Loading weights from local directory"
                    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
                cap = run_press(model, input_ids, press, layers, case.no_attention)
            for li in layers:
                c = cap[li]
                if li not in reference:
                    assert c["attentions"] is not None, "first case must run with attentions"
                    reference[li] = c
                ref = reference[li]
                for key in ("hidden_states", "keys", "values"):
                    assert torch.equal(c[key], ref[key]), f"{case.name}: {key} differs between presses"
                if case.no_attention:
                    assert c["attentions"] is None and not c["score_saw_attention"]
                elif case.cls in (SnapKVPress, TOVAPress, ObservedAttentionPress, PyramidKVPress):
                    assert c["score_saw_attention"] and torch.equal(c["attentions"], ref["attentions"])
                kept = recover_kept(c["keys"], c["values"], c["keys_out"], c["values_out"])
                scores = c["scores"].to(torch.float32)
                assert scores.shape == c["keys"].shape[:3], (case.name, scores.shape)
                tied = check_topk(scores, kept)
                td = dirs[li]
                entry = {
                    "name": case.name,
                    "press": case.cls.__name__,
                    "params": press_params(press),
                    "uses": list(case.uses),
                    "attention_path": ("window_queries" if case.no_attention else "attention")
                    if case.cls in (SnapKVPress, TOVAPress, PyramidKVPress)
                    else None,
                    "n_kept": int(kept.shape[-1]),
                    "boundary_tie": bool(tied),
                    "boundary_gap": boundary_gap(scores, int(kept.shape[-1])),
                    "scores": td.write(f"{case.name}_scores", scores),
                    "kept": td.write(f"{case.name}_kept", kept, "int32"),
                }
                if entry["attention_path"] is None:
                    del entry["attention_path"]
                entries[li].append(entry)
                log(f"  {td.path.name:26s} {case.name:34s} r={ratio} n_kept={entry['n_kept']}" + (" (tie)" if tied else ""))
    finally:
        shutil.rmtree(stats_dir, ignore_errors=True)

    written = []
    for li in layers:
        ref = reference[li]
        td = dirs[li]
        module = ref["module"]
        hs = ref["hidden_states"]
        pe = ref["position_embeddings"]
        rope = model_rope_json(model, td)
        tensors = {
            "keys": td.write("keys", ref["keys"]),
            "values": td.write("values", ref["values"]),
            "queries": td.write("queries", get_prerope_query_states(module, hs)),
            "window_queries": td.write("window_queries", window_queries(module, hs, pe, WINDOW)),
            "window_queries_1": td.write("window_queries_1", window_queries(module, hs, pe, 1)),
            "attention": td.write("attention", ref["attentions"]),
            "inv_freq": td.written["inv_freq.bin"],
            "query_mean": td.write("query_mean", query_mean[li]),
            "query_cov": td.write("query_cov", query_cov[li]),
            "q_filters": td.write("q_filters", q_filters[li]),
        }
        scenario = {
            "format": FORMAT,
            "generator": GENERATOR,
            **versions(),
            "model": family,
            "layer_idx": li,
            "num_layers": L,
            "batch": batch,
            "q_heads": cfg.num_attention_heads,
            "kv_heads": cfg.num_key_value_heads,
            "head_dim": head_dim,
            "seq_len": seq_len,
            "rope": rope,
            "tensors": tensors,
            "presses": entries[li],
        }
        write_json(td.path / "scenario.json", scenario)
        written.append(td.path.name)
    if name in WRAPPER_SCENARIOS:
        generate_wrappers(model, input_ids, reference, dirs, scenario_index, log)
    return written


# ----------------------------------------------------------------------------------------------------------------------
# Wrapper presses
# ----------------------------------------------------------------------------------------------------------------------

# Scenarios that also get a wrappers.json (every layer they write): both model families, head_dim 64 and 128,
# n = 67, 131 and 203, batch 1 and 2, and layer 0 as well as layer 1.
WRAPPER_SCENARIOS = ("llama_d64_n67", "llama_d64_n131_b2", "qwen3_d128_n131", "qwen3_d64_n203")


@dataclasses.dataclass
class WrapperCase:
    name: str
    build: typing.Callable  # compression ratio -> press
    no_attention: bool = False  # the wrapper's compress gets attentions=None (kvpress's sdpa/flash-attention path)
    masks: bool = False  # kvpress masks (module.masked_key_indices) instead of pruning
    rerotates: bool = False  # keys change (KeyRerotation): the kept indices are recorded, not matched
    batch1_only: bool = False
    record: tuple = ()  # extra outputs: "inner_scores" (the inner press's score), "scores" (the wrapper's), "value_norms"


def snapkv(r):
    return SnapKVPress(compression_ratio=r, window_size=WINDOW, kernel_size=5)


WRAPPER_CASES = [
    WrapperCase(
        "adakv_expected_attention",
        lambda r: AdaKVPress(ExpectedAttentionPress(compression_ratio=r, epsilon=1e-2)),
        masks=True,
        record=("inner_scores",),
    ),
    WrapperCase(
        "adakv_snapkv",
        lambda r: AdaKVPress(snapkv(r), alpha_safeguard=0.9),  # a floor that binds
        no_attention=True,
        masks=True,
        record=("inner_scores",),
    ),
    WrapperCase(
        "criticalkv_knorm",
        lambda r: CriticalKVPress(KnormPress(compression_ratio=r)),
        record=("inner_scores", "scores", "value_norms"),
    ),
    # kvpress sums CriticalAdaKV's per-head budgets over the batch (it assumes b = 1): batch 1 only.
    WrapperCase(
        "criticaladakv_expected_attention",
        lambda r: CriticalAdaKVPress(ExpectedAttentionPress(compression_ratio=r, use_vnorm=False)),
        masks=True,
        batch1_only=True,
        record=("inner_scores", "value_norms"),
    ),
    WrapperCase(
        "chunkkv_snapkv", lambda r: ChunkKVPress(snapkv(r)), no_attention=True, record=("inner_scores",)
    ),
    WrapperCase("chunk_knorm", lambda r: ChunkPress(KnormPress(compression_ratio=r), chunk_length=32), no_attention=True),
    WrapperCase("block_keydiff", lambda r: BlockPress(KeyDiffPress(compression_ratio=r), block_size=16), no_attention=True),
    # SnapKV (from the eager attention) on the full cache, then Knorm, which does not depend on the order in which
    # kvpress leaves the entries (descending score).
    WrapperCase("composed_snapkv_knorm", lambda r: ComposedPress([snapkv(r), KnormPress(compression_ratio=0.3)])),
    # Ratio 1.0 evicts layer 0 entirely (kvpress accepts it here).
    WrapperCase(
        "per_layer_expected_attention",
        lambda r: PerLayerCompressionPress(ExpectedAttentionPress(), compression_ratios=[1.0, r]),
    ),
    WrapperCase(
        "key_rerotation_streaming_llm",
        lambda r: KeyRerotationPress(StreamingLLMPress(compression_ratio=r, n_sink=4)),
        rerotates=True,
    ),
    WrapperCase("key_rerotation_snapkv", lambda r: KeyRerotationPress(snapkv(r)), no_attention=True, rerotates=True),
]

WRAPPER_PARAMS = {
    AdaKVPress: ("alpha_safeguard",),
    CriticalKVPress: ("epsilon", "first_stage_ratio"),
    CriticalAdaKVPress: ("alpha_safeguard", "epsilon", "first_stage_ratio"),
    ChunkKVPress: ("chunk_length",),
    ChunkPress: ("chunk_length",),
    BlockPress: ("block_size",),
    ComposedPress: (),
    PerLayerCompressionPress: ("compression_ratios",),
    KeyRerotationPress: (),
}


def inner_presses(press) -> list:
    return list(press.presses) if isinstance(press, ComposedPress) else [press.press]


def inner_uses(press, no_attention: bool) -> list[str]:
    if isinstance(press, ExpectedAttentionPress):
        return ["queries", "keys", "values", "inv_freq"]
    if isinstance(press, SnapKVPress):
        return ["window_queries" if no_attention else "attention", "keys"]
    assert isinstance(press, (KnormPress, KeyDiffPress, StreamingLLMPress)), type(press)
    return ["keys"]


def run_wrapper(model, input_ids, press, case: WrapperCase, layers):
    """Prefill with `press` through kvpress's own hooks; capture, per layer, the cache before and after and what the
    inner press scored."""
    cap: dict[int, dict] = {i: {} for i in layers}

    def before(module, args, kwargs, output):  # registered first, so it runs before kvpress's hook
        c = cap.get(module.layer_idx)
        if c is not None:
            layer = kwargs["past_key_values"].layers[module.layer_idx]
            c["hidden_states"] = kwargs["hidden_states"].detach().clone()
            c["keys"] = layer.keys.detach().clone()
            c["values"] = layer.values.detach().clone()
            c["module"] = module

    def recording(fn, key):
        def score(module, *args):
            s = fn(module, *args)
            c = cap.get(module.layer_idx)
            if c is not None and key not in c:  # the first call (ChunkKV scores once, then gathers)
                c[key] = s.detach().clone()
            return s

        return score

    patched = []
    if "inner_scores" in case.record:
        patched.append((press.press, "score", recording(press.press.score, "inner_scores")))
    if "scores" in case.record:
        patched.append((press, "score", recording(press.score, "scores")))
    if case.rerotates:
        # Layer 0 values repeat for repeated tokens and the keys change, so the kept indices are taken from
        # the call itself rather than matched.
        orig_rerotate = press.rerotate_keys

        def rerotate_keys(module, indices, keys):
            c = cap.get(module.layer_idx)
            if c is not None:
                c["rerotated_indices"] = indices.detach().clone()
            return orig_rerotate(module, indices, keys)

        patched.append((press, "rerotate_keys", rerotate_keys))
    if case.no_attention or case.masks:
        orig_compress = press.compress

        def compress(module, hidden_states, keys, values, attentions, kwargs):
            if case.no_attention:
                attentions = None
            if not case.masks:
                return orig_compress(module, hidden_states, keys, values, attentions, kwargs)
            # AdaKV/CriticalAdaKV assert a non-eager model because their masks act through kvpress's patched
            # attention in *later* passes. The forward already ran eagerly (the hook runs after attention), so
            # the model is presented as sdpa for this call only: the inputs stay those of every other case.
            impl = module.config._attn_implementation
            module.config._attn_implementation = "sdpa"
            try:
                return orig_compress(module, hidden_states, keys, values, attentions, kwargs)
            finally:
                module.config._attn_implementation = impl

        patched.append((press, "compress", compress))

    hooks = [layer.self_attn.register_forward_hook(before, with_kwargs=True) for layer in model.model.layers]
    for layer in model.model.layers:
        layer.self_attn.masked_key_indices = None
    for obj, attr, fn in patched:
        setattr(obj, attr, fn)
    try:
        with torch.no_grad(), press(model):
            out = model(input_ids, use_cache=True)
    finally:
        for obj, attr, _ in patched:
            delattr(obj, attr)
        for h in hooks:
            h.remove()
    for i, c in cap.items():
        c["keys_out"] = out.past_key_values.layers[i].keys.detach().clone()
        c["values_out"] = out.past_key_values.layers[i].values.detach().clone()
        c["masked"] = c["module"].masked_key_indices
        c["module"].masked_key_indices = None
    return cap


def generate_wrappers(model, input_ids, reference: dict, dirs: dict, scenario_index: int, log) -> None:
    """Runs every wrapper case and writes wrappers.json beside the scenario.json of each recorded layer."""
    entries: dict[int, list] = {li: [] for li in dirs}
    for ci, case in enumerate(WRAPPER_CASES):
        if case.batch1_only and input_ids.shape[0] > 1:
            continue
        ratio = RATIOS[(ci + scenario_index) % len(RATIOS)]
        press = case.build(ratio)
        cap = run_wrapper(model, input_ids, press, case, list(dirs))
        for li, td in dirs.items():
            c, ref = cap[li], reference[li]
            for key in ("hidden_states", "keys", "values"):
                assert torch.equal(c[key], ref[key]), f"{case.name}: {key} differs from the scenario's"
            keys, values = ref["keys"], ref["values"]
            b, h, n, _ = keys.shape
            mask = torch.zeros(b, h, n, dtype=torch.int64)
            if case.masks:
                assert torch.equal(c["keys_out"], keys), "a masking press changed the cache"
                bi, hi, si = c["masked"]
                mask[:] = 1
                mask[bi, hi, si] = 0
                assert int((1 - mask).sum()) == bi.numel(), "masked indices repeat"
            else:
                if case.rerotates:
                    kept = c["rerotated_indices"]
                    assert torch.equal(kept, kept.sort(dim=-1).values), "kvpress re-rotates in position order"
                    gathered = values.gather(2, kept.unsqueeze(-1).expand(-1, -1, -1, values.shape[-1]))
                    assert torch.equal(c["values_out"], gathered), "values do not follow the re-rotated keys"
                else:
                    kept = recover_kept(keys, values, c["keys_out"], c["values_out"])
                mask.scatter_(-1, kept, 1)
            entry = {
                "name": case.name,
                "press": type(press).__name__,
                "params": {k: jsonable(getattr(press, k)) for k in WRAPPER_PARAMS[type(press)]},
                "presses": [
                    {"press": type(p).__name__, "params": press_params(p), "uses": inner_uses(p, case.no_attention)}
                    for p in inner_presses(press)
                ],
                "uses": ["o_proj"] if "value_norms" in case.record else [],
                "kept_mask": td.write(f"w_{case.name}_kept_mask", mask, "int32"),
            }
            if isinstance(press, PerLayerCompressionPress):
                entry["presses"][0]["params"]["compression_ratio"] = press.compression_ratios[li]
            for key in ("inner_scores", "scores"):
                if key in case.record:
                    entry[key] = td.write(f"w_{case.name}_{key}", c[key].to(torch.float32))
            if "value_norms" in case.record:
                norms = CriticalKVPress.vwl1norm(values, ref["module"])
                entry["value_norms"] = td.write(f"w_{case.name}_value_norms", norms)
            if case.rerotates:
                entry["keys_out"] = td.write(f"w_{case.name}_keys_out", c["keys_out"])
            entries[li].append(entry)
            counts = mask.sum(-1).flatten().tolist()
            log(f"  {td.path.name:26s} {case.name:34s} r={ratio} kept per head={counts}")
    for li, td in dirs.items():
        module = reference[li]["module"]
        wrappers = {
            "format": FORMAT,
            "generator": GENERATOR,
            **versions(),
            "scenario": "scenario.json",
            "tensors": {"o_proj": td.write("w_o_proj", module.o_proj.weight)},
            "wrappers": entries[li],
        }
        write_json(td.path / "wrappers.json", wrappers)


# ----------------------------------------------------------------------------------------------------------------------
# More presses (tests/golden/more_presses): self-contained scenarios, each with its own inputs
# ----------------------------------------------------------------------------------------------------------------------

# The presses added after the first fixtures were committed. Their scenarios write their own inputs, so regenerating
# them on another machine (whose float kernels may differ in the last bit) leaves the older fixtures untouched.
# (name, model family, head_dim, seq_len, batch, seed)
MORE_SCENARIOS = [
    ("llama_d64_n131_b2", "llama", 64, 131, 2, 401),  # GQA 4:1, llama3 RoPE, batch 2
    ("qwen3_d128_n203", "qwen3", 128, 203, 1, 402),  # q_norm/k_norm, default RoPE
    ("llama_d128_n128", "llama", 128, 128, 1, 403),  # a length that is a multiple of the chunk sizes
]

MORE_CASES = [
    Case("leverage_default", LeverageScorePress, {}, ["keys", "sketch", "inv_freq"]),
    Case("leverage_k16", LeverageScorePress, dict(sketch_dimension=16), ["keys", "sketch", "inv_freq"]),
    Case("non_causal_default", NonCausalAttnPress, {}, ["queries", "keys", "values", "inv_freq"]),
    Case("non_causal_chunk32", NonCausalAttnPress, dict(chunk_size=32), ["queries", "keys", "values", "inv_freq"]),
    Case("compactor_default", CompactorPress, {}, ["queries", "keys", "values", "sketch", "inv_freq"]),
    Case(
        "compactor_blend",
        CompactorPress,
        dict(blending=0.7, chunk_size=32, sketch_dimension=16, sink_size_start=3, sink_size_end=0),
        ["queries", "keys", "values", "sketch", "inv_freq"],
    ),
    Case("cur_default", CURPress, {}, ["keys", "values"]),
    Case("cur_key_global", CURPress, dict(leverage_type="key", use_local_approximation=False, num_sinks=0), ["keys"]),
    Case("cur_kv_avg_w5", CURPress, dict(leverage_type="kv_avg", local_window_size=5, num_sinks=2), ["keys", "values"]),
    Case(
        "cur_value_random",
        CURPress,
        dict(leverage_type="value", use_random_leverage=True),
        ["keys", "values", "projection"],
    ),
    Case("cap_default", CapPress, {}, ["queries", "keys", "values", "inv_freq"]),
    Case("cap_tau2_sink2", CapPress, dict(tau=2.0, n_sink=2, n_future_positions=64), ["queries", "keys", "values", "inv_freq"]),
]


# SimLayerKV decides per layer; the cases aim at both outcomes (the statistic is recorded, so the C++ side checks it
# and the decision, whichever it is).
SIMLAYER_CASES = [
    ("simlayerkv_t02", dict(lazy_threshold=0.2, n_last=2, n_recent=32, n_initial=4)),
    ("simlayerkv_t09", dict(lazy_threshold=0.9, n_last=1, n_recent=16, n_initial=4)),
    ("simlayerkv_t015_w8", dict(lazy_threshold=0.15, n_last=8, n_recent=40, n_initial=2)),
]


@torch.no_grad()
def run_simlayerkv(model, input_ids, li: int, name: str, params: dict, td: TensorDir, ref: dict) -> dict:
    """Prefills with SimLayerKVPress through kvpress's hooks; records the layer's inputs, kvpress's laziness statistic
    (is_lazy's own formula on SnapKVPress.compute_window_attention) and what it kept."""
    press = SimLayerKVPress(**params)
    cap = {}
    orig_compress = press.compress

    def compress(module, hidden_states, keys, values, attentions, kwargs):
        k2, v2 = orig_compress(module, hidden_states, keys, values, attentions, kwargs)
        if module.layer_idx == li:
            cap.update(hidden_states=hidden_states.clone(), keys=keys.clone(), values=values.clone(),
                       pe=tuple(t.clone() for t in kwargs["position_embeddings"]), module=module,
                       keys_out=k2.clone(), values_out=v2.clone())
        return k2, v2

    press.compress = compress
    try:
        with press(model):
            model(input_ids, use_cache=True)
    finally:
        del press.compress
    for key in ("hidden_states", "keys", "values"):
        assert torch.equal(cap[key], ref[key]), f"{name}: {key} differs from the scenario's"
    w = params["n_last"]
    attn = SnapKVPress.compute_window_attention(cap["module"], cap["hidden_states"], cap["keys"], w, cap["pe"])
    attn = attn.mean((0, 1, 2))
    statistic = float(attn[: params["n_initial"]].sum() + attn[-params["n_recent"] :].sum())
    n = cap["keys"].shape[2]
    lazy = cap["keys_out"].shape[2] < n
    assert lazy == (statistic > params["lazy_threshold"])
    kept = recover_kept(cap["keys"], cap["values"], cap["keys_out"], cap["values_out"])
    wq = f"window_queries_{w}"
    if f"{wq}.bin" not in td.written:
        td.write(wq, window_queries(cap["module"], cap["hidden_states"], cap["pe"], w))
    return {
        "name": name,
        "press": "SimLayerKVPress",
        "params": press_params(press),
        "uses": [wq, "keys"],
        "window_queries": td.written[f"{wq}.bin"],
        "statistic": statistic,
        "lazy": lazy,
        "n_kept": int(kept.shape[-1]),
        "kept": td.write(f"{name}_kept", kept, "int32"),
    }


# FinchPress reads its window from a delimiter token in the prompt (batch 1 only): the scenario's prompt with the
# delimiter inserted `window` tokens before its end, which kvpress's embedding hook removes again, so the layer sees
# exactly the scenario's inputs. (name, window, parameters)
FINCH_CASES = [
    ("finch_default", 12, {}),
    ("finch_chunk100", 8, dict(chunk_length=100)),
    ("finch_plain", 16, dict(normalize_scores=False, rerotate_keys=False)),
]


@torch.no_grad()
def run_finch(model, input_ids, li, name, window, params, ratio, td, ref) -> dict:
    n = input_ids.shape[1]
    delimiter = int(min(set(range(model.config.vocab_size)) - set(input_ids[0].tolist())))
    ids = torch.cat([input_ids[:, : n - window], torch.tensor([[delimiter]]), input_ids[:, n - window :]], dim=1)
    press = FinchPress(compression_ratio=ratio, **params)
    press.delimiter_token_id = delimiter
    recorded = {}
    original = KeyRerotationPress.rerotate_keys

    def rerotate_keys(module, indices, keys):
        if module.layer_idx == li:
            recorded["indices"] = indices.clone()
        return original(module, indices, keys)

    KeyRerotationPress.rerotate_keys = staticmethod(rerotate_keys)
    try:
        cap = run_press(model, ids, press, (li,), no_attention=True)
    finally:
        KeyRerotationPress.rerotate_keys = staticmethod(original)
    c = cap[li]
    assert press.window_size == window
    for key in ("hidden_states", "keys", "values"):
        assert torch.equal(c[key], ref[key]), f"{name}: {key} differs from the scenario's"
    if press.rerotate_keys:
        kept = recorded["indices"]
        gathered = c["values"].gather(2, kept.unsqueeze(-1).expand(-1, -1, -1, c["values"].shape[-1]))
        assert torch.equal(c["values_out"], gathered), "values do not follow the re-rotated keys"
    else:
        kept = recover_kept(c["keys"], c["values"], c["keys_out"], c["values_out"])
    scores = c["scores"].to(torch.float32)
    wq = f"window_queries_{window}"
    if f"{wq}.bin" not in td.written:
        td.write(wq, window_queries(c["module"], c["hidden_states"], c["position_embeddings"], window))
    entry = {
        "name": name,
        "press": "FinchPress",
        "params": {**press_params(press), "window_size": window},
        "uses": [wq, "keys", "inv_freq"],
        "window_queries": td.written[f"{wq}.bin"],
        "n_kept": int(kept.shape[-1]),
        "scores": td.write(f"{name}_scores", scores),
        "kept": td.write(f"{name}_kept", kept.sort(dim=-1).values, "int32"),
    }
    if press.rerotate_keys:
        entry["keys_out"] = td.write(f"{name}_keys_out", c["keys_out"])
    return entry


@contextlib.contextmanager
def recording_randn(draws: list):
    """Records every torch.randn result (LeverageScorePress draws its sketch from the global generator)."""
    original = torch.randn

    def randn(*args, **kwargs):
        t = original(*args, **kwargs)
        draws.append(t.detach().clone())
        return t

    torch.randn = randn
    try:
        yield
    finally:
        torch.randn = original


def generate_more_scenario(out_dir: Path, spec, scenario_index: int, log) -> str:
    name, family, head_dim, seq_len, batch, seed = spec
    model = build_model(family, head_dim, seed)
    cfg = model.config
    li = 1
    g = torch.Generator().manual_seed(seed + 1000)
    input_ids = torch.randint(0, cfg.vocab_size, (batch, seq_len), generator=g)
    td = TensorDir(out_dir / name)
    ref = None
    entries = []
    for ci, case in enumerate(MORE_CASES):
        ratio = RATIOS[(ci + scenario_index) % len(RATIOS)]
        press = case.cls(compression_ratio=ratio, **case.params)
        draws: list = []
        torch.manual_seed(seed + 5000 + ci)
        with recording_randn(draws):
            cap = run_press(model, input_ids, press, (li,), no_attention=True)
        c = cap[li]
        if ref is None:
            ref = c
        for key in ("hidden_states", "keys", "values"):
            assert torch.equal(c[key], ref[key]), f"{case.name}: {key} differs between presses"
        kept = recover_kept(c["keys"], c["values"], c["keys_out"], c["values_out"])
        scores = c["scores"].to(torch.float32)
        tied = check_topk(scores, kept)
        entry = {
            "name": case.name,
            "press": case.cls.__name__,
            "params": press_params(press),
            "uses": list(case.uses),
            "n_kept": int(kept.shape[-1]),
            "boundary_tie": bool(tied),
            "boundary_gap": boundary_gap(scores, int(kept.shape[-1])),
            "scores": td.write(f"{case.name}_scores", scores),
            "kept": td.write(f"{case.name}_kept", kept, "int32"),
        }
        if "sketch" in case.uses:
            # One draw per layer, in layer order; kvpress scales it by 1/sqrt(k) in the key dtype.
            assert len(draws) == cfg.num_hidden_layers, len(draws)
            k = press.sketch_dimension
            entry["sketch"] = td.write(f"{case.name}_sketch", draws[li] * (1 / math.sqrt(k)))
        if "projection" in case.uses:  # CURPress: G = randn(d, 20) / sqrt(20), one draw per layer
            assert len(draws) == cfg.num_hidden_layers, len(draws)
            entry["projection"] = td.write(f"{case.name}_projection", draws[li] / math.sqrt(20))
        entries.append(entry)
        log(f"  more/{name:22s} {case.name:26s} r={ratio} n_kept={entry['n_kept']}" + (" (tie)" if tied else ""))
    layer_entries = [run_simlayerkv(model, input_ids, li, n, p, td, ref) for n, p in SIMLAYER_CASES]
    rerotating = []
    if batch == 1:
        for fi, (fname, window, params) in enumerate(FINCH_CASES):
            ratio = RATIOS[(fi + scenario_index) % len(RATIOS)]
            e = run_finch(model, input_ids, li, fname, window, params, ratio, td, ref)
            rerotating.append(e)
            log(f"  more/{name:22s} {fname:26s} r={ratio} n_kept={e['n_kept']}")
    for e in layer_entries:
        log(f"  more/{name:22s} {e['name']:26s} statistic={e['statistic']:.4f} lazy={e['lazy']} n_kept={e['n_kept']}")
    module = ref["module"]
    tensors = {
        "keys": td.write("keys", ref["keys"]),
        "values": td.write("values", ref["values"]),
        "queries": td.write("queries", get_prerope_query_states(module, ref["hidden_states"])),
    }
    rope = model_rope_json(model, td)
    tensors["inv_freq"] = td.written["inv_freq.bin"]
    write_json(
        td.path / "scenario.json",
        {
            "format": FORMAT,
            "generator": GENERATOR,
            **versions(),
            "model": family,
            "layer_idx": li,
            "num_layers": cfg.num_hidden_layers,
            "batch": batch,
            "q_heads": cfg.num_attention_heads,
            "kv_heads": cfg.num_key_value_heads,
            "head_dim": head_dim,
            "seq_len": seq_len,
            "rope": rope,
            "tensors": tensors,
            "presses": entries,
            "layer_presses": layer_entries,
            "finch_presses": rerotating,
        },
    )
    return name


def generate_more_presses(out_dir: Path, log) -> None:
    d = out_dir / "more_presses"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    names = [generate_more_scenario(d, spec, si, log) for si, spec in enumerate(MORE_SCENARIOS)]
    write_json(d / "index.json", {"format": FORMAT, "generator": GENERATOR, **versions(), "scenarios": names})


# ----------------------------------------------------------------------------------------------------------------------
# RoPE fixtures
# ----------------------------------------------------------------------------------------------------------------------

ROPE_VARIANTS = [
    ("default", {"rope_type": "default", "rope_theta": 10000.0}, 512),
    ("linear", {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}, 512),
    ("dynamic", {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}, 64),
    ("llama3", dict(LLAMA3_ROPE), 512),
    (
        "yarn",
        {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64},
        256,
    ),
    (
        "yarn_mscale",
        {
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 4.0,
            "original_max_position_embeddings": 64,
            "mscale": 1.0,
            "mscale_all_dim": 0.5,
        },
        256,
    ),
    (
        "yarn_attention_factor",
        {
            "rope_type": "yarn",
            "rope_theta": 50000.0,
            "factor": 4.0,
            "original_max_position_embeddings": 64,
            "attention_factor": 1.25,
            "beta_fast": 16.0,
            "beta_slow": 2.0,
            "truncate": False,
        },
        256,
    ),
]
ROPE_POSITIONS = list(range(128)) + [199, 1000, 4097]
AVG_ROPE_CASES = [(131, 512), (67, 64)]


def make_rotary(rope_params: dict, max_pos: int, head_dim: int) -> LlamaRotaryEmbedding:
    config = LlamaConfig(
        hidden_size=8 * head_dim,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=head_dim,
        max_position_embeddings=max_pos,
        rope_parameters=dict(rope_params),
    )
    return LlamaRotaryEmbedding(config)


@torch.no_grad()
def generate_rope(out_dir: Path, log) -> None:
    d = out_dir / "rope"
    if d.exists():
        shutil.rmtree(d)
    td = TensorDir(d)
    cases = []
    for vname, params, max_pos in ROPE_VARIANTS:
        for head_dim in (64, 128):
            cname = f"{vname}_d{head_dim}"
            rot = make_rotary(params, max_pos, head_dim)
            base_inv = rot.inv_freq.clone()
            dynamic = "dynamic" in rot.rope_type
            case = {
                "name": cname,
                "rope_type": rot.rope_type,
                "head_dim": head_dim,
                "config": {
                    **{k: jsonable(v) for k, v in rot.config.rope_parameters.items()},
                    "max_position_embeddings": max_pos,
                },
                "inv_freq": td.write(f"{cname}_inv_freq", base_inv),
                "attention_scaling": float(rot.attention_scaling),
                "evaluations": [],
                "avg_rotation": [],
            }
            # Dynamic RoPE is stateful in transformers (inv_freq is recomputed from max(position)+1 and, because of
            # how the cache length is tracked, never reset), so each dynamic evaluation uses a fresh module.
            groups = [ROPE_POSITIONS]
            if dynamic:
                groups = [list(range(50)), list(range(200)), [1000, 4097]]
            for gi, positions in enumerate(groups):
                r = make_rotary(params, max_pos, head_dim) if dynamic else rot
                pos = torch.tensor(positions, dtype=torch.int64).unsqueeze(0)
                cos, sin = r(torch.zeros(1, dtype=torch.float32), pos)
                inv_after = r.inv_freq
                ev = {
                    "positions": positions,
                    "seq_len": max(positions) + 1,
                    "attention_scaling": float(r.attention_scaling),
                    "inv_freq": td.write(f"{cname}_eval{gi}_inv_freq", inv_after)
                    if not torch.equal(inv_after, base_inv)
                    else case["inv_freq"],
                    "cos": td.write(f"{cname}_eval{gi}_cos", cos[0]),
                    "sin": td.write(f"{cname}_eval{gi}_sin", sin[0]),
                }
                case["evaluations"].append(ev)
            for q, T in AVG_ROPE_CASES:
                r = make_rotary(params, max_pos, head_dim) if dynamic else rot
                module = types.SimpleNamespace(head_dim=head_dim, rotary_emb=r)
                press = ExpectedAttentionPress(n_future_positions=T)
                eye = torch.eye(head_dim, dtype=torch.float32).unsqueeze(0)  # rows = basis vectors
                mu_rot, _ = press.apply_avg_rope(module, eye, None, q)  # = eye @ R^T = R^T
                R = mu_rot[0].T.contiguous()
                # R = diag(cos_mean) + diag(sin_mean) P: store the two vectors, and the full matrix for the first case
                half = head_dim // 2
                cos_mean = torch.diagonal(R).clone()
                sin_mean = torch.cat([R[half:, :half].diagonal(), -R[:half, half:].diagonal()])
                P = torch.zeros(head_dim, head_dim)
                P[half:, :half] = torch.eye(half)
                P[:half, half:] = -torch.eye(half)
                assert torch.equal(R, torch.diag(cos_mean) + torch.diag(sin_mean) @ P), "unexpected R structure"
                entry = {
                    "q": q,
                    "n_future_positions": T,
                    "positions": [q, q + T],
                    "inv_freq": td.write(f"{cname}_avg_q{q}_T{T}_inv_freq", r.inv_freq)
                    if not torch.equal(r.inv_freq, base_inv)
                    else case["inv_freq"],
                    "cos_mean": td.write(f"{cname}_avg_q{q}_T{T}_cos_mean", cos_mean),
                    "sin_mean": td.write(f"{cname}_avg_q{q}_T{T}_sin_mean", sin_mean),
                }
                if (q, T) == AVG_ROPE_CASES[0]:
                    entry["R"] = td.write(f"{cname}_avg_q{q}_T{T}_R", R)
                case["avg_rotation"].append(entry)
            cases.append(case)
            log(f"  rope {cname}: attention_scaling={case['attention_scaling']:.6f}")
    write_json(
        d / "rope.json",
        {
            "format": FORMAT,
            "generator": GENERATOR,
            **versions(),
            "convention": "cos/sin[p, i] = attention_scaling * cos/sin(p * inv_freq[i mod d/2]), rotate_half layout; "
            "R = mean over p in [q, q+T) of diag(cos_p) + diag(sin_p) P, P = [[0, -I], [I, 0]] "
            "(ExpectedAttentionPress.apply_avg_rope) = diag(cos_mean) + diag(sin_mean) P",
            "cases": cases,
        },
    )


# Bit-exact inverse frequencies: every variant over head_dims whose d/2 has a SLEEF-vectorised part and a scalar
# tail in PyTorch's CPU pow (see include/kvcompress/rope/torch_float.hpp), and llama3 over original contexts from
# below the prompt length to 128k, so that both branches and the smooth band of the llama3 formula occur.
INV_FREQ_HEAD_DIMS = (64, 80, 96, 128, 256)
INV_FREQ_THETAS = (10000.0, 500000.0, 1000000.0)
LLAMA3_ORIGINAL_CONTEXTS = (64, 1000, 2048, 8192, 32768, 131072)
LLAMA3_FACTORS = ((8.0, 1.0, 4.0), (32.0, 1.0, 4.0), (16.0, 1.5, 5.5))


@torch.no_grad()
def generate_inv_freq(out_dir: Path, log) -> None:
    d = out_dir / "rope_inv_freq"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    configs = []
    for theta in INV_FREQ_THETAS:
        configs.append(({"rope_type": "default", "rope_theta": theta}, 4096))
        configs.append(({"rope_type": "linear", "rope_theta": theta, "factor": 3.3}, 4096))
        configs.append(({"rope_type": "dynamic", "rope_theta": theta, "factor": 2.0}, 4096))
        for orig in (64, 4096, 32768):
            configs.append(({"rope_type": "yarn", "rope_theta": theta, "factor": 4.0,
                             "original_max_position_embeddings": orig}, 4 * orig))
            configs.append(({"rope_type": "yarn", "rope_theta": theta, "factor": 40.0, "original_max_position_embeddings": orig,
                             "beta_fast": 16.0, "beta_slow": 2.0, "truncate": False}, 4 * orig))
        for orig in LLAMA3_ORIGINAL_CONTEXTS:
            for factor, low, high in LLAMA3_FACTORS:
                configs.append(({"rope_type": "llama3", "rope_theta": theta, "factor": factor, "low_freq_factor": low,
                                 "high_freq_factor": high, "original_max_position_embeddings": orig}, 2 * orig))
    cases, chunks, offset = [], [], 0

    def add(params, max_pos, head_dim, inv, **extra):
        nonlocal offset
        chunks.append(inv.to(torch.float32))
        cases.append({"config": {**params, "max_position_embeddings": max_pos}, "head_dim": head_dim, **extra,
                      "offset": offset})
        offset += inv.numel()

    for params, max_pos in configs:
        for head_dim in INV_FREQ_HEAD_DIMS:
            add(params, max_pos, head_dim, make_rotary(params, max_pos, head_dim).inv_freq)
    # Dynamic NTK past max_position_embeddings: inv_freq recomputed for seq_len = max(position) + 1 (fresh modules,
    # as transformers keeps the state).
    for theta in INV_FREQ_THETAS:
        params = {"rope_type": "dynamic", "rope_theta": theta, "factor": 3.3}
        for head_dim in INV_FREQ_HEAD_DIMS:
            for seq_len in (65, 200, 4097, 100000):
                rot = make_rotary(params, 64, head_dim)
                rot(torch.zeros(1, dtype=torch.float32), torch.tensor([[seq_len - 1]]))
                add(params, 64, head_dim, rot.inv_freq, seq_len=seq_len)
    TensorDir(d).write("inv_freq", torch.cat(chunks))
    write_json(
        d / "inv_freq.json",
        {
            "format": FORMAT,
            "generator": GENERATOR,
            **versions(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "convention": "inv_freq.bin holds every case's LlamaRotaryEmbedding(config).inv_freq (float32, d/2 values) "
            "from `offset`; compare bit for bit",
            "inv_freq": {"file": "inv_freq.bin", "dtype": "float32", "shape": [offset]},
            "cases": cases,
        },
    )
    log(f"  rope_inv_freq: {len(cases)} cases")


# ----------------------------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory (tests/golden)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.float32)
    if kvpress_version() != KVPRESS_VERSION:
        print(f"warning: kvpress {kvpress_version()} installed, fixtures are pinned to {KVPRESS_VERSION}", file=sys.stderr)

    transformers.logging.set_verbosity_error()
    logging.getLogger("kvpress").setLevel(logging.ERROR)  # PerLayerCompressionPress warns on every construction  # e.g. "Unrecognized keys in rope_parameters" for dynamic RoPE
    log = (lambda s: None) if args.quiet else (lambda s: print(s, flush=True))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Remove fixtures this script wrote before (and only those), so renamed scenarios leave nothing stale behind.
    for child in sorted(out.iterdir()):
        if child.is_dir() and any((child / f).exists() for f in ("scenario.json", "rope.json", "inv_freq.json")):
            shutil.rmtree(child)
    names = []
    for si, spec in enumerate(SCENARIOS):
        log(f"scenario {spec[0]}")
        names += generate_scenario(out, spec, si, log)
    generate_rope(out, log)
    generate_inv_freq(out, log)
    generate_more_presses(out, log)
    write_json(
        out / "index.json",
        {"format": FORMAT, "generator": GENERATOR, **versions(), "scenarios": names, "rope": "rope/rope.json"},
    )
    log(f"wrote {len(names)} scenarios and rope/ to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
