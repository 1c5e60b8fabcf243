"""Differentiable joining, splitting, selecting and padding ops, PyTorch's names and semantics.

``cat``/``concatenate``/``concat``, ``stack``, ``split``, ``chunk``, ``where``, ``pad`` (``F.pad``),
``expand``/``expand_as``, ``repeat`` and ``view_as``. Each differentiable op is a ``Function``
(forward and backward side by side) plus a lowercase wrapper; the splits are basic-index views
(``ops.GetItem``), one node per piece. Bad input raises nnx's errors: ``ShapeError`` naming the
shapes and the dim, ``DeviceError``, ``DTypeError``, and ``IndexError`` for a dim out of range.
"""
from __future__ import annotations

import builtins
import numbers

import numpy as np

from . import _config
from .autograd import Function, _device_mismatch
from .errors import DTypeError, ShapeError
from .ops import GetItem, _binary_operands, _norm_axes, sum_to
from .tensor import Tensor, _wrap, as_tensor

__all__ = ["cat", "concatenate", "concat", "stack", "split", "chunk", "where", "masked_fill",
           "pad", "expand", "expand_as", "repeat", "view_as"]


# ---------------------------------------------------------------------- helpers
def _tensor_list(tensors, name):
    """``tensors`` (a sequence of Tensors; arrays and numbers join the first Tensor's device) on
    one device with one dtype: floating tensors of two dtypes raise DTypeError (nnx never
    promotes silently), integer or bool ones take the floating dtype, integers promote."""
    if isinstance(tensors, Tensor) or not isinstance(tensors, (list, tuple)):
        raise TypeError(f"{name}(): expected a list or tuple of Tensors, got "
                        f"{type(tensors).__name__}")
    if not tensors:
        raise ValueError(f"{name}(): expected a non-empty list of Tensors")
    like = next((t for t in tensors if isinstance(t, Tensor)), None)
    if like is None:
        raise TypeError(f"{name}(): expected a list of Tensors, got only "
                        f"{type(tensors[0]).__name__} elements")
    ts = [t if isinstance(t, Tensor) else as_tensor(t, like=like) for t in tensors]
    b = ts[0]._backend
    if builtins.any(t._backend is not b for t in ts):
        _device_mismatch(type(name, (), {"name": name}), ts)
    dtypes = {t.dtype for t in ts}
    if len(dtypes) > 1:
        floats = sorted({str(d) for d in dtypes if d.kind == "f"})
        if len(floats) > 1:
            where = ", ".join(f"tensor {i}: {t.dtype}" for i, t in enumerate(ts))
            raise DTypeError(f"{name}: dtypes differ ({where}); convert with .to(dtype=...) "
                             f"(nnx does not promote silently)")
        dt = np.dtype(floats[0]) if floats else np.result_type(*dtypes)
        ts = [t if t.dtype == dt else t.to(dtype=dt) for t in ts]
    return ts


def _shape_text(ts):
    return ", ".join(f"tensor {i}: {t.shape}" for i, t in enumerate(ts))


def _index(axis, sl):
    """The basic index selecting ``sl`` (a slice or an int) along ``axis``."""
    return (slice(None),) * axis + (sl,)


# ---------------------------------------------------------------------- cat and stack
class Cat(Function):
    """Concatenation along ``axis``; each input's gradient is its slice of the output's."""

    def __init__(self, axis):
        self.axis = axis

    def forward(self, *xs):
        self.sizes = [x.shape[self.axis] for x in xs]
        return self.xp.concatenate(xs, axis=self.axis)

    def backward(self, gy):
        grads, off = [], 0
        for size, need in zip(self.sizes, self.needs_input_grad):
            grads.append(gy[_index(self.axis, slice(off, off + size))] if need else None)
            off += size
        return grads


class Stack(Function):
    """Stacking along a new ``axis``; input i's gradient is the output's index i there."""

    def __init__(self, axis):
        self.axis = axis

    def forward(self, *xs):
        return self.xp.stack(xs, axis=self.axis)

    def backward(self, gy):
        return [gy[_index(self.axis, i)] if need else None
                for i, need in enumerate(self.needs_input_grad)]


def cat(tensors, dim=0, *, axis=None):
    """Concatenate ``tensors`` along ``dim``, as ``torch.cat``.

    Shape: the inputs' common shape with ``dim`` of the summed size; all inputs need the same
    number of dimensions and the same sizes outside ``dim`` (ShapeError otherwise), except
    that 1-D empty tensors are skipped, as in PyTorch. One device
    and one floating dtype (DeviceError, DTypeError). Differentiable in every input.
    """
    if isinstance(tensors, (list, tuple)):  # PyTorch's legacy rule: 1-D empty tensors (shape
        # (0,)) are skipped, dtype included, so ``out = cat([out, x])`` may start from empty(0)
        kept = [t for t in tensors if not (isinstance(t, Tensor) and t.shape == (0,))]
        if len(kept) < len(tensors):
            tensors = kept if builtins.any(isinstance(t, Tensor) for t in kept) else tensors[:1]
    ts = _tensor_list(tensors, "cat")
    d = dim if axis is None else axis
    nd = ts[0].ndim
    if nd == 0:
        raise ShapeError(f"cat: zero-dimensional tensor (tensor 0) cannot be concatenated; "
                         f"use stack, or unsqueeze first")
    d = _norm_axes(d, nd, "cat")
    ref = ts[0].shape
    for t in ts[1:]:
        if t.ndim != nd or t.shape[:d] + t.shape[d + 1:] != ref[:d] + ref[d + 1:]:
            raise ShapeError(f"cat: tensors must have the same shape except in dimension {d}; "
                             f"got {_shape_text(ts)}")
    if len(ts) == 1:
        return ts[0].clone()
    return Cat(d).apply(*ts)


concatenate = concat = cat


def stack(tensors, dim=0, *, axis=None):
    """Stack equal-shaped ``tensors`` along a new dimension ``dim`` (in [-ndim-1, ndim]), as
    ``torch.stack``. Shape: (len(tensors) at ``dim``, then the inputs' shape around it)."""
    ts = _tensor_list(tensors, "stack")
    ref = ts[0].shape
    for t in ts[1:]:
        if t.shape != ref:
            raise ShapeError(f"stack: every tensor needs the same shape; got {_shape_text(ts)}")
    d = _norm_axes(dim if axis is None else axis, len(ref) + 1, "stack")
    return Stack(d).apply(*ts)


# ---------------------------------------------------------------------- split and chunk
def _pieces(x, d, sizes):
    off, out = 0, []
    for s in sizes:
        out.append(GetItem(_index(d, slice(off, off + s))).apply(x))
        off += s
    return tuple(out)


def split(tensor, split_size_or_sections, dim=0):
    """Split ``tensor`` along ``dim`` into pieces, as ``torch.split``: an int gives pieces of
    that size (the last one smaller when the size does not divide); a list gives the sizes
    (they must sum to the dimension's size). Returns a tuple of views-as-nodes, each
    differentiable."""
    x = tensor
    if x.ndim == 0:
        raise ShapeError("split: a zero-dimensional tensor cannot be split")
    d = _norm_axes(dim, x.ndim, "split")
    n = x.shape[d]
    s = split_size_or_sections
    if isinstance(s, Tensor):
        s = s.tolist()
    if isinstance(s, (list, tuple)):
        sizes = [int(v) for v in s]
        if builtins.any(v < 0 for v in sizes) or builtins.sum(sizes) != n:
            raise ShapeError(f"split: split sizes {sizes} must be non-negative and sum exactly "
                             f"to {n} (the size of dimension {d} of a tensor of shape {x.shape})")
        return _pieces(x, d, sizes)
    if isinstance(s, bool) or not isinstance(s, numbers.Integral):
        raise TypeError(f"split: split_size_or_sections must be an int or a list of ints, got "
                        f"{type(s).__name__}")
    s = int(s)
    if s < 0 or (s == 0 and n != 0):
        raise ValueError(f"split: split_size must be positive (0 only for a dimension of size "
                         f"0), got {s} for dimension {d} of size {n}")
    if n == 0:
        return (GetItem(_index(d, slice(0, 0))).apply(x),)
    return _pieces(x, d, [builtins.min(s, n - lo) for lo in range(0, n, s)])


def chunk(input, chunks, dim=0):
    """Split ``input`` into ``chunks`` pieces along ``dim``, as ``torch.chunk``: each of size
    ceil(n / chunks) but the last, so fewer than ``chunks`` may come back (6 into 4 gives 3
    pieces of 2). A dimension of size 0 gives ``chunks`` empty pieces."""
    if isinstance(chunks, bool) or not isinstance(chunks, numbers.Integral) or chunks <= 0:
        raise ValueError(f"chunk: chunks must be a positive int, got {chunks!r}")
    x = input
    if x.ndim == 0:
        raise ShapeError("chunk: a zero-dimensional tensor cannot be chunked")
    d = _norm_axes(dim, x.ndim, "chunk")
    n = x.shape[d]
    if n == 0:
        return _pieces(x, d, [0] * int(chunks))
    return split(x, -(-n // int(chunks)), d)


# ---------------------------------------------------------------------- where
class Where(Function):
    """``cond ? a : b`` with broadcasting; each branch gets the gradient where it was chosen."""

    def __init__(self, cond):
        self.cond = cond

    def forward(self, a, b):
        self.shapes = (a.shape, b.shape)
        return self.xp.where(self.cond, a, b)

    def backward(self, gy):
        xp, c, (sa, sb) = self.xp, self.cond, self.shapes
        zero = gy.dtype.type(0)
        n = self.needs_input_grad
        return (sum_to(xp.where(c, gy, zero), sa) if n[0] else None,
                sum_to(xp.where(c, zero, gy), sb) if n[1] else None)


def where(condition, input=None, other=None):
    """Elementwise ``input`` where ``condition`` is true, else ``other``, as ``torch.where``.

    ``condition`` is a bool tensor (or array); ``input`` and ``other`` are tensors or numbers,
    all three broadcast together (ShapeError when they cannot). Differentiable in both
    ``input`` and ``other``. Two floating operands need one dtype (DTypeError); a number takes
    the tensor's dtype; two numbers give the default floating dtype (ints: int64).
    ``where(condition)`` alone is ``condition.nonzero(as_tuple=True)``: a tuple of int64 index
    tensors.
    """
    if input is None and other is None:
        c = condition if isinstance(condition, Tensor) else as_tensor(condition)
        return tuple(_wrap(i.astype(np.int64), c._backend) for i in c._backend.xp.nonzero(c.data))
    if input is None or other is None:
        raise TypeError("where: give condition, input and other (or condition alone)")
    like = next((t for t in (input, other, condition) if isinstance(t, Tensor)), None)
    if like is None:
        b = _config.backend_for(None)
        like = _wrap(b.xp.zeros((), dtype=_config.get_default_dtype()), b)
    c = condition if isinstance(condition, Tensor) else as_tensor(condition, like=like)
    if c.dtype != np.bool_:
        raise DTypeError(f"where: condition must be a bool tensor, got dtype {c.dtype} (compare "
                         f"first, e.g. x > 0)")
    if not isinstance(input, Tensor) and not isinstance(other, Tensor):  # two numbers
        ints = builtins.all(isinstance(v, numbers.Integral) for v in (input, other))
        dt = np.int64 if ints else _config.get_default_dtype()
        input = _wrap(c._backend.xp.asarray(input, dtype=dt), c._backend)
    for t, v in ((input, other), (other, input)):  # an int tensor meets a float: PyTorch's float
        if isinstance(t, Tensor) and t.dtype.kind in "iub" and isinstance(v, float):
            t2 = t.to(dtype=_config.get_default_dtype())
            input, other = (t2, other) if t is input else (input, t2)
    for t, v in ((input, other), (other, input)):  # an int keeps an int tensor's dtype (int32)
        if isinstance(t, Tensor) and t.dtype.kind in "iu" and _fits_int(v, t.dtype):
            n = _wrap(t._backend.xp.asarray(v, dtype=t.dtype), t._backend)
            input, other = (t, n) if t is input else (n, t)
            break
    a, b2 = _binary_operands(input, other, "where")
    if c._backend is not a._backend or a._backend is not b2._backend:
        _device_mismatch(type("Where", (), {"name": "where"}), (c, a, b2))
    try:
        np.broadcast_shapes(c.shape, a.shape, b2.shape)
    except ValueError:
        raise ShapeError(f"where: condition {c.shape}, input {a.shape} and other {b2.shape} "
                         f"do not broadcast together") from None
    return Where(c.data).apply(a, b2)


def _fits_int(v, dtype):
    """``v`` is a Python/NumPy integer (not a bool) that ``dtype`` (an integer dtype) holds."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        return False
    info = np.iinfo(dtype)
    return info.min <= int(v) <= info.max


def _fill_value(value, dtype, who):
    """The number ``value`` as a NumPy scalar of ``dtype`` (a float truncates into an integer
    dtype, as in PyTorch); DTypeError naming ``who`` when ``dtype`` cannot hold it."""
    try:
        with np.errstate(over="raise", invalid="raise"):
            return np.asarray(value, dtype=dtype)[()]
    except (OverflowError, ValueError, FloatingPointError, TypeError):
        raise DTypeError(f"{who}: value {value!r} cannot be converted to the tensor's dtype "
                         f"{dtype}") from None


def masked_fill(input, mask, value):
    """``value`` where the bool ``mask`` (broadcast with ``input``) is true, else ``input``, as
    ``Tensor.masked_fill``: the result keeps ``input``'s dtype (a float ``value`` in an integer
    tensor is truncated, as in PyTorch; one it cannot hold raises DTypeError). ``value`` is a
    number or a 0-d tensor. Differentiable in ``input`` (and a tensor ``value``)."""
    x = input
    if isinstance(value, Tensor):
        if value.ndim:
            raise ShapeError(f"masked_fill: value must be a number or a 0-d tensor, got a tensor "
                             f"of shape {value.shape}")
        v = value if value.dtype == x.dtype else value.to(dtype=x.dtype)
    elif isinstance(value, numbers.Number):
        v = _wrap(x._backend.xp.asarray(_fill_value(value, x.dtype, "masked_fill")), x._backend)
    else:
        raise TypeError(f"masked_fill: value must be a number or a 0-d tensor, got "
                        f"{type(value).__name__}")
    return where(mask, v, x)


# ---------------------------------------------------------------------- pad
class Pad(Function):
    """Constant padding with ``value``; negative pads crop. ``pads``: (lo, hi) per axis."""

    def __init__(self, pads, value):
        self.pads, self.value = pads, value

    def _slices(self, shape):
        src, dst = [], []
        for n, (lo, hi) in zip(shape, self.pads):
            start, stop = builtins.max(-lo, 0), n - builtins.max(-hi, 0)
            k = builtins.max(stop - start, 0)
            src.append(slice(start, start + k))
            d0 = builtins.max(lo, 0)
            dst.append(slice(d0, d0 + k))
        return tuple(src), tuple(dst)

    def forward(self, x):
        self.in_shape = x.shape
        out_shape = tuple(n + lo + hi for n, (lo, hi) in zip(x.shape, self.pads))
        y = self.xp.full(out_shape, self.value, dtype=x.dtype)
        src, dst = self._slices(x.shape)
        y[dst] = x[src]
        return y

    def backward(self, gy):
        src, dst = self._slices(self.in_shape)
        if builtins.all(lo <= 0 and hi <= 0 for lo, hi in self.pads):  # a pure crop
            gx = self.xp.zeros(self.in_shape, dtype=gy.dtype)
            gx[src] = gy
            return (gx,)
        if builtins.all(lo >= 0 and hi >= 0 for lo, hi in self.pads):
            return (gy[dst],)
        gx = self.xp.zeros(self.in_shape, dtype=gy.dtype)
        gx[src] = gy[dst]
        return (gx,)


def _edge_index(n, lo, hi, mode):
    """Input positions of the output positions of one padded axis (reflect, replicate,
    circular), as PyTorch's: reflect mirrors without repeating the edge."""
    i = np.arange(-lo, n + hi)
    if mode == "reflect":
        i = np.abs(i)
        i = np.where(i > n - 1, 2 * (n - 1) - i, i)
    elif mode == "replicate":
        i = np.clip(i, 0, n - 1)
    elif i.size:  # circular: wraps around what is left after a negative pad's crop (PyTorch)
        start, stop = builtins.max(-lo, 0), n - builtins.max(-hi, 0)
        i = start + np.mod(i - start, stop - start)
    return i


class EdgePad(Function):
    """Reflect/replicate/circular padding as a gather per padded axis; the gradient scatters
    back: the unpadded middle as one slice, then one slice add per padded position (a few), so
    no ``add.at`` (slow on NumPy)."""

    def __init__(self, pads):
        self.pads = pads  # axis -> (lo, hi, host int array of the input position of each output)

    def forward(self, x):
        self.in_shape = x.shape
        xp = self.xp
        for ax, (_lo, _hi, idx) in self.pads.items():
            x = xp.take(x, xp.asarray(idx), axis=ax)
        return x

    def backward(self, gy):
        xp = self.xp
        for ax, (lo, hi, idx) in reversed(list(self.pads.items())):
            n = self.in_shape[ax]
            shape = list(gy.shape)
            shape[ax] = n
            g = xp.zeros(shape, dtype=gy.dtype)
            start, stop = builtins.max(-lo, 0), n - builtins.max(-hi, 0)  # the middle
            g[_index(ax, slice(start, stop))] = gy[_index(ax, slice(start + lo, stop + lo))]
            for j, i in enumerate(idx):
                if not start + lo <= j < stop + lo:
                    g[_index(ax, int(i))] += gy[_index(ax, j)]
            gy = g
        return (gy,)


PAD_MODES = ("constant", "reflect", "replicate", "circular")


def pad(input, pad, mode="constant", value=None):
    """Pad ``input``, as ``torch.nn.functional.pad``.

    Args:
        input: a tensor of any shape.
        pad: ``(left, right)`` for the last dim, then ``(top, bottom)`` for the one before, and
            so on (the last dim first); an even number of ints, at most 2 * ndim. Negative pads
            crop (constant mode).
        mode: ``"constant"`` (fill with ``value``, default 0), ``"reflect"`` (mirror without
            the edge; pad < size), ``"replicate"`` (repeat the edge) or ``"circular"`` (wrap;
            pad <= size). The last three pad the last 1, 2 or 3 dims of a tensor with 1 or 2
            more dims (batch, channel), as PyTorch.
        value: the fill of constant mode.

    Shape: each padded dim grows by its two pads. Differentiable.
    """
    x = input
    pads = [int(p) for p in pad]
    if len(pads) % 2:
        raise ValueError(f"pad: padding length must be divisible by 2, got {len(pads)} values")
    k = len(pads) // 2
    if k > x.ndim:
        raise ValueError(f"pad: padding length should be at most two times the input dimension "
                         f"but got padding length {len(pads)} for an input of shape {x.shape}")
    if mode not in PAD_MODES:
        raise ValueError(f"pad: mode must be one of {PAD_MODES}, got {mode!r}")
    per_axis = [(0, 0)] * (x.ndim - k) + [(pads[2 * j], pads[2 * j + 1])
                                          for j in reversed(range(k))]
    for ax, (n, (lo, hi)) in enumerate(zip(x.shape, per_axis)):
        if n + lo + hi < 0:
            raise ShapeError(f"pad: dimension {ax} of size {n} padded by ({lo}, {hi}) would "
                             f"have size {n + lo + hi} (input shape {x.shape})")
    if mode == "constant":
        if value is not None and not isinstance(value, numbers.Real):
            raise TypeError(f"pad: value must be a number, got {type(value).__name__}")
        if builtins.all(p == 0 for p in pads):
            return x.clone()
        fill = _fill_value(0 if value is None else value, x.dtype, "pad")
        return Pad(tuple(per_axis), fill).apply(x)
    if value not in (None, 0, 0.0):
        raise ValueError(f"pad: value is only used by mode='constant' (got mode={mode!r})")
    if k == 0 or k > 3 or x.ndim not in (k + 1, k + 2):
        raise NotImplementedError(
            f"pad: mode={mode!r} pads the last 1, 2 or 3 dims of a tensor with 1 or 2 more "
            f"(2-D/3-D input for 2 pad values, 3-D/4-D for 4, 4-D/5-D for 6); got {len(pads)} "
            f"pad values for an input of shape {x.shape}")
    indices = {}
    for ax, (lo, hi) in enumerate(per_axis):
        if lo == 0 and hi == 0:
            continue
        n = x.shape[ax]
        limit = n - 1 if mode == "reflect" else n
        if mode != "replicate" and (lo > limit or hi > limit):
            what = "less than" if mode == "reflect" else "at most"
            raise ShapeError(f"pad: {mode} padding ({lo}, {hi}) of dimension {ax} must be "
                             f"{what} its size {n} (input shape {x.shape})")
        if n == 0:
            raise ShapeError(f"pad: {mode} padding of dimension {ax} of size 0 "
                             f"(input shape {x.shape})")
        kept = n + builtins.min(lo, 0) + builtins.min(hi, 0)  # what a negative pad leaves
        if mode == "circular" and builtins.max(lo, hi) > kept:
            raise ShapeError(f"pad: circular padding ({lo}, {hi}) of dimension {ax} of size {n} "
                             f"wraps around its {kept} uncropped elements more than once (input "
                             f"shape {x.shape})")
        indices[ax] = (lo, hi, _edge_index(n, lo, hi, mode))
    if not indices:
        return x.clone()
    return EdgePad(indices).apply(x)


# ---------------------------------------------------------------------- expand, repeat, view_as
class Expand(Function):
    """Broadcast to ``shape`` (a view); the gradient sums back (``sum_to``)."""

    def __init__(self, shape):
        self.shape = shape

    def forward(self, x):
        self.in_shape = x.shape
        return self.xp.broadcast_to(x, self.shape)

    def backward(self, gy):
        return (sum_to(gy, self.in_shape),)


def _sizes(sizes):
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = sizes[0]
    return tuple(int(s) for s in sizes)


def expand(x, *sizes):
    """``x`` broadcast to ``sizes`` (new dims in front; -1 keeps a dim), as
    ``Tensor.expand``: only size-1 dims grow (ShapeError otherwise). Differentiable."""
    sizes = _sizes(sizes)
    lead = len(sizes) - x.ndim
    if lead < 0:
        raise ShapeError(f"expand: the number of sizes ({len(sizes)}) must be at least the "
                         f"tensor's dimension ({x.ndim}, shape {x.shape})")
    shape = []
    for i, s in enumerate(sizes):
        old = x.shape[i - lead] if i >= lead else None
        if s == -1:
            if old is None:
                raise ShapeError(f"expand: -1 is not allowed for a new leading dimension "
                                 f"(sizes {sizes})")
            s = old
        if s < 0 or (old is not None and old != 1 and old != s):
            raise ShapeError(f"expand: cannot expand a tensor of shape {x.shape} to {sizes} "
                             f"(size {old} at dimension {i - lead} is not 1)")
        shape.append(s)
    shape = tuple(shape)
    if shape == x.shape:
        return x
    return Expand(shape).apply(x)


def expand_as(x, other):
    """``x.expand(other.shape)``."""
    return expand(x, other.shape)


class Repeat(Function):
    """``Tensor.repeat``: tile ``reps`` times per dim; the gradient sums the tiles."""

    def __init__(self, reps):
        self.reps = reps

    def forward(self, x):
        self.x_shape = x.shape
        self.in_shape = (1,) * (len(self.reps) - x.ndim) + x.shape
        return self.xp.tile(x.reshape(self.in_shape), self.reps)

    def backward(self, gy):
        split = []
        for r, s in zip(self.reps, self.in_shape):
            split += [r, s]
        g = gy.reshape(split).sum(axis=tuple(range(0, len(split), 2)))
        return (g.reshape(self.x_shape),)


def repeat(x, *sizes):
    """``x`` tiled ``sizes[i]`` times along dim i (extra leading sizes add dims), as
    ``Tensor.repeat`` (NumPy's ``tile``). Differentiable."""
    reps = _sizes(sizes)
    if len(reps) < x.ndim:
        raise ShapeError(f"repeat: the number of repeat sizes ({len(reps)}) can not be smaller "
                         f"than the tensor's dimension ({x.ndim}, shape {x.shape})")
    if builtins.any(r < 0 for r in reps):
        raise ValueError(f"repeat: repeat sizes must be non-negative, got {reps}")
    return Repeat(reps).apply(x)


def view_as(x, other):
    """``x.view(other.shape)``: the same elements in ``other``'s shape."""
    return x.reshape(other.shape)
