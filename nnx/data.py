"""Datasets and mini-batch loading.

``TensorDataset`` holds arrays on the host; ``DataLoader`` cuts them into mini-batches, each
gathered with one fancy-index per array (never one per sample), and hands them out as
``nnx.Tensor`` on the target device. On a CUDA device the loader copies the next batch to the
GPU on its own stream while the current one is in use (double buffering), so the device does
not wait on the host.

Example::

    >>> import numpy as np, nnx

    >>> from nnx.data import DataLoader
    >>> x = np.random.rand(100, 3).astype(np.float32); y = np.arange(100)
    >>> loader = DataLoader((x, y), batch_size=32, shuffle=True, seed=0)
    >>> len(loader)
    4
    >>> for xb, yb in loader:
    ...     pass  # xb: Tensor (32, 3) float32, yb: Tensor (32,) int64; the last batch has 4 rows
"""
from __future__ import annotations

import operator
import warnings

import numpy as np

from . import _config, distributed
from .tensor import host_array, tensor

__all__ = ["Dataset", "TensorDataset", "DataLoader", "Sampler", "DistributedSampler"]


def _host_array(a, name="array", scalar_ok=False):
    """``a`` as a host NumPy array: NumPy passes through, nnx Tensors and CuPy arrays are copied
    to the host, anything else goes through ``numpy.asarray``."""
    a = host_array(a)
    if a.ndim == 0 and not scalar_ok:
        raise ValueError(f"{name} must have at least one dimension (rows), got a scalar")
    return a


class Dataset:
    """Base class of map-style datasets: ``len(ds)`` samples, ``ds[i]`` the i-th one.

    A sample is a tuple of arrays (or a single array). :class:`DataLoader` gathers a batch from
    a plain ``Dataset`` one sample at a time and stacks the fields; :class:`TensorDataset` is
    faster, gathering each batch with one fancy-index per array.
    """

    def __getitem__(self, index):
        raise NotImplementedError

    def __len__(self):
        raise NotImplementedError


class TensorDataset(Dataset):
    """A dataset of arrays that share their first dimension; sample ``i`` is
    ``(a[i] for a in arrays)``.

    The arrays are kept as host NumPy arrays (nnx Tensors and CuPy arrays are copied to the
    host once, here); :class:`DataLoader` moves each batch to the device.

    Args:
        *arrays: one or more arrays (NumPy, CuPy, nnx Tensor, or anything
            ``numpy.asarray`` takes) with equal ``len``.

    Attributes:
        arrays: the tuple of host NumPy arrays.

    Example::

        >>> ds = TensorDataset(np.zeros((5, 2), np.float32), np.arange(5))
        >>> len(ds), ds[1][1], ds[[0, 4]][0].shape
        (5, 1, (2, 2))
    """

    def __init__(self, *arrays):
        if not arrays:
            raise ValueError("TensorDataset needs at least one array")
        self.arrays = tuple(_host_array(a, f"array {i}") for i, a in enumerate(arrays))
        sizes = [len(a) for a in self.arrays]
        if len(set(sizes)) > 1:
            raise ValueError(
                "TensorDataset arrays must have the same first dimension, got sizes "
                + ", ".join(str(s) for s in sizes)
            )

    def __getitem__(self, index):
        """The sample(s) at ``index``: an int, a slice or an integer array (a batch)."""
        return tuple(a[index] for a in self.arrays)

    def __len__(self):
        return len(self.arrays[0])

    def __repr__(self):
        fields = ", ".join(f"{a.dtype}{list(a.shape)}" for a in self.arrays)
        return f"TensorDataset({fields})"


def _batch_dtype(dtype):
    """The dtype a batch of ``dtype`` gets: ``nnx.tensor``'s rule, applied on the host.

    float64 (NumPy's default, rarely chosen) becomes the default dtype (float32 unless
    changed); float16/float32, integers and bools are kept, so int64 labels stay int64.
    Casting before the copy halves what a float64 array sends to the GPU.
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "f" and dtype.itemsize >= 8:
        return np.dtype(_config.get_default_dtype())
    return dtype


def _to_tensor(array, device):
    # dtype passed explicitly: the batch already has its final dtype (see _batch_dtype).
    return tensor(array, dtype=array.dtype, device=device)


def _device_backend(device):
    """``(device string, backend)`` for ``device``; None means ``nnx.get_device()`` now."""
    from .backends import get_backend

    if device is None:
        device = _config.get_device()
    else:
        # nnx.tensor resolves "auto", "cuda", "gpu", ... and raises nnx's clear error when
        # CUDA is unusable; an empty tensor costs nothing.
        device = tensor(np.zeros(0, np.float32), device=device).device
    return device, get_backend(device)


class DataLoader:
    """Iterate over a dataset in mini-batches of ``nnx.Tensor``.

    Each iteration (epoch) yields ``len(loader)`` tuples, one ``Tensor`` per array of the
    dataset, on ``device``. Rows are gathered on the host with one fancy-index per array and
    follow ``nnx.tensor``'s dtype rule, applied on the host before any copy: float32 features
    stay float32, int64 labels stay int64, float64 becomes the default dtype (float32).

    On a CUDA device the batches are double-buffered: while you use batch ``k``, batch
    ``k + 1`` is gathered into pinned host memory and copied to the GPU on a separate CuPy
    stream; the compute stream waits on that copy only when batch ``k + 1`` is handed out.
    On the CPU each batch is simply gathered and wrapped.

    Args:
        dataset_or_arrays: a :class:`Dataset` (e.g. :class:`TensorDataset`), a tuple or list
            of arrays with equal first dimension (wrapped in a ``TensorDataset``), or a single
            array (batches are then 1-tuples).
        batch_size: rows per batch, at least 1. Default: 32.
        shuffle: draw a new random order each epoch. Default: ``False``.
        drop_last: drop the last batch when it is smaller than ``batch_size``.
            Default: ``False``.
        seed: with ``shuffle``, an int seeding this loader's own
            ``numpy.random.Generator``: two loaders built with the same seed yield the same
            sequence of epochs. ``None`` (default) draws from the device backend's generator,
            which ``nnx.manual_seed`` makes reproducible.
        device: where batches go: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"``; ``None``
            (default) reads ``nnx.get_device()`` each time iteration starts.
        sampler: where the row indices of each epoch come from, in order (an iterable with
            ``len``, e.g. :class:`DistributedSampler`); excludes ``shuffle``, as PyTorch's.

    Example::

        >>> loader = DataLoader((x, y), batch_size=64, shuffle=True, seed=0)
        >>> for epoch in range(10):
        ...     for xb, yb in loader:
        ...         loss = loss_fn(model(xb), yb)
    """

    def __init__(self, dataset_or_arrays, batch_size=32, shuffle=False, drop_last=False,
                 seed=None, device=None, *, sampler=None, num_workers=0, pin_memory=False,
                 timeout=0, worker_init_fn=None, persistent_workers=False, prefetch_factor=None):
        # num_workers, pin_memory, timeout, worker_init_fn, persistent_workers, prefetch_factor:
        # accepted for PyTorch code and ignored; a batch is one fancy-index per array on the
        # host (no per-sample work for workers to share), and CUDA batches always come through
        # pinned memory on a copy stream.
        if num_workers:
            warnings.warn(f"DataLoader: num_workers={num_workers} is ignored (nnx gathers each "
                          f"batch with one fancy-index per array, in the main thread)",
                          UserWarning, stacklevel=2)
        self.num_workers, self.pin_memory = num_workers, pin_memory
        if hasattr(batch_size, "shape") or isinstance(batch_size, (list, tuple)):
            raise TypeError(f"DataLoader(X, Y): the second argument is batch_size, got an array of "
                            f"shape {np.shape(batch_size)}; pass the arrays together: "
                            f"DataLoader(TensorDataset(X, Y), batch_size=...) or "
                            f"DataLoader((X, Y), batch_size=...)")
        data = dataset_or_arrays
        if isinstance(data, Dataset):
            self.dataset = data
        elif isinstance(data, (tuple, list)):
            self.dataset = TensorDataset(*data)
        elif hasattr(data, "__len__") and hasattr(data, "__getitem__") and not hasattr(
                data, "shape"):
            self.dataset = data  # duck-typed map-style dataset (e.g. a torch Dataset)
        else:
            self.dataset = TensorDataset(data)
        if isinstance(batch_size, (bool, np.bool_)):
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        try:
            batch_size = operator.index(batch_size)
        except TypeError:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}") from None
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        n = len(self.dataset)
        if n == 0:
            raise ValueError("DataLoader: the dataset is empty (0 samples)")
        if sampler is not None:
            if shuffle:
                raise ValueError("DataLoader: sampler option is mutually exclusive with shuffle "
                                 "(the sampler decides the order; DistributedSampler(shuffle="
                                 "True) shuffles)")
            if not hasattr(sampler, "__iter__") or not hasattr(sampler, "__len__"):
                raise TypeError(f"DataLoader: sampler must be an iterable of indices with a len "
                                f"(e.g. nnx.data.DistributedSampler), got "
                                f"{type(sampler).__name__}")
        self.sampler = sampler
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = seed
        self.device = device
        self._rng = np.random.default_rng(seed) if seed is not None else None

    def __len__(self):
        n = len(self.dataset) if self.sampler is None else len(self.sampler)
        if self.drop_last:
            return n // self.batch_size
        return -(-n // self.batch_size)

    def __repr__(self):
        return (f"DataLoader({self.dataset!r}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, drop_last={self.drop_last}, seed={self.seed}, "
                f"device={self.device!r})")

    # ------------------------------------------------------------------ epoch order
    def _order(self, backend):
        if self.sampler is not None:
            order = np.fromiter((operator.index(i) for i in self.sampler), dtype=np.int64)
            n = len(self.dataset)
            if order.size and (order.min() < -n or order.max() >= n):
                raise IndexError(f"DataLoader: the sampler gave index {int(order.max())} for a "
                                 f"dataset of {n} samples")
            return order
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n, dtype=np.int64)
        if self._rng is not None:
            return self._rng.permutation(n)
        return np.asarray(backend.permutation(n), dtype=np.int64)

    def _batches(self, order):
        """The index arrays of this epoch's batches."""
        stops = range(self.batch_size, len(order) + self.batch_size, self.batch_size)
        for stop in stops:
            idx = order[stop - self.batch_size: stop]
            if len(idx) < self.batch_size and self.drop_last:
                return
            yield idx

    def _gather(self, idx):
        """One batch as a tuple of host arrays of their batch dtypes."""
        if isinstance(self.dataset, TensorDataset):
            # one fancy-index per array, never one per sample
            return tuple(a[idx].astype(_batch_dtype(a.dtype), copy=False)
                         for a in self.dataset.arrays)
        samples = [self.dataset[int(i)] for i in idx]
        if not isinstance(samples[0], tuple):
            samples = [(s,) for s in samples]
        fields = (np.stack([_host_array(s[f], scalar_ok=True) for s in samples])
                  for f in range(len(samples[0])))
        return tuple(a.astype(_batch_dtype(a.dtype), copy=False) for a in fields)

    # ------------------------------------------------------------------ iteration
    def __iter__(self):
        device, backend = _device_backend(self.device)
        # Draw the order now, not at the first next(): iter() starts the epoch.
        batches = self._batches(self._order(backend))
        if getattr(backend, "name", None) == "cupy":
            return self._iter_prefetch(batches, backend, device)
        return self._iter_plain(batches, device)

    def _iter_plain(self, batches, device):
        for idx in batches:
            yield tuple(_to_tensor(a, device) for a in self._gather(idx))

    def _iter_prefetch(self, batches, backend, device):
        prefetcher = _CudaPrefetcher(backend, self.batch_size)
        try:
            pending = None
            for idx in batches:
                nxt = prefetcher.submit(self._gather_into(idx, prefetcher))
                if pending is not None:
                    yield prefetcher.receive(pending, device)
                pending = nxt
            if pending is not None:
                yield prefetcher.receive(pending, device)
        finally:
            prefetcher.close()

    def _gather_into(self, idx, prefetcher):
        """One batch gathered straight into the prefetcher's pinned host buffers."""
        if not isinstance(self.dataset, TensorDataset):
            return prefetcher.stage(self._gather(idx))
        return prefetcher.stage_take(self.dataset.arrays, idx)


class Sampler:
    """Base class of index samplers (PyTorch's ``torch.utils.data.Sampler``): iterating
    yields dataset indices; ``len`` is how many per epoch."""

    def __iter__(self):
        raise NotImplementedError

    def __len__(self):
        raise NotImplementedError


class DistributedSampler(Sampler):
    """Each rank's shard of a dataset's indices, as PyTorch's ``DistributedSampler``.

    Every epoch the indices ``0 .. N-1`` (shuffled with ``seed + epoch`` when ``shuffle``, the
    same permutation on every rank) are padded by repeating from the start to a multiple of
    ``num_replicas`` (or, with ``drop_last``, cut to one), and rank ``r`` takes
    ``indices[r::num_replicas]``: the shards are disjoint (apart from the padding) and cover
    the data set; each has ``len(sampler)`` indices. Call ``set_epoch(epoch)`` before each
    epoch so the shuffle changes (identically on every rank). The permutation comes from
    ``numpy.random.default_rng(seed + epoch)``, not from PyTorch's generator.

    Args:
        dataset: anything with ``len``.
        num_replicas: the number of ranks; default ``nnx.distributed.world_size()``.
        rank: this rank; default ``nnx.distributed.rank()``.
        shuffle: draw a new order each epoch. Default True.
        seed: the shuffle's seed, the same on every rank. Default 0.
        drop_last: drop the tail that does not divide evenly instead of padding.

    Example::

        >>> sampler = DistributedSampler(ds, num_replicas=2, rank=0, shuffle=False)
        >>> loader = DataLoader(ds, batch_size=64, sampler=sampler)
        >>> for epoch in range(3):
        ...     sampler.set_epoch(epoch)
        ...     for xb, yb in loader: ...
    """

    def __init__(self, dataset, num_replicas=None, rank=None, shuffle=True, seed=0,
                 drop_last=False):
        if num_replicas is None:
            num_replicas = distributed.world_size()
        if rank is None:
            rank = distributed.rank()
        num_replicas, rank = operator.index(num_replicas), operator.index(rank)
        if num_replicas < 1:
            raise ValueError(f"DistributedSampler: num_replicas must be at least 1, got "
                             f"{num_replicas}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"DistributedSampler: invalid rank {rank}, rank should be in the "
                             f"interval [0, {num_replicas - 1}]")
        self.dataset = dataset
        self.num_replicas, self.rank = num_replicas, rank
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.epoch = 0
        n = len(dataset)
        if self.drop_last and n % num_replicas:
            self.num_samples = -(-(n - num_replicas) // num_replicas)
        else:
            self.num_samples = -(-n // num_replicas)
        self.total_size = self.num_samples * num_replicas

    def __iter__(self):
        n = len(self.dataset)
        if self.shuffle:
            order = np.random.default_rng(self.seed + self.epoch).permutation(n)
        else:
            order = np.arange(n, dtype=np.int64)
        if not self.drop_last:
            pad = self.total_size - n
            if pad > 0:
                order = np.concatenate([order, np.resize(order, pad)])
        else:
            order = order[:self.total_size]
        return iter(order[self.rank:self.total_size:self.num_replicas].tolist())

    def __len__(self):
        return self.num_samples

    def set_epoch(self, epoch):
        """Set the epoch (seeds this epoch's shuffle as ``seed + epoch`` on every rank)."""
        self.epoch = int(epoch)


class _CudaPrefetcher:
    """Double-buffered host-to-device copies on a side CuPy stream (only built for CuPy).

    Two pinned host buffers per array alternate; batch ``k`` is staged in slot ``k % 2``.
    ``submit`` queues the copy of a staged batch on the copy stream and records an event;
    ``receive`` makes the compute (current) stream wait on that event, so later kernels see
    the data, and wraps the device arrays as Tensors.
    """

    def __init__(self, backend, batch_size):
        cupy, cupyx = backend.xp, backend.cupyx  # CuPy comes only through the backend
        self.cupy, self.cupyx = cupy, cupyx
        self.backend = backend
        self.batch_size = batch_size
        with backend.use():
            self.stream = cupy.cuda.Stream(non_blocking=True)
        self.slots = [None, None]      # per slot: list of pinned arrays, one per field
        self.events = [None, None]     # per slot: the event of its last copy
        self.k = 0                     # batches staged so far

    def _slot_buffers(self, host_like):
        """Pinned buffers of slot ``k % 2``, (re)allocated to fit, once its last copy ended."""
        s = self.k % 2
        if self.events[s] is not None:
            # NOTE: the pinned memory may still be the source of an in-flight copy from two
            # batches ago; overwriting it before that copy ends would corrupt that batch.
            self.events[s].synchronize()
            self.events[s] = None
        bufs = self.slots[s]
        want = [((self.batch_size,) + tuple(shape[1:]), dtype) for shape, dtype in host_like]
        if bufs is None or [(b.shape, b.dtype) for b in bufs] != want:
            bufs = [self.cupyx.empty_pinned(shape, dtype) for shape, dtype in want]
            self.slots[s] = bufs
        return bufs

    def stage_take(self, arrays, idx):
        bufs = self._slot_buffers([(a.shape, _batch_dtype(a.dtype)) for a in arrays])
        n = len(idx)
        views = []
        for a, b in zip(arrays, bufs):
            if a.dtype == b.dtype:
                # mode="clip" lets np.take write straight into `out` (mode="raise" buffers
                # first); the indices are a slice of a permutation, so none is clipped.
                views.append(np.take(a, idx, axis=0, out=b[:n], mode="clip"))
            else:
                views.append(b[:n])
                views[-1][...] = a[idx]  # gather, then cast into the pinned buffer
        return views

    def stage(self, host_arrays):
        bufs = self._slot_buffers([(a.shape, a.dtype) for a in host_arrays])
        views = []
        for a, b in zip(host_arrays, bufs):
            views.append(b[: len(a)])
            views[-1][...] = a
        return views

    def submit(self, staged):
        cupy = self.cupy
        s = self.k % 2
        self.k += 1
        with self.backend.use():
            compute = cupy.cuda.get_current_stream()
            # Allocate on the compute stream: the memory pool then recycles these blocks in
            # that stream's order once the batch is dropped. The copy stream first waits for
            # the work already queued there, since a block may come from a temporary that
            # queued kernels still use.
            dev = [cupy.empty(h.shape, h.dtype) for h in staged]
            self.stream.wait_event(compute.record())
            for d, h in zip(dev, staged):
                d.set(h, stream=self.stream)  # asynchronous: `h` lives in pinned memory
            event = self.stream.record()
        self.events[s] = event
        return dev, event

    def receive(self, pending, device):
        dev, event = pending
        with self.backend.use():
            self.cupy.cuda.get_current_stream().wait_event(event)
            return tuple(_to_tensor(d, device) for d in dev)

    def close(self):
        # Keep the pinned buffers alive until their copies end (an epoch left early).
        for e in self.events:
            if e is not None:
                e.synchronize()
        self.events = [None, None]
