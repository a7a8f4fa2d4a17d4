// kvcompress::ThreadPool and CpuDevice::pool: the pool's own contract (every index once, thread indices
// in range, exceptions on the caller, nesting, a pool of 1, concurrent callers, destruction), and presses
// giving the same bits with a pool as with threads started per call.
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "kvcompress/kvcompress.hpp"
#include "test_util.hpp"

// This file's own namespace: unique per file in the unity build (tests/CMakeLists.txt).
namespace KVC_TEST_TU {

using namespace kvcompress;
using Catch::Matchers::Contains;

namespace {

/// Runs `loop` (one of the pool's two loops) over n indices; checks each index ran once on a thread
/// index in [0, min(size, n)) and returns the set of OS threads that ran them.
std::set<std::thread::id> check_loop(ThreadPool& pool, std::int64_t n, bool tasks) {
  std::vector<std::atomic<int>> hits(static_cast<std::size_t>(n));
  std::mutex m;
  std::set<std::thread::id> ids;
  std::atomic<int> bad_thread{0};
  int const limit = static_cast<int>(std::min<std::int64_t>(pool.size(), n));
  auto f = [&](std::int64_t i, int t) {
    if (t < 0 || t >= limit) ++bad_thread;
    ++hits[static_cast<std::size_t>(i)];
    std::lock_guard<std::mutex> lock(m);
    ids.insert(std::this_thread::get_id());
  };
  if (tasks)
    pool.parallel_tasks(n, f);
  else
    pool.parallel_for(n, f);
  CHECK(bad_thread == 0);
  for (auto const& h : hits) CHECK(h == 1);
  return ids;
}

/// Shapes whose memory traffic is above detail::kSerialBelowBytes, so that the presses' loops do run
/// on several threads (below it every loop runs on the caller).
constexpr std::int64_t kB = 2, kH = 4, kQ = 8, kCap = 640, kD = 64, kW = 8, kN = 64;  // 2 query heads per kv head

struct Inputs {
  std::vector<float> queries = kvc_test::random_vector(kB * kQ * kN * kD, 11);  // [kB, kQ, kN, kD]
  std::vector<float> window = kvc_test::random_vector(kB * kQ * kW * kD, 12);   // [kB, kQ, kW, kD]
  RotaryEmbedding rope = [] {
    RopeConfig c;
    c.head_dim = static_cast<int>(kD);
    return RotaryEmbedding(c);
  }();
  Observation<float> obs;

  Inputs() {
    obs.layer_idx = 0;
    obs.num_layers = 1;
    obs.queries = make_tensor4(queries.data(), {kB, kQ, kN, kD});
    obs.window_queries = make_tensor4(window.data(), {kB, kQ, kW, kD});
    obs.rope = &rope;
  }
};

/// Compresses a fresh cache (the same seed each time) on `dev`; returns keys, values and lengths.
template <class Press>
std::vector<float> compressed(CpuDevice const& dev, Press const& press, Inputs const& in) {
  kvc_test::OwnedCache<float> c(kB, kH, kCap, kD);
  c.fill_random(21);
  CHECK(static_cast<std::int64_t>(c.k.size() * sizeof(float)) > detail::kSerialBelowBytes);
  compress(dev, press, in.obs, c.view());
  std::vector<float> out = c.k;
  out.insert(out.end(), c.v.begin(), c.v.end());
  for (auto const l : c.lengths) out.push_back(static_cast<float>(l));
  CHECK(c.lengths[0] < kCap);  // it compressed
  return out;
}

template <class Press>
void same_with_and_without_pool(Press const& press, Inputs const& in) {
  auto const serial = compressed(CpuDevice{1}, press, in);
  auto const started = compressed(CpuDevice{2}, press, in);
  ThreadPool two(2), three(3);
  auto const pooled = compressed(CpuDevice{0, CpuKernels::kNative, &two}, press, in);
  auto const pooled3 = compressed(CpuDevice{7, CpuKernels::kNative, &three}, press, in);  // num_threads ignored
  auto const eq = [](std::vector<float> const& a, std::vector<float> const& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
  };
  CHECK(eq(serial, started));
  CHECK(eq(serial, pooled));
  CHECK(eq(serial, pooled3));
}

}  // namespace

TEST_CASE("thread pool: every index runs once, on thread indices below min(size, n)", "[threads][pool]") {
  for (int size : {1, 2, 3, 5})
    for (std::int64_t n : {0, 1, 2, 3, 7, 64, 1000})
      for (bool tasks : {false, true}) {
        CAPTURE(size, n, tasks);
        ThreadPool pool(size);
        REQUIRE(pool.size() == size);
        auto const ids = check_loop(pool, n, tasks);
        if (size == 1 || n <= 1) CHECK(ids.size() <= 1);
        if (n > 0) CHECK(ids.size() >= 1);
      }
  ThreadPool all(0);
  CHECK(all.size() == std::max(1, static_cast<int>(std::thread::hardware_concurrency())));
}

TEST_CASE("thread pool: a pool of 1 starts no thread and runs on the caller", "[threads][pool]") {
  ThreadPool pool(1);
  std::set<std::thread::id> ids;
  pool.parallel_for(100, [&](std::int64_t, int t) {
    CHECK(t == 0);
    ids.insert(std::this_thread::get_id());
  });
  pool.parallel_tasks(100, [&](std::int64_t, int) { ids.insert(std::this_thread::get_id()); });
  REQUIRE(ids == std::set<std::thread::id>{std::this_thread::get_id()});
}

TEST_CASE("thread pool: the workers persist from call to call", "[threads][pool]") {
  ThreadPool pool(3);
  std::set<std::thread::id> all;
  for (int round = 0; round < 50; ++round) {
    auto const ids = check_loop(pool, 3000, round % 2 == 1);
    all.insert(ids.begin(), ids.end());
  }
  CHECK(all.size() <= 3);  // the same three threads every time, never new ones
}

TEST_CASE("thread pool: an exception on a worker reaches the caller and the pool stays usable", "[threads][pool]") {
  ThreadPool pool(4);
  SECTION("parallel_for, the last block") {
    REQUIRE_THROWS_WITH(pool.parallel_for(100,
                                          [](std::int64_t i, int) {
                                            if (i == 99) throw std::runtime_error("row 99 failed");
                                          }),
                        "row 99 failed");
  }
  SECTION("parallel_tasks, every task") {
    REQUIRE_THROWS_AS(pool.parallel_tasks(40, [](std::int64_t, int) { throw Error("f", "file", 1, "task failed"); }), Error);
  }
  SECTION("on the caller's block") {
    REQUIRE_THROWS_WITH(pool.parallel_for(100,
                                          [](std::int64_t i, int) {
                                            if (i == 0) throw std::runtime_error("row 0 failed");
                                          }),
                        "row 0 failed");
  }
  check_loop(pool, 500, false);  // the pool still runs every index once, and throws nothing old
  check_loop(pool, 500, true);
}

TEST_CASE("thread pool: a loop nested in a loop of the same pool runs serially on its thread", "[threads][pool]") {
  ThreadPool pool(3);
  std::vector<std::atomic<int>> hits(static_cast<std::size_t>(6 * 10));
  std::atomic<int> bad{0};
  pool.parallel_for(6, [&](std::int64_t i, int) {
    auto const outer = std::this_thread::get_id();
    pool.parallel_tasks(10, [&](std::int64_t j, int t) {
      if (t != 0 || std::this_thread::get_id() != outer) ++bad;
      ++hits[static_cast<std::size_t>(i * 10 + j)];
    });
  });
  CHECK(bad == 0);
  for (auto const& h : hits) CHECK(h == 1);
}

TEST_CASE("thread pool: many callers, each with its own pool, and many callers sharing one", "[threads][pool]") {
  constexpr int kCallers = 6;
  std::atomic<int> failures{0};
  SECTION("a pool each") {
    std::vector<std::thread> callers;
    for (int c = 0; c < kCallers; ++c)
      callers.emplace_back([&, c] {
        ThreadPool pool(1 + c % 3);
        for (int round = 0; round < 20; ++round) {
          std::atomic<std::int64_t> sum{0};
          pool.parallel_for(257, [&](std::int64_t i, int) { sum += i; });
          if (sum != 257 * 256 / 2) ++failures;
        }
      });
    for (auto& t : callers) t.join();
  }
  SECTION("one shared pool: the callers take turns") {
    ThreadPool pool(2);
    std::vector<std::thread> callers;
    for (int c = 0; c < kCallers; ++c)
      callers.emplace_back([&] {
        for (int round = 0; round < 20; ++round) {
          std::atomic<std::int64_t> sum{0};
          pool.parallel_tasks(129, [&](std::int64_t i, int) { sum += i; });
          if (sum != 129 * 128 / 2) ++failures;
        }
      });
    for (auto& t : callers) t.join();
  }
  CHECK(failures == 0);
}

TEST_CASE("thread pool: destroyed while idle, never used or after use", "[threads][pool]") {
  for (int size : {1, 2, 4}) {
    { ThreadPool never_used(size); }
    {
      ThreadPool used(size);
      check_loop(used, 100, false);
    }
  }
  auto pool = std::make_unique<ThreadPool>(3);
  check_loop(*pool, 10, true);
  pool.reset();  // joins idle workers; returns (a hang here would time the test out)
  CHECK(pool == nullptr);
}

TEST_CASE("thread pool: bad sizes are errors naming the value", "[threads][pool][reliability]") {
  SECTION("negative pool size") {
    REQUIRE_THROWS_WITH(ThreadPool(-2), Contains("num_threads must be >= 0") && Contains("got -2"));
  }
  SECTION("negative num_threads beside a pool") {
    ThreadPool pool(2);
    kvc_test::OwnedCache<float> c(1, 2, 16, 4);
    c.fill_random(3);
    auto const before = c.k;
    REQUIRE_THROWS_WITH(compress(CpuDevice{-4, CpuKernels::kNative, &pool}, KnormPress{0.5}, Observation<float>{}, c.view()),
                        Contains("CpuDevice.num_threads must be >= 0") && Contains("got -4"));
    REQUIRE(c.k == before);
  }
}

TEST_CASE("thread pool: presses give the same bits with a pool, with started threads and on one thread",
          "[threads][pool]") {
  Inputs const in;
  SECTION("Expected Attention with covariance") {
    ExpectedAttentionPress ea;
    ea.compression_ratio = 0.5;
    ea.use_covariance = true;
    same_with_and_without_pool(ea, in);
  }
  SECTION("SnapKV") { same_with_and_without_pool(SnapKVPress{0.5, kW, 5}, in); }
  SECTION("AdaKV over Expected Attention") {
    ExpectedAttentionPress ea;
    ea.compression_ratio = 0.6;
    same_with_and_without_pool(AdaKVPress<ExpectedAttentionPress>{ea}, in);
  }
  SECTION("compaction after StreamingLLM and Knorm") {
    same_with_and_without_pool(StreamingLLMPress{0.5, 4}, in);
    same_with_and_without_pool(KnormPress{0.3}, in);
  }
}

TEST_CASE("thread pool: thread_count and workspace sizes follow the pool", "[threads][pool]") {
  ThreadPool pool(3);
  CpuDevice const dev{1, CpuKernels::kNative, &pool};
  CHECK(detail::thread_count(dev, 100) == 3);
  CHECK(detail::thread_count(dev, 2) == 2);
  CHECK(detail::thread_count(dev, 0) == 1);
  Inputs const in;
  kvc_test::OwnedCache<float> c(kB, kH, kCap, kD);
  SnapKVPress const snap{0.5, kW, 5};
  CHECK(compress_workspace_bytes(dev, snap, in.obs, c.view()) ==
        compress_workspace_bytes(CpuDevice{3}, snap, in.obs, c.view()));
}

}  // namespace KVC_TEST_TU
