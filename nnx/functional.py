"""Neural-network functions: activations, linear layers, softmax, dropout and losses.

Import as ``import nnx.functional as F``. The hot paths (sigmoid, ReLU, leaky ReLU, bias+activation
after a matmul, softmax-cross-entropy) call the backend's fused kernels; everything else is
written with the backend's array module.
"""
from __future__ import annotations

import numpy as np

from .backends import activations as _table
from .backends.base import check_reduction
from .backends.scalars import scalar as _c

from .activations import activation, float_input as _float_input, leaky_relu, relu, sigmoid, tanh
from .activations import elu, gelu, silu, softplus
from .autograd import Function
from .errors import DTypeError, GraphError, LabelError, ShapeError, ValueRangeError
from .ops import mean, norm, sum as _sum
from .shape_ops import pad
from .tensor import Tensor, _wrap, as_tensor

__all__ = ["linear", "activation", "sigmoid", "tanh", "relu", "leaky_relu", "softmax", "log_softmax", "dropout",
           "mse_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits",
           "cross_entropy", "nll_loss", "log_sigmoid", "softplus", "l1_loss", "smooth_l1_loss",
           "huber_loss", "one_hot", "normalize", "pad", "gelu", "silu", "elu"]


# ---------------------------------------------------------------------- activations
# sigmoid, relu, leaky_relu, tanh and activation(x, name) come from nnx.activations (one op over
# the entries of backends.activations).
class Softplus(Function):
    def forward(self, x):
        xp = self.xp
        self.x = x
        # log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|))
        return xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x)))

    def backward(self, gy):
        return (gy * self.backend.sigmoid_fwd(self.x),)


def log_sigmoid(x):
    """log(sigmoid(x)) = -softplus(-x), computed without log(0) (softplus without a threshold;
    ``softplus`` itself, PyTorch's, comes from nnx.activations)."""
    return -Softplus().apply(-_float_input(x, "log_sigmoid"))


# ---------------------------------------------------------------------- softmax
def _max_shifted(xp, x, axis):
    """x minus its max along ``axis`` (a max that is not finite counts as 0), the stable
    argument of softmax's exp."""
    m = x.max(axis=axis, keepdims=True)
    return x - xp.where(xp.isfinite(m), m, 0)


def softmax_array(xp, x, axis=-1):
    """exp(x) / sum(exp(x)) along ``axis`` of the backend array ``x`` (no graph): the max is
    subtracted first (a non-finite max counts as 0), so nothing overflows. Shape and dtype: x's."""
    y = xp.exp(_max_shifted(xp, x, axis))
    y /= y.sum(axis=axis, keepdims=True)
    return y


class Softmax(Function):
    def __init__(self, axis):
        self.axis = axis

    def forward(self, x):
        self.y = y = softmax_array(self.xp, x, self.axis)
        return y

    def backward(self, gy):
        y = self.y
        gx = y * gy
        gx -= y * gx.sum(axis=self.axis, keepdims=True)
        return (gx,)


class LogSoftmax(Function):
    def __init__(self, axis):
        self.axis = axis

    def forward(self, x):
        xp = self.xp
        z = _max_shifted(xp, x, self.axis)
        with np.errstate(divide="ignore"):
            z -= xp.log(xp.exp(z).sum(axis=self.axis, keepdims=True))
        self.y = z
        return z

    def backward(self, gy):
        return (gy - self.xp.exp(self.y) * gy.sum(axis=self.axis, keepdims=True),)


def _dim(axis, dim, default=-1):
    if dim is not None:
        return dim
    return default if axis is None else axis


def softmax(x, axis=-1, *, dim=None):
    """exp(x) / sum(exp(x)) along ``axis`` (``dim`` is accepted as in PyTorch)."""
    x = _float_input(x, "softmax")
    return Softmax(_dim(axis, dim) % max(x.ndim, 1)).apply(x)


def log_softmax(x, axis=-1, *, dim=None):
    """x - logsumexp(x) along ``axis``; never takes log(0) of a finite row."""
    x = _float_input(x, "log_softmax")
    return LogSoftmax(_dim(axis, dim) % max(x.ndim, 1)).apply(x)


# ---------------------------------------------------------------------- dropout
class Dropout(Function):
    def __init__(self, p):
        self.p = p

    def forward(self, x):
        self.mask = self.backend.dropout_mask(x.shape, self.p, x.dtype)
        return x * self.mask

    def backward(self, gy):
        return (gy * self.mask,)


def dropout(x, p=0.5, training=True):
    """Zero each element with probability ``p`` and scale the rest by 1/(1-p) (training only)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    return Dropout(float(p)).apply(_float_input(x, "dropout"))


# ---------------------------------------------------------------------- linear (+ activation)
def fusable(activation, negative_slope=0.01) -> bool:
    """Whether ``activation`` can run fused after a Linear's matmul (one bias+activation pass):
    ``"linear"`` or an entry of ``backends.activations``; a leaky ReLU needs a positive slope
    (its backward then reads the output's sign)."""
    if activation == _table.LINEAR:
        return True
    entry = _table.lookup(activation)
    return entry is not None and (not entry.has_slope or negative_slope > 0)


class LinearChain(Function):
    """``act_k(... act_1(x W_1^T + b_1) ...)``: one or more dense layers as one graph node.

    Inputs ``(x, W_1[, b_1], W_2[, b_2], ...)``; ``layers`` gives, per layer,
    ``chain_layer(activation, negative_slope, has_bias)`` with ``activation`` ``"linear"`` or an
    entry of ``backends.activations``. Each layer is a matmul, then one fused bias+activation pass
    (``backend.bias_act_``). ``functional.linear`` makes a one-layer chain; ``Sequential`` chains
    each stretch of Linear layers (``nnx.nn.fusion``): results are bit-identical either way,
    but a chain is one ``apply``, one output tensor and one engine visit for all its layers,
    which is most of a small network's step.

    Shapes: x (*, in_1), W_k (out_k, in_k) with in_{k+1} = out_k, b_k (out_k,); output
    (*, out_last). Saved for the backward: each layer's input and output (or, for an entry whose
    backward needs its input, a copy of the pre-activation) and the ``aux`` the backend hands
    back (the NumPy ReLU mask). The backward writes weight and bias gradients straight into the
    arrays autograd offers (``grad_destination``: the optimizer's flat gradient buffer), so a
    step copies nothing.
    """

    def __init__(self, layers):
        self.layers = layers
        self.output_activation = layers[-1][0]

    @property
    def name(self) -> str:
        return "Linear"  # what error messages call it: the layers it runs

    def forward(self, x, *params):
        lead = x.shape[:-1]
        h = x if x.ndim == 2 else x.reshape(-1, x.shape[-1])
        be = self.backend
        dot, bias_act_ = self.xp.dot, be.bias_act_
        hs, saved, auxes, i = [h], [], [], 0
        for act, slope, has_bias, keep_input in self.layers:
            w = params[i]
            b = params[i + 1] if has_bias else None
            i += 1 + has_bias
            y = dot(h, w.T)  # np.dot: half matmul's dispatch cost on small operands
            if keep_input and self.needs_input_grad is not None:
                # the backward reads the pre-activation: keep a copy of it
                bias_act_(y, b, _table.LINEAR)
                saved.append(y.copy())
                auxes.append(None)
                be.activation_forward(act, y, slope, out=y)
            else:
                auxes.append(bias_act_(y, b, act, slope))
                saved.append(y)
            hs.append(y)
            h = y
        if self.needs_input_grad is not None:
            self.hs, self.saved, self.auxes, self.params, self.lead = hs, saved, auxes, params, lead
        return h if x.ndim == 2 else h.reshape(lead + (h.shape[-1],))

    def backward_from_preactivation(self, g):
        """The input gradients when ``g`` (shaped like the output) is already the gradient
        w.r.t. the last layer's pre-activation (a sigmoid fused into the loss after it)."""
        return self.backward(g, through_last_activation=False)

    def backward(self, gy, through_last_activation=True):
        need = self.needs_input_grad
        be, xp = self.backend, self.xp
        lowest = need.index(True)  # the first input wanting a gradient: propagate down to it
        grads = [None] * len(need)
        hs, saved, auxes, params, layers = self.hs, self.saved, self.auxes, self.params, self.layers
        g = gy if gy.ndim == 2 else gy.reshape(-1, gy.shape[-1])
        own = None  # g once it is this node's own array (not the incoming gy): reused as output
        iw = len(need)
        top = len(layers) - 1
        for k in range(top, -1, -1):
            act, slope, has_bias, _ = layers[k]
            iw -= 1 + has_bias  # input index of W_k (params[iw - 1])
            if act != "linear" and (through_last_activation or k != top):
                # the gradient w.r.t. the pre-activation
                g = be.activation_backward(act, saved[k], g, slope, out=own, aux=auxes[k])
            if need[iw]:
                buf = self.grad_destination(iw)
                if buf is not None:
                    xp.dot(g.T, hs[k], out=buf)
                else:
                    grads[iw] = xp.dot(g.T, hs[k])
            if has_bias and need[iw + 1]:
                buf = self.grad_destination(iw + 1)
                if buf is not None:
                    be.sum_rows(g, out=buf)
                else:
                    grads[iw + 1] = be.sum_rows(g)
            if lowest >= iw:
                return grads
            g = own = xp.dot(g, params[iw - 1])  # gradient w.r.t. this layer's input
        grads[0] = g if len(self.lead) == 1 else g.reshape(self.lead + (g.shape[-1],))
        return grads


_LAYER_SPECS: dict = {}


def chain_layer(activation, negative_slope, has_bias):
    """One layer of a ``LinearChain``: ``(activation, negative_slope, has_bias, keep_input)``,
    ``keep_input`` true when the activation's backward needs the pre-activation itself (the
    output cannot stand for it). Cached: a forward pass asks for it per layer."""
    key = (activation, negative_slope, has_bias)
    spec = _LAYER_SPECS.get(key)
    if spec is None:
        entry = None if activation == _table.LINEAR else _table.get(activation)
        keep = entry is not None and not entry.output_stands_for_input(negative_slope)
        if len(_LAYER_SPECS) > 256:
            _LAYER_SPECS.clear()
        spec = _LAYER_SPECS[key] = key + (keep,)
    return spec


def linear(x, weight, bias=None, activation="linear", negative_slope=0.01, layer=None):
    """y = act(x @ weight.T + bias), the activation fused into the bias add.

    Args:
        activation: ``"linear"`` (none) or an entry of ``backends.activations`` (``"sigmoid"``,
            ``"relu"``, ``"leaky_relu"`` with a positive ``negative_slope``, ``"tanh"``, ...).
        layer: the layer's name for error messages (e.g. ``"Linear(784 -> 256)"``).

    Shape:
        x: (*, in_features); weight: (out_features, in_features); bias: (out_features,);
        y: (*, out_features).
    """
    if not fusable(activation, negative_slope):
        raise ValueError(f"linear: activation {activation!r} cannot be fused")
    xd = x.data if isinstance(x, Tensor) else None
    wd = weight.data
    if xd is None or xd.dtype != wd.dtype or xd.ndim == 0 or wd.ndim != 2 \
            or xd.shape[-1] != wd.shape[1]:
        x = _linear_input(x, weight, layer)
        xd = x.data
    fn = LinearChain((chain_layer(activation, negative_slope, bias is not None),))
    if xd.ndim == 1:
        return fn.apply(x.reshape(1, -1), weight, *(() if bias is None else (bias,))).reshape(-1)
    if bias is None:
        return fn.apply(x, weight)
    return fn.apply(x, weight, bias)


def _linear_input(x, weight, layer):
    """The slow path of ``linear``: convert the input, or raise a clear error."""
    name = layer or "linear"
    x = _float_input(x, name)
    if weight.ndim != 2:
        raise ShapeError(f"{name}: weight must be 2-D (out_features, in_features), got {weight.shape}")
    if x.ndim == 0 or x.shape[-1] != weight.shape[1]:
        if layer is not None:
            raise ShapeError(f"{layer} got input of shape {x.shape} (expected (*, {weight.shape[1]}))")
        raise ShapeError(f"linear: input of shape {x.shape} does not fit weight of shape "
                         f"{weight.shape} (expected last dimension {weight.shape[1]})")
    if x.dtype != weight.dtype:
        raise DTypeError(f"{name}: input dtype {x.dtype} differs from weight dtype {weight.dtype}; "
                         f"convert the input with .to(dtype=...) or the model with .float()/.double()")
    return x


# ---------------------------------------------------------------------- losses
_check_reduction = check_reduction  # ValueError naming the loss for an unknown reduction


def _check_same_shape(input, target, name):
    if input.data.shape != target.data.shape:
        raise ShapeError(f"{name}: target shape {target.shape} does not match input shape "
                         f"{input.shape} (nnx does not broadcast a loss's target; reshape it, "
                         f"e.g. y.reshape({', '.join(map(str, input.shape))}))")


def _loss_target(input, target, name):
    if not isinstance(target, Tensor):
        target = as_tensor(target, like=input)
    if target.data.dtype != input.data.dtype:
        if target.data.dtype.kind == "f" and input.data.dtype.kind == "f":
            raise DTypeError(f"{name}: target dtype {target.dtype} differs from input dtype "
                             f"{input.dtype}")
        target = target.to(dtype=input.dtype)
    if target._backend is not input._backend:
        from .errors import DeviceError

        raise DeviceError(f"{name}: input is on {input.device} but target is on {target.device}")
    _check_same_shape(input, target, name)
    if input.data.size == 0:
        # NOTE: PyTorch returns NaN for the mean of an empty batch; nnx raises, as cross_entropy
        # does: an empty batch is nearly always a slicing bug, and a NaN loss hides where it began.
        raise ShapeError(f"{name}: empty batch (input of shape {input.shape})")
    return target


def _defer_check(out, bad, make_error):
    """Raise ``make_error()`` if the device flag ``bad`` is set: now on the CPU, at the next host
    read (``.item()``, ``.numpy()``) on a GPU, so a training step never waits on the device."""
    if out._backend.name == "numpy":
        if bool(bad):
            raise make_error()
        return
    checks = out._checks or []
    checks.append((bad, make_error))
    out._checks = checks


def _reduce(loss_el, reduction):
    if reduction == "mean":
        return loss_el.mean()
    if reduction == "sum":
        return loss_el.sum()
    return loss_el


class MSELoss(Function):
    def __init__(self, reduction):
        self.reduction = reduction

    def forward(self, p, t):
        d = p - t
        self.d = d
        sq = d * d
        return _reduce(sq, self.reduction)

    def backward(self, gy):
        d = self.d
        if self.reduction == "mean":
            g = d * (2.0 / max(d.size, 1))
        else:
            g = d * 2.0
        if not self.unit_grad:
            g *= gy
        need = self.needs_input_grad
        return (g if need[0] else None, -g if need[1] else None)


def mse_loss(input, target, reduction="mean"):
    """Mean squared error: mean((input - target)^2). Shapes must match exactly."""
    _check_reduction(reduction, "mse_loss")
    input = _float_input(input, "mse_loss")
    target = _loss_target(input, target, "mse_loss")
    return MSELoss(reduction).apply(input, target)


_BCE_CONSTS = {}


def _bce_consts(dt):
    """``(1, tiny, -100, 1e-12)`` as scalars of ``dt``. tiny is the smallest subnormal where its
    log is below -100 (float32, float64: clamping at it before the log changes nothing), else
    None (float16, whose log(tiny) is -16.6: there log(0) = -inf is computed and clamped)."""
    k = _BCE_CONSTS.get(dt)
    if k is None:
        t = np.dtype(dt).type
        tiny = np.finfo(dt).smallest_subnormal
        tiny = t(tiny) if np.log(np.float64(tiny)) < -100 else None
        k = _BCE_CONSTS[dt] = (t(1.0), tiny, t(-100.0), t(1e-12))
    return k


def _clamped_log(xp, a, tiny, m100):
    """max(log(a), -100), PyTorch's BCE clamp, without a log(0) warning."""
    if tiny is None:
        with np.errstate(divide="ignore"):
            out = xp.log(a)
    else:
        out = xp.maximum(a, tiny)
        xp.log(out, out=out)
    return xp.maximum(out, m100, out=out)


class BCELoss(Function):
    """Binary cross-entropy on probabilities, with PyTorch's numerics: each log is clamped at
    -100 and the gradient's denominator at 1e-12, so p = 0 or 1 never gives inf or NaN.

    Inputs ``(p, t)``: probabilities and targets of one shape and floating dtype.
    """

    def __init__(self, reduction):
        self.reduction = reduction

    def forward(self, p, t):
        return self._loss(p, t)

    def _loss(self, p, t):
        xp = self.xp
        one, tiny, m100, _ = _bce_consts(p.dtype)
        onem = xp.subtract(one, p)
        logp = _clamped_log(xp, p, tiny, m100)
        log1mp = _clamped_log(xp, onem, tiny, m100)
        # -(t log p + (1 - t) log(1 - p)) = -(t (log p - log(1 - p)) + log(1 - p))
        logp -= log1mp
        logp *= t
        logp += log1mp
        self.p, self.t, self.onem = p, t, onem
        if self.reduction == "none":
            return xp.negative(logp, out=logp)
        s = logp.sum()
        return s * _c(-1.0 / p.size, p.dtype) if self.reduction == "mean" else -s

    def backward(self, gy):
        need = self.needs_input_grad
        return (self._grad_p(gy)[0] if need[0] else None,
                self._grad_t(gy) if need[1] else None)

    def _grad_p(self, gy):
        """``(dL/dp, p (1 - p))``."""
        p, t, xp = self.p, self.t, self.xp
        dt = p.dtype
        pq = xp.multiply(self.onem, p)  # p (1 - p)
        den = xp.maximum(pq, _bce_consts(dt)[3])
        if self.reduction == "mean":
            den *= _c(p.size, dt)  # (p - t) / (den * n)
        g = xp.subtract(p, t)
        g /= den
        if not self.unit_grad:
            g *= gy
        return g, pq

    def _grad_t(self, gy):
        p, xp = self.p, self.xp
        dt = p.dtype
        _, tiny, m100, _ = _bce_consts(dt)
        gt = _clamped_log(xp, self.onem, tiny, m100) - _clamped_log(xp, p, tiny, m100)
        if self.reduction == "mean":
            gt *= _c(1.0 / p.size, dt)
        gt *= gy
        return gt


class SigmoidBCELoss(BCELoss):
    """``BCELoss(sigmoid(z), t)`` as one node, built when the loss meets a sigmoid's output.

    ``producer`` is the node that made the probabilities ``p`` and ends in a sigmoid (an
    ``Activation`` or a ``LinearChain``); this node's inputs are the producer's inputs followed
    by ``t``, so the backward goes from the loss straight to the sigmoid's pre-activation,
    ``dL/dz = dL/dp * p (1 - p)`` (bit-identical to running the sigmoid's backward after
    BCE's), and skips the sigmoid pass. The loss is computed from ``p`` with BCE's numerics. If
    ``p`` has other consumers, their gradients still reach the producer's own node.
    """

    def __init__(self, producer, p, reduction):
        super().__init__(reduction)
        self.producer, self.probs = producer, p
        self.absorbed = (producer,)

    @property
    def name(self) -> str:
        return "BCELoss"

    def forward(self, *inputs):
        return self._loss(self.probs, inputs[-1])

    def backward(self, gy):
        need = self.needs_input_grad
        gt = self._grad_t(gy) if need[-1] else None
        if True not in need[:-1]:
            return (None,) * (len(need) - 1) + (gt,)
        producer = self.producer
        if producer.released:
            raise GraphError(f"backward(): trying to backward through the graph a second time "
                             f"({producer.name}'s saved values were freed by an earlier "
                             f"backward); use backward(retain_graph=True) the first time")
        g, pq = self._grad_p(gy)
        pq *= g  # dL/dz
        return (*producer.backward_from_preactivation(pq), gt)


def binary_cross_entropy(input, target, reduction="mean"):
    """-(t log p + (1 - t) log(1 - p)) on probabilities ``input`` in [0, 1].

    Each log is clamped at -100 as in PyTorch. An input outside [0, 1] raises ValueRangeError, a
    ValueError (on a GPU at the next host read of the loss, so the step itself never waits).
    When ``input`` is a sigmoid's output recorded in the graph, the loss and the sigmoid become
    one node (:class:`SigmoidBCELoss`): the same values, one elementwise pass less.

    Shape: input and target of one shape (any); the output is 0-d, or that shape for "none".
    """
    _check_reduction(reduction, "binary_cross_entropy")
    input = _float_input(input, "binary_cross_entropy")
    target = _loss_target(input, target, "binary_cross_entropy")
    c = input.creator
    if c is not None and c.output_activation == "sigmoid":  # in [0, 1] by construction
        return SigmoidBCELoss(c, input.data, reduction).apply(*c.inputs, target)
    p = input.data
    lo, hi = p.min(), p.max()

    def err():
        return ValueRangeError(f"binary_cross_entropy: input must hold probabilities in [0, 1], "
                               f"got values in [{float(lo):.4g}, {float(hi):.4g}]; for raw scores "
                               f"use binary_cross_entropy_with_logits (BCEWithLogitsLoss)")

    if input._backend.name == "numpy":
        if lo < 0 or hi > 1:
            raise err()
        return BCELoss(reduction).apply(input, target)
    out = BCELoss(reduction).apply(input, target)
    _defer_check(out, (lo < 0) | (hi > 1), err)
    return out


class BCEWithLogits(Function):
    """BCE on logits: max(x, 0) - x t + log(1 + exp(-|x|)); gradient sigmoid(x) - t."""

    def __init__(self, reduction, pos_weight=None):
        self.reduction = reduction

    def forward(self, x, t):
        xp = self.xp
        el = xp.maximum(x, 0) - x * t + xp.log1p(xp.exp(-xp.abs(x)))
        self.x, self.t = x, t
        return _reduce(el, self.reduction)

    def backward(self, gy):
        x, t = self.x, self.t
        s = self.backend.sigmoid_fwd(x)
        g = s - t
        if self.reduction == "mean":
            g *= 1.0 / max(x.size, 1)
        if not self.unit_grad:
            g *= gy
        gt = None
        if self.needs_input_grad[1]:
            gt = -x * (1.0 / max(x.size, 1) if self.reduction == "mean" else 1.0) * gy
        return (g if self.needs_input_grad[0] else None, gt)


def binary_cross_entropy_with_logits(input, target, reduction="mean"):
    """Binary cross-entropy on logits (stable for any logit: no overflow at +-1e4)."""
    _check_reduction(reduction, "binary_cross_entropy_with_logits")
    input = _float_input(input, "binary_cross_entropy_with_logits")
    target = _loss_target(input, target, "binary_cross_entropy_with_logits")
    return BCEWithLogits(reduction).apply(input, target)


class SoftmaxCrossEntropy(Function):
    """Fused softmax + NLL: the backend computes the loss and its gradient in one pass."""

    def __init__(self, ignore_index, reduction):
        self.ignore_index, self.reduction = ignore_index, reduction

    def forward(self, logits, labels):
        need = self.needs_input_grad is not None and self.needs_input_grad[0]
        try:
            loss, grad, bad = self.backend.softmax_cross_entropy(
                logits, labels, self.ignore_index, self.reduction, need_grad=need)
        except IndexError as e:
            raise LabelError(str(e)) from None
        self.grad, self.bad = grad, bad
        return loss

    def backward(self, gy):
        g = self.grad
        if self.unit_grad:
            return g, None
        if self.reduction == "none":
            return g * gy[:, None], None
        return g * gy, None


def _label_error(n_classes, ignore_index):
    def make():
        return LabelError(f"cross_entropy: a label lies outside [0, {n_classes}) (and is not "
                          f"ignore_index={ignore_index})")
    return make


def cross_entropy(input, target, reduction="mean", ignore_index=-100, *, axis=None, weight=None,
                  label_smoothing=0.0):
    """Softmax cross-entropy of logits ``input`` (N, C) against ``target``.

    ``target`` is either (N,) integer class labels in [0, C) (``ignore_index`` rows are skipped
    and leave the mean's count; an all-ignored batch gives 0) or (N, C) class probabilities
    (e.g. one-hot). Uses the fused, stable softmax-cross-entropy kernel for labels.

    ``weight`` (C,) rescales each class (the mean then divides by the summed weights of the
    non-ignored labels) and ``label_smoothing`` in [0, 1] mixes the target with the uniform
    distribution, both as in PyTorch (computed from ``log_softmax`` rather than fused).
    """
    _check_reduction(reduction, "cross_entropy")
    input = _float_input(input, "cross_entropy")
    if not isinstance(target, Tensor):  # labels (or probabilities) go to the logits' device
        target = as_tensor(target, like=input)
    if target._backend is not input._backend:
        from .errors import DeviceError

        raise DeviceError(f"cross_entropy: logits are on {input.device} but target is on {target.device}")
    if input.ndim == 1:
        input = input.reshape(1, -1)
        target = target.reshape(1, *target.shape[1:]) if target.ndim == 1 and target.data.dtype.kind == "f" \
            else target.reshape(1)
    if input.ndim != 2:
        raise ShapeError(f"cross_entropy: expected logits of shape (N, C), got {input.shape}")
    n, c = input.shape
    if n == 0:
        raise ShapeError("cross_entropy: empty batch (N = 0)")
    kind = target.data.dtype.kind
    if kind == "f" and target.shape == input.shape:
        if target.dtype != input.dtype:
            raise DTypeError(f"cross_entropy: probability target dtype {target.dtype} differs from "
                             f"logits dtype {input.dtype}")
        if label_smoothing:
            target = target * (1.0 - label_smoothing) + label_smoothing / c
        logp = log_softmax(input, axis=1)
        if weight is not None:
            logp = logp * _class_weight(weight, input)
        el = -_sum(logp * target, axis=1)
        if reduction == "mean":
            return mean(el)
        return _sum(el) if reduction == "sum" else el
    if kind not in "iu":
        raise LabelError(f"cross_entropy: class labels must be an integer tensor of shape ({n},), "
                         f"got dtype {target.dtype} and shape {target.shape} (for one-hot or "
                         f"probability targets pass a float tensor of shape {input.shape})")
    if target.shape != (n,):
        raise ShapeError(f"cross_entropy: labels of shape {target.shape} do not match logits of "
                         f"shape {input.shape} (expected ({n},))")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    if weight is not None or label_smoothing:
        return _weighted_nll(log_softmax(input, axis=1), target, weight, ignore_index, reduction,
                             label_smoothing, "cross_entropy")
    fn = SoftmaxCrossEntropy(int(ignore_index), reduction)
    out = fn.apply(input, target)
    if fn.bad is not None:
        _defer_check(out, fn.bad, _label_error(c, ignore_index))
    return out


def nll_loss(input, target, reduction="mean", ignore_index=-100, weight=None):
    """Negative log-likelihood of log-probabilities ``input`` (N, C) at integer ``target``;
    ``weight`` (C,) rescales classes as in PyTorch (the mean divides by the summed weights)."""
    _check_reduction(reduction, "nll_loss")
    if not isinstance(target, Tensor):
        target = as_tensor(target, like=input)
    if input.ndim != 2:
        raise ShapeError(f"nll_loss: expected log-probabilities of shape (N, C), got {input.shape}")
    n, c = input.shape
    if target.data.dtype.kind not in "iu":
        raise LabelError(f"nll_loss: class labels must be an integer tensor of shape ({n},), got "
                         f"dtype {target.dtype}")
    if target.shape != (n,):
        raise ShapeError(f"nll_loss: labels of shape {target.shape} do not match input of shape "
                         f"{input.shape} (expected ({n},))")
    return _weighted_nll(input, target, weight, ignore_index, reduction, 0.0, "nll_loss")


def _class_weight(weight, input):
    w = weight if isinstance(weight, Tensor) else as_tensor(weight, like=input)
    if w.shape != (input.shape[1],):
        raise ShapeError(f"weight of shape {w.shape} does not match {input.shape[1]} classes")
    return w.detach().to(dtype=input.dtype)


def _weighted_nll(logp, target, weight, ignore_index, reduction, smoothing, name):
    """PyTorch's (weighted, label-smoothed) NLL of log-probabilities ``logp`` (N, C) at the
    labels ``target`` (N,): rows labelled ``ignore_index`` count nothing; the mean divides by
    the summed weights of the other rows (0 when there are none)."""
    n, c = logp.shape
    t = target.data
    xp = logp._backend.xp
    valid = t != ignore_index
    bad = xp.any(valid & ((t < 0) | (t >= c)))
    safe = xp.where(valid & ~((t < 0) | (t >= c)), t, 0)  # never index out of bounds
    mask = valid.astype(logp.dtype)
    w = None if weight is None else _class_weight(weight, logp)
    wy = mask if w is None else w.data[safe] * mask
    el = -(logp[xp.arange(n), safe] * _wrap(wy, logp._backend))
    if smoothing:
        weighted = logp if w is None else logp * w
        smooth = -_sum(weighted, axis=1) * _wrap(mask, logp._backend)
        el = el * (1.0 - smoothing) + smooth * (smoothing / c)
    if reduction == "none":
        out = el
    elif reduction == "sum":
        out = _sum(el)
    else:
        total = wy.sum()
        out = _sum(el) / _wrap(xp.where(total == 0, 1, total).astype(logp.dtype), logp._backend)
    _defer_check(out, bad, lambda: LabelError(f"{name}: a label lies outside [0, {c}) (and is "
                                              f"not ignore_index={ignore_index})"))
    return out


# ---------------------------------------------------------------------- L1, smooth L1, Huber
class Huber(Function):
    """The elementwise Huber loss of a difference d: 0.5 d^2 where |d| < delta, else
    delta (|d| - 0.5 delta); the gradient is d clipped to [-delta, delta]."""

    def __init__(self, delta):
        self.delta = delta

    def forward(self, d):
        self.d = d
        a = self.xp.abs(d)
        return self.xp.where(a < self.delta, 0.5 * d * d, self.delta * (a - 0.5 * self.delta))

    def backward(self, gy):
        return (gy * self.xp.clip(self.d, -self.delta, self.delta),)


def _difference(input, target, reduction, name):
    _check_reduction(reduction, name)
    input = _float_input(input, name)
    return input - _loss_target(input, target, name)


def l1_loss(input, target, reduction="mean"):
    """Mean absolute error: mean(|input - target|). Shapes must match exactly."""
    return _reduce(_difference(input, target, reduction, "l1_loss").abs(), reduction)


def huber_loss(input, target, reduction="mean", delta=1.0):
    """The Huber loss (quadratic below ``delta``, linear above), as ``torch.nn.HuberLoss``."""
    d = _difference(input, target, reduction, "huber_loss")
    return _reduce(Huber(float(delta)).apply(d), reduction)


def smooth_l1_loss(input, target, reduction="mean", beta=1.0):
    """The smooth L1 loss: Huber with delta = ``beta``, divided by ``beta`` (L1 at beta = 0)."""
    if beta == 0:
        return l1_loss(input, target, reduction)
    d = _difference(input, target, reduction, "smooth_l1_loss")
    return _reduce(Huber(float(beta)).apply(d), reduction) * (1.0 / beta)


# ---------------------------------------------------------------------- one_hot, normalize
def one_hot(labels, num_classes=-1):
    """Integer ``labels`` of any shape as int64 one-hot vectors (shape ``(*labels.shape, C)``),
    C = ``num_classes`` or max(labels) + 1; LabelError for a label outside [0, C)."""
    if not isinstance(labels, Tensor):
        labels = as_tensor(labels)
    t = labels.data
    if t.dtype.kind not in "iu":
        raise LabelError(f"one_hot: labels must be an integer tensor, got dtype {labels.dtype}")
    xp = labels._backend.xp
    lo, hi = (int(v) for v in labels._backend.to_host(xp.stack([t.min(), t.max()]))) \
        if t.size else (0, -1)  # one host read for both
    c = hi + 1 if num_classes == -1 else int(num_classes)
    if t.size and (lo < 0 or hi >= c):
        raise LabelError(f"one_hot: labels must lie in [0, {c}), got values in [{lo}, {hi}]")
    return _wrap((t[..., None] == xp.arange(c)).astype(np.int64), labels._backend)


def normalize(input, p=2.0, dim=1, eps=1e-12):
    """``input / max(||input||_p, eps)`` along ``dim``, as ``torch.nn.functional.normalize``."""
    return input / norm(input, p, dim, keepdim=True).clip(min=eps)


from .pooling import (adaptive_avg_pool1d, adaptive_avg_pool2d, avg_pool1d, avg_pool2d,  # noqa: E402
                      max_pool1d, max_pool2d)

__all__ += ["max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d", "adaptive_avg_pool1d",
            "adaptive_avg_pool2d"]

from .conv import conv1d, conv2d  # noqa: E402

__all__ += ["conv1d", "conv2d"]

from .normalization import batch_norm, layer_norm  # noqa: E402
from .embedding import embedding  # noqa: E402

__all__ += ["batch_norm", "layer_norm", "embedding"]
