#pragma once
/// \file
/// \brief `ThreadPool`: persistent worker threads for the engine's parallel loops. A decode step runs a
/// dozen short parallel regions per layer, so starting threads for each would cost more than the work.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "kvcompress/core/error.hpp"

namespace kvc_engine {

class ThreadPool {
 public:
  /// \param num_threads threads including the caller's; 0 = every hardware thread.
  explicit ThreadPool(int num_threads = 0) {
    KVC_CHECK(num_threads >= 0, "num_threads must be non-negative, got " << num_threads);
    int const n = num_threads > 0 ? num_threads : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
    errors_.resize(static_cast<std::size_t>(n));
    for (int t = 1; t < n; ++t) workers_.emplace_back([this, t] { work(t); });
  }
  ThreadPool(ThreadPool const&) = delete;
  ThreadPool& operator=(ThreadPool const&) = delete;
  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    start_.notify_all();
    for (auto& w : workers_) w.join();
  }

  [[nodiscard]] int size() const noexcept { return static_cast<int>(workers_.size()) + 1; }

  /// \brief Calls f(i, thread) for every i in [0, n), statically partitioned over the threads; rethrows
  /// the first exception on the caller's thread. Not reentrant: f must not call the pool.
  template <class F>
  void parallel_for(std::int64_t n, F&& f) {
    int const threads = size();
    if (threads == 1 || n <= 1) {
      for (std::int64_t i = 0; i < n; ++i) f(i, 0);
      return;
    }
    std::function<void(int)> const job = [&](int t) {
      std::int64_t const lo = n * t / threads, hi = n * (t + 1) / threads;
      for (std::int64_t i = lo; i < hi; ++i) f(i, t);
    };
    run(job);
  }

  /// \brief Calls f(i, thread) for every i in [0, n), each thread taking the next unclaimed i when it is
  /// done with its last: for tasks of unequal cost (causal attention's blocks), which a static partition
  /// would leave one thread finishing alone. Exceptions as parallel_for's; not reentrant either.
  template <class F>
  void parallel_tasks(std::int64_t n, F&& f) {
    if (size() == 1 || n <= 1) {
      for (std::int64_t i = 0; i < n; ++i) f(i, 0);
      return;
    }
    std::atomic<std::int64_t> next{0};
    std::function<void(int)> const job = [&](int t) {
      for (std::int64_t i = next.fetch_add(1, std::memory_order_relaxed); i < n; i = next.fetch_add(1, std::memory_order_relaxed))
        f(i, t);
    };
    run(job);
  }

 private:
  void run(std::function<void(int)> const& job) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &job;
      pending_ = static_cast<int>(workers_.size());
      ++generation_;
    }
    start_.notify_all();
    try {
      job(0);
    } catch (...) {
      errors_[0] = std::current_exception();
    }
    {
      std::unique_lock<std::mutex> lock(mutex_);
      done_.wait(lock, [&] { return pending_ == 0; });
      job_ = nullptr;
    }
    for (auto& e : errors_)
      if (e) {
        std::exception_ptr const first = e;
        for (auto& x : errors_) x = nullptr;
        std::rethrow_exception(first);
      }
  }

  void work(int t) {
    std::uint64_t seen = 0;
    for (;;) {
      std::function<void(int)> const* job = nullptr;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        start_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        job = job_;
      }
      try {
        (*job)(t);
      } catch (...) {
        errors_[static_cast<std::size_t>(t)] = std::current_exception();
      }
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (--pending_ == 0) done_.notify_one();
      }
    }
  }

  std::vector<std::thread> workers_;
  std::vector<std::exception_ptr> errors_;  // [threads], written by each thread for itself
  std::mutex mutex_;
  std::condition_variable start_, done_;
  std::function<void(int)> const* job_ = nullptr;
  std::uint64_t generation_ = 0;
  int pending_ = 0;
  bool stop_ = false;
};

}  // namespace kvc_engine
