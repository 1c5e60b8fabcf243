"""``Module`` and ``Parameter``: the PyTorch-style building blocks."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .. import _config
from ..cache import notify
from . import config as _layer_config
from ..errors import CheckpointError, DTypeError, ShapeError
from ..tensor import DeviceDtypeShorthands, Tensor, _init_slots, _is_dtype_name, _wrap, host_array, tensor


_DATA = Tensor.__dict__["data"]  # Tensor's slot; Parameter wraps it in a property


class Parameter(Tensor):
    """A tensor that is a module's learnable parameter (``requires_grad`` by default).

    ``Parameter(t)`` shares ``t``'s data, as in PyTorch.

    An optimizer may keep a parameter in a flat buffer (``nnx.optim``): ``_bind_flat`` makes
    its data a view of the optimizer's flat data array and its gradient a view of the flat
    gradient array, so a backward writes the gradient there and one fused update covers every
    parameter. ``_flat_owner`` tells the optimizer whether the parameter is still bound to it;
    a new storage (``p.data = other_shape``, ``model.to(...)``) unbinds it.
    """

    # the flat buffer's owner, the gradient view (a Tensor), the caches computed from this
    # parameter (``nnx.cache``, a weak set or None)
    __slots__ = ("_owner", "_grad_view", "_watchers")

    def __new__(cls, *args, **kwargs):
        self = super().__new__(cls)
        self._owner = None  # first: the data setter reads it (copies and unpickling, too)
        self._grad_view = None
        self._watchers = None
        return self

    def _storage_changed(self):
        """The data is a new array: empty the caches that depend on this parameter."""
        notify(self._watchers)

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
        if self._owner is not None:
            cur = _DATA.__get__(self, Parameter)
            if getattr(value, "shape", None) == cur.shape and getattr(value, "dtype", None) == cur.dtype \
                    and self._backend.is_array(value):
                cur[...] = value
                return
            self._set_data(self._backend.asarray(value))
            return
        _DATA.__set__(self, value)
        self._storage_changed()

    # the getter is the slot's own C-level __get__ (no Python frame: read on every op's input)
    data = property(_DATA.__get__, _assign_data,
                    doc="The parameter's backend array; assignable (see ``_assign_data``).")

    def _set_data(self, array, backend=None):
        """Replace the storage (device or dtype move): leaves any flat buffer, drops the
        gradient."""
        self._leave_flat()
        self._grad = None
        _DATA.__set__(self, array)
        self._storage_changed()
        if backend is not None:
            self._backend = backend

    # ------------------------------------------------------------------ flat buffers
    def _bind_flat(self, owner, data_view, grad_view):
        """Keep this parameter in ``owner``'s flat buffer (an optimizer's).

        ``data_view`` and ``grad_view`` are arrays of this parameter's shape and dtype on its
        backend (views of the flat data and gradient arrays). The current values are copied
        into ``data_view``, which becomes ``data``; ``grad_view`` becomes the gradient's storage
        (a gradient set now is copied into it). Leaves any earlier flat buffer. ``owner`` is
        told, through ``owner._param_left(self)``, when the parameter leaves its buffer.
        """
        data_view[...] = _DATA.__get__(self, Parameter)
        old_grad = self._grad
        view = _wrap(grad_view, self._backend)  # the gradient's Tensor, reused every step
        if old_grad is not None:
            grad_view[...] = old_grad.data
            self._grad, self._grad_owned = view, True
        self._leave_flat()
        _DATA.__set__(self, data_view)
        self._storage_changed()
        self._owner, self._grad_view = owner, view

    def _leave_flat(self):
        """End the flat-buffer membership, if any: the owner hears it (``owner._param_left``)
        and re-flattens on its next step; the gradient's storage is no longer the view."""
        owner = self._owner
        if owner is not None:
            self._owner = self._grad_view = None
            owner._param_left(self)

    def _flat_owner(self):
        """The owner of the flat buffer this parameter lives in (``_bind_flat``), or None."""
        return self._owner

    def _grad_storage(self):
        return self._grad_view

    def _take_grad_storage(self):
        view = self._grad_view
        if view is None or self._grad is not None:
            return None
        self._grad, self._grad_owned = view, True
        return view.data

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


class _Registry(OrderedDict):
    """A module's ``_parameters`` / ``_modules``: every change empties the caches watching this
    registry (``nnx.cache``: ``Sequential``'s fusion plan, ``nnx.nn.fusion``'s layer specs), so
    they follow even direct edits of these dicts (and copies sharing them)."""

    def _changed(self):
        notify(self.__dict__.get("_watchers"))

    def __reduce__(self):  # copies and pickles leave the watchers behind
        cls, args, _state, items, pairs = super().__reduce__()
        return cls, args, None, items, pairs

    def __setitem__(self, key, value):
        self._changed()
        super().__setitem__(key, value)

    def __delitem__(self, key):
        self._changed()
        super().__delitem__(key)

    def pop(self, *args):
        self._changed()
        return super().pop(*args)

    def popitem(self, last=True):
        self._changed()
        return super().popitem(last)

    def clear(self):
        self._changed()
        super().clear()

    def setdefault(self, key, default=None):
        self._changed()
        return super().setdefault(key, default)

    def update(self, *args, **kwargs):
        self._changed()
        super().update(*args, **kwargs)

    def move_to_end(self, key, last=True):
        self._changed()
        super().move_to_end(key, last)

    def __ior__(self, other):
        self._changed()
        return super().__ior__(other)


class Module(DeviceDtypeShorthands):
    """Base class of layers and models.

    Assigning a ``Parameter`` or a ``Module`` to an attribute registers it; ``parameters()``,
    ``named_parameters()``, ``state_dict()`` and ``to()`` walk the registered tree.
    """

    _watchers = None  # the caches computed from this module (``nnx.cache``), a weak set

    def __init__(self):
        object.__setattr__(self, "_parameters", _Registry())
        object.__setattr__(self, "_modules", _Registry())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent_buffers_set", set())
        object.__setattr__(self, "training", True)

    def _changed(self):
        """Empty the caches computed from this module (its layout or settings changed)."""
        notify(self.__dict__.get("_watchers"))

    def __getstate__(self):
        # caches (and who watches this module) are rebuilt on use: never copied or pickled
        return {k: v for k, v in self.__dict__.items() if k not in ("_watchers", "_fusion_plan")}

    # ------------------------------------------------------------------ registration
    def __setattr__(self, name, value):
        notify(self.__dict__.get("_watchers"))
        params = self.__dict__.get("_parameters")
        if params is None:
            raise AttributeError("call Module.__init__() before assigning attributes")
        buffers = self.__dict__.get("_buffers")
        if buffers is not None and name in buffers:
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"cannot assign {type(value).__name__} to buffer {name!r} "
                                f"(a Tensor or None)")
            buffers[name] = value
        elif isinstance(value, Parameter):
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
        if "_buffers" in d and name in d["_buffers"]:
            return d["_buffers"][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        self._changed()
        if name in self._parameters:
            del self._parameters[name]
        elif name in self._modules:
            del self._modules[name]
        elif name in self.__dict__.get("_buffers", ()):
            del self._buffers[name]
            self._non_persistent_buffers_set.discard(name)
        else:
            object.__delattr__(self, name)

    def register_parameter(self, name, param):
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter: {name!r} must be a Parameter or None")
        self._parameters[name] = param  # the registry empties the caches watching this module

    def register_buffer(self, name, tensor, persistent=True):
        """A tensor that is part of the module's state but not a parameter (running
        statistics, masks): reachable as ``self.name``, listed by ``buffers()``, moved by
        ``to()``/``double()``, and saved in ``state_dict`` unless ``persistent=False``."""
        if "." in name or not name:
            raise KeyError(f"register_buffer: bad buffer name {name!r}")
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"register_buffer: {name!r} must be a Tensor or None, got "
                            f"{type(tensor).__name__}")
        if name in self._parameters or name in self._modules or \
                (name in self.__dict__ and name not in self.__dict__.get("_buffers", ())):
            raise KeyError(f"register_buffer: attribute {name!r} already exists")
        if "_buffers" not in self.__dict__:  # a module pickled before buffers existed
            object.__setattr__(self, "_buffers", OrderedDict())
            object.__setattr__(self, "_non_persistent_buffers_set", set())
        self._changed()
        self._buffers[name] = tensor
        if persistent:
            self._non_persistent_buffers_set.discard(name)
        else:
            self._non_persistent_buffers_set.add(name)

    def add_module(self, name, module):
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module: {name!r} must be a Module")
        self._modules[str(name)] = module  # the registry empties the caches watching this module

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
        return self._named_members(lambda m: m._parameters, prefix, recurse, remove_duplicate)

    def parameters(self, recurse=True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix="", recurse=True, remove_duplicate=True):
        """(name, Tensor) pairs of the registered buffers (``register_buffer``)."""
        return self._named_members(lambda m: m.__dict__.get("_buffers", {}), prefix, recurse,
                                   remove_duplicate)

    def _named_members(self, members, prefix, recurse, remove_duplicate):
        seen = set()
        mods = self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate) if recurse \
            else [(prefix, self)]
        for mp, m in mods:
            for name, t in members(m).items():
                if t is None or (remove_duplicate and id(t) in seen):
                    continue
                seen.add(id(t))
                yield (f"{mp}.{name}" if mp else name), t

    def buffers(self, recurse=True):
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def _state_items(self):
        """(key, tensor) of what ``state_dict`` holds: per module, its parameters then its
        persistent buffers (PyTorch's order)."""
        for mp, m in self.named_modules(remove_duplicate=False):
            skip = m.__dict__.get("_non_persistent_buffers_set", ())
            for name, t in list(m._parameters.items()) + list(m.__dict__.get("_buffers", {}).items()):
                if t is not None and name not in skip:
                    yield (f"{mp}.{name}" if mp else name), t

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
        for m in self.modules():
            bufs = m.__dict__.get("_buffers", {})
            for name, t in bufs.items():
                if t is None:
                    continue
                b = target or t._backend
                arr = t.data
                if b is not t._backend:
                    arr = b.asarray(t._backend.to_host(arr))
                if dt is not None and arr.dtype.kind == "f" and arr.dtype != dt:
                    arr = arr.astype(dt)
                if arr is not t.data:
                    bufs[name] = _wrap(b.xp.ascontiguousarray(arr), b)
        return self

    @property
    def device(self):
        for p in self.parameters():
            return p.device
        return _config.get_device()

    # ------------------------------------------------------------------ state
    def state_dict(self):
        """An ordered dict mapping PyTorch-style keys to host NumPy arrays (copies)."""
        return OrderedDict((k, np.array(p.numpy(), copy=True)) for k, p in self._state_items())

    def load_state_dict(self, state_dict, strict=True):
        """Copy values from ``state_dict`` (arrays, tensors, or anything array-like).

        Checks keys, shapes and dtypes first and says what does not match; nothing is changed
        unless everything fits.
        """
        own = OrderedDict(self._state_items())
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

    # ------------------------------------------------------------------ layers as data
    def __init_subclass__(cls, **kwargs):
        """Enter nnx's own layer classes into the table saved architectures load from
        (``nnx.nn.config.LAYER_CLASSES``)."""
        super().__init_subclass__(**kwargs)
        _layer_config.register(cls)

    def output_shape(self, input_shape):
        """The per-sample shape of this module's output (the batch axis left out, as in
        Keras: ``(28, 28)`` for a batch of MNIST images) for an input of per-sample shape
        ``input_shape``: a tuple whose entries may be None where unknown, or None when the
        whole shape is unknown. Returns None when it cannot be told without running the
        module. A Keras ``Dense`` without ``input_dim`` takes its input size from the last
        entry of this answer of the layers before it.

        Default: ``input_shape[:-1] + (out_features,)`` when the module has ``out_features``
        (``(out_features,)`` for an unknown input); the shape unchanged for an element-wise
        activation (a class declaring ``fused_activation``, as ``nn.ReLU``); the older
        ``output_features`` answer on the last axis for a class that overrides that method
        instead; else None. Layers override it (``Dropout`` keeps the shape, ``Flatten``
        merges axes)."""
        cls = type(self)
        if cls.output_features is not Module.output_features:  # a layer written for the older API
            out = self.output_features(input_shape[-1] if input_shape else None)
            return None if out is None else tuple(input_shape or ())[:-1] + (out,)
        out = getattr(self, "out_features", None)
        if out is not None:
            return tuple(input_shape or ())[:-1] + (out,)
        return input_shape if hasattr(cls, "fused_activation") else None

    def output_features(self, in_features):
        """The size of the last axis of :meth:`output_shape` for a 1-D per-sample input of
        ``in_features`` entries (an int, or None when not known); None when not known. Kept for
        callers of the older API; layers define ``output_shape``."""
        shape = self.output_shape(None if in_features is None else (in_features,))
        return None if not shape else shape[-1]

    def get_config(self):
        """This layer as JSON-able data: ``{"class": name, <constructor argument>: value}``.

        The default describes nnx's own layers whose constructor arguments are attributes of
        the same name (``Dropout`` -> ``{"class": "Dropout", "p": 0.5}``); ValueError for any
        other module (save its ``state_dict()`` instead). See ``nnx.nn.config``."""
        return _layer_config.describe(self)

    @classmethod
    def from_config(cls, config, device=None, dtype=None):
        """A new layer (fresh parameters, on ``device`` in ``dtype``) from ``get_config``'s
        dict; CheckpointError for an entry of the wrong type."""
        return _layer_config.build(cls, config, device, dtype)

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
