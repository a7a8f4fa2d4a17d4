// The engine's GGUF reader (examples/engine/kvc_engine/model_io/gguf.hpp, gguf_model.hpp) on files built in memory:
// every metadata value type, and every malformed input it must refuse with an error naming the key or
// tensor and the value.
#include <catch2/catch.hpp>

#include <cstring>
#include <string>
#include <vector>

#include "gguf_builder.hpp"
#include "kvc_engine/model_io/gguf_model.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using Catch::Matchers::Contains;
using kvc_engine::GgufFile;
using kvc_test::GgufBuilder;

namespace {

GgufFile parse(GgufBuilder::Bytes b) { return GgufFile(std::move(b), "t.gguf"); }

/// A valid one-layer llama: hidden 32, 2 query heads over 1 kv head of 16, intermediate 32, vocab 4.
GgufBuilder tiny_llama(bool with_rope_dims = true) {
  GgufBuilder b;
  b.str("general.architecture", "llama")
      .u32("llama.context_length", 64)
      .u32("llama.embedding_length", 32)
      .u32("llama.block_count", 1)
      .u32("llama.feed_forward_length", 32)
      .u32("llama.attention.head_count", 2)
      .u32("llama.attention.head_count_kv", 1)
      .f32("llama.attention.layer_norm_rms_epsilon", 1e-5F)
      .f32("llama.rope.freq_base", 10000.0F);
  if (with_rope_dims) b.u32("llama.rope.dimension_count", 16);
  auto const mat = [&](std::string const& n, std::uint64_t rows, std::uint64_t cols) {
    b.f32_tensor(n, {cols, rows}, std::vector<float>(rows * cols, 0.01F));
  };
  mat("token_embd.weight", 4, 32);
  b.f32_tensor("output_norm.weight", {32}, std::vector<float>(32, 1.0F));
  b.f32_tensor("blk.0.attn_norm.weight", {32}, std::vector<float>(32, 1.0F));
  b.f32_tensor("blk.0.ffn_norm.weight", {32}, std::vector<float>(32, 1.0F));
  mat("blk.0.attn_q.weight", 32, 32);
  mat("blk.0.attn_k.weight", 16, 32);
  mat("blk.0.attn_v.weight", 16, 32);
  mat("blk.0.attn_output.weight", 32, 32);
  mat("blk.0.ffn_gate.weight", 32, 32);
  mat("blk.0.ffn_up.weight", 32, 32);
  mat("blk.0.ffn_down.weight", 32, 32);
  return b;
}

/// A file with one key and one 32-element F32 tensor.
GgufBuilder small() {
  GgufBuilder b;
  b.u32("a.key", 7);
  b.f32_tensor("w", {32}, std::vector<float>(32, 1.0F));
  return b;
}

void put_u64(GgufBuilder::Bytes& b, std::size_t at, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) b[at + static_cast<std::size_t>(i)] = static_cast<unsigned char>(v >> (8 * i));
}

}  // namespace

TEST_CASE("GGUF reader: metadata of every value type, arrays and nested arrays", "[gguf]") {
  using B = GgufBuilder;
  GgufBuilder b;
  B::Bytes v;
  auto const scalar = [&](char const* key, std::uint32_t type, std::uint64_t bits, int n) {
    v.clear();
    B::put(v, bits, n);
    b.kv(key, type, v);
  };
  scalar("u8", 0, 200, 1);
  scalar("i8", 1, 0xfe, 1);
  scalar("u16", 2, 60000, 2);
  scalar("i16", 3, 0xfffd, 2);
  scalar("u32", 4, 4000000000U, 4);
  scalar("i32", 5, 0xfffffffcU, 4);
  b.f32("f32", 0.5F);
  scalar("bool", 7, 1, 1);
  b.str("str", "smollm");
  scalar("u64", 10, ~std::uint64_t{0}, 8);
  scalar("i64", 11, ~std::uint64_t{4}, 8);
  double const d = 0.25;
  std::uint64_t dbits = 0;
  std::memcpy(&dbits, &d, 8);
  scalar("f64", 12, dbits, 8);
  v.clear();  // array of 3 int32: 1, -2, 3
  B::put(v, 5, 4);
  B::put(v, 3, 8);
  for (std::uint32_t x : {1U, 0xfffffffeU, 3U}) B::put(v, x, 4);
  b.kv("ints", 9, v);
  v.clear();  // array of 2 strings
  B::put(v, 8, 4);
  B::put(v, 2, 8);
  B::put_string(v, "a b");
  B::put_string(v, "");
  b.kv("strings", 9, v);
  v.clear();  // array of 2 float32
  B::put(v, 6, 4);
  B::put(v, 2, 8);
  B::put_f32(v, 1.5F);
  B::put_f32(v, -2.0F);
  b.kv("floats", 9, v);
  v.clear();  // array of 1 array of 2 bools
  B::put(v, 9, 4);
  B::put(v, 1, 8);
  B::put(v, 7, 4);
  B::put(v, 2, 8);
  B::put(v, 0, 1);
  B::put(v, 1, 1);
  b.kv("nested", 9, v);
  GgufFile const f = parse(b.bytes());

  CHECK(f.get("u8").as_int() == 200);
  CHECK(f.get("i8").as_int() == -2);
  CHECK(f.get("u16").as_int() == 60000);
  CHECK(f.get("i16").as_int() == -3);
  CHECK(f.get("u32").as_uint() == 4000000000U);
  CHECK(f.get("i32").as_int() == -4);
  CHECK(f.get("f32").as_float() == 0.5);
  CHECK(f.get("bool").as_bool());
  CHECK(f.get("str").as_string() == "smollm");
  CHECK(f.get("u64").as_uint() == ~std::uint64_t{0});
  CHECK(f.get("i64").as_int() == -5);
  CHECK(f.get("f64").as_float() == 0.25);
  CHECK(f.get("ints").as_ints() == std::vector<std::int64_t>{1, -2, 3});
  CHECK(f.get("strings").as_strings() == std::vector<std::string>{"a b", ""});
  CHECK(f.get("floats").as_floats() == std::vector<double>{1.5, -2.0});
  REQUIRE(f.get("nested").as_arrays().size() == 1);
  CHECK(f.get("nested").as_arrays()[0].as_bools() == std::vector<bool>{false, true});
  CHECK(f.find("absent") == nullptr);

  SECTION("wrong accessors name the key and the type") {
    CHECK_THROWS_WITH(f.get("str").as_int(), Contains("GGUF metadata 'str' must be an integer, got string \"smollm\""));
    CHECK_THROWS_WITH(f.get("u64").as_int(), Contains("'u64' = 18446744073709551615 does not fit in int64"));
    CHECK_THROWS_WITH(f.get("i32").as_uint(), Contains("'i32' must not be negative, got -4"));
    CHECK_THROWS_WITH(f.get("ints").as_strings(), Contains("must be an array of strings, got array of int32 (3 elements)"));
    CHECK_THROWS_WITH(f.get("absent"), Contains("t.gguf has no metadata key 'absent'"));
  }
}

TEST_CASE("GGUF reader refuses malformed files, naming the key or tensor and the value", "[gguf]") {
  SECTION("not GGUF, version 1, unknown version") {
    GgufBuilder::Bytes b = small().bytes();
    b[0] = 'X';
    CHECK_THROWS_WITH(parse(b), Contains("is not a GGUF file"));
    CHECK_THROWS_WITH(parse(small().version(1).bytes()), Contains("GGUF version 1 (32-bit counts), which is not supported"));
    CHECK_THROWS_WITH(parse(small().version(4).bytes()), Contains("has GGUF version 4; versions 2 and 3 are supported"));
  }
  SECTION("every truncation of a valid file") {
    GgufBuilder::Bytes const full = tiny_llama().bytes();
    REQUIRE_NOTHROW(parse(full));
    for (std::size_t n = 0; n < full.size(); n += (n < 600 ? 1 : 97))
      CHECK_THROWS_AS(parse(GgufBuilder::Bytes(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(n))), kvcompress::Error);
    CHECK_THROWS_WITH(parse(GgufBuilder::Bytes(full.begin(), full.end() - 1)),
                      Contains("tensor 'blk.0.ffn_down.weight' (F32, 4096 bytes at offset"));
  }
  SECTION("unknown value type") {
    GgufBuilder b;
    b.kv("k.bad", 13, {0, 0, 0, 0});
    CHECK_THROWS_WITH(parse(b.bytes()), Contains("metadata 'k.bad' has unknown value type 13"));
  }
  SECTION("duplicate key, duplicate tensor") {
    CHECK_THROWS_WITH(parse(small().u32("a.key", 8).bytes()), Contains("metadata 'a.key' appears twice"));
    CHECK_THROWS_WITH(parse(small().f32_tensor("w", {32}, std::vector<float>(32, 0.0F)).bytes()),
                      Contains("tensor 'w' appears twice"));
  }
  SECTION("string and array lengths beyond the file, counts that overflow") {
    GgufBuilder b;
    GgufBuilder::Bytes v;
    GgufBuilder::put(v, 1000, 8);  // a 1000-byte string in a short file
    b.kv("s", 8, v);
    CHECK_THROWS_WITH(parse(b.bytes()), Contains("metadata 's' (1000 bytes of text)"));
    GgufBuilder a;
    v.clear();
    GgufBuilder::put(v, 10, 4);  // uint64 array of 2^61 elements
    GgufBuilder::put(v, std::uint64_t{1} << 61, 8);
    a.kv("arr", 9, v);
    CHECK_THROWS_WITH(parse(a.bytes()), Contains("metadata 'arr' claims 2305843009213693952 elements of uint64"));
    GgufBuilder::Bytes c = small().bytes();
    put_u64(c, 16, ~std::uint64_t{0});  // metadata count
    CHECK_THROWS_WITH(parse(c), Contains("metadata count 18446744073709551615 cannot fit"));
    c = small().bytes();
    put_u64(c, 8, std::uint64_t{1} << 40);  // tensor count
    CHECK_THROWS_WITH(parse(c), Contains("tensor count 1099511627776 cannot fit"));
    GgufBuilder n;
    n.kv("", 4, {0, 0, 0, 0});
    GgufBuilder::Bytes key_too_long = n.bytes();
    put_u64(key_too_long, 24, 70000);
    CHECK_THROWS_WITH(parse(key_too_long), Contains("metadata key 0 at byte 24 is 70000 bytes long, more than the 65535 allowed"));
  }
  SECTION("arrays nested too deep") {
    GgufBuilder b;
    GgufBuilder::Bytes v;
    for (int i = 0; i < 12; ++i) {
      GgufBuilder::put(v, 9, 4);
      GgufBuilder::put(v, 1, 8);
    }
    b.kv("deep", 9, v);
    CHECK_THROWS_WITH(parse(b.bytes()), Contains("nests arrays deeper than 8 levels"));
  }
  SECTION("a bool other than 0 or 1") {
    GgufBuilder b;
    b.kv("flag", 7, {2});
    CHECK_THROWS_WITH(parse(b.bytes()), Contains("metadata 'flag' is a bool of value 2 (must be 0 or 1)"));
  }
  SECTION("general.alignment") {
    CHECK_THROWS_WITH(parse(small().u32("general.alignment", 48).bytes()), Contains("general.alignment = 48 is not a power of two"));
    CHECK_THROWS_WITH(parse(small().f32("general.alignment", 32.0F).bytes()), Contains("general.alignment must be a uint32, got float32"));
  }
  SECTION("tensor infos: dimensions, types, blocks, overflow") {
    CHECK_THROWS_WITH(parse(GgufBuilder().tensor("w", 0, {1, 1, 1, 1, 1}, {}).bytes()), Contains("tensor 'w' has 5 dimensions (1 to 4)"));
    CHECK_THROWS_WITH(parse(GgufBuilder().tensor("w", 4, {32}, {}).bytes()), Contains("tensor 'w' has unknown ggml type 4"));
    CHECK_THROWS_WITH(parse(GgufBuilder().tensor("w", 12, {32}, {}).bytes()),
                      Contains("tensor 'w' of type Q4_K has innermost dimension 32, not a multiple of its block of 256"));
    CHECK_THROWS_WITH(parse(GgufBuilder().tensor("w", 0, {std::uint64_t{1} << 32, std::uint64_t{1} << 32}, {}).bytes()),
                      Contains("tensor 'w' has more than 2^63 - 1 elements (4294967296 x 4294967296 at dimension 1)"));
    CHECK_THROWS_WITH(parse(GgufBuilder().tensor("w", 0, {std::uint64_t{1} << 62}, {}).bytes()),
                      Contains("tensor 'w' of type F32 needs more than 2^63 - 1 bytes"));
    CHECK_THROWS_WITH(parse(GgufBuilder().tensor(std::string(65, 'n'), 0, {1}, {}).bytes()),
                      Contains("is 65 bytes long, more than the 64 allowed"));
  }
  SECTION("tensor data: unaligned, outside the file, overlapping") {
    GgufBuilder b;
    b.f32_tensor("a", {32}, std::vector<float>(32, 1.0F)).f32_tensor("b", {32}, std::vector<float>(32, 2.0F));
    GgufBuilder::Bytes const good = b.bytes();
    // Tensor infos start at byte 24: name (8 + 1), dims count (4), one dim (8), type (4), then the offset.
    std::size_t const off_a = 24 + 9 + 4 + 8 + 4, off_b = off_a + 8 + 9 + 4 + 8 + 4;
    GgufBuilder::Bytes c = good;
    put_u64(c, off_b, 100);
    CHECK_THROWS_WITH(parse(c), Contains("tensor 'b' has offset 100, not a multiple of the alignment 32"));
    c = good;
    put_u64(c, off_b, 1 << 20);
    CHECK_THROWS_WITH(parse(c), Contains("tensor 'b' (F32, 128 bytes at offset 1048576) reaches past the 256-byte data section"));
    c = good;
    put_u64(c, off_b, 96);
    CHECK_THROWS_WITH(parse(c), Contains("tensor 'b' at offset 96 overlaps tensor 'a' [0, 128)"));
    c = good;
    put_u64(c, off_a, 32);
    CHECK_THROWS_WITH(parse(c), Contains("tensor 'b' at offset 128 overlaps tensor 'a' [32, 160)"));
  }
}

TEST_CASE("GGUF model metadata: the llama permutation, RoPE fields, and errors naming the key", "[gguf]") {
  SECTION("a valid file loads, Q and K rows are un-permuted per head") {
    kvc_engine::ModelConfig const c = kvc_engine::gguf_model_config(parse(tiny_llama().bytes()));
    CHECK(c.head_dim == 16);
    CHECK(c.tie_word_embeddings);
    CHECK(c.vocab_size == 4);
    std::vector<float> w(8);  // 1 head, 8 rows of 1: GGUF rows 0..7 hold HF rows 0, 4, 1, 5, 2, 6, 3, 7
    for (int i = 0; i < 8; ++i) w[static_cast<std::size_t>(i)] = static_cast<float>(i);
    CHECK(kvc_engine::detail::unpermute_rows(w, 1, 8, 1) == std::vector<float>{0, 2, 4, 6, 1, 3, 5, 7});
  }
  SECTION("linear and yarn scaling") {
    kvc_engine::ModelConfig const lin = kvc_engine::gguf_model_config(
        parse(tiny_llama().str("llama.rope.scaling.type", "linear").f32("llama.rope.scaling.factor", 4.0F).bytes()));
    CHECK(lin.rope.type == kvcompress::RopeType::kLinear);
    CHECK(lin.rope.factor == 4.0);
    kvc_engine::ModelConfig const old = kvc_engine::gguf_model_config(parse(tiny_llama().f32("llama.rope.scale_linear", 2.0F).bytes()));
    CHECK(old.rope.type == kvcompress::RopeType::kLinear);
    CHECK(old.rope.factor == 2.0);
    kvc_engine::ModelConfig const yarn = kvc_engine::gguf_model_config(parse(tiny_llama()
                                                                                  .str("llama.rope.scaling.type", "yarn")
                                                                                  .f32("llama.rope.scaling.factor", 4.0F)
                                                                                  .u32("llama.rope.scaling.original_context_length", 16)
                                                                                  .f32("llama.rope.scaling.yarn_beta_fast", 16.0F)
                                                                                  .bytes()));
    CHECK(yarn.rope.type == kvcompress::RopeType::kYarn);
    CHECK(yarn.rope.factor == 4.0);
    CHECK(yarn.rope.original_max_position_embeddings == 16);
    CHECK(yarn.rope.beta_fast == 16.0);
    CHECK(yarn.rope.beta_slow == 1.0);
  }
  SECTION("errors") {
    auto const config = [](GgufBuilder const& b) { return kvc_engine::gguf_model_config(parse(b.bytes())); };
    CHECK_THROWS_WITH(config(GgufBuilder().str("general.architecture", "gemma")),
                      Contains("general.architecture 'gemma' is not supported (llama, mistral, qwen2, qwen3)"));
    CHECK_THROWS_WITH(config(GgufBuilder().str("general.architecture", "llama")), Contains("metadata 'llama.embedding_length' is missing"));
    CHECK_THROWS_WITH(config(tiny_llama(false).u32("llama.rope.dimension_count", 8).u32("llama.attention.key_length", 16)),
                      Contains("llama.rope.dimension_count = 8 rotates part of head_dim = 16; partial rotary is not supported"));
    CHECK_THROWS_WITH(config(tiny_llama().f32("llama.rope.scaling.alpha", 2.0F)),
                      Contains("metadata 'llama.rope.scaling.alpha' is a RoPE field the engine does not support"));
    CHECK_THROWS_WITH(config(tiny_llama().str("llama.rope.scaling.type", "longrope")),
                      Contains("llama.rope.scaling.type = 'longrope' is not supported (none, linear, yarn)"));
    CHECK_THROWS_WITH(config(tiny_llama()
                                 .str("llama.rope.scaling.type", "yarn")
                                 .u32("llama.rope.scaling.original_context_length", 16)
                                 .f32("llama.rope.scaling.attn_factor", 0.5F)),
                      Contains("llama.rope.scaling.attn_factor = 0.5 is not supported (only 1"));
    CHECK_THROWS_WITH(config(tiny_llama().u32("llama.vocab_size", 5)),
                      Contains("llama.vocab_size = 5 but token_embd.weight has 4 rows"));
    GgufBuilder per_layer;
    GgufBuilder::Bytes v;
    GgufBuilder::put(v, 4, 4);
    GgufBuilder::put(v, 1, 8);
    GgufBuilder::put(v, 1, 4);
    per_layer.str("general.architecture", "llama").u32("llama.embedding_length", 32).u32("llama.block_count", 1)
        .u32("llama.feed_forward_length", 32).u32("llama.attention.head_count", 2).kv("llama.attention.head_count_kv", 9, v);
    CHECK_THROWS_WITH(config(per_layer), Contains("metadata 'llama.attention.head_count_kv' is an array of uint32 of 1 (per-layer values"));
  }
  SECTION("tensors the metadata implies: shape and type") {
    GgufBuilder b = tiny_llama();
    b.f32_tensor("output.weight", {32, 5}, std::vector<float>(160, 0.0F));
    GgufFile const f = parse(b.bytes());
    kvc_engine::detail::GgufTensors const ts(f);
    CHECK_THROWS_WITH(ts.take("output.weight", {4, 32}), Contains("tensor 'output.weight' has shape [5, 32], the metadata implies [4, 32]"));
    CHECK_THROWS_WITH(ts.take("blk.0.attn_q.bias", {32}, " (why)"), Contains("has no tensor 'blk.0.attn_q.bias' (why)"));
    GgufFile const iq = parse(GgufBuilder().tensor("w", 16, {256}, GgufBuilder::Bytes(66, 0)).bytes());
    CHECK_THROWS_WITH(kvc_engine::dequantize_tensor(iq, iq.tensor("w")),
                      Contains("tensor 'w' has ggml type IQ2_XXS (16), which the engine cannot dequantise"));
  }
}

}  // namespace KVC_TEST_TU
