"""Activation modules, one class per entry of ``backends.activations`` (made from the entry).

``Sigmoid``, ``ReLU``, ``Tanh``, ``LeakyReLU``, ``SiLU`` and ``ELU`` are the classes of the
built-in entries; an activation registered later gets its class from :func:`module_class`.
``GELU`` (two entries, by ``approximate``) and ``Softplus`` (its default beta and threshold are
an entry) are written out. Each carries ``fused_activation`` (the entry name, or None when it
cannot run fused after a Linear: a leaky ReLU with a slope <= 0, a Softplus with another beta)
and ``fused_slope`` (the entry's scalar parameter), so ``Sequential`` runs a ``Linear`` followed
by it as one graph node.
"""
from __future__ import annotations

import inspect

from ..backends import activations as _table

from .. import activations as A
from .module import Module

__all__ = ["ActivationModule", "module_class", "Sigmoid", "ReLU", "Tanh", "LeakyReLU", "GELU",
           "SiLU", "ELU", "Softplus", "fusable", "names"]


class _ActivationModule(Module):
    """Base of the activation modules: ``forward(x) = act(x)`` elementwise.

    Shape: input (*) -> output (*), same shape and dtype.
    """

    entry: _table.Activation  # set on each subclass

    #: The scalar the fused kernels take (the entry's parameter; unused by most entries).
    fused_slope = 0.01

    @property
    def fused_activation(self):
        """The entry name when a Linear before this module may fuse it, else None."""
        return self.entry.name

    def forward(self, x):
        return A.activation(x, self.entry.name)

    def output_shape(self, input_shape):
        return input_shape


ActivationModule = _ActivationModule  # (a private class name: no entry in the layer table)


class _SlopeActivation(ActivationModule):
    """An activation with one scalar parameter, kept under the entry's ``param`` name
    (``LeakyReLU(negative_slope)``, ``ELU(alpha)``); each class gets an ``__init__`` taking it."""

    @property
    def fused_slope(self):
        return self.__dict__[self.entry.param]

    @property
    def fused_activation(self):
        return self.entry.name if self.fused_slope > 0 else None

    def forward(self, x):
        return A.activation(x, self.entry.name, self.fused_slope)

    def extra_repr(self):
        return f"{self.entry.param}={self.fused_slope}"


def _param_init(entry):
    """``__init__(self, <entry.param>=<entry.param_default>)`` of a ``_SlopeActivation``."""
    name = entry.param
    sig = inspect.Signature([
        inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                          default=float(entry.param_default))])

    def __init__(self, *args, **kwargs):
        value = sig.bind(self, *args, **kwargs)
        value.apply_defaults()
        ActivationModule.__init__(self)
        setattr(self, name, float(value.arguments[name]))

    __init__.__signature__ = sig
    return __init__


class GELU(ActivationModule):
    """GELU, ``x * Phi(x)`` with Phi the standard normal CDF (``approximate='none'``), or its
    tanh approximation ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` (``'tanh'``), as
    ``torch.nn.GELU``. Fused after a Linear either way.

    Shape: input (*) -> output (*), same shape and dtype.
    """

    def __init__(self, approximate="none"):
        super().__init__()
        A.gelu_entry(approximate)  # ValueError for anything but 'none' / 'tanh'
        self.approximate = approximate

    @property
    def entry(self):
        return A.gelu_entry(self.approximate)

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class Softplus(ActivationModule):
    """``log(1 + exp(beta x)) / beta``, and x where ``beta x > threshold``, as
    ``torch.nn.Softplus``. The defaults (beta 1, threshold 20) run fused after a Linear.

    Shape: input (*) -> output (*), same shape and dtype.
    """

    entry = _table.get("softplus")

    def __init__(self, beta=1.0, threshold=20.0):
        super().__init__()
        self.beta, self.threshold = float(beta), float(threshold)

    @property
    def fused_activation(self):
        return "softplus" if self.beta == 1 and self.threshold == 20 else None

    def forward(self, x):
        return A.softplus(x, self.beta, self.threshold)

    def extra_repr(self):
        return f"beta={self.beta}, threshold={self.threshold}"


_CLASSES: dict[str, type] = {"gelu": GELU, "gelu_tanh": GELU, "softplus": Softplus}


def module_class(name: str) -> type:
    """The ``nnx.nn`` module class of the activation entry ``name`` (made once, on first use)."""
    cls = _CLASSES.get(name)
    if cls is None:
        entry = _table.get(name)
        base = _SlopeActivation if entry.has_slope else ActivationModule
        doc = (entry.doc or f"The {entry.name} activation, elementwise.") + \
            "\n\n    Shape: input (*) -> output (*), same shape and dtype.\n"
        body = {"entry": entry, "__doc__": doc, "__module__": __name__,
                "__qualname__": entry.module}
        if entry.has_slope:
            body["__init__"] = _param_init(entry)
        cls = type(entry.module, (base,), body)
        _CLASSES[name] = cls
    return cls


Sigmoid = module_class("sigmoid")
ReLU = module_class("relu")
Tanh = module_class("tanh")
LeakyReLU = module_class("leaky_relu")
SiLU = module_class("silu")
ELU = module_class("elu")
_FUSABLE_FORWARDS = (ActivationModule.forward, _SlopeActivation.forward, Softplus.forward)


def fusable(m) -> bool:
    """Whether ``m`` is an activation module a Linear before it may run fused: one of the
    classes made here, not a subclass with its own ``forward`` nor an instance whose
    ``forward`` was replaced, with a positive parameter (leaky ReLU's slope, ELU's alpha) and
    (Softplus) PyTorch's default beta and threshold."""
    return isinstance(m, ActivationModule) and "forward" not in m.__dict__ \
        and type(m).forward in _FUSABLE_FORWARDS and m.fused_activation is not None


def names() -> tuple[str, ...]:
    """The activation names a layer's ``activation=`` accepts (Keras names included)."""
    out = [_table.LINEAR]
    for entry in _table.entries():
        out.append(entry.name)
        if entry.keras and entry.keras != entry.name:
            out.append(entry.keras)
    return tuple(out) + ("softmax",)
