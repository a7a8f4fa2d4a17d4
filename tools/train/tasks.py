"""Synthetic long-context tasks in the spirit of RULER, on a word-level vocabulary.

Every key and every value is one token, and a needle puts its value right after its key, so that the
question (which ends with the key) is answered by the induction pattern "find the earlier occurrence of
this token, copy the one after it": associative recall, which small attention models learn quickly. Filler is plain English text (the licence texts every Debian system ships in
/usr/share/common-licenses), tokenised by words. An example is a list of token ids plus the positions
of its answer tokens; the model is trained on every next token, and evaluated on the answers only.

Tasks:
  niah_single       one needle "the magic number for K V ." in filler; question "<question> K" → V
  niah_multikey     four needles with different keys; the question asks one of them
  niah_multivalue   one key with three values; the question asks all three, in order
  variable_tracking chains "X = V ." "Y = X ." …; the question "<question> V" asks for the variables
                    holding V, in chain order
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

CORPUS_DIR = Path("/usr/share/common-licenses")
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>", "<question>", "<answer>", "the", "magic", "number", "for", "is",
            ".", "?", "=", ",", "and"]
N_KEYS = 128
N_VALUES = 128
N_VARS = 64
TASKS = ["niah_single", "niah_multikey", "niah_multivalue", "variable_tracking"]


def corpus_words() -> list[str]:
    """The filler text as one word stream (licence texts, in a fixed order)."""
    words: list[str] = []
    for path in sorted(p for p in CORPUS_DIR.iterdir() if p.is_file() and not p.is_symlink()):
        text = path.read_text(encoding="utf-8", errors="replace").lower()
        words += re.findall(r"[a-z]+|[.,;:()?!\"']", text)
    return words


@dataclass
class Vocab:
    tokens: list[str]
    index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        self.index = {t: i for i, t in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    def id(self, token: str) -> int:
        return self.index.get(token, self.index["<unk>"])

    def key(self, i: int) -> int:
        return self.index[f"<k{i}>"]

    def value(self, i: int) -> int:
        return self.index[f"<v{i}>"]

    def var(self, i: int) -> int:
        return self.index[f"<x{i}>"]

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"tokens": self.tokens}, indent=0) + "\n")


def build_vocab(words: list[str], min_count: int = 2) -> Vocab:
    counts: dict[str, int] = {}
    for w in words:
        counts[w] = counts.get(w, 0) + 1
    text = sorted(w for w, c in counts.items() if c >= min_count and w not in SPECIALS)
    tokens = SPECIALS + [f"<k{i}>" for i in range(N_KEYS)] + [f"<v{i}>" for i in range(N_VALUES)] + \
        [f"<x{i}>" for i in range(N_VARS)] + text
    return Vocab(tokens)


@dataclass
class Example:
    task: str
    tokens: list[int]        # the whole sequence, prompt then answer then <eos>
    answer_start: int        # tokens[answer_start:answer_start + len(answer)] is the answer
    answer: list[int]

    def to_json(self) -> dict:
        prompt = self.tokens[:self.answer_start]
        return {"task": self.task, "prompt": prompt, "answer": self.answer}


class Generator:
    """Draws examples of a given total length from a seeded stream."""

    def __init__(self, vocab: Vocab, words: list[str], seed: int):
        self.vocab = vocab
        self.filler_ids = [vocab.id(w) for w in words]
        self.rng = random.Random(seed)

    def filler(self, n: int) -> list[int]:
        start = self.rng.randrange(0, len(self.filler_ids) - n - 1) if n < len(self.filler_ids) - 1 else 0
        out = self.filler_ids[start:start + n]
        while len(out) < n:
            out += self.filler_ids[:n - len(out)]
        return out

    def statement(self, key: int, value: int) -> list[int]:
        v = self.vocab
        return [v.id("the"), v.id("magic"), v.id("number"), v.id("for"), key, value, v.id(".")]

    def embed(self, pieces: list[list[int]], length: int, tail: list[int]) -> list[int]:
        """Scatters the pieces, in order, at random points of `length` filler tokens."""
        budget = length - 1 - len(tail) - sum(len(p) for p in pieces)
        if budget < 0:
            raise ValueError(f"length {length} too short for the pieces")
        cuts = sorted(self.rng.randint(0, budget) for _ in pieces)
        body = self.filler(budget)
        out = [self.vocab.id("<bos>")]
        last = 0
        for cut, piece in zip(cuts, pieces):
            out += body[last:cut] + piece
            last = cut
        return out + body[last:] + tail

    def example(self, task: str, length: int) -> Example:
        v, r = self.vocab, self.rng
        q = v.id("<question>")
        if task == "niah_single":
            key, value = v.key(r.randrange(N_KEYS)), v.value(r.randrange(N_VALUES))
            pieces, question, answer = [self.statement(key, value)], [q, key], [value]
        elif task == "niah_multikey":
            keys = r.sample(range(N_KEYS), 4)
            values = [v.value(r.randrange(N_VALUES)) for _ in keys]
            pieces = [self.statement(v.key(k), val) for k, val in zip(keys, values)]
            pick = r.randrange(4)
            question, answer = [q, v.key(keys[pick])], [values[pick]]
        elif task == "niah_multivalue":
            key = v.key(r.randrange(N_KEYS))
            values = [v.value(i) for i in r.sample(range(N_VALUES), 3)]
            pieces = [self.statement(key, val) for val in values]
            question, answer = [q, key], values
        elif task == "variable_tracking":
            names = [v.var(i) for i in r.sample(range(N_VARS), 4)]
            value = v.value(r.randrange(N_VALUES))
            pieces = [[names[0], v.id("="), value, v.id(".")]]
            pieces += [[names[i], v.id("="), names[i - 1], v.id(".")] for i in range(1, 4)]
            question, answer = [q, value], names
        else:
            raise ValueError(f"unknown task {task}")
        tokens = self.embed(pieces, length, question + answer + [v.id("<eos>")])
        start = len(tokens) - 1 - len(answer)
        return Example(task, tokens, start, answer)

    def drill(self, length: int, max_pairs: int = 8) -> tuple[list[int], list[int]]:
        """A training-only sequence with many questions: 1 to `max_pairs` needles with different keys in
        filler, then "<question> K V" for each of them in random order. Returns the tokens and the
        positions of the answers (the V of each question), so one sequence teaches recall many times.
        """
        v, r = self.vocab, self.rng
        pairs = [(v.key(k), v.value(r.randrange(N_VALUES))) for k in r.sample(range(N_KEYS), r.randint(1, max_pairs))]
        asked = r.sample(pairs, len(pairs))
        tail = [t for k, val in asked for t in (v.id("<question>"), k, val)] + [v.id("<eos>")]
        tokens = self.embed([self.statement(k, val) for k, val in pairs], length, tail)
        first = len(tokens) - len(tail)
        return tokens, [first + 3 * i + 2 for i in range(len(asked))]

    def text(self, length: int) -> list[int]:
        return [self.vocab.id("<bos>")] + self.filler(length - 1)
