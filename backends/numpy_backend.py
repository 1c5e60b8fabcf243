"""The NumPy backend: the CPU path and the reference twin of every CUDA kernel.

The kernels here use in-place ufuncs with ``out=`` so a training step allocates little. Long
elementwise passes (optimizer updates) run in cache-sized chunks: each chunk goes through every
stage of the update while it sits in L2, which is the CPU analogue of one fused CUDA kernel and
needs only a small scratch buffer instead of parameter-sized temporaries.
"""
from __future__ import annotations

import math

import numpy as np

from . import activations as acts
from . import conv as _conv
from . import pooling as _pool
from .base import Backend, check_reduction
from .scalars import scalar as _s

_TABLE = acts.TABLE

# Elements per chunk for fused elementwise passes: 256K float32 = 1 MiB, about an L2.
CHUNK = 1 << 18
def _labels_in_range(labels, c):
    """Whether every label lies in [0, c), in one reduction.

    Signed labels are read as unsigned, so a negative one becomes at least 2**(bits-1): the
    maximum is below c exactly when all labels are in range, as long as c <= the dtype's
    largest value. Above that (int8 labels and 200 classes), every non-negative label is
    already below c and only the sign needs checking.
    """
    dt = labels.dtype
    if dt.kind == "i":
        if c > _SIGNED_MAX[dt.itemsize]:
            return np.minimum.reduce(labels, axis=None) >= 0
        labels = labels.view(_UNSIGNED[dt.itemsize])
    return np.maximum.reduce(labels, axis=None) < c


_UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_SIGNED_MAX = {n: (1 << (8 * n - 1)) - 1 for n in _UNSIGNED}


def _chunk_slices(n):
    """Slices covering ``range(n)`` in steps of ``CHUNK`` (an update's cache-sized pieces)."""
    return (slice(lo, min(lo + CHUNK, n)) for lo in range(0, n, CHUNK))


def _plus_decay(g, p, c, out):
    """``g + c * p`` (L2 weight decay on the gradient) into ``out``, the optimizers' order."""
    np.multiply(p, c, out=out)
    return np.add(out, g, out=out)


class NumpyBackend(Backend):
    """NumPy arrays on the host CPU."""

    name = "numpy"
    device = "cpu"
    xp = np
    array_type = np.ndarray

    def __init__(self):
        self._rng = np.random.default_rng()
        self._scratch = {}
        self._cache = {}

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

    def get_rng_state(self):
        return {"backend": self.name, "bit_generator": self._rng.bit_generator.state}

    def set_rng_state(self, state):
        try:
            bg_state = state["bit_generator"]
            bg = getattr(np.random, bg_state["bit_generator"])()
            bg.state = bg_state
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise ValueError(f"set_rng_state: not a state from nnx.get_rng_state ({e})") from None
        self._rng = np.random.Generator(bg)

    # float32 and float64 are drawn in their own dtype: drawing float64 and casting made a
    # transient twice the parameter's size (128 MB for a 4096x4096 float32 layer)
    def uniform(self, low, high, shape, dtype):
        dt = np.dtype(dtype)
        if dt not in (np.float32, np.float64):
            return self._rng.uniform(low, high, size=shape).astype(dt)
        a = self._rng.random(size=shape, dtype=dt)
        a *= high - low
        a += low
        return a

    def normal(self, mean, std, shape, dtype):
        dt = np.dtype(dtype)
        if dt not in (np.float32, np.float64):
            return self._rng.normal(mean, std, size=shape).astype(dt)
        a = self._rng.standard_normal(size=shape, dtype=dt)
        a *= std
        a += mean
        return a

    def permutation(self, n):
        return self._rng.permutation(n).astype(np.int64, copy=False)

    def dropout_mask(self, shape, p, dtype):
        rdtype = np.float64 if dtype == np.float64 else np.float32
        keep = self._rng.random(size=shape, dtype=rdtype) >= p
        return np.multiply(keep, 1.0 / (1.0 - p), dtype=dtype)

    # ------------------------------------------------------------------ activations
    # The NumPy twins live beside their CUDA expressions in ``backends.activations``.
    def activation_forward(self, name, x, negative_slope=0.01, out=None):
        if out is None:
            out = np.empty_like(x)
        entry = _TABLE.get(name) or acts.get(name)
        entry.numpy_forward(x, out, negative_slope, None)
        return out

    def activation_backward(self, name, saved, gy, negative_slope=0.01, out=None, aux=None):
        entry = _TABLE.get(name) or acts.get(name)
        return entry.numpy_backward(saved, gy, out, negative_slope, aux)

    def bias_act_(self, y, bias, activation, negative_slope=0.01):
        if bias is not None:
            np.add(y, bias, out=y)
        if activation == acts.LINEAR:
            return None
        entry = _TABLE.get(activation) or acts.get(activation)
        return entry.numpy_forward(y, y, negative_slope, bias)

    def sum_rows(self, g, out=None):
        if g.dtype not in (np.float32, np.float64) or g.size < 4096:
            return np.add.reduce(g, axis=0, out=out)
        # a GEMV with a ones vector: 2-3x faster than the reduction (BLAS, no strided adds)
        return np.dot(self._ones(g.shape[0], g.dtype), g, out=out)

    # ------------------------------------------------------------------ softmax cross-entropy
    def _ones(self, n, dtype):
        key = ("ones", n, dtype)
        ones = self._cache.get(key)
        if ones is None:
            if len(self._cache) > 64:
                self._cache.clear()
            ones = self._cache[key] = np.ones(n, dtype=dtype)
        return ones

    def _row_sums(self, z):
        """(N, C) -> (N,): a GEMV with ones for float32/64 (short rows reduce slowly)."""
        if z.dtype in (np.float32, np.float64) and z.flags.c_contiguous:
            return np.dot(z, self._ones(z.shape[1], z.dtype))
        return np.add.reduce(z, axis=1)

    def _row_offsets(self, n, c):
        """``arange(n) * c`` (int64), cached: flat indices of each row's first element."""
        key = (n, c)
        off = self._cache.get(key)
        if off is None:
            if len(self._cache) > 64:
                self._cache.clear()
            off = self._cache[key] = np.arange(n, dtype=np.int64) * c
        return off

    def softmax_cross_entropy(self, logits, labels, ignore_index=-100, reduction="mean",
                              need_grad=True):
        check_reduction(reduction, "cross_entropy")
        n, c = logits.shape
        out_dtype = logits.dtype
        # float16 accumulates in float32, as in the CUDA kernel
        x = logits.astype(np.float32) if out_dtype == np.float16 else logits
        dt = x.dtype
        valid = None
        if n and not 0 <= ignore_index < c and _labels_in_range(labels, c):
            safe, count = labels, n  # the common case: every label valid, none ignored
        else:
            valid = labels != ignore_index
            bad = valid & ((labels < 0) | (labels >= c))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise IndexError(f"cross_entropy: label {int(labels[i])} at row {i} is outside "
                                 f"[0, {c}) (ignore_index={ignore_index})")
            safe = np.where(valid, labels, 0)
            count = int(np.count_nonzero(valid))
        idx = self._row_offsets(n, c) + safe  # flat index of each row's label
        m = np.maximum.reduce(x, axis=1, keepdims=True)
        finite_max = math.isfinite(np.add.reduce(m, axis=None))
        if not finite_max:
            # a row whose max is not finite (all -inf, or inf/NaN): treat the max as 0
            m = np.where(np.isfinite(m), m, _s(0.0, dt))
        z = np.subtract(x, m)  # (N, C) work array; becomes the gradient below
        zf = z.reshape(-1)
        picked = zf.take(idx)
        np.exp(z, out=z)
        s = self._row_sums(z)
        if finite_max:  # every row sum >= 1 (its max contributes exp(0)): no log(0)
            loss_rows = np.log(s)
        else:
            with np.errstate(divide="ignore"):  # log(0) only for a row of all -inf
                loss_rows = np.log(s)
        loss_rows -= picked
        if valid is not None:
            loss_rows[~valid] = 0.0
        scale = _s(1.0 / max(count, 1) if reduction == "mean" else 1.0, dt)
        if reduction == "none":
            loss = loss_rows.astype(out_dtype, copy=False)
        else:
            loss = np.asarray(np.add.reduce(loss_rows, axis=None) * scale, dtype=out_dtype)
        grad = None
        if need_grad:
            np.divide(scale, s, out=s)
            z *= s.reshape(n, 1)
            if valid is None:
                zf[idx] -= scale
            else:
                zf[idx[valid]] -= scale
                z[~valid] = 0.0
            grad = z if out_dtype == dt else z.astype(out_dtype)
        return loss, grad, None

    # ------------------------------------------------------------------ optimizer updates
    @staticmethod
    def _flat(*arrays):
        """1-d views of C-contiguous arrays (None stays None)."""
        out = []
        for a in arrays:
            if a is not None:
                if not a.flags.c_contiguous:
                    raise ValueError("optimizer updates need C-contiguous param, grad and state")
                a = a.reshape(-1)
            out.append(a)
        return out

    def sgd_update_(self, param, grad, momentum_buf, lr, momentum=0.0, dampening=0.0,
                    nesterov=False, weight_decay=0.0, first_step=False):
        if not momentum and not weight_decay and param.size <= CHUNK and param.ndim == 1 \
                and grad.ndim == 1:  # plain SGD on a small flat buffer: p += (-lr) * g
            n = param.size  # small: a fresh temporary is cheaper than the scratch lookup
            step = np.multiply(grad, _s(-lr, param.dtype),
                               out=self.scratch(n, param.dtype) if n > 65536 else None)
            np.add(param, step, param)
            return
        p_all, g_all, b_all = self._flat(param, grad, momentum_buf)
        dt = param.dtype
        neg_lr, wd, mom = _s(-lr, dt), _s(weight_decay, dt), _s(momentum, dt)
        damp = _s(1.0 - dampening, dt)
        n = p_all.size
        work = self.scratch(2 * min(n, CHUNK), dt)
        for lo in range(0, n, CHUNK):
            hi = min(lo + CHUNK, n)
            p, g = p_all[lo:hi], g_all[lo:hi]
            k = hi - lo
            tmp, tmp2 = work[:k], work[k:2 * k]
            d = g
            if weight_decay:
                d = _plus_decay(g, p, wd, tmp)
            if momentum:
                buf = b_all[lo:hi]
                if first_step:
                    np.copyto(buf, d)
                else:
                    np.multiply(buf, mom, out=buf)
                    if dampening:
                        np.multiply(d, damp, out=tmp2)
                        np.add(buf, tmp2, out=buf)
                    else:
                        np.add(buf, d, out=buf)
                if nesterov:
                    np.multiply(buf, mom, out=tmp2)
                    np.add(d, tmp2, out=tmp2)
                    d = tmp2
                else:
                    d = buf
            np.multiply(d, neg_lr, out=tmp2)
            np.add(p, tmp2, out=p)

    def adam_update_(self, param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps,
                     weight_decay, step, max_exp_avg_sq=None, decoupled=False):
        p_all, g_all, m_all, v_all, vmax_all = self._flat(param, grad, exp_avg, exp_avg_sq,
                                                          max_exp_avg_sq)
        dt = param.dtype
        c_decay = _s(1.0 - lr * weight_decay, dt) if decoupled and weight_decay else None
        if decoupled:
            weight_decay = 0.0
        bc1 = 1.0 - beta1 ** step
        bc2_sqrt = math.sqrt(1.0 - beta2 ** step)
        c_wd, c_1mb1, c_1mb2, c_b2 = _s(weight_decay, dt), _s(1.0 - beta1, dt), _s(1.0 - beta2, dt), _s(beta2, dt)
        # the bias corrections change every step: made fresh, not cached
        c_bc2, c_eps, c_step = dt.type(bc2_sqrt), _s(eps, dt), dt.type(-lr / bc1)
        n = p_all.size
        work = self.scratch(2 * min(n, CHUNK), dt)
        for lo in range(0, n, CHUNK):
            hi = min(lo + CHUNK, n)
            p, g, m, v = p_all[lo:hi], g_all[lo:hi], m_all[lo:hi], v_all[lo:hi]
            k = hi - lo
            tmp, den = work[:k], work[k:2 * k]
            if c_decay is not None:  # AdamW: p *= 1 - lr * weight_decay
                np.multiply(p, c_decay, out=p)
            if weight_decay:
                g = _plus_decay(g, p, c_wd, den)
            # m = m + (1 - beta1) * (g - m)   (PyTorch's lerp)
            np.subtract(g, m, out=tmp)
            np.multiply(tmp, c_1mb1, out=tmp)
            np.add(m, tmp, out=m)
            # v = beta2 * v + (1 - beta2) * g * g
            np.multiply(g, g, out=tmp)
            np.multiply(tmp, c_1mb2, out=tmp)
            np.multiply(v, c_b2, out=v)
            np.add(v, tmp, out=v)
            if vmax_all is not None:  # amsgrad: vmax = max(vmax, v), used in place of v
                v = vmax_all[lo:hi]
                np.maximum(v, v_all[lo:hi], out=v)
            # p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
            np.sqrt(v, out=den)
            np.divide(den, c_bc2, out=den)
            np.add(den, c_eps, out=den)
            np.divide(m, den, out=tmp)
            np.multiply(tmp, c_step, out=tmp)
            np.add(p, tmp, out=p)

    def rmsprop_update_(self, param, grad, square_avg, momentum_buf, grad_avg, lr, alpha, eps,
                        weight_decay=0.0, momentum=0.0, centered=False):
        # The reference rule's op order (nnx.optim.RMSprop.update), so float64 agrees to the bit.
        has_m, centered = momentum > 0, bool(centered)
        if has_m and momentum_buf is None:
            raise ValueError("rmsprop_update_: momentum > 0 needs a momentum buffer")
        if centered and grad_avg is None:
            raise ValueError("rmsprop_update_: centered needs a grad_avg buffer")
        p_all, g_all, v_all, b_all, a_all = self._flat(
            param, grad, square_avg, momentum_buf if has_m else None,
            grad_avg if centered else None)
        dt = param.dtype
        c_wd, c_alpha, c_1ma = _s(weight_decay, dt), _s(alpha, dt), _s(1.0 - alpha, dt)
        c_eps, c_mom, c_neg_lr = _s(eps, dt), _s(momentum, dt), _s(-lr, dt)
        w = 1.0 - alpha  # grad_avg.lerp_(grad, w), PyTorch's two forms
        c_w, c_1mw = _s(w, dt), _s(1.0 - w, dt)
        n = p_all.size
        work = self.scratch(3 * min(n, CHUNK), dt)
        for lo in range(0, n, CHUNK):
            hi = min(lo + CHUNK, n)
            p, g, v = p_all[lo:hi], g_all[lo:hi], v_all[lo:hi]
            k = hi - lo
            dbuf, tmp, avg = work[:k], work[k:2 * k], work[2 * k:3 * k]
            if weight_decay:
                g = _plus_decay(g, p, c_wd, dbuf)
            # v = v * alpha + ((1 - alpha) * g) * g  (in-place operators: the same ufunc calls)
            np.multiply(g, c_1ma, out=tmp)
            tmp *= g
            v *= c_alpha
            v += tmp
            if centered:
                a = a_all[lo:hi]
                np.subtract(g, a, out=tmp)
                if w < 0.5:  # a += w * (g - a)
                    np.multiply(tmp, c_w, out=tmp)
                    np.add(a, tmp, out=a)
                else:  # a = g - (g - a) * (1 - w)
                    np.multiply(tmp, c_1mw, out=tmp)
                    np.subtract(g, tmp, out=a)
                np.multiply(a, a, out=tmp)  # avg = sqrt(v - a * a) + eps
                np.subtract(v, tmp, out=avg)
                np.sqrt(avg, out=avg)
            else:
                np.sqrt(v, out=avg)
            np.add(avg, c_eps, out=avg)
            if has_m:  # buf = buf * momentum + g / avg; p += (-lr) * buf
                b = b_all[lo:hi]
                np.divide(g, avg, out=tmp)
                np.multiply(b, c_mom, out=b)
                np.add(b, tmp, out=b)
                np.multiply(b, c_neg_lr, out=tmp)
            else:  # p += ((-lr) * g) / avg
                np.multiply(g, c_neg_lr, out=tmp)
                np.divide(tmp, avg, out=tmp)
            np.add(p, tmp, out=p)

    # ------------------------------------------------------------------ convolution
    # NHWC im2col + one GEMM per pass; see ``backends.conv``.
    def conv2d_forward(self, x, weight, bias, geometry, save=True, activation="linear",
                       negative_slope=0.01, grad=None):
        return _conv.numpy_forward(self, x, weight, bias, geometry, save, activation,
                                   negative_slope, grad)

    def conv2d_backward(self, x, weight, gy, saved, geometry, need_x=True, need_w=True,
                        need_b=True):
        return _conv.numpy_backward(self, x, weight, gy, saved, geometry, need_x, need_w,
                                    need_b)

    def adagrad_update_(self, param, grad, state_sum, clr, weight_decay=0.0, eps=1e-10):
        # The reference rule's op order (nnx.optim.Adagrad.update).
        p_all, g_all, s_all = self._flat(param, grad, state_sum)
        dt = param.dtype
        c_wd, c_eps, c_neg_clr = _s(weight_decay, dt), _s(eps, dt), dt.type(-clr)  # clr: per step
        work = self.scratch(2 * min(p_all.size, CHUNK), dt)
        for sl in _chunk_slices(p_all.size):
            p, g, sm = p_all[sl], g_all[sl], s_all[sl]
            k = sl.stop - sl.start
            dbuf, std = work[:k], work[k:2 * k]
            if weight_decay:
                g = _plus_decay(g, p, c_wd, dbuf)
            np.multiply(g, g, out=std)  # sum += g * g
            np.add(sm, std, out=sm)
            np.sqrt(sm, out=std)  # std = sqrt(sum) + eps
            np.add(std, c_eps, out=std)
            np.multiply(g, c_neg_clr, out=dbuf)  # p += ((-clr) * g) / std
            np.divide(dbuf, std, out=dbuf)
            np.add(p, dbuf, out=p)

    def adadelta_update_(self, param, grad, square_avg, acc_delta, lr, rho, eps,
                         weight_decay=0.0, maximize=False):
        # The reference rule's op order (nnx.optim.Adadelta.update).
        p_all, g_all, v_all, u_all = self._flat(param, grad, square_avg, acc_delta)
        dt = param.dtype
        c_wd, c_rho, c_1mr = _s(weight_decay, dt), _s(rho, dt), _s(1.0 - rho, dt)
        c_eps, c_neg_lr = _s(eps, dt), _s(-lr, dt)
        work = self.scratch(4 * min(p_all.size, CHUNK), dt)
        for sl in _chunk_slices(p_all.size):
            p, g, v, u = p_all[sl], g_all[sl], v_all[sl], u_all[sl]
            k = sl.stop - sl.start
            gbuf, tmp, std, delta = (work[j * k:(j + 1) * k] for j in range(4))
            if maximize and weight_decay:  # (-g) + wd * p, exactly wd * p - g
                np.multiply(p, c_wd, out=tmp)
                g = np.subtract(tmp, g, out=gbuf)
            elif maximize:
                g = np.negative(g, out=gbuf)
            elif weight_decay:
                g = _plus_decay(g, p, c_wd, gbuf)
            np.multiply(g, c_1mr, out=tmp)  # v = v * rho + ((1 - rho) * g) * g
            tmp *= g
            v *= c_rho
            v += tmp
            np.add(v, c_eps, out=std)  # std = sqrt(v + eps)
            np.sqrt(std, out=std)
            np.add(u, c_eps, out=delta)  # delta = sqrt(u + eps) / std * g
            np.sqrt(delta, out=delta)
            delta /= std
            delta *= g
            np.multiply(delta, c_1mr, out=tmp)  # u = u * rho + ((1 - rho) * delta) * delta
            tmp *= delta
            u *= c_rho
            u += tmp
            np.multiply(delta, c_neg_lr, out=tmp)  # p += (-lr) * delta
            np.add(p, tmp, out=p)

    # ------------------------------------------------------------------ pooling (backends.pooling)
    def max_pool2d_forward(self, x, win):
        return _pool.numpy_max_pool2d_forward(x, win)

    def max_pool2d_backward(self, gy, argmax, win, in_hw):
        return _pool.numpy_max_pool2d_backward(gy, argmax, win, in_hw)

    def avg_pool2d_forward(self, x, win):
        return _pool.numpy_avg_pool2d_forward(x, win)

    def avg_pool2d_backward(self, gy, win, in_hw):
        return _pool.numpy_avg_pool2d_backward(gy, win, in_hw)

    def adaptive_avg_pool2d_forward(self, x, out_hw):
        return _pool.numpy_adaptive_avg_pool2d_forward(x, out_hw)

    def adaptive_avg_pool2d_backward(self, gy, in_hw):
        return _pool.numpy_adaptive_avg_pool2d_backward(gy, in_hw)
