"""GELU (exact and tanh), SiLU, ELU and Softplus: the entries of backends.activations, their
NumPy twins and CUDA kernels (emulated), F.*, the nn modules, fusion after a Linear and Keras."""
from __future__ import annotations

import math

import numpy as np
import pytest

import nnx
import nnx.functional as F
from nnx import nn
from nnx.backends import activations as acts
from nnx.backends import cuda_kernels as ck
from nnx.testing import gradcheck

try:
    from tests import cuda_emu
except ImportError:  # pytest's rootdir-relative import
    import cuda_emu

NEW = ("gelu", "gelu_tanh", "silu", "elu", "softplus")
SLOPE = {"elu": 0.7}  # the entry parameter used where one is taken


def _ref(name, x, slope=1.0):
    """float64 references (math.erf for the exact GELU)."""
    x = np.asarray(x, np.float64)
    if name == "gelu":
        return x * 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    if name == "gelu_tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    if name == "silu":
        return x * 0.5 * (1 + np.tanh(0.5 * x))
    if name == "elu":
        return np.where(x > 0, x, slope * np.expm1(np.minimum(x, 0)))
    if name == "softplus":
        return np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20))))
    raise KeyError(name)


def _ref_grad(name, x, slope=1.0):
    x = np.asarray(x, np.float64)
    if name == "gelu":
        cdf = 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
        return cdf + x * np.exp(-0.5 * np.minimum(x * x, 1e4)) / math.sqrt(2 * math.pi)
    if name == "gelu_tanh":
        k, c = math.sqrt(2 / math.pi), np.clip(x, -20, 20)
        t = np.tanh(k * (c + 0.044715 * c ** 3))
        return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * 0.044715 * c * c)
    if name == "silu":
        s = 0.5 * (1 + np.tanh(0.5 * x))
        return s * (1 + x * (1 - s))
    if name == "elu":
        return np.where(x > 0, 1.0, slope * np.exp(np.minimum(x, 0)))
    if name == "softplus":
        z = np.exp(np.minimum(x, 20))
        return np.where(x > 20, 1.0, z / (z + 1))
    raise KeyError(name)


# ------------------------------------------------------------------ the table
def test_entries_registered_with_names():
    for name, module, keras in (("gelu", "GELU", "gelu"), ("gelu_tanh", "GELU", None),
                                ("silu", "SiLU", "swish"), ("elu", "ELU", "elu"),
                                ("softplus", "Softplus", "softplus")):
        e = acts.get(name)
        assert (e.module, e.keras) == (module, keras)
    assert acts.get("elu").has_slope and acts.get("elu").param == "alpha"
    for n in NEW:
        assert n in ck.ACTIVATION_NAMES or n in acts.names()
        assert f"nnx_bias_{n}_f32" in ck.KERNELS["bias_act_f32"]
        assert f"nnx_{n}_fwd_f64" in ck.KERNELS["elementwise_f64"]


def test_erfc_twin_accuracy():
    z = np.concatenate([np.linspace(-6, 6, 2001), [-30, -27.0, 26.0, 27.5, 40, 1e300, -1e300]])
    ref = np.array([math.erfc(v) for v in z])
    got = acts.erfc(z)
    np.testing.assert_allclose(got, ref, rtol=1e-14, atol=1e-300)  # exp(-a^2) rounding
    z32 = np.clip(z, -1e30, 1e30).astype(np.float32)
    got32 = acts.erfc(z32)
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, [math.erfc(v) for v in z32.astype(np.float64)], rtol=2e-6,
                               atol=1e-37)
    assert np.isnan(acts.erfc(np.array([np.nan])))[0]
    assert acts.erfc(np.array([np.inf, -np.inf])).tolist() == [0.0, 2.0]


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_twins_against_reference(name, dtype):
    from nnx.backends.numpy_backend import NumpyBackend

    nb = NumpyBackend()
    slope = SLOPE.get(name, 0.01)
    x = np.concatenate([np.linspace(-12, 12, 997), [0.0, -0.0, 19.99, 20.0, 20.01, -40.0, 40.0]])
    x = x.astype(dtype)
    # gelu_tanh: 1 + tanh cancels for x < 0 (as in PyTorch): absolute error ~ |x| ulp(1)
    tol = {np.float16: (4e-3, 2e-3), np.float32: (2e-6, 2e-6 if name == "gelu_tanh" else 1e-7),
           np.float64: (1e-13, 1e-15)}[dtype]
    y = nb.activation_forward(name, x, slope)
    assert y.dtype == dtype
    np.testing.assert_allclose(y.astype(np.float64), _ref(name, x, slope), *tol)
    gy = np.linspace(-2, 2, x.size).astype(dtype)
    g = nb.activation_backward(name, x, gy, slope)
    assert g.dtype == dtype
    np.testing.assert_allclose(g.astype(np.float64),
                               gy.astype(np.float64) * _ref_grad(name, x, slope), *tol)
    # in place: out is x (forward), out is gy (backward)
    xi = x.copy()
    nb.activation_forward(name, xi, slope, out=xi)
    np.testing.assert_array_equal(xi, y)
    gi = gy.copy()
    nb.activation_backward(name, x, gi, slope, out=gi)
    np.testing.assert_array_equal(gi, g)


@pytest.mark.parametrize("name", NEW)
def test_large_inputs_are_stable(name):
    """No overflow warnings (filterwarnings = error) and finite, right values at +-1e4, 1e30."""
    for dt in (np.float32, np.float64):
        big = np.array([-1e30, -1e4, -100.0, 100.0, 1e4, 1e30], dt) if dt == np.float32 else \
            np.array([-1e300, -1e4, -800.0, 800.0, 1e4, 1e300])
        x = nnx.tensor(big, dtype=dt, requires_grad=True)
        kw = {"alpha": 1.0} if name == "elu" else {}
        fn = {"gelu": F.gelu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
              "silu": F.silu, "elu": lambda t: F.elu(t, **kw), "softplus": F.softplus}[name]
        y = fn(x)
        y.sum().backward()
        yv, gv = y.numpy(), x.grad.numpy()
        assert np.isfinite(yv).all() and np.isfinite(gv).all(), (name, yv, gv)
        pos = big > 0
        np.testing.assert_allclose(yv[pos], big[pos], rtol=1e-6)
        np.testing.assert_allclose(gv[pos], 1.0, rtol=1e-6)
        neg_ref = -1.0 if name == "elu" else 0.0
        np.testing.assert_allclose(yv[~pos], neg_ref, atol=1e-6)
        np.testing.assert_allclose(gv[~pos], 0.0, atol=1e-6)


# ------------------------------------------------------------------ autograd
CASES = {
    "gelu": lambda t: F.gelu(t),
    "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
    "silu": F.silu,
    "elu": lambda t: F.elu(t, alpha=0.7),
    "elu_neg_alpha": lambda t: F.elu(t, alpha=-0.5),
    "softplus": F.softplus,
    "softplus_beta": lambda t: F.softplus(t, beta=2.0, threshold=3.0),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradcheck(case):
    rng = np.random.default_rng(1)
    # away from the kinks: ELU at 0, Softplus(beta 2, threshold 3) at x = 1.5
    x = rng.uniform(-4, 4, (5, 7))
    x[np.abs(x) < 1e-2] = 0.5
    x[np.abs(x - 1.5) < 1e-2] = 1.0
    x = np.concatenate([x.ravel(), [-30.0, 25.0, 9.0, -9.0]])  # the tails too
    gradcheck(CASES[case], [nnx.tensor(x, dtype="float64", requires_grad=True)])


TORCH = {
    "gelu": (lambda t: F.gelu(t), lambda tF, t: tF.gelu(t)),
    "gelu_tanh": (lambda t: F.gelu(t, approximate="tanh"),
                  lambda tF, t: tF.gelu(t, approximate="tanh")),
    "silu": (F.silu, lambda tF, t: tF.silu(t)),
    "elu": (F.elu, lambda tF, t: tF.elu(t)),
    "elu_alpha": (lambda t: F.elu(t, 0.3), lambda tF, t: tF.elu(t, 0.3)),
    "softplus": (F.softplus, lambda tF, t: tF.softplus(t)),
    "softplus_beta": (lambda t: F.softplus(t, 0.5, 5.0), lambda tF, t: tF.softplus(t, 0.5, 5.0)),
}


@pytest.mark.parametrize("case", sorted(TORCH))
def test_parity_with_torch(case):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as tF

    ours, theirs = TORCH[case]
    x = np.concatenate([np.linspace(-25, 25, 2001), [0.0, 20.0, 10.0]]).astype(np.float32)
    t = nnx.tensor(x, requires_grad=True)
    y = ours(t)
    gy = np.cos(x).astype(np.float32)
    (y * nnx.tensor(gy)).sum().backward()
    tt = torch.tensor(x, requires_grad=True)
    ty = theirs(tF, tt)
    ty.backward(torch.tensor(gy))
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(t.grad.numpy(), tt.grad.numpy(), rtol=1e-5, atol=1e-5)


def test_integer_input_and_bad_arguments():
    assert F.silu(nnx.tensor([1, 2])).dtype == nnx.float32
    with pytest.raises(ValueError, match="approximate"):
        F.gelu(nnx.tensor([1.0]), approximate="erf")
    with pytest.raises(ValueError, match="approximate"):
        nn.GELU("fast")
    with pytest.raises(ValueError, match="beta"):
        F.softplus(nnx.tensor([1.0]), beta=0)


# ------------------------------------------------------------------ modules
def test_modules_repr_config_and_shape():
    mods = [nn.GELU(), nn.GELU(approximate="tanh"), nn.SiLU(), nn.ELU(), nn.ELU(alpha=0.5),
            nn.Softplus(), nn.Softplus(beta=2.0, threshold=10.0)]
    reprs = [repr(m) for m in mods]
    assert reprs == ["GELU(approximate='none')", "GELU(approximate='tanh')", "SiLU()",
                     "ELU(alpha=1.0)", "ELU(alpha=0.5)", "Softplus(beta=1.0, threshold=20.0)",
                     "Softplus(beta=2.0, threshold=10.0)"]
    x = nnx.tensor(np.linspace(-3, 3, 12).reshape(3, 4).astype(np.float32))
    for m in mods:
        cfg = m.get_config()
        m2 = nn.config.layer_from_config(cfg)
        assert type(m2) is type(m) and m2.get_config() == cfg
        np.testing.assert_array_equal(m2(x).numpy(), m(x).numpy())
        assert m.output_shape((4,)) == (4,)
    assert nn.ELU(0.5).get_config() == {"class": "ELU", "alpha": 0.5}
    assert nn.GELU("tanh").get_config() == {"class": "GELU", "approximate": "tanh"}
    np.testing.assert_allclose(nn.ELU(0.5)(x).numpy(), F.elu(x, 0.5).numpy())


@pytest.mark.parametrize("act, fused", [
    (lambda: nn.GELU(), "gelu"), (lambda: nn.GELU("tanh"), "gelu_tanh"), (nn.SiLU, "silu"),
    (lambda: nn.ELU(0.5), "elu"), (nn.Softplus, "softplus"),
    (lambda: nn.Softplus(beta=2.0), None), (lambda: nn.ELU(-1.0), None)])
def test_sequential_fuses_linear_and_activation(act, fused):
    """Linear + activation in a Sequential runs as one LinearChain node (fused entries), with
    the same values and gradients as the layers run one by one."""
    nnx.manual_seed(0)
    a = act()
    assert a.fused_activation == fused
    assert nn.activation.fusable(a) == (fused is not None)
    model = nn.container.Sequential(nn.Linear(4, 6), a, nn.Linear(6, 3))
    x = nnx.randn(5, 4)
    y = model(x)
    if fused is not None:
        assert type(y.creator).__name__ == "LinearChain"
    y.sum().backward()
    grads = [p.grad.numpy().copy() for p in model.parameters()]
    model.zero_grad()
    h = model[0](x)
    y2 = model[2](model[1](h) if fused is None else type(a).forward(a, h))
    y2.sum().backward()
    np.testing.assert_allclose(y.numpy(), y2.numpy(), rtol=1e-6, atol=1e-6)
    for g, p in zip(grads, model.parameters()):
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_elu_alpha_reaches_the_fused_kernel():
    nnx.manual_seed(0)
    model = nn.container.Sequential(nn.Linear(3, 8), nn.ELU(alpha=2.5))
    x = nnx.randn(16, 3)
    lin = model[0](x)
    np.testing.assert_allclose(model(x).numpy(), F.elu(lin, 2.5).numpy(), rtol=1e-6, atol=1e-7)
    model[1].alpha = 0.25  # a changed parameter reaches the cached chain
    np.testing.assert_allclose(model(x).numpy(), F.elu(lin, 0.25).numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name, ref", [("gelu", "gelu"), ("swish", "silu"), ("silu", "silu"),
                                       ("elu", "elu"), ("softplus", "softplus"),
                                       ("gelu_tanh", "gelu_tanh")])
def test_keras_dense_activation_names(name, ref):
    nnx.manual_seed(0)
    model = nn.Sequential()
    model.add(nn.Dense(5, input_dim=3, activation=name))
    d = model[0]
    x = nnx.randn(4, 3)
    want = F.activation(F.linear(x, d.weight, d.bias), ref)
    np.testing.assert_allclose(model(x).numpy(), want.numpy(), rtol=1e-6, atol=1e-7)
    cfg = d.get_config()
    assert cfg["activation"] == ref
    model.compile(optimizer="sgd", loss="mse")
    hist = model.fit(np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32),
                     np.zeros((8, 5), np.float32), epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][-1])


def test_keras_dense_with_module_activation():
    d = nn.Dense(4, input_dim=2, activation=nn.ELU(alpha=0.3))
    x = nnx.randn(3, 2)
    want = F.elu(F.linear(x, d.weight, d.bias), 0.3)
    np.testing.assert_allclose(d(x).numpy(), want.numpy(), rtol=1e-6, atol=1e-7)
    d2 = nn.Dense(4, input_dim=2, activation=nn.Softplus(beta=3.0))
    want = F.softplus(F.linear(x, d2.weight, d2.bias), 3.0)
    np.testing.assert_allclose(d2(x).numpy(), want.numpy(), rtol=1e-6, atol=1e-7)


def test_strict_backend_no_sync(strict):
    x = nnx.tensor(np.linspace(-5, 5, 24).reshape(4, 6), requires_grad=True)
    for fn in (F.gelu, F.silu, F.elu, F.softplus, lambda t: F.softplus(t, 2.0),
               lambda t: F.gelu(t, approximate="tanh")):
        strict.reset_sync_count()
        fn(x).sum().backward()
        assert strict.sync_counts["count"] == 0


# ------------------------------------------------------------------ CUDA kernels
def test_nvrtc_compiles_new_kernels():
    """The elementwise and bias+activation modules (every entry) compile for sm_80/sm_90
    without spills. (Runs before the emulated backend replaces the cupy module.)"""
    from nnx.backends import nvrtc_check

    try:
        nvrtc_check.load_nvrtc()
    except nvrtc_check.NvrtcUnavailable as e:
        pytest.skip(f"NVRTC not installed: {e}")
    mods = [m for m in ck.SOURCES if m.startswith(("elementwise", "bias_act"))]
    res = nvrtc_check.check(("sm_80", "sm_90"), mods)
    assert nvrtc_check.failures(res) == []


@pytest.fixture(scope="module")
def cb():
    if not cuda_emu.compiler_available():
        pytest.skip("no C++ compiler for the CUDA emulator")
    with cuda_emu.emulated_backend() as backend:
        yield backend


_EMU_TOL = {np.float16: (4e-3, 2e-3), np.float32: (1e-5, 1e-6), np.float64: (1e-12, 1e-14)}


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64], ids=lambda d: d.__name__)
@pytest.mark.parametrize("name", NEW)
def test_emulated_kernels_match_twins(cb, name, dtype):
    from nnx.backends.numpy_backend import NumpyBackend

    nb = NumpyBackend()
    rng = np.random.default_rng(3)
    slope = SLOPE.get(name, 0.01)
    x = np.concatenate([rng.normal(0, 5, 1030), [0.0, -0.0, 20.0, 20.5, -60.0, 60.0, 1e4, -1e4]])
    x = x.astype(dtype)
    gy = rng.normal(0, 1, x.size).astype(dtype)
    counts = dict(ck.launch_counts)
    y = cb.to_host(cb.activation_forward(name, cb.asarray(x), slope))
    g = cb.to_host(cb.activation_backward(name, cb.asarray(x), cb.asarray(gy), slope))
    sfx = ck.DTYPE_SUFFIX[np.dtype(dtype).name]
    for k in (f"nnx_{name}_fwd_{sfx}", f"nnx_{name}_bwd_{sfx}"):
        assert ck.launch_counts[k] == counts.get(k, 0) + 1
    tol = _EMU_TOL[dtype]
    if name == "gelu_tanh" and dtype == np.float32:  # 1 + tanh cancels for x < 0
        tol = (1e-5, 5e-6)
    np.testing.assert_allclose(y.astype(np.float64), nb.activation_forward(name, x, slope)
                               .astype(np.float64), *tol, err_msg=f"{name} forward")
    np.testing.assert_allclose(g.astype(np.float64), nb.activation_backward(name, x, gy, slope)
                               .astype(np.float64), *tol, err_msg=f"{name} backward")
    np.testing.assert_allclose(y.astype(np.float64), _ref(name, x, slope),
                               *(tol if dtype != np.float16 else (4e-3, 4e-3)))
    # the fused bias + activation kernel
    m = x[:1032].reshape(24, 43)
    b = rng.normal(0, 1, 43).astype(dtype)
    d = cb.asarray(m.copy())
    cb.bias_act_(d, cb.asarray(b), name, slope)
    twin = m.copy()
    nb.bias_act_(twin, b, name, slope)
    np.testing.assert_allclose(cb.to_host(d).astype(np.float64), twin.astype(np.float64),
                               *(tol if dtype != np.float16 else (1e-2, 1e-2)))
