/// \file
/// \brief Wrappers that split the cache: Chunk, ChunkKV, EntropyGatedChunkKV, Block, PerLayerCompression.

#include <nanobind/stl/vector.h>

#include "bindings.hpp"
#include "press_factory.hpp"

namespace kvcompress::python {

void bind_chunk_wrappers(nb::module_& m) {
  m.def("chunk", [](NativePress const& press, std::int64_t chunk_length) {
    return native(ChunkPress<ErasedScorer>{inner(press, "ChunkPress"), chunk_length}, "ChunkPress");
  });
  m.def("chunk_kv", [](NativePress const& press, std::int64_t chunk_length) {
    return native(ChunkKVPress<ErasedScorer>{inner(press, "ChunkKVPress"), chunk_length}, "ChunkKVPress");
  });
  m.def("entropy_gated_chunk_kv", [](NativePress const& press, std::int64_t chunk_length,
                                     std::int64_t low_entropy_chunk_length) {
    return native(EntropyGatedChunkKVPress<ErasedScorer>{inner(press, "EntropyGatedChunkKVPress"), chunk_length,
                                                         low_entropy_chunk_length},
                  "EntropyGatedChunkKVPress");
  });
  m.def("block", [](NativePress const& press, std::int64_t block_size) {
    return native(BlockPress<ErasedScorer>{inner(press, "BlockPress"), block_size}, "BlockPress");
  });
  m.def("per_layer_compression", [](NativePress const& press, std::vector<double> compression_ratios) {
    return native(PerLayerCompressionPress<ErasedScorer>{inner(press, "PerLayerCompressionPress"),
                                                         std::move(compression_ratios)},
                  "PerLayerCompressionPress");
  });
}

}  // namespace kvcompress::python
