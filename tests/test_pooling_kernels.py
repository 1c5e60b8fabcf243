"""The pooling CUDA kernels of ``backends.pooling``: NVRTC compile, and each kernel against its
NumPy twin for every dtype, on a GPU ("cuda", ``pytest.mark.gpu``) or over the CPU emulation of
the kernels ("emu", ``tests/cuda_emu.py``); then pooling layers end to end on the emulated
CUDA path against the CPU."""
from __future__ import annotations

import sys

import numpy as np
import pytest

import nnx
import nnx.functional as F
from nnx import backends, nn
from nnx.backends import cuda_kernels as ck
from nnx.backends import nvrtc_check
from nnx.backends.cuda_probe import probe_cuda
from nnx.backends.numpy_backend import NumpyBackend
from nnx.backends.pooling import Window

try:
    from tests import cuda_emu
except ImportError:  # pytest's rootdir-relative import
    import cuda_emu

DTYPES = [np.float16, np.float32, np.float64]
POOL_MODULES = ("pooling_f16", "pooling_f32", "pooling_f64")
# Twin vs kernel: float16 sums run in float32 in both, rounded once at the end.
TOL = {np.float16: (1e-3, 1e-3), np.float32: (1e-6, 1e-6), np.float64: (1e-13, 1e-13)}

WINDOWS = [
    Window(2, 2, 2, 2),                            # tiles (the CPU fast path)
    Window(3, 3, 3, 3),
    Window(3, 3, 2, 2, 1, 1),                      # overlapping, padded
    Window(3, 3, 1, 1, 1, 1),                      # stride 1
    Window(3, 2, 2, 1, 1, 1, 2, 1, True),          # dilated, ceil mode
    Window(2, 2, 2, 2, 1, 1, ceil_mode=True),      # ceil mode, padding
    Window(3, 3, 2, 2, 1, 1, count_include_pad=False),
    Window(2, 3, 2, 1, 1, 1, divisor_override=5),
    Window(1, 3, 1, 2, 0, 1),                      # a 1-d window
]
SHAPES = [(2, 3, 7, 9), (1, 2, 8, 8), (3, 5, 6)]
ADAPTIVE = [(1, 1), (3, 4), (7, 9), (5, 2), (8, 13)]


@pytest.fixture(scope="module")
def nb():
    return NumpyBackend()


def _nvrtc_or_skip():
    try:
        nvrtc_check.load_nvrtc()
    except nvrtc_check.NvrtcUnavailable as e:
        pytest.skip(f"CuPy/NVRTC not installed: {e}")


def test_pooling_family_is_registered():
    for mod in POOL_MODULES:
        assert mod in ck.SOURCES
        sfx = mod.rsplit("_", 1)[1]
        assert set(ck.KERNELS[mod]) == {f"nnx_{k}_{sfx}" for k in (
            "maxpool2d_fwd", "maxpool2d_bwd", "avgpool2d_fwd", "avgpool2d_bwd",
            "adaptive_avgpool2d_fwd", "adaptive_avgpool2d_bwd")}
        assert "atomic" not in ck.SOURCES[mod]  # the backwards gather: deterministic


def test_pooling_kernels_compile_with_nvrtc_without_spills():
    _nvrtc_or_skip()
    results = nvrtc_check.check(("sm_80", "sm_90"), modules=POOL_MODULES)
    problems = nvrtc_check.failures(results)
    assert not problems, "\n".join(problems)
    reported = {(k.kernel, k.arch) for r in results for k in r.kernels if k.registers}
    assert reported == {(k, a) for m in POOL_MODULES for k in ck.KERNELS[m]
                        for a in ("sm_80", "sm_90")}


# ============================================================================ kernels vs twins
@pytest.fixture(scope="module", params=[pytest.param("cuda", marks=pytest.mark.gpu), "emu"])
def cb(request):
    """A CupyBackend on the GPU ("cuda") or over the emulated kernels ("emu")."""
    if request.param == "cuda":
        ok, why = probe_cuda()
        if not ok:
            pytest.skip(f"no usable CUDA device: {why}")
        from nnx.backends.cupy_backend import CupyBackend

        yield CupyBackend(0)
        return
    if not cuda_emu.compiler_available():
        pytest.skip("no C++ compiler for the CUDA emulator")
    with cuda_emu.emulated_backend() as backend:
        yield backend


class Launches:
    def __enter__(self):
        self.before = dict(ck.launch_counts)
        return self

    def __exit__(self, *exc):
        self.delta = {k: v - self.before.get(k, 0) for k, v in ck.launch_counts.items()
                      if v != self.before.get(k, 0)}


def _data(shape, dtype, seed, ties=False):
    x = np.random.default_rng(seed).standard_normal(shape)
    return (np.round(x) if ties else x).astype(dtype)


def _close(got, want, dtype, what):
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64),
                               rtol=rtol, atol=atol, err_msg=what)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_max_pool_kernels_match_numpy_twin(cb, nb, dtype, shape):
    sfx = ck.DTYPE_SUFFIX[np.dtype(dtype).name]
    for i, win in enumerate(WINDOWS):
        for ties in (False, True):
            x = _data(shape, dtype, i, ties)
            y, arg = nb.max_pool2d_forward(x, win)
            with Launches() as fl:
                yc, argc = cb.max_pool2d_forward(cb.asarray(x), win)
            what = f"{win} ties={ties}"
            assert fl.delta == {f"nnx_maxpool2d_fwd_{sfx}": 1}
            assert yc.dtype == dtype and yc.shape == y.shape
            np.testing.assert_array_equal(cb.to_host(yc), y, err_msg=what)  # a max is exact
            np.testing.assert_array_equal(cb.to_host(argc), arg, err_msg=what)
            gy = _data(y.shape, dtype, 100 + i)
            gx = nb.max_pool2d_backward(gy, arg, win, shape[-2:])
            with Launches() as bl:
                gxc = cb.max_pool2d_backward(cb.asarray(gy), argc, win, shape[-2:])
            assert bl.delta == {f"nnx_maxpool2d_bwd_{sfx}": 1}
            assert gxc.dtype == dtype and gxc.shape == x.shape
            _close(cb.to_host(gxc), gx, dtype, what)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_avg_pool_kernels_match_numpy_twin(cb, nb, dtype, shape):
    sfx = ck.DTYPE_SUFFIX[np.dtype(dtype).name]
    for i, win in enumerate(w for w in WINDOWS if w.dh == w.dw == 1):
        x = _data(shape, dtype, i)
        with Launches() as fl:
            yc = cb.avg_pool2d_forward(cb.asarray(x), win)
        assert fl.delta == {f"nnx_avgpool2d_fwd_{sfx}": 1}
        y = nb.avg_pool2d_forward(x, win)
        assert yc.dtype == dtype and yc.shape == y.shape
        _close(cb.to_host(yc), y, dtype, str(win))
        gy = _data(y.shape, dtype, 100 + i)
        with Launches() as bl:
            gxc = cb.avg_pool2d_backward(cb.asarray(gy), win, shape[-2:])
        assert bl.delta == {f"nnx_avgpool2d_bwd_{sfx}": 1}
        _close(cb.to_host(gxc), nb.avg_pool2d_backward(gy, win, shape[-2:]), dtype, str(win))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_adaptive_avg_pool_kernels_match_numpy_twin(cb, nb, dtype):
    sfx = ck.DTYPE_SUFFIX[np.dtype(dtype).name]
    shape = (2, 3, 7, 9)
    for i, out in enumerate(ADAPTIVE):
        x = _data(shape, dtype, i)
        with Launches() as fl:
            yc = cb.adaptive_avg_pool2d_forward(cb.asarray(x), out)
        assert fl.delta == {f"nnx_adaptive_avgpool2d_fwd_{sfx}": 1}
        y = nb.adaptive_avg_pool2d_forward(x, out)
        assert yc.dtype == dtype and yc.shape == y.shape == shape[:2] + out
        _close(cb.to_host(yc), y, dtype, str(out))
        gy = _data(y.shape, dtype, 100 + i)
        with Launches() as bl:
            gxc = cb.adaptive_avg_pool2d_backward(cb.asarray(gy), shape[-2:])
        assert bl.delta == {f"nnx_adaptive_avgpool2d_bwd_{sfx}": 1}
        _close(cb.to_host(gxc), nb.adaptive_avg_pool2d_backward(gy, shape[-2:]), dtype, str(out))


@pytest.mark.parametrize("shape, win", [((2, 1, 9), Window(2, 2, 1, 1, 1, 1, 2, 2)),
                                        ((2, 4, 1), Window(2, 2, 2, 2, 1, 1, 2, 2, True))])
def test_max_pool_kernel_argmax_of_all_padding_windows(cb, nb, shape, win):
    # Regression: the kernel gave a window that lies all in the padding argmax 0, the CPU
    # (and PyTorch) its first row and column inside the input, so return_indices differed.
    x = _data(shape, np.float32, 0)
    y, arg = nb.max_pool2d_forward(x, win)
    assert np.isneginf(y).any()
    yc, argc = cb.max_pool2d_forward(cb.asarray(x), win)
    np.testing.assert_array_equal(cb.to_host(yc), y)
    np.testing.assert_array_equal(cb.to_host(argc), arg)
    gy = _data(y.shape, np.float32, 1)
    np.testing.assert_array_equal(cb.to_host(cb.max_pool2d_backward(cb.asarray(gy), argc, win,
                                                                    shape[-2:])),
                                  nb.max_pool2d_backward(gy, arg, win, shape[-2:]))


def test_kernels_take_strided_inputs(cb, nb):
    x = _data((2, 3, 8, 10), np.float32, 0)
    xs = cb.asarray(x)[:, :, :, ::2]  # a non-contiguous view
    win = Window(3, 3, 2, 2, 1, 1)
    yc, argc = cb.max_pool2d_forward(xs, win)
    y, arg = nb.max_pool2d_forward(x[:, :, :, ::2], win)
    np.testing.assert_array_equal(cb.to_host(yc), y)
    np.testing.assert_array_equal(cb.to_host(argc), arg)


# ============================================================================ end to end (emulated)
@pytest.fixture(scope="module")
def emu():
    """Device "emu": a CupyBackend over the emulated kernels, other array calls on NumPy."""
    if not cuda_emu.compiler_available():
        pytest.skip("no C++ compiler for the CUDA emulator")
    fake = cuda_emu.fake_cupy()
    for name in dir(np):
        if not name.startswith("__") and not hasattr(fake, name):
            setattr(fake, name, getattr(np, name))
    saved = sys.modules.get("cupy")
    cuda_emu.clear_kernel_caches()
    sys.modules["cupy"] = fake
    try:
        from nnx.backends.cupy_backend import CupyBackend

        backends.register_backend("emu", CupyBackend(0))
        yield "emu"
    finally:
        backends._backends.pop("emu", None)
        cuda_emu.clear_kernel_caches()
        if saved is None:
            sys.modules.pop("cupy", None)
        else:
            sys.modules["cupy"] = saved


def _run(device, dtype):
    """Outputs and input gradients of the pooling layers on ``device``."""
    rng = np.random.default_rng(0)
    x_host = np.round(rng.standard_normal((2, 3, 9, 8)) * 2).astype(dtype)  # with ties
    layers = [nn.MaxPool2d(2), nn.MaxPool2d(3, 2, 1, dilation=2, ceil_mode=True),
              nn.AvgPool2d(3, 2, 1, count_include_pad=False), nn.AdaptiveAvgPool2d((4, 3)),
              nn.AdaptiveAvgPool2d(1), nn.MaxPool1d(3, 2, 1)]
    results = []
    for layer in layers:
        x = nnx.tensor(x_host, device=device, dtype=np.dtype(dtype).name, requires_grad=True)
        inp = x if not isinstance(layer, nn.MaxPool1d) else x.reshape(2, 3, 72)
        y = layer(inp)
        w = nnx.tensor(rng.standard_normal(y.shape).astype(dtype), device=device, dtype=y.dtype)
        (y * w).sum().backward()
        results.append((y.numpy(), x.grad.numpy()))
    y, idx = F.max_pool2d(nnx.tensor(x_host, device=device, dtype=np.dtype(dtype).name), 3, 1,
                          1, return_indices=True)
    results.append((y.numpy(), idx.numpy()))
    return results


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_pooling_layers_on_the_emulated_cuda_path_match_the_cpu(emu, dtype):
    with Launches() as launches:
        on_emu = _run(emu, dtype)
    on_cpu = _run("cpu", dtype)
    kinds = {k.rsplit("_", 1)[0] for k in launches.delta}
    assert {"nnx_maxpool2d_fwd", "nnx_maxpool2d_bwd", "nnx_avgpool2d_fwd", "nnx_avgpool2d_bwd",
            "nnx_adaptive_avgpool2d_fwd", "nnx_adaptive_avgpool2d_bwd"} <= kinds
    tol = 1e-6 if dtype == np.float32 else 1e-13
    for (ye, ge), (yc, gc) in zip(on_emu, on_cpu):
        np.testing.assert_allclose(ye, yc, rtol=tol, atol=tol)
        np.testing.assert_allclose(ge, gc, rtol=tol, atol=tol)
