"""Presses on a tensor-parallel shard over a torch.distributed process group.

Each rank holds kv heads ``[first, first + count)`` of a layer; the presses that couple heads (AdaKV,
CriticalAdaKV, TOVA, PyramidKV, the decoding presses, ...) exchange what they need through the
group and give every rank the whole layer's result for its heads::

    import torch.distributed as dist
    import kvcompress as kvc
    from kvcompress.distributed import TorchDistributedCommunicator, tensor_parallel_shard

    comm = TorchDistributedCommunicator(group)        # None: the default group; vLLM: get_tp_group().cpu_group
    shard = tensor_parallel_shard(comm, kv_heads=8)   # rank r of P holds heads [8r/P, 8(r+1)/P)
    obs = kvc.Observation(queries=q_local, rope=rope, shard=shard)
    kvc.compress(kvc.AdaKVPress(kvc.ExpectedAttentionPress(0.5)), obs, kvc.KVCache(k_local, v_local))

The collectives are small host buffers (counts, histograms, per-head rows). On a gloo group (or a
group with a gloo CPU backend) they run on CPU tensors; on an NCCL group they are staged through
CUDA tensors on ``device``. Every wait is bounded by ``timeout``: a collective that does not complete
raises :class:`kvcompress.Error` naming it, on the ranks that wait, and the communicator is unusable
afterwards (a collective cannot be withdrawn from the group; end the job, or destroy the group).
"""

from __future__ import annotations

import time
from typing import Any, Optional

import numpy as np

from . import _core
from ._core import Error, TensorParallelShard

__all__ = ["TorchDistributedCommunicator", "tensor_parallel_shard", "head_range"]


class _TorchCollectives:
    """The collectives the library calls, over one torch.distributed group (the backend object of
    a :class:`kvcompress.Communicator`)."""

    def __init__(self, group: Any, timeout: float, device: Any) -> None:
        import torch
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise Error("TorchDistributedCommunicator needs an initialised torch.distributed "
                        "(torch.distributed.init_process_group) or a process group")
        if not timeout > 0:
            raise Error(f"timeout must be a positive number of seconds, got {timeout}")
        self._torch, self._dist, self.group, self.timeout = torch, dist, group, float(timeout)
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        if self.rank < 0:
            raise Error("this process is not a member of the process group it was given")
        if device is None:
            backend = str(dist.get_backend(group))
            # A group with a CPU backend (gloo, or "cpu:gloo,cuda:nccl") takes host tensors.
            if "gloo" in backend or "mpi" in backend:
                device = torch.device("cpu")
            elif "nccl" in backend:
                device = torch.device("cuda", torch.cuda.current_device())
            else:
                raise Error(f"the process group's backend '{backend}' is neither gloo nor nccl: "
                            "pass device= (where its collectives take tensors)")
        self.device = torch.device(device)
        self._broken: Optional[str] = None

    def _stage(self, array: np.ndarray) -> Any:
        """A copy of ``array`` on the group's device, which the collective may keep writing to after
        a timeout without touching the library's buffer."""
        return self._torch.from_numpy(array).to(self.device, copy=True)

    def _wait(self, work: Any, what: str) -> None:
        deadline = time.monotonic() + self.timeout
        pause = 1e-5
        while not work.is_completed():
            if time.monotonic() >= deadline:
                self._broken = (f"{what} did not complete within {self.timeout:g} s on rank {self.rank} of "
                                f"{self.size}")
                raise Error(f"torch.distributed {self._broken}: a rank of the group stopped taking part; the "
                            "communicator cannot be used any more")
            time.sleep(pause)
            pause = min(2 * pause, 1e-3)  # ranks may share cores: poll without spinning
        try:
            work.wait()
        except Exception as e:  # the backend's own failure: a rank died, a connection closed
            self._broken = f"{what} failed on rank {self.rank} of {self.size}: {e}"
            raise Error(f"torch.distributed {self._broken}") from e

    def _check_usable(self, what: str) -> None:
        if self._broken is not None:
            raise Error(f"torch.distributed {what}: the communicator cannot be used any more (an earlier "
                        f"collective: {self._broken})")

    def all_reduce(self, buffer: np.ndarray, op: str) -> None:
        what = f"all_reduce ({op} of {buffer.size} {buffer.dtype})"
        self._check_usable(what)
        dist = self._dist
        t = self._stage(buffer)
        work = dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX, group=self.group,
                               async_op=True)
        self._wait(work, what)
        buffer[...] = t.cpu().numpy()

    def all_gather(self, send: np.ndarray, recv: np.ndarray) -> None:
        what = f"all_gather ({send.size} {send.dtype} per rank)"
        self._check_usable(what)
        t = self._stage(send)
        parts = [self._torch.empty_like(t) for _ in range(self.size)]
        work = self._dist.all_gather(parts, t, group=self.group, async_op=True)
        self._wait(work, what)
        recv[...] = self._torch.cat(parts).cpu().numpy()


class TorchDistributedCommunicator(_core.Communicator):
    """A :class:`kvcompress.Communicator` over a torch.distributed process group: ``group=None`` is
    the default group; any ``ProcessGroup`` works (vLLM's ``get_tp_group().cpu_group`` or
    ``.device_group``, SGLang's tensor-parallel group). ``timeout`` (seconds) bounds each
    collective; ``device`` is where the collectives stage their buffers (default: the CPU for a
    gloo group, the current CUDA device for an NCCL group)."""

    def __init__(self, group: Any = None, *, timeout: float = 60.0, device: Any = None) -> None:
        backend = _TorchCollectives(group, timeout, device)
        super().__init__(backend, backend.rank, backend.size)
        self.group = group
        self.timeout = backend.timeout
        self.device = backend.device


def head_range(kv_heads: int, rank: int, size: int) -> tuple[int, int]:
    """The engines' split (vLLM, SGLang, TensorRT-LLM): rank ``r`` of ``P`` holds kv heads
    ``[kv_heads*r//P, kv_heads*(r+1)//P)``; returns ``(first_kv_head, count)``."""
    if not (size >= 1 and 0 <= rank < size):
        raise Error(f"head_range needs 0 <= rank < size, got rank {rank} of {size}")
    if kv_heads < size:
        raise Error(f"kv_heads = {kv_heads} cannot be split over {size} ranks (engines replicate heads then: pass "
                    "a communicator over one replica of each head)")
    first = kv_heads * rank // size
    return first, kv_heads * (rank + 1) // size - first


def tensor_parallel_shard(communicator: _core.Communicator, kv_heads: int,
                          first_kv_head: Optional[int] = None) -> TensorParallelShard:
    """The :class:`kvcompress.TensorParallelShard` of this rank in a layer of ``kv_heads`` kv heads:
    by default the engines' split (:func:`head_range`), else heads from ``first_kv_head`` on."""
    if first_kv_head is None:
        first_kv_head, _ = head_range(kv_heads, communicator.rank, communicator.size)
    return TensorParallelShard(communicator, first_kv_head, kv_heads)
