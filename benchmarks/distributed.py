"""Weak scaling of data-parallel training (``nnx.distributed`` + ``DistributedDataParallel``).

``python -m nnx.benchmarks.distributed [--workloads C B] [--steps N] [--out FILE]`` runs each
workload (``benchmarks/workloads.py``) at its own batch *per rank* on 1 rank and on 2 ranks
(``mpiexec -n 1`` / ``-n 2``, one BLAS thread per rank), in the same run, and reports the time
per step, the weak-scaling efficiency ``t(1 rank) / t(2 ranks)`` and the share of the 2-rank
step spent averaging gradients (the allreduce of the optimizer's flat gradient buffer, timed
inside the backward-end hook), plus the allreduce of that buffer alone (no compute beside it).

Each configuration runs in its own ``mpiexec`` (the worker: ``--worker KEY``); rank 0 prints
one JSON line. Results go to ``--out`` (JSON) and a table to stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_STEPS = {"C": 8, "B": 150}
WARMUP = {"C": 2, "B": 20}


def _probe_worker():
    """The overlap probe alone (no training), on a gradient-sized buffer."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")
    import nnx.distributed as dist

    dist.init("mpi")
    res = _overlap_probe(dist, np.ones(21_020_682, np.float32))
    if dist.rank() == 0:
        print("RESULT " + json.dumps(res), flush=True)


def _worker(key, steps, reduce=True):
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")
    import nnx
    import nnx.distributed as dist
    from nnx import nn, optim
    from nnx.nn import parallel

    from . import workloads

    dist.init("mpi")
    w = workloads.get(key)
    model = workloads.build_model(nn, w)
    model.load_state_dict({k: v for k, v in workloads.init_params(w).items()})
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = workloads.build_optimizer(optim, w, ddp.parameters())
    lossf = workloads.build_loss(nn, w)
    batches = [(nnx.tensor(x), nnx.tensor(y)) for x, y in
               workloads.make_batches(w, seed=1 + dist.rank(), n=2)]
    comm = []
    average = parallel.average_gradients

    def timed(params, find_unused=False):
        t0 = time.perf_counter()
        if reduce:
            average(params, find_unused)
        comm.append(time.perf_counter() - t0)

    parallel.average_gradients = timed
    times, cpu = [], []
    for i in range(WARMUP.get(key, 2) + steps):
        xb, yb = batches[i % 2]
        dist.barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        loss = lossf(ddp(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    skip = WARMUP.get(key, 2)
    times, cpu, comm = times[skip:], cpu[skip:], comm[skip:] if comm else []
    n_params = sum(int(p.data.size) for p in model.parameters())
    alone = []
    flat = opt._flats[0][0].grad
    if dist.world_size() > 1 and reduce:  # the same allreduce with nothing else running
        for _ in range(5):
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(flat, "mean")
            alone.append(time.perf_counter() - t0)
    out = {"workload": key, "ranks": dist.world_size(), "reduce": reduce,
           "batch_per_rank": w.batch,
           "params": n_params, "grad_mb": n_params * 4 / 1e6, "steps": steps,
           "step_s": float(np.median(times)), "step_min_s": float(np.min(times)),
           "step_cpu_s": float(np.median(cpu)), "loadavg_1min": os.getloadavg()[0],
           "comm_s": float(np.median(comm)) if comm else 0.0,
           "allreduce_alone_s": float(np.median(alone)) if alone else 0.0}
    if dist.world_size() > 1 and reduce and key == "C":
        out["overlap_probe"] = _overlap_probe(dist, flat)
    every = dist.all_gather_objects(out["step_s"])
    out["step_s_per_rank"] = every
    if dist.rank() == 0:
        print("RESULT " + json.dumps(out), flush=True)


def _overlap_probe(dist, flat):
    """What overlapping the allreduce with backward could buy: the 4096x4096 layer's gradient
    (16.8 M floats, what DDP's first bucket would hold) reduced with a nonblocking allreduce
    while this rank computes the first layer's weight gradient (a (4096, 512) x (512, 1024)
    GEMM), against the two one after the other. MPICH progresses a nonblocking collective
    inside MPI calls (or on its own thread with MPIR_CVAR_ASYNC_PROGRESS=1)."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    bucket = flat[:4096 * 4096]
    rng = np.random.default_rng(0)
    g = rng.standard_normal((4096, 512), dtype=np.float32)
    x = rng.standard_normal((512, 1024), dtype=np.float32)
    out = np.empty((4096, 1024), np.float32)

    def gemm():
        np.matmul(g, x, out=out)

    def reduce():
        comm.Allreduce(MPI.IN_PLACE, bucket)

    def overlapped():
        req = comm.Iallreduce(MPI.IN_PLACE, bucket)
        # backward would poll between ops: one Test per 8 column blocks of the GEMM
        for j in range(0, 1024, 128):
            np.matmul(g, x[:, j:j + 128], out=out[:, j:j + 128])
            req.Test()
        req.Wait()

    res = {}
    for name, fn in (("gemm_s", gemm), ("allreduce_s", reduce), ("overlapped_s", overlapped)):
        ts = []
        for _ in range(4):
            comm.Barrier()
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        res[name] = float(np.median(ts[1:]))
    res["serial_s"] = res["gemm_s"] + res["allreduce_s"]
    res["saved_share"] = 1.0 - res["overlapped_s"] / res["serial_s"]
    res["async_progress"] = os.environ.get("MPIR_CVAR_ASYNC_PROGRESS", "0")
    return res


def _mpiexec():
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


def run_config(key, ranks, steps, no_reduce=False, **extra_env):
    """One configuration under ``mpiexec -n ranks``: the worker's result dict."""
    exe = _mpiexec()
    if exe is None:
        raise SystemExit("mpiexec not found (pip install nnx[mpi])")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               **extra_env)
    cmd = [exe, "-n", str(ranks), sys.executable, "-m", "nnx.benchmarks.distributed",
           "--worker", key, "--steps", str(steps)] + (["--no-reduce"] if no_reduce else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m nnx.benchmarks.distributed",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", nargs="+", default=["C", "B"])
    p.add_argument("--steps", type=int, help="timed steps per configuration")
    p.add_argument("--out", help="write the results (JSON) here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--no-reduce", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker == "probe":
        _probe_worker()
        return 0
    if a.worker:
        _worker(a.worker, a.steps or DEFAULT_STEPS.get(a.worker, 20), not a.no_reduce)
        return 0
    rows = []
    for key in a.workloads:
        steps = a.steps or DEFAULT_STEPS.get(key, 20)
        one = run_config(key, 1, steps)
        two = run_config(key, 2, steps)
        # the same 2 ranks with the gradient averaging skipped: what running two processes on
        # this host costs by itself (cores, memory bandwidth, neighbours), apart from nnx's
        # communication
        silent = run_config(key, 2, steps, no_reduce=True)
        eff = one["step_s"] / two["step_s"]
        rows.append({"workload": key, "one_rank": one, "two_ranks": two,
                     "two_ranks_no_allreduce": silent,
                     "efficiency": eff, "comm_share": two["comm_s"] / two["step_s"],
                     "host_factor": one["step_s"] / silent["step_s"],
                     "communication_factor": silent["step_s"] / two["step_s"],
                     "cpu_efficiency": one["step_cpu_s"] / two["step_cpu_s"],
                     "efficiency_of_fastest_steps": one["step_min_s"] / two["step_min_s"]})
        print(f"{key}: batch {one['batch_per_rank']}/rank, {one['params']:,} params "
              f"({one['grad_mb']:.1f} MB float32 gradients): 1 rank {one['step_s'] * 1e3:.1f} "
              f"ms/step, 2 ranks {two['step_s'] * 1e3:.1f} ms/step -> efficiency {eff:.1%}; "
              f"allreduce {two['comm_s'] * 1e3:.2f} ms/step = {rows[-1]['comm_share']:.1%} of "
              f"the step (alone: {two['allreduce_alone_s'] * 1e3:.2f} ms); CPU time per step "
              f"{one['step_cpu_s'] * 1e3:.1f} / {two['step_cpu_s'] * 1e3:.1f} ms; load average "
              f"{one['loadavg_1min']:.1f} / {two['loadavg_1min']:.1f}; fastest steps "
              f"{one['step_min_s'] * 1e3:.1f} / {two['step_min_s'] * 1e3:.1f} ms -> "
              f"{rows[-1]['efficiency_of_fastest_steps']:.1%}", flush=True)
        print(f"   decomposed: 2 ranks without the allreduce {silent['step_s'] * 1e3:.1f} ms/step;"
              f" host factor t1/t2(no allreduce) {rows[-1]['host_factor']:.1%}, communication "
              f"factor t2(no allreduce)/t2 {rows[-1]['communication_factor']:.1%}", flush=True)
        probe = two.get("overlap_probe")
        if probe:
            print(f"   overlap probe (67 MB bucket vs a 4.3 GFLOP GEMM): serial "
                  f"{probe['serial_s'] * 1e3:.1f} ms, overlapped {probe['overlapped_s'] * 1e3:.1f}"
                  f" ms -> saves {probe['saved_share']:.1%}", flush=True)
    probes = []
    if "C" in a.workloads:  # overlap, again with MPICH's progress thread
        for flag in ("0", "1"):
            probe = run_config("probe", 2, 1, MPIR_CVAR_ASYNC_PROGRESS=flag)
            probes.append(probe)
            print(f"overlap probe, MPIR_CVAR_ASYNC_PROGRESS={flag}: GEMM "
                  f"{probe['gemm_s'] * 1e3:.1f} ms + allreduce "
                  f"{probe['allreduce_s'] * 1e3:.1f} ms = "
                  f"{probe['serial_s'] * 1e3:.1f} ms serial, {probe['overlapped_s'] * 1e3:.1f} ms "
                  f"overlapped -> saves {probe['saved_share']:.1%}", flush=True)
    if a.out:
        from .machine import collect

        info = {"machine": collect(gpu=False), "date": time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                                                  time.gmtime()),
                "command": "python -m nnx.benchmarks.distributed " + " ".join(argv or sys.argv[1:]),
                "results": rows, "overlap_probes": probes}
        Path(a.out).write_text(json.dumps(info, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
