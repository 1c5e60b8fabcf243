"""Optimizers: the reference rules in nnx/optim.py against PyTorch, the backends' fused kernels
against the reference rules, and a new optimizer written from its reference rule alone."""
import numpy as np
import pytest

from nnx import backends
import nnx
import nnx.functional as F
from nnx import nn, optim

torch = pytest.importorskip("torch")

STEPS = 20

SGD_CASES = {
    "plain": dict(lr=0.1),
    "momentum": dict(lr=0.05, momentum=0.9),
    "dampening": dict(lr=0.05, momentum=0.9, dampening=0.3),
    "nesterov": dict(lr=0.05, momentum=0.9, nesterov=True),
    "weight_decay": dict(lr=0.05, momentum=0.8, weight_decay=0.01),
    "nesterov_wd": dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.02),
}
ADAM_CASES = {
    "adam": dict(lr=0.01),
    "adam_wd": dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05),
}
ADADELTA_CASES = {
    "adadelta": dict(lr=1.0),
    "adadelta_wd_maximize": dict(lr=0.5, rho=0.8, eps=1e-5, weight_decay=0.05, maximize=True),
}
CASES = {**{f"sgd-{k}": ("SGD", v) for k, v in SGD_CASES.items()},
         **{k: ("Adam", v) for k, v in ADAM_CASES.items()},
         **{k: ("Adadelta", v) for k, v in ADADELTA_CASES.items()}}


def _data(dtype):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((16, 5)).astype(dtype)
    y = rng.standard_normal((16, 3)).astype(dtype)
    return x, y


def _init(dtype):
    rng = np.random.default_rng(3)
    return {"0.weight": rng.standard_normal((8, 5)) * 0.4, "0.bias": rng.standard_normal(8) * 0.1,
            "2.weight": rng.standard_normal((3, 8)) * 0.4, "2.bias": rng.standard_normal(3) * 0.1,
            "extra": rng.standard_normal((3,)) * 0.5, "plain": rng.standard_normal((3,)) * 0.5}


def _nnx_train(name, kw, dtype, device="cpu", fused=None, skip_extra=False, steps=STEPS):
    """Train a Linear-Tanh-Linear net plus a lone Parameter ``extra`` and a plain tensor
    ``plain`` (both added to the output); with ``skip_extra`` the loss leaves ``extra`` out on
    even steps, so it has no gradient then (the per-parameter path). Returns the final values
    and the optimizer."""
    nnx.set_device(device)
    init = _init(dtype)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype=dtype)
    model.load_state_dict({k: init[k].astype(dtype) for k in ("0.weight", "0.bias", "2.weight", "2.bias")})
    extra = nn.Parameter(nnx.tensor(init["extra"], dtype=dtype))
    plain = nnx.tensor(init["plain"], dtype=dtype, requires_grad=True)
    cls = getattr(optim, name) if isinstance(name, str) else name
    opt = cls(list(model.parameters()) + [extra, plain], fused=fused, **kw)
    x, y = (nnx.tensor(a, dtype=dtype) for a in _data(dtype))
    for t in range(steps):
        opt.zero_grad()
        out = model(x) + plain
        if not (skip_extra and t % 2 == 0):
            out = out + extra
        F.mse_loss(out, y).backward()
        opt.step()
    vals = dict(model.state_dict())
    vals["extra"], vals["plain"] = extra.numpy(), plain.numpy()
    return vals, opt, (model, extra, plain)


def _torch_train(name, kw, skip_extra=False, steps=STEPS, opt_cls=None):
    init = _init(np.float64)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    with torch.no_grad():
        for k, p in model.state_dict().items():
            p.copy_(torch.from_numpy(init[k]))
    extra = torch.nn.Parameter(torch.from_numpy(init["extra"].copy()))
    plain = torch.from_numpy(init["plain"].copy()).requires_grad_()
    cls = opt_cls or getattr(torch.optim, name)
    opt = cls(list(model.parameters()) + [extra, plain], **kw)
    x, y = (torch.from_numpy(a) for a in _data(np.float64))
    for t in range(steps):
        opt.zero_grad()
        out = model(x) + plain
        if not (skip_extra and t % 2 == 0):
            out = out + extra
        torch.nn.functional.mse_loss(out, y).backward()
        opt.step()
    vals = {k: p.detach().numpy() for k, p in model.state_dict().items()}
    vals["extra"], vals["plain"] = extra.detach().numpy(), plain.detach().numpy()
    return vals


def _fit(opt, loss_fn, steps):
    """``steps`` optimizer steps on ``loss_fn()``; the losses."""
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
        losses.append(loss)
    return losses


def _close(a, b, rtol, atol):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=atol, err_msg=k)


@pytest.mark.parametrize("skip_extra", [False, True], ids=["all-grads", "some-missing"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_reference_rule_matches_torch_in_float64(case, skip_extra):
    name, kw = CASES[case]
    got, opt, _ = _nnx_train(name, kw, np.float64, fused=False, skip_extra=skip_extra)
    want = _torch_train(name, kw, skip_extra=skip_extra)
    _close(got, want, rtol=1e-12, atol=1e-12)
    # the values moved (a rule that did nothing would not match torch, but be explicit)
    assert not np.allclose(got["0.weight"], _init(np.float64)["0.weight"])


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("skip_extra", [False, True], ids=["all-grads", "some-missing"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_kernel_matches_the_reference_rule(device, case, skip_extra, dtype):
    name, kw = CASES[case]
    fused, opt, (_, extra, plain) = _nnx_train(name, kw, dtype, device, fused=None, skip_extra=skip_extra)
    ref, ref_opt, (_, ref_extra, ref_plain) = _nnx_train(name, kw, dtype, device, fused=False,
                                                         skip_extra=skip_extra)
    tol = 1e-12 if dtype == np.float64 else 2e-6
    _close(fused, ref, rtol=tol, atol=tol)
    if skip_extra:  # the per-parameter path ran: ``extra`` took half the steps
        assert opt.state[extra]["step"] == STEPS // 2 and opt.state[plain]["step"] == STEPS
        assert ref_opt.state[ref_extra]["step"] == STEPS // 2
    for p, rp in ((extra, ref_extra), (plain, ref_plain)):
        assert opt.state[p].keys() == ref_opt.state[rp].keys()
        for k in opt.state_names:
            if k in opt.state[p]:
                np.testing.assert_allclose(opt.state[p][k].numpy(), ref_opt.state[rp][k].numpy(),
                                           rtol=tol, atol=tol, err_msg=k)


def test_fused_kernel_matches_torch_in_float64():
    for case, (name, kw) in CASES.items():
        got, _, _ = _nnx_train(name, kw, np.float64, fused=True)
        _close(got, _torch_train(name, kw), rtol=1e-12, atol=1e-12)


def test_plain_tensor_trains_alongside_parameters_as_in_torch():
    """A plain leaf tensor keeps its own array (as in torch), gets its own gradient, and is
    updated exactly as torch updates it, next to Parameters in the flat buffer."""
    name, kw = "Adam", dict(lr=0.05, weight_decay=0.01)
    init = _init(np.float64)
    w = nnx.tensor(init["plain"], dtype=np.float64, requires_grad=True)
    p = nn.Parameter(nnx.tensor(init["extra"], dtype=np.float64))
    own = w.data
    opt = optim.Adam([w, p], **kw)
    tw = torch.from_numpy(init["plain"].copy()).requires_grad_()
    tp = torch.nn.Parameter(torch.from_numpy(init["extra"].copy()))
    topt = torch.optim.Adam([tw, tp], **kw)
    target = np.array([1.0, -2.0, 0.5])
    for t in range(STEPS):
        opt.zero_grad()
        topt.zero_grad()
        ((w * p - nnx.tensor(target, dtype=np.float64)) ** 2).sum().backward()
        ((tw * tp - torch.from_numpy(target)) ** 2).sum().backward()
        g_before = w.grad.numpy().copy()
        opt.step()
        topt.step()
        np.testing.assert_array_equal(w.grad.numpy(), g_before)  # step leaves .grad alone
        if t == 3:  # an in-place edit of the values is picked up, as in torch
            with nnx.no_grad():
                w.data[0] = 0.25
            with torch.no_grad():
                tw[0] = 0.25
    assert w.data is own
    np.testing.assert_allclose(w.numpy(), tw.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(p.numpy(), tp.detach().numpy(), rtol=1e-12, atol=1e-12)
    w.data = w.data.copy()  # new storage: the optimizer updates that
    opt.zero_grad()
    (w * p).sum().backward()
    before = w.numpy().copy()
    opt.step()
    assert not np.array_equal(w.numpy(), before)


def test_flat_buffers_follow_a_dtype_move_keeping_state():
    """After ``model.double()`` the optimizer re-flattens, keeping the step counts and the
    Adam moments: the result is that of a model in float64 all along (up to the float32 of
    the first steps), on the fused and on the reference path (a state reset would be off by
    about the learning rate)."""
    kw = dict(lr=0.01, weight_decay=0.01)
    x, y = _data(np.float64)
    results = []
    for fused, move in ((None, True), (False, True), (None, False)):
        nnx.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
        if not move:
            model.double()
        opt = optim.Adam(model.parameters(), fused=fused, **kw)

        def loss():
            dt = model[0].weight.dtype
            return F.mse_loss(model(nnx.tensor(x, dtype=dt)), nnx.tensor(y, dtype=dt))

        _fit(opt, loss, 3)
        model.double()
        _fit(opt, loss, 3)
        assert model[0].weight.dtype == np.float64
        assert all(s["step"] == 6 for s in opt.state.values())
        results.append(dict(model.state_dict()))
    _close(results[0], results[1], rtol=1e-6, atol=1e-6)
    _close(results[0], results[2], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- a new optimizer, rule only
class Adagrad(optim.Optimizer):
    """PyTorch's Adagrad (no initial accumulator), written from the reference rule alone."""

    state_names = ("sum",)

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0, eps=1e-10, fused=None):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, eps=eps),
                         fused=fused)

    def update(self, xp, param, grad, state, group, step):
        lr, lr_decay = float(group["lr"]), float(group["lr_decay"])
        weight_decay, eps = float(group["weight_decay"]), float(group["eps"])
        if weight_decay:
            grad = grad + weight_decay * param
        clr = lr / (1 + (step - 1) * lr_decay)
        state["sum"] += grad * grad
        param += -clr * grad / (xp.sqrt(state["sum"]) + eps)


ADAGRAD = dict(lr=0.1, lr_decay=0.01, weight_decay=0.02, eps=1e-10)


@pytest.mark.parametrize("skip_extra", [False, True], ids=["all-grads", "some-missing"])
def test_new_optimizer_from_its_rule_matches_torch_adagrad(skip_extra):
    got, _, _ = _nnx_train(Adagrad, ADAGRAD, np.float64, skip_extra=skip_extra)
    want = _torch_train(None, ADAGRAD, skip_extra=skip_extra, opt_cls=torch.optim.Adagrad)
    _close(got, want, rtol=1e-12, atol=1e-12)


def test_new_optimizer_trains_a_model_as_numpy_computes(device):
    """Linear regression by hand in NumPy (analytic gradient) against nnx with the new class."""
    nnx.set_device(device)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 4))
    y = x @ np.array([[1.0], [-2.0], [0.5], [3.0]]) + 0.7
    w0, b0 = rng.standard_normal((1, 4)) * 0.1, np.zeros(1)
    layer = nn.Linear(4, 1).double()
    layer.load_state_dict({"weight": w0, "bias": b0})
    opt = Adagrad(layer.parameters(), **ADAGRAD)
    xt, yt = nnx.tensor(x, dtype=np.float64), nnx.tensor(y, dtype=np.float64)
    losses = [loss.item() for loss in _fit(opt, lambda: F.mse_loss(layer(xt), yt), 50)]
    w, b, sw, sb = w0.copy(), b0.copy(), np.zeros_like(w0), np.zeros_like(b0)
    lr, decay, wd, eps = ADAGRAD["lr"], ADAGRAD["lr_decay"], ADAGRAD["weight_decay"], ADAGRAD["eps"]
    for t in range(1, 51):
        r = x @ w.T + b - y
        gw, gb = 2 * r.T @ x / r.size + wd * w, 2 * r.sum(0) / r.size + wd * b
        clr = lr / (1 + (t - 1) * decay)
        sw += gw * gw
        sb += gb * gb
        w -= clr * gw / (np.sqrt(sw) + eps)
        b -= clr * gb / (np.sqrt(sb) + eps)
    np.testing.assert_allclose(layer.weight.numpy(), w, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.bias.numpy(), b, rtol=1e-10, atol=1e-12)
    assert losses[-1] < 0.5 * losses[0]
    np.testing.assert_allclose(opt.state[layer.weight]["sum"].numpy(), sw, rtol=1e-10)


def test_new_optimizer_has_no_kernel_to_require():
    p = nn.Parameter(nnx.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="fused=True"):
        Adagrad([p], fused=True)
    Adagrad([p], fused=None)  # the reference rule
    optim.SGD([p], lr=0.1, fused=True)  # the built-ins have kernels on every backend


def test_new_optimizer_state_dict_round_trip():
    def run(split):
        nnx.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 4), nn.Sigmoid(), nn.Linear(4, 3)).double()
        opt = Adagrad(model.parameters(), **ADAGRAD)
        x, y = (nnx.tensor(a, dtype=np.float64) for a in _data(np.float64))
        for t in range(8):
            if t == split:
                sd, msd = opt.state_dict(), model.state_dict()
                model = nn.Sequential(nn.Linear(5, 4), nn.Sigmoid(), nn.Linear(4, 3)).double()
                model.load_state_dict(msd)
                opt = Adagrad(model.parameters(), lr=1.0)
                opt.load_state_dict(sd)
                assert opt.param_groups[0]["lr"] == ADAGRAD["lr"]
                assert sorted(sd["state"][0]) == ["step", "sum"] and sd["state"][0]["step"] == split
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
        return model.state_dict()

    _close(run(split=None), run(split=4), rtol=0, atol=0)


# ---------------------------------------------------------------- state_dict of the built-ins
@pytest.mark.parametrize("case", ["sgd-nesterov_wd", "adam_wd"])
def test_state_dict_round_trip_between_fused_and_reference(case):
    """Half the steps fused, save, load into a reference-path optimizer, finish: the same as
    all steps on one optimizer; the state layout is PyTorch's."""
    name, kw = CASES[case]
    full, _, _ = _nnx_train(name, kw, np.float64, fused=None)
    _, opt, (model, extra, plain) = _nnx_train(name, kw, np.float64, fused=None, steps=STEPS // 2)
    sd = opt.state_dict()
    tsd = torch.optim.__dict__[name]([torch.zeros(1, requires_grad=True)], **kw).state_dict()
    assert set(sd["param_groups"][0]) >= set(k for k in tsd["param_groups"][0]
                                              if k not in ("maximize", "foreach", "differentiable",
                                                           "fused", "capturable", "amsgrad",
                                                           "decoupled_weight_decay"))
    assert sorted(sd["state"]) == list(range(6))
    params = list(model.parameters()) + [extra, plain]
    opt2 = getattr(optim, name)(params, fused=False, **kw)
    opt2.load_state_dict(sd)
    x, y = (nnx.tensor(a, dtype=np.float64) for a in _data(np.float64))
    _fit(opt2, lambda: F.mse_loss(model(x) + plain + extra, y), STEPS - STEPS // 2)
    got = dict(model.state_dict())
    got["extra"], got["plain"] = extra.numpy(), plain.numpy()
    _close(got, full, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_reference_rule_makes_no_host_sync_on_the_strict_backend(opt_name):
    from nnx.backends import strict_backend as sb

    backends.register_strict()
    nnx.set_device("strict")
    nnx.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3,
                    fused=False) if opt_name == "sgd" else \
        optim.Adam(model.parameters(), lr=0.01, weight_decay=1e-3, fused=False)
    x, y = (nnx.tensor(a) for a in _data(np.float32))
    before = model[0].weight.numpy().copy()
    sb.reset_sync_count()
    _fit(opt, lambda: F.mse_loss(model(x), y), 3)
    assert sb.sync_counts["count"] == 0, sb.sync_counts["where"]
    assert not np.array_equal(model[0].weight.numpy(), before)
