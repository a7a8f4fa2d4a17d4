"""Presses with kvpress 0.5.5's names, parameters and defaults.

Each press is a dataclass; its C++ counterpart (``press.native``) is built on first use and
rebuilt when a field changes. The native press holds the workspace that ``compress`` reuses, so
keep one press object per compression site to allocate nothing after the first call.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, List, Optional

from . import _core

__all__ = [
    "Press",
    "ExpectedAttentionPress",
    "ExpectedAttentionStatsPress",
    "KnormPress",
    "KeyDiffPress",
    "StreamingLLMPress",
    "LagKVPress",
    "RandomPress",
    "SnapKVPress",
    "PyramidKVPress",
    "TOVAPress",
    "ObservedAttentionPress",
    "NonCausalAttnPress",
    "SimLayerKVPress",
    "LeverageScorePress",
    "CompactorPress",
    "CURPress",
    "QFilterPress",
    "KVzapPress",
    "CapPress",
    "FinchPress",
    "AdaKVPress",
    "CriticalKVPress",
    "CriticalAdaKVPress",
    "KeyRerotationPress",
    "ChunkPress",
    "ChunkKVPress",
    "BlockPress",
    "PerLayerCompressionPress",
    "EntropyGatedChunkKVPress",
    "MergingPress",
    "LUKVPress",
    "DuoAttentionPress",
    "ComposedPress",
    "duo_attention_sample_scores",
    "ThinKPress",
    "KVComposePress",
    "FastKVzipPress",
    "KVzipPress",
    "DMSPress",
    "DecodingPress",
    "CompressionRatioDecodingPress",
    "PrefillDecodingPress",
    "CAMPress",
]


class Press:
    """Base of every press: caches the native press until a field (or the inner press) changes.

    A subclass names its ``_core`` factory in ``_factory``, which takes the dataclass's fields in
    their declared order (a subclass with other arguments overrides ``_args``)."""

    _factory: ClassVar[str] = ""

    def __setattr__(self, name: str, value) -> None:
        object.__setattr__(self, name, value)
        if not name.startswith("_"):
            object.__setattr__(self, "_native", None)

    def _args(self) -> List[Any]:
        return [getattr(self, f.name) for f in fields(self)]  # type: ignore[arg-type]

    def _build(self) -> _core.NativePress:
        return getattr(_core, self._factory)(*self._args())

    def _inners(self) -> List["Press"]:
        """The presses this one wraps (their native presses are part of its own)."""
        return []

    @property
    def native(self) -> _core.NativePress:
        """The C++ press (and its workspace)."""
        n = self.__dict__.get("_native")
        inner = [p.native if isinstance(p, Press) else p for p in self._inners()]
        cached = self.__dict__.get("_inner_natives", [])
        if n is None or len(inner) != len(cached) or any(a is not b for a, b in zip(inner, cached)):
            n = self._build()
            object.__setattr__(self, "_native", n)
            object.__setattr__(self, "_inner_natives", inner)
        return n


def _inner_native(press: Press, wrapper: str) -> _core.NativePress:
    if not isinstance(press, Press):
        raise _core.Error(f"{wrapper}: press must be a kvcompress press, got {type(press).__name__}")
    return press.native


class Wrapper(Press):
    """A press around an inner press (its first field, ``press``), passed to the factory natively."""

    def _inners(self):
        return [self.press]  # type: ignore[attr-defined]

    def _args(self) -> List[Any]:
        args = super()._args()
        return [_inner_native(args[0], type(self).__name__), *args[1:]]


def _array_field() -> Any:
    """A tensor field the press reads in place (not compared: arrays have no truth value)."""
    return field(default=None, compare=False)


@dataclass
class ExpectedAttentionPress(Press):
    """Expected Attention (arXiv 2510.00636): scores each key by the attention that future queries,
    modelled as a Gaussian from the chunk's pre-RoPE queries and rotated over the next
    ``n_future_positions``, are expected to give it, times the value norm. Needs
    ``Observation(queries=..., rope=...)``."""

    _factory = "expected_attention"
    compression_ratio: float = 0.0
    n_future_positions: int = 512
    n_sink: int = 4
    use_covariance: bool = True
    use_vnorm: bool = True
    epsilon: float = 0.0


@dataclass
class ExpectedAttentionStatsPress(Press):
    """Expected Attention from precomputed per-layer query statistics
    (``Observation(stats_mean=..., stats_covariance=..., rope=...)``)."""

    _factory = "expected_attention_stats"
    compression_ratio: float = 0.0
    n_future_positions: int = 512
    n_sink: int = 4
    use_covariance: bool = True
    use_vnorm: bool = True
    epsilon: float = 0.0


@dataclass
class KnormPress(Press):
    """Keeps the keys of smallest L2 norm."""

    _factory = "knorm"
    compression_ratio: float = 0.0


@dataclass
class KeyDiffPress(Press):
    """Keeps the keys least similar (cosine) to the mean key."""

    _factory = "key_diff"
    compression_ratio: float = 0.0


@dataclass
class StreamingLLMPress(Press):
    """Keeps the first ``n_sink`` entries and the most recent ones."""

    _factory = "streaming_llm"
    compression_ratio: float = 0.0
    n_sink: int = 4


@dataclass
class LagKVPress(Press):
    """LagKV: scores each partition of ``lag_size`` entries against the statistics of the next one."""

    _factory = "lag_kv"
    compression_ratio: float = 0.0
    n_sink: int = 4
    lag_size: int = 128
    cross_scoring: bool = False


@dataclass
class RandomPress(Press):
    """Uniform random scores, reproducible with ``seed`` (not torch's generator: same distribution,
    different draws)."""

    _factory = "random"
    compression_ratio: float = 0.0
    seed: Optional[int] = None


@dataclass
class SnapKVPress(Press):
    """SnapKV: the attention of the last ``window_size`` queries (``Observation(window_queries=...)``,
    post-RoPE, or ``attention=...``), pooled over ``kernel_size``."""

    _factory = "snap_kv"
    compression_ratio: float = 0.0
    window_size: int = 64
    kernel_size: int = 5


@dataclass
class PyramidKVPress(Press):
    """SnapKV's scores with a per-layer budget decreasing linearly with depth (``beta``); needs
    ``Observation(layer_idx=..., num_layers=...)``."""

    _factory = "pyramid_kv"
    compression_ratio: float = 0.0
    window_size: int = 64
    kernel_size: int = 5
    beta: int = 20

    def _args(self):
        return [self.compression_ratio, self.window_size, self.kernel_size, float(self.beta)]


@dataclass
class TOVAPress(Press):
    """TOVA: the attention of the last query, averaged over the query heads (``window_queries`` of
    length 1, post-RoPE, or ``attention``)."""

    _factory = "tova"
    compression_ratio: float = 0.0


@dataclass
class ObservedAttentionPress(Press):
    """The attention the chunk's queries gave each key (``Observation(attention=...)``)."""

    _factory = "observed_attention"
    compression_ratio: float = 0.0


@dataclass
class NonCausalAttnPress(Press):
    """Non-causal chunked attention of the chunk's queries (``window_queries`` over the whole chunk)."""

    _factory = "non_causal_attn"
    compression_ratio: float = 0.0
    chunk_size: int = 256


@dataclass
class LeverageScorePress(Press):
    """LeverageScore (arXiv 2507.08143): each key's approximate leverage among the row's pre-RoPE keys
    (the cached keys rotated back; ``Observation(rope=...)``), through a right sketch, z-scored over
    the layer. ``sketch`` is float32 ``[batch, kv_heads, head_dim, sketch_dimension]``: kvpress draws
    it from torch's generator at each call (N(0, 1/sketch_dimension)); here the caller gives it and
    the press reads it in place (refill the same array to change it without rebuilding the press).
    Prefill only."""

    _factory = "leverage_score"
    compression_ratio: float = 0.0
    sketch_dimension: int = 48
    sketch: Any = _array_field()


@dataclass
class CompactorPress(Press):
    """Compactor (arXiv 2507.08143): ``blending`` × LeverageScore + NonCausalAttn, both z-scored, on
    the prompt without its first ``sink_size_start`` and last ``sink_size_end`` tokens (always kept);
    ``blending`` None means the compression ratio. Needs ``Observation(queries=..., rope=...)`` and the
    ``sketch`` of :class:`LeverageScorePress`. Prefill only."""

    _factory = "compactor"
    compression_ratio: float = 0.0
    sink_size_start: int = 8
    sink_size_end: int = 4
    chunk_size: int = 256
    sketch_dimension: int = 48
    blending: Optional[float] = None
    sketch: Any = _array_field()


@dataclass
class CURPress(Press):
    """CUR (CurDKV, arXiv 2509.15038): approximate leverage of keys and values by their squared norms
    (``leverage_type``: ``key``, ``value``, ``kv_avg`` or ``kv_product``), normalised within windows
    of ``local_window_size`` with ``use_local_approximation``; the first ``num_sinks`` are kept. With
    ``use_random_leverage`` the norms are of k·G and v·G for the caller's ``projection`` G, float32
    ``[head_dim, 20]`` (kvpress draws N(0, 1)/√20 at each call)."""

    _factory = "cur"
    compression_ratio: float = 0.0
    num_sinks: int = 4
    leverage_type: str = "kv_product"
    use_random_leverage: bool = False
    use_local_approximation: bool = True
    local_window_size: int = 16
    projection: Any = _array_field()


@dataclass
class QFilterPress(Press):
    """Q-Filter (arXiv 2503.02812): score = −⟨f, k⟩ with a learned filter f per (layer, kv head) on the
    cached keys. ``q_filters`` is float32 ``[num_layers, num_kv_heads, head_dim]`` (kvpress loads
    ``nthngdy/<model>_qfilt``'s ``q_filters`` from the Hugging Face hub; here the caller does); the
    layer is ``Observation(layer_idx=...)``."""

    _factory = "q_filter"
    compression_ratio: float = 0.0
    q_filters: Any = _array_field()


@dataclass
class KVzapPress(Press):
    """KVzap (arXiv 2601.07891): a small learned surrogate of KVzip+ scores each entry from the
    attention input (``Observation(hidden_states=...)``, ``[batch, 1, q_len, hidden_size]`` after
    input_layernorm; a prefill: every row holds the chunk's tokens). The surrogate is one layer's,
    in ``nn.Linear``'s layout, float32: ``model_type="linear"``: ``w1`` ``[kv_heads, hidden_size]``,
    ``b1`` ``[kv_heads]``; ``"mlp"``: ``w1`` ``[hidden_dim, hidden_size]``, ``b1``, then GELU,
    ``w2`` ``[kv_heads, hidden_dim]``, ``b2`` (kvpress downloads ``nvidia/KVzap-<type>-<model>``,
    whose ``layers.<l>.*`` tensors these are). One press per layer, or set the weights per layer."""

    _factory = "kvzap"
    compression_ratio: float = 0.0
    model_type: str = "mlp"
    w1: Any = _array_field()
    b1: Any = _array_field()
    w2: Any = _array_field()
    b2: Any = _array_field()


@dataclass
class CapPress(Press):
    """CAP (arXiv 2604.25975): a value's leverage under a capacity matrix weighted by each key's
    cosine to the query anchor (the chunk's mean pre-RoPE query, rotated as Expected Attention
    does); the first ``n_sink`` are kept. Needs ``Observation(queries=..., rope=...)``."""

    _factory = "cap"
    compression_ratio: float = 0.0
    tau: float = 5.0
    n_future_positions: int = 512
    n_sink: int = 4
    epsilon: float = 1e-6


@dataclass
class FinchPress(Press):
    """FINCH (TACL 2024): the prompt is context + question, and the question's last ``window_size``
    tokens (``Observation(window_queries=...)``, post-RoPE, or ``attention``) score the context; the
    window is kept. Keeps the top ``int(n(1 − r))`` per row, or per chunk of ``chunk_length``;
    ``rerotate_keys`` re-rotates the kept keys to their new slots (``Observation(rope=...)``).
    kvpress finds ``window_size`` from a delimiter token its tokenizer hook removes; here the caller
    gives it (required)."""

    _factory = "finch"
    compression_ratio: float = 0.0
    chunk_length: Optional[int] = None
    normalize_scores: bool = True
    rerotate_keys: bool = True
    window_size: Optional[int] = None


@dataclass
class SimLayerKVPress(Press):
    """SimLayerKV: layers whose last queries attend mostly to the initial and recent entries keep
    only those."""

    _factory = "sim_layer_kv"
    lazy_threshold: float = 1.0
    n_last: int = 1
    n_recent: int = 1024
    n_initial: int = 4


@dataclass
class AdaKVPress(Wrapper):
    """AdaKV: the inner scorer's entries selected across the heads of a sequence, each head keeping
    at least ``alpha_safeguard`` of its share. Heads really get different lengths."""

    _factory = "adakv"
    press: Press = None  # type: ignore[assignment]
    alpha_safeguard: float = 0.20


@dataclass
class CriticalKVPress(Wrapper):
    """CriticalKV: a first stage by the inner scores, then the rest by score × ‖W_o v‖₁
    (``Observation(output_projection=...)``)."""

    _factory = "critical_kv"
    press: Press = None  # type: ignore[assignment]
    epsilon: float = 1e-4
    first_stage_ratio: float = 0.5


@dataclass
class CriticalAdaKVPress(Wrapper):
    """CriticalKV with AdaKV's budgets across heads."""

    _factory = "critical_adakv"
    press: Press = None  # type: ignore[assignment]
    alpha_safeguard: float = 0.20
    epsilon: float = 1e-4
    first_stage_ratio: float = 0.5


@dataclass
class KeyRerotationPress(Wrapper):
    """Compresses with the inner press, then re-rotates each kept key to its new slot's position
    (``Observation(rope=...)``), so the cache looks as if only the kept tokens had been seen."""

    _factory = "key_rerotation"
    press: Press = None  # type: ignore[assignment]


@dataclass
class ChunkPress(Wrapper):
    """FINCH's chunked compression: the cache is cut into chunks of ``chunk_length`` slots and each
    is compressed on its own, the inner press scoring only that chunk (with the chunk's rows of a
    prefill's ``queries``; window queries and attention describe the whole sequence and are not
    handed on), so the whole context is compressed uniformly: each chunk keeps
    ``max(1, int(len · (1 − r)))``."""

    _factory = "chunk"
    press: Press = None  # type: ignore[assignment]
    chunk_length: int = 1024


@dataclass
class ChunkKVPress(Wrapper):
    """ChunkKV: keeps whole chunks of ``chunk_length`` tokens by their summed inner scores, the same
    chunks in every head."""

    _factory = "chunk_kv"
    press: Press = None  # type: ignore[assignment]
    chunk_length: int = 20


@dataclass
class BlockPress(Wrapper):
    """Compresses block by block (``block_size`` entries), each block scored with the survivors of
    the previous ones."""

    _factory = "block"
    press: Press = None  # type: ignore[assignment]
    block_size: int = 128


@dataclass
class PerLayerCompressionPress(Wrapper):
    """The inner press with ``compression_ratios[layer_idx]`` as its ratio."""

    _factory = "per_layer_compression"
    press: Press = None  # type: ignore[assignment]
    compression_ratios: List[float] = field(default_factory=list)

    def _args(self):
        inner, ratios = super()._args()
        return [inner, [float(r) for r in ratios]]


@dataclass
class EntropyGatedChunkKVPress(Wrapper):
    """ChunkKV whose chunks are gated by the entropy of their token scores: an important chunk whose
    score comes from a few spiky tokens keeps only its ``low_entropy_chunk_length`` best tokens, and
    the budget it frees goes to further chunks. The same tokens are kept in every kv head."""

    _factory = "entropy_gated_chunk_kv"
    press: Press = None  # type: ignore[assignment]
    chunk_length: int = 10
    low_entropy_chunk_length: int = 4


@dataclass
class MergingPress(Wrapper):
    """Merge-on-evict: the inner press chooses the kept entries, and each evicted entry's value is
    folded into the kept entry whose key is most cosine-similar (at least ``similarity_threshold``;
    the ``merge_fraction`` most similar evicted entries merge). Writes the kept values in place."""

    _factory = "merging"
    press: Press = None  # type: ignore[assignment]
    similarity_threshold: float = 0.0
    merge_fraction: float = 1.0


def _lukv_default_press() -> Press:
    return ExpectedAttentionPress(epsilon=2e-2)


@dataclass
class LUKVPress(Wrapper):
    """LU-KV (arXiv 2602.08585): head-wise budgets from a budget curve computed offline for a model
    and its scorer. ``budget_curves`` is float32 ``[99, num_layers, kv_heads]``: for target t % (row
    t − 1), each head's fraction of entries to remove (kvpress downloads the one curve it knows;
    here the caller gives it). The first ``sink`` and last ``window`` entries are kept. Heads really
    get different lengths."""

    _factory = "lukv"
    press: Press = field(default_factory=_lukv_default_press)
    compression_ratio: float = 0.0
    sink: int = 4
    window: int = 1
    budget_curves: Any = _array_field()


@dataclass
class DuoAttentionPress(Press):
    """DuoAttention (arXiv 2410.10819): the ``head_compression_ratio`` share of (layer, kv head) pairs
    with the lowest ``head_scores`` (float32 ``[num_layers, kv_heads]``) become streaming heads, which
    keep only ``sink_size`` leading and ``recent_size`` trailing entries. kvpress downloads the trained
    pattern with its sink and recent sizes, or estimates the scores on the fly
    (``on_the_fly_scoring``, sink 128 and recent 256) from 50 BookSum samples; here the caller gives
    the scores: the pattern's, or :func:`duo_attention_sample_scores` averaged over its own samples.
    Needs ``Observation(layer_idx=...)``."""

    _factory = "duo_attention"
    head_compression_ratio: float = 0.0
    sink_size: int = 128
    recent_size: int = 256
    head_scores: Any = _array_field()


@dataclass
class ComposedPress(Press):
    """The ``presses`` applied one after the other, each to what the previous one kept; each receives
    the caller's observation unchanged, as in kvpress (a press that reads attention over the whole
    prompt cannot follow one that shortened the rows)."""

    _factory = "composed"
    presses: List[Press] = field(default_factory=list)

    def _inners(self):
        return list(self.presses)

    def _args(self):
        return [[_inner_native(p, "ComposedPress") for p in self.presses]]


def duo_attention_sample_scores(mean_query: Any, mean_key: Any, rope: _core.RotaryEmbedding, q_len: int) -> Any:
    """DuoAttention's on-the-fly head scores of one sample: float32 ``[kv_heads]`` from the sample's
    pre-RoPE queries ``[q_heads, head_dim]`` and keys ``[kv_heads, head_dim]`` averaged over its
    ``q_len`` tokens (kvpress averages these over 50 BookSum samples)."""
    import numpy as np

    out = np.empty(int(mean_key.shape[0]), dtype=np.float32)
    _core.duo_attention_sample_scores(mean_query, mean_key, rope, q_len, out)
    return out


@dataclass
class ThinKPress:
    """ThinK (arXiv 2407.21018): prunes key *channels*, not entries. Channel c of a kv head scores
    the mean squared post-RoPE query of the chunk's last ``window_size`` tokens
    (``Observation(window_queries=...)``) times the mean squared cached key; each row drops its
    ``int(head_dim · key_channel_compression_ratio)`` lowest. kvpress zeroes the dropped channels in
    place, which saves no memory; here :meth:`compress_keys` writes the kept channels of every key
    packed (``[batch, kv_heads, capacity, kept]``) with each row's channel indices, so an engine can
    store keys at ``kept`` channels (attention over them is q·k on the kept channels, what kvpress's
    zeroed keys give). The cache itself is not modified, so ThinK is not a press for
    :func:`kvcompress.compress`."""

    key_channel_compression_ratio: float = 0.0
    window_size: int = 32

    def __setattr__(self, name: str, value) -> None:
        object.__setattr__(self, name, value)
        if not name.startswith("_"):
            object.__setattr__(self, "_native", None)

    @property
    def native(self) -> _core.ThinK:
        """The C++ press (and its workspace)."""
        n = self.__dict__.get("_native")
        if n is None:
            n = _core.ThinK(self.key_channel_compression_ratio, self.window_size)
            object.__setattr__(self, "_native", n)
        return n

    @property
    def compression_ratio(self) -> float:
        """kvpress's read-only ratio: half the channel ratio (keys only, values untouched)."""
        return self.key_channel_compression_ratio / 2

    def kept_channels(self, head_dim: int) -> int:
        """Channels each key keeps: ``head_dim - int(head_dim * key_channel_compression_ratio)``."""
        return self.native.kept_channels(head_dim)

    def channel_scores(self, observation: _core.Observation, cache: Any, *, num_threads: int = 0) -> Any:
        """The channel scores, float32 ``[batch, kv_heads, head_dim]`` (higher means keep)."""
        import numpy as np

        b, h, _, d = cache.shape
        out = np.empty((b, h, d), dtype=np.float32)
        self.native.channel_scores(observation, cache._core, out, num_threads)
        return out

    def compress_keys(self, observation: _core.Observation, cache: Any, *, out: Any = None,
                      num_threads: int = 0) -> Any:
        """``(packed_keys, channels)``: each row's kept channels, int32 ``[batch, kv_heads, kept]``
        ascending, and the packed keys of its live entries, ``[batch, kv_heads, capacity, kept]`` of
        the cache's dtype (a NumPy array, or a torch tensor when the keys are torch's). ``out`` may
        give both, C-contiguous; they must not share memory with the cache."""
        import numpy as np

        b, h, n, d = cache.shape
        kept = self.kept_channels(d)
        if out is None:
            keys = cache._tensors[0]
            if type(keys).__module__.startswith("torch"):
                import torch

                out = (torch.empty((b, h, n, kept), dtype=keys.dtype), np.empty((b, h, kept), dtype=np.int32))
            else:
                out = (np.empty((b, h, n, kept), dtype=keys.dtype), np.empty((b, h, kept), dtype=np.int32))
        packed, channels = out
        self.native.compress_keys(observation, cache._core, packed, channels, num_threads)
        return packed, channels


@dataclass
class KVComposePress:
    """KVCompose (arXiv 2509.05165): budgets across layers and heads from the attention of a replay
    pass over the context (the context, or the prompts the engine expects, fed again after the
    prefill). Three steps, each the library's: :meth:`statistics` folds each layer's replay
    attention in (``agg_task`` over the batch and the replay rows); :meth:`plan` gives every
    (layer, kv head) its scores and count (the same count in every head of a layer when
    ``structured``; ``add_v_norm`` needs :meth:`value_norms` of every layer); :meth:`compress`
    compacts one layer's cache to the plan. kvpress masks the losers when unstructured; here each
    head's row really shortens. Not a press for :func:`kvcompress.compress`: it needs every layer."""

    structured: bool = True
    compression_ratio: float = 0.0
    agg_task: str = "max"
    agg_group: str = "mean"
    agg_head: str = "mean"
    add_v_norm: bool = False
    add_mean_across_heads: bool = True
    keep_token_lower_bound: int = 0

    def config(self) -> _core.KVComposeConfig:
        """The C++ parameters (validated)."""
        return _core.KVComposeConfig(self.structured, self.compression_ratio, self.agg_task, self.agg_group,
                                     self.agg_head, self.add_v_norm, self.add_mean_across_heads,
                                     self.keep_token_lower_bound)

    def statistics(self, num_layers: int, q_heads: int, context_length: int) -> _core.KVComposeStatistics:
        """Empty statistics; ``add(layer, attention)`` folds in a replay pass of a layer (attention
        ``[batch, q_heads, replay_len, n]`` over the context's keys and the replay's own)."""
        return _core.KVComposeStatistics(self.config(), num_layers, q_heads, context_length)

    def plan(self, statistics: _core.KVComposeStatistics, kv_heads: int, value_norms: Any = None, *,
             shard: Optional[_core.TensorParallelShard] = None) -> _core.KVComposePlan:
        """Scores and counts of every (layer, kv head); ``value_norms`` float32 ``[layers, kv_heads,
        context_length]`` with ``add_v_norm``. With ``shard`` (a tensor-parallel rank): the statistics
        and value norms are this rank's ``kv_heads`` kv heads' and the plan is the whole model's, the
        same on every rank of the group."""
        return _core.kvcompose_plan(self.config(), statistics, kv_heads, value_norms, shard)

    @staticmethod
    def compress(plan: _core.KVComposePlan, layer: int, cache: Any, *, num_threads: int = 0,
                 shard: Optional[_core.TensorParallelShard] = None) -> Any:
        """Compacts ``layer``'s cache to the plan in place (every row holds the context's entries);
        returns the new lengths. With ``shard`` the cache holds this rank's kv heads of the plan's."""
        _core.kvcompose_compress(plan, layer, cache._core, num_threads, shard)
        return cache.lengths

    @staticmethod
    def value_norms(cache: Any, context_length: int) -> Any:
        """``|v|`` of batch element 0's first ``context_length`` entries of one layer, float32
        ``[kv_heads, context_length]``."""
        import numpy as np

        out = np.empty((cache.shape[1], context_length), dtype=np.float32)
        _core.kvcompose_value_norms(cache._core, context_length, out)
        return out


@dataclass
class FastKVzipPress:
    """FastKVzip (arXiv 2601.17668): KVzip's scores predicted by a small learned gate per layer from
    the attention input, then KVzip's eviction across layers (batch 1): the globally lowest
    ``int(numel · compression_ratio)`` scores over all layers (or that share of each layer, with
    ``layerwise``) give each layer its count, and each layer evicts its lowest that many across its kv
    heads, so heads keep different lengths (kvpress masks them). The first ``n_sink`` and the last
    window (``int(n · window_ratio)``, ``window_size`` from 32000 entries on) score 1. The gates are
    the caller's :class:`kvcompress.FastKVzipGate` (kvpress's ``<layer>.*`` gate tensors, which it
    downloads). Needs every layer, so it is not a press for :func:`kvcompress.compress`:
    :meth:`compress` runs the three steps, :meth:`score_layer`, :meth:`pruned_counts` and
    :meth:`evict` each one."""

    compression_ratio: float = 0.0
    layerwise: bool = False
    n_sink: int = 4
    window_size: int = 4096
    window_ratio: float = 0.02

    def score_layer(self, gate: _core.FastKVzipGate, hidden: Any, *, num_threads: int = 0,
                    shard: Optional[_core.TensorParallelShard] = None) -> Any:
        """One layer's gate scores, float32 ``[kv_heads, n]``, from its attention input ``[1, n,
        hidden_size]`` (after input_layernorm; ``[1, 1, n, hidden_size]`` too). With ``shard``, ``gate``
        is this rank's kv heads' (``gate.heads(first, count)`` of the layer's)."""
        import numpy as np

        if len(hidden.shape) == 3:
            hidden = hidden[:, None]
        out = np.empty((gate.kv_heads, int(hidden.shape[2])), dtype=np.float32)
        _core.fast_kvzip_score_layer(self.compression_ratio, self.layerwise, self.n_sink, self.window_size,
                                     self.window_ratio, gate, hidden, out, num_threads, shard)
        return out

    def pruned_counts(self, scores: Any, *, shard: Optional[_core.TensorParallelShard] = None) -> List[int]:
        """Entries each layer evicts, from every layer's scores ``[layers, kv_heads, n]``; with ``shard``,
        this rank's kv heads of every layer, and the counts are the whole model's."""
        return _core.cross_layer_pruned_counts(scores, self.compression_ratio, self.layerwise, shard)

    @staticmethod
    def evict(cache: Any, scores: Any, n_pruned: int, *, num_threads: int = 0,
              shard: Optional[_core.TensorParallelShard] = None) -> Any:
        """Evicts the layer's ``n_pruned`` lowest-scoring entries across its kv heads, in place
        (``scores`` float32 ``[kv_heads, capacity]``); returns the new lengths. With ``shard`` the cache
        holds this rank's kv heads and ``n_pruned`` is the whole layer's (``pruned_counts(shard=)``)."""
        _core.evict_lowest_across_heads(cache._core, scores, n_pruned, num_threads, shard)
        return cache.lengths

    def compress(self, gates: List[_core.FastKVzipGate], hidden_states: List[Any], caches: List[Any], *,
                 num_threads: int = 0, shard: Optional[_core.TensorParallelShard] = None) -> List[Any]:
        """Scores every layer, then evicts across layers: one gate, attention input and cache per
        layer. Returns each layer's new lengths. With ``shard`` the gates and caches are this rank's kv
        heads of every layer; every rank of the group evicts what one process evicts from the whole
        model."""
        import numpy as np

        if not len(gates) == len(hidden_states) == len(caches):
            raise _core.Error(f"FastKVzipPress.compress needs one gate, hidden state and cache per layer, got "
                              f"{len(gates)}, {len(hidden_states)} and {len(caches)}")
        scores = np.stack([self.score_layer(g, x, num_threads=num_threads, shard=shard)
                           for g, x in zip(gates, hidden_states)])
        counts = self.pruned_counts(scores, shard=shard)
        return [self.evict(c, np.ascontiguousarray(s), k, num_threads=num_threads, shard=shard)
                for c, s, k in zip(caches, scores, counts)]


@dataclass
class KVzipPress:
    """KVzip (arXiv 2505.23416): an entry matters as much as the model attends to it when asked to
    repeat the context. After the prefill the engine feeds, per chunk ``[start, end)`` of the context
    (``chunk_size`` tokens), a reconstruction input through the model over the full cache; in each
    layer :meth:`score_chunk` scores the chunk from that pass (``Observation(queries=..., rope=...,
    position=context_length)``, pre-RoPE queries of the input; KVzip+ with
    ``kvzip_plus_normalization`` also ``hidden_states`` and ``output_projection``; the batch-1 cache
    holds the context, then the input's own entries). Then :meth:`protect_sinks`,
    :meth:`pruned_counts` and :meth:`evict` of every layer, the eviction FastKVzip shares (kvpress
    masks the evicted entries; here each head's row shortens). The reconstruction passes are the
    engine's (kvpress runs them through the model with its prompt)."""

    compression_ratio: float = 0.0
    layerwise: bool = False
    n_sink: int = 4
    kvzip_plus_normalization: bool = False
    chunk_size: int = 2048

    def score_chunk(self, observation: _core.Observation, cache: Any, context_length: int, start: int, end: int,
                    out: Any, *, num_threads: int = 0) -> Any:
        """Writes entries ``[start, end)`` of the layer's scores ``out`` (float32 ``[kv_heads,
        context_length]``) from the chunk's reconstruction pass; returns ``out``."""
        _core.kvzip_score_chunk(self.compression_ratio, self.layerwise, self.n_sink, self.kvzip_plus_normalization,
                                self.chunk_size, observation, cache._core, context_length, start, end, out,
                                num_threads)
        return out

    def protect_sinks(self, scores: Any, *, shard: Optional[_core.TensorParallelShard] = None) -> Any:
        """kvpress's sink protection of every layer's scores ``[layers, kv_heads, context_length]``, in
        place: the first ``n_sink`` entries get the maximum over all scores + 1 (with ``shard``, over
        every rank's)."""
        _core.kvzip_protect_sinks(self.n_sink, scores, shard)
        return scores

    def pruned_counts(self, scores: Any, *, shard: Optional[_core.TensorParallelShard] = None) -> List[int]:
        """Entries each layer evicts, from every layer's (protected) scores; with ``shard``, this rank's
        kv heads of every layer, and the counts are the whole model's."""
        return _core.cross_layer_pruned_counts(scores, self.compression_ratio, self.layerwise, shard)

    evict = staticmethod(FastKVzipPress.evict)


@dataclass
class DMSPress:
    """DMS (arXiv 2506.05345) as kvpress's DMSPress runs it: each entry is scored once by the inner
    scorer ``press`` when its pass arrives, waits in a sliding window of the
    ``sliding_window_size`` most recent entries, and on leaving it is removed if its score is below
    ``threshold`` (required), kept for good otherwise; with ``decoding`` during decoding passes too.
    Removal is real (rows shorten; kvpress masks). A stateful press: call :meth:`step` once per
    forward pass and layer, after the pass's keys and values were appended to the cache
    (``Observation(layer_idx=..., num_layers=..., position=..., chunk_length=...)`` and what the inner
    press reads); a prefill (``position`` 0) starts a new sequence. The state is sized at the first
    step (the observation's ``num_layers``, the cache's batch and kv heads) and rebuilt when a field
    changes."""

    press: Press = None  # type: ignore[assignment]
    threshold: Optional[float] = None
    sliding_window_size: int = 128
    decoding: bool = False

    def __setattr__(self, name: str, value) -> None:
        object.__setattr__(self, name, value)
        if not name.startswith("_"):
            object.__setattr__(self, "_state", None)

    def step(self, observation: _core.Observation, cache: Any, *, num_threads: int = 0) -> bool:
        """One forward pass of one layer; returns whether entries were removed."""
        state = self.__dict__.get("_state")
        inner = _inner_native(self.press, "DMSPress")
        if state is None or self.__dict__.get("_state_inner") is not inner:
            threshold = float("nan") if self.threshold is None else float(self.threshold)
            b, h, _, _ = cache.shape
            state = _core.DMS(inner, threshold, self.sliding_window_size, self.decoding, observation.num_layers, b, h)
            object.__setattr__(self, "_state", state)
            object.__setattr__(self, "_state_inner", inner)
        return state.step(observation, cache._core, num_threads)

    @property
    def native(self) -> _core.DMS:
        """The C++ press and its state (after the first step)."""
        state = self.__dict__.get("_state")
        if state is None:
            raise _core.Error("DMSPress has no state before its first step")
        return state

    @property
    def compression_ratio(self) -> float:
        """kvpress's: per layer, removed / (batch · kv_heads · tokens seen), averaged over the layers."""
        return self.native.compression_ratio

    def reset(self) -> None:
        """Forgets every layer's state (a prefill also starts a new sequence)."""
        if self.__dict__.get("_state") is not None:
            self.native.reset()


def _decoding_window(press: Press) -> int:
    """Post-RoPE window queries a decoding press rebuilds from its query ring for ``press`` (the
    library's ``detail::decoding_window``): SnapKV's and PyramidKV's ``window_size``, 1 for TOVA, a
    wrapper's inner press's, 0 for the others."""
    if isinstance(press, (SnapKVPress, PyramidKVPress)):
        return press.window_size
    if isinstance(press, TOVAPress):
        return 1
    inner = getattr(press, "press", None)
    return _decoding_window(inner) if isinstance(inner, Press) else 0


class _Stateful:
    """A press stepped once per forward pass and layer whose native state (``_core.DecodingState``,
    ``_core.CAMState``) is built from its fields on first use and rebuilt when a field or an inner
    press changes; the native state sizes its buffers at the first step that shows their shape."""

    _name: ClassVar[str] = ""
    _optional_inners: ClassVar[bool] = False  # whether an inner press may be None

    def __setattr__(self, name: str, value) -> None:
        object.__setattr__(self, name, value)
        if not name.startswith("_"):
            object.__setattr__(self, "_state", None)

    def _inners(self) -> List[Any]:
        raise NotImplementedError

    def _build(self, inners: List[Any]) -> Any:
        raise NotImplementedError

    @property
    def native(self) -> Any:
        """The C++ press, its state and its workspace."""
        inners = [p if isinstance(p, _core.NativePress) or (p is None and self._optional_inners)
                  else _inner_native(p, self._name) for p in self._inners()]
        state = self.__dict__.get("_state")
        cached = self.__dict__.get("_state_inners", [])
        if state is None or any(a is not b for a, b in zip(inners, cached)):
            state = self._build(inners)
            object.__setattr__(self, "_state", state)
            object.__setattr__(self, "_state_inners", inners)
        return state

    def step(self, observation: _core.Observation, cache: Any, *, num_threads: int = 0) -> bool:
        """One forward pass of one layer, after the pass's keys and values were appended to
        ``cache`` (position 0: the prefill, which starts a new sequence); returns whether entries
        were removed (``cache.lengths`` holds the new lengths). Decoding passes need
        ``Observation(queries=..., position=..., layer_idx=..., num_layers=...)`` (pre-RoPE queries
        ``[batch, q_heads, q_len, head_dim]``, the pass's absolute first position) and what the
        base press reads (``rope`` for a window press); the buffers are sized at the first pass
        with queries and reused (a prefill of another shape or dtype rebuilds them). A rejected
        pass changes nothing, except a failure inside the compression (the inner press rejecting
        the buffered queries), after which the layer has counted the pass. On a tensor-parallel
        shard (``observation.shard``) every rank steps its own heads, as ``compress``."""
        try:
            native = self.native
        except _core.Error:
            if observation.shard is not None:
                _core._report_shard_failure(observation, cache._core)
            raise
        return native.step(observation, cache._core, num_threads)

    def steps(self, layer: int) -> int:
        """Decoding passes of ``layer`` since its last compression."""
        return self.native.steps(layer)

    def buffered(self, layer: int) -> int:
        """Query tokens of ``layer`` the base press would be handed now."""
        return self.native.buffered(layer)

    def reset(self) -> None:
        """Forgets every layer's passes and queries (a new sequence; a prefill does it per layer);
        keeps the buffers."""
        if self.__dict__.get("_state") is not None:
            self.native.reset()


@dataclass
class DecodingPress(_Stateful):
    """kvpress's DecodingPress: compression while decoding. Every ``compression_interval`` decoding
    passes of a layer (or at once for a pass of at least ``target_size`` tokens) the scorer
    ``base_press`` scores the layer's whole cache and every row keeps its ``target_size`` best
    entries, so between compressions a row holds target_size to target_size + compression_interval
    − 1 entries. The scorer sees the pre-RoPE queries of the passes since the last compression (the
    last ``hidden_states_buffer_size`` tokens before the current pass, and the pass's own) at their
    true positions. Call :meth:`step` once per forward pass and layer; the prefill (position 0) is
    not compressed (see :class:`PrefillDecodingPress`)."""

    _name = "DecodingPress"
    base_press: Press = None  # type: ignore[assignment]
    compression_interval: int = 512
    target_size: int = 2048
    hidden_states_buffer_size: int = 256

    def _inners(self):
        return [self.base_press]

    def _build(self, inners):
        return _core.DecodingState(None, inners[0], _decoding_window(self.base_press), self.compression_interval,
                                   self.target_size, 0.0, self.hidden_states_buffer_size)


@dataclass
class CompressionRatioDecodingPress(_Stateful):
    """kvpress's CompressionRatioDecodingPress: a :class:`DecodingPress` whose target is a fraction
    of every token seen so far, ``max(1, int(tokens_seen · (1 − target_compression_ratio)))`` with
    tokens_seen = the pass's last absolute position + 1 (kvpress: ``max(position_ids) + 1``), so
    the observation's ``position`` must be the true absolute one."""

    _name = "CompressionRatioDecodingPress"
    base_press: Press = None  # type: ignore[assignment]
    compression_interval: int = 512
    hidden_states_buffer_size: int = 256
    target_compression_ratio: float = 0.5

    def _inners(self):
        return [self.base_press]

    def _build(self, inners):
        return _core.DecodingState(None, inners[0], _decoding_window(self.base_press), self.compression_interval,
                                   None, self.target_compression_ratio, self.hidden_states_buffer_size)


@dataclass
class PrefillDecodingPress(_Stateful):
    """kvpress's PrefillDecodingPress: ``prefilling_press`` (any press) compresses the prefill
    (position 0) and ``decoding_press`` (a :class:`DecodingPress` or
    :class:`CompressionRatioDecodingPress`, whose parameters it takes; its own state is not used)
    every later pass; either may be None (no compression in that phase)."""

    _name = "PrefillDecodingPress"
    _optional_inners = True
    prefilling_press: Optional[Press] = None
    decoding_press: Optional[Any] = None

    def _inners(self):
        d = self.decoding_press
        if d is None:
            return [self.prefilling_press, None]
        if not isinstance(d, (DecodingPress, CompressionRatioDecodingPress)):
            raise _core.Error(f"PrefillDecodingPress: decoding_press must be a DecodingPress or a "
                              f"CompressionRatioDecodingPress, got {type(d).__name__}")
        return [self.prefilling_press, _inner_native(d.base_press, type(d).__name__)]

    def _build(self, inners):
        d = self.decoding_press
        if d is None:
            return _core.DecodingState(inners[0], None, 0, 1, 1, 0.0, 0)
        target = d.target_size if isinstance(d, DecodingPress) else None
        ratio = d.target_compression_ratio if isinstance(d, CompressionRatioDecodingPress) else 0.0
        return _core.DecodingState(inners[0], inners[1], _decoding_window(d.base_press), d.compression_interval,
                                   target, ratio, d.hidden_states_buffer_size)

    @property
    def native(self) -> Any:
        # The decoding press's fields are part of this press's: a change there rebuilds the state.
        d = self.decoding_press
        fields_now = None if d is None else tuple(getattr(d, f.name) for f in fields(d) if f.name != "base_press")
        if self.__dict__.get("_decoding_fields", fields_now) != fields_now:
            object.__setattr__(self, "_state", None)
        object.__setattr__(self, "_decoding_fields", fields_now)
        return super().native


@dataclass
class CAMPress(_Stateful):
    """CaM (kvpress's CAMPress, OpenReview LCTmppB165): a :class:`DecodingPress` that, before it
    evicts, merges the values of some evicted entries into the kept ones after them. Each decoding
    pass adds the attention of its last token over the cache (its query rotated at its position,
    softmax over each query head, averaged per kv head) to a running sum A; at a compression the
    scorer's scores averaged over the kv heads choose ``target_size`` entries per sequence (the same
    in every kv head), the k best evicted ones (k = passes since the last compression) become merge
    candidates, and candidate x merges with probability clamp(A[x] / mean A of the
    ``merge_budget`` kept entries after it, 0, 1) into them (v += v_x / window). Every decoding pass
    needs ``Observation(queries=..., rope=..., position=...)``. kvpress draws with
    ``torch.bernoulli``; here u < p with u from a 64-bit Mersenne Twister seeded with ``seed``, or
    the caller's ``uniforms`` in order (a replay; running out is an error). ``capacity``: the entries
    a row's running sum holds (default: the cache's capacity at the first pass with queries)."""

    _name = "CAMPress"
    base_press: Press = None  # type: ignore[assignment]
    compression_interval: int = 512
    target_size: int = 2048
    hidden_states_buffer_size: int = 256
    merge_budget: int = 32
    seed: int = 0
    capacity: Optional[int] = None
    uniforms: Any = _array_field()

    def _inners(self):
        return [self.base_press]

    def _build(self, inners):
        return _core.CAMState(inners[0], _decoding_window(self.base_press), self.compression_interval,
                              self.target_size, self.hidden_states_buffer_size, self.merge_budget, self.seed,
                              self.capacity or 0, self.uniforms)

    @property
    def draws(self) -> int:
        """Merge draws made so far."""
        return self.native.draws

    def attention_sum(self, layer: int) -> Any:
        """A copy of ``layer``'s running attention sums, float32 ``[batch, kv_heads, capacity]``
        (0 past the entries a row's sum covers)."""
        import numpy as np

        _, b, _, h, _, cap = self.native.shape
        out = np.empty((b, h, cap), dtype=np.float32)
        self.native.attention_sum(layer, out)
        return out
