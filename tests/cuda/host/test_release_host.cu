// The batched page release (include/kvcompress/cuda/release.cuh) on the host: its launch count over
// layers, its per-row page arithmetic against detail::live_pages, its output order (the kernel's
// prefix sum over table rows, run serially) against the host released_pages, and its host checks.
// No kernel runs here.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "kvcompress/cache/memory.hpp"
#include "kvcompress/cuda/release.cuh"

using namespace kvcompress;

TEST_CASE("cuda host: the page release of a whole step is one launch per 32 layers, whatever the capacity",
          "[cuda][host][release]") {
  CHECK(cuda_impl::release_launches(0) == 0);
  CHECK(cuda_impl::release_launches(1) == 1);
  CHECK(cuda_impl::release_launches(32) == 1);
  CHECK(cuda_impl::release_launches(33) == 2);
  CHECK(cuda_impl::release_launches(80) == 3);
  CHECK(sizeof(cuda_impl::LayerPagesBatch) + sizeof(CacheExtents) + 64 <= 4096);  // the classic parameter limit
}

TEST_CASE("cuda host: the batched release frees exactly what released_pages frees, in its order",
          "[cuda][host][release]") {
  std::mt19937 gen(23);
  for (PageTable table : {PageTable::kPerSequence, PageTable::kPerHead})
    for (std::int64_t page_size : {1, 16, 64})
      for (int trial = 0; trial < 5; ++trial) {
        CacheExtents const e{3, 4, 300, 64};
        std::int64_t const pages_per_row = (e.capacity + page_size - 1) / page_size;
        std::int64_t const table_rows = table == PageTable::kPerHead ? e.batch * e.kv_heads : e.batch;
        std::vector<std::int32_t> ids(static_cast<std::size_t>(table_rows * pages_per_row + 5));
        std::iota(ids.begin(), ids.end(), 0);
        std::shuffle(ids.begin(), ids.end(), gen);
        std::vector<std::int32_t> block(ids.begin(), ids.begin() + table_rows * pages_per_row);
        PagedConfig cfg;
        cfg.table = table;
        cfg.page_size = page_size;
        cfg.num_pages = static_cast<std::int64_t>(ids.size());
        cfg.block_table = block.data();
        cfg.pages_per_row = pages_per_row;
        PagedLayout const l = make_paged_layout(e, cfg);
        std::vector<std::int32_t> before(12), now(12);
        for (std::size_t r = 0; r < 12; ++r) {
          before[r] = std::uniform_int_distribution<std::int32_t>(0, 300)(gen);
          now[r] = r % 4 == 3 ? before[r] : std::uniform_int_distribution<std::int32_t>(0, before[r])(gen);
        }
        INFO("table " << static_cast<int>(table) << ", page size " << page_size << ", trial " << trial);
        std::vector<std::int32_t> want(static_cast<std::size_t>(cuda_impl::release_stride(l, e)));
        std::int64_t const n = released_pages(l, e, before.data(), now.data(), want.data(),
                                              static_cast<std::int64_t>(want.size()));
        want.resize(static_cast<std::size_t>(n));
        // The kernel's scan, serially: row i's freed entries at the sum of the earlier rows' counts.
        std::vector<std::int32_t> got;
        for (std::int64_t i = 0; i < cuda_impl::release_table_rows(l, e); ++i) {
          std::int64_t const b = i / (table == PageTable::kPerHead ? e.kv_heads : 1);
          std::int64_t const h = i % (table == PageTable::kPerHead ? e.kv_heads : 1);
          auto const was = cuda_impl::release_live_pages(l, e, before.data(), i);
          auto const is = cuda_impl::release_live_pages(l, e, now.data(), i);
          CHECK(was == detail::live_pages(l, e, b, h, [&](std::int64_t bb, std::int64_t hh) { return before[static_cast<std::size_t>(bb * 4 + hh)]; }));
          CHECK(is == detail::live_pages(l, e, b, h, [&](std::int64_t bb, std::int64_t hh) { return now[static_cast<std::size_t>(bb * 4 + hh)]; }));
          for (std::int64_t p = is; p < was; ++p) got.push_back(l.block_table[cuda_impl::release_row_entry(l, e, i) + p]);
        }
        REQUIRE(got == want);
        CHECK(static_cast<std::int64_t>(got.size()) <= cuda_impl::release_stride(l, e));
      }
}

TEST_CASE("cuda host: released_pages_async checks its arguments before the device", "[cuda][host][release]") {
  CacheExtents const e{2, 2, 64, 64};
  std::vector<std::int32_t> block(2 * 4), lengths(4, 10);
  std::iota(block.begin(), block.end(), 0);
  PagedConfig cfg;
  cfg.page_size = 16;
  cfg.num_pages = 8;
  cfg.block_table = block.data();
  cfg.pages_per_row = 4;
  LayerPages const layer{make_paged_layout(e, cfg), lengths.data(), lengths.data()};
  std::vector<std::int32_t> freed(8), counts(1);
  CHECK_THROWS_WITH(released_pages_async(kvcompress::cuda{}, e, &layer, -1, freed.data(), counts.data()),
                    Catch::Contains("n_layers must not be negative, got -1"));
  CHECK_THROWS_WITH(released_pages_async(kvcompress::cuda{}, e, nullptr, 1, freed.data(), counts.data()),
                    Catch::Contains("layers must not be null"));
  CHECK_THROWS_WITH(released_pages_async(kvcompress::cuda{}, e, &layer, 1, nullptr, counts.data()),
                    Catch::Contains("freed must not be null"));
  CHECK_THROWS_WITH(released_pages_async(kvcompress::cuda{nullptr, true}, e, &layer, 1, freed.data(), counts.data()),
                    Catch::Contains("freed = ") && (Catch::Contains("host memory") || Catch::Contains("is not CUDA memory")));
  std::vector<std::int32_t> block8(2 * 8);
  std::iota(block8.begin(), block8.end(), 0);
  PagedConfig cfg8 = cfg;
  cfg8.page_size = 8;
  cfg8.num_pages = 16;
  cfg8.block_table = block8.data();
  cfg8.pages_per_row = 8;
  LayerPages const layers[2] = {layer, LayerPages{make_paged_layout(e, cfg8), lengths.data(), lengths.data()}};
  CHECK_THROWS_WITH(released_pages_async(kvcompress::cuda{}, e, layers, 2, freed.data(), counts.data()),
                    Catch::Contains("layers[1] has a block table of 16 entries, layers[0] of 8"));
  LayerPages no_table = layer;
  no_table.layout.block_table = nullptr;
  CHECK_THROWS_WITH(released_pages_async(kvcompress::cuda{}, e, &no_table, 1, freed.data(), counts.data()),
                    Catch::Contains("block_table must not be null"));
}
