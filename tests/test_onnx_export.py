"""``nnx.onnx.export``: each model is exported, checked by ``onnx.checker`` (full check) and run
by onnxruntime's CPU provider, whose outputs must match nnx's (evaluation mode) to 1e-5 at two
batch sizes."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import nnx
import nnx.functional as F
from nnx import autograd, nn
from nnx.backends import activations as act_table
from nnx.nn.activation import module_class
from nnx.nn.container import Sequential as TorchSequential

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _run_onnx(path, *xs):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, dict(zip(names, xs)))


def _nnx_out(model, *xs):
    was = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with nnx.no_grad():
            out = model(*(nnx.tensor(x, dtype=x.dtype) for x in xs))
    finally:
        for m, t in was:
            object.__setattr__(m, "training", t)
    outs = out if isinstance(out, tuple) else (out,)
    return [o.numpy() for o in outs]


def roundtrip(model, sample_shape, tmp_path, batches=(1, 5), dtype=np.float32, tol=1e-5,
              name="model.onnx", make=None, **kw):
    """Export ``model`` traced on a batch of 3, then compare onnxruntime with nnx at
    ``batches``; returns the loaded ONNX model."""
    rng = np.random.default_rng(0)
    make = make or (lambda n: rng.standard_normal((n,) + tuple(sample_shape)).astype(dtype))
    path = tmp_path / name
    training = [m.training for m in model.modules()]
    nnx.onnx.export(model, make(3), path, **kw)
    assert [m.training for m in model.modules()] == training  # modes restored
    assert autograd._tracer is None
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    for n in batches:
        x = make(n)
        want = _nnx_out(model, x)
        got = _run_onnx(path, x)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.shape == w.shape and g.dtype == w.dtype
            np.testing.assert_allclose(g, w, rtol=tol, atol=tol)
    return proto


def _dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


ENTRIES = [e.name for e in act_table.entries()]


# ---------------------------------------------------------------------- MLPs
@pytest.mark.parametrize("act", ENTRIES)
def test_sequential_of_each_activation(act, tmp_path):
    nnx.manual_seed(0)
    cls = module_class(act)
    model = TorchSequential(nn.Linear(4, 16), cls(), nn.Linear(16, 8), cls(), nn.Linear(8, 3))
    proto = roundtrip(model, (4,), tmp_path)
    assert "Gemm" in [n.op_type for n in proto.graph.node]  # the fused chain, per layer


@pytest.mark.parametrize("act", ENTRIES)
@pytest.mark.parametrize("opset", [17, 20])
def test_activation_alone_and_scaled_inputs(act, opset, tmp_path):
    """The activation as its own op (no Linear before it), on inputs up to +-30."""
    model = TorchSequential(module_class(act)())
    rng = np.random.default_rng(1)
    roundtrip(model, (7,), tmp_path, opset=opset,
              make=lambda n: (rng.standard_normal((n, 7)) * 10).astype(np.float32))


@pytest.mark.parametrize("slope", [0.2, -0.1])
def test_leaky_relu_slope(slope, tmp_path):
    model = TorchSequential(nn.Linear(4, 8), nn.LeakyReLU(slope), nn.Linear(8, 2))
    proto = roundtrip(model, (4,), tmp_path)
    alphas = [a.f for n in proto.graph.node if n.op_type == "LeakyRelu" for a in n.attribute]
    assert alphas == [pytest.approx(slope)]


def _param_activations():
    out = []
    for name, kw in (("ELU", dict(alpha=0.5)), ("ELU", dict(alpha=-0.3)),
                     ("Softplus", dict(beta=2.0, threshold=5.0)),
                     ("Softplus", dict(beta=0.5)), ("GELU", dict(approximate="tanh"))):
        cls = getattr(nn, name, None)
        out.append(pytest.param(cls, kw, id=f"{name}{kw}", marks=pytest.mark.skipif(
            cls is None, reason=f"nnx.nn has no {name} yet")))
    return out


@pytest.mark.parametrize("cls, kw", _param_activations())
@pytest.mark.parametrize("opset", [17, 20])
def test_activation_parameters(cls, kw, opset, tmp_path):
    nnx.manual_seed(17)
    model = TorchSequential(nn.Linear(4, 8), cls(**kw), nn.Linear(8, 3), cls(**kw))
    rng = np.random.default_rng(18)
    proto = roundtrip(model, (4,), tmp_path, opset=opset,
                      make=lambda n: (rng.standard_normal((n, 4)) * 8).astype(np.float32))
    ops = [n.op_type for n in proto.graph.node]
    if cls.__name__ == "GELU":
        assert ("Gelu" in ops) == (opset >= 20)


@pytest.mark.parametrize("act", sorted(set(nnx.keras.ACTIVATIONS)))
def test_keras_dense_models(act, tmp_path):
    nnx.manual_seed(1)
    model = nn.Sequential([nn.Dense(8, input_dim=4, activation=act), nn.Dense(6, activation=act),
                           nn.Dense(3, activation="softmax")])
    roundtrip(model, (4,), tmp_path)


def test_keras_model_with_input_and_module_activation(tmp_path):
    model = nn.Sequential()
    model.add(nn.Input((5,)))
    model.add(nn.Dense(8, activation=nn.LeakyReLU(0.3)))
    model.add(nn.Dropout(0.5))
    model.add(nn.Dense(1, activation="sigmoid"))
    model.compile(loss="binary_crossentropy", optimizer="sgd")  # the fused head is training's
    roundtrip(model, (5,), tmp_path)
    assert nnx.onnx.input_shape_of(model) == (5,)


class Net(nn.Module):
    """A PyTorch-style module with its own forward."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(12, 16)
        self.fc2 = nn.Linear(16, 16)
        self.head = nn.Linear(16, 4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        x = nnx.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.drop(x)
        x = F.sigmoid(self.fc2(x)) * 2.0 + 1.0
        return F.log_softmax(self.head(x), dim=1)


def test_custom_forward_module(tmp_path):
    nnx.manual_seed(2)
    model = Net()
    assert model.training
    roundtrip(model, (3, 4), tmp_path)
    assert model.training and model.drop.training  # restored after the eval-mode trace


class Arith(nn.Module):
    """Every elementwise, reduction and shape op the exporter converts."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        h = self.fc(x)
        a = (h - 0.5) / 3.0 + nnx.exp(-h.abs()) * h
        b = nnx.log(h.abs() + 1.0) + nnx.sqrt(h * h + 1.0) - 2.0 / (h.abs() + 1.0)
        c = nnx.maximum(a, b) + nnx.minimum(a, b) ** 2 - (h ** 3) * 0.1 + 2.0 ** (-h.abs())
        c = c.clip(-3.0, 3.0) + h.clamp(min=0.0) - (1.0 - h)
        m = c.mean(dim=1, keepdim=True) + c.sum(axis=1, keepdims=True) * 0.1 \
            + c.amax(dim=1, keepdim=True) - c.amin(dim=1, keepdim=True)
        v = c.var(dim=1, keepdim=True) + c.norm(dim=1, keepdim=True) + c.std(dim=1, keepdim=True)
        r = (c - m + v) @ self.fc.weight.T
        t = r.reshape(-1, 2, 3).permute(0, 2, 1).transpose(1, 2).reshape(-1, 6)
        s = t[:, 1:5] + t[:, ::-2][:, :2].repeat(1, 2) - t[:, 0:1] + t[:, -1].unsqueeze(1)
        return F.softmax(s, axis=-1) + t[..., None, 2:6].squeeze(1) * F.softplus(s).neg()


def test_elementwise_reduction_and_shape_ops(tmp_path):
    nnx.manual_seed(3)
    roundtrip(Arith(), (6,), tmp_path)


class ShapeOps(nn.Module):
    """cat, stack, pad (each mode), expand, repeat."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.register_buffer("mask", nnx.tensor(np.array([True, False] * 3)))

    def forward(self, x):
        h = self.fc(x)  # (N, 6)
        c = nnx.cat([h, h * 2.0, x], dim=1)  # (N, 16)
        s = nnx.stack([h, -h], dim=1).reshape(-1, 12)
        img = c.reshape(-1, 1, 4, 4)
        p = F.pad(img, (1, 2, 0, 1)) + F.pad(img, (1, 2, 0, 1), mode="replicate") \
            + F.pad(img, (1, 2, 0, 1), mode="reflect") + F.pad(img, (1, 2, 0, 1), mode="circular")
        e = h[:, :1].unsqueeze(2).expand(-1, 3, 2).reshape(-1, 6) + nnx.where(self.mask, h, -h)
        return nnx.cat([p.flatten(1), s, e, h.unsqueeze(1).repeat(1, 2, 1).flatten(1)], dim=1)


def test_cat_stack_pad_expand_repeat_where(tmp_path):
    nnx.manual_seed(6)
    roundtrip(ShapeOps(), (4,), tmp_path)


def test_where_on_a_comparison_is_refused(tmp_path):
    class Relu(nn.Module):
        def forward(self, x):
            return nnx.where(x > 0, x, 0.0)

    with pytest.raises(nnx.ExportError, match="op 'Where' .*comparison"):
        nnx.onnx.export(Relu(), np.ones((2, 3), np.float32), tmp_path / "m.onnx")


def test_linear_on_3d_input(tmp_path):
    nnx.manual_seed(4)
    model = TorchSequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 2))
    proto = roundtrip(model, (5, 4), tmp_path)
    ops = [n.op_type for n in proto.graph.node]
    assert "MatMul" in ops and "Gemm" not in ops
    assert _dims(proto.graph.output[0]) == ["batch", 5, 2]


@pytest.mark.parametrize("head", ["softmax", "log_softmax"])
def test_softmax_heads(head, tmp_path):
    last = nn.Softmax(dim=1) if head == "softmax" else nn.LogSoftmax(dim=1)
    model = TorchSequential(nn.Linear(4, 10), nn.Tanh(), nn.Linear(10, 5), last)
    proto = roundtrip(model, (4,), tmp_path)
    ops = [n.op_type for n in proto.graph.node]
    assert ("Softmax" if head == "softmax" else "LogSoftmax") in ops


def test_dropout_is_identity_in_eval(tmp_path):
    model = TorchSequential(nn.Linear(4, 32), nn.ReLU(), nn.Dropout(0.9), nn.Linear(32, 2))
    assert model.training
    proto = roundtrip(model, (4,), tmp_path)
    assert model.training and model[2].training
    assert "Dropout" not in [n.op_type for n in proto.graph.node]


def test_float64_model(tmp_path):
    model = TorchSequential(nn.Linear(3, 5), nn.Sigmoid(), nn.Linear(5, 2)).double()
    proto = roundtrip(model, (3,), tmp_path, dtype=np.float64, tol=1e-12)
    assert all(t.data_type == onnx.TensorProto.DOUBLE for t in proto.graph.initializer)


# ---------------------------------------------------------------------- batch axis, names
def test_dynamic_batch_names_the_batch_axis(tmp_path):
    model = TorchSequential(nn.Flatten(), nn.Linear(6, 3))
    proto = roundtrip(model, (2, 3), tmp_path, batches=(1, 4, 9))
    assert _dims(proto.graph.input[0]) == ["batch", 2, 3]
    assert _dims(proto.graph.output[0]) == ["batch", 3]
    inits = {t.name for t in proto.graph.initializer}
    assert {"1.weight", "1.bias"} <= inits  # parameters under their state_dict keys


def test_fixed_batch(tmp_path):
    model = TorchSequential(nn.Flatten(), nn.Linear(6, 3))
    proto = roundtrip(model, (2, 3), tmp_path, batches=(3,), dynamic_batch=False)
    assert _dims(proto.graph.input[0]) == [3, 2, 3]
    assert _dims(proto.graph.output[0]) == [3, 3]
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        _run_onnx(tmp_path / "model.onnx", np.zeros((4, 2, 3), np.float32))


def test_input_and_output_names_and_opset(tmp_path):
    model = TorchSequential(nn.Linear(3, 2))
    path = tmp_path / "m.onnx"
    nnx.onnx.export(model, np.zeros((2, 3), np.float32), path, opset=18,
                    input_names=["features"], output_names=["scores"])
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["features"]
    assert [o.name for o in proto.graph.output] == ["scores"]
    assert proto.opset_import[0].version == 18
    with pytest.raises(ValueError, match="output_names"):
        nnx.onnx.export(model, np.zeros((2, 3), np.float32), path, output_names=["a", "b"])
    with pytest.raises(ValueError, match="opset"):
        nnx.onnx.export(model, np.zeros((2, 3), np.float32), path, opset=9)


class TwoInTwoOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(2, 4)

    def forward(self, x, y):
        h = self.a(x) + self.b(y)
        return h, F.relu(h).sum(dim=1)


def test_several_inputs_and_outputs(tmp_path):
    model = TwoInTwoOut()
    path = tmp_path / "two.onnx"
    rng = np.random.default_rng(5)
    nnx.onnx.export(model, (rng.standard_normal((2, 3)), rng.standard_normal((2, 2))), path)
    for n in (1, 6):
        x = rng.standard_normal((n, 3)).astype(np.float32)
        y = rng.standard_normal((n, 2)).astype(np.float32)
        for g, w in zip(_run_onnx(path, x, y), _nnx_out(model, x, y)):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------- refusals
class TopHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 6)
        self.head = Top2()

    def forward(self, x):
        return self.head(self.body(x))


class Top2(nn.Module):
    def forward(self, x):
        return x.topk(2).values


def test_unsupported_op_names_op_and_module_and_writes_nothing(tmp_path):
    path = tmp_path / "m.onnx"
    with pytest.raises(nnx.ExportError, match=r"op 'TakeAlong' \(in model\.head\)") as e:
        nnx.onnx.export(TopHead(), np.zeros((2, 4), np.float32), path)
    assert isinstance(e.value, NotImplementedError) and isinstance(e.value, nnx.NNXError)
    assert os.listdir(tmp_path) == []  # neither the file nor a temporary
    assert autograd._tracer is None


def test_failed_export_keeps_an_existing_file(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")
    with pytest.raises(nnx.ExportError):
        nnx.onnx.export(TopHead(), np.zeros((2, 4), np.float32), path)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["m.onnx"]


class Doubler(nnx.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2.0

    @staticmethod
    def backward(ctx, g):
        return g * 2.0


class UsesCustomFunction(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        return Doubler.apply(self.fc(x))


class DeadTopK(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = self.fc(x)
        y.topk(2)  # computed, then dropped: not part of the graph
        return y


def test_ops_whose_results_are_dropped_are_not_exported(tmp_path):
    proto = roundtrip(DeadTopK(), (4,), tmp_path)
    assert [n.op_type for n in proto.graph.node] == ["Gemm", "Identity"]


def test_names_may_not_clash(tmp_path):
    model = TorchSequential(nn.Linear(3, 2))
    x = np.zeros((2, 3), np.float32)
    for kw in (dict(input_names=["0.weight"]), dict(input_names=["a"], output_names=["a"]),
               dict(output_names=["nnx::Gemm_1"])):
        with pytest.raises(ValueError, match="already the name"):
            nnx.onnx.export(model, x, tmp_path / "m.onnx", **kw)
    assert os.listdir(tmp_path) == []


def test_custom_autograd_function_is_refused(tmp_path):
    with pytest.raises(nnx.ExportError, match="Doubler.*model.*custom autograd Function"):
        nnx.onnx.export(UsesCustomFunction(), np.zeros((2, 3), np.float32), tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == []


class Leaky(nn.Module):
    """Computes a tensor from the input's values outside nnx's ops."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        return self.fc(x) + nnx.tensor(x.numpy() * 2.0)


@pytest.mark.parametrize("dynamic", [True, False])
def test_value_computed_outside_the_ops_is_refused(dynamic, tmp_path):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    with pytest.raises(nnx.ExportError, match="outside nnx's ops"):
        nnx.onnx.export(Leaky(), x, tmp_path / "m.onnx", dynamic_batch=dynamic)


class Branchy(nn.Module):
    def forward(self, x):
        return x.exp() if float(x.sum().item()) > 0 else -x


def test_value_dependent_branch_is_refused(tmp_path):
    x = np.array([[5.0, 1.0], [-4.0, 1.0]], np.float32)  # sum 3, then 0 with a row more
    with pytest.raises(nnx.ExportError, match="different ops"):
        nnx.onnx.export(Branchy(), x, tmp_path / "m.onnx")


class BatchStats(nn.Module):
    """Batch statistics in any mode, through the functional form."""

    def __init__(self):
        super().__init__()
        self.register_buffer("rm", nnx.zeros(3))
        self.register_buffer("rv", nnx.ones(3))

    def forward(self, x):
        from nnx.normalization import batch_norm

        return batch_norm(x, self.rm, self.rv, training=True)


def test_forward_that_updates_buffers_leaves_them_unchanged(tmp_path):
    model = BatchStats()
    path = tmp_path / "m.onnx"
    x = np.random.default_rng(16).standard_normal((4, 3, 2)).astype(np.float32) + 3
    nnx.onnx.export(model, x, path)
    np.testing.assert_array_equal(model.rm.numpy(), 0)
    np.testing.assert_array_equal(model.rv.numpy(), 1)
    np.testing.assert_allclose(_run_onnx(path, x)[0], _nnx_out(model, x)[0], rtol=1e-5,
                               atol=1e-5)


def test_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="Module"):
        nnx.onnx.export(lambda x: x, np.zeros((2, 3)), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="dynamic_batch"):
        nnx.onnx.export(TorchSequential(nn.ReLU()), np.float32(1.0), tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == []


def test_missing_onnx_package_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ImportError
    with pytest.raises(ImportError, match=r"pip install nnx\[onnx\]"):
        nnx.onnx.export(TorchSequential(nn.Linear(2, 2)), np.zeros((2, 2)), tmp_path / "m.onnx")


def test_tracer_off_costs_nothing_and_is_off_after_export(tmp_path):
    assert autograd._tracer is None
    nnx.onnx.export(TorchSequential(nn.Linear(2, 2)), np.zeros((2, 2)), tmp_path / "m.onnx")
    assert autograd._tracer is None


# ---------------------------------------------------------------------- the CLI
def _cli(*argv):
    from nnx import cli

    return cli.main([str(a) for a in argv])


def test_cli_export_round_trip(tmp_path, capsys):
    model_path, onnx_path = tmp_path / "digits.npz", tmp_path / "digits.onnx"
    assert _cli("train", "digits", "--epochs", 1, "--quiet", "--save", model_path) == 0
    assert _cli("export", model_path, onnx_path) == 0
    assert "standardization" in capsys.readouterr().out
    from nnx import datasets

    x, _ = datasets.digits()
    x = x[:37].astype(np.float64)
    probs_path = tmp_path / "p.npy"
    np.save(tmp_path / "x.npy", x)
    assert _cli("predict", model_path, tmp_path / "x.npy", "--proba", "--out", probs_path) == 0
    got = _run_onnx(onnx_path, x.astype(np.float32))[0]
    np.testing.assert_allclose(got, np.load(probs_path), rtol=1e-5, atol=1e-5)
    onnx.checker.check_model(onnx.load(str(onnx_path)), full_check=True)


def test_cli_export_keras_model_and_errors(tmp_path, capsys):
    model = nn.Sequential([nn.Flatten(), nn.Dense(4, input_dim=6, activation="relu"),
                           nn.Dense(2, activation="softmax")])
    model.save(tmp_path / "k.npz")
    # the first layer (Flatten) cannot tell the input shape: --input-shape does
    assert _cli("export", tmp_path / "k.npz", tmp_path / "k.onnx") == 2
    assert "--input-shape" in capsys.readouterr().err
    assert _cli("export", tmp_path / "k.npz", tmp_path / "k.onnx", "--input-shape", "2,3",
                "--fixed-batch", 4) == 0
    proto = onnx.load(str(tmp_path / "k.onnx"))
    assert _dims(proto.graph.input[0]) == [4, 2, 3]
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    np.testing.assert_allclose(_run_onnx(tmp_path / "k.onnx", x)[0], _nnx_out(model, x)[0],
                               rtol=1e-5, atol=1e-6)
    capsys.readouterr()
    assert _cli("export", tmp_path / "k.npz", tmp_path / "k.txt") == 2  # unknown extension
    assert ".onnx" in capsys.readouterr().err
    nnx.save(model.state_dict(), tmp_path / "weights.npz")  # weights only: not a model
    assert _cli("export", tmp_path / "weights.npz", tmp_path / "w.onnx") == 1
    assert "not a saved nnx model" in capsys.readouterr().err
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    assert _cli("export", tmp_path / "junk.npz", tmp_path / "j.onnx") == 1
    assert "cannot load" in capsys.readouterr().err
    assert _cli("export", tmp_path / "missing.npz", tmp_path / "m.onnx") == 1
    assert not any(p.name.startswith((".w.onnx", ".j.onnx", "w.onnx", "j.onnx"))
                   for p in tmp_path.iterdir())


# ---------------------------------------------------------------------- pooling
POOLS_2D = [
    lambda: nn.MaxPool2d(2),
    lambda: nn.MaxPool2d(3, stride=2, padding=1),
    lambda: nn.MaxPool2d(2, stride=2, dilation=2),
    lambda: nn.MaxPool2d(3, stride=2, ceil_mode=True),
    lambda: nn.AvgPool2d(2),
    lambda: nn.AvgPool2d(3, stride=2, padding=1),
    lambda: nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
    lambda: nn.AvgPool2d(3, stride=2, ceil_mode=True),
    lambda: nn.AdaptiveAvgPool2d(1),
    lambda: nn.AdaptiveAvgPool2d((3, 2)),  # uneven windows (7 rows into 3)
    lambda: nn.AdaptiveAvgPool2d((7, 3)),
]


@pytest.mark.parametrize("make_pool", POOLS_2D)
def test_pooling_2d(make_pool, tmp_path):
    pool = make_pool()
    proto = roundtrip(TorchSequential(pool, nn.Flatten()), (2, 7, 6), tmp_path)
    assert _dims(proto.graph.output[0])[0] == "batch"


@pytest.mark.parametrize("make_pool", [lambda: nn.MaxPool1d(3, stride=2, padding=1),
                                       lambda: nn.AvgPool1d(2),
                                       lambda: nn.AdaptiveAvgPool1d(1),
                                       lambda: nn.AdaptiveAvgPool1d(3)])
def test_pooling_1d(make_pool, tmp_path):
    roundtrip(TorchSequential(make_pool(), nn.Flatten()), (3, 8), tmp_path)


def test_unexportable_pooling_is_refused(tmp_path):
    with pytest.raises(nnx.ExportError, match="divisor_override"):
        nnx.onnx.export(TorchSequential(nn.AvgPool2d(2, divisor_override=3)),
                        np.ones((2, 1, 4, 4)), tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------- CNNs
def _layers(*names):
    """The layer classes ``names`` from nnx.nn (or the module defining them)."""
    import importlib

    found = []
    for name in names:
        cls = getattr(nn, name, None)
        for mod in ("nnx.nn.normalization", "nnx.nn.conv", "nnx.nn.embedding"):
            if cls is not None:
                break
            try:
                cls = getattr(importlib.import_module(mod), name, None)
            except ImportError:
                pass
        if cls is None:
            pytest.skip(f"nnx has no {name} layer yet")
        found.append(cls)
    return found


def _trained_stats(model, shape):
    """A few training-mode forwards, so BatchNorm's running statistics are not 0 and 1."""
    rng = np.random.default_rng(7)
    model.train()
    with nnx.no_grad():
        for _ in range(3):
            model(nnx.tensor(rng.standard_normal((8,) + shape).astype(np.float32) * 2 + 1))
    return model


def test_cnn_conv_pool_batchnorm_flatten_linear(tmp_path):
    nnx.manual_seed(8)
    (BatchNorm2d,) = _layers("BatchNorm2d")
    model = TorchSequential(
        nn.Conv2d(3, 8, 3, padding=1), BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, stride=2, padding=(1, 0), dilation=1, groups=2), BatchNorm2d(8),
        nn.Tanh(), nn.AvgPool2d(2, count_include_pad=False), nn.Flatten(), nn.Linear(8, 16),
        nn.Dropout(0.5), nn.ReLU(), nn.Linear(16, 10), nn.LogSoftmax(dim=1))
    _trained_stats(model, (3, 9, 10))
    proto = roundtrip(model, (3, 9, 10), tmp_path, tol=1e-5)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Conv") == 2 and ops.count("BatchNormalization") == 2
    assert {"0.weight", "0.bias", "1.running_mean", "1.running_var", "1.weight"} <= \
        {t.name for t in proto.graph.initializer}
    assert model.training  # the trace ran in eval mode and restored training


class TorchNet(nn.Module):
    """The PyTorch MNIST example's shape, smaller."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, 1)
        self.conv2 = nn.Conv2d(4, 8, 3, 1, dilation=2)
        BatchNorm2d, LayerNorm = _layers("BatchNorm2d", "LayerNorm")
        self.bn = BatchNorm2d(8)
        self.dropout1 = nn.Dropout(0.25)
        self.fc1 = nn.Linear(8 * 3 * 3, 16)
        self.norm = LayerNorm(16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = self.bn(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = nnx.flatten(x, 1)
        x = self.norm(F.relu(self.fc1(x)))
        return F.log_softmax(self.fc2(x), dim=1)


@pytest.mark.parametrize("opset", [17, 13])
def test_pytorch_style_cnn(opset, tmp_path):
    nnx.manual_seed(9)
    model = _trained_stats(TorchNet(), (1, 12, 12))
    proto = roundtrip(model, (1, 12, 12), tmp_path, opset=opset)
    ops = [n.op_type for n in proto.graph.node]
    assert ("LayerNormalization" in ops) == (opset >= 17)


def test_conv1d_batchnorm1d_layernorm(tmp_path):
    nnx.manual_seed(10)
    BatchNorm1d, LayerNorm = _layers("BatchNorm1d", "LayerNorm")
    model = TorchSequential(nn.Conv1d(2, 4, 3, padding=2, dilation=2), BatchNorm1d(4),
                            nn.ReLU(), nn.MaxPool1d(2), LayerNorm([4, 5]), nn.Flatten(),
                            nn.Linear(20, 6), BatchNorm1d(6), nn.Sigmoid())
    _trained_stats(model, (2, 10))
    roundtrip(model, (2, 10), tmp_path)


def test_batchnorm_without_running_stats_and_affine(tmp_path):
    BatchNorm2d, LayerNorm = _layers("BatchNorm2d", "LayerNorm")
    model = TorchSequential(BatchNorm2d(3, affine=False, track_running_stats=False),
                            nn.Flatten(), LayerNorm(12, elementwise_affine=False))
    roundtrip(model, (3, 2, 2), tmp_path, batches=(2, 5))


class Bag(nn.Module):
    """Embedding rows of integer tokens, averaged, then a linear head."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(nnx.randn(20, 6))
        self.head = nn.Linear(6, 3)

    def forward(self, idx):
        from nnx.embedding import embedding

        return self.head(embedding(idx, self.weight, padding_idx=0).mean(dim=1))


def test_embedding_gather(tmp_path):
    nnx.manual_seed(11)
    rng = np.random.default_rng(12)
    model = Bag()
    proto = roundtrip(model, (5,), tmp_path, make=lambda n: rng.integers(0, 20, (n, 5)))
    assert "Gather" in [n.op_type for n in proto.graph.node]
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64


def test_embedding_layer(tmp_path):
    (Embedding,) = _layers("Embedding")
    rng = np.random.default_rng(13)
    model = TorchSequential(Embedding(30, 4), nn.Flatten(), nn.Linear(28, 2))
    roundtrip(model, (7,), tmp_path, make=lambda n: rng.integers(0, 30, (n, 7)))


def test_keras_cnn_channels_last_and_cli(tmp_path, capsys):
    from nnx import keras

    if not hasattr(keras, "Conv2D"):
        pytest.skip("nnx.keras has no Conv2D yet")
    nnx.manual_seed(14)
    model = keras.Sequential([
        keras.Conv2D(4, 3, padding="same", activation="relu", input_shape=(8, 8, 3)),
        keras.MaxPooling2D(2), keras.BatchNormalization(),
        keras.Conv2D(6, 3, strides=2, padding="same"), nn.Flatten(),
        keras.Dense(5, activation="softmax")])
    _trained_stats(model, (8, 8, 3))
    roundtrip(model, (8, 8, 3), tmp_path)
    assert nnx.onnx.input_shape_of(model) == (8, 8, 3)
    model.save(tmp_path / "cnn.npz")  # the CLI infers the input shape from the first layer
    assert _cli("export", tmp_path / "cnn.npz", tmp_path / "cnn.onnx") == 0
    assert "(batch, 8, 8, 3)" in capsys.readouterr().out
    x = np.random.default_rng(15).standard_normal((3, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(_run_onnx(tmp_path / "cnn.onnx", x)[0], _nnx_out(model, x)[0],
                               rtol=1e-5, atol=1e-5)


def test_cli_export_image_model_with_standardization(tmp_path):
    """As ``nnx train digits --model cnn --save`` writes it: per-pixel statistics of flat rows
    and the image shape in ``extra``."""
    from nnx import keras

    if not hasattr(keras, "Conv2D"):
        pytest.skip("nnx.keras has no Conv2D yet")
    rng = np.random.default_rng(19)
    model = keras.Sequential([keras.Conv2D(3, 2, activation="relu", input_shape=(4, 4, 1)),
                              nn.Flatten(), keras.Dense(2, activation="softmax")])
    mean, std = rng.standard_normal(16), rng.uniform(0.5, 2.0, 16)
    model.save(tmp_path / "m.npz", extra={"mean": mean, "std": std, "input_shape": [4, 4, 1]})
    assert _cli("export", tmp_path / "m.npz", tmp_path / "m.onnx") == 0
    x = rng.standard_normal((5, 4, 4, 1))
    want = _nnx_out(model, ((x - mean.reshape(4, 4, 1)) / std.reshape(4, 4, 1)).astype(np.float32))
    got = _run_onnx(tmp_path / "m.onnx", x.astype(np.float32))[0]
    np.testing.assert_allclose(got, want[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("act", ["relu", "sigmoid", "tanh", "leaky_relu"])
def test_conv_fused_with_its_activation_exports_the_activation(act, tmp_path):
    """A Conv2d followed by a monotone activation runs as one fused node in the Sequential
    plan: the export must still emit the activation after the Conv."""
    nnx.manual_seed(21)
    make_act = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh,
                "leaky_relu": lambda: nn.LeakyReLU(0.2)}[act]
    model = TorchSequential(nn.Conv2d(3, 5, 3, padding=1), make_act(),
                            nn.Conv2d(5, 4, 3, stride=2), make_act(), nn.Flatten(),
                            nn.Linear(4 * 3 * 3, 3))
    proto = roundtrip(model, (3, 7, 8), tmp_path)
    ops = [n.op_type for n in proto.graph.node]
    onnx_name = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh",
                 "leaky_relu": "LeakyRelu"}[act]
    assert ops.count("Conv") == 2 and ops.count(onnx_name) == 2
