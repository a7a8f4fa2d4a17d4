// The shared CUDA machinery: head_dim dispatch, pointer-kind checks, the device status.
#include "cuda_test_util.cuh"

using namespace kvcompress;
using kvc_cuda_test::DeviceBuffer;

void launch_from_second_unit(cuda_impl::DeviceStatus* status, std::int32_t const* lengths);  // second_unit.cu

TEST_CASE("cuda dispatch_head_dim maps each supported head_dim to its constant and rejects others", "[cuda]") {
  for (int d : {64, 80, 96, 128, 256})
    CHECK(cuda_impl::dispatch_head_dim(d, [](auto dim) { return static_cast<int>(decltype(dim)::value); }) == d);
  CHECK_THROWS_WITH(cuda_impl::dispatch_head_dim(72, [](auto) { return 0; }),
                    Catch::Contains("head_dim = 72 is not supported"));
}

TEST_CASE("cuda require_device_pointer rejects host memory and accepts device memory", "[cuda]") {
  std::vector<float> host(4);
  CHECK_THROWS_WITH(cuda_impl::require_device_pointer(host.data(), "cache.keys"),
                    Catch::Contains("cache.keys") && Catch::Contains("host memory"));
  DeviceBuffer<float> dev(4);
  CHECK_NOTHROW(cuda_impl::require_device_pointer(dev.get(), "cache.keys"));
  CHECK_THROWS_WITH(cuda_impl::require_device_pointer(nullptr, "cache.values"), Catch::Contains("cache.values"));
}

TEST_CASE("cuda check_lengths records the first bad length in the device status", "[cuda]") {
  DeviceBuffer<std::int32_t> lengths(std::vector<std::int32_t>{5, 9, 3});
  DeviceBuffer<cuda_impl::DeviceStatus> status(1);
  KVC_CUDA_CHECK(cudaMemset(status.get(), 0, sizeof(cuda_impl::DeviceStatus)));
  cuda_impl::check_lengths(kvc_cuda_test::kChecked, lengths.get(), 3, 8, -1, status.get());
  auto const st = status.download()[0];
  CHECK(st.code == static_cast<int>(cuda_impl::StatusCode::kLengthOutOfRange));
  CHECK(st.row == 1);
  CHECK_THROWS_WITH(cuda_impl::throw_if_failed(st), Catch::Contains("lengths[1] = 9"));

  KVC_CUDA_CHECK(cudaMemset(status.get(), 0, sizeof(cuda_impl::DeviceStatus)));
  cuda_impl::check_lengths(kvc_cuda_test::kChecked, lengths.get(), 3, 16, 4, status.get());
  auto const st2 = status.download()[0];
  CHECK(st2.code == static_cast<int>(cuda_impl::StatusCode::kLengthNotAboveSink));
  CHECK(st2.row == 2);
  CHECK_THROWS_WITH(cuda_impl::throw_if_failed(st2), Catch::Contains("must exceed n_sink = 4"));
}

TEST_CASE("cuda kernels defined in the headers link from two translation units", "[cuda]") {
  DeviceBuffer<std::int32_t> lengths(std::vector<std::int32_t>{2});
  DeviceBuffer<cuda_impl::DeviceStatus> status(1);
  KVC_CUDA_CHECK(cudaMemset(status.get(), 0, sizeof(cuda_impl::DeviceStatus)));
  launch_from_second_unit(status.get(), lengths.get());
  CHECK(status.download()[0].code == static_cast<int>(cuda_impl::StatusCode::kLengthOutOfRange));
}
