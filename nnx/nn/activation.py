"""Activation modules, one class per entry of ``backends.activations`` (made from the entry).

``Sigmoid``, ``ReLU``, ``Tanh`` and ``LeakyReLU`` are the classes of the built-in entries; an
activation registered later gets its class from :func:`module_class`. Each carries
``fused_activation`` (the entry name, or None when it cannot run fused after a Linear: a leaky
ReLU with a slope <= 0), so ``Sequential`` runs a ``Linear`` followed by it as one graph node.
"""
from __future__ import annotations

from ..backends import activations as _table

from .. import activations as A
from .module import Module

__all__ = ["ActivationModule", "module_class", "Sigmoid", "ReLU", "Tanh", "LeakyReLU", "fusable",
           "names"]


class _ActivationModule(Module):
    """Base of the activation modules: ``forward(x) = act(x)`` elementwise.

    Shape: input (*) -> output (*), same shape and dtype.
    """

    entry: _table.Activation  # set on each subclass

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
    """An activation with a ``negative_slope`` (leaky ReLU)."""

    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = float(negative_slope)

    @property
    def fused_activation(self):
        return self.entry.name if self.negative_slope > 0 else None

    def forward(self, x):
        return A.activation(x, self.entry.name, self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


_CLASSES: dict[str, type] = {}


def module_class(name: str) -> type:
    """The ``nnx.nn`` module class of the activation entry ``name`` (made once, on first use)."""
    cls = _CLASSES.get(name)
    if cls is None:
        entry = _table.get(name)
        base = _SlopeActivation if entry.has_slope else ActivationModule
        doc = (entry.doc or f"The {entry.name} activation, elementwise.") + \
            "\n\n    Shape: input (*) -> output (*), same shape and dtype.\n"
        cls = type(entry.module, (base,), {"entry": entry, "__doc__": doc,
                                           "__module__": __name__, "__qualname__": entry.module})
        _CLASSES[name] = cls
    return cls


Sigmoid = module_class("sigmoid")
ReLU = module_class("relu")
Tanh = module_class("tanh")
LeakyReLU = module_class("leaky_relu")


def fusable(m) -> bool:
    """Whether ``m`` is an activation module a Linear before it may run fused: one of the
    classes made here, not a subclass with its own ``forward`` nor an instance whose
    ``forward`` was replaced, and (leaky ReLU) with a positive slope."""
    return isinstance(m, ActivationModule) and "forward" not in m.__dict__ \
        and type(m).forward in (ActivationModule.forward, _SlopeActivation.forward) \
        and m.fused_activation is not None


def names() -> tuple[str, ...]:
    """The activation names a layer's ``activation=`` accepts (Keras names included)."""
    out = [_table.LINEAR]
    for entry in _table.entries():
        out.append(entry.name)
        if entry.keras and entry.keras != entry.name:
            out.append(entry.keras)
    return tuple(out) + ("softmax",)
