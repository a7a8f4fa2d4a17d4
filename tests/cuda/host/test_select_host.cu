// The multi-CTA radix select (include/kvcompress/cuda/select.cuh) on the host: its launch plan and
// workspace, and its algorithm — chunk histograms merged in any order, the last chunk's digit choice
// split over the CTA's 256 threads as on the device (`find_digit` after an exclusive scan), the row
// state (`advance_select`), the count pass and the filter's output positions (`kept_position`), chunks
// in any order — against cpu_impl::select_topk_row, with heavy ties, NaN, ±0, ±Inf and scores that
// differ only in their last bits. No kernel runs here.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "kvcompress/cpu/select_topk.hpp"
#include "kvcompress/cuda/select.cuh"

using namespace kvcompress;

TEST_CASE("cuda host: the selection's launches do not grow with the capacity", "[cuda][host][select]") {
  for (std::int64_t cap : {1, 100, 4096}) {
    cuda_impl::SelectPlan const p = cuda_impl::select_plan(8, cap);
    INFO("capacity " << cap);
    CHECK_FALSE(p.multi);
    CHECK(p.launches == 1);
    CHECK(p.memsets == 0);
    CHECK(cuda_impl::select_workspace_bytes(8, cap) == 0);
  }
  for (std::int64_t cap : {4097, 32768, 131072, 1048576}) {
    cuda_impl::SelectPlan const p = cuda_impl::select_plan(8, cap);
    INFO("capacity " << cap);
    CHECK(p.multi);
    CHECK(p.launches == 5);
    CHECK(p.memsets == 1);
    CHECK(p.chunks == (cap + cuda_impl::kSelectChunk - 1) / cuda_impl::kSelectChunk);
    CHECK(p.chunk_words == static_cast<std::size_t>(8 * p.chunks * 2));
    CHECK(p.hist_words == static_cast<std::size_t>(8 * cuda_impl::kRadixBins));
    // The workspace is at most the size of the scores it selects from (4 bytes a slot), under 2 % at 128k.
    CHECK(cuda_impl::select_workspace_bytes(8, cap) <= static_cast<std::size_t>(4 * 8 * cap));
    if (cap >= 131072) CHECK(cuda_impl::select_workspace_bytes(8, cap) * 50 <= static_cast<std::size_t>(4 * 8 * cap));
    std::vector<std::byte> buffer(cuda_impl::select_workspace_bytes(8, cap) + 63);
    for (std::size_t offset : {0u, 4u, 60u}) {
      Workspace ws(buffer.data() + offset, buffer.size() - 63);
      cuda_impl::SelectScratch const s = cuda_impl::carve_select_scratch(ws, p);
      // The one memset covers the histograms, the arrivals and the states.
      CHECK(static_cast<void*>(s.hist) == s.zeroed);
      CHECK(reinterpret_cast<std::byte*>(s.state + 8) == static_cast<std::byte*>(s.zeroed) + s.zeroed_bytes);
      CHECK(reinterpret_cast<std::byte*>(s.arrivals) >= reinterpret_cast<std::byte*>(s.hist + 8 * cuda_impl::kRadixBins));
    }
  }
  // 8 rows of 32k: 64 CTAs (one per row was 8); 8 × 128k: 256.
  CHECK(cuda_impl::select_plan(8, 32768).chunks * 8 == 64);
  CHECK(cuda_impl::select_plan(8, 131072).chunks * 8 == 256);
  CHECK(cuda_impl::select_plan(3, 1000, 64).chunks == 16);
}

TEST_CASE("cuda host: exactly one of the 256 threads finds the digit, for every need", "[cuda][host][select]") {
  std::mt19937 gen(5);
  std::vector<std::uint32_t> hist(cuda_impl::kRadixBins);
  for (int trial = 0; trial < 40; ++trial) {
    // Sparse, dense and single-bin histograms.
    std::fill(hist.begin(), hist.end(), 0u);
    int const filled = trial % 3 == 0 ? 1 : (trial % 3 == 1 ? 7 : cuda_impl::kRadixBins);
    for (int i = 0; i < filled; ++i)
      hist[static_cast<std::size_t>(std::uniform_int_distribution<int>(0, cuda_impl::kRadixBins - 1)(gen))] +=
          std::uniform_int_distribution<std::uint32_t>(1, 50)(gen);
    std::uint32_t const total = std::accumulate(hist.begin(), hist.end(), 0u);
    for (std::uint32_t need : {1u, total / 3 + 1, total / 2 + 1, total}) {
      // The digit by a plain walk from the top bin.
      std::uint32_t want = 0, want_above = 0, run = 0;
      for (int b = cuda_impl::kRadixBins - 1; b >= 0; --b) {
        if (run < need && run + hist[static_cast<std::size_t>(b)] >= need) {
          want = static_cast<std::uint32_t>(b);
          want_above = run;
        }
        run += hist[static_cast<std::size_t>(b)];
      }
      int found = 0;
      std::uint32_t before = 0;
      for (int t = 0; t < cuda_impl::kChunkThreads; ++t) {
        int const first = cuda_impl::kRadixBins - 1 - t * cuda_impl::kChunkBinsPerThread;
        std::uint32_t bins[cuda_impl::kChunkBinsPerThread];
        std::uint32_t sum = 0;
        for (int i = 0; i < cuda_impl::kChunkBinsPerThread; ++i) sum += bins[i] = hist[static_cast<std::size_t>(first - i)];
        std::uint32_t digit = 0, above = 0, in_bin = 0;
        if (cuda_impl::find_digit(bins, cuda_impl::kChunkBinsPerThread, first, before, need, digit, above, in_bin)) {
          ++found;
          CHECK(digit == want);
          CHECK(above == want_above);
          CHECK(in_bin == hist[digit]);
        }
        before += sum;  // the exclusive scan
      }
      CHECK(found == 1);
    }
  }
}

namespace {

/// Runs the multi-CTA select's five launches on the host, each launch's CTAs in a random order, and
/// returns kept [rows, capacity] (-7 where nothing is written).
std::vector<std::int32_t> emulate_select(std::vector<float> const& scores, std::int64_t rows, std::int64_t capacity,
                                         std::vector<std::int32_t> const& lengths,
                                         std::vector<std::int32_t> const& counts, std::int64_t chunk,
                                         std::mt19937& gen) {
  using cuda_impl::kRadixBins;
  cuda_impl::SelectPlan const p = cuda_impl::select_plan(rows, capacity, chunk);
  REQUIRE(p.multi);
  std::vector<std::uint32_t> hist(p.hist_words, 0u), arrivals(p.arrival_words, 0u), chunk_counts(p.chunk_words, 0u);
  std::vector<cuda_impl::RowSelect> state(p.state_count, cuda_impl::RowSelect{});
  std::vector<std::int32_t> kept(static_cast<std::size_t>(rows * capacity), -7);
  // Every (row, chunk) CTA of a launch, shuffled.
  std::vector<std::pair<std::int64_t, std::int64_t>> ctas;
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < p.chunks; ++c) ctas.emplace_back(r, c);
  auto const budget = [&](std::int64_t r) {
    std::int64_t const n = lengths[static_cast<std::size_t>(r)];
    return std::pair<std::int64_t, std::int64_t>{n, std::min<std::int64_t>(counts[static_cast<std::size_t>(r)], n)};
  };
  auto const key_at = [&](std::int64_t r, std::int64_t i) {
    return cuda_impl::rank_key(scores[static_cast<std::size_t>(r * capacity + i)]);
  };
  for (int pass = 0; pass < 3; ++pass) {
    std::shuffle(ctas.begin(), ctas.end(), gen);
    for (auto const& [r, c] : ctas) {
      auto const [n, k] = budget(r);
      cuda_impl::ChunkRange const cr = cuda_impl::chunk_range(c, p.chunk, n);
      if (k == 0 || k == n || cr.first >= cr.end) continue;
      cuda_impl::RowSelect const st =
          pass == 0 ? cuda_impl::RowSelect{0u, 0u, static_cast<std::uint32_t>(k), 0u, 0u} : state[static_cast<std::size_t>(r)];
      if (st.done) continue;
      std::uint32_t* row_hist = hist.data() + r * kRadixBins;
      for (std::int64_t i = cr.first; i < cr.end; ++i) {
        std::uint32_t const key = key_at(r, i);
        if ((key & st.mask) == st.prefix) ++row_hist[(key >> cuda_impl::radix_shift(pass)) & cuda_impl::radix_digit_mask(pass)];
      }
      std::uint32_t const arrived = arrivals[static_cast<std::size_t>(r)]++;
      if (arrived + 1 != static_cast<std::uint32_t>(cuda_impl::active_chunks(n, p.chunk))) continue;
      // The last CTA of the row: 256 threads, 8 descending bins each, after an exclusive scan.
      std::uint32_t before = 0, digit = 0, above = 0, in_bin = 0;
      int found = 0;
      for (int t = 0; t < cuda_impl::kChunkThreads; ++t) {
        int const first = kRadixBins - 1 - t * cuda_impl::kChunkBinsPerThread;
        std::uint32_t bins[cuda_impl::kChunkBinsPerThread];
        std::uint32_t sum = 0;
        for (int i = 0; i < cuda_impl::kChunkBinsPerThread; ++i) sum += bins[i] = row_hist[first - i];
        found += cuda_impl::find_digit(bins, cuda_impl::kChunkBinsPerThread, first, before, st.need, digit, above, in_bin);
        before += sum;
      }
      REQUIRE(found == 1);
      std::fill(row_hist, row_hist + kRadixBins, 0u);
      state[static_cast<std::size_t>(r)] = cuda_impl::advance_select(st, pass, digit, above, in_bin);
      arrivals[static_cast<std::size_t>(r)] = 0u;
    }
  }
  std::shuffle(ctas.begin(), ctas.end(), gen);
  for (auto const& [r, c] : ctas) {  // the count pass
    auto const [n, k] = budget(r);
    cuda_impl::ChunkRange const cr = cuda_impl::chunk_range(c, p.chunk, n);
    if (k == 0 || k == n || cr.first >= cr.end) continue;
    cuda_impl::RowSelect const st = state[static_cast<std::size_t>(r)];
    REQUIRE(st.done == 1u);
    std::uint32_t above = 0, equal = 0;
    for (std::int64_t i = cr.first; i < cr.end; ++i) {
      std::uint32_t const m = key_at(r, i) & st.mask;
      above += m > st.prefix;
      equal += m == st.prefix;
    }
    chunk_counts[static_cast<std::size_t>((r * p.chunks + c) * 2)] = above;
    chunk_counts[static_cast<std::size_t>((r * p.chunks + c) * 2 + 1)] = equal;
  }
  std::shuffle(ctas.begin(), ctas.end(), gen);
  for (auto const& [r, c] : ctas) {  // the filter
    auto const [n, k] = budget(r);
    cuda_impl::ChunkRange const cr = cuda_impl::chunk_range(c, p.chunk, n);
    std::int32_t* out = kept.data() + r * capacity;
    if (k == 0 || cr.first >= cr.end) continue;
    if (k == n) {
      for (std::int64_t i = cr.first; i < cr.end; ++i) out[i] = static_cast<std::int32_t>(i);
      continue;
    }
    cuda_impl::RowSelect const st = state[static_cast<std::size_t>(r)];
    std::int64_t a = 0, e = 0;
    for (std::int64_t cc = 0; cc < c; ++cc) {
      a += chunk_counts[static_cast<std::size_t>((r * p.chunks + cc) * 2)];
      e += chunk_counts[static_cast<std::size_t>((r * p.chunks + cc) * 2 + 1)];
    }
    for (std::int64_t i = cr.first; i < cr.end; ++i) {
      std::uint32_t const m = key_at(r, i) & st.mask;
      std::int64_t const pos = cuda_impl::kept_position(m > st.prefix, m == st.prefix, a, e, st.need);
      if (pos >= 0) {
        REQUIRE(pos < k);
        REQUIRE(out[pos] == -7);  // each output index written once
        out[pos] = static_cast<std::int32_t>(i);
      }
      a += m > st.prefix;
      e += m == st.prefix;
    }
  }
  return kept;
}

enum class Kind { kNormal, kFewValues, kWithNaN, kAllEqual, kStreaming, kLastBits };

std::vector<float> make_scores(std::int64_t rows, std::int64_t capacity, Kind kind, std::mt19937& gen) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> pick(0, 7);
  float const nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  float const few[] = {-0.0f, 0.0f, 1.0f, -1.0f, 0.5f, inf, -inf, std::numeric_limits<float>::denorm_min()};
  std::vector<float> s(static_cast<std::size_t>(rows * capacity));
  for (std::int64_t i = 0; i < static_cast<std::int64_t>(s.size()); ++i) {
    std::int64_t const slot = i % capacity;
    float& x = s[static_cast<std::size_t>(i)];
    switch (kind) {
      case Kind::kNormal: x = normal(gen); break;
      case Kind::kFewValues: x = few[pick(gen)]; break;
      case Kind::kWithNaN: x = pick(gen) == 0 ? nan : (pick(gen) == 1 ? -nan : few[pick(gen)]); break;
      case Kind::kAllEqual: x = 0.25f; break;
      // StreamingLLM: the 4 sinks and the last 64 slots score 1, the rest 0 (every kept set is ties).
      case Kind::kStreaming: x = (slot < 4 || slot >= capacity - 64) ? 1.0f : 0.0f; break;
      // Keys equal in their top 21 or 31 bits: the threshold is resolved by the second and third pass.
      case Kind::kLastBits: x = std::nextafter(1.0f, 2.0f * static_cast<float>(pick(gen) % 3)) + static_cast<float>(pick(gen) / 4) * 1e-6f; break;
    }
  }
  return s;
}

}  // namespace

TEST_CASE("cuda host: the multi-CTA radix select, chunks in any order, equals the CPU selection",
          "[cuda][host][select]") {
  std::mt19937 gen(41);
  for (Kind kind : {Kind::kNormal, Kind::kFewValues, Kind::kWithNaN, Kind::kAllEqual, Kind::kStreaming, Kind::kLastBits})
    for (auto [capacity, chunk] : {std::pair<std::int64_t, std::int64_t>{20011, 0}, {131072, 0}, {1000, 64}, {300, 8}}) {
      std::int64_t const rows = 12;
      INFO("kind " << static_cast<int>(kind) << ", capacity " << capacity << ", chunk " << chunk);
      std::vector<float> const scores = make_scores(rows, capacity, kind, gen);
      std::vector<std::int32_t> lengths(static_cast<std::size_t>(rows)), counts(lengths.size());
      for (std::int64_t r = 0; r < rows; ++r) {
        auto const cap = static_cast<std::int32_t>(capacity);
        // Full rows and short ones (the StreamingLLM rows full, as an engine's are); budgets 0, 1, n−1, n, ...
        std::int32_t const n = kind == Kind::kStreaming || r % 3 == 0
                                   ? cap
                                   : std::uniform_int_distribution<std::int32_t>(1, cap)(gen);
        std::int32_t const choices[] = {n / 2, 0, 1, n - 1, n, std::uniform_int_distribution<std::int32_t>(0, n)(gen)};
        lengths[static_cast<std::size_t>(r)] = n;
        counts[static_cast<std::size_t>(r)] = std::max(0, choices[r % 6]);
      }
      std::vector<std::int32_t> const kept = emulate_select(scores, rows, capacity, lengths, counts, chunk, gen);
      std::vector<std::int32_t> idx(static_cast<std::size_t>(capacity));
      for (std::int64_t r = 0; r < rows; ++r) {
        std::int32_t const n = lengths[static_cast<std::size_t>(r)], k = counts[static_cast<std::size_t>(r)];
        cpu_impl::select_topk_row(scores.data() + r * capacity, n, k, idx.data());
        INFO("row " << r << ": n = " << n << ", k = " << k);
        for (std::int32_t j = 0; j < k; ++j) REQUIRE(kept[static_cast<std::size_t>(r * capacity + j)] == idx[static_cast<std::size_t>(j)]);
        for (std::int64_t j = k; j < capacity; ++j) REQUIRE(kept[static_cast<std::size_t>(r * capacity + j)] == -7);
      }
    }
}

TEST_CASE("cuda host: the select's 16-byte loads and single loads read every score of a chunk once",
          "[cuda][host][select]") {
  for (std::uintptr_t base : {0x1000u, 0x1004u, 0x1008u, 0x100cu, 0x1002u})
    for (std::int64_t len = 0; len <= 70; ++len) {
      INFO("address " << base << ", length " << len);
      cuda_impl::VectorSplit const s = cuda_impl::vector_split(base, len);
      std::vector<int> seen(static_cast<std::size_t>(len), 0);
      for (std::int64_t v = 0; v < s.vecs; ++v) {
        std::uintptr_t const at = base + static_cast<std::uintptr_t>(4 * (s.head + 4 * v));
        CHECK(at % 16 == 0);  // a float4 load is aligned
        for (std::int64_t e = 0; e < 4; ++e) ++seen[static_cast<std::size_t>(s.head + 4 * v + e)];
      }
      std::int64_t const singles = s.head + (len - s.tail_first);
      if (base % 4 == 0) CHECK(singles <= 6);  // fewer than 4 before the middle and after it
      for (std::int64_t i = 0; i < singles; ++i) ++seen[static_cast<std::size_t>(cuda_impl::single_load_index(s, i))];
      CHECK(std::all_of(seen.begin(), seen.end(), [](int n) { return n == 1; }));
    }
}
