"""Fuzzing the three loaders (nnx.load, nnx.load_safetensors, nnx.load_torch) with hypothesis:
random bytes, bit flips, overwritten spans and truncations of real files. Whatever the bytes,
a loader returns or raises CheckpointError: no other exception type escapes, nothing hangs."""
import os
import warnings
from collections import OrderedDict

import numpy as np
import pytest

import nnx

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# NNX_FUZZ_EXAMPLES=5000 for a longer campaign than CI's
FUZZ = settings(max_examples=int(os.environ.get("NNX_FUZZ_EXAMPLES", 150)), deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _nnx_file(folder):
    p = folder / "real.npz"
    nnx.save({"model": OrderedDict([("0.weight", np.arange(12, dtype=np.float32).reshape(3, 4)),
                                    ("0.bias", np.ones(3, np.float32))]),
              "epoch": 3, "lr": 0.1, "names": ["a", "b"], "steps": np.arange(4)}, p)
    return p


def _safetensors_file(folder):
    pytest.importorskip("safetensors")
    p = folder / "real.safetensors"
    nnx.save_safetensors({"w": np.arange(12, dtype=np.float32).reshape(3, 4),
                          "b": np.arange(3, dtype=np.int64), "h": np.ones(2, np.float16)},
                         p, metadata={"format": "pt"})
    return p


def _torch_file(folder):
    torch = pytest.importorskip("torch")
    p = folder / "real.pt"
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    torch.save({"model": OrderedDict([("w", t), ("wt", t.t()), ("b", t[1]),
                                      ("n", torch.tensor(2))]),
                "epoch": 3, "betas": (0.9, 0.99)}, str(p))
    return p


LOADERS = {"nnx": (nnx.load, _nnx_file), "safetensors": (nnx.load_safetensors, _safetensors_file),
           "torch": (nnx.load_torch, _torch_file)}


@pytest.fixture(scope="module", params=sorted(LOADERS))
def target(request, tmp_path_factory):
    """(loader, the real file's bytes, a path to write the fuzzed bytes to)."""
    folder = tmp_path_factory.mktemp(f"fuzz_{request.param}")
    load, make = LOADERS[request.param]
    real = make(folder).read_bytes()
    load(folder / ("real" + {"nnx": ".npz", "safetensors": ".safetensors", "torch": ".pt"}
                   [request.param]))  # the unmodified file loads
    return load, real, folder / "fuzzed.bin"


def _only_checkpoint_errors(load, path, data):
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*bfloat16")  # a flipped dtype may say so
        try:
            load(path)
        except nnx.CheckpointError:
            pass
        # any other exception type fails the test, with hypothesis's minimal example


@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes(target, data):
    load, _, path = target
    _only_checkpoint_errors(load, path, data)


@FUZZ
@given(data=st.data())
def test_bit_flips(target, data):
    load, real, path = target
    buf = bytearray(real)
    for pos in data.draw(st.lists(st.integers(0, len(real) * 8 - 1), min_size=1, max_size=8)):
        buf[pos // 8] ^= 1 << (pos % 8)
    _only_checkpoint_errors(load, path, bytes(buf))


@FUZZ
@given(data=st.data())
def test_truncations_and_overwritten_spans(target, data):
    load, real, path = target
    buf = bytearray(real)
    if data.draw(st.booleans()):  # overwrite a span with random bytes (headers, sizes, CRCs)
        start = data.draw(st.integers(0, len(buf) - 1))
        patch = data.draw(st.binary(min_size=1, max_size=16))
        buf[start:start + len(patch)] = patch
    cut = data.draw(st.integers(0, len(buf)))
    _only_checkpoint_errors(load, path, bytes(buf[:cut]))


def test_loaders_on_each_others_files(target, tmp_path):
    """Every loader refuses the other two formats with a CheckpointError."""
    load, _, _ = target
    for name, (other_load, make) in LOADERS.items():
        p = make(tmp_path)
        if other_load is load:
            continue
        _only_checkpoint_errors(load, tmp_path / "x", p.read_bytes())
    assert os.listdir(tmp_path)
