"""Small datasets and preprocessing helpers.

Every loader here reads data that is already on the machine: ``xor`` is four rows written
below, ``digits`` and ``breast_cancer`` come from the files bundled inside scikit-learn, and
``mnist`` reads the IDX files from a folder you name. Nothing here downloads, ever.

All loaders return host NumPy arrays ``(x, y)``: features are ``float32``; class labels are
``int64`` (``xor``'s targets are ``float32`` of shape (4, 1), as the lecture's binary
cross-entropy expects). Wrap them in :class:`nnx.data.DataLoader` or pass them to ``fit``.

Example::

    >>> from nnx import datasets
    >>> x, y = datasets.digits()
    >>> x_tr, x_te, y_tr, y_te = datasets.train_test_split(x, y, test_size=0.2, seed=0)
    >>> x_tr, x_te = datasets.standardize(x_tr, x_te)
"""
from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

from .data import _host_array as _host

__all__ = [
    "xor",
    "digits",
    "breast_cancer",
    "mnist",
    "read_idx",
    "train_test_split",
    "standardize",
]


# ---------------------------------------------------------------------------------- xor
def xor():
    """The XOR truth table, in the lecture's row order.

    Returns:
        ``(x, y)``: ``x`` float32 (4, 2) ``[[0, 0], [0, 1], [1, 0], [1, 1]]`` and ``y`` float32
        (4, 1) ``[[0], [1], [1], [0]]``.
    """
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
    y = np.array([[0], [1], [1], [0]], dtype=np.float32)
    return x, y


# ------------------------------------------------------------------ scikit-learn's data
def _sklearn_datasets(caller):
    try:
        from sklearn import datasets as skd
    except ImportError as e:
        raise ImportError(
            f"nnx.datasets.{caller}() reads the data bundled with scikit-learn, which is not "
            "installed: pip install 'nnx[sklearn]' (or pip install scikit-learn)"
        ) from e
    return skd


def digits(scale=True):
    """The 8x8 handwritten digits bundled with scikit-learn (1,797 images, 10 classes).

    Args:
        scale: divide the pixel values (0..16) by 16, so that ``x`` lies in [0, 1] like
            :func:`mnist`'s. Default: ``True``.

    Returns:
        ``(x, y)``: ``x`` float32 (1797, 64), ``y`` int64 (1797,) with values 0..9.

    Raises:
        ImportError: scikit-learn is not installed (``pip install 'nnx[sklearn]'``).
    """
    bunch = _sklearn_datasets("digits").load_digits()
    x = np.asarray(bunch.data, dtype=np.float32)
    if scale:
        x /= np.float32(16.0)
    return np.ascontiguousarray(x), np.asarray(bunch.target, dtype=np.int64)


def breast_cancer():
    """The Wisconsin breast-cancer data bundled with scikit-learn (569 rows, 30 features).

    Labels follow scikit-learn: 0 = malignant, 1 = benign. The features span very different
    ranges (0.05 to 4,000): pass them through :func:`standardize` before training.

    Returns:
        ``(x, y)``: ``x`` float32 (569, 30), ``y`` int64 (569,) with values 0 and 1.

    Raises:
        ImportError: scikit-learn is not installed (``pip install 'nnx[sklearn]'``).
    """
    bunch = _sklearn_datasets("breast_cancer").load_breast_cancer()
    x = np.ascontiguousarray(bunch.data, dtype=np.float32)
    return x, np.asarray(bunch.target, dtype=np.int64)


# --------------------------------------------------------------------------------- IDX
# The IDX format (http://yann.lecun.com/exdb/mnist/): two zero bytes, a type code, the number
# of dimensions, then one big-endian uint32 per dimension, then the values, big-endian.
_IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path):
    with open(path, "rb") as f:
        raw = f.read()
    # Sniff the gzip magic rather than trusting the name: browsers and some mirrors
    # decompress on the fly but keep ".gz", others hand out gzip data without it.
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            raise ValueError(f"{path}: corrupt or truncated gzip data ({e})") from e
    return raw


def read_idx(path):
    """Read one IDX file (plain or gzipped) into a NumPy array.

    Args:
        path: the file.

    Returns:
        An array of the file's shape, in native byte order (``uint8`` for MNIST).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the header is not IDX, or the data is shorter or longer than the header
            announces (a truncated or corrupt download).
    """
    path = os.fspath(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise ValueError(f"{path}: not an IDX file: {len(raw)} bytes, shorter than the header")
    zero1, zero2, code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero1 != 0 or zero2 != 0 or code not in _IDX_TYPES:
        raise ValueError(
            f"{path}: not an IDX file: bad magic number 0x{raw[:4].hex()} (expected 0x0000 "
            f"then a type code among {sorted(hex(c) for c in _IDX_TYPES)})"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header})")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_TYPES[code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "too long"
        raise ValueError(
            f"{path}: {what} IDX file: the header announces shape {shape} of {dtype.name} "
            f"({expected} bytes in all) but the file holds {len(raw)} bytes"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)


_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find_idx(root, name):
    # The standard name, its .gz, and the "train-images.idx3-ubyte" spelling that some
    # unzip tools and the Kaggle copy produce.
    dotted = name.replace("-idx", ".idx")
    for candidate in (name, name + ".gz", dotted, dotted + ".gz"):
        path = os.path.join(root, candidate)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"MNIST file {name!r} (or {name}.gz) not found in folder {os.path.abspath(root)!r}; "
        "nnx never downloads: put the four IDX files from the MNIST distribution there"
    )


def mnist(root, kind="train"):
    """MNIST (or a drop-in such as Fashion-MNIST) from the standard IDX files in a folder.

    Reads ``train-images-idx3-ubyte`` and ``train-labels-idx1-ubyte`` (``kind="train"``) or
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (``kind="test"``), each plain
    or gzipped (``.gz``). Nothing is downloaded.

    Args:
        root: the folder holding the files.
        kind: ``"train"`` (60,000 images) or ``"test"`` (10,000 images).

    Returns:
        ``(x, y)``: ``x`` float32 (N, rows*cols), that is (N, 784), scaled to [0, 1];
        ``y`` int64 (N,).

    Raises:
        FileNotFoundError: a file is missing (the message names it and the folder).
        ValueError: a file is truncated or not the IDX file it should be, or the image and
            label counts differ.
    """
    if kind not in _MNIST_FILES:
        raise ValueError(f"mnist(kind={kind!r}): kind must be 'train' or 'test'")
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"MNIST folder {os.path.abspath(root)!r} does not exist")
    img_path, lbl_path = (_find_idx(root, name) for name in _MNIST_FILES[kind])
    images = read_idx(img_path)
    labels = read_idx(lbl_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(
            f"{img_path}: expected an IDX file of uint8 images (magic 0x00000803, "
            f"N x rows x cols), got {images.dtype} of shape {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(
            f"{lbl_path}: expected an IDX file of uint8 labels (magic 0x00000801, N), "
            f"got {labels.dtype} of shape {labels.shape}"
        )
    if len(images) != len(labels):
        raise ValueError(
            f"{img_path} holds {len(images)} images but {lbl_path} holds {len(labels)} labels"
        )
    x = images.reshape(len(images), -1).astype(np.float32)
    x *= np.float32(1.0 / 255.0)
    return x, labels.astype(np.int64)


# ------------------------------------------------------------------------ preprocessing
def _num_test(n, test_size):
    if isinstance(test_size, (bool, np.bool_)):
        raise TypeError("test_size must be a float in (0, 1) or an int count, not a bool")
    if isinstance(test_size, (int, np.integer)):
        n_test = int(test_size)
    else:
        if not 0.0 < float(test_size) < 1.0:
            raise ValueError(f"test_size={test_size} must lie in (0, 1) or be an int count")
        n_test = int(np.ceil(float(test_size) * n))  # scikit-learn rounds the test set up
    if not 0 < n_test < n:
        raise ValueError(
            f"test_size={test_size} leaves {n_test} test and {n - n_test} train rows out of "
            f"{n}; both must be at least 1"
        )
    return n_test


def _split_numpy(n, n_test, rng, strata):
    """Indices (train, test); per class when ``strata`` is given, in proportion."""
    if strata is None:
        perm = rng.permutation(n)
        return perm[n_test:], perm[:n_test]
    classes, inverse = np.unique(strata, return_inverse=True)
    counts = np.bincount(inverse)
    if counts.min() < 2:
        raise ValueError("stratify: every class needs at least 2 members")
    # Largest-remainder apportionment of the test rows among the classes.
    exact = counts * (n_test / n)
    take = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - take), kind="stable")
    take[order[: n_test - take.sum()]] += 1
    train, test = [], []
    for c in range(len(classes)):
        members = rng.permutation(np.flatnonzero(inverse == c))
        test.append(members[: take[c]])
        train.append(members[take[c]:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def train_test_split(x, y, test_size=0.2, seed=None, stratify=None):
    """Split ``x`` and ``y`` into random train and test parts.

    Uses scikit-learn's ``train_test_split`` when it is installed, else a NumPy version with
    the same rules (the test set is ``ceil(test_size * N)`` rows). The two draw different
    rows for the same seed.

    Args:
        x: features, (N, ...); NumPy, CuPy or an nnx Tensor.
        y: targets, (N, ...).
        test_size: the test fraction in (0, 1), or an int row count. Default: 0.2.
        seed: an int for a reproducible split; ``None`` draws a fresh one.
        stratify: ``None``; ``True`` to keep ``y``'s class proportions in both parts; or an
            array of N class labels to stratify by.

    Returns:
        ``(x_train, x_test, y_train, y_test)``, host NumPy arrays of the inputs' dtypes.
    """
    x = _host(x, "x")
    y = _host(y, "y")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
    if stratify is True:
        stratify = y
    elif stratify is not None and stratify is not False:
        stratify = _host(stratify, "stratify")
        if len(stratify) != len(x):
            raise ValueError(f"stratify has {len(stratify)} entries but x has {len(x)} rows")
    else:
        stratify = None
    n_test = _num_test(len(x), test_size)
    try:
        from sklearn.model_selection import train_test_split as sk_split
    except ImportError:
        sk_split = None
    if sk_split is not None:
        return tuple(sk_split(x, y, test_size=n_test, random_state=seed, stratify=stratify))
    strata = None if stratify is None else stratify.reshape(len(stratify), -1)
    if strata is not None and strata.shape[1] > 1:  # one-hot rows: stratify by the row
        strata = np.unique(strata, axis=0, return_inverse=True)[1].ravel()
    elif strata is not None:
        strata = strata.ravel()
    tr, te = _split_numpy(len(x), n_test, np.random.default_rng(seed), strata)
    return x[tr], x[te], y[tr], y[te]


def standardize(x_train, x_test=None, *, return_stats=False):
    """Scale each feature to zero mean and unit variance, with statistics from ``x_train``.

    ``(x - mean) / std`` per column (axis 0), ``mean`` and ``std`` computed on ``x_train`` only
    (so no test information leaks into training); a constant column has ``std`` 0, which is
    replaced by 1 so it maps to 0 instead of NaN. Statistics accumulate in float64; results
    keep the input's floating dtype (integers become float32).

    Args:
        x_train: (N, ...) training features.
        x_test: optional (M, ...) features scaled with ``x_train``'s statistics.
        return_stats: also return ``mean`` and ``std`` (to scale new data the same way later).

    Returns:
        ``x_train_s``; or ``(x_train_s, x_test_s)`` when ``x_test`` is given; with
        ``return_stats``, ``mean, std`` are appended to that tuple.
    """
    x_train = _host(x_train, "x_train")
    if len(x_train) == 0:
        raise ValueError("standardize: x_train has no rows")
    dtype = x_train.dtype if np.issubdtype(x_train.dtype, np.floating) else np.dtype(np.float32)
    mean = x_train.mean(axis=0, dtype=np.float64)
    std = x_train.std(axis=0, dtype=np.float64)
    std[std == 0] = 1.0

    def apply(a):
        return ((a - mean) / std).astype(dtype)  # float64 arithmetic, then the input's dtype

    out = [apply(x_train)]
    if x_test is not None:
        x_test = _host(x_test, "x_test")
        if x_test.shape[1:] != x_train.shape[1:]:
            raise ValueError(
                f"x_test rows have shape {x_test.shape[1:]}, x_train rows {x_train.shape[1:]}"
            )
        out.append(apply(x_test))
    if return_stats:
        out += [mean.astype(dtype), std.astype(dtype)]
    return out[0] if len(out) == 1 else tuple(out)
