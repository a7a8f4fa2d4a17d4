#pragma once
/// \file
/// \brief ComposedPress: presses applied one after the other to the same cache, each to what the
/// previous one kept. Every press receives the caller's observation unchanged (as in kvpress), so a
/// press that reads attention over the whole prompt cannot follow one that shortened the rows (it
/// is an Error: the attention no longer matches the row lengths). The ratios compose as
/// 1 − Π(1 − r_i).

#include <algorithm>
#include <cstddef>
#include <tuple>
#include <utility>

#include "kvcompress/press/scorer.hpp"

namespace kvcompress {

/// \tparam Presses any presses, scorer or wrapper, applied left to right
template <class... Presses>
struct ComposedPress {
  static_assert(sizeof...(Presses) > 0, "ComposedPress needs at least one press");

  std::tuple<Presses...> presses;

  explicit ComposedPress(Presses... p) : presses(std::move(p)...) {}

  /// The largest need of any one press: they run one at a time over the same scratch.
  template <class T, class L>
  [[nodiscard]] std::size_t compress_workspace_bytes(CpuDevice const& dev, Observation<T> const& obs,
                                                     KVCacheView<T, L> const& cache) const {
    return Workspace::bytes_for<std::byte>(largest_need(dev, obs, cache));
  }

  template <class T, class L>
  void compress(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, Workspace ws) const {
    std::size_t const bytes = largest_need(dev, obs, cache);
    std::byte* scratch = ws.take<std::byte>(bytes);
    std::apply([&](auto const&... p) { (kvcompress::compress(dev, p, obs, cache, Workspace(scratch, bytes)), ...); },
               presses);
  }

 private:
  template <class T, class L>
  [[nodiscard]] std::size_t largest_need(CpuDevice const& dev, Observation<T> const& obs,
                                         KVCacheView<T, L> const& cache) const {
    return std::apply(
        [&](auto const&... p) { return std::max({kvcompress::compress_workspace_bytes(dev, p, obs, cache)...}); },
        presses);
  }
};

template <class... Presses>
ComposedPress(Presses...) -> ComposedPress<Presses...>;

}  // namespace kvcompress
