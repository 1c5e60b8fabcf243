"""The one place that binds the ops as ``Tensor`` methods and operators.

``nnx.tensor`` defines the Tensor itself (data, device, gradient, host access); the ops that
compute on it live in ``nnx.ops``, ``nnx.activations`` and ``nnx.functional`` and are bound here,
as PyTorch's ``x.sum()``, ``x + y``, ``x.relu()``, ``x.softmax(dim=1)``, ``x.to("cuda")``. Importing
``nnx`` runs this module once.
"""
from __future__ import annotations

import numpy as np

from . import activations, functional, ops, shape_ops
from .tensor import Tensor, _is_dtype_name


def _to(self, device=None, dtype=None, non_blocking=False):
    """This tensor on ``device`` and/or with ``dtype`` (self when nothing changes); the device
    or the dtype may come first (``x.to("cuda")``, ``x.to("float64")``).

    Differentiable: gradients flow back to the original device and dtype.
    """
    if isinstance(device, (np.dtype, type)) or (isinstance(device, str) and _is_dtype_name(device)):
        device, dtype = None, device
    return ops.to_device(self, device, dtype)


def _where(self, condition, other):
    """``x.where(condition, y)``: ``where(condition, x, y)``, as PyTorch's method."""
    return shape_ops.where(condition, self, other)


def _masked_fill(self, mask, value):
    """``value`` where the bool ``mask`` (broadcast) is true, else this tensor, in this
    tensor's dtype (differentiable in this tensor); see ``shape_ops.masked_fill``."""
    return shape_ops.masked_fill(self, mask, value)


def _bool(self):
    return ops.to_device(self, None, np.bool_)


def _type_as(self, other):
    """This tensor in ``other``'s dtype."""
    return ops.to_device(self, None, other.dtype)


def _reflected(op):
    def r(self, other):
        return op(other, self)
    r.__name__ = f"__r{op.__name__}__"
    return r


def bind(T=Tensor):
    """Bind every op method and operator on ``T``."""
    for name in ("add", "sub", "mul", "div", "pow", "matmul"):
        op = getattr(ops, name)
        setattr(T, name, op)
        setattr(T, f"__{'truediv' if name == 'div' else name}__", op)
        setattr(T, f"__r{'truediv' if name == 'div' else name}__", _reflected(op))
    T.__neg__ = T.neg = ops.neg
    T.__pos__ = lambda self: self
    T.__getitem__ = ops.getitem
    T.__eq__, T.__ne__, T.__lt__, T.__le__, T.__gt__, T.__ge__ = (
        ops.eq, ops.ne, ops.lt, ops.le, ops.gt, ops.ge)
    T.__hash__ = object.__hash__
    for name in ("sum", "mean", "max", "min", "amax", "amin", "argmax", "argmin", "reshape",
                 "view", "flatten", "transpose", "permute", "squeeze", "unsqueeze", "exp", "log",
                 "abs", "sqrt", "clip", "any", "all", "clone", "var", "std", "topk", "norm",
                 "maximum", "minimum"):
        setattr(T, name, getattr(ops, name))
    T.clamp = ops.clip
    for name in ("split", "chunk", "expand", "expand_as", "repeat", "view_as"):
        setattr(T, name, getattr(shape_ops, name))
    T.where = _where
    T.eq, T.ne, T.lt, T.le, T.gt, T.ge = ops.eq, ops.ne, ops.lt, ops.le, ops.gt, ops.ge
    T.greater, T.less, T.greater_equal, T.less_equal = ops.gt, ops.lt, ops.ge, ops.le
    T.bool = _bool
    T.type_as = _type_as
    T.masked_fill = _masked_fill
    T.T = property(ops.T)
    T.to = _to
    for name in ("sigmoid", "relu", "leaky_relu", "tanh"):
        setattr(T, name, getattr(activations, name))
    T.softmax, T.log_softmax = functional.softmax, functional.log_softmax


bind()
