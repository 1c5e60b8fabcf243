"""Decide, once per process and cheaply, whether CUDA is usable through CuPy.

``probe_cuda()`` never raises and never hangs. When CuPy is not installed it answers at once
without importing anything. Otherwise the checks run in a short-lived child process with a
timeout, because a broken driver can block inside a C call that holds the GIL (a thread with a
timeout would not help); the child imports CuPy, counts devices, checks ``cupy.is_available()``
and compiles and runs one tiny ``RawKernel``. The verdict is cached for the process.

Environment:
    NNX_CUDA_PROBE_TIMEOUT: seconds to wait for the child (default 60; the first NVRTC compile
        and CUDA context creation can take several seconds on a cold machine).
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys

_CHILD = r"""
import json, sys

def answer(ok, msg):
    sys.stdout.write("\nNNX_PROBE " + json.dumps([ok, msg]) + "\n")
    sys.exit(0)

try:
    import cupy
except Exception as e:
    answer(False, f"CuPy could not be imported: {type(e).__name__}: {e}")

from cupy.cuda import runtime
if sys.platform.startswith("linux"):
    import ctypes
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError as e:
        answer(False, f"no CUDA device: the NVIDIA driver library is not installed ({e})")
try:
    n = runtime.getDeviceCount()
except runtime.CUDARuntimeError as e:
    if "NoDevice" in str(e):
        answer(False, f"no CUDA device: {e}")
    answer(False, f"CUDA driver error: {e}")
except Exception as e:
    answer(False, f"CUDA driver error: {type(e).__name__}: {e}")
if n == 0:
    answer(False, "no CUDA device: the driver reports 0 devices")
try:
    if not cupy.is_available():
        answer(False, "no CUDA device: cupy.is_available() is False")
    names = []
    for i in range(n):
        name = runtime.getDeviceProperties(i)["name"]
        names.append(name.decode() if isinstance(name, bytes) else str(name))
except Exception as e:
    answer(False, f"CUDA driver error: {type(e).__name__}: {e}")
try:
    k = cupy.RawKernel(
        'extern "C" __global__ void nnx_probe(int* o) { o[threadIdx.x] = threadIdx.x + 1; }',
        "nnx_probe")
    o = cupy.zeros(4, dtype=cupy.int32)
    k((1,), (4,), (o,))
    got = o.get().tolist()
except Exception as e:
    answer(False, f"CUDA kernel compile/launch failed: {type(e).__name__}: {e}")
if got != [1, 2, 3, 4]:
    answer(False, f"CUDA probe kernel returned wrong values {got}")
answer(True, f"{n} device(s): " + ", ".join(names))
"""


def _timeout() -> float:
    try:
        return float(os.environ.get("NNX_CUDA_PROBE_TIMEOUT", "60"))
    except ValueError:
        return 60.0


@functools.cache
def probe_cuda() -> tuple[bool, str]:
    """``(usable, reason)``: whether CUDA works through CuPy here, and why not (or which GPUs).

    Reasons: ``"CuPy is not installed"``, ``"no CUDA device: ..."``, ``"CUDA driver error:
    ..."``, ``"CUDA kernel compile/launch failed: ..."``, ``"CUDA probe timed out ..."``, or on
    success ``"N device(s): name, ..."``. Cached; never raises; bounded by the timeout.
    """
    try:
        if importlib.util.find_spec("cupy") is None:
            return False, "CuPy is not installed"
    except Exception as e:  # a broken finder or package metadata
        return False, f"CuPy is not installed ({type(e).__name__}: {e})"
    timeout = _timeout()
    try:
        proc = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                              timeout=timeout, env=os.environ.copy(), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return False, f"CUDA probe timed out after {timeout:g} s (driver hang?)"
    except Exception as e:
        return False, f"CUDA probe could not run: {type(e).__name__}: {e}"
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("NNX_PROBE "):
            try:
                ok, msg = json.loads(line[len("NNX_PROBE "):])
                return bool(ok), str(msg)
            except Exception:
                break
    tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
    return False, f"CUDA probe failed (exit {proc.returncode}): " + " | ".join(tail)
