"""Peak RSS and per-step allocation growth, one contender per fresh subprocess.

Peak RSS (``ru_maxrss``) is a per-process high-water mark, so each contender is measured in a
process of its own that imports only what it needs: ``python -m nnx.benchmarks.memory --workload C
--contender nnx``.  The child reports, as one JSON line:

* ``rss_import``: RSS after the imports, before data and model exist (the interpreter baseline);
* ``peak_rss``: peak RSS (``VmHWM``) while training: reset after the model, optimizer and data
  are built (``/proc/self/clear_refs``), read after a warm-up step and ``steps`` more (before
  tracemalloc starts); ``peak_build_rss`` is the peak up to the end of the build (it includes
  the host copy of the initial parameters every contender is loaded from);
* ``rss_growth_per_step``: RSS change per step over the last traced stretch (all allocators);
* ``traced_growth_per_step``: ``tracemalloc`` growth of live allocations per step after warm-up
  and ``traced_steps`` traced steps (NumPy buffers are traced; torch's C++ allocator is not, so
  it is None there); ``traced_growth_first_steps`` is the same over the first traced steps;
* ``traced_transient_per_step``: tracemalloc peak during a step above the live size before it,
  i.e. the temporaries a step allocates and frees;
* ``cyclic_garbage_*_per_step``: what ``gc.collect()`` frees after the traced steps (objects in
  reference cycles: freed only when the cycle collector runs, so they raise the peak).

Live sizes are taken after ``gc.collect()``, so pending cyclic garbage is not counted as growth.
"""
from __future__ import annotations

import argparse
import gc
import json
import importlib
import os
import resource
import subprocess
import sys
import time
from typing import Dict, Optional

# The folder holding the ``nnx`` package (the checkout's root, or site-packages when installed):
# the child runs ``python -m nnx.benchmarks.memory`` from there.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(importlib.import_module("nnx").__file__)))


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import psutil
        return psutil.Process().memory_info().rss


def _maxrss() -> int:
    """Peak RSS of this process image.

    ``VmHWM`` from ``/proc/self/status`` (reset by ``execve``); ``ru_maxrss`` is not used on
    Linux because it survives ``fork`` + ``execve``, so a child would report its parent's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    v = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return v if sys.platform == "darwin" else v * 1024


def _reset_peak() -> bool:
    """Reset this process's peak RSS (``VmHWM``) to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child(workload: str, contender: str, device: str, threads: int, steps: int,
          traced_steps: int) -> Dict[str, object]:
    __import__("numpy")  # every contender needs it: counted in the baseline
    from . import contenders as C
    from . import workloads as W
    w = W.get(workload)
    if contender == "torch":
        C._torch()
    elif contender == "nnx":
        C._nnx()
    gc.collect()
    rss_import = _rss()
    params, batches = W.init_params(w), W.make_batches(w)
    try:
        from threadpoolctl import threadpool_limits
        limiter = threadpool_limits(threads, user_api="blas")
    except ImportError:
        limiter = None
    c = C.make(contender, w, params, batches, device)
    del params, batches  # the contender holds what it needs; the host copies are not its cost
    gc.collect()
    c.set_threads(threads)
    c.activate()
    rss_built = _rss()
    peak_build = _maxrss()
    # the training peak: from here on (building the model is reported apart, as peak_build_rss)
    reset = _reset_peak()
    c.step()  # warm-up: first-step allocations
    c.sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        c.step()
    c.sync()
    step_s = (time.perf_counter() - t0) / max(steps, 1)
    peak = _maxrss()

    import tracemalloc
    tracemalloc.start()
    c.step()
    c.sync()
    gc.collect()
    cur0, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    for _ in range(traced_steps):
        c.step()
    c.sync()
    cur1_raw, peak1 = tracemalloc.get_traced_memory()
    # objects only the cycle collector frees (a graph with reference cycles): they stay
    # allocated until a collection runs, raising the peak
    cyclic = gc.collect()
    cur1, _ = tracemalloc.get_traced_memory()
    # a second stretch: one-off growth (a cache filled on the first traced steps) shows in the
    # first difference only; a leak shows in both
    rss_a = _rss()
    for _ in range(traced_steps):
        c.step()
    c.sync()
    gc.collect()
    cur2, _ = tracemalloc.get_traced_memory()
    rss_growth = (_rss() - rss_a) / traced_steps
    tracemalloc.stop()
    traced = contender != "torch"
    out = {
        "workload": w.key, "contender": f"{contender}-{device}", "threads": threads,
        "rss_import": rss_import, "rss_built": rss_built,
        "peak_rss": peak, "peak_above_import": peak - rss_import,
        "peak_build_rss": peak_build, "peak_is_training_only": reset,
        "rss_growth_per_step": rss_growth,
        "traced_growth_per_step": (cur2 - cur1) / traced_steps if traced else None,
        "traced_growth_first_steps": (cur1 - cur0) / traced_steps if traced else None,
        "traced_transient_per_step": (peak1 - cur0) if traced else None,
        "cyclic_garbage_bytes_per_step": (cur1_raw - cur1) / traced_steps if traced else None,
        "cyclic_garbage_objects_per_step": cyclic / traced_steps,
        "step_s_untimed_note": step_s,
        "param_bytes": 4 * w.n_params,
    }
    if limiter is not None:
        limiter.restore_original_limits()
    return out


def measure(workload: str, contender: str, device: str = "cpu", threads: int = 1,
            steps: int = 1, traced_steps: int = 1, timeout: float = 300.0) -> Dict[str, object]:
    """Run :func:`child` in a fresh interpreter; its JSON result, or ``{"error": ...}``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "nnx.benchmarks.memory", "--workload", workload, "--contender",
           contender, "--device", device, "--threads", str(threads), "--steps", str(steps),
           "--traced-steps", str(traced_steps)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {p.returncode}: " + " | ".join(tail)}
    return json.loads(lines[-1])


def _main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nnx.benchmarks.memory")
    ap.add_argument("--workload", required=True)
    ap.add_argument("--contender", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--traced-steps", type=int, default=1)
    a = ap.parse_args(argv)
    from .contenders import Skip
    try:
        out = child(a.workload, a.contender, a.device, a.threads, a.steps, a.traced_steps)
    except Skip as e:
        out = {"skipped": str(e)}
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
