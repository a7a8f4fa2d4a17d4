"""The presses added later (tests/golden/more_presses: LeverageScore, Compactor, CUR, CAP, FINCH, and
ThinK on the model scenarios) and QFilter through Python, against kvpress 0.5.5's scores and kept sets on the same tensors. The sketch
(LeverageScore, Compactor) and projection (CUR) are the ones kvpress drew for that call."""

import json

import numpy as np
import pytest

import kvcompress as kvc
from golden import GOLDEN, MORE, Scenario, array_of, check_kept, check_scores, fresh_cache, load, scenarios
from golden import more_observation as observation

# LeverageScore z-scores leverages whose spread is small against their mean (the Gram matrix's
# condition number is near 10^3): float32 rounding alone moves them by about 4e-4 relative, as the
# C++ golden test measures. Every other press is held to 1e-4.
REL_TOL = {"LeverageScorePress": 1e-3, "CompactorPress": 1e-3}


def make_press(sc, entry):
    p = dict(entry["params"])
    kind = entry["press"]
    if kind in ("LeverageScorePress", "CompactorPress"):
        p["sketch"] = array_of(sc, entry, "sketch")
    if kind == "CURPress":
        p["projection"] = array_of(sc, entry, "projection")
    return getattr(kvc, kind)(**p)


def press_cases():
    for name in MORE:
        for entry in Scenario(name).meta["presses"]:
            yield pytest.param(name, entry["name"], id=f"{name}-{entry['name']}")


@pytest.mark.parametrize("scenario,case", list(press_cases()))
def test_press_matches_kvpress(scenario, case):
    sc = Scenario(scenario)
    entry = next(e for e in sc.meta["presses"] if e["name"] == case)
    press, obs = make_press(sc, entry), observation(sc, entry)
    cache, positions = fresh_cache(sc)
    want_scores = load(entry["scores"], sc.dir)
    rel_tol = REL_TOL.get(entry["press"], 1e-4)
    check_scores(kvc.score(press, obs, cache), want_scores, rel_tol)
    lengths = kvc.compress(press, obs, cache)
    check_kept(positions, lengths, entry["n_kept"], load(entry["kept"], sc.dir), want_scores, rel_tol)
    # The kept entries' values moved to the front of each row, in position order.
    values = sc.tensor("values")
    for (b, h), n in np.ndenumerate(lengths):
        np.testing.assert_array_equal(cache._tensors[1][b, h, :n], values[b, h, positions[b, h, :n]])


def finch_cases():
    for name in MORE:
        for entry in Scenario(name).meta.get("finch_presses", []):
            yield pytest.param(name, entry["name"], id=f"{name}-{entry['name']}")


@pytest.mark.parametrize("scenario,case", list(finch_cases()))
def test_finch_matches_kvpress(scenario, case):
    sc = Scenario(scenario)
    entry = next(e for e in sc.meta["finch_presses"] if e["name"] == case)
    press, obs = make_press(sc, entry), observation(sc, entry)
    cache, positions = fresh_cache(sc)
    want_scores = load(entry["scores"], sc.dir)
    check_scores(kvc.score(press, obs, cache), want_scores, 1e-4)
    lengths = kvc.compress(press, obs, cache)
    n_kept, kept = entry["n_kept"], load(entry["kept"], sc.dir)
    assert (lengths == n_kept).all()
    values = sc.tensor("values")
    for (b, h), n in np.ndenumerate(lengths):
        np.testing.assert_array_equal(cache._tensors[1][b, h, :n], values[b, h, kept[b, h]])
        # With re-rotation the positions become the slots (the keys now sit there).
        want_pos = np.arange(n) if press.rerotate_keys else kept[b, h]
        np.testing.assert_array_equal(positions[b, h, :n], want_pos)
    if press.rerotate_keys:
        np.testing.assert_allclose(cache._tensors[0][:, :, :n_kept], load(entry["keys_out"], sc.dir), rtol=0,
                                   atol=1e-4)


def qfilter_cases():
    for name in scenarios():
        for entry in Scenario(name).meta["presses"]:
            if entry["press"] == "QFilterPress":
                yield pytest.param(name, entry["name"], id=f"{name}-{entry['name']}")


@pytest.mark.parametrize("scenario,case", list(qfilter_cases()))
def test_qfilter_matches_kvpress(scenario, case):
    sc = Scenario(scenario)
    entry = next(e for e in sc.meta["presses"] if e["name"] == case)
    layer, layers = sc.meta["layer_idx"], sc.meta["num_layers"]
    # The fixture holds this layer's filters [kv_heads, head_dim]; the press takes every layer's.
    q_filters = np.zeros((layers, *sc.tensor("q_filters").shape), dtype=np.float32)
    q_filters[layer] = sc.tensor("q_filters")
    press = kvc.QFilterPress(entry["params"]["compression_ratio"], q_filters=q_filters)
    obs = kvc.Observation(layer_idx=layer, num_layers=layers)
    cache, positions = fresh_cache(sc)
    want_scores = load(entry["scores"], sc.dir)
    check_scores(kvc.score(press, obs, cache), want_scores, 1e-4)
    lengths = kvc.compress(press, obs, cache)
    check_kept(positions, lengths, entry["n_kept"], load(entry["kept"], sc.dir), want_scores, 1e-4)


def test_array_presses_check_their_arrays_against_the_cache():
    sc = Scenario(MORE[0])
    entry = next(e for e in sc.meta["presses"] if e["press"] == "LeverageScorePress")
    cache, _ = fresh_cache(sc)
    obs = observation(sc, entry)
    b, h, _, d = sc.tensor("keys").shape
    k = entry["params"]["sketch_dimension"]
    with pytest.raises(kvc.Error, match="sketch must be given"):
        kvc.score(kvc.LeverageScorePress(0.5, k), obs, cache)
    wrong = np.zeros((b, h + 1, d, k), dtype=np.float32)
    with pytest.raises(kvc.Error, match=f"sketch has kv_heads = {h + 1}, the cache needs {h}"):
        kvc.compress(kvc.LeverageScorePress(0.5, k, sketch=wrong), obs, cache)
    with pytest.raises(kvc.Error, match="sketch must be float32, got float64"):
        kvc.LeverageScorePress(0.5, k, sketch=np.zeros((b, h, d, k))).native
    with pytest.raises(kvc.Error, match="sketch must be contiguous"):
        kvc.LeverageScorePress(0.5, k, sketch=np.zeros((b, h, k, d), dtype=np.float32).transpose(0, 1, 3, 2)).native
    with pytest.raises(kvc.Error, match="projection has head_dim = 3"):
        kvc.compress(kvc.CURPress(0.5, use_random_leverage=True, projection=np.zeros((3, 20), np.float32)), obs, cache)
    with pytest.raises(kvc.Error, match="leverage_type must be key, value, kv_avg or kv_product, got 'keys'"):
        kvc.CURPress(0.5, leverage_type="keys").native
    with pytest.raises(kvc.Error, match="QFilterPress.num_kv_heads = 7"):
        kvc.score(kvc.QFilterPress(0.5, q_filters=np.zeros((2, 7, d), np.float32)), obs, cache)
    with pytest.raises(kvc.Error, match="FinchPress window_size"):
        kvc.compress(kvc.FinchPress(0.5), obs, cache)


def test_sketch_is_held_alive_by_the_native_press():
    sc = Scenario(MORE[0])
    entry = next(e for e in sc.meta["presses"] if e["name"] == "leverage_default")
    sketch = array_of(sc, entry, "sketch")
    press = kvc.LeverageScorePress(entry["params"]["compression_ratio"], entry["params"]["sketch_dimension"],
                                   sketch=sketch.copy())
    native = press.native
    press.__dict__["sketch"] = None  # the native press holds its own reference to the array
    obs = observation(sc, entry)
    cache, _ = fresh_cache(sc)
    check_scores(kvc.score(press, obs, cache), load(entry["scores"], sc.dir), 1e-3)
    assert press.native is native


def model_scenarios():
    index = json.loads((GOLDEN / "more_presses" / "model" / "index.json").read_text())
    return [f"more_presses/model/{n}" for n in index["scenarios"]]


def think_cases():
    for name in model_scenarios():
        for entry in Scenario(name).meta["think"]:
            yield pytest.param(name, entry["name"], id=f"{name}-{entry['name']}")


@pytest.mark.parametrize("scenario,case", list(think_cases()))
def test_think_matches_kvpress(scenario, case):
    """Channel scores, the channels kvpress zeroes, and the packed keys, on every layer."""
    sc = Scenario(scenario)
    entry = next(e for e in sc.meta["think"] if e["name"] == case)
    press = kvc.ThinKPress(**entry["params"])
    assert press.compression_ratio == entry["params"]["key_channel_compression_ratio"] / 2
    for layer, pl in enumerate(entry["layers"]):
        keys = sc.tensor(f"keys_l{layer}").copy()
        cache = kvc.KVCache(keys, sc.tensor(f"values_l{layer}").copy())
        obs = kvc.Observation(window_queries=load(pl["window_queries"], sc.dir))
        np.testing.assert_allclose(press.channel_scores(obs, cache), load(pl["scores"], sc.dir), rtol=1e-5)
        packed, channels = press.compress_keys(obs, cache)
        pruned = load(pl["pruned"], sc.dir)
        b, h, n, d = keys.shape
        assert packed.shape == (b, h, n, press.kept_channels(d))
        for bb in range(b):
            for hh in range(h):
                np.testing.assert_array_equal(channels[bb, hh], np.flatnonzero(pruned[bb, hh] == 0))
                np.testing.assert_array_equal(packed[bb, hh], keys[bb, hh][:, channels[bb, hh]])
        # kvpress's keys are the cache's with the pruned channels zeroed; the cache is untouched here.
        zeroed = load(pl["keys_out"], sc.dir)
        np.testing.assert_array_equal(keys, sc.tensor(f"keys_l{layer}"))
        np.testing.assert_array_equal(zeroed, np.where(pruned[..., None, :] == 1, 0.0, keys))
    assert press.native.workspace_allocations == 1


def test_think_refuses_outputs_that_share_the_cache():
    sc = Scenario(model_scenarios()[0])
    entry = sc.meta["think"][0]
    press = kvc.ThinKPress(**entry["params"])
    keys = sc.tensor("keys_l0").copy()
    cache = kvc.KVCache(keys, sc.tensor("values_l0").copy())
    obs = kvc.Observation(window_queries=load(entry["layers"][0]["window_queries"], sc.dir))
    b, h, n, d = keys.shape
    kept = press.kept_channels(d)
    channels = np.empty((b, h, kept), dtype=np.int32)
    with pytest.raises(kvc.Error, match="packed_keys and keys must not share memory"):
        press.compress_keys(obs, cache, out=(keys[..., :kept], channels))
    with pytest.raises(kvc.Error, match="packed_keys must be contiguous"):
        press.compress_keys(obs, cache, out=(np.empty((b, h, n, d), np.float32)[..., :kept], channels))
    with pytest.raises(kvc.Error, match="channels must hold"):
        press.compress_keys(obs, cache, out=(np.empty((b, h, n, kept), np.float32), channels[:, :, 1:].copy()))
    with pytest.raises(kvc.Error, match="ThinKPress key_channel_compression_ratio must be in \\[0, 1\\), got 1"):
        kvc.ThinKPress(1.0).kept_channels(d)
    with pytest.raises(kvc.Error, match="observation.window_queries holds 32 tokens, more than window_size = 8"):
        kvc.ThinKPress(0.5, window_size=8).channel_scores(obs, cache)


def kvzap_cases():
    for name in model_scenarios():
        for entry in Scenario(name).meta["kvzap"]:
            yield pytest.param(name, entry["name"], id=f"{name}-{entry['name']}")


@pytest.mark.parametrize("scenario,case", list(kvzap_cases()))
def test_kvzap_matches_kvpress(scenario, case):
    """Scores and kept sets of every layer, from the surrogate's safetensors (kvpress's own KVzapModel)."""
    safetensors = pytest.importorskip("safetensors.numpy")
    sc = Scenario(scenario)
    entry = next(e for e in sc.meta["kvzap"] if e["name"] == case)
    weights = safetensors.load_file(sc.dir / entry["weights"])
    mlp = entry["params"]["model_type"] == "mlp"
    for layer, pl in enumerate(entry["layers"]):
        w = {k[len(f"layers.{layer}."):]: v for k, v in weights.items() if k.startswith(f"layers.{layer}.")}
        layer_weights = dict(w1=w["0.weight"], b1=w["0.bias"], w2=w["2.weight"], b2=w["2.bias"]) if mlp else \
            dict(w1=w["weight"], b1=w["bias"])
        press = kvc.KVzapPress(**entry["params"], **layer_weights)
        hidden = sc.tensor(f"hidden_l{layer}")  # [1, n, hidden]
        obs = kvc.Observation(hidden_states=np.ascontiguousarray(hidden[:, None]))
        keys = sc.tensor(f"keys_l{layer}").copy()
        b, h, n, _ = keys.shape
        positions = np.ascontiguousarray(np.broadcast_to(np.arange(n, dtype=np.int32), (b, h, n)))
        cache = kvc.KVCache(keys, sc.tensor(f"values_l{layer}").copy(), positions=positions)
        want_scores = load(pl["scores"], sc.dir)
        check_scores(kvc.score(press, obs, cache), want_scores, 1e-4)
        lengths = kvc.compress(press, obs, cache)
        check_kept(positions, lengths, pl["n_kept"], load(pl["kept"], sc.dir), want_scores, 1e-4)


def test_kvzap_weights_are_checked():
    sc = Scenario(model_scenarios()[0])
    cache = kvc.KVCache(sc.tensor("keys_l0").copy(), sc.tensor("values_l0").copy())
    hidden = np.ascontiguousarray(sc.tensor("hidden_l0")[:, None])
    d = hidden.shape[-1]
    obs = kvc.Observation(hidden_states=hidden)
    w1, b1 = np.zeros((8, d), np.float32), np.zeros(8, np.float32)
    with pytest.raises(kvc.Error, match="KVzapPress model_type must be linear or mlp, got 'gelu'"):
        kvc.KVzapPress(0.5, "gelu").native
    with pytest.raises(kvc.Error, match="KVzapPress weights w1 and b1 must be given"):
        kvc.score(kvc.KVzapPress(0.5), obs, cache)
    with pytest.raises(kvc.Error, match="b1 has 7 entries, w1 8 rows"):
        kvc.KVzapPress(0.5, w1=w1, b1=b1[:7].copy()).native
    with pytest.raises(kvc.Error, match="w2 has 3 columns, w1 8 rows"):
        kvc.KVzapPress(0.5, w1=w1, b1=b1, w2=np.zeros((2, 3), np.float32), b2=np.zeros(2, np.float32)).native
    with pytest.raises(kvc.Error, match="KVzapPress weights score 8 kv heads, the cache has 2"):
        kvc.score(kvc.KVzapPress(0.5, "linear", w1=w1, b1=b1), obs, cache)
    with pytest.raises(kvc.Error, match="observation.hidden_states must be"):
        kvc.score(kvc.KVzapPress(0.5, "linear", w1=w1[:2].copy(), b1=b1[:2].copy()),
                  kvc.Observation(hidden_states=np.ascontiguousarray(hidden[..., :-1])), cache)


def kvcompose_cases():
    for name in model_scenarios():
        for entry in Scenario(name).meta["kvcompose"]:
            yield pytest.param(name, entry["name"], id=f"{name}-{entry['name']}")


@pytest.mark.parametrize("scenario,case", list(kvcompose_cases()))
def test_kvcompose_matches_kvpress(scenario, case):
    """Scores and counts of every (layer, kv head) from kvpress's replay attention, and each head's kept set."""
    sc = Scenario(scenario)
    entry = next(e for e in sc.meta["kvcompose"] if e["name"] == case)
    press = kvc.KVComposePress(**entry["params"])
    layers, q_heads, kv_heads, n = (sc.meta[k] for k in ("num_layers", "q_heads", "kv_heads", "seq_len"))
    stats = press.statistics(layers, q_heads, n)
    for layer in range(layers):
        stats.add(layer, sc.tensor(f"replay_attention_l{layer}"))
    positions = [np.ascontiguousarray(np.broadcast_to(np.arange(n, dtype=np.int32), (1, kv_heads, n)))
                 for _ in range(layers)]
    caches = [kvc.KVCache(sc.tensor(f"keys_l{layer}").copy(), sc.tensor(f"values_l{layer}").copy(),
                          positions=positions[layer]) for layer in range(layers)]
    norms = np.stack([press.value_norms(c, n) for c in caches]) if press.add_v_norm else None
    plan = press.plan(stats, kv_heads, norms)
    want = load(entry["scores"], sc.dir)
    np.testing.assert_allclose(np.array(plan.scores).reshape(want.shape), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.array(plan.kept).reshape(layers, kv_heads), entry["kept_counts"])
    mask = load(entry["kept_mask"], sc.dir)
    for layer, cache in enumerate(caches):
        lengths = press.compress(plan, layer, cache)
        for h in range(kv_heads):
            np.testing.assert_array_equal(positions[layer][0, h, :lengths[0, h]], np.flatnonzero(mask[layer, h]))


def test_kvcompose_inputs_are_checked():
    sc = Scenario(model_scenarios()[0])
    layers, q_heads, kv_heads, n = (sc.meta[k] for k in ("num_layers", "q_heads", "kv_heads", "seq_len"))
    with pytest.raises(kvc.Error, match="KVComposePress agg_task must be max or mean, got 'sum'"):
        kvc.KVComposePress(agg_task="sum").statistics(layers, q_heads, n)
    press = kvc.KVComposePress(compression_ratio=0.5)
    stats = press.statistics(layers, q_heads, n)
    attention = sc.tensor("replay_attention_l0")
    with pytest.raises(kvc.Error, match=f"KVComposeStatistics layer must be in \\[0, {layers}\\), got {layers}"):
        stats.add(layers, attention)
    with pytest.raises(kvc.Error, match="KVComposeStatistics attention must cover the context_length"):
        stats.add(0, np.ascontiguousarray(attention[..., :n]))
    stats.add(0, attention)
    with pytest.raises(kvc.Error, match="kvcompose_plan: layer 1 has no replay pass in the statistics"):
        press.plan(stats, kv_heads)
    stats.add(1, sc.tensor("replay_attention_l1"))
    with pytest.raises(kvc.Error, match="KVComposePress add_v_norm needs value_norms"):
        kvc.KVComposePress(compression_ratio=0.5, add_v_norm=True).plan(stats, kv_heads)
    plan = press.plan(stats, kv_heads)
    short = kvc.KVCache(sc.tensor("keys_l0").copy(), sc.tensor("values_l0").copy(), lengths=np.full(1, n - 1, np.int32))
    with pytest.raises(kvc.Error, match=f"kvcompose_compress: row 0 holds {n - 1} entries, the plan scores the "
                                        f"context_length = {n}"):
        press.compress(plan, 0, short)


def test_presses_that_are_not_for_compress_say_what_to_call():
    sc = Scenario(model_scenarios()[0])
    cache = kvc.KVCache(sc.tensor("keys_l0").copy(), sc.tensor("values_l0").copy())
    with pytest.raises(kvc.Error, match="got ThinKPress: it prunes channels, use press.compress_keys"):
        kvc.compress(kvc.ThinKPress(0.5), None, cache)
    with pytest.raises(kvc.Error, match="got KVComposePress: it needs every layer"):
        kvc.score(kvc.KVComposePress(compression_ratio=0.5), None, cache)
    with pytest.raises(kvc.Error, match="compress and score take a kvcompress press, got str"):
        kvc.workspace_bytes("knorm", None, cache)


def fast_kvzip_cases():
    for name in model_scenarios():
        for entry in Scenario(name).meta["fastkvzip"]:
            yield pytest.param(name, entry["name"], id=f"{name}-{entry['name']}")


def fast_kvzip_gate(weights, layer):
    w = {k[len(f"{layer}."):]: v for k, v in weights.items() if k.startswith(f"{layer}.")}
    return kvc.FastKVzipGate(w["q_proj.weight"], w["q_proj.bias"], w["k_proj.weight"], w["q_norm.weight"],
                             w["k_norm.weight"], w["k_base"], w["b"])


@pytest.mark.parametrize("scenario,case", list(fast_kvzip_cases()))
def test_fast_kvzip_matches_kvpress(scenario, case):
    """Every layer's gate scores (kvpress's own FastKVzipGate, saved as safetensors), the count each
    layer evicts, and the entries evicted across heads, against those kvpress masked."""
    safetensors = pytest.importorskip("safetensors.numpy")
    sc = Scenario(scenario)
    entry = next(e for e in sc.meta["fastkvzip"] if e["name"] == case)
    press = kvc.FastKVzipPress(**entry["params"])
    weights = safetensors.load_file(sc.dir / entry["weights"])
    layers, kv_heads, n = (sc.meta[k] for k in ("num_layers", "kv_heads", "seq_len"))
    gates = [fast_kvzip_gate(weights, layer) for layer in range(layers)]
    hidden = [load(pl["hidden"], sc.dir) for pl in entry["layers"]]
    scores = np.stack([press.score_layer(g, x) for g, x in zip(gates, hidden)])
    want = load(entry["scores"], sc.dir)
    np.testing.assert_allclose(scores, want, rtol=1e-4, atol=1e-6)
    assert press.pruned_counts(scores) == entry["masked_per_layer"]
    positions = [np.ascontiguousarray(np.broadcast_to(np.arange(n, dtype=np.int32), (1, kv_heads, n)))
                 for _ in range(layers)]
    caches = [kvc.KVCache(sc.tensor(f"keys_l{layer}").copy(), sc.tensor(f"values_l{layer}").copy(),
                          positions=positions[layer]) for layer in range(layers)]
    lengths = press.compress(gates, hidden, caches)
    masked = load(entry["masked"], sc.dir)
    for layer in range(layers):
        for h in range(kv_heads):
            np.testing.assert_array_equal(positions[layer][0, h, :lengths[layer][0, h]],
                                          np.flatnonzero(masked[layer, h] == 0))


def test_fast_kvzip_inputs_are_checked():
    safetensors = pytest.importorskip("safetensors.numpy")
    sc = Scenario(model_scenarios()[0])
    entry = sc.meta["fastkvzip"][0]
    w = {k[2:]: v for k, v in safetensors.load_file(sc.dir / entry["weights"]).items() if k.startswith("0.")}
    with pytest.raises(kvc.Error, match="q_proj_bias has shape\\[0\\] = 1, expected"):
        kvc.FastKVzipGate(w["q_proj.weight"], w["q_proj.bias"][:1].copy(), w["k_proj.weight"], w["q_norm.weight"],
                          w["k_norm.weight"], w["k_base"], w["b"])
    with pytest.raises(kvc.Error, match="k_base must have 4 dimensions"):
        kvc.FastKVzipGate(w["q_proj.weight"], w["q_proj.bias"], w["k_proj.weight"], w["q_norm.weight"],
                          w["k_norm.weight"], np.ascontiguousarray(w["k_base"][:, 0]), w["b"])
    gate = fast_kvzip_gate(safetensors.load_file(sc.dir / entry["weights"]), 0)
    press = kvc.FastKVzipPress(0.5)
    hidden = load(entry["layers"][0]["hidden"], sc.dir)
    with pytest.raises(kvc.Error, match="FastKVzipPress hidden states must be \\[1, 1, n, hidden_size"):
        press.score_layer(gate, np.ascontiguousarray(hidden[..., :-1]))
    cache = kvc.KVCache(sc.tensor("keys_l0").copy(), sc.tensor("values_l0").copy())
    scores = press.score_layer(gate, hidden)
    n = sc.meta["seq_len"]
    with pytest.raises(kvc.Error, match=f"evict_lowest_across_heads: n_pruned = {2 * n + 1} must be in \\[0, {2 * n}\\]"):
        press.evict(cache, scores, 2 * n + 1)
    with pytest.raises(kvc.Error, match="FastKVzipPress.compress needs one gate, hidden state and cache per layer"):
        press.compress([gate], [], [cache])


def kvzip_cases():
    for name in model_scenarios():
        for entry in Scenario(name).meta["kvzip"]:
            yield pytest.param(name, entry["name"], id=f"{name}-{entry['name']}")


@pytest.mark.parametrize("scenario,case", list(kvzip_cases()))
def test_kvzip_matches_kvpress(scenario, case):
    """Reconstruction scores of every chunk and layer from kvpress's passes (queries and the cache
    holding the context and the input), then the entries evicted across layers against kvpress's mask."""
    sc = Scenario(scenario)
    entry = next(e for e in sc.meta["kvzip"] if e["name"] == case)
    press = kvc.KVzipPress(**entry["params"])
    layers, kv_heads, n = (sc.meta[k] for k in ("num_layers", "kv_heads", "seq_len"))
    rope = kvc.rotary_embedding_from_config(sc.rope_config())
    scores = np.zeros((layers, kv_heads, n), dtype=np.float32)
    for chunk in entry["chunks"]:
        for layer, cl in enumerate(chunk["layers"]):
            keys = load(cl["keys"], sc.dir).copy()  # [1, kv_heads, n + q, d]
            values = load(cl["values"], sc.dir).copy() if press.kvzip_plus_normalization else np.zeros_like(keys)
            kw = dict(queries=load(cl["queries"], sc.dir), rope=rope, position=cl["position"])
            if press.kvzip_plus_normalization:
                kw.update(hidden_states=np.ascontiguousarray(load(cl["hidden"], sc.dir)[:, None]),
                          output_projection=load(cl["o_proj"], sc.dir))
            press.score_chunk(kvc.Observation(**kw), kvc.KVCache(keys, values), n, chunk["start"], chunk["end"],
                              scores[layer])
    want = load(entry["scores"], sc.dir)
    scale = np.abs(want).max()
    assert (np.abs(scores - want) <= 1e-4 * np.maximum(np.abs(want), 1e-3 * scale)).all()
    press.protect_sinks(scores)
    counts = press.pruned_counts(scores)
    assert counts == entry["masked_per_layer"]
    masked = load(entry["masked"], sc.dir)
    for layer in range(layers):
        positions = np.ascontiguousarray(np.broadcast_to(np.arange(n, dtype=np.int32), (1, kv_heads, n)))
        cache = kvc.KVCache(sc.tensor(f"keys_l{layer}").copy(), sc.tensor(f"values_l{layer}").copy(), positions=positions)
        lengths = press.evict(cache, np.ascontiguousarray(scores[layer]), counts[layer])
        for h in range(kv_heads):
            np.testing.assert_array_equal(positions[0, h, :lengths[0, h]], np.flatnonzero(masked[layer, h] == 0))


def test_kvzip_inputs_are_checked():
    sc = Scenario(model_scenarios()[0])
    entry = sc.meta["kvzip"][0]
    cl = entry["chunks"][0]["layers"][0]
    press = kvc.KVzipPress(**entry["params"])
    n, kv_heads = sc.meta["seq_len"], sc.meta["kv_heads"]
    keys = load(cl["keys"], sc.dir).copy()
    cache = kvc.KVCache(keys, np.zeros_like(keys))
    obs = kvc.Observation(queries=load(cl["queries"], sc.dir), rope=kvc.rotary_embedding_from_config(sc.rope_config()),
                          position=cl["position"])
    out = np.zeros((kv_heads, n), np.float32)
    with pytest.raises(kvc.Error, match=f"KVzipPress chunk \\[0, {n + 1}\\) must be a non-empty part of the context"):
        press.score_chunk(obs, cache, n, 0, n + 1, out)
    with pytest.raises(kvc.Error, match="observation.queries \\(pre-RoPE queries of the reconstruction input\\) must be given"):
        press.score_chunk(kvc.Observation(), cache, n, 0, 8, out)
    with pytest.raises(kvc.Error, match=f"KVzipPress: row 0 holds {keys.shape[2]} entries, the context_length"):
        press.score_chunk(obs, cache, n - 1, 0, 8, np.zeros((kv_heads, n - 1), np.float32))
    with pytest.raises(kvc.Error, match="KVzipPress n_sink must be non-negative, got -1"):
        kvc.KVzipPress(n_sink=-1).protect_sinks(np.zeros((1, kv_heads, n), np.float32))
