"""Layers as data: the table of nnx's own layer classes, and the generic ``get_config`` /
``from_config`` that ``Module`` falls back on.

A layer's config is a JSON-able dict: ``{"class": <class name>, <constructor argument>: value,
...}`` (e.g. ``{"class": "LeakyReLU", "negative_slope": 0.2}``). ``Module.__init_subclass__``
enters every layer class defined in nnx's own modules (``__module__`` starting with "nnx.")
into :data:`LAYER_CLASSES`; :func:`layer_from_config` looks the "class" name up there and calls
that class's ``from_config``. A name not in the table is a ``CheckpointError``: nothing named in
a file is ever imported or evaluated, so a saved architecture cannot run code.

A layer whose constructor arguments are stored under the same attribute names (``Dropout(p)``
keeps ``self.p``, ``LeakyReLU(negative_slope)`` keeps ``self.negative_slope``) needs no code of
its own: :func:`describe` reads those attributes and :func:`build` passes them back, checking
each value against the type of the argument's default. Layers whose arguments are not plain
attributes (``Linear``'s ``bias`` is a parameter, not a bool) define ``get_config`` /
``from_config`` themselves.
"""
from __future__ import annotations

import inspect

from ..errors import CheckpointError

__all__ = ["LAYER_CLASSES", "register", "class_name", "describe", "build", "layer_from_config",
           "config_arg"]

#: ``{class name: class}`` of nnx's own layer classes: the only classes a saved architecture
#: may name. Filled by ``Module.__init_subclass__`` (see :func:`register`).
LAYER_CLASSES = {}

_SCALARS = (bool, int, float, str, type(None))
_NOT_ARGS = ("self", "device", "dtype")  # where to build, not what: not part of a config


def register(cls):
    """Enter ``cls`` into :data:`LAYER_CLASSES` when nnx itself defines it (its module's name
    starts with "nnx.") and its name is public. A name already taken stays with its class,
    unless ``cls`` is a subclass of it (``nnx.keras.Sequential`` over
    ``nnx.nn.container.Sequential``: a saved "Sequential" loads as the Keras model, as it always
    did) or the same class defined again (a module reloaded)."""
    name = cls.__name__
    if not cls.__module__.startswith("nnx.") or name.startswith("_"):
        return
    old = LAYER_CLASSES.get(name)
    if old is None or issubclass(cls, old) or \
            (old.__module__, old.__qualname__) == (cls.__module__, cls.__qualname__):
        LAYER_CLASSES[name] = cls


def class_name(module):
    """The "class" entry of ``module``'s config: its class's name when that class is in
    :data:`LAYER_CLASSES` (a user's subclass is not); ValueError otherwise."""
    cls = type(module)
    if LAYER_CLASSES.get(cls.__name__) is not cls:
        raise _cannot_describe(cls)
    return cls.__name__


def _cannot_describe(cls):
    return ValueError(f"cannot describe a {cls.__name__} layer as data (only nnx.nn's built-in "
                      f"layers can be saved with their architecture; save model.state_dict())")


def _arguments(cls):
    """The constructor's positional-or-keyword parameters that make up a config (keyword-only
    aliases such as ``Softmax(dim=...)`` and ``device``/``dtype`` are left out)."""
    params = inspect.signature(cls.__init__).parameters.values()
    return [p for p in params
            if p.kind is p.POSITIONAL_OR_KEYWORD and p.name not in _NOT_ARGS]


def describe(module):
    """The generic config of ``module``: ``{"class": name, arg: module.<arg>, ...}`` for each
    constructor argument, read from the attribute of the same name. ValueError when the class
    is not nnx's or an argument is not kept as a plain number, string, bool or None."""
    cfg = {"class": class_name(module)}
    for p in _arguments(type(module)):
        value = getattr(module, p.name, inspect.Parameter.empty)
        if not isinstance(value, _SCALARS):
            raise _cannot_describe(type(module))
        cfg[p.name] = value
    return cfg


def _types_like(default):
    """The value types a config entry may hold for an argument with this default."""
    if isinstance(default, bool):
        return (bool,)
    if isinstance(default, int):
        return (int,)
    if isinstance(default, float):
        return (int, float)
    if isinstance(default, str):
        return (str,)
    return _SCALARS


def build(cls, cfg, device=None, dtype=None):
    """``cls`` made from :func:`describe`'s dict: each constructor argument from ``cfg``
    (checked against its default's type; a missing one takes the default), plus ``device`` and
    ``dtype`` when the constructor takes them. Entries it does not know are ignored."""
    if not isinstance(cfg, dict):
        raise CheckpointError(f"bad layer config {cfg!r}: expected a dict with a 'class' name")
    kwargs = {}
    for p in _arguments(cls):
        required = p.default is p.empty
        kwargs[p.name] = config_arg(cfg, p.name, _types_like(None if required else p.default),
                                    None if required else p.default, required)
    params = inspect.signature(cls.__init__).parameters
    for key, value in (("device", device), ("dtype", dtype)):
        if key in params:
            kwargs[key] = value
    return cls(**kwargs)


def layer_from_config(cfg, device=None, dtype=None):
    """The layer ``cfg`` describes (``get_config``'s dict), made by the ``from_config`` of the
    class its "class" entry names in :data:`LAYER_CLASSES`; CheckpointError for anything else."""
    if not isinstance(cfg, dict) or not isinstance(cfg.get("class"), str):
        raise CheckpointError(f"bad layer config {cfg!r}: expected a dict with a 'class' name")
    cls = LAYER_CLASSES.get(cfg["class"])
    if cls is None:
        raise CheckpointError(f"unknown layer class {cfg['class']!r} in the saved architecture")
    return cls.from_config(cfg, device=device, dtype=dtype)


def config_arg(cfg, key, types, default=None, required=False):
    """``cfg[key]`` checked to be one of ``types`` (a bool passes only where ``bool`` is
    listed); ``default`` when absent, or CheckpointError when ``required``."""
    if key not in cfg:
        if required:
            raise CheckpointError(f"layer config {cfg.get('class')!r} lacks {key!r}")
        return default
    v = cfg[key]
    if not isinstance(v, types) or isinstance(v, bool) and bool not in types:
        raise CheckpointError(f"layer config {cfg.get('class')!r}: {key}={v!r} has the wrong type")
    return v
