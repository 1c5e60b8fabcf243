"""nnx.load_torch: state dicts written by real torch read without torch, and files that would run
code (pickle bombs) or lie about their tensors refused with a CheckpointError."""
import builtins
import io
import os
import pickle
import subprocess
import sys
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

import nnx
from nnx import nn
from nnx.nn.container import Sequential

torch = pytest.importorskip("torch")


def _save(obj, path, **kw):
    torch.save(obj, str(path), **kw)
    return path


def _same(a, t):
    ref = t.detach().numpy()
    assert a.dtype == ref.dtype and a.shape == ref.shape
    np.testing.assert_array_equal(a, ref)


# ------------------------------------------------------------------ real torch files
def test_mlp_state_dict_gives_torchs_outputs(tmp_path):
    torch.manual_seed(0)
    tm = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    sd = nnx.load_torch(_save(tm.state_dict(), tmp_path / "mlp.pt"))
    assert isinstance(sd, OrderedDict) and list(sd) == list(tm.state_dict())
    for k, t in tm.state_dict().items():
        _same(sd[k], t)
    model = Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    model.load_state_dict(sd)
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model(nnx.tensor(x)).numpy(), ref, rtol=1e-5, atol=1e-6)


def _torch_cnn():
    torch.manual_seed(1)
    tm = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                             torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 5 * 5, 2))
    with torch.no_grad():  # running statistics that are not the defaults
        tm.train()
        tm(torch.randn(8, 3, 5, 5))
        tm(torch.randn(8, 3, 5, 5))
    return tm.eval()


def test_cnn_state_dict_with_batchnorm_buffers(tmp_path):
    tm = _torch_cnn()
    sd = nnx.load_torch(_save(tm.state_dict(), tmp_path / "cnn.pth"))
    assert list(sd) == list(tm.state_dict())
    for k, t in tm.state_dict().items():
        _same(sd[k], t)
    assert sd["1.num_batches_tracked"].dtype == np.int64 and sd["1.num_batches_tracked"] == 2
    assert sd["0.weight"].shape == (4, 3, 3, 3)


def test_cnn_state_dict_into_nnx_cnn(tmp_path):
    if not (hasattr(nn, "Conv2d") and hasattr(nn, "BatchNorm2d")):
        pytest.skip("nn.Conv2d / nn.BatchNorm2d are not in nnx yet")
    tm = _torch_cnn()
    model = Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                       nn.Linear(4 * 5 * 5, 2))
    model.load_state_dict(nnx.load_torch(_save(tm.state_dict(), tmp_path / "cnn.pt")))
    model.eval()
    x = np.random.default_rng(3).standard_normal((2, 3, 5, 5)).astype(np.float32)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model(nnx.tensor(x)).numpy(), ref, rtol=1e-5, atol=1e-5)


def test_views_sharing_one_storage(tmp_path):
    t = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    views = {"a": t, "b": t[1:], "c": t.t(), "d": t[:, ::2], "e": t[2, 1:4], "f": t[0].expand(3, 6),
             "g": t[3, 5], "h": t[:0], "i": t.reshape(2, 3, 4).permute(2, 0, 1)}
    p = _save(views, tmp_path / "views.pt")
    with zipfile.ZipFile(p) as z:  # they really share one storage in the file
        assert len([n for n in z.namelist() if "/data/" in n]) == 1
    out = nnx.load_torch(p)
    for k, v in views.items():
        _same(out[k], v.contiguous())
    out["b"][0, 0] = -1  # copies: no aliasing between the loaded arrays
    assert out["a"][1, 0] == 6


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "int8", "int16", "int32",
                                   "int64", "uint8", "bool", "complex64", "uint16"])
def test_dtypes(tmp_path, dtype):
    t = (torch.randn(3, 4) * 5).to(getattr(torch, dtype)) if dtype != "uint16" \
        else torch.tensor([[1, 2], [65535, 0]], dtype=torch.int32).to(torch.uint16)
    out = nnx.load_torch(_save({"t": t, "s": t[1:, :1]}, tmp_path / "d.pt"))
    if dtype == "uint16":
        np.testing.assert_array_equal(out["t"], np.array([[1, 2], [65535, 0]], np.uint16))
        assert out["t"].dtype == np.uint16
    else:
        _same(out["t"], t)
        _same(out["s"], t[1:, :1])


def test_bfloat16_with_and_without_ml_dtypes(tmp_path, monkeypatch):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    t = torch.tensor([[1.0, -2.5], [3.140625, 1e-3]], dtype=torch.bfloat16)
    p = _save({"w": t, "v": t.t(), "f": torch.ones(2)}, tmp_path / "bf.pt")
    exact = t.float().numpy()
    out = nnx.load_torch(p)
    assert out["w"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(out["w"].astype(np.float32), exact)
    np.testing.assert_array_equal(out["v"].astype(np.float32), exact.T)
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)
    with pytest.warns(UserWarning, match=r"2 bfloat16 tensor\(s\).*float32"):
        out = nnx.load_torch(p)
    assert out["w"].dtype == np.float32 and out["f"].dtype == np.float32
    np.testing.assert_array_equal(out["w"], exact)
    np.testing.assert_array_equal(out["v"], exact.T)


def test_nested_checkpoint(tmp_path):
    tm = torch.nn.Linear(3, 2)
    ckpt = {"model": tm.state_dict(), "epoch": 3, "best": 0.25, "name": "run-1", "done": False,
            "none": None, "history": [1.0, 0.5], "betas": (0.9, 0.999), "raw": b"\x00\xffabc",
            "device": torch.device("cpu"), "size": torch.Size([2, 3]),
            "param": torch.nn.Parameter(torch.ones(2)), "big": 2 ** 70}
    out = nnx.load_torch(_save(ckpt, tmp_path / "ckpt.pt"))
    assert out["epoch"] == 3 and out["best"] == 0.25 and out["name"] == "run-1"
    assert out["done"] is False and out["none"] is None and out["big"] == 2 ** 70
    assert out["history"] == [1.0, 0.5] and out["betas"] == (0.9, 0.999)
    assert out["raw"] == b"\x00\xffabc" and out["device"] == "cpu" and out["size"] == (2, 3)
    _same(out["param"], ckpt["param"])
    for k, t in tm.state_dict().items():
        _same(out["model"][k], t)
    lin = nn.Linear(3, 2)
    lin.load_state_dict(out["model"])
    np.testing.assert_array_equal(lin.weight.numpy(), tm.weight.detach().numpy())


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_pickle_protocols(tmp_path, protocol):
    t = torch.arange(6, dtype=torch.float64).reshape(2, 3)
    out = nnx.load_torch(_save({"t": t, "v": t.t(), "n": [1, "a"]}, tmp_path / "p.pt",
                               pickle_protocol=protocol))
    _same(out["t"], t)
    _same(out["v"], t.t().contiguous())
    assert out["n"] == [1, "a"]


def test_shared_structure_is_not_walked_exponentially(tmp_path):
    node = [torch.zeros(1)]
    for _ in range(60):  # 2**60 paths through 60 objects
        node = [node, node]
    out = nnx.load_torch(_save({"n": node}, tmp_path / "shared.pt"))
    assert out["n"][0] is out["n"][1]


def test_top_folder_name_varies(tmp_path):
    p = _save({"w": torch.ones(2)}, tmp_path / "some-name.pt")
    with zipfile.ZipFile(p) as z:
        assert {n.split("/")[0] for n in z.namelist()} == {"some-name"}
    q = tmp_path / "renamed.pt"
    with zipfile.ZipFile(p) as src, zipfile.ZipFile(q, "w") as dst:
        for info in src.infolist():
            dst.writestr("other/" + info.filename.split("/", 1)[1], src.read(info))
    np.testing.assert_array_equal(nnx.load_torch(q)["w"], np.ones(2, np.float32))


# ------------------------------------------------------------------ pickle bombs
MARKER = "pwned"


class _System:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Eval(_System):
    def __reduce__(self):
        return (builtins.eval, (f"open({self.marker!r}, 'w').close()",))


class _Popen(_System):
    def __reduce__(self):
        return (subprocess.Popen, (["touch", self.marker],))


class _Unknown:
    def __init__(self, marker):
        self.marker = marker


BOMBS = [(_System, f"{os.system.__module__}.system"), (_Eval, "builtins.eval"),
         (_Popen, "subprocess.Popen"), (_Unknown, "_Unknown")]


def test_the_bombs_are_live(tmp_path):
    """pickle.loads does run them (so the tests below can fail)."""
    for i, (bomb, _) in enumerate(BOMBS[:3]):
        marker = tmp_path / f"{MARKER}{i}"
        r = pickle.loads(pickle.dumps(bomb(str(marker))))
        if isinstance(r, subprocess.Popen):
            r.wait()
        assert marker.exists()


@pytest.mark.parametrize("bomb, name", BOMBS, ids=[b.__name__ for b, _ in BOMBS])
@pytest.mark.parametrize("how", ["torch.save", "plain pickle", "inside a state dict"])
def test_pickle_bombs_are_refused_and_not_run(tmp_path, bomb, name, how):
    marker = tmp_path / MARKER
    p = tmp_path / "model.pt"
    payload = bomb(str(marker))
    if how == "torch.save":
        _save(payload, p)
    elif how == "plain pickle":
        p.write_bytes(pickle.dumps({"weight": payload}))
    else:
        _save(OrderedDict([("w", torch.ones(2)), ("evil", payload)]), p)
    with pytest.raises(nnx.CheckpointError, match=rf"refused global '[\w.]*{name}' in .*model\.pt"):
        nnx.load_torch(p)
    assert not marker.exists(), "loading the file ran its code"


def test_whole_module_is_refused_naming_its_class(tmp_path):
    p = _save(torch.nn.Linear(2, 2), tmp_path / "module.pt")
    with pytest.raises(nnx.CheckpointError,
                       match=r"refused global 'torch\.nn\.modules\.linear\.Linear'.*state_dict"):
        nnx.load_torch(p)


def test_legacy_non_zip_file(tmp_path):
    p = _save({"w": torch.ones(2)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(nnx.CheckpointError, match="legacy torch file"):
        nnx.load_torch(p)


def test_plain_pickle_of_a_dict(tmp_path):
    p = tmp_path / "plain.pkl"
    p.write_bytes(pickle.dumps({"w": [1.0, 2.0]}))
    with pytest.raises(nnx.CheckpointError, match="plain pickle"):
        nnx.load_torch(p)
    p.write_bytes(pickle.dumps({"w": np.ones(2)}))  # numpy's globals are refused too
    with pytest.raises(nnx.CheckpointError, match=r"refused global 'numpy\."):
        nnx.load_torch(p)


# ------------------------------------------------------------------ hand-made archives
class _FakeStorage:
    def __init__(self, key, numel, storage_type=None):
        self.key, self.numel = key, numel
        self.type = storage_type or torch.FloatStorage


class _FakeTensor:
    def __init__(self, storage, offset, size, stride, fn=None):
        self.args = (storage, offset, size, stride, False, OrderedDict())
        self.fn = fn or torch._utils._rebuild_tensor_v2

    def __reduce__(self):
        return (self.fn, self.args)


class _Pickler(pickle.Pickler):
    def __init__(self, f, pid=None):
        super().__init__(f, protocol=2)
        self.pid = pid

    def persistent_id(self, obj):
        if isinstance(obj, _FakeStorage):
            return self.pid or ("storage", obj.type, obj.key, "cpu", obj.numel)
        return None


def _archive(path, obj, storages=None, byteorder=b"little", pid=None, compress=zipfile.ZIP_STORED):
    buf = io.BytesIO()
    _Pickler(buf, pid).dump(obj)
    with zipfile.ZipFile(path, "w", compress) as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        if byteorder is not None:
            z.writestr("archive/byteorder", byteorder)
        z.writestr("archive/version", b"3\n")
        for key, data in (storages or {}).items():
            z.writestr(f"archive/data/{key}", data)
    return path


F32x6 = np.arange(6, dtype="<f4").tobytes()


def test_hand_made_archive_is_read(tmp_path):
    st = _FakeStorage("0", 6)
    p = _archive(tmp_path / "ok.pt", {"t": _FakeTensor(st, 1, (2, 2), (1, 2))}, {"0": F32x6})
    np.testing.assert_array_equal(nnx.load_torch(p)["t"], np.array([[1, 3], [2, 4]], np.float32))


def test_big_endian_archive(tmp_path):
    st = _FakeStorage("0", 6)
    p = _archive(tmp_path / "be.pt", {"t": _FakeTensor(st, 0, (6,), (1,))},
                 {"0": np.arange(6, dtype=">f4").tobytes()}, byteorder=b"big")
    out = nnx.load_torch(p)["t"]
    assert out.dtype == np.float32 and out.dtype.isnative
    np.testing.assert_array_equal(out, np.arange(6, dtype=np.float32))


@pytest.mark.parametrize("offset, size, stride, match", [
    (5, (2,), (1,), r"reaches element 6 of a storage of 6"),
    (0, (2, 3), (3, 2), r"reaches element 7"),
    (0, (7,), (1,), r"reaches element 6"),
    (-1, (2,), (1,), "storage offset is -1"),
    (0, (2, 2), (1,), r"size \(2, 2\) but stride \(1,\)"),
    (0, (2, -1), (1, 1), "size"),
    (0, "ab", (1,), "size"),
    (True, (2,), (1,), "storage offset"),
])
def test_views_outside_their_storage_are_refused(tmp_path, offset, size, stride, match):
    st = _FakeStorage("0", 6)
    p = _archive(tmp_path / "oob.pt", {"t": _FakeTensor(st, offset, size, stride)}, {"0": F32x6})
    with pytest.raises(nnx.CheckpointError, match=match) as ei:
        nnx.load_torch(p)
    assert "oob.pt" in str(ei.value)


@pytest.mark.parametrize("case, match", [
    ("missing storage", "storage '0' is missing"),
    ("short storage", "should hold 24 bytes, its member declares 20"),
    ("two sizes", "two different types or sizes"),
    ("bad byteorder", "byteorder 'middle'"),
    ("bad pid", "persistent id .* is not a torch storage"),
    ("path key", "not a valid torch storage reference"),
    ("bare storage", "bare storage"),
    ("not a storage", "built from a str"),
    ("refused pid type", "not a valid torch storage reference"),
])
def test_lying_archives(tmp_path, case, match):
    st = _FakeStorage("0", 6)
    obj, storages, kw = {"t": _FakeTensor(st, 0, (6,), (1,))}, {"0": F32x6}, {}
    if case == "missing storage":
        storages = {}
    elif case == "short storage":
        storages = {"0": F32x6[:20]}
    elif case == "two sizes":
        obj["u"] = _FakeTensor(_FakeStorage("0", 5), 0, (5,), (1,))
    elif case == "bad byteorder":
        kw["byteorder"] = b"middle"
    elif case == "bad pid":
        kw["pid"] = ("module", "os")
    elif case == "path key":
        obj = {"t": _FakeTensor(_FakeStorage("../../etc/passwd", 6), 0, (6,), (1,))}
    elif case == "bare storage":
        obj["s"] = st
    elif case == "not a storage":
        obj = {"t": _FakeTensor("0", 0, (6,), (1,))}
    elif case == "refused pid type":
        obj = {"t": _FakeTensor(_FakeStorage("0", 6, storage_type=torch.float32), 0, (6,), (1,))}
    p = _archive(tmp_path / "lie.pt", obj, storages, **kw)
    with pytest.raises(nnx.CheckpointError, match=match):
        nnx.load_torch(p)


def test_build_on_a_placeholder_is_refused(tmp_path):
    class WithState(_FakeTensor):
        def __reduce__(self):
            return (self.fn, self.args, {"offset": 10 ** 9})

    p = _archive(tmp_path / "state.pt", {"t": WithState(_FakeStorage("0", 6), 0, (6,), (1,))},
                 {"0": F32x6})
    with pytest.raises(nnx.CheckpointError, match="sets the state"):
        nnx.load_torch(p)


@pytest.mark.parametrize("glob", [b"torch._utils\n_rebuild_tensor_v2", b"torch\nFloatStorage",
                                  b"collections\nOrderedDict", b"torch\ndevice"])
def test_build_on_an_allowed_global_is_refused(tmp_path, glob):
    """BUILD with a slot state on a global would set its attributes (a function's
    __defaults__) for every later load."""
    data = (b"\x80\x02c" + glob + b"\nN}X\x0c\x00\x00\x00__defaults__K\x01\x85s\x86b.")
    with zipfile.ZipFile(tmp_path / "b.pt", "w") as z:
        z.writestr("archive/data.pkl", data)
    from nnx import torch_io
    before = torch_io._rebuild_tensor_v2.__defaults__
    with pytest.raises(nnx.CheckpointError):
        nnx.load_torch(tmp_path / "b.pt")
    assert torch_io._rebuild_tensor_v2.__defaults__ == before
    test_hand_made_archive_is_read(tmp_path)  # the allowlist still works as before


def test_deep_nesting_is_a_checkpoint_error(tmp_path):
    n = 100_000
    data = b"\x80\x02" + b"]" * n + b"a" * (n - 1) + b"."  # a list nested n deep
    with zipfile.ZipFile(tmp_path / "deep.pt", "w") as z:
        z.writestr("archive/data.pkl", data)
    with pytest.raises(nnx.CheckpointError, match="nests too deeply"):
        nnx.load_torch(tmp_path / "deep.pt")


def test_huge_claimed_pickle_lengths_allocate_nothing(tmp_path):
    """A BINBYTES8 claiming 2**60 bytes: the C unpickler would allocate before reading."""
    data = b"\x80\x04\x8e" + (1 << 60).to_bytes(8, "little") + b"x" * 10
    with zipfile.ZipFile(tmp_path / "claim.pt", "w") as z:
        z.writestr("archive/data.pkl", data)
    with pytest.raises(nnx.CheckpointError, match="corrupt or truncated pickle"):
        nnx.load_torch(tmp_path / "claim.pt")


def test_size_limit(tmp_path):
    t = torch.zeros(1000)
    p = _save({"t": t, "u": t[:10]}, tmp_path / "z.pt")
    assert nnx.load_torch(p, max_bytes=10_000)["t"].shape == (1000,)
    with pytest.raises(nnx.CheckpointError, match="more than 5000 bytes.*refused before reading"):
        nnx.load_torch(p, max_bytes=5000)
    # a storage claiming 2**40 floats is refused from its reference, before any reading
    st = _FakeStorage("0", 1 << 40)
    q = _archive(tmp_path / "claims.pt", {"t": _FakeTensor(st, 0, (1 << 40,), (1,))}, {"0": F32x6})
    with pytest.raises(nnx.CheckpointError, match="more than"):
        nnx.load_torch(q)
    # a stride-0 view of one float claiming 2**50 elements
    r = _archive(tmp_path / "stride0.pt", {"t": _FakeTensor(_FakeStorage("0", 6), 0, (1 << 25, 1 << 25),
                                                            (0, 0))}, {"0": F32x6})
    with pytest.raises(nnx.CheckpointError, match="more than"):
        nnx.load_torch(r)


@pytest.mark.parametrize("content, match", [
    (b"", "empty file"), (b"hello world", "not a torch checkpoint"),
    (b"\x80\x02K\x01", "corrupt or truncated pickle"), (b"PK\x03\x04junk", "corrupt or truncated"),
])
def test_not_torch_files(tmp_path, content, match):
    p = tmp_path / "x.pt"
    p.write_bytes(content)
    with pytest.raises(nnx.CheckpointError, match=match):
        nnx.load_torch(p)


def test_nnx_checkpoint_and_missing_file(tmp_path):
    p = tmp_path / "m.npz"
    nnx.save({"w": np.ones(2)}, p)
    with pytest.raises(nnx.CheckpointError, match="use nnx.load"):
        nnx.load_torch(p)
    with pytest.raises(nnx.CheckpointError, match="nope.pt") as ei:
        nnx.load_torch(tmp_path / "nope.pt")
    assert isinstance(ei.value, FileNotFoundError)


def test_truncated_torch_files(tmp_path):
    data = _save({"w": torch.arange(10.0), "b": torch.ones(3)}, tmp_path / "full.pt").read_bytes()
    p = tmp_path / "cut.pt"
    for n in range(0, len(data), 7):
        p.write_bytes(data[:n])
        with pytest.raises(nnx.CheckpointError, match="cut.pt"):
            nnx.load_torch(p)


def test_load_torch_never_imports_torch(tmp_path):
    p = _save({"w": torch.ones(2)}, tmp_path / "w.pt")
    code = ("import sys, nnx; d = nnx.load_torch(sys.argv[1]); "
            "assert 'torch' not in sys.modules, 'torch was imported'; print(d['w'].sum())")
    r = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "2.0"
