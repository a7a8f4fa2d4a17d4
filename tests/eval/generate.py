"""Writes the kvcompress-eval test files of this folder for the golden Llama checkpoint (vocabulary 256).

    /opt/kvpvenv/bin/python tests/eval/generate.py      # any Python with torch and transformers

tasks.jsonl: 2 tasks × 3 examples at lengths 80 and 112; each prompt is random ids, then the question
[250, key, 251]; the answer is what HF transformers' greedy `generate` continues the prompt with (1 token
for "lookup", 3 for "chain"), so kvcompress-eval's full cache must answer every example right.
heldout.jsonl: 2 texts of 120 random ids. tasks_bad_id.jsonl: one example holding the id 256.
"""

import json
import random
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

HERE = Path(__file__).parent
QUESTION, ANSWER = 250, 251


def main() -> None:
    r = random.Random(5)
    model = AutoModelForCausalLM.from_pretrained(HERE.parent / "golden/engine/llama/checkpoint", dtype=torch.float32)
    model.eval()
    lines = []
    for length in (80, 112):
        for task in ("lookup", "chain"):
            for _ in range(3):
                n_answer = 1 if task == "lookup" else 3
                prompt = [1] + [r.randrange(10, 250) for _ in range(length - 5 - n_answer)]
                prompt += [QUESTION, r.randrange(10, 250), ANSWER]
                ids = torch.tensor([prompt])
                with torch.no_grad():
                    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_answer,
                                         do_sample=False, pad_token_id=0)
                lines.append({"length": length, "task": task, "prompt": prompt,
                              "answer": out[0, len(prompt):].tolist()})
    with open(HERE / "tasks.jsonl", "w") as f:
        for d in lines:
            f.write(json.dumps(d) + "\n")
    with open(HERE / "heldout.jsonl", "w") as f:
        for _ in range(2):
            f.write(json.dumps({"tokens": [1] + [r.randrange(10, 250) for _ in range(119)]}) + "\n")
    with open(HERE / "tasks_bad_id.jsonl", "w") as f:
        f.write(json.dumps({"length": 80, "task": "lookup", "prompt": [1, 12, 256, QUESTION, 13, ANSWER],
                            "answer": [14]}) + "\n")


if __name__ == "__main__":
    main()
