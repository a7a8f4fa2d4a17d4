"""Engine layouts built exactly as the engines allocate them (shapes, strides, dtypes, block ids),
compressed in place and checked against the same press on a dense [batch, heads, seq, dim] copy;
the freed pages must be the engine's own ids."""

import numpy as np
import pytest

import kvcompress as kvc
from kvcompress import layouts

torch = pytest.importorskip("torch")

H, D = 2, 16
LENS = [45, 30]
PRESSES = [lambda: kvc.KnormPress(0.5), lambda: kvc.KeyDiffPress(0.75), lambda: kvc.AdaKVPress(kvc.KnormPress(0.5))]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def dense(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = max(LENS)
    k = torch.randn(len(LENS), H, n, D, generator=g).to(dtype)
    v = torch.randn(len(LENS), H, n, D, generator=g).to(dtype)
    for b, length in enumerate(LENS):
        k[b, :, length:] = 0
        v[b, :, length:] = 0
    return k, v


def dense_reference(press, k, v):
    """Kept positions per (sequence, head) of the same press on a dense copy."""
    b, h, n, _ = k.shape
    pos = np.ascontiguousarray(np.broadcast_to(np.arange(n, dtype=np.int32), (b, h, n)))
    cache = kvc.KVCache(k.clone(), v.clone(), lengths=np.array(LENS, np.int32), positions=pos)
    lengths = kvc.compress(press, None, cache).copy()
    return lengths, pos


def check_rows(read, k, v, lengths, ref_lengths, ref_pos):
    np.testing.assert_array_equal(lengths, ref_lengths)
    for b in range(k.shape[0]):
        for h in range(H):
            n = lengths[b, h]
            got_k, got_v = read(b, h, n)
            kept = ref_pos[b, h, :n]
            assert torch.equal(got_k, k[b, h, kept]) and torch.equal(got_v, v[b, h, kept]), (b, h)


def expected_freed(table_rows, before, after, page_size):
    freed = []
    for row, old, new in zip(table_rows, before, after):
        freed += list(row[(new + page_size - 1) // page_size:(old + page_size - 1) // page_size])
    return sorted(int(x) for x in freed)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make_press", PRESSES)
@pytest.mark.parametrize("fused", [True, False])
def test_vllm_paged(dtype, make_press, fused):
    block_size, num_blocks = 16, 40
    k, v = dense(dtype)
    rng = np.random.default_rng(1)
    ids = rng.permutation(num_blocks)
    # vLLM: kv_cache [2, num_blocks, block_size, num_kv_heads, head_size]; block_tables int32, padded.
    kv_cache = torch.zeros(2, num_blocks, block_size, H, D, dtype=dtype)
    max_blocks = 4
    block_tables = torch.zeros(len(LENS), max_blocks, dtype=torch.int32)
    used = 0
    for b, length in enumerate(LENS):
        for j in range((length + block_size - 1) // block_size):
            block_tables[b, j] = int(ids[used])
            used += 1
        for t in range(length):
            blk = int(block_tables[b, t // block_size])
            kv_cache[0, blk, t % block_size] = k[b, :, t]
            kv_cache[1, blk, t % block_size] = v[b, :, t]
    seq_lens = torch.tensor(LENS, dtype=torch.int32)
    cache = (layouts.vllm_paged(kv_cache, block_tables=block_tables, seq_lens=seq_lens) if fused else
             layouts.vllm_paged(kv_cache[0], kv_cache[1], block_tables=block_tables, seq_lens=seq_lens))
    press = make_press()
    lengths = kvc.compress(press, None, cache)
    ref_lengths, ref_pos = dense_reference(make_press(), k, v)

    def read(b, h, n):
        t = torch.arange(n)
        blk = block_tables[b, (t // block_size)].long()
        return kv_cache[0, blk, t % block_size, h], kv_cache[1, blk, t % block_size, h]

    check_rows(read, k, v, lengths, ref_lengths, ref_pos)
    got = sorted(int(x) for x in cache.released_pages())
    assert got == expected_freed(block_tables.numpy(), LENS, lengths.max(axis=1), block_size)
    assert len(got) > 0 or isinstance(press, kvc.AdaKVPress)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make_press", PRESSES)
def test_sglang_token_pool(dtype, make_press):
    pool_size = 120
    k, v = dense(dtype, seed=2)
    # SGLang MHATokenToKVPool: k_buffer[layer] [size + page_size, head_num, head_dim], slot 0 padding;
    # req_to_token int32 [max_num_reqs, max_context_len].
    k_buffer = torch.zeros(pool_size + 1, H, D, dtype=dtype)
    v_buffer = torch.zeros(pool_size + 1, H, D, dtype=dtype)
    req_to_token = torch.zeros(8, 64, dtype=torch.int32)
    req_pool_indices = torch.tensor([5, 2], dtype=torch.int64)
    slots = np.random.default_rng(3).permutation(np.arange(1, pool_size + 1))
    used = 0
    for b, length in enumerate(LENS):
        r = int(req_pool_indices[b])
        req_to_token[r, :length] = torch.from_numpy(slots[used:used + length].astype(np.int32))
        used += length
        k_buffer[req_to_token[r, :length].long()] = k[b, :, :length].transpose(0, 1)
        v_buffer[req_to_token[r, :length].long()] = v[b, :, :length].transpose(0, 1)
    cache = layouts.sglang_token_pool(k_buffer, v_buffer, req_to_token=req_to_token,
                                      req_pool_indices=req_pool_indices, seq_lens=torch.tensor(LENS))
    lengths = kvc.compress(make_press(), None, cache)
    ref_lengths, ref_pos = dense_reference(make_press(), k, v)

    def read(b, h, n):
        s = req_to_token[int(req_pool_indices[b]), :n].long()
        return k_buffer[s, h], v_buffer[s, h]

    check_rows(read, k, v, lengths, ref_lengths, ref_pos)
    rows = req_to_token[req_pool_indices].numpy()
    assert sorted(int(x) for x in cache.released_pages()) == expected_freed(rows, LENS, lengths.max(axis=1), 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make_press", PRESSES)
@pytest.mark.parametrize("kv_layout", ["NHD", "HND"])
@pytest.mark.parametrize("single_tensor", [True, False])
def test_flashinfer_paged(dtype, make_press, kv_layout, single_tensor):
    page_size, max_pages = 8, 24
    k, v = dense(dtype, seed=4)
    rng = np.random.default_rng(5)
    ids = rng.permutation(max_pages)
    page_shape = (page_size, H, D) if kv_layout == "NHD" else (H, page_size, D)
    # FlashInfer: one [max_num_pages, 2, *page] tensor, or a (k_cache, v_cache) tuple.
    pool = torch.zeros(max_pages, 2, *page_shape, dtype=dtype)
    counts = [(n + page_size - 1) // page_size for n in LENS]
    kv_indptr = torch.tensor(np.concatenate([[0], np.cumsum(counts)]), dtype=torch.int32)
    kv_indices = torch.tensor(ids[:sum(counts)], dtype=torch.int32)
    kv_last_page_len = torch.tensor([n - (c - 1) * page_size for n, c in zip(LENS, counts)], dtype=torch.int32)

    def slot(page, t, h):
        return (page, t, h) if kv_layout == "NHD" else (page, h, t)

    for b, length in enumerate(LENS):
        for t in range(length):
            page = int(kv_indices[kv_indptr[b] + t // page_size])
            for h in range(H):
                pool[:, 0][slot(page, t % page_size, h)] = k[b, h, t]
                pool[:, 1][slot(page, t % page_size, h)] = v[b, h, t]
    paged = pool if single_tensor else (pool[:, 0].clone(), pool[:, 1].clone())
    cache = layouts.flashinfer_paged(paged, kv_indptr=kv_indptr, kv_indices=kv_indices,
                                     kv_last_page_len=kv_last_page_len, kv_layout=kv_layout)
    lengths = kvc.compress(make_press(), None, cache)
    ref_lengths, ref_pos = dense_reference(make_press(), k, v)
    kc, vc = (pool[:, 0], pool[:, 1]) if single_tensor else paged

    def read(b, h, n):
        rows_k, rows_v = [], []
        for t in range(n):
            page = int(kv_indices[kv_indptr[b] + t // page_size])
            rows_k.append(kc[slot(page, t % page_size, h)])
            rows_v.append(vc[slot(page, t % page_size, h)])
        return torch.stack(rows_k), torch.stack(rows_v)

    check_rows(read, k, v, lengths, ref_lengths, ref_pos)
    table = [kv_indices[kv_indptr[b]:kv_indptr[b + 1]].numpy() for b in range(len(LENS))]
    assert sorted(int(x) for x in cache.released_pages()) == expected_freed(table, LENS, lengths.max(axis=1),
                                                                          page_size)
    indptr, indices, last = layouts.flashinfer_indices(cache)
    for b in range(len(LENS)):
        live = (int(lengths[b].max()) + page_size - 1) // page_size
        np.testing.assert_array_equal(indices[indptr[b]:indptr[b + 1]], table[b][:live])
        assert (live - 1) * page_size + last[b] == lengths[b].max()


@pytest.mark.parametrize("dtype", DTYPES)
def test_hf_dynamic_cache(dtype):
    transformers = pytest.importorskip("transformers")
    k, v = dense(dtype, seed=6)
    k, v = k[:1, :, :LENS[0]].contiguous(), v[:1, :, :LENS[0]].contiguous()
    cache = transformers.DynamicCache()
    cache.update(k.clone(), v.clone(), 0)
    n = layouts.compress_dynamic_cache(kvc.KnormPress(0.5), None, cache, 0)
    pos = np.ascontiguousarray(np.broadcast_to(np.arange(LENS[0], dtype=np.int32), (1, H, LENS[0])))
    ref = kvc.KVCache(k.clone(), v.clone(), positions=pos)
    ref_lengths = kvc.compress(kvc.KnormPress(0.5), None, ref)
    assert n == ref_lengths[0, 0] == int(LENS[0] * 0.5)
    assert cache.layers[0].keys.shape == (1, H, n, D)
    for h in range(H):
        assert torch.equal(cache.layers[0].keys[0, h], k[0, h, pos[0, h, :n]])
        assert torch.equal(cache.layers[0].values[0, h], v[0, h, pos[0, h, :n]])
    # Per-head budgets cannot live in HF's cache: the press's result is refused, naming the lengths.
    cache2 = transformers.DynamicCache()
    cache2.update(k.clone(), v.clone(), 0)
    with pytest.raises(kvc.Error, match="one length for all heads"):
        layouts.compress_dynamic_cache(kvc.AdaKVPress(kvc.KnormPress(0.5)), None, cache2, 0)


def test_layout_errors_carry_the_library_message():
    kv = torch.zeros(2, 8, 16, H, D)
    table = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32)
    lens = torch.tensor([20, 17], dtype=torch.int32)
    with pytest.raises(kvc.Error, match=r"fused vLLM kv_cache must be \[2, num_blocks"):
        layouts.vllm_paged(torch.zeros(3, 8, 16, H, D), block_tables=table, seq_lens=lens)
    with pytest.raises(kvc.Error, match="outside|num_pages|pool"):
        layouts.vllm_paged(kv, block_tables=torch.tensor([[0, 1], [2, 9]], dtype=torch.int32), seq_lens=lens)
    with pytest.raises(kvc.Error, match="live twice"):
        layouts.vllm_paged(kv, block_tables=torch.tensor([[0, 1], [1, 3]], dtype=torch.int32), seq_lens=lens)
    with pytest.raises(kvc.Error, match="lengths"):
        layouts.vllm_paged(kv, block_tables=table, seq_lens=torch.tensor([40, 17], dtype=torch.int32))
    pool = torch.zeros(8, 2, 16, H, D)
    with pytest.raises(kvc.Error, match="kv_indptr must start at 0"):
        layouts.flashinfer_paged(pool, kv_indptr=torch.tensor([0, 3, 2]), kv_indices=torch.arange(4),
                                 kv_last_page_len=torch.tensor([1, 1]))
    with pytest.raises(kvc.Error, match="kv_last_page_len must be in"):
        layouts.flashinfer_paged(pool, kv_indptr=torch.tensor([0, 1, 2]), kv_indices=torch.arange(2),
                                 kv_last_page_len=torch.tensor([17, 1]))
    with pytest.raises(kvc.Error, match="must be \\[max_num_pages, 2"):
        layouts.flashinfer_paged(torch.zeros(8, 3, 16, H, D), kv_indptr=torch.tensor([0, 1]), kv_indices=torch.arange(1),
                                 kv_last_page_len=torch.tensor([1]))
    with pytest.raises(kvc.Error, match="k_buffer must be"):
        layouts.sglang_token_pool(torch.zeros(8, H, 2, D), torch.zeros(8, H, 2, D), req_to_token=torch.zeros(1, 4),
                                  req_pool_indices=torch.tensor([0]), seq_lens=torch.tensor([2]))
