#pragma once
/// \file
/// \brief `AnyPress`: one type for every press the binding exposes, so that a Python wrapper
/// (AdaKV, ChunkKV, ...) can hold any inner press. The library's presses are templates over their
/// inner press; the binding instantiates each wrapper once, over `ErasedScorer`, which forwards the
/// scorer protocol to whatever press it holds (on the cache's layouts and on the row-offset
/// windows of them that ChunkPress scores). Every operation is the library's own call on the
/// concrete press type; this file only routes to it.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "cuda_path.hpp"
#include "kvcompress/detail/tail_view.hpp"
#include "kvcompress/kvcompress.hpp"

namespace kvcompress::python {

/// The (storage type, layout) pairs a Python cache can have.
template <class T, class L>
struct PressOps {
  using Obs = Observation<T>;
  using View = KVCacheView<T, L>;
  std::function<std::size_t(CpuDevice const&, Obs const&, View const&)> compress_bytes;
  std::function<void(CpuDevice const&, Obs const&, View const&, Workspace)> compress;
  // Presses with a score of their own (empty otherwise; FINCH has one beside its own compress).
  // `ratio` replaces the press's own compression ratio, as `with_compression_ratio` does when a
  // wrapper sets its inner press's ratio.
  std::function<std::size_t(CpuDevice const&, Obs const&, View const&, double)> score_bytes;
  std::function<void(CpuDevice const&, Obs const&, View const&, float*, Workspace&, double)> score;
  // Scorer presses only (score, select, compact: what a wrapper can hold).
  std::function<void(CpuDevice const&, Obs const&, View const&, float const*, std::int32_t*, Workspace&, double)>
      kept_counts;
  std::function<std::int64_t(std::int64_t, Obs const&, double)> kept_count;
  // Scorer presses only: the score of a window of every row, seen as a cache of its own through a
  // row-offset layout (ChunkPress scores each chunk so).
  using Window = KVCacheView<T, kvcompress::detail::RowOffsetLayout<L>>;
  std::function<std::size_t(CpuDevice const&, Obs const&, Window const&, double)> window_score_bytes;
  std::function<void(CpuDevice const&, Obs const&, Window const&, float*, Workspace&, double)> window_score;
};

using AllOps = std::tuple<PressOps<float, StridedLayout>, PressOps<half, StridedLayout>,
                          PressOps<bfloat16, StridedLayout>, PressOps<float, PagedLayout>,
                          PressOps<half, PagedLayout>, PressOps<bfloat16, PagedLayout>>;

namespace detail_py {

template <class P, class T, class L, class = void>
struct has_score : std::false_type {};
template <class P, class T, class L>
struct has_score<P, T, L,
                 std::void_t<decltype(std::declval<P const&>().score(
                     std::declval<CpuDevice const&>(), std::declval<Observation<T> const&>(),
                     std::declval<KVCacheView<T, L> const&>(), std::declval<float*>(), std::declval<Workspace&>()))>>
    : std::true_type {};
template <class P, class T, class L>
constexpr bool is_scorer_v = has_score<P, T, L>::value && !kvcompress::detail::has_compress_member<P, T, L>::value;

template <class P, class T, class L>
PressOps<T, L> make_ops(std::shared_ptr<P const> const& p, std::function<void(CacheExtents const&)> const& check) {
  PressOps<T, L> ops;
  using Obs = Observation<T>;
  using View = KVCacheView<T, L>;
  // Runs the borrowed arrays' check before anything reads them (a no-op for most presses).
  auto const pre = [check](CacheExtents const& e) {
    if (check) check(e);
  };
  ops.compress_bytes = [p, pre](CpuDevice const& dev, Obs const& obs, View const& cache) {
    pre(cache.extents);
    return compress_workspace_bytes(dev, *p, obs, cache);
  };
  ops.compress = [p, pre](CpuDevice const& dev, Obs const& obs, View const& cache, Workspace ws) {
    pre(cache.extents);
    kvcompress::compress(dev, *p, obs, cache, ws);
  };
  if constexpr (has_score<P, T, L>::value) {
    ops.score_bytes = [p, pre](CpuDevice const& dev, Obs const& obs, View const& cache, double ratio) {
      pre(cache.extents);
      return with_compression_ratio(*p, ratio).workspace_bytes(dev, obs, cache);
    };
    ops.score = [p, pre](CpuDevice const& dev, Obs const& obs, View const& cache, float* scores, Workspace& ws,
                         double ratio) {
      pre(cache.extents);
      kvcompress::score(dev, with_compression_ratio(*p, ratio), obs, cache, scores, ws);
    };
  }
  if constexpr (is_scorer_v<P, T, L>) {
    ops.kept_counts = [p, pre](CpuDevice const& dev, Obs const& obs, View const& cache, float const* scores,
                               std::int32_t* counts, Workspace& ws, double ratio) {
      pre(cache.extents);
      kvcompress::detail::row_kept_counts(dev, with_compression_ratio(*p, ratio), obs, cache, scores, counts, ws);
    };
    using Window = typename PressOps<T, L>::Window;
    ops.window_score_bytes = [p, pre](CpuDevice const& dev, Obs const& obs, Window const& cache, double ratio) {
      pre(cache.extents);
      return with_compression_ratio(*p, ratio).workspace_bytes(dev, obs, cache);
    };
    ops.window_score = [p, pre](CpuDevice const& dev, Obs const& obs, Window const& cache, float* scores,
                                Workspace& ws, double ratio) {
      pre(cache.extents);
      kvcompress::score(dev, with_compression_ratio(*p, ratio), obs, cache, scores, ws);
    };
    ops.kept_count = [p](std::int64_t n, Obs const& obs, double ratio) {
      return kvcompress::detail::press_kept_count(with_compression_ratio(*p, ratio), n, obs);
    };
  }
  return ops;
}

/// The press's compression ratio, or 0 for a press without one (SimLayerKV decides per layer).
template <class P>
double ratio_of(P const& press) {
  if constexpr (kvcompress::detail::has_ratio_member<P>::value || kvcompress::detail::has_inner_press<P>::value)
    return compression_ratio_of(press);
  else
    return 0.0;
}

}  // namespace detail_py

/// \brief Arrays a press reads through raw pointers (LeverageScore's sketch, QFilter's filters):
/// held alive as long as the press, and checked against each call's cache before the press reads
/// them (the press knows only a pointer, not the array's shape).
struct Borrowed {
  std::shared_ptr<void const> owner;
  std::function<void(CacheExtents const&)> check;
};

/// \brief A press of any kind, with its name (for messages), whether it is a scorer, and the
/// press the CUDA device runs for it (null for a press without CUDA kernels).
class AnyPress {
 public:
  template <class P>
  AnyPress(P press, std::string name, Borrowed borrowed = {}, std::shared_ptr<CudaPress const> cuda = nullptr)
      : name_(std::move(name)), ratio_(detail_py::ratio_of(press)), owner_(std::move(borrowed.owner)),
        cuda_(std::move(cuda)) {
    auto const p = std::make_shared<P const>(std::move(press));
    auto const& c = borrowed.check;
    ops_ = AllOps{detail_py::make_ops<P, float, StridedLayout>(p, c),    detail_py::make_ops<P, half, StridedLayout>(p, c),
                  detail_py::make_ops<P, bfloat16, StridedLayout>(p, c), detail_py::make_ops<P, float, PagedLayout>(p, c),
                  detail_py::make_ops<P, half, PagedLayout>(p, c),       detail_py::make_ops<P, bfloat16, PagedLayout>(p, c)};
    scorer_ = static_cast<bool>(std::get<0>(ops_).kept_count);
    has_score_ = static_cast<bool>(std::get<0>(ops_).score);
  }

  template <class T, class L>
  [[nodiscard]] PressOps<T, L> const& ops() const noexcept {
    return std::get<PressOps<T, L>>(ops_);
  }
  [[nodiscard]] std::string const& name() const noexcept { return name_; }
  [[nodiscard]] bool scorer() const noexcept { return scorer_; }
  /// Whether `score` works: every scorer, and FINCH (a score beside its own compress).
  [[nodiscard]] bool has_score() const noexcept { return has_score_; }
  [[nodiscard]] double compression_ratio() const noexcept { return ratio_; }
  /// The press on the CUDA device, or null when it has no CUDA kernels.
  [[nodiscard]] std::shared_ptr<CudaPress const> const& cuda() const noexcept { return cuda_; }

 private:
  AllOps ops_;
  std::string name_;
  double ratio_ = 0.0;
  std::shared_ptr<void const> owner_;
  std::shared_ptr<CudaPress const> cuda_;
  bool scorer_ = false;
  bool has_score_ = false;
};

/// \brief A scorer press behind `AnyPress`, in the library's scorer protocol: the inner press of
/// every wrapper the binding instantiates. `compression_ratio` is a member, so the wrappers' ratio
/// proxying (`compression_ratio_of`, `with_compression_ratio`) works through it.
struct ErasedScorer {
  std::shared_ptr<AnyPress const> any;
  double compression_ratio = 0.0;

  template <class T, class L>
  [[nodiscard]] std::size_t workspace_bytes(CpuDevice const& dev, Observation<T> const& obs,
                                            KVCacheView<T, L> const& cache) const {
    return any->ops<T, L>().score_bytes(dev, obs, cache, compression_ratio);
  }
  template <class T, class L>
  void score(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, float* scores,
             Workspace& ws) const {
    any->ops<T, L>().score(dev, obs, cache, scores, ws, compression_ratio);
  }
  /// A window of every row (ChunkPress's chunks), through the row-offset layout over L.
  template <class T, class L>
  [[nodiscard]] std::size_t workspace_bytes(CpuDevice const& dev, Observation<T> const& obs,
                                            KVCacheView<T, kvcompress::detail::RowOffsetLayout<L>> const& cache) const {
    return any->ops<T, L>().window_score_bytes(dev, obs, cache, compression_ratio);
  }
  template <class T, class L>
  void score(CpuDevice const& dev, Observation<T> const& obs,
             KVCacheView<T, kvcompress::detail::RowOffsetLayout<L>> const& cache, float* scores, Workspace& ws) const {
    any->ops<T, L>().window_score(dev, obs, cache, scores, ws, compression_ratio);
  }
  /// The inner press's row budget (PyramidKV's layer budget included).
  template <class T>
  [[nodiscard]] std::int64_t kept_count(std::int64_t n, Observation<T> const& obs) const {
    return any->ops<T, StridedLayout>().kept_count(n, obs, compression_ratio);
  }
  /// The inner press's per-row budgets (AdaKV's, when AdaKV is wrapped again).
  template <class T, class L>
  void kept_counts(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache,
                   float const* scores, std::int32_t* counts, Workspace& ws) const {
    any->ops<T, L>().kept_counts(dev, obs, cache, scores, counts, ws, compression_ratio);
  }
};

/// \brief Any press behind `AnyPress`, in the library's protocol of a press with its own compress:
/// the members of `ComposedPress`, which may be wrappers.
struct ErasedPress {
  std::shared_ptr<AnyPress const> any;

  template <class T, class L>
  [[nodiscard]] std::size_t compress_workspace_bytes(CpuDevice const& dev, Observation<T> const& obs,
                                                     KVCacheView<T, L> const& cache) const {
    return any->ops<T, L>().compress_bytes(dev, obs, cache);
  }
  template <class T, class L>
  void compress(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, Workspace ws) const {
    any->ops<T, L>().compress(dev, obs, cache, ws);
  }
};

/// The inner press of a wrapper: throws unless `inner` is a scorer press (`wrapper` names the wrapper).
inline ErasedScorer erase_scorer(std::shared_ptr<AnyPress const> inner, char const* wrapper) {
  KVC_CHECK(inner != nullptr, wrapper << ": press must not be None");
  KVC_CHECK(inner->scorer(), wrapper << " wraps a scorer press (one score per entry); got " << inner->name());
  double const r = inner->compression_ratio();
  return ErasedScorer{std::move(inner), r};
}

}  // namespace kvcompress::python
