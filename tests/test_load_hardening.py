"""nnx.load against zip bombs and lying headers: refused before inflating, within the byte limit
(max_bytes: "auto" = 4x the file's size + 1 GiB, an int, or None), and never unpickling."""
import io
import os
import pickle
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest

import nnx
from nnx import serialization

MiB = 1 << 20


def _small_checkpoint(tmp_path, array):
    """The members of a real nnx checkpoint {"w": array} and the name of the array's member."""
    small = tmp_path / "small.npz"
    nnx.save({"w": array}, small)
    with zipfile.ZipFile(small) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    return members, next(n for n in members if not n.startswith("__nnx"))


def _npy_header(descr, shape):
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": descr, "fortran_order": False,
                                                "shape": shape})
    return head.getvalue()


def _write_zip(path, members):
    with zipfile.ZipFile(path, "w") as z:
        for n, d in members.items():
            z.writestr(n, d)
    return path


def _bomb(tmp_path, nbytes, name="bomb.npz", shape=None):
    """A real nnx checkpoint {"w": zeros(nbytes, uint8)} whose array member is deflated: the file
    is ~nbytes/1000 bytes. Written in chunks, so the test itself never holds nbytes. ``shape``:
    what the .npy header claims instead (the header of a lying member)."""
    members, array = _small_checkpoint(tmp_path, np.zeros(1, np.uint8))
    head = _npy_header("|u1", shape or (nbytes,))
    path = tmp_path / name
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for n, data in members.items():
            if n != array:
                z.writestr(n, data)
        with z.open(array, "w") as f:
            f.write(head)
            chunk = bytes(MiB)
            for _ in range(nbytes // MiB):
                f.write(chunk)
    return path, len(head)


def _peak(fn):
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_zip_bomb_is_refused_before_inflating(tmp_path):
    path, _ = _bomb(tmp_path, 64 * MiB)
    assert os.path.getsize(path) < MiB
    assert nnx.load(path, max_bytes=None)["w"].nbytes == 64 * MiB  # a real, loadable bomb

    def refused():
        with pytest.raises(nnx.CheckpointError, match=r"bomb\.npz.*more than 16777216 bytes"):
            nnx.load(path, max_bytes=16 * MiB)

    assert _peak(refused) < 2 * MiB  # nothing was inflated


def test_declared_size_beyond_the_default_limit(tmp_path):
    """A central directory that declares 4 GiB for a member of a 1 kB file: refused by the
    default limit (4x the file + 1 GiB) from the declaration alone."""
    path = tmp_path / "lie.npz"
    nnx.save({"w": np.zeros(4, np.float32)}, path)
    data = bytearray(path.read_bytes())
    cd = data.rfind(b"PK\x01\x02")  # the last central-directory entry: the array
    struct.pack_into("<I", data, cd + 24, 0xFFFFFFF0)  # its uncompressed size
    path.write_bytes(bytes(data))
    with pytest.raises(nnx.CheckpointError, match="declared uncompressed size"):
        nnx.load(path)


def test_npy_header_claiming_more_than_its_member(tmp_path):
    """The .npy header claims 10**12 elements: refused from the header, nothing allocated."""
    members, array = _small_checkpoint(tmp_path, np.zeros(2, np.float64))
    members[array] = _npy_header("<f8", (10 ** 12,)) + bytes(16)
    path = _write_zip(tmp_path / "claims.npz", members)
    peak = _peak(lambda: pytest.raises(nnx.CheckpointError, nnx.load, path, max_bytes=None))
    assert peak < MiB
    with pytest.raises(nnx.CheckpointError, match=r"needs 8000000000000 bytes, its member holds 16"):
        nnx.load(path, max_bytes=None)


def test_stream_longer_than_declared_is_not_trusted(tmp_path):
    """A deflate stream inflating to 64 MiB behind a declared size and .npy header of 8 bytes:
    only the declared bytes are ever inflated, then the CRC check fails."""
    path, head = _bomb(tmp_path, 64 * MiB, "long.npz", shape=(8,))
    data = bytearray(path.read_bytes())
    cd = data.rfind(b"PK\x01\x02")  # the array's central-directory entry
    assert struct.unpack_from("<I", data, cd + 24)[0] == head + 64 * MiB
    struct.pack_into("<I", data, cd + 24, head + 8)  # declare 8 bytes of data
    path.write_bytes(bytes(data))

    def refused():
        with pytest.raises(nnx.CheckpointError, match="long.npz.*corrupt"):
            nnx.load(path, max_bytes=None)

    assert _peak(refused) < 2 * MiB


def test_default_limit_and_max_bytes_values(tmp_path):
    path = tmp_path / "ok.npz"
    nnx.save({"w": np.zeros(1000, np.float64)}, path)
    budget = serialization.ByteBudget(str(path), "auto", "nnx.load")
    assert budget.limit == 4 * os.path.getsize(path) + (1 << 30)
    assert nnx.load(path, max_bytes=8500)["w"].shape == (1000,)  # 8000 + headers and metadata
    with pytest.raises(nnx.CheckpointError, match="more than 7000 bytes"):
        nnx.load(path, max_bytes=7000)
    for bad in (-1, 1.5, "big", True, np.array([5])):
        with pytest.raises(TypeError, match="max_bytes"):
            nnx.load(path, max_bytes=bad)


def test_load_never_unpickles(tmp_path, monkeypatch):
    path = tmp_path / "ok.npz"
    nnx.save({"w": np.arange(3), "meta": {"epoch": 2, "names": ["a"]}}, path)

    def forbidden(*a, **k):
        raise AssertionError("nnx.load called a pickle or np.load entry point")

    for mod, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (np, "load")]:
        monkeypatch.setattr(mod, name, forbidden)
    out = nnx.load(path)
    assert out["meta"] == {"epoch": 2, "names": ["a"]}


def test_object_arrays_refused_from_their_header(tmp_path):
    members, array = _small_checkpoint(tmp_path, np.zeros(1))
    obj = np.empty(1, dtype=object)
    obj[0] = "x"
    buf = io.BytesIO()
    np.save(buf, obj, allow_pickle=True)
    members[array] = buf.getvalue()
    path = _write_zip(tmp_path / "obj.npz", members)
    with pytest.raises(nnx.CheckpointError, match="dtype object.*refused"):
        nnx.load(path)


def test_fortran_order_and_big_endian_arrays_still_load(tmp_path):
    a = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    b = np.arange(5, dtype=">i4")
    path = tmp_path / "f.npz"
    nnx.save({"a": a, "b": b, "s": np.array(["xy", "z"]), "e": np.zeros((0, 3))}, path)
    out = nnx.load(path)
    np.testing.assert_array_equal(out["a"], a)
    np.testing.assert_array_equal(out["b"], b)
    assert out["s"].tolist() == ["xy", "z"] and out["e"].shape == (0, 3)


def test_torch_bomb_is_refused_before_inflating(tmp_path):
    torch = pytest.importorskip("torch")
    p = tmp_path / "t.pt"
    torch.save({"w": torch.zeros(8 * MiB, dtype=torch.uint8)}, str(p))
    q = tmp_path / "tbomb.pt"
    with zipfile.ZipFile(p) as src, zipfile.ZipFile(q, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    assert os.path.getsize(q) < MiB
    assert nnx.load_torch(q)["w"].nbytes == 8 * MiB

    def refused():
        with pytest.raises(nnx.CheckpointError, match=r"tbomb\.pt.*more than 2097152 bytes"):
            nnx.load_torch(q, max_bytes=2 * MiB)

    assert _peak(refused) < 2 * MiB
