// In-place compaction on the device against cpu_impl::compact_row on every row: float, half, bfloat16;
// head_dim 64 and 128 (and 80, which is not a power of two); strided [b,h,s,d], token-major [b,s,h,d]
// and a non-unit innermost stride; paged with page sizes 1, 16, 64, per-sequence NHD and HND and
// per-head tables over permuted pools; with and without positions. The buffers must agree bit for
// bit everywhere (live entries moved, everything else untouched), and lengths must equal counts.
#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>

#include "cuda_test_util.cuh"
#include "kvcompress/cuda/compact.cuh"

using namespace kvcompress;
using kvc_cuda_test::DeviceBuffer;
using kvc_cuda_test::DeviceMirror;

namespace {

/// A host cache over buffers it owns, in any layout, with lengths, kept sets and counts per row.
template <class T, class L>
struct Case {
  CacheExtents e;
  std::vector<T> k, v;
  std::vector<std::int32_t> lengths, positions, table, kept, counts;
  L layout{};
};

template <class T, class L>
void fill(Case<T, L>& c, std::size_t elems, bool with_positions, std::mt19937& gen) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  c.k.resize(elems);
  c.v.resize(elems);
  for (auto& x : c.k) x = static_cast<T>(normal(gen));
  for (auto& x : c.v) x = static_cast<T>(normal(gen));
  std::int64_t const rows = c.e.batch * c.e.kv_heads, cap = c.e.capacity;
  c.lengths.resize(static_cast<std::size_t>(rows));
  c.counts.resize(c.lengths.size());
  c.kept.assign(static_cast<std::size_t>(rows * cap), 0);
  std::vector<std::int32_t> perm;
  for (std::int64_t r = 0; r < rows; ++r) {
    auto const icap = static_cast<std::int32_t>(cap);
    std::int32_t const length_choices[] = {icap, 1, icap - 1, std::uniform_int_distribution<std::int32_t>(1, icap)(gen)};
    std::int32_t const n = length_choices[r % 4];
    std::int32_t const count_choices[] = {n / 2, 0, 1, n - 1, n, std::uniform_int_distribution<std::int32_t>(0, n)(gen)};
    std::int32_t const k = std::max(0, count_choices[(r / 4 + r) % 6]);
    c.lengths[r] = n;
    c.counts[r] = k;
    perm.resize(static_cast<std::size_t>(n));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), gen);
    std::sort(perm.begin(), perm.begin() + k);
    std::copy(perm.begin(), perm.begin() + k, c.kept.begin() + r * cap);
  }
  if (with_positions) {
    c.positions.resize(static_cast<std::size_t>(rows * cap));
    for (auto& p : c.positions) p = std::uniform_int_distribution<std::int32_t>(0, 1 << 30)(gen);
  }
}

/// Compacts the host cache with the CPU and a device mirror with `cuda_impl::compact`, then compares.
/// \param ctas the grid's CTAs at most (0: the library's choice; small values make each CTA loop over
/// many tiles, so a CTA's later tiles wait on its own earlier ones)
template <class T, class L>
void check_compact(Case<T, L>& c, std::int64_t ctas = 0) {
  auto const host = make_cache_view(c.k.data(), c.v.data(), c.e, c.layout, c.layout, c.lengths.data(),
                                    c.positions.empty() ? nullptr : c.positions.data());
  DeviceMirror<T, L> mirror(c.k, c.v, c.lengths, c.positions, c.table);
  auto const dev = mirror.view(host);
  DeviceBuffer<std::int32_t> d_kept(c.kept), d_counts(c.counts);
  DeviceBuffer<cuda_impl::DeviceStatus> status(1);
  KVC_CUDA_CHECK(cudaMemset(status.get(), 0, sizeof(cuda_impl::DeviceStatus)));
  std::size_t const bytes = cuda_impl::compact_workspace_bytes(dev);
  DeviceBuffer<std::byte> ws_mem(bytes);
  Workspace ws(ws_mem.get(), bytes);
  cuda_impl::compact(kvc_cuda_test::kChecked, dev, d_kept.get(), d_counts.get(), ws, status.get(), ctas);
  KVC_CUDA_CHECK(cudaDeviceSynchronize());

  for (std::int64_t b = 0; b < c.e.batch; ++b)
    for (std::int64_t h = 0; h < c.e.kv_heads; ++h) {
      std::int64_t const r = host.row(b, h);
      cpu_impl::compact_row(kvcompress::cpu, host, b, h, c.kept.data() + r * c.e.capacity, c.counts[r]);
    }

  std::vector<T> const k = mirror.k.download(), v = mirror.v.download();
  REQUIRE(std::memcmp(k.data(), c.k.data(), k.size() * sizeof(T)) == 0);
  REQUIRE(std::memcmp(v.data(), c.v.data(), v.size() * sizeof(T)) == 0);
  REQUIRE(mirror.lengths.download() == c.counts);
  REQUIRE(c.lengths == c.counts);
  if (!c.positions.empty()) REQUIRE(mirror.positions.download() == c.positions);
}

template <class T>
void check_strided(std::int64_t dim, std::array<Axis, 4> order, std::int64_t inner, bool with_positions,
                   std::int64_t batch, std::int64_t heads, std::int64_t cap, std::uint32_t seed, std::int64_t ctas = 0) {
  std::mt19937 gen(seed);
  Case<T, StridedLayout> c;
  c.e = CacheExtents{batch, heads, cap, dim};
  c.layout = make_strided_layout(c.e, order, inner);
  auto const span = static_cast<std::size_t>(c.layout.offset(batch - 1, heads - 1, cap - 1, dim - 1) + 1);
  fill(c, span, with_positions, gen);
  check_compact(c, ctas);
}

template <class T>
void check_paged(std::int64_t dim, PageTable table, PageOrder order, std::int64_t page_size, bool with_positions,
                 std::uint32_t seed) {
  std::mt19937 gen(seed);
  Case<T, PagedLayout> c;
  c.e = CacheExtents{2, 3, 150, dim};
  std::int64_t const pages_per_row = (c.e.capacity + page_size - 1) / page_size;
  std::int64_t const table_rows = table == PageTable::kPerHead ? c.e.batch * c.e.kv_heads : c.e.batch;
  std::int64_t const num_pages = table_rows * pages_per_row + 3;  // a few pages no row uses
  std::vector<std::int32_t> pool(static_cast<std::size_t>(num_pages));
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), gen);
  c.table.assign(pool.begin(), pool.begin() + table_rows * pages_per_row);
  PagedConfig cfg;
  cfg.table = table;
  cfg.order = order;
  cfg.page_size = page_size;
  cfg.num_pages = num_pages;
  cfg.block_table = c.table.data();
  cfg.pages_per_row = pages_per_row;
  c.layout = make_paged_layout(c.e, cfg);
  fill(c, static_cast<std::size_t>(num_pages * c.layout.page_stride), with_positions, gen);
  check_compact(c);
}

template <class T>
void sweep(std::uint32_t seed) {
  constexpr std::array<Axis, 4> hf{Axis::kBatch, Axis::kHead, Axis::kSeq, Axis::kDim};
  constexpr std::array<Axis, 4> token_major{Axis::kBatch, Axis::kSeq, Axis::kHead, Axis::kDim};
  for (std::int64_t dim : {64, 128, 80})
    for (bool pos : {false, true}) {
      INFO("head_dim " << dim << ", positions " << pos);
      {
        INFO("strided [b,h,s,d]");
        check_strided<T>(dim, hf, 1, pos, 2, 3, 150, seed++);
      }
      {
        INFO("strided [b,s,h,d]");
        check_strided<T>(dim, token_major, 1, pos, 3, 2, 129, seed++);
      }
      {
        INFO("strided [b,h,s,d], innermost stride 2");
        check_strided<T>(dim, hf, 2, pos, 2, 3, 97, seed++);
      }
      for (std::int64_t ps : {1, 16, 64}) {
        INFO("paged, page size " << ps);
        {
          INFO("per sequence, NHD");
          check_paged<T>(dim, PageTable::kPerSequence, PageOrder::kNHD, ps, pos, seed++);
        }
        {
          INFO("per sequence, HND");
          check_paged<T>(dim, PageTable::kPerSequence, PageOrder::kHND, ps, pos, seed++);
        }
        {
          INFO("per head");
          check_paged<T>(dim, PageTable::kPerHead, PageOrder::kNHD, ps, pos, seed++);
        }
      }
    }
}

}  // namespace

TEST_CASE("cuda compact equals cpu compact_row on every row (float)", "[cuda][compact]") { sweep<float>(1000u); }
TEST_CASE("cuda compact equals cpu compact_row on every row (half)", "[cuda][compact]") { sweep<kvcompress::half>(2000u); }
TEST_CASE("cuda compact equals cpu compact_row on every row (bfloat16)", "[cuda][compact]") { sweep<kvcompress::bfloat16>(3000u); }

TEST_CASE("cuda compact over a 131072-slot row keeping half", "[cuda][compact]") {
  check_strided<kvcompress::bfloat16>(128, {Axis::kBatch, Axis::kHead, Axis::kSeq, Axis::kDim}, 1, true, 1, 2, 131072, 7u);
}

TEST_CASE("cuda compact with one, three and 64 CTAs looping over the tiles equals cpu compact_row", "[cuda][compact]") {
  // Few CTAs for many tiles: a CTA's later tiles wait on flags its own earlier tiles set, and every
  // source in a later tile's slots must survive until read.
  check_strided<float>(64, {Axis::kBatch, Axis::kHead, Axis::kSeq, Axis::kDim}, 1, true, 2, 3, 1001, 11u, 1);
  check_strided<float>(256, {Axis::kBatch, Axis::kHead, Axis::kSeq, Axis::kDim}, 1, true, 2, 3, 1001, 13u, 3);
  check_strided<float>(64, {Axis::kBatch, Axis::kHead, Axis::kSeq, Axis::kDim}, 1, true, 2, 3, 1001, 11u, 64);
  check_strided<kvcompress::bfloat16>(128, {Axis::kBatch, Axis::kSeq, Axis::kHead, Axis::kDim}, 1, false, 1, 4, 777, 12u,
                                      64);
}

TEST_CASE("cuda compact leaves the cache untouched once the status records a failure", "[cuda][compact]") {
  std::mt19937 gen(3u);
  Case<float, StridedLayout> c;
  c.e = CacheExtents{1, 2, 40, 64};
  c.layout = make_strided_layout(c.e, {Axis::kBatch, Axis::kHead, Axis::kSeq, Axis::kDim});
  fill(c, static_cast<std::size_t>(2 * 40 * 64), true, gen);
  auto const host = make_cache_view(c.k.data(), c.v.data(), c.e, c.layout, c.layout, c.lengths.data(),
                                    c.positions.data());
  DeviceMirror<float, StridedLayout> mirror(c.k, c.v, c.lengths, c.positions);
  auto const dev = mirror.view(host);
  DeviceBuffer<std::int32_t> d_kept(c.kept), d_counts(c.counts);
  cuda_impl::DeviceStatus failed_status{};
  failed_status.code = static_cast<int>(cuda_impl::StatusCode::kNonFiniteScore);
  DeviceBuffer<cuda_impl::DeviceStatus> status(std::vector<cuda_impl::DeviceStatus>{failed_status});
  std::size_t const bytes = cuda_impl::compact_workspace_bytes(dev);
  DeviceBuffer<std::byte> ws_mem(bytes);
  Workspace ws(ws_mem.get(), bytes);
  cuda_impl::compact(kvc_cuda_test::kChecked, dev, d_kept.get(), d_counts.get(), ws, status.get());
  KVC_CUDA_CHECK(cudaDeviceSynchronize());
  REQUIRE(mirror.k.download() == c.k);
  REQUIRE(mirror.v.download() == c.v);
  REQUIRE(mirror.lengths.download() == c.lengths);
  REQUIRE(mirror.positions.download() == c.positions);
}
