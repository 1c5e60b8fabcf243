"""Parity with PyTorch (CPU): functional ops forward and backward, extreme inputs, and whole
MLPs trained 20 steps with SGD and Adam from the same weights on the same batches."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
tF = torch.nn.functional
tnn = torch.nn

import nnx  # noqa: E402
import nnx.functional as F  # noqa: E402
from nnx import nn, optim  # noqa: E402

RTOL32, ATOL32 = 1e-5, 1e-6


@pytest.fixture(autouse=True, scope="module")
def _torch_one_thread():
    """One intra-op thread: deterministic reductions and no oversubscription on small CPUs."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _close(a, b, rtol=RTOL32, atol=ATOL32, what=""):
    a = a.numpy() if isinstance(a, nnx.Tensor) else np.asarray(a)
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    assert a.shape == b.shape, f"{what}: shape {a.shape} vs torch {b.shape}"
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=what)


def check_parity(nfn, tfn, arrays, grad=None, device="cpu", rtol=RTOL32, atol=ATOL32,
                 grad_rtol=None, grad_atol=None):
    """Run ``nfn`` on nnx tensors and ``tfn`` on torch tensors made from the same arrays;
    compare outputs, then the gradients of sum(out * w) for a fixed random w."""
    grad = [a.dtype.kind == "f" for a in arrays] if grad is None else grad
    nx = [nnx.tensor(a, dtype=a.dtype, device=device, requires_grad=g) for a, g in zip(arrays, grad)]
    tx = [torch.tensor(a, requires_grad=g) for a, g in zip(arrays, grad)]
    ny, ty = nfn(*nx), tfn(*tx)
    _close(ny, ty, rtol, atol, "forward")
    assert ny.dtype == ty.detach().numpy().dtype
    out = ny.numpy()
    assert np.all(np.isfinite(out)) == bool(torch.isfinite(ty).all())
    if not any(grad):
        return ny
    w = np.random.default_rng(99).uniform(0.5, 1.5, out.shape).astype(out.dtype)
    (ny * nnx.tensor(w, dtype=w.dtype, device=device)).sum().backward()
    (ty * torch.tensor(w)).sum().backward()
    for i, (a, b) in enumerate(zip(nx, tx)):
        if grad[i]:
            assert a.grad is not None, f"no gradient for input {i}"
            assert np.all(np.isfinite(a.grad.numpy())), f"non-finite gradient for input {i}"
            _close(a.grad, b.grad, grad_rtol or rtol, grad_atol or atol, f"grad of input {i}")
    return ny


def rnd(shape, lo=-3.0, hi=3.0, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).uniform(lo, hi, shape).astype(dtype)


# ---------------------------------------------------------------------- elementwise and reductions
ELEMENTWISE = {
    "exp": (nnx.exp, torch.exp, (-3, 3)),
    "log": (nnx.log, torch.log, (0.1, 5)),
    "sqrt": (nnx.sqrt, torch.sqrt, (0.1, 5)),
    "tanh": (nnx.tanh, torch.tanh, (-4, 4)),
    "abs": (nnx.abs, torch.abs, (-3, 3)),
    "neg": (nnx.neg, torch.neg, (-3, 3)),
    "clip": (lambda x: nnx.clip(x, -1.0, 0.5), lambda x: torch.clamp(x, -1.0, 0.5), (-3, 3)),
    "sigmoid": (F.sigmoid, torch.sigmoid, (-8, 8)),
    "relu": (F.relu, torch.relu, (-3, 3)),
    "leaky_relu": (F.leaky_relu, tF.leaky_relu, (-3, 3)),
    "leaky_relu_0.2": (lambda x: F.leaky_relu(x, 0.2), lambda x: tF.leaky_relu(x, 0.2), (-3, 3)),
    "softplus": (F.softplus, tF.softplus, (-10, 10)),
    "log_sigmoid": (F.log_sigmoid, tF.logsigmoid, (-10, 10)),
    "softmax": (F.softmax, lambda x: torch.softmax(x, -1), (-5, 5)),
    "softmax_0": (lambda x: F.softmax(x, axis=0), lambda x: torch.softmax(x, 0), (-5, 5)),
    "log_softmax": (F.log_softmax, lambda x: torch.log_softmax(x, -1), (-5, 5)),
    "log_softmax_0": (lambda x: F.log_softmax(x, axis=0), lambda x: torch.log_softmax(x, 0), (-5, 5)),
    "sum": (lambda x: x.sum(), torch.sum, (-3, 3)),
    "sum_axis": (lambda x: x.sum(axis=1, keepdims=True), lambda x: x.sum(1, keepdim=True), (-3, 3)),
    "mean": (lambda x: x.mean(axis=0), lambda x: x.mean(0), (-3, 3)),
    "amax": (lambda x: x.amax(axis=1), lambda x: torch.amax(x, 1), (-3, 3)),
    "max": (lambda x: x.max(), torch.max, (-3, 3)),
    "pow": (lambda x: x ** 3, lambda x: x ** 3, (-2, 2)),
    "rpow": (lambda x: 2.0 ** x, lambda x: 2.0 ** x, (-2, 2)),
    "rdiv": (lambda x: 1.5 / x, lambda x: 1.5 / x, (0.5, 2)),
    "T": (lambda x: x.T * 1.0, lambda x: x.T * 1.0, (-2, 2)),
    "index": (lambda x: x[[0, 2, 0], 1:], lambda x: x[[0, 2, 0], 1:], (-2, 2)),
}


@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_unary_parity(device, name):
    nfn, tfn, (lo, hi) = ELEMENTWISE[name]
    check_parity(nfn, tfn, [rnd((4, 6), lo, hi)], device=device)


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "pow", "matmul"])
def test_binary_parity(device, op):
    f = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
         "div": lambda a, b: a / b, "pow": lambda a, b: a ** b, "matmul": lambda a, b: a @ b}[op]
    if op == "matmul":
        arrays = [rnd((2, 3, 4), seed=1), rnd((4, 5), seed=2)]
    else:
        arrays = [rnd((3, 4), 0.5, 2, seed=1), rnd((4,), 0.5, 2, seed=2)]
    check_parity(f, f, arrays, device=device)


@pytest.mark.parametrize("act", ["linear", "sigmoid", "relu", "leaky_relu", "tanh"])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_parity(device, act, bias):
    tact = {"linear": lambda z: z, "sigmoid": torch.sigmoid, "relu": torch.relu,
            "leaky_relu": tF.leaky_relu, "tanh": torch.tanh}[act]
    arrays = [rnd((8, 5), seed=1), rnd((3, 5), -0.5, 0.5, seed=2)]
    if bias:
        arrays.append(rnd((3,), -0.5, 0.5, seed=3))
    check_parity(lambda x, w, *b: F.linear(x, w, b[0] if b else None, activation=act),
                 lambda x, w, *b: tact(tF.linear(x, w, b[0] if b else None)), arrays, device=device)


# ---------------------------------------------------------------------- losses
REDUCTIONS = ["mean", "sum", "none"]


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mse_parity(device, reduction):
    check_parity(lambda a, b: F.mse_loss(a, b, reduction=reduction),
                 lambda a, b: tF.mse_loss(a, b, reduction=reduction),
                 [rnd((6, 3), seed=1), rnd((6, 3), seed=2)], device=device)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_parity(device, reduction):
    check_parity(lambda a, b: F.binary_cross_entropy(a, b, reduction=reduction),
                 lambda a, b: tF.binary_cross_entropy(a, b, reduction=reduction),
                 [rnd((6, 3), 0.02, 0.98, seed=1), rnd((6, 3), 0, 1, seed=2)], device=device)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_with_logits_parity(device, reduction):
    check_parity(lambda a, b: F.binary_cross_entropy_with_logits(a, b, reduction=reduction),
                 lambda a, b: tF.binary_cross_entropy_with_logits(a, b, reduction=reduction),
                 [rnd((6, 3), -6, 6, seed=1), rnd((6, 3), 0, 1, seed=2)], device=device)


@pytest.mark.parametrize("ignore_index", [-100, 2])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_parity(device, reduction, ignore_index):
    labels = np.array([0, 3, 2, 1, 2, 3, 0, -100])
    check_parity(lambda a, y: F.cross_entropy(a, y, reduction=reduction, ignore_index=ignore_index),
                 lambda a, y: tF.cross_entropy(a, y, reduction=reduction, ignore_index=ignore_index),
                 [rnd((8, 4), -4, 4, seed=1), labels if ignore_index == -100 else labels.clip(0)],
                 device=device)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_probability_targets_parity(device, reduction):
    p = rnd((5, 4), 0.1, 1, seed=2)
    p /= p.sum(axis=1, keepdims=True)
    check_parity(lambda a, t: F.cross_entropy(a, t, reduction=reduction),
                 lambda a, t: tF.cross_entropy(a, t, reduction=reduction),
                 [rnd((5, 4), -4, 4, seed=1), p], device=device)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_nll_loss_parity(device, reduction):
    check_parity(lambda a, y: F.nll_loss(F.log_softmax(a, axis=1), y, reduction=reduction),
                 lambda a, y: tF.nll_loss(torch.log_softmax(a, 1), y, reduction=reduction),
                 [rnd((6, 4), seed=1), np.array([0, 3, -100, 1, 2, 2])], device=device)


def test_loss_modules_parity(device):
    x, t = rnd((6, 3), seed=1), rnd((6, 3), 0, 1, seed=2)
    check_parity(lambda a, b: nn.MSELoss()(a, b), lambda a, b: tnn.MSELoss()(a, b), [x, t], device=device)
    check_parity(lambda a, b: nn.BCEWithLogitsLoss(reduction="sum")(a, b),
                 lambda a, b: tnn.BCEWithLogitsLoss(reduction="sum")(a, b), [x, t], device=device)
    check_parity(lambda a, b: nn.BCELoss()(nnx.sigmoid(a), b),
                 lambda a, b: tnn.BCELoss()(torch.sigmoid(a), b), [x, t], device=device)
    y = np.array([0, 2, 1, 1, 0, 2])
    check_parity(lambda a, b: nn.CrossEntropyLoss()(a, b), lambda a, b: tnn.CrossEntropyLoss()(a, b),
                 [x, y], device=device)


# ---------------------------------------------------------------------- extreme inputs
TINY32 = float(np.finfo(np.float32).tiny)  # below it torch may flush denormals to 0
EXTREME = np.array([[-1000.0, -100.0, -88.0, -20.0, -1e-3, 0.0, 1e-3, 20.0, 88.0, 100.0, 1000.0]],
                   dtype=np.float32)


def test_sigmoid_extreme(device):
    y = check_parity(F.sigmoid, torch.sigmoid, [EXTREME], device=device, atol=TINY32)
    v = y.numpy()
    assert np.all(np.isfinite(v))
    assert v[0, 0] == 0.0 and v[0, -1] == 1.0
    assert v[0, 1] == 0.0 or v[0, 1] > 0  # exp(-100) underflows float32 to a denormal or 0
    assert v[0, 3] > 0  # sigmoid(-20) = 2.06e-9 in float32, not 0
    np.testing.assert_allclose(v[0, 3], 2.0611537e-09, rtol=1e-5)


def test_sigmoid_extreme_fused_linear(device):
    x = np.array([[1.0], [-1.0]], dtype=np.float32)
    w = np.array([[1000.0], [100.0], [-100.0]], dtype=np.float32)
    check_parity(lambda a, b: F.linear(a, b, activation="sigmoid"),
                 lambda a, b: torch.sigmoid(a @ b.T), [x, w], device=device, atol=TINY32)


def test_tanh_extreme(device):
    check_parity(F.tanh, torch.tanh, [EXTREME], device=device, atol=TINY32)


@pytest.mark.parametrize("fn", ["softplus", "log_sigmoid"])
def test_softplus_extreme(device, fn):
    x = np.array([-1e4, -1000.0, -100.0, -20.0, 0.0, 20.0, 100.0, 1000.0, 1e4], dtype=np.float32)
    nfn, tfn = {"softplus": (F.softplus, tF.softplus), "log_sigmoid": (F.log_sigmoid, tF.logsigmoid)}[fn]
    check_parity(nfn, tfn, [x], device=device, atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_with_logits_extreme(device, reduction):
    x = np.array([[-1e4, 1e4, -1e4, 1e4, -100.0, 100.0, 0.0]], dtype=np.float32)
    t = np.array([[0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0]], dtype=np.float32)
    y = check_parity(lambda a, b: F.binary_cross_entropy_with_logits(a, b, reduction=reduction),
                     lambda a, b: tF.binary_cross_entropy_with_logits(a, b, reduction=reduction),
                     [x, t], device=device, atol=1e-12)
    assert np.all(np.isfinite(y.numpy()))


@pytest.mark.parametrize("label", [0, 1])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_extreme_logits(device, label, reduction):
    logits = np.array([[-1000.0, 1.0]], dtype=np.float32)
    y = check_parity(lambda a, b: F.cross_entropy(a, b, reduction=reduction),
                     lambda a, b: tF.cross_entropy(a, b, reduction=reduction),
                     [logits, np.array([label])], device=device, atol=1e-12)
    np.testing.assert_allclose(y.numpy().reshape(-1), [1001.0 if label == 0 else 0.0], atol=1e-12)


def test_cross_entropy_extreme_batch(device):
    logits = np.array([[-1000.0, 1.0, 0.0], [1e4, -1e4, 0.0], [30.0, 30.0, -30.0]], dtype=np.float32)
    check_parity(lambda a, b: F.cross_entropy(a, b), lambda a, b: tF.cross_entropy(a, b),
                 [logits, np.array([0, 1, 2])], device=device)


def test_log_softmax_extreme(device):
    x = np.array([[-1000.0, 1.0, 1000.0], [-1e4, 0.0, 1e4], [5.0, 5.0, 5.0]], dtype=np.float32)
    check_parity(F.log_softmax, lambda a: torch.log_softmax(a, -1), [x], device=device, atol=1e-12)
    check_parity(F.softmax, lambda a: torch.softmax(a, -1), [x], device=device, atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_probabilities_exactly_0_and_1(device, reduction):
    """PyTorch clamps each log at -100: p = 0 or 1 gives a finite loss (100 per wrong element).

    (Only the input's gradient is compared: torch's gradient w.r.t. the target is +-inf there,
    nnx's uses the same clamped logs as the forward.)"""
    p = np.array([[0.0, 1.0, 0.0, 1.0, 0.5, 1e-30]], dtype=np.float32)
    t = np.array([[0.0, 1.0, 1.0, 0.0, 1.0, 1.0]], dtype=np.float32)
    y = check_parity(lambda a, b: F.binary_cross_entropy(a, b, reduction=reduction),
                     lambda a, b: tF.binary_cross_entropy(a, b, reduction=reduction),
                     [p, t], grad=[True, False], device=device, atol=1e-12)
    if reduction == "none":
        np.testing.assert_allclose(y.numpy(), [[0.0, 0.0, 100.0, 100.0, np.log(2), 69.0776]],
                                   rtol=1e-5)


def test_bce_exact_probabilities_gradients_finite(device):
    p = np.array([0.0, 1.0, 0.0, 1.0], dtype=np.float32)
    t = np.array([0.0, 1.0, 1.0, 0.0], dtype=np.float32)
    check_parity(F.binary_cross_entropy, tF.binary_cross_entropy, [p, t], grad=[True, False],
                 device=device, rtol=1e-5, atol=1e-12)


def test_no_warnings_on_extremes(device):
    """Overflow or divide RuntimeWarnings would fail here (filterwarnings = error)."""
    x = nnx.tensor(EXTREME, device=device, requires_grad=True)
    ys = [F.sigmoid(x), F.softplus(x), F.log_sigmoid(x), F.tanh(x), F.log_softmax(x), F.softmax(x),
          F.binary_cross_entropy_with_logits(x, nnx.ones_like(x)),
          F.binary_cross_entropy(F.sigmoid(x), nnx.zeros_like(x)),
          F.cross_entropy(x, nnx.tensor([0], device=device))]
    for y in ys:
        y.sum().backward()
        assert np.all(np.isfinite(y.numpy()))
    assert np.all(np.isfinite(x.grad.numpy()))


# ---------------------------------------------------------------------- whole nets
ACTIVATIONS = {"Sigmoid": (nn.Sigmoid, tnn.Sigmoid), "Tanh": (nn.Tanh, tnn.Tanh),
               "ReLU": (nn.ReLU, tnn.ReLU), "LeakyReLU": (lambda: nn.LeakyReLU(0.05),
                                                          lambda: tnn.LeakyReLU(0.05))}
LOSSES = ["MSE", "BCE", "BCEWithLogits", "CrossEntropy"]
OPTIMIZERS = {
    "sgd": (lambda p: optim.SGD(p, lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    "sgd_momentum": (lambda p: optim.SGD(p, lr=0.05, momentum=0.9),
                     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
    "sgd_nesterov": (lambda p: optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
                     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True)),
    "sgd_momentum_wd_dampening": (
        lambda p: optim.SGD(p, lr=0.05, momentum=0.9, dampening=0.3, weight_decay=1e-2),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, dampening=0.3, weight_decay=1e-2)),
    "sgd_nesterov_wd": (lambda p: optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2),
                        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True,
                                                  weight_decay=1e-2)),
    "adam": (lambda p: optim.Adam(p, lr=0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
    "adam_wd": (lambda p: optim.Adam(p, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2),
                lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2)),
}
N_IN, N_HID, BATCH, STEPS = 5, 8, 16, 20


def _build(act, loss):
    """The same architecture in both frameworks, torch's weights copied into nnx."""
    n_out = {"MSE": 3, "BCE": 2, "BCEWithLogits": 2, "CrossEntropy": 4}[loss]
    nact, tact = ACTIVATIONS[act]
    tlayers = [tnn.Linear(N_IN, N_HID), tact(), tnn.Linear(N_HID, N_HID), tact(),
               tnn.Linear(N_HID, n_out)]
    nlayers = [nn.Linear(N_IN, N_HID), nact(), nn.Linear(N_HID, N_HID), nact(), nn.Linear(N_HID, n_out)]
    if loss == "BCE":
        tlayers.append(tnn.Sigmoid())
        nlayers.append(nn.Sigmoid())
    tm, model = tnn.Sequential(*tlayers), nn.Sequential(*nlayers)
    model.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    tcrit = {"MSE": tnn.MSELoss(), "BCE": tnn.BCELoss(), "BCEWithLogits": tnn.BCEWithLogitsLoss(),
             "CrossEntropy": tnn.CrossEntropyLoss()}[loss]
    ncrit = {"MSE": nn.MSELoss(), "BCE": nn.BCELoss(), "BCEWithLogits": nn.BCEWithLogitsLoss(),
             "CrossEntropy": nn.CrossEntropyLoss()}[loss]
    return tm, model, tcrit, ncrit, n_out


def _batches(loss, n_out, dtype, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(STEPS):
        x = rng.standard_normal((BATCH, N_IN)).astype(dtype)
        if loss == "MSE":
            y = rng.standard_normal((BATCH, n_out)).astype(dtype)
        elif loss == "CrossEntropy":
            y = rng.integers(0, n_out, BATCH)
        else:
            y = (rng.random((BATCH, n_out)) < 0.5).astype(dtype)
        out.append((x, y))
    return out


def _train_both(act, loss, opt_name, dtype, device, seed=0, steps=STEPS):
    torch.manual_seed(seed)
    tm, model, tcrit, ncrit, n_out = _build(act, loss)
    if dtype == np.float64:
        tm.double()
        model.double()
    model.to(device)
    nopt_f, topt_f = OPTIMIZERS[opt_name]
    topt, nopt = topt_f(tm.parameters()), nopt_f(model.parameters())
    tparams = dict(tm.named_parameters())
    nparams = dict(model.named_parameters())
    history = []
    for x, y in _batches(loss, n_out, dtype, seed)[:steps]:
        topt.zero_grad()
        tl = tcrit(tm(torch.tensor(x)), torch.tensor(y))
        tl.backward()
        nopt.zero_grad()
        nl = ncrit(model(nnx.tensor(x, dtype=dtype, device=device)),
                   nnx.tensor(y, dtype=y.dtype, device=device))
        nl.backward()
        grads = {k: (nparams[k].grad.numpy().copy(), tparams[k].grad.numpy().copy()) for k in nparams}
        history.append((nl.item(), tl.item(), grads))
        topt.step()
        nopt.step()
    return tm, model, history


# (rtol, atol). float32 runs drift by rounding over 20 steps (observed: losses 3e-7, parameters
# 2e-5 relative); float64 runs agree to ~1e-13, so they are checked tightly.
TOL = {np.float32: dict(loss=(2e-6, 1e-7), grad=(1e-4, 1e-6), param=(5e-5, 1e-6)),
       np.float64: dict(loss=(1e-12, 1e-15), grad=(1e-10, 1e-13), param=(1e-11, 1e-13))}


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("act", list(ACTIVATIONS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_training_parity(device, dtype, act, loss, opt_name):
    tm, model, history = _train_both(act, loss, opt_name, dtype, device)
    tol = TOL[dtype]
    for step, (nl, tl, grads) in enumerate(history):
        np.testing.assert_allclose(nl, tl, *tol["loss"], err_msg=f"loss at step {step}")
        for k, (ng, tg) in grads.items():
            np.testing.assert_allclose(ng, tg, *tol["grad"], err_msg=f"grad of {k} at step {step}")
    nsd, tsd = model.state_dict(), tm.state_dict()
    assert list(nsd) == list(tsd)
    for k in nsd:
        assert nsd[k].dtype == dtype
        np.testing.assert_allclose(nsd[k], tsd[k].numpy(), *tol["param"], err_msg=f"param {k}")
    # the run actually trained: the parameters moved
    torch.manual_seed(0)
    tm0 = _build(act, loss)[0]
    assert any(not np.allclose(nsd[k], v.detach().numpy()) for k, v in tm0.state_dict().items())


def test_training_parity_can_fail(device):
    """A 1% different learning rate is detected (the comparison is not vacuous)."""
    torch.manual_seed(0)
    tm, model, tcrit, ncrit, n_out = _build("Tanh", "MSE")
    topt = torch.optim.SGD(tm.parameters(), lr=0.1, momentum=0.9)
    nopt = optim.SGD(model.parameters(), lr=0.101, momentum=0.9)
    for x, y in _batches("MSE", n_out, np.float32):
        topt.zero_grad()
        tcrit(tm(torch.tensor(x)), torch.tensor(y)).backward()
        topt.step()
        nopt.zero_grad()
        ncrit(model(nnx.tensor(x)), nnx.tensor(y)).backward()
        nopt.step()
    w = model.state_dict()["0.weight"]
    assert not np.allclose(w, tm.state_dict()["0.weight"].numpy(), *TOL[np.float32]["param"])


def test_unfused_sequential_parity(device):
    """Activations applied as separate modules (no Linear+activation fusion) train the same."""

    class Act(nn.Module):  # a wrapper Sequential cannot fuse
        def __init__(self, f):
            super().__init__()
            self.f = f

        def forward(self, x):
            return self.f(x)

    torch.manual_seed(3)
    tm = tnn.Sequential(tnn.Linear(N_IN, N_HID), tnn.Tanh(), tnn.Linear(N_HID, 1), tnn.Sigmoid())
    model = nn.Sequential(nn.Linear(N_IN, N_HID), Act(F.tanh), nn.Linear(N_HID, 1), Act(F.sigmoid))
    model.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    topt, nopt = torch.optim.Adam(tm.parameters(), lr=0.01), optim.Adam(model.parameters(), lr=0.01)
    for x, y in _batches("BCE", 1, np.float32, seed=3):
        topt.zero_grad()
        tl = tnn.BCELoss()(tm(torch.tensor(x)), torch.tensor(y))
        tl.backward()
        topt.step()
        nopt.zero_grad()
        nl = nn.BCELoss()(model(nnx.tensor(x)), nnx.tensor(y))
        nl.backward()
        nopt.step()
        np.testing.assert_allclose(nl.item(), tl.item(), *TOL[np.float32]["loss"])
    for k, v in tm.state_dict().items():
        np.testing.assert_allclose(model.state_dict()[k], v.numpy(), *TOL[np.float32]["param"])


# ---------------------------------------------------------------------- state dicts and init
def test_state_dict_keys_match_torch():
    tm = tnn.Sequential(tnn.Linear(2, 3), tnn.ReLU(), tnn.Linear(3, 4), tnn.Sigmoid(),
                        tnn.Linear(4, 1, bias=False), tnn.Dropout(0.1), tnn.Linear(1, 2))
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 4), nn.Sigmoid(),
                          nn.Linear(4, 1, bias=False), nn.Dropout(0.1), nn.Linear(1, 2))
    tsd, nsd = tm.state_dict(), model.state_dict()
    assert list(nsd) == list(tsd) == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight",
                                      "6.weight", "6.bias"]
    for k in tsd:
        assert nsd[k].shape == tuple(tsd[k].shape)
        assert type(nsd[k]) is np.ndarray and nsd[k].dtype == np.float32
    assert [k for k, _ in model.named_parameters()] == list(nsd)
    assert [k for k, _ in model.named_parameters()] == [k for k, _ in tm.named_parameters()]
    assert len(list(model.parameters())) == len(list(tm.parameters()))


def test_nested_module_names_match_torch():
    class TNet(tnn.Module):
        def __init__(self):
            super().__init__()
            self.body = tnn.Sequential(tnn.Linear(2, 3), tnn.Tanh())
            self.head = tnn.Linear(3, 1)

    class NNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(2, 3), nn.Tanh())
            self.head = nn.Linear(3, 1)

        def forward(self, x):
            return self.head(self.body(x))

    tnet, nnet = TNet(), NNet()
    assert list(nnet.state_dict()) == list(tnet.state_dict())
    assert [k for k, _ in nnet.named_parameters()] == list(nnet.state_dict())
    nnet.load_state_dict({k: v.numpy() for k, v in tnet.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((4, 2)).astype(np.float32)
    with torch.no_grad():
        ty = tnet.head(tnet.body(torch.tensor(x)))
    _close(nnet(nnx.tensor(x)), ty)


def test_state_dict_is_a_copy():
    model = nn.Sequential(nn.Linear(2, 3))
    sd = model.state_dict()
    sd["0.weight"][...] = 123.0
    assert not np.any(model.state_dict()["0.weight"] == 123.0)


def test_load_state_dict_accepts_torch_tensors():
    torch.manual_seed(0)
    tm = tnn.Sequential(tnn.Linear(3, 2))
    model = nn.Sequential(nn.Linear(3, 2))
    model.load_state_dict(tm.state_dict())
    for k, v in tm.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[k], v.numpy())


@pytest.mark.parametrize("fin,fout", [(1, 1), (2, 2), (3, 7), (64, 10), (400, 300)])
def test_linear_init_bounds(fin, fout):
    nnx.manual_seed(0)
    layer = nn.Linear(fin, fout)
    bound = 1.0 / np.sqrt(fin)
    w, b = layer.weight.numpy(), layer.bias.numpy()
    assert w.shape == (fout, fin) and b.shape == (fout,)
    assert np.all(np.abs(w) <= bound) and np.all(np.abs(b) <= bound)
    if w.size >= 10000:  # the distribution is U(-bound, bound), like torch's
        tw = tnn.Linear(fin, fout).weight.detach().numpy()
        for arr in (w, tw):
            assert abs(arr.mean()) < 0.02 * bound
            np.testing.assert_allclose(arr.std(), bound / np.sqrt(3), rtol=0.02)
            assert arr.max() > 0.99 * bound and arr.min() < -0.99 * bound
            hist = np.histogram(arr, bins=10, range=(-bound, bound))[0] / arr.size
            np.testing.assert_allclose(hist, 0.1, atol=0.01)


def test_linear_init_reseeded_differs_and_repeats():
    nnx.manual_seed(1)
    a = nn.Linear(10, 10).weight.numpy()
    nnx.manual_seed(1)
    b = nn.Linear(10, 10).weight.numpy()
    c = nn.Linear(10, 10).weight.numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def _model():
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def _assert_untouched(model, before):
    after = model.state_dict()
    assert list(after) == list(before)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])
        assert after[k].dtype == before[k].dtype


@pytest.mark.parametrize("problem", ["missing", "unexpected", "shape", "dtype", "shape_transposed"])
def test_load_state_dict_mismatch(problem):
    model = _model()
    before = model.state_dict()
    sd = {k: np.full_like(v, 7.0) for k, v in before.items()}  # would change every value
    if problem == "missing":
        del sd["2.bias"]
        key = "2.bias"
    elif problem == "unexpected":
        sd["4.weight"] = np.zeros((2, 2), np.float32)
        key = "4.weight"
    elif problem == "shape":
        sd["2.weight"] = np.zeros((2, 5), np.float32)
        key = "2.weight"
    elif problem == "shape_transposed":
        sd["0.weight"] = sd["0.weight"].T.copy()
        key = "0.weight"
    else:
        sd["2.bias"] = sd["2.bias"].astype(np.float64)
        key = "2.bias"
    with pytest.raises(nnx.CheckpointError) as ei:
        model.load_state_dict(sd)
    msg = str(ei.value)
    assert key in msg
    if problem.startswith("shape"):
        assert str(tuple(sd[key].shape)) in msg
    if problem == "dtype":
        assert "float64" in msg and "float32" in msg
    _assert_untouched(model, before)


def test_load_state_dict_good_then_bad_key_leaves_model_untouched():
    model = _model()
    before = model.state_dict()
    sd = {k: np.full_like(v, 7.0) for k, v in before.items()}
    sd["2.bias"] = np.zeros(5, np.float32)  # the last key is bad, all earlier ones fit
    with pytest.raises(nnx.CheckpointError, match="2.bias"):
        model.load_state_dict(sd)
    _assert_untouched(model, before)


def test_load_state_dict_from_torch_float64_into_float32_refused():
    tm = tnn.Sequential(tnn.Linear(3, 4)).double()
    model = nn.Sequential(nn.Linear(3, 4))
    before = model.state_dict()
    with pytest.raises(nnx.CheckpointError, match="0.weight"):
        model.load_state_dict({k: v.numpy() for k, v in tm.state_dict().items()})
    _assert_untouched(model, before)
    model.double().load_state_dict({k: v.numpy() for k, v in tm.state_dict().items()})
    np.testing.assert_array_equal(model.state_dict()["0.weight"], tm.state_dict()["0.weight"].numpy())


def test_load_state_dict_non_strict():
    model = _model()
    sd = model.state_dict()
    del sd["2.bias"]
    sd["0.weight"] = np.ones((4, 3), np.float32)
    sd["extra"] = np.zeros(1, np.float32)
    res = model.load_state_dict(sd, strict=False)
    assert res.missing_keys == ["2.bias"] and res.unexpected_keys == ["extra"]
    np.testing.assert_array_equal(model.state_dict()["0.weight"], 1.0)


# ---------------------------------------------------------------------- optimizer state round trip
@pytest.mark.parametrize("opt_name", ["sgd_momentum", "sgd_nesterov_wd", "adam", "adam_wd"])
def test_optimizer_state_dict_round_trip(tmp_path, opt_name):
    nopt_f = OPTIMIZERS[opt_name][0]
    batches = _batches("CrossEntropy", 4, np.float32, seed=5)

    def run(model, opt, bs):
        losses = []
        for x, y in bs:
            opt.zero_grad()
            loss = F.cross_entropy(model(nnx.tensor(x)), nnx.tensor(y))
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    nnx.manual_seed(0)
    model = nn.Sequential(nn.Linear(N_IN, N_HID), nn.Tanh(), nn.Linear(N_HID, 4))
    opt = nopt_f(model.parameters())
    run(model, opt, batches[:8])
    msd, osd = model.state_dict(), opt.state_dict()
    nnx.save({"model": msd, "optimizer": osd, "epoch": 8}, tmp_path / "ckpt.npz")
    ref = run(model, opt, batches[8:])
    ref_params = model.state_dict()

    for source in ("memory", "file"):
        nnx.manual_seed(123)  # different initial weights: everything must come from the checkpoint
        model2 = nn.Sequential(nn.Linear(N_IN, N_HID), nn.Tanh(), nn.Linear(N_HID, 4))
        opt2 = nopt_f(model2.parameters())
        if source == "file":
            ck = nnx.load(tmp_path / "ckpt.npz")
            assert ck["epoch"] == 8
            msd2, osd2 = ck["model"], ck["optimizer"]
        else:
            msd2, osd2 = msd, osd
        model2.load_state_dict(msd2)
        opt2.load_state_dict(osd2)
        got = run(model2, opt2, batches[8:])
        assert got == ref, f"{source}: losses differ after restoring"
        for k, v in model2.state_dict().items():
            np.testing.assert_array_equal(v, ref_params[k], err_msg=f"{source}: {k}")


def test_optimizer_state_dict_layout_matches_torch():
    torch.manual_seed(0)
    tm, model, tcrit, ncrit, n_out = _build("Tanh", "MSE")
    topt, nopt = torch.optim.Adam(tm.parameters(), lr=0.01), optim.Adam(model.parameters(), lr=0.01)
    for x, y in _batches("MSE", n_out, np.float32)[:3]:
        for opt, m, crit, mk in ((topt, tm, tcrit, torch.tensor), (nopt, model, ncrit, nnx.tensor)):
            opt.zero_grad()
            crit(m(mk(x)), mk(y)).backward()
            opt.step()
    tsd, nsd = topt.state_dict(), nopt.state_dict()
    assert sorted(nsd["state"]) == sorted(tsd["state"])
    assert nsd["param_groups"][0]["params"] == tsd["param_groups"][0]["params"]
    for i, ts in tsd["state"].items():
        assert int(nsd["state"][i]["step"]) == int(ts["step"])
        for name in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_allclose(nsd["state"][i][name], ts[name].numpy(), rtol=1e-4, atol=1e-7)


def test_optimizer_resumes_from_torch_state():
    """A torch Adam's state (converted to NumPy) continues in nnx exactly as in torch."""
    torch.manual_seed(0)
    tm, model, tcrit, ncrit, n_out = _build("ReLU", "CrossEntropy")
    topt = torch.optim.Adam(tm.parameters(), lr=0.01)
    batches = _batches("CrossEntropy", n_out, np.float32, seed=2)
    for x, y in batches[:5]:
        topt.zero_grad()
        tcrit(tm(torch.tensor(x)), torch.tensor(y)).backward()
        topt.step()
    model.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    tsd = topt.state_dict()
    nopt = optim.Adam(model.parameters(), lr=0.5)  # lr comes from the state dict
    nopt.load_state_dict({
        "state": {i: {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in s.items()}
                  for i, s in tsd["state"].items()},
        "param_groups": [{"params": g["params"], "lr": g["lr"], "betas": g["betas"], "eps": g["eps"],
                          "weight_decay": g["weight_decay"]} for g in tsd["param_groups"]]})
    for x, y in batches[5:]:
        topt.zero_grad()
        tl = tcrit(tm(torch.tensor(x)), torch.tensor(y))
        tl.backward()
        topt.step()
        nopt.zero_grad()
        nl = ncrit(model(nnx.tensor(x)), nnx.tensor(y))
        nl.backward()
        nopt.step()
        np.testing.assert_allclose(nl.item(), tl.item(), *TOL[np.float32]["loss"])
    for k, v in tm.state_dict().items():
        np.testing.assert_allclose(model.state_dict()[k], v.numpy(), *TOL[np.float32]["param"])
