"""``nnx.onnx.export``: a model as an ONNX file, by tracing one forward pass.

The model runs once in evaluation mode (Dropout is the identity, BatchNorm uses its running
statistics) while ``nnx.autograd`` reports every op (``Function``) it applies, with its input
and output tensors. Each op becomes ONNX nodes through the converter registered for its
``Function`` class (:data:`CONVERTERS`); parameters and buffers become initializers named by
their ``state_dict`` keys, in the model's dtype.

The model is traced a second time on the example's rows reversed, with one more row under
``dynamic_batch``. The two traces must run the same ops; an attribute or a constant that differs
between them follows the input (a tensor made through ``.numpy()``, say), which one graph cannot
express, and is refused. The axes whose size changes follow the batch: a ``Reshape`` keeps a -1
there, and the graph's input and output call them ``"batch"``.

An op without a converter raises :class:`nnx.errors.ExportError` naming the op and the module it
ran in; the file is written to a temporary beside ``path`` and renamed, so a failed export
leaves nothing behind. Needs the ``onnx`` package (``pip install nnx[onnx]``); ``onnxruntime``
runs the result.
"""
from __future__ import annotations

import math
import sys
import threading

import numpy as np

from .backends import activations as _table

from . import _config, autograd
from . import activations as A
from . import functional as F
from . import conv as C
from . import embedding as E
from . import normalization as N
from . import ops as O
from . import pooling as P
from . import shape_ops as S
from .errors import ExportError
from .nn.module import Module
from .serialization import atomic_write
from .tensor import Tensor, as_tensor

__all__ = ["export", "input_shape_of", "with_standardization", "CONVERTERS", "converts",
           "DEFAULT_OPSET"]

DEFAULT_OPSET = 17
MIN_OPSET = 13  # Softmax over one axis, ReduceSum/Squeeze/Unsqueeze axes as inputs
_INT64_MAX = np.iinfo(np.int64).max
_INTERNAL = "nnx::"  # the prefix of the value names the exporter makes up

#: ``Function`` class -> ``converter(graph, record) -> output name`` (see :func:`converts`).
CONVERTERS: dict = {}

_lock = threading.Lock()  # one trace at a time (the tracer is a global of nnx.autograd)


def converts(*classes):
    """Register the decorated ``converter(g, r)`` for the ``Function`` classes ``classes``.

    ``g`` is the :class:`_Graph` being built (``g.node``, ``g.const``, ``g.opset``); ``r`` the
    :class:`_Record` of one applied op (``r.fn``, ``r.inputs`` tensors, ``r.names`` their ONNX
    value names, ``r.out``); the converter returns the name of the op's output value.
    """
    def deco(f):
        for c in classes:
            CONVERTERS[c] = f
        return f
    return deco


def _import_onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("nnx.onnx.export needs the onnx package: pip install nnx[onnx] "
                          "(or pip install onnx onnxruntime)") from None
    return onnx


# ============================================================================ tracing
class _Record:
    """One op of the trace: the Function, its input tensors and its output tensor, and the
    module it ran in (``where``, e.g. "model.head"); ``twin`` is the same op in the second
    trace (set once both traces ran)."""

    __slots__ = ("fn", "inputs", "out", "where", "twin", "names")

    def __init__(self, fn, inputs, out, where):
        self.fn, self.inputs, self.out, self.where = fn, inputs, out, where
        self.twin = self.names = None

    @property
    def op(self):
        fn = self.fn
        return fn.__name__ if isinstance(fn, type) else fn.name

    def error(self, why):
        return ExportError(f"ONNX export: op '{self.op}' (in {self.where}) {why}")

    def fixed(self, attr):
        """``fn.<attr>``, which must be the same in both traces (ExportError otherwise: it
        follows the input, so no fixed graph computes it)."""
        v = getattr(self.fn, attr)
        if self.twin is not None and not _same(v, getattr(self.twin.fn, attr)):
            raise self.error(f"has a {attr} that follows the input ({_short(v)}, then "
                             f"{_short(getattr(self.twin.fn, attr))} for another input): one "
                             f"ONNX graph cannot follow it")
        return v

    def backend_host(self, array):
        """``array`` (a backend array the op holds) as a NumPy array."""
        return np.asarray(self.out._backend.to_host(array))

    def out_shape(self):
        """The output's shape with None on each axis whose size follows the batch size."""
        s = self.out.shape
        if self.twin is None:
            return s
        return tuple(a if a == b else None for a, b in zip(s, self.twin.out.shape))


def _short(v):
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _same(a, b):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape \
            and bool(np.all(a == b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return a is b


class _Tracer:
    """Collects the ops applied by the thread that started the trace, with the innermost
    module of ``paths`` (``id(module) -> "model.name"``) running each."""

    def __init__(self, paths):
        self.paths, self.tape, self.thread = paths, [], threading.get_ident()

    def __call__(self, fn, inputs, out):
        if threading.get_ident() != self.thread:
            return
        self.tape.append(_Record(fn, tuple(inputs), out, self._where()))

    def _where(self):
        f = sys._getframe(2)
        paths = self.paths
        while f is not None:
            co = f.f_code
            if co.co_argcount:
                first = f.f_locals.get(co.co_varnames[0])
                p = paths.get(id(first))
                if p is not None:
                    return p
            f = f.f_back
        return "model"


def _trace(model, inputs, paths):
    tracer = _Tracer(paths)
    with _lock:
        autograd._tracer = tracer
        try:
            with _config.no_grad():
                out = model(*inputs)
        finally:
            autograd._tracer = None
    return tracer.tape, out


# ============================================================================ graph building
class _Graph:
    """The ONNX graph under construction: nodes, initializers and the value name of every
    tensor met (``id(tensor)`` -> name)."""

    def __init__(self, onnx, opset, params):
        self.onnx, self.opset = onnx, opset
        self.nodes, self.inits, self.values = [], [], {}
        self.params = params  # id(parameter or buffer) -> (state_dict key, tensor)
        self.twin_values = frozenset()  # ids of the second trace's inputs and op outputs
        self._count = 0

    def fresh(self, hint):
        self._count += 1
        return f"{_INTERNAL}{hint}_{self._count}"

    def node(self, op, inputs, **attrs):
        """Append an ``op`` node reading the value names ``inputs`` ("" for an absent optional
        input), with the attributes that are not None; returns its output's name."""
        out = self.fresh(op)
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), [out],
                                                     name=self.fresh("n_" + op), **attrs))
        return out

    def const(self, value, dtype=None, hint="const"):
        """An initializer holding ``value`` (as ``dtype`` when given); returns its name."""
        arr = np.asarray(value, dtype=dtype)
        name = self.fresh(hint)
        self.inits.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def ints(self, values, hint="axes"):
        return self.const(np.asarray(list(values), dtype=np.int64), hint=hint)

    def name_of(self, t, rec, j):
        """The value name of tensor ``t`` (input ``j`` of ``rec``): an op's output, a graph
        input, a parameter/buffer initializer, or a constant the forward created."""
        name = self.values.get(id(t)) or self.param_name(t)
        if name is not None:
            return name
        if rec.twin is not None:  # a constant: it must be one, the same in both traces
            t2 = rec.twin.inputs[j]
            if id(t2) in self.twin_values or not _same(t.numpy(), t2.numpy()):
                raise rec.error(f"reads a tensor (input {j}, shape {t.shape}) computed from the "
                                f"input outside nnx's ops (e.g. through .numpy() or .data): "
                                f"it cannot be traced; compute it with nnx ops")
        name = self.const(t.numpy(), hint="const")
        self.values[id(t)] = name
        return name

    def param_name(self, t=None, array=None):
        """The initializer of the parameter or buffer ``t`` (or the one whose backend array is
        ``array``), named by its ``state_dict`` key; None when it is none of the model's."""
        p = self.params.get(id(t))
        if p is None and array is not None:
            p = next((v for v in self.params.values() if v[1].data is array), None)
        if p is None:
            return None
        key, tensor = p
        if id(tensor) not in self.values:
            self.inits.append(self.onnx.numpy_helper.from_array(
                np.ascontiguousarray(tensor.numpy()), key))
            self.values[id(tensor)] = key
        return key

    def reduce(self, op, x, axes, keepdims):
        """``op`` (ReduceSum, ReduceMean, ...) over ``axes`` (None: all); axes are an input
        from opset 13 for ReduceSum and from 18 for the others, an attribute before."""
        keep = 1 if keepdims else 0
        if axes is None:
            return self.node(op, [x], keepdims=keep)
        axes = [axes] if isinstance(axes, int) else list(axes)
        if op == "ReduceSum" or self.opset >= 18:
            return self.node(op, [x, self.ints(axes)], keepdims=keep)
        return self.node(op, [x], keepdims=keep, axes=axes)


# ============================================================================ converters
def _unary(onnx_op):
    def conv(g, r):
        return g.node(onnx_op, r.names[:1])
    return conv


for _cls, _op in ((O.Neg, "Neg"), (O.Exp, "Exp"), (O.Log, "Log"), (O.Abs, "Abs"),
                  (O.Sqrt, "Sqrt"), (O.Clone, "Identity"), (F.Dropout, "Identity")):
    converts(_cls)(_unary(_op))

for _cls, _op in ((O.Add, "Add"), (O.Sub, "Sub"), (O.Mul, "Mul"), (O.Div, "Div"),
                  (O.Pow, "Pow"), (O.MatMul, "MatMul")):
    converts(_cls)(lambda g, r, _op=_op: g.node(_op, r.names[:2]))


def _scalar(g, r, c):
    return g.const(c, dtype=r.inputs[0].dtype, hint="c")


@converts(O.AddConst, O.MulConst, O.PowConst)
def _x_op_c(g, r):
    c = r.fn.c
    x = r.names[0]
    if type(r.fn) is O.PowConst:
        if c == 2:  # x * x, as NumPy computes x ** 2 (exactly)
            return g.node("Mul", [x, x])
        return g.node("Pow", [x, _scalar(g, r, c)])
    return g.node("Add" if type(r.fn) is O.AddConst else "Mul", [x, _scalar(g, r, c)])


@converts(O.RSubConst, O.RDivConst, O.RPowConst)
def _c_op_x(g, r):
    op = {O.RSubConst: "Sub", O.RDivConst: "Div", O.RPowConst: "Pow"}[type(r.fn)]
    return g.node(op, [_scalar(g, r, r.fn.c), r.names[0]])


@converts(O.Maximum)
def _maximum(g, r):
    return g.node("Max" if r.fn.fn == "max" else "Min", r.names[:2])


@converts(O.Clip)
def _clip(g, r):
    lo, hi = r.fn.lo, r.fn.hi
    return g.node("Clip", [r.names[0], "" if lo is None else _scalar(g, r, lo),
                           "" if hi is None else _scalar(g, r, hi)])


@converts(O.Sum, O.Mean)
def _sum_mean(g, r):
    op = "ReduceSum" if type(r.fn) is O.Sum else "ReduceMean"
    return g.reduce(op, r.names[0], r.fn.axis, r.fn.keepdims)


@converts(O.Max)
def _max(g, r):
    return g.reduce("ReduceMax" if r.fn.fn == "max" else "ReduceMin", r.names[0], r.fn.axis,
                    r.fn.keepdims)


@converts(O.Var)
def _var(g, r):
    fn, x = r.fn, r.names[0]
    den = r.fixed("den")
    d = g.node("Sub", [x, g.reduce("ReduceMean", x, fn.axis, True)])
    ss = g.reduce("ReduceSum", g.node("Mul", [d, d]), fn.axis, fn.keepdims)
    return g.node("Div", [ss, _scalar(g, r, den if den else np.nan)])


@converts(O.Norm)
def _norm(g, r):
    fn, x = r.fn, r.names[0]
    if fn.p == 2:
        return g.reduce("ReduceL2", x, fn.axis, fn.keepdims)
    if fn.p == 1:
        return g.reduce("ReduceL1", x, fn.axis, fn.keepdims)
    a = g.node("Abs", [x])
    if fn.p == np.inf:
        return g.reduce("ReduceMax", a, fn.axis, fn.keepdims)
    s = g.reduce("ReduceSum", g.node("Pow", [a, _scalar(g, r, fn.p)]), fn.axis, fn.keepdims)
    return g.node("Pow", [s, _scalar(g, r, 1.0 / fn.p)])


@converts(O.Reshape)
def _reshape(g, r):
    shape = list(r.out.shape)
    if r.twin is not None:
        varying = [i for i, s in enumerate(r.out_shape()) if s is None]
        if len(varying) > 1:
            raise r.error(f"reshapes to {tuple(shape)}, with {len(varying)} axes that follow the "
                          f"batch size: only one can; export with dynamic_batch=False")
        for i in varying:
            shape[i] = -1
    allowzero = 1 if 0 in shape else None  # a literal 0 (an empty axis), not "copy"
    if allowzero and -1 in shape:
        raise r.error(f"reshapes to an empty tensor of shape {tuple(r.out.shape)} with a dynamic "
                      f"batch; export with dynamic_batch=False")
    return g.node("Reshape", [r.names[0], g.ints(shape, "shape")], allowzero=allowzero)


@converts(O.Transpose)
def _transpose(g, r):
    axes = r.fn.axes
    perm = list(reversed(range(r.inputs[0].ndim))) if axes is None else [int(a) for a in axes]
    return g.node("Transpose", r.names[:1], perm=perm)


@converts(O.ToDevice)
def _to_device(g, r):
    src, dst = r.inputs[0].dtype, r.out.dtype
    if src == dst:
        return g.node("Identity", r.names[:1])
    return g.node("Cast", r.names[:1], to=g.onnx.helper.np_dtype_to_tensor_dtype(dst))


@converts(O.GetItem)
def _getitem(g, r):
    """Basic indexing (ints, slices, None, Ellipsis) as Slice, Squeeze and Unsqueeze."""
    index = r.fixed("index")
    items = list(index) if isinstance(index, tuple) else [index]
    if not O._is_basic_index(tuple(items)):
        raise r.error("uses advanced (array or boolean) indexing, which is not supported")
    ndim = r.inputs[0].ndim
    n_ell = items.count(Ellipsis)
    if n_ell:
        i = items.index(Ellipsis)
        used = sum(1 for it in items if it is not None and it is not Ellipsis)
        items[i:i + 1] = [slice(None)] * (ndim - used)
    items += [slice(None)] * (ndim - sum(1 for it in items if it is not None))
    starts, ends, axes, steps, squeeze, unsqueeze = [], [], [], [], [], []
    axis = out_pos = 0
    for it in items:
        if it is None:
            unsqueeze.append(out_pos)
            out_pos += 1
            continue
        if isinstance(it, slice):
            if it != slice(None):
                step = 1 if it.step is None else int(it.step)
                lo_default, hi_default = (0, _INT64_MAX) if step > 0 else (_INT64_MAX, -_INT64_MAX)
                starts.append(lo_default if it.start is None else int(it.start))
                ends.append(hi_default if it.stop is None else int(it.stop))
                axes.append(axis)
                steps.append(step)
            out_pos += 1
        else:
            i = int(it)
            starts.append(i)
            ends.append(i + 1 if i != -1 else _INT64_MAX)
            axes.append(axis)
            steps.append(1)
            squeeze.append(axis)
        axis += 1
    x = r.names[0]
    if axes:
        x = g.node("Slice", [x, g.ints(starts, "starts"), g.ints(ends, "ends"), g.ints(axes),
                             g.ints(steps, "steps")])
    if squeeze:
        x = g.node("Squeeze", [x, g.ints(squeeze)])
    if unsqueeze:
        x = g.node("Unsqueeze", [x, g.ints(unsqueeze)])
    if x == r.names[0]:
        x = g.node("Identity", [x])
    return x


@converts(F.Softmax, F.LogSoftmax)
def _softmax(g, r):
    return g.node("Softmax" if type(r.fn) is F.Softmax else "LogSoftmax", r.names[:1],
                  axis=int(r.fn.axis))


if hasattr(F, "Softplus"):  # the older Softplus op of nnx.functional (no threshold)
    converts(F.Softplus)(lambda g, r: _softplus_nodes(g, r.names[0], r.out.dtype, 1.0, None))


@converts(A.ScaledSoftplus)
def _scaled_softplus(g, r):
    return _softplus_nodes(g, r.names[0], r.out.dtype, r.fn.beta, r.fn.threshold)


# ---------------------------------------------------------------------- cat, pad, expand ...
@converts(S.Cat)
def _cat(g, r):
    return g.node("Concat", r.names, axis=int(r.fn.axis))


@converts(S.Stack)
def _stack(g, r):
    axis = int(r.fn.axis)
    parts = [g.node("Unsqueeze", [x, g.ints([axis])]) for x in r.names]
    return g.node("Concat", parts, axis=axis)


@converts(S.Where)
def _where(g, r):
    # The condition is an array the op holds, not an input: exportable only when it is a
    # parameter's or buffer's (a fixed mask); one made by comparing tensors (x > 0) was not
    # traced, since comparisons are not ops, and would be frozen into the file.
    cond = g.param_name(array=r.fn.cond)
    if cond is not None:
        return g.node("Where", [cond] + r.names[:2])
    raise r.error("takes a condition that is not a parameter or buffer (a comparison such as "
                  "x > 0 is not traced); write it with ops (e.g. F.relu, clip, maximum) or keep "
                  "a fixed mask as a buffer")


@converts(S.Pad)
def _pad(g, r):
    pads = r.fn.pads
    lo, hi = [int(a) for a, _ in pads], [int(b) for _, b in pads]
    return g.node("Pad", [r.names[0], g.ints(lo + hi, "pads"), _scalar(g, r, r.fn.value)],
                  mode="constant")


@converts(S.EdgePad)
def _edge_pad(g, r):
    x = r.names[0]
    for ax, (_lo, _hi, idx) in r.fixed("pads").items():  # axis -> the input position per output
        x = g.node("Gather", [x, g.ints(np.asarray(idx).tolist(), "indices")], axis=int(ax))
    return x


@converts(S.Expand)
def _expand(g, r):
    shape = list(r.out.shape)
    if r.twin is not None:
        in_shape = r.inputs[0].shape
        in_twin = r.twin.inputs[0].shape
        lead = len(shape) - len(in_shape)
        for i, s in enumerate(r.out_shape()):
            if s is None:  # follows the batch: it must be the input's own (kept by a 1)
                j = i - lead
                if j < 0 or in_shape[j] == in_twin[j] == 1:
                    raise r.error("expands an axis to the batch size; export with "
                                  "dynamic_batch=False")
                shape[i] = 1
    return g.node("Expand", [r.names[0], g.ints(shape, "shape")])


@converts(S.Repeat)
def _repeat(g, r):
    reps = [int(v) for v in r.fixed("reps")]
    x = r.names[0]
    extra = len(reps) - r.inputs[0].ndim
    if extra:
        x = g.node("Unsqueeze", [x, g.ints(range(extra))])
    return g.node("Tile", [x, g.ints(reps, "repeats")])


# ---------------------------------------------------------------------- conv, normalization
@converts(C.Conv2dFunction)
def _conv(g, r):
    k = r.fn.geometry
    if r.fn.one_d:  # (N, C, L): ONNX's Conv is n-d, so the row of the 2-D form is dropped
        attrs = dict(kernel_shape=[k.kw], strides=[k.sw], pads=[k.pl, k.pr], dilations=[k.dw])
    else:
        attrs = dict(kernel_shape=[k.kh, k.kw], strides=[k.sh, k.sw],
                     pads=[k.pt, k.pl, k.pb, k.pr], dilations=[k.dh, k.dw])
    y = g.node("Conv", r.names, group=int(k.groups), **attrs)
    if r.fn.activation == _table.LINEAR:
        return y
    # a Conv2d fused with the activation after it (the Sequential plan, Keras's activation=)
    return _activation(g, r, r.fn.activation, y, r.fn.slope)


def _affine_inputs(g, r, shape):
    """The names of the weight and bias of a normalization (ones and zeros when absent)."""
    fn, dt = r.fn, r.out.dtype
    w = r.names[1] if fn.has_weight else g.const(np.ones(shape, dt), hint="ones")
    b = r.names[-1] if fn.has_bias else g.const(np.zeros(shape, dt), hint="zeros")
    return w, b


def _stat_name(g, r, array, hint):
    """A running statistic (a buffer's array) by its buffer's name, else as a constant."""
    return g.param_name(array=array) or g.const(r.backend_host(array), hint=hint)


@converts(N.BatchNorm)
def _batch_norm(g, r):
    fn, x = r.fn, r.names[0]
    c = r.inputs[0].shape[1]
    w, b = _affine_inputs(g, r, (c,))
    if fn.stats is not None:  # eval mode: the running statistics
        mean, var = fn.stats
        return g.node("BatchNormalization", [x, w, b, _stat_name(g, r, mean, "running_mean"),
                                             _stat_name(g, r, var, "running_var")],
                      epsilon=float(fn.eps))
    # no running statistics: the batch's own, as nnx computes them at any mode
    axes = [0] + list(range(2, r.inputs[0].ndim))
    return _normalize(g, r, x, axes, w, b, [1, c] + [1] * (r.inputs[0].ndim - 2))


def _normalize(g, r, x, axes, w, b, param_shape=None):
    """(x - mean) / sqrt(var + eps) * w + b over ``axes``, the biased variance, as nodes."""
    d = g.node("Sub", [x, g.reduce("ReduceMean", x, axes, True)])
    var = g.reduce("ReduceMean", g.node("Mul", [d, d]), axes, True)
    std = g.node("Sqrt", [g.node("Add", [var, _scalar(g, r, r.fn.eps)])])
    if param_shape is not None:
        w = g.node("Reshape", [w, g.ints(param_shape, "shape")])
        b = g.node("Reshape", [b, g.ints(param_shape, "shape")])
    return g.node("Add", [g.node("Mul", [g.node("Div", [d, std]), w]), b])


@converts(N.LayerNorm)
def _layer_norm(g, r):
    fn, x = r.fn, r.names[0]
    nd = r.inputs[0].ndim
    w, b = _affine_inputs(g, r, r.inputs[0].shape[nd - fn.k:])
    if g.opset >= 17:
        return g.node("LayerNormalization", [x, w, b], axis=-int(fn.k), epsilon=float(fn.eps))
    return _normalize(g, r, x, list(range(nd - fn.k, nd)), w, b)


@converts(E.Embedding)
def _embedding(g, r):
    return g.node("Gather", [r.names[1], r.names[0]], axis=0)


# ---------------------------------------------------------------------- pooling
def _pool_2d(g, r, op, **attrs):
    """``op`` over the last two axes of a (N, C, H, W) or unbatched (C, H, W) input."""
    x = r.names[0]
    unbatched = r.inputs[0].ndim == 3
    if unbatched:
        x = g.node("Unsqueeze", [x, g.ints([0])])
    y = g.node(op, [x], **attrs)
    if unbatched:
        y = g.node("Squeeze", [y, g.ints([0])])
    return y


def _window_attrs(w):
    return dict(kernel_shape=[w.kh, w.kw], strides=[w.sh, w.sw], pads=[w.ph, w.pw, w.ph, w.pw],
                ceil_mode=int(w.ceil_mode))


@converts(P.MaxPool)
def _max_pool(g, r):
    w = r.fn.win
    return _pool_2d(g, r, "MaxPool", dilations=[w.dh, w.dw], **_window_attrs(w))


@converts(P.AvgPool)
def _avg_pool(g, r):
    w = r.fn.win
    if w.divisor_override:
        raise r.error(f"uses divisor_override={w.divisor_override}, which ONNX's AveragePool "
                      f"does not have")
    attrs = _window_attrs(w)
    if (w.dh, w.dw) != (1, 1):
        if g.opset < 19:
            raise r.error("is a dilated average pooling: it needs opset >= 19")
        attrs["dilations"] = [w.dh, w.dw]
    return _pool_2d(g, r, "AveragePool", count_include_pad=int(w.count_include_pad), **attrs)


@converts(P.AdaptiveAvgPool)
def _adaptive_avg_pool(g, r):
    (h, w), (oh, ow) = r.fn.in_hw, r.fn.out_hw
    if (oh, ow) == (1, 1):
        return _pool_2d(g, r, "GlobalAveragePool")
    if h % oh == 0 and w % ow == 0:  # equal, non-overlapping windows
        k = [h // oh, w // ow]
        return _pool_2d(g, r, "AveragePool", kernel_shape=k, strides=k)
    # PyTorch's windows [floor(i n / o), ceil((i + 1) n / o)) per axis: a window is a product
    # of two intervals, so its mean is the mean over rows of the means over columns
    x, nd = r.names[0], r.inputs[0].ndim
    for axis, n, o in ((nd - 2, h, oh), (nd - 1, w, ow)):
        if n == o:
            continue
        cells = []
        for i in range(o):
            lo, hi = (i * n) // o, -((-(i + 1) * n) // o)
            part = g.node("Slice", [x, g.ints([lo], "starts"), g.ints([hi], "ends"),
                                    g.ints([axis])])
            cells.append(g.reduce("ReduceMean", part, [axis], True))
        x = g.node("Concat", cells, axis=axis)
    return x


# ---------------------------------------------------------------------- activations
def _act_const(g, dtype, c):
    return g.const(c, dtype=dtype, hint="c")


def _gelu(g, x, dtype, approximate="none"):
    if g.opset >= 20:
        return g.node("Gelu", [x], approximate=approximate)
    if approximate == "tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        x3 = g.node("Mul", [g.node("Mul", [x, x]), x])
        inner = g.node("Add", [x, g.node("Mul", [x3, _act_const(g, dtype, 0.044715)])])
        t = g.node("Tanh", [g.node("Mul", [inner, _act_const(g, dtype, math.sqrt(2 / math.pi))])])
    else:  # 0.5 x (1 + erf(x / sqrt(2)))
        t = g.node("Erf", [g.node("Mul", [x, _act_const(g, dtype, 1 / math.sqrt(2))])])
    half = g.node("Mul", [x, _act_const(g, dtype, 0.5)])
    return g.node("Mul", [half, g.node("Add", [t, _act_const(g, dtype, 1.0)])])


def _softplus_nodes(g, x, dtype, beta, threshold):
    """PyTorch's softplus: log(1 + exp(beta x)) / beta, and x where beta x > threshold (no
    threshold: None)."""
    xb = x if beta == 1.0 else g.node("Mul", [x, _act_const(g, dtype, beta)])
    # softplus(z) = relu(z) + log(1 + exp(-|z|)): stable at any z (ONNX's Softplus is
    # log(exp(z) + 1), which overflows in float32 above z ~ 88)
    y = g.node("Add", [g.node("Relu", [xb]), g.node("Log", [g.node("Add", [
        g.node("Exp", [g.node("Neg", [g.node("Abs", [xb])])]), _act_const(g, dtype, 1.0)])])])
    if beta != 1.0:
        y = g.node("Div", [y, _act_const(g, dtype, beta)])
    if threshold is not None:  # torch: x where beta x > threshold
        cond = g.node("Greater", [xb, _act_const(g, dtype, float(threshold))])
        y = g.node("Where", [cond, x, y])
    return y


def _activation(g, r, name, x, slope):
    """The nodes of the activation entry ``name`` applied to value ``x``."""
    dtype = r.out.dtype
    entry = _table.lookup(name)
    if name == "sigmoid":
        return g.node("Sigmoid", [x])
    if name == "relu":
        return g.node("Relu", [x])
    if name == "tanh":
        return g.node("Tanh", [x])
    if name == "leaky_relu":
        return g.node("LeakyRelu", [x], alpha=float(slope))
    if name in ("gelu", "gelu_tanh"):
        approx = "tanh" if name == "gelu_tanh" or getattr(entry, "approximate", "none") == "tanh" \
            else "none"
        return _gelu(g, x, dtype, approx)
    if name == "elu":  # the entry's parameter (``slope``) is ELU's alpha
        return g.node("Elu", [x], alpha=float(slope))
    if name == "softplus":  # the entry is PyTorch's default form: beta 1, threshold 20
        return _softplus_nodes(g, x, dtype, 1.0, 20.0)
    if name in ("silu", "swish"):
        return g.node("Mul", [x, g.node("Sigmoid", [x])])
    raise r.error(f"applies the activation {name!r}, which has no ONNX conversion yet")


@converts(A.Activation)
def _activation_op(g, r):
    return _activation(g, r, r.fn.entry.name, r.names[0], r.fn.slope)


@converts(F.LinearChain)
def _linear_chain(g, r):
    """Each layer as Gemm (2-D input) or MatMul + Add (more axes), then its activation."""
    h, i = r.names[0], 1
    two_d = r.inputs[0].ndim == 2
    for act, slope, has_bias, _ in r.fn.layers:
        w = r.names[i]
        b = r.names[i + 1] if has_bias else None
        i += 1 + has_bias
        if two_d:
            h = g.node("Gemm", [h, w] + ([b] if b else []), transB=1)
        else:
            h = g.node("MatMul", [h, g.node("Transpose", [w], perm=[1, 0])])
            if b:
                h = g.node("Add", [h, b])
        if act != _table.LINEAR:
            h = _activation(g, r, act, h, slope)
    return h


# ============================================================================ export
def _as_inputs(example_input, model):
    """The example input(s) as a tuple of Tensors; floating arrays take the model's dtype."""
    items = example_input if isinstance(example_input, tuple) else (example_input,)
    p = next(iter(model.parameters()), None)
    out = []
    for x in items:
        if not isinstance(x, Tensor):  # onto the model's device, in its dtype when floating
            x = as_tensor(x, like=p)
            if p is not None and x.data.dtype.kind == "f" and x.dtype != p.dtype:
                x = x.to(dtype=p.dtype)
        out.append(x)
    return tuple(out)


def _other_input(x, grow):
    """The second trace's input: ``x``'s rows reversed (a value made from the input outside
    the ops then differs between the traces), with one more row when ``grow`` (the axes that
    follow the batch size then differ too)."""
    data = x.numpy()
    if data.ndim:
        data = data[::-1]
        if grow:
            data = np.concatenate([data, data[:1]], axis=0)
    return as_tensor(np.ascontiguousarray(data), like=x).to(dtype=x.dtype)


def _outputs(out):
    outs = out if isinstance(out, (tuple, list)) else (out,)
    for o in outs:
        if not isinstance(o, Tensor):
            raise ExportError(f"ONNX export: the model's forward returned a "
                              f"{type(o).__name__}; it must return a Tensor or a tuple of "
                              f"Tensors")
    return tuple(outs)


def _value_info(onnx, name, t, shape):
    elem = onnx.helper.np_dtype_to_tensor_dtype(t.dtype)
    return onnx.helper.make_tensor_value_info(name, elem, list(shape))


def _names(given, n, default, what, taken):
    if given is None:
        names = [default if n == 1 else f"{default}_{i}" for i in range(n)]
    else:
        names = list(given)
        if len(names) != n or len(set(names)) != n or \
                not all(isinstance(s, str) and s for s in names):
            raise ValueError(f"nnx.onnx.export: {what} must be {n} distinct non-empty strings, "
                             f"got {names!r}")
    for s in names:
        if s in taken or s.startswith(_INTERNAL):
            whose = "a parameter or another input/output" if s in taken else \
                f"a value the exporter makes ({_INTERNAL}...)"
            raise ValueError(f"nnx.onnx.export: {what} entry {s!r} is already the name of "
                             f"{whose}")
    taken.update(names)
    return names


def export(model, example_input, path, opset=DEFAULT_OPSET, dynamic_batch=True, *,
           input_names=None, output_names=None):
    """Write ``model`` as an ONNX file at ``path``, traced on ``example_input``.

    Args:
        model: an ``nnx.nn.Module`` (a ``Sequential``, Keras's or PyTorch's, or a module with
            its own ``forward`` over nnx layers and ops).
        example_input: a Tensor or array (or a tuple of them, one per ``forward`` argument)
            of a valid input; floating arrays are cast to the model's dtype. Only its shape and
            dtype reach the file.
        path: the ``.onnx`` file to write (atomically: a temporary, then a rename).
        opset: the ONNX opset (default 17; at least 13). GELU is one ``Gelu`` node from 20 on,
            its erf formula before; LayerNorm one ``LayerNormalization`` from 17 on.
        dynamic_batch: axis 0 of each input is the batch axis, named ``"batch"``, of any size;
            False fixes every shape to the example's.
        input_names, output_names: names of the graph's inputs and outputs (default
            ``"input"`` and ``"output"``, numbered when there are several).

    The model is traced in evaluation mode (Dropout off, BatchNorm's running statistics) under
    ``no_grad``, twice (see the module's docstring); each module's training flag and every
    buffer are as they were afterwards.

    Returns:
        The ``onnx.ModelProto`` written (it passed ``onnx.checker.check_model(full_check=True)``).

    Raises:
        ExportError: an op without an ONNX conversion (the message names it and the module
            path it ran in, e.g. ``model.head``), or a forward one graph cannot express
            (branches or constants that follow the input).
        ImportError: the ``onnx`` package is not installed (``pip install nnx[onnx]``).

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> nnx.onnx.export(model, nnx.randn(2, 4), "model.onnx")
    """
    onnx = _import_onnx()
    if not isinstance(model, Module):
        raise TypeError(f"nnx.onnx.export: expected an nnx.nn.Module, got {type(model).__name__}")
    opset = int(opset)
    top = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= top:
        raise ValueError(f"nnx.onnx.export: opset must lie in [{MIN_OPSET}, {top}], got {opset}")
    inputs = _as_inputs(example_input, model)
    if dynamic_batch and any(x.ndim == 0 or len(x) == 0 for x in inputs):
        raise ValueError("nnx.onnx.export: dynamic_batch needs inputs with a non-empty batch "
                         "axis 0; pass dynamic_batch=False for other inputs")
    params = {}
    for key, t in list(model.named_parameters()) + list(model.named_buffers()):
        params.setdefault(id(t), (key, t))
    taken = {key for key, _ in params.values()}
    in_names = _names(input_names, len(inputs), "input", "input_names", taken)
    tape, outs, others, twin_outs = _trace_twice(model, inputs, dynamic_batch)
    out_names = _names(output_names, len(outs), "output", "output_names", taken)

    g = _Graph(onnx, opset, params)
    g.twin_values = frozenset(id(r.twin.out) for r in tape) | frozenset(id(x) for x in others)
    for name, x in zip(in_names, inputs):
        g.values[id(x)] = name
    for rec in _needed(tape, outs):
        conv = None if isinstance(rec.fn, type) else CONVERTERS.get(type(rec.fn))
        if conv is None:
            raise rec.error(f"is not supported{_custom_hint(rec)}")
        rec.names = [g.name_of(t, rec, j) for j, t in enumerate(rec.inputs)]
        g.values[id(rec.out)] = conv(g, rec)
    n = len(inputs[0]) if dynamic_batch else -1
    graph_outputs = []
    for i, (o, name) in enumerate(zip(outs, out_names)):
        v = g.values.get(id(o))
        if v is None:
            raise ExportError(f"ONNX export: output {i} of the model was not computed by nnx ops "
                              f"from its input (made through .numpy() or .data?); it cannot be "
                              f"traced")
        g.nodes.append(onnx.helper.make_node("Identity", [v], [name], name=g.fresh("n_output")))
        shape = [a if a == b else ("batch" if (a, b) == (n, n + 1) else None)
                 for a, b in zip(o.shape, twin_outs[i].shape)]
        graph_outputs.append(_value_info(onnx, name, o, shape))
    graph_inputs = [_value_info(onnx, name, x, (["batch"] if dynamic_batch else [len(x)])
                                + list(x.shape[1:]) if x.ndim else [])
                    for name, x in zip(in_names, inputs)]
    graph = onnx.helper.make_graph(g.nodes, type(model).__name__, graph_inputs, graph_outputs,
                                   initializer=g.inits)
    opsets = [onnx.helper.make_opsetid("", opset)]
    proto = onnx.helper.make_model(graph, opset_imports=opsets, producer_name="nnx",
                                   producer_version=_version(),
                                   ir_version=onnx.helper.find_min_ir_version_for(opsets))
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:  # noqa: BLE001 - a converter bug: say so, write nothing
        raise ExportError(f"ONNX export: the graph built for {type(model).__name__} fails "
                          f"onnx.checker ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    try:
        data = proto.SerializeToString()
    except ValueError as e:  # protobuf's 2 GiB limit
        raise ExportError(f"ONNX export: the model is too large for one ONNX file "
                          f"({type(e).__name__}: {e})") from None
    atomic_write(path, lambda f: f.write(data), "nnx.onnx.export")
    return proto


def _trace_twice(model, inputs, dynamic_batch):
    """``(tape, outputs, other inputs, their outputs)``: the model traced in eval mode on
    ``inputs``, each record's ``twin`` set to the same op traced on the other inputs
    (:func:`_other_input`). Modes and buffers are restored afterwards."""
    paths = {id(m): ("model." + n if n else "model") for n, m in model.named_modules()}
    modes = [(m, m.training) for m in model.modules()]
    # a forward that updates buffers anyway (F.batch_norm(..., training=True)) leaves them as
    # they were: exporting does not change the model
    buffers = [(t, t.data.copy()) for _, t in model.named_buffers()]
    model.eval()
    try:
        tape, out = _trace(model, inputs, paths)
        outs = _outputs(out)
        others = tuple(_other_input(x, dynamic_batch) for x in inputs)
        twin_tape, out2 = _trace(model, others, paths)
        twin_outs = _outputs(out2)
    finally:
        for m, t in modes:
            object.__setattr__(m, "training", t)
        for t, data in buffers:
            t.data[...] = data
    if len(twin_tape) != len(tape) or any(type(a.fn) is not type(b.fn)
                                          for a, b in zip(tape, twin_tape)):
        raise ExportError(f"ONNX export: the model runs different ops for another input "
                          f"({len(tape)}, then {len(twin_tape)}): its forward branches on the "
                          f"input's values" + (" or batch size" if dynamic_batch else "") +
                          ", which one ONNX graph cannot follow")
    for a, b in zip(tape, twin_tape):
        a.twin = b
    return tape, outs, others, twin_outs


def _needed(tape, outs):
    """The records of ``tape`` the outputs depend on, in order (ops whose results the forward
    drops are not exported, so they need no converter)."""
    want = {id(o) for o in outs}
    keep = []
    for rec in reversed(tape):
        if id(rec.out) in want:
            keep.append(rec)
            want.update(id(t) for t in rec.inputs)
    return keep[::-1]


def input_shape_of(model):
    """The per-sample input shape (batch axis left out) ``model`` states, or None: that of a
    leading ``Input``, or of a first layer given ``input_shape=`` / ``in_features``."""
    from .nn.container import Sequential

    m = model
    while isinstance(m, Sequential) and len(m):
        m = m[0]
    for attr in ("shape", "input_shape"):  # nn.Input(shape); Dense/Flatten(input_shape=...)
        shape = getattr(m, attr, None) if attr in m.__dict__ else None
        if isinstance(shape, tuple) and shape and all(isinstance(d, int) for d in shape):
            return shape
    n = getattr(m, "in_features", None)
    return (n,) if isinstance(n, int) and n > 0 else None


def with_standardization(model, mean, std, sample_shape=None):
    """A module computing ``model((x - mean) / std)``, for exporting a model together with the
    standardization its inputs had in training (``nnx export`` of an ``nnx train`` model).
    ``mean`` and ``std`` (per-feature arrays) are cast to the model's dtype, and reshaped to
    ``sample_shape`` (one sample's shape, e.g. an image's) when given."""
    return _Standardized(model, mean, std, sample_shape)


class _Standardized(Module):
    def __init__(self, model, mean, std, sample_shape):
        super().__init__()
        self.model = model
        p = next(iter(model.parameters()))
        for name, v in (("mean", mean), ("std", std)):
            v = np.asarray(v)
            if sample_shape is not None:
                v = v.reshape(tuple(sample_shape))
            self.register_buffer(name, as_tensor(v, like=p).to(dtype=p.dtype))

    def forward(self, x):
        return self.model((x - self.mean) / self.std)


def _custom_hint(rec):
    if isinstance(rec.fn, type):
        return " (a custom autograd Function: ONNX export cannot see inside it)"
    return ""


def _version():
    from importlib import metadata

    try:
        return metadata.version("nnx")
    except metadata.PackageNotFoundError:
        return "0"
