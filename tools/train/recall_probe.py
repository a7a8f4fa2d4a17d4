"""Measures how many optimizer steps a model configuration needs to learn associative recall.

    python tools/train/recall_probe.py --length 32 --batch 16 --lr 1e-3 --steps 20000 --threads 1

Retrieval is what the shipped model must learn and what small models learn last: before it, a model
answers a question by copying any value of its context (accuracy 1/n with n needles), and only after an
abrupt change (an induction head: "find the earlier occurrence of this key, copy the token after it")
does it answer right. This probe times that change on the smallest task that needs it, multi-query
associative recall in the vocabulary of `tasks.py`: "<bos> K1 V1 K2 V2 … Kn Vn" then the same pairs in
another order, the loss on every value of the second half. It prints the answer accuracy of the last
50 steps every 50 steps, as JSON, and stops when it reaches `--target`; run it to choose the model size,
the context length and the learning rate of a training run before spending hours on one.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import tasks as T  # noqa: E402
from train import LlamaForCausalLM, model_config  # noqa: E402


def recall_batch(vocab: T.Vocab, rng: random.Random, length: int, size: int):
    """Token ids [size, length] and answer weights [size, length - 1] (1 where the logits predict a value
    of the second half, 0 elsewhere). A sequence holds 2 to (length - 1) // 4 pairs with different keys;
    the rest is padding, which carries no loss."""
    ids, weights = [], []
    for _ in range(size):
        n = rng.randint(2, (length - 1) // 4)
        keys = [vocab.key(k) for k in rng.sample(range(T.N_KEYS), n)]
        values = [vocab.value(rng.randrange(T.N_VALUES)) for _ in keys]
        first = [t for pair in zip(keys, values) for t in pair]
        second = [t for i in rng.sample(range(n), n) for t in (keys[i], values[i])]
        toks = [vocab.id("<bos>")] + first + second
        w = [0.0] * (length - 1)
        for pos in range(len(first) + 2, len(toks), 2):  # the values of the second half
            w[pos - 1] = 1.0  # the logits at pos - 1 predict tokens[pos]
        ids.append(toks + [vocab.id("<pad>")] * (length - len(toks)))
        weights.append(w)
    return torch.tensor(ids), torch.tensor(weights)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--length", type=int, default=32, help="tokens per sequence (at least 9)")
    p.add_argument("--batch", type=int, default=16, help="sequences per step")
    p.add_argument("--steps", type=int, default=20000, help="most optimizer steps")
    p.add_argument("--target", type=float, default=0.9, help="answer accuracy over 50 steps that ends the run")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=0, help="0: hidden / heads")
    p.add_argument("--rope-theta", type=float, default=10000.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-count", type=int, default=2,
                   help="filler words that occur fewer times are left out of the vocabulary (train.py: 2)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    args = p.parse_args(argv)
    if args.length < 9:
        p.error(f"--length {args.length}: needs at least 9 tokens for two pairs asked twice")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    vocab = T.build_vocab(T.corpus_words(), args.min_count)
    model = LlamaForCausalLM(model_config(len(vocab), args))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)
    start, recent = time.time(), []
    for step in range(1, args.steps + 1):
        ids, w = recall_batch(vocab, rng, args.length, args.batch)
        logits = model(ids).logits[:, :-1].float()
        answers = w > 0
        recent = (recent + [(logits.argmax(-1)[answers] == ids[:, 1:][answers]).float().mean().item()])[-50:]
        loss_tok = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                                     reduction="none")
        loss = (loss_tok * w.reshape(-1)).sum() / w.sum()
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, step / 50)  # warm-up, then constant
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0:
            accuracy = sum(recent) / len(recent)
            print(json.dumps({"step": step, "seconds": round(time.time() - start), "loss": round(loss.item(), 3),
                              "answer_accuracy": round(accuracy, 3)}), flush=True)
            if accuracy >= args.target:
                print(f"recall learned: {accuracy:.3f} at step {step}", flush=True)
                return 0
    print(f"recall not learned in {args.steps} steps", flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
