"""Scalars of an array's dtype, cached (the one scalar cache of nnx and its backends)."""
from __future__ import annotations

import numpy as np

_SCALARS: dict = {}


def scalar(value, dtype):
    """``value`` as a NumPy scalar of ``dtype``, cached.

    A ufunc takes a dtype scalar about 0.5 us faster than a Python float (no weak-scalar
    resolution), and a dtype-matched scalar never promotes the array it meets (NumPy 2
    semantics); CuPy accepts it as well.
    """
    key = (value, dtype)
    c = _SCALARS.get(key)
    if c is None:
        if len(_SCALARS) > 4096:  # batch-size-dependent scales, lr schedules: keep it bounded
            _SCALARS.clear()
        c = _SCALARS[key] = np.dtype(dtype).type(value)
    return c
