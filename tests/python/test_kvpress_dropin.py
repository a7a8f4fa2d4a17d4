"""kvcompress.kvpress runs kvpress's own pipeline on kvcompress's presses: on tiny random-weight
Llama (GQA, llama3 RoPE) and Qwen3 (q_norm/k_norm) models, the pipeline's answers with the wrapped
press equal the answers with kvpress's own press, and so do the compressed caches (kept rows per
head, or AdaKV's masked slots). kvpress is optional: without it these tests are skipped."""

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
kvpress = pytest.importorskip("kvpress")
transformers = pytest.importorskip("transformers")

import kvcompress.kvpress as kvcp  # noqa: E402

RATIOS = [0.25, 0.5, 0.75]
PRESSES = {
    "ExpectedAttention": (lambda r: kvpress.ExpectedAttentionPress(r), lambda r: kvcp.ExpectedAttentionPress(r)),
    "SnapKV": (lambda r: kvpress.SnapKVPress(r), lambda r: kvcp.SnapKVPress(r)),
    "TOVA": (lambda r: kvpress.TOVAPress(r), lambda r: kvcp.TOVAPress(r)),
    "Knorm": (lambda r: kvpress.KnormPress(r), lambda r: kvcp.KnormPress(r)),
    "StreamingLLM": (lambda r: kvpress.StreamingLLMPress(r), lambda r: kvcp.StreamingLLMPress(r)),
    "AdaKV(ExpectedAttention)": (lambda r: kvpress.AdaKVPress(kvpress.ExpectedAttentionPress(r)),
                                 lambda r: kvcp.AdaKVPress(kvcp.ExpectedAttentionPress(r))),
}


VOCAB_WORDS = 1000


def word_tokenizer():
    """A word-level tokenizer over VOCAB_WORDS made-up words: the contexts below use each word once,
    so no two layer-0 keys have the same norm (RoPE keeps norms; a repeated token would tie Knorm's
    scores, which torch.topk and kvcompress break differently)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {"<s>": 0, "</s>": 1, "<unk>": 2, **{f"w{i}": i + 3 for i in range(VOCAB_WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece()  # joins the words with spaces
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                unk_token="<unk>")


def tiny_model(kind):
    common = dict(vocab_size=VOCAB_WORDS + 3, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=32, max_position_embeddings=1024, initializer_range=0.2,
                  bos_token_id=0, eos_token_id=1, attn_implementation="sdpa")
    torch.manual_seed(0)
    if kind == "llama":
        config = transformers.LlamaConfig(rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0,
                                                           "factor": 8.0, "low_freq_factor": 1.0,
                                                           "high_freq_factor": 4.0,
                                                           "original_max_position_embeddings": 128}, **common)
        model = transformers.LlamaForCausalLM(config)
    else:
        config = transformers.Qwen3Config(rope_parameters={"rope_type": "default", "rope_theta": 1e6}, **common)
        model = transformers.Qwen3ForCausalLM(config)
        with torch.no_grad():  # random q_norm/k_norm weights, so the norms matter
            for layer in model.model.layers:
                layer.self_attn.q_norm.weight.normal_(1.6, 0.5)
                layer.self_attn.k_norm.weight.normal_(1.6, 0.5)
    return model.eval()


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def setup(request):
    torch.set_num_threads(1)
    tok = word_tokenizer()
    model = tiny_model(request.param)
    pipe = transformers.pipeline("kv-press-text-generation", model=model, tokenizer=tok, device="cpu")
    words = [f"w{i}" for i in np.random.default_rng(7).permutation(VOCAB_WORDS)]
    context = " " + " ".join(words[:300])  # the pipeline prepends "<s>" without a space
    question = " ".join(words[300:312])
    return model, tok, pipe, context, question


def answer(pipe, context, question, press):
    return pipe(context, question=question, press=press, max_new_tokens=16)["answer"]


@pytest.mark.parametrize("name", list(PRESSES))
@pytest.mark.parametrize("ratio", RATIOS)
def test_pipeline_answers_equal_kvpress(setup, name, ratio):
    _, _, pipe, context, question = setup
    theirs, ours = PRESSES[name]
    expected = answer(pipe, context, question, theirs(ratio))
    got = answer(pipe, context, question, ours(ratio))
    assert got == expected
    assert len(expected) > 0


def prefill_cache(model, tok, context, press):
    ids = tok.encode(tok.bos_token + " " + context, return_tensors="pt", add_special_tokens=False)
    cache = transformers.DynamicCache()
    with torch.no_grad(), press(model):
        model.model(ids, past_key_values=cache)
    masks = [getattr(layer.self_attn, "masked_key_indices", None) for layer in model.model.layers]
    for layer in model.model.layers:
        layer.self_attn.masked_key_indices = None
    return cache, masks, ids.shape[1]


@pytest.mark.parametrize("name", list(PRESSES))
def test_compressed_cache_equals_kvpress(setup, name):
    model, tok, _, context, _ = setup
    theirs, ours = PRESSES[name]
    ref, ref_masks, n = prefill_cache(model, tok, context, theirs(0.5))
    got, got_masks, _ = prefill_cache(model, tok, context, ours(0.5))
    for layer, (a, b) in enumerate(zip(ref.layers, got.layers)):
        if ref_masks[layer] is not None:
            # AdaKV: kvpress keeps every slot and masks the pruned ones; ours compacts each head and masks the
            # slots past its length. Same number of live entries per head, and the same live rows.
            for bb in range(a.keys.shape[0]):
                for h in range(a.keys.shape[1]):
                    pruned = set(ref_masks[layer][2][(ref_masks[layer][0] == bb) & (ref_masks[layer][1] == h)].tolist())
                    live_ref = a.keys[bb, h, [s for s in range(n) if s not in pruned]]
                    dead = set(got_masks[layer][2][(got_masks[layer][0] == bb) & (got_masks[layer][1] == h)].tolist())
                    live_got = b.keys[bb, h, [s for s in range(b.keys.shape[2]) if s not in dead]]
                    assert sorted(map(tuple, live_ref.tolist())) == sorted(map(tuple, live_got.tolist()))
            continue
        assert a.keys.shape == b.keys.shape
        for bb in range(a.keys.shape[0]):
            for h in range(a.keys.shape[1]):
                assert sorted(map(tuple, a.keys[bb, h].tolist())) == sorted(map(tuple, b.keys[bb, h].tolist()))
                assert sorted(map(tuple, a.values[bb, h].tolist())) == sorted(map(tuple, b.values[bb, h].tolist()))
