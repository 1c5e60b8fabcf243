"""PyTorch's MNIST example (pytorch/examples ``mnist/main.py``) ported line for line to nnx.

The port below changes only the imports (``import nnx as torch``-style names: ``nnx.nn``,
``nnx.functional``, ``nnx.optim``, ``nnx.optim.lr_scheduler.StepLR``, ``nnx.data``); the torch
original is written out beside it. Both run on the same small synthetic set from the same
initial weights (torch's ``state_dict`` copied into nnx) and must agree, step by step, in their
losses and, after the steps, in every parameter (float32 tolerance).

Dropout: the two frameworks draw different random masks, so the side-by-side steps run with
the models in ``eval()`` mode, where both dropouts are the identity (nothing else in ``Net``
depends on the mode: no batch norm); the test loop runs in ``eval()`` in the example anyway.
A last test trains the nnx port as the example does, in ``train()`` mode with dropout on.
"""
import numpy as np
import pytest

import nnx
import nnx.functional as F
from nnx import nn, optim
from nnx.data import DataLoader, TensorDataset
from nnx.optim.lr_scheduler import StepLR

torch = pytest.importorskip("torch")
TF = torch.nn.functional


# ---------------------------------------------------------------------------- the nnx port
class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = self.conv1(x)
        x = F.relu(x)
        x = self.conv2(x)
        x = F.relu(x)
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = nnx.flatten(x, 1)
        x = self.fc1(x)
        x = F.relu(x)
        x = self.dropout2(x)
        x = self.fc2(x)
        output = F.log_softmax(x, dim=1)
        return output


def train(model, train_loader, optimizer, epoch, losses, mode="train"):
    model.train() if mode == "train" else model.eval()  # the example: model.train()
    for batch_idx, (data, target) in enumerate(train_loader):
        optimizer.zero_grad()
        output = model(data)
        loss = F.nll_loss(output, target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())


def test(model, test_loader):
    model.eval()
    test_loss = 0
    correct = 0
    with nnx.no_grad():
        for data, target in test_loader:
            output = model(data)
            test_loss += F.nll_loss(output, target, reduction='sum').item()  # sum up batch loss
            pred = output.argmax(dim=1, keepdim=True)  # get the index of the max log-probability
            correct += pred.eq(target.view_as(pred)).sum().item()
    test_loss /= len(test_loader.dataset)
    return test_loss, correct


test.__test__ = False  # the example's name; not a pytest test


# ---------------------------------------------------------------------------- the original
class TorchNet(torch.nn.Module):
    def __init__(self):
        super(TorchNet, self).__init__()
        self.conv1 = torch.nn.Conv2d(1, 32, 3, 1)
        self.conv2 = torch.nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = torch.nn.Dropout(0.25)
        self.dropout2 = torch.nn.Dropout(0.5)
        self.fc1 = torch.nn.Linear(9216, 128)
        self.fc2 = torch.nn.Linear(128, 10)

    def forward(self, x):
        x = self.conv1(x)
        x = TF.relu(x)
        x = self.conv2(x)
        x = TF.relu(x)
        x = TF.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = self.fc1(x)
        x = TF.relu(x)
        x = self.dropout2(x)
        x = self.fc2(x)
        output = TF.log_softmax(x, dim=1)
        return output


def torch_train(model, train_loader, optimizer, epoch, losses, mode="train"):
    model.train() if mode == "train" else model.eval()
    for batch_idx, (data, target) in enumerate(train_loader):
        optimizer.zero_grad()
        output = model(data)
        loss = TF.nll_loss(output, target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())


def torch_test(model, test_loader):
    model.eval()
    test_loss = 0
    correct = 0
    with torch.no_grad():
        for data, target in test_loader:
            output = model(data)
            test_loss += TF.nll_loss(output, target, reduction='sum').item()
            pred = output.argmax(dim=1, keepdim=True)
            correct += pred.eq(target.view_as(pred)).sum().item()
    test_loss /= len(test_loader.dataset)
    return test_loss, correct


# ---------------------------------------------------------------------------- data
def _synthetic(n, seed):
    """MNIST-shaped images normalized as the example's transform (mean 0.1307, std 0.3081):
    class k has a bright 7x7 square at one of ten places, on noise."""
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 10).astype(np.int64)
    x = rng.random((n, 1, 28, 28), dtype=np.float32) * 0.3
    for i, k in enumerate(y):
        r, c = 2 + 13 * (k // 5), 1 + 5 * (k % 5)
        x[i, 0, r:r + 7, c:c + 7] = 1.0
    return (x - np.float32(0.1307)) / np.float32(0.3081), y


def _loaders(x, y, batch_size):
    nx = DataLoader(TensorDataset(nnx.tensor(x), nnx.tensor(y)), batch_size=batch_size)
    tx = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
        batch_size=batch_size)
    return nx, tx


def _twins():
    torch.manual_seed(1)
    tmodel = TorchNet()
    model = Net()
    model.load_state_dict({k: v.detach().numpy().copy() for k, v in tmodel.state_dict().items()})
    return model, tmodel


def _close(a, b, rel):
    scale = float(np.abs(b).max()) + 1e-12
    return float(np.abs(a - b).max()) <= rel * scale


# ---------------------------------------------------------------------------- tests
def test_port_matches_torch_step_by_step():
    """Adadelta(lr=1.0) + StepLR(step_size=1, gamma=0.7), two epochs of four batches: the same
    losses at every step, the same parameters after, the same test loss and count."""
    model, tmodel = _twins()
    assert list(model.state_dict()) == list(tmodel.state_dict())
    x, y = _synthetic(64, seed=0)
    train_loader, ttrain_loader = _loaders(x, y, 16)
    xt, yt = _synthetic(40, seed=1)
    test_loader, ttest_loader = _loaders(xt, yt, 20)

    optimizer = optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = StepLR(optimizer, step_size=1, gamma=0.7)
    toptimizer = torch.optim.Adadelta(tmodel.parameters(), lr=1.0)
    tscheduler = torch.optim.lr_scheduler.StepLR(toptimizer, step_size=1, gamma=0.7)
    losses, tlosses = [], []
    for epoch in range(1, 3):
        train(model, train_loader, optimizer, epoch, losses, mode="eval")
        torch_train(tmodel, ttrain_loader, toptimizer, epoch, tlosses, mode="eval")
        scheduler.step()
        tscheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.49)
    assert toptimizer.param_groups[0]["lr"] == pytest.approx(0.49)
    assert len(losses) == len(tlosses) == 8
    np.testing.assert_allclose(losses, tlosses, rtol=2e-5, atol=1e-6)
    assert losses[-1] < losses[0]
    # Adadelta's step is sqrt(acc_delta + eps) / sqrt(acc_grad + eps) * g: where g^2 is near
    # eps (1e-6) the step's size swings with float32 rounding of g, so the parameters are
    # compared by how far they moved (as Adam's in test_benchmarks.py): the nnx and torch
    # moves agree to 0.5% of the largest move of each tensor
    start = {k: v.numpy() for k, v in _twins()[1].state_dict().items()}
    want = {k: v.detach().numpy() for k, v in tmodel.state_dict().items()}
    got = model.state_dict()
    for k, v in want.items():
        moved = float(np.abs(v - start[k]).max())
        err = float(np.abs(np.asarray(got[k]) - v).max())
        assert moved > 0, k
        assert err <= 5e-3 * moved, f"{k}: max diff {err:.3g}, largest move {moved:.3g}"
    test_loss, correct = test(model, test_loader)
    ttest_loss, tcorrect = torch_test(tmodel, ttest_loader)
    assert test_loss == pytest.approx(ttest_loss, rel=1e-3)
    assert correct == tcorrect


def test_one_step_gradients_match_torch():
    """The first backward alone: every parameter's gradient to float32 tolerance."""
    model, tmodel = _twins()
    x, y = _synthetic(16, seed=2)
    model.eval()
    tmodel.eval()
    loss = F.nll_loss(model(nnx.tensor(x)), nnx.tensor(y))
    tloss = TF.nll_loss(tmodel(torch.from_numpy(x)), torch.from_numpy(y))
    loss.backward()
    tloss.backward()
    assert loss.item() == pytest.approx(tloss.item(), rel=1e-5)
    grads = dict(model.named_parameters())
    for k, p in tmodel.named_parameters():
        assert _close(grads[k].grad.numpy(), p.grad.numpy(), 1e-4), k


def test_port_trains_with_dropout():
    """The example as written: train() mode (dropout on), Adadelta + StepLR; the test loss
    falls and the synthetic classes are learned."""
    nnx.manual_seed(0)
    model = Net()
    x, y = _synthetic(160, seed=3)
    train_loader = DataLoader(TensorDataset(nnx.tensor(x), nnx.tensor(y)), batch_size=32,
                              shuffle=True, seed=0)
    xt, yt = _synthetic(50, seed=4)
    test_loader = DataLoader(TensorDataset(nnx.tensor(xt), nnx.tensor(yt)), batch_size=50)
    optimizer = optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = StepLR(optimizer, step_size=1, gamma=0.7)
    loss0, _ = test(model, test_loader)
    losses = []
    for epoch in range(1, 4):
        train(model, train_loader, optimizer, epoch, losses)
        scheduler.step()
    test_loss, correct = test(model, test_loader)
    assert model.training is False  # test() left it in eval mode, as the example's does
    assert test_loss < 0.5 * loss0
    assert correct >= 40  # of 50
