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
  pre-activation;
* ``has_slope``: the entry takes one scalar parameter, ``param`` (its name in ``nnx.nn`` and
  ``nnx.functional``: ``"negative_slope"`` of leaky ReLU, ``"alpha"`` of ELU; default
  ``param_default``). It reaches the NumPy twin as ``slope`` and the CUDA expressions as the
  kernel argument ``slope``; the layers fuse such an entry only for a positive value. An
  activation with more parameters (Softplus's beta and threshold) registers its default form and
  computes the others unfused (``nnx.activations``).

Adding a fused activation is one :func:`register` call (plus its tests): the backends, the
layers, ``Dense``, the configs, the CUDA templates and the strict backend all read this table.

Arrays are float16/float32/float64 NumPy arrays; results keep the input's dtype. ``slope`` is a
Python float (the entry's parameter: leaky ReLU's negative slope, ELU's alpha; ignored by the
others).
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
    param: str = "negative_slope"
    param_default: float = 0.01

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
    mask = np.empty(x.shape, dtype=it)
    relu_masked_(x, mask, bias_without_negative_zero(bias, x.dtype))
    return mask


def bias_without_negative_zero(bias, dtype) -> bool:
    """Whether ``bias`` (of ``dtype``, or None) holds no -0.0: then ``z + bias`` holds none
    either (a sum is -0.0 only when both terms are), and :func:`relu_masked_` may take its
    shorter exact form."""
    if bias is None or bias.dtype != dtype or dtype not in _INT_VIEW:
        return False
    it = _INT_VIEW[dtype][0]
    return bool(np.minimum.reduce(bias.view(it), axis=None) != _INT_MIN[it])


def relu_masked_(x, mask, no_negative_zero: bool = False) -> None:
    """In place ReLU of C-contiguous float ``x``; ``mask`` (the signed integer of x's width,
    x's shape, C-contiguous) receives all ones where x > 0, else 0: what ``relu`` backward
    takes as ``aux`` (one AND instead of four passes).

    With ``no_negative_zero`` (the caller knows x holds no -0.0: see
    :func:`bias_without_negative_zero`), ``(0 - bits) >> (width - 1)`` is exact (the negation
    overflows only for -0.0's bits) and one pass shorter than :func:`_positive_mask`. (It keeps
    the smallest subnormal, 1.4e-45, as PyTorch's CPU ReLU does; the other form flushes it.)
    """
    it, shift = _INT_VIEW[x.dtype]
    bits = x.view(it)
    if no_negative_zero:
        np.negative(bits, out=mask)
    else:
        np.right_shift(bits, 1, out=mask)
        np.negative(mask, out=mask)
    np.right_shift(mask, shift, out=mask)
    np.bitwise_and(bits, mask, bits)


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


# ------------------------------------------------------------------------------ erfc (NumPy)
# NumPy has no erf. erfc(a) = exp(-a^2) erfcx(a) for a >= 0, with (1 + 2a) erfcx(a) a Chebyshev
# series in t = (a - 3) / (a + 3), which maps [0, inf) onto [-1, 1) (the Shepherd-Laframboise
# form; coefficients fitted for nnx against mpmath). 23 terms: 7e-16 relative error on [0, inf);
# the first 12: 5e-9, for float32.
_ERFCX_CHEB = (
    1.17756257419656, 0.005353904539615743, -0.09377550342284206, 0.0543665255574433,
    -0.01897659670784522, 0.004453426061462732, -0.0006335531710553321, 1.7661719523230577e-05,
    1.2841532864017108e-05, -2.0072285658499508e-06, -1.8075227903578832e-07,
    7.549828346647153e-08, 1.8856685549347868e-09, -2.6995190339772223e-09,
    -1.460076918223387e-11, 1.0361611509426734e-10, 1.4757158252710795e-12,
    -4.277305196731016e-12, -2.078991239289251e-13, 1.8137408734603154e-13,
    1.9709084882431998e-14, -7.309133472216309e-15, -1.4947339995134379e-15)
# The series in the power basis of t (its coefficients stay below 1.3: Horner loses nothing),
# per dtype: [float32 (12 terms), float64 (all)].
_ERFCX_POLY = [np.polynomial.chebyshev.cheb2poly(_ERFCX_CHEB[:n]).tolist() for n in (12, 23)]
_SQRT1_2 = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327
_GELU_K = 0.7978845608028654  # sqrt(2 / pi)
_GELU_KAPPA = 0.044715


def _wide(x):
    """x in the dtype the twins compute in: float16 goes to float32, as in the CUDA kernels."""
    return x.astype(np.float32) if x.dtype == np.float16 else x


def erfc(z):
    """The complementary error function of a float32/float64 array, elementwise (a new array).

    Accurate to a few ulp in both tails (no 1 - erf cancellation); erfc(-inf) = 2, erfc(inf) = 0,
    NaN stays NaN; no overflow for any finite input.
    """
    coef = _ERFCX_POLY[1] if z.dtype == np.float64 else _ERFCX_POLY[0]
    a = np.abs(z)
    np.minimum(a, 30.0, out=a)  # erfc(30) underflows in every dtype: keeps a^2 finite
    t = np.add(a, 3.0)
    np.divide(np.subtract(a, 3.0), t, out=t)
    p = np.full_like(a, coef[-1])
    for ck in coef[-2::-1]:  # Horner: (1 + 2a) erfcx(a)
        np.multiply(p, t, out=p)
        np.add(p, ck, out=p)
    np.multiply(a, 2.0, out=t)
    np.add(t, 1.0, out=t)
    np.divide(p, t, out=p)
    np.multiply(a, a, out=a)
    np.negative(a, out=a)
    np.exp(a, out=a)
    np.multiply(a, p, out=a)  # erfc(|z|)
    # 2 - erfc(|z|) where z < 0, branch-free (a masked write costs 20x more on random signs):
    # -erfc(|z|) + 2; z + 0 turns -0.0 into +0.0 first
    np.add(z, 0.0, out=t)
    np.copysign(a, t, out=a)
    np.add(a, np.multiply(np.less(t, 0.0), 2.0, dtype=a.dtype), out=a)
    return a


def _cast_mul(gy, d, out):
    """gy * d in gy's dtype (d may be wider), into ``out`` when given (``out`` may be gy)."""
    if d.dtype != gy.dtype:
        d = d.astype(gy.dtype)
    return np.multiply(gy, d, out=d if out is None else out)


# ------------------------------------------------------------------------------ GELU
def _normal_cdf(w):
    p = erfc(np.multiply(w, -_SQRT1_2))
    np.multiply(p, 0.5, out=p)
    return p


def _gelu_forward(x, out, slope, bias):
    w = _wide(x)
    p = _normal_cdf(w)
    np.multiply(w, p, out=out)  # x Phi(x); out may be x (float16: rounded once, at the store)
    return None


def _gelu_backward(x, gy, out, slope, aux):
    # Phi(x) + x phi(x); |x| clipped at 40 inside phi, where it is 0 in every dtype anyway
    w = _wide(x)
    d = _normal_cdf(w)
    pdf = np.clip(w, -40.0, 40.0)
    np.multiply(pdf, pdf, out=pdf)
    np.multiply(pdf, -0.5, out=pdf)
    np.exp(pdf, out=pdf)
    np.multiply(pdf, _INV_SQRT_2PI, out=pdf)
    np.multiply(pdf, w, out=pdf)
    np.add(d, pdf, out=d)
    return _cast_mul(gy, d, out)


def _gelu_tanh_t(w):
    """tanh(sqrt(2/pi) (x + 0.044715 x^3)) with x clipped to +-20, where the tanh is already
    exactly +-1: the cube cannot overflow. Returns (t, the clipped x)."""
    c = np.clip(w, -20.0, 20.0)
    t = np.multiply(c, c)
    np.multiply(t, c, out=t)
    np.multiply(t, _GELU_KAPPA, out=t)
    np.add(t, c, out=t)
    np.multiply(t, _GELU_K, out=t)
    np.tanh(t, out=t)
    return t, c


def _gelu_tanh_forward(x, out, slope, bias):
    w = _wide(x)
    t, _ = _gelu_tanh_t(w)
    np.add(t, 1.0, out=t)
    h = np.multiply(w, 0.5)
    np.multiply(h, t, out=out)  # 0.5 x (1 + t), PyTorch's order
    return None


def _gelu_tanh_backward(x, gy, out, slope, aux):
    # PyTorch's formula: 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 kappa x^2)
    w = _wide(x)
    t, c = _gelu_tanh_t(w)
    r = np.multiply(c, c)
    np.multiply(r, 3.0 * _GELU_KAPPA, out=r)
    np.add(r, 1.0, out=r)
    np.multiply(r, _GELU_K, out=r)
    s = np.multiply(t, t)
    np.subtract(1.0, s, out=s)
    np.multiply(s, r, out=r)
    np.multiply(w, 0.5, out=s)
    np.multiply(s, r, out=r)  # the right derivative
    np.add(t, 1.0, out=t)
    np.multiply(t, 0.5, out=t)
    np.add(t, r, out=t)
    return _cast_mul(gy, t, out)


_GELU_CUDA = r"""
// GELU: x Phi(x) with Phi(x) = erfc(-x / sqrt 2) / 2, accurate in both tails.
__device__ __forceinline__ nnx_acc nnx_normal_cdf(nnx_acc x) {
    return (nnx_acc)0.5 * nnx_erfc(x * (nnx_acc)-0.70710678118654752);
}
__device__ __forceinline__ nnx_acc nnx_gelu_bwd(nnx_acc x, nnx_acc g) {
    const nnx_acc cdf = nnx_normal_cdf(x);
    const nnx_acc pdf = nnx_exp((nnx_acc)-0.5 * (x * x)) * (nnx_acc)0.3989422804014327;
    return g * (cdf + pdf * x);
}
"""

register(Activation("gelu", "GELU", "gelu", _gelu_forward, _gelu_backward,
                    "x * nnx_normal_cdf(x)", "nnx_gelu_bwd(s, g)", _GELU_CUDA, saves="input",
                    doc="GELU, exact: ``x * Phi(x)``, Phi the standard normal CDF."))


_GELU_TANH_CUDA = r"""
// tanh(sqrt(2/pi) (x + 0.044715 x^3)), x clamped to +-20 (the tanh is +-1 there): no overflow.
__device__ __forceinline__ nnx_acc nnx_clamp20(nnx_acc x) {
    return x > (nnx_acc)20 ? (nnx_acc)20 : (x < (nnx_acc)-20 ? (nnx_acc)-20 : x);
}
__device__ __forceinline__ nnx_acc nnx_gelu_tanh_t(nnx_acc x) {
    const nnx_acc c = nnx_clamp20(x);
    return nnx_tanh((nnx_acc)0.7978845608028654 * (c + (nnx_acc)0.044715 * (c * c * c)));
}
__device__ __forceinline__ nnx_acc nnx_gelu_tanh_bwd(nnx_acc x, nnx_acc g) {
    const nnx_acc t = nnx_gelu_tanh_t(x), c = nnx_clamp20(x);
    const nnx_acc r = (nnx_acc)0.5 * x * (((nnx_acc)1 - t * t) *
                      ((nnx_acc)0.7978845608028654 * ((nnx_acc)1 + (nnx_acc)0.134145 * (c * c))));
    return g * ((nnx_acc)0.5 * ((nnx_acc)1 + t) + r);
}
"""

register(Activation(
    "gelu_tanh", "GELU", None, _gelu_tanh_forward, _gelu_tanh_backward,
    "(nnx_acc)0.5 * x * ((nnx_acc)1 + nnx_gelu_tanh_t(x))", "nnx_gelu_tanh_bwd(s, g)",
    _GELU_TANH_CUDA, saves="input", doc="GELU, tanh approximation: ``0.5 x (1 + "
    "tanh(sqrt(2/pi) (x + 0.044715 x^3)))``."))


# ------------------------------------------------------------------------------ SiLU
def _silu_forward(x, out, slope, bias):
    s = np.empty_like(x)
    _sigmoid_forward(x, s, slope, None)
    np.multiply(x, s, out=out)
    return None


def _silu_backward(x, gy, out, slope, aux):
    # sigmoid(x) (1 + x (1 - sigmoid(x))), PyTorch's form
    s = np.empty_like(x)
    _sigmoid_forward(x, s, slope, None)
    d = np.subtract(_s(1.0, x.dtype), s)
    np.multiply(d, x, out=d)
    np.add(d, _s(1.0, x.dtype), out=d)
    np.multiply(d, s, out=d)
    return np.multiply(gy, d, out=d if out is None else out)


_SILU_CUDA = r"""
__device__ __forceinline__ nnx_acc nnx_silu_bwd(nnx_acc x, nnx_acc g) {
    const nnx_acc s = nnx_sigmoid(x);
    return g * (((nnx_acc)1 + x * ((nnx_acc)1 - s)) * s);
}
"""

register(Activation("silu", "SiLU", "swish", _silu_forward, _silu_backward,
                    "x * nnx_sigmoid(x)", "nnx_silu_bwd(s, g)", _SILU_CUDA, "input",
                    doc="SiLU (swish): ``x * sigmoid(x)``, elementwise."))


# ------------------------------------------------------------------------------ ELU
# Branch-free (masked writes cost 20x more than arithmetic on random signs): each result is
# the sum of its two branches, one of them exactly 0.
def _elu_forward(x, out, slope, bias):
    # max(x, 0) + alpha expm1(min(x, 0)): x for x > 0, alpha (exp(x) - 1) otherwise; expm1
    # never sees a positive x, so nothing overflows
    neg = np.minimum(x, _s(0.0, x.dtype))
    np.expm1(neg, out=neg)
    np.multiply(neg, _s(slope, x.dtype), out=neg)
    np.add(np.maximum(x, _s(0.0, x.dtype)), neg, out=out)
    return None


def _elu_backward(x, gy, out, slope, aux):
    # gy for x > 0, gy alpha exp(x) otherwise (PyTorch: the exp branch at exactly 0):
    # gy (pos + (1 - pos) alpha exp(min(x, 0))) with pos = (x > 0) as 0/1
    pos = np.greater(x, 0)
    d = np.minimum(x, _s(0.0, x.dtype))
    np.exp(d, out=d)
    np.multiply(d, np.multiply(np.logical_not(pos), _s(slope, x.dtype), dtype=x.dtype), out=d)
    np.add(d, pos, out=d)
    return np.multiply(gy, d, out=d if out is None else out)


# NOTE: PyTorch's convention: the exp branch at exactly 0 (gradient alpha there).
register(Activation("elu", "ELU", "elu", _elu_forward, _elu_backward,
                    cuda_forward="(x > (nnx_acc)0 ? x : slope * nnx_expm1(x))",
                    cuda_backward="(s > (nnx_acc)0 ? g : g * slope * nnx_exp(s))",
                    saves="input", has_slope=True, param="alpha", param_default=1.0,
                    doc="ELU: x for x > 0, ``alpha * (exp(x) - 1)`` otherwise."))


# ------------------------------------------------------------------------------ Softplus
# PyTorch's default Softplus (beta 1, threshold 20): x above the threshold, log1p(exp(x)) below.
_SOFTPLUS_THRESHOLD = 20.0


def _softplus_forward(x, out, slope, bias):
    w = _wide(x)  # float16: exp(20) is beyond its range
    e = np.minimum(w, _SOFTPLUS_THRESHOLD)  # exp never overflows
    np.exp(e, out=e)
    np.log1p(e, out=e)
    np.copyto(e, w, where=np.greater(w, _SOFTPLUS_THRESHOLD))
    np.copyto(out, e, casting="same_kind")
    return None


def _softplus_backward(x, gy, out, slope, aux):
    # gy z / (z + 1) with z = exp(x) (PyTorch's form); gy above the threshold
    w = _wide(x)
    z = np.minimum(w, _SOFTPLUS_THRESHOLD)
    np.exp(z, out=z)
    d = np.multiply(_wide(gy), z)
    np.add(z, 1.0, out=z)
    np.divide(d, z, out=d)
    d = d.astype(gy.dtype, copy=False)
    np.copyto(d, gy, where=np.greater(x, _SOFTPLUS_THRESHOLD))
    if out is None:
        return d
    np.copyto(out, d)
    return out


_SOFTPLUS_CUDA = r"""
__device__ __forceinline__ nnx_acc nnx_softplus_bwd(nnx_acc x, nnx_acc g) {
    const nnx_acc z = nnx_exp(x);  // inf above ~88 (float): that branch is not taken then
    return x > (nnx_acc)20 ? g : g * z / (z + (nnx_acc)1);
}
"""

register(Activation(
    "softplus", "Softplus", "softplus", _softplus_forward, _softplus_backward,
    "(x > (nnx_acc)20 ? x : nnx_log1p(nnx_exp(x)))", "nnx_softplus_bwd(s, g)",
    _SOFTPLUS_CUDA, "input",
    doc="Softplus with beta 1 and threshold 20: ``log(1 + exp(x))``, x itself above 20."))
