"""nnx's benchmark suite (issue 5): ``python -m nnx.benchmarks [--quick]`` or ``nnx bench``.

Workloads (``workloads.py``) run as full float32 training steps by each contender
(``contenders.py``: the hand-written NumPy floor of ``floor.py``, or ``floor_cnn.py`` for the
CNN of workload D, nnx on each device, PyTorch eager), interleaved with load accounting
(``timing.py``); peak RSS is measured per contender in a subprocess (``memory.py``), fused
kernels against their unfused composition (``micro.py``), the CNN kernels' bandwidth on a GPU
(``gpu_kernels.py``), and ``report.py`` prints the table and writes JSON and a PNG to
``benchmarks/results/``.
``pytest benchmarks/ --benchmark-only`` runs the pytest-benchmark versions.

Importing this package is cheap: NumPy, torch and nnx are imported only when a run needs them.
"""


def main(argv=None) -> int:
    """Run the suite (``argv`` as for ``python -m nnx.benchmarks``); returns the exit status."""
    from .cli import main as _main
    return _main(argv)


__all__ = ["main"]
