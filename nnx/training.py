"""Keras-style training on ``nnx.nn.Sequential``: ``add``, ``compile``, ``fit``, ``evaluate``,
``predict``, ``summary``, ``save``/``load_model``.

The lecture's Keras listing ports line for line::

    model = nn.Sequential()
    model.add(nn.Dense(2, input_dim=2, activation="sigmoid"))
    model.add(nn.Dense(1, activation="sigmoid"))
    model.compile(loss="binary_crossentropy", optimizer="sgd", metrics=["accuracy"])
    model.fit(trainX, trainY, epochs=50000, batch_size=4, verbose=0)
    print(model.evaluate(trainX, trainY)[1])
    print(model.predict(trainX, batch_size=4))

How an epoch runs: the training data is put on the model's device once per ``fit`` (as one
array each for features and targets, in the model's dtype) and sliced into batches there; each
batch's loss stays on the device, accumulated as ``sum(batch_loss * batch_size)``, and the
epoch's loss, metrics and validation results come to the host in one transfer at the epoch's
end. Nothing syncs per batch. Data larger than ``RESIDENT_BYTES`` headed for a GPU is streamed
through ``nnx.data.DataLoader`` (double-buffered copies) instead.
"""
from __future__ import annotations

import sys
import time

import numpy as np

from . import _config
from . import functional as F
from .errors import CheckpointError, ShapeError
from .linear_chain import fused_args
from .tensor import Tensor, _wrap, host_array

__all__ = ["TrainingMixin", "History", "load_model", "load_checkpoint", "layer_config",
           "layer_from_config", "RESIDENT_BYTES"]

#: Training data bigger than this (bytes, features plus targets) that lives on the host while
#: the model is on a GPU is streamed batch by batch instead of copied to the device whole.
RESIDENT_BYTES = 1 << 30

# Keras's ``backend.epsilon()``: the clip of probabilities in its cross-entropies.
EPSILON = 1e-7

_LOSS_ALIASES = {
    "mse": "mse", "mean_squared_error": "mse",
    "mae": "mae", "mean_absolute_error": "mae",
    "binary_crossentropy": "binary_crossentropy", "bce": "binary_crossentropy",
    "categorical_crossentropy": "categorical_crossentropy",
    "sparse_categorical_crossentropy": "sparse_categorical_crossentropy",
}
_METRIC_ALIASES = {
    "accuracy": "accuracy", "acc": "accuracy",
    "binary_accuracy": "binary_accuracy", "categorical_accuracy": "categorical_accuracy",
    "sparse_categorical_accuracy": "sparse_categorical_accuracy",
    "mse": "mse", "mean_squared_error": "mse", "mae": "mae", "mean_absolute_error": "mae",
}


# ============================================================================ History
class History:
    """What ``fit`` returns (as Keras's ``History``).

    Attributes:
        history: ``{"loss": [...], "accuracy": [...], "val_loss": [...], ...}``, one float per
            epoch for the loss, each metric and, with validation data, their ``val_`` forms.
        epoch: the epoch indices run (0-based, as Keras).
        params: ``{"epochs", "steps", "batch_size", "samples", "verbose"}``.
        epoch_seconds: wall time of each epoch (including validation).
        stopped_epoch: the 0-based epoch after which training stopped early, or None when
            it ran all its epochs.
        stop_reason: None, ``"nan"`` (a NaN or inf loss, see ``TerminateOnNaN``),
            ``"early_stopping"``, or ``"callback"`` (another callback set
            ``model.stop_training``).
        stop_message: a sentence saying where and why training stopped, or None.
        nan_batch: with ``stop_reason == "nan"``, the 0-based index of the first batch of the
            stopped epoch whose loss was not finite.
        model: the model trained.
    """

    def __init__(self):
        self.history = {}
        self.epoch = []
        self.params = {}
        self.epoch_seconds = []
        self.stopped_epoch = None
        self.stop_reason = None
        self.stop_message = None
        self.nan_batch = None
        self.model = None

    def __repr__(self):
        keys = ", ".join(self.history)
        s = f"History(epochs={len(self.epoch)}, keys=[{keys}]"
        if self.stop_reason:
            s += f", stopped_epoch={self.stopped_epoch}, stop_reason={self.stop_reason!r}"
        return s + ")"


# ============================================================================ data
def _host_or_device(a, backend, dtype=None, name="x"):
    """``a`` (NumPy, CuPy, nnx Tensor, list) as an array of ``backend``, optionally cast."""
    if isinstance(a, Tensor):
        arr, src = a.data, a._backend
        if src is not backend:
            arr = backend.asarray(src.to_host(arr)) if "numpy" in (src.name, backend.name) \
                else backend.asarray(arr)
    elif hasattr(a, "__cuda_array_interface__") and type(a).__module__.split(".")[0] == "cupy":
        import backends

        src = backends.backend_of(a)
        arr = a if src is backend else (backend.asarray(src.to_host(a)) if backend.name == "numpy"
                                        else backend.asarray(a))
    else:
        try:
            arr = np.asarray(a)
        except Exception as e:  # noqa: BLE001 - say which argument could not be read
            raise TypeError(f"{name}: cannot read {type(a).__name__} as an array: {e}") from None
        if arr.dtype == object or arr.dtype.kind not in "biuf":
            raise TypeError(f"{name}: expected numeric data, got an array of dtype {arr.dtype}")
        arr = backend.asarray(arr)
    if arr.ndim == 0:
        raise ShapeError(f"{name}: expected an array with a first (samples) axis, got a scalar")
    if dtype is not None and arr.dtype != dtype:
        arr = arr.astype(dtype)
    return arr


def _prepare_targets(y, kind, n_out, dtype, name="y"):
    """Targets as the loss wants them: float of the model's dtype shaped like the output, or
    int64 class labels (N,) for the sparse losses. ``kind`` is ``_target_kind``'s answer.
    Works on NumPy and CuPy arrays alike."""
    labels = kind == "sparse" or (kind in ("labels_or_probs", "custom") and y.dtype.kind in "iub")
    if labels:
        if y.ndim == 2 and y.shape[1] == 1 and kind != "custom":
            y = y.reshape(-1)
        if kind == "sparse" and y.ndim != 1:
            raise ShapeError(f"{name}: sparse_categorical_crossentropy takes integer class labels "
                             f"of shape (N,) or (N, 1), got shape {tuple(y.shape)}; for one-hot "
                             f"targets use loss='categorical_crossentropy'")
        return y if y.dtype == np.int64 or kind == "custom" else y.astype(np.int64)
    if kind == "categorical" and y.ndim == 1:
        raise ShapeError(f"{name}: categorical_crossentropy takes one-hot targets of shape (N, C), "
                         f"got shape {tuple(y.shape)}; for integer class labels use "
                         f"loss='sparse_categorical_crossentropy'")
    if y.dtype != dtype:
        y = y.astype(dtype)
    if y.ndim == 1 and n_out == 1 and kind != "labels_or_probs":
        y = y.reshape(-1, 1)
    return y


class _Resident:
    """Batches sliced from whole arrays that live on the model's device."""

    def __init__(self, x, y, batch_size, backend):
        self.x, self.y, self.bs, self.backend = x, y, batch_size, backend
        self.n = n = int(x.shape[0])
        self.bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
        self.steps = len(self.bounds)
        self._fixed = None

    def batches(self, shuffle=False):
        """Yield ``(x Tensor, y Tensor, rows)``. One batch covering all the data is never
        permuted: its mean loss and gradient do not depend on the row order."""
        if not shuffle or self.steps == 1:
            fixed = self._fixed
            if fixed is None:
                b = self.backend
                fixed = self._fixed = [(_wrap(self.x[s:e], b), _wrap(self.y[s:e], b), e - s)
                                       for s, e in self.bounds]
            return fixed
        return self._shuffled()

    def _shuffled(self):
        b = self.backend
        perm = b.permutation(self.n)
        x, y = self.x[perm], self.y[perm]
        for s, e in self.bounds:
            yield _wrap(x[s:e], b), _wrap(y[s:e], b), e - s


class _Streamed:
    """Batches from an ``nnx.data.DataLoader`` (given by the user, or built for big data)."""

    def __init__(self, loader, backend, dtype, kind, n_out):
        self.loader, self.backend, self.dtype, self.kind, self.n_out = (
            loader, backend, dtype, kind, n_out)
        self.n = len(loader.dataset)
        self.steps = len(loader)

    def batches(self, shuffle=None):
        b, dt = self.backend, self.dtype
        for batch in self.loader:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise ValueError("fit/evaluate: a DataLoader must yield (x, y) batches")
            xb = _host_or_device(batch[0], b, dt, "x batch")
            yb = _prepare_targets(_host_or_device(batch[1], b, None, "y batch"), self.kind,
                                  self.n_out, dt, "y batch")
            yield _wrap(xb, b), _wrap(yb, b), int(xb.shape[0])


def _is_loader(obj):
    from .data import DataLoader

    return isinstance(obj, DataLoader)


def _host_nbytes(*arrays):
    total = 0
    for a in arrays:
        if isinstance(a, np.ndarray):
            total += a.nbytes
        elif not isinstance(a, Tensor) and not hasattr(a, "__cuda_array_interface__"):
            total += np.asarray(a).nbytes
    return total


# ============================================================================ metrics
def _count_rows(xp, eq):
    """Per-sample mean over the last axis (Keras's metric rule) of a boolean array, summed
    over the batch: the number of True values divided by the row length. ``count_nonzero``
    costs a third of ``.mean(-1).sum()`` on small NumPy batches."""
    c = xp.count_nonzero(eq)
    return c if eq.ndim < 2 or eq.shape[-1] == 1 else c / eq.shape[-1]


def _sum_rows(v):
    return v.mean(axis=-1).sum() if v.ndim > 1 else v.sum()


def _make_metric(name, kind, head, probs, xp):
    """A function ``(out, target) -> 0-d device value``: the batch's SUM of per-sample values.

    ``out`` is what the loss sees: logits when ``head`` is "sigmoid"/"softmax" (fused) or
    "logits" (a logits loss module), else the model's output. ``probs(out)`` gives
    probabilities from it.
    """
    if name == "accuracy":  # Keras picks the accuracy from the loss
        name = {"binary": "binary_accuracy", "categorical": "categorical_accuracy",
                "sparse": "sparse_categorical_accuracy"}.get(kind, "auto_accuracy")
    count = xp.count_nonzero
    if name == "binary_accuracy":
        if head == "sigmoid":
            # NOTE: threshold the probabilities, not the logits: z > 0 and sigmoid(z) > 0.5
            # differ where sigmoid(z) rounds to exactly 0.5 (tiny z), and predict() and Keras
            # see the rounded probability.
            def binary_accuracy(o, t):
                return _count_rows(xp, t == (probs(o) > 0.5))
            return binary_accuracy
        thr = 0.0 if head == "logits" else 0.5

        def binary_accuracy(o, t):
            return _count_rows(xp, t == (o > thr))
        return binary_accuracy
    if name == "categorical_accuracy":
        def categorical_accuracy(o, t):
            return count(o.argmax(axis=-1) == t.argmax(axis=-1))
        return categorical_accuracy
    if name == "sparse_categorical_accuracy":
        def sparse_categorical_accuracy(o, t):
            return count(o.argmax(axis=-1) == t)
        return sparse_categorical_accuracy
    if name == "auto_accuracy":  # mse or a loss module: decide from the shapes, as Keras does
        thr = 0.0 if head == "logits" else 0.5

        def accuracy(o, t):
            if t.ndim < o.ndim or t.dtype.kind in "iu" and o.shape[-1] > 1:
                return count(o.argmax(axis=-1) == t.reshape(o.shape[:-1]))
            if o.ndim == 1 or o.shape[-1] == 1:
                return _count_rows(xp, t == (o > thr))
            return count(o.argmax(axis=-1) == t.argmax(axis=-1))
        return accuracy
    if name in ("mse", "mae"):
        if kind == "sparse":
            raise ValueError(f"metric {name!r} needs targets shaped like the output; the sparse "
                             f"loss takes class labels")
        sq = name == "mse"

        def err(o, t):
            d = probs(o) - t
            return _sum_rows(d * d if sq else abs(d))
        err.__name__ = name
        return err
    raise ValueError(f"unknown metric {name!r}")


def _custom_metric(fn, probs):
    def metric(o, t):
        r = fn(t, probs(o))
        if isinstance(r, Tensor):
            r = r.data
        return r * t.shape[0] if getattr(r, "ndim", 0) == 0 else r.sum()
    return metric


# ============================================================================ losses
def _cce_on_probs(p, t):
    """Keras's categorical cross-entropy on probabilities: normalize, clip at 1e-7, -sum t log p."""
    from . import ops

    p = p / ops.sum(p, axis=-1, keepdims=True)
    p = ops.clip(p, EPSILON, 1.0 - EPSILON)
    return ops.mean(-ops.sum(t * ops.log(p), axis=-1))


def _sparse_on_probs(p, t):
    from . import ops

    p = p / ops.sum(p, axis=-1, keepdims=True)
    return F.nll_loss(ops.log(ops.clip(p, EPSILON, 1.0 - EPSILON)), t)


def _loss_fn(name, head):
    """The loss as ``f(out Tensor, target Tensor) -> Tensor``; ``head`` says whether ``out``
    holds logits (fused path)."""
    if name == "binary_crossentropy":
        return F.binary_cross_entropy_with_logits if head == "sigmoid" else F.binary_cross_entropy
    if name in ("categorical_crossentropy", "sparse_categorical_crossentropy"):
        if head == "softmax":
            return F.cross_entropy
        return _cce_on_probs if name == "categorical_crossentropy" else _sparse_on_probs
    if name == "mse":
        return F.mse_loss
    if name == "mae":
        from . import ops

        return lambda o, t: ops.mean(ops.abs(o - t))
    raise ValueError(name)


# ============================================================================ configs
_SIMPLE = ("Sigmoid", "ReLU", "Tanh", "Identity")


def layer_config(m):
    """A JSON-able dict describing layer ``m`` (class name and constructor arguments)."""
    from .nn import layers
    from .nn.dense import Dense

    t = type(m)
    if t is Dense:
        return m.get_config()
    if t is layers.Linear:
        return {"class": "Linear", "in_features": m.in_features, "out_features": m.out_features,
                "bias": m.bias is not None}
    if t.__name__ in _SIMPLE and getattr(layers, t.__name__) is t:
        return {"class": t.__name__}
    if t is layers.LeakyReLU:
        return {"class": "LeakyReLU", "negative_slope": m.negative_slope}
    if t in (layers.Softmax, layers.LogSoftmax):
        return {"class": t.__name__, "axis": m.axis}
    if t is layers.Dropout:
        return {"class": "Dropout", "p": m.p}
    if t is layers.Flatten:
        return {"class": "Flatten", "start_dim": m.start_dim, "end_dim": m.end_dim}
    if t is layers.Sequential:
        return {"class": "Sequential", "layers": [layer_config(c) for c in m]}
    raise ValueError(f"cannot describe a {t.__name__} layer as data (only nnx.nn's built-in "
                     f"layers can be saved with their architecture; save model.state_dict())")


def _arg(cfg, key, types, default=None, required=False):
    if key not in cfg:
        if required:
            raise CheckpointError(f"layer config {cfg.get('class')!r} lacks {key!r}")
        return default
    v = cfg[key]
    if not isinstance(v, types) or isinstance(v, bool) and bool not in types:
        raise CheckpointError(f"layer config {cfg.get('class')!r}: {key}={v!r} has the wrong type")
    return v


def layer_from_config(cfg, device=None, dtype=None):
    """Rebuild a layer from ``layer_config``'s dict. Only nnx's own layer classes are made;
    nothing from the data is ever evaluated or imported."""
    from .nn import layers
    from .nn.dense import Dense, activation_from_config

    if not isinstance(cfg, dict) or not isinstance(cfg.get("class"), str):
        raise CheckpointError(f"bad layer config {cfg!r}: expected a dict with a 'class' name")
    c = cfg["class"]
    kw = dict(device=device, dtype=dtype)
    if c == "Dense":
        act = activation_from_config(cfg.get("activation"))
        in_dim = _arg(cfg, "input_dim", (int, type(None)))
        return Dense(_arg(cfg, "units", (int,), required=True), activation=act,
                     input_dim=in_dim, use_bias=_arg(cfg, "use_bias", (bool,), True), **kw)
    if c == "Linear":
        return layers.Linear(_arg(cfg, "in_features", (int,), required=True),
                             _arg(cfg, "out_features", (int,), required=True),
                             bias=_arg(cfg, "bias", (bool,), True), **kw)
    if c in _SIMPLE:
        return getattr(layers, c)()
    if c == "LeakyReLU":
        return layers.LeakyReLU(_arg(cfg, "negative_slope", (int, float), 0.01))
    if c in ("Softmax", "LogSoftmax"):
        return getattr(layers, c)(axis=_arg(cfg, "axis", (int,), -1))
    if c == "Dropout":
        return layers.Dropout(_arg(cfg, "p", (int, float), 0.5))
    if c == "Flatten":
        return layers.Flatten(_arg(cfg, "start_dim", (int,), 1), _arg(cfg, "end_dim", (int,), -1))
    if c == "Sequential":
        return layers.Sequential.from_config(cfg, device=device, dtype=dtype)
    raise CheckpointError(f"unknown layer class {c!r} in the saved architecture")


_FORMAT = "nnx.sequential"


def load_checkpoint(path, device=None):
    """``(model, extra)`` from a file written by ``Sequential.save`` (or ``ModelCheckpoint``):
    the model rebuilt from its stored architecture with its weights, and the ``extra`` dict
    saved beside them. ``device`` defaults to the current default device."""
    from . import serialization
    from .nn.layers import Sequential

    ck = serialization.load(path)
    if not isinstance(ck, dict) or ck.get("format") != _FORMAT or "config" not in ck:
        raise CheckpointError(f"{path}: not a saved nnx model (no architecture inside); a file "
                              f"with only weights loads with model.load_state_dict(nnx.load(path))")
    cfg = ck["config"]
    dtype = cfg.get("dtype") if isinstance(cfg, dict) else None
    model = Sequential.from_config(cfg, device=device, dtype=dtype)
    model.load_state_dict(ck.get("state_dict") or {})
    return model, ck.get("extra") or {}


def load_model(path, device=None):
    """The model saved by ``Sequential.save`` at ``path`` (architecture and weights; not
    compiled)."""
    return load_checkpoint(path, device)[0]


# ============================================================================ the mixin
class _Setup:
    """What ``compile`` decided (a plain object: a Module attribute would become a child)."""

    def __init__(self, loss, loss_name, optimizer, metric_specs):
        self.loss, self.loss_name = loss, loss_name
        self.optimizer = optimizer
        self.metric_specs = metric_specs  # [(history name, spec)]
        self.batch_losses = None


class TrainingMixin:
    """Keras's model API, mixed into ``nnx.nn.Sequential`` (see this module's docstring)."""

    optimizer = None  # set by compile()
    history = None  # the History of the last fit()

    # ------------------------------------------------------------------ building
    def add(self, layer):
        """Append ``layer`` (Keras's ``model.add``). A ``Dense`` without ``input_dim`` takes its
        input size from the layer before it; as the first layer it needs ``input_dim``.
        Adding a layer after ``compile`` requires compiling again."""
        from .nn.dense import Dense
        from .nn.module import Module

        if not isinstance(layer, Module):
            raise TypeError(f"add: expected an nnx.nn layer (Module), got {type(layer).__name__}")
        prev = self._output_features()
        if isinstance(layer, Dense):
            if not layer.built:
                if len(self) == 0:
                    raise ValueError(f"Dense({layer.units}) is the first layer and has no input "
                                     f"size: give it input_dim=<number of input features>, e.g. "
                                     f"nn.Dense({layer.units}, input_dim=2)")
                if prev is None:
                    raise ValueError(f"Dense({layer.units}): cannot infer its input size from "
                                     f"the layer before it ({type(self[-1]).__name__}); give "
                                     f"input_dim=...")
                p = next(iter(self.parameters()), None)
                layer.build(prev, device=p.device if p is not None else None,
                            dtype=p.dtype if p is not None else None)
            elif prev is not None and layer.in_features != prev:
                raise ShapeError(f"Dense({layer.units}, input_dim={layer.in_features}) does not "
                                 f"fit after a layer with {prev} outputs")
        self.append(layer)
        object.__setattr__(self, "_keras", None)
        return self

    def _build_pending(self):
        """Give each unbuilt Dense (e.g. from ``Sequential(Dense(4, input_dim=2), Dense(1))``)
        its input size from the layers before it, as ``add`` would have."""
        from .nn.dense import Dense
        from .nn.layers import Sequential

        mods = list(self)
        for i, m in enumerate(mods):
            if isinstance(m, Dense) and not m.built:
                head = Sequential(*mods[:i]) if i else None
                prev = head._output_features() if head is not None else None
                if prev is None:
                    raise ValueError(f"Dense({m.units}) at position {i} has no input size and "
                                     f"none can be inferred from the layers before it; give "
                                     f"it input_dim=...")
                p = next(iter(self.parameters()), None)
                m.build(prev, device=p.device if p is not None else None,
                        dtype=p.dtype if p is not None else None)

    def _output_features(self):
        """The size of the model's last axis as far as the layers tell, or None."""
        from .nn import layers

        keep = (layers.Sigmoid, layers.ReLU, layers.Tanh, layers.LeakyReLU, layers.Softmax,
                layers.LogSoftmax, layers.Dropout, layers.Identity)
        for m in reversed(list(self)):
            n = getattr(m, "out_features", None)
            if n is not None:
                return n
            if isinstance(m, layers.Sequential):
                n = m._output_features()
                if n is not None:
                    return n
            if not isinstance(m, keep):
                return None
        return None

    @property
    def layers(self):
        """The layers, in order (Keras's ``model.layers``)."""
        return list(self)

    # ------------------------------------------------------------------ compile
    def compile(self, optimizer=None, loss=None, metrics=None):
        """Configure training (Keras's ``model.compile``).

        Args:
            optimizer: ``"sgd"`` (SGD, lr 0.01, as Keras), ``"adam"`` (Adam, lr 0.001,
                eps 1e-7, as Keras; nnx adds eps after the bias correction as PyTorch does),
                or an ``nnx.optim`` optimizer built on ``model.parameters()``.
            loss: ``"mse"``, ``"mae"``, ``"binary_crossentropy"``, ``"categorical_crossentropy"``
                (one-hot targets), ``"sparse_categorical_crossentropy"`` (integer labels), or a
                loss module / callable ``f(output, target) -> Tensor`` such as
                ``nn.CrossEntropyLoss()`` (which then sees the model's raw output).
            metrics: a list of ``"accuracy"`` (binary, categorical or sparse, picked from the
                loss as Keras does; binary uses the threshold 0.5), ``"binary_accuracy"``,
                ``"categorical_accuracy"``, ``"sparse_categorical_accuracy"``, ``"mse"``,
                ``"mae"``, or callables ``f(y_true, y_pred)`` on backend arrays returning
                per-sample values.

        NOTE: when the last layer ends in a sigmoid (softmax) and the loss is the binary
        (categorical or sparse) cross-entropy, training and ``evaluate`` compute the loss from
        the pre-activation logits (``binary_cross_entropy_with_logits`` / ``cross_entropy``):
        the same value, but stable and without clipping. Keras on probabilities clips them to
        [1e-7, 1 - 1e-7], so where a prediction is within 1e-7 of 0 or 1 Keras's loss is
        capped (at about 16.1 per sample) and nnx's is not; elsewhere they agree to rounding.
        ``predict`` still returns probabilities.
        """
        from . import optim

        self._build_pending()
        params = list(self.parameters())
        if not params:
            raise ValueError("compile: the model has no parameters; add layers first")
        if loss is None:
            raise ValueError("compile: give a loss, e.g. loss='binary_crossentropy'")
        if isinstance(loss, str):
            name = _LOSS_ALIASES.get(loss.strip().lower())
            if name is None:
                raise ValueError(f"compile: unknown loss {loss!r}; expected one of "
                                 f"{sorted(set(_LOSS_ALIASES.values()))} or a loss module")
        elif callable(loss):
            name = None
        else:
            raise TypeError(f"compile: loss must be a name or a callable, got "
                            f"{type(loss).__name__}")

        if optimizer is None:
            raise ValueError("compile: give an optimizer: 'sgd', 'adam' or an nnx.optim optimizer")
        if isinstance(optimizer, str):
            o = optimizer.strip().lower()
            if o == "sgd":
                opt = optim.SGD(params, lr=0.01)
            elif o == "adam":
                opt = optim.Adam(params, lr=0.001, eps=1e-7)
            else:
                raise ValueError(f"compile: unknown optimizer {optimizer!r}; expected 'sgd', "
                                 f"'adam' or an nnx.optim optimizer")
        elif isinstance(optimizer, optim.Optimizer):
            mine = {id(p) for p in params}
            if not any(id(p) in mine for g in optimizer.param_groups for p in g["params"]):
                raise ValueError("compile: the optimizer holds none of this model's parameters; "
                                 "build it with model.parameters() after adding the layers")
            opt = optimizer
        else:
            raise TypeError(f"compile: optimizer must be 'sgd', 'adam' or an nnx.optim "
                            f"optimizer, got {type(optimizer).__name__}")

        if metrics is None:
            metrics = []
        elif isinstance(metrics, (str,)) or callable(metrics):
            metrics = [metrics]
        specs, seen = [], set()
        for m in metrics:
            if isinstance(m, str):
                key = _METRIC_ALIASES.get(m.strip().lower())
                if key is None:
                    raise ValueError(f"compile: unknown metric {m!r}; expected one of "
                                     f"{sorted(set(_METRIC_ALIASES))} or a callable")
                label = m.strip()
            elif callable(m):
                key, label = m, getattr(m, "__name__", type(m).__name__)
            else:
                raise TypeError(f"compile: metrics must be names or callables, got {m!r}")
            if label in seen or label == "loss":
                raise ValueError(f"compile: metric {label!r} given twice")
            seen.add(label)
            specs.append((label, key))
        st = _Setup(loss, name, opt, specs)
        self._metrics_for(st, self._logits_head(st)[1])  # validate metric/loss combinations now
        object.__setattr__(self, "_keras", st)
        object.__setattr__(self, "optimizer", opt)
        return self

    def _setup(self, what):
        st = self.__dict__.get("_keras")
        if st is None:
            raise RuntimeError(f"{what}: compile the model first, e.g. "
                               f"model.compile(loss='binary_crossentropy', optimizer='sgd')")
        return st

    # ------------------------------------------------------------------ heads and kinds
    def _target_kind(self, st):
        name = st.loss_name
        if name == "binary_crossentropy":
            return "binary"
        if name == "categorical_crossentropy":
            return "categorical"
        if name == "sparse_categorical_crossentropy":
            return "sparse"
        if name in ("mse", "mae"):
            return "regression"
        from .nn import loss as L

        if isinstance(st.loss, (L.CrossEntropyLoss, L.NLLLoss)):
            return "labels_or_probs"
        if isinstance(st.loss, (L.BCELoss, L.BCEWithLogitsLoss)):
            return "binary_module"
        return "custom"

    def _logits_head(self, st):
        """``(steps, head)``: the forward as a list of callables ending in the tensor the loss
        takes, and what that tensor is: "sigmoid"/"softmax" (logits of that activation, fused
        loss), "logits" (a logits loss module), or None (the model's output)."""
        from .nn import layers
        from .nn import loss as L
        from .nn.dense import Dense

        plan = self._plan()
        steps = []
        for m, act in plan:
            if act is None:
                steps.append(m)
            else:
                steps.append(_fused_step(m, act))
        head = None
        name = st.loss_name
        want = {"binary_crossentropy": "sigmoid", "categorical_crossentropy": "softmax",
                "sparse_categorical_crossentropy": "softmax"}.get(name)
        if want is not None and plan:
            m, act = plan[-1]
            if act is not None:
                if act.fused_activation == want == "sigmoid":
                    steps[-1] = _linear_step(m)
                    head = want
            elif isinstance(m, Dense) and m._act_name == want \
                    and "activation_module" not in m._modules:
                steps[-1] = m.logits
                head = want
            elif (type(m) is layers.Sigmoid and want == "sigmoid") or \
                    (type(m) is layers.Softmax and want == "softmax" and m.axis in (-1, 1)):
                steps.pop()
                head = want
        elif isinstance(st.loss, (L.BCEWithLogitsLoss, L.CrossEntropyLoss)):
            head = "logits"
        return steps, head

    def _metrics_for(self, st, head):
        be, _ = self._model_backend_dtype()
        kind = {"binary": "binary", "categorical": "categorical", "sparse": "sparse"}.get(
            self._target_kind(st), "other")
        if isinstance(st.loss, _bce_module_types()):
            kind = "binary"
        probs = _probs_fn(head, be)
        fns = []
        for label, spec in st.metric_specs:
            if callable(spec):
                fns.append((label, _custom_metric(spec, probs)))
            else:
                fns.append((label, _make_metric(spec, kind, head, probs, be.xp)))
        return fns

    # ------------------------------------------------------------------ data
    def _model_backend_dtype(self):
        p = next(iter(self.parameters()), None)
        if p is None:
            return _config.backend_for(None), _config.get_default_dtype()
        return p._backend, p.dtype

    def _batches_for(self, x, y, batch_size, st, what, shuffle=False):
        """A batch source over (x, y): resident on the device, or streamed."""
        be, dt = self._model_backend_dtype()
        kind = self._target_kind(st)
        n_out = self._output_features()
        if _is_loader(x):
            if y is not None:
                raise ValueError(f"{what}: with a DataLoader as x, leave y out (the loader "
                                 f"yields (x, y) batches)")
            return _Streamed(x, be, dt, kind, n_out)
        if y is None:
            raise ValueError(f"{what}: y (the targets) is missing")
        if be.name != "numpy" and _host_nbytes(x, y) > RESIDENT_BYTES:
            from .data import DataLoader

            xs = _host_array(x, dt)
            ys = _host_array(y, None)
            if len(xs) != len(ys):
                raise ValueError(f"{what}: x has {len(xs)} samples but y has {len(ys)}")
            loader = DataLoader((xs, ys), batch_size=batch_size, shuffle=shuffle,
                                device=be.device)
            return _Streamed(loader, be, dt, kind, n_out)
        xa = _host_or_device(x, be, dt, "x")
        ya = _host_or_device(y, be, None, "y")
        if int(xa.shape[0]) != int(ya.shape[0]):
            raise ValueError(f"{what}: x has {xa.shape[0]} samples but y has {ya.shape[0]}")
        if xa.shape[0] == 0:
            raise ValueError(f"{what}: no samples")
        ya = _prepare_targets(ya, kind, n_out, dt)
        return _Resident(xa, ya, batch_size, be)

    # ------------------------------------------------------------------ fit
    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose=1, callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, initial_epoch=0,
            terminate_on_nan=True):
        """Train for ``epochs`` passes over ``(x, y)`` (Keras's ``model.fit``).

        Args:
            x, y: features and targets: NumPy or CuPy arrays, nnx Tensors or lists; or an
                ``nnx.data.DataLoader`` yielding ``(x, y)`` batches as ``x`` (``y`` left out;
                its own ``batch_size`` and ``shuffle`` then apply, as Keras ignores them for
                datasets). Features are converted to the model's dtype; batches run on the
                model's device.
            batch_size: samples per gradient step. Default: 32.
            epochs: index of the last epoch (``epochs - initial_epoch`` epochs run).
            verbose: 0 silent; 1 a progress bar per epoch (over batches) with the epoch's loss
                and metrics; 2 one progress bar over all epochs, showing the latest epoch's
                numbers (compact for many short epochs). Bars go to stderr (tqdm).
            callbacks: a list of ``nnx.callbacks.Callback``.
            validation_split: fraction of the data held out for validation, taken from the
                END of ``x`` and ``y`` before shuffling (as Keras).
            validation_data: ``(x_val, y_val)`` (or a DataLoader) evaluated after each epoch;
                overrides ``validation_split``.
            shuffle: reshuffle the training rows before each epoch (the backend's generator,
                so ``nnx.manual_seed`` repeats it). A single batch holding all the data is
                not reshuffled: its mean loss does not depend on the order.
            initial_epoch: epoch to start from (to resume training).
            terminate_on_nan: stop at the end of an epoch whose loss is NaN or inf, with a
                RuntimeWarning naming the epoch and the first bad batch (nnx's
                ``TerminateOnNaN``, on by default; pass False to keep going).

        Returns:
            A :class:`History`.

        NOTE: the loss and metrics are read from the device once per epoch, not per batch, so
        a NaN is noticed at the end of the epoch in which it appears; the rest of that epoch
        runs on NaN weights.
        """
        from . import callbacks as C

        st = self._setup("fit")
        if batch_size is None:
            batch_size = 32
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"fit: batch_size must be a positive int, got {batch_size!r}")
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
            raise ValueError(f"fit: epochs must be a non-negative int, got {epochs!r}")
        if verbose == "auto":
            verbose = 1
        if not 0.0 <= float(validation_split) < 1.0:
            raise ValueError(f"fit: validation_split must be in [0, 1), got {validation_split}")

        if validation_data is None and validation_split > 0:
            if _is_loader(x):
                raise ValueError("fit: validation_split needs arrays, not a DataLoader; pass "
                                 "validation_data instead")
            x, y, validation_data = _split_last(x, y, validation_split)
        train = self._batches_for(x, y, int(batch_size), st, "fit", bool(shuffle))
        val = None
        if validation_data is not None:
            if _is_loader(validation_data):
                val = self._batches_for(validation_data, None, int(batch_size), st,
                                        "validation_data")
            else:
                if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                    raise ValueError("fit: validation_data must be (x_val, y_val)")
                val = self._batches_for(validation_data[0], validation_data[1],
                                        int(batch_size), st, "validation_data")

        steps, head = self._logits_head(st)
        lossf = st.loss if st.loss_name is None else _loss_fn(st.loss_name, head)
        metrics = self._metrics_for(st, head)
        mfns = [f for _, f in metrics]
        names = ["loss"] + [label for label, _ in metrics]
        opt = st.optimizer
        be = train.backend

        history = History()
        history.model = self
        keys = names + (["val_" + k for k in names] if val is not None else [])
        lists = [history.history.setdefault(k, []) for k in keys]
        history.params = {"epochs": int(epochs), "steps": train.steps,
                          "batch_size": int(batch_size), "samples": train.n, "verbose": verbose}
        cbs = list(callbacks or [])
        if terminate_on_nan and not any(isinstance(c, C.TerminateOnNaN) for c in cbs):
            cbs.insert(0, C.TerminateOnNaN())
        for c in cbs:
            if not isinstance(c, C.Callback):
                raise TypeError(f"fit: callbacks must be nnx.callbacks.Callback objects, got "
                                f"{type(c).__name__}")
            c.set_model(self)
            c.params = history.params
        begin_cbs = [c for c in cbs if type(c).on_epoch_begin is not C.Callback.on_epoch_begin]
        end_cbs = [c for c in cbs if type(c).on_epoch_end is not C.Callback.on_epoch_end]
        object.__setattr__(self, "history", history)
        object.__setattr__(self, "stop_training", False)
        object.__setattr__(self, "stop_reason", None)

        bar = None
        if verbose == 2 and epochs > initial_epoch:
            bar = _tqdm(total=int(epochs) - int(initial_epoch), desc="Training", unit="epoch")
        was_training = self.training
        self.train()
        for c in cbs:
            c.on_train_begin({})
        zero_grad, step = opt.zero_grad, opt.step
        try:
            # NaN/inf is reported once, by TerminateOnNaN, not as NumPy warnings per op.
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                for epoch in range(int(initial_epoch), int(epochs)):
                    t0 = time.perf_counter()
                    for c in begin_cbs:
                        c.on_epoch_begin(epoch, {})
                    ebar = None
                    if verbose == 1:
                        ebar = _tqdm(total=train.steps, desc=f"Epoch {epoch + 1}/{epochs}",
                                     unit="batch")
                    losses = []
                    checks = []
                    tot = 0.0
                    seen = 0
                    msum = [0.0] * len(mfns)
                    for xb, yb, nb in train.batches(shuffle):
                        seen += nb
                        out = xb
                        for f in steps:
                            out = f(out)
                        loss = lossf(out, yb)
                        zero_grad()
                        loss.backward()
                        step()
                        ld = loss.data
                        losses.append(ld)
                        if loss._checks:  # a device-side input check: read at the epoch's sync
                            checks += loss._checks
                        tot = tot + ld * nb
                        if mfns:
                            od, td = out.data, yb.data
                            for i, mf in enumerate(mfns):
                                msum[i] = msum[i] + mf(od, td)
                        if ebar is not None:
                            ebar.update(1)
                    st.batch_losses = losses
                    if not seen:
                        raise ValueError("fit: the training data gave no batches (a DataLoader "
                                         "with drop_last and fewer rows than batch_size?)")
                    sums = [tot] + msum
                    divs = [seen] * len(sums)
                    if val is not None:
                        vsums, vseen, vchecks = self._eval_sums(val, steps, lossf, mfns)
                        sums += vsums
                        divs += [vseen] * len(vsums)
                        checks += vchecks
                    vals = _host_floats(be, sums, checks)  # the epoch's one host sync
                    logs = {}
                    for k, v, d, lst in zip(keys, vals, divs, lists):
                        v /= d
                        logs[k] = v
                        lst.append(v)
                    history.epoch.append(epoch)
                    history.epoch_seconds.append(time.perf_counter() - t0)
                    if ebar is not None:
                        ebar.set_postfix_str(_fmt(logs), refresh=False)
                        ebar.close()
                    elif bar is not None:
                        bar.set_postfix_str(_fmt(logs), refresh=False)
                        bar.update(1)
                    for c in end_cbs:
                        c.on_epoch_end(epoch, logs)
                    if self.stop_training:
                        history.stopped_epoch = epoch
                        history.stop_reason = self.stop_reason or "callback"
                        break
        finally:
            if bar is not None:
                bar.close()
            st.batch_losses = None
            self.train(was_training)
        for c in cbs:
            c.on_train_end({})
        return history

    def _first_nonfinite_batch(self):
        """Index of the first batch of the current epoch whose loss is NaN or inf (or None)."""
        st = self.__dict__.get("_keras")
        if st is None or not st.batch_losses:
            return None
        be, _ = self._model_backend_dtype()
        xp = be.xp
        losses = be.to_host(xp.stack([xp.asarray(v) for v in st.batch_losses]))
        bad = np.flatnonzero(~np.isfinite(losses))
        return int(bad[0]) if bad.size else None

    # ------------------------------------------------------------------ evaluate / predict
    def _eval_sums(self, src, steps, lossf, mfns):
        """([sum of batch_loss * rows, metric sums...] on the device, rows seen), no grad."""
        was = self.training
        self.eval()
        tot, msum, seen, checks = 0.0, [0.0] * len(mfns), 0, []
        try:
            with _config.no_grad():
                for xb, yb, nb in src.batches():
                    seen += nb
                    out = xb
                    for f in steps:
                        out = f(out)
                    loss = lossf(out, yb)
                    if loss._checks:
                        checks += loss._checks
                    tot = tot + loss.data * nb
                    od, td = out.data, yb.data
                    for i, mf in enumerate(mfns):
                        msum[i] = msum[i] + mf(od, td)
        finally:
            self.train(was)
        return [tot] + msum, seen, checks

    def evaluate(self, x=None, y=None, batch_size=None, verbose=0, return_dict=False):
        """Loss and metrics on ``(x, y)`` (Keras's ``model.evaluate``), in evaluation mode.

        Returns:
            ``[loss, metric, ...]`` as floats, or the loss alone when no metrics were compiled
            (as Keras); a dict ``{"loss": ..., name: ...}`` with ``return_dict=True``.
            ``verbose=1`` prints them on one line (Keras's default is 1; nnx's is 0).
        """
        st = self._setup("evaluate")
        src = self._batches_for(x, y, int(batch_size or 32), st, "evaluate")
        steps, head = self._logits_head(st)
        lossf = st.loss if st.loss_name is None else _loss_fn(st.loss_name, head)
        metrics = self._metrics_for(st, head)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            sums, seen, checks = self._eval_sums(src, steps, lossf, [f for _, f in metrics])
            vals = [v / max(seen, 1) for v in _host_floats(src.backend, sums, checks)]
        names = ["loss"] + [label for label, _ in metrics]
        if verbose:
            print(f"{seen} samples - " + " - ".join(f"{k}: {v:.4f}" for k, v in zip(names, vals)))
        if return_dict:
            return dict(zip(names, vals))
        return vals if metrics else vals[0]

    def predict(self, x, batch_size=None, verbose=0):
        """The model's outputs for ``x`` as a host NumPy array (Keras's ``model.predict``),
        computed in evaluation mode, batch by batch on the model's device, copied to the host
        once. Outputs are what the last layer gives (probabilities after a sigmoid/softmax)."""
        be, dt = self._model_backend_dtype()
        bs = int(batch_size or 32)
        if bs < 1:
            raise ValueError(f"predict: batch_size must be a positive int, got {batch_size!r}")
        if _is_loader(x):
            chunks = (b[0] if isinstance(b, (tuple, list)) else b for b in x)
            xs = None
        else:
            xs = _host_or_device(x, be, dt, "x") if not (
                be.name != "numpy" and _host_nbytes(x) > RESIDENT_BYTES) else _host_array(x, dt)
            chunks = (xs[s:s + bs] for s in range(0, int(xs.shape[0]), bs))
        bar = _tqdm(total=-(-int(xs.shape[0]) // bs), desc="Predict", unit="batch") \
            if verbose and xs is not None else None
        outs = []
        was = self.training
        self.eval()
        try:
            with _config.no_grad(), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                for c in chunks:
                    xb = _wrap(_host_or_device(c, be, dt, "x"), be)
                    outs.append(self(xb).data)
                    if bar is not None:
                        bar.update(1)
        finally:
            self.train(was)
            if bar is not None:
                bar.close()
        if not outs:
            raise ValueError("predict: x has no samples")
        out = outs[0] if len(outs) == 1 else be.xp.concatenate(outs, axis=0)
        return np.asarray(be.to_host(out))

    def predict_on_batch(self, x):
        return self.predict(x, batch_size=max(1, len(x)))

    # ------------------------------------------------------------------ weights
    def get_weights(self):
        """The parameters as host NumPy arrays, in ``state_dict`` order and layout
        (weights are (out, in), PyTorch's layout, where Keras's kernels are (in, out))."""
        return [np.array(p.numpy(), copy=True) for p in self.parameters()]

    def set_weights(self, weights):
        """Copy ``weights`` (as ``get_weights`` gives) into the parameters, in place."""
        params = list(self.parameters())
        weights = list(weights)
        if len(weights) != len(params):
            raise ValueError(f"set_weights: {len(weights)} arrays given, the model has "
                             f"{len(params)} parameters")
        for i, (p, w) in enumerate(zip(params, weights)):
            if tuple(np.shape(w)) != p.shape:
                raise ShapeError(f"set_weights: array {i} has shape {tuple(np.shape(w))}, "
                                 f"parameter {i} has {p.shape}")
        for p, w in zip(params, weights):
            p.data[...] = p._backend.asarray(_host_array(w, p.dtype))

    # ------------------------------------------------------------------ architecture as data
    def get_config(self):
        """The architecture as a JSON-able dict: ``{"class": "Sequential", "dtype": ...,
        "layers": [{"class": "Dense", "units": 2, "activation": "sigmoid", ...}, ...]}``."""
        _, dt = self._model_backend_dtype()
        return {"class": "Sequential", "dtype": np.dtype(dt).name,
                "layers": [layer_config(m) for m in self]}

    @classmethod
    def from_config(cls, config, device=None, dtype=None):
        """Build a model from ``get_config``'s dict (fresh weights)."""
        if not isinstance(config, dict) or config.get("class") != "Sequential" \
                or not isinstance(config.get("layers"), list):
            raise CheckpointError("bad model config: expected {'class': 'Sequential', "
                                  "'layers': [...]}")
        if dtype is not None:
            try:
                dtype = np.dtype(dtype)
            except TypeError:
                raise CheckpointError(f"bad model config: unknown dtype {dtype!r}") from None
            if dtype.kind != "f":
                raise CheckpointError(f"bad model config: dtype {dtype} is not floating")
        model = cls()
        for lc in config["layers"]:
            model.add(layer_from_config(lc, device=device, dtype=dtype))
        return model

    def save(self, path, extra=None):
        """Write the architecture (as data) and the weights to ``path`` through ``nnx.save``;
        ``extra`` is a dict of anything ``nnx.save`` stores (e.g. preprocessing statistics).
        Reload with ``nnx.load_model(path)``. Nothing is pickled."""
        from . import serialization

        serialization.save({"format": _FORMAT, "config": self.get_config(),
                            "state_dict": self.state_dict(), "extra": dict(extra or {})}, path)

    # ------------------------------------------------------------------ summary
    def summary(self, print_fn=None):
        """Print a table of the layers, their output shapes and parameter counts."""
        rows = [("Layer (type)", "Output Shape", "Param #")]
        feats = None
        total = trainable = 0
        for name, m in self.named_children():
            n = sum(p.size for p in m.parameters())
            total += n
            trainable += sum(p.size for p in m.parameters() if p.requires_grad)
            out = getattr(m, "out_features", None)
            if out is not None:
                feats = out
            elif not _shape_preserving(m):
                feats = None
            label = type(m).__name__
            if getattr(m, "activation", None) not in (None, "linear") and hasattr(m, "units"):
                label += f" ({m.activation})"
            rows.append((f"{name} {label}", f"(None, {feats})" if feats else "?", f"{n:,}"))
        w = [max(len(r[i]) for r in rows) + 2 for i in range(3)]
        line = "=" * sum(w)
        out = [line]
        for i, r in enumerate(rows):
            out.append("".join(c.ljust(w[j]) for j, c in enumerate(r)))
            if i == 0:
                out.append(line)
        out += [line, f"Total params: {total:,}", f"Trainable params: {trainable:,}",
                f"Non-trainable params: {total - trainable:,}"]
        text = "\n".join(out)
        (print_fn or print)(text)
        return None


# ============================================================================ helpers
def _fused_step(m, act):
    name, slope = fused_args(act)

    def step(x):
        return m.forward(x, name, slope)
    return step


def _linear_step(m):
    def step(x):
        return m.forward(x, "linear")
    return step


def _probs_fn(head, backend):
    """Probabilities from what the loss sees (for metrics such as mse on a fused model)."""
    if head == "sigmoid":
        return backend.sigmoid_fwd
    if head == "softmax":
        xp = backend.xp

        def probs(o):
            e = xp.exp(o - o.max(axis=-1, keepdims=True))
            return e / e.sum(axis=-1, keepdims=True)
        return probs
    return lambda o: o


def _bce_module_types():
    from .nn import loss as L

    return (L.BCELoss, L.BCEWithLogitsLoss)


def _shape_preserving(m):
    from .nn import layers

    return isinstance(m, (layers.Sigmoid, layers.ReLU, layers.Tanh, layers.LeakyReLU,
                          layers.Softmax, layers.LogSoftmax, layers.Dropout, layers.Identity))


def _host_array(a, dtype):
    a = host_array(a)
    return a if dtype is None or a.dtype == dtype else a.astype(dtype)


def _split_last(x, y, fraction):
    """Keras's validation_split: the last ``fraction`` of the rows, before any shuffling."""
    if y is None:
        raise ValueError("fit: y (the targets) is missing")
    n = len(x)
    if len(y) != n:
        raise ValueError(f"fit: x has {n} samples but y has {len(y)}")
    split_at = int(round(n * (1.0 - float(fraction))))
    if split_at <= 0 or split_at >= n:
        raise ValueError(f"fit: validation_split={fraction} leaves {split_at} training and "
                         f"{n - split_at} validation samples out of {n}; both must be >= 1")
    return x[:split_at], y[:split_at], (x[split_at:], y[split_at:])


def _host_floats(be, arrays, checks=()):
    """Python floats of device scalars, in one device-to-host transfer. ``checks`` are the
    deferred input checks of the losses (``(device flag, make_error)``, e.g. labels out of
    range on a GPU): their flags travel in the same transfer, and the first set one raises."""
    if be.name == "numpy":  # NumPy losses check their inputs at once: checks is empty
        return [float(a) for a in arrays]
    xp = be.xp
    dev = [xp.asarray(a, dtype=xp.float64).reshape(()) for a in arrays]
    dev += [xp.asarray(flag, dtype=xp.float64).reshape(()) for flag, _ in checks]
    host = [float(v) for v in be.to_host(xp.stack(dev))]
    for (_, make_error), flag in zip(checks, host[len(arrays):]):
        if flag:
            raise make_error()
    return host[:len(arrays)]


def _fmt(logs):
    return ", ".join(f"{k}={v:.4f}" for k, v in logs.items())


def _tqdm(**kw):
    from tqdm.auto import tqdm

    kw.setdefault("leave", True)
    kw.setdefault("file", sys.stderr)
    kw.setdefault("dynamic_ncols", True)
    return tqdm(**kw)
