"""The binding itself: dtypes, strides, zero copy, the reused workspace, and every bad input as a
kvcompress.Error carrying the library's message. Expected kept sets come from kvpress's fixtures
(tests/golden) or from the same press on a float32 / HF-layout copy of the same values."""

import numpy as np
import pytest

import kvcompress as kvc
from golden import Scenario, load

torch = pytest.importorskip("torch")

SC = "llama_d64_n131_b2"


def knorm_case():
    sc = Scenario(SC)
    entry = next(e for e in sc.meta["presses"] if e["name"] == "knorm")
    return sc, entry


def kept_positions(cache_factory, press, obs=None):
    keys, values = cache_factory()
    b, h, n, _ = keys.shape
    pos = np.ascontiguousarray(np.broadcast_to(np.arange(n, dtype=np.int32), (b, h, n)))
    cache = kvc.KVCache(keys, values, positions=pos)
    lengths = kvc.compress(press, obs, cache)
    return [np.sort(pos[bb, hh, :lengths[bb, hh]]) for bb in range(b) for hh in range(h)], cache


def test_error_is_a_value_error():
    assert issubclass(kvc.Error, ValueError)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_torch_dtypes_in_place(dtype):
    sc = Scenario(SC)
    keys = torch.from_numpy(sc.tensor("keys").copy()).to(dtype)
    values = torch.from_numpy(sc.tensor("values").copy()).to(dtype)
    original = keys.clone()
    ptr = keys.data_ptr()
    b, h, n, _ = keys.shape
    pos = np.ascontiguousarray(np.broadcast_to(np.arange(n, dtype=np.int32), (b, h, n)))
    cache = kvc.KVCache(keys, values, positions=pos)
    assert cache.dtype == {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}[dtype]
    lengths = kvc.compress(kvc.KnormPress(0.5), None, cache)
    assert keys.data_ptr() == ptr  # in place, no copy
    # Reference: Knorm keeps the smallest norms of the same (rounded) keys, computed in float64.
    norms = original.double().norm(dim=-1).numpy()
    for bb in range(b):
        for hh in range(h):
            n_kept = lengths[bb, hh]
            assert n_kept == int(n * 0.5)
            kept = np.sort(pos[bb, hh, :n_kept])
            order = np.argsort(-(-norms[bb, hh]), kind="stable")[:n_kept]
            assert set(kept) == set(order)
            assert torch.equal(keys[bb, hh, :n_kept], original[bb, hh, kept])


def test_fixture_scores_in_float16_and_bfloat16():
    sc, entry = knorm_case()
    expected = load(entry["scores"], sc.dir)
    for dtype, tol in ((torch.float16, 2e-3), (torch.bfloat16, 2e-2)):
        keys = torch.from_numpy(sc.tensor("keys").copy()).to(dtype)
        values = torch.from_numpy(sc.tensor("values").copy()).to(dtype)
        scores = kvc.score(kvc.KnormPress(entry["params"]["compression_ratio"]), None, kvc.KVCache(keys, values))
        np.testing.assert_allclose(scores, expected, rtol=tol)


def test_token_major_and_strided_views_match_hf_layout():
    sc = Scenario(SC)
    keys, values = sc.tensor("keys"), sc.tensor("values")
    press = kvc.KeyDiffPress(0.5)
    ref, _ = kept_positions(lambda: (keys.copy(), values.copy()), press)
    # Token-major [b, s, h, d], as most engines store it.
    k_tm = np.ascontiguousarray(keys.transpose(0, 2, 1, 3))
    v_tm = np.ascontiguousarray(values.transpose(0, 2, 1, 3))
    b, h, n, _ = keys.shape
    pos = np.ascontiguousarray(np.broadcast_to(np.arange(n, dtype=np.int32), (b, h, n)))
    cache = kvc.KVCache(k_tm, v_tm, positions=pos, axes="bshd")
    lengths = kvc.compress(press, None, cache)
    got = [np.sort(pos[bb, hh, :lengths[bb, hh]]) for bb in range(b) for hh in range(h)]
    for r, g in zip(ref, got):
        np.testing.assert_array_equal(r, g)
    # K and V interleaved in one buffer (innermost stride 2), as a torch view.
    both = torch.from_numpy(np.stack([keys, values], axis=-1).copy())  # [b, h, n, d, 2]
    got2, _ = kept_positions(lambda: (both[..., 0], both[..., 1]), press)
    for r, g in zip(ref, got2):
        np.testing.assert_array_equal(r, g)


def test_workspace_reused_across_calls():
    sc = Scenario(SC)
    press = kvc.ExpectedAttentionPress(0.5)
    obs = kvc.Observation(queries=sc.tensor("queries"), rope=kvc.rotary_embedding_from_config(sc.rope_config()))
    for _ in range(5):
        cache = kvc.KVCache(sc.tensor("keys").copy(), sc.tensor("values").copy())
        kvc.compress(press, obs, cache, num_threads=1)
    assert press.native.workspace_allocations == 1
    fresh = kvc.KVCache(sc.tensor("keys").copy(), sc.tensor("values").copy())
    assert press.native.workspace_capacity == kvc.workspace_bytes(press, obs, fresh, num_threads=1)
    # Changing a field builds a new native press (and workspace).
    native = press.native
    press.compression_ratio = 0.25
    assert press.native is not native


def test_score_is_minus_inf_past_lengths():
    sc = Scenario(SC)
    lengths = np.array([[100, 131], [7, 50]], dtype=np.int32)
    cache = kvc.KVCache(sc.tensor("keys").copy(), sc.tensor("values").copy(), lengths=lengths)
    scores = kvc.score(kvc.KnormPress(0.5), None, cache)
    assert np.isneginf(scores[0, 0, 100:]).all() and np.isfinite(scores[0, 0, :100]).all()
    assert np.isneginf(scores[1, 0, 7:]).all()


def test_wrapper_rebuilds_when_inner_changes():
    inner = kvc.KnormPress(0.5)
    ada = kvc.AdaKVPress(inner)
    first = ada.native
    inner.compression_ratio = 0.25
    assert ada.native is not first and ada.native.compression_ratio == 0.25


def bad(fn, *needles):
    with pytest.raises(kvc.Error) as e:
        fn()
    for s in needles:
        assert s in str(e.value), str(e.value)


def test_bad_inputs_raise_the_library_message():
    k = np.random.default_rng(0).standard_normal((1, 2, 16, 8)).astype(np.float32)
    v = k.copy()
    bad(lambda: kvc.KVCache(k, k), "keys and values must not alias")
    bad(lambda: kvc.KVCache(k, v.astype(np.float16)), "values is float16 but the cache stores float32")
    bad(lambda: kvc.KVCache(k.astype(np.float64), v.astype(np.float64)), "keys must be float32, float16 or bfloat16")
    bad(lambda: kvc.KVCache(k[0], v[0]), "keys must have 4 dimensions")
    bad(lambda: kvc.KVCache(k, v, lengths=np.array([[3, 17]], np.int32)), "17")
    bad(lambda: kvc.KVCache(k, v, lengths=np.zeros(3, np.int32)), "lengths must be")
    bad(lambda: kvc.KVCache(k[:, :, ::-1], v), "keys", "must be positive")
    ro = k.copy()
    ro.flags.writeable = False
    bad(lambda: kvc.KVCache(ro, v), "read-only")
    # Overlapping rows: a zero stride on the sequence axis.
    overlapping = np.lib.stride_tricks.as_strided(k, shape=(1, 2, 16, 8), strides=(0, 16 * 8 * 4, 0, 4))
    bad(lambda: kvc.KVCache(overlapping, v), "keys", "strides[seq]")
    cache = kvc.KVCache(k.copy(), v.copy())
    bad(lambda: kvc.compress(kvc.ExpectedAttentionPress(0.5), None, cache), "queries")
    bad(lambda: kvc.compress(kvc.KnormPress(1.5), None, cache), "compression_ratio must be in [0, 1), got 1.5")
    bad(lambda: kvc.compress(kvc.AdaKVPress(kvc.ChunkKVPress(kvc.KnormPress(0.5))), None, cache),
        "AdaKVPress wraps a scorer press", "ChunkKVPress")
    bad(lambda: kvc.compress(kvc.SnapKVPress(0.5), kvc.Observation(window_queries=np.zeros((1, 4, 2, 8), np.float16)),
                             cache), "observation.window_queries is float16 but the cache stores float32")
    bad(lambda: kvc.score(kvc.ChunkKVPress(kvc.KnormPress(0.5)), None, cache), "not a scorer press")
    bad(lambda: kvc.Observation(stats_mean=np.zeros((4, 8), np.float32), stats_covariance=np.zeros(3, np.float32))
        and kvc.compress(kvc.ExpectedAttentionStatsPress(0.5), kvc.Observation(
            stats_mean=np.zeros((4, 8), np.float32), stats_covariance=np.zeros(3, np.float32), chunk_length=16), cache),
        "observation.stats_covariance must hold")
    # A NaN in the cache is named before anything moves.
    nan_k = k.copy()
    nan_k[0, 1, 5, 3] = np.nan
    nan_cache = kvc.KVCache(nan_k, v.copy())
    before = nan_k.copy()
    bad(lambda: kvc.compress(kvc.KnormPress(0.5), None, nan_cache), "keys[0, 1, 5, 3] = nan is not finite")
    np.testing.assert_array_equal(nan_k, before)
