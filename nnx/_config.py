"""Global state: default dtype, default device, grad mode, anomaly mode, seeding."""
from __future__ import annotations

import contextlib
import os
import threading
import warnings

import numpy as np

import backends
from .errors import DeviceError


class _State(threading.local):
    def __init__(self):
        self.grad_enabled = True
        self.device_stack: list[str] = []


_state = _State()
_default_dtype = np.dtype(np.float32)
_default_device: str | None = None  # resolved lazily from NNX_DEVICE (default "cpu")
_auto_resolved: str | None = None
detect_anomaly_enabled = False


# ---------------------------------------------------------------- dtypes
def to_dtype(dtype) -> np.dtype:
    """A NumPy dtype from a NumPy dtype, a dtype name ("float32") or a Python type."""
    if dtype is None:
        return None
    try:
        return np.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"unknown dtype {dtype!r}: use a NumPy dtype or its name, e.g. 'float32'") from e


def set_default_dtype(dtype) -> None:
    """Set the dtype floating data gets when none is given (float32 unless changed)."""
    global _default_dtype
    dt = to_dtype(dtype)
    if dt.kind != "f":
        raise TypeError(f"set_default_dtype: expected a floating dtype, got {dt}")
    _default_dtype = dt


def get_default_dtype() -> np.dtype:
    return _default_dtype


# ---------------------------------------------------------------- devices
def _resolve_auto() -> str:
    global _auto_resolved
    if _auto_resolved is None:
        ok, why = backends.cuda_status()
        if ok:
            _auto_resolved = "cuda:0"
        else:
            _auto_resolved = "cpu"
            if why.startswith("CUDA driver error"):
                warnings.warn(f"nnx: device 'auto' falls back to the CPU: {why}", RuntimeWarning,
                              stacklevel=3)
    return _auto_resolved


def resolve_device(spec) -> str:
    """A concrete device string ("cpu" or "cuda:N") for ``spec`` (which may be "auto").

    Raises DeviceError (with the reason) when CUDA is asked for and unusable.
    """
    dev = backends.parse_device(spec)
    if dev == "auto":
        return _resolve_auto()
    if dev != "cpu":
        try:
            backends.get_backend(dev)
        except backends.CudaUnavailableError as e:
            raise DeviceError(str(e)) from None
    return dev


def set_device(spec) -> None:
    """Set the default device for new tensors and parameters: "cpu", "cuda", "cuda:N", "auto"."""
    global _default_device
    _default_device = resolve_device(spec)


def get_device() -> str:
    """The current default device, "cpu" or "cuda:N" (``with nnx.device(...)`` overrides)."""
    global _default_device
    if _state.device_stack:
        return _state.device_stack[-1]
    if _default_device is None:
        _default_device = resolve_device(os.environ.get("NNX_DEVICE", "cpu") or "cpu")
    return _default_device


@contextlib.contextmanager
def device(spec):
    """Context manager: make ``spec`` the default device inside the block."""
    dev = resolve_device(spec)
    _state.device_stack.append(dev)
    try:
        yield dev
    finally:
        _state.device_stack.pop()


def backend_for(device=None):
    """The backend of ``device`` (default: the current default device)."""
    if device is None:
        return backends.get_backend(get_device())
    try:
        return backends.get_backend(device)
    except ValueError:
        return backends.get_backend(resolve_device(device))
    except backends.CudaUnavailableError as e:
        raise DeviceError(str(e)) from None


def cuda_available() -> bool:
    """True when a CUDA device is usable through CuPy."""
    return backends.cuda_available()


# ---------------------------------------------------------------- grad mode
def is_grad_enabled() -> bool:
    return _state.grad_enabled


class no_grad(contextlib.ContextDecorator):
    """Disable graph recording inside the block (also a decorator)."""

    def __enter__(self):
        self._prev = _state.grad_enabled
        _state.grad_enabled = False
        return self

    def __exit__(self, *exc):
        _state.grad_enabled = self._prev
        return False


class enable_grad(contextlib.ContextDecorator):
    def __enter__(self):
        self._prev = _state.grad_enabled
        _state.grad_enabled = True
        return self

    def __exit__(self, *exc):
        _state.grad_enabled = self._prev
        return False


# ---------------------------------------------------------------- anomaly mode
def set_detect_anomaly(mode: bool) -> None:
    """Check every op's forward and backward for NaN/inf and raise naming the first culprit."""
    global detect_anomaly_enabled
    detect_anomaly_enabled = bool(mode)


class detect_anomaly(contextlib.ContextDecorator):
    """Context manager form of ``set_detect_anomaly(True)``."""

    def __enter__(self):
        self._prev = detect_anomaly_enabled
        set_detect_anomaly(True)
        return self

    def __exit__(self, *exc):
        set_detect_anomaly(self._prev)
        return False


def is_anomaly_enabled() -> bool:
    return detect_anomaly_enabled


# ---------------------------------------------------------------- seeding
def manual_seed(seed: int) -> None:
    """Seed every backend's generator: initialization, shuffling and dropout repeat exactly."""
    seed = int(seed)
    backends.get_backend("cpu").seed(seed)
    for dev, b in list(backends._backends.items()):
        if dev != "cpu":
            b.seed(seed)
    _seeded.append(seed)
    del _seeded[:-1]


_seeded: list[int] = []


def last_seed():
    """The last seed given to manual_seed (new CUDA backends start from it), or None."""
    return _seeded[-1] if _seeded else None
