"""Normalization layers: ``BatchNorm1d``, ``BatchNorm2d`` (one ``_BatchNorm`` base) and
``LayerNorm``, with PyTorch's arguments, defaults, buffers and ``state_dict`` keys."""
from __future__ import annotations

import numpy as np

from .. import _config
from .. import normalization as N
from ..errors import CheckpointError, ShapeError
from .config import class_name, config_arg
from .module import Module, Parameter

__all__ = ["BatchNorm1d", "BatchNorm2d", "LayerNorm"]


def _new(shape, fill, device, dtype, integer=False):
    from ..tensor import _wrap

    b = _config.backend_for(device)
    dt = np.int64 if integer else (_config.to_dtype(dtype) or _config.get_default_dtype())
    return _wrap(b.xp.full(shape, fill, dtype=dt), b)


class _Normalization(Module):
    """Base of the normalization layers: the output has the input's (per-sample) shape."""

    def output_shape(self, input_shape):
        return input_shape


class _BatchNorm(_Normalization):
    """Batch normalization over the channel axis 1 (see ``BatchNorm1d``/``BatchNorm2d``).

    Args:
        num_features: C, the number of channels.
        eps: added to the variance before the square root. Default: 1e-5.
        momentum: weight of the new batch in the running estimates,
            ``r = (1 - momentum) r + momentum * batch``; None for the cumulative average over
            every batch seen. Default: 0.1.
        affine: learn a per-channel scale ``weight`` (ones) and shift ``bias`` (zeros).
        track_running_stats: keep ``running_mean`` (zeros), ``running_var`` (ones; the
            unbiased batch variances) and ``num_batches_tracked`` (int64) as buffers and use
            them in eval mode; False: batch statistics always, the buffers are None.

    ``train()`` mode normalizes with the batch's mean and biased variance and updates the
    running estimates (on the device: no host read); ``eval()`` uses the running estimates.
    """

    _ranks: tuple = ()   # the input ranks accepted
    _expected = ""       # the expected shape in error messages, {c} for the channels

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, device=None, dtype=None):
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, (int, np.integer)) \
                or num_features < 1:
            raise ValueError(f"{type(self).__name__}: num_features must be a positive int, got "
                             f"{num_features!r}")
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        c = (self.num_features,)
        if self.affine:
            self.weight = Parameter(_new(c, 1.0, device, dtype))
            self.bias = Parameter(_new(c, 0.0, device, dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if self.track_running_stats:
            self.register_buffer("running_mean", _new(c, 0.0, device, dtype))
            self.register_buffer("running_var", _new(c, 1.0, device, dtype))
            self.register_buffer("num_batches_tracked", _new((), 0, device, dtype, integer=True))
        else:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                self.register_buffer(name, None)

    def reset_running_stats(self):
        if self.track_running_stats:
            self.running_mean.data[...] = 0
            self.running_var.data[...] = 1
            self.num_batches_tracked.data[...] = 0

    def reset_parameters(self):
        self.reset_running_stats()
        if self.affine:
            self.weight.data[...] = 1
            self.bias.data[...] = 0

    def _label(self):
        return f"{type(self).__name__}({self.num_features})"

    def _check_input(self, x):
        shape = getattr(x, "shape", None)
        if shape is None or len(shape) not in self._ranks or shape[1] != self.num_features:
            raise ShapeError(f"{self._label()} got input of shape {shape} (expected "
                             f"{self._expected.format(c=self.num_features)})")

    def forward(self, x):
        self._check_input(x)
        p = self._parameters
        factor = 0.0 if self.momentum is None else self.momentum
        update = self.training and self.track_running_stats
        if update and self.momentum is None:  # cumulative moving average: 1 / batches seen
            nbt = self.num_batches_tracked.data
            factor = self.num_batches_tracked._backend.xp.reciprocal((nbt + 1).astype(x.dtype))
        # running_mean/var are None without track_running_stats: batch statistics always
        out = N.batch_norm(x, self.running_mean, self.running_var, p["weight"], p["bias"],
                           self.training or not self.track_running_stats, factor, self.eps)
        if update:
            self.num_batches_tracked.data += 1  # in place, on the device
        return out

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")

    def get_config(self):
        """``{"class": name, "num_features": int, "eps": float, "momentum": float or None,
        "affine": bool, "track_running_stats": bool}``."""
        return {"class": class_name(self), "num_features": self.num_features, "eps": self.eps,
                "momentum": self.momentum, "affine": self.affine,
                "track_running_stats": self.track_running_stats}

    @classmethod
    def from_config(cls, config, device=None, dtype=None):
        """A fresh layer (ones/zeros parameters, reset running statistics) from ``get_config``."""
        momentum = config_arg(config, "momentum", (int, float, type(None)), 0.1)
        return cls(config_arg(config, "num_features", (int,), required=True),
                   eps=config_arg(config, "eps", (int, float), 1e-5), momentum=momentum,
                   affine=config_arg(config, "affine", (bool,), True),
                   track_running_stats=config_arg(config, "track_running_stats", (bool,), True),
                   device=device, dtype=dtype)


class BatchNorm1d(_BatchNorm):
    """Batch normalization of (N, C) or (N, C, L) inputs over N (and L), as
    ``torch.nn.BatchNorm1d``; see ``_BatchNorm`` for the arguments.

    Shape: input (N, C) or (N, C, L) -> output, the same shape.

    Example:
        >>> bn = nnx.nn.BatchNorm1d(3)
        >>> bn(nnx.randn(8, 3)).shape
        (8, 3)
    """

    _ranks = (2, 3)
    _expected = "(N, {c}) or (N, {c}, L)"


class BatchNorm2d(_BatchNorm):
    """Batch normalization of (N, C, H, W) inputs over N, H and W, as ``torch.nn.BatchNorm2d``;
    see ``_BatchNorm`` for the arguments.

    Shape: input (N, C, H, W) -> output, the same shape.

    Example:
        >>> bn = nnx.nn.BatchNorm2d(16)
        >>> bn(nnx.randn(4, 16, 5, 5)).shape
        (4, 16, 5, 5)
    """

    _ranks = (4,)
    _expected = "(N, {c}, H, W)"


class LayerNorm(_Normalization):
    """Layer normalization over the trailing ``normalized_shape`` axes, as ``torch.nn.LayerNorm``:
    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` (biased variance).

    Args:
        normalized_shape: an int or a tuple, the trailing axes' sizes.
        eps: added to the variance. Default: 1e-5.
        elementwise_affine: learn ``weight`` (ones) of shape ``normalized_shape``. Default: True.
        bias: also learn ``bias`` (zeros) when ``elementwise_affine``. Default: True.

    Shape: input (*, *normalized_shape) -> output, the same shape.

    Example:
        >>> ln = nnx.nn.LayerNorm(10)
        >>> ln(nnx.randn(4, 10)).shape
        (4, 10)
    """

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True,
                 device=None, dtype=None):
        super().__init__()
        self.normalized_shape = N._normalized_shape(normalized_shape)
        self.eps = float(eps)
        self.elementwise_affine = bool(elementwise_affine)
        if self.elementwise_affine:
            self.weight = Parameter(_new(self.normalized_shape, 1.0, device, dtype))
            if bias:
                self.bias = Parameter(_new(self.normalized_shape, 0.0, device, dtype))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def reset_parameters(self):
        if self.weight is not None:
            self.weight.data[...] = 1
        if self.bias is not None:
            self.bias.data[...] = 0

    def forward(self, x):
        p = self._parameters
        label = f"LayerNorm({', '.join(map(str, self.normalized_shape))})"
        return N.layer_norm(x, self.normalized_shape, p["weight"], p["bias"], self.eps, label)

    def extra_repr(self):
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}")

    def get_config(self):
        """``{"class": "LayerNorm", "normalized_shape": list, "eps": float,
        "elementwise_affine": bool, "bias": bool}``."""
        return {"class": class_name(self), "normalized_shape": list(self.normalized_shape),
                "eps": self.eps, "elementwise_affine": self.elementwise_affine,
                "bias": self._parameters.get("bias") is not None}

    @classmethod
    def from_config(cls, config, device=None, dtype=None):
        """A fresh ``LayerNorm`` (ones/zeros) from ``get_config``'s dict."""
        shape = config_arg(config, "normalized_shape", (int, list, tuple), required=True)
        if isinstance(shape, (list, tuple)) and not all(
                isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise CheckpointError(f"layer config 'LayerNorm': normalized_shape={shape!r} has the "
                                  f"wrong type")
        return cls(shape, eps=config_arg(config, "eps", (int, float), 1e-5),
                   elementwise_affine=config_arg(config, "elementwise_affine", (bool,), True),
                   bias=config_arg(config, "bias", (bool,), True), device=device, dtype=dtype)
