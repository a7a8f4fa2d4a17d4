#pragma once
/// \file
/// \brief The parts of the `kvcompress._core` module, one function per source file.

#include <nanobind/nanobind.h>

namespace kvcompress::python {

void bind_communicator(nanobind::module_& m);
void bind_cache(nanobind::module_& m);
void bind_scorers(nanobind::module_& m);
void bind_attention_scorers(nanobind::module_& m);
void bind_caller_data_scorers(nanobind::module_& m);
void bind_wrappers(nanobind::module_& m);
void bind_chunk_wrappers(nanobind::module_& m);
void bind_budget_wrappers(nanobind::module_& m);
void bind_think(nanobind::module_& m);
void bind_kv_compose(nanobind::module_& m);
void bind_cross_layer(nanobind::module_& m);
void bind_dms(nanobind::module_& m);
void bind_decoding(nanobind::module_& m);

}  // namespace kvcompress::python
