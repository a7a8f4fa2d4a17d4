#pragma once
/// \file
/// \brief `MpiCommunicator`: the tensor-parallel collectives over an MPI communicator (CPU ranks).
/// Needs `mpi.h` (CMake: `find_package(MPI)`, target `MPI::MPI_CXX`); not part of the umbrella header.
///
/// Waits are bounded: each collective is started non-blocking and polled; one that has not completed
/// within `timeout` (a rank of the group died or took another path) throws `kvcompress::Error` on
/// the ranks still waiting. MPI cannot cancel a collective, so the communicator is unusable after
/// that: the caller reports the error and ends the job (`MPI_Abort`).

#include <mpi.h>

#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <string>
#include <thread>

#include "kvcompress/core/error.hpp"
#include "kvcompress/dist/communicator.hpp"

namespace kvcompress {

class MpiCommunicator final : public Communicator {
 public:
  /// \param comm    the group; not owned, it must outlive this object
  /// \param timeout longest wait of one collective
  explicit MpiCommunicator(MPI_Comm comm, std::chrono::milliseconds timeout = std::chrono::seconds(60))
      : comm_(comm), timeout_(timeout) {
    KVC_CHECK(timeout.count() > 0, "timeout must be positive, got " << timeout.count() << " ms");
    check(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
    check(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
  }

  [[nodiscard]] int rank() const override { return rank_; }
  [[nodiscard]] int size() const override { return size_; }

  void all_reduce(std::int64_t* data, std::size_t count, ReduceOp op) override {
    MPI_Request req = MPI_REQUEST_NULL;
    check(MPI_Iallreduce(MPI_IN_PLACE, data, count_of(count), MPI_INT64_T, mpi_op(op), comm_, &req), "MPI_Iallreduce");
    wait(req, "MPI_Iallreduce");
  }

  void all_reduce(float* data, std::size_t count, ReduceOp op) override {
    MPI_Request req = MPI_REQUEST_NULL;
    check(MPI_Iallreduce(MPI_IN_PLACE, data, count_of(count), MPI_FLOAT, mpi_op(op), comm_, &req), "MPI_Iallreduce");
    wait(req, "MPI_Iallreduce");
  }

  void all_gather(std::int64_t const* send, std::int64_t* recv, std::size_t count) override {
    MPI_Request req = MPI_REQUEST_NULL;
    int const n = count_of(count);
    check(MPI_Iallgather(send, n, MPI_INT64_T, recv, n, MPI_INT64_T, comm_, &req), "MPI_Iallgather");
    wait(req, "MPI_Iallgather");
  }

 private:
  static int count_of(std::size_t count) {
    KVC_CHECK(count <= static_cast<std::size_t>(INT_MAX), "an MPI collective of " << count << " elements exceeds INT_MAX");
    return static_cast<int>(count);
  }

  static MPI_Op mpi_op(ReduceOp op) noexcept { return op == ReduceOp::sum ? MPI_SUM : MPI_MAX; }

  static void check(int rc, char const* what) {
    if (rc == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, text, &len);
    KVC_THROW(what << " failed: " << std::string(text, static_cast<std::size_t>(len)));
  }

  /// Polls until the collective completes or the timeout passes; yields between polls, since ranks
  /// may share cores.
  void wait(MPI_Request& req, char const* what) const {
    auto const start = std::chrono::steady_clock::now();
    for (;;) {
      int done = 0;
      check(MPI_Test(&req, &done, MPI_STATUS_IGNORE), "MPI_Test");
      if (done != 0) return;
      if (std::chrono::steady_clock::now() - start > timeout_)
        KVC_THROW(what << " on rank " << rank_ << " of " << size_ << " did not complete within " << timeout_.count()
                       << " ms: a rank of the group stopped taking part; the communicator cannot be used any more");
      std::this_thread::yield();
    }
  }

  MPI_Comm comm_;
  std::chrono::milliseconds timeout_;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace kvcompress
