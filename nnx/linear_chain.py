"""What ``Sequential`` runs for a stretch of Linear layers: one ``LinearChain`` graph node.

The layers are computed exactly as separate ``functional.linear`` nodes would compute them
(same kernels, same order, bit-identical results), but the graph gets one node for the whole
stretch: one ``Function.apply``, one output tensor and one engine visit instead of one per
layer. On small networks that Python bookkeeping is most of a training step.
"""
from __future__ import annotations

from . import _config
from .functional import LinearChain
from .tensor import Tensor


class Run(list):
    """A stretch of ``(linear_module, activation_module_or_None)`` entries of a Sequential,
    with the parameters and layer spec of its last chained call cached (see
    :func:`linear_chain`)."""

    __slots__ = ("cached",)

    def __init__(self, entries=()):
        super().__init__(entries)
        self.cached = None


def fused_args(act):
    """``(activation, negative_slope)`` for the bias+activation kernel of a Linear followed by
    the activation module ``act`` (None: no activation)."""
    if act is None:
        return "linear", 0.01
    return act.fused_activation, act.__dict__.get("negative_slope", 0.01)


def linear_chain(x, run):
    """Run the layers of ``run`` (a :class:`Run`) on ``x`` as one :class:`LinearChain` node.

    Returns None when the run must go layer by layer instead: an input that is not a 2-D-or-more
    floating Tensor of the weights' dtype and width, layers whose sizes or dtypes do not chain
    (the per-layer path raises the error naming the layer), or anomaly mode (which names the
    failing layer). The parameters and layer spec are cached on ``run`` until a parameter's
    storage is replaced or a module attribute is set (``_config.layout_version``).
    """
    xd = x.data if type(x) is Tensor else None
    if xd is None or xd.ndim < 2 or _config.detect_anomaly_enabled:
        return None
    c = run.cached
    if c is None or c[0] != _config.layout_version[0] or c[1] != xd.dtype \
            or c[2] != xd.shape[-1]:
        c = run.cached = _chain_spec(run, xd.dtype, xd.shape[-1])
        if c is None:
            return None
    return LinearChain(c[4]).apply(x, *c[3])


def _chain_spec(run, dt, width):
    """``(layout_version, dtype, in_width, params, layers)`` for ``run`` fed ``dt`` inputs of
    ``width`` features, or None when its layers do not chain for such an input."""
    version = _config.layout_version[0]
    params, spec, in_width = [], [], width
    for m, act in run:
        p = m._parameters
        w, b = p["weight"], p.get("bias")
        wd = w.data
        if wd.dtype != dt or wd.ndim != 2 or wd.shape[1] != width:
            return None
        width = wd.shape[0]
        params.append(w)
        if b is not None:
            if b.data.dtype != dt:
                return None
            params.append(b)
        spec.append(fused_args(act) + (b is not None,))
    return version, dt, in_width, tuple(params), tuple(spec)
