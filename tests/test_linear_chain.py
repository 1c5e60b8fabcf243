"""Sequential's stretches of Linear layers run as one LinearChain node: same numbers as layer by
layer (bit for bit), correct gradients, the per-layer errors, and a cache that follows changes."""
import numpy as np
import pytest

import nnx
import nnx.functional as F
from nnx import nn
from nnx.functional import LinearChain
from nnx.testing import gradcheck

ACTS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh,
        "leaky_relu": lambda: nn.LeakyReLU(0.2), "none": None}


def mlp(sizes, act, bias=True, last_act=None, dtype=None):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b, bias=bias, dtype=dtype))
        make = ACTS[act] if i < len(sizes) - 2 else (ACTS[last_act] if last_act else None)
        if make is not None:
            layers.append(make())
    return nn.Sequential(*layers)


def layer_by_layer(model, x):
    """The same forward as one node per layer (F.linear, one-layer chains)."""
    for m, act in model._plan():
        if act is None:
            x = m(x)
        else:
            x = m.forward(x, act.fused_activation, act.__dict__.get("negative_slope", 0.01))
    return x


def grads(model, x, out):
    model.zero_grad() if hasattr(model, "zero_grad") else None
    return [None if p.grad is None else p.grad.numpy().copy() for p in model.parameters()] + \
        [None if x.grad is None else x.grad.numpy().copy()]


def run_both(model, x_host, x_grad, target_fn):
    results = []
    for forward in (lambda m, x: m(x), layer_by_layer):
        for p in model.parameters():
            p.grad = None
        x = nnx.tensor(x_host, requires_grad=x_grad)
        out = forward(model, x)
        target_fn(out).backward()
        results.append((out.numpy().copy(), [p.grad.numpy().copy() for p in model.parameters()],
                        None if not x_grad else x.grad.numpy().copy()))
    return results


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("x_grad", [False, True])
@pytest.mark.parametrize("lead", [(6,), (2, 3)])
def test_chain_is_bit_identical_to_layer_by_layer(act, bias, x_grad, lead):
    nnx.manual_seed(0)
    model = mlp([5, 7, 4, 3], act, bias=bias, last_act="sigmoid" if act == "sigmoid" else None)
    x_host = np.random.default_rng(1).standard_normal(lead + (5,)).astype(np.float32)
    w = nnx.tensor(np.random.default_rng(2).standard_normal(lead + (3,)).astype(np.float32))
    (out_c, g_c, gx_c), (out_l, g_l, gx_l) = run_both(model, x_host, x_grad,
                                                      lambda o: (o * w).sum())
    assert out_c.shape == lead + (3,)
    np.testing.assert_array_equal(out_c, out_l)
    for a, b in zip(g_c, g_l):
        np.testing.assert_array_equal(a, b)
    if x_grad:
        assert gx_c.shape == x_host.shape
        np.testing.assert_array_equal(gx_c, gx_l)


def test_one_node_for_the_whole_stretch():
    model = mlp([2, 2, 1], "sigmoid", last_act="sigmoid")
    out = model(nnx.tensor(np.zeros((4, 2), np.float32)))
    assert isinstance(out.grad_fn, LinearChain)
    assert [a for a, _, _ in out.grad_fn.layers] == ["sigmoid", "sigmoid"]
    assert out.grad_fn.inputs[0].grad_fn is None  # straight from the input


def test_bce_after_chain_uses_the_sigmoid_shortcut_and_matches_torch_formula():
    nnx.manual_seed(3)
    model = mlp([2, 2, 1], "sigmoid", last_act="sigmoid")
    x = nnx.tensor([[0., 0.], [0., 1.], [1., 0.], [1., 1.]])
    y = nnx.tensor([[0.], [1.], [1.], [0.]])
    loss = nn.BCELoss()(model(x), y)
    loss.backward()
    got = [p.grad.numpy().copy() for p in model.parameters()]
    for p in model.parameters():
        p.grad = None
    # reference: the same net as separate nodes, sigmoid outside the linear, BCE by formula
    h = F.sigmoid(F.linear(x, model[0].weight, model[0].bias))
    p_ = F.sigmoid(F.linear(h, model[2].weight, model[2].bias))
    ref = -(y * p_.log() + (1 - y) * (1 - p_).log()).mean()
    ref.backward()
    np.testing.assert_allclose(loss.item(), ref.item(), rtol=1e-6)
    for a, p in zip(got, model.parameters()):
        np.testing.assert_allclose(a, p.grad.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("act", ["sigmoid", "tanh", "relu", "leaky_relu"])
def test_chain_gradcheck_float64(device, act):
    nnx.set_device(device)
    nnx.manual_seed(4)
    model = mlp([3, 4, 4, 2], act, last_act="sigmoid", dtype="float64")
    x = nnx.tensor(np.random.default_rng(5).uniform(-2, 2, (5, 3)), dtype="float64",
                   device=device, requires_grad=True)
    params = list(model.parameters())
    out = model(x)
    assert isinstance(out.grad_fn, LinearChain) and len(out.grad_fn.layers) == 3
    # relu kinks: with continuous random data no pre-activation lies within eps of 0
    assert gradcheck(lambda x, *ps: model(x), [x] + params)


def test_frozen_layers_get_no_gradient_but_pass_it_on():
    nnx.manual_seed(6)
    model = mlp([3, 4, 4, 2], "tanh")
    for p in model[0].parameters():
        p.requires_grad = False
    x = nnx.tensor(np.ones((2, 3), np.float32))
    model(x).sum().backward()
    assert model[0].weight.grad is None and model[0].bias.grad is None
    assert model[2].weight.grad is not None and model[4].bias.grad is not None
    # frozen middle layer, input wants a gradient: it flows through the frozen layer
    for p in model.parameters():
        p.grad = None
        p.requires_grad = True
    for p in model[2].parameters():
        p.requires_grad = False
    x = nnx.tensor(np.ones((2, 3), np.float32), requires_grad=True)
    model(x).sum().backward()
    assert model[2].weight.grad is None
    assert x.grad is not None and model[0].weight.grad is not None
    assert np.abs(x.grad.numpy()).sum() > 0


def test_nothing_recorded_without_grad():
    model = mlp([3, 4, 2], "relu")
    with nnx.no_grad():
        out = model(nnx.tensor(np.ones((2, 3), np.float32)))
    assert out.grad_fn is None and not out.requires_grad


def test_shared_layer_accumulates_both_uses():
    nnx.manual_seed(7)
    lin = nn.Linear(3, 3)
    model = nn.Sequential(lin, nn.Tanh(), lin)
    x_host = np.random.default_rng(8).standard_normal((4, 3)).astype(np.float32)
    (out_c, g_c, _), (out_l, g_l, _) = run_both(model, x_host, False, lambda o: o.sum())
    np.testing.assert_array_equal(out_c, out_l)
    for a, b in zip(g_c, g_l):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_layer_sizes_that_do_not_chain_raise_the_layers_error():
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(4, 1))
    with pytest.raises(nnx.ShapeError, match=r"Linear\(4 -> 1\)"):
        model(nnx.tensor(np.ones((2, 2), np.float32)))
    with pytest.raises(nnx.ShapeError, match=r"Linear\(2 -> 3\)"):
        model(nnx.tensor(np.ones((2, 5), np.float32)))


def test_dtype_mismatch_inside_the_stretch_raises():
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    model[2].double()
    with pytest.raises(nnx.DTypeError, match="float64"):
        model(nnx.tensor(np.ones((2, 2), np.float32)))


def test_cache_follows_parameter_and_module_changes():
    nnx.manual_seed(9)
    model = nn.Sequential(nn.Linear(2, 3), nn.LeakyReLU(0.1), nn.Linear(3, 1))
    x = nnx.tensor(np.array([[1.0, -2.0], [-3.0, 0.5]], np.float32))
    model(x)
    # a replaced parameter is used
    model[2].weight = nn.Parameter(np.full((1, 3), 2.0, np.float32))
    np.testing.assert_array_equal(model(x).numpy(), layer_by_layer(model, x).numpy())
    # new values through .data (other shape: out of any flat buffer)
    model[2].weight.data = np.ones((1, 3), np.float32)
    np.testing.assert_array_equal(model(x).numpy(), layer_by_layer(model, x).numpy())
    # an activation's attribute
    model[1].negative_slope = 0.5
    h = F.leaky_relu(F.linear(x, model[0].weight, model[0].bias), 0.5)
    np.testing.assert_allclose(model(x).numpy(),
                               F.linear(h, model[2].weight, model[2].bias).numpy(), rtol=1e-6)
    # the whole model in float64, then a float64 input
    model.double()
    x64 = nnx.tensor(x.numpy(), dtype="float64")
    assert model(x64).dtype == np.float64
    # an appended layer joins the stretch
    model.append(nn.Sigmoid())
    out = model(x64)
    assert out.grad_fn.layers[-1][0] == "sigmoid" and len(out.grad_fn.layers) == 2


def test_dropout_splits_the_stretch():
    nnx.manual_seed(10)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4, 2))
    model.eval()
    x = nnx.tensor(np.ones((2, 3), np.float32))
    out = model(x)
    assert isinstance(out.grad_fn, LinearChain) and len(out.grad_fn.layers) == 1
    np.testing.assert_array_equal(out.numpy(), layer_by_layer(model, x).numpy())


def test_int_and_1d_inputs_take_the_layer_path():
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    a = model(nnx.tensor([[1, 2]])).numpy()  # integer input: promoted, as per layer
    b = model(nnx.tensor([1.0, 2.0])).numpy()  # 1-D input: (2,) -> (1,)
    assert a.shape == (1, 1) and b.shape == (1,)
    np.testing.assert_allclose(a.reshape(-1), b, rtol=1e-6)


def test_anomaly_mode_names_the_layer():
    model = nn.Sequential(nn.Linear(2, 2), nn.Sigmoid(), nn.Linear(2, 1))
    with nnx.no_grad():
        model[2].weight.data[...] = np.nan
    with nnx.detect_anomaly():
        with pytest.raises(nnx.AnomalyError, match="Linear"):
            model(nnx.tensor(np.ones((1, 2), np.float32)))


def test_second_backward_through_a_chain_raises():
    model = mlp([2, 3, 1], "relu")
    loss = model(nnx.tensor(np.ones((2, 2), np.float32))).sum()
    loss.backward()
    with pytest.raises(nnx.GraphError):
        loss.backward()


def test_linear_without_bias_matches_torch():
    torch = pytest.importorskip("torch")
    nnx.manual_seed(11)
    lin = nn.Linear(3, 2, bias=False)
    assert lin.bias is None and list(lin.state_dict()) == ["weight"]
    ref = torch.nn.Linear(3, 2, bias=False)
    ref.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in lin.state_dict().items()})
    x_host = np.random.default_rng(12).standard_normal((4, 3)).astype(np.float32)
    x, xr = nnx.tensor(x_host, requires_grad=True), torch.from_numpy(x_host).requires_grad_()
    lin(x).sum().backward()
    ref(xr).sum().backward()
    np.testing.assert_allclose(lin(x).numpy(), ref(xr).detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(lin.weight.grad.numpy(), ref.weight.grad.numpy(), rtol=1e-6)
    np.testing.assert_allclose(x.grad.numpy(), xr.grad.numpy(), rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int32, np.int64, np.uint32])
def test_cross_entropy_labels_of_every_integer_dtype(dtype):
    logits = nnx.tensor(np.random.default_rng(13).standard_normal((3, 4)).astype(np.float32))
    ok = F.cross_entropy(logits, nnx.tensor(np.array([0, 3, 2], dtype)))
    ref = F.cross_entropy(logits, nnx.tensor(np.array([0, 3, 2], np.int64)))
    assert ok.item() == ref.item()
    with pytest.raises(nnx.LabelError, match="label 4"):
        F.cross_entropy(logits, nnx.tensor(np.array([0, 4, 2], dtype)))
    if np.dtype(dtype).kind == "i":
        with pytest.raises(nnx.LabelError, match="label -1"):
            F.cross_entropy(logits, nnx.tensor(np.array([0, -1, 2], dtype)))


def test_custom_function_may_write_into_its_incoming_gradient():
    from nnx.autograd import Function

    class Double(Function):
        def forward(self, x):
            return x.sum()

        def backward(self, gy):
            gy *= 2  # in place on the seed of loss.backward()
            return (self.xp.ones((3,), dtype=gy.dtype) * gy,)

    for _ in range(2):  # the second backward must see a fresh 1.0, not the doubled one
        x = nnx.tensor(np.ones(3, np.float32), requires_grad=True)
        Double().apply(x).backward()
        np.testing.assert_array_equal(x.grad.numpy(), [2, 2, 2])


def test_cross_entropy_small_signed_labels_with_many_classes():
    """int8 labels read as unsigned are < 256: with C > 127 the sign must be checked instead."""
    logits = nnx.tensor(np.random.default_rng(14).standard_normal((3, 200)).astype(np.float32))
    for dt in (np.int8, np.int16):
        labels = np.array([5, -100, 7], dt)
        got = F.cross_entropy(logits, nnx.tensor(labels), ignore_index=-100).item()
        want = F.cross_entropy(logits, nnx.tensor(labels.astype(np.int64)), ignore_index=-100).item()
        assert got == want
    wide = nnx.tensor(np.zeros((3, 300), np.float32))
    with pytest.raises(nnx.LabelError, match="label -1"):
        F.cross_entropy(wide, nnx.tensor(np.array([0, -1, 2], np.int8)))


def test_direct_registry_edits_reach_the_chain():
    nnx.manual_seed(15)
    model = nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 1))
    x = nnx.tensor(np.array([[0.5, -1.0]], np.float32))
    model(x)
    model[2]._parameters["weight"] = nn.Parameter(np.full((1, 2), 3.0, np.float32))
    np.testing.assert_array_equal(model(x).numpy(), layer_by_layer(model, x).numpy())
    model._modules["2"] = nn.Linear(2, 4)
    assert model(x).shape == (1, 4)


def test_a_replaced_forward_is_called():
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    x = nnx.tensor(np.ones((1, 2), np.float32))
    model(x)
    calls = []
    inner = model[2].forward

    def traced(h, *args):
        calls.append(h.shape)
        return inner(h, *args)

    model[2].forward = traced
    model(x)
    assert calls == [(1, 3)]


def test_bce_float16_clamps_log0_at_minus_100():
    p = nnx.tensor(np.array([0.0, 1.0, 0.5], np.float16))
    t = nnx.tensor(np.array([1.0, 0.0, 1.0], np.float16))
    got = F.binary_cross_entropy(p, t, reduction="none").numpy()
    np.testing.assert_allclose(got.astype(np.float64), [100, 100, np.log(2)], rtol=1e-3)


def test_user_function_behind_an_nnx_op_may_write_into_its_gradient():
    from nnx.autograd import Function

    class Scaled(Function):
        def forward(self, x):
            return x.sum()

        def backward(self, gy):
            gy *= 2
            return (self.xp.ones((2,), dtype=gy.dtype) * gy,)

    for _ in range(2):
        x = nnx.tensor(np.ones(2, np.float32), requires_grad=True)
        (Scaled().apply(x) + 1.0).backward()
        np.testing.assert_array_equal(x.grad.numpy(), [2, 2])
