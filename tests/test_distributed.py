"""nnx.distributed, nn.parallel.DistributedDataParallel, DistributedSampler, data-parallel fit.

The multi-process checks start ``mpiexec -n 2`` on the scripts in ``tests/mpi_scripts/`` (each
batches several checks, as MPI startup costs about a second) with a timeout, so a hung rank
fails the test instead of hanging CI. They skip, with the reason, where mpiexec or mpi4py is
missing. The rest runs in this process: a world of one, the sampler's sharding against
PyTorch's, the errors, and NCCL's plumbing on a recording communicator.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

import nnx
import nnx.distributed as dist
from nnx import nn, optim
from nnx.data import DataLoader, DistributedSampler

SCRIPTS = Path(__file__).resolve().parent / "mpi_scripts"
ROOT = SCRIPTS.parent.parent
LAUNCH_ENV = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID")


def _mpiexec():
    here = Path(sys.executable).parent / "mpiexec"
    if here.exists():
        return str(here)
    return shutil.which("mpiexec") or shutil.which("mpirun")


def _needs_mpi():
    if _mpiexec() is None:
        pytest.skip("no mpiexec next to the Python executable or on PATH (pip install nnx[mpi])")
    pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install nnx[mpi])")


def _launch(args, timeout=60, n=2):
    """``mpiexec -n n`` on ``args``: (CompletedProcess, seconds). A run past ``timeout`` fails."""
    _needs_mpi()
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = "1"
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([_mpiexec(), "-n", str(n), *args], capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{args} under mpiexec did not end within {timeout} s (a hung rank?):\n"
                    f"{e.stdout}\n{e.stderr}")
    return proc, time.perf_counter() - t0


def _script(name, *args, timeout=60):
    return _launch([sys.executable, str(SCRIPTS / name), *args], timeout=timeout)


@pytest.fixture
def world():
    """A clean state before and after: no world initialized."""
    dist.destroy_process_group()
    yield
    dist.destroy_process_group()


# ----------------------------------------------------------------------------- under mpiexec
def test_two_ranks_train_as_one_process_and_stay_identical():
    proc, _ = _script("ddp_checks.py")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    for check in ("equivalence-float64-sgd", "equivalence-float64-adam", "equivalence-float32-sgd",
                  "equivalence-float32-adam", "packed-gradients", "unused-parameters",
                  "shape-mismatch", "sampler", "collectives"):
        assert f"CHECK {check} OK" in proc.stdout, out
    assert "FAIL" not in out


def test_keras_fit_two_ranks_matches_and_prints_once(tmp_path):
    proc, _ = _script("keras_fit.py", str(tmp_path))
    printed = {p.name: p.read_text() for p in tmp_path.glob("std*-?.txt")}
    out = proc.stdout + proc.stderr + str(printed)
    assert proc.returncode == 0, out
    assert "CHECK keras-fit OK" in proc.stdout and "CHECK keras-nan OK" in proc.stdout, out
    assert printed["stdout-1.txt"] == printed["stderr-1.txt"] == "", out  # rank 1: silent
    for e in (1, 2, 3):  # a callback's print and the progress bar, on rank 0
        assert printed["stdout-0.txt"].count(f"MARK epoch {e} ") == 1, out
        assert f"Epoch {e}/3: 100%" in printed["stderr-0.txt"], out
    assert printed["stderr-0.txt"].count("the loss became NaN") == 1, out
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == ["ckpt-1.npz", "ckpt-2.npz",
                                                               "ckpt-3.npz"]


@pytest.mark.parametrize("mode", ["exit", "kill", "raise", "hang"])
def test_a_failing_rank_ends_the_job(mode):
    proc, seconds = _script("faults.py", mode, timeout=40)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert seconds < 30, f"the job took {seconds:.1f} s to end"
    assert "rank 1 fails at step 3" in out, out
    assert "finished all steps" not in out, out  # rank 0 was stopped, not left to finish
    if mode == "exit":  # the launcher ends the job with the dead rank's status
        assert proc.returncode == 3, out
    elif mode == "kill":
        assert "BAD TERMINATION" in out or "signal 9" in out.lower(), out
    elif mode == "raise":
        assert "RuntimeError: rank 1 broke on purpose" in out, out
        assert "nnx.distributed: rank 1 of 2 stopped on RuntimeError; aborting all ranks" in out
    else:
        assert "nnx.distributed: rank 0 of 2: all_reduce waited more than 2 s" in out, out


def test_cli_train_distributed_prints_once():
    proc, _ = _launch([sys.executable, "-m", "nnx", "train", "digits", "--distributed",
                       "--epochs", "2", "--quiet"], timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert proc.stdout.count("nnx.distributed: 2 ranks (mpi), 16 rows per rank and step") == 1
    assert proc.stdout.count("test accuracy:") == 1, out
    acc = float(proc.stdout.split("test accuracy:")[1].split()[0])
    assert acc > 0.8, out


def test_scaling_benchmark_runs(tmp_path):
    _needs_mpi()
    pytest.importorskip("threadpoolctl")
    out = tmp_path / "scaling.json"
    proc = subprocess.run([sys.executable, "-m", "nnx.benchmarks.distributed", "--workloads", "A",
                           "--steps", "3", "--out", str(out)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (row,) = json.loads(out.read_text())["results"]
    assert row["workload"] == "A" and row["two_ranks"]["ranks"] == 2
    assert row["one_rank"]["comm_s"] == 0.0 < row["two_ranks"]["comm_s"]
    assert 0 < row["efficiency"] and "efficiency" in proc.stdout


# ----------------------------------------------------------------------------- a world of one
def test_world_of_one_outside_a_launcher(world, monkeypatch):
    for k in LAUNCH_ENV:
        monkeypatch.delenv(k, raising=False)
    assert not dist.is_initialized() and dist.rank() == 0 and dist.world_size() == 1
    assert dist.backend() is None and dist.local_rank() == 0
    a = np.arange(4.0)
    assert dist.all_reduce(a) is a and (a == np.arange(4.0)).all()  # before init: works too
    dist.init()
    assert dist.is_initialized() and dist.backend() == "single"
    t = nnx.tensor([1.0, 2.0])
    assert dist.all_reduce(t, op="mean") is t and t.data.tolist() == [1.0, 2.0]
    assert dist.broadcast(t, src=0) is t
    dist.barrier()
    dist.init()  # again: nothing happens
    with pytest.raises(ValueError, match="src=1 is not a rank of a world of 1"):
        dist.broadcast(t, src=1)


def test_auto_outside_a_launcher_does_not_import_mpi(world):
    code = ("import sys, nnx, nnx.distributed as d; d.init(); "
            "print(d.backend(), 'mpi4py' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env=env, cwd=ROOT)
    assert out.stdout.split() == ["single", "False"], out.stderr


def test_ddp_in_a_world_of_one_is_exactly_no_ddp(world):
    x = np.random.default_rng(0).standard_normal((16, 5)).astype(np.float32)
    y = np.random.default_rng(1).standard_normal((16, 2)).astype(np.float32)

    def run(wrap):
        nnx.manual_seed(3)
        net = nn.container.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))
        model = nn.parallel.DistributedDataParallel(net) if wrap else net
        opt = optim.Adam(model.parameters(), lr=0.01)
        for _ in range(5):
            loss = nn.MSELoss()(model(nnx.tensor(x)), nnx.tensor(y))
            opt.zero_grad()
            loss.backward()
            opt.step()
        return model, [np.array(p.data) for p in net.parameters()]

    ddp, with_ddp = run(True)
    _, without = run(False)
    assert all(np.array_equal(a, b) for a, b in zip(with_ddp, without))
    assert list(ddp.state_dict()) == ["module.0.weight", "module.0.bias", "module.2.weight",
                                      "module.2.bias"]  # as PyTorch's DDP
    assert isinstance(ddp.module, nn.container.Sequential)
    assert nnx.distributed.DDP is nn.parallel.DistributedDataParallel
    with ddp.no_sync():
        ddp(nnx.tensor(x)).sum().backward()


def test_ddp_rejects_a_non_module():
    with pytest.raises(TypeError, match="expected an nnx Module, got list"):
        nn.parallel.DistributedDataParallel([1, 2])


# ----------------------------------------------------------------------------- errors
def test_init_mpi_without_mpi4py_says_what_to_install(world, monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now raises ImportError
    with pytest.raises(ImportError, match=r"pip install nnx\[mpi\]"):
        dist.init("mpi")
    assert not dist.is_initialized()


def test_init_nccl_without_a_gpu(world):
    if nnx.cuda_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(nnx.DeviceError, match="no usable CUDA device"):
        dist.init("nccl")


def test_bad_arguments(world):
    with pytest.raises(ValueError, match="backend must be 'auto', 'mpi' or 'nccl', got 'gloo'"):
        dist.init("gloo")
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        dist.init(timeout=0)
    with pytest.raises(ValueError, match="op must be 'sum' or 'mean', got 'max'"):
        dist.all_reduce(np.ones(2), op="max")
    with pytest.raises(TypeError, match="expected an nnx Tensor, a NumPy or a CuPy array, got "
                                        "list"):
        dist.all_reduce([1.0, 2.0])
    with pytest.raises(nnx.DTypeError, match="needs a floating array, got dtype int64"):
        dist.all_reduce(np.ones(2, np.int64), op="mean")


def test_launcher_world_reads_each_launcher():
    assert dist.launcher_world({}) is None
    assert dist.launcher_world({"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "8",
                                "OMPI_COMM_WORLD_LOCAL_RANK": "1"}) == (3, 8, 1, "Open MPI")
    assert dist.launcher_world({"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "1"})[:3] \
        == (1, 2, 1)
    assert dist.launcher_world({"SLURM_PROCID": "5", "SLURM_NTASKS": "6",
                                "SLURM_LOCALID": "2"}) == (5, 6, 2, "Slurm")


# ----------------------------------------------------------------------------- the sampler
@pytest.mark.parametrize("n", [1, 7, 10, 103])
@pytest.mark.parametrize("replicas", [1, 2, 3, 4])
@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_shards_as_pytorch(n, replicas, drop_last):
    torch_data = pytest.importorskip("torch.utils.data")
    if drop_last and n < replicas:
        pytest.skip("PyTorch gives every rank nothing")
    for r in range(replicas):
        ours = DistributedSampler(range(n), replicas, r, shuffle=False, drop_last=drop_last)
        theirs = torch_data.DistributedSampler(range(n), replicas, r, shuffle=False,
                                               drop_last=drop_last)
        assert list(ours) == list(theirs) and len(ours) == len(theirs)


@pytest.mark.parametrize("n,replicas", [(10, 2), (103, 3), (64, 4)])
def test_sampler_shuffles_alike_on_every_rank(n, replicas):
    def shards(epoch):
        out = []
        for r in range(replicas):
            s = DistributedSampler(range(n), num_replicas=replicas, rank=r, seed=11)
            s.set_epoch(epoch)
            out.append(list(s))
        return out

    e0, e1 = shards(0), shards(1)
    for sh in (e0, e1):
        assert len({len(s) for s in sh}) == 1
        flat = [i for s in sh for i in s]
        assert set(flat) == set(range(n))  # covering
        assert len(flat) - len(set(flat)) == -n % replicas  # disjoint but for the padding
    assert e0 != e1  # set_epoch reshuffles
    assert shards(1) == e1  # ... and every rank (sampler) draws the same permutation


def test_dataloader_follows_its_sampler():
    x = np.arange(10, dtype=np.float32)
    s = DistributedSampler(x, num_replicas=3, rank=2, shuffle=False)
    loader = DataLoader((x,), batch_size=2, sampler=s)
    assert len(loader) == 2
    assert [b[0].data.tolist() for b in loader] == [[2.0, 5.0], [8.0, 1.0]]
    with pytest.raises(ValueError, match="mutually exclusive with shuffle"):
        DataLoader((x,), batch_size=2, sampler=s, shuffle=True)
    with pytest.raises(TypeError, match="sampler must be an iterable of indices"):
        DataLoader((x,), batch_size=2, sampler=3)
    with pytest.raises(ValueError, match=r"invalid rank 3, rank should be in the interval "
                                         r"\[0, 2\]"):
        DistributedSampler(x, num_replicas=3, rank=3)


# ----------------------------------------------------------------------------- NCCL
class _RecordingNccl:
    """Stands in for ``cupy.cuda.nccl``: dtype codes, and a communicator that records each call
    and reduces a world of one (the data stays as it is) on host memory at the given address."""
    NCCL_FLOAT16, NCCL_FLOAT32, NCCL_FLOAT64, NCCL_INT8, NCCL_UINT8, NCCL_INT32, NCCL_INT64 = \
        range(7)
    NCCL_SUM = 0

    def __init__(self):
        self.calls = []
        outer = self

        class Comm:
            def allReduce(self, send, recv, count, dtype, op, stream):
                outer.calls.append(("allReduce", send, recv, count, dtype, op, stream))

            def bcast(self, buff, count, dtype, root, stream):
                outer.calls.append(("bcast", buff, count, dtype, root, stream))

        self.comm = Comm()


class _DeviceArray:
    """A host array dressed as a CuPy one (``.data.ptr``, ``__cuda_array_interface__``)."""

    def __init__(self, a):
        self.a = a
        self.data = types.SimpleNamespace(ptr=a.ctypes.data)
        self.size, self.dtype, self.flags, self.shape = a.size, a.dtype, a.flags, a.shape

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.data.ptr, False),
                "version": 3}

    def __itruediv__(self, k):
        self.a /= k
        return self


def test_nccl_collectives_reach_the_communicator_in_place(world):
    rec = _RecordingNccl()
    fake_cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(
        get_current_stream=lambda: types.SimpleNamespace(ptr=42, synchronize=lambda: None)))
    dist._world = dist._World("nccl", 0, 2, 0, comm=None,
                              nccl=dist._Nccl(rec, rec.comm, fake_cupy))
    arr = _DeviceArray(np.full(6, 4.0, np.float32))
    assert dist.all_reduce(arr, op="mean") is arr
    assert rec.calls == [("allReduce", arr.data.ptr, arr.data.ptr, 6, rec.NCCL_FLOAT32,
                          rec.NCCL_SUM, 42)]
    assert arr.a.tolist() == [2.0] * 6  # the sum (here: this rank's values) over 2 ranks
    ints = _DeviceArray(np.zeros(3, np.int64))
    dist.broadcast(ints, src=1)
    assert rec.calls[-1] == ("bcast", ints.data.ptr, 3, rec.NCCL_INT64, 1, 42)
    with pytest.raises(nnx.DTypeError, match="NCCL cannot reduce dtype bool"):
        dist.all_reduce(_DeviceArray(np.zeros(2, bool)))


@pytest.mark.gpu
def test_nccl_world_of_one_on_the_gpu(world):
    if not nnx.cuda_available():
        pytest.skip("needs a CUDA device (NCCL through CuPy)")
    import cupy
    import cupy.cuda.nccl as nccl

    if not nccl.available:
        pytest.skip("CuPy finds no libnccl (pip install nnx[nccl])")
    dist.init("nccl")
    assert dist.backend() == "nccl" and dist.world_size() == 1
    a = cupy.arange(5, dtype=cupy.float32)
    dist.all_reduce(a)
    dist._world.nccl.all_reduce(a)  # the NCCL call itself (a world of one skips it above)
    b = cupy.full(3, 7, dtype=cupy.int64)
    dist._world.nccl.broadcast(b, 0)
    cupy.cuda.get_current_stream().synchronize()
    assert cupy.asnumpy(a).tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert cupy.asnumpy(b).tolist() == [7, 7, 7]
    nnx.manual_seed(0)
    x = nnx.randn(8, 4, device="cuda")
    nets = []
    for wrap in (True, False):
        nnx.manual_seed(1)
        net = nn.Linear(4, 3).to("cuda")
        model = nn.parallel.DistributedDataParallel(net) if wrap else net
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        loss = model(x).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        nets.append(cupy.asnumpy(net.weight.data))
    assert np.array_equal(nets[0], nets[1])
