"""The NumPy backend: the CPU path and the reference twin of every CUDA kernel.

The kernels here use in-place ufuncs with ``out=`` so a training step allocates little. Long
elementwise passes (optimizer updates) run in cache-sized chunks: each chunk goes through every
stage of the update while it sits in L2, which is the CPU analogue of one fused CUDA kernel and
needs only a small scratch buffer instead of parameter-sized temporaries.
"""
from __future__ import annotations

import math

import numpy as np

from .base import ACTIVATIONS, Backend

# Elements per chunk for fused elementwise passes: 32K float32 = 128 KiB, well inside L2.
CHUNK = 1 << 15


def _compute_dtype(dtype):
    """float16 is computed in float32 (as the CUDA kernels do); other dtypes as they are."""
    return np.float32 if dtype == np.float16 else dtype


class NumpyBackend(Backend):
    """NumPy arrays on the host CPU."""

    name = "numpy"
    device = "cpu"
    xp = np
    array_type = np.ndarray

    def __init__(self):
        self._rng = np.random.default_rng()
        self._scratch = {}

    # ------------------------------------------------------------------ arrays
    def asarray(self, data, dtype=None):
        if hasattr(data, "__cuda_array_interface__") and not isinstance(data, np.ndarray):
            data = data.get()  # a CuPy array: explicit device-to-host copy
        return np.asarray(data, dtype=dtype)

    def to_host(self, array):
        return np.asarray(array)

    def is_array(self, obj):
        return isinstance(obj, np.ndarray)

    def scratch(self, n, dtype):
        """A reusable 1-d work buffer of at least ``n`` elements (never returned to callers)."""
        key = np.dtype(dtype)
        buf = self._scratch.get(key)
        if buf is None or buf.size < n:
            buf = np.empty(max(n, 16), dtype=key)
            self._scratch[key] = buf
        return buf[:n]

    # ------------------------------------------------------------------ random numbers
    def seed(self, seed):
        self._rng = np.random.default_rng(seed)

    def uniform(self, low, high, shape, dtype):
        return self._rng.uniform(low, high, size=shape).astype(dtype, copy=False)

    def normal(self, mean, std, shape, dtype):
        return self._rng.normal(mean, std, size=shape).astype(dtype, copy=False)

    def permutation(self, n):
        return self._rng.permutation(n).astype(np.int64, copy=False)

    def dropout_mask(self, shape, p, dtype):
        rdtype = np.float64 if dtype == np.float64 else np.float32
        keep = self._rng.random(size=shape, dtype=rdtype) >= p
        return np.multiply(keep, 1.0 / (1.0 - p), dtype=dtype)

    # ------------------------------------------------------------------ activations
    def sigmoid_fwd(self, x, out=None):
        if out is None:
            out = np.empty_like(x)
        neg = x < 0  # before writing: out may be x itself
        e = np.abs(x)
        np.negative(e, out=e)
        np.exp(e, out=e)  # e = exp(-|x|) in (0, 1]: never overflows
        np.add(e, 1.0, out=out)
        np.reciprocal(out, out=out)  # 1 / (1 + e): the x >= 0 branch
        np.multiply(e, out, out=out, where=neg)  # e / (1 + e): the x < 0 branch, exact in the tail
        return out

    def sigmoid_bwd(self, y, gy, out=None):
        if out is None:
            out = np.empty_like(y)
        np.subtract(1.0, y, out=out)
        np.multiply(out, y, out=out)
        np.multiply(out, gy, out=out)
        return out

    def relu_fwd(self, x, out=None):
        if out is None:
            out = np.empty_like(x)
        np.maximum(x, 0.0, out=out)  # NaN propagates, as in PyTorch
        return out

    def relu_bwd(self, y, gy, out=None):
        if out is None:
            out = np.empty_like(gy)
        # gy * (y > 0): 8x faster than a masked copy; a non-finite gy where y <= 0 gives NaN
        # here (NaN * 0) where the CUDA kernel gives 0 -- only on already-broken gradients.
        np.multiply(gy, y > 0, out=out)
        return out

    def leaky_relu_fwd(self, x, negative_slope, out=None):
        if out is None:
            out = np.empty_like(x)
        if out is not x:
            np.copyto(out, x)
        np.multiply(out, negative_slope, out=out, where=out < 0)
        return out

    def leaky_relu_bwd(self, x, gy, negative_slope, out=None):
        if out is None:
            out = np.empty_like(gy)
        np.multiply(gy, negative_slope, out=out)
        np.copyto(out, gy, where=x > 0)
        return out

    def bias_act_(self, y, bias, activation, negative_slope=0.01):
        if bias is not None:
            np.add(y, bias, out=y)
        if activation == "linear":
            return
        if activation == "sigmoid":
            self.sigmoid_fwd(y, out=y)
        elif activation == "relu":
            np.maximum(y, 0.0, out=y)
        elif activation == "leaky_relu":
            self.leaky_relu_fwd(y, negative_slope, out=y)
        elif activation == "tanh":
            np.tanh(y, out=y)
        else:
            raise ValueError(f"bias_act_: unknown activation {activation!r}; expected one of {ACTIVATIONS}")

    # ------------------------------------------------------------------ softmax cross-entropy
    def softmax_cross_entropy(self, logits, labels, ignore_index=-100, reduction="mean",
                              need_grad=True):
        n, c = logits.shape
        out_dtype = logits.dtype
        x = logits.astype(_compute_dtype(out_dtype), copy=False)
        valid = labels != ignore_index
        all_valid = bool(valid.all())
        if all_valid:
            bad = (labels < 0) | (labels >= c)
        else:
            bad = valid & ((labels < 0) | (labels >= c))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise IndexError(
                f"cross_entropy: label {int(labels[i])} at row {i} is outside [0, {c}) "
                f"(ignore_index={ignore_index})")
        safe = labels if all_valid else np.where(valid, labels, 0)
        rows = np.arange(n)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            m = x.max(axis=1, keepdims=True)
            if not np.isfinite(m).all():
                m[~np.isfinite(m)] = 0.0
            z = np.subtract(x, m)  # (N, C) work array, becomes the gradient below
            picked = z[rows, safe]
            np.exp(z, out=z)
            s = z.sum(axis=1)
            loss_rows = np.log(s)
            loss_rows -= picked
            if not all_valid:
                loss_rows[~valid] = 0.0
            count = n if all_valid else int(valid.sum())
            if reduction == "mean":
                scale = 1.0 / max(count, 1)
                loss = np.asarray(loss_rows.sum() * scale, dtype=out_dtype)
            elif reduction == "sum":
                scale = 1.0
                loss = np.asarray(loss_rows.sum(), dtype=out_dtype)
            elif reduction == "none":
                scale = 1.0
                loss = loss_rows.astype(out_dtype, copy=False)
            else:
                raise ValueError(f"cross_entropy: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
            grad = None
            if need_grad:
                np.divide(scale, s, out=s)
                z *= s[:, None]
                z[rows, safe] -= scale
                if not all_valid:
                    z[~valid] = 0.0
                grad = z.astype(out_dtype, copy=False)
        return loss, grad, None

    # ------------------------------------------------------------------ optimizer updates
    def _chunks(self, *arrays):
        """Yield tuples of matching 1-d chunks of the given same-shape arrays."""
        flats = [a.reshape(-1) for a in arrays]
        n = flats[0].size
        if n <= CHUNK:
            yield tuple(flats)
            return
        for s in range(0, n, CHUNK):
            e = min(s + CHUNK, n)
            yield tuple(f[s:e] for f in flats)

    @staticmethod
    def _flat_ok(*arrays):
        return all(a is None or a.flags.c_contiguous for a in arrays)

    def sgd_update_(self, param, grad, momentum_buf, lr, momentum=0.0, dampening=0.0,
                    nesterov=False, weight_decay=0.0, first_step=False):
        if not self._flat_ok(param, grad, momentum_buf):
            raise ValueError("sgd_update_: param, grad and momentum buffer must be C-contiguous")
        work = self.scratch(2 * min(param.size, CHUNK), param.dtype)
        arrays = (param, grad) if momentum_buf is None else (param, grad, momentum_buf)
        for ch in self._chunks(*arrays):
            p, g = ch[0], ch[1]
            k = p.size
            tmp, tmp2 = work[:k], work[k:2 * k]
            d = g
            if weight_decay:
                np.multiply(p, weight_decay, out=tmp)
                np.add(tmp, g, out=tmp)
                d = tmp
            if momentum:
                buf = ch[2]
                if first_step:
                    np.copyto(buf, d)
                else:
                    buf *= momentum
                    if dampening:
                        np.multiply(d, 1.0 - dampening, out=tmp2)
                        buf += tmp2
                    else:
                        buf += d
                if nesterov:
                    np.multiply(buf, momentum, out=tmp2)
                    np.add(d, tmp2, out=tmp2)
                    d = tmp2
                else:
                    d = buf
            np.multiply(d, -lr, out=tmp2)
            p += tmp2

    def adam_update_(self, param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps,
                     weight_decay, step):
        if not self._flat_ok(param, grad, exp_avg, exp_avg_sq):
            raise ValueError("adam_update_: param, grad and state must be C-contiguous")
        dt = param.dtype
        bc1 = 1.0 - beta1 ** step
        bc2_sqrt = math.sqrt(1.0 - beta2 ** step)
        step_size = lr / bc1
        work = self.scratch(2 * min(param.size, CHUNK), dt)
        for p, g, m, v in self._chunks(param, grad, exp_avg, exp_avg_sq):
            k = p.size
            tmp, den = work[:k], work[k:2 * k]
            if weight_decay:
                np.multiply(p, weight_decay, out=den)
                np.add(den, g, out=den)
                g = den
            # m = m + (1 - beta1) * (g - m)   (PyTorch's lerp)
            np.subtract(g, m, out=tmp)
            tmp *= 1.0 - beta1
            m += tmp
            # v = beta2 * v + (1 - beta2) * g * g
            np.multiply(g, g, out=tmp)
            tmp *= 1.0 - beta2
            v *= beta2
            v += tmp
            # p -= step_size * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
            np.sqrt(v, out=den)
            den /= bc2_sqrt
            den += eps
            np.divide(m, den, out=tmp)
            tmp *= -step_size
            p += tmp
