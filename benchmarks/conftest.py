"""pytest-benchmark fixtures for ``pytest benchmarks/ --benchmark-only``.

These files are outside the project's ``testpaths`` (``tests``), so a plain ``pytest`` never
collects them.  Threads: ``NNX_BENCH_THREADS=N`` sets BLAS and torch threads (default: the
libraries' own defaults).  The interleaved, load-aware runner is ``python -m nnx.benchmarks``; this
suite is for pytest-benchmark's own statistics, comparisons and ``--benchmark-save``.
"""
import os

import pytest


def _threads():
    v = os.environ.get("NNX_BENCH_THREADS")
    return int(v) if v else None


@pytest.fixture(scope="session")
def bench_threads():
    n = _threads()
    if n is None:
        yield None
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield n
        return
    with threadpool_limits(n, user_api="blas"):
        yield n


DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)]
