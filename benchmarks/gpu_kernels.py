"""Bandwidth of the CNN's CUDA kernels (issue 10) against the device's copy bandwidth.

``python -m nnx.benchmarks.gpu_kernels [--json PATH]`` (run by ``benchmarks/gpu_check.sh``):
at the shapes of workload D (batch 128; conv2's input 32x26x26, its output 64x24x24) it times

* ``copy``: ``dst[...] = src`` over the im2col buffer's size, the reference (bytes read +
  bytes written per second);
* ``im2col`` (``nnx_im2col``, conv2's forward): writes the (128, 288, 576) column buffer, reads
  the input;
* ``col2im`` (``nnx_col2im``, conv2's data gradient): reads the column buffer, writes the
  input gradient;
* ``maxpool2d_fwd`` / ``maxpool2d_bwd`` (2x2) on the (128, 64, 24, 24) map (forward: reads x,
  writes y and the int32 argmax; backward: reads gy and argmax, writes gx);

each as the bytes it must move (every element read or written once) per second, and its share
of the copy bandwidth: the bar is >= 0.70. Without a usable CUDA device it prints
``no GPU: skipped`` and exits 0. ``run(backend, ...)`` takes any CuPy-like backend, so the
test suite drives it on the emulated-kernel backend (tiny shapes, wall-clock timer).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Callable, Dict, Optional

import numpy as np

BAR = 0.70
# D at batch 128: conv2 (32 -> 64, 3x3) on 26x26, then the 2x2 max-pool of its 24x24 output
SHAPES = {"n": 128, "c": 32, "h": 26, "w": 26, "k": 3, "pool_c": 64, "pool_hw": 24}


def _event_timer(cp) -> Callable[[Callable[[], None], int], float]:
    """Seconds per call of ``fn`` from CUDA events (after one untimed call)."""
    def timer(fn, reps):
        fn()
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        for _ in range(reps):
            fn()
        stop.record()
        stop.synchronize()
        return cp.cuda.get_elapsed_time(start, stop) / 1e3 / reps
    return timer


def wall_timer(fn, reps):
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def run(backend, timer, shapes: Optional[Dict[str, int]] = None, reps: int = 20):
    """``{kernel: {"bytes", "time_s", "gbps", "vs_copy"}}`` (or ``{"error": ...}``) for each
    kernel, on ``backend`` (a CupyBackend), timing with ``timer(fn, reps)``."""
    from nnx.backends import conv as bconv
    from nnx.backends.pooling import Window

    s = dict(SHAPES, **(shapes or {}))
    xp = backend.xp
    f32 = np.dtype(np.float32)
    n, c, h, w, k = s["n"], s["c"], s["h"], s["w"], s["k"]
    g = bconv.Geometry(k, k, 1, 1, 0, 0, 0, 0, 1, 1, 1)
    oh, ow = h - k + 1, w - k + 1
    rng = np.random.default_rng(0)
    out: Dict[str, Dict[str, float]] = {}

    def record(name, nbytes, fn):
        try:
            t = timer(fn, reps)
            out[name] = {"bytes": int(nbytes), "time_s": t, "gbps": nbytes / t / 1e9}
        except Exception as e:  # one kernel failing must not hide the others
            out[name] = {"error": f"{type(e).__name__}: {e}"}

    with backend.use():
        x = backend.asarray(rng.standard_normal((n, c, h, w), dtype=np.float32))
        cols = xp.empty(n * c * k * k * oh * ow, dtype=f32)
        src = xp.zeros(cols.size, dtype=f32)
        gx = xp.empty((n, c, h, w), dtype=f32)

        def copy():
            cols[...] = src
        record("copy", 2 * cols.nbytes, copy)
        record("im2col", cols.nbytes + x.nbytes,
               lambda: bconv._launch(backend, "im2col", x, cols, cols.size, c, h, w, g, oh, ow))
        record("col2im", cols.nbytes + gx.nbytes,
               lambda: bconv._launch(backend, "col2im", cols, gx, gx.size, c, h, w, g, oh, ow))
        pc, phw = s["pool_c"], s["pool_hw"]
        win = Window(2, 2, 2, 2)
        xm = backend.asarray(rng.standard_normal((n, pc, phw, phw), dtype=np.float32))
        y, argmax = backend.max_pool2d_forward(xm, win)
        gy = xp.zeros(y.shape, dtype=f32)
        record("maxpool2d_fwd", xm.nbytes + y.nbytes + argmax.nbytes,
               lambda: backend.max_pool2d_forward(xm, win))
        record("maxpool2d_bwd", gy.nbytes + argmax.nbytes + xm.nbytes,
               lambda: backend.max_pool2d_backward(gy, argmax, win, (phw, phw)))
    ref = out.get("copy", {}).get("gbps")
    for name, r in out.items():
        if name != "copy" and "gbps" in r and ref:
            r["vs_copy"] = r["gbps"] / ref
            r["ok"] = r["vs_copy"] >= BAR
    return out


def table(res) -> str:
    lines = [f"{'kernel':<16}{'MB moved':>10}{'time':>12}{'GB/s':>9}{'x copy':>8}  bar >= {BAR}"]
    for name, r in res.items():
        if "error" in r:
            lines.append(f"{name:<16}  failed: {r['error']}")
            continue
        share = r.get("vs_copy")
        lines.append(f"{name:<16}{r['bytes'] / 2**20:10.1f}{r['time_s'] * 1e6:10.1f}us"
                     f"{r['gbps']:9.1f}{'' if share is None else f'{share:8.2f}'}"
                     + ("" if share is None else ("  ok" if r["ok"] else "  MISS")))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nnx.benchmarks.gpu_kernels")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    ap.add_argument("--reps", type=int, default=20)
    a = ap.parse_args(argv)
    try:
        from nnx import backends
        ok, why = backends.cuda_status()
    except Exception as e:  # noqa: BLE001 - any failure here means no usable GPU
        ok, why = False, f"{type(e).__name__}: {e}"
    if not ok:
        print(f"no GPU: skipped ({why})")
        return 0
    import cupy as cp
    backend = backends.get_backend("cuda")
    res = run(backend, _event_timer(cp), reps=a.reps)
    print(f"CNN kernel bandwidth at D's shapes, {why}")
    print(table(res))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": why, "shapes": SHAPES, "bar": BAR, "kernels": res}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
