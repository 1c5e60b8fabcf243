"""AdamW, amsgrad, RMSprop and Adagrad (issue 12): parity with torch.optim over 50 steps in
float64 (fused kernel and reference rule), parameter groups, state_dict round trips, the fused
Adam/AdamW, RMSprop and Adagrad kernels (NumPy twin and CUDA kernel) against the reference rule, no host sync on the strict backend, and compile's names."""
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
    "rmsprop": lambda m, ps, f: m.RMSprop(ps, **_kw(f)),
    "rmsprop-wd-momentum": lambda m, ps, f: m.RMSprop(ps, lr=0.005, weight_decay=0.1, momentum=0.9,
                                                      **_kw(f)),
    "rmsprop-centered": lambda m, ps, f: m.RMSprop(ps, lr=0.005, alpha=0.9, centered=True, **_kw(f)),
    "rmsprop-centered-momentum": lambda m, ps, f: m.RMSprop(ps, lr=0.005, alpha=0.3, momentum=0.5,
                                                            centered=True, weight_decay=0.01,
                                                            **_kw(f)),
    "adagrad": lambda m, ps, f: m.Adagrad(ps, **_kw(f)),
    "adagrad-all": lambda m, ps, f: m.Adagrad(ps, lr=0.05, lr_decay=0.01, weight_decay=0.1,
                                              initial_accumulator_value=0.3, eps=1e-8, **_kw(f)),
}


def _state_close(sd_nnx, sd_torch):
    assert sorted(sd_nnx["state"]) == sorted(sd_torch["state"])
    for k, st in sd_torch["state"].items():
        mine = sd_nnx["state"][k]
        assert sorted(mine) == sorted(st), (k, sorted(mine), sorted(st))
        for name, v in st.items():
            want = float(v) if name == "step" else v.numpy()
            np.testing.assert_allclose(mine[name], want, rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("fused", [None, False], ids=["fused-default", "reference"])
@pytest.mark.parametrize("groups", [False, True], ids=["one-group", "two-groups"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_parity_with_torch_50_steps(case, groups, fused):
    init, grads = _problem()
    mine, opt = _run_nnx(CASES[case], init, grads, groups, fused=fused)
    if fused is None:  # the kernel runs by default (every built-in has one on the CPU backend)
        assert all(fg.kernel is not None for fl in opt._flats for fg in fl)
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


@pytest.mark.parametrize("groups", [False, True], ids=["one-group", "two-groups"])
@pytest.mark.parametrize("case", [c for c in sorted(CASES) if c.startswith(("rmsprop", "adagrad"))])
def test_fused_rmsprop_adagrad_kernel_matches_reference_rule(case, groups):
    # The NumPy twins follow the reference rules' op order: float64 agrees to ~1e-15.
    init, grads = _problem(1)
    fused, fopt = _run_nnx(CASES[case], init, grads, groups, fused=True)
    ref, ropt = _run_nnx(CASES[case], init, grads, groups, fused=False)
    assert all(fg.kernel is not None for fl in fopt._flats for fg in fl)
    assert all(fg.kernel is None for fl in ropt._flats for fg in fl)
    for a, b in zip(fused, ref):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-15, atol=1e-15)
    sf, sr = fopt.state_dict()["state"], ropt.state_dict()["state"]
    for k in sr:
        for name, v in sr[k].items():
            np.testing.assert_allclose(sf[k][name], v, rtol=1e-15, atol=1e-15, err_msg=name)


def _rmsprop_rule64(p, g, v, b, a, lr, alpha, eps, weight_decay, momentum, centered,
                    rnd=lambda x: x):
    """The documented RMSprop rule in float64 (``rnd``: storage rounding of the state)."""
    G = g + weight_decay * p if weight_decay else g
    V = rnd(alpha * v + (1 - alpha) * G * G)
    A = a
    if centered:
        w = 1 - alpha
        A = rnd(a + w * (G - a) if w < 0.5 else G - (G - a) * (1 - w))
        avg = np.sqrt(V - A * A) + eps
    else:
        avg = np.sqrt(V) + eps
    B = b
    if momentum > 0:
        B = rnd(momentum * b + G / avg)
        P = p - lr * B
    else:
        P = p - lr * G / avg
    return P, V, B, A


def _adagrad_rule64(p, g, s, clr, wd, eps, rnd=lambda x: x):
    G = g + wd * p if wd else g
    S = rnd(s + G * G)
    return p - clr * G / (np.sqrt(S) + eps), S


RMSPROP_KW = {
    "plain": dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False),
    "wd-momentum": dict(lr=5e-3, alpha=0.9, eps=1e-8, weight_decay=0.1, momentum=0.9,
                        centered=False),
    "centered": dict(lr=5e-3, alpha=0.9, eps=1e-6, weight_decay=0.0, momentum=0.0, centered=True),
    # alpha < 0.5: the lerp's second form
    "centered-momentum-wd": dict(lr=5e-3, alpha=0.3, eps=1e-8, weight_decay=0.01, momentum=0.5,
                                 centered=True),
}


def _rmsprop_state(n, dtype, seed=3):
    rng = np.random.default_rng(seed)
    p, g, b = rng.standard_normal(n), rng.standard_normal(n), rng.standard_normal(n)
    a = rng.uniform(-0.1, 0.1, n)
    v = rng.uniform(0.5, 1.5, n)  # v - a^2 stays well away from 0 after the step
    return tuple(x.astype(dtype) for x in (p, g, v, b, a))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("case", sorted(RMSPROP_KW))
def test_rmsprop_twin_vs_float64_rule(dtype, case):
    from nnx.backends.numpy_backend import NumpyBackend

    kw = RMSPROP_KW[case]
    n = (1 << 18) + 77  # more than one chunk
    arrs = _rmsprop_state(n, dtype)
    P, V, B, A = _rmsprop_rule64(*(x.astype(np.float64) for x in arrs), **kw)
    tp, tg, tv, tb, ta = (x.copy() for x in arrs)
    NumpyBackend().rmsprop_update_(tp, tg, tv, tb if kw["momentum"] else None,
                                   ta if kw["centered"] else None, **kw)
    # float16: the twin rounds every step to float16, and sqrt(v - a^2) can cancel (centered)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=5e-3, atol=1e-2)
    np.testing.assert_allclose(tp.astype(np.float64), P, **tol)
    np.testing.assert_allclose(tv.astype(np.float64), V, **tol)
    np.testing.assert_allclose(tb.astype(np.float64), B, **tol)
    np.testing.assert_allclose(ta.astype(np.float64), A, **tol)
    assert np.array_equal(tg, arrs[1]), "grad modified"


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_adagrad_twin_vs_float64_rule(dtype, wd):
    from nnx.backends.numpy_backend import NumpyBackend

    rng = np.random.default_rng(4)
    n = (1 << 18) + 77
    p, g = (rng.standard_normal(n).astype(dtype) for _ in range(2))
    s = rng.uniform(0.1, 2.0, n).astype(dtype)
    lr, lr_decay, step, eps = 0.05, 0.01, 7, 1e-8
    clr = lr / (1 + (step - 1) * lr_decay)
    P, S = _adagrad_rule64(p.astype(np.float64), g.astype(np.float64), s.astype(np.float64),
                           clr, wd, eps)
    tp, ts, tg = p.copy(), s.copy(), g.copy()
    NumpyBackend().adagrad_update_(tp, tg, ts, clr, wd, eps)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=5e-3, atol=3e-3)
    np.testing.assert_allclose(tp.astype(np.float64), P, **tol)
    np.testing.assert_allclose(ts.astype(np.float64), S, **tol)
    assert np.array_equal(tg, g), "grad modified"


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
    optim.RMSprop(p, fused=True)  # every built-in has a kernel on the CPU backend
    optim.Adagrad(p, fused=True)

    class SignSGD(optim.Optimizer):  # a rule without a kernel
        def __init__(self, params, lr=0.01, fused=None):
            super().__init__(params, dict(lr=lr), fused=fused)

        def update(self, xp, param, grad, state, group, step):
            param -= float(group["lr"]) * xp.sign(grad)

    with pytest.raises(ValueError, match="fused"):
        SignSGD(p, fused=True)


@pytest.mark.parametrize("case", ["adamw-amsgrad", "adam-amsgrad-wd", "rmsprop-centered-momentum",
                                  "rmsprop", "rmsprop-wd-momentum", "rmsprop-centered",
                                  "adagrad", "adagrad-all"])
@pytest.mark.parametrize("fused", [None, False])
def test_step_makes_no_host_sync(strict, case, fused):
    from nnx import nn

    nnx.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    x = nnx.tensor(np.random.default_rng(0).standard_normal((6, 4)))
    y = nnx.tensor(np.random.default_rng(1).standard_normal((6, 2)))
    opt = CASES[case](optim, model.parameters(), fused)
    assert all((fg.kernel is not None) == (fused is None) for fl in opt._flats for fg in fl)
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


# ------------------------------------------------------------------ the CUDA RMSprop/Adagrad kernels
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64], ids=lambda d: d.__name__)
@pytest.mark.parametrize("n", [1, 33, (1 << 20) + 3])
@pytest.mark.parametrize("case", sorted(RMSPROP_KW))
def test_cuda_rmsprop_kernel_flags(cb, case, n, dtype):
    from nnx.backends import cuda_kernels as ck
    from nnx.backends.numpy_backend import NumpyBackend

    kw = RMSPROP_KW[case]
    has_m, centered = kw["momentum"] > 0, kw["centered"]
    arrs = _rmsprop_state(n, dtype, seed=5)
    P, V, B, A = _rmsprop_rule64(*(x.astype(np.float64) for x in arrs), **kw,
                                 rnd=lambda x: storage_round(x, dtype))
    dp, dg, dv, db, da = (cb.asarray(x) for x in arrs)
    with Launches() as L:
        cb.rmsprop_update_(dp, dg, dv, db if has_m else None, da if centered else None, **kw)
    assert L.delta == {f"nnx_rmsprop_{ck.DTYPE_SUFFIX[np.dtype(dtype).name]}": 1}
    tol = OPT_TOL[dtype]
    close(cb.to_host(dp), P, tol, "param")
    close(cb.to_host(dv), V, tol, "square_avg")
    close(cb.to_host(db), B, tol, "momentum_buffer")
    close(cb.to_host(da), A, tol, "grad_avg")
    assert np.array_equal(cb.to_host(dg), arrs[1]), "grad modified"
    if not has_m:
        assert np.array_equal(cb.to_host(db), arrs[3]), "momentum_buffer touched without momentum"
    if not centered:
        assert np.array_equal(cb.to_host(da), arrs[4]), "grad_avg touched without centered"
    tp, tg, tv, tb, ta = (x.copy() for x in arrs)
    NumpyBackend().rmsprop_update_(tp, tg, tv, tb if has_m else None, ta if centered else None,
                                   **kw)
    # float16: the twin rounds each op to float16; momentum * buf + g / avg can cancel
    twin_tol = {np.float16: (5e-3, 1e-2), np.float32: (1e-5, 1e-6)}.get(dtype, (1e-12, 1e-14))
    close(cb.to_host(dp), tp, twin_tol, "param vs twin")
    close(cb.to_host(dv), tv, twin_tol, "square_avg vs twin")
    close(cb.to_host(db), tb, twin_tol, "momentum_buffer vs twin")
    close(cb.to_host(da), ta, twin_tol, "grad_avg vs twin")


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64], ids=lambda d: d.__name__)
@pytest.mark.parametrize("n", [1, 33, (1 << 20) + 3])
@pytest.mark.parametrize("wd", [0.0, 0.1], ids=["plain", "wd"])
def test_cuda_adagrad_kernel_flags(cb, wd, n, dtype):
    from nnx.backends import cuda_kernels as ck
    from nnx.backends.numpy_backend import NumpyBackend

    lr, lr_decay, step, eps = 0.05, 0.01, 4, 1e-8
    clr = lr / (1 + (step - 1) * lr_decay)
    p, g, _, s = rnd_state(n, dtype)
    P, S = _adagrad_rule64(p.astype(np.float64), g.astype(np.float64), s.astype(np.float64),
                           clr, wd, eps, rnd=lambda x: storage_round(x, dtype))
    dp, dg, ds = (cb.asarray(a) for a in (p, g, s))
    with Launches() as L:
        cb.adagrad_update_(dp, dg, ds, clr, wd, eps)
    assert L.delta == {f"nnx_adagrad_{ck.DTYPE_SUFFIX[np.dtype(dtype).name]}": 1}
    tol = OPT_TOL[dtype]
    close(cb.to_host(dp), P, tol, "param")
    close(cb.to_host(ds), S, tol, "sum")
    assert np.array_equal(cb.to_host(dg), g), "grad modified"
    tp, ts = p.copy(), s.copy()
    NumpyBackend().adagrad_update_(tp, g.copy(), ts, clr, wd, eps)
    twin_tol = {np.float16: (5e-3, 2e-3), np.float32: (1e-5, 1e-6)}.get(dtype, (1e-12, 1e-14))
    close(cb.to_host(dp), tp, twin_tol, "param vs twin")
    close(cb.to_host(ds), ts, twin_tol, "sum vs twin")


def test_cuda_rmsprop_adagrad_strided(cb):
    # Strided views go through contiguous copies and are written back (as adam_update_).
    rng = np.random.default_rng(8)
    n = 66
    p, g, v, b, a = _rmsprop_state(n, np.float64, seed=8)
    s = rng.uniform(0.5, 1.5, n)
    kw = RMSPROP_KW["centered-momentum-wd"]
    want = [x.copy() for x in (p, v, b, a)]
    from nnx.backends.numpy_backend import NumpyBackend

    nb = NumpyBackend()
    w0, w1, w2, w3 = (x[1::2].copy() for x in want)
    nb.rmsprop_update_(w0, g[1::2].copy(), w1, w2, w3, **kw)
    dp, dg, dv, db, da = (cb.asarray(x) for x in (p, g, v, b, a))
    cb.rmsprop_update_(dp[1::2], dg[1::2], dv[1::2], db[1::2], da[1::2], **kw)
    for got, orig, w in zip((dp, dv, db, da), (p, v, b, a), (w0, w1, w2, w3)):
        got = cb.to_host(got)
        close(got[1::2], w, (1e-12, 1e-14))
        assert np.array_equal(got[0::2], orig[0::2])
    ws, wp = s[1::2].copy(), p[1::2].copy()
    nb.adagrad_update_(wp, g[1::2].copy(), ws, 0.05, 0.1, 1e-10)
    dp, ds = cb.asarray(p), cb.asarray(s)
    cb.adagrad_update_(dp[1::2], dg[1::2], ds[1::2], 0.05, 0.1, 1e-10)
    close(cb.to_host(dp)[1::2], wp, (1e-12, 1e-14))
    close(cb.to_host(ds)[1::2], ws, (1e-12, 1e-14))
    assert np.array_equal(cb.to_host(dp)[0::2], p[0::2])


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
