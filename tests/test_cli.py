"""The ``nnx`` command line, run end to end in subprocesses (``python -m nnx ...``)."""
import gzip
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nnx
from nnx import cli

REPO = Path(__file__).resolve().parents[1]


def run(*args, timeout=300, cwd=None):
    env = dict(os.environ)
    extra = os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    env["PYTHONPATH"] = str(REPO) + extra
    env.pop("NNX_DEVICE", None)
    return subprocess.run([sys.executable, "-m", "nnx", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=cwd or REPO)


def one_line_error(proc):
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(err.splitlines()) == 1, err
    assert "error" in err
    return err


# ============================================================================ help, info
@pytest.mark.parametrize("args, expect", [
    ((), "train"), (("info",), "BLAS"), (("train",), "--hidden"),
    (("predict",), "--proba"), (("bench",), "usage"),
])
def test_help(args, expect):
    proc = run(*args, "--help")
    assert proc.returncode == 0, proc.stderr
    assert expect in proc.stdout


def test_info_lists_versions_and_devices():
    proc = run("info")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"nnx {nnx.__version__}" in out
    assert f"NumPy {np.__version__}" in out
    assert "BLAS" in out and "CuPy" in out and "CUDA" in out
    assert re.search(r"^  cpu\s", out, re.M)
    auto = re.search(r"^auto picks: (\S+)$", out, re.M)
    assert auto and auto.group(1) in ("cpu",) + tuple(f"cuda:{i}" for i in range(16))


# ============================================================================ train
def test_train_xor():
    proc = run("train", "xor", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "training-set accuracy: 1.0000" in proc.stdout
    assert "ms per epoch" in proc.stdout


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    """``nnx train digits`` with its defaults, saving the model."""
    path = tmp_path_factory.mktemp("cli") / "digits.npz"
    proc = run("train", "digits", "--save", path)
    return proc, path


def test_train_digits_defaults_reach_95_percent(digits_model):
    proc, path = digits_model
    assert proc.returncode == 0, proc.stderr
    acc = float(re.search(r"test accuracy: ([0-9.]+)", proc.stdout).group(1))
    assert acc >= 0.95, proc.stdout
    per_epoch = float(re.search(r"([0-9.]+) ms per epoch", proc.stdout).group(1))
    assert per_epoch < 2000  # seconds in all on any laptop
    assert "epoch" in proc.stderr and "loss=" in proc.stderr  # the progress bar
    assert f"saved the model to {path}" in proc.stdout and path.exists()


def test_train_digits_few_epochs_small_net():
    proc = run("train", "digits", "--epochs", 4, "--hidden", "64", "--batch-size", 16,
               "--seed", 3, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # --quiet: no progress bar
    assert "Dense(64, relu) -> Dense(10, softmax)" in proc.stdout
    assert float(re.search(r"test accuracy: ([0-9.]+)", proc.stdout).group(1)) >= 0.9


def test_train_breast_cancer_with_sgd():
    proc = run("train", "breast_cancer", "--optimizer", "sgd", "--lr", 0.05, "--epochs", 20,
               "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "Dense(1, sigmoid)" in proc.stdout and "momentum=0.9" in proc.stdout
    assert float(re.search(r"test accuracy: ([0-9.]+)", proc.stdout).group(1)) >= 0.9


def _write_idx(path, array, gz=False):
    codes = {np.dtype(np.uint8): 0x08}
    head = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(">" + "I" * array.ndim,
                                                                         *array.shape)
    data = head + array.tobytes()
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(data)


def test_train_mnist_from_generated_idx_files(tmp_path):
    rng = np.random.default_rng(0)

    def fake(n):  # class c lights up rows 2c..2c+3: learnable in a few epochs
        y = rng.integers(0, 10, n).astype(np.uint8)
        img = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(y):
            img[i, 2 * c:2 * c + 4, 4:24] = 250
        return img, y

    xtr, ytr = fake(300)
    xte, yte = fake(60)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", xtr, gz=True)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", ytr)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", xte)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", yte, gz=True)
    proc = run("train", "mnist", "--data-dir", tmp_path, "--epochs", 5, "--batch-size", 32,
               "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "300 training / 60 test samples, 784 features, 10 classes" in proc.stdout
    assert float(re.search(r"test accuracy: ([0-9.]+)", proc.stdout).group(1)) >= 0.9
    os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
    proc = run("train", "mnist", "--data-dir", tmp_path, "--epochs", 1, "--quiet")
    assert proc.returncode == 1
    assert "t10k-labels-idx1-ubyte" in one_line_error(proc)


# ============================================================================ predict
def test_predict_labels_and_probabilities(digits_model, tmp_path):
    _, model_path = digits_model
    x, y = nnx.datasets.digits()
    np.save(tmp_path / "x.npy", x[:40])
    proc = run("predict", model_path, tmp_path / "x.npy")
    assert proc.returncode == 0, proc.stderr
    labels = np.array([int(v) for v in proc.stdout.split()])
    assert labels.shape == (40,) and (labels == y[:40]).mean() >= 0.9

    proc = run("predict", model_path, tmp_path / "x.npy", "--proba", "--out", tmp_path / "p.npy")
    assert proc.returncode == 0, proc.stderr
    assert "wrote 40 predicted probabilities" in proc.stdout
    p = np.load(tmp_path / "p.npy")
    assert p.shape == (40, 10)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-5)
    assert (p.argmax(1) == labels).all()

    np.savetxt(tmp_path / "one.csv", x[7:8], delimiter=",")
    proc = run("predict", model_path, tmp_path / "one.csv", "--proba")
    assert proc.returncode == 0, proc.stderr
    rows = proc.stdout.strip().splitlines()
    assert rows[0].startswith("label") and len(rows) == 2 and rows[1].split()[0] == str(labels[7])


def test_predict_binary_model(tmp_path):
    path = tmp_path / "bc.npz"
    proc = run("train", "breast_cancer", "--epochs", 10, "--quiet", "--save", path)
    assert proc.returncode == 0, proc.stderr
    x, y = nnx.datasets.breast_cancer()
    np.save(tmp_path / "x.npy", x[:50])  # raw features: the saved standardization applies
    proc = run("predict", path, tmp_path / "x.npy", "--out", tmp_path / "labels.npy")
    assert proc.returncode == 0, proc.stderr
    labels = np.load(tmp_path / "labels.npy")
    assert set(np.unique(labels)) <= {0, 1} and (labels == y[:50]).mean() >= 0.85
    ck = nnx.load(path)  # the architecture is plain data beside the weights
    assert ck["config"]["layers"][-1] == {"class": "Dense", "units": 1, "input_dim": 16,
                                          "activation": "sigmoid", "use_bias": True}
    assert ck["extra"]["task"] == "binary" and ck["extra"]["mean"].shape == (30,)


# ============================================================================ errors
@pytest.mark.parametrize("args", [
    (), ("frobnicate",), ("train",), ("train", "foo"), ("train", "digits", "--epochs", "0"),
    ("train", "digits", "--hidden", "a,b"), ("train", "digits", "--optimizer", "rmsprop"),
    ("train", "digits", "--lr", "-1"), ("train", "digits", "--device", "tpu"),
    ("train", "mnist"), ("predict",), ("predict", "m.npz"),
])
def test_wrong_arguments_exit_2_with_one_line(args):
    proc = run(*args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    one_line_error(proc)


def test_bad_files_give_one_line_and_exit_1(digits_model, tmp_path):
    _, model_path = digits_model
    x = nnx.datasets.digits()[0][:3]
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "wrong.npy", x[:, :10])
    (tmp_path / "junk.npy").write_text("not numpy")
    weights_only = tmp_path / "w.npz"
    nnx.save(nnx.load(model_path)["state_dict"], weights_only)
    cases = [
        (("predict", tmp_path / "none.npz", tmp_path / "x.npy"), "not found"),
        (("predict", model_path, tmp_path / "none.npy"), "not found"),
        (("predict", model_path, tmp_path / "wrong.npy"), "64 features"),
        (("predict", model_path, tmp_path / "junk.npy"), "cannot read"),
        (("predict", weights_only, tmp_path / "x.npy"), "architecture"),
        (("predict", tmp_path / "junk.npy", tmp_path / "x.npy"), "cannot load"),
        (("train", "xor", "--epochs", "1", "--save", tmp_path / "no" / "dir" / "m.npz"),
         "cannot write"),
    ]
    for args, expect in cases:
        proc = run(*args)
        assert proc.returncode == 1, (args, proc.stdout, proc.stderr)
        assert expect in one_line_error(proc), (args, proc.stderr)


# ============================================================================ in process
def test_main_in_process(capsys, monkeypatch):
    assert cli.main(["train", "xor", "--epochs", "50", "--quiet"]) == 0
    assert "accuracy" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "nope"])
    assert e.value.code == 2
    monkeypatch.setitem(sys.modules, "nnx.benchmarks", None)  # as if the suite were not shipped
    monkeypatch.delattr(nnx, "benchmarks", raising=False)
    assert cli.main(["bench", "--quick"]) == 1
    assert "benchmark suite is not available" in capsys.readouterr().err
