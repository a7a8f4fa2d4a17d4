"""FastKVzip and KVCompose, which score every layer before evicting across layers and heads, on a
model whose kv heads are split over 2 and 3 processes (a gloo torch.distributed group, forked ranks, as
test_distributed.py): each rank holds its heads of every layer, and its kept entries (and KVCompose's
plan) must equal those of the whole model compressed by the single-process calls in the same process.
Bad input on rank 1 only raises kvcompress.Error on every rank, well within the communicator's timeout."""

import time

import numpy as np
import pytest

pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

import kvcompress as kvc  # noqa: E402
from test_distributed import ERROR_WITHIN, assert_rows_equal, kept_rows, launch  # noqa: E402

LAYERS, HEADS, GROUP, TOKENS, HEAD_DIM = 3, 6, 2, 32, 8
GATE_DIM, GATE_SINK, GATE_HIDDEN, REPLAY = 4, 3, 12, 3


def model_caches(seed):
    """Keys and values [1, heads, tokens, head_dim] of every layer."""
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((1, HEADS, TOKENS, HEAD_DIM), dtype=np.float32),
             rng.standard_normal((1, HEADS, TOKENS, HEAD_DIM), dtype=np.float32)) for _ in range(LAYERS)]


class Part:
    """Kv heads [first, first + count) of a layer as a cache of their own (copies; the cache wraps them)."""

    def __init__(self, layer_kv, first, count):
        k, v = layer_kv
        self.k, self.v = k[:, first:first + count].copy(), v[:, first:first + count].copy()
        self.lengths = np.full((1, count), TOKENS, np.int32)
        self.cache = kvc.KVCache(self.k, self.v, self.lengths)

    def rows(self, heads=slice(None)):
        return kept_rows(self.k[:, heads], self.v[:, heads], self.lengths[:, heads])


def gates_and_inputs(seed):
    rng = np.random.default_rng(seed)
    q = HEADS * GROUP * GATE_DIM

    def normal(*shape, scale=1.0):
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    gates = [kvc.FastKVzipGate(normal(q, GATE_HIDDEN, scale=0.5), normal(q, scale=0.2),
                               normal(HEADS * GATE_DIM, GATE_HIDDEN, scale=0.5), normal(GATE_DIM), normal(GATE_DIM),
                               normal(HEADS, 1, GATE_SINK, GATE_DIM), normal(HEADS, 1, GROUP)) for _ in range(LAYERS)]
    hidden = [normal(1, TOKENS, GATE_HIDDEN) for _ in range(LAYERS)]
    return gates, hidden


def check_fast_kvzip(split, rank):
    first, count = sum(split[:rank]), split[rank]
    comm_shard = kvc.TensorParallelShard(COMM[0], first, HEADS)
    caches = model_caches(31)
    gates, hidden = gates_and_inputs(32)
    for ratio in (0.5, 0.9):  # 0.9: fewer kept than the sinks' and window's ties at score 1
        press = kvc.FastKVzipPress(ratio, window_ratio=0.1)
        whole = [Part(kv, 0, HEADS) for kv in caches]
        press.compress(gates, hidden, [p.cache for p in whole], num_threads=1)
        assert all((p.lengths < TOKENS).any() for p in whole), "nothing evicted: the comparison would prove nothing"
        mine = [Part(kv, first, count) for kv in caches]
        press.compress([g.heads(first, count) for g in gates], hidden, [p.cache for p in mine], num_threads=1,
                       shard=comm_shard)
        for layer, (got, want) in enumerate(zip(mine, whole)):
            assert_rows_equal(got.rows(), want.rows(slice(first, first + count)),
                              f"FastKVzip {ratio}, layer {layer}, rank {rank} of split {split}")


def check_kv_compose(split, rank):
    first, count = sum(split[:rank]), split[rank]
    shard = kvc.TensorParallelShard(COMM[0], first, HEADS)
    caches = model_caches(41)
    rng = np.random.default_rng(42)
    attention = [np.abs(rng.standard_normal((1, HEADS * GROUP, REPLAY, TOKENS + REPLAY), dtype=np.float32)) / 8
                 for _ in range(LAYERS)]
    press = kvc.KVComposePress(structured=False, compression_ratio=0.6, add_v_norm=True, keep_token_lower_bound=2)

    def run(first, count, shard):
        stats = press.statistics(LAYERS, count * GROUP, TOKENS)
        for layer in range(LAYERS):
            stats.add(layer, np.ascontiguousarray(attention[layer][:, first * GROUP:(first + count) * GROUP]))
        parts = [Part(kv, first, count) for kv in caches]
        norms = np.stack([press.value_norms(p.cache, TOKENS) for p in parts])
        plan = press.plan(stats, count, norms, shard=shard)
        for layer, p in enumerate(parts):
            press.compress(plan, layer, p.cache, num_threads=1, shard=shard)
        return plan, parts

    plan, whole = run(0, HEADS, None)
    mine_plan, mine = run(first, count, shard)
    assert mine_plan.kv_heads == HEADS
    assert mine_plan.scores == plan.scores and mine_plan.kept == plan.kept, f"rank {rank} of {split}: another plan"
    for layer, (got, want) in enumerate(zip(mine, whole)):
        assert_rows_equal(got.rows(), want.rows(slice(first, first + count)),
                          f"KVCompose, layer {layer}, rank {rank} of split {split}")


def check_errors(rank, size):
    first, count = (0, 3) if rank == 0 else (3, 3) if size == 2 else ((3, 1) if rank == 1 else (4, 2))
    shard = kvc.TensorParallelShard(COMM[0], first, HEADS)
    gates, hidden = gates_and_inputs(32)
    press = kvc.FastKVzipPress(0.5)
    x = hidden[0].astype(np.float64) if rank == 1 else hidden[0]  # rejected by the binding on rank 1
    start = time.monotonic()
    with pytest.raises(kvc.Error) as err:
        press.score_layer(gates[0].heads(first, count), x, shard=shard)
    assert time.monotonic() - start < ERROR_WITHIN
    want = "must be float32, float16 or bfloat16, got float64" if rank == 1 else f"rank 1 of {size} failed"
    assert want in str(err.value), str(err.value)
    # The group is still in step: a good call succeeds on every rank.
    scores = press.score_layer(gates[0].heads(first, count), hidden[0], shard=shard)
    assert scores.shape == (count, TOKENS)


COMM = []  # this process's communicator, set by `checks`


def checks(splits):
    def check(comm, rank, size):
        COMM[:] = [comm]
        for split in splits:
            check_fast_kvzip(split, rank)
            check_kv_compose(split, rank)
        check_errors(rank, size)
    return check


def test_two_ranks():
    launch(2, [checks([[3, 3], [1, 5]])])


def test_three_ranks_uneven():
    launch(3, [checks([[3, 1, 2], [2, 2, 2]])])
