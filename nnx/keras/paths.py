"""The file names ``Sequential.save`` and ``ModelCheckpoint`` write: nnx's own checkpoint
format only (an ``nnx.save`` ``.npz`` archive, named ``.npz`` or ``.nnx``). A name that asks
for another format (Keras's ``.keras`` or ``.h5``, a ``.pt``, no extension at all) is refused
before anything is written, rather than an nnx archive written under a misleading name."""
from __future__ import annotations

import os

__all__ = ["SAVE_EXTENSIONS", "check_save_path"]

#: The extensions of the files nnx writes (both hold an ``nnx.save`` ``.npz`` archive).
SAVE_EXTENSIONS = (".npz", ".nnx")


def check_save_path(path, what):
    """``path`` as a str when its extension is one of :data:`SAVE_EXTENSIONS`; ValueError
    naming those formats otherwise. ``what`` names the caller in the message."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in SAVE_EXTENSIONS:
        found = f"extension {ext!r}" if ext else "no extension"
        hint = {".keras": "Keras's .keras format", ".h5": "HDF5 (Keras's legacy .h5)",
                ".hdf5": "HDF5", ".pt": "PyTorch's pickle", ".pth": "PyTorch's pickle",
                ".pkl": "a pickle"}.get(ext)
        raise ValueError(f"{what}: {path!r} has {found}" + (f" ({hint})" if hint else "") +
                         f"; nnx writes only its own checkpoint format, an .npz archive: name "
                         f"the file with {' or '.join(SAVE_EXTENSIONS)}, e.g. 'model.npz' "
                         f"(reload it with nnx.load_model)")
    return path
