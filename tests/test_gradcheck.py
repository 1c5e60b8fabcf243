"""Float64 finite-difference gradient checks of every differentiable op and loss.

Inputs stay away from kinks (relu/abs at 0, clip bounds, max ties) so central differences
are valid. A few checks draw random shapes with hypothesis (few examples, no deadline).
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import nnx
import nnx.functional as F
from nnx import nn
from nnx.autograd import Function
from nnx.testing import gradcheck

HYP = settings(max_examples=8, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def t64(a, device, requires_grad=True):
    return nnx.tensor(np.asarray(a, dtype=np.float64), dtype="float64", device=device,
                      requires_grad=requires_grad)


def uniform(shape, lo=-2.0, hi=2.0, seed=0):
    return np.random.default_rng(seed).uniform(lo, hi, shape)


def away_from(shape, points=(0.0,), margin=0.1, lo=-2.0, hi=2.0, seed=0):
    """Uniform values at least ``margin`` from each of ``points``."""
    a = uniform(shape, lo, hi, seed)
    for p in points:
        close = np.abs(a - p) < margin
        a = np.where(close, p + np.where(a >= p, margin, -margin) * 1.5, a)
    return a


def distinct(shape, seed=0):
    """Values 0.1 apart in random order: no ties, so max/min are differentiable."""
    n = int(np.prod(shape)) if shape else 1
    return (np.random.default_rng(seed).permutation(n) * 0.1 - 0.05 * n).reshape(shape)


# ---------------------------------------------------------------------- the checker itself
class _WrongSquare(Function):
    def forward(self, x):
        self.x = x
        return x * x

    def backward(self, gy):
        return (gy * 2.1 * self.x,)  # deliberately wrong: 2.1 x instead of 2 x


def test_gradcheck_detects_a_wrong_backward(device):
    x = t64(uniform((3, 2)), device)
    with pytest.raises(AssertionError, match="gradcheck failed"):
        gradcheck(lambda a: _WrongSquare().apply(a), [x])
    assert gradcheck(lambda a: _WrongSquare().apply(a), [x], raise_exception=False) is False


def test_gradcheck_detects_a_wrong_backward_with_directions(device):
    x = t64(uniform((20, 20)), device)  # > 256 elements: random-direction projection
    with pytest.raises(AssertionError):
        gradcheck(lambda a: _WrongSquare().apply(a), [x])
    with pytest.raises(AssertionError):
        gradcheck(lambda a: _WrongSquare().apply(a), [x], n_directions=4)


def test_gradcheck_restores_inputs(device):
    a = uniform((3, 4))
    x = t64(a, device)
    gradcheck(lambda v: (v * v).exp(), [x])
    np.testing.assert_array_equal(x.numpy(), a)


# ---------------------------------------------------------------------- arithmetic
BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "pow": lambda a, b: a ** b,
    "add_fn": nnx.add, "sub_fn": nnx.sub, "mul_fn": nnx.mul, "div_fn": nnx.div, "pow_fn": nnx.pow,
}

SHAPE_PAIRS = [((3, 4), (3, 4)), ((3, 4), (4,)), ((3, 1), (1, 4)), ((2, 3, 4), (3, 1)),
               ((4,), (2, 1, 4)), ((), (2, 3)), ((1, 1), (3,))]


@pytest.mark.parametrize("sa,sb", SHAPE_PAIRS)
@pytest.mark.parametrize("name", list(BINARY))
def test_binary_broadcasting(device, name, sa, sb):
    # positive operands keep div and pow smooth
    a = t64(uniform(sa, 0.5, 2.0, seed=1), device)
    b = t64(uniform(sb, 0.5, 2.0, seed=2), device)
    gradcheck(BINARY[name], [a, b])
    gradcheck(BINARY[name], [b, a])


@pytest.mark.parametrize("name", ["add", "sub", "mul", "div"])
def test_binary_one_side_requires_grad(device, name):
    a = t64(uniform((3, 4), 0.5, 2.0, seed=1), device)
    b = t64(uniform((4,), 0.5, 2.0, seed=2), device, requires_grad=False)
    gradcheck(BINARY[name], [a, b])
    gradcheck(BINARY[name], [b, a])


@pytest.mark.parametrize("c", [2.5, -1.5, 3, 0.0])
@pytest.mark.parametrize("name", ["add", "sub", "mul", "div"])
def test_scalar_operands(device, name, c):
    if name == "div" and c == 0.0:
        pytest.skip("division by zero")
    x = t64(uniform((3, 4), 0.5, 2.0), device)
    f = BINARY[name]
    gradcheck(lambda v: f(v, c), [x])
    gradcheck(lambda v: f(c, v), [x])


@pytest.mark.parametrize("c", [2, 2.0, 3, 0.5, -1.5, 1])
def test_pow_scalar_exponent(device, c):
    x = t64(uniform((3, 4), 0.5, 2.0), device)
    gradcheck(lambda v: v ** c, [x])
    gradcheck(lambda v: nnx.pow(v, c), [x])


@pytest.mark.parametrize("c", [2, 3])
def test_pow_integer_exponent_negative_base(device, c):
    x = t64(away_from((3, 4)), device)
    gradcheck(lambda v: v ** c, [x])


@pytest.mark.parametrize("c", [2.0, 0.5, np.e])
def test_scalar_base_pow(device, c):
    x = t64(uniform((3, 4)), device)
    gradcheck(lambda v: c ** v, [x])


def test_numpy_scalar_operands(device):
    x = t64(uniform((3, 4), 0.5, 2.0), device)
    gradcheck(lambda v: v * np.float64(1.5) + np.float32(2.0) - v / np.float64(3.0), [x])


def test_neg(device):
    x = t64(uniform((2, 3)), device)
    gradcheck(lambda v: -v, [x])
    gradcheck(nnx.neg, [x])
    gradcheck(lambda v: v.neg(), [x])


@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=4),
       name=st.sampled_from(["add", "sub", "mul", "div", "pow"]), seed=st.integers(0, 2 ** 16))
@HYP
def test_binary_random_shapes(device, shapes, name, seed):
    sa, sb = shapes.input_shapes
    a = t64(uniform(sa, 0.5, 2.0, seed=seed), device)
    b = t64(uniform(sb, 0.5, 2.0, seed=seed + 1), device)
    gradcheck(BINARY[name], [a, b])


# ---------------------------------------------------------------------- matmul
MATMUL_SHAPES = [((4,), (4,)), ((4,), (4, 3)), ((2, 4), (4,)), ((2, 4), (4, 3)),
                 ((5, 2, 4), (5, 4, 3)), ((5, 2, 4), (4, 3)), ((2, 4), (5, 4, 3)),
                 ((2, 1, 2, 4), (3, 4, 2)), ((5, 2, 4), (4,)), ((4,), (5, 4, 3))]


@pytest.mark.parametrize("sa,sb", MATMUL_SHAPES)
def test_matmul(device, sa, sb):
    a = t64(uniform(sa, seed=3), device)
    b = t64(uniform(sb, seed=4), device)
    gradcheck(lambda x, y: x @ y, [a, b])
    gradcheck(nnx.matmul, [a, b])


def test_matmul_with_transposed_operand(device):
    a = t64(uniform((3, 4), seed=3), device)
    b = t64(uniform((5, 4), seed=4), device)
    gradcheck(lambda x, y: x @ y.T, [a, b])


@given(b=st.integers(1, 3), m=st.integers(1, 4), k=st.integers(1, 4), n=st.integers(1, 4),
       seed=st.integers(0, 2 ** 16))
@HYP
def test_matmul_random_shapes(device, b, m, k, n, seed):
    x = t64(uniform((b, m, k), seed=seed), device)
    y = t64(uniform((k, n), seed=seed + 1), device)
    gradcheck(lambda p, q: p @ q, [x, y])


# ---------------------------------------------------------------------- reductions
AXES = [None, 0, 1, -1, (0, 2), (1, 2), (0, 1, 2)]


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", AXES)
def test_sum(device, axis, keepdims):
    x = t64(uniform((2, 3, 4)), device)
    gradcheck(lambda v: v.sum(axis=axis, keepdims=keepdims), [x])
    gradcheck(lambda v: nnx.sum(v, axis=axis, keepdims=keepdims), [x])


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", AXES)
def test_mean(device, axis, keepdims):
    x = t64(uniform((2, 3, 4)), device)
    gradcheck(lambda v: v.mean(axis=axis, keepdims=keepdims), [x])
    gradcheck(lambda v: nnx.mean(v, axis=axis, keepdims=keepdims), [x])


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", AXES)
def test_max_min_amax(device, axis, keepdims):
    x = t64(distinct((2, 3, 4)), device)
    gradcheck(lambda v: v.max(axis=axis, keepdims=keepdims), [x])
    gradcheck(lambda v: nnx.min(v, axis=axis, keepdims=keepdims), [x])
    gradcheck(lambda v: nnx.amax(v, axis=axis, keepdims=keepdims), [x])


@pytest.mark.parametrize("keepdim", [False, True])
def test_max_dim_values(device, keepdim):
    x = t64(distinct((3, 4), seed=2), device)
    gradcheck(lambda v: v.max(dim=1, keepdim=keepdim).values, [x])
    gradcheck(lambda v: v.min(dim=0, keepdim=keepdim)[0], [x])


def test_max_ties_share_gradient(device):
    x = t64([[1.0, 3.0, 3.0], [2.0, 0.0, 2.0]], device)
    x.max(axis=1).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [[0, 0.5, 0.5], [0.5, 0, 0.5]])


@given(shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=4), data=st.data(),
       op=st.sampled_from(["sum", "mean", "max"]), keepdims=st.booleans())
@HYP
def test_reductions_random_shapes(device, shape, data, op, keepdims):
    axis = data.draw(st.one_of(st.none(), st.integers(-len(shape), len(shape) - 1)))
    x = t64(distinct(shape, seed=len(shape)), device)
    gradcheck(lambda v: getattr(v, op)(axis=axis, keepdims=keepdims), [x])


# ---------------------------------------------------------------------- shape ops and indexing
def test_reshape(device):
    x = t64(uniform((2, 3, 4)), device)
    gradcheck(lambda v: v.reshape(6, 4), [x])
    gradcheck(lambda v: v.reshape(-1), [x])
    gradcheck(lambda v: nnx.reshape(v, (4, -1)), [x])
    gradcheck(lambda v: v.view(2, 12), [x])
    gradcheck(lambda v: v.flatten(1), [x])
    gradcheck(lambda v: v.unsqueeze(1).squeeze(1), [x])
    gradcheck(lambda v: nnx.unsqueeze(v, -1) * 2.0, [x])


def test_transpose(device):
    x = t64(uniform((3, 4), seed=1), device)
    gradcheck(lambda v: v.T, [x])
    gradcheck(lambda v: v.transpose(), [x])
    gradcheck(lambda v: nnx.transpose(v, 0, 1), [x])
    y = t64(uniform((2, 3, 4), seed=2), device)
    gradcheck(lambda v: v.transpose(0, 2), [y])
    gradcheck(lambda v: v.transpose((2, 0, 1)), [y])
    gradcheck(lambda v: v.permute(1, 2, 0), [y])
    gradcheck(lambda v: v.T, [y])


BASIC_INDEXES = [1, -1, slice(1, 3), (slice(None), 2), (0, slice(1, None, 2)),
                 (Ellipsis, 1), (slice(None, None, -1),), (None, 1), (slice(0, 0),),
                 (1, 2, 3)]


@pytest.mark.parametrize("index", BASIC_INDEXES, ids=[repr(i) for i in BASIC_INDEXES])
def test_basic_indexing(device, index):
    x = t64(uniform((3, 4, 5)), device)
    gradcheck(lambda v: v[index], [x])


FANCY_INDEXES = [
    ([0, 2, 0, 0],),                                      # duplicates accumulate
    (np.array([[1, 1], [2, 0]]),),                        # 2-D integer index
    (np.array([0, 1, 2, 2]), np.array([3, 0, 3, 3])),     # paired indexes with duplicates
    (slice(None), np.array([4, 4, 0])),                   # mixed basic and fancy
    (np.array([True, False, True]),),                     # boolean mask
    (np.array([-1, -1, 0]), Ellipsis, 1),
]


@pytest.mark.parametrize("index", FANCY_INDEXES, ids=range(len(FANCY_INDEXES)))
def test_fancy_indexing(device, index):
    x = t64(uniform((3, 5)), device)
    idx = tuple(i if not isinstance(i, np.ndarray) else nnx.tensor(i, device=device).data
                for i in index)
    idx = idx[0] if len(idx) == 1 else idx
    gradcheck(lambda v: v[idx], [x])


def test_fancy_indexing_duplicates_accumulate(device):
    x = t64(uniform((3,)), device)
    x[[0, 0, 2, 0]].sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [3.0, 0.0, 1.0])


def test_tensor_index(device):
    x = t64(uniform((4, 3)), device)
    idx = nnx.tensor([3, 0, 3], device=device)
    gradcheck(lambda v: v[idx], [x])


# ---------------------------------------------------------------------- elementwise math
def test_exp(device):
    x = t64(uniform((3, 4)), device)
    gradcheck(lambda v: v.exp(), [x])
    gradcheck(nnx.exp, [x])


def test_log(device):
    x = t64(uniform((3, 4), 0.2, 3.0), device)
    gradcheck(lambda v: v.log(), [x])
    gradcheck(nnx.log, [x])


def test_tanh(device):
    x = t64(uniform((3, 4), -3, 3), device)
    gradcheck(lambda v: v.tanh(), [x])
    gradcheck(nnx.tanh, [x])
    gradcheck(F.tanh, [x])


def test_abs(device):
    x = t64(away_from((3, 4)), device)
    gradcheck(lambda v: v.abs(), [x])
    gradcheck(nnx.abs, [x])


def test_sqrt(device):
    x = t64(uniform((3, 4), 0.2, 3.0), device)
    gradcheck(lambda v: v.sqrt(), [x])
    gradcheck(nnx.sqrt, [x])


@pytest.mark.parametrize("lo,hi", [(-0.5, 0.7), (None, 0.3), (-0.2, None)])
def test_clip(device, lo, hi):
    pts = tuple(p for p in (lo, hi) if p is not None)
    x = t64(away_from((4, 5), points=pts, margin=0.05), device)
    gradcheck(lambda v: v.clip(lo, hi), [x])
    gradcheck(lambda v: nnx.clip(v, lo, hi), [x])
    gradcheck(lambda v: nnx.clamp(v, min=lo, max=hi), [x])


def test_clone_and_to(device):
    x = t64(uniform((3, 4)), device)
    gradcheck(lambda v: v.clone() * 2.0, [x])
    gradcheck(lambda v: v.to(dtype="float64") * v, [x])


def test_composite_expression(device):
    a = t64(uniform((3, 4), 0.5, 2.0, seed=1), device)
    b = t64(uniform((4,), 0.5, 2.0, seed=2), device)
    gradcheck(lambda x, y: ((x * y).exp() / (1.0 + x ** 2)).log().sum(axis=1).tanh()
              + (x - y).abs().mean(), [a, b])


# ---------------------------------------------------------------------- activations
def test_sigmoid(device):
    x = t64(uniform((3, 4), -6, 6), device)
    gradcheck(F.sigmoid, [x])
    gradcheck(nnx.sigmoid, [x])
    gradcheck(lambda v: nn.Sigmoid()(v), [x])


def test_relu(device):
    x = t64(away_from((3, 4)), device)
    gradcheck(F.relu, [x])
    gradcheck(lambda v: nn.ReLU()(v), [x])


@pytest.mark.parametrize("slope", [0.01, 0.2, 1.5])
def test_leaky_relu(device, slope):
    x = t64(away_from((3, 4)), device)
    gradcheck(lambda v: F.leaky_relu(v, slope), [x])
    gradcheck(lambda v: nn.LeakyReLU(slope)(v), [x])


def test_leaky_relu_default_slope(device):
    x = t64(away_from((3, 4)), device)
    gradcheck(F.leaky_relu, [x])


def test_softplus_and_log_sigmoid(device):
    x = t64(uniform((3, 4), -5, 5), device)
    gradcheck(F.softplus, [x])
    gradcheck(F.log_sigmoid, [x])


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_softmax(device, axis):
    x = t64(uniform((3, 4), -3, 3), device)
    gradcheck(lambda v: F.softmax(v, axis=axis), [x])
    gradcheck(lambda v: nn.Softmax(axis=axis)(v), [x])


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_log_softmax(device, axis):
    x = t64(uniform((3, 4), -3, 3), device)
    gradcheck(lambda v: F.log_softmax(v, axis=axis), [x])
    gradcheck(lambda v: nn.LogSoftmax(axis=axis)(v), [x])


@given(shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=5), data=st.data(),
       log=st.booleans(), seed=st.integers(0, 2 ** 16))
@HYP
def test_softmax_random_shapes(device, shape, data, log, seed):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = t64(uniform(shape, -3, 3, seed=seed), device)
    f = F.log_softmax if log else F.softmax
    gradcheck(lambda v: f(v, axis=axis), [x])


@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_dropout(device, p):
    x = t64(away_from((6, 7)), device)

    def f(v):
        nnx.manual_seed(123)  # the same mask on every evaluation
        return F.dropout(v, p)

    gradcheck(f, [x])
    # the gradient is the mask the forward used
    y = f(x)
    mask = y.numpy() / x.numpy()
    assert set(np.round(np.unique(mask), 12)) <= {0.0, round(1.0 / (1.0 - p), 12)}
    x.grad = None
    w = uniform((6, 7), seed=9)
    (f(x) * t64(w, device, False)).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), w * mask, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------- linear
def _linear_inputs(device, xshape, out, bias, act, seed=0):
    """x, W, b with every pre-activation at least 0.05 away from 0 (relu's kink)."""
    for s in range(seed, seed + 200):
        rng = np.random.default_rng(s)
        x = rng.uniform(-1, 1, xshape)
        w = rng.uniform(-1, 1, (out, xshape[-1]))
        b = rng.uniform(-1, 1, (out,)) if bias else np.zeros(out)
        z = x @ w.T + b
        if act not in ("relu", "leaky_relu") or np.abs(z).min() > 0.05:
            break
    else:  # pragma: no cover
        raise RuntimeError("no kink-free inputs found")
    ts = [t64(x, device), t64(w, device)]
    if bias:
        ts.append(t64(b, device))
    return ts


ACTS = ["linear", "sigmoid", "relu", "leaky_relu", "tanh"]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("xshape", [(4, 3), (3,), (2, 2, 3)])
def test_linear(device, xshape, act, bias):
    ts = _linear_inputs(device, xshape, 2, bias, act)
    gradcheck(lambda x, w, *b: F.linear(x, w, b[0] if b else None, activation=act), ts)


@pytest.mark.parametrize("slope", [0.01, 0.3])
def test_linear_leaky_relu_slope(device, slope):
    ts = _linear_inputs(device, (5, 3), 4, True, "leaky_relu", seed=7)
    gradcheck(lambda x, w, b: F.linear(x, w, b, activation="leaky_relu", negative_slope=slope), ts)


@pytest.mark.parametrize("act", ACTS)
def test_linear_fused_equals_unfused(device, act):
    x, w, b = _linear_inputs(device, (4, 3), 2, True, act)
    unfused = {"linear": lambda z: z, "sigmoid": F.sigmoid, "relu": F.relu,
               "leaky_relu": F.leaky_relu, "tanh": F.tanh}[act]
    y1 = F.linear(x, w, b, activation=act)
    y2 = unfused(x @ w.T + b)
    np.testing.assert_allclose(y1.numpy(), y2.numpy(), rtol=1e-12, atol=1e-14)


@given(n=st.integers(1, 5), fin=st.integers(1, 4), fout=st.integers(1, 4),
       act=st.sampled_from(["linear", "sigmoid", "tanh"]), bias=st.booleans(),
       seed=st.integers(0, 2 ** 16))
@HYP
def test_linear_random_shapes(device, n, fin, fout, act, bias, seed):
    ts = _linear_inputs(device, (n, fin), fout, bias, act, seed=seed)
    gradcheck(lambda x, w, *b: F.linear(x, w, b[0] if b else None, activation=act), ts)


def test_linear_module_and_sequential(device):
    nnx.set_default_dtype("float64")
    nnx.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4), nn.Sigmoid(),
                          nn.Linear(4, 2))
    params = list(model.parameters())
    x = t64(uniform((5, 3)), device, requires_grad=False)
    model.to(device)

    def f(*ps):
        return model(x)

    gradcheck(f, params)


# ---------------------------------------------------------------------- losses
REDUCTIONS = ["mean", "sum", "none"]


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mse_loss(device, reduction):
    p = t64(uniform((4, 3), seed=1), device)
    t = t64(uniform((4, 3), seed=2), device)
    gradcheck(lambda a, b: F.mse_loss(a, b, reduction=reduction), [p, t])
    gradcheck(lambda a, b: nn.MSELoss(reduction=reduction)(a, b), [p, t])


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy(device, reduction):
    p = t64(uniform((4, 3), 0.05, 0.95, seed=1), device)
    t = t64(uniform((4, 3), 0.0, 1.0, seed=2), device)
    gradcheck(lambda a, b: F.binary_cross_entropy(a, b, reduction=reduction), [p, t])
    hard = t64((uniform((4, 3), seed=3) > 0).astype(float), device, requires_grad=False)
    gradcheck(lambda a: nn.BCELoss(reduction=reduction)(a, hard), [p])


def test_binary_cross_entropy_after_sigmoid(device):
    x = t64(uniform((5, 1), -3, 3), device)
    t = t64([[0.0], [1.0], [1.0], [0.0], [1.0]], device, requires_grad=False)
    gradcheck(lambda v: F.binary_cross_entropy(F.sigmoid(v), t), [x])


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy_with_logits(device, reduction):
    x = t64(uniform((4, 3), -4, 4, seed=1), device)
    t = t64(uniform((4, 3), 0.0, 1.0, seed=2), device)
    gradcheck(lambda a, b: F.binary_cross_entropy_with_logits(a, b, reduction=reduction), [x, t])
    gradcheck(lambda a, b: nn.BCEWithLogitsLoss(reduction=reduction)(a, b), [x, t])


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_labels(device, reduction):
    x = t64(uniform((5, 4), -3, 3), device)
    y = nnx.tensor([0, 3, 1, 1, 2], device=device)
    gradcheck(lambda a: F.cross_entropy(a, y, reduction=reduction), [x])
    gradcheck(lambda a: nn.CrossEntropyLoss(reduction=reduction)(a, y), [x])


@pytest.mark.parametrize("ignore_index", [-100, 1, -1])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_ignore_index(device, reduction, ignore_index):
    x = t64(uniform((6, 4), -3, 3), device)
    labels = np.array([0, 3, 1, 1, 2, 0])
    labels[[1, 4]] = ignore_index
    y = nnx.tensor(labels, device=device)
    gradcheck(lambda a: F.cross_entropy(a, y, reduction=reduction, ignore_index=ignore_index), [x])
    gradcheck(lambda a: nn.CrossEntropyLoss(ignore_index=ignore_index, reduction=reduction)(a, y), [x])
    # ignored rows get no gradient; the mean is over the kept rows
    x.grad = None
    loss = F.cross_entropy(x, y, reduction=reduction, ignore_index=ignore_index)
    loss.sum().backward() if reduction == "none" else loss.backward()
    g = x.grad.numpy()
    assert np.all(g[[1, 4]] == 0)
    xs = x.numpy()
    keep = labels != ignore_index
    lse = np.log(np.exp(xs).sum(axis=1))
    rows = lse - xs[np.arange(6), np.where(keep, labels, 0)]
    expected = {"mean": rows[keep].mean(), "sum": rows[keep].sum(),
                "none": np.where(keep, rows, 0.0)}[reduction]
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-12)


def test_cross_entropy_all_ignored(device):
    x = t64(uniform((3, 4)), device)
    y = nnx.tensor([-100, -100, -100], device=device)
    loss = F.cross_entropy(x, y)
    assert loss.item() == 0.0
    loss.backward()
    np.testing.assert_array_equal(x.grad.numpy(), 0.0)
    gradcheck(lambda a: F.cross_entropy(a, y), [x])


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_probability_targets(device, reduction):
    x = t64(uniform((5, 4), -3, 3, seed=1), device)
    p = uniform((5, 4), 0.1, 1.0, seed=2)
    t = t64(p / p.sum(axis=1, keepdims=True), device)
    gradcheck(lambda a, b: F.cross_entropy(a, b, reduction=reduction), [x, t])
    onehot = t64(np.eye(4)[[0, 3, 1, 1, 2]], device, requires_grad=False)
    gradcheck(lambda a: F.cross_entropy(a, onehot, reduction=reduction), [x])


def test_cross_entropy_one_hot_equals_labels(device):
    x = t64(uniform((5, 4), -3, 3), device)
    labels = [0, 3, 1, 1, 2]
    a = F.cross_entropy(x, nnx.tensor(labels, device=device))
    b = F.cross_entropy(x, t64(np.eye(4)[labels], device, requires_grad=False))
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12)


@given(n=st.integers(1, 6), c=st.integers(2, 6), reduction=st.sampled_from(REDUCTIONS),
       seed=st.integers(0, 2 ** 16))
@HYP
def test_cross_entropy_random_shapes(device, n, c, reduction, seed):
    rng = np.random.default_rng(seed)
    x = t64(rng.uniform(-3, 3, (n, c)), device)
    y = nnx.tensor(rng.integers(0, c, n), device=device)
    gradcheck(lambda a: F.cross_entropy(a, y, reduction=reduction), [x])


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_nll_loss(device, reduction):
    x = t64(uniform((5, 4), -3, 3), device)
    y = nnx.tensor([0, 3, -100, 1, 2], device=device)
    gradcheck(lambda a: F.nll_loss(F.log_softmax(a, axis=1), y, reduction=reduction), [x])
    np.testing.assert_allclose(
        F.nll_loss(F.log_softmax(x, axis=1), y, reduction=reduction).numpy(),
        F.cross_entropy(x, y, reduction=reduction).numpy(), rtol=1e-12)


@pytest.mark.parametrize("loss", ["mse", "bce", "bce_logits", "ce"])
def test_loss_scaled_upstream_gradient(device, loss):
    """A loss that is not the root of the graph (its gradient is not the implicit 1)."""
    x = t64(uniform((4, 3), -2, 2, seed=1), device)
    t = t64(uniform((4, 3), 0.0, 1.0, seed=2), device, requires_grad=False)
    y = nnx.tensor([0, 2, 1, 1], device=device)
    f = {"mse": lambda a: F.mse_loss(a, t), "bce": lambda a: F.binary_cross_entropy(F.sigmoid(a), t),
         "bce_logits": lambda a: F.binary_cross_entropy_with_logits(a, t),
         "ce": lambda a: F.cross_entropy(a, y)}[loss]
    gradcheck(lambda a: f(a) * 3.0 + f(a * 2.0) ** 2, [x])
