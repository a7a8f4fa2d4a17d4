// The engine's packed-key cache mode (ThinK): a layer whose first entries keep some key channels, packed, and
// whose later entries keep all of them. Attention over it must equal a double-precision attention over full
// keys whose dropped channels are zero (kvpress's ThinK zeroes them in place), with later keys whole; the
// memory of the packed keys' full width goes; growing the cache keeps both parts; bad packings are errors.
#include <catch2/catch.hpp>

#include <cmath>
#include <random>
#include <vector>

#include "kvc_engine/forward/attention.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using Catch::Matchers::Contains;

namespace {

constexpr std::int64_t kLayers = 2, kKvHeads = 2, kD = 8, kKept = 3;

/// A cache whose layer 1 holds `lengths` entries per kv head, random keys and values; `full` keeps every key
/// [kv_heads, capacity, d] with dropped channels as they were.
struct Filled {
  kvc_engine::KVCache cache;
  std::vector<float> full_keys;  // [kv_heads, capacity, d]
  std::vector<std::int32_t> lengths;
};

template <std::int64_t D = kD>
Filled filled(std::vector<std::int32_t> lengths, std::int64_t capacity, std::mt19937& gen) {
  Filled f{kvc_engine::KVCache(kLayers, kKvHeads, D, capacity), {}, lengths};
  std::normal_distribution<float> normal;
  f.full_keys.assign(static_cast<std::size_t>(kKvHeads * capacity * D), 0.0f);
  for (std::int64_t g = 0; g < kKvHeads; ++g) {
    f.cache.length_ref(1, g) = lengths[static_cast<std::size_t>(g)];
    for (std::int64_t i = 0; i < lengths[static_cast<std::size_t>(g)] * D; ++i) {
      f.full_keys[static_cast<std::size_t>(g * capacity * D + i)] = f.cache.keys(1, g)[i] = normal(gen);
      f.cache.values(1, g)[i] = normal(gen);
    }
  }
  return f;
}

/// ThinK's packed layout of `full` [kv_heads, capacity, d] at `channels` [kv_heads, kept].
template <std::int64_t D = kD, std::int64_t Kept = kKept>
std::vector<float> pack(std::vector<float> const& full, std::vector<std::int32_t> const& channels, std::int64_t capacity) {
  std::vector<float> out(static_cast<std::size_t>(kKvHeads * capacity * Kept));
  for (std::int64_t g = 0; g < kKvHeads; ++g)
    for (std::int64_t i = 0; i < capacity; ++i)
      for (std::int64_t c = 0; c < Kept; ++c)
        out[static_cast<std::size_t>((g * capacity + i) * Kept + c)] =
            full[static_cast<std::size_t>((g * capacity + i) * D + channels[static_cast<std::size_t>(g * Kept + c)])];
  return out;
}

/// Packs layer 1 of a cache holding `prefill` entries per kv head at `channels` [kv_heads, Kept], appends
/// n entries, checks attention of n tokens against zeroed-channel keys, then again after the cache grew to
/// `grown` slots.
template <std::int64_t D, std::int64_t Kept>
void check_packed_attention(std::int64_t q_heads, std::int64_t n, std::vector<std::int32_t> const& prefill,
                            std::vector<std::int32_t> const& channels, std::int64_t capacity, std::int64_t grown) {
  std::mt19937 gen(11);
  std::normal_distribution<float> normal;
  Filled f = filled<D>(prefill, capacity, gen);
  std::int64_t const allocated = f.cache.bytes_allocated(), in_use = f.cache.bytes_in_use();
  f.cache.pack_keys(1, Kept, channels, pack<D, Kept>(f.full_keys, channels, capacity));
  // Layer 1's keys shrink to the slots after the fewest packed entries, plus the packed keys.
  std::int64_t const fewest = std::min(prefill[0], prefill[1]), most = std::max(prefill[0], prefill[1]);
  CHECK(allocated - f.cache.bytes_allocated() == (fewest * D - most * Kept) * kKvHeads * 4);
  CHECK(in_use - f.cache.bytes_in_use() == (prefill[0] + prefill[1]) * (D - Kept) * 4);
  CHECK(f.cache.kept_channels(0) == 0);
  CHECK(f.cache.kept_channels(1) == Kept);
  CHECK(f.cache.packed_length(1, 0) == prefill[0]);
  CHECK(f.cache.packed_length(1, 1) == prefill[1]);

  // The zeroed-channel keys kvpress would hold, then a few later entries (appended, then a grown cache).
  std::vector<std::vector<double>> ref_keys(kKvHeads), ref_values(kKvHeads);  // [entries, d] per kv head
  for (std::int64_t g = 0; g < kKvHeads; ++g)
    for (std::int64_t i = 0; i < prefill[static_cast<std::size_t>(g)]; ++i)
      for (std::int64_t c = 0; c < D; ++c) {
        bool kept = false;
        for (std::int64_t k = 0; k < Kept; ++k) kept = kept || channels[static_cast<std::size_t>(g * Kept + k)] == c;
        ref_keys[static_cast<std::size_t>(g)].push_back(kept ? f.full_keys[static_cast<std::size_t>((g * capacity + i) * D + c)] : 0.0);
        ref_values[static_cast<std::size_t>(g)].push_back(f.cache.values(1, g)[i * D + c]);
      }
  std::vector<std::int32_t> first_new(kKvHeads);
  auto append = [&](std::int64_t count) {
    for (std::int64_t g = 0; g < kKvHeads; ++g) {
      std::int32_t& len = f.cache.length_ref(1, g);
      first_new[static_cast<std::size_t>(g)] = len;
      float* keys = f.cache.keys(1, g) + (len - f.cache.packed_length(1, g)) * D;
      for (std::int64_t i = 0; i < count * D; ++i) {
        keys[i] = normal(gen);
        f.cache.values(1, g)[len * D + i] = normal(gen);
        ref_keys[static_cast<std::size_t>(g)].push_back(keys[i]);
        ref_values[static_cast<std::size_t>(g)].push_back(f.cache.values(1, g)[len * D + i]);
      }
      len = static_cast<std::int32_t>(len + count);
    }
  };
  auto check_attention = [&](char const* when) {
    std::vector<float> q(static_cast<std::size_t>(n * q_heads * D));
    for (float& x : q) x = normal(gen);
    kvc_engine::ThreadPool pool(2);
    std::vector<std::vector<float>> scratch(static_cast<std::size_t>(pool.size()));
    std::vector<float> out(q.size());
    kvc_engine::causal_attention(pool, f.cache, 1, q.data(), n, q_heads, first_new, out.data(), scratch);
    double worst = 0.0;
    for (std::int64_t t = 0; t < n; ++t)
      for (std::int64_t j = 0; j < q_heads; ++j) {
        std::size_t const g = static_cast<std::size_t>(j / (q_heads / kKvHeads));
        std::int64_t const visible = first_new[g] + t + 1;
        std::vector<double> w(static_cast<std::size_t>(visible));
        double m = -INFINITY, sum = 0.0;
        for (std::int64_t s = 0; s < visible; ++s) {
          double dot = 0.0;
          for (std::int64_t c = 0; c < D; ++c)
            dot += static_cast<double>(q[static_cast<std::size_t>((t * q_heads + j) * D + c)]) * ref_keys[g][static_cast<std::size_t>(s * D + c)];
          w[static_cast<std::size_t>(s)] = dot / std::sqrt(static_cast<double>(D));
          m = std::max(m, w[static_cast<std::size_t>(s)]);
        }
        for (double& x : w) sum += (x = std::exp(x - m));
        for (std::int64_t c = 0; c < D; ++c) {
          double o = 0.0;
          for (std::int64_t s = 0; s < visible; ++s) o += w[static_cast<std::size_t>(s)] / sum * ref_values[g][static_cast<std::size_t>(s * D + c)];
          worst = std::max(worst, std::abs(o - out[static_cast<std::size_t>((t * q_heads + j) * D + c)]));
        }
      }
    INFO(when);
    CHECK(worst < 1e-5);
  };
  append(n);
  check_attention("a chunk after the packing");
  f.cache.reserve(grown);  // grows: the packed keys and the full-width later ones move
  CHECK(f.cache.packed_length(1, 0) == prefill[0]);
  append(n);
  check_attention("after the cache grew");
}

}  // namespace

TEST_CASE("engine packed keys: attention equals attention over zeroed channels, later keys whole", "[engine][attention]") {
  SECTION("a few tokens, row by row") {  // kv heads hold different numbers of entries when packed
    check_packed_attention<8, 3>(4, 3, {21, 17}, {0, 4, 7, 1, 2, 6}, 40, 90);
  }
  SECTION("a chunk of many query rows: the register-blocked tile, kept channels not whole vectors") {
    std::vector<std::int32_t> channels;  // every other channel of kv head 0, the first 13 of kv head 1
    for (std::int32_t c = 0; c < 26; c += 2) channels.push_back(c);
    for (std::int32_t c = 0; c < 13; ++c) channels.push_back(c);
    check_packed_attention<32, 13>(6, 40, {300, 170}, channels, 400, 700);
  }
}

TEST_CASE("engine packed keys: bad packings and full-key readers of a packed layer are errors", "[engine][attention]") {
  std::int64_t const capacity = 16;
  std::mt19937 gen(3);
  Filled f = filled({5, 4}, capacity, gen);
  std::vector<std::int32_t> const channels{0, 4, 7, 1, 2, 6};
  std::vector<float> const packed = pack(f.full_keys, channels, capacity);
  SECTION("kept 0") {
    CHECK_THROWS_WITH(f.cache.pack_keys(1, 0, {}, {}), Contains("pack_keys: kept = 0 is outside [1, head_dim = 8]"));
  }
  SECTION("kept past head_dim") {
    CHECK_THROWS_WITH(f.cache.pack_keys(1, 9, std::vector<std::int32_t>(18), std::vector<float>(2 * capacity * 9)),
                      Contains("pack_keys: kept = 9 is outside [1, head_dim = 8]"));
  }
  SECTION("a channel out of range") {
    std::vector<std::int32_t> bad = channels;
    bad[4] = 8;
    CHECK_THROWS_WITH(f.cache.pack_keys(1, kKept, bad, packed), Contains("pack_keys: channels[1, 1] = 8 is outside [0, head_dim = 8)"));
    bad[4] = 2;
    bad[0] = -1;
    CHECK_THROWS_WITH(f.cache.pack_keys(1, kKept, bad, packed), Contains("pack_keys: channels[0, 0] = -1 is outside [0, head_dim = 8)"));
  }
  SECTION("channels not ascending") {
    std::vector<std::int32_t> bad{0, 7, 4, 1, 2, 6};
    CHECK_THROWS_WITH(f.cache.pack_keys(1, kKept, bad, packed),
                      Contains("kv head 0's channels must be strictly ascending, channels[0, 2] = 4 follows 7"));
    bad = {0, 4, 7, 1, 1, 6};
    CHECK_THROWS_WITH(f.cache.pack_keys(1, kKept, bad, packed),
                      Contains("kv head 1's channels must be strictly ascending, channels[1, 1] = 1 follows 1"));
  }
  SECTION("wrong sizes") {
    CHECK_THROWS_WITH(f.cache.pack_keys(1, kKept, {0, 4, 7}, packed), Contains("channels holds 3 indices, kv_heads × kept = 6"));
    CHECK_THROWS_WITH(f.cache.pack_keys(1, kKept, channels, std::vector<float>(10)),
                      Contains("keys holds 10 floats, kv_heads × capacity × kept = 96"));
  }
  SECTION("packed twice, or read as full keys") {
    f.cache.pack_keys(1, kKept, channels, packed);
    CHECK_THROWS_WITH(f.cache.pack_keys(1, kKept, channels, packed), Contains("layer 1's keys are already packed (3 channels)"));
    CHECK_THROWS_WITH(f.cache.view(1), Contains("layer 1's keys are packed (3 of 8 channels, ThinK): a press that reads the full keys"));
    CHECK_NOTHROW(f.cache.view(0));
  }
  SECTION("a chunk inside the packed entries") {
    f.cache.pack_keys(1, kKept, channels, packed);
    kvc_engine::ThreadPool pool(1);
    std::vector<std::vector<float>> scratch(1);
    std::vector<float> q(2 * kD), out(q.size());
    CHECK_THROWS_WITH(kvc_engine::causal_attention(pool, f.cache, 1, q.data(), 1, 2, {4, 3}, out.data(), scratch),
                      Contains("kv head 0 of layer 1 holds 5 packed entries, past the chunk's first slot 4"));
  }
  CHECK(f.cache.length(1, 0) == 5);  // a refused packing changes nothing
}

}  // namespace KVC_TEST_TU
