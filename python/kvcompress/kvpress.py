"""A drop-in for kvpress (0.5.5): kvcompress's presses as kvpress ``BasePress`` objects.

kvpress's pipeline and evaluation code run unchanged; only the import changes::

    from transformers import pipeline
    from kvcompress.kvpress import ExpectedAttentionPress, AdaKVPress   # was: from kvpress import ...

    pipe = pipeline("kv-press-text-generation", model=model, tokenizer=tokenizer)
    answer = pipe(context, question=question, press=AdaKVPress(ExpectedAttentionPress(0.5)))["answer"]

Each factory takes kvpress's parameters and returns a :class:`KVCompressPress` holding the
kvcompress press. In kvpress's forward hook it builds what the press reads from the attention
layer (pre-RoPE queries, post-RoPE window queries, the eager attention weights when the model
returns them, W_o, the model's rotary embedding), compresses the layer's cache tensors in place
and hands back the kept entries (in position order; kvpress keeps score order, which attention
does not see). Per-head budgets (AdaKV, CriticalAdaKV) keep the cache's length and mask each
head's removed slots through kvpress's attention patch, as kvpress's own AdaKV does.

kvpress is an optional dependency: importing this module needs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np
import torch
from kvpress import BasePress
from kvpress.utils import get_prerope_query_states
from transformers.models.llama.modeling_llama import rotate_half

from . import presses as _p
from .cache import KVCache, _host, compress, rotary_embedding_from_config
from ._core import Observation

__all__ = ["KVCompressPress", "wrap", "ExpectedAttentionPress", "KnormPress", "StreamingLLMPress", "SnapKVPress",
           "TOVAPress", "KeyDiffPress", "ObservedAttentionPress", "PyramidKVPress", "LagKVPress", "AdaKVPress",
           "CriticalKVPress", "CriticalAdaKVPress", "ChunkKVPress", "BlockPress", "KeyRerotationPress",
           "PerLayerCompressionPress"]

_ROPES: Dict[int, Any] = {}


def _rope(config: Any):
    key = id(config)
    if key not in _ROPES:
        _ROPES[key] = (config, rotary_embedding_from_config(config))
    return _ROPES[key][1]


def _needs(press: _p.Press) -> set:
    """What the observation must carry for this press (and the presses it wraps)."""
    needs = set()
    if isinstance(press, (_p.ExpectedAttentionPress,)):
        needs |= {"queries", "rope"}
    if isinstance(press, (_p.SnapKVPress, _p.PyramidKVPress)):
        needs |= {("window", press.window_size)}
    if isinstance(press, _p.TOVAPress):
        needs |= {("window", 1)}
    if isinstance(press, _p.ObservedAttentionPress):
        needs |= {"attention"}
    if isinstance(press, _p.KeyRerotationPress):
        needs |= {"rope"}
    if isinstance(press, (_p.CriticalKVPress, _p.CriticalAdaKVPress)):
        needs |= {"o_proj"}
    inner = getattr(press, "press", None)
    if isinstance(inner, _p.Press):
        needs |= _needs(inner)
    return needs


def _ratio_holder(press: _p.Press) -> _p.Press:
    while not hasattr(press, "compression_ratio") and isinstance(getattr(press, "press", None), _p.Press):
        press = press.press
    return press


@dataclass
class KVCompressPress(BasePress):
    """A kvcompress press as a kvpress press. ``num_threads=0`` uses every core."""

    press: _p.Press = None  # type: ignore[assignment]
    num_threads: int = 0

    @property
    def compression_ratio(self) -> float:
        return _ratio_holder(self.press).compression_ratio

    @compression_ratio.setter
    def compression_ratio(self, value: float) -> None:
        _ratio_holder(self.press).compression_ratio = value

    def observation(self, module: Any, hidden_states: torch.Tensor, attentions: Optional[torch.Tensor],
                    kwargs: dict) -> Observation:
        """What the press reads, built from the attention layer's forward as kvpress sees it."""
        config = module.config
        cache_position = kwargs.get("cache_position")
        obs = Observation(layer_idx=int(module.layer_idx), num_layers=int(config.num_hidden_layers),
                          position=int(cache_position[0]) if cache_position is not None else 0)
        needs = _needs(self.press)
        if "queries" in needs:
            obs.queries = get_prerope_query_states(module, hidden_states).detach()
        if "rope" in needs:
            obs.rope = _rope(config)
        windows = [w for item in needs if isinstance(item, tuple) for w in item[1:]]
        if "attention" in needs or (windows and attentions is not None):
            if attentions is None:
                raise ValueError("ObservedAttentionPress needs the attention weights: load the model with "
                                 "attn_implementation='eager'")
            obs.attention = attentions.detach()
        elif windows:
            w = min(max(windows), hidden_states.shape[1])
            q = get_prerope_query_states(module, hidden_states[:, -w:])
            cos, sin = kwargs["position_embeddings"]
            cos, sin = cos[:, -w:].unsqueeze(1), sin[:, -w:].unsqueeze(1)
            obs.window_queries = ((q * cos) + (rotate_half(q) * sin)).to(hidden_states.dtype).detach()
        if "o_proj" in needs:
            obs.output_projection = module.o_proj.weight.detach()
        return obs

    def compress(self, module, hidden_states, keys, values, attentions, kwargs):
        if self.compression_ratio == 0:
            return keys, values
        obs = self.observation(module, hidden_states, attentions, kwargs)
        cache = KVCache(keys.detach(), values.detach())
        lengths = _host(compress(self.press, obs, cache, num_threads=self.num_threads))
        n = int(lengths.max())
        if (lengths == n).all():
            return keys[:, :, :n].contiguous(), values[:, :, :n].contiguous()
        # Per-head lengths: HF's cache keeps one length for every head and layer, so the layer keeps
        # its length and the slots past each head's own are masked in later passes by kvpress's
        # attention patch (as kvpress's AdaKV does).
        full = keys.shape[2]
        b_idx, h_idx, s_idx = [], [], []
        for (b, h), length in np.ndenumerate(lengths):
            s = torch.arange(int(length), full)
            b_idx.append(torch.full_like(s, b))
            h_idx.append(torch.full_like(s, h))
            s_idx.append(s)
        module.masked_key_indices = (torch.cat(b_idx), torch.cat(h_idx), torch.cat(s_idx))
        return keys, values


def wrap(press: _p.Press, num_threads: int = 0) -> KVCompressPress:
    """Any kvcompress press as a kvpress press."""
    return KVCompressPress(press=press, num_threads=num_threads)


def _unwrap(press: Any) -> _p.Press:
    if isinstance(press, KVCompressPress):
        return press.press
    if isinstance(press, _p.Press):
        return press
    raise TypeError(f"expected a kvcompress press (from kvcompress.kvpress), got {type(press).__name__}")


def _scorer(cls):
    def factory(*args, **kwargs) -> KVCompressPress:
        return wrap(cls(*args, **kwargs))

    factory.__name__ = cls.__name__
    factory.__doc__ = f"kvcompress's {cls.__name__} as a kvpress press (kvpress's parameters).\n\n{cls.__doc__}"
    return factory


def _wrapper(cls):
    def factory(press: Any, *args, **kwargs) -> KVCompressPress:
        return wrap(cls(_unwrap(press), *args, **kwargs))

    factory.__name__ = cls.__name__
    factory.__doc__ = f"kvcompress's {cls.__name__} as a kvpress press (kvpress's parameters).\n\n{cls.__doc__}"
    return factory


ExpectedAttentionPress = _scorer(_p.ExpectedAttentionPress)
KnormPress = _scorer(_p.KnormPress)
StreamingLLMPress = _scorer(_p.StreamingLLMPress)
SnapKVPress = _scorer(_p.SnapKVPress)
TOVAPress = _scorer(_p.TOVAPress)
KeyDiffPress = _scorer(_p.KeyDiffPress)
ObservedAttentionPress = _scorer(_p.ObservedAttentionPress)
PyramidKVPress = _scorer(_p.PyramidKVPress)
LagKVPress = _scorer(_p.LagKVPress)
AdaKVPress = _wrapper(_p.AdaKVPress)
CriticalKVPress = _wrapper(_p.CriticalKVPress)
CriticalAdaKVPress = _wrapper(_p.CriticalAdaKVPress)
ChunkKVPress = _wrapper(_p.ChunkKVPress)
BlockPress = _wrapper(_p.BlockPress)
KeyRerotationPress = _wrapper(_p.KeyRerotationPress)
PerLayerCompressionPress = _wrapper(_p.PerLayerCompressionPress)
