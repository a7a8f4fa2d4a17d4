"""kvcompress: KV-cache compression (kvpress's presses, in C++) over PyTorch and NumPy tensors.

    import kvcompress as kvc
    cache = kvc.KVCache(keys, values)                 # [batch, kv_heads, seq, head_dim], no copy
    obs = kvc.Observation(queries=q, rope=kvc.rotary_embedding_from_config(model.config))
    lengths = kvc.compress(kvc.ExpectedAttentionPress(0.5), obs, cache)  # in place

Engine layouts (vLLM, SGLang, FlashInfer, HF DynamicCache): :mod:`kvcompress.layouts`.
A drop-in for kvpress's pipeline: :mod:`kvcompress.kvpress`.
A layer's kv heads split over a torch.distributed group (tensor parallelism): :mod:`kvcompress.distributed`.
"""

from ._core import (Communicator, Error, FastKVzipGate, Observation, RotaryEmbedding, TensorParallelShard, cuda_enabled,
                    cuda_presses)
from .cache import KVCache, compress, rotary_embedding_from_config, score, workspace_bytes
from .presses import *  # noqa: F401,F403
from .presses import __all__ as _press_names

__version__ = "0.1.0"

__all__ = ["Communicator", "Error", "FastKVzipGate", "Observation", "RotaryEmbedding", "TensorParallelShard", "KVCache", "compress", "score", "workspace_bytes",
           "rotary_embedding_from_config", "cuda_enabled", "cuda_presses", *_press_names]
