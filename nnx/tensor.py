"""``Tensor``: a backend array with a device, a dtype and a place in the autograd graph."""
from __future__ import annotations

import numbers

import numpy as np

from . import _config, autograd
from .errors import DTypeError, GraphError, NNXError, ShapeError


class DeviceDtypeShorthands:
    """``cpu()``, ``cuda(i)``, ``float()``, ``double()``, ``half()``: ``self.to(...)`` spelled as
    PyTorch spells it, for Tensors and Modules alike."""

    __slots__ = ()

    def cpu(self):
        return self.to("cpu")

    def cuda(self, index: int = 0):
        return self.to(f"cuda:{index}")

    def float(self):
        return self.to(dtype=np.float32)

    def double(self):
        return self.to(dtype=np.float64)

    def half(self):
        return self.to(dtype=np.float16)


class Tensor(DeviceDtypeShorthands):
    """An n-dimensional array on one device, optionally recording operations for autograd.

    Attributes:
        data: the backend array (``numpy.ndarray`` on the CPU, ``cupy.ndarray`` on CUDA).
        requires_grad: whether ops on this tensor are recorded for ``backward()``.
        grad: the accumulated gradient (a Tensor of the same shape and dtype), or None.
        creator: the Function that produced this tensor (None for leaves).
    """

    __slots__ = ("data", "_backend", "requires_grad", "creator", "_grad", "_grad_owned",
                 "_checks", "__weakref__")
    __array_priority__ = 1000  # NumPy defers to Tensor's reflected operators

    def __init__(self, data, dtype=None, device=None, requires_grad=False):
        t = tensor(data, dtype=dtype, device=device, requires_grad=requires_grad)
        _init_slots(self, t.data, t._backend, t.requires_grad)

    # ------------------------------------------------------------------ basic properties
    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def device(self) -> str:
        return self._backend.device

    @property
    def backend(self):
        return self._backend

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self):
        """The element count as an int (NumPy); called, ``x.size()`` is the shape and
        ``x.size(d)`` one dimension (PyTorch)."""
        n = _Size(self.data.size)
        n.shape = tuple(self.data.shape)
        return n

    def numel(self) -> int:
        return int(self.data.size)

    def dim(self) -> int:
        return self.data.ndim

    @property
    def is_leaf(self) -> bool:
        return self.creator is None

    @property
    def grad_fn(self):
        return self.creator

    def __len__(self):
        if self.data.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.data.shape[0]

    # ------------------------------------------------------------------ gradients
    @property
    def grad(self):
        return self._grad

    @grad.setter
    def grad(self, value):
        if value is None:
            self._grad = None
            return
        if not isinstance(value, Tensor):
            value = tensor(value, dtype=self.dtype, device=self.device)
        if value.shape != self.shape:
            raise ValueError(f"assigned grad of shape {value.shape} to a tensor of shape {self.shape}")
        if value._backend is not self._backend:
            raise ValueError(f"assigned grad on {value.device} to a tensor on {self.device}")
        buf = self._grad_storage()
        if buf is not None:  # the gradient lives in preallocated storage: copy into it
            buf.data[...] = value.data
            self._grad = buf
            self._grad_owned = True
        else:
            self._grad = value
            self._grad_owned = False

    def _grad_storage(self):
        """The preallocated Tensor this leaf keeps its gradient in, or None.

        A plain tensor has none: its first gradient of a backward is a fresh array. A
        ``Parameter`` that an optimizer holds in a flat buffer returns its view of the flat
        gradient (see ``Parameter._bind_flat``); ``grad =``, accumulation and
        ``autograd.Function.grad_destination`` then write there.
        """
        return None

    def _take_grad_storage(self):
        """When ``.grad`` is unset and this leaf has gradient storage (``_grad_storage``): set
        ``.grad`` to it and return its array, for a backward to write the gradient into (see
        ``autograd.Function.grad_destination``). None otherwise, as always for a plain tensor."""
        return None

    def _accumulate(self, g):
        """Add the gradient array ``g`` to ``.grad`` (in place once we own the storage)."""
        grad = self._grad
        if grad is None:
            buf = self._grad_storage()
            if buf is not None:
                if g is not buf.data:
                    buf.data[...] = g
                self._grad = buf
            else:
                # a copy: the same gradient array may flow to several leaves (x + y), and
                # each .grad must be its own storage (g.zero_() on one must not clear another)
                self._grad = _wrap(self._backend.xp.array(g, dtype=self.data.dtype, order="C"),
                                   self._backend)
            self._grad_owned = True
        elif self._grad_owned:
            grad.data += g
        else:
            grad.data = grad.data + g
            self._grad_owned = True

    def backward(self, gradient=None, retain_graph=False):
        """Compute the gradient of this tensor w.r.t. graph leaves (accumulated into ``.grad``)."""
        autograd.backward(self, gradient, retain_graph=retain_graph)

    def __reduce_ex__(self, protocol):
        """Copies and pickles carry the values, dtype, device, ``requires_grad`` and ``.grad``
        (as PyTorch's do), not the graph: a copy is a leaf. A Parameter stays a Parameter."""
        b, g = self._backend, self._grad
        return (_rebuild, (type(self), b.to_host(self.data), b, self.requires_grad,
                           None if g is None else b.to_host(g.data)))

    def detach(self):
        """A new tensor sharing this data, cut from the graph."""
        return _wrap(self.data, self._backend)

    def detach_(self):
        self.creator = None
        self.requires_grad = False
        return self

    def requires_grad_(self, requires_grad=True):
        if requires_grad and self.data.dtype.kind not in "fc":
            raise DTypeError(f"only floating tensors can require grad, got dtype {self.dtype}")
        self.requires_grad = requires_grad
        return self

    def zero_(self):
        self.data[...] = 0
        return self

    def fill_(self, value):
        self.data[...] = value
        return self

    # ------------------------------------------------------------------ in-place updates
    def _check_inplace(self, what):
        if self.requires_grad and _config.is_grad_enabled():
            raise GraphError(f"in-place {what} on a tensor that requires grad, with grad mode on: "
                             f"autograd cannot record it. Wrap the update in `with nnx.no_grad():` "
                             f"(as PyTorch requires for parameters)")

    def _operand(self, other):
        if isinstance(other, Tensor):
            if other._backend is not self._backend:
                from .errors import DeviceError

                raise DeviceError(f"in-place update of a tensor on {self.device} with one on "
                                  f"{other.device}; move it with .to(device) first")
            return other.data
        if isinstance(other, (int, float, bool)) or other is None:
            return other
        return self._backend.asarray(other)

    def __iadd__(self, other):
        self._check_inplace("+=")
        d = self.data  # in place on the array (no re-assignment of .data)
        d += self._operand(other)
        return self

    def __isub__(self, other):
        self._check_inplace("-=")
        d = self.data  # in place on the array (no re-assignment of .data)
        d -= self._operand(other)
        return self

    def __imul__(self, other):
        self._check_inplace("*=")
        d = self.data  # in place on the array (no re-assignment of .data)
        d *= self._operand(other)
        return self

    def __itruediv__(self, other):
        self._check_inplace("/=")
        d = self.data  # in place on the array (no re-assignment of .data)
        d /= self._operand(other)
        return self

    def __setitem__(self, index, value):
        self._check_inplace("assignment to an index")
        if isinstance(index, Tensor):
            index = index.data
        elif isinstance(index, tuple):
            index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
        self.data[index] = self._operand(value)

    # ------------------------------------------------------------------ host access
    def _run_checks(self):
        checks = self._checks
        if checks:
            self._checks = None
            for flag, make_error in checks:
                if bool(self._backend.to_host(flag)):
                    raise make_error()

    def numpy(self) -> np.ndarray:
        """The values as a host NumPy array (a device-to-host copy on CUDA)."""
        self._run_checks()
        return self._backend.to_host(self.data)

    def item(self):
        """The value of a one-element tensor as a Python number (a host sync on CUDA)."""
        if self.data.size != 1:
            raise ValueError(f"item(): only one-element tensors can be converted, got shape {self.shape}")
        self._run_checks()
        return self._backend.to_host(self.data).reshape(()).item()

    def tolist(self):
        return self.numpy().tolist()

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __index__(self):
        if self.data.dtype.kind not in "iu":
            raise TypeError("only integer tensors can be used as an index")
        return int(self.item())

    def __bool__(self):
        if self.data.size != 1:
            raise ValueError(f"the truth value of a tensor with {self.data.size} elements is "
                             f"ambiguous; use .any() or .all()")
        return bool(self.item())

    def __array__(self, dtype=None, copy=None):
        if self._backend.name != "numpy":
            raise TypeError(f"cannot convert a tensor on {self.device} to a NumPy array implicitly; "
                            f"call .numpy() (it copies to the host)")
        a = self.data
        return a if dtype is None else a.astype(dtype)

    def __dlpack__(self, *args, **kwargs):
        """Export the data through DLPack (zero-copy): ``torch.from_dlpack(x)``,
        ``np.from_dlpack(x)``."""
        return self.data.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self.data.__dlpack_device__()

    def __repr__(self):
        body = np.array2string(self._backend.to_host(self.data), separator=", ", precision=4,
                               prefix="tensor(")
        extra = ""
        if self.device != "cpu":
            extra += f", device='{self.device}'"
        if self.dtype != _config.get_default_dtype() and self.dtype != np.int64:
            extra += f", dtype={self.dtype}"
        if self.creator is not None:
            extra += f", grad_fn=<{self.creator.name}>"
        elif self.requires_grad:
            extra += ", requires_grad=True"
        return f"tensor({body}{extra})"

    __hash__ = object.__hash__

    # ------------------------------------------------------------------ moving data
    def long(self):
        return self.to(dtype=np.int64)

    def int(self):
        return self.to(dtype=np.int32)

    def type(self, dtype):
        return self.to(dtype=dtype)

    def astype(self, dtype):
        return self.to(dtype=dtype)

    def copy_(self, src):
        """Copy ``src``'s values into this tensor in place (no graph)."""
        src_data = src.data if isinstance(src, Tensor) else src
        if getattr(src, "_backend", self._backend) is not self._backend:
            src_data = self._backend.asarray(src.numpy())
        self.data[...] = src_data
        return self


class _Size(int):
    """An int that can also be called like PyTorch's ``Tensor.size()``."""

    def __call__(self, dim=None):
        return self.shape if dim is None else self.shape[dim]


def _is_dtype_name(s: str) -> bool:
    try:
        return np.dtype(s).kind in "fiub"
    except TypeError:
        return False


def _init_slots(t, array, backend, requires_grad=False):
    """Set every slot of a new Tensor (or Parameter); the one place that lists Tensor's slots
    (a Parameter's own are set by ``Parameter.__new__``)."""
    t.data = array
    t._backend = backend
    t.requires_grad = requires_grad
    t.creator = None
    t._grad = None
    t._grad_owned = False
    t._checks = None
    return t


def _rebuild(cls, host, backend, requires_grad, grad):
    """The Tensor (or subclass) of ``Tensor.__reduce_ex__``."""
    t = _init_slots(cls.__new__(cls), backend.asarray(host), backend, requires_grad)
    if grad is not None:
        t._grad = _wrap(backend.asarray(grad), backend)
        t._grad_owned = True
    return t


def _wrap(array, backend, requires_grad=False):
    """A Tensor around a backend array (no copy, no checks): the hot path's constructor."""
    return _init_slots(Tensor.__new__(Tensor), array, backend, requires_grad)


autograd._new_tensor = _wrap
autograd._tensor_type = Tensor


def _infer_dtype(data, dtype):
    """The dtype nnx gives ``data``: float data -> default dtype, integer stays integer."""
    if dtype is not None:
        return _config.to_dtype(dtype)
    dt = getattr(data, "dtype", None)
    if dt is not None:
        dt = np.dtype(dt)
        if dt.kind == "f":
            # float16/float32 arrays keep their precision; float64 (NumPy's default, which the
            # user rarely chose) becomes the default dtype, like Python floats.
            return dt if dt.itemsize < 8 else _config.get_default_dtype()
        if dt.kind in "iub":
            return dt
        if dt.kind == "c":
            raise DTypeError(f"complex data ({dt}) is not supported")
        raise DTypeError(f"cannot make a tensor from an array of dtype {dt} (object or string "
                         f"arrays are not numeric)")
    return None


def tensor(data, dtype=None, device=None, requires_grad=False) -> Tensor:
    """Create a tensor from ``data`` (a list, a scalar, a NumPy or CuPy array, or a Tensor).

    Floating data defaults to the default dtype (float32, see ``nnx.set_default_dtype``);
    float16/float32 arrays keep their dtype; integer data stays integer (int64 for Python ints),
    booleans stay bool. ``dtype`` takes a NumPy dtype or its name. The data is copied.

    Example:
        >>> x = nnx.tensor([[0., 0.], [0., 1.]])
        >>> x.dtype
        dtype('float32')
    """
    b = _config.backend_for(device)
    if isinstance(data, Tensor):
        src = data.data
        if data._backend is not b:
            src = data.numpy() if b.name == "numpy" else b.asarray(data.numpy())
        dt = _config.to_dtype(dtype) or data.dtype
        arr = b.xp.array(src, dtype=dt, copy=True)
    else:
        if not isinstance(data, (list, tuple, np.ndarray, numbers.Number)) and not b.is_array(data):
            data = _foreign_array(data, b)
        if isinstance(data, (list, tuple)) and any(isinstance(e, Tensor) for e in _flatten_first(data)):
            data = [e.numpy() if isinstance(e, Tensor) else e for e in data]
        dt = _infer_dtype(data, dtype)
        if dt is None:
            try:
                host = np.asarray(data)
            except ValueError as e:  # ragged nesting, e.g. [[1, 2], [3]]
                raise ShapeError(f"tensor(): could not make an array from the data: {e}") from None
            if host.dtype.kind == "f":
                dt = _config.get_default_dtype()
            elif host.dtype.kind in "iub":
                dt = host.dtype
            else:
                raise DTypeError(f"tensor(): data of dtype {host.dtype} is not numeric "
                                 f"(got {type(data).__name__})")
            data = host
        if b.name == "numpy":
            arr = b.asarray(data)
            arr = np.array(arr, dtype=dt, copy=True)
        else:
            arr = b.xp.array(data, dtype=dt)
    t = _wrap(arr, b)
    if requires_grad:
        t.requires_grad_(True)
    return t


def _foreign_array(data, b):
    """Another library's array (a PyTorch tensor, a JAX array, any DLPack or ``__array__``
    object) as an array ``b`` or NumPy can read, zero-copy where DLPack allows (``tensor`` then
    copies it)."""
    if hasattr(data, "detach") and hasattr(data, "requires_grad"):  # torch: leave its graph
        data = data.detach()
    if hasattr(data, "__dlpack__"):
        try:
            return b.xp.from_dlpack(data)
        except (BufferError, RuntimeError, TypeError, ValueError):
            pass  # another device or a dtype DLPack cannot carry (bfloat16): try a host copy
    if hasattr(data, "cpu") and hasattr(data, "numpy"):
        return data.cpu().numpy()
    return data  # __array__ objects, sequences: np.asarray reads them


def from_numpy(array) -> Tensor:
    """A CPU tensor sharing ``array``'s memory and dtype (``torch.from_numpy``): writes to one
    show in the other. Use ``nnx.tensor`` for a copy with nnx's dtype rule."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"from_numpy: expected a numpy.ndarray, got {type(array).__name__}")
    if array.dtype.kind not in "fiub":
        raise DTypeError(f"from_numpy: dtype {array.dtype} is not supported")
    return _wrap(array, _config.backend_for("cpu"))


def from_dlpack(obj) -> Tensor:
    """A tensor sharing the memory of the DLPack object ``obj`` (a PyTorch tensor, a CuPy or
    NumPy array, another nnx Tensor...) on its device, zero-copy; the dtype is kept."""
    if isinstance(obj, Tensor):
        return _wrap(obj.data, obj._backend)
    if hasattr(obj, "detach") and hasattr(obj, "requires_grad"):
        obj = obj.detach()
    kind, index = obj.__dlpack_device__()
    b = _config.backend_for("cpu" if int(kind) == 1 else f"cuda:{int(index)}")
    arr = b.xp.from_dlpack(obj)
    if arr.dtype.kind not in "fiub":
        raise DTypeError(f"from_dlpack: dtype {arr.dtype} is not supported")
    return _wrap(arr, b)


def _flatten_first(data):
    return data if isinstance(data, (list, tuple)) else ()


def as_tensor(data, like: Tensor | None = None, dtype=None) -> Tensor:
    """``data`` as a Tensor: Tensors pass through; arrays and numbers are converted onto
    ``like``'s device (floating data takes ``like``'s floating dtype)."""
    if isinstance(data, Tensor):
        return data
    if like is None:
        return tensor(data, dtype=dtype)
    b = like._backend
    if dtype is None and like.dtype.kind == "f":
        kind = getattr(getattr(data, "dtype", None), "kind", None)
        if kind == "f" or isinstance(data, numbers.Real) and not isinstance(data, (bool, np.bool_)) \
                and not isinstance(data, numbers.Integral):
            dtype = like.dtype
    if b.is_array(data):
        arr = data if dtype is None else data.astype(dtype, copy=False)
        return _wrap(arr, b)
    if hasattr(data, "__cuda_array_interface__") and b.name == "numpy":
        raise backends_mismatch(data, like)
    return tensor(data, dtype=dtype, device=like.device)


def backends_mismatch(data, like):
    from .errors import DeviceError

    return DeviceError(f"a CUDA array was combined with a tensor on {like.device}; move one of "
                       f"them first")


def host_array(obj) -> np.ndarray:
    """``obj`` as a host NumPy array: nnx Tensors, CuPy arrays and PyTorch tensors are copied to
    the host; anything else goes through ``numpy.asarray``."""
    if isinstance(obj, Tensor):
        return obj.numpy()
    if hasattr(obj, "__cuda_array_interface__") and hasattr(obj, "get"):
        return obj.get()
    if hasattr(obj, "detach") and hasattr(obj, "cpu") and hasattr(obj, "numpy"):  # torch
        return obj.detach().cpu().numpy()
    return np.asarray(obj)


def is_tensor(obj) -> bool:
    return isinstance(obj, Tensor)


__all__ = ["Tensor", "tensor", "as_tensor", "is_tensor", "from_numpy", "from_dlpack", "NNXError"]
