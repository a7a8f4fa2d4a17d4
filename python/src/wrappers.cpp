/// \file
/// \brief Wrappers that change how many entries each head keeps: AdaKV, CriticalKV,
/// CriticalAdaKV, KeyRerotation.

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
}

}  // namespace kvcompress::python
