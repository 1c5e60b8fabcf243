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


#: ``compile``'s optimizer names: Keras's defaults on nnx's (PyTorch's) update rules.
OPTIMIZER_NAMES = ("sgd", "adam", "adamw", "rmsprop", "adagrad")
_NAMES_TEXT = "'sgd', 'adam', 'adamw', 'rmsprop', 'adagrad'"


def _named_optimizer(name, params):
    # Keras's default hyperparameters (keras.optimizers.*), on PyTorch's rules. Keras puts eps
    # elsewhere: Adam/AdamW add it to sqrt(v) before the bias correction (PyTorch after), and
    # RMSprop/Adagrad add it inside the square root (PyTorch outside); with eps = 1e-7 the steps
    # differ only where the second moment is about eps^2 (RMSprop, Adam) or eps (Adagrad).
    if name == "sgd":
        return optim.SGD(params, lr=0.01)
    if name == "adam":
        return optim.Adam(params, lr=0.001, eps=1e-7)
    if name == "adamw":  # decoupled decay as Keras: param -= lr * weight_decay * param
        return optim.AdamW(params, lr=0.001, eps=1e-7, weight_decay=0.004)
    if name == "rmsprop":  # Keras's rho is PyTorch's alpha
        return optim.RMSprop(params, lr=0.001, alpha=0.9, eps=1e-7)
    if name == "adagrad":
        return optim.Adagrad(params, lr=0.001, initial_accumulator_value=0.1, eps=1e-7)
    return None


def resolve_optimizer(optimizer, params, layer_of=None):
    """``compile``'s ``optimizer`` argument as an optimizer over ``params``: a name with
    Keras's defaults ("sgd": lr 0.01; "adam": lr 0.001, eps 1e-7; "adamw": lr 0.001,
    weight_decay 0.004, eps 1e-7; "rmsprop": lr 0.001, rho 0.9, eps 1e-7; "adagrad": lr
    0.001, initial_accumulator_value 0.1, eps 1e-7), or an ``nnx.optim`` optimizer that
    holds every trainable (``requires_grad``) one of ``params`` (ValueError naming the layers,
    ``layer_of``: ``{id(param): layer label}``, whose parameters it lacks).

    The named optimizers run nnx's update rules, which are PyTorch's, with Keras's
    hyperparameter values. Keras places eps differently: its Adam/AdamW divide by
    ``sqrt(v) + eps`` before the bias correction of v (PyTorch: ``sqrt(v) / sqrt(1 -
    beta2^t) + eps``), its RMSprop and Adagrad by ``sqrt(v + eps)`` (PyTorch: ``sqrt(v) +
    eps``). The steps agree except where the second moment is tiny (about eps^2, or eps
    for Adagrad). AdamW's decoupled decay is the same in both (``param -= lr * wd * param``)."""
    if optimizer is None:
        raise ValueError(f"compile: give an optimizer: {_NAMES_TEXT} or an nnx.optim optimizer")
    if isinstance(optimizer, str):
        opt = _named_optimizer(optimizer.strip().lower(), params)
        if opt is not None:
            return opt
        raise ValueError(f"compile: unknown optimizer {optimizer!r}; expected one of "
                         f"{_NAMES_TEXT} or an nnx.optim optimizer")
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
    raise TypeError(f"compile: optimizer must be one of {_NAMES_TEXT} or an nnx.optim "
                    f"optimizer, got {type(optimizer).__name__}")


def make_setup(params, optimizer, loss, metrics, layer_of=None):
    """The :class:`Setup` for ``compile(optimizer, loss, metrics)`` on a model whose
    parameters are ``params`` (checked in that order: loss, optimizer, metrics; ``layer_of``
    labels each parameter's layer for the optimizer's error, see ``resolve_optimizer``)."""
    name = resolve_loss(loss)
    opt = resolve_optimizer(optimizer, params, layer_of)
    return Setup(loss, name, opt, resolve_metrics(metrics))
