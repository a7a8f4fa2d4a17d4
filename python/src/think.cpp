/// \file
/// \brief ThinK: prunes key channels, not entries. Its compress writes the kept channels of every
/// key packed into the caller's tensor (`PackedKeys`) and leaves the cache as it is, so it is bound
/// as its own class rather than through `AnyPress`; it holds its workspace as `NativePress` does.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <tuple>
#include <type_traits>
#include <variant>
#include <vector>

#include "bindings.hpp"
#include "views.hpp"

namespace kvcompress::python {

namespace {

/// \brief ThinK's parameters and the workspace its calls reuse.
struct NativeThinK {
  ThinKPress press;
  std::vector<std::byte> workspace;
  std::size_t allocations = 0;
  std::unique_ptr<std::mutex> mutex = std::make_unique<std::mutex>();

  Workspace reserve(std::size_t bytes) {
    if (workspace.size() < bytes) {
      workspace = std::vector<std::byte>(bytes);
      ++allocations;
    }
    return Workspace(workspace.data(), workspace.size());
  }
};

void channel_scores(NativeThinK& t, PyObservation const& obs, Cache const& cache, Array out, int num_threads) {
  CacheExtents const& e = cache.extents();
  float* scores = contiguous_data<float>(out, e.batch * e.kv_heads * e.head_dim, "out");
  std::visit(
      [&](auto const& view) {
        using T = typename std::decay_t<decltype(view)>::value_type;
        Observation<T> const o = obs.build<T>(view.extents);
        nb::gil_scoped_release release;
        t.press.channel_scores(CpuDevice{num_threads}, o, view, scores);
      },
      cache.host_view("ThinKPress"));
}

void compress_keys(NativeThinK& t, PyObservation const& obs, Cache const& cache, Array packed, Array channels,
                   int num_threads) {
  CacheExtents const& e = cache.extents();
  std::int64_t const kept = t.press.kept_channels(e.head_dim);
  std::int32_t* ch = contiguous_data<std::int32_t>(channels, e.batch * e.kv_heads * kept, "channels");
  // The press reads the keys while it writes the outputs: none may share memory with another.
  for (auto const& [a, b, what] : {std::tuple<Array const&, Array const&, char const*>{packed, cache.keys, "packed_keys and keys"},
                                   {packed, cache.values, "packed_keys and values"},
                                   {channels, cache.keys, "channels and keys"},
                                   {channels, cache.values, "channels and values"},
                                   {channels, packed, "channels and packed_keys"}})
    KVC_CHECK(!overlaps(a, b), what << " must not share memory");
  std::visit(
      [&](auto const& view) {
        using T = typename std::decay_t<decltype(view)>::value_type;
        T* data = typed_data<T>(packed, "packed_keys");
        require_contiguous(packed, e.batch * e.kv_heads * e.capacity * kept, "packed_keys");
        Observation<T> const o = obs.build<T>(view.extents);
        CpuDevice const dev{num_threads};
        nb::gil_scoped_release release;
        std::lock_guard<std::mutex> lock(*t.mutex);
        t.press.compress(dev, o, view, PackedKeys<T>{data, ch, kept}, t.reserve(t.press.workspace_bytes(dev, view)));
      },
      cache.host_view("ThinKPress"));
}

}  // namespace

void bind_think(nb::module_& m) {
  nb::class_<NativeThinK>(m, "ThinK", "ThinK's channel pruning and the workspace it reuses.")
      .def("__init__",
           [](NativeThinK* self, double key_channel_compression_ratio, std::int64_t window_size) {
             new (self) NativeThinK{ThinKPress{key_channel_compression_ratio, window_size}, {}, 0};
           },
           nb::arg("key_channel_compression_ratio"), nb::arg("window_size"))
      .def("kept_channels", [](NativeThinK const& t, std::int64_t head_dim) { return t.press.kept_channels(head_dim); },
           nb::arg("head_dim"), "Channels each key keeps: head_dim - int(head_dim * key_channel_compression_ratio).")
      .def("channel_scores", &channel_scores, nb::arg("observation"), nb::arg("cache"), nb::arg("out"),
           nb::arg("num_threads") = 0, "Channel scores into out, float32 [batch, kv_heads, head_dim].")
      .def("compress_keys", &compress_keys, nb::arg("observation"), nb::arg("cache"), nb::arg("packed_keys"),
           nb::arg("channels"), nb::arg("num_threads") = 0,
           "Writes each row's kept channels (ascending) into channels, int32 [batch, kv_heads, kept], and the "
           "packed keys of its live entries into packed_keys [batch, kv_heads, capacity, kept] of the cache's dtype.")
      .def_prop_ro("workspace_allocations", [](NativeThinK const& t) { return t.allocations; });
}

}  // namespace kvcompress::python
