"""``DistributedDataParallel``: one model replica per process, gradients averaged across them.

As PyTorch's: wrap the model after ``nnx.distributed.init()``, make the optimizer from the
wrapper's (or the model's) parameters, and train as usual; each process feeds its own shard of
the data (``nnx.data.DistributedSampler``)::

    model = nn.parallel.DistributedDataParallel(model)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss = loss_fn(model(xb), yb); opt.zero_grad(); loss.backward(); opt.step()

At construction rank 0's parameters and buffers are copied to every rank, after a collective
check that all ranks hold the same parameter names, shapes and dtypes (every rank raises the
same error, naming the first difference). At the end of each ``backward()`` that follows a
training forward, the gradients are averaged over the ranks (``autograd.backward_end_hooks``).
Where the optimizer keeps the parameters in its flat buffers (``nnx.optim``), that is one
allreduce of the flat gradient per dtype; other gradients are packed into one buffer per dtype.
Every rank gets the same bits, so the replicas stay identical step after step.

Why one allreduce after backward, not buckets overlapping it: see ``benchmarks/NOTES.md``
("Data-parallel training"); communication is a few per cent of a step here.
"""
from __future__ import annotations

import contextlib

import numpy as np

from .. import autograd, distributed
from ..errors import DTypeError, ShapeError
from .module import Module

__all__ = ["DistributedDataParallel", "average_gradients", "broadcast_state", "check_same_state"]

_pending = []  # DDP wrappers whose forward ran since the last backward


def _on_backward_end():
    if not _pending:
        return
    todo = list(_pending)
    _pending.clear()
    for ddp in todo:
        average_gradients(ddp.module.parameters(), ddp.find_unused_parameters)


def check_same_state(named, who="DistributedDataParallel"):
    """Raise, on every rank alike, unless every rank has the same ``[(name, tensor)]``
    (names, shapes, dtypes; compared with rank 0's). A collective: all ranks must call it."""
    mine = [(n, tuple(t.shape), str(t.dtype)) for n, t in named]
    every = distributed.all_gather_objects(mine)
    ref = every[0]
    for r, theirs in enumerate(every[1:], start=1):
        for (n0, s0, d0), (n1, s1, d1) in zip(ref, theirs):
            if n0 != n1:
                raise ValueError(f"{who}: parameter {n1!r} on rank {r} is {n0!r} on rank 0 (the "
                                 f"ranks' models differ)")
            if s0 != s1:
                raise ShapeError(f"{who}: parameter {n0!r} has shape {s1} on rank {r} but {s0} "
                                 f"on rank 0")
            if d0 != d1:
                raise DTypeError(f"{who}: parameter {n0!r} has dtype {d1} on rank {r} but {d0} "
                                 f"on rank 0")
        if len(ref) != len(theirs):
            extra = (theirs if len(theirs) > len(ref) else ref)[min(len(ref), len(theirs))][0]
            raise ValueError(f"{who}: rank {r} has {len(theirs)} parameters and buffers, rank 0 "
                             f"has {len(ref)}; the first one only one of them has is {extra!r}")


def broadcast_state(module, src=0):
    """Copy rank ``src``'s parameters and buffers of ``module`` into every rank's, in place."""
    for t in list(module.parameters()) + list(module.buffers()):
        distributed.broadcast(t.data, src)


def _flat_whole(owner, mine):
    """Whether ``owner`` (an optimizer's flat group) can be reduced as one buffer: all of its
    parameters are ours and bound to it."""
    if owner.copied or not owner.valid():
        return False
    return all(id(p) in mine for p in owner.params)


def average_gradients(params, find_unused_parameters=False):
    """Average the gradients of ``params`` over the ranks, in place (a collective).

    Parameters that live in an optimizer's flat buffer are reduced as that whole buffer (one
    allreduce per dtype); the others are packed into one buffer per (device, dtype). A
    parameter without a gradient on this rank counts as zeros and gets the average; with
    ``find_unused_parameters``, one without a gradient on every rank keeps ``grad = None``
    (one more small allreduce). Nothing happens in a world of one.
    """
    if distributed.world_size() == 1:
        return
    params = [p for p in params if p.requires_grad]
    mine = {id(p) for p in params}
    unused = None
    if find_unused_parameters:
        used = np.array([p._grad is not None for p in params], dtype=np.float64)
        used = distributed.all_reduce(used, "sum")
        unused = {id(p) for p, u in zip(params, used) if u == 0}
    flats, loose, seen = [], [], set()
    for p in params:
        owner = getattr(p, "_flat_owner", lambda: None)()
        if owner is not None and _flat_whole(owner, mine):
            if id(owner) not in seen:
                seen.add(id(owner))
                flats.append(owner)
        else:
            loose.append(p)
    for owner in flats:
        for p in owner.params:
            if p._grad is None:  # its slice holds an old gradient: count it as zeros
                p._take_grad_storage()[...] = 0
        distributed.all_reduce(owner.grad, "mean")
    _average_loose(loose)
    if unused:
        for p in params:
            if id(p) in unused:
                p._grad = None


def _average_loose(params):
    """Gradients kept outside flat buffers: one packed allreduce per (device, dtype)."""
    groups = {}
    for p in params:
        groups.setdefault((id(p._backend), p.dtype), []).append(p)
    for ps in groups.values():
        b = ps[0]._backend
        xp = b.xp
        parts = [p._grad.data.reshape(-1) if p._grad is not None
                 else xp.zeros(p.data.size, dtype=p.dtype) for p in ps]
        buf = xp.concatenate(parts) if len(parts) > 1 else xp.array(parts[0], copy=True)
        distributed.all_reduce(buf, "mean")
        off = 0
        for p in ps:
            n = int(p.data.size)
            piece = buf[off:off + n].reshape(p.shape)
            off += n
            if p._grad is None:
                p._accumulate(piece)
            else:
                p._grad.data[...] = piece


class DistributedDataParallel(Module):
    """Data parallelism across processes (PyTorch's ``nn.parallel.DistributedDataParallel``).

    Args:
        module: the model (a ``Module``); reachable as ``.module``, so ``state_dict()`` keys
            start with ``module.`` (as PyTorch's; save ``ddp.module.state_dict()`` for plain
            keys).
        broadcast_buffers: copy rank 0's buffers (e.g. running statistics) to every rank at
            each training forward, as PyTorch does. Default True.
        find_unused_parameters: leave ``grad = None`` on parameters no rank used in the step
            (costs one small allreduce per step); default False: every parameter gets the
            averaged gradient, zeros counted for ranks that did not use it.
        device_ids, output_device, dim, process_group, bucket_cap_mb,
        gradient_as_bucket_view, static_graph: accepted for PyTorch code; nnx has one device
            per process and one world.

    In a world of one the wrapper is transparent: same forward, same gradients, nothing sent.
    ``no_sync()``: a context in which forwards do not trigger the averaging (gradient
    accumulation); the first backward after it averages the accumulated gradients.
    """

    def __init__(self, module, device_ids=None, output_device=None, dim=0, broadcast_buffers=True,
                 process_group=None, bucket_cap_mb=None, find_unused_parameters=False,
                 check_reduction=False, gradient_as_bucket_view=False, static_graph=False):
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"DistributedDataParallel: expected an nnx Module, got "
                            f"{type(module).__name__}")
        self.module = module
        self.broadcast_buffers = bool(broadcast_buffers)
        self.find_unused_parameters = bool(find_unused_parameters)
        self.require_backward_grad_sync = True
        if distributed.world_size() > 1:
            check_same_state(list(module.named_parameters()) + list(module.named_buffers()))
            broadcast_state(module)
            if _on_backward_end not in autograd.backward_end_hooks:
                autograd.backward_end_hooks.append(_on_backward_end)

    def forward(self, *args, **kwargs):
        if distributed.world_size() > 1 and self.training:
            if self.broadcast_buffers:
                for b in self.module.buffers():
                    distributed.broadcast(b.data, 0)
            if self.require_backward_grad_sync and autograd._state.grad_enabled \
                    and self not in _pending:
                _pending.append(self)
        return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self):
        """Forwards inside do not average gradients at their backward (accumulate locally)."""
        old = self.require_backward_grad_sync
        self.require_backward_grad_sync = False
        try:
            yield
        finally:
            self.require_backward_grad_sync = old

    def extra_repr(self):
        return f"world_size={distributed.world_size()}"

