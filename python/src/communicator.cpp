/// \file
/// \brief `Communicator` and `TensorParallelShard`: a layer's kv heads split over the ranks of a
/// process group whose collectives Python runs (`kvcompress.distributed`).

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include <nanobind/stl/optional.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>

#include "bindings.hpp"
#include "views.hpp"

namespace kvcompress::python {

namespace {

ReduceOp reduce_op(std::string const& op) {
  if (op == "sum") return ReduceOp::sum;
  if (op == "max") return ReduceOp::max;
  KVC_THROW("op must be 'sum' or 'max', got '" << op << "'");
}

/// The 1-D host buffer of `a`: int64 or float32, contiguous.
std::int64_t elements(Array const& a, char const* what) {
  KVC_CHECK(a.ndim() == 1, what << " must be 1-D, got " << a.ndim() << " dimensions");
  return static_cast<std::int64_t>(a.shape(0));
}

void all_reduce(PythonCommunicator& comm, Array buffer, std::string const& op) {
  ReduceOp const o = reduce_op(op);
  std::int64_t const n = elements(buffer, "buffer");
  if (buffer.dtype() == nb::dtype<float>()) {
    float* data = contiguous_data<float>(buffer, n, "buffer");
    nb::gil_scoped_release release;
    comm.all_reduce(data, static_cast<std::size_t>(n), o);
  } else {
    std::int64_t* data = contiguous_data<std::int64_t>(buffer, n, "buffer");
    nb::gil_scoped_release release;
    comm.all_reduce(data, static_cast<std::size_t>(n), o);
  }
}

void all_gather(PythonCommunicator& comm, Array send, Array recv) {
  std::int64_t const n = elements(send, "send");
  std::int64_t const* in = contiguous_data<std::int64_t>(send, n, "send");
  std::int64_t* out = contiguous_data<std::int64_t>(recv, n * comm.size(), "recv");
  nb::gil_scoped_release release;
  comm.all_gather(in, out, static_cast<std::size_t>(n));
}

/// A rank that failed before it reached the library (a press that could not be built) still owes
/// the group the handshake of this call: it sends its failure, so every rank raises.
void report_failure(PyObservation const& obs, Cache const& cache) {
  if (!obs.shard || !obs.shard->communicator) return;
  std::visit(
      [&](auto const& view) {
        using T = typename std::decay_t<decltype(view)>::value_type;
        Observation<T> o;
        o.layer_idx = obs.layer_idx;
        o.shard = obs.shard->native();
        Communicator& comm = *o.shard.communicator;
        std::vector<std::int64_t> table(static_cast<std::size_t>(comm.size() + 1) * kvcompress::detail::kFields);
        std::int64_t record[kvcompress::detail::kFields];
        kvcompress::detail::fill_record(o, view, true, 0, 0, record);
        nb::gil_scoped_release release;
        kvcompress::detail::exchange_records(comm, record, table.data());
      },
      cache.any_view);
}

}  // namespace

void bind_communicator(nb::module_& m) {
  nb::class_<PythonCommunicator>(
      m, "Communicator",
      "A process group seen by one of its ranks, for presses on a layer whose kv heads are split over the "
      "group. Its collectives are the methods of `backend`: all_reduce(buffer, op) reduces a 1-D int64 or "
      "float32 NumPy array in place over the group (op 'sum' or 'max'); all_gather(send, recv) fills the int64 "
      "recv [size * count] with every rank's send [count] in rank order. Each must bound its wait and raise "
      "(the message naming the collective) rather than hang. kvcompress.distributed.TorchDistributedCommunicator "
      "is one over a torch.distributed process group.")
      .def(nb::init<nb::object, int, int>(), nb::arg("backend"), nb::arg("rank"), nb::arg("size"))
      .def_prop_ro("rank", &PythonCommunicator::rank, "This process's rank in [0, size).")
      .def_prop_ro("size", &PythonCommunicator::size, "Ranks in the group.")
      .def("all_reduce", &all_reduce, nb::arg("buffer"), nb::arg("op") = "sum",
           "The library's all-reduce of a 1-D contiguous int64 or float32 host array, in place (through backend).")
      .def("all_gather", &all_gather, nb::arg("send"), nb::arg("recv"),
           "The library's all-gather: int64 send [count] of every rank into recv [size * count] (through backend).");

  nb::class_<PyShard>(m, "TensorParallelShard",
                      "This rank holds kv heads [first_kv_head, first_kv_head + cache kv_heads) of a layer of "
                      "kv_heads heads; the other ranks of communicator hold the rest, each head once. No "
                      "communicator means the whole layer is on this process.")
      .def("__init__",
           [](PyShard* self, std::shared_ptr<PythonCommunicator> communicator, std::int64_t first_kv_head,
              std::int64_t kv_heads) {
             KVC_CHECK(first_kv_head >= 0, "first_kv_head must be >= 0, got " << first_kv_head);
             KVC_CHECK(kv_heads >= 0, "kv_heads must be >= 0 (0: the cache's own), got " << kv_heads);
             new (self) PyShard{std::move(communicator), first_kv_head, kv_heads};
           },
           nb::arg("communicator").none(), nb::arg("first_kv_head") = 0, nb::arg("kv_heads") = 0)
      .def_ro("communicator", &PyShard::communicator)
      .def_ro("first_kv_head", &PyShard::first_kv_head, "Global index of this rank's first kv head.")
      .def_ro("kv_heads", &PyShard::kv_heads, "kv heads of the whole layer (0: the cache's own).")
      .def_prop_ro("split", [](PyShard const& s) { return s.native().split(); },
                   "Whether the layer's heads are spread over more than this process.");

  m.def("_report_shard_failure", &report_failure, nb::arg("observation"), nb::arg("cache"),
        "Sends this rank's failure to the handshake of the call it could not make (a no-op without a communicator).");
}

}  // namespace kvcompress::python
