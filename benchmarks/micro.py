"""Kernel micro-benchmarks: the backend's fused kernels against the unfused NumPy composition.

For each kernel (sigmoid forward and backward, softmax-cross-entropy forward+backward, the SGD,
SGD-momentum and Adam steps) and several sizes (the A, B and C workloads' shapes and a large
one: the fused kernel can lose at large sizes, PyTorch PR #129350), three variants run
interleaved:

* ``fused``: the backend method (``backends.get_backend(device).sigmoid_fwd(x, out=o)`` ...);
* ``unfused``: the same math as a plain chain of array-module calls with their temporaries,
  as a framework without fused kernels would write it;
* ``torch``: PyTorch's own kernel (``torch.sigmoid(x, out=o)``, ``F.cross_entropy`` plus its
  backward, ``torch.optim`` steps).
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional

import numpy as np

from . import timing

# (kernel, size label, shape) ; "quick" uses the first sizes only
SIZES = {
    "sigmoid_fwd": [("A 4x2", (4, 2)), ("B 128x256", (128, 256)), ("C 512x4096", (512, 4096))],
    "sigmoid_bwd": [("A 4x2", (4, 2)), ("B 128x256", (128, 256)), ("C 512x4096", (512, 4096))],
    "softmax_ce": [("B 128x10", (128, 10)), ("C 512x10", (512, 10)),
                   ("512x1000", (512, 1000))],
    "sgd_step": [("A 9", (9,)), ("B 269k", (269_322,)), ("4M", (4_194_304,)),
                 ("C 21M", (21_020_682,))],
    "sgd_momentum_step": [("B 269k", (269_322,)), ("4M", (4_194_304,))],
    "adam_step": [("A 9", (9,)), ("B 269k", (269_322,)), ("4M", (4_194_304,)),
                  ("C 21M", (21_020_682,))],
}
QUICK_SKIP = {"C 21M"}
LR, MOM = 0.01, 0.9
B1, B2, EPS, ADAM_STEP = 0.9, 0.999, 1e-8, 10


def _variants(kernel: str, shape, be, xp, torch, device: str) -> Dict[str, Callable[[], None]]:
    """The callables to time for one kernel and shape (missing ones are simply left out)."""
    rng = np.random.default_rng(0)
    f32 = np.float32
    out: Dict[str, Callable[[], None]] = {}
    tdev = "cuda" if device == "cuda" else "cpu"
    T = (lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(tdev)) if torch else None

    if kernel in ("sigmoid_fwd", "sigmoid_bwd"):
        x_h = (rng.standard_normal(shape) * 4).astype(f32)
        g_h = rng.standard_normal(shape).astype(f32)
        y_h = (1 / (1 + np.exp(-x_h))).astype(f32)
        x, y, g = xp.asarray(x_h), xp.asarray(y_h), xp.asarray(g_h)
        o = xp.empty_like(x)
        if kernel == "sigmoid_fwd":
            if be is not None:
                out["fused"] = lambda: be.sigmoid_fwd(x, out=o)

            def unfused():
                e = xp.exp(-xp.abs(x))
                return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))
            out["unfused"] = unfused
            if torch:
                xt, ot = T(x_h), T(x_h)
                out["torch"] = lambda: torch.sigmoid(xt, out=ot)
        else:
            if be is not None:
                out["fused"] = lambda: be.sigmoid_bwd(y, g, out=o)
            out["unfused"] = lambda: g * y * (1 - y)
            if torch:
                yt, gt, ot = T(y_h), T(g_h), T(y_h)
                out["torch"] = lambda: torch.ops.aten.sigmoid_backward.grad_input(gt, yt,
                                                                                  grad_input=ot)
    elif kernel == "softmax_ce":
        n, c = shape
        z_h = rng.standard_normal(shape).astype(f32) * 3
        y_h = rng.integers(0, c, n).astype(np.int64)
        z, lab = xp.asarray(z_h), xp.asarray(y_h)
        rows = xp.arange(n)
        if be is not None:
            out["fused"] = lambda: be.softmax_cross_entropy(z, lab)

        def unfused():
            s = z - z.max(axis=1, keepdims=True)
            logp = s - xp.log(xp.exp(s).sum(axis=1, keepdims=True))
            loss = -logp[rows, lab].mean()
            grad = xp.exp(logp)
            grad[rows, lab] -= 1
            grad /= n
            return loss, grad
        out["unfused"] = unfused
        if torch:
            F = torch.nn.functional
            zt, yt = T(z_h).requires_grad_(), T(y_h)

            def tce():
                loss = F.cross_entropy(zt, yt)
                (gz,) = torch.autograd.grad(loss, zt)
                return loss, gz
            out["torch"] = tce
    elif kernel in ("sgd_step", "sgd_momentum_step", "adam_step"):
        (n,) = shape
        p_h = rng.standard_normal(n).astype(f32)
        g_h = (rng.standard_normal(n) * 1e-3).astype(f32)
        p, g = xp.asarray(p_h), xp.asarray(g_h)
        if kernel == "sgd_step":
            if be is not None:
                out["fused"] = lambda: be.sgd_update_(p, g, None, LR, 0.0, 0.0, False, 0.0, False)

            def unfused():
                p.__isub__(LR * g)
            out["unfused"] = unfused
            if torch:
                pt = T(p_h)
                pt.grad = T(g_h)
                opt = torch.optim.SGD([pt], lr=LR)
                out["torch"] = opt.step
        elif kernel == "sgd_momentum_step":
            buf = xp.zeros_like(p)
            buf2 = xp.zeros_like(p)
            if be is not None:
                out["fused"] = lambda: be.sgd_update_(p, g, buf, LR, MOM, 0.0, False, 0.0, False)

            def unfused():
                buf2.__imul__(MOM)
                buf2.__iadd__(g)
                p.__isub__(LR * buf2)
            out["unfused"] = unfused
            if torch:
                pt = T(p_h)
                pt.grad = T(g_h)
                opt = torch.optim.SGD([pt], lr=LR, momentum=MOM)
                out["torch"] = opt.step
        else:
            m, v = xp.zeros_like(p), xp.zeros_like(p)
            m2, v2 = xp.zeros_like(p), xp.zeros_like(p)
            bc1, bc2 = 1 - B1 ** ADAM_STEP, 1 - B2 ** ADAM_STEP
            if be is not None:
                out["fused"] = lambda: be.adam_update_(p, g, m, v, LR, B1, B2, EPS, 0.0,
                                                       ADAM_STEP)

            def unfused():  # PyTorch's single-tensor rule, written as array expressions
                m2.__imul__(B1)
                m2.__iadd__((1 - B1) * g)
                v2.__imul__(B2)
                v2.__iadd__((1 - B2) * g * g)
                denom = xp.sqrt(v2) / math.sqrt(bc2) + EPS
                p.__isub__((LR / bc1) * m2 / denom)
            out["unfused"] = unfused
            if torch:
                pt = T(p_h)
                pt.grad = T(g_h)
                opt = torch.optim.Adam([pt], lr=LR, betas=(B1, B2), eps=EPS)
                out["torch"] = opt.step
    return out


def run(device: str = "cpu", quick: bool = True, threads: int = 1, rounds: Optional[int] = None,
        block_s: float = 0.02, kernels: Optional[List[str]] = None,
        use_torch: bool = True, smoke: bool = False,
        budget_s: Optional[float] = None) -> Dict[str, object]:
    """Time every kernel x size x variant; return rows with medians and paired ratios.

    ``budget_s``: total seconds; each remaining case gets an equal share of what is left, and
    cases that no longer fit are listed under ``skipped``.
    """
    import time
    t0 = time.perf_counter()
    skipped: Dict[str, str] = {}
    be = None
    try:
        from nnx import backends
        be = backends.get_backend("cpu" if device == "cpu" else "cuda")
        missing = [k for k in ("sigmoid_fwd", "sigmoid_bwd", "softmax_cross_entropy",
                               "sgd_update_", "adam_update_") if not hasattr(be, k)]
        if missing:
            skipped["fused"] = f"backend lacks {missing}"
            be = None
    except Exception as e:
        skipped["fused"] = f"backends.get_backend({device!r}) failed: {type(e).__name__}: {e}"
    if device == "cpu":
        xp = np
        sync = lambda: None  # noqa: E731
    else:
        import cupy as xp
        sync = lambda: xp.cuda.Device().synchronize()  # noqa: E731
    torch = None
    if use_torch:
        try:
            import torch
            if device == "cuda" and not torch.cuda.is_available():
                skipped["torch"] = "torch.cuda.is_available() is False"
                torch = None
        except ImportError as e:
            skipped["torch"] = f"torch not installed ({e})"
    else:
        skipped["torch"] = "disabled"
    rounds = rounds or (5 if quick else 15)
    rows = []
    cases = [(kernel, label, shape) for kernel, sizes in SIZES.items()
             if not kernels or kernel in kernels
             for label, shape in (sizes[:1] if smoke else sizes)
             if not (quick and label in QUICK_SKIP)]
    for i, (kernel, label, shape) in enumerate(cases):
        share = None
        if budget_s is not None:
            left = budget_s - (time.perf_counter() - t0)
            if left <= 0:
                skipped[f"{kernel} {label}"] = "--quick time budget"
                continue
            share = max(0.1, left / (len(cases) - i))
        fns = _variants(kernel, shape, be, xp, torch, device)
        ents = [timing.Entry(name, fn, sync, pool=None if device != "cpu" else
                             ("torch" if name == "torch" else "openblas"))
                for name, fn in fns.items()]
        res = timing.interleave(ents, rounds=rounds, block_s=block_s, threads=threads,
                                max_extra=rounds, warmup_s=0.05, budget_s=share,
                                min_rounds=1 if share is not None else 2)
        rows.append({"kernel": kernel, "size": label, "shape": list(shape), "device": device,
                     "threads": threads, "noisy_rounds": res["noisy_rounds"],
                     "rounds": res["rounds"],
                     "time_s": {k: v["median_s"] for k, v in res["per"].items()},
                     "ratios": {k: v["median"] for k, v in res["ratios"].items()
                                if k.endswith("/fused")}})
        del fns, ents
    return {"device": device, "threads": threads, "skipped": skipped, "rows": rows}
