"""nnx.datasets: the bundled loaders, the IDX (MNIST) parser, and the split/scale helpers.

The IDX tests write their own small files; nothing here touches the network (a test blocks
sockets to prove the loaders never try).
"""
import gzip
import os
import socket
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnx import datasets

# ---------------------------------------------------------------------------- helpers
_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C,
          np.float32: 0x0D, np.float64: 0x0E}


def idx_bytes(array):
    """The IDX encoding of ``array``: magic (0, 0, type, ndim), big-endian dims and data."""
    array = np.asarray(array)
    code = _CODES[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path, payload, gz=False):
    if gz:
        payload = gzip.compress(payload)
        path = str(path) + ".gz"
    with open(path, "wb") as f:
        f.write(payload)
    return path


def make_mnist(root, kind="train", n=5, gz=False, rows=28, cols=28, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, rows, cols), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255  # both ends of the scale
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    prefix = "train" if kind == "train" else "t10k"
    gz_img, gz_lbl = (gz, gz) if isinstance(gz, bool) else gz
    write(os.path.join(root, f"{prefix}-images-idx3-ubyte"), idx_bytes(images), gz_img)
    write(os.path.join(root, f"{prefix}-labels-idx1-ubyte"), idx_bytes(labels), gz_lbl)
    return images, labels


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("nnx.datasets tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


# -------------------------------------------------------------------------------- xor
def test_xor_in_lecture_order():
    x, y = datasets.xor()
    assert x.dtype == np.float32 and x.shape == (4, 2)
    assert y.dtype == np.float32 and y.shape == (4, 1)
    np.testing.assert_array_equal(x, [[0, 0], [0, 1], [1, 0], [1, 1]])
    np.testing.assert_array_equal(y, [[0], [1], [1], [0]])


# ---------------------------------------------------------------- scikit-learn datasets
def test_digits(no_network):
    pytest.importorskip("sklearn")
    x, y = datasets.digits()
    assert x.shape == (1797, 64) and x.dtype == np.float32 and x.flags.c_contiguous
    assert y.shape == (1797,) and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    assert set(np.unique(y)) == set(range(10))
    raw, y2 = datasets.digits(scale=False)
    assert raw.max() == 16.0 and raw.dtype == np.float32
    np.testing.assert_array_equal(raw / 16, x)
    np.testing.assert_array_equal(y, y2)


def test_breast_cancer(no_network):
    pytest.importorskip("sklearn")
    x, y = datasets.breast_cancer()
    assert x.shape == (569, 30) and x.dtype == np.float32
    assert y.shape == (569,) and y.dtype == np.int64
    assert set(np.unique(y)) == {0, 1}
    assert np.all(np.isfinite(x))


@pytest.mark.parametrize("loader", ["digits", "breast_cancer"])
def test_sklearn_missing_gives_install_hint(monkeypatch, loader):
    # A None entry in sys.modules makes `import sklearn` raise ImportError.
    for name in [m for m in sys.modules if m == "sklearn" or m.startswith("sklearn.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(ImportError, match=r"scikit-learn.*pip install 'nnx\[sklearn\]'"):
        getattr(datasets, loader)()


# -------------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("gz", [False, True, (True, False), (False, True)],
                         ids=["plain", "gzip", "gz-images", "gz-labels"])
@pytest.mark.parametrize("kind", ["train", "test"])
def test_mnist_reads_idx(tmp_path, gz, kind, no_network):
    images, labels = make_mnist(tmp_path, kind, n=7, gz=gz)
    make_mnist(tmp_path, "test" if kind == "train" else "train", n=3, seed=1)  # the other set
    x, y = datasets.mnist(tmp_path, kind=kind)
    assert x.shape == (7, 784) and x.dtype == np.float32
    assert y.shape == (7,) and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    np.testing.assert_allclose(x, images.reshape(7, -1) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y, labels)


def test_mnist_default_kind_is_train_and_accepts_str_root(tmp_path):
    make_mnist(tmp_path, "train", n=2)
    x, y = datasets.mnist(str(tmp_path))
    assert x.shape == (2, 784) and y.shape == (2,)


def test_mnist_dotted_file_names(tmp_path):
    # "train-images.idx3-ubyte", as some unzip tools and the Kaggle copy spell them.
    images, labels = make_mnist(tmp_path, "train", n=3)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        os.rename(tmp_path / name, tmp_path / name.replace("-idx", ".idx"))
    x, y = datasets.mnist(tmp_path)
    np.testing.assert_array_equal(y, labels)


def test_gzip_detected_by_content_not_name(tmp_path):
    make_mnist(tmp_path, "train", n=3)
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(gzip.compress(path.read_bytes()))
    assert datasets.mnist(tmp_path)[1].shape == (3,)


@pytest.mark.parametrize("missing", ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"])
def test_mnist_missing_file_names_file_and_folder(tmp_path, missing):
    make_mnist(tmp_path, "train", n=2)
    os.remove(tmp_path / missing)
    with pytest.raises(FileNotFoundError) as err:
        datasets.mnist(tmp_path)
    assert missing in str(err.value)
    assert str(tmp_path) in str(err.value)


def test_mnist_missing_test_file_named(tmp_path):
    make_mnist(tmp_path, "train", n=2)  # train only
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        datasets.mnist(tmp_path, kind="test")


def test_mnist_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        datasets.mnist(tmp_path / "nope")


def test_mnist_bad_kind(tmp_path):
    with pytest.raises(ValueError, match="'train' or 'test'"):
        datasets.mnist(tmp_path, kind="validation")


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("cut", [1, 100, 784 * 3])
def test_truncated_images_file(tmp_path, gz, cut):
    make_mnist(tmp_path, "train", n=3)
    path = tmp_path / "train-images-idx3-ubyte"
    payload = path.read_bytes()[:-cut]
    os.remove(path)
    written = write(path, payload, gz)
    with pytest.raises(ValueError, match="truncated") as err:
        datasets.mnist(tmp_path)
    assert os.path.basename(written) in str(err.value)


def test_truncated_gzip_stream(tmp_path):
    make_mnist(tmp_path, "train", n=3, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ValueError, match="gzip"):
        datasets.mnist(tmp_path)


def test_truncated_header(tmp_path):
    make_mnist(tmp_path, "train", n=3)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1, 0, 0]))
    with pytest.raises(ValueError, match="header"):
        datasets.mnist(tmp_path)


def test_trailing_bytes_rejected(tmp_path):
    make_mnist(tmp_path, "train", n=3)
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(ValueError, match="too long"):
        datasets.mnist(tmp_path)


@pytest.mark.parametrize("magic", [b"\x12\x34\x08\x03", b"\x00\x00\x07\x03", b"PK\x03\x04"])
def test_wrong_magic(tmp_path, magic):
    make_mnist(tmp_path, "train", n=2)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(magic + path.read_bytes()[4:])
    with pytest.raises(ValueError, match="magic"):
        datasets.mnist(tmp_path)


def test_swapped_images_and_labels(tmp_path):
    make_mnist(tmp_path, "train", n=2)
    img, lbl = tmp_path / "train-images-idx3-ubyte", tmp_path / "train-labels-idx1-ubyte"
    a, b = img.read_bytes(), lbl.read_bytes()
    img.write_bytes(b)
    lbl.write_bytes(a)
    with pytest.raises(ValueError, match="images"):
        datasets.mnist(tmp_path)


def test_wrong_element_type(tmp_path):
    make_mnist(tmp_path, "train", n=2)
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.arange(2, dtype=np.int32)))
    with pytest.raises(ValueError, match="uint8 labels"):
        datasets.mnist(tmp_path)


def test_count_mismatch(tmp_path):
    make_mnist(tmp_path, "train", n=4)
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(ValueError, match="4 images but .* 3 labels"):
        datasets.mnist(tmp_path)


def test_empty_file(tmp_path):
    path = write(tmp_path / "empty", b"")
    with pytest.raises(ValueError, match="not an IDX file"):
        datasets.read_idx(path)


@settings(max_examples=40, deadline=None)
@given(dtype=st.sampled_from(list(_CODES)),
       shape=st.lists(st.integers(0, 4), min_size=1, max_size=4),
       gz=st.booleans(), seed=st.integers(0, 2**16))
def test_read_idx_roundtrip(tmp_path_factory, dtype, shape, gz, seed):
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 100, size=shape).astype(dtype)
    if np.issubdtype(dtype, np.floating):
        array += rng.standard_normal(shape).astype(dtype)
    path = write(tmp_path_factory.mktemp("idx") / "a.idx", idx_bytes(array), gz)
    out = datasets.read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    assert out.shape == tuple(shape)
    np.testing.assert_array_equal(out, array)


# -------------------------------------------------------------------- train_test_split
@pytest.fixture(params=["sklearn", "numpy"])
def split_impl(request, monkeypatch):
    """Run the split tests through scikit-learn and through the NumPy fallback."""
    if request.param == "sklearn":
        pytest.importorskip("sklearn")
    else:
        monkeypatch.setitem(sys.modules, "sklearn.model_selection", None)
    return request.param


def _xy(n=50, classes=3):
    x = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    y = (np.arange(n) % classes).astype(np.int64)
    return x, y


def test_split_partitions_rows(split_impl):
    x, y = _xy(50)
    x_tr, x_te, y_tr, y_te = datasets.train_test_split(x, y, test_size=0.2, seed=0)
    assert len(x_te) == 10 and len(x_tr) == 40
    assert x_tr.dtype == np.float32 and y_tr.dtype == np.int64
    rows = np.concatenate([x_tr[:, 0], x_te[:, 0]]) / 2
    np.testing.assert_array_equal(np.sort(rows), np.arange(50))
    np.testing.assert_array_equal(y_tr, (x_tr[:, 0] / 2).astype(np.int64) % 3)  # rows kept aligned
    np.testing.assert_array_equal(y_te, (x_te[:, 0] / 2).astype(np.int64) % 3)


def test_split_test_size_rounds_up_and_accepts_count(split_impl):
    x, y = _xy(11)
    assert len(datasets.train_test_split(x, y, test_size=0.25, seed=0)[1]) == 3  # ceil(2.75)
    assert len(datasets.train_test_split(x, y, test_size=4, seed=0)[1]) == 4


def test_split_reproducible_with_seed(split_impl):
    x, y = _xy(100)
    a = datasets.train_test_split(x, y, seed=3)
    b = datasets.train_test_split(x, y, seed=3)
    c = datasets.train_test_split(x, y, seed=4)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[1], c[1])


def test_split_stratified(split_impl):
    y = np.array([0] * 80 + [1] * 20, dtype=np.int64)
    x = np.arange(100, dtype=np.float32)[:, None]
    for stratify in (True, y):
        _, _, y_tr, y_te = datasets.train_test_split(x, y, test_size=0.25, seed=1,
                                                     stratify=stratify)
        assert np.bincount(y_te).tolist() == [20, 5]
        assert np.bincount(y_tr).tolist() == [60, 15]


def test_split_errors(split_impl):
    x, y = _xy(10)
    with pytest.raises(ValueError, match="10 rows but y has 9"):
        datasets.train_test_split(x, y[:9])
    for bad in (0.0, 1.0, 1.5, 0, 10):
        with pytest.raises(ValueError, match="test_size"):
            datasets.train_test_split(x, y, test_size=bad)


# -------------------------------------------------------------------------- standardize
def test_standardize_train_stats():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((200, 3)) * [1, 10, 1000] + [5, -3, 1e4]).astype(np.float32)
    z = datasets.standardize(x)
    assert z.dtype == np.float32 and z.shape == x.shape
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=0), 1, atol=1e-5)


def test_standardize_test_uses_train_stats():
    rng = np.random.default_rng(1)
    x_tr = rng.standard_normal((50, 4)).astype(np.float32) * 3 + 1
    x_te = rng.standard_normal((20, 4)).astype(np.float32)
    z_tr, z_te, mean, std = datasets.standardize(x_tr, x_te, return_stats=True)
    assert mean.shape == std.shape == (4,) and mean.dtype == np.float32
    np.testing.assert_allclose(mean, x_tr.astype(np.float64).mean(0), rtol=1e-6)
    np.testing.assert_allclose(z_te, (x_te - mean) / std, rtol=1e-5, atol=1e-6)
    assert z_te.dtype == np.float32
    z_tr2, z_te2 = datasets.standardize(x_tr, x_te)
    np.testing.assert_array_equal(z_tr, z_tr2)
    np.testing.assert_array_equal(z_te, z_te2)


def test_standardize_constant_column_maps_to_zero():
    # pytest runs with filterwarnings=error: a 0/0 here would fail the test.
    x = np.array([[1.0, 7.0], [3.0, 7.0], [5.0, 7.0]], dtype=np.float32)
    z, mean, std = datasets.standardize(x, return_stats=True)
    np.testing.assert_array_equal(z[:, 1], 0.0)
    assert std[1] == 1.0
    assert np.all(np.isfinite(z))


def test_standardize_keeps_float64_and_converts_ints():
    assert datasets.standardize(np.eye(3)).dtype == np.float64
    assert datasets.standardize(np.arange(6).reshape(3, 2)).dtype == np.float32


def test_standardize_shape_mismatch():
    with pytest.raises(ValueError, match="x_test rows"):
        datasets.standardize(np.ones((3, 2)), np.ones((3, 3)))


def test_standardize_accepts_nnx_tensor():
    import nnx

    x = np.arange(8, dtype=np.float32).reshape(4, 2)
    z = datasets.standardize(nnx.tensor(x))
    assert isinstance(z, np.ndarray)
    np.testing.assert_allclose(z, datasets.standardize(x))
