#pragma once
/// \file
/// \brief `score` and `compress` on the CUDA device: the same press objects, observations and views
/// as on the CPU, with device memory and the caller's stream.
///
///   std::size_t bytes = compress_workspace_bytes(dev, press, obs, cache);   // host only
///   compress(dev, press, obs, cache, Workspace(d_scratch, bytes));          // enqueues, never syncs
///   ...
///   check_status(dev, d_scratch);   // when the caller chooses to synchronise: throws on a device error
///
/// One call enqueues: the status reset, the length checks, the press's scoring kernels, a check that
/// every live score is finite, the per-row budgets (kvpress's `int(n·(1−r))`, or AdaKV's selection
/// across heads), the per-row top-k and the in-place compaction. Host-visible errors throw before
/// anything is enqueued; device-visible ones are recorded in the workspace's status and stop every
/// later kernel of the call, so a bad length or a NaN leaves the cache exactly as it was.

#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "kvcompress/cuda/adakv.cuh"
#include "kvcompress/cuda/compact.cuh"
#include "kvcompress/cuda/expected_attention.cuh"
#include "kvcompress/cuda/key_scorers.cuh"
#include "kvcompress/cuda/runtime.cuh"
#include "kvcompress/cuda/select.cuh"
#include "kvcompress/cuda/window_attention.cuh"
#include "kvcompress/press/adakv.hpp"
#include "kvcompress/press/scorer.hpp"

namespace kvcompress {

namespace cuda_impl {

/// Whether a press has CUDA scoring kernels (an overload of `cuda_impl::score` for it).
template <class Press, class T, class L, class = void>
struct has_cuda_scorer : std::false_type {};
template <class Press, class T, class L>
struct has_cuda_scorer<Press, T, L,
                       std::void_t<decltype(cuda_impl::score(
                           std::declval<cuda const&>(), std::declval<Press const&>(),
                           std::declval<Observation<T> const&>(), std::declval<KVCacheView<T, L> const&>(),
                           std::declval<float*>(), std::declval<Workspace&>(), std::declval<DeviceStatus*>()))>>
    : std::true_type {};

template <class Press, class T, class L>
inline constexpr bool has_cuda_scorer_v = has_cuda_scorer<Press, T, L>::value;

template <class Press>
struct is_adakv : std::false_type {};
template <class Inner>
struct is_adakv<AdaKVPress<Inner>> : std::true_type {};

/// The press whose kernels score: AdaKV scores with the press it wraps.
template <class Press>
decltype(auto) scoring_press(Press const& press) {
  if constexpr (is_adakv<Press>::value) return (press.press);
  else return (press);
}

template <class Press, class T, class L>
constexpr void require_cuda_press() {
  using Scorer = std::decay_t<decltype(scoring_press(std::declval<Press const&>()))>;
  static_assert(has_cuda_scorer_v<Scorer, T, L>,
                "this press has no CUDA kernels: on kvcompress::cuda, use ExpectedAttentionPress, "
                "ExpectedAttentionStatsPress, KnormPress, StreamingLLMPress, KeyDiffPress, SnapKVPress, "
                "TOVAPress, or AdaKVPress around one of them; every press runs on kvcompress::cpu");
}

/// The status sits first in the workspace, where `Workspace::take` puts the first object.
[[nodiscard]] inline DeviceStatus* status_in(void* workspace) noexcept {
  auto const base = reinterpret_cast<std::uintptr_t>(workspace);
  auto const aligned = (base + Workspace::kAlignment - 1) & ~(std::uintptr_t{Workspace::kAlignment} - 1);
  return reinterpret_cast<DeviceStatus*>(aligned);
}

/// Blocks for a grid-stride loop over `work` items of 256 threads, at most 65535 (plenty to fill
/// any GPU).
[[nodiscard]] inline unsigned int grid_for(std::int64_t work) noexcept {
  unsigned int const g = ceil_div(work < 1 ? 1 : work, 256);
  return g < 65535u ? g : 65535u;
}

/// Records kNonFiniteScore for the first NaN or ±Inf among the live scores of any row.
/// \param scores [rows, capacity] \param lengths [rows]
template <class = void>
__global__ void check_finite_scores_kernel(float const* scores, std::int32_t const* lengths, std::int64_t rows,
                                           std::int64_t capacity, DeviceStatus* status) {
  if (failed(status)) return;
  for (std::int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    std::int64_t const n = lengths[r];
    for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
      float const s = scores[r * capacity + i];
      if (!isfinite(s)) report(status, StatusCode::kNonFiniteScore, r, i, s, static_cast<int>(n));
    }
  }
}

/// Launches `check_finite_scores_kernel`: up to 64 blocks along a row, one grid row per cache row.
inline void check_finite_scores(cuda const& dev, float const* scores, std::int32_t const* lengths, std::int64_t rows,
                                std::int64_t capacity, DeviceStatus* status) {
  unsigned int const along = grid_for(capacity) < 64u ? grid_for(capacity) : 64u;
  launch("check_finite_scores_kernel", check_finite_scores_kernel<>, dim3(along, row_grid(rows)), 256, 0, dev.stream,
         scores, lengths, rows, capacity, status);
}

/// counts[r] = kvpress's budget of row r, `kept_count(lengths[r], ratio)`.
/// \param lengths [rows] \param counts [rows]
template <class = void>
__global__ void kept_counts_kernel(std::int32_t const* lengths, std::int64_t rows, double ratio, std::int32_t* counts,
                                   DeviceStatus const* status) {
  if (failed(status)) return;
  for (std::int64_t r = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; r < rows;
       r += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    std::int64_t const n = lengths[r];
    std::int64_t const k = kept_count(n, ratio);
    counts[r] = static_cast<std::int32_t>(k < 0 ? 0 : (k > n ? n : k));
  }
}

/// Scratch of the scoring phase (the press, and AdaKV's selection across heads after it).
template <class Press, class T, class L>
std::size_t scoring_phase_bytes(Press const& press, Observation<T> const& obs, KVCacheView<T, L> const& cache) {
  std::size_t bytes = score_workspace_bytes(scoring_press(press), obs, cache);
  if constexpr (is_adakv<Press>::value) {
    std::size_t const ada = adakv_counts_workspace_bytes(cache.extents.batch, cache.extents.kv_heads,
                                                         cache.extents.capacity);
    bytes = bytes > ada ? bytes : ada;
  }
  return bytes;
}

/// Where one compress call keeps its arrays in the caller's workspace: the status first (where
/// `status_in` finds it), then the scores, budgets and kept slots, and the rest of the workspace as
/// the region that the phases (scoring, AdaKV's budgets, selection, compaction) share in turn.
struct CompressScratch {
  DeviceStatus* status;
  float* scores;        // [rows, capacity]
  std::int32_t* counts; // [rows]
  std::int32_t* kept;   // [rows, capacity]
  std::byte* phase;     // [phase_bytes], 64-byte aligned
  std::size_t phase_bytes;
};

/// Carves `CompressScratch` for `rows` rows of `capacity` from `ws` (host arithmetic only). The phase
/// region starts at the next 64-byte boundary after the kept slots, as `Workspace::take` places it,
/// and takes every byte from there to the end: `compress_workspace_bytes` sized it, alignment
/// included, for any base address.
[[nodiscard]] inline CompressScratch carve_compress_scratch(Workspace& ws, std::int64_t rows, std::int64_t capacity) {
  auto const n = static_cast<std::size_t>(rows * capacity);
  CompressScratch s{};
  s.status = ws.take<DeviceStatus>(1);
  s.scores = ws.take<float>(n);
  s.counts = ws.take<std::int32_t>(static_cast<std::size_t>(rows));
  s.kept = ws.take<std::int32_t>(n);
  s.phase = ws.take<std::byte>(0);  // the next 64-byte boundary (throws if the workspace ends before it)
  s.phase_bytes = ws.capacity() - ws.used();
  return s;
}

}  // namespace cuda_impl

/// \brief A device cache view (device pointers throughout), its pointers checked once: every pointer
/// present and device or managed memory, keys and values distinct, the extents as on the CPU. Build the
/// view of each layer with it when the cache is allocated; `compress` then makes no driver query per
/// call (unless `dev.check_pointers`). Lengths live on the device and are checked by every call there.
template <class T, class L>
[[nodiscard]] KVCacheView<T, L> make_device_cache_view(cuda const&, T* keys, T* values, CacheExtents const& extents,
                                                       L const& key_layout, L const& value_layout,
                                                       std::int32_t* lengths, std::int32_t* positions = nullptr) {
  KVCacheView<T, L> const view{keys, values, extents, key_layout, value_layout, lengths, positions};
  cuda_impl::require_device_cache(view, true);
  return view;
}

/// \brief Scratch bytes that `score(dev, press, obs, cache, scores, workspace)` needs on the device.
template <class Press, class T, class L>
[[nodiscard]] std::size_t score_workspace_bytes(cuda const&, Press const& press, Observation<T> const& obs,
                                                KVCacheView<T, L> const& cache) {
  cuda_impl::require_cuda_press<Press, T, L>();
  return Workspace::bytes_for<cuda_impl::DeviceStatus>(1) +
         cuda_impl::score_workspace_bytes(cuda_impl::scoring_press(press), obs, cache);
}

/// \brief Scores every live entry into `scores` [batch, kv_heads, capacity] (device memory) on the
/// device's stream. Device-side problems (lengths, non-finite scores) go to the workspace's status;
/// read them with `check_status`.
template <class Press, class T, class L>
void score(cuda const& dev, Press const& press, Observation<T> const& obs, KVCacheView<T, L> const& cache,
           float* scores, Workspace workspace) {
  cuda_impl::require_cuda_press<Press, T, L>();
  cuda_impl::require_device_cache(dev, cache);
  cuda_impl::require_device_observation(obs);
  cuda_impl::require_device_pointer(dev, scores, "scores");
  auto* status = workspace.take<cuda_impl::DeviceStatus>(1);
  cuda_impl::require_device_pointer(dev, status, "workspace");
  KVC_CUDA_CHECK(cudaMemsetAsync(status, 0, sizeof(cuda_impl::DeviceStatus), dev.stream));
  std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads, cap = cache.extents.capacity;
  cuda_impl::check_lengths(dev, cache.lengths, rows, cap, -1, status);
  cuda_impl::score(dev, cuda_impl::scoring_press(press), obs, cache, scores, workspace, status);
  cuda_impl::check_finite_scores(dev, scores, cache.lengths, rows, cap, status);
}

/// \brief Scratch bytes that `compress(dev, press, obs, cache, workspace)` needs on the device.
template <class Press, class T, class L>
[[nodiscard]] std::size_t compress_workspace_bytes(cuda const&, Press const& press, Observation<T> const& obs,
                                                   KVCacheView<T, L> const& cache) {
  cuda_impl::require_cuda_press<Press, T, L>();
  auto const rows = static_cast<std::size_t>(cache.extents.batch * cache.extents.kv_heads);
  auto const cap = static_cast<std::size_t>(cache.extents.capacity);
  // The phases run one after the other on one stream, so they share one region.
  std::size_t phase = cuda_impl::scoring_phase_bytes(press, obs, cache);
  std::size_t const select = cuda_impl::select_workspace_bytes(cache.extents.batch * cache.extents.kv_heads,
                                                               cache.extents.capacity);
  std::size_t const compact = cuda_impl::compact_workspace_bytes(cache);
  phase = phase > select ? phase : select;
  phase = phase > compact ? phase : compact;
  return Workspace::bytes_for<cuda_impl::DeviceStatus>(1) + Workspace::bytes_for<float>(rows * cap) +
         Workspace::bytes_for<std::int32_t>(rows) + Workspace::bytes_for<std::int32_t>(rows * cap) +
         Workspace::bytes_for<std::byte>(phase);
}

/// \brief Compresses one layer's cache in place on the device's stream: score, keep each row's
/// budget of top entries, compact them to the front in position order, update `lengths` (and
/// `positions`). Ratio 0 leaves the cache untouched. Never synchronises and allocates nothing; the
/// workspace (device memory, `compress_workspace_bytes`) must stay alive until the stream reaches the
/// end of the call. Device-side problems are read with `check_status(dev, workspace memory)`.
template <class Press, class T, class L>
void compress(cuda const& dev, Press const& press, Observation<T> const& obs, KVCacheView<T, L> const& cache,
              Workspace workspace) {
  cuda_impl::require_cuda_press<Press, T, L>();
  // The device path has no tensor-parallel form yet: a split layer would be compressed per rank.
  KVC_CHECK(!obs.shard.split(), "the CUDA compress does not take a tensor-parallel shard (observation.shard has a "
                                "communicator); compress a split layer with the CPU path (docs/distributed.md)");
  double const ratio = compression_ratio_of(press);
  check_compression_ratio(ratio);
  if constexpr (cuda_impl::is_adakv<Press>::value) detail::check_alpha_safeguard(press.alpha_safeguard);
  cuda_impl::require_device_cache(dev, cache);
  cuda_impl::require_device_observation(obs);
  std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads, cap = cache.extents.capacity;
  if (ratio == 0.0) {  // only the status is reset: nothing else of the workspace is needed
    auto* status = workspace.take<cuda_impl::DeviceStatus>(1);
    cuda_impl::require_device_pointer(dev, status, "workspace");
    KVC_CUDA_CHECK(cudaMemsetAsync(status, 0, sizeof(cuda_impl::DeviceStatus), dev.stream));
    return;
  }
  cuda_impl::CompressScratch const scratch = cuda_impl::carve_compress_scratch(workspace, rows, cap);
  cuda_impl::DeviceStatus* const status = scratch.status;
  cuda_impl::require_device_pointer(dev, status, "workspace");
  KVC_CUDA_CHECK(cudaMemsetAsync(status, 0, sizeof(cuda_impl::DeviceStatus), dev.stream));
  float* const scores = scratch.scores;          // [rows, cap]
  std::int32_t* const counts = scratch.counts;   // [rows]
  std::int32_t* const kept = scratch.kept;       // [rows, cap]
  std::byte* const phase = scratch.phase;
  std::size_t const phase_bytes = scratch.phase_bytes;

  cuda_impl::check_lengths(dev, cache.lengths, rows, cap, -1, status);
  {
    Workspace ws(phase, phase_bytes);
    cuda_impl::score(dev, cuda_impl::scoring_press(press), obs, cache, scores, ws, status);
  }
  cuda_impl::check_finite_scores(dev, scores, cache.lengths, rows, cap, status);
  if constexpr (cuda_impl::is_adakv<Press>::value) {
    Workspace ws(phase, phase_bytes);
    cuda_impl::adakv_counts(dev, scores, cache.extents.batch, cache.extents.kv_heads, cap, cache.lengths, ratio,
                            press.alpha_safeguard, counts, ws, status);
  } else {
    cuda_impl::launch("kept_counts_kernel", cuda_impl::kept_counts_kernel<>, cuda_impl::grid_for(rows), 256, 0,
                      dev.stream, cache.lengths, rows, ratio, counts, status);
  }
  {
    Workspace ws(phase, phase_bytes);
    cuda_impl::select_topk(dev, scores, rows, cap, cache.lengths, counts, kept, ws, status);
  }
  {
    Workspace ws(phase, phase_bytes);
    cuda_impl::compact(dev, cache, kept, counts, ws, status);
  }
}

/// \brief Waits for the device's stream and throws `kvcompress::Error` if the last `score` or
/// `compress` that used this workspace found a problem on the device (then it changed nothing).
/// \param workspace the device memory handed to that call
inline void check_status(cuda const& dev, void const* workspace) {
  cuda_impl::DeviceStatus st{};
  KVC_CUDA_CHECK(cudaMemcpyAsync(&st, cuda_impl::status_in(const_cast<void*>(workspace)), sizeof st,
                                 cudaMemcpyDeviceToHost, dev.stream));
  KVC_CUDA_CHECK(cudaStreamSynchronize(dev.stream));
  cuda_impl::throw_if_failed(st);
}

/// \brief Allocating convenience: takes the workspace from the stream-ordered pool, compresses,
/// then synchronises and throws on a device-side error. For tools and tests; an engine's hot path
/// uses the overload with its own workspace.
template <class Press, class T, class L>
void compress(cuda const& dev, Press const& press, Observation<T> const& obs, KVCacheView<T, L> const& cache) {
  std::size_t const bytes = compress_workspace_bytes(dev, press, obs, cache);
  void* scratch = nullptr;
  KVC_CUDA_CHECK(cudaMallocAsync(&scratch, bytes, dev.stream));
  struct Release {
    void* p;
    cudaStream_t s;
    ~Release() { (void)cudaFreeAsync(p, s); }
  } const release{scratch, dev.stream};
  compress(dev, press, obs, cache, Workspace(scratch, bytes));
  check_status(dev, scratch);
}

}  // namespace kvcompress
