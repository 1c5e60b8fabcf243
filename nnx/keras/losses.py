"""The losses ``compile`` accepts by name, as functions ``f(out Tensor, target Tensor) ->
0-d Tensor`` (the batch mean).

``out`` is (N, C) model outputs or, on the fused path (``head`` "sigmoid" / "softmax", see
``nnx.keras.heads``), the logits before that activation; targets are (N, C) floats, or (N,)
int64 class labels for the sparse loss.
"""
from __future__ import annotations

from .. import functional as F
from .. import ops
from ..nn import loss as L

__all__ = ["EPSILON", "LOSS_ALIASES", "resolve_loss", "loss_fn", "loss_for", "target_kind"]

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


def _cce_on_probs(p, t):
    """Keras's categorical cross-entropy on probabilities: normalize, clip at 1e-7, -sum t log p."""
    p = p / ops.sum(p, axis=-1, keepdims=True)
    p = ops.clip(p, EPSILON, 1.0 - EPSILON)
    return ops.mean(-ops.sum(t * ops.log(p), axis=-1))


def _sparse_on_probs(p, t):
    p = p / ops.sum(p, axis=-1, keepdims=True)
    return F.nll_loss(ops.log(ops.clip(p, EPSILON, 1.0 - EPSILON)), t)


def _mae(o, t):
    return ops.mean(ops.abs(o - t))


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
        return _mae
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
