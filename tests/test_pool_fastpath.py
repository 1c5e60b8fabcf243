"""The CPU max-pool fast path (backends.pooling, kernel == stride): PyTorch parity for NCHW and
channels-last inputs (values, indices, input gradients), ties, NaN inputs, inf/NaN in gy,
gy of any strides, signed zeros, float16, memory formats kept, float64 gradchecks."""
import numpy as np
import pytest

import nnx
import nnx.functional as F
from nnx.backends import pooling as P
from nnx.testing import gradcheck


def _rand(shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _cl(a):
    """``a`` (N, C, H, W) with channels-last memory (an NCHW-shaped view of NHWC memory)."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def _is_cl(a):
    return a.transpose(0, 2, 3, 1).flags.c_contiguous


LAYOUTS = {"nchw": np.ascontiguousarray, "channels_last": _cl}

# (shape, kernel, stride): tiles (2x2, 3x3, rectangular, odd sizes with an uncovered strip)
# and, for contrast, windows where the tiles path does not apply
CASES = [
    ((2, 3, 8, 8), 2, None),
    ((2, 5, 7, 9), 2, None),       # last row / column in no window
    ((2, 4, 9, 9), 3, None),
    ((1, 3, 11, 10), 3, None),     # strips of 2 and 1
    ((2, 3, 6, 9), (2, 3), None),  # rectangular tiles
    ((2, 3, 8, 8), 2, 1),          # overlapping: the general path
    ((2, 3, 9, 9), 3, 2),
]


def _torch_pool(torch, x, g, k, s):
    xt = torch.tensor(np.ascontiguousarray(x), requires_grad=True)
    yt, it = torch.nn.functional.max_pool2d(xt, k, s, return_indices=True)
    yt.backward(torch.tensor(np.ascontiguousarray(g)))
    return yt.detach().numpy(), it.numpy(), xt.grad.numpy()


def _nnx_pool(x, g, k, s):
    xn = nnx.tensor(x, requires_grad=True)
    yn, idx = F.max_pool2d(xn, k, s, return_indices=True)
    yn.backward(nnx.tensor(g))
    return yn.numpy(), idx.numpy(), xn.grad.numpy()


def _check_against_torch(torch, x, k, s, g=None, exact_grad=True):
    win = P.Window(*_pair(k), *_pair(s or k))
    oh, ow = win.out_hw(*x.shape[-2:])
    if g is None:
        g = _rand(x.shape[:2] + (oh, ow), x.dtype, seed=1)
    y_t, i_t, gx_t = _torch_pool(torch, x, g, k, s)
    y_n, i_n, gx_n = _nnx_pool(x, g, k, s)
    np.testing.assert_array_equal(y_n, y_t)
    np.testing.assert_array_equal(i_n, i_t)
    if exact_grad:
        np.testing.assert_array_equal(gx_n, gx_t)
    else:
        np.testing.assert_allclose(gx_n, gx_t, rtol=1e-6, atol=1e-6)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


# ---------------------------------------------------------------------- PyTorch parity
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape,k,s", CASES)
@pytest.mark.parametrize("data", ["random", "ties", "zeros"])
def test_matches_torch(layout, shape, k, s, data):
    torch = pytest.importorskip("torch")
    x = _rand(shape)
    if data == "ties":  # a few distinct values: most windows hold several maxima
        x = np.round(x)
    elif data == "zeros":  # every element ties: the gradient goes to each window's first
        x = np.zeros(shape, np.float32)
    x = LAYOUTS[layout](x)
    tiles = (s or k) == k
    _check_against_torch(torch, x, k, s, exact_grad=tiles)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_benchmark_shape_post_relu(layout):
    # benchmark D's pool input: (N, 64, 24, 24) after a ReLU (half the values are 0: ties)
    torch = pytest.importorskip("torch")
    x = LAYOUTS[layout](np.maximum(_rand((4, 64, 24, 24)), 0))
    _check_against_torch(torch, x, 2, None)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("k", [2, 3])
def test_nan_inputs_match_torch(layout, k):
    # a NaN wins its window (PyTorch's ``val > max || isnan(val)``), wherever it sits
    torch = pytest.importorskip("torch")
    x = _rand((2, 3, 2 * k + 1, 3 * k))
    for i in range(k * k):  # a NaN at each window position, in a different window each
        x[i % 2, i % 3, i // k + (i % 2) * k, i % k + (i % 3) * k] = np.nan
    x[1, 2, :k, :k] = np.nan  # a window all NaN
    _check_against_torch(torch, LAYOUTS[layout](x), k, None)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("k", [2, 3])
def test_non_finite_gy_reaches_only_the_chosen_element(layout, k):
    torch = pytest.importorskip("torch")
    x = np.round(_rand((2, 3, 2 * k + 1, 2 * k)) * 2)  # ties, and an uncovered last row
    g = _rand((2, 3, 2, 2), seed=3)
    g[0, 0, 0, 0], g[0, 1, 1, 1], g[1, 2, 0, 1], g[1, 0, 1, 0] = np.nan, np.inf, -np.inf, np.nan
    _check_against_torch(torch, LAYOUTS[layout](x), k, None, g=g)
    xn = nnx.tensor(LAYOUTS[layout](x), requires_grad=True)
    F.max_pool2d(xn, k).backward(nnx.tensor(g))
    gx = xn.grad.numpy()
    assert np.isnan(gx).sum() == 2 and np.isinf(gx).sum() == 2
    assert not gx[:, :, 2 * k:].any()  # the row no window covers


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_signed_zero_ties_keep_the_first_value(layout, dtype):
    torch = pytest.importorskip("torch")
    x = np.zeros((3, 2, 4, 4), dtype)
    rng = np.random.default_rng(5)
    x[rng.random(x.shape) < 0.5] = -0.0
    y_n = F.max_pool2d(nnx.tensor(LAYOUTS[layout](x)), 2).numpy()
    y_t = torch.nn.functional.max_pool2d(torch.tensor(x), 2).numpy()
    np.testing.assert_array_equal(np.signbit(y_n), np.signbit(y_t))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_float16_matches_float32(layout):
    # max and the chosen element are exact in any precision: float16 must agree with float32
    x = np.round(_rand((2, 4, 8, 10)) * 4).astype(np.float16)
    win = P.Window(2, 2, 2, 2)
    y16, c16 = P.numpy_max_pool2d_forward(LAYOUTS[layout](x), win)
    y32, c32 = P.numpy_max_pool2d_forward(x.astype(np.float32), win)
    assert y16.dtype == np.float16
    np.testing.assert_array_equal(y16.astype(np.float32), y32)
    np.testing.assert_array_equal(c16, c32)
    g = _rand(y16.shape, np.float16, seed=2)
    gx16 = P.numpy_max_pool2d_backward(g, c16, win, x.shape[-2:])
    gx32 = P.numpy_max_pool2d_backward(g.astype(np.float32), c32, win, x.shape[-2:])
    assert gx16.dtype == np.float16
    np.testing.assert_array_equal(gx16.astype(np.float32), gx32)


def test_max_pool1d_tiles_match_torch():
    torch = pytest.importorskip("torch")
    x = np.round(_rand((2, 3, 11)) * 2)
    g = _rand((2, 3, 5), seed=1)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.max_pool1d(xt, 2)
    yt.backward(torch.tensor(g))
    xn = nnx.tensor(x, requires_grad=True)
    yn = F.max_pool1d(xn, 2)
    yn.backward(nnx.tensor(g))
    np.testing.assert_array_equal(yn.numpy(), yt.detach().numpy())
    np.testing.assert_array_equal(xn.grad.numpy(), xt.grad.numpy())


# ---------------------------------------------------------------------- memory formats
@pytest.mark.parametrize("k", [2, 3])
def test_channels_last_in_channels_last_out(k):
    x = _cl(_rand((2, 5, 3 * k + 1, 2 * k)))
    win = P.Window(k, k, k, k)
    y, code = P.numpy_max_pool2d_forward(x, win)
    assert y.shape == (2, 5, 3, 2) and _is_cl(y) and _is_cl(code) and code.dtype == np.uint8
    gy = _rand(y.shape, seed=1)  # C-contiguous NCHW, as from flatten / Linear
    gx = P.numpy_max_pool2d_backward(gy, code, win, x.shape[-2:])
    assert gx.shape == x.shape and _is_cl(gx) and not gx.flags.c_contiguous
    yn = F.max_pool2d(nnx.tensor(x), k)
    assert _is_cl(yn.numpy())


def test_nchw_in_nchw_out():
    x = _rand((2, 5, 8, 8))
    win = P.Window(2, 2, 2, 2)
    y, code = P.numpy_max_pool2d_forward(x, win)
    assert y.flags.c_contiguous and code.flags.c_contiguous
    gx = P.numpy_max_pool2d_backward(_cl(_rand(y.shape, seed=1)), code, win, x.shape[-2:])
    assert gx.flags.c_contiguous


def test_nan_fallback_keeps_channels_last():
    x = _rand((2, 3, 4, 4))
    x[1, 1, 3, 2] = np.nan
    y, code = P.numpy_max_pool2d_forward(_cl(x), P.Window(2, 2, 2, 2))
    assert _is_cl(y) and _is_cl(code) and np.isnan(y[1, 1, 1, 1])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_gy_of_any_strides(layout):
    x = LAYOUTS[layout](np.round(_rand((2, 4, 6, 8)) * 2))
    win = P.Window(2, 2, 2, 2)
    _, code = P.numpy_max_pool2d_forward(x, win)
    g = _rand((2, 4, 3, 4), seed=1)
    want = P.numpy_max_pool2d_backward(g, code, win, (6, 8))
    big = np.zeros((3, 8, 6, 9), np.float32)
    big[::2, 1::2, ::2, 1::2] = g
    for gy in (_cl(g), big[::2, 1::2, ::2, 1::2], g[:, ::-1][:, ::-1]):
        np.testing.assert_array_equal(P.numpy_max_pool2d_backward(gy, code, win, (6, 8)), want)


def test_results_survive_later_calls():
    # the fast path reuses work buffers across calls: what it returns must not be one of them
    win = P.Window(2, 2, 2, 2)
    x1, x2 = _cl(_rand((2, 8, 6, 6))), _cl(_rand((2, 8, 6, 6), seed=1))
    y1, c1 = P.numpy_max_pool2d_forward(x1, win)
    y1c, c1c = y1.copy(), c1.copy()
    g1 = P.numpy_max_pool2d_backward(np.ones_like(y1), c1, win, (6, 6))
    g1c = g1.copy()
    P.numpy_max_pool2d_forward(x2, win)
    P.numpy_max_pool2d_backward(np.full_like(y1, 2), c1, win, (6, 6))
    np.testing.assert_array_equal(y1, y1c)
    np.testing.assert_array_equal(c1, c1c)
    np.testing.assert_array_equal(g1, g1c)


# ---------------------------------------------------------------------- gradchecks (float64)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape,k", [((2, 3, 6, 6), 2), ((1, 4, 7, 9), 2), ((2, 2, 6, 7), 3)])
def test_gradcheck(layout, shape, k):
    x = nnx.tensor(LAYOUTS[layout](_rand(shape, np.float64)), dtype="float64",
                   requires_grad=True)
    assert (layout == "channels_last") == _is_cl(x.numpy()) or x.numpy().shape[1] == 1
    assert gradcheck(lambda t: F.max_pool2d(t, k), [x])
