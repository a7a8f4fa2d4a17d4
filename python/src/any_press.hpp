#pragma once
/// \file
/// \brief `AnyPress`: one type for every press the binding exposes, so that a Python wrapper
/// (AdaKV, ChunkKV, ...) can hold any inner press. The library's presses are templates over their
/// inner press; the binding instantiates each wrapper once, over `ErasedScorer`, which forwards the
/// scorer protocol to whatever press it holds. Every operation is the library's own call on the
/// concrete press type; this file only routes to it.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "kvcompress/kvcompress.hpp"

namespace kvcompress::python {

/// The (storage type, layout) pairs a Python cache can have.
template <class T, class L>
struct PressOps {
  using Obs = Observation<T>;
  using View = KVCacheView<T, L>;
  std::function<std::size_t(CpuDevice const&, Obs const&, View const&)> compress_bytes;
  std::function<void(CpuDevice const&, Obs const&, View const&, Workspace)> compress;
  // Scorer presses only (empty otherwise). `ratio` replaces the press's own compression ratio, as
  // `with_compression_ratio` does when a wrapper sets its inner press's ratio.
  std::function<std::size_t(CpuDevice const&, Obs const&, View const&, double)> score_bytes;
  std::function<void(CpuDevice const&, Obs const&, View const&, float*, Workspace&, double)> score;
  std::function<void(CpuDevice const&, Obs const&, View const&, float const*, std::int32_t*, Workspace&, double)>
      kept_counts;
  std::function<std::int64_t(std::int64_t, Obs const&, double)> kept_count;
};

using AllOps = std::tuple<PressOps<float, StridedLayout>, PressOps<half, StridedLayout>,
                          PressOps<bfloat16, StridedLayout>, PressOps<float, PagedLayout>,
                          PressOps<half, PagedLayout>, PressOps<bfloat16, PagedLayout>>;

namespace detail_py {

template <class P, class T, class L, class = void>
struct is_scorer : std::false_type {};
template <class P, class T, class L>
struct is_scorer<P, T, L,
                 std::void_t<decltype(std::declval<P const&>().score(
                     std::declval<CpuDevice const&>(), std::declval<Observation<T> const&>(),
                     std::declval<KVCacheView<T, L> const&>(), std::declval<float*>(), std::declval<Workspace&>()))>>
    : std::bool_constant<!kvcompress::detail::has_compress_member<P, T, L>::value> {};

template <class P, class T, class L>
PressOps<T, L> make_ops(std::shared_ptr<P const> const& p) {
  PressOps<T, L> ops;
  using Obs = Observation<T>;
  using View = KVCacheView<T, L>;
  ops.compress_bytes = [p](CpuDevice const& dev, Obs const& obs, View const& cache) {
    return compress_workspace_bytes(dev, *p, obs, cache);
  };
  ops.compress = [p](CpuDevice const& dev, Obs const& obs, View const& cache, Workspace ws) {
    kvcompress::compress(dev, *p, obs, cache, ws);
  };
  if constexpr (is_scorer<P, T, L>::value) {
    ops.score_bytes = [p](CpuDevice const& dev, Obs const& obs, View const& cache, double ratio) {
      return with_compression_ratio(*p, ratio).workspace_bytes(dev, obs, cache);
    };
    ops.score = [p](CpuDevice const& dev, Obs const& obs, View const& cache, float* scores, Workspace& ws,
                    double ratio) { kvcompress::score(dev, with_compression_ratio(*p, ratio), obs, cache, scores, ws); };
    ops.kept_counts = [p](CpuDevice const& dev, Obs const& obs, View const& cache, float const* scores,
                          std::int32_t* counts, Workspace& ws, double ratio) {
      kvcompress::detail::row_kept_counts(dev, with_compression_ratio(*p, ratio), obs, cache, scores, counts, ws);
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

/// \brief A press of any kind, with its name (for messages) and whether it is a scorer.
class AnyPress {
 public:
  template <class P>
  AnyPress(P press, std::string name) : name_(std::move(name)), ratio_(detail_py::ratio_of(press)) {
    auto const p = std::make_shared<P const>(std::move(press));
    ops_ = AllOps{detail_py::make_ops<P, float, StridedLayout>(p),    detail_py::make_ops<P, half, StridedLayout>(p),
                  detail_py::make_ops<P, bfloat16, StridedLayout>(p), detail_py::make_ops<P, float, PagedLayout>(p),
                  detail_py::make_ops<P, half, PagedLayout>(p),       detail_py::make_ops<P, bfloat16, PagedLayout>(p)};
    scorer_ = static_cast<bool>(std::get<0>(ops_).score);
  }

  template <class T, class L>
  [[nodiscard]] PressOps<T, L> const& ops() const noexcept {
    return std::get<PressOps<T, L>>(ops_);
  }
  [[nodiscard]] std::string const& name() const noexcept { return name_; }
  [[nodiscard]] bool scorer() const noexcept { return scorer_; }
  [[nodiscard]] double compression_ratio() const noexcept { return ratio_; }

 private:
  AllOps ops_;
  std::string name_;
  double ratio_ = 0.0;
  bool scorer_ = false;
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

/// The inner press of a wrapper: throws unless `inner` is a scorer press (`wrapper` names the wrapper).
inline ErasedScorer erase_scorer(std::shared_ptr<AnyPress const> inner, char const* wrapper) {
  KVC_CHECK(inner != nullptr, wrapper << ": press must not be None");
  KVC_CHECK(inner->scorer(), wrapper << " wraps a scorer press (one score per entry); got " << inner->name());
  double const r = inner->compression_ratio();
  return ErasedScorer{std::move(inner), r};
}

}  // namespace kvcompress::python
