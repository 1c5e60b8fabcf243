"""``nnx.nn.utils``: gradient clipping and parameter vectors, as ``torch.nn.utils``.

When the gradients live in an optimizer's flat buffer (``Parameter._bind_flat``) and the
parameters given cover that whole buffer, ``clip_grad_norm_`` reduces the flat gradient once and
scales it with one in-place multiply; the scale ``min(1, max_norm / (norm + 1e-6))`` is computed
on the device, so nothing waits for the GPU (unless ``error_if_nonfinite=True``, which reads the
norm back, as PyTorch does). Other gradients are reduced and scaled one by one.
"""
from __future__ import annotations

import math

import numpy as np

from ..tensor import Tensor, _wrap

__all__ = ["clip_grad_norm_", "clip_grad_value_", "parameters_to_vector", "vector_to_parameters"]


def _param_list(parameters):
    return [parameters] if isinstance(parameters, Tensor) else list(parameters)


def _grad_chunks(parameters):
    """(backend, array) pairs covering every gradient of ``parameters`` once: an optimizer's
    whole flat gradient where all of its parameters are given and hold their gradient there,
    else each gradient's own array."""
    params = [p for p in _param_list(parameters) if p._grad is not None]
    by_owner = {}
    for p in params:
        owner = p._flat_owner() if hasattr(p, "_flat_owner") else None
        if owner is not None and p._grad is p._grad_storage():
            by_owner.setdefault(id(owner), (owner, set()))[1].add(id(p))
    flat = set()
    chunks = []
    for owner, ids in by_owner.values():
        members = getattr(owner, "params", None)
        if getattr(owner, "copied", True) or getattr(owner, "grad", None) is None \
                or members is None or {id(p) for p in members} != ids:
            continue  # the buffer holds more than these gradients: take them one by one
        flat |= ids
        chunks.append((owner.backend, owner.grad))
    chunks.extend((p._backend, p._grad.data) for p in params if id(p) not in flat)
    return chunks


def _chunk_norm(xp, g, p):
    if p == math.inf:
        return xp.max(xp.abs(g))
    if p == -math.inf:
        return xp.min(xp.abs(g))
    if p == 2:  # one BLAS dot: no temporary of the gradient's size
        v = g.reshape(-1)
        return xp.dot(v, v)
    if p == 1:
        return xp.sum(xp.abs(g))
    if p == 0:
        return xp.sum(g != 0).astype(g.dtype)
    return xp.sum(xp.abs(g) ** p)


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    """Scale the gradients of ``parameters`` in place so that their joint ``norm_type``-norm is
    at most ``max_norm`` (``torch.nn.utils.clip_grad_norm_``); returns the total norm before
    clipping as a 0-d tensor (on the gradients' device, in their dtype). ``norm_type`` may be
    ``inf``. ``error_if_nonfinite=True`` raises RuntimeError for a NaN or infinite norm (this
    reads the norm back to the host). ``foreach`` is accepted for PyTorch compatibility."""
    chunks = _grad_chunks(parameters)
    if not chunks:
        from ..tensor import tensor
        return tensor(0.0)
    with np.errstate(all="ignore"):  # inf/NaN gradients give an inf/NaN norm, as in PyTorch
        return _clip_norm(chunks, float(max_norm), float(norm_type), error_if_nonfinite)


def _clip_norm(chunks, max_norm, p, error_if_nonfinite):
    backend = chunks[0][0]
    xp = backend.xp
    dtype = chunks[0][1].dtype
    total = None
    for b, g in chunks:
        part = _chunk_norm(b.xp, g, p)
        if b is not backend:
            part = backend.asarray(b.to_host(part))
        part = part.astype(dtype, copy=False)
        if total is None:
            total = part
        elif p == math.inf:
            total = xp.maximum(total, part)
        elif p == -math.inf:
            total = xp.minimum(total, part)
        else:
            total = total + part
    if p == 2:
        total = xp.sqrt(total)
    elif p not in (1, 0, math.inf, -math.inf):
        total = total ** (1.0 / p)
    if error_if_nonfinite and not bool(xp.isfinite(total)):
        raise RuntimeError(
            f"The total norm of order {p} for gradients from `parameters` is non-finite, "
            f"so it cannot be clipped. To disable this error and scale the gradients by the "
            f"non-finite norm anyway, set `error_if_nonfinite=False`")
    scale = xp.minimum(max_norm / (total + 1e-6), 1.0).astype(dtype)  # on the device: no sync
    if type(scale) in (np.ndarray, np.float16, np.float32, np.float64) and scale >= 1:
        return _wrap(total, backend)  # a host value (the CPU): skip multiplying by exactly 1
    for b, g in chunks:
        g *= scale if b is backend else b.asarray(backend.to_host(scale))
    return _wrap(total, backend)


def clip_grad_value_(parameters, clip_value, foreach=None):
    """Clip every gradient of ``parameters`` to ``[-clip_value, clip_value]`` in place
    (``torch.nn.utils.clip_grad_value_``); one pass over a flat gradient buffer."""
    v = float(clip_value)
    for b, g in _grad_chunks(parameters):
        b.xp.clip(g, -v, v, out=g)


def parameters_to_vector(parameters):
    """The parameters flattened and joined into one 1-D tensor (a copy, no graph)."""
    params = _param_list(parameters)
    if not params:
        raise ValueError("parameters_to_vector: no parameters")
    b = params[0]._backend
    return _wrap(b.xp.concatenate([q.data.reshape(-1) for q in params]), b)


def vector_to_parameters(vec, parameters):
    """Copy consecutive slices of the 1-D tensor ``vec`` into ``parameters`` (in place, so an
    optimizer holding them keeps them)."""
    if not isinstance(vec, Tensor):
        raise TypeError(f"expected vec to be a Tensor, got {type(vec).__name__}")
    data = vec.data.reshape(-1)
    off = 0
    for q in _param_list(parameters):
        n = int(q.data.size)
        q.data[...] = data[off:off + n].reshape(q.shape).astype(q.dtype)
        off += n
