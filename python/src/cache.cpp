/// \file
/// \brief Cache views over Python tensors and the entry points (compress, score, released pages).

#include <algorithm>
#include <array>
#include <chrono>
#include <vector>
#include <string>

#include <nanobind/stl/optional.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "bindings.hpp"
#include "storage_dispatch.hpp"
#include "views.hpp"

namespace kvcompress::python {

namespace {

/// Runs `f` and prefixes a library error's message with `what` (the factories name their own
/// argument, e.g. "strides[seq]"; the binding says which tensor it came from).
template <class F>
auto naming(char const* what, F&& f) {
  try {
    return f();
  } catch (Error const& e) {
    throw Error("KVCache", __FILE__, __LINE__, std::string(what) + ": " + e.message());
  }
}

/// A tensor's strides; an axis of extent 1 has no meaningful stride (NumPy and PyTorch may give 0
/// or anything), so it gets 1, which addresses nothing else.
std::array<std::int64_t, 4> strides_of(Array const& a) {
  std::array<std::int64_t, 4> s{};
  for (std::size_t i = 0; i < 4; ++i) s[i] = a.shape(i) == 1 ? 1 : a.stride(i);
  return s;
}

void require_same_shape(Array const& k, Array const& v, char const* k_name, char const* v_name) {
  for (std::size_t i = 0; i < k.ndim(); ++i)
    KVC_CHECK(k.shape(i) == v.shape(i), v_name << " has shape[" << i << "] = " << v.shape(i) << " but " << k_name
                                               << " has " << k.shape(i));
}

template <class T>
AnyView strided_view(Array const& k, Array const& v, Array const& lengths, std::optional<Array> const& positions) {
  T* kd = typed_data<T>(k, "keys");
  T* vd = typed_data<T>(v, "values");
  require_rank(k, 4, "keys", "[batch, kv_heads, capacity, head_dim]");
  require_rank(v, 4, "values", "[batch, kv_heads, capacity, head_dim]");
  require_same_shape(k, v, "keys", "values");
  CacheExtents const e{static_cast<std::int64_t>(k.shape(0)), static_cast<std::int64_t>(k.shape(1)),
                       static_cast<std::int64_t>(k.shape(2)), static_cast<std::int64_t>(k.shape(3))};
  StridedLayout const kl = naming("keys", [&] { return make_strided_layout(e, strides_of(k)); });
  StridedLayout const vl = naming("values", [&] { return make_strided_layout(e, strides_of(v)); });
  std::int32_t* len = contiguous_data<std::int32_t>(lengths, e.batch * e.kv_heads, "lengths");
  std::int32_t* pos = positions ? contiguous_data<std::int32_t>(*positions, e.batch * e.kv_heads * e.capacity, "positions")
                                : nullptr;
  return make_cache_view(kd, vd, e, kl, vl, len, pos);
}

template <class T>
AnyView paged_view(Array const& k, Array const& v, Array const& table, Array const& lengths, std::int64_t kv_heads,
                   std::int64_t capacity, std::optional<Array> const& positions, std::optional<Array> const& v_table) {
  T* kd = typed_data<T>(k, "k_pool");
  T* vd = typed_data<T>(v, "v_pool");
  require_rank(k, 4, "k_pool", "[num_pages, heads_in_page, page_size, head_dim]");
  require_rank(v, 4, "v_pool", "[num_pages, heads_in_page, page_size, head_dim]");
  require_same_shape(k, v, "k_pool", "v_pool");
  KVC_CHECK(k.stride(3) == 1 && v.stride(3) == 1, "k_pool and v_pool need contiguous channels (head_dim stride 1), got "
                                                      << k.stride(3) << " and " << v.stride(3));
  std::int32_t const* tp = index_data<std::int32_t>(table, "block_table");
  KVC_CHECK(table.ndim() == 2 || table.ndim() == 3, "block_table must be [batch, pages_per_row] (per sequence) or "
                                                    "[batch, kv_heads, pages_per_row] (per head), got "
                                                        << table.ndim() << " dimensions");
  KVC_CHECK(table.stride(table.ndim() - 1) == 1 || table.shape(table.ndim() - 1) == 1,
            "block_table's rows must be contiguous, got an innermost stride of " << table.stride(table.ndim() - 1));
  bool const per_head = table.ndim() == 3;
  auto const heads_in_page = static_cast<std::int64_t>(k.shape(1));
  if (per_head) {
    KVC_CHECK(heads_in_page == 1, "a per-head block_table needs pools of one head per page, got heads_in_page = "
                                      << heads_in_page);
    KVC_CHECK(static_cast<std::int64_t>(table.shape(1)) == kv_heads,
              "block_table has " << table.shape(1) << " head rows per sequence but kv_heads = " << kv_heads);
  } else {
    KVC_CHECK(heads_in_page == kv_heads, "the pools hold " << heads_in_page << " heads per page but kv_heads = " << kv_heads);
  }
  CacheExtents const e{static_cast<std::int64_t>(table.shape(0)), kv_heads, capacity, static_cast<std::int64_t>(k.shape(3))};
  PagedConfig const c{per_head ? PageTable::kPerHead : PageTable::kPerSequence, PageOrder::kNHD,
                      static_cast<std::int64_t>(k.shape(2)), static_cast<std::int64_t>(k.shape(0)), tp,
                      static_cast<std::int64_t>(table.shape(table.ndim() - 1))};
  PagedLayout const base = make_paged_layout(e, c);
  // The factory assumes dense pages; the engine's tensors say where pages, heads and tokens really
  // are (a fused K/V pool, HND or NHD, a table that is a slice of a wider one). make_cache_view
  // validates the result.
  if (v_table) {
    index_data<std::int32_t>(*v_table, "v_block_table");
    for (std::size_t i = 0; i < table.ndim(); ++i)
      KVC_CHECK(v_table->ndim() == table.ndim() && v_table->shape(i) == table.shape(i) &&
                    (v_table->shape(i) == 1 || v_table->stride(i) == table.stride(i)),
                "v_block_table must have block_table's shape and strides");
  }
  auto const layout_of = [&](Array const& pool, Array const& tab) {
    PagedLayout l = base;
    l.block_table = static_cast<std::int32_t const*>(tab.data());
    // A dimension of extent 1 has no meaningful stride (NumPy and PyTorch differ there): keep the dense one.
    if (pool.shape(0) > 1) l.page_stride = pool.stride(0);
    if (!per_head && pool.shape(1) > 1) l.head_stride = pool.stride(1);
    if (pool.shape(2) > 1) l.token_stride = pool.stride(2);
    if (table.shape(0) > 1) l.table_batch_stride = table.stride(0);
    if (per_head && table.shape(1) > 1) l.table_head_stride = table.stride(1);
    return l;
  };
  std::int32_t* len = contiguous_data<std::int32_t>(lengths, e.batch * e.kv_heads, "lengths");
  std::int32_t* pos = positions ? contiguous_data<std::int32_t>(*positions, e.batch * e.kv_heads * e.capacity, "positions")
                                : nullptr;
  return make_cache_view(kd, vd, e, layout_of(k, table), layout_of(v, v_table ? *v_table : table), len, pos);
}

}  // namespace

Cache make_strided_cache(Array keys, Array values, Array lengths, std::optional<Array> positions) {
  Cache c{keys, values, lengths, positions, std::nullopt, std::nullopt, {}, storage_of(keys, "keys"), false};
  c.view = by_storage(c.storage, [&](auto t) { return strided_view<decltype(t)>(keys, values, lengths, positions); });
  return c;
}

Cache make_paged_cache(Array k_pool, Array v_pool, Array block_table, Array lengths, std::int64_t kv_heads,
                       std::int64_t capacity, std::optional<Array> positions, std::optional<Array> v_block_table) {
  Cache c{k_pool, v_pool, lengths, positions, block_table, v_block_table, {}, storage_of(k_pool, "k_pool"), true};
  c.view = by_storage(c.storage, [&](auto t) {
    return paged_view<decltype(t)>(k_pool, v_pool, block_table, lengths, kv_heads, capacity, positions, v_block_table);
  });
  return c;
}

namespace {

std::size_t workspace_bytes(NativePress const& press, PyObservation const& obs, Cache const& cache, int num_threads) {
  return std::visit(
      [&](auto const& view) {
        using V = std::decay_t<decltype(view)>;
        using T = typename V::value_type;
        Observation<T> const o = obs.build<T>(view.extents);
        return press.any->ops<T, typename V::layout_type>().compress_bytes(CpuDevice{num_threads}, o, view);
      },
      cache.view);
}

void compress(NativePress& press, PyObservation const& obs, Cache const& cache, int num_threads) {
  std::visit(
      [&](auto const& view) {
        using V = std::decay_t<decltype(view)>;
        using T = typename V::value_type;
        Observation<T> const o = obs.build<T>(view.extents);
        auto const& ops = press.any->ops<T, typename V::layout_type>();
        CpuDevice const dev{num_threads};
        nb::gil_scoped_release release;
        std::lock_guard<std::mutex> lock(*press.mutex);
        ops.compress(dev, o, view, press.reserve(ops.compress_bytes(dev, o, view)));
      },
      cache.view);
}

void score(NativePress& press, PyObservation const& obs, Cache const& cache, Array out, int num_threads) {
  KVC_CHECK(press.any->has_score(), press.any->name() << " has no score of its own (it is not a scorer press); "
                                                         "call compress");
  CacheExtents const& e = cache.extents();
  float* scores = contiguous_data<float>(out, e.batch * e.kv_heads * e.capacity, "out");
  std::visit(
      [&](auto const& view) {
        using V = std::decay_t<decltype(view)>;
        using T = typename V::value_type;
        Observation<T> const o = obs.build<T>(view.extents);
        auto const& ops = press.any->ops<T, typename V::layout_type>();
        CpuDevice const dev{num_threads};
        double const ratio = press.any->compression_ratio();
        nb::gil_scoped_release release;
        std::lock_guard<std::mutex> lock(*press.mutex);
        kvcompress::detail::validate_inputs(o, view);
        Workspace ws = press.reserve(ops.score_bytes(dev, o, view, ratio));
        ops.score(dev, o, view, scores, ws, ratio);
      },
      cache.view);
}

/// Seconds of each of `repeats` calls of the library's compress on this press, observation and cache,
/// timed inside C++ with the lengths restored before each call (the Python benchmark's baseline for
/// the binding's own cost per call).
std::vector<double> time_compress(NativePress& press, PyObservation const& obs, Cache const& cache, int repeats,
                                  int num_threads) {
  KVC_CHECK(repeats > 0, "repeats must be positive, got " << repeats);
  std::vector<double> seconds;
  std::visit(
      [&](auto const& view) {
        using V = std::decay_t<decltype(view)>;
        using T = typename V::value_type;
        Observation<T> const o = obs.build<T>(view.extents);
        auto const& ops = press.any->ops<T, typename V::layout_type>();
        CpuDevice const dev{num_threads};
        std::size_t const rows = static_cast<std::size_t>(view.extents.batch * view.extents.kv_heads);
        std::vector<std::int32_t> const saved(view.lengths, view.lengths + rows);
        nb::gil_scoped_release release;
        std::lock_guard<std::mutex> lock(*press.mutex);
        for (int i = 0; i < repeats; ++i) {
          std::copy(saved.begin(), saved.end(), view.lengths);
          auto const t0 = std::chrono::steady_clock::now();
          ops.compress(dev, o, view, press.reserve(ops.compress_bytes(dev, o, view)));
          seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        }
        std::copy(saved.begin(), saved.end(), view.lengths);
      },
      cache.view);
  return seconds;
}

std::int64_t released(Cache const& cache, Array previous, Array out) {
  KVC_CHECK(cache.paged, "released_pages needs a paged cache");
  CacheExtents const& e = cache.extents();
  std::int32_t const* prev = contiguous_data<std::int32_t>(previous, e.batch * e.kv_heads, "previous_lengths");
  std::int32_t* freed = index_data<std::int32_t>(out, "out");
  KVC_CHECK(out.ndim() == 1 && (out.stride(0) == 1 || out.shape(0) <= 1), "out must be a contiguous 1-D int32 array");
  return std::visit(
      [&](auto const& view) -> std::int64_t {
        // K's table: V's has the same live counts (the same table, or the value half of a fused pool).
        if constexpr (std::is_same_v<typename std::decay_t<decltype(view)>::layout_type, PagedLayout>)
          return released_pages(view.key_layout, view.extents, prev, view.lengths, freed,
                                static_cast<std::int64_t>(out.shape(0)));
        else
          return 0;
      },
      cache.view);
}

nb::dict memory(Cache const& cache, std::optional<Array> previous) {
  CacheExtents const& e = cache.extents();
  std::int32_t const* prev =
      previous ? contiguous_data<std::int32_t>(*previous, e.batch * e.kv_heads, "previous_lengths") : nullptr;
  MemoryReport const m = std::visit([&](auto const& view) { return memory_report(view, prev); }, cache.view);
  nb::dict d;
  d["bytes"] = m.bytes;
  d["bytes_freed"] = m.bytes_freed;
  d["pages"] = m.pages;
  d["pages_freed"] = m.pages_freed;
  d["page_bytes"] = m.page_bytes;
  d["page_bytes_freed"] = m.page_bytes_freed;
  return d;
}

}  // namespace

void bind_cache(nb::module_& m) {
  nb::class_<Cache>(m, "Cache", "One layer's KV cache over tensors the caller owns (no copy).")
      .def_prop_ro("keys", [](Cache const& c) { return c.keys; }, "The keys tensor (or K page pool).")
      .def_prop_ro("values", [](Cache const& c) { return c.values; }, "The values tensor (or V page pool).")
      .def_prop_ro("lengths", [](Cache const& c) { return c.lengths; }, "int32 [batch, kv_heads] live lengths, updated in place.")
      .def_prop_ro("paged", [](Cache const& c) { return c.paged; })
      .def_prop_ro("dtype", [](Cache const& c) { return std::string(storage_name(c.storage)); })
      .def_prop_ro("shape", [](Cache const& c) {
            CacheExtents const& e = c.extents();
            return nb::make_tuple(e.batch, e.kv_heads, e.capacity, e.head_dim);
          }, "(batch, kv_heads, capacity, head_dim)");

  m.def("_strided_cache", &make_strided_cache, nb::arg("keys"), nb::arg("values"), nb::arg("lengths"),
        nb::arg("positions") = nb::none(),
        "A strided cache: keys and values [batch, kv_heads, capacity, head_dim] with any positive strides.");
  m.def("_paged_cache", &make_paged_cache, nb::arg("k_pool"), nb::arg("v_pool"), nb::arg("block_table"),
        nb::arg("lengths"), nb::arg("kv_heads"), nb::arg("capacity"), nb::arg("positions") = nb::none(),
        nb::arg("v_block_table") = nb::none(),
        "A paged cache: pools [num_pages, heads_in_page, page_size, head_dim] (any page/head/token strides, "
        "contiguous channels) and an int32 block table [batch, pages] or [batch, kv_heads, pages]; "
        "v_block_table (same shape) when V's pages are other pages of the same pool (k_pool is v_pool).");
  m.def("_compress", &compress, nb::arg("press"), nb::arg("observation"), nb::arg("cache"), nb::arg("num_threads") = 0);
  m.def("_score", &score, nb::arg("press"), nb::arg("observation"), nb::arg("cache"), nb::arg("out"),
        nb::arg("num_threads") = 0);
  m.def("_workspace_bytes", &workspace_bytes, nb::arg("press"), nb::arg("observation"), nb::arg("cache"),
        nb::arg("num_threads") = 0);
  m.def("_time_compress", &time_compress, nb::arg("press"), nb::arg("observation"), nb::arg("cache"),
        nb::arg("repeats"), nb::arg("num_threads") = 0,
        "Seconds of each of `repeats` compress calls timed inside C++, lengths restored before each (benchmarks).");
  m.def("_released_pages", &released, nb::arg("cache"), nb::arg("previous_lengths"), nb::arg("out"));
  m.def("_memory_report", &memory, nb::arg("cache"), nb::arg("previous_lengths") = nb::none());
}

}  // namespace kvcompress::python
