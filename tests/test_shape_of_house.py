"""Behaviour the issue-15 reshaping must keep: what a user of the refactored pieces sees.

Each test names a user action that a cache, a fused node or a moved class could get silently
wrong, and checks the result against the plain (unfused, uncached) computation or PyTorch's rule.
"""
import copy
import pickle

import numpy as np
import pytest

import nnx
import nnx.functional as F
from nnx import nn, optim


def _x(n=5, d=3, seed=0):
    return nnx.tensor(np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32))


def test_a_subclass_with_its_own_forward_is_not_fused():
    class Doubled(nn.ReLU):
        def forward(self, x):
            return super().forward(x) * 2.0

    nnx.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), Doubled())
    x = _x()
    np.testing.assert_array_equal(model(x).numpy(), model[1](model[0](x)).numpy())
    assert (model(x).numpy() == 2 * np.maximum(model[0](x).numpy(), 0)).all()
    d = nn.Dense(4, input_dim=3, activation=Doubled())
    np.testing.assert_allclose(d(x).numpy(), 2 * np.maximum(d.logits(x).numpy(), 0), rtol=1e-6)
    with pytest.raises(ValueError, match="cannot describe"):
        d.get_config()


def test_changing_a_slope_or_a_child_changes_the_next_forward():
    nnx.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.LeakyReLU(0.1), nn.Linear(4, 2))
    x = _x()
    model(x)
    model[1].negative_slope = 0.5
    h = model[0](x).numpy()
    ref = np.where(h >= 0, h, 0.5 * h) @ model[2].weight.numpy().T + model[2].bias.numpy()
    np.testing.assert_allclose(model(x).numpy(), ref, rtol=1e-5, atol=1e-6)
    model._modules["1"] = nn.Tanh()
    ref = np.tanh(h) @ model[2].weight.numpy().T + model[2].bias.numpy()
    np.testing.assert_allclose(model(x).numpy(), ref, rtol=1e-5, atol=1e-6)


def test_a_shallow_copy_follows_edits_of_the_children_it_shares():
    nnx.manual_seed(0)
    s = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    c = copy.copy(s)
    x = _x()
    c(x)
    s._modules["1"] = nn.Sigmoid()
    np.testing.assert_allclose(c(x).numpy(), 1 / (1 + np.exp(-s[0](x).numpy())), rtol=1e-6)


def test_a_model_after_double_raises_instead_of_mixing_dtypes():
    nnx.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    x = _x()
    model(x)
    model.double()
    with pytest.raises(nnx.DTypeError):
        model(x)
    assert model(x.double()).dtype == np.float64


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copied_model_and_optimizer_train_the_copy(how):
    nnx.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    opt = optim.Adam(model.parameters(), lr=0.1)
    x, y = _x(), _x(d=1, seed=1)
    for _ in range(2):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
    m2, o2 = copy.deepcopy((model, opt)) if how == "deepcopy" else pickle.loads(pickle.dumps((model, opt)))
    before = [p.numpy().copy() for p in model.parameters()]
    for m, o in ((model, opt), (m2, o2)):  # the same next step on both: the same weights
        o.zero_grad()
        F.mse_loss(m(x), y).backward()
        o.step()
    for p, q, b in zip(model.parameters(), m2.parameters(), before):
        assert not np.array_equal(p.numpy(), b)
        np.testing.assert_array_equal(p.numpy(), q.numpy())


def test_bce_after_sigmoid_frees_its_graph_like_pytorch():
    nnx.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1), nn.Sigmoid())
    x, y = _x(), nnx.tensor((np.arange(5) % 2).reshape(5, 1).astype(np.float32))
    p = model(x)
    F.binary_cross_entropy(p, y).backward()
    with pytest.raises(nnx.GraphError, match="second time|freed"):
        F.binary_cross_entropy(p, y).backward()
    p = model(x)
    l_bce, l_mse = F.binary_cross_entropy(p, y), F.mse_loss(p, y)
    l_mse.backward()
    with pytest.raises(nnx.GraphError):
        l_bce.backward()
    p = model(x)  # with retain_graph the same graph can be used again, and gradients add up
    model.zero_grad()
    F.binary_cross_entropy(p, y).backward(retain_graph=True)
    g1 = model[0].weight.grad.numpy().copy()
    F.binary_cross_entropy(p, y).backward()
    np.testing.assert_allclose(model[0].weight.grad.numpy(), 2 * g1, rtol=1e-6)


@pytest.mark.parametrize("op", ["sum", "mean", "amax", "argmax", "argmin"])
def test_an_axis_out_of_range_raises(op):
    x = nnx.tensor(np.ones((2, 3), np.float32))
    with pytest.raises(IndexError, match="out of range"):
        getattr(x, op)(axis=2)
    with pytest.raises(IndexError, match="out of range"):
        getattr(x, op)(dim=-3)
    assert getattr(x, op)(dim=-1).shape == (2,)


def test_old_import_paths_keep_working():
    from nnx.callbacks import EarlyStopping  # noqa: F401
    from nnx.nn.layers import LeakyReLU, ReLU, Sigmoid, Tanh  # noqa: F401
    from nnx.training import History, load_model  # noqa: F401

    assert nnx.nn.Sequential is nnx.keras.Sequential and nnx.nn.Dense is nnx.keras.Dense
    assert issubclass(nnx.keras.Sequential, nnx.nn.container.Sequential)
    assert not hasattr(nnx.nn.container.Sequential, "compile")
