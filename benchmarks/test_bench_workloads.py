"""pytest-benchmark: one full training step per workload, contender and device.

``pytest benchmarks/ --benchmark-only [--benchmark-group-by=group]``; skipped contenders say
why.  Each round is one step followed by a device sync; two untimed steps warm up first.
"""
import pytest

from nnx.benchmarks import contenders as C
from nnx.benchmarks import workloads as W
from nnx.benchmarks.conftest import DEVICES

WORKLOADS = ["A", "B", "C", "B-adam", "C-adam", "B-adamw", "C-adamw", "B-clip", "C-clip", "D"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("contender", ["floor", "nnx", "torch"])
@pytest.mark.parametrize("workload", WORKLOADS)
def test_step(benchmark, bench_threads, workload, contender, device):
    w = W.get(workload)
    try:
        c = C.make(contender, w, W.init_params(w), W.make_batches(w), device)
    except C.Skip as e:
        pytest.skip(str(e))
    if bench_threads:
        c.set_threads(bench_threads)
    c.activate()
    for _ in range(2):  # warm-up: first calls allocate, compile (GPU), fill caches
        c.step()
    c.sync()
    benchmark.group = f"{w.key} {w.name} ({device})"
    benchmark.extra_info.update({"batch": w.batch, "flops_per_step": w.flops_per_step,
                                 "threads": bench_threads, "contender": c.label})

    def run():
        c.step()
        c.sync()

    if w.key.startswith(("C", "D")):
        benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=0)
    else:
        benchmark(run)
