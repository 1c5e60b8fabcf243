"""Per-model cache invalidation: a value computed from some modules and parameters is dropped
as soon as one of them changes (no global version counter).

A :class:`Cache` holds one value; :meth:`Cache.store` records it with the objects it depends
on. Each such object (a ``Module`` or a ``Parameter``) keeps a weak set of the caches watching
it and calls :func:`notify` when it changes (an attribute or registry edit of a module, a
replaced storage of a parameter), which empties them. Reading a valid cache costs one attribute
load, so a forward pass pays nothing for it.
"""
from __future__ import annotations

import weakref

__all__ = ["Cache", "notify"]


class Cache:
    """One cached value (None when empty)."""

    __slots__ = ("value", "__weakref__")

    def __init__(self):
        self.value = None

    def invalidate(self) -> None:
        self.value = None

    def store(self, value, depends_on):
        """Keep ``value`` until any object in ``depends_on`` changes; returns ``value``."""
        for obj in depends_on:
            watchers = getattr(obj, "_watchers", None)
            if watchers is None:
                watchers = weakref.WeakSet()
                try:  # object.__setattr__: no Module.__setattr__ side effects
                    object.__setattr__(obj, "_watchers", watchers)
                except (AttributeError, TypeError):  # an object that cannot be watched (a
                    return value                     # plain Tensor as a parameter): no caching
            watchers.add(self)
        self.value = value
        return value


def notify(watchers) -> None:
    """Empty every cache in ``watchers`` (an object's watcher set, or None)."""
    if watchers:
        for cache in list(watchers):
            cache.invalidate()
        watchers.clear()
