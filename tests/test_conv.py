"""Conv2d / Conv1d and F.conv2d / F.conv1d: gradchecks, PyTorch parity, errors, state_dict,
training inside Sequential, the workspace cap, and the strict backend (no host sync)."""
from __future__ import annotations

import copy

import numpy as np
import pytest

import nnx
import nnx.functional as F
from nnx import nn
from nnx.backends import conv as cv
from nnx.testing import gradcheck

# (N, C, H, W, O, kernel, stride, padding, dilation, groups)
GRID_2D = [
    (2, 3, 7, 6, 4, 3, 1, 0, 1, 1),
    (2, 3, 8, 9, 5, (3, 2), (2, 1), (1, 2), 1, 1),
    (1, 4, 9, 7, 6, 3, 1, "same", 1, 2),
    (2, 4, 8, 8, 4, 2, 1, "same", (2, 1), 1),      # even kernel: asymmetric padding
    (2, 4, 9, 10, 4, 3, 1, "valid", 1, 4),         # depthwise
    (3, 2, 5, 6, 3, 1, 2, 0, 1, 1),                # 1x1, strided
    (2, 6, 11, 9, 6, (2, 3), (3, 2), (2, 0), (2, 2), 3),
    (1, 1, 5, 5, 2, 5, 1, 0, 1, 1),                # kernel == input
]
# (N, C, L, O, kernel, stride, padding, dilation, groups)
GRID_1D = [
    (2, 3, 11, 4, 3, 1, 0, 1, 1),
    (2, 4, 12, 6, 4, 2, 1, 2, 2),
    (3, 2, 9, 2, 2, 1, "same", 3, 2),
]


def T(a, requires_grad=False):
    """An nnx tensor of ``a`` in ``a``'s own dtype (nnx.tensor alone takes the default one)."""
    return nnx.tensor(a, dtype=a.dtype, requires_grad=requires_grad)


def _arrays(shape_x, shape_w, o, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape_x).astype(dtype)
    w = rng.standard_normal(shape_w).astype(dtype)
    b = rng.standard_normal(o).astype(dtype)
    return x, w, b


def _case_2d(case, dtype=np.float64, seed=0):
    n, c, h, w_, o, k, s, p, d, g = case
    kh, kw = (k, k) if isinstance(k, int) else k
    x, w, b = _arrays((n, c, h, w_), (o, c // g, kh, kw), o, dtype, seed)
    return x, w, b, dict(stride=s, padding=p, dilation=d, groups=g)


def _case_1d(case, dtype=np.float64, seed=0):
    n, c, length, o, k, s, p, d, g = case
    x, w, b = _arrays((n, c, length), (o, c // g, k), o, dtype, seed)
    return x, w, b, dict(stride=s, padding=p, dilation=d, groups=g)


# ---------------------------------------------------------------------- gradchecks (float64)
@pytest.mark.parametrize("case", GRID_2D, ids=str)
def test_conv2d_gradcheck(case, layout):
    x, w, b, kw = _case_2d(case)
    ts = [T(a, True) for a in (x, w, b)]
    assert gradcheck(lambda x, w, b: F.conv2d(x, w, b, **kw), ts, n_directions=6)


@pytest.mark.parametrize("case", GRID_1D, ids=str)
def test_conv1d_gradcheck(case):
    x, w, b, kw = _case_1d(case)
    ts = [T(a, True) for a in (x, w, b)]
    assert gradcheck(lambda x, w, b: F.conv1d(x, w, b, **kw), ts, n_directions=6)


def test_gradcheck_without_bias_and_input_only():
    x, w, _, kw = _case_2d(GRID_2D[1])
    xt, wt = T(x, True), T(w)
    assert gradcheck(lambda x, w: F.conv2d(x, w, **kw), [xt, wt])
    xt, wt = T(x), T(w, True)
    assert gradcheck(lambda x, w: F.conv2d(x, w, **kw), [xt, wt])


# ---------------------------------------------------------------------- parity with torch
def _torch_run(fn, x, w, b, kw, gy):
    torch = pytest.importorskip("torch")
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    y = fn(xt, wt, bt, **kw)
    y.backward(torch.tensor(gy))
    return y.detach().numpy(), xt.grad.numpy(), wt.grad.numpy(), bt.grad.numpy()


def _nnx_run(fn, x, w, b, kw, gy):
    xt, wt, bt = (T(a, True) for a in (x, w, b))
    y = fn(xt, wt, bt, **kw)
    y.backward(T(gy))
    return y.numpy(), xt.grad.numpy(), wt.grad.numpy(), bt.grad.numpy()


def _close(got, want, what):
    # float32 to 1e-5 relative to the result's scale (sums of up to a few hundred products)
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale, err_msg=what)


@pytest.fixture(params=["nhwc", "nchw"])
def layout(request, monkeypatch):
    """Both CPU output layouts of backends.conv (the default and the C-contiguous one)."""
    monkeypatch.setattr(cv, "OUTPUT_LAYOUT", request.param)
    return request.param


@pytest.mark.filterwarnings("ignore:Using padding='same'")  # torch's note on even kernels
@pytest.mark.parametrize("case", GRID_2D, ids=str)
def test_conv2d_matches_torch_float32(case, layout):
    torch = pytest.importorskip("torch")
    x, w, b, kw = _case_2d(case, np.float32)
    y_shape = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w), **kw).shape
    gy = np.random.default_rng(1).standard_normal(tuple(y_shape)).astype(np.float32)
    want = _torch_run(torch.nn.functional.conv2d, x, w, b, kw, gy)
    got = _nnx_run(F.conv2d, x, w, b, kw, gy)
    for g, t, what in zip(got, want, ("output", "input grad", "weight grad", "bias grad")):
        assert g.shape == t.shape and g.dtype == np.float32
        _close(g, t, what)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("case", GRID_1D, ids=str)
def test_conv1d_matches_torch_float32(case):
    torch = pytest.importorskip("torch")
    x, w, b, kw = _case_1d(case, np.float32)
    y_shape = torch.nn.functional.conv1d(torch.tensor(x), torch.tensor(w), **kw).shape
    gy = np.random.default_rng(1).standard_normal(tuple(y_shape)).astype(np.float32)
    want = _torch_run(torch.nn.functional.conv1d, x, w, b, kw, gy)
    got = _nnx_run(F.conv1d, x, w, b, kw, gy)
    for g, t, what in zip(got, want, ("output", "input grad", "weight grad", "bias grad")):
        assert g.shape == t.shape
        _close(g, t, what)


def test_mnist_sizes_match_torch_and_gradient_layouts(layout):
    """The benchmark's conv stack: gy arriving NCHW-contiguous (as after a pooling backward)
    and channels-last (as from a following conv) gives the same gradients."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 32, 26, 26)).astype(np.float32)
    w = (rng.standard_normal((64, 32, 3, 3)) * 0.1).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    gy = rng.standard_normal((16, 64, 24, 24)).astype(np.float32)
    want = _torch_run(torch.nn.functional.conv2d, x, w, b, {}, gy)
    for layout in (gy, np.ascontiguousarray(gy.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)):
        got = _nnx_run(F.conv2d, x, w, b, {}, layout)
        for g, t, what in zip(got, want, ("output", "input grad", "weight grad", "bias grad")):
            _close(g, t, what)


def test_output_layouts_and_contiguous_leaf_grad(layout):
    x = nnx.randn(2, 3, 6, 6, requires_grad=True)
    y = nn.Conv2d(3, 4, 3)(x)
    assert y.data.flags.c_contiguous == (layout == "nchw")
    assert y.data.transpose(0, 2, 3, 1).flags.c_contiguous == (layout == "nhwc")
    y.sum().backward()
    assert x.grad.data.flags.c_contiguous


def test_unbatched_input():
    torch = pytest.importorskip("torch")
    x, w, b, kw = _case_2d(GRID_2D[0], np.float32)
    y = F.conv2d(nnx.tensor(x[0]), nnx.tensor(w), nnx.tensor(b))
    t = torch.nn.functional.conv2d(torch.tensor(x[0]), torch.tensor(w), torch.tensor(b))
    assert y.shape == tuple(t.shape)
    _close(y.numpy(), t.numpy(), "unbatched")


def test_workspace_limit_chunks_the_batch_with_the_same_result(layout):
    x, w, b, kw = _case_2d(GRID_2D[1], np.float64, seed=3)
    gy = np.random.default_rng(2).standard_normal(
        F.conv2d(T(x), T(w), **kw).shape)
    want = _nnx_run(F.conv2d, x, w, b, kw, gy)
    old = cv.set_workspace_limit(64)  # one sample per chunk, cols recomputed in the backward
    try:
        got = _nnx_run(F.conv2d, x, w, b, kw, gy)
    finally:
        cv.set_workspace_limit(old)
    for g, t in zip(got, want):
        np.testing.assert_allclose(g, t, rtol=1e-12, atol=1e-12)


def test_workspace_cap_bounds_the_im2col_buffers():
    """A batch whose im2col would take ~2.4 MB runs under a 256 KB cap: no work buffer of the
    conv's pool reaches the full cols size, and the result is the uncapped one."""
    from nnx.backends.numpy_backend import NumpyBackend

    b = NumpyBackend()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8, 12, 12))  # cols: 64 * 100 * 72 float64 = 3.7 MB
    w = rng.standard_normal((4, 8, 3, 3))
    gy = rng.standard_normal((64, 4, 10, 10))
    g = cv.Geometry(3, 3)
    y0, s0 = b.conv2d_forward(x, w, None, g)
    want = b.conv2d_backward(x, w, gy, s0, g)
    s0.release()
    cv.pool_of(b).clear()
    old = cv.set_workspace_limit(256 << 10)
    try:
        y, s = b.conv2d_forward(x, w, None, g)
        got = b.conv2d_backward(x, w, gy, s, g)
    finally:
        cv.set_workspace_limit(old)
    cols_bytes = 64 * 100 * 72 * 8
    sizes = [key[0] * key[1].itemsize for key in cv.pool_of(b)._free]
    assert sizes and max(sizes) < cols_bytes // 4, sizes
    np.testing.assert_allclose(y, y0, rtol=1e-12, atol=1e-12)
    for a, e in zip(got, want):
        np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12)


def test_first_layer_skips_the_data_gradient(monkeypatch):
    seen = []
    real = cv.numpy_backward

    def spy(backend, x, w, gy, saved, g, need_x, need_w, need_b):
        seen.append((need_x, need_w, need_b))
        return real(backend, x, w, gy, saved, g, need_x, need_w, need_b)

    monkeypatch.setattr(cv, "numpy_backward", spy)
    conv = nn.Conv2d(1, 4, 3)
    conv(nnx.randn(2, 1, 6, 6)).sum().backward()
    assert seen == [(False, True, True)]
    assert conv.weight.grad.shape == (4, 1, 3, 3)


def test_two_forwards_before_one_backward_keep_their_own_buffers():
    """Two live graphs through the same layer: each node keeps its own im2col buffer."""
    conv = nn.Conv2d(3, 4, 3).double()
    x1, x2 = nnx.randn(2, 3, 6, 6).double(), nnx.randn(2, 3, 6, 6).double()
    loss = (conv(x1) * conv(x2)).sum()
    loss.backward()
    g_both = conv.weight.grad.numpy().copy()
    torch = pytest.importorskip("torch")
    wt = torch.tensor(conv.weight.numpy(), requires_grad=True)
    bt = torch.tensor(conv.bias.numpy())
    f = torch.nn.functional.conv2d
    (f(torch.tensor(x1.numpy()), wt, bt) * f(torch.tensor(x2.numpy()), wt, bt)).sum().backward()
    np.testing.assert_allclose(g_both, wt.grad.numpy(), rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------- errors
def test_layer_error_messages():
    conv = nn.Conv2d(1, 32, 3)
    with pytest.raises(nnx.ShapeError) as e:
        conv(nnx.zeros(8, 3, 28, 28))
    assert str(e.value) == ("Conv2d(1 -> 32, 3x3) got input of shape (8, 3, 28, 28) "
                            "(expected (N, 1, H, W))")
    with pytest.raises(nnx.ShapeError, match=r"Conv2d\(1 -> 32, 3x3\) got input of shape \(8, 28, 28, 1, 1\)"):
        conv(nnx.zeros(8, 28, 28, 1, 1))
    with pytest.raises(nnx.ShapeError, match=r"Conv1d\(2 -> 4, 3\) got input of shape \(5, 3, 9\)"):
        nn.Conv1d(2, 4, 3)(nnx.zeros(5, 3, 9))
    with pytest.raises(nnx.ShapeError, match="smaller than the kernel"):
        conv(nnx.zeros(2, 1, 2, 5))
    with pytest.raises(nnx.ShapeError, match="smaller than the kernel"):
        nn.Conv2d(1, 2, 3, dilation=3)(nnx.zeros(2, 1, 6, 6))
    with pytest.raises(nnx.DTypeError, match="dtype"):
        conv(nnx.zeros(8, 1, 28, 28, dtype="float64"))


@pytest.mark.parametrize("kwargs, match", [
    (dict(stride=0), "stride"), (dict(stride=(1, -1)), "stride"), (dict(dilation=0), "dilation"),
    (dict(padding=-1), "padding"), (dict(padding="full"), "padding"),
    (dict(padding="same", stride=2), "strided"), (dict(groups=3), "divisible by groups"),
    (dict(groups=0), "groups"), (dict(kernel_size=0), "kernel_size"),
    (dict(kernel_size=(3, 3, 3)), "kernel_size"), (dict(padding_mode="mirror"), "padding_mode"),
])
def test_construction_errors(kwargs, match):
    args = dict(in_channels=4, out_channels=8, kernel_size=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        nn.Conv2d(**args)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_padding_modes_match_torch(mode):
    torch = pytest.importorskip("torch")
    for ours, theirs, shape in (
            (nn.Conv2d(3, 4, (3, 2), padding=(2, 1), padding_mode=mode),
             torch.nn.Conv2d(3, 4, (3, 2), padding=(2, 1), padding_mode=mode), (2, 3, 6, 5)),
            (nn.Conv2d(2, 2, 4, padding="same", padding_mode=mode),
             torch.nn.Conv2d(2, 2, 4, padding="same", padding_mode=mode), (1, 2, 7, 6)),
            (nn.Conv1d(2, 3, 3, padding=2, padding_mode=mode),
             torch.nn.Conv1d(2, 3, 3, padding=2, padding_mode=mode), (2, 2, 7))):
        ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        xn, xt = T(x, True), torch.tensor(x, requires_grad=True)
        y, yt = ours(xn), theirs(xt)
        _close(y.numpy(), yt.detach().numpy(), mode)
        y.sum().backward()
        yt.sum().backward()
        _close(xn.grad.numpy(), xt.grad.numpy(), mode + " input grad")
        _close(ours.weight.grad.numpy(), theirs.weight.grad.numpy(), mode + " weight grad")
        assert repr(ours) == repr(theirs)


def test_functional_errors():
    x, w = nnx.zeros(2, 4, 8, 8), nnx.zeros(6, 2, 3, 3)
    with pytest.raises(nnx.ShapeError, match=r"expected \(N, 4, H, W\)"):
        F.conv2d(nnx.zeros(2, 3, 8, 8), w, groups=2)
    with pytest.raises(ValueError, match="divisible by groups"):
        F.conv2d(x, nnx.zeros(5, 2, 3, 3), groups=2)
    with pytest.raises(nnx.ShapeError, match="weight must be 4-D"):
        F.conv2d(x, nnx.zeros(6, 4, 3))
    with pytest.raises(nnx.ShapeError, match="bias"):
        F.conv2d(x, w, nnx.zeros(5), groups=2)
    with pytest.raises(nnx.DTypeError):
        F.conv2d(x, w.double(), groups=2)
    with pytest.raises(ValueError, match="stride"):
        F.conv1d(nnx.zeros(2, 4, 8), nnx.zeros(2, 4, 3), stride=0)


# ---------------------------------------------------------------------- modules vs torch
@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_state_dict_matches_torch_and_loads_torch_weights():
    torch = pytest.importorskip("torch")
    for ours, theirs, shape in (
            (nn.Conv2d(4, 6, (3, 2), stride=2, padding=1, groups=2),
             torch.nn.Conv2d(4, 6, (3, 2), stride=2, padding=1, groups=2), (2, 4, 9, 8)),
            (nn.Conv1d(3, 5, 3, padding="same", bias=False),
             torch.nn.Conv1d(3, 5, 3, padding="same", bias=False), (2, 3, 10))):
        sd_t = theirs.state_dict()
        sd_n = ours.state_dict()
        assert list(sd_n) == list(sd_t)
        assert all(tuple(sd_n[k].shape) == tuple(sd_t[k].shape) for k in sd_t)
        ours.load_state_dict({k: v.numpy() for k, v in sd_t.items()})
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        _close(ours(nnx.tensor(x)).numpy(), theirs(torch.tensor(x)).detach().numpy(), "module")
        assert repr(ours) == repr(theirs)


def test_default_init_matches_torch_bounds():
    conv = nn.Conv2d(8, 16, 3)
    fan_in = 8 * 9
    bound = 1.0 / np.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)) gives the same bound
    w, b = conv.weight.numpy(), conv.bias.numpy()
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    assert np.abs(b).max() <= bound
    assert abs(w.std() - bound / np.sqrt(3)) < 0.1 * bound


def test_config_roundtrip_output_shape_and_copy():
    for m, inp, out in ((nn.Conv2d(3, 8, (3, 5), stride=(2, 1), padding=(1, 2), dilation=1),
                         (3, 11, 10), (8, 6, 10)),
                        (nn.Conv2d(3, 6, 4, padding="same", groups=3, bias=False),
                         (3, 9, 7), (6, 9, 7)),
                        (nn.Conv1d(2, 4, 3, stride=2), (2, 15), (4, 7))):
        assert m.output_shape(inp) == out
        assert m(nnx.zeros(2, *inp)).shape == (2, *out)
        cfg = m.get_config()
        m2 = type(m).from_config(cfg)
        assert m2.get_config() == cfg and repr(m2) == repr(m)
        m3 = copy.deepcopy(m)
        x = nnx.randn(2, *inp)
        np.testing.assert_array_equal(m3(x).numpy(), m(x).numpy())
    assert nn.Conv2d(1, 2, 3).output_shape((1, None, 9)) == (2, None, 7)
    assert nn.Conv2d(1, 2, 3).output_shape(None) is None
    assert nn.config.LAYER_CLASSES["Conv2d"] is nn.Conv2d
    assert nn.config.LAYER_CLASSES["Conv1d"] is nn.Conv1d


def _cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(6 * 4 * 4, 10))


def test_sequential_training_save_load(tmp_path):
    nnx.manual_seed(0)
    model = _cnn()
    model.train()
    opt = nnx.optim.SGD(model.parameters(), lr=0.05)
    x = nnx.randn(16, 1, 6, 6)
    y = nnx.tensor(np.arange(16) % 10)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    with nnx.no_grad():
        ref = model(x).numpy()
    path = tmp_path / "cnn.nnx"
    nnx.save(model.state_dict(), str(path))
    loaded = _cnn()
    loaded.load_state_dict(nnx.load(str(path)))
    np.testing.assert_array_equal(loaded(x).numpy(), ref)
    np.testing.assert_array_equal(copy.deepcopy(model)(x).numpy(), ref)
    fresh = _cnn()
    fresh.load_state_dict(model.state_dict())
    np.testing.assert_array_equal(fresh(x).numpy(), ref)


def test_sequential_matches_torch_training_step():
    torch = pytest.importorskip("torch")
    nnx.manual_seed(1)
    ours = _cnn()
    theirs = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(),
                                 torch.nn.Conv2d(4, 6, 3, padding=1), torch.nn.ReLU(),
                                 torch.nn.Flatten(), torch.nn.Linear(96, 10))
    theirs.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in ours.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((8, 1, 6, 6)).astype(np.float32)
    y = np.arange(8) % 10
    F.cross_entropy(ours(nnx.tensor(x)), nnx.tensor(y)).backward()
    torch.nn.functional.cross_entropy(theirs(torch.tensor(x)), torch.tensor(y)).backward()
    tp = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        _close(p.grad.numpy(), tp[name].grad.numpy(), name)


# ---------------------------------------------------------------------- strict backend
def test_conv_training_step_makes_no_host_sync(strict, layout):
    nnx.manual_seed(0)
    model = _cnn()
    opt = nnx.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = nnx.randn(8, 1, 6, 6)
    y = nnx.tensor(np.arange(8) % 10)
    for _ in range(3):
        strict.reset_sync_count()
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        assert strict.sync_counts["count"] == 0, strict.sync_counts["where"]
    assert isinstance(model[0].weight.grad.data, strict.StrictArray)
    assert np.isfinite(loss.item())
