// The compaction's single ordered gather (include/kvcompress/cuda/compact.cuh) on the host: its launch
// plan, and its protocol — tickets, per-tile reads into a private copy, the "read" flags and the
// look-back, the writes — run by an adversarial scheduler that interleaves CTAs one slot at a time,
// against cpu_impl::compact_row on random kept sets. No kernel runs here.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "kvcompress/cpu/compact.hpp"
#include "kvcompress/cuda/compact.cuh"

using namespace kvcompress;

TEST_CASE("cuda host: the compaction is one memset and one launch at any capacity", "[cuda][host][compact]") {
  CHECK(cuda_impl::gather_tile_slots(128, 2) == 64);  // Llama-3.1-8B, bf16
  CHECK(cuda_impl::gather_tile_slots(256, 4) == 16);
  CHECK(cuda_impl::gather_tile_slots(64, 4) == 64);
  CHECK(cuda_impl::gather_tile_slots(80, 4) == 32);
  for (std::int64_t d : {64, 80, 96, 128, 256})
    for (std::int64_t bytes : {2, 4}) {
      int const t = cuda_impl::gather_tile_slots(d, bytes);
      CHECK((t & (t - 1)) == 0);
      CHECK(2 * t * d * bytes <= cuda_impl::kGatherSmemBytes);
    }
  for (std::int64_t cap : {1, 63, 64, 4096, 32768, 131072, 262144, 1048576}) {
    CacheExtents const e{1, 8, cap, 128};
    cuda_impl::GatherPlan const p = cuda_impl::gather_plan(e, 2);
    INFO("capacity " << cap);
    CHECK(p.launches == 1);
    CHECK(p.memsets == 1);
    CHECK(p.tiles_per_row * p.tile_slots >= cap);
    CHECK((p.tiles_per_row - 1) * p.tile_slots < cap);
    CHECK(p.tickets == 8 * p.tiles_per_row);
    CHECK(p.flag_words == static_cast<std::size_t>(p.tickets) + 1);
    CHECK(p.ctas >= 1u);
    CHECK(static_cast<std::int64_t>(p.ctas) <= std::min(p.tickets, cuda_impl::kMaxGatherCtas));
  }
  // The Llama-3.1-8B layer at 128k: 64 KiB of flags, where the staging copy of waves took 64 MiB.
  std::vector<std::int32_t> lengths(8);
  KVCacheView<bfloat16> const view{nullptr, nullptr, CacheExtents{1, 8, 131072, 128}, {}, {}, lengths.data(), nullptr};
  CHECK(cuda_impl::compact_workspace_bytes(view) <= 70000);
  CHECK(cuda_impl::gather_plan(CacheExtents{1, 8, 1000, 64}, 4, 1).ctas == 1u);
  CHECK(cuda_impl::gather_plan(CacheExtents{1, 8, 1000, 64}, 4, 3).ctas == 3u);
  CHECK_THROWS_WITH(cuda_impl::gather_plan(CacheExtents{std::int64_t{1} << 20, 64, std::int64_t{1} << 20, 64}, 4),
                    Catch::Contains("exceed the 32-bit ticket counter"));
}

namespace {

/// One CTA of the emulation: what it holds between steps.
struct EmuCta {
  enum class Step { kTakeTicket, kRead, kPublish, kLookBack, kWrite, kDone } step = Step::kTakeTicket;
  std::int64_t row = 0, tile = 0, j0 = 0;
  std::vector<std::int64_t> pending;  // tile offsets still to read (kRead) or to write (kWrite)
  std::vector<std::int32_t> src;      // [E] source slot per offset, -1: not moved
  std::vector<float> k, v;            // [E, D] the tile's copy ("shared memory")
  std::vector<std::int32_t> pos;      // [E]
};

struct EmuResult {
  std::int64_t stale_reads = 0;  // reads of a slot already overwritten in this call
  bool deadlock = false;
};

/// Runs compact_gather_kernel's protocol over a host cache [rows, capacity, D] (K, V, positions) with
/// `ctas` CTAs: at each step a random CTA that can move does one action (take a ticket, read one
/// source slot, publish "read", look back, write one slot). `wait` = false skips the look-back's wait
/// (the control: then reads see overwritten slots).
EmuResult emulate_gather(KVCacheView<float> const& cache, std::vector<std::int32_t> const& kept,
                         std::vector<std::int32_t> const& counts, std::int64_t ctas, bool wait, std::mt19937& gen) {
  auto const& e = cache.extents;
  std::int64_t const cap = e.capacity, d = e.head_dim, rows = e.batch * e.kv_heads;
  cuda_impl::GatherPlan const plan = cuda_impl::gather_plan(e, sizeof(float), ctas);
  std::int64_t const tile_slots = plan.tile_slots;
  std::vector<unsigned int> flags(plan.flag_words, 0u);  // [0]: ticket counter; then [rows, tiles_per_row]
  std::vector<char> written(static_cast<std::size_t>(rows * cap), 0);
  std::vector<EmuCta> cta(plan.ctas);
  EmuResult result;
  auto const flag = [&](std::int64_t row, std::int64_t tile) -> unsigned int& {
    return flags[static_cast<std::size_t>(1 + row * plan.tiles_per_row + tile)];
  };
  // The look-back's decision: every earlier tile of the row down to the first "read through" (or the
  // row's start) has published "read".
  auto const earlier_read = [&](std::int64_t row, std::int64_t tile) {
    for (std::int64_t i = tile - 1; i >= 0; --i) {
      if (flag(row, i) == 0u) return false;
      if (flag(row, i) == cuda_impl::kFlagReadThrough) return true;
    }
    return true;
  };
  auto const can_move = [&](EmuCta const& c) {
    if (c.step == EmuCta::Step::kDone) return false;
    return c.step != EmuCta::Step::kLookBack || !wait || earlier_read(c.row, c.tile);
  };
  auto const take_pending = [&](EmuCta& c) {
    std::size_t const i = std::uniform_int_distribution<std::size_t>(0, c.pending.size() - 1)(gen);
    std::int64_t const off = c.pending[i];
    c.pending.erase(c.pending.begin() + static_cast<std::ptrdiff_t>(i));
    return off;
  };
  for (;;) {
    std::vector<std::size_t> movable;
    bool all_done = true;
    for (std::size_t i = 0; i < cta.size(); ++i) {
      all_done = all_done && cta[i].step == EmuCta::Step::kDone;
      if (can_move(cta[i])) movable.push_back(i);
    }
    if (all_done) return result;
    if (movable.empty()) {
      result.deadlock = true;
      return result;
    }
    EmuCta& c = cta[movable[std::uniform_int_distribution<std::size_t>(0, movable.size() - 1)(gen)]];
    std::int64_t const b = c.row / e.kv_heads, h = c.row % e.kv_heads;
    switch (c.step) {
      case EmuCta::Step::kTakeTicket: {
        std::int64_t const ticket = flags[0]++;
        if (ticket >= plan.tickets) {
          c.step = EmuCta::Step::kDone;
          break;
        }
        cuda_impl::GatherTile const g = cuda_impl::gather_tile_of(ticket, plan.tiles_per_row);
        std::int64_t const count = counts[static_cast<std::size_t>(g.row)];
        if (g.tile == 0) cache.lengths[g.row] = static_cast<std::int32_t>(count);
        std::int64_t const m = cuda_impl::gather_tile_count(g.tile, tile_slots, count);
        if (m <= 0) break;  // nothing to move: the next ticket
        c.row = g.row;
        c.tile = g.tile;
        c.j0 = g.tile * tile_slots;
        c.src.assign(static_cast<std::size_t>(m), -1);
        c.k.assign(static_cast<std::size_t>(m * d), 0.0f);
        c.v.assign(c.k.size(), 0.0f);
        c.pos.assign(static_cast<std::size_t>(m), 0);
        c.pending.clear();
        for (std::int64_t o = 0; o < m; ++o) {
          c.src[static_cast<std::size_t>(o)] = cuda_impl::move_source(kept.data(), g.row, cap, c.j0 + o);
          if (c.src[static_cast<std::size_t>(o)] >= 0) c.pending.push_back(o);
        }
        c.step = c.pending.empty() ? EmuCta::Step::kPublish : EmuCta::Step::kRead;
        break;
      }
      case EmuCta::Step::kRead: {
        std::int64_t const o = take_pending(c);
        std::int32_t const s = c.src[static_cast<std::size_t>(o)];
        if (written[static_cast<std::size_t>(c.row * cap + s)]) ++result.stale_reads;
        for (std::int64_t x = 0; x < d; ++x) {
          c.k[static_cast<std::size_t>(o * d + x)] = cache.key(b, h, s, x);
          c.v[static_cast<std::size_t>(o * d + x)] = cache.value(b, h, s, x);
        }
        c.pos[static_cast<std::size_t>(o)] = cache.positions[c.row * cap + s];
        if (c.pending.empty()) c.step = EmuCta::Step::kPublish;
        break;
      }
      case EmuCta::Step::kPublish:
        flag(c.row, c.tile) = cuda_impl::kFlagRead;
        c.step = EmuCta::Step::kLookBack;
        break;
      case EmuCta::Step::kLookBack:
        flag(c.row, c.tile) = cuda_impl::kFlagReadThrough;
        for (std::int64_t o = 0; o < static_cast<std::int64_t>(c.src.size()); ++o)
          if (c.src[static_cast<std::size_t>(o)] >= 0) c.pending.push_back(o);
        c.step = c.pending.empty() ? EmuCta::Step::kTakeTicket : EmuCta::Step::kWrite;
        break;
      case EmuCta::Step::kWrite: {
        std::int64_t const o = take_pending(c), j = c.j0 + o;
        written[static_cast<std::size_t>(c.row * cap + j)] = 1;
        for (std::int64_t x = 0; x < d; ++x) {
          cache.key(b, h, j, x) = c.k[static_cast<std::size_t>(o * d + x)];
          cache.value(b, h, j, x) = c.v[static_cast<std::size_t>(o * d + x)];
        }
        cache.positions[c.row * cap + j] = c.pos[static_cast<std::size_t>(o)];
        if (c.pending.empty()) c.step = EmuCta::Step::kTakeTicket;
        break;
      }
      case EmuCta::Step::kDone: break;
    }
  }
}

/// A host cache [batch, kv_heads, capacity, D] of distinct values with random ascending kept sets.
struct EmuCase {
  CacheExtents e;
  std::vector<float> k, v;
  std::vector<std::int32_t> lengths, positions, kept, counts;

  EmuCase(CacheExtents extents, std::mt19937& gen) : e(extents) {
    std::int64_t const rows = e.batch * e.kv_heads, cap = e.capacity;
    k.resize(static_cast<std::size_t>(rows * cap * e.head_dim));
    std::iota(k.begin(), k.end(), 0.0f);
    v = k;
    for (auto& x : v) x = -x;
    positions.resize(static_cast<std::size_t>(rows * cap));
    std::iota(positions.begin(), positions.end(), 1000);
    lengths.assign(static_cast<std::size_t>(rows), static_cast<std::int32_t>(cap));
    kept.assign(static_cast<std::size_t>(rows * cap), 0);
    counts.resize(static_cast<std::size_t>(rows));
    std::vector<std::int32_t> slots(static_cast<std::size_t>(cap));
    for (std::int64_t r = 0; r < rows; ++r) {
      auto const n = std::uniform_int_distribution<std::int64_t>(1, cap)(gen);
      lengths[static_cast<std::size_t>(r)] = static_cast<std::int32_t>(n);
      // Kept sets from sparse to dense, the last row keeping all but the first slot (every entry moves).
      std::int64_t const count_choices[] = {n / 2, n - 1, 1, n, std::uniform_int_distribution<std::int64_t>(0, n)(gen)};
      std::int64_t count = count_choices[r % 5];
      std::iota(slots.begin(), slots.begin() + n, 0);
      std::shuffle(slots.begin(), slots.begin() + n, gen);
      if (r == rows - 1 && n > 1) {  // slots 1..n-1: every kept entry moves one slot down
        std::iota(slots.begin(), slots.begin() + n - 1, 1);
        count = n - 1;
      }
      std::sort(slots.begin(), slots.begin() + count);
      std::copy(slots.begin(), slots.begin() + count, kept.begin() + r * cap);
      counts[static_cast<std::size_t>(r)] = static_cast<std::int32_t>(count);
    }
  }

  [[nodiscard]] KVCacheView<float> view() {
    auto const layout = make_strided_layout(e, {Axis::kBatch, Axis::kHead, Axis::kSeq, Axis::kDim});
    return make_cache_view(k.data(), v.data(), e, layout, layout, lengths.data(), positions.data());
  }
};

}  // namespace

TEST_CASE("cuda host: the ordered gather, under any interleaving of its CTAs, equals compact_row",
          "[cuda][host][compact]") {
  std::mt19937 gen(29);
  // head_dim 256 in float: tiles of 16 slots (many tiles per row); 64: tiles of 64.
  for (std::int64_t dim : {256, 64})
    for (std::int64_t cap : {1, 16, 17, 64, 130, 301})
      for (std::int64_t ctas : {1, 2, 5, 64}) {
        INFO("head_dim " << dim << ", capacity " << cap << ", CTAs " << ctas);
        EmuCase gpu(CacheExtents{2, 3, cap, dim}, gen);
        EmuCase cpu = gpu;
        auto const cpu_view = cpu.view();
        for (std::int64_t b = 0; b < 2; ++b)
          for (std::int64_t h = 0; h < 3; ++h) {
            std::int64_t const r = cpu_view.row(b, h);
            cpu_impl::compact_row(kvcompress::cpu, cpu_view, b, h, cpu.kept.data() + r * cap, cpu.counts[static_cast<std::size_t>(r)]);
          }
        EmuResult const res = emulate_gather(gpu.view(), gpu.kept, gpu.counts, ctas, true, gen);
        REQUIRE_FALSE(res.deadlock);
        CHECK(res.stale_reads == 0);
        REQUIRE(gpu.k == cpu.k);
        REQUIRE(gpu.v == cpu.v);
        REQUIRE(gpu.positions == cpu.positions);
        REQUIRE(gpu.lengths == cpu.lengths);
      }
}

TEST_CASE("cuda host: without the look-back's wait the gather reads overwritten slots", "[cuda][host][compact]") {
  // The control for the test above: the wait is what makes the in-place gather correct.
  std::mt19937 gen(31);
  std::int64_t stale = 0;
  bool differs = false;
  for (int trial = 0; trial < 20; ++trial) {
    EmuCase gpu(CacheExtents{1, 2, 301, 256}, gen);
    EmuCase cpu = gpu;
    auto const cpu_view = cpu.view();
    for (std::int64_t h = 0; h < 2; ++h)
      cpu_impl::compact_row(kvcompress::cpu, cpu_view, 0, h, cpu.kept.data() + h * 301, cpu.counts[static_cast<std::size_t>(h)]);
    EmuResult const res = emulate_gather(gpu.view(), gpu.kept, gpu.counts, 16, false, gen);
    stale += res.stale_reads;
    differs = differs || gpu.k != cpu.k;
  }
  CHECK(stale > 0);
  CHECK(differs);
}
