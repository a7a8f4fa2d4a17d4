"""The KV-cache layouts of vLLM, SGLang, FlashInfer and HF transformers, as :class:`KVCache` views.

Each constructor takes the engine's own tensors as the engine allocates them and builds a view
over them without copying the cache (a block table is gathered or padded where the engine keeps
it in another form). After :func:`kvcompress.compress`, ``cache.lengths`` holds each (sequence,
KV head) row's new length and ``cache.released_pages()`` the engine's own block (or token-slot)
ids that compression emptied, ready for the engine's allocator.

The engines' paged layouts have one block table row per sequence, so a block is free once every KV
head of the sequence is shorter than its start: with per-head budgets (AdaKV) a sequence's
attention must then respect each head's own length (``cache.lengths``), which the engines' kernels
do not do; presses with one budget for all heads shorten every head alike.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from . import _core
from .cache import Error, KVCache, _host, _is_torch, compress

__all__ = ["vllm_paged", "sglang_token_pool", "flashinfer_paged", "flashinfer_indices", "hf_cache_layer",
           "compress_dynamic_cache"]


def _numpy(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy() if _is_torch(t) else np.asarray(t)


def _int32_table(t: Any, name: str) -> Any:
    """The engine's int32 table as it is (zero copy) when it already is one, else an int32 copy."""
    if _is_torch(t):
        import torch

        if t.dtype == torch.int32 and t.device.type in ("cpu", "cuda"):
            return t
    elif isinstance(t, np.ndarray) and t.dtype == np.int32:
        return t
    arr = _numpy(t)
    if not np.issubdtype(arr.dtype, np.integer):
        raise Error(f"{name} must hold integer block ids, got {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.int32)


def vllm_paged(key_cache: Any, value_cache: Optional[Any] = None, *, block_tables: Any, seq_lens: Any) -> KVCache:
    """vLLM's paged cache of one layer.

    ``key_cache``, ``value_cache``: ``[num_blocks, block_size, num_kv_heads, head_size]`` each, or
    ``key_cache`` the fused ``[2, num_blocks, block_size, num_kv_heads, head_size]`` tensor and
    ``value_cache`` None. ``block_tables``: int32 ``[num_seqs, max_num_blocks_per_seq]`` (a slice
    of a wider table is fine); ``seq_lens``: ``[num_seqs]``. Freed pages are vLLM block ids.
    """
    if value_cache is None:
        if len(key_cache.shape) != 5 or int(key_cache.shape[0]) != 2:
            raise Error(f"a fused vLLM kv_cache must be [2, num_blocks, block_size, num_kv_heads, head_size], "
                        f"got shape {tuple(key_cache.shape)}")
        key_cache, value_cache = key_cache[0], key_cache[1]
    if len(key_cache.shape) != 4:
        raise Error(f"key_cache must be [num_blocks, block_size, num_kv_heads, head_size], got shape "
                    f"{tuple(key_cache.shape)}")
    table = _int32_table(block_tables, "block_tables")
    return KVCache.paged(key_cache, value_cache, table, _numpy(seq_lens), kv_heads=int(key_cache.shape[2]),
                         page_order="NHD")


def sglang_token_pool(k_buffer: Any, v_buffer: Any, *, req_to_token: Any, req_pool_indices: Any,
                      seq_lens: Any) -> KVCache:
    """SGLang's token pool of one layer (``MHATokenToKVPool.k_buffer[layer]``).

    ``k_buffer``, ``v_buffer``: ``[pool_size, head_num, head_dim]``; ``req_to_token``: int32
    ``[max_num_reqs, max_context_len]`` (pool slot of each token of each request);
    ``req_pool_indices``: the batch's rows of it; ``seq_lens``: ``[batch]``. Each token slot is a
    page of one token, so the freed ids are token-pool slots (``token_to_kv_pool_allocator.free``);
    the kept tokens move to the first slots of each request's row of ``req_to_token``.
    """
    if len(k_buffer.shape) != 3:
        raise Error(f"k_buffer must be [pool_size, head_num, head_dim], got shape {tuple(k_buffer.shape)}")
    lens = _numpy(seq_lens).astype(np.int64)
    rows = _numpy(req_to_token)[_numpy(req_pool_indices).astype(np.int64)]
    width = max(int(lens.max()) if lens.size else 1, 1)
    table = np.ascontiguousarray(rows[:, :width], dtype=np.int32)
    k4 = k_buffer[:, :, None, :] if _is_torch(k_buffer) else k_buffer[:, :, np.newaxis, :]
    v4 = v_buffer[:, :, None, :] if _is_torch(v_buffer) else v_buffer[:, :, np.newaxis, :]
    return KVCache.paged(k4, v4, table, lens, kv_heads=int(k_buffer.shape[1]), page_order="HND")


def flashinfer_paged(paged_kv_cache: Any, *, kv_indptr: Any, kv_indices: Any, kv_last_page_len: Any,
                     kv_layout: str = "NHD") -> KVCache:
    """FlashInfer's paged cache of one layer.

    ``paged_kv_cache``: a ``(k_cache, v_cache)`` tuple of ``[max_num_pages, page_size, num_kv_heads,
    head_dim]`` (``kv_layout="NHD"``) or ``[max_num_pages, num_kv_heads, page_size, head_dim]``
    (``"HND"``), or one tensor ``[max_num_pages, 2, ...]`` holding both. ``kv_indptr`` ``[batch + 1]``,
    ``kv_indices`` and ``kv_last_page_len`` ``[batch]`` as FlashInfer's wrappers take them. Freed ids
    are FlashInfer page ids; :func:`flashinfer_indices` gives the arrays for the next ``plan``.
    """
    if kv_layout not in ("NHD", "HND"):
        raise Error(f"kv_layout must be 'NHD' or 'HND', got '{kv_layout}'")
    fused = not isinstance(paged_kv_cache, (tuple, list))
    if fused:
        t = paged_kv_cache
        if len(t.shape) != 5 or int(t.shape[1]) != 2:
            raise Error(f"a single FlashInfer paged_kv_cache must be [max_num_pages, 2, ...], got shape {tuple(t.shape)}")
        k = v = _fused_pages(t)
    else:
        k, v = paged_kv_cache
    if len(k.shape) != 4:
        raise Error(f"k_cache must have 4 dimensions, got shape {tuple(k.shape)}")
    page_size = int(k.shape[1] if kv_layout == "NHD" else k.shape[2])
    heads = int(k.shape[2] if kv_layout == "NHD" else k.shape[1])
    indptr = _numpy(kv_indptr).astype(np.int64)
    indices = _numpy(kv_indices).astype(np.int64)
    last = _numpy(kv_last_page_len).astype(np.int64)
    counts = np.diff(indptr)
    if indptr.ndim != 1 or indptr.size < 2 or (counts < 0).any() or indptr[0] != 0 or indptr[-1] > indices.size:
        raise Error(f"kv_indptr must start at 0, not decrease and end within kv_indices ({indices.size}), got "
                    f"{indptr.tolist()}")
    batch = counts.size
    if last.shape != (batch,):
        raise Error(f"kv_last_page_len must be [batch] = [{batch}], got shape {last.shape}")
    if ((last < 1) | (last > page_size))[counts > 0].any():
        raise Error(f"kv_last_page_len must be in [1, page_size = {page_size}], got {last.tolist()}")
    table = np.full((batch, max(int(counts.max()), 1)), -1, dtype=np.int32)
    for b in range(batch):
        table[b, :counts[b]] = indices[indptr[b]:indptr[b + 1]]
    lengths = np.where(counts > 0, (counts - 1) * page_size + last, 0)
    if not fused:
        cache = KVCache.paged(k, v, table, lengths, kv_heads=heads, page_order=kv_layout)
    else:
        # Page p's keys are page 2p of the pool seen as [2 * max_num_pages, ...], its values page
        # 2p + 1: one pool shared by K and V through two tables (entries past the live pages stay -1).
        k_table = np.where(table >= 0, 2 * table, -1).astype(np.int32)
        v_table = np.where(table >= 0, 2 * table + 1, -1).astype(np.int32)
        cache = KVCache.paged(k, k, k_table, lengths, kv_heads=heads, page_order=kv_layout, v_block_table=v_table)
        cache._page_divisor = 2
    cache._engine_table = table
    return cache


def _fused_pages(t: Any) -> Any:
    """``[max_num_pages, 2, *page]`` as ``[2 * max_num_pages, *page]`` without a copy."""
    shape = (2 * int(t.shape[0]),) + tuple(int(x) for x in t.shape[2:])
    if _is_torch(t):
        try:
            return t.view(shape)
        except RuntimeError as e:
            raise Error(f"the FlashInfer paged_kv_cache's pages must be contiguous along [max_num_pages, 2]: {e}")
    out = t.view()
    try:
        out.shape = shape  # NumPy refuses a reshape that would copy
    except AttributeError as e:
        raise Error(f"the FlashInfer paged_kv_cache's pages must be contiguous along [max_num_pages, 2]: {e}")
    return out


def flashinfer_indices(cache: KVCache) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(kv_indptr, kv_indices, kv_last_page_len)`` of a FlashInfer cache after compression: each
    sequence keeps the pages its longest head needs."""
    table = cache._engine_table
    page_size = cache.page_size
    longest = _host(cache.lengths).max(axis=1).astype(np.int64)
    counts = (longest + page_size - 1) // page_size
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    indices = np.concatenate([table[b, :counts[b]] for b in range(len(counts))]).astype(np.int32)
    last = np.where(counts > 0, longest - (counts - 1) * page_size, 0).astype(np.int32)
    return indptr, indices, last


def hf_cache_layer(cache: Any, layer_idx: int) -> KVCache:
    """A view over layer ``layer_idx`` of a transformers ``DynamicCache`` (``[batch, kv_heads, seq,
    head_dim]`` keys and values)."""
    layer = cache.layers[layer_idx]
    return KVCache(layer.keys, layer.values)


def compress_dynamic_cache(press: Any, observation: Optional[_core.Observation], cache: Any, layer_idx: int, *,
                           num_threads: int = 0) -> int:
    """Compresses layer ``layer_idx`` of a transformers ``DynamicCache`` in place and shortens its
    tensors to the kept entries (a copy of the kept part, so the rest is given back). HF's cache
    holds one length for every head: a press with per-head budgets (AdaKV) raises. Returns the new
    length."""
    view = hf_cache_layer(cache, layer_idx)
    lengths = _host(compress(press, observation, view, num_threads=num_threads))
    n = int(lengths.flat[0])
    if (lengths != n).any():
        raise Error(f"HF's DynamicCache holds one length for all heads; the press gave {lengths.tolist()} "
                    "(the layer is compacted in place, each head's entries at its front)")
    layer = cache.layers[layer_idx]
    layer.keys = layer.keys[:, :, :n].clone()
    layer.values = layer.values[:, :, :n].clone()
    return n
