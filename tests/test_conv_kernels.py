"""The conv CUDA kernels (``backends/conv.py``): NVRTC compile, each kernel emulated on the CPU
against its NumPy twin for every dtype, and the CuPy backend's conv forward/backward over the
emulated kernels against the NumPy backend. The real-GPU run is marked ``gpu``."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from nnx.backends import conv as cv
from nnx.backends import cuda_kernels as ck
from nnx.backends import nvrtc_check
from nnx.backends.cuda_probe import probe_cuda
from nnx.backends.numpy_backend import NumpyBackend

try:
    from tests import cuda_emu
except ImportError:  # pytest's rootdir-relative import
    import cuda_emu

DTYPES = [np.float16, np.float32, np.float64]
MODULES = [f"conv_{s}" for s in ("f16", "f32", "f64")]
# (N, C, H, W, kernel (kh, kw), stride, padding (t, b, l, r), dilation, groups)
GEOMS = [
    ((2, 3, 7, 6), cv.Geometry(3, 3)),
    ((1, 2, 8, 9), cv.Geometry(3, 2, 2, 1, 1, 0, 2, 1, 1, 2)),
    ((2, 4, 9, 7), cv.Geometry(2, 3, 3, 2, 1, 1, 0, 2, 2, 1, 2)),
    ((1, 1, 5, 11), cv.Geometry(1, 3, 1, 1, 0, 0, 1, 1, 1, 3)),   # a Conv1d row
    ((2, 4, 6, 6), cv.Geometry(2, 2, 1, 1, 0, 1, 0, 1, 1, 1, 4)),  # 'same', even kernel, depthwise
]
TOL = {np.float16: (2e-3, 2e-3), np.float32: (1e-5, 1e-5), np.float64: (1e-12, 1e-12)}

needs_emu = pytest.mark.skipif(not cuda_emu.compiler_available(), reason="no g++ for cuda_emu")


def test_registered_family():
    for sfx in ("f16", "f32", "f64"):
        mod = f"conv_{sfx}"
        assert mod in ck.SOURCES
        assert ck.KERNELS[mod] == (f"nnx_im2col_{sfx}", f"nnx_col2im_{sfx}")
        assert ck.kernel_module(f"nnx_col2im_{sfx}") == mod


def test_nvrtc_compiles_without_spills():
    try:
        nvrtc_check.load_nvrtc()
    except nvrtc_check.NvrtcUnavailable as e:
        pytest.skip(f"NVRTC not available: {e}")
    results = nvrtc_check.check(archs=("sm_80", "sm_90"), modules=MODULES, jobs=2)
    assert not nvrtc_check.failures(results), nvrtc_check.format_table(results)
    names = {k.kernel for r in results for k in r.kernels}
    assert names == {n for m in MODULES for n in ck.KERNELS[m]}


@pytest.fixture
def emu():
    if not cuda_emu.compiler_available():
        pytest.skip("no g++ for cuda_emu")
    with cuda_emu.emulated_backend() as b:
        # CuPy's matmul/tensordot (cuBLAS) stand as NumPy's in the fake module, like its others
        sys.modules["cupy"].matmul = np.matmul
        sys.modules["cupy"].tensordot = np.tensordot
        yield b


def _geometry_args(shape, g):
    n, c, h, w = shape
    oh, ow = g.out_hw(h, w)
    return n, c, h, w, oh, ow


@needs_emu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape, g", GEOMS, ids=str)
def test_im2col_kernel_matches_numpy_twin(emu, shape, g, dtype):
    n, c, h, w, oh, ow = _geometry_args(shape, g)
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    cols = emu.xp.empty(n * c * g.kh * g.kw * oh * ow, dtype=dtype)  # NaN-filled by the fake
    cv._launch(emu, "im2col", x, cols, cols.size, c, h, w, g, oh, ow)
    want = cv.im2col_reference(x, g)
    np.testing.assert_array_equal(cols.reshape(want.shape), want)  # a copy: bit-exact


@needs_emu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape, g", GEOMS, ids=str)
def test_col2im_kernel_matches_numpy_twin(emu, shape, g, dtype):
    n, c, h, w, oh, ow = _geometry_args(shape, g)
    cols = np.random.default_rng(1).standard_normal((n, c, g.kh, g.kw, oh, ow)).astype(dtype)
    gx = emu.xp.empty((n, c, h, w), dtype=dtype)
    cv._launch(emu, "col2im", cols, gx, gx.size, c, h, w, g, oh, ow)
    want = cv.col2im_reference(cols, g, h, w)
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(gx.astype(np.float64), want.astype(np.float64), rtol=rtol,
                               atol=atol)


def test_numpy_twins_agree_with_the_numpy_path():
    """im2col_reference/col2im_reference (the kernels' twins) against the NHWC NumPy path."""
    shape, g = GEOMS[2]
    n, c, h, w, oh, ow = _geometry_args(shape, g)
    x = np.random.default_rng(0).standard_normal(shape)
    xh = np.zeros((n, h + g.pt + g.pb, w + g.pl + g.pr, c))
    xh[:, g.pt:g.pt + h, g.pl:g.pl + w] = x.transpose(0, 2, 3, 1)
    nhwc = cv.im2col_numpy(xh, g.replace(groups=1))
    ref = cv.im2col_reference(x, g)  # (n, c, kh, kw, oh, ow)
    np.testing.assert_array_equal(nhwc[:, :, :, 0].transpose(0, 5, 3, 4, 1, 2), ref)


def _conv_case(shape, g, dtype, seed=0):
    rng = np.random.default_rng(seed)
    n, c, h, w, oh, ow = _geometry_args(shape, g)
    o = 2 * g.groups
    x = rng.standard_normal(shape).astype(dtype)
    wt = rng.standard_normal((o, c // g.groups, g.kh, g.kw)).astype(dtype)
    b = rng.standard_normal(o).astype(dtype)
    gy = rng.standard_normal((n, o, oh, ow)).astype(dtype)
    return x, wt, b, gy


@needs_emu
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape, g", GEOMS, ids=str)
def test_emulated_backend_conv_matches_cpu(emu, shape, g, dtype):
    x, w, b, gy = _conv_case(shape, g, dtype)
    cpu = NumpyBackend()
    y_cpu, saved = cpu.conv2d_forward(x, w, b, g, save=True)
    grads_cpu = cpu.conv2d_backward(x, w, gy, saved, g, True, True, True)
    saved.release()
    before = dict(ck.launch_counts)
    y_emu, saved_emu = emu.conv2d_forward(x, w, b, g, save=True)
    grads_emu = emu.conv2d_backward(x, w, gy, saved_emu, g, True, True, True)
    sfx = ck.DTYPE_SUFFIX[np.dtype(dtype).name]
    for k in ("im2col", "col2im"):  # the kernels ran (no silent fallback)
        assert ck.launch_counts[f"nnx_{k}_{sfx}"] > before.get(f"nnx_{k}_{sfx}", 0)
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(y_emu, y_cpu, rtol=rtol, atol=atol * 10)
    for got, want, what in zip(grads_emu, grads_cpu, ("gx", "gw", "gb")):
        assert got.shape == want.shape, what
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * 10, err_msg=what)


@needs_emu
def test_emulated_backend_chunks_and_partial_grads(emu):
    g = GEOMS[1][1]
    x, w, b, gy = _conv_case((3, 2, 8, 9), g, np.float64, seed=5)
    cpu = NumpyBackend()
    y_cpu, saved = cpu.conv2d_forward(x, w, b, g, save=True)
    want = cpu.conv2d_backward(x, w, gy, saved, g, True, True, True)
    old = cv.set_workspace_limit(256)  # one sample per chunk
    try:
        y_emu, _ = emu.conv2d_forward(x, w, None, g, save=False)
        only_w = emu.conv2d_backward(x, w, gy, None, g, False, True, False)
        only_x = emu.conv2d_backward(x, w, gy, None, g, True, False, True)
    finally:
        cv.set_workspace_limit(old)
    np.testing.assert_allclose(y_emu + b.reshape(1, -1, 1, 1), y_cpu, rtol=1e-12, atol=1e-12)
    assert only_w[0] is None and only_w[2] is None and only_x[1] is None
    np.testing.assert_allclose(only_w[1], want[1], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(only_x[0], want[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(only_x[2], want[2], rtol=1e-12, atol=1e-12)


@pytest.mark.gpu
@pytest.mark.skipif(not probe_cuda()[0], reason="no usable CUDA device")
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_gpu_conv_matches_cpu(dtype):
    from nnx import backends

    gb = backends.get_backend("cuda")
    shape, g = GEOMS[2]
    x, w, b, gy = _conv_case(shape, g, dtype)
    cpu = NumpyBackend()
    y_cpu, saved = cpu.conv2d_forward(x, w, b, g, save=True)
    want = cpu.conv2d_backward(x, w, gy, saved, g, True, True, True)
    dev = [gb.asarray(a) for a in (x, w, b, gy)]
    y, s = gb.conv2d_forward(dev[0], dev[1], dev[2], g, save=True)
    got = gb.conv2d_backward(dev[0], dev[1], dev[3], s, g, True, True, True)
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(gb.to_host(y), y_cpu, rtol=rtol, atol=atol * 10)
    for a, e in zip(got, want):
        np.testing.assert_allclose(gb.to_host(a), e, rtol=rtol, atol=atol * 10)
