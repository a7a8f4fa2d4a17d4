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

The decoding presses (``DecodingPress``, ``CompressionRatioDecodingPress``, ``PrefillDecodingPress``,
``CAMPress``) are subclasses of kvpress's ``DecodingPress`` / ``PrefillDecodingPress`` whose forward
hook steps the kvcompress press once per forward pass and layer, so the pipeline runs them while it
generates, as it runs kvpress's own.

kvpress is an optional dependency: importing this module needs it.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np
import torch
from kvpress import BasePress
from kvpress.presses.decoding_press import DecodingPress as _KvpressDecodingPress
from kvpress.presses.prefill_decoding_press import PrefillDecodingPress as _KvpressPrefillDecodingPress
from kvpress.utils import get_prerope_query_states
from transformers.cache_utils import QuantizedCache
from transformers.models.llama.modeling_llama import rotate_half

from . import presses as _p
from .cache import KVCache, _host, compress, rotary_embedding_from_config
from ._core import Observation

__all__ = ["KVCompressPress", "wrap", "ExpectedAttentionPress", "KnormPress", "StreamingLLMPress", "SnapKVPress",
           "TOVAPress", "KeyDiffPress", "ObservedAttentionPress", "PyramidKVPress", "LagKVPress", "AdaKVPress",
           "CriticalKVPress", "CriticalAdaKVPress", "ChunkKVPress", "BlockPress", "KeyRerotationPress",
           "PerLayerCompressionPress", "KVCompressDecodingPress", "KVCompressPrefillDecodingPress", "DecodingPress",
           "CompressionRatioDecodingPress", "PrefillDecodingPress", "CAMPress"]

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


def _observe(press: Optional[_p.Press], module: Any, hidden_states: torch.Tensor, attentions: Optional[torch.Tensor],
             kwargs: dict) -> Observation:
    """What ``press`` reads (nothing but the layer and position for None), built from the attention
    layer's forward as kvpress sees it."""
    config = module.config
    cache_position = kwargs.get("cache_position")
    obs = Observation(layer_idx=int(module.layer_idx), num_layers=int(config.num_hidden_layers),
                      position=int(cache_position[0]) if cache_position is not None else 0)
    needs = set() if press is None else _needs(press)
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
        return _observe(self.press, module, hidden_states, attentions, kwargs)

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


class _DecodingDropIn:
    """A kvcompress decoding press in kvpress's pipeline, which drives decoding presses through
    forward hooks on every attention layer: each forward pass (the prefill, the question, every
    generated token) is one :meth:`step` of the press, with the pass's pre-RoPE queries, the model's
    rotary embedding, the true absolute position (``position_ids``, which kvpress's pipeline passes
    while decoding; ``cache_position`` runs behind it once the cache was compressed) and the layer's
    cache tensors, compressed in place; the layer keeps the first ``length`` entries of each row.
    The press's state is reset when the pipeline leaves the press's context, as kvpress does."""

    def __init__(self, press: Any, num_threads: int = 0):
        self.press = press
        self.num_threads = num_threads

    def __repr__(self) -> str:
        return f"{type(self).__name__}(press={self.press!r}, num_threads={self.num_threads})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return False
        return (self.press, self.num_threads) == (other.press, other.num_threads)  # type: ignore[attr-defined]

    __hash__ = object.__hash__

    def post_init_from_model(self, model: Any) -> None:
        pass

    def compress(self, module, hidden_states, keys, values, attentions, kwargs):
        raise NotImplementedError(f"{type(self).__name__} compresses in its forward hook (one step per pass)")

    def reset(self) -> None:
        self.press.reset()

    @contextmanager
    def __call__(self, model: Any):
        try:
            with BasePress.__call__(self, model):  # type: ignore[arg-type]
                yield
        finally:
            self.reset()

    def forward_hook(self, module: Any, input: Any, kwargs: dict, output: Any):
        cache = kwargs["past_key_values"]
        if isinstance(cache, QuantizedCache):
            raise ValueError(f"{type(self).__name__}: a QuantizedCache is not supported (its entries are not "
                             f"tensors that can be compressed in place)")
        hidden_states = kwargs["hidden_states"]
        press = self.press
        prefilling = press.prefilling_press if isinstance(press, _p.PrefillDecodingPress) else None
        attentions = output[1] if len(output) > 1 else None
        obs = _observe(prefilling, module, hidden_states, attentions, kwargs)
        position_ids = kwargs.get("position_ids")
        if position_ids is not None:
            obs.position = int(position_ids[0, 0])
        obs.queries = get_prerope_query_states(module, hidden_states).detach()
        obs.rope = _rope(module.config)
        if isinstance(press, _p.CAMPress) and press.capacity is None:
            # HF's cache grows by a new tensor each pass: the running sums hold the model's context.
            press.capacity = int(module.config.max_position_embeddings)
        layer = cache.layers[module.layer_idx]
        keys, values = layer.keys, layer.values
        kv = KVCache(keys.detach(), values.detach())
        if not press.step(obs, kv, num_threads=self.num_threads):
            return output
        lengths = np.asarray(kv.lengths)
        n = int(lengths.max())
        if not (lengths == n).all():
            raise ValueError(f"{type(self).__name__}: the press left rows of different lengths "
                             f"({sorted(set(lengths.ravel().tolist()))}); HF's cache keeps one length per layer")
        layer.keys = keys[:, :, :n].contiguous()
        layer.values = values[:, :, :n].contiguous()
        return output


class KVCompressDecodingPress(_DecodingDropIn, _KvpressDecodingPress):  # type: ignore[misc]
    """A kvcompress :class:`~kvcompress.DecodingPress`, :class:`~kvcompress.CompressionRatioDecodingPress`
    or :class:`~kvcompress.CAMPress` as kvpress's DecodingPress (so its pipeline compresses while
    decoding, and not at the prefill). CAM's running sums hold ``max_position_embeddings`` entries
    unless the press's ``capacity`` says otherwise."""


class KVCompressPrefillDecodingPress(_DecodingDropIn, _KvpressPrefillDecodingPress):  # type: ignore[misc]
    """A kvcompress :class:`~kvcompress.PrefillDecodingPress` as kvpress's PrefillDecodingPress (its
    pipeline runs it at the prefill and while decoding). The prefilling press must leave every row
    of a layer the same length (no per-head budgets: HF's cache keeps one length per layer)."""


def _decoding(cls):
    def factory(base_press: Any, *args, num_threads: int = 0, **kwargs) -> KVCompressDecodingPress:
        return KVCompressDecodingPress(cls(_unwrap(base_press), *args, **kwargs), num_threads)

    factory.__name__ = cls.__name__
    factory.__doc__ = (f"kvcompress's {cls.__name__} as kvpress's decoding press (kvpress's parameters).\n\n"
                       f"{cls.__doc__}")
    return factory


DecodingPress = _decoding(_p.DecodingPress)
CompressionRatioDecodingPress = _decoding(_p.CompressionRatioDecodingPress)
CAMPress = _decoding(_p.CAMPress)


def PrefillDecodingPress(prefilling_press: Any = None, decoding_press: Any = None, *,
                         num_threads: int = 0) -> KVCompressPrefillDecodingPress:
    """kvcompress's PrefillDecodingPress as kvpress's (kvpress's parameters): ``prefilling_press``
    any press of this module, ``decoding_press`` a :func:`DecodingPress` or
    :func:`CompressionRatioDecodingPress`; either may be None."""
    prefill = None if prefilling_press is None else _unwrap(prefilling_press)
    decoding = decoding_press.press if isinstance(decoding_press, KVCompressDecodingPress) else decoding_press
    return KVCompressPrefillDecodingPress(_p.PrefillDecodingPress(prefill, decoding), num_threads)
