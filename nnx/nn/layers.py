"""Layers: Linear, activations, Softmax/LogSoftmax, Identity, Dropout, Flatten.

Each layer states its own config (``get_config`` / ``from_config``; the generic ones of
``Module`` where the constructor arguments are plain attributes, see ``nnx.nn.config``) and the
size of its output's last axis (``output_features``). The ``Sequential`` container is in
``nnx.nn.container``.
"""
from __future__ import annotations

import math

from .. import _config
from .. import functional as F
from . import init
from .activation import LeakyReLU, ReLU, Sigmoid, Tanh  # noqa: F401  (importable from here too)
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

    def output_features(self, in_features):
        """``out_features``, whatever the input size."""
        return self.out_features

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

    def output_features(self, in_features):
        return in_features

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

    def output_features(self, in_features):
        return in_features


class Dropout(Module):
    """Zeroes elements with probability ``p`` in training mode (scaling the rest by 1/(1-p))."""

    def __init__(self, p=0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p = float(p)

    def forward(self, x):
        return F.dropout(x, self.p, self.training)

    def output_features(self, in_features):
        return in_features

    def extra_repr(self):
        return f"p={self.p}"


class Flatten(Module):
    """Merges the axes ``start_dim`` .. ``end_dim`` into one: (N, C, H, W) -> (N, C*H*W) with
    the defaults."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return x.flatten(self.start_dim, self.end_dim)

    def output_features(self, in_features):
        """None: the merged size depends on axes other than the last, which the size of the
        last axis alone does not tell."""
        return None
