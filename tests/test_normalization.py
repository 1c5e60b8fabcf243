"""BatchNorm1d/2d, LayerNorm, F.batch_norm and F.layer_norm: gradchecks, parity with PyTorch
(outputs, gradients, running statistics, state_dict), errors, configs, devices and dtypes."""
from __future__ import annotations

import numpy as np
import pytest

import nnx
import nnx.functional as F
from nnx import nn
from nnx.testing import gradcheck

from test_emulated_device import emu  # noqa: F401  (the fixture: CupyBackend, emulated kernels)


def _t(a, requires_grad=False):
    return nnx.tensor(np.asarray(a), dtype=np.asarray(a).dtype, requires_grad=requires_grad)


# ------------------------------------------------------------------ gradchecks (float64)
@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (3, 2, 4, 5)])
@pytest.mark.parametrize("affine", ["both", "weight", "bias", "none"])
def test_batch_norm_train_gradcheck(shape, affine):
    rng = np.random.default_rng(0)
    x = _t(rng.normal(0.5, 2.0, shape), True)
    c = shape[1]
    w = _t(rng.normal(1.0, 0.3, c), True) if affine in ("both", "weight") else None
    b = _t(rng.normal(0.0, 0.3, c), True) if affine in ("both", "bias") else None
    rm, rv = _t(np.zeros(c)), _t(np.ones(c))
    inputs = [x] + [p for p in (w, b) if p is not None]

    def fn(x, *ps):
        ps = list(ps)
        ww = ps.pop(0) if w is not None else None
        bb = ps.pop(0) if b is not None else None
        return F.batch_norm(x, rm, rv, ww, bb, training=True, momentum=0.0)

    gradcheck(fn, inputs)


@pytest.mark.parametrize("shape", [(6, 3), (3, 2, 4, 5)])
def test_batch_norm_eval_gradcheck(shape):
    rng = np.random.default_rng(1)
    c = shape[1]
    x = _t(rng.normal(0.5, 2.0, shape), True)
    w, b = _t(rng.normal(1.0, 0.3, c), True), _t(rng.normal(0.0, 0.3, c), True)
    rm, rv = _t(rng.normal(0, 1, c)), _t(rng.uniform(0.5, 2, c))
    gradcheck(lambda x, w, b: F.batch_norm(x, rm, rv, w, b, training=False), [x, w, b])


@pytest.mark.parametrize("shape, norm", [((4, 6), (6,)), ((3, 4, 5), (4, 5)),
                                         ((2, 3, 4, 2), (3, 4, 2)), ((5, 7), 7)])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_gradcheck(shape, norm, affine):
    rng = np.random.default_rng(2)
    x = _t(rng.normal(0.3, 1.5, shape), True)
    ns = (norm,) if isinstance(norm, int) else norm
    if affine:
        w, b = _t(rng.normal(1, 0.3, ns), True), _t(rng.normal(0, 0.3, ns), True)
        gradcheck(lambda x, w, b: F.layer_norm(x, norm, w, b), [x, w, b])
    else:
        gradcheck(lambda x: F.layer_norm(x, norm), [x])


# ------------------------------------------------------------------ parity with PyTorch
def _torch_bn(torch, cls_name, c, **kw):
    return getattr(torch.nn, cls_name)(c, **kw)


@pytest.mark.parametrize("cls_name, shape", [("BatchNorm1d", (8, 5)), ("BatchNorm1d", (6, 5, 7)),
                                             ("BatchNorm2d", (4, 5, 6, 3))])
@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm_module_parity(cls_name, shape, momentum, affine):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    c = shape[1]
    ours = getattr(nn, cls_name)(c, momentum=momentum, affine=affine)
    theirs = _torch_bn(torch, cls_name, c, momentum=momentum, affine=affine)
    if affine:
        w, b = rng.normal(1, 0.3, c).astype(np.float32), rng.normal(0, 0.3, c).astype(np.float32)
        ours.weight.data[...] = w
        ours.bias.data[...] = b
        with torch.no_grad():
            theirs.weight.copy_(torch.tensor(w))
            theirs.bias.copy_(torch.tensor(b))
    for step in range(4):
        x = rng.normal(step * 0.5, 1.0 + step, shape).astype(np.float32)
        gy = rng.normal(0, 1, shape).astype(np.float32)
        xt = _t(x, True)
        y = ours(xt)
        (y * _t(gy)).sum().backward()
        tx = torch.tensor(x, requires_grad=True)
        ty = theirs(tx)
        ty.backward(torch.tensor(gy))
        np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(xt.grad.numpy(), tx.grad.numpy(), rtol=1e-4, atol=1e-5)
        if affine:
            np.testing.assert_allclose(ours.weight.grad.numpy(), theirs.weight.grad.numpy(),
                                       rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(ours.bias.grad.numpy(), theirs.bias.grad.numpy(),
                                       rtol=1e-4, atol=1e-5)
            ours.zero_grad()
            theirs.zero_grad()
    sd, tsd = ours.state_dict(), theirs.state_dict()
    assert list(sd) == list(tsd)
    for k in sd:
        assert sd[k].dtype == tsd[k].numpy().dtype, k
        np.testing.assert_allclose(sd[k], tsd[k].numpy(), rtol=1e-5, atol=1e-6, err_msg=k)
    assert int(sd["num_batches_tracked"]) == 4
    ours.eval()
    theirs.eval()
    x = rng.normal(0, 2, shape).astype(np.float32)
    xt = _t(x, True)
    y = ours(xt)
    y.sum().backward()
    tx = torch.tensor(x, requires_grad=True)
    ty = theirs(tx)
    ty.sum().backward()
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(xt.grad.numpy(), tx.grad.numpy(), rtol=1e-5, atol=1e-5)
    assert int(ours.num_batches_tracked.numpy()) == 4  # eval does not count


def test_batchnorm_without_running_stats_parity():
    torch = pytest.importorskip("torch")
    ours = nn.BatchNorm2d(3, track_running_stats=False)
    theirs = torch.nn.BatchNorm2d(3, track_running_stats=False)
    assert ours.running_mean is None and ours.running_var is None
    assert ours.num_batches_tracked is None
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["weight", "bias"]
    x = np.random.default_rng(4).normal(1, 2, (4, 3, 2, 2)).astype(np.float32)
    for mode in ("train", "eval"):
        getattr(ours, mode)()
        getattr(theirs, mode)()
        np.testing.assert_allclose(ours(_t(x)).numpy(), theirs(torch.tensor(x)).detach().numpy(),
                                   rtol=1e-5, atol=1e-5)


def test_functional_batch_norm_parity():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as tF

    rng = np.random.default_rng(5)
    x = rng.normal(0, 3, (7, 4, 3)).astype(np.float32)
    w, b = rng.normal(1, 0.2, 4).astype(np.float32), rng.normal(0, 0.2, 4).astype(np.float32)
    rm, rv = rng.normal(0, 1, 4).astype(np.float32), rng.uniform(0.5, 2, 4).astype(np.float32)
    for training in (True, False):
        nrm, nrv = _t(rm.copy()), _t(rv.copy())
        trm, trv = torch.tensor(rm.copy()), torch.tensor(rv.copy())
        y = F.batch_norm(_t(x), nrm, nrv, _t(w), _t(b), training, 0.3, 1e-3)
        ty = tF.batch_norm(torch.tensor(x), trm, trv, torch.tensor(w), torch.tensor(b), training,
                           0.3, 1e-3)
        np.testing.assert_allclose(y.numpy(), ty.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(nrm.numpy(), trm.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(nrv.numpy(), trv.numpy(), rtol=1e-5, atol=1e-6)
    # no running statistics: batch statistics
    y = F.batch_norm(_t(x), None, None, training=False)
    ty = tF.batch_norm(torch.tensor(x), None, None, training=True)
    np.testing.assert_allclose(y.numpy(), ty.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape, norm", [((4, 10), 10), ((2, 3, 4, 5), (4, 5)),
                                         ((3, 2, 4, 5), (2, 4, 5))])
@pytest.mark.parametrize("bias", [True, False])
def test_layernorm_module_parity(shape, norm, bias):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    ours, theirs = nn.LayerNorm(norm, bias=bias), torch.nn.LayerNorm(norm, bias=bias)
    ns = (norm,) if isinstance(norm, int) else norm
    w = rng.normal(1, 0.3, ns).astype(np.float32)
    ours.weight.data[...] = w
    with torch.no_grad():
        theirs.weight.copy_(torch.tensor(w))
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = rng.normal(2, 3, shape).astype(np.float32)
    gy = rng.normal(0, 1, shape).astype(np.float32)
    xt = _t(x, True)
    y = ours(xt)
    (y * _t(gy)).sum().backward()
    tx = torch.tensor(x, requires_grad=True)
    ty = theirs(tx)
    ty.backward(torch.tensor(gy))
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(xt.grad.numpy(), tx.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ours.weight.grad.numpy(), theirs.weight.grad.numpy(), rtol=1e-4,
                               atol=1e-5)
    if bias:
        np.testing.assert_allclose(ours.bias.grad.numpy(), theirs.bias.grad.numpy(), rtol=1e-4,
                                   atol=1e-5)
    no_affine = nn.LayerNorm(norm, elementwise_affine=False)
    assert list(no_affine.state_dict()) == []
    np.testing.assert_allclose(no_affine(_t(x)).numpy(),
                               torch.nn.LayerNorm(norm, elementwise_affine=False)(
                                   torch.tensor(x)).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_load_torch_state_dict_into_batchnorm():
    torch = pytest.importorskip("torch")
    theirs = torch.nn.BatchNorm2d(3)
    theirs(torch.randn(4, 3, 2, 2) * 3 + 1)
    ours = nn.BatchNorm2d(3)
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    np.testing.assert_allclose(ours.running_var.numpy(), theirs.running_var.numpy())
    assert int(ours.num_batches_tracked.numpy()) == 1
    ours.eval()
    theirs.eval()
    x = np.random.default_rng(7).normal(0, 1, (2, 3, 2, 2)).astype(np.float32)
    np.testing.assert_allclose(ours(_t(x)).numpy(), theirs(torch.tensor(x)).detach().numpy(),
                               rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ buffers, dtypes, saving
def test_int_buffer_survives_dtype_moves_and_checkpoints(tmp_path):
    bn = nn.BatchNorm1d(4)
    for _ in range(3):
        bn(nnx.randn(5, 4))
    bn.double()
    assert bn.weight.dtype == nnx.float64 and bn.running_mean.dtype == nnx.float64
    assert bn.num_batches_tracked.dtype == nnx.int64
    assert int(bn.num_batches_tracked.numpy()) == 3
    bn.to(dtype="float32")
    assert bn.num_batches_tracked.dtype == nnx.int64 and bn.running_var.dtype == nnx.float32
    sd = bn.state_dict()
    assert sd["num_batches_tracked"].dtype == np.int64 and sd["num_batches_tracked"].shape == ()
    other = nn.BatchNorm1d(4)
    other.load_state_dict(sd)
    assert int(other.num_batches_tracked.numpy()) == 3
    np.testing.assert_array_equal(other.running_mean.numpy(), bn.running_mean.numpy())
    path = tmp_path / "bn.nnx"
    nnx.save(bn.state_dict(), str(path))
    loaded = nnx.load(str(path))
    third = nn.BatchNorm1d(4)
    third.load_state_dict(loaded)
    assert int(third.num_batches_tracked.numpy()) == 3
    np.testing.assert_array_equal(third.running_var.numpy(), bn.running_var.numpy())
    with pytest.raises(nnx.CheckpointError, match="num_batches_tracked"):
        third.load_state_dict({**sd, "num_batches_tracked": np.float32(1.0)})


def test_module_in_sequential_with_optimizer_and_config():
    nnx.manual_seed(0)
    model = nn.container.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(),
                                    nn.Linear(8, 2), nn.LayerNorm(2))
    opt = nnx.optim.SGD(model.parameters(), lr=0.1)
    x = nnx.randn(16, 3)
    for _ in range(3):
        opt.zero_grad()
        loss = (model(x) ** 2).mean()
        loss.backward()
        opt.step()
    assert int(model[1].num_batches_tracked.numpy()) == 3
    for m in (nn.BatchNorm1d(8, eps=1e-3, momentum=None, affine=False),
              nn.BatchNorm2d(4, track_running_stats=False), nn.LayerNorm((3, 4), bias=False),
              nn.LayerNorm(5, elementwise_affine=False)):
        cfg = m.get_config()
        m2 = nn.config.layer_from_config(cfg)
        assert type(m2) is type(m) and m2.get_config() == cfg
        assert list(m2.state_dict()) == list(m.state_dict())
        assert m.output_shape((4, 3, 4)) == (4, 3, 4)
    assert repr(nn.BatchNorm2d(4)) == \
        "BatchNorm2d(4, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)"
    assert repr(nn.LayerNorm(5)) == "LayerNorm((5,), eps=1e-05, elementwise_affine=True)"


def test_float64_module_and_input():
    bn = nn.BatchNorm2d(2, dtype="float64")
    y = bn(nnx.tensor(np.ones((2, 2, 3, 3)) * np.arange(2)[None, :, None, None], dtype="float64"))
    assert y.dtype == nnx.float64 and bn.running_mean.dtype == nnx.float64


# ------------------------------------------------------------------ errors
def test_errors():
    with pytest.raises(ValueError, match=r"^Expected more than 1 value per channel when "
                                         r"training, got input size \(1, 10\)$"):
        nn.BatchNorm1d(10)(nnx.randn(1, 10))
    with pytest.raises(ValueError, match=r"got input size \(1, 3, 1, 1\)"):
        nn.BatchNorm2d(3)(nnx.randn(1, 3, 1, 1))
    bn = nn.BatchNorm1d(10)
    bn(nnx.randn(1, 10, 3))  # 3 values per channel: fine
    bn.eval()
    assert bn(nnx.randn(1, 10)).shape == (1, 10)  # eval: running statistics
    with pytest.raises(nnx.ShapeError, match=r"^BatchNorm2d\(32\) got input of shape "
                                             r"\(8, 16, 5, 5\) \(expected \(N, 32, H, W\)\)$"):
        nn.BatchNorm2d(32)(nnx.randn(8, 16, 5, 5))
    with pytest.raises(nnx.ShapeError, match=r"BatchNorm2d\(3\) got input of shape \(8, 3\)"):
        nn.BatchNorm2d(3)(nnx.randn(8, 3))
    with pytest.raises(nnx.ShapeError, match=r"expected \(N, 4\) or \(N, 4, L\)"):
        nn.BatchNorm1d(4)(nnx.randn(2, 4, 3, 3))
    with pytest.raises(nnx.ShapeError, match=r"LayerNorm\(5\) got input of shape \(3, 4\) "
                                             r"\(expected \(\*, 5\)\)"):
        nn.LayerNorm(5)(nnx.randn(3, 4))
    with pytest.raises(nnx.DTypeError, match="floating"):
        nn.LayerNorm(2)(nnx.tensor([[1, 2]]))
    with pytest.raises(nnx.DTypeError, match="weight dtype"):
        F.layer_norm(nnx.randn(2, 3), 3, nnx.tensor(np.ones(3), dtype="float64"))
    with pytest.raises(nnx.DTypeError, match="dtype float32 differ from input dtype float64"):
        nn.BatchNorm1d(3, affine=False).eval()(nnx.tensor(np.ones((2, 3)), dtype="float64"))
    with pytest.raises(nnx.DTypeError, match="weight dtype float32 differs"):
        nn.BatchNorm1d(3, track_running_stats=False)(nnx.tensor(np.ones((2, 3)), dtype="float64"))
    with pytest.raises(ValueError, match="num_features"):
        nn.BatchNorm2d(0)
    with pytest.raises(ValueError, match="normalized_shape"):
        nn.LayerNorm(())


def test_strict_backend_no_host_sync(strict):
    nnx.manual_seed(0)
    model = nn.container.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6, momentum=None), nn.GELU(),
                                    nn.LayerNorm(6), nn.Linear(6, 2))
    bn2 = nn.BatchNorm2d(2)
    opt = nnx.optim.SGD(list(model.parameters()) + list(bn2.parameters()), lr=0.1)
    x = nnx.randn(8, 3)
    img = nnx.randn(4, 2, 3, 3)
    for _ in range(2):
        strict.reset_sync_count()
        opt.zero_grad()
        loss = (model(x) ** 2).mean() + (bn2(img) ** 2).mean()
        loss.backward()
        opt.step()
        assert strict.sync_counts["count"] == 0, strict.sync_counts["where"]
    model.eval()
    bn2.eval()
    strict.reset_sync_count()
    model(x)
    bn2(img)
    assert strict.sync_counts["count"] == 0
    assert int(model[1].num_batches_tracked.numpy()) == 2


# ------------------------------------------------------------------ the CUDA code path (emulated)
def _train_mixed(device, steps=3):
    """Losses and parameters of a few SGD steps of a net with every new layer on ``device``."""
    from nnx.nn.container import Sequential

    nnx.set_device("cpu")
    nnx.manual_seed(0)
    rng = np.random.default_rng(8)
    emb = nn.Embedding(11, 4, padding_idx=0)
    body = Sequential(nn.Linear(12, 16), nn.GELU(), nn.BatchNorm1d(16, momentum=None),
                      nn.Linear(16, 16), nn.SiLU(), nn.LayerNorm(16), nn.Linear(16, 8),
                      nn.ELU(0.5), nn.Linear(8, 8), nn.Softplus(), nn.Linear(8, 3),
                      nn.GELU("tanh"))
    emb.to(device)
    body.to(device)
    nnx.set_device(device)
    idx = nnx.tensor(rng.integers(0, 11, (32, 3)))
    y = nnx.tensor(rng.integers(0, 3, 32))
    params = list(emb.parameters()) + list(body.parameters())
    opt = nnx.optim.SGD(params, lr=0.1)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(body(emb(idx).reshape(32, 12)), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    body.eval()
    with nnx.no_grad():  # inference: the one-pass bias + activation kernels
        out = body(emb(idx).reshape(32, 12)).numpy()
    return losses, [p.numpy() for p in params] + [body[2].running_var.numpy(), out]


def test_device_path_matches_the_cpu(emu):
    """The new layers on the CupyBackend over emulated kernels (the fused GELU/SiLU/ELU/Softplus
    kernels after each Linear, the device-side checks) give the CPU's numbers."""
    from nnx.backends import cuda_kernels as ck

    before = dict(ck.launch_counts)
    try:
        dev_losses, dev = _train_mixed(emu)
        assert nnx.tensor([0.0]).device == "cuda:0"  # really on the CupyBackend
    finally:
        nnx.set_device("cpu")
    ran = {k for k, v in ck.launch_counts.items() if v > before.get(k, 0)}
    for act in ("gelu", "silu", "elu", "softplus", "gelu_tanh"):
        assert {f"nnx_{act}_fwd_f32", f"nnx_{act}_bwd_f32", f"nnx_bias_{act}_f32"} <= ran, act
    cpu_losses, cpu = _train_mixed("cpu")
    np.testing.assert_allclose(dev_losses, cpu_losses, rtol=2e-5, atol=1e-6)
    for a, b in zip(dev, cpu):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
