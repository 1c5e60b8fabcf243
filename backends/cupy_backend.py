"""The CuPy backend: CuPy arrays on one CUDA device, hot path through the kernels of ``cuda_kernels``.

Importing this module does not import CuPy; constructing a ``CupyBackend`` does. Every kernel
method makes the backend's device current, launches on CuPy's current stream and never
synchronizes with the host (``bad`` of softmax-cross-entropy stays on the device).

Layout rules of the kernel wrappers:

* Inputs that are not C-contiguous (strided views) are copied to contiguous temporaries first.
* ``out=`` may be any array of the result's shape and dtype, including an input itself (in
  place) or a strided view: a non-contiguous ``out`` receives the result through a contiguous
  temporary. ``out`` must not partially overlap an input (identical or disjoint only).
* In-place methods (``bias_act_``, ``sgd_update_``, ``adam_update_``, ``rmsprop_update_``,
  ``adagrad_update_``, ``adadelta_update_``) accept strided arrays the
  same way: they work on contiguous copies and write the results back. Flat contiguous buffers
  (the optimizers' layout) take the one-launch path with no copy.
* Hyperparameters are passed to the kernels as ``numpy.float32`` for float16/float32 arrays and
  ``numpy.float64`` for float64 ones: a float32 update is never computed in float64.
"""
from __future__ import annotations

import math

import numpy as np

from . import cuda_kernels as ck
from . import activations as _acts
from . import conv as _conv
from . import pooling as _pool
from .base import Backend, check_reduction

_LABEL_DTYPES = ("int32", "int64")


def device_count() -> int:
    """Number of CUDA devices CuPy sees (imports CuPy)."""
    import cupy

    return cupy.cuda.runtime.getDeviceCount()


def cuda_versions() -> tuple[int, int]:
    """(runtime, driver) CUDA versions as CUDA encodes them (e.g. 13000), through CuPy."""
    import cupy

    return cupy.cuda.runtime.runtimeGetVersion(), cupy.cuda.runtime.driverGetVersion()


def device_description(index: int) -> str:
    """A one-line description of CUDA device ``index``: name and memory."""
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(int(index))
    name = props["name"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    return f"{name} ({props.get('totalGlobalMem', 0) / 2 ** 30:.0f} GiB), CuPy"


class CupyBackend(Backend):
    """CuPy arrays on CUDA device ``device_id`` (``device == f"cuda:{device_id}"``)."""

    name = "cupy"

    @property
    def cupyx(self):
        """``cupyx`` (pinned host memory for the DataLoader's prefetch), imported on first use."""
        import cupyx

        return cupyx

    def __init__(self, device_id: int = 0):
        import cupy

        self.xp = cupy
        self.array_type = cupy.ndarray
        self.device_id = int(device_id)
        self.device = f"cuda:{self.device_id}"
        with self._dev() as dev:
            sm_count = dev.attributes["MultiProcessorCount"]
            self._rng = cupy.random.RandomState()
        # Grid-stride kernels: one full wave of EW_BLOCK-thread blocks (2048 threads per SM).
        self._max_blocks = max(1, sm_count * (2048 // ck.EW_BLOCK))
        self._host_rng = np.random.default_rng()

    def _dev(self):
        # A fresh Device object per use: CuPy's Device context keeps its own stack, so sharing
        # one object between threads is not safe.
        return self.xp.cuda.Device(self.device_id)

    # ------------------------------------------------------------------ arrays and devices
    def asarray(self, data, dtype=None):
        with self._dev():
            return self.xp.asarray(data, dtype=dtype)

    def to_host(self, array):
        return self.xp.asnumpy(array)

    def is_array(self, obj) -> bool:
        return isinstance(obj, self.xp.ndarray)

    def synchronize(self) -> None:
        self._dev().synchronize()

    def use(self):
        """The CuPy ``Device`` context of this backend's GPU."""
        return self._dev()

    # ------------------------------------------------------------------ random numbers
    def seed(self, seed: int) -> None:
        """Reseed the device generator (cuRAND, via CuPy) and the host one used by permutation."""
        with self._dev():
            self._rng = self.xp.random.RandomState(seed)
        self._host_rng = np.random.default_rng(seed)

    @staticmethod
    def _gen_dtype(dtype):
        # cuRAND draws float32 or float64; float16 is drawn in float32 and rounded.
        dt = np.dtype(dtype)
        return dt, (np.dtype(np.float32) if dt == np.float16 else dt)

    def uniform(self, low: float, high: float, shape, dtype):
        dt, gen = self._gen_dtype(dtype)
        with self._dev():
            a = self._rng.uniform(float(low), float(high), size=shape, dtype=gen)
            return a if gen == dt else a.astype(dt)

    def normal(self, mean: float, std: float, shape, dtype):
        dt, gen = self._gen_dtype(dtype)
        with self._dev():
            a = self._rng.normal(float(mean), float(std), size=shape, dtype=gen)
            return a if gen == dt else a.astype(dt)

    def permutation(self, n: int):
        """Host int64 permutation from a host generator seeded with the device one (no sync)."""
        return self._host_rng.permutation(int(n)).astype(np.int64, copy=False)

    def dropout_mask(self, shape, p: float, dtype):
        dt = np.dtype(dtype)
        p = float(p)
        with self._dev():
            if p <= 0.0:
                return self.xp.ones(shape, dtype=dt)
            if p >= 1.0:
                return self.xp.zeros(shape, dtype=dt)
            r = self._rng.random_sample(size=shape, dtype=np.float32)
            mask = ck.dropout_mask_kernel()(r, np.float32(p), dt.type(1.0 / (1.0 - p)))
            ck.launch_counts["nnx_dropout_mask"] += 1
            return mask

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _suffix(where: str, *arrays) -> str:
        dt = arrays[0].dtype
        sfx = ck.DTYPE_SUFFIX.get(dt.name)
        if sfx is None:
            raise TypeError(f"{where}: expected a float16/float32/float64 array, got {dt}")
        for a in arrays[1:]:
            if a.dtype != dt:
                raise TypeError(f"{where}: dtype mismatch, {a.dtype} vs {dt}")
        return sfx

    @staticmethod
    def _same_shape(where: str, *arrays) -> None:
        shape = arrays[0].shape
        for a in arrays[1:]:
            if a.shape != shape:
                raise ValueError(f"{where}: shape mismatch, {a.shape} vs {shape}")

    @staticmethod
    def _scalar(value, dtype):
        """Kernel argument of the compute type: float32 for float16/float32, float64 for float64."""
        return np.float64(value) if dtype == np.float64 else np.float32(value)

    def _contig(self, a):
        return a if a.flags.c_contiguous else self.xp.ascontiguousarray(a)

    def _grid(self, n: int) -> int:
        return max(1, min(-(-n // ck.EW_BLOCK), self._max_blocks))

    def _elementwise(self, op: str, inputs, out, scalars=()):
        where = op
        sfx = self._suffix(where, *inputs)
        self._same_shape(where, *inputs)
        shape, dtype = inputs[0].shape, inputs[0].dtype
        if out is not None:
            if not self.is_array(out):
                raise TypeError(f"{where}: out must be a CuPy array, got {type(out).__name__}")
            if out.shape != shape or out.dtype != dtype:
                raise ValueError(f"{where}: out has shape {out.shape} and dtype {out.dtype}, "
                                 f"expected {shape} and {dtype}")
        n = inputs[0].size
        with self._dev():
            ins = [self._contig(a) for a in inputs]
            if out is None:
                target = self.xp.empty(shape, dtype=dtype)
            elif out.flags.c_contiguous:
                target = out
            else:
                target = self.xp.empty(shape, dtype=dtype)
            if n:
                args = (*ins, target, np.int64(n), *(self._scalar(s, dtype) for s in scalars))
                ck.launch(f"nnx_{op}_{sfx}", self._grid(n), ck.EW_BLOCK, args)
            if out is not None and target is not out:
                out[...] = target
        return target if out is None else out

    # ------------------------------------------------------------------ activations
    # One elementwise kernel per direction and entry of ``backends.activations``.
    def activation_forward(self, name: str, x, negative_slope: float = 0.01, out=None):
        e = _acts.get(name)
        return self._elementwise(f"{name}_fwd", (x,), out, (negative_slope,) if e.has_slope else ())

    def activation_backward(self, name: str, saved, gy, negative_slope: float = 0.01, out=None,
                            aux=None):
        e = _acts.get(name)  # the kernel reads the saved value; aux (a NumPy twin's) is unused
        return self._elementwise(f"{name}_bwd", (saved, gy), out,
                                 (negative_slope,) if e.has_slope else ())

    def bias_act_(self, y, bias, activation: str, negative_slope: float = 0.01) -> None:
        if activation != _acts.LINEAR:
            _acts.get(activation)  # ValueError naming the known ones
        if y.ndim < 1:
            raise ValueError("bias_act_: y must have at least one dimension (N, F)")
        n_cols = y.shape[-1]
        if bias is not None:
            sfx = self._suffix("bias_act_", y, bias)
            if bias.shape != (n_cols,):
                raise ValueError(f"bias_act_: bias has shape {bias.shape}, expected ({n_cols},)")
        else:
            sfx = self._suffix("bias_act_", y)
            if activation == "linear":
                return
        n = y.size
        if n == 0:
            return
        with self._dev():
            target = self._contig(y)
            b = self._contig(bias) if bias is not None else target  # dummy when has_bias == 0
            args = (target, b, np.int64(n), np.int64(n_cols), np.int32(bias is not None),
                    self._scalar(negative_slope, y.dtype))
            ck.launch(f"nnx_bias_{activation}_{sfx}", self._grid(n), ck.EW_BLOCK, args)
            if target is not y:
                y[...] = target

    # ------------------------------------------------------------------ softmax cross-entropy
    def sum_rows(self, g, out=None):
        return g.sum(axis=0, out=out)

    def softmax_cross_entropy(self, logits, labels, ignore_index: int = -100,
                              reduction: str = "mean", need_grad: bool = True):
        """Fused softmax + NLL and its gradient; see ``Backend.softmax_cross_entropy``.

        Launches: a one-block count of the valid labels (which also raises the ``bad`` flag),
        the row kernel (one warp per row for C <= 1024, else one block per row) writing the row
        losses and the gradient in one pass over the logits, and, for mean/sum, a one-block
        fixed-order reduction. No atomics anywhere, so the result is bit-for-bit repeatable.
        Labels of an integer dtype other than int32/int64 are converted to int64 first.
        """
        cp = self.xp
        check_reduction(reduction, "cross_entropy")
        if logits.ndim != 2:
            raise ValueError(f"cross_entropy: logits must be (N, C), got shape {logits.shape}")
        sfx = self._suffix("cross_entropy", logits)
        n_rows, n_cols = logits.shape
        if labels.ndim != 1 or labels.shape[0] != n_rows:
            raise ValueError(f"cross_entropy: labels must have shape ({n_rows},), "
                             f"got {labels.shape}")
        if labels.dtype.kind not in "iu":
            raise TypeError(f"cross_entropy: labels must be integers, got {labels.dtype}")
        dtype = logits.dtype
        acc = np.float64 if dtype == np.float64 else np.float32
        mean = reduction == "mean"
        with self._dev():
            x = self._contig(logits)
            t = labels if labels.dtype.name in _LABEL_DTYPES else labels.astype(np.int64)
            t = self._contig(t)
            lt = ck.LABEL_SUFFIX[t.dtype.name]
            row_loss = cp.empty(n_rows, dtype=acc)
            grad = cp.empty((n_rows, n_cols), dtype=dtype) if need_grad else None
            count = cp.empty((), dtype=np.int64)
            bad = cp.empty((), dtype=np.int32)
            ign = np.int64(ignore_index)
            ck.launch(f"nnx_ce_count_{lt}", 1, ck.REDUCE_BLOCK,
                      (t, np.int64(n_rows), np.int64(n_cols), ign, count, bad))
            if n_rows and n_cols:
                # grad's slot gets a dummy (never written) when need_grad is false.
                args = (x, t, row_loss, grad if need_grad else row_loss, count,
                        np.int64(n_rows), np.int64(n_cols), ign, np.int32(mean),
                        np.int32(bool(need_grad)))
                vpt = ck.ce_warp_vpt(n_cols)
                if vpt:
                    grid = -(-n_rows // ck.CE_ROWS_PER_BLOCK)
                    ck.launch(f"nnx_softmax_ce_warp{vpt}_{sfx}_{lt}", grid, ck.CE_WARP_BLOCK,
                              args)
                else:
                    ck.launch(f"nnx_softmax_ce_block_{sfx}_{lt}", n_rows, ck.CE_BLOCK, args)
            else:
                row_loss.fill(0)  # C == 0: every label is ignored or out of range
            if reduction == "none":
                loss = row_loss if row_loss.dtype == dtype else row_loss.astype(dtype)
            else:
                loss = cp.empty((), dtype=dtype)
                ck.launch(f"nnx_ce_reduce_{sfx}", 1, ck.REDUCE_BLOCK,
                          (row_loss, count, loss, np.int64(n_rows), np.int32(mean)))
        return loss, grad, bad

    # ------------------------------------------------------------------ optimizer updates
    def _flat_args(self, where: str, arrays):
        """Contiguous stand-ins for ``arrays`` (None kept), plus the (orig, temp) write-backs."""
        present = [a for a in arrays if a is not None]
        self._suffix(where, *present)
        self._same_shape(where, *present)
        out, back = [], []
        for a in arrays:
            if a is None or a.flags.c_contiguous:
                out.append(a)
            else:
                c = self.xp.ascontiguousarray(a)
                out.append(c)
                back.append((a, c))
        return out, back

    def sgd_update_(self, param, grad, momentum_buf, lr: float, momentum: float = 0.0,
                    dampening: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
                    first_step: bool = False) -> None:
        has_momentum = momentum != 0
        if has_momentum and momentum_buf is None:
            raise ValueError("sgd_update_: momentum != 0 needs a momentum buffer")
        buf = momentum_buf if has_momentum else None
        sfx = self._suffix("sgd_update_", param)
        n = param.size
        if n == 0:
            return
        dt = param.dtype
        with self._dev():
            (p, g, b), back = self._flat_args("sgd_update_", (param, grad, buf))
            args = (p, g, b if b is not None else p, np.int64(n), self._scalar(lr, dt),
                    self._scalar(momentum, dt), self._scalar(1.0 - dampening, dt),
                    self._scalar(weight_decay, dt), np.int32(has_momentum),
                    np.int32(bool(nesterov)), np.int32(bool(first_step)))
            ck.launch(f"nnx_sgd_{sfx}", self._grid(n), ck.EW_BLOCK, args)
            for orig, tmp in back:
                if orig is not grad:
                    orig[...] = tmp

    def adam_update_(self, param, grad, exp_avg, exp_avg_sq, lr: float, beta1: float,
                     beta2: float, eps: float, weight_decay: float, step: int,
                     max_exp_avg_sq=None, decoupled: bool = False) -> None:
        if step < 1:
            raise ValueError(f"adam_update_: step must be >= 1, got {step}")
        sfx = self._suffix("adam_update_", param)
        n = param.size
        if n == 0:
            return
        dt = param.dtype
        # Bias corrections on the host in Python floats (double), as PyTorch does.
        step_size = float(lr) / (1.0 - float(beta1) ** int(step))
        bc2_sqrt = math.sqrt(1.0 - float(beta2) ** int(step))
        decoupled = bool(decoupled) and weight_decay != 0
        amsgrad = max_exp_avg_sq is not None
        s = self._scalar
        with self._dev():
            (p, g, m, v, vmax), back = self._flat_args(
                "adam_update_", (param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq))
            args = (p, g, m, v, vmax if amsgrad else v, np.int64(n), s(step_size, dt),
                    s(1.0 - beta1, dt), s(beta2, dt), s(1.0 - beta2, dt), s(bc2_sqrt, dt),
                    s(eps, dt), s(0.0 if decoupled else weight_decay, dt),
                    s(1.0 - float(lr) * float(weight_decay) if decoupled else 1.0, dt),
                    np.int32(decoupled), np.int32(amsgrad))
            ck.launch(f"nnx_adam_{sfx}", self._grid(n), ck.EW_BLOCK, args)
            for orig, tmp in back:
                if orig is not grad:
                    orig[...] = tmp

    def rmsprop_update_(self, param, grad, square_avg, momentum_buf, grad_avg, lr: float,
                        alpha: float, eps: float, weight_decay: float = 0.0,
                        momentum: float = 0.0, centered: bool = False) -> None:
        has_m, centered = momentum > 0, bool(centered)
        if has_m and momentum_buf is None:
            raise ValueError("rmsprop_update_: momentum > 0 needs a momentum buffer")
        if centered and grad_avg is None:
            raise ValueError("rmsprop_update_: centered needs a grad_avg buffer")
        sfx = self._suffix("rmsprop_update_", param)
        n = param.size
        if n == 0:
            return
        dt = param.dtype
        w = 1.0 - float(alpha)  # grad_avg.lerp_(grad, w): PyTorch's two forms, chosen on the host
        s = self._scalar
        with self._dev():
            (p, g, v, b, a), back = self._flat_args(
                "rmsprop_update_", (param, grad, square_avg, momentum_buf if has_m else None,
                                    grad_avg if centered else None))
            args = (p, g, v, b if has_m else v, a if centered else v, np.int64(n), s(lr, dt),
                    s(alpha, dt), s(1.0 - alpha, dt), s(eps, dt), s(weight_decay, dt),
                    s(momentum, dt), s(w, dt), s(1.0 - w, dt), np.int32(w < 0.5),
                    np.int32(has_m), np.int32(centered))
            ck.launch(f"nnx_rmsprop_{sfx}", self._grid(n), ck.EW_BLOCK, args)
            for orig, tmp in back:
                if orig is not grad:
                    orig[...] = tmp

    # ------------------------------------------------------------------ convolution
    # im2col/col2im kernels + cuBLAS GEMMs; see ``backends.conv``.
    def conv2d_forward(self, x, weight, bias, geometry, save: bool = True,
                       activation: str = "linear", negative_slope: float = 0.01, grad=None):
        return _conv.cupy_forward(self, x, weight, bias, geometry, save, activation,
                                  negative_slope, grad)

    def conv2d_backward(self, x, weight, gy, saved, geometry, need_x: bool = True,
                        need_w: bool = True, need_b: bool = True):
        return _conv.cupy_backward(self, x, weight, gy, saved, geometry, need_x, need_w, need_b)

    def adagrad_update_(self, param, grad, state_sum, clr: float, weight_decay: float = 0.0,
                        eps: float = 1e-10) -> None:
        s, dt = self._scalar, param.dtype
        self._one_pass_update("adagrad", (param, grad, state_sum),
                              (s(clr, dt), s(weight_decay, dt), s(eps, dt)))

    def adadelta_update_(self, param, grad, square_avg, acc_delta, lr: float, rho: float,
                         eps: float, weight_decay: float = 0.0, maximize: bool = False) -> None:
        s, dt = self._scalar, param.dtype
        self._one_pass_update("adadelta", (param, grad, square_avg, acc_delta),
                              (s(lr, dt), s(rho, dt), s(1.0 - rho, dt), s(eps, dt),
                               s(weight_decay, dt), np.int32(bool(maximize))))

    def _one_pass_update(self, name: str, arrays, scalars) -> None:
        """One launch of ``nnx_{name}_{sfx}`` over ``arrays`` (param, grad, state...), then the
        element count and ``scalars``; strided arrays go through contiguous copies, written
        back (the gradient is only read)."""
        where = f"{name}_update_"
        param, grad = arrays[0], arrays[1]
        sfx = self._suffix(where, param)
        n = param.size
        if n == 0:
            return
        with self._dev():
            flat, back = self._flat_args(where, arrays)
            ck.launch(f"nnx_{name}_{sfx}", self._grid(n), ck.EW_BLOCK,
                      (*flat, np.int64(n), *scalars))
            for orig, tmp in back:
                if orig is not grad:
                    orig[...] = tmp

    # ------------------------------------------------------------------ pooling (backends.pooling)
    def max_pool2d_forward(self, x, win):
        return _pool.cupy_windowed(self, "maxpool2d_fwd", x, win)

    def max_pool2d_backward(self, gy, argmax, win, in_hw):
        return _pool.cupy_windowed(self, "maxpool2d_bwd", gy, win, in_hw, argmax)

    def avg_pool2d_forward(self, x, win):
        return _pool.cupy_windowed(self, "avgpool2d_fwd", x, win)

    def avg_pool2d_backward(self, gy, win, in_hw):
        return _pool.cupy_windowed(self, "avgpool2d_bwd", gy, win, in_hw)

    def adaptive_avg_pool2d_forward(self, x, out_hw):
        return _pool.cupy_adaptive_avg_pool2d_forward(self, x, out_hw)

    def adaptive_avg_pool2d_backward(self, gy, in_hw):
        return _pool.cupy_adaptive_avg_pool2d_backward(self, gy, in_hw)
