"""2-D pooling at the array level: max, average and adaptive average, forward and backward.

One op, one place: the NumPy path, the CUDA kernels (source text per dtype, registered with
``cuda_kernels.register_family`` so NVRTC checks and the emulator see them) and the CuPy launch
wrappers of each pooling op sit here; the backends' methods delegate to these functions.

Arrays are ``(*, H, W)`` (any leading axes, e.g. (N, C, H, W)) of float16/float32/float64;
results keep the dtype. Windows follow PyTorch: output size
``floor((H + 2p - d(k-1) - 1) / s) + 1`` (rounded up in ``ceil_mode``, where a last window
must start inside the input or the left padding), padding never wins a max (it is -inf), and a
max-pool gradient goes to the FIRST maximum of its window in row-major order (a NaN wins,
as in PyTorch's ``val > max || isnan(val)``).

The max-pool forward also returns ``argmax``: an integer array of the output's shape holding
the row-major position ``u * kw + v`` of the chosen element inside its window (uint8 on the
CPU when ``kh * kw <= 256``, else int32; int32 on CUDA). ``window_indices`` turns it into
PyTorch's ``return_indices`` (the flat index into the input plane, int64).

The CPU fast path (kernel == stride, no padding or dilation, at most 256 window positions:
the benchmark's 2x2 pool) keeps the input's memory format: a channels-last input (4-D, memory
NHWC, as PyTorch's ``channels_last``) gives channels-last ``y``, ``argmax`` and input gradient,
and reads the NHWC memory directly (each window position a contiguous channel run); anything
else is (*, H, W) planes. Its forward scan is exact only without NaN (after a NaN its
comparisons let the wrong tap win), so a forward whose output holds a NaN takes the general
path instead (one ``max`` over the output decides). Its backward writes each input element as
gy's bits times an integer 0/1 (1 at the window's chosen element), so it needs no zero fill
and a NaN or inf in ``gy`` reaches only the chosen element, as in PyTorch.

The CUDA backwards gather: one thread per input element sums the gradients of the windows that
chose it (max) or cover it (average), in a fixed order. No atomics, so overlapping windows give
bit-for-bit repeatable gradients.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np

from . import cuda_kernels as ck
from .conv import BufferPool

# work buffers of the CPU fast paths, reused across calls (fresh pages cost ~0.1 ms per MB)
_WORK = BufferPool(np, keep=2, max_bytes=1 << 27)


# ------------------------------------------------------------------------------ geometry
@dataclasses.dataclass(frozen=True)
class Window:
    """A 2-D pooling window: kernel (kh, kw), stride, padding, dilation, rounding.

    ``count_include_pad`` and ``divisor_override`` (0: none) matter to average pooling only.
    All fields are Python ints/bools (validated by ``nnx.pooling``).
    """

    kh: int
    kw: int
    sh: int
    sw: int
    # padding (each side: -inf for max, zeros for average) and the spacing of window elements
    ph: int = 0
    pw: int = 0
    dh: int = 1
    dw: int = 1
    ceil_mode: bool = False
    count_include_pad: bool = True
    divisor_override: int = 0

    @property
    def tiles(self) -> bool:
        """Non-overlapping, unpadded, undilated windows (kernel == stride) that all lie inside
        the input (no ceil-mode overhang): the fast paths."""
        return (self.kh == self.sh and self.kw == self.sw and not (self.ph or self.pw)
                and self.dh == 1 and self.dw == 1 and not self.ceil_mode)

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        """(OH, OW) for an input plane of (h, w), PyTorch's ``pooling_output_shape``."""
        axes = ((h, self.kh, self.sh, self.ph, self.dh), (w, self.kw, self.sw, self.pw, self.dw))
        return tuple(_out_size(*axis, self.ceil_mode) for axis in axes)


def _out_size(n, k, s, p, d, ceil_mode):
    num = n + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)
    o = num // s + 1
    if ceil_mode and (o - 1) * s >= n + p:
        o -= 1
    return o


def adaptive_bounds(n: int, out: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive windows over an axis of ``n``: [floor(i n / out), ceil((i+1) n / out))."""
    return [((i * n) // out, -(-((i + 1) * n) // out)) for i in range(out)]


def window_indices(xp, argmax, win: Window, h: int, w: int):
    """PyTorch's max-pool indices (int64, flat into each (h, w) input plane) from ``argmax``."""
    oh, ow = argmax.shape[-2:]
    a = argmax.astype(np.int64)
    u, v = a // win.kw, a % win.kw
    rows = (xp.arange(oh, dtype=np.int64) * win.sh - win.ph)[:, None]
    cols = (xp.arange(ow, dtype=np.int64) * win.sw - win.pw)[None, :]
    return (rows + u * win.dh) * w + cols + v * win.dw


# ------------------------------------------------------------------------------ NumPy path
def _acc_dtype(dtype):
    return np.float32 if dtype == np.float16 else dtype


def _planes(x):
    """``x`` as (B, H, W) (a view when possible)."""
    return x.reshape((-1,) + x.shape[-2:])


def _tap(a, u, v, win, oh, ow):
    """The (B, OH, OW) strided view of ``a`` (padded coordinates) at window position (u, v)."""
    r, c = u * win.dh, v * win.dw
    return a[:, r:r + (oh - 1) * win.sh + 1:win.sh, c:c + (ow - 1) * win.sw + 1:win.sw]


def _padded(x, win, oh, ow, fill):
    """``x`` (B, H, W) with the padding (and the ceil-mode overhang) filled with ``fill``."""
    b, h, w = x.shape
    hp = max((oh - 1) * win.sh + (win.kh - 1) * win.dh + 1, h + win.ph)
    wp = max((ow - 1) * win.sw + (win.kw - 1) * win.dw + 1, w + win.pw)
    if (hp, wp) == (h, w):
        return x
    out = np.full((b, hp, wp), fill, dtype=x.dtype)
    out[:, win.ph:win.ph + h, win.pw:win.pw + w] = x
    return out


def _code_dtype(win):
    return np.uint8 if win.kh * win.kw <= 256 else np.int32


def _first_valid(n, k, s, p, d, o):
    """Per output along one axis, the first window position that lies inside the input."""
    start = np.arange(o) * s - p
    return np.maximum(0, -(start // d))  # ceil(-start / d) for start < 0


def numpy_max_pool2d_forward(x, win: Window):
    """(y, argmax) of a max-pool of ``x`` (*, H, W); see the module docstring.

    A channels-last ``x`` (4-D, its memory NHWC) gives channels-last ``y`` and ``argmax``
    (NCHW-shaped views of NHWC arrays); anything else gives C-contiguous results."""
    lead, (h, w) = x.shape[:-2], x.shape[-2:]
    oh, ow = win.out_hw(h, w)
    cdt = _code_dtype(win)
    last = _channels_last(x)
    if win.tiles and 1 < win.kh * win.kw <= 256 and x.size:
        y, code = _max_tiles(_nhwc(x, last), win, oh, ow, cdt)
        if not np.isnan(y.max()):  # a NaN window: redo it on the general scan (PyTorch's pick)
            return _from_nhwc(y, lead, last), _from_nhwc(code, lead, last)
    x3 = _planes(x)
    xp_ = _padded(x3, win, oh, ow, -np.inf)
    y = np.full((x3.shape[0], oh, ow), -np.inf, dtype=x.dtype)
    # PyTorch starts each window at its first element inside the input (padding never wins)
    code = (_first_valid(h, win.kh, win.sh, win.ph, win.dh, oh)[:, None] * win.kw
            + _first_valid(w, win.kw, win.sw, win.pw, win.dw, ow)[None, :]).astype(cdt)
    code = np.broadcast_to(code, y.shape).copy()
    m = np.empty(y.shape, dtype=bool)
    nan = np.empty(y.shape, dtype=bool)
    for u in range(win.kh):
        for v in range(win.kw):
            t = _tap(xp_, u, v, win, oh, ow)
            np.greater(t, y, out=m)
            np.isnan(t, out=nan)
            m |= nan
            np.copyto(y, t, where=m)
            np.copyto(code, cdt(u * win.kw + v), where=m)
    y, code = y.reshape(lead + (oh, ow)), code.reshape(lead + (oh, ow))
    if last:  # keep the input's memory format on this (rare) path too
        y, code = (np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
                   for a in (y, code))
    return y, code


# The tiles fast path works on a 4-D (B, H, W, C) array: the NHWC memory of a channels-last
# input, or (B, H, W, 1) planes of anything else, so both layouts share one code path.
def _channels_last(a) -> bool:
    """A 4-D NCHW-shaped ``a`` whose memory is NHWC (and not also C-contiguous, as C = 1 is)."""
    return a.ndim == 4 and not a.flags.c_contiguous and a.transpose(0, 2, 3, 1).flags.c_contiguous


def _nhwc(a, last):
    return a.transpose(0, 2, 3, 1) if last else _planes(a)[..., None]


def _from_nhwc(a, lead, last):
    """(B, H, W, C) back to the caller's NCHW shape: a channels-last view or C-contiguous."""
    return a.transpose(0, 3, 1, 2) if last else a.reshape(lead + a.shape[1:3])


def _windows(a, win, oh, ow):
    """The tiles of (B, H, W, C) ``a`` as a (B, OH, kh, OW, kw, C) view (rows/columns past the
    last window are left out)."""
    sb, sh, sw, sc = a.strides
    return np.lib.stride_tricks.as_strided(
        a, (a.shape[0], oh, win.kh, ow, win.kw, a.shape[3]),
        (sb, sh * win.kh, sh, sw * win.kw, sw, sc), writeable=a.flags.writeable)


def _max_tiles(a, win, oh, ow, cdt):
    """(y, code) (B, OH, OW, C) of the tiles of ``a`` (B, H, W, C). One copy lays the window
    positions out as contiguous planes (NumPy's copy loops take strided runs far faster than
    its ufunc loops: ~12 vs ~60 ns per run of 64), then a row-major scan over the planes keeps
    the running maximum ``y``; a later position wins only when strictly greater, so ties keep
    the first maximum. ``maximum`` propagates NaN, so a NaN window shows in ``y`` (its code
    may not be PyTorch's then; the caller checks). Only ``y`` and ``code`` are new memory."""
    t = _windows(a, win, oh, ow)
    shape = t.shape[:2] + t.shape[3:4] + t.shape[5:]
    k, n = win.kh * win.kw, int(np.prod(shape))
    y, code = np.empty(shape, dtype=a.dtype), np.empty(shape, dtype=cdt)
    bufs = [_WORK.take(k * n, a.dtype), _WORK.take(n, np.uint8)]
    try:
        planes = bufs[0].reshape((win.kh, win.kw) + shape)
        _copy_planes(planes, t.transpose(2, 4, 0, 1, 3, 5))
        planes = planes.reshape((k,) + shape)
        won = bufs[1].reshape(shape)
        # on a tie y keeps the earlier value (PyTorch's, which matters for -0.0 against +0.0)
        first = _tie_keeps_first(y.dtype)
        np.greater(planes[1], planes[0], out=code.view(bool))
        np.maximum(*((planes[0], planes[1]) if first else (planes[1], planes[0])), out=y)
        for i in range(2, k):
            np.greater(planes[i], y, out=won.view(bool))
            np.maximum(*((y, planes[i]) if first else (planes[i], y)), out=y)
            won *= np.uint8(i)
            np.maximum(code, won, out=code)  # positions come in order: the last winner is largest
    finally:
        for buf in bufs:
            _WORK.give(buf)
    return y, code


def numpy_max_pool2d_backward(gy, argmax, win: Window, in_hw):
    """gx (*, H, W): each output's gradient added at its window's first maximum. ``gy`` may
    have any strides; gx has the memory format of ``argmax`` (the forward's, i.e. the input's)."""
    h, w = in_hw
    oh, ow = gy.shape[-2:]
    if win.tiles and 1 < win.kh * win.kw <= 256 and gy.size:
        last = _channels_last(argmax)
        gx = _scatter_tiles(_nhwc(gy, last), np.ascontiguousarray(_nhwc(argmax, last)),
                            win, in_hw)
        return _from_nhwc(gx, gy.shape[:-2], last)
    g3, c3 = _planes(gy), _planes(argmax)
    # sums of overlapping windows: float16 adds in float32, as the CUDA kernel
    g3 = g3.astype(_acc_dtype(gy.dtype), copy=False)
    gx = _grad_buffer(g3, win, oh, ow, in_hw, False)
    sel = np.empty(g3.shape, dtype=bool)
    for u in range(win.kh):
        for v in range(win.kw):
            np.equal(c3, u * win.kw + v, out=sel)
            _tap(gx, u, v, win, oh, ow)[...] += np.where(sel, g3, 0)
    return _unpad(gx, win, in_hw).astype(gy.dtype, copy=False).reshape(gy.shape[:-2] + (h, w))


@functools.lru_cache(maxsize=None)
def _tie_keeps_first(dtype) -> bool:
    """Whether ``np.maximum(a, b)`` returns ``a`` on a tie for ``dtype`` (float32/64 SIMD
    loops return ``b``, float16 ``a``); probed on -0.0 against +0.0."""
    z = np.zeros(19, dtype=dtype)
    return bool(np.signbit(np.maximum(-z, z)).all())


def _copy_planes(dst, src):
    """``dst[...] = src`` for (kh, kw, B, OH, OW, C) windows and planes: with channel runs
    (C > 1) one copy, else (runs of stride-kw elements) one copy per window position, which
    NumPy's copy loops take ~1.4x faster there."""
    if dst.shape[-1] > 1:
        np.copyto(dst, src)
        return
    for u in range(dst.shape[0]):
        for v in range(dst.shape[1]):
            np.copyto(dst[u, v], src[u, v])


def _scatter_tiles(gy, code, win, in_hw):
    """gx (B, H, W, C) from ``gy`` and ``code`` (B, OH, OW, C; ``code`` contiguous): each
    window position gets ``gy * [code == position]`` computed on the floats' bits as integers
    (so exactly gy or +0, whatever gy holds, NaN and inf included), and these shares tile gx
    (no zero fill but for the rows/columns no window covers). With channel runs (C > 1) the
    shares go to contiguous planes and one copy tiles gx with them; planes (C = 1) take each
    share straight into its strided place."""
    b, oh, ow, c = shape = code.shape
    h, w = in_hw
    gx = np.empty((b, h, w, c), dtype=gy.dtype)
    gx[:, oh * win.kh:] = 0
    gx[:, :oh * win.kh, ow * win.kw:] = 0
    it = np.dtype(f"i{gy.dtype.itemsize}")
    k, n = win.kh * win.kw, code.size
    gxw = _windows(gx.view(it), win, oh, ow).transpose(2, 4, 0, 1, 3, 5)  # (kh, kw, B, ...)
    bufs = [_WORK.take(n, gy.dtype), _WORK.take(n, it)]
    if c > 1:
        bufs.append(_WORK.take(k * n, it))
    try:
        g, one = (x.reshape(shape) for x in bufs[:2])
        planes = bufs[2].reshape((win.kh, win.kw) + shape) if c > 1 else gxw
        np.copyto(g, gy)  # one pass that also lays out a gy of any strides as code is
        gi = g.view(it)
        for i in range(k):
            np.equal(code, i, out=one)
            np.multiply(gi, one, out=planes[i // win.kw, i % win.kw])
        if c > 1:
            np.copyto(gxw, planes)
    finally:
        for buf in bufs:
            _WORK.give(buf)
    return gx


def _grad_buffer(g3, win, oh, ow, in_hw, exact):
    h, w = in_hw
    if exact:
        return np.empty((g3.shape[0], h, w), dtype=g3.dtype)
    hp = max((oh - 1) * win.sh + (win.kh - 1) * win.dh + 1, h + win.ph)
    wp = max((ow - 1) * win.sw + (win.kw - 1) * win.dw + 1, w + win.pw)
    return np.zeros((g3.shape[0], hp, wp), dtype=g3.dtype)


def _unpad(g, win, in_hw):
    h, w = in_hw
    if g.shape[1:] == (h, w):
        return g
    return np.ascontiguousarray(g[:, win.ph:win.ph + h, win.pw:win.pw + w])


def _avg_divisor(win, h, w, oh, ow, dtype):
    """(OH, OW) divisors of PyTorch's avg_pool2d (count_include_pad, divisor_override)."""
    if win.divisor_override:
        return np.full((oh, ow), win.divisor_override, dtype=dtype)

    def axis(n, k, s, p, o):
        start = np.arange(o) * s - p
        end = np.minimum(start + k, n + p)
        if win.count_include_pad:
            return end - start
        return np.minimum(end, n) - np.maximum(start, 0)

    return (axis(h, win.kh, win.sh, win.ph, oh)[:, None]
            * axis(w, win.kw, win.sw, win.pw, ow)[None, :]).astype(dtype)


def numpy_avg_pool2d_forward(x, win: Window):
    """y (*, OH, OW): window sums over the divisor PyTorch uses (float16 sums in float32)."""
    lead, (h, w) = x.shape[:-2], x.shape[-2:]
    oh, ow = win.out_hw(h, w)
    acc = _acc_dtype(x.dtype)
    x3 = _planes(x).astype(acc, copy=False)
    xp_ = x3 if win.tiles else _padded(x3, win, oh, ow, 0)
    y = None
    for u in range(win.kh):
        for v in range(win.kw):
            t = _tap(xp_, u, v, win, oh, ow)
            if y is None:
                y = t.copy()
            else:
                y += t
    y /= _avg_divisor(win, h, w, oh, ow, acc)
    return y.astype(x.dtype, copy=False).reshape(lead + (oh, ow))


def numpy_avg_pool2d_backward(gy, win: Window, in_hw):
    """gx (*, H, W): each output's gradient over its divisor, spread over its window."""
    h, w = in_hw
    oh, ow = gy.shape[-2:]
    acc = _acc_dtype(gy.dtype)
    g3 = _planes(gy).astype(acc) / _avg_divisor(win, h, w, oh, ow, acc)
    exact = win.tiles and h == oh * win.kh and w == ow * win.kw
    gx = _grad_buffer(g3, win, oh, ow, in_hw, exact)
    if exact:  # one broadcast copy
        gx.reshape(-1, oh, win.kh, ow, win.kw)[...] = g3[:, :, None, :, None]
    else:
        for u in range(win.kh):
            for v in range(win.kw):
                _tap(gx, u, v, win, oh, ow)[...] += g3
    return _unpad(gx, win, in_hw).astype(gy.dtype, copy=False).reshape(gy.shape[:-2] + (h, w))


def numpy_adaptive_avg_pool2d_forward(x, out_hw):
    """y (*, OH, OW): means over PyTorch's adaptive windows (rows, then columns)."""
    lead, (h, w) = x.shape[:-2], x.shape[-2:]
    oh, ow = out_hw
    acc = _acc_dtype(x.dtype)
    x3 = _planes(x).astype(acc, copy=False)
    rows, cols = adaptive_bounds(h, oh), adaptive_bounds(w, ow)
    t = np.stack([x3[:, a:b].sum(axis=1) for a, b in rows], axis=1)  # (B, OH, W)
    y = np.stack([t[:, :, a:b].sum(axis=2) for a, b in cols], axis=2)  # (B, OH, OW)
    y /= _adaptive_area(rows, cols, acc)
    return y.astype(x.dtype, copy=False).reshape(lead + (oh, ow))


def _adaptive_area(rows, cols, dtype):
    return (np.array([b - a for a, b in rows])[:, None]
            * np.array([b - a for a, b in cols])[None, :]).astype(dtype)


def numpy_adaptive_avg_pool2d_backward(gy, in_hw):
    """gx (*, H, W): each output's gradient over its window's area, spread over the window."""
    h, w = in_hw
    oh, ow = gy.shape[-2:]
    acc = _acc_dtype(gy.dtype)
    rows, cols = adaptive_bounds(h, oh), adaptive_bounds(w, ow)
    g3 = _planes(gy).astype(acc) / _adaptive_area(rows, cols, acc)
    t = np.zeros((g3.shape[0], oh, w), dtype=acc)
    for j, (a, b) in enumerate(cols):
        t[:, :, a:b] += g3[:, :, j:j + 1]
    gx = np.zeros((g3.shape[0], h, w), dtype=acc)
    for i, (a, b) in enumerate(rows):
        gx[:, a:b] += t[:, i:i + 1]
    return gx.astype(gy.dtype, copy=False).reshape(gy.shape[:-2] + (h, w))


# ------------------------------------------------------------------------------ CUDA sources
# Grid-stride loops over C-contiguous (B, H, W) / (B, OH, OW) arrays; n counts the elements of
# the array a thread owns (outputs for the forwards, inputs for the backwards).
_GEOM = ("const int H, const int W, const int OH, const int OW, const int kh, const int kw, "
         "const int sh, const int sw, const int ph, const int pw")

_HEAD = r"""
    const nnx_i64 step = (nnx_i64)gridDim.x * blockDim.x;
    for (nnx_i64 i = (nnx_i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {{
        const int c1 = (int)(i % {d1});
        const nnx_i64 r = i / {d1};
        const int c0 = (int)(r % {d0});
        const nnx_i64 b = r / {d0};
"""

_POOL_TEMPLATE = r"""
// The output index along one axis whose window holds input index c at offset ``c + shift``
// from its start (shift = padding - position in the window * dilation), or -1.
__device__ __forceinline__ int nnx_pool_window(const int c, const int shift, const int s,
                                               const int n_out) {{
    const int t = c + shift;
    if (t < 0 || t % s) return -1;
    return t / s < n_out ? t / s : -1;
}}
// Max pool: one thread per output; the first element inside the input starts the scan, a
// later one wins when greater or NaN (PyTorch's rule); argmax = u * kw + v.
extern "C" __global__ void __launch_bounds__({block})
nnx_maxpool2d_fwd_{sfx}(const nnx_t* __restrict__ x, nnx_t* __restrict__ y,
                        int* __restrict__ argmax, const nnx_i64 n, {geom},
                        const int dh, const int dw) {{
{head_out}
        const nnx_t* xb = x + b * H * W;
        const int h0 = c0 * sh - ph, w0 = c1 * sw - pw;
        nnx_acc best = -NNX_INF;
        int arg = -1;
        for (int u = 0; u < kh; ++u) {{
            const int hh = h0 + u * dh;
            if (hh < 0 || hh >= H) continue;
            for (int v = 0; v < kw; ++v) {{
                const int ww = w0 + v * dw;
                if (ww < 0 || ww >= W) continue;
                const nnx_acc val = nnx_ld(xb[(nnx_i64)hh * W + ww]);
                if (arg < 0 || val > best || val != val) {{ best = val; arg = u * kw + v; }}
            }}
        }}
        y[i] = nnx_st(best);
        // a window all in the padding points, as PyTorch's, at its first row and column
        // inside the input (padding coordinates, so no input gets its gradient)
        argmax[i] = arg >= 0 ? arg : (h0 < 0 ? (dh - 1 - h0) / dh : 0) * kw
                                         + (w0 < 0 ? (dw - 1 - w0) / dw : 0);
    }}
}}

// Max pool backward: one thread per input element gathers, in window order, the gradients of
// the windows whose argmax is this element.
extern "C" __global__ void __launch_bounds__({block})
nnx_maxpool2d_bwd_{sfx}(const nnx_t* __restrict__ gy, const int* __restrict__ argmax,
                        nnx_t* __restrict__ gx, const nnx_i64 n, {geom},
                        const int dh, const int dw) {{
{head_in}
        const nnx_i64 ob = b * OH * OW;
        nnx_acc acc = 0;
        for (int u = 0; u < kh; ++u) {{
            const int oh = nnx_pool_window(c0, ph - u * dh, sh, OH);
            for (int v = 0; oh >= 0 && v < kw; ++v) {{
                const int ow = nnx_pool_window(c1, pw - v * dw, sw, OW);
                const nnx_i64 o = ob + (nnx_i64)oh * OW + ow;
                if (ow >= 0 && argmax[o] == u * kw + v) acc += nnx_ld(gy[o]);
            }}
        }}
        gx[i] = nnx_st(acc);
    }}
}}

// PyTorch's avg_pool2d divisor of output (oh, ow).
__device__ __forceinline__ int nnx_avg_div(const int oh, const int ow, {geom},
                                           const int include_pad, const int divisor) {{
    if (divisor > 0) return divisor;
    const int h0 = oh * sh - ph, w0 = ow * sw - pw;
    const int h1 = min(h0 + kh, H + ph), w1 = min(w0 + kw, W + pw);
    if (include_pad) return (h1 - h0) * (w1 - w0);
    const int d = (min(h1, H) - max(h0, 0)) * (min(w1, W) - max(w0, 0));
    return d > 0 ? d : 1;
}}

extern "C" __global__ void __launch_bounds__({block})
nnx_avgpool2d_fwd_{sfx}(const nnx_t* __restrict__ x, nnx_t* __restrict__ y, const nnx_i64 n,
                        {geom}, const int include_pad, const int divisor) {{
{head_out}
        const nnx_t* xb = x + b * H * W;
        const int h0 = c0 * sh - ph, w0 = c1 * sw - pw;
        const int hs = max(h0, 0), he = min(h0 + kh, H);
        const int ws = max(w0, 0), we = min(w0 + kw, W);
        nnx_acc s = 0;
        for (int hh = hs; hh < he; ++hh)
            for (int ww = ws; ww < we; ++ww) s += nnx_ld(xb[(nnx_i64)hh * W + ww]);
        const int d = nnx_avg_div(c0, c1, H, W, OH, OW, kh, kw, sh, sw, ph, pw, include_pad,
                                  divisor);
        y[i] = nnx_st(s / (nnx_acc)d);
    }}
}}

extern "C" __global__ void __launch_bounds__({block})
nnx_avgpool2d_bwd_{sfx}(const nnx_t* __restrict__ gy, nnx_t* __restrict__ gx, const nnx_i64 n,
                        {geom}, const int include_pad, const int divisor) {{
{head_in}
        const nnx_i64 ob = b * OH * OW;
        nnx_acc acc = 0;
        for (int u = 0; u < kh; ++u) {{
            const int oh = nnx_pool_window(c0, ph - u, sh, OH);
            for (int v = 0; oh >= 0 && v < kw; ++v) {{
                const int ow = nnx_pool_window(c1, pw - v, sw, OW);
                if (ow < 0) continue;
                const int d = nnx_avg_div(oh, ow, H, W, OH, OW, kh, kw, sh, sw, ph, pw,
                                          include_pad, divisor);
                acc += nnx_ld(gy[ob + (nnx_i64)oh * OW + ow]) / (nnx_acc)d;
            }}
        }}
        gx[i] = nnx_st(acc);
    }}
}}

// Adaptive average pool: window i of an axis of n over o outputs is
// [floor(i n / o), ceil((i + 1) n / o)).
extern "C" __global__ void __launch_bounds__({block})
nnx_adaptive_avgpool2d_fwd_{sfx}(const nnx_t* __restrict__ x, nnx_t* __restrict__ y,
                                 const nnx_i64 n, const int H, const int W, const int OH,
                                 const int OW) {{
{head_out}
        const nnx_t* xb = x + b * H * W;
        const int hs = (c0 * H) / OH, he = ((c0 + 1) * H + OH - 1) / OH;
        const int ws = (c1 * W) / OW, we = ((c1 + 1) * W + OW - 1) / OW;
        nnx_acc s = 0;
        for (int hh = hs; hh < he; ++hh)
            for (int ww = ws; ww < we; ++ww) s += nnx_ld(xb[(nnx_i64)hh * W + ww]);
        y[i] = nnx_st(s / (nnx_acc)((he - hs) * (we - ws)));
    }}
}}

// Backward: input row h lies in the windows floor(h OH / H) .. floor(((h + 1) OH - 1) / H).
extern "C" __global__ void __launch_bounds__({block})
nnx_adaptive_avgpool2d_bwd_{sfx}(const nnx_t* __restrict__ gy, nnx_t* __restrict__ gx,
                                 const nnx_i64 n, const int H, const int W, const int OH,
                                 const int OW) {{
{head_in}
        const nnx_i64 ob = b * OH * OW;
        nnx_acc acc = 0;
        for (int oh = (c0 * OH) / H; oh <= ((c0 + 1) * OH - 1) / H; ++oh) {{
            const int rh = ((oh + 1) * H + OH - 1) / OH - (oh * H) / OH;
            for (int ow = (c1 * OW) / W; ow <= ((c1 + 1) * OW - 1) / W; ++ow) {{
                const int rw = ((ow + 1) * W + OW - 1) / OW - (ow * W) / OW;
                acc += nnx_ld(gy[ob + (nnx_i64)oh * OW + ow]) / (nnx_acc)(rh * rw);
            }}
        }}
        gx[i] = nnx_st(acc);
    }}
}}
"""

_KERNELS = ("maxpool2d_fwd", "maxpool2d_bwd", "avgpool2d_fwd", "avgpool2d_bwd",
            "adaptive_avgpool2d_fwd", "adaptive_avgpool2d_bwd")
_SFXS = ("f16", "f32", "f64")


def _source(sfx: str) -> str:
    return ck.preamble(sfx) + _POOL_TEMPLATE.format(
        block=ck.EW_BLOCK, sfx=sfx, geom=_GEOM,
        head_out=_HEAD.format(d0="OH", d1="OW"), head_in=_HEAD.format(d0="H", d1="W"))


def _sources() -> dict:
    return {f"pooling_{sfx}": _source(sfx) for sfx in _SFXS}


def _kernel_names(mod: str):
    family, _, sfx = mod.rpartition("_")
    if family != "pooling" or sfx not in _SFXS:
        return None
    return tuple(f"nnx_{k}_{sfx}" for k in _KERNELS)


ck.register_family("pooling", _sources, _kernel_names)


# ------------------------------------------------------------------------------ CuPy wrappers
def _launch(cb, kernel, where, src, dst_hw, scalars, argmax=None, new_argmax=False):
    """Launch ``nnx_<kernel>_<sfx>`` from ``src`` (*, H, W) into a new (*, dst_hw) array, one
    thread per element written (``n``); ``argmax`` is read (backward) or made (forward,
    ``new_argmax``). Strided inputs are copied to contiguous ones first. No host sync."""
    sfx = cb._suffix(where, src)
    lead, dst_hw = src.shape[:-2], tuple(dst_hw)
    with cb._dev():
        s3 = cb._contig(src).reshape((-1,) + src.shape[-2:])
        dst = cb.xp.empty((s3.shape[0],) + dst_hw, dtype=src.dtype)
        if new_argmax:
            argmax = cb.xp.empty(dst.shape, dtype=np.int32)
            arrays = (s3, dst, argmax)
        elif argmax is not None:
            arrays = (s3, cb._contig(argmax.astype(np.int32, copy=False)).reshape(s3.shape), dst)
        else:
            arrays = (s3, dst)
        if dst.size:
            ck.launch(f"nnx_{kernel}_{sfx}", cb._grid(dst.size), ck.EW_BLOCK,
                      (*arrays, np.int64(dst.size), *(np.int32(v) for v in scalars)))
    out = dst.reshape(lead + dst_hw)
    return (out, argmax.reshape(out.shape)) if new_argmax else out


def cupy_windowed(cb, kernel, src, win: Window, in_hw=None, argmax=None):
    """The CuPy twin of a max/avg pooling pass: ``kernel`` "maxpool2d_fwd" (returns
    ``(y, argmax)``, argmax int32), "avgpool2d_fwd" (``src`` = x), "maxpool2d_bwd" (with
    ``argmax``) or "avgpool2d_bwd" (``src`` = gy, ``in_hw`` = the input plane)."""
    forward = in_hw is None
    src_hw = tuple(src.shape[-2:])
    dst_hw = win.out_hw(*src_hw) if forward else tuple(in_hw)
    planes = (*src_hw, *dst_hw) if forward else (*dst_hw, *src_hw)
    more = ((win.dh, win.dw) if kernel.startswith("max")
            else (win.count_include_pad, win.divisor_override))
    geometry = (*planes, win.kh, win.kw, win.sh, win.sw, win.ph, win.pw, *more)
    return _launch(cb, kernel, kernel, src, dst_hw, geometry, argmax=argmax,
                   new_argmax=kernel == "maxpool2d_fwd")


def cupy_adaptive_avg_pool2d_forward(cb, x, out_hw):
    return _launch(cb, "adaptive_avgpool2d_fwd", "adaptive_avg_pool2d", x, out_hw,
                   (*x.shape[-2:], *out_hw))


def cupy_adaptive_avg_pool2d_backward(cb, gy, in_hw):
    return _launch(cb, "adaptive_avgpool2d_bwd", "adaptive_avg_pool2d backward", gy, in_hw,
                   (*in_hw, *gy.shape[-2:]))
