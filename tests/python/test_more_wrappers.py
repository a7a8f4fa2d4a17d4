"""The wrappers added later through Python against kvpress 0.5.5 (tests/golden/more_presses/*/
more_wrappers.json, written by tools/golden/generate_more_wrappers.py from kvpress's own compress):
EntropyGatedChunkKV, LUKV (with a budget curve), DuoAttention (patterns, and the on-the-fly head
scores), Merging (the merged values); ChunkPress on a paged cache. ComposedPress and ChunkPress against
kvpress are in test_golden.py with the other wrappers."""

import json

import numpy as np
import pytest

import kvcompress as kvc
from golden import GOLDEN, MORE, Scenario, check_scores, fresh_cache, load
from golden import more_observation as observation


def wrappers(sc, kind):
    meta = json.loads((sc.dir / "more_wrappers.json").read_text())
    return [w for w in meta["wrappers"] if w["press"] == kind]


def inner_press(entry):
    return getattr(kvc, entry["press"])(**entry["params"])


def cases(kind):
    for name in MORE:
        for w in wrappers(Scenario(name), kind):
            yield pytest.param(name, w["name"], id=f"{name}-{w['name']}")


def entry_of(scenario, kind, case):
    sc = Scenario(scenario)
    return sc, next(w for w in wrappers(sc, kind) if w["name"] == case)


def check_kept_mask(sc, cache, positions, lengths, mask):
    """Each row holds exactly the entries kvpress left unmasked, in position order, with their keys."""
    keys = sc.tensor("keys")
    for (b, h), n in np.ndenumerate(lengths):
        want = np.flatnonzero(mask[b, h])
        np.testing.assert_array_equal(positions[b, h, :n], want, err_msg=f"batch {b}, head {h}")
        np.testing.assert_array_equal(cache._tensors[0][b, h, :n], keys[b, h, want])


@pytest.mark.parametrize("scenario,case", list(cases("EntropyGatedChunkKVPress")))
def test_entropy_gated_chunk_kv_matches_kvpress(scenario, case):
    sc, w = entry_of(scenario, "EntropyGatedChunkKVPress", case)
    inner = w["presses"][0]
    want_scores, want_kept, n_kept = load(w["inner_scores"], sc.dir), load(w["kept"], sc.dir), w["n_kept"]
    full_obs = observation(sc, inner)
    for b in range(sc.meta["batch"]):  # each sequence alone, as kvpress was run
        obs = observation(sc, inner)
        if full_obs.window_queries is not None:
            obs.window_queries = np.ascontiguousarray(full_obs.window_queries[b:b + 1])
        keys, values = sc.tensor("keys")[b:b + 1].copy(), sc.tensor("values")[b:b + 1].copy()
        n = keys.shape[2]
        positions = np.ascontiguousarray(np.broadcast_to(np.arange(n, dtype=np.int32), (1, keys.shape[1], n)))
        cache = kvc.KVCache(keys, values, positions=positions)
        check_scores(kvc.score(inner_press(inner), obs, cache), want_scores[b:b + 1], 1e-4)
        press = kvc.EntropyGatedChunkKVPress(inner_press(inner), **w["params"])
        lengths = kvc.compress(press, obs, cache)
        assert (lengths == n_kept).all()
        assert (positions[0, :, :n_kept] == positions[0, 0, :n_kept]).all()  # the same tokens in every head
        ours, theirs = positions[0, 0, :n_kept], want_kept[b]
        if not np.array_equal(ours, theirs):
            # Tokens of equal score (SnapKV's window) are cut by torch.topk's tie-breaking.
            token = want_scores[b].sum(axis=0)
            np.testing.assert_allclose(np.sort(token[ours]), np.sort(token[theirs]), rtol=1e-5)
        np.testing.assert_array_equal(values[0, :, :n_kept], sc.tensor("values")[b][:, ours])


@pytest.mark.parametrize("scenario,case", list(cases("LUKVPress")))
def test_lukv_matches_kvpress(scenario, case):
    sc, w = entry_of(scenario, "LUKVPress", case)
    meta = json.loads((sc.dir / "more_wrappers.json").read_text())
    curve = np.ascontiguousarray(load(meta["tensors"]["budget_curve"], sc.dir))
    inner = w["presses"][0]
    obs = observation(sc, inner)
    cache, positions = fresh_cache(sc)
    check_scores(kvc.score(inner_press(inner), obs, cache), load(w["inner_scores"], sc.dir), 1e-4)
    press = kvc.LUKVPress(inner_press(inner), **w["params"], budget_curves=curve)
    lengths = kvc.compress(press, obs, cache)
    check_kept_mask(sc, cache, positions, lengths, load(w["kept_mask"], sc.dir))


@pytest.mark.parametrize("scenario,case", list(cases("DuoAttentionPress")))
def test_duo_attention_matches_kvpress(scenario, case):
    sc, w = entry_of(scenario, "DuoAttentionPress", case)
    p = w["params"]
    head_scores = np.ascontiguousarray(load(w["head_scores"], sc.dir))
    if p["on_the_fly_scoring"]:
        # kvpress's estimate from the per-sample mean queries and keys it computed.
        mq, mk = load(w["mean_queries"], sc.dir), load(w["mean_keys"], sc.dir)  # [samples, layers, heads, d]
        rope = kvc.rotary_embedding_from_config(sc.rope_config())
        ours = np.mean([[kvc.duo_attention_sample_scores(np.ascontiguousarray(mq[s, layer]),
                                                         np.ascontiguousarray(mk[s, layer]), rope, w["q_len"])
                         for layer in range(mq.shape[1])] for s in range(mq.shape[0])], axis=0)
        np.testing.assert_allclose(ours, head_scores, rtol=1e-4)
    press = kvc.DuoAttentionPress(p["head_compression_ratio"], sink_size=p["sink_size"],
                                  recent_size=p["recent_size"], head_scores=head_scores)
    obs = kvc.Observation(layer_idx=sc.meta["layer_idx"], num_layers=sc.meta["num_layers"])
    cache, positions = fresh_cache(sc)
    lengths = kvc.compress(press, obs, cache)
    check_kept_mask(sc, cache, positions, lengths, load(w["kept_mask"], sc.dir))


@pytest.mark.parametrize("scenario,case", list(cases("MergingPress")))
def test_merging_matches_kvpress(scenario, case):
    sc, w = entry_of(scenario, "MergingPress", case)
    inner = w["presses"][0]
    obs = observation(sc, inner)
    cache, positions = fresh_cache(sc)
    check_scores(kvc.score(inner_press(inner), obs, cache), load(w["inner_scores"], sc.dir), 1e-4)
    lengths = kvc.compress(kvc.MergingPress(inner_press(inner), **w["params"]), obs, cache)
    n_kept, kept = w["n_kept"], load(w["kept"], sc.dir)
    assert (lengths == n_kept).all()
    np.testing.assert_array_equal(positions[:, :, :n_kept], kept)
    keys = sc.tensor("keys")
    for (b, h), _ in np.ndenumerate(lengths):
        np.testing.assert_array_equal(cache._tensors[0][b, h, :n_kept], keys[b, h, kept[b, h]])
    want_values = load(w["values_out"], sc.dir)
    got = cache._tensors[1][:, :, :n_kept]
    assert (np.abs(got - want_values) <= 1e-5 * np.maximum(1.0, np.abs(want_values))).all()
    unmerged = sc.tensor("values")[np.arange(kept.shape[0])[:, None, None], np.arange(kept.shape[1])[None, :, None], kept]
    assert np.array_equal(got, unmerged) == (w["merged_entries"] == 0)


def test_budget_arrays_are_checked():
    sc = Scenario(MORE[0])
    obs = kvc.Observation(layer_idx=sc.meta["layer_idx"], num_layers=sc.meta["num_layers"])
    cache, _ = fresh_cache(sc)
    with pytest.raises(kvc.Error, match="LUKVPress needs budget_curves"):
        kvc.compress(kvc.LUKVPress(kvc.KnormPress(), 0.5), obs, cache)
    with pytest.raises(kvc.Error, match="budget_curves must be \\[99, num_layers, kv_heads\\]"):
        kvc.LUKVPress(kvc.KnormPress(), 0.5, budget_curves=np.zeros((98, 2, 2), np.float32)).native
    with pytest.raises(kvc.Error, match="LUKVPress budget curve has 5 kv heads"):
        kvc.compress(kvc.LUKVPress(kvc.KnormPress(), 0.5, budget_curves=np.zeros((99, 2, 5), np.float32)), obs, cache)
    with pytest.raises(kvc.Error, match="DuoAttentionPress needs head_scores \\[num_layers, kv_heads\\]"):
        kvc.compress(kvc.DuoAttentionPress(0.5), obs, cache)
    with pytest.raises(kvc.Error, match="DuoAttentionPress head_scores hold 1 layers, observation.layer_idx = 1"):
        kvc.compress(kvc.DuoAttentionPress(0.5, head_scores=np.zeros((1, 2), np.float32)), obs, cache)
    with pytest.raises(kvc.Error, match="ComposedPress needs at least one press"):
        kvc.ComposedPress([]).native
    with pytest.raises(kvc.Error, match="ComposedPress: press must be a kvcompress press, got int"):
        kvc.ComposedPress([kvc.KnormPress(0.5), 3]).native
    with pytest.raises(kvc.Error, match="MergingPress wraps a scorer press"):
        kvc.MergingPress(kvc.DuoAttentionPress(0.5)).native


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_chunk_press_on_a_paged_cache_keeps_what_it_keeps_densely(dtype):
    """ChunkPress scores each chunk through a row-offset window of the cache's layout: on a paged
    cache (shuffled pages) it keeps the entries it keeps on the dense copy."""
    sc = Scenario("llama_d64_n131_b2")
    keys, values = sc.tensor("keys").astype(dtype), sc.tensor("values").astype(dtype)
    b, h, n, d = keys.shape
    page = 16
    pages = -(-n // page)
    order = np.random.default_rng(0).permutation(b * pages).astype(np.int32)
    table = np.ascontiguousarray(order.reshape(b, pages))
    k_pool = np.zeros((b * pages, page, h, d), dtype)
    v_pool = np.zeros_like(k_pool)
    for bb in range(b):
        for p in range(pages):
            span = slice(p * page, min(n, (p + 1) * page))
            k_pool[table[bb, p], :span.stop - span.start] = keys[bb, :, span].transpose(1, 0, 2)
            v_pool[table[bb, p], :span.stop - span.start] = values[bb, :, span].transpose(1, 0, 2)
    press = kvc.ChunkPress(kvc.KnormPress(0.6), chunk_length=40)
    dense = kvc.KVCache(keys.copy(), values.copy())
    paged = kvc.KVCache.paged(k_pool, v_pool, table, np.full(b, n, np.int32), kv_heads=h)
    lengths = kvc.compress(press, None, dense).copy()
    assert (lengths < n).all()
    np.testing.assert_array_equal(kvc.compress(press, None, paged), lengths)
    for bb in range(b):
        for hh in range(h):
            m = lengths[bb, hh]
            got = np.stack([k_pool[table[bb, i // page], i % page, hh] for i in range(m)])
            np.testing.assert_array_equal(got, dense._tensors[0][bb, hh, :m])


def dms_scenarios():
    index = json.loads((GOLDEN / "dms" / "index.json").read_text())
    return [f"dms/{n}" for n in index["scenarios"]]


@pytest.mark.parametrize("scenario", dms_scenarios())
def test_dms_removes_what_kvpress_masks(scenario):
    """kvpress's own DMSPress hook through a prefill and decoding passes (tools/golden/generate_dms.py),
    replayed: the recorded keys and values appended pass by pass, one DMSPress stepped for every
    layer; the entries removed are those kvpress masked, after every pass (count) and at the end (set),
    kept entries hold their original rows, and the compression ratio is kvpress's."""
    sc = Scenario(scenario)
    meta = sc.meta
    b, h, d, total, layers = (meta[k] for k in ("batch", "kv_heads", "head_dim", "total_tokens", "num_layers"))
    inner = meta["press"]
    rope = kvc.rotary_embedding_from_config(sc.rope_config())
    press = kvc.DMSPress(getattr(kvc, inner["name"])(**inner["params"]), threshold=meta["threshold"],
                         sliding_window_size=meta["sliding_window_size"], decoding=meta["decoding"])
    state = []
    for lj in sorted(meta["layers"], key=lambda x: x["layer_idx"]):
        keys, values = np.zeros((b, h, total, d), np.float32), np.zeros((b, h, total, d), np.float32)
        lengths = np.zeros((b, h), np.int32)
        positions = np.full((b, h, total), -1, np.int32)
        state.append(dict(lj=lj, k=load(lj["keys"], sc.dir), v=load(lj["values"], sc.dir),
                          q=load(lj["queries"], sc.dir) if "queries" in lj else None,
                          keys=keys, values=values, lengths=lengths, positions=positions,
                          cache=kvc.KVCache(keys, values, lengths=lengths, positions=positions)))
    for pi, p in enumerate(meta["passes"]):
        pos, length = p["position"], p["length"]
        for li, st in enumerate(state):
            processed = st["k"].shape[2]  # kvpress recorded only the passes DMS processed
            if pos < processed:
                for bb in range(b):
                    for hh in range(h):
                        slot = st["lengths"][bb, hh]
                        st["keys"][bb, hh, slot:slot + length] = st["k"][bb, hh, pos:pos + length]
                        st["values"][bb, hh, slot:slot + length] = st["v"][bb, hh, pos:pos + length]
                        st["positions"][bb, hh, slot:slot + length] = np.arange(pos, pos + length)
                        st["lengths"][bb, hh] += length
            kw = dict(layer_idx=li, num_layers=layers, position=pos, chunk_length=length, rope=rope)
            if st["q"] is not None and pos < processed:
                kw["queries"] = st["q"][:, :, pos:pos + length]
            press.step(kvc.Observation(**kw), st["cache"])
            assert press.native.removed(li) == st["lj"]["masked_counts"][pi], f"layer {li}, pass {pi}"
    for li, st in enumerate(state):
        processed = st["k"].shape[2]
        masked = load(st["lj"]["masked"], sc.dir)
        for bb in range(b):
            for hh in range(h):
                n = st["lengths"][bb, hh]
                present = st["positions"][bb, hh, :n]
                old = present[present < processed]
                np.testing.assert_array_equal(st["keys"][bb, hh, :n][present < processed], st["k"][bb, hh, old])
                removed = np.setdiff1d(np.arange(processed), present)
                np.testing.assert_array_equal(removed, np.flatnonzero(masked[bb, hh, :processed]))
    assert press.compression_ratio == pytest.approx(meta["compression_ratio"], rel=1e-12)


def test_dms_inputs_are_checked():
    sc = Scenario(MORE[0])
    cache, _ = fresh_cache(sc)
    with pytest.raises(kvc.Error, match="threshold must be set to a finite value, got nan"):
        kvc.DMSPress(kvc.KnormPress()).step(kvc.Observation(chunk_length=sc.meta["seq_len"]), cache)
    with pytest.raises(kvc.Error, match="DMSPress has no state before its first step"):
        kvc.DMSPress(kvc.KnormPress(), threshold=0.0).compression_ratio
    with pytest.raises(kvc.Error, match="got DMSPress: it is stateful, call press.step"):
        kvc.compress(kvc.DMSPress(kvc.KnormPress(), threshold=0.0), None, cache)
    with pytest.raises(kvc.Error, match="DMSPress wraps a scorer press"):
        kvc.DMSPress(kvc.DuoAttentionPress(0.5), threshold=0.0).step(kvc.Observation(chunk_length=4), cache)
