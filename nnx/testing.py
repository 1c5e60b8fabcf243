"""Testing helpers: finite-difference gradient checks against nnx's autograd."""
from __future__ import annotations

import numpy as np

from .tensor import Tensor, _wrap  # noqa: F401


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, n_directions=None, seed=0,
              raise_exception=True):
    """Check ``fn``'s analytic gradients against central differences, in float64.

    ``fn`` maps Tensors to one Tensor. The output is projected onto a fixed random tensor ``w``
    (so non-scalar outputs are covered), then for each input that requires grad the analytic
    gradient of ``sum(fn(*inputs) * w)`` is compared with central differences: element by
    element for small inputs, or along ``n_directions`` random directions for large ones
    (Chainer's projection trick). Inputs must be float64 for the default tolerances.

    Returns True, or raises AssertionError with inputs, numeric and analytic gradients.
    """
    rng = np.random.default_rng(seed)
    from .tensor import as_tensor

    inputs = [x if isinstance(x, Tensor) else as_tensor(x) for x in inputs]
    for x in inputs:
        x.grad = None
    out = fn(*inputs)
    w_host = rng.standard_normal(out.shape)
    w = _wrap(out._backend.asarray(w_host.astype(out.dtype)), out._backend)
    (out * w).sum().backward()
    analytic = [None if not x.requires_grad else
                (x.grad.numpy().astype(np.float64) if x.grad is not None else np.zeros(x.shape))
                for x in inputs]

    def f():
        from ._config import no_grad

        with no_grad():
            return float((fn(*inputs) * w).sum().item())

    problems = []
    for i, x in enumerate(inputs):
        if not x.requires_grad:
            continue
        data = x.data
        host = x._backend.to_host(data).astype(np.float64)
        a = analytic[i]
        if n_directions is None and host.size <= 256:
            dirs = None
            num = np.zeros(host.size)
            for k in range(host.size):
                num[k] = _central(f, x, host, _unit(host.shape, k), eps)
            ana = a.reshape(-1)
        else:
            nd = n_directions or 8
            dirs = [rng.standard_normal(host.shape) for _ in range(nd)]
            num = np.array([_central(f, x, host, d, eps) for d in dirs])
            ana = np.array([float((a * d).sum()) for d in dirs])
        x.data[...] = x._backend.asarray(host.astype(data.dtype))
        if not np.allclose(num, ana, atol=atol, rtol=rtol):
            err = np.abs(num - ana).max()
            problems.append(f"input {i} (shape {x.shape}): max |numeric - analytic| = {err:.3g}\n"
                            f"  input:    {np.array2string(host.reshape(-1)[:16], precision=4)}\n"
                            f"  numeric:  {np.array2string(num[:16], precision=6)}\n"
                            f"  analytic: {np.array2string(ana[:16], precision=6)}")
    if problems:
        if raise_exception:
            raise AssertionError("gradcheck failed:\n" + "\n".join(problems))
        return False
    return True


def _unit(shape, k):
    d = np.zeros(int(np.prod(shape)))
    d[k] = 1.0
    return d.reshape(shape)


def _central(f, x, host, direction, eps):
    dt = x.data.dtype
    x.data[...] = x._backend.asarray((host + eps * direction).astype(dt))
    fp = f()
    x.data[...] = x._backend.asarray((host - eps * direction).astype(dt))
    fm = f()
    x.data[...] = x._backend.asarray(host.astype(dt))
    return (fp - fm) / (2 * eps)
