"""Processes that train one model together: ranks, a world, and collectives on MPI or NCCL.

Start the processes with a launcher (``mpirun -np 4 python train.py``, ``mpiexec``, ``srun``),
then in each one::

    import nnx.distributed as dist
    dist.init()                                 # "auto": NCCL on a CUDA device, else MPI
    model = nn.parallel.DistributedDataParallel(model)

``init`` reads the rank and world size from MPI (``mpi4py``, imported only here; ``pip install
nnx[mpi]`` brings it and an MPI with ``mpiexec``). Outside a launcher the world is one process:
every call below still works (``all_reduce`` leaves the values as they are), and nothing but
NumPy is imported.

Backends:

* ``"mpi"``: MPI on host buffers. NumPy arrays go to MPI as they are; CuPy arrays go through a
  host copy, or straight to MPI when it is CUDA-aware (``MPIX_CUDA_AWARE_SUPPORT=1`` in the
  environment, or Open MPI reporting CUDA support).
* ``"nccl"``: NCCL through CuPy (``cupy.cuda.nccl``; the ``nvidia-nccl-cu13`` wheel, ``pip
  install nnx[nccl]``) for CuPy arrays, on the current stream; the NCCL id is broadcast over
  MPI, and host arrays still use MPI. Each rank uses GPU ``local_rank()`` (modulo the GPUs it
  sees) and ``init`` makes it nnx's default device.
* ``"auto"``: ``"nccl"`` when a CUDA device is usable, else ``"mpi"``; outside a launcher, the
  world of one. (To train on the CPU of a machine with a GPU, ask for ``"mpi"``.)

Collectives work in place on an ``nnx.Tensor`` (its ``.data``), a NumPy or a CuPy array, as
``torch.distributed``'s do, and return it. Results are the same bits on every rank (MPI's and
NCCL's reductions hand every rank one reduced buffer; ``"mean"`` divides that by the world
size on each rank), so data-parallel replicas stay identical.

Faults: once a world of more than one is up, an exception that nobody catches on one rank
prints its traceback and aborts every rank (``MPI_Abort``) instead of leaving the others
waiting in a collective; a rank that dies (killed, ``os._exit``) ends the job through the
launcher. ``init(timeout=seconds)`` also bounds every host collective: a rank that waits
longer (a peer hangs) aborts the job with a message saying so.

With more than one rank, ``init`` also tells glibc to keep freed memory for reuse (see
``_keep_freed_memory``: MPI's large collectives run twice as fast here; opt out with
``NNX_DISTRIBUTED_MALLOC=0``).
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

from . import _config
from .errors import DeviceError, DTypeError

__all__ = ["init", "init_process_group", "is_initialized", "is_available", "rank", "get_rank",
           "world_size", "get_world_size", "local_rank", "backend", "get_backend", "barrier",
           "all_reduce", "broadcast", "all_gather_objects", "all_reduce_floats",
           "destroy_process_group", "finalize", "launcher_world"]

_OPS = ("sum", "mean")
_world = None  # the _World that init() made

# rank, size, local rank: the environment variables launchers set, in the order checked.
_LAUNCHERS = (
    ("Open MPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("MPICH/Intel MPI (PMI)", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
    ("PMIx", "PMIX_RANK", "PMIX_SIZE", "PMIX_LOCAL_RANK"),
    ("Slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
)


def launcher_world(environ=None):
    """``(rank, size, local_rank, launcher name)`` from the variables an MPI launcher or Slurm
    sets, or None outside one. Nothing is imported; ``init`` still asks MPI itself."""
    env = os.environ if environ is None else environ
    for name, r, s, lr in _LAUNCHERS:
        if r in env:
            try:
                rk = int(env[r])
                size = int(env.get(s, "1") or 1)
                local = int(env.get(lr, "") or (rk if name != "Slurm" else 0))
            except ValueError:
                continue
            return rk, size, local, name
    return None


class _World:
    """The processes of this job: this one's rank, their number, and the communicators."""

    def __init__(self, backend, rank, size, local_rank, comm=None, nccl=None, cuda_aware=False,
                 timeout=None):
        self.backend, self.rank, self.size, self.local_rank = backend, rank, size, local_rank
        self.comm, self.nccl, self.cuda_aware, self.timeout = comm, nccl, cuda_aware, timeout


def _import_mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(f"nnx.distributed: the MPI backend needs mpi4py and an MPI library "
                          f"(pip install nnx[mpi], which brings mpi4py and the mpich wheel with "
                          f"mpiexec): {e}") from None
    return MPI


def _cuda_usable():
    try:
        from . import backends

        return bool(backends.cuda_available())
    except Exception:  # noqa: BLE001 - no CuPy, no driver: no CUDA
        return False


def _mpi_cuda_aware(MPI):
    flag = os.environ.get("MPIX_CUDA_AWARE_SUPPORT") or os.environ.get("NNX_MPI_CUDA_AWARE")
    if flag is not None:
        return flag.strip().lower() in ("1", "true", "yes")
    query = getattr(MPI, "Query_cuda_support", None)  # mpi4py >= 4 on a library that has it
    if query is not None:
        try:
            return bool(query())
        except Exception:  # noqa: BLE001
            return False
    return False


def init(backend="auto", timeout=None):
    """Join the job's world (``torch.distributed.init_process_group``'s role); returns nothing.

    Args:
        backend: ``"auto"`` (default), ``"mpi"`` or ``"nccl"`` (see the module docstring).
        timeout: seconds a host collective may wait for the other ranks before this rank
            aborts the whole job (MPI only); None (default): wait as long as it takes.

    Calling it again with the same backend does nothing. Raises ImportError naming ``pip
    install nnx[mpi]`` when MPI is needed and ``mpi4py`` is missing, DeviceError for
    ``"nccl"`` without a usable CUDA device.
    """
    global _world
    if backend not in ("auto", "mpi", "nccl"):
        raise ValueError(f"nnx.distributed.init: backend must be 'auto', 'mpi' or 'nccl', got "
                         f"{backend!r}")
    if timeout is not None and not float(timeout) > 0:
        raise ValueError(f"nnx.distributed.init: timeout must be a positive number of seconds, "
                         f"got {timeout!r}")
    if _world is not None:
        if backend in ("auto", _world.backend):
            return
        raise RuntimeError(f"nnx.distributed.init({backend!r}): already initialized with the "
                           f"{_world.backend!r} backend; call destroy_process_group() first")
    env = launcher_world()
    if backend == "auto":
        if env is None:
            _world = _World("single", 0, 1, 0)
            return
        if env[1] == 1 and not is_available():  # mpiexec -n 1 without mpi4py: nothing to join
            _world = _World("single", 0, 1, env[2])
            return
        backend = "nccl" if _cuda_usable() else "mpi"
    comm = None
    rk, size, local = 0, 1, (env[2] if env else 0)
    cuda_aware = False
    if backend == "mpi" or env is not None:
        MPI = _import_mpi()
        comm = MPI.COMM_WORLD
        rk, size = comm.Get_rank(), comm.Get_size()
        cuda_aware = _mpi_cuda_aware(MPI)
    nccl = _nccl_world(rk, size, local, comm) if backend == "nccl" else None
    world = _World(backend, rk, size, local, comm, nccl, cuda_aware,
                   None if timeout is None else float(timeout))
    _world = world
    if size > 1:
        _install_abort_hook(world)
        _keep_freed_memory()


def _keep_freed_memory():
    """glibc: serve every allocation from the heap and keep freed memory (``mallopt``).

    MPI's large collectives allocate and free temporaries of the message's size on every
    call; glibc maps such blocks fresh each time (``mmap`` above 32 MB at most) and the first
    touch of every page faults. On this project's 2-core VM that doubled the time of an 84 MB
    allreduce (50 ms against 24 ms on an idle host, ``benchmarks/NOTES.md``). Set
    ``NNX_DISTRIBUTED_MALLOC=0`` to leave glibc's defaults; elsewhere than glibc nothing happens.
    """
    if os.environ.get("NNX_DISTRIBUTED_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
        libc.mallopt(M_MMAP_MAX, 0)
        libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1)
    except (OSError, AttributeError):  # not glibc
        pass


init_process_group = init


def _nccl_world(rk, size, local, comm):
    """The NCCL communicator of this rank on GPU ``local`` (the id broadcast over MPI)."""
    if not _cuda_usable():
        raise DeviceError("nnx.distributed.init('nccl'): no usable CUDA device (NCCL works on "
                          "CuPy arrays on a GPU); use backend='mpi' on the CPU")
    try:
        import cupy
        from cupy.cuda import nccl
        if not getattr(nccl, "available", True):  # CuPy found no libnccl
            raise ImportError("libnccl could not be loaded")
    except ImportError as e:
        raise ImportError(f"nnx.distributed.init('nccl'): CuPy's NCCL binding is missing (pip "
                          f"install nnx[nccl], which brings the nvidia-nccl-cu13 wheel): "
                          f"{e}") from None
    ndev = cupy.cuda.runtime.getDeviceCount()
    dev = local % ndev
    cupy.cuda.Device(dev).use()
    _config.set_device(f"cuda:{dev}")
    uid = nccl.get_unique_id() if rk == 0 else None
    if comm is not None and size > 1:
        uid = comm.bcast(uid, root=0)
    return _Nccl(nccl, nccl.NcclCommunicator(size, uid, rk), cupy)


class _Nccl:
    """NCCL collectives on CuPy arrays, in place on the current stream."""

    _DTYPES = {"float16": "NCCL_FLOAT16", "float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64",
               "int8": "NCCL_INT8", "uint8": "NCCL_UINT8", "int32": "NCCL_INT32",
               "int64": "NCCL_INT64"}

    def __init__(self, nccl, comm, cupy):
        self.nccl, self.comm, self.cupy = nccl, comm, cupy

    def dtype(self, dt):
        name = self._DTYPES.get(np.dtype(dt).name)
        if name is None:
            raise DTypeError(f"nnx.distributed: NCCL cannot reduce dtype {np.dtype(dt)}")
        return getattr(self.nccl, name)

    def stream(self):
        return self.cupy.cuda.get_current_stream().ptr

    def all_reduce(self, arr):
        ptr = arr.data.ptr
        self.comm.allReduce(ptr, ptr, arr.size, self.dtype(arr.dtype), self.nccl.NCCL_SUM,
                            self.stream())

    def broadcast(self, arr, src):
        self.comm.bcast(arr.data.ptr, arr.size, self.dtype(arr.dtype), src, self.stream())

    def close(self):
        destroy = getattr(self.comm, "destroy", None)
        if destroy is not None:
            destroy()


def _install_abort_hook(world):
    """An uncaught exception on one rank aborts them all (else the others wait forever)."""
    previous = sys.excepthook

    def hook(kind, value, tb):
        previous(kind, value, tb)
        if _world is world:
            sys.stderr.write(f"nnx.distributed: rank {world.rank} of {world.size} stopped on "
                             f"{kind.__name__}; aborting all ranks (MPI_Abort)\n")
            sys.stderr.flush()
            world.comm.Abort(1)

    sys.excepthook = hook


def destroy_process_group():
    """Leave the world: later calls see a world of one again (``init`` may be called anew)."""
    global _world
    w, _world = _world, None
    if w is not None and w.nccl is not None:
        w.nccl.close()


finalize = destroy_process_group


def is_available():
    """Whether mpi4py can be imported (the MPI backend can be used)."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return True


def is_initialized():
    """Whether ``init`` has run (a world of one made by ``init`` counts)."""
    return _world is not None


def rank():
    """This process's rank in ``0 .. world_size() - 1``; 0 before ``init``."""
    return 0 if _world is None else _world.rank


def world_size():
    """The number of processes; 1 before ``init``."""
    return 1 if _world is None else _world.size


def local_rank():
    """This process's rank among those on its machine (which GPU it uses); before ``init``,
    what the launcher's environment says, else 0."""
    if _world is not None:
        return _world.local_rank
    env = launcher_world()
    return 0 if env is None else env[2]


def backend():
    """``"mpi"``, ``"nccl"``, ``"single"`` (``init`` outside a launcher) or None before ``init``."""
    return None if _world is None else _world.backend


get_rank, get_world_size, get_backend = rank, world_size, backend


def _world_comm():
    return None if _world is None or _world.size == 1 else _world


def barrier():
    """Wait until every rank gets here (with NCCL, also until this GPU's work is done)."""
    w = _world
    if w is None:
        return
    if w.nccl is not None:
        w.nccl.cupy.cuda.get_current_stream().synchronize()
    if w.comm is not None and w.size > 1:
        _wait(w, w.comm.Ibarrier(), "barrier") if w.timeout else w.comm.Barrier()


def _check_op(op):
    if op not in _OPS:
        raise ValueError(f"nnx.distributed.all_reduce: op must be 'sum' or 'mean', got {op!r}")


def _array_of(obj, what):
    """``(array, backend-kind)`` of a Tensor, NumPy or CuPy array; ``kind`` is "host"/"cuda"."""
    arr = getattr(obj, "data", None) if hasattr(obj, "_backend") else obj
    if isinstance(arr, np.ndarray):
        return arr, "host"
    if hasattr(arr, "__cuda_array_interface__"):
        return arr, "cuda"
    raise TypeError(f"nnx.distributed.{what}: expected an nnx Tensor, a NumPy or a CuPy array, "
                    f"got {type(obj).__name__}")


def all_reduce(tensor, op="sum"):
    """Reduce ``tensor`` over all ranks, in place: ``"sum"`` (default) or ``"mean"``.

    ``tensor``: an nnx Tensor, a NumPy or a CuPy array, of the same shape and dtype on every
    rank. Every rank ends with the same values. ``"mean"`` needs a floating dtype. Returns
    ``tensor``. In a world of one the values stay as they are.
    """
    _check_op(op)
    arr, kind = _array_of(tensor, "all_reduce")
    if op == "mean" and arr.dtype.kind != "f":
        raise DTypeError(f"nnx.distributed.all_reduce(op='mean') needs a floating array, got "
                         f"dtype {arr.dtype}")
    w = _world_comm()
    if w is None:
        return tensor
    _reduce_array(w, arr, kind)
    if op == "mean":
        arr /= w.size
    return tensor


def broadcast(tensor, src=0):
    """Copy rank ``src``'s values of ``tensor`` (Tensor, NumPy or CuPy array, same shape and
    dtype on every rank) into every rank's, in place. Returns ``tensor``."""
    arr, kind = _array_of(tensor, "broadcast")
    w = _world_comm()
    if not 0 <= int(src) < world_size():
        raise ValueError(f"nnx.distributed.broadcast: src={src} is not a rank of a world of "
                         f"{world_size()}")
    if w is None:
        return tensor
    if kind == "cuda" and w.nccl is not None:
        _on_contiguous(arr, kind, lambda a: w.nccl.broadcast(a, int(src)))
        return tensor
    _host_collective(w, arr, kind, lambda buf: _mpi_bcast(w, buf, int(src)))
    return tensor


def _is_contig(arr):
    return bool(arr.flags.c_contiguous)


def _on_contiguous(arr, kind, fn):
    """``fn(arr)`` when ``arr`` is C-contiguous, else on a contiguous copy written back."""
    if _is_contig(arr):
        fn(arr)
        return
    xp = np if kind == "host" else sys.modules["cupy"]
    buf = xp.ascontiguousarray(arr)
    fn(buf)
    arr[...] = buf


def _reduce_array(w, arr, kind):
    if kind == "cuda" and w.nccl is not None:
        _on_contiguous(arr, kind, w.nccl.all_reduce)
        return
    _host_collective(w, arr, kind, lambda buf: _mpi_allreduce(w, buf))


def _host_collective(w, arr, kind, fn):
    """``fn(contiguous buffer)`` with MPI on ``arr``: NumPy in place, CuPy through a host copy
    (or directly where MPI is CUDA-aware); float16 travels as float32 (MPI has no half)."""
    if kind == "cuda" and w.cuda_aware and arr.dtype != np.float16:
        sys.modules["cupy"].cuda.get_current_stream().synchronize()
        _on_contiguous(arr, kind, fn)
        return
    if kind == "cuda":
        host = arr.get()
    elif arr.dtype == np.float16 or not _is_contig(arr):
        host = np.array(arr, order="C")
    else:
        fn(arr)
        return
    if host.dtype == np.float16:
        wide = host.astype(np.float32)
        fn(wide)
        host = wide.astype(np.float16)
    else:
        fn(host)
    if kind == "cuda":
        arr.set(host) if _is_contig(arr) else arr.__setitem__(Ellipsis, host)
    else:
        arr[...] = host


def _mpi_allreduce(w, buf):
    MPI = sys.modules["mpi4py.MPI"]
    if w.timeout:
        _wait(w, w.comm.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM), "all_reduce")
    else:
        w.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)


def _mpi_bcast(w, buf, src):
    if w.timeout:
        _wait(w, w.comm.Ibcast(buf, root=src), "broadcast")
    else:
        w.comm.Bcast(buf, root=src)


def _wait(w, req, what):
    """Poll a nonblocking collective; abort the job when it takes longer than the timeout."""
    deadline = time.monotonic() + w.timeout
    pause = 1e-5
    while not req.Test():
        if time.monotonic() > deadline:
            sys.stderr.write(f"nnx.distributed: rank {w.rank} of {w.size}: {what} waited more "
                             f"than {w.timeout:g} s for the other ranks (one died or hangs); "
                             f"aborting all ranks (MPI_Abort)\n")
            sys.stderr.flush()
            # give the launcher a moment to forward the message: MPI_Abort kills the job at
            # once, and output still in flight was seen lost on a loaded machine
            time.sleep(0.5)
            w.comm.Abort(1)
        time.sleep(pause)
        pause = min(pause * 2, 1e-3)


def all_gather_objects(obj):
    """A list of every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a world of one."""
    w = _world_comm()
    if w is None:
        return [obj]
    return w.comm.allgather(obj)


def all_reduce_floats(values, op="sum"):
    """``values`` (floats, one array or sequence) summed or averaged over the ranks: a new
    float64 NumPy array, the same on every rank."""
    _check_op(op)
    out = np.array(values, dtype=np.float64, copy=True).reshape(-1)
    return all_reduce(out, op)
