"""A strict test backend: NumPy arrays that behave like device arrays.

``StrictArray`` is a NumPy array subclass that, like a CuPy array, refuses to be handed to NumPy
functions directly (``np.exp(a)`` raises ``ImplicitConversionError``: on a GPU that call would
try an implicit device-to-host conversion) and counts every host synchronization (``bool(a)``,
``float(a)``, ``a.item()``, ``a.tolist()``, ``to_host``). Operators, methods and the backend's
``xp`` namespace work as usual, and the kernel methods run the NumPy twins (they stand for the
device kernels, whose internals are not host syncs).

Running the framework on this backend (``nnx.set_device("strict")`` after
``backends.register_strict()``) shows on a CPU the device bugs a plain NumPy run hides: a NumPy
call where ``xp`` was meant, an implicit conversion, or a host sync inside a training step.
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np

from .numpy_backend import NumpyBackend


class ImplicitConversionError(TypeError):
    """A device array met a NumPy function directly (CuPy raises TypeError there too)."""


class _Flag(threading.local):
    depth = 0


_flag = _Flag()
sync_counts = {"count": 0, "where": []}


@contextlib.contextmanager
def _device_code():
    _flag.depth += 1
    try:
        yield
    finally:
        _flag.depth -= 1


def reset_sync_count():
    sync_counts["count"] = 0
    sync_counts["where"] = []


def _note_sync(what):
    sync_counts["count"] += 1
    if len(sync_counts["where"]) < 20:
        import traceback

        sync_counts["where"].append((what, "".join(traceback.format_stack(limit=8)[:-2])))


def _unwrap(x):
    if isinstance(x, StrictArray):
        return np.ndarray.view(x, np.ndarray)
    if isinstance(x, tuple):
        return tuple(_unwrap(i) for i in x)
    if isinstance(x, list):
        return [_unwrap(i) for i in x]
    if isinstance(x, dict):
        return {k: _unwrap(v) for k, v in x.items()}
    return x


def _wrap(x):
    if type(x) is np.ndarray:
        return x.view(StrictArray)
    if isinstance(x, np.generic):  # reductions give 0-d device arrays, as in CuPy
        return np.asarray(x).view(StrictArray)
    if isinstance(x, tuple):
        return tuple(_wrap(i) for i in x)
    if isinstance(x, list):
        return [_wrap(i) for i in x]
    return x


class StrictArray(np.ndarray):
    """See the module docstring."""

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if not _flag.depth:
            raise ImplicitConversionError(
                f"numpy.{ufunc.__name__}{'' if method == '__call__' else '.' + method} was called "
                f"directly on a device array; use the backend's xp (CuPy would refuse this)")
        inputs = _unwrap(inputs)
        out = kwargs.get("out")
        if out is not None:
            kwargs["out"] = _unwrap(out)
        result = getattr(ufunc, method)(*inputs, **kwargs)
        if out is not None:
            return out[0] if isinstance(out, tuple) and len(out) == 1 else out
        return _wrap(result)

    def __array_function__(self, func, types, args, kwargs):
        if not _flag.depth:
            raise ImplicitConversionError(
                f"numpy.{func.__name__} was called directly on a device array; use the backend's "
                f"xp (CuPy would refuse this)")
        out = kwargs.get("out")
        result = func(*_unwrap(args), **_unwrap(kwargs))
        return out if out is not None else _wrap(result)

    # ---- host synchronizations (each one would wait for the GPU)
    def __bool__(self):
        _note_sync("bool()")
        return bool(self.view(np.ndarray))

    def __float__(self):
        _note_sync("float()")
        return float(self.view(np.ndarray))

    def __int__(self):
        _note_sync("int()")
        return int(self.view(np.ndarray))

    def __index__(self):
        _note_sync("index")
        return self.view(np.ndarray).__index__()

    def item(self, *args):
        _note_sync("item()")
        return self.view(np.ndarray).item(*args)

    def tolist(self):
        _note_sync("tolist()")
        return self.view(np.ndarray).tolist()

    def __array__(self, dtype=None, copy=None):
        raise ImplicitConversionError("implicit conversion of a device array to a NumPy array; "
                                      "use backend.to_host() (CuPy would refuse this)")

    def get(self):
        _note_sync("get()")
        return np.array(self.view(np.ndarray), copy=True)

    def __repr__(self):
        return f"StrictArray({np.ndarray.__repr__(self.view(np.ndarray))})"


def _device_method(name):
    base = getattr(np.ndarray, name)

    def method(self, *args, **kwargs):
        with _device_code():
            return _wrap(base(self, *_unwrap(args), **_unwrap(kwargs)))

    method.__name__ = name
    return method


_METHODS = """__add__ __radd__ __iadd__ __sub__ __rsub__ __isub__ __mul__ __rmul__ __imul__
__truediv__ __rtruediv__ __itruediv__ __floordiv__ __rfloordiv__ __mod__ __pow__ __rpow__ __ipow__
__matmul__ __rmatmul__ __neg__ __pos__ __abs__ __invert__ __and__ __rand__ __iand__ __or__ __ror__
__ior__ __xor__ __lt__ __le__ __gt__ __ge__ __eq__ __ne__ __getitem__ __setitem__ sum mean max min
argmax argmin any all prod cumsum std var reshape astype copy fill transpose swapaxes ravel
flatten squeeze dot clip take repeat nonzero round""".split()
for _name in _METHODS:
    setattr(StrictArray, _name, _device_method(_name))
StrictArray.T = property(lambda self: _device_method("transpose")(self))
StrictArray.__hash__ = None


class _StrictUfunc:
    def __init__(self, uf):
        self._uf = uf

    def __call__(self, *args, **kwargs):
        with _device_code():
            out = kwargs.get("out")
            r = self._uf(*args, **kwargs)
            return out if out is not None and not isinstance(out, tuple) else _wrap(r)

    def __getattr__(self, name):
        attr = getattr(self._uf, name)
        if callable(attr):
            def f(*args, **kwargs):
                with _device_code():
                    return _wrap(attr(*args, **kwargs))
            return f
        return attr


class _StrictNumpy:
    """The strict backend's ``xp``: NumPy's namespace, returning StrictArrays."""

    ndarray = StrictArray

    def __getattr__(self, name):
        attr = getattr(np, name)
        if isinstance(attr, np.ufunc):
            return _StrictUfunc(attr)
        if callable(attr) and not isinstance(attr, type):
            def f(*args, **kwargs):
                with _device_code():
                    return _wrap(attr(*args, **kwargs))
            f.__name__ = name
            return f
        return attr


class StrictBackend(NumpyBackend):
    """NumPy underneath, device rules on top (see the module docstring)."""

    name = "strict"
    device = "strict"
    array_type = StrictArray

    def __init__(self):
        super().__init__()
        self.xp = _StrictNumpy()

    def asarray(self, data, dtype=None):
        if isinstance(data, StrictArray):
            return data if dtype is None or data.dtype == dtype else data.astype(dtype)
        return np.array(data, dtype=dtype).view(StrictArray)

    def to_host(self, array):
        if isinstance(array, StrictArray):
            _note_sync("to_host()")
            return np.array(array.view(np.ndarray), copy=True)
        return np.asarray(array)

    def is_array(self, obj):
        return isinstance(obj, StrictArray)

    def permutation(self, n):
        return super().permutation(n)  # a host array, as CupyBackend returns

    def scratch(self, n, dtype):
        return super().scratch(n, dtype)


def _kernel(name):
    base = getattr(NumpyBackend, name)

    def method(self, *args, **kwargs):
        with _device_code():
            return _wrap(base(self, *_unwrap(args), **_unwrap(kwargs)))

    method.__name__ = name
    method.__doc__ = base.__doc__
    return method


# The activations go through the two generic methods (the named ones, sigmoid_fwd and the rest,
# call them), so every entry of ``backends.activations`` is covered, including later ones.
for _name in ("uniform", "normal", "dropout_mask", "activation_forward", "activation_backward",
              "bias_act_", "sum_rows", "sgd_update_", "adam_update_",
              "rmsprop_update_", "adagrad_update_", "adadelta_update_"):
    setattr(StrictBackend, _name, _kernel(_name))
for _name in ("max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward",
              "avg_pool2d_backward", "adaptive_avg_pool2d_forward", "adaptive_avg_pool2d_backward"):
    setattr(StrictBackend, _name, _kernel(_name))
for _name in ("conv2d_forward", "conv2d_backward"):
    setattr(StrictBackend, _name, _kernel(_name))


def _softmax_cross_entropy(self, logits, labels, ignore_index=-100, reduction="mean", need_grad=True):
    # Like the CUDA kernel: out-of-range labels do not raise here; a device flag reports them.
    with _device_code():
        lg, lb = _unwrap(logits), _unwrap(labels)
        c = lg.shape[1]
        valid = lb != ignore_index
        bad = (valid & ((lb < 0) | (lb >= c))).any()
        safe = np.where(bad & valid & ((lb < 0) | (lb >= c)), ignore_index, lb) if bad else lb
        loss, grad, _ = NumpyBackend.softmax_cross_entropy(self, lg, safe, ignore_index, reduction,
                                                           need_grad)
        return _wrap(np.asarray(loss)), _wrap(grad), _wrap(np.asarray(bad, dtype=np.int32))


StrictBackend.softmax_cross_entropy = _softmax_cross_entropy
