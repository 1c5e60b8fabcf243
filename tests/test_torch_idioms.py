"""The training and test loops of PyTorch's MNIST example (pytorch/examples mnist/main.py),
ported line for line with ``torch`` -> ``nnx`` on a small MLP (the convolutions are other
tests'): Adadelta + StepLR, ``DataLoader``/``TensorDataset``, ``model.train()``/``eval()``,
``no_grad``, ``F.nll_loss(..., reduction='sum').item()``, ``output.argmax(dim=1,
keepdim=True)``, ``pred.eq(target.view_as(pred)).sum().item()``, ``flatten(x, 1)``; the same
run in torch gives the same numbers."""
from __future__ import annotations

import numpy as np
import pytest

import nnx
import nnx.functional as F
from nnx import nn, optim
from nnx.data import DataLoader, TensorDataset
from nnx.optim.lr_scheduler import StepLR

torch = pytest.importorskip("torch")


class Net(nn.Module):
    def __init__(self, p_drop=0.25):
        super(Net, self).__init__()
        self.fc1 = nn.Linear(64, 32)
        self.dropout1 = nn.Dropout(p_drop)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = nnx.flatten(x, 1)
        x = self.fc1(x)
        x = F.relu(x)
        x = self.dropout1(x)
        x = self.fc2(x)
        output = F.log_softmax(x, dim=1)
        return output


class TorchNet(torch.nn.Module):
    def __init__(self, p_drop=0.25):
        super().__init__()
        self.fc1 = torch.nn.Linear(64, 32)
        self.dropout1 = torch.nn.Dropout(p_drop)
        self.fc2 = torch.nn.Linear(32, 10)

    def forward(self, x):
        x = torch.flatten(x, 1)
        x = self.dropout1(torch.nn.functional.relu(self.fc1(x)))
        return torch.nn.functional.log_softmax(self.fc2(x), dim=1)


def train(model, device, train_loader, optimizer, epoch, log):
    model.train()
    for batch_idx, (data, target) in enumerate(train_loader):
        data, target = data.to(device), target.to(device)
        optimizer.zero_grad()
        output = model(data)
        loss = F.nll_loss(output, target)
        loss.backward()
        optimizer.step()
        if batch_idx % 2 == 0:
            log.append('Train Epoch: {} [{}/{} ({:.0f}%)]\tLoss: {:.6f}'.format(
                epoch, batch_idx * len(data), len(train_loader.dataset),
                100. * batch_idx / len(train_loader), loss.item()))


def test(model, device, test_loader):
    model.eval()
    test_loss = 0
    correct = 0
    with nnx.no_grad():
        for data, target in test_loader:
            data, target = data.to(device), target.to(device)
            output = model(data)
            test_loss += F.nll_loss(output, target, reduction='sum').item()  # sum up batch loss
            pred = output.argmax(dim=1, keepdim=True)  # get the index of the max log-probability
            correct += pred.eq(target.view_as(pred)).sum().item()
    test_loss /= len(test_loader.dataset)
    return test_loss, correct


test.__test__ = False  # the example's name, not a pytest test


def _digits():
    """Small, separable 1x8x8 'images' with 10 classes (no download)."""
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((10, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 400)
    x = centers[y] + 0.6 * rng.standard_normal((400, 1, 8, 8)).astype(np.float32)
    x = (x - 0.1307) / 0.3081
    return x.astype(np.float32), y.astype(np.int64)


def _loaders(x, y, shuffle):
    train_kwargs = {'batch_size': 32}
    test_kwargs = {'batch_size': 100}
    if shuffle:
        train_kwargs.update({'shuffle': True})
    dataset1 = TensorDataset(nnx.tensor(x[:300]), nnx.tensor(y[:300]))
    dataset2 = TensorDataset(nnx.tensor(x[300:]), nnx.tensor(y[300:]))
    return DataLoader(dataset1, **train_kwargs), DataLoader(dataset2, **test_kwargs)


def test_mnist_example_loop_trains():
    nnx.manual_seed(1)
    device = nnx.device("cpu")
    x, y = _digits()
    train_loader, test_loader = _loaders(x, y, shuffle=True)
    model = Net().to(device)
    optimizer = optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = StepLR(optimizer, step_size=1, gamma=0.7)
    log, results = [], []
    before = test(model, device, test_loader)
    for epoch in range(1, 4):
        train(model, device, train_loader, optimizer, epoch, log)
        results.append(test(model, device, test_loader))
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.7 ** 3)
    assert len(log) == 3 * 5 and log[1].startswith("Train Epoch: 1 [64/300 (20%)]")
    assert results[-1][1] > 90 and results[-1][0] < before[0] / 3, (before, results)
    assert isinstance(results[-1][1], int)
    state = model.state_dict()
    assert sorted(state) == ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]


def test_mnist_example_loop_matches_torch():
    """The same loop, same weights and batches (no shuffle, dropout off), in nnx and torch."""
    x, y = _digits()
    nnx.manual_seed(0)
    model = Net(p_drop=0.0)
    tmodel = TorchNet(p_drop=0.0)
    with torch.no_grad():
        for k, v in model.state_dict().items():
            tmodel.get_parameter(k).copy_(torch.from_numpy(np.array(v)))
    train_loader, test_loader = _loaders(x, y, shuffle=False)
    optimizer = optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = StepLR(optimizer, step_size=1, gamma=0.7)
    topt = torch.optim.Adadelta(tmodel.parameters(), lr=1.0)
    tsched = torch.optim.lr_scheduler.StepLR(topt, step_size=1, gamma=0.7)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    for epoch in range(1, 3):
        train(model, "cpu", train_loader, optimizer, epoch, [])
        mine = test(model, "cpu", test_loader)
        tmodel.train()
        for i in range(0, 300, 32):
            topt.zero_grad()
            j = min(i + 32, 300)
            torch.nn.functional.nll_loss(tmodel(tx[i:j]), ty[i:j]).backward()
            topt.step()
        tmodel.eval()
        with torch.no_grad():
            out = tmodel(tx[300:])
            tloss = torch.nn.functional.nll_loss(out, ty[300:], reduction='sum').item() / 100
            pred = out.argmax(dim=1, keepdim=True)
            tcorrect = pred.eq(ty[300:].view_as(pred)).sum().item()
        assert mine[0] == pytest.approx(tloss, rel=1e-5)
        assert mine[1] == tcorrect
        scheduler.step()
        tsched.step()
    for k, v in model.state_dict().items():
        np.testing.assert_allclose(np.asarray(v), tmodel.get_parameter(k).detach().numpy(),
                                   rtol=1e-5, atol=1e-5, err_msg=k)
    sd, tsd = optimizer.state_dict(), topt.state_dict()
    for k, st in tsd["state"].items():
        for name in ("square_avg", "acc_delta"):
            np.testing.assert_allclose(sd["state"][k][name], st[name].numpy(), rtol=1e-4,
                                       atol=1e-7)
    assert sd["param_groups"][0]["lr"] == pytest.approx(tsd["param_groups"][0]["lr"])


def test_tensor_idioms_of_the_example():
    out = nnx.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 1.0], [0.0, 0.0, 5.0]])
    target = nnx.tensor([1, 2, 2])
    pred = out.argmax(dim=1, keepdim=True)
    assert pred.shape == (3, 1) and pred.dtype == np.int64
    assert target.view_as(pred).shape == (3, 1)
    assert pred.eq(target.view_as(pred)).sum().item() == 2
    assert out.argmax(1).tolist() == [1, 0, 2]
    vals, idx = out.max(1)
    assert idx.tolist() == [1, 0, 2] and vals.tolist() == [2.0, 3.0, 5.0]
    assert out.min(dim=1).indices.tolist() == [2, 1, 0]
    assert out.max(1, keepdim=True)[1].shape == (3, 1)
    assert nnx.flatten(nnx.zeros(2, 1, 4, 4), 1).shape == (2, 16)
    assert nnx.zeros(2, 3).float().dtype == np.float32
    assert nnx.zeros(2, 3).double().dtype == np.float64
    assert nnx.zeros(2, 3).long().dtype == np.int64
    assert (out > 1).bool().dtype == np.bool_
    assert out.view(-1, 9).shape == (1, 9) and out.view(9).shape == (9,)
    assert int(out.eq(out).sum()) == 9 and out.ne(out).sum().item() == 0
    np.testing.assert_allclose(nnx.max(out, nnx.zeros(3, 3)).numpy(),
                               np.maximum(out.numpy(), 0))


def test_log_softmax_nll_match_torch():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((7, 5)).astype(np.float32)
    target = rng.integers(0, 5, 7)
    x = nnx.tensor(logits, requires_grad=True)
    tx = torch.tensor(logits, requires_grad=True)
    for red in ("mean", "sum"):
        x.grad, tx.grad = None, None
        loss = F.nll_loss(F.log_softmax(x, dim=1), nnx.tensor(target), reduction=red)
        tl = torch.nn.functional.nll_loss(torch.log_softmax(tx, dim=1), torch.tensor(target),
                                          reduction=red)
        loss.backward()
        tl.backward()
        assert loss.item() == pytest.approx(tl.item(), rel=1e-6)
        np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-5, atol=1e-6)
