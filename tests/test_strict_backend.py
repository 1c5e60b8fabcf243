"""The whole framework on the strict backend: no implicit host conversion, no host sync in a step.

The strict backend (backends/strict_backend.py) is NumPy underneath but refuses direct NumPy
calls on its arrays and counts host synchronizations, as a CUDA device would make them cost.
"""
import numpy as np
import pytest

from nnx import backends
import nnx
import nnx.functional as F
from nnx.backends import strict_backend as sb
from nnx import nn, optim


def _syncs():
    return sb.sync_counts["count"], [w for w, _ in sb.sync_counts["where"]]


def test_strict_array_refuses_numpy_and_counts_syncs(strict):
    x = nnx.tensor([1.0, -2.0]).data
    with pytest.raises(sb.ImplicitConversionError):
        np.exp(x)
    with pytest.raises(sb.ImplicitConversionError):
        np.concatenate([x, x])
    with pytest.raises(sb.ImplicitConversionError):
        x.__array__()
    assert _syncs()[0] == 0
    bool((x > 0).any())
    float(x.sum())
    assert _syncs()[0] == 2


def _net(kind):
    if kind == "mlp-ce":
        model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(),
                              nn.Linear(16, 16), nn.LeakyReLU(0.1), nn.Dropout(0.2), nn.Linear(16, 4))
        x = nnx.tensor(np.random.default_rng(0).standard_normal((8, 12)))
        y = nnx.tensor(np.random.default_rng(1).integers(0, 4, 8))
        return model, x, y, nn.CrossEntropyLoss()
    if kind == "sigmoid-bce":
        model = nn.Sequential(nn.Linear(2, 2), nn.Sigmoid(), nn.Linear(2, 1), nn.Sigmoid())
        x = nnx.tensor([[0., 0.], [0., 1.], [1., 0.], [1., 1.]])
        y = nnx.tensor([[0.], [1.], [1.], [0.]])
        return model, x, y, nn.BCELoss()
    if kind == "logits-bce":
        model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1))
        x = nnx.tensor(np.random.default_rng(0).standard_normal((7, 3)))
        y = nnx.tensor(np.random.default_rng(1).integers(0, 2, (7, 1)).astype(np.float32))
        return model, x, y, nn.BCEWithLogitsLoss()
    model = nn.Sequential(nn.Linear(3, 5), nn.Sigmoid(), nn.Linear(5, 2))
    x = nnx.tensor(np.random.default_rng(0).standard_normal((7, 3)))
    y = nnx.tensor(np.random.default_rng(1).standard_normal((7, 2)))
    return model, x, y, nn.MSELoss()


OPTIMIZERS = {
    "sgd": lambda ps: optim.SGD(ps, lr=0.1),
    "sgd-nesterov-wd": lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda ps: optim.Adam(ps, lr=0.01, weight_decay=1e-4),
}


@pytest.mark.parametrize("kind", ["mlp-ce", "sigmoid-bce", "logits-bce", "mse"])
@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_training_step_makes_no_host_sync(strict, kind, opt_name):
    nnx.manual_seed(0)
    model, x, y, crit = _net(kind)
    opt = OPTIMIZERS[opt_name](model.parameters())
    losses = []
    for _ in range(3):
        sb.reset_sync_count()
        opt.zero_grad()
        loss = crit(model(x), y)
        loss.backward()
        opt.step()
        n, where = _syncs()
        assert n == 0, f"host syncs inside a training step: {where}\n{sb.sync_counts['where'][0][1]}"
        losses.append(loss)
    # reading the loss is where the host waits (for the loss, and any pending label check)
    assert np.isfinite(losses[-1].item())
    assert 1 <= _syncs()[0] <= 2


def test_cross_entropy_bad_label_is_flagged_at_the_next_read(strict):
    logits = nnx.tensor(np.zeros((3, 4)), requires_grad=True)
    labels = nnx.tensor([0, 7, 1])
    loss = F.cross_entropy(logits, labels)  # no sync, no exception yet (as on a GPU)
    assert _syncs()[0] == 0
    with pytest.raises(nnx.LabelError, match="outside"):
        loss.item()


def test_ops_run_without_implicit_conversion(strict):
    x = nnx.tensor(np.random.default_rng(0).standard_normal((6, 4)), requires_grad=True)
    t = nnx.tensor(np.random.default_rng(1).random((6, 4)))
    outs = [
        F.softmax(x).sum(), F.log_softmax(x, axis=0).mean(), x[[0, 0, 2]].sum(),
        x.max(axis=1).mean(), F.cross_entropy(x, F.softmax(t)), (x @ x.T).sum(),
        ((x * 2 + 1) / (x.abs() + 1) - x ** 2).exp().log().sum(), x.clip(-0.5, 0.5).tanh().sum(),
        x.reshape(4, 6).transpose(1, 0).sum(), F.binary_cross_entropy(F.sigmoid(x), t),
    ]
    for out in outs:
        x.grad = None
        out.backward()
        assert x.grad is not None
    assert _syncs()[0] == 0
