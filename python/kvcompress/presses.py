"""Presses with kvpress 0.5.5's names, parameters and defaults.

Each press is a dataclass; its C++ counterpart (``press.native``) is built on first use and
rebuilt when a field changes. The native press holds the workspace that ``compress`` reuses, so
keep one press object per compression site to allocate nothing after the first call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

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
    "AdaKVPress",
    "CriticalKVPress",
    "CriticalAdaKVPress",
    "KeyRerotationPress",
    "ChunkKVPress",
    "BlockPress",
    "PerLayerCompressionPress",
]


class Press:
    """Base of every press: caches the native press until a field (or the inner press) changes."""

    def __setattr__(self, name: str, value) -> None:
        object.__setattr__(self, name, value)
        if not name.startswith("_"):
            object.__setattr__(self, "_native", None)

    def _build(self) -> _core.NativePress:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def _inner(self) -> Optional["Press"]:
        return None

    @property
    def native(self) -> _core.NativePress:
        """The C++ press (and its workspace)."""
        n = self.__dict__.get("_native")
        inner = self._inner()
        if n is None or (inner is not None and inner.native is not self.__dict__.get("_inner_native")):
            n = self._build()
            object.__setattr__(self, "_native", n)
            object.__setattr__(self, "_inner_native", inner.native if inner is not None else None)
        return n


def _inner_native(press: Press, wrapper: str) -> _core.NativePress:
    if not isinstance(press, Press):
        raise _core.Error(f"{wrapper}: press must be a kvcompress press, got {type(press).__name__}")
    return press.native


@dataclass
class ExpectedAttentionPress(Press):
    """Expected Attention (arXiv 2510.00636): scores each key by the attention that future queries,
    modelled as a Gaussian from the chunk's pre-RoPE queries and rotated over the next
    ``n_future_positions``, are expected to give it, times the value norm. Needs
    ``Observation(queries=..., rope=...)``."""

    compression_ratio: float = 0.0
    n_future_positions: int = 512
    n_sink: int = 4
    use_covariance: bool = True
    use_vnorm: bool = True
    epsilon: float = 0.0

    def _build(self):
        return _core.expected_attention(self.compression_ratio, self.n_future_positions, self.n_sink,
                                        self.use_covariance, self.use_vnorm, self.epsilon)


@dataclass
class ExpectedAttentionStatsPress(Press):
    """Expected Attention from precomputed per-layer query statistics
    (``Observation(stats_mean=..., stats_covariance=..., rope=...)``)."""

    compression_ratio: float = 0.0
    n_future_positions: int = 512
    n_sink: int = 4
    use_covariance: bool = True
    use_vnorm: bool = True
    epsilon: float = 0.0

    def _build(self):
        return _core.expected_attention_stats(self.compression_ratio, self.n_future_positions, self.n_sink,
                                              self.use_covariance, self.use_vnorm, self.epsilon)


@dataclass
class KnormPress(Press):
    """Keeps the keys of smallest L2 norm."""

    compression_ratio: float = 0.0

    def _build(self):
        return _core.knorm(self.compression_ratio)


@dataclass
class KeyDiffPress(Press):
    """Keeps the keys least similar (cosine) to the mean key."""

    compression_ratio: float = 0.0

    def _build(self):
        return _core.key_diff(self.compression_ratio)


@dataclass
class StreamingLLMPress(Press):
    """Keeps the first ``n_sink`` entries and the most recent ones."""

    compression_ratio: float = 0.0
    n_sink: int = 4

    def _build(self):
        return _core.streaming_llm(self.compression_ratio, self.n_sink)


@dataclass
class LagKVPress(Press):
    """LagKV: scores each partition of ``lag_size`` entries against the statistics of the next one."""

    compression_ratio: float = 0.0
    n_sink: int = 4
    lag_size: int = 128
    cross_scoring: bool = False

    def _build(self):
        return _core.lag_kv(self.compression_ratio, self.n_sink, self.lag_size, self.cross_scoring)


@dataclass
class RandomPress(Press):
    """Uniform random scores, reproducible with ``seed`` (not torch's generator: same distribution,
    different draws)."""

    compression_ratio: float = 0.0
    seed: Optional[int] = None

    def _build(self):
        return _core.random(self.compression_ratio, self.seed)


@dataclass
class SnapKVPress(Press):
    """SnapKV: the attention of the last ``window_size`` queries (``Observation(window_queries=...)``,
    post-RoPE, or ``attention=...``), pooled over ``kernel_size``."""

    compression_ratio: float = 0.0
    window_size: int = 64
    kernel_size: int = 5

    def _build(self):
        return _core.snap_kv(self.compression_ratio, self.window_size, self.kernel_size)


@dataclass
class PyramidKVPress(Press):
    """SnapKV's scores with a per-layer budget decreasing linearly with depth (``beta``); needs
    ``Observation(layer_idx=..., num_layers=...)``."""

    compression_ratio: float = 0.0
    window_size: int = 64
    kernel_size: int = 5
    beta: int = 20

    def _build(self):
        return _core.pyramid_kv(self.compression_ratio, self.window_size, self.kernel_size, float(self.beta))


@dataclass
class TOVAPress(Press):
    """TOVA: the attention of the last query, averaged over the query heads (``window_queries`` of
    length 1, post-RoPE, or ``attention``)."""

    compression_ratio: float = 0.0

    def _build(self):
        return _core.tova(self.compression_ratio)


@dataclass
class ObservedAttentionPress(Press):
    """The attention the chunk's queries gave each key (``Observation(attention=...)``)."""

    compression_ratio: float = 0.0

    def _build(self):
        return _core.observed_attention(self.compression_ratio)


@dataclass
class NonCausalAttnPress(Press):
    """Non-causal chunked attention of the chunk's queries (``window_queries`` over the whole chunk)."""

    compression_ratio: float = 0.0
    chunk_size: int = 256

    def _build(self):
        return _core.non_causal_attn(self.compression_ratio, self.chunk_size)


@dataclass
class SimLayerKVPress(Press):
    """SimLayerKV: layers whose last queries attend mostly to the initial and recent entries keep
    only those."""

    lazy_threshold: float = 1.0
    n_last: int = 1
    n_recent: int = 1024
    n_initial: int = 4

    def _build(self):
        return _core.sim_layer_kv(self.lazy_threshold, self.n_last, self.n_recent, self.n_initial)


@dataclass
class AdaKVPress(Press):
    """AdaKV: the inner scorer's entries selected across the heads of a sequence, each head keeping
    at least ``alpha_safeguard`` of its share. Heads really get different lengths."""

    press: Press = None  # type: ignore[assignment]
    alpha_safeguard: float = 0.20

    def _inner(self):
        return self.press

    def _build(self):
        return _core.adakv(_inner_native(self.press, "AdaKVPress"), self.alpha_safeguard)


@dataclass
class CriticalKVPress(Press):
    """CriticalKV: a first stage by the inner scores, then the rest by score × ‖W_o v‖₁
    (``Observation(output_projection=...)``)."""

    press: Press = None  # type: ignore[assignment]
    epsilon: float = 1e-4
    first_stage_ratio: float = 0.5

    def _inner(self):
        return self.press

    def _build(self):
        return _core.critical_kv(_inner_native(self.press, "CriticalKVPress"), self.epsilon, self.first_stage_ratio)


@dataclass
class CriticalAdaKVPress(Press):
    """CriticalKV with AdaKV's budgets across heads."""

    press: Press = None  # type: ignore[assignment]
    alpha_safeguard: float = 0.20
    epsilon: float = 1e-4
    first_stage_ratio: float = 0.5

    def _inner(self):
        return self.press

    def _build(self):
        return _core.critical_adakv(_inner_native(self.press, "CriticalAdaKVPress"), self.alpha_safeguard,
                                    self.epsilon, self.first_stage_ratio)


@dataclass
class KeyRerotationPress(Press):
    """Compresses with the inner press, then re-rotates each kept key to its new slot's position
    (``Observation(rope=...)``), so the cache looks as if only the kept tokens had been seen."""

    press: Press = None  # type: ignore[assignment]

    def _inner(self):
        return self.press

    def _build(self):
        return _core.key_rerotation(_inner_native(self.press, "KeyRerotationPress"))


@dataclass
class ChunkKVPress(Press):
    """ChunkKV: keeps whole chunks of ``chunk_length`` tokens by their summed inner scores, the same
    chunks in every head."""

    press: Press = None  # type: ignore[assignment]
    chunk_length: int = 20

    def _inner(self):
        return self.press

    def _build(self):
        return _core.chunk_kv(_inner_native(self.press, "ChunkKVPress"), self.chunk_length)


@dataclass
class BlockPress(Press):
    """Compresses block by block (``block_size`` entries), each block scored with the survivors of
    the previous ones."""

    press: Press = None  # type: ignore[assignment]
    block_size: int = 128

    def _inner(self):
        return self.press

    def _build(self):
        return _core.block(_inner_native(self.press, "BlockPress"), self.block_size)


@dataclass
class PerLayerCompressionPress(Press):
    """The inner press with ``compression_ratios[layer_idx]`` as its ratio."""

    press: Press = None  # type: ignore[assignment]
    compression_ratios: List[float] = field(default_factory=list)

    def _inner(self):
        return self.press

    def _build(self):
        return _core.per_layer_compression(_inner_native(self.press, "PerLayerCompressionPress"),
                                           [float(r) for r in self.compression_ratios])
