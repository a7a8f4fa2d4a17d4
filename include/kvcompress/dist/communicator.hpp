#pragma once
/// \file
/// \brief `Communicator`: the few collectives a press needs when the kv heads of a layer are split
/// across ranks (tensor parallelism). An engine implements it over its own process group (an MPI
/// communicator, an NCCL communicator, a torch.distributed group) or uses one of the adapters
/// (`dist/mpi_communicator.hpp`, `dist/nccl_communicator.cuh`), and hands it to the presses through
/// `Observation::shard`. No communicator (the default) means the whole layer is on this process.
///
/// Every rank of the group calls every collective, in the same order, with the same counts.
/// Buffers are host memory: the presses that communicate exchange O(heads + histogram bins) values
/// per call, so a device adapter stages them itself.

#include <cstddef>
#include <cstdint>

namespace kvcompress {

/// \brief The reduction of `Communicator::all_reduce`.
enum class ReduceOp { sum, max };

namespace detail {
struct ShardCallState;
}  // namespace detail

/// \brief A process group seen by one of its ranks.
class Communicator {
 public:
  Communicator() = default;
  Communicator(Communicator const&) = delete;
  Communicator& operator=(Communicator const&) = delete;
  Communicator(Communicator&&) = delete;
  Communicator& operator=(Communicator&&) = delete;
  virtual ~Communicator() = default;

  /// This process's rank in [0, size()).
  [[nodiscard]] virtual int rank() const = 0;
  /// Ranks in the group.
  [[nodiscard]] virtual int size() const = 0;

  /// In place: every rank ends with the element-wise reduction over all ranks.
  /// \param data [count] the same count on every rank
  virtual void all_reduce(std::int64_t* data, std::size_t count, ReduceOp op) = 0;
  /// \param data [count] the same count on every rank. A float sum's rounding depends on the order
  ///             the implementation adds in; the presses only add values to zeros (exact).
  virtual void all_reduce(float* data, std::size_t count, ReduceOp op) = 0;
  /// \param send [count] this rank's values
  /// \param recv [size() * count] out: rank i's values at recv + i·count
  virtual void all_gather(std::int64_t const* send, std::int64_t* recv, std::size_t count) = 0;

 private:
  // Which compression call this rank is in and whether it still owes the group its handshake
  // (dist/shard_protocol.hpp): the protocol that turns an error on one rank into one on every rank.
  friend struct detail::ShardCallState;
  int call_depth_ = 0;
  bool handshake_owed_ = false;
};

/// \brief The group of one process: every collective leaves its data as it is. Equivalent to
/// giving no communicator; for code that always wants an object to pass.
class SingleRankCommunicator final : public Communicator {
 public:
  [[nodiscard]] int rank() const override { return 0; }
  [[nodiscard]] int size() const override { return 1; }
  void all_reduce(std::int64_t*, std::size_t, ReduceOp) override {}
  void all_reduce(float*, std::size_t, ReduceOp) override {}
  void all_gather(std::int64_t const* send, std::int64_t* recv, std::size_t count) override {
    for (std::size_t i = 0; i < count; ++i) recv[i] = send[i];
  }
};

}  // namespace kvcompress
