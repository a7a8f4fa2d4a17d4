"""Presses on a layer whose kv heads are split over 2 and 4 processes (torch.multiprocessing, a gloo
torch.distributed group on a free port), through kvcompress.distributed.TorchDistributedCommunicator: each
rank holds its heads of the same layer, and its lengths and kept entries must equal those rows of the
whole layer compressed by the single-process press in the same process (the single-process presses are
checked against kvpress in test_golden.py and test_decoding.py). Balanced, lopsided and uneven splits;
bad input on rank 1 only raises kvcompress.Error on every rank, well within the communicator's timeout;
a rank that never joins a collective is a timeout naming it, after which the communicator refuses."""

import datetime
import socket
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)
import torch.multiprocessing as mp  # noqa: E402

import kvcompress as kvc  # noqa: E402
from kvcompress.distributed import TorchDistributedCommunicator, head_range, tensor_parallel_shard  # noqa: E402

WINDOW, HIDDEN = 4, 24
COMM_TIMEOUT = 20.0  # seconds: a hang would fail the error checks below, which must finish sooner
ERROR_WITHIN = 15.0  # the other ranks name rank 1, so the error came through the protocol, not the timeout


class Layer:
    """The whole layer: keys and values [batch, heads, capacity, d], rows of `n` live entries, and the
    activations a press reads (pre-RoPE queries, post-RoPE window queries, W_o) for heads·group query heads."""

    def __init__(self, batch, heads, group, n, capacity, d, seed):
        rng = np.random.default_rng(seed)
        self.batch, self.heads, self.group, self.n, self.d = batch, heads, group, n, d
        self.keys = rng.standard_normal((batch, heads, capacity, d), dtype=np.float32)
        self.values = rng.standard_normal((batch, heads, capacity, d), dtype=np.float32)
        self.queries = rng.standard_normal((batch, heads * group, n, d), dtype=np.float32)
        self.window_queries = rng.standard_normal((batch, heads * group, WINDOW, d), dtype=np.float32)
        self.wo = (0.3 * rng.standard_normal((HIDDEN, heads * group * d))).astype(np.float32)
        self.rope = kvc.RotaryEmbedding(d)

    def part(self, first, count, length=None):
        """Kv heads [first, first + count) as a cache of their own (copies) and their lengths."""
        k = self.keys[:, first:first + count].copy()
        v = self.values[:, first:first + count].copy()
        lengths = np.full((self.batch, count), self.n if length is None else length, np.int32)
        return k, v, lengths

    def observation(self, first, count, shard=None, **fields):
        """The activations of those heads' query heads: views of the whole layer's, not copies."""
        g, d = self.group, self.d
        return kvc.Observation(queries=self.queries[:, first * g:(first + count) * g],
                               window_queries=self.window_queries[:, first * g:(first + count) * g],
                               output_projection=self.wo[:, first * g * d:(first + count) * g * d],
                               rope=self.rope, shard=shard, **fields)


def kept_rows(k, v, lengths):
    """Each row's length and live keys and values."""
    return [(int(lengths[b, h]), k[b, h, :lengths[b, h]].copy(), v[b, h, :lengths[b, h]].copy())
            for b in range(k.shape[0]) for h in range(k.shape[1])]


def assert_rows_equal(got, want, what):
    assert len(got) == len(want), what
    for i, ((lg, kg, vg), (lw, kw, vw)) in enumerate(zip(got, want)):
        assert lg == lw, f"{what}: row {i} keeps {lg} entries, the whole layer {lw}"
        assert np.array_equal(kg, kw) and np.array_equal(vg, vw), f"{what}: row {i} keeps other entries"


# name -> (press factory, observation fields): the C++ shard tests' coupled scenarios.
SCENARIOS = {
    "AdaKV(ExpectedAttention)": (lambda: kvc.AdaKVPress(kvc.ExpectedAttentionPress(0.6), alpha_safeguard=0.2), {}),
    "CriticalAdaKV(ExpectedAttention)":
        (lambda: kvc.CriticalAdaKVPress(kvc.ExpectedAttentionPress(0.6), alpha_safeguard=0.2), {}),
    "TOVA": (lambda: kvc.TOVAPress(0.5), {}),
    "PyramidKV": (lambda: kvc.PyramidKVPress(0.5, window_size=WINDOW, kernel_size=3, beta=2),
                  {"layer_idx": 3, "num_layers": 8}),
}


def check_scenarios(comm, layer, split, rank):
    """Every scenario on this rank's heads of `split` against the whole layer in this process."""
    first, count = sum(split[:rank]), split[rank]
    shard = kvc.TensorParallelShard(comm, first, layer.heads)
    for name, (make, fields) in SCENARIOS.items():
        wk, wv, wl = layer.part(0, layer.heads)
        kvc.compress(make(), layer.observation(0, layer.heads, **fields), kvc.KVCache(wk, wv, wl), num_threads=1)
        assert (wl < layer.n).any(), f"{name} compressed nothing: the comparison would prove nothing"
        k, v, lengths = layer.part(first, count)
        kvc.compress(make(), layer.observation(first, count, shard, **fields), kvc.KVCache(k, v, lengths),
                     num_threads=1)
        heads = slice(first, first + count)
        assert_rows_equal(kept_rows(k, v, lengths), kept_rows(wk[:, heads], wv[:, heads], wl[:, heads]),
                          f"{name}, rank {rank} of split {split}")


PREFILL, STEPS = 24, 10


def run_decoding(layer, first, count, shard):
    """DecodingPress(TOVA), every 4 passes to 20 entries per row, over a prefill of 24 and 10 passes of
    one token on heads [first, first + count); returns the lengths after each pass and the kept rows."""
    press = kvc.DecodingPress(kvc.TOVAPress(), compression_interval=4, target_size=20, hidden_states_buffer_size=8)
    k, v, lengths = layer.part(first, count, PREFILL)
    k[:, :, PREFILL:] = 0.0
    v[:, :, PREFILL:] = 0.0
    cache = kvc.KVCache(k, v, lengths)
    g = layer.group
    press.step(kvc.Observation(queries=layer.queries[:, first * g:(first + count) * g, :PREFILL], rope=layer.rope,
                               position=0, shard=shard), cache, num_threads=1)
    history = []
    for j in range(STEPS):
        for h in range(count):
            slot = lengths[0, h]
            k[0, h, slot] = layer.keys[0, first + h, PREFILL + j]
            v[0, h, slot] = layer.values[0, first + h, PREFILL + j]
            lengths[0, h] += 1
        press.step(kvc.Observation(queries=layer.queries[:, first * g:(first + count) * g, PREFILL + j:PREFILL + j + 1],
                                   rope=layer.rope, position=PREFILL + j, shard=shard), cache, num_threads=1)
        history.append(lengths.copy())
    return history, kept_rows(k, v, lengths)


def check_decoding(comm, split, rank):
    layer = Layer(1, 8, 2, PREFILL + STEPS, PREFILL + STEPS, 16, 23)
    first, count = sum(split[:rank]), split[rank]
    whole_history, whole_rows = run_decoding(layer, 0, 8, None)
    assert whole_history[-1].max() < PREFILL + STEPS, "the decoding press never compressed"
    history, rows = run_decoding(layer, first, count, kvc.TensorParallelShard(comm, first, 8))
    for j, (got, want) in enumerate(zip(history, whole_history)):
        assert np.array_equal(got, want[:, first:first + count]), f"lengths after pass {j}, rank {rank} of {split}"
    assert_rows_equal(rows, whole_rows[first:first + count], f"DecodingPress(TOVA), rank {rank} of split {split}")


def expect_error_everywhere(rank, call, own, others):
    """`call` raises kvcompress.Error on this rank, soon; rank 1's message has `own`, the others' `others`."""
    start = time.monotonic()
    with pytest.raises(kvc.Error) as err:
        call()
    elapsed = time.monotonic() - start
    assert elapsed < ERROR_WITHIN, f"the error took {elapsed:.1f} s on rank {rank}"
    assert (own if rank == 1 else others) in str(err.value), str(err.value)


def check_errors(comm, rank, size):
    layer = Layer(2, 8, 2, 40, 40, 16, 7)
    first, count = head_range(8, rank, size)
    shard = tensor_parallel_shard(comm, 8)
    assert (shard.first_kv_head, shard.kv_heads, shard.split) == (first, 8, True)
    press = kvc.AdaKVPress(kvc.ExpectedAttentionPress(0.6))
    failed = f"rank 1 of {size} failed"

    k, v, lengths = layer.part(first, count)
    if rank == 1:
        k[0, 0, 5, 3] = np.nan
    expect_error_everywhere(rank, lambda: kvc.compress(press, layer.observation(first, count, shard),
                                                       kvc.KVCache(k, v, lengths)), "keys[0, 0, 5, 3] = nan is not finite", failed)

    # Rejected by the binding before the library's handshake: queries of another dtype.
    k, v, lengths = layer.part(first, count)
    obs = layer.observation(first, count, shard)
    if rank == 1:
        obs.queries = layer.queries[:, first * 2:(first + count) * 2].astype(np.float64)
    expect_error_everywhere(rank, lambda: kvc.compress(press, obs, kvc.KVCache(k, v, lengths)),
                            "observation.queries must be float32, float16 or bfloat16, got float64", failed)

    # A ratio the library rejects on rank 1 only.
    bad = kvc.AdaKVPress(kvc.ExpectedAttentionPress(1.5 if rank == 1 else 0.6))
    expect_error_everywhere(rank, lambda: kvc.compress(bad, layer.observation(first, count, shard),
                                                       kvc.KVCache(*layer.part(first, count))),
                            "compression_ratio must be in [0, 1), got 1.5", failed)

    # Rejected before the binding is called: a press that cannot be built (a wrapper around a non-scorer).
    bad = kvc.AdaKVPress(kvc.ChunkKVPress(kvc.KnormPress(0.5), 4) if rank == 1 else kvc.KnormPress(0.5))
    expect_error_everywhere(rank, lambda: kvc.compress(bad, layer.observation(first, count, shard),
                                                       kvc.KVCache(*layer.part(first, count))),
                            "wraps a scorer press", failed)

    # Rank 1 claims rank 0's heads: every rank finds the heads do not tile the layer.
    overlap = kvc.TensorParallelShard(comm, 0 if rank == 1 else first, 8)
    expect_error_everywhere(rank, lambda: kvc.compress(press, layer.observation(first, count, overlap),
                                                       kvc.KVCache(*layer.part(first, count))), "tile", "tile")

    # A decoding press's step rejected on rank 1 only (a pass without queries after the prefill).
    step_press = kvc.DecodingPress(kvc.KnormPress(), compression_interval=2, target_size=8,
                                   hidden_states_buffer_size=4)
    k, v, lengths = layer.part(first, count)
    cache = kvc.KVCache(k, v, lengths)
    g = layer.group
    step_press.step(kvc.Observation(queries=layer.queries[:, first * g:(first + count) * g], position=0,
                                    shard=shard), cache)
    queries = None if rank == 1 else layer.queries[:, first * g:(first + count) * g, :1]
    expect_error_everywhere(rank, lambda: step_press.step(kvc.Observation(queries=queries, position=40, shard=shard),
                                                          cache), "observation.queries must be given", failed)

    # The group is still in step: a good call succeeds on every rank.
    k, v, lengths = layer.part(first, count)
    kvc.compress(press, layer.observation(first, count, shard), kvc.KVCache(k, v, lengths))
    assert (lengths < 40).any()


def check_collectives(comm, rank, size):
    """The communicator's collectives alone (through the library's interface)."""
    assert (comm.rank, comm.size) == (rank, size)
    ints = np.array([rank, -rank, 2**40 + rank], np.int64)
    comm.all_reduce(ints, "sum")
    assert ints.tolist() == [sum(range(size)), -sum(range(size)), size * 2**40 + sum(range(size))]
    floats = np.array([rank + 0.5, -float(rank)], np.float32)
    comm.all_reduce(floats, "max")
    assert floats.tolist() == [size - 0.5, 0.0]
    recv = np.zeros(2 * size, np.int64)
    comm.all_gather(np.array([rank, 10 * rank], np.int64), recv)
    assert recv.tolist() == [x for r in range(size) for x in (r, 10 * r)]
    with pytest.raises(kvc.Error, match="op must be 'sum' or 'max'"):
        comm.all_reduce(ints, "min")


def worker(rank, size, port, checks):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size,
                            timeout=datetime.timedelta(seconds=60))
    comm = TorchDistributedCommunicator(timeout=COMM_TIMEOUT)
    for check in checks:
        check(comm, rank, size)
    dist.barrier()
    dist.destroy_process_group()


def launch(size, checks, deadline=120.0):
    """Runs `worker` on `size` forked processes; a failing rank's traceback fails the test."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.start_processes(worker, args=(size, port, checks), nprocs=size, join=False, start_method="fork")
    end = time.monotonic() + deadline
    while not ctx.join(timeout=0.5):
        if time.monotonic() > end:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"the {size} ranks did not finish within {deadline:.0f} s")


def coupled_on_splits(splits, layer_args):
    def check(comm, rank, size):
        for split in splits:
            check_scenarios(comm, Layer(*layer_args), split, rank)
    return check


def decoding_on_splits(splits):
    def check(comm, rank, size):
        for split in splits:
            check_decoding(comm, split, rank)
    return check


def test_two_ranks():
    launch(2, [check_collectives,
               coupled_on_splits([[4, 4], [1, 7]], (2, 8, 2, 40, 40, 16, 7)),
               decoding_on_splits([[4, 4], [1, 7]]),
               check_errors])


def test_four_ranks_and_uneven_splits():
    launch(4, [check_collectives,
               coupled_on_splits([[2, 2, 2, 2], [1, 1, 1, 5]], (2, 8, 2, 40, 40, 16, 7)),
               # Six heads over four ranks (rows of 36 live entries in a capacity of 40).
               coupled_on_splits([[1, 2, 1, 2], [3, 1, 1, 1]], (1, 6, 3, 36, 40, 16, 5)),
               decoding_on_splits([[2, 2, 2, 2]]),
               check_errors])


def timeout_worker(rank, size, port):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size,
                            timeout=datetime.timedelta(seconds=60))
    side = dist.new_group(backend="gloo")  # the group rank 1 leaves hanging
    comm = TorchDistributedCommunicator(side, timeout=1.0)
    layer = Layer(1, 8, 2, 40, 40, 16, 7)
    first, count = head_range(8, rank, size)
    if rank == 0:
        press = kvc.AdaKVPress(kvc.ExpectedAttentionPress(0.6))
        start = time.monotonic()
        with pytest.raises(kvc.Error, match=r"all_gather .* did not complete within 1 s on rank 0 of 2"):
            kvc.compress(press, layer.observation(first, count, tensor_parallel_shard(comm, 8)),
                         kvc.KVCache(*layer.part(first, count)))
        assert 1.0 <= time.monotonic() - start < 1.0 + ERROR_WITHIN
        with pytest.raises(kvc.Error, match="cannot be used any more"):
            comm.all_reduce(np.zeros(1, np.int64))
    dist.barrier()  # rank 1 waits here, on the default group, never joining the side group's collective


def test_a_rank_that_never_joins_is_a_timeout_naming_the_collective():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.start_processes(timeout_worker, args=(2, port), nprocs=2, join=False, start_method="fork")
    end = time.monotonic() + 60
    while not ctx.join(timeout=0.5):
        if time.monotonic() > end:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail("the ranks did not finish within 60 s")


def test_shard_arguments_are_checked():
    with pytest.raises(kvc.Error, match="first_kv_head must be >= 0, got -1"):
        kvc.TensorParallelShard(None, -1, 8)
    with pytest.raises(kvc.Error, match="kv_heads must be >= 0"):
        kvc.TensorParallelShard(None, 0, -2)
    with pytest.raises(kvc.Error, match="cannot be split over 4 ranks"):
        head_range(3, 0, 4)
    assert head_range(6, 1, 4) == (1, 2)
    assert kvc.TensorParallelShard(None).split is False
    # Without a communicator the cache must be the whole layer.
    layer = Layer(1, 4, 2, 16, 16, 16, 3)
    with pytest.raises(kvc.Error, match="no communicator"):
        kvc.compress(kvc.KnormPress(0.5), kvc.Observation(shard=kvc.TensorParallelShard(None, 2, 8)),
                     kvc.KVCache(*layer.part(2, 2)))
    with pytest.raises(kvc.Error, match="0 <= rank < size"):
        kvc.Communicator(object(), 2, 2)


def test_communicator_needs_an_initialised_group():
    if dist.is_initialized():
        pytest.skip("this process already has a default group")
    with pytest.raises(kvc.Error, match="init_process_group"):
        TorchDistributedCommunicator()
