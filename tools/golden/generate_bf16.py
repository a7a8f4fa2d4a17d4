#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Golden fixtures of kvpress's Expected Attention presses run in bfloat16.

The scenarios of generate.py (same models, seeds, prompts and compression ratios), with the model cast to
bfloat16 before the prefill, so that kvpress computes everything in bf16 as it does on a bf16 model: the
queries, their mean and covariance, the averaged rotation, the logits, the softmax and the value norms. Each
scenario directory holds what the press saw (keys, values and pre-RoPE queries, bf16 values written as float32,
which holds them exactly), its scores (bf16, written as float32) and the kept index sets.
See tools/golden/README.md ("bf16 fixtures").
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import contextlib
import io
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generate as G  # noqa: E402  (the models, scenarios, hooks and writers of the float32 fixtures)
from kvpress import ExpectedAttentionPress, ExpectedAttentionStatsPress  # noqa: E402
from kvpress.presses.expected_attention_with_stats import ExpectedAttentionStats  # noqa: E402
from kvpress.utils import get_prerope_query_states  # noqa: E402

GENERATOR = "tools/golden/generate_bf16.py"
EA_CASES = [c for c in G.CASES if c.cls in (ExpectedAttentionPress, ExpectedAttentionStatsPress)]


def stats_folder(model, spec, name: str):
    """Query statistics of the bf16 model (the press reads them as it would from the hub), in a temporary folder."""
    seed = spec[6]
    cfg = model.config
    mean, cov = G.compute_query_stats(model, seed + 2000)
    stats = ExpectedAttentionStats(
        num_layers=cfg.num_hidden_layers,
        num_heads=cfg.num_attention_heads,
        head_dim=spec[2],
        dataset_name="random-token-prompts",
        model_name=f"kvcompress-golden/{name}-bf16",
        num_samples=2,
        sample_seq_len=150,
        n_sink=4,
    )
    stats.query_mean.data = mean.to(torch.float32)
    stats.query_cov.data = cov.to(torch.float32)
    folder = tempfile.mkdtemp(prefix="kvc_golden_bf16_stats_")
    stats.save_pretrained(folder)
    return folder, mean.to(torch.float32), cov.to(torch.float32)


def generate_scenario(out_dir: Path, spec, scenario_index: int, log) -> str:
    name, family, head_dim, seq_len, batch, _, seed = spec
    model = G.build_model(family, head_dim, seed).to(torch.bfloat16)
    cfg = model.config
    g = torch.Generator().manual_seed(seed + 1000)
    input_ids = torch.randint(0, cfg.vocab_size, (batch, seq_len), generator=g)
    li = 1
    td = G.TensorDir(out_dir / name)
    folder, query_mean, query_cov = stats_folder(model, spec, name)
    entries, ref = [], None
    try:
        for case in EA_CASES:
            ci = G.CASES.index(case)  # the float32 fixtures' ratio for this case and scenario
            ratio = case.ratio if case.ratio is not None else G.RATIOS[(ci + scenario_index) % len(G.RATIOS)]
            kwargs = dict(case.params)
            if case.cls is ExpectedAttentionStatsPress:
                kwargs["stats_folder"] = folder
            press = case.cls(compression_ratio=ratio, **kwargs)
            with contextlib.redirect_stdout(io.StringIO()):  # hub_mixin prints "Loading weights from local directory"
                c = G.run_press(model, input_ids, press, (li,), case.no_attention)[li]
            assert c["keys"].dtype == torch.bfloat16 and c["scores"].dtype == torch.bfloat16, (case.name, c["scores"].dtype)
            if ref is None:
                ref = c
            for key in ("hidden_states", "keys", "values"):
                assert torch.equal(c[key], ref[key]), f"{case.name}: {key} differs between presses"
            kept = G.recover_kept(c["keys"], c["values"], c["keys_out"], c["values_out"])
            scores = c["scores"].to(torch.float32)
            tied = G.check_topk(scores, kept)
            entries.append(
                {
                    "name": case.name,
                    "press": case.cls.__name__,
                    "params": G.press_params(press),
                    "uses": list(case.uses),
                    "n_kept": int(kept.shape[-1]),
                    "boundary_tie": bool(tied),
                    "boundary_gap": G.boundary_gap(scores, int(kept.shape[-1])),
                    "scores": td.write(f"{case.name}_scores", scores),
                    "kept": td.write(f"{case.name}_kept", kept, "int32"),
                }
            )
            log(f"  {name:22s} {case.name:34s} r={ratio} n_kept={entries[-1]['n_kept']}" + (" (tie)" if tied else ""))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    rope = G.model_rope_json(model, td)
    tensors = {
        "keys": td.write("keys", ref["keys"]),
        "values": td.write("values", ref["values"]),
        "queries": td.write("queries", get_prerope_query_states(ref["module"], ref["hidden_states"])),
        "inv_freq": td.written["inv_freq.bin"],
        "query_mean": td.write("query_mean", query_mean[li]),
        "query_cov": td.write("query_cov", query_cov[li]),
    }
    G.write_json(
        td.path / "scenario.json",
        {
            "format": G.FORMAT,
            "generator": GENERATOR,
            **G.versions(),
            "dtype": "bfloat16",
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
        },
    )
    return name


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory (tests/golden/bf16)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    transformers.logging.set_verbosity_error()
    logging.getLogger("kvpress").setLevel(logging.ERROR)
    log = (lambda s: None) if args.quiet else (lambda s: print(s, flush=True))
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    names = [generate_scenario(out, spec, si, log) for si, spec in enumerate(G.SCENARIOS)]
    G.write_json(out / "index.json", {"format": G.FORMAT, "generator": GENERATOR, **G.versions(), "scenarios": names})
    log(f"wrote {len(names)} bf16 scenarios to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
