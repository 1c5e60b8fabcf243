"""Issue 14, PyTorch path: what a PyTorch user reaches for first, checked against PyTorch."""
import warnings

import numpy as np
import pytest

import nnx
import nnx.functional as F
from nnx import nn
from nnx.data import DataLoader, TensorDataset
from nnx.testing import gradcheck

torch = pytest.importorskip("torch")
TF = torch.nn.functional


def _pair(a, requires_grad=True):
    a = np.asarray(a, dtype=np.float64)
    return (nnx.tensor(a, dtype="float64", requires_grad=requires_grad),
            torch.tensor(a, requires_grad=requires_grad))


def _close(x, t, **kw):
    np.testing.assert_allclose(x.numpy(), t.detach().numpy(), rtol=1e-6, atol=1e-8, **kw)


# ---------------------------------------------------------------- 1. torch-style Function
class Square(nnx.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        x, = ctx.saved_tensors
        return 2 * x * g


class ScaledMul(nnx.autograd.Function):  # two tensors and a number
    @staticmethod
    def forward(ctx, a, b, k):
        ctx.save_for_backward(a, b)
        ctx.k = k
        assert ctx.needs_input_grad == (True, False, False)
        return a * b * k

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        return g * b * ctx.k, None if not ctx.needs_input_grad[1] else g * a * ctx.k, None


def test_torch_style_function_square():
    x, tx = _pair([1.0, -2.0, 3.0])
    y = Square.apply(x)
    assert isinstance(y, nnx.Tensor) and y.grad_fn is not None
    y.sum().backward()
    (tx * tx).sum().backward()
    _close(x.grad, tx.grad)
    gradcheck(Square.apply, [nnx.tensor([0.5, -1.5], dtype="float64", requires_grad=True)])


def test_torch_style_function_many_inputs_and_non_tensor_args():
    a, ta = _pair([[1.0, 2.0]])
    b, tb = _pair([[3.0, -4.0]], requires_grad=False)
    ScaledMul.apply(a, b, 2.5).sum().backward()
    (ta * tb * 2.5).sum().backward()
    _close(a.grad, ta.grad)
    assert b.grad is None


def test_torch_style_function_non_differentiable_and_no_grad():
    class ArgSign(nnx.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            out = (x > 0).to(dtype="float64")
            ctx.mark_non_differentiable(out)
            return out

        @staticmethod
        def backward(ctx, g):  # pragma: no cover - never called
            raise AssertionError

    x, _ = _pair([1.0, -1.0])
    assert not ArgSign.apply(x).requires_grad
    with nnx.no_grad():
        assert not Square.apply(x).requires_grad


def test_torch_style_function_leaves_todays_form_alone():
    from nnx.ops import Neg

    assert not isinstance(Neg.__dict__.get("apply"), classmethod)
    assert nnx.autograd.Function.apply is Neg.apply


# ---------------------------------------------------------------- 2. interop
def test_tensor_from_torch_tensor_and_dlpack():
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3).requires_grad_()
    x = nnx.tensor(t)
    assert x.dtype == np.float32 and x.shape == (2, 3)
    np.testing.assert_array_equal(x.numpy(), t.detach().numpy())
    assert nnx.tensor(torch.tensor([1, 2])).dtype == np.int64
    assert nnx.as_tensor(torch.ones(2)).shape == (2,)

    class ArrayLike:
        def __array__(self, dtype=None, copy=None):
            return np.array([1.5, 2.5])

    assert nnx.tensor(ArrayLike()).tolist() == [1.5, 2.5]


def test_from_numpy_shares_memory_and_dtype():
    a = np.zeros(3)
    x = nnx.from_numpy(a)
    assert x.dtype == torch.from_numpy(a).numpy().dtype == np.float64
    a[0] = 7.0
    assert x[0].item() == 7.0
    with pytest.raises(TypeError):
        nnx.from_numpy([1, 2])


def test_dlpack_round_trip_zero_copy():
    t = torch.zeros(4)
    x = nnx.from_dlpack(t)
    t[1] = 3.0
    assert x.numpy()[1] == 3.0
    back = torch.from_dlpack(x)
    x.data[2] = 5.0
    assert back[2].item() == 5.0
    assert x.__dlpack_device__()[0] == 1  # kDLCPU
    assert np.shares_memory(np.from_dlpack(x), x.data)


# ---------------------------------------------------------------- 3. reductions
@pytest.mark.parametrize("name", ["sum", "mean", "amax", "amin"])
def test_reductions_take_dim_axis_keepdim_keepdims(name):
    a = np.random.default_rng(0).normal(size=(3, 4))
    x, t = nnx.tensor(a), torch.tensor(a, dtype=torch.float32)
    ref = getattr(t, name)(dim=1, keepdim=True).numpy()
    for kw in ({"dim": 1, "keepdim": True}, {"axis": 1, "keepdims": True},
               {"dim": 1, "keepdims": True}, {"axis": 1, "keepdim": True}):
        np.testing.assert_allclose(getattr(x, name)(**kw).numpy(), ref, rtol=1e-6)


@pytest.mark.parametrize("name", ["max", "min", "argmax", "argmin"])
def test_max_min_arg_take_both_spellings(name):
    a = np.random.default_rng(1).normal(size=(3, 4))
    x, t = nnx.tensor(a), torch.tensor(a, dtype=torch.float32)
    r = getattr(t, name)(dim=0, keepdim=True)
    ref = (r if isinstance(r, torch.Tensor) else r.values).numpy()
    got = getattr(x, name)(dim=0, keepdim=True)
    np.testing.assert_allclose((got if isinstance(got, nnx.Tensor) else got.values).numpy(), ref)
    np.testing.assert_allclose(getattr(x, name)(axis=0, keepdims=True).numpy(), ref)


@pytest.mark.parametrize("kw", [{}, {"dim": 1}, {"dim": 0, "keepdim": True},
                                {"dim": 1, "unbiased": False}, {"dim": (0, 1), "correction": 0}])
def test_var_std_match_torch_and_gradcheck(kw):
    a = np.random.default_rng(2).normal(size=(3, 5))
    for name in ("var", "std"):
        x, t = _pair(a)
        y, ty = getattr(x, name)(**kw), getattr(t, name)(**kw)
        _close(y, ty)
        y.sum().backward()
        ty.sum().backward()
        _close(x.grad, t.grad)
        gradcheck(lambda v: getattr(v, name)(**kw), [nnx.tensor(a, dtype="float64", requires_grad=True)])
    assert nnx.var(nnx.tensor(a), axis=1, keepdims=True).shape == (3, 1)


@pytest.mark.parametrize("largest", [True, False])
def test_topk_matches_torch(largest):
    a = np.random.default_rng(3).permutation(20).reshape(4, 5).astype(np.float64)
    x, t = _pair(a)
    v, i = x.topk(3, dim=1, largest=largest)
    tv, ti = t.topk(3, dim=1, largest=largest)
    _close(v, tv)
    np.testing.assert_array_equal(i.numpy(), ti.numpy())
    assert i.dtype == np.int64
    (v * v).sum().backward()
    (tv * tv).sum().backward()
    _close(x.grad, t.grad)
    gradcheck(lambda z: nnx.topk(z, 2, dim=0).values, [nnx.tensor(a, dtype="float64", requires_grad=True)])


# ---------------------------------------------------------------- 4. DataLoader
def test_dataloader_two_arrays_points_at_tensordataset():
    X, Y = np.zeros((8, 2)), np.zeros(8)
    with pytest.raises(TypeError, match="TensorDataset"):
        DataLoader(X, Y)
    batches = list(DataLoader(TensorDataset(X, Y), batch_size=4))
    assert len(batches) == 2


def test_dataloader_accepts_torch_keywords():
    X, Y = np.arange(10.0).reshape(5, 2), np.arange(5)
    loader = DataLoader((X, Y), batch_size=2, num_workers=0, pin_memory=True, drop_last=True)
    assert len(list(loader)) == 2
    with pytest.warns(UserWarning, match="num_workers"):
        loader = DataLoader((X, Y), batch_size=2, num_workers=4, persistent_workers=True)
    assert len(list(loader)) == 3


# ---------------------------------------------------------------- 5. save(model)
def test_save_module_refused_naming_state_dict(tmp_path):
    with pytest.raises(TypeError, match=r"state_dict\(\)"):
        nnx.save(nn.Linear(2, 2), tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()


# ---------------------------------------------------------------- 6. losses and helpers
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_weight_label_smoothing_ignore_index(reduction, smoothing, weighted):
    rng = np.random.default_rng(4)
    a = rng.normal(size=(6, 4))
    labels = np.array([0, 3, -100, 2, 1, 3])
    w = np.array([0.5, 2.0, 1.0, 3.0])
    x, t = _pair(a)
    kw = dict(reduction=reduction, label_smoothing=smoothing, ignore_index=-100)
    y = F.cross_entropy(x, nnx.tensor(labels), weight=nnx.tensor(w, dtype="float64") if weighted else None, **kw)
    ty = TF.cross_entropy(t, torch.tensor(labels), weight=torch.tensor(w) if weighted else None, **kw)
    _close(y, ty)
    y.sum().backward()
    ty.sum().backward()
    _close(x.grad, t.grad)
    m = nn.CrossEntropyLoss(weight=nnx.tensor(w, dtype="float64") if weighted else None,
                            reduction=reduction, label_smoothing=smoothing)
    tm = torch.nn.CrossEntropyLoss(weight=torch.tensor(w) if weighted else None,
                                   reduction=reduction, label_smoothing=smoothing)
    _close(m(x, nnx.tensor(labels)), tm(t, torch.tensor(labels)))
    gradcheck(lambda z: F.cross_entropy(z, nnx.tensor(labels), weight=w if weighted else None, **kw),
              [nnx.tensor(a, dtype="float64", requires_grad=True)])


def test_cross_entropy_probability_target_weight_smoothing():
    rng = np.random.default_rng(5)
    a, p = rng.normal(size=(3, 4)), rng.dirichlet(np.ones(4), size=3)
    w = np.array([1.0, 2.0, 0.5, 1.5])
    x, t = _pair(a)
    y = F.cross_entropy(x, nnx.tensor(p, dtype="float64"), weight=w, label_smoothing=0.1)
    ty = TF.cross_entropy(t, torch.tensor(p), weight=torch.tensor(w), label_smoothing=0.1)
    _close(y, ty)


def test_nll_loss_weight():
    rng = np.random.default_rng(6)
    a = np.log(rng.dirichlet(np.ones(3), size=5))
    labels, w = np.array([0, 2, 1, 2, -100]), np.array([1.0, 3.0, 0.25])
    x, t = _pair(a)
    _close(nn.NLLLoss(weight=w)(x, nnx.tensor(labels)),
           torch.nn.NLLLoss(weight=torch.tensor(w))(t, torch.tensor(labels)))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("mod,tmod,kw", [
    (nn.L1Loss, torch.nn.L1Loss, {}),
    (nn.SmoothL1Loss, torch.nn.SmoothL1Loss, {"beta": 0.5}),
    (nn.SmoothL1Loss, torch.nn.SmoothL1Loss, {"beta": 0.0}),
    (nn.HuberLoss, torch.nn.HuberLoss, {"delta": 0.7}),
])
def test_l1_smooth_l1_huber_match_torch(reduction, mod, tmod, kw):
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    x, t = _pair(a)
    y = mod(reduction=reduction, **kw)(x, nnx.tensor(b, dtype="float64"))
    ty = tmod(reduction=reduction, **kw)(t, torch.tensor(b))
    _close(y, ty)
    y.sum().backward()
    ty.sum().backward()
    _close(x.grad, t.grad)
    fname = {nn.L1Loss: "l1_loss", nn.SmoothL1Loss: "smooth_l1_loss", nn.HuberLoss: "huber_loss"}[mod]
    _close(getattr(F, fname)(x, nnx.tensor(b, dtype="float64"), reduction, **kw),
           getattr(TF, fname)(t, torch.tensor(b), reduction=reduction, **kw))
    gradcheck(lambda z: getattr(F, fname)(z, nnx.tensor(b, dtype="float64"), reduction, **kw),
              [nnx.tensor(a, dtype="float64", requires_grad=True)])


def test_one_hot_matches_torch():
    labels = np.array([[0, 2], [1, 1]])
    y = F.one_hot(nnx.tensor(labels), 4)
    assert y.dtype == np.int64
    np.testing.assert_array_equal(y.numpy(), TF.one_hot(torch.tensor(labels), 4).numpy())
    np.testing.assert_array_equal(F.one_hot(nnx.tensor(labels)).numpy(),
                                  TF.one_hot(torch.tensor(labels)).numpy())
    with pytest.raises(nnx.LabelError):
        F.one_hot(nnx.tensor([0, 5]), 3)


@pytest.mark.parametrize("p,dim", [(2, 1), (1, 0), (3, -1)])
def test_normalize_matches_torch(p, dim):
    a = np.random.default_rng(8).normal(size=(3, 4))
    a[1] = 0.0  # a zero row: torch's gradient there is finite
    x, t = _pair(a)
    y, ty = F.normalize(x, p=p, dim=dim), TF.normalize(t, p=p, dim=dim)
    _close(y, ty)
    (y * y.detach()).sum().backward()
    (ty * ty.detach()).sum().backward()
    _close(x.grad, t.grad)
    b = np.random.default_rng(9).normal(size=(3, 4))
    gradcheck(lambda z: F.normalize(z, p=p, dim=dim), [nnx.tensor(b, dtype="float64", requires_grad=True)])


def test_inference_mode_context_and_decorator():
    x = nnx.tensor([1.0], requires_grad=True)
    with nnx.inference_mode():
        assert not (x * 2).requires_grad
    with nnx.inference_mode(False):
        assert (x * 2).requires_grad

    @nnx.inference_mode()
    def f(v):
        return v * 2

    @nnx.inference_mode
    def g(v):
        return v * 2

    assert not f(x).requires_grad and not g(x).requires_grad
    assert nnx.is_grad_enabled()


@pytest.mark.parametrize("name", ["maximum", "minimum"])
def test_maximum_minimum_ties_split_like_torch(name):
    a, b = np.array([1.0, 2.0, 3.0, 2.0]), np.array([[2.0], [2.0]])
    x, t = _pair(a)
    y, u = _pair(b)
    z, tz = getattr(nnx, name)(x, y), getattr(torch, name)(t, u)
    _close(z, tz)
    z.sum().backward()
    tz.sum().backward()
    _close(x.grad, t.grad)
    _close(y.grad, u.grad)
    c = np.random.default_rng(10).normal(size=(2, 3))
    gradcheck(lambda p, q: getattr(nnx, name)(p, q),
              [nnx.tensor(c, dtype="float64", requires_grad=True),
               nnx.tensor(-c[::-1] + 0.3, dtype="float64", requires_grad=True)])


def test_constructors_match_torch():
    np.testing.assert_array_equal(nnx.eye(3).numpy(), torch.eye(3).numpy())
    np.testing.assert_array_equal(nnx.eye(2, 4).numpy(), torch.eye(2, 4).numpy())
    assert nnx.eye(3).dtype == np.float32
    np.testing.assert_allclose(nnx.linspace(0, 1, 5).numpy(), torch.linspace(0, 1, 5).numpy())
    assert nnx.linspace(0, 1, 5).dtype == np.float32
    for args in ((5,), (1, 7, 2), (0.0, 1.0, 0.25)):
        ref = torch.arange(*args).numpy()
        got = nnx.arange(*args).numpy()
        assert got.dtype == ref.dtype
        np.testing.assert_allclose(got, ref)
    x = nnx.zeros(2, 3, dtype="float64")
    assert nnx.full_like(x, 7).tolist() == torch.full_like(torch.zeros(2, 3), 7).tolist()
    for like in (nnx.rand_like, nnx.randn_like, nnx.empty_like, nnx.zeros_like, nnx.ones_like):
        y = like(x)
        assert y.shape == (2, 3) and y.dtype == np.float64 and y.device == "cpu"
        assert like(x, dtype="float32").dtype == np.float32
    r = nnx.rand_like(x).numpy()
    assert ((r >= 0) & (r < 1)).all()


# ---------------------------------------------------------------- 7. device objects
def test_to_accepts_device_objects():
    model = nn.Linear(2, 2)
    d = nnx.device("cpu")
    assert d == "cpu" and d.type == "cpu" and d.index is None
    assert model.to(d) is model
    assert model.to(torch.device("cpu")) is model
    x = nnx.tensor([1.0])
    assert x.to(d).device == "cpu"
    assert x.to(torch.device("cpu")).device == "cpu"
    assert nnx.tensor([1.0], device=torch.device("cpu")).device == "cpu"
    with nnx.device("cpu") as dev:
        assert dev == "cpu" and dev.type == "cpu"
