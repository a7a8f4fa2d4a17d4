/// \file
/// \brief DMS as kvpress's DMSPress runs it: a stateful press the engine steps once per forward pass
/// and layer (prefill, then decoding passes). Its state (each row's pending scores) is sized at the
/// first step, from the observation's layer count and the cache's batch and kv heads.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <type_traits>
#include <variant>
#include <vector>

#include "bindings.hpp"
#include "press_factory.hpp"

namespace kvcompress::python {

namespace {

/// \brief The library's DMSPress over an erased scorer, and the workspace its steps reuse.
struct PyDMS {
  DMSPress<ErasedScorer> press;
  std::vector<std::byte> workspace;
  std::unique_ptr<std::mutex> mutex = std::make_unique<std::mutex>();
};

}  // namespace

void bind_dms(nb::module_& m) {
  nb::class_<PyDMS>(m, "DMS", "DMS's state: the pending scores of every layer's rows, and the workspace.")
      .def("__init__",
           [](PyDMS* self, NativePress const& press, float threshold, std::int64_t sliding_window_size, bool decoding,
              int num_layers, std::int64_t batch, std::int64_t kv_heads) {
             new (self) PyDMS{DMSPress<ErasedScorer>(inner(press, "DMSPress"),
                                                     DMSOptions{threshold, sliding_window_size, decoding},
                                                     DMSStateShape{num_layers, batch, kv_heads}),
                              {}};
           },
           nb::arg("press"), nb::arg("threshold"), nb::arg("sliding_window_size"), nb::arg("decoding"),
           nb::arg("num_layers"), nb::arg("batch"), nb::arg("kv_heads"))
      .def(
          "step",
          [](PyDMS& d, PyObservation const& obs, Cache const& cache, int num_threads) {
            return std::visit(
                [&](auto const& view) {
                  using T = typename std::decay_t<decltype(view)>::value_type;
                  Observation<T> const o = obs.build<T>(view.extents);
                  CpuDevice const dev{num_threads};
                  nb::gil_scoped_release release;
                  std::lock_guard<std::mutex> lock(*d.mutex);
                  std::size_t const bytes = d.press.workspace_bytes(dev, o, view);
                  if (d.workspace.size() < bytes) d.workspace = std::vector<std::byte>(bytes);
                  return d.press.step(dev, o, view, Workspace(d.workspace.data(), d.workspace.size()));
                },
                cache.host_view("DMSPress"));
          },
          nb::arg("observation"), nb::arg("cache"), nb::arg("num_threads") = 0,
          "One forward pass of one layer, after its keys and values were appended; returns whether entries were "
          "removed.")
      .def("removed", [](PyDMS const& d, int layer) { return d.press.removed(layer); }, nb::arg("layer"))
      .def("pending", [](PyDMS const& d, int layer) { return d.press.pending(layer); }, nb::arg("layer"))
      .def_prop_ro("compression_ratio", [](PyDMS const& d) { return d.press.compression_ratio(); })
      .def("reset", [](PyDMS& d) { d.press.reset(); });
}

}  // namespace kvcompress::python
