"""The hand-written NumPy floor: each workload's training step with no framework at all.

This is what a NumPy framework could at best be: the step written out by hand, float32
throughout, every buffer preallocated and reused, every op in place (``out=``), parameters and
gradients in one flat buffer each (so the optimizer is one pass), and the same math as the
frameworks (PyTorch's sigmoid, BCE with its -100 log clamp, max-shifted softmax cross-entropy,
PyTorch's SGD, Adam and AdamW rules and ``clip_grad_norm_``).  Its gradients and updates are
checked against nnx and PyTorch in ``tests/test_benchmarks.py``.

Tricks used, each measured on the 2-core host of issue 5 (see ``benchmarks/NOTES.md``):

* constants are 0-d float32 arrays, not Python floats: a ufunc with a Python scalar operand pays
  about 1 us converting it, which is most of a (4, 2) op;
* ``np.dot`` rather than ``np.matmul`` (less dispatch for tiny operands), weights kept in
  PyTorch's (out, in) layout and used through ``.T`` views (BLAS transposes for free);
* ReLU through the int32 bit pattern: ``mask = (0 - bits(x)) >> 31`` is all ones exactly where
  x > 0, ``relu(x) = x & mask`` and the backward is ``g & mask`` (one op, no bool temporaries);
  NumPy's float32 ``maximum`` and the float-times-bool product are several times slower;
* bias gradients as a GEMV with a ones vector (faster than ``sum(axis=0)``);
* the optimizer update walks the flat buffers in cache-sized chunks, so the temporaries stay in
  L2 rather than streaming a second copy of the parameters through memory.

The class is written against an array module ``xp`` (NumPy, or CuPy for a GPU floor).
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import numpy as np

from .workloads import ADAM_BETAS, ADAM_EPS, Workload

F32 = np.float32


class FloorMLP:
    """One workload's model, loss and optimizer, hand-written.

    Args:
        w: the workload.
        params: initial parameters, PyTorch keys and layouts (``init_params``).
        batches: list of host ``(x, y)`` batches cycled through by :meth:`step`.
        xp: the array module (``numpy`` or ``cupy``).
        chunk: elements per chunk of the optimizer update (None: whole buffers at once).
    """

    def __init__(self, w: Workload, params: Dict[str, np.ndarray], batches, xp=np,
                 chunk: Optional[int] = 1 << 18):
        self.w = w
        self.xp = xp
        self.is_numpy = xp is np
        self.chunk = chunk if self.is_numpy else None
        L, B = w.n_layers, w.batch
        self.L, self.B = L, B
        if self.is_numpy:
            def c(v):  # a 0-d float32 array: no per-call scalar conversion in the ufunc
                return np.asarray(v, F32)
        else:
            def c(v):  # a kernel argument: no host-to-device copy (which would sync)
                return float(v)
        self.c = c

        # ---- parameters and gradients: one flat buffer each, views per tensor
        self.flat = xp.empty(w.n_params, F32)
        self.gflat = xp.zeros(w.n_params, F32)
        self.W, self.b, self.gW, self.gb, self.keys = [], [], [], [], []
        off = 0
        for i, (fi, fo) in enumerate(zip(w.sizes[:-1], w.sizes[1:])):
            for lst, glst, shape, key in ((self.W, self.gW, (fo, fi), f"{2 * i}.weight"),
                                          (self.b, self.gb, (fo,), f"{2 * i}.bias")):
                n = int(np.prod(shape))
                lst.append(self.flat[off:off + n].reshape(shape))
                glst.append(self.gflat[off:off + n].reshape(shape))
                lst[-1][...] = xp.asarray(params[key], dtype=F32)
                self.keys.append(key)
                off += n
        self.WT = [W.T for W in self.W]

        # ---- activations: Z[i] holds layer i's pre-activation, then its activation in place;
        # G[i] holds the gradient w.r.t. layer i's pre-activation.
        self.Z = [xp.empty((B, s), F32) for s in w.sizes[1:]]
        self.G = [xp.empty((B, s), F32) for s in w.sizes[1:]]
        self.ones_b = xp.ones(B, F32)
        if w.hidden == "relu":
            self.Zi = [z.view(np.int32) for z in self.Z]
            self.Gi = [g.view(np.int32) for g in self.G]
            self.M = [xp.empty((B, s), np.int32) for s in w.sizes[1:-1]]
        else:
            self.T = [xp.empty((B, s), F32) for s in w.sizes[1:]]
        self.c_one, self.c_zero = c(1.0), c(0.0)
        C = w.sizes[-1]
        if w.loss == "ce":
            self.mx = xp.empty((B, 1), F32)
            self.s = xp.empty((B, 1), F32)
            self.s_flat = self.s.reshape(-1)
            self.ones_c = xp.ones((C, 1), F32)
            self.picked = xp.empty(B, F32)
            self.idx = xp.empty(B, np.int64)
            self.row_off = xp.arange(B, dtype=np.int64) * C
            self.P_flat = self.G[-1].reshape(-1)
            self.c_B, self.c_invB = c(float(B)), c(1.0 / B)
        else:  # sigmoid output + BCE
            self.Q = xp.empty((B, C), F32)
            self.D = xp.empty((B, C), F32)
            self.T1 = xp.empty((B, C), F32)
            self.T2 = xp.empty((B, C), F32)
            self.c_m100, self.c_eps = c(-100.0), c(1e-12)
            self.c_neg_inv_n, self.c_inv_n = c(-1.0 / (B * C)), c(1.0 / (B * C))

        # ---- optimizer state
        self.opt = w.optimizer
        self.step_count = 0
        n = w.n_params
        tmp_n = n if self.chunk is None else min(n, self.chunk)
        self.tmp = xp.empty(tmp_n, F32)
        self.c_lr = c(w.lr)
        if w.optimizer == "sgd":
            self.momentum_buf = xp.zeros(n, F32) if w.momentum else None
            self.c_mom = c(w.momentum)
        else:  # adam, adamw
            self.m = xp.zeros(n, F32)
            self.v = xp.zeros(n, F32)
            self.tmp2 = xp.empty(tmp_n, F32)
            b1, b2 = ADAM_BETAS
            self.c_1mb1, self.c_1mb2 = c(1 - b1), c(1 - b2)
            # AdamW's decoupled decay, p *= 1 - lr * wd (constant: lr is fixed)
            self.c_decay = c(1.0 - w.lr * w.weight_decay) if w.optimizer == "adamw" else None
        self.clip = w.clip
        self._chunks = ([(0, n)] if self.chunk is None
                        else [(s, min(s + self.chunk, n)) for s in range(0, n, self.chunk)])

        # ---- data
        self.batches = [(xp.asarray(x), xp.asarray(y)) for x, y in batches]
        self.i = 0
        self.loss = None
        if w.hidden == "sigmoid" or w.loss == "bce":
            # 1/(1+exp(-x)) overflows to inf (and gives the correct 0) for x < -88; log(0) = -inf
            # is clamped to -100 as in PyTorch's BCE.  Both are correct IEEE results: silence them.
            self._errstate = lambda: np.errstate(over="ignore", divide="ignore")  # noqa: E731
        else:
            self._errstate = None

    # ------------------------------------------------------------------ the step
    def step(self) -> None:
        """One training step on the next batch: forward, loss, backward, update."""
        x, y = self.batches[self.i]
        self.i = (self.i + 1) % len(self.batches)
        if self._errstate is None:
            self._forward_backward(x, y)
        else:
            with self._errstate():
                self._forward_backward(x, y)
        if self.clip is not None:
            self._clip_grad_norm()
        self._update()

    def _clip_grad_norm(self) -> None:
        """``clip_grad_norm_(params, max_norm)``: one norm over the flat gradient (a BLAS dot,
        float32 as PyTorch's), one scale ``min(1, max_norm / (norm + 1e-6))``, in place; the
        multiply is skipped when the scale is 1 (multiplying by 1.0 changes nothing)."""
        xp, g = self.xp, self.gflat
        if not self.is_numpy:  # on the device: no host read-back (which would sync)
            sq = xp.dot(g, g)
            xp.multiply(g, xp.minimum(self.clip / (xp.sqrt(sq) + 1e-6), 1.0).astype(F32), out=g)
            return
        scale = self.clip / (math.sqrt(float(np.dot(g, g))) + 1e-6)
        if scale < 1.0:
            np.multiply(g, np.asarray(scale, F32), out=g)

    def _sigmoid_(self, z):
        xp = self.xp
        xp.negative(z, out=z)
        xp.exp(z, out=z)
        xp.add(z, self.c_one, out=z)
        xp.reciprocal(z, out=z)

    def _forward_backward(self, x, y) -> None:
        xp, L = self.xp, self.L
        dot = xp.dot
        relu = self.w.hidden == "relu"
        # forward
        h = x
        for i in range(L):
            z = self.Z[i]
            dot(h, self.WT[i], out=z)
            xp.add(z, self.b[i], out=z)
            if i < L - 1:
                if relu:
                    zi, m = self.Zi[i], self.M[i]
                    xp.negative(zi, out=m)
                    xp.right_shift(m, 31, out=m)
                    xp.bitwise_and(zi, m, out=zi)
                else:
                    self._sigmoid_(z)
            h = z
        # loss (and its gradient w.r.t. the last pre-activation, into G[-1])
        if self.w.loss == "ce":
            self._softmax_ce(self.Z[-1], y)
        else:
            self._sigmoid_bce(self.Z[-1], y)
        # backward
        for i in range(L - 1, -1, -1):
            g = self.G[i]
            h_prev = x if i == 0 else self.Z[i - 1]
            dot(g.T, h_prev, out=self.gW[i])
            dot(self.ones_b, g, out=self.gb[i])
            if i > 0:
                gp = self.G[i - 1]
                dot(g, self.W[i], out=gp)
                if relu:
                    gpi = self.Gi[i - 1]
                    xp.bitwise_and(gpi, self.M[i - 1], out=gpi)
                else:  # sigmoid: gp *= h (1 - h)
                    hp, t = self.Z[i - 1], self.T[i - 1]
                    xp.subtract(self.c_one, hp, out=t)
                    xp.multiply(t, hp, out=t)
                    xp.multiply(gp, t, out=gp)

    def _softmax_ce(self, z, y) -> None:
        """Mean softmax cross-entropy of logits ``z`` (B, C); its gradient goes into G[-1]."""
        xp = self.xp
        P = self.G[-1]
        if self.is_numpy:
            np.maximum.reduce(z, axis=1, keepdims=True, out=self.mx)
        else:
            xp.amax(z, axis=1, keepdims=True, out=self.mx)
        xp.subtract(z, self.mx, out=P)                  # shifted logits
        xp.add(self.row_off, y, out=self.idx)           # flat index of each row's label
        xp.take(self.P_flat, self.idx, out=self.picked)
        xp.exp(P, out=P)
        xp.dot(P, self.ones_c, out=self.s)               # row sums as a GEMV
        sf = self.s_flat
        # loss = mean(log(sum exp) - shifted[label]); computed into ``picked`` as scratch
        xp.log(sf, out=self.mx.reshape(-1))
        xp.subtract(self.mx.reshape(-1), self.picked, out=self.picked)
        self.loss = xp.dot(self.picked, self.ones_b) * self.c_invB
        # grad = (softmax - onehot) / B
        xp.multiply(self.s, self.c_B, out=self.s)
        xp.divide(P, self.s, out=P)
        self.P_flat[self.idx] -= self.c_invB

    def _sigmoid_bce(self, z, t) -> None:
        """Sigmoid of ``z`` in place, then mean BCE against ``t``; gradient w.r.t. z into G[-1]."""
        xp = self.xp
        self._sigmoid_(z)
        p, Q, D, T1, T2, G = z, self.Q, self.D, self.T1, self.T2, self.G[-1]
        # loss = -mean(t * max(log p, -100) + (1 - t) * max(log(1 - p), -100))
        xp.subtract(self.c_one, p, out=Q)
        xp.log(p, out=T1)
        xp.maximum(T1, self.c_m100, out=T1)
        xp.log(Q, out=T2)
        xp.maximum(T2, self.c_m100, out=T2)
        xp.subtract(T1, T2, out=T1)
        xp.multiply(T1, t, out=T1)
        xp.add(T1, T2, out=T1)
        self.loss = xp.sum(T1) * self.c_neg_inv_n
        # dL/dp = (p - t) / max(p (1 - p), 1e-12) / n  (PyTorch's BCE backward), then the
        # sigmoid's backward multiplies by p (1 - p)
        xp.multiply(Q, p, out=Q)
        xp.maximum(Q, self.c_eps, out=D)
        xp.subtract(p, t, out=G)
        xp.divide(G, D, out=G)
        xp.multiply(Q, self.c_inv_n, out=Q)
        xp.multiply(G, Q, out=G)

    # ------------------------------------------------------------------ optimizers
    def _update(self) -> None:
        self.step_count += 1
        if self.opt == "sgd":
            self._sgd()
        else:
            self._adam()

    def _sgd(self) -> None:
        xp, p, g, buf = self.xp, self.flat, self.gflat, self.momentum_buf
        first = self.step_count == 1
        for s, e in self._chunks:
            t = self.tmp[:e - s]
            gs = g[s:e]
            if buf is not None:
                b = buf[s:e]
                if first:
                    b[...] = gs
                else:
                    xp.multiply(b, self.c_mom, out=b)
                    xp.add(b, gs, out=b)
                gs = b
            xp.multiply(gs, self.c_lr, out=t)
            xp.subtract(p[s:e], t, out=p[s:e])

    def _adam(self) -> None:
        xp, p, g, m, v = self.xp, self.flat, self.gflat, self.m, self.v
        b1, b2 = ADAM_BETAS
        k = self.step_count
        bc1, bc2 = 1 - b1 ** k, 1 - b2 ** k
        # p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)
        #    = p - (lr*sqrt(bc2)/bc1) * m / (sqrt(v) + eps*sqrt(bc2))
        c_eps = self.c(ADAM_EPS * math.sqrt(bc2))
        c_step = self.c(self.w.lr * math.sqrt(bc2) / bc1)
        decay = self.c_decay
        for s, e in self._chunks:
            t, t2 = self.tmp[:e - s], self.tmp2[:e - s]
            gs, ms, vs, ps = g[s:e], m[s:e], v[s:e], p[s:e]
            if decay is not None:  # AdamW: p *= 1 - lr * wd before the Adam step
                xp.multiply(ps, decay, out=ps)
            # m += (1 - b1) (g - m)
            xp.subtract(gs, ms, out=t)
            xp.multiply(t, self.c_1mb1, out=t)
            xp.add(ms, t, out=ms)
            # v += (1 - b2) (g^2 - v)
            xp.multiply(gs, gs, out=t2)
            xp.subtract(t2, vs, out=t2)
            xp.multiply(t2, self.c_1mb2, out=t2)
            xp.add(vs, t2, out=vs)
            # p -= step * m / (sqrt(v) + eps')
            xp.sqrt(vs, out=t)
            xp.add(t, c_eps, out=t)
            xp.divide(ms, t, out=t)
            xp.multiply(t, c_step, out=t)
            xp.subtract(ps, t, out=ps)

    # ------------------------------------------------------------------ inspection (tests)
    def gradients(self, batch: int = 0) -> Dict[str, np.ndarray]:
        """Forward and backward on ``batches[batch]`` (no update); host gradients by key."""
        x, y = self.batches[batch]
        if self._errstate is None:
            self._forward_backward(x, y)
        else:
            with self._errstate():
                self._forward_backward(x, y)
        return self._host({k: t for k, t in zip(self.keys, self._interleave(self.gW, self.gb))})

    def state_dict(self) -> Dict[str, np.ndarray]:
        return self._host({k: t for k, t in zip(self.keys, self._interleave(self.W, self.b))})

    def loss_value(self) -> float:
        return float(self.loss)

    @staticmethod
    def _interleave(a, b):
        out = []
        for x, y in zip(a, b):
            out += [x, y]
        return out

    def _host(self, d):
        if self.is_numpy:
            return {k: np.array(v) for k, v in d.items()}
        return {k: self.xp.asnumpy(v) for k, v in d.items()}

    def sync(self) -> None:
        if not self.is_numpy:
            self.xp.cuda.get_current_stream().synchronize()
