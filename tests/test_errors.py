"""Bad input gives a clear error: nnx's own subclass of the builtin a user would catch, with a
message naming the layer or op, what was expected and what was given.

The table below is the contract: each row is (callable, nnx error type, builtin type, words the
message must contain). Anomaly mode, load_state_dict and simulated out-of-memory follow."""
import inspect
import types

import numpy as np
import pytest

from nnx import backends
import nnx
import nnx.functional as F
from nnx import nn, optim

CUDA_OK, CUDA_WHY = backends.cuda_status()


def _r(*shape, dtype="float32"):
    return nnx.tensor(np.random.default_rng(0).standard_normal(shape), dtype=dtype)


def _p(*shape, dtype="float32"):  # probabilities in (0, 1)
    return nnx.tensor(np.random.default_rng(1).uniform(0.05, 0.95, shape), dtype=dtype)


def _labels(*values):
    return nnx.tensor(np.array(values, dtype=np.int64))


def _backward_twice():
    x = _r(3).requires_grad_()
    y = (x * x).sum()
    y.backward()
    y.backward()


def _backward_twice_shared_subgraph():
    x = _r(3).requires_grad_()
    h = nnx.exp(x)
    h.sum().backward()
    (h * 2).sum().backward()  # a new top node over a freed one


def _backward_nonscalar():
    x = _r(3).requires_grad_()
    (x * 2).backward()


def _backward_bad_gradient_shape():
    x = _r(3).requires_grad_()
    (x * 2).backward(nnx.ones(4))


def _backward_no_grad():
    _r(3).sum().backward()


# (id, thunk, nnx type, builtin type, key words)
CASES = [
    # ---- shapes: Linear, @, losses
    ("linear-shape", lambda: nn.Linear(784, 256)(_r(32, 100)),
     nnx.ShapeError, ValueError, ["Linear(784 -> 256)", "(32, 100)", "784"]),
    ("linear-shape-1d", lambda: nn.Linear(4, 3)(_r(5)),
     nnx.ShapeError, ValueError, ["Linear(4 -> 3)", "(5,)"]),
    ("linear-0d", lambda: nn.Linear(4, 3)(nnx.tensor(1.0)),
     nnx.ShapeError, ValueError, ["Linear(4 -> 3)", "()"]),
    ("linear-shape-in-sequential-fused", lambda: nn.Sequential(nn.Linear(4, 3), nn.ReLU())(_r(2, 5)),
     nnx.ShapeError, ValueError, ["Linear(4 -> 3)", "(2, 5)"]),
    ("functional-linear-shape", lambda: F.linear(_r(2, 5), _r(3, 4)),
     nnx.ShapeError, ValueError, ["linear", "(2, 5)", "(3, 4)"]),
    ("matmul-shape", lambda: _r(3, 4) @ _r(5, 6),
     nnx.ShapeError, ValueError, ["matmul", "(3, 4)", "(5, 6)", "4 != 5"]),
    ("matmul-0d", lambda: nnx.matmul(nnx.tensor(2.0), _r(3)),
     nnx.ShapeError, ValueError, ["matmul", "()"]),
    ("mse-target-N-vs-N1", lambda: F.mse_loss(_r(4, 1), _r(4)),
     nnx.ShapeError, ValueError, ["mse_loss", "(4,)", "(4, 1)", "broadcast"]),
    ("mse-module-target-N-vs-N1", lambda: nn.MSELoss()(_r(4, 1), _r(4)),
     nnx.ShapeError, ValueError, ["mse_loss", "(4,)", "(4, 1)"]),
    ("bce-target-N-vs-N1", lambda: F.binary_cross_entropy(_p(4, 1), _p(4)),
     nnx.ShapeError, ValueError, ["binary_cross_entropy", "(4,)", "(4, 1)"]),
    ("bce-logits-target-N-vs-N1", lambda: nn.BCEWithLogitsLoss()(_r(4, 1), _p(4)),
     nnx.ShapeError, ValueError, ["binary_cross_entropy_with_logits", "(4,)", "(4, 1)"]),
    ("ce-label-shape", lambda: F.cross_entropy(_r(3, 4), _labels(0, 1)),
     nnx.ShapeError, ValueError, ["cross_entropy", "(2,)", "(3, 4)", "(3,)"]),
    ("ce-logits-3d", lambda: F.cross_entropy(_r(2, 3, 4), _labels(0, 1)),
     nnx.ShapeError, ValueError, ["cross_entropy", "(N, C)", "(2, 3, 4)"]),
    ("tensor-ragged", lambda: nnx.tensor([[1.0, 2.0], [3.0]]),
     nnx.ShapeError, ValueError, ["tensor()", "inhomogeneous"]),
    # ---- labels and value ranges
    ("ce-label-too-large", lambda: F.cross_entropy(_r(3, 4), _labels(0, 1, 4)),
     nnx.LabelError, IndexError, ["cross_entropy", "label 4", "row 2", "[0, 4)"]),
    ("ce-label-negative", lambda: nn.CrossEntropyLoss()(_r(3, 4), _labels(0, -1, 2)),
     nnx.LabelError, ValueError, ["label -1", "row 1", "[0, 4)"]),
    ("ce-label-float", lambda: F.cross_entropy(_r(3, 4), nnx.tensor([0.0, 1.0, 2.0])),
     nnx.LabelError, ValueError, ["integer", "float32", "(3,)"]),
    ("nll-label-too-large", lambda: F.nll_loss(F.log_softmax(_r(3, 4)), _labels(0, 9, 1)),
     nnx.LabelError, IndexError, ["nll_loss", "[0, 4)"]),
    ("bce-prob-above-1", lambda: F.binary_cross_entropy(nnx.tensor([[1.5], [0.2]]), nnx.tensor([[1.0], [0.0]])),
     nnx.ValueRangeError, ValueError, ["binary_cross_entropy", "[0, 1]", "1.5", "with_logits"]),
    ("bce-prob-below-0", lambda: nn.BCELoss()(nnx.tensor([[-0.1], [0.2]]), nnx.tensor([[1.0], [0.0]])),
     nnx.ValueRangeError, ValueError, ["[0, 1]", "-0.1"]),
    # ---- dtypes
    ("add-f32-f64", lambda: _r(3) + _r(3, dtype="float64"),
     nnx.DTypeError, TypeError, ["add", "float32", "float64"]),
    ("sub-f64-f32", lambda: _r(3, dtype="float64") - _r(3),
     nnx.DTypeError, TypeError, ["sub", "float64", "float32"]),
    ("mul-f16-f32", lambda: _r(3, dtype="float16") * _r(3),
     nnx.DTypeError, TypeError, ["mul", "float16", "float32"]),
    ("div-f32-f64", lambda: nnx.div(_r(3), _r(3, dtype="float64")),
     nnx.DTypeError, TypeError, ["div", "float32", "float64"]),
    ("matmul-f32-f64", lambda: _r(3, 4) @ _r(4, 2, dtype="float64"),
     nnx.DTypeError, TypeError, ["matmul", "float32", "float64"]),
    ("linear-f64-input", lambda: nn.Linear(784, 256)(_r(32, 784, dtype="float64")),
     nnx.DTypeError, TypeError, ["Linear(784 -> 256)", "float64", "float32"]),
    ("mse-target-f64", lambda: F.mse_loss(_r(4, 1), _r(4, 1, dtype="float64")),
     nnx.DTypeError, TypeError, ["mse_loss", "float64", "float32"]),
    ("optimizer-int-param", lambda: optim.SGD([nnx.tensor([1, 2])], lr=0.1),
     nnx.DTypeError, TypeError, ["floating", "int64"]),
    # ---- non-numeric data
    ("tensor-object-array", lambda: nnx.tensor(np.array([1, "a", None], dtype=object)),
     nnx.DTypeError, TypeError, ["object", "not numeric"]),
    ("tensor-string-list", lambda: nnx.tensor(["a", "b"]),
     nnx.DTypeError, TypeError, ["<U1", "not numeric"]),
    ("tensor-string-array", lambda: nnx.tensor(np.array(["a", "b"])),
     nnx.DTypeError, TypeError, ["<U1", "not numeric"]),
    ("tensor-dict", lambda: nnx.tensor({"a": 1}),
     nnx.DTypeError, TypeError, ["object", "dict"]),
    ("tensor-none", lambda: nnx.tensor(None),
     nnx.DTypeError, TypeError, ["object", "NoneType"]),
    ("tensor-complex", lambda: nnx.tensor([1 + 2j]),
     nnx.DTypeError, TypeError, ["complex"]),
    ("requires-grad-int", lambda: nnx.tensor([1, 2]).requires_grad_(),
     nnx.DTypeError, TypeError, ["floating", "int64"]),
    # ---- empty batches (a loss of nothing is undefined: raise rather than return NaN)
    ("ce-empty-batch", lambda: F.cross_entropy(_r(0, 4), _labels()),
     nnx.ShapeError, ValueError, ["cross_entropy", "empty batch"]),
    ("mse-empty-batch", lambda: F.mse_loss(_r(0, 1), _r(0, 1)),
     nnx.ShapeError, ValueError, ["mse_loss", "empty batch", "(0, 1)"]),
    ("bce-empty-batch", lambda: F.binary_cross_entropy(_p(0, 1), _p(0, 1), reduction="sum"),
     nnx.ShapeError, ValueError, ["binary_cross_entropy", "empty batch"]),
    ("bce-logits-empty-batch", lambda: F.binary_cross_entropy_with_logits(_r(0, 1), _p(0, 1)),
     nnx.ShapeError, ValueError, ["binary_cross_entropy_with_logits", "empty batch"]),
    # ---- autograd misuse
    ("backward-nonscalar", _backward_nonscalar,
     nnx.GraphError, RuntimeError, ["backward()", "scalar", "(3,)", "gradient"]),
    ("backward-gradient-shape", _backward_bad_gradient_shape,
     nnx.GraphError, RuntimeError, ["backward()", "(4,)", "(3,)"]),
    ("backward-twice", _backward_twice,
     nnx.GraphError, RuntimeError, ["second time", "freed", "retain_graph=True"]),
    ("backward-through-freed-subgraph", _backward_twice_shared_subgraph,
     nnx.GraphError, RuntimeError, ["Exp", "freed", "retain_graph=True"]),
    ("backward-no-grad", _backward_no_grad,
     nnx.GraphError, RuntimeError, ["backward()", "does not require grad"]),
]


@pytest.mark.parametrize("thunk, err, builtin, words",
                         [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_bad_input_gives_clear_error(thunk, err, builtin, words):
    assert issubclass(err, nnx.NNXError) and issubclass(err, builtin)
    with pytest.raises(err) as info:
        thunk()
    assert isinstance(info.value, builtin)
    msg = str(info.value)
    for w in words:
        assert w in msg, f"{w!r} missing from the message: {msg}"


def test_error_types_subclass_the_builtins():
    pairs = [(nnx.ShapeError, ValueError), (nnx.DTypeError, TypeError),
             (nnx.DeviceError, RuntimeError), (nnx.LabelError, ValueError),
             (nnx.LabelError, IndexError), (nnx.GraphError, RuntimeError),
             (nnx.AnomalyError, RuntimeError), (nnx.CheckpointError, ValueError),
             (nnx.OutOfMemoryError, MemoryError), (nnx.ValueRangeError, ValueError)]
    for err, builtin in pairs:
        assert issubclass(err, nnx.NNXError) and issubclass(err, builtin), err


def test_backward_twice_works_with_retain_graph():
    x = _r(3).requires_grad_()
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), 4 * x.numpy(), rtol=1e-6)


# ---------------------------------------------------------------------- Dense (Keras-style)
@pytest.mark.skipif(not hasattr(nn, "Dense"), reason="nnx.nn.Dense is not there (yet)")
def test_dense_shape_mismatch_names_the_layer():
    Dense = nn.Dense
    if "input_dim" in inspect.signature(Dense).parameters:  # Keras: Dense(units, input_dim=...)
        layer = Dense(256, input_dim=784)
    else:  # Dense(in_features, out_features)
        layer = Dense(784, 256)
    with pytest.raises(nnx.ShapeError) as info:
        layer(_r(32, 100))
    msg = str(info.value)
    assert "Dense" in msg and "(32, 100)" in msg and "784" in msg, msg
    assert isinstance(info.value, ValueError)
    with pytest.raises(nnx.DTypeError) as info:
        layer(_r(32, 784, dtype="float64"))
    assert "Dense" in str(info.value) and "float64" in str(info.value)


# ---------------------------------------------------------------------- empty batch: Linear
def test_linear_on_empty_batch_works_like_pytorch():
    torch = pytest.importorskip("torch")
    layer = nn.Linear(4, 3)
    x = nnx.zeros(0, 4, requires_grad=True)
    y = layer(x)
    assert y.shape == (0, 3)
    y.sum().backward()
    assert x.grad.shape == (0, 4)
    np.testing.assert_array_equal(layer.weight.grad.numpy(), np.zeros((3, 4), np.float32))
    np.testing.assert_array_equal(layer.bias.grad.numpy(), np.zeros(3, np.float32))
    tl = torch.nn.Linear(4, 3)
    ty = tl(torch.zeros(0, 4))
    ty.sum().backward()
    assert tuple(ty.shape) == y.shape
    assert float(tl.weight.grad.abs().sum()) == 0.0


def test_losses_with_sum_of_nonempty_batch_still_work():
    # The empty-batch check must not catch ordinary small batches.
    assert F.mse_loss(_r(1, 1), _r(1, 1), reduction="sum").shape == ()
    assert F.cross_entropy(_r(1, 3), _labels(2)).shape == ()


# ---------------------------------------------------------------------- devices
@pytest.mark.skipif(CUDA_OK, reason="this machine has a usable GPU")
@pytest.mark.parametrize("thunk", [
    pytest.param(lambda: nnx.set_device("cuda"), id="set_device-cuda"),
    pytest.param(lambda: nnx.set_device("cuda:3"), id="set_device-cuda:3"),
    pytest.param(lambda: nnx.tensor([1.0], device="cuda"), id="tensor-device"),
    pytest.param(lambda: nn.Linear(2, 2, device="cuda"), id="linear-device"),
    pytest.param(lambda: _r(2).to("cuda"), id="tensor.to"),
    pytest.param(lambda: nn.Linear(2, 2).to("cuda"), id="module.to"),
])
def test_cuda_requested_without_gpu_names_the_reason(thunk):
    with pytest.raises(nnx.DeviceError) as info:
        thunk()
    assert isinstance(info.value, RuntimeError)
    msg = str(info.value)
    assert "CUDA is not usable" in msg and CUDA_WHY in msg, msg
    assert nnx.get_device() == "cpu"  # a failed set_device changes nothing


@pytest.fixture
def other_device(device):
    """A second device to mix with ``device``: the CPU beside a GPU; beside the CPU, the strict
    test backend (NumPy underneath, a device of its own), so the check runs on every machine."""
    if device == "cpu":
        backends.register_strict()
        return "strict"
    return "cpu"


@pytest.mark.parametrize("thunk, words", [
    pytest.param(lambda d, o: nnx.ones(3, device=o) + nnx.ones(3, device=d), ["Add", "o", "d"],
                 id="add"),
    pytest.param(lambda d, o: nnx.ones(2, 3, device=d) @ nnx.ones(3, 2, device=o), ["d", "o"],
                 id="matmul"),
    pytest.param(lambda d, o: nn.Linear(3, 2, device=o)(nnx.ones(4, 3, device=d)), ["d", "o"],
                 id="linear"),
    pytest.param(lambda d, o: F.mse_loss(nnx.ones(4, 1, device=d), nnx.ones(4, 1, device=o)),
                 ["mse_loss", "d", "o"], id="mse-target"),
    pytest.param(lambda d, o: F.cross_entropy(nnx.ones(2, 3, device=d),
                                              nnx.tensor(np.array([0, 1]), device=o)),
                 ["cross_entropy", "d", "o"], id="ce-labels"),
])
def test_mixing_devices_names_both(device, other_device, thunk, words):
    names = {"d": nnx.ones(1, device=device).device, "o": nnx.ones(1, device=other_device).device}
    assert names["d"] != names["o"]
    with pytest.raises(nnx.DeviceError) as info:
        thunk(device, other_device)
    assert isinstance(info.value, RuntimeError)
    for w in words:
        w = names.get(w, w)
        assert w in str(info.value), str(info.value)


# ---------------------------------------------------------------------- load_state_dict
def _params(model):
    return {k: p.numpy().copy() for k, p in model.named_parameters()}


def _mlp():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def _sd_missing(sd):
    del sd["2.bias"]
    return sd


def _sd_extra(sd):
    sd["3.weight"] = np.zeros((2, 2), np.float32)
    return sd


def _sd_shape(sd):
    sd["0.weight"] = np.zeros((8, 5), np.float32)
    return sd


def _sd_dtype(sd):
    sd["2.weight"] = sd["2.weight"].astype(np.float64)
    return sd


def _sd_object(sd):
    sd["0.bias"] = np.array(["x"] * 8, dtype=object)
    return sd


def _sd_shape_after_good_keys(sd):
    # The bad key comes last: the good ones before it must not be copied either.
    sd = {k: v + 100 for k, v in sd.items()}
    sd["2.bias"] = np.zeros(3, np.float32)
    return sd


@pytest.mark.parametrize("corrupt, words", [
    pytest.param(_sd_missing, ["missing keys", "2.bias"], id="missing-key"),
    pytest.param(_sd_extra, ["unexpected keys", "3.weight"], id="extra-key"),
    pytest.param(_sd_shape, ["0.weight", "(8, 5)", "(8, 4)"], id="wrong-shape"),
    pytest.param(_sd_dtype, ["2.weight", "float64", "float32"], id="wrong-dtype"),
    pytest.param(_sd_object, ["0.bias", "object"], id="object-values"),
    pytest.param(_sd_shape_after_good_keys, ["2.bias", "(3,)", "(2,)"], id="partial-good"),
])
def test_load_state_dict_mismatch_names_key_and_leaves_model_untouched(device, corrupt, words):
    nnx.set_device(device)  # the model refusing the state dict lives on ``device``
    nnx.manual_seed(0)
    src = _mlp()
    nnx.manual_seed(1)
    model = _mlp()
    before = _params(model)
    sd = corrupt(dict(src.state_dict()))
    with pytest.raises(nnx.CheckpointError) as info:
        model.load_state_dict(sd)
    assert isinstance(info.value, ValueError)
    for w in words:
        assert w in str(info.value), str(info.value)
    after = _params(model)
    assert before.keys() == after.keys()
    for k in before:
        assert np.array_equal(before[k], after[k]), k


def test_load_state_dict_non_strict_reports_keys_and_loads_the_rest():
    nnx.manual_seed(0)
    src = _mlp()
    model = _mlp()
    sd = _sd_extra(_sd_missing(dict(src.state_dict())))
    res = model.load_state_dict(sd, strict=False)
    assert res.missing_keys == ["2.bias"] and res.unexpected_keys == ["3.weight"]
    np.testing.assert_array_equal(model[0].weight.numpy(), src[0].weight.numpy())


# ---------------------------------------------------------------------- anomaly mode
def test_anomaly_log_of_negative_names_log_forward():
    x = nnx.tensor([-1.0, 2.0], requires_grad=True)
    with nnx.detect_anomaly():
        with pytest.raises(nnx.AnomalyError) as info:
            nnx.log(x)
    msg = str(info.value)
    assert "Log" in msg and "forward" in msg and "NaN" in msg, msg
    assert isinstance(info.value, RuntimeError)


def test_anomaly_sqrt_at_zero_names_sqrt_backward():
    x = nnx.tensor([0.0, 4.0], requires_grad=True)
    with nnx.detect_anomaly():
        y = nnx.sqrt(x)  # forward is finite: sqrt(0) = 0
        loss = (y * 3.0).sum()
        with pytest.raises(nnx.AnomalyError) as info:
            loss.backward()
    msg = str(info.value)
    assert "Sqrt" in msg and "backward" in msg and "inf" in msg, msg
    assert "Mul" not in msg and "Sum" not in msg


def test_set_detect_anomaly_names_the_first_bad_op_only():
    nnx.set_detect_anomaly(True)
    assert nnx.is_anomaly_enabled()
    x = nnx.tensor([[1.0, 0.0]], requires_grad=True)
    with pytest.raises(nnx.AnomalyError) as info:
        h = nnx.exp(x)  # fine
        r = 1.0 / (h - 1.0)  # 1/0 = inf: the first bad op
        nnx.log(r)  # never reached
    msg = str(info.value)
    assert "RDivConst" in msg and "forward" in msg and "inf" in msg, msg
    nnx.set_detect_anomaly(False)
    assert not nnx.is_anomaly_enabled()


def test_anomaly_in_a_model_names_the_layer_op(device):
    nnx.set_device(device)
    model = nn.Sequential(nn.Linear(2, 3), nn.Sigmoid(), nn.Linear(3, 1))
    with nnx.no_grad():
        model[2].weight.data[0, 0] = np.inf
    x = nnx.ones(4, 2)
    with nnx.detect_anomaly():
        with pytest.raises(nnx.AnomalyError) as info:
            model(x)
    assert "Linear" in str(info.value) and "forward" in str(info.value)


def test_anomaly_context_restores_previous_mode():
    assert not nnx.is_anomaly_enabled()
    with nnx.detect_anomaly():
        assert nnx.is_anomaly_enabled()
        with nnx.detect_anomaly():
            pass
        assert nnx.is_anomaly_enabled()
    assert not nnx.is_anomaly_enabled()
    with pytest.raises(nnx.AnomalyError):
        with nnx.detect_anomaly():
            nnx.log(nnx.tensor([-1.0]))
    assert not nnx.is_anomaly_enabled()


def test_without_anomaly_mode_nan_flows_silently():
    with np.errstate(all="ignore"):
        y = nnx.log(nnx.tensor([-1.0, 1.0]))
    assert np.isnan(y.numpy()[0])


def test_anomaly_mode_changes_no_results(device):
    nnx.set_device(device)

    def run():
        nnx.manual_seed(3)
        model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
        opt = optim.Adam(model.parameters(), lr=0.01)
        x, y = _r(8, 3), _labels(*([0, 1] * 4))
        for _ in range(5):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        return _params(model)

    plain = run()
    with nnx.detect_anomaly():
        checked = run()
    for k in plain:
        assert np.array_equal(plain[k], checked[k]), k


def test_anomaly_ignores_integer_outputs():
    with nnx.detect_anomaly():
        nnx.argmax(_r(3, 4), axis=1)
        nnx.tensor([1, 2]) + nnx.tensor([3, 4])


# ---------------------------------------------------------------------- out of memory
class FakeCupyOOM(MemoryError):
    """Stands in for ``cupy.cuda.memory.OutOfMemoryError``: same constructor, same message."""

    def __init__(self, size, total, limit=0):
        super().__init__(f"Out of memory allocating {size:,} bytes "
                         f"(allocated so far: {total:,} bytes).")


@pytest.fixture
def fake_oom(monkeypatch):
    """Register FakeCupyOOM as the CPU backend's out-of-memory type (as CuPy's is on a GPU).

    NOTE: this simulates the GPU failure on the CPU to test nnx's wrapping logic only; the real
    CuPy path is test_real_cuda_oom below (GPU only)."""
    monkeypatch.setattr(backends.NumpyBackend, "oom_errors", (FakeCupyOOM,))
    return FakeCupyOOM


@pytest.fixture
def oom_on(device, monkeypatch):
    """``device``'s backend, with FakeCupyOOM as its out-of-memory type, made the default device.

    Failures are injected into the backend's kernel methods (the contract every backend keeps),
    on this backend object only, so the same test runs on NumPy and CuPy."""
    nnx.set_device(device)
    b = nnx.ones(1).backend
    monkeypatch.setattr(type(b), "oom_errors", (FakeCupyOOM,))
    return b


def _fail_kernel(monkeypatch, backend, names, error, only=None):
    """Make ``backend``'s kernel methods ``names`` raise ``error``; a generic entry point
    (``activation_forward(name, ...)``) fails only for the activation ``only``."""
    for name in names:
        real = getattr(backend, name)

        def f(*args, _real=real, _generic=name.startswith("activation_"), **kwargs):
            if _generic and only is not None and args and args[0] != only:
                return _real(*args, **kwargs)
            raise error(*args, **kwargs)
        monkeypatch.setattr(backend, name, f, raising=False)


def _raise_oom(size=1 << 30, total=3 << 30):
    def f(*args, **kwargs):
        raise FakeCupyOOM(size, total)
    return f


def test_backend_oom_types():
    assert backends.get_backend("cpu").oom_errors == ()

    class PoolOOM(MemoryError):
        pass

    fake_xp = types.SimpleNamespace(cuda=types.SimpleNamespace(
        memory=types.SimpleNamespace(OutOfMemoryError=PoolOOM)))
    assert backends.Backend.oom_errors.fget(types.SimpleNamespace(xp=fake_xp)) == (PoolOOM,)


def test_oom_in_forward_is_reraised_with_size_and_hint(oom_on, monkeypatch):
    _fail_kernel(monkeypatch, oom_on, ["sigmoid_fwd", "activation_forward"], _raise_oom(),
                 only="sigmoid")
    x = _r(64, 3)
    with pytest.raises(nnx.OutOfMemoryError) as info:
        F.sigmoid(x)
    e = info.value
    msg = str(e)
    assert isinstance(e, MemoryError)
    assert "Sigmoid forward" in msg and "(64, 3) float32" in msg, msg
    assert "1.00 GiB" in msg and "1,073,741,824 bytes" in msg and "3.00 GiB" in msg, msg
    assert "batch size" in msg, msg
    assert e.requested_bytes == 1 << 30 and e.device == oom_on.device
    assert f"out of memory on {oom_on.device}" in msg, msg  # the error names the device
    assert isinstance(e.__cause__, FakeCupyOOM)


def test_oom_in_linear_forward(oom_on, monkeypatch):
    _fail_kernel(monkeypatch, oom_on, ["bias_act_"], _raise_oom(5 << 20, 0))
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU()).to(oom_on.device)
    with pytest.raises(nnx.OutOfMemoryError) as info:
        model(_r(2, 3))
    msg = str(info.value)
    assert "Linear forward" in msg and "5.00 MiB" in msg and "batch size" in msg, msg
    assert info.value.device == oom_on.device and oom_on.device in msg, msg


def test_oom_in_backward(oom_on, monkeypatch):
    x = _r(8, 3).requires_grad_()
    loss = F.sigmoid(x).sum()
    _fail_kernel(monkeypatch, oom_on, ["sigmoid_bwd", "activation_backward"], _raise_oom(2048, 0),
                 only="sigmoid")
    with pytest.raises(nnx.OutOfMemoryError) as info:
        loss.backward()
    msg = str(info.value)
    assert "Sigmoid backward" in msg and "2.00 KiB" in msg, msg
    assert info.value.device == oom_on.device and oom_on.device in msg, msg


class _XpWith:
    """A backend's ``xp`` with some functions replaced (the rest reach the real module)."""

    def __init__(self, xp, **replaced):
        self._xp, self.__dict__["_replaced"] = xp, replaced

    def __getattr__(self, name):
        return self._replaced[name] if name in self._replaced else getattr(self._xp, name)


def test_oom_in_optimizer_flat_buffers_leaves_params_untouched(oom_on, monkeypatch):
    nnx.manual_seed(0)
    model = _mlp().to(oom_on.device)
    before = {k: p.data for k, p in model.named_parameters()}
    values = _params(model)
    x, y = _r(5, 4), _r(5, 2)

    def empty(n, dtype=None):
        raise FakeCupyOOM(int(n) * np.dtype(dtype).itemsize, 0)

    monkeypatch.setattr(oom_on, "xp", _XpWith(oom_on.xp, empty=empty))
    with pytest.raises(nnx.OutOfMemoryError) as info:
        optim.SGD(model.parameters(), lr=0.1)
    monkeypatch.undo()
    nnx.set_device(oom_on.device)
    msg = str(info.value)
    n = sum(v.size for v in before.values())
    assert "flat buffers" in msg and f"{n:,} elements" in msg and "batch size" in msg, msg
    for k, p in model.named_parameters():
        assert p.data is before[k], k
    # Nothing of the half-built optimizer is left on the parameters: gradients arrive and
    # accumulate as on a model no optimizer ever saw, and a new optimizer then steps as SGD does.
    nnx.manual_seed(0)
    twin = _mlp().to(oom_on.device)
    for m in (model, twin):
        for _ in range(2):
            F.mse_loss(m(x), y).backward()
    for (k, p), (_, q) in zip(model.named_parameters(), twin.named_parameters()):
        np.testing.assert_array_equal(p.grad.numpy(), q.grad.numpy(), err_msg=k)
    grads = {k: p.grad.numpy().copy() for k, p in model.named_parameters()}
    optim.SGD(model.parameters(), lr=0.1).step()
    for k, p in model.named_parameters():
        np.testing.assert_allclose(p.numpy(), values[k] - np.float32(0.1) * grads[k],
                                   rtol=1e-6, atol=1e-7, err_msg=k)


def test_oom_in_optimizer_state(oom_on, monkeypatch):
    model = _mlp().to(oom_on.device)
    opt = optim.Adam(model.parameters(), lr=0.1)
    F.mse_loss(model(_r(5, 4)), _r(5, 2)).backward()

    def zeros(n, dtype=None):
        raise FakeCupyOOM(int(n) * np.dtype(dtype).itemsize, 0)

    monkeypatch.setattr(oom_on, "xp", _XpWith(oom_on.xp, zeros=zeros))
    with pytest.raises(nnx.OutOfMemoryError) as info:
        opt.step()
    assert "optimizer state 'exp_avg'" in str(info.value)
    assert info.value.device == oom_on.device


def test_oom_moving_a_batch(fake_oom, monkeypatch):
    other = backends.NumpyBackend()  # a second backend object: a move between "devices"
    other.device = "other-cpu"
    backends.register_backend("other-cpu", other)
    try:
        monkeypatch.setattr(other, "asarray", _raise_oom(4096, 0))
        monkeypatch.setattr(other, "xp", _XpWith(other.xp, asarray=_raise_oom(4096, 0),
                                                 array=_raise_oom(4096, 0)))
        with pytest.raises(nnx.OutOfMemoryError) as info:
            _r(32, 8).to("other-cpu")
    finally:
        backends._backends.pop("other-cpu", None)
    msg = str(info.value)
    assert "moving a (32, 8) float32 tensor" in msg and "4.00 KiB" in msg, msg
    assert info.value.device == "other-cpu" and "other-cpu" in msg, msg


def test_other_memory_errors_pass_through(monkeypatch):
    # Not the backend's OOM type (oom_errors is empty on the CPU): re-raised unchanged.
    boom = MemoryError("host allocation failed")

    def f(*a, **k):
        raise boom

    _fail_kernel(monkeypatch, backends.get_backend("cpu"), ["sigmoid_fwd", "activation_forward"],
                 f, only="sigmoid")
    with pytest.raises(MemoryError) as info:
        F.sigmoid(_r(2))
    assert info.value is boom and not isinstance(info.value, nnx.NNXError)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_OK, reason=f"no usable CUDA device: {CUDA_WHY}")
def test_real_cuda_oom():
    x = nnx.ones(1 << 20, 1, device="cuda")
    with pytest.raises(nnx.OutOfMemoryError) as info:
        x @ x.T  # (2^20, 2^20) float32: 4 TiB
    msg = str(info.value)
    assert "MatMul forward" in msg and "batch size" in msg, msg
    assert info.value.requested_bytes is not None and info.value.requested_bytes >= 1 << 42
