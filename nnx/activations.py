"""The differentiable activation op: one ``Function`` over every entry of ``backends.activations``.

``activation(x, "relu")`` runs the entry's forward kernel (the NumPy twin or its CUDA kernel) and
saves what the entry's backward reads (its output, or its input); ``sigmoid``, ``relu``,
``leaky_relu``, ``tanh``, ``gelu``, ``silu``, ``elu`` and ``softplus`` are this op under their
names (Softplus with a beta or threshold other than PyTorch's defaults runs unfused). A Linear
followed by one of these runs fused instead (``nnx.functional.LinearChain``), through the same
entry.
"""
from __future__ import annotations

from .backends import activations as _table

from . import _config
from .autograd import Function
from .errors import DTypeError
from .tensor import Tensor, as_tensor

__all__ = ["Activation", "activation", "sigmoid", "relu", "leaky_relu", "tanh", "gelu", "silu",
           "elu", "softplus", "float_input"]


def float_input(x, name):
    """``x`` as a floating Tensor: integer and bool data take the default dtype (as in
    PyTorch's activations), anything else raises DTypeError naming the op."""
    if type(x) is not Tensor and not isinstance(x, Tensor):
        x = as_tensor(x)
    kind = x.data.dtype.kind
    if kind == "f":
        return x
    if kind in "iub":
        return x.to(dtype=_config.get_default_dtype())
    raise DTypeError(f"{name}: expected a floating tensor, got dtype {x.dtype}")


class Activation(Function):
    """y = act(x), elementwise, for the ``backends.activations`` entry ``entry``.

    Shape: any; the output has x's shape and dtype.
    """

    def __init__(self, entry, negative_slope=0.01):
        self.entry, self.slope = entry, negative_slope
        self.output_activation = entry.name

    @property
    def name(self) -> str:
        return self.entry.module

    def forward(self, x):
        y = self.backend.activation_forward(self.entry.name, x, self.slope)
        if self.needs_input_grad is not None:
            self.saved = x if self.entry.saves == "input" else y
        return y

    def backward(self, gy):
        return (self.backend.activation_backward(self.entry.name, self.saved, gy, self.slope),)

    def backward_from_preactivation(self, g):
        """The input gradients when ``g`` is already the gradient w.r.t. x (a sigmoid fused into
        the loss after it: ``binary_cross_entropy`` calls this)."""
        return (g,)


def activation(x, name, negative_slope=0.01):
    """``act(x)`` for the activation called ``name`` (``"sigmoid"``, ``"relu"``,
    ``"leaky_relu"``, ``"tanh"``, or one registered in ``backends.activations``)."""
    entry = _table.get(name)
    return Activation(entry, float(negative_slope)).apply(float_input(x, name))


_SIGMOID, _RELU, _LEAKY_RELU, _TANH = (_table.get(n) for n in ("sigmoid", "relu", "leaky_relu", "tanh"))


def sigmoid(x):
    """1 / (1 + exp(-x)), stable in both tails (fused kernel). Shape and dtype: x's."""
    return Activation(_SIGMOID).apply(float_input(x, "sigmoid"))


def relu(x):
    """max(x, 0); the gradient at exactly 0 is 0. Shape and dtype: x's."""
    return Activation(_RELU).apply(float_input(x, "relu"))


def leaky_relu(x, negative_slope=0.01):
    """x for x >= 0, ``negative_slope * x`` otherwise. Shape and dtype: x's."""
    return Activation(_LEAKY_RELU, float(negative_slope)).apply(float_input(x, "leaky_relu"))


def tanh(x):
    """The hyperbolic tangent; the gradient is 1 - tanh(x)^2 from the saved output."""
    return Activation(_TANH).apply(float_input(x, "tanh"))


_GELU = {"none": _table.get("gelu"), "tanh": _table.get("gelu_tanh")}
_SILU, _ELU, _SOFTPLUS = (_table.get(n) for n in ("silu", "elu", "softplus"))


def gelu_entry(approximate):
    """The ``backends.activations`` entry of GELU with ``approximate`` ``'none'`` or ``'tanh'``."""
    entry = _GELU.get(approximate) if isinstance(approximate, str) else None
    if entry is None:
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return entry


def gelu(x, approximate="none"):
    """GELU: ``x * Phi(x)`` (Phi the standard normal CDF) for ``approximate='none'``, or
    ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` for ``'tanh'``. Shape and dtype: x's."""
    return Activation(gelu_entry(approximate)).apply(float_input(x, "gelu"))


def silu(x):
    """SiLU (swish): ``x * sigmoid(x)``. Shape and dtype: x's."""
    return Activation(_SILU).apply(float_input(x, "silu"))


def elu(x, alpha=1.0):
    """ELU: x for x > 0, ``alpha * (exp(x) - 1)`` otherwise. Shape and dtype: x's."""
    return Activation(_ELU, float(alpha)).apply(float_input(x, "elu"))


class ScaledSoftplus(Function):
    """``log(1 + exp(beta x)) / beta``, x itself where ``beta x > threshold`` (PyTorch's
    Softplus for any beta and threshold; the default ones run as the fused entry instead).

    Computed as ``(max(bx, 0) + log1p(exp(-|bx|))) / beta``: nothing overflows for any threshold.
    """

    def __init__(self, beta, threshold):
        self.beta, self.threshold = beta, threshold

    def forward(self, x):
        xp = self.xp
        bx = x * self.beta
        y = xp.maximum(bx, 0) + xp.log1p(xp.exp(-xp.abs(bx)))
        y /= self.beta
        linear = bx > self.threshold
        if self.needs_input_grad is not None:
            self.bx, self.linear = bx, linear
        return xp.where(linear, x, y)

    def backward(self, gy):
        s = self.backend.sigmoid_fwd(self.bx)  # d/dx = sigmoid(beta x); 1 in the linear part
        return (self.xp.where(self.linear, gy, gy * s),)


def softplus(x, beta=1.0, threshold=20.0):
    """Softplus as ``torch.nn.functional.softplus``: ``log(1 + exp(beta x)) / beta``, and x
    where ``beta x > threshold``. Shape and dtype: x's. Beta 1 and threshold 20 (the defaults)
    run the fused kernel."""
    x = float_input(x, "softplus")
    if beta == 1 and threshold == 20:
        return Activation(_SOFTPLUS).apply(x)
    if beta == 0:
        raise ValueError("softplus: beta must be nonzero")
    return ScaledSoftplus(float(beta), float(threshold)).apply(x)
