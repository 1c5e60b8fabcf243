"""2-D convolution (and 1-D as one row of it): the NumPy path, the CUDA kernels and their CuPy
launch wrappers, side by side.

A convolution is described by a :class:`Geometry` (kernel, stride, padding as four sides,
dilation, groups). Arrays are NCHW: input ``x`` (N, C, H, W), weight ``w`` (O, C/groups, kh,
kw), bias (O,), output ``y`` (N, O, OH, OW) with ``OH = (H + pt + pb - dh*(kh-1) - 1)//sh + 1``.

NumPy (``numpy_forward`` / ``numpy_backward``)
    Channels innermost inside: the input is read as NHWC (a free view of channels-last
    arrays; one transposed copy otherwise, merged with the zero padding), the im2col matrix
    ``cols (N*OH*OW, kh*kw*C/g)`` is filled by ONE strided copy from an ``as_strided`` window
    view (its (kw, C) axes are one contiguous run), and each pass is one BLAS GEMM:
    ``y = cols @ W'`` (forward), ``gW' = gy^T @ cols`` (weight gradient) and
    ``gcols = gy @ W'^T`` followed by a col2im of kh*kw strided adds (data gradient), where
    ``W' (kh*kw*C/g, O)`` is the weight permuted to the cols' row order (an NCHW ``gy`` is
    read in place by per-sample GEMMs). Outputs and input gradients are NCHW views of
    channels-last arrays, or C-contiguous NCHW (``OUTPUT_LAYOUT``). A fused activation
    (ReLU, sigmoid, tanh, leaky ReLU) is applied with the bias to cache-sized pieces of the
    GEMM output; ReLU keeps an int mask the backward ANDs the incoming gradient with, in the
    same pass that reads it channels-last. The data gradient of a wide ungrouped conv goes tap
    by tap (one GEMM per tap into a cache-sized slab, added at its window right away). The forward's cols are kept for
    the weight gradient when they fit under the workspace limit (:func:`set_workspace_limit`,
    256 MiB by default); larger batches run in batch chunks (cols recomputed in the
    backward). The data gradient's gcols goes through a small buffer, chunk by chunk. Work
    buffers come from a per-backend pool (:class:`BufferPool`) and go back to it, so a
    training step reuses the same memory step after step; a layer whose input needs no
    gradient (the first) skips the data gradient.

CUDA (``cupy_forward`` / ``cupy_backward``)
    NCHW throughout: ``nnx_im2col_<sfx>`` writes ``cols (nb, C*kh*kw, OH*OW)`` (one thread per
    element, coalesced along OW), the GEMMs are ``cupy.matmul`` (cuBLAS, batched over samples
    and groups), and ``nnx_col2im_<sfx>`` gathers the data gradient (one thread per input
    element summing the taps that touch it: no atomics, deterministic). No host sync.
"""
from __future__ import annotations

import threading

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import activations as _acts
from . import cuda_kernels as ck
from .activations import LINEAR
from .scalars import scalar

__all__ = ["Geometry", "output_size", "set_workspace_limit", "get_workspace_limit",
           "BufferPool", "pool_of", "numpy_forward", "numpy_backward", "cupy_forward",
           "cupy_backward",
           "im2col_numpy", "col2im_numpy", "im2col_reference", "col2im_reference"]

_LIMIT = [256 << 20]


def set_workspace_limit(nbytes: int) -> int:
    """Cap the im2col workspace of one conv call at ``nbytes`` (a batch whose cols exceed it
    runs in batch chunks); returns the previous cap."""
    if int(nbytes) < 1:
        raise ValueError(f"set_workspace_limit: nbytes must be >= 1, got {nbytes}")
    old, _LIMIT[0] = _LIMIT[0], int(nbytes)
    return old


def get_workspace_limit() -> int:
    """The im2col workspace cap of one conv call, in bytes."""
    return _LIMIT[0]


def output_size(size: int, k: int, s: int, p_lo: int, p_hi: int, d: int) -> int:
    """Output length of one axis: ``(size + p_lo + p_hi - d*(k-1) - 1) // s + 1`` (may be <= 0
    when the dilated kernel is larger than the padded input)."""
    return (size + p_lo + p_hi - d * (k - 1) - 1) // s + 1


class Geometry:
    """kernel (kh, kw), stride (sh, sw), padding (pt, pb, pl, pr: top, bottom, left, right),
    dilation (dh, dw) and groups of a 2-D convolution: Python ints, validated by the caller.
    Not a tuple, so that it passes the strict backend's array unwrapping untouched."""

    __slots__ = ("kh", "kw", "sh", "sw", "pt", "pb", "pl", "pr", "dh", "dw", "groups")

    def __init__(self, kh, kw, sh=1, sw=1, pt=0, pb=0, pl=0, pr=0, dh=1, dw=1, groups=1):
        for name, v in zip(self.__slots__, (kh, kw, sh, sw, pt, pb, pl, pr, dh, dw, groups)):
            object.__setattr__(self, name, int(v))

    def __setattr__(self, name, value):
        raise AttributeError("Geometry is immutable; use replace(...)")

    def replace(self, **changes) -> "Geometry":
        return Geometry(**{**{k: getattr(self, k) for k in self.__slots__}, **changes})

    def __eq__(self, other):
        return isinstance(other, Geometry) and all(
            getattr(self, k) == getattr(other, k) for k in self.__slots__)

    __hash__ = None

    def __repr__(self):
        return "Geometry(" + ", ".join(f"{k}={getattr(self, k)}" for k in self.__slots__) + ")"

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        return (output_size(h, self.kh, self.sh, self.pt, self.pb, self.dh),
                output_size(w, self.kw, self.sw, self.pl, self.pr, self.dw))

    @property
    def padded(self) -> bool:
        return bool(self.pt or self.pb or self.pl or self.pr)


def _batch_chunk(n: int, per_sample_bytes: int, limit: int) -> int:
    """Samples per chunk so that a chunk's workspace stays under ``limit`` (at least 1)."""
    return max(1, min(n, limit // max(per_sample_bytes, 1)))


class BufferPool:
    """Free work buffers of one backend, reused across calls (and steps).

    ``take(n, dtype)`` hands out a flat array of exactly ``n`` elements, removed from the pool
    (so two live convolutions never share one); ``give(buf)`` puts it back. At most ``keep``
    free buffers are kept per size and ``max_bytes`` in all; anything else is dropped to the
    garbage collector.
    """

    def __init__(self, xp, keep: int = 4, max_bytes: int = 1 << 30):
        self.xp, self.keep, self.max_bytes = xp, keep, max_bytes
        self._free: dict = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def take(self, n: int, dtype):
        key = (int(n), np.dtype(dtype))
        with self._lock:
            bucket = self._free.get(key)
            if bucket:
                buf = bucket.pop()
                self._bytes -= buf.nbytes
                return buf
        return self.xp.empty(key[0], dtype=key[1])

    def give(self, buf) -> None:
        if buf is None:
            return
        key = (buf.size, buf.dtype)
        with self._lock:
            bucket = self._free.setdefault(key, [])
            if len(bucket) < self.keep and self._bytes + buf.nbytes <= self.max_bytes:
                bucket.append(buf)
                self._bytes += buf.nbytes

    def clear(self) -> None:
        with self._lock:
            self._free.clear()
            self._bytes = 0


def pool_of(backend) -> BufferPool:
    """The conv work-buffer pool of ``backend`` (made on first use)."""
    pool = backend.__dict__.get("_conv_pool")
    if pool is None:
        pool = backend.__dict__["_conv_pool"] = BufferPool(np)
    return pool


class Saved:
    """What a forward keeps for its backward: the im2col matrix (NumPy) when it fit in one
    chunk, the pool it came from (given back by ``release``), and for a fused activation its
    name, parameter, the output ``y`` and (NumPy ReLU) the y > 0 mask, an int array in the
    channels-last order (N, OH, OW, O) from the pool."""

    __slots__ = ("cols", "pool", "activation", "slope", "y", "mask")

    def __init__(self, cols=None, pool=None, activation=LINEAR, slope=0.01, y=None, mask=None):
        self.cols, self.pool = cols, pool
        self.activation, self.slope, self.y, self.mask = activation, slope, y, mask

    def release(self) -> None:
        if self.pool is not None:
            if self.cols is not None:
                self.pool.give(self.cols)
            if self.mask is not None:
                self.pool.give(self.mask.reshape(-1))
        self.cols = self.mask = self.y = None


# ============================================================================== NumPy
def _nhwc(x):
    """(N, C, H, W) -> an (N, H, W, C) view (the caller copies it if it is not contiguous)."""
    return x.transpose(0, 2, 3, 1)


def _weight_matrix(w, g: Geometry):
    """(O, C/g, kh, kw) -> W' (g, kh*kw*C/g, O/g), rows in (kh, kw, c) order (a small copy)."""
    o, cg, kh, kw = w.shape
    gr = g.groups
    return np.ascontiguousarray(
        w.reshape(gr, o // gr, cg, kh, kw).transpose(0, 3, 4, 2, 1)).reshape(gr, kh * kw * cg, o // gr)


def _padded_source(xh, g: Geometry, pool, n0: int, n1: int):
    """Samples n0:n1 of NHWC ``xh`` padded with zeros: (xsrc, buffer to give back or None)."""
    part = xh[n0:n1]
    if not g.padded:
        if part.shape[3] > 1 and not part[0].flags.c_contiguous:
            buf = pool.take(part.size, part.dtype)
            src = buf.reshape(part.shape)
            np.copyto(src, part)
            return src, buf
        return part, None
    nb, h, w, c = part.shape
    hp, wp = h + g.pt + g.pb, w + g.pl + g.pr
    buf = pool.take(nb * hp * wp * c, part.dtype)
    src = buf.reshape(nb, hp, wp, c)
    # zero the border only; the interior is overwritten (and transposed, if NCHW) in one copy
    src[:, :g.pt] = 0
    src[:, hp - g.pb:] = 0
    src[:, :, :g.pl] = 0
    src[:, :, wp - g.pr:] = 0
    np.copyto(src[:, g.pt:g.pt + h, g.pl:g.pl + w], part)
    return src, buf


def _windows(src, g: Geometry, oh: int, ow: int):
    """The (nb, OH, OW, groups, kh, kw, C/g) window view of padded NHWC ``src``."""
    nb, _, _, c = src.shape
    s0, s1, s2, s3 = src.strides
    cg = c // g.groups
    return as_strided(src, (nb, oh, ow, g.groups, g.kh, g.kw, cg),
                      (s0, s1 * g.sh, s2 * g.sw, s3 * cg, s1 * g.dh, s2 * g.dw, s3),
                      writeable=False)


def im2col_numpy(xh, g: Geometry, out=None):
    """The NumPy twin of ``nnx_im2col``'s layout-free meaning, NHWC flavour: padded NHWC
    ``xh`` (nb, H, W, C) -> cols (nb, OH, OW, groups, kh, kw, C/g) (one strided copy)."""
    oh, ow = g.out_hw(xh.shape[1] - g.pt - g.pb, xh.shape[2] - g.pl - g.pr)
    win = _windows(xh, g, oh, ow)
    if out is None:
        out = np.empty(win.shape, dtype=xh.dtype)
    np.copyto(out, win)
    return out


def _col2im_add(gxp, gcols7, g: Geometry, oh: int, ow: int) -> None:
    """gxp (nb, Hp, Wp, C) += the kh*kw tap slices of gcols (nb, OH, OW, groups, kh, kw, C/g)."""
    nb, _, _, c = gxp.shape
    gx5 = gxp.reshape(nb, gxp.shape[1], gxp.shape[2], g.groups, c // g.groups)
    for i in range(g.kh):
        r0 = i * g.dh
        rows = slice(r0, r0 + g.sh * (oh - 1) + 1, g.sh)
        for j in range(g.kw):
            c0 = j * g.dw
            tgt = gx5[:, rows, c0:c0 + g.sw * (ow - 1) + 1:g.sw]
            np.add(tgt, gcols7[:, :, :, :, i, j], out=tgt)


def col2im_numpy(gcols7, g: Geometry, h: int, w: int):
    """Data gradient of the NHWC im2col: gcols (nb, OH, OW, groups, kh, kw, C/g) -> the
    unpadded NHWC gradient (nb, H, W, C) (a view of a padded array when padding)."""
    nb, oh, ow, gr, _, _, cg = gcols7.shape
    gxp = np.zeros((nb, h + g.pt + g.pb, w + g.pl + g.pr, gr * cg), dtype=gcols7.dtype)
    _col2im_add(gxp, gcols7, g, oh, ow)
    return gxp[:, g.pt:g.pt + h, g.pl:g.pl + w]


#: Layout of the CPU path's outputs and input gradients: "nhwc" (the default: NCHW-shaped views
#: of channels-last arrays, PyTorch's ``channels_last`` memory format: the next conv reads its
#: input without a copy, the fused ReLU and the channels-last max-pool work on the same memory
#: and hand back gradients in it) or "nchw" (C-contiguous; costs transposed copies of y, and of
#: x and gx when C > 1). The values are the same; only the strides differ.
OUTPUT_LAYOUT = "nhwc"

# The data gradient's gcols goes through a small buffer chunk by chunk (it is consumed by the
# col2im right away: a big one buys nothing and costs memory and cache).
DATA_GRAD_CHUNK_BYTES = 8 << 20
# Fewer input channels than this: the per-tap data-gradient GEMMs are too thin to pay.
_PER_TAP_MIN_C = 16
# The forward finishes its GEMM output (bias, activation, NCHW transpose) in pieces of about an
# L2; the data gradient's per-tap GEMM slabs are about as big (see ``_data_grad``).
_PIECE_BYTES = 1 << 20


def _cols_view(cols_flat, m, g: Geometry, oh, ow, cg):
    """The 7-d (m, OH, OW, groups, kh, kw, C/g) view of a flat cols buffer."""
    return cols_flat[:m * oh * ow * g.groups * g.kh * g.kw * cg].reshape(
        m, oh, ow, g.groups, g.kh, g.kw, cg)


def _fill_cols(pool, xh, g: Geometry, n0, n1, cols_flat, oh, ow):
    """im2col of samples n0:n1 of NHWC ``xh`` into ``cols_flat``: (m, L, groups, K) view."""
    src, sbuf = _padded_source(xh, g, pool, n0, n1)
    c = xh.shape[3]
    cols = _cols_view(cols_flat, n1 - n0, g, oh, ow, c // g.groups)
    np.copyto(cols, _windows(src, g, oh, ow))
    pool.give(sbuf)
    return cols.reshape(n1 - n0, oh * ow, g.groups, -1)


def _gemm_nhwc(cols, wm, out2):
    """out2 (m*L, O) = cols (m, L, groups, K) @ W' (groups, K, Og), group by group: one 2-D
    GEMM per group, never per sample (OpenBLAS threads small GEMMs poorly: per-sample products
    measured 3x slower at 2 threads)."""
    gr, k, og = wm.shape
    rows = cols.shape[0] * cols.shape[1]
    if gr == 1:
        np.dot(cols.reshape(rows, k), wm[0], out=out2)
    else:
        np.matmul(cols.reshape(rows, gr, k).transpose(1, 0, 2), wm,
                  out=out2.reshape(rows, gr, og).transpose(1, 0, 2))


def _finish_piece(part, bias, entry, slope, mask, exact):
    """Bias and activation in place over one cache-sized piece ``part`` (rows, O) of the GEMM
    output (``mask``: its rows of the ReLU mask to fill, or None)."""
    if bias is not None:
        np.add(part, bias, out=part)
    if entry is None:
        return
    if mask is not None:
        _acts.relu_masked_(part, mask, exact)
    elif entry.name == "relu":  # no backward to come: no mask
        np.maximum(part, scalar(0.0, part.dtype), out=part)
    else:
        entry.numpy_forward(part, part, slope, None)


def numpy_forward(backend, x, w, bias, g: Geometry, save: bool, activation: str = LINEAR,
                  slope: float = 0.01, grad=None):
    """y (N, O, OH, OW) = act(conv(x, w) + bias) (see ``OUTPUT_LAYOUT``) and a :class:`Saved`.

    ``save`` keeps the im2col matrix for a weight gradient; ``grad`` (default ``save``) says a
    backward will come, so a fused ``activation`` (a ``backends.activations`` name whose
    backward reads its output) keeps what its backward needs. Saved is None when neither.
    The bias and activation run on cache-sized pieces of the GEMM output right after their
    GEMM (for ReLU: in place, through the int bit pattern, filling the mask the backward ANDs
    the gradient with)."""
    grad = save if grad is None else grad
    pool = pool_of(backend)
    n, c, h, wd, o, gr, og, k, oh, ow, l, dt = _sizes(x, w, g)
    wm = _weight_matrix(w, g)  # (g, K, Og)
    entry = None if activation == LINEAR else _acts.get(activation)
    nhwc = OUTPUT_LAYOUT == "nhwc"
    y = np.empty((n, oh, ow, o) if nhwc else (n, o, oh, ow), dtype=dt)
    mask = None
    if grad and entry is not None and entry.name == "relu":
        mask = pool.take(n * l * o, np.dtype(f"i{dt.itemsize}")).reshape(n * l, o)
    exact = mask is not None and _acts.bias_without_negative_zero(bias, dt)
    nb = _batch_chunk(n, l * gr * k * dt.itemsize, _LIMIT[0])
    xh = _nhwc(x)
    cols_buf = pool.take(nb * l * gr * k, dt)
    # the GEMMs run piece by piece, each piece finished (bias, activation, NCHW: transposed
    # into y) while it is in cache
    step = _batch_chunk(nb, l * o * dt.itemsize, _PIECE_BYTES)
    scratch = None if nhwc else pool.take(step * l * o, dt)
    # NCHW without an activation: the bias rides on the transpose (no extra pass)
    bias_on_copy = bias is not None and entry is None and not nhwc
    try:
        for n0 in range(0, n, nb):
            n1 = min(n, n0 + nb)
            cols = _fill_cols(pool, xh, g, n0, n1, cols_buf, oh, ow)  # (m, L, g, K)
            for s0 in range(n0, n1, step):
                s1 = min(n1, s0 + step)
                part = (y[s0:s1].reshape(-1, o) if nhwc
                        else scratch[:(s1 - s0) * l * o].reshape(-1, o))
                _gemm_nhwc(cols[s0 - n0:s1 - n0], wm, part)
                _finish_piece(part, None if bias_on_copy else bias, entry, slope,
                              None if mask is None else mask[s0 * l:s1 * l], exact)
                if nhwc:
                    continue
                dst = y[s0:s1].reshape(s1 - s0, o, l)
                src = part.reshape(s1 - s0, l, o).transpose(0, 2, 1)
                if bias_on_copy:
                    np.add(src, bias.reshape(o, 1), out=dst)
                else:
                    np.copyto(dst, src)
        y = y.transpose(0, 3, 1, 2) if nhwc else y
        saved = None
        if save or grad:
            keep = save and nb >= n
            saved = Saved(cols_buf if keep else None, pool, activation, slope,
                          y if entry is not None else None, mask)
            mask = None
            if keep:
                cols_buf = None
    finally:
        pool.give(cols_buf)
        pool.give(scratch)
        if mask is not None:
            pool.give(mask.reshape(-1))
    return y, saved


def _grad_nhwc(gy, pool, saved=None):
    """gy (N, O, OH, OW) as the channels-last (N*L, O) matrix, and the pool buffer holding it
    when it had to be made: an NCHW gradient (one transposed copy, which the 2-D GEMMs after
    it repay at 2 threads) or one through a fused activation's backward (the transposed read
    and the ReLU mask in one pass)."""
    n, o, oh, ow = gy.shape
    gyh = _nhwc(gy)
    act = LINEAR if saved is None else saved.activation
    if act == LINEAR and gyh.flags.c_contiguous:
        return gyh.reshape(n * oh * ow, o), None
    buf = pool.take(gy.size, gy.dtype)
    out = buf.reshape(n, oh, ow, o)
    if act == LINEAR:
        np.copyto(out, gyh)
    elif saved.mask is not None:
        it = saved.mask.dtype
        np.bitwise_and(gyh.view(it), saved.mask.reshape(out.shape), out=out.view(it))
    else:
        _acts.get(act).numpy_backward(_nhwc(saved.y), gyh, out, saved.slope, None)
    return buf.reshape(n * oh * ow, o), buf


def numpy_backward(backend, x, w, gy, saved, g: Geometry, need_x: bool, need_w: bool,
                   need_b: bool):
    """(gx, gw, gb) for gy (N, O, OH, OW) of any strides (the gradient of the fused
    activation's output when the forward had one); entries not asked for are None.
    ``gx`` (N, C, H, W) as ``OUTPUT_LAYOUT``, ``gw`` (O, C/g, kh, kw) contiguous, ``gb`` (O,)."""
    pool = pool_of(backend)
    gy2, gy_buf = _grad_nhwc(gy, pool, saved)
    gx = gw = gb = None
    try:
        if need_b:
            gb = backend.sum_rows(gy2)
        if need_w:
            gw = _weight_grad(pool, x, w, gy2, saved, g)
        if need_x:
            gx = _data_grad(pool, gy2, w, g, x.shape, gy.shape[2], gy.shape[3])
    finally:
        pool.give(gy_buf)
    return gx, gw, gb


def _weight_grad(pool, x, w, gy2, saved, g: Geometry):
    """gW (O, C/g, kh, kw) from gy2 (N*L, O): gW'^T (g, K, Og) = cols^T @ gy (measured faster
    than gy^T @ cols for small K), over the saved cols or chunk by chunk over recomputed ones."""
    n, c, h, wd, o, gr, og, k, oh, ow, l, dt = _sizes(x, w, g)
    have = saved is not None and saved.cols is not None
    nb = n if have else _batch_chunk(n, l * gr * k * dt.itemsize, _LIMIT[0])
    cols_buf = None if have else pool.take(nb * l * gr * k, dt)
    gwm = np.empty((gr, k, og), dtype=dt)
    part = gwm if nb >= n else np.empty_like(gwm)
    try:
        for n0 in range(0, n, nb):
            n1 = min(n, n0 + nb)
            if have:
                a = saved.cols[:n * l * gr * k].reshape(n * l, gr, k)
            else:
                a = _fill_cols(pool, _nhwc(x), g, n0, n1, cols_buf, oh, ow).reshape(-1, gr, k)
            b = gy2[n0 * l:n1 * l]
            if gr == 1:
                np.matmul(a[:, 0].T, b, out=part[0])
            else:
                np.matmul(a.transpose(1, 2, 0), b.reshape(-1, gr, og).transpose(1, 0, 2), out=part)
            if part is not gwm:
                if n0 == 0:
                    gwm[...] = part
                else:
                    gwm += part
    finally:
        pool.give(cols_buf)
    # (g, kh, kw, Cg, Og) -> (O, Cg, kh, kw)
    return np.ascontiguousarray(
        gwm.reshape(gr, g.kh, g.kw, c // gr, og).transpose(0, 4, 3, 1, 2)).reshape(w.shape)


def _data_grad(pool, gy2, w, g: Geometry, x_shape, oh, ow):
    """gx (N, C, H, W) (as ``OUTPUT_LAYOUT``) from gy2 (N*L, O), into a zeroed padded NHWC sum.

    Ungrouped convolutions with C >= ``_PER_TAP_MIN_C`` go tap by tap: for a chunk of samples,
    each of the kh*kw taps is one GEMM ``gy (m*L, O) @ W[:, :, i, j] (O, C)`` into a
    cache-sized slab, added to its strided window of the sum right away (0.54x the time of one
    big GEMM over all taps followed by kh*kw full-size strided adds, measured on benchmark D).
    Otherwise (few channels: thin per-tap GEMMs; groups) one GEMM makes a chunk's gcols (m*L,
    g, K) and a col2im of kh*kw strided adds follows."""
    n, c, h, wd = x_shape
    gr = g.groups
    cg, o = c // gr, w.shape[0]
    k = g.kh * g.kw * cg
    l = oh * ow
    dt = gy2.dtype
    hp, wp = h + g.pt + g.pb, wd + g.pl + g.pr
    nhwc = OUTPUT_LAYOUT == "nhwc"
    # NCHW: the NHWC sum is scratch (copied out below), so it comes from the pool
    gx_buf = None if nhwc else pool.take(n * hp * wp * c, dt)
    if nhwc:
        gxp = np.zeros((n, hp, wp, c), dtype=dt)
    else:
        gxp = gx_buf.reshape(n, hp, wp, c)
        gxp.fill(0)
    per_tap = gr == 1 and c >= _PER_TAP_MIN_C
    if per_tap:
        wt = np.ascontiguousarray(w.transpose(2, 3, 0, 1))  # (kh, kw, O, C)
        nb = _batch_chunk(n, l * c * dt.itemsize, _PIECE_BYTES)
        buf = pool.take(nb * l * c, dt)
    else:
        wmt = _weight_matrix(w, g).transpose(0, 2, 1)  # (g, Og, K)
        nb = _batch_chunk(n, l * gr * k * dt.itemsize, min(DATA_GRAD_CHUNK_BYTES, _LIMIT[0]))
        buf = pool.take(nb * l * gr * k, dt)
    try:
        for n0 in range(0, n, nb):
            n1 = min(n, n0 + nb)
            m = n1 - n0
            if per_tap:
                _taps_add(gxp[n0:n1], gy2[n0 * l:n1 * l], wt, buf[:m * l * c], g, oh, ow)
                continue
            gc = buf[:m * l * gr * k]
            # gcols (m*L, g, K) = gy (m*L, g, Og) @ W'^T (g, Og, K), group by group
            _gemm_nhwc(gy2[n0 * l:n1 * l].reshape(m, l, gr, o // gr), wmt,
                       gc.reshape(m * l, gr * k))
            _col2im_add(gxp[n0:n1], gc.reshape(m, oh, ow, gr, g.kh, g.kw, cg), g, oh, ow)
        gx = gxp[:, g.pt:g.pt + h, g.pl:g.pl + wd].transpose(0, 3, 1, 2)
        return gx if nhwc else np.ascontiguousarray(gx)
    finally:
        pool.give(buf)
        pool.give(gx_buf)


def _tap_window(gxp, g: Geometry, i, j, oh, ow):
    """The (m, OH, OW, C) strided window of the padded sum ``gxp`` that tap (i, j) feeds."""
    r0, c0 = i * g.dh, j * g.dw
    return gxp[:, r0:r0 + g.sh * (oh - 1) + 1:g.sh, c0:c0 + g.sw * (ow - 1) + 1:g.sw]


def _taps_add(gxp, gy2, wt, buf, g: Geometry, oh, ow):
    """gxp (m, Hp, Wp, C) += each tap's ``gy2 (m*L, O) @ wt[i, j] (O, C)`` at its window,
    one tap at a time through the slab ``buf`` (m*L*C).

    The GEMMs go through ``np.dot``, not ``np.matmul``: with 2 OpenBLAS threads, each
    (m*L, O) x (O, C) product followed by its one-core add took 57-61 ms on benchmark D's
    conv2 with ``np.matmul`` and 39-41 ms with ``np.dot`` (the GEMMs alone: equal; 1 thread:
    equal within noise). Measured 2026-12-03, OpenBLAS 0.3.31, NumPy 2.4.6."""
    m, c = gxp.shape[0], gxp.shape[3]
    slab = buf.reshape(m * oh * ow, c)
    for i in range(g.kh):
        for j in range(g.kw):
            np.dot(gy2, wt[i, j], out=slab)
            tgt = _tap_window(gxp, g, i, j, oh, ow)
            np.add(tgt, slab.reshape(m, oh, ow, c), out=tgt)


# ============================================================================== CUDA
# cols layout (nb, C, kh, kw, OH, OW): row (c, i, j) of sample n's (C*kh*kw, OH*OW) matrix.
# Index arithmetic is 32-bit and col2im's divisions unsigned (signed or 64-bit divisions by
# runtime values made ptxas spill around its loop): the wrappers keep every launch's element
# count below 2**31, and every dividend is non-negative.
_SOURCE = r"""
// im2col of NCHW x (contiguous) for samples [0, nb): cols[n][c][i][j][oh][ow] =
// x[n][c][oh*sh - pt + i*dh][ow*sw - pl + j*dw], 0 outside. One thread per cols element (the
// innermost index ow is the fastest: coalesced reads for sw == 1 and coalesced writes).
extern "C" __global__ void __launch_bounds__({block})
nnx_im2col_{sfx}(const nnx_t* __restrict__ x, nnx_t* __restrict__ cols, {geometry}) {{
    {loop}
        const int per = kh * kw * OH * OW;
        const int nc = t / per;  // n * C + c
        int r = t - nc * per;
        const int ow = r % OW; r /= OW;
        const int oh = r % OH; r /= OH;
        const int j = r % kw;
        const int i = r / kw;
        const int ih = oh * sh - pt + i * dh;
        const int iw = ow * sw - pl + j * dw;
        nnx_t v = nnx_st((nnx_acc)0);
        if (ih >= 0 && ih < H && iw >= 0 && iw < W) v = x[((nnx_i64)nc * H + ih) * W + iw];
        cols[t] = v;
    }}
}}

// col2im (the data gradient): gx[n][c][ih][iw] = sum of cols[n][c][i][j][oh][ow] over the taps
// with oh*sh - pt + i*dh == ih and ow*sw - pl + j*dw == iw. One thread per gx element, a
// gather in a fixed order: no atomics, the same result on every run.
extern "C" __global__ void __launch_bounds__({block})
nnx_col2im_{sfx}(const nnx_t* __restrict__ cols, nnx_t* __restrict__ gx, {geometry}) {{
    {loop}
        const int hw = H * W;
        const int nc = (int)((unsigned)t / (unsigned)hw);
        const int r = t - nc * hw;
        const int ih = (int)((unsigned)r / (unsigned)W);
        const int iw = r - ih * W;
        const nnx_t* base = cols + (nnx_i64)nc * (kh * kw * OH * OW);
        nnx_acc acc = (nnx_acc)0;
        // Tap i reads padded row ih + pt from output row oh when ih + pt - i*dh == oh*sh:
        // keep (q, r) with ih + pt - i*dh == q*sh + r, 0 <= r < sh, stepping i without a
        // division in the loop (likewise along W); the tap exists when r == 0, 0 <= q < OH.
        const int a0 = ih + pt, b0 = iw + pl;
        int qh = (int)((unsigned)a0 / (unsigned)sh), rh = a0 - qh * sh;
        const int dqh = (int)((unsigned)dh / (unsigned)sh), drh = dh - dqh * sh;
        const int qw0 = (int)((unsigned)b0 / (unsigned)sw), rw0 = b0 - qw0 * sw;
        const int dqw = (int)((unsigned)dw / (unsigned)sw), drw = dw - dqw * sw;
        for (int i = 0; i < kh; ++i) {{
            if (rh == 0 && qh >= 0 && qh < OH) {{
                int qw = qw0, rw = rw0;
                for (int j = 0; j < kw; ++j) {{
                    if (rw == 0 && qw >= 0 && qw < OW)
                        acc += nnx_ld(base[(((nnx_i64)i * kw + j) * OH + qh) * OW + qw]);
                    qw -= dqw; rw -= drw;
                    if (rw < 0) {{ rw += sw; --qw; }}
                }}
            }}
            qh -= dqh; rh -= drh;
            if (rh < 0) {{ rh += sh; --qh; }}
        }}
        gx[t] = nnx_st(acc);
    }}
}}
"""

_SFXS = ("f16", "f32", "f64")


# The parameters both kernels share (after their two pointers) and their grid-stride loop.
_GEOMETRY = ("const int total, const int C, const int H, const int W, const int kh, const int kw, "
             "const int sh, const int sw, const int pt, const int pl, const int dh, const int dw, "
             "const int OH, const int OW")
_LOOP = ("const int stride = gridDim.x * blockDim.x;\n"
         "    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < total; t += stride) {")


def _sources():
    return {f"conv_{sfx}": ck.preamble(sfx) + _SOURCE.format(block=ck.EW_BLOCK, sfx=sfx,
                                                             geometry=_GEOMETRY, loop=_LOOP)
            for sfx in _SFXS}


def _kernel_names(mod: str):
    fam, _, sfx = mod.rpartition("_")
    if fam != "conv" or sfx not in _SFXS:
        return None
    return (f"nnx_im2col_{sfx}", f"nnx_col2im_{sfx}")


ck.register_family("conv", _sources, _kernel_names)


def im2col_reference(x, g: Geometry):
    """The NumPy twin of ``nnx_im2col``: NCHW ``x`` (nb, C, H, W) -> cols (nb, C, kh, kw, OH,
    OW), zeros where a tap falls in the padding."""
    nb, c, h, w = x.shape
    oh, ow = g.out_hw(h, w)
    xp = np.zeros((nb, c, h + g.pt + g.pb, w + g.pl + g.pr), dtype=x.dtype)
    xp[:, :, g.pt:g.pt + h, g.pl:g.pl + w] = x
    s0, s1, s2, s3 = xp.strides
    win = as_strided(xp, (nb, c, g.kh, g.kw, oh, ow),
                     (s0, s1, s2 * g.dh, s3 * g.dw, s2 * g.sh, s3 * g.sw), writeable=False)
    return np.ascontiguousarray(win)


def col2im_reference(cols, g: Geometry, h: int, w: int):
    """The NumPy twin of ``nnx_col2im``: cols (nb, C, kh, kw, OH, OW) -> gx (nb, C, H, W), each
    element the sum of the taps that read it (accumulated in float32 for float16)."""
    nb, c, _, _, oh, ow = cols.shape
    acc = np.float32 if cols.dtype == np.float16 else cols.dtype
    gxp = np.zeros((nb, c, h + g.pt + g.pb, w + g.pl + g.pr), dtype=acc)
    for i in range(g.kh):
        for j in range(g.kw):
            gxp[:, :, i * g.dh:i * g.dh + g.sh * (oh - 1) + 1:g.sh,
                j * g.dw:j * g.dw + g.sw * (ow - 1) + 1:g.sw] += cols[:, :, i, j]
    return gxp[:, :, g.pt:g.pt + h, g.pl:g.pl + w].astype(cols.dtype)


def _launch(backend, name, x, out, total, c, h, w, g: Geometry, oh, ow):
    sfx = ck.DTYPE_SUFFIX[x.dtype.name]
    i32 = np.int32
    args = (x, out, i32(total), i32(c), i32(h), i32(w), i32(g.kh), i32(g.kw), i32(g.sh),
            i32(g.sw), i32(g.pt), i32(g.pl), i32(g.dh), i32(g.dw), i32(oh), i32(ow))
    ck.launch(f"nnx_{name}_{sfx}", backend._grid(total), ck.EW_BLOCK, args)


_MAX_LAUNCH = 2 ** 31 - 1


def _cuda_chunk(n, cols_per_sample, x_per_sample, dt):
    """Samples per chunk: cols under the workspace cap, every launch under 2**31 elements."""
    nb = _batch_chunk(n, cols_per_sample * dt.itemsize, _LIMIT[0])
    nb = min(nb, max(1, _MAX_LAUNCH // max(cols_per_sample, x_per_sample, 1)))
    if max(cols_per_sample, x_per_sample) > _MAX_LAUNCH:
        raise ValueError(f"conv2d: one sample needs {max(cols_per_sample, x_per_sample)} "
                         f"elements of im2col or input, more than a launch indexes (2**31 - 1)")
    return nb


def _sizes(x, w, g: Geometry):
    """(N, C, H, W, O, groups, O/groups, K = C/groups*kh*kw, OH, OW, OH*OW, dtype)."""
    if x.dtype.name not in ck.DTYPE_SUFFIX:
        raise TypeError(f"conv2d: expected a float16/float32/float64 array, got {x.dtype}")
    n, c, h, wd = x.shape
    o, gr = w.shape[0], g.groups
    oh, ow = g.out_hw(h, wd)
    return n, c, h, wd, o, gr, o // gr, (c // gr) * g.kh * g.kw, oh, ow, oh * ow, x.dtype


def cupy_forward(backend, x, w, bias, g: Geometry, save: bool, activation: str = LINEAR,
                 slope: float = 0.01, grad=None):
    """y (N, O, OH, OW) = act(conv(x, w) + bias), contiguous, and a :class:`Saved` holding a
    fused activation's output when a backward will come (``grad``, default ``save``), else
    None (cols are rebuilt in the backward, one kernel pass)."""
    cp = backend.xp
    n, c, h, wd, o, gr, og, k, oh, ow, l, dt = _sizes(x, w, g)
    with backend.use():
        x = backend._contig(x)
        wm = backend._contig(w).reshape(gr, og, k)
        y = cp.empty((n, o, oh, ow), dtype=dt)
        nb = _cuda_chunk(n, c * g.kh * g.kw * l, c * h * wd, dt)
        cols = cp.empty(nb * c * g.kh * g.kw * l, dtype=dt)
        for n0 in range(0, n, nb):
            n1 = min(n, n0 + nb)
            m = n1 - n0
            cm = cols[:m * c * g.kh * g.kw * l]
            if cm.size:
                _launch(backend, "im2col", x[n0:n1], cm, cm.size, c, h, wd, g, oh, ow)
            cp.matmul(wm, cm.reshape(m, gr, k, l), out=y[n0:n1].reshape(m, gr, og, l))
        if bias is not None:
            y += bias.reshape(1, o, 1, 1)
        if activation != LINEAR:
            backend.activation_forward(activation, y, slope, out=y)
    if activation != LINEAR and (save if grad is None else grad):
        return y, Saved(activation=activation, slope=slope, y=y)
    return y, None


def cupy_backward(backend, x, w, gy, saved, g: Geometry, need_x: bool, need_w: bool,
                  need_b: bool):
    """(gx, gw, gb) as :func:`numpy_backward`, all contiguous; no host sync."""
    cp = backend.xp
    n, c, h, wd, o, gr, og, k, oh, ow, l, dt = _sizes(x, w, g)
    gx = gw = gb = None
    with backend.use():
        if saved is not None and saved.activation != LINEAR:
            gy = backend.activation_backward(saved.activation, saved.y, gy, saved.slope)
        gy = backend._contig(gy)
        if need_b:
            gb = gy.sum(axis=(0, 2, 3))
        if not (need_x or need_w):
            return gx, gw, gb
        x = backend._contig(x)
        wm = backend._contig(w).reshape(gr, og, k)
        nb = _cuda_chunk(n, c * g.kh * g.kw * l, c * h * wd, dt)
        cols = cp.empty(nb * c * g.kh * g.kw * l, dtype=dt)
        if need_w:
            gwm = cp.zeros((gr, og, k), dtype=dt)
        if need_x:
            gx = cp.empty((n, c, h, wd), dtype=dt)
            wmt = wm.transpose(0, 2, 1)
        for n0 in range(0, n, nb):
            n1 = min(n, n0 + nb)
            m = n1 - n0
            cm = cols[:m * c * g.kh * g.kw * l]
            gy4 = gy[n0:n1].reshape(m, gr, og, l)
            if need_w and cm.size:
                _launch(backend, "im2col", x[n0:n1], cm, cm.size, c, h, wd, g, oh, ow)
                c4 = cm.reshape(m, gr, k, l)
                # one GEMM per group over (samples, positions): no per-sample temporaries
                for j in range(gr):
                    gwm[j] += cp.tensordot(gy4[:, j], c4[:, j], axes=([0, 2], [0, 2]))
            if need_x:
                cp.matmul(wmt, gy4, out=cm.reshape(m, gr, k, l))
                part = gx[n0:n1]
                if part.size:
                    _launch(backend, "col2im", cm, part, part.size, c, h, wd, g, oh, ow)
        if need_w:
            gw = gwm.reshape(w.shape)
    return gx, gw, gb
