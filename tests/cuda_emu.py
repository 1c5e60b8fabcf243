"""Run the CUDA kernels of ``backends.cuda_kernels`` on the CPU, for machines without a GPU.

This is a test harness, not a backend. Each CUDA module is turned into C++ (the source is used
as is, behind a small shim) and built with g++. Kernels without barriers run their threads one
after another; the others run every CUDA thread of a block as a cooperative fiber in one host
thread (started with ``ucontext``, switched with ``_setjmp``/``_longjmp``), where ``__syncthreads`` and the per-warp exchange behind ``__shfl_xor_sync``
are barriers that yield to a round-robin scheduler (a barrier some thread never reaches aborts
with "deadlock"). The few PTX ``asm`` lines are mapped to C++ (float16 conversions through
``_Float16``, ``rcp.approx`` as an exact division, the opaque ``mov`` as a copy).

``fake_cupy()`` returns a module object standing in for the parts of CuPy that
``backends.cupy_backend`` uses, backed by NumPy: ``RawModule``/``RawKernel`` launch the emulated
kernels, and ``empty`` fills float arrays with NaN (integers with a sentinel), so an output
element a kernel forgets to write shows up. It checks kernel arguments against the kernel's C
signature (count, scalar widths, pointers), which catches wrapper/kernel mismatches.

What this cannot show: timing, data races (the fibers run one at a time), NVRTC
acceptance (``backends.nvrtc_check`` covers that) and the GPU's flush-to-zero of float32
subnormals. Requires g++ (C++17) with ``_Float16`` and POSIX ``ucontext``.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import types

import numpy as np

from nnx.backends import cuda_kernels as ck

_SHIM = r"""
#include <math.h>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cstdint>
#include <algorithm>
#include <functional>
#include <vector>
#include <setjmp.h>
#include <ucontext.h>
using std::min;
using std::max;

struct emu_dim3 { unsigned x = 1, y = 1, z = 1; };
static emu_dim3 threadIdx, blockIdx, blockDim, gridDim;

// Cooperative fibers, one per CUDA thread of a block, in ONE host thread: a barrier wait
// yields to a round-robin scheduler until the barrier's generation moves on.
// ucontext only starts a fiber; switches use _setjmp/_longjmp (no signal-mask syscalls).
struct emu_fiber { ucontext_t ctx; jmp_buf env; unsigned t; bool started, done; char* stack; };
struct emu_bar { int expected; int arrived; unsigned gen; };
static ucontext_t emu_sched;
static jmp_buf emu_sched_env;
static emu_fiber* emu_cur = nullptr;
static const std::function<void()>* emu_fn = nullptr;
static emu_bar emu_block_bar;
static std::vector<emu_bar> emu_warp_bar;
static std::vector<uint64_t> emu_warp_slot;
static unsigned long long emu_progress = 0;

static void emu_bar_wait(emu_bar& b) {
    const unsigned g = b.gen;
    if (++b.arrived == b.expected) { b.arrived = 0; ++b.gen; ++emu_progress; return; }
    while (b.gen == g)
        if (!_setjmp(emu_cur->env)) _longjmp(emu_sched_env, 1);
}

static inline void __syncthreads() { emu_bar_wait(emu_block_bar); }

template <class T> static inline T __shfl_xor_sync(unsigned, T v, int o) {
    const unsigned w = threadIdx.x / 32, lane = threadIdx.x & 31;
    uint64_t* slot = &emu_warp_slot[32 * w];
    std::memcpy(&slot[lane], &v, sizeof(T));
    emu_bar_wait(emu_warp_bar[w]);
    T r;
    std::memcpy(&r, &slot[lane ^ o], sizeof(T));
    emu_bar_wait(emu_warp_bar[w]);
    return r;
}

static inline float __int_as_float(int v) { float f; std::memcpy(&f, &v, 4); return f; }
static inline double __longlong_as_double(long long v) { double d; std::memcpy(&d, &v, 8); return d; }
static inline float emu_h2f(unsigned short h) { _Float16 x; std::memcpy(&x, &h, 2); return (float)x; }
static inline unsigned short emu_f2h(float f) { _Float16 x = (_Float16)f; unsigned short h; std::memcpy(&h, &x, 2); return h; }

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static

static void emu_entry() {
    (*emu_fn)();
    emu_cur->done = true;
    ++emu_progress;
    _longjmp(emu_sched_env, 1);  // never resumed
}

// Run a kernel. `threaded` kernels (barriers or shuffles) run as fibers, block after block;
// the others run their threads one after another.
static void emu_run(int grid, int block, bool threaded, const std::function<void()>& fn) {
    gridDim.x = grid; blockDim.x = block;
    if (!threaded) {
        for (int b = 0; b < grid; ++b)
            for (int t = 0; t < block; ++t) { blockIdx.x = b; threadIdx.x = t; fn(); }
        return;
    }
    const size_t stack_size = 64 * 1024;
    std::vector<emu_fiber> fibers(block);
    std::vector<char> stacks((size_t)block * stack_size);
    const int n_warps = (block + 31) / 32;
    emu_warp_bar.assign(n_warps, emu_bar{});
    emu_warp_slot.assign(32 * n_warps, 0);
    emu_fn = &fn;
    for (int b = 0; b < grid; ++b) {
        blockIdx.x = b;
        emu_block_bar = emu_bar{block, 0, 0};
        for (int w = 0; w < n_warps; ++w) emu_warp_bar[w] = emu_bar{std::min(32, block - 32 * w), 0, 0};
        for (int t = 0; t < block; ++t) {
            emu_fiber& f = fibers[t];
            f.t = t; f.started = f.done = false; f.stack = &stacks[(size_t)t * stack_size];
            getcontext(&f.ctx);
            f.ctx.uc_stack.ss_sp = f.stack;
            f.ctx.uc_stack.ss_size = stack_size;
            f.ctx.uc_link = nullptr;
            makecontext(&f.ctx, emu_entry, 0);
        }
        int remaining = block;
        while (remaining) {
            const unsigned long long before = emu_progress;
            for (int t = 0; t < block; ++t) {
                emu_fiber& f = fibers[t];
                if (f.done) continue;
                emu_cur = &f;
                threadIdx.x = f.t;
                if (!_setjmp(emu_sched_env)) {
                    if (f.started) _longjmp(f.env, 1);
                    f.started = true;
                    swapcontext(&emu_sched, &f.ctx);
                }
                if (f.done) --remaining;
            }
            if (remaining && emu_progress == before) {
                std::fprintf(stderr, "cuda_emu: deadlock in block %d (barrier not reached by all)\n", b);
                std::abort();
            }
        }
    }
}
"""

_ASM = re.compile(r'asm(?:\s+volatile)?\("([^"]*)"\s*:\s*"=\w"\((\w+)\)\s*:\s*"\w"\((\w+)\)\);')


def _asm_to_cpp(m: re.Match) -> str:
    insn, dst, src = m.groups()
    op = insn.split()[0]
    if op == "cvt.f32.f16":
        return f"{dst} = emu_h2f({src});"
    if op == "cvt.rn.f16.f32":
        return f"{dst} = emu_f2h({src});"
    if op == "rcp.approx.ftz.f32":
        return f"{dst} = 1.0f / {src};"
    if op == "rcp.approx.ftz.f64":
        return f"{dst} = 1.0 / {src};"
    if op == "mov.b32":
        return f"{dst} = {src};"
    raise ValueError(f"cuda_emu: no C++ mapping for PTX {insn!r}")


_KERNEL = re.compile(r'extern "C" __global__ void __launch_bounds__\(\d+\)\s*(\w+)\(([^)]*)\)\s*\{',
                     re.S)


def _param_kind(decl: str, acc_is_double: bool) -> str:
    """'p' pointer, 'q' int64, 'i' int32, 'f' float, 'd' double."""
    decl = " ".join(decl.split())
    if "*" in decl:
        return "p"
    ty = decl.rsplit(" ", 1)[0].replace("const ", "").strip()
    return {"nnx_i64": "q", "long long": "q", "int": "i", "float": "f", "double": "d",
            "nnx_acc": "d" if acc_is_double else "f"}[ty]


@functools.cache
def _signatures(mod: str) -> dict[str, tuple[str, bool]]:
    """kernel name -> (parameter kinds, threaded?) for module ``mod``."""
    src = ck.SOURCES[mod]
    acc_double = "typedef double nnx_acc;" in src
    out = {}
    matches = list(_KERNEL.finditer(src))
    for i, m in enumerate(matches):
        body_end = matches[i + 1].start() if i + 1 < len(matches) else len(src)
        body = src[m.end():body_end]
        kinds = "".join(_param_kind(p, acc_double) for p in m.group(2).split(","))
        out[m.group(1)] = (kinds, "__syncthreads" in body or "__shfl" in body)
    return out


def _cpp_source(mod: str) -> str:
    src = _ASM.sub(_asm_to_cpp, ck.SOURCES[mod])
    launchers = []
    for name, (kinds, threaded) in _signatures(mod).items():
        m = re.search(r"\b" + name + r"\(([^)]*)\)", src)
        params = [p.strip() for p in m.group(1).split(",")]
        casts = []
        for i, p in enumerate(params):
            ty = " ".join(p.replace("__restrict__", "").split()).rsplit(" ", 1)[0]
            casts.append(f"*({ty}*)args[{i}]")
        launchers.append(
            f'extern "C" void emu_{name}(int grid, int block, void** args) {{\n'
            f"    emu_run(grid, block, {'true' if threaded else 'false'}, "
            f"[&]() {{ {name}({', '.join(casts)}); }});\n}}\n")
    return _SHIM + src + "\n" + "\n".join(launchers)


def compiler_available() -> bool:
    return shutil.which(os.environ.get("CXX", "g++")) is not None


_build_lock = threading.Lock()


@functools.cache
def _library(mod: str) -> ctypes.CDLL:
    code = _cpp_source(mod)
    key = hashlib.sha256(code.encode()).hexdigest()[:16]
    cache = os.path.join(tempfile.gettempdir(), "nnx_cuda_emu")
    os.makedirs(cache, exist_ok=True)
    so = os.path.join(cache, f"{mod}_{key}.so")
    with _build_lock:
        if not os.path.exists(so):
            cpp = so[:-3] + ".cpp"
            with open(cpp, "w") as f:
                f.write(code)
            cxx = os.environ.get("CXX", "g++")
            tmp = f"{so}.{os.getpid()}.tmp"
            r = subprocess.run([cxx, "-std=c++17", "-O1", "-U_FORTIFY_SOURCE", "-shared", "-fPIC", "-pthread",
                                "-w", cpp, "-o", tmp], capture_output=True, text=True)
            if r.returncode:
                raise RuntimeError(f"cuda_emu: g++ failed for {mod}:\n{r.stderr[-4000:]}")
            os.replace(tmp, so)
    return ctypes.CDLL(so)


class EmuKernel:
    """Stand-in for ``cupy.RawKernel``: checks the arguments against the C signature, runs."""

    def __init__(self, mod: str, name: str):
        self.mod, self.name = mod, name
        self.kinds, _ = _signatures(mod)[name]
        self._fn = getattr(_library(mod), f"emu_{name}")
        self._fn.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p))

    def __call__(self, grid, block, args, shared_mem=0):
        (grid,), (block,) = grid, block
        if len(args) != len(self.kinds):
            raise TypeError(f"{self.name}: {len(args)} arguments for {len(self.kinds)} parameters")
        keep, ptrs = [], []
        for i, (a, k) in enumerate(zip(args, self.kinds)):
            if k == "p":
                if not isinstance(a, np.ndarray):
                    raise TypeError(f"{self.name}: argument {i} must be an array, got {type(a)}")
                c = ctypes.c_void_p(a.ctypes.data)
            else:
                want = {"q": np.int64, "i": np.int32, "f": np.float32, "d": np.float64}[k]
                if isinstance(a, np.ndarray) or type(a) is not want:
                    raise TypeError(f"{self.name}: argument {i} must be {np.dtype(want)}, "
                                    f"got {type(a).__name__}")
                c = {"q": ctypes.c_int64, "i": ctypes.c_int32, "f": ctypes.c_float,
                     "d": ctypes.c_double}[k](a)
            keep.append(c)
            ptrs.append(ctypes.cast(ctypes.pointer(c), ctypes.c_void_p))
        arr = (ctypes.c_void_p * len(ptrs))(*[p.value for p in ptrs])
        self._fn(int(grid), int(block), arr)


class _RawModule:
    def __init__(self, code=None, options=(), **_):
        self.mod = next(m for m, s in ck.SOURCES.items() if s == code)

    def get_function(self, name):
        return EmuKernel(self.mod, name)


def _empty(shape, dtype=float, order="C"):
    a = np.empty(shape, dtype=dtype, order=order)
    if a.dtype.kind == "f":
        a.fill(np.nan)  # an element a kernel forgets to write stays NaN
    elif a.dtype.kind in "iu":
        a.fill(np.iinfo(a.dtype).max)
    return a


class _Device:
    def __init__(self, device_id=0):
        self.id = device_id
        self.attributes = {"MultiProcessorCount": 2}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def synchronize(self):
        pass


class _RandomState:
    def __init__(self, seed=None):
        self._g = np.random.default_rng(seed)

    def uniform(self, low=0.0, high=1.0, size=None, dtype=float):
        return self._g.uniform(low, high, size).astype(dtype)

    def normal(self, loc=0.0, scale=1.0, size=None, dtype=float):
        return self._g.normal(loc, scale, size).astype(dtype)

    def random_sample(self, size=None, dtype=float):
        return self._g.random(size, dtype=np.dtype(dtype).type)


def _elementwise_kernel(in_params, out_params, operation, name, **_):
    if name != "nnx_dropout_mask":
        raise NotImplementedError(name)

    def run(r, p, scale):
        return np.where(r >= p, scale, type(scale)(0)).astype(type(scale))
    return run


def fake_cupy() -> types.ModuleType:
    """A module object with the CuPy API subset ``backends.cupy_backend`` uses (NumPy-backed)."""
    cp = types.ModuleType("cupy")
    cp.__version__ = "emulated"
    cp.ndarray = np.ndarray
    for name in ("ascontiguousarray", "ones", "zeros", "full", "array_equal",
                 "float16", "float32", "float64", "int32", "int64", "dtype", "arange"):
        setattr(cp, name, getattr(np, name))
    cp.asarray = lambda a, dtype=None: np.array(a, dtype=dtype, copy=True)  # a "transfer"
    cp.empty = _empty
    cp.asnumpy = lambda a: np.array(a, copy=True)
    cp.RawModule = _RawModule
    cp.ElementwiseKernel = _elementwise_kernel
    cp.cuda = types.SimpleNamespace(
        Device=_Device,
        runtime=types.SimpleNamespace(getDeviceCount=lambda: 1))
    cp.random = types.SimpleNamespace(RandomState=_RandomState)
    cp.is_available = lambda: True
    return cp


def clear_kernel_caches() -> None:
    """Forget kernels built so far (call when switching between real and fake CuPy)."""
    ck._raw_module.cache_clear()
    ck.get_kernel.cache_clear()
    ck.dropout_mask_kernel.cache_clear()
    _signatures.cache_clear()  # the sources change when an activation is registered
    _library.cache_clear()


@contextlib.contextmanager
def emulated_backend():
    """A ``CupyBackend`` over these emulated kernels and ``fake_cupy()`` (the real ``cupy``
    module, if any, is put back afterwards)."""
    saved = sys.modules.get("cupy")
    clear_kernel_caches()
    sys.modules["cupy"] = fake_cupy()
    try:
        from nnx.backends.cupy_backend import CupyBackend

        yield CupyBackend(0)
    finally:
        clear_kernel_caches()
        if saved is None:
            sys.modules.pop("cupy", None)
        else:
            sys.modules["cupy"] = saved


if __name__ == "__main__":  # build every module: python -m tests.cuda_emu
    for m in ck.SOURCES:
        _library(m)
        print("built", m, file=sys.stderr)
