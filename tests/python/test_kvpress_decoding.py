"""kvcompress.kvpress's decoding presses in kvpress's own pipeline, which drives decoding presses through its
forward hooks while it generates: on the tiny random-weight Llama and Qwen3 models of test_kvpress_dropin.py, the
answers with the wrapped DecodingPress, CompressionRatioDecodingPress, PrefillDecodingPress and CAMPress equal
the answers with kvpress's own, and so does the cache the pipeline leaves (the same rows per head; CAM's merged
values to 1e-4). CAM's merges are random in both: kvpress's torch.bernoulli(p) is replaced by p > 0.5 for the
test, and ours is handed u = 0.5 for every draw, the same decision. kvpress is optional: without it these
tests are skipped."""

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
kvpress = pytest.importorskip("kvpress")
transformers = pytest.importorskip("transformers")

import kvcompress.kvpress as kvcp  # noqa: E402
from test_kvpress_dropin import VOCAB_WORDS, tiny_model, word_tokenizer  # noqa: E402

HALF = np.full(100000, 0.5)  # CAM's draws: u = 0.5, so an entry merges iff p > 0.5

PRESSES = {
    "Decoding(Knorm)": (lambda: kvpress.DecodingPress(kvpress.KnormPress(), compression_interval=4, target_size=280),
                        lambda: kvcp.DecodingPress(kvcp.KnormPress(), compression_interval=4, target_size=280)),
    "Decoding(KeyDiff)": (lambda: kvpress.DecodingPress(kvpress.KeyDiffPress(), 3, 250),
                          lambda: kvcp.DecodingPress(kvcp.KeyDiffPress(), 3, 250)),
    "CompressionRatioDecoding(Knorm)": (
        lambda: kvpress.CompressionRatioDecodingPress(kvpress.KnormPress(), compression_interval=5,
                                                      target_compression_ratio=0.2),
        lambda: kvcp.CompressionRatioDecodingPress(kvcp.KnormPress(), compression_interval=5,
                                                   target_compression_ratio=0.2)),
    "PrefillDecoding(Knorm, Decoding(KeyDiff))": (
        lambda: kvpress.PrefillDecodingPress(kvpress.KnormPress(0.5),
                                             kvpress.DecodingPress(kvpress.KeyDiffPress(), 4, 140)),
        lambda: kvcp.PrefillDecodingPress(kvcp.KnormPress(0.5), kvcp.DecodingPress(kvcp.KeyDiffPress(), 4, 140))),
    "CAM(KeyDiff)": (lambda: kvpress.CAMPress(kvpress.KeyDiffPress(), compression_interval=4, target_size=260,
                                              merge_budget=8),
                     lambda: kvcp.CAMPress(kvcp.KeyDiffPress(), compression_interval=4, target_size=260, merge_budget=8,
                                           uniforms=HALF)),
}


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def setup(request):
    torch.set_num_threads(1)
    tok = word_tokenizer()
    model = tiny_model(request.param)
    pipe = transformers.pipeline("kv-press-text-generation", model=model, tokenizer=tok, device="cpu")
    words = [f"w{i}" for i in np.random.default_rng(11).permutation(VOCAB_WORDS)]
    context = " " + " ".join(words[:300])
    question = " ".join(words[300:312])
    return pipe, context, question


@pytest.fixture
def half_bernoulli(monkeypatch):
    monkeypatch.setattr(torch, "bernoulli", lambda p: (p > 0.5).to(p.dtype))


def run(pipe, context, question, press):
    cache = transformers.DynamicCache()
    answer = pipe(context, question=question, press=press, max_new_tokens=24, cache=cache)["answer"]
    return answer, cache


@pytest.mark.parametrize("name", list(PRESSES))
def test_decoding_answers_and_caches_equal_kvpress(setup, half_bernoulli, name):
    pipe, context, question = setup
    theirs, ours = PRESSES[name]
    expected, ref = run(pipe, context, question, theirs())
    press = ours()
    got, cache = run(pipe, context, question, press)
    assert got == expected
    assert len(expected) > 0
    for layer, (a, b) in enumerate(zip(ref.layers, cache.layers)):
        assert a.keys.shape == b.keys.shape, f"layer {layer}"
        for bb in range(a.keys.shape[0]):
            for h in range(a.keys.shape[1]):
                # The same entries, in another order (kvpress keeps score order, kvcompress position order), and
                # the tokens generated after a compression differ in the last bits (attention summed in another
                # order): each of kvpress's keys has its nearest kvcompress key within 1e-4, one to one.
                ka, kb = a.keys[bb, h].double(), b.keys[bb, h].double()
                dist = torch.cdist(ka, kb)
                match = dist.argmin(dim=1)
                assert sorted(match.tolist()) == list(range(kb.shape[0])), f"layer {layer}, head {h}"
                scale = ka.abs().max()
                assert float(dist.min(dim=1).values.max()) <= 1e-4 * scale, f"layer {layer}, head {h}"
                torch.testing.assert_close(b.values[bb, h].double()[match], a.values[bb, h].double(), rtol=1e-4,
                                           atol=1e-4)
    # The pipeline left its context: the press's state is reset, its buffers kept.
    native = press.press.native
    assert native.has_state and native.steps(0) == 0 and native.buffered(0) == 0


def test_decoding_presses_are_kvpress_decoding_presses():
    """kvpress's pipeline decides by type which presses it runs while decoding, and rejects several questions."""
    from kvpress.presses.decoding_press import DecodingPress
    from kvpress.presses.prefill_decoding_press import PrefillDecodingPress

    assert isinstance(kvcp.DecodingPress(kvcp.KnormPress()), DecodingPress)
    assert isinstance(kvcp.CAMPress(kvcp.KnormPress()), DecodingPress)
    assert isinstance(kvcp.PrefillDecodingPress(kvcp.KnormPress(0.5), None), PrefillDecodingPress)
    assert not isinstance(kvcp.PrefillDecodingPress(), DecodingPress)
    assert "DecodingPress" in repr(kvcp.DecodingPress(kvcp.KnormPress(), 8, 64))


def test_drop_in_refuses_what_hf_cache_cannot_hold(setup):
    """HF's cache keeps one length per layer: a prefilling press with per-head budgets (AdaKV) is refused, naming
    the lengths, and so is a QuantizedCache (its entries are not tensors compressed in place)."""
    pipe, context, question = setup
    press = kvcp.PrefillDecodingPress(kvcp.AdaKVPress(kvcp.KnormPress(0.5)), kvcp.DecodingPress(kvcp.KnormPress(), 4, 64))
    with pytest.raises(ValueError, match="the press left rows of different lengths"):
        run(pipe, context, question, press)
    quantized = transformers.QuantizedCache.__new__(transformers.QuantizedCache)
    with pytest.raises(ValueError, match="a QuantizedCache is not supported"):
        kvcp.DecodingPress(kvcp.KnormPress()).forward_hook(None, [], {"past_key_values": quantized}, (None, None))
