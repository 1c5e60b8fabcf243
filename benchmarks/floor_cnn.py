"""The hand-written NumPy floor of workload D (``mnist-cnn``): PyTorch's MNIST convnet, one SGD
step, no framework.

The model (batch N = 128 of 1x28x28 float32)::

    conv 1->32 3x3, ReLU, conv 32->64 3x3, ReLU, max-pool 2, flatten, Linear 9216->128, ReLU,
    Linear 128->10, softmax cross-entropy, SGD

The parameters come in PyTorch's layouts (``init_params``, ``state_dict`` keys); inside, the
floor keeps every activation NHWC (channels innermost) and each parameter in the layout its
GEMM wants, converted once at construction and back in :meth:`state_dict` / :meth:`gradients`:

* conv weights as ``(kh*kw*in, out)`` matrices (rows in (kh, kw, in) order);
* fc1's columns permuted from PyTorch's (c, h, w) flatten order to the floor's (h, w, c), so
  ``flatten`` of the NHWC pooled map is a free reshape.

Every conv pass is one BLAS GEMM over an im2col buffer filled by ONE strided copy (an
``as_strided`` window view, whose innermost (kw, c) axes are one contiguous run in NHWC), and
the data gradient's col2im is nine adds of contiguous channel runs per chunk of 16 images,
each right after the GEMM that made its slab (in cache: 0.54x the time of one big GEMM
followed by nine full-size strided adds, measured interleaved). Buffers are allocated once;
the largest is conv2's im2col (85 MB at N = 128).

Exact shortcuts, each equal to the plain computation (not approximations):

* ReLU through the int32 bit pattern, as the MLP floor (``floor.py``);
* max-pool keeps the three comparisons of its 2x2 reduction as int32 masks and routes the
  gradient to the first maximum (PyTorch's rule) with four masked writes that tile the
  gradient map, so it needs no zero fill;
* ReLU before a max-pool: the pooled value is the ReLU'd maximum, so the ReLU's backward mask
  is applied on the 4x smaller pooled grid (the pooled position is the unit whose ReLU'd value
  is the maximum; its ReLU passed the gradient iff that maximum is > 0);
* conv2's bias gradient sums the pooled-grid gradient (the scatter to the window maxima keeps
  sums), a GEMV 4x smaller than over the full map.
"""
from __future__ import annotations

from typing import Dict

import numpy as np
from numpy.lib.stride_tricks import as_strided

F32 = np.float32
I32 = np.int32


def _relu_(z, zi, mask):
    """In place ReLU of float32 ``z`` (``zi`` its int32 view); ``mask`` (int32, same shape)
    receives all ones where z > 0 (bit trick: ``(0 - bits) >> 31``)."""
    np.negative(zi, out=mask)
    np.right_shift(mask, 31, out=mask)
    np.bitwise_and(zi, mask, out=zi)


def _windows(a, k):
    """The k x k stride-1 windows of NHWC ``a`` (N, H, W, C) as a view (N, Ho, Wo, k, k, C)."""
    n, h, w, c = a.shape
    s = a.strides
    return as_strided(a, (n, h - k + 1, w - k + 1, k, k, c), (s[0], s[1], s[2], s[1], s[2], s[3]),
                      writeable=False)


class FloorCNN:
    """Workload D's model, loss and SGD, hand-written in NumPy (float32).

    Args:
        w: the workload (``arch == "cnn"``).
        params: initial parameters, PyTorch keys and layouts.
        batches: host ``(x, y)`` batches, x (N, 1, 28, 28) float32, y (N,) int64.
    """

    def __init__(self, w, params: Dict[str, np.ndarray], batches, xp=np):
        if xp is not np:
            raise TypeError("FloorCNN runs on NumPy only")
        self.w = w
        self.xp = np
        N = self.N = w.batch
        c0, c1, c2 = w.channels
        k = self.k = w.kernel
        H0, W0 = w.image
        H1, W1 = H0 - k + 1, W0 - k + 1           # 26 x 26 after conv1
        H2, W2 = H1 - k + 1, W1 - k + 1           # 24 x 24 after conv2
        P = w.pool
        H3, W3 = H2 // P, W2 // P                 # 12 x 12 after the pool
        f_in, f_hid, f_out = w.sizes
        if P != 2:
            raise ValueError("FloorCNN: the max-pool is 2x2")
        if f_in != H3 * W3 * c2:
            raise ValueError(f"FloorCNN: fc1 takes {f_in} inputs, the pooled map has "
                             f"{H3 * W3 * c2}")
        self.dims = (c0, c1, c2, H1, W1, H2, W2, H3, W3, f_in, f_hid, f_out)
        self.c = lambda v: np.asarray(v, F32)  # noqa: E731 (0-d constants: no scalar conversion)

        # ---- parameters and gradients: one flat buffer each, views in the floor's layouts
        shapes = [("0.weight", (k * k * c0, c1)), ("0.bias", (c1,)),
                  ("2.weight", (k * k * c1, c2)), ("2.bias", (c2,)),
                  ("6.weight", (f_hid, f_in)), ("6.bias", (f_hid,)),
                  ("8.weight", (f_out, f_hid)), ("8.bias", (f_out,))]
        n = sum(int(np.prod(s)) for _, s in shapes)
        self.flat = np.empty(n, F32)
        self.gflat = np.zeros(n, F32)
        self.p, self.g = {}, {}
        off = 0
        for key, s in shapes:
            m = int(np.prod(s))
            self.p[key] = self.flat[off:off + m].reshape(s)
            self.g[key] = self.gflat[off:off + m].reshape(s)
            off += m
        self.keys = [key for key, _ in shapes]
        self._torch_shapes = {key: tuple(np.shape(params[key])) for key in self.keys}
        for key in self.keys:
            self.p[key][...] = self._to_floor(key, np.asarray(params[key], F32))
        self.W1, self.b1 = self.p["0.weight"], self.p["0.bias"]
        self.W2, self.b2 = self.p["2.weight"], self.p["2.bias"]
        self.Wf1T, self.bf1 = self.p["6.weight"].T, self.p["6.bias"]
        self.Wf1 = self.p["6.weight"]
        self.Wf2T, self.bf2 = self.p["8.weight"].T, self.p["8.bias"]
        self.Wf2 = self.p["8.weight"]

        # ---- activations and their gradients (NHWC), allocated once
        e = np.empty
        self.cols1 = e((N, H1, W1, k, k, c0), F32)
        self.cols1_2d = self.cols1.reshape(N * H1 * W1, k * k * c0)
        self.h1 = e((N, H1, W1, c1), F32)
        self.h1_2d = self.h1.reshape(N * H1 * W1, c1)
        self.h1i = self.h1.view(I32)
        self.m1 = e((N, H1, W1, c1), I32)
        self.cols2 = e((N, H2, W2, k, k, c1), F32)     # im2col of conv2
        self.cols2_2d = self.cols2.reshape(N * H2 * W2, k * k * c1)
        self.h2 = e((N, H2, W2, c2), F32)
        self.h2_2d = self.h2.reshape(N * H2 * W2, c2)
        self.h2_6 = self.h2.reshape(N, H3, P, W3, P, c2)
        self.pool = e((N, H3, W3, c2), F32)
        self.pool_2d = self.pool.reshape(N, f_in)
        self.t1 = e((N, H3, W3, c2), F32)              # max of the top pair, then scratch
        self.t2 = e((N, H3, W3, c2), F32)              # max of the bottom pair
        self.s_top = e((N, H3, W3, c2), I32)           # all ones where (0,1) beats (0,0)
        self.s_bot = e((N, H3, W3, c2), I32)           # all ones where (1,1) beats (1,0)
        self.s_row = e((N, H3, W3, c2), I32)           # all ones where the bottom pair wins
        self.sel = e((N, H3, W3, c2), I32)             # scratch: one window position's mask
        self.b_cmp = e((N, H3, W3, c2), np.bool_)
        self.z3 = e((N, f_hid), F32)
        self.z3i = self.z3.view(I32)
        self.m3 = e((N, f_hid), I32)
        self.z4 = e((N, f_out), F32)
        # gradients
        self.G4 = e((N, f_out), F32)
        self.G3 = e((N, f_hid), F32)
        self.G3i = self.G3.view(I32)
        self.Gp = e((N, H3, W3, c2), F32)
        self.Gp_2d = self.Gp.reshape(N, f_in)
        self.Gpi = self.Gp.view(I32)
        self.Gp_rows = self.Gp.reshape(N * H3 * W3, c2)
        self.Gh2 = e((N, H2, W2, c2), F32)
        self.Gh2_2d = self.Gh2.reshape(N * H2 * W2, c2)
        self.Gh2i_6 = self.Gh2.view(I32).reshape(N, H3, P, W3, P, c2)
        self.G1 = e((N, H1, W1, c1), F32)
        self.G1_2d = self.G1.reshape(N * H1 * W1, c1)
        self.G1i = self.G1.view(I32)
        # conv2's data gradient, per chunk of images and kernel offset (see the backward)
        self.dchunk = next(d for d in (16, 8, 4, 2, 1) if N % d == 0)
        self.dbuf = e((self.dchunk, H2, W2, c1), F32)
        self.dbuf_2d = self.dbuf.reshape(self.dchunk * H2 * W2, c1)
        W2v = self.W2.reshape(k, k, c1, c2)
        # per-offset (c2, c1) views of W2 (its transpose: dL/dcols = dL/dh2 @ W2^T)
        self.W2k = [W2v[i, j].T for i in range(k) for j in range(k)]
        self.ones_n = np.ones(N, F32)
        self.ones_pool = np.ones(N * H3 * W3, F32)
        self.ones_h1 = np.ones(N * H1 * W1, F32)
        # softmax cross-entropy
        self.mx = e((N, 1), F32)
        self.s = e((N, 1), F32)
        self.ones_c = np.ones((f_out, 1), F32)
        self.picked = e(N, F32)
        self.idx = e(N, np.int64)
        self.row_off = np.arange(N, dtype=np.int64) * f_out
        self.G4_flat = self.G4.reshape(-1)
        self.c_B, self.c_invB = self.c(float(N)), self.c(1.0 / N)
        self.c_lr = self.c(w.lr)
        self.c_zero = self.c(0.0)
        self.chunk = 1 << 18
        self.tmp = e(min(n, self.chunk), F32)
        self._chunks = [(s, min(s + self.chunk, n)) for s in range(0, n, self.chunk)]

        # ---- data: x as NHWC (C = 1: the same memory as NCHW)
        self.batches = []
        for x, y in batches:
            x = np.ascontiguousarray(np.asarray(x, F32).transpose(0, 2, 3, 1))
            self.batches.append((x, np.asarray(y, np.int64)))
        self.i = 0
        self.loss = None

    # ------------------------------------------------------------------ layouts
    def _to_floor(self, key, a):
        """PyTorch layout -> the floor's."""
        if a.ndim == 4:  # conv (out, in, kh, kw) -> (kh*kw*in, out)
            o = a.shape[0]
            return a.transpose(2, 3, 1, 0).reshape(-1, o)
        if key == "6.weight":  # fc1 columns (c, h, w) -> (h, w, c)
            c2, H3, W3 = self.w.channels[-1], *self._pooled()
            return a.reshape(-1, c2, H3, W3).transpose(0, 2, 3, 1).reshape(a.shape[0], -1)
        return a

    def _to_torch(self, key, a):
        """The floor's layout -> PyTorch's (a host copy)."""
        shape = self._torch_shapes[key]
        if len(shape) == 4:
            o, i, kh, kw = shape
            return np.ascontiguousarray(a.reshape(kh, kw, i, o).transpose(3, 2, 0, 1))
        if key == "6.weight":
            c2, H3, W3 = self.w.channels[-1], *self._pooled()
            return np.ascontiguousarray(
                a.reshape(-1, H3, W3, c2).transpose(0, 3, 1, 2).reshape(a.shape[0], -1))
        return np.array(a)

    def _pooled(self):
        k, P = self.w.kernel, self.w.pool
        H0, W0 = self.w.image
        return (H0 - 2 * (k - 1)) // P, (W0 - 2 * (k - 1)) // P

    # ------------------------------------------------------------------ the step
    def step(self) -> None:
        x, y = self.batches[self.i]
        self.i = (self.i + 1) % len(self.batches)
        self._forward_backward(x, y)
        self._sgd()

    def _forward_backward(self, x, y) -> None:
        dot, k = np.dot, self.k
        c0, c1, c2, H1, W1, H2, W2, H3, W3, f_in, f_hid, f_out = self.dims
        # conv1 + ReLU: one strided copy into the im2col buffer, one GEMM
        np.copyto(self.cols1, _windows(x, k))
        dot(self.cols1_2d, self.W1, out=self.h1_2d)
        np.add(self.h1_2d, self.b1, out=self.h1_2d)
        _relu_(self.h1, self.h1i, self.m1)
        # conv2 + ReLU
        np.copyto(self.cols2, _windows(self.h1, k))
        dot(self.cols2_2d, self.W2, out=self.h2_2d)
        np.add(self.h2_2d, self.b2, out=self.h2_2d)
        np.maximum(self.h2, self.c_zero, out=self.h2)  # no mask: the backward masks the pooled grid
        # 2x2 max-pool; the comparisons are kept (as int32 all-ones masks) for the backward
        v = self.h2_6
        a00, a01, a10, a11 = v[:, :, 0, :, 0], v[:, :, 0, :, 1], v[:, :, 1, :, 0], v[:, :, 1, :, 1]
        t1, t2, b = self.t1, self.t2, self.b_cmp
        np.greater(a01, a00, out=b)
        np.negative(b.view(np.int8), out=self.s_top, casting="unsafe")
        np.maximum(a00, a01, out=t1)
        np.greater(a11, a10, out=b)
        np.negative(b.view(np.int8), out=self.s_bot, casting="unsafe")
        np.maximum(a10, a11, out=t2)
        np.greater(t2, t1, out=b)
        np.negative(b.view(np.int8), out=self.s_row, casting="unsafe")
        np.maximum(t1, t2, out=self.pool)
        # fc1 + ReLU, fc2
        dot(self.pool_2d, self.Wf1T, out=self.z3)
        np.add(self.z3, self.bf1, out=self.z3)
        _relu_(self.z3, self.z3i, self.m3)
        dot(self.z3, self.Wf2T, out=self.z4)
        np.add(self.z4, self.bf2, out=self.z4)
        self._softmax_ce(self.z4, y)

        # ---- backward
        g = self.g
        dot(self.G4.T, self.z3, out=g["8.weight"])
        dot(self.ones_n, self.G4, out=g["8.bias"])
        dot(self.G4, self.Wf2, out=self.G3)
        np.bitwise_and(self.G3i, self.m3, out=self.G3i)
        dot(self.G3.T, self.pool_2d, out=g["6.weight"])
        dot(self.ones_n, self.G3, out=g["6.bias"])
        dot(self.G3, self.Wf1, out=self.Gp_2d)
        # conv2's ReLU on the pooled grid: pass where the pooled maximum is > 0
        sel = self.sel
        np.greater(self.pool, self.c_zero, out=self.b_cmp)  # exact for -0.0 too
        np.negative(self.b_cmp.view(np.int8), out=sel, casting="unsafe")
        np.bitwise_and(self.Gpi, sel, out=self.Gpi)
        dot(self.ones_pool, self.Gp_rows, out=g["2.bias"])
        # route the pooled gradient to each window's first maximum: four writes tile Gh2
        gp, gv, row, top, bot = self.Gpi, self.Gh2i_6, self.s_row, self.s_top, self.s_bot
        # (0,0): ~row & ~top; (0,1): ~row & top; (1,0): row & ~bot; (1,1): row & bot
        np.bitwise_or(row, top, out=sel)
        np.bitwise_not(sel, out=sel)
        np.bitwise_and(gp, sel, out=gv[:, :, 0, :, 0])
        np.bitwise_not(row, out=sel)
        np.bitwise_and(sel, top, out=sel)
        np.bitwise_and(gp, sel, out=gv[:, :, 0, :, 1])
        np.bitwise_not(bot, out=sel)
        np.bitwise_and(sel, row, out=sel)
        np.bitwise_and(gp, sel, out=gv[:, :, 1, :, 0])
        np.bitwise_and(row, bot, out=sel)
        np.bitwise_and(gp, sel, out=gv[:, :, 1, :, 1])
        # conv2: weight gradient from the im2col buffer
        dot(self.cols2_2d.T, self.Gh2_2d, out=g["2.weight"])
        # data gradient + col2im, fused per kernel offset and per chunk of images so that each
        # offset's (chunk, H2, W2, c1) slab is added while it is still in cache: one GEMM per
        # (chunk, offset) into a contiguous buffer, then one add of contiguous channel runs
        G1, buf, buf2, rows, nc = self.G1, self.dbuf, self.dbuf_2d, H2 * W2, self.dchunk
        G1.fill(0)
        Wk = self.W2k
        for s in range(0, self.N, nc):
            gh = self.Gh2_2d[s * rows:(s + nc) * rows]
            g1 = G1[s:s + nc]
            for i in range(k):
                for j in range(k):
                    dot(gh, Wk[i * k + j], out=buf2)
                    tgt = g1[:, i:i + H2, j:j + W2, :]
                    np.add(tgt, buf, out=tgt)
        np.bitwise_and(self.G1i, self.m1, out=self.G1i)
        dot(self.cols1_2d.T, self.G1_2d, out=g["0.weight"])
        dot(self.ones_h1, self.G1_2d, out=g["0.bias"])

    def _softmax_ce(self, z, y) -> None:
        """Mean softmax cross-entropy of logits ``z`` (N, C); its gradient into ``G4``."""
        P = self.G4
        np.maximum.reduce(z, axis=1, keepdims=True, out=self.mx)
        np.subtract(z, self.mx, out=P)
        np.add(self.row_off, y, out=self.idx)
        np.take(self.G4_flat, self.idx, out=self.picked)
        np.exp(P, out=P)
        np.dot(P, self.ones_c, out=self.s)
        m = self.mx.reshape(-1)
        np.log(self.s.reshape(-1), out=m)
        np.subtract(m, self.picked, out=self.picked)
        self.loss = np.dot(self.picked, self.ones_n) * self.c_invB
        np.multiply(self.s, self.c_B, out=self.s)
        np.divide(P, self.s, out=P)
        self.G4_flat[self.idx] -= self.c_invB

    def _sgd(self) -> None:
        p, g = self.flat, self.gflat
        for s, e in self._chunks:
            t = self.tmp[:e - s]
            np.multiply(g[s:e], self.c_lr, out=t)
            np.subtract(p[s:e], t, out=p[s:e])

    # ------------------------------------------------------------------ inspection (tests)
    def gradients(self, batch: int = 0) -> Dict[str, np.ndarray]:
        x, y = self.batches[batch]
        self._forward_backward(x, y)
        return {key: self._to_torch(key, self.g[key]) for key in self.keys}

    def state_dict(self) -> Dict[str, np.ndarray]:
        return {key: self._to_torch(key, self.p[key]) for key in self.keys}

    def loss_value(self) -> float:
        return float(self.loss)

    def sync(self) -> None:
        pass
