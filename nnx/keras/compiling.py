"""What ``Sequential.compile`` decides: the loss, the optimizer and the metrics (a
:class:`Setup`), from Keras's names or nnx objects."""
from __future__ import annotations

from .. import optim
from .losses import resolve_loss
from .metrics import resolve_metrics

__all__ = ["Setup", "make_setup", "resolve_optimizer"]


class Setup:
    """What ``compile`` decided (a plain object: a Module attribute would become a child).

    Attributes:
        loss: the ``loss`` argument as given (a name or a callable).
        loss_name: its canonical name (``losses.LOSS_ALIASES``), or None for a callable.
        optimizer: the ``nnx.optim`` optimizer.
        metric_specs: ``[(history name, canonical name or callable)]``.
        batch_losses: during ``fit``, the current epoch's per-batch losses (0-d device
            arrays), kept to find the first non-finite one; None otherwise.
    """

    def __init__(self, loss, loss_name, optimizer, metric_specs):
        self.loss, self.loss_name = loss, loss_name
        self.optimizer = optimizer
        self.metric_specs = metric_specs  # [(history name, spec)]
        self.batch_losses = None


def resolve_optimizer(optimizer, params, layer_of=None):
    """``compile``'s ``optimizer`` argument as an optimizer over ``params``: "sgd" (lr 0.01)
    and "adam" (lr 0.001, eps 1e-7) with Keras's defaults, or an ``nnx.optim`` optimizer that
    holds every trainable (``requires_grad``) one of ``params`` (ValueError naming the layers,
    ``layer_of``: ``{id(param): layer label}``, whose parameters it lacks)."""
    if optimizer is None:
        raise ValueError("compile: give an optimizer: 'sgd', 'adam' or an nnx.optim optimizer")
    if isinstance(optimizer, str):
        o = optimizer.strip().lower()
        if o == "sgd":
            return optim.SGD(params, lr=0.01)
        if o == "adam":
            return optim.Adam(params, lr=0.001, eps=1e-7)
        raise ValueError(f"compile: unknown optimizer {optimizer!r}; expected 'sgd', "
                         f"'adam' or an nnx.optim optimizer")
    if isinstance(optimizer, optim.Optimizer):
        held = {id(p) for g in optimizer.param_groups for p in g["params"]}
        if not any(id(p) in held for p in params):
            raise ValueError("compile: the optimizer holds none of this model's parameters; "
                             "build it with model.parameters() after adding the layers")
        trainable = [p for p in params if p.requires_grad]
        missing = [p for p in trainable if id(p) not in held]
        if missing:
            layers = []
            for p in missing:
                label = (layer_of or {}).get(id(p), "?")
                if label not in layers:
                    layers.append(label)
            n, total = sum(p.size for p in missing), sum(p.size for p in trainable)
            raise ValueError(
                f"compile: the optimizer does not hold the parameters of layer(s) "
                f"{', '.join(layers)} ({n:,} of the model's {total:,} trainable parameter "
                f"values), so they would never train (it was probably made before those "
                f"layers were added or built). Make the optimizer after the model is built, "
                f"from all its parameters: opt = nnx.optim.Adam(model.parameters()), then "
                f"model.compile(optimizer=opt, ...); or pass optimizer='adam'. To keep a layer "
                f"fixed on purpose, set requires_grad_(False) on its parameters first.")
        return optimizer
    raise TypeError(f"compile: optimizer must be 'sgd', 'adam' or an nnx.optim "
                    f"optimizer, got {type(optimizer).__name__}")


def make_setup(params, optimizer, loss, metrics, layer_of=None):
    """The :class:`Setup` for ``compile(optimizer, loss, metrics)`` on a model whose
    parameters are ``params`` (checked in that order: loss, optimizer, metrics; ``layer_of``
    labels each parameter's layer for the optimizer's error, see ``resolve_optimizer``)."""
    name = resolve_loss(loss)
    opt = resolve_optimizer(optimizer, params, layer_of)
    return Setup(loss, name, opt, resolve_metrics(metrics))
