"""Array backends for nnx: NumPy on the CPU, CuPy on CUDA GPUs.

``get_backend(device)`` returns the (cached) backend of a device string; ``backend_of(array)``
finds the backend an array lives on. CuPy is imported only when a CUDA device is asked for, so
this package and the CPU path never need it.
"""
from __future__ import annotations

import threading

from .base import ACTIVATIONS, Backend
from .numpy_backend import NumpyBackend
from . import pooling  # noqa: F401  (registers the pooling CUDA kernels)
from . import conv  # noqa: F401  (registers the conv CUDA kernels)

__all__ = ["ACTIVATIONS", "Backend", "NumpyBackend", "CudaUnavailableError", "get_backend",
           "backend_of", "parse_device", "register_backend", "register_strict", "cuda_status", "cuda_available", "all_backends"]


class CudaUnavailableError(RuntimeError):
    """A CUDA device was asked for where none is usable; the message says why."""


_CPU = NumpyBackend()
_backends: dict[str, Backend] = {"cpu": _CPU}
_lock = threading.Lock()


def cuda_status() -> tuple[bool, str]:
    """``(usable, reason)`` for CUDA, from a cached probe that never raises or hangs."""
    try:
        from .cuda_probe import probe_cuda
    except ImportError as e:  # pragma: no cover - the probe module ships with nnx
        return False, f"CUDA probe unavailable: {e}"
    return probe_cuda()


def cuda_available() -> bool:
    """True when CuPy imports, a device answers and a tiny kernel compiles and runs."""
    return cuda_status()[0]


def parse_device(spec) -> str:
    """Normalize a device spec to ``"cpu"``, ``"cuda:N"`` or ``"auto"``.

    Accepts ``"cpu"``, ``"cuda"`` (device 0), ``"cuda:N"``, ``"gpu"``, ``"auto"``, an int N
    (``cuda:N``), an object with a ``device`` string attribute, or a device object with a
    ``type`` string whose ``str()`` is a spec (``torch.device``, ``nnx.device``).
    """
    if isinstance(spec, int) and not isinstance(spec, bool):
        return f"cuda:{spec}"
    if not isinstance(spec, str):
        inner = getattr(spec, "device", None)
        if isinstance(inner, str):
            return parse_device(inner)
        if isinstance(getattr(spec, "type", None), str):  # torch.device("cuda", 0) and the like
            return parse_device(str(spec))
        raise TypeError(f"device must be a string like 'cpu', 'cuda', 'cuda:0' or 'auto', got {spec!r}")
    s = spec.strip().lower()
    if s in ("cpu", "auto") or s in _backends:
        return s
    if s in ("cuda", "gpu"):
        return "cuda:0"
    for prefix in ("cuda:", "gpu:"):
        if s.startswith(prefix) and s[len(prefix):].isdigit():
            return f"cuda:{int(s[len(prefix):])}"
    raise ValueError(f"unknown device {spec!r}: expected 'cpu', 'cuda', 'cuda:N' or 'auto'")


def get_backend(device="cpu") -> Backend:
    """The backend of ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"``; not ``"auto"``).

    Raises:
        CudaUnavailableError: CUDA was asked for and is not usable (no CuPy, no device, driver
            error, or an index past the device count); the message says which.
    """
    dev = spec = device
    if not isinstance(dev, str) or dev not in _backends:
        dev = parse_device(spec)
    b = _backends.get(dev)
    if b is not None:
        return b
    if dev == "auto":
        raise ValueError("get_backend: resolve 'auto' first (nnx.get_device() does)")
    with _lock:
        b = _backends.get(dev)
        if b is None:
            ok, why = cuda_status()
            if not ok:
                raise CudaUnavailableError(f"device {spec!r} requested but CUDA is not usable: {why}")
            from .cupy_backend import CupyBackend, device_count

            index = int(dev.split(":")[1])
            n = device_count()
            if index >= n:
                raise CudaUnavailableError(
                    f"device {spec!r} requested but only {n} CUDA device(s) are present")
            b = CupyBackend(index)
            _backends[dev] = b
    return b


def backend_of(array) -> Backend:
    """The backend an array belongs to: NumPy arrays (and scalars) are CPU, CuPy arrays CUDA."""
    if isinstance(array, NumpyBackend.array_type):
        return _CPU
    dev = getattr(array, "device", None)
    if hasattr(array, "__cuda_array_interface__") and dev is not None and hasattr(dev, "id"):
        return get_backend(f"cuda:{dev.id}")
    return _CPU


def register_backend(device: str, backend: Backend) -> Backend:
    """Make ``backend`` reachable as ``device`` (used for the strict test backend)."""
    _backends[device] = backend
    return backend


def register_strict() -> Backend:
    """Register the strict test backend as device ``"strict"`` (see ``strict_backend``)."""
    if "strict" not in _backends:
        from .strict_backend import StrictBackend

        register_backend("strict", StrictBackend())
    return _backends["strict"]


def all_backends() -> list[str]:
    """Device strings of every usable device: ``["cpu"]`` plus ``"cuda:N"`` for each GPU."""
    devs = ["cpu"]
    if cuda_available():
        from .cupy_backend import device_count

        devs += [f"cuda:{i}" for i in range(device_count())]
    return devs
