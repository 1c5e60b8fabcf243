"""Layers: Linear, activations, Dropout, Sequential, Flatten."""
from __future__ import annotations

import math
from collections import OrderedDict

from .. import _config
from .. import functional as F
from ..linear_chain import Run, fused_args, linear_chain
from ..training import TrainingMixin
from . import init
from .module import Module, Parameter


class Linear(Module):
    """Applies y = x W^T + b.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        bias: learn an additive bias (default True).

    Shape:
        input (*, in_features) -> output (*, out_features).

    Attributes:
        weight: (out_features, in_features), initialized from U(-1/sqrt(in), 1/sqrt(in)) as in
            PyTorch (kaiming_uniform with a = sqrt(5)).
        bias: (out_features,), from the same distribution.

    Example:
        >>> layer = nnx.nn.Linear(2, 3)
        >>> layer(nnx.tensor([[1., 2.]])).shape
        (1, 3)
    """

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"Linear: in_features and out_features must be >= 1, got "
                             f"{in_features} and {out_features}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self._label = f"Linear({self.in_features} -> {self.out_features})"  # for error messages
        b = _config.backend_for(device)
        dt = _config.to_dtype(dtype) or _config.get_default_dtype()
        from ..tensor import _wrap

        self.weight = Parameter(_wrap(b.xp.empty((self.out_features, self.in_features), dtype=dt), b))
        if bias:
            self.bias = Parameter(_wrap(b.xp.empty((self.out_features,), dtype=dt), b))
        else:  # registered as None, as in PyTorch: no "bias" in state_dict, forward adds nothing
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            init.uniform_(self.bias, -bound, bound)

    def forward(self, x, activation="linear", negative_slope=0.01):
        p = self._parameters
        return F.linear(x, p["weight"], p["bias"], activation, negative_slope, self._label)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Sigmoid(Module):
    """Element-wise 1 / (1 + exp(-x)), stable in both tails."""

    fused_activation = "sigmoid"

    def forward(self, x):
        return F.sigmoid(x)


class Tanh(Module):
    fused_activation = "tanh"

    def forward(self, x):
        return F.tanh(x)


class ReLU(Module):
    """Element-wise max(x, 0)."""

    fused_activation = "relu"

    def forward(self, x):
        return F.relu(x)


class LeakyReLU(Module):
    """x for x >= 0, ``negative_slope * x`` otherwise."""

    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = float(negative_slope)

    @property
    def fused_activation(self):
        return "leaky_relu" if self.negative_slope > 0 else None

    def forward(self, x):
        return F.leaky_relu(x, self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class Softmax(Module):
    def __init__(self, axis=-1, *, dim=None):
        super().__init__()
        self.axis = dim if dim is not None else axis

    def forward(self, x):
        return F.softmax(x, axis=self.axis)

    def extra_repr(self):
        return f"axis={self.axis}"


class LogSoftmax(Module):
    def __init__(self, axis=-1, *, dim=None):
        super().__init__()
        self.axis = dim if dim is not None else axis

    def forward(self, x):
        return F.log_softmax(x, axis=self.axis)

    def extra_repr(self):
        return f"axis={self.axis}"


class Identity(Module):
    def forward(self, x):
        return x


class Dropout(Module):
    """Zeroes elements with probability ``p`` in training mode (scaling the rest by 1/(1-p))."""

    def __init__(self, p=0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p = float(p)

    def forward(self, x):
        return F.dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"


class Flatten(Module):
    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return x.flatten(self.start_dim, self.end_dim)


class Sequential(TrainingMixin, Module):
    """A chain of modules applied in order; indexable like a list.

    A ``Linear`` directly followed by a ``Sigmoid``, ``ReLU``, ``Tanh`` or ``LeakyReLU`` runs as
    one graph node (matmul, then one fused bias+activation pass); the results are the same.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.Sigmoid(), nn.Linear(2, 1), nn.Sigmoid())
    """

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            for name, m in modules[0].items():
                self.add_module(name, m)
        else:
            for i, m in enumerate(modules):
                self.add_module(str(i), m)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, idx):
        mods = list(self._modules.items())
        if isinstance(idx, slice):
            return Sequential(OrderedDict(mods[idx]))
        if not -len(mods) <= idx < len(mods):
            raise IndexError(f"Sequential index {idx} out of range for {len(mods)} modules")
        return mods[idx][1]

    def append(self, module):
        self.add_module(str(len(self._modules)), module)
        return self

    def _plan(self):
        """[(module, activation)]: a Linear followed by a fusable activation becomes one entry
        (activation None otherwise). Rebuilt whenever the children change."""
        return self._plans()[0]

    def _plans(self):
        """``(plan, runs, version)``: ``plan`` as :meth:`_plan`; ``runs`` the same entries with
        each stretch of consecutive Linear entries gathered into a :class:`Run` (one graph node
        each, see ``nnx.linear_chain``). Cached until the layout changes (``version``)."""
        cached = self.__dict__.get("_fusion_plan")
        version = _config.layout_version[0]
        if cached is not None and cached[2] == version:
            return cached
        mods = list(self._modules.values())
        plan, i = [], 0
        while i < len(mods):
            m = mods[i]
            nxt = mods[i + 1] if i + 1 < len(mods) else None
            if _plain_linear(m) and type(nxt) in _FUSABLE_TYPES and nxt.fused_activation \
                    and "forward" not in nxt.__dict__:
                plan.append((m, nxt))
                i += 2
            else:
                plan.append((m, None))
                i += 1
        runs = []
        for m, act in plan:
            if _plain_linear(m):
                if runs and type(runs[-1]) is Run:
                    runs[-1].append((m, act))
                else:
                    runs.append(Run([(m, act)]))
            else:
                runs.append(m)
        cached = (plan, runs, version)
        object.__setattr__(self, "_fusion_plan", cached)
        return cached

    def forward(self, x):
        for run in self._plans()[1]:
            if type(run) is not Run:
                x = run(x)
                continue
            y = linear_chain(x, run)
            if y is None:  # not chainable as given: layer by layer (and their errors)
                for m, act in run:
                    x = m(x) if act is None else m.forward(x, *fused_args(act))
            else:
                x = y
        return x


_FUSABLE_TYPES = (Sigmoid, ReLU, Tanh, LeakyReLU)


def _plain_linear(m):
    """An ``nn.Linear`` itself (not a subclass) whose ``forward`` nobody replaced on the
    instance: the layers Sequential may run fused."""
    return type(m) is Linear and "forward" not in m.__dict__
