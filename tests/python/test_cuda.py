"""CUDA tensors through the binding. The first part runs on any machine: the build flag the module
reports, the presses with CUDA kernels, and the errors for tensors on a CUDA device that are raised
before any CUDA call (or, without a GPU, by the first one), with CUDA-device tensors that are only
DLPack descriptions (no GPU needed to make them). The second part needs a GPU and PyTorch with CUDA:
each press with CUDA kernels compresses the same cache on the GPU and on the CPU, and the kept sets,
the moved entries, the lengths and the scores must agree (the CPU path is the reference)."""

import ctypes
import os

import numpy as np
import pytest

import kvcompress as kvc

# The presses of docs/cuda.md ("What runs on the GPU"), in the module's order.
CUDA_PRESSES = ("ExpectedAttentionPress", "ExpectedAttentionStatsPress", "KnormPress", "StreamingLLMPress",
                "KeyDiffPress", "SnapKVPress", "TOVAPress", "AdaKVPress")


# ---------------------------------------------------------------------------------------------
# Tensors that say they live on a CUDA device: a DLPack capsule over host memory with device type
# kDLCUDA. They let the checks made before any CUDA call run without a GPU; nothing may read them.


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32), ("dtype", _DLDataType),
                ("shape", ctypes.POINTER(ctypes.c_int64)), ("strides", ctypes.POINTER(ctypes.c_int64)),
                ("byte_offset", ctypes.c_uint64)]


class _DLManagedTensor(ctypes.Structure):
    pass


_DELETER = ctypes.CFUNCTYPE(None, ctypes.POINTER(_DLManagedTensor))
_DLManagedTensor._fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", _DELETER)]
_NO_OP = _DELETER(lambda _: None)  # the fake owns nothing: its host buffer lives as long as the fake
_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
_DLPACK_CODES = {np.dtype(np.float32): (2, 32), np.dtype(np.float16): (2, 16), np.dtype(np.int32): (0, 32)}


class FakeCudaTensor:
    """A C-contiguous tensor of ``shape`` and ``dtype`` that DLPack places on ``cuda:device``."""

    def __init__(self, shape, dtype=np.float32, device=0):
        self.host = np.zeros(shape, dtype=dtype)  # what the data pointer points at (never read)
        self.shape = tuple(shape)
        self.device = device
        self._shape = (ctypes.c_int64 * len(shape))(*shape)
        self._strides = (ctypes.c_int64 * len(shape))(*(s // self.host.itemsize for s in self.host.strides))
        self._managed = []

    def __dlpack_device__(self):
        return (2, self.device)  # kDLCUDA

    def __dlpack__(self, **_):
        code, bits = _DLPACK_CODES[self.host.dtype]
        t = _DLTensor(self.host.ctypes.data, _DLDevice(2, self.device), len(self.shape), _DLDataType(code, bits, 1),
                      self._shape, self._strides, 0)
        managed = _DLManagedTensor(t, None, _NO_OP)
        self._managed.append(managed)
        return _capsule_new(ctypes.addressof(managed), b"dltensor", None)


def fake(shape, dtype=np.float32, device=0):
    return FakeCudaTensor(shape, dtype, device)


def raises(f, *fragments):
    with pytest.raises(kvc.Error) as e:
        f()
    for fragment in fragments:
        assert fragment in str(e.value), (fragment, str(e.value))
    return str(e.value)


# ---------------------------------------------------------------------------------------------
# Any machine.


def test_the_module_reports_the_cuda_path_it_was_built_with():
    # CTest passes the build's KVC_PYTHON_CUDA outcome (python/CMakeLists.txt); pip users see the attribute.
    expected = os.environ.get("KVC_EXPECT_PYTHON_CUDA")
    if expected is None:
        pytest.skip("KVC_EXPECT_PYTHON_CUDA is set by CTest (tests/CMakeLists.txt), not here")
    assert kvc.cuda_enabled is (expected.upper() in ("ON", "1", "TRUE", "YES"))


def test_the_presses_with_cuda_kernels_are_listed_and_flagged():
    assert tuple(kvc.cuda_presses) == CUDA_PRESSES
    with_kernels = [kvc.ExpectedAttentionPress(0.5), kvc.ExpectedAttentionStatsPress(0.5), kvc.KnormPress(0.5),
                    kvc.StreamingLLMPress(0.5), kvc.KeyDiffPress(0.5), kvc.SnapKVPress(0.5, window_size=8),
                    kvc.TOVAPress(0.5), kvc.AdaKVPress(kvc.KnormPress(0.5)),
                    kvc.AdaKVPress(kvc.ExpectedAttentionPress(0.25), alpha_safeguard=0.3)]
    without = [kvc.PyramidKVPress(0.5), kvc.ObservedAttentionPress(0.5), kvc.LagKVPress(0.5), kvc.RandomPress(0.5, seed=1),
               kvc.CriticalKVPress(kvc.KnormPress(0.5)), kvc.AdaKVPress(kvc.ObservedAttentionPress(0.5)),
               kvc.AdaKVPress(kvc.AdaKVPress(kvc.KnormPress(0.5))), kvc.ChunkKVPress(kvc.KnormPress(0.5))]
    assert [p.native.cuda for p in with_kernels] == [True] * len(with_kernels)
    assert [p.native.cuda for p in without] == [False] * len(without)
    assert type(kvc.cuda_presses[0]) is str and {type(p).__name__ for p in with_kernels} == set(CUDA_PRESSES)


def test_tensors_on_a_cuda_device_without_the_cuda_path_or_a_gpu():
    b, h, n, d = 1, 2, 16, 64
    k, v, lengths = fake((b, h, n, d)), fake((b, h, n, d)), fake((b, h), np.int32)
    if not kvc.cuda_enabled:
        raises(lambda: kvc._core._strided_cache(k, v, lengths), "keys is on cuda:0",
               "compiled without CUDA (KVC_PYTHON_CUDA)")
        return
    if torch is not None and torch.cuda.is_available():
        # A GPU: the runtime finds the device, and the driver says that the pointers are host memory.
        raises(lambda: kvc._core._strided_cache(k, v, lengths), "cache.keys = 0x", "is host memory")
    else:
        # The host checks pass; then the CUDA runtime is asked for the device and finds none.
        raises(lambda: kvc._core._strided_cache(k, v, lengths), "the cache is on cuda:0 but the CUDA runtime finds")


@pytest.mark.skipif(not kvc.cuda_enabled, reason="the module was built without its CUDA path")
def test_mixed_devices_are_named_before_any_cuda_call():
    b, h, n, d = 1, 2, 16, 64
    k = fake((b, h, n, d))
    host = np.zeros((b, h, n, d), dtype=np.float32)
    lengths = fake((b, h), np.int32)
    raises(lambda: kvc._core._strided_cache(k, host, lengths), "values is on cpu but the cache is on cuda:0")
    raises(lambda: kvc._core._strided_cache(k, fake((b, h, n, d), device=1), lengths),
           "values is on cuda:1 but the cache is on cuda:0")
    raises(lambda: kvc._core._strided_cache(k, fake((b, h, n, d)), np.full((b, h), n, np.int32)),
           "lengths is on cpu but the cache is on cuda:0")
    raises(lambda: kvc._core._strided_cache(k, fake((b, h, n, d)), lengths, fake((b, h, n), np.int32, device=1)),
           "positions is on cuda:1 but the cache is on cuda:0")
    raises(lambda: kvc._core._strided_cache(k, fake((b, h, n, d), np.float16), lengths),
           "values is float16 but the cache stores float32")
    table = fake((b, 1), np.int32)
    pool = fake((4, h, 16, d))
    raises(lambda: kvc._core._paged_cache(pool, fake((4, h, 16, d)), np.zeros((b, 1), np.int32), lengths, h, 16),
           "block_table is on cpu but the cache is on cuda:0")
    raises(lambda: kvc._core._paged_cache(pool, np.zeros((4, h, 16, d), np.float32), table, lengths, h, 16),
           "v_pool is on cpu but the cache is on cuda:0")


@pytest.mark.skipif(not kvc.cuda_enabled, reason="the module was built without its CUDA path")
def test_a_cuda_tensor_of_an_unknown_library_needs_a_stream():
    k = fake((1, 2, 16, 64))
    raises(lambda: kvc.KVCache(k, fake((1, 2, 16, 64))), "are on cuda:0", "pass stream=")


def test_a_cpu_cache_refuses_observation_tensors_on_a_cuda_device():
    # The CPU path names the tensor and both devices (any build: the observation is checked on the host).
    keys = np.random.default_rng(0).standard_normal((1, 2, 16, 64), dtype=np.float32)
    cache = kvc.KVCache(keys, keys.copy())
    obs = kvc.Observation(window_queries=fake((1, 2, 8, 64)))
    raises(lambda: kvc.compress(kvc.SnapKVPress(0.5, window_size=8), obs, cache),
           "observation.window_queries is on cuda:0 but the cache is on cpu")
    assert cache.device == "cpu"


# ---------------------------------------------------------------------------------------------
# A GPU: the CUDA path against the CPU path on the same tensors.

try:
    import torch
except ImportError:  # the tests above need no PyTorch
    torch = None
gpu = pytest.mark.skipif(torch is None or not (kvc.cuda_enabled and torch.cuda.is_available()),
                         reason="needs a GPU, PyTorch with CUDA and a module built with KVC_PYTHON_CUDA "
                                "(tools/gpu/run_all.sh runs these)")

B, KV, G, N, D, W = 2, 4, 2, 301, 64, 16
LENGTHS = [[301, 17, 250, 299], [33, 300, 64, 129]]  # odd, short (just above the window) and full rows
UNIFORM = [[257] * KV, [99] * KV]  # TOVA: every head of a sequence has the sequence's length


def _rope():
    return kvc.RotaryEmbedding(D, rope_type="llama3", theta=500000.0, factor=8.0, max_position_embeddings=131072,
                               original_max_position_embeddings=8192)


def _case(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = getattr(torch, dtype)
    return dict(keys=torch.randn(B, KV, N, D, generator=g).to(t), values=torch.randn(B, KV, N, D, generator=g).to(t),
                queries=torch.randn(B, KV * G, N, D, generator=g).to(t),
                window=torch.randn(B, KV * G, W, D, generator=g).to(t),
                mean=torch.randn(KV * G, D, generator=g), cov=torch.eye(D).repeat(KV * G, 1, 1) * 0.5)


def _observation(c, device):
    return kvc.Observation(queries=c["queries"].to(device), window_queries=c["window"].to(device), rope=_rope(),
                           stats_mean=c["mean"].to(device), stats_covariance=c["cov"].contiguous().to(device))


def _presses():
    return {
        "Knorm": kvc.KnormPress(0.5), "StreamingLLM": kvc.StreamingLLMPress(0.5, n_sink=4),
        "KeyDiff": kvc.KeyDiffPress(0.5), "SnapKV": kvc.SnapKVPress(0.5, window_size=W, kernel_size=5),
        "TOVA": kvc.TOVAPress(0.5), "ExpectedAttention": kvc.ExpectedAttentionPress(0.5, use_covariance=False),
        "ExpectedAttention+cov": kvc.ExpectedAttentionPress(0.25, n_future_positions=64),
        "ExpectedAttentionStats": kvc.ExpectedAttentionStatsPress(0.5),
        "AdaKV(ExpectedAttention)": kvc.AdaKVPress(kvc.ExpectedAttentionPress(0.5, use_covariance=False)),
        "AdaKV(Knorm)": kvc.AdaKVPress(kvc.KnormPress(0.75), alpha_safeguard=0.3),
    }


def _strided(c, lengths, device):
    k, v = c["keys"].clone().to(device), c["values"].clone().to(device)
    pos = torch.arange(N, dtype=torch.int32).expand(B, KV, N).contiguous().to(device)
    return kvc.KVCache(k, v, torch.tensor(lengths, dtype=torch.int32).to(device), pos), k, v, pos


def _paged(c, lengths, device, page=16):
    """NHD pages, a per-sequence table over shuffled pages of one pool; capacity N (the last page partial)."""
    per_row = -(-N // page)
    pages = torch.randperm(B * per_row, generator=torch.Generator().manual_seed(3)).to(torch.int32)
    table = pages.reshape(B, per_row)
    kp = torch.zeros(B * per_row, page, KV, D, dtype=c["keys"].dtype)
    vp = torch.zeros_like(kp)
    for b in range(B):
        for s in range(N):
            p = int(table[b, s // page])
            kp[p, s % page] = c["keys"][b, :, s]
            vp[p, s % page] = c["values"][b, :, s]
    kp, vp, table = kp.to(device), vp.to(device), table.to(device)
    return kvc.KVCache.paged(kp, vp, table, torch.tensor(lengths, dtype=torch.int32).to(device), kv_heads=KV,
                             capacity=N)


def _check_same_kept(name, cpu_scores, lengths_before, cpu_lengths, gpu_lengths, cpu_pos, gpu_pos, tol):
    """The GPU keeps what the CPU keeps, except entries whose CPU score is within `tol` of the row's cut."""
    assert torch.equal(cpu_lengths, gpu_lengths.cpu()), name
    for b in range(B):
        for h in range(KV):
            n_kept = int(cpu_lengths[b, h])
            cpu_set = set(cpu_pos[b, h, :n_kept].tolist())
            gpu_set = set(gpu_pos[b, h, :n_kept].cpu().tolist())
            differ = cpu_set ^ gpu_set
            if not differ:
                continue
            live = cpu_scores[b, h, :lengths_before[b][h]]
            cut = torch.sort(live, descending=True).values[n_kept - 1]
            for p in differ:
                assert abs(float(live[p] - cut)) <= tol * max(1.0, abs(float(cut))), (name, b, h, p)


@gpu
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_cuda_compress_equals_the_cpu_path_strided(dtype):
    tol = 1e-4 if dtype == "float32" else 2e-2
    for name, press in _presses().items():
        lengths = UNIFORM if name == "TOVA" else LENGTHS
        c = _case(dtype)
        cpu_cache, cpu_k, _, cpu_pos = _strided(c, lengths, "cpu")
        gpu_cache, gpu_k, gpu_v, gpu_pos = _strided(c, lengths, "cuda")
        assert gpu_cache.device == "cuda:0"
        cpu_scores = torch.from_numpy(kvc.score(press, _observation(c, "cpu"), cpu_cache))
        gpu_scores = kvc.score(press, _observation(c, "cuda"), gpu_cache)
        assert gpu_scores.device.type == "cuda"
        live = torch.isfinite(cpu_scores)
        assert torch.equal(live, torch.isfinite(gpu_scores.cpu())), name
        torch.testing.assert_close(gpu_scores.cpu()[live], cpu_scores[live], rtol=tol, atol=tol, msg=name)
        kvc.compress(press, _observation(c, "cpu"), cpu_cache)
        out = kvc.compress(press, _observation(c, "cuda"), gpu_cache)
        assert out is gpu_cache.lengths and out.device.type == "cuda"
        _check_same_kept(name, cpu_scores, lengths, cpu_cache.lengths, out, cpu_pos, gpu_pos, tol)
        # Every kept slot holds exactly the original entry at its position.
        for b in range(B):
            for h in range(KV):
                n_kept = int(out[b, h])
                p = gpu_pos[b, h, :n_kept].long().cpu()
                assert torch.equal(gpu_k[b, h, :n_kept].cpu(), c["keys"][b, h, p]), (name, b, h)
                assert torch.equal(gpu_v[b, h, :n_kept].cpu(), c["values"][b, h, p]), (name, b, h)


@gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_compress_equals_the_cpu_path_paged(dtype):
    tol = 1e-4 if dtype == "float32" else 2e-2
    for name in ("Knorm", "SnapKV", "ExpectedAttention", "AdaKV(ExpectedAttention)"):
        press = _presses()[name]
        c = _case(dtype, seed=1)
        cpu_cache = _paged(c, LENGTHS, "cpu")
        gpu_cache = _paged(c, LENGTHS, "cuda")
        kvc.compress(press, _observation(c, "cpu"), cpu_cache)
        kvc.compress(press, _observation(c, "cuda"), gpu_cache)
        assert torch.equal(torch.as_tensor(cpu_cache.lengths), gpu_cache.lengths.cpu()), name
        # Same pages given back, read from the device.
        assert sorted(cpu_cache.released_pages().tolist()) == sorted(gpu_cache.released_pages().tolist()), name
        assert cpu_cache.memory_report() == gpu_cache.memory_report(), name
        # The kept keys, read through the (shared) table, equal the CPU's slot by slot (float32: the
        # kept sets of these cases agree exactly).
        if dtype == "float32":
            kc, kg, table = cpu_cache._tensors[0], gpu_cache._tensors[0].cpu(), cpu_cache._tensors[2]
            for b in range(B):
                for h in range(KV):
                    for s in range(int(cpu_cache.lengths[b, h])):
                        page = int(table[b, s // 16])
                        assert torch.equal(kc[page, s % 16, h], kg[page, s % 16, h]), (name, b, h, s)


@gpu
def test_cuda_calls_run_on_the_callers_stream_and_reuse_one_device_workspace():
    c = _case("float16")
    press = kvc.ExpectedAttentionPress(0.5, use_covariance=False)
    ref_cache, _, _, ref_pos = _strided(c, LENGTHS, "cuda")
    kvc.compress(press, _observation(c, "cuda"), ref_cache)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):  # torch's current stream
        cache, _, _, pos = _strided(c, LENGTHS, "cuda")
        kvc.compress(press, _observation(c, "cuda"), cache)
    assert torch.equal(cache.lengths, ref_cache.lengths) and torch.equal(pos, ref_pos)
    cache, _, _, pos = _strided(c, LENGTHS, "cuda")
    torch.cuda.synchronize()
    kvc.compress(press, _observation(c, "cuda"), cache, stream=side)  # an explicit stream
    assert torch.equal(cache.lengths, ref_cache.lengths) and torch.equal(pos, ref_pos)
    native = press.native
    for _ in range(4):
        cache, _, _, _ = _strided(c, LENGTHS, "cuda")
        kvc.compress(press, _observation(c, "cuda"), cache, stream=side.cuda_stream)
    assert native.cuda_workspace_allocations == 1
    assert native.cuda_workspace_capacity(0) == kvc.workspace_bytes(press, _observation(c, "cuda"), cache)
    assert native.workspace_allocations == 0  # the host workspace was never needed


@gpu
def test_cuda_errors_name_the_press_the_tensor_and_the_device():
    c = _case("float32")
    cache, k, _, _ = _strided(c, LENGTHS, "cuda")
    original = k.clone()
    raises(lambda: kvc.compress(kvc.ObservedAttentionPress(0.5), _observation(c, "cuda"), cache),
           "ObservedAttentionPress has no CUDA kernels and the cache is on cuda:0", "KnormPress")
    raises(lambda: kvc.compress(kvc.CriticalKVPress(kvc.KnormPress(0.5)), None, cache), "CriticalKVPress has no CUDA")
    raises(lambda: kvc.compress(kvc.SnapKVPress(0.5, window_size=W), _observation(c, "cpu"), cache),
           "observation.queries is on cpu but the cache is on cuda:0")
    raises(lambda: kvc.ThinKPress(0.5, window_size=W).compress_keys(_observation(c, "cuda"), cache),
           "ThinKPress runs on the CPU only; the cache is on cuda:0")
    # A NaN is found on the device: the call raises and the cache is unchanged.
    k[0, 1, 5, 3] = float("nan")
    original[0, 1, 5, 3] = float("nan")
    lengths = cache.lengths.clone()
    raises(lambda: kvc.compress(kvc.KnormPress(0.5), None, cache), "non-finite score nan")
    assert torch.equal(cache.lengths, lengths) and torch.equal(k.isnan(), original.isnan())
    assert torch.equal(torch.nan_to_num(k), torch.nan_to_num(original))
    # A length beyond the capacity, given after the cache was made: found on the device.
    cache2, _, _, _ = _strided(c, LENGTHS, "cuda")
    cache2.lengths[1, 2] = N + 1
    raises(lambda: kvc.compress(kvc.KnormPress(0.5), None, cache2), f"lengths[6] = {N + 1} is outside [0, capacity]")
    # Lengths beyond the capacity when the cache is made: checked on a host copy.
    raises(lambda: kvc.KVCache(k.clone(), k.clone() + 1, torch.full((B, KV), N + 1, dtype=torch.int32, device="cuda")),
           "outside [0, capacity")
