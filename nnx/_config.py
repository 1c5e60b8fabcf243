"""Global state: default dtype, default device, grad mode, anomaly mode, seeding."""
from __future__ import annotations

import contextlib
import os
import re
import threading
import warnings

import numpy as np

from . import backends
from .errors import DeviceError, OutOfMemoryError


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


class device(str):
    """A device, as ``torch.device``: ``nnx.device("cuda:0")`` is the string ``"cuda:0"`` (so
    ``x.to(d)``, ``model.to(d)`` and comparisons with strings work) with ``.type`` ("cpu" or
    "cuda") and ``.index`` (None on the CPU); "auto" resolves when it is made.

    Also a context manager: ``with nnx.device(spec) as d:`` makes it the default device inside
    the block (``d`` is the device).
    """

    def __new__(cls, spec):
        return str.__new__(cls, resolve_device(str(spec) if isinstance(spec, device) else spec))

    @property
    def type(self) -> str:
        return self.split(":")[0]

    @property
    def index(self):
        return int(self.split(":")[1]) if ":" in self else None

    def __repr__(self):
        return f"device(type={self.type!r}" + ("" if self.index is None else f", index={self.index}") + ")"

    def __enter__(self):
        _state.device_stack.append(str(self))
        return self

    def __exit__(self, *exc):
        _state.device_stack.pop()
        return False


def backend_for(device=None):
    """The backend of ``device`` (default: the current default device)."""
    if device is None:
        b = backends.get_backend(get_device())
    else:
        try:
            b = backends.get_backend(device)
        except ValueError:
            b = backends.get_backend(resolve_device(device))
        except backends.CudaUnavailableError as e:
            raise DeviceError(str(e)) from None
    if _seeded and id(b) not in _seeded_backends:  # a device first used after manual_seed
        _seeded_backends.add(id(b))
        b.seed(_seeded[-1])
    return b


def cuda_available() -> bool:
    """True when a CUDA device is usable through CuPy."""
    return backends.cuda_available()


# ---------------------------------------------------------------- out of memory
_OOM_SIZE = re.compile(r"allocating ([\d,]+) bytes")
_OOM_TOTAL = re.compile(r"allocated so far: ([\d,]+) bytes")


def _nbytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.2f} {unit} ({n:,} bytes)"
    return f"{n:,} bytes"


def out_of_memory(exc, backend, where: str):
    """An ``nnx.OutOfMemoryError`` for ``exc`` if it is ``backend``'s out-of-memory error, else
    None (the caller re-raises ``exc`` unchanged). ``where`` names the op or buffer.

    CuPy's pool error carries the sizes only in its message ("Out of memory allocating 1,024
    bytes (allocated so far: ...)"), so they are read back from there.
    """
    if isinstance(exc, OutOfMemoryError) or not isinstance(exc, backend.oom_errors):
        return None
    msg = str(exc)
    m, t = _OOM_SIZE.search(msg), _OOM_TOTAL.search(msg)
    size = int(m.group(1).replace(",", "")) if m else None
    asked = f"tried to allocate {_nbytes(size)}" if size is not None else f"allocation failed ({msg})"
    held = f"; {_nbytes(int(t.group(1).replace(',', '')))} already allocated" if t else ""
    err = OutOfMemoryError(f"out of memory on {backend.device} in {where}: {asked}{held}. Lower the "
                           f"batch size (or the model size), or free tensors you no longer need")
    err.requested_bytes, err.device = size, backend.device
    return err


# ---------------------------------------------------------------- grad mode
def is_grad_enabled() -> bool:
    return _state.grad_enabled


class _FreshContextDecorator(contextlib.ContextDecorator):
    """As a decorator, a new instance per call, so recursive and nested uses each restore
    their own previous state (ContextDecorator reuses one instance by default)."""

    def _recreate_cm(self):
        return type(self)()


class _GradMode(_FreshContextDecorator):
    """Set grad mode to ``enabled`` inside the block, restoring the previous mode after."""

    enabled = True

    def __enter__(self):
        self._prev = _state.grad_enabled
        _state.grad_enabled = self.enabled
        return self

    def __exit__(self, *exc):
        _state.grad_enabled = self._prev
        return False


class no_grad(_GradMode):
    """Disable graph recording inside the block (also a decorator)."""

    enabled = False


class inference_mode(_GradMode):
    """``torch.inference_mode``: no graph recording inside the block (``no_grad`` here);
    ``inference_mode(False)`` leaves grad mode as it is. A decorator too, with or without ()."""

    def __new__(cls, mode=True):
        self = super().__new__(cls)
        if callable(mode):  # @nnx.inference_mode without parentheses: the decorated function
            self.__init__(True)
            return self(mode)
        return self

    def __init__(self, mode=True):
        self.mode = True if callable(mode) else bool(mode)

    def __enter__(self):
        self._prev = _state.grad_enabled
        if self.mode:
            _state.grad_enabled = False
        return self

    def _recreate_cm(self):
        return type(self)(self.mode)


class enable_grad(_GradMode):
    """Enable graph recording inside the block (also a decorator)."""

    enabled = True


# ---------------------------------------------------------------- anomaly mode
def set_detect_anomaly(mode: bool) -> None:
    """Check every op's forward and backward for NaN/inf and raise naming the first culprit."""
    global detect_anomaly_enabled
    detect_anomaly_enabled = bool(mode)


class detect_anomaly(_FreshContextDecorator):
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
    _seeded_backends.clear()
    for b in list(backends._backends.values()):
        b.seed(seed)
        _seeded_backends.add(id(b))
    _seeded.append(seed)
    del _seeded[:-1]


_seeded: list[int] = []
_seeded_backends: set = set()


def last_seed():
    """The last seed given to manual_seed (new CUDA backends start from it), or None."""
    return _seeded[-1] if _seeded else None


def get_rng_state(device=None):
    """The state of ``device``'s random generator (default: the current device), as nested
    dicts of ints and strings that ``nnx.save`` stores; ``set_rng_state`` puts it back, so
    dropout masks and shuffling continue exactly after a resume. NotImplementedError on CUDA
    (CuPy's cuRAND generator has no state to read)."""
    return backend_for(device).get_rng_state()


def set_rng_state(state, device=None) -> None:
    """Restore a state from ``get_rng_state`` into ``device``'s generator."""
    backend_for(device).set_rng_state(state)
