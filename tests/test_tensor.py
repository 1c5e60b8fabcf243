"""Tensors: dtype rules, attributes, ops as methods and functions, autograd bookkeeping,
seeding and the device API."""
import os
import subprocess
import sys

import numpy as np
import pytest

from nnx import backends
import nnx
import nnx.functional as F
from nnx import nn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_OK, CUDA_WHY = backends.cuda_status()


# ---------------------------------------------------------------------- dtype rules
class TestDtypeRules:
    def test_python_floats_default_to_float32(self, device):
        assert nnx.tensor([1.0, 2.5], device=device).dtype == np.float32
        assert nnx.tensor(1.5, device=device).dtype == np.float32
        assert nnx.tensor([[0.0, 0.0], [0.0, 1.0]], device=device).dtype == np.float32

    def test_mixed_int_float_list_is_float(self, device):
        assert nnx.tensor([1, 2.5], device=device).dtype == np.float32

    def test_numpy_float64_becomes_default_dtype(self, device):
        t = nnx.tensor(np.array([1.0, 2.0], dtype=np.float64), device=device)
        assert t.dtype == np.float32
        np.testing.assert_array_equal(t.numpy(), [1.0, 2.0])

    @pytest.mark.parametrize("dt", [np.float32, np.float16])
    def test_float32_float16_arrays_keep_dtype(self, device, dt):
        t = nnx.tensor(np.array([1.0, 2.0], dtype=dt), device=device)
        assert t.dtype == dt

    def test_ints_stay_int64(self, device):
        t = nnx.tensor([0, 1, 2], device=device)
        assert t.dtype == np.int64
        assert nnx.tensor(3, device=device).dtype == np.int64
        assert nnx.tensor(np.array([1, 2], dtype=np.int64), device=device).dtype == np.int64

    def test_int32_array_stays_int32(self, device):
        assert nnx.tensor(np.array([1, 2], dtype=np.int32), device=device).dtype == np.int32

    @pytest.mark.parametrize("spec,expected", [
        (np.float64, np.float64), ("float64", np.float64), (np.dtype("float64"), np.float64),
        ("float16", np.float16), (np.float32, np.float32), ("int64", np.int64),
        ("int32", np.int32), (nnx.float64, np.float64),
    ])
    def test_dtype_argument_accepts_numpy_dtypes_and_names(self, device, spec, expected):
        t = nnx.tensor([1.0, 2.0], dtype=spec, device=device)
        assert t.dtype == expected

    def test_float64_data_with_float64_dtype_keeps_precision(self, device):
        v = 1.0 + 1e-12
        t = nnx.tensor([v], dtype="float64", device=device)
        assert t.numpy()[0] == v

    def test_unknown_dtype_raises(self):
        with pytest.raises(TypeError):
            nnx.tensor([1.0], dtype="not_a_dtype")

    def test_set_default_dtype(self, device):
        nnx.set_default_dtype("float64")
        assert nnx.get_default_dtype() == np.float64
        assert nnx.tensor([1.0], device=device).dtype == np.float64
        assert nnx.tensor(np.array([1.0]), device=device).dtype == np.float64
        assert nnx.tensor([1], device=device).dtype == np.int64  # ints are unaffected
        assert nnx.zeros(2, device=device).dtype == np.float64
        assert nn.Linear(2, 3, device=device).weight.dtype == np.float64
        nnx.set_default_dtype(np.float32)
        assert nnx.tensor([1.0], device=device).dtype == np.float32
        assert nn.Linear(2, 3, device=device).weight.dtype == np.float32

    def test_set_default_dtype_rejects_non_float(self):
        with pytest.raises(TypeError):
            nnx.set_default_dtype("int64")
        assert nnx.get_default_dtype() == np.float32

    def test_tensor_copies_its_data(self, device):
        a = np.array([1.0, 2.0], dtype=np.float32)
        t = nnx.tensor(a, device=device)
        a[0] = 99.0
        assert t.numpy()[0] == 1.0

    def test_float32_ops_stay_float32_with_python_scalars(self, device):
        x = nnx.tensor([1.0, 2.0], device=device)
        for y in (x + 1.5, 1.5 + x, x * 0.1, x / 3.0, 3.0 / x, x - 0.5, 0.5 - x, x ** 2.0,
                  2.0 ** x, x * np.float64(0.1), x + np.float64(2.0)):
            assert y.dtype == np.float32

    def test_mixed_float_dtypes_raise(self, device):
        a = nnx.tensor([1.0], device=device)
        b = nnx.tensor([1.0], dtype="float64", device=device)
        with pytest.raises(nnx.DTypeError):
            a + b
        with pytest.raises(TypeError):  # DTypeError is a TypeError
            a @ b


# ---------------------------------------------------------------------- attributes
class TestAttributes:
    def test_basic_attributes(self, device):
        x = nnx.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], device=device, requires_grad=True)
        assert x.shape == (2, 3)
        assert isinstance(x.shape, tuple)
        assert x.dtype == np.float32
        assert x.device == ("cpu" if device == "cpu" else "cuda:0")
        assert x.grad is None
        assert x.requires_grad is True
        assert x.ndim == 2
        assert nnx.tensor([1.0], device=device).requires_grad is False

    def test_data_is_backend_array(self, device):
        x = nnx.tensor([1.0, 2.0], device=device)
        assert isinstance(x.data, backends.get_backend(device).array_type)

    def test_numpy_returns_host_ndarray(self, device):
        x = nnx.tensor([[1.0, 2.0]], device=device)
        a = x.numpy()
        assert type(a) is np.ndarray
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, [[1.0, 2.0]])
        # also for results of ops and for integer tensors
        assert type((x * 2).numpy()) is np.ndarray
        assert type(nnx.tensor([1, 2], device=device).numpy()) is np.ndarray

    def test_item(self, device):
        x = nnx.tensor([2.5], device=device)
        v = x.item()
        assert isinstance(v, float) and v == 2.5
        assert isinstance(nnx.tensor(3, device=device).item(), int)
        with pytest.raises(ValueError):
            nnx.tensor([1.0, 2.0], device=device).item()

    def test_detach(self, device):
        x = nnx.tensor([1.0, 2.0], device=device, requires_grad=True)
        y = x * 2
        d = y.detach()
        assert d.requires_grad is False
        assert d.grad_fn is None
        np.testing.assert_array_equal(d.numpy(), [2.0, 4.0])
        # the detached result does not pass gradients back
        (d * x).sum().backward()
        np.testing.assert_array_equal(x.grad.numpy(), [2.0, 4.0])

    def test_to_dtype(self, device):
        x = nnx.tensor([1.5, 2.5], device=device)
        y = x.to(dtype="float64")
        assert y.dtype == np.float64
        assert y.device == x.device
        np.testing.assert_array_equal(y.numpy(), [1.5, 2.5])
        assert x.to(dtype=np.float16).dtype == np.float16
        assert x.to("float64").dtype == np.float64  # a dtype name as the first argument
        assert x.to(dtype=np.float32) is x or x.to(dtype=np.float32).dtype == np.float32

    def test_to_dtype_is_differentiable(self, device):
        x = nnx.tensor([1.0, 2.0], device=device, requires_grad=True)
        (x.to(dtype="float64") * 3.0).sum().backward()
        assert x.grad.dtype == np.float32
        np.testing.assert_array_equal(x.grad.numpy(), [3.0, 3.0])

    def test_to_cpu_device(self, device):
        x = nnx.tensor([1.0, 2.0], device=device)
        y = x.to("cpu")
        assert y.device == "cpu"
        assert type(y.data) is np.ndarray

    def test_grad_is_a_tensor_of_same_shape_and_dtype(self, device):
        x = nnx.tensor([[1.0, 2.0]], device=device, dtype="float64", requires_grad=True)
        (x * x).sum().backward()
        assert isinstance(x.grad, nnx.Tensor)
        assert x.grad.shape == x.shape and x.grad.dtype == np.float64

    def test_requires_grad_only_for_floats(self, device):
        with pytest.raises(TypeError):
            nnx.tensor([1, 2], device=device, requires_grad=True)


# ---------------------------------------------------------------------- ops: method and function
RNG = np.random.default_rng(1234)
A = RNG.uniform(0.5, 2.0, (3, 4)).astype(np.float32)
B = RNG.uniform(0.5, 2.0, (3, 4)).astype(np.float32)
M = RNG.uniform(-1.0, 1.0, (4, 5)).astype(np.float32)


def _softmax(a, axis=-1):
    e = np.exp(a - a.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# name, method call, function call, NumPy reference
UNARY_OPS = [
    ("exp", lambda x: x.exp(), lambda x: nnx.exp(x), np.exp),
    ("log", lambda x: x.log(), lambda x: nnx.log(x), np.log),
    ("tanh", lambda x: x.tanh(), lambda x: nnx.tanh(x), np.tanh),
    ("abs", lambda x: (-x).abs(), lambda x: nnx.abs(-x), lambda a: np.abs(-a)),
    ("sqrt", lambda x: x.sqrt(), lambda x: nnx.sqrt(x), np.sqrt),
    ("neg", lambda x: x.neg(), lambda x: nnx.neg(x), np.negative),
    ("clip", lambda x: x.clip(0.8, 1.5), lambda x: nnx.clip(x, 0.8, 1.5),
     lambda a: np.clip(a, 0.8, 1.5)),
    ("clamp", lambda x: x.clamp(min=1.0), lambda x: nnx.clamp(x, min=1.0),
     lambda a: np.maximum(a, 1.0)),
    ("sum", lambda x: x.sum(), lambda x: nnx.sum(x), np.sum),
    ("sum_axis", lambda x: x.sum(axis=1), lambda x: nnx.sum(x, axis=1), lambda a: a.sum(axis=1)),
    ("sum_keepdims", lambda x: x.sum(axis=0, keepdims=True),
     lambda x: nnx.sum(x, axis=0, keepdims=True), lambda a: a.sum(axis=0, keepdims=True)),
    ("mean", lambda x: x.mean(), lambda x: nnx.mean(x), np.mean),
    ("mean_axis", lambda x: x.mean(axis=-1), lambda x: nnx.mean(x, axis=-1),
     lambda a: a.mean(axis=-1)),
    ("max", lambda x: x.max(), lambda x: nnx.max(x), np.max),
    ("max_axis", lambda x: x.max(axis=1), lambda x: nnx.max(x, axis=1), lambda a: a.max(axis=1)),
    ("min", lambda x: x.min(), lambda x: nnx.min(x), np.min),
    ("amax", lambda x: x.amax(axis=0), lambda x: nnx.amax(x, axis=0), lambda a: a.max(axis=0)),
    ("argmax", lambda x: x.argmax(axis=1), lambda x: nnx.argmax(x, axis=1),
     lambda a: a.argmax(axis=1)),
    ("argmin", lambda x: x.argmin(axis=1), lambda x: nnx.argmin(x, axis=1),
     lambda a: a.argmin(axis=1)),
    ("reshape", lambda x: x.reshape(4, 3), lambda x: nnx.reshape(x, (4, 3)),
     lambda a: a.reshape(4, 3)),
    ("reshape_infer", lambda x: x.reshape(-1), lambda x: nnx.reshape(x, -1),
     lambda a: a.reshape(-1)),
    ("transpose", lambda x: x.transpose(), lambda x: nnx.transpose(x), lambda a: a.T),
    ("T", lambda x: x.T, lambda x: nnx.transpose(x, 0, 1), lambda a: a.T),
    ("permute", lambda x: x.permute(1, 0), lambda x: nnx.permute(x, 1, 0), lambda a: a.T),
    ("flatten", lambda x: x.reshape(3, 2, 2).flatten(1), lambda x: nnx.flatten(x.reshape(3, 2, 2), 1),
     lambda a: a.reshape(3, 4)),
    ("unsqueeze", lambda x: x.unsqueeze(0), lambda x: nnx.unsqueeze(x, 0), lambda a: a[None]),
    ("squeeze", lambda x: x.unsqueeze(1).squeeze(1), lambda x: nnx.squeeze(nnx.unsqueeze(x, 1), 1),
     lambda a: a),
    ("sigmoid", lambda x: x.sigmoid(), lambda x: nnx.sigmoid(x), lambda a: 1 / (1 + np.exp(-a))),
    ("relu", lambda x: (x - 1.2).relu(), lambda x: nnx.relu(x - 1.2),
     lambda a: np.maximum(a - np.float32(1.2), 0)),
    ("leaky_relu", lambda x: (x - 1.2).leaky_relu(0.1), lambda x: nnx.leaky_relu(x - 1.2, 0.1),
     lambda a: np.where(a - np.float32(1.2) >= 0, a - np.float32(1.2), 0.1 * (a - np.float32(1.2)))),
    ("softmax", lambda x: x.softmax(axis=-1), lambda x: nnx.softmax(x, axis=-1), _softmax),
    ("log_softmax", lambda x: x.log_softmax(axis=-1), lambda x: nnx.log_softmax(x, axis=-1),
     lambda a: np.log(_softmax(a))),
]

BINARY_OPS = [
    ("add", lambda x, y: x + y, lambda x, y: x.add(y), lambda x, y: nnx.add(x, y), np.add),
    ("sub", lambda x, y: x - y, lambda x, y: x.sub(y), lambda x, y: nnx.sub(x, y), np.subtract),
    ("mul", lambda x, y: x * y, lambda x, y: x.mul(y), lambda x, y: nnx.mul(x, y), np.multiply),
    ("div", lambda x, y: x / y, lambda x, y: x.div(y), lambda x, y: nnx.div(x, y), np.divide),
    ("pow", lambda x, y: x ** y, lambda x, y: x.pow(y), lambda x, y: nnx.pow(x, y), np.power),
]


class TestOps:
    @pytest.mark.parametrize("name,meth,func,ref", UNARY_OPS, ids=[o[0] for o in UNARY_OPS])
    def test_unary_method_and_function(self, device, name, meth, func, ref):
        x = nnx.tensor(A, device=device)
        y1, y2 = meth(x), func(x)
        expected = np.asarray(ref(A.astype(np.float64)))
        assert y1.shape == y2.shape == expected.shape
        np.testing.assert_array_equal(y1.numpy(), y2.numpy())
        if expected.dtype.kind == "f":
            assert y1.dtype == np.float32
            np.testing.assert_allclose(y1.numpy(), expected, rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(y1.numpy(), expected)

    @pytest.mark.parametrize("name,op,meth,func,ref", BINARY_OPS, ids=[o[0] for o in BINARY_OPS])
    def test_binary_operator_method_and_function(self, device, name, op, meth, func, ref):
        x, y = nnx.tensor(A, device=device), nnx.tensor(B, device=device)
        r = [f(x, y).numpy() for f in (op, meth, func)]
        expected = ref(A.astype(np.float64), B.astype(np.float64))
        for v in r:
            np.testing.assert_allclose(v, expected, rtol=1e-5, atol=1e-6)

    @pytest.mark.parametrize("shape_a,shape_b", [
        ((3, 4), (4,)), ((3, 1), (1, 4)), ((2, 3, 4), (3, 1)), ((1,), (2, 3)), ((4,), (2, 1, 4)),
        ((), (3, 2)),
    ])
    @pytest.mark.parametrize("name,op,meth,func,ref", BINARY_OPS, ids=[o[0] for o in BINARY_OPS])
    def test_broadcasting_matches_numpy(self, device, shape_a, shape_b, name, op, meth, func, ref):
        rng = np.random.default_rng(0)
        a = rng.uniform(0.5, 2.0, shape_a).astype(np.float32)
        b = rng.uniform(0.5, 2.0, shape_b).astype(np.float32)
        x, y = nnx.tensor(a, device=device), nnx.tensor(b, device=device)
        expected = ref(a.astype(np.float64), b.astype(np.float64))
        for out in (op(x, y), op(y, x)):
            assert out.dtype == np.float32
        got = op(x, y)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(op(y, x).numpy(), ref(b.astype(np.float64), a.astype(np.float64)),
                                   rtol=1e-5, atol=1e-6)

    @pytest.mark.parametrize("name,op,meth,func,ref", BINARY_OPS, ids=[o[0] for o in BINARY_OPS])
    def test_scalar_operands(self, device, name, op, meth, func, ref):
        x = nnx.tensor(A, device=device)
        a64 = A.astype(np.float64)
        np.testing.assert_allclose(op(x, 1.5).numpy(), ref(a64, 1.5), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(op(1.5, x).numpy(), ref(1.5, a64), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(op(x, 2).numpy(), ref(a64, 2), rtol=1e-5, atol=1e-6)

    def test_numpy_array_operands(self, device):
        x = nnx.tensor(A, device=device)
        if device == "cpu":
            np.testing.assert_allclose((x + B).numpy(), A + B, rtol=1e-6)
            r = B * x  # NumPy defers to the Tensor (__array_priority__)
            assert isinstance(r, nnx.Tensor)
            np.testing.assert_allclose(r.numpy(), A * B, rtol=1e-6)

    @pytest.mark.parametrize("sa,sb", [((4,), (4,)), ((3, 4), (4,)), ((4,), (4, 5)), ((3, 4), (4, 5)),
                                       ((2, 3, 4), (4, 5)), ((2, 3, 4), (2, 4, 5)), ((3, 4), (2, 4, 5))])
    def test_matmul(self, device, sa, sb):
        rng = np.random.default_rng(2)
        a = rng.standard_normal(sa).astype(np.float32)
        b = rng.standard_normal(sb).astype(np.float32)
        x, y = nnx.tensor(a, device=device), nnx.tensor(b, device=device)
        expected = a.astype(np.float64) @ b.astype(np.float64)
        for r in (x @ y, x.matmul(y), nnx.matmul(x, y)):
            assert r.shape == expected.shape
            np.testing.assert_allclose(r.numpy(), expected, rtol=1e-5, atol=1e-5)

    def test_matmul_shape_mismatch(self, device):
        with pytest.raises(nnx.ShapeError):
            nnx.tensor(A, device=device) @ nnx.tensor(A, device=device)

    def test_indexing(self, device):
        x = nnx.tensor(A, device=device)
        np.testing.assert_array_equal(x[1].numpy(), A[1])
        np.testing.assert_array_equal(x[:, 1:3].numpy(), A[:, 1:3])
        np.testing.assert_array_equal(x[::2, -1].numpy(), A[::2, -1])
        np.testing.assert_array_equal(x[[0, 2, 0]].numpy(), A[[0, 2, 0]])
        idx = nnx.tensor([2, 0], device=device)
        np.testing.assert_array_equal(x[idx].numpy(), A[[2, 0]])
        np.testing.assert_array_equal(x[np.arange(3), np.array([0, 1, 3])].numpy(),
                                      A[np.arange(3), [0, 1, 3]])

    def test_reshape_bad_shape_raises(self, device):
        with pytest.raises(nnx.ShapeError):
            nnx.tensor(A, device=device).reshape(5, 3)

    def test_comparisons(self, device):
        x = nnx.tensor([1.0, 2.0, 3.0], device=device)
        np.testing.assert_array_equal((x > 1.5).numpy(), [False, True, True])
        np.testing.assert_array_equal((x == 2.0).numpy(), [False, True, False])


# ---------------------------------------------------------------------- autograd bookkeeping
class TestAutograd:
    def test_no_grad(self, device):
        x = nnx.tensor([1.0, 2.0], device=device, requires_grad=True)
        with nnx.no_grad():
            assert not nnx.is_grad_enabled()
            y = x * 2
        assert nnx.is_grad_enabled()
        assert y.requires_grad is False and y.grad_fn is None
        with pytest.raises(nnx.GraphError):
            y.sum().backward()

    def test_no_grad_as_decorator(self, device):
        x = nnx.tensor([1.0], device=device, requires_grad=True)

        @nnx.no_grad()
        def f(t):
            return t * 3

        assert f(x).requires_grad is False

    def test_no_grad_restores_on_exception(self):
        with pytest.raises(KeyError):
            with nnx.no_grad():
                raise KeyError
        assert nnx.is_grad_enabled()

    def test_grad_accumulates_across_backward_calls(self, device):
        x = nnx.tensor([1.0, 2.0, 3.0], device=device, requires_grad=True)
        (x * x).sum().backward()
        np.testing.assert_allclose(x.grad.numpy(), [2.0, 4.0, 6.0])
        (x * 3.0).sum().backward()
        np.testing.assert_allclose(x.grad.numpy(), [5.0, 7.0, 9.0])

    def test_grad_accumulates_in_module_until_zero_grad(self, device):
        nnx.manual_seed(0)
        lin = nn.Linear(3, 2, device=device)
        x = nnx.tensor(A[:2, :3], device=device)
        lin(x).sum().backward()
        g1 = lin.weight.grad.numpy().copy()
        lin(x).sum().backward()
        np.testing.assert_allclose(lin.weight.grad.numpy(), 2 * g1, rtol=1e-6)
        lin.zero_grad()
        assert lin.weight.grad is None
        lin(x).sum().backward()
        np.testing.assert_allclose(lin.weight.grad.numpy(), g1, rtol=1e-6)

    def test_grad_accumulates_with_optimizer_buffers(self, device):
        nnx.manual_seed(0)
        lin = nn.Linear(3, 2, device=device)
        opt = nnx.optim.SGD(lin.parameters(), lr=0.1)
        x = nnx.tensor(A[:2, :3], device=device)
        lin(x).sum().backward()
        g1 = lin.weight.grad.numpy().copy()
        lin(x).sum().backward()
        np.testing.assert_allclose(lin.weight.grad.numpy(), 2 * g1, rtol=1e-6)
        opt.zero_grad()
        assert lin.weight.grad is None
        lin(x).sum().backward()
        np.testing.assert_allclose(lin.weight.grad.numpy(), g1, rtol=1e-6)

    def test_second_backward_raises_graph_error(self, device):
        x = nnx.tensor([1.0, 2.0], device=device, requires_grad=True)
        loss = (x.exp() * 2).sum()
        loss.backward()
        with pytest.raises(nnx.GraphError) as ei:
            loss.backward()
        assert isinstance(ei.value, RuntimeError)
        assert "second time" in str(ei.value) or "freed" in str(ei.value)

    def test_second_backward_through_shared_subgraph_raises(self, device):
        x = nnx.tensor([1.0, 2.0], device=device, requires_grad=True)
        h = x.exp()
        h.sum().backward()
        with pytest.raises(nnx.GraphError):
            (h * 2).sum().backward()

    def test_retain_graph_allows_second_backward(self, device):
        x = nnx.tensor([1.0, 2.0], device=device, requires_grad=True)
        loss = (x * x).sum()
        loss.backward(retain_graph=True)
        loss.backward()
        np.testing.assert_allclose(x.grad.numpy(), [4.0, 8.0])

    def test_backward_on_non_scalar_raises(self, device):
        x = nnx.tensor([1.0, 2.0], device=device, requires_grad=True)
        y = x * 2
        with pytest.raises(nnx.GraphError) as ei:
            y.backward()
        assert isinstance(ei.value, RuntimeError)
        assert "scalar" in str(ei.value)
        assert x.grad is None

    def test_backward_with_explicit_gradient(self, device):
        x = nnx.tensor([1.0, 2.0], device=device, requires_grad=True)
        (x * 2).backward(nnx.tensor([1.0, 10.0], device=device))
        np.testing.assert_allclose(x.grad.numpy(), [2.0, 20.0])

    def test_reused_tensor_gradient_counted_once_per_use(self, device):
        x = nnx.tensor([3.0], device=device, requires_grad=True)
        h = x * 2  # used twice below
        (h * h + h).sum().backward()
        # d/dx (4x^2 + 2x) = 8x + 2
        np.testing.assert_allclose(x.grad.numpy(), [26.0])

    def test_deep_graph_does_not_hit_recursion_limit(self, device):
        x = nnx.tensor([1.0], device=device, requires_grad=True)
        y = x
        for _ in range(3 * sys.getrecursionlimit()):
            y = y + 0.0
        y.sum().backward()
        np.testing.assert_allclose(x.grad.numpy(), [1.0])


# ---------------------------------------------------------------------- seeding
class TestManualSeed:
    def test_init_reproducible(self, device):
        nnx.manual_seed(7)
        m1 = nn.Sequential(nn.Linear(4, 8, device=device), nn.ReLU(), nn.Linear(8, 2, device=device))
        nnx.manual_seed(7)
        m2 = nn.Sequential(nn.Linear(4, 8, device=device), nn.ReLU(), nn.Linear(8, 2, device=device))
        nnx.manual_seed(8)
        m3 = nn.Sequential(nn.Linear(4, 8, device=device), nn.ReLU(), nn.Linear(8, 2, device=device))
        s1, s2, s3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
        for k in s1:
            np.testing.assert_array_equal(s1[k], s2[k])
        assert not np.array_equal(s1["0.weight"], s3["0.weight"])

    def test_random_creation_reproducible(self, device):
        nnx.manual_seed(3)
        a, b = nnx.randn(5, device=device).numpy(), nnx.rand(5, device=device).numpy()
        nnx.manual_seed(3)
        np.testing.assert_array_equal(nnx.randn(5, device=device).numpy(), a)
        np.testing.assert_array_equal(nnx.rand(5, device=device).numpy(), b)

    def test_dropout_reproducible(self, device):
        x = nnx.ones(50, 40, device=device)
        nnx.manual_seed(11)
        y1 = F.dropout(x, 0.5).numpy()
        y1b = F.dropout(x, 0.5).numpy()
        nnx.manual_seed(11)
        y2 = F.dropout(x, 0.5).numpy()
        y2b = F.dropout(x, 0.5).numpy()
        np.testing.assert_array_equal(y1, y2)
        np.testing.assert_array_equal(y1b, y2b)
        assert not np.array_equal(y1, y1b)
        assert set(np.unique(y1)) <= {0.0, 2.0}
        assert 0.35 < (y1 == 0).mean() < 0.65

    def test_dropout_module_train_eval(self, device):
        d = nn.Dropout(0.5)
        x = nnx.ones(10, 10, device=device)
        d.eval()
        np.testing.assert_array_equal(d(x).numpy(), x.numpy())
        d.train()
        assert (d(x).numpy() == 0).any()


# ---------------------------------------------------------------------- devices
def _run_nnx(code, env_device):
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    if env_device is None:
        env.pop("NNX_DEVICE", None)
    else:
        env["NNX_DEVICE"] = env_device
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120, cwd=REPO)


class TestDevices:
    def test_set_and_get_device_cpu(self):
        nnx.set_device("cpu")
        assert nnx.get_device() == "cpu"
        assert nnx.tensor([1.0]).device == "cpu"
        assert nn.Linear(2, 2).weight.device == "cpu"

    def test_device_context_manager(self):
        with nnx.device("cpu") as d:
            assert d == "cpu"
            assert nnx.get_device() == "cpu"
            assert nnx.tensor([1.0]).device == "cpu"
        assert nnx.get_device() == "cpu"

    def test_cuda_available_is_bool(self):
        v = nnx.cuda_available()
        assert isinstance(v, bool)
        assert v == CUDA_OK

    def test_auto_never_raises(self):
        nnx.set_device("auto")
        expected = "cuda:0" if CUDA_OK else "cpu"
        assert nnx.get_device() == expected
        with nnx.device("auto") as d:
            assert d == expected

    @pytest.mark.skipif(CUDA_OK, reason="CUDA is usable here")
    @pytest.mark.parametrize("spec", ["cuda", "cuda:0", "gpu"])
    def test_set_device_cuda_without_gpu_raises_with_reason(self, spec):
        with pytest.raises(nnx.DeviceError) as ei:
            nnx.set_device(spec)
        msg = str(ei.value)
        assert CUDA_WHY in msg
        assert "CUDA" in msg
        assert nnx.get_device() == "cpu"  # unchanged
        with pytest.raises(nnx.DeviceError):
            nnx.tensor([1.0], device=spec)
        with pytest.raises(nnx.DeviceError):
            with nnx.device(spec):
                pass
        with pytest.raises(nnx.DeviceError):
            nnx.tensor([1.0]).to(spec)

    @pytest.mark.gpu
    @pytest.mark.skipif(not CUDA_OK, reason=f"no usable CUDA device: {CUDA_WHY}")
    def test_cuda_index_past_device_count_raises(self):
        with pytest.raises(nnx.DeviceError):
            nnx.set_device("cuda:99")

    def test_unknown_device_raises_value_error(self):
        with pytest.raises(ValueError):
            nnx.set_device("tpu")

    def test_env_var_cpu(self):
        r = _run_nnx("import nnx; print(nnx.get_device()); print(nnx.tensor([1.0]).device)", "cpu")
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["cpu", "cpu"]

    def test_env_var_unset_defaults_to_cpu(self):
        r = _run_nnx("import nnx; print(nnx.get_device())", None)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "cpu"

    def test_env_var_auto(self):
        r = _run_nnx("import nnx; print(nnx.get_device())", "auto")
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == ("cuda:0" if CUDA_OK else "cpu")

    @pytest.mark.skipif(CUDA_OK, reason="CUDA is usable here")
    def test_env_var_cuda_without_gpu_raises_device_error(self):
        code = ("import nnx\n"
                "try:\n    nnx.get_device()\n"
                "except nnx.DeviceError as e:\n    print('DeviceError', e)\n")
        r = _run_nnx(code, "cuda")
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("DeviceError")
        assert "CUDA" in r.stdout

    @pytest.mark.gpu
    @pytest.mark.skipif(not CUDA_OK, reason=f"no usable CUDA device: {CUDA_WHY}")
    def test_env_var_cuda(self):
        r = _run_nnx("import nnx; print(nnx.get_device())", "cuda")
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "cuda:0"

    @pytest.mark.gpu
    @pytest.mark.skipif(not CUDA_OK, reason=f"no usable CUDA device: {CUDA_WHY}")
    def test_mixing_devices_raises(self):
        a = nnx.tensor([1.0, 2.0], device="cpu")
        b = nnx.tensor([1.0, 2.0], device="cuda")
        for f in (lambda: a + b, lambda: b * a, lambda: a @ b, lambda: nnx.sub(b, a)):
            with pytest.raises(nnx.DeviceError) as ei:
                f()
            assert "cpu" in str(ei.value) and "cuda" in str(ei.value)
        lin = nn.Linear(2, 1, device="cuda")
        with pytest.raises(nnx.DeviceError):
            lin(nnx.tensor([[1.0, 2.0]], device="cpu"))

    @pytest.mark.gpu
    @pytest.mark.skipif(not CUDA_OK, reason=f"no usable CUDA device: {CUDA_WHY}")
    def test_to_cuda_and_back(self):
        x = nnx.tensor([1.0, 2.0], requires_grad=True)
        y = x.to("cuda")
        assert y.device == "cuda:0"
        assert type(y.numpy()) is np.ndarray
        (y * 3.0).sum().backward()
        assert x.grad.device == "cpu"
        np.testing.assert_array_equal(x.grad.numpy(), [3.0, 3.0])
        m = nn.Linear(2, 2).to("cuda")
        assert m.weight.device == "cuda:0"
        m.to("cpu")
        assert m.weight.device == "cpu"


def test_deepcopy_and_pickle_of_tensors_and_models():
    import copy
    import pickle

    nnx.manual_seed(0)
    model = nnx.nn.Sequential(nnx.nn.Linear(2, 3), nnx.nn.ReLU(), nnx.nn.Linear(3, 1))
    opt = nnx.optim.SGD(model.parameters(), lr=0.1)
    x = nnx.tensor(np.ones((2, 2), np.float32))
    model(x).sum().backward()
    opt.step()
    want = model(x).numpy()
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert type(clone[0].weight) is nnx.nn.Parameter and clone[0].weight.requires_grad
        np.testing.assert_array_equal(clone(x).numpy(), want)
        np.testing.assert_array_equal(clone[0].weight.grad.numpy(), model[0].weight.grad.numpy())
        # independent storage, trainable on its own
        opt2 = nnx.optim.SGD(clone.parameters(), lr=0.5)
        opt2.zero_grad()
        clone(x).sum().backward()
        opt2.step()
        np.testing.assert_array_equal(model(x).numpy(), want)
        assert not np.array_equal(clone(x).numpy(), want)
    t = nnx.tensor([1.0, 2.0], requires_grad=True)
    c = copy.deepcopy(t)
    assert c.backend is t.backend and c.requires_grad and c.grad_fn is None
    np.testing.assert_array_equal((t + c).detach().numpy(), [2.0, 4.0])  # same device
