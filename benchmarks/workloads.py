"""The benchmark workloads: one full float32 training step each (forward, loss, backward, update).

A workload is a small MLP, a loss, a batch size and an optimizer.  Every contender (the NumPy
floor, nnx, PyTorch) is built from the same :class:`Workload`, the same initial parameters
(:func:`init_params`, PyTorch ``state_dict`` keys and layouts) and the same batches
(:func:`make_batches`), so their steps compute the same thing and their gradients can be compared.

The model is described once, :meth:`Workload.layers` (module class names and their arguments);
:func:`build_model`, :func:`build_loss` and :func:`build_optimizer` turn that description into
PyTorch's or nnx's objects (both spell them ``nn.Sequential``, ``nn.Linear``, ``nn.ReLU``,
``nn.Sigmoid``, ``nn.CrossEntropyLoss``, ``nn.BCELoss``, ``optim.SGD``, ``optim.Adam``).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Tuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class Workload:
    key: str                   # short id used on the command line: A, B, C, B-adam, C-clip, ...
    name: str                  # human name: xor, mnist-mlp, wide-mlp, ...
    sizes: Tuple[int, ...]     # layer widths, input first: (784, 256, 256, 10)
    hidden: str                # hidden activation: "relu" or "sigmoid"
    loss: str                  # "ce" (softmax cross-entropy on logits) or "bce" (sigmoid output + BCE)
    batch: int
    optimizer: str             # "sgd", "adam" or "adamw"
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0  # AdamW's decoupled decay (param *= 1 - lr * wd first)
    clip: Optional[float] = None  # clip_grad_norm_(params, max_norm=clip) before each step
    base: Optional[str] = None  # the workload this one adds to (C for C-clip): paired with it
    unit: str = "ms"           # how the table reports time per step: "us" or "ms"
    bar_floor: Optional[float] = None   # nnx/floor must be <= this (issue 5)
    bar_torch: Optional[float] = None   # nnx/torch must be <= this
    bar_gemm_share: Optional[float] = None  # nnx GFLOP/s >= this share of the GEMM rate
    bar_gpu_torch: Optional[float] = None   # nnx-cuda/torch-cuda must be <= this
    bar_clip_overhead: Optional[float] = None  # nnx step / nnx step of ``base`` must be <= this
    n_batches: int = 4         # distinct batches cycled through (A has just the 4 XOR points)
    # "mlp", or "cnn" (D): conv(channels[0] -> [1], kernel) ReLU conv([1] -> [2]) ReLU
    # max-pool(pool) Flatten, then the MLP of ``sizes`` (its input: the flattened pooled map)
    arch: str = "mlp"
    channels: Tuple[int, ...] = ()
    kernel: int = 3
    image: Tuple[int, int] = (28, 28)
    pool: int = 2

    @property
    def n_layers(self) -> int:
        return len(self.sizes) - 1

    def conv_shapes(self) -> List[Tuple[int, int, int, int]]:
        """(out, in, k, k) of each conv layer (none for an MLP)."""
        c, k = self.channels, self.kernel
        return [(c[i + 1], c[i], k, k) for i in range(len(c) - 1)]

    def conv_outputs(self) -> List[Tuple[int, int]]:
        """(H, W) of each conv layer's output (stride 1, no padding)."""
        h, w = self.image
        out = []
        for _ in self.conv_shapes():
            h, w = h - self.kernel + 1, w - self.kernel + 1
            out.append((h, w))
        return out

    @property
    def weights(self) -> int:
        """Number of weight entries (biases excluded): the MLP part's W in 6 x batch x W, plus
        the conv kernels'."""
        return sum(a * b for a, b in zip(self.sizes[:-1], self.sizes[1:])) + sum(
            o * i * kh * kw for o, i, kh, kw in self.conv_shapes())

    @property
    def n_params(self) -> int:
        return self.weights + sum(self.sizes[1:]) + sum(s[0] for s in self.conv_shapes())

    @property
    def flops_per_step(self) -> int:
        """Nominal training FLOPs per step. MLP: 6 x batch x weights (2 forward, 4 backward).

        CNN: 2 FLOPs per multiply-add, 3 passes per layer (forward, data gradient, weight
        gradient) over each layer's multiply-adds (a conv's: out x in x k x k x Ho x Wo), less
        the first layer's data gradient (nobody needs dL/dx). D: 11,992,448 multiply-adds per
        sample (conv1 194,688, conv2 10,616,832, fc1 1,179,648, fc2 1,280), 6 x 128 x that =
        9.210 GFLOP, less conv1's data gradient (2 x 128 x 194,688 = 0.050 GFLOP): 9.160 GFLOP.
        Pooling, bias, ReLU and softmax are not counted."""
        if self.arch != "cnn":
            return 6 * self.batch * self.weights
        macs = [o * i * kh * kw * h * w for (o, i, kh, kw), (h, w)
                in zip(self.conv_shapes(), self.conv_outputs())]
        macs += [a * b for a, b in zip(self.sizes[:-1], self.sizes[1:])]
        return 2 * self.batch * (3 * sum(macs) - macs[0])

    def layers(self) -> List[Tuple[str, Tuple[int, ...]]]:
        """The model: ``(module class name, constructor args)`` in order, as ``nn.Sequential``
        children. Linear layers at even indices, the hidden activation after each but the last,
        and a final Sigmoid for "bce" (the loss then takes probabilities). A CNN starts with
        its convs (each followed by the activation), the max-pool and a Flatten."""
        act = "ReLU" if self.hidden == "relu" else "Sigmoid"
        if self.arch == "cnn":
            out: List[Tuple[str, Tuple[int, ...]]] = []
            for o, i, k, _ in self.conv_shapes():
                out += [("Conv2d", (i, o, k)), (act, ())]
            out += [("MaxPool2d", (self.pool,)), ("Flatten", ())]
            mlp = dataclasses.replace(self, arch="mlp", channels=())
            return out + mlp.layers()
        out: List[Tuple[str, Tuple[int, ...]]] = []
        for i, (a, b) in enumerate(zip(self.sizes[:-1], self.sizes[1:])):
            out.append(("Linear", (a, b)))
            if i < self.n_layers - 1:
                out.append((act, ()))
        if self.loss == "bce":
            out.append(("Sigmoid", ()))
        return out

    def param_keys(self) -> List[str]:
        """PyTorch ``nn.Sequential`` keys: Linear modules sit at even indices (and the modules
        with parameters of a CNN wherever ``layers()`` puts them)."""
        if self.arch == "cnn":
            return [f"{i}.{p}" for i, (name, _) in enumerate(self.layers())
                    if name in ("Conv2d", "Linear") for p in ("weight", "bias")]
        keys = []
        for i in range(self.n_layers):
            keys += [f"{2 * i}.weight", f"{2 * i}.bias"]
        return keys

    def param_shapes(self) -> Dict[str, Tuple[int, ...]]:
        """``{key: PyTorch shape}`` in ``param_keys`` order."""
        shapes: List[Tuple[int, ...]] = []
        for s in self.conv_shapes():
            shapes += [s, (s[0],)]
        for a, b in zip(self.sizes[:-1], self.sizes[1:]):
            shapes += [(b, a), (b,)]
        return dict(zip(self.param_keys(), shapes))

    def scaled(self, width: int, batch: Optional[int] = None) -> "Workload":
        """A reduced copy: every hidden width (and a large input) capped at ``width``. A CNN
        keeps its layers and takes ``width`` as its batch size (``D@16``: D at batch 16)."""
        if self.arch == "cnn":
            return dataclasses.replace(self, key=self.key + f"@{width}", batch=batch or width)
        sizes = tuple([min(self.sizes[0], width)] + [min(s, width) for s in self.sizes[1:-1]]
                      + [self.sizes[-1]])
        return dataclasses.replace(self, key=self.key + f"@{width}", sizes=sizes,
                                   batch=batch or min(self.batch, 64))


WORKLOADS: Dict[str, Workload] = {
    w.key: w for w in [
        Workload("A", "xor", (2, 2, 1), "sigmoid", "bce", 4, "sgd", 0.5, unit="us",
                 bar_floor=2.0, bar_gpu_torch=1 / 3, n_batches=1),
        Workload("B", "mnist-mlp", (784, 256, 256, 10), "relu", "ce", 128, "sgd", 0.01,
                 bar_floor=1.10, bar_torch=1.0, bar_gpu_torch=1.0),
        Workload("C", "wide-mlp", (1024, 4096, 4096, 10), "relu", "ce", 512, "sgd", 0.01,
                 bar_floor=1.05, bar_gemm_share=0.90, bar_gpu_torch=1.0),
        Workload("B-adam", "mnist-mlp-adam", (784, 256, 256, 10), "relu", "ce", 128, "adam", 1e-3),
        Workload("C-adam", "wide-mlp-adam", (1024, 4096, 4096, 10), "relu", "ce", 512, "adam",
                 1e-3),
        # issue 12: AdamW (PyTorch defaults, weight_decay 0.01) and norm clipping in the step
        Workload("B-adamw", "mnist-mlp-adamw", (784, 256, 256, 10), "relu", "ce", 128, "adamw",
                 1e-3, weight_decay=0.01),
        Workload("C-adamw", "wide-mlp-adamw", (1024, 4096, 4096, 10), "relu", "ce", 512, "adamw",
                 1e-3, weight_decay=0.01),
        Workload("B-clip", "mnist-mlp-clip", (784, 256, 256, 10), "relu", "ce", 128, "sgd", 0.01,
                 clip=1.0, base="B"),
        Workload("C-clip", "wide-mlp-clip", (1024, 4096, 4096, 10), "relu", "ce", 512, "sgd",
                 0.01, clip=1.0, base="C", bar_clip_overhead=1.03),
        # issue 10: PyTorch's MNIST convnet (conv 1->32 3x3, ReLU, conv 32->64 3x3, ReLU,
        # max-pool 2, flatten, Linear 9216->128, ReLU, Linear 128->10), batch 128, SGD
        Workload("D", "mnist-cnn", (9216, 128, 10), "relu", "ce", 128, "sgd", 0.01,
                 bar_floor=1.10, bar_gpu_torch=1.0, n_batches=2, arch="cnn",
                 channels=(1, 32, 64)),
    ]
}
# Adam / AdamW hyperparameters (PyTorch defaults), shared by every contender.
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


LOSSES = {"ce": "CrossEntropyLoss", "bce": "BCELoss"}


def build_model(nn, w: Workload):
    """``w``'s model in the framework whose ``nn`` module is given (``torch.nn``, ``nnx.nn``),
    on that framework's current default device."""
    return nn.Sequential(*(getattr(nn, name)(*args) for name, args in w.layers()))


def build_loss(nn, w: Workload):
    return getattr(nn, LOSSES[w.loss])()


def build_optimizer(optim, w: Workload, params):
    """``w``'s optimizer from the framework's ``optim`` module, over ``params``."""
    if w.optimizer == "sgd":
        return optim.SGD(params, lr=w.lr, momentum=w.momentum)
    if w.optimizer == "adamw":
        return optim.AdamW(params, lr=w.lr, betas=ADAM_BETAS, eps=ADAM_EPS,
                           weight_decay=w.weight_decay)
    return optim.Adam(params, lr=w.lr, betas=ADAM_BETAS, eps=ADAM_EPS)


def clip_fn(nn):
    """The framework's ``clip_grad_norm_`` (``torch.nn.utils`` / ``nnx.nn.utils``)."""
    utils = getattr(nn, "utils", None)
    f = getattr(utils, "clip_grad_norm_", None)
    if f is None:
        import importlib
        f = importlib.import_module(nn.__name__ + ".utils").clip_grad_norm_
    return f


def base_of(w: Workload) -> Optional[Workload]:
    """The workload ``w`` adds to (C for C-clip), at ``w``'s scale; None if none."""
    if w.base is None:
        return None
    return dataclasses.replace(w, key=w.base + w.key[len(w.key.split("@")[0]):],
                               name=WORKLOADS[w.base].name, clip=None, base=None,
                               bar_clip_overhead=None)


def get(key: str) -> Workload:
    """Look a workload up by key (``B``), name (``mnist-mlp``) or a scaled key (``C@256``)."""
    base, _, width = key.partition("@")
    for w in WORKLOADS.values():
        if base in (w.key, w.name):
            return w.scaled(int(width)) if width else w
    raise KeyError(f"unknown workload {key!r}; known: {', '.join(WORKLOADS)}")


def init_params(w: Workload, seed: int = 0) -> Dict[str, np.ndarray]:
    """PyTorch's default Linear init, U(-1/sqrt(in), 1/sqrt(in)), as float32 host arrays."""
    rng = np.random.default_rng(seed)
    out = {}
    if w.arch == "cnn":  # PyTorch's Conv2d and Linear defaults: U(+-1/sqrt(fan_in)) both
        shapes = w.param_shapes()
        for key, shape in shapes.items():
            fan_in = int(np.prod(shapes[key.replace("bias", "weight")][1:]))
            bound = np.float32(1.0 / np.sqrt(fan_in))
            a = rng.random(shape, dtype=np.float32)
            a *= 2 * bound
            a -= bound
            out[key] = a
        return out
    for i, (fan_in, fan_out) in enumerate(zip(w.sizes[:-1], w.sizes[1:])):
        bound = np.float32(1.0 / np.sqrt(fan_in))
        for key, shape in ((f"{2 * i}.weight", (fan_out, fan_in)), (f"{2 * i}.bias", (fan_out,))):
            a = rng.random(shape, dtype=np.float32)  # float32 throughout: no float64 temporaries
            a *= 2 * bound
            a -= bound
            out[key] = a
    return out


def make_batches(w: Workload, seed: int = 1, n: Optional[int] = None):
    """``n`` (default ``w.n_batches``) host batches ``(x, y)``.

    ``x`` is (batch, in) float32 ((batch, C, H, W) for a CNN).  For "ce", ``y`` is (batch,)
    int64 class indices; for "bce" it is (batch, out) float32 in {0, 1}.  A (xor) is always the four XOR points.
    """
    n = n or w.n_batches
    if w.name == "xor" and w.sizes[0] == 2 and w.batch == 4:
        x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
        y = np.array([[0], [1], [1], [0]], np.float32)
        return [(x, y)] * n
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        shape = (w.batch, w.channels[0]) + tuple(w.image) if w.arch == "cnn" else \
            (w.batch, w.sizes[0])
        x = rng.standard_normal(shape, dtype=np.float32)
        if w.loss == "ce":
            y = rng.integers(0, w.sizes[-1], w.batch).astype(np.int64)
        else:
            y = (rng.random((w.batch, w.sizes[-1])) < 0.5).astype(np.float32)
        out.append((x, y))
    return out
