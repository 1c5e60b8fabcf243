"""Batch sources for ``fit`` / ``evaluate`` / ``predict``: what the Keras methods train on.

Data given as arrays (NumPy, CuPy, nnx Tensors, lists) is put on the model's device once per
call, as one array each for features (in the model's dtype) and targets, and sliced into
batches there (:class:`Resident`). Data larger than :data:`RESIDENT_BYTES` that lives on the
host while the model is on a GPU, and any ``nnx.data.DataLoader`` the user passes, is read batch
by batch instead (:class:`Streamed`; the loader double-buffers the copies).

A batch source has ``n`` (samples), ``steps`` (batches per pass), ``backend`` and
``batches(shuffle)``, which yields ``(x Tensor (B, ...), y Tensor (B, ...), B)``.
"""
from __future__ import annotations

import numpy as np

from ..data import DataLoader
from ..errors import ShapeError
from ..tensor import Tensor, _wrap, host_array

__all__ = ["RESIDENT_BYTES", "Resident", "Streamed", "batch_source", "predict_batches",
           "is_loader", "split_last"]

#: Training data bigger than this (bytes, features plus targets) that lives on the host while
#: the model is on a GPU is streamed batch by batch instead of copied to the device whole.
RESIDENT_BYTES = 1 << 30


def as_backend_array(a, backend, dtype=None, name="x"):
    """``a`` (NumPy, CuPy, nnx Tensor, list) as an array of ``backend`` with a first (samples)
    axis, cast to ``dtype`` when given. TypeError for non-numeric data, ShapeError for a
    scalar; ``name`` says which argument in the message."""
    if isinstance(a, Tensor):
        arr, src = a.data, a._backend
        if src is not backend:
            arr = backend.asarray(src.to_host(arr)) if "numpy" in (src.name, backend.name) \
                else backend.asarray(arr)
    elif hasattr(a, "__cuda_array_interface__") and type(a).__module__.split(".")[0] == "cupy":
        from .. import backends

        src = backends.backend_of(a)
        arr = a if src is backend else (backend.asarray(src.to_host(a)) if backend.name == "numpy"
                                        else backend.asarray(a))
    else:
        try:
            arr = np.asarray(a)
        except Exception as e:  # noqa: BLE001 - say which argument could not be read
            raise TypeError(f"{name}: cannot read {type(a).__name__} as an array: {e}") from None
        if arr.dtype == object or arr.dtype.kind not in "biuf":
            raise TypeError(f"{name}: expected numeric data, got an array of dtype {arr.dtype}")
        arr = backend.asarray(arr)
    if arr.ndim == 0:
        raise ShapeError(f"{name}: expected an array with a first (samples) axis, got a scalar")
    if dtype is not None and arr.dtype != dtype:
        arr = arr.astype(dtype)
    return arr


def prepare_targets(y, kind, n_out, dtype, name="y"):
    """Targets as the loss wants them: float of the model's dtype shaped like the output
    (N, n_out), or int64 class labels (N,) for the sparse losses. ``kind`` is
    ``losses.target_kind``'s answer. Works on NumPy and CuPy arrays alike."""
    labels = kind == "sparse" or (kind in ("labels_or_probs", "custom") and y.dtype.kind in "iub")
    if labels:
        if y.ndim == 2 and y.shape[1] == 1 and kind != "custom":
            y = y.reshape(-1)
        if kind == "sparse" and y.ndim != 1:
            raise ShapeError(f"{name}: sparse_categorical_crossentropy takes integer class labels "
                             f"of shape (N,) or (N, 1), got shape {tuple(y.shape)}; for one-hot "
                             f"targets use loss='categorical_crossentropy'")
        return y if y.dtype == np.int64 or kind == "custom" else y.astype(np.int64)
    if kind == "categorical" and y.ndim == 1:
        raise ShapeError(f"{name}: categorical_crossentropy takes one-hot targets of shape (N, C), "
                         f"got shape {tuple(y.shape)}; for integer class labels use "
                         f"loss='sparse_categorical_crossentropy'")
    if y.dtype != dtype:
        y = y.astype(dtype)
    if y.ndim == 1 and n_out == 1 and kind != "labels_or_probs":
        y = y.reshape(-1, 1)
    return y


class Resident:
    """Batches sliced from whole arrays ``x`` (N, ...) and ``y`` (N, ...) that live on the
    model's device."""

    def __init__(self, x, y, batch_size, backend):
        self.x, self.y, self.bs, self.backend = x, y, batch_size, backend
        self.n = n = int(x.shape[0])
        self.bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
        self.steps = len(self.bounds)
        self._fixed = None

    def batches(self, shuffle=False):
        """Yield ``(x Tensor, y Tensor, rows)``. One batch covering all the data is never
        permuted: its mean loss and gradient do not depend on the row order."""
        if not shuffle or self.steps == 1:
            fixed = self._fixed
            if fixed is None:
                b = self.backend
                fixed = self._fixed = [(_wrap(self.x[s:e], b), _wrap(self.y[s:e], b), e - s)
                                       for s, e in self.bounds]
            return fixed
        return self._shuffled()

    def _shuffled(self):
        b = self.backend
        perm = b.permutation(self.n)
        x, y = self.x[perm], self.y[perm]
        for s, e in self.bounds:
            yield _wrap(x[s:e], b), _wrap(y[s:e], b), e - s


class Streamed:
    """Batches from an ``nnx.data.DataLoader`` (given by the user, or built for big data),
    each moved to ``backend`` and converted as :func:`prepare_targets` says."""

    def __init__(self, loader, backend, dtype, kind, n_out):
        self.loader, self.backend, self.dtype, self.kind, self.n_out = (
            loader, backend, dtype, kind, n_out)
        self.n = len(loader.dataset)
        self.steps = len(loader)

    def batches(self, shuffle=None):
        b, dt = self.backend, self.dtype
        for batch in self.loader:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise ValueError("fit/evaluate: a DataLoader must yield (x, y) batches")
            xb = as_backend_array(batch[0], b, dt, "x batch")
            yb = prepare_targets(as_backend_array(batch[1], b, None, "y batch"), self.kind,
                                 self.n_out, dt, "y batch")
            yield _wrap(xb, b), _wrap(yb, b), int(xb.shape[0])


def is_loader(obj):
    return isinstance(obj, DataLoader)


def host_nbytes(*arrays):
    """Bytes of the arguments that live on the host (device arrays and Tensors count 0)."""
    total = 0
    for a in arrays:
        if isinstance(a, np.ndarray):
            total += a.nbytes
        elif not isinstance(a, Tensor) and not hasattr(a, "__cuda_array_interface__"):
            total += np.asarray(a).nbytes
    return total


def to_host(a, dtype):
    """``a`` as a host NumPy array, cast to ``dtype`` unless that is None."""
    a = host_array(a)
    return a if dtype is None or a.dtype == dtype else a.astype(dtype)


def _too_big(backend, *arrays):
    return backend.name != "numpy" and host_nbytes(*arrays) > RESIDENT_BYTES


def batch_source(x, y, batch_size, kind, n_out, backend, dtype, what, shuffle=False):
    """A batch source over ``(x, y)`` (or a DataLoader ``x``): :class:`Resident` on the
    model's ``backend``, or :class:`Streamed`. ``kind`` and ``n_out`` (the model's output
    size) shape the targets; ``what`` names the caller in error messages."""
    if is_loader(x):
        if y is not None:
            raise ValueError(f"{what}: with a DataLoader as x, leave y out (the loader "
                             f"yields (x, y) batches)")
        return Streamed(x, backend, dtype, kind, n_out)
    if y is None:
        raise ValueError(f"{what}: y (the targets) is missing")
    if _too_big(backend, x, y):
        xs = to_host(x, dtype)
        ys = to_host(y, None)
        if len(xs) != len(ys):
            raise ValueError(f"{what}: x has {len(xs)} samples but y has {len(ys)}")
        loader = DataLoader((xs, ys), batch_size=batch_size, shuffle=shuffle,
                            device=backend.device)
        return Streamed(loader, backend, dtype, kind, n_out)
    xa = as_backend_array(x, backend, dtype, "x")
    ya = as_backend_array(y, backend, None, "y")
    if int(xa.shape[0]) != int(ya.shape[0]):
        raise ValueError(f"{what}: x has {xa.shape[0]} samples but y has {ya.shape[0]}")
    if xa.shape[0] == 0:
        raise ValueError(f"{what}: no samples")
    ya = prepare_targets(ya, kind, n_out, dtype)
    return Resident(xa, ya, batch_size, backend)


def predict_batches(x, backend, dtype, batch_size):
    """``(chunks, count)`` for ``predict``: the inputs in batches of ``batch_size`` rows
    (arrays of ``backend``, or host arrays for data too big to copy whole), and how many there
    are (None for a DataLoader, whose batches' first items are taken)."""
    if is_loader(x):
        return (b[0] if isinstance(b, (tuple, list)) else b for b in x), None
    xs = to_host(x, dtype) if _too_big(backend, x) else as_backend_array(x, backend, dtype, "x")
    n = int(xs.shape[0])
    return (xs[s:s + batch_size] for s in range(0, n, batch_size)), -(-n // batch_size)


def split_last(x, y, fraction):
    """Keras's validation_split: ``(x_train, y_train, (x_val, y_val))``, the validation part
    being the last ``fraction`` of the rows, before any shuffling."""
    if y is None:
        raise ValueError("fit: y (the targets) is missing")
    n = len(x)
    if len(y) != n:
        raise ValueError(f"fit: x has {n} samples but y has {len(y)}")
    split_at = int(round(n * (1.0 - float(fraction))))
    if split_at <= 0 or split_at >= n:
        raise ValueError(f"fit: validation_split={fraction} leaves {split_at} training and "
                         f"{n - split_at} validation samples out of {n}; both must be >= 1")
    return x[:split_at], y[:split_at], (x[split_at:], y[split_at:])
