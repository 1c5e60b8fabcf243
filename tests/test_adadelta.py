"""optim.Adadelta: PyTorch's rule over 20 steps (float64 and float32, weight_decay, maximize),
the fused NumPy twin and the CUDA kernel (over the emulator) against the reference rule in every
dtype, state_dict keys and round trip, no host sync on the strict backend, checks."""
from __future__ import annotations

import numpy as np
import pytest

import nnx
from nnx import nn, optim
from nnx.backends import cuda_kernels as ck
from nnx.backends.numpy_backend import NumpyBackend

torch = pytest.importorskip("torch")

try:
    from tests.test_cuda_kernels import OPT_TOL, Launches, cb, close, storage_round  # noqa: F401
except ImportError:  # pytest's rootdir-relative import
    from test_cuda_kernels import OPT_TOL, Launches, cb, close, storage_round  # noqa: F401

SHAPES = [(5, 3), (3,), (4, 2)]
STEPS = 20
CASES = {
    "default": dict(),
    "lr-rho-eps": dict(lr=0.5, rho=0.8, eps=1e-5),
    "weight_decay": dict(lr=0.7, weight_decay=0.1),
    "maximize": dict(maximize=True),
    "maximize-wd": dict(lr=0.9, rho=0.95, weight_decay=0.05, maximize=True),
}


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s) for s in SHAPES]
    grads = [[rng.standard_normal(s) for s in SHAPES] for _ in range(STEPS)]
    return init, grads


def _groups(ps):
    return [{"params": ps[:2]}, {"params": ps[2:], "lr": 0.3, "weight_decay": 0.2}]


def _run_nnx(kw, init, grads, dtype=np.float64, fused=None, groups=False):
    # two bound Parameters (flat-buffer views) and one plain tensor (the copied path)
    ps = [nn.Parameter(nnx.tensor(a.copy(), dtype=dtype)) for a in init[:-1]]
    ps.append(nnx.tensor(init[-1].copy(), dtype=dtype, requires_grad=True))
    params = _groups(ps) if groups else ps
    opt = optim.Adadelta(params, fused=fused, **kw)
    for gs in grads:
        opt.zero_grad()
        for p, g in zip(ps, gs):
            p.grad = nnx.tensor(g.astype(dtype), dtype=dtype)
        opt.step()
    return ps, opt


def _run_torch(kw, init, grads, dtype=torch.float64, groups=False):
    ps = [torch.tensor(a.copy(), dtype=dtype, requires_grad=True) for a in init]
    params = _groups(ps) if groups else ps
    opt = torch.optim.Adadelta(params, **kw)
    for gs in grads:
        opt.zero_grad()
        for p, g in zip(ps, gs):
            p.grad = torch.tensor(g, dtype=dtype)
        opt.step()
    return ps, opt


@pytest.mark.parametrize("fused", [None, False], ids=["fused", "reference"])
@pytest.mark.parametrize("groups", [False, True], ids=["one-group", "two-groups"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_torch_20_steps_float64(case, groups, fused):
    init, grads = _problem()
    mine, opt = _run_nnx(CASES[case], init, grads, fused=fused, groups=groups)
    assert all((fg.kernel is not None) == (fused is None) for fl in opt._flats for fg in fl)
    ref, topt = _run_torch(CASES[case], init, grads, groups=groups)
    for a, b, a0 in zip(mine, ref, init):
        np.testing.assert_allclose(a.numpy(), b.detach().numpy(), rtol=1e-10, atol=1e-10)
        assert not np.allclose(a.numpy(), a0)
    sd, tsd = opt.state_dict(), topt.state_dict()
    assert sorted(sd["state"]) == sorted(tsd["state"])
    for k, st in tsd["state"].items():
        assert sorted(sd["state"][k]) == sorted(st) == ["acc_delta", "square_avg", "step"]
        for name, v in st.items():
            want = float(v) if name == "step" else v.numpy()
            np.testing.assert_allclose(sd["state"][k][name], want, rtol=1e-10, atol=1e-12)
    for gm, gt in zip(sd["param_groups"], tsd["param_groups"]):
        for k in ("lr", "rho", "eps", "weight_decay", "maximize", "params"):
            assert gm[k] == gt[k], k


@pytest.mark.parametrize("fused", [None, False], ids=["fused", "reference"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_torch_20_steps_float32(case, fused):
    init, grads = _problem(1)
    mine, _ = _run_nnx(CASES[case], init, grads, dtype=np.float32, fused=fused)
    ref, _ = _run_torch(CASES[case], init, grads, dtype=torch.float32)
    for a, b in zip(mine, ref):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a.numpy(), b.detach().numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_twin_matches_reference_rule(case):
    # The NumPy twin follows the reference rule's op order: float64 agrees to ~1 ulp.
    init, grads = _problem(2)
    fused, fopt = _run_nnx(CASES[case], init, grads, fused=True, groups=True)
    ref, ropt = _run_nnx(CASES[case], init, grads, fused=False, groups=True)
    for a, b in zip(fused, ref):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-15, atol=1e-15)
    sf, sr = fopt.state_dict()["state"], ropt.state_dict()["state"]
    for k in sr:
        for name, v in sr[k].items():
            np.testing.assert_allclose(sf[k][name], v, rtol=1e-15, atol=1e-15, err_msg=name)


def _rule64(p, g, v, u, lr, rho, eps, weight_decay, maximize, rnd=lambda x: x):
    """The documented rule in float64 (``rnd``: storage rounding of the state)."""
    G = -g if maximize else g
    if weight_decay:
        G = G + weight_decay * p
    V = rnd(rho * v + (1 - rho) * G * G)
    D = rnd(np.sqrt(u + eps) / np.sqrt(V + eps) * G)
    U = rnd(rho * u + (1 - rho) * D * D)
    return p - lr * D, V, U


def _state(n, dtype, seed=3):
    rng = np.random.default_rng(seed)
    p, g = rng.standard_normal(n), rng.standard_normal(n)
    v, u = rng.uniform(0.1, 1.5, n), rng.uniform(0.01, 0.5, n)
    return tuple(x.astype(dtype) for x in (p, g, v, u))


KERNEL_KW = {
    "plain": dict(lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, maximize=False),
    "wd": dict(lr=0.5, rho=0.8, eps=1e-6, weight_decay=0.1, maximize=False),
    "maximize": dict(lr=1.0, rho=0.9, eps=1e-5, weight_decay=0.0, maximize=True),
    "maximize-wd": dict(lr=0.7, rho=0.95, eps=1e-6, weight_decay=0.05, maximize=True),
}


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64], ids=lambda d: d.__name__)
@pytest.mark.parametrize("case", sorted(KERNEL_KW))
def test_numpy_twin_vs_float64_rule(dtype, case):
    kw = KERNEL_KW[case]
    n = (1 << 18) + 77  # more than one chunk
    arrs = _state(n, dtype)
    P, V, U = _rule64(*(x.astype(np.float64) for x in arrs), **kw)
    tp, tg, tv, tu = (x.copy() for x in arrs)
    NumpyBackend().adadelta_update_(tp, tg, tv, tu, **kw)
    tol = {np.float16: dict(rtol=5e-3, atol=3e-3), np.float32: dict(rtol=1e-5, atol=1e-6),
           np.float64: dict(rtol=1e-13, atol=1e-14)}[dtype]
    np.testing.assert_allclose(tp.astype(np.float64), P, **tol)
    np.testing.assert_allclose(tv.astype(np.float64), V, **tol)
    np.testing.assert_allclose(tu.astype(np.float64), U, **tol)
    assert np.array_equal(tg, arrs[1]), "grad modified"


def test_kernel_is_registered_per_dtype():
    for sfx in ck.DTYPE_SUFFIX.values():
        mod = ck.kernel_module(f"nnx_adadelta_{sfx}")
        assert f"nnx_adadelta_{sfx}" in ck.KERNELS[mod]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64], ids=lambda d: d.__name__)
@pytest.mark.parametrize("n", [1, 33, (1 << 20) + 3])
@pytest.mark.parametrize("case", sorted(KERNEL_KW))
def test_cuda_adadelta_kernel(cb, case, n, dtype):
    kw = KERNEL_KW[case]
    arrs = _state(n, dtype, seed=5)
    P, V, U = _rule64(*(x.astype(np.float64) for x in arrs), **kw,
                      rnd=lambda x: storage_round(x, dtype))
    dp, dg, dv, du = (cb.asarray(x) for x in arrs)
    with Launches() as L:
        cb.adadelta_update_(dp, dg, dv, du, **kw)
    assert L.delta == {f"nnx_adadelta_{ck.DTYPE_SUFFIX[np.dtype(dtype).name]}": 1}
    tol = OPT_TOL[dtype]
    close(cb.to_host(dp), P, tol, "param")
    close(cb.to_host(dv), V, tol, "square_avg")
    close(cb.to_host(du), U, tol, "acc_delta")
    assert np.array_equal(cb.to_host(dg), arrs[1]), "grad modified"
    tp, tg, tv, tu = (x.copy() for x in arrs)
    NumpyBackend().adadelta_update_(tp, tg, tv, tu, **kw)
    # float16: the twin rounds each op to float16; p - lr * delta can cancel
    twin_tol = {np.float16: (5e-3, 1e-2), np.float32: (1e-5, 1e-6)}.get(dtype, (1e-12, 1e-14))
    close(cb.to_host(dp), tp, twin_tol, "param vs twin")
    close(cb.to_host(dv), tv, twin_tol, "square_avg vs twin")
    close(cb.to_host(du), tu, twin_tol, "acc_delta vs twin")


def test_cuda_adadelta_strided(cb):
    p, g, v, u = _state(66, np.float64, seed=8)
    kw = KERNEL_KW["maximize-wd"]
    want = [x[1::2].copy() for x in (p, v, u)]
    NumpyBackend().adadelta_update_(want[0], g[1::2].copy(), want[1], want[2], **kw)
    dp, dg, dv, du = (cb.asarray(x) for x in (p, g, v, u))
    cb.adadelta_update_(dp[1::2], dg[1::2], dv[1::2], du[1::2], **kw)
    for got, orig, w in zip((dp, dv, du), (p, v, u), want):
        got = cb.to_host(got)
        close(got[1::2], w, (1e-12, 1e-14))
        assert np.array_equal(got[0::2], orig[0::2])


def test_state_dict_round_trip():
    init, grads = _problem(4)
    whole, _ = _run_nnx(CASES["maximize-wd"], init, grads, groups=True)
    half, opt = _run_nnx(CASES["maximize-wd"], init, grads[:10], groups=True)
    sd = opt.state_dict()
    ps = [nn.Parameter(nnx.tensor(p.numpy().copy(), dtype=np.float64)) for p in half]
    opt2 = optim.Adadelta([{"params": ps[:2]}, {"params": ps[2:]}], **CASES["maximize-wd"])
    opt2.load_state_dict(sd)
    assert opt2.param_groups[1]["lr"] == 0.3 and opt2.param_groups[0]["maximize"] is True
    for gs in grads[10:]:
        opt2.zero_grad()
        for p, g in zip(ps, gs):
            p.grad = nnx.tensor(g.copy(), dtype=np.float64)
        opt2.step()
    for a, b in zip(whole, ps):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-13, atol=1e-14)


def test_torch_state_dict_loads():
    init, grads = _problem(5)
    ref, topt = _run_torch({}, init, grads[:5])
    ps = [nn.Parameter(nnx.tensor(p.detach().numpy().copy(), dtype=np.float64)) for p in ref]
    tsd = topt.state_dict()
    sd = {"state": {k: {n: (float(v) if n == "step" else v.numpy()) for n, v in s.items()}
                    for k, s in tsd["state"].items()},
          "param_groups": [{k: g[k] for k in ("lr", "rho", "eps", "weight_decay", "maximize",
                                               "params")} for g in tsd["param_groups"]]}
    opt = optim.Adadelta(ps)
    opt.load_state_dict(sd)
    for gs in grads[5:]:
        opt.zero_grad()
        topt.zero_grad()
        for p, t, g in zip(ps, ref, gs):
            p.grad = nnx.tensor(g.copy(), dtype=np.float64)
            t.grad = torch.tensor(g)
        opt.step()
        topt.step()
    for a, b in zip(ps, ref):
        np.testing.assert_allclose(a.numpy(), b.detach().numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fused", [None, False])
def test_step_makes_no_host_sync(strict, fused):
    nnx.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    x = nnx.tensor(np.random.default_rng(0).standard_normal((6, 4)))
    y = nnx.tensor(np.random.default_rng(1).standard_normal((6, 2)))
    opt = optim.Adadelta(model.parameters(), weight_decay=0.01, maximize=False, fused=fused)
    assert all((fg.kernel is not None) == (fused is None) for fl in opt._flats for fg in fl)
    crit = nn.MSELoss()
    for _ in range(3):
        strict.reset_sync_count()
        opt.zero_grad()
        loss = crit(model(x), y)
        loss.backward()
        opt.step()
        assert strict.sync_counts["count"] == 0, [w for w, _ in strict.sync_counts["where"]]
    assert np.isfinite(loss.item())


def test_defaults_and_checks():
    p = [nnx.tensor(np.ones(2), requires_grad=True)]
    assert optim.Adadelta(p).defaults == dict(lr=1.0, rho=0.9, eps=1e-6, weight_decay=0,
                                              maximize=False)
    optim.Adadelta(p, fused=True)  # the CPU backend has the kernel
    for bad in (dict(lr=-1), dict(rho=1.5), dict(rho=-0.1), dict(eps=-1), dict(weight_decay=-1)):
        with pytest.raises(ValueError, match="invalid"):
            optim.Adadelta(p, **bad)
    assert "Adadelta" in optim.__all__
