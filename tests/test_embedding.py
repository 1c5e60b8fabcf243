"""nn.Embedding and F.embedding: gather forward, scatter-add backward (repeated indices add up),
padding_idx, parity with PyTorch, errors, configs and the strict backend."""
from __future__ import annotations

import numpy as np
import pytest

import nnx
import nnx.functional as F
from nnx import nn
from nnx.testing import gradcheck


def test_weight_gradcheck_repeated_indices_and_padding():
    rng = np.random.default_rng(0)
    w = nnx.tensor(rng.normal(0, 1, (6, 4)), dtype="float64", requires_grad=True)
    idx = nnx.tensor([[1, 3, 1], [5, 1, 0], [3, 3, 2]])
    gradcheck(lambda w: F.embedding(idx, w), [w])
    gradcheck(lambda w: F.embedding(idx, w, padding_idx=4), [w])  # the other rows unchanged
    # the padding row: numerically it would have a gradient; nnx (as PyTorch) gives it none
    w.grad = None
    (F.embedding(idx, w, padding_idx=3) * 2.0).sum().backward()
    g = w.grad.numpy()
    assert (g[3] == 0).all()
    np.testing.assert_array_equal(g[1], np.full(4, 2.0 * 3))  # three 1s
    np.testing.assert_array_equal(g[4], np.zeros(4))  # never looked up


@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 4), ()])
@pytest.mark.parametrize("padding_idx", [None, 2, -1])
def test_parity_with_torch(shape, padding_idx):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    idx = rng.integers(0, 7, shape)
    ours = nn.Embedding(7, 3, padding_idx=padding_idx)
    theirs = torch.nn.Embedding(7, 3, padding_idx=padding_idx)
    assert ours.padding_idx == theirs.padding_idx
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["weight"]
    if padding_idx is not None:
        assert (ours.weight.numpy()[padding_idx] == 0).all()
    w = rng.normal(0, 1, (7, 3)).astype(np.float32)
    ours.weight.data[...] = w
    with torch.no_grad():
        theirs.weight.copy_(torch.tensor(w))
    y = ours(nnx.tensor(idx))
    ty = theirs(torch.tensor(idx))
    assert y.shape == tuple(ty.shape) == shape + (3,)
    np.testing.assert_array_equal(y.numpy(), ty.detach().numpy())
    gy = rng.normal(0, 1, shape + (3,)).astype(np.float32)
    (y * nnx.tensor(gy)).sum().backward()
    ty.backward(torch.tensor(gy))
    np.testing.assert_allclose(ours.weight.grad.numpy(), theirs.weight.grad.numpy(), rtol=1e-6,
                               atol=1e-6)


def test_functional_matches_torch_and_int32_indices():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as tF

    w = np.arange(20, dtype=np.float32).reshape(5, 4)
    idx = np.array([[0, 4], [4, 2]], np.int32)
    np.testing.assert_array_equal(F.embedding(nnx.tensor(idx), nnx.tensor(w)).numpy(),
                                  tF.embedding(torch.tensor(idx), torch.tensor(w)).numpy())
    assert F.embedding([1, 2], nnx.tensor(w)).shape == (2, 4)  # a list of ints


def test_errors():
    emb = nn.Embedding(10, 3)
    with pytest.raises(nnx.LabelError, match=r"Embedding\(10, 3\): index out of range.*\[0, 10\)"):
        emb(nnx.tensor([1, 10]))
    with pytest.raises(IndexError, match=r"\[0, 10\).*\[-1, 2\]"):  # LabelError is an IndexError
        emb(nnx.tensor([-1, 2]))
    with pytest.raises(nnx.DTypeError, match="integer"):
        emb(nnx.tensor([1.0, 2.0]))
    with pytest.raises(NotImplementedError, match="max_norm"):
        nn.Embedding(10, 3, max_norm=1.0)
    with pytest.raises(NotImplementedError, match="max_norm"):
        F.embedding(nnx.tensor([1]), emb.weight, max_norm=2.0)
    with pytest.raises(ValueError, match="padding_idx"):
        nn.Embedding(10, 3, padding_idx=10)
    with pytest.raises(ValueError, match="padding_idx"):
        nn.Embedding(10, 3, padding_idx=-11)
    with pytest.raises(ValueError, match="num_embeddings"):
        nn.Embedding(0, 3)
    with pytest.raises(nnx.ShapeError, match="2-D"):
        F.embedding(nnx.tensor([0]), nnx.randn(4))


def test_config_repr_shape_and_pretrained():
    emb = nn.Embedding(12, 5, padding_idx=-2)
    assert repr(emb) == "Embedding(12, 5, padding_idx=10)"
    cfg = emb.get_config()
    assert cfg == {"class": "Embedding", "num_embeddings": 12, "embedding_dim": 5,
                   "padding_idx": 10}
    emb2 = nn.config.layer_from_config(cfg)
    assert type(emb2) is nn.Embedding and emb2.get_config() == cfg
    assert emb.output_shape((7,)) == (7, 5) and emb.output_shape(()) == (5,)
    w = nnx.tensor(np.arange(6, dtype=np.float32).reshape(3, 2))
    pre = nn.Embedding.from_pretrained(w)
    assert not pre.weight.requires_grad
    np.testing.assert_array_equal(pre(nnx.tensor([2])).numpy(), [[4.0, 5.0]])
    assert nn.Embedding.from_pretrained(w, freeze=False).weight.requires_grad
    nnx.manual_seed(0)
    big = nn.Embedding(2000, 50)
    v = big.weight.numpy()
    assert abs(v.mean()) < 0.01 and abs(v.std() - 1) < 0.01  # N(0, 1)


def test_training_step_and_double():
    nnx.manual_seed(0)
    model = nn.container.Sequential(nn.Embedding(20, 8, padding_idx=0), nn.Flatten(),
                                    nn.Linear(24, 2))
    opt = nnx.optim.Adam(model.parameters(), lr=0.01)
    idx = nnx.tensor(np.random.default_rng(2).integers(0, 20, (16, 3)))
    before = model[0].weight.numpy().copy()
    for _ in range(3):
        opt.zero_grad()
        loss = F.cross_entropy(model(idx), nnx.tensor(np.zeros(16, np.int64)))
        loss.backward()
        opt.step()
    after = model[0].weight.numpy()
    assert (after[0] == 0).all()  # the padding row never moves
    assert not np.allclose(after, before)
    model.double()
    assert model(idx).dtype == nnx.float64


def test_strict_backend(strict):
    emb = nn.Embedding(6, 3, padding_idx=1)
    idx = nnx.tensor([[0, 1], [5, 5]])
    strict.reset_sync_count()
    y = emb(idx)
    y.sum().backward()
    assert strict.sync_counts["count"] == 0
    g = emb.weight.grad.numpy()
    np.testing.assert_array_equal(g[5], [2.0, 2.0, 2.0])
    assert (g[1] == 0).all()
    bad = emb(nnx.tensor([2, 6]))  # as on a GPU: no sync, flagged at the next host read
    with pytest.raises(nnx.LabelError, match=r"\[0, 6\)"):
        bad.numpy()
