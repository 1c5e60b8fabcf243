"""Convolution layers: ``Conv2d`` and ``Conv1d`` (PyTorch's names, arguments, defaults,
initialization and state_dict keys ``weight`` (out, in/groups, *kernel) and ``bias`` (out,))."""
from __future__ import annotations

import math

from .. import _config
from .. import functional as F
from ..conv import conv1d, conv2d, conv_geometry, conv_output_shape
from . import init
from .config import class_name, config_arg
from .module import Module, Parameter

__all__ = ["Conv1d", "Conv2d"]

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


class _ConvNd(Module):
    """The shared body of ``Conv1d`` and ``Conv2d`` (``_n`` spatial axes)."""

    _n = 2

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", device=None, dtype=None):
        super().__init__()
        name, n = type(self).__name__, self._n
        for arg, v in (("in_channels", in_channels), ("out_channels", out_channels),
                       ("groups", groups)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: {arg} must be a positive int, got {v!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{name}: in_channels ({in_channels}) and out_channels "
                             f"({out_channels}) must be divisible by groups ({groups})")
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"{name}: padding_mode must be one of {_PADDING_MODES}, got "
                             f"{padding_mode!r}")
        # validates kernel_size, stride, padding, dilation (ValueError naming the layer)
        geom = conv_geometry(kernel_size, stride, padding, dilation, groups, n, name)
        # padding_mode other than zeros: F.pad's mode first, then an unpadded conv (PyTorch's
        # order); F.pad wants (left, right[, top, bottom])
        self._mode_pad = None if padding_mode == "zeros" else \
            (geom.pl, geom.pr) + ((geom.pt, geom.pb) if n == 2 else ())
        as_tuple = (lambda v: tuple(v) if isinstance(v, (list, tuple)) else (v,) * n)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = tuple(int(k) for k in as_tuple(kernel_size))
        self.stride = tuple(int(s) for s in as_tuple(stride))
        self.padding = padding if isinstance(padding, str) else tuple(int(p) for p in as_tuple(padding))
        self.dilation = tuple(int(d) for d in as_tuple(dilation))
        self.groups, self.padding_mode = groups, padding_mode
        kernel = "x".join(map(str, self.kernel_size))
        self._label = f"{name}({in_channels} -> {out_channels}, {kernel})"  # for error messages
        b = _config.backend_for(device)
        dt = _config.to_dtype(dtype) or _config.get_default_dtype()
        from ..tensor import _wrap

        shape = (out_channels, in_channels // groups) + self.kernel_size
        self.weight = Parameter(_wrap(b.xp.empty(shape, dtype=dt), b))
        if bias:
            self.bias = Parameter(_wrap(b.xp.empty((out_channels,), dtype=dt), b))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        """PyTorch's: kaiming_uniform(a=sqrt(5)) for the weight, U(+-1/sqrt(fan_in)) for the
        bias, fan_in = in_channels/groups * prod(kernel_size)."""
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = (self.in_channels // self.groups) * math.prod(self.kernel_size)
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            init.uniform_(self.bias, -bound, bound)

    def forward(self, x, activation="linear", negative_slope=0.01):
        """The convolution of ``x``; ``activation`` (see ``F.conv2d``) is applied in the same
        node (``nn.Sequential`` passes the activation module that follows this layer)."""
        p = self._parameters
        fn = conv2d if self._n == 2 else conv1d
        padding = self.padding
        if self._mode_pad is not None and any(self._mode_pad):
            x = F.pad(x, self._mode_pad, mode=self.padding_mode)
            padding = 0
        return fn(x, p["weight"], p["bias"], self.stride, padding, self.dilation,
                  self.groups, layer=self._label, activation=activation,
                  negative_slope=negative_slope)

    def output_shape(self, input_shape):
        """``(out_channels, *spatial)`` for a per-sample input ``(in_channels, *spatial)``
        (None entries stay None); None when the input's shape is unknown."""
        if input_shape is None:
            return None
        shape = tuple(input_shape)
        if len(shape) != self._n + 1:
            return None
        g = conv_geometry(self.kernel_size, self.stride, self.padding, self.dilation,
                          self.groups, self._n, type(self).__name__)
        return (self.out_channels,) + conv_output_shape(shape[1:], g, self._n)

    def get_config(self):
        """``{"class", "in_channels", "out_channels", "kernel_size", "stride", "padding",
        "dilation", "groups", "bias", "padding_mode"}`` (tuples as lists; padding may be a
        string)."""
        pad = self.padding if isinstance(self.padding, str) else list(self.padding)
        return {"class": class_name(self), "in_channels": self.in_channels,
                "out_channels": self.out_channels, "kernel_size": list(self.kernel_size),
                "stride": list(self.stride), "padding": pad, "dilation": list(self.dilation),
                "groups": self.groups, "bias": self.bias is not None,
                "padding_mode": self.padding_mode}

    @classmethod
    def from_config(cls, config, device=None, dtype=None):
        """A fresh layer (PyTorch's initialization) of ``get_config``'s arguments."""
        seq = (list, tuple, int)
        pad = config_arg(config, "padding", (list, tuple, int, str), 0)
        return cls(config_arg(config, "in_channels", (int,), required=True),
                   config_arg(config, "out_channels", (int,), required=True),
                   _as_arg(config_arg(config, "kernel_size", seq, required=True)),
                   stride=_as_arg(config_arg(config, "stride", seq, 1)),
                   padding=pad if isinstance(pad, str) else _as_arg(pad),
                   dilation=_as_arg(config_arg(config, "dilation", seq, 1)),
                   groups=config_arg(config, "groups", (int,), 1),
                   bias=config_arg(config, "bias", (bool,), True),
                   padding_mode=config_arg(config, "padding_mode", (str,), "zeros"),
                   device=device, dtype=dtype)

    def extra_repr(self):
        n = self._n
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0,) * n:
            s += f", padding={self.padding}"  # a string unquoted, as PyTorch prints it
        if self.dilation != (1,) * n:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return s


def _as_arg(v):
    return tuple(v) if isinstance(v, (list, tuple)) else v


class Conv2d(_ConvNd):
    """2-D convolution over an NCHW batch, as ``torch.nn.Conv2d``.

    Args:
        in_channels, out_channels: channels of the input and output.
        kernel_size: int or (kH, kW).
        stride: int or (sH, sW) (default 1).
        padding: int, (pH, pW), ``'valid'`` or ``'same'`` (stride 1 only) (default 0).
        dilation: int or (dH, dW) (default 1).
        groups: blocked connections from input to output channels (default 1; ``groups ==
            in_channels`` is a depthwise convolution).
        bias: learn an additive bias (default True).
        padding_mode: ``'zeros'`` (default), ``'reflect'``, ``'replicate'`` or ``'circular'``
            (the input padded by ``F.pad`` in that mode, then convolved unpadded).

    Shape:
        input (N, C_in, H, W) (or (C_in, H, W)) -> output (N, C_out, OH, OW) with
        ``OH = (H + 2 pH - dH (kH - 1) - 1) // sH + 1``.

    Attributes:
        weight: (out_channels, in_channels/groups, kH, kW), kaiming_uniform(a=sqrt(5)).
        bias: (out_channels,), U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    Example:
        >>> conv = nnx.nn.Conv2d(1, 32, 3)
        >>> conv(nnx.zeros(8, 1, 28, 28)).shape
        (8, 32, 26, 26)
    """

    _n = 2


class Conv1d(_ConvNd):
    """1-D convolution over an NCL batch, as ``torch.nn.Conv1d``: input (N, C_in, L) ->
    (N, C_out, OL); weight (out_channels, in_channels/groups, k). Arguments as ``Conv2d``'s
    with ints (or 1-tuples). Runs as a one-row 2-D convolution."""

    _n = 1
