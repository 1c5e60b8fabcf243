"""Keras's image layers (issue 10): Conv2D, MaxPooling2D, Flatten, Dropout, BatchNormalization.

Keras batches are channels-last (N, H, W, C); each layer views its input as nnx's NCHW and
permutes back, so ``Flatten`` flattens in Keras's (h, w, c) order. The central check: the Keras
path and a hand-built NCHW nnx model (nn.Conv2d, nn.MaxPool2d, nn.Flatten, nn.Linear) with the
same weights give the same outputs and the same gradients.
"""
import numpy as np
import pytest

import nnx
from nnx import nn
from nnx.keras import (BatchNormalization, Conv2D, Dense, Dropout, Flatten, Input, MaxPooling2D,
                       Sequential, load_model)
from nnx.keras.layers import conv_weight_from_kernel, linear_weight_from_flat_kernel
from nnx.nn.container import Sequential as Plain


def _keras_model(seed=0):
    nnx.manual_seed(seed)
    return Sequential([
        Conv2D(4, 3, activation="relu", input_shape=(10, 10, 2)),
        Conv2D(6, (3, 3), padding="same", activation="relu"),
        MaxPooling2D((2, 2)),
        Flatten(),
        Dense(5),
    ])


def _hand_built(km):
    """The NCHW nnx model computing what ``km`` computes, from its weights."""
    w = km.get_weights()
    hand = Plain(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
                 nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 4 * 4, 5))
    hand.load_state_dict({
        "0.weight": conv_weight_from_kernel(w[0]), "0.bias": w[1],
        "2.weight": conv_weight_from_kernel(w[2]), "2.bias": w[3],
        "6.weight": linear_weight_from_flat_kernel(w[4], (4, 4, 6)), "6.bias": w[5]})
    return hand


def _grads_keras_layout(hand):
    g = {k: p.grad.numpy() for k, p in hand.named_parameters()}
    hwc = (4, 4, 6)
    # hand-built layouts -> Keras's (the inverse of the conversions above)
    return [g["0.weight"].transpose(2, 3, 1, 0), g["0.bias"], g["2.weight"].transpose(2, 3, 1, 0),
            g["2.bias"],
            g["6.weight"].reshape(5, 6, 4, 4).transpose(2, 3, 1, 0).reshape(-1, 5), g["6.bias"]]


def test_keras_path_matches_hand_built_nchw_model_outputs_and_gradients():
    km = _keras_model()
    hand = _hand_built(km)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 10, 10, 2)).astype(np.float32)
    y = np.array([0, 3, 4])

    xk = nnx.tensor(x, requires_grad=True)
    xh = nnx.tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), requires_grad=True)
    out_k, out_h = km(xk), hand(xh)
    assert out_k.shape == (3, 5)
    np.testing.assert_allclose(out_k.numpy(), out_h.numpy(), rtol=1e-5, atol=1e-6)
    nnx.functional.cross_entropy(out_k, nnx.tensor(y)).backward()
    nnx.functional.cross_entropy(out_h, nnx.tensor(y)).backward()
    kernel_grads = [p.grad.numpy() for p in km.parameters()]
    # parameters() is PyTorch's layout; turn the Keras model's gradients into Keras's layout
    keras_layout = [kernel_grads[0].transpose(2, 3, 1, 0), kernel_grads[1],
                    kernel_grads[2].transpose(2, 3, 1, 0), kernel_grads[3],
                    kernel_grads[4].T, kernel_grads[5]]
    for got, want in zip(keras_layout, _grads_keras_layout(hand)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(xk.grad.numpy(), xh.grad.numpy().transpose(0, 2, 3, 1),
                               rtol=1e-5, atol=1e-6)
    # the Keras model's predict is its forward
    np.testing.assert_allclose(km.predict(x), out_h.numpy(), rtol=1e-5, atol=1e-6)


def test_keras_conv_matches_torch_conv2d_keras_layout():
    """A Conv2D's output is torch's conv2d of the NCHW input with the Keras kernel transposed,
    including Keras's asymmetric 'same' padding at stride 2 (the extra row/column at the end)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 8, 7, 3)).astype(np.float32)
    for kw in [dict(), dict(padding="same"), dict(strides=2, padding="same"),
               dict(strides=(2, 1)), dict(dilation_rate=2), dict(groups=3, padding="same")]:
        layer = Conv2D(6, 3, input_shape=(8, 7, 3), **kw)
        kernel, bias = layer.keras_weights()[0][2](), layer.keras_weights()[1][2]()
        assert kernel.shape == (3, 3, 3 // layer.groups, 6)
        xt = torch.from_numpy(x).permute(0, 3, 1, 2)
        if kw.get("padding") == "same":
            sh, sw = layer.strides
            pads = []
            for n, s in ((7, sw), (8, sh)):  # F.pad order: last axis (W) first
                out = -(-n // s)
                total = max((out - 1) * s + (3 - 1) * layer.dilation_rate[0] + 1 - n, 0)
                pads += [total // 2, total - total // 2]
            xt = torch.nn.functional.pad(xt, pads)
        want = torch.nn.functional.conv2d(
            xt, torch.from_numpy(conv_weight_from_kernel(kernel)), torch.from_numpy(bias),
            stride=layer.strides, dilation=layer.dilation_rate, groups=layer.groups)
        got = layer(nnx.tensor(x))
        assert got.shape[1:] == layer.output_shape((8, 7, 3)), kw
        np.testing.assert_allclose(got.numpy(), want.permute(0, 2, 3, 1).numpy(), rtol=1e-5,
                                   atol=1e-5, err_msg=str(kw))


def test_channels_first_layers_take_nchw_as_is():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 9, 9, 3)).astype(np.float32)
    last = Conv2D(4, 3, input_shape=(9, 9, 3))
    first = Conv2D(4, 3, data_format="channels_first", input_shape=(3, 9, 9))
    first.weight.data[...] = last.weight.data
    first.bias.data[...] = last.bias.data
    xf = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    np.testing.assert_allclose(first(nnx.tensor(xf)).numpy(),
                               last(nnx.tensor(x)).numpy().transpose(0, 3, 1, 2), rtol=1e-5,
                               atol=1e-6)
    assert first.output_shape((3, 9, 9)) == (4, 7, 7)
    pool = MaxPooling2D(data_format="channels_first")
    assert pool(nnx.tensor(xf)).shape == (2, 3, 4, 4)


def test_max_pooling_same_and_strides():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 7, 5, 3)).astype(np.float32)
    y = MaxPooling2D(padding="same")(nnx.tensor(x)).numpy()
    assert y.shape == (2, 4, 3, 3) == (2,) + MaxPooling2D(padding="same").output_shape((7, 5, 3))
    pad = np.full((2, 8, 6, 3), -np.inf, np.float32)
    pad[:, :7, :5] = x
    want = pad.reshape(2, 4, 2, 3, 2, 3).max(axis=(2, 4))
    np.testing.assert_array_equal(y, want)
    p = MaxPooling2D(pool_size=3, strides=2)
    assert p(nnx.tensor(x)).shape == (2, 3, 2, 3) and p.output_shape((7, 5, 3)) == (3, 2, 3)


def test_batch_normalization_keras_defaults_against_torch():
    """momentum 0.99 is Keras's (the old average's weight): torch's momentum 0.01; eps 1e-3."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((4, 5, 6, 3)) * 2 + 1).astype(np.float32)
    bn = BatchNormalization(input_shape=(5, 6, 3))
    assert (bn.keras_momentum, bn.epsilon, bn.momentum, bn.eps) == (0.99, 1e-3, 0.01, 1e-3)
    ref = torch.nn.BatchNorm2d(3, eps=1e-3, momentum=0.01)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_(True)
    xn = nnx.tensor(x, requires_grad=True)
    yn, yt = bn(xn), ref(xt)
    np.testing.assert_allclose(yn.numpy(), yt.detach().permute(0, 2, 3, 1).numpy(), rtol=1e-5,
                               atol=1e-5)
    g = rng.standard_normal(x.shape).astype(np.float32)
    (yn * nnx.tensor(g)).sum().backward()
    (yt * torch.from_numpy(g).permute(0, 3, 1, 2)).sum().backward()
    np.testing.assert_allclose(xn.grad.numpy(), xt.grad.permute(0, 2, 3, 1).numpy(), rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(bn.weight.grad.numpy(), ref.weight.grad.numpy(), rtol=1e-4)
    np.testing.assert_allclose(bn.running_mean.numpy(), ref.running_mean.numpy(), rtol=1e-5)
    np.testing.assert_allclose(bn.running_var.numpy(), ref.running_var.numpy(), rtol=1e-5)
    mean = x.reshape(-1, 3).mean(axis=0)
    np.testing.assert_allclose(bn.running_mean.numpy(), 0.01 * mean, rtol=1e-5)
    bn.eval()
    ref.eval()
    np.testing.assert_allclose(bn(nnx.tensor(x)).numpy(),
                               ref(torch.from_numpy(x).permute(0, 3, 1, 2)).detach()
                               .permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-5)
    names = [w[0] for w in bn.keras_weights()]
    assert names == ["weight", "bias", "running_mean", "running_var"]  # gamma beta mean var
    flat = BatchNormalization()
    m = Sequential([Dense(3, input_dim=4), flat])
    assert flat.num_features == 3 and m.predict(np.ones((2, 4), np.float32)).shape == (2, 3)


def _bars(n=96, seed=0):
    """A tiny image set: 8x8 one-channel images with a vertical (class 0) or horizontal
    (class 1) bar at a random place, plus noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.1, (n, 8, 8, 1)).astype(np.float32)
    y = np.arange(n) % 2
    for i in range(n):
        j = rng.integers(1, 7)
        if y[i]:
            x[i, j, 1:7, 0] += 1
        else:
            x[i, 1:7, j, 0] += 1
    return x, y


def _small_cnn(bn=True):
    layers = [Input((8, 8, 1)), Conv2D(8, 3, activation="relu")]
    if bn:  # momentum 0.9: Keras's 0.99 needs hundreds of steps before the moving statistics
        # that evaluate() uses catch up with the batch statistics fit() trains on
        layers.append(BatchNormalization(momentum=0.9))
    layers += [MaxPooling2D(), Dropout(0.1), Flatten(), Dense(2, activation="softmax")]
    return Sequential(layers)


def test_fit_on_tiny_image_set_decreases_loss():
    nnx.manual_seed(0)
    x, y = _bars()
    m = _small_cnn()
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    before = m.evaluate(x, y)[0]
    h = m.fit(x, y, epochs=15, batch_size=16, verbose=0)
    loss, acc = m.evaluate(x, y)
    assert h.history["loss"][-1] < h.history["loss"][0] and loss < 0.5 * before
    assert acc >= 0.9
    assert m.predict(x[:5]).shape == (5, 2)
    lines = []
    m.summary(print_fn=lines.append)
    assert "(None, 6, 6, 8)" in lines[0] and "(None, 3, 3, 8)" in lines[0]
    assert "Conv2D (relu)" in lines[0] and "(None, 72)" in lines[0]


def test_save_load_round_trip(tmp_path):
    nnx.manual_seed(1)
    x, y = _bars(32, seed=1)
    m = _small_cnn()
    m.add(Dense(2))
    m.compile(optimizer="sgd", loss="mse")
    m.fit(x, np.eye(2, dtype=np.float32)[y], epochs=2, batch_size=8, verbose=0)
    path = tmp_path / "cnn.npz"
    m.save(path)
    loaded = load_model(path)
    assert loaded.get_config() == m.get_config()
    assert [type(a).__name__ for a in loaded] == [type(a).__name__ for a in m]
    for a, b in zip(loaded.get_weights(), m.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(loaded.predict(x), m.predict(x), rtol=1e-6, atol=1e-7)
    conv = loaded[1]
    assert conv.get_config()["kernel_size"] == [3, 3] and conv.in_channels == 1
    assert float(loaded[2].running_var.numpy().max()) != 1.0  # moving statistics were saved
    # a layer built from its config alone (no model before it)
    for layer in (Conv2D(4, (3, 5), strides=2, padding="same", activation="tanh",
                         input_shape=(9, 9, 2)),
                  MaxPooling2D(3, strides=1, padding="same"), BatchNormalization(momentum=0.9)):
        cfg = layer.get_config()
        again = type(layer).from_config(cfg)
        assert again.get_config() == cfg


def test_keras_weight_layout_and_set_weights():
    m = Sequential([Conv2D(3, (2, 3), input_shape=(6, 6, 2)), Flatten(), Dense(4)])
    ws = m.get_weights()
    assert [w.shape for w in ws] == [(2, 3, 2, 3), (3,), (5 * 4 * 3, 4), (4,)]
    np.testing.assert_array_equal(ws[0], m[0].weight.numpy().transpose(2, 3, 1, 0))
    new = [np.random.default_rng(5).standard_normal(w.shape).astype(np.float32) for w in ws]
    m.set_weights(new)
    for a, b in zip(m.get_weights(), new):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(m.state_dict()["0.weight"], conv_weight_from_kernel(new[0]))
    with pytest.raises(nnx.ShapeError, match="kh, kw, in, filters"):
        m.set_weights([new[0].transpose(3, 2, 0, 1)] + new[1:])
    with pytest.raises(ValueError, match="3 arrays"):
        m.set_weights(new[:3])
    np.testing.assert_array_equal(m.get_weights()[0], new[0])  # nothing changed


def test_shape_errors_name_the_layer():
    conv = Conv2D(4, 3, input_shape=(28, 28, 1))
    with pytest.raises(nnx.ShapeError, match=r"Conv2D\(1 -> 4, 3x3\) got input of shape "
                                             r"\(8, 28, 28\) \(expected \(N, H, W, 1\)"):
        conv(nnx.zeros(8, 28, 28))
    with pytest.raises(nnx.ShapeError, match=r"\(8, 1, 28, 28\).*channels-first"):
        conv(nnx.zeros(8, 1, 28, 28))
    with pytest.raises(nnx.ShapeError, match=r"MaxPooling2D\(2x2\) got input of shape \(4, 4\)"):
        MaxPooling2D()(nnx.zeros(4, 4))
    bn = BatchNormalization(input_shape=(5, 5, 3))
    with pytest.raises(nnx.ShapeError, match=r"BatchNormalization\(3\) got input of shape"):
        bn(nnx.zeros(2, 5, 5, 4))
    m = Sequential([Conv2D(2, 3, input_shape=(6, 6, 3)), Flatten(), Dense(2)])
    with pytest.raises(nnx.ShapeError, match=r"Conv2D\(3 -> 2, 3x3\)"):
        m.predict(np.zeros((2, 3, 6, 6), np.float32))
    with pytest.raises(nnx.ShapeError, match="Conv2D"):  # kernel larger than the image
        Conv2D(2, 5, input_shape=(3, 3, 1))(nnx.zeros(1, 3, 3, 1))


def test_bad_arguments_and_unbuildable_layers():
    for kw in [dict(padding="full"), dict(strides=0), dict(kernel_size=(3,)),
               dict(groups=3), dict(data_format="nhwc"), dict(activation="nope")]:
        args = dict(filters=4, kernel_size=3)
        args.update(kw)
        with pytest.raises(ValueError):
            Conv2D(**args)
    with pytest.raises(ValueError):
        Conv2D(0, 3)
    with pytest.raises(ValueError, match="momentum"):
        BatchNormalization(momentum=1.5)
    with pytest.raises(ValueError, match="input_shape"):
        Conv2D(4, 3, input_shape=(28, 28))
    m = Sequential()
    with pytest.raises(ValueError, match=r"input_shape=\(H, W, C\)"):
        m.add(Conv2D(4, 3))
    with pytest.raises(nnx.ShapeError, match=r"takes images.*outputs \(4,\)"):
        Sequential([Dense(4, input_dim=3)]).add(Conv2D(4, 3))
    lazy = Sequential([Conv2D(4, 3), Flatten(), Dense(2)])  # built later: compile refuses
    with pytest.raises(ValueError, match="input"):
        lazy.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="no input channels"):
        Conv2D(4, 3)(nnx.zeros(1, 5, 5, 1))
