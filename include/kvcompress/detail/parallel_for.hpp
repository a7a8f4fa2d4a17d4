#pragma once
/// \file
/// \brief Static block partition of [0, n) over the threads of a `CpuDevice`: its `ThreadPool` when it
/// has one, else threads started for the call.

#include <algorithm>
#include <cstdint>
#include <exception>
#include <thread>
#include <utility>
#include <vector>

#include "kvcompress/core/device.hpp"
#include "kvcompress/core/error.hpp"
#include "kvcompress/cpu/thread_pool.hpp"

namespace kvcompress::detail {

/// Threads that `parallel_for(dev, n, …)` uses: never more than n, at least 1; the pool's size when
/// `dev` has a pool. Throws when `dev.num_threads` is negative.
[[nodiscard]] inline int thread_count(CpuDevice const& dev, std::int64_t n) {
  KVC_CHECK(dev.num_threads >= 0,
            "CpuDevice.num_threads must be >= 0 (0 = every hardware thread), got " << dev.num_threads);
  int t = dev.pool != nullptr ? dev.pool->size()
          : dev.num_threads > 0 ? dev.num_threads
                                : static_cast<int>(std::thread::hardware_concurrency());
  t = std::max(t, 1);
  return static_cast<int>(std::max<std::int64_t>(1, std::min<std::int64_t>(t, n)));
}

/// Calls f(i, thread) for every i in [0, n); thread ∈ [0, thread_count(dev, n)) indexes per-thread
/// scratch. The first exception thrown by any thread is rethrown on the caller's thread.
/// With `dev.pool`, the loop runs on the pool (`ThreadPool::parallel_for`; a loop nested in another of
/// the same pool runs serially). Without, threads are started for the call: that needs memory and
/// thread resources; when either runs out (std::bad_alloc, std::system_error), the blocks of the
/// threads that could not start run on the calling thread: the same results, fewer threads, and no
/// exception other than f's ever escapes.
template <class F>
void parallel_for(CpuDevice const& dev, std::int64_t n, F&& f) {
  int const threads = thread_count(dev, n);
  if (dev.pool != nullptr) return dev.pool->parallel_for(n, f);
  auto const serial = [&] {
    for (std::int64_t i = 0; i < n; ++i) f(i, 0);
  };
  if (threads == 1) return serial();
  std::vector<std::exception_ptr> errors;
  std::vector<std::thread> pool;
  try {
    errors.resize(static_cast<std::size_t>(threads));
    pool.reserve(static_cast<std::size_t>(threads - 1));
  } catch (...) {
    return serial();
  }
  auto body = [&](int t) {
    std::int64_t const lo = n * t / threads, hi = n * (t + 1) / threads;
    try {
      for (std::int64_t i = lo; i < hi; ++i) f(i, t);
    } catch (...) {
      errors[static_cast<std::size_t>(t)] = std::current_exception();
    }
  };
  int started = 1;
  try {
    for (; started < threads; ++started) pool.emplace_back(body, started);
  } catch (...) {  // out of threads or memory: run the rest here (`started` was not incremented)
  }
  for (int t = started; t < threads; ++t) body(t);
  body(0);
  for (auto& th : pool) th.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

/// Below this much memory traffic a call runs on the calling thread: starting a thread costs tens of
/// microseconds, the time such a call takes in all (StreamingLLM's scores for 32k entries: 128 KiB).
inline constexpr std::int64_t kSerialBelowBytes = std::int64_t{1} << 20;

/// parallel_for for work whose total memory traffic is `bytes`: serial below kSerialBelowBytes, where
/// threads would cost more than they save. Per-thread scratch is still sized by thread_count(dev, n).
template <class F>
void parallel_for(CpuDevice const& dev, std::int64_t n, std::int64_t bytes, F&& f) {
  (void)thread_count(dev, n);  // the same checks of `dev` whichever way the loop runs
  if (bytes < kSerialBelowBytes) {
    for (std::int64_t i = 0; i < n; ++i) f(i, 0);
    return;
  }
  parallel_for(dev, n, std::forward<F>(f));
}

}  // namespace kvcompress::detail
