#pragma once
/// \file
/// \brief The library's `Communicator` over a Python object's collectives (a torch.distributed
/// process group in `kvcompress.distributed`), and the observation's tensor-parallel shard.
///
/// The presses call the collectives with the GIL released (inside `compress`); each call takes the
/// GIL, hands the Python object NumPy views of the host buffers, and turns the exception it raises
/// (a timeout, a broken group) into `kvcompress::Error`, so that the library's shard protocol
/// (`dist/shard_protocol.hpp`) sees the same error type as from its own adapters.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include "kvcompress/kvcompress.hpp"

namespace kvcompress::python {

namespace nb = nanobind;

/// \brief A group whose collectives are the methods of a Python object `backend`:
/// `all_reduce(buffer, op)` (a 1-D int64 or float32 NumPy array reduced in place, op "sum" or "max")
/// and `all_gather(send, recv)` (int64 `[count]` and `[size * count]`). The object bounds its waits.
class PythonCommunicator final : public Communicator {
 public:
  PythonCommunicator(nb::object backend, int rank, int size) : backend_(std::move(backend)), rank_(rank), size_(size) {
    KVC_CHECK(size >= 1 && rank >= 0 && rank < size,
              "a communicator needs 0 <= rank < size, got rank " << rank << " of " << size);
  }
  PythonCommunicator(PythonCommunicator const&) = delete;
  PythonCommunicator& operator=(PythonCommunicator const&) = delete;
  PythonCommunicator(PythonCommunicator&&) = delete;
  PythonCommunicator& operator=(PythonCommunicator&&) = delete;
  ~PythonCommunicator() override = default;

  [[nodiscard]] int rank() const override { return rank_; }
  [[nodiscard]] int size() const override { return size_; }

  void all_reduce(std::int64_t* data, std::size_t count, ReduceOp op) override { reduce(data, count, op); }
  void all_reduce(float* data, std::size_t count, ReduceOp op) override { reduce(data, count, op); }

  void all_gather(std::int64_t const* send, std::int64_t* recv, std::size_t count) override {
    // The backend reads `send` only; NumPy has no read-only view constructor here, hence the cast.
    call("all_gather", [&] {
      backend_.attr("all_gather")(host_array(const_cast<std::int64_t*>(send), count),
                                  host_array(recv, count * static_cast<std::size_t>(size_)));
    });
  }

 private:
  /// A NumPy array over `data` [count], valid during the call (a reference: nanobind would copy an
  /// array without an owner, and the collectives write in place).
  template <class E>
  static nb::object host_array(E* data, std::size_t count) {
    std::size_t const shape[1] = {count};
    return nb::cast(nb::ndarray<nb::numpy, E, nb::ndim<1>>(data, 1, shape, nb::handle()), nb::rv_policy::reference);
  }

  template <class E>
  void reduce(E* data, std::size_t count, ReduceOp op) {
    call("all_reduce", [&] { backend_.attr("all_reduce")(host_array(data, count), op == ReduceOp::sum ? "sum" : "max"); });
  }

  /// Runs `f` with the GIL; the backend's Python exception becomes `kvcompress::Error`, raised after
  /// the Python error state is released.
  template <class F>
  void call(char const* what, F&& f) {
    std::string failure;
    {
      nb::gil_scoped_acquire gil;
      try {
        f();
      } catch (nb::python_error const& e) {
        failure = nb::str(e.value()).c_str();
        if (failure.empty()) failure = nb::str(e.type()).c_str();
      }
    }
    if (!failure.empty())
      throw Error(what, __FILE__, __LINE__,
                  "the communicator's " + std::string(what) + " on rank " + std::to_string(rank_) + " of " +
                      std::to_string(size_) + " failed: " + failure);
  }

  nb::object backend_;
  int rank_;
  int size_;
};

/// \brief The observation's `TensorParallelShard`, holding its communicator alive.
struct PyShard {
  std::shared_ptr<PythonCommunicator> communicator;
  std::int64_t first_kv_head = 0;
  std::int64_t kv_heads = 0;

  [[nodiscard]] TensorParallelShard native() const { return {communicator.get(), first_kv_head, kv_heads}; }
};

/// \brief Runs a binding's `body(shard)` under the library's shard protocol (`shard_call`), so that a
/// check of the binding that fails on one rank (an array of another dtype) still reaches the call's
/// handshake and is an error on every rank. `record`: what this rank holds, as the library reports it.
template <class Body>
void on_shard(std::optional<PyShard> const& shard, kvcompress::detail::ShardRecord const& record, Body&& body) {
  TensorParallelShard const native = shard ? shard->native() : TensorParallelShard{};
  kvcompress::detail::shard_call(native, record, [&] { body(native); });
}

}  // namespace kvcompress::python
