"""nnx end to end on the CUDA code path, without a GPU.

The CuPy backend runs over ``tests/cuda_emu.py``: its custom kernels (bias+activation, ReLU and
sigmoid backwards, softmax cross-entropy, SGD and Adam) execute as g++-built emulations, and the
CuPy array calls nnx makes (``xp.dot``, ``xp.maximum`` ...) fall through to NumPy. What runs is
nnx's device path: ``b.name != "numpy"`` branches, the kernels' wrappers, deferred device-side
checks, no ReLU masks from ``bias_act_``. Timing, real CuPy API differences and the GPU's
flush-to-zero are out of reach here (``benchmarks/gpu_check.sh`` covers them on a GPU).
"""
import sys

import numpy as np
import pytest

from nnx import backends
import nnx
import nnx.functional as F
from nnx import nn

cuda_emu = pytest.importorskip("cuda_emu")  # tests/ is on sys.path under pytest
from counting import graph_nodes  # noqa: E402  (tests/counting.py)


@pytest.fixture(scope="module")
def emu():
    """Device "emu": a CupyBackend over emulated kernels and NumPy-backed "CuPy" arrays."""
    if not cuda_emu.compiler_available():
        pytest.skip("no C++ compiler for the CUDA emulator")
    fake = cuda_emu.fake_cupy()
    for name in dir(np):  # every other array call goes to NumPy
        if not name.startswith("__") and not hasattr(fake, name):
            setattr(fake, name, getattr(np, name))
    saved = sys.modules.get("cupy")
    cuda_emu.clear_kernel_caches()
    sys.modules["cupy"] = fake
    try:
        from nnx.backends.cupy_backend import CupyBackend

        backends.register_backend("emu", CupyBackend(0))
        yield "emu"
    finally:
        backends._backends.pop("emu", None)
        cuda_emu.clear_kernel_caches()
        if saved is None:
            sys.modules.pop("cupy", None)
        else:
            sys.modules["cupy"] = saved


def train(device, kind, optimizer, steps=3):
    """Losses and final parameters of a few steps of a small model on ``device``."""
    nnx.set_device("cpu")
    nnx.manual_seed(0)
    rng = np.random.default_rng(1)
    if kind == "mlp":  # workload B in small: ReLU stack, softmax cross-entropy
        model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                              nn.Linear(16, 5))
        x, y = rng.standard_normal((32, 12)).astype(np.float32), rng.integers(0, 5, 32)
        loss_fn = nn.CrossEntropyLoss()
    else:  # workload A: the lecture's XOR net, sigmoid output and BCE
        model = nn.Sequential(nn.Linear(2, 2), nn.Sigmoid(), nn.Linear(2, 1), nn.Sigmoid())
        x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
        y = np.array([[0], [1], [1], [0]], np.float32)
        loss_fn = nn.BCELoss()
    model.to(device)
    nnx.set_device(device)
    xt, yt = nnx.tensor(x), nnx.tensor(y)
    if optimizer == "sgd":
        opt = nnx.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    else:
        opt = nnx.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        out = model(xt)
        assert graph_nodes(out) == 1  # the whole stack is one graph node on either path
        loss = loss_fn(out, yt)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, [p.numpy() for p in model.parameters()]


@pytest.mark.parametrize("kind", ["mlp", "xor"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_training_on_the_device_path_matches_the_cpu(emu, kind, optimizer):
    cpu_losses, cpu_params = train("cpu", kind, optimizer)
    dev_losses, dev_params = train(emu, kind, optimizer)
    assert nnx.tensor([0.0]).device == "cuda:0"  # really on the CupyBackend
    np.testing.assert_allclose(dev_losses, cpu_losses, rtol=2e-5, atol=1e-6)
    for a, b in zip(dev_params, cpu_params):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


def test_chain_gradients_on_the_device_path(emu):
    nnx.set_device(emu)
    nnx.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.LeakyReLU(0.1),
                          nn.Linear(4, 2), nn.Tanh())
    x_host = np.random.default_rng(3).standard_normal((2, 5, 3)).astype(np.float32)
    x = nnx.tensor(x_host, requires_grad=True)
    model(x).sum().backward()
    got = [p.grad.numpy() for p in model.parameters()] + [x.grad.numpy()]
    model.to("cpu")
    nnx.set_device("cpu")
    for p in model.parameters():
        p.grad = None
    xc = nnx.tensor(x_host, requires_grad=True)
    model(xc).sum().backward()
    want = [p.grad.numpy() for p in model.parameters()] + [xc.grad.numpy()]
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bad_label_is_raised_at_the_next_host_read(emu):
    nnx.set_device(emu)
    logits = nnx.tensor(np.zeros((3, 4), np.float32), requires_grad=True)
    loss = F.cross_entropy(logits, nnx.tensor(np.array([0, 7, 1])))  # no sync, no error yet
    with pytest.raises(nnx.LabelError):
        loss.item()
