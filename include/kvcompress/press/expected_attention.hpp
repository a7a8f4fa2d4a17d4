#pragma once
/// \file
/// \brief Expected Attention (arXiv 2510.00636). Future queries are modelled as a Gaussian
/// N(μ, Σ) in pre-RoPE space, rotated by the average RoPE matrix R̄ of the next T positions; each
/// key is scored by the attention such queries are expected to pay it:
///   z_{j,i} = μ̃_jᵀk_i/√d + k_iᵀΣ̃_jk_i/(2d)   (log E[exp(qᵀk/√d)] for q ~ N(μ̃, Σ̃))
///   p_j = softmax_i(z_j) over the non-sink keys; e = mean over the G query heads of the group;
///   score = (e + ε)·‖v‖ (use_vnorm); the n_sink first entries get global max + 1.
///
/// `ExpectedAttentionPress` estimates μ, Σ from the chunk's pre-RoPE queries (minus its first
/// n_sink tokens; population covariance). `ExpectedAttentionStatsPress` takes per-layer statistics
/// computed offline (`Observation::stats`). The future window starts at the absolute position after
/// the chunk, `observation.position + chunk length` (the prefill length in a prefill).

#include <Eigen/Core>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "kvcompress/detail/bf16_dot.hpp"
#include "kvcompress/detail/blocked_product.hpp"
#include "kvcompress/detail/gather.hpp"
#include "kvcompress/detail/row_kernels.hpp"
#include "kvcompress/press/scorer.hpp"
#include "kvcompress/rope/rotary_embedding.hpp"

namespace kvcompress {

namespace detail {

/// Parameters shared by both Expected Attention presses.
struct ExpectedAttentionParams {
  std::int64_t n_future_positions;
  std::int64_t n_sink;
  bool use_covariance;
  bool use_vnorm;
  float epsilon;
};

/// Key rows processed per GEMM: the chunk of keys and its products stay in L2.
inline constexpr std::int64_t kEaKeyChunk = 128;

/// Whether the covariance term of a cache of T runs on the AVX512_BF16 kernel (detail/bf16_dot.hpp):
/// a bfloat16 cache, a CPU that has it, and a head_dim the kernel takes.
template <class T>
bool ea_bf16_kernel(CpuDevice const& dev, std::int64_t head_dim, bool cov) {
  return std::is_same_v<T, bfloat16> && cov && use_bf16_dot(dev, cpu_has_avx512_bf16(), head_dim);
}

/// Scratch bytes that `expected_attention_scores` takes (must mirror its `take` calls; the bf16
/// kernel's are reserved for every bfloat16 cache, whichever path runs).
template <class T, class L>
std::size_t ea_scoring_bytes(CpuDevice const& dev, KVCacheView<T, L> const& cache, std::int64_t q_heads, bool cov) {
  std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads, d = cache.extents.head_dim;
  std::int64_t const threads = thread_count(dev, rows);
  std::int64_t const group = std::max<std::int64_t>(1, q_heads / cache.extents.kv_heads);
  auto const f = [](auto... n) { return Workspace::bytes_for<float>(size_product(n...)); };
  auto const u16 = [](auto... n) { return Workspace::bytes_for<std::uint16_t>(size_product(n...)); };
  bool const bf16 = std::is_same_v<T, bfloat16> && cov;
  return sum_bytes(f(threads, kEaKeyChunk, d), f(threads, kEaKeyChunk, cov ? d : group),
                    f(threads, group, cache.extents.capacity), f(rows),
                    bf16 ? u16(cache.extents.batch, q_heads, d, d) : 0, bf16 ? u16(threads, kEaKeyChunk, d) : 0);
}

/// The queries ExpectedAttentionPress estimates its statistics from, against the cache's extents
/// (shared with the CUDA device).
template <class T>
void check_expected_attention_queries(Observation<T> const& obs, CacheExtents const& e, std::int64_t n_sink) {
  Tensor4<T> const& q = obs.queries;
  KVC_CHECK(!q.empty(), "observation.queries must be given (pre-RoPE queries of the chunk, "
                        "[batch, q_heads, q_len, head_dim]); use ExpectedAttentionStatsPress for "
                        "precomputed statistics");
  KVC_CHECK(obs.ragged() || q.shape[0] == e.batch, "observation.queries batch = "
                                                       << q.shape[0] << " does not match the cache batch = " << e.batch);
  KVC_CHECK(q.shape[3] == e.head_dim, "observation.queries head_dim = " << q.shape[3]
                                                                        << " does not match the cache head_dim = "
                                                                        << e.head_dim);
  if (!obs.ragged()) {
    KVC_CHECK(q.shape[2] > n_sink, "observation.queries q_len = " << q.shape[2] << " must exceed n_sink = " << n_sink
                                                                  << " (the first n_sink queries are dropped)");
    return;
  }
  for (std::int64_t b = 0; b < e.batch; ++b)
    KVC_CHECK(obs.chunk_tokens(b) > n_sink, "observation.queries of sequence " << b << " hold " << obs.chunk_tokens(b)
                                                                              << " tokens, which must exceed n_sink = "
                                                                              << n_sink << " (the first n_sink are dropped)");
}

/// The checks that read no cache memory (shared with the CUDA device, which checks lengths on the device).
template <class T, class L>
void check_expected_attention_shapes(ExpectedAttentionParams const& p, Observation<T> const& obs,
                                     KVCacheView<T, L> const& cache, std::int64_t q_heads) {
  KVC_CHECK(p.n_sink >= 0, "n_sink must be non-negative, got " << p.n_sink);
  KVC_CHECK(p.n_future_positions > 0 && p.n_future_positions < RotaryEmbedding::kMaxPosition,
            "n_future_positions must be in [1, 2^31) (positions are int32), got " << p.n_future_positions);
  KVC_CHECK(std::isfinite(p.epsilon), "epsilon must be finite, got " << p.epsilon);
  KVC_CHECK(obs.rope != nullptr, "observation.rope must be set (Expected Attention rotates the query "
                                 "statistics to the future positions)");
  KVC_CHECK(obs.rope->head_dim() == cache.extents.head_dim,
            "observation.rope head_dim = " << obs.rope->head_dim() << " does not match the cache head_dim = "
                                           << cache.extents.head_dim);
  KVC_CHECK(q_heads > 0 && q_heads % cache.extents.kv_heads == 0,
            "query heads = " << q_heads << " must be a positive multiple of kv_heads = " << cache.extents.kv_heads);
}

template <class T, class L>
void check_expected_attention_common(ExpectedAttentionParams const& p, Observation<T> const& obs,
                                     KVCacheView<T, L> const& cache, std::int64_t q_heads) {
  check_expected_attention_shapes(p, obs, cache, q_heads);
  std::int64_t const rows = cache.extents.batch * cache.extents.kv_heads;
  for (std::int64_t r = 0; r < rows; ++r)
    KVC_CHECK(cache.lengths[r] > p.n_sink, "cache length n = " << cache.lengths[r] << " of row (batch "
                                                               << r / cache.extents.kv_heads << ", kv head "
                                                               << r % cache.extents.kv_heads
                                                               << ") must exceed n_sink = " << p.n_sink);
}

/// Rotates the per-head statistics in place: μ ← R̄μ/√d and Σ ← R̄ΣR̄ᵀ/(2d), folding the constant
/// factors of the logit so that the key loop is two products and a row-dot.
inline void rotate_and_scale_stats(float const* cbar, float const* sbar, std::int64_t d, float* mu,
                                   float* cov, float* tmp /*[d*d]*/) {
  float const inv_sqrt_d = 1.0f / std::sqrt(static_cast<float>(d));
  float const inv_2d = 0.5f / static_cast<float>(d);
  apply_averaged_rotation(cbar, sbar, static_cast<int>(d), mu, tmp);
  for (std::int64_t c = 0; c < d; ++c) mu[c] = tmp[c] * inv_sqrt_d;
  if (cov) {
    rotate_covariance(cbar, sbar, static_cast<int>(d), cov, tmp);
    for (std::int64_t c = 0; c < d * d; ++c) cov[c] = tmp[c] * inv_2d;
  }
}

/// Scores every live entry, given rotated, scaled statistics mu [stat_batch, H, d] and
/// cov [stat_batch, H, d, d] (null without covariance).
template <class T, class L>
void expected_attention_scores(CpuDevice const& dev, ExpectedAttentionParams const& p,
                               KVCacheView<T, L> const& cache, std::int64_t q_heads, std::int64_t stat_batch,
                               float const* mu, float const* cov, float* scores, Workspace& ws) {
  using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using ColMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;
  std::int64_t const heads = cache.extents.kv_heads, d = cache.extents.head_dim, cap = cache.extents.capacity;
  std::int64_t const group = q_heads / heads, rows = cache.extents.batch * heads;
  int const threads = thread_count(dev, rows);
  std::int64_t const prod_cols = cov ? d : group;  // one head's K·Σ̃_j (the sizes follow ea_scoring_bytes)
  float* key_buf = ws.take<float>(static_cast<std::size_t>(threads * kEaKeyChunk * d));
  float* prod_buf = ws.take<float>(static_cast<std::size_t>(threads * kEaKeyChunk * prod_cols));
  float* logit_buf = ws.take<float>(static_cast<std::size_t>(threads * group * cap));
  float* row_max = ws.take<float>(static_cast<std::size_t>(rows));
  // The bf16 kernel's operands: every head's Σ̃ rounded to bf16 once, and per thread a chunk of keys' bits.
  bool const bf16 = std::is_same_v<T, bfloat16> && cov;
  [[maybe_unused]] std::uint16_t* sigma_bf16 =
      bf16 ? ws.take<std::uint16_t>(static_cast<std::size_t>(stat_batch * q_heads * d * d)) : nullptr;
  [[maybe_unused]] std::uint16_t* key_bits =
      bf16 ? ws.take<std::uint16_t>(static_cast<std::size_t>(threads * kEaKeyChunk * d)) : nullptr;
  bool const fast = ea_bf16_kernel<T>(dev, d, cov != nullptr);
  RowIsa const isa = row_isa(dev, d);
  if (fast)
    parallel_for(dev, stat_batch * q_heads, [&](std::int64_t j, int) {
      pack_bf16_pairs(cov + j * d * d, d, sigma_bf16 + j * d * d);  // [d/2, d, 2]
    });

  parallel_for(dev, rows, [&](std::int64_t r, int t) {
    std::int64_t const b = r / heads, h = r % heads, n = cache.lengths[r], s = p.n_sink, m = n - s;
    std::int64_t const sb = stat_batch == 1 ? 0 : b;
    float const* mu_g = mu + (sb * q_heads + h * group) * d;  // [group, d]
    float const* cov_g = cov ? cov + (sb * q_heads + h * group) * d * d : nullptr;  // [group, d, d]
    float* kbuf = key_buf + t * kEaKeyChunk * d;
    float* pbuf = prod_buf + t * kEaKeyChunk * prod_cols;
    float* logits = logit_buf + t * group * cap;  // [group, m]
    // [μ̃_1 … μ̃_G] as d × G; each Σ̃_j is symmetric, so its row-major memory read column-major is Σ̃_j.
    Eigen::Map<ColMat const> mu_mat(mu_g, d, group);
    for (std::int64_t i0 = 0; i0 < m; i0 += kEaKeyChunk) {
      std::int64_t const c = std::min(kEaKeyChunk, m - i0);
#if KVC_BF16_DOT_KERNEL
      if constexpr (std::is_same_v<T, bfloat16>) {
        if (fast) {
          std::uint16_t* bits = key_bits + t * kEaKeyChunk * d;  // [c, d]
          gather_key_bits(cache, b, h, s + i0, c, bits);
          std::uint16_t const* sigma_g = sigma_bf16 + (sb * q_heads + h * group) * d * d;  // [group, d/2, d, 2]
          for (std::int64_t j = 0; j < group; ++j)
            bf16_quadratic_forms(bits, c, d, sigma_g + j * d * d, mu_g + j * d, logits + j * m + i0);
          continue;
        }
      }
#endif
      if (!cov_g) {
        // Mean only: G dot products per key, each key read once where it lies (a GEMM of G
        // columns would first copy the chunk); other layouts gather the chunk and run the same kernel.
        if (unit_dim_stride(cache.key_layout)) {
          for_key_runs(cache, b, h, s + i0, c, [&](T const* keys, std::int64_t count, std::int64_t stride, std::int64_t k0) {
            key_dots(isa, keys, count, stride, d, mu_g, group, logits + i0 + k0, m);
          });
        } else {
          gather_keys(cache, b, h, s + i0, c, kbuf);
          key_dots(isa, static_cast<float const*>(kbuf), c, d, d, mu_g, group, logits + i0, m);
        }
        continue;
      }
      gather_keys(cache, b, h, s + i0, c, kbuf);
      Eigen::Map<RowMat const> kc(kbuf, c, d);
      // One head at a time: pbuf holds one c × d product.
      for (std::int64_t j = 0; j < group; ++j) {
        Eigen::Map<ColMat const> cov_j(cov_g + j * d * d, d, d);
        Eigen::Map<RowMat> y(pbuf, c, d);
        blocked_product<false>(y, kc, cov_j);
        for (std::int64_t i = 0; i < c; ++i) logits[j * m + i0 + i] = y.row(i).dot(kc.row(i));
      }
      for (std::int64_t j = 0; j < group; ++j)
        for (std::int64_t i = 0; i < c; ++i) logits[j * m + i0 + i] += kc.row(i).dot(mu_mat.col(j));
    }
    // Softmax over the m non-sink keys per query head, then the group mean.
    float* out = scores + r * cap + s;
    std::fill(out, out + m, 0.0f);
    // Eigen's array exp is vectorised: scalar std::exp over G·m logits cost as much as a tenth of
    // reading the keys.
    for (std::int64_t j = 0; j < group && m > 0; ++j) {
      Eigen::Map<Eigen::ArrayXf> z(logits + j * m, m);
      z = (z - z.maxCoeff()).exp();
      float const w = 1.0f / (z.sum() * static_cast<float>(group));
      Eigen::Map<Eigen::ArrayXf>(out, m) += z * w;
    }
    if (p.use_vnorm) {
      // ‖v‖ from each value read once where it lies (other layouts: gathered in chunks, the same
      // kernel); the squared norms go through the logits' slots.
      float* ss = logits;  // [m]
      if (unit_dim_stride(cache.value_layout)) {
        for_value_runs(cache, b, h, s, m, [&](T const* values, std::int64_t count, std::int64_t stride, std::int64_t k0) {
          key_sq_norms(isa, values, count, stride, d, ss + k0);
        });
      } else {
        for (std::int64_t i0 = 0; i0 < m; i0 += kEaKeyChunk) {
          std::int64_t const c = std::min(kEaKeyChunk, m - i0);
          gather_values(cache, b, h, s + i0, c, kbuf);
          key_sq_norms(isa, static_cast<float const*>(kbuf), c, d, d, ss + i0);
        }
      }
      for (std::int64_t i = 0; i < m; ++i) out[i] = (out[i] + p.epsilon) * std::sqrt(ss[i]);
    }
    row_max[r] = *std::max_element(out, out + m);
  });
  // Sinks: kvpress pads them with the global maximum (over batch and heads) + 1.
  float const protect = *std::max_element(row_max, row_max + rows) + 1.0f;
  for (std::int64_t r = 0; r < rows; ++r) std::fill(scores + r * cap, scores + r * cap + p.n_sink, protect);
}

/// Future window of the averaged rotation of batch element b: [start, start + T), start = the
/// position after its chunk (the same for every b unless the batch is ragged).
template <class T>
std::int64_t future_start(Observation<T> const& obs, std::int64_t b, std::int64_t n_future) {
  std::int64_t const q = obs.chunk_tokens(b), p = obs.sequence_position(b);
  KVC_CHECK(q > 0, "observation.chunk_length (or queries) must give the chunk length, got " << q);
  KVC_CHECK(p >= 0, "observation.position must be non-negative, got " << p);
  KVC_CHECK(p <= std::numeric_limits<std::int64_t>::max() - q,
            "observation.position = " << p << " plus the chunk length " << q << " overflows 64 bits");
  KVC_CHECK(p + q <= RotaryEmbedding::kMaxPosition - n_future,
            "observation.position = " << p << " + chunk length " << q << " + n_future_positions = " << n_future
                                      << " passes 2^31: the future positions would not fit the cache's int32 positions");
  return p + q;
}

/// The future window's start of a batch that shares one: the CUDA device's form, which takes no
/// ragged batch yet.
template <class T>
std::int64_t future_start(Observation<T> const& obs) {
  require_not_ragged(obs, "the kvcompress::cuda device's Expected Attention");
  return future_start(obs, 0, 0);
}

/// The averaged rotation of every batch element: cs [batch, 2, head_dim] (cos_mean, then sin_mean).
/// Computed once when every element shares its future window.
template <class T>
void averaged_rotations(Observation<T> const& obs, std::int64_t batch, std::int64_t n_future, std::int64_t d,
                        float* cs) {
  for (std::int64_t b = 0; b < batch; ++b) {
    float* out = cs + b * 2 * d;
    if (b > 0 && !obs.ragged()) std::copy(cs, cs + 2 * d, out);
    else obs.rope->averaged_rotation(future_start(obs, b, n_future), n_future, out, out + d);
  }
}

}  // namespace detail

/// \brief Expected Attention from the chunk's own pre-RoPE queries (`Observation::queries`).
struct ExpectedAttentionPress {
  double compression_ratio = 0.0;
  std::int64_t n_future_positions = 512;
  std::int64_t n_sink = 4;
  bool use_covariance = true;
  bool use_vnorm = true;
  float epsilon = 0.0f;

  [[nodiscard]] detail::ExpectedAttentionParams params() const noexcept {
    return {n_future_positions, n_sink, use_covariance, use_vnorm, epsilon};
  }

  template <class T, class L>
  [[nodiscard]] std::size_t workspace_bytes(CpuDevice const& dev, Observation<T> const& obs,
                                            KVCacheView<T, L> const& cache) const {
    std::int64_t const q_heads = obs.queries.empty() ? cache.extents.kv_heads : obs.queries.shape[1];
    std::int64_t const batch = cache.extents.batch, d = cache.extents.head_dim;
    std::int64_t const threads = detail::thread_count(dev, static_cast<std::int64_t>(detail::size_product(batch, q_heads)));
    auto const f = [](auto... n) { return Workspace::bytes_for<float>(detail::size_product(n...)); };
    bool const bf16 = std::is_same_v<T, bfloat16> && use_covariance;
    return detail::sum_bytes(f(2, batch, d), f(batch, q_heads, d),
                              use_covariance ? f(batch, q_heads, d, d) + f(threads, d, d) : 0,
                              f(threads, detail::kEaKeyChunk, d),
                              bf16 ? Workspace::bytes_for<std::uint16_t>(detail::size_product(threads, detail::kEaKeyChunk, d)) : 0,
                              detail::ea_scoring_bytes(dev, cache, q_heads, use_covariance));
  }

  template <class T, class L>
  void score(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, float* scores,
             Workspace& ws) const {
    using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    Tensor4<T> const& q = obs.queries;
    detail::check_expected_attention_queries(obs, cache.extents, n_sink);
    auto const p = params();
    std::int64_t const batch = cache.extents.batch, q_heads = q.shape[1], d = cache.extents.head_dim;
    detail::check_expected_attention_common(p, obs, cache, q_heads);

    float* cs = ws.take<float>(static_cast<std::size_t>(2 * batch * d));  // [batch, 2, d]
    detail::averaged_rotations(obs, batch, n_future_positions, d, cs);
    float* mu = ws.take<float>(static_cast<std::size_t>(batch * q_heads * d));
    float* cov = use_covariance ? ws.take<float>(static_cast<std::size_t>(batch * q_heads * d * d)) : nullptr;
    int const threads = detail::thread_count(dev, batch * q_heads);
    float* tmp_buf = use_covariance ? ws.take<float>(static_cast<std::size_t>(threads * d * d)) : nullptr;
    float* qbuf = ws.take<float>(static_cast<std::size_t>(threads * detail::kEaKeyChunk * d));
    // A bf16 cache's queries are bf16 too: their centred second moment runs on the AVX512_BF16 Gram
    // kernel (detail/bf16_dot.hpp) from the centred chunk rounded to bf16, where the CPU has it.
    bool const bf16 = std::is_same_v<T, bfloat16> && use_covariance;
    [[maybe_unused]] std::uint16_t* pair_buf =
        bf16 ? ws.take<std::uint16_t>(static_cast<std::size_t>(threads * detail::kEaKeyChunk * d)) : nullptr;
    [[maybe_unused]] bool const fast = detail::ea_bf16_kernel<T>(dev, d, use_covariance);
    detail::RowIsa const isa = detail::row_isa(dev, d);

    // Statistics per (batch, query head): two passes over chunks of queries (mean, then centred
    // second moment), so scratch does not grow with the chunk length. In a ragged batch element b's
    // queries are its own slice of the packed tensor.
    detail::parallel_for(dev, batch * q_heads, [&](std::int64_t bj, int t) {
      std::int64_t const b = bj / q_heads, j = bj % q_heads;
      std::int64_t const qb = obs.query_batch(b), first = obs.query_start(b) + n_sink;
      std::int64_t const count = (obs.ragged() ? obs.chunk_tokens(b) : q.shape[2]) - n_sink;
      float* qc = qbuf + t * detail::kEaKeyChunk * d;
      Eigen::Map<Eigen::VectorXf> m(mu + bj * d, d);
      auto load = [&](std::int64_t i0, std::int64_t c) {
        // A unit head_dim stride makes each query a contiguous run, whose conversion vectorises.
        for (std::int64_t i = 0; i < c; ++i) {
          if (q.strides[3] == 1) {
            T const* row = &q(qb, j, first + i0 + i, 0);  // [head_dim]
            for (std::int64_t e = 0; e < d; ++e) qc[i * d + e] = to_float(row[e]);
          } else {
            for (std::int64_t e = 0; e < d; ++e) qc[i * d + e] = to_float(q(qb, j, first + i0 + i, e));
          }
        }
        return Eigen::Map<RowMat>(qc, c, d);
      };
      m.setZero();
      for (std::int64_t i0 = 0; i0 < count; i0 += detail::kEaKeyChunk) {
        std::int64_t const c = std::min(detail::kEaKeyChunk, count - i0);
        // Queries with contiguous channels are summed where they lie: read once, no copy.
        if (q.strides[3] == 1) detail::rows_sum(isa, &q(qb, j, first + i0, 0), c, q.strides[2], d, m.data());
        else m += load(i0, c).colwise().sum().transpose();
      }
      m /= static_cast<float>(count);
      float* tmp = use_covariance ? tmp_buf + t * d * d : qc;
      if (use_covariance) {
        Eigen::Map<RowMat> sigma(cov + bj * d * d, d, d);
        sigma.setZero();
        for (std::int64_t i0 = 0; i0 < count; i0 += detail::kEaKeyChunk) {
          std::int64_t const c = std::min(detail::kEaKeyChunk, count - i0);
          auto x = load(i0, c);
          x.rowwise() -= m.transpose();
#if KVC_BF16_DOT_KERNEL
          if (fast) {
            std::uint16_t* pairs = pair_buf + t * detail::kEaKeyChunk * d;  // [(c + 1) / 2, d, 2]
            detail::pack_token_pairs(qc, c, d, pairs);
            detail::bf16_gram_accumulate(pairs, (c + 1) / 2, d, sigma.data());
            continue;
          }
#endif
          detail::blocked_product<true>(sigma, x.transpose(), x);
        }
        sigma /= static_cast<float>(count);
      }
      float const* cs_b = cs + b * 2 * d;
      detail::rotate_and_scale_stats(cs_b, cs_b + d, d, mu + bj * d, cov ? cov + bj * d * d : nullptr, tmp);
    });
    detail::expected_attention_scores(dev, p, cache, q_heads, batch, mu, cov, scores, ws);
  }
};

/// \brief Expected Attention from per-layer query statistics computed offline
/// (`Observation::stats`: mean [q_heads, head_dim], covariance [q_heads, head_dim, head_dim]).
/// Only the chunk length is taken from the observation (`chunk_length`, or the queries' q_len).
struct ExpectedAttentionStatsPress {
  double compression_ratio = 0.0;
  std::int64_t n_future_positions = 512;
  std::int64_t n_sink = 4;
  bool use_covariance = true;
  bool use_vnorm = true;
  float epsilon = 0.0f;

  [[nodiscard]] detail::ExpectedAttentionParams params() const noexcept {
    return {n_future_positions, n_sink, use_covariance, use_vnorm, epsilon};
  }

  template <class T, class L>
  [[nodiscard]] std::size_t workspace_bytes(CpuDevice const& dev, Observation<T> const& obs,
                                            KVCacheView<T, L> const& cache) const {
    std::int64_t const h = obs.stats.q_heads, d = cache.extents.head_dim;
    std::int64_t const sb = obs.ragged() ? cache.extents.batch : 1;  // a ragged batch rotates per sequence
    auto const f = [](auto... n) { return Workspace::bytes_for<float>(detail::size_product(n...)); };
    return detail::sum_bytes(f(2, sb, d), f(sb, h, d), use_covariance ? f(sb, h, d, d) : 0, f(d, d),
                              detail::ea_scoring_bytes(dev, cache, h, use_covariance));
  }

  template <class T, class L>
  void score(CpuDevice const& dev, Observation<T> const& obs, KVCacheView<T, L> const& cache, float* scores,
             Workspace& ws) const {
    KVC_CHECK(obs.stats.mean != nullptr, "observation.stats.mean must be given ([q_heads, head_dim] for this layer)");
    KVC_CHECK(!use_covariance || obs.stats.covariance != nullptr,
              "observation.stats.covariance must be given when use_covariance is true");
    auto const p = params();
    std::int64_t const q_heads = obs.stats.q_heads, d = cache.extents.head_dim;
    detail::check_expected_attention_common(p, obs, cache, q_heads);
    for (std::int64_t i = 0; i < q_heads * d; ++i)
      KVC_CHECK(std::isfinite(obs.stats.mean[i]), "observation.stats.mean[" << i << "] = " << obs.stats.mean[i]
                                                                            << " is not finite");
    if (use_covariance)
      for (std::int64_t i = 0; i < q_heads * d * d; ++i)
        KVC_CHECK(std::isfinite(obs.stats.covariance[i]),
                  "observation.stats.covariance[" << i << "] = " << obs.stats.covariance[i] << " is not finite");
    // One set of rotated statistics, or one per sequence of a ragged batch (each has its own future).
    std::int64_t const sb = obs.ragged() ? cache.extents.batch : 1;
    float* cs = ws.take<float>(static_cast<std::size_t>(2 * sb * d));  // [sb, 2, d]
    detail::averaged_rotations(obs, sb, n_future_positions, d, cs);
    float* mu = ws.take<float>(static_cast<std::size_t>(sb * q_heads * d));                                     // [sb, H, d]
    float* cov = use_covariance ? ws.take<float>(static_cast<std::size_t>(sb * q_heads * d * d)) : nullptr;  // [sb, H, d, d]
    float* tmp = ws.take<float>(static_cast<std::size_t>(d * d));
    for (std::int64_t b = 0; b < sb; ++b) {
      float const* cs_b = cs + b * 2 * d;
      float* mu_b = mu + b * q_heads * d;
      float* cov_b = cov ? cov + b * q_heads * d * d : nullptr;
      std::copy(obs.stats.mean, obs.stats.mean + q_heads * d, mu_b);
      if (cov_b) std::copy(obs.stats.covariance, obs.stats.covariance + q_heads * d * d, cov_b);
      for (std::int64_t j = 0; j < q_heads; ++j)
        detail::rotate_and_scale_stats(cs_b, cs_b + d, d, mu_b + j * d, cov_b ? cov_b + j * d * d : nullptr, tmp);
    }
    detail::expected_attention_scores(dev, p, cache, q_heads, sb, mu, cov, scores, ws);
  }
};

}  // namespace kvcompress
