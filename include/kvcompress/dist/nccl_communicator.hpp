#pragma once
/// \file
/// \brief `NcclCommunicator`: the tensor-parallel collectives over an NCCL communicator (GPU ranks).
/// Host code (no nvcc needed): needs `cuda_runtime.h`, `nccl.h`, CUDA::cudart and libnccl (the CUDA
/// toolkit's, or the `nvidia-nccl` wheel's); not part of the umbrella headers.
///
/// The presses hand over host buffers of O(heads + histogram bins) values; they are staged through
/// device memory the caller gives (CUB style: no allocation here), reduced on the caller's stream,
/// and copied back. Waits are bounded: the stream is polled until the copy back is done, NCCL's
/// asynchronous errors are checked while waiting, and a collective that has not completed within
/// `timeout` throws `kvcompress::Error`; the communicator must then be aborted (`ncclCommAbort`) by
/// its owner.

#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <thread>

#include "kvcompress/core/error.hpp"
#include "kvcompress/dist/communicator.hpp"

namespace kvcompress {

class NcclCommunicator final : public Communicator {
 public:
  /// \param comm          an initialised NCCL communicator; not owned
  /// \param stream        the stream the collectives run on
  /// \param staging       device memory of `staging_bytes`, alive as long as this object
  /// \param staging_bytes at least the largest collective's bytes (an all-gather's: size() × count)
  /// \param timeout       longest wait of one collective
  NcclCommunicator(ncclComm_t comm, cudaStream_t stream, void* staging, std::size_t staging_bytes,
                   std::chrono::milliseconds timeout = std::chrono::seconds(60))
      : comm_(comm), stream_(stream), staging_(staging), staging_bytes_(staging_bytes), timeout_(timeout) {
    KVC_CHECK(staging != nullptr, "staging must not be null");
    KVC_CHECK(timeout.count() > 0, "timeout must be positive, got " << timeout.count() << " ms");
    check(ncclCommUserRank(comm_, &rank_), "ncclCommUserRank");
    check(ncclCommCount(comm_, &size_), "ncclCommCount");
  }

  [[nodiscard]] int rank() const override { return rank_; }
  [[nodiscard]] int size() const override { return size_; }

  void all_reduce(std::int64_t* data, std::size_t count, ReduceOp op) override {
    reduce(data, count, ncclInt64, op);
  }
  void all_reduce(float* data, std::size_t count, ReduceOp op) override { reduce(data, count, ncclFloat32, op); }

  void all_gather(std::int64_t const* send, std::int64_t* recv, std::size_t count) override {
    std::size_t const bytes = count * sizeof(std::int64_t);
    require_staging(bytes * static_cast<std::size_t>(size_));
    auto* all = static_cast<std::int64_t*>(staging_);  // [size, count]; this rank's block in place
    std::int64_t* mine = all + static_cast<std::size_t>(rank_) * count;
    check(cudaMemcpyAsync(mine, send, bytes, cudaMemcpyHostToDevice, stream_), "cudaMemcpyAsync");
    check(ncclAllGather(mine, all, count, ncclInt64, comm_, stream_), "ncclAllGather");
    check(cudaMemcpyAsync(recv, all, bytes * static_cast<std::size_t>(size_), cudaMemcpyDeviceToHost, stream_),
          "cudaMemcpyAsync");
    wait("ncclAllGather");
  }

 private:
  template <class V>
  void reduce(V* data, std::size_t count, ncclDataType_t type, ReduceOp op) {
    std::size_t const bytes = count * sizeof(V);
    require_staging(bytes);
    check(cudaMemcpyAsync(staging_, data, bytes, cudaMemcpyHostToDevice, stream_), "cudaMemcpyAsync");
    check(ncclAllReduce(staging_, staging_, count, type, op == ReduceOp::sum ? ncclSum : ncclMax, comm_, stream_),
          "ncclAllReduce");
    check(cudaMemcpyAsync(data, staging_, bytes, cudaMemcpyDeviceToHost, stream_), "cudaMemcpyAsync");
    wait("ncclAllReduce");
  }

  void require_staging(std::size_t bytes) const {
    KVC_CHECK(bytes <= staging_bytes_, "a collective of " << bytes << " bytes does not fit the " << staging_bytes_
                                                          << " bytes of staging memory given to NcclCommunicator");
  }

  static void check(cudaError_t e, char const* what) {
    KVC_CHECK(e == cudaSuccess, what << " failed: " << cudaGetErrorString(e));
  }
  static void check(ncclResult_t r, char const* what) {
    KVC_CHECK(r == ncclSuccess, what << " failed: " << ncclGetErrorString(r));
  }

  /// Polls the stream until the collective and its copy back are done; yields between polls.
  void wait(char const* what) const {
    auto const start = std::chrono::steady_clock::now();
    for (;;) {
      cudaError_t const e = cudaStreamQuery(stream_);
      if (e == cudaSuccess) return;
      KVC_CHECK(e == cudaErrorNotReady, what << " failed on the stream: " << cudaGetErrorString(e));
      ncclResult_t async = ncclSuccess;
      check(ncclCommGetAsyncError(comm_, &async), "ncclCommGetAsyncError");
      check(async, what);
      if (std::chrono::steady_clock::now() - start > timeout_)
        KVC_THROW(what << " on rank " << rank_ << " of " << size_ << " did not complete within " << timeout_.count()
                       << " ms: a rank of the group stopped taking part; abort the NCCL communicator");
      std::this_thread::yield();
    }
  }

  ncclComm_t comm_;
  cudaStream_t stream_;
  void* staging_;
  std::size_t staging_bytes_;
  std::chrono::milliseconds timeout_;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace kvcompress
