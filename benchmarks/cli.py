"""``python -m nnx.benchmarks`` / ``nnx bench``: run the suite, print the table, write JSON and PNG."""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import traceback
from typing import Dict, List, Optional

from . import contenders as C
from . import report, timing
from . import workloads as W

DEFAULT_WORKLOADS = ("A", "B", "C", "B-adam", "C-adam", "B-adamw", "C-adamw", "B-clip",
                     "C-clip", "D")
# --quick's default: the issue-5 set (the issue-12 ones would squeeze it past its 2 minutes),
# and D (issue 10: ~0.2 s steps, a few rounds)
QUICK_WORKLOADS = ("A", "B", "C", "B-adam", "C-adam", "D")
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# rounds wanted (quick, full) and, for full runs, a per-workload time budget in seconds
ROUNDS = {"A": (15, 41), "B": (15, 41), "C": (5, 11), "B-adam": (9, 21), "C-adam": (3, 7),
          "B-adamw": (9, 21), "C-adamw": (3, 7), "B-clip": (15, 41), "C-clip": (5, 11),
          "D": (5, 15)}
# C-clip's rounds also time nnx's and the floor's unclipped C step (paired: the clip overhead)
BUDGET_FULL = {"A": 30, "B": 40, "C": 150, "B-adam": 25, "C-adam": 90, "B-adamw": 25,
               "C-adamw": 90, "B-clip": 50, "C-clip": 220, "D": 90}
# --quick must finish in < 2 minutes even on a busy host (where every step is several times
# slower): each phase gets this share of the time left, by weight
QUICK_DEADLINE_S = 100.0
PHASE_WEIGHTS = {"A": 1.0, "B": 1.2, "C": 3.0, "B-adam": 1.0, "C-adam": 2.0, "B-adamw": 1.0,
                 "C-adamw": 2.0, "B-clip": 1.5, "C-clip": 4.0, "D": 2.0, "memory": 2.5,
                 "micro": 1.2}
# contenders also timed, on the unclipped base workload, in a workload with ``base`` set
PAIRED_BASE = ("floor", "nnx")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        prog="python -m nnx.benchmarks",
        description="nnx benchmark suite: nnx vs a hand-written NumPy floor vs PyTorch eager, "
                    "interleaved, with load accounting (issue 5).")
    ap.add_argument("--quick", action="store_true",
                    help="fewer rounds, one thread count, small micro-benchmarks (< 2 min)")
    ap.add_argument("--threads", type=int, default=None,
                    help="BLAS/torch threads (default: all cores when quiet, 1 when the machine "
                         "is busy; the full run measures both)")
    ap.add_argument("--out", default=RESULTS_DIR, help="directory for the JSON and PNG")
    ap.add_argument("--workloads", default=None,
                    help=f"comma list of {','.join(W.WORKLOADS)} (C@256 = C at width 256); "
                         f"default: all; with --quick: {','.join(QUICK_WORKLOADS)}")
    ap.add_argument("--contenders", default=",".join(C.NAMES), help="comma list of floor,nnx,torch")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="auto: the CPU, plus CUDA when usable")
    ap.add_argument("--rounds", type=int, default=None, help="override the rounds per workload")
    ap.add_argument("--block-ms", type=float, default=None, help="target ms per timed block")
    ap.add_argument("--max-wait", type=float, default=None,
                    help="seconds to wait for a quiet machine before each workload")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-RSS subprocesses")
    ap.add_argument("--no-micro", action="store_true", help="skip the kernel micro-benchmarks")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--no-save", action="store_true", help="write no files")
    ap.add_argument("--name", default=None, help="file stem (default <date>-<host-kind>)")
    ap.add_argument("--fail-on-miss", action="store_true", help="exit 1 when a bar is missed")
    ap.add_argument("--smoke", action="store_true",
                    help="seconds-long run of every code path (C at width 256; for tests)")
    return ap.parse_args(argv)


class Log:
    def __init__(self, t0):
        self.t0 = t0

    def __call__(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.t0:6.1f}s] {msg}", flush=True)


# ---------------------------------------------------------------------------- others' load
def _proc_cpu_snapshot() -> Dict[int, tuple]:
    try:
        import psutil
    except ImportError:
        return {}
    me = os.getpid()
    snap = {}
    for p in psutil.process_iter(["pid", "ppid", "name", "cmdline", "cpu_times"]):
        try:
            i = p.info
            if i["pid"] == me or i["ppid"] == me or i["cpu_times"] is None:
                continue
            ct = i["cpu_times"]
            cmd = " ".join(i["cmdline"] or [])[:90] or i["name"]
            snap[i["pid"]] = (ct.user + ct.system, cmd)
        except Exception:
            continue
    return snap


def _top_others(before: Dict[int, tuple], elapsed: float, n: int = 3) -> List[Dict[str, object]]:
    after = _proc_cpu_snapshot()
    rows = []
    for pid, (cpu, cmd) in after.items():
        d = cpu - before.get(pid, (0.0, cmd))[0]
        if d > 0.02 * elapsed:
            rows.append({"pid": pid, "cpu_cores": round(d / max(elapsed, 1e-9), 2), "cmd": cmd})
    rows.sort(key=lambda r: -r["cpu_cores"])
    return rows[:n]


# ---------------------------------------------------------------------------- one workload
def run_workload(w: W.Workload, devices: List[str], names: List[str], threads: int,
                 rounds: int, block_s: float, budget_s: float, max_wait: Optional[float],
                 probe: timing.LoadProbe, log, warmup_min_steps: int = 2,
                 min_rounds: int = 3, abort_if_noisy: Optional[int] = None) -> Dict[str, object]:
    """Build every contender, time them interleaved, and derive the per-contender figures.

    ``max_wait``: seconds to wait for a quiet machine first (None: no wait; the caller did).
    """
    t_begin = time.perf_counter()
    params, batches = W.init_params(w), W.make_batches(w)
    built, skipped = [], {}
    extra = ["gemm"] if w.key.split("@")[0] in ("B", "C") else []
    base = W.base_of(w)  # C for C-clip: its floor and nnx steps are timed in the same rounds
    paired = [f"{n}@base" for n in PAIRED_BASE if n in names] if base is not None else []
    for dev in devices:
        for name in list(names) + extra + paired:
            label = f"{name}-{dev}"
            if name.endswith("@base"):
                name = name[:-len("@base")]
                label = f"{name}-{dev}-{base.key.split('@')[0]}"
            try:
                c = C.make(name, w if label == f"{name}-{dev}" else base, params, batches, dev)
                c.label = label
                c.set_threads(threads)
                c.activate()
                c.step()  # one step: a contender that cannot step is reported, not timed
                c.sync()
                built.append(c)
            except C.Skip as e:
                skipped[label] = str(e)
            except Exception as e:
                skipped[label] = f"failed: {type(e).__name__}: {e}"
                log(f"  {label} failed:\n" + traceback.format_exc(limit=4))
    del params
    entry: Dict[str, object] = {
        "key": w.key, "name": w.name, "sizes": list(w.sizes), "batch": w.batch,
        "optimizer": w.optimizer, "lr": w.lr, "flops_per_step": w.flops_per_step,
        "weights": w.weights, "threads": threads, "skipped": skipped, "contenders": {},
        "info": {c.label: c.info for c in built}}
    if not built:
        entry["timing"] = {"load_median": 0.0, "noisy_rounds": 0, "rounds": 0}
        return entry
    if max_wait is not None:
        entry["pre_wait"] = timing.wait_for_quiet(probe, threads, max_wait)
    before = _proc_cpu_snapshot()
    t0 = time.perf_counter()
    ents = [timing.Entry(c.label, c.step, c.sync, c.activate, pool=_pool(c)) for c in built]
    limiter = _blas_limit(threads)
    try:
        res = timing.interleave(ents, rounds=rounds, block_s=block_s, threads=threads,
                                budget_s=budget_s - (time.perf_counter() - t_begin),
                                probe=probe, warmup_s=min(0.2, block_s * 4),
                                warmup_min_steps=warmup_min_steps, min_rounds=min_rounds,
                                abort_if_noisy=abort_if_noisy)
    finally:
        if limiter is not None:
            limiter.restore_original_limits()
    entry["top_other_processes"] = _top_others(before, time.perf_counter() - t0)
    entry["timing"] = res
    per, ratios = res["per"], res["ratios"]
    for c in built:
        if c.name == "gemm" or c.w is not w:
            continue
        t = per[c.label]["median_s"]
        d = {"time_s": t, "samples_per_s": w.batch / t,
             "gflops": w.flops_per_step / t / 1e9 if w.key[0] in "BCD" else None,
             "spread": per[c.label]["spread"]}
        g = f"gemm-{c.device}"
        if g in per:
            d["gemm_share"] = ratios[f"{g}/{c.label}"]["median"]
            d["gemm_gflops"] = w.flops_per_step / per[g]["median_s"] / 1e9
        for other, key in ((f"floor-{c.device}", "vs_floor"), (f"torch-{c.device}", "vs_torch")):
            if other in per:
                d[key] = 1.0 if other == c.label else ratios[f"{c.label}/{other}"]["median"]
        entry["contenders"][c.label] = d
    for c in built:  # the paired base steps: this workload's step / the base's, same rounds
        if c.w is not w and f"{c.name}-{c.device}" in per:
            me = f"{c.name}-{c.device}"
            entry.setdefault("vs_base", {})[me] = {
                "base": base.key, "base_time_s": per[c.label]["median_s"],
                "ratio": ratios[f"{me}/{c.label}"]["median"]}
    if any(c.name == "gemm" for c in built):
        for dev in devices:
            g = f"gemm-{dev}"
            if g in per:
                entry.setdefault("gemm", {})[dev] = {
                    "time_s": per[g]["median_s"],
                    "gflops": w.flops_per_step / per[g]["median_s"] / 1e9}
    for c in built:
        c.close()
    del built, ents
    gc.collect()
    return entry


def _pool(c) -> Optional[str]:
    """The CPU thread pool a contender's step runs on (None: device work)."""
    if c.device != "cpu":
        return None
    return "torch" if c.name == "torch" else "openblas"


def _blas_limit(threads: int):
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(threads, user_api="blas")


# ---------------------------------------------------------------------------- main
def main(argv=None) -> int:
    a = parse_args(argv)
    t_start = time.perf_counter()
    log = Log(t_start)
    quick = a.quick or a.smoke
    from . import machine as M
    probe = timing.LoadProbe()
    ncpu = timing.n_cpus()
    names = [n for n in a.contenders.split(",") if n]
    bad = [n for n in names if n not in C.NAMES]
    if bad:
        print(f"unknown contenders {bad}; known: {C.NAMES}", file=sys.stderr)
        return 2
    wl_arg = a.workloads or ",".join(QUICK_WORKLOADS if quick else DEFAULT_WORKLOADS)
    keys = [k for k in wl_arg.split(",") if k]
    try:
        wls = [W.get(k) for k in keys]
    except KeyError as e:
        print(e, file=sys.stderr)
        return 2
    if a.smoke:
        wls = [w.scaled(16) if w.arch == "cnn" else
               w.scaled(256, batch=w.batch if w.batch <= 128 else 64) if w.sizes[1] > 256 else w
               for w in wls]

    cuda_ok, cuda_why = (False, "not asked for")
    if a.device in ("auto", "cuda"):
        cuda_ok, cuda_why = C.cuda_available()
    devices = ["cpu"] if a.device == "cpu" else (["cuda"] if a.device == "cuda" else
                                                 (["cpu", "cuda"] if cuda_ok else ["cpu"]))
    log(f"collecting machine info; devices {devices}"
        + ("" if cuda_ok or a.device == "cpu" else f" (CUDA: {cuda_why})"))
    mach = M.collect(gpu=cuda_ok)
    if a.device == "cuda" and not cuda_ok:
        print(f"no GPU: skipped ({cuda_why})")
        return 0

    if a.threads:
        plan_mode, plan = "fixed", [a.threads]
    elif quick or ncpu == 1:
        plan_mode, plan = "auto", None
    else:
        plan_mode, plan = "both", [1, ncpu]
    max_wait = a.max_wait if a.max_wait is not None else (2.0 if quick else 20.0)
    if a.smoke:
        max_wait = 0.0
    qi = 0 if quick else 1
    result: Dict[str, object] = {
        "schema": 1, "machine": mach,
        "config": {"quick": a.quick, "smoke": a.smoke, "devices": devices,
                   "cuda": {"usable": cuda_ok, "why": cuda_why}, "contenders": names,
                   "thread_plan": plan_mode, "threads_arg": a.threads, "ncpu": ncpu,
                   "argv": list(argv) if argv is not None else sys.argv[1:]},
        "workloads": [], "memory": [], "micro": None}

    def remaining():
        return QUICK_DEADLINE_S - (time.perf_counter() - t_start)

    phases = [w.key.split("@")[0] for w in wls]
    if not a.no_memory and "cpu" in devices:
        phases.append("memory")
    if not a.no_micro:
        phases.append("micro")
    timed_quick = quick and not a.smoke

    def phase_budget(phase):
        """Seconds for ``phase``: its weighted share of the time left (quick), else fixed."""
        if a.smoke:
            return 2.0
        if not timed_quick:
            return BUDGET_FULL.get(phase, 60.0)
        i = phases.index(phase)
        left = sum(PHASE_WEIGHTS.get(p, 1.0) for p in phases[i:])
        return max(2.0, remaining() * PHASE_WEIGHTS.get(phase, 1.0) / left)

    for w in wls:
        base = w.key.split("@")[0]
        rounds = a.rounds or (3 if a.smoke else ROUNDS.get(base, (9, 21))[qi])
        budget = phase_budget(base)
        block_s = (a.block_ms / 1e3 if a.block_ms else (0.01 if a.smoke else
                                                         (0.03 if quick else 0.05)))
        heavy = base.startswith(("C", "D"))
        min_steps = 1 if (quick and heavy) else 2
        min_rounds = 1 if (timed_quick and heavy) else 3
        t_w = time.perf_counter()
        if plan_mode == "auto":
            q = timing.wait_for_quiet(probe, ncpu, max_wait)
            threads_list = [ncpu] if q["quiet"] else [1]
            why = (f"quiet ({q['load']:.2f} cores foreign load)" if q["quiet"] else
                   f"busy ({q['load']:.2f} cores foreign load > {q['threshold']:.2f}): 1 thread")
            wait = None
        else:
            threads_list, why, wait = plan, plan_mode, max_wait
        entries = []
        for th in threads_list:
            log(f"{w.key} {w.name}: {th} thread(s) [{why}], up to {rounds} rounds, "
                f"budget {budget / len(threads_list):.0f} s")
            # auto mode: give up on a multi-thread run whose first rounds are all noisy
            abort = 2 if (plan_mode == "auto" and th > 1) else None
            e = run_workload(w, devices, names, th, rounds, block_s, budget / len(threads_list),
                             wait, probe, log, warmup_min_steps=min_steps, min_rounds=min_rounds,
                             abort_if_noisy=abort)
            e["thread_choice"] = why
            entries.append(e)
            _log_entry(log, e)
        # the multi-thread figure when its rounds were quiet, else the 1-thread one
        pref = entries[-1]
        if len(entries) > 1:
            multi = max(entries, key=lambda e: e["threads"])
            single = min(entries, key=lambda e: e["threads"])
            noisy = multi["timing"].get("used_noisy_rounds") or \
                multi["timing"].get("noisy_rounds", 0) > multi["timing"].get("rounds", 0) // 2
            pref = single if noisy else multi
            pref["preference_reason"] = ("multi-thread rounds were noisy" if noisy else
                                         "multi-thread rounds were quiet")
        elif plan_mode == "auto" and entries[0]["threads"] > 1 and (
                entries[0]["timing"].get("used_noisy_rounds")
                or entries[0]["timing"].get("aborted")):
            spent = time.perf_counter() - t_w
            if not timed_quick or spent < 0.6 * budget or entries[0]["timing"].get("aborted"):
                log(f"{w.key}: {ncpu}-thread rounds were noisy; rerunning at 1 thread")
                e = run_workload(w, devices, names, 1, rounds, block_s,
                                 max(budget - spent, 0.4 * budget), None, probe, log,
                                 warmup_min_steps=min_steps, min_rounds=min_rounds)
                e["thread_choice"] = "rerun at 1 thread: multi-thread rounds were noisy"
                e["preference_reason"] = f"{ncpu}-thread rounds were noisy"
                entries.append(e)
                _log_entry(log, e)
                pref = e
            else:
                entries[0]["preference_reason"] = "noisy, but no time left to rerun at 1 thread"
        for e in entries:
            e["preferred"] = e is pref
            e["bars"] = report.check_bars(e)
            result["workloads"].append(e)

    # ---- memory: peak RSS and growth, one subprocess per contender
    if "memory" in phases:
        from . import memory
        t_m, budget = time.perf_counter(), phase_budget("memory")
        mem_keys = [w for w in wls if w.key.split("@")[0] in (("C", "D") if quick else
                                                              ("B", "C", "D"))]
        for w in mem_keys:
            pe = next((e for e in result["workloads"] if e["key"] == w.key and e.get("preferred")),
                      None)
            th = pe["threads"] if pe else 1
            steps, traced = (1, 1) if quick else (3, 3)
            for name in names:
                label = f"{name}-cpu"
                # a child runs 2 + steps + 2 * traced steps, after imports (torch: seconds)
                t_step = (pe["contenders"].get(label, {}).get("time_s", 1.0) if pe else 1.0)
                est = (3.0 if name == "torch" else 1.0) + (3 + steps + 2 * traced) * t_step
                if timed_quick and time.perf_counter() - t_m + est > budget:
                    result["memory"].append({"workload": w.key, "contender": label,
                                             "error": "skipped: --quick time budget"})
                    continue
                log(f"memory {w.key} {label} ({th} thread(s), subprocess)")
                m = memory.measure(w.key, name, "cpu", th, steps=steps, traced_steps=traced)
                m.setdefault("workload", w.key)
                m.setdefault("contender", label)
                result["memory"].append(m)
    mem_bars = report.check_memory_bars(result["memory"])
    result["memory_bars"] = mem_bars

    # ---- kernel micro-benchmarks
    if "micro" in phases:
        from . import micro
        th = next((e["threads"] for e in result["workloads"] if e.get("preferred")), 1)
        result["micro"] = []
        budget = phase_budget("micro")
        for dev in devices:
            log(f"kernel micro-benchmarks on {dev} ({th} thread(s)), budget {budget:.0f} s")
            limiter = _blas_limit(th)
            try:
                kernels = (["sigmoid_fwd", "softmax_ce", "sgd_step"] if a.smoke else None)
                result["micro"].append(micro.run(
                    dev, quick=quick, threads=th, rounds=2 if a.smoke else None,
                    block_s=0.005 if a.smoke else 0.02, kernels=kernels,
                    use_torch="torch" in names, smoke=a.smoke,
                    budget_s=budget / len(devices) if timed_quick else None))
            except Exception as e:
                log(f"micro-benchmarks on {dev} failed: {type(e).__name__}: {e}")
                result["micro"].append({"device": dev, "error": f"{type(e).__name__}: {e}",
                                        "rows": [], "threads": th})
            finally:
                if limiter is not None:
                    limiter.restore_original_limits()

    result["elapsed_s"] = time.perf_counter() - t_start
    try:
        result["machine"]["loadavg_at_end"] = os.getloadavg()
    except OSError:
        pass
    all_bars = [b for e in result["workloads"] if e.get("preferred") for b in e["bars"]] + mem_bars
    result["bars_missed"] = [b for b in all_bars if not b["ok"]]
    table = report.main_table(result)
    result["table"] = table
    texts = [report.micro_table(m) for m in (result["micro"] or [])]
    texts.append(report.memory_table(result["memory"], mem_bars))

    if not a.no_save:
        stem = a.name or (f"{mach['date'][:10]}-{mach['host_kind']}"
                          + ("-smoke" if a.smoke else ""))
        jpath = os.path.join(a.out, stem + ".json")
        ppath = os.path.join(a.out, stem + ".png")
        if not a.no_plot:
            why = report.write_plot(result, ppath)
            result["plot"] = None if why else os.path.basename(ppath)
            if why:
                log(why)
        report.write_json(result, jpath)
        texts.append(f"wrote {jpath}" + ("" if a.no_plot or result.get("plot") is None
                                          else f" and {ppath}"))
    for t in texts:
        if t:
            print("\n" + t)
    print(f"\nfinished in {result['elapsed_s']:.0f} s\n")
    print(table, flush=True)
    if a.fail_on_miss and result["bars_missed"]:
        return 1
    return 0


def _log_entry(log, e):
    parts = []
    for label, c in e["contenders"].items():
        r = c.get("vs_floor")
        parts.append(f"{label} {c['time_s'] * 1e3:.3f} ms" + (f" (x{r:.2f} floor)" if r else ""))
    t = e.get("timing", {})
    log(f"  {'; '.join(parts)}; load {t.get('load_median', 0):.2f}, "
        f"noisy {t.get('noisy_rounds', 0)}/{t.get('rounds', 0)}")
    for label, why in e.get("skipped", {}).items():
        log(f"  {label} skipped: {why}")
