"""
kvcompress's native core (C++): caches over DLPack tensors, presses, compress and score.
"""

from collections.abc import Sequence

from numpy.typing import NDArray


class Error(ValueError):
    pass

cuda_enabled: bool = True

cuda_presses: tuple = ...

class RotaryEmbedding:
    """
    The model's rotary embedding (HF's default, linear, dynamic, llama3 and yarn).
    """

    def __init__(self, head_dim: int, rope_type: str = 'default', theta: float = 10000.0, factor: float = 1.0, max_position_embeddings: int = 2048, original_max_position_embeddings: int = 0, low_freq_factor: float = 1.0, high_freq_factor: float = 4.0, beta_fast: float = 32.0, beta_slow: float = 1.0, attention_factor: float = 0.0, mscale: float = 0.0, mscale_all_dim: float = 0.0, truncate: bool = True) -> None:
        """
        Validates the configuration (as transformers reads config.rope_parameters) and precomputes the inverse frequencies.
        """

    @property
    def head_dim(self) -> int: ...

    @property
    def attention_scaling(self) -> float: ...

class Communicator:
    """
    A process group seen by one of its ranks, for presses on a layer whose kv heads are split over the group. Its collectives are the methods of `backend`: all_reduce(buffer, op) reduces a 1-D int64 or float32 NumPy array in place over the group (op 'sum' or 'max'); all_gather(send, recv) fills the int64 recv [size * count] with every rank's send [count] in rank order. Each must bound its wait and raise (the message naming the collective) rather than hang. kvcompress.distributed.TorchDistributedCommunicator is one over a torch.distributed process group.
    """

    def __init__(self, backend: object, rank: int, size: int) -> None: ...

    @property
    def rank(self) -> int:
        """This process's rank in [0, size)."""

    @property
    def size(self) -> int:
        """Ranks in the group."""

    def all_reduce(self, buffer: NDArray, op: str = 'sum') -> None:
        """
        The library's all-reduce of a 1-D contiguous int64 or float32 host array, in place (through backend).
        """

    def all_gather(self, send: NDArray, recv: NDArray) -> None:
        """
        The library's all-gather: int64 send [count] of every rank into recv [size * count] (through backend).
        """

class TensorParallelShard:
    """
    This rank holds kv heads [first_kv_head, first_kv_head + cache kv_heads) of a layer of kv_heads heads; the other ranks of communicator hold the rest, each head once. No communicator means the whole layer is on this process.
    """

    def __init__(self, communicator: Communicator | None, first_kv_head: int = 0, kv_heads: int = 0) -> None: ...

    @property
    def communicator(self) -> Communicator: ...

    @property
    def first_kv_head(self) -> int:
        """Global index of this rank's first kv head."""

    @property
    def kv_heads(self) -> int:
        """kv heads of the whole layer (0: the cache's own)."""

    @property
    def split(self) -> bool:
        """Whether the layer's heads are spread over more than this process."""

class Observation:
    """
    What the engine hands a press at a compression point. Tensors must have the cache's dtype and live on its device; shapes are checked by the press that reads them.
    """

    def __init__(self, *, queries: NDArray | None = None, window_queries: NDArray | None = None, attention: NDArray | None = None, output_projection: NDArray | None = None, stats_mean: NDArray | None = None, stats_covariance: NDArray | None = None, query_offsets: NDArray | None = None, sequence_positions: NDArray | None = None, hidden_states: NDArray | None = None, rope: RotaryEmbedding | None = None, layer_idx: int = 0, num_layers: int = 1, position: int = 0, chunk_length: int = 0, shard: TensorParallelShard | None = None) -> None:
        """
        Every field is optional; a press that needs one it did not get raises kvcompress.Error naming it.
        """

    @property
    def queries(self) -> NDArray | None:
        """Pre-RoPE queries [batch, q_heads, q_len, head_dim]."""

    @queries.setter
    def queries(self, arg: NDArray | None, /) -> None: ...

    @property
    def window_queries(self) -> NDArray | None:
        """
        Post-RoPE queries of the last window tokens [batch, q_heads, w, head_dim] (SnapKV, TOVA, PyramidKV).
        """

    @window_queries.setter
    def window_queries(self, arg: NDArray | None, /) -> None: ...

    @property
    def attention(self) -> NDArray | None:
        """Attention probabilities [batch, q_heads, q_len, n]."""

    @attention.setter
    def attention(self, arg: NDArray | None, /) -> None: ...

    @property
    def output_projection(self) -> NDArray | None:
        """W_o (HF o_proj.weight) [hidden, q_heads * head_dim] (CriticalKV)."""

    @output_projection.setter
    def output_projection(self, arg: NDArray | None, /) -> None: ...

    @property
    def stats_mean(self) -> NDArray | None:
        """float32 [q_heads, head_dim] pre-RoPE query mean."""

    @stats_mean.setter
    def stats_mean(self, arg: NDArray | None, /) -> None: ...

    @property
    def stats_covariance(self) -> NDArray | None:
        """float32 [q_heads, head_dim, head_dim] pre-RoPE query covariance."""

    @stats_covariance.setter
    def stats_covariance(self, arg: NDArray | None, /) -> None: ...

    @property
    def query_offsets(self) -> NDArray | None:
        """int32 [batch + 1] cu_seqlens of a ragged batch."""

    @query_offsets.setter
    def query_offsets(self, arg: NDArray | None, /) -> None: ...

    @property
    def sequence_positions(self) -> NDArray | None:
        """int64 [batch] first positions (ragged)."""

    @sequence_positions.setter
    def sequence_positions(self, arg: NDArray | None, /) -> None: ...

    @property
    def hidden_states(self) -> NDArray | None:
        """
        The attention input (after input_layernorm) [batch, 1, q_len, hidden_size] (KVzap).
        """

    @hidden_states.setter
    def hidden_states(self, arg: NDArray | None, /) -> None: ...

    @property
    def rope(self) -> RotaryEmbedding:
        """The model's RotaryEmbedding (Expected Attention, key re-rotation)."""

    @rope.setter
    def rope(self, arg: RotaryEmbedding, /) -> None: ...

    @property
    def layer_idx(self) -> int: ...

    @layer_idx.setter
    def layer_idx(self, arg: int, /) -> None: ...

    @property
    def num_layers(self) -> int: ...

    @num_layers.setter
    def num_layers(self, arg: int, /) -> None: ...

    @property
    def position(self) -> int:
        """Absolute position of the chunk's first token (0 at prefill)."""

    @position.setter
    def position(self, arg: int, /) -> None: ...

    @property
    def chunk_length(self) -> int:
        """Tokens in the chunk; 0 takes it from the queries."""

    @chunk_length.setter
    def chunk_length(self, arg: int, /) -> None: ...

    @property
    def shard(self) -> TensorParallelShard | None:
        """
        The TensorParallelShard when the layer's kv heads are split over a process group (None: the whole layer is here).
        """

    @shard.setter
    def shard(self, arg: TensorParallelShard | None, /) -> None: ...

class NativePress:
    """A press of the C++ library and the workspace it reuses."""

    @property
    def name(self) -> str: ...

    @property
    def is_scorer(self) -> bool: ...

    @property
    def compression_ratio(self) -> float: ...

    @property
    def workspace_allocations(self) -> int:
        """
        How many times the workspace grew (once per larger cache; never per call).
        """

    @property
    def workspace_capacity(self) -> int:
        """Bytes of workspace held for the next call."""

    @property
    def cuda(self) -> bool:
        """
        Whether the press has CUDA kernels (it then compresses CUDA tensors on their device).
        """

    @property
    def cuda_workspace_allocations(self) -> int:
        """
        How many times a device workspace was allocated (once per device and larger cache).
        """

    def cuda_workspace_capacity(self, device: int) -> int:
        """
        Bytes of device workspace held on CUDA device `device` for the next call.
        """

class Cache:
    """One layer's KV cache over tensors the caller owns (no copy)."""

    @property
    def keys(self) -> NDArray:
        """The keys tensor (or K page pool)."""

    @property
    def values(self) -> NDArray:
        """The values tensor (or V page pool)."""

    @property
    def lengths(self) -> NDArray:
        """int32 [batch, kv_heads] live lengths, updated in place."""

    @property
    def paged(self) -> bool: ...

    @property
    def dtype(self) -> str: ...

    @property
    def shape(self) -> tuple:
        """(batch, kv_heads, capacity, head_dim)"""

    @property
    def device(self) -> str:
        """'cpu' or 'cuda:N': where every tensor lives."""

    @property
    def cuda_device(self) -> int:
        """The CUDA device's index, or -1 for a host cache."""

def expected_attention(arg0: float, arg1: int, arg2: int, arg3: bool, arg4: bool, arg5: float, /) -> NativePress: ...

def expected_attention_stats(arg0: float, arg1: int, arg2: int, arg3: bool, arg4: bool, arg5: float, /) -> NativePress: ...

def knorm(arg: float, /) -> NativePress: ...

def key_diff(arg: float, /) -> NativePress: ...

def streaming_llm(arg0: float, arg1: int, /) -> NativePress: ...

def lag_kv(arg0: float, arg1: int, arg2: int, arg3: bool, /) -> NativePress: ...

def cap(arg0: float, arg1: float, arg2: int, arg3: int, arg4: float, /) -> NativePress: ...

def random(arg0: float, arg1: int | None, /) -> NativePress: ...

def snap_kv(arg0: float, arg1: int, arg2: int, /) -> NativePress: ...

def pyramid_kv(arg0: float, arg1: int, arg2: int, arg3: float, /) -> NativePress: ...

def tova(arg: float, /) -> NativePress: ...

def observed_attention(arg: float, /) -> NativePress: ...

def non_causal_attn(arg0: float, arg1: int, /) -> NativePress: ...

def finch(arg0: float, arg1: int | None, arg2: bool, arg3: bool, arg4: int | None, /) -> NativePress: ...

def sim_layer_kv(arg0: float, arg1: int, arg2: int, arg3: int, /) -> NativePress: ...

def leverage_score(arg0: float, arg1: int, arg2: NDArray | None, /) -> NativePress: ...

def compactor(arg0: float, arg1: int, arg2: int, arg3: int, arg4: int, arg5: float | None, arg6: NDArray | None, /) -> NativePress: ...

def cur(arg0: float, arg1: int, arg2: str, arg3: bool, arg4: bool, arg5: int, arg6: NDArray | None, /) -> NativePress: ...

def kvzap(arg0: float, arg1: str, arg2: NDArray | None, arg3: NDArray | None, arg4: NDArray | None, arg5: NDArray | None, /) -> NativePress: ...

def q_filter(arg0: float, arg1: NDArray | None, /) -> NativePress: ...

def adakv(arg0: NativePress, arg1: float, /) -> NativePress: ...

def critical_kv(arg0: NativePress, arg1: float, arg2: float, /) -> NativePress: ...

def critical_adakv(arg0: NativePress, arg1: float, arg2: float, arg3: float, /) -> NativePress: ...

def key_rerotation(arg: NativePress, /) -> NativePress: ...

def merging(arg0: NativePress, arg1: float, arg2: float, /) -> NativePress: ...

def composed(arg: Sequence[NativePress], /) -> NativePress: ...

def chunk(arg0: NativePress, arg1: int, /) -> NativePress: ...

def chunk_kv(arg0: NativePress, arg1: int, /) -> NativePress: ...

def entropy_gated_chunk_kv(arg0: NativePress, arg1: int, arg2: int, /) -> NativePress: ...

def block(arg0: NativePress, arg1: int, /) -> NativePress: ...

def per_layer_compression(arg0: NativePress, arg1: Sequence[float], /) -> NativePress: ...

def lukv(arg0: NativePress, arg1: float, arg2: int, arg3: int, arg4: NDArray | None, /) -> NativePress: ...

def duo_attention(arg0: float, arg1: int, arg2: int, arg3: NDArray | None, /) -> NativePress: ...

def duo_attention_sample_scores(mean_query: NDArray, mean_key: NDArray, rope: RotaryEmbedding, q_len: int, out: NDArray) -> None:
    """
    DuoAttention's on-the-fly head scores of one sample into out (float32 [kv_heads]): mean_query [q_heads, head_dim] and mean_key [kv_heads, head_dim] are the sample's pre-RoPE queries and keys averaged over its q_len tokens; kvpress averages them over 50 BookSum samples.
    """

class ThinK:
    """ThinK's channel pruning and the workspace it reuses."""

    def __init__(self, key_channel_compression_ratio: float, window_size: int) -> None: ...

    def kept_channels(self, head_dim: int) -> int:
        """
        Channels each key keeps: head_dim - int(head_dim * key_channel_compression_ratio).
        """

    def channel_scores(self, observation: Observation, cache: Cache, out: NDArray, num_threads: int = 0) -> None:
        """Channel scores into out, float32 [batch, kv_heads, head_dim]."""

    def compress_keys(self, observation: Observation, cache: Cache, packed_keys: NDArray, channels: NDArray, num_threads: int = 0) -> None:
        """
        Writes each row's kept channels (ascending) into channels, int32 [batch, kv_heads, kept], and the packed keys of its live entries into packed_keys [batch, kv_heads, capacity, kept] of the cache's dtype.
        """

    @property
    def workspace_allocations(self) -> int: ...

class KVComposeConfig:
    """KVCompose's parameters (kvpress's names)."""

    def __init__(self, structured: bool, compression_ratio: float, agg_task: str, agg_group: str, agg_head: str, add_v_norm: bool, add_mean_across_heads: bool, keep_token_lower_bound: int) -> None: ...

class KVComposeStatistics:
    """
    Per (layer, query head, context entry) agg_task of the replay passes' attention.
    """

    def __init__(self, config: KVComposeConfig, num_layers: int, q_heads: int, context_length: int) -> None: ...

    def add(self, layer: int, attention: NDArray, num_threads: int = 0) -> None:
        """
        Folds one replay pass of layer in: attention [batch, q_heads, replay_len, n] probabilities over the context's keys and the replay's own (n > context_length).
        """

    @property
    def num_layers(self) -> int: ...

    @property
    def q_heads(self) -> int: ...

    @property
    def context_length(self) -> int: ...

class KVComposePlan:
    """KVCompose's scores and each (layer, kv head)'s count."""

    @property
    def num_layers(self) -> int: ...

    @property
    def kv_heads(self) -> int: ...

    @property
    def context_length(self) -> int: ...

    @property
    def scores(self) -> list[float]:
        """[layers * kv_heads * context_length]"""

    @property
    def kept(self) -> list[int]:
        """[layers * kv_heads] entries kept per row"""

def kvcompose_plan(config: KVComposeConfig, statistics: KVComposeStatistics, kv_heads: int, value_norms: NDArray | None = None, shard: TensorParallelShard | None = None) -> KVComposePlan:
    """
    The plan from the statistics; value_norms float32 [layers, kv_heads, context_length] with add_v_norm. With shard: the statistics and value norms are this rank's kv heads' (kv_heads of them) and the plan is the whole model's, the same on every rank.
    """

def kvcompose_compress(plan: KVComposePlan, layer: int, cache: Cache, num_threads: int = 0, shard: TensorParallelShard | None = None) -> None:
    """
    Compacts layer's cache to the plan in place (each row holds the context's entries); with shard, the cache holds this rank's kv heads of the plan's.
    """

def kvcompose_value_norms(cache: Cache, context_length: int, out: NDArray) -> None:
    """
    |v| of batch element 0's first context_length entries of one layer into out [kv_heads, context_length].
    """

class FastKVzipGate:
    """One layer's FastKVzip gate over the caller's float32 arrays."""

    def __init__(self, q_proj_weight: NDArray, q_proj_bias: NDArray, k_proj_weight: NDArray, q_norm_weight: NDArray, k_norm_weight: NDArray, k_base: NDArray, b: NDArray, norm_eps: float = 1e-06) -> None:
        """
        kvpress's gate tensors (<layer>.q_proj.weight, .q_proj.bias, .k_proj.weight, .q_norm.weight, .k_norm.weight, .k_base [kv_heads, 1, sink, dim], .b [kv_heads, 1, group]).
        """

    def heads(self, first: int, count: int) -> FastKVzipGate:
        """
        The gate of kv heads [first, first + count) alone (a tensor-parallel rank's), over the same arrays.
        """

    @property
    def kv_heads(self) -> int: ...

    @property
    def hidden_size(self) -> int: ...

def fast_kvzip_score_layer(compression_ratio: float, layerwise: bool, n_sink: int, window_size: int, window_ratio: float, gate: FastKVzipGate, hidden: NDArray, out: NDArray, num_threads: int = 0, shard: TensorParallelShard | None = None) -> None:
    """
    One layer's gate scores into out, float32 [kv_heads, n], from hidden [1, 1, n, hidden_size]; with shard, gate holds this rank's kv heads (FastKVzipGate.heads).
    """

def kvzip_score_chunk(compression_ratio: float, layerwise: bool, n_sink: int, kvzip_plus_normalization: bool, chunk_size: int, observation: Observation, cache: Cache, context_length: int, start: int, end: int, out: NDArray, num_threads: int = 0) -> None:
    """
    Scores chunk [start, end) of one layer into out [kv_heads, context_length] from its reconstruction pass: observation.queries (pre-RoPE, [1, q_heads, q, head_dim]), rope, position (the context length); the batch-1 cache holds the context's entries, then the pass's q own.
    """

def kvzip_protect_sinks(n_sink: int, scores: NDArray, shard: TensorParallelShard | None = None) -> None:
    """
    kvpress's sink protection, in place: the first n_sink entries of every layer and head get the maximum + 1 (with shard: the maximum over every rank's scores).
    """

def cross_layer_pruned_counts(scores: NDArray, compression_ratio: float, layerwise: bool, shard: TensorParallelShard | None = None) -> list[int]:
    """
    Entries each layer evicts, from every layer's scores [layers, kv_heads, n] (batch 1); with shard, this rank's kv heads of every layer, and the counts are the whole model's.
    """

def evict_lowest_across_heads(cache: Cache, scores: NDArray, n_pruned: int, num_threads: int = 0, shard: TensorParallelShard | None = None) -> None:
    """
    Evicts the layer's n_pruned lowest-scoring entries over all its kv heads (batch 1), in place; scores [kv_heads, capacity]. With shard: the cache holds this rank's kv heads, n_pruned is the whole layer's and the entries evicted are those one process evicts from the whole layer.
    """

class DMS:
    """
    DMS's state: the pending scores of every layer's rows, and the workspace.
    """

    def __init__(self, press: NativePress, threshold: float, sliding_window_size: int, decoding: bool, num_layers: int, batch: int, kv_heads: int) -> None: ...

    def step(self, observation: Observation, cache: Cache, num_threads: int = 0) -> bool:
        """
        One forward pass of one layer, after its keys and values were appended; returns whether entries were removed.
        """

    def removed(self, layer: int) -> int: ...

    def pending(self, layer: int) -> int: ...

    @property
    def compression_ratio(self) -> float: ...

    def reset(self) -> None: ...

class DecodingState:
    """
    DecodingPress, CompressionRatioDecodingPress or PrefillDecodingPress with its state: the query rings and step counters of every layer, and the workspace.
    """

    def __init__(self, prefilling_press: NativePress | None, base_press: NativePress | None, window_size: int, compression_interval: int, target_size: int | None, target_compression_ratio: float, query_buffer_size: int) -> None:
        """
        Validates the options. target_size None: CompressionRatioDecodingPress's target, a fraction of the tokens seen. base_press None: no compression while decoding; prefilling_press None: none at the prefill.
        """

    def step(self, observation: Observation, cache: Cache, num_threads: int = 0) -> bool:
        """
        One forward pass of one layer, after its keys and values were appended; returns whether entries were removed. Position 0 is a prefill (a new sequence).
        """

    def steps(self, layer: int) -> int:
        """Decode steps of the layer since its last compression."""

    def buffered(self, layer: int) -> int:
        """Queries of the layer the inner press would see now."""

    @property
    def has_state(self) -> bool: ...

    @property
    def workspace_allocations(self) -> int:
        """
        How many times the workspace grew (once per larger cache; never per step).
        """

    @property
    def workspace_capacity(self) -> int: ...

    def reset(self) -> None:
        """
        Forgets every layer's steps and queries (a new sequence); keeps the buffers.
        """

class CAMState:
    """
    CAMPress with its state: the query rings, step counters and running attention sums of every layer, the merge draws, and the workspace.
    """

    def __init__(self, base_press: NativePress, window_size: int, compression_interval: int, target_size: int, query_buffer_size: int, merge_budget: int, seed: int, capacity: int, uniforms: NDArray | None) -> None:
        """
        Validates the options. capacity 0: the running sums hold the cache capacity of the first step with queries. uniforms: the merge draws in order (float32/float64, [0, 1)) instead of the seeded generator.
        """

    def step(self, observation: Observation, cache: Cache, num_threads: int = 0) -> bool:
        """
        One forward pass of one layer, after its keys and values were appended; returns whether entries were removed. Needs observation.queries and rope at every decoding step.
        """

    def steps(self, layer: int) -> int:
        """Decode steps of the layer since its last compression."""

    def buffered(self, layer: int) -> int:
        """Queries of the layer the inner press would see now."""

    def attention_sum(self, layer: int, out: NDArray) -> None:
        """
        Writes the layer's running attention sums into out, float32 [batch, kv_heads, capacity] (see shape); entries past what a row's sum covers are 0.
        """

    @property
    def shape(self) -> tuple:
        """
        (num_layers, batch, q_heads, kv_heads, head_dim, capacity) of the state.
        """

    @property
    def draws(self) -> int:
        """Merge draws made so far."""

    @property
    def has_state(self) -> bool: ...

    @property
    def workspace_allocations(self) -> int:
        """
        How many times the workspace grew (once per larger cache; never per step).
        """

    @property
    def workspace_capacity(self) -> int: ...

    def reset(self) -> None:
        """
        Forgets every layer's steps, queries and sums (a new sequence); keeps the buffers and the draws.
        """
