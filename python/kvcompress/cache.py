"""Caches over the caller's tensors, and the entry points ``compress`` and ``score``.

Tensors are NumPy arrays, PyTorch tensors or CuPy arrays (anything with DLPack), float32, float16
or bfloat16, with any strides, in host memory or on a CUDA device (a module built with CUDA; the
presses with CUDA kernels, ``kvcompress.cuda_presses``). Nothing is copied: compression moves
entries inside the caller's memory and writes the new lengths into ``cache.lengths``.
"""

from __future__ import annotations

import sys
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


def _is_cupy(t: Any) -> bool:
    return type(t).__module__.startswith("cupy")


_DLPACK_CUDA = 2  # DLPack's kDLCUDA


def _cuda_index(t: Any) -> Optional[int]:
    """The CUDA device a tensor lives on (DLPack's word), or None for host memory."""
    where = getattr(t, "__dlpack_device__", None)
    if where is None:
        return None
    kind, index = where()
    return int(index) if int(kind) == _DLPACK_CUDA else None


def _host(t: Any) -> Any:
    """A tensor's values as a NumPy array (copied from the device, or from a PyTorch tensor)."""
    if _is_torch(t):
        return t.detach().cpu().numpy()
    if _is_cupy(t):
        return t.get()
    return np.asarray(t)


def _current_stream(like: Any, device: int) -> Any:
    """The current stream of the library that made ``like`` (PyTorch's or CuPy's) on ``device``."""
    if _is_torch(like):
        return sys.modules["torch"].cuda.current_stream(device)
    if _is_cupy(like):
        cupy = sys.modules["cupy"]
        with cupy.cuda.Device(device):
            return cupy.cuda.get_current_stream()
    return None


def _stream_handle(stream: Any) -> int:
    """A cudaStream_t as an integer, from a ``torch.cuda.Stream`` (``cuda_stream``), a
    ``cupy.cuda.Stream`` (``ptr``) or an integer."""
    for attr in ("cuda_stream", "ptr"):
        if hasattr(stream, attr):
            return int(getattr(stream, attr))
    if isinstance(stream, int):
        return stream
    raise Error(f"stream must be a torch.cuda.Stream, a cupy.cuda.Stream or a cudaStream_t as an int, "
                f"got {type(stream).__name__}")


def _cuda_stream(like: Any, device: int, stream: Any) -> int:
    """The stream a call on a CUDA cache runs on: the caller's, else the current stream of the
    library that made the tensors (PyTorch, CuPy); another DLPack producer must name one."""
    if stream is not None:
        return _stream_handle(stream)
    current = _current_stream(like, device)
    if current is None:
        raise Error(f"the cache's tensors ({type(like).__module__}.{type(like).__name__}) are on cuda:{device} and "
                    f"kvcompress knows no current stream of theirs: pass stream= (the cudaStream_t their work is "
                    f"ordered on)")
    return _stream_handle(current)


def _to_device(host: np.ndarray, like: Any, device: int) -> Any:
    """A host array copied to ``like``'s device, as a tensor of ``like``'s library."""
    if _is_torch(like):
        return sys.modules["torch"].from_numpy(np.ascontiguousarray(host)).to(like.device)
    if _is_cupy(like):
        cupy = sys.modules["cupy"]
        with cupy.cuda.Device(device):
            return cupy.asarray(np.ascontiguousarray(host))
    raise Error(f"the cache's tensors ({type(like).__module__}.{type(like).__name__}) are on cuda:{device}: pass "
                f"lengths as an int32 [batch, kv_heads] tensor on that device")


def _full_on(like: Any, device: int, shape: tuple, value: float) -> Any:
    """A float32 tensor of ``shape`` filled with ``value`` on ``like``'s CUDA device, made by its library
    on its current stream."""
    if _is_torch(like):
        torch = sys.modules["torch"]
        return torch.full(shape, value, dtype=torch.float32, device=like.device)
    if _is_cupy(like):
        cupy = sys.modules["cupy"]
        with cupy.cuda.Device(device):
            return cupy.full(shape, value, dtype=cupy.float32)
    raise Error(f"score on cuda:{device} makes its output with PyTorch or CuPy; the cache's tensors are "
                f"{type(like).__module__}.{type(like).__name__}")


def _lengths_in_place(lengths: Any, batch: int, heads: int, like: Any, device: int) -> bool:
    """Whether ``lengths`` is already an int32 [batch, kv_heads] C-contiguous tensor on ``like``'s CUDA device."""
    if _cuda_index(lengths) != device or tuple(lengths.shape) != (batch, heads):
        return False
    if _is_torch(lengths):
        return lengths.dtype == sys.modules["torch"].int32 and lengths.is_contiguous()
    if _is_cupy(lengths):
        return lengths.dtype == np.int32 and lengths.flags.c_contiguous
    return False


def _lengths_array(lengths: Any, batch: int, heads: int, full: int, like: Any = None) -> Any:
    """The [batch, kv_heads] int32 lengths: the caller's array when it has that form (used in
    place), else a new array (from a per-sequence [batch] vector, or full rows). For a cache on a
    CUDA device (``like``'s), the new array is a tensor of ``like``'s library on that device."""
    device = _cuda_index(like) if like is not None else None
    if device is not None:
        if lengths is not None and _lengths_in_place(lengths, batch, heads, like, device):
            return lengths
        return _to_device(_lengths_array(None if lengths is None else _host(lengths), batch, heads, full), like,
                          device)
    if lengths is None:
        return np.full((batch, heads), full, dtype=np.int32)
    if _is_torch(lengths):
        import torch

        if lengths.dtype == torch.int32 and tuple(lengths.shape) == (batch, heads) and lengths.is_contiguous() \
                and lengths.device.type == "cpu":
            return lengths
        lengths = lengths.detach().cpu().numpy()
    arr = _host(lengths)
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

    On a CUDA device every tensor (lengths, positions, block tables, the observation's) must be on
    the keys' device; lengths given in another form or place are copied there. ``stream`` (a
    ``torch.cuda.Stream``, a ``cupy.cuda.Stream`` or a cudaStream_t as an int; by default the
    current stream of the tensors' library) orders the one-time check of the lengths and block
    tables after the caller's work.
    """

    def __init__(self, keys: Any, values: Any, lengths: Any = None, positions: Any = None, *, axes: str = "bhsd",
                 stream: Any = None):
        if sorted(axes) != sorted("bhsd"):
            raise Error(f"axes must order the letters b, h, s, d, got '{axes}'")
        order = [axes.index(a) for a in "bhsd"]
        if len(getattr(keys, "shape", ())) != 4:
            raise Error(f"keys must have 4 dimensions ({axes}), got shape {tuple(getattr(keys, 'shape', ()))}")
        _require_writeable(keys, "keys")
        _require_writeable(values, "values")
        k, v = (_permute(keys, order), _permute(values, order)) if axes != "bhsd" else (keys, values)
        b, h, n, _ = (int(x) for x in k.shape)
        self._tensors = (keys, values)
        self._device = _cuda_index(keys)
        call_stream = self._stream(stream)
        self._lengths = _lengths_array(lengths, b, h, n, keys)
        self._core = _core._strided_cache(k, v, self._lengths, positions, stream=call_stream)
        self._before: Optional[np.ndarray] = None

    @classmethod
    def paged(cls, k_pool: Any, v_pool: Any, block_table: Any, lengths: Any, *, kv_heads: int,
              page_order: str = "NHD", capacity: Optional[int] = None,
              v_block_table: Any = None, stream: Any = None) -> "KVCache":
        """A paged cache. ``k_pool``/``v_pool``: ``[num_pages, page_size, kv_heads, head_dim]``
        (``page_order="NHD"``), ``[num_pages, kv_heads, page_size, head_dim]`` (``"HND"``), or
        ``[num_pages, page_size, head_dim]`` with a per-head ``block_table``; any page stride
        (fused K/V pools), contiguous channels. ``block_table``: int32 ``[batch, pages]`` (one row
        per sequence) or ``[batch, kv_heads, pages]`` (one per head); entries past a row's live
        pages are never read. ``capacity`` defaults to ``pages * page_size``. ``v_block_table``
        (same shape): V's pages when they are other pages of the same pool (``v_pool is k_pool``).
        ``stream``: as for ``KVCache``."""
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
        self._tensors = (k_pool, v_pool, block_table, v_block_table)
        self._device = _cuda_index(k_pool)
        call_stream = self._stream(stream)
        if self._device is not None:
            # Tables an engine layout built on the host go to the pools' device (copies: the engine's
            # own device tables are used in place).
            block_table, v_block_table = (
                t if t is None or _cuda_index(t) is not None else _to_device(np.ascontiguousarray(_host(t)), k_pool,
                                                                              self._device)
                for t in (block_table, v_block_table))
        self._lengths = _lengths_array(lengths, batch, kv_heads, capacity, k_pool)
        self._core = _core._paged_cache(k4, v4, block_table, self._lengths, kv_heads, capacity,
                                        v_block_table=v_block_table, stream=call_stream)
        self._page_divisor = 1  # engine page id = table entry // divisor (a fused pool's halves)
        self._before = None
        self.per_head_table = per_head
        self.page_size = page_size
        return self

    def _stream(self, stream: Any) -> int:
        """The stream of a call on this cache (0 for a host cache, which has none)."""
        if self._device is None:
            return 0
        return _cuda_stream(self._tensors[0], self._device, stream)

    @property
    def device(self) -> str:
        """``"cpu"`` or ``"cuda:N"``: where the cache's tensors live."""
        return self._core.device

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

    def released_pages(self, *, stream: Any = None) -> np.ndarray:
        """The page (block) ids that the last ``compress`` emptied, as the engine's own ids from its
        block table, ready for its allocator. A page shared by the heads of a sequence is free once
        every head is shorter than its start. On a CUDA cache the lengths and the table are read
        from the device on ``stream``; the ids come back in host memory."""
        if not self._core.paged:
            raise Error("released_pages needs a paged cache")
        if self._before is None:
            return np.zeros(0, dtype=np.int32)
        table = self._tensors[2]
        out = np.empty(int(np.prod(table.shape)), dtype=np.int32)
        n = _core._released_pages(self._core, self._before, out, stream=self._stream(stream))
        return out[:n] // self._page_divisor

    def memory_report(self, *, stream: Any = None) -> dict:
        """K+V bytes (and pages) live now, and freed by the last ``compress`` (a CUDA cache's lengths
        and tables are read from the device on ``stream``)."""
        return _core._memory_report(self._core, self._before, stream=self._stream(stream))


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


def _native_on_shard(press: Any, observation: Optional[_core.Observation], cache: "KVCache") -> _core.NativePress:
    """``_native(press)``; on a tensor-parallel shard a press that cannot be built still reports
    this rank's failure to the group, so that every rank raises instead of waiting for this one."""
    try:
        return _native(press)
    except Error:
        if observation is not None and observation.shard is not None:
            _core._report_shard_failure(observation, cache._core)
        raise


def compress(press: Press, observation: Optional[_core.Observation], cache: KVCache, *, num_threads: int = 0,
             stream: Any = None) -> Any:
    """Compresses ``cache`` in place with ``press`` and returns its new lengths (``cache.lengths``,
    int32 ``[batch, kv_heads]``). Each row's kept entries move to its front, in position order.
    ``num_threads=0`` uses every core. Raises :class:`kvcompress.Error` on bad input, before
    anything moves.

    A cache on a CUDA device is compressed there, by the press's CUDA kernels, on ``stream`` (a
    ``torch.cuda.Stream``, a ``cupy.cuda.Stream`` or a cudaStream_t as an int; by default the current
    stream of the tensors' library); the call waits for that stream before it returns, and raises
    for what the device found (a bad length, a NaN), which left the cache unchanged.

    With ``observation.shard`` (a :class:`kvcompress.TensorParallelShard`) the cache holds this
    rank's kv heads of a layer split over a process group: every rank calls ``compress`` with its
    own heads, and each gets the whole layer's result for them; an error on one rank raises on
    every rank (``kvcompress.distributed``)."""
    native = _native_on_shard(press, observation, cache)
    call_stream = cache._stream(stream)
    if cache._core.paged:
        cache._before = np.array(_host(cache._lengths), dtype=np.int32, copy=True)
    _core._compress(native, observation if observation is not None else _core.Observation(), cache._core,
                    num_threads, call_stream)
    return cache._lengths


def score(press: Press, observation: Optional[_core.Observation], cache: KVCache, *, num_threads: int = 0,
          stream: Any = None) -> Any:
    """The press's scores, float32 ``[batch, kv_heads, capacity]`` (higher means keep); slots past
    a row's length are ``-inf``. Only scorer presses have scores. For a cache on a CUDA device the
    scores are a tensor of the cache's library on that device, computed on ``stream`` as in
    ``compress``."""
    native = _native_on_shard(press, observation, cache)
    b, h, n, _ = cache.shape
    call_stream = cache._stream(stream)
    if cache._device is None:
        out = np.full((b, h, n), -np.inf, dtype=np.float32)
    else:
        like = cache._tensors[0]
        out = _full_on(like, cache._device, (b, h, n), -np.inf)
        if stream is not None:
            # The fill ran on the library's current stream; the scores are written on the caller's.
            _current_stream(like, cache._device).synchronize()
    _core._score(native, observation if observation is not None else _core.Observation(), cache._core, out,
                 num_threads, call_stream)
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
