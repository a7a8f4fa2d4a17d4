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

Every press the package binds has a factory. What kvpress draws at each call (LeverageScore's and
Compactor's sketch, CUR's random projection) is drawn from torch's generator as kvpress draws it;
what kvpress downloads for the model (Q-Filter's filters, KVzap's surrogate, LU-KV's budget curve,
DuoAttention's pattern, FastKVzip's gates) is loaded through kvpress's own loaders unless the caller
gives the array. FINCH, KeyRerotation and DMS are instances of kvpress's classes (its pipeline checks
them); FastKVzip evicts across layers when the prefill's context closes; KVzip and KVCompose
subclass kvpress's presses, whose code runs the extra passes while the library scores, plans and
evicts.

kvpress is an optional dependency: importing this module needs it.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from kvpress import BasePress
from kvpress import DMSPress as _KvpressDMSPress
from kvpress import FinchPress as _KvpressFinchPress
from kvpress import KeyRerotationPress as _KvpressKeyRerotationPress
from kvpress import KVComposePress as _KvpressKVComposePress
from kvpress import KVzipPress as _KvpressKVzipPress
from kvpress.presses.base_press import is_prefilling
from kvpress.presses.decoding_press import DecodingPress as _KvpressDecodingPress
from kvpress.presses.prefill_decoding_press import PrefillDecodingPress as _KvpressPrefillDecodingPress
from kvpress.utils import get_prerope_query_states
from transformers.cache_utils import QuantizedCache
from transformers.models.llama.modeling_llama import rotate_half

from . import presses as _p
from .cache import KVCache, _host, compress, rotary_embedding_from_config
from ._core import FastKVzipGate, Observation

__all__ = ["KVCompressPress", "KVCompressFinchPress", "KVCompressKeyRerotationPress", "KVCompressDMSPress",
           "KVCompressFastKVzipPress", "KVCompressKVzipPress", "KVCompressKVComposePress", "wrap",
           "ExpectedAttentionPress", "KnormPress", "StreamingLLMPress", "SnapKVPress", "TOVAPress", "KeyDiffPress",
           "ObservedAttentionPress", "PyramidKVPress", "LagKVPress", "RandomPress", "NonCausalAttnPress", "CapPress",
           "SimLayerKVPress", "LeverageScorePress", "CompactorPress", "CURPress", "QFilterPress", "KVzapPress",
           "FinchPress", "ThinKPress", "AdaKVPress", "CriticalKVPress", "CriticalAdaKVPress", "ChunkKVPress",
           "BlockPress", "KeyRerotationPress", "PerLayerCompressionPress", "ChunkPress", "EntropyGatedChunkKVPress",
           "MergingPress", "LUKVPress", "DuoAttentionPress", "ComposedPress", "DMSPress", "FastKVzipPress",
           "KVzipPress", "KVComposePress", "KVCompressDecodingPress", "KVCompressPrefillDecodingPress",
           "DecodingPress", "CompressionRatioDecodingPress", "PrefillDecodingPress", "CAMPress"]

_ROPES: Dict[int, Any] = {}


def _rope(config: Any):
    key = id(config)
    if key not in _ROPES:
        _ROPES[key] = (config, rotary_embedding_from_config(config))
    return _ROPES[key][1]


def _children(press: Any) -> List[Any]:
    """The presses ``press`` holds (a wrapper's inner press, a composition's presses)."""
    if isinstance(press, _p.ComposedPress):
        return list(press.presses)
    inner = getattr(press, "press", None)
    return [inner] if isinstance(inner, _p.Press) else []


def _tree(press: Any) -> List[Any]:
    """``press`` and every press inside it, depth first."""
    out = [press]
    for child in _children(press):
        out += _tree(child)
    return out


def _needs(press: Any) -> set:
    """What the observation must carry for this press (and the presses it holds)."""
    needs = set()
    for p in _tree(press):
        if isinstance(p, (_p.ExpectedAttentionPress, _p.NonCausalAttnPress, _p.CompactorPress, _p.CapPress)):
            needs |= {"queries", "rope"}
        if isinstance(p, (_p.LeverageScorePress, _p.KeyRerotationPress)):
            needs |= {"rope"}
        if isinstance(p, (_p.SnapKVPress, _p.PyramidKVPress, _p.ThinKPress)):
            needs |= {("window", p.window_size)}
        if isinstance(p, _p.TOVAPress):
            needs |= {("window", 1)}
        if isinstance(p, _p.SimLayerKVPress):
            needs |= {("window", p.n_last)}
        if isinstance(p, _p.FinchPress):
            needs |= {("window", p.window_size or 1)} | ({"rope"} if p.rerotate_keys else set())
        if isinstance(p, _p.ObservedAttentionPress):
            needs |= {"attention"}
        if isinstance(p, (_p.CriticalKVPress, _p.CriticalAdaKVPress)):
            needs |= {"o_proj"}
        if isinstance(p, _p.KVzapPress):
            needs |= {"hidden_states"}
    return needs


def _ratio_holder(press: Any) -> Any:
    """The press whose ``compression_ratio`` is the wrapper's (the innermost one of a chain of
    wrappers without their own), or None for a press without one (SimLayerKV, DuoAttention,
    Composed: kvpress measures theirs)."""
    while not hasattr(type(press), "compression_ratio"):
        inner = getattr(press, "press", None)
        if not isinstance(inner, _p.Press) or isinstance(press, _p.ComposedPress):
            return None
        press = inner
    return press


def _observe(press: Any, module: Any, hidden_states: torch.Tensor, attentions: Optional[torch.Tensor],
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
    else:  # the chunk's length, which the queries give where there are some
        obs.chunk_length = int(hidden_states.shape[1])
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
    if "hidden_states" in needs:
        obs.hidden_states = hidden_states.detach()[:, None]
    return obs


def _f32(t: Any) -> torch.Tensor:
    return torch.as_tensor(t).detach().to("cpu", torch.float32).contiguous()


def _refill(press: _p.Press, name: str, value: torch.Tensor) -> None:
    """Sets the array field ``name`` to ``value``, refilling the held array in place when the shape
    is the same (so the native press and its workspace are kept)."""
    held = getattr(press, name)
    if isinstance(held, torch.Tensor) and held.shape == value.shape:
        held.copy_(value)
    else:
        setattr(press, name, value.contiguous())


def _draw(press: _p.Press, module: Any, keys: torch.Tensor) -> None:
    """Draws what kvpress draws at each call, from torch's generator in kvpress's order and
    dtype, so a seeded run draws the same: LeverageScore's and Compactor's sketch
    ``randn(b, h, d, k) / sqrt(k)``, CUR's projection ``randn(d, 20) / sqrt(20)``. Arrays the caller
    gave are used as they are."""
    b, h, _, d = keys.shape
    draws = press.__dict__.setdefault("_draws", {})
    sketched = isinstance(press, (_p.LeverageScorePress, _p.CompactorPress))
    if sketched and draws.setdefault("sketch", press.sketch is None):
        k = press.sketch_dimension
        _refill(press, "sketch", (torch.randn(b, h, d, k, device=keys.device, dtype=keys.dtype)
                                  * (1 / math.sqrt(k))).to(torch.float32))
    if isinstance(press, _p.CURPress) and press.use_random_leverage and draws.setdefault("projection",
                                                                                        press.projection is None):
        _refill(press, "projection", (torch.randn(d, 20, device=keys.device, dtype=keys.dtype)
                                      / math.sqrt(20)).to(torch.float32))
    if isinstance(press, _p.KVzapPress) and "_kvzap_model" in press.__dict__:
        layer = press.__dict__["_kvzap_model"].layers[module.layer_idx]
        linears = [m for m in ([layer] if isinstance(layer, torch.nn.Linear) else layer)
                   if isinstance(m, torch.nn.Linear)]
        weights = {}
        for i, lin in enumerate(linears, 1):
            # kvpress runs the surrogate in the model's dtype: the weights are rounded to it.
            weights[f"w{i}"] = _f32(lin.weight.to(keys.dtype))
            weights[f"b{i}"] = _f32(lin.bias.to(keys.dtype))
        for name, value in weights.items():
            _refill(press, name, value)


def _load_model_data(press: Any, model: Any) -> None:
    """What kvpress downloads for the model in ``post_init_from_model``, loaded through kvpress's
    own loaders, into the kvcompress press's arrays (left alone where the caller gave them)."""
    name = model.config.name_or_path
    loaded = press.__dict__.setdefault("_loaded", {})
    if isinstance(press, _p.QFilterPress) and loaded.setdefault("q_filters", press.q_filters is None):
        from kvpress.presses.qfilter_press import QFilterPress as _Q

        press.q_filters = _f32(_Q.load_q_filters(name.split("/")[-1]).to(model.dtype))
    if isinstance(press, _p.KVzapPress) and loaded.setdefault("weights", press.w1 is None):
        from kvpress.presses.kvzap_press import KVzapModel

        repo = f"nvidia/KVzap-{press.model_type}-{name.split('/')[-1]}"
        if press.__dict__.get("_kvzap_name") != repo:
            object.__setattr__(press, "_kvzap_model", KVzapModel.from_pretrained(repo))
            object.__setattr__(press, "_kvzap_name", repo)
    if isinstance(press, _p.LUKVPress) and loaded.setdefault("budget_curves", press.budget_curves is None):
        from kvpress.presses import lukv_press as _lukv

        url = _lukv.BUDGET_CURVE_URLS.get((name, type(press.press).__name__))
        if url is None:
            raise KeyError(f"No LU-KV budget curve found for model={name!r} and press={type(press.press).__name__!r}. "
                           f"Available curves: {list(_lukv.BUDGET_CURVE_URLS)}; or give budget_curves=")
        press.budget_curves = _f32(torch.as_tensor(_lukv.load_budget_curve(url)))
    if isinstance(press, _p.DuoAttentionPress) and loaded.setdefault("head_scores", press.head_scores is None):
        from kvpress.presses import duo_attention_press as _duo

        if press.__dict__.get("_on_the_fly_scoring"):
            sink, recent, scores = 128, 256, _duo.duo_attention_on_the_fly(model)
        else:
            sink, recent, scores = _duo.DuoAttentionPress.load_attention_pattern(model)
        press.sink_size, press.recent_size = int(sink), int(recent)
        press.head_scores = _f32(torch.as_tensor(np.asarray(scores)))


def _mask_past_lengths(module: Any, lengths: np.ndarray, full: int) -> None:
    """Per-head lengths: HF's cache keeps one length for every head of a layer, so the layer keeps
    its length and the slots past each head's own go to ``module.masked_key_indices``, which
    kvpress's attention patch masks in later passes (as kvpress's AdaKV does)."""
    b_idx, h_idx, s_idx = [], [], []
    for (b, h), length in np.ndenumerate(lengths):
        s = torch.arange(int(length), full)
        b_idx.append(torch.full_like(s, b))
        h_idx.append(torch.full_like(s, h))
        s_idx.append(s)
    module.masked_key_indices = (torch.cat(b_idx), torch.cat(h_idx), torch.cat(s_idx))


@dataclass
class KVCompressPress(BasePress):
    """A kvcompress press as a kvpress press. ``num_threads=0`` uses every core."""

    press: _p.Press = None  # type: ignore[assignment]
    num_threads: int = 0

    @property
    def compression_ratio(self) -> float:
        """The wrapped press's ratio; for a press without one (SimLayerKV, DuoAttention, Composed),
        the share of entries the last prefill removed, averaged over the layers (kvpress measures
        theirs too)."""
        holder = _ratio_holder(self.press)
        if holder is not None:
            return holder.compression_ratio
        removed = self.__dict__.get("_removed")
        if not removed:
            raise ValueError(f"{type(self.press).__name__}: a forward pass must run before its compression ratio "
                             f"is known")
        return sum(removed.values()) / len(removed)

    @compression_ratio.setter
    def compression_ratio(self, value: float) -> None:
        holder = _ratio_holder(self.press)
        if holder is None:
            raise AttributeError(f"compression ratio cannot be set for {type(self.press).__name__}")
        holder.compression_ratio = value

    def post_init_from_model(self, model: Any) -> None:
        for p in _tree(self.press):
            _load_model_data(p, model)

    def observation(self, module: Any, hidden_states: torch.Tensor, attentions: Optional[torch.Tensor],
                    kwargs: dict) -> Observation:
        """What the press reads, built from the attention layer's forward as kvpress sees it."""
        return _observe(self.press, module, hidden_states, attentions, kwargs)

    def compress(self, module, hidden_states, keys, values, attentions, kwargs):
        holder = _ratio_holder(self.press)
        if holder is not None and holder.compression_ratio == 0:
            return keys, values
        obs = self.observation(module, hidden_states, attentions, kwargs)
        for p in _tree(self.press):
            _draw(p, module, keys)
        cache = KVCache(keys.detach(), values.detach())
        if isinstance(self.press, _p.ThinKPress):
            return self._zero_channels(obs, cache, keys), values
        lengths = _host(compress(self.press, obs, cache, num_threads=self.num_threads))
        return self._finish(module, keys, values, lengths)

    def _finish(self, module: Any, keys: torch.Tensor, values: torch.Tensor, lengths: np.ndarray):
        """The layer's tensors after a compression that left ``lengths`` [batch, kv_heads]."""
        full = keys.shape[2]
        removed = 1 - float(lengths.sum()) / (lengths.size * full)
        self.__dict__.setdefault("_removed", {})[int(module.layer_idx)] = removed
        return _cut(module, keys, values, lengths)

    def _zero_channels(self, obs: Observation, cache: KVCache, keys: torch.Tensor) -> torch.Tensor:
        """ThinK as kvpress applies it: the dropped key channels zeroed in place."""
        _, channels = self.press.compress_keys(obs, cache, num_threads=self.num_threads)
        b, h, _, d = keys.shape
        drop = torch.ones(b, h, d, dtype=torch.bool, device=keys.device)
        drop.scatter_(-1, torch.as_tensor(channels).long().to(keys.device), False)
        return keys.masked_fill_(drop[:, :, None, :], 0)


class KVCompressKeyRerotationPress(KVCompressPress, _KvpressKeyRerotationPress):  # type: ignore[misc]
    """kvcompress's KeyRerotationPress as an instance of kvpress's, which its pipeline checks to
    place the question right after the compressed context."""


class KVCompressFinchPress(KVCompressPress, _KvpressFinchPress):  # type: ignore[misc]
    """kvcompress's FinchPress as an instance of kvpress's: ``update_model_and_tokenizer`` adds the
    delimiter token, kvpress's embedding hook removes it from the prompt and sets ``window_size``
    (the question's tokens after it), and the pipeline places the question right after the
    re-rotated context."""

    @property  # type: ignore[override]
    def window_size(self) -> Optional[int]:
        return self.press.window_size

    @window_size.setter
    def window_size(self, value: Optional[int]) -> None:
        self.press.window_size = value

    @property  # type: ignore[override]
    def rerotate_keys(self) -> bool:
        return self.press.rerotate_keys

    @property  # type: ignore[override]
    def chunk_length(self) -> Optional[int]:
        return self.press.chunk_length

    @property  # type: ignore[override]
    def normalize_scores(self) -> bool:
        return self.press.normalize_scores

    def compress(self, module, hidden_states, keys, values, attentions, kwargs):
        if self.press.compression_ratio != 0 and self.press.window_size is None:
            raise ValueError("FinchPress: window_size is unset: call update_model_and_tokenizer(model, tokenizer) "
                             "and end the context with press.delimiter_token (kvpress's protocol)")
        return super().compress(module, hidden_states, keys, values, attentions, kwargs)


def wrap(press: Any, num_threads: int = 0) -> Any:
    """Any kvcompress press as a kvpress press (FINCH and KeyRerotation as instances of kvpress's
    classes, which its pipeline checks)."""
    if isinstance(press, _p.FinchPress):
        return KVCompressFinchPress(press=press, num_threads=num_threads)
    if isinstance(press, _p.KeyRerotationPress):
        return KVCompressKeyRerotationPress(press=press, num_threads=num_threads)
    if isinstance(press, _p.DMSPress):
        return KVCompressDMSPress(press=press, num_threads=num_threads)
    if isinstance(press, _p.FastKVzipPress):
        return KVCompressFastKVzipPress(press=press, num_threads=num_threads)
    if isinstance(press, (_p.DecodingPress, _p.CompressionRatioDecodingPress, _p.CAMPress)):
        return KVCompressDecodingPress(press, num_threads)
    if isinstance(press, _p.PrefillDecodingPress):
        return KVCompressPrefillDecodingPress(press, num_threads)
    if isinstance(press, _p.KVzipPress):
        return KVCompressKVzipPress(press.compression_ratio, press.layerwise, press.n_sink,
                                    press.kvzip_plus_normalization, press.chunk_size, num_threads)
    if isinstance(press, _p.KVComposePress):
        return KVCompressKVComposePress(press.structured, press.compression_ratio, press.agg_task, press.agg_group,
                                        press.agg_head, press.add_v_norm, press.add_mean_across_heads,
                                        press.keep_token_lower_bound, num_threads)
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
RandomPress = _scorer(_p.RandomPress)
NonCausalAttnPress = _scorer(_p.NonCausalAttnPress)
CapPress = _scorer(_p.CapPress)
SimLayerKVPress = _scorer(_p.SimLayerKVPress)
LeverageScorePress = _scorer(_p.LeverageScorePress)
CompactorPress = _scorer(_p.CompactorPress)
CURPress = _scorer(_p.CURPress)
QFilterPress = _scorer(_p.QFilterPress)
KVzapPress = _scorer(_p.KVzapPress)
FinchPress = _scorer(_p.FinchPress)
ThinKPress = _scorer(_p.ThinKPress)
AdaKVPress = _wrapper(_p.AdaKVPress)
CriticalKVPress = _wrapper(_p.CriticalKVPress)
CriticalAdaKVPress = _wrapper(_p.CriticalAdaKVPress)
ChunkKVPress = _wrapper(_p.ChunkKVPress)
BlockPress = _wrapper(_p.BlockPress)
KeyRerotationPress = _wrapper(_p.KeyRerotationPress)
PerLayerCompressionPress = _wrapper(_p.PerLayerCompressionPress)
ChunkPress = _wrapper(_p.ChunkPress)
EntropyGatedChunkKVPress = _wrapper(_p.EntropyGatedChunkKVPress)
MergingPress = _wrapper(_p.MergingPress)


def LUKVPress(press: Any = None, compression_ratio: float = 0.0, sink: int = 4, window: int = 1, *,
              budget_curves: Any = None) -> KVCompressPress:
    """kvcompress's LUKVPress as a kvpress press (kvpress's parameters; ``press`` defaults to
    ``ExpectedAttentionPress(epsilon=2e-2)``). The budget curve is kvpress's, loaded through
    kvpress's own loader for the model's name and the inner press, unless ``budget_curves`` is
    given (float32 ``[99, num_layers, kv_heads]``)."""
    inner = _p.ExpectedAttentionPress(epsilon=2e-2) if press is None else _unwrap(press)
    return wrap(_p.LUKVPress(inner, compression_ratio, sink, window, budget_curves))


def DuoAttentionPress(head_compression_ratio: float = 0.0, on_the_fly_scoring: bool = False, *,
                      head_scores: Any = None, sink_size: int = 128, recent_size: int = 256) -> KVCompressPress:
    """kvcompress's DuoAttentionPress as a kvpress press (kvpress's parameters). The head scores and
    the sink and recent sizes are kvpress's: the model's trained pattern
    (``DuoAttentionPress.load_attention_pattern``), or with ``on_the_fly_scoring`` kvpress's own
    estimate (``duo_attention_on_the_fly``: 50 BookSum samples through the model, sink 128, recent
    256), each loaded through kvpress when the model is known; or the caller's ``head_scores``
    (float32 ``[num_layers, kv_heads]``) with ``sink_size`` and ``recent_size``."""
    press = _p.DuoAttentionPress(head_compression_ratio, sink_size, recent_size, head_scores)
    object.__setattr__(press, "_on_the_fly_scoring", bool(on_the_fly_scoring))
    return wrap(press)


for _factory, _cls in ((LUKVPress, _p.LUKVPress), (DuoAttentionPress, _p.DuoAttentionPress)):
    _factory.__doc__ = f"{_factory.__doc__}\n\n{_cls.__doc__}"


def ComposedPress(presses: List[Any]) -> KVCompressPress:
    """kvcompress's ComposedPress as a kvpress press: ``presses`` (presses of this module) applied
    one after the other, each to what the previous one kept, each seeing the layer's forward as
    kvpress's ComposedPress hands it."""
    return wrap(_p.ComposedPress([_unwrap(p) for p in presses]))


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


class KVCompressDMSPress(KVCompressPress, _KvpressDMSPress):  # type: ignore[misc]
    """kvcompress's :class:`~kvcompress.DMSPress` as an instance of kvpress's DMSPress (whose
    ``decoding`` the pipeline reads to run it while decoding too): one step per forward pass and
    layer; the entries that left the sliding window below the threshold leave their head's row.
    HF's cache keeps one length for every layer and head, so the layer keeps its length and the
    slots past each head's are masked in later passes (kvpress masks the same entries where they
    are); each decoding pass's new entries, which HF appends after the layer's slots, are moved to
    the end of each head's row before the step."""

    @property  # type: ignore[override]
    def decoding(self) -> bool:
        return self.press.decoding

    @property  # type: ignore[override]
    def threshold(self) -> Optional[float]:
        return self.press.threshold

    @property  # type: ignore[override]
    def sliding_window_size(self) -> int:
        return self.press.sliding_window_size

    @property
    def compression_ratio(self) -> float:
        """kvpress's: removed / (batch · kv_heads · tokens seen), averaged over the layers."""
        return self.press.compression_ratio

    @compression_ratio.setter
    def compression_ratio(self, value: float) -> None:
        raise AttributeError("compression ratio cannot be set for DMSPress")

    def forward_hook(self, module: Any, input: Any, kwargs: dict, output: Any):
        hidden_states = kwargs["hidden_states"]
        q = int(hidden_states.shape[1])
        prefilling = is_prefilling(kwargs["cache_position"], q)
        if not prefilling and not self.press.decoding:
            return output
        idx = int(module.layer_idx)
        cache_layer = kwargs["past_key_values"].layers[idx]
        keys, values = cache_layer.keys, cache_layer.values
        b, h, full, _ = keys.shape
        lengths = np.full((b, h), full, dtype=np.int32)
        steps: Dict[int, np.ndarray] = self.__dict__.setdefault("_lengths", {})  # each layer's row lengths
        before = None if prefilling else steps.get(idx)
        if before is not None and not (before == full - q).all():
            # HF appended the pass's entries after the layer's slots: each head's go to its own row's end.
            new_k, new_v = keys[:, :, full - q:].clone(), values[:, :, full - q:].clone()
            for (bb, hh), n in np.ndenumerate(before):
                keys[bb, hh, n:n + q] = new_k[bb, hh]
                values[bb, hh, n:n + q] = new_v[bb, hh]
            lengths = (before + q).astype(np.int32)
        obs = self.observation(module, hidden_states, output[1] if len(output) > 1 else None, kwargs)
        position_ids = kwargs.get("position_ids")
        if not prefilling and position_ids is not None:
            obs.position = int(position_ids[0, 0])
        for p in _tree(self.press.press):
            _draw(p, module, keys)
        cache = KVCache(keys.detach(), values.detach(), lengths)
        self.press.step(obs, cache, num_threads=self.num_threads)
        after = np.array(_host(cache.lengths), dtype=np.int32)
        steps[idx] = after
        # Every layer keeps the pass's length (the pipeline's causal mask is sized by layer 0's cache).
        if (after == full).all():
            module.masked_key_indices = None
        else:
            _mask_past_lengths(module, after, full)
        return output

    def compress(self, module, hidden_states, keys, values, attentions, kwargs):
        raise NotImplementedError("DMSPress steps in its forward hook (one step per pass and layer)")


def _fast_kvzip_gate(module: Any) -> FastKVzipGate:
    """kvpress's trained gate module as the library's gate (float32 copies it holds)."""
    w = {k: v.detach().to(torch.float32).contiguous().numpy() for k, v in module.state_dict().items()}
    return FastKVzipGate(w["q_proj.weight"], w["q_proj.bias"], w["k_proj.weight"], w["q_norm.weight"],
                         w["k_norm.weight"], w["k_base"], w["b"], float(module.q_norm.variance_epsilon))


class KVCompressFastKVzipPress(KVCompressPress):
    """kvcompress's :class:`~kvcompress.FastKVzipPress` as kvpress runs it: each layer's gate scores
    its attention input during the prefill, and when the prefill's context closes the counts are
    chosen across layers and each layer evicts its lowest entries across its kv heads (the slots
    past each head's new length are masked in later passes, where kvpress masks the evicted
    entries in place). The gates are kvpress's, loaded through kvpress's ``load_fastkvzip`` for
    the model's name (or the caller's ``gates``: one :class:`kvcompress.FastKVzipGate` per layer)."""

    gates: Optional[List[Any]] = None

    def post_init_from_model(self, model: Any) -> None:
        if self.gates is None:
            from kvpress.presses import fastkvzip_press as _fk

            self.gates = [_fast_kvzip_gate(m) for m in _fk.load_fastkvzip(model.config.name_or_path, device="cpu")]

    @contextmanager
    def __call__(self, model: Any):
        self._scores: Dict[int, Any] = {}
        self._layers: Dict[int, Any] = {}
        with BasePress.__call__(self, model):
            yield
        self._evict()

    def forward_hook(self, module: Any, input: Any, kwargs: dict, output: Any):
        hidden_states = kwargs["hidden_states"]
        if not is_prefilling(kwargs["cache_position"], hidden_states.shape[1]):
            return output
        idx = int(module.layer_idx)
        self._scores[idx] = self.press.score_layer(self.gates[idx], _f32(hidden_states).numpy(),  # type: ignore[index]
                                                   num_threads=self.num_threads)
        self._layers[idx] = (module, kwargs["past_key_values"].layers[idx])
        return output

    def compress(self, module, hidden_states, keys, values, attentions, kwargs):
        raise NotImplementedError("FastKVzipPress compresses when the prefill's context closes (every layer at once)")

    def _evict(self) -> None:
        if self.press.compression_ratio <= 0 or not self._scores:
            return
        layers = sorted(self._scores)
        scores = np.stack([self._scores[layer] for layer in layers])
        for layer, s, n_pruned in zip(layers, scores, self.press.pruned_counts(scores)):
            module, cache_layer = self._layers[layer]
            cache = KVCache(cache_layer.keys.detach(), cache_layer.values.detach())
            lengths = _host(self.press.evict(cache, np.ascontiguousarray(s), n_pruned, num_threads=self.num_threads))
            _cut(module, cache_layer.keys, cache_layer.values, lengths, keep_length=True)


def DMSPress(press: Any, threshold: Optional[float] = None, sliding_window_size: int = 128,
             decoding: bool = False) -> KVCompressDMSPress:
    """kvcompress's DMSPress as kvpress's (kvpress's parameters); see :class:`KVCompressDMSPress`."""
    return wrap(_p.DMSPress(_unwrap(press), threshold, sliding_window_size, decoding))  # type: ignore[return-value]


def FastKVzipPress(compression_ratio: float = 0.0, layerwise: bool = False, n_sink: int = 4, window_size: int = 4096,
                   window_ratio: float = 0.02, *, gates: Optional[List[Any]] = None) -> KVCompressFastKVzipPress:
    """kvcompress's FastKVzipPress as a kvpress press (kvpress's parameters; ``gates``: the caller's,
    one :class:`kvcompress.FastKVzipGate` per layer, instead of kvpress's download)."""
    out = KVCompressFastKVzipPress(press=_p.FastKVzipPress(compression_ratio, layerwise, n_sink, window_size,
                                                           window_ratio))
    out.gates = gates
    return out


def _cut(module: Any, keys: torch.Tensor, values: torch.Tensor, lengths: np.ndarray, keep_length: bool = False):
    """The layer's tensors after a compression that left ``lengths`` [batch, kv_heads]: cut to the
    common length, or kept whole with the slots past each head's length masked (always kept whole
    with ``keep_length``: presses that choose each layer's count across layers, whose layers would
    otherwise differ in length, which the pipeline's causal mask, sized by layer 0's cache, cannot
    take)."""
    n = int(lengths.max())
    if not keep_length and (lengths == n).all():
        return keys[:, :, :n].contiguous(), values[:, :, :n].contiguous()
    _mask_past_lengths(module, lengths, keys.shape[2])
    return keys, values


@dataclass
class KVCompressKVzipPress(_KvpressKVzipPress):
    """kvcompress's :class:`~kvcompress.KVzipPress` in kvpress's pipeline. kvpress's own KVzipPress
    runs the reconstruction passes (its prompt, its chunks, through the model over the full
    cache, when the prefill's context closes); in each pass and layer the library scores the chunk
    (``KVzipPress.score_chunk``, from the pass's pre-RoPE queries), then protects the sinks,
    chooses each layer's count across layers and evicts each layer's lowest entries across its kv
    heads (the slots past each head's new length are masked in later passes, where kvpress masks
    the evicted entries in place). Batch 1, as kvpress."""

    num_threads: int = 0

    @property
    def press(self) -> _p.KVzipPress:
        """The kvcompress press of these parameters."""
        return _p.KVzipPress(self.compression_ratio, self.layerwise, self.n_sink, self.kvzip_plus_normalization,
                             self.chunk_size)

    def prepare(self, model, tokenizer, prev_postfix_size=8):
        pairs = super().prepare(model, tokenizer, prev_postfix_size)
        config = model.config
        self._kvc_scores = np.zeros((config.num_hidden_layers, config.num_key_value_heads, self.context_length),
                                    dtype=np.float32)
        return pairs

    def score_kvzip(self, module, hidden_states, keys, values, attentions, kwargs):
        obs = Observation(layer_idx=int(module.layer_idx), num_layers=int(module.config.num_hidden_layers),
                          position=int(kwargs["cache_position"][0]))
        obs.queries = get_prerope_query_states(module, hidden_states).detach()
        obs.rope = _rope(module.config)
        if self.kvzip_plus_normalization:
            obs.hidden_states = hidden_states.detach()[:, None]
            obs.output_projection = module.o_proj.weight.detach()
        self.press.score_chunk(obs, KVCache(keys.detach(), values.detach()), self.context_length, self.start_idx,
                               self.end_idx, self._kvc_scores[int(module.layer_idx)], num_threads=self.num_threads)
        return keys[:, :, : self.context_length], values[:, :, : self.context_length]

    def compress_post(self, model):
        if self.compression_ratio <= 0:
            return
        press = self.press
        scores = press.protect_sinks(self._kvc_scores)
        for layer, n_pruned in enumerate(press.pruned_counts(scores)):
            module = model.model.layers[layer].self_attn
            cache_layer = self._cache.layers[layer]
            cache = KVCache(cache_layer.keys.detach(), cache_layer.values.detach())
            lengths = _host(press.evict(cache, scores[layer], n_pruned, num_threads=self.num_threads))
            _cut(module, cache_layer.keys, cache_layer.values, lengths, keep_length=True)


@dataclass
class KVCompressKVComposePress(_KvpressKVComposePress):
    """kvcompress's :class:`~kvcompress.KVComposePress` in kvpress's pipeline. kvpress's own
    KVComposePress runs the prefill and its replay pass (eager attention); the library folds each
    layer's replay attention into its statistics (``KVComposePress.statistics``), plans every
    (layer, kv head)'s scores and count, and compacts each layer's context. Structured, the layer
    keeps only its kept context entries (as kvpress); unstructured, each head's row is compacted
    within the context and the slots past its length are masked, and the replay's entries stay in
    the cache after the context, as kvpress leaves them."""

    num_threads: int = 0

    @property
    def press(self) -> _p.KVComposePress:
        """The kvcompress press of these parameters."""
        return _p.KVComposePress(self.structured, self.compression_ratio, self.agg_task, self.agg_group, self.agg_head,
                                 self.add_v_norm, self.add_mean_across_heads, self.keep_token_lower_bound)

    def _init_statistics(self):
        self._kvc_stats = self.press.statistics(self.num_layers, self.num_att_heads, self.context_len)

    def forward_hook(self, module, input, kwargs, output):
        attention = output[1]
        if attention is None:
            raise ValueError("KVComposePress needs the replay pass's attention weights (kvpress's context switches "
                             "the model to eager attention)")
        if attention.shape[3] != attention.shape[2]:  # a replay pass (the prefill's attention is square)
            self._kvc_stats.add(int(module.layer_idx), attention.detach(), num_threads=self.num_threads)
        return (output[0], None) + tuple(output[2:])  # as kvpress: the weights are not kept

    def prepare_important_masks(self):
        press = self.press
        norms = None
        if self.add_v_norm:
            norms = np.stack([press.value_norms(KVCache(layer.keys.detach(), layer.values.detach()),
                                                self.context_len) for layer in self.cache.layers])
        self._kvc_plan = press.plan(self._kvc_stats, self.num_kv_heads, norms)

    def compress_cache(self, model):
        n = self.context_len
        for layer, cache_layer in enumerate(self.cache.layers):
            module = model.model.layers[layer].self_attn
            keys, values = cache_layer.keys, cache_layer.values
            context = KVCache(keys.detach()[:, :, :n], values.detach()[:, :, :n])
            lengths = _host(self.press.compress(self._kvc_plan, layer, context, num_threads=self.num_threads))
            if self.structured:
                cache_layer.keys, cache_layer.values = _cut(module, keys[:, :, :n], values[:, :, :n], lengths)
            else:
                _mask_past_lengths(module, lengths, n)


def KVzipPress(compression_ratio: float = 0.0, layerwise: bool = False, n_sink: int = 4,
               kvzip_plus_normalization: bool = False, chunk_size: int = 2048, *,
               num_threads: int = 0) -> KVCompressKVzipPress:
    """kvcompress's KVzipPress in kvpress's pipeline (kvpress's parameters); see
    :class:`KVCompressKVzipPress`."""
    return KVCompressKVzipPress(compression_ratio, layerwise, n_sink, kvzip_plus_normalization, chunk_size,
                                num_threads)


def KVComposePress(structured: bool = True, compression_ratio: float = 0, agg_task: str = "max",
                   agg_group: str = "mean", agg_head: str = "mean", add_v_norm: bool = False,
                   add_mean_across_heads: bool = True, keep_token_lower_bound: int = 0, *,
                   num_threads: int = 0) -> KVCompressKVComposePress:
    """kvcompress's KVComposePress in kvpress's pipeline (kvpress's parameters); see
    :class:`KVCompressKVComposePress`."""
    return KVCompressKVComposePress(structured, compression_ratio, agg_task, agg_group, agg_head, add_v_norm,
                                    add_mean_across_heads, keep_token_lower_bound, num_threads)
