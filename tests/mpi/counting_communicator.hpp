#pragma once
// A communicator that forwards to another and counts what goes through it: collectives, bytes this
// rank hands over, and the time spent in them. For the per-layer figures of docs/distributed.md.

#include <chrono>
#include <cstdint>

#include "kvcompress/dist/communicator.hpp"

namespace kvc_shard {

class CountingCommunicator final : public kvcompress::Communicator {
 public:
  explicit CountingCommunicator(kvcompress::Communicator& inner) : inner_(inner) {}
  [[nodiscard]] int rank() const override { return inner_.rank(); }
  [[nodiscard]] int size() const override { return inner_.size(); }
  void all_reduce(std::int64_t* data, std::size_t count, kvcompress::ReduceOp op) override {
    timed(count * sizeof(std::int64_t), [&] { inner_.all_reduce(data, count, op); });
  }
  void all_reduce(float* data, std::size_t count, kvcompress::ReduceOp op) override {
    timed(count * sizeof(float), [&] { inner_.all_reduce(data, count, op); });
  }
  void all_gather(std::int64_t const* send, std::int64_t* recv, std::size_t count) override {
    timed(count * sizeof(std::int64_t), [&] { inner_.all_gather(send, recv, count); });
  }

  void reset() { collectives = 0, bytes = 0, seconds = 0.0; }

  int collectives = 0;
  std::size_t bytes = 0;  // bytes this rank contributed
  double seconds = 0.0;   // time inside the collectives

 private:
  template <class F>
  void timed(std::size_t b, F&& f) {
    auto const t0 = std::chrono::steady_clock::now();
    f();
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ++collectives;
    bytes += b;
  }

  kvcompress::Communicator& inner_;
};

}  // namespace kvc_shard
