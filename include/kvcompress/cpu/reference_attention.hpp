#pragma once
/// \file
/// \brief Reference attention on the CPU: softmax(q·kᵀ·scale)·v for every query head, over the live
/// entries of its (batch, kv head) row only. On a compressed cache this is exactly what kvpress's
/// head-wise masking means (a pruned entry gets attention weight 0), computed over a cache the pruned
/// entries really left. Generic over the layout (it reads through `cache.key`/`cache.value`), so it
/// serves as the reference for strided and paged caches alike. Written for clarity and tests, not
/// speed: one GEMM for the logits and one for the output per (batch, kv head) row.

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "kvcompress/cache/kv_cache_view.hpp"
#include "kvcompress/core/device.hpp"
#include "kvcompress/core/error.hpp"
#include "kvcompress/core/tensor.hpp"
#include "kvcompress/detail/gather.hpp"
#include "kvcompress/detail/parallel_for.hpp"
#include "kvcompress/detail/workspace.hpp"

namespace kvcompress {

/// \brief How `reference_attention` scales and masks.
struct AttentionOptions {
  float scale = 0.0f;               ///< logit scale; 0 means 1/√head_dim
  bool causal = false;              ///< hide keys whose original position lies after the query's
  std::int64_t query_position = 0;  ///< absolute position of query 0 of the chunk; query t sits at +t
};

namespace detail {

template <class T, class L>
void check_attention_inputs(Tensor4<T> const& queries, KVCacheView<T, L> const& cache, AttentionOptions const& opt) {
  auto const& e = cache.extents;
  validate_view(cache);
  KVC_CHECK(!queries.empty(), "queries must be given (post-RoPE, [batch, q_heads, q_len, head_dim])");
  validate_tensor(queries, "queries");
  auto const& s = queries.shape;
  KVC_CHECK(s[0] == e.batch, "queries batch = " << s[0] << " does not match the cache batch = " << e.batch);
  KVC_CHECK(s[1] > 0 && s[1] % e.kv_heads == 0,
            "queries heads = " << s[1] << " must be a multiple of the cache kv_heads = " << e.kv_heads);
  KVC_CHECK(s[3] == e.head_dim, "queries head_dim = " << s[3] << " does not match the cache head_dim = " << e.head_dim);
  KVC_CHECK(std::isfinite(opt.scale) && opt.scale >= 0.0f,
            "options.scale must be finite and non-negative (0 = 1/sqrt(head_dim)), got " << opt.scale);
  KVC_CHECK(opt.query_position >= 0, "options.query_position must be non-negative, got " << opt.query_position);
}

/// Floats per thread: keys and values [capacity, head_dim], the group's queries [G·q_len, head_dim]
/// and their logits [G·q_len, capacity].
/// Throws when that passes 2^56 (`size_product`).
inline std::int64_t attention_floats_per_thread(CacheExtents const& e, std::int64_t q_heads, std::int64_t q_len) {
  std::size_t const kv = size_product(2, e.capacity, e.head_dim);
  std::size_t const q = size_product(q_heads / e.kv_heads, q_len, e.head_dim + e.capacity);
  KVC_CHECK(kv <= kMaxScratchBytes - q, "scratch of " << kv << " + " << q << " floats per thread exceeds 2^56");
  return static_cast<std::int64_t>(kv + q);
}

}  // namespace detail

/// \brief Scratch bytes that `reference_attention` takes from its workspace.
template <class T, class L>
[[nodiscard]] std::size_t reference_attention_workspace_bytes(CpuDevice const& dev, Tensor4<T> const& queries,
                                                              KVCacheView<T, L> const& cache) {
  std::int64_t const threads = detail::thread_count(dev, cache.extents.batch * cache.extents.kv_heads);
  std::int64_t const per = detail::attention_floats_per_thread(cache.extents, queries.shape[1], queries.shape[2]);
  return Workspace::bytes_for<float>(detail::size_product(threads, per));
}

namespace detail {

/// The attention of `reference_attention`, with keys of `key_dim` channels read by
/// gather_k(b, h, n, out /*[n, key_dim]*/) and query channel c of row r taken from channel
/// query_channel(r, c) of the full-width queries.
template <class T, class L, class GatherK, class QueryChannel>
void attention_rows(CpuDevice const& dev, Tensor4<T> const& queries, KVCacheView<T, L> const& cache, float* out,
                    AttentionOptions const& options, Workspace& workspace, std::int64_t key_dim, GatherK&& gather_k,
                    QueryChannel&& query_channel) {
  using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  auto const& e = cache.extents;
  std::int64_t const heads = e.kv_heads, d = e.head_dim, cap = e.capacity, rows = e.batch * heads;
  std::int64_t const q_heads = queries.shape[1], q_len = queries.shape[2], group = q_heads / heads;
  std::int64_t const rows_q = group * q_len;
  std::int64_t const per = attention_floats_per_thread(e, q_heads, q_len);
  float* scratch = workspace.take<float>(static_cast<std::size_t>(thread_count(dev, rows) * per));  // [threads, per]
  float const scale = options.scale > 0.0f ? options.scale : 1.0f / std::sqrt(static_cast<float>(d));

  parallel_for(dev, rows, [&](std::int64_t r, int t) {
    std::int64_t const b = r / heads, h = r % heads, n = cache.lengths[r];
    float* kbuf = scratch + t * per;    // [n, key_dim]
    float* vbuf = kbuf + cap * d;       // [n, d]
    float* qbuf = vbuf + cap * d;       // [G·q_len, key_dim]
    float* lbuf = qbuf + rows_q * d;    // [G·q_len, n]
    Eigen::Map<RowMat> o(out + (b * q_heads + h * group) * q_len * d, rows_q, d);
    if (n == 0) {
      o.setZero();
      return;
    }
    gather_k(b, h, n, kbuf);
    gather_values(cache, b, h, 0, n, vbuf);
    for (std::int64_t j = 0; j < group; ++j)
      for (std::int64_t i = 0; i < q_len; ++i)
        for (std::int64_t c = 0; c < key_dim; ++c)
          qbuf[(j * q_len + i) * key_dim + c] = to_float(queries(b, h * group + j, i, query_channel(r, c)));
    Eigen::Map<RowMat> p(lbuf, rows_q, n);
    p.noalias() = Eigen::Map<RowMat const>(qbuf, rows_q, key_dim) * Eigen::Map<RowMat const>(kbuf, n, key_dim).transpose();
    for (std::int64_t i = 0; i < rows_q; ++i) {
      float* z = lbuf + i * n;
      std::int64_t const last = options.query_position + i % q_len;  // the query's own position
      float zmax = -INFINITY;
      for (std::int64_t s = 0; s < n; ++s) {
        bool const visible = !options.causal || cache.position(b, h, s) <= last;
        z[s] = visible ? z[s] * scale : -INFINITY;
        zmax = std::max(zmax, z[s]);
      }
      if (zmax == -INFINITY) {  // nothing visible: a zero output row, not 0/0
        std::fill(z, z + n, 0.0f);
        continue;
      }
      float sum = 0.0f;
      for (std::int64_t s = 0; s < n; ++s) sum += (z[s] = std::exp(z[s] - zmax));
      float const inv = 1.0f / sum;
      for (std::int64_t s = 0; s < n; ++s) z[s] *= inv;
    }
    o.noalias() = p * Eigen::Map<RowMat const>(vbuf, n, d);
  });
}

}  // namespace detail

/// \brief out[b, j, t] = Σ_s softmax_s(scale·q[b, j, t]·k[b, g, s]) v[b, g, s], with g = j / G
/// (GQA: G = q_heads / kv_heads consecutive query heads share a kv head), s over the live slots
/// [0, length(b, g)) of the row and, when `options.causal`, only those whose original position
/// (`cache.position`) is ≤ options.query_position + t. A query that sees no key gets zeros.
/// Arithmetic in float whatever the storage type.
/// \param queries post-RoPE queries [batch, q_heads, q_len, head_dim]
/// \param out     [batch, q_heads, q_len, head_dim], contiguous
template <class T, class L>
void reference_attention(CpuDevice const& dev, Tensor4<T> const& queries, KVCacheView<T, L> const& cache, float* out,
                         AttentionOptions const& options, Workspace workspace) {
  detail::check_attention_inputs(queries, cache, options);
  KVC_CHECK(out != nullptr, "out must not be null");
  detail::attention_rows(
      dev, queries, cache, out, options, workspace, cache.extents.head_dim,
      [&](std::int64_t b, std::int64_t h, std::int64_t n, float* k) { detail::gather_keys(cache, b, h, 0, n, k); },
      [](std::int64_t, std::int64_t c) { return c; });
}

/// \brief `reference_attention` over keys whose channels were pruned (ThinK): the logits read the
/// packed keys `keys` ([batch, kv_heads, capacity, kept]) against the queries' channels
/// `keys.channels` of each row; the scale stays 1/√head_dim. The cache supplies values, lengths and
/// positions (its key memory is not read).
/// \param out [batch, q_heads, q_len, head_dim], contiguous
template <class T, class L, class K>
void reference_attention_packed(CpuDevice const& dev, Tensor4<T> const& queries, KVCacheView<T, L> const& cache,
                                K const& keys, float* out, AttentionOptions const& options, Workspace workspace) {
  detail::check_attention_inputs(queries, cache, options);
  KVC_CHECK(out != nullptr, "out must not be null");
  auto const& e = cache.extents;
  KVC_CHECK(keys.data != nullptr && keys.channels != nullptr, "packed keys data and channels must not be null");
  KVC_CHECK(keys.kept > 0 && keys.kept <= e.head_dim, "packed keys keep " << keys.kept << " channels, must be in [1, head_dim = "
                                                                           << e.head_dim << "]");
  for (std::int64_t i = 0; i < e.batch * e.kv_heads * keys.kept; ++i)
    KVC_CHECK(keys.channels[i] >= 0 && keys.channels[i] < e.head_dim,
              "packed keys channels[" << i << "] = " << keys.channels[i] << " is outside [0, head_dim = " << e.head_dim << ")");
  std::int64_t const kept = keys.kept;
  detail::attention_rows(
      dev, queries, cache, out, options, workspace, kept,
      [&](std::int64_t b, std::int64_t h, std::int64_t n, float* k) {
        auto const* src = keys.data + (b * e.kv_heads + h) * e.capacity * kept;  // [capacity, kept]
        for (std::int64_t i = 0; i < n * kept; ++i) k[i] = to_float(src[i]);
      },
      [&](std::int64_t r, std::int64_t c) { return std::int64_t{keys.channels[r * kept + c]}; });
}

/// \brief Allocating convenience: returns out [batch, q_heads, q_len, head_dim].
template <class T, class L>
[[nodiscard]] std::vector<float> reference_attention(CpuDevice const& dev, Tensor4<T> const& queries,
                                                     KVCacheView<T, L> const& cache, AttentionOptions const& options = {}) {
  detail::check_attention_inputs(queries, cache, options);
  std::vector<float> out(static_cast<std::size_t>(queries.shape[0] * queries.shape[1] * queries.shape[2] * queries.shape[3]));
  std::vector<std::byte> scratch(reference_attention_workspace_bytes(dev, queries, cache));
  reference_attention(dev, queries, cache, out.data(), options, Workspace(scratch.data(), scratch.size()));
  return out;
}

}  // namespace kvcompress
