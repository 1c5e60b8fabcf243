"""The losses ``compile`` accepts by name, as functions ``f(out Tensor, target Tensor) ->
0-d Tensor`` (the batch mean).

``out`` is (N, C) model outputs or, on the fused path (``head`` "sigmoid" / "softmax", see
``nnx.keras.heads``), the logits before that activation; targets are (N, C) floats, or (N,)
int64 class labels for the sparse loss.
"""
from __future__ import annotations

import numpy as np

from .. import functional as F
from .. import ops
from ..errors import ShapeError
from ..nn import loss as L
from ..tensor import _wrap

__all__ = ["EPSILON", "LOSS_ALIASES", "resolve_loss", "loss_fn", "loss_for", "target_kind",
           "class_weighted"]

# Keras's ``backend.epsilon()``: the clip of probabilities in its cross-entropies.
EPSILON = 1e-7

LOSS_ALIASES = {
    "mse": "mse", "mean_squared_error": "mse",
    "mae": "mae", "mean_absolute_error": "mae",
    "binary_crossentropy": "binary_crossentropy", "bce": "binary_crossentropy",
    "categorical_crossentropy": "categorical_crossentropy",
    "sparse_categorical_crossentropy": "sparse_categorical_crossentropy",
}


def resolve_loss(loss):
    """``compile``'s ``loss`` argument: the canonical name of a loss given by name, or None
    for a callable (a loss module or function, used as given)."""
    if loss is None:
        raise ValueError("compile: give a loss, e.g. loss='binary_crossentropy'")
    if isinstance(loss, str):
        name = LOSS_ALIASES.get(loss.strip().lower())
        if name is None:
            raise ValueError(f"compile: unknown loss {loss!r}; expected one of "
                             f"{sorted(set(LOSS_ALIASES.values()))} or a loss module")
        return name
    if callable(loss):
        return None
    raise TypeError(f"compile: loss must be a name or a callable, got {type(loss).__name__}")


def _clipped_probs(p):
    """Keras's cross-entropies on probabilities: normalized over the last axis, clipped to
    [1e-7, 1 - 1e-7]."""
    return ops.clip(p / ops.sum(p, axis=-1, keepdims=True), EPSILON, 1.0 - EPSILON)


def _cce_on_probs(p, t):
    """Keras's categorical cross-entropy on probabilities: -sum t log p, batch mean."""
    return ops.mean(-ops.sum(t * ops.log(_clipped_probs(p)), axis=-1))


def _sparse_on_probs(p, t):
    return F.nll_loss(ops.log(_clipped_probs(p)), t)


def loss_fn(name, head):
    """The named loss as ``f(out, target) -> Tensor``; ``head`` says whether ``out`` holds
    logits (fused path: "sigmoid" / "softmax") or the model's outputs (None)."""
    if name == "binary_crossentropy":
        return F.binary_cross_entropy_with_logits if head == "sigmoid" else F.binary_cross_entropy
    if name in ("categorical_crossentropy", "sparse_categorical_crossentropy"):
        if head == "softmax":
            return F.cross_entropy
        return _cce_on_probs if name == "categorical_crossentropy" else _sparse_on_probs
    if name == "mse":
        return F.mse_loss
    if name == "mae":
        return F.l1_loss
    raise ValueError(name)


def loss_for(setup, head):
    """The loss ``compile`` set up (``setup``, a ``compiling.Setup``), for outputs of kind
    ``head``: the user's callable as given, or the named loss."""
    return setup.loss if setup.loss_name is None else loss_fn(setup.loss_name, head)


def target_kind(setup):
    """What the targets are for the compiled loss: "binary", "categorical" (one-hot),
    "sparse" (labels), "regression", "labels_or_probs" (CrossEntropyLoss / NLLLoss),
    "binary_module" (BCELoss / BCEWithLogitsLoss) or "custom"."""
    name = setup.loss_name
    if name == "binary_crossentropy":
        return "binary"
    if name == "categorical_crossentropy":
        return "categorical"
    if name == "sparse_categorical_crossentropy":
        return "sparse"
    if name in ("mse", "mae"):
        return "regression"
    if isinstance(setup.loss, (L.CrossEntropyLoss, L.NLLLoss)):
        return "labels_or_probs"
    if isinstance(setup.loss, (L.BCELoss, L.BCEWithLogitsLoss)):
        return "binary_module"
    return "custom"


def _per_sample(name, head):
    """``f(out, target) -> (N,) Tensor``: the named cross-entropy of each sample (the mean over
    the last axis for a binary loss with several outputs), as Keras reduces before weighting."""
    if name == "binary_crossentropy":
        el_fn = F.binary_cross_entropy_with_logits if head == "sigmoid" else F.binary_cross_entropy

        def binary(o, t):
            el = el_fn(o, t, reduction="none")
            return ops.mean(el, axis=-1) if el.ndim > 1 else el
        return binary
    if head == "softmax":
        return lambda o, t: F.cross_entropy(o, t, reduction="none")
    if name == "categorical_crossentropy":
        return lambda p, t: -ops.sum(t * ops.log(_clipped_probs(p)), axis=-1)
    return lambda p, t: F.nll_loss(ops.log(_clipped_probs(p)), t, reduction="none")


def class_weighted(setup, head, class_weight, backend, dtype):
    """The training loss with Keras's ``fit(class_weight=...)``: each sample's loss times the
    weight of its class (``class_weight[c]``; 1 for a class not listed), summed over the batch
    and divided by the batch size. The class of a sample is its label (sparse), the argmax of
    its one-hot target (categorical) or its 0/1 target (binary, one output).

    For the built-in cross-entropies only (ValueError otherwise: a regression loss has no
    classes, and a custom loss sees the raw targets). The weights are looked up on the device:
    no host sync per batch."""
    name = setup.loss_name
    if name not in ("binary_crossentropy", "categorical_crossentropy",
                    "sparse_categorical_crossentropy"):
        raise ValueError(f"fit: class_weight needs a cross-entropy loss given by name "
                         f"(binary, categorical or sparse_categorical_crossentropy), not "
                         f"{name or type(setup.loss).__name__}")
    if not isinstance(class_weight, dict) or not all(
            isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in class_weight):
        raise ValueError(f"fit: class_weight must be a dict {{class index: weight}}, got "
                         f"{class_weight!r}")
    n = max(class_weight) + 1 if class_weight else 1
    host = [float(class_weight.get(c, 1.0)) for c in range(n)]
    xp = backend.xp
    table = backend.asarray(np.asarray(host + [1.0], dtype=dtype))  # unlisted classes -> 1
    per_sample = _per_sample(name, head)

    def loss(out, target):
        t = target.data
        if name == "categorical_crossentropy":
            idx = t.argmax(axis=-1)
        elif name == "binary_crossentropy":
            if t.ndim > 1 and t.shape[-1] != 1:
                raise ShapeError(f"fit: class_weight with binary_crossentropy needs one output "
                                 f"per sample, got targets of shape {tuple(t.shape)}")
            idx = t.reshape(-1).astype(np.int64)
        else:
            idx = t.reshape(-1)
        idx = xp.where((idx >= 0) & (idx < n), idx, n)
        w = _wrap(table[idx], backend)
        el = per_sample(out, target)
        return ops.sum(el * w) * (1.0 / el.shape[0])
    return loss
