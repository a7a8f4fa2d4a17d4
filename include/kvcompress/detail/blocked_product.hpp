#pragma once
/// \file
/// \brief Matrix products that never heap-allocate. Eigen's GEMM packs its operands into blocking
/// buffers of at most (rows × depth) and (depth × cols) scalars, on the stack up to
/// EIGEN_STACK_ALLOCATION_LIMIT (128 KiB) and with malloc beyond it, which `compress` must not do.
/// Tiles of the output whose rows (and columns) times the depth fill at most 64 KiB keep both
/// buffers on the stack for any depth up to 4096 (tiles of at least 8 rows).

#include <Eigen/Core>

#include <algorithm>

namespace kvcompress::detail {

/// Rows (and columns) of one tile of a product whose inner dimension is `depth`.
[[nodiscard]] inline Eigen::Index product_tile(Eigen::Index depth) noexcept {
  constexpr Eigen::Index kHalfStackFloats = 128 * 1024 / 2 / static_cast<Eigen::Index>(sizeof(float));
  return std::max<Eigen::Index>(8, kHalfStackFloats / std::max<Eigen::Index>(depth, 1));
}

/// out = a · b (or out += a · b when `accumulate`), tile by tile. `out` must not alias a or b.
template <bool accumulate, class Out, class A, class B>
void blocked_product(Out&& out, A const& a, B const& b) {
  Eigen::Index const tile = product_tile(a.cols());
  for (Eigen::Index i = 0; i < a.rows(); i += tile) {
    Eigen::Index const rows = std::min(tile, a.rows() - i);
    for (Eigen::Index j = 0; j < b.cols(); j += tile) {
      Eigen::Index const cols = std::min(tile, b.cols() - j);
      auto block = out.block(i, j, rows, cols);
      if constexpr (accumulate) block.noalias() += a.middleRows(i, rows) * b.middleCols(j, cols);
      else block.noalias() = a.middleRows(i, rows) * b.middleCols(j, cols);
    }
  }
}

}  // namespace kvcompress::detail
