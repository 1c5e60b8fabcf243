"""The differentiable activation op: one ``Function`` over every entry of ``backends.activations``.

``activation(x, "relu")`` runs the entry's forward kernel (the NumPy twin or its CUDA kernel) and
saves what the entry's backward reads (its output, or its input); ``sigmoid``, ``relu``,
``leaky_relu`` and ``tanh`` are this op under their names. A Linear followed by one of these runs
fused instead (``nnx.functional.LinearChain``), through the same entry.
"""
from __future__ import annotations

from .backends import activations as _table

from . import _config
from .autograd import Function
from .errors import DTypeError
from .tensor import Tensor, as_tensor

__all__ = ["Activation", "activation", "sigmoid", "relu", "leaky_relu", "tanh", "float_input"]


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
