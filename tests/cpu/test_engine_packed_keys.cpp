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

Filled filled(std::vector<std::int32_t> lengths, std::int64_t capacity, std::mt19937& gen) {
  Filled f{kvc_engine::KVCache(kLayers, kKvHeads, kD, capacity), {}, lengths};
  std::normal_distribution<float> normal;
  f.full_keys.assign(static_cast<std::size_t>(kKvHeads * capacity * kD), 0.0f);
  for (std::int64_t g = 0; g < kKvHeads; ++g) {
    f.cache.length_ref(1, g) = lengths[static_cast<std::size_t>(g)];
    for (std::int64_t i = 0; i < lengths[static_cast<std::size_t>(g)] * kD; ++i) {
      f.full_keys[static_cast<std::size_t>(g * capacity * kD + i)] = f.cache.keys(1, g)[i] = normal(gen);
      f.cache.values(1, g)[i] = normal(gen);
    }
  }
  return f;
}

/// ThinK's packed layout of `full` [kv_heads, capacity, d] at `channels` [kv_heads, kept].
std::vector<float> pack(std::vector<float> const& full, std::vector<std::int32_t> const& channels, std::int64_t capacity) {
  std::vector<float> out(static_cast<std::size_t>(kKvHeads * capacity * kKept));
  for (std::int64_t g = 0; g < kKvHeads; ++g)
    for (std::int64_t i = 0; i < capacity; ++i)
      for (std::int64_t c = 0; c < kKept; ++c)
        out[static_cast<std::size_t>((g * capacity + i) * kKept + c)] =
            full[static_cast<std::size_t>((g * capacity + i) * kD + channels[static_cast<std::size_t>(g * kKept + c)])];
  return out;
}

}  // namespace

TEST_CASE("engine packed keys: attention equals attention over zeroed channels, later keys whole", "[engine][attention]") {
  std::int64_t const q_heads = 4, n = 3, capacity = 40;
  std::mt19937 gen(11);
  std::normal_distribution<float> normal;
  std::vector<std::int32_t> const prefill{21, 17};  // kv heads hold different numbers of entries when packed
  Filled f = filled(prefill, capacity, gen);
  std::vector<std::int32_t> const channels{0, 4, 7, 1, 2, 6};  // [kv_heads, kept]
  std::int64_t const allocated = f.cache.bytes_allocated(), in_use = f.cache.bytes_in_use();
  f.cache.pack_keys(1, kKept, channels, pack(f.full_keys, channels, capacity));
  // Layer 1's keys shrink to the slots after the fewest packed entries, plus the packed keys.
  CHECK(allocated - f.cache.bytes_allocated() == (17 * kD - 21 * kKept) * kKvHeads * 4);
  CHECK(in_use - f.cache.bytes_in_use() == (21 + 17) * (kD - kKept) * 4);
  CHECK(f.cache.kept_channels(0) == 0);
  CHECK(f.cache.kept_channels(1) == kKept);
  CHECK(f.cache.packed_length(1, 0) == 21);
  CHECK(f.cache.packed_length(1, 1) == 17);

  // The zeroed-channel keys kvpress would hold, then a few later entries (appended, then a grown cache).
  std::vector<std::vector<double>> ref_keys(kKvHeads), ref_values(kKvHeads);  // [entries, d] per kv head
  for (std::int64_t g = 0; g < kKvHeads; ++g)
    for (std::int64_t i = 0; i < prefill[static_cast<std::size_t>(g)]; ++i)
      for (std::int64_t c = 0; c < kD; ++c) {
        bool kept = false;
        for (std::int64_t k = 0; k < kKept; ++k) kept = kept || channels[static_cast<std::size_t>(g * kKept + k)] == c;
        ref_keys[static_cast<std::size_t>(g)].push_back(kept ? f.full_keys[static_cast<std::size_t>((g * capacity + i) * kD + c)] : 0.0);
        ref_values[static_cast<std::size_t>(g)].push_back(f.cache.values(1, g)[i * kD + c]);
      }
  std::vector<std::int32_t> first_new(kKvHeads);
  auto append = [&](std::int64_t count) {
    for (std::int64_t g = 0; g < kKvHeads; ++g) {
      std::int32_t& len = f.cache.length_ref(1, g);
      first_new[static_cast<std::size_t>(g)] = len;
      float* keys = f.cache.keys(1, g) + (len - f.cache.packed_length(1, g)) * kD;
      for (std::int64_t i = 0; i < count * kD; ++i) {
        keys[i] = normal(gen);
        f.cache.values(1, g)[len * kD + i] = normal(gen);
        ref_keys[static_cast<std::size_t>(g)].push_back(keys[i]);
        ref_values[static_cast<std::size_t>(g)].push_back(f.cache.values(1, g)[len * kD + i]);
      }
      len = static_cast<std::int32_t>(len + count);
    }
  };
  auto check_attention = [&](char const* when) {
    std::vector<float> q(static_cast<std::size_t>(n * q_heads * kD));
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
          for (std::int64_t c = 0; c < kD; ++c)
            dot += static_cast<double>(q[static_cast<std::size_t>((t * q_heads + j) * kD + c)]) * ref_keys[g][static_cast<std::size_t>(s * kD + c)];
          w[static_cast<std::size_t>(s)] = dot / std::sqrt(static_cast<double>(kD));
          m = std::max(m, w[static_cast<std::size_t>(s)]);
        }
        for (double& x : w) sum += (x = std::exp(x - m));
        for (std::int64_t c = 0; c < kD; ++c) {
          double o = 0.0;
          for (std::int64_t s = 0; s < visible; ++s) o += w[static_cast<std::size_t>(s)] / sum * ref_values[g][static_cast<std::size_t>(s * kD + c)];
          worst = std::max(worst, std::abs(o - out[static_cast<std::size_t>((t * q_heads + j) * kD + c)]));
        }
      }
    INFO(when);
    CHECK(worst < 1e-5);
  };
  append(n);
  check_attention("a chunk after the packing");
  f.cache.reserve(90);  // grows: the packed keys and the full-width later ones move
  CHECK(f.cache.packed_length(1, 0) == 21);
  append(n);
  check_attention("after the cache grew");
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
