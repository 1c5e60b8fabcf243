"""``Module`` and ``Parameter``: the PyTorch-style building blocks."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .. import _config
from ..errors import CheckpointError, DTypeError, ShapeError
from ..tensor import Tensor, _init_slots, _is_dtype_name, host_array, tensor


_DATA = Tensor.__dict__["data"]  # Tensor's slot; Parameter wraps it in a property


class Parameter(Tensor):
    """A tensor that is a module's learnable parameter (``requires_grad`` by default).

    ``Parameter(t)`` shares ``t``'s data, as in PyTorch.
    """

    __slots__ = ()

    def __init__(self, data=None, requires_grad=True):
        if data is None:
            data = tensor([])
        if not isinstance(data, Tensor):
            data = tensor(data)
        _init_slots(self, data.data, data._backend, bool(requires_grad))

    def _assign_data(self, value):
        """``p.data = new`` (as in PyTorch). A parameter an optimizer keeps in its flat buffer
        takes same-shape, same-dtype values by copy, so the optimizer keeps updating it; any
        other new storage leaves the buffer, and the optimizer re-flattens on its next step."""
        if isinstance(value, Tensor):
            value = value.data
        flat = self._flat
        if flat is not None:
            cur = _DATA.__get__(self, Parameter)
            if getattr(value, "shape", None) == cur.shape and getattr(value, "dtype", None) == cur.dtype \
                    and self._backend.is_array(value):
                cur[...] = value
                return
            self._set_data(self._backend.asarray(value))
            return
        _DATA.__set__(self, value)
        _config.layout_version[0] += 1

    # the getter is the slot's own C-level __get__ (no Python frame: read on every op's input)
    data = property(_DATA.__get__, _assign_data,
                    doc="The parameter's backend array; assignable (see ``_assign_data``).")

    def _set_data(self, array, backend=None):
        """Replace the storage (device or dtype move): any flat-buffer membership ends."""
        self._flat = None
        self._gbuf = None
        self._grad = None
        _DATA.__set__(self, array)
        _config.layout_version[0] += 1
        if backend is not None:
            self._backend = backend

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


class _Registry(OrderedDict):
    """A module's ``_parameters`` / ``_modules``: every change bumps ``_config.layout_version``,
    so plans cached against the layout (``Sequential``'s fusion plan, ``nnx.linear_chain``)
    follow even direct edits of these dicts."""

    def __setitem__(self, key, value):
        _config.layout_version[0] += 1
        super().__setitem__(key, value)

    def __delitem__(self, key):
        _config.layout_version[0] += 1
        super().__delitem__(key)

    def pop(self, *args):
        _config.layout_version[0] += 1
        return super().pop(*args)

    def popitem(self, last=True):
        _config.layout_version[0] += 1
        return super().popitem(last)

    def clear(self):
        _config.layout_version[0] += 1
        super().clear()

    def setdefault(self, key, default=None):
        _config.layout_version[0] += 1
        return super().setdefault(key, default)

    def update(self, *args, **kwargs):
        _config.layout_version[0] += 1
        super().update(*args, **kwargs)


class Module:
    """Base class of layers and models.

    Assigning a ``Parameter`` or a ``Module`` to an attribute registers it; ``parameters()``,
    ``named_parameters()``, ``state_dict()`` and ``to()`` walk the registered tree.
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", _Registry())
        object.__setattr__(self, "_modules", _Registry())
        object.__setattr__(self, "training", True)

    # ------------------------------------------------------------------ registration
    def __setattr__(self, name, value):
        _config.layout_version[0] += 1
        params = self.__dict__.get("_parameters")
        if params is None:
            raise AttributeError("call Module.__init__() before assigning attributes")
        if isinstance(value, Parameter):
            self._modules.pop(name, None)
            params[name] = value
        elif isinstance(value, Module):
            params.pop(name, None)
            self._modules[name] = value
        elif name in params and value is None:
            params[name] = None
        else:
            if name in params:
                raise TypeError(f"cannot assign {type(value).__name__} to parameter {name!r} "
                                f"(use nnx.nn.Parameter)")
            self._modules.pop(name, None)
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        d = self.__dict__
        if "_parameters" in d and name in d["_parameters"]:
            return d["_parameters"][name]
        if "_modules" in d and name in d["_modules"]:
            return d["_modules"][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        _config.layout_version[0] += 1
        if name in self._parameters:
            del self._parameters[name]
        elif name in self._modules:
            del self._modules[name]
        else:
            object.__delattr__(self, name)

    def register_parameter(self, name, param):
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter: {name!r} must be a Parameter or None")
        self._parameters[name] = param  # the registry bumps the layout version

    def add_module(self, name, module):
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module: {name!r} must be a Module")
        self._modules[str(name)] = module  # the registry bumps the layout version

    register_module = add_module

    # ------------------------------------------------------------------ calling
    def forward(self, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} has no forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ------------------------------------------------------------------ traversal
    def named_modules(self, memo=None, prefix="", remove_duplicate=True):
        if memo is None:
            memo = set()
        if remove_duplicate:
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, m in self._modules.items():
            if m is None:
                continue
            yield from m.named_modules(memo, f"{prefix}.{name}" if prefix else name,
                                       remove_duplicate)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        for name, m in self._modules.items():
            if m is not None:
                yield name, m

    def children(self):
        for _, m in self.named_children():
            yield m

    def named_parameters(self, prefix="", recurse=True, remove_duplicate=True):
        """(name, Parameter) pairs; names are the ``state_dict`` keys ("0.weight", ...).

        A parameter shared by several modules is listed once unless ``remove_duplicate`` is
        false (``state_dict`` lists it under every name, as PyTorch does).
        """
        seen = set()
        mods = self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate) if recurse \
            else [(prefix, self)]
        for mp, m in mods:
            for name, p in m._parameters.items():
                if p is None or (remove_duplicate and id(p) in seen):
                    continue
                seen.add(id(p))
                yield (f"{mp}.{name}" if mp else name), p

    def parameters(self, recurse=True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    # ------------------------------------------------------------------ modes
    def train(self, mode=True):
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    def requires_grad_(self, requires_grad=True):
        for p in self.parameters():
            p.requires_grad = requires_grad
        return self

    def zero_grad(self, set_to_none=True):
        """Clear gradients: to None (default, as PyTorch) or fill with zeros."""
        for p in self.parameters():
            if set_to_none or p._grad is None:
                p._grad = None
            else:
                p._grad.data[...] = 0

    def apply(self, fn):
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    # ------------------------------------------------------------------ devices and dtypes
    def to(self, device=None, dtype=None):
        """Move every parameter to ``device`` and/or cast floating ones to ``dtype``, in place.

        Parameter objects keep their identity (an optimizer made before the move still holds
        them); their gradients are dropped. Returns self.
        """
        if isinstance(device, (np.dtype, type)) or (isinstance(device, str) and _is_dtype_name(device)):
            device, dtype = None, device
        target = None if device is None else _config.backend_for(device)
        dt = _config.to_dtype(dtype)
        for p in self.parameters():
            b = target or p._backend
            arr = p.data
            moved = b is not p._backend
            if moved:
                arr = b.asarray(p._backend.to_host(arr)) if b.name == "numpy" or \
                    p._backend.name == "numpy" else b.asarray(arr)
            if dt is not None and arr.dtype.kind == "f" and arr.dtype != dt:
                arr = arr.astype(dt)
                moved = True
            if moved:
                p._set_data(b.xp.ascontiguousarray(arr), b)
        return self

    def cpu(self):
        return self.to("cpu")

    def cuda(self, index=0):
        return self.to(f"cuda:{index}")

    def double(self):
        return self.to(dtype=np.float64)

    def float(self):
        return self.to(dtype=np.float32)

    def half(self):
        return self.to(dtype=np.float16)

    @property
    def device(self):
        for p in self.parameters():
            return p.device
        return _config.get_device()

    # ------------------------------------------------------------------ state
    def state_dict(self):
        """An ordered dict mapping PyTorch-style keys to host NumPy arrays (copies)."""
        return OrderedDict((k, np.array(p.numpy(), copy=True))
                           for k, p in self.named_parameters(remove_duplicate=False))

    def load_state_dict(self, state_dict, strict=True):
        """Copy values from ``state_dict`` (arrays, tensors, or anything array-like).

        Checks keys, shapes and dtypes first and says what does not match; nothing is changed
        unless everything fits.
        """
        own = OrderedDict(self.named_parameters(remove_duplicate=False))
        given = set(state_dict.keys())
        missing = [k for k in own if k not in given]
        unexpected = [k for k in state_dict if k not in own]
        problems = []
        if strict and (missing or unexpected):
            if missing:
                problems.append(f"missing keys: {missing}")
            if unexpected:
                problems.append(f"unexpected keys: {unexpected}")
        staged = []
        for k, p in own.items():
            if k not in state_dict:
                continue
            v = state_dict[k]
            arr = v.numpy() if isinstance(v, Tensor) else _host_array(v)
            if arr.dtype == object or arr.dtype.kind not in "fiub":
                problems.append(f"{k}: values of dtype {arr.dtype} are not numeric")
                continue
            if tuple(arr.shape) != p.shape:
                problems.append(f"{k}: shape {tuple(arr.shape)} in the state dict, {p.shape} in the model")
                continue
            if arr.dtype != p.dtype:
                problems.append(f"{k}: dtype {arr.dtype} in the state dict, {p.dtype} in the model "
                                f"(convert the model with .double()/.float() or the arrays)")
                continue
            staged.append((p, arr))
        if problems:
            raise CheckpointError(f"load_state_dict into {type(self).__name__}: " + "; ".join(problems))
        for p, arr in staged:
            p.data[...] = p._backend.asarray(arr)
        return _IncompatibleKeys(missing, unexpected)

    # ------------------------------------------------------------------ printing
    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = []
        for name, m in self._modules.items():
            body = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n" + "\n".join(lines) + "\n)"


class _IncompatibleKeys(tuple):
    def __new__(cls, missing, unexpected):
        t = super().__new__(cls, (missing, unexpected))
        t.missing_keys, t.unexpected_keys = missing, unexpected
        return t


def _host_array(v):
    try:
        return host_array(v)
    except Exception as e:  # noqa: BLE001 - report what could not be read
        raise CheckpointError(f"load_state_dict: cannot read a value of type {type(v).__name__}: {e}") from None





__all__ = ["Module", "Parameter", "ShapeError", "DTypeError"]
