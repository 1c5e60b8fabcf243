"""nnx.save / nnx.load: round trips of state dicts and nested checkpoints, and refusal of any
file that would need unpickling (loading a checkpoint never runs code)."""
import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest

import nnx
from nnx import nn, optim


def _mlp(device="cpu"):
    return nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)).to(device)


def _assert_same_tree(a, b):
    assert type(a) is type(b) or (isinstance(a, dict) and isinstance(b, dict)), (type(a), type(b))
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _assert_same_tree(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same_tree(x, y)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b)
    else:
        assert a == b


# ---------------------------------------------------------------------- round trips
def test_state_dict_round_trip(tmp_path, device):
    nnx.manual_seed(0)
    model = _mlp(device)
    sd = model.state_dict()
    path = tmp_path / "model.npz"
    nnx.save(sd, path)
    loaded = nnx.load(path)
    assert list(loaded) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    for k, v in sd.items():
        assert type(loaded[k]) is np.ndarray
        assert loaded[k].dtype == np.float32
        np.testing.assert_array_equal(loaded[k], v)
    # into a fresh model: the same function
    nnx.manual_seed(1)
    other = _mlp(device)
    x = nnx.tensor(np.random.default_rng(0).standard_normal((4, 3)), device=device)
    assert not np.allclose(other(x).numpy(), model(x).numpy())
    other.load_state_dict(loaded)
    np.testing.assert_array_equal(other(x).numpy(), model(x).numpy())


def test_save_str_path_and_module(tmp_path):
    model = _mlp()
    path = str(tmp_path / "m.npz")
    with pytest.raises(TypeError, match=r"model\.state_dict\(\)"):
        nnx.save(model, path)  # a Module is refused, naming state_dict()
    assert not os.path.exists(path)
    nnx.save(model.state_dict(), path)
    _assert_same_tree(dict(model.state_dict()), dict(nnx.load(path)))


def test_float64_and_int_dtypes_preserved(tmp_path):
    model = _mlp().double()
    obj = {"sd": model.state_dict(), "labels": np.array([3, 1, 2], dtype=np.int64),
           "half": np.array([0.5, 1.5], dtype=np.float16), "i32": np.arange(4, dtype=np.int32),
           "mask": np.array([True, False]), "scalar": np.array(2.5), "empty": np.zeros((0, 3))}
    nnx.save(obj, tmp_path / "c.npz")
    back = nnx.load(tmp_path / "c.npz")
    _assert_same_tree(obj, back)
    assert back["sd"]["0.weight"].dtype == np.float64


def test_nested_checkpoint_round_trip(tmp_path):
    nnx.manual_seed(0)
    model = _mlp()
    opt = optim.Adam(model.parameters(), lr=0.01, weight_decay=1e-4)
    x = nnx.tensor(np.random.default_rng(1).standard_normal((8, 3)))
    y = nnx.tensor(np.random.default_rng(2).integers(0, 2, 8))
    for _ in range(3):
        opt.zero_grad()
        nn.CrossEntropyLoss()(model(x), y).backward()
        opt.step()
    ckpt = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3}
    nnx.save(ckpt, tmp_path / "ckpt.npz")
    back = nnx.load(tmp_path / "ckpt.npz")
    assert back["epoch"] == 3 and type(back["epoch"]) is int
    _assert_same_tree(dict(ckpt["model"]), dict(back["model"]))
    osd, bosd = ckpt["optimizer"], back["optimizer"]
    assert sorted(bosd["state"]) == sorted(osd["state"]) == [0, 1, 2, 3]
    for i, s in osd["state"].items():
        assert int(bosd["state"][i]["step"]) == 3
        for name in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_array_equal(bosd["state"][i][name], s[name])
    g, bg = osd["param_groups"][0], bosd["param_groups"][0]
    assert bg["lr"] == 0.01 and bg["weight_decay"] == 1e-4 and list(bg["betas"]) == [0.9, 0.999]
    assert list(bg["params"]) == list(g["params"])

    # resuming from the file continues exactly like the original
    model2 = _mlp()
    opt2 = optim.Adam(model2.parameters(), lr=0.5)
    model2.load_state_dict(back["model"])
    opt2.load_state_dict(back["optimizer"])
    for m, o in ((model, opt), (model2, opt2)):
        for _ in range(2):
            o.zero_grad()
            nn.CrossEntropyLoss()(m(x), y).backward()
            o.step()
    _assert_same_tree(dict(model.state_dict()), dict(model2.state_dict()))


def test_plain_values_round_trip(tmp_path):
    obj = {"name": "run-1", "epoch": 7, "lr": 0.001, "best": float("inf"), "nan": float("nan"),
           "flag": True, "none": None, "history": [0.5, 0.25, 0.125], "pair": (1, "a"),
           "nested": {"a": {"b": [np.ones(2, np.float32), {"c": 1}]}}, 3: "int key",
           "unicode": "ünïcødé", "neg": -12, "big": 2 ** 62}
    nnx.save(obj, tmp_path / "v.npz")
    back = nnx.load(tmp_path / "v.npz")
    _assert_same_tree(obj, back)
    assert isinstance(back["pair"], tuple) and isinstance(back["history"], list)
    assert back["flag"] is True and back["none"] is None


def test_ordered_dict_order_kept(tmp_path):
    od = OrderedDict((k, np.full(1, i, np.float32)) for i, k in enumerate(["z", "a", "m", "b"]))
    nnx.save(od, tmp_path / "o.npz")
    back = nnx.load(tmp_path / "o.npz")
    assert list(back) == ["z", "a", "m", "b"]


def test_tensors_saved_as_arrays(tmp_path, device):
    t = nnx.tensor([[1.0, 2.0]], device=device)
    nnx.save({"t": t, "i": nnx.tensor([1, 2], device=device)}, tmp_path / "t.npz")
    back = nnx.load(tmp_path / "t.npz")
    assert type(back["t"]) is np.ndarray and back["t"].dtype == np.float32
    np.testing.assert_array_equal(back["t"], [[1.0, 2.0]])
    assert back["i"].dtype == np.int64


def test_saved_file_is_plain_npz_without_pickles(tmp_path):
    model = _mlp()
    nnx.save({"model": model.state_dict(), "epoch": 3}, tmp_path / "p.npz")
    with np.load(tmp_path / "p.npz", allow_pickle=False) as z:
        for name in z.files:
            assert z[name].dtype != object


def test_overwrite_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "ck.npz"
    nnx.save({"v": np.zeros(3)}, path)
    nnx.save({"v": np.ones(3)}, path)
    np.testing.assert_array_equal(nnx.load(path)["v"], 1.0)
    assert os.listdir(tmp_path) == ["ck.npz"]


@pytest.mark.parametrize("bad", [object(), {"f": lambda: 1}, {"s": {1, 2}},
                                 {"o": np.array([1, "a", None], dtype=object)}, {(1, 2): 3}])
def test_unsavable_values_raise_and_write_nothing(tmp_path, bad):
    path = tmp_path / "x.npz"
    with pytest.raises(TypeError):
        nnx.save(bad, path)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------- refusing unsafe files
MARKER_NAME = "code_ran"


class _Exploit:
    """Unpickling this creates a marker directory: proof that loading ran code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _object_array(marker):
    a = np.empty(1, dtype=object)
    a[0] = _Exploit(marker)
    return a


def test_npz_with_object_array_is_refused(tmp_path):
    """A hand-made .npz that looks like an nnx checkpoint but holds a pickled object array."""
    marker = str(tmp_path / MARKER_NAME)
    good = tmp_path / "good.npz"
    nnx.save({"weight": np.ones(3, np.float32)}, good)
    with np.load(good, allow_pickle=False) as z:
        members = {n: z[n] for n in z.files}
    array_names = [n for n in members if not n.startswith("__nnx")]
    assert len(array_names) == 1
    members[array_names[0]] = _object_array(marker)  # the metadata still points at it
    evil = tmp_path / "evil.npz"
    np.savez(evil, **members)
    with pytest.raises(nnx.CheckpointError) as ei:
        nnx.load(evil)
    assert isinstance(ei.value, ValueError)
    assert "evil.npz" in str(ei.value)
    assert not os.path.exists(marker), "loading the checkpoint ran code"


def test_npz_with_extra_object_member_is_refused(tmp_path):
    marker = str(tmp_path / MARKER_NAME)
    good = tmp_path / "good.npz"
    nnx.save({"weight": np.ones(3, np.float32)}, good)
    with np.load(good, allow_pickle=False) as z:
        members = {n: z[n] for n in z.files}
    members["payload"] = _object_array(marker)
    evil = tmp_path / "evil2.npz"
    np.savez(evil, **members)
    with pytest.raises(nnx.CheckpointError):
        nnx.load(evil)
    assert not os.path.exists(marker)


def test_npz_object_array_without_nnx_metadata_is_refused(tmp_path):
    marker = str(tmp_path / MARKER_NAME)
    evil = tmp_path / "plain.npz"
    np.savez(evil, w=_object_array(marker))
    with pytest.raises(nnx.CheckpointError):
        nnx.load(evil)
    assert not os.path.exists(marker)


@pytest.mark.parametrize("kind", ["pickle", "npy_object"])
def test_pickle_files_are_refused(tmp_path, kind):
    marker = str(tmp_path / MARKER_NAME)
    evil = tmp_path / f"evil_{kind}.npz"
    if kind == "pickle":
        evil.write_bytes(pickle.dumps({"model": _Exploit(marker)}))
    else:
        with open(evil, "wb") as f:
            np.save(f, _object_array(marker), allow_pickle=True)
    with pytest.raises(nnx.CheckpointError):
        nnx.load(evil)
    assert not os.path.exists(marker)


def test_the_exploit_would_run_if_unpickled(tmp_path):
    """The payload is live: pickle.loads does run it (so the tests above can fail)."""
    marker = str(tmp_path / MARKER_NAME)
    pickle.loads(pickle.dumps(_Exploit(marker)))
    assert os.path.isdir(marker)


def test_missing_file(tmp_path):
    with pytest.raises(nnx.CheckpointError) as ei:
        nnx.load(tmp_path / "nope.npz")
    assert isinstance(ei.value, FileNotFoundError)
    assert "nope.npz" in str(ei.value)


@pytest.mark.parametrize("content", [b"", b"not a zip file at all", b"PK\x03\x04garbage"])
def test_corrupt_file(tmp_path, content):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(nnx.CheckpointError):
        nnx.load(path)


def test_truncated_file(tmp_path):
    path = tmp_path / "t.npz"
    nnx.save({"w": np.arange(1000, dtype=np.float32)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(nnx.CheckpointError):
        nnx.load(path)


def test_plain_npz_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, w=np.ones(3))
    with pytest.raises(nnx.CheckpointError, match="not an nnx checkpoint"):
        nnx.load(path)
