"""Interleaved timing with load accounting.

Contenders run in blocks of ``k`` steps, interleaved A B C, C B A, A B C ... within rounds; a
round's blocks run within a fraction of a second of each other, so they see the same phase of
the (shared, noisy) host and the *ratio* of two contenders' block times within a round is far
steadier than either time.  Reported figures are medians over rounds: of per-step times, and of
the paired per-round ratios.

Each block records the CPU load that was not ours while it ran:

* ``other``: CPU-seconds per second spent by other processes in this machine (``/proc/stat``
  busy time minus this process's CPU time, all threads, ``time.process_time``);
* ``steal``: CPU-seconds per second the hypervisor gave to other guests (``/proc/stat`` steal);
* ``pressure``: the share of the time some runnable task waited for a CPU (PSI,
  ``/proc/pressure/cpu``, microsecond resolution), where the kernel has it.

A round is *noisy* when, summed over its blocks, tasks waited for a CPU more than 5% of the time
(PSI), or the hypervisor stole more than 0.1 core, or the foreign load clearly exceeded what the
cores we did not ask for can absorb (without PSI: exceeded it at all); or when a block ran far
slower than that contender's median (a stall the counters did not see).  Noisy rounds are
repeated (up to ``max_extra`` more rounds) and left out of the medians when enough quiet rounds
remain; the result says how many were dropped.
"""
from __future__ import annotations

import dataclasses
import os
import statistics
import time
from typing import Callable, Dict, List, Optional

_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def n_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class LoadProbe:
    """Cheap snapshots of machine-wide busy/steal time, CPU pressure and our own CPU time.

    ``/proc/stat`` is tick-based (10 ms units): over a 30 ms block its "other" estimate can be
    off by a few tenths of a core, so noise is judged per round (all blocks summed).  Where the
    kernel has PSI, ``/proc/pressure/cpu`` adds the time (us resolution) during which some
    runnable task waited for a CPU: the direct sign of contention (a 1-thread run beside a
    1-core foreign load on 2 cores shows none; a 2-thread run does).
    """

    def __init__(self):
        self._ok = os.path.exists("/proc/stat")
        self._psi = os.path.exists("/proc/pressure/cpu")
        if self._psi:
            try:
                self._pressure()
            except (OSError, ValueError, IndexError):
                self._psi = False

    @staticmethod
    def _read(path: str) -> bytes:
        fd = os.open(path, os.O_RDONLY)
        try:
            return os.read(fd, 512)
        finally:
            os.close(fd)

    def _stat(self):
        if not self._ok:
            return 0.0, 0.0
        line = self._read("/proc/stat").split(b"\n", 1)[0]
        v = [int(x) for x in line.split()[1:]]
        # user nice system idle iowait irq softirq steal guest guest_nice
        busy = v[0] + v[1] + v[2] + v[5] + v[6]
        steal = v[7] if len(v) > 7 else 0
        return busy / _HZ, steal / _HZ

    def _pressure(self) -> float:
        """PSI 'some' total: seconds during which some runnable task waited for a CPU."""
        line = self._read("/proc/pressure/cpu").split(b"\n", 1)[0]
        return int(line.rsplit(b"total=", 1)[1]) / 1e6

    @property
    def has_pressure(self) -> bool:
        return self._psi

    def snap(self):
        busy, steal = self._stat()
        psi = self._pressure() if self._psi else 0.0
        return time.perf_counter(), time.process_time(), busy, steal, psi

    @staticmethod
    def delta(a, b) -> Dict[str, float]:
        wall = max(b[0] - a[0], 1e-9)
        own = b[1] - a[1]
        other = max(0.0, (b[2] - a[2]) - own) / wall
        steal = max(0.0, b[3] - a[3]) / wall
        pressure = max(0.0, b[4] - a[4]) / wall if len(a) > 4 else 0.0
        return {"wall": wall, "own": own / wall, "other": other, "steal": steal,
                "pressure": pressure}

    def sample(self, seconds: float = 0.25) -> Dict[str, float]:
        """Foreign load over ``seconds`` of sleeping (so all busy time is someone else's)."""
        a = self.snap()
        time.sleep(seconds)
        return self.delta(a, self.snap())


PRESSURE_LIMIT = 0.05  # share of a round's time during which some task waited for a CPU
STEAL_LIMIT = 0.1      # cores taken by the hypervisor


def busy_threshold(threads: int, ncpu: Optional[int] = None) -> float:
    """Foreign load (cores) above which a block at ``threads`` threads counts as noisy.

    The cores we did not ask for can absorb foreign work; 0.25 core of slack on top (a
    half-busy spare core does not disturb a 1-thread run; any foreign load does a full one).
    """
    ncpu = ncpu or n_cpus()
    return max(0.0, ncpu - threads) * 0.8 + 0.25


def wait_for_quiet(probe: LoadProbe, threads: int, max_wait_s: float,
                   sample_s: float = 0.25) -> Dict[str, float]:
    """Sample foreign load until it is under the threshold or ``max_wait_s`` has passed."""
    thr = busy_threshold(threads)
    t0 = time.perf_counter()
    while True:
        s = probe.sample(sample_s)
        load = s["other"] + s["steal"]
        waited = time.perf_counter() - t0
        if load <= thr or waited >= max_wait_s:
            return {"load": load, "other": s["other"], "steal": s["steal"], "waited_s": waited,
                    "quiet": load <= thr, "threshold": thr}


@dataclasses.dataclass
class Entry:
    """One timed thing: ``step`` is called ``k`` times per block, then ``sync`` once.

    ``pool`` names the CPU thread pool the step runs on (``"openblas"`` for NumPy code,
    ``"torch"``, or None for device work): see :func:`settle`.
    """
    label: str
    step: Callable[[], None]
    sync: Callable[[], None] = lambda: None
    activate: Callable[[], None] = lambda: None
    k: int = 1
    est: float = 0.0  # estimated seconds per step (from the warm-up)
    pool: Optional[str] = None


def settle(max_s: float = 0.4, slice_s: float = 0.005, idle_cores: float = 0.05) -> float:
    """Sleep until this process's worker threads stop spinning; return the seconds waited.

    After a parallel region, OpenBLAS workers busy-wait (with ``sched_yield``) for ~2^28
    cycles, about 0.1 s here, before they sleep. On a 2-core machine that spinner takes a core
    from the *next* block if it belongs to another thread pool: PyTorch B at 2 threads measured
    3.8 ms/step right after a NumPy block against 1.9 ms after a 0.15 s pause (the NumPy floor
    was 1.6 ms either way). So before a block whose pool differs from the previous block's, wait
    until our own CPU use, with the main thread asleep, falls under ``idle_cores``.
    """
    t_start = t0 = time.perf_counter()
    c0 = time.process_time()
    while True:
        time.sleep(slice_s)
        t1, c1 = time.perf_counter(), time.process_time()
        if (c1 - c0) / max(t1 - t0, 1e-9) < idle_cores or t1 - t_start > max_s:
            return t1 - t_start
        t0, c0 = t1, c1


def warm_up(e: Entry, min_steps: int = 2, seconds: float = 0.2, max_steps: int = 100000) -> float:
    """Run ``e`` untimed (first calls compile, allocate, fill caches); return its s/step.

    ``min_steps`` steps run first; the last of them, and any further steps run until about
    ``seconds`` have passed, give the estimate of the steady-state step time.
    """
    e.activate()
    for _ in range(min_steps - 1):
        e.step()
    e.sync()
    m, ta = 0, time.perf_counter()
    while m < max_steps:
        e.step()
        m += 1
        if time.perf_counter() - ta > seconds:
            break
    e.sync()
    e.est = (time.perf_counter() - ta) / m
    return e.est


def interleave(entries: List[Entry], rounds: int, block_s: float = 0.03, threads: int = 1,
               max_extra: Optional[int] = None, outlier: float = 1.6,
               budget_s: Optional[float] = None, probe: Optional[LoadProbe] = None,
               warmup_s: float = 0.2, warmup_min_steps: int = 2,
               min_rounds: int = 3, abort_if_noisy: Optional[int] = None) -> Dict[str, object]:
    """Time ``entries`` in interleaved rounds; return per-entry samples and summary medians.

    Args:
        rounds: quiet rounds wanted.
        block_s: target seconds per block (sets each entry's ``k`` from its warm-up).
        threads: the thread count in force (sets the noise threshold).
        max_extra: extra rounds allowed to replace noisy ones (default: ``rounds``).
        outlier: a block slower than ``outlier`` x its entry's running median marks its round
            noisy.
        budget_s: stop starting rounds when this many seconds (warm-up included) have passed
            and starting another would overrun it (at least ``min_rounds`` rounds run).
        warmup_s, warmup_min_steps: untimed warm-up per entry (see :func:`warm_up`).
        abort_if_noisy: stop after this many rounds if every one of them was noisy (the caller
            then measures at fewer threads); the result has ``aborted: True``.
    """
    probe = probe or LoadProbe()
    max_extra = rounds if max_extra is None else max_extra
    thr = busy_threshold(threads)
    t_start = time.perf_counter()
    pools = {e.pool for e in entries if e.pool}
    must_settle = threads > 1 and len(pools) > 1
    prev_pool = None
    settled = 0.0
    for e in entries:
        if must_settle and e.pool and e.pool != prev_pool:
            settled += settle()
        warm_up(e, min_steps=warmup_min_steps, seconds=warmup_s)
        prev_pool = e.pool
        e.k = max(1, int(round(block_s / max(e.est, 1e-9))))
    samples: Dict[str, List[float]] = {e.label: [] for e in entries}
    loads: List[Dict[str, float]] = []
    noisy: List[bool] = []
    r = 0
    aborted = False
    while True:
        if abort_if_noisy is not None and r >= abort_if_noisy and all(noisy):
            aborted = True
            break
        n_quiet = noisy.count(False)
        if n_quiet >= rounds or r >= rounds + max_extra:
            break
        if budget_s is not None and r >= min_rounds:
            per_round = sum(e.k * (statistics.median(samples[e.label]) if samples[e.label]
                                   else e.est) for e in entries)
            if time.perf_counter() - t_start + per_round > budget_s:
                break
        order = entries if r % 2 == 0 else entries[::-1]
        tot = {"wall": 0.0, "other": 0.0, "steal": 0.0, "pressure": 0.0}
        block_max = 0.0
        is_noisy = False
        block_times = {}
        for e in order:
            e.activate()
            if must_settle and e.pool and e.pool != prev_pool:
                settled += settle()
            prev_pool = e.pool
            a = probe.snap()
            t0 = time.perf_counter()
            step = e.step
            for _ in range(e.k):
                step()
            e.sync()
            t1 = time.perf_counter()
            d = probe.delta(a, probe.snap())
            block_times[e.label] = (t1 - t0) / e.k
            for key in ("other", "steal", "pressure"):
                tot[key] += d[key] * d["wall"]
            tot["wall"] += d["wall"]
            block_max = max(block_max, d["other"] + d["steal"])
        wall = max(tot["wall"], 1e-9)
        round_load = {"other": tot["other"] / wall, "steal": tot["steal"] / wall,
                      "pressure": tot["pressure"] / wall, "block_max": block_max}
        round_load["max"] = round_load["other"] + round_load["steal"]
        if probe.has_pressure:
            # contention is measured directly; the tick-based 'other' only flags gross load
            is_noisy = (round_load["pressure"] > PRESSURE_LIMIT
                        or round_load["steal"] > STEAL_LIMIT
                        or round_load["max"] > thr + 0.5)
        else:
            is_noisy = round_load["max"] > thr
        for e in entries:
            prev = samples[e.label]
            t = block_times[e.label]
            if len(prev) >= 3 and t > outlier * statistics.median(prev):
                is_noisy = True
            prev.append(t)
        loads.append(round_load)
        noisy.append(is_noisy)
        r += 1
    out = summarize(samples, noisy, loads, threads=threads, threshold=thr,
                    ks={e.label: e.k for e in entries}, elapsed=time.perf_counter() - t_start)
    out["aborted"] = aborted
    out["settle_s"] = settled
    return out


def summarize(samples: Dict[str, List[float]], noisy: List[bool], loads, threads: int,
              threshold: float, ks=None, elapsed: float = 0.0) -> Dict[str, object]:
    n = len(noisy)
    quiet_idx = [i for i in range(n) if not noisy[i]]
    # use the quiet rounds when there are enough of them, else all rounds (and say so)
    use = quiet_idx if len(quiet_idx) >= max(3, n // 3) else list(range(n))
    per = {}
    for label, ts in samples.items():
        used = [ts[i] for i in use]
        per[label] = {
            "median_s": statistics.median(used),
            "min_s": min(used),
            "max_s": max(used),
            "spread": (_quantile(used, 0.75) - _quantile(used, 0.25)) / statistics.median(used),
            "steps_per_block": (ks or {}).get(label),
            "samples_s": ts,
        }
    labels = list(samples)
    ratios = {}
    for a in labels:
        for b in labels:
            if a != b:
                rs = [samples[a][i] / samples[b][i] for i in use]
                ratios[f"{a}/{b}"] = {"median": statistics.median(rs), "min": min(rs),
                                      "max": max(rs)}
    used_loads = [loads[i]["max"] for i in use]
    used_pressure = [loads[i].get("pressure", 0.0) for i in use]
    return {
        "threads": threads,
        "rounds": n,
        "rounds_used": len(use),
        "noisy_rounds": n - len(quiet_idx),
        "used_noisy_rounds": len(use) != len(quiet_idx),
        "noise_threshold_cores": threshold,
        "load_median": statistics.median(used_loads) if used_loads else 0.0,
        "pressure_median": statistics.median(used_pressure) if used_pressure else 0.0,
        "load_max": max(l["max"] for l in loads) if loads else 0.0,
        "round_loads": loads,
        "round_noisy": noisy,
        "elapsed_s": elapsed,
        "per": per,
        "ratios": ratios,
    }


def _quantile(xs: List[float], q: float) -> float:
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)
