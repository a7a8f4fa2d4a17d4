"""The kvpress drop-in on a real pretrained model: SmolLM2-135M-Instruct (GGUF, fetched by
tools/models/fetch_smollm2.sh; loaded by transformers with gguf_file=, float32, sdpa). kvpress's
pipeline answers a retrieval question over a list of facts; the answers with the wrapped presses must
equal the answers with kvpress's own presses. Skipped when kvpress or the model file is missing."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
kvpress = pytest.importorskip("kvpress")
transformers = pytest.importorskip("transformers")

import kvcompress.kvpress as kvcp  # noqa: E402

GGUF = Path(os.environ.get("KVC_SMOLLM2_GGUF") or
            Path(os.environ.get("KVC_MODEL_CACHE") or Path.home() / ".cache" / "kvcompress" / "models")
            / "SmolLM2-135M-Instruct.Q4_1.gguf")
pytestmark = pytest.mark.skipif(not GGUF.exists(), reason=f"{GGUF} is missing (tools/models/fetch_smollm2.sh)")

PRESSES = {
    "ExpectedAttention": (lambda r: kvpress.ExpectedAttentionPress(r), lambda r: kvcp.ExpectedAttentionPress(r)),
    "SnapKV": (lambda r: kvpress.SnapKVPress(r), lambda r: kvcp.SnapKVPress(r)),
    "TOVA": (lambda r: kvpress.TOVAPress(r), lambda r: kvcp.TOVAPress(r)),
    "Knorm": (lambda r: kvpress.KnormPress(r), lambda r: kvcp.KnormPress(r)),
    "StreamingLLM": (lambda r: kvpress.StreamingLLMPress(r), lambda r: kvcp.StreamingLLMPress(r)),
    "AdaKV(ExpectedAttention)": (lambda r: kvpress.AdaKVPress(kvpress.ExpectedAttentionPress(r)),
                                 lambda r: kvcp.AdaKVPress(kvcp.ExpectedAttentionPress(r))),
}
NAMES = ["Alice", "Bruno", "Chen", "Dalia", "Emeka", "Farah", "Gustav", "Hana", "Ivan", "Jonas", "Keiko", "Luis",
         "Mira", "Nadia", "Oskar", "Priya", "Quinn", "Rosa", "Sven", "Tomas"]


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(2)
    tok = transformers.AutoTokenizer.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name,
                                                              dtype=torch.float32, attn_implementation="sdpa")
    return transformers.pipeline("kv-press-text-generation", model=model.eval(), tokenizer=tok, device="cpu")


CONTEXT = " ".join(f"{name}'s locker code is {1000 + 379 * i % 9000}." for i, name in enumerate(NAMES))
QUESTION = "What is Mira's locker code?"


# The test command runs every press at 0.5 (about a minute on 2 cores); KVC_PYTHON_FULL=1 adds 0.25 and
# 0.75, which the tiny models cover in the test command already (test_kvpress_dropin.py).
RATIOS = [0.25, 0.5, 0.75] if os.environ.get("KVC_PYTHON_FULL") == "1" else [0.5]


@pytest.mark.parametrize("name", list(PRESSES))
@pytest.mark.parametrize("ratio", RATIOS)
def test_smollm2_answers_equal_kvpress(pipe, name, ratio):
    theirs, ours = PRESSES[name]
    expected = pipe(CONTEXT, question=QUESTION, press=theirs(ratio), max_new_tokens=12)["answer"]
    got = pipe(CONTEXT, question=QUESTION, press=ours(ratio), max_new_tokens=12)["answer"]
    assert got == expected
