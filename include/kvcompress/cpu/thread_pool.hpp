#pragma once
/// \file
/// \brief `ThreadPool`: persistent worker threads for the library's CPU loops, given to a call through
/// `CpuDevice::pool`. Without one, every parallel loop starts and joins its own threads (tens of
/// microseconds each time); an engine that compresses per layer, or runs many short loops per decoding
/// step, keeps one pool and passes it instead.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

#include "kvcompress/core/error.hpp"

namespace kvcompress {

/// \brief A fixed set of worker threads; the calling thread works as thread 0.
///
/// - `parallel_for` partitions [0, n) statically into equal blocks; `parallel_tasks` hands out one index
///   at a time to whichever thread is free (for tasks of unequal cost). Both call f(i, thread) with
///   thread ∈ [0, min(size(), n)), so per-thread scratch sized by that count suffices.
/// - The first exception (lowest thread index) is rethrown on the calling thread after every thread
///   has finished; the pool stays usable.
/// - Not reentrant: a call made from inside f (on a worker or on the caller) runs serially on the
///   thread that makes it, as thread 0, instead of waiting for threads that are busy with the outer
///   call. Calls from several unrelated threads take turns (one loop at a time).
/// - A pool of 1 starts no thread and runs everything on the caller.
/// - Idle workers sleep on a condition variable; destruction wakes and joins them (destroy the pool
///   only when no call is running on it).
class ThreadPool {
 public:
  /// \param num_threads threads including the caller's; 0 = every hardware thread. Negative → Error.
  explicit ThreadPool(int num_threads = 0) {
    KVC_CHECK(num_threads >= 0, "ThreadPool: num_threads must be >= 0 (0 = every hardware thread), got " << num_threads);
    int const n = num_threads > 0 ? num_threads : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
    errors_.resize(static_cast<std::size_t>(n));
    workers_.reserve(static_cast<std::size_t>(n - 1));
    try {
      for (int t = 1; t < n; ++t) workers_.emplace_back([this, t] { work(t); });
    } catch (...) {  // out of threads: stop the ones that started, then report
      stop();
      throw;
    }
  }
  ThreadPool(ThreadPool const&) = delete;
  ThreadPool& operator=(ThreadPool const&) = delete;
  ThreadPool(ThreadPool&&) = delete;
  ThreadPool& operator=(ThreadPool&&) = delete;
  ~ThreadPool() { stop(); }

  /// Threads including the caller's.
  [[nodiscard]] int size() const noexcept { return static_cast<int>(workers_.size()) + 1; }

  /// \brief f(i, thread) for every i in [0, n), [0, n) split into min(size(), n) equal blocks.
  template <class F>
  void parallel_for(std::int64_t n, F&& f) {
    if (inline_call(n)) return serial(n, f);
    int const used = static_cast<int>(std::min<std::int64_t>(size(), n));
    auto body = [&](int t) {
      if (t >= used) return;
      std::int64_t const lo = n * t / used, hi = n * (t + 1) / used;
      for (std::int64_t i = lo; i < hi; ++i) f(i, t);
    };
    run(body);
  }

  /// \brief f(i, thread) for every i in [0, n), each thread taking the next unclaimed i when it is done
  /// with its last: for tasks of unequal cost (causal attention's blocks), which a static partition
  /// would leave one thread finishing alone.
  template <class F>
  void parallel_tasks(std::int64_t n, F&& f) {
    if (inline_call(n)) return serial(n, f);
    int const used = static_cast<int>(std::min<std::int64_t>(size(), n));
    std::atomic<std::int64_t> next{0};
    auto body = [&](int t) {
      if (t >= used) return;
      for (std::int64_t i = next.fetch_add(1, std::memory_order_relaxed); i < n;
           i = next.fetch_add(1, std::memory_order_relaxed))
        f(i, t);
    };
    run(body);
  }

 private:
  /// The job of the current call, type-erased without allocating: a pointer to the caller's lambda.
  struct Job {
    void (*call)(void const* body, int thread) = nullptr;
    void const* body = nullptr;
  };

  /// The pool whose loop this thread is running (as a worker, or as the caller), else nullptr.
  static ThreadPool const*& active() noexcept {
    thread_local ThreadPool const* pool = nullptr;
    return pool;
  }

  [[nodiscard]] bool inline_call(std::int64_t n) const noexcept { return size() == 1 || n <= 1 || active() == this; }

  template <class F>
  static void serial(std::int64_t n, F& f) {
    for (std::int64_t i = 0; i < n; ++i) f(i, 0);
  }

  template <class Body>
  void run(Body const& body) {
    Job const job{[](void const* b, int t) { (*static_cast<Body const*>(b))(t); }, &body};
    std::lock_guard<std::mutex> turn(call_mutex_);
    struct Active {  // marks the caller as inside this pool's loop, for the reentrancy rule
      ThreadPool const* previous = active();
      explicit Active(ThreadPool const* p) noexcept { active() = p; }
      ~Active() { active() = previous; }
      Active(Active const&) = delete;
      Active& operator=(Active const&) = delete;
    } const mark(this);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = job;
      pending_ = static_cast<int>(workers_.size());
      ++generation_;
    }
    start_.notify_all();
    try {
      job.call(job.body, 0);
    } catch (...) {
      errors_[0] = std::current_exception();
    }
    {
      std::unique_lock<std::mutex> lock(mutex_);
      done_.wait(lock, [&] { return pending_ == 0; });
      job_ = Job{};
    }
    for (auto& e : errors_)
      if (e) {
        std::exception_ptr const first = e;
        for (auto& x : errors_) x = nullptr;
        std::rethrow_exception(first);
      }
  }

  void work(int t) {
    active() = this;
    std::uint64_t seen = 0;
    for (;;) {
      Job job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        start_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        job = job_;
      }
      try {
        job.call(job.body, t);
      } catch (...) {
        errors_[static_cast<std::size_t>(t)] = std::current_exception();  // this thread's slot only
      }
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (--pending_ == 0) done_.notify_one();
      }
    }
  }

  void stop() noexcept {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    start_.notify_all();
    for (auto& w : workers_) w.join();
    workers_.clear();
  }

  std::vector<std::thread> workers_;        // [size() - 1]
  std::vector<std::exception_ptr> errors_;  // [size()], each slot written by its own thread
  std::mutex call_mutex_;                   // one loop at a time
  std::mutex mutex_;                        // guards job_, generation_, pending_, stop_
  std::condition_variable start_, done_;
  Job job_;
  std::uint64_t generation_ = 0;
  int pending_ = 0;
  bool stop_ = false;
};

}  // namespace kvcompress
