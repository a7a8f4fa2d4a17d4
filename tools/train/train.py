"""Trains the small Llama-architecture model that kvcompress ships for its evaluation.

    python tools/train/train.py --out models/kvc-recall --steps 2400 --lr 1e-3 --threads 1 --probe-every 100 --seed 0

Writes an HF checkpoint folder (config.json, model.safetensors), the vocabulary (vocab.json), the
evaluation sets (tasks.jsonl: prompts and answers of every task at several context lengths, drawn from
a seed the training never uses; heldout_text.jsonl: plain text for the KL divergence), and
training.json (the command, the seed, the recipe, the curriculum reached and the accuracy measured on
the evaluation set with the full cache), and torch_answers.jsonl (transformers' own answers on a few
evaluation examples, which the C++ engine must reproduce).

Recipe: the model (4 layers, hidden 256, 4 heads of 128 over 2 KV heads, rope_theta 1e6) starts from
the induction circuit of circuit.py (a previous-token head in layer 0, two matching heads in layer 1,
every other residual branch at zero; --init random starts from HF's initialisation instead), then
trains on a curriculum over context lengths (128 → 2,048 tokens, each stage until the probe accuracy of
every task passes a threshold or its share of the steps is spent), every batch a mix of recall
drills (50 %: up to 8 needles, then a question for each), the four tasks (40 %) and plain text (10 %);
next-token loss on every token, the answer tokens of a drill or task sequence carrying half of its loss.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).parent))
import tasks as T  # noqa: E402
from circuit import write_induction_circuit  # noqa: E402
from torch_answers import greedy_answer, write_torch_answers  # noqa: E402

STAGES = [128, 256, 512, 1024, 2048]
EVAL_LENGTHS = [512, 1024, 2048]
TRAIN_SEED_OFFSET, EVAL_SEED_OFFSET = 1000, 2000
MAX_POSITIONS = 4096


def model_config(vocab_size: int, args) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3 // 16 * 16,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        head_dim=args.head_dim or args.hidden // args.heads, max_position_embeddings=MAX_POSITIONS,
        rope_theta=args.rope_theta,
        rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        attention_bias=False, mlp_bias=False, torch_dtype="float32")


def batch(gen: T.Generator, length: int, size: int, answer_share: float, text_share: float = 0.1,
          drill_share: float = 0.5):
    """Token ids [size, length] and per-token loss weights [size, length - 1].

    A sequence is plain text, a recall drill (many questions, training only) or one of the evaluation
    tasks. In a drill or task sequence the answer tokens carry `answer_share` of its loss: with a plain
    per-token loss a 2,048-token example would spend 99.9 % of its gradient on the filler text.
    """
    ids, weights = [], []
    for _ in range(size):
        u = gen.rng.random()
        if u < text_share:
            toks, answers = gen.text(length), []
        elif u < text_share + drill_share:
            toks, answers = gen.drill(length)
        else:
            ex = gen.example(gen.rng.choice(T.TASKS), length)
            toks, answers = ex.tokens, list(range(ex.answer_start, ex.answer_start + len(ex.answer)))
        w = [1.0] * (length - 1)
        if answers:
            answer_weight = answer_share / (1.0 - answer_share) * (length - 1 - len(answers)) / len(answers)
            for pos in answers:
                w[pos - 1] = answer_weight  # the logits at pos - 1 predict tokens[pos]
        ids.append(toks)
        weights.append(w)
    return torch.tensor(ids), torch.tensor(weights)


def answer_accuracy(model, examples: list[T.Example]) -> float:
    """Greedy decoding of the answer after the prompt; exact match of every answer token."""
    model.eval()
    right = sum(greedy_answer(model, ex.tokens[:ex.answer_start], len(ex.answer)) == ex.answer for ex in examples)
    model.train()
    return right / len(examples)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=1200, help="optimizer steps (a step count, not a time, so a run is reproducible)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=128, help="0: hidden / heads")
    p.add_argument("--rope-theta", type=float, default=1e6)
    p.add_argument("--init", choices=["circuit", "random"], default="circuit",
                   help="circuit: start from the induction circuit of circuit.py; random: HF's initialisation")
    p.add_argument("--tokens-per-step", type=int, default=4096)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--answer-share", type=float, default=0.5, help="share of a task sequence's loss on its answer")
    p.add_argument("--threshold", type=float, default=0.9,
                   help="probe accuracy that ends a stage early when every task reaches it")
    p.add_argument("--probe-per-task", type=int, default=8, help="probe examples per task and stage")
    p.add_argument("--probe-every", type=int, default=50, help="steps between probes")
    p.add_argument("--eval-per-task", type=int, default=50)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    words = T.corpus_words()
    vocab = T.build_vocab(words)
    train_gen = T.Generator(vocab, words, args.seed + TRAIN_SEED_OFFSET)
    probe_gen = T.Generator(vocab, words, args.seed + TRAIN_SEED_OFFSET + 1)
    model = LlamaForCausalLM(model_config(len(vocab), args))
    if args.init == "circuit":
        write_induction_circuit(model, MAX_POSITIONS, torch.Generator().manual_seed(args.seed))
    model.to(args.device)
    n_params = sum(t.numel() for t in model.parameters())
    print(f"vocab {len(vocab)}, parameters {n_params / 1e6:.2f} M, device {args.device}", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)

    start, step, log = time.time(), 0, []
    stage_share = [0.3, 0.2, 0.15, 0.15, 0.2]  # shares of the steps: recall is learned on short contexts
    for stage, length in enumerate(STAGES):
        # a stage that passes the probe early hands its remaining steps to the next ones
        stage_end = args.steps if stage == len(STAGES) - 1 else \
            step + round(stage_share[stage] / sum(stage_share[stage:]) * (args.steps - step))
        size = max(1, args.tokens_per_step // length)
        probe = {task: [probe_gen.example(task, length) for _ in range(args.probe_per_task)] for task in T.TASKS}
        while step < stage_end:
            ids, w = batch(train_gen, length, size, args.answer_share)
            ids, w = ids.to(args.device), w.to(args.device)
            logits = model(ids).logits[:, :-1].float()
            answers = w > 1.0
            batch_recall = (logits.argmax(-1)[answers] == ids[:, 1:][answers]).float().mean().item() \
                if answers.any() else 0.0
            loss_tok = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                                         reduction="none")
            loss = (loss_tok * w.reshape(-1)).sum() / w.sum()
            lr = args.lr * min(1.0, (step + 1) / 100)  # warm-up, then constant until the final cool-down
            remaining = (args.steps - step) / args.steps
            if remaining < 0.1:
                lr *= max(0.05, remaining / 0.1)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            if step % args.probe_every == 0:
                acc = {task: answer_accuracy(model, exs) for task, exs in probe.items()}
                entry = {"step": step, "minutes": round((time.time() - start) / 60, 2), "length": length,
                         "loss": round(loss.item(), 4), "batch_answer_accuracy": round(batch_recall, 3),
                         **{f"probe_{task}": a for task, a in acc.items()}}
                log.append(entry)
                print(json.dumps(entry), flush=True)
                if min(acc.values()) >= args.threshold and stage < len(STAGES) - 1:
                    break

    args.out.mkdir(parents=True, exist_ok=True)
    model.to("cpu").save_pretrained(args.out, safe_serialization=True)
    vocab.save(args.out / "vocab.json")
    eval_gen = T.Generator(vocab, words, args.seed + EVAL_SEED_OFFSET)
    accuracy = {}
    with open(args.out / "tasks.jsonl", "w") as f:
        for length in EVAL_LENGTHS:
            for task in T.TASKS:
                exs = [eval_gen.example(task, length) for _ in range(args.eval_per_task)]
                for ex in exs:
                    f.write(json.dumps({"length": length, **ex.to_json()}) + "\n")
                accuracy[f"{task}@{length}"] = answer_accuracy(model, exs)
                print(f"full cache {task}@{length}: {accuracy[f'{task}@{length}']:.2f}", flush=True)
    with open(args.out / "heldout_text.jsonl", "w") as f:
        for _ in range(8):
            f.write(json.dumps({"tokens": eval_gen.text(1024)}) + "\n")
    write_torch_answers(model, args.out, EVAL_LENGTHS[0], 4)
    (args.out / "training.json").write_text(json.dumps({
        "command": "python tools/train/train.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "seed": args.seed, "parameters": n_params, "vocab": len(vocab), "steps": step,
        "minutes": round((time.time() - start) / 60, 1), "device": args.device,
        "torch_threads": torch.get_num_threads(), "recipe": __doc__.strip().split("\n\n", 2)[2],
        "curriculum_log": log, "full_cache_accuracy": accuracy}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
