"""Long-run stability: 10,000 training steps of a small net give no NaN/inf and no memory growth.

Memory is measured after a warm-up (flat optimizer buffers, scratch buffers and caches exist by
then): on the CPU with tracemalloc, which sees NumPy's array allocations too, and with the
process RSS as a coarse second check; on a GPU with CuPy's memory pool.
"""
import gc
import tracemalloc

import numpy as np
import psutil
import pytest

import nnx
import nnx.functional as F
from nnx import nn, optim

STEPS = 10_000
WARMUP = 1_000


def _xor(device):
    nnx.manual_seed(0)
    x = nnx.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]], device=device)
    y = nnx.tensor([[0.0], [1.0], [1.0], [0.0]], device=device)
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1), nn.Sigmoid()).to(device)
    opt = optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    return model, opt, x, y, F.binary_cross_entropy


def _classifier(device):
    nnx.manual_seed(0)
    rng = np.random.default_rng(0)
    x = nnx.tensor(rng.standard_normal((32, 64)).astype(np.float32), device=device)
    y = nnx.tensor(rng.integers(0, 10, 32), device=device)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).to(device)
    opt = optim.Adam(model.parameters(), lr=1e-3)
    return model, opt, x, y, F.cross_entropy


def _train(model, opt, x, y, loss_fn, start, stop, losses, check_every):
    for step in range(start, stop):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        if step % check_every == 0:
            v = loss.item()
            assert np.isfinite(v), f"loss became {v} at step {step}"
            if step % 1000 == 0:  # keep few: a list of 10,000 floats would itself be "growth"
                losses.append(v)


def _used(device):
    if device == "cpu":
        gc.collect()
        return tracemalloc.get_traced_memory()[0]
    import cupy

    cupy.cuda.Device().synchronize()
    return cupy.get_default_memory_pool().used_bytes()


@pytest.mark.parametrize("make", [_xor, _classifier], ids=["xor-2-8-1-sgd", "64-32-10-adam"])
def test_ten_thousand_steps_no_nan_no_memory_growth(device, make):
    model, opt, x, y, loss_fn = make(device)
    losses = []
    check_every = 1 if device == "cpu" else 100  # .item() syncs a GPU: sample it there
    _train(model, opt, x, y, loss_fn, 0, WARMUP, losses, check_every)
    rss0 = psutil.Process().memory_info().rss
    if device == "cpu":
        tracemalloc.start()
    try:
        base = _used(device)
        half = (STEPS + WARMUP) // 2
        _train(model, opt, x, y, loss_fn, WARMUP, half, losses, check_every)
        mid = _used(device)
        _train(model, opt, x, y, loss_fn, half, STEPS, losses, check_every)
        end = _used(device)
    finally:
        if device == "cpu":
            tracemalloc.stop()
    rss_growth = psutil.Process().memory_info().rss - rss0
    # A leak of one small array per step would be >= 9,000 * 100 bytes; allow far less.
    assert end - base < 64 * 1024, f"memory grew by {end - base} bytes over {STEPS - WARMUP} steps"
    assert end - mid < 32 * 1024, f"memory still growing: {mid - base} then {end - mid} bytes"
    assert rss_growth < 16 * 1024 * 1024, f"RSS grew by {rss_growth / 2**20:.1f} MiB"
    for name, p in model.named_parameters():
        assert np.isfinite(p.numpy()).all(), f"{name} holds NaN/inf"
    assert losses[-1] < losses[0] * 0.5, f"did not learn: {losses[0]} -> {losses[-1]}"
