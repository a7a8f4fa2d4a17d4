#pragma once
// A tensor-parallel group of threads in one process: each thread is a rank. Every collective
// publishes the rank's buffer, waits for the group, and each rank then reduces the published
// buffers in rank order itself. Waits are bounded, so a test whose ranks diverge fails instead of
// hanging.

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <vector>

#include "kvcompress/core/error.hpp"
#include "kvcompress/dist/communicator.hpp"

namespace kvc_shard {

class ThreadGroup {
 public:
  explicit ThreadGroup(int size) : size_(size), slots_(static_cast<std::size_t>(size)) {}
  [[nodiscard]] int size() const { return size_; }

  /// Publishes `bytes` of `data` as `rank`'s slot and returns when every rank has; then `read` runs
  /// over all slots; a second barrier keeps the slots until every rank has read them.
  template <class Read>
  void exchange(int rank, void const* data, std::size_t bytes, Read&& read) {
    auto const* p = static_cast<unsigned char const*>(data);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      slots_[static_cast<std::size_t>(rank)].assign(p, p + bytes);
    }
    barrier();
    read(slots_);
    barrier();
  }

 private:
  void barrier() {
    std::unique_lock<std::mutex> lock(mutex_);
    std::uint64_t const gen = generation_;
    if (++arrived_ == size_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
      return;
    }
    bool const done = cv_.wait_for(lock, std::chrono::seconds(20), [&] { return generation_ != gen; });
    KVC_CHECK(done, "a collective of the thread group waited 20 s for the other ranks");
  }

  int size_;
  std::vector<std::vector<unsigned char>> slots_;
  std::mutex mutex_;
  std::condition_variable cv_;
  int arrived_ = 0;
  std::uint64_t generation_ = 0;
};

class ThreadCommunicator final : public kvcompress::Communicator {
 public:
  ThreadCommunicator(ThreadGroup& group, int rank) : group_(group), rank_(rank) {}
  [[nodiscard]] int rank() const override { return rank_; }
  [[nodiscard]] int size() const override { return group_.size(); }
  void all_reduce(std::int64_t* data, std::size_t count, kvcompress::ReduceOp op) override { reduce(data, count, op); }
  void all_reduce(float* data, std::size_t count, kvcompress::ReduceOp op) override { reduce(data, count, op); }
  void all_gather(std::int64_t const* send, std::int64_t* recv, std::size_t count) override {
    group_.exchange(rank_, send, count * sizeof(std::int64_t), [&](auto const& slots) {
      for (std::size_t r = 0; r < slots.size(); ++r)
        std::memcpy(recv + r * count, slots[r].data(), count * sizeof(std::int64_t));
    });
    ++collectives;
  }

  /// Collectives this rank took part in.
  int collectives = 0;

 private:
  template <class V>
  void reduce(V* data, std::size_t count, kvcompress::ReduceOp op) {
    std::vector<V> out(count), in(count);
    group_.exchange(rank_, data, count * sizeof(V), [&](auto const& slots) {
      for (std::size_t r = 0; r < slots.size(); ++r) {
        std::memcpy(in.data(), slots[r].data(), count * sizeof(V));
        for (std::size_t i = 0; i < count; ++i)
          out[i] = r == 0 ? in[i] : (op == kvcompress::ReduceOp::sum ? out[i] + in[i] : std::max(out[i], in[i]));
      }
    });
    std::copy(out.begin(), out.end(), data);
    ++collectives;
  }

  ThreadGroup& group_;
  int rank_;
};

}  // namespace kvc_shard
