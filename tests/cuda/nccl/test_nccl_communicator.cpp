// NcclCommunicator on the GPUs there are: its collectives on one rank, AdaKV through it on one rank
// (the whole layer), and with two GPUs the tensor-parallel scenarios on two ranks (one thread per
// GPU) against the whole layer. Exits with 77 (skipped) without a GPU (tests/cuda/main.cpp).

#include <cuda_runtime.h>
#include <nccl.h>

#include <catch2/catch.hpp>
#include <exception>
#include <memory>
#include <thread>
#include <vector>

#include "kvcompress/dist/nccl_communicator.hpp"
#include "shard/shard_harness.hpp"

using namespace kvcompress;

namespace {

/// Device memory and a stream for one rank's NcclCommunicator.
struct RankResources {
  void* staging = nullptr;
  cudaStream_t stream = nullptr;
  static constexpr std::size_t kBytes = std::size_t{1} << 20;
  explicit RankResources(int device) {
    REQUIRE(cudaSetDevice(device) == cudaSuccess);
    REQUIRE(cudaMalloc(&staging, kBytes) == cudaSuccess);
    REQUIRE(cudaStreamCreate(&stream) == cudaSuccess);
  }
  ~RankResources() {
    cudaStreamDestroy(stream);
    cudaFree(staging);
  }
  RankResources(RankResources const&) = delete;
  RankResources& operator=(RankResources const&) = delete;
};

}  // namespace

TEST_CASE("NcclCommunicator on one rank: collectives and AdaKV through it", "[nccl]") {
  ncclComm_t comm = nullptr;
  int const devices[1] = {0};
  REQUIRE(ncclCommInitAll(&comm, 1, devices) == ncclSuccess);
  {
    RankResources res(0);
    NcclCommunicator nccl(comm, res.stream, res.staging, RankResources::kBytes);
    CHECK(nccl.rank() == 0);
    CHECK(nccl.size() == 1);
    std::int64_t ints[3] = {4, -2, 7};
    nccl.all_reduce(ints, 3, ReduceOp::max);
    CHECK(ints[2] == 7);
    float floats[2] = {0.5f, 1.5f};
    nccl.all_reduce(floats, 2, ReduceOp::sum);
    CHECK(floats[1] == 1.5f);
    std::int64_t gathered[2] = {0, 0};
    std::int64_t const mine[2] = {3, 9};
    nccl.all_gather(mine, gathered, 2);
    CHECK(gathered[1] == 9);
    CHECK_THROWS_WITH(nccl.all_gather(mine, gathered, RankResources::kBytes),
                      Catch::Contains("does not fit the 1048576 bytes of staging memory"));

    kvc_shard::Layer layer = kvc_shard::default_layer(), alone = kvc_shard::default_layer();
    ExpectedAttentionPress ea{0.6};
    Observation<float> obs = kvc_shard::observe(layer, 0, layer.heads);
    obs.shard = {&nccl, 0, layer.heads};
    compress(cpu, AdaKVPress{ea}, obs, layer.cache.view());
    compress(cpu, AdaKVPress{ea}, kvc_shard::observe(alone, 0, alone.heads), alone.cache.view());
    CHECK(kvc_shard::kept(layer.cache, 0, layer.heads) == kvc_shard::kept(alone.cache, 0, alone.heads));
  }
  ncclCommDestroy(comm);
}

TEST_CASE("NcclCommunicator on two GPUs: the coupled presses match the whole layer", "[nccl]") {
  int count = 0;
  REQUIRE(cudaGetDeviceCount(&count) == cudaSuccess);
  if (count < 2) {
    WARN("one GPU: the two-rank NCCL case needs two (NCCL does not put two ranks of a communicator on one GPU)");
    return;
  }
  ncclComm_t comms[2] = {nullptr, nullptr};
  int const devices[2] = {0, 1};
  REQUIRE(ncclCommInitAll(comms, 2, devices) == ncclSuccess);
  for (auto const& scenario : kvc_shard::coupled_scenarios()) {
    kvc_shard::Layer layer = scenario.make_layer();
    std::vector<kvc_shard::Part> parts;
    for (int r = 0; r < 2; ++r) parts.emplace_back(layer, 4 * r, 4);
    std::vector<std::exception_ptr> errors(2);
    std::vector<std::thread> threads;
    for (int r = 0; r < 2; ++r)
      threads.emplace_back([&, r] {
        try {
          RankResources res(r);
          NcclCommunicator nccl(comms[r], res.stream, res.staging, RankResources::kBytes);
          Observation<float> obs = kvc_shard::observe(layer, 4 * r, 4, scenario.layer_idx, scenario.num_layers);
          obs.shard = {&nccl, 4 * r, layer.heads};
          scenario.run(obs, parts[static_cast<std::size_t>(r)].cache.view());
        } catch (...) {
          errors[static_cast<std::size_t>(r)] = std::current_exception();
        }
      });
    for (auto& t : threads) t.join();
    for (auto const& e : errors) REQUIRE(!e);
    scenario.run(kvc_shard::observe(layer, 0, layer.heads, scenario.layer_idx, scenario.num_layers), layer.cache.view());
    for (int r = 0; r < 2; ++r) {
      INFO(scenario.name << ", rank " << r);
      CHECK(kvc_shard::kept(parts[static_cast<std::size_t>(r)].cache, 0, 4) == kvc_shard::kept(layer.cache, 4 * r, 4));
    }
  }
  for (auto c : comms) ncclCommDestroy(c);
}
