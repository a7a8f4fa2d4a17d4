/// \file
/// \brief Wrappers that change how many entries each head keeps or what they hold: AdaKV,
/// CriticalKV, CriticalAdaKV, KeyRerotation, Merging; and ComposedPress.

#include <vector>

#include <nanobind/stl/vector.h>

#include "bindings.hpp"
#include "press_factory.hpp"

namespace kvcompress::python {

void bind_wrappers(nb::module_& m) {
  m.def("adakv", [](NativePress const& press, double alpha_safeguard) {
    return native(AdaKVPress<ErasedScorer>{inner(press, "AdaKVPress"), alpha_safeguard}, "AdaKVPress");
  });
  m.def("critical_kv", [](NativePress const& press, double epsilon, double first_stage_ratio) {
    return native(CriticalKVPress<ErasedScorer>{inner(press, "CriticalKVPress"), epsilon, first_stage_ratio},
                  "CriticalKVPress");
  });
  m.def("critical_adakv", [](NativePress const& press, double alpha_safeguard, double epsilon, double first_stage_ratio) {
    return native(CriticalAdaKVPress<ErasedScorer>{inner(press, "CriticalAdaKVPress"), alpha_safeguard, epsilon,
                                                   first_stage_ratio},
                  "CriticalAdaKVPress");
  });
  m.def("key_rerotation", [](NativePress const& press) {
    return native(KeyRerotationPress<ErasedScorer>{inner(press, "KeyRerotationPress")}, "KeyRerotationPress");
  });
  m.def("merging", [](NativePress const& press, double similarity_threshold, double merge_fraction) {
    return native(MergingPress<ErasedScorer>{inner(press, "MergingPress"), similarity_threshold, merge_fraction},
                  "MergingPress");
  });
  // The library's ComposedPress takes its presses as template arguments; a list of n presses is
  // the chain Composed(p1, Composed(p2, ... Composed(p_{n-1}, p_n))), each link one erased press.
  m.def("composed", [](std::vector<NativePress const*> const& presses) {
    KVC_CHECK(!presses.empty(), "ComposedPress needs at least one press");
    for (std::size_t i = 0; i < presses.size(); ++i)
      KVC_CHECK(presses[i] != nullptr, "ComposedPress presses[" << i << "] must not be None");
    if (presses.size() == 1) return native(ComposedPress<ErasedPress>(ErasedPress{presses[0]->any}), "ComposedPress");
    std::shared_ptr<AnyPress const> chain = presses.back()->any;
    for (std::size_t i = presses.size() - 1; i-- > 0;)
      chain = std::make_shared<AnyPress const>(
          ComposedPress<ErasedPress, ErasedPress>(ErasedPress{presses[i]->any}, ErasedPress{std::move(chain)}),
          "ComposedPress");
    return NativePress(std::move(chain));
  });
}

}  // namespace kvcompress::python
