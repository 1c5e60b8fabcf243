"""The report: bars checked, tables printed, JSON and a PNG plot written."""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

from . import workloads as W

# training peak RSS, nnx / floor, by workload (C: issue 5; D: issue 10)
MEMORY_BARS = {"C": 1.25, "D": 1.5}
GROWTH_TOL = 4096  # bytes per step of live-allocation growth that still counts as "none"
# (interpreter noise: free lists, dict resizes; a leaked graph or buffer is megabytes)


def _fmt_time(s: float, unit: str) -> str:
    if unit == "us" or s < 1e-3:
        return f"{s * 1e6:9.1f} us"
    if s < 1.0:
        return f"{s * 1e3:9.2f} ms"
    return f"{s:9.3f} s "


def _fmt_ratio(r: Optional[float]) -> str:
    return "    -" if r is None else f"{r:5.2f}"


def check_bars(entry: Dict[str, object]) -> List[Dict[str, object]]:
    """The issue-5 bars that apply to one workload result (one thread count)."""
    w = W.get(entry["key"])
    cons = entry["contenders"]
    bars = []

    def add(what, value, limit, ok):
        bars.append({"what": what, "value": value, "limit": limit, "ok": bool(ok)})

    for dev in ("cpu", "cuda"):
        nnx = cons.get(f"nnx-{dev}")
        if not nnx:
            continue
        if dev == "cpu":
            if w.bar_floor is not None and nnx.get("vs_floor") is not None:
                add("nnx-cpu / floor-cpu", nnx["vs_floor"], w.bar_floor,
                    nnx["vs_floor"] <= w.bar_floor)
            if w.bar_torch is not None and nnx.get("vs_torch") is not None:
                add("nnx-cpu / torch-cpu", nnx["vs_torch"], w.bar_torch,
                    nnx["vs_torch"] <= w.bar_torch)
            if w.bar_gemm_share is not None and nnx.get("gemm_share") is not None:
                add("nnx-cpu GFLOP/s / NumPy GEMM rate", nnx["gemm_share"], w.bar_gemm_share,
                    nnx["gemm_share"] >= w.bar_gemm_share)
        elif w.bar_gpu_torch is not None and nnx.get("vs_torch") is not None:
            add("nnx-cuda / torch-cuda", nnx["vs_torch"], w.bar_gpu_torch,
                nnx["vs_torch"] <= w.bar_gpu_torch)
        vb = entry.get("vs_base", {}).get(f"nnx-{dev}")
        if w.bar_clip_overhead is not None and vb is not None:
            add(f"nnx-{dev} clip overhead ({w.key.split('@')[0]} / {w.base} step)", vb["ratio"],
                w.bar_clip_overhead, vb["ratio"] <= w.bar_clip_overhead)
    return bars


def check_memory_bars(mem: List[Dict[str, object]]) -> List[Dict[str, object]]:
    bars = []
    by = {(m.get("workload"), m.get("contender")): m for m in mem if "peak_rss" in m}
    for (wk, label), m in by.items():
        if not label.startswith("nnx-"):
            continue
        dev = label.split("-", 1)[1]
        fl = by.get((wk, f"floor-{dev}"))
        limit = MEMORY_BARS.get(wk)
        if fl and dev == "cpu" and limit is not None:
            r = m["peak_rss"] / fl["peak_rss"]
            bars.append({"what": f"{wk}: training peak RSS nnx-cpu / floor-cpu", "value": r,
                         "limit": limit, "ok": r <= limit})
        g = m.get("traced_growth_per_step")
        if g is not None:
            bars.append({"what": f"{wk}: {label} live-allocation growth per step (bytes)",
                         "value": g, "limit": GROWTH_TOL, "ok": g <= GROWTH_TOL})
    return bars


# ---------------------------------------------------------------------------- text tables
def main_table(result: Dict[str, object]) -> str:
    m = result["machine"]
    blas = next((b for b in m.get("blas", []) if b.get("user_api") == "blas"), {})
    head = (f"nnx benchmark  {m['date']}  {m['host_kind']}: {m['cpu']['model']}, "
            f"{m['cpu']['usable_cpus']} cpus; BLAS {blas.get('internal_api', '?')} "
            f"{blas.get('version', '')} ({blas.get('architecture', '?')} kernel); "
            f"torch {m['versions'].get('torch')}; numpy {m['versions'].get('numpy')}")
    if m.get("gpu"):
        head += f"; GPU {m['gpu'].get('name')}"
    lines = [head, "ratios are medians of per-round paired ratios (same run, interleaved); "
                   "'*' marks the preferred thread count per workload"]
    hdr = (f"{'workload':<24}{'contender':<12}{'thr':>4} {'time/step':>12} {'samples/s':>11} "
           f"{'GFLOP/s':>8} {'%GEMM':>6} {'xfloor':>6} {'xtorch':>6} {'load':>5} {'wait':>5} "
           f"{'noisy':>6}  bars")
    lines += [hdr, "-" * len(hdr)]
    for e in result["workloads"]:
        w = W.get(e["key"])
        first = True
        bars_by = {}
        for b in e.get("bars", []):
            bars_by.setdefault(b["what"].split(" ")[0], []).append(b)
        for label, c in e["contenders"].items():
            name = f"{w.key} {w.name}" if first else ""
            thr = f"{e['threads']}{'*' if e.get('preferred') else ' '}" if first else ""
            gf = f"{c['gflops']:8.1f}" if c.get("gflops") is not None else f"{'-':>8}"
            share = (f"{100 * c['gemm_share']:5.0f}%" if c.get("gemm_share") is not None
                     else f"{'-':>6}")
            load = f"{e['timing']['load_median']:5.2f}" if first else " " * 5
            wait = (f"{100 * e['timing'].get('pressure_median', 0.0):4.0f}%" if first
                    else " " * 5)
            noisy = (f"{e['timing']['noisy_rounds']:>2}/{e['timing']['rounds']:<3}" if first
                     else " " * 6)
            bar_txt = ", ".join(
                f"{'ok' if b['ok'] else 'MISS'} {b['what'].split(' ', 1)[1]} "
                f"{b['value']:.3g} ({'>=' if 'GEMM' in b['what'] else '<='}{b['limit']:.3g})"
                for b in bars_by.get(label, []))
            lines.append(f"{name:<24}{label:<12}{thr:>4} {_fmt_time(c['time_s'], w.unit):>12} "
                         f"{c['samples_per_s']:11,.0f} {gf} {share} "
                         f"{_fmt_ratio(c.get('vs_floor')):>6} {_fmt_ratio(c.get('vs_torch')):>6} "
                         f"{load} {wait} {noisy}  {bar_txt}")
            first = False
        for label, why in e.get("skipped", {}).items():
            lines.append(f"{'':<24}{label:<12}  skipped: {why}")
        vb = e.get("vs_base")
        if vb:
            base = next(iter(vb.values()))["base"]
            parts = []
            for label, v in vb.items():
                bar = next((b for b in e.get("bars", []) if b["what"].startswith(label + " clip")),
                           None)
                parts.append(f"{label} {v['ratio']:.3f}" + (
                    "" if bar is None else
                    f" ({'ok' if bar['ok'] else 'MISS'} <={bar['limit']:.3g})"))
            lines.append(f"{'':<24}clip overhead ({e['key']} step / {base} step, same rounds): "
                         + ", ".join(parts))
    lines.append("load: median foreign CPU load per round (cores: other processes + hypervisor "
                 "steal); wait: median share of time some task waited for a CPU (PSI); noisy: "
                 "rounds flagged (contention or a stall), repeated and left out of the medians")
    return "\n".join(lines)


def memory_table(mem: List[Dict[str, object]], bars: List[Dict[str, object]]) -> str:
    if not mem:
        return ""
    lines = ["memory (one fresh process per contender): peak RSS while training (reset after the "
             "build), the build's own peak, live growth and temporaries per step (tracemalloc)",
             f"{'memory':<8}{'contender':<12}{'train peak':>11} {'above import':>13} "
             f"{'build peak':>11} {'params':>7} {'live growth/step':>17} "
             f"{'temporaries/step':>17} {'gc cycles/step':>15}"]
    for m in mem:
        if "peak_rss" not in m:
            lines.append(f"{m.get('workload', '?'):<8}{m.get('contender', '?'):<12}  "
                         f"{m.get('error') or m.get('skipped')}")
            continue
        g = m.get("traced_growth_per_step")
        t = m.get("traced_transient_per_step")
        n = m.get("cyclic_garbage_objects_per_step")
        lines.append(f"{m['workload']:<8}{m['contender']:<12}{m['peak_rss'] / 2**20:9.0f}MB "
                     f"{m['peak_above_import'] / 2**20:11.0f}MB "
                     f"{m.get('peak_build_rss', 0) / 2**20:9.0f}MB "
                     f"{m['param_bytes'] / 2**20:5.0f}MB "
                     f"{'n/a (untraced)' if g is None else f'{g:,.0f} B':>17} "
                     f"{'n/a' if t is None else f'{t / 2**20:,.1f} MB':>17} "
                     f"{'n/a' if n is None else f'{n:,.0f} obj':>15}")
    for b in bars:
        lines.append(f"  {'ok' if b['ok'] else 'MISS'}: {b['what']} = {b['value']:.3g} "
                     f"(limit {b['limit']:.3g})")
    return "\n".join(lines)


def micro_table(micro: Optional[Dict[str, object]]) -> str:
    if not micro or not micro.get("rows"):
        return ""
    variants = ["fused", "unfused", "torch"]
    lines = [f"kernels ({micro['device']}, {micro['threads']} thread(s)); time per call, "
             f"ratios vs fused (>1: fused is faster)",
             f"{'kernel':<18}{'size':<12}" + "".join(f"{v:>12}" for v in variants)
             + f"{'unfused/f':>10}{'torch/f':>9}"]
    for r in micro["rows"]:
        ts = "".join(f"{_fmt_time(r['time_s'][v], 'ms').strip():>12}" if v in r["time_s"]
                     else f"{'-':>12}" for v in variants)
        ru = r["ratios"].get("unfused/fused")
        rt = r["ratios"].get("torch/fused")
        lines.append(f"{r['kernel']:<18}{r['size']:<12}{ts}"
                     f"{'-' if ru is None else f'{ru:.2f}':>10}{'-' if rt is None else f'{rt:.2f}':>9}")
    for k, why in micro.get("skipped", {}).items():
        lines.append(f"  {k}: skipped ({why})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- files
def write_json(result: Dict[str, object], path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1, default=_json_default)
        f.write("\n")
    os.replace(tmp, path)


def _json_default(o):
    try:
        import numpy as np
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:
        pass
    return str(o)


def write_plot(result: Dict[str, object], path: str) -> Optional[str]:
    """Grouped bars: samples/s (log scale) per workload and contender; None if no matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except Exception as e:
        return f"no plot: matplotlib unavailable ({e})"
    entries = [e for e in result["workloads"] if e.get("preferred")] or result["workloads"]
    labels = []
    for e in entries:
        for c in e["contenders"]:
            if c not in labels and not c.startswith("gemm"):
                labels.append(c)
    if not entries or not labels:
        return "no plot: nothing measured"
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(entries) + 2), 4.5))
    width = 0.8 / len(labels)
    colors = {"floor": "#7f7f7f", "nnx": "#1f77b4", "torch": "#ff7f0e"}
    for j, lab in enumerate(labels):
        xs, ys = [], []
        for i, e in enumerate(entries):
            c = e["contenders"].get(lab)
            if c:
                xs.append(i + (j - (len(labels) - 1) / 2) * width)
                ys.append(c["samples_per_s"])
        base = lab.split("-")[0]
        bars = ax.bar(xs, ys, width * 0.95, label=lab, color=colors.get(base),
                      alpha=1.0 if lab.endswith("cpu") else 0.6,
                      hatch=None if lab.endswith("cpu") else "//")
        for b, y in zip(bars, ys):
            ax.annotate(f"{y:,.0f}", (b.get_x() + b.get_width() / 2, y), ha="center",
                        va="bottom", fontsize=6, rotation=90)
    ax.set_xticks(range(len(entries)))
    ax.set_xticklabels([f"{e['key']} {e['name']}\n({e['threads']} thr)" for e in entries],
                       fontsize=8)
    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo, hi * 4)  # room for the value labels
    ax.set_ylabel("samples / s (higher is better)")
    m = result["machine"]
    ax.set_title(f"nnx benchmark, {m['host_kind']} ({m['cpu']['model']}"
                 + (f", {m['gpu'].get('name')}" if m.get("gpu") else "") + f") {m['date'][:10]}",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None
