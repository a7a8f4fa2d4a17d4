// No allocation on the hot path. This executable replaces the global allocation functions (and,
// without a sanitizer, interposes glibc's malloc family, which Eigen uses), so it is kept apart from
// the other tests. What is promised (docs/reliability.md):
// - `compress(dev, press, obs, cache, workspace)` and `score(..., scores, workspace)` on a device
//   that runs one thread allocate nothing, for every press, with realistic shapes (the Eigen
//   products see their production sizes);
// - with more threads, the only allocations are thread start-up (bookkeeping and one block per
//   started thread): their number does not depend on the cache size and all are freed on return;
// - when those allocations fail, the work runs on the calling thread with the same result.
#include <catch2/catch.hpp>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <functional>
#include <new>
#include <string>
#include <vector>

#include "kvcompress/kvcompress.hpp"
#include "test_util.hpp"

namespace counting {

std::atomic<bool> armed{false};
std::atomic<long> news{0};     // operator new calls while armed
std::atomic<long> deletes{0};  // operator delete calls (non-null) while armed
std::atomic<long> mallocs{0};  // malloc-family calls while armed (interposed builds only)
std::atomic<long> fail_from{-1};  // ≥ 0: the operator new calls past this many (while armed) throw

void* counted_new(std::size_t n, std::size_t align) {
  if (armed.load(std::memory_order_relaxed)) {
    long const k = news.fetch_add(1, std::memory_order_relaxed);
    long const f = fail_from.load(std::memory_order_relaxed);
    if (f >= 0 && k >= f) throw std::bad_alloc();
  }
  void* p = align > alignof(std::max_align_t) ? std::aligned_alloc(align, (n + align - 1) / align * align)
                                              : std::malloc(n == 0 ? 1 : n);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

void counted_delete(void* p) noexcept {
  if (p != nullptr && armed.load(std::memory_order_relaxed)) deletes.fetch_add(1, std::memory_order_relaxed);
  std::free(p);
}

/// Counts what `body` allocates; the counters are reset first.
struct Counts {
  long news = 0, deletes = 0, mallocs = 0;
};
Counts count(std::function<void()> const& body, long fail_from_call = -1) {
  news = 0;
  deletes = 0;
  mallocs = 0;
  fail_from = fail_from_call;
  armed = true;
  try {
    body();
  } catch (...) {
    armed = false;
    fail_from = -1;
    throw;
  }
  armed = false;
  fail_from = -1;
  return {news.load(), deletes.load(), mallocs.load()};
}

}  // namespace counting

void* operator new(std::size_t n) { return counting::counted_new(n, 0); }
void* operator new[](std::size_t n) { return counting::counted_new(n, 0); }
void* operator new(std::size_t n, std::align_val_t a) { return counting::counted_new(n, static_cast<std::size_t>(a)); }
void* operator new[](std::size_t n, std::align_val_t a) { return counting::counted_new(n, static_cast<std::size_t>(a)); }
void* operator new(std::size_t n, std::nothrow_t const&) noexcept {
  try {
    return counting::counted_new(n, 0);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t n, std::nothrow_t const& t) noexcept { return operator new(n, t); }
void operator delete(void* p) noexcept { counting::counted_delete(p); }
void operator delete[](void* p) noexcept { counting::counted_delete(p); }
void operator delete(void* p, std::size_t) noexcept { counting::counted_delete(p); }
void operator delete[](void* p, std::size_t) noexcept { counting::counted_delete(p); }
void operator delete(void* p, std::align_val_t) noexcept { counting::counted_delete(p); }
void operator delete[](void* p, std::align_val_t) noexcept { counting::counted_delete(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { counting::counted_delete(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { counting::counted_delete(p); }
void operator delete(void* p, std::nothrow_t const&) noexcept { counting::counted_delete(p); }
void operator delete[](void* p, std::nothrow_t const&) noexcept { counting::counted_delete(p); }

// Eigen allocates its large temporaries with malloc, not operator new: interpose glibc's malloc
// family too. A sanitizer interposes it already, so sanitized builds count operator new only.
#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || __has_feature(memory_sanitizer)
#define KVC_TEST_SANITIZED 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define KVC_TEST_SANITIZED 1
#endif
#if defined(__GLIBC__) && !defined(KVC_TEST_SANITIZED)
#define KVC_TEST_COUNTS_MALLOC 1
extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);

static void note_malloc() noexcept {
  if (counting::armed.load(std::memory_order_relaxed)) counting::mallocs.fetch_add(1, std::memory_order_relaxed);
}
void* malloc(std::size_t n) {
  note_malloc();
  return __libc_malloc(n);
}
void* calloc(std::size_t n, std::size_t s) {
  note_malloc();
  return __libc_calloc(n, s);
}
void* realloc(void* p, std::size_t n) {
  note_malloc();
  return __libc_realloc(p, n);
}
void* aligned_alloc(std::size_t a, std::size_t n) {
  note_malloc();
  return __libc_memalign(a, n);
}
void* memalign(std::size_t a, std::size_t n) {
  note_malloc();
  return __libc_memalign(a, n);
}
int posix_memalign(void** out, std::size_t a, std::size_t n) {
  note_malloc();
  void* p = __libc_memalign(a, n);
  if (p == nullptr) return ENOMEM;
  *out = p;
  return 0;
}
}
#endif

using namespace kvcompress;

namespace {

/// Production-like shapes: head_dim 128, GQA 4:1, a window of 16, rows of different lengths.
struct Shape {
  std::int64_t batch = 1, kv_heads = 2, q_heads = 8, capacity = 512, head_dim = 128, window = 16;
};

RotaryEmbedding make_rope(std::int64_t head_dim) {
  RopeConfig c;
  c.type = RopeType::kLlama3;
  c.theta = 500000.0;
  c.head_dim = static_cast<int>(head_dim);
  c.factor = 8.0;
  c.original_max_position_embeddings = 8192;
  c.max_position_embeddings = 131072;
  return RotaryEmbedding(c);
}

/// Everything any press reads, for rows that all hold n = capacity entries.
struct Inputs {
  Shape s;
  RotaryEmbedding rope;
  std::vector<float> queries, window_queries, attention, mean, covariance, filters, sketch;

  explicit Inputs(Shape shape, bool with_attention = true) : s(shape), rope(make_rope(shape.head_dim)) {
    std::int64_t const n = s.capacity, d = s.head_dim;
    auto const sz = [](std::int64_t x) { return static_cast<std::size_t>(x); };
    queries = kvc_test::random_vector(sz(s.batch * s.q_heads * n * d), 1);
    window_queries = kvc_test::random_vector(sz(s.batch * s.q_heads * s.window * d), 2);
    attention = kvc_test::random_vector(sz(with_attention ? s.batch * s.q_heads * n * n : 1), 3, 0.01f);
    mean = kvc_test::random_vector(sz(s.q_heads * d), 4, 0.3f);
    covariance.assign(sz(s.q_heads * d * d), 0.0f);
    for (std::int64_t j = 0; j < s.q_heads; ++j)
      for (std::int64_t c = 0; c < d; ++c) covariance[sz((j * d + c) * d + c)] = 0.5f;
    filters = kvc_test::random_vector(sz(2 * s.kv_heads * d), 5);
    sketch = kvc_test::random_vector(sz(s.batch * s.kv_heads * d * 48), 6, 0.15f);  // LeverageScore / Compactor
  }

  [[nodiscard]] Observation<float> observation() const {
    Observation<float> obs;
    obs.layer_idx = 1;
    obs.num_layers = 2;
    std::int64_t const n = s.capacity, d = s.head_dim;
    obs.queries = make_tensor4(queries.data(), {s.batch, s.q_heads, n, d});
    obs.window_queries = make_tensor4(window_queries.data(), {s.batch, s.q_heads, s.window, d});
    if (attention.size() > 1) obs.attention = make_tensor4(attention.data(), {s.batch, s.q_heads, n, n});
    obs.stats = QueryStats{mean.data(), covariance.data(), s.q_heads};
    obs.rope = &rope;
    return obs;
  }
};

/// One press behind a uniform interface, with its own workspace.
struct PressCase {
  std::string name;
  std::function<std::size_t(CpuDevice, Observation<float> const&, KVCacheView<float> const&)> bytes;
  std::function<void(CpuDevice, Observation<float> const&, KVCacheView<float> const&, Workspace)> compress;
  std::function<void(CpuDevice, Observation<float> const&, KVCacheView<float> const&, float*, Workspace&)> score;
};

template <class Press>
PressCase make_case(std::string name, Press p) {
  return {std::move(name),
          [p](CpuDevice dev, Observation<float> const& o, KVCacheView<float> const& c) {
            return compress_workspace_bytes(dev, p, o, c);
          },
          [p](CpuDevice dev, Observation<float> const& o, KVCacheView<float> const& c, Workspace ws) {
            kvcompress::compress(dev, p, o, c, ws);
          },
          [p](CpuDevice dev, Observation<float> const& o, KVCacheView<float> const& c, float* s, Workspace& ws) {
            kvcompress::score(dev, p, o, c, s, ws);
          }};
}

// [2 layers, 2 kv heads]: head 0 of layer 1 streams at head_compression_ratio 0.5.
std::vector<float> const kDuoScores{0.9f, 0.8f, 0.1f, 0.7f};
// [99, 2 layers, 2 kv heads]: prune 30 % and 60 % of the heads at every target.
std::vector<float> const kLukvCurve = [] {
  std::vector<float> c(99 * 2 * 2);
  for (std::size_t i = 0; i < c.size(); ++i) c[i] = i % 2 == 0 ? 0.3f : 0.6f;
  return c;
}();

/// A press that only compresses (a wrapper with its own `compress`): no `score` to count.
template <class Press>
PressCase make_compress_case(std::string name, Press p) {
  PressCase c = make_case(std::move(name), KnormPress{});
  c.bytes = [p](CpuDevice dev, Observation<float> const& o, KVCacheView<float> const& v) {
    return compress_workspace_bytes(dev, p, o, v);
  };
  c.compress = [p](CpuDevice dev, Observation<float> const& o, KVCacheView<float> const& v, Workspace ws) {
    kvcompress::compress(dev, p, o, v, ws);
  };
  c.score = nullptr;
  return c;
}

std::vector<PressCase> all_presses(Inputs const& in) {
  double const r = 0.5;
  ExpectedAttentionPress ea;
  ea.compression_ratio = r;
  ExpectedAttentionPress ea_plain = ea;
  ea_plain.use_covariance = false;
  ea_plain.use_vnorm = false;
  ExpectedAttentionStatsPress eas;
  eas.compression_ratio = r;
  StreamingLLMPress streaming;
  streaming.compression_ratio = r;
  RandomPress seeded;
  seeded.compression_ratio = r;
  seeded.seed = 7;
  LagKVPress lag;
  lag.compression_ratio = r;
  lag.lag_size = 32;
  PyramidKVPress pyramid;
  pyramid.compression_ratio = r;
  pyramid.window_size = in.s.window;
  int const heads = static_cast<int>(in.s.kv_heads), d = static_cast<int>(in.s.head_dim);
  CompactorPress compactor{r};
  compactor.sketch = in.sketch.data();
  LUKVPress<ExpectedAttentionPress> lukv{ExpectedAttentionPress{}, r};
  lukv.budget_curves = kLukvCurve.data();
  lukv.num_layers = 2;
  lukv.kv_heads = heads;
  return {make_case("ExpectedAttention", ea),
          make_case("ExpectedAttention (no covariance, no vnorm)", ea_plain),
          make_case("ExpectedAttentionStats", eas),
          make_case("Knorm", KnormPress{r}),
          make_case("StreamingLLM", streaming),
          make_case("Random (seeded)", seeded),
          make_case("KeyDiff", KeyDiffPress{r}),
          make_case("LagKV", lag),
          make_case("QFilter", QFilterPress{r, in.filters.data(), 2, heads, d}),
          make_case("SnapKV", SnapKVPress{r, in.s.window, 5}),
          make_case("PyramidKV", pyramid),
          make_case("TOVA", TOVAPress{r}),
          make_case("ObservedAttention", ObservedAttentionPress{r}),
          make_case("LeverageScore", LeverageScorePress{r, 48, in.sketch.data()}),
          make_case("NonCausalAttn", NonCausalAttnPress{r}),
          make_case("Compactor", compactor),
          make_case("CUR", CURPress{r}),
          make_case("Cap", CapPress{r}),
          make_case("Finch", FinchPress{r, 0, true, true, in.s.window}),
          make_compress_case("EntropyGatedChunkKV", EntropyGatedChunkKVPress{SnapKVPress{r, in.s.window, 5}}),
          make_compress_case("Merging", MergingPress{ExpectedAttentionPress{r}, 0.1, 0.75}),
          make_compress_case("DuoAttention", DuoAttentionPress{0.5, 4, 8, kDuoScores.data(), 2, 2}),
          make_case("LUKV", lukv)};
}

kvc_test::OwnedCache<float> make_cache(Shape const& s) {
  kvc_test::OwnedCache<float> c(s.batch, s.kv_heads, s.capacity, s.head_dim);
  c.fill_random(11);
  return c;
}

}  // namespace

TEST_CASE("the counting allocator sees the allocations it must see", "[alloc]") {
  auto const c = counting::count([] { std::vector<float> v(1000, 1.0f); });
  CHECK(c.news == 1);
  CHECK(c.deletes == 1);
#if defined(KVC_TEST_COUNTS_MALLOC)
  Eigen::MatrixXf const a = Eigen::MatrixXf::Ones(300, 300);
  Eigen::MatrixXf p(300, 300);
  auto const m = counting::count([&] { p.noalias() = a * a; });  // Eigen's blocking buffers exceed its stack limit
  CHECK(m.mallocs > 0);
  CHECK(p(0, 0) == 300.0f);
#endif
}

TEST_CASE("compress and score with a caller-supplied workspace allocate nothing on one thread", "[alloc]") {
  Shape const s;
  Inputs const in(s);
  auto const obs = in.observation();
  CpuDevice const one{1};
  for (auto const& p : all_presses(in)) {
    CAPTURE(p.name);
    auto cache = make_cache(s);
    auto const view = cache.view();
    std::vector<std::byte> scratch(p.bytes(one, obs, view));
    std::vector<float> scores(static_cast<std::size_t>(s.batch * s.kv_heads * s.capacity));

    if (p.score) {
      Workspace score_ws(scratch.data(), scratch.size());
      auto const scored = counting::count([&] { p.score(one, obs, view, scores.data(), score_ws); });
      CHECK(scored.news == 0);
      CHECK(scored.mallocs == 0);
    }

    auto const compressed = counting::count([&] { p.compress(one, obs, view, Workspace(scratch.data(), scratch.size())); });
    CHECK(compressed.news == 0);
    CHECK(compressed.mallocs == 0);
    CHECK(cache.lengths[0] < s.capacity);  // it did compress
  }
}

TEST_CASE("CAM decoding steps with a caller-supplied workspace allocate nothing on one thread", "[alloc]") {
  // 24 steps from 472 entries, interval 8 and target 456: three compressions (scoring with Expected
  // Attention over the buffered queries, merging, compaction) among steps that only add attention.
  Shape const s;
  Inputs const in(s);
  CpuDevice const one{1};
  auto cache = make_cache(s);
  std::int64_t const d = s.head_dim, start = s.capacity - 40;
  CAMOptions opt;
  opt.compression_interval = 8;
  opt.target_size = start - 16;
  opt.merge_budget = 8;
  opt.query_buffer_size = 16;
  CAMPress<ExpectedAttentionPress> press(ExpectedAttentionPress{}, opt,
                                         CAMShape{2, s.batch, s.q_heads, s.kv_heads, s.head_dim, s.capacity});
  Observation<float> obs = in.observation();
  obs.window_queries = Tensor4<float>{};
  obs.attention = Tensor4<float>{};
  obs.queries = make_tensor4(in.queries.data(), {s.batch, s.q_heads, 1, d}, {s.q_heads * s.capacity * d, s.capacity * d, d, 1});
  cache.lengths.assign(cache.lengths.size(), static_cast<std::int32_t>(start));
  auto const view = cache.view();
  std::vector<std::byte> scratch(press.workspace_bytes(one, obs, view));
  (void)press.step(one, obs, view, Workspace(scratch.data(), scratch.size()));  // the prefill: a new sequence
  int compressions = 0;
  for (std::int64_t i = 0; i < 24; ++i) {
    for (auto& n : cache.lengths) ++n;
    obs.position = cache.lengths[0] - 1 + 100 * (i + 1);  // positions with gaps, as after earlier compressions
    auto const c = counting::count([&] { compressions += press.step(one, obs, view, Workspace(scratch.data(), scratch.size())) ? 1 : 0; });
    CHECK(c.news == 0);
    CHECK(c.mallocs == 0);
  }
  CHECK(compressions == 3);
}

TEST_CASE("no allocation either for head_dim 64 and 256, long rows and GQA 8:1", "[alloc]") {
  // Eigen keeps GEMM blocking buffers up to 128 KiB on the stack; these shapes bound what the
  // presses' products ask of it. (ObservedAttention, whose n × n attention is quadratic, and which
  // has no product, is covered above.)
  for (auto [d, cap, q_heads] : {std::array<std::int64_t, 3>{64, 2048, 16}, std::array<std::int64_t, 3>{256, 1024, 8}}) {
    Shape s;
    s.head_dim = d;
    s.capacity = cap;
    s.q_heads = q_heads;
    s.window = 64;
    Inputs const in(s, false);
    auto const obs = in.observation();
    for (auto const& p : all_presses(in)) {
      if (p.name == "ObservedAttention") continue;
      CAPTURE(p.name, d, cap);
      auto cache = make_cache(s);
      std::vector<std::byte> scratch(p.bytes(CpuDevice{1}, obs, cache.view()));
      auto const c = counting::count(
          [&] { p.compress(CpuDevice{1}, obs, cache.view(), Workspace(scratch.data(), scratch.size())); });
      CHECK(c.news == 0);
      CHECK(c.mallocs == 0);
      CHECK(cache.lengths[0] < cap);
    }
  }
}

TEST_CASE("an unseeded RandomPress (std::random_device) and make_cache_view allocate nothing either", "[alloc]") {
  Shape const s;
  Inputs const in(s);
  auto cache = make_cache(s);
  RandomPress press;
  press.compression_ratio = 0.25;
  std::vector<std::byte> scratch(compress_workspace_bytes(CpuDevice{1}, press, in.observation(), cache.view()));
  auto const c = counting::count([&] {
    compress(CpuDevice{1}, press, in.observation(), cache.view(), Workspace(scratch.data(), scratch.size()));
  });
  CHECK(c.news == 0);
  CHECK(c.mallocs == 0);
  CHECK(cache.lengths[0] == 384);
}

TEST_CASE("with threads, compress allocates only thread start-up: a count independent of the cache size, all freed",
          "[alloc][threads]") {
  CpuDevice const two{2};
  {  // the thread library's one-time set-up (glibc allocates on the first thread creation)
    Inputs const in(Shape{});
    auto cache = make_cache(Shape{});
    compress(two, KnormPress{0.5}, in.observation(), cache.view());
  }
  for (std::size_t i = 0; i < all_presses(Inputs(Shape{})).size(); ++i) {
    std::vector<counting::Counts> per_size;
    std::string name;
    for (std::int64_t capacity : {256, 512}) {
      Shape s;
      s.capacity = capacity;
      Inputs const in(s);
      auto const p = all_presses(in)[i];
      name = p.name;
      auto const obs = in.observation();
      auto cache = make_cache(s);
      std::vector<std::byte> scratch(p.bytes(two, obs, cache.view()));
      per_size.push_back(counting::count([&] {
        p.compress(two, obs, cache.view(), Workspace(scratch.data(), scratch.size()));
      }));
      CHECK(cache.lengths[1] < capacity);
    }
    CAPTURE(name);
    CHECK(per_size[0].news == per_size[1].news);
    CHECK(per_size[0].mallocs == per_size[1].mallocs);
    for (auto const& c : per_size) {
      CHECK(c.news > 0);               // threads did start: the test exercises the threaded path
      CHECK(c.deletes == c.news);      // nothing outlives the call
    }
  }
}

TEST_CASE("on a ThreadPool, compress and score allocate nothing with two threads", "[alloc][threads]") {
  Shape const s;
  Inputs const in(s);
  auto const obs = in.observation();
  ThreadPool pool(2);  // its threads start here, outside the counted calls
  CpuDevice const pooled{0, CpuKernels::kNative, &pool};
  for (auto const& p : all_presses(in)) {
    CAPTURE(p.name);
    auto cache = make_cache(s);
    std::vector<std::byte> scratch(p.bytes(pooled, obs, cache.view()));
    std::vector<float> scores(static_cast<std::size_t>(s.batch * s.kv_heads * s.capacity));
    if (p.score) {
      Workspace score_ws(scratch.data(), scratch.size());
      auto const scored = counting::count([&] { p.score(pooled, obs, cache.view(), scores.data(), score_ws); });
      CHECK(scored.news == 0);
      CHECK(scored.mallocs == 0);
    }
    auto const compressed =
        counting::count([&] { p.compress(pooled, obs, cache.view(), Workspace(scratch.data(), scratch.size())); });
    CHECK(compressed.news == 0);  // the same call on CpuDevice{2} allocates (the test case above)
    CHECK(compressed.mallocs == 0);
    CHECK(cache.lengths[0] < s.capacity);
  }
}

TEST_CASE("when thread start-up cannot allocate, the work runs on the calling thread with the same result",
          "[alloc][threads]") {
  Shape const s;
  Inputs const in(s);
  auto const obs = in.observation();
  for (auto const& p : all_presses(in)) {
    CAPTURE(p.name);
    auto reference = make_cache(s);
    {
      std::vector<std::byte> scratch(p.bytes(CpuDevice{1}, obs, reference.view()));
      p.compress(CpuDevice{1}, obs, reference.view(), Workspace(scratch.data(), scratch.size()));
    }
    // Fail every allocation from the k-th on: before the bookkeeping, before each thread, after.
    for (long k = 0; k < 8; ++k) {
      CAPTURE(k);
      auto cache = make_cache(s);
      std::vector<std::byte> scratch(p.bytes(CpuDevice{4}, obs, cache.view()));
      REQUIRE_NOTHROW(counting::count(
          [&] { p.compress(CpuDevice{4}, obs, cache.view(), Workspace(scratch.data(), scratch.size())); }, k));
      REQUIRE(cache.lengths == reference.lengths);
      REQUIRE(cache.k == reference.k);
      REQUIRE(cache.v == reference.v);
    }
  }
}
