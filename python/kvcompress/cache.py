"""Caches over the caller's tensors, and the entry points ``compress`` and ``score``.

Tensors are NumPy arrays or PyTorch CPU tensors (anything with DLPack), float32, float16 or
bfloat16, with any strides. Nothing is copied: compression moves entries inside the caller's
memory and writes the new lengths into ``cache.lengths``.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from . import _core
from .presses import Press

Error = _core.Error
Observation = _core.Observation
RotaryEmbedding = _core.RotaryEmbedding

__all__ = ["KVCache", "compress", "score", "workspace_bytes", "rotary_embedding_from_config", "Observation",
           "RotaryEmbedding", "Error"]


def _require_writeable(t: Any, name: str) -> None:
    if isinstance(t, np.ndarray) and not t.flags.writeable:
        raise Error(f"{name} is a read-only NumPy array; compression writes into it")


def _is_torch(t: Any) -> bool:
    return type(t).__module__.startswith("torch")


def _lengths_array(lengths: Any, batch: int, heads: int, full: int) -> Any:
    """The [batch, kv_heads] int32 lengths: the caller's array when it has that form (used in
    place), else a new NumPy array (from a per-sequence [batch] vector, or full rows)."""
    if lengths is None:
        return np.full((batch, heads), full, dtype=np.int32)
    if _is_torch(lengths):
        import torch

        if lengths.dtype == torch.int32 and tuple(lengths.shape) == (batch, heads) and lengths.is_contiguous() \
                and lengths.device.type == "cpu":
            return lengths
        lengths = lengths.detach().cpu().numpy()
    arr = np.asarray(lengths)
    if arr.shape == (batch, heads) and arr.dtype == np.int32 and arr.flags.c_contiguous and arr.flags.writeable:
        return arr
    if arr.shape == (batch,):
        return np.ascontiguousarray(np.repeat(arr.astype(np.int32)[:, None], heads, axis=1))
    if arr.shape == (batch, heads):
        return np.ascontiguousarray(arr, dtype=np.int32)
    raise Error(f"lengths must be [batch, kv_heads] = [{batch}, {heads}] or per sequence [{batch}], "
                f"got shape {tuple(arr.shape)}")


def _permute(t: Any, order: Sequence[int]) -> Any:
    return t.permute(*order) if _is_torch(t) else np.transpose(t, order)


class KVCache:
    """One layer's cache over the caller's K and V tensors.

    ``KVCache(keys, values)`` takes HF's layout, ``[batch, kv_heads, seq, head_dim]``, with any
    strides; ``axes`` names another axis order (``"bshd"`` for token-major engines). Paged caches
    come from :meth:`paged` or the engine constructors in :mod:`kvcompress.layouts`.
    ``lengths`` (int32 ``[batch, kv_heads]``, or ``[batch]`` per sequence) defaults to full rows;
    ``positions`` (int32 ``[batch, kv_heads, seq]``) are the entries' original positions, kept in
    step with compaction when given.
    """

    def __init__(self, keys: Any, values: Any, lengths: Any = None, positions: Any = None, *, axes: str = "bhsd"):
        if sorted(axes) != sorted("bhsd"):
            raise Error(f"axes must order the letters b, h, s, d, got '{axes}'")
        order = [axes.index(a) for a in "bhsd"]
        if len(getattr(keys, "shape", ())) != 4:
            raise Error(f"keys must have 4 dimensions ({axes}), got shape {tuple(getattr(keys, 'shape', ()))}")
        _require_writeable(keys, "keys")
        _require_writeable(values, "values")
        k, v = (_permute(keys, order), _permute(values, order)) if axes != "bhsd" else (keys, values)
        b, h, n, _ = (int(x) for x in k.shape)
        self._lengths = _lengths_array(lengths, b, h, n)
        self._core = _core._strided_cache(k, v, self._lengths, positions)
        self._tensors = (keys, values)
        self._before: Optional[np.ndarray] = None

    @classmethod
    def paged(cls, k_pool: Any, v_pool: Any, block_table: Any, lengths: Any, *, kv_heads: int,
              page_order: str = "NHD", capacity: Optional[int] = None,
              v_block_table: Any = None) -> "KVCache":
        """A paged cache. ``k_pool``/``v_pool``: ``[num_pages, page_size, kv_heads, head_dim]``
        (``page_order="NHD"``), ``[num_pages, kv_heads, page_size, head_dim]`` (``"HND"``), or
        ``[num_pages, page_size, head_dim]`` with a per-head ``block_table``; any page stride
        (fused K/V pools), contiguous channels. ``block_table``: int32 ``[batch, pages]`` (one row
        per sequence) or ``[batch, kv_heads, pages]`` (one per head); entries past a row's live
        pages are never read. ``capacity`` defaults to ``pages * page_size``. ``v_block_table``
        (same shape): V's pages when they are other pages of the same pool (``v_pool is k_pool``)."""
        self = cls.__new__(cls)
        _require_writeable(k_pool, "k_pool")
        _require_writeable(v_pool, "v_pool")
        if page_order not in ("NHD", "HND"):
            raise Error(f"page_order must be 'NHD' or 'HND', got '{page_order}'")
        ndim = len(k_pool.shape)
        if ndim == 3:
            k4, v4 = (t[:, None] if _is_torch(t) else t[:, np.newaxis] for t in (k_pool, v_pool))
        elif ndim == 4:
            k4, v4 = (_permute(t, (0, 2, 1, 3)) for t in (k_pool, v_pool)) if page_order == "NHD" else (k_pool, v_pool)
        else:
            raise Error(f"k_pool must have 3 (per-head pages) or 4 dimensions, got shape {tuple(k_pool.shape)}")
        page_size = int(k4.shape[2])
        per_head = len(block_table.shape) == 3
        if capacity is None:
            capacity = int(block_table.shape[-1]) * page_size
        batch = int(block_table.shape[0])
        self._lengths = _lengths_array(lengths, batch, kv_heads, capacity)
        self._core = _core._paged_cache(k4, v4, block_table, self._lengths, kv_heads, capacity,
                                        v_block_table=v_block_table)
        self._tensors = (k_pool, v_pool, block_table, v_block_table)
        self._page_divisor = 1  # engine page id = table entry // divisor (a fused pool's halves)
        self._before = None
        self.per_head_table = per_head
        self.page_size = page_size
        return self

    @property
    def lengths(self) -> Any:
        """int32 ``[batch, kv_heads]`` live lengths, updated in place by ``compress``."""
        return self._lengths

    @property
    def shape(self) -> tuple:
        """``(batch, kv_heads, capacity, head_dim)``."""
        return self._core.shape

    @property
    def dtype(self) -> str:
        return self._core.dtype

    @property
    def paged_cache(self) -> bool:
        return self._core.paged

    def released_pages(self) -> np.ndarray:
        """The page (block) ids that the last ``compress`` emptied, as the engine's own ids from its
        block table, ready for its allocator. A page shared by the heads of a sequence is free once
        every head is shorter than its start."""
        if not self._core.paged:
            raise Error("released_pages needs a paged cache")
        if self._before is None:
            return np.zeros(0, dtype=np.int32)
        table = self._tensors[2]
        out = np.empty(int(np.prod(table.shape)), dtype=np.int32)
        n = _core._released_pages(self._core, self._before, out)
        return out[:n] // self._page_divisor

    def memory_report(self) -> dict:
        """K+V bytes (and pages) live now, and freed by the last ``compress``."""
        return _core._memory_report(self._core, self._before)


def _native(press: Any) -> _core.NativePress:
    """The native press of a kvcompress press; anything else (ThinK, KVCompose, a kvpress press) is an Error."""
    if not isinstance(press, Press):
        hint = {"ThinKPress": ": it prunes channels, use press.compress_keys(observation, cache)",
                "KVComposePress": ": it needs every layer, use press.statistics, press.plan and press.compress",
                **{name: ": it is stateful, call press.step(observation, cache) after each forward pass"
                   for name in ("DMSPress", "DecodingPress", "CompressionRatioDecodingPress", "PrefillDecodingPress",
                                "CAMPress")}}
        raise Error(f"compress and score take a kvcompress press, got {type(press).__name__}"
                    f"{hint.get(type(press).__name__, '')}")
    return press.native


def compress(press: Press, observation: Optional[_core.Observation], cache: KVCache, *, num_threads: int = 0) -> Any:
    """Compresses ``cache`` in place with ``press`` and returns its new lengths (``cache.lengths``,
    int32 ``[batch, kv_heads]``). Each row's kept entries move to its front, in position order.
    ``num_threads=0`` uses every core. Raises :class:`kvcompress.Error` on bad input, before
    anything moves."""
    if cache._core.paged:
        cache._before = np.array(cache._lengths, dtype=np.int32, copy=True)
    _core._compress(_native(press), observation if observation is not None else _core.Observation(), cache._core,
                    num_threads)
    return cache._lengths


def score(press: Press, observation: Optional[_core.Observation], cache: KVCache, *, num_threads: int = 0) -> np.ndarray:
    """The press's scores, float32 ``[batch, kv_heads, capacity]`` (higher means keep); slots past
    a row's length are ``-inf``. Only scorer presses have scores."""
    b, h, n, _ = cache.shape
    out = np.full((b, h, n), -np.inf, dtype=np.float32)
    _core._score(_native(press), observation if observation is not None else _core.Observation(), cache._core, out,
                 num_threads)
    return out


def workspace_bytes(press: Press, observation: Optional[_core.Observation], cache: KVCache, *,
                    num_threads: int = 0) -> int:
    """Scratch bytes ``compress`` needs for this press and cache (the library's query)."""
    return _core._workspace_bytes(_native(press), observation if observation is not None else _core.Observation(),
                                  cache._core, num_threads)


def rotary_embedding_from_config(config: Any) -> _core.RotaryEmbedding:
    """The rotary embedding of a transformers config (``rope_parameters`` or ``rope_scaling``,
    ``rope_theta`` inside or at the top level), read as transformers reads it."""
    get = (lambda k, d=None: config.get(k, d)) if isinstance(config, dict) else \
        (lambda k, d=None: getattr(config, k, d))
    head_dim = get("head_dim") or get("hidden_size") // get("num_attention_heads")
    max_pos = int(get("max_position_embeddings", 2048))
    rp = get("rope_parameters") or get("rope_scaling") or {}
    if hasattr(rp, "to_dict"):
        rp = rp.to_dict()
    rp = dict(rp)
    for where in (rp, {"partial_rotary_factor": get("partial_rotary_factor", 1.0)}):
        if (where.get("partial_rotary_factor") or 1.0) != 1.0:
            raise Error(f"partial_rotary_factor = {where['partial_rotary_factor']} is not supported (only 1)")
    theta = rp.get("rope_theta", get("rope_theta"))
    if theta is None:
        raise Error("rope_theta is missing (in rope_parameters and at the top level)")
    rope_type = rp.get("rope_type", rp.get("type", "default"))
    kw: dict = dict(rope_type=rope_type, theta=float(theta), head_dim=int(head_dim), max_position_embeddings=max_pos)
    original = get("original_max_position_embeddings") or rp.get("original_max_position_embeddings") or max_pos
    if rope_type in ("linear", "dynamic"):
        kw["factor"] = float(rp["factor"])
    elif rope_type == "llama3":
        kw.update(factor=float(rp["factor"]), low_freq_factor=float(rp["low_freq_factor"]),
                  high_freq_factor=float(rp["high_freq_factor"]), original_max_position_embeddings=int(original))
    elif rope_type == "yarn":
        kw.update(original_max_position_embeddings=int(original),
                  factor=float(rp.get("factor") or max_pos / original),
                  attention_factor=float(rp.get("attention_factor") or 0.0),
                  beta_fast=float(rp.get("beta_fast") or 32.0), beta_slow=float(rp.get("beta_slow") or 1.0),
                  mscale=float(rp.get("mscale") or 0.0), mscale_all_dim=float(rp.get("mscale_all_dim") or 0.0),
                  truncate=bool(rp.get("truncate", True)))
    return _core.RotaryEmbedding(**kw)
