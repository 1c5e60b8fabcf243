"""``nnx.save`` / ``nnx.load``: safe, atomic checkpoints in NumPy's ``.npz`` format.

A checkpoint is a nested structure of dicts and lists whose leaves are arrays (NumPy, CuPy,
Tensors), numbers, strings, booleans or None. Arrays are stored as plain ``.npy`` members; the
structure goes into a JSON member, beside a format version. Loading reads the ``.npy`` members
itself and never unpickles (object arrays are refused from their header): a checkpoint cannot
run code. Before inflating anything it checks the members' declared sizes and ``.npy`` headers
against a byte limit (``max_bytes``), so a zip bomb is a CheckpointError, not an out-of-memory
kill; :class:`ByteBudget` and :func:`read_exactly` do the same for ``nnx.load_torch`` and
``nnx.load_safetensors``.

Saving writes a temporary file in the target's folder, flushes and fsyncs it, then renames it
over the target, so a crash at any moment leaves the old file or the new one, never a torn one.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
import zipfile
from collections import OrderedDict

import numpy as np

from .errors import CheckpointError
from .tensor import Tensor

FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
_VERSION_KEY = "__nnx_format__"
_META_KEY = "__nnx_meta__"


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist."""


def _host(value):
    if isinstance(value, Tensor):
        return value.numpy()
    if hasattr(value, "__cuda_array_interface__") and hasattr(value, "get"):
        return value.get()
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor
        return value.detach().cpu().numpy()
    return value


def _encode(obj, arrays, path):
    """JSON-able description of ``obj``; arrays are appended to ``arrays``."""
    obj = _host(obj)
    if isinstance(obj, np.ndarray):
        if obj.dtype == object or obj.dtype.kind not in "biufcSU":
            raise TypeError(f"nnx.save: {path or 'value'} is an array of dtype {obj.dtype}; only "
                            f"numeric, bool and string arrays can be saved")
        name = f"a{len(arrays)}"
        arrays[name] = obj
        return {"array": name}
    if isinstance(obj, (bool, np.bool_)):
        return {"bool": bool(obj)}
    if isinstance(obj, (int, np.integer)):
        return {"int": int(obj)}
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return {"float": f if math.isfinite(f) else repr(f)}
    if isinstance(obj, str):
        return {"str": obj}
    if obj is None:
        return {"none": True}
    if isinstance(obj, dict):
        items = []
        for k, v in obj.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(f"nnx.save: dict keys must be str or int, got {k!r} at {path or 'top level'}")
            items.append([k, _encode(v, arrays, f"{path}.{k}" if path else str(k))])
        return {"dict": items, "ordered": isinstance(obj, OrderedDict)}
    if isinstance(obj, (list, tuple)):
        return {"list" if isinstance(obj, list) else "tuple":
                [_encode(v, arrays, f"{path}[{i}]") for i, v in enumerate(obj)]}
    raise TypeError(f"nnx.save: cannot save {type(obj).__name__} at {path or 'top level'}: "
                    f"only dicts, lists, arrays, numbers, strings, bools and None")


def _decode(node, arrays, used):
    if not isinstance(node, dict) or len(node) == 0:
        raise CheckpointError("malformed structure in checkpoint metadata")
    if "array" in node:
        name = node["array"]
        if name not in arrays:
            raise CheckpointError(f"checkpoint refers to array {name!r}, which is missing")
        used.add(name)
        return arrays[name]
    if "bool" in node:
        return bool(node["bool"])
    if "int" in node:
        return int(node["int"])
    if "float" in node:
        return float(node["float"])
    if "str" in node:
        return str(node["str"])
    if "none" in node:
        return None
    if "dict" in node:
        out = OrderedDict() if node.get("ordered") else {}
        for pair in node["dict"]:
            if not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[0], (str, int)):
                raise CheckpointError("malformed dict entry in checkpoint metadata")
            out[pair[0]] = _decode(pair[1], arrays, used)
        return out
    if "list" in node:
        return [_decode(v, arrays, used) for v in node["list"]]
    if "tuple" in node:
        return tuple(_decode(v, arrays, used) for v in node["tuple"])
    raise CheckpointError(f"unknown entry {sorted(node)} in checkpoint metadata")


def save(obj, path) -> None:
    """Save ``obj`` (a state dict, or a nested dict such as ``{"model": ..., "optimizer": ...,
    "epoch": 3}``) to ``path`` atomically.

    Raises TypeError for values that cannot be stored, a Module among them (nothing is written
    then): save ``model.state_dict()`` and load it with ``model.load_state_dict(nnx.load(path))``.
    """
    from .nn.module import Module

    if isinstance(obj, Module):
        raise TypeError(f"nnx.save: got a module ({type(obj).__name__}); nnx saves tensors, not "
                        f"modules: use nnx.save(model.state_dict(), path) and later "
                        f"model.load_state_dict(nnx.load(path)) (a Keras model has "
                        f"model.save(path))")
    path = os.fspath(path)
    arrays = {}
    meta = json.dumps(_encode(obj, arrays, ""), allow_nan=False)
    members = {_VERSION_KEY: np.array(FORMAT_VERSION, dtype=np.int64),
               _META_KEY: np.frombuffer(meta.encode("utf-8"), dtype=np.uint8)}
    members.update(arrays)
    atomic_write(path, lambda f: np.savez(f, **members), "nnx.save")


def atomic_write(path, write, who="nnx.save") -> None:
    """Write a file atomically: ``write(f)`` fills a temporary binary file in ``path``'s folder,
    which is flushed, fsynced and renamed over ``path``. On any error (or KeyboardInterrupt) the
    temporary is removed and ``path`` is left as it was. ``who`` names the caller in errors."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CheckpointError(f"{who}: folder {folder!r} does not exist")
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def load(path, max_bytes="auto"):
    """Load a checkpoint written by ``nnx.save``: the same structure, arrays as NumPy arrays.

    Never unpickles. Raises CheckpointError (a ValueError) naming the file for a missing,
    truncated, corrupt, unsafe or unknown-version file.

    Args:
        max_bytes: the most bytes the file may inflate to (its members' uncompressed sizes,
            .npy headers included). ``"auto"`` (default): 4x the file's size plus 1 GiB; an
            int: that many bytes; None: no limit. A file that would inflate to more (a zip
            bomb) is refused before it is inflated.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointNotFoundError(f"nnx.load: no such file {path!r}")
    budget = ByteBudget(path, max_bytes, "nnx.load")
    try:
        with open(path, "rb") as fh:
            head = fh.read(6)
            fh.seek(0)
            if head.startswith(b"\x93NUMPY"):
                raise CheckpointError(f"nnx.load: {path!r} is a single .npy array, not an nnx "
                                      f"checkpoint (.npz written by nnx.save)")
            if not head.startswith(b"PK"):
                what = "an empty file" if not head else "not a .npz (zip) archive"
                raise CheckpointError(f"nnx.load: {path!r} is not an nnx checkpoint: {what} "
                                      f"(corrupt, truncated, or another format)")
            arrays = _read_npz(fh, path, budget)
    except CheckpointError:
        raise
    except ValueError as e:
        if "pickle" in str(e).lower() or "object" in str(e).lower():
            raise CheckpointError(f"nnx.load: {path!r} holds object (pickled) arrays, which nnx "
                                  f"refuses to load: loading them could run code") from None
        raise CheckpointError(f"nnx.load: {path!r} is corrupt or truncated: {e}") from None
    except (zipfile.BadZipFile, OSError, EOFError, KeyError, TypeError, RuntimeError,
            MemoryError, OverflowError, UnicodeDecodeError, NotImplementedError,
            SyntaxError) as e:
        raise CheckpointError(f"nnx.load: {path!r} is corrupt or truncated "
                              f"({type(e).__name__}: {e})") from None
    version = arrays.pop(_VERSION_KEY)
    try:
        v = int(version.reshape(()).item()) if version.size == 1 and version.dtype.kind in "iu" else None
    except (ValueError, TypeError):
        v = None
    if v not in SUPPORTED_VERSIONS:
        raise CheckpointError(f"nnx.load: {path!r} has format version {version.tolist()!r}; this "
                              f"nnx reads versions {SUPPORTED_VERSIONS}")
    meta = arrays.pop(_META_KEY)
    try:
        if meta.dtype != np.uint8 or meta.ndim != 1:
            raise ValueError("metadata is not a byte string")
        tree = json.loads(meta.tobytes().decode("utf-8"))
        used = set()
        obj = _decode(tree, arrays, used)
    except CheckpointError as e:
        raise CheckpointError(f"nnx.load: {path!r}: {e}") from None
    except (ValueError, TypeError, RecursionError, UnicodeDecodeError, AttributeError,
            OverflowError) as e:  # OverflowError: {"int": 1e400} decodes to int(inf)
        raise CheckpointError(f"nnx.load: {path!r} has corrupt metadata ({type(e).__name__}: {e})") from None
    extra = set(arrays) - used
    if extra:
        raise CheckpointError(f"nnx.load: {path!r} holds arrays the metadata does not mention: "
                              f"{sorted(extra)[:5]}")
    return obj


# ---------------------------------------------------------------- bounded reading (all loaders)
_CHUNK = 1 << 20


class ByteBudget:
    """How many bytes a loader may still inflate from one file (see ``nnx.load``'s
    ``max_bytes``); ``take`` is called BEFORE each allocation."""

    def __init__(self, path, max_bytes, who):
        if isinstance(max_bytes, str) and max_bytes == "auto":
            limit = 4 * os.path.getsize(path) + (1 << 30)
        elif max_bytes is None:
            limit = None
        elif isinstance(max_bytes, (int, np.integer)) and not isinstance(max_bytes, bool) \
                and max_bytes >= 0:
            limit = int(max_bytes)
        else:
            raise TypeError(f"{who}: max_bytes must be 'auto', None or a non-negative int, got "
                            f"{max_bytes!r}")
        self.path, self.limit, self.who, self.used = path, limit, who, 0

    def take(self, nbytes, what):
        self.check(nbytes, what)
        self.used += int(nbytes)

    def check(self, nbytes, what):
        """Raise CheckpointError if ``nbytes`` more would exceed the limit (takes nothing)."""
        nbytes = int(nbytes)
        if nbytes < 0:
            raise CheckpointError(f"{self.who}: {self.path!r} is corrupt: {what} has a negative size")
        if self.limit is not None and self.used + nbytes > self.limit:
            raise CheckpointError(
                f"{self.who}: {self.path!r} would inflate to more than {self.limit} bytes ({what} "
                f"needs {nbytes} more after {self.used}); refused before reading it (a zip bomb, "
                f"or a file larger than expected: pass max_bytes=None or a larger int to lift "
                f"the limit)")


def read_exactly(f, nbytes, budget, what):
    """``nbytes`` bytes of the binary stream ``f`` as a fresh uint8 array, read in chunks after
    charging ``budget``; CheckpointError when the stream ends early."""
    budget.take(nbytes, what)
    out = np.empty(nbytes, dtype=np.uint8)
    got = 0
    while got < nbytes:
        chunk = f.read(min(_CHUNK, nbytes - got))
        if not chunk:
            raise CheckpointError(f"{budget.who}: {budget.path!r} is truncated: {what} holds "
                                  f"{got} of its {nbytes} bytes")
        out[got:got + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
        got += len(chunk)
    return out


class _Counted:
    """A read-only stream that counts the bytes read from it."""

    def __init__(self, f):
        self.f, self.pos = f, 0

    def read(self, n=-1):
        data = self.f.read(n)
        self.pos += len(data)
        return data


def _read_npz(fh, path, budget):
    """The members of the .npz ``fh`` as arrays, without np.load: sizes are checked against
    ``budget`` before anything is inflated, object arrays refused from their header."""
    with zipfile.ZipFile(fh) as zf:
        infos = zf.infolist()
        names = [i.filename[:-4] if i.filename.endswith(".npy") else i.filename for i in infos]
        if _VERSION_KEY not in names or _META_KEY not in names:
            raise CheckpointError(f"nnx.load: {path!r} is not an nnx checkpoint (no format "
                                  f"version); was it written by nnx.save?")
        if len(set(names)) != len(names) or any(not i.filename.endswith(".npy") for i in infos):
            raise CheckpointError(f"nnx.load: {path!r} holds members nnx.save never writes "
                                  f"(duplicates or non-.npy names)")
        budget.check(sum(i.file_size for i in infos), "the archive's members (their declared "
                     "uncompressed size)")
        arrays = {}
        for name, info in zip(names, infos):
            with zf.open(info) as raw:
                f = _Counted(raw)
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise CheckpointError(f"nnx.load: {path!r}: array {name!r} has .npy version "
                                          f"{version}, which nnx.save never writes")
                if dtype.hasobject or dtype.kind not in "biufcSU":  # nnx.save writes no others
                    raise CheckpointError(
                        f"nnx.load: {path!r} holds array {name!r} of dtype {dtype}, which nnx "
                        f"checkpoints never contain (object arrays would be unpickled: refused)")
                nbytes = math.prod(shape) * dtype.itemsize
                if nbytes != info.file_size - f.pos:
                    raise CheckpointError(
                        f"nnx.load: {path!r} is corrupt: array {name!r} of shape {shape} and "
                        f"dtype {dtype} needs {nbytes} bytes, its member holds "
                        f"{info.file_size - f.pos}")
                data = read_exactly(f, nbytes, budget, f"array {name!r}")
                if raw.read(1):
                    raise CheckpointError(f"nnx.load: {path!r} is corrupt: array {name!r} has "
                                          f"trailing bytes")
            arr = np.empty(shape, dtype) if nbytes == 0 else data.view(dtype)
            if nbytes:
                arr = arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)
            arrays[name] = arr
    return arrays


def bfloat16_values(bits, converted, name):
    """bfloat16 values from their uint16 bit patterns: an ``ml_dtypes.bfloat16`` array where
    ml_dtypes is installed, else float32 (exact; ``name`` is appended to ``converted`` so that
    the caller warns once, see :func:`warn_bfloat16`)."""
    try:
        import ml_dtypes
    except ImportError:
        converted.append(name)
        return (bits.astype(np.uint32) << 16).view(np.float32)
    return bits.view(ml_dtypes.bfloat16)


def warn_bfloat16(who, path, converted):
    if converted:
        shown = ", ".join(map(repr, converted[:5])) + (" ..." if len(converted) > 5 else "")
        warnings.warn(f"{who}: {path!r}: {len(converted)} bfloat16 tensor(s) ({shown}) loaded as "
                      f"float32 (exactly): NumPy has no bfloat16 type; pip install ml_dtypes to "
                      f"keep them bfloat16", UserWarning, stacklevel=3)
