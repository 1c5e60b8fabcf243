"""The metrics ``compile`` accepts, as functions on backend arrays.

A metric function is ``f(out, target) -> 0-d device value``: the SUM over the batch of the
per-sample values (``fit`` and ``evaluate`` add the batches' sums on the device and divide by
the sample count at the epoch's one host sync). ``out`` (N, C) is what the loss sees: logits
when ``head`` is "sigmoid"/"softmax" (fused) or "logits" (a logits loss module), else the
model's output; ``target`` is (N, C) floats or (N,) labels.
"""
from __future__ import annotations

from .. import functional as F
from ..nn import loss as L
from ..tensor import Tensor
from .losses import target_kind

__all__ = ["METRIC_ALIASES", "resolve_metrics", "make_metric", "metrics_for", "probs_fn"]

METRIC_ALIASES = {
    "accuracy": "accuracy", "acc": "accuracy",
    "binary_accuracy": "binary_accuracy", "categorical_accuracy": "categorical_accuracy",
    "sparse_categorical_accuracy": "sparse_categorical_accuracy",
    "mse": "mse", "mean_squared_error": "mse", "mae": "mae", "mean_absolute_error": "mae",
}


def resolve_metrics(metrics):
    """``compile``'s ``metrics`` argument as ``[(history name, canonical name or callable)]``;
    ValueError for an unknown name or a name given twice."""
    if metrics is None:
        metrics = []
    elif isinstance(metrics, (str,)) or callable(metrics):
        metrics = [metrics]
    specs, seen = [], set()
    for m in metrics:
        if isinstance(m, str):
            key = METRIC_ALIASES.get(m.strip().lower())
            if key is None:
                raise ValueError(f"compile: unknown metric {m!r}; expected one of "
                                 f"{sorted(set(METRIC_ALIASES))} or a callable")
            label = m.strip()
        elif callable(m):
            key, label = m, getattr(m, "__name__", type(m).__name__)
        else:
            raise TypeError(f"compile: metrics must be names or callables, got {m!r}")
        if label in seen or label == "loss":
            raise ValueError(f"compile: metric {label!r} given twice")
        seen.add(label)
        specs.append((label, key))
    return specs


def _count_rows(xp, eq):
    """Per-sample mean over the last axis (Keras's metric rule) of a boolean array, summed
    over the batch: the number of True values divided by the row length. ``count_nonzero``
    costs a third of ``.mean(-1).sum()`` on small NumPy batches."""
    c = xp.count_nonzero(eq)
    return c if eq.ndim < 2 or eq.shape[-1] == 1 else c / eq.shape[-1]


def _sum_rows(v):
    return v.mean(axis=-1).sum() if v.ndim > 1 else v.sum()


def make_metric(name, kind, head, probs, xp):
    """The metric ``name`` (a canonical name) as ``f(out, target)``, for targets of ``kind``
    ("binary", "categorical", "sparse" or "other") and outputs of kind ``head``;
    ``probs(out)`` gives probabilities from ``out``."""
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
    """A user's ``fn(y_true, y_pred)`` (per-sample values, or their mean) as a batch sum."""
    def metric(o, t):
        r = fn(t, probs(o))
        if isinstance(r, Tensor):
            r = r.data
        return r * t.shape[0] if getattr(r, "ndim", 0) == 0 else r.sum()
    return metric


def probs_fn(head, backend):
    """Probabilities from what the loss sees (for metrics such as mse on a fused model)."""
    if head == "sigmoid":
        return backend.sigmoid_fwd
    if head == "softmax":
        xp = backend.xp

        def probs(o):
            return F.softmax_array(xp, o, -1)
        return probs
    return lambda o: o


def metrics_for(setup, head, backend):
    """``[(history name, f(out, target))]`` for the metrics ``compile`` set up, on
    ``backend``'s arrays, for outputs of kind ``head``."""
    kind = {"binary": "binary", "categorical": "categorical", "sparse": "sparse"}.get(
        target_kind(setup), "other")
    if isinstance(setup.loss, (L.BCELoss, L.BCEWithLogitsLoss)):
        kind = "binary"
    probs = probs_fn(head, backend)
    fns = []
    for label, spec in setup.metric_specs:
        if callable(spec):
            fns.append((label, _custom_metric(spec, probs)))
        else:
            fns.append((label, make_metric(spec, kind, head, probs, backend.xp)))
    return fns
