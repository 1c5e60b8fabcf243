"""nn.utils (clipping, parameter vectors), the containers and buffers, against PyTorch."""
import math

import numpy as np
import pytest
import torch

import nnx
from nnx import backends, nn, optim
from nnx.backends import strict_backend as sb


def _grads(kind):
    rng = np.random.default_rng(3)
    gs = [rng.standard_normal((4, 3)), rng.standard_normal(3), rng.standard_normal((2, 4))]
    if kind == "inf":
        gs[1][0] = np.inf
    elif kind == "nan":
        gs[2][1, 1] = np.nan
    return gs


def _pair(kind, flat):
    gs = _grads(kind)
    ours = [nn.Parameter(nnx.tensor(np.ones_like(g))) for g in gs]
    if flat:
        opt = optim.SGD(ours, lr=0.1)
        opt.step_ready = True
        for p in ours:  # a backward through the optimizer's flat gradient
            view = p._take_grad_storage()
            assert view is not None
    for p, g in zip(ours, gs):
        if flat:
            p.grad.data[...] = g
        else:
            p.grad = nnx.tensor(g)
    theirs = [torch.ones(g.shape, dtype=torch.float64, requires_grad=True) for g in gs]
    for p, g in zip(theirs, gs):
        p.grad = torch.tensor(g)
    return ours, theirs


@pytest.fixture(autouse=True)
def _float64():
    nnx.set_default_dtype("float64")
    yield
    nnx.set_default_dtype("float32")


@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("kind", ["finite", "inf", "nan"])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf, 3.0])
@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_grad_norm_matches_torch(flat, kind, norm_type, max_norm):
    ours, theirs = _pair(kind, flat)
    n1 = nn.utils.clip_grad_norm_(ours, max_norm, norm_type=norm_type)
    n2 = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type=norm_type)
    assert isinstance(n1, nnx.Tensor) and n1.shape == ()
    np.testing.assert_allclose(n1.numpy(), n2.numpy(), rtol=1e-12)
    for p, q in zip(ours, theirs):
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kind", ["inf", "nan"])
def test_clip_grad_norm_error_if_nonfinite(kind):
    ours, theirs = _pair(kind, True)
    with pytest.raises(RuntimeError, match="non-finite"):
        torch.nn.utils.clip_grad_norm_(theirs, 1.0, error_if_nonfinite=True)
    with pytest.raises(RuntimeError, match="non-finite"):
        nn.utils.clip_grad_norm_(ours, 1.0, error_if_nonfinite=True)
    ours, _ = _pair("finite", True)
    nn.utils.clip_grad_norm_(ours, 1.0, error_if_nonfinite=True)  # finite: no error


def test_clip_grad_norm_uses_the_flat_buffer_and_skips_missing_grads():
    ours, _ = _pair("finite", True)
    owner = ours[0]._flat_owner()
    from nnx.nn.utils import _grad_chunks
    assert len(_grad_chunks(ours)) == 1 and _grad_chunks(ours)[0][1] is owner.grad
    assert len(_grad_chunks(ours[:2])) == 2  # part of the buffer only: one by one
    p = nn.Parameter(nnx.tensor([1.0]))
    assert float(nn.utils.clip_grad_norm_([p], 1.0).numpy()) == 0.0


def test_clip_grad_value_matches_torch():
    for flat in (False, True):
        ours, theirs = _pair("finite", flat)
        nn.utils.clip_grad_value_(ours, 0.3)
        torch.nn.utils.clip_grad_value_(theirs, 0.3)
        for p, q in zip(ours, theirs):
            np.testing.assert_array_equal(p.grad.numpy(), q.grad.numpy())


@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_clip_grad_norm_no_host_sync(strict, norm_type):
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    opt = optim.SGD(model.parameters(), lr=0.1)
    x = nnx.tensor(np.random.default_rng(0).standard_normal((4, 3)))
    for _ in range(2):
        opt.zero_grad()
        model(x).sum().backward()
        sb.reset_sync_count()
        nn.utils.clip_grad_norm_(model.parameters(), 0.1, norm_type=norm_type)
        nn.utils.clip_grad_value_(model.parameters(), 0.05)
        opt.step()
        assert sb.sync_counts["count"] == 0, sb.sync_counts["where"]


def test_parameters_to_vector_round_trip():
    tm = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)).double()
    m = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    m.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    v = nn.utils.parameters_to_vector(m.parameters())
    tv = torch.nn.utils.parameters_to_vector(tm.parameters())
    np.testing.assert_array_equal(v.numpy(), tv.detach().numpy())
    opt = optim.SGD(m.parameters(), lr=0.1)
    nn.utils.vector_to_parameters(nnx.tensor(np.arange(v.shape[0], dtype=np.float64)), m.parameters())
    torch.nn.utils.vector_to_parameters(torch.arange(tv.shape[0], dtype=torch.float64), tm.parameters())
    for (k, a), (k2, b) in zip(m.state_dict().items(), tm.state_dict().items()):
        assert k == k2
        np.testing.assert_array_equal(a, b.numpy())
    assert all(p._flat_owner() is not None for p in m.parameters())  # still in the buffer
    del opt


# ---------------------------------------------------------------- containers and buffers
def _build(self, lib):
    if True:
        self.blocks = lib.ModuleList([lib.Linear(3, 3) for _ in range(2)])
        self.heads = lib.ModuleDict({"a": lib.Linear(3, 1), "b": lib.Linear(3, 2)})
        self.scales = lib.ParameterList([lib.Parameter(torch.ones(3) if lib is torch.nn else nnx.ones(3))])
        self.register_buffer("mean", torch.zeros(3) if lib is torch.nn else nnx.zeros(3))
        self.register_buffer("tmp", torch.zeros(1) if lib is torch.nn else nnx.zeros(1), persistent=False)


class _Net(nn.Module):
    def __init__(self, lib):
        super().__init__()
        _build(self, lib)


class _TorchNet(torch.nn.Module):
    def __init__(self, lib):
        super().__init__()
        _build(self, lib)


def test_containers_and_buffers_state_dict_keys_match_torch():
    ours, theirs = _Net(nn), _TorchNet(torch.nn)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [k for k, _ in ours.named_parameters()] == [k for k, _ in theirs.named_parameters()]
    assert [k for k, _ in ours.named_buffers()] == [k for k, _ in theirs.named_buffers()]
    assert [k for k, _ in ours.named_modules()] == [k for k, _ in theirs.named_modules()]
    assert [k for k, _ in ours.named_children()] == [k for k, _ in theirs.named_children()]
    assert len(list(ours.parameters())) == len(list(theirs.parameters()))
    sd = {k: v.detach().double().numpy() + 1 for k, v in theirs.state_dict().items()}
    ours.double().load_state_dict(sd)
    np.testing.assert_array_equal(ours.mean.numpy(), np.ones(3))
    assert ours.mean.dtype == np.float64 and ours.tmp.dtype == np.float64
    with pytest.raises(nnx.CheckpointError):
        ours.load_state_dict({k: v for k, v in sd.items() if k != "mean"})


def test_module_list_ops_follow_torch():
    for lib in (nn, torch.nn):
        ml = lib.ModuleList([lib.ReLU(), lib.Tanh()])
        ml.append(lib.Sigmoid())
        ml.extend([lib.Identity()])
        ml.insert(1, lib.Linear(2, 2))
        del ml[0]
        names = [type(m).__name__ for m in ml]
        keys = list(ml.state_dict())
        assert len(ml[1:]) == 3 and type(ml[-1]).__name__ == "Identity"
        if lib is nn:
            ours = (names, keys)
        else:
            assert ours == (names, keys)
    md = nn.ModuleDict({"x": nn.ReLU()})
    md["y"] = nn.Linear(2, 2)
    assert list(md) == ["x", "y"] and "y" in md and list(md.state_dict()) == ["y.weight", "y.bias"]
    pl = nn.ParameterList([nnx.zeros(2)])
    pl.append(nnx.ones(3))
    assert isinstance(pl[1], nn.Parameter) and list(pl.state_dict()) == ["0", "1"]


def test_sequential_setitem_delitem_follow_torch():
    out = []
    for lib in (nn, torch.nn):
        seq = lib.Sequential(lib.Linear(2, 3), lib.ReLU(), lib.Linear(3, 4), lib.Tanh())
        seq[1] = lib.Sigmoid()
        seq[-1] = lib.Linear(4, 1)
        del seq[0]
        del seq[1:2]
        out.append(([type(m).__name__ for m in seq], list(seq.state_dict())))
    assert out[0] == out[1]
    seq = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    x = nnx.ones(1, 2)
    seq[1] = nn.Sigmoid()  # the fused plan follows the replacement
    z = nnx.functional.linear(x, seq[0].weight, seq[0].bias).numpy()
    np.testing.assert_allclose(seq(x).numpy(), 1 / (1 + np.exp(-z)), rtol=1e-6)
    with pytest.raises(IndexError):
        seq[2] = nn.ReLU()


def test_apply_requires_grad_zero_grad():
    seen = []
    ours = _Net(nn)
    ours.apply(lambda m: seen.append(type(m).__name__))
    tseen = []
    _TorchNet(torch.nn).apply(lambda m: tseen.append(type(m).__name__))
    assert seen == [s.replace("_TorchNet", "_Net") for s in tseen]
    ours.requires_grad_(False)
    assert not any(p.requires_grad for p in ours.parameters())
    ours.requires_grad_()
    for p in ours.parameters():
        p.grad = nnx.zeros(p.shape)
    ours.zero_grad()
    assert all(p.grad is None for p in ours.parameters())


# ---------------------------------------------------------------------- fit(class_weight=...)
def _weighted_reference(model_out_logits, labels, weights, kind):
    import torch

    z = torch.tensor(model_out_logits, dtype=torch.float64)
    if kind == "sparse":
        el = torch.nn.functional.cross_entropy(z, torch.tensor(labels), reduction="none")
    else:
        el = torch.nn.functional.binary_cross_entropy_with_logits(
            z, torch.tensor(labels, dtype=torch.float64).reshape(-1, 1), reduction="none").mean(-1)
    w = torch.tensor([weights.get(int(c), 1.0) for c in labels], dtype=torch.float64)
    return float((el * w).sum() / len(labels))


@pytest.mark.parametrize("kind", ["sparse", "binary"])
def test_fit_class_weight_weights_each_sample_as_keras(kind):
    pytest.importorskip("torch")
    nnx.set_default_dtype("float64")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 3))
    if kind == "sparse":
        y = rng.integers(0, 3, 12)
        model = nn.Sequential(nn.Dense(3, input_dim=3, activation="softmax"))
        model.compile(loss="sparse_categorical_crossentropy", optimizer="sgd")
        weights = {0: 1.0, 1: 5.0}  # class 2 unlisted: weight 1
    else:
        y = rng.integers(0, 2, 12)
        model = nn.Sequential(nn.Dense(1, input_dim=3, activation="sigmoid"))
        model.compile(loss="binary_crossentropy", optimizer="sgd")
        weights = {0: 0.5, 1: 3.0}
    logits = model[0].logits(nnx.tensor(x)).numpy()
    want = _weighted_reference(logits, y, weights, kind)
    h = model.fit(x, y, batch_size=12, epochs=1, verbose=0, shuffle=False, class_weight=weights)
    np.testing.assert_allclose(h.history["loss"][0], want, rtol=1e-12)
    assert not np.isclose(want, _weighted_reference(logits, y, {}, kind))


def test_fit_class_weight_refuses_a_regression_loss():
    model = nn.Sequential(nn.Dense(1, input_dim=3))
    model.compile(loss="mse", optimizer="sgd")
    with pytest.raises(ValueError, match="class_weight"):
        model.fit(np.ones((4, 3)), np.ones((4, 1)), epochs=1, verbose=0, class_weight={0: 2.0})


def test_keras_layers_namespace_has_flatten_dropout_input():
    from nnx import keras
    model = keras.Sequential([keras.layers.Input((4, 4, 1)), keras.layers.Conv2D(2, 3),
                              keras.layers.Flatten(), keras.layers.Dropout(0.1),
                              keras.layers.Dense(3)])
    model.eval()
    assert model(nnx.ones(2, 4, 4, 1)).shape == (2, 3)
    assert keras.layers.Flatten is keras.Flatten and keras.layers.Input is keras.Input
