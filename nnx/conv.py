"""Convolutions as one autograd op: ``conv2d`` and ``conv1d`` (a one-row ``conv2d``).

The op is a single graph node whose forward, input gradient, weight gradient and bias gradient
are the backend's ``conv2d_forward`` / ``conv2d_backward`` (``backends/conv.py``: NumPy im2col +
BLAS on the CPU, CUDA im2col/col2im kernels + cuBLAS on a GPU). Here the arguments are checked
and normalized (PyTorch's signatures, defaults and ``padding='same'|'valid'``), so the backend
never sees a bad shape.
"""
from __future__ import annotations

import operator

from .backends import activations as _table
from .backends.activations import LINEAR
from .backends.conv import Geometry, output_size

from .activations import float_input as _float_input
from .autograd import Function
from .errors import DTypeError, ShapeError
from .tensor import Tensor

__all__ = ["Conv2dFunction", "conv2d", "conv1d", "conv_geometry", "conv_output_shape",
           "fusable_activation"]


def _tuple(value, n, name, where, minimum):
    """``value`` (an int or a sequence of ``n`` ints) as a tuple of ``n`` ints >= minimum."""
    items = tuple(value) if isinstance(value, (list, tuple)) else (value,) * n
    try:
        if len(items) != n or any(isinstance(v, bool) for v in items):
            raise TypeError
        items = tuple(operator.index(v) for v in items)
    except TypeError:
        items = None
    if items is None or any(v < minimum for v in items):
        bound = "positive" if minimum > 0 else "non-negative"
        raise ValueError(f"{where}: {name} must be a {bound} int or a tuple of {n} {bound} "
                         f"ints, got {value!r}")
    return items


def conv_geometry(kernel_size, stride, padding, dilation, groups, n, where):
    """A ``backends.conv.Geometry`` for an ``n``-d (1 or 2) convolution, or ValueError naming
    ``where`` and the bad argument. ``padding`` is an int, a tuple of ``n`` ints, ``'valid'`` or
    ``'same'`` (stride 1 only; an odd total padding puts the extra row/column at the end, as
    PyTorch does)."""
    k = _tuple(kernel_size, n, "kernel_size", where, 1)
    s = _tuple(stride, n, "stride", where, 1)
    d = _tuple(dilation, n, "dilation", where, 1)
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{where}: groups must be a positive int, got {groups!r}")
    if isinstance(padding, str):
        if padding == "valid":
            pads = ((0, 0),) * n
        elif padding == "same":
            if any(v != 1 for v in s):
                raise ValueError(f"{where}: padding='same' is not supported for strided "
                                 f"convolutions (stride={s}), as in PyTorch")
            pads = tuple((dd * (kk - 1) // 2, dd * (kk - 1) - dd * (kk - 1) // 2)
                         for kk, dd in zip(k, d))
        else:
            raise ValueError(f"{where}: padding must be 'valid', 'same', an int or a tuple of "
                             f"{n} ints, got {padding!r}")
    else:
        pads = tuple((p, p) for p in _tuple(padding, n, "padding", where, 0))
    if n == 1:  # one row of a 2-D convolution
        k, s, d, pads = (1,) + k, (1,) + s, (1,) + d, ((0, 0),) + pads
    return Geometry(k[0], k[1], s[0], s[1], pads[0][0], pads[0][1], pads[1][0], pads[1][1],
                    d[0], d[1], groups)


def conv_output_shape(spatial, g: Geometry, n):
    """Output spatial sizes (a tuple of ``n``) for input sizes ``spatial`` (None entries stay
    None; a size below 1 means the kernel does not fit)."""
    axes = [(g.kw, g.sw, g.pl, g.pr, g.dw)]
    if n == 2:
        axes.insert(0, (g.kh, g.sh, g.pt, g.pb, g.dh))
    return tuple(None if size is None else output_size(size, *a) for size, a in zip(spatial, axes))


class Conv2dFunction(Function):
    """y = conv(x, w) + b, one node: x (N, C, H, W), w (O, C/groups, kh, kw), b (O,) optional.

    ``one_d``: x is (N, C, L) and w (O, C/groups, k), run as a one-row 2-D convolution.
    ``activation`` (a ``backends.activations`` name whose backward reads its output, with its
    parameter ``slope``): y = act(conv(x, w) + b) in the same node, applied by the backend
    while each piece of the output is in cache, its backward folded into the conv's.
    """

    def __init__(self, geometry: Geometry, one_d: bool = False, activation: str = LINEAR,
                 slope: float = 0.01):
        self.geometry = geometry
        self.one_d = one_d
        self.activation, self.slope = activation, slope

    def forward(self, x, w, b=None):
        if self.one_d:
            x = x.reshape(x.shape[0], x.shape[1], 1, x.shape[2])
            w = w.reshape(w.shape[0], w.shape[1], 1, w.shape[2])
        need = self.needs_input_grad
        # the im2col matrix is kept only for a weight gradient
        y, self.saved = self.backend.conv2d_forward(
            x, w, b, self.geometry, save=bool(need and need[1]), activation=self.activation,
            negative_slope=self.slope, grad=bool(need))
        if need:
            self.x, self.w, self.has_bias = x, w, b is not None
        return y.reshape(y.shape[0], y.shape[1], y.shape[3]) if self.one_d else y

    def backward(self, gy):
        need = self.needs_input_grad
        if self.one_d:
            gy = gy.reshape(gy.shape[0], gy.shape[1], 1, gy.shape[2])
        gx, gw, gb = self.backend.conv2d_backward(
            self.x, self.w, gy, self.saved, self.geometry, bool(need[0]), bool(need[1]),
            self.has_bias and bool(need[2]))
        if self.one_d:
            if gx is not None:
                gx = gx.reshape(gx.shape[0], gx.shape[1], gx.shape[3])
            if gw is not None:
                gw = gw.reshape(gw.shape[0], gw.shape[1], gw.shape[3])
        if gx is not None and self.inputs[0].creator is None:
            # a leaf's .grad: contiguous, whatever layout the backend computed it in
            gx = self.xp.ascontiguousarray(gx)
        grads = [gx, gw, gb] if self.has_bias else [gx, gw]
        for i in (1, 2)[:len(grads) - 1]:
            if grads[i] is not None:
                dest = self.grad_destination(i)
                if dest is not None:
                    dest[...] = grads[i]
                    grads[i] = None
        return grads

    def release(self):
        saved = self.__dict__.get("saved")
        if saved is not None:
            saved.release()  # the im2col buffer goes back to the backend's pool
        super().release()


def fusable_activation(activation, negative_slope) -> bool:
    """Whether a convolution may apply ``activation`` (a ``backends.activations`` name or
    "linear") itself: an entry whose backward can read its output."""
    if activation == LINEAR:
        return True
    entry = _table.lookup(activation)
    return entry is not None and entry.output_stands_for_input(float(negative_slope))


def _conv(x, weight, bias, stride, padding, dilation, groups, n, layer, activation=LINEAR,
          negative_slope=0.01):
    where = layer or f"conv{n}d"
    if not fusable_activation(activation, negative_slope):
        raise ValueError(f"{where}: activation {activation!r} (negative_slope="
                         f"{negative_slope}) cannot run fused with a convolution; expected "
                         f"'linear' or one of {_fusable_names()}")
    if not isinstance(weight, Tensor):
        raise TypeError(f"{where}: weight must be an nnx Tensor, got {type(weight).__name__}")
    x = _float_input(x, where)
    if weight.ndim != n + 2:
        raise ShapeError(f"{where}: weight must be {n + 2}-D (out_channels, in_channels/groups, "
                         f"{'kH, kW' if n == 2 else 'kW'}), got shape {weight.shape}")
    g = conv_geometry(tuple(weight.shape[2:]), stride, padding, dilation, groups, n, where)
    o, cg = weight.shape[0], weight.shape[1]
    c = cg * groups
    if o % groups:
        raise ValueError(f"{where}: out_channels ({o}) must be divisible by groups ({groups})")
    unbatched = x.ndim == n + 1
    spatial = "H, W" if n == 2 else "L"
    if x.ndim not in (n + 1, n + 2) or x.shape[-n - 1] != c:
        if layer is not None:
            raise ShapeError(f"{layer} got input of shape {x.shape} (expected (N, {c}, {spatial}))")
        raise ShapeError(f"{where}: input of shape {x.shape} does not fit weight of shape "
                         f"{weight.shape} with groups={groups} (expected (N, {c}, {spatial}))")
    if x.dtype != weight.dtype or (bias is not None and bias.dtype != weight.dtype):
        other = x.dtype if x.dtype != weight.dtype else bias.dtype
        raise DTypeError(f"{where}: input dtype {other} differs from weight dtype "
                         f"{weight.dtype}; convert the input with .to(dtype=...) or the model "
                         f"with .float()/.double()")
    if bias is not None and tuple(bias.shape) != (o,):
        raise ShapeError(f"{where}: bias must have shape ({o},), got {bias.shape}")
    out = conv_output_shape(tuple(x.shape[-n:]), g, n)
    if any(s < 1 for s in out):
        raise ShapeError(f"{where}: input of spatial size {tuple(x.shape[-n:])} (padded by "
                         f"{_padding_text(g, n)}) is smaller than the kernel "
                         f"{tuple(weight.shape[2:])} with dilation "
                         f"{(g.dh, g.dw) if n == 2 else (g.dw,)}")
    if unbatched:
        x = x.reshape(1, *x.shape)
    fn = Conv2dFunction(g, one_d=n == 1, activation=activation, slope=float(negative_slope))
    y = fn.apply(x, weight) if bias is None else fn.apply(x, weight, bias)
    return y.reshape(*y.shape[1:]) if unbatched else y


def _padding_text(g, n):
    return f"({g.pt}, {g.pb}), ({g.pl}, {g.pr})" if n == 2 else f"({g.pl}, {g.pr})"


def _fusable_names():
    return tuple(e.name for e in _table.entries() if e.output_stands_for_input(1.0))


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, layer=None,
           activation=LINEAR, negative_slope=0.01):
    """2-D convolution (cross-correlation) over an NCHW batch, as ``torch.nn.functional.conv2d``.

    Args:
        input: (N, C, H, W) (or (C, H, W), unbatched) floating tensor.
        weight: (O, C/groups, kH, kW).
        bias: (O,) or None.
        stride, dilation: int or (sH, sW), >= 1.
        padding: int, (pH, pW), ``'valid'`` (none) or ``'same'`` (output size = input size;
            stride 1 only; odd total padding puts the extra at the bottom/right).
        groups: C and O are split into ``groups`` independent convolutions.
        layer: the calling layer's label for error messages (``nn.Conv2d`` passes its own).
        activation: ``"linear"`` (default: none) or an activation applied in the same node,
            ``act(conv + bias)``: one whose backward reads its output (relu, sigmoid, tanh,
            leaky_relu with a positive ``negative_slope``). ``nn.Sequential`` passes the
            activation module that follows a Conv2d here.

    Returns:
        (N, O, OH, OW) with ``OH = (H + 2 pH - dH (kH - 1) - 1) // sH + 1`` (likewise OW),
        on the CPU an NCHW view of a channels-last array (PyTorch's ``channels_last`` memory
        format; ``backends.conv.OUTPUT_LAYOUT = "nchw"`` makes it C-contiguous instead), on a
        GPU C-contiguous; the values are the same.

    Example:
        >>> x = nnx.randn(8, 1, 28, 28)
        >>> F.conv2d(x, nnx.randn(32, 1, 3, 3), padding="same").shape
        (8, 32, 28, 28)
    """
    return _conv(input, weight, bias, stride, padding, dilation, groups, 2, layer, activation,
                 negative_slope)


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, layer=None,
           activation=LINEAR, negative_slope=0.01):
    """1-D convolution over an NCL batch, as ``torch.nn.functional.conv1d``: input (N, C, L)
    (or (C, L)), weight (O, C/groups, k), bias (O,) -> (N, O, OL). Arguments as ``conv2d``'s,
    with ints (or 1-tuples) for stride, padding and dilation."""
    return _conv(input, weight, bias, stride, padding, dilation, groups, 1, layer, activation,
                 negative_slope)
