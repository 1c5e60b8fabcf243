"""Pooling ops: max, average and adaptive average pooling over (N, C, H, W) or (N, C, L).

Each op is a ``Function`` over the backend's pooling methods (``backends.pooling`` holds the
NumPy path and the CUDA kernels) plus PyTorch's functional wrapper: ``max_pool2d``,
``avg_pool2d``, ``adaptive_avg_pool2d`` and the 1-d forms, which run the 2-d op on
(N, C, 1, L). Inputs may be batched (N, C, H, W) or unbatched (C, H, W), as in PyTorch.
"""
from __future__ import annotations

from .activations import float_input
from .autograd import Function
from .backends.pooling import Window, window_indices
from .errors import ShapeError
from .tensor import _wrap

__all__ = ["max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d", "adaptive_avg_pool1d",
           "adaptive_avg_pool2d", "pool_window", "adaptive_output_size"]


# ---------------------------------------------------------------------- arguments
def _ints(value, n, what, who):
    """``value`` (an int, or a tuple/list of ``n`` ints) as a tuple of ``n`` ints."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (int(value),) * n
    if isinstance(value, (tuple, list)) and len(value) == n and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        return tuple(int(v) for v in value)
    raise ValueError(f"{who}: {what} must be an int or a tuple of {n} ints, got {value!r}")


def pool_window(who, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                count_include_pad=True, divisor_override=None, nd=2) -> Window:
    """The checked ``backends.pooling.Window`` of PyTorch's pooling arguments (``nd`` = 1 or
    2 spatial axes; a 1-d window is the 2-d one of height 1). ValueError naming ``who`` for
    a kernel, stride or dilation below 1, a negative padding, or a padding above half the
    kernel (PyTorch's limit)."""
    k = _ints(kernel_size, nd, "kernel_size", who)
    s = k if stride is None or stride == [] or stride == () else _ints(stride, nd, "stride", who)
    p = _ints(padding, nd, "padding", who)
    d = _ints(dilation, nd, "dilation", who)
    for what, vals, low in (("kernel_size", k, 1), ("stride", s, 1), ("dilation", d, 1),
                            ("padding", p, 0)):
        if min(vals) < low:
            raise ValueError(f"{who}: {what} must be >= {low}, got {_show(vals)}")
    if any(pi > ki // 2 for pi, ki in zip(p, k)):
        raise ValueError(f"{who}: padding must be at most half the kernel size, got padding="
                         f"{_show(p)} for kernel_size={_show(k)}")
    if divisor_override is not None and (isinstance(divisor_override, bool) or not isinstance(
            divisor_override, int) or divisor_override < 1):
        raise ValueError(f"{who}: divisor_override must be None or a positive int, got "
                         f"{divisor_override!r}")
    if nd == 1:
        k, s, p, d = (1,) + k, (1,) + s, (0,) + p, (1,) + d
    return Window(k[0], k[1], s[0], s[1], p[0], p[1], d[0], d[1], bool(ceil_mode),
                  bool(count_include_pad), int(divisor_override or 0))


def _show(vals):
    return vals[0] if len(set(vals)) == 1 else vals


def adaptive_output_size(output_size, nd, who):
    """``output_size`` (an int, or a tuple of ints and None: keep that axis) as a tuple of
    ``nd`` entries; ValueError for anything else or a size below 1."""
    if output_size is None or isinstance(output_size, int) and not isinstance(output_size, bool):
        sizes = (output_size,) * nd
    elif isinstance(output_size, (tuple, list)) and len(output_size) == nd:
        sizes = tuple(output_size)
    else:
        sizes = (object(),)
    if not all(v is None or isinstance(v, int) and not isinstance(v, bool) and v >= 1
               for v in sizes):
        raise ValueError(f"{who}: output_size must be a positive int or a tuple of {nd} positive "
                         f"ints (None keeps the input's size), got {output_size!r}")
    return sizes


def _check_input(x, who, nd):
    """``x`` as a floating Tensor of rank nd + 1 or nd + 2 (ShapeError naming ``who``)."""
    x = float_input(x, who)
    if x.ndim not in (nd + 1, nd + 2):
        spatial = "H, W" if nd == 2 else "L"
        raise ShapeError(f"{who} got input of shape {tuple(x.shape)} (expected (N, C, {spatial}) "
                         f"or (C, {spatial}))")
    return x


def _out_hw(win, in_hw, who, shape, nd):
    out = win.out_hw(*in_hw)
    if min(out) < 1:
        def show(*pairs):  # "3x3" in 2-d, "3" in 1-d
            return ["x".join(str(v) for v in pair[2 - nd:]) for pair in pairs]

        k, s, p, d, padded, o = show((win.kh, win.kw), (win.sh, win.sw), (win.ph, win.pw),
                                     (win.dh, win.dw),
                                     (in_hw[0] + 2 * win.ph, in_hw[1] + 2 * win.pw), out)
        raise ShapeError(f"{who} got input of shape {tuple(shape)}: the window of size {k} "
                         f"(stride {s}, padding {p}, dilation {d}) does not fit in the padded "
                         f"{padded} input (output would be {o})")
    return out


# ---------------------------------------------------------------------- Functions
class MaxPool(Function):
    """y = window maxima of x (*, H, W); the gradient goes to each window's first maximum."""

    def __init__(self, win: Window):
        self.win = win

    def forward(self, x):
        self.in_hw = x.shape[-2:]
        y, self.argmax = self.backend.max_pool2d_forward(x, self.win)
        return y

    def backward(self, gy):
        return (self.backend.max_pool2d_backward(gy, self.argmax, self.win, self.in_hw),)


class AvgPool(Function):
    """y = window means of x (*, H, W), PyTorch's divisor."""

    def __init__(self, win: Window):
        self.win = win

    def forward(self, x):
        self.in_hw = x.shape[-2:]
        return self.backend.avg_pool2d_forward(x, self.win)

    def backward(self, gy):
        return (self.backend.avg_pool2d_backward(gy, self.win, self.in_hw),)


class AdaptiveAvgPool(Function):
    """y (*, OH, OW) = means of x (*, H, W) over PyTorch's adaptive windows."""

    def __init__(self, out_hw):
        self.out_hw = out_hw

    def forward(self, x):
        self.in_hw = x.shape[-2:]
        return self.backend.adaptive_avg_pool2d_forward(x, self.out_hw)

    def backward(self, gy):
        return (self.backend.adaptive_avg_pool2d_backward(gy, self.in_hw),)


# ---------------------------------------------------------------------- the ops
def _as_2d(x, nd):
    """(.., L) -> (.., 1, L) for the 1-d ops (the 2-d op with a window of height 1)."""
    return x if nd == 2 else x.reshape(tuple(x.shape[:-1]) + (1, x.shape[-1]))


def _from_2d(y, nd):
    return y if nd == 2 else y.reshape(tuple(y.shape[:-2]) + (y.shape[-1],))


def max_pool(x, win: Window, return_indices=False, who="max_pool2d", nd=2):
    """Max pooling of ``x`` with the checked window ``win`` (see ``pool_window``); ``who``
    names the caller in errors. With ``return_indices``: ``(y, indices)``, indices (int64,
    no gradient) flat into each input plane, as PyTorch's."""
    x = _check_input(x, who, nd)
    x2 = _as_2d(x, nd)
    h, w = x2.shape[-2:]
    _out_hw(win, (h, w), who, x.shape, nd)
    fn = MaxPool(win)
    y = _from_2d(fn.apply(x2), nd)
    if not return_indices:
        return y
    b = x._backend
    idx = window_indices(b.xp, fn.argmax, win, h, w)
    return y, _wrap(idx.reshape(y.shape), b)


def avg_pool(x, win: Window, who="avg_pool2d", nd=2):
    """Average pooling of ``x`` with the checked window ``win`` (see ``pool_window``)."""
    x = _check_input(x, who, nd)
    x2 = _as_2d(x, nd)
    _out_hw(win, x2.shape[-2:], who, x.shape, nd)
    return _from_2d(AvgPool(win).apply(x2), nd)


def adaptive_avg_pool(x, sizes, who="adaptive_avg_pool2d", nd=2):
    """Adaptive average pooling of ``x`` to ``sizes`` (``adaptive_output_size``'s tuple)."""
    x = _check_input(x, who, nd)
    x2 = _as_2d(x, nd)
    in_hw = tuple(x2.shape[-2:])
    sizes = ((1,) if nd == 1 else ()) + tuple(sizes)
    out_hw = tuple(n if o is None else o for n, o in zip(in_hw, sizes))
    if min(in_hw) < 1:
        raise ShapeError(f"{who} got input of shape {tuple(x.shape)} (empty spatial axes)")
    return _from_2d(AdaptiveAvgPool(out_hw).apply(x2), nd)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """2-D max pooling of (N, C, H, W) or (C, H, W), as ``torch.nn.functional.max_pool2d``.

    Output (.., OH, OW) with OH = floor((H + 2 padding - dilation (kernel - 1) - 1) / stride)
    + 1 (ceil in ``ceil_mode``); stride defaults to kernel_size; padding counts as -inf. The
    gradient goes to the first maximum of each window (row-major), as in PyTorch."""
    win = pool_window("max_pool2d", kernel_size, stride, padding, dilation, ceil_mode)
    return max_pool(input, win, return_indices, "max_pool2d")


def max_pool1d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """1-D max pooling of (N, C, L) or (C, L), as ``torch.nn.functional.max_pool1d``."""
    win = pool_window("max_pool1d", kernel_size, stride, padding, dilation, ceil_mode, nd=1)
    return max_pool(input, win, return_indices, "max_pool1d", nd=1)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None):
    """2-D average pooling of (N, C, H, W) or (C, H, W), as ``torch.nn.functional.avg_pool2d``:
    window sums over ``divisor_override``, else the window's size (``count_include_pad``:
    padding zeros counted) or its number of input elements."""
    win = pool_window("avg_pool2d", kernel_size, stride, padding, 1, ceil_mode,
                      count_include_pad, divisor_override)
    return avg_pool(input, win, "avg_pool2d")


def avg_pool1d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True):
    """1-D average pooling of (N, C, L) or (C, L), as ``torch.nn.functional.avg_pool1d``."""
    win = pool_window("avg_pool1d", kernel_size, stride, padding, 1, ceil_mode,
                      count_include_pad, nd=1)
    return avg_pool(input, win, "avg_pool1d", nd=1)


def adaptive_avg_pool2d(input, output_size):
    """Means over PyTorch's adaptive windows: output row i averages input rows
    floor(i H / OH) .. ceil((i + 1) H / OH) - 1 (likewise for columns); ``output_size`` is an
    int or a tuple whose None entries keep the input's size."""
    sizes = adaptive_output_size(output_size, 2, "adaptive_avg_pool2d")
    return adaptive_avg_pool(input, sizes, "adaptive_avg_pool2d")


def adaptive_avg_pool1d(input, output_size):
    """1-D adaptive average pooling of (N, C, L) or (C, L)."""
    sizes = adaptive_output_size(output_size, 1, "adaptive_avg_pool1d")
    return adaptive_avg_pool(input, sizes, "adaptive_avg_pool1d", nd=1)

