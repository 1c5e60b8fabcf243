"""Checkpoints that cannot hurt and cannot be lost.

* nested structures round trip, with a format version inside the file;
* hostile files (pickle bombs, random or mutated bytes, truncations, hand-made metadata) give
  only ``nnx.CheckpointError`` -- never another exception, never a file created, never code run;
* ``nnx.save`` is atomic: a saving process killed (SIGKILL) at random moments leaves the old or
  the new checkpoint, and a save that fails leaves the old file as it was;
* training resumes exactly: save, load into a fresh model and optimizer, continue -> the same
  bits as an uninterrupted run, on every device (the ``device`` fixture: NumPy, and CuPy where a
  GPU answers); device tensors and a device model's state save and load like host ones.

See also test_serialization.py (round trips of every value type, refusal of pickle files).
"""
import json
import os
import random
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import nnx
import nnx.functional as F
from nnx import nn, optim
from nnx import serialization

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mlp(seed=0, hidden=16, device="cpu"):
    nnx.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 3)).to(device)


def _same(a, b):
    """Exact equality of two checkpoint trees (types, order, dtypes, bits)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, np.ndarray):
        return (isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
                and np.array_equal(a, b))
    return type(a) is type(b) and a == b


def _valid_tree(obj, depth=0):
    """What a successful nnx.load may return: dicts, lists, tuples of arrays and plain values."""
    if isinstance(obj, dict):
        return all(isinstance(k, (str, int)) and _valid_tree(v, depth + 1) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return all(_valid_tree(v, depth + 1) for v in obj)
    if isinstance(obj, np.ndarray):
        return obj.dtype.kind in "biufcSU"
    return obj is None or isinstance(obj, (bool, int, float, str))


def _checkpoint(model=None, opt=None):
    model = model or _mlp()
    opt = opt or optim.Adam(model.parameters(), lr=0.01)
    F.cross_entropy(model(nnx.ones(2, 4)), nnx.tensor([0, 2])).backward()
    opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3, "note": "x",
            "lr": 0.1, "flags": [True, None]}


def _listing(folder):
    return sorted(os.listdir(folder))


# ---------------------------------------------------------------------- round trip and version
def test_nested_checkpoint_round_trip(tmp_path, device):
    nnx.set_device(device)
    model = _mlp(device=device)
    ckpt = _checkpoint(model)
    path = tmp_path / "ckpt.nnx"
    nnx.save(ckpt, path)
    back = nnx.load(path)
    assert _same(ckpt, back)
    assert back["epoch"] == 3 and type(back["epoch"]) is int
    assert back["lr"] == 0.1 and back["note"] == "x" and back["flags"] == [True, None]
    assert set(back["optimizer"]) == {"state", "param_groups"}
    assert _listing(tmp_path) == ["ckpt.nnx"]  # no temp file left behind
    # the state came off the device: what is loaded is host arrays holding the device's values
    for k, p in model.named_parameters():
        assert type(back["model"][k]) is np.ndarray and np.array_equal(back["model"][k], p.numpy())


def test_device_tensors_save_as_host_arrays_and_load_back_onto_the_device(tmp_path, device):
    w = nnx.tensor(np.arange(6, dtype=np.float32).reshape(2, 3), device=device)
    i = nnx.tensor(np.array([3, -1], np.int64), device=device)
    g = (w * 2).sum()  # a tensor with a graph behind it saves its values only
    path = tmp_path / "t.nnx"
    nnx.save({"w": w, "nested": [i, {"g": g}]}, path)
    back = nnx.load(path)
    assert type(back["w"]) is np.ndarray and back["w"].dtype == np.float32
    np.testing.assert_array_equal(back["w"], w.numpy())
    assert back["nested"][0].dtype == np.int64 and back["nested"][0].tolist() == [3, -1]
    assert float(back["nested"][1]["g"]) == 30.0
    again = nnx.tensor(back["w"], device=device)
    assert again.device == w.device
    np.testing.assert_array_equal(again.numpy(), w.numpy())


def test_format_version_is_inside_the_file(tmp_path):
    path = tmp_path / "ckpt.nnx"
    nnx.save({"w": np.ones(2, np.float32)}, path)
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    assert "__nnx_format__.npy" in names and "__nnx_meta__.npy" in names
    with np.load(path, allow_pickle=False) as z:
        assert int(z["__nnx_format__"]) == serialization.FORMAT_VERSION


def _rewrite(path, out, **changes):
    with np.load(path, allow_pickle=False) as z:
        members = {n: z[n] for n in z.files}
    members.update(changes)
    with open(out, "wb") as f:
        np.savez(f, **members)


@pytest.mark.parametrize("version", [serialization.FORMAT_VERSION + 1, 0, -1, 10 ** 6])
def test_unknown_format_version_is_refused(tmp_path, version):
    path, bumped = tmp_path / "ok.nnx", tmp_path / "bumped.nnx"
    nnx.save({"w": np.ones(2, np.float32)}, path)
    _rewrite(path, bumped, __nnx_format__=np.array(version, dtype=np.int64))
    with pytest.raises(nnx.CheckpointError) as info:
        nnx.load(bumped)
    msg = str(info.value)
    assert "format version" in msg and str(version) in msg and "bumped.nnx" in msg, msg


@pytest.mark.parametrize("version", [np.array([1, 1]), np.array(1.0), np.array("1")])
def test_malformed_format_version_is_refused(tmp_path, version):
    path, bad = tmp_path / "ok.nnx", tmp_path / "bad.nnx"
    nnx.save({"w": np.ones(2, np.float32)}, path)
    _rewrite(path, bad, __nnx_format__=version)
    with pytest.raises(nnx.CheckpointError, match="format version"):
        nnx.load(bad)


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "nowhere" / "model.nnx"
    with pytest.raises(nnx.CheckpointError) as info:
        nnx.load(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)


def test_object_arrays_are_refused_on_save(tmp_path):
    path = tmp_path / "ckpt.nnx"
    with pytest.raises(TypeError, match="object"):
        nnx.save({"model": {"w": np.array([1, "a"], dtype=object)}}, path)
    assert _listing(tmp_path) == []


def test_other_array_kinds_are_refused_on_load(tmp_path):
    path, bad = tmp_path / "ok.nnx", tmp_path / "bad.nnx"
    nnx.save({"w": np.ones(2, np.float32)}, path)
    _rewrite(path, bad, a0=np.zeros(2, dtype=[("x", "f4"), ("y", "i4")]))  # a record array
    with pytest.raises(nnx.CheckpointError, match="dtype"):
        nnx.load(bad)


# ---------------------------------------------------------------------- pickle bombs
class _OpenBomb:
    """Unpickling calls open(path, "w"): it creates a file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class _ShellBomb:
    """Unpickling runs ``touch path`` through os.system."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch '{self.path}'",))


def _bomb_array(bomb):
    a = np.empty(2, dtype=object)
    a[0], a[1] = bomb, "payload"
    return a


def _write_bomb(path, bomb, layout):
    if layout == "npz-as-checkpoint":  # a real checkpoint whose array member is the bomb
        good = str(path) + ".good"
        nnx.save({"w": np.ones(2, np.float32)}, good)
        with np.load(good, allow_pickle=False) as z:
            members = {n: z[n] for n in z.files}
        os.unlink(good)
        members["a0"] = _bomb_array(bomb)
        np.savez(path, allow_pickle=True, **members)
    elif layout == "npz-plain":
        with open(path, "wb") as f:
            np.savez(f, allow_pickle=True, w=_bomb_array(bomb))
    else:  # a single .npy object array
        with open(path, "wb") as f:
            np.save(f, _bomb_array(bomb), allow_pickle=True)


@pytest.mark.parametrize("bomb_type", [_OpenBomb, _ShellBomb])
@pytest.mark.parametrize("layout", ["npz-as-checkpoint", "npz-plain", "npy"])
def test_pickle_bomb_is_refused_and_runs_nothing(tmp_path, bomb_type, layout):
    target = tmp_path / "pwned"
    evil = tmp_path / "evil.npz"
    _write_bomb(evil, bomb_type(str(target)), layout)
    with pytest.raises(nnx.CheckpointError) as info:
        nnx.load(evil)
    assert "evil.npz" in str(info.value)
    assert not target.exists(), "nnx.load ran the payload"
    # The bomb is live: loading it the unsafe way does create the file.
    loaded = np.load(evil, allow_pickle=True)
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            arrays = [loaded[n] for n in loaded.files]
    else:
        arrays = [loaded]
    for a in arrays:  # close the file objects open() returned
        for obj in a.ravel() if a.dtype == object else ():
            if hasattr(obj, "close"):
                obj.close()
    assert target.exists()


# ---------------------------------------------------------------------- corrupt bytes
@pytest.fixture(scope="module")
def good_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("good")
    path = folder / "good.nnx"
    ckpt = _checkpoint()
    nnx.save(ckpt, path)
    return ckpt, path.read_bytes()


def _load_bytes(folder, data, name="fuzz.nnx"):
    """nnx.load of ``data``; returns the result or the CheckpointError. Any other exception,
    or a new file in the folder, fails the test."""
    path = os.path.join(folder, name)
    with open(path, "wb") as f:
        f.write(data)
    before = _listing(folder)
    try:
        result = nnx.load(path)
    except nnx.CheckpointError as e:
        result = e
    assert _listing(folder) == before, "loading created files"
    return result


def test_truncated_anywhere_gives_checkpoint_error(tmp_path, good_file):
    ckpt, data = good_file
    n = len(data)
    # every byte of the first headers and of the zip directory at the end, every 3rd between
    cuts = sorted(set(range(0, 200)) | set(range(200, n - 400, 3)) | set(range(n - 400, n)))
    for cut in cuts:
        res = _load_bytes(tmp_path, data[:cut])
        assert isinstance(res, nnx.CheckpointError), f"truncated at {cut} of {len(data)}: {res!r}"
    assert _same(_load_bytes(tmp_path, data), ckpt)


def test_flipped_bytes_never_give_wrong_content(tmp_path, good_file):
    """One corrupted byte anywhere: an error, or (a byte zip ignores) the same checkpoint --
    never different values (the zip CRCs cover every member)."""
    ckpt, data = good_file
    rng = random.Random(1234)
    errors = 0
    for _ in range(600):
        b = bytearray(data)
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8) if rng.random() < 0.5 else rng.randrange(1, 256)
        res = _load_bytes(tmp_path, bytes(b))
        if isinstance(res, nnx.CheckpointError):
            errors += 1
        else:
            assert _same(res, ckpt), f"byte {i} changed the content without an error"
    assert errors > 300  # most bytes matter


def test_garbage_after_the_end_and_doubled_files(tmp_path, good_file):
    ckpt, data = good_file
    for blob in (data + b"\0" * 100, data + data, b"\0" * 100 + data, data[: len(data) // 2] * 2):
        res = _load_bytes(tmp_path, blob)
        assert isinstance(res, nnx.CheckpointError) or _valid_tree(res)


def test_empty_and_directory_paths(tmp_path):
    assert isinstance(_load_bytes(tmp_path, b""), nnx.CheckpointError)
    with pytest.raises(nnx.CheckpointError):
        nnx.load(tmp_path)  # a folder


# ---------------------------------------------------------------------- hypothesis fuzzing
FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@FUZZ
@given(prefix=st.sampled_from([b"", b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY\x01\x00",
                               b"\x80\x04\x95", b"PK\x03\x04\x14\x00\x00\x00\x00\x00"]),
       body=st.binary(max_size=600))
def test_fuzz_random_bytes(tmp_path, prefix, body):
    res = _load_bytes(tmp_path, prefix + body)
    assert isinstance(res, nnx.CheckpointError) or _valid_tree(res)


@FUZZ
@given(edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                      min_size=1, max_size=8),
       cut=st.none() | st.floats(0, 1),
       insert=st.none() | st.tuples(st.floats(0, 1), st.binary(min_size=1, max_size=16)))
def test_fuzz_mutated_valid_file(tmp_path, good_file, edits, cut, insert):
    ckpt, data = good_file
    b = bytearray(data)
    for where, value in edits:
        b[int(where * len(b))] = value
    if insert is not None:
        at = int(insert[0] * len(b))
        b[at:at] = insert[1]
    if cut is not None:
        b = b[: int(cut * len(b))]
    res = _load_bytes(tmp_path, bytes(b))
    assert isinstance(res, nnx.CheckpointError) or _valid_tree(res)


@pytest.fixture(scope="module")
def bomb_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bomb")
    marker = folder / "pwned"
    evil = folder / "evil.npz"
    _write_bomb(evil, _OpenBomb(str(marker)), "npz-as-checkpoint")
    return marker, evil.read_bytes()


@FUZZ
@given(edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                      max_size=4))
def test_fuzz_mutated_pickle_bomb_never_runs(tmp_path, bomb_file, edits):
    marker, data = bomb_file
    b = bytearray(data)
    for where, value in edits:
        b[int(where * len(b))] = value
    res = _load_bytes(tmp_path, bytes(b))
    assert isinstance(res, nnx.CheckpointError) or _valid_tree(res)
    assert not marker.exists()


_KEYS = ["array", "bool", "int", "float", "str", "none", "dict", "list", "tuple", "ordered"]
def _json_containers(inner):
    # a named function, not a lambda: hypothesis inspects its source to see that it recurses,
    # and a lambda's source is not always recoverable (a HypothesisDeprecationWarning then)
    return st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(_KEYS + ["x"]), inner,
                                                         max_size=3)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4)
    | st.sampled_from(_KEYS + ["a0", "a1", "nan", "-inf", "1e999"]),
    _json_containers, max_leaves=16)


@FUZZ
@given(meta=_json, n_arrays=st.integers(0, 2))
def test_fuzz_metadata(tmp_path, meta, n_arrays):
    """Well-formed npz, hand-made (hostile) metadata: an error or a valid tree, nothing else."""
    members = {"__nnx_format__": np.array(1, dtype=np.int64),
               "__nnx_meta__": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
    for i in range(n_arrays):
        members[f"a{i}"] = np.arange(3.0)
    path = tmp_path / "meta.nnx"
    with open(path, "wb") as f:
        np.savez(f, **members)
    try:
        res = nnx.load(path)
    except nnx.CheckpointError:
        return
    assert _valid_tree(res)


@pytest.mark.parametrize("meta", [
    {"int": float("inf")}, {"int": float("nan")}, {"int": 1e400}, {"float": "1e999"},
    {"array": ["a0"]}, {"dict": 5}, {"dict": [[1]]}, {"list": 7}, {}, [], "x", 3,
    {"array": "a9"}, {"unknown": 1},
])
def test_hostile_metadata_examples(tmp_path, meta):
    members = {"__nnx_format__": np.array(1, dtype=np.int64),
               "__nnx_meta__": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
               "a0": np.arange(3.0)}
    path = tmp_path / "meta.nnx"
    with open(path, "wb") as f:
        np.savez(f, **members)
    try:
        res = nnx.load(path)
    except nnx.CheckpointError:
        return
    assert _valid_tree(res)


def test_deeply_nested_metadata(tmp_path):
    meta = ('{"list": [' * 50000) + (']}' * 50000)
    members = {"__nnx_format__": np.array(1, dtype=np.int64),
               "__nnx_meta__": np.frombuffer(meta.encode(), dtype=np.uint8)}
    path = tmp_path / "deep.nnx"
    with open(path, "wb") as f:
        np.savez(f, **members)
    with pytest.raises(nnx.CheckpointError):
        nnx.load(path)


# ---------------------------------------------------------------------- atomic save
_SAVER = r"""
import sys
import numpy as np
import nnx

target = sys.argv[1]
# ~4 MiB per checkpoint: a save takes several milliseconds, so random kills land inside one.
arrays = [np.empty((256, 512), np.float32) for _ in range(8)]
print("ready", flush=True)
sys.stdin.readline()
k = 0
while True:
    k += 1
    for a in arrays:
        a.fill(k)
    nnx.save({"model": {f"w{i}": a for i, a in enumerate(arrays)}, "k": k}, target)
"""


def _check_consistent(path):
    """The checkpoint at ``path`` is complete: it loads and every array holds its ``k``."""
    ck = nnx.load(path)
    k = ck["k"]
    assert len(ck["model"]) == 8
    for a in ck["model"].values():
        assert a.shape == (256, 512) and a.dtype == np.float32
        assert (a == k).all(), f"torn checkpoint: arrays of generation {k} hold other values"
    return k


def test_sigkill_during_save_leaves_old_or_new_checkpoint(tmp_path):
    n = 10
    rng = random.Random(7)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = []
    for i in range(n):
        folder = tmp_path / f"run{i}"
        folder.mkdir()
        target = folder / "ckpt.nnx"
        arrays = {f"w{j}": np.zeros((256, 512), np.float32) for j in range(8)}
        nnx.save({"model": arrays, "k": 0}, target)  # the "old" checkpoint
        p = subprocess.Popen([sys.executable, "-c", _SAVER, str(target)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, env=env, cwd=str(folder))
        procs.append((p, folder, target))
    generations, torn_temps = [], 0
    try:
        for p, folder, target in procs:
            assert p.stdout.readline().strip() == b"ready"
            p.stdin.write(b"go\n")
            p.stdin.flush()
            time.sleep(rng.uniform(0.0, 0.12))
            p.send_signal(signal.SIGKILL)
            p.wait()
            assert p.returncode == -signal.SIGKILL
            generations.append(_check_consistent(target))
            temps = [f for f in _listing(folder) if f != "ckpt.nnx"]
            for t in temps:  # a temp file may stay after SIGKILL, never under the target's name
                assert t.startswith(".ckpt.nnx.") and t.endswith(".tmp"), t
                try:
                    _check_consistent(folder / t)
                except nnx.CheckpointError:
                    torn_temps += 1  # killed mid-write: this is what the rename protects from
    finally:
        for p, _, _ in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stdin.close()
            p.stdout.close()
    # The kills really landed at different moments, some of them inside a write.
    assert len(set(generations)) > 1, generations
    assert torn_temps >= 1, "no kill landed inside a save; the test proved nothing"


def test_failed_save_leaves_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.nnx"
    old = {"w": np.arange(4.0), "epoch": 1}
    nnx.save(old, path)
    old_bytes = path.read_bytes()

    def check_intact():
        assert path.read_bytes() == old_bytes
        assert _same(nnx.load(path), old)
        assert _listing(tmp_path) == ["ckpt.nnx"]

    with pytest.raises(TypeError, match="cannot save function"):
        nnx.save({"w": np.arange(5.0), "fn": lambda: 0}, path)  # unsaveable value
    check_intact()
    with pytest.raises(TypeError, match="object"):
        nnx.save({"w": np.array([None], dtype=object)}, path)
    check_intact()
    with pytest.raises(TypeError, match="dict keys"):
        nnx.save({"w": np.arange(5.0), "x": float("nan"), 1.5: 2}, path)  # bad key
    check_intact()

    real_savez = np.savez

    def disk_full(f, **members):  # writes part of the file, then the disk is full
        real_savez(f, **members)
        f.truncate(100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(serialization.np, "savez", disk_full)
    with pytest.raises(OSError, match="No space left"):
        nnx.save({"w": np.arange(5.0)}, path)
    check_intact()

    def interrupted(f, **members):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(serialization.np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        nnx.save({"w": np.arange(5.0)}, path)
    check_intact()
    monkeypatch.undo()

    with pytest.raises(nnx.CheckpointError) as info:
        nnx.save({"w": np.arange(5.0)}, tmp_path / "missing" / "ckpt.nnx")
    assert "missing" in str(info.value) and "does not exist" in str(info.value)
    check_intact()

    nnx.save({"w": np.arange(5.0)}, path)  # and a good save still replaces it
    assert np.array_equal(nnx.load(path)["w"], np.arange(5.0))


# ---------------------------------------------------------------------- resume exactly
def _data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    return x, y


def _steps(model, opt, start, stop):
    x, y = _data()
    for step in range(start, stop):
        i = (step * 16) % 64  # the batch is a function of the step: a resumed run sees the same
        opt.zero_grad()
        F.cross_entropy(model(nnx.tensor(x[i:i + 16])), nnx.tensor(y[i:i + 16])).backward()
        opt.step()


OPTIMIZERS = {
    "sgd-momentum": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-3),
    "sgd-nesterov": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
    "adam": lambda ps: optim.Adam(ps, lr=0.01, weight_decay=1e-4),
}


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_resume_is_bit_identical(tmp_path, opt_name, device):
    nnx.set_device(device)  # the batches of _steps go to the model's device
    make_opt = OPTIMIZERS[opt_name]
    n, m = 7, 6

    whole = _mlp(seed=0, device=device)
    whole_opt = make_opt(whole.parameters())
    _steps(whole, whole_opt, 0, n + m)

    first = _mlp(seed=0, device=device)
    first_opt = make_opt(first.parameters())
    _steps(first, first_opt, 0, n)
    path = tmp_path / "ckpt.nnx"
    nnx.save({"model": first.state_dict(), "optimizer": first_opt.state_dict(), "epoch": n}, path)
    del first, first_opt

    fresh = _mlp(seed=123, device=device)  # other initial weights: all must come from the file
    fresh_opt = make_opt(fresh.parameters())
    ck = nnx.load(path)
    fresh.load_state_dict(ck["model"])
    fresh_opt.load_state_dict(ck["optimizer"])
    _steps(fresh, fresh_opt, ck["epoch"], n + m)

    for (k, a), (_, b) in zip(whole.named_parameters(), fresh.named_parameters()):
        assert b.device == a.device
        assert np.array_equal(a.numpy(), b.numpy()), f"{opt_name}: {k} differs after resuming"
    assert _same(whole_opt.state_dict(), fresh_opt.state_dict())


def test_mismatched_checkpoint_leaves_model_and_optimizer_untouched(tmp_path, device):
    nnx.set_device(device)
    src = _mlp(seed=0, hidden=8, device=device)  # another architecture
    src_opt = optim.Adam(src.parameters(), lr=0.01)
    path = tmp_path / "other.nnx"
    nnx.save(_checkpoint(src, src_opt), path)
    ck = nnx.load(path)

    model = _mlp(seed=1, device=device)
    opt = optim.Adam(model.parameters(), lr=0.02)
    _steps(model, opt, 0, 2)
    params = {k: p.numpy().copy() for k, p in model.named_parameters()}
    opt_state = opt.state_dict()

    with pytest.raises(nnx.CheckpointError) as info:
        model.load_state_dict(ck["model"])
    assert "0.weight" in str(info.value) and "(8, 4)" in str(info.value)
    with pytest.raises(nnx.CheckpointError) as info:
        opt.load_state_dict(ck["optimizer"])
    assert "shape" in str(info.value)
    for k, p in model.named_parameters():
        assert np.array_equal(p.numpy(), params[k]), k
    assert _same(opt.state_dict(), opt_state)
    # and training goes on from where it was
    _steps(model, opt, 2, 3)


def test_optimizer_checkpoint_with_wrong_group_count_is_refused(device):
    model = _mlp(device=device)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sd = opt.state_dict()
    sd["param_groups"] = sd["param_groups"] * 2
    with pytest.raises(nnx.CheckpointError, match="parameter groups"):
        opt.load_state_dict(sd)
    with pytest.raises(nnx.CheckpointError, match="state"):
        opt.load_state_dict({"params": []})
