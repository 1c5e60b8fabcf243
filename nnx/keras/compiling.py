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


def resolve_optimizer(optimizer, params):
    """``compile``'s ``optimizer`` argument as an optimizer over ``params``: "sgd" (lr 0.01)
    and "adam" (lr 0.001, eps 1e-7) with Keras's defaults, or an ``nnx.optim`` optimizer that
    holds some of ``params``."""
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
        mine = {id(p) for p in params}
        if not any(id(p) in mine for g in optimizer.param_groups for p in g["params"]):
            raise ValueError("compile: the optimizer holds none of this model's parameters; "
                             "build it with model.parameters() after adding the layers")
        return optimizer
    raise TypeError(f"compile: optimizer must be 'sgd', 'adam' or an nnx.optim "
                    f"optimizer, got {type(optimizer).__name__}")


def make_setup(params, optimizer, loss, metrics):
    """The :class:`Setup` for ``compile(optimizer, loss, metrics)`` on a model whose
    parameters are ``params`` (checked in that order: loss, optimizer, metrics)."""
    name = resolve_loss(loss)
    opt = resolve_optimizer(optimizer, params)
    return Setup(loss, name, opt, resolve_metrics(metrics))
