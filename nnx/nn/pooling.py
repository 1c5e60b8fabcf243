"""Pooling layers with PyTorch's names and arguments: MaxPool1d/2d, AvgPool1d/2d,
AdaptiveAvgPool1d/2d. No parameters; the ops are in ``nnx.pooling``.

Each layer checks its arguments at construction (ValueError), names itself in shape errors
(``MaxPool2d(kernel_size=2) got input of shape (8, 28) (expected (N, C, H, W) or (C, H, W))``),
and answers ``output_shape`` for per-sample shapes (C, H, W) (or (C, L)).
"""
from __future__ import annotations

from .. import pooling as P
from ..errors import ShapeError
from .config import class_name, config_arg
from .module import Module

__all__ = ["MaxPool1d", "MaxPool2d", "AvgPool1d", "AvgPool2d", "AdaptiveAvgPool1d",
           "AdaptiveAvgPool2d"]

_SIZE = (int, list, tuple)


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


def _size(v):
    return tuple(v) if isinstance(v, list) else v


class _Pool(Module):
    """Shared by the pooling layers: config, printing and per-sample shapes.

    Subclasses list ``_args`` (constructor argument, default, accepted config types) and set
    ``_nd`` (spatial axes) and ``_label`` (the layer as errors name it)."""

    _nd = 2
    _args: tuple = ()

    def _describe(self, with_defaults):
        parts = []
        for name, default, _types in self._args:
            v = getattr(self, name)
            if with_defaults or v != default or default is _REQUIRED:
                parts.append(f"{name}={v}")
        return ", ".join(parts)

    def extra_repr(self):
        return self._describe(True)

    def _set_label(self):
        self._label = f"{type(self).__name__}({self._describe(False)})"

    def get_config(self):
        """``{"class": name, <argument>: value}``; tuples are stored as lists."""
        cfg = {"class": class_name(self)}
        for name, _default, _types in self._args:
            cfg[name] = _plain(getattr(self, name))
        return cfg

    @classmethod
    def from_config(cls, config, device=None, dtype=None):
        """The layer of ``get_config``'s dict (no parameters: device and dtype are unused)."""
        kwargs = {}
        for name, default, types in cls._args:
            required = default is _REQUIRED
            kwargs[name] = _size(config_arg(config, name, types, None if required else default,
                                            required))
        return cls(**kwargs)

    def _spatial(self, input_shape):
        """(C, spatial) of a per-sample shape; None for an unknown one."""
        if input_shape is None:
            return None
        shape = tuple(input_shape)
        if len(shape) != self._nd + 1:
            dims = "C, H, W" if self._nd == 2 else "C, L"
            raise ShapeError(f"{self._label} got per-sample shape {shape} (expected ({dims}))")
        return shape

    def _windowed_shape(self, input_shape):
        """Per-sample output shape of a max/avg layer of window ``self._win``."""
        shape = self._spatial(input_shape)
        if shape is None:
            return None
        hw = ((1,) if self._nd == 1 else ()) + shape[1:]
        known = tuple(1 if d is None else d for d in hw)
        oh, ow = self._win.out_hw(*known)
        out = tuple(None if d is None else o for d, o in zip(hw, (oh, ow)))
        if any(o is not None and o < 1 for o in out):
            raise ShapeError(f"{self._label}: a per-sample input of shape {shape} is smaller than "
                             f"the {self._win.kh}x{self._win.kw} window (with its padding)")
        return shape[:1] + out[2 - self._nd:]


_REQUIRED = object()


class _MaxPool(_Pool):
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False,
                 ceil_mode=False):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.return_indices, self.ceil_mode = dilation, bool(return_indices), \
            bool(ceil_mode)
        self._set_label()
        self._win = P.pool_window(self._label, kernel_size, stride, padding, dilation, ceil_mode,
                                  nd=self._nd)

    _args = (("kernel_size", _REQUIRED, _SIZE), ("stride", None, _SIZE + (type(None),)),
             ("padding", 0, _SIZE), ("dilation", 1, _SIZE), ("return_indices", False, (bool,)),
             ("ceil_mode", False, (bool,)))

    def extra_repr(self):  # PyTorch's: stride shown as the kernel size when left out
        stride = self.kernel_size if self.stride is None else self.stride
        return (f"kernel_size={self.kernel_size}, stride={stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")

    def forward(self, x):
        return P.max_pool(x, self._win, self.return_indices, self._label, self._nd)

    def output_shape(self, input_shape):
        """(C, OH, OW) for a per-sample (C, H, W) (None entries stay None)."""
        return self._windowed_shape(input_shape)


class MaxPool2d(_MaxPool):
    """2-D max pooling over (N, C, H, W) or (C, H, W), as ``torch.nn.MaxPool2d``.

    Args:
        kernel_size: window size (int or (kh, kw)).
        stride: window step (default: kernel_size).
        padding: implicit -inf padding on both sides, at most kernel_size // 2 (default 0).
        dilation: spacing of the window's elements (default 1).
        return_indices: also return the argmax indices (flat in each input plane, int64).
        ceil_mode: round the output size up (a last window must start inside the input).

    Shape:
        (N, C, H, W) -> (N, C, OH, OW), OH = floor((H + 2 padding - dilation (kh - 1) - 1) /
        stride) + 1. The gradient goes to the first maximum of each window, as in PyTorch.

    Example:
        >>> pool = nnx.nn.MaxPool2d(2)
        >>> pool(nnx.randn(8, 32, 24, 24)).shape
        (8, 32, 12, 12)
    """


class MaxPool1d(_MaxPool):
    """1-D max pooling over (N, C, L) or (C, L), as ``torch.nn.MaxPool1d`` (arguments of
    ``MaxPool2d``, as ints)."""

    _nd = 1


class _AvgPool(_Pool):
    def forward(self, x):
        return P.avg_pool(x, self._win, self._label, self._nd)

    def output_shape(self, input_shape):
        """(C, OH, OW) for a per-sample (C, H, W) (None entries stay None)."""
        return self._windowed_shape(input_shape)

    def extra_repr(self):  # PyTorch's
        stride = self.kernel_size if self.stride is None else self.stride
        return f"kernel_size={self.kernel_size}, stride={stride}, padding={self.padding}"


class AvgPool2d(_AvgPool):
    """2-D average pooling over (N, C, H, W) or (C, H, W), as ``torch.nn.AvgPool2d``.

    Args:
        kernel_size, stride, padding, ceil_mode: as ``MaxPool2d`` (zero padding).
        count_include_pad: count the padding zeros in the divisor (default True).
        divisor_override: divide every window sum by this instead (default None).

    Shape:
        (N, C, H, W) -> (N, C, OH, OW), OH = floor((H + 2 padding - kh) / stride) + 1.

    Example:
        >>> nnx.nn.AvgPool2d(2)(nnx.ones(1, 1, 4, 4)).shape
        (1, 1, 2, 2)
    """

    _args = (("kernel_size", _REQUIRED, _SIZE), ("stride", None, _SIZE + (type(None),)),
             ("padding", 0, _SIZE), ("ceil_mode", False, (bool,)),
             ("count_include_pad", True, (bool,)), ("divisor_override", None, (int, type(None))))

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode, self.count_include_pad = bool(ceil_mode), bool(count_include_pad)
        self.divisor_override = divisor_override
        self._set_label()
        self._win = P.pool_window(self._label, kernel_size, stride, padding, 1, ceil_mode,
                                  count_include_pad, divisor_override)


class AvgPool1d(_AvgPool):
    """1-D average pooling over (N, C, L) or (C, L), as ``torch.nn.AvgPool1d``."""

    _nd = 1
    _args = AvgPool2d._args[:5]

    def extra_repr(self):  # PyTorch's AvgPool1d prints its sizes as 1-tuples
        one = lambda v: (v,) if isinstance(v, int) else tuple(v)  # noqa: E731
        stride = self.kernel_size if self.stride is None else self.stride
        return (f"kernel_size={one(self.kernel_size)}, stride={one(stride)}, "
                f"padding={one(self.padding)}")

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode, self.count_include_pad = bool(ceil_mode), bool(count_include_pad)
        self._set_label()
        self._win = P.pool_window(self._label, kernel_size, stride, padding, 1, ceil_mode,
                                  count_include_pad, nd=1)


class AdaptiveAvgPool2d(_Pool):
    """Average pooling to a fixed output size, as ``torch.nn.AdaptiveAvgPool2d``.

    Args:
        output_size: (OH, OW), or one int for both; a None entry keeps the input's size.

    Shape:
        (N, C, H, W) -> (N, C, OH, OW); output row i averages the input rows
        floor(i H / OH) .. ceil((i + 1) H / OH) - 1 (columns likewise).

    Example:
        >>> nnx.nn.AdaptiveAvgPool2d(1)(nnx.ones(2, 3, 7, 7)).shape
        (2, 3, 1, 1)
    """

    _args = (("output_size", _REQUIRED, _SIZE + (type(None),)),)

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size
        self._set_label()
        self._sizes = P.adaptive_output_size(output_size, self._nd, self._label)

    def forward(self, x):
        return P.adaptive_avg_pool(x, self._sizes, self._label, self._nd)

    def output_shape(self, input_shape):
        """(C, OH, OW) for a per-sample (C, H, W); a None output entry keeps the input's."""
        shape = self._spatial(input_shape)
        if shape is None:
            return None
        return shape[:1] + tuple(d if o is None else o for d, o in zip(shape[1:], self._sizes))


class AdaptiveAvgPool1d(AdaptiveAvgPool2d):
    """1-D adaptive average pooling over (N, C, L) or (C, L), as ``torch.nn.AdaptiveAvgPool1d``."""

    _nd = 1
