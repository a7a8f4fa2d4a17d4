"""Writes what HF transformers answers on a trained checkpoint's own tasks, for the engine to reproduce.

    python tools/train/torch_answers.py --model models/kvc-recall

Reads `<model>/tasks.jsonl`, takes the first `--per-task` examples of every task at `--length`, and
writes them to `<model>/torch_answers.jsonl` with the answer replaced by transformers' greedy
continuation of the prompt (right or wrong). kvcompress-eval run on that file with the full cache must
then score 1 on every task: the test `eval.shipped_model_matches_transformers` checks that the C++
engine answers exactly as transformers does on the model the project ships.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from transformers import LlamaForCausalLM


@torch.no_grad()
def greedy_answer(model, prompt: list[int], n: int) -> list[int]:
    """The n tokens of transformers' greedy continuation of `prompt`, on the model's device."""
    ids = torch.tensor([prompt], device=model.device)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def write_torch_answers(model, model_dir: Path, length: int, per_task: int) -> int:
    """Returns the number of examples written."""
    taken: dict[str, int] = {}
    lines = []
    for line in (model_dir / "tasks.jsonl").read_text().splitlines():
        ex = json.loads(line)
        if ex["length"] != length or taken.get(ex["task"], 0) >= per_task:
            continue
        taken[ex["task"]] = taken.get(ex["task"], 0) + 1
        lines.append({**ex, "answer": greedy_answer(model, ex["prompt"], len(ex["answer"]))})
    if not lines:
        raise ValueError(f"{model_dir / 'tasks.jsonl'} has no example of length {length}")
    with open(model_dir / "torch_answers.jsonl", "w") as f:
        for ex in lines:
            f.write(json.dumps(ex) + "\n")
    return len(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="checkpoint folder written by train.py")
    p.add_argument("--length", type=int, default=512, help="task length to take the examples from")
    p.add_argument("--per-task", type=int, default=4)
    args = p.parse_args(argv)
    model = LlamaForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.eval()
    n = write_torch_answers(model, args.model, args.length, args.per_task)
    print(f"{args.model / 'torch_answers.jsonl'}: {n} examples", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
