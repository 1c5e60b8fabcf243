"""The fused activations, each declared once: its NumPy twin and its CUDA expressions side by side.

One :class:`Activation` entry per activation holds everything every layer of nnx reads:

* ``name`` -- what ``bias_act_``, ``LinearChain``, ``F.linear(activation=...)`` and the
  configs call it; ``module`` -- the ``nnx.nn`` class name (``"ReLU"``); ``keras`` -- the name
  Keras's ``Dense(activation=...)`` uses (None when Keras has none);
* the NumPy twin: ``numpy_forward(x, out, slope, bias)`` writes ``act(x)`` into ``out`` (which
  may be ``x``: in place) and returns None or an opaque ``aux`` for the backward;
  ``numpy_backward(saved, gy, out, slope, aux)`` returns ``gx`` (into ``out`` when given; ``out``
  may be ``gy``);
* the CUDA side: ``cuda_forward`` is a C expression of ``x`` (and ``slope``) in the compute type
  ``nnx_acc``; ``cuda_backward`` one of ``s`` (the saved value), ``g`` (the incoming gradient)
  and ``slope``; ``cuda_helpers`` any ``__device__`` functions they call.
  ``backends.cuda_kernels`` turns each entry into the kernels ``nnx_<name>_fwd_<dt>``,
  ``nnx_<name>_bwd_<dt>`` and ``nnx_bias_<name>_<dt>``;
* ``saves``: what the backward reads, ``"output"`` (y) or ``"input"`` (x). ``sign_only``: the
  backward reads only the sign of what it saved, so the output can stand in for the input when
  the activation keeps signs (a positive slope): ``LinearChain`` then keeps no copy of the
  pre-activation.

Adding a fused activation is one :func:`register` call (plus its tests): the backends, the
layers, ``Dense``, the configs, the CUDA templates and the strict backend all read this table.

Arrays are float16/float32/float64 NumPy arrays; results keep the input's dtype. ``slope`` is a
Python float (the negative slope of leaky ReLU; ignored by the others).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from .scalars import scalar as _s

# Up to this size the sigmoid takes its branch-free two-exp form (least dispatch); above it, the
# one-exp form (less arithmetic).
_SMALL = 1024
# ReLU forward: an integer sign mask beats np.maximum on small arrays, loses on large ones.
_RELU_INT_MAX = 1 << 17

_INT_VIEW = {np.dtype(np.float16): (np.int16, 15), np.dtype(np.float32): (np.int32, 31),
             np.dtype(np.float64): (np.int64, 63)}
_INT_MIN = {it: np.iinfo(it).min for it, _ in _INT_VIEW.values()}  # the bits of -0.0


@dataclasses.dataclass(frozen=True)
class Activation:
    """One fused activation (see the module docstring for each field)."""

    name: str
    module: str
    keras: str | None
    numpy_forward: Callable
    numpy_backward: Callable
    cuda_forward: str
    cuda_backward: str
    cuda_helpers: str = ""
    saves: str = "output"
    sign_only: bool = False
    has_slope: bool = False
    doc: str = ""

    def output_stands_for_input(self, slope: float) -> bool:
        """Whether the backward may read the output where it saved the input."""
        return self.saves == "output" or (self.sign_only and slope > 0)


_REGISTRY: dict[str, Activation] = {}
_listeners: list[Callable[[Activation], None]] = []

#: What ``activation`` arguments mean "no activation" (a plain bias add).
LINEAR = "linear"


def register(entry: Activation) -> Activation:
    """Add ``entry`` to the table (its name must be new); returns it."""
    if not isinstance(entry, Activation):
        raise TypeError(f"register: expected an Activation, got {type(entry).__name__}")
    if entry.name in _REGISTRY or entry.name == LINEAR:
        raise ValueError(f"activation {entry.name!r} is already registered")
    if entry.saves not in ("output", "input"):
        raise ValueError(f"activation {entry.name!r}: saves must be 'output' or 'input'")
    _REGISTRY[entry.name] = entry
    for listener in list(_listeners):
        listener(entry)
    return entry


def on_register(listener: Callable[[Activation], None]) -> None:
    """Call ``listener(entry)`` for every later :func:`register` (the CUDA sources use it)."""
    _listeners.append(listener)


def get(name: str) -> Activation:
    """The entry called ``name``; ValueError naming the known ones otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown activation {name!r}; expected one of {names(True)}") from None


#: name -> entry, for hot paths that look an entry up per call (read-only outside this module)
TABLE = _REGISTRY


def lookup(name) -> Activation | None:
    """The entry called ``name``, or None."""
    return _REGISTRY.get(name)


def entries() -> tuple[Activation, ...]:
    """Every registered entry, in registration order."""
    return tuple(_REGISTRY.values())


def names(with_linear: bool = False) -> tuple[str, ...]:
    """The registered names (``"linear"`` first when ``with_linear``)."""
    return ((LINEAR,) if with_linear else ()) + tuple(_REGISTRY)


# ------------------------------------------------------------------------------ sigmoid
def _sigmoid_forward(x, out, slope, bias):
    # Two exact forms of the stable sigmoid, e = exp(-|x|): 1 / (1 + e) for x >= 0 and
    # e / (1 + e) for x < 0. Neither exponent is ever positive, so nothing overflows and the
    # tail keeps full relative precision (no 1 - y cancellation).
    dt = x.dtype
    zero, one = _s(0.0, dt), _s(1.0, dt)
    if x.size <= _SMALL:
        # branch-free, least dispatch: exp(min(x, 0)) / (1 + exp(-|x|))
        num = np.minimum(x, zero)
        e = np.abs(x, out)  # x's last read: out may be x itself
        np.negative(e, e)
        np.exp(e, e)
        np.add(e, one, e)
        np.exp(num, num)
        np.divide(num, e, out)
        return None
    # one exp: the numerator is e for x < 0 and 1 for x >= 0, i.e. max(e, x >= 0)
    pos = np.greater_equal(x, zero)  # before writing: out may be x itself
    e = np.abs(x)
    np.negative(e, e)
    np.exp(e, e)
    np.add(e, one, out)
    np.divide(np.maximum(e, pos), out, out)
    return None


def _sigmoid_backward(y, gy, out, slope, aux):
    # ((1 - y) * y) * gy
    t = np.subtract(_s(1.0, y.dtype), y, out=None if out is None or out is gy else out)
    np.multiply(t, y, t)
    return np.multiply(t, gy, gy if out is gy else t)


# ------------------------------------------------------------------------------ ReLU
def _positive_mask(y):
    """An integer array of y's width: all ones where y > 0, else 0, without a float compare.

    With ``b`` the bits as a signed integer, ``(0 - (b >> 1)) >> (width - 1)``: the inner shift
    keeps -0.0 (the most negative integer) from overflowing the negation. It counts the
    smallest positive subnormal as 0, as the CUDA kernels do (they flush subnormals to zero).
    """
    it, shift = _INT_VIEW[y.dtype]
    m = np.right_shift(y.view(it), 1)
    np.negative(m, out=m)
    np.right_shift(m, shift, out=m)
    return m


def _relu_forward(x, out, slope, bias):
    if x.size > _RELU_INT_MAX or x.dtype not in _INT_VIEW:
        np.maximum(x, _s(0.0, x.dtype), out=out)
        return None
    it, shift = _INT_VIEW[x.dtype]
    bits = x.view(it)
    if out is not x or not x.flags.c_contiguous:
        # keep x where its sign bit is clear: mask = ~(bits >> (width - 1)); -0.0 becomes +0.0
        m = np.right_shift(bits, shift)
        np.invert(m, m)
        np.bitwise_and(bits, m, out.view(it))
        return None
    # In place (after a Linear's bias add): the exact y > 0 mask, kept for the backward (one
    # pass there instead of four).
    if bias is not None and bias.dtype == x.dtype \
            and np.minimum.reduce(bias.view(it), axis=None) != _INT_MIN[it]:
        # No -0.0 in the bias, so none in y: a sum is -0.0 only when both terms are. Then
        # (0 - bits) >> (width - 1) is exact (the negation overflows only for -0.0's bits) and
        # one pass shorter than _positive_mask. (It keeps the smallest subnormal, 1.4e-45, as
        # PyTorch's CPU ReLU does; _positive_mask flushes it.)
        mask = np.negative(bits)
        np.right_shift(mask, shift, out=mask)
    else:
        mask = _positive_mask(x)
    np.bitwise_and(bits, mask, bits)
    return mask


def _relu_backward(y, gy, out, slope, aux):
    if out is None:
        out = np.empty_like(gy)
    if aux is not None and out.flags.c_contiguous and gy.flags.c_contiguous:
        it = _INT_VIEW[gy.dtype][0]  # aux: the y > 0 mask the forward kept
        np.bitwise_and(gy.view(it), aux, out.view(it))
        return out
    if gy.dtype not in _INT_VIEW or not gy.flags.c_contiguous or not out.flags.c_contiguous:
        # strided or non-float: a masked copy, so a NaN or inf gy still gives 0 where y <= 0
        off = np.logical_not(np.greater(y, 0))
        if out is not gy:
            np.copyto(out, gy)
        np.copyto(out, 0, where=off)
        return out
    # gy where y > 0 else 0, as a bit mask (5x faster than gy * (y > 0) and, like the CUDA
    # kernel and PyTorch, 0 where y <= 0 even when gy is NaN or inf)
    it = _INT_VIEW[gy.dtype][0]
    np.bitwise_and(gy.view(it), _positive_mask(y), out=out.view(it))
    return out


# ------------------------------------------------------------------------------ leaky ReLU
def _leaky_relu_forward(x, out, slope, bias):
    if out is not x:
        np.copyto(out, x)
    np.multiply(out, _s(slope, x.dtype), out=out, where=out < 0)
    return None


def _leaky_relu_backward(x, gy, out, slope, aux):
    c = _s(slope, gy.dtype)
    if out is gy:  # in place: scale only where x <= 0
        np.multiply(gy, c, out=gy, where=np.logical_not(np.greater(x, 0)))
        return gy
    if out is None:
        out = np.empty_like(gy)
    np.multiply(gy, c, out=out)
    np.copyto(out, gy, where=x > 0)
    return out


# ------------------------------------------------------------------------------ tanh
def _tanh_forward(x, out, slope, bias):
    np.tanh(x, out=out)
    return None


def _tanh_backward(y, gy, out, slope, aux):
    d = np.multiply(y, y)
    np.subtract(_s(1.0, y.dtype), d, d)  # 1 - y^2
    return np.multiply(gy, d, out=d if out is None else out)


# ------------------------------------------------------------------------------ the table
_SIGMOID_CUDA = r"""
// Stable in both tails: e = exp(-|x|) never overflows; 1/(1+e) for x >= 0, e/(1+e) below.
// (0.5*tanh(0.5x)+0.5 returns exactly 0 at x = -20 in float32.) NaN propagates.
__device__ __forceinline__ nnx_acc nnx_sigmoid(nnx_acc x) {
    const nnx_acc e = nnx_exp(-nnx_abs(x));
    const nnx_acc r = (nnx_acc)1 / ((nnx_acc)1 + e);
    return x >= (nnx_acc)0 ? r : e * r;
}
"""

register(Activation(
    name="sigmoid", module="Sigmoid", keras="sigmoid",
    numpy_forward=_sigmoid_forward, numpy_backward=_sigmoid_backward,
    cuda_helpers=_SIGMOID_CUDA, cuda_forward="nnx_sigmoid(x)",
    # ((1 - y) * y) * gy: the NumPy twin's order (bit-identical for float32/float64)
    cuda_backward="((nnx_acc)1 - s) * s * g",
    doc="Element-wise 1 / (1 + exp(-x)), stable in both tails."))

register(Activation(
    name="relu", module="ReLU", keras="relu",
    numpy_forward=_relu_forward, numpy_backward=_relu_backward,
    # NOTE: relu(x) = x where x > 0 else 0, NaN propagating (PyTorch, and np.maximum in the twin);
    # the gradient at exactly 0 is 0.
    cuda_forward="(x <= (nnx_acc)0 ? (nnx_acc)0 : x)",
    cuda_backward="(s > (nnx_acc)0 ? g : (nnx_acc)0)",
    sign_only=True, doc="Element-wise max(x, 0); the gradient at exactly 0 is 0."))

register(Activation(
    name="leaky_relu", module="LeakyReLU", keras="leaky_relu",
    numpy_forward=_leaky_relu_forward, numpy_backward=_leaky_relu_backward,
    # NOTE: PyTorch's convention: x >= 0 keeps x; the slope applies at exactly 0 in the backward.
    cuda_forward="(x >= (nnx_acc)0 ? x : slope * x)",
    cuda_backward="(s > (nnx_acc)0 ? g : slope * g)",
    saves="input", sign_only=True, has_slope=True,
    doc="x for x >= 0, ``negative_slope * x`` otherwise."))

register(Activation(
    name="tanh", module="Tanh", keras="tanh",
    numpy_forward=_tanh_forward, numpy_backward=_tanh_backward,
    cuda_forward="nnx_tanh(x)", cuda_backward="g * ((nnx_acc)1 - s * s)",
    doc="Element-wise hyperbolic tangent."))
