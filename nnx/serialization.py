"""``nnx.save`` / ``nnx.load``: safe, atomic checkpoints in NumPy's ``.npz`` format.

A checkpoint is a nested structure of dicts and lists whose leaves are arrays (NumPy, CuPy,
Tensors), numbers, strings, booleans or None. Arrays are stored as plain ``.npy`` members; the
structure goes into a JSON member, beside a format version. Loading uses
``allow_pickle=False`` and never unpickles: a checkpoint cannot run code.

Saving writes a temporary file in the target's folder, flushes and fsyncs it, then renames it
over the target, so a crash at any moment leaves the old file or the new one, never a torn one.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
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
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CheckpointError(f"nnx.save: folder {folder!r} does not exist")
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **members)
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


def load(path):
    """Load a checkpoint written by ``nnx.save``: the same structure, arrays as NumPy arrays.

    Never unpickles. Raises CheckpointError (a ValueError) naming the file for a missing,
    truncated, corrupt, unsafe or unknown-version file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointNotFoundError(f"nnx.load: no such file {path!r}")
    try:
        # NOTE: we open the file ourselves: np.load(path) leaks its file handle when the zip
        # directory is corrupt (it hands the handle to NpzFile, whose constructor then raises).
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
            z = np.load(fh, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise CheckpointError(f"nnx.load: {path!r} is a single .npy array, not an nnx checkpoint")
            with z:
                names = list(z.files)
                if _VERSION_KEY not in names or _META_KEY not in names:
                    raise CheckpointError(f"nnx.load: {path!r} is not an nnx checkpoint (no format "
                                          f"version); was it written by nnx.save?")
                arrays = {}
                for n in names:
                    a = z[n]
                    if a.dtype.kind not in "biufcSU":  # nnx.save writes no others (records, dates)
                        raise CheckpointError(f"nnx.load: {path!r} holds array {n!r} of dtype "
                                              f"{a.dtype}, which nnx checkpoints never contain")
                    arrays[n] = a
    except CheckpointError:
        raise
    except ValueError as e:
        if "pickle" in str(e).lower() or "object" in str(e).lower():
            raise CheckpointError(f"nnx.load: {path!r} holds object (pickled) arrays, which nnx "
                                  f"refuses to load: loading them could run code") from None
        raise CheckpointError(f"nnx.load: {path!r} is corrupt or truncated: {e}") from None
    except (zipfile.BadZipFile, OSError, EOFError, KeyError, TypeError, RuntimeError,
            MemoryError, OverflowError, UnicodeDecodeError, NotImplementedError) as e:
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
