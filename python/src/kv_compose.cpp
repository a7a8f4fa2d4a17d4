/// \file
/// \brief KVCompose: budgets across layers and heads from the attention of a replay pass, in the
/// library's three steps, each a Python call: the statistics folded per layer and pass, the plan
/// (scores and per-(layer, head) counts), and each layer's compression to the plan.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "bindings.hpp"
#include "communicator.hpp"
#include "storage_dispatch.hpp"
#include "views.hpp"

namespace kvcompress::python {

namespace {

KVComposeAggregation aggregation(std::string const& name, char const* what) {
  if (name == "max") return KVComposeAggregation::kMax;
  if (name == "mean") return KVComposeAggregation::kMean;
  KVC_THROW("KVComposePress " << what << " must be max or mean, got '" << name << "'");
}

/// \brief A plan and the workspace its compress calls reuse (one call at a time).
struct NativePlan {
  KVComposePlan plan;
  std::vector<std::byte> workspace;
  std::unique_ptr<std::mutex> mutex = std::make_unique<std::mutex>();
};

}  // namespace

void bind_kv_compose(nb::module_& m) {
  nb::class_<KVComposePress>(m, "KVComposeConfig", "KVCompose's parameters (kvpress's names).")
      .def("__init__",
           [](KVComposePress* self, bool structured, double compression_ratio, std::string const& agg_task,
              std::string const& agg_group, std::string const& agg_head, bool add_v_norm, bool add_mean_across_heads,
              std::int64_t keep_token_lower_bound) {
             KVComposePress p{structured,
                              compression_ratio,
                              aggregation(agg_task, "agg_task"),
                              aggregation(agg_group, "agg_group"),
                              aggregation(agg_head, "agg_head"),
                              add_v_norm,
                              add_mean_across_heads,
                              keep_token_lower_bound};
             p.check();
             new (self) KVComposePress(p);
           },
           nb::arg("structured"), nb::arg("compression_ratio"), nb::arg("agg_task"), nb::arg("agg_group"),
           nb::arg("agg_head"), nb::arg("add_v_norm"), nb::arg("add_mean_across_heads"),
           nb::arg("keep_token_lower_bound"));

  nb::class_<KVComposeStatistics>(m, "KVComposeStatistics",
                                  "Per (layer, query head, context entry) agg_task of the replay passes' attention.")
      .def(nb::init<KVComposePress const&, int, std::int64_t, std::int64_t>(), nb::arg("config"), nb::arg("num_layers"),
           nb::arg("q_heads"), nb::arg("context_length"))
      .def(
          "add",
          [](KVComposeStatistics& s, int layer, Array const& attention, int num_threads) {
            by_storage(storage_of(attention, "attention"), [&](auto t) {
              using T = decltype(t);
              Tensor4<T> const a = tensor4<T>(attention, "attention");
              nb::gil_scoped_release release;
              s.add(CpuDevice{num_threads}, layer, a);
            });
          },
          nb::arg("layer"), nb::arg("attention"), nb::arg("num_threads") = 0,
          "Folds one replay pass of layer in: attention [batch, q_heads, replay_len, n] probabilities over the "
          "context's keys and the replay's own (n > context_length).")
      .def_prop_ro("num_layers", &KVComposeStatistics::num_layers)
      .def_prop_ro("q_heads", &KVComposeStatistics::q_heads)
      .def_prop_ro("context_length", &KVComposeStatistics::context_length);

  nb::class_<NativePlan>(m, "KVComposePlan", "KVCompose's scores and each (layer, kv head)'s count.")
      .def_prop_ro("num_layers", [](NativePlan const& p) { return p.plan.num_layers; })
      .def_prop_ro("kv_heads", [](NativePlan const& p) { return p.plan.kv_heads; })
      .def_prop_ro("context_length", [](NativePlan const& p) { return p.plan.context_length; })
      .def_prop_ro("scores", [](NativePlan const& p) { return p.plan.scores; }, "[layers * kv_heads * context_length]")
      .def_prop_ro("kept", [](NativePlan const& p) { return p.plan.kept; }, "[layers * kv_heads] entries kept per row");

  m.def(
      "kvcompose_plan",
      [](KVComposePress const& config, KVComposeStatistics const& stats, std::int64_t kv_heads,
         std::optional<Array> value_norms, std::optional<PyShard> shard) {
        NativePlan out;
        std::int64_t const heads = shard && shard->kv_heads > 0 ? shard->kv_heads : kv_heads;
        on_shard(shard, {kv_heads, heads, 1, stats.num_layers()}, [&](TensorParallelShard const& s) {
          float const* norms = nullptr;
          KVC_CHECK(kv_heads > 0, "kv_heads must be positive, got " << kv_heads);
          if (value_norms)
            norms = contiguous_data<float>(*value_norms, static_cast<std::int64_t>(stats.num_layers()) * kv_heads *
                                                             stats.context_length(),
                                           "value_norms");
          nb::gil_scoped_release release;
          out.plan = kvcompose_plan(CpuDevice{}, config, stats, kv_heads, norms, s);
        });
        return out;
      },
      nb::arg("config"), nb::arg("statistics"), nb::arg("kv_heads"), nb::arg("value_norms") = nb::none(),
      nb::arg("shard") = nb::none(),
      "The plan from the statistics; value_norms float32 [layers, kv_heads, context_length] with add_v_norm. "
      "With shard: the statistics and value norms are this rank's kv heads' (kv_heads of them) and the plan "
      "is the whole model's, the same on every rank.");
  m.def(
      "kvcompose_compress",
      [](NativePlan& plan, int layer, Cache const& cache, int num_threads, std::optional<PyShard> shard) {
        CacheExtents const& e = cache.extents();
        std::int64_t const heads = shard && shard->kv_heads > 0 ? shard->kv_heads : e.kv_heads;
        on_shard(shard, {e.kv_heads, heads, e.batch, layer}, [&](TensorParallelShard const& s) {
          std::visit(
              [&](auto const& view) {
                CpuDevice const dev{num_threads};
                std::size_t const bytes = kvcompose_compress_workspace_bytes(dev, view);
                nb::gil_scoped_release release;
                std::lock_guard<std::mutex> lock(*plan.mutex);
                if (plan.workspace.size() < bytes) plan.workspace = std::vector<std::byte>(bytes);
                kvcompose_compress(dev, plan.plan, layer, view, Workspace(plan.workspace.data(), plan.workspace.size()), s);
              },
              cache.host_view("KVComposePress.compress"));
        });
      },
      nb::arg("plan"), nb::arg("layer"), nb::arg("cache"), nb::arg("num_threads") = 0, nb::arg("shard") = nb::none(),
      "Compacts layer's cache to the plan in place (each row holds the context's entries); with shard, the "
      "cache holds this rank's kv heads of the plan's.");
  m.def(
      "kvcompose_value_norms",
      [](Cache const& cache, std::int64_t context_length, Array out) {
        CacheExtents const& e = cache.extents();
        float* o = contiguous_data<float>(out, e.kv_heads * context_length, "out");
        std::visit([&](auto const& view) { kvcompose_value_norms(view, context_length, o); },
                   cache.host_view("KVComposePress"));
      },
      nb::arg("cache"), nb::arg("context_length"), nb::arg("out"),
      "|v| of batch element 0's first context_length entries of one layer into out [kv_heads, context_length].");
}

}  // namespace kvcompress::python
