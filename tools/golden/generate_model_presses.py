"""Golden fixtures for the presses that look at the whole model (tests/golden/more_presses/model/).

KVCompose and KVzip score the cache from an extra forward pass over the context, FastKVzip and KVzap
apply small learned scorers (here with random weights, through kvpress's own model classes) to the
hidden states, and ThinK prunes key channels. Each scenario records, for every layer of a small
random-weight model, what kvpress's hooks saw and what kvpress decided, through kvpress itself.

Only tests/golden/more_presses/model/ is written: the other fixtures are left as they are (their
regeneration on another machine moves them by float rounding). Run it as generate.py is run:

    /root/.cache/kvcompress-golden-venv/bin/python tools/golden/generate_model_presses.py --out tests/golden
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every artefact is built locally

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import transformers
from transformers import LlamaForCausalLM
from transformers.cache_utils import DynamicCache

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generate as g  # noqa: E402  (the shared model builder and writers)

from kvpress.presses.kvcompose_press import KVComposePress  # noqa: E402
from kvpress.presses.think_press import ThinKPress  # noqa: E402
from kvpress.presses.kvzap_press import KVzapConfig, KVzapModel, KVzapPress  # noqa: E402
from kvpress.presses.fastkvzip_press import FastKVzipGate, FastKVzipPress  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
import kvpress.presses.kvzip_press as kvzip_module  # noqa: E402
from kvpress.presses.kvzip_press import KVzipPress  # noqa: E402
from kvpress.utils import get_prerope_query_states  # noqa: E402

GENERATOR = "tools/golden/generate_model_presses.py"

# (name, model family, head_dim, context length, seed): batch 1 (KVzip, FastKVzip and unstructured KVCompose
# support nothing else), GQA 4:1 on both; llama3 RoPE on the first, q_norm/k_norm and default RoPE on the second.
SCENARIOS = [
    ("llama_d64_n64", "llama", 64, 64, 601),
    ("qwen3_d128_n72", "qwen3", 128, 72, 602),
]

# KVCompose: (name, parameters)
KVCOMPOSE_CASES = [
    ("kvcompose_default", dict(compression_ratio=0.5)),
    ("kvcompose_unstructured", dict(compression_ratio=0.3, structured=False)),
    (
        "kvcompose_mean_lb8",
        dict(compression_ratio=0.7, agg_task="mean", agg_group="max", agg_head="max", add_mean_across_heads=False,
             keep_token_lower_bound=8),
    ),
]


@torch.no_grad()
def run_kvcompose(model, input_ids, name, params, td: g.TensorDir, shared: dict) -> dict:
    """Prefills with KVComposePress (which replays the context once more, eagerly); records every layer's attention
    of the replay pass, kvpress's scores, composites, budgets and kept masks."""
    press = KVComposePress(**params)
    L = model.config.num_hidden_layers
    ctx = input_ids.shape[1]
    replay: dict[int, torch.Tensor] = {}

    def hook(module, args, kwargs, output):  # runs before the press's hook, which drops output[1]
        a = output[1]
        if a is not None and a.shape[2] != a.shape[3]:
            replay[module.layer_idx] = a.detach().clone()
        return output

    hooks = [layer.self_attn.register_forward_hook(hook, with_kwargs=True) for layer in model.model.layers]
    got: dict = {}
    original = press.compress_cache

    def compress_cache(m):
        got["scores"] = press.scores.clone()
        got["per_head"] = torch.as_tensor(press.important_per_head).clone()
        got["per_layer"] = torch.as_tensor(press.important_per_layer).clone()
        got["masks"] = torch.stack([torch.stack(list(row)) for row in press.important_mask_per_kv_head])
        got["keys"] = [press.cache.layers[i].keys[:, :, :ctx].clone() for i in range(L)]
        got["values"] = [press.cache.layers[i].values[:, :, :ctx].clone() for i in range(L)]
        return original(m)

    press.compress_cache = compress_cache
    cache = DynamicCache(config=model.config)
    try:
        with press(model):
            model(input_ids, past_key_values=cache, use_cache=True)
    finally:
        for h in hooks:
            h.remove()
        del press.compress_cache
    assert sorted(replay) == list(range(L))
    masks = got["masks"]  # [L, kv_heads, ctx]
    if press.structured:
        for i in range(L):  # the cache holds the kept entries of batch 0, in position order
            for h in range(masks.shape[1]):
                assert torch.equal(cache.layers[i].keys[0, h], got["keys"][i][0, h][masks[i, h]])
    if "attention" not in shared:
        shared["attention"] = [td.write(f"replay_attention_l{i}", replay[i]) for i in range(L)]
        shared["replay"] = replay
        for i in range(L):
            td.write(f"keys_l{i}", got["keys"][i])
            td.write(f"values_l{i}", got["values"][i])
        shared["keys"] = got["keys"]
    for i in range(L):
        assert torch.equal(replay[i], shared["replay"][i]), f"{name}: the replay pass differs between cases"
        assert torch.equal(got["keys"][i], shared["keys"][i])
    kept_counts = masks.sum(-1)
    return {
        "name": name,
        "press": "KVComposePress",
        "params": g.press_params(press),
        "scores": td.write(f"{name}_scores", got["scores"]),
        "important_per_head": [[int(x) for x in row] for row in got["per_head"]],
        "important_per_layer": [int(x) for x in got["per_layer"]],
        "kept_counts": [[int(x) for x in row] for row in kept_counts],
        "kept_mask": td.write(f"{name}_kept_mask", masks.to(torch.int32), "int32"),
    }


# ThinK: (name, parameters)
THINK_CASES = [
    ("think_half", dict(key_channel_compression_ratio=0.5)),
    ("think_w8_r03", dict(key_channel_compression_ratio=0.3, window_size=8)),
]


@torch.no_grad()
def run_think(model, input_ids, name, params, td: g.TensorDir, shared: dict) -> dict:
    """Prefills with ThinKPress through kvpress's hook; records per layer its window queries (its own
    compute_window_queries), its channel scores and the channels it zeroed."""
    press = ThinKPress(**params)
    L = model.config.num_hidden_layers
    got: dict[int, dict] = {}
    original = press.compress

    def compress(module, hidden_states, keys, values, attentions, kwargs):
        keys_in = keys.clone()
        q = press.compute_window_queries(module, kwargs["hidden_states"], kwargs["position_embeddings"])
        k2, v2 = original(module, hidden_states, keys, values, attentions, kwargs)
        b, h, n, d = keys_in.shape
        qn = q.pow(2).mean(dim=2).view(b, h, -1, d).mean(2)
        got[module.layer_idx] = dict(keys=keys_in, window=q, scores=qn * keys_in.pow(2).mean(dim=2),
                                     pruned=(k2 == 0).all(dim=2), keys_out=k2.clone())
        return k2, v2

    press.compress = compress
    try:
        with press(model):
            model(input_ids, use_cache=True)
    finally:
        del press.compress
    layers = []
    for i in range(L):
        c = got[i]
        assert torch.equal(c["keys"], shared["keys"][i]), f"{name}: layer {i} keys differ from the scenario's"
        n_pruned = int(c["pruned"].sum(-1)[0, 0])
        assert n_pruned == int(c["keys"].shape[-1] * press.key_channel_compression_ratio)
        assert torch.all(c["pruned"].sum(-1) == n_pruned)
        wname = f"think_window_{press.window_size}_l{i}"
        if f"{wname}.bin" not in td.written:
            td.write(wname, c["window"])
        layers.append({
            "window_queries": td.written[f"{wname}.bin"],
            "scores": td.write(f"{name}_l{i}_scores", c["scores"]),
            "pruned": td.write(f"{name}_l{i}_pruned", c["pruned"].to(torch.int32), "int32"),
            "keys_out": td.write(f"{name}_l{i}_keys_out", c["keys_out"]),
        })
    return {"name": name, "press": "ThinKPress", "params": g.press_params(press), "layers": layers}


# KVzap with random surrogates built by kvpress's own KVzapModel: (name, model_type, hidden_dim, ratio)
KVZAP_CASES = [
    ("kvzap_mlp", "mlp", 32, 0.5),
    ("kvzap_linear", "linear", None, 0.3),
]


@torch.no_grad()
def run_kvzap(model, input_ids, name, model_type, hidden_dim, ratio, seed, td: g.TensorDir, shared: dict) -> dict:
    """Prefills with KVzapPress holding a randomly initialised KVzapModel (saved as the safetensors a caller would
    give); records every layer's hidden states, kvpress's scores and kept sets."""
    cfg = model.config
    torch.manual_seed(seed)
    surrogate = KVzapModel(KVzapConfig(input_dim=cfg.hidden_size, output_dim=cfg.num_key_value_heads,
                                       n_modules=cfg.num_hidden_layers, hidden_dim=hidden_dim)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        surrogate.save_pretrained(tmp)
        shutil.copy(Path(tmp) / "model.safetensors", td.path / f"{name}.safetensors")
    press = KVzapPress(compression_ratio=ratio, model_type=model_type)
    press.kvzap_model = surrogate
    press.kvzap_model_name = f"nvidia/KVzap-{model_type}-{cfg.name_or_path.split('/')[-1]}"  # no download
    L = cfg.num_hidden_layers
    cap = g.run_press(model, input_ids, press, tuple(range(L)), no_attention=True)
    layers = []
    for i in range(L):
        c = cap[i]
        assert torch.equal(c["keys"], shared["keys"][i]), f"{name}: layer {i} keys differ from the scenario's"
        if f"hidden_l{i}.bin" not in td.written:
            td.write(f"hidden_l{i}", c["hidden_states"])
        kept = g.recover_kept(c["keys"], c["values"], c["keys_out"], c["values_out"])
        scores = c["scores"].to(torch.float32)
        tied = g.check_topk(scores, kept)
        layers.append({
            "scores": td.write(f"{name}_l{i}_scores", scores),
            "kept": td.write(f"{name}_l{i}_kept", kept, "int32"),
            "n_kept": int(kept.shape[-1]),
            "boundary_tie": bool(tied),
        })
    return {"name": name, "press": "KVzapPress", "params": g.press_params(press), "weights": f"{name}.safetensors",
            "layers": layers}


# FastKVzip with random gates built by kvpress's own FastKVzipGate (k_base, b and the norms randomised too; kvpress
# initialises them to 0 and 1): (name, parameters)
FASTKVZIP_CASES = [
    ("fastkvzip_default", dict(compression_ratio=0.5)),
    ("fastkvzip_layerwise", dict(compression_ratio=0.3, layerwise=True, n_sink=2, window_ratio=0.1)),
]


@torch.no_grad()
def run_fastkvzip(family, head_dim, seed, input_ids, name, params, gate_seed, td: g.TensorDir) -> dict:
    """Prefills an sdpa model (kvpress refuses eager for the masking presses) with FastKVzipPress and random gates;
    records every layer's hidden states, kvpress's final scores and the entries it masked."""
    model = g.build_model(family, head_dim, seed, attn_implementation="sdpa")
    cfg = model.config
    L, h = cfg.num_hidden_layers, cfg.num_key_value_heads
    G = cfg.num_attention_heads // h
    torch.manual_seed(gate_seed)
    gates = []
    for i in range(L):
        gate = FastKVzipGate(i, cfg.hidden_size, h, G, torch.float32, output_dim=16, sink=16)
        gate.k_base.normal_(0.0, 1.0)
        gate.b.normal_(0.0, 1.0)
        gate.q_norm.weight.normal_(1.0, 0.3)
        gate.k_norm.weight.normal_(1.0, 0.3)
        gates.append(gate.eval())
    save_file({f"{i}.{k}": v.contiguous() for i, gate in enumerate(gates) for k, v in gate.state_dict().items()},
              str(td.path / f"{name}.safetensors"))
    press = FastKVzipPress(**params)
    press.gates = gates
    hidden: dict[int, torch.Tensor] = {}

    def hook(module, args, kwargs, output):
        hidden.setdefault(module.layer_idx, kwargs["hidden_states"].detach().clone())
        return output

    hooks = [layer.self_attn.register_forward_hook(hook, with_kwargs=True) for layer in model.model.layers]
    try:
        with press(model):
            model(input_ids, use_cache=True)
    finally:
        for hk in hooks:
            hk.remove()
    ctx = input_ids.shape[1]
    masked = torch.zeros(L, h, ctx, dtype=torch.int32)
    for i, layer in enumerate(model.model.layers):
        bi, hi, si = layer.self_attn.masked_key_indices
        assert torch.all(bi == 0)
        masked[i, hi, si] = 1
    for i in range(L):  # the same model and prompt in every case: written once
        if f"fastkvzip_hidden_l{i}.bin" in td.written:
            assert torch.equal(hidden[i], td.hidden[i])
        else:
            td.write(f"fastkvzip_hidden_l{i}", hidden[i])
            td.hidden = getattr(td, "hidden", {})
            td.hidden[i] = hidden[i]
    layers = [{"hidden": td.written[f"fastkvzip_hidden_l{i}.bin"]} for i in range(L)]
    return {
        "name": name,
        "press": "FastKVzipPress",
        "params": g.press_params(press),
        "weights": f"{name}.safetensors",
        "group": G,
        "layers": layers,
        "scores": td.write(f"{name}_scores", press.score_val[:, 0]),
        "masked": td.write(f"{name}_masked", masked, "int32"),
        "masked_per_layer": [int(x) for x in masked.sum((1, 2))],
    }


# KVzip: (scenario, name, parameters). The scenarios' vocabulary is 256 tokens, so a byte tokenizer without a chat
# template (kvpress then uses no prefix and the suffix "\n") stands in for the model's.
KVZIP_CASES = [
    ("llama_d64_n64", "kvzip_chunk32", dict(compression_ratio=0.5, chunk_size=32)),
    ("llama_d64_n64", "kvzip_plus_layerwise", dict(compression_ratio=0.3, kvzip_plus_normalization=True, layerwise=True)),
    ("qwen3_d128_n72", "kvzip_default", dict(compression_ratio=0.4)),
]


class ByteTokenizer:
    chat_template = None

    @staticmethod
    def encode(text, return_tensors=None, add_special_tokens=False):
        assert return_tensors == "pt" and not add_special_tokens
        return torch.tensor([list(text.encode("utf-8"))], dtype=torch.int64)


@torch.no_grad()
def run_kvzip(family, head_dim, seed, input_ids, name, params, td: g.TensorDir) -> dict:
    """Prefills an sdpa model with KVzipPress; records, per reconstruction chunk and layer, the pre-RoPE queries, the
    cache (context + the input's own entries) and, for KVzip+, the hidden states; then kvpress's scores before the
    sink protection and the entries it masked."""
    model = g.build_model(family, head_dim, seed, attn_implementation="sdpa")
    cfg = model.config
    L, h = cfg.num_hidden_layers, cfg.num_key_value_heads
    press = KVzipPress(**params)
    chunks: list[dict] = []
    original_score = press.score_kvzip
    original_post = press.compress_post
    got: dict = {}

    def score_kvzip(module, hidden_states, keys, values, attentions, kwargs):
        i = module.layer_idx
        if i == 0:
            chunks.append({"start": press.start_idx, "end": press.end_idx, "layers": []})
        c = chunks[-1]
        tag = f"{name}_c{len(chunks) - 1}_l{i}"
        q = hidden_states.shape[1]
        assert int(kwargs["cache_position"][0]) == press.context_length == keys.shape[2] - q
        entry = {
            "queries": td.write(f"{tag}_queries", get_prerope_query_states(module, hidden_states)),
            "keys": td.write(f"{tag}_keys", keys),
            "position": int(kwargs["cache_position"][0]),
            "q_len": q,
        }
        if press.kvzip_plus_normalization:
            entry["values"] = td.write(f"{tag}_values", values)
            entry["hidden"] = td.write(f"{tag}_hidden", hidden_states)
            if f"{name}_o_proj_l{i}.bin" not in td.written:
                td.write(f"{name}_o_proj_l{i}", module.o_proj.weight)
            entry["o_proj"] = td.written[f"{name}_o_proj_l{i}.bin"]
        c["layers"].append(entry)
        return original_score(module, hidden_states, keys, values, attentions, kwargs)

    def compress_post(m):
        got["scores"] = press.score_val[:, 0].clone()
        return original_post(m)

    press.score_kvzip = score_kvzip
    press.compress_post = compress_post
    auto = kvzip_module.AutoTokenizer
    kvzip_module.AutoTokenizer = type("Tokenizers", (), {"from_pretrained": staticmethod(lambda *a, **k: ByteTokenizer())})
    try:
        with press(model):  # kvpress's pipeline hands the model a cache, which KVzip replays over
            model(input_ids, past_key_values=DynamicCache(config=cfg), use_cache=True)
    finally:
        kvzip_module.AutoTokenizer = auto
        del press.score_kvzip
        del press.compress_post
    ctx = input_ids.shape[1]
    masked = torch.zeros(L, h, ctx, dtype=torch.int32)
    for i, layer in enumerate(model.model.layers):
        bi, hi, si = layer.self_attn.masked_key_indices
        assert torch.all(bi == 0)
        masked[i, hi, si] = 1
    return {
        "name": name,
        "press": "KVzipPress",
        "params": g.press_params(press),
        "chunks": chunks,
        "scores": td.write(f"{name}_scores", got["scores"]),
        "masked": td.write(f"{name}_masked", masked, "int32"),
        "masked_per_layer": [int(x) for x in masked.sum((1, 2))],
    }


def generate_scenario(out_dir: Path, spec, log) -> str:
    name, family, head_dim, ctx, seed = spec
    model = g.build_model(family, head_dim, seed)
    cfg = model.config
    gen = torch.Generator().manual_seed(seed + 1000)
    input_ids = torch.randint(0, cfg.vocab_size, (1, ctx), generator=gen)
    td = g.TensorDir(out_dir / name)
    shared: dict = {}
    kvcompose = []
    for cname, params in KVCOMPOSE_CASES:
        e = run_kvcompose(model, input_ids, cname, params, td, shared)
        kvcompose.append(e)
        log(f"  model/{name:16s} {cname:26s} per layer {e['important_per_layer']} per head {e['important_per_head']}")
    think = []
    for cname, params in THINK_CASES:
        think.append(run_think(model, input_ids, cname, params, td, shared))
        log(f"  model/{name:16s} {cname:26s}")
    kvzap = []
    for ci, (cname, mtype, hid, ratio) in enumerate(KVZAP_CASES):
        kvzap.append(run_kvzap(model, input_ids, cname, mtype, hid, ratio, seed + 100 + ci, td, shared))
        log(f"  model/{name:16s} {cname:26s} n_kept {[e['n_kept'] for e in kvzap[-1]['layers']]}")
    fastkvzip = []
    for ci, (cname, params) in enumerate(FASTKVZIP_CASES):
        fastkvzip.append(run_fastkvzip(family, head_dim, seed, input_ids, cname, params, seed + 200 + ci, td))
        log(f"  model/{name:16s} {cname:26s} masked per layer {fastkvzip[-1]['masked_per_layer']}")
    kvzip = []
    for scen, cname, params in KVZIP_CASES:
        if scen == name:
            kvzip.append(run_kvzip(family, head_dim, seed, input_ids, cname, params, td))
            log(f"  model/{name:16s} {cname:26s} chunks {len(kvzip[-1]['chunks'])} masked per layer {kvzip[-1]['masked_per_layer']}")
    L = cfg.num_hidden_layers
    tensors = {f"keys_l{i}": td.written[f"keys_l{i}.bin"] for i in range(L)}
    tensors.update({f"values_l{i}": td.written[f"values_l{i}.bin"] for i in range(L)})
    tensors.update({f"replay_attention_l{i}": shared["attention"][i] for i in range(L)})
    tensors.update({f"hidden_l{i}": td.written[f"hidden_l{i}.bin"] for i in range(L)})
    rope = g.model_rope_json(model, td)
    g.write_json(
        td.path / "scenario.json",
        {
            "format": g.FORMAT,
            "generator": GENERATOR,
            **g.versions(),
            "model": family,
            "num_layers": L,
            "batch": 1,
            "q_heads": cfg.num_attention_heads,
            "kv_heads": cfg.num_key_value_heads,
            "head_dim": head_dim,
            "hidden_size": cfg.hidden_size,
            "seq_len": ctx,
            "rope": rope,
            "tensors": tensors,
            "kvcompose": kvcompose,
            "think": think,
            "kvzap": kvzap,
            "fastkvzip": fastkvzip,
            "kvzip": kvzip,
        },
    )
    return name


# KVCompose through the reference engine: kvpress on the engine's golden Llama checkpoint (tests/golden/engine/llama)
# and its 203-token prompt; what every layer's heads keep.
ENGINE_KVCOMPOSE_RATIO = 0.5


@torch.no_grad()
def generate_engine_kvcompose(golden: Path, out_dir: Path, log) -> None:
    engine_dir = golden / "engine" / "llama"
    meta = json.loads((engine_dir / "engine.json").read_text())
    model = LlamaForCausalLM.from_pretrained(str(engine_dir / meta["checkpoint"]), attn_implementation="eager")
    model = model.to(torch.float32).eval()
    ids = torch.tensor([meta["prompt"]], dtype=torch.int64)
    press = KVComposePress(compression_ratio=ENGINE_KVCOMPOSE_RATIO)
    got = {}
    original = press.compress_cache

    def compress_cache(m):
        got["masks"] = torch.stack([torch.stack(list(row)) for row in press.important_mask_per_kv_head])
        return original(m)

    press.compress_cache = compress_cache
    try:
        with press(model):
            model(ids, past_key_values=DynamicCache(config=model.config), use_cache=True)
    finally:
        del press.compress_cache
    masks = got["masks"]  # [L, kv_heads, n]
    kept = [[[int(i) for i in torch.nonzero(masks[l, h]).flatten()] for h in range(masks.shape[1])] for l in range(masks.shape[0])]
    g.write_json(out_dir / "engine_kvcompose.json", {
        "format": g.FORMAT, "generator": GENERATOR, **g.versions(),
        "model": "engine/llama", "compression_ratio": ENGINE_KVCOMPOSE_RATIO, "kept": kept,
    })
    log(f"  model/engine_kvcompose kept per layer {[len(k[0]) for k in kept]}")


# KVzip through the reference engine: kvpress on the same checkpoint (vocabulary 256, so the byte tokenizer is exact
# for its prompts), two reconstruction chunks.
ENGINE_KVZIP = dict(compression_ratio=0.5, chunk_size=128)


@torch.no_grad()
def generate_engine_kvzip(golden: Path, out_dir: Path, log) -> None:
    engine_dir = golden / "engine" / "llama"
    meta = json.loads((engine_dir / "engine.json").read_text())
    model = LlamaForCausalLM.from_pretrained(str(engine_dir / meta["checkpoint"]), attn_implementation="sdpa")
    model = model.to(torch.float32).eval()
    ids = torch.tensor([meta["prompt"]], dtype=torch.int64)
    press = KVzipPress(**ENGINE_KVZIP)
    got = {}
    original_post = press.compress_post

    def compress_post(m):
        got["scores"] = press.score_val[:, 0].clone()
        return original_post(m)

    press.compress_post = compress_post
    auto = kvzip_module.AutoTokenizer
    kvzip_module.AutoTokenizer = type("Tokenizers", (), {"from_pretrained": staticmethod(lambda *a, **k: ByteTokenizer())})
    try:
        with press(model):
            model(ids, past_key_values=DynamicCache(config=model.config), use_cache=True)
    finally:
        kvzip_module.AutoTokenizer = auto
        del press.compress_post
    n = ids.shape[1]
    kept = []
    for layer in model.model.layers:
        bi, hi, si = layer.self_attn.masked_key_indices
        masked = torch.zeros(model.config.num_key_value_heads, n, dtype=torch.bool)
        masked[hi, si] = True
        kept.append([[int(i) for i in torch.nonzero(~masked[h]).flatten()] for h in range(masked.shape[0])])
    g.write_json(out_dir / "engine_kvzip.json", {
        "format": g.FORMAT, "generator": GENERATOR, **g.versions(),
        "model": "engine/llama", "params": g.press_params(press), "tokenizer": "bytes, no chat template",
        "prompt_first": ByteTokenizer.encode("\n\nRepeat the previous context exactly.", "pt")[0].tolist(),
        "prompt_later": ByteTokenizer.encode("\n\nRepeat the part of the previous context exactly, starting with", "pt")[0].tolist(),
        "suffix": ByteTokenizer.encode("\n", "pt")[0].tolist(),
        "scores": g.TensorDir(out_dir).write("engine_kvzip_scores", got["scores"]),
        "kept": kept,
    })
    log(f"  model/engine_kvzip kept per layer and head {[[len(h) for h in k] for k in kept]}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory (tests/golden)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.float32)
    transformers.logging.set_verbosity_error()
    logging.getLogger("kvpress").setLevel(logging.ERROR)
    log = (lambda s: None) if args.quiet else (lambda s: print(s, flush=True))
    d = Path(args.out) / "more_presses" / "model"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    names = [generate_scenario(d, spec, log) for spec in SCENARIOS]
    generate_engine_kvcompose(Path(args.out), d, log)
    generate_engine_kvzip(Path(args.out), d, log)
    g.write_json(d / "index.json", {"format": g.FORMAT, "generator": GENERATOR, **g.versions(), "scenarios": names})
    return 0


if __name__ == "__main__":
    sys.exit(main())
