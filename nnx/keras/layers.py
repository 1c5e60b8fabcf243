"""Keras's layers: ``Dense`` (a ``Linear`` plus its activation) and, for images, ``Conv2D``,
``MaxPooling2D`` and ``BatchNormalization`` (``Flatten`` and ``Dropout`` are ``nnx.nn``'s own).

A ``Dense`` is a ``Linear`` (same ``weight`` (out, in) and ``bias`` (out,) parameters, so
``state_dict`` keys stay ``"0.weight"``, ``"0.bias"`` as in PyTorch) that carries its activation
and starts from Keras's initialization. Its input size may be left open and filled in by
``nnx.keras.Sequential`` (at construction or in ``add``) from the ``output_shape`` of the
layers before it.
"""
from __future__ import annotations

import numpy as np

from .. import _config
from .. import functional as F
from ..nn import init
from ..nn.config import class_name, config_arg, layer_from_config
from ..backends import activations as _table

from ..nn.activation import fusable, names as activation_names
from ..nn.inputs import Input
from ..nn.layers import Dropout, Flatten, Linear, Softmax, _config_shape, _per_sample_shape
from ..nn.module import Module, Parameter
from ..nn.normalization import _BatchNorm
from .. import activations as _A
from ..conv import fusable_activation
from ..errors import CheckpointError, ShapeError

# Flatten, Dropout and Input are nnx.nn's own, here too so that keras.layers.Flatten() ports
__all__ = ["Dense", "Conv2D", "MaxPooling2D", "BatchNormalization", "Flatten", "Dropout", "Input",
           "ACTIVATIONS"]

# Activation names Dense accepts (each entry of backends.activations by its name and Keras name,
# "linear", "softmax"; see nnx.nn.activation.names() for the current list). "leaky_relu" uses
# nnx's (and PyTorch's) slope 0.01; Keras 3's string "leaky_relu" uses 0.2: pass
# nn.LeakyReLU(0.2) for that.
ACTIVATIONS = activation_names()


def _normalize_activation(spec, who="Dense"):
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
        raise ValueError(f"{who}: unknown activation {spec!r}; expected one of "
                         f"{', '.join(activation_names())}, None, or an nnx.nn module such as "
                         f"nn.LeakyReLU(0.2)")
    if fusable(spec):
        return spec.fused_activation, (spec if spec.entry.has_slope else None)
    if type(spec) is Softmax and spec.axis in (-1, 1):
        return "softmax", None
    if isinstance(spec, Module):
        return None, spec
    raise TypeError(f"{who}: activation must be a name, None or an nnx.nn Module, got "
                    f"{type(spec).__name__}")


def _set_activation(layer, spec, who):
    """Give ``layer`` the activation ``spec`` asks for: ``activation`` (its name, for printing),
    ``_act_name`` (a fused or "softmax" name, or None for a custom module), ``_slope`` and the
    child ``activation_module`` for a custom (or leaky) module."""
    name, module = _normalize_activation(spec, who)
    layer.activation = name if name is not None else type(module).__name__
    layer._act_name = name
    layer._slope = getattr(module, "fused_slope", 0.01)
    if module is not None:
        layer.activation_module = module  # registered child: moves with .to(), shows in repr


def _activation_config(layer):
    """The activation as data: its name, or the config of a custom activation module."""
    mod = layer._modules.get("activation_module")
    return layer._act_name if mod is None else mod.get_config()


def _activation_from_config(config):
    act = config.get("activation")
    return layer_from_config(act) if act is not None and not isinstance(act, str) else act


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
        self.units = self.out_features = int(units)
        self.in_features = None
        self.use_bias = bool(use_bias)
        _set_activation(self, activation, "Dense")
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
        return _activation_config(self)

    @classmethod
    def from_config(cls, config, device=None, dtype=None):
        """A fresh ``Dense`` (Keras's initialization; unbuilt when ``input_dim`` is None)."""
        act = _activation_from_config(config)
        in_dim = config_arg(config, "input_dim", (int, type(None)))
        return cls(config_arg(config, "units", (int,), required=True), activation=act,
                   input_dim=in_dim, use_bias=config_arg(config, "use_bias", (bool,), True),
                   device=device, dtype=dtype, input_shape=_config_shape(config))

    def extra_repr(self):
        s = f"in_features={self.in_features}, units={self.units}, activation={self.activation!r}"
        return s if self.use_bias else s + ", use_bias=False"


    def keras_weights(self):
        """``[(name, Keras shape, get, set)]`` of this layer's weights in Keras's layout: the
        kernel ``(in_features, units)`` (the transpose of ``weight``), then the bias."""
        if not self.built:
            return []
        return [_slot("kernel (in_features, units) as in Keras", self.weight, (1, 0)),
                *_plain_slots(self, ("bias",))]


# ============================================================================ image layers
#
# NOTE: the layout convention. Keras's image layers take and give channels-last batches
# (N, H, W, C); nnx's convolution and pooling ops are NCHW. Each layer below converts at its own
# boundary: it views its input as NCHW through a permutation (no copy: on the CPU nnx's
# convolution works on channels-last memory, so the view is already the layout it wants), runs
# the nnx op, and permutes the NCHW result back (nnx's CPU convolution returns an NCHW view of a
# channels-last array, so the NHWC result is contiguous again). Between layers everything is in
# Keras's layout, ``model.summary()`` shows Keras's shapes, and ``Flatten`` (nnx.nn's, over the
# NHWC batch) flattens in Keras's (h, w, c) order, so the Dense after it has Keras's kernel rows
# and weights trained by Keras load unchanged (``set_weights``).
#
# A hand-built NCHW nnx model (nn.Conv2d, ..., nn.Flatten, nn.Linear) computes the same function
# from the same weights when it is given ``x.permute(0, 3, 1, 2)``, its conv weights are the
# Keras kernels (kh, kw, in, out) transposed to (out, in, kh, kw) (``conv_weight_from_kernel``),
# and the Linear after its Flatten has the Dense kernel's rows reordered from (h, w, c) to
# (c, h, w) (``linear_weight_from_flat_kernel``). ``data_format="channels_first"`` makes a
# layer take NCHW as it is (no permutations; the Flatten after it then flattens (c, h, w)).

def conv_weight_from_kernel(kernel):
    """A Keras ``Conv2D`` kernel (kh, kw, in, out) as ``nn.Conv2d``'s weight (out, in, kh, kw)
    (host NumPy arrays)."""
    return np.ascontiguousarray(np.asarray(kernel).transpose(3, 2, 0, 1))


def linear_weight_from_flat_kernel(kernel, hwc):
    """The kernel (H*W*C, units) of a Keras ``Dense`` after ``Flatten`` of an (H, W, C) map, as
    the weight (units, C*H*W) of an ``nn.Linear`` after ``nn.Flatten`` of the same map in NCHW
    (rows reordered from (h, w, c) to (c, h, w), then transposed)."""
    h, w, c = hwc
    k = np.asarray(kernel)
    return np.ascontiguousarray(k.reshape(h, w, c, -1).transpose(3, 2, 0, 1).reshape(-1, h * w * c))


def _slot(what, param, perm):
    """A weight slot whose Keras layout is ``param`` transposed by ``perm``."""
    inv = tuple(np.argsort(perm))
    shape = tuple(param.shape[i] for i in perm)

    def get():
        return np.ascontiguousarray(param.numpy().transpose(perm))

    def set_(host):
        param.data[...] = param._backend.asarray(np.ascontiguousarray(host.transpose(inv)))
    return what, shape, get, set_


def _plain_slots(layer, names):
    """Weight slots in PyTorch's layout (the same as Keras's) for ``layer``'s tensors
    ``names`` (parameters or buffers), those that exist."""
    return [(name, *_tensor_slot(getattr(layer, name))) for name in names
            if getattr(layer, name, None) is not None]


def weight_slots(model):
    """Every weight of ``model`` in Keras's order and layout, as ``(what, shape, get, set)``:
    each child's ``keras_weights()`` (Dense, Conv2D, BatchNormalization), else its parameters
    as ``state_dict`` holds them. ``Sequential.get_weights`` / ``set_weights`` read this."""
    out = []
    for m in model.children():
        if hasattr(m, "keras_weights"):
            out += m.keras_weights()
        else:
            out += [("parameter", *_tensor_slot(p)) for p in m.parameters()]
    return out


def _tensor_slot(t):
    """``(shape, get, set)`` of a tensor kept in its own layout."""
    def get():
        return np.array(t.numpy(), copy=True)

    def set_(host):
        t.data[...] = t._backend.asarray(host)
    return tuple(t.shape), get, set_


def _pair(value, name, who, minimum=1):
    """``value`` (an int or 2 ints) as a tuple of 2 ints >= ``minimum``; ValueError naming
    ``who``."""
    items = tuple(value) if isinstance(value, (list, tuple)) else (value, value)
    if len(items) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer))
                              or v < minimum for v in items):
        raise ValueError(f"{who}: {name} must be a positive int or a tuple of 2 positive ints, "
                         f"got {value!r}")
    return tuple(int(v) for v in items)


def _padding(value, who):
    p = value.lower() if isinstance(value, str) else value
    if p not in ("valid", "same"):
        raise ValueError(f"{who}: padding must be 'valid' or 'same', got {value!r}")
    return p


def _data_format(value, who):
    f = "channels_last" if value is None else value
    if f not in ("channels_last", "channels_first"):
        raise ValueError(f"{who}: data_format must be 'channels_last' (Keras's default, "
                         f"(N, H, W, C)) or 'channels_first' ((N, C, H, W)), got {value!r}")
    return f


def _same_pads(size, k, s, d=1):
    """Keras's 'same' padding of one axis: ``(before, after)`` so that the output has
    ``ceil(size / s)`` entries; an odd total puts the extra at the end (as Keras/TF)."""
    out = -(-size // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


def _out_size(size, k, s, d, padding):
    if size is None:
        return None
    if padding == "same":
        return -(-size // s)
    return (size - (k - 1) * d - 1) // s + 1


def _shape_list(shape):
    return None if shape is None else list(shape)


class _Image(Module):
    """Shared by the image layers: the layout, the input check, the NHWC <-> NCHW views."""

    data_format = "channels_last"
    input_shape = None

    @property
    def _last(self):
        return self.data_format == "channels_last"

    def _check_input(self, x, channels=None):
        """ShapeError naming the layer unless ``x`` is a 4-D batch (with ``channels`` channels
        on the layout's channel axis, when given)."""
        shape = tuple(getattr(x, "shape", ()))
        if len(shape) == 4 and (channels is None or shape[3 if self._last else 1] == channels):
            return
        c = "C" if channels is None else channels
        want = f"(N, H, W, {c}), channels last" if self._last else f"(N, {c}, H, W)"
        hint = ""
        if len(shape) == 4 and self._last and channels is not None and shape[1] == channels:
            hint = ("; it looks channels-first: Keras layers take (N, H, W, C) (transpose the "
                    "batch, or give the layer data_format='channels_first')")
        elif len(shape) == 3:
            hint = "; a single image needs a batch axis (x[None])"
        raise ShapeError(f"{self._label} got input of shape {shape} (expected {want}){hint}")

    def _to_nchw(self, x):
        return x.permute(0, 3, 1, 2) if self._last else x

    def _from_nchw(self, y):
        return y.permute(0, 2, 3, 1) if self._last else y

    def _hwc(self, input_shape):
        """(H, W, C) of a per-sample shape in this layer's layout (entries may be None), or
        None when unknown."""
        shape = self.input_shape if input_shape is None else input_shape
        if shape is None or len(shape) != 3:
            return None
        return tuple(shape) if self._last else (shape[1], shape[2], shape[0])

    def _per_sample(self, h, w, c):
        return (h, w, c) if self._last else (c, h, w)

    def _image_shape(self, input_shape):
        shape = _per_sample_shape(input_shape, self._label)
        if shape is not None and len(shape) != 3:
            raise ValueError(f"{self._label}: input_shape must be the shape of one image, "
                             f"{'(H, W, C)' if self._last else '(C, H, W)'}, e.g. (28, 28, 1); "
                             f"got {input_shape!r}")
        return shape

    def _base_config(self):
        cfg = {"class": class_name(self), "data_format": self.data_format}
        if self.input_shape is not None:
            cfg["input_shape"] = list(self.input_shape)
        return cfg


def _configured(name, make, config, size_key=None, device=None, dtype=None):
    """``make()``, a layer from its config (CheckpointError for a bad value), then built for
    ``config[size_key]`` (its input channels or features) when the config has one."""
    try:
        layer = make()
    except ValueError as e:
        raise CheckpointError(f"layer config {name!r}: {e}") from None
    n = config_arg(config, size_key, (int, type(None))) if size_key else None
    if n is not None and not layer.built:
        layer.build(n, device=device, dtype=dtype)
    return layer


def _config_pair(config, key, default):
    v = config_arg(config, key, (int, list, tuple, type(None)), default)
    return tuple(v) if isinstance(v, list) else v


class Conv2D(_Image):
    """A 2-D convolution over channels-last images, as ``keras.layers.Conv2D``:
    ``y = activation(conv(x, kernel) + bias)``.

    Args:
        filters: output channels.
        kernel_size: int or (kh, kw).
        strides: int or (sh, sw). Default (1, 1).
        padding: ``"valid"`` (none) or ``"same"`` (output ``ceil(size / stride)``; an odd
            total padding puts the extra row/column at the bottom/right, as Keras).
        data_format: ``"channels_last"`` (default: input (N, H, W, C)) or
            ``"channels_first"`` ((N, C, H, W)).
        dilation_rate: int or (dh, dw). Default (1, 1).
        groups: input and output channels are split into ``groups`` independent convolutions.
        activation: as ``Dense``'s (a name, None, or an nnx.nn module), applied to the
            channels-last output (``"softmax"`` over the channels).
        use_bias: learn a bias. Default True.
        input_shape: (keyword) the shape of one input image, (H, W, C) for channels last; the
            first layer of a model needs it (or an ``Input``), later ones take their input
            channels from the layer before them.

    Shape:
        input (N, H, W, C) -> output (N, OH, OW, filters), ``OH = (H - dh (kh - 1) - 1) // sh
        + 1`` for "valid", ``ceil(H / sh)`` for "same".

    Attributes:
        weight: (filters, C / groups, kh, kw), PyTorch's layout (``state_dict``), Glorot
            uniform as Keras. ``get_weights`` gives Keras's kernel (kh, kw, C / groups,
            filters).
        bias: (filters,), zeros.

    The NHWC batch is viewed as NCHW at the layer (see the NOTE above ``Conv2D`` in
    ``nnx/keras/layers.py``): the convolution is nnx's ``F.conv2d``.

    Example:
        >>> model = nn.Sequential([Conv2D(8, 3, activation="relu", input_shape=(28, 28, 1)),
        ...                        MaxPooling2D(), nn.Flatten(), nn.Dense(10)])
        >>> model.predict(np.zeros((2, 28, 28, 1), np.float32)).shape
        (2, 10)
    """

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", data_format=None,
                 dilation_rate=(1, 1), groups=1, activation=None, use_bias=True, device=None,
                 dtype=None, *, input_shape=None):
        Module.__init__(self)
        if isinstance(filters, bool) or not isinstance(filters, (int, np.integer)) or filters < 1:
            raise ValueError(f"Conv2D: filters must be a positive int, got {filters!r}")
        self.filters = int(filters)
        self.kernel_size = _pair(kernel_size, "kernel_size", f"Conv2D({filters})")
        kh, kw = self.kernel_size
        who = f"Conv2D({filters}, {kh}x{kw})"
        self._label = who
        self.strides = _pair(strides, "strides", who)
        self.padding = _padding(padding, who)
        self.data_format = _data_format(data_format, who)
        self.dilation_rate = _pair(dilation_rate, "dilation_rate", who)
        if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1 \
                or filters % groups:
            raise ValueError(f"{who}: groups must be a positive int dividing filters "
                             f"({filters}), got {groups!r}")
        self.groups = int(groups)
        if self.padding == "same" and self.strides != (1, 1) and self.dilation_rate != (1, 1):
            raise ValueError(f"{who}: padding='same' with strides > 1 and dilation_rate > 1 "
                             f"together is not supported (as in Keras)")
        self.use_bias = bool(use_bias)
        _set_activation(self, activation, "Conv2D")
        self.input_shape = self._image_shape(input_shape)
        self.in_channels = None
        self.register_parameter("weight", None)
        self.register_parameter("bias", None)
        hwc = self._hwc(None)
        if hwc is not None and hwc[2] is not None:
            self.build(hwc[2], device=device, dtype=dtype)

    @property
    def built(self):
        return self._parameters.get("weight") is not None

    def build(self, in_channels, device=None, dtype=None):
        """Create the parameters for ``in_channels`` input channels."""
        if isinstance(in_channels, bool) or not isinstance(in_channels, (int, np.integer)) \
                or in_channels < 1 or in_channels % self.groups:
            raise ValueError(f"{self._label}: the input channels must be a positive int "
                             f"divisible by groups ({self.groups}), got {in_channels!r}")
        b = _config.backend_for(device)
        dt = _config.to_dtype(dtype) or _config.get_default_dtype()
        from ..tensor import _wrap

        self.in_channels = int(in_channels)
        kh, kw = self.kernel_size
        self._label = f"Conv2D({self.in_channels} -> {self.filters}, {kh}x{kw})"
        shape = (self.filters, self.in_channels // self.groups, kh, kw)
        self.weight = Parameter(_wrap(b.xp.empty(shape, dtype=dt), b))
        if self.use_bias:
            self.bias = Parameter(_wrap(b.xp.empty((self.filters,), dtype=dt), b))
        self.reset_parameters()
        return self

    def build_from_shape(self, input_shape, device=None, dtype=None):
        """Build for a per-sample input shape (what the layers before tell; None: unknown)."""
        hwc = self._hwc(input_shape)
        if input_shape is not None and len(input_shape) != 3:
            raise ShapeError(f"{self._label} takes images, per-sample shape "
                             f"{'(H, W, C)' if self._last else '(C, H, W)'}; the layer before "
                             f"it outputs {tuple(input_shape)}")
        if hwc is None or hwc[2] is None:
            raise ValueError(f"{self._label} cannot tell its input channels: give the first "
                             f"layer input_shape=(H, W, C), e.g. input_shape=(28, 28, 1), or "
                             f"start the model with nn.Input((28, 28, 1))")
        return self.build(hwc[2], device=device, dtype=dtype)

    def reset_parameters(self):
        init.xavier_uniform_(self.weight)  # fans (C/groups) kh kw and filters kh kw, as Keras
        if self.bias is not None:
            init.zeros_(self.bias)

    def _pads(self, h, w):
        """The padding argument of ``F.conv2d``, and the explicit ``F.pad`` pads (or None)."""
        if self.padding == "valid":
            return 0, None
        if self.strides == (1, 1):
            return "same", None  # nnx's 'same' puts an odd extra at the end, as Keras
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.strides, self.dilation_rate
        (t, b), (l, r) = _same_pads(h, kh, sh, dh), _same_pads(w, kw, sw, dw)
        if t == b and l == r:
            return (t, l), None
        return 0, (l, r, t, b)

    def forward(self, x):
        p = self._parameters
        if p.get("weight") is None:
            raise ValueError(f"{self._label} has no input channels yet: give input_shape=... "
                             f"or add it to a model after a layer of known shape")
        self._check_input(x, self.in_channels)
        xc = self._to_nchw(x)
        padding, explicit = self._pads(xc.shape[2], xc.shape[3])
        if explicit is not None:
            xc = F.pad(xc, explicit)
        act = self._act_name
        fused = act is not None and act != _table.LINEAR and fusable_activation(act, self._slope)
        y = self._from_nchw(F.conv2d(xc, p["weight"], p["bias"], self.strides, padding,
                                     self.dilation_rate, self.groups, layer=self._label,
                                     activation=act if fused else _table.LINEAR,
                                     negative_slope=self._slope))
        if fused:  # applied inside the convolution's node
            return y
        if act == "softmax":
            return F.softmax(y, axis=-1 if self._last else 1)
        if act is None:
            return self._modules["activation_module"](y)
        return y if act == _table.LINEAR else _A.activation(y, act, self._slope)

    def output_shape(self, input_shape):
        """(OH, OW, filters) for an (H, W, C) input (channels last); None when unknown."""
        hwc = self._hwc(input_shape)
        if hwc is None:
            return None
        sizes = [_out_size(n, k, s, d, self.padding) for n, k, s, d in
                 zip(hwc[:2], self.kernel_size, self.strides, self.dilation_rate)]
        return self._per_sample(sizes[0], sizes[1], self.filters)

    def keras_weights(self):
        """The kernel (kh, kw, C / groups, filters), as Keras's, then the bias."""
        if not self.built:
            return []
        return [_slot("kernel (kh, kw, in, filters) as in Keras", self.weight, (2, 3, 1, 0)),
                *_plain_slots(self, ("bias",))]

    def get_config(self):
        cfg = self._base_config()
        cfg.update({"filters": self.filters, "kernel_size": list(self.kernel_size),
                    "strides": list(self.strides), "padding": self.padding,
                    "dilation_rate": list(self.dilation_rate), "groups": self.groups,
                    "activation": _activation_config(self), "use_bias": self.use_bias,
                    "in_channels": self.in_channels})
        return cfg

    @classmethod
    def from_config(cls, config, device=None, dtype=None):
        return _configured("Conv2D", lambda: cls(
            config_arg(config, "filters", (int,), required=True),
            _config_pair(config, "kernel_size", None),
            strides=_config_pair(config, "strides", (1, 1)),
            padding=config_arg(config, "padding", (str,), "valid"),
            data_format=config_arg(config, "data_format", (str, type(None))),
            dilation_rate=_config_pair(config, "dilation_rate", (1, 1)),
            groups=config_arg(config, "groups", (int,), 1),
            activation=_activation_from_config(config),
            use_bias=config_arg(config, "use_bias", (bool,), True),
            device=device, dtype=dtype, input_shape=_config_shape(config)),
            config, "in_channels", device, dtype)

    def extra_repr(self):
        s = (f"{self.filters}, kernel_size={self.kernel_size}, strides={self.strides}, "
             f"padding={self.padding!r}, activation={self.activation!r}")
        return s if self.data_format == "channels_last" else s + ", data_format='channels_first'"


class MaxPooling2D(_Image):
    """2-D max pooling over channels-last images, as ``keras.layers.MaxPooling2D``.

    Args:
        pool_size: int or (ph, pw). Default (2, 2).
        strides: int or (sh, sw); None (default): ``pool_size``.
        padding: ``"valid"`` or ``"same"`` (output ``ceil(size / stride)``; the padding never
            wins a maximum).
        data_format: ``"channels_last"`` (default) or ``"channels_first"``.
        input_shape: (keyword) the per-sample input shape when this is the first layer.

    Shape:
        input (N, H, W, C) -> output (N, OH, OW, C), ``OH = (H - ph) // sh + 1`` ("valid").

    The gradient goes to the first maximum of each window (nnx's ``F.max_pool2d``, as PyTorch).
    """

    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", data_format=None, *,
                 input_shape=None):
        Module.__init__(self)
        self.pool_size = _pair(pool_size, "pool_size", "MaxPooling2D")
        ph, pw = self.pool_size
        self._label = f"MaxPooling2D({ph}x{pw})"
        self.strides = self.pool_size if strides is None else \
            _pair(strides, "strides", self._label)
        self.padding = _padding(padding, self._label)
        self.data_format = _data_format(data_format, self._label)
        self.input_shape = self._image_shape(input_shape)

    def forward(self, x):
        self._check_input(x)
        xc = self._to_nchw(x)
        if self.padding == "same":
            (t, b), (l, r) = (_same_pads(n, k, s) for n, k, s in
                              zip(xc.shape[2:], self.pool_size, self.strides))
            if t or b or l or r:
                xc = F.pad(xc, (l, r, t, b), value=float("-inf"))
        return self._from_nchw(F.max_pool2d(xc, self.pool_size, self.strides))

    def output_shape(self, input_shape):
        hwc = self._hwc(input_shape)
        if hwc is None:
            return None
        sizes = [_out_size(n, k, s, 1, self.padding) for n, k, s in
                 zip(hwc[:2], self.pool_size, self.strides)]
        return self._per_sample(sizes[0], sizes[1], hwc[2])

    def get_config(self):
        cfg = self._base_config()
        cfg.update({"pool_size": list(self.pool_size), "strides": list(self.strides),
                    "padding": self.padding})
        return cfg

    @classmethod
    def from_config(cls, config, device=None, dtype=None):
        return _configured("MaxPooling2D", lambda: cls(
            _config_pair(config, "pool_size", (2, 2)),
            strides=_config_pair(config, "strides", None),
            padding=config_arg(config, "padding", (str,), "valid"),
            data_format=config_arg(config, "data_format", (str, type(None))),
            input_shape=_config_shape(config)), config)

    def extra_repr(self):
        return f"pool_size={self.pool_size}, strides={self.strides}, padding={self.padding!r}"


class BatchNormalization(_BatchNorm):
    """Batch normalization over the last axis (the channels of an NHWC batch, the features of
    an (N, F) one), as ``keras.layers.BatchNormalization``, with Keras's defaults.

    Args:
        axis: -1 (default: the last axis) or 1 (channels first, as ``nn.BatchNorm2d``).
        momentum: Keras's convention, the weight of the OLD moving average:
            ``moving = momentum * moving + (1 - momentum) * batch``. Default 0.99. (PyTorch's
            ``momentum`` is the weight of the new batch: this layer's is ``1 - momentum``,
            0.01.)
        epsilon: added to the variance. Default 1e-3 (PyTorch's is 1e-5).
        center, scale: learn the shift ``beta`` (``bias``) and the scale ``gamma``
            (``weight``). Default True.
        input_shape: (keyword) the per-sample shape when this is the first layer.

    ``fit`` normalizes with the batch's mean and (biased) variance and updates the moving
    statistics; ``evaluate`` and ``predict`` use the moving statistics. The buffers are
    PyTorch's (``running_mean``, ``running_var``, ``num_batches_tracked`` in the state_dict);
    ``get_weights`` gives Keras's four arrays: gamma, beta, moving_mean, moving_variance.
    NOTE: as in PyTorch, the moving variance is fed the unbiased batch variance (Keras feeds
    the biased one): they differ by the factor n / (n - 1), n the values per channel in a batch
    (N H W for images).

    Shape: (N, F), (N, L, F) or (N, H, W, F) -> the same.
    """

    _ranks = (2, 3, 4)

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True,
                 device=None, dtype=None, *, input_shape=None):
        Module.__init__(self)
        if axis not in (-1, 1) or isinstance(axis, bool):
            raise ValueError(f"BatchNormalization: axis must be -1 (channels last) or 1 "
                             f"(channels first), got {axis!r}")
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) \
                or not 0.0 <= momentum <= 1.0:
            raise ValueError(f"BatchNormalization: momentum must be in [0, 1] (Keras's: the "
                             f"weight of the old moving average), got {momentum!r}")
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or epsilon <= 0:
            raise ValueError(f"BatchNormalization: epsilon must be > 0, got {epsilon!r}")
        self.axis, self.keras_momentum, self.epsilon = int(axis), float(momentum), float(epsilon)
        self.center, self.scale = bool(center), bool(scale)
        self.input_shape = _per_sample_shape(input_shape, "BatchNormalization")
        self.num_features = None
        if self.input_shape is not None:
            self.build_from_shape(self.input_shape, device=device, dtype=dtype)

    @property
    def built(self):
        return self.num_features is not None

    def build(self, num_features, device=None, dtype=None):
        """Create gamma, beta and the moving statistics for ``num_features`` channels."""
        attrs = {k: self.__dict__[k] for k in ("axis", "keras_momentum", "epsilon", "center",
                                               "scale", "input_shape", "training")}
        # _BatchNorm registers the parameters and buffers (its Module.__init__ starts the
        # registries afresh: this layer has none before it is built)
        _BatchNorm.__init__(self, num_features, eps=attrs["epsilon"],
                            momentum=round(1.0 - attrs["keras_momentum"], 12),
                            affine=attrs["center"] or attrs["scale"], device=device, dtype=dtype)
        for k, v in attrs.items():
            object.__setattr__(self, k, v)
        if self.affine and not self.scale:
            self.register_parameter("weight", None)
        if self.affine and not self.center:
            self.register_parameter("bias", None)
        return self

    def build_from_shape(self, input_shape, device=None, dtype=None):
        shape = None if input_shape is None else tuple(input_shape)
        c = None if not shape else (shape[-1] if self.axis == -1 else shape[0])
        if c is None:
            raise ValueError("BatchNormalization cannot tell its number of features: give the "
                             "first layer input_shape=..., or put it after a layer of known "
                             "shape")
        return self.build(c, device=device, dtype=dtype)

    def _label(self):
        return (f"BatchNormalization({self.num_features})" if self.built
                else "BatchNormalization")

    def forward(self, x):
        if not self.built:
            raise ValueError("BatchNormalization has no number of features yet: give "
                             "input_shape=... or add it to a model after a layer of known shape")
        shape = tuple(getattr(x, "shape", ()))
        c = self.num_features
        if len(shape) not in self._ranks or shape[self.axis] != c:
            want = "(N, F), (N, L, F) or (N, H, W, F)" if self.axis == -1 else \
                "(N, F), (N, F, L) or (N, F, H, W)"
            raise ShapeError(f"{self._label()} got input of shape {shape} (expected {want} "
                             f"with F = {c})")
        if self.axis == 1 or len(shape) == 2:
            return _BatchNorm.forward(self, x)
        perm = (0, 3, 1, 2) if len(shape) == 4 else (0, 2, 1)
        back = (0, 2, 3, 1) if len(shape) == 4 else (0, 2, 1)
        return _BatchNorm.forward(self, x.permute(*perm)).permute(*back)

    def output_shape(self, input_shape):
        return self.input_shape if input_shape is None else input_shape

    def keras_weights(self):
        """gamma, beta, moving_mean, moving_variance (those that exist), as Keras's."""
        if not self.built:
            return []
        return _plain_slots(self, ("weight", "bias", "running_mean", "running_var"))

    def get_config(self):
        cfg = {"class": class_name(self), "axis": self.axis, "momentum": self.keras_momentum,
               "epsilon": self.epsilon, "center": self.center, "scale": self.scale,
               "num_features": self.num_features}
        if self.input_shape is not None:
            cfg["input_shape"] = list(self.input_shape)
        return cfg

    @classmethod
    def from_config(cls, config, device=None, dtype=None):
        return _configured("BatchNormalization", lambda: cls(
            axis=config_arg(config, "axis", (int,), -1),
            momentum=config_arg(config, "momentum", (int, float), 0.99),
            epsilon=config_arg(config, "epsilon", (int, float), 1e-3),
            center=config_arg(config, "center", (bool,), True),
            scale=config_arg(config, "scale", (bool,), True),
            device=device, dtype=dtype, input_shape=_config_shape(config)),
            config, "num_features", device, dtype)

    def extra_repr(self):
        return (f"{self.num_features}, axis={self.axis}, momentum={self.keras_momentum} "
                f"(Keras's), epsilon={self.epsilon}")
