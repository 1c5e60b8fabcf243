"""Issue 15, item 1: each layer tells the per-sample shape of its output (``output_shape``,
Keras's idea, the batch axis left out), so a Keras ``Dense`` after any layer (a Flatten, too)
infers its input size."""
import json

import numpy as np
import pytest

import nnx
from nnx import nn


def _mnist_like():
    return nn.Sequential([nn.Flatten(input_shape=(28, 28)), nn.Dense(128, activation="relu"),
                          nn.Dense(10)])


def test_flatten_then_dense_infers_784_and_trains():
    nnx.manual_seed(0)
    model = _mnist_like()
    assert model[1].built and model[1].in_features == 784 and model[2].in_features == 128
    assert model.output_shape(None) == (10,) and model.output_features(None) == 10
    model.compile(loss="sparse_categorical_crossentropy", optimizer="adam",
                  metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    hist = model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert np.isfinite(hist.history["loss"][0])
    assert model.predict(x[:3]).shape == (3, 10)
    # the same through add()
    added = nn.Sequential()
    added.add(nn.Flatten(input_shape=(28, 28)))
    added.add(nn.Dense(128, activation="relu"))
    assert added[1].in_features == 784


def test_output_shape_of_each_builtin_layer():
    assert nn.Linear(3, 7).output_shape((5, 3)) == (5, 7)
    assert nn.Linear(3, 7).output_shape(None) == (7,)
    assert nn.Dense(4).output_shape((2, 9)) == (2, 4) and nn.Dense(4).output_shape(None) == (4,)
    assert nn.Dense(4, input_shape=(5, 3)).output_shape(None) == (5, 4)
    for layer in (nn.Dropout(0.2), nn.Identity(), nn.Softmax(), nn.LogSoftmax(), nn.Sigmoid(),
                  nn.ReLU(), nn.Tanh(), nn.LeakyReLU(0.2)):
        assert layer.output_shape((3, None, 4)) == (3, None, 4), layer
        assert layer.output_shape(None) is None, layer
    assert nn.Flatten().output_shape((28, 28)) == (784,)
    assert nn.Flatten().output_shape((3, 4, 5)) == (60,)
    assert nn.Flatten(2).output_shape((3, 4, 5)) == (3, 20)
    assert nn.Flatten(1, 2).output_shape((3, 4, 5)) == (12, 5)
    assert nn.Flatten(-2, -1).output_shape((3, 4, 5)) == (3, 20)
    assert nn.Flatten().output_shape((3, None)) == (None,)
    assert nn.Flatten().output_shape(None) is None
    assert nn.Flatten(0).output_shape((3, 4)) is None  # merges the batch axis
    assert nn.Flatten(input_shape=(2, 3)).output_shape(None) == (6,)
    seq = nn.container.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.ReLU())
    assert seq.output_shape((3, 4)) == (5,) and seq.output_shape(None) == (5,)
    assert nn.Module().output_shape((3,)) is None  # a module that does not say
    # the shape agrees with what the layers compute
    x = nnx.tensor(np.zeros((2, 3, 4, 5), np.float32))
    for layer in (nn.Flatten(), nn.Flatten(2), nn.Flatten(1, 2), nn.Flatten(-2)):
        assert (2,) + layer.output_shape((3, 4, 5)) == layer(x).shape


def test_output_features_is_the_last_axis_of_output_shape():
    assert nn.Linear(2, 7).output_features(None) == 7
    assert nn.Flatten().output_features(5) == 5 and nn.Flatten().output_features(None) is None
    assert nn.ReLU().output_features(3) == 3 and nn.Module().output_features(3) is None


def test_a_user_module_without_output_shape_names_input_dim():
    class Mine(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(ValueError, match="input_dim"):
        nn.Sequential(nn.Dense(3, input_dim=2), Mine()).add(nn.Dense(1))
    with pytest.raises(ValueError, match="position 1.*input_dim"):
        nn.Sequential(Mine(), nn.Dense(1)).compile(loss="mse", optimizer="sgd")

    class Doubling(nn.Module):  # a user module that tells its shape
        def forward(self, x):
            return nnx.tensor(np.concatenate([x.numpy()] * 2, axis=-1))

        def output_shape(self, input_shape):
            return None if not input_shape else input_shape[:-1] + (2 * input_shape[-1],)

    model = nn.Sequential(nn.Dense(3, input_dim=2), Doubling(), nn.Dense(1))
    assert model[2].in_features == 6


def test_summary_of_the_flatten_model(capsys):
    model = _mnist_like()
    model.summary()
    text = capsys.readouterr().out
    assert "100,480" in text and "1,290" in text and "Total params: 101,770" in text
    assert "(None, 784)" in text and "(None, 128)" in text and "(None, 10)" in text
    conv_like = nn.Sequential(nn.Flatten(2, input_shape=(3, 26, 26)), nn.Dense(4))
    conv_like.summary()
    text = capsys.readouterr().out
    assert "(None, 3, 676)" in text and "(None, 3, 4)" in text


def test_input_shape_keywords_and_their_configs():
    nnx.manual_seed(1)
    a = nn.Dense(4, input_shape=(3,))
    nnx.manual_seed(1)
    b = nn.Dense(4, input_dim=3)
    assert a.in_features == 3 and a.get_config() == b.get_config()
    np.testing.assert_array_equal(a.weight.numpy(), b.weight.numpy())
    with pytest.raises(ValueError, match="input_shape"):
        nn.Dense(4, input_shape=(3,), input_dim=5)
    with pytest.raises(ValueError, match="input_shape"):
        nn.Dense(4, input_shape=(None,))
    with pytest.raises(ValueError, match="input_shape"):
        nn.Flatten(input_shape="28x28")
    for layer in (nn.Flatten(input_shape=(28, 28)), nn.Dense(4, input_shape=(5, 3)),
                  nn.Flatten(2)):
        cfg = layer.get_config()
        assert json.loads(json.dumps(cfg)) == cfg
        back = nn.config.layer_from_config(json.loads(json.dumps(cfg)))
        assert type(back) is type(layer) and back.get_config() == cfg
        assert back.output_shape(None) == layer.output_shape(None)
    assert nn.Flatten(input_shape=(28, 28)).get_config()["input_shape"] == [28, 28]
    assert "input_shape" not in nn.Flatten().get_config()  # configs as before when not given
    old = nn.config.layer_from_config({"class": "Flatten", "start_dim": 1, "end_dim": -1})
    assert old.input_shape is None
    with pytest.raises(nnx.CheckpointError, match="input_shape"):
        nn.config.layer_from_config({"class": "Flatten", "input_shape": [0, 3]})


def test_the_flatten_model_saves_and_loads(tmp_path):
    nnx.manual_seed(2)
    model = _mnist_like()
    path = tmp_path / "m.npz"
    model.save(path)
    back = nnx.load_model(path)
    assert back.get_config() == model.get_config() and back[1].in_features == 784
    x = np.random.default_rng(0).standard_normal((2, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(back.predict(x), model.predict(x), rtol=1e-6)
