#pragma once
/// \file
/// \brief What every CUDA kernel of kvcompress shares: the storage-type map to CUDA's own types,
/// error checking and the launch helper (which attribute only our own failures), the device-side
/// cache view, the device status word, pointer checks, the row grid, the global max cell and the one
/// place where a runtime head_dim becomes a compile-time constant.
///
/// Errors come in two kinds. What the host can see (ratios, shapes, pointer kinds, workspace size)
/// throws `kvcompress::Error` before anything is launched. What only the device can see (a row length
/// outside [0, capacity], a row not longer than n_sink, a NaN or ±Inf score) is recorded in a
/// `DeviceStatus` at the start of the workspace: the first kernel to find a problem records it, every
/// later kernel of the same call sees it and leaves the cache untouched, and `check_status` (which
/// synchronises the stream, so it is the caller's choice when to pay for it) turns it into an Error.
///
/// Every kernel defined in these headers is a template (`template <class = void>` where nothing else
/// is templated): a header-only library's kernels are compiled into every .cu that includes them, and
/// only templates (like inline functions) may be defined in several translation units of one program.

#if !defined(__CUDACC__)
#error "kvcompress/cuda/*.cuh contain CUDA kernels: compile this translation unit with nvcc (a .cu file), or use the kvcompress::cpu device"
#endif

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <type_traits>
#include <utility>
#include <vector>

#include "kvcompress/cache/kv_cache_view.hpp"
#include "kvcompress/core/device.hpp"
#include "kvcompress/core/dtype.hpp"
#include "kvcompress/core/error.hpp"
#include "kvcompress/core/tensor.hpp"
#include "kvcompress/detail/workspace.hpp"
#include "kvcompress/press/observation.hpp"

namespace kvcompress::cuda_impl {

/// Throws `kvcompress::Error` for a failed runtime call of ours: `what` names it, `e` is what it
/// returned, `pending` what `cudaPeekAtLastError` held just before it. CUDA keeps one "last error"
/// per host thread, which the engine may be about to read: a failure of ours is consumed from it
/// (the exception reports it) only when nothing was pending before our call, so an error of the
/// engine's own work is never cleared; when one was pending, the message names it as well, since
/// it may be the cause (a sticky error from an earlier kernel fails every later call).
[[noreturn]] inline void throw_cuda_error(char const* what, cudaError_t e, cudaError_t pending) {
  if (pending == cudaSuccess) (void)cudaGetLastError();
  if (pending != cudaSuccess)
    KVC_THROW(what << " failed: " << cudaGetErrorName(e) << ": " << cudaGetErrorString(e)
                   << " (an earlier error, " << cudaGetErrorName(pending)
                   << ", was already pending on this thread and may be the cause)");
  KVC_THROW(what << " failed: " << cudaGetErrorName(e) << ": " << cudaGetErrorString(e));
}

}  // namespace kvcompress::cuda_impl

/// Throws `kvcompress::Error` naming the failed runtime call and CUDA's error; an error pending from
/// earlier work is left pending (see `cuda_impl::throw_cuda_error`).
#define KVC_CUDA_CHECK(expr)                                                             \
  do {                                                                                   \
    cudaError_t const kvc_pending_ = cudaPeekAtLastError();                              \
    cudaError_t const kvc_err_ = (expr);                                                 \
    if (kvc_err_ != cudaSuccess) ::kvcompress::cuda_impl::throw_cuda_error(#expr, kvc_err_, kvc_pending_); \
  } while (0)

namespace kvcompress::cuda_impl {

/// ⌈a / b⌉ for positive operands, as a grid dimension.
[[nodiscard]] constexpr unsigned int ceil_div(std::int64_t a, std::int64_t b) noexcept {
  return static_cast<unsigned int>((a + b - 1) / b);
}

// ---- storage types -------------------------------------------------------------------------------

/// CUDA's type with the same bits as a kvcompress storage type (Eigen's half and bfloat16 are
/// bit-compatible with `__half` and `__nv_bfloat16`).
template <class T>
struct device_storage;
template <>
struct device_storage<float> {
  using type = float;
};
template <>
struct device_storage<half> {
  using type = __half;
};
template <>
struct device_storage<bfloat16> {
  using type = __nv_bfloat16;
};
template <class T>
using device_storage_t = typename device_storage<std::remove_const_t<T>>::type;

__device__ __forceinline__ float load(float x) { return x; }
__device__ __forceinline__ float load(__half x) { return __half2float(x); }
__device__ __forceinline__ float load(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class S>
__device__ __forceinline__ S store(float x);
template <>
__device__ __forceinline__ float store<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half store<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 store<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

/// A host storage pointer as CUDA's type (same bits; the pointer is never dereferenced on the host).
template <class T>
[[nodiscard]] device_storage_t<T>* as_device(T* p) noexcept {
  return reinterpret_cast<device_storage_t<T>*>(p);
}
template <class T>
[[nodiscard]] device_storage_t<T> const* as_device(T const* p) noexcept {
  return reinterpret_cast<device_storage_t<T> const*>(p);
}

// ---- the cache on the device ---------------------------------------------------------------------

/// `KVCacheView` with CUDA's storage type: what kernels take by value.
template <class T, class Layout>
struct DeviceCache {
  using S = device_storage_t<T>;
  S* keys;
  S* values;
  CacheExtents extents;
  Layout key_layout;
  Layout value_layout;
  std::int32_t* lengths;    // [batch, kv_heads]
  std::int32_t* positions;  // [batch, kv_heads, capacity] or null

  __device__ __forceinline__ S& key(std::int64_t b, std::int64_t h, std::int64_t s, std::int64_t d) const {
    return keys[key_layout.offset(b, h, s, d)];
  }
  __device__ __forceinline__ S& value(std::int64_t b, std::int64_t h, std::int64_t s, std::int64_t d) const {
    return values[value_layout.offset(b, h, s, d)];
  }
};

template <class T, class Layout>
[[nodiscard]] DeviceCache<T, Layout> device_cache(KVCacheView<T, Layout> const& c) noexcept {
  return {as_device(c.keys), as_device(c.values), c.extents, c.key_layout, c.value_layout, c.lengths, c.positions};
}

/// A read-only `Tensor4` activation (queries, window queries, attention probabilities) with CUDA's
/// storage type: any strides, zero (broadcast) included.
template <class S>
struct DeviceTensor4 {
  S const* data;
  std::int64_t strides[4];  // elements

  __device__ __forceinline__ float operator()(std::int64_t i, std::int64_t j, std::int64_t k, std::int64_t l) const {
    return load(data[i * strides[0] + j * strides[1] + k * strides[2] + l * strides[3]]);
  }
};

template <class T>
[[nodiscard]] DeviceTensor4<device_storage_t<T>> device_tensor(Tensor4<T> const& t) noexcept {
  return {as_device(t.data), {t.strides[0], t.strides[1], t.strides[2], t.strides[3]}};
}

// ---- device status -------------------------------------------------------------------------------

/// What went wrong on the device. Codes are stable; `check_status` words each one.
enum class StatusCode : int {
  kOk = 0,
  kLengthOutOfRange = 1,   // lengths[row] outside [0, capacity]; value = the length
  kLengthNotAboveSink = 2, // lengths[row] ≤ the press's protected prefix (n_sink); value = the length
  kNonFiniteScore = 3,     // a NaN or ±Inf score (from a NaN or ±Inf input); slot and value given
  kNonFiniteInput = 4,     // a NaN or ±Inf in an input that scoring does not propagate; slot = element
  kLengthNotAboveWindow = 5,  // lengths[row] ≤ the press's window_size (aux); value = the length
  kLengthMismatch = 6,     // lengths[row] differs from what the press needs (aux): the given attention's
                           // key count, or (TOVA) the length of the sequence's first kv head
};

/// The first problem a call found. Lives at the start of the workspace; zeroed by every call.
struct DeviceStatus {
  int code;
  int aux;            // the press's protected prefix for kLengthNotAboveSink
  long long row;      // batch · kv_heads + head
  long long slot;     // entry (or element) index, -1 when not applicable
  float value;        // the offending score
  int length;         // the offending length
};

/// Records a problem unless one is already recorded (the first one wins).
__device__ __forceinline__ void report(DeviceStatus* st, StatusCode code, long long row, long long slot,
                                       float value, int length, int aux = 0) {
  if (atomicCAS(&st->code, 0, static_cast<int>(code)) == 0) {
    st->row = row;
    st->slot = slot;
    st->value = value;
    st->length = length;
    st->aux = aux;
  }
}

/// Whether an earlier kernel of this call recorded a problem (then the caller's cache stays as it was).
__device__ __forceinline__ bool failed(DeviceStatus const* st) {
  return *static_cast<int const volatile*>(&st->code) != 0;
}

/// Formats a recorded status as the `kvcompress::Error` the CPU path would have thrown.
inline void throw_if_failed(DeviceStatus const& st) {
  switch (static_cast<StatusCode>(st.code)) {
    case StatusCode::kOk: return;
    case StatusCode::kLengthOutOfRange:
      KVC_THROW("lengths[" << st.row << "] = " << st.length << " is outside [0, capacity] (found on the device; "
                           << "the cache was left unchanged)");
    case StatusCode::kLengthNotAboveSink:
      KVC_THROW("cache length n = " << st.length << " of row " << st.row << " must exceed n_sink = " << st.aux
                                    << " (found on the device; the cache was left unchanged)");
    case StatusCode::kNonFiniteScore:
      KVC_THROW("the press produced a non-finite score " << st.value << " at (row " << st.row << ", slot " << st.slot
                                                         << "): an input it reads holds a NaN or ±Inf (found on the "
                                                         << "device; the cache was left unchanged)");
    case StatusCode::kNonFiniteInput:
      KVC_THROW("an input holds a non-finite value " << st.value << " (row " << st.row << ", element " << st.slot
                                                     << "; found on the device; the cache was left unchanged)");
    case StatusCode::kLengthNotAboveWindow:
      KVC_THROW("cache length n = " << st.length << " of row " << st.row << " must exceed window_size = " << st.aux
                                    << " (found on the device; the cache was left unchanged)");
    case StatusCode::kLengthMismatch:
      KVC_THROW("lengths[" << st.row << "] = " << st.length << " must equal " << st.aux
                           << " (the given attention's key count, or the length of the sequence's other kv heads; "
                           << "found on the device; the cache was left unchanged)");
  }
  KVC_THROW("unknown device status code " << st.code);
}

/// Records kLengthOutOfRange for a length outside [0, capacity] and `below` (kLengthNotAboveSink or
/// kLengthNotAboveWindow) for one not above `min_exclusive` (pass -1 for none). \param lengths [rows]
template <class = void>
__global__ void check_lengths_kernel(std::int32_t const* lengths, std::int64_t rows, std::int64_t capacity,
                                     std::int64_t min_exclusive, StatusCode below, DeviceStatus* status) {
  for (std::int64_t r = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; r < rows;
       r += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    int const n = lengths[r];
    if (n < 0 || n > capacity) report(status, StatusCode::kLengthOutOfRange, r, -1, 0.0f, n);
    else if (n <= min_exclusive)
      report(status, below, r, -1, 0.0f, n, static_cast<int>(min_exclusive));
  }
}

// ---- host-side checks ----------------------------------------------------------------------------

/// Throws unless p is device or managed memory: a host pointer under a CUDA tag would fault in a
/// kernel (or, with HMM, silently run at PCIe speed). `what` names the argument. One driver call
/// (`cudaPointerGetAttributes`): `compress` makes it only under `cuda::check_pointers`; a view made
/// by `make_device_cache_view` has been through it once.
inline void require_device_pointer(void const* p, char const* what) {
  KVC_CHECK(p != nullptr, what << " must not be null");
  cudaPointerAttributes a{};
  cudaError_t const pending = cudaPeekAtLastError();
  cudaError_t const e = cudaPointerGetAttributes(&a, p);
  if (e != cudaSuccess) {
    if (pending == cudaSuccess) (void)cudaGetLastError();  // ours, reported here; never the engine's
    KVC_THROW(what << " = " << p << " is not CUDA memory (" << cudaGetErrorString(e) << ")");
  }
  KVC_CHECK(a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged,
            what << " = " << p << " is host memory; the kvcompress::cuda device needs device or managed memory");
}

/// `require_device_pointer` when the device tag asks for per-call pointer checks, else the null
/// check alone (no driver call).
inline void require_device_pointer(cuda const& dev, void const* p, char const* what) {
  if (dev.check_pointers) require_device_pointer(p, what);
  else KVC_CHECK(p != nullptr, what << " must not be null");
}

/// Launches kernel<<<grid, block, smem, stream>>>(args...) and throws, naming `name`, if this launch
/// failed (bad configuration, no kernel image for this GPU). `cudaLaunchKernelEx` returns this
/// launch's own error, so an error left pending by the engine's earlier work is neither reported as
/// ours nor cleared (see `throw_cuda_error`). Does not synchronise.
template <class... Params, class... Args>
void launch(char const* name, void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t smem,
            cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaError_t const pending = cudaPeekAtLastError();
  cudaError_t const e = cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
  if (e != cudaSuccess) throw_cuda_error(name, e, pending);
}

/// Raises `kernel`'s dynamic shared memory limit to `bytes` on the current device, once: the first
/// call per (kernel, device) makes the driver call, later ones with no more bytes only a lookup
/// (`cudaFuncSetAttribute` costs a driver round trip on every call otherwise).
template <class... Params>
void allow_dynamic_smem(void (*kernel)(Params...), std::size_t bytes) {
  if (bytes <= 48 * 1024) return;  // every GPU allows this much without opting in
  struct Entry {
    void const* kernel;
    int device;
    std::size_t bytes;
  };
  static std::mutex mutex;
  static std::vector<Entry> done;  // a few dozen kernels at most
  int device = 0;
  KVC_CUDA_CHECK(cudaGetDevice(&device));
  auto const* key = reinterpret_cast<void const*>(kernel);
  std::lock_guard<std::mutex> const lock(mutex);
  auto it = std::find_if(done.begin(), done.end(), [&](Entry const& x) { return x.kernel == key && x.device == device; });
  if (it != done.end() && it->bytes >= bytes) return;
  KVC_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  if (it != done.end()) it->bytes = bytes;
  else done.push_back({key, device, bytes});
}

/// Checks a cache view for the CUDA device: extents as on the CPU (host-only data), every pointer
/// present, keys and values distinct, and (with `check_pointers`) every pointer on the device.
/// Lengths are device memory and are checked by the kernels.
template <class T, class L>
void require_device_cache(KVCacheView<T, L> const& cache, bool check_pointers = true) {
  validate_extents(cache.extents);
  cuda const dev{nullptr, check_pointers};
  require_device_pointer(dev, cache.keys, "cache.keys");
  require_device_pointer(dev, cache.values, "cache.values");
  KVC_CHECK(cache.keys != cache.values, "keys and values must not alias (both point to "
                                            << static_cast<void const*>(cache.keys) << ")");
  require_device_pointer(dev, cache.lengths, "cache.lengths");
  if (cache.positions) require_device_pointer(dev, cache.positions, "cache.positions");
  if constexpr (std::is_same_v<L, PagedLayout>) {
    require_device_pointer(dev, cache.key_layout.block_table, "cache.key_layout.block_table");
    require_device_pointer(dev, cache.value_layout.block_table, "cache.value_layout.block_table");
  }
  // The host's checks that read no cache memory: strides, paged fields, buffers that overlap.
  kvcompress::detail::validate_view_shape(cache);
}

/// The observation's checks that read no device memory; the CUDA device takes no ragged batch yet.
template <class T>
void require_device_observation(Observation<T> const& obs) {
  kvcompress::detail::require_not_ragged(obs, "the kvcompress::cuda device");
  kvcompress::detail::validate_observation(obs, 0);
}

/// `require_device_cache` with the device tag's pointer policy.
template <class T, class L>
void require_device_cache(cuda const& dev, KVCacheView<T, L> const& cache) {
  require_device_cache(cache, dev.check_pointers);
}

/// Blocks along a grid's y or z axis for `rows` rows: CUDA's limit there is 65535, so kernels loop
/// over rows r = blockIdx.y, blockIdx.y + gridDim.y, … and any number of rows runs.
[[nodiscard]] inline unsigned int row_grid(std::int64_t rows) noexcept {
  return rows < 1 ? 1u : (rows < 65535 ? static_cast<unsigned int>(rows) : 65535u);
}

/// Launches `check_lengths_kernel` on the device's stream. \param lengths [rows] device memory
inline void check_lengths(cuda const& dev, std::int32_t const* lengths, std::int64_t rows, std::int64_t capacity,
                          std::int64_t min_exclusive, DeviceStatus* status,
                          StatusCode below = StatusCode::kLengthNotAboveSink) {
  unsigned int const blocks = ceil_div(rows < 1 ? 1 : rows, 256);
  launch("check_lengths_kernel", check_lengths_kernel<>, blocks < 1024 ? blocks : 1024u, 256, 0, dev.stream, lengths,
         rows, capacity, min_exclusive, below, status);
}

// ---- compile-time dispatch -----------------------------------------------------------------------

/// The head dimensions the kernels are built for.
inline constexpr int kHeadDims[] = {64, 80, 96, 128, 256};

/// Calls f(std::integral_constant<int, D>{}) for D = head_dim; throws for any other value. The one
/// place where a runtime head_dim becomes a template argument.
template <class F>
decltype(auto) dispatch_head_dim(std::int64_t head_dim, F&& f) {
  switch (head_dim) {
    case 64: return std::forward<F>(f)(std::integral_constant<int, 64>{});
    case 80: return std::forward<F>(f)(std::integral_constant<int, 80>{});
    case 96: return std::forward<F>(f)(std::integral_constant<int, 96>{});
    case 128: return std::forward<F>(f)(std::integral_constant<int, 128>{});
    case 256: return std::forward<F>(f)(std::integral_constant<int, 256>{});
    default:
      KVC_THROW("head_dim = " << head_dim << " is not supported by the kvcompress::cuda device "
                              << "(64, 80, 96, 128 or 256; the CPU device takes any even head_dim)");
  }
}

// ---- reductions ----------------------------------------------------------------------------------

__device__ __forceinline__ float warp_sum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
__device__ __forceinline__ float warp_max(float x) {
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

/// Block-wide sum (or max) of one float per thread; every thread gets the result.
/// \param smem [32] shared scratch; blockDim.x must be a multiple of 32.
template <bool kMax>
__device__ float block_reduce(float x, float* smem) {
  int const lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  x = kMax ? warp_max(x) : warp_sum(x);
  __syncthreads();  // smem may still be read by a previous call
  if (lane == 0) smem[warp] = x;
  __syncthreads();
  float y = lane < warps ? smem[lane] : (kMax ? -INFINITY : 0.0f);
  y = kMax ? warp_max(y) : warp_sum(y);
  return y;
}

/// A float's rank as an unsigned key: larger key = larger float (the selection's order: larger key
/// ranks before). NaN is 0, below −Inf (0x007fffff); −0 and +0 share +0's key, since the CPU's
/// comparisons find them equal. Host and device, so that the CPU suite checks it.
__host__ __device__ __forceinline__ std::uint32_t rank_key(float x) {
  if (x != x) return 0u;  // NaN
  if (x == 0.0f) return 0x80000000u;
#if defined(__CUDA_ARCH__)
  std::uint32_t const u = __float_as_uint(x);
#else
  std::uint32_t u = 0;
  std::memcpy(&u, &x, sizeof u);
#endif
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/// The float whose `rank_key` is `key` (+0 for the key of ±0; a NaN for 0, the empty max cell).
__host__ __device__ __forceinline__ float from_rank_key(std::uint32_t key) {
  std::uint32_t const u = (key & 0x80000000u) ? (key & 0x7fffffffu) : ~key;
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x = 0.0f;
  std::memcpy(&x, &u, sizeof x);
  return x;
#endif
}

/// A global float maximum kept as a `rank_key` in an unsigned cell: `kEmptyMaxCell` (0, set with
/// cudaMemsetAsync) lies below every float's key, one unsigned atomicMax per update is exact for
/// every value (−0, negatives and ±Inf included), and `from_rank_key` reads the result back (a NaN
/// while the cell is still empty).
inline constexpr std::uint32_t kEmptyMaxCell = 0u;

__device__ __forceinline__ void atomic_max_key(unsigned int* cell, float v) { atomicMax(cell, rank_key(v)); }

}  // namespace kvcompress::cuda_impl
