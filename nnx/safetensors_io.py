"""``nnx.save_safetensors`` / ``nnx.load_safetensors``: Hugging Face's ``.safetensors`` format
through the ``safetensors`` package's NumPy API (``pip install nnx[safetensors]``).

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON
(``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}``) and
the tensors' bytes, offsets relative to the end of the header. nnx checks that header itself
(bounds, sizes, overlaps, dtypes) before the library reads the file, so a corrupt or malicious
header gets a CheckpointError naming the file and can never make it allocate more than the
file holds.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping

import numpy as np

from .errors import CheckpointError
from .serialization import (ByteBudget, CheckpointNotFoundError, _host, atomic_write,
                            bfloat16_values, read_exactly, warn_bfloat16)

# safetensors dtype codes -> NumPy dtype names (all little-endian in the file)
_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
           "I64": "int64", "U64": "uint64", "I32": "int32", "U32": "uint32", "I16": "int16",
           "U16": "uint16", "I8": "int8", "U8": "uint8", "BOOL": "bool", "C64": "complex64"}
_SAVABLE = set(_DTYPES.values())
_MAX_HEADER = 100 << 20  # the safetensors library refuses larger headers too


def _library(who):
    try:
        import safetensors
        import safetensors.numpy
    except ImportError:
        raise ImportError(f"{who} needs the safetensors package: pip install nnx[safetensors] "
                          f"(or pip install safetensors)") from None
    return safetensors


def save_safetensors(state_dict, path, metadata=None) -> None:
    """Write ``state_dict`` (a mapping of str names to nnx Tensors or Parameters on any device,
    NumPy or CuPy arrays, torch tensors or numbers) to the ``.safetensors`` file ``path``,
    atomically (a temporary file renamed over ``path``).

    Arrays are written C-contiguous and little-endian; dtypes bool, (u)int8..64, float16/32/64,
    complex64 and ``ml_dtypes.bfloat16``. ``metadata``: an optional dict of str to str stored in
    the header (``load_safetensors(path, with_metadata=True)`` returns it). Raises TypeError for
    anything else, naming the entry; nothing is written then.
    """
    lib = _library("nnx.save_safetensors")
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"nnx.save_safetensors: expected a dict of name -> tensor, got "
                        f"{type(state_dict).__name__}")
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            raise TypeError(f"nnx.save_safetensors: metadata must be a dict of str to str, got "
                            f"{type(metadata).__name__}")
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError(f"nnx.save_safetensors: metadata must map str to str; entry "
                                f"{k!r}: {v!r} is {type(k).__name__} -> {type(v).__name__}")
        metadata = dict(metadata)
    arrays = {}
    for name, value in state_dict.items():
        if not isinstance(name, str):
            raise TypeError(f"nnx.save_safetensors: names must be str, got {name!r}")
        if name == "__metadata__":
            raise TypeError("nnx.save_safetensors: '__metadata__' is reserved by the format; "
                            "pass metadata=... instead")
        arr = _host(value)
        if isinstance(arr, (bool, int, float, np.generic)):
            arr = np.asarray(arr)
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"nnx.save_safetensors: {name!r} is a {type(value).__name__}, not a "
                            f"tensor or array")
        if arr.dtype.name not in _SAVABLE:
            raise TypeError(f"nnx.save_safetensors: {name!r} has dtype {arr.dtype}; safetensors "
                            f"stores {sorted(_SAVABLE)}")
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        # NOTE: the library reads the array's memory from its data pointer: a strided view
        # would be written as the wrong bytes. (np.ascontiguousarray would make a 0-d array 1-d.)
        arrays[name] = arr if arr.flags.c_contiguous else arr.copy(order="C")
    data = lib.numpy.save(arrays, metadata)
    atomic_write(path, lambda f: f.write(data), "nnx.save_safetensors")


def _header(path, fh, size):
    """The validated JSON header of the safetensors file ``fh`` (``size`` bytes) and the
    length of its prefix (8 + N)."""
    def bad(msg):
        return CheckpointError(f"nnx.load_safetensors: {path!r}: {msg}")

    if size < 8:
        raise bad(f"the file has {size} bytes, fewer than the 8 of a header length (truncated, "
                  f"or not a safetensors file)")
    n = int.from_bytes(fh.read(8), "little")
    if n > size - 8:
        raise bad(f"the header claims {n} bytes but the file holds only {size - 8} after the "
                  f"length (truncated, or not a safetensors file)")
    if n > _MAX_HEADER:
        raise bad(f"the header claims {n} bytes, more than the {_MAX_HEADER} safetensors allows")
    try:
        header = json.loads(fh.read(n).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise bad(f"the header is not valid JSON ({type(e).__name__}: {e})") from None
    if not isinstance(header, dict):
        raise bad(f"the header is a JSON {type(header).__name__}, not an object")
    meta = header.pop("__metadata__", None)
    if meta is not None and not (isinstance(meta, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in meta.items())):
        raise bad("the header's __metadata__ is not a map of str to str")
    buffer = size - 8 - n
    spans = []
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise bad(f"tensor {name!r} has entry {entry!r:.100}, not dtype/shape/data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in _DTYPES:
            raise bad(f"tensor {name!r} has unknown dtype {dtype!r} (nnx reads {sorted(_DTYPES)})")
        if not isinstance(shape, list) or len(shape) > 64 or not all(
                type(d) is int and d >= 0 for d in shape):
            raise bad(f"tensor {name!r} has shape {shape!r:.100}")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(type(o) is int for o in offsets) and 0 <= offsets[0] <= offsets[1]):
            raise bad(f"tensor {name!r} has data_offsets {offsets!r:.100}")
        begin, end = offsets
        itemsize = 2 if dtype == "BF16" else np.dtype(_DTYPES[dtype]).itemsize
        nbytes = math.prod(shape) * itemsize
        if end > buffer:
            raise bad(f"tensor {name!r} claims bytes {begin}..{end} of a data section of only "
                      f"{buffer} (truncated, or a corrupt header)")
        if end - begin != nbytes:
            raise bad(f"tensor {name!r} of shape {shape} and dtype {dtype} needs {nbytes} "
                      f"bytes, its data_offsets span {end - begin}")
        spans.append((begin, end, name))
    spans.sort()
    pos = 0
    for begin, end, name in spans:
        if begin < pos:
            raise bad(f"tensor {name!r} (bytes {begin}..{end}) overlaps the tensor before it")
        if begin > pos:
            raise bad(f"bytes {pos}..{begin} before tensor {name!r} belong to no tensor "
                      f"(misaligned offsets)")
        pos = end
    if pos != buffer:
        raise bad(f"the tensors cover {pos} bytes of a data section of {buffer} (trailing "
                  f"bytes, or misaligned offsets)")
    return header, meta or {}, 8 + n


def load_safetensors(path, max_bytes="auto", *, with_metadata=False):
    """Read the ``.safetensors`` file ``path`` into a dict of name -> NumPy array (in the
    file's order), as ``safetensors.numpy.load_file`` does; ``model.load_state_dict`` takes it
    directly, also from ``safetensors.torch.save_file(torch_model.state_dict(), path)``.

    BF16 tensors become ``ml_dtypes.bfloat16`` arrays where ml_dtypes is installed, else
    float32 (exactly) with a warning.

    Args:
        max_bytes: the most bytes the arrays may take, as in :func:`nnx.load` (``"auto"``:
            4x the file's size plus 1 GiB; an int; None: no limit).
        with_metadata: also return the header's ``__metadata__`` dict: ``(tensors, metadata)``.

    Raises CheckpointError naming the file for a missing, truncated or corrupt file, an
    oversized header, unknown dtypes, or overlapping or out-of-file offsets.
    """
    lib = _library("nnx.load_safetensors")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointNotFoundError(f"nnx.load_safetensors: no such file {path!r}")
    budget = ByteBudget(path, max_bytes, "nnx.load_safetensors")
    converted = []
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            header, meta, start = _header(path, fh, size)
            budget.check(size - start, "the tensors")
            out = {}
            bf16 = [(k, e) for k, e in header.items() if e["dtype"] == "BF16"]
            for name, e in bf16:  # the library's NumPy API has no bfloat16
                fh.seek(start + e["data_offsets"][0])
                bits = read_exactly(fh, e["data_offsets"][1] - e["data_offsets"][0], budget,
                                    f"tensor {name!r}").view("<u2").reshape(e["shape"])
                out[name] = bfloat16_values(bits.astype(np.uint16), converted, name)
            with lib.safe_open(path, framework="np") as f:
                for name, e in header.items():
                    if e["dtype"] != "BF16":
                        budget.take(e["data_offsets"][1] - e["data_offsets"][0], f"tensor {name!r}")
                        out[name] = f.get_tensor(name)
    except CheckpointError:
        raise
    # NOTE: the header was validated above; what the library may still raise (SafetensorError,
    # OSError for a file changed meanwhile ...) means a corrupt file.
    except Exception as e:
        raise CheckpointError(f"nnx.load_safetensors: {path!r} is corrupt or unreadable "
                              f"({type(e).__name__}: {e})") from None
    warn_bfloat16("nnx.load_safetensors", path, converted)
    out = {name: out[name] for name in header}
    return (out, meta) if with_metadata else out
