"""A convolution fused with the activation after it (``F.conv2d(activation=...)``, the
``Sequential`` plan, Keras ``Conv2D(activation=...)``) and the per-tap data gradient of wide
convolutions: gradchecks, PyTorch parity in both CPU layouts, ReLU's edge semantics, the plan
and its cache, errors, the emulated CUDA path and the strict backend."""
from __future__ import annotations

import numpy as np
import pytest

import nnx
import nnx.functional as F
from nnx import nn
from nnx.backends import conv as cv
from nnx.backends.numpy_backend import NumpyBackend
from nnx.nn import fusion
from nnx.testing import gradcheck

try:
    from tests import cuda_emu
    from tests.test_conv_kernels import _conv_case, emu  # noqa: F401 (a fixture)
except ImportError:  # pytest's rootdir-relative import
    import cuda_emu
    from test_conv_kernels import _conv_case, emu  # noqa: F401

# (name, slope, torch function of the conv output)
ACTS = [("relu", 0.01, lambda t, y: t.relu(y)),
        ("sigmoid", 0.01, lambda t, y: t.sigmoid(y)),
        ("tanh", 0.01, lambda t, y: t.tanh(y)),
        ("leaky_relu", 0.2, lambda t, y: t.nn.functional.leaky_relu(y, 0.2))]
# (N, C, H, W, O, kernel, stride, padding, dilation): C >= 16 takes the per-tap data gradient
WIDE = [(2, 16, 7, 6, 5, 3, 1, 0, 1),
        (1, 20, 9, 8, 4, (3, 2), (2, 1), (1, 2), 1),
        (3, 16, 8, 9, 3, 2, 1, "same", (2, 1)),   # even kernel: asymmetric padding
        (2, 16, 11, 10, 6, 3, (2, 3), 2, 2),
        (2, 8, 7, 7, 4, 3, 1, 1, 1)]             # C < 16: one GEMM and a col2im


@pytest.fixture(params=["nhwc", "nchw"])
def layout(request, monkeypatch):
    monkeypatch.setattr(cv, "OUTPUT_LAYOUT", request.param)
    return request.param


def T(a, requires_grad=False):
    return nnx.tensor(a, dtype=a.dtype, requires_grad=requires_grad)


def _close(got, want, what):
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale, err_msg=what)


def _case(case, dtype, seed=0):
    n, c, h, w_, o, k, s, p, d = case
    kh, kw = (k, k) if isinstance(k, int) else k
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w_)).astype(dtype)
    w = (rng.standard_normal((o, c, kh, kw)) / np.sqrt(c * kh * kw)).astype(dtype)
    b = rng.standard_normal(o).astype(dtype)
    return x, w, b, dict(stride=s, padding=p, dilation=d)


def _torch_grads(x, w, b, kw, gy, act=None, x_grad=True):
    torch = pytest.importorskip("torch")
    xt = torch.tensor(x, requires_grad=x_grad)
    wt = torch.tensor(w, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True) if b is not None else None
    y = torch.nn.functional.conv2d(xt, wt, bt, **kw)
    if act is not None:
        y = act(torch, y)
    y.backward(torch.tensor(gy))
    return (y.detach().numpy(), xt.grad.numpy() if x_grad else None, wt.grad.numpy(),
            bt.grad.numpy() if b is not None else None)


def _nnx_grads(x, w, b, kw, gy, act="linear", slope=0.01, x_grad=True):
    xt, wt = T(x, x_grad), T(w, True)
    bt = T(b, True) if b is not None else None
    y = F.conv2d(xt, wt, bt, activation=act, negative_slope=slope, **kw)
    y.backward(T(gy))
    return (y.numpy(), xt.grad.numpy() if x_grad else None, wt.grad.numpy(),
            bt.grad.numpy() if b is not None else None)


def _compare(got, want):
    for g, t, what in zip(got, want, ("output", "input grad", "weight grad", "bias grad")):
        if t is None:
            assert g is None, what
            continue
        assert g.shape == t.shape, what
        _close(g, t, what)


# ---------------------------------------------------------------------- per-tap data gradient
@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("case", WIDE, ids=str)
def test_wide_conv_matches_torch(case, layout):
    x, w, b, kw = _case(case, np.float32)
    y = pytest.importorskip("torch").nn.functional.conv2d
    shape = y(*(pytest.importorskip("torch").tensor(a) for a in (x, w)), **kw).shape
    gy = np.random.default_rng(1).standard_normal(tuple(shape)).astype(np.float32)
    _compare(_nnx_grads(x, w, b, kw, gy), _torch_grads(x, w, b, kw, gy))


@pytest.mark.parametrize("case", WIDE[:4], ids=str)
def test_wide_conv_gradcheck(case, layout):
    x, w, b, kw = _case(case, np.float64)
    ts = [T(a, True) for a in (x, w, b)]
    assert gradcheck(lambda x, w, b: F.conv2d(x, w, b, **kw), ts, n_directions=6)


@pytest.mark.parametrize("case", [(5, 16, 8, 7, 4, 3, 1, 1, 1),
                                  (3, 16, 9, 8, 4, (3, 2), (2, 1), (1, 2), (1, 2))], ids=str)
def test_per_tap_chunks_give_the_same_gradient(monkeypatch, layout, case):
    """Several sample chunks (a tiny piece size) and the one-GEMM + col2im path agree."""
    x, w, b, kw = _case(case, np.float64)
    shape = F.conv2d(T(x), T(w), T(b), **kw).shape
    gy = np.random.default_rng(2).standard_normal(shape)
    base = _nnx_grads(x, w, b, kw, gy)
    monkeypatch.setattr(cv, "_PIECE_BYTES", 1)  # one sample per chunk
    chunked = _nnx_grads(x, w, b, kw, gy)
    monkeypatch.setattr(cv, "_PER_TAP_MIN_C", 10 ** 6)  # the gcols + col2im path
    other = _nnx_grads(x, w, b, kw, gy)
    for a, *rest in zip(base, chunked, other):
        for c in rest:
            np.testing.assert_allclose(c, a, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------- fused activation
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("name, slope, act", ACTS, ids=[a[0] for a in ACTS])
def test_fused_activation_matches_torch(name, slope, act, bias, layout):
    x, w, b, kw = _case((3, 16, 7, 6, 8, 3, 1, 1, 1), np.float32)
    b = b if bias else None
    gy = np.random.default_rng(3).standard_normal((3, 8, 7, 6)).astype(np.float32)
    for x_grad in (True, False):  # a first layer skips the data gradient
        _compare(_nnx_grads(x, w, b, kw, gy, name, slope, x_grad),
                 _torch_grads(x, w, b, kw, gy, act, x_grad))


@pytest.mark.parametrize("name, slope", [(a[0], a[1]) for a in ACTS])
def test_fused_activation_gradcheck(name, slope, layout):
    x, w, b, kw = _case((2, 3, 6, 5, 4, 3, 1, 1, 1), np.float64)
    x += 0.05 * np.sign(x)  # keep the ReLU kinks away from the finite differences
    ts = [T(a, True) for a in (x, w, b)]
    fn = lambda x, w, b: F.conv2d(x, w, b, activation=name, negative_slope=slope, **kw)  # noqa
    assert gradcheck(fn, ts, n_directions=8)


def test_fused_conv1d_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 11)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    xt, wt, bt = (T(a, True) for a in (x, w, b))
    y = F.conv1d(xt, wt, bt, padding=1, activation="relu")
    y.sum().backward()
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.relu(torch.nn.functional.conv1d(tx, tw, tb, padding=1))
    ty.sum().backward()
    for got, want in ((y.numpy(), ty.detach()), (xt.grad.numpy(), tx.grad),
                      (wt.grad.numpy(), tw.grad), (bt.grad.numpy(), tb.grad)):
        _close(got, want.numpy(), "conv1d")


def test_relu_at_signed_zero_passes_no_gradient(layout):
    """A conv output of exactly +0.0 or -0.0 (zero input, no bias) has ReLU gradient 0."""
    x = np.zeros((2, 16, 5, 5), np.float32)
    x[0, :, 0, 0] = 1.0
    w = -np.abs(np.random.default_rng(5).standard_normal((3, 16, 3, 3))).astype(np.float32)
    gy = np.ones((2, 3, 3, 3), np.float32)
    got = _nnx_grads(x, w, None, {}, gy, "relu")
    want = _torch_grads(x, w, None, {}, gy, ACTS[0][2])
    assert not np.signbit(got[0]).any()  # relu(-0.0) is +0.0, as in torch
    _compare(got, want)
    np.testing.assert_array_equal(got[1], 0.0)


def test_nonfinite_gradient_stops_where_relu_is_off(layout):
    x, w, b, kw = _case((2, 16, 6, 6, 4, 3, 1, 0, 1), np.float32)
    out = F.conv2d(T(x), T(w), T(b)).numpy()
    gy = np.where(out <= 0, np.nan, 1.0).astype(np.float32)
    gy[0, 0, 0, 0] = np.inf if out[0, 0, 0, 0] <= 0 else 1.0
    got = _nnx_grads(x, w, b, kw, gy, "relu")
    want = _torch_grads(x, w, b, kw, gy, ACTS[0][2])
    assert np.isfinite(got[1]).all()
    _compare(got, want)


def test_nan_input_propagates_like_torch(layout):
    x, w, b, kw = _case((1, 16, 5, 5, 2, 3, 1, 0, 1), np.float32)
    x[0, 3, 2, 2] = np.nan
    gy = np.ones((1, 2, 3, 3), np.float32)
    got = _nnx_grads(x, w, b, kw, gy, "relu")
    want = _torch_grads(x, w, b, kw, gy, ACTS[0][2])
    for g, t in zip(got, want):
        np.testing.assert_array_equal(np.isnan(g), np.isnan(t))


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_no_grad_forward_equals_the_unfused_one(dtype, layout):
    x, w, b, kw = _case((2, 16, 6, 6, 4, 3, 1, 1, 1), dtype)
    with nnx.no_grad():
        for name, slope, _ in ACTS:
            fused = F.conv2d(T(x), T(w), T(b), activation=name, negative_slope=slope, **kw)
            plain = F.conv2d(T(x), T(w), T(b), **kw)
            ref = nn.LeakyReLU(slope)(plain) if name == "leaky_relu" else \
                {"relu": F.relu, "sigmoid": F.sigmoid, "tanh": F.tanh}[name](plain)
            assert fused.dtype == dtype
            np.testing.assert_allclose(fused.numpy().astype(np.float64),
                                       ref.numpy().astype(np.float64),
                                       rtol=2e-3 if dtype == np.float16 else 1e-6, atol=1e-6)


@pytest.mark.parametrize("kwargs", [dict(activation="gelu"), dict(activation="softmax"),
                                    dict(activation="leaky_relu", negative_slope=-0.1),
                                    dict(activation="no-such")])
def test_unfusable_activation_is_refused(kwargs):
    x, w = nnx.randn(1, 2, 5, 5), nnx.randn(3, 2, 3, 3)
    with pytest.raises(ValueError, match="cannot run fused with a convolution"):
        F.conv2d(x, w, **kwargs)


# ---------------------------------------------------------------------- Sequential
def _cnn(act=nn.ReLU):
    return nn.Sequential(nn.Conv2d(1, 16, 3), act(), nn.Conv2d(16, 16, 3, padding=1), act(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 3 * 3, 10))


def _torch_twin(ours, act):
    torch = pytest.importorskip("torch")
    theirs = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3), act(),
                                 torch.nn.Conv2d(16, 16, 3, padding=1), act(),
                                 torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                                 torch.nn.Linear(16 * 3 * 3, 10))
    theirs.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in ours.state_dict().items()})
    return theirs


@pytest.mark.parametrize("acts", ["ReLU", "Tanh", "GELU"])
def test_sequential_trains_like_torch(acts, layout):
    torch = pytest.importorskip("torch")
    nnx.manual_seed(0)
    ours = _cnn(getattr(nn, acts))
    runs = fusion.plan(ours)[1]
    n_fused = sum(type(r) is fusion.Fused for r in runs)
    assert n_fused == (0 if acts == "GELU" else 2)  # GELU's backward needs its input
    theirs = _torch_twin(ours, getattr(torch.nn, acts))
    opt = nnx.optim.SGD(ours.parameters(), lr=0.1)
    topt = torch.optim.SGD(theirs.parameters(), lr=0.1)
    rng = np.random.default_rng(6)
    for _ in range(3):
        x = rng.standard_normal((8, 1, 8, 8)).astype(np.float32)
        y = rng.integers(0, 10, 8)
        opt.zero_grad()
        F.cross_entropy(ours(nnx.tensor(x)), nnx.tensor(y)).backward()
        opt.step()
        topt.zero_grad()
        torch.nn.functional.cross_entropy(theirs(torch.tensor(x)), torch.tensor(y)).backward()
        topt.step()
    tp = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        _close(p.numpy(), tp[name].detach().numpy(), name)


def test_plan_follows_module_changes():
    nnx.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.LeakyReLU(0.1))
    x = nnx.randn(2, 2, 5, 5)
    y0 = model(x).numpy()
    assert type(fusion.plan(model)[1][0]) is fusion.Fused
    model[1].negative_slope = -0.5  # a negative slope: not fused any more
    assert type(fusion.plan(model)[1][0]) is not fusion.Fused
    z = F.conv2d(x, model[0].weight, model[0].bias).numpy()
    np.testing.assert_allclose(model(x).numpy(), np.where(z >= 0, z, -0.5 * z), rtol=1e-6)
    model[1] = nn.Identity()
    np.testing.assert_allclose(model(x).numpy(), z, rtol=1e-6)
    assert not np.allclose(y0, z)


def test_keras_conv2d_relu_fuses_and_matches_nnx():
    from nnx import keras
    nnx.manual_seed(0)
    layer = keras.layers.Conv2D(6, 3, activation="relu", input_shape=(7, 7, 3))
    x = np.random.default_rng(7).standard_normal((2, 7, 7, 3)).astype(np.float32)
    y = layer(nnx.tensor(x))
    w, b = layer.weight, layer.bias
    ref = F.relu(F.conv2d(nnx.tensor(x).permute(0, 3, 1, 2), w, b)).permute(0, 2, 3, 1)
    np.testing.assert_allclose(y.numpy(), ref.numpy(), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------- other backends
@pytest.mark.skipif(not cuda_emu.compiler_available(), reason="no g++ for cuda_emu")
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name, slope", [("relu", 0.01), ("sigmoid", 0.01),
                                         ("leaky_relu", 0.2)])
def test_emulated_cuda_fused_conv_matches_cpu(emu, name, slope, dtype):  # noqa: F811
    g = cv.Geometry(3, 3, 1, 1, 1, 1, 1, 1)
    x, w, b, gy = _conv_case((2, 3, 6, 5), g, dtype)
    cpu = NumpyBackend()
    y_cpu, s_cpu = cpu.conv2d_forward(x, w, b, g, save=True, activation=name,
                                      negative_slope=slope)
    want = cpu.conv2d_backward(x, w, gy, s_cpu, g, True, True, True)
    y_emu, s_emu = emu.conv2d_forward(x, w, b, g, save=True, activation=name,
                                      negative_slope=slope)
    got = emu.conv2d_backward(x, w, gy, s_emu, g, True, True, True)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(np.asarray(y_emu), y_cpu, rtol=tol, atol=tol)
    for a, c, what in zip(got, want, ("gx", "gw", "gb")):
        np.testing.assert_allclose(np.asarray(a), c, rtol=tol, atol=tol * 10, err_msg=what)


def test_fused_training_step_makes_no_host_sync(strict, layout):
    nnx.manual_seed(0)
    model = _cnn()
    opt = nnx.optim.SGD(model.parameters(), lr=0.05)
    x = nnx.randn(4, 1, 8, 8)
    y = nnx.tensor(np.arange(4) % 10)
    for _ in range(2):
        strict.reset_sync_count()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        assert strict.sync_counts["count"] == 0, strict.sync_counts["where"]
