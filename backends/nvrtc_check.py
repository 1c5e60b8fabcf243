"""Compile every CUDA kernel of ``backends.cuda_kernels`` with NVRTC, as CuPy would, without a GPU.

Usage::

    python -m nnx.backends.nvrtc_check [--arch sm_80 sm_90] [--allow-missing] [--quiet]

Each module of ``cuda_kernels.SOURCES`` is compiled by the NVRTC library CuPy loads at run time
(``cupy_backends.cuda.libs.nvrtc``), with the options CuPy's ``RawModule`` uses, to real SASS
(``-arch=sm_XX``, i.e. a cubin, as CuPy does) with ``-Xptxas=-v``. The ptxas report gives, per
kernel, the registers, stack frame and spill stores/loads. A table is printed; the exit status is
1 on any compile error, any missing kernel, any spill or any stack frame (a register array
demoted to local memory), 2 when CuPy/NVRTC cannot be loaded (0 with ``--allow-missing``).

How the options are reproduced (CuPy 14, ``cupy/_core/raw.pyx`` -> ``core.compile_with_cache``
-> ``cuda/compiler.py``): ``RawModule(code, options)`` calls
``assemble_cupy_compiler_options(options)`` (adds the bundled CCCL include directories,
``--std=c++17`` unless given, CuPy's include directory and the CUDA headers' directory), then
``_compile_with_cache_cuda`` appends ``-ftz=true`` and ``_compile_using_nvrtc`` appends
``-arch=sm_XX`` (cubin when the arch is within NVRTC's range, as here) and
``--device-as-default-execution-space``. CuPy's own entry points query the current device for
the arch, so they cannot run without a GPU: this module calls
``assemble_cupy_compiler_options`` itself and appends the rest the same way.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import os
import re
import sys
import time

from . import cuda_kernels

DEFAULT_ARCHS = ("sm_80", "sm_90")


class NvrtcUnavailable(RuntimeError):
    """CuPy or its NVRTC library cannot be loaded."""


@dataclasses.dataclass
class KernelReport:
    kernel: str
    module: str
    arch: str
    registers: int | None = None
    stack: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
    smem: int = 0

    @property
    def ok(self) -> bool:
        return (self.registers is not None and self.spill_stores == 0
                and self.spill_loads == 0 and self.stack == 0)


@dataclasses.dataclass
class ModuleResult:
    module: str
    arch: str
    ok: bool
    log: str
    seconds: float
    kernels: list[KernelReport]
    error: str = ""


def load_nvrtc():
    """Return (nvrtc binding, CuPy's option assembler, NVRTC version); raise NvrtcUnavailable."""
    try:
        from cupy._core import core
        from cupy_backends.cuda.libs import nvrtc

        version = nvrtc.getVersion()
    except Exception as e:  # ImportError, or the NVRTC shared library is missing
        raise NvrtcUnavailable(f"{type(e).__name__}: {e}") from e
    return nvrtc, core.assemble_cupy_compiler_options, version


def cupy_options(arch: str) -> tuple[str, ...]:
    """The NVRTC options CuPy's RawModule passes for ``cuda_kernels.NVRTC_OPTIONS`` on ``arch``."""
    _, assemble, _ = load_nvrtc()
    opts = assemble(tuple(cuda_kernels.NVRTC_OPTIONS))
    opts += ("-ftz=true",)
    opts += (f"-arch={arch}", "--device-as-default-execution-space")
    return opts


_ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(\w+)'")
_PROPS = re.compile(r"Function properties for (\w+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas(log: str, module: str, arch: str) -> dict[str, KernelReport]:
    """Per-kernel reports from NVRTC's ``-Xptxas=-v`` log."""
    reports: dict[str, KernelReport] = {}
    current = None
    for line in log.splitlines():
        if (m := _ENTRY.search(line)) or (m := _PROPS.search(line)):
            current = reports.setdefault(m.group(1), KernelReport(m.group(1), module, arch))
            continue
        if current is None:
            continue
        if m := _FRAME.search(line):
            current.stack, current.spill_stores, current.spill_loads = map(int, m.groups())
        if m := _REGS.search(line):
            current.registers = int(m.group(1))
            if s := _SMEM.search(line):
                current.smem = int(s.group(1))
    return reports


def compile_module(module: str, arch: str) -> ModuleResult:
    nvrtc, _, _ = load_nvrtc()
    options = cupy_options(arch) + ("-Xptxas=-v",)
    t0 = time.perf_counter()
    prog = nvrtc.createProgram(cuda_kernels.SOURCES[module], f"{module}.cu", (), ())
    error = ""
    try:
        try:
            nvrtc.compileProgram(prog, options)
            ok = True
        except nvrtc.NVRTCError as e:
            ok, error = False, str(e)
        log = nvrtc.getProgramLog(prog)
        if ok:
            cubin = nvrtc.getCUBIN(prog)
            if not cubin:
                ok, error = False, "NVRTC produced no cubin"
    finally:
        nvrtc.destroyProgram(prog)
    log = log.rstrip("\x00")
    reports = parse_ptxas(log, module, arch) if ok else {}
    kernels = []
    for name in cuda_kernels.KERNELS[module]:
        kernels.append(reports.get(name, KernelReport(name, module, arch)))
    extra = sorted(set(reports) - set(cuda_kernels.KERNELS[module]))
    if ok and extra:  # a kernel compiled but not registered: KERNELS is out of date
        ok, error = False, f"unregistered kernels {extra}"
    return ModuleResult(module, arch, ok, log, time.perf_counter() - t0, kernels, error)


def check(archs=DEFAULT_ARCHS, modules=None, jobs: int | None = None) -> list[ModuleResult]:
    """Compile ``modules`` (default: all) for every arch; raise NvrtcUnavailable without NVRTC."""
    load_nvrtc()
    modules = list(cuda_kernels.SOURCES) if modules is None else list(modules)
    work = [(mod, arch) for arch in archs for mod in modules]
    jobs = jobs or min(len(work), os.cpu_count() or 1)
    # NVRTC programs are independent and compileProgram releases the GIL.
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(lambda w: compile_module(*w), work))


def failures(results: list[ModuleResult]) -> list[str]:
    """Human-readable problems found in ``results`` (empty when everything is clean)."""
    problems = []
    for r in results:
        if not r.ok:
            problems.append(f"{r.module} [{r.arch}]: compile error: {r.error}\n{r.log}")
            continue
        for k in r.kernels:
            if k.registers is None:
                problems.append(f"{k.kernel} [{k.arch}]: no ptxas report (kernel missing?)")
            elif k.spill_stores or k.spill_loads:
                problems.append(f"{k.kernel} [{k.arch}]: spills {k.spill_stores} B stores, "
                                f"{k.spill_loads} B loads")
            elif k.stack:
                problems.append(f"{k.kernel} [{k.arch}]: {k.stack} B stack frame (local memory)")
    return problems


def format_table(results: list[ModuleResult]) -> str:
    archs = list(dict.fromkeys(r.arch for r in results))
    by_key = {(k.kernel, k.arch): k for r in results for k in r.kernels}
    names = list(dict.fromkeys(k.kernel for r in results for k in r.kernels))
    width = max(len(n) for n in names) if names else 6
    head = f"{'kernel':<{width}}" + "".join(f" | {a:^22}" for a in archs)
    sub = f"{'':<{width}}" + "".join(f" | {'regs stack spill(st/ld)':>22}" for _ in archs)
    lines = [head, sub, "-" * len(head)]
    for n in names:
        cells = []
        for a in archs:
            k = by_key.get((n, a))
            if k is None or k.registers is None:
                cells.append(f" | {'ERROR':>22}")
            else:
                cells.append(f" | {k.registers:>4} {k.stack:>5} {k.spill_stores:>6}/{k.spill_loads:<4}")
        lines.append(f"{n:<{width}}" + "".join(cells))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nnx.backends.nvrtc_check", description=__doc__.split("\n")[0])
    ap.add_argument("--arch", nargs="+", default=list(DEFAULT_ARCHS),
                    help="real architectures to build SASS for (default: sm_80 sm_90)")
    ap.add_argument("--allow-missing", action="store_true",
                    help="exit 0 (skipped) when CuPy/NVRTC is not installed, instead of 2")
    ap.add_argument("--quiet", action="store_true", help="print only the summary and problems")
    ap.add_argument("--jobs", type=int, default=None, help="parallel NVRTC compilations")
    args = ap.parse_args(argv)
    archs = [a if a.startswith("sm_") else f"sm_{a}" for a in args.arch]

    try:
        _, _, version = load_nvrtc()
        options = cupy_options(archs[0])
    except NvrtcUnavailable as e:
        if args.allow_missing:
            print(f"skipped: CuPy/NVRTC not installed ({e})")
            return 0
        print(f"error: CuPy/NVRTC not installed ({e}); install cupy-cuda13x and "
              "nvidia-cuda-nvrtc / nvidia-cuda-runtime, or pass --allow-missing", file=sys.stderr)
        return 2
    except Exception as e:  # e.g. CuPy cannot find the CUDA headers
        print(f"error: cannot assemble CuPy's compiler options: {type(e).__name__}: {e}",
              file=sys.stderr)
        return 2

    import cupy

    t0 = time.perf_counter()
    results = check(archs, jobs=args.jobs)
    elapsed = time.perf_counter() - t0
    n_kernels = sum(len(r.kernels) for r in results)
    if not args.quiet:
        print(f"NVRTC {version[0]}.{version[1]} (CuPy {cupy.__version__}), options: "
              + " ".join(options).replace(f"-arch={archs[0]}", "-arch=<arch>") + " -Xptxas=-v")
        print(format_table(results))
    problems = failures(results)
    print(f"{len(results)} programs, {n_kernels} kernel builds for {', '.join(archs)} "
          f"in {elapsed:.1f} s: " + ("OK" if not problems else f"{len(problems)} problem(s)"))
    for p in problems:
        print("FAIL:", p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
