"""Contenders: one object per (framework, device) that runs a workload's training step.

Every contender is built from the same workload, initial parameters and host batches, and offers

* ``step()``: one full training step on its next batch (queued work on a GPU is not waited for);
* ``sync()``: wait for queued device work (call before reading a clock);
* ``activate()``: make this contender's device and thread settings current (before each block);
* ``gradients()``: forward + backward on batch 0 without an update, host gradients by key;
* ``state_dict()`` and ``loss_value()`` (host values, for the tests).

:func:`make` builds one by name (``floor``, ``nnx``, ``torch``, ``gemm``) and device, raising
:class:`Skip` with the reason when it cannot run here.
"""
from __future__ import annotations

import importlib
from typing import Dict, Tuple

import numpy as np

from .workloads import Workload, build_loss, build_model, build_optimizer, clip_fn

NAMES = ("floor", "nnx", "torch")


class Skip(Exception):
    """This contender cannot run here; the message says why."""


# ---------------------------------------------------------------------------- availability
def _cuda_probe():
    """(usable, reason) from nnx's cached CUDA probe (a child process that cannot hang us)."""
    try:
        from nnx.backends.cuda_probe import probe_cuda
    except Exception:
        return None
    try:
        ok, why = probe_cuda()
    except Exception as e:
        return False, f"CUDA probe failed: {type(e).__name__}: {e}"
    return bool(ok), str(why)


def _cupy():
    """The CuPy module when a CUDA device is usable, else raise Skip."""
    probe = _cuda_probe()
    if probe is not None and not probe[0]:
        raise Skip(f"no CUDA: {probe[1]}")
    try:
        import cupy
    except Exception as e:  # ImportError, or a broken CUDA install
        raise Skip(f"cupy not importable ({type(e).__name__}: {e})") from None
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise Skip("cupy sees no CUDA device")
    except Skip:
        raise
    except Exception as e:
        raise Skip(f"no usable CUDA device ({type(e).__name__})") from None
    return cupy


def _torch():
    try:
        import torch
    except Exception as e:
        raise Skip(f"torch not installed ({type(e).__name__}: {e})") from None
    return torch


def _nnx():
    try:
        nnx = importlib.import_module("nnx")
        importlib.import_module("nnx.nn")
        importlib.import_module("nnx.optim")
    except Exception as e:
        raise Skip(f"nnx not importable ({type(e).__name__}: {e})") from None
    for attr in ("nn", "optim", "tensor", "set_device"):
        if not hasattr(nnx, attr):
            raise Skip(f"nnx has no {attr!r} yet")
    return nnx


def cuda_available() -> Tuple[bool, str]:
    """(True, card name) when a CUDA device is usable through CuPy or torch."""
    try:
        cp = _cupy()
        props = cp.cuda.runtime.getDeviceProperties(0)
        name = props["name"]
        return True, name.decode() if isinstance(name, bytes) else str(name)
    except Skip as e:
        reason = str(e)
    try:
        torch = _torch()
        if torch.cuda.is_available():
            return True, torch.cuda.get_device_name(0)
    except Skip:
        pass
    return False, reason


# ---------------------------------------------------------------------------- base class
class Contender:
    name = "?"

    def __init__(self, w: Workload, params: Dict[str, np.ndarray], batches, device: str = "cpu"):
        self.w, self.device = w, device
        self.label = f"{self.name}-{device}"
        self.threads = None
        self.info: Dict[str, object] = {}

    def set_threads(self, n: int) -> None:
        self.threads = n

    def activate(self) -> None:
        pass

    def step(self) -> None:
        raise NotImplementedError

    def sync(self) -> None:
        pass

    def gradients(self) -> Dict[str, np.ndarray]:
        raise NotImplementedError

    def state_dict(self) -> Dict[str, np.ndarray]:
        raise NotImplementedError

    def loss_value(self) -> float:
        raise NotImplementedError

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------- the floor
class FloorContender(Contender):
    name = "floor"

    def __init__(self, w, params, batches, device="cpu"):
        super().__init__(w, params, batches, device)
        from .floor import FloorMLP
        if w.arch == "cnn" and device != "cpu":
            raise Skip("the CNN floor (floor_cnn.py) is NumPy only")
        xp = np if device == "cpu" else _cupy()
        if w.arch == "cnn":
            from .floor_cnn import FloorCNN
            self.model = FloorCNN(w, params, batches)
            self.info = {"impl": "benchmarks/floor_cnn.py", "xp": "numpy"}
        else:
            self.model = FloorMLP(w, params, batches, xp=xp)
            self.info = {"impl": "benchmarks/floor.py", "xp": xp.__name__}
        self.step = self.model.step  # no extra Python frame on the hot path

    def sync(self):
        self.model.sync()

    def gradients(self):
        return self.model.gradients()

    def state_dict(self):
        return self.model.state_dict()

    def loss_value(self):
        return self.model.loss_value()


# ---------------------------------------------------------------------------- NumPy GEMM rate
class GemmContender(Contender):
    """Just the workload's GEMMs (3 per layer, the 6 x batch x weights FLOPs), float32 NumPy.

    Its GFLOP/s is "the NumPy float32 GEMM rate" of issue 5, measured at the very shapes of the
    workload, interleaved with the others in the same run.
    """
    name = "gemm"

    def __init__(self, w, params, batches, device="cpu"):
        super().__init__(w, params, batches, device)
        xp = np if device == "cpu" else _cupy()
        self.xp = xp
        B = w.batch
        self.W = [xp.asarray(params[f"{2 * i}.weight"]) for i in range(w.n_layers)]
        self.WT = [W.T for W in self.W]
        self.x = xp.asarray(batches[0][0])
        self.Z = [xp.empty((B, s), np.float32) for s in w.sizes[1:]]
        self.G = [xp.ones((B, s), np.float32) * 1e-3 for s in w.sizes[1:]]
        self.GX = xp.empty((B, w.sizes[0]), np.float32)
        self.gW = [xp.empty_like(W) for W in self.W]
        self.info = {"what": "3 GEMMs per layer (forward, grad-input, grad-weight), float32"}

    def step(self):
        dot, L = self.xp.dot, self.w.n_layers
        h = self.x
        for i in range(L):
            dot(h, self.WT[i], out=self.Z[i])
            h = self.Z[i]
        for i in range(L - 1, -1, -1):
            dot(self.G[i].T, self.x if i == 0 else self.Z[i - 1], out=self.gW[i])
            dot(self.G[i], self.W[i], out=self.GX if i == 0 else self.G[i - 1])

    def sync(self):
        if self.xp is not np:
            self.xp.cuda.get_current_stream().synchronize()


# ---------------------------------------------------------------------------- PyTorch and nnx
class ModelContender(Contender):
    """A contender driven through the PyTorch-style API (PyTorch itself, and nnx): the model,
    loss and optimizer come from the workload's one description (``workloads.build_*``)."""

    def _assemble(self, nn, optim, model, batches):
        self.model = model
        self.loss_fn = build_loss(nn, self.w)
        self.params = list(model.parameters())
        self.opt = build_optimizer(optim, self.w, self.params)
        self.batches = batches
        self.i = 0
        self.loss = None
        if self.w.clip is not None:  # the clipped step is a separate method: none is timed idle
            self._clip = clip_fn(nn)
            self.step = self._step_clipped

    def step(self):
        x, y = self.batches[self.i]
        self.i = (self.i + 1) % len(self.batches)
        opt = self.opt
        opt.zero_grad()
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        opt.step()
        self.loss = loss

    def _step_clipped(self):
        """``step`` with ``clip_grad_norm_(params, max_norm=w.clip)`` between backward and the
        optimizer step."""
        x, y = self.batches[self.i]
        self.i = (self.i + 1) % len(self.batches)
        opt = self.opt
        opt.zero_grad()
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        self._clip(self.params, max_norm=self.w.clip)
        opt.step()
        self.loss = loss

    def _backward_on_batch0(self):
        x, y = self.batches[0]
        self.opt.zero_grad()
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        self.loss = loss


class TorchContender(ModelContender):
    name = "torch"

    def __init__(self, w, params, batches, device="cpu"):
        super().__init__(w, params, batches, device)
        torch = self.torch = _torch()
        if device == "cuda" and not torch.cuda.is_available():
            raise Skip("torch.cuda.is_available() is False (CPU-only torch build or no GPU)")
        dev = torch.device(device)
        model = build_model(torch.nn, w).to(dev)
        model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v))
                               for k, v in params.items()})
        self._assemble(torch.nn, torch.optim, model,
                       [(torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev))
                        for x, y in batches])
        self.info = {"version": torch.__version__, "optimizer_defaults":
                     {k: v for k, v in self.opt.defaults.items()
                      if k in ("foreach", "fused", "maximize", "differentiable")}}
        if device == "cuda":
            self.info["tf32_matmul"] = bool(torch.backends.cuda.matmul.allow_tf32)
            self.info["card"] = torch.cuda.get_device_name(0)

    def set_threads(self, n):
        super().set_threads(n)
        self.activate()

    def activate(self):
        if self.threads and self.torch.get_num_threads() != self.threads:
            self.torch.set_num_threads(self.threads)

    def sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def gradients(self):
        self._backward_on_batch0()
        return {k: p.grad.detach().cpu().numpy().copy() for k, p in self.model.named_parameters()}

    def state_dict(self):
        return {k: v.detach().cpu().numpy().copy() for k, v in self.model.state_dict().items()}

    def loss_value(self):
        return float(self.loss.detach().cpu())


def _to_numpy(t):
    """Host NumPy copy of an nnx tensor (or backend array)."""
    if hasattr(t, "numpy"):
        return np.array(t.numpy())
    if hasattr(t, "get"):  # cupy array
        return t.get()
    return np.array(t)


class NnxContender(ModelContender):
    name = "nnx"

    def __init__(self, w, params, batches, device="cpu"):
        super().__init__(w, params, batches, device)
        nnx = self.nnx = _nnx()
        if device == "cuda":
            ok = getattr(nnx, "cuda_available", lambda: False)()
            if not ok:
                raise Skip("nnx.cuda_available() is False")
        missing = [name for name, _ in w.layers() if not hasattr(nnx.nn, name)]
        if missing:
            raise Skip(f"nnx.nn has no {', '.join(missing)} yet")
        nnx.set_device(device)
        if hasattr(nnx, "manual_seed"):
            nnx.manual_seed(0)
        model = build_model(nnx.nn, w)
        model.load_state_dict({k: np.ascontiguousarray(v) for k, v in params.items()})
        self._assemble(nnx.nn, nnx.optim, model, [(nnx.tensor(x), nnx.tensor(y)) for x, y in batches])
        self._backend = None
        try:
            backends = importlib.import_module("nnx.backends")
            self._backend = backends.get_backend("cuda" if device == "cuda" else "cpu")
        except Exception:
            pass
        self.info = {"version": getattr(nnx, "__version__", "?")}

    def activate(self):
        self.nnx.set_device(self.device)

    def sync(self):
        if self.device == "cpu":
            return
        if self._backend is not None and hasattr(self._backend, "synchronize"):
            self._backend.synchronize()
        else:
            _cupy().cuda.Device().synchronize()

    def _named_parameters(self):
        if hasattr(self.model, "named_parameters"):
            return list(self.model.named_parameters())
        return list(zip(self.model.state_dict().keys(), self.model.parameters()))

    def gradients(self):
        self._backward_on_batch0()
        return {k: _to_numpy(p.grad) for k, p in self._named_parameters()}

    def state_dict(self):
        return {k: np.array(v) if isinstance(v, np.ndarray) else _to_numpy(v)
                for k, v in self.model.state_dict().items()}

    def loss_value(self):
        v = self.loss
        if hasattr(v, "item"):
            return float(v.item())
        return float(_to_numpy(v))


CLASSES = {"floor": FloorContender, "nnx": NnxContender, "torch": TorchContender,
           "gemm": GemmContender}


def make(name: str, w: Workload, params, batches, device: str = "cpu") -> Contender:
    """Build contender ``name`` on ``device``; raise :class:`Skip` (with why) if it can't run."""
    if device == "cuda" and name in ("floor", "gemm"):
        _cupy()
    try:
        return CLASSES[name](w, params, batches, device)
    except Skip:
        raise
    except MemoryError as e:
        raise Skip(f"out of memory building {name}-{device}: {e}") from None
