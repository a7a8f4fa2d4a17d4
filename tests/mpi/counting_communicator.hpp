#pragma once
// A communicator that forwards to another and counts what goes through it: collectives, bytes this
// rank hands over, and the time spent in them. For the per-layer figures of docs/distributed.md.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

#include "kvcompress/dist/communicator.hpp"

namespace kvc_shard {

class CountingCommunicator final : public kvcompress::Communicator {
 public:
  enum class Kind { reduce_int, reduce_float, gather_int };
  struct Call {
    Kind kind;
    std::size_t count;
    kvcompress::ReduceOp op;
  };

  explicit CountingCommunicator(kvcompress::Communicator& inner) : inner_(inner) {}
  [[nodiscard]] int rank() const override { return inner_.rank(); }
  [[nodiscard]] int size() const override { return inner_.size(); }
  void all_reduce(std::int64_t* data, std::size_t count, kvcompress::ReduceOp op) override {
    timed({Kind::reduce_int, count, op}, count * sizeof(std::int64_t), [&] { inner_.all_reduce(data, count, op); });
  }
  void all_reduce(float* data, std::size_t count, kvcompress::ReduceOp op) override {
    timed({Kind::reduce_float, count, op}, count * sizeof(float), [&] { inner_.all_reduce(data, count, op); });
  }
  void all_gather(std::int64_t const* send, std::int64_t* recv, std::size_t count) override {
    timed({Kind::gather_int, count, kvcompress::ReduceOp::sum}, count * sizeof(std::int64_t),
          [&] { inner_.all_gather(send, recv, count); });
  }

  void reset() {
    collectives = 0, bytes = 0, seconds = 0.0;
    calls.clear();
  }

  /// Seconds per repetition of the recorded collectives alone, on the inner communicator: the
  /// latency of a layer's communication without the ranks' uneven compute in between.
  double replay(int repetitions) {
    std::size_t longest = 0;
    for (Call const& c : calls) longest = std::max(longest, c.count);
    std::vector<std::int64_t> ints(longest * static_cast<std::size_t>(size())), gathered(ints.size());
    std::vector<float> floats(longest);
    auto const t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < repetitions; ++i)
      for (Call const& c : calls) {
        if (c.kind == Kind::reduce_int) inner_.all_reduce(ints.data(), c.count, c.op);
        else if (c.kind == Kind::reduce_float) inner_.all_reduce(floats.data(), c.count, c.op);
        else inner_.all_gather(ints.data(), gathered.data(), c.count);
      }
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / repetitions;
  }

  int collectives = 0;
  std::size_t bytes = 0;  // bytes this rank contributed
  double seconds = 0.0;   // time inside the collectives
  std::vector<Call> calls;

 private:
  template <class F>
  void timed(Call call, std::size_t b, F&& f) {
    calls.push_back(call);
    auto const t0 = std::chrono::steady_clock::now();
    f();
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ++collectives;
    bytes += b;
  }

  kvcompress::Communicator& inner_;
};

}  // namespace kvc_shard
