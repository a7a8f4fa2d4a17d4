#!/usr/bin/env python3
"""Writes the seed corpus of the GGUF reader's fuzz target (standard library only, deterministic):

  fuzz/corpus/fuzz_gguf/seed_golden_*   the small fixtures of tests/golden/gguf (every dequantised type, a
                                        big-endian file, Llama 3's rope_freqs)
  fuzz/corpus/fuzz_gguf/seed_model_*    tiny complete llama / qwen2 / qwen3 models (F32, F16, Q8_0, Q4_0 tensors;
                                        biases, q/k norms, tied and untied heads, RoPE scaling), so that mutations
                                        reach the model builder and the dequantisers
  fuzz/corpus/fuzz_gguf/seed_values     one key of every value type, arrays of each, nested arrays
  fuzz/corpus/fuzz_gguf/seed_v2         a version-2 file

Regression inputs (regression_*) are not written here: each is the exact input that failed.
    python3 tools/fuzz/make_gguf_seeds.py
"""
import pathlib
import shutil
import struct

ROOT = pathlib.Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "gguf"
OUT = ROOT / "fuzz" / "corpus" / "fuzz_gguf"

U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
PACK = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?", U64: "<Q", I64: "<q", F64: "<d"}
T_F32, T_F16, T_Q4_0, T_Q8_0 = 0, 1, 2, 8


def string(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def value(vtype, v):
    if vtype == STR:
        return string(v)
    if vtype == ARR:
        etype, items = v
        return struct.pack("<IQ", etype, len(items)) + b"".join(value(etype, x) for x in items)
    return struct.pack(PACK[vtype], v)


def gguf(kvs, tensors, version=3, align=32):
    """kvs: [(key, type, value)]; tensors: [(name, ggml type, dims innermost first, data bytes)]."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs))
    for key, vtype, v in kvs:
        out += string(key) + struct.pack("<I", vtype) + value(vtype, v)
    offset, blobs = 0, b""
    for name, ttype, dims, data in tensors:
        out += string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", ttype, offset)
        pad = (-len(data)) % align
        blobs += data + b"\0" * pad
        offset += len(data) + pad
    out += b"\0" * ((-len(out)) % align)
    return out + blobs


def f32(n, x=0.02):
    return struct.pack(f"<{n}f", *[x * ((i * 7) % 5 - 2) for i in range(n)])


def f16(n):
    return struct.pack(f"<{n}e", *[0.01 * ((i * 3) % 7 - 3) for i in range(n)])


def q8_0(rows, cols):
    return b"".join(struct.pack("<e", 0.001) + bytes((i * 11) % 256 for i in range(32)) for _ in range(rows * cols // 32))


def q4_0(rows, cols):
    return b"".join(struct.pack("<e", 0.01) + bytes((i * 37) % 256 for i in range(16)) for _ in range(rows * cols // 32))


def model(arch, hidden, heads, kv_heads, head_dim, inter, vocab, tied, quant, extra_kv=()):
    kvs = [("general.architecture", STR, arch), ("general.name", STR, f"seed-{arch}"),
           (f"{arch}.context_length", U32, 64), (f"{arch}.embedding_length", U32, hidden),
           (f"{arch}.block_count", U32, 1), (f"{arch}.feed_forward_length", U32, inter),
           (f"{arch}.attention.head_count", U32, heads), (f"{arch}.attention.head_count_kv", U32, kv_heads),
           (f"{arch}.attention.layer_norm_rms_epsilon", F32, 1e-5), (f"{arch}.rope.freq_base", F32, 10000.0),
           (f"{arch}.attention.key_length", U32, head_dim), (f"{arch}.vocab_size", U32, vocab), *extra_kv]

    def mat(name, rows, cols):
        if quant and cols % 32 == 0:
            return (name, T_Q8_0 if rows % 2 else T_Q4_0, [cols, rows], q8_0(rows, cols) if rows % 2 else q4_0(rows, cols))
        return (name, T_F16, [cols, rows], f16(rows * cols))

    def vec(name, n):
        return (name, T_F32, [n], f32(n, 1.0))

    q, kv = heads * head_dim, kv_heads * head_dim
    ts = [mat("token_embd.weight", vocab, hidden), vec("output_norm.weight", hidden)]
    if not tied:
        ts.append(mat("output.weight", vocab, hidden))
    p = "blk.0."
    ts += [vec(p + "attn_norm.weight", hidden), vec(p + "ffn_norm.weight", hidden), mat(p + "attn_q.weight", q, hidden),
           mat(p + "attn_k.weight", kv, hidden), mat(p + "attn_v.weight", kv, hidden), mat(p + "attn_output.weight", hidden, q)]
    if arch == "qwen2":
        ts += [vec(p + "attn_q.bias", q), vec(p + "attn_k.bias", kv), vec(p + "attn_v.bias", kv)]
    if arch == "qwen3":
        ts += [vec(p + "attn_q_norm.weight", head_dim), vec(p + "attn_k_norm.weight", head_dim)]
    ts += [mat(p + "ffn_gate.weight", inter, hidden), mat(p + "ffn_up.weight", inter, hidden), mat(p + "ffn_down.weight", hidden, inter)]
    return gguf(kvs, ts)


def main():
    if OUT.exists():
        for f in OUT.glob("seed_*"):
            f.unlink()
    OUT.mkdir(parents=True, exist_ok=True)
    for name in ("dequant", "big_endian", "llama3_rope"):
        shutil.copyfile(GOLDEN / f"{name}.gguf", OUT / f"seed_golden_{name}")
    seeds = {
        "model_llama_f16": model("llama", 8, 2, 1, 4, 8, 4, False, False),
        "model_llama_quant": model("llama", 32, 2, 1, 16, 32, 3, True, False),
        "model_qwen2_tied": model("qwen2", 8, 2, 2, 4, 8, 4, True, False),
        "model_qwen3_yarn": model("qwen3", 8, 2, 1, 8, 8, 4, False, False,
                                  [("qwen3.rope.scaling.type", STR, "yarn"), ("qwen3.rope.scaling.factor", F32, 4.0),
                                   ("qwen3.rope.scaling.original_context_length", U32, 16)]),
        "model_llama_linear": model("llama", 8, 2, 1, 4, 8, 4, True, False,
                                    [("llama.rope.scaling.type", STR, "linear"), ("llama.rope.scaling.factor", F32, 2.0),
                                     ("llama.rope.dimension_count", U32, 4)]),
        "values": gguf([("u8", U8, 200), ("i8", I8, -2), ("u16", U16, 60000), ("i16", I16, -3), ("u32", U32, 7), ("i32", I32, -4),
                        ("f32", F32, 0.5), ("bool", BOOL, True), ("str", STR, "text"), ("u64", U64, 2**64 - 1), ("i64", I64, -5),
                        ("f64", F64, 0.25), ("general.alignment", U32, 64),
                        ("ints", ARR, (I32, [1, -2, 3])), ("strings", ARR, (STR, ["a", "", "bc"])), ("floats", ARR, (F32, [1.5])),
                        ("nested", ARR, (ARR, [(BOOL, [False, True]), (BOOL, [])]))],
                       [("w", T_F32, [2, 2], f32(4))], align=64),
        "v2": gguf([("general.architecture", STR, "llama")], [("t", T_F16, [4], f16(4))], version=2),
    }
    for name, data in seeds.items():
        (OUT / f"seed_{name}").write_bytes(data)
    print(f"wrote {len(seeds) + 3} seeds to {OUT}")


if __name__ == "__main__":
    main()
