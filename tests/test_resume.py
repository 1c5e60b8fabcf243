"""Exact resume: 3 epochs straight == 1 epoch, a checkpoint (model, optimizer, RNG state
through nnx.save/nnx.load), then 2 epochs in a fresh model and optimizer. Also the Keras
callbacks of issue 12."""
import csv

import numpy as np
import pytest

import nnx
from nnx import nn, optim
from nnx.data import DataLoader

X = np.random.default_rng(0).standard_normal((40, 5)).astype(np.float32)
Y = np.random.default_rng(1).integers(0, 3, 40)


def _fresh():
    model = nn.container.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 3))
    return model, optim.Adam(model.parameters(), lr=0.01)


def _epochs(model, opt, loader, n):
    lossf = nn.CrossEntropyLoss()
    for _ in range(n):
        for xb, yb in loader:
            opt.zero_grad()
            loss = lossf(model(xb), yb)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()


def test_resume_is_bit_identical(tmp_path):
    loader = DataLoader((X, Y), batch_size=8, shuffle=True)
    nnx.manual_seed(7)
    model, opt = _fresh()
    _epochs(model, opt, loader, 3)
    straight = model.state_dict()

    nnx.manual_seed(7)
    model, opt = _fresh()
    _epochs(model, opt, loader, 1)
    nnx.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
              "rng": nnx.get_rng_state()}, tmp_path / "ck.npz")
    del model, opt
    nnx.manual_seed(12345)  # whatever happened in between
    nnx.randn(100)
    ck = nnx.load(tmp_path / "ck.npz")
    model, opt = _fresh()  # draws initial weights: overwritten by the checkpoint
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    nnx.set_rng_state(ck["rng"])
    _epochs(model, opt, loader, 2)
    resumed = model.state_dict()
    assert list(resumed) == list(straight)
    for k in straight:
        np.testing.assert_array_equal(resumed[k], straight[k])


def test_rng_state_round_trip():
    s = nnx.get_rng_state("cpu")
    a = nnx.rand(5).numpy()
    nnx.set_rng_state(s, "cpu")
    np.testing.assert_array_equal(nnx.rand(5).numpy(), a)
    with pytest.raises(ValueError):
        nnx.set_rng_state({"nope": 1})


# ---------------------------------------------------------------- Keras callbacks
def _keras_model(lr=0.1):
    nnx.manual_seed(0)
    m = nnx.keras.Sequential([nnx.keras.Dense(4, input_dim=5, activation="relu"),
                              nnx.keras.Dense(1, activation="sigmoid")])
    m.compile(optimizer=optim.SGD(m.parameters(), lr=lr), loss="binary_crossentropy")
    return m


YB = (X[:, 0] > 0).astype(np.float32).reshape(-1, 1)


def test_learning_rate_scheduler_sets_group_lr():
    m = _keras_model()
    seen = []
    cb = nnx.callbacks.LearningRateScheduler(lambda e, lr: seen.append(lr) or 0.1 * 0.5 ** e)
    m.fit(X, YB, epochs=3, verbose=0, callbacks=[cb], batch_size=10)
    assert seen == [0.1, 0.1, 0.05]
    assert m.optimizer.param_groups[0]["lr"] == 0.025


def test_reduce_lr_on_plateau_follows_keras_rule():
    m = _keras_model()
    cb = nnx.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1, min_lr=0.03)
    cb.set_model(m)
    cb.on_train_begin()
    lrs = []
    for epoch, loss in enumerate([1.0, 0.9, 0.95, 0.96, 0.5, 0.6, 0.7, 0.8]):
        logs = {"loss": loss}
        cb.on_epoch_end(epoch, logs)
        lrs.append(m.optimizer.param_groups[0]["lr"])
        assert logs["learning_rate"] == lrs[-2] if epoch else 0.1
    assert lrs == [0.1, 0.1, 0.05, 0.03, 0.03, 0.03, 0.03, 0.03]
    with pytest.raises(ValueError):
        nnx.callbacks.ReduceLROnPlateau(factor=1.0)


def test_csv_logger(tmp_path):
    path = tmp_path / "log.csv"
    m = _keras_model()
    m.fit(X, YB, epochs=2, verbose=0, batch_size=10, callbacks=[nnx.callbacks.CSVLogger(path)])
    m.fit(X, YB, epochs=3, initial_epoch=2, verbose=0, batch_size=10,
          callbacks=[nnx.callbacks.CSVLogger(path, append=True)])
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    assert list(rows[0]) == ["epoch", "loss"]
    assert float(rows[2]["loss"]) == pytest.approx(m.history.history["loss"][0])
