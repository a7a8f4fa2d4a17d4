/// \file
/// \brief Presses whose budgets come from data computed offline for a model, which kvpress
/// downloads and the caller hands over here: LUKV's budget curve, DuoAttention's head scores (its
/// trained pattern, or the on-the-fly estimate from `duo_attention_sample_scores`). The presses
/// state the arrays' shapes and check them against the cache and the layer index.

#include <cstdint>
#include <optional>

#include <nanobind/stl/optional.h>
#include <nanobind/stl/shared_ptr.h>

#include "bindings.hpp"
#include "press_factory.hpp"

namespace kvcompress::python {

void bind_budget_wrappers(nb::module_& m) {
  m.def("lukv", [](NativePress const& press, double r, std::int64_t sink, std::int64_t window,
                   std::optional<Array> budget_curves) {
    FloatArray<3> const c{std::move(budget_curves), "budget_curves", {"targets", "num_layers", "kv_heads"}};
    LUKVPress<ErasedScorer> p{inner(press, "LUKVPress"), r, sink, window};
    p.budget_curves = c.data();
    if (c.array) {
      KVC_CHECK(c.array->shape(0) == 99, "budget_curves must be [99, num_layers, kv_heads] (targets 1 % ... 99 %), got "
                                             << c.array->shape(0) << " rows");
      p.num_layers = static_cast<std::int64_t>(c.array->shape(1));
      p.kv_heads = static_cast<std::int64_t>(c.array->shape(2));
    }
    return native(p, "LUKVPress", Borrowed{c.owner(), {}});
  });
  m.def("duo_attention", [](double head_compression_ratio, std::int64_t sink_size, std::int64_t recent_size,
                            std::optional<Array> head_scores) {
    FloatArray<2> const s{std::move(head_scores), "head_scores", {"num_layers", "kv_heads"}};
    DuoAttentionPress p;
    p.head_compression_ratio = head_compression_ratio;
    p.sink_size = sink_size;
    p.recent_size = recent_size;
    p.head_scores = s.data();
    if (s.array) {
      p.num_layers = static_cast<std::int64_t>(s.array->shape(0));
      p.kv_heads = static_cast<std::int64_t>(s.array->shape(1));
    }
    return native(p, "DuoAttentionPress", Borrowed{s.owner(), {}});
  });
  m.def(
      "duo_attention_sample_scores",
      [](Array mean_query, Array mean_key, std::shared_ptr<RotaryEmbedding const> const& rope, std::int64_t q_len,
         Array out) {
        KVC_CHECK(rope != nullptr, "duo_attention_sample_scores: rope must not be None");
        auto const d = static_cast<std::int64_t>(rope->head_dim());
        require_rank(mean_query, 2, "mean_query", "[q_heads, head_dim]");
        require_rank(mean_key, 2, "mean_key", "[kv_heads, head_dim]");
        auto const q_heads = static_cast<std::int64_t>(mean_query.shape(0));
        auto const kv_heads = static_cast<std::int64_t>(mean_key.shape(0));
        float const* q = contiguous_data<float>(mean_query, q_heads * d, "mean_query");
        float const* k = contiguous_data<float>(mean_key, kv_heads * d, "mean_key");
        float* scores = contiguous_data<float>(out, kv_heads, "out");
        duo_attention_sample_scores(q, k, q_heads, kv_heads, *rope, q_len, scores);
      },
      nb::arg("mean_query"), nb::arg("mean_key"), nb::arg("rope"), nb::arg("q_len"), nb::arg("out"),
      "DuoAttention's on-the-fly head scores of one sample into out (float32 [kv_heads]): mean_query "
      "[q_heads, head_dim] and mean_key [kv_heads, head_dim] are the sample's pre-RoPE queries and keys "
      "averaged over its q_len tokens; kvpress averages them over 50 BookSum samples.");
}

}  // namespace kvcompress::python
