"""What ``Sequential`` runs: each Linear fused with the activation after it, each stretch of
such Linear layers as one ``LinearChain`` graph node, and each Conv2d/Conv1d fused with an
activation after it whose backward reads its output (ReLU, sigmoid, tanh, leaky ReLU with a
positive slope): one conv node that applies the activation while each piece of its output is
in cache and folds the activation's backward into its own (``F.conv2d(activation=...)``).

The layers are computed exactly as separate ``functional.linear`` nodes would compute them
(same kernels, same order, bit-identical results), but the graph gets one node for the whole
stretch: one ``Function.apply``, one output tensor and one engine visit instead of one per
layer. On small networks that Python bookkeeping is most of a training step.

Both the plan (which modules fuse) and each stretch's layer spec are cached (``nnx.cache``)
against the modules and parameters they read: changing one of them (a child replaced, a
parameter's storage moved, an activation's slope set) empties exactly the caches built from it.
"""
from __future__ import annotations

from ..backends import activations as _table

from .. import _config
from ..cache import Cache
from ..conv import fusable_activation as _conv_takes
from ..functional import LinearChain, chain_layer
from ..tensor import Tensor
from .activation import fusable as _fusable_activation
from .conv import Conv1d, Conv2d
from .layers import Linear

__all__ = ["Run", "Fused", "fused_args", "plan", "forward", "linear_chain"]


class Run(list):
    """A stretch of ``(linear_module, activation_module_or_None)`` entries of a Sequential,
    with the parameters and layer spec of its last chained call cached (``spec``)."""

    __slots__ = ("spec",)

    def __init__(self, entries=()):
        super().__init__(entries)
        self.spec = Cache()


def fused_args(act):
    """``(activation, negative_slope)`` for the bias+activation kernel of a Linear followed by
    the activation module ``act`` (None: no activation)."""
    if act is None:
        return _table.LINEAR, 0.01
    return act.fused_activation, act.fused_slope


class Fused(tuple):
    """``(module, activation_module)``: a layer other than Linear run as
    ``module.forward(x, activation, slope)`` (a convolution with its activation)."""

    __slots__ = ()


def _plain_conv(m):
    """An ``nn.Conv2d``/``nn.Conv1d`` itself whose ``forward`` nobody replaced."""
    return type(m) in (Conv2d, Conv1d) and "forward" not in m.__dict__


def _conv_fuses(m, act) -> bool:
    return _plain_conv(m) and _fusable_activation(act) and _conv_takes(*fused_args(act))


def _plain_linear(m):
    """An ``nn.Linear`` itself (not a subclass) whose ``forward`` nobody replaced on the
    instance: the layers Sequential may run fused."""
    return type(m) is Linear and "forward" not in m.__dict__


def plan(seq):
    """``(entries, runs)`` for the Sequential ``seq``: ``entries`` lists ``(module, activation)``
    (a Linear, or a Conv2d/Conv1d, followed by an activation module it can fuse becomes one
    entry, activation None otherwise); ``runs`` the same with each stretch of consecutive
    Linear entries gathered into a :class:`Run` and each fused conv as a :class:`Fused`. Cached until ``seq`` or one of its children changes."""
    cache = seq.__dict__.get("_fusion_plan")
    if cache is None:
        cache = Cache()
        object.__setattr__(seq, "_fusion_plan", cache)
    value = cache.value
    if value is not None:
        return value
    mods = list(seq._modules.values())
    entries, i = [], 0
    while i < len(mods):
        m = mods[i]
        nxt = mods[i + 1] if i + 1 < len(mods) else None
        if (_plain_linear(m) and _fusable_activation(nxt)) or _conv_fuses(m, nxt):
            entries.append((m, nxt))
            i += 2
        else:
            entries.append((m, None))
            i += 1
    runs = []
    for m, act in entries:
        if _plain_linear(m):
            if runs and type(runs[-1]) is Run:
                runs[-1].append((m, act))
            else:
                runs.append(Run([(m, act)]))
        else:
            runs.append(m if act is None else Fused((m, act)))
    return cache.store((entries, runs), [seq, seq._modules] + [m for m in mods if m is not None])


def forward(seq, x):
    """``seq``'s forward: each Run as one LinearChain node where it chains, else layer by layer
    (whose errors then name the layer)."""
    cache = seq.__dict__.get("_fusion_plan")
    value = cache.value if cache is not None else None
    for run in (value or plan(seq))[1]:
        if type(run) is not Run:
            if type(run) is Fused:
                x = run[0].forward(x, *fused_args(run[1]))
            else:
                x = run(x)
            continue
        y = linear_chain(x, run)
        if y is None:
            for m, act in run:
                x = m(x) if act is None else m.forward(x, *fused_args(act))
        else:
            x = y
    return x


def linear_chain(x, run):
    """Run the layers of ``run`` (a :class:`Run`) on ``x`` as one :class:`LinearChain` node.

    Returns None when the run must go layer by layer instead: an input that is not a 2-D-or-more
    floating Tensor of the weights' dtype and width, layers whose sizes or dtypes do not chain
    (the per-layer path raises the error naming the layer), or anomaly mode (which names the
    failing layer).
    """
    xd = x.data if type(x) is Tensor else None
    if xd is None or xd.ndim < 2 or _config.detect_anomaly_enabled:
        return None
    c = run.spec.value
    if c is None or c[0] != xd.dtype or c[1] != xd.shape[-1]:
        c = _chain_spec(run, xd.dtype, xd.shape[-1])
        if c is None:
            return None
    return LinearChain(c[3]).apply(x, *c[2])


def _chain_spec(run, dt, width):
    """``(dtype, in_width, params, layers)`` for ``run`` fed ``dt`` inputs of ``width``
    features (cached in ``run.spec``), or None when its layers do not chain for such an input."""
    params, spec, in_width, watched = [], [], width, []
    for m, act in run:
        p = m._parameters
        w, b = p["weight"], p.get("bias")
        wd = w.data
        if wd.dtype != dt or wd.ndim != 2 or wd.shape[1] != width:
            return None
        width = wd.shape[0]
        params.append(w)
        watched += [m, p, w]
        if b is not None:
            if b.data.dtype != dt:
                return None
            params.append(b)
            watched.append(b)
        if act is not None:
            watched.append(act)
        spec.append(chain_layer(*fused_args(act), b is not None))
    return run.spec.store((dt, in_width, tuple(params), tuple(spec)), watched)
