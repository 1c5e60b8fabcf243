"""The CUDA kernels of the CuPy backend: compile checks, and correctness against references.

Three layers:

* CPU-only, always: importing the CUDA modules never imports CuPy; the probe never raises;
  every kernel compiles with NVRTC for sm_80 and sm_90 without spills (skipped with a reason
  when CuPy/NVRTC are not installed), and the compile gate itself catches errors and spills.
* ``cb`` = "cuda" (``pytest.mark.gpu``, skipped unless ``probe_cuda()`` is true): the real
  ``CupyBackend`` on a GPU, against a float64 NumPy reference and the NumPy twin.
* ``cb`` = "emu": the same tests with the same ``CupyBackend`` code over ``tests/cuda_emu.py``,
  which runs the CUDA sources as C++ on the CPU (skipped without g++). It checks the kernels'
  logic and the wrappers' argument passing on machines without a GPU; it is not a substitute
  for the GPU run (no flush-to-zero, no real memory model, no timing).
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from nnx.backends import cuda_kernels as ck
from nnx.backends import nvrtc_check
from nnx.backends.cuda_probe import probe_cuda

try:
    from tests import cuda_emu
except ImportError:  # pytest's rootdir-relative import
    import cuda_emu

BIG = 2 ** 20 + 3
SIZES = [1, 31, 33, BIG]
DTYPES = [np.float16, np.float32, np.float64]
CE_SHAPES = [(1, 1), (33, 31), (256, 1023), (128, 1025), (4096, 10), (8, 32000), (3, 131072)]

# (rtol, atol) against the float64 reference. float32 atol covers the GPU's flush-to-zero of
# float32 subnormals (|y| < 1.2e-38), e.g. sigmoid(-100) = 3.7e-44 -> 0.
REF_TOL = {np.float16: (2e-3, 1e-4), np.float32: (1e-5, 1e-37), np.float64: (1e-12, 1e-300)}
# The NumPy twin computes float16 elementwise ops in float16 steps (several roundings).
TWIN_TOL = {np.float16: (5e-3, 2e-4), np.float32: (1e-5, 1e-37), np.float64: (1e-12, 1e-300)}


def close(got, want, tol, what=""):
    rtol, atol = tol
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64),
                               np.asarray(want, dtype=np.float64),
                               rtol=rtol, atol=atol, err_msg=what)


def bits(a):
    a = np.ascontiguousarray(a)
    return a.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


@pytest.fixture(scope="module")
def nb():
    from nnx.backends.numpy_backend import NumpyBackend

    return NumpyBackend()


# ============================================================================ CPU-only checks
def test_importing_cuda_modules_never_imports_cupy():
    code = ("import sys; import nnx.backends.cuda_kernels, nnx.backends.cupy_backend, "
            "nnx.backends.cuda_probe, nnx.backends.nvrtc_check; "
            "assert 'cupy' not in sys.modules, 'cupy imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_kernel_registry_is_consistent():
    names = [k for ks in ck.KERNELS.values() for k in ks]
    assert len(names) == len(set(names))
    for mod, kernels in ck.KERNELS.items():
        src = ck.SOURCES[mod]
        assert src.count('extern "C" __global__') == len(kernels), mod
        for k in kernels:
            assert k.startswith("nnx_") and f"\n{k}(" in src, k
            assert ck.kernel_module(k) == mod
    assert ck.ce_warp_vpt(1) == 1 and ck.ce_warp_vpt(33) == 2 and ck.ce_warp_vpt(1024) == 32
    assert ck.ce_warp_vpt(1025) == 0


def test_probe_never_raises_and_is_cached():
    ok, why = probe_cuda()
    assert isinstance(ok, bool) and isinstance(why, str) and why
    assert probe_cuda() == (ok, why)


def test_probe_without_cupy(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "cupy" else real(name, *a))
    assert probe_cuda.__wrapped__() == (False, "CuPy is not installed")


def test_probe_times_out_instead_of_hanging(monkeypatch):
    import importlib.util

    if importlib.util.find_spec("cupy") is None:
        pytest.skip("CuPy is not installed: the probe answers without a child process")
    monkeypatch.setenv("NNX_CUDA_PROBE_TIMEOUT", "0.01")
    ok, why = probe_cuda.__wrapped__()
    assert not ok and "timed out" in why


def _nvrtc_or_skip():
    try:
        nvrtc_check.load_nvrtc()
    except nvrtc_check.NvrtcUnavailable as e:
        pytest.skip(f"CuPy/NVRTC not installed: {e}")


def test_every_kernel_compiles_with_nvrtc_without_spills():
    _nvrtc_or_skip()
    results = nvrtc_check.check(("sm_80", "sm_90"))
    problems = nvrtc_check.failures(results)
    assert not problems, "\n".join(problems)
    reported = {(k.kernel, k.arch) for r in results for k in r.kernels if k.registers}
    expected = {(k, a) for ks in ck.KERNELS.values() for k in ks for a in ("sm_80", "sm_90")}
    assert reported == expected


def test_nvrtc_gate_catches_errors_and_spills(monkeypatch):
    _nvrtc_or_skip()
    bad = 'extern "C" __global__ void nnx_broken(float* y) { y[0] = undefined_name; }\n'
    # Stores at a run-time index put the array in local memory: a stack frame.
    local = ('extern "C" __global__ void nnx_local(float* y, int i) { float a[64]; '
             'for (int k = 0; k < 64; ++k) a[(k * i) & 63] = y[k]; y[0] = a[i & 63]; }\n')
    # 96 live values under a 32-register cap (1024 threads, 2 blocks per SM): real spills.
    spill = ('extern "C" __global__ void __launch_bounds__(1024, 2) nnx_spill(float* y) {\n'
             '  float v[96];\n#pragma unroll\n'
             '  for (int k = 0; k < 96; ++k) v[k] = y[threadIdx.x + 1024 * k];\n'
             '  float s = 0.f;\n#pragma unroll\n'
             '  for (int k = 0; k < 96; ++k) s += v[k] * v[95 - k] / (v[(k + 7) % 96] + 1.f);\n'
             '#pragma unroll\n'
             '  for (int k = 0; k < 96; ++k) y[threadIdx.x + 1024 * k] = v[k] * s;\n}\n')
    for mod, src, name in (("t_broken", bad, "nnx_broken"), ("t_local", local, "nnx_local"),
                           ("t_spill", spill, "nnx_spill")):
        monkeypatch.setitem(ck.SOURCES, mod, src)
        monkeypatch.setitem(ck.KERNELS, mod, (name,))
    results = nvrtc_check.check(("sm_90",), modules=["t_broken", "t_local", "t_spill"])
    problems = nvrtc_check.failures(results)
    assert len(problems) == 3, problems
    assert any("compile error" in p and "undefined_name" in p for p in problems)
    assert any("nnx_local" in p and "stack frame" in p for p in problems)
    assert any("nnx_spill" in p and "spills" in p for p in problems)


def test_nvrtc_check_cli_missing_nvrtc(monkeypatch, capsys):
    def missing():
        raise nvrtc_check.NvrtcUnavailable("ModuleNotFoundError: No module named 'cupy'")

    monkeypatch.setattr(nvrtc_check, "load_nvrtc", missing)
    assert nvrtc_check.main(["--allow-missing"]) == 0
    assert "skipped: CuPy/NVRTC not installed" in capsys.readouterr().out
    assert nvrtc_check.main([]) == 2


def test_ptxas_log_parsing():
    log = ("ptxas info    : Compiling entry function 'nnx_a' for 'sm_90'\n"
           "ptxas info    : Function properties for nnx_a\n"
           "ptxas         .     8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads\n"
           "ptxas info    : Used 80 registers, used 1 barriers, 256 bytes smem\n")
    rep = nvrtc_check.parse_ptxas(log, "m", "sm_90")["nnx_a"]
    assert (rep.registers, rep.stack, rep.spill_stores, rep.spill_loads, rep.smem) == (80, 8, 4, 4, 256)
    assert not rep.ok


# ============================================================================ backends under test
def _real_backend():
    ok, why = probe_cuda()
    if not ok:
        pytest.skip(f"no usable CUDA device: {why}")
    from nnx.backends.cupy_backend import CupyBackend

    return CupyBackend(0)


@pytest.fixture(scope="module", params=[pytest.param("cuda", marks=pytest.mark.gpu), "emu"])
def cb(request):
    """A CupyBackend: on the GPU ("cuda") or over the CPU emulation of the kernels ("emu")."""
    if request.param == "cuda":
        yield _real_backend()
        return
    if not cuda_emu.compiler_available():
        pytest.skip("no C++ compiler for the CUDA emulator")
    with cuda_emu.emulated_backend() as backend:
        yield backend


class Launches:
    """Counts launches of named kernels during a block."""

    def __enter__(self):
        self.before = dict(ck.launch_counts)
        return self

    def __exit__(self, *exc):
        self.delta = {k: v - self.before.get(k, 0) for k, v in ck.launch_counts.items()
                      if v != self.before.get(k, 0)}


def nan_like(cb, shape, dtype):
    return cb.xp.full(shape, np.nan, dtype=dtype)


# ------------------------------------------------------------------ references (float64)
def ref_sigmoid(x):
    x = np.asarray(x, np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


REF = {
    "sigmoid_fwd": lambda a: ref_sigmoid(a[0]),
    "sigmoid_bwd": lambda a: a[1] * a[0] * (1.0 - a[0]),
    "relu_fwd": lambda a: np.where(a[0] > 0, a[0], 0.0),
    "relu_bwd": lambda a: np.where(a[0] > 0, a[1], 0.0),
    "leaky_relu_fwd": lambda a: np.where(a[0] >= 0, a[0], 0.1 * a[0]),
    "leaky_relu_bwd": lambda a: np.where(a[0] > 0, a[1], 0.1 * a[1]),
}
N_INPUTS = {"sigmoid_fwd": 1, "relu_fwd": 1, "leaky_relu_fwd": 1,
            "sigmoid_bwd": 2, "relu_bwd": 2, "leaky_relu_bwd": 2}


def call_op(backend, op, arrays, out=None):
    if op.startswith("leaky"):
        return getattr(backend, op)(*arrays, 0.1, out=out)
    return getattr(backend, op)(*arrays, out=out)


def ew_inputs(op, n, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 4.0, n)
    x[: min(n, 3)] = [0.0, -0.0, 1.5][: min(n, 3)]
    if op == "sigmoid_bwd":
        x = ref_sigmoid(x)  # the saved output y
    arrays = [x.astype(dtype)]
    if N_INPUTS[op] == 2:
        arrays.append(rng.normal(0.0, 1.0, n).astype(dtype))
    return arrays


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("op", list(REF))
def test_elementwise(cb, nb, op, n, dtype):
    host = ew_inputs(op, n, dtype)
    dev = [cb.asarray(a) for a in host]
    out = nan_like(cb, (n,), dtype)
    with Launches() as L:
        res = call_op(cb, op, dev, out=out)
    assert res is out and res.dtype == dtype
    assert L.delta == {f"nnx_{op}_{ck.DTYPE_SUFFIX[np.dtype(dtype).name]}": 1}
    got = cb.to_host(res)
    close(got, REF[op]([a.astype(np.float64) for a in host]), REF_TOL[dtype], op)
    close(got, call_op(nb, op, host), TWIN_TOL[dtype], f"{op} vs NumPy twin")
    fresh = cb.to_host(call_op(cb, op, dev))  # out=None allocates
    assert np.array_equal(bits(fresh), bits(got)), "two runs differ"


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=lambda d: d.__name__)
@pytest.mark.parametrize("op", ["sigmoid_fwd", "sigmoid_bwd", "leaky_relu_bwd"])
def test_elementwise_strided(cb, op, dtype):
    n = 1001
    host = [np.repeat(a, 2) for a in ew_inputs(op, n, dtype, seed=1)]
    dev = [cb.asarray(a)[::2] for a in host]  # strided views of the inputs
    want = REF[op]([a[::2].astype(np.float64) for a in host])
    base = nan_like(cb, (3 * n,), dtype)
    out = base[::3]  # strided output
    call_op(cb, op, dev, out=out)
    got = cb.to_host(base)
    close(got[::3], want, REF_TOL[dtype], op)
    assert np.isnan(got[1::3]).all() and np.isnan(got[2::3]).all(), "wrote outside the view"
    # in place on a strided view
    x = cb.asarray(host[0])
    view = x[::2]
    call_op(cb, op, [view] + dev[1:], out=view)
    got = cb.to_host(x)
    close(got[::2], want, REF_TOL[dtype], f"{op} in place")
    assert np.array_equal(got[1::2], host[0][1::2])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_sigmoid_extremes(cb, nb, dtype):
    x = np.array([-1000, -100, -88, -30, -20, -1, -0.0, 0, 1, 20, 30, 100, 1000], dtype)
    got = cb.to_host(cb.sigmoid_fwd(cb.asarray(x)))
    assert np.isfinite(got).all()
    close(got, ref_sigmoid(x), REF_TOL[dtype])
    if dtype == np.float32:
        assert got[4] > 0 and abs(got[4] / ref_sigmoid(-20.0) - 1) < 1e-5  # not 0 at x = -20
    assert got[0] == 0 and got[-1] == 1
    y = cb.sigmoid_fwd(cb.asarray(x))
    g = cb.to_host(cb.sigmoid_bwd(y, cb.asarray(np.ones_like(x))))
    assert np.isfinite(g).all() and (g >= 0).all()


def test_relu_bwd_in_place(cb, nb):
    """``relu_bwd(y, gy, out=gy)`` is allowed (LinearChain reuses its own gradient arrays)."""
    x = np.array([[-2.0, -0.0, 0.0, 3.0], [1.0, -1.0, 5.0, -7.0]], np.float32)
    gy_host = np.array([[1.0, 2.0, 4.0, 8.0], [np.nan, np.inf, 3.0, 2.0]], np.float32)
    want = np.where(x > 0, gy_host, 0.0)
    for b in (cb, nb):
        y = b.asarray(x.copy())
        aux = b.bias_act_(y, None, "relu")
        for a in (aux, None):
            gy = b.asarray(gy_host.copy())
            got = b.relu_bwd(y, gy, out=gy, aux=a)
            np.testing.assert_array_equal(b.to_host(gy), want)
            np.testing.assert_array_equal(b.to_host(got), want)
    gy = gy_host.copy(order="F")  # the strided fallback of the twin
    nb.relu_bwd(x, gy, out=gy)
    np.testing.assert_array_equal(gy, want)  # NaN and inf gy still give 0 where y <= 0


def test_relu_and_leaky_relu_at_zero(cb):
    x = cb.asarray(np.array([-2.0, -0.0, 0.0, 3.0], np.float32))
    gy = cb.asarray(np.array([1.0, 2.0, 4.0, 8.0], np.float32))
    assert cb.to_host(cb.relu_fwd(x)).tolist() == [0, 0, 0, 3]
    assert cb.to_host(cb.relu_bwd(x, gy)).tolist() == [0, 0, 0, 8]  # gradient at 0 is 0
    assert cb.to_host(cb.leaky_relu_fwd(x, 0.5)).tolist() == [-1, 0, 0, 3]
    np.testing.assert_array_equal(cb.to_host(cb.leaky_relu_bwd(x, gy, 0.5)), [0.5, 1, 2, 8])


REF_ACT = {
    "linear": lambda v: v,
    "sigmoid": ref_sigmoid,
    "relu": lambda v: np.where(v > 0, v, 0.0),
    "leaky_relu": lambda v: np.where(v >= 0, v, 0.2 * v),
    "tanh": np.tanh,
}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("shape", [(1, 1), (33, 31), (128, 1025), (4096, 10)])
@pytest.mark.parametrize("activation", list(REF_ACT))
def test_bias_act(cb, nb, activation, shape, dtype):
    rng = np.random.default_rng(2)
    y = rng.normal(0, 3, shape).astype(dtype)
    b = rng.normal(0, 1, shape[1]).astype(dtype)
    want = REF_ACT[activation](y.astype(np.float64) + b.astype(np.float64))
    if dtype == np.float16:  # the sum is rounded to float16 first in the twin, not the kernel
        want = REF_ACT[activation]((y.astype(np.float32) + b.astype(np.float32)).astype(np.float64))
    d = cb.asarray(y)
    with Launches() as L:
        cb.bias_act_(d, cb.asarray(b), activation, 0.2)
    assert L.delta == {f"nnx_bias_{activation}_{ck.DTYPE_SUFFIX[np.dtype(dtype).name]}": 1}
    got = cb.to_host(d)
    close(got, want, REF_TOL[dtype], activation)
    twin = y.copy()
    nb.bias_act_(twin, b, activation, 0.2)
    close(got, twin, TWIN_TOL[dtype], f"{activation} vs twin")


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64], ids=lambda d: d.__name__)
def test_twin_relu_mask_is_exactly_y_positive(nb, dtype):
    """The ReLU mask bias_act_ hands to the backward is exactly y > 0 after the bias, whether
    the bias holds -0.0 (the general path) or not (the one-pass-shorter path), and y ends +0.0
    wherever it is not positive."""
    rng = np.random.default_rng(4)
    z = rng.normal(0, 2, (16, 8)).astype(dtype)
    z[0, :] = 0.0  # exact zeros and -0.0 before the bias
    z[1, :] = -0.0
    z[2, :4] = np.nan
    for b in (rng.normal(0, 1, 8).astype(dtype), np.zeros(8, dtype), np.full(8, -0.0, dtype)):
        y = z.copy()
        mask = nb.bias_act_(y, b, "relu")
        s = z + b
        keep = np.where(np.isnan(s), ~np.signbit(s), s > 0)  # a +NaN passes, as in PyTorch
        np.testing.assert_array_equal(mask != 0, keep)
        np.testing.assert_array_equal(y[keep], s[keep])
        assert not np.signbit(y[~keep]).any() and (y[~keep] == 0).all()  # +0.0, never -0.0
        g = rng.normal(0, 1, z.shape).astype(dtype)
        np.testing.assert_array_equal(nb.relu_bwd(y, g.copy(), aux=mask), np.where(keep, g, 0))


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_bias_act_no_bias_and_strided(cb, activation):
    rng = np.random.default_rng(3)
    y = rng.normal(0, 2, (37, 66)).astype(np.float32)
    d = cb.asarray(y)
    cb.bias_act_(d, None, activation)
    close(cb.to_host(d), REF_ACT[activation](y.astype(np.float64)), (1e-6, 1e-7))
    b = rng.normal(0, 1, 33).astype(np.float32)
    d = cb.asarray(y)
    view = d[:, ::2]  # (37, 33) strided
    cb.bias_act_(view, cb.asarray(b), activation)
    got = cb.to_host(d)
    close(got[:, ::2], REF_ACT[activation](y[:, ::2].astype(np.float64) + b), (1e-6, 1e-7))
    np.testing.assert_array_equal(got[:, 1::2], y[:, 1::2])


# ------------------------------------------------------------------ softmax cross-entropy
def ref_ce(logits, labels, ignore_index=-100, reduction="mean"):
    x = np.asarray(logits, np.float64)
    n, c = x.shape
    lab = np.asarray(labels, np.int64)
    valid = (lab != ignore_index) & (lab >= 0) & (lab < c)
    m = x.max(axis=1, keepdims=True) if c else np.zeros((n, 1))
    m[~np.isfinite(m)] = 0.0
    lse = m[:, 0] + np.log(np.exp(x - m).sum(axis=1))
    safe = np.where(valid, lab, 0)
    rows = np.arange(n)
    loss = np.where(valid, lse - x[rows, safe] if c else 0.0, 0.0)
    count = int(valid.sum())
    scale = 1.0 / max(count, 1) if reduction == "mean" else 1.0
    grad = np.exp(x - lse[:, None])
    grad[rows[valid], lab[valid]] -= 1.0
    grad *= scale
    grad[~valid] = 0.0
    if reduction == "none":
        return loss, grad, scale
    return loss.sum() * (scale if reduction == "mean" else 1.0), grad, scale


CE_TOL = {  # (loss rtol, loss atol, grad rtol, grad atol per unit of scale)
    np.float16: (3e-3, 2e-3, 3e-3, 6e-4),
    np.float32: (2e-5, 1e-6, 1e-4, 2e-6),
    np.float64: (1e-10, 1e-12, 1e-9, 1e-14),
}


def ce_inputs(shape, dtype, label_dtype, seed=0, ignore_every=5):
    rng = np.random.default_rng(seed)
    n, c = shape
    x = rng.normal(0, 3, shape).astype(dtype)
    t = rng.integers(0, c, n).astype(label_dtype)
    if ignore_every and n > 1:
        t[::ignore_every] = -100
    return x, t


def check_ce(cb, nb, x, t, reduction, what, twin=True, **kw):
    dtype = x.dtype.type
    lr, la, gr, ga = CE_TOL[dtype]
    loss, grad, bad = cb.softmax_cross_entropy(cb.asarray(x), cb.asarray(t),
                                               reduction=reduction, **kw)
    assert loss.dtype == x.dtype and grad.dtype == x.dtype and grad.shape == x.shape
    assert loss.shape == ((x.shape[0],) if reduction == "none" else ())
    assert int(cb.to_host(bad)) == 0
    loss_h, grad_h = cb.to_host(loss), cb.to_host(grad)
    want_loss, want_grad, scale = ref_ce(x, t, reduction=reduction, **kw)
    close(loss_h, want_loss, (lr, la), f"{what}: loss")
    close(grad_h, want_grad, (gr, ga * scale), f"{what}: grad")
    if twin:
        tl, tg, tbad = nb.softmax_cross_entropy(x, t, reduction=reduction, **kw)
        assert tbad is None
        close(loss_h, tl, (lr, la), f"{what}: loss vs twin")
        close(grad_h, tg, (gr, ga * scale), f"{what}: grad vs twin")
    return loss_h, grad_h


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("shape", CE_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_softmax_ce(cb, nb, shape, dtype):
    for i, reduction in enumerate(("mean", "sum", "none")):
        label_dtype = (np.int32, np.int64)[(i + shape[1]) % 2]
        x, t = ce_inputs(shape, dtype, label_dtype, seed=i)
        # Fill the memory pool with NaN so that an unwritten gradient element shows up.
        junk = nan_like(cb, x.shape, dtype)
        del junk
        check_ce(cb, nb, x, t, reduction, f"{shape} {reduction} {np.dtype(label_dtype)}")


@pytest.mark.parametrize("label_dtype", [np.int32, np.int64], ids=["i32", "i64"])
@pytest.mark.parametrize("shape", [(33, 31), (8, 32000)], ids=["warp", "block"])
def test_softmax_ce_label_dtypes_and_fused_path(cb, nb, shape, label_dtype):
    x, t = ce_inputs(shape, np.float32, label_dtype)
    lt = ck.LABEL_SUFFIX[np.dtype(label_dtype).name]
    row = (f"nnx_softmax_ce_warp{ck.ce_warp_vpt(shape[1])}_f32_{lt}"
           if ck.ce_warp_vpt(shape[1]) else f"nnx_softmax_ce_block_f32_{lt}")
    with Launches() as L:
        check_ce(cb, nb, x, t, "mean", "labels", twin=False)
    assert L.delta == {f"nnx_ce_count_{lt}": 1, row: 1, "nnx_ce_reduce_f32": 1}
    check_ce(cb, nb, x, t, "mean", "labels vs twin")


@pytest.mark.parametrize("cols", [2, 2000], ids=["warp", "block"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_softmax_ce_extreme_logits(cb, nb, dtype, cols):
    x = np.zeros((3, cols), dtype)
    x[0, :2] = [-1000, 1] if dtype != np.float16 else [-60000, 1]
    x[1, :2] = [1000, -1000] if dtype != np.float16 else [60000, -60000]
    x[2, 0] = 100
    t = np.array([0, 0, 1], np.int64)
    loss, grad = check_ce(cb, nb, x, t, "none", "extreme")
    assert np.isfinite(loss).all() and np.isfinite(grad).all()
    if cols == 2:
        assert float(loss[0]) == pytest.approx(float(x[0, 1]) - float(x[0, 0]), rel=1e-3)
    assert float(loss[1]) == 0.0


@pytest.mark.parametrize("cols", [7, 3000], ids=["warp", "block"])
def test_softmax_ce_ignored_and_out_of_range_labels(cb, cols):
    n = 6
    rng = np.random.default_rng(4)
    # NaN all around the logits: a read outside them would poison the loss.
    buf = np.full((n + 2) * cols, np.nan, np.float32)
    buf[cols:-cols] = rng.normal(0, 1, n * cols)
    d = cb.asarray(buf)[cols:-cols].reshape(n, cols)
    x = buf[cols:-cols].reshape(n, cols)
    for label_dtype in (np.int32, np.int64):
        t = np.array([1, cols, -5, -100, 2, 10 ** 6 if label_dtype == np.int64 else -7],
                     label_dtype)
        loss, grad, bad = cb.softmax_cross_entropy(d, cb.asarray(t))
        assert int(cb.to_host(bad)) != 0
        keep = np.array([1, 0, 0, 0, 1, 0], bool)
        want, want_grad, _ = ref_ce(x[keep], t[keep])
        close(cb.to_host(loss), want, (1e-5, 1e-6))
        g = cb.to_host(grad)
        assert (g[~keep] == 0).all()
        close(g[keep], want_grad, (1e-4, 1e-6))


@pytest.mark.parametrize("cols", [5, 1500], ids=["warp", "block"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_softmax_ce_all_ignored_gives_zero(cb, reduction, cols):
    x = np.random.default_rng(5).normal(0, 1, (4, cols)).astype(np.float32)
    x[1] = -np.inf  # an ignored row of -inf must not poison anything
    t = np.full(4, -100, np.int64)
    loss, grad, bad = cb.softmax_cross_entropy(cb.asarray(x), cb.asarray(t), reduction=reduction)
    assert float(cb.to_host(loss)) == 0.0 and int(cb.to_host(bad)) == 0
    assert (cb.to_host(grad) == 0).all()


def test_softmax_ce_custom_ignore_index_and_no_grad(cb, nb):
    x, t = ce_inputs((50, 40), np.float64, np.int64, ignore_every=0)
    t[::3] = 7  # ignore_index inside [0, C)
    check_ce(cb, nb, x, t, "mean", "ignore_index=7", ignore_index=7)
    loss, grad, _ = cb.softmax_cross_entropy(cb.asarray(x), cb.asarray(t), ignore_index=7,
                                             need_grad=False)
    assert grad is None
    close(cb.to_host(loss), ref_ce(x, t, ignore_index=7)[0], (1e-10, 1e-12))


def test_softmax_ce_minus_inf_logits(cb):
    # -inf logits (masked classes) add nothing; an all -inf row (non-finite max, treated as 0)
    # that is ignored stays 0. Same answers from the warp and the block kernels.
    for cols in (8, 2048):
        x = np.zeros((3, cols), np.float32)
        x[0] = -np.inf
        x[2, ::2] = -np.inf
        t = np.array([-100, 3, 1], np.int64)
        loss, grad, _ = cb.softmax_cross_entropy(cb.asarray(x), cb.asarray(t), reduction="none")
        lh, gh = cb.to_host(loss), cb.to_host(grad)
        assert lh[0] == 0 and (gh[0] == 0).all()
        assert lh[1] == pytest.approx(np.log(cols), rel=1e-6)
        assert lh[2] == pytest.approx(np.log(cols // 2), rel=1e-6)
        assert (gh[2, ::2] == 0).all() and np.isfinite(gh).all()
        close(gh[2, 1::2].sum(), 0.0, (0, 1e-6))


@pytest.mark.parametrize("shape", [(4096, 10), (256, 1023), (8, 32000)])
def test_softmax_ce_bit_identical_runs(cb, shape):
    x, t = ce_inputs(shape, np.float32, np.int64)
    a = cb.softmax_cross_entropy(cb.asarray(x), cb.asarray(t))
    b = cb.softmax_cross_entropy(cb.asarray(x), cb.asarray(t))
    for u, v in zip(a[:2], b[:2]):
        assert np.array_equal(bits(cb.to_host(u)), bits(cb.to_host(v)))


# ------------------------------------------------------------------ optimizers
def rnd_state(n, dtype, seed=6):
    rng = np.random.default_rng(seed)
    p = rng.normal(0, 1, n).astype(dtype)
    g = rng.normal(0, 1, n).astype(dtype)
    b = rng.normal(0, 0.5, n).astype(dtype)
    v = rng.uniform(0.1, 1.0, n).astype(dtype)
    return p, g, b, v


def storage_round(v, dtype):
    """float16 state is rounded to float16 before it is used (as PyTorch's float16 tensors)."""
    return v.astype(np.float16).astype(np.float64) if dtype == np.float16 else v


SGD_CASES = [
    dict(momentum=0.0),
    dict(momentum=0.9, first_step=True, weight_decay=1e-2),
    dict(momentum=0.9, dampening=0.1, weight_decay=1e-2),
    dict(momentum=0.9, nesterov=True),
]
# atol: a few ulps of the O(1) terms, which can cancel (e.g. momentum * buf + (1 - d) * g).
OPT_TOL = {np.float16: (2e-3, 3e-3), np.float32: (1e-6, 5e-7), np.float64: (1e-13, 1e-14)}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("n", [1, 33, BIG])
@pytest.mark.parametrize("case", range(len(SGD_CASES)))
def test_sgd_update(cb, nb, case, n, dtype):
    kw = dict(lr=0.1, **SGD_CASES[case])
    p, g, b, _ = rnd_state(n, dtype)
    has_m = kw["momentum"] != 0
    # float64 reference of the documented rule
    P, G, B = (a.astype(np.float64) for a in (p, g, b))
    d = G + kw.get("weight_decay", 0.0) * P
    if has_m:
        B = d if kw.get("first_step") else kw["momentum"] * B + (1 - kw.get("dampening", 0.0)) * d
        B = storage_round(B, dtype)
        d = d + kw["momentum"] * B if kw.get("nesterov") else B
    P = P - kw["lr"] * d
    dp, dg, db = cb.asarray(p), cb.asarray(g), cb.asarray(b) if has_m else None
    with Launches() as L:
        cb.sgd_update_(dp, dg, db, **kw)
    assert L.delta == {f"nnx_sgd_{ck.DTYPE_SUFFIX[np.dtype(dtype).name]}": 1}
    close(cb.to_host(dp), P, OPT_TOL[dtype], "param")
    if has_m:
        close(cb.to_host(db), B, OPT_TOL[dtype], "momentum buffer")
    tp, tb = p.copy(), b.copy() if has_m else None
    nb.sgd_update_(tp, g.copy(), tb, **kw)
    twin_tol = {np.float16: (5e-3, 2e-3), np.float32: (1e-5, 1e-6)}.get(dtype, OPT_TOL[dtype])
    close(cb.to_host(dp), tp, twin_tol, "param vs twin")
    assert np.array_equal(cb.to_host(dg), g), "grad modified"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("n", [1, 33, BIG])
@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
@pytest.mark.parametrize("step", [1, 10])
def test_adam_update(cb, nb, step, weight_decay, n, dtype):
    lr, b1, b2, eps = 1e-2, 0.9, 0.999, 1e-8
    p, g, m, v = rnd_state(n, dtype)
    P, G, M, V = (a.astype(np.float64) for a in (p, g, m, v))
    G = G + weight_decay * P
    M = storage_round(M + (1 - b1) * (G - M), dtype)
    V = storage_round(b2 * V + (1 - b2) * G * G, dtype)
    P = P - lr / (1 - b1 ** step) * M / (np.sqrt(V) / np.sqrt(1 - b2 ** step) + eps)
    dp, dg, dm, dv = (cb.asarray(a) for a in (p, g, m, v))
    with Launches() as L:
        cb.adam_update_(dp, dg, dm, dv, lr, b1, b2, eps, weight_decay, step)
    assert L.delta == {f"nnx_adam_{ck.DTYPE_SUFFIX[np.dtype(dtype).name]}": 1}
    tol = OPT_TOL[dtype]
    close(cb.to_host(dm), M, tol, "exp_avg")
    close(cb.to_host(dv), V, tol, "exp_avg_sq")
    close(cb.to_host(dp), P, tol, "param")
    tp, tm, tv = p.copy(), m.copy(), v.copy()
    nb.adam_update_(tp, g.copy(), tm, tv, lr, b1, b2, eps, weight_decay, step)
    twin_tol = {np.float16: (5e-3, 2e-3), np.float32: (1e-5, 1e-6)}.get(dtype, (1e-12, 1e-14))
    close(cb.to_host(dp), tp, twin_tol, "param vs twin")
    close(cb.to_host(dm), tm, twin_tol, "exp_avg vs twin")


def test_optimizer_updates_on_strided_views(cb):
    n = 101
    p, g, b, v = rnd_state(2 * n, np.float32)
    dp, dg, db = cb.asarray(p), cb.asarray(g), cb.asarray(b)
    cb.sgd_update_(dp[::2], dg[::2], db[::2], lr=0.1, momentum=0.9)
    P, B = cb.to_host(dp), cb.to_host(db)
    Bw = 0.9 * b[::2].astype(np.float64) + g[::2]
    close(B[::2], Bw, (1e-6, 1e-7))
    close(P[::2], p[::2] - 0.1 * Bw, (1e-6, 1e-7))
    assert np.array_equal(P[1::2], p[1::2]) and np.array_equal(B[1::2], b[1::2])
    dp, dm, dv = cb.asarray(p), cb.asarray(b), cb.asarray(v)
    cb.adam_update_(dp[1::2], dg[1::2], dm[1::2], dv[1::2], 1e-2, 0.9, 0.999, 1e-8, 0.0, 1)
    assert np.array_equal(cb.to_host(dp)[::2], p[::2])
    assert not np.array_equal(cb.to_host(dp)[1::2], p[1::2])


# ------------------------------------------------------------------ arrays and random numbers
def test_arrays_and_device(cb):
    assert cb.name == "cupy" and cb.device == "cuda:0"
    a = cb.asarray([1.0, 2.0], dtype=np.float32)
    assert cb.is_array(a)
    if cb.xp.ndarray is not np.ndarray:  # the emulation's arrays are NumPy arrays
        assert not cb.is_array(np.zeros(2))
    h = cb.to_host(a)
    assert isinstance(h, np.ndarray) and h.tolist() == [1.0, 2.0]
    with cb.use():
        pass
    cb.synchronize()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_random_numbers_reproducible(cb, dtype):
    cb.seed(123)
    a = cb.to_host(cb.uniform(-1.0, 2.0, (1000,), dtype))
    n = cb.to_host(cb.normal(1.0, 2.0, (1001,), dtype))
    perm = cb.permutation(50)
    m = cb.to_host(cb.dropout_mask((4000,), 0.25, dtype))
    cb.seed(123)
    assert np.array_equal(bits(a), bits(cb.to_host(cb.uniform(-1.0, 2.0, (1000,), dtype))))
    assert np.array_equal(bits(n), bits(cb.to_host(cb.normal(1.0, 2.0, (1001,), dtype))))
    assert np.array_equal(perm, cb.permutation(50))
    assert np.array_equal(bits(m), bits(cb.to_host(cb.dropout_mask((4000,), 0.25, dtype))))
    assert a.dtype == n.dtype == m.dtype == dtype
    assert isinstance(perm, np.ndarray) and perm.dtype == np.int64
    assert sorted(perm.tolist()) == list(range(50))
    assert a.min() >= -1.0 and a.max() <= 2.0 and abs(float(a.mean()) - 0.5) < 0.15
    assert abs(float(n.mean()) - 1.0) < 0.3
    assert set(np.unique(m).tolist()) <= {0.0, float(dtype(1 / 0.75))}
    assert abs(float((m != 0).mean()) - 0.75) < 0.05
