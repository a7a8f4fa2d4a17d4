"""Loads the kvpress fixtures of tests/golden (written by tools/golden/generate.py from kvpress 0.5.5)."""

import json
import os
from pathlib import Path

import numpy as np

import kvcompress as kvc

GOLDEN = Path(os.environ.get("KVC_GOLDEN_DIR", Path(__file__).resolve().parents[1] / "golden"))


def scenarios():
    return json.loads((GOLDEN / "index.json").read_text())["scenarios"]


def load(spec, folder):
    return np.fromfile(folder / spec["file"], dtype=spec["dtype"]).reshape(spec["shape"])


class Scenario:
    def __init__(self, name):
        self.name = name
        self.dir = GOLDEN / name
        self.meta = json.loads((self.dir / "scenario.json").read_text())
        wrappers = self.dir / "wrappers.json"
        self.wrappers = json.loads(wrappers.read_text()) if wrappers.exists() else None
        self._cache = {}

    def tensor(self, name):
        if name not in self._cache:
            spec = self.meta["tensors"].get(name) or (self.wrappers or {}).get("tensors", {}).get(name)
            self._cache[name] = load(spec, self.dir)
        return self._cache[name]

    def rope_config(self):
        rope = dict(self.meta["rope"])
        max_pos = rope.pop("max_position_embeddings")
        for extra in ("attention_scaling", "inv_freq_file"):
            rope.pop(extra, None)
        return {"head_dim": self.meta["head_dim"], "max_position_embeddings": max_pos, "rope_parameters": rope}


# The self-contained scenarios of the presses added later (tools/golden/generate.py).
MORE = [f"more_presses/{n}" for n in json.loads((GOLDEN / "more_presses" / "index.json").read_text())["scenarios"]]

def array_of(sc, entry, name):
    return np.ascontiguousarray(load(entry[name], sc.dir)) if name in entry else None


def more_observation(sc, entry):
    """The observation of a more_presses entry: the tensors it uses, the scenario's layer and RoPE."""
    kw = {"layer_idx": sc.meta["layer_idx"], "num_layers": sc.meta["num_layers"],
          "rope": kvc.rotary_embedding_from_config(sc.rope_config()), "chunk_length": sc.meta["seq_len"]}
    for use in entry["uses"]:
        if use == "queries":
            kw["queries"] = sc.tensor("queries")
        elif use.startswith("window_queries"):
            kw["window_queries"] = load(entry["window_queries"], sc.dir)
    return kvc.Observation(**kw)


def fresh_cache(sc):
    keys, values = sc.tensor("keys").copy(), sc.tensor("values").copy()
    b, h, n, _ = keys.shape
    positions = np.ascontiguousarray(np.broadcast_to(np.arange(n, dtype=np.int32), (b, h, n)))
    return kvc.KVCache(keys, values, positions=positions), positions


def check_scores(got, want, rel_tol):
    """Relative rel_tol, with a floor of 1e-2 · rel_tol of the largest score for values near 0."""
    scale = np.abs(want).max()
    np.testing.assert_array_less(np.abs(got - want), rel_tol * np.maximum(np.abs(want), 1e-2 * scale) + 1e-12)


def check_kept(positions, lengths, n_kept, want_kept, want_scores, rel_tol):
    """kvpress's kept set per row, unless its cut is within the tolerance (then a top set of its scores)."""
    scale = np.abs(want_scores).max()
    for (b, h), n in np.ndenumerate(lengths):
        assert n == n_kept
        ours, theirs, s = set(positions[b, h, :n]), set(want_kept[b, h]), want_scores[b, h]
        lowest_kept = min(s[i] for i in theirs)
        best_dropped = max((s[i] for i in range(s.size) if i not in theirs), default=-np.inf)
        tol = rel_tol * max(abs(lowest_kept), 1e-2 * scale)
        if lowest_kept - best_dropped > tol:
            assert ours == theirs, f"batch {b}, head {h}"
        else:
            assert all(s[i] >= lowest_kept - tol for i in ours)
