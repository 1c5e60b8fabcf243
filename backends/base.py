"""The abstract array backend.

A backend owns an array module (``xp``: NumPy or CuPy), a device, a random generator, and the
fused kernels of the hot path. The framework in ``nnx/`` is written once against this interface:
generic ops go through ``backend.xp``; the hot path (activations, softmax-cross-entropy, optimizer
updates) goes through the kernel methods below, each of which has a NumPy twin and a CUDA kernel.

Conventions for the kernel methods
----------------------------------
* Arrays are backend arrays (``numpy.ndarray`` or ``cupy.ndarray``) of a floating dtype
  (float16, float32 or float64); results have the input's dtype.
* ``out=`` (where offered) names a preallocated array of the result's shape and dtype; it may be
  the input itself (in-place).
* Methods whose name ends in ``_`` update their first arguments in place and return nothing.
* Hyperparameters are Python ``float``/``int``/``bool``: never NumPy float64 scalars, which under
  NumPy 2 would promote a float32 update to float64.
* No method synchronizes with the host.
"""
from __future__ import annotations

import abc
from typing import Any

from . import activations as _acts

#: The built-in activation names ``bias_act_`` takes ("linear": none); ``backends.activations``
#: holds the entries (and any registered later: ``backends.activations.names()``).
ACTIVATIONS = _acts.names(with_linear=True)

#: The reductions a loss (and the fused softmax-cross-entropy) takes.
REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction, where: str) -> None:
    """ValueError naming ``where`` unless ``reduction`` is one of ``REDUCTIONS``."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"{where}: reduction must be one of {REDUCTIONS}, got {reduction!r}")


class Backend(abc.ABC):
    """One array backend on one device.

    Attributes:
        name: ``"numpy"`` or ``"cupy"``.
        xp: the array module (``numpy`` or ``cupy``).
        device: the device string, ``"cpu"`` or ``"cuda:N"``.
    """

    name: str
    xp: Any
    device: str

    # ------------------------------------------------------------------ identity
    # One backend per device and process (tensors compare backends by identity): a copied or
    # unpickled reference resolves to this process's backend of the same device.
    def __reduce__(self):
        from . import get_backend

        return (get_backend, (self.device,))

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    # ------------------------------------------------------------------ arrays and devices
    @abc.abstractmethod
    def asarray(self, data, dtype=None):
        """Return ``data`` as an array of this backend (copying only when needed)."""

    @abc.abstractmethod
    def to_host(self, array):
        """Return a host ``numpy.ndarray`` holding ``array``'s values (a sync on a GPU)."""

    @abc.abstractmethod
    def is_array(self, obj) -> bool:
        """True when ``obj`` is an array of this backend's array type."""

    @property
    def oom_errors(self) -> tuple:
        """Exception types meaning "this device is out of memory"; nnx re-raises them as
        ``nnx.OutOfMemoryError`` with the size requested and a hint. CuPy's memory pool raises
        ``cupy.cuda.memory.OutOfMemoryError``; NumPy's own MemoryError already names the size,
        so the CPU lists none."""
        cuda = getattr(self.xp, "cuda", None)
        oom = getattr(getattr(cuda, "memory", None), "OutOfMemoryError", None)
        return (oom,) if isinstance(oom, type) else ()

    def synchronize(self) -> None:
        """Wait for all queued work on this device (no-op on the CPU)."""

    def use(self):
        """A context manager making this backend's device current (no-op on the CPU)."""
        import contextlib

        return contextlib.nullcontext()

    # ------------------------------------------------------------------ random numbers
    @abc.abstractmethod
    def seed(self, seed: int) -> None:
        """Reseed this backend's generator (``nnx.manual_seed``)."""

    def get_rng_state(self) -> dict:
        """The generator's state as nested dicts of ints and strings (``nnx.get_rng_state``)."""
        raise NotImplementedError(f"get_rng_state: the {self.name} backend's generator state "
                                  f"cannot be read; reseed with nnx.manual_seed instead")

    def set_rng_state(self, state: dict) -> None:
        """Put back a state from ``get_rng_state`` (``nnx.set_rng_state``)."""
        raise NotImplementedError(f"set_rng_state: the {self.name} backend's generator state "
                                  f"cannot be set; reseed with nnx.manual_seed instead")

    @abc.abstractmethod
    def uniform(self, low: float, high: float, shape, dtype):
        """Array of ``shape`` drawn from U(low, high) in ``dtype``."""

    @abc.abstractmethod
    def normal(self, mean: float, std: float, shape, dtype):
        """Array of ``shape`` drawn from N(mean, std^2) in ``dtype``."""

    @abc.abstractmethod
    def permutation(self, n: int):
        """A random permutation of ``range(n)`` as a host int64 NumPy array."""

    @abc.abstractmethod
    def dropout_mask(self, shape, p: float, dtype):
        """Array of ``shape``: ``1/(1-p)`` where kept (probability ``1-p``), else 0."""

    # ------------------------------------------------------------------ fused kernels
    @abc.abstractmethod
    def activation_forward(self, name: str, x, negative_slope: float = 0.01, out=None):
        """y = act(x) for the ``backends.activations`` entry ``name`` (``out`` may be x)."""

    @abc.abstractmethod
    def activation_backward(self, name: str, saved, gy, negative_slope: float = 0.01, out=None,
                            aux=None):
        """gx from the entry's saved value (its output y, or its input x: the entry's
        ``saves``) and the incoming gradient ``gy``; ``out`` may be ``gy`` itself. ``aux`` is
        what ``bias_act_`` returned for this activation, if anything (the NumPy twin's ReLU
        mask, so the backward is one pass); the result is the same either way."""

    # The named forms of the activations (the same kernels).
    def sigmoid_fwd(self, x, out=None):
        """y = 1 / (1 + exp(-x)), stable in both tails (``e = exp(-|x|)`` with a sign branch)."""
        return self.activation_forward("sigmoid", x, out=out)

    def sigmoid_bwd(self, y, gy, out=None):
        """gx = gy * y * (1 - y), from the saved output ``y``."""
        return self.activation_backward("sigmoid", y, gy, out=out)

    def relu_fwd(self, x, out=None):
        """y = max(x, 0); NaN stays NaN (as in PyTorch)."""
        return self.activation_forward("relu", x, out=out)

    def relu_bwd(self, y, gy, out=None, aux=None):
        """gx = gy where y > 0 else 0 (the gradient at exactly 0 is 0, and 0 where y <= 0 even
        for a NaN or inf gy, as in PyTorch). ``y`` may be x or relu(x); ``out`` may be ``gy``
        itself (an in-place backward)."""
        return self.activation_backward("relu", y, gy, out=out, aux=aux)

    def leaky_relu_fwd(self, x, negative_slope: float, out=None):
        """y = x where x >= 0 else negative_slope * x (PyTorch's convention)."""
        return self.activation_forward("leaky_relu", x, negative_slope, out=out)

    def leaky_relu_bwd(self, x, gy, negative_slope: float, out=None):
        """gx = gy where x > 0 else negative_slope * gy (PyTorch: slope at exactly 0)."""
        return self.activation_backward("leaky_relu", x, gy, negative_slope, out=out)

    @abc.abstractmethod
    def bias_act_(self, y, bias, activation: str, negative_slope: float = 0.01):
        """In place over ``y`` (N, F) with ``bias`` (F,) or None: y = act(y + bias).

        ``activation`` is ``"linear"`` or a ``backends.activations`` name. One pass after a
        Linear's matmul. Returns None or an opaque ``aux`` array to hand to
        ``activation_backward`` (the NumPy twin keeps ReLU's mask).
        """

    @abc.abstractmethod
    def sum_rows(self, g, out=None):
        """(N, F) -> (F,): the sum over the rows, e.g. a bias gradient."""

    @abc.abstractmethod
    def softmax_cross_entropy(self, logits, labels, ignore_index: int = -100,
                              reduction: str = "mean", need_grad: bool = True):
        """Fused softmax + negative log-likelihood with its gradient in the same pass.

        Args:
            logits: (N, C) floating array (float16 accumulates in float32).
            labels: (N,) int32 or int64 array of class indices in [0, C) or ``ignore_index``.
            reduction: ``"mean"`` (over non-ignored rows; 0 when all are ignored), ``"sum"``
                or ``"none"``.
            need_grad: compute the gradient too.

        Returns:
            ``(loss, grad, bad)``: ``loss`` is a 0-d array (mean/sum) or (N,) (none) of the
            logits' dtype; ``grad`` is (N, C), ``(softmax - onehot) * scale`` with
            ``scale = 1/max(count, 1)`` for mean and 1 otherwise, zero on ignored rows (None
            when ``need_grad`` is false); ``bad`` is None when labels were checked on the host
            (the NumPy twin raises ``IndexError`` directly), else a device int32 0-d array that
            is nonzero when some label lay outside [0, C) (such rows are treated as ignored,
            never read out of bounds). The caller checks ``bad`` at its next host sync.
        """

    @abc.abstractmethod
    def sgd_update_(self, param, grad, momentum_buf, lr: float, momentum: float = 0.0,
                    dampening: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
                    first_step: bool = False) -> None:
        """One SGD step in place, PyTorch's rule, one pass over flat arrays.

        d = grad + weight_decay * param; if momentum: buf = d on the first step, else
        buf = momentum * buf + (1 - dampening) * d; d = d + momentum * buf (nesterov) or buf;
        param -= lr * d. ``momentum_buf`` is None when momentum is 0.
        """

    @abc.abstractmethod
    def adam_update_(self, param, grad, exp_avg, exp_avg_sq, lr: float, beta1: float,
                     beta2: float, eps: float, weight_decay: float, step: int,
                     max_exp_avg_sq=None, decoupled: bool = False) -> None:
        """One Adam/AdamW step in place (PyTorch's rule), one pass over flat arrays.

        decoupled (AdamW): param *= 1 - lr * weight_decay, g = grad; else (Adam, L2 decay)
        g = grad + weight_decay * param. Then m = m + (1 - beta1) (g - m);
        v = beta2 v + (1 - beta2) g^2; with ``max_exp_avg_sq`` (amsgrad) vmax = max(vmax, v)
        and vmax stands for v below; param -= lr / (1 - beta1^step) * m /
        (sqrt(v) / sqrt(1 - beta2^step) + eps).
        """

    @abc.abstractmethod
    def rmsprop_update_(self, param, grad, square_avg, momentum_buf, grad_avg, lr: float,
                        alpha: float, eps: float, weight_decay: float = 0.0,
                        momentum: float = 0.0, centered: bool = False) -> None:
        """One RMSprop step in place (PyTorch's rule), one pass over flat arrays.

        g = grad + weight_decay * param; v = alpha v + (1 - alpha) g^2; centered:
        a = lerp(a, g, 1 - alpha) (PyTorch's lerp: a + w (g - a) for w < 0.5, else
        g - (g - a) (1 - w)) and avg = sqrt(v - a^2) + eps, else avg = sqrt(v) + eps; with
        momentum > 0: buf = momentum buf + g / avg, param -= lr buf; else param -= lr g / avg.
        ``momentum_buf`` is None when momentum is 0, ``grad_avg`` None unless centered.
        """

    @abc.abstractmethod
    def adagrad_update_(self, param, grad, state_sum, clr: float, weight_decay: float = 0.0,
                        eps: float = 1e-10) -> None:
        """One Adagrad step in place (PyTorch's rule), one pass over flat arrays.

        g = grad + weight_decay * param; sum = sum + g^2; param -= clr g / (sqrt(sum) + eps).
        ``clr`` is the decayed learning rate lr / (1 + (step - 1) lr_decay), computed by the
        caller on the host (a Python float).
        """

    @abc.abstractmethod
    def adadelta_update_(self, param, grad, square_avg, acc_delta, lr: float, rho: float,
                         eps: float, weight_decay: float = 0.0, maximize: bool = False) -> None:
        """One Adadelta step in place (PyTorch's rule), one pass over flat arrays.

        g = -grad (maximize) or grad; g = g + weight_decay * param; v = rho v + (1 - rho) g^2;
        delta = sqrt(u + eps) / sqrt(v + eps) * g; u = rho u + (1 - rho) delta^2;
        param -= lr delta (v: ``square_avg``, u: ``acc_delta``).
        """

    # ------------------------------------------------------------------ pooling
    # x and gy are (*, H, W) / (*, OH, OW); ``win`` is a ``backends.pooling.Window``. The NumPy
    # twins and CUDA kernels are in ``backends.pooling``.
    def max_pool2d_forward(self, x, win):
        """(y, argmax): window maxima and each one's row-major position in its window (the
        first maximum; NaN wins), an integer array of y's shape."""
        raise NotImplementedError(f"max_pool2d: not supported by the {self.name} backend")

    def max_pool2d_backward(self, gy, argmax, win, in_hw):
        """gx (*, H, W): each gy added at its window's argmax."""
        raise NotImplementedError(f"max_pool2d: not supported by the {self.name} backend")

    def avg_pool2d_forward(self, x, win):
        """Window means with PyTorch's divisor (count_include_pad, divisor_override)."""
        raise NotImplementedError(f"avg_pool2d: not supported by the {self.name} backend")

    def avg_pool2d_backward(self, gy, win, in_hw):
        """gx (*, H, W) of ``avg_pool2d_forward``."""
        raise NotImplementedError(f"avg_pool2d: not supported by the {self.name} backend")

    def adaptive_avg_pool2d_forward(self, x, out_hw):
        """Means over PyTorch's adaptive windows [floor(i H/OH), ceil((i+1) H/OH))."""
        raise NotImplementedError(f"adaptive_avg_pool2d: not supported by the {self.name} backend")

    def adaptive_avg_pool2d_backward(self, gy, in_hw):
        """gx (*, H, W) of ``adaptive_avg_pool2d_forward``."""
        raise NotImplementedError(f"adaptive_avg_pool2d: not supported by the {self.name} backend")

    # ------------------------------------------------------------------ convolution
    def conv2d_forward(self, x, weight, bias, geometry, save: bool = True,
                       activation: str = "linear", negative_slope: float = 0.01, grad=None):
        """2-D convolution (cross-correlation, as PyTorch): x (N, C, H, W), weight
        (O, C/groups, kh, kw), bias (O,) or None, ``geometry`` a ``backends.conv.Geometry``
        (validated by the caller), ``activation`` a ``backends.activations`` name whose
        backward reads its output (or "linear") applied to conv + bias. Returns
        ``(y, saved)``: y (N, O, OH, OW) (its strides are the backend's choice) and what
        ``conv2d_backward`` needs: the im2col matrix when ``save`` (for a weight gradient), the
        activation's state when ``grad`` (a backward will come; default ``save``); None when
        there is nothing to keep."""
        raise NotImplementedError(f"conv2d: the {self.name} backend has no convolution")

    def conv2d_backward(self, x, weight, gy, saved, geometry, need_x: bool = True,
                        need_w: bool = True, need_b: bool = True):
        """``(gx, gw, gb)`` of the convolution for the output gradient ``gy``; an entry not
        asked for is None. ``saved`` is what ``conv2d_forward`` returned; ``gy`` is the
        gradient of its output (after the fused activation, which this backward undoes)."""
        raise NotImplementedError(f"conv2d: the {self.name} backend has no convolution")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} device={self.device!r}>"
