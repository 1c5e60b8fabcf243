"""A new fused activation from its registry entry alone (issue 15, item 2).

The test registers ``softsign`` (x / (1 + |x|), not built into nnx) as one
``backends.activations.Activation`` entry: its NumPy twin and its CUDA expressions. Nothing else
is written for it, yet it must work everywhere an activation goes: ``F.activation``, a module
class, ``Sequential`` (fused into the Linear before it), ``Dense``, configs, the strict backend
(no host sync in a step) and the CUDA kernels (compiled by the g++ emulator and checked against
the twin; NVRTC in CI compiles the same generated source).
"""
import numpy as np
import pytest

from nnx import backends
import nnx
import nnx.functional as F
from nnx.backends import activations as table
from nnx.backends import cuda_kernels as ck
from nnx.backends import strict_backend as sb
from nnx import nn
from nnx.testing import gradcheck

try:
    from tests import cuda_emu
except ImportError:  # pragma: no cover - run from inside tests/
    import cuda_emu

torch = pytest.importorskip("torch")


def _softsign_forward(x, out, slope, bias):
    d = np.abs(x)
    d += 1
    np.divide(x, d, out=out)
    return None


def _softsign_backward(x, gy, out, slope, aux):
    d = np.abs(x)
    d += 1
    d *= d
    return np.divide(gy, d, out=d if out is None else out)


def _entry():
    entry = table.lookup("softsign")
    if entry is None:
        entry = table.register(table.Activation(
            name="softsign", module="Softsign", keras="softsign",
            numpy_forward=_softsign_forward, numpy_backward=_softsign_backward,
            cuda_forward="x / ((nnx_acc)1 + nnx_abs(x))",
            cuda_backward="g / (((nnx_acc)1 + nnx_abs(s)) * ((nnx_acc)1 + nnx_abs(s)))",
            saves="input", doc="x / (1 + |x|), elementwise."))
    return entry


@pytest.fixture(scope="module")
def softsign():
    return _entry()


def _torch_mlp(model):
    lin = [m for m in model if isinstance(m, nn.Linear)]
    tm = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Softsign(), torch.nn.Linear(5, 2),
                             torch.nn.Softsign()).double()
    with torch.no_grad():
        for t, n in zip([tm[0], tm[2]], lin):
            t.weight.copy_(torch.from_numpy(n.weight.numpy()))
            t.bias.copy_(torch.from_numpy(n.bias.numpy()))
    return tm


def test_functional_matches_torch_and_gradcheck(softsign):
    x = np.random.default_rng(0).standard_normal((4, 6)) * 3
    xn = nnx.tensor(x, dtype="float64", requires_grad=True)
    y = F.activation(xn, "softsign")
    (y * y).sum().backward()
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.softsign(xt)
    (yt * yt).sum().backward()
    np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(xn.grad.numpy(), xt.grad.numpy(), rtol=1e-12)
    gradcheck(lambda t: F.activation(t, "softsign"),
              [nnx.tensor(x, dtype="float64", requires_grad=True)])


def test_module_in_sequential_trains_like_torch(softsign):
    Softsign = nn.activation.module_class("softsign")
    assert Softsign.__name__ == "Softsign" and Softsign().fused_activation == "softsign"
    nnx.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), Softsign(), nn.Linear(5, 2), Softsign()).double()
    tm = _torch_mlp(model)
    x = np.random.default_rng(1).standard_normal((7, 3))
    out = model(nnx.tensor(x, dtype="float64"))
    out.sum().backward()
    tout = tm(torch.from_numpy(x))
    tout.sum().backward()
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=1e-12)
    for p, tp in zip(model.parameters(), tm.parameters()):
        np.testing.assert_allclose(p.grad.numpy(), tp.grad.numpy(), rtol=1e-11, atol=1e-14)
    # fused (one chain) and layer by layer give the same values
    xt = nnx.tensor(x, dtype="float64")
    by_layer = xt
    for m in model:
        by_layer = m(by_layer)
    np.testing.assert_array_equal(model(xt).numpy(), by_layer.numpy())


def test_dense_and_config_take_the_new_name(softsign):
    m = nn.Sequential()
    m.add(nn.Dense(4, input_dim=3, activation="softsign"))
    m.add(nn.Dense(1))
    x = np.random.default_rng(2).standard_normal((5, 3)).astype(np.float32)
    d = m[0]
    ref = x @ d.weight.numpy().T + d.bias.numpy()
    ref = ref / (1 + np.abs(ref))
    h = d(nnx.tensor(x))
    np.testing.assert_allclose(h.numpy(), ref, rtol=1e-6)
    cfg = m.get_config()
    again = nn.Sequential.from_config(cfg)
    assert again.get_config() == cfg


def test_strict_backend_step_makes_no_host_sync(softsign):
    backends.register_strict()
    nnx.set_device("strict")
    try:
        Softsign = nn.activation.module_class("softsign")
        model = nn.Sequential(nn.Linear(3, 5), Softsign(), nn.Linear(5, 2))
        opt = nnx.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        x = nnx.tensor(np.random.default_rng(0).standard_normal((6, 3)))
        y = nnx.tensor(np.random.default_rng(1).integers(0, 2, 6))
        sb.reset_sync_count()
        for _ in range(2):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        assert sb.sync_counts["count"] == 0, sb.sync_counts["where"]
    finally:
        nnx.set_device("cpu")


def test_cuda_kernels_exist_for_the_new_entry(softsign):
    for sfx in ("f16", "f32", "f64"):
        assert f"nnx_softsign_fwd_{sfx}" in ck.KERNELS[f"elementwise_{sfx}"]
        assert f"nnx_softsign_bwd_{sfx}" in ck.KERNELS[f"elementwise_{sfx}"]
        assert f"nnx_bias_softsign_{sfx}" in ck.KERNELS[f"bias_act_{sfx}"]
        assert "nnx_act_softsign(" in ck.SOURCES[f"bias_act_{sfx}"]


@pytest.fixture
def emu_backend(softsign):
    if not cuda_emu.compiler_available():
        pytest.skip("no C++ compiler for the CUDA emulator")
    with cuda_emu.emulated_backend() as backend:
        yield backend


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_emulated_cuda_kernels_match_the_twin(emu_backend, dtype):
    cpu = backends.get_backend("cpu")
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((37, 9)) * 4).astype(dtype)
    g = rng.standard_normal((37, 9)).astype(dtype)
    b = rng.standard_normal(9).astype(dtype)
    tol = dict(rtol=1e-6 if dtype == np.float32 else 1e-13, atol=0)
    np.testing.assert_allclose(emu_backend.activation_forward("softsign", x),
                               cpu.activation_forward("softsign", x), **tol)
    np.testing.assert_allclose(emu_backend.activation_backward("softsign", x, g),
                               cpu.activation_backward("softsign", x, g), **tol)
    y_gpu, y_cpu = x.copy(), x.copy()
    emu_backend.bias_act_(y_gpu, b, "softsign")
    cpu.bias_act_(y_cpu, b, "softsign")
    np.testing.assert_allclose(y_gpu, y_cpu, **tol)


def test_unknown_activation_names_the_known_ones():
    with pytest.raises(ValueError, match="relu"):
        F.activation(nnx.tensor([1.0]), "nope")
    with pytest.raises(ValueError, match="already registered"):
        table.register(table.get("relu"))
