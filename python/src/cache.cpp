/// \file
/// \brief Cache views over Python tensors and the entry points (compress, score, released pages).

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

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

/// Calls f with a CUDA cache's view over host copies of its lengths and block tables, read on the
/// call's stream (which orders them after the caller's writes): what the host checks, released_pages
/// and memory_report read. Keys, values and positions stay device memory, never read through it.
template <class T, class L, class F>
decltype(auto) with_host_copy(KVCacheView<T, L> const& view, CudaCall call, F&& f) {
  auto const host_copy = [&](std::int32_t const* device_memory, std::int64_t count) {
    std::vector<std::int32_t> h(static_cast<std::size_t>(count));
    cuda_copy_to_host(h.data(), device_memory, h.size() * sizeof(std::int32_t), call);
    return h;
  };
  CacheExtents const& e = view.extents;
  std::vector<std::int32_t> const lengths = host_copy(view.lengths, e.batch * e.kv_heads);
  KVCacheView<T, L> twin = view;
  twin.lengths = const_cast<std::int32_t*>(lengths.data());  // never written through
  twin.positions = nullptr;
  std::vector<std::int32_t> k_table, v_table;
  if constexpr (std::is_same_v<L, PagedLayout>) {
    k_table = host_copy(view.key_layout.block_table, kvcompress::detail::table_span(e, view.key_layout));
    twin.key_layout.block_table = k_table.data();
    twin.value_layout.block_table = k_table.data();
    if (view.value_layout.block_table != view.key_layout.block_table) {
      v_table = host_copy(view.value_layout.block_table, kvcompress::detail::table_span(e, view.value_layout));
      twin.value_layout.block_table = v_table.data();
    }
  }
  return f(static_cast<KVCacheView<T, L> const&>(twin));
}

/// The view of a cache at `place`. On the host, the library's validating factory. On a CUDA device,
/// what the factory checks, once: the view's shape (no memory read), the driver's word that every
/// pointer is device memory, then the lengths and the live block-table entries on host copies. Every
/// later call checks the lengths again on the device; the table is the caller's to keep valid, as on
/// the CPU between calls.
template <class T, class L>
AnyView finish_view(T* kd, T* vd, CacheExtents const& e, L const& kl, L const& vl, std::int32_t* len,
                    std::int32_t* pos, Place const& place, CUstream_st* stream) {
  if constexpr (kCudaCompiled) {
    if (!place.host()) {
      KVCacheView<T, L> const view{kd, vd, e, kl, vl, len, pos};
      kvcompress::detail::validate_view_shape(view);
      cuda_require_device(place.cuda_device);
      cuda_check_cache(view, place.cuda_device);
      with_host_copy(view, CudaCall{place.cuda_device, stream}, [](KVCacheView<T, L> const& twin) {
        (void)make_cache_view(twin.keys, twin.values, twin.extents, twin.key_layout, twin.value_layout, twin.lengths);
      });
      return view;
    }
  }
  (void)stream;
  return make_cache_view(kd, vd, e, kl, vl, len, pos);
}

template <class T>
AnyView strided_view(Array const& k, Array const& v, Array const& lengths, std::optional<Array> const& positions,
                     Place const& place, CUstream_st* stream) {
  T* kd = typed_data<T>(k, "keys", place);
  T* vd = typed_data<T>(v, "values", place);
  require_rank(k, 4, "keys", "[batch, kv_heads, capacity, head_dim]");
  require_rank(v, 4, "values", "[batch, kv_heads, capacity, head_dim]");
  require_same_shape(k, v, "keys", "values");
  CacheExtents const e{static_cast<std::int64_t>(k.shape(0)), static_cast<std::int64_t>(k.shape(1)),
                       static_cast<std::int64_t>(k.shape(2)), static_cast<std::int64_t>(k.shape(3))};
  StridedLayout const kl = naming("keys", [&] { return make_strided_layout(e, strides_of(k)); });
  StridedLayout const vl = naming("values", [&] { return make_strided_layout(e, strides_of(v)); });
  std::int32_t* len = contiguous_data<std::int32_t>(lengths, e.batch * e.kv_heads, "lengths", place);
  std::int32_t* pos = positions ? contiguous_data<std::int32_t>(*positions, e.batch * e.kv_heads * e.capacity, "positions", place)
                                : nullptr;
  return finish_view(kd, vd, e, kl, vl, len, pos, place, stream);
}

template <class T>
AnyView paged_view(Array const& k, Array const& v, Array const& table, Array const& lengths, std::int64_t kv_heads,
                   std::int64_t capacity, std::optional<Array> const& positions, std::optional<Array> const& v_table,
                   Place const& place, CUstream_st* stream) {
  T* kd = typed_data<T>(k, "k_pool", place);
  T* vd = typed_data<T>(v, "v_pool", place);
  require_rank(k, 4, "k_pool", "[num_pages, heads_in_page, page_size, head_dim]");
  require_rank(v, 4, "v_pool", "[num_pages, heads_in_page, page_size, head_dim]");
  require_same_shape(k, v, "k_pool", "v_pool");
  KVC_CHECK(k.stride(3) == 1 && v.stride(3) == 1, "k_pool and v_pool need contiguous channels (head_dim stride 1), got "
                                                      << k.stride(3) << " and " << v.stride(3));
  std::int32_t const* tp = index_data<std::int32_t>(table, "block_table", place);
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
    index_data<std::int32_t>(*v_table, "v_block_table", place);
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
  std::int32_t* len = contiguous_data<std::int32_t>(lengths, e.batch * e.kv_heads, "lengths", place);
  std::int32_t* pos = positions ? contiguous_data<std::int32_t>(*positions, e.batch * e.kv_heads * e.capacity, "positions", place)
                                : nullptr;
  return finish_view(kd, vd, e, layout_of(k, table), layout_of(v, v_table ? *v_table : table), len, pos, place, stream);
}

}  // namespace

Cache make_strided_cache(Array keys, Array values, Array lengths, std::optional<Array> positions, std::uintptr_t stream) {
  Place const place = place_of(keys, "keys");
  Cache c{keys, values, lengths, positions, std::nullopt, std::nullopt, {}, storage_of(keys, "keys"), false, place};
  c.any_view = by_storage(c.storage, [&](auto t) {
    return strided_view<decltype(t)>(keys, values, lengths, positions, place, reinterpret_cast<CUstream_st*>(stream));
  });
  return c;
}

Cache make_paged_cache(Array k_pool, Array v_pool, Array block_table, Array lengths, std::int64_t kv_heads,
                       std::int64_t capacity, std::optional<Array> positions, std::optional<Array> v_block_table,
                       std::uintptr_t stream) {
  Place const place = place_of(k_pool, "k_pool");
  Cache c{k_pool, v_pool, lengths, positions, block_table, v_block_table, {}, storage_of(k_pool, "k_pool"), true, place};
  c.any_view = by_storage(c.storage, [&](auto t) {
    return paged_view<decltype(t)>(k_pool, v_pool, block_table, lengths, kv_heads, capacity, positions, v_block_table,
                                   place, reinterpret_cast<CUstream_st*>(stream));
  });
  return c;
}

namespace {

std::size_t workspace_bytes(NativePress const& press, PyObservation const& obs, Cache const& cache, int num_threads) {
  return std::visit(
      [&](auto const& view) -> std::size_t {
        using V = std::decay_t<decltype(view)>;
        using T = typename V::value_type;
        Observation<T> const o = obs.build<T>(view.extents, cache.place);
        if constexpr (kCudaCompiled) {
          if (!cache.place.host()) return cuda_compress_bytes(press.cuda_press(cache.place), o, view);
        }
        return press.any->ops<T, typename V::layout_type>().compress_bytes(CpuDevice{num_threads}, o, view);
      },
      cache.any_view);
}

void compress(NativePress& press, PyObservation const& obs, Cache const& cache, int num_threads, std::uintptr_t stream) {
  std::visit(
      [&](auto const& view) {
        using V = std::decay_t<decltype(view)>;
        using T = typename V::value_type;
        on_shard(obs, view, [&] {
          Observation<T> const o = obs.build<T>(view.extents, cache.place);
          if constexpr (kCudaCompiled) {
            if (!cache.place.host()) {
              CudaPress const& p = press.cuda_press(cache.place);
              CudaCall const call{cache.place.cuda_device, reinterpret_cast<CUstream_st*>(stream)};
              nb::gil_scoped_release release;
              std::lock_guard<std::mutex> lock(*press.mutex);
              cuda_compress(p, o, view, call, press.device());
              return;
            }
          }
          auto const& ops = press.any->ops<T, typename V::layout_type>();
          CpuDevice const dev{num_threads};
          nb::gil_scoped_release release;
          std::lock_guard<std::mutex> lock(*press.mutex);
          ops.compress(dev, o, view, press.reserve(ops.compress_bytes(dev, o, view)));
        });
      },
      cache.any_view);
}

void score(NativePress& press, PyObservation const& obs, Cache const& cache, Array out, int num_threads,
           std::uintptr_t stream) {
  KVC_CHECK(press.any->has_score(), press.any->name() << " has no score of its own (it is not a scorer press); "
                                                         "call compress");
  CacheExtents const& e = cache.extents();
  float* scores = contiguous_data<float>(out, e.batch * e.kv_heads * e.capacity, "out", cache.place);
  std::visit(
      [&](auto const& view) {
        using V = std::decay_t<decltype(view)>;
        using T = typename V::value_type;
        on_shard(obs, view, [&] {
          Observation<T> const o = obs.build<T>(view.extents, cache.place);
          if constexpr (kCudaCompiled) {
            if (!cache.place.host()) {
              CudaPress const& p = press.cuda_press(cache.place);
              CudaCall const call{cache.place.cuda_device, reinterpret_cast<CUstream_st*>(stream)};
              nb::gil_scoped_release release;
              std::lock_guard<std::mutex> lock(*press.mutex);
              cuda_score(p, o, view, scores, call, press.device());
              return;
            }
          }
          auto const& ops = press.any->ops<T, typename V::layout_type>();
          CpuDevice const dev{num_threads};
          double const ratio = press.any->compression_ratio();
          nb::gil_scoped_release release;
          std::lock_guard<std::mutex> lock(*press.mutex);
          kvcompress::detail::validate_inputs(o, view);
          Workspace ws = press.reserve(ops.score_bytes(dev, o, view, ratio));
          ops.score(dev, o, view, scores, ws, ratio);
        });
      },
      cache.any_view);
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
      cache.host_view("_time_compress"));
  return seconds;
}

/// Calls f with the cache's view as the host reads it: the view itself for a host cache, its view over
/// host copies of the lengths and block tables (read on `stream`) for a CUDA cache.
template <class F>
decltype(auto) visit_on_host(Cache const& cache, std::uintptr_t stream, F&& f) {
  return std::visit(
      [&](auto const& view) -> decltype(auto) {
        if constexpr (kCudaCompiled) {
          if (!cache.place.host())
            return with_host_copy(view, CudaCall{cache.place.cuda_device, reinterpret_cast<CUstream_st*>(stream)}, f);
        }
        (void)stream;
        return f(view);
      },
      cache.any_view);
}

std::int64_t released(Cache const& cache, Array previous, Array out, std::uintptr_t stream) {
  KVC_CHECK(cache.paged, "released_pages needs a paged cache");
  CacheExtents const& e = cache.extents();
  std::int32_t const* prev = contiguous_data<std::int32_t>(previous, e.batch * e.kv_heads, "previous_lengths");
  std::int32_t* freed = index_data<std::int32_t>(out, "out");
  KVC_CHECK(out.ndim() == 1 && (out.stride(0) == 1 || out.shape(0) <= 1), "out must be a contiguous 1-D int32 array");
  return visit_on_host(cache, stream, [&](auto const& view) -> std::int64_t {
    // K's table: V's has the same live counts (the same table, or the value half of a fused pool).
    if constexpr (std::is_same_v<typename std::decay_t<decltype(view)>::layout_type, PagedLayout>)
      return released_pages(view.key_layout, view.extents, prev, view.lengths, freed,
                            static_cast<std::int64_t>(out.shape(0)));
    else
      return 0;
  });
}

nb::dict memory(Cache const& cache, std::optional<Array> previous, std::uintptr_t stream) {
  CacheExtents const& e = cache.extents();
  std::int32_t const* prev =
      previous ? contiguous_data<std::int32_t>(*previous, e.batch * e.kv_heads, "previous_lengths") : nullptr;
  MemoryReport const m = visit_on_host(cache, stream, [&](auto const& view) { return memory_report(view, prev); });
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
          }, "(batch, kv_heads, capacity, head_dim)")
      .def_prop_ro("device", [](Cache const& c) { return c.place.name(); }, "'cpu' or 'cuda:N': where every tensor lives.")
      .def_prop_ro("cuda_device", [](Cache const& c) { return c.place.cuda_device; },
                   "The CUDA device's index, or -1 for a host cache.");

  // `stream` (a cudaStream_t as an integer, 0 for CUDA's default stream) orders a CUDA cache's calls
  // after the caller's work; host caches ignore it.
  m.def("_strided_cache", &make_strided_cache, nb::arg("keys"), nb::arg("values"), nb::arg("lengths"),
        nb::arg("positions") = nb::none(), nb::arg("stream") = 0,
        "A strided cache: keys and values [batch, kv_heads, capacity, head_dim] with any positive strides.");
  m.def("_paged_cache", &make_paged_cache, nb::arg("k_pool"), nb::arg("v_pool"), nb::arg("block_table"),
        nb::arg("lengths"), nb::arg("kv_heads"), nb::arg("capacity"), nb::arg("positions") = nb::none(),
        nb::arg("v_block_table") = nb::none(), nb::arg("stream") = 0,
        "A paged cache: pools [num_pages, heads_in_page, page_size, head_dim] (any page/head/token strides, "
        "contiguous channels) and an int32 block table [batch, pages] or [batch, kv_heads, pages]; "
        "v_block_table (same shape) when V's pages are other pages of the same pool (k_pool is v_pool).");
  m.def("_compress", &compress, nb::arg("press"), nb::arg("observation"), nb::arg("cache"), nb::arg("num_threads") = 0,
        nb::arg("stream") = 0);
  m.def("_score", &score, nb::arg("press"), nb::arg("observation"), nb::arg("cache"), nb::arg("out"),
        nb::arg("num_threads") = 0, nb::arg("stream") = 0);
  m.def("_workspace_bytes", &workspace_bytes, nb::arg("press"), nb::arg("observation"), nb::arg("cache"),
        nb::arg("num_threads") = 0);
  m.def("_time_compress", &time_compress, nb::arg("press"), nb::arg("observation"), nb::arg("cache"),
        nb::arg("repeats"), nb::arg("num_threads") = 0,
        "Seconds of each of `repeats` compress calls timed inside C++, lengths restored before each (benchmarks).");
  m.def("_released_pages", &released, nb::arg("cache"), nb::arg("previous_lengths"), nb::arg("out"),
        nb::arg("stream") = 0);
  m.def("_memory_report", &memory, nb::arg("cache"), nb::arg("previous_lengths") = nb::none(), nb::arg("stream") = 0);
}

}  // namespace kvcompress::python
