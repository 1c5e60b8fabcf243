"""What the benchmark ran on: CPU, BLAS and its core kernel, threads, versions, card."""
from __future__ import annotations

import datetime
import importlib
import os
import platform
import re
import socket
import subprocess
from typing import Dict, List, Optional

from .timing import n_cpus


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> List[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return sorted(f for f in flags if f in {
                        "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16",
                        "avx512_vnni", "amx_tile", "hypervisor"})
    except OSError:
        pass
    return []


def _mem_total_gb() -> Optional[float]:
    try:
        import psutil
        return round(psutil.virtual_memory().total / 2 ** 30, 1)
    except Exception:
        return None


def blas_info() -> List[Dict[str, object]]:
    """threadpoolctl's view of the loaded BLAS/OpenMP libraries (OpenBLAS core = 'architecture')."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return [{"error": "threadpoolctl not installed"}]
    out = []
    for d in threadpool_info():
        out.append({k: (os.path.basename(v) if k == "filepath" else v) for k, v in d.items()})
    return out


def numpy_blas() -> Dict[str, object]:
    import numpy as np
    try:
        cfg = np.show_config(mode="dicts")
        deps = cfg.get("Build Dependencies", {})
        return {k: {kk: vv for kk, vv in deps.get(k, {}).items()
                    if kk in ("name", "version", "found")} for k in ("blas", "lapack")}
    except Exception as e:  # older NumPy
        return {"error": str(e)}


def _version(mod: str) -> Optional[str]:
    try:
        m = importlib.import_module(mod)
    except Exception:
        return None
    return getattr(m, "__version__", "?")


def torch_info() -> Dict[str, object]:
    try:
        import torch
    except Exception as e:
        return {"installed": False, "why": str(e)}
    info: Dict[str, object] = {"version": torch.__version__, "threads": torch.get_num_threads(),
                               "interop_threads": torch.get_num_interop_threads(),
                               "mkl": torch.backends.mkl.is_available(),
                               "mkldnn": torch.backends.mkldnn.is_available(),
                               "cuda": torch.cuda.is_available()}
    try:
        par = torch.__config__.parallel_info()
        m = re.search(r"ATen parallel backend: (\S+)", par)
        info["parallel_backend"] = m.group(1) if m else None
        m = re.search(r"(Intel\(R\) oneAPI Math Kernel Library Version [^\n]*)", par)
        info["mkl_version"] = m.group(1) if m else None
    except Exception:
        pass
    if info["cuda"]:
        info["card"] = torch.cuda.get_device_name(0)
        info["cuda_version"] = torch.version.cuda
    return info


def gpu_info() -> Dict[str, object]:
    """The first CUDA card (name, memory, driver) via CuPy, torch or nvidia-smi; {} if none."""
    info: Dict[str, object] = {}
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() > 0:
            p = cupy.cuda.runtime.getDeviceProperties(0)
            name = p["name"]
            info = {"name": name.decode() if isinstance(name, bytes) else str(name),
                    "memory_gb": round(p["totalGlobalMem"] / 2 ** 30, 1),
                    "compute_capability": f"{p['major']}.{p['minor']}",
                    "cupy": cupy.__version__,
                    "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
                    "driver": cupy.cuda.runtime.driverGetVersion()}
    except Exception:
        pass
    if not info:
        try:
            import torch
            if torch.cuda.is_available():
                info = {"name": torch.cuda.get_device_name(0)}
        except Exception:
            pass
    if info:
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm",
                                  "--format=csv,noheader"], capture_output=True, text=True,
                                 timeout=10)
            if out.returncode == 0:
                info["nvidia_smi"] = out.stdout.strip().splitlines()[0]
        except Exception:
            pass
    return info


def git_commit() -> Optional[str]:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except Exception:
        return None


def _slug(s: str) -> str:
    s = re.sub(r"\(R\)|\(TM\)|CPU|Processor|@.*$|\d+-Core", "", s, flags=re.I)
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")


def host_kind(gpu: Optional[Dict[str, object]] = None) -> str:
    """Short file-name id of this kind of host: ``cpu2-amd-epyc``, ``gpu-nvidia-h100-80gb-hbm3``."""
    if gpu and gpu.get("name"):
        return "gpu-" + _slug(str(gpu["name"]))[:40]
    return f"cpu{n_cpus()}-" + (_slug(_cpu_model())[:30] or "unknown")


def collect(gpu: bool = True) -> Dict[str, object]:
    g = gpu_info() if gpu else {}
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "host_kind": host_kind(g),
        "cpu": {"model": _cpu_model(), "logical_cpus": os.cpu_count(), "usable_cpus": n_cpus(),
                "flags": _cpu_flags(), "machine": platform.machine()},
        "memory_gb": _mem_total_gb(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "loadavg_at_start": load,
        "blas": blas_info(),
        "numpy_build": numpy_blas(),
        "versions": {m: _version(m) for m in ("numpy", "nnx", "torch", "cupy", "threadpoolctl",
                                              "psutil", "matplotlib")},
        "torch": torch_info(),
        "gpu": g,
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                           "MKL_NUM_THREADS", "OMP_WAIT_POLICY",
                                           "CUDA_VISIBLE_DEVICES", "CUPY_TF32")
                if k in os.environ},
        "git_commit": git_commit(),
    }
