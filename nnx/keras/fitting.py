"""``fit``'s epoch loop and ``evaluate``'s pass, with one host sync per epoch.

Each batch's loss (a 0-d device array) and metric sums stay on the device, accumulated as
``sum(batch_loss * batch_size)``; the epoch's loss, metrics and validation results (and the
flags of the losses' deferred input checks) come to the host in one transfer at the epoch's
end (:func:`host_floats`). Nothing syncs per batch; a NaN is therefore noticed at the end of the
epoch in which it appears, and ``TerminateOnNaN`` then finds the first bad batch from the
per-batch losses kept on the device (:func:`first_nonfinite_batch`).
"""
from __future__ import annotations

import contextlib
import io
import sys
import time
import warnings

import numpy as np

from .. import _config, distributed
from ..data import DataLoader, DistributedSampler
from ..nn import parallel
from ..tensor import Tensor
from . import callbacks as C
from .history import History
from .losses import class_weighted

__all__ = ["check_fit_args", "fit_epochs", "eval_sums", "host_floats", "first_nonfinite_batch",
           "progress", "shard", "distributed_first_bad"]


# ---------------------------------------------------------------------- data parallelism
# Under an initialized world of more than one process (``nnx.distributed.init()`` under
# mpirun), ``fit`` trains data-parallel: each rank takes its shard of the rows
# (``DistributedSampler``'s: rank r gets rows r, r + W, ...; the training shard padded by
# repeating rows so every rank runs the same number of steps), ``batch_size`` rows per rank and
# step, gradients averaged over the ranks after each backward, rank 0's weights copied to all at
# the start. The epoch's loss and metric sums are added over the ranks (History and callbacks
# see the same numbers everywhere, so their decisions agree, TerminateOnNaN's included); the
# progress bar and the callbacks' printing and warnings show on rank 0 only.

def _rows(a):
    """``a`` as an array with rows (NumPy, CuPy; Tensors give their array)."""
    if isinstance(a, Tensor):
        return a.data
    if isinstance(a, np.ndarray) or hasattr(a, "__cuda_array_interface__"):
        return a
    return np.asarray(a)


def shard(data, pad=True):
    """This rank's shard of ``data``: an ``(x, y)`` pair of arrays (rows taken as
    ``DistributedSampler(shuffle=False)`` does; ``pad=False`` leaves the tail unpadded, for
    evaluation) or a DataLoader (rebuilt over a ``DistributedSampler``). ``data`` itself in a
    world of one."""
    world = distributed.world_size()
    if world == 1:
        return data
    if isinstance(data, DataLoader):
        if isinstance(data.sampler, DistributedSampler):
            return data
        sampler = DistributedSampler(data.dataset, shuffle=data.shuffle, seed=0)
        return DataLoader(data.dataset, batch_size=data.batch_size, drop_last=data.drop_last,
                          device=data.device, sampler=sampler)
    x, y = data
    x = _rows(x)
    n = int(x.shape[0])
    if pad:
        idx = np.fromiter(iter(DistributedSampler(range(n), shuffle=False)), dtype=np.int64)
    else:
        idx = np.arange(distributed.rank(), n, world, dtype=np.int64)
    out = []
    for a in (x, None if y is None else _rows(y)):
        if a is None:
            out.append(None)
        elif isinstance(a, np.ndarray):
            out.append(a[idx])
        else:
            out.append(a[sys.modules["cupy"].asarray(idx)])
    return tuple(out)


def distributed_first_bad(local):
    """The first bad batch index over the ranks (``local`` is this rank's, or None)."""
    if distributed.world_size() == 1:
        return local
    found = [b for b in distributed.all_gather_objects(local) if b is not None]
    return min(found) if found else None


def _quiet_context():
    """On ranks other than 0: callbacks' stdout and warnings are dropped."""
    if distributed.rank() == 0:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    return stack


def check_fit_args(batch_size, epochs, verbose, validation_split):
    """``(batch_size, verbose)`` checked and defaulted (batch 32, verbose "auto" -> 1)."""
    if batch_size is None:
        batch_size = 32
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"fit: batch_size must be a positive int, got {batch_size!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ValueError(f"fit: epochs must be a non-negative int, got {epochs!r}")
    if verbose == "auto":
        verbose = 1
    if not 0.0 <= float(validation_split) < 1.0:
        raise ValueError(f"fit: validation_split must be in [0, 1), got {validation_split}")
    return int(batch_size), verbose


def _callbacks(model, callbacks, terminate_on_nan, params):
    """The run's callbacks (``TerminateOnNaN`` first unless given or turned off), each told
    the model and ``params``; and those overriding ``on_epoch_begin`` / ``on_epoch_end``."""
    cbs = list(callbacks or [])
    if terminate_on_nan and not any(isinstance(c, C.TerminateOnNaN) for c in cbs):
        cbs.insert(0, C.TerminateOnNaN())
    for c in cbs:
        if not isinstance(c, C.Callback):
            raise TypeError(f"fit: callbacks must be nnx.callbacks.Callback objects, got "
                            f"{type(c).__name__}")
        c.set_model(model)
        c.params = params
    begin = [c for c in cbs if type(c).on_epoch_begin is not C.Callback.on_epoch_begin]
    end = [c for c in cbs if type(c).on_epoch_end is not C.Callback.on_epoch_end]
    return cbs, begin, end


def _train_epoch(train, shuffle, steps, lossf, mfns, opt, ebar, reduce=None):
    """One pass of training over ``train``'s batches: forward through ``steps``, the loss,
    backward (then ``reduce()``, the gradients' averaging over the ranks, when given), the
    optimizer's step. Returns ``(loss sum, metric sums, rows, per-batch losses, deferred
    checks)``, all still on the device."""
    zero_grad, step = opt.zero_grad, opt.step
    losses = []
    checks = []
    tot = 0.0
    seen = 0
    msum = [0.0] * len(mfns)
    for xb, yb, nb in train.batches(shuffle):
        seen += nb
        out = xb
        for f in steps:
            out = f(out)
        loss = lossf(out, yb)
        zero_grad()
        loss.backward()
        if reduce is not None:
            reduce()
        step()
        ld = loss.data
        losses.append(ld)
        if loss._checks:  # a device-side input check: read at the epoch's sync
            checks += loss._checks
        tot = tot + ld * nb
        if mfns:
            od, td = out.data, yb.data
            for i, mf in enumerate(mfns):
                msum[i] = msum[i] + mf(od, td)
        if ebar is not None:
            ebar.update(1)
    return tot, msum, seen, losses, checks


def fit_epochs(model, setup, train, val, *, epochs, initial_epoch, batch_size, verbose,
               callbacks, shuffle, terminate_on_nan, class_weight=None):
    """Run ``fit``'s epochs ``initial_epoch .. epochs - 1`` of ``model`` (compiled as
    ``setup``) over the batch source ``train``, validating on ``val`` (a batch source or
    None) after each; returns the :class:`History`. See ``Sequential.fit`` for the arguments."""
    steps, head, lossf, metrics = model._loss_and_metrics(setup)
    mfns = [f for _, f in metrics]
    names = ["loss"] + [label for label, _ in metrics]
    be = train.backend
    train_loss = lossf  # validation is never class-weighted (as Keras)
    if class_weight is not None:
        train_loss = class_weighted(setup, head, class_weight, be, model._model_backend_dtype()[1])

    history = History()
    history.model = model
    keys = names + (["val_" + k for k in names] if val is not None else [])
    lists = [history.history.setdefault(k, []) for k in keys]
    history.params = {"epochs": int(epochs), "steps": train.steps,
                      "batch_size": int(batch_size), "samples": train.n, "verbose": verbose}
    cbs, begin_cbs, end_cbs = _callbacks(model, callbacks, terminate_on_nan, history.params)
    reduce = None
    quiet = contextlib.nullcontext
    if distributed.world_size() > 1:
        named = list(model.named_parameters())
        parallel.check_same_state(named + list(model.named_buffers()), "fit")
        parallel.broadcast_state(model)
        params = [p for _, p in named]
        reduce = lambda: parallel.average_gradients(params)  # noqa: E731
        quiet = _quiet_context
        if distributed.rank() != 0:
            verbose = 0
    object.__setattr__(model, "history", history)
    object.__setattr__(model, "stop_training", False)
    object.__setattr__(model, "stop_reason", None)

    bar = None
    if verbose == 2 and epochs > initial_epoch:
        bar = progress(total=int(epochs) - int(initial_epoch), desc="Training", unit="epoch")
    was_training = model.training
    model.train()
    with quiet():
        for c in cbs:
            c.on_train_begin({})
    try:
        # NaN/inf is reported once, by TerminateOnNaN, not as NumPy warnings per op.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for epoch in range(int(initial_epoch), int(epochs)):
                t0 = time.perf_counter()
                sampler = getattr(getattr(train, "loader", None), "sampler", None)
                if isinstance(sampler, DistributedSampler):
                    sampler.set_epoch(epoch)
                with quiet():
                    for c in begin_cbs:
                        c.on_epoch_begin(epoch, {})
                ebar = None
                if verbose == 1:
                    ebar = progress(total=train.steps, desc=f"Epoch {epoch + 1}/{epochs}",
                                    unit="batch")
                tot, msum, seen, setup.batch_losses, checks = _train_epoch(
                    train, shuffle, steps, train_loss, mfns, setup.optimizer, ebar, reduce)
                if not seen:
                    raise ValueError("fit: the training data gave no batches (a DataLoader "
                                     "with drop_last and fewer rows than batch_size?)")
                sums = [tot] + msum
                divs = [seen] * len(sums)
                if val is not None:
                    vsums, vseen, vchecks = eval_sums(model, val, steps, lossf, mfns)
                    sums += vsums
                    divs += [vseen] * len(vsums)
                    checks += vchecks
                vals = host_floats(be, sums, checks)  # the epoch's one host sync
                if reduce is not None:  # sums and row counts over the ranks
                    both = distributed.all_reduce_floats(vals + divs)
                    vals, divs = both[:len(vals)].tolist(), both[len(vals):].tolist()
                logs = {}
                for k, v, d, lst in zip(keys, vals, divs, lists):
                    v /= d
                    logs[k] = v
                    lst.append(v)
                history.epoch.append(epoch)
                history.epoch_seconds.append(time.perf_counter() - t0)
                if ebar is not None:
                    ebar.set_postfix_str(_fmt(logs), refresh=False)
                    ebar.close()
                elif bar is not None:
                    bar.set_postfix_str(_fmt(logs), refresh=False)
                    bar.update(1)
                with quiet():
                    for c in end_cbs:
                        c.on_epoch_end(epoch, logs)
                if model.stop_training:
                    history.stopped_epoch = epoch
                    history.stop_reason = model.stop_reason or "callback"
                    break
    finally:
        if bar is not None:
            bar.close()
        setup.batch_losses = None
        model.train(was_training)
    with quiet():
        for c in cbs:
            c.on_train_end({})
    return history


def eval_sums(model, src, steps, lossf, mfns):
    """``([sum of batch_loss * rows, metric sums...] on the device, rows seen, deferred
    checks)`` of one pass over the batch source ``src`` in evaluation mode, without grad."""
    was = model.training
    model.eval()
    tot, msum, seen, checks = 0.0, [0.0] * len(mfns), 0, []
    try:
        with _config.no_grad():
            for xb, yb, nb in src.batches():
                seen += nb
                out = xb
                for f in steps:
                    out = f(out)
                loss = lossf(out, yb)
                if loss._checks:
                    checks += loss._checks
                tot = tot + loss.data * nb
                od, td = out.data, yb.data
                for i, mf in enumerate(mfns):
                    msum[i] = msum[i] + mf(od, td)
    finally:
        model.train(was)
    return [tot] + msum, seen, checks


def host_floats(be, arrays, checks=()):
    """Python floats of device scalars, in one device-to-host transfer. ``checks`` are the
    deferred input checks of the losses (``(device flag, make_error)``, e.g. labels out of
    range on a GPU): their flags travel in the same transfer, and the first set one raises."""
    if be.name == "numpy":  # NumPy losses check their inputs at once: checks is empty
        return [float(a) for a in arrays]
    xp = be.xp
    dev = [xp.asarray(a, dtype=xp.float64).reshape(()) for a in arrays]
    dev += [xp.asarray(flag, dtype=xp.float64).reshape(()) for flag, _ in checks]
    host = [float(v) for v in be.to_host(xp.stack(dev))]
    for (_, make_error), flag in zip(checks, host[len(arrays):]):
        if flag:
            raise make_error()
    return host[:len(arrays)]


def first_nonfinite_batch(be, batch_losses):
    """Index of the first of ``batch_losses`` (0-d arrays of backend ``be``) that is NaN or
    inf, or None (also when there are none)."""
    if not batch_losses:
        return None
    xp = be.xp
    losses = be.to_host(xp.stack([xp.asarray(v) for v in batch_losses]))
    bad = np.flatnonzero(~np.isfinite(losses))
    return int(bad[0]) if bad.size else None


def _fmt(logs):
    return ", ".join(f"{k}={v:.4f}" for k, v in logs.items())


def progress(**kw):
    """A tqdm progress bar on stderr (kept when done, as Keras's)."""
    from tqdm.auto import tqdm

    kw.setdefault("leave", True)
    kw.setdefault("file", sys.stderr)
    kw.setdefault("dynamic_ncols", True)
    return tqdm(**kw)
