"""Issue 14, the Keras path and the CLI: what a newcomer from Keras trips on.

A layer the optimizer does not hold (it would never train, silently), the list form and
``Input``, ``get_weights`` in Keras's layout, file names nnx does not write, and the CLI in a
pipe."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nnx
from nnx import callbacks, cli, nn
from nnx.nn import Dense, Input, Sequential
from nnx.optim import SGD, Adam

REPO = Path(__file__).resolve().parents[1]


class Opaque(nn.Module):
    """A user's layer whose output size cannot be told without running it."""

    def forward(self, x):
        return x


# ============================================================================ untrained layers
def test_optimizer_made_before_a_layer_was_added_is_refused_by_compile():
    m = Sequential()
    m.add(Dense(2, input_dim=2))
    opt = Adam(m.parameters())
    m.add(Dense(1))
    with pytest.raises(ValueError) as e:
        m.compile(optimizer=opt, loss="mse")
    msg = str(e.value)
    assert "1 Dense(1)" in msg and "never train" in msg and "model.parameters()" in msg
    assert "3 of the model's 9" in msg


def test_optimizer_on_a_part_of_the_model_is_refused_and_full_one_accepted():
    m = Sequential(Dense(64, input_dim=64, activation="relu"), Dense(10, activation="softmax"))
    with pytest.raises(ValueError, match="1 Dense"):
        m.compile(optimizer=Adam(m[0].parameters()), loss="sparse_categorical_crossentropy")
    m.compile(optimizer=Adam(m.parameters()), loss="sparse_categorical_crossentropy")
    # a layer frozen on purpose (requires_grad False) need not be in the optimizer
    for p in m[1].parameters():
        p.requires_grad_(False)
    m.compile(optimizer=SGD(m[0].parameters(), lr=0.1), loss="sparse_categorical_crossentropy")


def test_optimizer_given_parameters_of_unbuilt_layers_raises():
    m = Sequential(Dense(4, input_dim=3), Opaque(), Dense(2))
    assert not m[2].built
    for make in (lambda ps: Adam(ps), lambda ps: SGD(ps, lr=0.1)):
        with pytest.raises(ValueError) as e:
            make(m.parameters())
        assert "2 Dense(2)" in str(e.value) and "never" in str(e.value)
        assert "model.parameters()" in str(e.value)
    with pytest.raises(ValueError, match="0 Dense\\(3\\)"):
        Adam(Sequential(Dense(3)).parameters())


def test_the_4810_model_trains_every_layer_and_summary_counts_them(capsys):
    nnx.manual_seed(0)
    m = Sequential(Dense(64, input_dim=64, activation="relu"), Dense(10, activation="softmax"))
    opt = Adam(m.parameters())
    assert sum(p.size for g in opt.param_groups for p in g["params"]) == 4810
    m.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
    before = m.get_weights()
    x = np.random.default_rng(0).normal(size=(32, 64)).astype(np.float32)
    y = np.arange(32) % 10
    m.fit(x, y, epochs=1, batch_size=32, verbose=0)
    assert all(not np.array_equal(a, b) for a, b in zip(before, m.get_weights()))
    m.summary()
    out = capsys.readouterr().out
    row = [line for line in out.splitlines() if line.startswith("1 Dense")][0]
    assert row.split()[-1] == "650"
    assert "Total params: 4,810" in out


# ============================================================================ list form, Input
def test_list_form_called_before_compile_and_count_params():
    m = Sequential([Dense(4, input_dim=3, activation="relu"), Dense(2)])
    out = m(nnx.tensor(np.ones((5, 3), np.float32)))
    assert out.shape == (5, 2)
    assert m.count_params() == 3 * 4 + 4 + 4 * 2 + 2


def test_input_builds_the_first_dense_and_round_trips(tmp_path):
    for inp in (nn.Input((3,)), nnx.keras.Input((3,)), Input(3)):
        m = Sequential([inp, Dense(4), Dense(1)])
        assert m[1].in_features == 3 and m.count_params() == 21
    assert nn.Input is nnx.keras.Input
    assert m.layers == [m[1], m[2]]  # Keras's model.layers leaves the input layer out
    assert list(m.state_dict()) == ["1.weight", "1.bias", "2.weight", "2.bias"]
    assert m(nnx.tensor(np.ones((2, 3), np.float32))).shape == (2, 1)
    with pytest.raises(ValueError, match="Input"):
        m(nnx.tensor(np.ones((2, 5), np.float32)))
    assert m[0].output_shape(None) == (3,) and m[0].output_features(None) == 3
    cfg = m.get_config()
    assert cfg["layers"][0] == {"class": "Input", "shape": [3]}
    back = Sequential.from_config(cfg)
    assert back.get_config() == cfg and isinstance(back[0], Input)
    m.save(tmp_path / "m.npz")
    loaded = nnx.load_model(tmp_path / "m.npz")
    assert loaded.get_config() == cfg
    for a, b in zip(loaded.get_weights(), m.get_weights()):
        assert np.array_equal(a, b)
    m2 = Sequential()
    m2.add(Input((2,)))
    m2.add(Dense(5))
    assert m2[1].in_features == 2
    with pytest.raises(ValueError):
        Input((0,))


# ============================================================================ weights
def test_get_weights_in_keras_layout_state_dict_in_pytorch_layout():
    m = Sequential(Dense(3, input_dim=2), nn.Linear(3, 4), Dense(1))
    ws = m.get_weights()
    assert [w.shape for w in ws] == [(2, 3), (3,), (4, 3), (4,), (4, 1), (1,)]
    sd = m.state_dict()
    assert sd["0.weight"].shape == (3, 2)
    assert np.array_equal(ws[0], sd["0.weight"].T) and np.array_equal(ws[2], sd["1.weight"])
    new = [np.arange(w.size, dtype=np.float32).reshape(w.shape) for w in ws]
    m.set_weights(new)
    for a, b in zip(m.get_weights(), new):
        assert np.array_equal(a, b)
    assert np.array_equal(m.state_dict()["0.weight"], new[0].T)
    x = np.array([[1.0, 2.0]], np.float32)  # Keras's x @ kernel + bias
    h = x @ new[0] + new[1]
    h = h @ new[2].T + new[3]
    assert np.allclose(m.predict(x), h @ new[4] + new[5])
    with pytest.raises(ValueError, match="in_features, units"):
        m.set_weights([w.T if w.ndim == 2 else w for w in new])


# ============================================================================ file names
@pytest.mark.parametrize("name", ["x.h5", "x.keras", "x.pt", "x", "x.hdf5"])
def test_save_refuses_formats_nnx_does_not_write(tmp_path, name):
    m = Sequential(Dense(2, input_dim=2))
    with pytest.raises(ValueError) as e:
        m.save(tmp_path / name)
    assert ".npz" in str(e.value) and ".nnx" in str(e.value)
    with pytest.raises(ValueError, match=".npz"):
        callbacks.ModelCheckpoint(tmp_path / name)
    with pytest.raises(ValueError, match=".npz"):
        callbacks.ModelCheckpoint(tmp_path / name, save_weights_only=True)
    assert list(tmp_path.iterdir()) == []
    for ok in ("m.npz", "m.nnx", "M.NPZ"):
        m.save(tmp_path / ok)
        assert nnx.load_model(tmp_path / ok).get_config() == m.get_config()


# ============================================================================ CLI
def _env():
    env = dict(os.environ)
    extra = os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    env["PYTHONPATH"] = str(REPO) + extra
    env.pop("NNX_DEVICE", None)
    return env


@pytest.fixture(scope="module")
def xor_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("xor")
    path = folder / "m.npz"
    p = subprocess.run([sys.executable, "-m", "nnx", "train", "xor", "--epochs", "20",
                        "--device", "cpu", "--save", str(path)], capture_output=True, text=True,
                       timeout=300, env=_env(), cwd=folder)
    assert p.returncode == 0, p.stderr
    return path


@pytest.mark.parametrize("proba", [False, True])
def test_predict_into_a_closed_pipe_exits_quietly(xor_model, tmp_path, proba):
    rows = tmp_path / "rows.npy"
    np.save(rows, np.tile(np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float64), (50000, 1)))
    cmd = [sys.executable, "-m", "nnx", "predict", str(xor_model), str(rows), "--device", "cpu"]
    with subprocess.Popen(cmd + (["--proba"] if proba else []), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=_env(), cwd=tmp_path) as p:
        p.stdout.readline()
        p.stdout.close()  # as `| head -1` does
        err = p.stderr.read().decode()
        rc = p.wait(timeout=300)
    assert "Broken pipe" not in err and "Traceback" not in err and err.strip() == "", err
    assert rc in (0, 141), rc


def test_predict_proba_columns_line_up(xor_model, tmp_path, capsys):
    rows = tmp_path / "rows.npy"
    np.save(rows, np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float64))
    assert cli.main(["predict", str(xor_model), str(rows), "--proba", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5
    head = lines[0]
    for line in lines[1:]:
        assert len(line) == len(head)
        # every column's last character sits under its header's last character
        ends_h = [i for i in range(len(head)) if head[i] != " " and (i + 1 == len(head)
                                                                     or head[i + 1] == " ")]
        ends_r = [i for i in range(len(line)) if line[i] != " " and (i + 1 == len(line)
                                                                     or line[i + 1] == " ")]
        assert ends_h[1:] == ends_r[1:], (head, line)


def test_bench_writes_into_the_current_folder_or_out(monkeypatch, tmp_path):
    from nnx import benchmarks

    seen = []
    monkeypatch.setattr(benchmarks, "main", lambda argv: seen.append(list(argv)) or 0)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "--quick"]) == 0
    assert seen[-1][:2] == ["--out", str(tmp_path)] and "--quick" in seen[-1]
    assert cli.main(["bench", "--out", "elsewhere"]) == 0
    assert seen[-1] == ["--out", "elsewhere"]
    assert cli.main(["bench", "--out=x"]) == 0
    assert seen[-1] == ["--out=x"]


def test_train_refuses_a_save_name_nnx_does_not_write(tmp_path):
    assert cli.main(["train", "xor", "--epochs", "1", "--save", str(tmp_path / "m.h5")]) == 2
    assert list(tmp_path.iterdir()) == []
