// The batched page release on the device against the host released_pages, layer by layer: 40 layers
// (two launches), per-sequence and per-head tables, page sizes 1, 16 and 64, rows that shrank, kept
// their length or emptied, in one call and one synchronisation.
#include <algorithm>
#include <numeric>
#include <random>

#include "cuda_test_util.cuh"
#include "kvcompress/cache/memory.hpp"
#include "kvcompress/cuda/release.cuh"

using namespace kvcompress;
using kvc_cuda_test::DeviceBuffer;

TEST_CASE("cuda released_pages_async frees what released_pages frees, for 40 layers in one call", "[cuda][release]") {
  std::mt19937 gen(7);
  for (PageTable table : {PageTable::kPerSequence, PageTable::kPerHead})
    for (std::int64_t page_size : {1, 16, 64}) {
      INFO("table " << static_cast<int>(table) << ", page size " << page_size);
      CacheExtents const e{3, 4, 300, 64};
      int const n_layers = 40;
      std::int64_t const pages_per_row = (e.capacity + page_size - 1) / page_size;
      std::int64_t const table_rows = table == PageTable::kPerHead ? e.batch * e.kv_heads : e.batch;
      std::vector<std::vector<std::int32_t>> tables, before, now;
      std::vector<DeviceBuffer<std::int32_t>> d_tables, d_before, d_now;
      std::vector<LayerPages> layers;
      std::vector<PagedLayout> host_layouts;
      for (int layer = 0; layer < n_layers; ++layer) {
        std::vector<std::int32_t> ids(static_cast<std::size_t>(table_rows * pages_per_row));
        std::iota(ids.begin(), ids.end(), 0);
        std::shuffle(ids.begin(), ids.end(), gen);
        std::vector<std::int32_t> b(12), n(12);
        for (std::size_t r = 0; r < 12; ++r) {
          b[r] = std::uniform_int_distribution<std::int32_t>(0, 300)(gen);
          n[r] = r % 5 == 4 ? b[r] : (r % 5 == 3 ? 0 : std::uniform_int_distribution<std::int32_t>(0, b[r])(gen));
        }
        tables.push_back(ids);
        before.push_back(b);
        now.push_back(n);
      }
      for (int layer = 0; layer < n_layers; ++layer) {
        d_tables.emplace_back(tables[layer]);
        d_before.emplace_back(before[layer]);
        d_now.emplace_back(now[layer]);
        PagedConfig cfg;
        cfg.table = table;
        cfg.page_size = page_size;
        cfg.num_pages = table_rows * pages_per_row;
        cfg.pages_per_row = pages_per_row;
        cfg.block_table = tables[layer].data();
        host_layouts.push_back(make_paged_layout(e, cfg));
        cfg.block_table = d_tables.back().get();
        layers.push_back(LayerPages{make_paged_layout(e, cfg), d_before.back().get(), d_now.back().get()});
      }
      std::int64_t const stride = released_pages_stride(host_layouts[0], e);
      DeviceBuffer<std::int32_t> freed(std::vector<std::int32_t>(static_cast<std::size_t>(n_layers * stride), -1));
      DeviceBuffer<std::int32_t> counts(std::vector<std::int32_t>(n_layers, -1));
      released_pages_async(kvc_cuda_test::kChecked, e, layers.data(), n_layers, freed.get(), counts.get());
      KVC_CUDA_CHECK(cudaDeviceSynchronize());
      std::vector<std::int32_t> const got = freed.download(), got_counts = counts.download();
      for (int layer = 0; layer < n_layers; ++layer) {
        INFO("layer " << layer);
        std::vector<std::int32_t> want(static_cast<std::size_t>(stride));
        std::int64_t const n = released_pages(host_layouts[layer], e, before[layer].data(), now[layer].data(),
                                              want.data(), stride);
        REQUIRE(got_counts[layer] == n);
        for (std::int64_t i = 0; i < n; ++i) REQUIRE(got[layer * stride + i] == want[i]);
      }
    }
}
