"""Batch and layer normalization: ``batch_norm`` and ``layer_norm`` as one graph node each.

Each op is one ``Function`` whose forward computes the statistics, the normalized input and the
affine transform, and whose backward is one fused pass per input (the standard closed form:
``gx = (gy w - mean(gy w) - xhat mean(gy w xhat)) / std``), written against ``self.xp`` so it
runs on NumPy and CuPy alike. In training mode nothing is read back to the host: the running
statistics are updated in place on the device (``batch_norm``'s momentum may be a device
scalar, for the cumulative average of ``momentum=None``).
"""
from __future__ import annotations

import numpy as np

from .autograd import Function
from .errors import DeviceError, DTypeError, ShapeError
from .tensor import Tensor, as_tensor

__all__ = ["BatchNorm", "LayerNorm", "batch_norm", "layer_norm"]


def _affine_params(x, weight, bias, shape, name):
    """The Function inputs after ``x`` (weight and/or bias, each checked to have ``shape`` and
    x's dtype and device) and the two flags saying which are there."""
    params = []
    for label, p in (("weight", weight), ("bias", bias)):
        if p is None:
            continue
        if not isinstance(p, Tensor):
            p = as_tensor(p, like=x)
        if tuple(p.shape) != tuple(shape):
            raise ShapeError(f"{name}: {label} of shape {p.shape} does not fit (expected "
                             f"{tuple(shape)})")
        if p.dtype != x.dtype:
            raise DTypeError(f"{name}: {label} dtype {p.dtype} differs from input dtype {x.dtype}")
        params.append(p)
    return params, weight is not None, bias is not None


def _float(x, name):
    if not isinstance(x, Tensor):
        x = as_tensor(x)
    if x.data.dtype.kind != "f":
        raise DTypeError(f"{name}: expected a floating tensor, got dtype {x.dtype}")
    return x


# ---------------------------------------------------------------------- batch norm
class BatchNorm(Function):
    """``y = (x - mean) / sqrt(var + eps) * w + b`` per channel (axis 1).

    Training mode (``stats`` None): mean and biased variance over every axis but 1, kept on the
    node (``batch_mean``, ``batch_var``, device arrays of shape (C,)) for the running estimates.
    Eval mode: ``stats = (mean, var)``, the running estimates (arrays (C,)).

    Inputs: x (N, C, *), then weight (C,) if ``has_weight`` and bias (C,) if ``has_bias``.
    Output: x's shape and dtype.
    """

    def __init__(self, eps, has_weight, has_bias, stats=None):
        self.eps, self.has_weight, self.has_bias, self.stats = eps, has_weight, has_bias, stats

    # Computed on the (N, C, L) view of x (L: the product of the axes after C), with the
    # per-channel sums of products as einsum (no temporary array) and as few passes over the
    # data as NumPy allows: train, x - mean, its squares' sum, one scale pass and the bias;
    # eval, y = x * (w / std) + (b - mean w / std) in two passes.
    def forward(self, x, *params):
        xp = self.xp
        x3 = x.reshape(x.shape[0], x.shape[1], -1)
        w = params[0] if self.has_weight else None
        b = params[-1] if self.has_bias else None
        if self.stats is None:
            mean = x3.mean(axis=(0, 2))
            xc = x3 - mean[:, None]
            var = xp.einsum("ncl,ncl->c", xc, xc)
            var *= 1.0 / (x3.size // x3.shape[1])
            self.batch_mean, self.batch_var = mean, var
        else:
            mean, var = self.stats
            xc = None
        invstd = xp.sqrt(var + self.eps)
        invstd = xp.reciprocal(invstd, out=invstd)
        scale = invstd if w is None else invstd * w
        if xc is not None:
            y = xc * scale[:, None]
        else:
            y = x3 * scale[:, None]
            y -= (mean * scale)[:, None]
        if b is not None:
            y += b[:, None]
        if self.needs_input_grad is not None:
            self.xc, self.x3, self.mean = xc, x3, mean
            self.invstd, self.scale = invstd, scale
        return y.reshape(x.shape)

    def backward(self, gy):
        need = self.needs_input_grad
        xp, train = self.xp, self.stats is None
        g3 = gy.reshape(self.x3.shape)
        invstd, scale = self.invstd, self.scale
        gw = gb = gx = None
        if train and need[0] or self.has_bias and need[-1]:
            gb = g3.sum(axis=(0, 2))
        if train and need[0] or self.has_weight and need[1]:
            if train:  # sum(gy * xhat), xhat = (x - mean) / std
                gw = xp.einsum("ncl,ncl->c", g3, self.xc) * invstd
            else:
                gb_ = gb if gb is not None else g3.sum(axis=(0, 2))
                gw = (xp.einsum("ncl,ncl->c", g3, self.x3) - self.mean * gb_) * invstd
        if need[0]:
            gx = g3 * scale[:, None]
            if train:  # the batch statistics depend on x too: minus the mean terms
                k = 1.0 / (g3.size // g3.shape[1])
                t = self.xc * (gw * invstd * scale * k)[:, None]
                t += (gb * scale * k)[:, None]
                gx -= t
            gx = gx.reshape(gy.shape)
        grads = [gx]
        if self.has_weight:
            grads.append(gw if need[1] else None)
        if self.has_bias:
            grads.append(gb if need[-1] else None)
        return grads


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """Batch normalization over axis 1, as ``torch.nn.functional.batch_norm``.

    Training mode (or no running statistics): normalizes with the batch's mean and biased
    variance and, when ``running_mean``/``running_var`` are given, updates them in place:
    ``r = (1 - momentum) r + momentum s`` with the unbiased variance for ``running_var``
    (``momentum`` may also be a 0-d device array, as the cumulative average of
    ``BatchNorm(momentum=None)`` passes). Eval mode normalizes with the running statistics.

    Shape: input (N, C, *); running_mean, running_var, weight, bias (C,); output input's shape.
    """
    name = "batch_norm"
    x = _float(input, name)
    if x.ndim < 2:
        raise ShapeError(f"{name}: expected an input of shape (N, C, *), got {x.shape}")
    c = x.shape[1]
    params, has_w, has_b = _affine_params(x, weight, bias, (c,), name)
    stats = [s for s in (running_mean, running_var) if s is not None]
    for s in stats:
        if not isinstance(s, Tensor):
            raise TypeError(f"{name}: running_mean and running_var must be Tensors (updated in "
                            f"place), got {type(s).__name__}")
        if tuple(s.shape) != (c,):
            raise ShapeError(f"{name}: running statistics of shape {s.shape} do not fit an input "
                             f"of shape {x.shape} (expected ({c},))")
        if s.dtype != x.dtype:
            raise DTypeError(f"{name}: running statistics of dtype {s.dtype} differ from input "
                             f"dtype {x.dtype}; convert the input or the layer (.double()/.float())")
        if s._backend is not x._backend:
            raise DeviceError(f"{name}: running statistics are on {s.device}, the input on "
                              f"{x.device}; move the layer with .to(device)")
    if len(stats) == 1:
        raise ValueError(f"{name}: give both running_mean and running_var, or neither")
    if momentum is None:
        raise ValueError(f"{name}: momentum must be a number (momentum=None, the cumulative "
                         f"average, is BatchNorm's: it counts the batches)")
    use_batch = training or not stats
    n = x.data.size // c if c else 0
    if use_batch and n == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                         f"{x.shape}")
    if x.data.size == 0:
        raise ShapeError(f"{name}: empty input of shape {x.shape}")
    fn = BatchNorm(float(eps), has_w, has_b,
                   None if use_batch else (running_mean.data, running_var.data))
    out = fn.apply(x, *params)
    if use_batch and stats and training:
        _update_running(running_mean.data, running_var.data, fn.batch_mean, fn.batch_var, n,
                        momentum)
    return out


def _update_running(rm, rv, mean, var, n, momentum):
    """``r = (1 - m) r + m s`` in place (PyTorch's order of terms), the variance unbiased."""
    unbiased = var * (n / (n - 1))
    if isinstance(momentum, (int, float)):
        m = float(momentum)
        rm *= 1.0 - m
        rm += mean * m
        rv *= 1.0 - m
        rv += unbiased * m
        return
    # a device scalar (the cumulative average's 1 / num_batches_tracked): r += m (s - r)
    rm += (mean - rm) * momentum
    rv += (unbiased - rv) * momentum


# ---------------------------------------------------------------------- layer norm
class LayerNorm(Function):
    """``y = (x - mean) / sqrt(var + eps) * w + b`` over the last ``k`` axes.

    Inputs: x (*, D_1..D_k), then weight (D_1..D_k) if ``has_weight`` and bias if ``has_bias``.
    Output: x's shape and dtype.
    """

    def __init__(self, k, eps, has_weight, has_bias):
        self.k, self.eps, self.has_weight, self.has_bias = k, eps, has_weight, has_bias

    # On the (M, D) view of x (D: the normalized axes' size), the row sums of products as
    # einsum (no temporary), as BatchNorm does per channel.
    def forward(self, x, *params):
        xp = self.xp
        d = 1
        for s in x.shape[x.ndim - self.k:]:
            d *= s
        x2 = x.reshape(-1, d)
        w = params[0].reshape(d) if self.has_weight else None
        b = params[-1].reshape(d) if self.has_bias else None
        xhat = x2 - x2.mean(axis=1, keepdims=True)
        var = xp.einsum("md,md->m", xhat, xhat)
        var *= 1.0 / d
        invstd = xp.sqrt(var + self.eps)
        invstd = xp.reciprocal(invstd, out=invstd)[:, None]
        xhat *= invstd
        if self.needs_input_grad is not None:
            self.xhat, self.invstd, self.w = xhat, invstd, w
        if w is None and b is None:
            return xhat.reshape(x.shape)
        y = xhat * w if w is not None else xhat.copy()
        if b is not None:
            y += b
        return y.reshape(x.shape)

    def backward(self, gy):
        need = self.needs_input_grad
        xp = self.xp
        xhat, invstd, w = self.xhat, self.invstd, self.w
        g2 = gy.reshape(xhat.shape)
        wshape = gy.shape[gy.ndim - self.k:]
        grads = [None]
        if need[0]:
            g = g2 * w if w is not None else g2
            k = 1.0 / xhat.shape[1]
            gx = xhat * (xp.einsum("md,md->m", g, xhat) * -k)[:, None]
            gx += g
            gx -= g.mean(axis=1, keepdims=True)
            gx *= invstd
            grads[0] = gx.reshape(gy.shape)
        if self.has_weight:
            grads.append(xp.einsum("md,md->d", g2, xhat).reshape(wshape) if need[1] else None)
        if self.has_bias:
            grads.append(g2.sum(axis=0).reshape(wshape) if need[-1] else None)
        return grads


def _normalized_shape(normalized_shape):
    if isinstance(normalized_shape, (int, np.integer)) and not isinstance(normalized_shape, bool):
        return (int(normalized_shape),)
    try:
        shape = tuple(int(d) for d in normalized_shape)
    except TypeError:
        raise TypeError(f"layer_norm: normalized_shape must be an int or a sequence of ints, got "
                        f"{normalized_shape!r}") from None
    if not shape or any(d < 1 for d in shape):
        raise ValueError(f"layer_norm: normalized_shape must be non-empty positive sizes, got "
                         f"{normalized_shape!r}")
    return shape


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5, layer=None):
    """Layer normalization over the trailing ``normalized_shape`` axes, as
    ``torch.nn.functional.layer_norm`` (biased variance).

    Shape: input (*, *normalized_shape); weight, bias: normalized_shape; output: input's shape.
    ``layer`` names the layer in error messages.
    """
    name = layer or "layer_norm"
    x = _float(input, name)
    shape = _normalized_shape(normalized_shape)
    k = len(shape)
    if tuple(x.shape[x.ndim - k:]) != shape or x.ndim < k:
        raise ShapeError(f"{name} got input of shape {x.shape} (expected (*, "
                         f"{', '.join(map(str, shape))}))")
    if x.data.size == 0:
        raise ShapeError(f"{name}: empty input of shape {x.shape}")
    params, has_w, has_b = _affine_params(x, weight, bias, shape, name)
    return LayerNorm(k, float(eps), has_w, has_b).apply(x, *params)
