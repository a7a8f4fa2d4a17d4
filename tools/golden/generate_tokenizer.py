#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Golden fixtures for the engine's tokenizer (examples/engine/kvc_engine/tokenizer/), from HF `tokenizers`.

For each tokenizer below, a set of strings (fixed seed: English, other scripts, digits and long numbers, whitespace
runs, tabs and newlines, emoji, combining marks, CJK, code, special tokens inside text) and the ids the reference
gives, written as JSON lines to tests/golden/tokenizer/<name>.jsonl (`{"s": text, "ids": [...]}`, one per line).

* smollm2 — the tokenizer of SmolLM2-135M-Instruct, built with HF tokenizers from its GGUF's vocabulary and merges
  (read with the `gguf` package): Digits(individual_digits=True) then ByteLevel(add_prefix_space=False,
  use_regex=True), byte-level BPE, the 17 control tokens as special added tokens, no BOS. This is SmolLM2's own
  tokenizer.json; transformers' GGUF loader gets this model wrong (it adds `<|im_start|>` as BOS and takes another
  EOS), so it is not used. The C++ test reads the same GGUF.
* gpt2 — the same vocabulary and merges under GPT-2's pre-tokenizer (ByteLevel with its regex, no Digits step).
* llama3 / qwen2 — small byte-level BPE vocabularies (2,000 tokens) trained here with HF tokenizers' BpeTrainer on
  the strings below, under Llama 3's and Qwen2's Split patterns followed by ByteLevel(use_regex=False); Llama 3's
  BPE model has ignore_merges and Qwen2's tokenizer an NFC normaliser, as their tokenizer.json files do. Written
  to tiny GGUF files (no tensors) with the `gguf` package's GGUFWriter (tokenizer.ggml.pre = llama-bpe / qwen2).
* spm — a SentencePiece BPE model (1,500 pieces, byte fallback, identity normalisation, dummy prefix, as Llama 2's)
  trained with the `sentencepiece` package; expected ids from sentencepiece itself, and the same strings through
  HF tokenizers' BPE built as transformers converts a SentencePiece model (merges by piece score, byte fallback,
  Prepend("▁") + Replace(" ", "▁") normaliser) — the script asserts the two agree. Written to a tiny GGUF
  (tokenizer.ggml.model = llama). Its strings include `<s>` inside text, which HF matches as a special token.

Also tests/golden/tokenizer/chat_templates.json: conversations rendered by transformers' `apply_chat_template` with
the chat template the SmolLM2 GGUF carries and with ChatML (OpenHermes 2.5), Llama 3 (Meta-Llama-3-8B-Instruct),
Mistral-7B-Instruct-v0.1 and Mixtral-8x7B-Instruct-v0.1 templates (their Jinja source is below), including the
conversations those templates refuse.

Run: python tools/golden/generate_tokenizer.py --smollm2-gguf PATH/SmolLM2-135M-Instruct.Q4_1.gguf
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import random
import sys
import tempfile
import unicodedata
from pathlib import Path

import gguf
import sentencepiece as spm
import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

REPO = Path(__file__).resolve().parents[2]
SEED = 20261206

# The patterns of the models' tokenizer.json files (Split pre-tokenizer, behaviour "isolated").
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                  r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+")

# ---------------------------------------------------------------------------------------------------------------
# Strings

WORDS = ("the of and to in is was for that with as on by at from his her it an were which are this be or has had "
         "not but also first one their after new who they two its she been other when there all during into school "
         "time may years more most only over city some world would where later up such used many can state about "
         "national out known university united then made however under while team government cache key value "
         "attention compress model token press ratio layer head query pretrained language window memory tensor "
         "I'm you're we've they'll she'd it's don't can't won't isn't THE API HTTP JSON GPU CPU SmolLM ChatML "
         "O'Brien rock'n'roll naïve café résumé façade coöperate Zürich São Paulo Kraków Ærø").split()
SCRIPTS = ["Привет, мир! Как дела?", "Съешь же ещё этих мягких французских булок", "Γειά σου Κόσμε, καλημέρα",
           "مرحبا بالعالم، كيف حالك؟", "שלום עולם", "नमस्ते दुनिया, आप कैसे हैं?", "你好，世界！今天天气很好。",
           "こんにちは世界、カタカナとひらがな。", "안녕하세요 세계, 반갑습니다", "สวัสดีชาวโลก", "Xin chào thế giới",
           "Selamat pagi dunia", "Γ̇ε̃ι̂ά", "ḁ̷̝̈́b̸c̴", "ﬁﬂ ﬀ Å Ω ℃ №", "Ꮳꮃꭹ ᚠᛇᚻ ᠮᠣᠩᠭᠣᠯ", "𝐀𝐁𝐂 𝔄𝔅 𝒜",
           "ⅰⅱⅲ Ⅻ ½ ¼ ² ³ ₁₂ ٠١٢٣٤٥٦٧٨٩ ०१२३ １２３ ൧൨"]
EMOJI = ["😀", "😂", "🤖", "🚀", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷", "🇯🇵", "❤️", "☕", "🧪", "✅", "🔥", "👩🏿‍💻", "🏳️‍🌈"]
SPACES = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\t\t", "\u00a0", "\u3000", "\u2003", "\u2009",
          "\u200b", "\u2028", "\u0085", "\ufeff", "\u202f", "\u205f", "\u180e", "\u000b", "\u000c", "\u001c", "\u001f"]
CODE = ["def f(x):\n    return x ** 2 + 1\n", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
        '{"key": [1, 2, 3], "nested": {"a": null}}', "#include <vector>\nint main() { return 0; }",
        "SELECT * FROM users WHERE id = 42;", "x = [i*i for i in range(10)]  # squares",
        "if (a && b || !c) { throw std::runtime_error(\"bad\"); }", "<div class=\"x\">&amp;</div>",
        "    \n        indented\n\t\tmixed", "a_b-c.d/e\\f|g~h`i", "std::vector<std::pair<int,float>> v;"]
SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<repo_name>", "<file_sep>", "<|im_start", "im_end|>",
            "<|im_end|><|im_end|>", "<|im_start|>user\n", "<s>", "</s>", "<unk>"]
APOSTROPHES = ["'s", "'S", "'t", "'T", "'re", "'RE", "'ve", "'m", "'ll", "'LL", "'d", "'D", "''", "'", "'ſ", "’s"]
# Code-point ranges of letters, marks, numbers and symbols assigned before Unicode 14 (the version of PCRE2 10.42's
# tables and of this Python's unicodedata), so that every side classifies them alike.
RANGES = [(0x20, 0x7E), (0xA0, 0x24F), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x5FF),
          (0x600, 0x6FF), (0x900, 0x97F), (0xE00, 0xE7F), (0x1100, 0x11FF), (0x1E00, 0x1EFF), (0x2000, 0x206F),
          (0x2070, 0x209F), (0x20A0, 0x20BF), (0x2100, 0x218B), (0x2190, 0x23FF), (0x2460, 0x24FF), (0x2500, 0x27BF),
          (0x3000, 0x303F), (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xFF00, 0xFFEF),
          (0x1D400, 0x1D7FF), (0x1F300, 0x1F64F), (0x1F900, 0x1F9FF), (0x20000, 0x2A6DF)]


def random_char(rng: random.Random) -> str:
    while True:
        lo, hi = rng.choice(RANGES)
        c = chr(rng.randint(lo, hi))
        if c.isprintable() or c in "\t\n" or c.isspace():
            return c


def number(rng: random.Random) -> str:
    kind = rng.randrange(6)
    if kind == 0:
        return str(rng.randrange(10 ** rng.randint(1, 30)))
    if kind == 1:
        return f"{rng.uniform(-1e6, 1e6):.{rng.randint(0, 6)}f}"
    if kind == 2:
        return f"{rng.randrange(10 ** 9):,}"
    if kind == 3:
        return f"{rng.randint(1900, 2100)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    if kind == 4:
        return f"{rng.random():.3e}"
    digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 12)))
    return digits + rng.choice(["%", "px", "kg", "th", ""])


def sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 14))]
    if rng.random() < 0.5:
        words[0] = words[0].capitalize()
    return " ".join(words) + rng.choice([".", "!", "?", ",", ";", ":", "...", ""])


def fragment(rng: random.Random, specials: bool) -> str:
    kind = rng.randrange(10 if specials else 9)
    if kind == 0:
        return sentence(rng)
    if kind == 1:
        return rng.choice(SCRIPTS)
    if kind == 2:
        return number(rng)
    if kind == 3:
        return "".join(rng.choice(SPACES) for _ in range(rng.randint(1, 4)))
    if kind == 4:
        return rng.choice(EMOJI) * rng.randint(1, 2)
    if kind == 5:
        return rng.choice(CODE)
    if kind == 6:
        return "".join(random_char(rng) for _ in range(rng.randint(1, 8)))
    if kind == 7:
        return rng.choice(WORDS) + rng.choice(APOSTROPHES)
    if kind == 8:
        base = rng.choice("aeiouAEIOUnc")
        return base + "".join(chr(rng.randint(0x300, 0x36F)) for _ in range(rng.randint(1, 3)))
    return rng.choice(SPECIALS)


def make_strings(count: int, seed: int, specials: bool = True) -> list[str]:
    rng = random.Random(seed)
    out = ["", " ", "  ", "\n", "a", "0", "1234567890", "Hello world", "Hello  world", " Hello", "Hello ", "\t\tx",
           "x \n y", "a\u00a0b", "<|im_start|>", "<|im_start|>user\nHi<|im_end|>\n"]
    while len(out) < count:
        joiner = rng.choice(["", " ", " ", "\n", ""])
        out.append(joiner.join(fragment(rng, specials) for _ in range(rng.randint(1, 4))))
    return out[:count]


# ---------------------------------------------------------------------------------------------------------------
# Reference tokenizers


def gguf_tokenizer_fields(path: Path) -> dict:
    r = gguf.GGUFReader(str(path))
    f = {k: v.contents() for k, v in r.fields.items() if k.startswith("tokenizer.")}
    return f


def byte_level_from_gguf(fields: dict, pre_tokenizer) -> Tokenizer:
    tokens = fields["tokenizer.ggml.tokens"]
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ")) for m in fields["tokenizer.ggml.merges"]]
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tk.pre_tokenizer = pre_tokenizer
    tk.decoder = decoders.ByteLevel()
    types = fields["tokenizer.ggml.token_type"]
    tk.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                           for i in range(len(tokens)) if types[i] in (2, 3, 4)])
    return tk


def smollm2_pre():
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])


def gpt2_pre():
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def split_pre(pattern: str):
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


SPECIAL_BPE = ["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>", "<|eot_id|>"]


def train_byte_level(pattern: str, corpus: list[str], ignore_merges: bool,
                     nfc: bool) -> tuple[Tokenizer, list[str], list[str]]:
    tk = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    if nfc:
        tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = split_pre(pattern)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2000, min_frequency=2, special_tokens=SPECIAL_BPE,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(corpus, trainer=trainer)
    data = json.loads(tk.to_str())
    vocab = data["model"]["vocab"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    merges = [" ".join(m) if isinstance(m, list) else m for m in data["model"]["merges"]]
    return tk, tokens, merges


def write_gguf(path: Path, model: str, pre: str, tokens: list[str], types: list[int], merges: list[str] | None,
               scores: list[float] | None, bos: int, eos: int, unk: int | None, add_bos: bool,
               add_space_prefix: bool | None, template: str | None) -> None:
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model(model)
    if pre:
        w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    if scores is not None:
        w.add_token_scores(scores)
    if merges is not None:
        w.add_token_merges(merges)
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    if unk is not None:
        w.add_unk_token_id(unk)
    w.add_add_bos_token(add_bos)
    if add_space_prefix is not None:
        w.add_add_space_prefix(add_space_prefix)
    if template is not None:
        w.add_chat_template(template)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def train_spm(corpus: list[str], workdir: Path) -> spm.SentencePieceProcessor:
    text = workdir / "corpus.txt"
    text.write_text("\n".join(s.replace("\n", " ") for s in corpus), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(workdir / "spm"), model_type="bpe",
                                   vocab_size=1500, byte_fallback=True, normalization_rule_name="identity",
                                   add_dummy_prefix=True, remove_extra_whitespaces=False, split_digits=False,
                                   character_coverage=1.0, max_sentencepiece_length=16, num_threads=1,
                                   minloglevel=2, seed_sentencepiece_size=100000)
    return spm.SentencePieceProcessor(model_file=str(workdir / "spm.model"))


def spm_as_hf(sp: spm.SentencePieceProcessor) -> Tokenizer:
    """HF tokenizers' BPE for a SentencePiece BPE model, built as transformers' converter builds it: every pair of
    pieces whose concatenation is a piece becomes a merge, ranked by the joined piece's score."""
    n = sp.get_piece_size()
    vocab = {sp.id_to_piece(i): i for i in range(n)}
    mergeable = {sp.id_to_piece(i): i for i in range(n) if sp.is_unknown(i) is False and not sp.is_control(i)
                 and not sp.is_byte(i)}
    merges = []
    for piece, pid in mergeable.items():
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in mergeable and right in mergeable:
                merges.append((sp.get_score(pid), mergeable[left], mergeable[right], left, right))
    merges.sort(key=lambda m: (-m[0], m[1], m[2]))
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[(m[3], m[4]) for m in merges], unk_token="<unk>",
                              fuse_unk=True, byte_fallback=True))
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    tk.add_special_tokens([AddedToken(sp.id_to_piece(i), special=True, normalized=False)
                           for i in range(n) if sp.is_control(i) or sp.is_unknown(i)])
    return tk


# ---------------------------------------------------------------------------------------------------------------
# Output


def write_jsonl(path: Path, strings: list[str], ids: list[list[int]], decoded=lambda s: s) -> None:
    """One line per string: {"s": text, "ids": [...]}, plus "d": what decoding the ids gives where the model
    changes the text (Qwen2's NFC, SentencePiece's U+2581 read as a space)."""
    with path.open("w", encoding="utf-8") as f:
        for s, i in zip(strings, ids):
            line = {"s": s, "ids": i}
            if decoded(s) != s:
                line["d"] = decoded(s)
            f.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")
    print(f"{path.relative_to(REPO)}: {len(strings)} strings, {sum(map(len, ids))} ids, {path.stat().st_size} bytes")


def encode_all(tk: Tokenizer, strings: list[str]) -> list[list[int]]:
    return [e.ids for e in tk.encode_batch(strings, add_special_tokens=False)]


# Chat templates as their models ship them (Jinja source), besides the one the SmolLM2 GGUF carries.
CHATML_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
                   "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                   "{% endif %}")  # teknium/OpenHermes-2.5-Mistral-7B
LLAMA3_TEMPLATE = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
                   "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + "
                   "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
                   "{{ content }}{% endfor %}{% if add_generation_prompt %}"
                   "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")  # Meta-Llama-3-8B-Instruct
_MISTRAL = ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
            "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
            "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
            "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token@@ }}{% else %}"
            "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")
MISTRAL_V01_TEMPLATE = _MISTRAL.replace("@@", " + ' '")  # mistralai/Mistral-7B-Instruct-v0.1
MIXTRAL_TEMPLATE = _MISTRAL.replace("@@", "")  # mistralai/Mixtral-8x7B-Instruct-v0.1

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "And 3+3?"}],
    [{"role": "system", "content": "Answer in French.\nBe brief."}, {"role": "user", "content": "Hello"},
     {"role": "assistant", "content": "Bonjour"}],
    [{"role": "user", "content": "  spaces and\ttabs  \n"},
     {"role": "assistant", "content": "   I am an assistant   "}],
    [{"role": "user", "content": ""}],
    [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
]


def chat_fixture(smollm2_template: str, out: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    formats = []
    for name, template, bos, eos in (("smollm2", smollm2_template, "<|im_start|>", "<|im_end|>"),
                                     ("chatml", CHATML_TEMPLATE, "<s>", "</s>"),
                                     ("llama3", LLAMA3_TEMPLATE, "<|begin_of_text|>", "<|eot_id|>"),
                                     ("mistral-v0.1", MISTRAL_V01_TEMPLATE, "<s>", "</s>"),
                                     ("mixtral", MIXTRAL_TEMPLATE, "<s>", "</s>")):
        tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()), bos_token=bos, eos_token=eos)
        tok.chat_template = template
        cases = []
        for messages in CONVERSATIONS:
            for gen in (False, True):
                try:
                    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
                    cases.append({"messages": messages, "add_generation_prompt": gen, "text": text})
                except Exception as e:  # the template refuses the conversation (raise_exception)
                    cases.append({"messages": messages, "add_generation_prompt": gen, "error": str(e)})
        formats.append({"name": name, "template": template, "bos": bos, "eos": eos, "cases": cases})
    out.write_text(json.dumps({"formats": formats}, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"{out.relative_to(REPO)}: {len(formats)} templates, {sum(len(f['cases']) for f in formats)} conversations")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smollm2-gguf", type=Path, required=True, help="SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--out", type=Path, default=REPO / "tests/golden/tokenizer")
    ap.add_argument("--count", type=int, default=10000, help="strings for the SmolLM2 tokenizer")
    ap.add_argument("--count-small", type=int, default=2000, help="strings for each of the other tokenizers")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"tokenizers {tokenizers.__version__}, gguf {importlib.metadata.version('gguf')}, "
          f"sentencepiece {spm.__version__}")

    fields = gguf_tokenizer_fields(args.smollm2_gguf)
    strings = make_strings(args.count, SEED)
    smollm2 = byte_level_from_gguf(fields, smollm2_pre())
    write_jsonl(args.out / "smollm2.jsonl", strings, encode_all(smollm2, strings))
    small = make_strings(args.count_small, SEED + 1)
    write_jsonl(args.out / "gpt2.jsonl", small, encode_all(byte_level_from_gguf(fields, gpt2_pre()), small))
    chat_fixture(fields["tokenizer.chat_template"], args.out / "chat_templates.json")

    corpus = make_strings(20000, SEED + 2, specials=False)
    for name, pattern, pre, ignore, nfc in (("llama3", LLAMA3_PATTERN, "llama-bpe", True, False),
                                            ("qwen2", QWEN2_PATTERN, "qwen2", False, True)):
        tk, tokens, merges = train_byte_level(pattern, corpus, ignore, nfc)
        types = [3 if t in SPECIAL_BPE else 1 for t in tokens]
        write_gguf(args.out / f"{name}.gguf", "gpt2", pre, tokens, types, merges, None,
                   bos=tokens.index(SPECIAL_BPE[0]), eos=tokens.index(SPECIAL_BPE[1]), unk=None, add_bos=False,
                   add_space_prefix=None, template=None)
        strings_v = make_strings(args.count_small, SEED + 3)
        write_jsonl(args.out / f"{name}.jsonl", strings_v, encode_all(tk, strings_v),
                    (lambda s: unicodedata.normalize("NFC", s)) if nfc else (lambda s: s))

    # SentencePiece keeps every character of its corpus as a piece: train on English, code and the sample
    # sentences of other scripts only, so that the random characters of the test strings go through byte fallback.
    rng = random.Random(SEED + 5)
    spm_corpus = [sentence(rng) for _ in range(20000)] + [number(rng) for _ in range(2000)] + SCRIPTS + CODE
    with tempfile.TemporaryDirectory() as tmp:
        sp = train_spm(spm_corpus, Path(tmp))
    n = sp.get_piece_size()
    tokens = [sp.id_to_piece(i) for i in range(n)]
    types = [6 if sp.is_byte(i) else 3 if sp.is_control(i) else 2 if sp.is_unknown(i) else 5 if sp.is_unused(i) else 1
             for i in range(n)]
    write_gguf(args.out / "spm.gguf", "llama", "default", tokens, types, None, [sp.get_score(i) for i in range(n)],
               bos=sp.bos_id(), eos=sp.eos_id(), unk=sp.unk_id(), add_bos=False, add_space_prefix=True, template=None)
    strings_spm = make_strings(args.count_small, SEED + 4)
    hf = spm_as_hf(sp)
    expected = []
    disagree = 0
    for s in strings_spm:
        hf_ids = hf.encode(s, add_special_tokens=False).ids
        if not any(t in s for t in ("<s>", "</s>", "<unk>")):
            sp_ids = sp.encode(s)
            if sp_ids != hf_ids:
                disagree += 1
                print(f"sentencepiece and HF disagree on {s!r}: {sp_ids} vs {hf_ids}", file=sys.stderr)
        expected.append(hf_ids)
    print(f"spm: sentencepiece and HF tokenizers disagree on {disagree} of {len(strings_spm)} strings")
    write_jsonl(args.out / "spm.jsonl", strings_spm, expected, lambda s: s.replace("▁", " "))
    return 0 if disagree == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
