"""pytest-benchmark: fused backend kernels vs the unfused composition vs PyTorch, by size.

``pytest benchmarks/test_bench_kernels.py --benchmark-only --benchmark-group-by=group``.
"""
import numpy as np
import pytest

from nnx.benchmarks import micro
from nnx.benchmarks.conftest import DEVICES

CASES = [(k, label, shape) for k, sizes in micro.SIZES.items() for label, shape in sizes]


def _setup(device, use_torch):
    if device == "cpu":
        xp, sync = np, (lambda: None)
    else:
        from nnx.benchmarks.contenders import Skip, _cupy
        try:
            xp = _cupy()
        except Skip as e:
            pytest.skip(str(e))
        sync = xp.cuda.Device().synchronize
    be = None
    try:
        from nnx import backends
        be = backends.get_backend(device)
    except Exception:
        pass
    torch = None
    if use_torch:
        torch = pytest.importorskip("torch")
        if device == "cuda" and not torch.cuda.is_available():
            pytest.skip("torch.cuda.is_available() is False")
    return xp, sync, be, torch


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", ["fused", "unfused", "torch"])
@pytest.mark.parametrize("kernel,size,shape", CASES, ids=[f"{k}-{s.split()[-1]}"
                                                          for k, s, _ in CASES])
def test_kernel(benchmark, bench_threads, kernel, size, shape, variant, device):
    xp, sync, be, torch = _setup(device, variant == "torch")
    fns = micro._variants(kernel, shape, be, xp, torch, device)
    if variant not in fns:
        pytest.skip(f"{variant} not available for {kernel} on {device}")
    fn = fns[variant]
    fn()
    sync()
    benchmark.group = f"{kernel} {size} ({device})"

    def run():
        fn()
        sync()

    benchmark(run)
