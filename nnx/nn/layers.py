"""Layers: Linear, activations, Softmax/LogSoftmax, Identity, Dropout, Flatten.

Each layer states its own config (``get_config`` / ``from_config``; the generic ones of
``Module`` where the constructor arguments are plain attributes, see ``nnx.nn.config``) and the
per-sample shape of its output (``output_shape``, the batch axis left out, as in Keras). The ``Sequential`` container is in
``nnx.nn.container``.
"""
from __future__ import annotations

import math

from .. import _config
from .. import functional as F
from . import init
from .activation import LeakyReLU, ReLU, Sigmoid, Tanh  # noqa: F401  (importable from here too)
from ..errors import CheckpointError
from .config import class_name, config_arg
from .module import Module, Parameter


class Linear(Module):
    """Applies y = x W^T + b.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        bias: learn an additive bias (default True).

    Shape:
        input (*, in_features) -> output (*, out_features).

    Attributes:
        weight: (out_features, in_features), initialized from U(-1/sqrt(in), 1/sqrt(in)) as in
            PyTorch (kaiming_uniform with a = sqrt(5)).
        bias: (out_features,), from the same distribution.

    Example:
        >>> layer = nnx.nn.Linear(2, 3)
        >>> layer(nnx.tensor([[1., 2.]])).shape
        (1, 3)
    """

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"Linear: in_features and out_features must be >= 1, got "
                             f"{in_features} and {out_features}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self._label = f"Linear({self.in_features} -> {self.out_features})"  # for error messages
        b = _config.backend_for(device)
        dt = _config.to_dtype(dtype) or _config.get_default_dtype()
        from ..tensor import _wrap

        self.weight = Parameter(_wrap(b.xp.empty((self.out_features, self.in_features), dtype=dt), b))
        if bias:
            self.bias = Parameter(_wrap(b.xp.empty((self.out_features,), dtype=dt), b))
        else:  # registered as None, as in PyTorch: no "bias" in state_dict, forward adds nothing
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            init.uniform_(self.bias, -bound, bound)

    def forward(self, x, activation="linear", negative_slope=0.01):
        p = self._parameters
        return F.linear(x, p["weight"], p["bias"], activation, negative_slope, self._label)

    def output_shape(self, input_shape):
        """``input_shape[:-1] + (out_features,)``; ``(out_features,)`` for an unknown input."""
        return tuple(input_shape or ())[:-1] + (self.out_features,)

    def get_config(self):
        """``{"class": "Linear", "in_features": int, "out_features": int, "bias": bool}``."""
        return {"class": class_name(self), "in_features": self.in_features,
                "out_features": self.out_features, "bias": self.bias is not None}

    @classmethod
    def from_config(cls, config, device=None, dtype=None):
        """A fresh ``Linear`` (PyTorch's initialization) of ``get_config``'s sizes."""
        return cls(config_arg(config, "in_features", (int,), required=True),
                   config_arg(config, "out_features", (int,), required=True),
                   bias=config_arg(config, "bias", (bool,), True), device=device, dtype=dtype)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class _OverAxis(Module):
    """Base of the normalizations over one axis (``axis``, or PyTorch's ``dim=``): the output
    has the input's shape."""

    def __init__(self, axis=-1, *, dim=None):
        super().__init__()
        self.axis = dim if dim is not None else axis

    def output_shape(self, input_shape):
        return input_shape

    def extra_repr(self):
        return f"axis={self.axis}"


class Softmax(_OverAxis):
    """``exp(x) / sum(exp(x))`` over ``axis`` (default the last). Shape: (*) -> (*)."""

    def forward(self, x):
        return F.softmax(x, axis=self.axis)


class LogSoftmax(_OverAxis):
    """``log(softmax(x))`` over ``axis``, computed stably. Shape: (*) -> (*)."""

    def forward(self, x):
        return F.log_softmax(x, axis=self.axis)


class Identity(Module):
    """Returns its input unchanged (a placeholder layer)."""

    def forward(self, x):
        return x

    def output_shape(self, input_shape):
        return input_shape


class Dropout(Module):
    """Zeroes elements with probability ``p`` in training mode (scaling the rest by 1/(1-p))."""

    def __init__(self, p=0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p = float(p)

    def forward(self, x):
        return F.dropout(x, self.p, self.training)

    def output_shape(self, input_shape):
        return input_shape

    def extra_repr(self):
        return f"p={self.p}"


class Flatten(Module):
    """Merges the axes ``start_dim`` .. ``end_dim`` into one: (N, C, H, W) -> (N, C*H*W) with
    the defaults. The axes count the batch axis, as in PyTorch.

    ``input_shape`` (keyword only, Keras's): the per-sample shape of the model's input when
    this is its first layer, e.g. ``Flatten(input_shape=(28, 28))``, so that a ``Dense`` after
    it knows its input size (784)."""

    def __init__(self, start_dim=1, end_dim=-1, *, input_shape=None):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim
        self.input_shape = _per_sample_shape(input_shape, "Flatten")

    def forward(self, x):
        return x.flatten(self.start_dim, self.end_dim)

    def output_shape(self, input_shape):
        """The merged axes' product in place of them, when they are all known; None when the
        input's shape is unknown (and ``input_shape`` was not given) or ``start_dim`` is the
        batch axis."""
        if input_shape is None:
            input_shape = self.input_shape
        if input_shape is None:
            return None
        shape, ndim = tuple(input_shape), len(input_shape) + 1  # with the batch axis
        start = self.start_dim + ndim if self.start_dim < 0 else self.start_dim
        end = self.end_dim + ndim if self.end_dim < 0 else self.end_dim
        if not 1 <= start <= end < ndim:  # the batch axis merged (or axes out of range)
            return None
        merged = shape[start - 1:end]
        size = None if any(d is None for d in merged) else math.prod(merged)
        return shape[:start - 1] + (size,) + shape[end:]

    def get_config(self):
        """``{"class": "Flatten", "start_dim": int, "end_dim": int}``, plus ``"input_shape"``
        (a list) when one was given."""
        cfg = {"class": class_name(self), "start_dim": self.start_dim, "end_dim": self.end_dim}
        if self.input_shape is not None:
            cfg["input_shape"] = list(self.input_shape)
        return cfg

    @classmethod
    def from_config(cls, config, device=None, dtype=None):
        """A ``Flatten`` of ``get_config``'s axes (and ``input_shape``, when the config has
        one)."""
        return cls(config_arg(config, "start_dim", (int,), 1),
                   config_arg(config, "end_dim", (int,), -1),
                   input_shape=_config_shape(config))

    def extra_repr(self):
        s = f"start_dim={self.start_dim}, end_dim={self.end_dim}"
        return s if self.input_shape is None else s + f", input_shape={self.input_shape}"


def _per_sample_shape(shape, who):
    """``shape`` (Keras's ``input_shape=``: a tuple or list of positive ints or None, the batch
    axis left out) as a tuple, or None; ValueError for anything else."""
    if shape is None:
        return None
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, (tuple, list)) or not shape or any(
            d is not None and (isinstance(d, bool) or not isinstance(d, int) or d < 1)
            for d in shape):
        raise ValueError(f"{who}: input_shape must be a tuple of positive ints (the shape of one "
                         f"sample, without the batch axis), e.g. (28, 28); got {shape!r}")
    return tuple(None if d is None else int(d) for d in shape)


def _config_shape(config):
    """The ``"input_shape"`` entry of a layer config as a tuple (None when absent)."""
    shape = config_arg(config, "input_shape", (list, tuple, type(None)))
    try:
        return _per_sample_shape(shape, config.get("class"))
    except ValueError as e:
        raise CheckpointError(f"layer config {config.get('class')!r}: {e}") from None
