#!/usr/bin/env python3
"""Writes the seed corpora of the engine-reader fuzz targets (standard library only, deterministic):

  fuzz/corpus/fuzz_safetensors/seed_*   small files cut from the golden checkpoints in tests/golden/engine
                                        (their real names, dtypes, metadata and bytes), and hand-written
                                        edge cases, each as a whole file and as "header NUL data" (the
                                        harness's second form, see fuzz/fuzz_safetensors.cpp)
  fuzz/corpus/fuzz_config/seed_*        the checkpoints' config.json files, and one config per RoPE
                                        variant and header form, plus hand-written edge cases

Regression inputs (regression_*) are not written here: each is the exact input that failed.
    python3 tools/fuzz/make_engine_seeds.py
"""
import json
import pathlib
import struct

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHECKPOINTS = ROOT / "tests" / "golden" / "engine"
OUT_ST = ROOT / "fuzz" / "corpus" / "fuzz_safetensors"
OUT_CFG = ROOT / "fuzz" / "corpus" / "fuzz_config"


def read_safetensors(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def header_text(header):
    return json.dumps(header, separators=(",", ":")).encode()


def whole(header_bytes, data):
    return struct.pack("<Q", len(header_bytes)) + header_bytes + data


def framed(header_bytes, data):
    return header_bytes + b"\0" + data


def small_file(header, data, count):
    """The `count` smallest tensors of a checkpoint (norm weights, biases), re-packed without holes."""
    entries = sorted((k for k in header if k != "__metadata__"), key=lambda k: (header[k]["data_offsets"][1] - header[k]["data_offsets"][0], k))
    out_header = {"__metadata__": header["__metadata__"]} if "__metadata__" in header else {}
    out_data = b""
    for name in entries[:count]:
        e = header[name]
        b, end = e["data_offsets"]
        out_header[name] = {"dtype": e["dtype"], "shape": e["shape"], "data_offsets": [len(out_data), len(out_data) + end - b]}
        out_data += data[b:end]
    return header_text(out_header), out_data


def tensor(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def safetensors_seeds():
    seeds = {}
    for ckpt in sorted(CHECKPOINTS.glob("*/checkpoint*")):
        tag = f"{ckpt.parent.name}_{ckpt.name}"
        header, data = read_safetensors(ckpt / "model.safetensors")
        h, d = small_file(header, data, 3)
        seeds[f"{tag}_small"] = whole(h, d)
        seeds[f"{tag}_small_framed"] = framed(h, d)
        # The real header over a data section cut to 64 bytes: truncated data.
        full = header_text(header)
        seeds[f"{tag}_truncated"] = whole(full, data[:64])

    sizes = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
             "I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8}
    every_dtype, off = {}, 0
    for dt, size in sizes.items():
        every_dtype[dt.lower()] = tensor(dt, [2], off, off + 2 * size)
        off += 2 * size
    f32_one = struct.pack("<f", 1.5)
    edge = {
        "empty_header": ({}, b""),
        "every_dtype": (every_dtype, bytes(range(off))),
        "scalar": ({"s": tensor("F32", [], 0, 4)}, f32_one),
        "zero_sized": ({"z": tensor("F32", [0, 3], 0, 0), "a": tensor("F16", [1], 0, 2)}, b"\0\x3c"),
        "metadata_only": ({"__metadata__": {"format": "pt", "k": ""}}, b""),
        "unknown_dtype": ({"a": tensor("F12", [1], 0, 4)}, f32_one),
        "dtype_not_string": ({"a": {"dtype": 7, "shape": [1], "data_offsets": [0, 4]}}, f32_one),
        "offsets_outside": ({"a": tensor("F32", [1], 1000, 1004)}, f32_one),
        "offsets_reversed": ({"a": tensor("F32", [0], 4, 0)}, f32_one),
        "offsets_max": ({"a": tensor("U8", [1], 18446744073709551615, 18446744073709551615)}, b"\0"),
        "huge_shape": ({"a": tensor("F32", [4294967296, 4294967296], 0, 4)}, f32_one),
        "huge_shape_u8": ({"a": tensor("U8", [9223372036854775807, 1], 0, 1)}, b"\0"),
        "shape_mismatch": ({"a": tensor("F32", [2, 3], 0, 20)}, bytes(20)),
        "shape_negative": ({"a": tensor("F32", [-1], 0, 4)}, f32_one),
        "shape_fraction": ({"a": tensor("F32", [1.5], 0, 4)}, f32_one),
        "overlap": ({"a": tensor("F32", [2], 0, 8), "b": tensor("F32", [2], 4, 12)}, bytes(12)),
        "hole": ({"a": tensor("F32", [1], 4, 8)}, bytes(8)),
        "trailing": ({"a": tensor("F32", [1], 0, 4)}, bytes(6)),
        "unknown_field": ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "scale": 2}}, f32_one),
        "missing_field": ({"a": {"shape": [1], "data_offsets": [0, 4]}}, f32_one),
        "metadata_number": ({"__metadata__": {"format": 1}}, b""),
        "bf16_f16_f32": ({"b": tensor("BF16", [2], 0, 4), "h": tensor("F16", [1, 2], 4, 8), "f": tensor("F32", [1], 8, 12)},
                         b"\xc0\x3f\x20\xc0\x00\x3c\x00\xc5" + f32_one),
    }
    for name, (header, data) in edge.items():
        h = header_text(header)
        seeds[f"edge_{name}"] = framed(h, data)
        seeds[f"edge_{name}_whole"] = whole(h, data)
    # Length fields that lie: past the end, above the format's limit, zero; a file shorter than 8 bytes;
    # a header that is not JSON, not an object, or nested deeper than any valid one.
    seeds["edge_length_past_end"] = struct.pack("<Q", 64) + b"{}"
    seeds["edge_length_above_limit"] = struct.pack("<Q", 100_000_001) + b"{}"
    seeds["edge_length_max"] = struct.pack("<Q", 2**64 - 1) + b"{}"
    seeds["edge_length_zero"] = struct.pack("<Q", 0)
    seeds["edge_short"] = b"\x02\0\0\0"
    seeds["edge_not_json"] = framed(b'{"a":{"dtype":"F32",', b"")
    seeds["edge_not_object"] = framed(b"[1,2]", b"")
    seeds["edge_deep"] = framed(b'{"a":' + b"[" * 64 + b"]" * 64 + b"}", b"")
    seeds["edge_invalid_utf8_name"] = framed(b'{"\xff\xfe":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"\0")
    return seeds


def config_seeds():
    seeds = {}
    base = None
    for ckpt in sorted(CHECKPOINTS.glob("*/checkpoint*")):
        text = (ckpt / "config.json").read_bytes()
        seeds[f"{ckpt.parent.name}_{ckpt.name}"] = text
        if ckpt.parent.name == "llama" and ckpt.name == "checkpoint":
            base = json.loads(text)
    # Only the fields the reader reads, so that mutations land on them.
    base = {k: base[k] for k in ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                 "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
                                 "max_position_embeddings", "hidden_act", "tie_word_embeddings", "attention_bias",
                                 "mlp_bias")}

    def with_rope(key, rope, **top):
        c = dict(base)
        c.update(top)
        if key is not None:
            c[key] = rope
        return json.dumps(c, indent=1).encode()

    variants = {
        "default": {"rope_type": "default", "rope_theta": 10000.0},
        "linear": {"rope_type": "linear", "rope_theta": 500000.0, "factor": 4.0},
        "dynamic": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
        "llama3": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
        "yarn": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 128,
                 "attention_factor": 0.0, "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 0.707, "mscale_all_dim": 0.707,
                 "truncate": False},
        "yarn_defaults": {"rope_type": "yarn", "rope_theta": 10000.0, "original_max_position_embeddings": 128},
    }
    for name, rope in variants.items():
        seeds[f"rope_parameters_{name}"] = with_rope("rope_parameters", rope)
        old = {("type" if k == "rope_type" else k): v for k, v in rope.items() if k != "rope_theta"}
        seeds[f"rope_scaling_{name}"] = with_rope("rope_scaling", old, rope_theta=rope["rope_theta"])
    seeds["rope_scaling_null"] = with_rope("rope_scaling", None, rope_theta=10000.0)
    seeds["rope_theta_missing"] = with_rope("rope_parameters", {"rope_type": "default"})
    seeds["rope_partial_rotary"] = with_rope("rope_parameters", {"rope_type": "default", "rope_theta": 1e4,
                                                                 "partial_rotary_factor": 0.5})
    seeds["rope_per_layer_type"] = with_rope("rope_parameters", {"full_attention": {"rope_type": "default", "rope_theta": 1e4}})
    seeds["rope_unknown_type"] = with_rope("rope_parameters", {"rope_type": "longrope", "rope_theta": 1e4})
    seeds["yarn_top_level_original_max"] = with_rope("rope_parameters", {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0},
                                                     original_max_position_embeddings=256)
    seeds["qwen2_sliding"] = with_rope("rope_parameters", variants["default"], model_type="qwen2", use_sliding_window=True,
                                       sliding_window=128)
    seeds["mistral_sliding"] = with_rope("rope_parameters", variants["default"], model_type="mistral", sliding_window=4096)
    seeds["qwen3_biases"] = with_rope("rope_parameters", variants["default"], model_type="qwen3", attention_bias=True)
    seeds["heads_not_divisible"] = with_rope("rope_parameters", variants["default"], num_key_value_heads=3)
    seeds["head_dim_odd"] = with_rope("rope_parameters", variants["default"], head_dim=15)
    seeds["head_dim_null"] = with_rope("rope_parameters", variants["default"], head_dim=None)
    seeds["large_values"] = with_rope("rope_parameters", variants["default"], vocab_size=1099511627776,
                                      max_position_embeddings=4611686018427387904)
    seeds["mistyped"] = with_rope("rope_parameters", variants["default"], hidden_size="64", tie_word_embeddings=1)
    seeds["not_object"] = b"[1, 2, 3]"
    seeds["not_json"] = b'{"model_type": '
    return seeds


def write(out, seeds):
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("seed_*"):
        old.unlink()
    for name, data in seeds.items():
        (out / f"seed_{name}").write_bytes(data)
    print(f"{out.relative_to(ROOT)}: {len(seeds)} seeds, {sum(len(d) for d in seeds.values())} bytes")


if __name__ == "__main__":
    write(OUT_ST, safetensors_seeds())
    write(OUT_CFG, config_seeds())
