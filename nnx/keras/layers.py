"""``Dense``: Keras's fully connected layer, a ``Linear`` plus its activation.

A ``Dense`` is a ``Linear`` (same ``weight`` (out, in) and ``bias`` (out,) parameters, so
``state_dict`` keys stay ``"0.weight"``, ``"0.bias"`` as in PyTorch) that carries its activation
and starts from Keras's initialization. Its input size may be left open and filled in by
``nnx.keras.Sequential`` (at construction or in ``add``) from the ``output_shape`` of the
layers before it.
"""
from __future__ import annotations

from .. import _config
from .. import functional as F
from ..nn import init
from ..nn.config import class_name, config_arg, layer_from_config
from ..backends import activations as _table

from ..nn.activation import fusable, names as activation_names
from ..nn.layers import Linear, Softmax, _config_shape, _per_sample_shape
from ..nn.module import Module, Parameter

__all__ = ["Dense", "ACTIVATIONS"]

# Activation names Dense accepts (each entry of backends.activations by its name and Keras name,
# "linear", "softmax"; see nnx.nn.activation.names() for the current list). "leaky_relu" uses
# nnx's (and PyTorch's) slope 0.01; Keras 3's string "leaky_relu" uses 0.2: pass
# nn.LeakyReLU(0.2) for that.
ACTIVATIONS = activation_names()


def _normalize_activation(spec):
    """What ``Dense(activation=spec)`` asks for, as ``(name, module)``.

    ``name`` is ``"linear"`` (None given), an entry of ``backends.activations`` (fused with the
    bias add), ``"softmax"`` (over the last axis), or None for a module applied as is;
    ``module`` is the module to keep (None when the name says it all; a leaky ReLU is kept for
    its slope). Strings are entry names or their Keras names, case-insensitive.
    """
    if spec is None:
        return _table.LINEAR, None
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key in (_table.LINEAR, "softmax"):
            return key, None
        for entry in _table.entries():
            if key in (entry.name, entry.keras):
                return entry.name, None
        raise ValueError(f"Dense: unknown activation {spec!r}; expected one of "
                         f"{', '.join(activation_names())}, None, or an nnx.nn module such as "
                         f"nn.LeakyReLU(0.2)")
    if fusable(spec):
        return spec.fused_activation, (spec if spec.entry.has_slope else None)
    if type(spec) is Softmax and spec.axis in (-1, 1):
        return "softmax", None
    if isinstance(spec, Module):
        return None, spec
    raise TypeError(f"Dense: activation must be a name, None or an nnx.nn Module, got "
                    f"{type(spec).__name__}")


class Dense(Linear):
    """A fully connected layer with an activation, as ``keras.layers.Dense``:
    ``y = activation(x W^T + b)``.

    Args:
        units: number of outputs (``out_features``).
        activation: ``"linear"`` or None (no activation), ``"sigmoid"``, ``"relu"``, ``"tanh"``,
            ``"leaky_relu"`` (slope 0.01), any activation registered in
            ``backends.activations`` (by its name or Keras name), ``"softmax"`` (over the last
            axis), or an ``nnx.nn`` module applied to the output (e.g. ``nn.LeakyReLU(0.2)``).
            Default: None.
        input_dim: number of input features. Needed for the first layer of a model; a later
            ``Dense`` in a ``Sequential`` takes it from the layers before it.
        input_shape: (keyword only) Keras's alternative to ``input_dim``: the per-sample shape
            of the input, batch axis left out; ``Dense(4, input_shape=(3,))`` is
            ``Dense(4, input_dim=3)``. Its last entry is the number of input features; the
            others (as in ``(5, 3)``) only tell the model's output shapes (``summary``).
        use_bias: learn an additive bias. Default: True.
        device, dtype: where and in which dtype to create the parameters (default: the current
            default device and dtype; ``Sequential.add`` uses the model's).

    Shape:
        input (*, in_features) -> output (*, units).

    Attributes:
        weight: (units, in_features), Glorot-uniform U(-a, a) with a = sqrt(6 / (in + units)),
            Keras's default (``nn.Linear`` uses PyTorch's U(+-1/sqrt(in)) instead).
        bias: (units,), zeros, as in Keras.

    The sigmoid, ReLU, tanh and leaky ReLU activations run fused with the bias add (one graph
    node per layer, as ``Linear`` + activation does in ``Sequential``).

    Example:
        >>> model = nn.Sequential()
        >>> model.add(nn.Dense(2, input_dim=2, activation="sigmoid"))
        >>> model.add(nn.Dense(1, activation="sigmoid"))
        >>> model(nnx.tensor([[0., 1.]])).shape
        (1, 1)
    """

    def __init__(self, units, activation=None, input_dim=None, use_bias=True, device=None,
                 dtype=None, *, input_shape=None):
        Module.__init__(self)
        if isinstance(units, bool) or not isinstance(units, int) or units < 1:
            raise ValueError(f"Dense: units must be a positive int, got {units!r}")
        shape = _per_sample_shape(input_shape, f"Dense({units})")
        if shape is not None:
            if shape[-1] is None or input_dim is not None and input_dim != shape[-1]:
                raise ValueError(f"Dense({units}): the last entry of input_shape={shape} must be "
                                 f"the number of input features" +
                                 ("" if input_dim is None else f" (input_dim={input_dim!r})"))
            input_dim = shape[-1]
        self.input_shape = shape if shape is not None and len(shape) > 1 else None
        name, module = _normalize_activation(activation)
        self.units = self.out_features = int(units)
        self.in_features = None
        self.use_bias = bool(use_bias)
        self.activation = name if name is not None else type(module).__name__
        self._act_name = name  # fused or "softmax" name, or None for a custom module
        self._slope = getattr(module, "negative_slope", 0.01)
        if module is not None:
            self.activation_module = module  # registered child: moves with .to(), shows in repr
        self.register_parameter("weight", None)
        self.register_parameter("bias", None)
        if input_dim is not None:
            self.build(input_dim, device=device, dtype=dtype)

    @property
    def built(self):
        return self._parameters.get("weight") is not None

    def build(self, in_features, device=None, dtype=None):
        """Create the parameters for ``in_features`` inputs (Glorot-uniform weight, zero bias)."""
        if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 1:
            raise ValueError(f"Dense({self.units}): input_dim must be a positive int, got "
                             f"{in_features!r}")
        b = _config.backend_for(device)
        dt = _config.to_dtype(dtype) or _config.get_default_dtype()
        from ..tensor import _wrap

        self.in_features = int(in_features)
        self._label = f"Dense({self.in_features} -> {self.units})"  # for error messages
        self.weight = Parameter(_wrap(b.xp.empty((self.units, self.in_features), dtype=dt), b))
        if self.use_bias:
            self.bias = Parameter(_wrap(b.xp.empty((self.units,), dtype=dt), b))
        self.reset_parameters()
        return self

    def output_shape(self, input_shape):
        """``input_shape[:-1] + (units,)``, from the ``input_shape`` given to the constructor
        when ``input_shape`` is None (else ``(units,)``)."""
        return super().output_shape(self.input_shape if input_shape is None else input_shape)

    def reset_parameters(self):
        init.xavier_uniform_(self.weight)
        if self.bias is not None:
            init.zeros_(self.bias)

    def _unbuilt(self):
        return ValueError(f"Dense({self.units}) has no input size yet: give input_dim=..., or "
                          f"add it to a model with Sequential.add() after a layer of known size")

    def logits(self, x):
        """The pre-activation ``x W^T + b`` (what a fused loss takes)."""
        p = self._parameters
        if p.get("weight") is None:
            raise self._unbuilt()
        return F.linear(x, p["weight"], p["bias"], "linear", 0.01, self._label)

    def forward(self, x):
        p = self._parameters
        w = p.get("weight")
        if w is None:
            raise self._unbuilt()
        act = self._act_name
        if act is not None and act != "softmax":  # fused into the bias add
            return F.linear(x, w, p["bias"], act, self._slope, self._label)
        y = F.linear(x, w, p["bias"], "linear", 0.01, self._label)
        if act == "softmax":
            return F.softmax(y, axis=-1)
        return self._modules["activation_module"](y)

    def get_config(self):
        """``{"class": "Dense", "units": int, "input_dim": int or None, "activation": name or
        the activation module's config, "use_bias": bool}``, plus ``"input_shape"`` (a list)
        when one of more than one axis was given."""
        cfg = {"class": class_name(self), "units": self.units, "input_dim": self.in_features,
               "activation": self._activation_config(), "use_bias": self.use_bias}
        if self.input_shape is not None:
            cfg["input_shape"] = list(self.input_shape)
        return cfg

    def _activation_config(self):
        """The activation as data: its name, or the config of a custom activation module."""
        mod = self._modules.get("activation_module")
        return self._act_name if mod is None else mod.get_config()

    @classmethod
    def from_config(cls, config, device=None, dtype=None):
        """A fresh ``Dense`` (Keras's initialization; unbuilt when ``input_dim`` is None)."""
        act = config.get("activation")
        if act is not None and not isinstance(act, str):
            act = layer_from_config(act)
        in_dim = config_arg(config, "input_dim", (int, type(None)))
        return cls(config_arg(config, "units", (int,), required=True), activation=act,
                   input_dim=in_dim, use_bias=config_arg(config, "use_bias", (bool,), True),
                   device=device, dtype=dtype, input_shape=_config_shape(config))

    def extra_repr(self):
        s = f"in_features={self.in_features}, units={self.units}, activation={self.activation!r}"
        return s if self.use_bias else s + ", use_bias=False"

