// The translation unit clang-tidy checks (tools/tidy/run.sh): the umbrella header, and every entry
// point instantiated for each press and storage type, so that template bodies are analysed too.
#include "kvcompress/kvcompress.hpp"

namespace kvcompress {

#define KVC_TIDY_PRESS(Press, T)                                                                               \
  template void compress<Press, T, StridedLayout>(CpuDevice const&, Press const&, Observation<T> const&,       \
                                                  KVCacheView<T, StridedLayout> const&, Workspace);            \
  template std::vector<float> score<Press, T, StridedLayout>(CpuDevice const&, Press const&, Observation<T> const&, \
                                                             KVCacheView<T, StridedLayout> const&);

#define KVC_TIDY_ALL_PRESSES(T)                        \
  KVC_TIDY_PRESS(ExpectedAttentionPress, T)            \
  KVC_TIDY_PRESS(ExpectedAttentionStatsPress, T)       \
  KVC_TIDY_PRESS(KnormPress, T)                        \
  KVC_TIDY_PRESS(StreamingLLMPress, T)                 \
  KVC_TIDY_PRESS(RandomPress, T)                       \
  KVC_TIDY_PRESS(KeyDiffPress, T)                      \
  KVC_TIDY_PRESS(LagKVPress, T)                        \
  KVC_TIDY_PRESS(QFilterPress, T)                      \
  KVC_TIDY_PRESS(SnapKVPress, T)                       \
  KVC_TIDY_PRESS(PyramidKVPress, T)                    \
  KVC_TIDY_PRESS(TOVAPress, T)                         \
  KVC_TIDY_PRESS(ObservedAttentionPress, T)           \
  KVC_TIDY_PRESS(LeverageScorePress, T)               \
  KVC_TIDY_PRESS(NonCausalAttnPress, T)               \
  KVC_TIDY_PRESS(CompactorPress, T)                   \
  KVC_TIDY_PRESS(CURPress, T)                         \
  KVC_TIDY_PRESS(CapPress, T)                         \
  KVC_TIDY_PRESS(FinchPress, T)                       \
  KVC_TIDY_PRESS(KVzapPress, T)

KVC_TIDY_ALL_PRESSES(float)
KVC_TIDY_ALL_PRESSES(half)
KVC_TIDY_ALL_PRESSES(bfloat16)

// SimLayerKV decides per layer and has no scores: compress only.
#define KVC_TIDY_COMPRESS_ONLY(Press, T)                                                                      \
  template void compress<Press, T, StridedLayout>(CpuDevice const&, Press const&, Observation<T> const&,       \
                                                  KVCacheView<T, StridedLayout> const&, Workspace);
KVC_TIDY_COMPRESS_ONLY(SimLayerKVPress, float)
KVC_TIDY_COMPRESS_ONLY(SimLayerKVPress, half)
KVC_TIDY_COMPRESS_ONLY(SimLayerKVPress, bfloat16)

// The wrappers added with EntropyGatedChunkKV: compress only, but LUKV, which also scores.
#define KVC_TIDY_MORE_WRAPPERS(T)                                      \
  KVC_TIDY_COMPRESS_ONLY(EntropyGatedChunkKVPress<KnormPress>, T)      \
  KVC_TIDY_COMPRESS_ONLY(MergingPress<KnormPress>, T)                  \
  KVC_TIDY_COMPRESS_ONLY(DuoAttentionPress, T)                         \
  KVC_TIDY_PRESS(LUKVPress<ExpectedAttentionPress>, T)
KVC_TIDY_MORE_WRAPPERS(float)
KVC_TIDY_MORE_WRAPPERS(half)
KVC_TIDY_MORE_WRAPPERS(bfloat16)
// The presses with entry points of their own: ThinK (packed keys), KVCompose, FastKVzip and KVzip (across
// layers), and the attention over packed keys.
#define KVC_TIDY_MODEL_PRESSES(T)                                                                                       \
  template void ThinKPress::compress<T, StridedLayout>(CpuDevice const&, Observation<T> const&,                         \
                                                       KVCacheView<T, StridedLayout> const&, PackedKeys<T> const&, Workspace) const; \
  template void reference_attention_packed<T, StridedLayout, PackedKeys<T>>(                                            \
      CpuDevice const&, Tensor4<T> const&, KVCacheView<T, StridedLayout> const&, PackedKeys<T> const&, float*,          \
      AttentionOptions const&, Workspace);                                                                               \
  template void KVComposeStatistics::add<T>(CpuDevice const&, int, Tensor4<T> const&);                                  \
  template void kvcompose_compress<T, StridedLayout>(CpuDevice const&, KVComposePlan const&, int,                       \
                                                     KVCacheView<T, StridedLayout> const&, Workspace,                    \
                                                     TensorParallelShard const&);                                         \
  template void FastKVzipPress::score_layer<T>(CpuDevice const&, FastKVzipGate const&, Tensor4<T> const&, float*,        \
                                               TensorParallelShard const&) const;                                        \
  template void KVzipPress::score_chunk<T, StridedLayout>(CpuDevice const&, Observation<T> const&,                     \
                                                          KVCacheView<T, StridedLayout> const&, std::int64_t,            \
                                                          std::int64_t, std::int64_t, float*) const;                     \
  template void evict_lowest_across_heads<T, StridedLayout>(CpuDevice const&, KVCacheView<T, StridedLayout> const&,     \
                                                            float const*, std::int64_t, Workspace, TensorParallelShard const&);
KVC_TIDY_MODEL_PRESSES(float)
KVC_TIDY_MODEL_PRESSES(half)
KVC_TIDY_MODEL_PRESSES(bfloat16)

// The decoding presses (CAM's merge and running sums, the query rings DecodingPress shares with it).
#define KVC_TIDY_DECODING(T)                                                                                   \
  template class CAMPress<KnormPress, T>;                                                                      \
  template bool CAMPress<KnormPress, T>::step<StridedLayout>(CpuDevice const&, Observation<T> const&,          \
                                                             KVCacheView<T, StridedLayout> const&, Workspace); \
  template class BasicDecodingPress<TOVAPress, T>;                                                             \
  template bool BasicDecodingPress<TOVAPress, T>::step<StridedLayout>(CpuDevice const&, Observation<T> const&, \
                                                                 KVCacheView<T, StridedLayout> const&, Workspace);
KVC_TIDY_DECODING(float)
KVC_TIDY_DECODING(half)
KVC_TIDY_DECODING(bfloat16)

template KVCacheView<float, StridedLayout> make_cache_view<float>(float*, float*, CacheExtents const&,
                                                                  StridedLayout const&, std::int32_t*, std::int32_t*);
template Tensor4<float> make_tensor4<float>(float const*, std::array<std::int64_t, 4>);
template void RotaryEmbedding::apply<float>(float*, std::int64_t, std::int64_t) const;
template void RotaryEmbedding::unapply<half>(half*, std::int64_t, std::int64_t) const;
template void RotaryEmbedding::rerotate<bfloat16>(bfloat16*, std::int64_t) const;

}  // namespace kvcompress

// The thread pool's dynamic loop (the presses' loops instantiate its static one through CpuDevice::pool).
namespace kvcompress::tidy {
inline void thread_pool_tasks(ThreadPool& pool, float* out /*[8]*/) {
  pool.parallel_tasks(8, [out](std::int64_t i, int) { out[i] = static_cast<float>(i); });
}
}  // namespace kvcompress::tidy
