"""The decoding presses (DecodingPress, CompressionRatioDecodingPress, PrefillDecodingPress, CAMPress) through
the Python API: decoding loops over kvpress's own runs (tools/golden/generate_decoding.py and generate_cam.py: the
keys, values and queries each pass appended, kvpress's cache after each compression, CAM's merge draws) keep,
merge and sum as kvpress did; the step counters, the query buffers and the reused workspace behave as kvpress's
DecodingPress hook counts them; bad input raises kvcompress.Error with the library's message and leaves the state as it was. The
comparison of the decoding presses with kvpress's through its pipeline is test_kvpress_decoding.py."""

import json

import numpy as np
import pytest

import kvcompress as kvc
from golden import GOLDEN, Scenario, load


def cam_scenarios():
    return [f"cam/{n}" for n in json.loads((GOLDEN / "cam" / "index.json").read_text())["scenarios"]]


BASES = {"KnormPress": kvc.KnormPress, "KeyDiffPress": kvc.KeyDiffPress, "TOVAPress": kvc.TOVAPress}


class Layer:
    """One layer's cache in the replay: the recorded tensors, and a cache of every token's room."""

    def __init__(self, sc, lj, b, h, total, d):
        self.meta = lj
        self.k, self.v, self.q = (load(lj[n], sc.dir) for n in ("keys", "values", "queries"))
        self.keys, self.values = np.zeros((b, h, total, d), np.float32), np.zeros((b, h, total, d), np.float32)
        self.lengths = np.zeros((b, h), np.int32)
        self.positions = np.full((b, h, total), -1, np.int32)
        self.cache = kvc.KVCache(self.keys, self.values, lengths=self.lengths, positions=self.positions)
        self.next_compression = 0
        self.steps = 0

    def append(self, pos, length):
        for (bb, hh), slot in np.ndenumerate(self.lengths.copy()):
            self.keys[bb, hh, slot:slot + length] = self.k[bb, hh, pos:pos + length]
            self.values[bb, hh, slot:slot + length] = self.v[bb, hh, pos:pos + length]
            self.positions[bb, hh, slot:slot + length] = np.arange(pos, pos + length)
            self.lengths[bb, hh] += length


@pytest.mark.parametrize("scenario", cam_scenarios())
def test_cam_keeps_merges_and_sums_as_kvpress(scenario):
    """Replays kvpress's CAMPress run pass by pass with one CAMPress for every layer, handed kvpress's draws: after
    every pass the cache length; after every compression the kept positions, the keys (moved intact), the values
    after merging (1e-5 relative, floor 1) and the running attention sums (1e-4 relative); every draw used where
    kvpress drew it."""
    sc = Scenario(scenario)
    meta = sc.meta
    b, h, d, total, num_layers = (meta[k] for k in ("batch", "kv_heads", "head_dim", "total_tokens", "num_layers"))
    p = meta["press"]
    uniforms = load(meta["uniforms"], sc.dir)
    press = kvc.CAMPress(BASES[p["base_press"]](), compression_interval=p["compression_interval"],
                         target_size=p["target_size"], hidden_states_buffer_size=p["hidden_states_buffer_size"],
                         merge_budget=p["merge_budget"], uniforms=uniforms)
    rope = kvc.rotary_embedding_from_config(sc.rope_config())
    layers = [Layer(sc, lj, b, h, total, d) for lj in sorted(meta["layers"], key=lambda x: x["layer_idx"])]
    drawn_until = np.cumsum([int(np.prod(dr["shape"])) for dr in meta["draws"]])
    assert drawn_until[-1] == uniforms.size
    draw_call, target = 0, p["target_size"]
    for pi, pj in enumerate(meta["passes"]):
        pos, length = pj["position"], pj["length"]
        for li, layer in enumerate(layers):
            layer.append(pos, length)
            obs = kvc.Observation(queries=layer.q[:, :, pos:pos + length], rope=rope, position=pos, layer_idx=li,
                                  num_layers=num_layers)
            compressed = press.step(obs, layer.cache)
            where = f"{scenario}, layer {li}, pass {pi}"
            assert (layer.lengths == layer.meta["lengths"][pi]).all(), where
            comps = layer.meta["compressions"]
            theirs = layer.next_compression < len(comps) and comps[layer.next_compression]["pass"] == pi
            assert compressed == theirs, where
            # kvpress's layer_step_counts: +1 per decoding pass, 0 after a compression point.
            layer.steps = 0 if pos == 0 or theirs or length >= target else layer.steps + 1
            assert press.steps(li) == layer.steps, where
            if not theirs:
                continue
            cj = comps[layer.next_compression]
            layer.next_compression += 1
            assert press.draws == drawn_until[draw_call], where
            draw_call += 1
            kept = load(cj["kept_positions"], sc.dir)
            for bb in range(b):
                for hh in range(h):
                    np.testing.assert_array_equal(layer.positions[bb, hh, :target], kept[bb], err_msg=where)
            np.testing.assert_array_equal(layer.keys[:, :, :target], load(cj["keys"], sc.dir), err_msg=where)
            want = load(cj["values"], sc.dir)
            err = np.abs(layer.values[:, :, :target].astype(np.float64) - want) / np.maximum(1.0, np.abs(want))
            assert err.max() <= 1e-5, where
            sums = press.attention_sum(li)
            want = load(cj["attention_sum"], sc.dir).astype(np.float64)
            err = np.abs(sums[:, :, :target] - want) / np.maximum(np.abs(want), 1e-6)
            assert err.max() <= 1e-4, where
            assert (sums[:, :, target:] == 0).all(), where
    assert press.draws == uniforms.size
    for layer in layers:
        assert layer.next_compression == len(layer.meta["compressions"])


def decoding_scenarios():
    return [f"decoding/{n}" for n in json.loads((GOLDEN / "decoding" / "index.json").read_text())["scenarios"]]


def decoding_press_of(p):
    """kvcompress's press for a decoding fixture's kvpress press (its parameters as kvpress names them)."""
    base = BASES[p["base_press"]]()
    kw = dict(compression_interval=p["compression_interval"], hidden_states_buffer_size=p["hidden_states_buffer_size"])
    if p["name"] == "CompressionRatioDecodingPress":
        return kvc.CompressionRatioDecodingPress(base, target_compression_ratio=p["target_compression_ratio"], **kw)
    return kvc.DecodingPress(base, target_size=p["target_size"], **kw)


@pytest.mark.parametrize("scenario", decoding_scenarios())
def test_decoding_presses_keep_what_kvpress_keeps(scenario):
    """Replays kvpress's own DecodingPress, CompressionRatioDecodingPress and PrefillDecodingPress runs
    (tools/golden/generate_decoding.py) pass by pass with one press for every layer: after every pass the cache
    length of every row and the step count kvpress's hook keeps (+1 per decoding pass, 0 once it reaches
    compression_interval or a pass brings at least the target), and after every compression the positions each
    row kept."""
    sc = Scenario(scenario)
    meta = sc.meta
    b, h, d, total, num_layers = (meta[k] for k in ("batch", "kv_heads", "head_dim", "total_tokens", "num_layers"))
    p = meta["press"]
    if p["name"] == "PrefillDecodingPress":
        pp = p["prefilling_press"]
        press = kvc.PrefillDecodingPress(BASES[pp["name"]](pp["compression_ratio"]), decoding_press_of(p["decoding_press"]))
        dec = p["decoding_press"]
    else:
        press, dec = decoding_press_of(p), p
    rope = kvc.rotary_embedding_from_config(sc.rope_config())
    layers = [Layer(sc, lj, b, h, total, d) for lj in sorted(meta["layers"], key=lambda x: x["layer_idx"])]
    for pi, pj in enumerate(meta["passes"]):
        pos, length = pj["position"], pj["length"]
        if "target_size" in dec:
            target = dec["target_size"]
        else:
            target = max(1, int((pos + length) * (1 - dec["target_compression_ratio"])))
        for li, layer in enumerate(layers):
            layer.append(pos, length)
            obs = kvc.Observation(queries=layer.q[:, :, pos:pos + length], rope=rope, position=pos, layer_idx=li,
                                  num_layers=num_layers)
            compressed = press.step(obs, layer.cache)
            where = f"{scenario}, layer {li}, pass {pi}"
            assert (layer.lengths == layer.meta["lengths"][pi]).all(), where
            comps = layer.meta["compressions"]
            theirs = layer.next_compression < len(comps) and comps[layer.next_compression]["pass"] == pi
            assert compressed == theirs, where
            layer.steps = 0 if pos == 0 or layer.steps + 1 >= dec["compression_interval"] or length >= target \
                else layer.steps + 1
            assert press.steps(li) == layer.steps, where
            if not theirs:
                continue
            kept = load(comps[layer.next_compression]["kept_positions"], sc.dir)  # [b, h, n] ascending
            layer.next_compression += 1
            n = kept.shape[2]
            np.testing.assert_array_equal(np.sort(layer.positions[:, :, :n], axis=-1), kept, err_msg=where)
            rows = layer.positions[:, :, :n]
            for (bb, hh), _ in np.ndenumerate(layer.lengths):  # the kept entries hold their own keys and values
                np.testing.assert_array_equal(layer.keys[bb, hh, :n], layer.k[bb, hh, rows[bb, hh]], err_msg=where)
                np.testing.assert_array_equal(layer.values[bb, hh, :n], layer.v[bb, hh, rows[bb, hh]], err_msg=where)
    for layer in layers:
        assert layer.next_compression == len(layer.meta["compressions"])


B, H, Q, D = 1, 2, 4, 16


def rope():
    return kvc.RotaryEmbedding(D, theta=10000.0, max_position_embeddings=4096)


class Engine:
    """A one-layer engine in miniature: a cache with room for `cap` tokens that grows by one token per step."""

    def __init__(self, cap, seed=0, dtype=np.float32):
        self.rng = np.random.default_rng(seed)
        self.dtype = dtype
        self.keys = np.zeros((B, H, cap, D), dtype)
        self.values = np.zeros((B, H, cap, D), dtype)
        self.lengths = np.zeros((B, H), np.int32)
        self.cache = kvc.KVCache(self.keys, self.values, lengths=self.lengths)
        self.position = 0

    def forward(self, q_len):
        """Appends q_len tokens; returns the pass's observation (pre-RoPE queries, its first position)."""
        for (bb, hh), n in np.ndenumerate(self.lengths.copy()):
            self.keys[bb, hh, n:n + q_len] = self.rng.standard_normal((q_len, D))
            self.values[bb, hh, n:n + q_len] = self.rng.standard_normal((q_len, D))
            self.lengths[bb, hh] += q_len
        obs = kvc.Observation(queries=self.rng.standard_normal((B, Q, q_len, D)).astype(self.dtype), rope=rope(),
                              position=self.position, layer_idx=0, num_layers=1)
        self.position += q_len
        return obs


def test_decoding_press_compresses_every_interval_to_the_target():
    """kvpress's DecodingPress counting: the prefill is left alone, every compression_interval-th pass cuts every
    row to target_size (Knorm: the smallest key norms), the buffer holds at most hidden_states_buffer_size + 1
    query tokens, and the workspace is allocated once."""
    press = kvc.DecodingPress(kvc.KnormPress(), compression_interval=4, target_size=20, hidden_states_buffer_size=2)
    eng = Engine(64)
    assert not press.step(eng.forward(30), eng.cache)
    assert (eng.lengths == 30).all()
    allocations = None
    for i in range(1, 13):
        obs = eng.forward(1)
        before = eng.keys.copy()
        compressed = press.step(obs, eng.cache)
        assert compressed == (i % 4 == 0)
        if compressed:
            assert (eng.lengths == 20).all() and press.steps(0) == 0 and press.buffered(0) == 0
            n = 34 if i == 4 else 24
            for hh in range(H):
                norms = np.linalg.norm(before[0, hh, :n].astype(np.float64), axis=-1)
                want = np.sort(np.argsort(norms, kind="stable")[:20])
                kept = eng.keys[0, hh, :20]
                np.testing.assert_array_equal(kept, before[0, hh, want])
        else:
            assert press.steps(0) == i % 4 and press.buffered(0) == min(i % 4, 3)
        if i == 1:
            allocations = press.native.workspace_allocations
    assert press.native.workspace_allocations == allocations == 1


def test_compression_ratio_decoding_press_keeps_a_fraction_of_the_tokens_seen():
    """target = max(1, int(tokens_seen * (1 - ratio))), tokens_seen = the pass's last position + 1: a 40-token
    prefill and 4 passes at interval 4 reach position 43, so every row keeps int(44 * 0.75) = 33."""
    press = kvc.CompressionRatioDecodingPress(kvc.KnormPress(), compression_interval=4, target_compression_ratio=0.25)
    eng = Engine(64)
    press.step(eng.forward(40), eng.cache)
    results = [press.step(eng.forward(1), eng.cache) for _ in range(4)]
    assert results == [False, False, False, True]
    assert (eng.lengths == 33).all()


def test_prefill_decoding_press_runs_one_press_per_phase():
    """The prefilling press compresses the prefill (Knorm 0.5: 40 -> 20), the decoding press every later pass."""
    decoding = kvc.DecodingPress(kvc.KnormPress(), compression_interval=2, target_size=16)
    press = kvc.PrefillDecodingPress(kvc.KnormPress(0.5), decoding)
    eng = Engine(64)
    assert press.step(eng.forward(40), eng.cache)
    assert (eng.lengths == 20).all()
    assert not press.step(eng.forward(1), eng.cache) and press.steps(0) == 1
    assert press.step(eng.forward(1), eng.cache)
    assert (eng.lengths == 16).all()
    # A prefill without queries: the prefilling press compresses; the state waits for the first queries.
    lazy = kvc.PrefillDecodingPress(kvc.KnormPress(0.5), kvc.DecodingPress(kvc.KnormPress(), 2, 16))
    eng = Engine(64)
    eng.forward(40)
    assert lazy.step(kvc.Observation(position=0, chunk_length=40), eng.cache) and (eng.lengths == 20).all()
    assert not lazy.native.has_state
    assert not lazy.step(eng.forward(1), eng.cache) and lazy.steps(0) == 1
    prefill_only = kvc.PrefillDecodingPress(kvc.KnormPress(0.5), None)
    eng = Engine(64)
    assert prefill_only.step(eng.forward(40), eng.cache) and (eng.lengths == 20).all()
    assert not any(prefill_only.step(eng.forward(1), eng.cache) for _ in range(10))
    assert (eng.lengths == 30).all()
    # The decoding press's fields are the PrefillDecodingPress's: changing one rebuilds the state.
    state = press.native
    decoding.target_size = 12
    assert press.native is not state


def test_cam_with_the_same_seed_merges_the_same_and_sums_attention():
    """Two CAM presses with one seed leave the same cache; the running sum of every kept entry is positive and
    the workspace is allocated once."""
    caches = []
    for _ in range(2):
        press = kvc.CAMPress(kvc.KnormPress(), compression_interval=3, target_size=12, merge_budget=4, seed=7)
        eng = Engine(32, seed=3)
        press.step(eng.forward(12), eng.cache)
        assert not press.native.has_state or press.steps(0) == 0
        for _ in range(9):
            press.step(eng.forward(1), eng.cache)
        assert press.steps(0) == 0 and (eng.lengths == 12).all()
        assert press.draws > 0 and press.native.workspace_allocations == 1
        assert (press.attention_sum(0)[:, :, :12] > 0).all()
        caches.append(eng.values[:, :, :12].copy())
    np.testing.assert_array_equal(caches[0], caches[1])


def test_reset_starts_a_new_sequence_and_keeps_the_buffers():
    press = kvc.DecodingPress(kvc.KnormPress(), compression_interval=8, target_size=20)
    eng = Engine(64)
    press.step(eng.forward(30), eng.cache)
    press.step(eng.forward(1), eng.cache)
    press.step(eng.forward(1), eng.cache)
    state = press.native
    assert press.steps(0) == 2
    press.reset()
    assert press.native is state and press.steps(0) == 0 and press.buffered(0) == 0
    # After a reset the positions start over: a pass at an earlier position is a new sequence's.
    obs = eng.forward(1)
    obs.position = 5
    press.step(obs, eng.cache)
    assert press.steps(0) == 1


def test_half_precision_caches_decode():
    """float16 NumPy and bfloat16 torch caches decode with queries of their dtype; Knorm keeps the same rows as in
    float32 (the norms of these keys are far apart)."""
    kept = {}
    for dtype in (np.float32, np.float16):
        press = kvc.DecodingPress(kvc.KnormPress(), compression_interval=2, target_size=10)
        eng = Engine(32, dtype=dtype)
        press.step(eng.forward(12), eng.cache)
        assert not press.step(eng.forward(1), eng.cache)
        assert press.step(eng.forward(1), eng.cache) and (eng.lengths == 10).all()
        kept[dtype] = eng.keys[:, :, :10].astype(np.float32)
    np.testing.assert_allclose(kept[np.float16], kept[np.float32], rtol=1e-3, atol=1e-3)
    torch = pytest.importorskip("torch")
    eng = Engine(32)
    keys, values = torch.from_numpy(eng.keys).to(torch.bfloat16), torch.from_numpy(eng.values).to(torch.bfloat16)
    lengths = np.zeros((B, H), np.int32)
    cache = kvc.KVCache(keys, values, lengths=lengths)
    press = kvc.CAMPress(kvc.KnormPress(), compression_interval=2, target_size=10, merge_budget=2)
    for q_len in (12, 1, 1):
        obs = eng.forward(q_len)
        keys.copy_(torch.from_numpy(eng.keys))
        values.copy_(torch.from_numpy(eng.values))
        lengths[:] = eng.lengths
        obs.queries = torch.from_numpy(obs.queries).to(torch.bfloat16)
        compressed = press.step(obs, cache)
    assert compressed and (lengths == 10).all()


def test_bad_options_raise_the_library_message():
    cache = Engine(8).cache
    obs = kvc.Observation(queries=np.zeros((B, Q, 1, D), np.float32), position=4)
    with pytest.raises(kvc.Error, match="compression_interval must be positive, got 0"):
        kvc.DecodingPress(kvc.KnormPress(), compression_interval=0).step(obs, cache)
    with pytest.raises(kvc.Error, match="target_size must be positive, got -1"):
        kvc.DecodingPress(kvc.KnormPress(), target_size=-1).step(obs, cache)
    with pytest.raises(kvc.Error, match="query_buffer_size must be non-negative, got -2"):
        kvc.DecodingPress(kvc.KnormPress(), hidden_states_buffer_size=-2).step(obs, cache)
    with pytest.raises(kvc.Error, match=r"target_compression_ratio must be in \[0, 1\), got 1"):
        kvc.CompressionRatioDecodingPress(kvc.KnormPress(), target_compression_ratio=1.0).step(obs, cache)
    with pytest.raises(kvc.Error, match="merge_budget must be positive, got 0"):
        kvc.CAMPress(kvc.KnormPress(), merge_budget=0).step(obs, cache)
    with pytest.raises(kvc.Error, match="DecodingPress wraps a scorer press"):
        kvc.DecodingPress(kvc.ChunkKVPress(kvc.KnormPress())).step(obs, cache)
    with pytest.raises(kvc.Error, match="DecodingPress: press must be a kvcompress press, got NoneType"):
        kvc.DecodingPress().step(obs, cache)
    with pytest.raises(kvc.Error, match="decoding_press must be a DecodingPress or a CompressionRatioDecodingPress"):
        kvc.PrefillDecodingPress(None, kvc.KnormPress()).step(obs, cache)
    with pytest.raises(kvc.Error, match=r"uniforms\[1\] = 1 is outside \[0, 1\)"):
        kvc.CAMPress(kvc.KnormPress(), uniforms=np.array([0.5, 1.0])).step(obs, cache)
    with pytest.raises(kvc.Error, match="uniforms must be float32 or float64, got int64"):
        kvc.CAMPress(kvc.KnormPress(), uniforms=np.array([0, 0])).step(obs, cache)
    with pytest.raises(kvc.Error, match="it is stateful, call press.step"):
        kvc.compress(kvc.CAMPress(kvc.KnormPress()), obs, cache)
    with pytest.raises(kvc.Error, match="has no state before its first step with observation.queries"):
        kvc.DecodingPress(kvc.KnormPress()).steps(0)


@pytest.mark.parametrize("make", [
    lambda: kvc.DecodingPress(kvc.KnormPress(), compression_interval=2, target_size=10),
    lambda: kvc.CAMPress(kvc.KnormPress(), compression_interval=2, target_size=10, merge_budget=2, seed=1),
], ids=["DecodingPress", "CAMPress"])
def test_bad_steps_raise_and_leave_the_state_as_it_was(make):
    """Wrong shapes, dtype, layer and positions are rejected with the library's message naming the argument; the
    press then goes on from where it was, as if the bad call had not been made."""
    press, eng = make(), Engine(40)
    press.step(eng.forward(12), eng.cache)
    good = eng.forward(1)
    steps = press.steps(0) if press.native.has_state else 0
    bad_cases = [
        (dict(queries=np.zeros((B, Q + 1, 1, D), np.float32)), r"observation.queries shape \[1, 5, 1, 16\]"),
        (dict(queries=np.zeros((B, Q, 1, D), np.float16)), "observation.queries is float16 but the cache stores float32"),
        (dict(queries=np.zeros((B, Q, 1), np.float32)), "observation.queries must have 4 dimensions"),
        (dict(queries=None), "observation.queries must be given"),
        (dict(layer_idx=1), r"observation.layer_idx = 1 is outside \[0, num_layers = 1\)"),
        (dict(position=-3), "observation.position must be non-negative, got -3"),
    ]
    if isinstance(press, kvc.CAMPress):
        bad_cases.append((dict(rope=None), "observation.rope must be set"))
    for change, message in bad_cases:
        kw = dict(queries=good.queries, rope=good.rope, position=good.position, layer_idx=0, num_layers=1)
        kw.update(change)
        with pytest.raises(kvc.Error, match=message):
            press.step(kvc.Observation(**kw), eng.cache)
        if press.native.has_state:
            assert press.steps(0) == steps, message
    assert not press.step(good, eng.cache)
    assert press.steps(0) == 1
    with pytest.raises(kvc.Error, match="does not follow the previous step's last position 12"):
        press.step(good, eng.cache)
    assert press.step(eng.forward(1), eng.cache) and (eng.lengths == 10).all()


def test_a_state_of_one_dtype_rejects_a_cache_of_another_until_a_prefill():
    press = kvc.DecodingPress(kvc.KnormPress(), compression_interval=2, target_size=10)
    eng32, eng16 = Engine(32), Engine(32, dtype=np.float16)
    press.step(eng32.forward(12), eng32.cache)
    press.step(eng32.forward(1), eng32.cache)
    eng16.forward(12)
    with pytest.raises(kvc.Error, match="the cache stores float16 but this sequence's state holds float32 queries"):
        press.step(eng16.forward(1), eng16.cache)
    eng16 = Engine(32, dtype=np.float16)
    press.step(eng16.forward(12), eng16.cache)  # a prefill of the new dtype starts over
    assert not press.step(eng16.forward(1), eng16.cache)
    assert press.step(eng16.forward(1), eng16.cache) and (eng16.lengths == 10).all()


def test_cam_rejects_what_its_running_sums_cannot_follow():
    press = kvc.CAMPress(kvc.KnormPress(), compression_interval=4, target_size=10, merge_budget=2, capacity=24)
    eng = Engine(32)
    with pytest.raises(kvc.Error, match="cache capacity = 32 exceeds the press's shape.capacity = 24"):
        press.step(eng.forward(12), eng.cache)
    press = kvc.CAMPress(kvc.KnormPress(), compression_interval=4, target_size=10, merge_budget=2)
    eng = Engine(32)
    press.step(eng.forward(12), eng.cache)
    press.step(eng.forward(1), eng.cache)
    eng.lengths[0, 1] -= 1
    with pytest.raises(kvc.Error, match="CAM keeps the same entries in every kv head of a sequence"):
        press.step(eng.forward(1), eng.cache)
    replay = kvc.CAMPress(kvc.KnormPress(), compression_interval=1, target_size=10, merge_budget=2,
                          uniforms=np.array([0.5], np.float32))
    eng = Engine(32)
    replay.step(eng.forward(12), eng.cache)
    with pytest.raises(kvc.Error, match="CAMPress asked for more merge draws than the 1 uniforms it was given"):
        replay.step(eng.forward(1), eng.cache)


def test_window_presses_get_their_window_from_the_query_buffer():
    """TOVA (a window of 1) and SnapKV (window_size) score with window queries rebuilt from the query buffer at the
    tokens' positions. A window longer than the queries buffered since the last compression, or no rope to rotate
    it, is an Error raised inside the compression: the cache is untouched, but the layer has counted the pass."""
    for base in (kvc.TOVAPress(), kvc.SnapKVPress(window_size=4)):
        press = kvc.DecodingPress(base, compression_interval=4, target_size=10)
        eng = Engine(32)
        press.step(eng.forward(12), eng.cache)
        assert [press.step(eng.forward(1), eng.cache) for _ in range(4)] == [False, False, False, True]
        assert (eng.lengths == 10).all()
    press = kvc.DecodingPress(kvc.SnapKVPress(window_size=4), compression_interval=2, target_size=10)
    eng = Engine(32)
    press.step(eng.forward(12), eng.cache)
    press.step(eng.forward(1), eng.cache)
    with pytest.raises(kvc.Error, match="the inner press's window of 4 queries exceeds the 2 buffered since the last "
                                        "compression"):
        press.step(eng.forward(1), eng.cache)
    assert press.steps(0) == 2 and (eng.lengths == 14).all()
    press = kvc.DecodingPress(kvc.SnapKVPress(window_size=2), compression_interval=2, target_size=10)
    eng = Engine(32)
    press.step(eng.forward(12), eng.cache)
    press.step(eng.forward(1), eng.cache)
    obs = eng.forward(1)
    obs = kvc.Observation(queries=obs.queries, position=obs.position)
    with pytest.raises(kvc.Error, match="observation.rope must be set: the window queries are rotated"):
        press.step(obs, eng.cache)
    assert (eng.lengths == 14).all()


def test_a_paged_cache_decodes_as_the_dense_one():
    """The same passes on a paged copy of the cache (pages of 4 tokens, NHD) keep the same entries."""
    dense, paged = (kvc.CAMPress(kvc.KnormPress(), compression_interval=3, target_size=12, merge_budget=4, seed=5)
                    for _ in range(2))
    eng = Engine(32, seed=9)
    pages = 32 // 4
    k_pool, v_pool = np.zeros((pages, 4, H, D), np.float32), np.zeros((pages, 4, H, D), np.float32)
    table = np.arange(pages, dtype=np.int32)[None]
    lengths = np.zeros((B, H), np.int32)
    cache = kvc.KVCache.paged(k_pool, v_pool, table, lengths, kv_heads=H)
    for q_len in [14] + [1] * 7:
        obs = eng.forward(q_len)
        for (bb, hh), n in np.ndenumerate(lengths.copy()):
            for t in range(n, n + q_len):
                k_pool[t // 4, t % 4, hh] = eng.keys[bb, hh, t]
                v_pool[t // 4, t % 4, hh] = eng.values[bb, hh, t]
            lengths[bb, hh] += q_len
        assert dense.step(obs, eng.cache) == paged.step(obs, cache)
        np.testing.assert_array_equal(lengths, eng.lengths)
        for hh in range(H):
            n = lengths[0, hh]
            flat_k = k_pool[:, :, hh].reshape(-1, D)[:n]
            flat_v = v_pool[:, :, hh].reshape(-1, D)[:n]
            np.testing.assert_array_equal(flat_k, eng.keys[0, hh, :n])
            np.testing.assert_array_equal(flat_v, eng.values[0, hh, :n])
    assert dense.draws == paged.draws > 0
