"""Differentiable tensor ops: arithmetic, reductions, shape ops, elementwise math.

Each op is a ``Function`` (forward and backward side by side) plus a lowercase wrapper; the
wrappers are also bound as ``Tensor`` methods and operators at the bottom of this module.
"""
from __future__ import annotations

import builtins
import collections
import numbers

import numpy as np

from . import _config
from .activations import tanh  # noqa: F401  (an op like the others: x.tanh(), nnx.tanh)
from .autograd import Function, _device_mismatch
from .errors import DTypeError, ShapeError
from .tensor import Tensor, _wrap, as_tensor, tensor


# ---------------------------------------------------------------------- helpers
def sum_to(g, shape):
    """Sum the broadcast gradient ``g`` down to ``shape`` (the inverse of broadcasting)."""
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(i + lead for i, s in enumerate(shape)
                                      if s == 1 and g.shape[i + lead] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


def _is_scalar(x) -> bool:
    return isinstance(x, numbers.Number) and not isinstance(x, bool) or isinstance(x, np.generic)


def _binary_operands(a, b, opname):
    """Two Tensors of one device and one dtype for a binary op.

    Floating tensors of two different dtypes raise (nnx never promotes silently); an integer
    or bool operand takes the floating operand's dtype.
    """
    if not isinstance(a, Tensor):
        a = as_tensor(a, like=b)
    elif not isinstance(b, Tensor):
        b = as_tensor(b, like=a)
    da, db = a.data.dtype, b.data.dtype
    if da != db:
        fa, fb = da.kind == "f", db.kind == "f"
        if fa and fb:
            raise DTypeError(f"{opname}: dtypes differ ({da} and {db}); convert one with "
                             f".to(dtype=...) (nnx does not promote silently)")
        if fa:
            b = b.to(dtype=da)
        elif fb:
            a = a.to(dtype=db)
        else:
            dt = np.promote_types(da, db)
            a, b = a.to(dtype=dt), b.to(dtype=dt)
    return a, b


def _axis(axis, dim):
    if dim is not None:
        if axis is not None:
            raise TypeError("give either axis= or dim=, not both")
        return dim
    return axis


def _norm_axes(axis, ndim, name="reduction"):
    """``axis`` (an int, a sequence of ints, or None) as non-negative ints; IndexError (as in
    PyTorch) for an axis outside [-ndim, ndim) (a 0-d tensor takes 0 and -1)."""
    if axis is None:
        return None
    axes = tuple(axis) if isinstance(axis, (list, tuple)) else (axis,)
    n = builtins.max(ndim, 1)
    for a in axes:
        if isinstance(a, bool) or not isinstance(a, (int, np.integer)) or not -n <= a < n:
            raise IndexError(f"{name}: axis {a!r} is out of range for a tensor of {ndim} "
                             f"dimension{'s' if ndim != 1 else ''} (expected an int in "
                             f"[{-n}, {n - 1}])")
    out = tuple(int(a) % ndim if ndim else int(a) for a in axes)
    return out if isinstance(axis, (list, tuple)) else out[0]


# ---------------------------------------------------------------------- arithmetic
class Add(Function):
    def forward(self, a, b):
        self.shapes = (a.shape, b.shape)
        return a + b

    def backward(self, gy):
        sa, sb = self.shapes
        n = self.needs_input_grad
        return (sum_to(gy, sa) if n[0] else None, sum_to(gy, sb) if n[1] else None)


class Sub(Function):
    def forward(self, a, b):
        self.shapes = (a.shape, b.shape)
        return a - b

    def backward(self, gy):
        sa, sb = self.shapes
        n = self.needs_input_grad
        return (sum_to(gy, sa) if n[0] else None, sum_to(-gy, sb) if n[1] else None)


class Mul(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, gy):
        a, b = self.a, self.b
        n = self.needs_input_grad
        return (sum_to(gy * b, a.shape) if n[0] else None, sum_to(gy * a, b.shape) if n[1] else None)


class Div(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a / b

    def backward(self, gy):
        a, b = self.a, self.b
        n = self.needs_input_grad
        ga = sum_to(gy / b, a.shape) if n[0] else None
        gb = sum_to(-gy * a / (b * b), b.shape) if n[1] else None
        return ga, gb


class Pow(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        self.y = a ** b
        return self.y

    def backward(self, gy):
        a, b, y = self.a, self.b, self.y
        n = self.needs_input_grad
        ga = sum_to(gy * b * a ** (b - 1), a.shape) if n[0] else None
        gb = None
        if n[1]:
            xp = self.xp
            with np.errstate(divide="ignore", invalid="ignore"):
                loga = xp.where(a > 0, xp.log(xp.where(a > 0, a, 1)), 0)
            gb = sum_to(gy * y * loga, b.shape)
        return ga, gb


class AddConst(Function):
    def __init__(self, c):
        self.c = c

    def forward(self, x):
        return x + self.c

    def backward(self, gy):
        return (gy,)


class MulConst(Function):
    def __init__(self, c):
        self.c = c

    def forward(self, x):
        return x * self.c

    def backward(self, gy):
        return (gy * self.c,)


class RSubConst(Function):  # c - x
    def __init__(self, c):
        self.c = c

    def forward(self, x):
        return self.c - x

    def backward(self, gy):
        return (-gy,)


class RDivConst(Function):  # c / x
    def __init__(self, c):
        self.c = c

    def forward(self, x):
        self.x = x
        return self.c / x

    def backward(self, gy):
        x = self.x
        return (gy * (-self.c) / (x * x),)


class PowConst(Function):  # x ** c
    def __init__(self, c):
        self.c = c

    def forward(self, x):
        self.x = x
        return x ** self.c

    def backward(self, gy):
        c = self.c
        if c == 2:
            return (gy * (2 * self.x),)
        return (gy * (c * self.x ** (c - 1)),)


class RPowConst(Function):  # c ** x
    def __init__(self, c):
        self.c = c

    def forward(self, x):
        self.y = self.c ** x
        return self.y

    def backward(self, gy):
        return (gy * self.y * float(np.log(self.c)),)


class Neg(Function):
    def forward(self, x):
        return -x

    def backward(self, gy):
        return (-gy,)


def _number(c):
    """A Python number, kept weak so float32 stays float32 (never a NumPy float64 scalar)."""
    return c.item() if isinstance(c, np.generic) else c


def _promote_int(x):
    return x.to(dtype=_config.get_default_dtype()) if x.data.dtype.kind in "iub" else x


def _weak(x, c):
    """``x`` for an op with the Python number ``c``: an integer tensor meeting a float constant
    takes the default floating dtype, as in PyTorch."""
    return _promote_int(x) if isinstance(c, float) else x


def _binary(name, tensor_const, const_tensor, tensor_tensor):
    """The elementwise binary op ``name`` over Tensors, arrays and numbers: a Tensor and a number
    go to ``tensor_const(x, c)`` or ``const_tensor(c, x)`` (one node, the number a constant),
    two tensors-or-arrays to ``tensor_tensor(a, b)`` after ``_binary_operands``."""

    def op(a, b):
        if isinstance(a, Tensor) and _is_scalar(b):
            return tensor_const(a, _number(b))
        if isinstance(b, Tensor) and _is_scalar(a):
            return const_tensor(_number(a), b)
        return tensor_tensor(*_binary_operands(a, b, name))

    op.__name__ = op.__qualname__ = name
    return op


def _div_const(x, c):
    if c == 0:  # x / 0 gives inf/nan as in PyTorch, not 1/0's ZeroDivisionError
        return Div().apply(*_binary_operands(_promote_int(x), float(c), "div"))
    return MulConst(1.0 / c).apply(_promote_int(x))


def _div_tensors(a, b):
    if a.data.dtype.kind in "iub":
        a, b = _promote_int(a), _promote_int(b)
    return Div().apply(a, b)


def _add_const(x, c):
    return AddConst(c).apply(_weak(x, c))


def _sub_const(x, c):
    return AddConst(-c).apply(_weak(x, c))


def _rsub_const(c, x):
    return RSubConst(c).apply(_weak(x, c))


def _mul_const(x, c):
    return MulConst(c).apply(_weak(x, c))


def _pow_const(x, c):
    return PowConst(c).apply(_weak(x, c))


def _rdiv_const(c, x):
    return RDivConst(c).apply(_promote_int(x))


def _rpow_const(c, x):
    return RPowConst(c).apply(_promote_int(x))


def _add_tensors(a, b):
    return Add().apply(a, b)


def _sub_tensors(a, b):
    return Sub().apply(a, b)


def _mul_tensors(a, b):
    return Mul().apply(a, b)


def _pow_tensors(a, b):
    return Pow().apply(a, b)


def _swap(f):
    """``f(x, c)`` as ``g(c, x)``: for the commutative ops."""
    def g(c, x):
        return f(x, c)
    return g


add = _binary("add", _add_const, _swap(_add_const), _add_tensors)
add.__doc__ = """a + b, elementwise with broadcasting (Tensors, arrays or numbers).

    Shape: the broadcast shape of a and b. Floating tensors of two dtypes raise DTypeError (no
    silent promotion); an integer operand takes the floating one's dtype.
    """
sub = _binary("sub", _sub_const, _rsub_const, _sub_tensors)
sub.__doc__ = """a - b, elementwise with broadcasting (see ``add``)."""
mul = _binary("mul", _mul_const, _swap(_mul_const), _mul_tensors)
mul.__doc__ = """a * b, elementwise with broadcasting (see ``add``)."""
div = _binary("div", _div_const, _rdiv_const, _div_tensors)
div.__doc__ = """a / b, elementwise with broadcasting; integer operands give the default
    floating dtype (true division, as in PyTorch). See ``add``."""
pow = _binary("pow", _pow_const, _rpow_const, _pow_tensors)
pow.__doc__ = """a ** b, elementwise with broadcasting (see ``add``)."""


def neg(x):
    """-x, elementwise. Shape: x's."""
    return Neg().apply(x)


class Maximum(Function):
    """Elementwise max (``fn="max"``) or min of two tensors; at ties each gets half the
    gradient, as in PyTorch."""

    def __init__(self, fn):
        self.fn = fn

    def forward(self, a, b):
        self.a, self.b = a, b
        return self.xp.maximum(a, b) if self.fn == "max" else self.xp.minimum(a, b)

    def backward(self, gy):
        a, b = self.a, self.b
        wa = (a > b if self.fn == "max" else a < b) + 0.5 * (a == b)
        n = self.needs_input_grad
        return (sum_to(gy * wa, a.shape) if n[0] else None,
                sum_to(gy * (1 - wa), b.shape) if n[1] else None)


def maximum(a, b):
    """The elementwise maximum of a and b (broadcast; see ``add``). Ties split the gradient."""
    return Maximum("max").apply(*_binary_operands(a, b, "maximum"))


def minimum(a, b):
    """The elementwise minimum of a and b (see ``maximum``)."""
    return Maximum("min").apply(*_binary_operands(a, b, "minimum"))


# ---------------------------------------------------------------------- matmul
class MatMul(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a @ b

    def backward(self, gy):
        a, b = self.a, self.b
        xp = self.xp
        if a.ndim == 1 and b.ndim == 1:  # inner product: gy is 0-d
            n = self.needs_input_grad
            return (gy * b if n[0] else None, gy * a if n[1] else None)
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        g = gy
        if a.ndim == 1:
            g = xp.expand_dims(g, -2)
        if b.ndim == 1:
            g = xp.expand_dims(g, -1)
        n = self.needs_input_grad
        ga = gb = None
        if n[0]:
            ga = sum_to(g @ xp.swapaxes(b2, -1, -2), a2.shape).reshape(a.shape)
        if n[1]:
            gb = sum_to(xp.swapaxes(a2, -1, -2) @ g, b2.shape).reshape(b.shape)
        return ga, gb


def matmul(a, b):
    """a @ b with NumPy/PyTorch matmul semantics: (*, n, k) @ (*, k, m) -> (*, n, m), batch
    axes broadcast; 1-D operands are promoted and their axis dropped again. Both operands need
    one dtype (DTypeError otherwise) and fitting inner dimensions (ShapeError)."""
    if not isinstance(a, Tensor):
        a = as_tensor(a, like=b)
    if not isinstance(b, Tensor):
        b = as_tensor(b, like=a)
    if a.ndim == 0 or b.ndim == 0:
        raise ShapeError(f"matmul: both operands need at least 1 dimension, got shapes "
                         f"{a.shape} and {b.shape}")
    ka = a.shape[-1]
    kb = b.shape[0] if b.ndim == 1 else b.shape[-2]
    if ka != kb:
        raise ShapeError(f"matmul: shapes {a.shape} and {b.shape} do not fit (inner dimensions "
                         f"{ka} != {kb})")
    if a.dtype != b.dtype:
        raise DTypeError(f"matmul: dtypes differ ({a.dtype} and {b.dtype}); convert one with .to(dtype=...)")
    return MatMul().apply(a, b)


# ---------------------------------------------------------------------- reductions
class Sum(Function):
    def __init__(self, axis, keepdims):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, x):
        self.shape = x.shape
        return x.sum(axis=self.axis, keepdims=self.keepdims)

    def backward(self, gy):
        return (_expand_reduced(self.xp, gy, self.shape, self.axis, self.keepdims),)


class Mean(Function):
    def __init__(self, axis, keepdims):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, x):
        self.shape = x.shape
        y = x.mean(axis=self.axis, keepdims=self.keepdims)
        self.n = (x.size // y.size) if y.size else 1
        return y

    def backward(self, gy):
        g = _expand_reduced(self.xp, gy, self.shape, self.axis, self.keepdims)
        return (g * (1.0 / self.n),)


class Max(Function):
    """max/amax over ``axis``; ties share the gradient equally (as torch.amax does)."""

    def __init__(self, axis, keepdims, fn="max"):
        self.axis, self.keepdims, self.fn = axis, keepdims, fn

    def forward(self, x):
        self.x = x
        f = x.max if self.fn == "max" else x.min
        self.y = f(axis=self.axis, keepdims=True)
        y = self.y
        if not self.keepdims:
            y = y.reshape(_reduced_shape(x.shape, self.axis))
        return y

    def backward(self, gy):
        xp = self.xp
        mask = (self.x == self.y)
        count = mask.sum(axis=self.axis, keepdims=True)
        g = _expand_reduced(xp, gy, self.x.shape, self.axis, self.keepdims)
        return (g * mask / count,)


def _reduced_shape(shape, axis):
    if axis is None:
        return ()
    axes = axis if isinstance(axis, tuple) else (axis,)
    axes = tuple(a % len(shape) for a in axes)
    return tuple(s for i, s in enumerate(shape) if i not in axes)


def _expand_reduced(xp, gy, shape, axis, keepdims):
    if axis is not None and not keepdims:
        axes = axis if isinstance(axis, tuple) else (axis,)
        axes = sorted(a % len(shape) for a in axes)
        for a in axes:
            gy = xp.expand_dims(gy, a)
    return xp.broadcast_to(gy, shape)


def _reduction_args(x, axis, dim, keepdims, keepdim, name):
    """``(axes, keep)`` of a reduction called with NumPy's ``axis``/``keepdims`` or PyTorch's
    ``dim``/``keepdim`` (either spelling, not both): axes normalized to non-negative ints (or
    None for all), keep a bool."""
    if dim is not None:
        if axis is not None:
            raise TypeError(f"{name}: give either axis= or dim=, not both")
        axis = dim
    return _norm_axes(axis, x.ndim, name), bool(keepdims or keepdim)


def sum(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """The sum over ``axis`` (an int, a tuple of ints, or None for all elements).

    Shape: x's shape without the reduced axes (kept as size 1 with ``keepdims``/``keepdim``);
    dtype: x's.
    """
    axes, keep = _reduction_args(x, axis, dim, keepdims, keepdim, "sum")
    return Sum(axes, keep).apply(x)


def mean(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """The mean over ``axis`` (see ``sum``); integer tensors give the default floating dtype."""
    axes, keep = _reduction_args(x, axis, dim, keepdims, keepdim, "mean")
    return Mean(axes, keep).apply(_promote_int(x))


MaxResult = collections.namedtuple("MaxResult", ["values", "indices"])


def _maxmin(x, dim, keepdim, axis, keepdims, fn):
    if isinstance(dim, Tensor):  # torch.max(a, b): the elementwise maximum
        return (maximum if fn == "max" else minimum)(x, dim)
    if dim is not None and axis is None:
        # PyTorch form: max(dim) returns (values, indices)
        d, keep = _reduction_args(x, None, dim, keepdims, keepdim, fn)
        values = Max(d, keep, fn).apply(x)
        arg = x.data.argmax(axis=d) if fn == "max" else x.data.argmin(axis=d)
        if keep:
            arg = x._backend.xp.expand_dims(arg, d)
        return MaxResult(values, _wrap(arg, x._backend))
    axes, keep = _reduction_args(x, axis, dim, keepdims, keepdim, fn)
    return Max(axes, keep, fn).apply(x)


def max(x, dim=None, keepdim=False, *, axis=None, keepdims=False):
    """The maximum.

    PyTorch style: ``x.max()`` is the largest element (0-d); ``x.max(1)`` or ``x.max(dim=1)``
    returns ``(values, indices)`` along that axis. NumPy style: ``x.max(axis=1)`` returns the
    values. ``max(a, b)`` of two tensors is ``maximum(a, b)``. Ties share the gradient equally.
    """
    return _maxmin(x, dim, keepdim, axis, keepdims, "max")


def min(x, dim=None, keepdim=False, *, axis=None, keepdims=False):
    """The minimum, like ``max``."""
    return _maxmin(x, dim, keepdim, axis, keepdims, "min")


def amax(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """The maximum values over ``axis`` (see ``sum`` for the shape); ties share the gradient."""
    axes, keep = _reduction_args(x, axis, dim, keepdims, keepdim, "amax")
    return Max(axes, keep, "max").apply(x)


def amin(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """The minimum values over ``axis`` (see ``amax``)."""
    axes, keep = _reduction_args(x, axis, dim, keepdims, keepdim, "amin")
    return Max(axes, keep, "min").apply(x)


def _arg(x, axis, keepdims, dim, keepdim, fn):
    axis, keep = _reduction_args(x, axis, dim, keepdims, keepdim, fn)
    if isinstance(axis, tuple):
        raise TypeError(f"{fn}: axis must be an int or None, got {axis}")
    r = getattr(x.data, fn)(axis=axis)
    if keep and axis is not None:
        r = x._backend.xp.expand_dims(r, axis)
    return _wrap(x._backend.xp.asarray(r), x._backend)


def argmax(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """Indices (int64) of the maxima along ``axis`` (of the flattened tensor when None); not
    differentiable. Shape: x's without ``axis`` (kept as 1 with ``keepdims``)."""
    return _arg(x, axis, keepdims, dim, keepdim, "argmax")


def argmin(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """Indices of the minima (see ``argmax``)."""
    return _arg(x, axis, keepdims, dim, keepdim, "argmin")


class Var(Function):
    """The variance over ``axis`` with ``correction`` (Bessel's: 1): sum((x - mean)^2) / (n - c)."""

    def __init__(self, axis, keepdims, correction):
        self.axis, self.keepdims, self.correction = axis, keepdims, correction

    def forward(self, x):
        m = x.mean(axis=self.axis, keepdims=True)
        d = x - m
        n = x.size // m.size if m.size else 0  # the reduced count, as Mean has it
        self.d, self.den = d, builtins.max(n - self.correction, 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            return (d * d).sum(axis=self.axis, keepdims=self.keepdims) / self.den

    def backward(self, gy):
        g = _expand_reduced(self.xp, gy, self.d.shape, self.axis, self.keepdims)
        with np.errstate(divide="ignore", invalid="ignore"):
            return (g * self.d * (2.0 / self.den if self.den else np.inf),)


def var(x, dim=None, unbiased=None, keepdim=False, *, correction=None, axis=None, keepdims=False):
    """The variance over ``dim`` (an int, a tuple, or None for all), as ``torch.var``: divides
    by n - ``correction`` (default 1; ``unbiased=False`` means 0). Differentiable.
    Shape: x's without the reduced axes (kept as 1 with ``keepdim``/``keepdims``)."""
    if correction is None:
        correction = 0 if unbiased is False else 1
    elif unbiased is not None:
        raise TypeError("var: give either unbiased= or correction=, not both")
    axes, keep = _reduction_args(x, axis, dim, keepdims, keepdim, "var")
    return Var(axes, keep, correction).apply(_promote_int(x))


def std(x, dim=None, unbiased=None, keepdim=False, *, correction=None, axis=None, keepdims=False):
    """The standard deviation, ``sqrt(var(...))`` (see ``var``). Differentiable."""
    return sqrt(var(x, dim, unbiased, keepdim, correction=correction, axis=axis, keepdims=keepdims))


class TakeAlong(Function):
    """``take_along_axis(x, indices, axis)``; the gradient scatters back (indices distinct)."""

    def __init__(self, indices, axis):
        self.indices, self.axis = indices, axis

    def forward(self, x):
        self.shape = x.shape
        return self.xp.take_along_axis(x, self.indices, axis=self.axis)

    def backward(self, gy):
        xp = self.xp
        gx = xp.zeros(self.shape, dtype=gy.dtype)
        xp.put_along_axis(gx, self.indices, gy, axis=self.axis)
        return (gx,)


TopK = collections.namedtuple("TopK", ["values", "indices"])


def topk(x, k, dim=-1, largest=True, sorted=True, *, axis=None):
    """The ``k`` largest (``largest=False``: smallest) elements along ``dim`` as
    ``(values, indices)``, as ``torch.topk``; ``values`` is differentiable, ``indices`` int64.
    Shape: x's with ``dim`` of size k. Equal values come in index order."""
    d = _norm_axes(dim if axis is None else axis, x.ndim, "topk")
    if x.ndim == 0:
        x = x.reshape(1)
    if not 0 <= k <= x.shape[d]:
        raise IndexError(f"topk: k={k} is out of range for dimension {d} of size {x.shape[d]}")
    xp = x._backend.xp
    key = -x.data if largest else x.data
    idx = xp.argsort(key, axis=d, kind="stable")
    idx = xp.take(idx, xp.arange(k), axis=d).astype(np.int64)
    del sorted  # always sorted (allowed by torch for sorted=False)
    return TopK(TakeAlong(idx, d).apply(x), _wrap(idx, x._backend))


class Norm(Function):
    """The p-norm over ``axis`` (keeping it); the gradient at a zero norm is 0 (as PyTorch)."""

    def __init__(self, p, axis, keepdims):
        self.p, self.axis, self.keepdims = p, axis, keepdims

    def forward(self, x):
        xp, p = self.xp, self.p
        a = xp.abs(x)
        if p == 2:
            y = xp.sqrt((x * x).sum(axis=self.axis, keepdims=True))
        elif p == np.inf:
            y = a.max(axis=self.axis, keepdims=True)
        else:
            y = (a ** p).sum(axis=self.axis, keepdims=True) ** (1.0 / p)
        self.x, self.y = x, y
        return y if self.keepdims else y.reshape(_reduced_shape(x.shape, self.axis))

    def backward(self, gy):
        xp, p, x, y = self.xp, self.p, self.x, self.y
        g = _expand_reduced(xp, gy, x.shape, self.axis, self.keepdims)
        safe = xp.where(y == 0, 1, y)
        if p == np.inf:
            mask = xp.abs(x) == y
            gx = xp.sign(x) * mask / mask.sum(axis=self.axis, keepdims=True)
        elif p == 1:
            gx = xp.sign(x)
        else:
            gx = xp.sign(x) * xp.abs(x) ** (p - 1) / safe ** (p - 1)
        return (g * xp.where(y == 0, 0, gx),)


def norm(x, p=2, dim=None, keepdim=False, *, axis=None, keepdims=False):
    """The vector p-norm (p > 0 or inf) over ``dim`` (None: all elements), as ``torch.norm``."""
    axes, keep = _reduction_args(x, axis, dim, keepdims, keepdim, "norm")
    return Norm(float(p), axes, keep).apply(_promote_int(x))


# ---------------------------------------------------------------------- shape ops
class Reshape(Function):
    def __init__(self, shape):
        self.shape = shape

    def forward(self, x):
        self.in_shape = x.shape
        return x.reshape(self.shape)

    def backward(self, gy):
        return (gy.reshape(self.in_shape),)


class Transpose(Function):
    def __init__(self, axes):
        self.axes = axes

    def forward(self, x):
        return x.transpose(self.axes)

    def backward(self, gy):
        if self.axes is None:
            return (gy.transpose(),)
        inv = np.argsort(self.axes)
        return (gy.transpose(tuple(int(i) for i in inv)),)


class GetItem(Function):
    def __init__(self, index):
        self.index = index

    def forward(self, x):
        self.shape, self.dtype = x.shape, x.dtype
        return x[self.index]

    def backward(self, gy):
        xp = self.xp
        gx = xp.zeros(self.shape, dtype=self.dtype)
        if _is_basic_index(self.index):
            gx[self.index] = gy
        elif xp is np:
            np.add.at(gx, self.index, gy)
        else:
            xp.add.at(gx, self.index, gy)
        return (gx,)


def _is_basic_index(index):
    items = index if isinstance(index, tuple) else (index,)
    for i in items:
        if not (i is None or i is Ellipsis or isinstance(i, (slice, numbers.Integral))):
            return False
    return True


def _resolve_shape(shape, size, old_shape):
    shape = tuple(int(d) for d in shape)
    known = 1
    for d in shape:
        if d != -1:
            known *= d
    if shape.count(-1) > 1 or builtins.any(d < -1 for d in shape):
        raise ShapeError(f"reshape: invalid target shape {shape}")
    if -1 in shape:
        if known == 0 or size % known:
            raise ShapeError(f"reshape: cannot reshape a tensor of shape {old_shape} ({size} "
                             f"elements) into {shape}")
        shape = tuple(size // known if d == -1 else d for d in shape)
    elif known != size:
        raise ShapeError(f"reshape: cannot reshape a tensor of shape {old_shape} ({size} elements) "
                         f"into {shape}")
    return shape


def reshape(x, *shape):
    """x with a new shape of the same element count (one -1 is inferred); a view where the data
    allows. ``x.reshape(2, 3)`` or ``x.reshape((2, 3))``; ShapeError when the counts differ."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return Reshape(_resolve_shape(shape, x.data.size, x.shape)).apply(x)


def view(x, *shape):
    """PyTorch's name for ``reshape``."""
    return reshape(x, *shape)


def flatten(x, start_dim=0, end_dim=-1):
    """x with axes ``start_dim..end_dim`` merged into one: (2, 3, 4).flatten(1) -> (2, 12); a
    0-d tensor becomes (1,), as in PyTorch."""
    nd = x.ndim
    if nd == 0:
        _norm_axes((start_dim, end_dim), 0, "flatten")
        return reshape(x, (1,))
    s, e = _norm_axes((start_dim, end_dim), nd, "flatten")
    if s > e:
        raise ValueError(f"flatten: start_dim ({start_dim}) cannot come after end_dim ({end_dim})")
    shape = x.shape[:s] + (_prod(x.shape[s:e + 1]),) + x.shape[e + 1:]
    return reshape(x, shape)


def _prod(sizes):
    n = 1
    for v in sizes:
        n *= v
    return n


def transpose(x, *axes):
    """Permute the axes.

    ``x.transpose()`` (or ``x.T``) reverses them; ``x.transpose(d0, d1)`` swaps two axes, as in
    PyTorch; ``x.transpose((2, 0, 1))`` applies a full permutation, as in NumPy.
    """
    nd = x.ndim
    if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
        return Transpose(tuple(a % nd for a in axes[0])).apply(x)
    if not axes:
        return Transpose(None).apply(x)
    if len(axes) != 2:
        raise TypeError("transpose: give two axes to swap, or one tuple with a full permutation")
    perm = list(range(nd))
    a, b = _norm_axes(tuple(axes), nd, "transpose")
    perm[a], perm[b] = perm[b], perm[a]
    return Transpose(tuple(perm)).apply(x)


def permute(x, *axes):
    """x with its axes in the order ``axes`` (a full permutation): (2, 3, 4).permute(2, 0, 1)
    -> (4, 2, 3)."""
    if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
        axes = tuple(axes[0])
    if len(axes) != x.ndim:
        raise ShapeError(f"permute: the order {axes} has {len(axes)} dims, the tensor of shape "
                         f"{x.shape} has {x.ndim}")
    perm = _norm_axes(tuple(axes), x.ndim, "permute")
    if len(set(perm)) != len(perm):
        raise ValueError(f"permute: repeated dim in {axes}")
    return Transpose(perm).apply(x)


def getitem(x, index):
    """``x[index]``: NumPy basic and advanced indexing (ints, slices, None, Ellipsis, integer or
    boolean arrays and tensors); the gradient scatters back (repeated indices accumulate)."""
    if isinstance(index, Tensor):
        index = index.data
    elif isinstance(index, tuple):
        index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
    elif isinstance(index, list):
        index = x._backend.xp.asarray(index)
    return GetItem(index).apply(x)


def squeeze(x, axis=None, *, dim=None):
    """x without its size-1 axes: all of them, or those of ``axis`` (an int or a tuple) that
    have size 1 (others stay, as in PyTorch)."""
    axis = _axis(axis, dim)
    shape = x.shape
    if axis is None:
        new = tuple(s for s in shape if s != 1)
    else:
        axes = _norm_axes(axis, x.ndim, "squeeze")
        axes = axes if isinstance(axes, tuple) else (axes,)
        new = tuple(s for i, s in enumerate(shape) if not (i in axes and s == 1))
    return Reshape(new).apply(x)


def unsqueeze(x, axis=None, *, dim=None):
    """x with a new size-1 axis inserted at ``axis`` (in [-ndim-1, ndim]): (3,).unsqueeze(0)
    -> (1, 3), (3,).unsqueeze(-1) -> (3, 1)."""
    axis = _axis(axis, dim)
    if axis is None:
        raise TypeError("unsqueeze: missing the dim argument")
    a = _norm_axes(axis, x.ndim + 1, "unsqueeze")
    return Reshape(x.shape[:a] + (1,) + x.shape[a:]).apply(x)


# ---------------------------------------------------------------------- elementwise math
class Exp(Function):
    def forward(self, x):
        self.y = self.xp.exp(x)
        return self.y

    def backward(self, gy):
        return (gy * self.y,)


class Log(Function):
    def forward(self, x):
        self.x = x
        return self.xp.log(x)

    def backward(self, gy):
        return (gy / self.x,)


class Abs(Function):
    def forward(self, x):
        self.x = x
        return self.xp.abs(x)

    def backward(self, gy):
        return (gy * self.xp.sign(self.x),)


class Sqrt(Function):
    def forward(self, x):
        self.y = self.xp.sqrt(x)
        return self.y

    def backward(self, gy):
        return (gy / (2 * self.y),)


class Clip(Function):
    def __init__(self, lo, hi):
        self.lo, self.hi = lo, hi

    def forward(self, x):
        self.x = x
        return self.xp.clip(x, self.lo, self.hi)

    def backward(self, gy):
        x = self.x
        mask = True
        if self.lo is not None:
            mask = x >= self.lo
        if self.hi is not None:
            mask = mask & (x <= self.hi) if mask is not True else (x <= self.hi)
        return (gy * mask,)


def _float_only(x, name):
    if x.data.dtype.kind in "iub":
        return _promote_int(x)
    return x


def exp(x):
    """e ** x, elementwise (integer input gives the default floating dtype). Shape: x's."""
    return Exp().apply(_float_only(x, "exp"))


def log(x):
    """The natural logarithm, elementwise (log(0) = -inf, as in NumPy). Shape: x's."""
    return Log().apply(_float_only(x, "log"))


def abs(x):
    """|x|, elementwise; the gradient is sign(x) (0 at 0). Shape: x's."""
    return Abs().apply(x)


def sqrt(x):
    """The square root, elementwise. Shape: x's."""
    return Sqrt().apply(_float_only(x, "sqrt"))


def clip(x, min=None, max=None):
    """Clamp to [min, max]; the gradient passes where min <= x <= max (as in PyTorch)."""
    if min is None and max is None:
        raise ValueError("clip: give at least one of min and max")
    if isinstance(min, np.generic):
        min = min.item()
    if isinstance(max, np.generic):
        max = max.item()
    return Clip(min, max).apply(x)


clamp = clip


# ---------------------------------------------------------------------- device and dtype moves
class ToDevice(Function):
    """Copy to another backend and/or cast; the gradient goes back the same way.

    Shape: x's. The output lives on ``target`` (``output_backend``) with ``dtype`` (x's when
    None); the data is always copied.
    """

    def __init__(self, target, dtype):
        self.output_backend, self.dtype = target, dtype

    def forward(self, x):
        src, target = self.backend, self.output_backend
        self.src_dtype = x.dtype
        data = x
        try:
            if target is not src:
                data = target.asarray(src.to_host(data)) if "numpy" in (target.name, src.name) \
                    else target.asarray(data)
            if self.dtype is not None and data.dtype != self.dtype:
                data = data.astype(self.dtype)
            elif data is x:
                data = data.copy()
        except MemoryError as e:  # a batch moved to a full GPU: say so with the size and a hint
            err = _config.out_of_memory(e, target, f"moving a {x.shape} {x.dtype} tensor "
                                        f"from {src.device} to {target.device}")
            if err is not None:
                raise err from e
            raise
        return data

    def backward(self, gy):
        src, target = self.backend, self.output_backend
        if src is not target:
            gy = src.asarray(target.to_host(gy)) if "numpy" in (src.name, target.name) \
                else src.asarray(gy)
        if gy.dtype != self.src_dtype:
            gy = gy.astype(self.src_dtype)
        return (gy,)


def to_device(x, device=None, dtype=None):
    """``x`` on ``device`` and/or cast to ``dtype`` (x itself when nothing changes).

    Differentiable for floating results: the gradient flows back to x's device and dtype; a
    cast to an integer or bool dtype leaves the graph.
    """
    target = x._backend if device is None else _config.backend_for(device)
    dt = _config.to_dtype(dtype)
    if target is x._backend and (dt is None or dt == x.dtype):
        return x
    if dt is not None and dt.kind != "f":
        with _config.no_grad():
            return ToDevice(target, dt).apply(x)
    return ToDevice(target, dt).apply(x)


class Clone(Function):
    def forward(self, x):
        return x.copy()

    def backward(self, gy):
        return (gy,)


def clone(x):
    """A copy of x that stays in the graph (the gradient passes through). Shape: x's."""
    return Clone().apply(x)


# ---------------------------------------------------------------------- creation helpers
def zeros(*shape, dtype=None, device=None, requires_grad=False):
    """A tensor of ``shape`` filled with 0 (default dtype and device unless given)."""
    shape = _shape_args(shape)
    b = _config.backend_for(device)
    dt = _config.to_dtype(dtype) or _config.get_default_dtype()
    return _wrap(b.xp.zeros(shape, dtype=dt), b, requires_grad)


def ones(*shape, dtype=None, device=None, requires_grad=False):
    """A tensor of ``shape`` filled with 1 (default dtype and device unless given)."""
    shape = _shape_args(shape)
    b = _config.backend_for(device)
    dt = _config.to_dtype(dtype) or _config.get_default_dtype()
    return _wrap(b.xp.ones(shape, dtype=dt), b, requires_grad)


def full(shape, fill_value, dtype=None, device=None, requires_grad=False):
    """A tensor of ``shape`` filled with ``fill_value``."""
    b = _config.backend_for(device)
    dt = _config.to_dtype(dtype) or _config.get_default_dtype()
    return _wrap(b.xp.full(_shape_args((shape,)), fill_value, dtype=dt), b, requires_grad)


def _like(x, dtype, device):
    """The backend and dtype of a ``*_like`` constructor: x's unless given."""
    b = x._backend if device is None else _config.backend_for(device)
    return b, _config.to_dtype(dtype) or x.dtype


def zeros_like(x, dtype=None, device=None, requires_grad=False):
    """Zeros of x's shape, device and (unless given) dtype."""
    b, dt = _like(x, dtype, device)
    return _wrap(b.xp.zeros(x.shape, dtype=dt), b, requires_grad)


def ones_like(x, dtype=None, device=None, requires_grad=False):
    """Ones of x's shape, device and (unless given) dtype."""
    b, dt = _like(x, dtype, device)
    return _wrap(b.xp.ones(x.shape, dtype=dt), b, requires_grad)


def full_like(x, fill_value, dtype=None, device=None, requires_grad=False):
    """``fill_value`` in x's shape, device and (unless given) dtype."""
    b, dt = _like(x, dtype, device)
    return _wrap(b.xp.full(x.shape, fill_value, dtype=dt), b, requires_grad)


def empty_like(x, dtype=None, device=None, requires_grad=False):
    """A tensor of x's shape, device and (unless given) dtype (zero-filled here)."""
    return zeros_like(x, dtype, device, requires_grad)


def rand_like(x, dtype=None, device=None, requires_grad=False):
    """U(0, 1) samples of x's shape, device and (unless given) floating dtype."""
    b, dt = _like(x, dtype, device)
    return _wrap(b.uniform(0.0, 1.0, x.shape, dt), b, requires_grad)


def randn_like(x, dtype=None, device=None, requires_grad=False):
    """N(0, 1) samples of x's shape, device and (unless given) floating dtype."""
    b, dt = _like(x, dtype, device)
    return _wrap(b.normal(0.0, 1.0, x.shape, dt), b, requires_grad)


def arange(*args, dtype=None, device=None, requires_grad=False):
    """``arange([start,] stop[, step])`` as a 1-D tensor; as in PyTorch, int64 for integer
    arguments and the default dtype for floating ones, unless ``dtype`` is given."""
    b = _config.backend_for(device)
    dt = _config.to_dtype(dtype)
    if dt is None:
        floating = builtins.any(isinstance(a, (float, np.floating)) for a in args)
        dt = _config.get_default_dtype() if floating else np.dtype(np.int64)
    return _wrap(b.xp.arange(*args, dtype=dt), b, requires_grad)


def eye(n, m=None, dtype=None, device=None, requires_grad=False):
    """The (n, m) identity matrix (m = n unless given), default dtype unless given."""
    b = _config.backend_for(device)
    dt = _config.to_dtype(dtype) or _config.get_default_dtype()
    return _wrap(b.xp.eye(int(n), None if m is None else int(m), dtype=dt), b, requires_grad)


def linspace(start, end, steps, dtype=None, device=None, requires_grad=False):
    """``steps`` evenly spaced values from ``start`` to ``end`` inclusive (default dtype)."""
    b = _config.backend_for(device)
    dt = _config.to_dtype(dtype) or _config.get_default_dtype()
    return _wrap(b.xp.linspace(start, end, int(steps)).astype(dt), b, requires_grad)


def rand(*shape, dtype=None, device=None, requires_grad=False):
    """Samples of U(0, 1) of ``shape`` from the device's generator (``nnx.manual_seed``)."""
    b = _config.backend_for(device)
    dt = _config.to_dtype(dtype) or _config.get_default_dtype()
    return _wrap(b.uniform(0.0, 1.0, _shape_args(shape), dt), b, requires_grad)


def randn(*shape, dtype=None, device=None, requires_grad=False):
    """Samples of N(0, 1) of ``shape`` from the device's generator (``nnx.manual_seed``)."""
    b = _config.backend_for(device)
    dt = _config.to_dtype(dtype) or _config.get_default_dtype()
    return _wrap(b.normal(0.0, 1.0, _shape_args(shape), dt), b, requires_grad)


def _shape_args(shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        return tuple(int(s) for s in shape[0])
    return tuple(int(s) for s in shape)


# ---------------------------------------------------------------------- comparisons (no grad)
def _compare(op):
    def f(a, b):
        if isinstance(b, Tensor):
            if b._backend is not a._backend:
                _device_mismatch(type("Compare", (), {"name": op.__name__}), (a, b))
            b = b.data
        return _wrap(a._backend.xp.asarray(op(a.data, b)), a._backend)

    return f


import operator as _op  # noqa: E402

eq, ne, lt, le, gt, ge = (_compare(o) for o in (_op.eq, _op.ne, _op.lt, _op.le, _op.gt, _op.ge))


def any(x):
    """Whether any element is nonzero, as a 0-d bool tensor (not differentiable)."""
    return _wrap(x._backend.xp.asarray(x.data.any()), x._backend)


def all(x):
    """Whether every element is nonzero, as a 0-d bool tensor (not differentiable)."""
    return _wrap(x._backend.xp.asarray(x.data.all()), x._backend)


def T(x):
    """``x.T``: the axes reversed."""
    return Transpose(None).apply(x)


del tensor  # re-exported from nnx.tensor
