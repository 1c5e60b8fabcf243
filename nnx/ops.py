"""Differentiable tensor ops: arithmetic, reductions, shape ops, elementwise math.

Each op is a ``Function`` (forward and backward side by side) plus a lowercase wrapper; the
wrappers are also bound as ``Tensor`` methods and operators at the bottom of this module.
"""
from __future__ import annotations

import collections
import numbers

import numpy as np

from . import _config
from .autograd import Function, _creation_order
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


def _norm_axes(axis, ndim):
    if axis is None:
        return None
    if isinstance(axis, (list, tuple)):
        return tuple(a % ndim if ndim else a for a in axis)
    return axis % ndim if ndim else axis


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


def _const(x, c):
    """A Python number, kept weak so float32 stays float32 (never a NumPy float64 scalar)."""
    if isinstance(c, np.generic):
        c = c.item()
    if x.data.dtype.kind in "iub" and isinstance(c, float):
        return c, True  # int tensor with a float constant: promote like PyTorch (below)
    return c, False


def _promote_int(x):
    return x.to(dtype=_config.get_default_dtype()) if x.data.dtype.kind in "iub" else x


def add(a, b):
    if isinstance(a, Tensor) and _is_scalar(b):
        c, p = _const(a, b)
        return AddConst(c).apply(_promote_int(a) if p else a)
    if isinstance(b, Tensor) and _is_scalar(a):
        return add(b, a)
    a, b = _binary_operands(a, b, "add")
    return Add().apply(a, b)


def sub(a, b):
    if isinstance(a, Tensor) and _is_scalar(b):
        c, p = _const(a, b)
        return AddConst(-c).apply(_promote_int(a) if p else a)
    if isinstance(b, Tensor) and _is_scalar(a):
        c, p = _const(b, a)
        return RSubConst(c).apply(_promote_int(b) if p else b)
    a, b = _binary_operands(a, b, "sub")
    return Sub().apply(a, b)


def mul(a, b):
    if isinstance(a, Tensor) and _is_scalar(b):
        c, p = _const(a, b)
        return MulConst(c).apply(_promote_int(a) if p else a)
    if isinstance(b, Tensor) and _is_scalar(a):
        return mul(b, a)
    a, b = _binary_operands(a, b, "mul")
    return Mul().apply(a, b)


def div(a, b):
    if isinstance(a, Tensor) and _is_scalar(b):
        c, _ = _const(a, b)
        return MulConst(1.0 / c).apply(_promote_int(a)) if c != 0 else Div().apply(
            *_binary_operands(_promote_int(a), float(c), "div"))
    if isinstance(b, Tensor) and _is_scalar(a):
        c, _ = _const(b, a)
        return RDivConst(c).apply(_promote_int(b))
    a, b = _binary_operands(a, b, "div")
    if a.data.dtype.kind in "iub":
        a, b = _promote_int(a), _promote_int(b)
    return Div().apply(a, b)


def pow(a, b):
    if isinstance(a, Tensor) and _is_scalar(b):
        c, p = _const(a, b)
        return PowConst(c).apply(_promote_int(a) if p else a)
    if isinstance(b, Tensor) and _is_scalar(a):
        c, _ = _const(b, a)
        return RPowConst(c).apply(_promote_int(b))
    a, b = _binary_operands(a, b, "pow")
    return Pow().apply(a, b)


def neg(x):
    return Neg().apply(x)


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


def sum(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    axis = _norm_axes(_axis(axis, dim), x.ndim)
    return Sum(axis, keepdims or bool(keepdim)).apply(x)


def mean(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    axis = _norm_axes(_axis(axis, dim), x.ndim)
    if x.data.dtype.kind in "iub":
        x = _promote_int(x)
    return Mean(axis, keepdims or bool(keepdim)).apply(x)


MaxResult = collections.namedtuple("MaxResult", ["values", "indices"])


def _maxmin(x, dim, keepdim, axis, keepdims, fn):
    if dim is not None:
        if axis is not None:
            raise TypeError(f"{fn}: give either dim (PyTorch style) or axis (NumPy style), not both")
        # PyTorch form: max(dim) returns (values, indices)
        d = dim % x.ndim if x.ndim else dim
        keep = bool(keepdim or keepdims)
        values = Max(d, keep, fn).apply(x)
        arg = x.data.argmax(axis=d) if fn == "max" else x.data.argmin(axis=d)
        if keep:
            arg = x._backend.xp.expand_dims(arg, d)
        return MaxResult(values, _wrap(arg, x._backend))
    return Max(_norm_axes(axis, x.ndim), bool(keepdims or keepdim), fn).apply(x)


def max(x, dim=None, keepdim=False, *, axis=None, keepdims=False):
    """The maximum.

    PyTorch style: ``x.max()`` is the largest element; ``x.max(1)`` or ``x.max(dim=1)`` returns
    ``(values, indices)`` along that axis. NumPy style: ``x.max(axis=1)`` returns the values.
    Ties share the gradient equally.
    """
    return _maxmin(x, dim, keepdim, axis, keepdims, "max")


def min(x, dim=None, keepdim=False, *, axis=None, keepdims=False):
    """The minimum, like ``max``."""
    return _maxmin(x, dim, keepdim, axis, keepdims, "min")


def amax(x, axis=None, keepdims=False):
    return Max(_norm_axes(axis, x.ndim), keepdims, "max").apply(x)


def argmax(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """Indices of the maxima (not differentiable)."""
    axis = _axis(axis, dim)
    r = x.data.argmax(axis=axis)
    if (keepdims or keepdim) and axis is not None:
        r = x._backend.xp.expand_dims(r, axis)
    return _wrap(x._backend.xp.asarray(r), x._backend)


def argmin(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    axis = _axis(axis, dim)
    r = x.data.argmin(axis=axis)
    if (keepdims or keepdim) and axis is not None:
        r = x._backend.xp.expand_dims(r, axis)
    return _wrap(x._backend.xp.asarray(r), x._backend)


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
    if shape.count(-1) > 1 or any(d < -1 for d in shape):
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
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return Reshape(_resolve_shape(shape, x.data.size, x.shape)).apply(x)


def view(x, *shape):
    return reshape(x, *shape)


def flatten(x, start_dim=0, end_dim=-1):
    nd = x.ndim
    s, e = start_dim % nd, end_dim % nd
    shape = x.shape[:s] + (-1,) + x.shape[e + 1:]
    return reshape(x, shape)


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
    a, b = axes[0] % nd, axes[1] % nd
    perm[a], perm[b] = perm[b], perm[a]
    return Transpose(tuple(perm)).apply(x)


def permute(x, *axes):
    if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
        axes = tuple(axes[0])
    return Transpose(tuple(a % x.ndim for a in axes)).apply(x)


def getitem(x, index):
    if isinstance(index, Tensor):
        index = index.data
    elif isinstance(index, tuple):
        index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
    elif isinstance(index, list):
        index = x._backend.xp.asarray(index)
    return GetItem(index).apply(x)


def squeeze(x, axis=None, *, dim=None):
    axis = _axis(axis, dim)
    shape = x.shape
    if axis is None:
        new = tuple(s for s in shape if s != 1)
    else:
        a = axis % x.ndim
        new = shape[:a] + shape[a + 1:] if shape[a] == 1 else shape
    return Reshape(new).apply(x)


def unsqueeze(x, axis=None, *, dim=None):
    axis = _axis(axis, dim)
    a = axis % (x.ndim + 1)
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


class Tanh(Function):
    def forward(self, x):
        self.y = self.xp.tanh(x)
        return self.y

    def backward(self, gy):
        y = self.y
        return (gy * (1 - y * y),)


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
    return Exp().apply(_float_only(x, "exp"))


def log(x):
    return Log().apply(_float_only(x, "log"))


def tanh(x):
    return Tanh().apply(_float_only(x, "tanh"))


def abs(x):
    return Abs().apply(x)


def sqrt(x):
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
    """Copy to another backend and/or cast; the gradient goes back the same way."""

    def __init__(self, target, dtype):
        self.target, self.dtype = target, dtype

    def apply(self, x):  # the output lives on another backend than the input
        src = x._backend
        self.src_backend, self.src_dtype = src, x.dtype
        data = x.data
        try:
            if self.target is not src:
                data = self.target.asarray(src.to_host(data)) if self.target.name == "numpy" or \
                    src.name == "numpy" else self.target.asarray(data)
            if self.dtype is not None and data.dtype != self.dtype:
                data = data.astype(self.dtype)
            elif data is x.data:
                data = data.copy()
        except MemoryError as e:  # a batch moved to a full GPU: say so with the size and a hint
            err = _config.out_of_memory(e, self.target, f"moving a {x.shape} {x.dtype} tensor "
                                        f"from {src.device} to {self.target.device}")
            if err is not None:
                raise err from e
            raise
        out = _wrap(data, self.target)
        if _config.is_grad_enabled() and x.requires_grad and out.data.dtype.kind == "f":
            self.inputs = (x,)
            self.seq = next(_creation_order)
            self.needs_input_grad = (True,)
            self.backend, self.xp = self.target, self.target.xp
            out.requires_grad = True
            out.creator = self
        return out

    def backward(self, gy):
        src = self.src_backend
        if src is not self.target:
            gy = src.asarray(self.target.to_host(gy)) if src.name == "numpy" or \
                self.target.name == "numpy" else src.asarray(gy)
        if gy.dtype != self.src_dtype:
            gy = gy.astype(self.src_dtype)
        return (gy,)


def to_device(x, device=None, dtype=None):
    target = x._backend if device is None else _config.backend_for(device)
    dt = _config.to_dtype(dtype)
    if target is x._backend and (dt is None or dt == x.dtype):
        return x
    return ToDevice(target, dt).apply(x)


class Clone(Function):
    def forward(self, x):
        return x.copy()

    def backward(self, gy):
        return (gy,)


def clone(x):
    return Clone().apply(x)


# ---------------------------------------------------------------------- creation helpers
def zeros(*shape, dtype=None, device=None, requires_grad=False):
    shape = _shape_args(shape)
    b = _config.backend_for(device)
    dt = _config.to_dtype(dtype) or _config.get_default_dtype()
    return _wrap(b.xp.zeros(shape, dtype=dt), b, requires_grad)


def ones(*shape, dtype=None, device=None, requires_grad=False):
    shape = _shape_args(shape)
    b = _config.backend_for(device)
    dt = _config.to_dtype(dtype) or _config.get_default_dtype()
    return _wrap(b.xp.ones(shape, dtype=dt), b, requires_grad)


def full(shape, fill_value, dtype=None, device=None, requires_grad=False):
    b = _config.backend_for(device)
    dt = _config.to_dtype(dtype) or _config.get_default_dtype()
    return _wrap(b.xp.full(_shape_args((shape,)), fill_value, dtype=dt), b, requires_grad)


def zeros_like(x, dtype=None):
    return _wrap(x._backend.xp.zeros(x.shape, dtype=_config.to_dtype(dtype) or x.dtype), x._backend)


def ones_like(x, dtype=None):
    return _wrap(x._backend.xp.ones(x.shape, dtype=_config.to_dtype(dtype) or x.dtype), x._backend)


def arange(*args, dtype=None, device=None):
    b = _config.backend_for(device)
    return _wrap(b.xp.arange(*args, dtype=_config.to_dtype(dtype)), b)


def rand(*shape, dtype=None, device=None, requires_grad=False):
    b = _config.backend_for(device)
    dt = _config.to_dtype(dtype) or _config.get_default_dtype()
    return _wrap(b.uniform(0.0, 1.0, _shape_args(shape), dt), b, requires_grad)


def randn(*shape, dtype=None, device=None, requires_grad=False):
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
                from .autograd import _device_mismatch

                _device_mismatch(type("Compare", (), {"name": op.__name__}), (a, b))
            b = b.data
        return _wrap(a._backend.xp.asarray(op(a.data, b)), a._backend)

    return f


import operator as _op  # noqa: E402

eq, ne, lt, le, gt, ge = (_compare(o) for o in (_op.eq, _op.ne, _op.lt, _op.le, _op.gt, _op.ge))


def _bind_tensor_methods():
    T = Tensor
    T.__add__ = add
    T.__radd__ = lambda self, other: add(other, self)
    T.__sub__ = sub
    T.__rsub__ = lambda self, other: sub(other, self)
    T.__mul__ = mul
    T.__rmul__ = lambda self, other: mul(other, self)
    T.__truediv__ = div
    T.__rtruediv__ = lambda self, other: div(other, self)
    T.__pow__ = pow
    T.__rpow__ = lambda self, other: pow(other, self)
    T.__neg__ = neg
    T.__pos__ = lambda self: self
    T.__matmul__ = matmul
    T.__rmatmul__ = lambda self, other: matmul(other, self)
    T.__getitem__ = getitem
    T.__eq__, T.__ne__, T.__lt__, T.__le__, T.__gt__, T.__ge__ = eq, ne, lt, le, gt, ge
    T.__hash__ = object.__hash__
    T.add, T.sub, T.mul, T.div, T.pow, T.neg, T.matmul = add, sub, mul, div, pow, neg, matmul
    T.sum, T.mean, T.max, T.min, T.amax, T.argmax, T.argmin = sum, mean, max, min, amax, argmax, argmin
    T.reshape, T.view, T.flatten, T.transpose, T.permute = reshape, view, flatten, transpose, permute
    T.squeeze, T.unsqueeze = squeeze, unsqueeze
    T.exp, T.log, T.tanh, T.abs, T.sqrt, T.clip, T.clamp = exp, log, tanh, abs, sqrt, clip, clip
    T.T = property(lambda self: Transpose(None).apply(self))
    T.any = lambda self: _wrap(self._backend.xp.asarray(self.data.any()), self._backend)
    T.all = lambda self: _wrap(self._backend.xp.asarray(self.data.all()), self._backend)


_bind_tensor_methods()
del tensor  # re-exported from nnx.tensor
