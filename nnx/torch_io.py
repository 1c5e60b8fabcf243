"""``nnx.load_torch``: read a PyTorch ``.pt`` / ``.pth`` state dict without torch and without
running code from the file.

``torch.save`` (PyTorch >= 1.6) writes a zip archive ``<name>/data.pkl`` (the pickled
structure), ``<name>/data/<key>`` (one raw storage per key), ``<name>/byteorder`` and
``<name>/version``. The pickle is read by an unpickler that resolves only the globals a
tensor state dict needs (PyTorch's ``weights_only=True`` allowlist, narrowed), each to a
function of this module that builds an inert placeholder, never to the real torch object:
any other global (``os.system``, ``builtins.eval``, a module class) is refused before it is
called. Once the pickle is read, the placeholders are checked (offsets and strides inside
their storage, sizes within the byte budget) and become NumPy arrays.
"""
from __future__ import annotations

import _compat_pickle
import io
import math
import os
import pickle
import pickletools
import re
import zipfile
from collections import OrderedDict

import numpy as np

from .errors import CheckpointError
from .serialization import (ByteBudget, CheckpointNotFoundError, bfloat16_values, read_exactly,
                            warn_bfloat16)

_WHO = "nnx.load_torch"

# torch's storage classes (torch.FloatStorage ...) -> NumPy dtype names of their elements
_STORAGE_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64", "ComplexDoubleStorage": "complex128",
}
# torch dtypes (torch.float32 ...), as _rebuild_tensor_v3 receives them
_TORCH_DTYPES = {
    "float32": "float32", "float": "float32", "float64": "float64", "double": "float64",
    "float16": "float16", "half": "float16", "bfloat16": "bfloat16", "int64": "int64",
    "long": "int64", "int32": "int32", "int": "int32", "int16": "int16", "short": "int16",
    "int8": "int8", "uint8": "uint8", "uint16": "uint16", "uint32": "uint32", "uint64": "uint64",
    "bool": "bool", "complex64": "complex64", "complex128": "complex128",
}
_MAX_DIMS = 64
_KEY = re.compile(r"^[A-Za-z0-9_.]{1,64}$")


class _Bad(Exception):
    """Raised inside the unpickler; becomes a CheckpointError naming the file."""


class _Refused(_Bad):
    def __init__(self, name):
        super().__init__(name)
        self.name = name


# ------------------------------------------------------------------ inert placeholders
class _Inert:
    __slots__ = ()

    def __setstate__(self, state):  # the BUILD opcode: nothing of ours takes a state
        raise _Bad(f"the pickle sets the state of a {type(self).__name__[1:]}, which a torch "
                   f"state dict never does")


class _DType(_Inert):
    """A storage class or torch dtype, as the name of the NumPy dtype of its elements."""
    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name

    @property
    def itemsize(self):
        return 2 if self.name == "bfloat16" else np.dtype(self.name).itemsize


class _Storage(_Inert):
    __slots__ = ("key", "dtype", "numel", "refs")

    def __init__(self, key, dtype, numel):
        self.key, self.dtype, self.numel, self.refs = key, dtype, numel, 0

    @property
    def nbytes(self):
        return self.numel * self.dtype.itemsize


class _TensorRef(_Inert):
    __slots__ = ("storage", "offset", "size", "stride", "dtype")

    def __init__(self, storage, offset, size, stride, dtype):
        self.storage, self.offset, self.size, self.stride, self.dtype = \
            storage, offset, size, stride, dtype
        storage.refs += 1


def _int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _shape(v, what):
    if not isinstance(v, (tuple, list)) or len(v) > _MAX_DIMS or not all(_int(d) and d >= 0 for d in v):
        raise _Bad(f"a tensor's {what} is {v!r}, not a tuple of non-negative ints")
    return tuple(v)


def _tensor(storage, offset, size, stride, dtype, metadata=None):
    if not isinstance(storage, _Storage):
        raise _Bad(f"a tensor is built from a {type(storage).__name__}, not a storage")
    if not _int(offset) or offset < 0:
        raise _Bad(f"a tensor's storage offset is {offset!r}")
    size, stride = _shape(size, "size"), _shape(stride, "stride")
    if len(size) != len(stride):
        raise _Bad(f"a tensor has size {size} but stride {stride}")
    if metadata:  # conjugate / negative bits
        raise _Bad(f"a tensor carries metadata {metadata!r} (a lazily conjugated or negated "
                   f"tensor), which nnx does not read")
    return _TensorRef(storage, offset, size, stride, dtype)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _tensor(storage, storage_offset, size, stride, storage.dtype
                   if isinstance(storage, _Storage) else None)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _tensor(storage, storage_offset, size, stride, storage.dtype
                   if isinstance(storage, _Storage) else None, metadata)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
    if not isinstance(dtype, _DType):
        raise _Bad(f"a tensor's dtype is a {type(dtype).__name__}")
    return _tensor(storage, storage_offset, size, stride, dtype, metadata)


def _rebuild_parameter(data, requires_grad=True, backward_hooks=None, state=None):
    if not isinstance(data, _TensorRef):
        raise _Bad(f"a Parameter wraps a {type(data).__name__}, not a tensor")
    return data


def _device(*args):
    if not all(isinstance(a, (str, int)) for a in args):
        raise _Bad(f"torch.device{args!r}")
    return ":".join(map(str, args))


def _size(dims=()):
    return _shape(dims, "torch.Size")


def _encode(text, encoding="utf-8"):  # how protocol 2 pickles bytes
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Bad(f"_codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


class _Call(_Inert):
    """An allowed function as the pickle sees it. NOTE: not the function itself: BUILD on a
    function object could set its ``__defaults__`` for every later load; this refuses it."""
    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args):
        return self.fn(*args)


_ALLOWED = {
    "collections.OrderedDict": OrderedDict,  # a built-in type: attributes cannot be set on it
    "torch._utils._rebuild_tensor": _Call(_rebuild_tensor),
    "torch._utils._rebuild_tensor_v2": _Call(_rebuild_tensor_v2),
    "torch._utils._rebuild_tensor_v3": _Call(_rebuild_tensor_v3),
    "torch._utils._rebuild_parameter": _Call(_rebuild_parameter),
    "torch._utils._rebuild_parameter_with_state": _Call(_rebuild_parameter),
    "torch.device": _Call(_device),
    "torch.Size": _Call(_size),
    "_codecs.encode": _Call(_encode),
}
_ALLOWED.update({f"torch.{k}": _DType(v) for k, v in _STORAGE_DTYPES.items()})
_ALLOWED.update({f"torch.{k}": _DType(v) for k, v in _TORCH_DTYPES.items()})
_ALLOWED.update({k: _DType("uint8") for k in ("torch.storage.UntypedStorage", "torch.UntypedStorage")})
_STORAGE_TYPES = {id(v) for k, v in _ALLOWED.items()
                  if k[len("torch."):] in _STORAGE_DTYPES or k.endswith("UntypedStorage")}


class _Unpickler(pickle.Unpickler):
    """Every opcode that names a global goes through ``find_class`` (GLOBAL, STACK_GLOBAL,
    INST, the EXT codes), every persistent id through ``persistent_load``."""

    def __init__(self, f):
        super().__init__(f)
        self.storages = {}

    def find_class(self, module, name):
        # torch.save writes protocol 2, with Python 2's names for moved globals
        # ('__builtin__.eval'): name them as Python 3 does, as the default find_class would.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        full = f"{module}.{name}"
        found = _ALLOWED.get(full)
        if found is None:
            raise _Refused(full)
        return found

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise _Bad(f"persistent id {pid!r:.80} is not a torch storage")
        _, stype, key, location, numel = pid
        if id(stype) not in _STORAGE_TYPES or not isinstance(key, str) or not _KEY.match(key) \
                or not isinstance(location, str) or not _int(numel) or numel < 0:
            raise _Bad(f"persistent id {pid!r:.80} is not a valid torch storage reference")
        st = self.storages.get(key)
        if st is None:
            st = self.storages[key] = _Storage(key, stype, numel)
        elif st.dtype is not stype or st.numel != numel:
            raise _Bad(f"storage {key!r} is referenced with two different types or sizes")
        return st


def _unpickle(data, path):
    """The structure pickled in ``data``, with _TensorRef placeholders for the tensors."""
    try:
        # Walk the opcodes first without building anything: every length they declare must
        # lie inside the data (the C unpickler allocates a BINBYTES8's claimed size before
        # reading it).
        for _ in pickletools.genops(io.BytesIO(data)):
            pass
        obj = _Unpickler(io.BytesIO(data)).load()
    except _Refused as e:
        raise CheckpointError(
            f"{_WHO}: refused global {e.name!r} in {path!r} (only tensor state dicts are read; "
            f"nothing was executed: save model.state_dict(), not the model or other objects)"
        ) from None
    except _Bad as e:
        raise CheckpointError(f"{_WHO}: {path!r} is not a plain tensor state dict: {e}") from None
    except RecursionError:
        raise CheckpointError(f"{_WHO}: {path!r}: the pickle nests too deeply") from None
    # NOTE: a corrupt pickle raises about any exception type from the unpickler (UnpicklingError,
    # EOFError, ValueError, TypeError, KeyError, IndexError, MemoryError ...); none of them can
    # come from code in the file, since no global of the file is ever called.
    except Exception as e:
        raise CheckpointError(f"{_WHO}: {path!r} holds a corrupt or truncated pickle "
                              f"({type(e).__name__}: {e})") from None
    return obj


class _Builder:
    """Turns the unpickled structure into dicts, lists and NumPy arrays."""

    def __init__(self, zf, prefix, path, budget, byteorder):
        self.zf, self.prefix, self.path, self.budget = zf, prefix, path, budget
        self.order = "<" if byteorder == "little" else ">"
        self.raw = {}          # storage key -> uint8 array of its bytes (until its last tensor)
        self.done = {}         # id(placeholder) -> built value (shared objects stay shared)
        self.active = set()
        self.bf16 = []

    def fail(self, msg):
        raise CheckpointError(f"{_WHO}: {self.path!r}: {msg}")

    def build(self, obj, where):
        if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
            return obj
        oid = id(obj)
        if oid in self.done:
            return self.done[oid]
        if oid in self.active:
            self.fail(f"{where} contains itself")
        self.active.add(oid)
        if isinstance(obj, _TensorRef):
            out = self.tensor(obj, where)
        elif isinstance(obj, dict):
            out = OrderedDict() if isinstance(obj, OrderedDict) else {}
            for k, v in obj.items():
                if not (k is None or isinstance(k, (bool, int, float, str, bytes, tuple))):
                    self.fail(f"{where} has a key of type {type(k).__name__}")
                out[k] = self.build(v, f"{where}.{k}" if where else str(k))
        elif type(obj) in (list, tuple):
            out = type(obj)(self.build(v, f"{where}[{i}]") for i, v in enumerate(obj))
        else:
            what = "a bare storage" if isinstance(obj, _Storage) else f"a {type(obj).__name__}"
            self.fail(f"{where or 'the top level'} is {what}; nnx reads tensors, dicts, lists, "
                      f"tuples, numbers and strings")
        self.active.discard(oid)
        self.done[oid] = out
        return out

    def storage_bytes(self, st):
        raw = self.raw.get(st.key)
        if raw is None:
            name = f"{self.prefix}/data/{st.key}"
            try:
                info = self.zf.getinfo(name)
            except KeyError:
                self.fail(f"storage {st.key!r} is missing from the archive (truncated?)")
            if info.file_size != st.nbytes:
                self.fail(f"storage {st.key!r} should hold {st.nbytes} bytes, its member "
                          f"declares {info.file_size}")
            with self.zf.open(info) as f:
                raw = read_exactly(f, st.nbytes, self.budget, f"storage {st.key!r}")
            self.raw[st.key] = raw
        return raw

    def tensor(self, t, where):
        st, dt = t.storage, t.dtype
        bf16 = dt.name == "bfloat16"
        np_dtype = np.dtype(self.order + ("u2" if bf16 else np.dtype(dt.name).str[1:]))
        itemsize = np_dtype.itemsize
        numel = math.prod(t.size)
        if st.nbytes % itemsize:
            self.fail(f"tensor {where!r}: its storage of {st.nbytes} bytes is no whole number "
                      f"of {dt.name} elements")
        n_elems = st.nbytes // itemsize
        if numel:
            extent = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride)) + 1
            if extent > n_elems:
                self.fail(f"tensor {where!r} (offset {t.offset}, size {t.size}, stride "
                          f"{t.stride}) reaches element {extent - 1} of a storage of {n_elems}")
        self.budget.take(numel * itemsize, f"tensor {where!r}")
        raw = self.storage_bytes(st)
        st.refs -= 1
        last = st.refs <= 0
        if last:
            del self.raw[st.key]
        if numel == 0:
            out = np.empty(t.size, np_dtype)
        elif _c_contiguous(t.size, t.stride):
            out = raw.view(np_dtype)[t.offset:t.offset + numel].reshape(t.size)
            if not (last and numel == n_elems):  # else: the storage's buffer, used by no other
                out = out.copy()
        else:
            base = raw.view(np_dtype)[t.offset:]
            out = np.lib.stride_tricks.as_strided(
                base, shape=t.size, strides=tuple(s * itemsize for s in t.stride)).copy()
        if not out.dtype.isnative:
            out = out.astype(out.dtype.newbyteorder("="))
        return bfloat16_values(out, self.bf16, where) if bf16 else out


def _c_contiguous(size, stride):
    expected = 1
    for n, s in zip(reversed(size), reversed(stride)):
        if n != 1 and s != expected:
            return False
        expected *= n
    return True


def _archive_prefix(zf, path):
    pkls = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
        hint = " (an nnx checkpoint? use nnx.load)" if any(
            n.startswith("__nnx_format__") for n in zf.namelist()) else ""
        raise CheckpointError(f"{_WHO}: {path!r} is a zip archive but not a torch.save "
                              f"checkpoint: {len(pkls)} <name>/data.pkl members{hint}")
    return pkls[0][:-len("/data.pkl")]


def load_torch(path, max_bytes="auto"):
    """Read a checkpoint written by ``torch.save`` (PyTorch >= 1.6, zip format) without torch.

    Returns the saved structure with every tensor as a NumPy array (a copy; torch's dtype:
    float16 stays float16, bfloat16 becomes ``ml_dtypes.bfloat16`` where ml_dtypes is installed,
    else float32 with a warning): ``model.load_state_dict(nnx.load_torch("model.pt"))`` loads
    ``torch.save(torch_model.state_dict(), "model.pt")`` into an nnx model of the same
    architecture. Nested checkpoints (``{"model": sd, "epoch": 3}``) keep their dicts, lists,
    tuples, numbers and strings.

    Nothing from the file is executed: a global outside the state-dict allowlist (a module
    class, ``os.system`` ...) raises CheckpointError naming it, as do a legacy (non-zip) torch
    file, a plain pickle, and a corrupt or truncated file.

    Args:
        max_bytes: the most bytes the storages and arrays may take, as in :func:`nnx.load`
            (``"auto"``: 4x the file's size plus 1 GiB; an int; None: no limit).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointNotFoundError(f"{_WHO}: no such file {path!r}")
    budget = ByteBudget(path, max_bytes, _WHO)
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
            fh.seek(0)
            if not head.startswith(b"PK"):
                _refuse_non_zip(fh, path, budget, head)
            with zipfile.ZipFile(fh) as zf:
                prefix = _archive_prefix(zf, path)
                with zf.open(f"{prefix}/data.pkl") as f:
                    size = zf.getinfo(f"{prefix}/data.pkl").file_size
                    data = read_exactly(f, size, budget, "data.pkl").tobytes()
                byteorder = "little"
                if f"{prefix}/byteorder" in zf.namelist():
                    with zf.open(f"{prefix}/byteorder") as f:  # bounded: it may be a bomb too
                        byteorder = f.read(16).decode("ascii", "replace")
                    if byteorder not in ("little", "big"):
                        raise CheckpointError(f"{_WHO}: {path!r} has byteorder {byteorder!r}")
                obj = _unpickle(data, path)
                builder = _Builder(zf, prefix, path, budget, byteorder)
                try:
                    out = builder.build(obj, "")
                except RecursionError:
                    raise CheckpointError(f"{_WHO}: {path!r}: the structure nests too deeply") from None
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, KeyError, ValueError, TypeError,
            RuntimeError, MemoryError, OverflowError, UnicodeDecodeError,
            NotImplementedError) as e:
        raise CheckpointError(f"{_WHO}: {path!r} is corrupt or truncated "
                              f"({type(e).__name__}: {e})") from None
    warn_bfloat16(_WHO, path, builder.bf16)
    return out


def _refuse_non_zip(fh, path, budget, head):
    if not head:
        raise CheckpointError(f"{_WHO}: {path!r} is an empty file")
    if head[:1] != b"\x80":
        raise CheckpointError(f"{_WHO}: {path!r} is not a torch checkpoint (neither the zip "
                              f"format of torch.save nor a pickle)")
    # A pickle: read its first object with the same restricted unpickler, which names the
    # first refused global; a legacy torch file starts with its magic number instead.
    data = read_exactly(fh, os.path.getsize(path), budget, "the file").tobytes()
    try:
        end = next(pos for op, _, pos in pickletools.genops(io.BytesIO(data)) if op.name == "STOP")
    except Exception:  # corrupt: let the unpickler say so
        end = len(data) - 1
    obj = _unpickle(data[:end + 1], path)
    if obj == 0x1950A86A20F9469CFC6C:
        raise CheckpointError(f"{_WHO}: {path!r} is a legacy torch file (the non-zip format "
                              f"of torch.save(..., _use_new_zipfile_serialization=False)); "
                              f"nnx reads only the zip format: re-save it with torch.save in "
                              f"PyTorch >= 1.6")
    raise CheckpointError(f"{_WHO}: {path!r} is a plain pickle, not a torch.save checkpoint "
                          f"(zip format), which is all nnx.load_torch reads")
