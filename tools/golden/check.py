#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Independent sanity check of the golden fixtures (NumPy only, no torch/kvpress).

For every scenario and press it
  * re-derives the scores in float64 from the dumped inputs, following docs/kvpress-semantics (the spec the C++
    port implements), and compares them with kvpress's float32 scores;
  * checks that the kept sets are top-n_kept sets of kvpress's scores (tie-aware) and that n_kept follows the
    press's budget rule;
for every wrappers.json, checks each wrapper's kept sets against its definition (from kvpress's inner scores or
their float64 re-derivation), CriticalKV's value norms and KeyRerotation's re-rotated keys;
and for rope/rope.json re-derives cos/sin and the averaged rotation from inv_freq.

Usage: python tools/golden/check.py [tests/golden]
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np


def load(d: Path, spec: dict) -> np.ndarray:
    dt = {"float32": "<f4", "int32": "<i4"}[spec["dtype"]]
    a = np.fromfile(d / spec["file"], dtype=dt)
    assert a.size == int(np.prod(spec["shape"])), spec
    return a.reshape(spec["shape"]).astype(np.float64 if dt == "<f4" else np.int64)


def softmax(x, axis=-1):
    m = x.max(axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / e.sum(axis=axis, keepdims=True)


def rope_tables(inv_freq, positions, scaling):
    freqs = np.outer(positions, inv_freq)
    emb = np.concatenate([freqs, freqs], -1)
    return scaling * np.cos(emb), scaling * np.sin(emb)


def avg_rotation(inv_freq, scaling, q, T):
    cos, sin = rope_tables(inv_freq, np.arange(q, q + T, dtype=np.float64), scaling)
    d = cos.shape[1]
    h = d // 2
    P = np.zeros((d, d))
    P[h:, :h] = np.eye(h)
    P[:h, h:] = -np.eye(h)
    return np.diag(cos.mean(0)) + np.diag(sin.mean(0)) @ P


def group_mean(x, h):
    b, H = x.shape[:2]
    return x.reshape(b, h, H // h, *x.shape[2:]).mean(2)


def pad(x, left, right, value):
    return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(left, right)], constant_values=value)


def n_kept_rule(n, r):
    return max(1, int(n * (1 - r)))


def pyramid_budget(n, r, w, beta, layer, L):
    cap = w + n * (1 - r)
    min_num = (cap - w) / beta
    max_num = (cap - w) * 2 - min_num
    if max_num >= n - w:
        max_num = n - w
        min_num = (cap - w) * 2 - max_num
    if not (n >= max_num >= min_num >= w):
        return max(1, round(n * (1 - r)))
    steps = (max_num - min_num) / (L - 1) if L > 1 else 0.0
    return round(max_num - layer * steps)


def expected_attention(K, V, mu, cov, R, p, h):
    s = p["n_sink"]
    d = K.shape[-1]
    K, V = K[:, :, s:], V[:, :, s:]
    H = mu.shape[1]
    Kr = np.repeat(K, H // h, axis=1)
    mu_t = mu @ R.T
    z = np.einsum("bhd,bhnd->bhn", mu_t, Kr) / math.sqrt(d)
    if p["use_covariance"]:
        cov_t = R @ cov @ R.T
        z = z + np.einsum("bhnd,bhde,bhne->bhn", Kr, cov_t, Kr) / d / 2
    e = group_mean(softmax(z), h)
    if p["use_vnorm"]:
        e = (e + p["epsilon"]) * np.linalg.norm(V, axis=-1)
    return pad(e, s, 0, e.max() + 1)


def window_attention(Wq, K, h):
    """Wq: post-RoPE window queries [b,H,w,d]; K [b,h,n,d] -> P[..., :n-w] as compute_window_attention."""
    b, H, w, d = Wq.shape
    n = K.shape[2]
    Kr = np.repeat(K, H // h, axis=1)
    logits = Wq @ Kr.transpose(0, 1, 3, 2) / math.sqrt(d)
    r = np.arange(w)[:, None]
    c = np.arange(n)[None, :]
    logits = np.where(c > (n - w) + r, -np.inf, logits)
    return softmax(logits)[..., : n - w]


def snapkv(P, h, kernel):
    s = P.mean(-2)  # [b,H,n-w]
    pad_ = kernel // 2
    sp = np.pad(s, [(0, 0), (0, 0), (pad_, pad_)])
    pooled = np.stack([sp[..., i : i + s.shape[-1]] for i in range(kernel)], 0).sum(0) / kernel
    g = group_mean(pooled, h)
    return g


def lagkv(K, V, p):
    b, h, n, d = K.shape
    s, lag = p["n_sink"], p["lag_size"]
    if n < s + 2 * lag:
        out = np.ones((b, h, n))
        if n > s:
            out[:, :, s:] = np.arange(n - s) / (n - s)
        return out
    end = s + ((n - s) // lag) * lag
    tail = lag + n - end

    def states(X):
        X = X[:, :, s:end].reshape(b, h, -1, lag, d)
        ref, v = X[:, :, 1:], X[:, :, :-1]
        lo = ref.min(-2, keepdims=True)
        hi = ref.max(-2, keepdims=True)
        return softmax(((v - lo) / (hi - lo)).std(-1, ddof=1), -1)

    sc = (states(K) + states(V)) / 2
    if not p["cross_scoring"]:
        sc = sc.argsort(-1, kind="stable").argsort(-1, kind="stable") / lag
    return np.concatenate([np.ones((b, h, s)), sc.reshape(b, h, -1), np.ones((b, h, tail))], -1)


def reference_scores(entry, t, meta):
    p = entry["params"]
    h = meta["kv_heads"]
    K, V = t["keys"], t["values"]
    n = K.shape[2]
    name = entry["press"]
    inv_freq, a = t["inv_freq"], meta["rope"]["attention_scaling"]
    if name == "ExpectedAttentionPress":
        Q = t["queries"][:, :, p["n_sink"] :]
        mu = Q.mean(2)
        c = Q - mu[:, :, None]
        cov = np.einsum("bhsi,bhsj->bhij", c, c) / Q.shape[2]
        R = avg_rotation(inv_freq, a, n, p["n_future_positions"])
        return expected_attention(K, V, mu, cov, R, p, h)
    if name == "ExpectedAttentionStatsPress":
        R = avg_rotation(inv_freq, a, n, p["n_future_positions"])
        return expected_attention(K, V, t["query_mean"][None], t["query_cov"][None], R, p, h)
    if name == "KnormPress":
        return -np.linalg.norm(K, axis=-1)
    if name == "StreamingLLMPress":
        s = np.ones(K.shape[:3])
        n_pruned = n - int(n * (1 - p["compression_ratio"]))
        s[:, :, p["n_sink"] : p["n_sink"] + n_pruned] = 0
        return s
    if name in ("SnapKVPress", "PyramidKVPress"):
        w = p["window_size"]
        if entry["attention_path"] == "attention":
            P = t["attention"][:, :, -w:, : n - w]
        else:
            P = window_attention(t["window_queries"], K, h)
        g = snapkv(P, h, p["kernel_size"])
        return pad(g, 0, w, g.max() + 1)
    if name == "TOVAPress":
        if entry["attention_path"] == "attention":
            P = t["attention"][:, :, -1:, : n - 1]
        else:
            P = window_attention(t["window_queries_1"], K, h)
        s = np.repeat(P.mean(1), h, axis=1)
        return pad(s, 0, 1, s.max() + 1)
    if name == "ObservedAttentionPress":
        A = t["attention"]
        s = A.sum(2) / np.arange(n, 0, -1)
        return group_mean(s, h)
    if name == "KeyDiffPress":
        nk = np.linalg.norm(K, axis=-1, keepdims=True)
        anchor = (K / np.maximum(nk, 1e-12)).mean(2, keepdims=True)
        cos = (K * anchor).sum(-1) / np.maximum(nk[..., 0] * np.linalg.norm(anchor, axis=-1), 1e-8)
        return -cos
    if name == "LagKVPress":
        return lagkv(K, V, p)
    if name == "QFilterPress":
        return -np.einsum("hd,bhnd->bhn", t["q_filters"], K)
    raise ValueError(name)


def check_kept(scores, kept):
    b, h, n = scores.shape
    k = kept.shape[-1]
    tie = False
    for bi in range(b):
        for hi in range(h):
            s = scores[bi, hi]
            thr = np.sort(s)[::-1][k - 1]
            sel = np.zeros(n, bool)
            sel[kept[bi, hi]] = True
            assert sel.sum() == k and np.all(np.diff(kept[bi, hi]) > 0)
            assert np.all(s[sel] >= thr) and np.all(s[~sel] <= thr)
            tie |= bool(np.any(s[~sel] == thr))
    return tie


def check_scenario(d: Path) -> list[str]:
    meta = json.loads((d / "scenario.json").read_text())
    t = {k: load(d, spec) for k, spec in meta["tensors"].items()}
    b, H, h, dh, n = meta["batch"], meta["q_heads"], meta["kv_heads"], meta["head_dim"], meta["seq_len"]
    assert t["keys"].shape == (b, h, n, dh) and t["queries"].shape == (b, H, n, dh)
    assert t["attention"].shape == (b, H, n, n)
    # The attention rows sum to one and are causal.
    assert np.allclose(t["attention"].sum(-1), 1, atol=1e-5)
    assert np.all(np.triu(t["attention"], 1) == 0)
    # window_queries are the RoPE'd tail of queries.
    cos, sin = rope_tables(t["inv_freq"], np.arange(n, dtype=np.float64), meta["rope"]["attention_scaling"])
    half = dh // 2

    def rot(x, c, s):
        return x * c + np.concatenate([-x[..., half:], x[..., :half]], -1) * s

    for key, w in (("window_queries", 8), ("window_queries_1", 1)):
        exp = rot(t["queries"][:, :, -w:], cos[-w:], sin[-w:])
        assert np.allclose(t[key], exp, rtol=1e-4, atol=1e-4 * np.abs(exp).max()), key
    report = []
    for e in meta["presses"]:
        scores = load(d, e["scores"])
        kept = load(d, e["kept"])
        p = e["params"]
        if e["press"] == "PyramidKVPress":
            want = pyramid_budget(n, p["compression_ratio"], p["window_size"], p["beta"], meta["layer_idx"], meta["num_layers"])
        else:
            want = n_kept_rule(n, p["compression_ratio"])
        assert e["n_kept"] == want == kept.shape[-1], (e["name"], e["n_kept"], want)
        tie = check_kept(scores, kept)
        assert tie == e["boundary_tie"], (e["name"], tie)
        ref = reference_scores(e, t, meta)
        err = np.abs(ref - scores).max() / max(np.abs(ref).max(), 1e-30)
        tol = 2e-3 if e["press"].startswith("ExpectedAttention") else 1e-4
        if e["press"] == "LagKVPress" and n >= p["n_sink"] + 2 * p["lag_size"]:
            # ranks: compare as exact values (rank ties inside a partition are impossible with random data)
            tol = 0.0
        assert err <= tol, f"{d.name}/{e['name']}: relative score error {err:.3g} > {tol}"
        # the kvpress kept set must also be a top-k set of our float64 scores, up to near-ties
        margin = near_tie_margin(ref, kept)
        assert margin >= 0, f"{d.name}/{e['name']}: kvpress kept set is not a top-k set of the float64 reference"
        srt = -np.sort(-scores, axis=-1)
        k = e["n_kept"]
        gap = None if k >= n else float((srt[..., k - 1] - srt[..., k]).min())
        assert (gap is None) == (e["boundary_gap"] is None) and (gap is None or abs(gap - e["boundary_gap"]) <= 1e-6 * abs(gap)), e["name"]
        report.append(f"{d.name:24s} {e['name']:34s} n_kept={e['n_kept']:4d} rel_err={err:.1e} margin={margin:.1e}")
    return report


def check_wrappers(d: Path) -> list[str]:
    """wrappers.json: each wrapper's kept sets against its definition, from kvpress's own inner scores or a float64
    re-derivation of them; CriticalKV's value norms; KeyRerotation's keys re-rotated in float64."""
    meta = json.loads((d / "scenario.json").read_text())
    wrappers = json.loads((d / "wrappers.json").read_text())
    t = {k: load(d, spec) for k, spec in meta["tensors"].items()}
    K, V = t["keys"], t["values"]
    b, h, n, dh = K.shape
    H = meta["q_heads"]
    W = load(d, wrappers["tensors"]["o_proj"])  # [hidden, H*d]
    report = []
    for w in wrappers["wrappers"]:
        name, kind, wp = w["name"], w["press"], w["params"]
        mask = load(d, w["kept_mask"]).astype(bool)
        counts = mask.sum(-1)
        inner = w["presses"][0]
        r = inner["params"]["compression_ratio"]
        k = n_kept_rule(n, r)

        def ref_scores(e):
            e = dict(e, attention_path="window_queries" if "window_queries" in e["uses"] else "attention")
            return reference_scores(e, t, meta)

        if "inner_scores" in w:
            got = load(d, w["inner_scores"])
            ref = ref_scores(inner)
            err = np.abs(ref - got).max() / max(np.abs(ref).max(), 1e-30)
            assert err <= (2e-3 if inner["press"].startswith("Expected") else 1e-4), (d.name, name, err)
        if "value_norms" in w:
            Wo = W.T.reshape(H, dh, -1)  # head j: [d, hidden]
            u = np.abs(np.einsum("bgnd,gjdo->bgjno", V, Wo.reshape(h, H // h, dh, -1))).sum(-1).mean(2)
            got = load(d, w["value_norms"])
            assert np.abs(u - got).max() <= 1e-4 * np.abs(u).max(), (d.name, name)
        if kind in ("AdaKVPress", "CriticalAdaKVPress"):
            n_safe = max(1, int(k * wp["alpha_safeguard"]))
            assert np.all(counts.sum(1) == h * k) and np.all(counts >= n_safe), (d.name, name, counts)
            if kind == "AdaKVPress":  # the unmasked entries beyond each head's floor are the sequence's best
                s = load(d, w["inner_scores"])
                for bi in range(b):
                    floor = np.zeros((h, n), bool)
                    for hi in range(h):
                        floor[hi, np.argsort(-s[bi, hi], kind="stable")[:n_safe]] = True
                    rest = ~floor
                    kept, dropped = s[bi][rest & mask[bi]], s[bi][rest & ~mask[bi]]
                    if kept.size and dropped.size:
                        assert kept.min() >= dropped.max() - 1e-6 * np.abs(s).max(), (d.name, name)
        elif kind == "CriticalKVPress":
            s, base = load(d, w["scores"]), load(d, w["inner_scores"])
            stage1 = s == np.finfo(np.float32).max
            m1 = max(1, int((1 - r) * n * wp["first_stage_ratio"]))
            assert np.all(stage1.sum(-1) == m1), (d.name, name)
            want = (base + wp["epsilon"]) * load(d, w["value_norms"])
            assert np.allclose(s[~stage1], want[~stage1], rtol=1e-5, atol=0), (d.name, name)
            check_kept(s, np.array([[np.flatnonzero(mask[bi, hi]) for hi in range(h)] for bi in range(b)]))  # a top-k of s
        elif kind == "ChunkKVPress":
            c = wp["chunk_length"]
            s = load(d, w["inner_scores"])
            chunks = -(-n // c)
            cs = np.array([s[0, :, j * c : (j + 1) * c].sum(0).mean() for j in range(chunks)])
            best = set(np.argsort(-cs, kind="stable")[: max(1, int(chunks * (1 - r)))].tolist())
            want = np.zeros(n, bool)
            for j in best:
                want[j * c : (j + 1) * c] = True
            assert np.all(mask == want), (d.name, name)  # batch 0's chunks, in every sequence (kvpress)
        elif kind == "ChunkPress":
            c = wp["chunk_length"]
            s = ref_scores(inner)
            for lo in range(0, n, c):
                part = s[..., lo : lo + c]
                kk = n_kept_rule(part.shape[-1], r)
                assert np.all(mask[..., lo : lo + c].sum(-1) == kk)
                for bi in range(b):
                    for hi in range(h):
                        sel = mask[bi, hi, lo : lo + c]
                        assert part[bi, hi][sel].min() >= part[bi, hi][~sel].max(initial=-np.inf), (d.name, name)
        elif kind == "ComposedPress":
            k2 = n_kept_rule(n_kept_rule(n, r), w["presses"][1]["params"]["compression_ratio"])
            assert np.all(counts == k2), (d.name, name)
        elif kind == "PerLayerCompressionPress":
            ratio = wp["compression_ratios"][meta["layer_idx"]]
            assert np.all(counts == (0 if ratio >= 1 else n_kept_rule(n, ratio))), (d.name, name)
        else:
            assert np.all(counts == k), (d.name, name, counts)
        if kind == "KeyRerotationPress":
            out = load(d, w["keys_out"])
            for bi in range(b):
                for hi in range(h):
                    kept = np.flatnonzero(mask[bi, hi])
                    delta = np.arange(kept.size) - kept
                    c, sn = rope_tables(t["inv_freq"], delta.astype(np.float64), 1.0)
                    x = K[bi, hi, kept]
                    want = x * c + np.concatenate([-x[:, dh // 2 :], x[:, : dh // 2]], -1) * sn
                    # kvpress forms the angle δ·inv_freq in float32: an error of |δ·inv_freq|·2^-24 rad
                    tol = 1e-5 + np.abs(delta).max() * 2.0**-23 * np.abs(x).max()
                    assert np.abs(want - out[bi, hi]).max() <= tol, (d.name, name, np.abs(want - out[bi, hi]).max())
        report.append(f"{d.name:24s} {name:34s} kept per head {counts.flatten().tolist()}")
    return report


def near_tie_margin(ref, kept):
    """min over heads of (lowest kept score - highest dropped score) in the float64 reference, relative."""
    b, h, n = ref.shape
    out = np.inf
    for bi in range(b):
        for hi in range(h):
            sel = np.zeros(n, bool)
            sel[kept[bi, hi]] = True
            if sel.all():
                continue
            gap = ref[bi, hi][sel].min() - ref[bi, hi][~sel].max()
            out = min(out, gap / max(np.abs(ref[bi, hi]).max(), 1e-30))
    return out


def check_rope(d: Path) -> list[str]:
    meta = json.loads((d / "rope.json").read_text())
    out = []
    for c in meta["cases"]:
        for ev in c["evaluations"]:
            inv = load(d, ev["inv_freq"])
            cos, sin = rope_tables(inv, np.array(ev["positions"], dtype=np.float64), ev["attention_scaling"])
            for k, ref in (("cos", cos), ("sin", sin)):
                got = load(d, ev[k])
                # fp32 argument rounding at large positions: p*inv_freq is computed in float32 by HF
                tol = 2e-3 if max(ev["positions"]) > 200 else 1e-4
                err = np.abs(got - ref).max()
                assert err < tol, (c["name"], k, err)
        for av in c["avg_rotation"]:
            inv = load(d, av["inv_freq"])
            R = avg_rotation(inv, c["attention_scaling"], av["q"], av["n_future_positions"])
            dh = c["head_dim"]
            assert np.abs(np.diag(R) - load(d, av["cos_mean"])).max() < 1e-4, c["name"]
            if "R" in av:
                err = np.abs(load(d, av["R"]) - R).max()
                assert err < 1e-4, (c["name"], err)
        out.append(f"rope {c['name']}: ok")
    return out


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "tests" / "golden")
    idx = json.loads((root / "index.json").read_text())
    lines = []
    for s in idx["scenarios"]:
        lines += check_scenario(root / s)
        if (root / s / "wrappers.json").exists():
            lines += check_wrappers(root / s)
    lines += check_rope(root / "rope")
    print("\n".join(lines))
    print(f"all {len(lines)} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
