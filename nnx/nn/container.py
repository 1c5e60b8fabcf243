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
from .module import Module, Parameter

__all__ = ["Sequential", "ModuleList", "ModuleDict", "ParameterList"]


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

    def __setitem__(self, idx, module):
        """``seq[i] = module`` replaces the i-th child, keeping its name (as PyTorch)."""
        name = list(self._modules)[_index(idx, len(self._modules), "Sequential")]
        self.add_module(name, module)

    def __delitem__(self, idx):
        """``del seq[i]`` (or a slice); the remaining children are renumbered "0", "1", ...
        as PyTorch does."""
        _delete_renumbered(self, idx, "Sequential")

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


def _index(idx, n, what):
    idx = int(idx)
    if not -n <= idx < n:
        raise IndexError(f"{what} index {idx} out of range for {n} entries")
    return idx % n


def _delete_renumbered(container, idx, what):
    """``del container[idx]`` (an index or a slice), the remaining children renamed "0", "1", ..."""
    mods = list(container._modules.values())
    if isinstance(idx, slice):
        del mods[idx]
    else:
        del mods[_index(idx, len(mods), what)]
    container._modules.clear()
    for i, m in enumerate(mods):
        container.add_module(str(i), m)


class _ListBase(Module):
    """The list protocol over one registry (``_store``: "_modules" or "_parameters")."""

    _store = "_modules"

    def __init__(self, values=None):
        super().__init__()
        if values is not None:
            self.extend(values)

    def _entries(self):
        return list(self.__dict__[self._store].values())

    def __len__(self):
        return len(self.__dict__[self._store])

    def __iter__(self):
        return iter(self._entries())

    def __getitem__(self, idx):
        items = self._entries()
        if isinstance(idx, slice):
            return type(self)(items[idx])
        return items[_index(idx, len(items), type(self).__name__)]

    def __iadd__(self, values):
        return self.extend(values)

    def extend(self, values):
        for v in values:
            self.append(v)
        return self


class ModuleList(_ListBase):
    """A list of modules, registered as children "0", "1", ... (``torch.nn.ModuleList``):
    indexing, slicing, ``append``/``extend``/``insert``/``pop``, iteration, ``len``. It has no
    forward: the owning module calls its entries."""

    def _renumber(self, mods):
        self._modules.clear()
        for i, m in enumerate(mods):
            self.add_module(str(i), m)

    def __setitem__(self, idx, module):
        self.add_module(str(_index(idx, len(self), "ModuleList")), module)

    def __delitem__(self, idx):
        _delete_renumbered(self, idx, "ModuleList")

    def __add__(self, other):
        return type(self)(list(self) + list(other))

    def append(self, module):
        self.add_module(str(len(self)), module)
        return self

    def insert(self, index, module):
        mods = list(self._modules.values())
        mods.insert(index, module)
        self._renumber(mods)

    def pop(self, index=-1):
        m = self[index]
        del self[index]
        return m


class ModuleDict(Module):
    """An ordered dict of modules, registered under their keys (``torch.nn.ModuleDict``)."""

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.update(modules)

    def __getitem__(self, key):
        return self._modules[key]

    def __setitem__(self, key, module):
        self.add_module(key, module)

    def __delitem__(self, key):
        del self._modules[key]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(list(self._modules))

    def __contains__(self, key):
        return key in self._modules

    def keys(self):
        return self._modules.keys()

    def items(self):
        return self._modules.items()

    def values(self):
        return self._modules.values()

    def clear(self):
        self._modules.clear()

    def pop(self, key):
        m = self._modules[key]
        del self._modules[key]
        return m

    def update(self, modules):
        pairs = modules.items() if hasattr(modules, "items") else modules
        for k, m in pairs:
            self.add_module(k, m)


class ParameterList(_ListBase):
    """A list of parameters, registered as "0", "1", ... (``torch.nn.ParameterList``); a
    tensor that is not a Parameter is made one (sharing its data)."""

    _store = "_parameters"

    def __setitem__(self, idx, value):
        self.register_parameter(str(_index(idx, len(self), "ParameterList")), _as_parameter(value))

    def append(self, value):
        self.register_parameter(str(len(self)), _as_parameter(value))
        return self

    def extra_repr(self):
        return "\n".join(f"  ({i}): Parameter of shape {tuple(p.shape)}" for i, p in enumerate(self))


def _as_parameter(value):
    return value if isinstance(value, Parameter) else Parameter(value)
