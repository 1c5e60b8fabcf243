"""``Sequential``: PyTorch's container, a chain of modules applied in order.

This is the plain container (children, indexing, the fused forward). Keras's model API
(``add``, ``compile``, ``fit``, ...) extends it in ``nnx.keras.Sequential``, which is what
``nnx.nn.Sequential`` names once ``nnx`` is imported.
"""
from __future__ import annotations

from collections import OrderedDict

from ..errors import CheckpointError
from . import fusion
from .config import layer_from_config
from .module import Module

__all__ = ["Sequential"]


class Sequential(Module):
    """A chain of modules applied in order; indexable like a list.

    ``Sequential(m0, m1, ...)`` names the children "0", "1", ... (so ``state_dict`` keys are
    ``"0.weight"``, ...); ``Sequential(OrderedDict([(name, module), ...]))`` names them.

    A ``Linear`` directly followed by a ``Sigmoid``, ``ReLU``, ``Tanh`` or ``LeakyReLU`` runs as
    one graph node (matmul, then one fused bias+activation pass), and each stretch of such
    layers as one ``LinearChain`` node; the results are the same as layer by layer.

    Shape:
        input: what the first module takes -> output: what the last module gives.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.Sigmoid(), nn.Linear(2, 1), nn.Sigmoid())
    """

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            for name, m in modules[0].items():
                self.add_module(name, m)
        else:
            for i, m in enumerate(modules):
                self.add_module(str(i), m)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, idx):
        mods = list(self._modules.items())
        if isinstance(idx, slice):
            return type(self)(OrderedDict(mods[idx]))
        if not -len(mods) <= idx < len(mods):
            raise IndexError(f"Sequential index {idx} out of range for {len(mods)} modules")
        return mods[idx][1]

    def append(self, module):
        self.add_module(str(len(self._modules)), module)
        return self

    # ------------------------------------------------------------------ shapes and configs
    def output_shape(self, input_shape):
        """The children's ``output_shape`` folded in order: the per-sample shape the chain
        outputs for an input of per-sample shape ``input_shape`` (or None)."""
        for m in self:
            input_shape = m.output_shape(input_shape)
        return input_shape

    def get_config(self):
        """``{"class": "Sequential", "layers": [each child's get_config()]}``."""
        return {"class": "Sequential", "layers": [m.get_config() for m in self]}

    @staticmethod
    def _check_config(config):
        if not isinstance(config, dict) or config.get("class") != "Sequential" \
                or not isinstance(config.get("layers"), list):
            raise CheckpointError("bad model config: expected {'class': 'Sequential', "
                                  "'layers': [...]}")

    @classmethod
    def from_config(cls, config, device=None, dtype=None):
        """The chain ``get_config``'s dict describes, with fresh parameters."""
        cls._check_config(config)
        return cls(*(layer_from_config(c, device=device, dtype=dtype) for c in config["layers"]))

    # ------------------------------------------------------------------ the fused forward
    def _plan(self):
        """[(module, activation)]: a Linear followed by a fusable activation becomes one entry
        (activation None otherwise); cached until this container or a child changes."""
        return fusion.plan(self)[0]

    forward = fusion.forward  # each fusable stretch as one graph node (nnx.nn.fusion)
