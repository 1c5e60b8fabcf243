"""Optimizers with PyTorch's update rules.

An optimizer is one class: its hyperparameter defaults and checks, the names of its
per-parameter state, and its update rule ``update(xp, param, grad, state, group, step)``:
plain array math with the backend's array module ``xp`` (NumPy or CuPy) on one parameter's
values, its gradient and its state arrays, in place, in PyTorch's op order (as
``torch/optim/sgd.py`` writes it). That rule is the reference. A class may also name a fused
kernel of the backend (``kernel = "sgd_update_"``, see ``backends/base.py``) and map its
hyperparameters to the kernel's arguments (``kernel_args``): the same update in one pass, which
is what runs when the backend has it, unless the optimizer was made with ``fused=False``. The
tests check each kernel against its reference rule.

The base class does everything else. On construction it moves the parameters into flat
per-(backend, dtype) buffers: each ``Parameter``'s data becomes a view of one contiguous array
and its gradient a view of a second one (``Parameter._bind_flat``), so a backward writes the
gradient there (``autograd.Function.grad_destination``), ``zero_grad`` is one flag per
parameter, and ``step`` is one update (one kernel call) over the whole buffer, state flat too.
A plain tensor (``w = nnx.tensor(..., requires_grad=True)``) keeps its own arrays: its values
and gradient are copied into the buffer before the update and its values back after. When a
parameter has no gradient this step the update runs per parameter on views of the buffers;
when a parameter was moved since (``model.to``, ``p.data = other_shape``) the optimizer
re-flattens, keeping its state.

A new optimizer, e.g. sign descent::

    class SignSGD(optim.Optimizer):
        def __init__(self, params, lr=0.01):
            super().__init__(params, dict(lr=lr))

        def update(self, xp, param, grad, state, group, step):
            param -= float(group["lr"]) * xp.sign(grad)

State arrays (named in ``state_names``) start as zeros of the parameter's shape (or the value
``state_init(group)`` gives, e.g. Adagrad's ``initial_accumulator_value``); ``step`` is the
number of this step for this parameter, from 1.

The optimizers here: ``SGD``, ``Adam`` and ``AdamW`` (both with ``amsgrad``; one fused kernel,
``adam_update_``), ``RMSprop`` (momentum, centered; ``rmsprop_update_``) and ``Adagrad``
(``adagrad_update_``), ``Adadelta`` (``adadelta_update_``).
"""
from __future__ import annotations

import numpy as np

from .. import _config
from ..errors import DTypeError
from ..tensor import Tensor, _wrap

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta"]


class _FlatGroup:
    """Parameters of one backend and dtype as views of one flat buffer (plus a flat gradient),
    their flat state, their step counts and the update kernel chosen for them (or None)."""

    def __init__(self, params, kernel):
        p0 = params[0]
        self.backend, self.dtype = p0._backend, p0.dtype
        self.kernel = kernel
        xp = self.backend.xp
        self.params = list(params)
        total = sum(int(p.data.size) for p in params)
        try:
            self.data = xp.empty(total, dtype=self.dtype)
            self.grad = xp.zeros(total, dtype=self.dtype)
        except MemoryError as e:  # nothing is changed yet: the parameters keep their storage
            _reraise_oom(e, self.backend, f"the optimizer's flat buffers ({len(params)} "
                         f"parameters, {total:,} elements of {self.dtype})")
            raise
        self.slices, self.shapes = [], []
        self.left = False  # set when a bound parameter leaves (``_param_left``)
        self.copied = []  # indices of plain tensors: copied in before an update, out after
        off = 0
        for i, p in enumerate(params):
            n = int(p.data.size)
            sl = slice(off, off + n)
            self.slices.append(sl)
            self.shapes.append(tuple(p.shape))
            off += n
            bind = getattr(p, "_bind_flat", None)
            if bind is not None:
                bind(self, self.data[sl].reshape(p.shape), self.grad[sl].reshape(p.shape))
            else:
                self.copied.append(i)
        self.is_copied = [False] * len(params)
        for i in self.copied:
            self.is_copied[i] = True
        self.state = {}  # name -> flat state array
        # Steps taken: one shared count while every parameter has stepped together (the fused
        # path), a per-parameter list once some parameter skipped a step (no gradient).
        self.step = 0
        self.steps = None

    def param_step(self, i):
        return self.step if self.steps is None else self.steps[i]

    def set_param_step(self, i, value):
        if self.steps is None:
            if value == self.step:
                return
            self.steps = [self.step] * len(self.params)
        self.steps[i] = value
        if all(v == value for v in self.steps):
            self.step, self.steps = value, None

    def shared_step(self):
        """The common step count of all parameters, or None when they differ."""
        return self.step if self.steps is None else None

    def _param_left(self, param):
        """Called by a bound parameter that leaves this buffer (new storage, another buffer)."""
        self.left = True

    def __setstate__(self, state):
        # A copy (copy.deepcopy, pickle) holds copied parameters that are bound to no buffer:
        # re-flatten them on the next step, keeping the copied state.
        self.__dict__.update(state)
        self.left = True

    def valid(self):
        """Whether every parameter still lives here (bound ones) or still fits (copied ones)."""
        if self.left:
            return False
        for i in self.copied:
            p = self.params[i]
            d = p.data
            if p._backend is not self.backend or d.dtype != self.dtype or tuple(d.shape) != self.shapes[i]:
                return False
        return True

    def all_have_grads(self):
        for p in self.params:
            if p._grad is None:
                return False
        return True

    def copy_in(self, i):
        """A plain tensor's current values and gradient into the flat buffers."""
        p = self.params[i]
        self.view(self.data, i)[...] = p.data
        self.view(self.grad, i)[...] = p._grad.data

    def copy_out(self, i):
        """The updated values back into a plain tensor's own array."""
        self.params[i].data[...] = self.view(self.data, i)

    def state_buffer(self, name):
        buf = self.state.get(name)
        if buf is None:
            try:
                buf = self.backend.xp.zeros(self.data.size, dtype=self.dtype)
            except MemoryError as e:
                _reraise_oom(e, self.backend, f"the optimizer state {name!r} ({self.data.size:,} "
                             f"elements of {self.dtype})")
                raise
            self.state[name] = buf
        return buf

    def view(self, flat, i):
        return flat[self.slices[i]].reshape(self.shapes[i])


def _reraise_oom(exc, backend, where):
    err = _config.out_of_memory(exc, backend, where)
    if err is not None:
        raise err from exc


class Optimizer:
    """Base class: parameter groups, flat buffers, ``zero_grad``, ``step``, ``state_dict``.

    A subclass provides (see the module docstring):

    * ``update(xp, param, grad, state, group, step)``: the reference rule, in place on
      ``param`` and the arrays of ``state`` (a dict name -> array of ``param``'s shape);
      ``group`` is the parameter group (hyperparameters by name), ``step`` this step's
      number, from 1. ``grad`` must not be modified (it is the user-visible ``.grad``).
    * ``state_names``: the names of its state arrays (the ``state_dict`` keys), and
      ``state_for(group)`` when a group needs only some of them (SGD without momentum).
    * optionally ``kernel``, the name of a backend method doing the same update in one pass,
      and ``kernel_args(state, group, step)``, its arguments after ``(param, grad)``.
    * ``_validate(group)`` for its hyperparameter checks (call ``super()._validate``).

    ``fused``: None (default) runs the backend's kernel where there is one, else the
    reference rule; False always runs the reference rule; True requires the kernel
    (a ValueError when the optimizer or a parameter's backend has none).
    """

    state_names: tuple = ()
    kernel: str | None = None

    def __init__(self, params, defaults, fused=None):
        self.defaults = dict(defaults)
        self.fused = fused
        if isinstance(params, Tensor):
            raise TypeError("params must be an iterable of Parameters (e.g. model.parameters()), "
                            "not a single tensor")
        unbuilt = getattr(params, "unbuilt_layers", None)  # from nnx.keras Sequential.parameters()
        if unbuilt:
            raise ValueError(
                f"{type(self).__name__}: layer(s) {', '.join(unbuilt)} of the model have no "
                f"parameters yet (their input size is not known), so this optimizer would never "
                f"train them. Build the model first (give the first Dense input_dim=... or start "
                f"the model with nn.Input(shape)), then make the optimizer from "
                f"model.parameters()")
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(params[0], dict):
            params = [{"params": params}]
        self.param_groups = []
        self._flats = []  # one list of _FlatGroup per param group
        for g in params:
            self.add_param_group(g)

    # ------------------------------------------------------------------ the rule
    def update(self, xp, param, grad, state, group, step):  # pragma: no cover - abstract
        """The update rule on arrays (see the class docstring)."""
        raise NotImplementedError(f"{type(self).__name__} has no update rule")

    def kernel_args(self, state, group, step):  # pragma: no cover - abstract
        """The arguments of ``kernel`` after ``(param, grad)``."""
        raise NotImplementedError(f"{type(self).__name__} names a kernel but no kernel_args")

    def state_for(self, group):
        """The state arrays this group's update uses (allocated, as zeros, before it runs)."""
        return self.state_names

    def state_init(self, group):
        """``{name: value}`` for state arrays that start at a value other than 0."""
        return {}

    def _kernel_for(self, backend):
        """The bound kernel method to run on ``backend``, or None for the reference rule."""
        name = self.kernel
        fn = getattr(backend, name, None) if name and self.fused is not False else None
        if fn is None and self.fused:
            why = "it has no fused kernel" if not name else \
                f"the {backend.name} backend ({backend.device}) has no {name}"
            raise ValueError(f"{type(self).__name__}(fused=True): {why}; use fused=None or False")
        return fn

    def _apply(self, fg, param, grad, state, group, step):
        if fg.kernel is not None:
            fg.kernel(param, grad, *self.kernel_args(state, group, step))
        else:
            self.update(fg.backend.xp, param, grad, state, group, step)

    # ------------------------------------------------------------------ groups
    def add_param_group(self, group):
        group = dict(group)
        ps = group["params"]
        ps = [ps] if isinstance(ps, Tensor) else list(ps)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        for p in ps:
            if not isinstance(p, Tensor):
                raise TypeError(f"optimizer params must be tensors, got {type(p).__name__}")
            if not p.is_leaf:
                raise ValueError("can't optimize a non-leaf tensor")
            if p.dtype.kind != "f":
                raise DTypeError(f"optimizer params must be floating, got dtype {p.dtype}")
            if id(p) in seen:
                raise ValueError("some parameters appear in more than one parameter group")
            seen.add(id(p))
        for k, v in self.defaults.items():
            group.setdefault(k, v)
        group["params"] = ps
        self._validate(group)
        self.param_groups.append(group)
        self._flats.append(self._flatten(ps))

    #: Hyperparameters that must not be negative (checked by ``_validate``).
    non_negative: tuple = ()

    def _validate(self, group):
        if group["lr"] < 0:
            raise ValueError(f"invalid learning rate: {group['lr']}")
        for k in self.non_negative:
            if group[k] < 0:
                raise ValueError(f"invalid {k} value: {group[k]}")

    def _flatten(self, params):
        by_key = {}
        for p in params:
            by_key.setdefault((id(p._backend), p.dtype), []).append(p)
        kernels = [self._kernel_for(ps[0]._backend) for ps in by_key.values()]  # checks first
        return [_FlatGroup(ps, k) for ps, k in zip(by_key.values(), kernels)]

    def _current_flats(self, gi):
        flats = self._flats[gi]
        for j, fg in enumerate(flats):
            if not fg.valid():  # a parameter was moved or re-created: rebuild, keeping state
                fresh = self._flatten(fg.params)
                where = {id(p): i for i, p in enumerate(fg.params)}  # index in the old group
                for nf in fresh:
                    for i, p in enumerate(nf.params):
                        nf.set_param_step(i, fg.param_step(where[id(p)]))
                    for name, buf in fg.state.items():
                        nb = nf.state_buffer(name)
                        for i, p in enumerate(nf.params):
                            old_i = where[id(p)]
                            src = fg.view(buf, old_i)
                            nf.view(nb, i)[...] = nf.backend.asarray(
                                fg.backend.to_host(src)) if nf.backend is not fg.backend else src.astype(nf.dtype)
                flats = flats[:j] + fresh + flats[j + 1:]
                self._flats[gi] = flats
                return self._current_flats(gi)
        return flats

    # ------------------------------------------------------------------ stepping
    def zero_grad(self, set_to_none=True):
        """Clear the gradients: set them to None (default, as PyTorch) or to zeros (one fill)."""
        for gi, group in enumerate(self.param_groups):
            if set_to_none:
                for p in group["params"]:
                    p._grad = None
            else:
                for p in group["params"]:  # as PyTorch: zero the gradients that exist
                    if p._grad is not None:
                        p._grad.data[...] = 0

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with _config.enable_grad():
                loss = closure()
        for gi, group in enumerate(self.param_groups):
            flats = self._flats[gi]
            for fg in flats:
                if not fg.valid():
                    flats = self._current_flats(gi)
                    break
            for fg in flats:
                self._step_flat(group, fg)
        return loss

    def _ensure_state(self, group, fg):
        """Allocate the state arrays ``group`` uses (zeros, or ``state_init``'s value)."""
        for name in self.state_for(group):
            if name not in fg.state:
                init = self.state_init(group).get(name, 0)
                buf = fg.state_buffer(name)
                if init:
                    buf.fill(float(init))

    def _step_flat(self, group, fg):
        state = fg.state
        self._ensure_state(group, fg)
        step = fg.shared_step()
        if step is not None and fg.all_have_grads():  # the fast path: one update over everything
            step += 1
            copied = fg.copied
            for i in copied:
                fg.copy_in(i)
            if fg.kernel is not None:
                fg.kernel(fg.data, fg.grad, *self.kernel_args(state, group, step))
            else:
                self.update(fg.backend.xp, fg.data, fg.grad, state, group, step)
            for i in copied:
                fg.copy_out(i)
            fg.step = step
            return
        for i, p in enumerate(fg.params):  # some parameters lack a gradient this step
            if p._grad is None:
                continue
            t = fg.param_step(i) + 1
            copied = fg.is_copied[i]
            if copied:
                fg.copy_in(i)
            self._apply(fg, fg.view(fg.data, i), fg.view(fg.grad, i),
                        {name: fg.view(buf, i) for name, buf in state.items()}, group, t)
            if copied:
                fg.copy_out(i)
            fg.set_param_step(i, t)

    # ------------------------------------------------------------------ state
    @property
    def state(self):
        """Per-parameter state (PyTorch layout): ``{param: {"step": int, name: Tensor view}}``."""
        out = {}
        for gi in range(len(self.param_groups)):
            for fg in self._current_flats(gi):
                for i, p in enumerate(fg.params):
                    step = fg.param_step(i)
                    if not step:
                        continue
                    d = {"step": step}
                    for name in self.state_names:
                        if name in fg.state:
                            d[name] = _wrap(fg.view(fg.state[name], i), fg.backend)
                    out[p] = d
        return out

    def state_dict(self):
        """``{"state": {index: {...}}, "param_groups": [...]}`` with host NumPy arrays, in
        PyTorch's layout (parameters numbered in group order)."""
        state, groups, idx = {}, [], 0
        for gi, group in enumerate(self.param_groups):
            ids = []
            flats = self._current_flats(gi)
            where = {id(p): (fg, i) for fg in flats for i, p in enumerate(fg.params)}
            for p in group["params"]:
                fg, i = where[id(p)]
                step = fg.param_step(i)
                if step:
                    d = {"step": int(step)}
                    for name in self.state_names:
                        if name in fg.state:
                            d[name] = np.array(fg.backend.to_host(fg.view(fg.state[name], i)), copy=True)
                    state[idx] = d
                ids.append(idx)
                idx += 1
            g = {k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items() if k != "params"}
            g["params"] = ids
            groups.append(g)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore state saved by ``state_dict`` (checks group sizes and state shapes first)."""
        from ..errors import CheckpointError

        groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
        if groups is None or "state" not in state_dict:
            raise CheckpointError("optimizer load_state_dict: expected a dict with 'state' and 'param_groups'")
        if len(groups) != len(self.param_groups):
            raise CheckpointError(f"optimizer load_state_dict: {len(groups)} parameter groups saved, "
                                  f"{len(self.param_groups)} in this optimizer")
        plan = []
        raw_state = state_dict["state"]
        st = {int(k): v for k, v in raw_state.items()}
        for gi, (saved, group) in enumerate(zip(groups, self.param_groups)):
            ids = list(saved["params"])
            if len(ids) != len(group["params"]):
                raise CheckpointError(f"optimizer load_state_dict: group {gi} has {len(ids)} "
                                      f"parameters saved, {len(group['params'])} here")
            flats = self._current_flats(gi)
            where = {id(p): (fg, i) for fg in flats for i, p in enumerate(fg.params)}
            for idx, p in zip(ids, group["params"]):
                s = st.get(int(idx))
                fg, i = where[id(p)]
                if s is None:
                    plan.append((p, None, fg, i))
                    continue
                for name in self.state_names:
                    if name in s:
                        arr = np.asarray(s[name])
                        if arr.shape != p.shape:
                            raise CheckpointError(f"optimizer load_state_dict: state {name!r} of "
                                                  f"parameter {idx} has shape {arr.shape}, "
                                                  f"expected {p.shape}")
                plan.append((p, s, fg, i))
        for saved, group in zip(groups, self.param_groups):
            for k, v in saved.items():
                if k != "params":
                    group[k] = tuple(v) if isinstance(group.get(k), tuple) else v
        for gi, group in enumerate(self.param_groups):
            for fg in self._current_flats(gi):
                self._ensure_state(group, fg)
        for p, s, fg, i in plan:
            if s is None:
                fg.set_param_step(i, 0)
                continue
            fg.set_param_step(i, max(int(np.asarray(s.get("step", 1))), 1))
            for name in self.state_names:
                if name in s:
                    fg.view(fg.state_buffer(name), i)[...] = fg.backend.asarray(
                        np.asarray(s[name], dtype=fg.dtype))

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(g):
                if k != "params":
                    lines.append(f"    {k}: {g[k]}")
        lines.append(")")
        return "\n".join(lines)


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov and weight decay
    (PyTorch's rule, see ``update``). ``fused``: see ``Optimizer``."""

    state_names = ("momentum_buffer",)
    kernel = "sgd_update_"

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0,
                 *, fused=None):
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      nesterov=nesterov, weight_decay=weight_decay), fused=fused)

    def _validate(self, group):
        super()._validate(group)
        if group["momentum"] < 0:
            raise ValueError(f"invalid momentum value: {group['momentum']}")
        if group["weight_decay"] < 0:
            raise ValueError(f"invalid weight_decay value: {group['weight_decay']}")

    def state_for(self, group):
        return self.state_names if group["momentum"] else ()

    def update(self, xp, param, grad, state, group, step):
        lr, momentum, dampening = float(group["lr"]), float(group["momentum"]), float(group["dampening"])
        nesterov, weight_decay = bool(group["nesterov"]), float(group["weight_decay"])
        if weight_decay:
            grad = grad + weight_decay * param  # grad.add(param, alpha=weight_decay)
        if momentum:
            buf = state["momentum_buffer"]
            if step == 1:
                buf[...] = grad  # torch.clone(grad)
            else:  # buf.mul_(momentum).add_(grad, alpha=1 - dampening)
                buf *= momentum
                buf += (1 - dampening) * grad
            grad = grad + momentum * buf if nesterov else buf  # grad.add(buf, alpha=momentum)
        param -= lr * grad  # param.add_(grad, alpha=-lr)

    def kernel_args(self, state, group, step):
        mom = float(group["momentum"])
        return (state.get("momentum_buffer") if mom else None, float(group["lr"]), mom,
                float(group["dampening"]), bool(group["nesterov"]), float(group["weight_decay"]),
                step == 1)


def _lerp_(a, b, w):
    """a.lerp_(b, w) in place, PyTorch's formula (the form depends on w < 0.5)."""
    if w < 0.5:
        a += w * (b - a)
    else:
        a[...] = b - (b - a) * (1 - w)


class Adam(Optimizer):
    """Adam (Kingma & Ba, https://arxiv.org/abs/1412.6980) with PyTorch's update rule and L2
    weight decay (see ``update``); ``amsgrad=True`` keeps the running maximum of ``exp_avg_sq``
    (state ``max_exp_avg_sq``) and divides by it. ``fused``: see ``Optimizer``."""

    state_names = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    kernel = "adam_update_"
    #: AdamW: the weight decay is decoupled (param *= 1 - lr * weight_decay), not added to grad.
    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, *, fused=None):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      amsgrad=bool(amsgrad)), fused=fused)

    def _validate(self, group):
        super()._validate(group)
        b1, b2 = group["betas"]
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"invalid betas: {group['betas']}")
        if group["eps"] < 0:
            raise ValueError(f"invalid eps: {group['eps']}")
        if group["weight_decay"] < 0:
            raise ValueError(f"invalid weight_decay value: {group['weight_decay']}")

    def state_for(self, group):
        return self.state_names if group.get("amsgrad") else self.state_names[:2]

    def update(self, xp, param, grad, state, group, step):
        lr, eps, weight_decay = float(group["lr"]), float(group["eps"]), float(group["weight_decay"])
        beta1, beta2 = (float(b) for b in group["betas"])
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        if weight_decay:
            if self.decoupled:
                param *= 1 - lr * weight_decay  # param.mul_(1 - lr * weight_decay)
            else:
                grad = grad + weight_decay * param  # grad.add(param, alpha=weight_decay)
        _lerp_(exp_avg, grad, 1 - beta1)  # exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq *= beta2  # exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        exp_avg_sq += (1 - beta2) * grad * grad
        bias_correction1 = 1 - beta1 ** step
        bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
        step_size = lr / bias_correction1
        if group.get("amsgrad"):
            max_sq = state["max_exp_avg_sq"]
            xp.maximum(max_sq, exp_avg_sq, out=max_sq)  # torch.maximum(max_sq, exp_avg_sq, out=)
            denom = xp.sqrt(max_sq) / bias_correction2_sqrt + eps
        else:
            denom = xp.sqrt(exp_avg_sq) / bias_correction2_sqrt + eps
        param += -step_size * exp_avg / denom  # param.addcdiv_(exp_avg, denom, value=-step_size)

    def kernel_args(self, state, group, step):
        b1, b2 = group["betas"]
        return (state["exp_avg"], state["exp_avg_sq"], float(group["lr"]), float(b1), float(b2),
                float(group["eps"]), float(group["weight_decay"]), step,
                state["max_exp_avg_sq"] if group.get("amsgrad") else None, self.decoupled)


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter, https://arxiv.org/abs/1711.05101): Adam with decoupled weight
    decay, PyTorch's rule: ``param *= 1 - lr * weight_decay``, then the Adam step (default
    ``weight_decay=1e-2`` as PyTorch). ``amsgrad`` and ``fused``: see ``Adam``."""

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, fused=None):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, fused=fused)


class RMSprop(Optimizer):
    """RMSprop with PyTorch's rule (see ``update``): optional L2 weight decay, momentum (state
    ``momentum_buffer``) and ``centered`` (state ``grad_avg``: divides by the estimated
    variance instead of the second moment). ``fused``: see ``Optimizer``."""

    state_names = ("square_avg", "momentum_buffer", "grad_avg")
    kernel = "rmsprop_update_"

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, *, fused=None):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=bool(centered)), fused=fused)

    non_negative = ("alpha", "eps", "weight_decay", "momentum")

    def state_for(self, group):
        names = ["square_avg"]
        if group["momentum"] > 0:
            names.append("momentum_buffer")
        if group["centered"]:
            names.append("grad_avg")
        return tuple(names)

    def update(self, xp, param, grad, state, group, step):
        lr, alpha, eps = float(group["lr"]), float(group["alpha"]), float(group["eps"])
        weight_decay, momentum = float(group["weight_decay"]), float(group["momentum"])
        square_avg = state["square_avg"]
        if weight_decay:
            grad = grad + weight_decay * param  # grad.add(param, alpha=weight_decay)
        square_avg *= alpha  # square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
        square_avg += (1 - alpha) * grad * grad
        if group["centered"]:
            grad_avg = state["grad_avg"]
            _lerp_(grad_avg, grad, 1 - alpha)  # grad_avg.lerp_(grad, 1 - alpha)
            # square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
            avg = xp.sqrt(square_avg + (-1.0) * grad_avg * grad_avg)
        else:
            avg = xp.sqrt(square_avg)
        avg += eps
        if momentum > 0:
            buf = state["momentum_buffer"]
            buf *= momentum  # buf.mul_(momentum).addcdiv_(grad, avg)
            buf += grad / avg
            param += -lr * buf  # param.add_(buf, alpha=-lr)
        else:
            param += -lr * grad / avg  # param.addcdiv_(grad, avg, value=-lr)

    def kernel_args(self, state, group, step):
        mom, centered = float(group["momentum"]), bool(group["centered"])
        return (state["square_avg"], state["momentum_buffer"] if mom > 0 else None,
                state["grad_avg"] if centered else None, float(group["lr"]),
                float(group["alpha"]), float(group["eps"]), float(group["weight_decay"]), mom,
                centered)


class Adagrad(Optimizer):
    """Adagrad with PyTorch's rule (see ``update``): state ``sum`` starts at
    ``initial_accumulator_value``; the learning rate decays as ``lr / (1 + (step - 1) *
    lr_decay)``. ``fused``: see ``Optimizer``."""

    state_names = ("sum",)
    kernel = "adagrad_update_"

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
                 eps=1e-10, *, fused=None):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, eps=eps),
                         fused=fused)

    non_negative = ("lr_decay", "weight_decay", "initial_accumulator_value", "eps")

    def state_init(self, group):
        return {"sum": float(group["initial_accumulator_value"])}

    def update(self, xp, param, grad, state, group, step):
        lr, lr_decay, eps = float(group["lr"]), float(group["lr_decay"]), float(group["eps"])
        weight_decay = float(group["weight_decay"])
        state_sum = state["sum"]
        if weight_decay:
            grad = grad + weight_decay * param  # grad.add(param, alpha=weight_decay)
        clr = lr / (1 + (step - 1) * lr_decay)
        state_sum += grad * grad  # state_sum.addcmul_(grad, grad, value=1)
        std = xp.sqrt(state_sum)  # state_sum.sqrt().add_(eps)
        std += eps
        param += -clr * grad / std  # param.addcdiv_(grad, std, value=-clr)

    def kernel_args(self, state, group, step):
        lr, lr_decay = float(group["lr"]), float(group["lr_decay"])
        clr = lr / (1 + (step - 1) * lr_decay)  # on the host, as the reference rule
        return (state["sum"], clr, float(group["weight_decay"]), float(group["eps"]))


class Adadelta(Optimizer):
    """Adadelta (Zeiler, https://arxiv.org/abs/1212.5701) with PyTorch's rule (see ``update``):
    state ``square_avg`` (the running mean of g^2) and ``acc_delta`` (of the squared steps);
    ``maximize=True`` ascends. ``fused``: see ``Optimizer``.

    Args:
        params: the parameters (or parameter groups) to optimize.
        lr: the factor applied to each step (default 1.0).
        rho: the running averages' decay (default 0.9).
        eps: added inside both square roots (default 1e-6).
        weight_decay: L2 penalty added to the gradient (default 0).
        maximize: maximize the objective instead of minimizing it (default False).

    Example:
        >>> opt = optim.Adadelta(model.parameters(), lr=1.0)
    """

    state_names = ("square_avg", "acc_delta")
    kernel = "adadelta_update_"

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, maximize=False, *,
                 fused=None):
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay,
                                      maximize=bool(maximize)), fused=fused)

    non_negative = ("eps", "weight_decay")

    def _validate(self, group):
        super()._validate(group)
        if not 0.0 <= group["rho"] <= 1.0:
            raise ValueError(f"invalid rho value: {group['rho']}")

    def update(self, xp, param, grad, state, group, step):
        lr, rho, eps = float(group["lr"]), float(group["rho"]), float(group["eps"])
        weight_decay = float(group["weight_decay"])
        square_avg, acc_delta = state["square_avg"], state["acc_delta"]
        if group["maximize"]:
            grad = -grad
        if weight_decay:
            grad = grad + weight_decay * param  # grad.add(param, alpha=weight_decay)
        square_avg *= rho  # square_avg.mul_(rho).addcmul_(grad, grad, value=1 - rho)
        square_avg += (1 - rho) * grad * grad
        std = xp.sqrt(square_avg + eps)  # square_avg.add(eps).sqrt_()
        delta = xp.sqrt(acc_delta + eps)  # acc_delta.add(eps).sqrt_().div_(std).mul_(grad)
        delta /= std
        delta *= grad
        acc_delta *= rho  # acc_delta.mul_(rho).addcmul_(delta, delta, value=1 - rho)
        acc_delta += (1 - rho) * delta * delta
        param += -lr * delta  # param.add_(delta, alpha=-lr)

    def kernel_args(self, state, group, step):
        return (state["square_avg"], state["acc_delta"], float(group["lr"]), float(group["rho"]),
                float(group["eps"]), float(group["weight_decay"]), bool(group["maximize"]))


from . import lr_scheduler  # noqa: E402  (it imports nothing from here: no circle)
