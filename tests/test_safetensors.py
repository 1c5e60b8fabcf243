"""nnx.save_safetensors / nnx.load_safetensors: round trips, files written by torch loaded into
nnx models, atomic writes, and a CheckpointError for every kind of broken header."""
import json
import os
import struct
import sys

import numpy as np
import pytest

import nnx
from nnx import nn
from nnx.nn.container import Sequential

safetensors_numpy = pytest.importorskip("safetensors.numpy")


def _craft(path, header, data=b""):
    """A safetensors file with the given header (a dict, or raw bytes) and data section."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


# ------------------------------------------------------------------ round trips
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "int64", "int32", "int8",
                                   "uint8", "bool", "complex64"])
def test_round_trip_dtypes(tmp_path, dtype):
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((3, 5)) * 10).astype(dtype)
    p = tmp_path / "m.safetensors"
    nnx.save_safetensors({"a": a, "s": a[0, 0].copy(), "e": np.zeros((0, 4), dtype)}, p)
    out = nnx.load_safetensors(p)
    assert set(out) == {"a", "s", "e"}
    for k, ref in [("a", a), ("s", a[0, 0]), ("e", np.zeros((0, 4), dtype))]:
        assert out[k].dtype == np.dtype(dtype) and out[k].shape == np.shape(ref)
        np.testing.assert_array_equal(out[k], ref)
    assert out["a"].flags.writeable


def test_scalars_empty_and_metadata(tmp_path):
    p = tmp_path / "m.safetensors"
    meta = {"format": "pt", "epoch": "3", "note": "ünïcode"}
    nnx.save_safetensors({"x": np.float64(2.5), "n": 7, "empty": np.zeros(0, np.float32)}, p,
                         metadata=meta)
    out, got = nnx.load_safetensors(p, with_metadata=True)
    assert got == meta
    assert out["x"].shape == () and out["x"] == 2.5
    assert out["n"].dtype == np.int64 and out["n"] == 7
    assert out["empty"].shape == (0,)
    nnx.save_safetensors({}, p)
    assert nnx.load_safetensors(p, with_metadata=True) == ({}, {})


def test_tensors_parameters_and_strided_views(tmp_path):
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    model = nn.Linear(3, 2)
    sd = {"t": nnx.tensor(base), "p": model.weight, "col": base[:, 1], "tr": base.T,
          "rev": base[::-1, ::2], "big_endian": base.astype(">f4")}
    p = tmp_path / "v.safetensors"
    nnx.save_safetensors(sd, p)
    out = nnx.load_safetensors(p)
    np.testing.assert_array_equal(out["t"], base)
    np.testing.assert_array_equal(out["p"], model.weight.numpy())
    np.testing.assert_array_equal(out["col"], base[:, 1])
    np.testing.assert_array_equal(out["tr"], base.T)
    np.testing.assert_array_equal(out["rev"], base[::-1, ::2])
    assert out["big_endian"].dtype == np.float32
    np.testing.assert_array_equal(out["big_endian"], base)
    # what we write is a standard file: the library reads it the same
    lib = safetensors_numpy.load_file(str(p))
    for k in out:
        np.testing.assert_array_equal(lib[k], out[k])


def test_model_state_dict_round_trip(tmp_path, device):
    nnx.manual_seed(0)
    a = Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).to(device)
    b = Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).to(device)
    p = tmp_path / "model.safetensors"
    # the parameters themselves (device tensors, copied to the host), not state_dict()'s copies
    nnx.save_safetensors(dict(a.named_parameters()), p)
    b.load_state_dict(nnx.load_safetensors(p))
    x = nnx.tensor(np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32),
                   device=device)
    np.testing.assert_array_equal(a(x).numpy(), b(x).numpy())


# ------------------------------------------------------------------ files written by torch
def _torch_mlp():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    return torch, torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def test_torch_written_safetensors_into_nnx_mlp(tmp_path):
    torch, tm = _torch_mlp()
    st_torch = pytest.importorskip("safetensors.torch")
    p = tmp_path / "torch.safetensors"
    st_torch.save_file(tm.state_dict(), str(p))
    model = Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    model.load_state_dict(nnx.load_safetensors(p))
    x = np.random.default_rng(2).standard_normal((6, 4)).astype(np.float32)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model(nnx.tensor(x)).numpy(), ref, rtol=1e-5, atol=1e-6)


def test_torch_written_safetensors_into_nnx_cnn(tmp_path):
    if not (hasattr(nn, "Conv2d") and hasattr(nn, "BatchNorm2d")):
        pytest.skip("nn.Conv2d / nn.BatchNorm2d are not in nnx yet")
    torch = pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    torch.manual_seed(0)
    tm = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                             torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 5 * 5, 2))
    with torch.no_grad():  # non-trivial running statistics
        tm.train()
        tm(torch.randn(8, 3, 5, 5))
    tm.eval()
    p = tmp_path / "cnn.safetensors"
    st_torch.save_file(tm.state_dict(), str(p))
    model = Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                       nn.Linear(4 * 5 * 5, 2))
    sd = nnx.load_safetensors(p)
    assert sd["1.num_batches_tracked"].dtype == np.int64
    model.load_state_dict(sd)
    model.eval()
    x = np.random.default_rng(3).standard_normal((2, 3, 5, 5)).astype(np.float32)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model(nnx.tensor(x)).numpy(), ref, rtol=1e-5, atol=1e-5)


def test_bfloat16_with_and_without_ml_dtypes(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    ml_dtypes = pytest.importorskip("ml_dtypes")
    t = torch.tensor([1.0, -2.5, 3.140625, 1e-3], dtype=torch.bfloat16)
    p = tmp_path / "bf.safetensors"
    st_torch.save_file({"w": t, "f": torch.ones(2)}, str(p))
    exact = t.float().numpy()
    out = nnx.load_safetensors(p)
    assert out["w"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(out["w"].astype(np.float32), exact)
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # import ml_dtypes now fails
    with pytest.warns(UserWarning, match="bfloat16.*float32"):
        out = nnx.load_safetensors(p)
    assert out["w"].dtype == np.float32
    np.testing.assert_array_equal(out["w"], exact)
    np.testing.assert_array_equal(out["f"], np.ones(2, np.float32))


def test_load_state_dict_names_the_mismatched_key(tmp_path):
    p = tmp_path / "m.safetensors"
    nnx.save_safetensors({"weight": np.zeros((3, 4), np.float32), "bias": np.zeros(3, np.float32)}, p)
    with pytest.raises(nnx.CheckpointError, match=r"weight: shape \(3, 4\)"):
        nn.Linear(4, 2).load_state_dict(nnx.load_safetensors(p))


# ------------------------------------------------------------------ saving: errors, atomicity
@pytest.mark.parametrize("sd, meta, match", [
    ({"a": np.array(["x"])}, None, "dtype"),
    ({"a": np.ones(2, object)}, None, "dtype"),
    ({"a": "text"}, None, "not a tensor"),
    ({1: np.ones(2)}, None, "names must be str"),
    ({"__metadata__": np.ones(2)}, None, "reserved"),
    ({"a": np.ones(2)}, {"k": 3}, "str to str"),
    ({"a": np.ones(2)}, ["k"], "dict of str to str"),
    ([np.ones(2)], None, "dict of name"),
])
def test_save_refuses_bad_input(tmp_path, sd, meta, match):
    p = tmp_path / "bad.safetensors"
    with pytest.raises(TypeError, match=match):
        nnx.save_safetensors(sd, p, metadata=meta)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("fail_at", ["fsync", "replace"])
def test_failed_write_leaves_old_file_and_no_temporary(tmp_path, monkeypatch, fail_at):
    p = tmp_path / "m.safetensors"
    nnx.save_safetensors({"a": np.ones(3, np.float32)}, p)
    before = p.read_bytes()

    def boom(*args):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, fail_at, boom)
    with pytest.raises(OSError, match="simulated"):
        nnx.save_safetensors({"a": np.zeros(1000, np.float32)}, p)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["m.safetensors"]
    assert p.read_bytes() == before
    q = tmp_path / "new.safetensors"
    monkeypatch.setattr(os, fail_at, boom)
    with pytest.raises(OSError):
        nnx.save_safetensors({"a": np.zeros(10, np.float32)}, q)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]


def test_missing_folder_and_missing_file(tmp_path):
    with pytest.raises(nnx.CheckpointError, match="does not exist"):
        nnx.save_safetensors({"a": np.ones(1)}, tmp_path / "no" / "x.safetensors")
    with pytest.raises(nnx.CheckpointError, match="nope.safetensors") as ei:
        nnx.load_safetensors(tmp_path / "nope.safetensors")
    assert isinstance(ei.value, FileNotFoundError)


def test_missing_library_gives_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    with pytest.raises(ImportError, match=r"pip install nnx\[safetensors\]"):
        nnx.save_safetensors({"a": np.ones(1)}, tmp_path / "x.safetensors")
    with pytest.raises(ImportError, match=r"pip install nnx\[safetensors\]"):
        nnx.load_safetensors(tmp_path / "x.safetensors")


# ------------------------------------------------------------------ loading broken files
def _good(tmp_path):
    p = tmp_path / "good.safetensors"
    nnx.save_safetensors({"w": np.arange(12, dtype=np.float32).reshape(3, 4),
                          "b": np.arange(3, dtype=np.int64)}, p)
    return p


def test_every_truncation_is_a_checkpoint_error(tmp_path):
    data = _good(tmp_path).read_bytes()
    p = tmp_path / "cut.safetensors"
    for n in range(len(data)):
        p.write_bytes(data[:n])
        with pytest.raises(nnx.CheckpointError, match="cut.safetensors"):
            nnx.load_safetensors(p)


W = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}


@pytest.mark.parametrize("header, data, match", [
    (b"{not json", b"", "not valid JSON"),
    (b"\xff\xfe", b"", "not valid JSON"),
    (b"[1, 2]", b"", "not an object"),
    ({"w": {**W, "dtype": "F8_E9"}}, bytes(16), "unknown dtype 'F8_E9'"),
    ({"w": {**W, "shape": [2, -2]}}, bytes(16), "shape"),
    ({"w": {**W, "shape": "2x2"}}, bytes(16), "shape"),
    ({"w": {**W, "data_offsets": [0, 1 << 40]}}, bytes(16), "claims bytes 0..1099511627776"),
    ({"w": {**W, "shape": [1 << 20, 1 << 20], "data_offsets": [0, 1 << 42]}}, bytes(16),
     "claims bytes"),
    ({"w": {**W, "data_offsets": [8, 4]}}, bytes(16), "data_offsets"),
    ({"w": {**W, "data_offsets": [0, 12]}}, bytes(16), "needs 16 bytes"),
    ({"w": W, "v": {**W, "data_offsets": [8, 24]}}, bytes(32), "overlaps"),
    ({"w": {**W, "data_offsets": [4, 20]}}, bytes(20), "misaligned"),
    ({"w": W}, bytes(20), "trailing"),
    ({"w": {"dtype": "F32", "shape": [4]}}, bytes(16), "dtype/shape/data_offsets"),
    ({"__metadata__": {"a": 1}, "w": W}, bytes(16), "__metadata__"),
])
def test_corrupt_headers(tmp_path, header, data, match):
    p = _craft(tmp_path / "evil.safetensors", header, data)
    with pytest.raises(nnx.CheckpointError, match=match) as ei:
        nnx.load_safetensors(p)
    assert "evil.safetensors" in str(ei.value)


def test_header_length_beyond_the_file(tmp_path):
    p = tmp_path / "h.safetensors"
    p.write_bytes(struct.pack("<Q", 1 << 62) + b"{}")
    with pytest.raises(nnx.CheckpointError, match="header claims 4611686018427387904 bytes"):
        nnx.load_safetensors(p)
    p.write_bytes(b"\x01\x02")
    with pytest.raises(nnx.CheckpointError, match="fewer than the 8"):
        nnx.load_safetensors(p)


def test_oversized_header_is_refused_unread(tmp_path, monkeypatch):
    from nnx import safetensors_io
    p = _good(tmp_path)
    monkeypatch.setattr(safetensors_io, "_MAX_HEADER", 16)
    with pytest.raises(nnx.CheckpointError, match="more than the 16 safetensors allows"):
        nnx.load_safetensors(p)


def test_max_bytes_limit(tmp_path):
    p = _good(tmp_path)
    assert set(nnx.load_safetensors(p, max_bytes=72)) == {"w", "b"}
    with pytest.raises(nnx.CheckpointError, match="more than 71 bytes"):
        nnx.load_safetensors(p, max_bytes=71)
    assert set(nnx.load_safetensors(p, max_bytes=None)) == {"w", "b"}
    with pytest.raises(TypeError, match="max_bytes"):
        nnx.load_safetensors(p, max_bytes=-1)


def test_not_a_safetensors_file(tmp_path):
    p = tmp_path / "m.npz"
    nnx.save({"a": np.ones(3)}, p)
    with pytest.raises(nnx.CheckpointError, match="m.npz"):
        nnx.load_safetensors(p)
