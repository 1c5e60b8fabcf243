"""The tensor ops a CNN and its data code need (nnx/shape_ops.py and the shape ops of
nnx/ops.py): float64 gradchecks (odd sizes, negative dims, views), parity with torch (forward
and backward, float32), and the errors of bad input."""
from __future__ import annotations

import numpy as np
import pytest

import nnx
import nnx.functional as F
from nnx.testing import gradcheck

torch = pytest.importorskip("torch")


def _rand(*shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed + sum(shape)).standard_normal(shape).astype(dtype)


def _leaf(a):
    return nnx.tensor(a, dtype=a.dtype, requires_grad=True)


def _parity(fn_nnx, fn_torch, *arrays, tol=1e-6, dtype=np.float32):
    """fn_nnx on nnx tensors and fn_torch on torch tensors of the same float32 values: the same
    output (a tensor, or a tuple of them) and the same input gradients of a random projection."""
    arrays = [a.astype(dtype) for a in arrays]
    xs = [_leaf(a) for a in arrays]
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    out, tout = fn_nnx(*xs), fn_torch(*ts)
    outs = out if isinstance(out, tuple) else (out,)
    touts = tout if isinstance(tout, tuple) else (tout,)
    assert len(outs) == len(touts)
    rng = np.random.default_rng(1)
    loss, tloss = 0.0, 0.0
    for o, t in zip(outs, touts):
        assert o.shape == tuple(t.shape), (o.shape, tuple(t.shape))
        assert o.dtype == np.float32
        np.testing.assert_allclose(o.numpy(), t.detach().numpy(), rtol=tol, atol=tol)
        w = rng.standard_normal(o.shape).astype(dtype)
        loss = loss + (o * nnx.tensor(w)).sum()
        tloss = tloss + (t * torch.tensor(w)).sum()
    loss.backward()
    tloss.backward()
    for x, t in zip(xs, ts):
        np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy(), rtol=tol, atol=tol)


# ------------------------------------------------------------------ cat / stack
CAT_CASES = [((2, 3), (4, 3), (1, 3), 0), ((2, 3, 5), (2, 1, 5), (2, 4, 5), -2),
             ((3, 2), (3, 5), (3, 1), -1), ((1, 3, 2), (2, 3, 2), (3, 3, 2), 0)]


@pytest.mark.parametrize("a, b, c, dim", CAT_CASES)
def test_cat_gradcheck_and_torch(a, b, c, dim):
    xs = [_leaf(_rand(*s, seed=i)) for i, s in enumerate((a, b, c))]
    assert gradcheck(lambda *t: nnx.cat(t, dim=dim), xs)
    _parity(lambda *t: nnx.cat(t, dim), lambda *t: torch.cat(t, dim),
            *(_rand(*s, seed=i) for i, s in enumerate((a, b, c))))
    assert nnx.concatenate(xs, dim).shape == nnx.concat(xs, dim=dim).shape


def test_cat_of_views_and_one_input_without_grad():
    x = _leaf(_rand(3, 5))
    y = nnx.tensor(_rand(5, 2), dtype="float64")  # no grad
    assert gradcheck(lambda x: nnx.cat([x.T * 2.0, y, x[1:3, :].permute(1, 0)], dim=1), [x])
    out = nnx.cat([x.T, y], 1)
    out.sum().backward()
    assert y.grad is None and x.grad.shape == (3, 5)


@pytest.mark.parametrize("dim", [0, 1, 2, -1, -3])
def test_stack_gradcheck_and_torch(dim):
    shape = (3, 5)
    xs = [_leaf(_rand(*shape, seed=i)) for i in range(3)]
    assert gradcheck(lambda *t: nnx.stack(t, dim=dim), xs)
    _parity(lambda *t: nnx.stack(t, dim), lambda *t: torch.stack(t, dim),
            *(_rand(*shape, seed=i) for i in range(3)))


def test_cat_stack_dtypes():
    f = nnx.ones(2, 2)
    i = nnx.tensor([[1, 2]])
    assert nnx.cat([f, i]).dtype == np.float32  # an integer tensor takes the floating dtype
    assert nnx.cat([i, nnx.tensor([[1, 2]], dtype="int32")]).dtype == np.int64
    assert nnx.stack([i, i]).dtype == np.int64
    with pytest.raises(nnx.DTypeError, match="float32.*float64|float64.*float32"):
        nnx.cat([f, nnx.ones(2, 2, dtype="float64")])
    with pytest.raises(nnx.DTypeError):
        nnx.stack([f, nnx.ones(2, 2, dtype="float64")])


def test_cat_stack_errors():
    a, b = nnx.zeros(2, 3), nnx.zeros(3, 2)
    with pytest.raises(nnx.ShapeError, match=r"dimension 0.*\(2, 3\).*\(3, 2\)"):
        nnx.cat([a, b])
    with pytest.raises(nnx.ShapeError, match=r"\(2, 3\).*\(2, 3, 1\)"):
        nnx.cat([a, nnx.zeros(2, 3, 1)], dim=1)
    with pytest.raises(nnx.ShapeError, match="zero-dimensional"):
        nnx.cat([nnx.tensor(1.0), nnx.tensor(2.0)])
    with pytest.raises(IndexError, match="out of range"):
        nnx.cat([a, a], dim=2)
    with pytest.raises(IndexError, match="out of range"):
        nnx.stack([a, a], dim=3)
    with pytest.raises(ValueError, match="non-empty"):
        nnx.cat([])
    with pytest.raises(TypeError, match="list or tuple"):
        nnx.cat(a)
    with pytest.raises(nnx.ShapeError, match=r"same shape.*\(2, 3\).*\(3, 2\)"):
        nnx.stack([a, b])
    assert nnx.cat([a, a], dim=-1).shape == (2, 6) and nnx.stack([a, a], -1).shape == (2, 3, 2)


def test_cat_mixed_devices(strict):
    a = nnx.zeros(2, 3)  # on the strict (device-like) backend
    b = nnx.zeros(2, 3, device="cpu")
    with pytest.raises(nnx.DeviceError, match="cpu"):
        nnx.cat([a, b])
    with pytest.raises(nnx.DeviceError):
        nnx.stack([b, a])
    with pytest.raises(nnx.DeviceError):
        nnx.where(nnx.zeros(2, 3, device="cpu") > 0, a, a)


# ------------------------------------------------------------------ split / chunk
@pytest.mark.parametrize("size, dim, shape", [(2, 1, (3, 7)), (3, -1, (2, 4, 5)), (1, 0, (3, 2)),
                                              ([2, 0, 3, 2], -2, (4, 7, 3)), (7, 1, (2, 5))])
def test_split_gradcheck_and_torch(size, dim, shape):
    x = _leaf(_rand(*shape))
    pieces = nnx.split(x, size, dim)
    assert isinstance(pieces, tuple)
    assert [p.shape for p in pieces] == [tuple(p.shape) for p in torch.split(
        torch.zeros(shape), size, dim)]
    assert gradcheck(lambda x: nnx.cat([p * (i + 1.5) for i, p in enumerate(x.split(size, dim))],
                                       dim), [x])
    _parity(lambda x: nnx.split(x, size, dim), lambda t: torch.split(t, size, dim),
            _rand(*shape))


def test_split_some_pieces_unused():
    x = _leaf(_rand(3, 8))
    assert gradcheck(lambda x: x.split(3, 1)[1] * 2.0, [x])
    x.grad = None
    x.chunk(4, dim=-1)[2].sum().backward()
    g = np.zeros((3, 8))
    g[:, 4:6] = 1
    np.testing.assert_array_equal(x.grad.numpy(), g)


@pytest.mark.parametrize("n, chunks", [(6, 4), (5, 3), (7, 7), (3, 5), (8, 2), (0, 3)])
def test_chunk_sizes_as_torch(n, chunks):
    mine = nnx.chunk(nnx.zeros(2, n), chunks, dim=1)
    want = torch.chunk(torch.zeros(2, n), chunks, dim=1)
    assert [p.shape for p in mine] == [tuple(p.shape) for p in want]


@pytest.mark.parametrize("chunks, dim", [(3, 0), (2, -1), (4, 1)])
def test_chunk_gradcheck_and_torch(chunks, dim):
    x = _leaf(_rand(5, 7))
    assert gradcheck(lambda x: nnx.stack([p.sum(dim) * (i + 1.0) for i, p in
                                          enumerate(nnx.chunk(x, chunks, dim))], 0), [x])
    _parity(lambda x: x.chunk(chunks, dim), lambda t: t.chunk(chunks, dim), _rand(5, 7))


def test_split_chunk_errors():
    x = nnx.zeros(3, 5)
    with pytest.raises(nnx.ShapeError, match=r"sum exactly to 5.*\(3, 5\)"):
        nnx.split(x, [2, 2], dim=1)
    with pytest.raises(ValueError, match="positive"):
        x.split(0, 1)
    with pytest.raises(ValueError, match="positive"):
        x.chunk(0)
    with pytest.raises(IndexError, match="out of range"):
        x.split(2, dim=2)
    with pytest.raises(IndexError, match="out of range"):
        x.chunk(2, dim=-3)
    with pytest.raises(TypeError):
        x.split(1.5)


# ------------------------------------------------------------------ where
@pytest.mark.parametrize("sc, sa, sb", [((3, 4), (3, 4), (3, 4)), ((3, 1), (1, 4), (3, 4)),
                                        ((4,), (3, 4), (1,)), ((2, 1, 3), (5, 1), (2, 5, 3))])
def test_where_gradcheck_and_torch(sc, sa, sb):
    cond = _rand(*sc, seed=5) > 0
    a, b = _leaf(_rand(*sa, seed=1)), _leaf(_rand(*sb, seed=2))
    c = nnx.tensor(cond)
    assert gradcheck(lambda a, b: nnx.where(c, a, b), [a, b])
    _parity(lambda a, b: nnx.where(c, a, b), lambda a, b: torch.where(torch.tensor(cond), a, b),
            _rand(*sa, seed=1), _rand(*sb, seed=2))
    _parity(lambda a: a.where(c, 0.5), lambda a: a.where(torch.tensor(cond), 0.5),
            _rand(*sa, seed=1))


def test_where_scalars_and_dtypes():
    x = nnx.tensor([[-1.0, 2.0], [3.0, -4.0]], requires_grad=True)
    y = nnx.where(x > 0, x, 0.0)
    assert y.tolist() == [[0.0, 2.0], [3.0, 0.0]] and y.dtype == np.float32
    y.sum().backward()
    assert x.grad.tolist() == [[0.0, 1.0], [1.0, 0.0]]
    assert nnx.where(x > 0, 1.0, -1.0).dtype == np.float32
    assert nnx.where(x > 0, 1, 0).dtype == np.int64
    assert nnx.where(x > 0, nnx.tensor([1, 2]), 0.5).dtype == np.float32
    assert nnx.where(x > 0, nnx.tensor([1, 2]), 0.5).tolist() == [[0.5, 2.0], [1.0, 0.5]]
    assert x.masked_fill(x < 0, 0.0).tolist() == [[0.0, 2.0], [3.0, 0.0]]
    rows, cols = nnx.where(x > 0)
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0] and rows.dtype == np.int64
    with pytest.raises(nnx.DTypeError, match="bool"):
        nnx.where(x, x, x)
    with pytest.raises(nnx.ShapeError, match=r"\(2, 2\).*\(3,\)"):
        nnx.where(x > 0, x, nnx.zeros(3))
    with pytest.raises(nnx.DTypeError):
        nnx.where(x > 0, x, nnx.zeros(2, 2, dtype="float64"))


def test_where_and_masked_fill_keep_an_int_tensors_dtype():
    # Regression: a Python int promoted an int32 tensor to int64, and masked_fill on an int
    # tensor with a float value returned a float tensor (PyTorch keeps the tensor's dtype).
    c = nnx.tensor([True, False, True])
    i32 = nnx.tensor(np.arange(3, dtype=np.int32), dtype="int32")
    tc, ti = torch.tensor([True, False, True]), torch.arange(3, dtype=torch.int32)
    for got, want in ((nnx.where(c, i32, 0), torch.where(tc, ti, 0)),
                      (nnx.where(c, 7, i32), torch.where(tc, 7, ti)),
                      (i32.masked_fill(c, 7), ti.masked_fill(tc, 7)),
                      (i32.masked_fill(c, 2.7), ti.masked_fill(tc, 2.7)),
                      (i32.masked_fill(c, -2.7), ti.masked_fill(tc, -2.7))):
        assert str(got.dtype) == str(want.dtype).replace("torch.", "")
        assert got.tolist() == want.tolist()
    with pytest.raises(nnx.DTypeError, match="inf.*int32"):
        i32.masked_fill(c, float("inf"))
    with pytest.raises(nnx.DTypeError, match="float16"):
        nnx.zeros(3, dtype="float16").masked_fill(c, 1e6)
    with pytest.raises(nnx.ShapeError, match="0-d"):
        i32.masked_fill(c, i32)
    # float tensors: value and gradient as in PyTorch
    a = _rand(2, 3)
    mask = a > 0.3
    _parity(lambda x: x.masked_fill(nnx.tensor(mask), float("-inf")).exp(),
            lambda t: t.masked_fill(torch.tensor(mask), float("-inf")).exp(), a)


def test_cat_skips_legacy_empty_1d_tensors():
    # Regression: ``out = cat([out, x])`` from ``empty(0)`` (a PyTorch idiom) raised ShapeError.
    x = _leaf(_rand(2, 3))
    y = nnx.cat([nnx.zeros(0), x, nnx.zeros(0)])
    assert y.shape == (2, 3)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.ones((2, 3)))
    assert nnx.cat([nnx.zeros(0), x], dim=1).shape == (2, 3)
    assert nnx.cat([nnx.zeros(0), nnx.zeros(0)]).shape == (0,)
    assert nnx.cat([nnx.zeros(0, 3), nnx.zeros(2, 3)]).shape == (2, 3)


@pytest.mark.parametrize("p", [(-2, 1), (1, -2), (3, -2), (-2, 3), (-1, 2, 2, -1)])
def test_pad_circular_with_crops_wraps_the_cropped_tensor(p):
    # Regression: circular padding next to a negative pad wrapped around the uncropped input;
    # PyTorch wraps around what the crop leaves.
    x = _leaf(_rand(2, 4, 6))
    assert gradcheck(lambda x: F.pad(x, p, mode="circular"), [x])
    _parity(lambda x: F.pad(x, p, mode="circular"),
            lambda t: torch.nn.functional.pad(t, p, mode="circular"), _rand(2, 4, 6))
    with pytest.raises(nnx.ShapeError, match="more than once"):
        F.pad(nnx.zeros(1, 2, 6), (3, -4), mode="circular")


def test_pad_value_the_dtype_cannot_hold_raises():
    # Regression: an int tensor padded with inf/nan got INT64_MIN (NumPy's unsafe cast)
    with pytest.raises(nnx.DTypeError, match="pad: value inf.*int64"):
        F.pad(nnx.zeros(2, dtype="int64"), (1, 1), value=float("inf"))
    with pytest.raises(nnx.DTypeError, match="float16"):
        F.pad(nnx.zeros(2, dtype="float16"), (1, 1), value=1e6)
    got = F.pad(nnx.zeros(2, dtype="int64"), (1, 1), value=-2.7)
    want = torch.nn.functional.pad(torch.zeros(2, dtype=torch.int64), (1, 1), value=-2.7)
    assert got.dtype == np.int64 and got.tolist() == want.tolist()


def test_pad_to_an_empty_dimension_as_torch():
    # Regression: a crop to size 0 raised, PyTorch gives an empty tensor
    p = (-2, -3)
    _parity(lambda x: F.pad(x, p), lambda t: torch.nn.functional.pad(t, p), _rand(2, 5))


# ------------------------------------------------------------------ pad
PAD_CASES = [((2, 3, 5), (1, 2)), ((2, 3, 5), (0, 1, 2, 0)), ((1, 2, 3, 4), (2, 1, 1, 3)),
             ((2, 3, 5), (-1, 2)), ((2, 3, 5), (-2, -1, 1, -1)), ((3, 4), (1, 1, 2, 2)),
             ((2, 5), (-1, -2, -1, 0))]


@pytest.mark.parametrize("value", [0.0, 1.5])
@pytest.mark.parametrize("shape, p", PAD_CASES)
def test_pad_constant_gradcheck_and_torch(shape, p, value):
    x = _leaf(_rand(*shape))
    assert gradcheck(lambda x: F.pad(x, p, value=value), [x])
    _parity(lambda x: F.pad(x, p, value=value),
            lambda t: torch.nn.functional.pad(t, p, value=value), _rand(*shape))


EDGE_CASES = [((2, 5), (2, 3)), ((2, 3, 5), (1, 4)), ((2, 3, 5), (2, 1, 1, 2)),
              ((1, 2, 4, 5), (3, 0, 2, 3)), ((1, 2, 3, 4, 5), (1, 2, 0, 2, 2, 1)),
              ((2, 3, 4, 5), (1, 1, 1, 1, 1, 1))]


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("shape, p", EDGE_CASES)
def test_pad_edge_modes_gradcheck_and_torch(shape, p, mode):
    x = _leaf(_rand(*shape))
    assert gradcheck(lambda x: F.pad(x, p, mode=mode), [x])
    _parity(lambda x: F.pad(x, p, mode=mode),
            lambda t: torch.nn.functional.pad(t, p, mode=mode), _rand(*shape))


@pytest.mark.parametrize("p", [(-1, 2), (2, -2), (-1, -1, 1, 0)])
def test_pad_replicate_with_crops(p):
    x = _leaf(_rand(2, 4, 5))
    assert gradcheck(lambda x: F.pad(x, p, mode="replicate"), [x])
    _parity(lambda x: F.pad(x, p, mode="replicate"),
            lambda t: torch.nn.functional.pad(t, p, mode="replicate"), _rand(2, 4, 5))


def test_pad_of_a_view():
    x = _leaf(_rand(4, 3, 5))
    assert gradcheck(lambda x: F.pad(x.permute(1, 0, 2), (1, 2, 2, 1), mode="reflect"), [x])
    assert gradcheck(lambda x: F.pad(x.permute(2, 0, 1)[1:], (1, -1, 0, 2)), [x])


def test_pad_errors():
    x = nnx.zeros(1, 3)
    with pytest.raises(ValueError, match="divisible by 2"):
        F.pad(x, (1,))
    with pytest.raises(ValueError, match="two times"):
        F.pad(x, (1, 1, 1, 1, 1, 1))
    with pytest.raises(nnx.ShapeError, match="size -1"):
        F.pad(x, (-2, -2))
    with pytest.raises(nnx.ShapeError, match="less than its size 3"):
        F.pad(x, (3, 1), mode="reflect")
    with pytest.raises(nnx.ShapeError, match="at most its size 3"):
        F.pad(nnx.zeros(1, 1, 3), (4, 1), mode="circular")
    with pytest.raises(NotImplementedError, match=r"\(3,\)"):
        F.pad(nnx.zeros(3), (1, 1), mode="reflect")
    with pytest.raises(NotImplementedError):
        F.pad(nnx.zeros(2, 3), (1, 1, 1, 1), mode="replicate")
    with pytest.raises(ValueError, match="mode"):
        F.pad(x, (1, 1), mode="wrap")
    assert F.pad(x, (0, 0)).shape == (1, 3)


# ------------------------------------------------------------------ expand / repeat / view_as
def test_expand_repeat_view_as():
    x = _leaf(_rand(3, 1))
    assert gradcheck(lambda x: x.expand(2, -1, 4), [x])
    assert gradcheck(lambda x: x.expand_as(nnx.zeros(3, 5)) * 1.0, [x])
    y = _leaf(_rand(2, 3))
    assert gradcheck(lambda y: y.repeat(2, 1, 3), [y])
    assert gradcheck(lambda y: y.repeat(1, 2), [y])
    assert gradcheck(lambda y: y.view_as(nnx.zeros(3, 2)), [y])
    _parity(lambda x: x.expand(2, 3, 4), lambda t: t.expand(2, 3, 4), _rand(3, 1))
    _parity(lambda y: y.repeat(3, 2), lambda t: t.repeat(3, 2), _rand(2, 3))
    _parity(lambda y: y.repeat((2, 1, 2)), lambda t: t.repeat((2, 1, 2)), _rand(2, 3))
    with pytest.raises(nnx.ShapeError, match="not 1"):
        y.expand(3, 3)
    with pytest.raises(nnx.ShapeError):
        y.expand(3)
    with pytest.raises(nnx.ShapeError, match="smaller"):
        y.repeat(2)
    with pytest.raises(nnx.ShapeError):
        y.view_as(nnx.zeros(4))


# ------------------------------------------------------------------ the shape ops of ops.py
def test_permute_unsqueeze_squeeze_flatten_view():
    a = _rand(2, 3, 5)
    x = _leaf(a)
    assert gradcheck(lambda x: x.permute(2, 0, 1), [x])
    assert gradcheck(lambda x: x.permute(-1, -3, 1), [x])
    assert gradcheck(lambda x: nnx.unsqueeze(x, -1).squeeze(-1).unsqueeze(1), [x])
    assert gradcheck(lambda x: nnx.flatten(x, 1), [x])
    assert gradcheck(lambda x: x.view(-1, 5).view(3, -1), [x])
    t = torch.tensor(a)
    for f in (lambda v: v.permute(-1, -3, 1), lambda v: v.unsqueeze(-1), lambda v: v.unsqueeze(3),
              lambda v: v.unsqueeze(-4), lambda v: v.flatten(1), lambda v: v.flatten(0, 1),
              lambda v: v.flatten(-2), lambda v: v.view(-1, 15), lambda v: v.transpose(-1, 0),
              lambda v: v.unsqueeze(0).unsqueeze(-1).squeeze((0, -1)),
              lambda v: v.unsqueeze(0).squeeze(0), lambda v: v.squeeze(1),
              lambda v: v.reshape(1, 2, 1, 15, 1).squeeze((0, 2)),
              lambda v: v.reshape(1, 2, 1, 15).squeeze()):
        assert f(x).shape == tuple(f(t).shape)
    assert nnx.flatten(nnx.tensor(3.0)).shape == (1,)
    assert nnx.zeros(2, 0, 3).flatten(1).shape == (2, 0)
    assert nnx.tensor(3.0).squeeze(0).shape == ()
    with pytest.raises(ValueError, match="start_dim"):
        x.flatten(2, 1)
    with pytest.raises(IndexError, match="out of range"):
        x.unsqueeze(4)
    with pytest.raises(IndexError, match="out of range"):
        x.squeeze(3)
    with pytest.raises(nnx.ShapeError, match="permute"):
        x.permute(0, 1)
    with pytest.raises(ValueError, match="repeated"):
        x.permute(0, 1, 1)
    with pytest.raises(IndexError):
        x.transpose(0, 3)


def test_reductions_against_torch():
    a = _rand(3, 5, 4)
    t = torch.tensor(a)
    x = nnx.tensor(a, dtype="float64")
    for dim in (0, 1, -1):
        for keep in (False, True):
            np.testing.assert_array_equal(x.argmax(dim=dim, keepdim=keep).numpy(),
                                          t.argmax(dim=dim, keepdim=keep).numpy())
            v, i = x.min(dim, keepdim=keep)
            tv, ti = t.min(dim, keepdim=keep)
            np.testing.assert_array_equal(v.numpy(), tv.numpy())
            np.testing.assert_array_equal(i.numpy(), ti.numpy())
            mv, mi = x.max(dim=dim, keepdim=keep)
            np.testing.assert_array_equal(mi.numpy(), t.max(dim=dim, keepdim=keep).indices.numpy())
            for kw in (dict(), dict(unbiased=False), dict(correction=0), dict(correction=2)):
                np.testing.assert_allclose(x.var(dim, keepdim=keep, **kw).numpy(),
                                           t.var(dim, keepdim=keep, **kw).numpy(), rtol=1e-12)
                np.testing.assert_allclose(x.std(dim, keepdim=keep, **kw).numpy(),
                                           t.std(dim, keepdim=keep, **kw).numpy(), rtol=1e-12)
    assert x.argmax().item() == t.argmax().item()
    np.testing.assert_allclose(x.var((0, 2)).numpy(), t.var((0, 2)).numpy(), rtol=1e-12)
    assert x.min().item() == t.min().item() and x.max().item() == t.max().item()


@pytest.mark.parametrize("name", ["min", "max", "var", "std"])
def test_reduction_gradients(name):
    a = _rand(3, 5, 4)
    x = _leaf(a)
    if name in ("min", "max"):
        assert gradcheck(lambda x: getattr(x, name)(dim=-2)[0], [x])
        assert gradcheck(lambda x: getattr(x, name)(1, keepdim=True).values, [x])
        assert gradcheck(lambda x: getattr(x, name)(), [x])
        f = (lambda v: getattr(v, name)(-2)[0])
    else:
        assert gradcheck(lambda x: getattr(x, name)(-1), [x])
        assert gradcheck(lambda x: getattr(x, name)((0, 2), correction=0, keepdim=True), [x])
        assert gradcheck(lambda x: getattr(x, name)(unbiased=False), [x])
        f = (lambda v: getattr(v, name)(1, keepdim=True))
    _parity(f, f, a)


# ------------------------------------------------------------------ no host sync
def test_ops_make_no_host_sync(strict):
    x = nnx.randn(2, 3, 5, 5, requires_grad=True)
    y = nnx.cat([F.pad(x, (1, 1, 1, 1)), F.pad(x, (1, 1, 1, 1), mode="reflect")], dim=1)
    y = nnx.where(y > 0, y, y * 0.1)
    a, b = y.chunk(2, dim=1)
    z = x.repeat(1, 1, 2, 2)[..., :7, :7].expand(2, 3, 7, 7)
    loss = (nnx.stack([a, b], 0).sum(0) * z).sum()
    strict.reset_sync_count()
    loss.backward()
    assert strict.sync_counts["count"] == 0, [w for w, _ in strict.sync_counts["where"]]
    assert x.grad.shape == x.shape
