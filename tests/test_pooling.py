"""Pooling (nnx.pooling, nnx.nn.pooling, backends.pooling's NumPy path): gradchecks, PyTorch
parity (values, indices, gradients, ties), errors, modules, unbatched input, strict backend."""
import numpy as np
import pytest

import nnx
import nnx.functional as F
from nnx import nn
from nnx.errors import ShapeError
from nnx.testing import gradcheck

# (shape, kernel, stride, padding, dilation, ceil_mode)
MAX_CASES = [
    ((2, 3, 8, 8), 2, None, 0, 1, False),        # the tiles fast path
    ((2, 3, 7, 9), 2, None, 0, 1, False),        # tiles, odd sizes (last row/col dropped)
    ((2, 2, 9, 9), 3, 3, 0, 1, False),           # 3x3 tiles
    ((2, 3, 7, 9), 3, 2, 1, 1, False),           # overlapping, padded
    ((1, 2, 7, 8), 3, 1, 1, 1, False),           # stride 1
    ((2, 2, 7, 9), 3, 2, 1, 2, True),            # dilated, ceil mode
    ((1, 2, 5, 5), 2, 2, 1, 1, True),            # ceil mode with padding
    ((2, 2, 6, 7), (2, 3), (1, 2), (1, 1), 1, False),  # rectangular
    ((1, 1, 6, 6), 2, 2, 0, 1, True),            # ceil mode that changes nothing
    ((1, 2, 5, 6), 1, 1, 0, 1, False),           # 1x1
]
AVG_CASES = [c for c in MAX_CASES if c[4] == 1]


def _rand(shape, dtype=np.float64, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ---------------------------------------------------------------------- gradchecks (float64)
@pytest.mark.parametrize("shape,k,s,p,d,ceil", MAX_CASES)
def test_max_pool2d_gradcheck(shape, k, s, p, d, ceil):
    x = nnx.tensor(_rand(shape), dtype="float64", requires_grad=True)
    assert gradcheck(lambda t: F.max_pool2d(t, k, s, p, d, ceil), [x])


@pytest.mark.parametrize("shape,k,s,p,d,ceil", AVG_CASES)
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool2d_gradcheck(shape, k, s, p, d, ceil, count_include_pad):
    x = nnx.tensor(_rand(shape), dtype="float64", requires_grad=True)
    assert gradcheck(lambda t: F.avg_pool2d(t, k, s, p, ceil, count_include_pad), [x])


@pytest.mark.parametrize("out", [1, 3, (2, None), (4, 5), (7, 10), (5, 2)])
def test_adaptive_avg_pool2d_gradcheck(out):
    x = nnx.tensor(_rand((2, 2, 7, 10)), dtype="float64", requires_grad=True)
    assert gradcheck(lambda t: F.adaptive_avg_pool2d(t, out), [x])


def test_pool1d_gradcheck():
    x = nnx.tensor(_rand((2, 3, 11)), dtype="float64", requires_grad=True)
    assert gradcheck(lambda t: F.max_pool1d(t, 3, 2, 1), [x])
    assert gradcheck(lambda t: F.avg_pool1d(t, 3, 2, 1, count_include_pad=False), [x])
    assert gradcheck(lambda t: F.adaptive_avg_pool1d(t, 4), [x])


# ---------------------------------------------------------------------- PyTorch parity
def _torch_max(torch, x, g, k, s, p, d, ceil):
    xt = torch.tensor(x, requires_grad=True)
    yt, it = torch.nn.functional.max_pool2d(xt, k, s, p, d, ceil, return_indices=True)
    yt.backward(torch.tensor(g))
    return yt.detach().numpy(), it.numpy(), xt.grad.numpy()


def _nnx_max(x, g, k, s, p, d, ceil):
    xn = nnx.tensor(x, requires_grad=True)
    yn, idx = F.max_pool2d(xn, k, s, p, d, ceil, return_indices=True)
    yn.backward(nnx.tensor(g))
    return yn.numpy(), idx.numpy(), xn.grad.numpy()


def _out_shape(torch, x, k, s, p, d, ceil):
    return torch.nn.functional.max_pool2d(torch.tensor(x), k, s, p, d, ceil).shape


@pytest.mark.parametrize("shape,k,s,p,d,ceil", MAX_CASES)
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool2d_matches_torch(shape, k, s, p, d, ceil, ties):
    torch = pytest.importorskip("torch")
    x = _rand(shape, np.float32)
    if ties:  # a few distinct values: most windows hold several maxima
        x = np.round(x).astype(np.float32)
    g = _rand(_out_shape(torch, x, k, s, p, d, ceil), np.float32, seed=1)
    y_t, i_t, gx_t = _torch_max(torch, x, g, k, s, p, d, ceil)
    y_n, i_n, gx_n = _nnx_max(x, g, k, s, p, d, ceil)
    assert y_n.dtype == np.float32 and i_n.dtype == np.int64
    np.testing.assert_array_equal(y_n, y_t)
    np.testing.assert_array_equal(i_n, i_t)  # the first maximum, ties included
    np.testing.assert_allclose(gx_n, gx_t, rtol=1e-6, atol=1e-6)
    windows_overlap = (s or k) != k or p or d != 1
    if not windows_overlap:
        np.testing.assert_array_equal(gx_n, gx_t)


@pytest.mark.parametrize("shape,k,s,p", [((1, 2, 34, 35), 17, None, 0),
                                         ((1, 1, 18, 18), 17, 1, 8)])
def test_max_pool2d_windows_of_more_than_256_elements(shape, k, s, p):
    torch = pytest.importorskip("torch")  # the argmax no longer fits in uint8
    x = np.round(_rand(shape, np.float32) * 3)
    g = _rand(_out_shape(torch, x, k, s, p, 1, False), np.float32, seed=1)
    ours, theirs = _nnx_max(x, g, k, s, p, 1, False), _torch_max(torch, x, g, k, s, p, 1, False)
    for got, want in zip(ours, theirs):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_max_pool2d_first_maximum_by_hand():
    # one 2x2 window per row of this table; the gradient goes to the first (row-major) max
    x = np.array([[[[1., 1.], [1., 1.]]], [[[0., 2.], [2., 0.]]], [[[0., 0.], [3., 3.]]],
                  [[[-np.inf, -np.inf], [-np.inf, -np.inf]]]], dtype=np.float32)
    xn = nnx.tensor(x, requires_grad=True)
    F.max_pool2d(xn, 2).sum().backward()
    want = np.zeros_like(x)
    want[0, 0, 0, 0] = want[1, 0, 0, 1] = want[2, 0, 1, 0] = want[3, 0, 0, 0] = 1
    np.testing.assert_array_equal(xn.grad.numpy(), want)


def test_max_pool2d_padding_never_wins():
    torch = pytest.importorskip("torch")
    x = np.full((1, 1, 3, 3), -np.inf, dtype=np.float32)
    x[0, 0, 2, 2] = -1
    y_t, i_t, gx_t = _torch_max(torch, x, np.ones((1, 1, 2, 2), np.float32), 2, 2, 1, 1, False)
    y_n, i_n, gx_n = _nnx_max(x, np.ones((1, 1, 2, 2), np.float32), 2, 2, 1, 1, False)
    np.testing.assert_array_equal(y_n, y_t)
    np.testing.assert_array_equal(i_n, i_t)
    np.testing.assert_array_equal(gx_n, gx_t)


def test_max_pool2d_propagates_nan():
    x = _rand((1, 1, 4, 4), np.float32)
    x[0, 0, 1, 1] = x[0, 0, 2, 3] = np.nan
    for k, s, p in ((2, 2, 0), (3, 1, 1)):
        torch = pytest.importorskip("torch")
        want = torch.nn.functional.max_pool2d(torch.tensor(x), k, s, p).numpy()
        np.testing.assert_array_equal(F.max_pool2d(nnx.tensor(x), k, s, p).numpy(), want)


@pytest.mark.parametrize("k", [2, 3])
def test_max_pool2d_tiles_with_nan_match_torch(k):
    # Regression: the tiles fast path let every tap after a NaN win, so the indices and the
    # gradient of a NaN window went to its last element instead of PyTorch's (last) NaN.
    torch = pytest.importorskip("torch")
    x = _rand((2, 2, 2 * k, 2 * k), np.float32)
    x[0, 0, 0, 1] = x[0, 1, k, 0] = x[0, 1, k, 1] = x[1, 0, 2 * k - 1, 0] = np.nan
    g = _rand((2, 2, 2, 2), np.float32, seed=1)
    for got, want in zip(_nnx_max(x, g, k, None, 0, 1, False),
                         _torch_max(torch, x, g, k, None, 0, 1, False)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_max_pool2d_tiles_backward_with_nonfinite_grad_matches_torch(bad):
    # Regression: the tiles backward multiplied gy by a 0/1 mask, so a NaN or inf in gy made
    # NaN of every element of its window (inf * 0), where PyTorch routes it to the maximum only.
    torch = pytest.importorskip("torch")
    x = _rand((1, 2, 4, 4), np.float32)
    g = _rand((1, 2, 2, 2), np.float32, seed=1)
    g[0, 1, 0, 1] = bad
    for got, want in zip(_nnx_max(x, g, 2, None, 0, 1, False),
                         _torch_max(torch, x, g, 2, None, 0, 1, False)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("shape,k,s,p,d,ceil", AVG_CASES)
@pytest.mark.parametrize("count_include_pad,divisor", [(True, None), (False, None), (True, 3)])
def test_avg_pool2d_matches_torch(shape, k, s, p, d, ceil, count_include_pad, divisor):
    torch = pytest.importorskip("torch")
    x = _rand(shape, np.float32)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.avg_pool2d(xt, k, s, p, ceil, count_include_pad, divisor)
    g = _rand(yt.shape, np.float32, seed=1)
    yt.backward(torch.tensor(g))
    xn = nnx.tensor(x, requires_grad=True)
    yn = F.avg_pool2d(xn, k, s, p, ceil, count_include_pad, divisor)
    yn.backward(nnx.tensor(g))
    assert yn.dtype == np.float32
    np.testing.assert_allclose(yn.numpy(), yt.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(xn.grad.numpy(), xt.grad.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape,out", [((2, 3, 7, 10), 1), ((2, 3, 7, 10), 3),
                                       ((2, 3, 7, 10), (2, None)), ((2, 3, 8, 10), (4, 5)),
                                       ((1, 2, 5, 3), (7, 4)), ((3, 6, 9), (2, 4))])
def test_adaptive_avg_pool2d_matches_torch(shape, out):
    torch = pytest.importorskip("torch")
    x = _rand(shape, np.float32)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.adaptive_avg_pool2d(xt, out)
    g = _rand(yt.shape, np.float32, seed=1)
    yt.backward(torch.tensor(g))
    xn = nnx.tensor(x, requires_grad=True)
    yn = F.adaptive_avg_pool2d(xn, out)
    yn.backward(nnx.tensor(g))
    assert yn.shape == tuple(yt.shape)
    np.testing.assert_allclose(yn.numpy(), yt.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(xn.grad.numpy(), xt.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_pool1d_matches_torch():
    torch = pytest.importorskip("torch")
    x = np.round(_rand((2, 3, 13), np.float32) * 2)
    tf = torch.nn.functional
    cases = [(F.max_pool1d, tf.max_pool1d, (3, 2, 1)), (F.max_pool1d, tf.max_pool1d, (2,)),
             (F.avg_pool1d, tf.avg_pool1d, (3, 2, 1, True, False)),
             (F.adaptive_avg_pool1d, tf.adaptive_avg_pool1d, (5,))]
    for ours, theirs, args in cases:
        xt = torch.tensor(x, requires_grad=True)
        yt = theirs(xt, *args)
        yt.sum().backward()
        xn = nnx.tensor(x, requires_grad=True)
        yn = ours(xn, *args)
        yn.sum().backward()
        np.testing.assert_allclose(yn.numpy(), yt.detach().numpy(), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(xn.grad.numpy(), xt.grad.numpy(), rtol=1e-6, atol=1e-6)
    y, idx = F.max_pool1d(nnx.tensor(x), 3, 2, 1, return_indices=True)
    np.testing.assert_array_equal(idx.numpy(), tf.max_pool1d(torch.tensor(x), 3, 2, 1,
                                                             return_indices=True)[1].numpy())


def test_float16_and_strided_input():
    x = _rand((2, 3, 8, 8), np.float32)
    y16 = F.max_pool2d(nnx.tensor(x.astype(np.float16)), 2)
    assert y16.dtype == np.float16
    np.testing.assert_array_equal(y16.numpy(), F.max_pool2d(nnx.tensor(x), 2).numpy()
                                  .astype(np.float16))
    a16 = F.avg_pool2d(nnx.tensor(x.astype(np.float16)), 3, 1, 1)
    assert a16.dtype == np.float16
    np.testing.assert_allclose(a16.numpy(), F.avg_pool2d(nnx.tensor(x), 3, 1, 1).numpy(),
                               atol=5e-3)
    xs = nnx.tensor(x).permute(0, 1, 3, 2)  # a non-contiguous view
    np.testing.assert_array_equal(F.max_pool2d(xs, 2).numpy(),
                                  F.max_pool2d(nnx.tensor(np.ascontiguousarray(
                                      x.transpose(0, 1, 3, 2))), 2).numpy())


# ---------------------------------------------------------------------- unbatched input
@pytest.mark.parametrize("fn", [lambda t: F.max_pool2d(t, 3, 2, 1), lambda t: F.avg_pool2d(t, 2),
                                lambda t: F.adaptive_avg_pool2d(t, (3, 2)),
                                nn.MaxPool2d(2), nn.AvgPool2d(3, 1, 1), nn.AdaptiveAvgPool2d(1)])
def test_unbatched_input(fn):
    x = _rand((3, 7, 8), np.float32)
    xn = nnx.tensor(x, requires_grad=True)
    y = fn(xn)
    y.sum().backward()
    xb = nnx.tensor(x[None], requires_grad=True)
    yb = fn(xb)
    yb.sum().backward()
    assert y.shape == yb.shape[1:]
    np.testing.assert_array_equal(y.numpy(), yb.numpy()[0])
    np.testing.assert_array_equal(xn.grad.numpy(), xb.grad.numpy()[0])


# ---------------------------------------------------------------------- errors
def test_wrong_rank_names_the_layer():
    with pytest.raises(ShapeError, match=r"^MaxPool2d\(kernel_size=2\) got input of shape "
                                         r"\(8, 28\) \(expected \(N, C, H, W\) or \(C, H, W\)\)$"):
        nn.MaxPool2d(2)(nnx.zeros(8, 28))
    with pytest.raises(ShapeError, match=r"AvgPool2d\(kernel_size=3, stride=1\) got input of "
                                         r"shape \(1, 2, 3, 4, 5\)"):
        nn.AvgPool2d(3, 1)(nnx.zeros(1, 2, 3, 4, 5))
    with pytest.raises(ShapeError, match=r"max_pool1d got input of shape \(4,\) \(expected "
                                         r"\(N, C, L\) or \(C, L\)\)"):
        F.max_pool1d(nnx.zeros(4), 2)
    with pytest.raises(ShapeError, match="AdaptiveAvgPool2d"):
        nn.AdaptiveAvgPool2d(1)(nnx.zeros(5, 5))


def test_window_larger_than_input():
    with pytest.raises(ShapeError, match=r"MaxPool2d\(kernel_size=5\) got input of shape \(1, 1, "
                                         r"4, 4\): the window of size 5x5 .* does not fit"):
        nn.MaxPool2d(5)(nnx.zeros(1, 1, 4, 4))
    with pytest.raises(ShapeError, match="does not fit in the padded 5x5 input"):
        F.avg_pool2d(nnx.zeros(1, 1, 3, 3), 6, padding=1)
    with pytest.raises(ShapeError, match="does not fit"):
        F.max_pool2d(nnx.zeros(1, 1, 4, 4), 3, dilation=2)
    with pytest.raises(ShapeError, match=r"max_pool1d got input of shape \(1, 2, 3\): the window "
                                         r"of size 5 \(stride 5, padding 0, dilation 1\) does not "
                                         r"fit in the padded 3 input \(output would be 0\)"):
        F.max_pool1d(nnx.zeros(1, 2, 3), 5)


@pytest.mark.parametrize("call,match", [
    (lambda: nn.MaxPool2d(0), "kernel_size must be >= 1, got 0"),
    (lambda: nn.MaxPool2d(2, stride=0), "stride must be >= 1, got 0"),
    (lambda: nn.MaxPool2d(2, stride=(1, -1)), r"stride must be >= 1, got \(1, -1\)"),
    (lambda: nn.MaxPool2d(3, padding=2), r"padding must be at most half the kernel size"),
    (lambda: nn.AvgPool2d(2, padding=-1), "padding must be >= 0"),
    (lambda: nn.MaxPool2d(2, dilation=0), "dilation must be >= 1"),
    (lambda: nn.MaxPool2d((2, 2, 2)), r"kernel_size must be an int or a tuple of 2 ints"),
    (lambda: nn.MaxPool2d(2.5), r"kernel_size must be an int or a tuple of 2 ints"),
    (lambda: nn.AvgPool2d(2, divisor_override=0), "divisor_override must be None or a positive"),
    (lambda: nn.AdaptiveAvgPool2d(0), "output_size must be a positive int"),
    (lambda: nn.AdaptiveAvgPool2d((2, 2, 2)), "output_size must be a positive int"),
    (lambda: F.max_pool2d(nnx.zeros(1, 1, 4, 4), 2, padding=3), "padding must be at most"),
    (lambda: F.max_pool1d(nnx.zeros(1, 1, 4), (2, 2)),
     "kernel_size must be an int or a tuple of 1"),
])
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_modules_name_themselves_in_argument_errors():
    with pytest.raises(ValueError, match=r"^MaxPool2d\(kernel_size=3, padding=2\): padding"):
        nn.MaxPool2d(3, padding=2)


# ---------------------------------------------------------------------- modules
def test_modules_repr_like_torch():
    torch = pytest.importorskip("torch")
    pairs = [(nn.MaxPool2d(2), torch.nn.MaxPool2d(2)),
             (nn.MaxPool2d(3, 2, 1, ceil_mode=True), torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True)),
             (nn.AvgPool2d(2), torch.nn.AvgPool2d(2)),
             (nn.AvgPool2d((2, 3), 1, (1, 1)), torch.nn.AvgPool2d((2, 3), 1, (1, 1))),
             (nn.AdaptiveAvgPool2d((2, None)), torch.nn.AdaptiveAvgPool2d((2, None))),
             (nn.MaxPool1d(3), torch.nn.MaxPool1d(3)), (nn.AvgPool1d(3), torch.nn.AvgPool1d(3)),
             (nn.AdaptiveAvgPool1d(4), torch.nn.AdaptiveAvgPool1d(4))]
    for ours, theirs in pairs:
        assert repr(ours) == repr(theirs)


@pytest.mark.parametrize("layer", [
    nn.MaxPool2d(2), nn.MaxPool2d((3, 2), 1, (1, 0), 2, False, True),
    nn.AvgPool2d(3, 2, 1, True, False, 4), nn.AdaptiveAvgPool2d((3, None)), nn.MaxPool1d(3, 2),
    nn.AvgPool1d(2), nn.AdaptiveAvgPool1d(2)])
def test_config_round_trip(layer):
    import json

    from nnx.nn.config import layer_from_config

    cfg = layer.get_config()
    again = layer_from_config(json.loads(json.dumps(cfg)))
    assert type(again) is type(layer) and again.get_config() == cfg and repr(again) == repr(layer)
    assert list(layer.parameters()) == [] and layer.state_dict() == {}


def test_output_shape():
    assert nn.MaxPool2d(2).output_shape((32, 24, 24)) == (32, 12, 12)
    assert nn.MaxPool2d(3, 2, 1).output_shape((3, 7, None)) == (3, 4, None)
    assert nn.AvgPool2d(2, ceil_mode=True).output_shape((1, 5, 5)) == (1, 3, 3)
    assert nn.AdaptiveAvgPool2d((1, None)).output_shape((8, 5, 6)) == (8, 1, 6)
    assert nn.MaxPool1d(2).output_shape((4, 9)) == (4, 4)
    assert nn.MaxPool2d(2).output_shape(None) is None
    with pytest.raises(ShapeError, match=r"MaxPool2d\(kernel_size=2\) got per-sample shape"):
        nn.MaxPool2d(2).output_shape((28, 28))
    with pytest.raises(ShapeError, match="smaller than the 4x4 window"):
        nn.MaxPool2d(4).output_shape((1, 3, 3))
    for layer, shape in ((nn.MaxPool2d(3, 2, 1, 2, ceil_mode=True), (2, 9, 8)),
                         (nn.AvgPool2d(3, 2, 1), (2, 9, 8)), (nn.AdaptiveAvgPool2d(3), (2, 9, 8))):
        assert layer(nnx.zeros(1, *shape)).shape[1:] == layer.output_shape(shape)


def test_return_indices_module():
    torch = pytest.importorskip("torch")
    x = np.round(_rand((2, 3, 6, 6), np.float32))
    y, idx = nn.MaxPool2d(2, return_indices=True)(nnx.tensor(x))
    yt, it = torch.nn.MaxPool2d(2, return_indices=True)(torch.tensor(x))
    np.testing.assert_array_equal(y.numpy(), yt.numpy())
    np.testing.assert_array_equal(idx.numpy(), it.numpy())
    assert not idx.requires_grad


def test_pool_in_a_small_cnn_trains():
    nnx.manual_seed(0)
    model = nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    rng = np.random.default_rng(0)
    x = nnx.tensor(rng.standard_normal((16, 2, 8, 8)).astype(np.float32))
    y = nnx.tensor(rng.integers(0, 3, 16))
    opt = nnx.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.item()))
    assert losses[-1] < losses[0]


# ---------------------------------------------------------------------- strict backend
def test_pooling_makes_no_host_sync(strict):
    x = nnx.tensor(_rand((2, 3, 9, 8), np.float32), requires_grad=True)
    assert x.device == "strict"
    outs = [F.max_pool2d(x, 2), F.max_pool2d(x, 3, 2, 1, 2, True), F.avg_pool2d(x, 3, 2, 1),
            F.adaptive_avg_pool2d(x, (4, 3)), F.max_pool1d(x[0], 3), F.adaptive_avg_pool2d(x, 1),
            F.max_pool2d(x, 2, return_indices=True)[0]]
    total = outs[0].sum()
    for y in outs[1:]:
        total = total + y.sum()
    total.backward()
    assert x.grad is not None and x.grad.device == "strict"
    assert strict.sync_counts["count"] == 0, strict.sync_counts["where"]
