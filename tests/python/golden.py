"""Loads the kvpress fixtures of tests/golden (written by tools/golden/generate.py from kvpress 0.5.5)."""

import json
import os
from pathlib import Path

import numpy as np

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
