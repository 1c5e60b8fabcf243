"""AdamW, amsgrad, RMSprop and Adagrad (issue 12): parity with torch.optim over 50 steps in
float64, parameter groups, state_dict round trips, the fused Adam/AdamW kernel (NumPy twin)
against the reference rule, no host sync on the strict backend, and compile's names."""
from __future__ import annotations

import numpy as np
import pytest

import nnx
from nnx import backends, optim
from nnx.backends import strict_backend as sb

torch = pytest.importorskip("torch")

SHAPES = [(5, 3), (3,), (4, 2)]


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s) for s in SHAPES]
    grads = [[rng.standard_normal(s) for s in SHAPES] for _ in range(50)]
    return init, grads


def _run_nnx(make, init, grads, groups=False, fused=None):
    # bound parameters (the flat-buffer views) and one plain tensor (the copied path)
    ps = [nnx.nn.Parameter(nnx.tensor(a.copy(), dtype=np.float64)) for a in init[:-1]]
    ps.append(nnx.tensor(init[-1].copy(), dtype=np.float64, requires_grad=True))
    opt = make(optim, _groups(ps) if groups else ps, fused)
    for gs in grads:
        opt.zero_grad()
        for p, g in zip(ps, gs):
            p.grad = nnx.tensor(g.copy(), dtype=np.float64)
        opt.step()
    return ps, opt


def _run_torch(make, init, grads, groups=False):
    ps = [torch.tensor(a.copy(), requires_grad=True) for a in init]
    opt = make(torch.optim, _groups(ps) if groups else ps, None)
    for gs in grads:
        opt.zero_grad()
        for p, g in zip(ps, gs):
            p.grad = torch.tensor(g.copy())
        opt.step()
    return ps, opt


def _groups(ps):
    return [{"params": ps[:2]}, {"params": ps[2:], "lr": 0.003, "weight_decay": 0.05}]


def _kw(fused):
    return {} if fused is None else {"fused": fused}


CASES = {
    "adam-amsgrad": lambda m, ps, f: m.Adam(ps, lr=0.01, amsgrad=True, **_kw(f)),
    "adam-amsgrad-wd": lambda m, ps, f: m.Adam(ps, lr=0.01, weight_decay=0.1, amsgrad=True, **_kw(f)),
    "adamw": lambda m, ps, f: m.AdamW(ps, lr=0.01, **_kw(f)),
    "adamw-wd-betas": lambda m, ps, f: m.AdamW(ps, lr=0.02, betas=(0.8, 0.99), eps=1e-6,
                                               weight_decay=0.3, **_kw(f)),
    "adamw-amsgrad": lambda m, ps, f: m.AdamW(ps, lr=0.01, weight_decay=0.1, amsgrad=True, **_kw(f)),
    "rmsprop": lambda m, ps, f: m.RMSprop(ps),
    "rmsprop-wd-momentum": lambda m, ps, f: m.RMSprop(ps, lr=0.005, weight_decay=0.1, momentum=0.9),
    "rmsprop-centered": lambda m, ps, f: m.RMSprop(ps, lr=0.005, alpha=0.9, centered=True),
    "rmsprop-centered-momentum": lambda m, ps, f: m.RMSprop(ps, lr=0.005, alpha=0.3, momentum=0.5,
                                                            centered=True, weight_decay=0.01),
    "adagrad": lambda m, ps, f: m.Adagrad(ps),
    "adagrad-all": lambda m, ps, f: m.Adagrad(ps, lr=0.05, lr_decay=0.01, weight_decay=0.1,
                                              initial_accumulator_value=0.3, eps=1e-8),
}


def _state_close(sd_nnx, sd_torch):
    assert sorted(sd_nnx["state"]) == sorted(sd_torch["state"])
    for k, st in sd_torch["state"].items():
        mine = sd_nnx["state"][k]
        assert sorted(mine) == sorted(st), (k, sorted(mine), sorted(st))
        for name, v in st.items():
            want = float(v) if name == "step" else v.numpy()
            np.testing.assert_allclose(mine[name], want, rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("groups", [False, True], ids=["one-group", "two-groups"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_parity_with_torch_50_steps(case, groups):
    init, grads = _problem()
    mine, opt = _run_nnx(CASES[case], init, grads, groups)
    ref, topt = _run_torch(CASES[case], init, grads, groups)
    for a, b in zip(mine, ref):
        np.testing.assert_allclose(a.numpy(), b.detach().numpy(), rtol=1e-10, atol=1e-12)
    _state_close(opt.state_dict(), topt.state_dict())
    g_mine, g_ref = opt.state_dict()["param_groups"], topt.state_dict()["param_groups"]
    for gm, gr in zip(g_mine, g_ref):
        for k in gm:
            if k in gr and k != "params":
                assert gm[k] == (list(gr[k]) if isinstance(gr[k], tuple) else gr[k]), k


@pytest.mark.parametrize("case", [c for c in sorted(CASES) if c.startswith("adam")])
def test_fused_adam_kernel_matches_reference_rule(case):
    init, grads = _problem(1)
    fused, _ = _run_nnx(CASES[case], init, grads, fused=True)
    ref, _ = _run_nnx(CASES[case], init, grads, fused=False)
    for a, b in zip(fused, ref):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_twin_vs_float64_rule(dtype, amsgrad, decoupled):
    from nnx.backends.numpy_backend import NumpyBackend

    nb = NumpyBackend()
    rng = np.random.default_rng(3)
    n = (1 << 18) + 77  # more than one chunk
    p, g, m = (rng.standard_normal(n) for _ in range(3))
    v, vmax = rng.uniform(0.1, 1, n), rng.uniform(0.1, 1, n)
    lr, b1, b2, eps, wd, step = 1e-2, 0.9, 0.999, 1e-8, 0.1, 7
    P, G, M, V, VM = (a.astype(dtype).astype(np.float64) for a in (p, g, m, v, vmax))
    if decoupled:
        P = P * (1 - lr * wd)
    else:
        G = G + wd * P
    M = M + (1 - b1) * (G - M)
    V = b2 * V + (1 - b2) * G * G
    VM = np.maximum(VM, V)
    D = VM if amsgrad else V
    P = P - lr / (1 - b1 ** step) * M / (np.sqrt(D) / np.sqrt(1 - b2 ** step) + eps)
    tp, tg, tm, tv, tvm = (a.astype(dtype) for a in (p, g, m, v, vmax))
    nb.adam_update_(tp, tg, tm, tv, lr, b1, b2, eps, wd, step,
                    max_exp_avg_sq=tvm if amsgrad else None, decoupled=decoupled)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=5e-3, atol=3e-3)
    np.testing.assert_allclose(tp.astype(np.float64), P, **tol)
    np.testing.assert_allclose(tv.astype(np.float64), V, **tol)
    if amsgrad:
        np.testing.assert_allclose(tvm.astype(np.float64), VM, **tol)


@pytest.mark.parametrize("case", ["adamw-amsgrad", "rmsprop-centered-momentum", "adagrad-all"])
def test_state_dict_round_trip(case):
    init, grads = _problem(2)
    whole, _ = _run_nnx(CASES[case], init, grads, groups=True)
    half, opt = _run_nnx(CASES[case], init, grads[:25], groups=True)
    sd = opt.state_dict()
    ps = [nnx.nn.Parameter(nnx.tensor(p.numpy().copy(), dtype=np.float64)) for p in half]
    opt2 = CASES[case](optim, _groups(ps), None)
    opt2.load_state_dict(sd)
    assert opt2.param_groups[1]["lr"] == 0.003
    for gs in grads[25:]:
        opt2.zero_grad()
        for p, g in zip(ps, gs):
            p.grad = nnx.tensor(g.copy(), dtype=np.float64)
        opt2.step()
    for a, b in zip(whole, ps):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-13, atol=1e-14)


def test_adagrad_initial_accumulator_for_a_param_without_a_grad_yet():
    a = nnx.nn.Parameter(nnx.tensor(np.ones(3), dtype=np.float64))
    b = nnx.nn.Parameter(nnx.tensor(np.ones(2), dtype=np.float64))
    ta = torch.ones(3, dtype=torch.float64, requires_grad=True)
    tb = torch.ones(2, dtype=torch.float64, requires_grad=True)
    opt = optim.Adagrad([a, b], lr=0.1, initial_accumulator_value=0.5)
    topt = torch.optim.Adagrad([ta, tb], lr=0.1, initial_accumulator_value=0.5)
    for k in range(4):
        a.grad = nnx.tensor(np.full(3, 0.3 + k), dtype=np.float64)
        ta.grad = torch.full((3,), 0.3 + k, dtype=torch.float64)
        if k >= 2:
            b.grad = nnx.tensor(np.full(2, -0.2 * k), dtype=np.float64)
            tb.grad = torch.full((2,), -0.2 * k, dtype=torch.float64)
        opt.step()
        topt.step()
    np.testing.assert_allclose(a.numpy(), ta.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(b.numpy(), tb.detach().numpy(), rtol=1e-12)


def test_hyperparameter_checks():
    p = [nnx.tensor(np.ones(2), requires_grad=True)]
    with pytest.raises(ValueError):
        optim.RMSprop(p, alpha=-1)
    with pytest.raises(ValueError):
        optim.Adagrad(p, lr_decay=-1)
    with pytest.raises(ValueError):
        optim.AdamW(p, weight_decay=-1)
    assert optim.AdamW(p).defaults["weight_decay"] == 1e-2
    assert optim.RMSprop(p).defaults == dict(lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0,
                                             momentum=0, centered=False)
    assert optim.Adagrad(p).defaults == dict(lr=0.01, lr_decay=0, weight_decay=0,
                                             initial_accumulator_value=0, eps=1e-10)
    with pytest.raises(ValueError, match="fused"):
        optim.RMSprop(p, fused=True)


@pytest.fixture
def strict():
    backends.register_strict()
    nnx.set_device("strict")
    sb.reset_sync_count()
    yield
    nnx.set_device("cpu")


@pytest.mark.parametrize("case", ["adamw-amsgrad", "adam-amsgrad-wd", "rmsprop-centered-momentum",
                                  "rmsprop", "adagrad-all"])
@pytest.mark.parametrize("fused", [None, False])
def test_step_makes_no_host_sync(strict, case, fused):
    from nnx import nn

    nnx.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    x = nnx.tensor(np.random.default_rng(0).standard_normal((6, 4)))
    y = nnx.tensor(np.random.default_rng(1).standard_normal((6, 2)))
    f = None if case.startswith("rmsprop") or case.startswith("adagrad") else fused
    opt = CASES[case](optim, model.parameters(), f)
    crit = nn.MSELoss()
    for _ in range(3):
        sb.reset_sync_count()
        opt.zero_grad()
        loss = crit(model(x), y)
        loss.backward()
        opt.step()
        n = sb.sync_counts["count"]
        assert n == 0, [w for w, _ in sb.sync_counts["where"]]
    assert np.isfinite(loss.item())


# ------------------------------------------------------------------ the CUDA Adam/AdamW kernel
# On the GPU ("cuda", marked gpu) or over the C++ emulation ("emu"): the fixtures and helpers of
# tests/test_cuda_kernels.py.
try:
    from tests.test_cuda_kernels import OPT_TOL, Launches, cb, close, rnd_state, storage_round  # noqa: F401
except ImportError:  # pytest's rootdir-relative import
    from test_cuda_kernels import OPT_TOL, Launches, cb, close, rnd_state, storage_round  # noqa: F401


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64], ids=lambda d: d.__name__)
@pytest.mark.parametrize("n", [1, 33, (1 << 20) + 3])
@pytest.mark.parametrize("amsgrad", [False, True], ids=["plain", "amsgrad"])
@pytest.mark.parametrize("decoupled", [False, True], ids=["adam", "adamw"])
def test_cuda_adam_kernel_flags(cb, decoupled, amsgrad, n, dtype):
    from nnx.backends import cuda_kernels as ck
    from nnx.backends.numpy_backend import NumpyBackend

    lr, b1, b2, eps, wd, step = 1e-2, 0.9, 0.999, 1e-8, 0.1, 3
    p, g, m, v = rnd_state(n, dtype)
    vmax = np.random.default_rng(9).uniform(0.1, 1.0, n).astype(dtype)
    P, G, M, V, VM = (a.astype(np.float64) for a in (p, g, m, v, vmax))
    if decoupled:
        P = storage_round(P * (1 - lr * wd), dtype)
    else:
        G = G + wd * P
    M = storage_round(M + (1 - b1) * (G - M), dtype)
    V = storage_round(b2 * V + (1 - b2) * G * G, dtype)
    VM = np.maximum(VM, V)
    D = VM if amsgrad else V
    P = P - lr / (1 - b1 ** step) * M / (np.sqrt(D) / np.sqrt(1 - b2 ** step) + eps)
    dp, dg, dm, dv, dvm = (cb.asarray(a) for a in (p, g, m, v, vmax))
    with Launches() as L:
        cb.adam_update_(dp, dg, dm, dv, lr, b1, b2, eps, wd, step,
                        max_exp_avg_sq=dvm if amsgrad else None, decoupled=decoupled)
    assert L.delta == {f"nnx_adam_{ck.DTYPE_SUFFIX[np.dtype(dtype).name]}": 1}
    tol = OPT_TOL[dtype]
    close(cb.to_host(dp), P, tol, "param")
    close(cb.to_host(dv), V, tol, "exp_avg_sq")
    if amsgrad:
        close(cb.to_host(dvm), VM, tol, "max_exp_avg_sq")
    else:
        assert np.array_equal(cb.to_host(dvm), vmax), "max_exp_avg_sq touched without amsgrad"
    tp, tm, tv, tvm = p.copy(), m.copy(), v.copy(), vmax.copy()
    NumpyBackend().adam_update_(tp, g.copy(), tm, tv, lr, b1, b2, eps, wd, step,
                                max_exp_avg_sq=tvm if amsgrad else None, decoupled=decoupled)
    twin_tol = {np.float16: (5e-3, 2e-3), np.float32: (1e-5, 1e-6)}.get(dtype, (1e-12, 1e-14))
    close(cb.to_host(dp), tp, twin_tol, "param vs twin")
    close(cb.to_host(dm), tm, twin_tol, "exp_avg vs twin")
    if amsgrad:
        close(cb.to_host(dvm), tvm, twin_tol, "max_exp_avg_sq vs twin")


# ------------------------------------------------------------------ Keras names
@pytest.mark.parametrize("name, cls, expect", [
    ("adamw", "AdamW", dict(lr=0.001, weight_decay=0.004, eps=1e-7, amsgrad=False)),
    ("RMSprop", "RMSprop", dict(lr=0.001, alpha=0.9, eps=1e-7, momentum=0, centered=False)),
    ("adagrad", "Adagrad", dict(lr=0.001, initial_accumulator_value=0.1, eps=1e-7)),
])
def test_compile_by_name_with_keras_defaults(name, cls, expect):
    from nnx.keras import Sequential
    from nnx.keras.layers import Dense

    x = np.random.default_rng(0).standard_normal((32, 3)).astype(np.float32)
    y = (x.sum(axis=1, keepdims=True) > 0).astype(np.float32)
    model = Sequential([Dense(8, activation="relu", input_dim=3), Dense(1, activation="sigmoid")])
    model.compile(optimizer=name, loss="binary_crossentropy")
    opt = model.optimizer
    assert type(opt).__name__ == cls
    for k, v in expect.items():
        assert opt.param_groups[0][k] == v, k
    before = [p.numpy().copy() for p in model.parameters()]
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert any(not np.array_equal(b, p.numpy()) for b, p in zip(before, model.parameters()))
