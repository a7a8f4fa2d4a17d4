#pragma once
// Helpers of the CUDA tests: device buffers owned by the test, a host cache mirrored on the device,
// and the comparisons every kernel test makes against the CPU path.

#include <catch2/catch.hpp>

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "kvcompress/cuda.cuh"
#include "kvcompress/kvcompress.hpp"

namespace kvc_cuda_test {

/// The device of most tests: the default stream, every pointer checked on every call, so that a
/// test handing host memory gets the Error it expects (the library's default checks only in
/// `make_device_cache_view`; the tests of that default name `kvcompress::cuda{}` themselves).
inline constexpr kvcompress::cuda kChecked{nullptr, true};

/// Device memory of n objects of U, freed on destruction.
template <class U>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t n) : n_(n) {
    if (n > 0) KVC_CUDA_CHECK(cudaMalloc(&p_, n * sizeof(U)));
  }
  explicit DeviceBuffer(std::vector<U> const& host) : DeviceBuffer(host.size()) { upload(host); }
  DeviceBuffer(DeviceBuffer const&) = delete;
  DeviceBuffer& operator=(DeviceBuffer const&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr; o.n_ = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(n_, o.n_);
    return *this;
  }
  ~DeviceBuffer() { if (p_) cudaFree(p_); }

  void upload(std::vector<U> const& host) {
    REQUIRE(host.size() == n_);
    if (n_ > 0) KVC_CUDA_CHECK(cudaMemcpy(p_, host.data(), n_ * sizeof(U), cudaMemcpyHostToDevice));
  }
  [[nodiscard]] std::vector<U> download() const {
    std::vector<U> host(n_);
    if (n_ > 0) KVC_CUDA_CHECK(cudaMemcpy(host.data(), p_, n_ * sizeof(U), cudaMemcpyDeviceToHost));
    return host;
  }
  [[nodiscard]] U* get() const noexcept { return p_; }
  [[nodiscard]] std::size_t size() const noexcept { return n_; }

 private:
  U* p_ = nullptr;
  std::size_t n_ = 0;
};

/// Device copies of a host cache's buffers (same layout, same lengths, same positions), and a view
/// over them with the host view's layouts.
template <class T, class L>
struct DeviceMirror {
  DeviceBuffer<T> k, v;
  DeviceBuffer<std::int32_t> lengths, positions, block_table;

  /// \param k_host, v_host the buffers the host view addresses (whole pools when paged)
  /// \param table_host     the block table (paged layouts; K and V share it), else empty
  DeviceMirror(std::vector<T> const& k_host, std::vector<T> const& v_host, std::vector<std::int32_t> const& lengths_host,
               std::vector<std::int32_t> const& positions_host = {}, std::vector<std::int32_t> const& table_host = {})
      : k(k_host), v(v_host), lengths(lengths_host), positions(positions_host), block_table(table_host) {}

  [[nodiscard]] kvcompress::KVCacheView<T, L> view(kvcompress::KVCacheView<T, L> const& host) const {
    kvcompress::KVCacheView<T, L> d = host;
    d.keys = k.get();
    d.values = v.get();
    d.lengths = lengths.get();
    d.positions = positions.size() ? positions.get() : nullptr;
    if constexpr (std::is_same_v<L, kvcompress::PagedLayout>) {
      d.key_layout.block_table = block_table.get();
      d.value_layout.block_table = block_table.get();
    }
    return d;
  }
};

/// Whether |a − b| ≤ atol + rtol·|b| elementwise over the first n entries; reports the first miss.
inline void require_close(std::vector<float> const& a, std::vector<float> const& b, float rtol, float atol) {
  REQUIRE(a.size() == b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    bool const ok = std::abs(a[i] - b[i]) <= atol + rtol * std::abs(b[i]);
    if (!ok) {
      INFO("element " << i << ": cuda " << a[i] << " vs cpu " << b[i]);
      REQUIRE(ok);
    }
  }
}

}  // namespace kvc_cuda_test
