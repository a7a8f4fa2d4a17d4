#pragma once
/// \file
/// \brief `--tensor-parallel P`: the engine's commands over P MPI ranks (`mpiexec -n P kvc_generate
/// --tensor-parallel P …`). Rank r compresses only its kv heads, [⌊H·r/P⌋, ⌊H·(r+1)/P⌋) as vLLM splits
/// them, and the presses that couple heads exchange what they need through a
/// `kvcompress::MpiCommunicator`; the ranks then give each other their compressed heads. The model's
/// own compute is not split: every rank runs the whole forward pass on the whole cache, so that the
/// command shows the presses' shard invariance (its answers equal one process's) rather than a faster
/// model. The exchange of compressed heads (an all-gather of the layer's cache) is this engine's cost,
/// not a press's: an engine that really splits its attention keeps each rank's heads where they are.
/// Without MPI at build time (KVC_ENGINE_MPI unset) P must be 1.

#include <cstdint>
#include <exception>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "kvc_engine/compression/compressor.hpp"
#include "kvc_engine/compression/press_registry.hpp"
#include "kvcompress/kvcompress.hpp"

#if defined(KVC_ENGINE_MPI)
#include <mpi.h>

#include "kvcompress/dist/mpi_communicator.hpp"
#endif

namespace kvc_engine {

/// kv heads [first, first + count) of a layer.
struct HeadRange {
  std::int64_t first = 0;
  std::int64_t count = 0;
};

/// The heads of rank `rank` of `ranks`: [⌊H·r/P⌋, ⌊H·(r+1)/P⌋), vLLM's split when P divides H.
[[nodiscard]] inline HeadRange heads_of_rank(std::int64_t kv_heads, int rank, int ranks) {
  std::int64_t const first = kv_heads * rank / ranks, end = kv_heads * (rank + 1) / ranks;
  return {first, end - first};
}

/// The part of a whole-layer observation (the engine's: batch 1) that kv heads `range` read: their
/// query heads' rows of every activation, as strided views.
[[nodiscard]] inline kvcompress::Observation<float> observe_heads(kvcompress::Observation<float> obs, HeadRange range,
                                                                  std::int64_t kv_heads) {
  auto const narrow = [&](kvcompress::Tensor4<float>& t) {
    if (t.empty()) return;
    std::int64_t const group = t.shape[1] / kv_heads;
    t.data += range.first * group * t.strides[1];
    t.shape[1] = range.count * group;
  };
  narrow(obs.queries);
  narrow(obs.window_queries);
  narrow(obs.attention);
  return obs;
}

/// The engine's view of a layer ([kv_heads, capacity, head_dim] blocks) narrowed to kv heads `range`.
[[nodiscard]] inline kvcompress::KVCacheView<float> view_heads(kvcompress::KVCacheView<float> view, HeadRange range) {
  std::int64_t const row = view.extents.capacity * view.extents.head_dim;
  view.keys += range.first * row;
  view.values += range.first * row;
  view.lengths += range.first;
  if (view.positions != nullptr) view.positions += range.first * view.extents.capacity;
  view.extents.kv_heads = range.count;
  return view;
}

/// The presses of the registry plus "adakv" (AdaKV around Expected Attention), whose selection across
/// heads is what a split layer must reproduce.
[[nodiscard]] inline Compressor make_shard_compressor(std::string const& name, double ratio, kvcompress::CpuDevice dev) {
  if (name == "adakv") return prefill_press(kvcompress::AdaKVPress{kvcompress::ExpectedAttentionPress{ratio}}, name, dev);
  return make_compressor(name, ratio, dev);
}

/// The ranks of a `--tensor-parallel P` run.
class TensorParallel {
 public:
  /// \param ranks P; 1 runs without MPI. P > 1 initialises MPI and needs exactly P processes.
  explicit TensorParallel(int ranks) : ranks_(ranks) {
    KVC_CHECK(ranks >= 1, "--tensor-parallel must be at least 1, got " << ranks);
    if (ranks == 1) return;
#if defined(KVC_ENGINE_MPI)
    MPI_Init(nullptr, nullptr);
    int world = 0;
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    if (world != ranks) {
      MPI_Finalize();
      KVC_THROW("--tensor-parallel " << ranks << " runs under `mpiexec -n " << ranks << "`, got " << world
                                     << " process(es)");
    }
    comm_ = std::make_unique<kvcompress::MpiCommunicator>(MPI_COMM_WORLD);
#else
    KVC_THROW("--tensor-parallel " << ranks << " needs MPI, which this build did not find (install Open MPI and "
                                      "reconfigure)");
#endif
  }

  TensorParallel(TensorParallel const&) = delete;
  TensorParallel& operator=(TensorParallel const&) = delete;

  ~TensorParallel() {
#if defined(KVC_ENGINE_MPI)
    // After an error the other ranks may still wait in a collective: `abort_after_error` ends them.
    if (ranks_ > 1 && std::uncaught_exceptions() == 0) MPI_Finalize();
#endif
  }

  /// Whether this rank prints (rank 0).
  [[nodiscard]] bool root() const noexcept { return rank_ == 0; }

  /// `inner` run on this rank's kv heads of every layer, then the heads exchanged (see the file comment).
  [[nodiscard]] Compressor wrap(Compressor inner, std::int64_t kv_heads) const {
    if (ranks_ == 1) return inner;
    KVC_CHECK(kv_heads >= ranks_, "--tensor-parallel " << ranks_ << " needs at least as many kv heads, the model has "
                                                       << kv_heads);
#if defined(KVC_ENGINE_MPI)
    kvcompress::Communicator* comm = comm_.get();
    int const rank = rank_, ranks = ranks_;
    auto const shard = [comm, rank, ranks, kv_heads](CompressFn fn) -> CompressFn {
      if (!fn) return fn;
      return [fn, comm, rank, ranks, kv_heads](kvcompress::Observation<float> const& obs,
                                               kvcompress::KVCacheView<float> const& view) {
        HeadRange const mine = heads_of_rank(kv_heads, rank, ranks);
        kvcompress::Observation<float> part = observe_heads(obs, mine, kv_heads);
        part.shard = {comm, mine.first, kv_heads};
        fn(part, view_heads(view, mine));
        exchange_heads(view, kv_heads, ranks);
      };
    };
    inner.after_prefill = shard(inner.after_prefill);
    inner.after_step = shard(inner.after_step);
#endif
    return inner;
  }

  /// After an error on this rank: ends every rank of a `--tensor-parallel` run (some may wait in a
  /// collective for this one). Nothing without MPI.
  static void abort_after_error() noexcept {
#if defined(KVC_ENGINE_MPI)
    int started = 0, finished = 0;
    MPI_Initialized(&started);
    MPI_Finalized(&finished);
    if (started != 0 && finished == 0) MPI_Abort(MPI_COMM_WORLD, 1);
#endif
  }

 private:
#if defined(KVC_ENGINE_MPI)
  /// Every rank gets every head's compressed entries: lengths, keys, values and positions of each
  /// rank's heads, which are contiguous blocks of the layer's buffers.
  static void exchange_heads(kvcompress::KVCacheView<float> const& view, std::int64_t kv_heads, int ranks) {
    std::int64_t const cap = view.extents.capacity, d = view.extents.head_dim;
    std::vector<int> counts(static_cast<std::size_t>(ranks)), displs(counts.size());
    auto const gather = [&](void* data, MPI_Datatype type, std::int64_t per_head) {
      for (int r = 0; r < ranks; ++r) {
        HeadRange const h = heads_of_rank(kv_heads, r, ranks);
        counts[static_cast<std::size_t>(r)] = static_cast<int>(h.count * per_head);
        displs[static_cast<std::size_t>(r)] = static_cast<int>(h.first * per_head);
      }
      int const rc = MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, data, counts.data(), displs.data(), type,
                                    MPI_COMM_WORLD);
      KVC_CHECK(rc == MPI_SUCCESS, "MPI_Allgatherv of the compressed kv heads failed with code " << rc);
    };
    KVC_CHECK(kv_heads * cap * d <= 0x7fffffff, "a layer of " << kv_heads * cap * d << " cache values exceeds MPI's int counts");
    gather(view.lengths, MPI_INT32_T, 1);
    gather(view.keys, MPI_FLOAT, cap * d);
    gather(view.values, MPI_FLOAT, cap * d);
    if (view.positions != nullptr) gather(view.positions, MPI_INT32_T, cap);
  }

  std::unique_ptr<kvcompress::MpiCommunicator> comm_;
#endif
  int ranks_ = 1;
  int rank_ = 0;
};

}  // namespace kvc_engine
